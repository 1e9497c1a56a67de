//! End-to-end tests of "The gateway forwards": real ssh and iperf3 from the client namespace
//! to the gateway's public address, forwarded by srvgate's XDP program to the backends.
//!
//! Every test builds its own lab (its own `sg-TAG-` namespaces) and needs root: it skips
//! with a message otherwise. The srvgate binary is `$SRVGATE_BIN` or
//! `target/release/srvgate`. Run one at a time:
//! `cargo test -p srvgate-tests --test forwarding -- --test-threads=1`.

use std::{
    net::SocketAddr,
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use srvgate_tests::*;

/// alice/ssh -> b1:22 on 30001, bob/ssh -> b2:22 on 30002, alice/iperf (tcp and udp, as
/// iperf3's UDP test has a TCP control connection on the same port) -> b1:5201 on 30003.
fn routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::tcp("alice", "ssh", &format!("{B1_IP}:22"), 30001),
        RouteSpec::tcp("bob", "ssh", &format!("{B2_IP}:22"), 30002),
        RouteSpec::tcp("alice", "iperf", &format!("{B1_IP}:5201"), 30003),
        RouteSpec::udp("alice", "iperf", &format!("{B1_IP}:5201"), 30003),
    ]
}

/// sshd in b1 (`sg-b1`), b2 (`sg-b2`) and on the gateway's public address (`sg-gw`);
/// iperf3 server on b1:5201.
fn start_backends(lab: &Lab) {
    lab.start_sshd(&lab.b1, "sg-b1").expect("sshd in b1");
    lab.start_sshd(&lab.b2, "sg-b2").expect("sshd in b2");
    lab.start_sshd_on(&lab.gw, "sg-gw", PUBLIC_IP, 22)
        .expect("sshd in the gateway");
    lab.start_iperf3_server(&lab.b1, 5201)
        .expect("iperf3 in b1");
}

/// A lab with the backends up and srvgate running with [`routes`].
fn gateway_lab(tag: &str) -> Lab {
    let lab = Lab::new(tag).expect("building the lab");
    start_backends(&lab);
    lab.start_with_routes(&routes()).expect("starting srvgate");
    lab
}

fn route_labels<'a>(
    name: &'a str,
    service: &'a str,
    protocol: &'a str,
    direction: &'a str,
) -> [(&'static str, &'a str); 4] {
    [
        ("name", name),
        ("service", service),
        ("protocol", protocol),
        ("direction", direction),
    ]
}

/// `srvgate_route_packets_total` of one route and direction, from a scrape.
fn route_packets(text: &str, name: &str, service: &str, protocol: &str, direction: &str) -> f64 {
    let labels = route_labels(name, service, protocol, direction);
    metric_value(text, "srvgate_route_packets_total", &labels)
        .unwrap_or_else(|| panic!("no srvgate_route_packets_total{labels:?} in:\n{text}"))
}

fn verdict(text: &str, v: &str) -> f64 {
    metric_value(text, "srvgate_xdp_verdicts_total", &[("verdict", v)])
        .unwrap_or_else(|| panic!("no srvgate_xdp_verdicts_total{{verdict={v:?}}} in:\n{text}"))
}

/// Every per-route packet and byte sample, for before/after comparisons.
fn route_counters(text: &str) -> Vec<Sample> {
    parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == "srvgate_route_packets_total" || s.name == "srvgate_route_bytes_total"
        })
        .collect()
}

