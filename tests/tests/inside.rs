//! Access from inside: a host on one of the gateway's private legs reaches every route the
//! way a client outside does, by the public address and port (hairpin NAT in the XDP
//! program) and by name (srvgate's own DNS answers, whose SRV records give the public
//! port). Real sshd on the backends, real ssh, dig and `srvgate ssh` from a backend.

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
    let cfg = lab
        .write_file("srvgate.toml", &config_toml(&routes))
        .unwrap();
    lab.start_srvgate(&cfg, &[]).unwrap();

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
