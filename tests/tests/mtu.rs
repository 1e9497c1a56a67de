//! MTU: a gateway whose public leg is narrower than the client's own link (a PPPoE or
//! tunnel uplink) still delivers every byte both ways, and a narrower hop beyond the
//! gateway is found by path MTU discovery. Without help, the backend's
//! full-size segments are rewritten and then too big for the public leg, and the kernel's
//! "fragmentation needed" goes to the gateway itself: a blackhole. srvgate clamps the MSS
//! of SYN and SYN-ACK segments to what the smallest leg carries, so no such segment is
//! ever sent.

use srvgate_tests::*;

const BYTES: usize = 20_000_000;

#[test]
fn a_narrow_public_leg_delivers_every_byte_both_ways() {
    if skip_unless_root("a_narrow_public_leg_delivers_every_byte_both_ways") {
        return;
    }
    require_srvgate_bin();
    let lab = Lab::new("mtu").expect("building the lab");
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
    let cfg = lab
        .write_file("srvgate.toml", &config_toml(&routes))
        .unwrap();
    lab.start_srvgate(&cfg, &[]).unwrap();
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
    if skip_unless_root("a_narrow_hop_beyond_the_gateway_is_found_by_path_mtu_discovery") {
        return;
    }
    require_srvgate_bin();
    let mut lab = Lab::new("pmtu").expect("building the lab");
    let far = lab.add_far_host(1400).unwrap();
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    let routes = [RouteSpec::tcp(
        "alice",
        "ssh",
        &format!("{B1_IP}:22"),
        30001,
    )];
    let cfg = lab
        .write_file("srvgate.toml", &config_toml(&routes))
        .unwrap();
    lab.start_srvgate(&cfg, &[]).unwrap();
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
