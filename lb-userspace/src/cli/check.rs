//! `srvgate check`: everything wrong with a config at once, errors and warnings in one form.
//!
//! One run collects: the file's syntax (which alone stops the reading), every unknown key
//! with the nearest known one, every field's problem (`config`), the config against this
//! machine (interfaces, with the ones that exist; the ephemeral ports), `[cluster]`'s TLS
//! files, what is valid but likely not meant (`Config::advice`: no `[dns]`, students and
//! no portal), deprecated forms, and the running kernel against what srvgate needs
//! (`kernel::needs`).
//!
//! Output: each finding as `FILE: error: FIELD: WHAT` (or `warning:`) on stderr, then a
//! summary; with `--json`, one object on stdout instead. Exit status: 0 when there is no
//! error (warnings are printed and do not change it), 2 when there is one (the exit code of
//! bad input everywhere in srvgate, and what the unit's `ExecStartPre` stops on).

use std::path::{Path, PathBuf};

use lb_model::FieldError;
use serde::Serialize;

use crate::{
    config::{Config, ConfigError, Parsed},
    kernel::needs::{self, Version},
};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One thing `check` says about the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The field, e.g. `route[2].port`; `(file)` for the file as a whole, `kernel` for the
    /// running kernel.
    pub field: String,
    /// What is wrong, with the fix where there is one.
    pub message: String,
}

/// What `check` found in one file.
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: PathBuf,
    pub ok: bool,
    pub findings: Vec<Finding>,
    /// The config's gist when it could be read (`3 routes, public ... on ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// The config against a machine: (errors, warnings).
pub type MachineCheck = dyn Fn(&Config) -> (Vec<FieldError>, Vec<FieldError>);

/// What the checks read besides the file, apart so the report is testable anywhere.
pub struct Inputs<'a> {
    /// The config against this machine: `Config::check_machine`, or a made-up one.
    pub machine: &'a MachineCheck,
    /// Students in the state directory's accounts file.
    pub accounts: usize,
    /// The running kernel's release, if it could be read.
    pub kernel: Option<Version>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }

    /// The human form: one line per finding (a multi-line message indented under it),
    /// then the summary line.
    pub fn render_text(&self) -> String {
        let file = self.file.display();
        let mut out = String::new();
        for f in &self.findings {
            let severity = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let message = f.message.replace('\n', "\n    ");
            out.push_str(&format!("{file}: {severity}: {}: {message}\n", f.field));
        }
        let counts = format!(
            "{} error{}, {} warning{}",
            self.errors(),
            plural(self.errors()),
            self.warnings(),
            plural(self.warnings())
        );
        match (&self.summary, self.ok) {
            (Some(summary), true) => out.push_str(&format!("{file}: ok ({summary}); {counts}\n")),
            _ => out.push_str(&format!("{file}: {counts}\n")),
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Checks `text` as the config file `file`.
pub fn inspect(file: &Path, text: &str, inputs: &Inputs<'_>) -> Report {
    let mut findings = Vec::new();
    let mut add = |severity, list: Vec<FieldError>| {
        findings.extend(list.into_iter().map(|e| Finding {
            severity,
            field: e.field,
            message: e.reason,
        }))
    };
    let parsed = match Config::parse_all(file, text) {
        Ok(p) => p,
        Err(ConfigError::Syntax { message, .. }) => Parsed {
            config: None,
            problems: vec![FieldError {
                field: "(file)".into(),
                reason: message,
            }],
            warnings: Vec::new(),
        },
        Err(other) => Parsed {
            config: None,
            problems: vec![FieldError {
                field: "(file)".into(),
                reason: other.to_string(),
            }],
            warnings: Vec::new(),
        },
    };
    add(Severity::Error, parsed.problems);
    add(Severity::Warning, parsed.warnings);
    let mut summary = None;
    if let Some(cfg) = &parsed.config {
        let (problems, warnings) = (inputs.machine)(cfg);
        add(Severity::Error, problems);
        add(Severity::Warning, warnings);
        // The files `run` reads before it connects: a bad one is the file's fault, found now.
        if let Some(tls) = cfg.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
            if let Err(e) = crate::cluster::tls::options(tls) {
                add(
                    Severity::Error,
                    vec![FieldError {
                        field: "cluster".into(),
                        reason: e.to_string(),
                    }],
                );
            }
        }
        add(Severity::Warning, cfg.advice(inputs.accounts));
        summary = Some(format!(
            "{} routes, public {} on {}, private {}",
            cfg.routes.len(),
            cfg.gateway.public_ipv4,
            cfg.gateway.public_interface,
            cfg.gateway.private_interfaces.join(", ")
        ));
    }
    findings.extend(kernel_findings(inputs.kernel));
    let ok = parsed.config.is_some() && !findings.iter().any(|f| f.severity == Severity::Error);
    Report {
        file: file.to_path_buf(),
        ok,
        findings,
        summary,
    }
}

/// The running kernel against [`needs::NEEDS`]: a required feature missing is an error
/// (`run` refuses to start), a wanted one a warning.
pub fn kernel_findings(kernel: Option<Version>) -> Vec<Finding> {
    let Some(found) = kernel else {
        return vec![Finding {
            severity: Severity::Warning,
            field: "kernel".into(),
            message: "cannot read the running kernel's release (/proc/sys/kernel/osrelease)".into(),
        }];
    };
    needs::missing(found)
        .into_iter()
        .map(|n| Finding {
            severity: if n.required {
                Severity::Error
            } else {
                Severity::Warning
            },
            field: "kernel".into(),
            message: format!(
                "kernel {found} found, {} needed for {}, {}",
                n.since, n.feature, n.used_for
            ),
        })
        .collect()
}

/// Reads `file` and the machine, and checks them ([`inspect`]).
pub fn check_file(file: &Path, state_dir: &Path) -> Report {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            return Report {
                file: file.to_path_buf(),
                ok: false,
                findings: vec![Finding {
                    severity: Severity::Error,
                    field: "(file)".into(),
                    message: format!("cannot read the config file: {e}"),
                }],
                summary: None,
            }
        }
    };
    // The accounts file is the daemon's (mode 0600): one `check` cannot read (not root)
    // only leaves its students out of the portal advice.
    let accounts = crate::table::state::accounts::load(state_dir)
        .map(|users| users.all().count())
        .unwrap_or(0);
    let machine = |cfg: &Config| cfg.machine_findings();
    inspect(
        file,
        &text,
        &Inputs {
            machine: &machine,
            accounts,
            kernel: needs::running(),
        },
    )
}

#[cfg(test)]
mod tests;
