//! The running gateway (`srvgate run`): one route table and everything that must agree with
//! it — the BPF maps, the DNS zone, the state file — changed only through the operations
//! here, each of which updates all of them before it returns.
//!
//! Start-up order matters: everything that can fail on bad input (config, state file,
//! clashes between them, sockets to bind) is done before the kernel is touched, so a refused
//! start leaves a running data plane (pinned by an earlier run) exactly as it was.
//!
//! Operations: `add` / `remove` (control API), `reload` (SIGHUP), `observe` (every few
//! seconds: last-seen times from the BPF counters, then reclaim of idle runtime routes).
//! Each one runs under the core's mutex and starts with the table, which decides whether
//! the change may happen at all; the rest follows in an order chosen per operation:
//!
//! - `add`: table, maps, DNS and HTTP (live), then the store (durable); a failed map
//!   update or save undoes it everywhere, so a route nobody was told about never lingers.
//! - `remove`: table, store, then maps, DNS and HTTP: durable before it takes effect; a
//!   removal the store did not record is undone (each route back in its own slot).
//! - `reload`: table (all of the file's routes or none), maps, the store (only when the
//!   file took a runtime route over), DNS and HTTP. Sections only a restart applies are
//!   named in a warning.
//! - reclaim: table, store, maps, DNS and HTTP; a reclaim the store did not record is still
//!   carried out and saved on a later pass.
//!
//! The core reaches the kernel and the disk only through the [`Dataplane`] and [`Store`]
//! traits, so all of the above is unit-tested against in-memory fakes (`daemon/tests.rs`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    config::{self, check_route, format_duration, Config, ConfigError, Gateway, RouteRequest},
    kernel::dataplane::{
        verdict_names, AttachMode, Counters, Dataplane, DataplaneError, XdpDataplane,
    },
    notify,
    serve::api::{
        self, ApiError, Caller, ClaimRequest, Control, GatewayView, LegView, MeReply, PortalInfo,
        Removed, RouteView, RoutesReply, Shutdown, TokenReply, TrafficMinute, UserRequest,
        UsersReply,
    },
    serve::dns::{DnsError, DnsServer},
    serve::http::{HttpError, HttpServer},
    serve::https::HttpsServer,
    serve::metrics::{self, LegSample, RouteSample},
    serve::portal::{PortalError, PortalServer},
    table::routes::{idle_routes, Diff, Entry, RouteError, RouteTable, Source},
    table::state::{Commit, RouteChange, StateError, StateStore, Store, StoredRoute},
    table::traffic::Traffic,
    table::users::{
        check_claim, parse_rules, Denied, User, UserError, UserView, Users, DEFAULT_MAX_ROUTES,
    },
};

/// How often the data plane's view of each leg's redirect ability is refreshed.
const EGRESS_REFRESH: Duration = Duration::from_secs(2);
/// How often the program's clock (`Settings::now_ns`) moves: the resolution of last-seen.
const CLOCK_TICK: Duration = Duration::from_secs(1);
/// How often last-seen times are read from the counters and idle routes reclaimed.
const OBSERVE_EVERY: Duration = Duration::from_secs(5);
/// Last-seen times are written to the state file at most this often (and at exit); the
/// pinned counters keep the exact times across restarts, the file only across reboots.
const SAVE_ACTIVITY_EVERY: Duration = Duration::from_secs(60);

