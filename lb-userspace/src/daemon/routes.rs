//! The core's own plumbing (start-up's take-over, recording, publishing to the name
//! services, the status line) and the route operations: list, add, remove, reload, and the
//! periodic pass (last-seen, reclaim).
//!
//! SIGHUP applies the routes, `port_range` and `reclaim_after`, and warns by name about every
//! other section that changed (`restart_sections`). With `[cluster]`: other gateways' changes
//! arrive as `Remote` and `Core::apply_remote` applies them like the core's own (table, then
//! maps and name services), never writing them back; an add the store refuses because another
//! gateway took the port a moment earlier is undone and allocated again above the ports the
//! store named (up to `ALLOCATION_ATTEMPTS`), a change the store could not reach is undone and
//! answered 503, and the SOA serial is the shared table's revision (`sync_serial`).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracing::{error, info, warn};

use crate::{
    cluster::{seen::Seen, Backing, Claim, Remote},
    config::{self, check_pool, Config},
    kernel::dataplane::{Counters, Dataplane},
    table::{
        routes::{idle_routes, Diff, Entry, RouteError, RouteTable, Source},
        state::{RouteChange, StateError, StoredRoute},
        users::{check_claim, ConfigRemoval, User, Users},
    },
};
use lb_model::{
    api::{ApiError, Removed, RouteView, RoutesReply},
    backend_field, check_route, format_duration, ConfigUser, RouteRequest,
};

use super::students::denied;
use super::{unix, Clock, Core, DaemonError, Routes, SAVE_ACTIVITY_EVERY};

/// Allocations tried when a shared store refuses the port chosen (another gateway took it
/// a moment earlier). Each retry avoids every port the store named and starts a few ports
/// above the highest of them, so two gateways claiming at once stop racing for the same
/// lowest free port.
const ALLOCATION_ATTEMPTS: usize = 8;

/// Why one attempt to add a route failed.
enum Failed {
    /// Refused before anything changed (invalid, conflicting, no port left).
    Api(ApiError),
    /// The maps refused it.
    Live(String),
    /// The store refused it or did not answer.
    Store(StateError),
}

impl Core {
    /// A core for `cfg` without name services yet; [`Core::take_over`] brings the data plane
    /// in line.
    pub(super) fn new(
        table: RouteTable,
        dataplane: Box<dyn Dataplane>,
        store: Backing,
        cfg: &Config,
        clock: Clock,
    ) -> Core {
        Core {
            seen: store.is_shared().then(Seen::default),
            routes: super::Routes {
                table,
                dataplane,
                store,
                activity_unsaved: false,
                last_save: Instant::now(),
                unflushed: Vec::new(),
            },
            mirrors: super::Mirrors::default(),
            students: super::Students {
                users: Users::default(),
                config_users: cfg.users.clone(),
            },
            settings: super::Settings {
                gateway: cfg.gateway.clone(),
                started: Config {
                    routes: Vec::new(),
                    ..cfg.clone()
                },
                zone: cfg.dns.as_ref().map(|d| d.zone.clone()),
                portal: None,
                http_service: cfg.http.as_ref().map(|h| h.service.clone()),
                certs: None,
                own: config::OwnAddresses::default(),
                interfaces: crate::machine::interfaces,
            },
            clock,
            traffic: Arc::default(),
            checks: None,
        }
    }

