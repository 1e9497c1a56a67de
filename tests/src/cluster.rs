//! The cluster lab: two gateways that share one table through a real etcd member.
//!
//! ```text
//!                      sg-TAG-sw: two bridges (the switches)
//!   sg-TAG-cli ───┐    brpub                       brpriv    ┌─── sg-TAG-b1 (backend)
//!   10.210.40.2   ├──  ─────┬──────────┬           ──┬────┬──┤    10.210.41.21
//!                 │         │          │             │    │  └─── sg-TAG-etcd
//!                 │   sg-TAG-gw1   sg-TAG-gw2        │    │       10.210.41.5:2379
//!                 │   pub0 .40.11  pub0 .40.12       │    │
//!                 │   priv1 .41.11 priv1 .41.12 ─────┘────┘
//! ```
//!
//! Both gateways serve the same public address, [`VIP`] (10.210.40.1), which neither holds
//! on an interface: which gateway carries a client's packets is chosen by the client's
//! host route to the VIP and the backend's default route ([`ClusterLab::use_gateway`]), as
//! keepalived would choose by moving the address. That both gateways forward any route the
//! same way, whichever of them it was claimed through, is what the shared table is for.
//!
//! etcd runs for real in its own namespace, its data directory in the lab's temp dir, so
//! stopping and starting it again keeps the table. It serves its clients over TLS and
//! demands a client certificate (`--client-cert-auth`), as the book's admin/cluster.md says
//! to run it: at lab start `openssl` makes a CA, etcd's server certificate (an IP SAN for
//! [`ETCD`]), a client certificate per gateway and one for the lab's `etcdctl`, and a
//! second CA that signed nothing etcd trusts ([`ClusterLab::pki`]). Each gateway has its own state
//! directory, pin directory (in one bpffs the lab mounts) and control socket.
//!
//! Cleanup is the main lab's (`Lab`): every process ended by pid, namespaces deleted, the
//! bpffs unmounted, on drop, on a panic and on SIGINT/SIGTERM/SIGHUP.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

use crate::{
    add_netns, check_tag, existing_srvgate_bin, expect_success, fresh_lab_dir, host, is_root, lock,
    log_says_ready, netns_command, register_lab, remove_lab, run_with_timeout, ssh_keygen,
    start_logged, stop_tracked, Tracked, BPFFS_DIR, DEFAULT_TIMEOUT, SRVGATE_READY_TIMEOUT,
};

/// The public address both gateways serve.
pub const VIP: &str = "10.210.40.1";
pub const CLIENT: &str = "10.210.40.2";
/// Each gateway's own addresses: public side, private side.
pub const GW_PUBLIC: [&str; 2] = ["10.210.40.11", "10.210.40.12"];
pub const GW_PRIVATE: [&str; 2] = ["10.210.41.11", "10.210.41.12"];
pub const BACKEND: &str = "10.210.41.21";
pub const ETCD: &str = "10.210.41.5";
pub const ETCD_URL: &str = "https://10.210.41.5:2379";
pub const ZONE: &str = "lab.example";
/// The private side's virtual address, the backend's default gateway once keepalived
/// moves the addresses ([`ClusterLab::route_through_vips`]).
pub const VIP_PRIVATE: &str = "10.210.41.1";

/// The two gateways and their shared store. See the module docs.
pub struct ClusterLab {
    tag: String,
    pub client: String,
    pub gws: [String; 2],
    pub backend: String,
    pub etcd_ns: String,
    switch: String,
    created: Vec<String>,
    dir: tempfile::TempDir,
    procs: Mutex<Vec<Tracked>>,
    etcd: Mutex<Option<u32>>,
    srvgate: Mutex<[Option<u32>; 2]>,
    live_id: u64,
}

impl ClusterLab {
    /// The opening of every cluster lab test, as [`crate::Lab::for_test`]: `None` (after
    /// saying why) when not root, a panic naming the build command when the srvgate binary
    /// is missing, else [`ClusterLab::new`]`(tag)`, whose failure fails the test.
    pub fn for_test(test: &str, tag: &str) -> Option<ClusterLab> {
        if crate::skip_unless_root(test) {
            return None;
        }
        crate::require_srvgate_bin();
        Some(ClusterLab::new(tag).expect("building the cluster lab"))
    }

