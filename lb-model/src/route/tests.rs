use std::{net::Ipv4Addr, time::Duration};

use super::*;

#[test]
fn labels() {
    assert!(check_label("alice").is_ok());
    assert!(check_label("a-1").is_ok());
    assert!(check_label(&"a".repeat(63)).is_ok());
    assert!(check_label(&"a".repeat(64)).is_err());
    assert!(check_label("").is_err());
    assert!(check_label("a.b").is_err());
    assert!(check_label("_ssh").is_err());
    assert!(check_label("Alice").is_err());
    assert!(check_label("alice-").is_err());
    assert_eq!(check_domain("lab.example.").unwrap(), "lab.example");
    assert!(check_domain("lab..example").is_err());
}

#[test]
fn port_ranges() {
    assert_eq!(
        "1-65535".parse::<PortRange>().unwrap(),
        PortRange {
            first: 1,
            last: 65535
        }
    );
    assert!("0-10".parse::<PortRange>().is_err());
    assert!("10".parse::<PortRange>().is_err());
    assert!("10-70000".parse::<PortRange>().is_err());
}

#[test]
fn durations() {
    assert_eq!(
        parse_duration("1d12h").unwrap(),
        Duration::from_secs(36 * 3600)
    );
    assert_eq!(
        parse_duration("2w").unwrap(),
        Duration::from_secs(14 * 86400)
    );
    assert_eq!(parse_duration(" 90m ").unwrap(), Duration::from_secs(5400));
    assert!(parse_duration("99999999999999999999d").is_err());
    assert!(parse_duration("").is_err());
    assert_eq!(format_duration(Duration::from_secs(14 * 86400)), "14d");
    assert_eq!(format_duration(Duration::from_secs(90061)), "1d1h1m1s");
}

#[test]
fn a_runtime_request_is_checked_like_a_config_route_in_its_own_field_names() {
    let range = Some(PortRange {
        first: 30000,
        last: 30009,
    });
    let public = Some(Ipv4Addr::new(203, 0, 113, 10));
    let plain = |f: &str| f.to_string();
    let ok = RouteRequest {
        check: None,
        proxy_protocol: None,
        name: "alice".into(),
        service: "ssh".into(),
        protocol: None,
        backend: "10.0.0.11:22".into(),
        backends: vec![],
        port: None,
    };
    let draft = check_route(&ok, public, range, &plain).unwrap();
    assert_eq!(draft.protocol, Protocol::Tcp);
    assert_eq!(draft.port, None, "no port: one is allocated later");
    let bad = RouteRequest {
        check: None,
        proxy_protocol: None,
        name: "Alice".into(),
        service: "ssh".into(),
        protocol: Some("sctp".into()),
        backend: "203.0.113.10:22".into(),
        backends: vec![],
        port: Some(40000),
    };
    let fields: Vec<String> = check_route(&bad, public, range, &plain)
        .unwrap_err()
        .into_iter()
        .map(|p| p.field)
        .collect();
    assert_eq!(fields, ["name", "protocol", "backend", "port"]);
}
