//! The lab itself, without srvgate: topology, plain kernel routing, real sshd/ssh,
//! and cleanup (also of stale namespaces and when a test panics).

use std::{
    net::SocketAddr,
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use srvgate_tests::*;

/// A pass-all XDP program ready to attach: xdp-filter's, shipped by libxdp1 (setup installs it).
const XDP_PASS_OBJ: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o";

#[test]
fn lab_builds_and_cleans_up() {
    if skip_unless_root("lab_builds_and_cleans_up") {
        return;
    }
    // A stale namespace of a "crashed" earlier run is removed by the constructor.
    let stale = "sg-labt-stale";
    let _ = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status();
    assert!(namespaces_with_prefix("sg-labt-").contains(&stale.to_string()));

    let veths_before = root_veths();
    let (pids, dir) = {
        let lab = Lab::new("labt").expect("lab");
        assert!(!namespaces_with_prefix("sg-labt-").contains(&stale.to_string()));
        assert_eq!(
            namespaces_with_prefix("sg-labt-"),
            vec!["sg-labt-b1", "sg-labt-b2", "sg-labt-cli", "sg-labt-gw"]
        );

        // Addresses and offloads as specified.
        let a = lab.sh(&lab.gw, "ip -br -4 addr").unwrap();
        for want in ["10.210.1.1/24", "10.210.2.1/24", "10.210.3.1/24"] {
            assert!(a.contains(want), "gw addresses: {a}");
        }
        let k = lab
            .exec_ok(&lab.client, &["ethtool", "-k", "eth0"])
            .unwrap();
        assert!(k.contains("tx-checksumming: off"), "{k}");
        assert!(k.contains("generic-receive-offload: on"), "{k}");
        assert_eq!(
            lab.exec_ok(&lab.gw, &["sysctl", "-n", "net.ipv4.ip_forward"])
                .unwrap()
                .trim(),
            "1"
        );
        // Nothing of the lab lives in the root namespace.
        assert_eq!(root_veths(), veths_before);

        // Real sshd in the backends (own hostnames); real ssh from the client, routed by
        // the gateway's kernel (no srvgate here): ip_forward=1 and the default routes.
        let sshd1 = lab.start_sshd(&lab.b1, "sg-b1").unwrap();
        let sshd2 = lab.start_sshd(&lab.b2, "sg-b2").unwrap();
        let fwd0 = lab.nstat_value(&lab.gw, "IpForwDatagrams").unwrap();
        assert_eq!(
            lab.ssh(&lab.client, B1_IP, 22, "hostname").unwrap(),
            "sg-b1"
        );
        assert_eq!(
            lab.ssh(&lab.client, B2_IP, 22, "hostname").unwrap(),
            "sg-b2"
        );
        let fwd1 = lab.nstat_value(&lab.gw, "IpForwDatagrams").unwrap();
        assert!(fwd1 >= fwd0 + 20, "kernel forwarded {fwd0} -> {fwd1}");
        // The hostname is the sshd's own: the namespace's other processes keep the host's.
        let plain = lab.exec_ok(&lab.b1, &["hostname"]).unwrap();
        assert_ne!(plain.trim(), "sg-b1");
        // An address of no lab host: the gateway has no route for it (and no default).
        let nowhere: SocketAddr = "10.210.9.9:22".parse().unwrap();
        let e = tcp_connect(&lab.client, nowhere, Duration::from_secs(3))
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable
            ),
            "{e:?}"
        );

        // iperf3 server and an in-namespace TCP connection from the test process.
        let iperf = lab.start_iperf3_server(&lab.b1, 5201).unwrap();
        let ssh_addr: SocketAddr = format!("{B2_IP}:22").parse().unwrap();
        let s = tcp_connect(&lab.client, ssh_addr, Duration::from_secs(3)).unwrap();
        assert!(s.is_ok(), "{s:?}");
        let closed: SocketAddr = format!("{B1_IP}:1").parse().unwrap();
        let e = tcp_connect(&lab.client, closed, Duration::from_secs(3))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

        // xdp_attached sees a (generic) XDP program come and go.
        assert!(!lab.xdp_attached(&lab.gw, "pub0").unwrap());
        assert!(
            std::path::Path::new(XDP_PASS_OBJ).exists(),
            "{XDP_PASS_OBJ} is missing: `cargo xtask setup` installs it (Debian's libxdp1)"
        );
        lab.exec_ok(
            &lab.gw,
            &[
                "ip",
                "link",
                "set",
                "dev",
                "priv2",
                "xdpgeneric",
                "obj",
                XDP_PASS_OBJ,
                "sec",
                "xdp",
            ],
        )
        .unwrap();
        assert!(lab.xdp_attached(&lab.gw, "priv2").unwrap());
        lab.exec_ok(
            &lab.gw,
            &["ip", "link", "set", "dev", "priv2", "xdpgeneric", "off"],
        )
        .unwrap();
        assert!(!lab.xdp_attached(&lab.gw, "priv2").unwrap());

        let pids = lab.pids();
        assert_eq!(pids, vec![sshd1, sshd2, iperf]);
        for p in &pids {
            assert!(lab.is_running(*p));
        }
        (pids, lab.dir().to_path_buf())
    };
    assert_gone("labt", &pids, &dir);
}

