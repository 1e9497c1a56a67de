//! Network namespaces: running code and commands inside one, ending what lives in one and
//! deleting it, the watcher that removes every live lab on SIGINT/SIGTERM/SIGHUP, the lab's
//! bpffs, and the kernel's SNMP counters of a namespace.

use std::{
    fs,
    io::{self},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};

use crate::*;

/// Runs `f` on a new thread that has joined network namespace `ns` (by its name under
/// /run/netns). Sockets made there stay in that namespace after the thread ends, so
/// this is how the test process itself talks from inside the lab.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    thread::spawn(move || -> io::Result<T> {
        // SAFETY: setns on a valid namespace fd; CLONE_NEWNET only affects this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("the thread in namespace {ns} panicked"))?
    .with_context(|| format!("entering network namespace {ns}"))
}

/// Like [`in_netns`], but `f` may borrow (it runs on a scoped thread, joined before this
/// returns), and a panic in `f` is the caller's panic, with its message. The thread is in
/// `ns` for as long as `f` runs, so a single-threaded async runtime driven from `f` makes
/// every socket there (a WebDriver client talking to a driver in the lab, say).
pub fn in_netns_scoped<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let joined = thread::scope(|s| {
        s.spawn(move || -> io::Result<T> {
            // SAFETY: setns on a valid namespace fd; CLONE_NEWNET only affects this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
    });
    match joined {
        Ok(r) => r.with_context(|| format!("entering network namespace {ns}")),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A TCP connection made from inside namespace `ns`, with a connect timeout.
pub fn tcp_connect(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<io::Result<TcpStream>> {
    in_netns(ns, move || TcpStream::connect_timeout(&addr, timeout))
}

/// Network namespaces (names under /run/netns) whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Ends processes that live in namespace `ns` but that we did not start in this process
/// (leftovers of a crashed run, or children that left their process group): SIGTERM,
/// up to a second's wait, then SIGKILL, each by pid.
pub(crate) fn kill_netns_pids(ns: &str) {
    let pids = |ns: &str| -> Vec<u32> {
        run_with_timeout(
            Command::new("ip").args(["netns", "pids", ns]),
            Duration::from_secs(5),
        )
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|&p| p != std::process::id())
                .collect()
        })
        .unwrap_or_default()
    };
    let first = pids(ns);
    if first.is_empty() {
        return;
    }
    for &p in &first {
        signal_pid(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && first.iter().any(|&p| pid_exists(p)) {
        thread::sleep(Duration::from_millis(20));
    }
    for p in pids(ns) {
        signal_pid(p, libc::SIGKILL);
    }
}

/// Deletes namespace `ns` after ending the processes in it. Errors are reported, not fatal;
/// a namespace already gone is what was wanted, not an error.
pub(crate) fn delete_netns(ns: &str) {
    let exists = || Path::new("/run/netns").join(ns).exists();
    if exists() {
        kill_netns_pids(ns);
        if let Err(e) = host(&["ip", "netns", "del", ns]) {
            if exists() {
                note(format_args!("lab cleanup: deleting namespace {ns}: {e:#}"));
            }
        }
    }
    // Files that `ip netns exec` bind-mounts over /etc (see `Lab::set_resolver`).
    let etc = netns_etc(ns);
    if etc.exists() {
        if let Err(e) = std::fs::remove_dir_all(&etc) {
            note(format_args!("lab cleanup: removing {}: {e}", etc.display()));
        }
    }
}

/// What the signal watcher removes: each live lab's namespaces and temp dir.
pub(crate) struct LiveLab {
    pub(crate) id: u64,
    pub(crate) namespaces: Vec<String>,
    pub(crate) dir: PathBuf,
}

pub(crate) static LIVE_LABS: Mutex<Vec<LiveLab>> = Mutex::new(Vec::new());
/// How many labs a `Drop` is removing right now (each took its entry out of [`LIVE_LABS`],
/// under that lock, before starting): the watcher lets them finish before it ends the
/// process, and never removes them itself. One owner per removal, so a Ctrl-C during (or
/// racing) a lab's drop does not delete the same namespaces twice.
pub(crate) static REMOVING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Bound of either side's wait for the other's removal.
pub(crate) const REMOVAL_WAIT: Duration = Duration::from_secs(60);
/// The write end of the pipe the signal handler writes the signal number to.
pub(crate) static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

pub(crate) extern "C" fn on_stop_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `byte` lives for the call; a failed write
    // (full pipe: a signal is already pending) loses nothing.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// Installs, once per process, handlers for SIGINT, SIGTERM and SIGHUP that hand the signal
/// to a thread (a handler itself may do almost nothing), which removes every live lab and
/// then exits with 128 + the signal.
pub(crate) fn watch_stop_signals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            note(format_args!(
                "lab: no cleanup on signals: pipe2: {}",
                io::Error::last_os_error()
            ));
            return;
        }
        SIGNAL_PIPE.store(fds[1], std::sync::atomic::Ordering::Relaxed);
        let read_end = fds[0];
        thread::spawn(move || loop {
            let mut byte = 0u8;
            // SAFETY: reads one byte into `byte` from the pipe this thread owns.
            let n = unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) };
            if n != 1 {
                continue;
            }
            let sig = i32::from(byte);
            let labs = std::mem::take(&mut *lock(&LIVE_LABS));
            for lab in &labs {
                note(format_args!(
                    "lab: signal {sig}: removing {} ...",
                    lab.namespaces.join(", ")
                ));
                for ns in lab.namespaces.iter().rev() {
                    delete_netns(ns);
                }
                unmount_bpffs(&lab.dir.join(BPFFS_DIR));
                let _ = fs::remove_dir_all(&lab.dir);
            }
            let deadline = Instant::now() + REMOVAL_WAIT;
            while REMOVING.load(std::sync::atomic::Ordering::SeqCst) > 0
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: _exit ends the process at once; the labs are gone, and running
            // destructors on other threads mid-test would only race with this.
            unsafe { libc::_exit(128 + sig) };
        });
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: sigaction is plain C data, valid all-zero; the handler only calls
            // write(2), which is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    });
}

/// The lab's bpffs mount point, inside its temp dir.
pub(crate) const BPFFS_DIR: &str = "bpffs";

/// Unmounts the bpffs at `path` if one is mounted there (detached lazily, so a straggler
/// holding it open cannot keep the lab's temp dir from going).
pub(crate) fn unmount_bpffs(path: &Path) {
    if !path.exists() {
        return;
    }
    let p = path.display().to_string();
    let _ = run_with_timeout(
        Command::new("umount").args(["-l", &p]),
        Duration::from_secs(5),
    );
}

pub(crate) fn netns_etc(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// Reads a counter as `nstat` names it (`IpForwDatagrams`, `UdpInCsumErrors`,
/// `TcpExtListenDrops`, ...) from the text of /proc/net/snmp and /proc/net/netstat (pairs of
/// `Prefix: names...` / `Prefix: values...` lines).
pub fn parse_snmp(text: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((p1, names)), Some((p2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            return None;
        };
        if p1 != p2 {
            return None;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if name.strip_prefix(p1) == Some(n) {
                // Some counters (Ip: Forwarding 1/2) are small; all are unsigned here but
                // a few older fields can be -1.
                return v.parse::<i64>().ok().map(|v| v.max(0) as u64);
            }
        }
    }
    None
}
