//! A network-namespace lab for srvgate's end-to-end tests and for `cargo xtask run`'s demo.
//!
//! [`Lab::new`] builds four namespaces joined by veth pairs, nothing in the root namespace:
//!
//! ```text
//!  sg-TAG-cli                 sg-TAG-gw                           sg-TAG-b1
//!  eth0 10.210.1.2/24 ──── pub0  10.210.1.1/24 (public address)
//!  default via 10.210.1.1     priv1 10.210.2.1/24 ─────────────── eth0 10.210.2.11/24
//!                             priv2 10.210.3.1/24 ──┐             default via 10.210.2.1
//!                             ip_forward=1          │             sg-TAG-b2
//!                                                   └──────────── eth0 10.210.3.12/24
//!                                                                 default via 10.210.3.1
//! ```
//!
//! The endpoints' `eth0` (client and backends) are set like real remote hosts: `tx off` (full
//! checksums, as a wire delivers) and `gro on` (NAPI, so an XDP redirect into the gateway's
//! leg is delivered). The gateway's legs keep veth defaults: srvgate attaches XDP to them.
//! IPv6 is disabled in every lab namespace so that only the IPv4 traffic a test makes
//! crosses the legs. The gateway has no default route: no packet can leave the lab.
//!
//! srvgate pins its maps and XDP links in a BPF filesystem the lab mounts in its temp dir
//! ([`Lab::pin_dir`]): `ip netns exec` gives each command a private /sys, so pins under
//! /sys/fs/bpf would die with the daemon and a restart could not pick them up. Its state
//! directory and control socket live in the temp dir too ([`Lab::state_dir`],
//! [`Lab::socket_path`]), so labs never share them with each other or with the host.
//!
//! Everything the lab starts is tracked and ended by pid when the [`Lab`] is dropped (also
//! when a test panics), then its namespaces are deleted, which removes the veths, and its
//! bpffs is unmounted, which frees whatever srvgate left pinned. SIGINT, SIGTERM and SIGHUP
//! (Ctrl-C, a `kill`, a dropped ssh session) do the same for every lab of the process and
//! then end it (exit status 128 + the signal), whether or not its stdout and stderr still
//! lead anywhere: cleanup never depends on printing. A lab whose process died without
//! either (SIGKILL) leaves `sg-TAG-*` namespaces behind; the next `Lab::new(TAG)` removes
//! them first.
//!
//! Every command the lab runs is bounded by a timeout. Everything here needs root;
//! tests call [`skip_unless_root`] first.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, Read},
    net::{SocketAddr, TcpStream},
    os::{
        fd::AsRawFd,
        unix::{fs::DirBuilderExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

/// The gateway's public address (on `pub0`); routes are reached at `PUBLIC_IP:port`.
pub const PUBLIC_IP: &str = "10.210.1.1";
/// The client's address (on the client's `eth0`).
pub const CLIENT_IP: &str = "10.210.1.2";
/// The gateway's address on `priv1`, backend 1's default gateway.
pub const GW_PRIV1_IP: &str = "10.210.2.1";
/// The gateway's address on `priv2`, backend 2's default gateway.
pub const GW_PRIV2_IP: &str = "10.210.3.1";
/// Backend 1's address.
pub const B1_IP: &str = "10.210.2.11";
/// Backend 2's address.
pub const B2_IP: &str = "10.210.3.12";
/// The gateway's public leg.
pub const PUBLIC_IF: &str = "pub0";
/// The far host of [`Lab::add_far_host`], its network, and the client namespace's address
/// on that network.
pub const FAR_IP: &str = "10.210.9.2";
pub const FAR_GW_IP: &str = "10.210.9.1";
pub const FAR_NET: &str = "10.210.9.0";
/// The gateway's private legs, toward backend 1 and backend 2.
pub const PRIVATE_IFS: [&str; 2] = ["priv1", "priv2"];
/// Where [`config_toml`] makes srvgate serve metrics (inside the gateway namespace).
pub const METRICS_ADDR: &str = "127.0.0.1:9110";
/// The bound of every command the lab runs unless a caller gives its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Lab::start_srvgate`] waits for the daemon's `ready` line.
pub const SRVGATE_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The `srvgate` binary under test: `$SRVGATE_BIN` if set, else
/// `<workspace>/target/release/srvgate`.
pub fn srvgate_bin() -> PathBuf {
    match std::env::var_os("SRVGATE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/release/srvgate"),
    }
}

/// Whether this process runs as root (effective uid 0), which the lab needs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns `true` (after printing why) when `test` must be skipped because this process is
/// not root. Use at the top of a test: `if skip_unless_root("name") { return; }`.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    println!(
        "skipped: needs root ({test} builds network namespaces, veths and attaches XDP; \
         run the tests as root, e.g. `sudo -E cargo test -p srvgate-tests`)"
    );
    true
}

/// One route of a lab config, see [`config_toml`].
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub name: String,
    pub service: String,
    /// `"tcp"` or `"udp"`.
    pub protocol: String,
    /// `address:port` of the backend.
    pub backend: String,
    /// Public port on [`PUBLIC_IP`].
    pub port: u16,
}

impl RouteSpec {
    pub fn tcp(name: &str, service: &str, backend: &str, port: u16) -> Self {
        Self::new(name, service, "tcp", backend, port)
    }
    pub fn udp(name: &str, service: &str, backend: &str, port: u16) -> Self {
        Self::new(name, service, "udp", backend, port)
    }
    pub fn new(name: &str, service: &str, protocol: &str, backend: &str, port: u16) -> Self {
        RouteSpec {
            name: name.into(),
            service: service.into(),
            protocol: protocol.into(),
            backend: backend.into(),
            port,
        }
    }
}

