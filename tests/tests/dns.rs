//! End-to-end tests of "Names that find ports": srvgate's authoritative zone queried with
//! the real `dig` from the client namespace, and students reaching backends by name with
//! `srvgate ssh` and with plain ssh through the generated `ssh-config` snippet.
//!
//! Every test builds its own lab and needs root; it skips with a message otherwise.

use std::{collections::BTreeMap, net::UdpSocket, time::Duration};

use srvgate_tests::*;

const ZONE: &str = "lab.example";

fn routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::tcp("alice", "ssh", &format!("{B1_IP}:22"), 30001),
        RouteSpec::tcp("bob", "ssh", &format!("{B2_IP}:22"), 30002),
        RouteSpec::udp("alice", "game", &format!("{B1_IP}:7777"), 30003),
    ]
}

/// A lab with sshd on both backends, srvgate serving DNS on the public address, and the
/// client's resolver pointed at it.
fn dns_lab(tag: &str, routes: &[RouteSpec]) -> Lab {
    let lab = Lab::new(tag).expect("building the lab");
    lab.start_sshd(&lab.b1, "sg-b1").expect("sshd in b1");
    lab.start_sshd(&lab.b2, "sg-b2").expect("sshd in b2");
    lab.start_with_routes(routes).expect("starting srvgate");
    lab.set_resolver(&lab.client, PUBLIC_IP).unwrap();
    lab
}

/// One `dig` answer, split into what the tests look at.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// Records by section ("ANSWER", "AUTHORITY", "ADDITIONAL"), whitespace-normalised.
    sections: BTreeMap<String, Vec<String>>,
}

impl Dig {
    fn parse(text: &str) -> Dig {
        let mut d = Dig::default();
        let mut section: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
                d.status = rest
                    .split(',')
                    .find_map(|p| p.trim().strip_prefix("status: "))
                    .unwrap_or_default()
                    .to_string();
            } else if let Some(rest) = line.strip_prefix(";; flags: ") {
                let flags = rest.split(';').next().unwrap_or_default();
                d.flags = flags.split_whitespace().map(str::to_string).collect();
            } else if let Some(name) = line
                .strip_prefix(";; ")
                .and_then(|l| l.strip_suffix(" SECTION:"))
            {
                section = Some(name.to_string());
            } else if line.trim().is_empty() {
                section = None;
            } else if let (Some(s), false) = (&section, line.starts_with(';')) {
                let rec = line.split_whitespace().collect::<Vec<_>>().join(" ");
                d.sections.entry(s.clone()).or_default().push(rec);
            }
        }
        d
    }

    fn section(&self, name: &str) -> &[String] {
        self.sections
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn aa(&self) -> bool {
        self.flags.iter().any(|f| f == "aa")
    }
}

/// `dig @PUBLIC_IP TYPE NAME` from the client, over UDP or TCP, without recursion.
fn dig(lab: &Lab, rtype: &str, name: &str, tcp: bool) -> Dig {
    let server = format!("@{PUBLIC_IP}");
    let mut argv = vec![
        "dig",
        &server,
        "+norecurse",
        "+time=2",
        "+tries=2",
        rtype,
        name,
    ];
    if tcp {
        argv.push("+tcp");
    }
    let out = lab.exec_ok(&lab.client, &argv).expect("dig");
    let d = Dig::parse(&out);
    assert!(!d.status.is_empty(), "no status in dig output:\n{out}");
    d
}

fn soa_serial(d: &Dig, section: &str) -> u32 {
    let soa = d
        .section(section)
        .iter()
        .find(|r| r.contains(" SOA "))
        .unwrap_or_else(|| panic!("no SOA in {section}: {d:?}"));
    // name ttl IN SOA mname rname serial refresh retry expire minimum
    soa.split_whitespace().nth(6).unwrap().parse().unwrap()
}

