//! The servers the daemon runs: DNS, the web routers (HTTP by Host, HTTPS by SNI), metrics,
//! the control socket, and the students' portal with its console. Each parses untrusted
//! input, bounded in size and time, and calls into the daemon through `api::Control`.
#[cfg(feature = "gateway")]
pub mod admission;
pub mod api;
#[cfg(feature = "gateway")]
pub mod console;
#[cfg(feature = "gateway")]
pub mod dns;
#[cfg(feature = "gateway")]
pub mod http;
#[cfg(feature = "gateway")]
pub mod https;
#[cfg(feature = "gateway")]
pub mod listen;
#[cfg(feature = "gateway")]
pub mod metrics;
#[cfg(feature = "gateway")]
pub mod mirror;
#[cfg(feature = "gateway")]
pub mod portal;
#[cfg(feature = "gateway")]
pub mod web;