/// The srvgate config of the lab's gateway: public `pub0` (10.210.1.1), private `priv1` and
/// `priv2`, port range 30000-32767, DNS zone `lab.example` on 10.210.1.1:53, metrics on
/// [`METRICS_ADDR`], and `routes`. Released ports go straight back to the pool
/// (`port_cooldown = "0s"`): the tests that want the cool-down set it.
pub fn config_toml(routes: &[RouteSpec]) -> String {
    let mut s = format!(
        r#"[gateway]
public_interface = "{PUBLIC_IF}"
private_interfaces = ["{}", "{}"]
public_ipv4 = "{PUBLIC_IP}"
port_range = "30000-32767"
port_cooldown = "0s"

[dns]
zone = "lab.example"
listen = ["{PUBLIC_IP}:53"]
gateway_name = "gw"
ttl = 30

[metrics]
listen = "{METRICS_ADDR}"
"#,
        PRIVATE_IFS[0], PRIVATE_IFS[1]
    );
    for r in routes {
        let _ = write!(
            s,
            "\n[[route]]\nname = \"{}\"\nservice = \"{}\"\nprotocol = \"{}\"\nbackend = \"{}\"\nport = {}\n",
            r.name, r.service, r.protocol, r.backend, r.port
        );
    }
    s
}

// ---------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------

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

struct Captured {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Option<thread::JoinHandle<()>>,
}

