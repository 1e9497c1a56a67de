//! The Debian package under a booted systemd: a Debian bookworm root made by mmdebstrap
//! (cached under `target/booted/`), booted with `systemd-nspawn -b` (systemd as PID 1)
//! inside the lab's gateway namespace, so the unit runs on the lab's legs. The package is
//! installed with apt; the test drives `systemctl` in the container (through `nsenter`)
//! and checks from the lab's client and backends what the unit promises: `start` returns
//! only once XDP and DNS are up, `reload` applies a route change, a SIGKILL is followed by
//! a restart that kept forwarding and every route, the watchdog is fed (and a stuck daemon
//! is restarted by it), `stop` leaves XDP forwarding, `srvgate down` leaves nothing
//! attached. What this machine kind needs for it, and where it stops today (the daemon
//! cannot create its maps in the container, so the test is ignored), is in
//! docs/book/src/internals/systemd.md.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use srvgate_tests::*;

const TEST: &str = "the_package_runs_under_a_booted_systemd";
/// What the root holds besides minbase: systemd as init, and the package's dependencies
/// (dpkg-shlibdeps: libc6, libgcc-s1), so that apt installs it offline.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2,procps,libgcc-s1";
/// Bumped when INCLUDE changes, so that a stale cached root is not reused.
const ROOT_TAR: &str = "target/booted/bookworm-1.tar";

/// The package `cargo xtask dist` built (where `cargo xtask test` says, as for package.rs).
fn deb() -> Option<PathBuf> {
    let dir = std::env::var_os("SRVGATE_DIST_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/dist"));
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The cached root, made once (a few minutes, from deb.debian.org).
fn root_tar() -> PathBuf {
    let tar = workspace_root().join(ROOT_TAR);
    if !tar.exists() {
        fs::create_dir_all(tar.parent().unwrap()).unwrap();
        let tmp = tar.with_extension("tmp");
        let out = run_with_timeout(
            Command::new("mmdebstrap").args([
                "--variant=minbase",
                &format!("--include={INCLUDE}"),
                "bookworm",
                &tmp.display().to_string(),
                "http://deb.debian.org/debian",
            ]),
            Duration::from_secs(900),
        )
        .unwrap();
        expect_success("mmdebstrap", &out).unwrap();
        fs::rename(&tmp, &tar).unwrap();
    }
    tar
}

/// The booted container; powered off (then killed) when dropped.
struct Container {
    nspawn: Child,
    leader: u32,
}

impl Container {
    fn boot(root: &Path, netns: &str, bpffs: &Path, log: &Path) -> Container {
        let log = fs::File::create(log).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "-q",
                "-D",
                &root.display().to_string(),
                "-b",
                // PID 1 here is not systemd: no machined to register with, no scope to
                // ask for (both need the system bus).
                "--register=no",
                "--keep-unit",
                &format!("--network-namespace-path=/run/netns/{netns}"),
                // The unit narrows these itself; nspawn's default set has no CAP_BPF.
                "--capability=all",
                // No bpffs is mounted in a container: the lab's, where the pins outlive
                // the daemon as under a real boot.
                &format!("--bind={}:/sys/fs/bpf", bpffs.display()),
            ])
            // nspawn makes /proc/sys read-only unless it made the network namespace
            // itself; the daemon sets net.ipv4 sysctls, as it may under a real boot.
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = nspawn.id();
        let mut c = Container { nspawn, leader: 0 };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.leader == 0 {
            assert!(
                Instant::now() < deadline,
                "no systemd under systemd-nspawn {pid}"
            );
            c.leader = find_systemd(pid).unwrap_or(0);
            thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// `sh -c SCRIPT` inside the container (all its namespaces).
    fn sh(&self, script: &str) -> std::process::Output {
        let leader = self.leader.to_string();
        run_with_timeout(
            Command::new("nsenter").args([
                "-t", &leader, "-m", "-u", "-i", "-n", "-p", "--", "sh", "-c", script,
            ]),
            Duration::from_secs(90),
        )
        .unwrap()
    }

    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        expect_success(script, &out).unwrap().trim().to_string()
    }

    fn show(&self, property: &str) -> String {
        self.ok(&format!("systemctl show -P {property} srvgate"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // nspawn turns SIGTERM into a clean poweroff of the container.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The container's PID 1 (on the host): the descendant of nspawn named systemd.
fn find_systemd(nspawn: u32) -> Option<u32> {
    let mut todo = vec![nspawn];
    while let Some(pid) = todo.pop() {
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            if fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "systemd") {
                return Some(c);
            }
            todo.push(c);
        }
    }
    None
}

/// The version `repack_newer` gives the package.
fn newer_version(deb: &Path) -> String {
    let out = run_with_timeout(
        Command::new("dpkg-deb").args(["-f", &deb.display().to_string(), "Version"]),
        DEFAULT_TIMEOUT,
    )
    .unwrap();
    format!("{}+1", expect_success("dpkg-deb -f", &out).unwrap().trim())
}

/// `deb` rebuilt with a higher version: an upgrade for dpkg, the same files.
fn repack_newer(deb: &Path, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    let d = |p: &Path| p.display().to_string();
    let out = run_with_timeout(
        Command::new("dpkg-deb").args(["-R", &d(deb), &d(&tree)]),
        DEFAULT_TIMEOUT,
    )
    .unwrap();
    expect_success("dpkg-deb -R", &out).unwrap();
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control).unwrap();
    let version = newer_version(deb);
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version:") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&control, text).unwrap();
    let newer = dir.join("srvgate-newer.deb");
    let out = run_with_timeout(
        Command::new("dpkg-deb").args(["--root-owner-group", "-b", &d(&tree), &d(&newer)]),
        Duration::from_secs(120),
    )
    .unwrap();
    expect_success("dpkg-deb -b", &out).unwrap();
    newer
}