/// Runs the iperf3 client in the client namespace against 10.210.1.1:30003 for 3 s and
/// returns its JSON report; fails on a non-zero exit or an `error` in the report. A server
/// still busy with the previous test gets one more try after a pause.
fn iperf3(lab: &Lab, extra: &[&str]) -> Value {
    let mut argv = vec!["iperf3", "-c", PUBLIC_IP, "-p", "30003", "-t", "3", "-J"];
    argv.extend_from_slice(extra);
    for attempt in 1..=2 {
        let out = lab
            .exec(&lab.client, &argv, Duration::from_secs(30))
            .expect("iperf3 client within 30 s");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let error = json.get("error").and_then(Value::as_str).unwrap_or("");
        if out.status.success() && error.is_empty() && json.get("end").is_some() {
            return json;
        }
        if attempt == 1 && error.contains("busy") {
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        panic!(
            "iperf3 {} failed ({}): {error}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    unreachable!()
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// Packets the UDP client sent, lost and received out of order (iperf3 3.x `-J` layout).
struct UdpReport {
    sent: f64,
    received_bytes: f64,
    lost: f64,
    out_of_order: f64,
}

fn udp_report(json: &Value) -> UdpReport {
    let end = &json["end"];
    let sent = num(end, &["sum_sent", "packets"])
        .or_else(|| num(end, &["sum", "packets"]))
        .unwrap_or_else(|| panic!("no packet count in iperf3's report: {end}"));
    let received_bytes = num(end, &["sum_received", "bytes"])
        .or_else(|| num(end, &["sum", "bytes"]))
        .unwrap_or(0.0);
    let lost = num(end, &["sum_received", "lost_packets"])
        .or_else(|| num(end, &["sum", "lost_packets"]))
        .unwrap_or_else(|| panic!("no lost_packets in iperf3's report: {end}"));
    let out_of_order = end["streams"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| num(s, &["udp", "out_of_order"]))
                .sum()
        })
        .unwrap_or(0.0);
    UdpReport {
        sent,
        received_bytes,
        lost,
        out_of_order,
    }
}

/// Issue item 1: Real ssh through the gateway lands on the right backend.
#[test]
fn ssh_reaches_each_backend_by_its_public_port() {
    if skip_unless_root("ssh_reaches_each_backend_by_its_public_port") {
        return;
    }
    require_srvgate_bin();
    let lab = gateway_lab("fssh");
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30001, "hostname").unwrap(),
        "sg-b1"
    );
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30002, "hostname").unwrap(),
        "sg-b2"
    );
    // And XDP saw both directions of both sessions.
    let m = lab.metrics().unwrap();
    for (name, dir) in [
        ("alice", "inbound"),
        ("alice", "outbound"),
        ("bob", "inbound"),
        ("bob", "outbound"),
    ] {
        let n = route_packets(&m, name, "ssh", "tcp", dir);
        assert!(n >= 10.0, "{name}/ssh {dir}: {n} packets\n{m}");
    }
}

/// Issue item 2: iperf3 TCP and UDP through the gateway complete, with bytes received and
/// little loss.
#[test]
fn iperf3_tcp_and_udp_cross_the_gateway() {
    if skip_unless_root("iperf3_tcp_and_udp_cross_the_gateway") {
        return;
    }
    require_srvgate_bin();
    let lab = gateway_lab("fiperf");

    let tcp = iperf3(&lab, &[]);
    let received = num(&tcp["end"], &["sum_received", "bytes"]).unwrap_or(0.0);
    assert!(
        received > 1e6,
        "TCP: only {received} bytes received: {}",
        tcp["end"]
    );

    let udp = iperf3(&lab, &["-u", "-b", "50M", "-l", "1200"]);
    let r = udp_report(&udp);
    eprintln!(
        "TCP: {:.2} Gbit/s; UDP: {} packets sent, {} lost, {} out of order",
        num(&tcp["end"], &["sum_received", "bits_per_second"]).unwrap_or(0.0) / 1e9,
        r.sent,
        r.lost,
        r.out_of_order
    );
    assert!(r.sent > 1000.0, "UDP: only {} packets sent", r.sent);
    assert!(
        r.received_bytes > 0.0,
        "UDP: nothing received: {}",
        udp["end"]
    );
    assert!(
        r.lost < r.sent * 0.01,
        "UDP: {} of {} packets lost (>= 1%): {}",
        r.lost,
        r.sent,
        udp["end"]
    );
    assert!(
        r.out_of_order < r.sent * 0.01,
        "UDP: {} of {} packets out of order: {}",
        r.out_of_order,
        r.sent,
        udp["end"]
    );
}

/// Issue item 3: XDP forwards, not the kernel: the route counters grow by what iperf3 sent
/// while the gateway's kernel forwards next to nothing.
#[test]
fn xdp_forwards_not_the_kernel() {
    if skip_unless_root("xdp_forwards_not_the_kernel") {
        return;
    }
    require_srvgate_bin();
    let lab = gateway_lab("fxdp");
    let m0 = lab.metrics().unwrap();
    let fwd0 = lab.nstat_value(&lab.gw, "IpForwDatagrams").unwrap();

    let udp = iperf3(&lab, &["-u", "-b", "50M", "-l", "1200"]);
    let r = udp_report(&udp);

    let m1 = lab.metrics().unwrap();
    let fwd1 = lab.nstat_value(&lab.gw, "IpForwDatagrams").unwrap();
    let inbound = route_packets(&m1, "alice", "iperf", "udp", "inbound")
        - route_packets(&m0, "alice", "iperf", "udp", "inbound");
    let redirected = verdict(&m1, "fwd_redirect") - verdict(&m0, "fwd_redirect");
    let kernel = (fwd1 - fwd0) as f64;
    let summary = format!(
        "iperf3 sent {} UDP packets; alice/iperf/udp inbound +{inbound}; fwd_redirect \
         +{redirected}; IpForwDatagrams +{kernel}",
        r.sent
    );
    eprintln!("{summary}");
    assert!(r.sent > 1000.0, "{summary}");
    assert!(
        inbound >= r.sent,
        "route counter below packets sent: {summary}\n{m1}"
    );
    assert!(
        kernel < r.sent * 0.05,
        "the kernel forwarded too much: {summary}"
    );
    assert!(
        redirected >= r.sent * 0.95,
        "fwd_redirect did not grow with the traffic: {summary}\n{m1}"
    );
}

