use super::*;

const GOOD: &str = r#"
[gateway]
public_interface = "eth0"
private_interfaces = ["eth1"]
public_ipv4 = "203.0.113.10"
port_range = "30000-32767"

[dns]
zone = "lab.example.edu"
listen = ["0.0.0.0:53"]

[http]
listen = ["0.0.0.0:80"]

[https]
listen = ["0.0.0.0:443"]

[portal]
listen = ["0.0.0.0:8443"]

[[route]]
name = "alice"
service = "ssh"
backend = "10.0.0.5:22"
port = 30001
"#;

fn no_machine(_: &Config) -> (Vec<FieldError>, Vec<FieldError>) {
    (Vec::new(), Vec::new())
}

fn report(text: &str) -> Report {
    report_on(text, Some(Version(6, 12, 0)))
}

fn report_on(text: &str, kernel: Option<Version>) -> Report {
    inspect(
        Path::new("srvgate.toml"),
        text,
        &Inputs {
            machine: &no_machine,
            accounts: 0,
            kernel,
        },
    )
}

fn fields(r: &Report, s: Severity) -> Vec<&str> {
    r.findings
        .iter()
        .filter(|f| f.severity == s)
        .map(|f| f.field.as_str())
        .collect()
}

fn message<'a>(r: &'a Report, field: &str) -> &'a str {
    &r.findings
        .iter()
        .find(|f| f.field == field)
        .unwrap_or_else(|| panic!("no finding for {field}: {r:#?}"))
        .message
}

#[test]
fn the_good_config_is_ok_with_nothing_to_say() {
    let r = report(GOOD);
    assert!(r.ok, "{r:#?}");
    assert!(r.findings.is_empty(), "{r:#?}");
    let text = r.render_text();
    assert!(
        text.starts_with("srvgate.toml: ok (1 routes, public 203.0.113.10 on eth0"),
        "{text}"
    );
    assert!(text.contains("0 errors, 0 warnings"), "{text}");
}

#[test]
fn every_problem_is_reported_in_one_run() {
    // Two misspelled keys in two sections, a clashing route, and a listener clash: the old
    // check stopped at the first.
    let text = GOOD
        .replace("zone = ", "zonne = \"x\"\nzone = ")
        .replace("[portal]\nlisten", "[portal]\nlisen = []\nlisten")
        .replace("[https]\nlisten = [\"0.0.0.0:443\"]", "[https]\nlisten = [\"0.0.0.0:80\"]")
        + "\n[[route]]\nname = \"bob\"\nservice = \"ssh\"\nbackend = \"10.0.0.6:22\"\nport = 30001\nbakend = 1\n";
    let r = report(&text);
    assert!(!r.ok);
    let errors = fields(&r, Severity::Error);
    for want in [
        "dns.zonne",
        "portal.lisen",
        "route[2].bakend",
        "https.listen[1]",
        "route[2].port",
    ] {
        assert!(errors.contains(&want), "no {want} in {errors:?}");
    }
    assert_eq!(
        message(&r, "dns.zonne"),
        "unknown key; did you mean `zone`?"
    );
    assert_eq!(
        message(&r, "portal.lisen"),
        "unknown key; did you mean `listen`?"
    );
    assert_eq!(
        message(&r, "route[2].bakend"),
        "unknown key; did you mean `backend`?"
    );
    assert!(message(&r, "route[2].port").contains("route[1]"), "{r:#?}");
    let out = r.render_text();
    assert!(
        out.contains("srvgate.toml: error: dns.zonne: unknown key; did you mean `zone`?\n"),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "srvgate.toml: {} errors, 0 warnings\n",
            r.errors()
        )),
        "{out}"
    );
}

#[test]
fn an_unknown_section_and_a_key_far_from_any_are_named() {
    let r = report(&format!("{GOOD}\n[portl]\nlisten = []\n"));
    assert_eq!(message(&r, "portl"), "unknown key; did you mean `portal`?");
    let r = report(&GOOD.replace("[http]\n", "[http]\nzzzzzz = 1\n"));
    let m = message(&r, "http.zzzzzz");
    assert!(
        m.starts_with("unknown key; the keys here are `listen`"),
        "{m}"
    );
}

#[test]
fn https_and_the_portal_are_among_the_listeners() {
    let clash = |from: &str, to: &str| {
        assert!(GOOD.contains(from), "{from}");
        report(&GOOD.replacen(from, to, 1))
    };
    // [https] on [http]'s address.
    let r = clash("listen = [\"0.0.0.0:443\"]", "listen = [\"0.0.0.0:80\"]");
    assert!(
        message(&r, "https.listen[1]").contains("http.listen[1]"),
        "{r:#?}"
    );
    // The portal on 443 beside [https].
    let r = clash("listen = [\"0.0.0.0:8443\"]", "listen = [\"10.0.0.1:443\"]");
    assert!(
        message(&r, "portal.listen[1]").contains("https.listen[1]"),
        "{r:#?}"
    );
    // A port_range holding 443.
    let r = clash("port_range = \"30000-32767\"", "port_range = \"400-32767\"");
    let ranges: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.field == "gateway.port_range")
        .collect();
    assert!(
        ranges
            .iter()
            .any(|f| f.message.contains("port 443, which https.listen[1]")),
        "{r:#?}"
    );
}

