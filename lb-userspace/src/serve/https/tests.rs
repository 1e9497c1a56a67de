use std::{net::Ipv4Addr, time::Duration};
use tokio::net::TcpListener;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use lb_model::{Protocol, ProxyProtocol};

/// The first flight of a real rustls client: its ClientHello, with SNI `name` (none for
/// `None`).
fn client_hello(name: Option<&str>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.enable_sni = name.is_some();
    let server =
        rustls::pki_types::ServerName::try_from(name.unwrap_or("x.example").to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn the_name_comes_from_the_client_hello() {
    let hello = client_hello(Some("Alice.HTTP.lab.example"));
    assert_eq!(
        parse_hello(&hello),
        Hello::Complete(Some("alice.http.lab.example".into()))
    );
    assert_eq!(parse_hello(&client_hello(None)), Hello::Complete(None));
    // Cut anywhere, it is incomplete, never misread.
    for cut in [1, 5, 6, hello.len() / 2, hello.len() - 1] {
        assert_eq!(parse_hello(&hello[..cut]), Hello::Partial, "cut at {cut}");
    }
    assert!(matches!(
        parse_hello(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        Hello::Refused(..)
    ));
}

fn route(name: &str, backend: std::net::SocketAddr, pp: Option<ProxyProtocol>) -> lb_model::Route {
    let std::net::SocketAddr::V4(backend) = backend else {
        panic!("v4 only")
    };
    lb_model::Route {
        name: name.into(),
        service: "https".into(),
        protocol: Protocol::Tcp,
        backends: lb_model::Pool::one(backend),
        port: 30443,
        proxy_protocol: pp,
    }
}

#[tokio::test]
async fn relays_by_name_and_alerts_otherwise() {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let backend = l.local_addr().unwrap();
    let cfg = config::Https {
        listen: vec![(Ipv4Addr::LOCALHOST, 0).into()],
        service: "https".into(),
        limits: WebLimits::default(),
    };
    let server = HttpsServer::start(
        &cfg,
        Some("http"),
        "lab.example",
        &[route("alice", backend, Some(ProxyProtocol::V2))],
        None,
    )
    .await
    .unwrap();
    let at = server.local_addrs()[0];

    // The HTTP name works on 443 too; the backend gets the PROXY header, then the hello.
    let hello = client_hello(Some("alice.http.lab.example"));
    let mut c = TcpStream::connect(at).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(&hello).await.unwrap();
    let (mut b, _) = l.accept().await.unwrap();
    let want = {
        let mut w = proxy_header::encode(ProxyProtocol::V2, me, at);
        w.extend_from_slice(&hello);
        w
    };
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), b.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, want);
    b.write_all(b"server bytes").await.unwrap();
    drop(b);
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"server bytes");

    for (name, desc) in [
        (Some("bob.https.lab.example"), UNRECOGNIZED_NAME),
        (None, UNRECOGNIZED_NAME),
    ] {
        let mut c = TcpStream::connect(at).await.unwrap();
        c.write_all(&client_hello(name)).await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, alert(desc), "{name:?}");
    }
    let sample = server.sample();
    let errors: std::collections::HashMap<_, _> = sample.errors.into_iter().collect();
    assert_eq!(
        (sample.requests, errors["no_route"], errors["no_sni"]),
        (1, 1, 1)
    );
}

/// A relay to `at` from `src` through the router, and the backend's end of it.
async fn relay_from(
    src: &str,
    at: std::net::SocketAddr,
    backend: &TcpListener,
) -> (TcpStream, TcpStream) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut c = s.connect(at).await.unwrap();
    c.write_all(&client_hello(Some("alice.https.lab.example")))
        .await
        .unwrap();
    let (b, _) = tokio::time::timeout(Duration::from_secs(5), backend.accept())
        .await
        .expect("relayed to the backend")
        .unwrap();
    (c, b)
}

/// Whether the peer of `s` closes it (within 5 s), after whatever it still had to send.
async fn closed(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .is_ok()
}

