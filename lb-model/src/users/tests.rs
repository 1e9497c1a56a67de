use super::*;

fn rule(s: &str) -> BackendRule {
    s.parse().unwrap()
}

#[test]
fn backend_rules_parse_and_match() {
    let one = rule("10.0.0.11");
    assert!(one.allows("10.0.0.11:22".parse().unwrap()));
    assert!(one.allows("10.0.0.11:8080".parse().unwrap()));
    assert!(!one.allows("10.0.0.12:22".parse().unwrap()));
    let block = rule("10.0.1.0/28:22");
    assert!(block.allows("10.0.1.15:22".parse().unwrap()));
    assert!(!block.allows("10.0.1.16:22".parse().unwrap()));
    assert!(!block.allows("10.0.1.3:23".parse().unwrap()));
    assert_eq!(block.to_string(), "10.0.1.0/28:22");
    assert_eq!(one.to_string(), "10.0.0.11");
    for bad in [
        "10.0.1.1/28",
        "10.0.0.300",
        "127.0.0.1",
        "0.0.0.0/8",
        "224.0.0.1",
        "10.0.0.1:0",
        "10.0.0.0/33",
        "10.0.0.0/4",
        "alice",
        "",
    ] {
        assert!(bad.parse::<BackendRule>().is_err(), "{bad} accepted");
    }
    let e = "10.0.1.1/28".parse::<BackendRule>().unwrap_err();
    assert!(e.contains("10.0.1.0"), "{e}");
}