#[test]
fn every_record_shape_over_udp_and_tcp() {
    if skip_unless_root("every_record_shape_over_udp_and_tcp") {
        return;
    }
    let lab = dns_lab("dnsrec", &routes());
    let gw_a = format!("gw.{ZONE}. 30 IN A {PUBLIC_IP}");
    for tcp in [false, true] {
        let via = if tcp { "tcp" } else { "udp" };
        // RFC 2782 form, with the target's address as glue.
        let d = dig(&lab, "SRV", &format!("_ssh._tcp.alice.{ZONE}"), tcp);
        assert_eq!(d.status, "NOERROR", "{via}: {d:?}");
        assert!(d.aa(), "{via}: AA must be set: {d:?}");
        assert!(
            !d.flags.iter().any(|f| f == "ra"),
            "{via}: RA must be clear"
        );
        assert_eq!(
            d.section("ANSWER"),
            [format!(
                "_ssh._tcp.alice.{ZONE}. 30 IN SRV 0 0 30001 gw.{ZONE}."
            )],
            "{via}"
        );
        assert!(d.section("ADDITIONAL").contains(&gw_a), "{via}: {d:?}");

        // The short form answers the same port, bob his own.
        let d = dig(&lab, "SRV", &format!("alice.ssh.{ZONE}"), tcp);
        assert_eq!(
            d.section("ANSWER"),
            [format!("alice.ssh.{ZONE}. 30 IN SRV 0 0 30001 gw.{ZONE}.")],
            "{via}"
        );
        assert!(d.section("ADDITIONAL").contains(&gw_a), "{via}: {d:?}");
        let d = dig(&lab, "SRV", &format!("_ssh._tcp.bob.{ZONE}"), tcp);
        assert_eq!(
            d.section("ANSWER"),
            [format!(
                "_ssh._tcp.bob.{ZONE}. 30 IN SRV 0 0 30002 gw.{ZONE}."
            )],
            "{via}"
        );
        // UDP routes get the _udp form.
        let d = dig(&lab, "SRV", &format!("_game._udp.alice.{ZONE}"), tcp);
        assert_eq!(
            d.section("ANSWER"),
            [format!(
                "_game._udp.alice.{ZONE}. 30 IN SRV 0 0 30003 gw.{ZONE}."
            )],
            "{via}"
        );

        // Addresses: the gateway and the short form.
        let d = dig(&lab, "A", &format!("gw.{ZONE}"), tcp);
        assert_eq!(d.section("ANSWER"), std::slice::from_ref(&gw_a), "{via}");
        let d = dig(&lab, "A", &format!("alice.ssh.{ZONE}"), tcp);
        assert_eq!(
            d.section("ANSWER"),
            [format!("alice.ssh.{ZONE}. 30 IN A {PUBLIC_IP}")],
            "{via}"
        );

        // Apex: SOA and NS.
        let d = dig(&lab, "NS", ZONE, tcp);
        assert!(d.aa());
        assert_eq!(
            d.section("ANSWER"),
            [format!("{ZONE}. 30 IN NS gw.{ZONE}.")],
            "{via}"
        );
        let d = dig(&lab, "SOA", ZONE, tcp);
        assert_eq!(d.section("ANSWER").len(), 1, "{via}: {d:?}");
        assert!(soa_serial(&d, "ANSWER") > 0);

        // A name that does not exist: NXDOMAIN with the SOA in authority.
        let d = dig(&lab, "SRV", &format!("_ssh._tcp.mallory.{ZONE}"), tcp);
        assert_eq!(d.status, "NXDOMAIN", "{via}: {d:?}");
        assert!(d.aa());
        assert!(d.section("ANSWER").is_empty());
        soa_serial(&d, "AUTHORITY");

        // An existing name without that type: NOERROR, no answer, SOA in authority.
        let d = dig(&lab, "AAAA", &format!("gw.{ZONE}"), tcp);
        assert_eq!(d.status, "NOERROR", "{via}: {d:?}");
        assert!(d.section("ANSWER").is_empty(), "{via}: {d:?}");
        soa_serial(&d, "AUTHORITY");
        // An empty non-terminal is NODATA too, not NXDOMAIN.
        let d = dig(&lab, "A", &format!("ssh.{ZONE}"), tcp);
        assert_eq!(d.status, "NOERROR", "{via}: {d:?}");

        // Outside the zone: refused, never recursion.
        let d = dig(&lab, "A", "example.com", tcp);
        assert_eq!(d.status, "REFUSED", "{via}: {d:?}");
        assert!(d.section("ANSWER").is_empty());
    }
}

/// A minimal DNS query for `name`/`qtype` with id 0x5347.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x53, 0x47, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[test]
fn garbage_and_truncated_queries_do_not_stop_the_server() {
    if skip_unless_root("garbage_and_truncated_queries_do_not_stop_the_server") {
        return;
    }
    let lab = dns_lab("dnsbad", &routes());
    let server = format!("{PUBLIC_IP}:53");
    let valid = query(&format!("gw.{ZONE}"), 1);
    let rcodes = in_netns(&lab.client, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut rcodes = Vec::new();
        let mut buf = [0u8; 1500];
        let mut ask = |payload: &[u8]| -> Option<u8> {
            sock.send_to(payload, &server).unwrap();
            sock.recv(&mut buf).ok().map(|n| {
                assert!(n >= 12, "short reply");
                buf[3] & 0x0f
            })
        };
        // Garbage of several shapes, each followed by a valid query that must be answered.
        let junk: [&[u8]; 4] = [
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"hello srvgate",
            &valid[..valid.len() - 3],
            &valid[..5],
        ];
        for j in junk {
            let _ = ask(j);
            rcodes.push(ask(&valid));
        }
        rcodes
    })
    .unwrap();
    assert_eq!(
        rcodes,
        vec![Some(0); 4],
        "a valid query after garbage must get NOERROR"
    );
    // And the truncated query itself gets FORMERR (or is dropped), never a crash.
    let pid = lab.srvgate_pid().expect("srvgate still running");
    assert!(lab.is_running(pid));
    let d = dig(&lab, "SRV", &format!("_ssh._tcp.alice.{ZONE}"), false);
    assert_eq!(d.status, "NOERROR");
}

