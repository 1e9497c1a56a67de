//! Subprocess helpers. Every failure names the full command line (with the environment
//! overrides we set) so that the user can copy it and rerun it by hand.

use std::{
    ffi::OsStr,
    io,
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Renders a command as a shell-like line, including the env vars we set on it, because
/// e.g. `LLVM_PREFIX` is essential to reproduce a failing `cargo install bpf-linker`.
pub fn display(cmd: &Command) -> String {
    let word = |s: &OsStr| shell_word(&s.to_string_lossy());
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), word(v))))
        .collect();
    parts.push(word(cmd.get_program()));
    parts.extend(cmd.get_args().map(word));
    parts.join(" ")
}

/// `s` as one shell word, quoted (by shlex) only where it needs to be.
pub fn shell_word(s: &str) -> String {
    // NULs allowed: then quoting cannot fail, and no argument can hold one anyway.
    shlex::Quoter::new()
        .allow_nul(true)
        .quote(s)
        .map_or_else(|_| String::new(), std::borrow::Cow::into_owned)
}

fn spawn_error(cmd: &Command, err: io::Error) -> anyhow::Error {
    let hint = if err.kind() == io::ErrorKind::NotFound {
        format!(
            " (is `{}` installed and on PATH?)",
            cmd.get_program().to_string_lossy()
        )
    } else {
        String::new()
    };
    anyhow::Error::new(err).context(format!("could not start `{}`{hint}", display(cmd)))
}

/// Runs with inherited stdio (the user sees cargo's and apt's progress live) and fails
/// unless the command exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| spawn_error(cmd, e))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs capturing stdout and stderr, whatever the exit status; for tools such as
/// `dpkg-query` whose non-zero exit is an answer rather than a failure.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))
}

/// Runs capturing output and returns stdout; a non-zero exit is an error that carries stderr.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = capture(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// True if the command starts and exits 0; used for "is this tool usable" probes, where a
/// missing binary and a broken one (e.g. a dangling libLLVM) mean the same thing.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_env_and_quotes_odd_args() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/tmp/a b").args([
            "install",
            "bpf-linker",
            "--features",
            "llvm-22",
            "it's",
        ]);
        assert_eq!(
            display(&cmd),
            r#"LLVM_PREFIX='/tmp/a b' cargo install bpf-linker --features llvm-22 "it's""#
        );
    }

    #[test]
    fn run_reports_the_command_and_its_status() {
        let err = run(Command::new("sh").args(["-c", "exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("`sh -c 'exit 3'` failed"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn missing_program_is_an_error_with_a_hint() {
        let err = run(&mut Command::new("srvgate-no-such-program")).unwrap_err();
        assert!(format!("{err:#}").contains("installed and on PATH"));
        assert!(!succeeds(&mut Command::new("srvgate-no-such-program")));
    }
}