/// Everything `srvgate run` is told on its command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: PathBuf,
    pub xdp_mode: AttachMode,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// Detach XDP and remove the pins on SIGTERM/SIGINT instead of leaving them forwarding.
    pub detach_on_exit: bool,
    /// See [`Clock`].
    pub clock_offset_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{state}: runtime routes clash with the config file {}:\n  {}\n  remove the clashing route from the config file, or stop srvgate and edit the state file", config.display(), problems.join("\n  "))]
    Clash {
        /// Where the runtime routes are stored ([`Store::location`]).
        state: String,
        config: PathBuf,
        problems: Vec<String>,
    },
    #[error("control socket: {0}")]
    Api(#[from] api::ApiBindError),
    #[error("metrics.listen: cannot listen on {addr}: {error}")]
    Metrics {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("starting the DNS server: {0}")]
    Dns(#[from] DnsError),
    #[error("starting HTTP routing: {0}")]
    Http(#[from] HttpError),
    #[error("starting the portal: {0}")]
    Portal(#[from] PortalError),
    #[error("starting the XDP data plane: {0}")]
    Dataplane(#[from] DataplaneError),
    #[error("{0}")]
    Runtime(String),
}

impl DaemonError {
    /// Whether the operator's input is at fault (exit code 2) rather than the machine.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            DaemonError::Config(_)
                | DaemonError::State(_)
                | DaemonError::Clash { .. }
                | DaemonError::Portal(PortalError::Cert { .. })
        )
    }
}

/// The daemon's wall clock. Tests move it forward by writing an offset (seconds, or a
/// duration such as `15d`) to a file, read on every call, so reclaiming after days can be
/// tested without sleeping; without the file it is the system clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_file: Option<PathBuf>,
}

impl Clock {
    pub fn new(offset_file: Option<PathBuf>) -> Self {
        Clock { offset_file }
    }

    pub fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        let Some(path) = &self.offset_file else {
            return now;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return now;
        };
        let text = text.trim();
        let offset = text
            .parse::<u64>()
            .map(Duration::from_secs)
            .or_else(|_| config::parse_duration(text));
        match offset {
            Ok(d) => now + d,
            Err(_) => now,
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The table and everything that mirrors it.
struct Core {
    table: RouteTable,
    dataplane: Box<dyn Dataplane>,
    dns: Option<Arc<DnsServer>>,
    http: Option<HttpServer>,
    https: Option<HttpsServer>,
    store: Box<dyn Store>,
    /// Gateway-wide settings in force; SIGHUP changes `port_range` and `reclaim_after`.
    gateway: Gateway,
    /// The config the daemon started with (routes left out): what SIGHUP cannot change.
    started: Config,
    /// The students' accounts and the ports cooling down.
    users: Users,
    /// The DNS zone, for telling students their names.
    zone: Option<String>,
    /// The students' HTTPS API, if configured: where, and its certificate's fingerprint.
    portal: Option<PortalInfo>,
    clock: Clock,
    /// Runtime last-seen times changed since the state file was written.
    activity_unsaved: bool,
    last_save: Instant,
    /// Changes recorded but not yet known durable: the caller waits for them after
    /// releasing the core's lock (see [`Handle::change`]), so concurrent changes share one
    /// flush.
    unflushed: Vec<Commit>,
    /// `[http] service`: the routes the HTTP router cares about.
    http_service: Option<String>,
    /// `[https] service`: the routes the HTTPS relay cares about.
    https_service: Option<String>,
    /// Per-minute traffic by counter slot, for the console; fed by the periodic pass with
    /// the core unlocked, so it has its own lock.
    traffic: Arc<Mutex<Traffic>>,
}

impl Core {
    /// A core for `cfg` without name services yet; [`Core::take_over`] brings the data plane
    /// in line.
    fn new(
        table: RouteTable,
        dataplane: Box<dyn Dataplane>,
        store: Box<dyn Store>,
        cfg: &Config,
        clock: Clock,
    ) -> Core {
        Core {
            table,
            dataplane,
            dns: None,
            http: None,
            https: None,
            store,
            gateway: cfg.gateway.clone(),
            started: Config {
                routes: Vec::new(),
                ..cfg.clone()
            },
            users: Users::default(),
            zone: cfg.dns.as_ref().map(|d| d.zone.clone()),
            portal: None,
            clock,
            activity_unsaved: false,
            last_save: Instant::now(),
            unflushed: Vec::new(),
            http_service: cfg.http.as_ref().map(|h| h.service.clone()),
            https_service: cfg.https.as_ref().map(|h| h.service.clone()),
            traffic: Arc::default(),
        }
    }

    /// Start-up's last step: takes back the counter slots the pinned maps kept, makes the
    /// maps hold exactly the table, records routes the config file `taken_over` from the
    /// store, then catches up with the activity and idleness of the time no daemon watched.
    fn take_over(&mut self, taken_over: bool) -> Result<(), DaemonError> {
        let fresh = self.table.adopt_slots(self.dataplane.pinned_frontends());
        self.dataplane.sync_all(&self.table, &fresh)?;
        for e in self.table.entries() {
            let r = &e.route;
            info!(route = %r.key(), public = %format!("{}:{}", self.gateway.public_ipv4, r.port), backend = %r.backend, source = e.source.as_str(), "route");
        }
        if taken_over {
            self.save()?;
        }
        // The traffic charts' baseline is what the pinned counters hold now: a route
        // claimed and used before the first periodic pass must not have its traffic taken
        // for the baseline.
        let readings: Vec<(u32, u64, u64)> = self
            .table
            .entries()
            .filter_map(|e| {
                let c = self.dataplane.route_counters(e.id).ok()?;
                Some((e.id, c.inbound_bytes, c.outbound_bytes))
            })
            .collect();
        let now = unix(self.clock.now());
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(now, &readings);
        self.observe();
        Ok(())
    }

    fn stored_routes(&self) -> Vec<StoredRoute> {
        stored_routes(&self.table)
    }

    /// Records runtime-route changes in the store: written when this returns, durable once
    /// `unflushed` has been waited for.
    fn record(&mut self, changes: &[RouteChange]) -> Result<(), StateError> {
        let table = &self.table;
        let commit = self.store.record(changes, &|| stored_routes(table))?;
        self.unflushed.push(commit);
        Ok(())
    }

    /// Waits here, under the lock, for what was recorded: for the rare changes that come
    /// from the daemon itself (reclaim), not from a client waiting for an answer.
    fn flush_here(&mut self, what: &str) {
        for commit in std::mem::take(&mut self.unflushed) {
            if let Err(e) = commit.wait() {
                error!("{what}: {e}");
            }
        }
    }

    /// The one line `systemctl status` shows while running.
    fn status_line(&self) -> String {
        let runtime = self
            .table
            .entries()
            .filter(|e| e.source == Source::Runtime)
            .count();
        let gw = &self.gateway;
        format!(
            "forwarding {} routes ({runtime} runtime) on {}, {}",
            self.table.len(),
            gw.public_interface,
            gw.private_interfaces.join(", ")
        )
    }

    fn save(&mut self) -> Result<(), StateError> {
        self.store.save_routes(&self.stored_routes())?;
        self.activity_unsaved = false;
        self.last_save = Instant::now();
        Ok(())
    }

    /// Gives the name services (DNS, the web routers) a change of the table. DNS takes the
    /// change itself (its cost is the change's); each web router, which holds only its own
    /// service's routes, gets those again when one of them changed.
    fn publish(&self, diff: &Diff) {
        let removed: Vec<config::Route> = diff
            .removed
            .iter()
            .chain(diff.changed.iter().map(|c| &c.old))
            .map(|e| e.route.clone())
            .collect();
        let added: Vec<config::Route> = diff
            .added
            .iter()
            .chain(diff.changed.iter().map(|c| &c.new))
            .map(|e| e.route.clone())
            .collect();
        if let Some(d) = &self.dns {
            d.apply(&removed, &added);
        }
        // The routes of `service`, if the change touched one of them.
        let of_service = |service: &Option<String>| -> Option<Vec<config::Route>> {
            let service = service.as_ref()?;
            removed
                .iter()
                .chain(&added)
                .any(|r| &r.service == service)
                .then(|| {
                    self.table
                        .entries()
                        .filter(|e| &e.route.service == service)
                        .map(|e| e.route.clone())
                        .collect()
                })
        };
        if let (Some(h), Some(routes)) = (&self.http, of_service(&self.http_service)) {
            h.update(&routes);
        }
        if let (Some(h), Some(routes)) = (&self.https, of_service(&self.https_service)) {
            h.update(&routes);
        }
    }

    fn counters(&self, e: &Entry) -> Counters {
        self.dataplane.route_counters(e.id).unwrap_or_default()
    }

    fn view(&self, e: &Entry, now: SystemTime) -> RouteView {
        let c = self.counters(e);
        let r = &e.route;
        let idle = now
            .duration_since(e.last_activity())
            .unwrap_or(Duration::ZERO);
        let reclaim_in = match (e.source, self.gateway.reclaim_after) {
            (Source::Runtime, Some(after)) => Some(after.saturating_sub(idle).as_secs()),
            _ => None,
        };
        RouteView {
            name: r.name.clone(),
            service: r.service.clone(),
            protocol: r.protocol.to_string(),
            port: r.port,
            backend: r.backend.to_string(),
            source: e.source.as_str().to_string(),
            added_unix: unix(e.added),
            last_seen_unix: e.last_seen.map(unix),
            idle_seconds: idle.as_secs(),
            reclaim_in_seconds: reclaim_in,
            inbound_packets: c.inbound_packets,
            outbound_packets: c.outbound_packets,
            inbound_bytes: c.inbound_bytes,
            outbound_bytes: c.outbound_bytes,
            proxy_protocol: r.proxy_protocol.map(|p| p.as_str().to_string()),
        }
    }

    fn list(&mut self) -> RoutesReply {
        // Fresh last-seen times, so `status` agrees with what the counters say right now.
        self.observe_activity();
        let now = self.clock.now();
        let range = self.gateway.port_range;
        let free = (range.first..=range.last)
            .filter(|&p| {
                !self.table.port_in_use(p, config::Protocol::Tcp)
                    && !self.table.port_in_use(p, config::Protocol::Udp)
            })
            .count();
        RoutesReply {
            public_ipv4: self.gateway.public_ipv4.to_string(),
            port_range: range.to_string(),
            free_ports: free as u32,
            reclaim_after: self.gateway.reclaim_after.map(format_duration),
            portal: self.portal.clone(),
            routes: self.table.entries().map(|e| self.view(e, now)).collect(),
        }
    }

    fn add(&mut self, request: RouteRequest) -> Result<RouteView, ApiError> {
        self.add_as(request, None)
    }

    /// Adds a runtime route; with an `owner`, only within what that account may hold.
    fn add_as(
        &mut self,
        request: RouteRequest,
        owner: Option<&User>,
    ) -> Result<RouteView, ApiError> {
        let started = Instant::now();
        let g = &self.gateway;
        let draft = check_route(&request, Some(g.public_ipv4), Some(g.port_range), &|f| {
            f.to_string()
        })
        .map_err(|problems| {
            let field = problems
                .first()
                .map(|p| p.field.clone())
                .unwrap_or_default();
            let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            ApiError::field(400, field, format!("invalid route:\n{}", list.join("\n")))
        })?;
        if let Some(user) = owner {
            check_claim(user, &draft, self.held_by(&user.name)).map_err(denied)?;
        }
        let now = self.clock.now();
        let port = match draft.port {
            Some(p) => p,
            None => {
                let users = &self.users;
                self.table
                    .allocate_port_avoiding(
                        &draft.name,
                        &draft.service,
                        draft.protocol,
                        g.port_range,
                        &|p| users.is_cooling(p, now),
                    )
                    .map_err(|e| {
                        let cooling = users.cooldown().keys().filter(|&&p| users.is_cooling(p, now)).count();
                        let why = if cooling > 0 {
                            format!("{e} ({cooling} released ports are cooling down for gateway.port_cooldown {})", format_duration(g.port_cooldown))
                        } else {
                            e.to_string()
                        };
                        ApiError::field(409, "port", why)
                    })?
            }
        };
        let entry = self
            .table
            .insert(draft.with_port(port), Source::Runtime, now, None)
            .map_err(|e| match e {
                RouteError::Conflict(f) => ApiError::field(409, f.field.clone(), f.to_string()),
                other => ApiError::new(409, other.to_string()),
            })?;
        let key = entry.route.key();
        // Live first (maps, then DNS: microseconds), recorded second (one journal line),
        // durable third (the flush, outside the lock, shared with concurrent changes), reply
        // last. A failed write undoes it all; a crash before the flush never told anyone the
        // route existed, and the next start's full sync drops its map entries.
        let diff = Diff {
            added: vec![entry.clone()],
            ..Diff::default()
        };
        let live = self
            .dataplane
            .apply(&self.table, &diff)
            .map_err(|e| e.to_string());
        if live.is_ok() {
            self.publish(&diff);
        }
        let live_us = started.elapsed().as_micros() as u64;
        let stored = RouteChange::Put(StoredRoute {
            route: entry.route.clone(),
            added: entry.added,
            last_seen: entry.last_seen,
        });
        if let Err(e) = live.and_then(|()| self.record(&[stored]).map_err(|e| e.to_string())) {
            // Undo everywhere, so the table, the maps, DNS and the file keep agreeing.
            if let Some(gone) = self.table.remove(&key) {
                let undo = Diff {
                    removed: vec![gone],
                    ..Diff::default()
                };
                let _ = self.dataplane.apply(&self.table, &undo);
                self.publish(&undo);
            }
            error!("route add {key}: {e}");
            return Err(ApiError::new(500, format!("not added: {e}")));
        }
        // `live_us`: until the route forwards and answers; `took_us`: until it is also on disk.
        info!(
            route = %key,
            port,
            backend = %entry.route.backend,
            source = "runtime",
            live_us,
            written_us = started.elapsed().as_micros() as u64,
            "route added"
        );
        Ok(self.view(&entry, now))
    }

    fn remove(&mut self, name: &str, service: Option<&str>) -> Result<Removed, ApiError> {
        let matching: Vec<Entry> = self
            .table
            .named(name)
            .filter(|e| service.is_none_or(|s| e.route.service == s))
            .cloned()
            .collect();
        let what = match service {
            Some(s) => format!("{name} with service {s}"),
            None => name.to_string(),
        };
        if matching.is_empty() {
            return Err(ApiError::field(
                404,
                "name",
                format!("no route named {what}"),
            ));
        }
        let (runtime, config): (Vec<Entry>, Vec<Entry>) = matching
            .into_iter()
            .partition(|e| e.source == Source::Runtime);
        if runtime.is_empty() {
            let keys: Vec<String> = config.iter().map(|e| e.route.key().to_string()).collect();
            return Err(ApiError::field(
                409,
                "name",
                format!(
                    "{} is defined in the config file, not at runtime: remove it there and send SIGHUP",
                    keys.join(", ")
                ),
            ));
        }
        let removed = self.remove_entries(&what, &runtime)?;
        if !config.is_empty() {
            let kept: Vec<String> = config.iter().map(|e| e.route.key().to_string()).collect();
            info!(kept = %kept.join(", "), "config routes of {name} kept");
        }
        Ok(removed)
    }

    /// Removes runtime `entries`: durable first, then the maps and the name services; their
    /// ports start cooling down.
    fn remove_entries(&mut self, what: &str, runtime: &[Entry]) -> Result<Removed, ApiError> {
        let now = self.clock.now();
        let views: Vec<RouteView> = runtime.iter().map(|e| self.view(e, now)).collect();
        let mut diff = Diff::default();
        for e in runtime {
            if let Some(gone) = self.table.remove(&e.route.key()) {
                diff.removed.push(gone);
            }
        }
        let deleted: Vec<RouteChange> = diff
            .removed
            .iter()
            .map(|e| RouteChange::Delete(e.route.key()))
            .collect();
        if let Err(e) = self.record(&deleted) {
            // Not recorded, so not done: put the routes back, each in its own slot (they
            // are still free), which is what the untouched maps still say.
            for gone in diff.removed {
                let key = gone.route.key();
                if let Err(e) = self.table.restore(gone) {
                    error!("route rm {what}: putting {key} back: {e}");
                }
            }
            error!("route rm {what}: {e}");
            return Err(ApiError::new(500, format!("not removed: {e}")));
        }
        if let Err(e) = self.dataplane.apply(&self.table, &diff) {
            error!("route rm {what}: updating the BPF maps failed: {e}");
        }
        self.publish(&diff);
        for e in &diff.removed {
            info!(route = %e.route.key(), port = e.route.port, "route removed");
        }
        self.cool_ports(&diff.removed, now);
        Ok(Removed { removed: views })
    }

    /// Starts the cool-down of the ports `gone` held that no remaining route uses, and
    /// records it (a failure only shortens a cool-down, so it is logged, not fatal).
    fn cool_ports(&mut self, gone: &[Entry], now: SystemTime) {
        let cooldown = self.gateway.port_cooldown;
        if cooldown.is_zero() || gone.is_empty() {
            return;
        }
        for e in gone {
            let p = e.route.port;
            if !self.table.port_in_use(p, config::Protocol::Tcp)
                && !self.table.port_in_use(p, config::Protocol::Udp)
            {
                self.users.cool(p, now, cooldown);
            }
        }
        if let Err(e) = self.store.save_accounts(&self.users) {
            warn!("recording the released ports' cool-down: {e}");
        }
    }

    fn held_by(&self, name: &str) -> usize {
        self.table.named(name).count()
    }

    fn user(&self, name: &str) -> Result<User, ApiError> {
        self.users
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::field(404, "name", format!("no user named {name}")))
    }

    fn user_view(&self, u: &User) -> UserView {
        UserView::of(u, self.held_by(&u.name))
    }

    fn users_reply(&self) -> UsersReply {
        UsersReply {
            users: self.users.all().map(|u| self.user_view(u)).collect(),
        }
    }

    fn user_add(&mut self, r: UserRequest) -> Result<TokenReply, ApiError> {
        let backends = parse_rules(&r.backends).map_err(|e| ApiError::field(400, "backends", e))?;
        let max = r.max_routes.unwrap_or(DEFAULT_MAX_ROUTES);
        let now = self.clock.now();
        let token = self
            .users
            .add(&r.name, backends, max, r.admin, now)
            .map_err(user_error)?;
        if let Err(e) = self.store.save_accounts(&self.users) {
            let _ = self.users.remove(&r.name);
            error!(user = %r.name, "user add: {e}");
            return Err(ApiError::new(500, format!("not added: {e}")));
        }
        let u = self.user(&r.name)?;
        info!(user = %u.name, admin = u.admin, max_routes = u.max_routes, backends = %r.backends.join(","), "user added");
        Ok(TokenReply {
            user: self.user_view(&u),
            token,
        })
    }

    fn user_remove(&mut self, name: &str, with_routes: bool) -> Result<UserView, ApiError> {
        let u = self.user(name)?;
        if u.from_config {
            return Err(ApiError::field(
                409,
                "name",
                format!("{name} is a [[user]] of the config file: remove it there and send SIGHUP"),
            ));
        }
        let held: Vec<Entry> = self.table.named(name).cloned().collect();
        if !held.is_empty() && !with_routes {
            let keys: Vec<String> = held.iter().map(|e| e.route.key().to_string()).collect();
            return Err(ApiError::field(
                409,
                "name",
                format!(
                    "{name} still holds {}: release them first, or remove the user --with-routes",
                    keys.join(", ")
                ),
            ));
        }
        let view = self.user_view(&u);
        let runtime: Vec<Entry> = held
            .into_iter()
            .filter(|e| e.source == Source::Runtime)
            .collect();
        if !runtime.is_empty() {
            self.remove_entries(&format!("routes of user {name}"), &runtime)?;
        }
        let gone = self.users.remove(name).map_err(user_error)?;
        if let Err(e) = self.store.save_accounts(&self.users) {
            self.users = Users::new(
                self.users
                    .all()
                    .cloned()
                    .chain(std::iter::once(gone))
                    .collect(),
                self.users.cooldown().clone(),
            );
            error!(user = %name, "user rm: {e}");
            return Err(ApiError::new(500, format!("not removed: {e}")));
        }
        info!(user = %name, "user removed");
        Ok(view)
    }

    fn user_token(&mut self, name: &str) -> Result<TokenReply, ApiError> {
        let before = self.users.clone();
        let token = self.users.rotate(name).map_err(user_error)?;
        if let Err(e) = self.store.save_accounts(&self.users) {
            self.users = before;
            error!(user = %name, "user token: {e}");
            return Err(ApiError::new(500, format!("no new token: {e}")));
        }
        let u = self.user(name)?;
        info!(user = %name, "new token issued; the old one no longer works");
        Ok(TokenReply {
            user: self.user_view(&u),
            token,
        })
    }

    fn me(&mut self, caller: &str) -> Result<MeReply, ApiError> {
        let u = self.user(caller)?;
        self.observe_activity_of(caller);
        let now = self.clock.now();
        Ok(MeReply {
            user: self.user_view(&u),
            public_ipv4: self.gateway.public_ipv4.to_string(),
            zone: self.zone.clone(),
            routes: self
                .table
                .named(caller)
                .map(|e| self.view(e, now))
                .collect(),
        })
    }

    fn claim(&mut self, caller: &str, r: ClaimRequest) -> Result<RouteView, ApiError> {
        let u = self.user(caller)?;
        let request = RouteRequest {
            name: u.name.clone(),
            service: r.service,
            protocol: r.protocol,
            backend: r.backend,
            port: None,
            proxy_protocol: r.proxy_protocol,
        };
        self.add_as(request, Some(&u))
    }

    fn release(
        &mut self,
        caller: &str,
        service: &str,
        protocol: Option<&str>,
    ) -> Result<Removed, ApiError> {
        let protocol: config::Protocol = protocol
            .unwrap_or("tcp")
            .parse()
            .map_err(|e: String| ApiError::field(400, "protocol", e))?;
        let key = config::RouteKey {
            name: caller.to_string(),
            service: service.to_string(),
            protocol,
        };
        let Some(e) = self.table.get(&key).cloned() else {
            return Err(denied(Denied::NoSuchRoute {
                user: caller.to_string(),
                key: key.to_string(),
            }));
        };
        if e.source == Source::Config {
            return Err(ApiError::field(
                403,
                "service",
                format!("{key} is set in the gateway's config file; ask the admin to remove it"),
            ));
        }
        self.remove_entries(&key.to_string(), &[e])
    }

    /// SIGHUP: applies the config file's routes as a diff. Gateway-wide settings that need
    /// the program reloaded are reported, not applied: a restart does that without a gap.
    fn reload(&mut self, cfg: Config) {
        for section in restart_sections(&self.started, &cfg) {
            warn!(
                section,
                "SIGHUP: {section} changed: that takes effect on restart (hitless: stop and start srvgate); the routes are reloaded now"
            );
        }
        let n = &cfg.gateway;
        let now = self.clock.now();
        let diff = match self.table.replace_config(&cfg.routes, now) {
            Ok(d) => d,
            Err(problems) => {
                let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
                error!(
                    "SIGHUP: keeping the running routes; the new config clashes with them:\n{}",
                    list.join("\n")
                );
                return;
            }
        };
        self.gateway.port_range = n.port_range;
        self.gateway.reclaim_after = n.reclaim_after;
        self.gateway.port_cooldown = n.port_cooldown;
        if apply_config_users(&mut self.users, &cfg, now) {
            if let Err(e) = self.store.save_accounts(&self.users) {
                error!("SIGHUP: recording the config file's users: {e}");
            }
        }
        if let Err(e) = self.dataplane.apply(&self.table, &diff) {
            error!("SIGHUP: updating the BPF maps failed: {e:#}");
        }
        // A runtime route the file took over leaves the state file.
        if diff.changed.iter().any(|c| c.old.source != c.new.source) {
            if let Err(e) = self.save() {
                error!("SIGHUP: {e}");
            }
        }
        self.publish(&diff);
        info!(
            added = diff.added.len(),
            removed = diff.removed.len(),
            changed = diff.changed.len(),
            "SIGHUP: config reloaded"
        );
        for e in &diff.added {
            info!(route = %e.route.key(), port = e.route.port, backend = %e.route.backend, "route added");
        }
        for e in &diff.removed {
            info!(route = %e.route.key(), port = e.route.port, "route removed");
        }
        for c in &diff.changed {
            info!(route = %c.new.route.key(), port = c.new.route.port, backend = %c.new.route.backend, source = c.new.source.as_str(), "route changed");
        }
    }

    /// Reads each route's last packet from the counters into the table.
    fn observe_activity(&mut self) {
        let idle: HashMap<u32, Duration> = self
            .table
            .entries()
            .filter_map(|e| Some((e.id, self.counters(e).idle?)))
            .collect();
        self.note_activity(&idle);
    }

    /// The same for `name`'s routes only (a student asking about theirs).
    fn observe_activity_of(&mut self, name: &str) {
        let idle: HashMap<u32, Duration> = self
            .table
            .named(name)
            .filter_map(|e| Some((e.id, self.counters(e).idle?)))
            .collect();
        self.note_activity(&idle);
    }

    /// Records last-seen times from how long each counter slot in `idle` has been quiet.
    /// Slots whose route changed since they were read are harmless: a slot is zeroed when
    /// it is handed to a new route, so a stale reading can only make that route look
    /// active for one pass.
    fn note_activity(&mut self, idle: &HashMap<u32, Duration>) {
        let now = self.clock.now();
        let seen: Vec<(config::RouteKey, Source, SystemTime)> = self
            .table
            .entries()
            .filter_map(|e| {
                let idle = idle.get(&e.id)?;
                Some((e.route.key(), e.source, now.checked_sub(*idle)?))
            })
            .collect();
        for (key, source, at) in seen {
            if self.table.note_activity(&key, at) && source == Source::Runtime {
                self.activity_unsaved = true;
            }
        }
    }

    /// The periodic pass: last-seen times, then reclaim, then (rarely) the state file.
    fn observe(&mut self) {
        self.observe_activity();
        self.after_activity();
    }

    /// The periodic pass after the last-seen times are in: reclaim, cool-downs, the state
    /// file.
    fn after_activity(&mut self) {
        if let Some(after) = self.gateway.reclaim_after {
            let now = self.clock.now();
            let idle = idle_routes(self.table.entries(), now, after);
            if !idle.is_empty() {
                self.reclaim(&idle, now, after);
            }
        }
        if self.users.expire_cooldowns(self.clock.now()) {
            if let Err(e) = self.store.save_accounts(&self.users) {
                warn!("forgetting ended port cool-downs: {e}");
            }
        }
        if self.activity_unsaved && self.last_save.elapsed() >= SAVE_ACTIVITY_EVERY {
            if let Err(e) = self.save() {
                warn!("saving last-seen times: {e}");
            }
        }
    }

    fn reclaim(&mut self, keys: &[config::RouteKey], now: SystemTime, after: Duration) {
        let mut diff = Diff::default();
        for key in keys {
            if let Some(e) = self.table.remove(key) {
                diff.removed.push(e);
            }
        }
        // Unlike a user's `rm`, a reclaim the file did not record is still carried out: the
        // whole file is written on a later pass, and a restart in between would reclaim
        // again.
        let deleted: Vec<RouteChange> = diff
            .removed
            .iter()
            .map(|e| RouteChange::Delete(e.route.key()))
            .collect();
        if let Err(e) = self.record(&deleted) {
            error!("reclaim: {e}");
            self.activity_unsaved = true;
        }
        self.flush_here("reclaim");
        if let Err(e) = self.dataplane.apply(&self.table, &diff) {
            error!("reclaim: updating the BPF maps failed: {e}");
        }
        self.publish(&diff);
        self.cool_ports(&diff.removed, now);
        for e in &diff.removed {
            let idle = now
                .duration_since(e.last_activity())
                .unwrap_or(Duration::ZERO);
            info!(
                name = %e.route.name,
                route = %e.route.key(),
                port = e.route.port,
                idle = %format_duration(idle),
                reclaim_after = %format_duration(after),
                "route reclaimed after being idle; its port is back in the pool"
            );
        }
    }
}

/// What a reload cannot apply: the parts of `new` that differ from the config the daemon
/// is `running`, by section. Routes, `port_range` and `reclaim_after` are applied live and
/// never listed.
fn restart_sections(running: &Config, new: &Config) -> Vec<&'static str> {
    let (g, n) = (&running.gateway, &new.gateway);
    let mut changed = Vec::new();
    if n.public_interface != g.public_interface
        || n.private_interfaces != g.private_interfaces
        || n.public_ipv4 != g.public_ipv4
    {
        changed.push("[gateway] interfaces or public_ipv4");
    }
    if new.dns != running.dns {
        changed.push("[dns]");
    }
    if new.http != running.http {
        changed.push("[http]");
    }
    if new.https != running.https {
        changed.push("[https]");
    }
    if new.metrics_listen != running.metrics_listen {
        changed.push("[metrics]");
    }
    if new.portal != running.portal {
        changed.push("[portal]");
    }
    changed
}

/// Applies the config file's `[[user]]`s to `users`, logging what changed; true if anything
/// did.
fn apply_config_users(users: &mut Users, cfg: &Config, now: SystemTime) -> bool {
    let (added, changed, removed) = users.apply_config(&cfg.users, now);
    for name in &added {
        info!(user = %name, "user added from the config file (issue a token: srvgate user token {name})");
    }
    for name in &changed {
        info!(user = %name, "user changed by the config file");
    }
    for name in &removed {
        info!(user = %name, "user removed: no longer in the config file");
    }
    !(added.is_empty() && changed.is_empty() && removed.is_empty())
}

/// The table's runtime routes as the store keeps them.
fn stored_routes(table: &RouteTable) -> Vec<StoredRoute> {
    table
        .entries()
        .filter(|e| e.source == Source::Runtime)
        .map(|e| StoredRoute {
            route: e.route.clone(),
            added: e.added,
            last_seen: e.last_seen,
        })
        .collect()
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // Every operation leaves the core consistent between its steps, so after a panic in one
    // the daemon keeps serving rather than cascading it.
    core.lock().unwrap_or_else(|p| p.into_inner())
}

/// One metrics scrape. What needs the core (the routes, the verdicts, the legs) is copied
/// under its lock; the per-route counters, one map read per route, are read after, so a
/// scrape of a full gateway never delays a route change.
fn scrape(core: &Mutex<Core>) -> String {
    let (routes, reader, verdicts, legs, routers) = {
        let c = lock(core);
        let routers: Vec<_> = c
            .http
            .iter()
            .map(HttpServer::sample)
            .chain(c.https.iter().map(HttpsServer::sample))
            .collect();
        let routes: Vec<(config::Route, u32)> =
            c.table.entries().map(|e| (e.route.clone(), e.id)).collect();
        let legs: Vec<LegSample> = c
            .dataplane
            .legs()
            .iter()
            .map(|l| LegSample {
                name: l.name.clone(),
                role: l.role_name(),
                egress: l.egress_name(),
                tx_dropped: None,
                rx_dropped: None,
            })
            .collect();
        (
            routes,
            c.dataplane.counter_reader().ok(),
            c.dataplane.verdicts().unwrap_or_default(),
            legs,
            routers,
        )
    };
    let routes: Vec<RouteSample> = routes
        .into_iter()
        .map(|(route, id)| RouteSample {
            route,
            counters: reader
                .as_ref()
                .and_then(|r| r.route_counters(id).ok())
                .unwrap_or_default(),
        })
        .collect();
    let legs: Vec<LegSample> = legs
        .into_iter()
        .map(|l| LegSample {
            tx_dropped: crate::kernel::sys::netdev_stat(&l.name, "tx_dropped"),
            rx_dropped: crate::kernel::sys::netdev_stat(&l.name, "rx_dropped"),
            ..l
        })
        .collect();
    let named: Vec<(&str, u64)> = verdict_names().iter().copied().zip(verdicts).collect();
    let mut text = metrics::render(&routes, &named, &legs) + &metrics::render_routers(&routers);
    metrics::render_peer_warnings(&mut text, crate::logging::peer_noise().seen());
    text
}

/// The periodic pass, with the counters of every route read while the core is unlocked
/// (see [`Dataplane::counter_reader`]); returns the status line for systemd.
async fn observe_without_lock(core: &Arc<Mutex<Core>>) -> Option<String> {
    let (reader, slots, traffic, now) = on_core(core, |c| {
        let slots: Vec<u32> = c.table.entries().map(|e| e.id).collect();
        (
            c.dataplane.counter_reader(),
            slots,
            c.traffic.clone(),
            unix(c.clock.now()),
        )
    })
    .await?;
    let idle = match reader {
        Ok(reader) => tokio::task::spawn_blocking(move || {
            let read: Vec<(u32, Counters)> = slots
                .into_iter()
                .filter_map(|id| Some((id, reader.route_counters(id).ok()?)))
                .collect();
            let bytes: Vec<(u32, u64, u64)> = read
                .iter()
                .map(|(id, c)| (*id, c.inbound_bytes, c.outbound_bytes))
                .collect();
            traffic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(now, &bytes);
            read.into_iter()
                .filter_map(|(id, c)| Some((id, c.idle?)))
                .collect::<HashMap<u32, Duration>>()
        })
        .await
        .ok()?,
        Err(e) => {
            warn!("reading the route counters: {e}");
            HashMap::new()
        }
    };
    on_core(core, move |c| {
        c.note_activity(&idle);
        c.after_activity();
        c.status_line()
    })
    .await
}

/// Runs `f` on the core from the event loop. Everything the core does may block (its lock,
/// map syscalls, netlink, sysfs, an fsync), so it runs on tokio's blocking pool, like the
/// control API's and the metrics scrape's calls; the async threads only wait for it. `None`
/// if `f` panicked.
async fn on_core<R: Send + 'static>(
    core: &Arc<Mutex<Core>>,
    f: impl FnOnce(&mut Core) -> R + Send + 'static,
) -> Option<R> {
    let core = core.clone();
    tokio::task::spawn_blocking(move || f(&mut lock(&core)))
        .await
        .ok()
}

