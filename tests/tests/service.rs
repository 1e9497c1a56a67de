//! srvgate as the packaged systemd service runs it, without systemd: the readiness
//! protocol (`NOTIFY_SOCKET`) seen from a socket of the test's, and the unit's capability
//! set, applied with `setpriv` exactly as systemd applies `CapabilityBoundingSet=` and
//! `NoNewPrivileges=` to a root service, running the netns lab.
//!
//! Every test builds its own lab and needs root; it skips with a message otherwise.

use std::{
    net::TcpListener,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use srvgate_tests::*;

const LEGS: [&str; 3] = [PUBLIC_IF, PRIVATE_IFS[0], PRIVATE_IFS[1]];

fn unit() -> String {
    std::fs::read_to_string(workspace_root().join("dist/srvgate.service")).unwrap()
}

/// The unit's `KEY=` setting (the last one, as systemd reads it for single values).
fn unit_setting(key: &str) -> Option<String> {
    unit()
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .next_back()
}

/// The unit's capabilities as `setpriv` names them: `["bpf", "net_admin", ...]`.
fn unit_capabilities() -> Vec<String> {
    let set = unit_setting("CapabilityBoundingSet").expect("the unit has CapabilityBoundingSet=");
    set.split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{c} is not a capability name"))
                .to_ascii_lowercase()
        })
        .collect()
}

/// `setpriv` with exactly `caps` (bounding set; a root process gets all of it as permitted
/// and effective on exec, and nothing else), no inheritable ones, and no_new_privs when
/// the unit sets `NoNewPrivileges=yes`.
fn setpriv(caps: &[String]) -> Vec<String> {
    let mut bounding = String::from("-all");
    for c in caps {
        bounding.push_str(&format!(",+{c}"));
    }
    let mut argv = vec![
        "setpriv".to_string(),
        format!("--bounding-set={bounding}"),
        "--inh-caps=-all".to_string(),
    ];
    if unit_setting("NoNewPrivileges").as_deref() == Some("yes") {
        argv.push("--no-new-privs".to_string());
    }
    argv.push("--".to_string());
    argv
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Capability numbers, for reading /proc/PID/status.
fn cap_number(name: &str) -> u32 {
    match name {
        "net_bind_service" => 10,
        "net_admin" => 12,
        "sys_admin" => 21,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other}: add its number here"),
    }
}

/// A field of /proc/PID/status as a hex mask (`CapEff`, `CapBnd`, ...).
fn cap_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// The packaged example config, edited the way the book (admin/install.md) tells an admin
/// to: the lab's interfaces and public address, the HTTP router on, and routes.
fn example_config(routes: &[RouteSpec]) -> String {
    let example = std::fs::read_to_string(workspace_root().join("dist/srvgate.toml")).unwrap();
    let mut c = example
        .replace(
            "public_interface = \"eth0\"",
            &format!("public_interface = \"{PUBLIC_IF}\""),
        )
        .replace(
            "private_interfaces = [\"eth1\"]",
            &format!(
                "private_interfaces = [\"{}\", \"{}\"]",
                PRIVATE_IFS[0], PRIVATE_IFS[1]
            ),
        )
        .replace("203.0.113.10", PUBLIC_IP)
        .replace(
            &format!("# [http]\n# listen = [\"{PUBLIC_IP}:80\"]\n# service = \"http\"\n"),
            &format!("[http]\nlisten = [\"{PUBLIC_IP}:80\"]\nservice = \"http\"\n"),
        )
        .replace("127.0.0.1:9110", METRICS_ADDR);
    for r in routes {
        c.push_str(&format!(
            "\n[[route]]\nname = \"{}\"\nservice = \"{}\"\nprotocol = \"{}\"\nbackend = \"{}\"\nport = {}\n",
            r.name, r.service, r.protocol, r.backend, r.port
        ));
    }
    assert!(
        c.contains("[http]\nlisten"),
        "the example's [http] section moved:\n{c}"
    );
    c
}

