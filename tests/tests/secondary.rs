//! The university's DNS as a secondary: Knot (`knotd`) in the client namespace takes the
//! zone from srvgate by AXFR with TSIG, is told of a claim by NOTIFY and follows it by
//! IXFR, while a transfer without the key (or with another) is refused and the gateway's
//! log names the client.
//!
//! Needs root; skips with a message otherwise.

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use srvgate_tests::*;

/// The transfer secret both sides are given (base64 of 32 bytes).
const SECRET: &str = "c3J2Z2F0ZSBsYWIgdHJhbnNmZXIga2V5LCAzMiBieXQ=";
const KNOT_PORT: u16 = 5300;
const ROUTES: u16 = 600;

fn knot_conf(dir: &str) -> String {
    format!(
        "server:\n    listen: {CLIENT_IP}@{KNOT_PORT}\n    rundir: {dir}\n\
         log:\n  - target: {dir}/knot.log\n    any: info\n\
         key:\n  - id: srvgate-xfr\n    algorithm: hmac-sha256\n    secret: {SECRET}\n\
         remote:\n  - id: primary\n    address: {PUBLIC_IP}@53\n    key: srvgate-xfr\n\
         acl:\n  - id: notify_from_primary\n    address: {PUBLIC_IP}\n    key: srvgate-xfr\n    action: notify\n\
         database:\n    storage: {dir}\n\
         template:\n  - id: default\n    storage: {dir}\n    zonefile-sync: -1\n    zonefile-load: none\n    journal-content: changes\n\
         zone:\n  - domain: lab.example\n    master: primary\n    acl: notify_from_primary\n"
    )
}

