//! Running commands: every one bounded by a timeout, in its own process group (killed whole
//! on timeout), its output captured; signalling and reaping by pid.

use std::{
    io::{self, Read},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::*;

/// Runs `cmd` (stdin closed, stdout and stderr captured) in its own process group and waits
/// at most `timeout`; on timeout the whole group is killed and an error carrying the
/// partial output is returned. The exit status is not checked.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawning {shown}"))?;
    let out = capture(child.stdout.take());
    let err = capture(child.stderr.take());
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // The leader is unreaped (a zombie at worst), so the group id is still ours.
            signal_group(pid, libc::SIGKILL);
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    // Something that left the group could hold the pipes open: don't wait for it forever.
    let stdout = out.finish(Duration::from_secs(2));
    let stderr = err.finish(Duration::from_secs(2));
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "timed out after {timeout:?}: {shown}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

pub(crate) struct Captured {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Option<thread::JoinHandle<()>>,
}

pub(crate) fn capture(pipe: Option<impl Read + Send + 'static>) -> Captured {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let done = pipe.map(|mut p| {
        let buf = buf.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = p.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                lock(&buf).extend_from_slice(&chunk[..n]);
            }
        })
    });
    Captured { buf, done }
}

impl Captured {
    fn finish(mut self, grace: Duration) -> Vec<u8> {
        let deadline = Instant::now() + grace;
        if let Some(h) = self.done.take() {
            while !h.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        let out = lock(&self.buf).clone();
        out
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `ip netns exec NS argv...` as a [`Command`] (not started).
pub fn netns_command(ns: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(argv);
    c
}

/// Turns a finished command's output into its stdout, or an error showing everything.
pub fn expect_success(what: &str, out: &Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        bail!(
            "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Runs `argv` in the root namespace with [`DEFAULT_TIMEOUT`], requiring success.
pub(crate) fn host(argv: &[&str]) -> Result<String> {
    let out = run_with_timeout(Command::new(argv[0]).args(&argv[1..]), DEFAULT_TIMEOUT)?;
    expect_success(&argv.join(" "), &out)
}

/// Makes an ed25519 key pair without a passphrase at `path` (and `path.pub`).
pub(crate) fn ssh_keygen(path: &Path, comment: &str) -> Result<()> {
    let p = path.display().to_string();
    host(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        comment,
        "-f",
        &p,
    ])
    .map(drop)
}

/// Whether a process with this pid exists (including a zombie).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub(crate) fn signal_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a process group we created and have not reaped the leader of.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

pub(crate) fn signal_pid(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether our unreaped child `pid` has exited, without reaping it (WNOWAIT), so its pid
/// and process group id stay reserved until we do.
pub(crate) fn child_exited(pid: u32) -> bool {
    // SAFETY: waitid with a zeroed siginfo_t out-parameter.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // ECHILD: already reaped or not ours: gone as far as we are concerned.
        rc != 0 || info.si_pid() != 0
    }
}

pub(crate) fn wait_exit(pid: u32, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        if child_exited(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A line on stderr that cannot fail: cleanup must go on when nobody reads stderr any more
/// (`| tee` ended by the same Ctrl-C), where `eprintln!` would panic.
pub(crate) fn note(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(io::stderr(), "{args}");
}
