//! The web routers with real clients and servers: HTTP routing by Host header
//! (`NAME.http.<zone>` on port 80 reaches route NAME/http's backend, every request on its
//! own, strictly parsed), HTTPS relayed by SNI to the students' own TLS servers (curl checks
//! their certificates; openssl s_client without SNI is refused), the client's address by
//! PROXY protocol to nginx, and idle or greedy clients that cannot lock others out.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

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

/// A second client address on the client namespace's wire: "someone else".
const OTHER_CLIENT_IP: &str = "10.210.1.3";

/// The lab config with `routes`, the HTTP router on port 80 and `extra` (more sections or
/// raw `[[route]]`s) after it.
fn web_config(lab: &Lab, routes: &[RouteSpec], extra: &str) -> std::path::PathBuf {
    let config = format!(
        "{}\n[http]\nlisten = [\"{PUBLIC_IP}:80\"]\n{extra}\n",
        config_toml(routes)
    );
    lab.write_file("srvgate.toml", &config).unwrap()
}

/// Sends `bytes` from the client namespace to `port` of the public address and reads what
/// comes back until the gateway closes (at most 10 s).
fn raw(lab: &Lab, port: u16, bytes: &[u8]) -> String {
    let mut s = connect(lab, port);
    s.write_all(bytes).unwrap();
    read_to_close(&mut s)
}

