use super::machine::{parse_port_list, parse_port_pair, Machine};
use super::*;
use crate::machine::Interface;
use lb_model::{check_route, Protocol, ProxyProtocol, RouteRequest};
use std::time::Duration;

const GOOD: &str = r#"
[gateway]
public_interface = "eth0"
private_interfaces = ["eth1"]
public_ipv4 = "203.0.113.10"
port_range = "30000-32767"

[dns]
zone = "lab.example"
listen = ["0.0.0.0:53"]
gateway_name = "gw"
ttl = 30

[[route]]
name = "alice"
service = "ssh"
backend = "10.0.0.11:22"
port = 30001

[[route]]
name = "alice"
service = "iperf"
protocol = "udp"
backend = "10.0.0.11:5201"
port = 30001
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("srvgate.toml"), text)
}

/// Every problem reported for `text`, as "field: reason" lines.
fn problems(text: &str) -> Vec<FieldError> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected field errors, got {other:?}"),
    }
}

fn with_route(route: &str) -> String {
    format!("{GOOD}\n[[route]]\n{route}\n")
}

#[test]
fn the_issue_example_parses() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.gateway.public_ipv4, Ipv4Addr::new(203, 0, 113, 10));
    assert_eq!(
        c.gateway.port_range,
        PortRange {
            first: 30000,
            last: 32767
        }
    );
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].protocol, Protocol::Tcp);
    assert_eq!(c.routes[1].protocol, Protocol::Udp);
    let dns = c.dns.unwrap();
    assert_eq!(dns.zone, "lab.example");
    assert_eq!(dns.ttl, 30);
}

#[test]
fn defaults_apply() {
    let c = parse(
        r#"
[gateway]
public_interface = "eth0"
private_interfaces = ["eth1"]
public_ipv4 = "203.0.113.10"
[dns]
zone = "Lab.Example."
"#,
    )
    .unwrap();
    assert_eq!(
        c.gateway.port_range,
        PortRange {
            first: 30000,
            last: 32767
        }
    );
    let dns = c.dns.unwrap();
    assert_eq!(dns.zone, "lab.example");
    assert_eq!(dns.gateway_name, "gw");
    assert_eq!(
        dns.listen,
        vec!["0.0.0.0:53".parse::<SocketAddr>().unwrap()]
    );
    assert!(c.routes.is_empty());
}

#[test]
fn a_port_outside_the_range_names_the_field() {
    let p = problems(&with_route(
        "name = \"bob\"\nservice = \"ssh\"\nbackend = \"10.0.0.12:22\"\nport = 40000",
    ));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].field, "route[3].port");
    assert!(
        p[0].reason
            .contains("outside gateway.port_range 30000-32767"),
        "{}",
        p[0]
    );
}

#[test]
fn a_port_used_twice_names_both_routes() {
    let p = problems(&with_route(
        "name = \"bob\"\nservice = \"ssh\"\nbackend = \"10.0.0.12:22\"\nport = 30001",
    ));
    assert_eq!(p[0].field, "route[3].port");
    assert!(p[0].reason.contains("route[1]"), "{}", p[0]);
}

#[test]
fn the_same_backend_twice_is_refused() {
    let p = problems(&with_route(
        "name = \"bob\"\nservice = \"ssh\"\nbackend = \"10.0.0.11:22\"\nport = 30005",
    ));
    assert_eq!(p[0].field, "route[3].backend");
}

#[test]
fn a_duplicate_route_is_refused() {
    let p = problems(&with_route(
        "name = \"alice\"\nservice = \"ssh\"\nbackend = \"10.0.0.12:22\"\nport = 30005",
    ));
    assert_eq!(p[0].field, "route[3].name");
    assert!(p[0].reason.contains("alice/ssh/tcp"), "{}", p[0]);
}

