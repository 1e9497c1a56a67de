//! End-to-end tests of a route's pool of backends: a runtime route with a backend in each
//! backend namespace, added with `srvgate route add --backend A --backend B`, reached with
//! curl from the client namespace through srvgate's XDP program; drain and undrain move new
//! connections, and the API, `route ls` and the metrics say so.
//!
//! Needs root (it skips otherwise) and the release binary. Run one at a time:
//! `cargo test -p srvgate-tests --test pools -- --test-threads=1`.

use std::time::Duration;

use serde_json::Value;
use srvgate_tests::*;

const PORT: u16 = 30100;

/// The text of `http://PUBLIC_IP:PORT/` as the client gets it (each call a new connection).
fn fetch(lab: &Lab) -> String {
    let url = format!("http://{PUBLIC_IP}:{PORT}/");
    lab.exec_ok(&lab.client, &["curl", "-fsS", "--max-time", "5", &url])
        .unwrap_or_else(|e| panic!("curl {url}: {e:#}"))
        .trim()
        .to_string()
}

/// Which backends answer `n` new connections, counted: (b1, b2).
fn answers(lab: &Lab, n: usize) -> (usize, usize) {
    let (mut b1, mut b2) = (0, 0);
    for _ in 0..n {
        match fetch(lab).as_str() {
            "b1" => b1 += 1,
            "b2" => b2 += 1,
            other => panic!("an answer from neither backend: {other:?}"),
        }
    }
    (b1, b2)
}

/// The route's members as `route ls --json` shows them: (addr, drained, up).
fn members(lab: &Lab) -> Vec<(String, bool, bool)> {
    let text = lab.srvgate_ctl_ok(&["route", "ls", "--json"]).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let route = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "judge")
        .unwrap_or_else(|| panic!("no route judge in {text}"))
        .clone();
    route["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backends in {route}"))
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_string(),
                b["drained"].as_bool().unwrap(),
                b["up"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn drain_moves_new_connections_to_the_rest_of_the_pool() {
    let Some(lab) = Lab::for_test("pools::drain", "pool") else {
        return;
    };
    lab.start_web(&lab.b1, "b1").expect("web server in b1");
    lab.start_web(&lab.b2, "b2").expect("web server in b2");
    lab.start_with_routes(&[]).expect("starting srvgate");
    let (b1, b2) = (format!("{B1_IP}:80"), format!("{B2_IP}:80"));
    let port = PORT.to_string();
    let added = lab
        .srvgate_ctl_ok(&[
            "route",
            "add",
            "judge",
            "--service",
            "http",
            "--backend",
            &b1,
            "--backend",
            &b2,
            "--port",
            &port,
        ])
        .unwrap();
    assert!(added.contains(&b1) && added.contains(&b2), "{added}");
    assert_eq!(
        members(&lab),
        [(b1.clone(), false, true), (b2.clone(), false, true)]
    );

    // Every connection reaches a member of the pool.
    let (n1, n2) = answers(&lab, 6);
    assert_eq!(n1 + n2, 6);

    let drained = lab
        .srvgate_ctl_ok(&["route", "drain", "judge", "--backend", &b1])
        .unwrap();
    assert!(drained.contains(&format!("{b1} drained")), "{drained}");
    assert_eq!(
        members(&lab),
        [(b1.clone(), true, true), (b2.clone(), false, true)]
    );
    assert_eq!(
        answers(&lab, 6),
        (0, 6),
        "no new connection to the drained b1"
    );

    // The last undrained member cannot be drained too; the refusal names it.
    let refused = lab
        .srvgate_ctl(&["route", "drain", "judge", "--backend", &b2])
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("every backend drained"), "{err}");

    // Undrain b1, drain b2: the other way round.
    lab.srvgate_ctl_ok(&["route", "undrain", "judge", "--backend", &b1])
        .unwrap();
    lab.srvgate_ctl_ok(&["route", "drain", "judge", "--backend", &b2])
        .unwrap();
    assert_eq!(
        answers(&lab, 6),
        (6, 0),
        "no new connection to the drained b2"
    );

    // The drain of a runtime route is stored: it outlasts a restart.
    lab.stop_srvgate().expect("stopping srvgate");
    let config = lab.dir().join("srvgate.toml");
    lab.start_srvgate(&config, &[]).expect("restarting srvgate");
    assert_eq!(
        members(&lab),
        [(b1.clone(), false, true), (b2.clone(), true, true)]
    );
    wait_until(
        "judge answers after the restart",
        Duration::from_secs(20),
        || {
            let url = format!("http://{PUBLIC_IP}:{PORT}/");
            lab.exec(
                &lab.client,
                &["curl", "-fsS", "--max-time", "2", &url],
                Duration::from_secs(5),
            )
            .is_ok_and(|o| o.status.success())
        },
    );
    assert_eq!(answers(&lab, 4), (4, 0));

    let metrics = lab.metrics().unwrap();
    for (backend, drained) in [(&b1, "false"), (&b2, "true")] {
        let up = metric_value(
            &metrics,
            "srvgate_backend_up",
            &[
                ("name", "judge"),
                ("backend", backend),
                ("drained", drained),
            ],
        );
        assert_eq!(
            up,
            Some(1.0),
            "srvgate_backend_up of {backend} in:\n{metrics}"
        );
    }
}