#[test]
fn a_reloaded_route_changes_the_answer_and_the_serial() {
    if skip_unless_root("a_reloaded_route_changes_the_answer_and_the_serial") {
        return;
    }
    let mut routes = routes();
    let lab = dns_lab("dnsrel", &routes);
    let before = soa_serial(&dig(&lab, "SOA", ZONE, false), "ANSWER");
    let d = dig(&lab, "SRV", &format!("_ssh._tcp.carol.{ZONE}"), false);
    assert_eq!(d.status, "NXDOMAIN");

    routes.push(RouteSpec::tcp(
        "carol",
        "ssh",
        &format!("{B2_IP}:2222"),
        30010,
    ));
    routes.retain(|r| r.name != "bob");
    lab.write_file("srvgate.toml", &config_toml(&routes))
        .unwrap();
    let pid = lab.srvgate_pid().expect("srvgate running").to_string();
    lab.exec_ok(&lab.gw, &["kill", "-HUP", &pid]).unwrap();

    let want = format!("_ssh._tcp.carol.{ZONE}. 30 IN SRV 0 0 30010 gw.{ZONE}.");
    let mut seen = Dig::default();
    for _ in 0..50 {
        seen = dig(&lab, "SRV", &format!("_ssh._tcp.carol.{ZONE}"), false);
        if seen.section("ANSWER") == std::slice::from_ref(&want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        seen.section("ANSWER"),
        [want],
        "carol after SIGHUP: {seen:?}"
    );
    let d = dig(&lab, "SRV", &format!("_ssh._tcp.bob.{ZONE}"), true);
    assert_eq!(d.status, "NXDOMAIN", "bob was removed: {d:?}");
    let after = soa_serial(&dig(&lab, "SOA", ZONE, true), "ANSWER");
    assert!(after > before, "serial {before} -> {after} must increase");
}

#[test]
fn students_reach_backends_by_name() {
    if skip_unless_root("students_reach_backends_by_name") {
        return;
    }
    let lab = dns_lab("dnsssh", &routes());
    let bin = srvgate_bin().display().to_string();
    let key = lab.client_key().unwrap().display().to_string();
    let ssh_opts = lab.ssh_options().unwrap();
    let ssh_opts: Vec<&str> = ssh_opts.iter().map(String::as_str).collect();

    // `srvgate ssh NAME -- ssh args`, resolving through the client's system resolver.
    for (name, host) in [("alice", "sg-b1"), ("bob", "sg-b2")] {
        let target = format!("root@{name}.ssh.{ZONE}");
        let mut argv = vec![bin.as_str(), "ssh", &target, "--"];
        argv.extend_from_slice(&ssh_opts);
        argv.push("hostname");
        let out = lab.exec_ok(&lab.client, &argv).unwrap();
        assert_eq!(out.trim(), host, "srvgate ssh {target}");
    }
    // The short name with --zone, and the RFC 2782 form.
    let mut argv = vec![bin.as_str(), "ssh", "root@bob", "--zone", ZONE, "--"];
    argv.extend_from_slice(&ssh_opts);
    argv.push("hostname");
    assert_eq!(lab.exec_ok(&lab.client, &argv).unwrap().trim(), "sg-b2");
    let srv = format!("root@_ssh._tcp.alice.{ZONE}");
    let mut argv = vec![bin.as_str(), "ssh", &srv, "--"];
    argv.extend_from_slice(&ssh_opts);
    argv.push("hostname");
    assert_eq!(lab.exec_ok(&lab.client, &argv).unwrap().trim(), "sg-b1");

    // A name that does not exist says what was looked up and what came back.
    let out = lab
        .exec(
            &lab.client,
            &[&bin, "ssh", &format!("mallory.ssh.{ZONE}")],
            DEFAULT_TIMEOUT,
        )
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("_ssh._tcp.mallory.lab.example"), "{err}");
    assert!(err.contains("NXDOMAIN"), "{err}");

    // Plain ssh through the generated ~/.ssh/config snippet.
    let snippet = lab
        .exec_ok(&lab.client, &[&bin, "ssh-config", "--zone", ZONE])
        .unwrap();
    assert!(snippet.contains(&format!("Host *.ssh.{ZONE}")), "{snippet}");
    let config = format!(
        "{snippet}\nHost *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  ConnectTimeout 5\n  LogLevel ERROR\n"
    );
    let cfg = lab.write_file("ssh_config", &config).unwrap();
    let cfg = cfg.display().to_string();
    for (name, host) in [("alice", "sg-b1"), ("bob", "sg-b2")] {
        let out = lab
            .exec_ok(
                &lab.client,
                &["ssh", "-F", &cfg, &format!("{name}.ssh.{ZONE}"), "hostname"],
            )
            .unwrap();
        assert_eq!(out.trim(), host, "plain ssh {name}.ssh.{ZONE}");
    }
}
