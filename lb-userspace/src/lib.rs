//! srvgate's daemon and CLI as a library, so tests and the binary share one implementation.
//!
//! Modules are named after what they own: `config` (the file, and the validation every route
//! goes through), `routes` (the route table: sources, ports, slots, idleness, map entries),
//! `state` (the runtime routes on disk), `dataplane` (the XDP program, its maps and pins),
//! `dns` (the authoritative zone), `http` (routing by
//! Host header), `api` (the control socket: server and client), `daemon`
//! (`srvgate run`: the operations that keep all of the above in agreement), `admin` (the
//! admins' CLI verbs), `metrics` (Prometheus text), `student` (the client-side `srvgate
//! ssh`), `sys` (thin wrappers over the few system calls we need), `notify` (systemd readiness),
//! `logging` (terminal or journal output), `docs` (man pages and completions from the CLI).
pub mod accounts;
pub mod admin;
pub mod api;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod docs;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod portal;
pub mod routes;
pub mod state;
pub mod student;
pub mod sys;
#[cfg(test)]
mod testing;
pub mod users;
