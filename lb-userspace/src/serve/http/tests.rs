use std::net::{IpAddr, Ipv4Addr};

use super::*;
use lb_model::{Protocol, ProxyProtocol};

fn req(head: &[u8]) -> Result<head::Request, Reject> {
    parse_request(head).map(|r| r.expect("a complete head"))
}

fn host(head: &[u8]) -> String {
    req(head).unwrap().host
}

fn bad(head: &[u8]) -> &'static str {
    match req(head) {
        Err(Reject::BadRequest(why)) => why,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(head)),
    }
}

#[test]
fn host_comes_from_the_host_header_normalized() {
    let head = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT:  Alice.HTTP.Lab.Example.:8080 \r\n\r\n";
    assert_eq!(host(head), "alice.http.lab.example");
    let head = b"GET /x HTTP/1.0\r\nHost: bob.http.lab.example\r\n\r\n";
    assert_eq!(host(head), "bob.http.lab.example");
    assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
}

#[test]
fn an_absolute_target_wins_over_host_in_any_scheme_case() {
    for target in [
        "http://carol.http.lab.example:80/p?q",
        "HTTP://carol.http.lab.example/p?q",
        "https://Carol.http.lab.example/p?q",
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n");
        let r = req(head.as_bytes()).unwrap();
        assert_eq!(r.host, "carol.http.lab.example", "{target}");
        assert_eq!(r.path, "/p?q", "{target}");
        // The backend sees origin-form and the Host it was routed by.
        let sent = String::from_utf8(r.head_for_backend(None)).unwrap();
        assert!(sent.starts_with("GET /p?q HTTP/1.1\r\nHost: "), "{sent}");
        assert!(!sent.contains("alice"), "{sent}");
    }
    let r = req(b"GET http://bob.http.lab.example?q=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(
        (r.host.as_str(), r.path.as_str()),
        ("bob.http.lab.example", "/?q=1")
    );
    let r = req(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.path, "*");
}