/// The file's clashes are the route table's (the one owner of uniqueness), in its words,
/// plus which earlier route[N] holds the name, port or backend.
#[test]
fn clashes_are_the_route_tables_and_name_the_earlier_route() {
    use crate::table::routes::{RouteTable, Source};
    let mut table = RouteTable::new();
    for r in parse(GOOD).unwrap().routes {
        table
            .insert(r, Source::Config, std::time::UNIX_EPOCH, None)
            .unwrap();
    }
    for (name, backend, port, field) in [
        ("alice", "10.0.0.12:22", 30005, "name"),
        ("bob", "10.0.0.12:22", 30001, "port"),
        ("bob", "10.0.0.11:22", 30005, "backend"),
    ] {
        let p = problems(&with_route(&format!(
            "name = \"{name}\"\nservice = \"ssh\"\nbackend = \"{backend}\"\nport = {port}"
        )));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, format!("route[3].{field}"));
        // The same route alone in a file, as the table would be offered it.
        let header = GOOD.split("[[route]]").next().unwrap();
        let route = parse(&format!(
            "{header}[[route]]\nname = \"{name}\"\nservice = \"ssh\"\nbackend = \"{backend}\"\nport = {port}\n"
        ))
        .unwrap()
        .routes
        .remove(0);
        let clash = table.check_conflicts(&route, None).unwrap_err();
        assert_eq!(clash.error.field, field);
        assert_eq!(p[0].reason, format!("{}; see route[1]", clash.error.reason));
    }
    // What the table allows, the file does too: a tcp and a udp route may share a port
    // and a backend.
    let c = parse(&with_route(
        "name = \"alice\"\nservice = \"ssh-udp\"\nprotocol = \"udp\"\nbackend = \"10.0.0.11:22\"\nport = 30002",
    ));
    assert!(c.is_ok(), "{c:?}");
}

#[test]
fn bad_labels_addresses_and_protocols_are_all_reported() {
    let p = problems(&with_route(
        "name = \"Al_ice\"\nservice = \"-ssh\"\nprotocol = \"sctp\"\nbackend = \"10.0.0.300:22\"\nport = 30009",
    ));
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "route[3].name",
            "route[3].service",
            "route[3].protocol",
            "route[3].backend"
        ]
    );
}

#[test]
fn gateway_fields_are_checked() {
    let text = GOOD
        .replace("203.0.113.10", "203.0.113")
        .replace("30000-32767", "32767-30000")
        .replace("[\"eth1\"]", "[\"eth1\", \"eth0\", \"eth1\"]");
    let p = problems(&text);
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert!(fields.contains(&"gateway.public_ipv4"), "{fields:?}");
    assert!(fields.contains(&"gateway.port_range"), "{fields:?}");
    // eth0, the public interface, may be a private leg too (one-armed); eth1 twice may not.
    assert!(
        !fields.contains(&"gateway.private_interfaces[2]"),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"gateway.private_interfaces[3]"),
        "{fields:?}"
    );
}

/// One NIC carrying the public address and the private network (a VM, a club machine on
/// a campus LAN): the public interface listed among the private ones is one leg with both
/// roles, and the public address on it is where it belongs.
#[test]
fn a_one_armed_gateway_is_one_leg_with_both_roles() {
    let one_armed = GOOD.replace("[\"eth1\"]", "[\"eth0\"]");
    let c = parse(&one_armed).unwrap();
    assert_eq!(
        crate::kernel::dataplane::leg_roles(&c.gateway),
        [(
            "eth0".to_string(),
            lb_common::ROLE_PUBLIC | lb_common::ROLE_PRIVATE
        )]
    );
    let mut m = machine();
    m.interfaces[1].ipv4.push("10.0.0.1".parse().unwrap());
    assert_eq!(c.check_against(&m), (vec![], vec![]));
    // With a second private leg, that one is private only.
    let c = parse(&GOOD.replace("[\"eth1\"]", "[\"eth0\", \"eth1\"]")).unwrap();
    assert_eq!(
        crate::kernel::dataplane::leg_roles(&c.gateway),
        [
            (
                "eth0".to_string(),
                lb_common::ROLE_PUBLIC | lb_common::ROLE_PRIVATE
            ),
            ("eth1".to_string(), lb_common::ROLE_PRIVATE)
        ]
    );
    // No private leg at all says how a one-armed gateway is written.
    let p = problems(&GOOD.replace("[\"eth1\"]", "[]"));
    assert_eq!(p[0].field, "gateway.private_interfaces");
    assert!(p[0].reason.contains("one-armed"), "{}", p[0]);
}

#[test]
fn backend_on_the_public_address_is_refused() {
    let p = problems(&with_route(
        "name = \"bob\"\nservice = \"ssh\"\nbackend = \"203.0.113.10:22\"\nport = 30005",
    ));
    assert_eq!(p[0].field, "route[3].backend");
}