    /// Builds the lab `sg-TAG-*` (stale namespaces and temp dirs of the tag removed first).
    pub fn new(tag: &str) -> Result<ClusterLab> {
        check_tag(tag, 6)?;
        ensure!(
            is_root(),
            "the cluster lab needs root (namespaces, bridges)"
        );
        let prefix = format!("sg-{tag}-");
        let dir = fresh_lab_dir(tag, &prefix, &format!("srvgate-cluster-{tag}-"))?;
        let names = ["sw", "cli", "gw1", "gw2", "b1", "etcd"];
        let live_id = register_lab(&prefix, &names, dir.path());
        let mut lab = ClusterLab {
            tag: tag.to_string(),
            client: format!("{prefix}cli"),
            gws: [format!("{prefix}gw1"), format!("{prefix}gw2")],
            backend: format!("{prefix}b1"),
            etcd_ns: format!("{prefix}etcd"),
            switch: format!("{prefix}sw"),
            created: Vec::new(),
            dir,
            procs: Mutex::new(Vec::new()),
            etcd: Mutex::new(None),
            srvgate: Mutex::new([None, None]),
            live_id,
        };
        lab.build()
            .with_context(|| format!("building cluster lab {tag}"))?;
        lab.make_pki().context("making the lab's certificates")?;
        let bpffs = lab.dir.path().join(BPFFS_DIR);
        fs::create_dir(&bpffs)?;
        host(&["mount", "-t", "bpf", "bpf", &bpffs.display().to_string()])?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch.clone();
        let all = [
            sw.clone(),
            self.client.clone(),
            self.gws[0].clone(),
            self.gws[1].clone(),
            self.backend.clone(),
            self.etcd_ns.clone(),
        ];
        for ns in &all {
            add_netns(ns)?;
            self.created.push(ns.clone());
        }
        for br in ["brpub", "brpriv"] {
            host(&["ip", "-n", &sw, "link", "add", br, "type", "bridge"])?;
            host(&["ip", "-n", &sw, "link", "set", br, "up"])?;
        }
        // (namespace, its device, switch port name, bridge, address)
        let legs = [
            (
                self.client.clone(),
                "eth0",
                "cli",
                "brpub",
                format!("{CLIENT}/24"),
            ),
            (
                self.gws[0].clone(),
                "pub0",
                "g1pub",
                "brpub",
                format!("{}/24", GW_PUBLIC[0]),
            ),
            (
                self.gws[1].clone(),
                "pub0",
                "g2pub",
                "brpub",
                format!("{}/24", GW_PUBLIC[1]),
            ),
            (
                self.gws[0].clone(),
                "priv1",
                "g1priv",
                "brpriv",
                format!("{}/24", GW_PRIVATE[0]),
            ),
            (
                self.gws[1].clone(),
                "priv1",
                "g2priv",
                "brpriv",
                format!("{}/24", GW_PRIVATE[1]),
            ),
            (
                self.backend.clone(),
                "eth0",
                "b1",
                "brpriv",
                format!("{BACKEND}/24"),
            ),
            (
                self.etcd_ns.clone(),
                "eth0",
                "etcd",
                "brpriv",
                format!("{ETCD}/24"),
            ),
        ];
        for (ns, dev, port, br, cidr) in &legs {
            host(&[
                "ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port,
                "netns", &sw,
            ])?;
            host(&["ip", "-n", &sw, "link", "set", port, "master", br])?;
            host(&["ip", "-n", &sw, "link", "set", port, "up"])?;
            host(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev])?;
            host(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        for gw in &self.gws {
            self.exec_ok(gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        for ns in [&self.client, &self.backend] {
            // Like a remote host on a wire: full checksums out, NAPI (GRO) in.
            self.exec_ok(ns, &["ethtool", "-K", "eth0", "tx", "off", "gro", "on"])?;
        }
        self.use_gateway(0)
    }

    /// Sends the client's packets for the VIP, and the backend's replies, through gateway
    /// `n` (0 or 1): what keepalived decides by moving the addresses.
    pub fn use_gateway(&self, n: usize) -> Result<()> {
        host(&[
            "ip",
            "-n",
            &self.client,
            "route",
            "replace",
            &format!("{VIP}/32"),
            "via",
            GW_PUBLIC[n],
        ])?;
        host(&[
            "ip",
            "-n",
            &self.backend,
            "route",
            "replace",
            "default",
            "via",
            GW_PRIVATE[n],
        ])?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `argv` in `ns` (bounded); requires success; returns stdout.
    pub fn exec_ok(&self, ns: &str, argv: &[&str]) -> Result<String> {
        let out = run_with_timeout(&mut netns_command(ns, argv), DEFAULT_TIMEOUT)?;
        expect_success(&format!("[{ns}] {}", argv.join(" ")), &out)
    }

    /// Starts `argv` in `ns`, tracked, output in a log named `name`; returns its pid.
    pub fn spawn(&self, ns: &str, name: &str, argv: &[&str], env: &[(&str, &str)]) -> Result<u32> {
        let log = self.dir().join(format!("{name}.log"));
        let t = start_logged(ns, argv, env, &log)?;
        let pid = t.child.id();
        lock(&self.procs).push(t);
        Ok(pid)
    }

    /// Stops the tracked process `pid` (SIGTERM, `grace`, SIGKILL).
    pub fn stop(&self, pid: u32, grace: Duration) -> Result<()> {
        stop_tracked(&self.procs, pid, grace).map(|_| ())
    }

    /// A file of the lab's PKI (`pki/NAME`): `ca.pem`, `etcd.pem`/`etcd-key.pem`,
    /// `gw1.pem`/`gw1-key.pem`, `gw2...`, `admin...` (the lab's etcdctl), and `other-ca.pem`
    /// with `rogue.pem`/`rogue-key.pem`, which it signed.
    pub fn pki(&self, name: &str) -> PathBuf {
        self.dir().join("pki").join(name)
    }

    /// Makes the lab's certificates with `openssl` (P-256 keys, valid two days).
    fn make_pki(&self) -> Result<()> {
        let dir = self.dir().join("pki");
        fs::create_dir(&dir)?;
        let p = |name: &str| dir.join(name).display().to_string();
        for (ca, cn) in [("ca", "srvgate lab CA"), ("other-ca", "another CA")] {
            host(&[
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &p(&format!("{ca}-key.pem")),
                "-out",
                &p(&format!("{ca}.pem")),
            ])?;
        }
        let leaves = [
            (
                "etcd",
                "ca",
                format!("subjectAltName=IP:{ETCD}\nextendedKeyUsage=serverAuth,clientAuth\n"),
            ),
            ("gw1", "ca", "extendedKeyUsage=clientAuth\n".to_string()),
            ("gw2", "ca", "extendedKeyUsage=clientAuth\n".to_string()),
            ("admin", "ca", "extendedKeyUsage=clientAuth\n".to_string()),
            (
                "rogue",
                "other-ca",
                "extendedKeyUsage=clientAuth\n".to_string(),
            ),
        ];
        for (name, ca, ext) in leaves {
            let ext_file = p(&format!("{name}.ext"));
            fs::write(&ext_file, ext)?;
            host(&[
                "openssl",
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &p(&format!("{name}-key.pem")),
                "-out",
                &p(&format!("{name}.csr")),
            ])?;
            host(&[
                "openssl",
                "x509",
                "-req",
                "-in",
                &p(&format!("{name}.csr")),
                "-CA",
                &p(&format!("{ca}.pem")),
                "-CAkey",
                &p(&format!("{ca}-key.pem")),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext_file,
                "-out",
                &p(&format!("{name}.pem")),
            ])?;
        }
        for e in fs::read_dir(&dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().ends_with("-key.pem") {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600))?;
            }
        }
        Ok(())
    }

    /// Starts (or starts again, same data directory) the etcd member and waits until it
    /// answers.
    pub fn start_etcd(&self) -> Result<()> {
        let data = self.dir().join("etcd-data");
        let data = data.display().to_string();
        let peer = format!("http://{ETCD}:2380");
        let pid = self.spawn(
            &self.etcd_ns,
            &format!("etcd-{}", self.next_log()),
            &[
                "etcd",
                "--name",
                "sg1",
                "--data-dir",
                &data,
                "--listen-client-urls",
                ETCD_URL,
                "--advertise-client-urls",
                ETCD_URL,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("sg1={peer}"),
                "--cert-file",
                &self.pki("etcd.pem").display().to_string(),
                "--key-file",
                &self.pki("etcd-key.pem").display().to_string(),
                "--trusted-ca-file",
                &self.pki("ca.pem").display().to_string(),
                "--client-cert-auth",
            ],
            &[],
        )?;
        *lock(&self.etcd) = Some(pid);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.etcdctl(&["endpoint", "health"]).is_ok() {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "etcd not healthy after 20 s");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the etcd member (SIGTERM, as an operator's `systemctl stop` would).
    pub fn stop_etcd(&self) -> Result<()> {
        let pid = lock(&self.etcd)
            .take()
            .ok_or_else(|| anyhow!("etcd is not running"))?;
        self.stop(pid, Duration::from_secs(5))
    }

    /// `etcdctl --endpoints ETCD ARGS...` from the etcd namespace, with the lab's admin
    /// client certificate; stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let out = self.etcdctl_as(Some("admin"), "ca.pem", args)?;
        expect_success(&format!("etcdctl {}", args.join(" ")), &out)
    }

    /// `etcdctl ARGS...` trusting `ca` (a [`ClusterLab::pki`] name), with client
    /// certificate `cert` (a name: `admin`, `gw1`, `rogue`, ...) or none; the output
    /// whatever the status. Without the admin's certificate it runs from the backend's
    /// namespace: a student's machine on the private network, which reaches etcd.
    pub fn etcdctl_as(&self, cert: Option<&str>, ca: &str, args: &[&str]) -> Result<Output> {
        let mut files = vec![("--cacert", ca.to_string())];
        if let Some(c) = cert {
            files.push(("--cert", format!("{c}.pem")));
            files.push(("--key", format!("{c}-key.pem")));
        }
        let files: Vec<String> = files
            .into_iter()
            .map(|(flag, f)| format!("{flag}={}", self.pki(&f).display()))
            .collect();
        let mut argv = vec!["etcdctl", "--endpoints", ETCD_URL, "--command-timeout=2s"];
        argv.extend(files.iter().map(String::as_str));
        argv.extend_from_slice(args);
        let ns = if cert == Some("admin") {
            &self.etcd_ns
        } else {
            &self.backend
        };
        let mut cmd = netns_command(ns, &argv);
        cmd.env("ETCDCTL_API", "3");
        run_with_timeout(&mut cmd, Duration::from_secs(5))
    }

    fn next_log(&self) -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    }

    /// Gateway `n`'s config: the VIP as the public address, DNS on its own public address,
    /// `[cluster]` with the lab's etcd.
    pub fn config(&self, n: usize) -> String {
        self.config_with(n, "")
    }

    /// [`ClusterLab::config`] with `gateway_extra` (lines) added to `[gateway]`.
    pub fn config_with(&self, n: usize, gateway_extra: &str) -> String {
        format!(
            r#"[gateway]
public_interface = "pub0"
private_interfaces = ["priv1"]
public_ipv4 = "{VIP}"
port_range = "30000-30999"
port_cooldown = "0s"
{gateway_extra}

[dns]
zone = "{ZONE}"
listen = ["{}:53"]
gateway_name = "gw"
ttl = 30

[dns.nameservers]
gw1 = "{}"
gw2 = "{}"

[cluster]
etcd = ["{ETCD_URL}"]
gateway_id = "gw{}"
ca = "{}"
cert = "{}"
key = "{}"
"#,
            GW_PUBLIC[n],
            GW_PUBLIC[0],
            GW_PUBLIC[1],
            n + 1,
            self.pki("ca.pem").display(),
            self.pki(&format!("gw{}.pem", n + 1)).display(),
            self.pki(&format!("gw{}-key.pem", n + 1)).display(),
        )
    }

    pub fn socket(&self, n: usize) -> PathBuf {
        self.dir().join(format!("gw{}.sock", n + 1))
    }

    /// Starts srvgate on gateway `n` with [`ClusterLab::config`] and waits for its ready
    /// line (an error with its log if it exits first).
    pub fn start_srvgate(&self, n: usize) -> Result<u32> {
        self.start_srvgate_with(n, &self.config(n))
    }

    /// [`ClusterLab::start_srvgate`] with the config file `config`.
    pub fn start_srvgate_with(&self, n: usize, config: &str) -> Result<u32> {
        self.start_srvgate_args(n, config, &[])
    }

    /// `srvgate run` for gateway `n` with the config file `config` (written) and `extra`
    /// arguments: the argv.
    pub fn srvgate_argv(&self, n: usize, config: &str, extra: &[&str]) -> Result<Vec<String>> {
        let bin = existing_srvgate_bin()?;
        let d = self.dir();
        let config_file = d.join(format!("gw{}.toml", n + 1));
        fs::write(&config_file, config)?;
        let state = d.join(format!("state{}", n + 1));
        let pins = d.join(BPFFS_DIR).join(format!("gw{}", n + 1));
        let mut argv: Vec<String> = vec![
            bin,
            "run".into(),
            "--config".into(),
            config_file.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--pin-dir".into(),
            pins.display().to_string(),
            "--socket".into(),
            self.socket(n).display().to_string(),
        ];
        argv.extend(extra.iter().map(|a| a.to_string()));
        Ok(argv)
    }

    /// [`ClusterLab::start_srvgate_with`] with `extra` arguments to `srvgate run`.
    pub fn start_srvgate_args(&self, n: usize, config: &str, extra: &[&str]) -> Result<u32> {
        let argv = self.srvgate_argv(n, config, extra)?;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let name = format!("srvgate-gw{}-{}", n + 1, self.next_log());
        let pid = self.spawn(&self.gws[n], &name, &argv, &[("RUST_LOG", "info")])?;
        lock(&self.srvgate)[n] = Some(pid);
        let log = self.dir().join(format!("{name}.log"));
        let deadline = Instant::now() + SRVGATE_READY_TIMEOUT;
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if log_says_ready(&text) {
                return Ok(pid);
            }
            if crate::child_exited(pid) {
                bail!(
                    "srvgate on gw{} exited before it was ready; its log:\n{text}",
                    n + 1
                );
            }
            ensure!(
                Instant::now() < deadline,
                "srvgate on gw{} not ready; its log:\n{text}",
                n + 1
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops srvgate on gateway `n` (SIGTERM; XDP stays attached and forwarding, as after
    /// any stop without `--detach-on-exit`).
    pub fn stop_srvgate(&self, n: usize) -> Result<()> {
        let pid = lock(&self.srvgate)[n]
            .take()
            .ok_or_else(|| anyhow!("srvgate on gw{} is not running", n + 1))?;
        self.stop(pid, Duration::from_secs(10))
    }

    /// Sends `signal` (a `kill` name: STOP, CONT, HUP) to the srvgate running on gateway
    /// `n`.
    pub fn signal_srvgate(&self, n: usize, signal: &str) -> Result<()> {
        let pid = lock(&self.srvgate)[n]
            .ok_or_else(|| anyhow!("srvgate on gw{} is not running", n + 1))?;
        host(&["kill", &format!("-{signal}"), &pid.to_string()])?;
        Ok(())
    }

    /// Kills srvgate on gateway `n` (SIGKILL: no shutdown at all, as in a crash). Its XDP
    /// links stay pinned and attached.
    pub fn kill_srvgate(&self, n: usize) -> Result<()> {
        let pid = lock(&self.srvgate)[n]
            .take()
            .ok_or_else(|| anyhow!("srvgate on gw{} is not running", n + 1))?;
        crate::signal_pid(pid, libc::SIGKILL);
        self.stop(pid, Duration::ZERO)
    }

    /// From here on the client reaches [`VIP`] on its own link (ARP decides which gateway
    /// carries it) and the backend's default gateway is [`VIP_PRIVATE`]: the addresses
    /// keepalived moves, instead of [`ClusterLab::use_gateway`]'s fixed routes.
    pub fn route_through_vips(&self) -> Result<()> {
        host(&[
            "ip",
            "-n",
            &self.client,
            "route",
            "del",
            &format!("{VIP}/32"),
        ])?;
        host(&[
            "ip",
            "-n",
            &self.backend,
            "route",
            "replace",
            "default",
            "via",
            VIP_PRIVATE,
        ])?;
        Ok(())
    }

    /// Starts keepalived on gateway `n` with the config text `config`, in the foreground
    /// (`--dont-fork`, VRRP only, logging to its log file), its pid files in the lab's dir.
    /// Returns the parent's pid; its VRRP child is in the same process group.
    pub fn start_keepalived(&self, n: usize, config: &str) -> Result<u32> {
        let d = self.dir();
        let name = format!("keepalived-gw{}", n + 1);
        let file = d.join(format!("{name}.conf"));
        fs::write(&file, config)?;
        let path = |ext: &str| d.join(format!("{name}.{ext}")).display().to_string();
        let (file, pid, vrrp) = (file.display().to_string(), path("pid"), path("vrrp.pid"));
        self.spawn(
            &self.gws[n],
            &format!("{name}-{}", self.next_log()),
            &[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--vrrp",
                "--dont-respawn",
                "--use-file",
                &file,
                "--pid",
                &pid,
                "--vrrp_pid",
                &vrrp,
            ],
            &[],
        )
    }

    /// Waits up to `timeout` for the tracked process `pid` to exit by itself; its exit
    /// status (the process is then no longer tracked). An error if it is still running.
    pub fn wait_exit(&self, pid: u32, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut procs = lock(&self.procs);
                let i = procs
                    .iter()
                    .position(|t| t.child.id() == pid)
                    .ok_or_else(|| anyhow!("pid {pid} is not a process of this lab"))?;
                if let Some(status) = procs[i].child.try_wait()? {
                    procs.remove(i);
                    return Ok(status);
                }
            }
            ensure!(
                Instant::now() < deadline,
                "pid {pid} still running after {timeout:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The output (log file) of the tracked process `pid` so far; empty if unknown.
    pub fn output_of(&self, pid: u32) -> String {
        self.log_of(pid)
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The log file of the tracked process `pid`.
    pub fn log_of(&self, pid: u32) -> Option<PathBuf> {
        lock(&self.procs)
            .iter()
            .find(|t| t.child.id() == pid)
            .map(|t| t.log.clone())
    }

    /// Whether gateway `n` holds `addr` on `dev` now.
    pub fn holds(&self, n: usize, dev: &str, addr: &str) -> Result<bool> {
        let out = self.exec_ok(
            &self.gws[n],
            &["ip", "-4", "-o", "addr", "show", "dev", dev],
        )?;
        Ok(out
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(addr)))
    }

    /// Takes gateway `n` off both switches, as pulling its cables would: its switch ports
    /// go down (its own legs lose carrier).
    pub fn unplug(&self, n: usize) -> Result<()> {
        for port in [format!("g{}pub", n + 1), format!("g{}priv", n + 1)] {
            host(&["ip", "-n", &self.switch, "link", "set", &port, "down"])?;
        }
        Ok(())
    }

    /// Makes both switches forget every address at once and for good (FDB ageing 0): every
    /// frame goes to every port, as a switch sends them while it learns. A gateway then
    /// sees the other one's traffic too.
    pub fn flood(&self) -> Result<()> {
        for br in ["brpub", "brpriv"] {
            host(&[
                "ip",
                "-n",
                &self.switch,
                "link",
                "set",
                br,
                "type",
                "bridge",
                "ageing_time",
                "0",
            ])?;
        }
        Ok(())
    }

    /// Starts sshd on the backend at `BACKEND:port`, accepting the lab's client key
    /// ([`ClusterLab::ssh_argv`]) for root; waits (bounded) until it listens.
    pub fn start_sshd(&self, port: u16) -> Result<u32> {
        let d = self.dir();
        let (client_key, host_key) = (d.join("id_ed25519"), d.join("ssh_host_ed25519_key"));
        for (path, comment) in [(&client_key, "sg-client"), (&host_key, "sg-host")] {
            if !path.exists() {
                ssh_keygen(path, comment)?;
            }
        }
        let authorized = d.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized)?;
        let cfg = d.join(format!("sshd-{port}.conf"));
        fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress {BACKEND}\nAddressFamily inet\nHostKey {}\n\
                 AuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nUseDNS no\nPidFile {}/sshd-{port}.pid\n",
                host_key.display(),
                authorized.display(),
                d.display()
            ),
        )?;
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd")?;
        let cfg = cfg.display().to_string();
        let pid = self.spawn(
            &self.backend,
            &format!("sshd-{port}"),
            // sshd re-executes itself, so it needs its absolute path.
            &["sh", "-c", r#"exec /usr/sbin/sshd -D -e -f "$0""#, &cfg],
            &[],
        )?;
        self.wait_port(&self.backend, BACKEND, port)?;
        Ok(pid)
    }

    /// Waits (up to 10 s) until something listens on TCP `addr:port` in `ns`.
    pub fn wait_port(&self, ns: &str, addr: &str, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{port}");
        loop {
            let out = self.exec_ok(ns, &["ss", "-Hltn", &filter])?;
            if out.contains(&format!("{addr}:{port}")) || out.contains(&format!("*:{port}")) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "nothing listens on {addr}:{port} in {ns} after 10 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ssh` to `root@host -p port` running `cmd`, with the key [`ClusterLab::start_sshd`]
    /// made: no prompts, no known_hosts, bounded connect.
    pub fn ssh_argv(&self, host: &str, port: u16, cmd: &str) -> Vec<String> {
        let key = self.dir().join("id_ed25519").display().to_string();
        let mut v: Vec<String> = ["ssh", "-F", "none", "-i", &key]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for o in [
            "IdentitiesOnly=yes",
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "ConnectTimeout=5",
            "LogLevel=ERROR",
        ] {
            v.extend(["-o".to_string(), o.to_string()]);
        }
        v.extend([
            "-p".into(),
            port.to_string(),
            format!("root@{host}"),
            cmd.into(),
        ]);
        v
    }

    /// Runs an admin verb against gateway `n`'s control socket; the output whatever the
    /// status.
    pub fn ctl(&self, n: usize, args: &[&str]) -> Result<Output> {
        let bin = existing_srvgate_bin()?;
        let socket = self.socket(n).display().to_string();
        let mut argv = vec![bin.as_str()];
        argv.extend_from_slice(args);
        argv.extend(["--socket", socket.as_str()]);
        run_with_timeout(&mut netns_command(&self.gws[n], &argv), DEFAULT_TIMEOUT)
    }

    pub fn ctl_ok(&self, n: usize, args: &[&str]) -> Result<String> {
        let out = self.ctl(n, args)?;
        expect_success(&format!("gw{}: srvgate {}", n + 1, args.join(" ")), &out)
    }

    /// `route add NAME --service SERVICE --backend BACKEND --json` through gateway `n`:
    /// the port the route got, or the command's output when it failed.
    pub fn try_claim(
        &self,
        n: usize,
        name: &str,
        service: &str,
        backend: &str,
    ) -> Result<u16, Output> {
        let args = [
            "route",
            "add",
            name,
            "--service",
            service,
            "--backend",
            backend,
            "--json",
        ];
        let out = self.ctl(n, &args).unwrap();
        if !out.status.success() {
            return Err(out);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        Ok(v["port"].as_u64().expect("a port in the reply") as u16)
    }

    /// [`ClusterLab::try_claim`], which must succeed.
    pub fn claim(&self, n: usize, name: &str, service: &str, backend: &str) -> u16 {
        self.try_claim(n, name, service, backend)
            .unwrap_or_else(|out| {
                panic!(
                    "gw{}: route add {name} failed: {}",
                    n + 1,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// `dig +short` from the client at gateway `n`'s DNS server.
    pub fn dig(&self, n: usize, rtype: &str, name: &str) -> Result<String> {
        let server = format!("@{}", GW_PUBLIC[n]);
        self.exec_ok(
            &self.client,
            &["dig", "+short", "+time=1", "+tries=1", &server, rtype, name],
        )
        .map(|s| s.trim().to_string())
    }

    /// The log of the srvgate running on gateway `n` so far.
    pub fn srvgate_log(&self, n: usize) -> String {
        let Some(pid) = lock(&self.srvgate)[n] else {
            return String::new();
        };
        lock(&self.procs)
            .iter()
            .find(|t| t.child.id() == pid)
            .and_then(|t| fs::read_to_string(&t.log).ok())
            .unwrap_or_default()
    }

    /// The log of every srvgate and etcd this lab started, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for t in lock(&self.procs).iter() {
            let text = fs::read_to_string(&t.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out += &format!("----- {} -----\n", t.what);
            for l in tail.iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        if thread::panicking() {
            crate::note(format_args!("{}", self.logs()));
        }
        remove_lab(&self.procs, &self.created, self.dir.path(), self.live_id);
    }
}
