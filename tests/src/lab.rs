//! The lab itself: its namespaces, veths and processes (srvgate, sshd, web servers, ...),
//! what a test asks of them, and their removal on drop.
//!
//! [`Lab::for_test`] is every lab test's opening (skip unless root, require the binary, build
//! the lab); [`Lab::add_far_host`] puts a host behind the client, which becomes a router, over
//! a narrower hop. The process tracking and cleanup here (`start_logged`, `stop_tracked`,
//! `fresh_lab_dir`, `register_lab`, `remove_lab`) are shared with `cluster.rs`.

use std::{
    fs, io,
    os::unix::{fs::DirBuilderExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

use crate::*;

pub(crate) fn has_word(text: &str, word: &str) -> bool {
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

pub(crate) struct Tracked {
    pub(crate) child: Child,
    pub(crate) what: String,
    pub(crate) log: PathBuf,
}
/// Starts the long-running `argv` in `ns` with `env`, its output in `log`, in its own
/// process group and with `PR_SET_PDEATHSIG = SIGKILL` (it dies if the *thread* that
/// spawned it ends, so call this from the thread that owns the lab).
pub(crate) fn start_logged(
    ns: &str,
    argv: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Tracked> {
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
    Ok(Tracked {
        child,
        what: format!("[{ns}] {}", argv.join(" ")),
        log: log.to_path_buf(),
    })
}

/// Puts a lab (namespaces `prefix` + each of `names`, temp dir `dir`) on the signal
/// watcher's list, starting the watcher if needed; returns its id there.
pub(crate) fn register_lab(prefix: &str, names: &[&str], dir: &Path) -> u64 {
    watch_stop_signals();
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lock(&LIVE_LABS).push(LiveLab {
        id,
        namespaces: names.iter().map(|n| format!("{prefix}{n}")).collect(),
        dir: dir.to_path_buf(),
    });
    id
}

/// A lab's tag: 1 to `max` characters of `a-z0-9` (it goes into namespace names, which
/// `ip` limits in length).
pub(crate) fn check_tag(tag: &str, max: usize) -> Result<()> {
    ensure!(
        !tag.is_empty()
            && tag.len() <= max
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "lab tag {tag:?}: use 1-{max} characters of a-z0-9"
    );
    Ok(())
}

/// Creates namespace `ns` with IPv6 off (before any veth exists, so none ever gets an IPv6
/// address) and its loopback up.
pub(crate) fn add_netns(ns: &str) -> Result<()> {
    host(&["ip", "netns", "add", ns])?;
    let sysctl = [
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ];
    let out = run_with_timeout(&mut netns_command(ns, &sysctl), DEFAULT_TIMEOUT)?;
    expect_success(&format!("[{ns}] {}", sysctl.join(" ")), &out)?;
    host(&["ip", "-n", ns, "link", "set", "dev", "lo", "up"])?;
    Ok(())
}

/// Removes what a killed run of lab `tag` left behind (namespaces named `ns_prefix*`, temp
/// dirs named `dir_prefix*`) and makes the new lab's temp dir.
pub(crate) fn fresh_lab_dir(
    tag: &str,
    ns_prefix: &str,
    dir_prefix: &str,
) -> Result<tempfile::TempDir> {
    for stale in namespaces_with_prefix(ns_prefix) {
        note(format_args!("lab {tag}: removing stale namespace {stale}"));
        delete_netns(&stale);
    }
    // And the temp dirs of labs with this tag that were never dropped (killed runs).
    for e in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(dir_prefix) {
            // Unmount first: removing files inside a live bpffs would only unpin them.
            unmount_bpffs(&e.path().join(BPFFS_DIR));
            let _ = fs::remove_dir_all(e.path());
        }
    }
    tempfile::Builder::new()
        .prefix(dir_prefix)
        .tempdir()
        .context("creating the lab's temp dir")
}

/// Removes a lab: its processes (see [`end_all`]), its namespaces in reverse order of
/// creation, its bpffs (freeing whatever srvgate left pinned; the temp dir goes with its
/// `TempDir`). Whoever takes the lab's entry out of the signal watcher's list owns its
/// removal: if the watcher got there first (a Ctrl-C), this only waits for it to end the
/// process; otherwise the watcher waits for this (see [`REMOVING`]).
pub(crate) fn remove_lab(
    procs: &Mutex<Vec<Tracked>>,
    created: &[String],
    dir: &Path,
    live_id: u64,
) {
    let owner = {
        let mut live = lock(&LIVE_LABS);
        let before = live.len();
        live.retain(|l| l.id != live_id);
        let owner = live.len() < before;
        if owner {
            REMOVING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        owner
    };
    if !owner {
        // The watcher is removing it and then exits the process; returning now would let
        // the process end under it, half done.
        let deadline = Instant::now() + REMOVAL_WAIT;
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        return;
    }
    end_all(std::mem::take(&mut *lock(procs)));
    for ns in created.iter().rev() {
        delete_netns(ns);
    }
    unmount_bpffs(&dir.join(BPFFS_DIR));
    REMOVING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

/// Stops the tracked process `pid`: SIGTERM, up to `grace` to exit, then SIGKILL to its
/// process group; reaps it.
pub(crate) fn stop_tracked(
    procs: &Mutex<Vec<Tracked>>,
    pid: u32,
    grace: Duration,
) -> Result<ExitStatus> {
    let mut t = {
        let mut procs = lock(procs);
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

/// Ends every process of `procs`: SIGTERM to every group first (they shut down in
/// parallel), up to 3 s in all, then SIGKILL; reaps them. Never fails: cleanup goes on.
pub(crate) fn end_all(procs: Vec<Tracked>) {
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
}

#[derive(Clone)]
pub(crate) struct SshKeys {
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
    /// The opening of every lab test that starts srvgate: `None` (after saying why) when
    /// this process is not root, a panic naming the build command when the srvgate binary
    /// is missing, else [`Lab::new`]`(tag)`, whose failure fails the test.
    pub fn for_test(test: &str, tag: &str) -> Option<Lab> {
        if skip_unless_root(test) {
            return None;
        }
        require_srvgate_bin();
        Some(Lab::new(tag).expect("building the lab"))
    }

    /// Builds the lab with namespaces `sg-TAG-{cli,gw,b1,b2}` after removing any stale
    /// `sg-TAG-*` namespace (and the processes in it) and `$TMPDIR/srvgate-lab-TAG-*` temp
    /// dir left by an earlier run that was killed. `tag` is 1-8 characters of `a-z0-9`.
    /// Needs root.
    pub fn new(tag: &str) -> Result<Lab> {
        check_tag(tag, 8)?;
        ensure!(is_root(), "the lab needs root (network namespaces, veths)");
        let prefix = format!("sg-{tag}-");
        let dir = fresh_lab_dir(tag, &prefix, &format!("srvgate-lab-{tag}-"))?;
        // Registered before anything exists, so a signal during the build removes it too.
        let live_id = register_lab(&prefix, &["cli", "gw", "b1", "b2"], dir.path());
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
            add_netns(ns)?;
            self.created.push(ns.clone());
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
            // And a queue in front of its NIC. A veth has none (noqueue): a host whose
            // segments find the far end's 256-frame ring full drops them itself, as no
            // host on a wire does (its qdisc waits for the NIC). With an XDP program on
            // the gateway's leg, which slows that ring's consumer, 4 TCP streams lost
            // 8-19 % of their segments that way (measured: the client's eth0 TX drops
            // equalled iperf3's retransmits; nothing dropped at the gateway).
            self.exec_ok(
                ns,
                &[
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    "pfifo_fast",
                ],
            )?;
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
        let t = start_logged(ns, argv, env, log)?;
        let pid = t.child.id();
        lock(&self.procs).push(t);
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
        stop_tracked(&self.procs, pid, grace)
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
            ssh_keygen(path, comment)?;
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
        self.wait_bound(ns, pid, "-Hltn", port, timeout)
    }

    /// Waits until a UDP socket is bound to `port` in `ns` (seen with `ss`), failing early
    /// with the log if the lab's process `pid` exits first: a receiver is ready before the
    /// test sends to it, however slowly its interpreter starts.
    pub fn wait_udp_bound(&self, ns: &str, pid: u32, port: u16, timeout: Duration) -> Result<()> {
        self.wait_bound(ns, pid, "-Hlun", port, timeout)
    }

    /// [`Lab::wait_listening`] and [`Lab::wait_udp_bound`]: `ss_flags` picks the protocol.
    fn wait_bound(
        &self,
        ns: &str,
        pid: u32,
        ss_flags: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let filter = format!("sport = :{port}");
        loop {
            let out = self.exec(ns, &["ss", ss_flags, &filter], Duration::from_secs(5))?;
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
    /// Writes `srvgate.toml` with `routes` ([`config_toml`]) and starts srvgate on it,
    /// as most labs begin.
    pub fn start_with_routes(&self, routes: &[RouteSpec]) -> Result<u32> {
        let config = self.write_file("srvgate.toml", &config_toml(routes))?;
        self.start_srvgate(&config, &[])
    }

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

/// Fails the calling test at once, with the build command, when the srvgate binary the
/// lab would start is missing.
pub fn require_srvgate_bin() {
    if let Err(e) = existing_srvgate_bin() {
        panic!("{e}");
    }
}

pub(crate) fn existing_srvgate_bin() -> Result<String> {
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
        remove_lab(&self.procs, &self.created, self.dir.path(), self.live_id);
    }
}