fn connect(lab: &Lab, port: u16) -> TcpStream {
    let addr: SocketAddr = format!("{PUBLIC_IP}:{port}").parse().unwrap();
    let s = tcp_connect(&lab.client, addr, Duration::from_secs(3))
        .unwrap()
        .expect("connecting to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn every_request_is_routed_by_its_own_host() {
    if skip_unless_root("every_request_is_routed_by_its_own_host") {
        return;
    }
    let lab = Lab::new("httpreq").expect("building the lab");
    lab.start_echo_web(&lab.b1, "alice", 8080).unwrap();
    lab.start_echo_web(&lab.b2, "bob", 8080).unwrap();
    let routes = [
        RouteSpec::tcp("alice", "http", &format!("{B1_IP}:8080"), 30080),
        RouteSpec::tcp("bob", "http", &format!("{B2_IP}:8080"), 30081),
        // Nothing listens there: the backend refuses.
        RouteSpec::tcp("carol", "http", &format!("{B2_IP}:8099"), 30082),
    ];
    let config = web_config(&lab, &routes, "forwarded_for = true");
    lab.start_srvgate(&config, &[]).unwrap();
    let (alice, bob) = ("alice.http.lab.example", "bob.http.lab.example");

    // curl reuses one connection for both (num_connects 0 the second time), each request
    // reaches its own host's backend.
    let url = format!("http://{PUBLIC_IP}/");
    let out = lab
        .exec_ok(
            &lab.client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-w",
                " connects=%{num_connects}\n",
                "-H",
                &format!("Host: {alice}"),
                &format!("{url}first"),
                "--next",
                "-sS",
                "--max-time",
                "5",
                "-w",
                " connects=%{num_connects}\n",
                "-H",
                &format!("Host: {bob}"),
                &format!("{url}second"),
            ],
        )
        .unwrap();
    assert!(
        out.contains(&format!(
            "alice GET /first host={alice} body= xff={CLIENT_IP}\n connects=1"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "bob GET /second host={bob} body= xff={CLIENT_IP}\n connects=0"
        )),
        "{out}"
    );

    // With forwarded_for, the backend learns the client's address, never what it claims.
    let r = raw(
        &lab,
        80,
        format!("GET /who HTTP/1.1\r\nHost: {alice}\r\nX-Forwarded-For: 192.0.2.66\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(
        r.contains(&format!(
            "alice GET /who host={alice} body= xff={CLIENT_IP}\n"
        )),
        "{r}"
    );

    // After a chunked POST to alice, bob's request on the same connection is bob's.
    let two = raw(
        &lab,
        80,
        format!(
            "POST /up HTTP/1.1\r\nHost: {alice}\r\nTransfer-Encoding: chunked\r\n\r\n\
             4\r\nabcd\r\n0\r\n\r\n\
             GET /second HTTP/1.1\r\nHost: {bob}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(
        two.contains(&format!("alice POST /up host={alice} body=abcd")),
        "{two}"
    );
    assert!(
        two.contains(&format!("bob GET /second host={bob} body=")),
        "{two}"
    );
    assert!(!two.contains("alice GET /second"), "{two}");

    // A header name with a space before its colon beside another Host: 400, nobody reached.
    let r = raw(
        &lab,
        80,
        format!("GET / HTTP/1.1\r\nHost : {bob}\r\nHost: {alice}\r\n\r\n").as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Conflicting lengths: 400.
    let r = raw(
        &lab,
        80,
        format!("POST / HTTP/1.1\r\nHost: {alice}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // The absolute-form authority wins over Host, in any scheme case, with a query too.
    for target in [
        format!("https://{bob}/abs"),
        format!("HTTP://{bob}/abs"),
        format!("http://{bob}?q=1"),
    ] {
        let r = raw(
            &lab,
            80,
            format!("GET {target} HTTP/1.1\r\nHost: {alice}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{target}: {r}");
        assert!(
            r.contains("bob GET /") && r.contains(&format!("host={bob}")),
            "{target}: {r}"
        );
    }

    // 200 requests on one connection, through the router and straight through XDP (a
    // figure, printed: the backend is Python, so this bounds the router's cost from above).
    for (what, url) in [
        ("router", format!("http://{PUBLIC_IP}/n[1-200]")),
        ("xdp", format!("http://{PUBLIC_IP}:30080/n[1-200]")),
    ] {
        let t = Instant::now();
        let out = lab
            .exec_ok(
                &lab.client,
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "20",
                    "-H",
                    &format!("Host: {alice}"),
                    &url,
                ],
            )
            .unwrap();
        assert_eq!(out.matches("alice GET /n").count(), 200, "{out}");
        println!("200 keep-alive requests via {what}: {:?}", t.elapsed());
    }

    // A backend that refuses: a generic 502; the address is in the log only.
    let (code, body) = get_host(&lab, "carol.http.lab.example");
    assert_eq!(code, 502, "{body}");
    assert!(!body.contains("10.210."), "{body}");
    assert!(
        lab.srvgate_log().contains(&format!("{B2_IP}:8099")),
        "{}",
        lab.srvgate_log()
    );

    // A WebSocket upgrade passes through and echoes.
    let mut ws = connect(&lab, 80);
    ws.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nHost: {alice}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        ws.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.write_all(&frame).unwrap();
    let mut echo = [0u8; 7];
    ws.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"\x81\x05hello");

    let m = lab.metrics().unwrap();
    assert!(
        metric_value(&m, "srvgate_web_requests_total", &[("router", "http")]).unwrap() >= 8.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            "srvgate_web_errors_total",
            &[("router", "http"), ("reason", "bad_request")]
        )
        .unwrap()
            >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "srvgate_web_errors_total",
            &[("router", "http"), ("reason", "backend_refused")]
        ),
        Some(1.0),
        "{m}"
    );
}

/// The nginx server blocks of a student's TLS site on 443 answering `TAG $proxy_protocol_addr`
/// (with `proxy_protocol` on the listener when `pp`).
fn tls_site(
    tag: &str,
    name: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    pp: bool,
) -> String {
    let pp = if pp { " proxy_protocol" } else { "" };
    format!(
        "  server {{\n    listen 443 ssl{pp};\n    server_name {name};\n\
         ssl_certificate {};\n    ssl_certificate_key {};\n\
         location / {{ default_type text/plain; return 200 \"{tag} tls client=$proxy_protocol_addr\\n\"; }}\n  }}\n",
        cert.display(),
        key.display()
    )
}

#[test]
fn https_reaches_the_students_own_tls_servers_by_name() {
    if skip_unless_root("https_reaches_the_students_own_tls_servers_by_name") {
        return;
    }
    let lab = Lab::new("https").expect("building the lab");
    let (alice, bob) = ("alice.http.lab.example", "bob.https.lab.example");
    let (alice_crt, alice_key) = lab.self_signed_cert(alice).unwrap();
    let (bob_crt, bob_key) = lab.self_signed_cert(bob).unwrap();
    lab.start_nginx(
        &lab.b1,
        443,
        "$proxy_protocol_addr $remote_addr $ssl_server_name",
        &tls_site("alice", alice, &alice_crt, &alice_key, true),
    )
    .unwrap();
    lab.start_nginx(
        &lab.b2,
        443,
        "$remote_addr $ssl_server_name",
        &tls_site("bob", bob, &bob_crt, &bob_key, false),
    )
    .unwrap();
    lab.start_echo_web(&lab.b1, "alice", 8080).unwrap();
    let routes = [
        // alice's plain site gives her the name alice.http.lab.example in DNS.
        RouteSpec::tcp("alice", "http", &format!("{B1_IP}:8080"), 30080),
        RouteSpec::tcp("bob", "https", &format!("{B2_IP}:443"), 30443),
    ];
    let extra = format!(
        "[https]\nlisten = [\"{PUBLIC_IP}:443\"]\n\n[[route]]\nname = \"alice\"\nservice = \"https\"\n\
         backend = \"{B1_IP}:443\"\nport = 30444\nproxy_protocol = \"v2\"\n"
    );
    lab.start_srvgate(&web_config(&lab, &routes, &extra), &[])
        .unwrap();
    lab.set_resolver(&lab.client, PUBLIC_IP).unwrap();

    // The same name as for http://, alice's own certificate (curl verifies it against
    // alice's CA), and her nginx sees the client's address through PROXY protocol v2.
    let crt = alice_crt.display().to_string();
    let (code, body) = curl(&lab, &["--cacert", &crt, &format!("https://{alice}/")]);
    assert_eq!(
        (code, body.as_str()),
        (200, format!("alice tls client={CLIENT_IP}").as_str())
    );
    let log = std::fs::read_to_string(lab.nginx_access_log(&lab.b1)).unwrap_or_default();
    assert!(
        log.contains(&format!("{CLIENT_IP} {GW_PRIV1_IP} {alice}")),
        "alice's nginx log: {log}"
    );
    // bob's name reaches bob with bob's certificate; alice's CA does not vouch for it.
    let crt = bob_crt.display().to_string();
    let (code, body) = curl(&lab, &["--cacert", &crt, &format!("https://{bob}/")]);
    assert_eq!((code, body.as_str()), (200, "bob tls client="));
    let alice_ca = alice_crt.display().to_string();
    let url = format!("https://{bob}/");
    let argv = [
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--cacert",
        &alice_ca,
        &url,
    ];
    let out = lab
        .exec(&lab.client, &argv, Duration::from_secs(10))
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bob's certificate passed for alice's: {err}"
    );
    assert!(err.contains("certificate"), "{err}");

    // A name with no https route: an alert, and the log says why.
    let resolve = format!("carol.http.lab.example:443:{PUBLIC_IP}");
    let out = lab
        .exec(
            &lab.client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-k",
                "--resolve",
                &resolve,
                "https://carol.http.lab.example/",
            ],
            Duration::from_secs(10),
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("unrecognized name"), "{err}");
    assert!(
        lab.srvgate_log()
            .contains("no route for name carol.http.lab.example"),
        "{}",
        lab.srvgate_log()
    );

    // openssl s_client without SNI is refused.
    let connect = format!("{PUBLIC_IP}:443");
    let out = lab
        .exec(
            &lab.client,
            &[
                "bash",
                "-c",
                &format!("openssl s_client -connect {connect} -noservername </dev/null"),
            ],
            Duration::from_secs(10),
        )
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("unrecognized name"), "{text}");
    assert!(
        lab.srvgate_log().contains("no server name (SNI)"),
        "{}",
        lab.srvgate_log()
    );

    let m = lab.metrics().unwrap();
    assert_eq!(
        metric_value(&m, "srvgate_web_requests_total", &[("router", "https")]),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "srvgate_web_errors_total",
            &[("router", "https"), ("reason", "no_sni")]
        ),
        Some(1.0),
        "{m}"
    );
}

