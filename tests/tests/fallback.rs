//! The slow paths must still deliver: a leg that cannot take XDP redirects (a veth whose
//! peer has neither GRO nor an XDP program) is detected, logged, and served by passing the
//! rewritten packet to the kernel; and a daemon without privileges refuses to start.

use std::time::Duration;

use srvgate_tests::*;

/// The egress mode `/metrics` reports for `iface` (`redirect` or `pass`).
fn egress_in_metrics(text: &str, iface: &str) -> Option<String> {
    ["redirect", "pass"]
        .into_iter()
        .find(|mode| {
            metric_value(
                text,
                "srvgate_leg_info",
                &[("iface", iface), ("egress", mode)],
            ) == Some(1.0)
        })
        .map(str::to_string)
}

fn verdict(text: &str, v: &str) -> f64 {
    metric_value(text, "srvgate_xdp_verdicts_total", &[("verdict", v)])
        .unwrap_or_else(|| panic!("no verdict {v} in:\n{text}"))
}

#[test]
fn a_leg_without_napi_is_served_through_the_kernel_not_dropped() {
    if skip_unless_root("a_leg_without_napi_is_served_through_the_kernel_not_dropped") {
        return;
    }
    let lab = Lab::new("fallbk").expect("building the lab");
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    lab.start_sshd(&lab.b2, "sg-b2").unwrap();
    // b2's end of priv2 without GRO (and no XDP): a redirect into priv2 would be dropped
    // by the kernel.
    lab.exec_ok(&lab.b2, &["ethtool", "-K", "eth0", "gro", "off"])
        .unwrap();
    let routes = [
        RouteSpec::tcp("alice", "ssh", &format!("{B1_IP}:22"), 30001),
        RouteSpec::tcp("bob", "ssh", &format!("{B2_IP}:22"), 30002),
    ];
    lab.start_with_routes(&routes).unwrap();
    let log = lab.srvgate_log();
    let priv2_pass = log
        .lines()
        .any(|l| l.contains("egress by XDP_PASS") && l.contains("priv2"));
    assert!(priv2_pass, "srvgate must say priv2 falls back:\n{log}");
    let priv1_redirect = log
        .lines()
        .any(|l| l.contains("egress by XDP redirect") && l.contains("priv1"));
    assert!(priv1_redirect, "priv1 keeps redirects:\n{log}");

    let before = lab.metrics().unwrap();
    assert_eq!(
        egress_in_metrics(&before, "priv2").as_deref(),
        Some("pass"),
        "{before}"
    );
    assert_eq!(
        egress_in_metrics(&before, "priv1").as_deref(),
        Some("redirect"),
        "{before}"
    );
    assert!(
        metric_value(
            &before,
            "srvgate_leg_dropped_total",
            &[("iface", "priv2"), ("direction", "tx")]
        )
        .is_some(),
        "drop counters exported:\n{before}"
    );
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30002, "hostname").unwrap(),
        "sg-b2"
    );
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30001, "hostname").unwrap(),
        "sg-b1"
    );
    let after = lab.metrics().unwrap();
    let grew = |v: &str| verdict(&after, v) - verdict(&before, v);
    assert!(
        grew("fwd_pass_egress") >= 10.0,
        "bob's inbound packets went through the kernel: {}",
        grew("fwd_pass_egress")
    );
    assert!(grew("fwd_redirect") >= 10.0, "alice's still redirected");

    // Turning GRO back on is noticed while running: priv2 goes back to redirects.
    lab.exec_ok(&lab.b2, &["ethtool", "-K", "eth0", "gro", "on"])
        .unwrap();
    let mut back = false;
    for _ in 0..50 {
        let log = lab.srvgate_log();
        back = log
            .lines()
            .any(|l| l.contains("egress by XDP redirect") && l.contains("priv2"));
        if back {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(back, "priv2 back to redirect:\n{}", lab.srvgate_log());
    let now = lab.metrics().unwrap();
    assert_eq!(
        egress_in_metrics(&now, "priv2").as_deref(),
        Some("redirect"),
        "{now}"
    );
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, 30002, "hostname").unwrap(),
        "sg-b2"
    );
}

#[test]
fn an_unprivileged_run_is_refused_before_touching_the_kernel() {
    if skip_unless_root("an_unprivileged_run_is_refused_before_touching_the_kernel") {
        return;
    }
    let lab = Lab::new("noprivs").expect("building the lab");
    let routes = [RouteSpec::tcp(
        "alice",
        "ssh",
        &format!("{B1_IP}:22"),
        30001,
    )];
    let config = lab
        .write_file("srvgate.toml", &config_toml(&routes))
        .unwrap();
    // The temp dir is private to root: give nobody a readable copy of the config.
    let shared = std::env::temp_dir().join("srvgate-noprivs.toml");
    std::fs::copy(&config, &shared).unwrap();
    let bin = srvgate_bin().display().to_string();
    let cfg = shared.display().to_string();
    let out = lab
        .exec(
            &lab.gw,
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                &bin,
                "run",
                "--config",
                &cfg,
            ],
            DEFAULT_TIMEOUT,
        )
        .unwrap();
    let _ = std::fs::remove_file(&shared);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(stderr.contains("CAP_BPF"), "{stderr}");
    for dev in ["pub0", "priv1", "priv2"] {
        assert!(
            !lab.xdp_attached(&lab.gw, dev).unwrap(),
            "{dev} has XDP attached"
        );
    }
}
