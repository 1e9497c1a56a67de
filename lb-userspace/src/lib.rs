//! srvgate's daemon and CLI as a library, so tests and the binary share one implementation.
//!
//! Modules are grouped by layer, each named after what it owns:
//!
//! - [`table`]: what the gateway knows and keeps: the route table (`routes`), the students'
//!   accounts and rules (`users`, `accounts`), the charts' history (`traffic`), and the
//!   runtime routes on disk (`state`).
//! - [`kernel`]: the kernel side: the XDP program, its maps and pins (`dataplane`), the few
//!   system calls we need (`sys`) and file descriptors (`fds`).
//! - [`serve`]: the servers: the authoritative zone (`dns`), the web routers (`http` by Host
//!   header, `https` by SNI, `web` what they share), Prometheus text (`metrics`), the control
//!   socket (`api`: server and client), the students' HTTPS API (`portal`) and its web pages
//!   (`console`).
//! - [`cli`]: the verbs people type: the admins' (`admin`), the students' client (`student`),
//!   and man pages and completions generated from the CLI (`docs`).
//!
//! At the top: `config` (the file, and the validation every route goes through), `daemon`
//! (`srvgate run`: the operations that keep all of the above in agreement), `health` (checks
//! of backends: specs, verdicts, the probes' runner), `logging`
//! (terminal or journal output) and `notify` (systemd readiness).
//!
//! Without the `gateway` feature only what the students' verbs need is built (`api`'s
//! types, `config`'s rules with the route table they check against, `users`, `student`,
//! `docs`), so that the client builds for any OS.
pub mod cli;
pub mod config;
#[cfg(feature = "gateway")]
pub mod daemon;
pub mod health;
#[cfg(feature = "gateway")]
pub mod kernel;
#[cfg(feature = "gateway")]
pub mod logging;
#[cfg(feature = "gateway")]
pub mod notify;
pub mod serve;
pub mod table;
#[cfg(all(test, feature = "gateway"))]
mod testing;