fn config(routes: &[RouteSpec]) -> String {
    // The pins where the unit's sandbox leaves /sys/fs/bpf writable: the default.
    config_toml(routes)
}

fn route(name: &str, backend: &str, port: u16) -> RouteSpec {
    RouteSpec::tcp(name, "ssh", backend, port)
}

#[test]
#[ignore = "under the unit's sandbox in the booted container the daemon cannot create its BPF maps (`failed to create map`), while the same binary outside the unit there can; see docs/book/src/internals/systemd.md: run with --ignored to retry"]
fn the_package_runs_under_a_booted_systemd() {
    if skip_unless_root(TEST) {
        return;
    }
    for program in ["systemd-nspawn", "mmdebstrap", "nsenter"] {
        if !on_path(program) {
            return skip(
                TEST,
                &format!("{program} is not installed (cargo xtask setup)"),
            );
        }
    }
    let Some(deb) = deb() else {
        return skip(
            TEST,
            "no package in target/dist: build it with `cargo xtask dist`",
        );
    };
    let tar = root_tar();
    let Some(lab) = Lab::for_test(TEST, "boot") else {
        return;
    };
    let root = lab.dir().join("root");
    fs::create_dir(&root).unwrap();
    let out = run_with_timeout(
        Command::new("tar").args([
            "-xf",
            &tar.display().to_string(),
            "-C",
            &root.display().to_string(),
        ]),
        Duration::from_secs(300),
    )
    .unwrap();
    expect_success("unpacking the root", &out).unwrap();
    fs::copy(&deb, root.join("root/srvgate.deb")).unwrap();

    // apt, offline: the root already holds the package's dependencies.
    let out = run_with_timeout(
        Command::new("systemd-nspawn").args([
            "-q",
            "-D",
            &root.display().to_string(),
            "--register=no",
            "--keep-unit",
            "--private-network",
            "apt-get",
            "install",
            "-y",
            "/root/srvgate.deb",
        ]),
        Duration::from_secs(300),
    )
    .unwrap();
    expect_success("apt-get install srvgate.deb", &out).unwrap();
    // The admin's edit of the conffile: the lab's legs and one route.
    let conf = root.join("etc/srvgate/srvgate.toml");
    fs::write(
        &conf,
        config(&[route("alice", &format!("{B1_IP}:22"), 30001)]),
    )
    .unwrap();
    // A short watchdog, so that a stuck daemon is seen within the test.
    let dropin = root.join("etc/systemd/system/srvgate.service.d");
    fs::create_dir_all(&dropin).unwrap();
    fs::write(dropin.join("watchdog.conf"), "[Service]\nWatchdogSec=4s\n").unwrap();

    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    lab.start_sshd(&lab.b2, "sg-b2").unwrap();
    let ct = Container::boot(
        &root,
        &lab.gw,
        &lab.dir().join("bpffs"),
        &lab.dir().join("nspawn.log"),
    );
    wait_until(
        "the container's systemd is up",
        Duration::from_secs(120),
        || {
            let state = ct.sh("systemctl is-system-running").stdout;
            matches!(
                String::from_utf8_lossy(&state).trim(),
                "running" | "degraded"
            )
        },
    );

    // Start: Type=notify returns only once the daemon said ready: XDP and DNS are up now.
    let out = ct.sh("systemctl start srvgate");
    if !out.status.success() {
        // The same binary and config outside the unit's sandbox: the unit or the container?
        let direct = ct.sh(
            "timeout 5 /usr/bin/srvgate run --config /etc/srvgate/srvgate.toml 2>&1 | tail -3; srvgate down",
        );
        panic!(
            "systemctl start: {}\n{}\noutside the unit: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(
                &ct.sh("journalctl -u srvgate --no-pager -n 40 -o cat")
                    .stdout
            ),
            String::from_utf8_lossy(&direct.stdout),
        );
    }
    assert_eq!(ct.ok("systemctl is-active srvgate"), "active");
    for leg in [PUBLIC_IF, PRIVATE_IFS[0], PRIVATE_IFS[1]] {
        assert!(
            lab.xdp_attached(&lab.gw, leg).unwrap(),
            "XDP on {leg} once active"
        );
    }
    let (status, answers) = lab.dig("SRV", "_ssh._tcp.alice.lab.example");
    assert_eq!(status, "NOERROR", "{answers:?}");
    assert!(answers.iter().any(|a| a.contains("30001")), "{answers:?}");
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30001, "hostname")
            .unwrap()
            .trim(),
        "sg-b1"
    );
    assert!(
        ct.show("StatusText").contains("forwarding"),
        "{}",
        ct.show("StatusText")
    );

    // Reload applies a route change.
    fs::write(
        &conf,
        config(&[
            route("alice", &format!("{B1_IP}:22"), 30001),
            route("bob", &format!("{B2_IP}:22"), 30002),
        ]),
    )
    .unwrap();
    ct.ok("systemctl reload srvgate");
    wait_until("bob's route after reload", Duration::from_secs(20), || {
        lab.ssh(&lab.client, PUBLIC_IP, 30002, "hostname")
            .is_ok_and(|h| h.trim() == "sg-b2")
    });

    // An upgrade to a newer package (the same one, its version bumped): the admin's
    // conffile stays, postinst moves the running gateway to the new binary, and a route
    // answers throughout.
    let newer = repack_newer(&deb, &lab.dir().join("newer"));
    fs::copy(&newer, root.join("root/srvgate-newer.deb")).unwrap();
    let edited = fs::read(&conf).unwrap();
    let before = ct.show("MainPID");
    let failures = std::sync::atomic::AtomicU32::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let probes = thread::scope(|s| {
        let prober = s.spawn(|| {
            let mut n = 0u32;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                if !lab
                    .ssh(&lab.client, PUBLIC_IP, 30001, "hostname")
                    .is_ok_and(|h| h.trim() == "sg-b1")
                {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            n
        });
        let out =
            ct.sh("apt-get install -y -o Dpkg::Options::=--force-confold /root/srvgate-newer.deb");
        // A few more probes after the swap.
        thread::sleep(Duration::from_secs(2));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        expect_success("the upgrade", &out).unwrap();
        prober.join().unwrap()
    });
    assert!(probes >= 2, "ssh probes during the upgrade: {probes}");
    assert_eq!(
        failures.into_inner(),
        0,
        "ssh sessions through the route failed during the upgrade"
    );
    assert_eq!(
        fs::read(&conf).unwrap(),
        edited,
        "the admin's conffile is kept"
    );
    assert_eq!(
        ct.ok("dpkg-query -W -f='${Version}' srvgate"),
        newer_version(&deb)
    );
    assert_ne!(
        ct.show("MainPID"),
        before,
        "postinst restarted the gateway on the new binary"
    );
    assert_eq!(ct.ok("systemctl is-active srvgate"), "active");

    // SIGKILL: forwarding goes on while no daemon runs; systemd restarts it with every route.
    let first = ct.show("MainPID");
    ct.ok("systemctl kill -s KILL srvgate");
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30001, "hostname")
            .unwrap()
            .trim(),
        "sg-b1"
    );
    wait_until("the restart after SIGKILL", Duration::from_secs(40), || {
        let pid = ct.show("MainPID");
        pid != first && pid != "0" && ct.ok("systemctl is-active srvgate || true") == "active"
    });
    assert_eq!(ct.show("NRestarts"), "1");
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30002, "hostname")
            .unwrap()
            .trim(),
        "sg-b2"
    );
    let (_, answers) = lab.dig("SRV", "_ssh._tcp.bob.lab.example");
    assert!(answers.iter().any(|a| a.contains("30002")), "{answers:?}");

    // The watchdog: fed for three of its periods, then a stopped daemon is restarted by it.
    let second = ct.show("MainPID");
    assert_eq!(ct.show("WatchdogUSec"), "4s");
    thread::sleep(Duration::from_secs(12));
    assert_eq!(
        ct.show("MainPID"),
        second,
        "a fed watchdog restarts nothing"
    );
    ct.ok(&format!("kill -STOP {second}"));
    wait_until(
        "the watchdog's restart of a stuck daemon",
        Duration::from_secs(40),
        || ct.show("NRestarts") == "2" && ct.ok("systemctl is-active srvgate || true") == "active",
    );
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30001, "hostname")
            .unwrap()
            .trim(),
        "sg-b1"
    );

    // Stop: the daemon only; XDP stays and forwards.
    ct.ok("systemctl stop srvgate");
    assert_eq!(ct.ok("systemctl is-active srvgate || true"), "inactive");
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30001, "hostname")
            .unwrap()
            .trim(),
        "sg-b1"
    );
    // `srvgate down`: nothing attached, no pins.
    ct.ok("srvgate down");
    for leg in [PUBLIC_IF, PRIVATE_IFS[0], PRIVATE_IFS[1]] {
        assert!(
            !lab.xdp_attached(&lab.gw, leg).unwrap(),
            "XDP on {leg} after srvgate down"
        );
    }
    assert!(
        fs::read_dir(lab.pin_dir()).map_or(true, |mut d| d.next().is_none()),
        "pins left after srvgate down"
    );
    drop(ct);
}
