//! HTTP routing by Host header: `NAME.http.<zone>` on the gateway's port 80 reaches route
//! NAME/http's backend, follows runtime route changes at once, and answers what it cannot
//! route with a status, not a hang.

use std::time::Duration;

use srvgate_tests::*;

/// `curl` from the client namespace: (HTTP status, body). The client's resolver is the
/// gateway, so names resolve through srvgate's own DNS.
fn get(lab: &Lab, url: &str) -> (u16, String) {
    curl(lab, &[url])
}

/// A request to the public address itself, naming `host` only in the Host header.
fn get_host(lab: &Lab, host: &str) -> (u16, String) {
    let header = format!("Host: {host}");
    curl(lab, &["-H", &header, &format!("http://{PUBLIC_IP}/")])
}

fn curl(lab: &Lab, args: &[&str]) -> (u16, String) {
    let mut argv = vec!["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = lab.exec_ok(&lab.client, &argv).unwrap();
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap_or(0), body.trim_end().to_string())
}

#[test]
fn hosts_reach_their_routes_backends_on_port_80() {
    if skip_unless_root("hosts_reach_their_routes_backends_on_port_80") {
        return;
    }
    let lab = Lab::new("http").expect("building the lab");
    lab.start_web(&lab.b1, "web of sg-b1").unwrap();
    lab.start_web(&lab.b2, "web of sg-b2").unwrap();
    let routes = [
        // Also routed by XDP on 30080: the gateway's own connections to B1:80 must work.
        RouteSpec::tcp("alice", "http", &format!("{B1_IP}:80"), 30080),
        RouteSpec::tcp("bob", "ssh", &format!("{B2_IP}:22"), 30002),
    ];
    let config = format!(
        "{}\n[http]\nlisten = [\"{PUBLIC_IP}:80\"]\n",
        config_toml(&routes)
    );
    let config = lab.write_file("srvgate.toml", &config).unwrap();
    lab.start_srvgate(&config, &[]).unwrap();
    lab.set_resolver(&lab.client, PUBLIC_IP).unwrap();

    assert_eq!(
        get(&lab, "http://alice.http.lab.example/"),
        (200, "web of sg-b1".to_string())
    );
    // The same backend through XDP, by port.
    assert_eq!(
        get(&lab, "http://alice.http.lab.example:30080/").1,
        "web of sg-b1"
    );
    // Hosts no route answers to (the bare address; bob, who has only ssh): a clear 404
    // naming the host, not a hang or a reset.
    let (code, body) = get(&lab, &format!("http://{PUBLIC_IP}/"));
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains(&format!("no route for host {PUBLIC_IP}")),
        "{body}"
    );
    let (code, body) = get_host(&lab, "bob.http.lab.example");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("bob.http.lab.example"), "{body}");

    // A route added at runtime answers at once, and stops when removed.
    lab.srvgate_ctl_ok(&[
        "route",
        "add",
        "carol",
        "--service",
        "http",
        "--backend",
        &format!("{B2_IP}:80"),
    ])
    .unwrap();
    assert_eq!(
        get(&lab, "http://carol.http.lab.example/"),
        (200, "web of sg-b2".to_string())
    );
    lab.srvgate_ctl_ok(&["route", "rm", "carol"]).unwrap();
    let (code, body) = get_host(&lab, "carol.http.lab.example");
    assert_eq!(code, 404, "removed route still served: {body}");

    // A client that never sends its request is answered (408) and closed, within bounds.
    let t0 = std::time::Instant::now();
    let out = lab
        .exec(
            &lab.client,
            &[
                "timeout",
                "15",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{PUBLIC_IP}/80; cat <&3"),
            ],
            Duration::from_secs(20),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(18));
}
