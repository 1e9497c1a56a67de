//! The verbs people type: the admins' (against the control socket), the students' client
//! (ssh, login, claim, mine, release: no `gateway` feature needed), and the man pages and
//! completions generated from the CLI's definition.
#[cfg(feature = "gateway")]
pub mod admin;
pub mod docs;
pub mod student;

/// `--json` output, the same shape everywhere: the reply as the API sent it, pretty-printed.
pub fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