/// At max_connections a newcomer's relay ends the idlest relay of the address holding the
/// most: both of that relay's sockets are closed, the client's and the backend's.
#[tokio::test]
async fn an_evicted_relay_closes_both_of_its_sockets() {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let backend = l.local_addr().unwrap();
    let cfg = config::Https {
        listen: vec![(Ipv4Addr::LOCALHOST, 0).into()],
        service: "https".into(),
        limits: WebLimits {
            max_connections: 3,
            max_connections_per_client: 3,
            ..WebLimits::default()
        },
    };
    let server = HttpsServer::start(
        &cfg,
        None,
        "lab.example",
        &[route("alice", backend, None)],
        None,
    )
    .await
    .unwrap();
    let at = server.local_addrs()[0];
    let (mut c1, mut b1) = relay_from("127.0.0.2", at, &l).await;
    let (mut c2, mut b2) = relay_from("127.0.0.2", at, &l).await;
    let (_c3, _b3) = relay_from("127.0.0.3", at, &l).await;
    // The second relay moves bytes after the first went quiet: the first is the idlest.
    tokio::time::sleep(Duration::from_millis(50)).await;
    b2.write_all(b"busy").await.unwrap();
    let mut got = [0u8; 4];
    c2.read_exact(&mut got).await.unwrap();
    let (_c4, _b4) = relay_from("127.0.0.4", at, &l).await;
    assert!(closed(&mut c1).await, "the evicted relay's client side");
    assert!(closed(&mut b1).await, "the evicted relay's backend side");
    // The other relay of that address still carries bytes.
    b2.write_all(b"more").await.unwrap();
    c2.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"more");
    let sample = server.sample();
    let errors: std::collections::HashMap<_, _> = sample.errors.into_iter().collect();
    assert_eq!((sample.open, errors["evicted"]), (3, 1));
}

fn member(addr: std::net::SocketAddr) -> web::Member {
    let std::net::SocketAddr::V4(addr) = addr else {
        panic!("v4 only")
    };
    web::Member {
        backend: web::Backend {
            addr,
            proxy_protocol: None,
        },
        weight: 1,
    }
}

/// Which of `listeners` the router relayed a new connection to (its index), within 5 s.
async fn relayed_to(listeners: &[TcpListener]) -> (usize, TcpStream) {
    let accepts = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| Box::pin(async move { (i, l.accept().await.unwrap().0) }));
    tokio::time::timeout(Duration::from_secs(5), futures_select(accepts.collect()))
        .await
        .expect("relayed to a backend")
}

/// The first of `futures` to finish.
async fn futures_select<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> F::Output {
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[tokio::test]
async fn connections_rotate_over_the_pool_past_an_unreachable_backend() {
    let listeners = [
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
    ];
    let dead = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let cfg = config::Https {
        listen: vec![(Ipv4Addr::LOCALHOST, 0).into()],
        service: "https".into(),
        limits: WebLimits::default(),
    };
    let server = HttpsServer::start(
        &cfg,
        None,
        "lab.example",
        &[route("judge", addrs[0], None)],
        None,
    )
    .await
    .unwrap();
    server.shared().core.hosts.set([(
        "judge".to_string(),
        vec![member(addrs[0]), member(dead), member(addrs[1])],
    )]);
    let at = server.local_addrs()[0];
    let mut order = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(at).await.unwrap();
        c.write_all(&client_hello(Some("judge.https.lab.example")))
            .await
            .unwrap();
        let (i, b) = relayed_to(&listeners).await;
        order.push(i);
        // Each relay ends before the next starts: a quiet pool, so round robin.
        drop((c, b));
    }
    // Every connection relayed (the dead one's turns passed on), spread over both.
    assert_eq!(order.iter().filter(|&&i| i == 0).count(), 2, "{order:?}");
    assert_eq!(order.iter().filter(|&&i| i == 1).count(), 2, "{order:?}");
}