/// The text of one new connection's answer, or `None` if it got none.
fn try_fetch(lab: &Lab) -> Option<String> {
    let url = format!("http://{PUBLIC_IP}:{PORT}/");
    lab.exec(
        &lab.client,
        &["curl", "-fsS", "--max-time", "3", &url],
        Duration::from_secs(6),
    )
    .ok()
    .filter(|o| o.status.success())
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Whether `route ls --json` says the route is in fail-open.
fn fail_open(lab: &Lab) -> bool {
    let text = lab.srvgate_ctl_ok(&["route", "ls", "--json"]).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "judge")
        .is_some_and(|r| r["fail_open"] == true)
}

#[test]
fn a_stopped_backend_leaves_the_pool_and_comes_back() {
    let Some(lab) = Lab::for_test("pools::health", "poolh") else {
        return;
    };
    let web1 = lab.start_web(&lab.b1, "b1").expect("web server in b1");
    let web2 = lab.start_web(&lab.b2, "b2").expect("web server in b2");
    lab.start_with_routes(&[]).expect("starting srvgate");
    let (b1, b2) = (format!("{B1_IP}:80"), format!("{B2_IP}:80"));
    let port = PORT.to_string();
    lab.srvgate_ctl_ok(&[
        "route",
        "add",
        "judge",
        "--service",
        "http",
        "--backend",
        &b1,
        "--backend",
        &b2,
        "--port",
        &port,
    ])
    .unwrap();
    let (n1, n2) = answers(&lab, 4);
    assert_eq!(n1 + n2, 4);

    // b1's service stops: the checks (tcp, every 2 s, fall 3) take it out of the pool.
    lab.stop(web1, Duration::from_secs(5))
        .expect("stopping b1's web server");
    let stopped = std::time::Instant::now();
    wait_until("b1 is down in route ls", Duration::from_secs(60), || {
        members(&lab).first().is_some_and(|(_, _, up)| !up)
    });
    println!(
        "b1 left the pool {:.1} s after its service stopped (fall x interval = 6 s)",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(answers(&lab, 4), (0, 4), "every new connection goes to b2");
    let metrics = lab.metrics().unwrap();
    let up = |m: &str, backend: &str| {
        metric_value(
            m,
            "srvgate_backend_up",
            &[("name", "judge"), ("backend", backend)],
        )
    };
    assert_eq!(up(&metrics, &b1), Some(0.0), "{metrics}");
    assert_eq!(up(&metrics, &b2), Some(1.0), "{metrics}");
    assert!(!fail_open(&lab));

    // b2 stops too: every member down, so the pool keeps all of them (fail open), loudly.
    lab.stop(web2, Duration::from_secs(5))
        .expect("stopping b2's web server");
    wait_until("the pool fails open", Duration::from_secs(60), || {
        fail_open(&lab)
    });
    let metrics = lab.metrics().unwrap();
    assert_eq!(
        metric_value(&metrics, "srvgate_route_fail_open", &[("name", "judge")]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        lab.srvgate_log().contains("fail open"),
        "the log says so:\n{}",
        lab.srvgate_log()
    );

    // b1 comes back: up again after rise successes, and it takes the new connections.
    lab.start_web(&lab.b1, "b1")
        .expect("web server in b1 again");
    wait_until("b1 is up again", Duration::from_secs(60), || {
        members(&lab).first().is_some_and(|(_, _, up)| *up)
    });
    assert!(!fail_open(&lab));
    wait_until("b1 answers", Duration::from_secs(20), || {
        try_fetch(&lab).as_deref() == Some("b1")
    });
}
