//! srvgate's daemon and CLI as a library, so tests and the binary share one implementation.
//!
//! Modules are named after what they own: `config` (the file), `routes` (the route table and
//! its map entries), `dataplane` (the XDP program and its maps), `dns` (the authoritative
//! zone), `metrics` (Prometheus text), `student` (the client-side `srvgate ssh`), `sys`
//! (thin wrappers over the few libc calls we need).
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod metrics;
pub mod routes;
pub mod student;
pub mod sys;
