//! srvgate's daemon and CLI as a library, so tests and the binary share one implementation.
//!
//! Modules are named after what they own: `config` (the file, and the validation every route
//! goes through), `routes` (the route table: sources, ports, slots, idleness, map entries),
//! `state` (the runtime routes on disk), `cluster` (the table shared with other gateways
//! through etcd), `dataplane` (the XDP program, its maps and pins),
//! `dns` (the authoritative zone), `http` (routing by
//! Host header), `https` (TLS relayed by SNI), `web` (what those two share), `api` (the
//! control socket: server and client), `portal` (the students' HTTPS API) and `console`
//! (its web pages), `traffic` (the charts' per-minute history), `daemon`
//! (`srvgate run`: the operations that keep all of the above in agreement), `admin` (the
//! admins' CLI verbs), `metrics` (Prometheus text), `student` (the client-side `srvgate
//! ssh`), `sys` (thin wrappers over the few system calls we need), `notify` (systemd readiness),
//! `logging` (terminal or journal output), `docs` (man pages and completions from the CLI).
//!
//! Without the `gateway` feature only what the students' verbs need is built (`api`'s
//! types, `config`'s rules, `users`, `student`, `docs`), so that the client builds for any
//! OS.
#[cfg(feature = "gateway")]
pub mod accounts;
#[cfg(feature = "gateway")]
pub mod admin;
pub mod api;
#[cfg(feature = "gateway")]
pub mod cluster;
pub mod config;
#[cfg(feature = "gateway")]
pub mod console;
#[cfg(feature = "gateway")]
pub mod daemon;
#[cfg(feature = "gateway")]
pub mod dataplane;
#[cfg(feature = "gateway")]
pub mod dns;
pub mod docs;
#[cfg(feature = "gateway")]
pub mod fds;
#[cfg(feature = "gateway")]
pub mod http;
#[cfg(feature = "gateway")]
pub mod https;
#[cfg(feature = "gateway")]
pub mod logging;
#[cfg(feature = "gateway")]
pub mod metrics;
#[cfg(feature = "gateway")]
pub mod notify;
#[cfg(feature = "gateway")]
pub mod portal;
#[cfg(feature = "gateway")]
pub mod routes;
#[cfg(feature = "gateway")]
pub mod state;
pub mod student;
#[cfg(feature = "gateway")]
pub mod sys;
#[cfg(all(test, feature = "gateway"))]
mod testing;
#[cfg(feature = "gateway")]
pub mod traffic;
pub mod users;
#[cfg(feature = "gateway")]
pub mod web;
