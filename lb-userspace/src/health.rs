//! Health checks of backends: which backends of a route answer, decided the way haproxy
//! does (`check inter 2s fall 3 rise 2`), so that pools can leave out the ones that don't.
//!
//! - `spec`: [`CheckSpec`] (kind `tcp`, `http` `GET path` wanting 2xx/3xx, or `ssh` banner;
//!   `interval`, `timeout`, `rise`, `fall`) and its TOML/JSON form [`CheckRequest`]
//!   (`check = { kind = "http", path = "/healthz" }`), validated with each field named.
//! - `state`: [`Tracker`], one target's verdict from consecutive results (pure). A new target
//!   starts up but unconfirmed, and its first failure takes it down; see there why.
//! - `probe`: the [`Prober`] trait and [`NetProber`] (real sockets, bounded reads, never
//!   from the public address: [`choose_source`]).
//! - `runner`: [`run`], one task per [`Target`] of a watched set, a semaphore of probes in
//!   flight, [`Transition`]s out on a channel, statuses on a [`Board`].
//! - `report`: `srvgate_backend_up` ([`render_metrics`]) and the audit line ([`audit`]).
//!
//! The runner only reports: what a pool does with a verdict (leave the backend out, fail
//! open when every one is down) is the pool's rule, not this module's.
//!
//! Without the `gateway` feature only `spec` and `state` are built (a route's check is part
//! of the route's shape, which the students' client reads too).

#[cfg(feature = "gateway")]
mod probe;
#[cfg(feature = "gateway")]
mod report;
#[cfg(feature = "gateway")]
mod runner;
mod spec;
mod state;
#[cfg(all(test, feature = "gateway"))]
mod tests;

#[cfg(feature = "gateway")]
pub use probe::{
    check_once, choose_source, InterfaceSource, NetProber, ProbeError, Prober, MAX_HTTP_HEAD,
    MAX_SSH_BANNER,
};
#[cfg(feature = "gateway")]
pub use report::{audit, render_metrics};
#[cfg(feature = "gateway")]
pub use runner::{run, Board, Target, TargetId, TargetStatus, Transition, DEFAULT_MAX_PROBES};
pub use spec::{
    format_duration, parse_duration, CheckKind, CheckRequest, CheckSpec, DEFAULT_FALL,
    DEFAULT_INTERVAL, DEFAULT_RISE, DEFAULT_TIMEOUT,
};
pub use state::Tracker;
