//! mdBook, which `cargo xtask docs` builds the book with: one pinned version, installed with
//! `cargo install` when missing or different, so every machine renders the same book.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

use super::{linker::prepend_to_path, *};

/// The version the book is written for (it builds with rustc 1.95). Search stays on; the
/// `serve` and `watch` features (a web server, a file watcher) are left out: the book is
/// built, never served, by xtask.
pub const MDBOOK_VERSION: &str = "0.5.4";

/// `mdbook --version` of `bin`, e.g. `mdbook v0.5.4`; an error if it does not run.
fn mdbook_version(bin: &Path) -> Result<String> {
    Ok(cmd::stdout(Command::new(bin).arg("--version"))?
        .trim()
        .to_string())
}

/// Whether `mdbook --version`'s answer is the pinned version.
pub fn is_pinned_mdbook(version_line: &str) -> bool {
    version_line
        .split_whitespace()
        .last()
        .is_some_and(|v| v.trim_start_matches('v') == MDBOOK_VERSION)
}

pub(super) fn mdbook(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let what = format!("mdbook {MDBOOK_VERSION} (builds the book: cargo xtask docs)");
    let root_bin = default_install_root()?.join("bin");
    let found =
        mdbook_version(Path::new("mdbook")).or_else(|_| mdbook_version(&root_bin.join("mdbook")));
    match &found {
        Ok(v) if is_pinned_mdbook(v) => {
            if mdbook_version(Path::new("mdbook")).is_err() {
                prepend_to_path(&root_bin)?;
            }
            report("ok", &what);
            return Ok(());
        }
        Ok(v) if check_only => {
            report("MISSING", &format!("{what}: found {v}"));
            missing.push(format!("mdbook {MDBOOK_VERSION}"));
            return Ok(());
        }
        Err(_) if check_only => {
            report("MISSING", &what);
            missing.push(format!("mdbook {MDBOOK_VERSION}"));
            return Ok(());
        }
        _ => {}
    }
    report("installing", &format!("{what} (a few minutes)"));
    let started = Instant::now();
    let mut install = Command::new("cargo");
    install
        // Outside the workspace so that its .cargo/config.toml cannot change the build.
        .current_dir(std::env::temp_dir())
        .args([
            "install",
            "mdbook",
            "--locked",
            "--force",
            "--version",
            MDBOOK_VERSION,
            "--no-default-features",
            "--features",
            "search",
        ]);
    cmd::run(&mut install).context("installing mdbook")?;
    let v = mdbook_version(&root_bin.join("mdbook")).with_context(|| {
        format!(
            "mdbook was installed to {} but does not run",
            root_bin.display()
        )
    })?;
    if !is_pinned_mdbook(&v) {
        bail!("installed mdbook {MDBOOK_VERSION}, but it says {v:?}");
    }
    if mdbook_version(Path::new("mdbook")).map_or(true, |v| !is_pinned_mdbook(&v)) {
        prepend_to_path(&root_bin)?;
    }
    report(
        "installed",
        &format!("{what}: {v} ({:.0} s)", secs(started)),
    );
    Ok(())
}
