//! The public leg's sources and destinations (issue 24, items 1 and 3), through real
//! kernels: a datagram from outside that claims to come from the gateway's own public
//! address is refused before it can start two routes' services talking to each other; a
//! backend's packets that the program leaves to the kernel (a fragmented reply, one with IP
//! options) never leave the public leg with the backend's private address; and nothing
//! from outside reaches a private address no route names. What leaves the public leg is
//! seen on the client's side of the wire, by a packet socket there.

use std::time::Duration;

use srvgate_tests::*;

/// Sends one UDP datagram from `argv[1]:argv[2]` to `argv[3]:argv[4]` through a raw socket
/// (the IPv4 header is ours, so the source can be any address), checksum 0 ("none").
const SPOOF_UDP: &str = r#"import socket, struct, sys
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
payload = b"spoofed"
udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, (dst, 0))
print("sent")
"#;

/// Asks `argv[1]:argv[2]` over UDP once and prints `answered` or `timeout` (3 s).
const UDP_ASK: &str = r#"import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
try:
    s.recvfrom(2048)
    print("answered")
except socket.timeout:
    print("timeout")
"#;

/// Watches `eth0` for `argv[1]` seconds with a packet socket and prints one line per IPv4
/// frame: `SRC DST FRAG` (FRAG: whether it is a fragment). Prints `ready` first, once the
/// socket is bound.
const SNIFF: &str = r#"import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
n = 0
while n < 10000:
    left = end - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        frame = s.recv(65535)
    except socket.timeout:
        break
    n += 1
    ip = frame[14:34]
    if len(ip) < 20:
        continue
    frag = struct.unpack("!H", ip[6:8])[0] & 0x3fff != 0
    print(socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), int(frag), flush=True)
"#;

/// From a backend: a datagram of `argv[3]` bytes from port `argv[1]` to `argv[2]:40000`,
/// fragmented by the sender's kernel (DF clear) when it exceeds the MTU; with `argv[4]`
/// `options`, the IPv4 header carries options (four NOPs' worth: NOP NOP NOP EOL).
const BACKEND_SEND: &str = r#"import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: DF clear
if sys.argv[4] == "options":
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 1, 1, 0]))
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the echo service holds the port
s.bind(("0.0.0.0", int(sys.argv[1])))
s.sendto(b"x" * int(sys.argv[3]), (sys.argv[2], 40000))
print("sent")
"#;

fn python(lab: &Lab, ns: &str, script: &str, args: &[&str]) -> String {
    let mut argv = vec!["python3", "-c", script];
    argv.extend_from_slice(args);
    lab.exec_ok(ns, &argv).unwrap().trim().to_string()
}

/// Waits for a process started with `lab.spawn` to end and returns its output.
fn finished(lab: &Lab, pid: u32, what: &str) -> String {
    wait_until(what, Duration::from_secs(30), || !lab.is_running(pid));
    let log = lab.log_path(pid).unwrap();
    lab.stop(pid, Duration::ZERO).unwrap();
    std::fs::read_to_string(log).unwrap()
}

/// Starts [`SNIFF`] on the client's side of the public leg for `secs` seconds, once its
/// packet socket is open.
fn start_sniffer(lab: &Lab, secs: u32) -> u32 {
    let secs = secs.to_string();
    let sniff = lab
        .spawn(&lab.client, &["python3", "-c", SNIFF, &secs])
        .unwrap();
    let log = lab.log_path(sniff).unwrap();
    wait_until(
        "the client's packet socket",
        Duration::from_secs(10),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.starts_with("ready")),
    );
    sniff
}

fn verdict(lab: &Lab, name: &str) -> f64 {
    lab.metric("srvgate_xdp_verdicts_total", &[("verdict", name)])
        .unwrap()
}

/// The issue's reflection loop: one datagram from outside, `public:30002 -> public:30001`,
/// would reach alice's echo service, whose answer to `public:30002` arrives on a private
/// leg and is taken for a hairpin request to bob's route, whose answer comes back to
/// alice's, and so on (about 2 000 datagrams each, measured on the build before this
/// test). The gateway must refuse a source that is its own address on the public leg, and
/// still serve a real client.
#[test]
fn a_spoofed_public_source_starts_no_loop() {
    let Some(lab) = Lab::for_test("a_spoofed_public_source_starts_no_loop", "spoof") else {
        return;
    };
    let routes = [
        RouteSpec::udp("alice", "echo", &format!("{B1_IP}:7007"), 30001),
        RouteSpec::udp("bob", "echo", &format!("{B2_IP}:7007"), 30002),
    ];
    lab.start_with_routes(&routes).unwrap();
    let alice = lab
        .spawn(&lab.b1, &["python3", "-c", UDP_ECHO, "7007", "8", "20000"])
        .unwrap();
    let bob = lab
        .spawn(&lab.b2, &["python3", "-c", UDP_ECHO, "7007", "8", "20000"])
        .unwrap();
    for (ns, pid) in [(&lab.b1, alice), (&lab.b2, bob)] {
        lab.wait_udp_bound(ns, pid, 7007, Duration::from_secs(10))
            .unwrap();
    }

    // A real client is served.
    assert_eq!(
        python(&lab, &lab.client, UDP_ASK, &[PUBLIC_IP, "30001"]),
        "answered"
    );
    // The spoofed datagram, from the client's side.
    assert_eq!(
        python(
            &lab,
            &lab.client,
            SPOOF_UDP,
            &[PUBLIC_IP, "30002", PUBLIC_IP, "30001"]
        ),
        "sent"
    );

    let alice_got = finished(&lab, alice, "alice's echo service");
    let bob_got = finished(&lab, bob, "bob's echo service");
    assert_eq!(
        (alice_got.lines().count(), bob_got.lines().count()),
        (1, 0),
        "datagrams received by alice's and bob's echo services (only the real client's \
         one should have reached alice's)"
    );
    assert!(verdict(&lab, "drop_public_source") >= 1.0);
}

