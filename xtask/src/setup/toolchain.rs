//! Rust toolchains: nightly with rust-src (the XDP program), rustfmt and clippy, and the
//! Windows target the students' client is checked for.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

use super::*;

pub(super) fn nightly_toolchain(check_only: bool, missing: &mut Vec<String>) -> Result<bool> {
    let what = "nightly toolchain (builds the XDP program)";
    if nightly_installed()? {
        report("ok", what);
        return Ok(true);
    }
    if check_only {
        report("MISSING", what);
        missing.push("the nightly toolchain".into());
        return Ok(false);
    }
    report("installing", what);
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
    ]))?;
    if !nightly_installed()? {
        bail!("`rustup toolchain install nightly` succeeded but `rustup toolchain list` does not list nightly");
    }
    report("installed", what);
    Ok(true)
}

pub(super) fn nightly_installed() -> Result<bool> {
    let list = cmd::stdout(Command::new("rustup").args(["toolchain", "list"]))
        .context("listing rustup toolchains (srvgate's build needs rustup)")?;
    Ok(has_nightly(&list))
}

/// Whether `rustup toolchain list` shows the plain `nightly` channel. Dated nightlies
/// (`nightly-2025-01-01-...`) do not count: `rustup run nightly` would not pick them.
pub fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| match name.strip_prefix(NIGHTLY) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('-')
                .and_then(|r| r.chars().next())
                .is_some_and(|c| !c.is_ascii_digit()),
            None => false,
        })
}

pub(super) fn rust_src(
    check_only: bool,
    have_nightly: bool,
    missing: &mut Vec<String>,
) -> Result<()> {
    let what = "rust-src for nightly (for -Z build-std=core)";
    if have_nightly && nightly_component_installed("rust-src")? {
        report("ok", what);
        return Ok(());
    }
    if check_only {
        report("MISSING", what);
        missing.push("rust-src for nightly".into());
        return Ok(());
    }
    report("installing", what);
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !nightly_component_installed("rust-src")? {
        bail!("`rustup component add rust-src --toolchain nightly` succeeded but rustup does not list rust-src as installed");
    }
    report("installed", what);
    Ok(())
}

pub(super) fn nightly_component_installed(component: &str) -> Result<bool> {
    let list = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    Ok(component_installed(&list, component))
}

/// Parses `rustup component list --installed`, whose lines are component names, some with
/// the host triple appended (`clippy-x86_64-unknown-linux-gnu`) and some not (`rust-src`).
/// Lines carrying an annotation must say `(installed)`/`(default)`, so that the output
/// of a plain `rustup component list` is not misread as "everything is installed".
pub fn component_installed(listing: &str, component: &str) -> bool {
    listing.lines().any(|line| {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else {
            return false;
        };
        let rest: Vec<&str> = words.collect();
        let name_matches = match name.strip_prefix(component) {
            Some("") => true,
            // A target triple has at least two dashes; this keeps `rust` from matching
            // `rust-src` while accepting `rustfmt-x86_64-unknown-linux-gnu` for `rustfmt`.
            Some(rest) => rest
                .strip_prefix('-')
                .is_some_and(|triple| triple.matches('-').count() >= 2),
            None => false,
        };
        name_matches
            && (rest.is_empty()
                || rest
                    .iter()
                    .any(|w| *w == "(installed)" || *w == "(default)"))
    })
}

/// `cargo xtask test` runs `cargo fmt` and `cargo clippy` with the workspace's own
/// toolchain; probing the subcommands works however that toolchain was installed.
pub(super) fn fmt_and_clippy(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let what = "rustfmt and clippy (active toolchain)";
    let probe = || {
        ["fmt", "clippy"]
            .into_iter()
            .filter(|sub| !cmd::succeeds(Command::new("cargo").args([sub, "--version"])))
            .map(|sub| if sub == "fmt" { "rustfmt" } else { "clippy" })
            .collect::<Vec<_>>()
    };
    let absent = probe();
    if absent.is_empty() {
        report("ok", what);
        return Ok(());
    }
    if check_only {
        report("MISSING", &format!("{what}: {}", absent.join(" ")));
        missing.extend(absent.iter().map(|c| c.to_string()));
        return Ok(());
    }
    report("installing", &format!("{what}: {}", absent.join(" ")));
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&absent),
    )?;
    let still = probe();
    if !still.is_empty() {
        bail!(
            "`cargo fmt/clippy --version` still fail after `rustup component add`: {}",
            still.join(" ")
        );
    }
    report("installed", what);
    Ok(())
}

/// The students' client is checked for Windows; rustup adds the target's standard library.
pub const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

/// The students' static Linux client (`cargo xtask dist`): musl links it without glibc, so
/// it runs on any x86_64 Linux. Its C parts (ring) build with Debian's musl-gcc (musl-tools).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The Rust targets the students' client is built for besides this machine's.
pub(super) fn client_targets(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    for (target, what) in [
        (WINDOWS_TARGET, "the students' client on Windows"),
        (MUSL_TARGET, "the students' static Linux client"),
    ] {
        let what = format!("Rust target {target} ({what})");
        let installed = || -> Result<bool> {
            let list = cmd::stdout(Command::new("rustup").args(["target", "list", "--installed"]))?;
            Ok(list.lines().any(|l| l.trim() == target))
        };
        if installed()? {
            report("ok", &what);
            continue;
        }
        if check_only {
            report("MISSING", &what);
            missing.push(target.into());
            continue;
        }
        report("installing", &what);
        cmd::run(Command::new("rustup").args(["target", "add", target]))?;
        if !installed()? {
            bail!("`rustup target add {target}` succeeded but rustup does not list it");
        }
        report("installed", &what);
    }
    Ok(())
}