/// Issue 9, defect 5: with MTU 9000 a frame is a linear part (as little as its first page)
/// plus fragments under `#[xdp(frags)]`; `srvgate_route_bytes_total` counts whole frames.
#[test]
fn byte_counters_count_whole_jumbo_frames() {
    let Some(lab) = Lab::for_test("byte_counters_count_whole_jumbo_frames", "fjumbo") else {
        return;
    };
    let legs = [
        (&lab.client, "eth0"),
        (&lab.gw, PUBLIC_IF),
        (&lab.gw, PRIVATE_IFS[0]),
        (&lab.b1, "eth0"),
    ];
    for (ns, dev) in legs {
        lab.exec_ok(ns, &["ip", "link", "set", "dev", dev, "mtu", "9000"])
            .unwrap();
    }
    lab.start_with_routes(&routes()).expect("starting srvgate");
    const DATAGRAMS: usize = 50;
    const PAYLOAD: usize = 8000;
    // Ethernet, IPv4 and UDP headers around each payload.
    const FRAME: f64 = (PAYLOAD + 14 + 20 + 8) as f64;
    let counters = |text: &str| {
        let labels = route_labels("alice", "iperf", "udp", "inbound");
        let bytes = metric_value(text, "srvgate_route_bytes_total", &labels)
            .unwrap_or_else(|| panic!("no srvgate_route_bytes_total{labels:?} in:\n{text}"));
        (
            route_packets(text, "alice", "iperf", "udp", "inbound"),
            bytes,
        )
    };
    let (p0, b0) = counters(&lab.metrics().unwrap());
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for _ in range({DATAGRAMS}):\n    s.sendto(b'x' * {PAYLOAD}, ('{PUBLIC_IP}', 30003))\n"
    );
    lab.exec_ok(&lab.client, &["python3", "-c", &script])
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (packets, bytes) = loop {
        let (p1, b1) = counters(&lab.metrics().unwrap());
        if p1 - p0 >= DATAGRAMS as f64 || std::time::Instant::now() > deadline {
            break (p1 - p0, b1 - b0);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        packets, DATAGRAMS as f64,
        "inbound packets of alice/iperf/udp"
    );
    assert_eq!(
        bytes,
        packets * FRAME,
        "{packets} frames of {FRAME} bytes, counted as {bytes} bytes"
    );
}

/// Issue item 4: The gateway's own sshd (port 22) and unrouted ports are left to the kernel.
#[test]
fn unrouted_ports_are_not_forwarded() {
    if skip_unless_root("unrouted_ports_are_not_forwarded") {
        return;
    }
    require_srvgate_bin();
    let lab = gateway_lab("fnoroute");
    let m0 = lab.metrics().unwrap();
    let fwd0 = lab.nstat_value(&lab.gw, "IpForwDatagrams").unwrap();

    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 22, "hostname").unwrap(),
        "sg-gw"
    );
    let addr: SocketAddr = format!("{PUBLIC_IP}:30099").parse().unwrap();
    let attempt = tcp_connect(&lab.client, addr, Duration::from_secs(3)).unwrap();
    let err = attempt.expect_err("a connection to the unrouted port 30099 succeeded");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "30099: {err}"
    );

    let m1 = lab.metrics().unwrap();
    let fwd1 = lab.nstat_value(&lab.gw, "IpForwDatagrams").unwrap();
    assert_eq!(
        route_counters(&m0),
        route_counters(&m1),
        "route counters moved without routed traffic"
    );
    assert_eq!(fwd0, fwd1, "the gateway's kernel forwarded something");
    let no_route = verdict(&m1, "pass_no_route") - verdict(&m0, "pass_no_route");
    // The ssh session's packets to :22 and the SYN to :30099.
    assert!(no_route >= 2.0, "pass_no_route grew by {no_route}");
}

