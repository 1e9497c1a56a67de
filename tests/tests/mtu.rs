//! MTU: a gateway whose public leg is narrower than the client's own link (a PPPoE or
//! tunnel uplink) still delivers every byte both ways. Without help, the backend's
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

    // Down: the backend's segments cross the narrow leg.
    let cmd = format!("head -c {BYTES} /dev/zero");
    let out = lab.ssh_output(&lab.client, PUBLIC_IP, 30001, &cmd).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), BYTES, "bytes that reached the client");

    // Up: the client's segments cross it the other way.
    let argv = lab.ssh_argv(PUBLIC_IP, 30001, "wc -c").unwrap();
    let ssh = shlex::try_join(argv.iter().map(String::as_str)).unwrap();
    let received = lab
        .sh(&lab.client, &format!("head -c {BYTES} /dev/zero | {ssh}"))
        .unwrap();
    assert_eq!(
        received.trim(),
        BYTES.to_string(),
        "bytes that reached the backend"
    );
}