/// The API's view of the daemon.
struct Handle {
    core: Arc<Mutex<Core>>,
    shutdown: mpsc::UnboundedSender<Shutdown>,
}

impl Handle {
    /// Runs a change on the core, then waits, with the lock released, until what it
    /// recorded is durable: the reply never comes before that. A flush that fails leaves
    /// the change live (it is in the maps and answered by DNS) but maybe not on disk, and
    /// says so; the store then writes a whole snapshot with the next change.
    fn change<R>(&self, f: impl FnOnce(&mut Core) -> Result<R, ApiError>) -> Result<R, ApiError> {
        let (result, commits) = {
            let mut core = lock(&self.core);
            let result = f(&mut core);
            (result, std::mem::take(&mut core.unflushed))
        };
        for commit in commits {
            if let Err(e) = commit.wait() {
                error!("state: {e}");
                return Err(ApiError::new(
                    500,
                    format!("the change is live but may not survive a crash: {e}"),
                ));
            }
        }
        result
    }
}

impl Control for Handle {
    fn list(&self) -> RoutesReply {
        lock(&self.core).list()
    }
    fn add(&self, request: RouteRequest) -> Result<RouteView, ApiError> {
        self.change(|c| c.add(request))
    }
    fn remove(&self, name: &str, service: Option<&str>) -> Result<Removed, ApiError> {
        self.change(|c| c.remove(name, service))
    }
    fn shutdown(&self, request: Shutdown) {
        let _ = self.shutdown.send(request);
    }
    fn users(&self) -> UsersReply {
        lock(&self.core).users_reply()
    }
    fn user_add(&self, request: UserRequest) -> Result<TokenReply, ApiError> {
        lock(&self.core).user_add(request)
    }
    fn user_remove(&self, name: &str, with_routes: bool) -> Result<UserView, ApiError> {
        self.change(|c| c.user_remove(name, with_routes))
    }
    fn user_token(&self, name: &str) -> Result<TokenReply, ApiError> {
        lock(&self.core).user_token(name)
    }
    fn authenticate(&self, token: &str) -> Option<Caller> {
        let core = lock(&self.core);
        let u = core.users.authenticate(token).ok()?;
        Some(Caller {
            name: u.name.clone(),
            admin: u.admin,
        })
    }
    fn me(&self, caller: &str) -> Result<MeReply, ApiError> {
        lock(&self.core).me(caller)
    }
    fn claim(&self, caller: &str, request: ClaimRequest) -> Result<RouteView, ApiError> {
        self.change(|c| c.claim(caller, request))
    }
    fn release(
        &self,
        caller: &str,
        service: &str,
        protocol: Option<&str>,
    ) -> Result<Removed, ApiError> {
        self.change(|c| c.release(caller, service, protocol))
    }
    fn authenticate_digest(&self, name: &str, token_sha256: &[u8; 32]) -> Option<Caller> {
        let core = lock(&self.core);
        let u = core.users.authenticate_digest(name, token_sha256).ok()?;
        Some(Caller {
            name: u.name.clone(),
            admin: u.admin,
        })
    }
    fn gateway(&self) -> GatewayView {
        let core = lock(&self.core);
        let names = verdict_names().iter().map(|n| n.to_string());
        GatewayView {
            legs: core
                .dataplane
                .legs()
                .iter()
                .map(|l| LegView {
                    name: l.name.clone(),
                    role: l.role_name().to_string(),
                    egress: l.egress_name().to_string(),
                })
                .collect(),
            verdicts: names
                .zip(core.dataplane.verdicts().unwrap_or_default())
                .collect(),
        }
    }
    fn traffic(&self, routes: &[config::RouteKey]) -> Vec<Vec<TrafficMinute>> {
        let (slots, traffic) = {
            let core = lock(&self.core);
            let slots: Vec<Option<(u32, u64)>> = routes
                .iter()
                .map(|k| core.table.get(k).map(|e| (e.id, unix(e.added))))
                .collect();
            (slots, core.traffic.clone())
        };
        let traffic = traffic.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .into_iter()
            .map(|s| s.map_or_else(Vec::new, |(id, added)| traffic.history(id, added)))
            .collect()
    }
    fn recent_audit(&self) -> Vec<String> {
        crate::logging::recent_audit()
    }
}

