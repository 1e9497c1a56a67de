use std::net::Ipv4Addr;

use http_body_util::Empty;
use hyper::Uri;
use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;
use crate::{
    config::{Http, Https, WebLimits},
    serve::{acme::Issued, http::HttpServer, https::HttpsServer},
};

/// A plain-HTTP backend that answers every request with its own head, so a test sees what
/// the gateway sent; an `Upgrade` request gets a 101 and then an echo of the raw bytes.
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if text.contains("\r\nupgrade: websocket") {
                    let _ = s
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
                        .await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

fn http_route(name: &str, backend: SocketAddr) -> lb_model::Route {
    let SocketAddr::V4(backend) = backend else {
        panic!("v4 only")
    };
    lb_model::Route {
        name: name.into(),
        service: "http".into(),
        protocol: lb_model::Protocol::Tcp,
        backends: lb_model::Pool::one(backend),
        port: 30080,
        proxy_protocol: None,
    }
}

/// The gateway's two routers on loopback with a wildcard certificate for
/// `*.http.lab.example` in force; returns them with the certificate (the clients' root).
async fn gateway(routes: &[lb_model::Route]) -> (HttpServer, HttpsServer, CertificateDer<'static>) {
    gateway_with(routes, false).await
}

/// [`gateway`], with `[http] redirect_https` when `redirect`.
async fn gateway_with(
    routes: &[lb_model::Route],
    redirect: bool,
) -> (HttpServer, HttpsServer, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["*.http.lab.example".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let certs = Arc::new(Certs::default());
    certs.replace(Issued::from_pem(&cert.pem(), &key.serialize_pem()).unwrap());
    let local = vec![(Ipv4Addr::LOCALHOST, 0).into()];
    let http_cfg = Http {
        listen: local.clone(),
        service: "http".into(),
        limits: WebLimits::default(),
        forwarded_for: false,
        redirect_https: false,
    };
    let http = HttpServer::start(&http_cfg, "lab.example", routes)
        .await
        .unwrap();
    let https_cfg = Https {
        listen: local,
        service: "https".into(),
        limits: WebLimits::default(),
    };
    if redirect {
        http.shared().redirect_to_https(certs.clone());
    }
    let terminate = Terminate::new(certs, http.shared().clone()).unwrap();
    let https = HttpsServer::start(
        &https_cfg,
        Some("http"),
        "lab.example",
        &[],
        Some(terminate),
    )
    .await
    .unwrap();
    (http, https, cert.der().clone())
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(
    at: SocketAddr,
    root: &CertificateDer<'static>,
    name: &str,
    alpn: &[u8],
) -> io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(at).await?;
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(server, tcp)
        .await
}

async fn text(r: Response<Incoming>) -> (StatusCode, String) {
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str, host: Option<&str>) -> Request<Empty<Bytes>> {
    let mut b = Request::get(uri.parse::<Uri>().unwrap())
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6");
    if let Some(h) = host {
        b = b.header(header::HOST, h);
    }
    b.body(Empty::new()).unwrap()
}

/// What the backend must have seen: the client by the gateway's word alone, https.
fn assert_forwarded(seen: &str) {
    assert!(seen.starts_with("get /hello?x=1 http/1.1\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nhost: alice.http.lab.example\r\n"),
        "{seen}"
    );
    assert!(seen.contains("\r\nx-forwarded-proto: https\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("\r\nforwarded: for=127.0.0.1;proto=https;host=alice.http.lab.example\r\n"),
        "{seen}"
    );
    assert!(
        !seen.contains("6.6.6.6"),
        "the client's own claim went through: {seen}"
    );
}

#[tokio::test]
async fn a_web_route_is_served_over_https_with_h2_and_http11() {
    let backend = echo_backend().await;
    let (_http, https, root) = gateway(&[http_route("alice", backend)]).await;
    let at = https.local_addrs()[0];

    // HTTP/2, negotiated by ALPN.
    let tls = connect(at, &root, "alice.http.lab.example", b"h2")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let r = h2
            .send_request(get("https://alice.http.lab.example/hello?x=1", None))
            .await
            .unwrap();
        let (status, seen) = text(r).await;
        assert_eq!(status, StatusCode::OK, "{seen}");
        assert_forwarded(&seen);
    }

    // HTTP/1.1, keep-alive: two requests on one connection.
    let tls = connect(at, &root, "alice.http.lab.example", b"http/1.1")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let r = h1
            .send_request(get("/hello?x=1", Some("alice.http.lab.example")))
            .await
            .unwrap();
        let (status, seen) = text(r).await;
        assert_eq!(status, StatusCode::OK, "{seen}");
        assert_forwarded(&seen);
    }
    // Another student's name on alice's TLS session is refused, not routed.
    let r = h1
        .send_request(get("/", Some("bob.http.lab.example")))
        .await
        .unwrap();
    let (status, body) = text(r).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert!(body.contains("bob.http.lab.example"), "{body}");
}

#[tokio::test]
async fn names_without_a_route_or_outside_the_certificate_get_no_session() {
    let backend = echo_backend().await;
    let (_http, https, root) = gateway(&[http_route("alice", backend)]).await;
    let at = https.local_addrs()[0];
    // No route: the router's own unrecognized_name alert, before any certificate.
    assert!(connect(at, &root, "carol.http.lab.example", b"h2")
        .await
        .is_err());
    // A route's name the certificate does not cover (the https service's).
    assert!(connect(at, &root, "alice.https.lab.example", b"h2")
        .await
        .is_err());
}

#[tokio::test]
async fn a_websocket_upgrade_is_joined_to_the_backend() {
    let backend = echo_backend().await;
    let (_http, https, root) = gateway(&[http_route("alice", backend)]).await;
    let at = https.local_addrs()[0];
    let mut tls = connect(at, &root, "alice.http.lab.example", b"http/1.1")
        .await
        .unwrap();
    tls.write_all(b"GET /ws HTTP/1.1\r\nHost: alice.http.lab.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tls.read(&mut b).await.unwrap(),
            1,
            "closed: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    tls.write_all(b"frames both ways").await.unwrap();
    let mut echoed = [0u8; 16];
    tls.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"frames both ways");
}

#[tokio::test]
async fn with_redirect_https_plain_http_is_sent_to_https_for_covered_names() {
    let backend = echo_backend().await;
    let (http, _https, _) = gateway_with(&[http_route("alice", backend)], true).await;
    let at = http.local_addrs()[0];
    let ask = |host: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
        let req = format!("GET /a?b=1 HTTP/1.1\r\nHost: {host}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = ask("Alice.http.lab.example").await;
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    assert!(
        answer.contains("\r\nlocation: https://alice.http.lab.example/a?b=1\r\n"),
        "{answer}"
    );
    // A name outside the certificate is routed (or refused) as before.
    let answer = ask("alice.other.example").await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
}
