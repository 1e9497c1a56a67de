//! Health checks of backends: which backends of a route answer, decided the way haproxy
//! does (`check inter 2s fall 3 rise 2`), so that pools can leave out the ones that don't.
//!
//! What a check is (`CheckSpec`: kind `tcp`, `http` `GET path` wanting 2xx/3xx, or `ssh`
//! banner; `interval`, `timeout`, `rise`, `fall`; its TOML/JSON form
//! `check = { kind = "http", path = "/healthz" }`) is plain data of the route, lb-model's
//! `check`. Here:
//!
//! - `state`: [`Tracker`], one target's verdict from consecutive results (pure). A new target
//!   starts up but unconfirmed, and its first failure takes it down; see there why.
//! - `probe`: the [`Prober`] trait and [`NetProber`] (real sockets, bounded reads, never
//!   from the public address: [`choose_source`]).
//! - `runner`: [`run`], one task per [`Target`] of a watched set, a semaphore of probes in
//!   flight, [`Transition`]s out on a channel, statuses on a [`Board`].
//!
//! The runner only reports: what a pool does with a verdict (leave the backend out, fail
//! open when every one is down), and the audit line and `srvgate_backend_up` that follow,
//! are the daemon's operation on the table (`Core::set_health`), which owns the verdict
//! the data plane uses.

mod probe;
mod runner;
mod state;
#[cfg(test)]
mod tests;

pub use probe::{
    check_once, choose_source, InterfaceSource, NetProber, ProbeError, Prober, MAX_HTTP_HEAD,
    MAX_SSH_BANNER,
};
pub use runner::{run, Board, Target, TargetId, TargetStatus, Transition, DEFAULT_MAX_PROBES};
pub use state::Tracker;
