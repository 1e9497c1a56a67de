//! What the gateway knows and keeps: the route table, the students' accounts, the traffic
//! history, and what of them is written to disk (`state`, with the `Store` trait). Pure
//! rules and storage; no kernel, no socket: the table shared with other gateways through
//! etcd is `crate::cluster`, the layer above.
pub mod routes;
pub mod state;
pub mod traffic;
pub mod users;