/// `kdig` from the client namespace: its whole output.
fn kdig(lab: &Lab, args: &[&str]) -> String {
    let mut argv = vec!["kdig", "+time=2", "+retry=0"];
    argv.extend_from_slice(args);
    let out = lab
        .exec(&lab.client, &argv, Duration::from_secs(20))
        .expect("kdig");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What Knot serves for `name`/`rtype`, short form.
fn at_knot(lab: &Lab, rtype: &str, name: &str) -> String {
    let server = format!("@{CLIENT_IP}");
    let port = KNOT_PORT.to_string();
    kdig(lab, &[&server, "-p", &port, "+short", rtype, name])
}

fn serial(short_soa: &str) -> Option<u32> {
    short_soa.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn knot_follows_the_zone_by_axfr_notify_and_ixfr_with_tsig() {
    let Some(lab) = Lab::for_test("knot_follows_the_zone", "sec") else {
        return;
    };
    let key = lab.write_file("xfr.key", &format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Enough routes that the zone takes several transfer messages (about 90 KiB), each
    // signed over the one before: Knot checks every MAC of the chain.
    let mut routes = vec![RouteSpec::tcp(
        "alice",
        "ssh",
        &format!("{B1_IP}:22"),
        30001,
    )];
    routes.extend((0..ROUTES).map(|i| {
        RouteSpec::tcp(
            &format!("u{i:04}"),
            "ssh",
            &format!("{B1_IP}:{}", 2000 + i),
            31000 + i,
        )
    }));
    let mut config = config_toml(&routes);
    config.push_str(&format!(
        "\n[dns.secondaries]\naddresses = [\"{CLIENT_IP}:{KNOT_PORT}\"]\nkey_file = \"{}\"\n",
        key.display()
    ));
    let config = lab.write_file("srvgate.toml", &config).unwrap();
    lab.start_srvgate(&config, &[]).expect("starting srvgate");

    let dir = lab.dir().join("knot");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let conf = lab.write_file("knot/knot.conf", &knot_conf(&d)).unwrap();
    let conf = conf.display().to_string();
    let knot = lab
        .spawn_logged(
            &lab.client,
            &["knotd", "-c", &conf],
            &[],
            &lab.dir().join("knotd.out"),
        )
        .expect("knotd");
    let knot_log = || std::fs::read_to_string(dir.join("knot.log")).unwrap_or_default();

    // Bootstrap: Knot has no copy, so it takes the whole zone.
    wait_until("Knot serves alice's SRV", Duration::from_secs(30), || {
        at_knot(&lab, "SRV", "_ssh._tcp.alice.lab.example").contains("30001")
    });
    assert!(lab.is_running(knot), "knotd exited: {}", knot_log());
    assert!(
        at_knot(
            &lab,
            "SRV",
            &format!("_ssh._tcp.u{:04}.lab.example", ROUTES - 1)
        )
        .contains(&(31000 + ROUTES - 1).to_string()),
        "the last message's records too"
    );
    let log = knot_log();
    // Knot signs with the key (it is the remote's); srvgate transfers only signed requests,
    // and says so.
    assert!(
        log.lines()
            .any(|l| l.contains("AXFR, incoming") && l.contains("finished")),
        "{log}"
    );
    assert!(
        lab.srvgate_log()
            .contains("zone transferred client=10.210.1.2"),
        "{}",
        lab.srvgate_log()
    );
    let gateway = kdig(
        &lab,
        &[&format!("@{PUBLIC_IP}"), "+short", "SOA", "lab.example"],
    );
    assert_eq!(
        serial(&at_knot(&lab, "SOA", "lab.example")),
        serial(&gateway),
        "same serial on both"
    );

    // A claim: NOTIFY, then IXFR. Knot's own refresh is an hour away (the SOA's), so only
    // the NOTIFY can bring the change this soon.
    let notifies = || {
        knot_log()
            .lines()
            .filter(|l| l.contains("notify, incoming"))
            .count()
    };
    let before = notifies();
    let claimed = Instant::now();
    lab.srvgate_ctl_ok(&[
        "route",
        "add",
        "carol",
        "--service",
        "ssh",
        "--backend",
        &format!("{B2_IP}:22"),
        "--port",
        "30005",
    ])
    .expect("route add carol");
    wait_until(
        "Knot notified of the claim",
        Duration::from_secs(10),
        || notifies() > before,
    );
    let notified = claimed.elapsed();
    wait_until("Knot serves carol's SRV", Duration::from_secs(10), || {
        at_knot(&lab, "SRV", "_ssh._tcp.carol.lab.example").contains("30005")
    });
    let followed = claimed.elapsed();
    eprintln!("NOTIFY seen by Knot {notified:?} after the claim returned; carol served by Knot after {followed:?}");
    let log = knot_log();
    assert!(
        log.lines()
            .any(|l| l.contains("IXFR, incoming") && l.contains("finished")),
        "the change came by IXFR: {log}"
    );
    assert!(
        !log.lines().any(|l| l.contains("fallback to AXFR")),
        "{log}"
    );
    let gateway = kdig(
        &lab,
        &[&format!("@{PUBLIC_IP}"), "+short", "SOA", "lab.example"],
    );
    assert_eq!(
        serial(&at_knot(&lab, "SOA", "lab.example")),
        serial(&gateway)
    );

    // Without the key, or with another secret: refused, and nothing of the zone.
    let server = format!("@{PUBLIC_IP}");
    let unsigned = kdig(&lab, &[&server, "AXFR", "lab.example"]);
    assert!(unsigned.contains("REFUSED"), "{unsigned}");
    assert!(!unsigned.contains("30001"), "{unsigned}");
    let wrong = kdig(
        &lab,
        &[
            &server,
            "-y",
            "hmac-sha256:srvgate-xfr:bm90IHRoZSBzZWNyZXQsIGJ1dCBhcyBsb25nIGFzIGl0",
            "AXFR",
            "lab.example",
        ],
    );
    assert!(!wrong.contains("30001"), "{wrong}");
    assert!(
        wrong.contains("NOTAUTH") || wrong.contains("BADSIG"),
        "{wrong}"
    );
    let log = lab.srvgate_log();
    assert!(
        log.contains("zone transfer refused") && log.contains(CLIENT_IP),
        "the log names the client: {log}"
    );
}