fn denied(d: Denied) -> ApiError {
    ApiError::field(d.status(), d.field(), d.to_string())
}

fn user_error(e: UserError) -> ApiError {
    let field = match e {
        UserError::Quota(_) => "max_routes",
        UserError::Random => "token",
        _ => "name",
    };
    let msg = e.to_string();
    let msg = msg
        .split_once(": ")
        .map_or(msg.clone(), |(_, m)| m.to_string());
    ApiError::field(e.status(), field, msg)
}

/// Builds the table from the config's routes and the stored runtime ones. A stored route
/// identical to a config route was taken over by the file while the daemon was down and
/// is dropped from the store; any other clash is an error naming both.
fn build_table(
    cfg: &Config,
    config_path: &Path,
    store: &dyn Store,
    stored: Vec<StoredRoute>,
    now: SystemTime,
) -> Result<(RouteTable, bool), DaemonError> {
    let mut table = RouteTable::new();
    table
        .replace_config(&cfg.routes, now)
        .map_err(|problems| DaemonError::Clash {
            state: store.location(),
            config: config_path.to_path_buf(),
            problems: problems.iter().map(ToString::to_string).collect(),
        })?;
    let mut problems = Vec::new();
    let mut taken_over = false;
    for s in stored {
        let key = s.route.key();
        if table.get(&key).is_some_and(|e| e.route == s.route) {
            info!(route = %key, "runtime route now defined identically in the config file; the file owns it");
            taken_over = true;
            continue;
        }
        if !cfg.gateway.port_range.contains(s.route.port) {
            warn!(route = %key, port = s.route.port, "runtime route outside gateway.port_range {}; kept, since its port was handed out", cfg.gateway.port_range);
        }
        match table.insert(s.route, Source::Runtime, s.added, s.last_seen) {
            Ok(_) => {}
            Err(e) => problems.push(format!("runtime route {key}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(DaemonError::Clash {
            state: store.location(),
            config: config_path.to_path_buf(),
            problems,
        });
    }
    Ok((table, taken_over))
}

/// Runs the gateway until SIGINT/SIGTERM or an API shutdown. `cfg` was loaded from
/// `opts.config` and checked against the machine by the caller.
pub async fn run(cfg: Config, opts: Options) -> Result<(), DaemonError> {
    let clock = Clock::new(opts.clock_offset_file.clone());
    let store = StateStore::open(&opts.state_dir)?;
    let stored = store.load_routes(cfg.gateway.public_ipv4)?;
    let mut users = store.load_accounts()?;
    let mut store = store;
    if apply_config_users(&mut users, &cfg, clock.now()) {
        store.save_accounts(&users)?;
    }
    let (table, taken_over) = build_table(&cfg, &opts.config, &store, stored, clock.now())?;

    // Bind every socket before touching the kernel, so a busy port fails with nothing changed.
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|error| DaemonError::Metrics { addr, error })?,
        ),
        None => None,
    };
    let api_listener = api::bind(&opts.socket)?;
    let dns = match &cfg.dns {
        Some(d) => Some(Arc::new(
            DnsServer::start(d, cfg.gateway.public_ipv4, &table.routes()).await?,
        )),
        None => None,
    };
    let http = match (&cfg.http, &cfg.dns) {
        (Some(h), Some(d)) => Some(HttpServer::start(h, &d.zone, &table.routes()).await?),
        _ => None,
    };
    let http_addrs = http.as_ref().map(HttpServer::local_addrs);
    let https = match (&cfg.https, &cfg.dns) {
        (Some(h), Some(d)) => {
            let http_service = cfg.http.as_ref().map(|h| h.service.as_str());
            Some(HttpsServer::start(h, http_service, &d.zone, &table.routes()).await?)
        }
        _ => None,
    };
    let https_addrs = https.as_ref().map(HttpsServer::local_addrs);
    let portal = match &cfg.portal {
        Some(p) => Some(PortalServer::bind(p, &opts.state_dir).await?),
        None => None,
    };
    let portal_info = portal.as_ref().map(|p| p.info().clone());

    let dataplane = XdpDataplane::start(&cfg.gateway, opts.xdp_mode, &opts.pin_dir)?;
    let mut core = Core::new(table, Box::new(dataplane), Box::new(store), &cfg, clock);
    core.dns = dns.clone();
    core.http = http;
    core.https = https;
    core.users = users;
    core.portal = portal_info.clone();
    core.take_over(taken_over)?;
    let routes = core.table.len();
    let core = Arc::new(Mutex::new(core));

    let (shutdown_tx, mut shutdown_rx) = mpsc::unbounded_channel();
    let handle: Arc<dyn Control> = Arc::new(Handle {
        core: core.clone(),
        shutdown: shutdown_tx,
    });
    let portal_tasks = portal.map(|p| p.serve(handle.clone())).unwrap_or_default();
    let api_task = tokio::spawn(api::serve(api_listener, handle));
    let metrics_task = metrics_listener.map(|listener| {
        let core = core.clone();
        tokio::spawn(metrics::serve(listener, Arc::new(move || scrape(&core))))
    });

    info!(
        routes,
        public = %cfg.gateway.public_ipv4,
        dns = ?dns.as_ref().map(|d| d.local_addrs()),
        http = ?http_addrs,
        https = ?https_addrs,
        metrics = ?cfg.metrics_listen,
        portal = ?portal_info.as_ref().map(|p| &p.listen),
        portal_fingerprint = ?portal_info.as_ref().map(|p| &p.fingerprint),
        socket = %opts.socket.display(),
        pins = %opts.pin_dir.display(),
        state = %opts.state_dir.display(),
        "srvgate ready"
    );
    // Only now: XDP is attached and every socket answers, which is what systemd waits for.
    let status = on_core(&core, |c| c.status_line())
        .await
        .unwrap_or_default();
    tell_systemd(notify::ready(&status));

    let result = event_loop(&opts, &core, &mut shutdown_rx).await;
    let detach = match &result {
        Ok(detach) => *detach,
        Err(_) => opts.detach_on_exit,
    };
    tell_systemd(notify::stopping(if detach {
        "stopping; detaching XDP"
    } else {
        "stopping; XDP stays attached and forwarding"
    }));

    // Awaited, so every accept loop has ended here. A connection they spawned may still
    // be answering; whatever it asks of the core after `finish` finds the data plane stopped.
    api_task.abort();
    let _ = api_task.await;
    for t in portal_tasks {
        t.abort();
        let _ = t.await;
    }
    if let Some(t) = metrics_task {
        t.abort();
        let _ = t.await;
    }
    on_core(&core, |c| {
        if let Err(e) = c.save() {
            warn!("saving the state file at exit: {e}");
        }
        c.dns = None;
        c.http = None;
        c.https = None;
    })
    .await;
    if let Some(d) = dns.and_then(Arc::into_inner) {
        d.shutdown().await;
    }
    let pin_dir = opts.pin_dir.clone();
    let outcome = on_core(&core, move |c| finish(c, detach, &pin_dir))
        .await
        .unwrap_or_else(|| {
            Err(DaemonError::Runtime(
                "stopping the data plane panicked".into(),
            ))
        });
    // Last: `srvgate down` takes the socket's disappearance to mean "detached and gone".
    let _ = std::fs::remove_file(&opts.socket);
    outcome?;
    result.map(|_| ())
}