#[test]
fn smuggling_shapes_and_bad_heads_are_400() {
    let shapes: [&[u8]; 16] = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : bob\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET http://u@bob/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ftp://bob/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    ];
    for head in shapes {
        bad(head);
    }
    assert_eq!(bad(b"GET / HTTP/2\r\nHost: a\r\n\r\n"), "not HTTP/1.x");
    bad(b"GET /\r\nHost: a\r\n\r\n");
    bad(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n");
    bad(b"GET / HTTP/1.1\r\nHost: \r\n\r\n");
    bad(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n");
    bad(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        req(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
        Err(Reject::Method)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X: y\r\n".repeat(200)
    );
    assert_eq!(req(many.as_bytes()), Err(Reject::TooLarge));
}

#[test]
fn bodies_connection_and_upgrade() {
    let r = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").unwrap();
    assert_eq!((r.body, r.close), (Body::Length(12), false));
    let r = req(
        b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: Chunked\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!((r.body, r.close), (Body::Chunked, true));
    let r = req(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
    assert!(r.close, "1.0 closes by default");
    let r = req(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
    assert!(!r.close);
    let r = req(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    assert!(r.upgrade);
    let r = req(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap();
    assert!(
        !r.upgrade,
        "Upgrade without Connection: upgrade is no upgrade"
    );
}

#[test]
fn forwarded_for_replaces_what_the_client_claims() {
    let r = req(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\nX-Real: 1\r\n\r\n")
        .unwrap();
    let kept = String::from_utf8(r.head_for_backend(None)).unwrap();
    assert!(kept.contains("X-Forwarded-For: 1.2.3.4\r\n"), "{kept}");
    let ip = IpAddr::V4(Ipv4Addr::new(10, 210, 1, 2));
    let sent = String::from_utf8(r.head_for_backend(Some(ip))).unwrap();
    assert_eq!(
        sent,
        "GET / HTTP/1.1\r\nHost: a\r\nX-Real: 1\r\nX-Forwarded-For: 10.210.1.2\r\n\
         Forwarded: for=10.210.1.2\r\n\r\n"
    );
}

#[test]
fn response_framing() {
    let p = |h: &[u8], head, upgrade| parse_response(h, head, upgrade).unwrap().unwrap();
    let r = p(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        false,
        false,
    );
    assert_eq!((r.body, r.close, r.len), (Body::Length(5), false, 38));
    assert_eq!(
        p(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false).body,
        Body::None
    );
    assert_eq!(
        p(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
            false
        )
        .body,
        Body::None
    );
    assert_eq!(
        p(b"HTTP/1.1 204 No Content\r\n\r\n", false, false).body,
        Body::None
    );
    let r = p(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
        false,
    );
    assert_eq!(r.body, Body::Chunked);
    let r = p(b"HTTP/1.1 200 OK\r\n\r\n", false, false);
    assert_eq!((r.body, r.close), (Body::UntilClose, true));
    let r = p(b"HTTP/1.1 100 Continue\r\n\r\n", false, false);
    assert!(r.interim && !r.upgraded);
    let r = p(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        false,
        true,
    );
    assert!(r.upgraded && !r.interim);
    assert!(parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", false, false).is_err());
    assert!(parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        false,
        false
    )
    .is_err());
    assert!(parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
        false
    )
    .is_err());
    let r = p(
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
        false,
        false,
    );
    assert!(r.close, "1.0 closes by default");
}

#[tokio::test]
async fn chunked_bodies_are_copied_to_their_end_and_no_further() {
    let input = b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nGET /next";
    let mut r = Reader::new(&input[..]);
    let mut out = Vec::new();
    let counter = std::sync::atomic::AtomicU64::new(0);
    copy_chunked(&mut r, &mut out, Duration::from_secs(1), &counter)
        .await
        .unwrap();
    assert_eq!(out, &input[..input.len() - 9]);
    assert_eq!(r.buf, b"GET /next");
    for broken in [&b"5\r\nhelloXX0\r\n\r\n"[..], b"zz\r\n", b"5\r\nhel"] {
        let mut r = Reader::new(broken);
        let res = copy_chunked(&mut r, &mut Vec::new(), Duration::from_secs(1), &counter).await;
        assert!(res.is_err(), "{:?}", String::from_utf8_lossy(broken));
    }
}

fn route(name: &str, service: &str, backend: SocketAddr) -> lb_model::Route {
    let SocketAddr::V4(backend) = backend else {
        panic!("v4 only")
    };
    lb_model::Route {
        name: name.into(),
        service: service.into(),
        protocol: Protocol::Tcp,
        backends: lb_model::Pool::one(backend),
        port: 30080,
        proxy_protocol: None,
    }
}

/// A keep-alive backend that answers every request with `TAG METHOD PATH host=HOST
/// body=BODY conn=N` (N: which of its connections this is), framed by Content-Length. A
/// request to `/ws` with an upgrade gets a 101 and then an echo of what follows.
async fn backend(tag: &'static str) -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        for n in 1.. {
            let Ok((s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut rd = Reader::new(rd);
                let idle = Duration::from_secs(5);
                let counter = std::sync::atomic::AtomicU64::new(0);
                loop {
                    let r = loop {
                        match parse_request(&rd.buf) {
                            Ok(Some(r)) => break r,
                            Ok(None) => {
                                if rd.fill(idle).await.unwrap_or(0) == 0 {
                                    return;
                                }
                            }
                            Err(e) => panic!("backend got a bad head: {e:?}"),
                        }
                    };
                    rd.consume(r.len);
                    let mut body = Vec::new();
                    copy_body(&mut rd, &mut body, r.body, idle, &counter)
                        .await
                        .unwrap();
                    if r.upgrade {
                        wr.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                            .await
                            .unwrap();
                        let _ = rd.pump(&mut wr, idle, &counter, None).await;
                        return;
                    }
                    let text = format!(
                        "{tag} {} {} host={} body={} conn={n}",
                        r.method,
                        r.path,
                        r.host,
                        String::from_utf8_lossy(&body)
                    );
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    wr.write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    addr
}

fn http_cfg(service: &str) -> config::Http {
    config::Http {
        listen: vec![(Ipv4Addr::LOCALHOST, 0).into()],
        service: service.into(),
        limits: WebLimits::default(),
        forwarded_for: false,
        redirect_https: false,
    }
}

/// Sends `head`, reads until the router closes (bounded).
async fn get(server: SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the router answered")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one Content-Length-framed response from `s`.
async fn response(s: &mut Reader<&mut TcpStream>) -> String {
    let idle = Duration::from_secs(5);
    loop {
        if let Some(r) = parse_response(&s.buf, false, false).unwrap() {
            let Body::Length(n) = r.body else {
                panic!("unframed: {:?}", String::from_utf8_lossy(&s.buf))
            };
            let total = r.len + n as usize;
            while s.buf.len() < total {
                assert!(s.fill(idle).await.unwrap() > 0, "closed mid-response");
            }
            let text = String::from_utf8_lossy(&s.buf[..total]).into_owned();
            s.consume(total);
            return text;
        }
        assert!(s.fill(idle).await.unwrap() > 0, "closed before a response");
    }
}

#[tokio::test]
async fn every_request_on_a_connection_goes_to_its_own_host() {
    let (a, b) = (backend("alice").await, backend("bob").await);
    let routes = [route("alice", "http", a), route("bob", "http", b)];
    let server = HttpServer::start(&http_cfg("http"), "lab.example", &routes)
        .await
        .unwrap();
    let at = server.local_addrs()[0];
    let mut s = TcpStream::connect(at).await.unwrap();
    // Pipelined: a chunked POST for alice, then bob, then alice again, in one write.
    s.write_all(
        b"POST /first HTTP/1.1\r\nHost: alice.http.lab.example\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: bob.http.lab.example\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: alice.http.lab.example\r\nContent-Length: 2\r\n\r\nxy",
    )
    .await
    .unwrap();
    let mut r = Reader::new(&mut s);
    let one = response(&mut r).await;
    assert!(
        one.ends_with(
            "alice POST /first host=alice.http.lab.example body=3\r\nabc\r\n0\r\n\r\n conn=1"
        ),
        "{one}"
    );
    let two = response(&mut r).await;
    assert!(
        two.ends_with("bob GET /second host=bob.http.lab.example body= conn=1"),
        "{two}"
    );
    let three = response(&mut r).await;
    // A new backend connection: the one before went to bob.
    assert!(
        three.ends_with("alice GET /third host=alice.http.lab.example body=xy conn=2"),
        "{three}"
    );
    // Same host again: the backend connection is reused.
    r.fill(Duration::from_millis(1)).await.ok();
    drop(r);
    s.write_all(b"GET /fourth HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n")
        .await
        .unwrap();
    let four = response(&mut Reader::new(&mut s)).await;
    assert!(
        four.ends_with("alice GET /fourth host=alice.http.lab.example body= conn=2"),
        "{four}"
    );

    // An absolute-form target for bob with Host alice reaches bob, in origin-form.
    let r = get(
        at,
        "GET HTTP://bob.http.lab.example/x?q=1 HTTP/1.1\r\nHost: alice.http.lab.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.ends_with("bob GET /x?q=1 host=bob.http.lab.example body= conn=2"),
        "{r}"
    );
    let sample = server.sample();
    assert_eq!(sample.requests, 5);
    assert!(sample.bytes_to_clients > 0 && sample.bytes_from_clients > 0);
}

#[tokio::test]
async fn routes_follow_updates_and_errors_are_pages() {
    let (a, b) = (backend("alice").await, backend("bob").await);
    let server = HttpServer::start(
        &http_cfg("http"),
        "lab.example",
        &[route("alice", "http", a)],
    )
    .await
    .unwrap();
    let at = server.local_addrs()[0];
    let bob = get(at, "GET / HTTP/1.1\r\nHost: bob.http.lab.example\r\n\r\n").await;
    assert!(bob.starts_with("HTTP/1.1 404"), "{bob}");
    assert!(
        bob.contains("no route for host bob.http.lab.example"),
        "{bob}"
    );
    // A route of another service is not reachable by HTTP name.
    server.update(&[route("alice", "http", a), route("bob", "ssh", b)]);
    let bob = get(at, "GET / HTTP/1.1\r\nHost: bob.http.lab.example\r\n\r\n").await;
    assert!(bob.starts_with("HTTP/1.1 404"), "{bob}");
    server.update(&[route("bob", "http", b)]);
    let bob = get(
        at,
        "GET / HTTP/1.1\r\nHost: BOB.http.lab.example:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(bob.contains("bob GET / host=bob.http.lab.example"), "{bob}");
    let alice = get(at, "GET / HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n").await;
    assert!(alice.starts_with("HTTP/1.1 404"), "removed: {alice}");
    let smuggle = get(
        at,
        "GET / HTTP/1.1\r\nHost : alice.http.lab.example\r\nHost: bob.http.lab.example\r\n\r\n",
    )
    .await;
    assert!(smuggle.starts_with("HTTP/1.1 400"), "{smuggle}");
    let sample = server.sample();
    let errors: std::collections::HashMap<_, _> = sample.errors.into_iter().collect();
    assert_eq!((errors["no_route"], errors["bad_request"]), (3, 1));
}

#[tokio::test]
async fn an_unreachable_backend_is_a_502_without_its_address() {
    // A port nothing listens on: bind, note it, close.
    let dead = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let server = HttpServer::start(
        &http_cfg("web"),
        "lab.example",
        &[route("dave", "web", dead)],
    )
    .await
    .unwrap();
    let at = server.local_addrs()[0];
    let r = get(at, "GET / HTTP/1.1\r\nHost: dave.web.lab.example\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(
        r.contains("the server of dave.web.lab.example cannot be reached"),
        "{r}"
    );
    assert!(
        !r.contains("127.0.0.1") && !r.contains(&format!(":{}", dead.port())),
        "{r}"
    );

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: dave.web.lab.example\r\nX: {}\r\n\r\n",
        "a".repeat(MAX_REQUEST_HEAD + 10)
    );
    let r = get(at, &huge).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
}

#[tokio::test]
async fn upgrades_become_tunnels() {
    let a = backend("alice").await;
    let server = HttpServer::start(
        &http_cfg("http"),
        "lab.example",
        &[route("alice", "http", a)],
    )
    .await
    .unwrap();
    let mut s = TcpStream::connect(server.local_addrs()[0]).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: alice.http.lab.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nping")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert!(out.ends_with("\r\n\r\nping"), "{out}");
}

#[tokio::test]
async fn idle_clients_are_closed_and_one_address_cannot_take_every_slot() {
    let a = backend("alice").await;
    let mut cfg = http_cfg("http");
    cfg.limits = WebLimits {
        max_connections: 8,
        max_connections_per_client: 2,
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_millis(300),
    };
    let server = HttpServer::start(&cfg, "lab.example", &[route("alice", "http", a)])
        .await
        .unwrap();
    let at = server.local_addrs()[0];
    // One request, its answer, then idling: closed after idle_timeout, not held.
    let mut s = TcpStream::connect(at).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .expect("closed after idling")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(t0.elapsed() < Duration::from_secs(2));

    // Two silent connections from 127.0.0.1 are its share; the third is told so. Each step
    // waits (bounded, generously for a loaded machine) until the server holds what it
    // should: the closed one gone, then both silent ones, else the third could be admitted.
    let admission = &server.shared().core.admission;
    let held = |n: usize| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while admission.open() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "the router holds {} connections, not {n}",
                admission.open()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    held(0).await;
    let _q1 = TcpStream::connect(at).await.unwrap();
    let _q2 = TcpStream::connect(at).await.unwrap();
    held(2).await;
    let third = get(at, "GET / HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n").await;
    assert!(third.starts_with("HTTP/1.1 429"), "{third}");
    // And a silent one gets a 408 after header_timeout.
    let mut out = String::new();
    let mut q1 = _q1;
    tokio::time::timeout(Duration::from_secs(3), q1.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
}

#[tokio::test]
async fn a_proxy_protocol_route_gets_the_header_first() {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let mut r = route("alice", "http", l.local_addr().unwrap());
    r.proxy_protocol = Some(ProxyProtocol::V1);
    let server = HttpServer::start(&http_cfg("http"), "lab.example", &[r])
        .await
        .unwrap();
    let at = server.local_addrs()[0];
    let mut c = TcpStream::connect(at).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n")
        .await
        .unwrap();
    let (mut b, _) = l.accept().await.unwrap();
    let mut got = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), read_until_head(&mut b, &mut got))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got[..n]);
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nGET / HTTP/1.1\r\n",
        me.port(),
        at.port()
    );
    assert!(text.starts_with(&want), "{text}");
}

/// Reads into `buf` until it holds a blank line (the end of a head); returns its length.
async fn read_until_head(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let got = s.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// A backend with canned responses by path, on keep-alive connections.
async fn scripted_backend() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut rd = Reader::new(rd);
                loop {
                    let r = loop {
                        if let Ok(Some(r)) = parse_request(&rd.buf) {
                            break r;
                        }
                        if rd.fill(Duration::from_secs(5)).await.unwrap_or(0) == 0 {
                            return;
                        }
                    };
                    rd.consume(r.len);
                    let reply: &[u8] = match r.path.as_str() {
                        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                        "/chunked" => {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
                        }
                        _ => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    wr.write_all(reply).await.unwrap();
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn responses_are_relayed_as_their_heads_frame_them() {
    let b = scripted_backend().await;
    let server = HttpServer::start(
        &http_cfg("http"),
        "lab.example",
        &[route("alice", "http", b)],
    )
    .await
    .unwrap();
    let h = "Host: alice.http.lab.example";
    // A HEAD's Content-Length promises no body, a chunked body ends at its last chunk, a 100
    // comes before the real response: were any misread, the next would never come.
    let out = get(
        server.local_addrs()[0],
        &format!(
            "HEAD /head HTTP/1.1\r\n{h}\r\n\r\nGET /chunked HTTP/1.1\r\n{h}\r\n\r\n\
             GET /continue HTTP/1.1\r\n{h}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\
         HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
         HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    );
}

/// Sends one request on `s` (keep-alive) and returns which backend answered (its tag).
async fn ask(s: &mut TcpStream, host: &str) -> String {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let text = response(&mut Reader::new(s)).await;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.split(' ').next().unwrap_or_default().to_string()
}

fn members(addrs: &[SocketAddr]) -> Vec<web::Member> {
    addrs
        .iter()
        .map(|a| web::Member {
            backend: web::Backend {
                addr: match a {
                    SocketAddr::V4(a) => *a,
                    SocketAddr::V6(_) => panic!("v4 only"),
                },
                proxy_protocol: None,
            },
            weight: 1,
        })
        .collect()
}

#[tokio::test]
async fn requests_rotate_over_the_pool_and_skip_what_it_leaves_out() {
    let (a, b, c) = (
        backend("alice").await,
        backend("bob").await,
        backend("carol").await,
    );
    let server = HttpServer::start(
        &http_cfg("http"),
        "lab.example",
        &[route("judge", "http", a)],
    )
    .await
    .unwrap();
    let hosts = &server.shared().core.hosts;
    hosts.set([("judge".to_string(), members(&[a, b, c]))]);
    let mut s = TcpStream::connect(server.local_addrs()[0]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(ask(&mut s, "judge.http.lab.example").await);
    }
    assert_eq!(seen, ["alice", "bob", "carol", "alice", "bob", "carol"]);

    // bob down or drained: the pool the router is given leaves it out.
    hosts.set([("judge".to_string(), members(&[a, c]))]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(ask(&mut s, "judge.http.lab.example").await);
    }
    seen.sort();
    assert_eq!(seen, ["alice", "alice", "carol", "carol"]);
}

#[tokio::test]
async fn a_backend_that_cannot_be_reached_is_passed_over() {
    let dead = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let a = backend("alice").await;
    let server = HttpServer::start(
        &http_cfg("http"),
        "lab.example",
        &[route("judge", "http", a)],
    )
    .await
    .unwrap();
    server
        .shared()
        .core
        .hosts
        .set([("judge".to_string(), members(&[dead, a]))]);
    for _ in 0..4 {
        let r = get(
            server.local_addrs()[0],
            "GET / HTTP/1.1\r\nHost: judge.http.lab.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\r\n\r\nalice "),
            "{r}"
        );
    }
    // Every backend unreachable: one 502, after trying them all.
    server
        .shared()
        .core
        .hosts
        .set([("judge".to_string(), members(&[dead]))]);
    let r = get(
        server.local_addrs()[0],
        "GET / HTTP/1.1\r\nHost: judge.http.lab.example\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
}

#[tokio::test]
async fn an_upgrade_stays_on_its_backend_and_counts_as_outstanding() {
    let (a, b) = (backend("alice").await, backend("bob").await);
    let server = HttpServer::start(
        &http_cfg("http"),
        "lab.example",
        &[route("judge", "http", a)],
    )
    .await
    .unwrap();
    let hosts = &server.shared().core.hosts;
    hosts.set([("judge".to_string(), members(&[a, b]))]);
    let at = server.local_addrs()[0];
    // The pool's first pick is alice: the WebSocket goes there and stays.
    let mut ws = TcpStream::connect(at).await.unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: judge.http.lab.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = read_until_head(&mut ws, &mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"));
    let pool = hosts.pool("judge.http.lab.example").unwrap();
    let SocketAddr::V4(a4) = a else { panic!() };
    assert_eq!(pool.outstanding(a4), 1, "the tunnel holds its backend");
    // While it is open, alice has more outstanding: plain requests go to bob.
    let mut s = TcpStream::connect(at).await.unwrap();
    for _ in 0..3 {
        assert_eq!(ask(&mut s, "judge.http.lab.example").await, "bob");
    }
    // The tunnel still reaches the same backend (its echo).
    for word in [&b"one"[..], b"two"] {
        ws.write_all(word).await.unwrap();
        let mut back = vec![0u8; word.len()];
        tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, word);
    }
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), async {
        while pool.outstanding(a4) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the closed tunnel gave its backend back");
    let mut picks = Vec::new();
    for _ in 0..2 {
        picks.push(ask(&mut s, "judge.http.lab.example").await);
    }
    picks.sort();
    assert_eq!(picks, ["alice", "bob"]);
}

/// The routers take what the table serves: a drained member and one the health checks
/// found down get no request; the others share them.
#[tokio::test]
async fn drained_and_down_members_get_no_request() {
    use crate::table::routes::{RouteTable, Source};
    let (a, b, c, d) = (
        backend("alice").await,
        backend("bob").await,
        backend("carol").await,
        backend("dave").await,
    );
    let texts = [
        a.to_string(),
        format!("{b} drained"),
        c.to_string(),
        d.to_string(),
    ];
    let judge = lb_model::Route {
        backends: lb_model::Pool::parse(&texts).unwrap(),
        ..route("judge", "http", a)
    };
    let key = judge.key();
    let mut table = RouteTable::new();
    table
        .insert(judge, Source::Runtime, std::time::SystemTime::now(), None)
        .unwrap();
    let SocketAddr::V4(c4) = c else { panic!() };
    table.set_down(&key, c4, true).unwrap();
    let server = HttpServer::start(&http_cfg("http"), "lab.example", &table.serving_routes())
        .await
        .unwrap();
    let mut s = TcpStream::connect(server.local_addrs()[0]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(ask(&mut s, "judge.http.lab.example").await);
    }
    assert_eq!(seen, ["alice", "dave", "alice", "dave"]);

    // carol is back up: the next update puts her in the rotation.
    table.set_down(&key, c4, false).unwrap();
    server.update(&table.serving_routes());
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(ask(&mut s, "judge.http.lab.example").await);
    }
    seen.sort();
    assert_eq!(seen, ["alice", "carol", "dave"]);
}