#[test]
fn unknown_keys_and_syntax_errors_name_the_file() {
    let err = parse(&GOOD.replace("ttl = 30", "tll = 30")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("srvgate.toml:"), "{msg}");
    assert!(msg.contains("tll"), "{msg}");
    let err = parse("[gateway").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

#[test]
fn reclaim_after_with_cluster_is_at_least_a_minute() {
    let text = |after: &str| {
        format!(
            "{}[cluster]\netcd = [\"http://10.0.0.2:2379\"]\ngateway_id = \"gw1\"\ninsecure_http = true\n",
            GOOD.replacen(
                "[gateway]\n",
                &format!("[gateway]\nreclaim_after = \"{after}\"\n"),
                1
            )
        )
    };
    let c = parse(&text("14d")).unwrap();
    assert_eq!(
        c.gateway.reclaim_after,
        Some(Duration::from_secs(14 * 86400))
    );
    assert!(c.cluster.is_some());
    let p = problems(&text("30s"));
    assert_eq!(p[0].field, "gateway.reclaim_after", "{p:?}");
    assert!(p[0].reason.contains("[cluster]"), "{p:?}");
}

#[test]
fn reclaim_after_is_a_duration_and_off_when_absent() {
    assert_eq!(parse(GOOD).unwrap().gateway.reclaim_after, None);
    let with = |v: &str| {
        GOOD.replace(
            "[gateway]\n",
            &format!("[gateway]\nreclaim_after = \"{v}\"\n"),
        )
    };
    assert_eq!(
        parse(&with("14d")).unwrap().gateway.reclaim_after,
        Some(Duration::from_secs(14 * 86400))
    );
    for bad in ["14", "two weeks", "0d", "d", "-3d"] {
        let p = problems(&with(bad));
        assert_eq!(p[0].field, "gateway.reclaim_after", "{bad}: {p:?}");
    }
}

#[test]
fn http_routing_has_defaults_and_needs_dns() {
    assert_eq!(parse(GOOD).unwrap().http, None, "off when absent");
    let c = parse(&format!("{GOOD}\n[http]\n")).unwrap();
    assert_eq!(
        c.http,
        Some(Http {
            listen: vec!["0.0.0.0:80".parse().unwrap()],
            service: "http".into(),
            limits: WebLimits::default(),
            forwarded_for: false,
        })
    );
    let c = parse(&format!(
        "{GOOD}\n[http]\nlisten = [\"203.0.113.10:8080\"]\nservice = \"Web\"\n"
    ))
    .unwrap();
    assert_eq!(c.http.unwrap().service, "web");

    let fields =
        |text: &str| -> Vec<String> { problems(text).into_iter().map(|p| p.field).collect() };
    let bad = format!("{GOOD}\n[http]\nlisten = [\"0.0.0.0\", \"[::]:80\"]\nservice = \"_x\"\n");
    assert_eq!(fields(&bad), ["http.listen[1]", "http.service"]);
    assert_eq!(
        fields(&format!("{GOOD}\n[http]\nlisten = []\n")),
        ["http.listen"]
    );
    let no_dns = GOOD.replace("[dns]\nzone = \"lab.example\"\nlisten = [\"0.0.0.0:53\"]\ngateway_name = \"gw\"\nttl = 30\n", "");
    assert!(!no_dns.contains("[dns]"));
    assert_eq!(fields(&format!("{no_dns}\n[http]\n")), ["http"]);
}

#[test]
fn users_portal_and_cooldown_are_read_and_checked() {
    let cfg = parse(&format!(
        "{GOOD}\n[portal]\nlisten = [\"10.0.0.1:8443\"]\n\n[[user]]\nname = \"carol\"\nbackends = [\"10.0.0.13\", \"10.0.2.0/28:22\"]\nmax_routes = 2\n"
    ))
    .unwrap();
    assert_eq!(cfg.gateway.port_cooldown, DEFAULT_PORT_COOLDOWN);
    let p = cfg.portal.unwrap();
    assert_eq!(p.listen, ["10.0.0.1:8443".parse::<SocketAddr>().unwrap()]);
    assert_eq!((p.cert, p.key), (None, None));
    assert_eq!(cfg.users.len(), 1);
    assert_eq!(cfg.users[0].max_routes, 2);
    assert_eq!(cfg.users[0].backends[1].to_string(), "10.0.2.0/28:22");

    let off = GOOD.replace("[gateway]\n", "[gateway]\nport_cooldown = \"0s\"\n");
    assert_eq!(parse(&off).unwrap().gateway.port_cooldown, Duration::ZERO);

    let bad = format!(
        "{}\n[portal]\nlisten = []\ncert = \"/etc/x.pem\"\n\n[[user]]\nname = \"Carol\"\n\n[[user]]\nname = \"dave\"\nbackends = [\"127.0.0.1\"]\n\n[[user]]\nname = \"erin\"\nmax_routes = 5000\n",
        GOOD.replace("[gateway]\n", "[gateway]\nport_cooldown = \"soon\"\n")
    );
    let fields: Vec<String> = problems(&bad).into_iter().map(|p| p.field).collect();
    for f in [
        "gateway.port_cooldown",
        "portal.listen",
        "portal.cert",
        "user[1].name",
        "user[2].backends",
        "user[3].max_routes",
    ] {
        assert!(
            fields.iter().any(|x| x == f),
            "{f} not reported: {fields:?}"
        );
    }
}

// Issue 10: what `run` used to refuse only after `check` had said ok, and what neither
// refused although it breaks the gateway.

#[test]
fn the_gateway_s_own_ports_stay_out_of_port_range() {
    let p = problems(
        &GOOD
            .replace("30000-32767", "52-81")
            .replace("port = 30001", "port = 60"),
    );
    let reasons: Vec<String> = p
        .iter()
        .filter(|p| p.field == "gateway.port_range")
        .map(|p| p.reason.clone())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("port 53") && r.contains("dns.listen[1]")),
        "{p:?}"
    );
    let p = problems(&GOOD.replace("30000-32767", "1-65535"));
    assert!(
        p.iter().any(|p| p.field == "gateway.port_range"
            && p.reason.contains("port 22")
            && p.reason.contains("sshd")),
        "{p:?}"
    );
}