/// What the program leaves to the kernel from a backend (a fragmented reply, a packet with
/// IP options) never leaves the public leg with the backend's address, and a packet from
/// outside to a backend's own address never reaches it.
#[test]
fn nothing_crosses_the_public_leg_untranslated() {
    let Some(lab) = Lab::for_test("nothing_crosses_the_public_leg_untranslated", "leak") else {
        return;
    };
    let routes = [RouteSpec::udp(
        "alice",
        "echo",
        &format!("{B1_IP}:7007"),
        30001,
    )];
    lab.start_with_routes(&routes).unwrap();
    let echo = lab
        .spawn(&lab.b1, &["python3", "-c", UDP_ECHO, "7007", "10", "20000"])
        .unwrap();
    // Something else on backend 1 that no route names.
    let unnamed = lab
        .spawn(&lab.b1, &["python3", "-c", UDP_ECHO, "7008", "10", "20000"])
        .unwrap();
    let sniff = start_sniffer(&lab, 8);

    // The route works (and the capture sees its reply, from the public address).
    assert_eq!(
        python(&lab, &lab.client, UDP_ASK, &[PUBLIC_IP, "30001"]),
        "answered"
    );
    // The backend's fragmented reply and its packet with IP options, from the route's port.
    for (size, options) in [("3000", "plain"), ("100", "options")] {
        assert_eq!(
            python(
                &lab,
                &lab.b1,
                BACKEND_SEND,
                &["7007", CLIENT_IP, size, options]
            ),
            "sent"
        );
    }
    // From outside, to backend 1's own address, on a port no route names.
    let asked_b1 = python(&lab, &lab.client, UDP_ASK, &[B1_IP, "7008"]);
    let seen = finished(&lab, sniff, "the client's packet socket");
    let frames: Vec<(&str, &str)> = seen
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    assert!(
        frames.iter().any(|&(s, _)| s == PUBLIC_IP),
        "the capture saw nothing from the public address:\n{seen}"
    );
    let private: Vec<&(&str, &str)> = frames
        .iter()
        .filter(|(s, _)| s.starts_with("10.210.2.") || s.starts_with("10.210.3."))
        .collect();
    assert!(
        private.is_empty(),
        "frames left the public leg with a private source: {private:?}"
    );
    assert_eq!(
        asked_b1, "timeout",
        "a client asking backend 1's own address"
    );
    let unnamed_got = finished(&lab, unnamed, "backend 1's unnamed service");
    assert_eq!(
        unnamed_got.lines().count(),
        0,
        "backend 1's unnamed service received: {unnamed_got}"
    );
    let _ = finished(&lab, echo, "alice's echo service");
    assert!(verdict(&lab, "drop_to_private") >= 1.0);
    assert!(verdict(&lab, "drop_private_source") >= 2.0);

    // The egress guard is pinned on the public leg only, like the XDP links; a restart
    // keeps it; `srvgate down` takes it away with them: the same fragmented reply then
    // leaves as the kernel forwards it, which shows the guard was what dropped it.
    let pins = lab.pin_dir();
    assert!(pins.join("egress_pub0").exists());
    assert!(!pins.join("egress_priv1").exists() && !pins.join("egress_priv2").exists());
    lab.stop_srvgate().unwrap();
    let config = lab.write_file("again.toml", &config_toml(&routes)).unwrap();
    lab.start_srvgate(&config, &[]).unwrap();
    assert!(pins.join("egress_pub0").exists(), "after a restart");
    let before = verdict(&lab, "drop_private_source");
    assert_eq!(
        python(
            &lab,
            &lab.b1,
            BACKEND_SEND,
            &["7007", CLIENT_IP, "3000", "plain"]
        ),
        "sent"
    );
    wait_until(
        "the restarted guard's drops",
        Duration::from_secs(10),
        || verdict(&lab, "drop_private_source") > before,
    );
    let pid = lab.srvgate_pid().unwrap();
    let dir = pins.display().to_string();
    lab.srvgate_ctl_ok(&["down", "--pin-dir", &dir]).unwrap();
    wait_until(
        "srvgate to exit after down",
        Duration::from_secs(10),
        || !lab.is_running(pid),
    );
    lab.stop(pid, Duration::ZERO).unwrap();
    let sniff = start_sniffer(&lab, 3);
    assert_eq!(
        python(
            &lab,
            &lab.b1,
            BACKEND_SEND,
            &["7007", CLIENT_IP, "3000", "plain"]
        ),
        "sent"
    );
    let seen = finished(&lab, sniff, "the client's packet socket");
    assert!(
        seen.lines().any(|l| l.starts_with(&format!("{B1_IP} "))),
        "after `srvgate down` the kernel's forwarding should be back as it was:\n{seen}"
    );
}
