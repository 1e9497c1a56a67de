//! The admins' verbs (against the control socket), and the man pages and completions
//! generated from the CLI's definition. The students' verbs are lb-client's.
//! `check` is `srvgate check`, everything wrong with a config at once.
pub mod admin;
pub mod backup;
pub mod check;
pub mod docs;
pub mod doctor;

pub use lb_client::print_json;
