//! Partial checksums: frames that reach the gateway with only the pseudo-header's sum in
//! their TCP/UDP checksum (CHECKSUM_PARTIAL: the sender, or a bridge that coalesced and
//! re-split them, left the rest to an offload that never ran) must not leave with a wrong
//! checksum. Here the public leg sits behind a Linux bridge whose ports have GRO on and the
//! veth defaults (checksum offload on), as in front of a VM or a container host: the
//! bridge coalesces the client's segments, and splits them again on the way to the
//! gateway, each with a partial checksum. Rewritten and redirected as they were, every
//! one of them reached the backend with a wrong checksum and was dropped.

use srvgate_tests::*;

const BYTES: usize = 30_000_000;

#[test]
fn a_bridge_with_gro_in_front_of_the_public_leg_delivers_every_byte() {
    let Some(lab) = Lab::for_test(
        "a_bridge_with_gro_in_front_of_the_public_leg_delivers_every_byte",
        "gro",
    ) else {
        return;
    };
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    // The client's address moves to `cl0`, a veth with the defaults (checksum offload
    // on), whose peer `cl1` and `eth0` (toward the gateway's public leg) are the ports of
    // a bridge, all with GRO on, all in the client namespace.
    let cidr = format!("{CLIENT_IP}/24");
    for argv in [
        &["ip", "addr", "del", &cidr, "dev", "eth0"][..],
        &[
            "ip", "link", "add", "cl0", "type", "veth", "peer", "name", "cl1",
        ],
        &["ip", "link", "add", "br0", "type", "bridge"],
        &["ip", "link", "set", "cl1", "master", "br0"],
        &["ip", "link", "set", "eth0", "master", "br0"],
        &["ethtool", "-K", "eth0", "tx", "on", "gro", "on"],
        &["ethtool", "-K", "cl1", "gro", "on"],
        &["ethtool", "-K", "br0", "gro", "on"],
        &["ip", "link", "set", "br0", "up"],
        &["ip", "link", "set", "cl1", "up"],
        &["ip", "link", "set", "cl0", "up"],
        &["ip", "addr", "add", &cidr, "dev", "cl0"],
        &["ip", "route", "add", "default", "via", PUBLIC_IP],
    ] {
        lab.exec_ok(&lab.client, argv).unwrap();
    }
    let routes = [RouteSpec::tcp(
        "alice",
        "ssh",
        &format!("{B1_IP}:22"),
        30001,
    )];
    lab.start_with_routes(&routes).unwrap();

    // Up, the client's data segments cross the bridge, coalesced and split again; down,
    // the backend's segments, and the client's ACKs through the bridge.
    lab.ssh_bulk_both_ways(&lab.client, PUBLIC_IP, 30001, BYTES)
        .unwrap();

    // The partial frames took the kernel's path, and the backend dropped nothing.
    let partial = lab
        .metric(
            "srvgate_xdp_verdicts_total",
            &[("verdict", "fwd_pass_partial_csum")],
        )
        .unwrap();
    assert!(partial > 0.0, "no frame was seen with a partial checksum");
    eprintln!("frames with a partial checksum, through the kernel: {partial}");
    let errors = lab.nstat_value(&lab.b1, "TcpInCsumErrors").unwrap();
    assert_eq!(errors, 0, "segments the backend dropped for their checksum");
    // The daemon says which legs may carry partial checksums (veths) and what it does.
    let log = lab.srvgate_log();
    assert!(
        log.lines()
            .any(|l| l.contains("partial checksums") && l.contains(&format!("iface={PUBLIC_IF}"))),
        "{log}"
    );
}
