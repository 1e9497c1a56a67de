//! `cargo xtask docs`: the book (docs/book) built with mdBook into target/book, its command
//! pages generated from the CLI first, and every mdBook warning a failure.
//!
//! The book's sources are copied to target/book-src and the command pages written there, so
//! that building never edits the tree; the copy in git keeps a short note in their place.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Where the generated page goes, relative to the book's `src`.
const COMMANDS_PAGE: &str = "reference/commands.md";

/// Builds the book from `root`'s docs/book with `srvgate` (the built binary) into `out`.
pub fn build(root: &Path, target: &Path, srvgate: &Path, out: &Path) -> Result<PathBuf> {
    let source = root.join("docs/book");
    let stage = target.join("book-src");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    copy_dir(&source, &stage)?;
    cmd::run(
        Command::new(srvgate)
            .arg("generate-book")
            .arg(stage.join("src").join(COMMANDS_PAGE)),
    )?;
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    let mut mdbook = Command::new("mdbook");
    mdbook.arg("build").arg(&stage).arg("--dest-dir").arg(out);
    let output = cmd::capture(&mut mdbook)?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{log}");
    if !output.status.success() {
        bail!("`{}` failed ({})", cmd::display(&mdbook), output.status);
    }
    let warnings = warnings(&log);
    if !warnings.is_empty() {
        bail!(
            "mdbook warned (a warning is a failure here):\n{}",
            warnings.join("\n")
        );
    }
    let index = out.join("index.html");
    if !index.is_file() {
        bail!("mdbook succeeded but wrote no {}", index.display());
    }
    Ok(index)
}

/// mdBook's warning and error lines (its log's level names).
pub fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            fs::copy(&path, &dest)
                .with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_lines_are_found() {
        let log = " INFO Book building has started\n\
                   2026-12-08 WARN mdbook_html: a link is broken\n\
                   ERROR Rendering failed\n\
                    INFO HTML book written to `target/book`\n";
        assert_eq!(warnings(log).len(), 2);
        assert!(warnings(" INFO Book building has started\n").is_empty());
    }
}
