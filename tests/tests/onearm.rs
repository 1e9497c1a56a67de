//! A one-armed gateway: one NIC carries the public address and the private network (a VM,
//! or a club machine on a campus LAN). The lab's four namespaces are rewired into that
//! shape: the gateway keeps only `pub0`, which holds the public address and the private
//! network's gateway address; the client namespace becomes the LAN's router and switch
//! (its `eth0`, the gateway's link, and one port per backend in a bridge `br0`), and the
//! client of the world is a host behind that router (`add_far_host`).
//!
//! ```text
//!  sg-TAG-far 10.210.9.2 ── eth1 [sg-TAG-cli: router, br0 10.210.1.2/24] br0 ports:
//!                                   eth0 ──── pub0 (sg-TAG-gw) 10.210.1.1/24 + 10.210.2.1/24
//!                                   lan-b1 ── eth0 (sg-TAG-b1) 10.210.2.11/24, default via 10.210.2.1
//!                                   lan-b2 ── eth0 (sg-TAG-b2) 10.210.2.12/24, default via 10.210.2.1
//! ```
//!
//! Everything the gateway forwards comes in and leaves by `pub0`: the far client's
//! packets to the backend, the backend's answers (to the router), and a host inside
//! reaching the same route by the public address (hairpin), which the program tells from
//! the client by its source: on the leg's own subnet, or reached through a router.

use std::time::Duration;

use serde_json::Value;
use srvgate_tests::*;

const B2_LAN_IP: &str = "10.210.2.12";
const IPERF_BYTES: u64 = 20_000_000;