/// The gateway's own connections to a routed backend (an admin's `ssh` from the gateway to
/// alice's server, a health check) get their replies untouched: the reply comes from the
/// route's backend address and port, but is addressed to the gateway itself, so it is not a
/// reply to a client of the route and must not be rewritten to the public address.
#[test]
fn the_gateways_own_connections_to_routed_backends_are_left_alone() {
    if skip_unless_root("the_gateways_own_connections_to_routed_backends_are_left_alone") {
        return;
    }
    require_srvgate_bin();
    let lab = gateway_lab("fself");
    let m0 = lab.metrics().unwrap();
    // alice/ssh routes 30001 to B1_IP:22: the very address and port the gateway dials.
    assert_eq!(lab.ssh(&lab.gw, B1_IP, 22, "hostname").unwrap(), "sg-b1");
    let m1 = lab.metrics().unwrap();
    assert_eq!(
        route_packets(&m1, "alice", "ssh", "tcp", "outbound"),
        route_packets(&m0, "alice", "ssh", "tcp", "outbound"),
        "the gateway's own session was counted as alice's route traffic"
    );
    let to_gw = verdict(&m1, "pass_local") - verdict(&m0, "pass_local");
    assert!(to_gw >= 5.0, "pass_local grew by {to_gw}");
    // And the route itself still works for clients.
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30001, "hostname").unwrap(),
        "sg-b1"
    );
}

