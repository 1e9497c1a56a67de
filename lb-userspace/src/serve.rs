//! The servers the daemon runs: DNS, the web routers (HTTP by Host, HTTPS by SNI), metrics,
//! and the students' portal with its console (the control socket is `crate::api`). Each parses untrusted
//! input, bounded in size and time, and calls into the daemon through `crate::api::Control`.
pub mod admission;
pub mod clients;
pub mod console;
pub mod dns;
pub mod http;
pub mod https;
pub mod listen;
pub mod metrics;
pub mod mirror;
pub mod portal;
pub mod web;