/// The lab rewired as above. Returns the far client's namespace.
fn one_armed(lab: &mut Lab) -> String {
    for argv in [
        &["ip", "link", "del", PRIVATE_IFS[0]][..],
        &["ip", "link", "del", PRIVATE_IFS[1]],
        &[
            "ip",
            "addr",
            "add",
            &format!("{GW_PRIV1_IP}/24"),
            "dev",
            PUBLIC_IF,
        ],
    ] {
        lab.exec_ok(&lab.gw, argv).unwrap();
    }
    let cli = lab.client.clone();
    for argv in [
        &[
            "ip",
            "addr",
            "del",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "eth0",
        ][..],
        &["ip", "link", "add", "br0", "type", "bridge"],
        &["ip", "link", "set", "eth0", "master", "br0"],
        &[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "br0",
        ],
        &["ip", "link", "set", "br0", "up"],
    ] {
        lab.exec_ok(&cli, argv).unwrap();
    }
    for (ns, port, ip) in [
        (lab.b1.clone(), "lan-b1", B1_IP),
        (lab.b2.clone(), "lan-b2", B2_LAN_IP),
    ] {
        lab.exec_ok(
            &cli,
            &[
                "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )
        .unwrap();
        lab.exec_ok(&cli, &["ip", "link", "set", port, "master", "br0", "up"])
            .unwrap();
        for argv in [
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"][..],
            &["ip", "link", "set", "eth0", "up"],
            &["ip", "route", "add", "default", "via", GW_PRIV1_IP],
            // Like a remote host on a wire: full checksums out, NAPI (GRO) in.
            &["ethtool", "-K", "eth0", "tx", "off", "gro", "on"],
        ] {
            lab.exec_ok(&ns, argv).unwrap();
        }
    }
    // The client of the world, behind the router; the gateway reaches it through the
    // router on the same leg.
    lab.add_far_host(1500).unwrap()
}

/// `iperf3 -J` from `ns` to the public address's `port`, `IPERF_BYTES` up (or down with
/// `-R`): the bytes the sending end wrote and the receiving end counted. The receiver's
/// count stops when the sender's end-of-test message arrives on the control connection,
/// which overtakes the data still queued in the socket buffers (seen on a loaded machine:
/// 13.5-19.2 MB of 20), so it proves traffic, not every byte: ssh does that below.
fn iperf3_bytes(lab: &Lab, ns: &str, port: u16, reverse: bool) -> (u64, u64) {
    let port = port.to_string();
    let n = IPERF_BYTES.to_string();
    let mut argv = vec!["iperf3", "-c", PUBLIC_IP, "-p", &port, "-n", &n, "-J"];
    if reverse {
        argv.push("-R");
    }
    let out = lab.exec(ns, &argv, Duration::from_secs(30)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 -J output ({e}):\n{text}"));
    assert!(
        out.status.success() && json.get("error").is_none(),
        "iperf3 {argv:?} failed ({}): {}",
        out.status,
        json["error"]
    );
    let bytes = |sum: &str| json["end"][sum]["bytes"].as_u64().unwrap_or(0);
    (bytes("sum_sent"), bytes("sum_received"))
}

#[test]
fn a_one_armed_gateway_forwards_ssh_and_iperf3_on_its_one_nic() {
    let Some(mut lab) = Lab::for_test(
        "a_one_armed_gateway_forwards_ssh_and_iperf3_on_its_one_nic",
        "onearm",
    ) else {
        return;
    };
    let far = one_armed(&mut lab);
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    lab.start_iperf3_server(&lab.b1, 5201).unwrap();
    let routes = [
        RouteSpec::tcp("alice", "ssh", &format!("{B1_IP}:22"), 30001),
        RouteSpec::tcp("alice", "iperf", &format!("{B1_IP}:5201"), 30002),
    ];
    let cfg = config_toml(&routes).replace(
        &format!(
            "private_interfaces = [\"{}\", \"{}\"]",
            PRIVATE_IFS[0], PRIVATE_IFS[1]
        ),
        &format!("private_interfaces = [\"{PUBLIC_IF}\"]"),
    );
    assert!(cfg.contains("private_interfaces = [\"pub0\"]"), "{cfg}");
    let cfg = lab.write_file("srvgate.toml", &cfg).unwrap();
    lab.start_srvgate(&cfg, &[]).unwrap();
    let log = lab.srvgate_log();
    assert!(
        log.lines()
            .any(|l| l.contains("one-armed") && l.contains(&format!("iface={PUBLIC_IF}"))),
        "{log}"
    );
    assert!(lab.xdp_attached(&lab.gw, PUBLIC_IF).unwrap());

    // The client of the world reaches the backend by the route's port, and the backend
    // sees the client's own address.
    let seen = lab
        .ssh(&far, PUBLIC_IP, 30001, "echo $SSH_CONNECTION")
        .unwrap();
    assert!(
        seen.starts_with(&format!("{FAR_IP} ")),
        "the backend saw the connection as {seen:?}"
    );
    // A host on the private network reaches the same route by the public address: from
    // the public address, so the backend answers through the gateway.
    let seen = lab
        .ssh(&lab.b2, PUBLIC_IP, 30001, "echo $SSH_CONNECTION")
        .unwrap();
    assert!(
        seen.starts_with(&format!("{PUBLIC_IP} ")),
        "the backend saw the inside connection as {seen:?}"
    );

    // Bulk both ways, bounded in bytes and time.
    for reverse in [false, true] {
        let (sent, got) = iperf3_bytes(&lab, &far, 30002, reverse);
        let way = if reverse { "down" } else { "up" };
        eprintln!("one-armed iperf3 {way}: {sent} bytes sent, {got} counted by the receiver");
        assert!(
            sent >= IPERF_BYTES && got > 0,
            "iperf3 {way}: {sent} of {IPERF_BYTES} bytes sent, {got} counted by the receiver"
        );
    }
    // Every byte, both ways, over real ssh (its own count at the far end).
    lab.ssh_bulk_both_ways(&far, PUBLIC_IP, 30001, IPERF_BYTES as usize)
        .unwrap();
    // The program forwarded on the one NIC itself (not everything through the kernel).
    let redirected = lab
        .metric("srvgate_xdp_verdicts_total", &[("verdict", "fwd_redirect")])
        .unwrap();
    assert!(redirected > 10_000.0, "fwd_redirect {redirected}");
}