/// Issue item 5: Bad configs are refused by `check` and `run` with exit code 2 naming the
/// field, and leave no XDP program attached.
#[test]
fn bad_configs_are_refused() {
    let Some(lab) = Lab::for_test("bad_configs_are_refused", "fbad") else {
        return;
    };
    let good = config_toml(&routes());
    // 250 characters: `check_domain` takes it, but the routes' names would not fit.
    let long_zone = format!("zone = \"{}example\"", "abcdefghi.".repeat(24) + "ab.");
    // Routes: [1] alice/ssh 30001, [2] bob/ssh 30002, [3] alice/iperf tcp, [4] .. udp.
    let cases = [
        (
            "port-range",
            "port = 30001",
            "port = 40000",
            "route[1].port",
        ),
        ("dup-port", "port = 30002", "port = 30001", "route[2].port"),
        (
            "bad-ip",
            "public_ipv4 = \"10.210.1.1\"",
            "public_ipv4 = \"10.210.1\"",
            "gateway.public_ipv4",
        ),
        (
            "bad-backend",
            "backend = \"10.210.3.12:22\"",
            "backend = \"10.210.3.300:22\"",
            "route[2].backend",
        ),
        (
            "no-iface",
            "public_interface = \"pub0\"",
            "public_interface = \"nope0\"",
            "gateway.public_interface",
        ),
        (
            "bad-label",
            "name = \"bob\"",
            "name = \"Bob_2\"",
            "route[2].name",
        ),
        // Issue 10, items 4 and 8-11: `run` refused these only after `check` said ok, or
        // neither refused them although they break the gateway.
        (
            "dns-no-listen",
            "listen = [\"10.210.1.1:53\"]",
            "listen = []",
            "dns.listen",
        ),
        (
            "http-on-dns",
            "[metrics]",
            "[http]\nlisten = [\"10.210.1.1:53\"]\n\n[metrics]",
            "http.listen[1]",
        ),
        (
            "metrics-on-dns",
            "listen = \"127.0.0.1:9110\"",
            "listen = \"0.0.0.0:53\"",
            "metrics.listen",
        ),
        (
            "long-zone",
            "zone = \"lab.example\"",
            long_zone.as_str(),
            "dns.zone",
        ),
        (
            "lo-leg",
            "\"priv2\"]",
            "\"lo\"]",
            "gateway.private_interfaces[2]",
        ),
        (
            "loopback-public",
            "public_ipv4 = \"10.210.1.1\"",
            "public_ipv4 = \"127.0.0.1\"",
            "gateway.public_ipv4",
        ),
        (
            "public-on-private-leg",
            "public_ipv4 = \"10.210.1.1\"",
            "public_ipv4 = \"10.210.2.1\"",
            "gateway.public_ipv4",
        ),
        ("huge-ttl", "ttl = 30", "ttl = 4294967295", "dns.ttl"),
        (
            "loopback-backend",
            "backend = \"10.210.3.12:22\"",
            "backend = \"127.0.0.1:22\"",
            "route[2].backend",
        ),
        // Issue 24 item 6: a backend that is the gateway itself (its private leg's address,
        // here sshd's port) or link-local, refused naming the route and the rule.
        (
            "own-backend",
            "backend = \"10.210.3.12:22\"",
            "backend = \"10.210.3.1:22\"",
            "route[2].backend: 10.210.3.1:22 is an address of this gateway's interface \"priv2\"",
        ),
        (
            "link-local-backend",
            "backend = \"10.210.3.12:22\"",
            "backend = \"169.254.169.254:80\"",
            "route[2].backend: 169.254.169.254:80 is link-local",
        ),
        (
            "range-with-dns",
            "port_range = \"30000-32767\"",
            "port_range = \"52-81\"",
            "gateway.port_range",
        ),
        (
            "range-with-sshd",
            "port_range = \"30000-32767\"",
            "port_range = \"1-65535\"",
            "gateway.port_range",
        ),
        (
            "range-in-ephemeral",
            "port_range = \"30000-32767\"",
            "port_range = \"30000-40000\"",
            "gateway.port_range",
        ),
    ];
    let mut failures = Vec::new();
    for (case, from, to, field) in cases {
        assert!(good.contains(from), "{case}: {from:?} not in the config");
        let text = good.replacen(from, to, 1);
        let path = lab.write_file(&format!("{case}.toml"), &text).unwrap();
        let p = path.display().to_string();
        for cmd in ["check", "run"] {
            let out = lab
                .srvgate(&[cmd, "--config", &p], Duration::from_secs(15))
                .unwrap_or_else(|e| panic!("{case}: srvgate {cmd}: {e:#}"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            let ok = out.status.code() == Some(2) && stderr.contains(field) && stderr.contains(&p);
            if !ok {
                failures.push(format!(
                    "{case}: `srvgate {cmd}` exited {} (want 2) naming {field:?} and the file:\n{stderr}",
                    out.status
                ));
            }
        }
    }
    for dev in [PUBLIC_IF, PRIVATE_IFS[0], PRIVATE_IFS[1]] {
        if lab.xdp_attached(&lab.gw, dev).unwrap() {
            failures.push(format!("XDP left attached to {dev}"));
        }
    }
    // The good config itself passes `check` (so the cases above fail for their own reason).
    let path = lab.write_file("good.toml", &good).unwrap();
    let out = lab
        .srvgate(
            &["check", "--config", &path.display().to_string()],
            Duration::from_secs(15),
        )
        .unwrap();
    if !out.status.success() {
        failures.push(format!(
            "the good config fails check ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Issue item 6a: SIGTERM with `--detach-on-exit`: srvgate detaches XDP from every leg and
/// exits 0. (Without the flag XDP stays attached for a hitless restart; tests/elastic.rs
/// covers that.)
#[test]
fn sigterm_detaches_and_exits_zero() {
    let Some(lab) = Lab::for_test("sigterm_detaches_and_exits_zero", "fterm") else {
        return;
    };
    let config = lab
        .write_file("srvgate.toml", &config_toml(&routes()))
        .unwrap();
    lab.start_srvgate(&config, &["--detach-on-exit"])
        .expect("starting srvgate");
    let legs = [PUBLIC_IF, PRIVATE_IFS[0], PRIVATE_IFS[1]];
    for dev in legs {
        assert!(
            lab.xdp_attached(&lab.gw, dev).unwrap(),
            "XDP not attached to {dev} while srvgate runs"
        );
    }
    let status = lab.stop_srvgate().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "srvgate after SIGTERM: {status}\n{}",
        lab.srvgate_log()
    );
    for dev in legs {
        assert!(
            !lab.xdp_attached(&lab.gw, dev).unwrap(),
            "XDP still attached to {dev} after srvgate exited"
        );
    }
    assert!(
        !lab.pin_dir().exists(),
        "pins left in {} after --detach-on-exit",
        lab.pin_dir().display()
    );
}

/// Issue item 6b: A test that panics with the whole gateway lab up leaves nothing behind.
#[test]
fn a_panicking_test_leaves_nothing_behind() {
    if skip_unless_root("a_panicking_test_leaves_nothing_behind") {
        return;
    }
    require_srvgate_bin();
    type Seen = Option<(Vec<u32>, PathBuf)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seen2 = seen.clone();
    let result = catch_unwind(AssertUnwindSafe(move || {
        let lab = gateway_lab("fpanic");
        *seen2.lock().unwrap() = Some((lab.pids(), lab.dir().to_path_buf()));
        panic!("deliberate panic with srvgate and the backends up");
    }));
    assert!(result.is_err(), "the closure was meant to panic");
    let (pids, dir) = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the lab came up before the panic");
    assert_eq!(pids.len(), 5, "3 sshd, iperf3 and srvgate: {pids:?}");
    let left = namespaces_with_prefix("sg-fpanic-");
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for p in &pids {
        assert!(!pid_exists(*p), "process {p} left behind");
    }
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
}
