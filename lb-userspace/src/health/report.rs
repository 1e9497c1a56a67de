//! Where health goes besides the pools: `srvgate_backend_up` for `/metrics`, and one audit
//! line per transition (the console's admin view shows them with the people's changes).

use std::fmt::Write as _;

use tracing::{info, warn};

use super::runner::{TargetStatus, Transition};
use crate::logging::AUDIT_TARGET;

/// Appends `srvgate_backend_up{route,backend}` for every checked backend: 1 up (a backend
/// not yet checked counts as up, as the pools treat it), 0 down.
pub fn render_metrics(out: &mut String, statuses: &[TargetStatus]) {
    let _ = writeln!(
        out,
        "# HELP srvgate_backend_up Whether a backend passes its health check (1) or not (0); a backend not yet checked counts as up."
    );
    let _ = writeln!(out, "# TYPE srvgate_backend_up gauge");
    for s in statuses {
        let _ = writeln!(
            out,
            "srvgate_backend_up{{route=\"{}\",backend=\"{}\"}} {}",
            label_value(&s.route),
            s.backend,
            u8::from(s.up)
        );
    }
}

/// A Prometheus label value: backslash, quote and line feed escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Logs a transition on the audit target: a backend going down is a warning, coming back
/// is information. The actor is the gateway itself (`user="srvgate"`, `from="health"`).
pub fn audit(t: &Transition) {
    let route = t.target.key.as_str();
    let backend = t.target.backend;
    let reason = t.reason.as_str();
    if t.up {
        info!(target: AUDIT_TARGET, user = "srvgate", from = "health", action = "backend up", route, %backend, reason, "health");
    } else {
        warn!(target: AUDIT_TARGET, user = "srvgate", from = "health", action = "backend down", route, %backend, reason, "health");
    }
}
