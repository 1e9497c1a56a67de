//! What the gateway knows and keeps: the route table, the students' accounts, the traffic
//! history, and what of them is written to disk, or shared with other gateways through
//! etcd (`cluster`, the only one here with a socket: its etcd client). Pure rules and
//! storage; no kernel.
#[cfg(feature = "gateway")]
pub mod accounts;
#[cfg(feature = "gateway")]
pub mod cluster;
pub mod routes;
#[cfg(feature = "gateway")]
pub mod state;
#[cfg(feature = "gateway")]
pub mod traffic;
pub mod users;