/// Opens `count` connections from the client namespace to `port` and keeps them, each
/// after one request and its answer (`request` non-empty, `|` for CRLF) or silent; prints
/// `held N settled S served 200s` once they are open, and ends after `hold` seconds.
const HOLDER: &str = r#"import socket, sys, time
host, port, count, hold, request = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5].encode()
held = []
settled = served = 0
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    if request:
        s.sendall(request.replace(b"|", b"\r\n"))
        try:
            reply = s.recv(4096)
            served += reply.startswith(b"HTTP/1.1 200")
            settled += 1
        except socket.timeout:
            pass  # hung: not settled
        except OSError:
            settled += 1  # reset: closed without a page
    held.append(s)
print("held %d settled %d served %d" % (len(held), settled, served), flush=True)
time.sleep(hold)
"#;

#[test]
fn idle_and_greedy_clients_do_not_lock_others_out() {
    if skip_unless_root("idle_and_greedy_clients_do_not_lock_others_out") {
        return;
    }
    let lab = Lab::new("httpidle").expect("building the lab");
    lab.start_echo_web(&lab.b1, "alice", 8080).unwrap();
    let (crt, key) = lab.self_signed_cert("alice.http.lab.example").unwrap();
    lab.start_nginx(
        &lab.b1,
        443,
        "$remote_addr",
        &tls_site("alice", "alice.http.lab.example", &crt, &key, false),
    )
    .unwrap();
    let routes = [
        RouteSpec::tcp("alice", "http", &format!("{B1_IP}:8080"), 30080),
        RouteSpec::tcp("alice", "https", &format!("{B1_IP}:443"), 30443),
    ];
    // Long enough that the holders still hold while the others are served.
    let extra = format!(
        "idle_timeout = \"10s\"\n\n[https]\nlisten = [\"{PUBLIC_IP}:443\"]\nheader_timeout = \"30s\"\n"
    );
    lab.start_srvgate(&web_config(&lab, &routes, &extra), &[])
        .unwrap();
    lab.exec_ok(
        &lab.client,
        &[
            "ip",
            "addr",
            "add",
            &format!("{OTHER_CLIENT_IP}/24"),
            "dev",
            "eth0",
        ],
    )
    .unwrap();
    let holder = lab
        .write_file("holder.py", HOLDER)
        .unwrap()
        .display()
        .to_string();
    let hold = |port: u16, request: &str| -> u32 {
        let p = port.to_string();
        lab.spawn(
            &lab.client,
            &["python3", &holder, PUBLIC_IP, &p, "1000", "60", request],
        )
        .unwrap()
    };
    let request = "GET / HTTP/1.1|Host: alice.http.lab.example||";
    let on80 = hold(80, request);
    let on443 = hold(443, "");
    for pid in [on80, on443] {
        let log = lab.log_path(pid).unwrap();
        wait_until("1000 connections held", Duration::from_secs(60), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("held 1000")
        });
    }
    let text = std::fs::read_to_string(lab.log_path(on80).unwrap()).unwrap();
    // None hung: each was served (then idled) or refused at once (a 429 page, or closed
    // once refusals come faster than the router tells them why); its share was served.
    assert!(text.contains("held 1000 settled 1000 served 128"), "{text}");

    // Each router is full for that address: its share is held.
    let m = lab.metrics().unwrap();
    for router in ["http", "https"] {
        let open = metric_value(&m, "srvgate_web_connections_open", &[("router", router)]);
        assert_eq!(open, Some(128.0), "{router}\n{m}");
    }
    // Someone else is served at once on both routers.
    let other = |url: &str, extra: &[&str]| -> (u16, String) {
        let mut args = vec!["--interface", OTHER_CLIENT_IP];
        args.extend_from_slice(extra);
        args.push(url);
        curl(&lab, &args)
    };
    let resolve = format!("alice.http.lab.example:443:{PUBLIC_IP}");
    let crt = crt.display().to_string();
    let t0 = Instant::now();
    let (code, body) = other(
        &format!("http://{PUBLIC_IP}/new"),
        &["-H", "Host: alice.http.lab.example"],
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = other(
        "https://alice.http.lab.example/",
        &["--cacert", &crt, "--resolve", &resolve],
    );
    assert_eq!((code, body.as_str()), (200, "alice tls client="));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    println!(
        "another client served on 80 and 443 in {:?} while 2000 connections were held",
        t0.elapsed()
    );

    // The idle ones are closed after idle_timeout, so the same address is served again.
    // Until then it is refused: a 429, or closed without a page (curl: empty reply) while
    // the router is still telling the flood's last ones why.
    let url = format!("http://{PUBLIC_IP}/again");
    let argv = [
        "curl",
        "-s",
        "--max-time",
        "5",
        "-H",
        "Host: alice.http.lab.example",
        &url,
    ];
    wait_until(
        "the holder's address served again",
        Duration::from_secs(25),
        || {
            let out = lab
                .exec(&lab.client, &argv, Duration::from_secs(10))
                .unwrap();
            String::from_utf8_lossy(&out.stdout).starts_with("alice GET /again")
        },
    );
    let m = lab.metrics().unwrap();
    for router in ["http", "https"] {
        let refused = metric_value(
            &m,
            "srvgate_web_errors_total",
            &[("router", router), ("reason", "max_connections_per_client")],
        )
        .unwrap_or(0.0);
        assert!(refused >= 800.0, "{router}: {refused}\n{m}");
    }
    lab.stop(on80, Duration::from_secs(2)).unwrap();
    lab.stop(on443, Duration::from_secs(2)).unwrap();
}