#[test]
fn lab_cleans_up_when_a_test_panics() {
    if skip_unless_root("lab_cleans_up_when_a_test_panics") {
        return;
    }
    let seen: Arc<Mutex<(Vec<u32>, PathBuf)>> = Arc::default();
    let seen2 = seen.clone();
    let result = catch_unwind(AssertUnwindSafe(move || {
        let lab = Lab::new("panic").expect("lab");
        lab.start_sshd(&lab.b1, "sg-b1").unwrap();
        lab.start_iperf3_server(&lab.b2, 5201).unwrap();
        lab.spawn(&lab.client, &["sleep", "300"]).unwrap();
        *seen2.lock().unwrap() = (lab.pids(), lab.dir().to_path_buf());
        panic!("deliberate panic with a lab up");
    }));
    assert!(result.is_err());
    let (pids, dir) = seen.lock().unwrap().clone();
    assert_eq!(pids.len(), 3);
    assert_gone("panic", &pids, &dir);
}

/// veth devices in the root namespace.
fn root_veths() -> String {
    let out = std::process::Command::new("ip")
        .args(["-br", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_gone(tag: &str, pids: &[u32], dir: &std::path::Path) {
    let left = namespaces_with_prefix(&format!("sg-{tag}-"));
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for p in pids {
        assert!(!pid_exists(*p), "process {p} left behind");
    }
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
}

/// Issue 10, item 14: a lab's process told to stop by SIGINT, SIGTERM or SIGHUP removes the
/// lab, also when its stdout and stderr lead nowhere (a `| tee` ended by the same Ctrl-C, a
/// dropped ssh session). The process is this test binary again, running
/// `lab_child_for_signal_test` only, which builds a lab and waits.
#[test]
fn a_signal_removes_the_lab_even_without_stdout() {
    if skip_unless_root("a_signal_removes_the_lab_even_without_stdout") {
        return;
    }
    let mut failures = Vec::new();
    for (tag, sig) in [
        ("sigint", libc::SIGINT),
        ("sigterm", libc::SIGTERM),
        ("sighup", libc::SIGHUP),
    ] {
        let prefix = format!("sg-{tag}-");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lab_child_for_signal_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SG_SIGNAL_LAB", tag)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(&format!("lab {tag} built"), Duration::from_secs(30), || {
            namespaces_with_prefix(&prefix).len() == 4
                && std::fs::read_dir(std::env::temp_dir())
                    .unwrap()
                    .flatten()
                    .any(|e| {
                        e.path().join("bpffs").exists()
                            && e.file_name()
                                .to_string_lossy()
                                .starts_with(&format!("srvgate-lab-{tag}-"))
                    })
        });
        // Nobody reads its output any more, as after `| tee` died.
        drop(child.stdout.take());
        drop(child.stderr.take());
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        use std::os::unix::process::ExitStatusExt as _;
        if status.and_then(|s| s.code()) != Some(128 + sig) {
            failures.push(format!(
                "{tag}: exit {status:?} (signal {:?}), want 128+{sig}",
                status.and_then(|s| s.signal())
            ));
        }
        let left = namespaces_with_prefix(&prefix);
        if !left.is_empty() {
            failures.push(format!("{tag}: namespaces left: {left:?}"));
        }
        let dirs: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("srvgate-lab-{tag}-"))
            })
            .map(|e| e.path())
            .collect();
        if !dirs.is_empty() {
            failures.push(format!("{tag}: temp dirs left: {dirs:?}"));
            // A later Lab::new would remove them; so does this test.
            let _ = Lab::new(tag);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Not a test by itself: the child of `a_signal_removes_the_lab_even_without_stdout`.
#[test]
fn lab_child_for_signal_test() {
    let Ok(tag) = std::env::var("SG_SIGNAL_LAB") else {
        return;
    };
    let _lab = Lab::new(&tag).expect("lab");
    // Waits to be signalled; bounded so a lost signal cannot leave it running forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        // As the demo does: output that fails is dropped, never a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), b"waiting for a signal\n");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 25: a signal that arrives while the lab's owner is dropping it (the demo's loop
/// ends when srvgate goes, which the same Ctrl-C stops) removes the lab once, saying
/// nothing alarming: the signal watcher and `Drop` both deleted the namespaces, and the
/// loser printed "Cannot remove namespace file ... No such file or directory". The child
/// (`lab_child_for_drop_race`) drops its lab as soon as its `sleep` is gone; this test ends
/// the `sleep` and signals the child at once.
#[test]
fn a_signal_during_the_labs_drop_removes_it_once_and_quietly() {
    if skip_unless_root("a_signal_during_the_labs_drop_removes_it_once_and_quietly") {
        return;
    }
    let tag = "dropsig";
    let prefix = format!("sg-{tag}-");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lab_child_for_drop_race",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SG_DROP_RACE_LAB", tag)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The child prints the pid of its `sleep` once the lab is built.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let sleep_pid: u32 = loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "the child ended before its lab was built");
        // After libtest's "test NAME ... " on the same line.
        if let Some((_, p)) = line.trim().split_once("sleep pid ") {
            break p.parse().unwrap();
        }
    };
    assert_eq!(namespaces_with_prefix(&prefix).len(), 4);
    // SAFETY: kill(2) on the child's `sleep` (alive: the child waits on it) and on our own
    // child, not yet reaped.
    unsafe {
        libc::kill(sleep_pid as i32, libc::SIGKILL);
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut s);
        (child, s)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !stderr.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stderr.is_finished(), "the child did not end");
    let (mut child, err) = stderr.join().unwrap();
    let status = child.wait().unwrap();
    let left = namespaces_with_prefix(&prefix);
    if !left.is_empty() {
        let _ = Lab::new(tag);
    }
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{err}");
    for alarming in ["Cannot remove", "lab cleanup:"] {
        assert!(!err.contains(alarming), "{alarming:?} on stderr:\n{err}");
    }
}

/// Not a test by itself: the child of `a_signal_during_the_labs_drop_removes_it_once_and_quietly`.
#[test]
fn lab_child_for_drop_race() {
    let Ok(tag) = std::env::var("SG_DROP_RACE_LAB") else {
        return;
    };
    let lab = Lab::new(&tag).expect("lab");
    let pid = lab.spawn(&lab.client, &["sleep", "60"]).expect("sleep");
    // Straight to stdout (the test harness captures `println!`), where the parent reads it.
    let mut out = std::io::stdout();
    let _ = std::io::Write::write_all(&mut out, format!("sleep pid {pid}\n").as_bytes());
    let _ = std::io::Write::flush(&mut out);
    // Like the demo's loop: the lab goes (dropped) once its process has gone; bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lab.is_running(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}