#[test]
fn listeners_cannot_share_a_port() {
    let text = format!(
        "{GOOD}\n[http]\nlisten = [\"203.0.113.10:53\"]\n[metrics]\nlisten = \"0.0.0.0:53\"\n"
    );
    let p = problems(&text);
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert!(fields.contains(&"http.listen[1]"), "{p:?}");
    assert!(fields.contains(&"metrics.listen[1]"), "{p:?}");
    assert!(p[0].reason.contains("dns.listen[1]"), "{p:?}");
    // Another port, or another address without a wildcard, is fine.
    let text = GOOD.replace("0.0.0.0:53", "203.0.113.10:53")
        + "\n[metrics]\nlisten = \"127.0.0.1:53\"\n[http]\nlisten = [\"203.0.113.10:80\"]\n";
    parse(&text).unwrap();
}

#[test]
fn dns_fields_run_would_refuse_are_refused_here() {
    let p = problems(&GOOD.replace("listen = [\"0.0.0.0:53\"]", "listen = []"));
    assert_eq!(p[0].field, "dns.listen");
    let long = format!("{}example", "a.".repeat(121));
    let p = problems(&GOOD.replace("\"lab.example\"", &format!("\"{long}\"")));
    assert_eq!(p[0].field, "dns.zone");
    assert!(p[0].reason.contains("at most 120"), "{}", p[0]);
    let longest = format!("{}.{}.ex", "a".repeat(58), "b".repeat(58));
    assert_eq!(longest.len(), MAX_ZONE_LEN);
    parse(&GOOD.replace("\"lab.example\"", &format!("\"{longest}\""))).unwrap();
    let p = problems(&GOOD.replace("ttl = 30", "ttl = 4294967295"));
    assert_eq!(p[0].field, "dns.ttl");
    parse(&GOOD.replace("ttl = 30", "ttl = 2147483647")).unwrap();
}

#[test]
fn loopback_and_this_network_backends_are_refused() {
    for backend in ["127.0.0.1:22", "127.1.2.3:80", "0.1.2.3:22"] {
        let p = problems(&with_route(&format!(
            "name = \"bob\"\nservice = \"ssh\"\nbackend = \"{backend}\"\nport = 30005"
        )));
        assert_eq!(p[0].field, "route[3].backend", "{backend}");
    }
    let api = RouteRequest {
        name: "bob".into(),
        service: "ssh".into(),
        backend: "127.0.0.1:22".into(),
        backends: vec![],
        ..Default::default()
    };
    let e = check_route(&api, None, None, &|f| f.to_string()).unwrap_err();
    assert_eq!(e[0].field, "backend");
}

#[test]
fn a_loopback_public_address_is_refused() {
    let p = problems(&GOOD.replace("203.0.113.10\"\nport_range", "127.0.0.1\"\nport_range"));
    assert_eq!(p[0].field, "gateway.public_ipv4");
}

fn iface(name: &str, loopback: bool, ipv4: &[&str]) -> Interface {
    Interface {
        name: name.into(),
        loopback,
        ipv4: ipv4.iter().map(|a| a.parse().unwrap()).collect(),
        ipv4_nets: ipv4.iter().map(|a| (a.parse().unwrap(), 32)).collect(),
    }
}

fn machine() -> Machine {
    Machine {
        interfaces: vec![
            iface("lo", true, &["127.0.0.1"]),
            iface("eth0", false, &["203.0.113.10"]),
            iface("eth1", false, &["10.0.0.1"]),
        ],
        ephemeral: Some(PortRange {
            first: 32768,
            last: 60999,
        }),
        reserved: vec![],
    }
}

