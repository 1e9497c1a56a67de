//! srvgate's daemon and CLI as a library, so tests and the binary share one implementation.
//! Linux only; the plain data it shares with the students' client is lb-model's, and the
//! students' verbs are lb-client's.
//!
//! Modules are grouped by layer, each named after what it owns, and each uses only the
//! layers below it (bottom first; `layers_tests` holds the list and fails on a `crate::`
//! path that climbs):
//!
//! - `logging`, `notify`, [`machine`]: terminal or journal output, systemd readiness, and
//!   this machine's interfaces and addresses, read in one place.
//! - [`health`]: the backends' health checks: probes, verdicts (rise/fall), the runner that
//!   reports transitions. It knows no table: it is given targets.
//! - [`table`]: what the gateway knows and keeps: the route table (`routes`), the students'
//!   accounts and rules (`users`, `accounts`), the charts' history (`traffic`), and the
//!   runtime routes on disk (`state`) or in etcd (`cluster`).
//! - [`config`]: the file, and the validation every route goes through (uniqueness with a
//!   scratch `RouteTable`; a route's own fields by lb-model's `check_route`).
//! - [`kernel`]: the kernel side: the XDP program, its maps and pins (`dataplane`), the few
//!   system calls we need (`sys`) and file descriptors (`fds`).
//! - [`api`]: the control socket (server and client) and the [`api::Control`] trait that
//!   every server calls the daemon through.
//! - [`serve`]: the servers: the authoritative zone (`dns`), the web routers (`http` by Host
//!   header, `https` by SNI, `web` what they share), Prometheus text (`metrics`), the
//!   students' HTTPS API (`portal`) and its web pages (`console`).
//! - [`cli`]: the admins' verbs (`admin`), and man pages and completions generated from the
//!   CLI (`docs`).
//! - [`daemon`]: `srvgate run`: the operations that keep all of the above in agreement.
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod health;
pub mod kernel;
#[cfg(test)]
mod layers_tests;
pub mod logging;
pub mod machine;
pub mod notify;
pub mod serve;
pub mod table;
#[cfg(test)]
mod testing;
