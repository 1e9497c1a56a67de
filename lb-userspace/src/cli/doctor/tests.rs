use std::{collections::BTreeMap, net::IpAddr, path::Path};

use super::*;

const CFG: &str = r#"
[gateway]
public_interface = "eth0"
private_interfaces = ["eth1"]
public_ipv4 = "203.0.113.10"
port_range = "30000-32767"

[dns]
zone = "lab.example"
listen = ["0.0.0.0:53"]
gateway_name = "gw"

[portal]
listen = ["203.0.113.10:8443"]
"#;

fn cfg(extra: &str) -> Config {
    Config::parse(Path::new("srvgate.toml"), &format!("{CFG}{extra}")).unwrap()
}

/// A machine set up right; each test breaks one thing.
struct Fake {
    sysctls: BTreeMap<String, String>,
    xdp: BTreeMap<String, Option<XdpMode>>,
    interfaces: Vec<Interface>,
    ruleset: Option<String>,
    listening: Vec<Listener>,
    serials: BTreeMap<SocketAddr, u32>,
    delegation: Delegation,
}

impl Default for Fake {
    fn default() -> Self {
        let iface = |name: &str, ip: &str| Interface {
            name: name.into(),
            loopback: false,
            ipv4: vec![ip.parse().unwrap()],
            ipv4_nets: vec![(ip.parse().unwrap(), 24)],
        };
        Fake {
            sysctls: [
                ("ip_forward", "1"),
                ("conf/all/rp_filter", "0"),
                ("conf/eth1/rp_filter", "2"),
                ("conf/eth1/accept_local", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            xdp: [
                ("eth0", Some(XdpMode::Native)),
                ("eth1", Some(XdpMode::Native)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            interfaces: vec![iface("eth0", "203.0.113.10"), iface("eth1", "10.0.0.1")],
            ruleset: Some(String::new()),
            listening: vec![Listener {
                udp: false,
                addr: "0.0.0.0".parse().unwrap(),
                port: 22,
            }],
            serials: [("203.0.113.10:53".parse().unwrap(), 7)]
                .into_iter()
                .collect(),
            delegation: Delegation {
                ns: ["gw.lab.example".to_string()].into(),
                glue: [(
                    "gw.lab.example".to_string(),
                    "203.0.113.10".parse().unwrap(),
                )]
                .into(),
            },
        }
    }
}

impl Probe for Fake {
    fn sysctl(&self, key: &str) -> Option<String> {
        self.sysctls.get(key).cloned()
    }
    fn xdp_mode(&self, dev: &str) -> Result<Option<XdpMode>, String> {
        self.xdp
            .get(dev)
            .copied()
            .ok_or_else(|| "no such device".into())
    }
    fn interfaces(&self) -> Vec<Interface> {
        self.interfaces.clone()
    }
    fn ruleset(&self) -> Result<Option<String>, String> {
        Ok(self.ruleset.clone())
    }
    fn listening(&self) -> Vec<Listener> {
        self.listening.clone()
    }
    fn soa_serial(&self, server: SocketAddr, _zone: &str) -> Result<u32, String> {
        self.serials
            .get(&server)
            .copied()
            .ok_or_else(|| "no answer in 2 s".into())
    }
    fn delegation(&self, _parent: SocketAddr, _zone: &str) -> Result<Delegation, String> {
        Ok(self.delegation.clone())
    }
    fn etcd(&self, _cfg: &Config) -> Result<(), String> {
        Err("connect: no answer".into())
    }
}

fn failed(findings: &[Finding]) -> Vec<(&'static str, String)> {
    findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .map(|f| (f.check, f.subject.clone()))
        .collect()
}

fn parent() -> Option<SocketAddr> {
    Some("192.0.2.53:53".parse().unwrap())
}

#[test]
fn a_machine_set_up_right_passes_every_check_and_each_failure_has_a_fix() {
    let all = run_checks(&cfg(""), &Fake::default(), parent());
    assert_eq!(failed(&all), [], "{}", render(&all));
    assert!(
        all.iter().all(|f| f.status == Status::Ok),
        "{}",
        render(&all)
    );
    for check in [
        "xdp",
        "sysctl",
        "address",
        "firewall",
        "dns",
        "delegation",
        "ports",
    ] {
        assert!(all.iter().any(|f| f.check == check), "{check} ran");
    }
}

#[test]
fn each_injected_misconfiguration_is_found_with_a_one_line_fix() {
    type Break = fn(&mut Fake);
    let cases: [(&str, Break, &str, &str); 10] = [
        (
            "xdp off",
            |f| {
                f.xdp.insert("eth1".into(), None);
            },
            "xdp",
            "eth1",
        ),
        (
            "forwarding off",
            |f| {
                f.sysctls.insert("ip_forward".into(), "0".into());
            },
            "sysctl",
            "net.ipv4.ip_forward",
        ),
        // The leg's own 0 does not undo `all`: the kernel takes the larger.
        (
            "strict rp_filter",
            |f| {
                f.sysctls.insert("conf/all/rp_filter".into(), "1".into());
                f.sysctls.insert("conf/eth1/rp_filter".into(), "0".into());
            },
            "sysctl",
            "net.ipv4.conf.eth1.rp_filter",
        ),
        (
            "address on the wrong leg",
            |f| {
                f.interfaces[0].ipv4.clear();
                f.interfaces[1].ipv4.push("203.0.113.10".parse().unwrap());
                f.interfaces[1]
                    .ipv4_nets
                    .push(("203.0.113.10".parse().unwrap(), 24));
            },
            "address",
            "203.0.113.10",
        ),
        (
            "dns dropped",
            |f| {
                f.ruleset = Some("table inet fw {\n\tchain in {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tudp dport 53 drop\n\t}\n}\n".into());
            },
            "firewall",
            "udp 53",
        ),
        (
            "policy drop without the portal",
            |f| {
                f.ruleset = Some("table inet fw {\n\tchain in {\n\t\ttype filter hook input priority filter; policy drop;\n\t\ttcp dport { 22, 53 } accept\n\t\tudp dport 53 accept\n\t}\n}\n".into());
            },
            "firewall",
            "tcp 8443",
        ),
        (
            "range dropped in forward",
            |f| {
                f.ruleset = Some("table ip fw {\n\tchain fwd {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\ttcp dport 31000-31010 reject\n\t}\n}\n".into());
            },
            "firewall",
            "tcp 30000-32767",
        ),
        (
            "dns down",
            |f| {
                f.serials.clear();
            },
            "dns",
            "203.0.113.10:53",
        ),
        (
            "wrong glue",
            |f| {
                f.delegation.glue = [(
                    "gw.lab.example".to_string(),
                    "198.51.100.1".parse().unwrap(),
                )]
                .into();
            },
            "delegation",
            "gw.lab.example at 192.0.2.53:53",
        ),
        (
            "a local service in the range",
            |f| {
                f.listening.push(Listener {
                    udp: true,
                    addr: IpAddr::from([0u8; 4]),
                    port: 31337,
                });
            },
            "ports",
            "udp 31337",
        ),
    ];
    for (what, breaks, check, subject) in cases {
        let mut fake = Fake::default();
        breaks(&mut fake);
        let all = run_checks(&cfg(""), &fake, parent());
        let bad: Vec<&Finding> = all.iter().filter(|f| f.status == Status::Fail).collect();
        assert!(
            bad.iter()
                .any(|f| f.check == check && f.subject.starts_with(subject)),
            "{what}: expected {check} {subject} to fail:\n{}",
            render(&all)
        );
        for f in bad {
            assert!(!f.fix.is_empty() && !f.fix.contains('\n'), "{what}: {f:?}");
        }
    }
}

#[test]
fn generic_xdp_warns_and_a_narrowed_or_other_port_rule_is_not_a_drop_of_ours() {
    let mut fake = Fake::default();
    fake.xdp.insert("eth0".into(), Some(XdpMode::Generic));
    fake.ruleset = Some(
        "table inet fw {\n\tchain in {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tip saddr 198.51.100.0/24 drop\n\t\ttcp dport 25 drop\n\t\tct state invalid drop\n\t}\n\tchain out {\n\t\ttype filter hook output priority filter; policy drop;\n\t}\n}\n"
            .into(),
    );
    // A service on the range's ports but bound to another address is not reached.
    fake.listening.push(Listener {
        udp: false,
        addr: "10.0.0.1".parse().unwrap(),
        port: 30001,
    });
    let all = run_checks(&cfg(""), &fake, None);
    assert_eq!(failed(&all), [], "{}", render(&all));
    let xdp = all
        .iter()
        .find(|f| f.check == "xdp" && f.subject == "eth0")
        .unwrap();
    assert_eq!(xdp.status, Status::Warn);
    assert!(xdp.fix.contains("--xdp-mode native"), "{xdp:?}");
}

#[test]
fn name_servers_that_disagree_on_the_serial_fail() {
    let c = cfg("\n[dns.nameservers]\ngw1 = \"203.0.113.10\"\ngw2 = \"203.0.113.11\"\n");
    let mut fake = Fake::default();
    fake.serials.insert("203.0.113.11:53".parse().unwrap(), 5);
    let all = check_nameservers(&c, &fake);
    assert_eq!(
        failed(&all),
        [(
            "nameservers",
            "gw2.lab.example (203.0.113.11:53)".to_string()
        )],
        "{}",
        render(&all)
    );
    fake.serials.insert("203.0.113.11:53".parse().unwrap(), 7);
    assert_eq!(failed(&check_nameservers(&c, &fake)), []);
    // The parent must list both, each with its glue.
    let all = check_delegation(&c, &fake, parent().unwrap());
    assert!(
        failed(&all)
            .iter()
            .any(|(_, s)| s.contains("lab.example at")),
        "{}",
        render(&all)
    );
}

#[test]
fn proc_net_tables_are_read_in_their_byte_order() {
    let tcp = "  sl  local_address rem_address   st\n   0: 00000000:0016 00000000:0000 0A 0\n   1: 0100007F:7A69 00000000:0000 01 0\n";
    assert_eq!(
        parse_proc_net(tcp, false),
        [Listener {
            udp: false,
            addr: "0.0.0.0".parse().unwrap(),
            port: 22
        }]
    );
    let udp6 = "  sl  local_address rem_address st\n   0: 0000000000000000FFFF00000A01D20A:7A69 00000000000000000000000000000000:0000 07 0\n";
    assert_eq!(
        parse_proc_net(udp6, true),
        [Listener {
            udp: true,
            addr: "10.210.1.10".parse().unwrap(),
            port: 31337
        }]
    );
}
