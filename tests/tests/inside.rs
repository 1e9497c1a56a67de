//! Access from inside: a host on one of the gateway's private legs reaches every route the
//! way a client outside does, by the public address and port (hairpin NAT in the XDP
//! program) and by name (srvgate's own DNS answers, whose SRV records give the public
//! port). Real sshd on the backends, real ssh, dig and `srvgate ssh` from a backend; ICMP
//! errors about such flows reach whichever end caused them, from real kernels.

use std::time::Duration;

use srvgate_tests::*;

const ZONE: &str = "lab.example";
/// Enough to cross many full-size segments both ways, bounded by the lab's timeout.
const BYTES: usize = 5_000_000;

#[test]
fn a_backend_reaches_routes_by_public_address_and_by_name() {
    let Some(lab) = Lab::for_test(
        "a_backend_reaches_routes_by_public_address_and_by_name",
        "inside",
    ) else {
        return;
    };
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    lab.start_sshd(&lab.b2, "sg-b2").unwrap();
    let routes = [
        RouteSpec::tcp("alice", "ssh", &format!("{B1_IP}:22"), 30001),
        RouteSpec::tcp("bob", "ssh", &format!("{B2_IP}:22"), 30002),
    ];
    lab.start_with_routes(&routes).unwrap();

    // Backend 1 reaches bob's route, behind the other leg, by the public address and port.
    // Backend 2 sees the connection come from the public address, so it answers through
    // the gateway.
    let seen = lab
        .ssh(&lab.b1, PUBLIC_IP, 30002, "hostname; echo $SSH_CONNECTION")
        .unwrap();
    let mut lines = seen.lines();
    assert_eq!(lines.next(), Some("sg-b2"), "{seen}");
    let conn = lines.next().unwrap_or_default();
    assert!(
        conn.starts_with(&format!("{PUBLIC_IP} ")),
        "bob's sshd saw the connection come from {conn:?}"
    );

    // Its own route, through the gateway and back out of the same leg: without the
    // source rewrite, its own answer would skip the gateway and be refused.
    assert_eq!(
        lab.ssh(&lab.b1, PUBLIC_IP, 30001, "hostname").unwrap(),
        "sg-b1"
    );

    // Bulk both ways through the hairpin: every segment's checksums survive both rewrites.
    lab.ssh_bulk_both_ways(&lab.b1, PUBLIC_IP, 30002, BYTES)
        .unwrap();

    // By name: the zone's answer, asked from inside, is the public port...
    let srv = lab
        .exec_ok(
            &lab.b1,
            &[
                "dig",
                &format!("@{PUBLIC_IP}"),
                "+short",
                "+time=2",
                "+tries=1",
                "SRV",
                &format!("_ssh._tcp.bob.{ZONE}"),
            ],
        )
        .unwrap();
    assert_eq!(srv.split_whitespace().nth(2), Some("30002"), "{srv}");
    // ...and `srvgate ssh`, resolving through backend 1's system resolver, gets there.
    lab.set_resolver(&lab.b1, PUBLIC_IP).unwrap();
    let bin = srvgate_bin().display().to_string();
    let target = format!("root@bob.ssh.{ZONE}");
    let opts = lab.ssh_options().unwrap();
    let mut argv = vec![bin.as_str(), "ssh", &target, "--"];
    argv.extend(opts.iter().map(String::as_str));
    argv.push("hostname");
    assert_eq!(lab.exec_ok(&lab.b1, &argv).unwrap().trim(), "sg-b2");

    // Every hairpin packet was translated, none refused as a clash.
    let metrics = lab.metrics().unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "srvgate_xdp_verdicts_total",
            &[("verdict", "pass_hairpin_clash")]
        ),
        Some(0.0),
        "{metrics}"
    );
}

/// Sends one UDP datagram from a connected socket to `argv[1]:argv[2]` and, unless
/// `argv[3]` is `close` (then it closes at once), prints what the next receive got:
/// `refused` when an ICMP port unreachable came back (the kernel turns it into
/// ECONNREFUSED on a connected socket), `timeout` when nothing came in 3 s.
const UDP_ASKER: &str = r#"import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
s.settimeout(3)
s.send(b"ping")
if sys.argv[3] == "close":
    print("sent")
    sys.exit(0)
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#;

/// Waits (at most 10 s) for one datagram on port `argv[1]`, connects to its sender, waits
/// `argv[2]` seconds (the sender has closed its socket by then), answers, and prints what
/// the next receive got, as [`UDP_ASKER`] does.
const UDP_LATE_ANSWERER: &str = r#"import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(10)
_, peer = s.recvfrom(100)
s.connect(peer)
time.sleep(float(sys.argv[2]))
s.send(b"late")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#;

/// ICMP errors about hairpin flows reach the end that caused them, translated the way the
/// flow is, through real kernels: a host on a private leg that sends to a route whose
/// backend has nothing listening hears "port unreachable" (its socket is refused instead
/// of waiting), and a backend answering a host that has gone away hears it too.
#[test]
fn icmp_errors_about_hairpin_flows_reach_both_ends() {
    let Some(lab) = Lab::for_test("icmp_errors_about_hairpin_flows_reach_both_ends", "inicmp")
    else {
        return;
    };
    let routes = [
        RouteSpec::udp("alice", "game", &format!("{B2_IP}:5353"), 30053),
        RouteSpec::udp("bob", "game", &format!("{B2_IP}:5354"), 30054),
    ];
    lab.start_with_routes(&routes).unwrap();

    // Nothing listens on backend 2's 5353: its kernel's port unreachable, about
    // `public:port -> b2:5353`, reaches backend 1 about `b1:port -> public:30053`.
    let out = lab
        .exec(
            &lab.b1,
            &["python3", "-c", UDP_ASKER, PUBLIC_IP, "30053", "wait"],
            Duration::from_secs(10),
        )
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "refused",
        "backend 1's socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Backend 2 answers backend 1 after its socket closed: backend 1's port unreachable,
    // about `public:30054 -> b1:port`, reaches backend 2 about `b2:5354 -> public:port`.
    let answerer = lab
        .spawn(
            &lab.b2,
            &["python3", "-c", UDP_LATE_ANSWERER, "5354", "0.5"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = lab
        .exec(
            &lab.b1,
            &["python3", "-c", UDP_ASKER, PUBLIC_IP, "30054", "close"],
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sent");
    wait_until("backend 2's answerer", Duration::from_secs(15), || {
        !lab.is_running(answerer)
    });
    let log = lab.log_path(answerer).unwrap();
    lab.stop(answerer, Duration::ZERO).unwrap();
    let said = std::fs::read_to_string(log).unwrap();
    assert!(
        said.lines().any(|l| l == "refused"),
        "backend 2's socket after answering a closed one: {said:?}"
    );
}
