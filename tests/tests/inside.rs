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
    lab.wait_udp_bound(&lab.b2, answerer, 5354, Duration::from_secs(10))
        .unwrap();
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

/// Sends one datagram to `argv[3]:argv[4]` from `argv[1]:argv[2]`, an address this host
/// does not have (IP_TRANSPARENT): the datagram a spoofer would have made, as the service
/// it is sent to receives it.
const UDP_SPOOFED: &str = r#"import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
s.bind((sys.argv[1], int(sys.argv[2])))
s.sendto(b"reflect me", (sys.argv[3], int(sys.argv[4])))
print("sent")
"#;

/// Two students' UDP echo services cannot be made to answer each other through the
/// gateway: a datagram made as from `public:Q` (route Q: bob's echo) reaches alice's echo,
/// whose answer to `public:Q` leaves alice's backend from its route's address and port;
/// it answers no hairpin flow, so the gateway keeps it (its kernel has no socket there)
/// and never sends it on to bob's echo as a request. Real echo services, real kernels;
/// the spoofed datagram is made on alice's backend itself, so only the reply path is
/// tested (a spoofed source on the public leg is refused there, which is another test's).
#[test]
fn a_backends_reply_to_a_spoofed_datagram_never_reaches_another_route() {
    let Some(lab) = Lab::for_test(
        "a_backends_reply_to_a_spoofed_datagram_never_reaches_another_route",
        "inrefl",
    ) else {
        return;
    };
    let routes = [
        RouteSpec::udp("alice", "echo", &format!("{B1_IP}:7"), 30007),
        RouteSpec::udp("bob", "echo", &format!("{B2_IP}:7"), 30008),
    ];
    lab.start_with_routes(&routes).unwrap();
    let echo = |ns: &str| {
        lab.spawn(ns, &["python3", "-c", UDP_ECHO, "7", "8", "50"])
            .unwrap()
    };
    let (alice, bob) = (echo(&lab.b1), echo(&lab.b2));
    for (ns, pid) in [(&lab.b1, alice), (&lab.b2, bob)] {
        lab.wait_udp_bound(ns, pid, 7, Duration::from_secs(10))
            .unwrap();
    }
    // Bob's echo works through the hairpin, from alice's host like from anyone's.
    let out = lab
        .exec(
            &lab.b1,
            &["python3", "-c", UDP_ASKER, PUBLIC_IP, "30008", "wait"],
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "answered");

    // The spoofed datagram: `public:30008 -> alice's echo`.
    let sent = lab
        .exec_ok(
            &lab.b1,
            &["python3", "-c", UDP_SPOOFED, PUBLIC_IP, "30008", B1_IP, "7"],
        )
        .unwrap();
    assert_eq!(sent.trim(), "sent");
    let heard = |pid: u32| -> Vec<String> {
        wait_until("an echo service's end", Duration::from_secs(20), || {
            !lab.is_running(pid)
        });
        let log = lab.log_path(pid).unwrap();
        lab.stop(pid, Duration::ZERO).unwrap();
        let text = std::fs::read_to_string(log).unwrap();
        text.lines().map(str::to_string).collect()
    };
    let (alice_heard, bob_heard) = (heard(alice), heard(bob));
    assert_eq!(
        alice_heard,
        [format!("{PUBLIC_IP} 30008")],
        "alice's echo heard only the spoofed datagram (bob heard {bob_heard:?})"
    );
    assert_eq!(
        bob_heard.len(),
        1,
        "bob's echo heard only the real request: {bob_heard:?}"
    );
    let metrics = lab.metrics().unwrap();
    let kept = metric_value(
        &metrics,
        "srvgate_xdp_verdicts_total",
        &[("verdict", "pass_local")],
    );
    assert!(kept.is_some_and(|n| n >= 1.0), "{metrics}");
}
