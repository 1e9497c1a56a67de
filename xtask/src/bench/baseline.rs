//! `--baseline REV`: another revision's srvgate, measured as mode `baseline` in the same
//! rounds as the working tree's build, so that an A/B is one report the bench wrote (the
//! same machine, the same load, the modes' order rotating) rather than two runs compared
//! by hand.
//!
//! The revision's tree is exported with `git archive` (no worktree is registered, the
//! repository is not touched) to `target/bench-baseline/<commit>` and built there in
//! release, with its own target directory shared by every baseline, so a second run of
//! the same baseline builds nothing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use srvgate_tests as lab;

use crate::cmd;

/// A baseline revision, built.
pub struct Baseline {
    /// What the user named (`main`, `v0.1`, `HEAD~3`).
    pub rev: String,
    /// The full commit it resolved to.
    pub commit: String,
    /// Its exported sources.
    pub dir: PathBuf,
    /// The target directory its builds use.
    pub target: PathBuf,
    pub srvgate: PathBuf,
    /// `srvgate run --help` of that build, to pass it only flags it knows.
    pub run_help: String,
}

impl Baseline {
    /// The report's line for it: the commit and what it was asked as.
    pub fn describe(&self) -> String {
        format!("{} (`--baseline {}`)", &self.commit[..12], self.rev)
    }
}

/// Resolves `rev`, exports its tree (once) and builds its release srvgate.
pub fn prepare(root: &Path, rev: &str) -> Result<Baseline> {
    let commit = cmd::stdout(Command::new("git").current_dir(root).args([
        "rev-parse",
        "--verify",
        "--quiet",
        &format!("{rev}^{{commit}}"),
    ]))
    .with_context(|| format!("--baseline {rev:?}: not a commit of this repository"))?
    .trim()
    .to_string();
    ensure!(
        commit.len() >= 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "--baseline {rev:?}: git answered {commit:?}, not a commit id"
    );
    let base = root.join("target").join("bench-baseline");
    let dir = base.join(&commit[..12]);
    if !dir.join("Cargo.toml").is_file() {
        export(root, &commit, &base, &dir)?;
    }
    let target = base.join("target");
    println!(
        "bench: building the baseline {rev} ({}) in {}",
        &commit[..12],
        dir.display()
    );
    cmd::run(
        Command::new("cargo")
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--release", "-p", "lb-userspace"]),
    )
    .with_context(|| format!("building the baseline {rev}"))?;
    let srvgate = target.join("release").join("srvgate");
    ensure!(
        srvgate.is_file(),
        "the baseline's build left no {}",
        srvgate.display()
    );
    let help = lab::run_with_timeout(
        Command::new(&srvgate).args(["run", "--help"]),
        Duration::from_secs(10),
    )?;
    Ok(Baseline {
        rev: rev.to_string(),
        commit,
        dir,
        target,
        srvgate,
        run_help: String::from_utf8_lossy(&help.stdout).into_owned(),
    })
}

/// `git archive` of `commit` unpacked into `dir`, through a scratch directory renamed into
/// place only once whole, so an interrupted export is never taken for a finished one.
fn export(root: &Path, commit: &str, base: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    let scratch = base.join(format!(".export-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let tar = base.join(format!(".export-{}.tar", std::process::id()));
    let outcome = (|| -> Result<()> {
        cmd::run(
            Command::new("git")
                .current_dir(root)
                .args(["archive", "--format=tar", "-o"])
                .arg(&tar)
                .arg(commit),
        )?;
        cmd::run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(&scratch),
        )?;
        fs::rename(&scratch, dir)
            .with_context(|| format!("moving {} to {}", scratch.display(), dir.display()))
    })();
    let _ = fs::remove_file(&tar);
    if outcome.is_err() {
        let _ = fs::remove_dir_all(&scratch);
    }
    outcome
}