fn xdp_on_every_leg(lab: &Lab) -> bool {
    LEGS.iter().all(|d| lab.xdp_attached(&lab.gw, d).unwrap())
}

fn xdp_on_no_leg(lab: &Lab) -> bool {
    LEGS.iter().all(|d| !lab.xdp_attached(&lab.gw, d).unwrap())
}

/// A notification socket like systemd's, in the lab's temp dir (a path, so it is reached
/// from the gateway namespace too).
fn notify_socket(lab: &Lab) -> (UnixDatagram, PathBuf) {
    let path = lab.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    (sock, path)
}

/// The next notification, waiting at most `timeout`.
fn next_notification(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            None
        }
        Err(e) => panic!("reading the notify socket: {e}"),
    }
}

/// Waits (bounded) for the lab's process `pid` to exit on its own; returns its status.
fn wait_for_exit(lab: &Lab, pid: u32, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    while lab.is_running(pid) {
        assert!(
            Instant::now() < deadline,
            "srvgate still running after {timeout:?}:\n{}",
            lab.srvgate_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.stop(pid, Duration::ZERO).unwrap()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a daemon this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

fn ssh_hostname(lab: &Lab, port: u16) -> String {
    lab.ssh(&lab.client, PUBLIC_IP, port, "hostname").unwrap()
}

/// Issue: "the daemon started with NOTIFY_SOCKET pointing at a test socket sends READY=1
/// only after XDP is attached and DNS answers". The log is written before the notification
/// by the same thread, so what the log holds when READY=1 arrives was done before it was
/// sent. A start that fails sends no READY=1.
#[test]
fn ready_is_notified_only_once_xdp_and_dns_are_up() {
    if skip_unless_root("ready_is_notified_only_once_xdp_and_dns_are_up") {
        return;
    }
    require_srvgate_bin();
    let lab = Lab::new("svcn").expect("lab");
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    let routes = [RouteSpec::tcp(
        "alice",
        "ssh",
        &format!("{B1_IP}:22"),
        30001,
    )];
    let config = lab
        .write_file("srvgate.toml", &config_toml(&routes))
        .unwrap();
    let (sock, path) = notify_socket(&lab);
    let env = [("NOTIFY_SOCKET", path.to_str().unwrap())];

    // A start that cannot listen (the metrics port is taken) never says READY=1.
    let squatter = in_netns(&lab.gw, || TcpListener::bind(METRICS_ADDR))
        .unwrap()
        .expect("taking the metrics port");
    let pid = lab.spawn_srvgate(&config, &[], &[], &env).unwrap();
    let status = wait_for_exit(&lab, pid, Duration::from_secs(20));
    assert!(!status.success(), "{}", lab.srvgate_log());
    let said = std::iter::from_fn(|| next_notification(&sock, Duration::from_millis(200)))
        .collect::<Vec<_>>();
    assert!(
        !said.iter().any(|m| m.contains("READY=1")),
        "a failed start notified {said:?}"
    );
    assert!(xdp_on_no_leg(&lab), "a refused start attached XDP");
    drop(squatter);

    // A good start: READY=1 comes with a status line, and by then everything is up.
    let pid = lab.spawn_srvgate(&config, &[], &[], &env).unwrap();
    let ready = next_notification(&sock, SRVGATE_READY_TIMEOUT)
        .unwrap_or_else(|| panic!("no notification; log:\n{}", lab.srvgate_log()));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let status_line = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {ready:?}"));
    assert!(
        status_line.contains("1 routes") && status_line.contains(PUBLIC_IF),
        "{status_line}"
    );
    let log = lab.srvgate_log();
    for leg in LEGS {
        assert!(
            log.lines()
                .any(|l| l.contains("XDP attached") && l.contains(&format!("iface={leg}"))),
            "READY=1 arrived before XDP was attached to {leg}; log:\n{log}"
        );
    }
    assert!(
        log_says_ready(&log),
        "READY=1 before the ready line:\n{log}"
    );
    // Right away, without retries: DNS answers and forwarding works.
    let (rcode, answers) = lab.dig("SRV", "_ssh._tcp.alice.lab.example");
    assert_eq!(rcode, "NOERROR");
    assert!(
        answers
            .iter()
            .any(|a| a.contains("SRV 0 0 30001 gw.lab.example.")),
        "{answers:?}"
    );
    assert!(xdp_on_every_leg(&lab));
    assert_eq!(ssh_hostname(&lab, 30001), "sg-b1");

    // SIGHUP (what ExecReload sends): RELOADING=1, then READY=1 again once applied.
    signal(pid, libc::SIGHUP);
    let reloading = next_notification(&sock, Duration::from_secs(10)).expect("RELOADING=1");
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let reloaded = next_notification(&sock, Duration::from_secs(10)).expect("READY=1 again");
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded:?}");

    // SIGTERM (systemctl stop): STOPPING=1, and XDP stays attached afterwards.
    let status = lab.stop_srvgate().unwrap();
    assert!(status.success(), "{status}: {}", lab.srvgate_log());
    let stopping = next_notification(&sock, Duration::from_secs(5)).expect("STOPPING=1");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(xdp_on_every_leg(&lab), "stopping detached XDP");
    assert_eq!(ssh_hostname(&lab, 30001), "sg-b1");
}

/// Runs `srvgate check` like the unit's ExecStartPre, under `wrapper`.
fn check_under(lab: &Lab, wrapper: &[String], config: &Path) -> std::process::Output {
    let bin = srvgate_bin().display().to_string();
    let cfg = config.display().to_string();
    let mut argv: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    argv.extend([bin.as_str(), "check", "--config", cfg.as_str()]);
    lab.exec(&lab.gw, &argv, DEFAULT_TIMEOUT).unwrap()
}

/// Issue: "the unit's capability set is enough to run the netns lab (run the daemon under
/// setpriv/capsh with exactly those capabilities, not as full root)", and each of them is
/// needed: without any one of them the daemon refuses to start.
#[test]
fn the_units_capabilities_run_the_lab_and_each_is_needed() {
    if skip_unless_root("the_units_capabilities_run_the_lab_and_each_is_needed") {
        return;
    }
    require_srvgate_bin();
    let caps = unit_capabilities();
    for needed in ["bpf", "net_admin", "net_bind_service"] {
        // The minimum; anything beyond it must be shown needed below.
        assert!(caps.contains(&needed.to_string()), "{caps:?}");
    }
    let lab = Lab::new("svcc").expect("lab");
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    lab.start_sshd_on(&lab.b1, "sg-b1", "0.0.0.0", 2222)
        .unwrap();
    lab.start_sshd(&lab.b2, "sg-b2").unwrap();
    lab.start_web(&lab.b2, "hello from b2").unwrap();
    let routes = [
        RouteSpec::tcp("alice", "ssh", &format!("{B1_IP}:22"), 30001),
        RouteSpec::tcp("bob", "http", &format!("{B2_IP}:80"), 30080),
    ];
    let config = lab
        .write_file("srvgate.toml", &example_config(&routes))
        .unwrap();

    // One capability short, the daemon refuses before touching the kernel (CAP_BPF,
    // CAP_PERFMON and CAP_NET_ADMIN by its own privilege check, CAP_NET_BIND_SERVICE when
    // binding DNS on port 53).
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let pid = lab
            .spawn_srvgate(&config, &[], &strs(&setpriv(&fewer)), &[])
            .unwrap();
        let status = wait_for_exit(&lab, pid, Duration::from_secs(20));
        assert!(
            !status.success(),
            "srvgate ran without CAP_{}:\n{}",
            missing.to_uppercase(),
            lab.srvgate_log()
        );
        assert!(xdp_on_no_leg(&lab), "without CAP_{missing}: XDP attached");
        let log = lab.srvgate_log();
        let named = match missing.as_str() {
            "net_bind_service" => log.contains(":53") && log.contains("ermission denied"),
            other => log.contains(&format!("CAP_{}", other.to_uppercase())),
        };
        assert!(
            named,
            "without CAP_{missing}, the error does not say why:\n{log}"
        );
    }

    let wrapper = setpriv(&caps);
    let out = check_under(&lab, &wrapper, &config);
    expect_success("srvgate check under the unit's capabilities", &out).unwrap();

    let pid = lab
        .spawn_srvgate(&config, &[], &strs(&wrapper), &[])
        .unwrap();
    lab.wait_srvgate_ready(pid).unwrap();
    let want: u64 = caps.iter().map(|c| 1u64 << cap_number(c)).sum();
    assert_eq!(
        cap_mask(pid, "CapEff"),
        want,
        "not exactly the unit's capabilities"
    );
    assert_eq!(cap_mask(pid, "CapBnd"), want);
    assert_eq!(cap_mask(pid, "CapEff") & (1 << cap_number("sys_admin")), 0);

    // Everything the lab does: forwarding, DNS, HTTP routing on :80, the control socket,
    // metrics, reload, and a hitless restart that reopens the pins.
    assert_eq!(ssh_hostname(&lab, 30001), "sg-b1");
    let (rcode, answers) = lab.dig("SRV", "alice.ssh.lab.example");
    assert_eq!(rcode, "NOERROR", "{answers:?}");
    let page = lab
        .exec_ok(
            &lab.client,
            &[
                "curl",
                "-fsS",
                "--max-time",
                "5",
                "-H",
                "Host: bob.http.lab.example",
                &format!("http://{PUBLIC_IP}/"),
            ],
        )
        .unwrap();
    assert_eq!(page.trim(), "hello from b2");
    let added = lab
        .srvgate_ctl_ok(&[
            "route",
            "add",
            "carol",
            "--service",
            "ssh",
            "--backend",
            &format!("{B2_IP}:22"),
            "--port",
            "30003",
        ])
        .unwrap();
    assert!(added.contains("30003"), "{added}");
    assert_eq!(ssh_hostname(&lab, 30003), "sg-b2");
    let metrics = lab.metrics().unwrap();
    assert!(
        metric_value(&metrics, "srvgate_routes", &[]) == Some(3.0),
        "{metrics}"
    );

    let mut more = routes.to_vec();
    more.push(RouteSpec::tcp(
        "dave",
        "ssh",
        &format!("{B1_IP}:2222"),
        30004,
    ));
    std::fs::write(&config, example_config(&more)).unwrap();
    signal(pid, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.dig("SRV", "dave.ssh.lab.example").0 != "NOERROR" {
        assert!(
            Instant::now() < deadline,
            "SIGHUP not applied:\n{}",
            lab.srvgate_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ssh_hostname(&lab, 30004), "sg-b1");

    let status = lab.stop_srvgate().unwrap();
    assert!(status.success(), "{status}: {}", lab.srvgate_log());
    assert!(
        xdp_on_every_leg(&lab),
        "a stop under the unit's capabilities detached XDP"
    );
    assert_eq!(
        ssh_hostname(&lab, 30001),
        "sg-b1",
        "no forwarding while stopped"
    );
    let pid = lab
        .spawn_srvgate(&config, &[], &strs(&wrapper), &[])
        .unwrap();
    lab.wait_srvgate_ready(pid).unwrap();
    let log = lab.srvgate_log();
    assert!(
        log.contains("XDP program replaced in place"),
        "the restart did not reuse the pinned links:\n{log}"
    );
    assert_eq!(
        ssh_hostname(&lab, 30003),
        "sg-b2",
        "the runtime route is back"
    );

    // The dashboard asks only for metrics this daemon exports.
    let scraped = lab.metrics().unwrap();
    let dash = std::fs::read_to_string(workspace_root().join("dist/grafana/srvgate.json")).unwrap();
    let mut names: Vec<&str> = dash
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("srvgate_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        assert!(
            parse_metrics(&scraped).iter().any(|s| s.name == name),
            "the dashboard queries {name}, which /metrics does not have:\n{scraped}"
        );
    }
}