#[test]
fn the_machine_checks() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.check_against(&machine()), (vec![], vec![]));

    let lo = parse(&GOOD.replace("[\"eth1\"]", "[\"lo\"]")).unwrap();
    let (errors, _) = lo.check_against(&machine());
    assert_eq!(errors[0].field, "gateway.private_interfaces[1]");
    assert!(errors[0].reason.contains("loopback"), "{}", errors[0]);

    let own = parse(&GOOD.replace("203.0.113.10", "10.0.0.1")).unwrap();
    let (errors, warnings) = own.check_against(&machine());
    assert_eq!(errors[0].field, "gateway.public_ipv4");
    assert!(errors[0].reason.contains("\"eth1\""), "{}", errors[0]);
    assert_eq!(warnings.len(), 1);

    let standby = parse(&GOOD.replace("203.0.113.10", "203.0.113.11")).unwrap();
    let (errors, warnings) = standby.check_against(&machine());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(warnings[0].field, "gateway.public_ipv4");

    let wide = parse(&GOOD.replace("30000-32767", "30000-40000")).unwrap();
    let (errors, _) = wide.check_against(&machine());
    assert_eq!(errors[0].field, "gateway.port_range");
    assert!(
        errors[0].reason.contains("32768-60999") && errors[0].reason.contains("30000-40000"),
        "{}",
        errors[0]
    );
    let mut reserved = machine();
    reserved.reserved = parse_port_list("32768-39999, 40000\n");
    assert_eq!(wide.check_against(&reserved), (vec![], vec![]));
}