/// A failed notification is worth a warning, never an exit: forwarding does not depend on it.
fn tell_systemd(sent: std::io::Result<bool>) {
    if let Err(e) = sent {
        warn!("notifying systemd (NOTIFY_SOCKET): {e}");
    }
}

/// The data plane of a core that has shut down: every change is refused, and nothing of
/// the kernel's program, links or maps is held.
struct Stopped {
    none: crate::kernel::dataplane::PinnedFrontends,
}

impl Dataplane for Stopped {
    fn apply(&mut self, _: &RouteTable, _: &Diff) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn sync_all(
        &mut self,
        _: &RouteTable,
        _: &std::collections::HashSet<u32>,
    ) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn pinned_frontends(&self) -> &crate::kernel::dataplane::PinnedFrontends {
        &self.none
    }
    fn route_counters(&self, _: u32) -> Result<Counters, DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn counter_reader(
        &self,
    ) -> Result<Arc<dyn crate::kernel::dataplane::CounterReader>, DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn legs(&self) -> &[crate::kernel::dataplane::Leg] {
        &[]
    }
    fn refresh_egress(&mut self) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn tick_clock(&mut self) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn detach(self: Box<Self>) -> Result<(), DataplaneError> {
        Ok(())
    }
}

/// Takes the data plane out of the core and detaches it, or deliberately does not. It is
/// taken under the core's lock rather than by unwrapping the last `Arc`: a call still in
/// flight on a blocking thread (an API request whose task was aborted) finishes first, and
/// any later one finds [`Stopped`], so once this returns the process holds no descriptor of
/// the program or its links, whoever still holds a clone of the core.
fn finish(c: &mut Core, detach: bool, pin_dir: &Path) -> Result<(), DaemonError> {
    let dataplane = std::mem::replace(
        &mut c.dataplane,
        Box::new(Stopped {
            none: Default::default(),
        }),
    );
    if detach {
        dataplane.detach()?;
        info!("stopped; XDP detached from every leg");
    } else {
        drop(dataplane);
        info!(
            pins = %pin_dir.display(),
            "stopped; XDP stays attached and forwarding (pinned); the next `srvgate run` takes over without a gap, `srvgate down` detaches"
        );
    }
    Ok(())
}