#[test]
fn no_dns_and_students_without_a_portal_are_warnings() {
    let start = GOOD.find("[dns]").unwrap();
    let end = GOOD.find("[portal]").unwrap();
    // Without [dns] the web routers are errors of their own; take them out too.
    let text = format!("{}{}", &GOOD[..start], &GOOD[end..]);
    let r = report(&text);
    assert!(r.ok, "{r:#?}");
    assert_eq!(fields(&r, Severity::Warning), ["dns"]);
    assert!(message(&r, "dns").contains("add [dns]"), "{r:#?}");

    let without_portal = GOOD.replace("[portal]\nlisten = [\"0.0.0.0:8443\"]\n", "")
        + "\n[[user]]\nname = \"alice\"\nbackends = [\"10.0.0.5\"]\n";
    let r = report(&without_portal);
    assert!(r.ok, "warnings do not fail the check: {r:#?}");
    assert!(
        message(&r, "portal").contains("1 student account(s) but no [portal]"),
        "{r:#?}"
    );
    // Students only in the state directory count too.
    let r = inspect(
        Path::new("srvgate.toml"),
        &GOOD.replace("[portal]\nlisten = [\"0.0.0.0:8443\"]\n", ""),
        &Inputs {
            machine: &no_machine,
            accounts: 3,
            kernel: Some(Version(6, 12, 0)),
        },
    );
    assert!(
        message(&r, "portal").contains("3 student account(s)"),
        "{r:#?}"
    );
}

#[test]
fn metrics_listen_takes_an_array_and_the_old_string_with_a_note() {
    let r = report(&format!(
        "{GOOD}\n[metrics]\nlisten = [\"127.0.0.1:9110\", \"127.0.0.1:9111\"]\n"
    ));
    assert!(r.ok && r.findings.is_empty(), "{r:#?}");
    let r = report(&format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9110\"\n"));
    assert!(r.ok, "{r:#?}");
    assert_eq!(fields(&r, Severity::Warning), ["metrics.listen"]);
    assert!(
        message(&r, "metrics.listen").starts_with("deprecated: "),
        "{r:#?}"
    );
    // And its address is a listener like the others.
    let r = report(&format!("{GOOD}\n[metrics]\nlisten = [\"0.0.0.0:80\"]\n"));
    assert!(
        message(&r, "metrics.listen[1]").contains("http.listen[1]"),
        "{r:#?}"
    );
}

#[test]
fn the_machine_and_the_kernel_are_reported_beside_the_file() {
    let machine = |_: &Config| {
        (
            vec![FieldError {
                field: "gateway.public_interface".into(),
                reason: "no network interface named \"eth0\"".into(),
            }],
            vec![FieldError {
                field: "gateway.public_ipv4".into(),
                reason: "not (yet) an address".into(),
            }],
        )
    };
    let r = inspect(
        Path::new("srvgate.toml"),
        &GOOD.replace("port = 30001", "port = 40000"),
        &Inputs {
            machine: &machine,
            accounts: 0,
            kernel: Some(Version(6, 1, 0)),
        },
    );
    let errors = fields(&r, Severity::Error);
    // A route's own problem does not hide the machine's.
    assert!(errors.contains(&"route[1].port"), "{r:#?}");
    assert!(errors.contains(&"gateway.public_interface"), "{r:#?}");
    assert!(errors.contains(&"kernel"), "{r:#?}");
    assert!(
        message(&r, "kernel").starts_with("kernel 6.1 found, 6.7 needed for BPF_FIB_LOOKUP_SRC"),
        "{r:#?}"
    );
    assert!(fields(&r, Severity::Warning).contains(&"gateway.public_ipv4"));
    assert!(!r.ok);
    // An unreadable release is a warning, not a pass in silence.
    let r = report_on(GOOD, None);
    assert!(r.ok);
    assert_eq!(fields(&r, Severity::Warning), ["kernel"]);
}

#[test]
fn a_syntax_error_is_one_error_with_its_line() {
    let r = report("[gateway\n");
    assert!(!r.ok);
    assert_eq!(r.findings.len(), 1, "{r:#?}");
    assert_eq!(r.findings[0].field, "(file)");
    assert!(r.findings[0].message.contains("line 1"), "{r:#?}");
}

#[test]
fn json_carries_the_same_findings() {
    let r = report(&format!(
        "{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9110\"\n[portl]\n"
    ));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["file"], "srvgate.toml");
    assert_eq!(v["ok"], false);
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), r.findings.len());
    assert!(
        findings
            .iter()
            .any(|f| f["severity"] == "error" && f["field"] == "portl"),
        "{v}"
    );
}

#[test]
fn the_packaged_config_passes_with_its_portal_on() {
    let packaged = include_str!("../../../../dist/srvgate.toml");
    let r = report(packaged);
    assert!(r.ok, "{}", r.render_text());
    assert!(r.findings.is_empty(), "{}", r.render_text());
    let cfg = Config::parse(Path::new("srvgate.toml"), packaged).unwrap();
    assert!(cfg.portal.is_some(), "the package ships [portal] on");
}
