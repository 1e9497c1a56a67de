//! `srvgate doctor` on the lab's gateway: clean while srvgate forwards, then each
//! misconfiguration an admin makes is injected into the gateway's namespace, found by its
//! check (exit status 1, a fix line), and undone.

use std::time::Duration;

use serde_json::Value;
use srvgate_tests::*;

/// `srvgate doctor --json` in the gateway namespace: its exit code and findings.
fn doctor(lab: &Lab, cfg: &str) -> (Option<i32>, Vec<Value>) {
    let out = lab
        .srvgate(
            &["doctor", "--config", cfg, "--json"],
            Duration::from_secs(60),
        )
        .unwrap();
    let findings: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), findings)
}

fn failures(findings: &[Value]) -> Vec<String> {
    findings
        .iter()
        .filter(|f| f["status"] == "fail")
        .map(|f| {
            format!(
                "{} {}",
                f["check"].as_str().unwrap(),
                f["subject"].as_str().unwrap()
            )
        })
        .collect()
}

/// Runs doctor and requires that `check` fails on a subject starting with `subject`, with
/// a fix, and exit status 1.
fn finds(lab: &Lab, cfg: &str, what: &str, check: &str, subject: &str) {
    let (code, findings) = doctor(lab, cfg);
    let hit = findings.iter().find(|f| {
        f["status"] == "fail"
            && f["check"] == check
            && f["subject"].as_str().unwrap().starts_with(subject)
    });
    let Some(hit) = hit else {
        panic!(
            "{what}: expected `{check} {subject}` to fail; failures: {:?}",
            failures(&findings)
        );
    };
    assert!(
        !hit["fix"].as_str().unwrap_or("").is_empty(),
        "{what}: {hit}"
    );
    assert_eq!(code, Some(1), "{what}: a failed check exits 1");
}

#[test]
fn doctor_finds_each_misconfiguration_injected_into_the_gateway() {
    let Some(lab) = Lab::for_test("doctor_finds_each_misconfiguration", "doc") else {
        return;
    };
    let cfg_path = lab.write_file("srvgate.toml", &config_toml(&[])).unwrap();
    let cfg = cfg_path.display().to_string();
    lab.start_srvgate(&cfg_path, &[]).unwrap();
    let gw = lab.gw.clone();

    let (code, findings) = doctor(&lab, &cfg);
    assert_eq!(
        failures(&findings),
        Vec::<String>::new(),
        "a working gateway"
    );
    assert_eq!(code, Some(0));
    for check in ["xdp", "sysctl", "address", "firewall", "dns", "ports"] {
        assert!(findings.iter().any(|f| f["check"] == check), "{check} ran");
    }

    lab.sh(&gw, "sysctl -qw net.ipv4.ip_forward=0").unwrap();
    finds(
        &lab,
        &cfg,
        "forwarding off",
        "sysctl",
        "net.ipv4.ip_forward",
    );
    lab.sh(&gw, "sysctl -qw net.ipv4.ip_forward=1").unwrap();

    lab.sh(
        &gw,
        &format!(
            "sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.{}.rp_filter=0",
            PRIVATE_IFS[1]
        ),
    )
    .unwrap();
    finds(
        &lab,
        &cfg,
        "strict rp_filter",
        "sysctl",
        &format!("net.ipv4.conf.{}.rp_filter", PRIVATE_IFS[1]),
    );
    lab.sh(&gw, "sysctl -qw net.ipv4.conf.all.rp_filter=0")
        .unwrap();

    // A firewall that drops DNS: the rule is named, and DNS indeed does not answer.
    lab.sh(
        &gw,
        "nft add table inet sgdoc && nft add chain inet sgdoc in '{ type filter hook input priority 0; policy accept; }' && nft add rule inet sgdoc in udp dport 53 drop",
    )
    .unwrap();
    finds(&lab, &cfg, "dns dropped", "firewall", "udp 53");
    finds(&lab, &cfg, "dns dropped", "dns", &format!("{PUBLIC_IP}:53"));
    lab.sh(&gw, "nft delete table inet sgdoc").unwrap();

    // A local service on a port of the range.
    let pid = lab
        .spawn(
            &gw,
            &["python3", "-c", "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',31999))\ntime.sleep(120)"],
        )
        .unwrap();
    lab.wait_udp_bound(&gw, pid, 31999, DEFAULT_TIMEOUT)
        .unwrap();
    finds(&lab, &cfg, "a service in the range", "ports", "udp 31999");
    lab.stop(pid, Duration::from_secs(2)).unwrap();

    let (code, findings) = doctor(&lab, &cfg);
    assert_eq!(failures(&findings), Vec::<String>::new(), "all undone");
    assert_eq!(code, Some(0));

    // The public address moved to a private leg.
    lab.sh(
        &gw,
        &format!(
            "ip addr del {PUBLIC_IP}/24 dev {PUBLIC_IF} && ip addr add {PUBLIC_IP}/32 dev {}",
            PRIVATE_IFS[0]
        ),
    )
    .unwrap();
    finds(&lab, &cfg, "address on the wrong leg", "address", PUBLIC_IP);
    lab.sh(
        &gw,
        &format!(
            "ip addr del {PUBLIC_IP}/32 dev {} && ip addr add {PUBLIC_IP}/24 dev {PUBLIC_IF}",
            PRIVATE_IFS[0]
        ),
    )
    .unwrap();

    // Forwarding stopped for good: no XDP on any leg.
    lab.srvgate_ctl_ok(&["down"]).unwrap();
    let _ = lab.stop_srvgate();
    finds(&lab, &cfg, "srvgate down", "xdp", PUBLIC_IF);
    finds(&lab, &cfg, "srvgate down", "xdp", PRIVATE_IFS[0]);
}