/// Serves signals and timers; returns whether to detach on the way out.
async fn event_loop(
    opts: &Options,
    core: &Arc<Mutex<Core>>,
    shutdown: &mut mpsc::UnboundedReceiver<Shutdown>,
) -> Result<bool, DaemonError> {
    let sig = |kind| {
        signal(kind).map_err(|e| DaemonError::Runtime(format!("installing signal handlers: {e}")))
    };
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    let mut egress = tokio::time::interval(EGRESS_REFRESH);
    let mut clock = tokio::time::interval(CLOCK_TICK);
    let mut observe = tokio::time::interval(OBSERVE_EVERY);
    observe.tick().await;
    let mut status = on_core(core, |c| c.status_line()).await.unwrap_or_default();
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(opts.detach_on_exit); }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(opts.detach_on_exit); }
            Some(s) = shutdown.recv() => {
                info!(detach = s.detach, "shutdown requested over the control socket");
                return Ok(s.detach || opts.detach_on_exit);
            }
            _ = hup.recv() => {
                tell_systemd(notify::reloading());
                let cfg = Config::load(&opts.config).and_then(|c| {
                    for w in c.check_machine(&opts.config)? {
                        warn!("SIGHUP: {}: {w}", opts.config.display());
                    }
                    Ok(c)
                });
                match cfg {
                    Ok(cfg) => {
                        on_core(core, move |c| c.reload(cfg)).await;
                    }
                    Err(e) => error!("SIGHUP: keeping the running routes; {e}"),
                }
                if let Some(line) = on_core(core, |c| c.status_line()).await {
                    tell_systemd(notify::ready(&line));
                }
            }
            _ = egress.tick() => {
                if let Some(Err(e)) = on_core(core, |c| c.dataplane.refresh_egress()).await {
                    warn!("refreshing egress modes: {e:#}");
                }
            }
            _ = clock.tick() => {
                if let Some(Err(e)) = on_core(core, |c| c.dataplane.tick_clock()).await {
                    warn!("giving the program the time: {e:#}");
                }
            }
            _ = observe.tick() => {
                crate::logging::report_suppressed();
                let line = observe_without_lock(core).await;
                // Runtime adds, removals and reclaims change the count between reloads.
                if let Some(line) = line.filter(|l| *l != status) {
                    tell_systemd(notify::status(&line));
                    status = line;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
