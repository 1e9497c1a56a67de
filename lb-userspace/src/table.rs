//! What the gateway knows and keeps: the route table, the students' accounts, the traffic
//! history, and what of them is written to disk, or shared with other gateways through
//! etcd (`cluster`, the only one here with a socket: its etcd client). Pure rules and
//! storage; no kernel.
pub mod cluster;
pub mod routes;
pub mod state;
pub mod traffic;
pub mod users;