    /// Start-up's last step: takes back the counter slots the pinned maps kept, makes the
    /// maps hold exactly the table, records routes the config file `taken_over` from the
    /// store, then catches up with the activity and idleness of the time no daemon watched.
    pub(super) fn take_over(&mut self, taken_over: bool) -> Result<(), DaemonError> {
        let fresh = self
            .routes
            .table
            .adopt_slots(self.routes.dataplane.pinned_frontends());
        self.routes.dataplane.sync_all(&self.routes.table, &fresh)?;
        for e in self.routes.table.entries() {
            let r = &e.route;
            info!(route = %r.key(), public = %format!("{}:{}", self.settings.gateway.public_ipv4, r.port), backends = %r.backends, source = e.source.as_str(), "route");
        }
        if taken_over {
            self.routes.save()?;
        }
        // The traffic charts' baseline is what the pinned counters hold now: a route
        // claimed and used before the first periodic pass must not have its traffic taken
        // for the baseline.
        let readings: Vec<(u32, u64, u64)> = self
            .routes
            .table
            .entries()
            .filter_map(|e| {
                let c = self.routes.dataplane.route_counters(e.id).ok()?;
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

    /// Reads the gateway's own addresses again (an address added to an interface at run
    /// time): new routes are checked against them from now on, a runtime route that now
    /// points at one is removed, and a config route that does is named in an error (the
    /// file owns it; the web routers refuse to connect to it). Returns what it read, for
    /// the data plane's source guard, so the machine is read once per refresh; `None` when
    /// it could not be read (the last known addresses and rules stay).
    pub(super) fn refresh_own(&mut self) -> Option<Vec<crate::machine::Interface>> {
        let interfaces = match (self.settings.interfaces)() {
            Ok(i) => i,
            Err(e) => {
                warn!("reading the interfaces' addresses: {e}; keeping the last ones (backend rule, source guard)");
                return None;
            }
        };
        self.set_own(self.settings.started.own_addresses(&interfaces));
        Some(interfaces)
    }

    /// Takes `own` as the gateway's own addresses; see [`Core::refresh_own`].
    pub(super) fn set_own(&mut self, own: config::OwnAddresses) {
        if own == self.settings.own {
            return;
        }
        let before = std::mem::replace(&mut self.settings.own, own);
        // Proportional to the table, but only when the machine's addresses change.
        let mut runtime = Vec::new();
        for e in self.routes.table.entries() {
            let Err(rule) = check_pool(&e.route.backends, &self.settings.own) else {
                continue;
            };
            if e.source == Source::Runtime {
                error!(route = %e.route.key(), "this route's backend is now the gateway itself: {rule}; removing the route");
                runtime.push(e.clone());
            } else {
                error!(route = %e.route.key(), "this config route's backend is now the gateway itself: {rule}; remove it from the config file (SIGHUP refuses the file until then)");
            }
        }
        if !runtime.is_empty() {
            if self
                .remove_entries("whose backend became the gateway itself", &runtime)
                .is_err()
            {
                // Logged there; the routes stay. Forgetting the new addresses makes the
                // next refresh try again.
                self.settings.own = before;
                return;
            }
            self.routes
                .flush_here("removing routes to the gateway itself");
        }
    }

    /// The one line `systemctl status` shows while running.
    pub(super) fn status_line(&self) -> String {
        let runtime = self
            .routes
            .table
            .entries()
            .filter(|e| e.source == Source::Runtime)
            .count();
        let gw = &self.settings.gateway;
        format!(
            "forwarding {} routes ({runtime} runtime) on {}, {}",
            self.routes.table.len(),
            gw.public_interface,
            gw.private_interfaces.join(", ")
        )
    }

    /// Gives the name services (DNS, the web routers) a change of the table.
    pub(super) fn publish(&self, diff: &Diff) {
        if let Some(c) = &self.checks {
            c.borrow_mut().follow(diff);
        }
        self.mirrors.publish(&self.routes.table, diff);
    }

    pub(super) fn view(&self, e: &Entry, now: SystemTime) -> RouteView {
        let c = self.routes.counters(e);
        let r = &e.route;
        let idle = now
            .duration_since(e.last_activity())
            .unwrap_or(Duration::ZERO);
        let reclaim_in = match (e.source, self.settings.gateway.reclaim_after) {
            (Source::Runtime, Some(after)) => Some(after.saturating_sub(idle).as_secs()),
            _ => None,
        };
        let checks = self.checks.as_ref().map(|c| c.borrow());
        RouteView {
            name: r.name.clone(),
            service: r.service.clone(),
            protocol: r.protocol.to_string(),
            port: r.port,
            backend: e.primary().to_string(),
            backends: super::pools::backend_views(e, checks.as_deref()),
            fail_open: e.fail_open(),
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
            check: super::pools::check_text(e, checks.as_deref()),
        }
    }

    pub(super) fn list(&mut self) -> RoutesReply {
        // Fresh last-seen times, so `status` agrees with what the counters say right now.
        self.observe_activity();
        let now = self.clock.now();
        let range = self.settings.gateway.port_range;
        let free = (range.first..=range.last)
            .filter(|&p| {
                !self.routes.table.port_in_use(p, lb_model::Protocol::Tcp)
                    && !self.routes.table.port_in_use(p, lb_model::Protocol::Udp)
            })
            .count();
        RoutesReply {
            public_ipv4: self.settings.gateway.public_ipv4.to_string(),
            port_range: range.to_string(),
            free_ports: free as u32,
            reclaim_after: self.settings.gateway.reclaim_after.map(format_duration),
            portal: self.settings.portal.clone(),
            cluster: self.routes.store.cluster().map(|c| c.view()),
            certificate: self
                .settings
                .certs
                .as_ref()
                .map(|c| c.summary(std::time::SystemTime::now())),
            routes: self
                .routes
                .table
                .entries()
                .map(|e| self.view(e, now))
                .collect(),
        }
    }

    pub(super) fn add(&mut self, request: RouteRequest) -> Result<RouteView, ApiError> {
        self.add_as(request, None)
    }

    /// Adds a runtime route; with an `owner`, only within what that account may hold.
    pub(super) fn add_as(
        &mut self,
        request: RouteRequest,
        owner: Option<&User>,
    ) -> Result<RouteView, ApiError> {
        let started = Instant::now();
        let g = &self.settings.gateway;
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
        // The gateway's rule, for admins too: before the students' own rule, which a
        // CIDR covering the gateway's private address would pass. The addresses are read
        // again here, so one that arrived since the last refresh counts at once.
        // Unreadable, they fail the add closed: the rule is not skipped.
        let fresh = (self.settings.interfaces)()
            .map(|i| self.settings.started.own_addresses(&i))
            .map_err(|e| {
                error!("route add: reading this gateway's addresses: {e}");
                ApiError::new(
                    503,
                    format!("cannot read this gateway's own addresses to check the backend against them: {e}"),
                )
            })?;
        check_pool(&draft.backends, &self.settings.own)
            .and_then(|()| check_pool(&draft.backends, &fresh))
            .map_err(|e| ApiError::field(403, backend_field(&draft.backends), e))?;
        if let Some(user) = owner {
            check_claim(user, &draft, self.held_by(&user.name)).map_err(denied)?;
        }
        // A student's claim: the store counts it again where every gateway's claims meet.
        let claim = owner.filter(|u| !u.admin).map(|u| Claim {
            user: u.name.clone(),
            max_routes: u.max_routes,
            config_held: self
                .routes
                .table
                .named(&u.name)
                .filter(|e| e.source == Source::Config)
                .count(),
        });
        let now = self.clock.now();
        // Ports a shared store said are taken (by another gateway, a moment ago), and the
        // lowest port to try next.
        let mut taken: Vec<u16> = Vec::new();
        let mut floor = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_add(&draft, claim.as_ref(), now, &taken, floor, started) {
                Ok(entry) => return Ok(self.view(&entry, now)),
                Err(Failed::Store(StateError::Claim(d))) => {
                    info!(route = %draft.key(), "claim refused by the shared table: {d}");
                    return Err(denied(d));
                }
                Err(Failed::Store(StateError::Refused {
                    reason,
                    taken: more,
                })) if draft.port.is_none()
                    && attempt < ALLOCATION_ATTEMPTS
                    && !more.is_empty() =>
                {
                    info!(route = %draft.key(), "{reason}; allocating another port");
                    taken.extend(more.iter().map(|&(p, _)| p));
                    // The other gateway goes on with the lowest free port, as this one
                    // would: skip a few beyond what it holds (the jitter needs no quality,
                    // only to differ between gateways).
                    let jitter = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos() % 8)
                        as u16;
                    let highest = taken.iter().copied().max().unwrap_or(0);
                    floor = highest.saturating_add(1 + jitter);
                }
                Err(Failed::Api(e)) => return Err(e),
                Err(Failed::Live(e)) => {
                    error!("route add {}: {e}", draft.key());
                    return Err(ApiError::new(500, format!("not added: {e}")));
                }
                Err(Failed::Store(e)) => {
                    error!("route add {}: {e}", draft.key());
                    return Err(ApiError::new(e.status(), format!("not added: {e}")));
                }
            }
        }
    }

    /// One attempt of [`Core::add_as`]: allocates (around `taken`, from `floor` up if it
    /// can), then table, maps, DNS and the routers, then the store; anything refused is
    /// undone everywhere.
    fn try_add(
        &mut self,
        draft: &lb_model::RouteDraft,
        claim: Option<&Claim>,
        now: SystemTime,
        taken: &[u16],
        floor: u16,
        started: Instant,
    ) -> Result<Entry, Failed> {
        let g = &self.settings.gateway;
        let port = match draft.port {
            Some(p) => p,
            None => {
                let users = &self.students.users;
                let avoid = |p: u16| users.is_cooling(p, now) || taken.contains(&p);
                let allocate = |floor: u16| {
                    self.routes.table.allocate_port_avoiding(
                        &draft.name,
                        &draft.service,
                        draft.protocol,
                        g.port_range,
                        &|p| p < floor || avoid(p),
                    )
                };
                // Above the floor if anything is free there, else anywhere.
                allocate(floor)
                    .or_else(|_| allocate(0))
                    .map_err(|e| {
                        let cooling = users.cooldown().keys().filter(|&&p| users.is_cooling(p, now)).count();
                        let why = if cooling > 0 {
                            format!("{e} ({cooling} released ports are cooling down for gateway.port_cooldown {})", format_duration(g.port_cooldown))
                        } else {
                            e.to_string()
                        };
                        Failed::Api(ApiError::field(409, "port", why))
                    })?
            }
        };
        let entry = self
            .routes
            .table
            .insert(draft.clone().with_port(port), Source::Runtime, now, None)
            .map_err(|e| {
                Failed::Api(match e {
                    RouteError::Conflict(c) => {
                        ApiError::field(409, c.error.field.clone(), c.error.to_string())
                    }
                    other => ApiError::new(409, other.to_string()),
                })
            })?;
        let key = entry.route.key();
        // Live first (maps, then DNS: microseconds), recorded second (one journal line, or
        // one etcd transaction), durable third (the flush, outside the lock, shared with
        // concurrent changes), reply last. A failed write undoes it all; a crash before the
        // flush never told anyone the route existed, and the next start's full sync drops
        // its map entries.
        let diff = Diff {
            added: vec![entry.clone()],
            ..Diff::default()
        };
        let live = self
            .routes
            .dataplane
            .apply(&self.routes.table, &diff)
            .map_err(|e| Failed::Live(e.to_string()));
        if live.is_ok() {
            self.publish(&diff);
        }
        let live_us = started.elapsed().as_micros() as u64;
        let stored = StoredRoute {
            route: entry.route.clone(),
            added: entry.added,
            last_seen: entry.last_seen,
        };
        let recorded = live.and_then(|()| {
            match claim {
                Some(c) => self.routes.record_claim(&stored, c),
                None => self.routes.record(&[RouteChange::Put(stored)]),
            }
            .map_err(Failed::Store)
        });
        if let Err(e) = recorded {
            // Undo everywhere, so the table, the maps, DNS and the store keep agreeing.
            if let Some(gone) = self.routes.table.remove(&key) {
                let undo = Diff {
                    removed: vec![gone],
                    ..Diff::default()
                };
                let _ = self.routes.dataplane.apply(&self.routes.table, &undo);
                self.publish(&undo);
            }
            return Err(e);
        }
        self.sync_serial();
        // `live_us`: until the route forwards and answers; `took_us`: until it is also on disk.
        info!(
            route = %key,
            port,
            backends = %entry.route.backends,
            source = "runtime",
            live_us,
            written_us = started.elapsed().as_micros() as u64,
            "route added"
        );
        Ok(entry)
    }

    pub(super) fn remove(
        &mut self,
        name: &str,
        service: Option<&str>,
        protocol: Option<lb_model::Protocol>,
    ) -> Result<Removed, ApiError> {
        let matching: Vec<Entry> = self
            .routes
            .table
            .named(name)
            .filter(|e| service.is_none_or(|s| e.route.service == s))
            .filter(|e| protocol.is_none_or(|p| e.route.protocol == p))
            .cloned()
            .collect();
        let mut what = match service {
            Some(s) => format!("{name} with service {s}"),
            None => name.to_string(),
        };
        if let Some(p) = protocol {
            what.push_str(&format!(" over {p}"));
        }
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
    pub(super) fn remove_entries(
        &mut self,
        what: &str,
        runtime: &[Entry],
    ) -> Result<Removed, ApiError> {
        let now = self.clock.now();
        let views: Vec<RouteView> = runtime.iter().map(|e| self.view(e, now)).collect();
        let mut diff = Diff::default();
        for e in runtime {
            if let Some(gone) = self.routes.table.remove(&e.route.key()) {
                diff.removed.push(gone);
            }
        }
        let deleted: Vec<RouteChange> = diff
            .removed
            .iter()
            .map(|e| RouteChange::Delete(e.route.key()))
            .collect();
        if let Err(e) = self.routes.record(&deleted) {
            // Not recorded, so not done: put the routes back, each in its own slot (they
            // are still free), which is what the untouched maps still say.
            for gone in diff.removed {
                let key = gone.route.key();
                if let Err(e) = self.routes.table.restore(gone) {
                    error!("route rm {what}: putting {key} back: {e}");
                }
            }
            error!("route rm {what}: {e}");
            return Err(ApiError::new(e.status(), format!("not removed: {e}")));
        }
        self.sync_serial();
        if let Err(e) = self.routes.dataplane.apply(&self.routes.table, &diff) {
            error!("route rm {what}: updating the BPF maps failed: {e}");
        }
        self.publish(&diff);
        for e in &diff.removed {
            info!(route = %e.route.key(), port = e.route.port, "route removed");
        }
        self.cool_ports(&diff.removed, now);
        Ok(Removed { removed: views })
    }

    /// SIGHUP: applies the config file's routes as a diff. Gateway-wide settings that need
    /// the program reloaded are reported, not applied: a restart does that without a gap.
    pub(super) fn reload(&mut self, cfg: Config) {
        for section in restart_sections(&self.settings.started, &cfg) {
            warn!(
                section,
                "SIGHUP: {section} changed: that takes effect on restart (hitless: stop and start srvgate); the routes are reloaded now"
            );
        }
        let n = &cfg.gateway;
        let now = self.clock.now();
        let diff = match self.routes.table.replace_config(&cfg.routes, now) {
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
        self.settings.gateway.port_range = n.port_range;
        self.settings.gateway.reclaim_after = n.reclaim_after;
        self.settings.gateway.port_cooldown = n.port_cooldown;
        let previous = std::mem::replace(&mut self.students.config_users, cfg.users.clone());
        let removal = if self.routes.store.is_shared() {
            ConfigRemoval::DroppedFrom(&previous)
        } else {
            ConfigRemoval::Undeclared
        };
        if apply_config_users(&mut self.students.users, &cfg.users, removal, now) {
            if let Err(e) = self.routes.store.save_accounts(&self.students.users) {
                error!("SIGHUP: recording the config file's users: {e}");
            }
        }
        if let Err(e) = self.routes.dataplane.apply(&self.routes.table, &diff) {
            error!("SIGHUP: updating the BPF maps failed: {e:#}");
        }
        // A runtime route the file took over leaves the state file.
        if diff.changed.iter().any(|c| c.old.source != c.new.source) {
            if let Err(e) = self.routes.save() {
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
            info!(route = %e.route.key(), port = e.route.port, backends = %e.route.backends, "route added");
        }
        for e in &diff.removed {
            info!(route = %e.route.key(), port = e.route.port, "route removed");
        }
        for c in &diff.changed {
            info!(route = %c.new.route.key(), port = c.new.route.port, backends = %c.new.route.backends, source = c.new.source.as_str(), "route changed");
        }
    }

    /// Reads each route's last packet from the counters into the table.
    pub(super) fn observe_activity(&mut self) {
        let idle: HashMap<u32, Duration> = self
            .routes
            .table
            .entries()
            .filter_map(|e| Some((e.id, self.routes.counters(e).idle?)))
            .collect();
        self.note_activity(&idle);
    }

    /// The same for `name`'s routes only (a student asking about theirs).
    pub(super) fn observe_activity_of(&mut self, name: &str) {
        let idle: HashMap<u32, Duration> = self
            .routes
            .table
            .named(name)
            .filter_map(|e| Some((e.id, self.routes.counters(e).idle?)))
            .collect();
        self.note_activity(&idle);
    }

    /// Records last-seen times from how long each counter slot in `idle` has been quiet.
    /// Slots whose route changed since they were read are harmless: a slot is zeroed when
    /// it is handed to a new route, so a stale reading can only make that route look
    /// active for one pass.
    pub(super) fn note_activity(&mut self, idle: &HashMap<u32, Duration>) {
        let now = self.clock.now();
        let seen: Vec<(lb_model::RouteKey, Source, SystemTime)> = self
            .routes
            .table
            .entries()
            .filter_map(|e| {
                let idle = idle.get(&e.id)?;
                Some((e.route.key(), e.source, now.checked_sub(*idle)?))
            })
            .collect();
        for (key, source, at) in seen {
            if let (Source::Runtime, Some(seen)) = (source, &mut self.seen) {
                seen.note_own(&key, at);
            }
            if self.routes.table.note_activity(&key, at) && source == Source::Runtime {
                self.routes.activity_unsaved = true;
            }
        }
    }

    /// The periodic pass: last-seen times, then reclaim, then (rarely) the state file.
    pub(super) fn observe(&mut self) {
        self.observe_activity();
        self.after_activity();
    }

    /// The periodic pass after the last-seen times are in: reclaim (alone, or as the
    /// gateway elected to), cool-downs, the state file, last-seen times for the others.
    pub(super) fn after_activity(&mut self) {
        let reclaim_after = self
            .settings
            .gateway
            .reclaim_after
            .filter(|_| self.routes.store.cluster().is_none_or(|c| c.leads()));
        if let Some(after) = reclaim_after {
            let now = self.clock.now();
            let idle = idle_routes(self.routes.table.entries(), now, after);
            if !idle.is_empty() {
                self.reclaim(&idle, now, after);
            }
        }
        if self.students.users.expire_cooldowns(self.clock.now()) {
            if let Err(e) = self.routes.store.save_accounts(&self.students.users) {
                warn!("forgetting ended port cool-downs: {e}");
            }
        }
        if self.routes.activity_unsaved && self.routes.last_save.elapsed() >= SAVE_ACTIVITY_EVERY {
            if let Err(e) = self.routes.save() {
                warn!("saving last-seen times: {e}");
            }
        }
        if let (Some(seen), Some(cluster)) = (&mut self.seen, self.routes.store.cluster_mut()) {
            let table = &self.routes.table;
            seen.publish(
                cluster,
                |k| table.get(k).is_some_and(|e| e.source == Source::Runtime),
                self.settings.gateway.reclaim_after,
            );
        }
    }

    /// Applies what another gateway changed in the shared table (from the watch): the
    /// table, then the maps, DNS and the web routers, as the core's own changes do. Nothing
    /// is written back: the store already holds it.
    pub(super) fn apply_remote(&mut self, remote: Remote) {
        match remote {
            Remote::Routes { changes, .. } => self.apply_shared(changes),
            Remote::Accounts { revision, users } => self.adopt_accounts(users, revision),
            Remote::Seen(seen) => self.note_remote_seen(seen),
            Remote::Health(verdicts) => self.apply_leaders_verdicts(verdicts),
            Remote::Resync {
                revision,
                routes,
                accounts,
                down,
                why,
            } => {
                let seen: Vec<(lb_model::RouteKey, SystemTime)> = routes
                    .iter()
                    .filter_map(|s| Some((s.route.key(), s.last_seen?)))
                    .collect();
                // Routes this gateway changed after the table was read: its own view is
                // newer than the table's (and the watch does not bring them back).
                let mine: std::collections::HashSet<lb_model::RouteKey> = self
                    .routes
                    .store
                    .cluster_mut()
                    .map(|c| c.written_since(revision))
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let keep: std::collections::HashSet<lb_model::RouteKey> =
                    routes.iter().map(|s| s.route.key()).collect();
                let mut changes: Vec<RouteChange> = self
                    .routes
                    .table
                    .entries()
                    .filter(|e| {
                        let k = e.route.key();
                        e.source == Source::Runtime && !keep.contains(&k) && !mine.contains(&k)
                    })
                    .map(|e| RouteChange::Delete(e.route.key()))
                    .collect();
                changes.extend(
                    routes
                        .into_iter()
                        .filter(|s| !mine.contains(&s.route.key()))
                        .map(RouteChange::Put),
                );
                self.apply_shared(changes);
                self.note_remote_seen(seen);
                self.adopt_health(down);
                if let Some((users, revision)) = accounts {
                    self.adopt_accounts(users, revision);
                }
                info!(
                    revision,
                    routes = self.routes.table.len(),
                    "cluster: table resynchronised with etcd ({why})"
                );
            }
        }
        self.sync_serial();
    }

    /// Makes the runtime routes follow `changes` (the last change of each key wins, as in
    /// the store): removals first, so a port or backend handed from one route to another
    /// is free when the new one arrives. A route this gateway cannot take (its config file
    /// holds the key, the port or the backend) is refused here, naming both, and forwarded
    /// by the other gateways only.
    pub(super) fn apply_shared(&mut self, changes: Vec<RouteChange>) {
        let mut last: std::collections::BTreeMap<lb_model::RouteKey, RouteChange> =
            std::collections::BTreeMap::new();
        for change in changes {
            let key = match &change {
                RouteChange::Put(s) => s.route.key(),
                RouteChange::Delete(k) => k.clone(),
            };
            last.insert(key, change);
        }
        let mut diff = Diff::default();
        let mut puts = Vec::new();
        for (key, change) in last {
            let current = self.routes.table.get(&key);
            if let RouteChange::Put(s) = &change {
                if current.is_some_and(|e| e.route == s.route) {
                    continue;
                }
            }
            if let (RouteChange::Put(s), Some(e)) = (&change, current) {
                // Another gateway drained or undrained a member: the route changes in
                // place, keeping its slot, counters and health here.
                let mut same = s.route.clone();
                same.backends = e.route.backends.clone();
                if e.source == Source::Runtime
                    && same == e.route
                    && s.route.backends.addrs().eq(e.route.backends.addrs())
                {
                    match self
                        .routes
                        .table
                        .set_backends(&key, s.route.backends.clone())
                    {
                        Ok(c) => diff.changed.push(c),
                        Err(err) => error!(route = %key, "cluster: {key}'s pool: {err}"),
                    }
                    continue;
                }
            }
            match current {
                Some(e) if e.source == Source::Config => {
                    if let RouteChange::Put(s) = &change {
                        error!(route = %key, "cluster: the shared table's {key} (port {}, backends {}) clashes with this gateway's config file route; not forwarded here", s.route.port, s.route.backends);
                    }
                    continue;
                }
                Some(_) => diff.removed.extend(self.routes.table.remove(&key)),
                None => {}
            }
            if let RouteChange::Put(s) = change {
                puts.push(s);
            }
        }
        for s in puts {
            let key = s.route.key();
            if let Err(rule) = check_pool(&s.route.backends, &self.settings.own) {
                error!(route = %key, "cluster: the shared table's {key} is not forwarded here: {rule}");
                continue;
            }
            match self
                .routes
                .table
                .insert(s.route, Source::Runtime, s.added, s.last_seen)
            {
                Ok(e) => diff.added.push(e),
                Err(e) => {
                    error!(route = %key, "cluster: the shared table's {key} is not forwarded here: {e}")
                }
            }
        }
        if diff.is_empty() {
            return;
        }
        if let Err(e) = self.routes.dataplane.apply(&self.routes.table, &diff) {
            error!("cluster: updating the BPF maps failed: {e}");
        }
        self.publish(&diff);
        for e in &diff.removed {
            info!(route = %e.route.key(), port = e.route.port, "route removed through another gateway");
        }
        for e in &diff.added {
            info!(route = %e.route.key(), port = e.route.port, backends = %e.route.backends, "route added through another gateway");
        }
    }

    /// Takes other gateways' last-seen times into the table (the latest wins), so `route
    /// ls`, `mine` and the reclaim all see the cluster's latest packet.
    pub(super) fn note_remote_seen(&mut self, seen: Vec<(lb_model::RouteKey, SystemTime)>) {
        for (key, at) in seen {
            if self
                .routes
                .table
                .get(&key)
                .is_some_and(|e| e.source == Source::Runtime)
            {
                self.routes.table.note_activity(&key, at);
            }
        }
    }

    /// Takes the accounts another gateway saved, with this gateway's `[[user]]`s over
    /// them as at start, removing none: an account this gateway's file does not declare
    /// is another gateway's (or an admin's), never this one's to drop. Where the saved
    /// accounts disagree with this gateway's file (the other one's file differs, or it
    /// removed an account this file declares), this file wins here, and the disagreement
    /// is logged by name: the files should agree.
    pub(super) fn adopt_accounts(&mut self, mut users: Users, revision: i64) {
        if let Some(c) = self.routes.store.cluster_mut() {
            c.accounts_seen(revision, &users);
        }
        let (added, changed, _) = users.apply_config(
            &self.students.config_users,
            ConfigRemoval::DroppedFrom(&[]),
            self.clock.now(),
        );
        for name in &added {
            warn!(user = %name, "cluster: {name} was removed through another gateway, but this gateway's config file declares it: kept here without a token (issue one: srvgate user token {name}); make the gateways' [[user]] lists agree");
        }
        for name in &changed {
            warn!(user = %name, "cluster: another gateway saved {name} with other fields than this gateway's [[user]] {name}: this gateway applies its own file's; make the gateways' [[user]] lists agree");
        }
        self.students.users = users;
    }

    /// With a shared store, the SOA serial is the store's revision, so every gateway that
    /// has applied the same changes answers with the same serial.
    pub(super) fn sync_serial(&self) {
        if let (Some(d), Some(c)) = (&self.mirrors.dns, self.routes.store.cluster()) {
            d.set_serial(c.view().revision as u32);
        }
    }

    pub(super) fn reclaim(
        &mut self,
        keys: &[lb_model::RouteKey],
        now: SystemTime,
        after: Duration,
    ) {
        let mut diff = Diff::default();
        for key in keys {
            if let Some(e) = self.routes.table.remove(key) {
                diff.removed.push(e);
            }
        }
        let deleted: Vec<RouteChange> = diff
            .removed
            .iter()
            .map(|e| RouteChange::Delete(e.route.key()))
            .collect();
        let table = &self.routes.table;
        let shared = self.routes.store.is_shared();
        let recorded = match self.routes.store.cluster_mut() {
            Some(c) => c.reclaim(
                &diff
                    .removed
                    .iter()
                    .map(|e| e.route.key())
                    .collect::<Vec<_>>(),
            ),
            None => self.routes.store.record(&deleted, &|| stored_routes(table)),
        };
        match recorded {
            Ok(commit) => self.routes.unflushed.push(commit),
            // A shared store's refusal stands: another gateway leads now (and decides
            // with its own view), or etcd is away. Every route goes back in its slot.
            Err(e) if shared => {
                for gone in diff.removed {
                    let key = gone.route.key();
                    if let Err(e) = self.routes.table.restore(gone) {
                        error!("reclaim: putting {key} back: {e}");
                    }
                }
                warn!("reclaim not carried out: {e}");
                return;
            }
            // Unlike a user's `rm`, a reclaim the file did not record is still carried
            // out: the whole file is written on a later pass, and a restart in between
            // would reclaim again.
            Err(e) => {
                error!("reclaim: {e}");
                self.routes.activity_unsaved = true;
            }
        }
        self.routes.flush_here("reclaim");
        self.sync_serial();
        if let Err(e) = self.routes.dataplane.apply(&self.routes.table, &diff) {
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

impl Routes {
    pub(super) fn stored(&self) -> Vec<StoredRoute> {
        stored_routes(&self.table)
    }

    /// Records runtime-route changes in the store: written when this returns, durable once
    /// `unflushed` has been waited for.
    pub(super) fn record(&mut self, changes: &[RouteChange]) -> Result<(), StateError> {
        let table = &self.table;
        let commit = self.store.record(changes, &|| stored_routes(table))?;
        self.unflushed.push(commit);
        Ok(())
    }

    /// [`Routes::record`] for a runtime route changed in place
    /// ([`Store::record_update`](crate::table::state::Store::record_update)).
    pub(super) fn record_update(&mut self, route: &StoredRoute) -> Result<(), StateError> {
        let table = &self.table;
        let commit = self.store.record_update(route, &|| stored_routes(table))?;
        self.unflushed.push(commit);
        Ok(())
    }

    /// [`Routes::record`] for a student's claim: counted again by the cluster
    /// ([`Cluster::record_claim`](crate::cluster::Cluster::record_claim)); alone, the
    /// core's own count (`check_claim`) was the whole count.
    pub(super) fn record_claim(
        &mut self,
        route: &StoredRoute,
        claim: &Claim,
    ) -> Result<(), StateError> {
        let Some(cluster) = self.store.cluster_mut() else {
            return self.record(&[RouteChange::Put(route.clone())]);
        };
        let commit = cluster.record_claim(route, claim)?;
        self.unflushed.push(commit);
        Ok(())
    }

    /// Waits here, under the lock, for what was recorded: for the rare changes that come
    /// from the daemon itself (reclaim), not from a client waiting for an answer.
    pub(super) fn flush_here(&mut self, what: &str) {
        for commit in std::mem::take(&mut self.unflushed) {
            if let Err(e) = commit.wait() {
                error!("{what}: {e}");
            }
        }
    }

    pub(super) fn save(&mut self) -> Result<(), StateError> {
        let routes = self.stored();
        self.store.save_routes(&routes)?;
        self.activity_unsaved = false;
        self.last_save = Instant::now();
        Ok(())
    }

    pub(super) fn counters(&self, e: &Entry) -> Counters {
        self.dataplane.route_counters(e.id).unwrap_or_default()
    }
}

/// What a reload cannot apply: the parts of `new` that differ from the config the daemon
/// is `running`, by section. Routes, users, `port_range`, `reclaim_after` and
/// `port_cooldown` are applied live and never listed.
pub(super) fn restart_sections(running: &Config, new: &Config) -> Vec<&'static str> {
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
    if new.cluster != running.cluster {
        changed.push("[cluster]");
    }
    if new.acme != running.acme {
        changed.push("[acme]");
    }
    changed
}

/// Applies the config file's `[[user]]`s to `users`, logging what changed; true if anything
/// did.
pub(super) fn apply_config_users(
    users: &mut Users,
    config: &[ConfigUser],
    removal: ConfigRemoval<'_>,
    now: SystemTime,
) -> bool {
    let (added, changed, removed) = users.apply_config(config, removal, now);
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
pub(super) fn stored_routes(table: &RouteTable) -> Vec<StoredRoute> {
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