#[test]
fn an_unknown_interface_is_named_with_the_ones_that_exist() {
    let typo = parse(&GOOD.replace("[\"eth1\"]", "[\"eht1\"]")).unwrap();
    let (errors, _) = typo.check_against(&machine());
    assert_eq!(errors[0].field, "gateway.private_interfaces[1]");
    assert_eq!(
        errors[0].reason,
        "no network interface named \"eht1\" on this machine, which has lo, eth0, eth1; did you mean \"eth1\"?"
    );
    let far = parse(&GOOD.replace("[\"eth1\"]", "[\"wlan7\"]")).unwrap();
    let (errors, _) = far.check_against(&machine());
    assert!(
        errors[0].reason.ends_with("which has lo, eth0, eth1"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_listener_among_the_ephemeral_ports_is_a_warning() {
    let c = parse(&format!(
        "{GOOD}\n[metrics]\nlisten = [\"127.0.0.1:40000\"]\n"
    ))
    .unwrap();
    let (errors, warnings) = c.check_against(&machine());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(warnings[0].field, "metrics.listen[1]");
    assert!(
        warnings[0].reason.contains("ip_local_reserved_ports=40000"),
        "{}",
        warnings[0]
    );
    let mut reserved = machine();
    reserved.reserved = parse_port_list("40000");
    assert_eq!(c.check_against(&reserved), (vec![], vec![]));
}

#[test]
fn kernel_port_lists_parse() {
    assert_eq!(
        parse_port_pair("32768\t60999\n"),
        Some(PortRange {
            first: 32768,
            last: 60999
        })
    );
    assert_eq!(parse_port_pair(""), None);
    assert_eq!(parse_port_list("\n"), vec![]);
    assert_eq!(
        parse_port_list("1-2,5"),
        vec![
            PortRange { first: 1, last: 2 },
            PortRange { first: 5, last: 5 }
        ]
    );
}

#[test]
fn a_service_leaves_room_for_its_underscore() {
    let route = |service: &str| {
        with_route(&format!(
            "name = \"bob\"\nservice = \"{service}\"\nbackend = \"10.0.0.12:22\"\nport = 30005"
        ))
    };
    parse(&route(&"s".repeat(62))).unwrap();
    let p = problems(&route(&"s".repeat(63)));
    assert_eq!(p[0].field, "route[3].service");
}

#[test]
fn web_limits_and_https_have_defaults_and_are_checked() {
    let c = parse(&format!(
        "{GOOD}\n[http]\nmax_connections = 10\nidle_timeout = \"2s\"\nforwarded_for = true\n\
         [https]\nmax_connections_per_client = 3\n"
    ))
    .unwrap();
    let http = c.http.unwrap();
    assert_eq!(
        (
            http.limits.max_connections,
            http.limits.idle_timeout,
            http.forwarded_for
        ),
        (10, Duration::from_secs(2), true)
    );
    let https = c.https.unwrap();
    assert_eq!(https.listen, vec!["0.0.0.0:443".parse().unwrap()]);
    assert_eq!(https.service, "https");
    assert_eq!(https.limits.max_connections_per_client, 3);
    assert_eq!(https.limits.header_timeout, Duration::from_secs(10));
    let bad = format!(
        "{GOOD}\n[http]\nmax_connections = 0\nheader_timeout = \"soon\"\n\
         [https]\nservice = \"http\"\nidle_timeout = \"0s\"\n"
    );
    assert_eq!(
        fields(&bad),
        [
            "http.max_connections",
            "http.header_timeout",
            "https.idle_timeout",
            "https.service"
        ]
    );
}

#[test]
fn proxy_protocol_is_a_route_option() {
    let text = GOOD.replacen("[[route]]", "[[route]]\nproxy_protocol = \"v2\"", 1);
    let c = parse(&text).unwrap();
    assert_eq!(c.routes[0].proxy_protocol, Some(ProxyProtocol::V2));
    assert!(c.routes[1..].iter().all(|r| r.proxy_protocol.is_none()));
    let bad = GOOD.replacen("[[route]]", "[[route]]\nproxy_protocol = \"v3\"", 1);
    assert_eq!(fields(&bad), ["route[1].proxy_protocol"]);
}

fn fields(text: &str) -> Vec<String> {
    problems(text).into_iter().map(|p| p.field).collect()
}

/// `[http]` and `[https]` go through one check: the same mistakes give the same problems,
/// each under its own section.
#[test]
fn http_and_https_sections_are_checked_alike() {
    let base = "[gateway]\npublic_interface = \"eth0\"\nprivate_interfaces = [\"eth1\"]\npublic_ipv4 = \"203.0.113.10\"\n";
    let bad_section = |name: &str| {
        format!(
            "{base}[{name}]\nlisten = []\nservice = \"Bad_Label\"\nmax_connections = 0\nheader_timeout = \"0s\"\nidle_timeout = \"soon\"\n"
        )
    };
    let fields = |name: &str| -> Vec<(String, String)> {
        problems(&bad_section(name))
            .into_iter()
            .map(|p| (p.field.replacen(name, "SECTION", 1), p.reason))
            .collect()
    };
    let http = fields("http");
    assert_eq!(
        http.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        [
            "SECTION",
            "SECTION.listen",
            "SECTION.service",
            "SECTION.max_connections",
            "SECTION.header_timeout",
            "SECTION.idle_timeout"
        ]
    );
    let https: Vec<_> = fields("https")
        .into_iter()
        .map(|(f, r)| (f, r.replace("0.0.0.0:443", "0.0.0.0:80")))
        .collect();
    assert_eq!(http, https);
}

fn with_nameservers(table: &str) -> String {
    GOOD.replacen(
        "ttl = 30\n",
        &format!("ttl = 30\n\n[dns.nameservers]\n{table}\n"),
        1,
    )
}

#[test]
fn nameservers_are_labels_with_host_addresses() {
    let c = parse(&with_nameservers(
        "GW2 = \"198.51.100.22\"\ngw1 = \"198.51.100.21\"\ngw = \"203.0.113.10\"",
    ))
    .unwrap();
    let want: Vec<(String, std::net::Ipv4Addr)> = vec![
        ("gw".into(), "203.0.113.10".parse().unwrap()),
        ("gw1".into(), "198.51.100.21".parse().unwrap()),
        ("gw2".into(), "198.51.100.22".parse().unwrap()),
    ];
    let mut got = c.dns.unwrap().nameservers;
    got.sort();
    assert_eq!(got, want);
    assert!(parse(GOOD).unwrap().dns.unwrap().nameservers.is_empty());

    let p = problems(&with_nameservers(
        "\"bad label\" = \"198.51.100.1\"\nns1 = \"not-an-address\"\nns2 = \"127.0.0.1\"\ngw = \"198.51.100.9\"",
    ));
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "dns.nameservers.bad label",
            "dns.nameservers.gw",
            "dns.nameservers.ns1",
            "dns.nameservers.ns2"
        ],
        "{p:?}"
    );
    assert!(p[1].reason.contains("dns.gateway_name"), "{p:?}");
    assert!(p[2].reason.contains("not an IPv4 address"), "{p:?}");

    let many: String = (0..=MAX_NAMESERVERS)
        .map(|i| format!("ns{i} = \"198.51.100.{}\"\n", i + 1))
        .collect();
    let p = problems(&with_nameservers(&many));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].field, "dns.nameservers");
}

