use std::net::Ipv4Addr;

use super::*;

#[test]
fn host_comes_from_the_host_header_normalized() {
    let head = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT:  Alice.HTTP.Lab.Example.:8080 \r\n\r\n";
    assert_eq!(request_host(head).unwrap(), "alice.http.lab.example");
    let head = b"GET /x HTTP/1.0\r\nHost: bob.http.lab.example\r\n\r\n";
    assert_eq!(request_host(head).unwrap(), "bob.http.lab.example");
}

#[test]
fn an_absolute_target_wins_over_host() {
    let head = b"GET http://carol.http.lab.example:80/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
    assert_eq!(request_host(head).unwrap(), "carol.http.lab.example");
}

#[test]
fn bad_heads_are_bad_requests() {
    let bad = |h: &[u8]| matches!(request_host(h), Err(Reject::BadRequest(_)));
    assert!(bad(b"GET / HTTP/1.1\r\n\r\n"), "no host");
    assert!(
        bad(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        "two hosts"
    );
    assert!(bad(b"GET / HTTP/2\r\nHost: a\r\n\r\n"), "not 1.x");
    assert!(bad(b"GET /\r\nHost: a\r\n\r\n"), "no version");
    assert!(
        bad(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"),
        "header line"
    );
    assert!(bad(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), "space in host");
    assert!(bad(b"GET / HTTP/1.1\r\nHost: \r\n\r\n"), "empty host");
    assert!(bad(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n"), "not utf-8");
}

#[test]
fn route_names_are_one_label_under_the_suffix() {
    let s = "http.lab.example";
    assert_eq!(route_name("alice.http.lab.example", s), Some("alice"));
    assert_eq!(route_name("http.lab.example", s), None);
    assert_eq!(route_name("x.alice.http.lab.example", s), None);
    assert_eq!(route_name("alice.ssh.lab.example", s), None);
    assert_eq!(route_name("alicehttp.lab.example", s), None);
    assert_eq!(route_name(".http.lab.example", s), None);
}

#[test]
fn head_ends_at_the_blank_line() {
    assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
}

fn route(name: &str, service: &str, backend: SocketAddr) -> config::Route {
    let SocketAddr::V4(backend) = backend else {
        panic!("v4 only")
    };
    config::Route {
        name: name.into(),
        service: service.into(),
        protocol: Protocol::Tcp,
        backend,
        port: 30080,
        proxy_protocol: None,
    }
}

/// A backend that answers every connection's first request with its own tag and the
/// request's first line.
async fn backend(tag: &'static str) -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let end = read_head(&mut s, &mut buf).await.unwrap().unwrap();
                let first = String::from_utf8_lossy(&buf[..end])
                    .lines()
                    .next()
                    .unwrap()
                    .to_string();
                let body = format!("{tag} {first}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            });
        }
    });
    addr
}

async fn get(server: SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("the router answered")
        .unwrap();
    out
}

#[tokio::test]
async fn routes_by_host_and_follows_updates() {
    let (a, b) = (backend("alice").await, backend("bob").await);
    let cfg = config::Http {
        listen: vec![(Ipv4Addr::LOCALHOST, 0).into()],
        service: "http".into(),
    };
    let server = HttpServer::start(&cfg, "lab.example", &[route("alice", "http", a)])
        .await
        .unwrap();
    let at = server.local_addrs()[0];
    let alice = get(
        at,
        "GET /x HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n",
    )
    .await;
    assert!(alice.starts_with("HTTP/1.1 200"), "{alice}");
    assert!(alice.ends_with("alice GET /x HTTP/1.1"), "{alice}");

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
        "GET / HTTP/1.1\r\nHost: BOB.http.lab.example:80\r\n\r\n",
    )
    .await;
    assert!(bob.ends_with("bob GET / HTTP/1.1"), "{bob}");
    let alice = get(at, "GET / HTTP/1.1\r\nHost: alice.http.lab.example\r\n\r\n").await;
    assert!(alice.starts_with("HTTP/1.1 404"), "removed: {alice}");

    let bad = get(at, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
}

#[tokio::test]
async fn an_unreachable_backend_is_a_502_and_a_huge_head_a_431() {
    // A port nothing listens on: bind, note it, close.
    let dead = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let cfg = config::Http {
        listen: vec![(Ipv4Addr::LOCALHOST, 0).into()],
        service: "web".into(),
    };
    let server = HttpServer::start(&cfg, "lab.example", &[route("dave", "web", dead)])
        .await
        .unwrap();
    let at = server.local_addrs()[0];
    let r = get(at, "GET / HTTP/1.1\r\nHost: dave.web.lab.example\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(r.contains(&dead.to_string()), "{r}");

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: dave.web.lab.example\r\nX: {}\r\n\r\n",
        "a".repeat(MAX_HEAD + 10)
    );
    let r = get(at, &huge).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
}