fn capture(pipe: Option<impl Read + Send + 'static>) -> Captured {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
fn host(argv: &[&str]) -> Result<String> {
    let out = run_with_timeout(Command::new(argv[0]).args(&argv[1..]), DEFAULT_TIMEOUT)?;
    expect_success(&argv.join(" "), &out)
}

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

/// Whether a process with this pid exists (including a zombie).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a process group we created and have not reaped the leader of.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

fn signal_pid(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether our unreaped child `pid` has exited, without reaping it (WNOWAIT), so its pid
/// and process group id stay reserved until we do.
fn child_exited(pid: u32) -> bool {
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

fn wait_exit(pid: u32, grace: Duration) -> bool {
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

/// Ends processes that live in namespace `ns` but that we did not start in this process
/// (leftovers of a crashed run, or children that left their process group): SIGTERM,
/// up to a second's wait, then SIGKILL, each by pid.
fn kill_netns_pids(ns: &str) {
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

/// Deletes namespace `ns` after ending the processes in it. Errors are reported, not fatal.
fn delete_netns(ns: &str) {
    kill_netns_pids(ns);
    if let Err(e) = host(&["ip", "netns", "del", ns]) {
        note(format_args!("lab cleanup: deleting namespace {ns}: {e:#}"));
    }
    // Files that `ip netns exec` bind-mounts over /etc (see `Lab::set_resolver`).
    let etc = netns_etc(ns);
    if etc.exists() {
        if let Err(e) = std::fs::remove_dir_all(&etc) {
            note(format_args!("lab cleanup: removing {}: {e}", etc.display()));
        }
    }
}

/// A line on stderr that cannot fail: cleanup must go on when nobody reads stderr any more
/// (`| tee` ended by the same Ctrl-C), where `eprintln!` would panic.
fn note(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(io::stderr(), "{args}");
}

/// What the signal watcher removes: each live lab's namespaces and temp dir.
struct LiveLab {
    id: u64,
    namespaces: Vec<String>,
    dir: PathBuf,
}

static LIVE_LABS: Mutex<Vec<LiveLab>> = Mutex::new(Vec::new());
/// The write end of the pipe the signal handler writes the signal number to.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `byte` lives for the call; a failed write
    // (full pipe: a signal is already pending) loses nothing.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// Installs, once per process, handlers for SIGINT, SIGTERM and SIGHUP that hand the signal
/// to a thread (a handler itself may do almost nothing), which removes every live lab and
/// then exits with 128 + the signal.
fn watch_stop_signals() {
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
const BPFFS_DIR: &str = "bpffs";

/// Unmounts the bpffs at `path` if one is mounted there (detached lazily, so a straggler
/// holding it open cannot keep the lab's temp dir from going).
fn unmount_bpffs(path: &Path) {
    if !path.exists() {
        return;
    }
    let p = path.display().to_string();
    let _ = run_with_timeout(
        Command::new("umount").args(["-l", &p]),
        Duration::from_secs(5),
    );
}

fn netns_etc(ns: &str) -> PathBuf {
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

// ---------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------

/// One sample of Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition (comments skipped; unparsable lines ignored).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        };
        rest = &body[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the first sample named `name` whose labels include every `(key, value)` of
/// `labels` (a subset match; `&[]` matches any).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse_metrics(text)
        .into_iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// The sum of every sample named `name` whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Whether srvgate's log shows it ready: a line with the word `ready` (not e.g. `already`).
pub fn log_says_ready(log: &str) -> bool {
    log.lines().any(|l| has_word(l, "ready"))
}

// ---------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------

/// The backend [`Lab::start_echo_web`] runs: `python3 echo_web.py TAG PORT`.
pub const ECHO_WEB: &str = r#"import base64, hashlib, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TAG, PORT = sys.argv[1], int(sys.argv[2])
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    # One write per response (http.server flushes after each request): a head and a body
    # in two segments would meet Nagle and delayed ACKs, 40 ms a request.
    wbufsize = 65536

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.client_address[0], fmt % args))
        sys.stderr.flush()

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        body = self.body().decode(errors="replace")
        host = self.headers.get("Host")
        out = "%s %s %s host=%s body=%s" % (TAG, self.command, self.path, host, body)
        xff = self.headers.get_all("X-Forwarded-For")
        if xff:
            out += " xff=%s" % ",".join(xff)
        out = (out + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_HEAD = answer

    def websocket(self):
        self.close_connection = True
        key = self.headers["Sec-WebSocket-Key"] + GUID
        accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 0x0F, head[1] & 0x7F
            if n > 125:
                return
            mask = self.rfile.read(4) if head[1] & 0x80 else bytes(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                self.wfile.flush()
                return
            self.wfile.write(bytes([0x80 | op, len(data)]) + data)
            self.wfile.flush()


ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
"#;

struct Tracked {
    child: Child,
    what: String,
    log: PathBuf,
}

#[derive(Clone)]
struct SshKeys {
    client_key: PathBuf,
    host_key: PathBuf,
    authorized_keys: PathBuf,
}

/// The lab: four namespaces, their veths, and every process started in them. See the
/// crate documentation for the topology. Dropping it removes everything.
pub struct Lab {
    tag: String,
    /// The client namespace (the internet): `sg-TAG-cli`.
    pub client: String,
    /// The gateway namespace: `sg-TAG-gw`.
    pub gw: String,
    /// Backend 1's namespace: `sg-TAG-b1`.
    pub b1: String,
    /// Backend 2's namespace: `sg-TAG-b2`.
    pub b2: String,
    created: Vec<String>,
    dir: tempfile::TempDir,
    procs: Mutex<Vec<Tracked>>,
    keys: Mutex<Option<SshKeys>>,
    srvgate: Mutex<Option<(u32, PathBuf)>>,
    counter: Mutex<u32>,
    /// Its entry in the signal watcher's list.
    live_id: u64,
}

impl Lab {
    /// Builds the lab with namespaces `sg-TAG-{cli,gw,b1,b2}` after removing any stale
    /// `sg-TAG-*` namespace (and the processes in it) and `$TMPDIR/srvgate-lab-TAG-*` temp
    /// dir left by an earlier run that was killed. `tag` is 1-8 characters of `a-z0-9`.
    /// Needs root.
    pub fn new(tag: &str) -> Result<Lab> {
        ensure!(
            !tag.is_empty()
                && tag.len() <= 8
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "lab tag {tag:?}: use 1-8 characters of a-z0-9"
        );
        ensure!(is_root(), "the lab needs root (network namespaces, veths)");
        let prefix = format!("sg-{tag}-");
        for stale in namespaces_with_prefix(&prefix) {
            note(format_args!("lab {tag}: removing stale namespace {stale}"));
            delete_netns(&stale);
        }
        // And the temp dirs of labs with this tag that were never dropped (killed runs).
        let dir_prefix = format!("srvgate-lab-{tag}-");
        for e in fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&dir_prefix) {
                // Unmount first: removing files inside a live bpffs would only unpin them.
                unmount_bpffs(&e.path().join(BPFFS_DIR));
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&dir_prefix)
            .tempdir()
            .context("creating the lab's temp dir")?;
        // Registered before anything exists, so a signal during the build removes it too.
        watch_stop_signals();
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let live_id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&LIVE_LABS).push(LiveLab {
            id: live_id,
            namespaces: ["cli", "gw", "b1", "b2"]
                .iter()
                .map(|n| format!("{prefix}{n}"))
                .collect(),
            dir: dir.path().to_path_buf(),
        });
        let mut lab = Lab {
            live_id,
            tag: tag.to_string(),
            client: format!("{prefix}cli"),
            gw: format!("{prefix}gw"),
            b1: format!("{prefix}b1"),
            b2: format!("{prefix}b2"),
            created: Vec::new(),
            dir,
            procs: Mutex::new(Vec::new()),
            keys: Mutex::new(None),
            srvgate: Mutex::new(None),
            counter: Mutex::new(0),
        };
        // On error, dropping `lab` removes whatever was built so far.
        lab.build().with_context(|| format!("building lab {tag}"))?;
        let bpffs = lab.dir().join(BPFFS_DIR);
        fs::create_dir(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        let b = bpffs.display().to_string();
        host(&["mount", "-t", "bpf", "bpf", &b]).context("mounting the lab's bpffs")?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let (cli, gw, b1, b2) = (
            self.client.clone(),
            self.gw.clone(),
            self.b1.clone(),
            self.b2.clone(),
        );
        for ns in [&cli, &gw, &b1, &b2] {
            host(&["ip", "netns", "add", ns])?;
            self.created.push(ns.clone());
            // Before the veths exist, so that they never get IPv6 addresses.
            self.exec_ok(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?;
            host(&["ip", "-n", ns, "link", "set", "dev", "lo", "up"])?;
        }
        for (end, end_ns, leg) in [
            ("eth0", &cli, PUBLIC_IF),
            ("eth0", &b1, PRIVATE_IFS[0]),
            ("eth0", &b2, PRIVATE_IFS[1]),
        ] {
            host(&[
                "ip", "link", "add", end, "netns", end_ns, "type", "veth", "peer", "name", leg,
                "netns", &gw,
            ])?;
        }
        let addr = |ns: &str, dev: &str, cidr: &str| -> Result<()> {
            host(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev])?;
            host(&["ip", "-n", ns, "link", "set", "dev", dev, "up"])?;
            Ok(())
        };
        addr(&gw, PUBLIC_IF, &format!("{PUBLIC_IP}/24"))?;
        addr(&gw, PRIVATE_IFS[0], &format!("{GW_PRIV1_IP}/24"))?;
        addr(&gw, PRIVATE_IFS[1], &format!("{GW_PRIV2_IP}/24"))?;
        self.exec_ok(&gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for (ns, ip, via) in [
            (&cli, CLIENT_IP, PUBLIC_IP),
            (&b1, B1_IP, GW_PRIV1_IP),
            (&b2, B2_IP, GW_PRIV2_IP),
        ] {
            addr(ns, "eth0", &format!("{ip}/24"))?;
            host(&["ip", "-n", ns, "route", "add", "default", "via", via])?;
            // Like a remote host on a wire: full checksums out, NAPI (GRO) in.
            self.exec_ok(ns, &["ethtool", "-K", "eth0", "tx", "off", "gro", "on"])?;
        }
        Ok(())
    }

    /// A host beyond the client, for shapes with a router in between: a namespace
    /// `sg-TAG-far` linked to the client namespace (now a router) by a link of MTU
    /// `hop_mtu`. The far host still announces a 1460-byte MSS (`advmss`), as a host whose
    /// own link is 1500 behind a second router would, so the client namespace must send
    /// "fragmentation needed" for segments that do not fit the hop. The far host is
    /// `FAR_IP`; the gateway routes to it through the client. Removed with the lab.
    /// Returns the namespace's name.
    pub fn add_far_host(&mut self, hop_mtu: u32) -> Result<String> {
        let far = format!("{}far", self.prefix());
        host(&["ip", "netns", "add", &far])?;
        self.created.push(far.clone());
        self.exec_ok(&far, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        host(&["ip", "-n", &far, "link", "set", "dev", "lo", "up"])?;
        let cli = self.client.clone();
        host(&[
            "ip", "link", "add", "eth1", "netns", &cli, "type", "veth", "peer", "name", "eth0",
            "netns", &far,
        ])?;
        let mtu = hop_mtu.to_string();
        for (ns, dev, cidr) in [(&cli, "eth1", FAR_GW_IP), (&far, "eth0", FAR_IP)] {
            host(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{cidr}/24"),
                "dev",
                dev,
            ])?;
            host(&["ip", "-n", ns, "link", "set", "dev", dev, "up"])?;
        }
        host(&["ip", "-n", &cli, "link", "set", "dev", "eth1", "mtu", &mtu])?;
        host(&["ip", "-n", &far, "link", "set", "dev", "eth0", "mtu", &mtu])?;
        host(&[
            "ip", "-n", &far, "route", "add", "default", "via", FAR_GW_IP, "advmss", "1460",
        ])?;
        self.exec_ok(&far, &["ethtool", "-K", "eth0", "tx", "off", "gro", "on"])?;
        self.exec_ok(&cli, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let gw = self.gw.clone();
        host(&[
            "ip",
            "-n",
            &gw,
            "route",
            "add",
            &format!("{FAR_NET}/24"),
            "via",
            CLIENT_IP,
        ])?;
        Ok(far)
    }

    /// The lab's tag.
    /// Points `ns`'s resolver at `nameserver`: `ip netns exec` bind-mounts
    /// `/etc/netns/NS/resolv.conf` over `/etc/resolv.conf` for every command run in `ns`.
    /// Removed with the namespace.
    pub fn set_resolver(&self, ns: &str, nameserver: &str) -> Result<()> {
        let dir = netns_etc(ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )
        .with_context(|| format!("writing {}/resolv.conf", dir.display()))
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `sg-TAG-`: the prefix of every namespace of this lab.
    pub fn prefix(&self) -> String {
        format!("sg-{}-", self.tag)
    }

    /// The four namespaces: client, gateway, backend 1, backend 2.
    pub fn namespaces(&self) -> [&str; 4] {
        [&self.client, &self.gw, &self.b1, &self.b2]
    }

    /// The lab's temp dir (keys, configs, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where srvgate pins its maps and links (`--pin-dir`): on the lab's own bpffs.
    pub fn pin_dir(&self) -> PathBuf {
        self.dir().join(BPFFS_DIR).join("srvgate")
    }

    /// srvgate's `--state-dir` in this lab.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// srvgate's `--socket` (the control socket) in this lab.
    pub fn socket_path(&self) -> PathBuf {
        self.dir().join("run").join("control.sock")
    }

    /// Writes `contents` to `name` in the lab's temp dir and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let p = self.dir().join(name);
        fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    fn next_id(&self) -> u32 {
        let mut c = lock(&self.counter);
        *c += 1;
        *c
    }

    /// Runs `argv` inside namespace `ns`, bounded by `timeout`; returns its output whatever
    /// its exit status (an error only for a timeout or a spawn failure).
    pub fn exec(&self, ns: &str, argv: &[&str], timeout: Duration) -> Result<Output> {
        run_with_timeout(&mut netns_command(ns, argv), timeout)
    }

    /// Runs `argv` inside `ns` with [`DEFAULT_TIMEOUT`]; requires success; returns stdout.
    pub fn exec_ok(&self, ns: &str, argv: &[&str]) -> Result<String> {
        let out = self.exec(ns, argv, DEFAULT_TIMEOUT)?;
        expect_success(&format!("[{ns}] {}", argv.join(" ")), &out)
    }

    /// Runs a bash `script` inside `ns` with [`DEFAULT_TIMEOUT`]; requires success.
    pub fn sh(&self, ns: &str, script: &str) -> Result<String> {
        self.exec_ok(ns, &["bash", "-c", script])
    }

    /// Starts the long-running `argv` inside `ns`, stdout and stderr going to a log file in
    /// the temp dir; tracked for cleanup. Returns its pid.
    pub fn spawn(&self, ns: &str, argv: &[&str]) -> Result<u32> {
        let base = Path::new(argv.first().copied().unwrap_or("cmd"))
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cmd".into());
        let log = self
            .dir()
            .join(format!("{ns}-{base}-{}.log", self.next_id()));
        self.spawn_logged(ns, argv, &[], &log)
    }

    /// Like [`Lab::spawn`] with extra environment variables and a chosen log file.
    ///
    /// The process gets its own process group (ended as a group on cleanup) and
    /// `PR_SET_PDEATHSIG = SIGKILL`: it dies if the *thread* that spawned it ends, so call
    /// this from the thread that owns the lab.
    pub fn spawn_logged(
        &self,
        ns: &str,
        argv: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<u32> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = netns_command(ns, argv);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting [{ns}] {}", argv.join(" ")))?;
        let pid = child.id();
        lock(&self.procs).push(Tracked {
            child,
            what: format!("[{ns}] {}", argv.join(" ")),
            log: log.to_path_buf(),
        });
        Ok(pid)
    }

    /// Pids of the processes this lab started and has not stopped yet.
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.procs).iter().map(|t| t.child.id()).collect()
    }

    /// Whether the lab's process `pid` is still running (it is not reaped here).
    pub fn is_running(&self, pid: u32) -> bool {
        lock(&self.procs).iter().any(|t| t.child.id() == pid) && !child_exited(pid)
    }

    /// The log file of the lab's process `pid`.
    pub fn log_path(&self, pid: u32) -> Option<PathBuf> {
        lock(&self.procs)
            .iter()
            .find(|t| t.child.id() == pid)
            .map(|t| t.log.clone())
    }

    /// Stops the lab's process `pid`: SIGTERM to it, up to `grace` to exit, then SIGKILL to
    /// its process group; reaps it and returns its exit status.
    pub fn stop(&self, pid: u32, grace: Duration) -> Result<ExitStatus> {
        let mut t = {
            let mut procs = lock(&self.procs);
            let i = procs
                .iter()
                .position(|t| t.child.id() == pid)
                .ok_or_else(|| anyhow!("pid {pid} is not a process of this lab"))?;
            procs.remove(i)
        };
        if !child_exited(pid) {
            signal_pid(pid, libc::SIGTERM);
            wait_exit(pid, grace);
        }
        // The leader is not reaped yet, so the group id is still ours: end stragglers.
        signal_group(pid, libc::SIGKILL);
        t.child
            .wait()
            .with_context(|| format!("waiting for {}", t.what))
    }

    /// Starts `/usr/sbin/sshd` on 0.0.0.0:22 inside `ns` with the UTS hostname `hostname`
    /// (what `hostname` answers over ssh). See [`Lab::start_sshd_on`].
    pub fn start_sshd(&self, ns: &str, hostname: &str) -> Result<u32> {
        self.start_sshd_on(ns, hostname, "0.0.0.0", 22)
    }

    /// Starts sshd in `ns` listening on `addr:port`, in its own UTS namespace named
    /// `hostname`, accepting the lab's client key for root; waits (bounded) until the port
    /// listens. Returns its pid.
    pub fn start_sshd_on(&self, ns: &str, hostname: &str, addr: &str, port: u16) -> Result<u32> {
        let keys = self.ssh_keys()?;
        let id = self.next_id();
        let dir = self.dir().display().to_string();
        let cfg = self.write_file(
            &format!("sshd-{ns}-{port}-{id}.conf"),
            &format!(
                "Port {port}\n\
                 ListenAddress {addr}\n\
                 AddressFamily inet\n\
                 HostKey {}\n\
                 AuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 UseDNS no\n\
                 PidFile {dir}/sshd-{ns}-{port}-{id}.pid\n",
                keys.host_key.display(),
                keys.authorized_keys.display(),
            ),
        )?;
        // sshd's privilege separation directory.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create("/run/sshd")
            .context("creating /run/sshd")?;
        let cfg = cfg.display().to_string();
        let pid = self.spawn(
            ns,
            &[
                "unshare",
                "--uts",
                "--",
                "sh",
                "-c",
                r#"hostname "$0" && exec /usr/sbin/sshd -D -e -f "$1""#,
                hostname,
                &cfg,
            ],
        )?;
        self.wait_listening(ns, pid, port, Duration::from_secs(10))
            .with_context(|| format!("sshd in {ns} on {addr}:{port}"))?;
        Ok(pid)
    }

    fn ssh_keys(&self) -> Result<SshKeys> {
        let mut keys = lock(&self.keys);
        if let Some(k) = &*keys {
            return Ok(k.clone());
        }
        let k = SshKeys {
            client_key: self.dir().join("id_ed25519"),
            host_key: self.dir().join("ssh_host_ed25519_key"),
            authorized_keys: self.dir().join("authorized_keys"),
        };
        for (path, comment) in [
            (&k.client_key, "srvgate-lab-client"),
            (&k.host_key, "srvgate-lab-host"),
        ] {
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
            ])?;
        }
        fs::copy(k.client_key.with_extension("pub"), &k.authorized_keys)
            .context("writing authorized_keys")?;
        *keys = Some(k.clone());
        Ok(k)
    }

    /// A small web server on port 80 in `ns` whose every page says `text` (Python's
    /// http.server over a directory of the lab's); returns once it listens.
    pub fn start_web(&self, ns: &str, text: &str) -> Result<u32> {
        let dir = self.dir().join(format!("www-{ns}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("index.html"), format!("{text}\n"))
            .with_context(|| format!("writing {}/index.html", dir.display()))?;
        let dir = dir.display().to_string();
        let pid = self.spawn(
            ns,
            &["python3", "-m", "http.server", "80", "--directory", &dir],
        )?;
        self.wait_listening(ns, pid, 80, DEFAULT_TIMEOUT)?;
        Ok(pid)
    }

    /// A keep-alive HTTP/1.1 server on `port` in `ns` (Python's http.server, the script
    /// [`ECHO_WEB`]) that answers every request with `TAG METHOD PATH host=HOST body=BODY`
    /// (chunked bodies decoded; then ` xff=...` if it had X-Forwarded-For headers), framed by
    /// Content-Length, and echoes WebSocket frames after
    /// a real handshake. Returns once it listens.
    pub fn start_echo_web(&self, ns: &str, tag: &str, port: u16) -> Result<u32> {
        let script = self.write_file("echo_web.py", ECHO_WEB)?;
        let script = script.display().to_string();
        let p = port.to_string();
        let pid = self.spawn(ns, &["python3", &script, tag, &p])?;
        self.wait_listening(ns, pid, port, DEFAULT_TIMEOUT)?;
        Ok(pid)
    }

    /// Starts nginx in `ns` (one process, in the foreground, every path in the lab's temp
    /// dir) with `http_body` inside its `http {}` block, and waits until `port` listens.
    /// Its access log is `nginx-NS-access.log` in the temp dir, in the format `log_format`.
    pub fn start_nginx(
        &self,
        ns: &str,
        port: u16,
        log_format: &str,
        http_body: &str,
    ) -> Result<u32> {
        let dir = self.dir().join(format!("nginx-{ns}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let d = dir.display();
        let conf = self.write_file(
            &format!("nginx-{ns}.conf"),
            &format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n  log_format lab '{log_format}';\n\
                 access_log {} lab;\n{http_body}\n}}\n",
                self.nginx_access_log(ns).display()
            ),
        )?;
        let conf = conf.display().to_string();
        let err = format!("{d}/error.log");
        let pid = self.spawn(ns, &["nginx", "-e", &err, "-c", &conf])?;
        self.wait_listening(ns, pid, port, DEFAULT_TIMEOUT)
            .with_context(|| {
                format!(
                    "nginx in {ns}; error log:\n{}",
                    fs::read_to_string(&err).unwrap_or_default()
                )
            })?;
        Ok(pid)
    }

    /// The access log of the nginx [`Lab::start_nginx`] started in `ns`.
    pub fn nginx_access_log(&self, ns: &str) -> PathBuf {
        self.dir().join(format!("nginx-{ns}-access.log"))
    }

    /// A self-signed certificate (its own CA: a client trusts it with `--cacert`) for DNS
    /// name `name`, made by openssl in the lab's temp dir: (certificate, key) paths.
    pub fn self_signed_cert(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = self.dir().join(format!("{name}.crt"));
        let key = self.dir().join(format!("{name}.key"));
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        let subject = format!("/CN={name}");
        let san = format!("subjectAltName=DNS:{name}");
        let out = run_with_timeout(
            Command::new("openssl").args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                &san,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-keyout",
                &k,
                "-out",
                &c,
            ]),
            DEFAULT_TIMEOUT,
        )?;
        expect_success(&format!("openssl req for {name}"), &out)?;
        Ok((cert, key))
    }

    /// Waits until TCP `port` listens in `ns` (seen with `ss`), failing early with the log
    /// if the lab's process `pid` exits first.
    pub fn wait_listening(&self, ns: &str, pid: u32, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let filter = format!("sport = :{port}");
        loop {
            let out = self.exec(ns, &["ss", "-Hltn", &filter], Duration::from_secs(5))?;
            if out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(());
            }
            if !self.is_running(pid) {
                bail!(
                    "process {pid} exited before listening on port {port}; its log:\n{}",
                    self.read_log(pid)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "port {port} not listening after {timeout:?}; log of {pid}:\n{}",
                    self.read_log(pid)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn read_log(&self, pid: u32) -> String {
        self.log_path(pid)
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The lab's client private key (authorized on every sshd the lab starts).
    pub fn client_key(&self) -> Result<PathBuf> {
        Ok(self.ssh_keys()?.client_key)
    }

    /// The ssh options every lab connection uses: the lab's key only, no prompts, no
    /// known_hosts (host keys are throwaway), a bounded connect, quiet.
    pub fn ssh_options(&self) -> Result<Vec<String>> {
        let key = self.ssh_keys()?.client_key.display().to_string();
        Ok([
            "-i",
            &key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect())
    }

    /// The `ssh` command line [`Lab::ssh`] runs (without `ip netns exec`).
    pub fn ssh_argv(&self, host: &str, port: u16, cmd: &str) -> Result<Vec<String>> {
        let mut v: Vec<String> = vec!["ssh".into(), "-F".into(), "none".into()];
        v.extend(self.ssh_options()?);
        v.extend([
            "-p".into(),
            port.to_string(),
            format!("root@{host}"),
            cmd.into(),
        ]);
        Ok(v)
    }

    /// Runs `cmd` over real ssh from `ns` to `root@host:port` with the lab's key, bounded by
    /// [`DEFAULT_TIMEOUT`]; returns the raw output (exit status unchecked).
    pub fn ssh_output(&self, ns: &str, host: &str, port: u16, cmd: &str) -> Result<Output> {
        let argv = self.ssh_argv(host, port, cmd)?;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.exec(ns, &argv, DEFAULT_TIMEOUT)
    }

    /// Moves `bytes` zero bytes over real ssh from `ns` to `root@host:port` and back
    /// (`head -c | ssh wc -c` up, `ssh head -c` down, each bounded by [`DEFAULT_TIMEOUT`]);
    /// an error says which way fell short and by how much.
    pub fn ssh_bulk_both_ways(&self, ns: &str, host: &str, port: u16, bytes: usize) -> Result<()> {
        let argv = self.ssh_argv(host, port, "wc -c")?;
        let ssh = shlex::try_join(argv.iter().map(String::as_str))?;
        let up = self.sh(ns, &format!("head -c {bytes} /dev/zero | {ssh}"))?;
        ensure!(
            up.trim() == bytes.to_string(),
            "[{ns}] up to {host}:{port}: {} of {bytes} bytes arrived",
            up.trim()
        );
        let out = self.ssh_output(ns, host, port, &format!("head -c {bytes} /dev/zero"))?;
        expect_success(&format!("[{ns}] ssh -p {port} root@{host} head"), &out)?;
        ensure!(
            out.stdout.len() == bytes,
            "[{ns}] down from {host}:{port}: {} of {bytes} bytes arrived",
            out.stdout.len()
        );
        Ok(())
    }

    /// Runs `cmd` over real ssh from `ns` to `root@host:port`; requires success and returns
    /// stdout, trimmed.
    pub fn ssh(&self, ns: &str, host: &str, port: u16, cmd: &str) -> Result<String> {
        let out = self.ssh_output(ns, host, port, cmd)?;
        Ok(
            expect_success(&format!("[{ns}] ssh -p {port} root@{host} {cmd}"), &out)?
                .trim()
                .to_string(),
        )
    }

    /// Starts `iperf3 -s -p PORT` in `ns` and waits until it listens. Returns its pid.
    pub fn start_iperf3_server(&self, ns: &str, port: u16) -> Result<u32> {
        let p = port.to_string();
        let pid = self.spawn(ns, &["iperf3", "-s", "-p", &p])?;
        self.wait_listening(ns, pid, port, Duration::from_secs(10))
            .with_context(|| format!("iperf3 server in {ns} on port {port}"))?;
        Ok(pid)
    }

    /// A counter of namespace `ns` by its `nstat` name, e.g. `IpForwDatagrams`, read from
    /// /proc/net/snmp and /proc/net/netstat inside the namespace (absolute value).
    pub fn nstat_value(&self, ns: &str, name: &str) -> Result<u64> {
        let text = self.exec_ok(ns, &["cat", "/proc/net/snmp", "/proc/net/netstat"])?;
        parse_snmp(&text, name).ok_or_else(|| anyhow!("no counter {name} in {ns}"))
    }

    /// Whether an XDP program (any mode) is attached to `dev` in `ns`, from
    /// `ip -d -j link show`.
    pub fn xdp_attached(&self, ns: &str, dev: &str) -> Result<bool> {
        let text = self.exec_ok(ns, &["ip", "-d", "-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing ip -j output {text:?}"))?;
        let link = v
            .get(0)
            .ok_or_else(|| anyhow!("no link {dev} in {ns}: {text}"))?;
        Ok(link.get("xdp").is_some_and(|x| {
            x.get("prog").is_some()
                || x.get("mode").and_then(|m| m.as_u64()).unwrap_or(0) != 0
                || x.get("attached")
                    .and_then(|a| a.as_array())
                    .is_some_and(|a| !a.is_empty())
        }))
    }

    /// Runs the srvgate binary once inside the gateway namespace (`srvgate check ...`, or a
    /// `run` expected to fail), bounded by `timeout`; output returned whatever the status.
    pub fn srvgate(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let bin = existing_srvgate_bin()?;
        let mut argv = vec![bin.as_str()];
        argv.extend_from_slice(args);
        let mut cmd = netns_command(&self.gw, &argv);
        cmd.env("RUST_LOG", "info");
        run_with_timeout(&mut cmd, timeout)
    }

    /// Runs an admin verb (`route add ...`, `status`, `down`, ...) of the srvgate binary in
    /// the gateway namespace with the lab's `--socket` appended, bounded by
    /// [`DEFAULT_TIMEOUT`]; output returned whatever the status.
    pub fn srvgate_ctl(&self, args: &[&str]) -> Result<Output> {
        let socket = self.socket_path().display().to_string();
        let mut argv = args.to_vec();
        argv.extend(["--socket", socket.as_str()]);
        self.srvgate(&argv, DEFAULT_TIMEOUT)
    }

    /// Like [`Lab::srvgate_ctl`] but requires success and returns stdout.
    pub fn srvgate_ctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.srvgate_ctl(args)?;
        expect_success(&format!("srvgate {}", args.join(" ")), &out)
    }

    /// Starts `srvgate run --config CONFIG` with the lab's `--state-dir`, `--pin-dir` and
    /// `--socket`, then `EXTRA...`, in the gateway namespace with `RUST_LOG=info`, its output
    /// in a log file; waits up to [`SRVGATE_READY_TIMEOUT`] for its `ready` line. If it exits
    /// first (or never gets ready) the error carries its log. Returns its pid. Starting it
    /// again after a stop or kill is a restart: same state, same pins.
    pub fn start_srvgate(&self, config: &Path, extra_args: &[&str]) -> Result<u32> {
        let pid = self.spawn_srvgate(config, extra_args, &[], &[])?;
        self.wait_srvgate_ready(pid)?;
        Ok(pid)
    }

    /// Like [`Lab::start_srvgate`] but returns at once, without waiting for it to be ready:
    /// `srvgate run ...` as above, run as `WRAPPER... srvgate run ...` (e.g. `setpriv` with
    /// fewer capabilities) with the extra environment `env`. Tracked as the lab's srvgate.
    pub fn spawn_srvgate(
        &self,
        config: &Path,
        extra_args: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Result<u32> {
        let bin = existing_srvgate_bin()?;
        let log = self.dir().join(format!("srvgate-{}.log", self.next_id()));
        let cfg = config.display().to_string();
        let (state, pins, socket) = (
            self.state_dir().display().to_string(),
            self.pin_dir().display().to_string(),
            self.socket_path().display().to_string(),
        );
        let mut argv = wrapper.to_vec();
        argv.extend([
            bin.as_str(),
            "run",
            "--config",
            &cfg,
            "--state-dir",
            &state,
            "--pin-dir",
            &pins,
            "--socket",
            &socket,
        ]);
        argv.extend_from_slice(extra_args);
        let mut envs = vec![("RUST_LOG", "info")];
        envs.extend_from_slice(env);
        let pid = self.spawn_logged(&self.gw, &argv, &envs, &log)?;
        *lock(&self.srvgate) = Some((pid, log));
        Ok(pid)
    }

    /// Waits up to [`SRVGATE_READY_TIMEOUT`] for the `ready` line of the srvgate `pid`
    /// started by [`Lab::spawn_srvgate`]; an error with its log if it exits first.
    pub fn wait_srvgate_ready(&self, pid: u32) -> Result<()> {
        let log = self
            .log_path(pid)
            .ok_or_else(|| anyhow!("pid {pid} is not a process of this lab"))?;
        let deadline = Instant::now() + SRVGATE_READY_TIMEOUT;
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if log_says_ready(&text) {
                return Ok(());
            }
            if child_exited(pid) {
                let status = self.stop(pid, Duration::ZERO)?;
                bail!(
                    "srvgate exited ({status}) before it was ready; its log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!("srvgate not ready after {SRVGATE_READY_TIMEOUT:?}; its log:\n{text}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pid of the srvgate started by [`Lab::start_srvgate`], while it is tracked.
    pub fn srvgate_pid(&self) -> Option<u32> {
        let pid = lock(&self.srvgate).as_ref().map(|(p, _)| *p)?;
        self.pids().contains(&pid).then_some(pid)
    }

    /// The log (stdout and stderr) of the latest srvgate started by [`Lab::start_srvgate`];
    /// empty if none was started.
    pub fn srvgate_log(&self) -> String {
        lock(&self.srvgate)
            .as_ref()
            .and_then(|(_, log)| fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    /// Sends SIGTERM to the running srvgate and waits (up to 10 s, then SIGKILL) for it to
    /// exit; returns its exit status.
    pub fn stop_srvgate(&self) -> Result<ExitStatus> {
        let pid = self
            .srvgate_pid()
            .ok_or_else(|| anyhow!("no srvgate is running in this lab"))?;
        self.stop(pid, Duration::from_secs(10))
    }

    /// Kills the running srvgate with SIGKILL (a crash: no cleanup of its own) and reaps it.
    pub fn kill_srvgate(&self) -> Result<ExitStatus> {
        let pid = self
            .srvgate_pid()
            .ok_or_else(|| anyhow!("no srvgate is running in this lab"))?;
        signal_pid(pid, libc::SIGKILL);
        self.stop(pid, Duration::from_secs(5))
    }

    /// `dig @PUBLIC_IP TYPE NAME` from the client namespace, one try: the status
    /// (`NOERROR`, `NXDOMAIN`, ...) and the answer section's records, one per line with
    /// single spaces.
    pub fn dig(&self, rtype: &str, name: &str) -> (String, Vec<String>) {
        let server = format!("@{PUBLIC_IP}");
        let out = self
            .exec_ok(
                &self.client,
                &[
                    "dig",
                    &server,
                    "+norecurse",
                    "+time=2",
                    "+tries=1",
                    "+nocmd",
                    "+nostats",
                    rtype,
                    name,
                ],
            )
            .expect("dig");
        let status = out
            .lines()
            .find_map(|l| l.split("status: ").nth(1))
            .and_then(|s| s.split(',').next())
            .unwrap_or_default()
            .to_string();
        let mut answers = Vec::new();
        let mut in_answer = false;
        for line in out.lines() {
            if line.starts_with(";; ANSWER SECTION") {
                in_answer = true;
            } else if line.trim().is_empty() {
                in_answer = false;
            } else if in_answer {
                answers.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        (status, answers)
    }

    /// `GET http://127.0.0.1:9110/metrics` from inside the gateway namespace (curl, 3 s).
    pub fn metrics(&self) -> Result<String> {
        let url = format!("http://{METRICS_ADDR}/metrics");
        self.exec_ok(&self.gw, &["curl", "-fsS", "--max-time", "3", &url])
    }

    /// One metric value from a fresh scrape ([`metric_value`]); an error if absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let text = self.metrics()?;
        metric_value(&text, name, labels)
            .ok_or_else(|| anyhow!("no sample {name}{labels:?} in /metrics:\n{text}"))
    }

    fn print_diagnostics(&self) {
        let log = self.srvgate_log();
        if !log.is_empty() {
            note(format_args!(
                "----- lab {}: srvgate log -----\n{log}----- end of srvgate log -----",
                self.tag
            ));
        }
        let srvgate_log = lock(&self.srvgate).as_ref().map(|(_, log)| log.clone());
        for t in lock(&self.procs).iter() {
            if Some(&t.log) == srvgate_log.as_ref() {
                continue;
            }
            let text = fs::read_to_string(&t.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            if !tail.is_empty() {
                note(format_args!(
                    "----- lab {}: {} (last lines) -----",
                    self.tag, t.what
                ));
                for l in tail.iter().rev() {
                    note(format_args!("{l}"));
                }
            }
        }
    }
}

/// Fails the calling test at once, with the build command, when the srvgate binary the
/// lab would start is missing.
/// Polls `f` every 200 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what}: not true after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

pub fn require_srvgate_bin() {
    if let Err(e) = existing_srvgate_bin() {
        panic!("{e}");
    }
}

fn existing_srvgate_bin() -> Result<String> {
    let bin = srvgate_bin();
    ensure!(
        bin.is_file(),
        "srvgate binary not found at {}: build it with `cargo build --release -p lb-userspace` \
         or set SRVGATE_BIN",
        bin.display()
    );
    Ok(bin.display().to_string())
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            self.print_diagnostics();
        }
        let procs = std::mem::take(&mut *lock(&self.procs));
        // TERM every group first, so they all shut down in parallel.
        for t in &procs {
            if !child_exited(t.child.id()) {
                signal_group(t.child.id(), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for mut t in procs {
            let pid = t.child.id();
            wait_exit(pid, deadline.saturating_duration_since(Instant::now()));
            // Leader unreaped: the group id is still ours.
            signal_group(pid, libc::SIGKILL);
            if let Err(e) = t.child.wait() {
                note(format_args!("lab cleanup: waiting for {}: {e}", t.what));
            }
        }
        for ns in self.created.iter().rev() {
            delete_netns(ns);
        }
        // Frees every map and link srvgate left pinned; the temp dir goes with `self.dir`.
        unmount_bpffs(&self.dir().join(BPFFS_DIR));
        // Only now: a signal during this drop still has the watcher remove the lab.
        lock(&LIVE_LABS).retain(|l| l.id != self.live_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_samples() {
        let text = "# HELP x y\n# TYPE srvgate_route_packets_total counter\n\
            srvgate_route_packets_total{name=\"alice\",service=\"ssh\",protocol=\"tcp\",port=\"30001\",direction=\"inbound\"} 42\n\
            srvgate_route_packets_total{name=\"alice\",service=\"ssh\",protocol=\"tcp\",port=\"30001\",direction=\"outbound\"} 40\n\
            srvgate_routes 3\n\
            weird{a=\"x\\\"y,}\"} 1.5e3\n";
        assert_eq!(
            metric_value(
                text,
                "srvgate_route_packets_total",
                &[("name", "alice"), ("direction", "outbound")]
            ),
            Some(40.0)
        );
        assert_eq!(metric_value(text, "srvgate_routes", &[]), Some(3.0));
        assert_eq!(
            metric_value(text, "weird", &[("a", "x\"y,}")]),
            Some(1500.0)
        );
        assert_eq!(metric_sum(text, "srvgate_route_packets_total", &[]), 82.0);
        assert_eq!(metric_value(text, "srvgate_routes", &[("a", "b")]), None);
    }

    #[test]
    fn parses_snmp_counters() {
        let text = "Ip: Forwarding DefaultTTL InReceives ForwDatagrams\nIp: 1 64 100 7\n\
                    Udp: InDatagrams InCsumErrors\nUdp: 5 0\n\
                    TcpExt: SyncookiesSent ListenDrops\nTcpExt: 0 3\n";
        assert_eq!(parse_snmp(text, "IpForwDatagrams"), Some(7));
        assert_eq!(parse_snmp(text, "UdpInDatagrams"), Some(5));
        assert_eq!(parse_snmp(text, "TcpExtListenDrops"), Some(3));
        assert_eq!(parse_snmp(text, "IpNope"), None);
    }

    #[test]
    fn ready_is_a_word() {
        assert!(log_says_ready("2026 INFO srvgate ready routes=4"));
        assert!(!log_says_ready("another XDP program is already attached"));
    }

    #[test]
    fn config_has_routes() {
        let c = config_toml(&[RouteSpec::udp("alice", "iperf", "10.210.2.11:5201", 30003)]);
        assert!(c.contains("public_ipv4 = \"10.210.1.1\""));
        assert!(c.contains("protocol = \"udp\""));
        assert!(c.contains("port = 30003"));
    }

    #[test]
    fn runs_with_a_bound() {
        let t = Instant::now();
        let r = run_with_timeout(Command::new("sleep").arg("5"), Duration::from_millis(200));
        assert!(r.is_err());
        assert!(t.elapsed() < Duration::from_secs(3));
        let out = run_with_timeout(Command::new("echo").arg("hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    }
}
