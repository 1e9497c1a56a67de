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
//! - reclaim: table, store, maps, DNS and HTTP; a reclaim the local store did not record is
//!   still carried out and saved on a later pass; one a shared store refused (this gateway
//!   does not lead, or etcd is away) is undone. With a shared store only the gateway the
//!   store elected reclaims, from last-seen times every gateway publishes (`cluster::seen`).
//!
//! The core reaches the kernel, the disk and the other gateways only through the
//! [`Dataplane`], [`Store`](crate::table::state::Store) and
//! [`Cluster`](crate::cluster::Cluster) traits, so all of the above is unit-tested against in-memory fakes (`daemon/tests.rs`).
//!
//! The `Core` is in parts that each own their state: `Routes` (the table, the maps and the
//! store, with what is recorded but not yet durable), `Mirrors` (DNS and the web routers,
//! `serve::mirror`), `Students` (the accounts), `Settings` (the config in force and the
//! machine's addresses), and with `[cluster]` the last-seen times it publishes
//! (`cluster::seen::Seen`). Operations that must keep several parts agreeing are the
//! core's; what touches one part only is that part's.
//!
//! Here: the options, errors, clock and the [`Core`]; `routes.rs` has its route operations,
//! `pools.rs` the changes of a route's pool in place (drain, a health verdict),
//! `students.rs` the accounts' and students' ones, `control.rs` what the servers call (the
//! [`Control`](api::Control) implementation, the metrics scrape), `lifecycle.rs` start-up,
//! the event loop and shutdown.

mod control;
mod lifecycle;
mod pools;
mod routes;
mod students;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    api,
    cluster::{seen::Seen, Backing},
    config::{self, Config, ConfigError, Gateway},
    kernel::dataplane::{AttachMode, Dataplane, DataplaneError},
    serve::{
        dns::{DnsError, DnsServer},
        http::{HttpError, HttpServer},
        https::HttpsServer,
        mirror::Mirror,
        portal::PortalError,
    },
    table::{
        routes::{Diff, RouteTable},
        state::{Commit, StateError},
        traffic::Traffic,
        users::Users,
    },
};
use lb_model::api::PortalInfo;

pub use lifecycle::run;

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
        /// Where the runtime routes are stored ([`Store::location`](crate::table::state::Store::location)).
        state: String,
        config: PathBuf,
        problems: Vec<String>,
    },
    /// `[cluster]`: etcd did not answer at start. The gateway starts only with the shared
    /// table: without it, its maps would lose every runtime route (cutting their
    /// connections) and its DNS would deny the students' names.
    #[error("not starting: etcd at {endpoints} does not answer ({reason}); a gateway starts only with the shared table (a data plane pinned by an earlier run goes on forwarding meanwhile); start etcd or check [cluster] etcd, then start again (systemd's Restart= does)")]
    ClusterUnreachable { endpoints: String, reason: String },
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
                | DaemonError::State(
                    StateError::Corrupt { .. }
                        | StateError::Version { .. }
                        | StateError::Locked { .. }
                        | StateError::ClusterFile { .. }
                )
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
            .or_else(|_| lb_model::parse_duration(text));
        match offset {
            Ok(d) => now + d,
            Err(_) => now,
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The table and everything that mirrors it, in parts that each own their state.
struct Core {
    /// The table, and the maps and the store that hold exactly its routes.
    routes: Routes,
    /// DNS and the web routers.
    mirrors: Mirrors,
    /// The students' accounts.
    students: Students,
    /// What the daemon was told, and what it knows of the machine.
    settings: Settings,
    clock: Clock,
    /// Per-minute traffic by counter slot, for the console; fed by the periodic pass with
    /// the core unlocked, so it has its own lock.
    traffic: Arc<Mutex<Traffic>>,
    /// Shared store only (`[cluster]`): this gateway's own last-seen times, for the others.
    seen: Option<Seen>,
    /// What the health checks watch, following the table (`pools::Checks`); `None` where
    /// no checks run (the tests' cores).
    checks: Option<std::cell::RefCell<pools::Checks>>,
}

/// The route table and what must hold exactly its routes: the BPF maps (live) and the
/// store (durable).
struct Routes {
    table: RouteTable,
    dataplane: Box<dyn Dataplane>,
    /// The store, and the cluster when the table is shared (`[cluster]`).
    store: Backing,
    /// Runtime last-seen times changed since the state file was written.
    activity_unsaved: bool,
    last_save: Instant,
    /// Changes recorded but not yet known durable: the caller waits for them after
    /// releasing the core's lock (see [`Handle::change`]), so concurrent changes share one
    /// flush.
    unflushed: Vec<Commit>,
}

/// The students' accounts, and the config file's part of them.
struct Students {
    /// The students' accounts and the ports cooling down.
    users: Users,
    /// The config file's `[[user]]`s in force, applied again over accounts another gateway
    /// changed.
    config_users: Vec<lb_model::ConfigUser>,
}

/// What the daemon was told (the config, the portal it bound) and what it reads of the
/// machine.
struct Settings {
    /// Gateway-wide settings in force; SIGHUP changes `port_range` and `reclaim_after`.
    gateway: Gateway,
    /// The config the daemon started with (routes left out): what SIGHUP cannot change.
    started: Config,
    /// The DNS zone, for telling students their names.
    zone: Option<String>,
    /// The students' HTTPS API, if configured: where, and its certificate's fingerprint.
    portal: Option<PortalInfo>,
    /// `[http] service`, for telling students their web addresses.
    http_service: Option<String>,
    /// `[acme]`'s certificate in force, for `status`.
    certs: Option<Arc<crate::serve::acme::Certs>>,
    /// The gateway's own addresses, which no backend may be (`config::check_backend`):
    /// read at start and again every few seconds ([`Core::refresh_own`]).
    own: config::OwnAddresses,
    /// Reads the machine's interfaces (`machine::interfaces`; a fake machine's in the
    /// tests).
    interfaces: fn() -> std::io::Result<Vec<crate::machine::Interface>>,
}

/// The servers that mirror the table (`serve::mirror`): by kind, for what only one kind
/// does (DNS's SOA serial, the routers' samples), and as the one list a change is published
/// to.
#[derive(Default)]
struct Mirrors {
    dns: Option<Arc<DnsServer>>,
    http: Option<Arc<HttpServer>>,
    https: Option<Arc<HttpsServer>>,
    /// Every one of the above, DNS first.
    all: Vec<Arc<dyn Mirror>>,
}

impl Mirrors {
    fn new(
        dns: Option<Arc<DnsServer>>,
        http: Option<Arc<HttpServer>>,
        https: Option<Arc<HttpsServer>>,
    ) -> Mirrors {
        let mut all: Vec<Arc<dyn Mirror>> = Vec::new();
        all.extend(dns.clone().map(|m| m as Arc<dyn Mirror>));
        all.extend(http.clone().map(|m| m as Arc<dyn Mirror>));
        all.extend(https.clone().map(|m| m as Arc<dyn Mirror>));
        Mirrors {
            dns,
            http,
            https,
            all,
        }
    }

    /// Gives every mirror a change already made to `table`; undoing one is publishing the
    /// opposite diff.
    fn publish(&self, table: &RouteTable, diff: &Diff) {
        for m in &self.all {
            m.publish(table, diff);
        }
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // Every operation leaves the core consistent between its steps, so after a panic in one
    // the daemon keeps serving rather than cascading it.
    core.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