/// Opens, from each `ADDRESS=N` argument's address in turn, N connections to `port`, each
/// after one request answered 200 (else prints `refused` and ends); prints `held N`, then
/// `closed ADDRESS` for each connection the gateway closes, until `hold` seconds passed.
const FAIR_HOLDER: &str = r#"import select, socket, sys, time
host, port, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
plan = [(a, int(n)) for a, n in (x.split("=") for x in sys.argv[4:])]
req = b"GET /held HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n"
live = []
for addr, n in plan:
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=5, source_address=(addr, 0))
        s.sendall(req)
        reply = s.recv(4096)
        if not reply.startswith(b"HTTP/1.1 200"):
            print("refused", addr, reply[:40], flush=True)
            sys.exit(1)
        live.append((addr, s))
print("held %d" % len(live), flush=True)
end = time.time() + hold
poll = select.poll()
by_fd = {}
for addr, s in live:
    poll.register(s, select.POLLIN)
    by_fd[s.fileno()] = (addr, s)
while by_fd and time.time() < end:
    for fd, _ in poll.poll(200):
        addr, s = by_fd[fd]
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:
            print("closed", addr, flush=True)
            poll.unregister(fd)
            del by_fd[fd]
"#;

/// Three greedy addresses each hold max_connections_per_client and a modest one holds two,
/// which fills max_connections. A new address is served all the same, by closing one of
/// the greediest addresses' connections (the modest one keeps its two), while a greedy
/// address asking for one more is still refused.
#[test]
fn at_the_cap_a_new_client_is_served_at_the_greediest_addresses_expense() {
    let Some(lab) = Lab::for_test(
        "at_the_cap_a_new_client_is_served_at_the_greediest_addresses_expense",
        "httpfair",
    ) else {
        return;
    };
    lab.start_echo_web(&lab.b1, "alice", 8080).unwrap();
    let routes = [RouteSpec::tcp(
        "alice",
        "http",
        &format!("{B1_IP}:8080"),
        30080,
    )];
    // Idle long enough that nothing is closed for idleness while the test runs.
    let extra = "max_connections = 32\nmax_connections_per_client = 10\nidle_timeout = \"120s\"\n";
    lab.start_srvgate(&web_config(&lab, &routes, extra), &[])
        .unwrap();
    let greedy = ["10.210.1.11", "10.210.1.12", "10.210.1.13"];
    let (modest, newcomer) = ("10.210.1.14", "10.210.1.15");
    for ip in greedy.iter().chain([&modest, &newcomer]) {
        lab.exec_ok(
            &lab.client,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )
        .unwrap();
    }
    let holder = lab
        .write_file("fair_holder.py", FAIR_HOLDER)
        .unwrap()
        .display()
        .to_string();
    let mut argv = vec!["python3", &holder, PUBLIC_IP, "80", "90"];
    let plan: Vec<String> = greedy
        .iter()
        .map(|ip| format!("{ip}=10"))
        .chain([format!("{modest}=2")])
        .collect();
    argv.extend(plan.iter().map(String::as_str));
    let pid = lab.spawn(&lab.client, &argv).unwrap();
    let log = lab.log_path(pid).unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("32 connections held", Duration::from_secs(60), || {
        let text = read_log();
        assert!(!text.contains("refused"), "{text}");
        text.contains("held 32")
    });
    let open = || {
        metric_value(
            &lab.metrics().unwrap(),
            "srvgate_web_connections_open",
            &[("router", "http")],
        )
    };
    assert_eq!(open(), Some(32.0));

    let from = |ip: &str, path: &str| -> (u16, String) {
        curl(
            &lab,
            &[
                "--interface",
                ip,
                "-H",
                "Host: alice.http.lab.example",
                &format!("http://{PUBLIC_IP}{path}"),
            ],
        )
    };
    // A greedy address gets no more than it has: it may not evict to grow.
    let (code, body) = from(greedy[0], "/more");
    assert_ne!(code, 200, "{body}");
    // The newcomer is served at once.
    let (code, body) = from(newcomer, "/new");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("alice GET /new"), "{body}");

    // Exactly one connection was closed for it, and a greedy address's.
    wait_until("a held connection closed", Duration::from_secs(10), || {
        read_log().contains("closed")
    });
    let text = read_log();
    let closed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("closed "))
        .collect();
    assert_eq!(closed.len(), 1, "{text}");
    assert!(greedy.contains(&closed[0]), "{text}");
    // The newcomer's connection ended with its request: one place is free again.
    wait_until("31 connections open", Duration::from_secs(10), || {
        open() == Some(31.0)
    });
    let m = lab.metrics().unwrap();
    assert_eq!(
        metric_value(
            &m,
            "srvgate_web_errors_total",
            &[("router", "http"), ("reason", "evicted")]
        ),
        Some(1.0),
        "{m}"
    );
    lab.stop(pid, Duration::from_secs(2)).unwrap();
}

