//! What the gateway knows and keeps: the route table, the students' accounts, the traffic
//! history, and what of them is written to disk. Pure rules and storage; no sockets, no
//! kernel.
#[cfg(feature = "gateway")]
pub mod accounts;
#[cfg(feature = "gateway")]
pub mod routes;
#[cfg(feature = "gateway")]
pub mod state;
#[cfg(feature = "gateway")]
pub mod traffic;
pub mod users;
