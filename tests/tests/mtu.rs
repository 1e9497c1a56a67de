//! MTU: a gateway whose public leg is narrower than the client's own link (a PPPoE or
//! tunnel uplink) still delivers every byte both ways, and a narrower hop beyond the
//! gateway is found by path MTU discovery. Without help, the backend's
//! full-size segments are rewritten and then too big for the public leg, and the kernel's
//! "fragmentation needed" goes to the gateway itself: a blackhole. srvgate clamps the MSS
//! of SYN and SYN-ACK segments to what the smallest leg carries, so no such segment is
//! ever sent.

use std::time::Duration;

use srvgate_tests::*;

const BYTES: usize = 20_000_000;

#[test]
fn a_narrow_public_leg_delivers_every_byte_both_ways() {
    let Some(lab) = Lab::for_test("a_narrow_public_leg_delivers_every_byte_both_ways", "mtu")
    else {
        return;
    };
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    // Only the gateway's side: the client's link stays at 1500, as behind a router.
    lab.exec_ok(&lab.gw, &["ip", "link", "set", PUBLIC_IF, "mtu", "1400"])
        .unwrap();
    let routes = [RouteSpec::tcp(
        "alice",
        "ssh",
        &format!("{B1_IP}:22"),
        30001,
    )];
    lab.start_with_routes(&routes).unwrap();
    let log = lab.srvgate_log();
    assert!(
        log.lines()
            .any(|l| l.contains("TCP MSS clamped") && l.contains("mss=1360")),
        "{log}"
    );

    // Both ways: the backend's segments cross the narrow leg down, the client's up.
    lab.ssh_bulk_both_ways(&lab.client, PUBLIC_IP, 30001, BYTES)
        .unwrap();
}

/// A 1400-byte hop between two routers beyond the gateway: the far host announces a
/// 1460-byte MSS (its own link is 1500), so the backend's segments are too big for that
/// hop. The router before it sends "fragmentation needed" to the sender it sees, the
/// public address and port; srvgate translates the error to the backend, whose kernel
/// lowers the path MTU and resends. Without the translation the download stalls for good.
#[test]
fn a_narrow_hop_beyond_the_gateway_is_found_by_path_mtu_discovery() {
    let Some(mut lab) = Lab::for_test(
        "a_narrow_hop_beyond_the_gateway_is_found_by_path_mtu_discovery",
        "pmtu",
    ) else {
        return;
    };
    let far = lab.add_far_host(1400).unwrap();
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    let routes = [RouteSpec::tcp(
        "alice",
        "ssh",
        &format!("{B1_IP}:22"),
        30001,
    )];
    lab.start_with_routes(&routes).unwrap();
    let cmd = format!("head -c {BYTES} /dev/zero");
    let out = lab.ssh_output(&far, PUBLIC_IP, 30001, &cmd).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), BYTES, "bytes that reached the far host");
    // The backend learnt the hop's MTU from the translated error, for the far host (whose
    // own address it sees: only the client side is translated).
    let cache = lab
        .exec_ok(&lab.b1, &["ip", "route", "get", FAR_IP])
        .unwrap();
    assert!(
        cache.contains("mtu 1400"),
        "the backend's route cache: {cache}"
    );
}

/// Sends UDP datagrams of `size` bytes (IPv4 total) from a socket connected to
/// `argv[1]:argv[2]`, with DF (`df`: IP_PMTUDISC_DO) or without (`nodf`), from port
/// `argv[5]` if given, every 200 ms for at most 5 s until the socket's path MTU (IP_MTU)
/// drops below `size`; prints the path MTU it ends with.
const UDP_SENDER: &str = r#"import socket, sys, time
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_PMTUDISC_DONT, IP_MTU = 10, 2, 0, 14
host, port, size, df = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "df"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 5:
    s.bind(("0.0.0.0", int(sys.argv[5])))
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)
s.connect((host, port))
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    try:
        s.send(b"x" * (size - 28))
    except OSError:
        pass  # EMSGSIZE: the ICMP already arrived
    time.sleep(0.2)
    if not df or s.getsockopt(socket.IPPROTO_IP, IP_MTU) < size:
        break