/// Issue 24 item 6: a student whose rule is the private /24 tried to publish a web service
/// of the gateway itself (here one listening on the gateway's private address) through the
/// HTTP router. The claim and an admin's `route add` are refused naming the rule. Routes
/// whose backend address arrives on one of the gateway's interfaces later: a runtime one is
/// withdrawn at the daemon's next address refresh, a config one (the file's) is named, and
/// the router never relays to either (it checks every connection).
#[test]
fn the_gateway_itself_is_never_a_web_backend() {
    let Some(lab) = Lab::for_test("the_gateway_itself_is_never_a_web_backend", "hself") else {
        return;
    };
    lab.start_echo_web(&lab.gw, "the gateway's own", 8080)
        .unwrap();
    let portal = format!("[portal]\nlisten = [\"{PUBLIC_IP}:8443\"]\n");
    let (later_cfg, later_rt) = ("10.210.2.50", "10.210.2.51");
    let routes = [RouteSpec::tcp(
        "mallory",
        "http",
        &format!("{later_cfg}:8080"),
        30080,
    )];
    lab.start_srvgate(&web_config(&lab, &routes, &portal), &[])
        .unwrap();
    lab.set_resolver(&lab.client, PUBLIC_IP).unwrap();

    let out = lab
        .srvgate_ctl_ok(&["user", "add", "eve", "--allow", "10.210.2.0/24", "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    // The student's claim, as the portal takes it (the CLI's request, sent by curl).
    let own = format!("{GW_PRIV1_IP}:8080");
    let body = format!(r#"{{"service":"http","backend":"{own}"}}"#);
    let (code, reply) = curl(
        &lab,
        &[
            "-k",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            &format!("https://{PUBLIC_IP}:8443/v1/me/routes"),
        ],
    );
    assert_eq!(code, 403, "{reply}");
    assert!(
        reply.contains(&own) && reply.contains("gateway itself") && reply.contains("priv1"),
        "{reply}"
    );
    let out = lab
        .srvgate_ctl(&[
            "route",
            "add",
            "eve",
            "--service",
            "http",
            "--backend",
            &own,
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gateway itself"),
        "{}: {err}",
        out.status
    );
    let (code, reply) = get_host(&lab, "eve.http.lab.example");
    assert_eq!(code, 404, "{reply}");

    // Addresses the gateway takes after the routes to them were checked.
    lab.srvgate_ctl_ok(&[
        "route",
        "add",
        "trudy",
        "--service",
        "http",
        "--backend",
        &format!("{later_rt}:8080"),
    ])
    .unwrap();
    for addr in [later_cfg, later_rt] {
        lab.exec_ok(
            &lab.gw,
            &["ip", "addr", "add", &format!("{addr}/32"), "dev", "priv1"],
        )
        .unwrap();
    }
    for host in ["mallory.http.lab.example", "trudy.http.lab.example"] {
        let (code, reply) = get_host(&lab, host);
        assert!(code == 502 || code == 404, "{host}: {code} {reply}");
        assert!(!reply.contains("the gateway's own"), "{host}: {reply}");
    }
    wait_until(
        "the daemon withdraws trudy's runtime route and names mallory's config route",
        Duration::from_secs(30),
        || {
            let log = lab.srvgate_log();
            let ls = lab.srvgate_ctl_ok(&["route", "ls"]).unwrap_or_default();
            !ls.contains("trudy")
                && log.contains("mallory/http/tcp")
                && log.contains("config route's backend is now the gateway itself")
        },
    );
    // The config route stays in the table, and the router still refuses it.
    let (code, reply) = get_host(&lab, "mallory.http.lab.example");
    assert_eq!(code, 502, "{reply}");
}
