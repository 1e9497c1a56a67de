//! Debian packages: which of setup's list are missing (dpkg), installed with apt-get, and
//! every program of `packages.rs` checked on PATH afterwards.

use std::{collections::BTreeSet, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, packages};

use super::*;

pub(super) fn debian_packages(check_only: bool, missing_out: &mut Vec<String>) -> Result<()> {
    let missing = missing_debian_packages()?;
    if missing.is_empty() {
        report(
            "ok",
            &format!("Debian packages ({})", DEBIAN_PACKAGES.join(" ")),
        );
        return Ok(());
    }
    let list = missing.join(" ");
    if check_only {
        report("MISSING", &format!("Debian packages: {list}"));
        missing_out.push(format!("Debian packages ({list})"));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {list}. Installing them needs root: rerun `cargo xtask setup` \
             as root, or run `apt-get install -y {list}` as root first"
        );
    }
    report("installing", &format!("Debian packages: {list}"));
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = missing_debian_packages()?;
    if !still.is_empty() {
        bail!(
            "Debian packages still not installed after apt-get install: {}",
            still.join(" ")
        );
    }
    report("installed", &format!("Debian packages: {list}"));
    Ok(())
}

/// Every program in the package table must start once its package is installed: a wrong
/// mapping (the program lives in another package) shows here on a fresh machine, by name.
pub(super) fn programs(check_only: bool, missing_out: &mut Vec<String>) -> Result<()> {
    let absent: Vec<String> = packages::PROGRAMS
        .iter()
        .filter(|(program, _)| !packages::on_path(program))
        .map(|(program, pkg)| format!("{program} (from {pkg})"))
        .collect();
    if absent.is_empty() {
        report(
            "ok",
            &format!("programs the tests run ({})", packages::PROGRAMS.len()),
        );
    } else if check_only || !missing_out.is_empty() {
        report("MISSING", &format!("programs: {}", absent.join(", ")));
        missing_out.push(format!("programs ({})", absent.join(", ")));
    } else {
        bail!(
            "every package is installed, yet these programs are not on PATH: {}; \
             xtask/src/packages.rs names the wrong package for them",
            absent.join(", ")
        );
    }
    Ok(())
}

pub(super) fn missing_debian_packages() -> Result<Vec<&'static str>> {
    let mut query = Command::new("dpkg-query");
    query
        .args(["-W", "-f=${Package}\\t${Status}\\n"])
        .args(DEBIAN_PACKAGES);
    let out = cmd::capture(&mut query)
        .context("checking Debian packages (setup supports Debian-based systems only)")?;
    // Exit 1 only means dpkg has never heard of some of the names: that is "missing", and
    // those names are simply absent from stdout. Anything else is dpkg itself failing.
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "`{}` failed ({}): {}",
            cmd::display(&query),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed = installed_packages(&stdout);
    Ok(DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

/// Names whose `${Package}\t${Status}` line says installed. A package may appear once per
/// architecture; any installed architecture counts.
pub fn installed_packages(dpkg_output: &str) -> BTreeSet<&str> {
    dpkg_output
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| dpkg_status_is_installed(status))
        .map(|(name, _)| name.trim())
        .collect()
}

/// dpkg's status is "WANT ERROR STATE"; only the state `installed` means usable files on
/// disk (`config-files`, `half-installed`, `unpacked` ... do not), and a `hold` want or a
/// reinstreq error flag does not change that.
pub fn dpkg_status_is_installed(status: &str) -> bool {
    status.split_whitespace().nth(2) == Some("installed")
}

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