/// A config route whose backend is the gateway itself (any interface's address, not only a
/// leg's; an etcd endpoint's) or link-local is refused by the machine check (`check`,
/// `run`, SIGHUP), naming the route's field and the rule.
#[test]
fn a_config_route_to_the_gateway_itself_is_refused() {
    let mut m = machine();
    m.interfaces.push(iface("docker0", false, &["172.17.0.1"]));
    for (backend, rule) in [
        ("10.0.0.1:22", "interface \"eth1\""),
        ("172.17.0.1:2375", "interface \"docker0\""),
        ("169.254.169.254:80", "link-local"),
        ("250.0.0.1:80", "reserved"),
    ] {
        let c = parse(&GOOD.replace("10.0.0.11:22", backend)).unwrap();
        let (errors, _) = c.check_against(&m);
        assert_eq!(errors.len(), 1, "{backend}: {errors:?}");
        assert_eq!(errors[0].field, "route[1].backend", "{backend}");
        assert!(
            errors[0].reason.contains(backend) && errors[0].reason.contains(rule),
            "{}",
            errors[0]
        );
    }
    let cluster = format!(
        "{}\n[cluster]\netcd = [\"http://10.0.9.2:2379\"]\ngateway_id = \"gw1\"\ninsecure_http = true\n",
        GOOD.replace("10.0.0.11:22", "10.0.9.2:2379")
            .replace("[dns]", "[dns]\n")
    );
    let c = parse(&cluster).unwrap();
    let (errors, _) = c.check_against(&machine());
    assert_eq!(errors[0].field, "route[1].backend");
    assert!(errors[0].reason.contains("etcd endpoint"), "{}", errors[0]);
}

#[test]
fn the_backend_rule_names_what_holds_the_address() {
    let own = OwnAddresses::new(
        &[iface("eth1", false, &["10.0.0.1"])],
        &[
            "http://10.0.9.2:2379".into(),
            "https://etcd.lab:2379".into(),
        ],
    );
    let ok = |b: &str| check_backend(b.parse().unwrap(), &own);
    assert_eq!(ok("10.0.0.11:22"), Ok(()));
    assert!(ok("10.0.0.1:22").unwrap_err().contains("\"eth1\""));
    assert!(ok("10.0.9.2:2379")
        .unwrap_err()
        .contains("http://10.0.9.2:2379"));
    for bad in [
        "169.254.0.1:1",
        "240.0.0.1:1",
        "255.255.255.255:1",
        "127.0.0.2:1",
        "0.1.2.3:1",
        "224.0.0.1:1",
    ] {
        assert!(ok(bad).is_err(), "{bad}");
    }
    assert_eq!(
        check_backend("10.0.0.1:22".parse().unwrap(), &OwnAddresses::default()),
        Ok(()),
        "only what the gateway holds is its own"
    );
}

/// The one list of addresses no host has: the first and last address of each range are in
/// it, the neighbours just outside are not.
#[test]
fn addresses_no_host_has() {
    for (net, len, _) in NOT_A_HOST {
        let first = u32::from(net);
        let last = first | (u32::MAX >> len);
        assert!(not_a_host(first.into()).is_some(), "{net}/{len}");
        assert!(not_a_host(last.into()).is_some(), "{net}/{len}");
    }
    for ok in [
        "1.0.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "223.255.255.255",
        "10.0.0.1",
    ] {
        assert_eq!(not_a_host(ok.parse().unwrap()), None, "{ok}");
    }
    assert!(not_a_host("255.255.255.255".parse().unwrap())
        .unwrap()
        .contains("broadcast"));
}

#[test]
fn a_route_may_name_a_pool_with_weights() {
    let c = parse(&with_route(
        "name = \"judge\"\nservice = \"http\"\nbackends = [\"10.0.0.21:80\", \"10.0.0.22:80 weight=2\", \"10.0.0.23:80 drained\"]\nport = 30010",
    ))
    .unwrap();
    let r = &c.routes[2];
    assert_eq!(
        r.backends.to_string(),
        "10.0.0.21:80, 10.0.0.22:80 weight=2, 10.0.0.23:80 drained"
    );
    assert_eq!(r.backends.members()[1].weight, 2);
    // The one-backend form is a pool of one.
    assert!(c.routes[0].backends.is_single());
}