print(s.getsockopt(socket.IPPROTO_IP, IP_MTU))
"#;

/// Receives one UDP datagram on port `argv[1]` (at most 10 s) and prints its length.
const UDP_RECEIVER: &str = r#"import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(10)
print(len(s.recv(65535)), flush=True)
"#;

/// UDP cannot be clamped: a datagram too big for its egress leg, sent with DF, must be
/// answered with "fragmentation needed" carrying that leg's MTU, quoting the datagram as
/// its sender sent it, so that the sender's kernel learns the path MTU (before srvgate the
/// kernel saw the datagram already rewritten and the ICMP reached nobody). Legs here: the
/// client's link 1400, backend 1's 1300, backend 2's 1500. Without DF the gateway's kernel
/// fragments the datagram, and the backend gets it whole.
#[test]
fn a_df_datagram_too_big_for_a_leg_teaches_its_sender_the_mtu() {
    let Some(lab) = Lab::for_test(
        "a_df_datagram_too_big_for_a_leg_teaches_its_sender_the_mtu",
        "pmtuudp",
    ) else {
        return;
    };
    for (ns, dev, mtu) in [
        (&lab.gw, PUBLIC_IF, "1400"),
        (&lab.client, "eth0", "1400"),
        (&lab.gw, PRIVATE_IFS[0], "1300"),
        (&lab.b1, "eth0", "1300"),
    ] {
        lab.exec_ok(ns, &["ip", "link", "set", dev, "mtu", mtu])
            .unwrap();
    }
    let routes = [
        RouteSpec::udp("alice", "game", &format!("{B1_IP}:5353"), 30053),
        RouteSpec::udp("bob", "game", &format!("{B2_IP}:5353"), 30054),
    ];
    lab.start_with_routes(&routes).unwrap();
    let send = |ns: &str, argv: &[&str]| -> u32 {
        let mut full = vec!["python3", "-c", UDP_SENDER];
        full.extend_from_slice(argv);
        let out = lab.exec(ns, &full, Duration::from_secs(10)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{argv:?} printed {text:?}"))
    };

    // Without DF: fragmented by the gateway's kernel, reassembled whole by backend 1. (First:
    // once the client has learnt the path MTU below, its own kernel fragments, and
    // fragments to the public address go to the gateway's kernel, not to the backend.)
    let receiver = lab
        .spawn(&lab.b1, &["python3", "-c", UDP_RECEIVER, "5353"])
        .unwrap();
    lab.wait_udp_bound(&lab.b1, receiver, 5353, Duration::from_secs(10))
        .unwrap();
    send(&lab.client, &[PUBLIC_IP, "30053", "1400", "nodf"]);
    wait_until("backend 1's receiver", Duration::from_secs(12), || {
        !lab.is_running(receiver)
    });
    let log = lab.log_path(receiver).unwrap();
    lab.stop(receiver, Duration::ZERO).unwrap();
    let got = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        got.trim(),
        "1372",
        "the datagram's payload as backend 1 got it"
    );
    let passed = lab
        .metric(
            "srvgate_xdp_verdicts_total",
            &[("verdict", "fwd_pass_frag_needed")],
        )
        .unwrap();
    assert!(passed >= 1.0, "fwd_pass_frag_needed {passed}");

    // The client's 1400-byte datagram is too big for backend 1's leg.
    let mtu = send(&lab.client, &[PUBLIC_IP, "30053", "1400", "df"]);
    assert_eq!(mtu, 1300, "the path MTU the client learnt toward the route");
    // Backend 2's 1500-byte answer is too big for the client's leg; the ICMP comes from
    // the gateway's address on backend 2's side and quotes backend 2's own port.
    let mtu = send(&lab.b2, &[CLIENT_IP, "40000", "1500", "df", "5353"]);
    assert_eq!(mtu, 1400, "the path MTU backend 2 learnt toward the client");
    let answered = lab
        .metric(
            "srvgate_xdp_verdicts_total",
            &[("verdict", "tx_frag_needed")],
        )
        .unwrap();
    assert!(answered >= 2.0, "tx_frag_needed {answered}");
}