#[test]
fn a_pools_problems_name_the_route_and_the_member() {
    let p = problems(&with_route(
        "name = \"judge\"\nservice = \"http\"\nbackend = \"10.0.0.21:80\"\nbackends = [\"10.0.0.22:80\"]\nport = 30010",
    ));
    assert_eq!(p[0].field, "route[3].backends");
    assert!(
        p[0].reason.contains("judge/http names both"),
        "{}",
        p[0].reason
    );
    let p = problems(&with_route(
        "name = \"judge\"\nservice = \"http\"\nport = 30010",
    ));
    assert_eq!(p[0].field, "route[3].backend");
    assert!(p[0].reason.contains("missing"), "{}", p[0].reason);
    for (pool, says) in [
        ("[\"10.0.0.21:80\", \"10.0.0.21:80\"]", "named twice"),
        ("[\"10.0.0.21:80\", \"127.0.0.1:80\"]", "127.0.0.1"),
        ("[\"10.0.0.21:80 weight=999\"]", "weight"),
        ("[]", "missing"),
    ] {
        let p = problems(&with_route(&format!(
            "name = \"judge\"\nservice = \"http\"\nbackends = {pool}\nport = 30010"
        )));
        assert!(p[0].field.starts_with("route[3].backend"), "{pool}: {p:?}");
        assert!(p[0].reason.contains(says), "{pool}: {}", p[0].reason);
    }
    // A member that is another route's backend: the table's rule, naming the holder.
    let p = problems(&with_route(
        "name = \"judge\"\nservice = \"http\"\nbackends = [\"10.0.0.21:80\", \"10.0.0.11:22\"]\nport = 30010",
    ));
    assert_eq!(p[0].field, "route[3].backends");
    assert!(
        p[0].reason
            .contains("10.0.0.11:22/tcp is already a backend"),
        "{}",
        p[0].reason
    );
    assert!(p[0].reason.contains("see route[1]"), "{}", p[0].reason);
}

#[test]
fn a_route_carries_its_check_and_a_bad_one_names_its_field() {
    let c = parse(&with_route(
        "name = \"judge\"\nservice = \"http\"\nbackends = [\"10.0.0.21:80\", \"10.0.0.22:80\"]\nport = 30010\ncheck = { kind = \"http\", path = \"/healthz\", interval = \"2s\", timeout = \"1s\", rise = 2, fall = 3 }",
    ))
    .unwrap();
    let spec = c.routes[2].backends.check().unwrap();
    assert_eq!(
        spec.to_string(),
        "http GET /healthz inter 2s timeout 1s rise 2 fall 3"
    );
    let p = problems(&with_route(
        "name = \"judge\"\nservice = \"http\"\nbackends = [\"10.0.0.21:80\", \"10.0.0.22:80\"]\nport = 30010\ncheck = { kind = \"http\", path = \"healthz\", interval = \"2s\", timeout = \"3s\" }",
    ));
    let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["route[3].check.path", "route[3].check.timeout"]);
}

fn with_secondaries(table: &str) -> String {
    GOOD.replacen(
        "ttl = 30\n",
        &format!("ttl = 30\n\n[dns.secondaries]\n{table}\n"),
        1,
    )
}

#[test]
fn secondaries_are_addresses_with_a_key_name() {
    let c = parse(&with_secondaries(
        "addresses = [\"192.0.2.53\", \"198.51.100.1:5353\"]\nkey_file = \"/etc/srvgate/xfr.key\"",
    ))
    .unwrap();
    let s = c.dns.unwrap().secondaries.unwrap();
    assert_eq!(
        s.peers,
        [
            "192.0.2.53:53".parse().unwrap(),
            "198.51.100.1:5353".parse().unwrap()
        ]
    );
    assert_eq!(s.key_name, "srvgate-xfr");
    assert_eq!(s.key_file, Some("/etc/srvgate/xfr.key".into()));
    assert!(parse(GOOD).unwrap().dns.unwrap().secondaries.is_none());

    let p = problems(&with_secondaries(
        "addresses = [\"nope\", \"0.0.0.0\"]\nkey_name = \"bad name!\"",
    ));
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "dns.secondaries.addresses",
            "dns.secondaries.addresses",
            "dns.secondaries.key_name"
        ],
        "{p:?}"
    );
    assert!(p[0].reason.contains("\"nope\""), "{p:?}");
    let p = problems(&with_secondaries("addresses = []"));
    assert_eq!(p[0].field, "dns.secondaries.addresses", "{p:?}");
}

#[test]
fn rrl_is_on_by_default_and_can_be_tuned_or_turned_off() {
    assert_eq!(
        parse(GOOD).unwrap().dns.unwrap().rrl,
        Some(crate::config::Rrl { rate: 200, slip: 2 })
    );
    let with = |t: &str| GOOD.replacen("ttl = 30\n", &format!("ttl = 30\n\n[dns.rrl]\n{t}\n"), 1);
    assert_eq!(
        parse(&with("rate = 50\nslip = 0"))
            .unwrap()
            .dns
            .unwrap()
            .rrl,
        Some(crate::config::Rrl { rate: 50, slip: 0 })
    );
    assert_eq!(
        parse(&with("enabled = false")).unwrap().dns.unwrap().rrl,
        None
    );
    let p = problems(&with("rate = 0\nslip = 1000"));
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["dns.rrl.rate", "dns.rrl.slip"], "{p:?}");
}
