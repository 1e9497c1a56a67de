use super::*;
use crate::api::{parse_head, Head};
use crate::testing::FakeControl;

fn head(text: &str) -> Result<Option<Head>, ApiError> {
    parse_head(text.as_bytes())
}

#[test]
fn heads_are_parsed_strictly() {
    let h = head(
        "POST /v1/me/routes HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sg_a_x\r\nContent-Length: 12\r\nCookie: a=1\r\nCookie: b=2\r\nSec-Fetch-Site: same-origin\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (h.method.as_str(), h.target.as_str(), h.length),
        ("POST", "/v1/me/routes", 12)
    );
    assert_eq!(h.headers.token.as_deref(), Some("sg_a_x"));
    assert_eq!(h.headers.cookie.as_deref(), Some("a=1; b=2"));
    assert_eq!(h.headers.fetch_site.as_deref(), Some("same-origin"));
    assert!(h.len > 0);
    assert!(head("GET /v1/me HTTP/1.1\r\nHost: gw\r\n")
        .unwrap()
        .is_none());
    for bad in [
        "GET /v1/me HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET /v1/me HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /v1/me HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
        "GET /v1/me HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        "GET /v1/me HTTP/1.1\r\nHost : bob\r\n\r\n",
        "GARBAGE\r\n\r\n",
    ] {
        assert!(head(bad).is_err(), "{bad:?} accepted");
    }
    let e = head("GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n").unwrap_err();
    assert_eq!(e.status, 401);
}

#[test]
fn repeated_bad_tokens_from_one_address_are_blocked_for_a_window() {
    let mut f = Failures::default();
    let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let t0 = Instant::now();
    for _ in 0..MAX_FAILURES {
        assert!(!f.blocked(a, t0));
        f.failed(a, t0);
    }
    assert!(f.blocked(a, t0));
    assert!(!f.blocked(b, t0));
    assert!(!f.blocked(a, t0 + FAILURE_WINDOW));
    // The table stays bounded however many addresses fail.
    for i in 0..(MAX_TRACKED as u32 + 50) {
        f.failed(IpAddr::from(std::net::Ipv4Addr::from(i)), t0);
    }
    assert!(f.by_addr.len() <= MAX_TRACKED);
}

fn caller(name: &str, admin: bool) -> lb_model::api::Caller {
    lb_model::api::Caller {
        name: name.into(),
        admin,
    }
}

fn request(method: &str, path: &str, body: &str) -> Request {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path.to_string(), None),
    };
    Request {
        method: method.into(),
        path,
        query,
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn students_reach_only_their_own_endpoints_admins_everything_but_shutdown() {
    let control = FakeControl::default();
    control
        .users
        .lock()
        .unwrap()
        .add("alice", vec![], 4, false, std::time::UNIX_EPOCH)
        .unwrap();
    let alice = caller("alice", false);
    let (status, body) = dispatch(request("GET", "/v1/me", ""), &alice, &control).unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"alice\""));
    let (status, _) = dispatch(
        request(
            "POST",
            "/v1/me/routes",
            r#"{"service":"ssh","backend":"10.0.0.11:22"}"#,
        ),
        &alice,
        &control,
    )
    .unwrap();
    assert_eq!(status, 201);
    // The claim is made in alice's name whatever the body says.
    assert_eq!(control.added.lock().unwrap()[0].name, "alice");
    let e = dispatch(
        request(
            "POST",
            "/v1/me/routes",
            r#"{"name":"bob","service":"ssh","backend":"10.0.0.11:22"}"#,
        ),
        &alice,
        &control,
    )
    .unwrap_err();
    assert_eq!(e.status, 400);
    for (m, p) in [
        ("GET", "/v1/users"),
        ("GET", "/v1/routes"),
        ("DELETE", "/v1/routes/bob"),
    ] {
        let e = dispatch(request(m, p, ""), &alice, &control).unwrap_err();
        assert_eq!(e.status, 403, "{m} {p}");
    }
    let admin = caller("root", true);
    let (status, _) = dispatch(request("GET", "/v1/users", ""), &admin, &control).unwrap();
    assert_eq!(status, 200);
    let e = dispatch(
        request("POST", "/v1/shutdown", r#"{"detach":true}"#),
        &admin,
        &control,
    )
    .unwrap_err();
    assert_eq!(e.status, 403);
    assert!(control.shutdowns.lock().unwrap().is_empty());
    let e = dispatch(request("GET", "/nothing", ""), &alice, &control).unwrap_err();
    assert_eq!(e.status, 404);
}

#[test]
fn the_self_signed_certificate_is_made_once_and_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let listen = ["10.0.0.1:8443".parse().unwrap()];
    let (certs, _) = self_signed(dir.path(), &listen).unwrap();
    let (again, _) = self_signed(dir.path(), &listen).unwrap();
    assert_eq!(
        fingerprint(certs[0].as_ref()),
        fingerprint(again[0].as_ref())
    );
    assert_eq!(fingerprint(certs[0].as_ref()).len(), 32 * 3 - 1);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bad_tokens_from_one_ipv6_64_count_together() {
    let mut f = Failures::default();
    let t0 = Instant::now();
    for i in 0..MAX_FAILURES {
        let ip = IpAddr::from(std::net::Ipv6Addr::new(
            0x2001, 0xdb8, 0, 7, 0, 0, 0, i as u16,
        ));
        f.failed(ip, t0);
    }
    assert!(f.blocked("2001:db8:0:7:ffff::1".parse().unwrap(), t0));
    assert!(!f.blocked("2001:db8:0:8::1".parse().unwrap(), t0));
}

/// Silent connections (no TLS hello) from 127.0.0.2 fill the portal with a few from
/// 127.0.0.3; a newcomer from 127.0.0.4 takes one of 127.0.0.2's places, which is closed
/// long before REQUEST_TIMEOUT would have closed it.
/// Whether `s` was closed (or reset) by the other side: a read does not wait.
async fn closed(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(20), s.read(&mut b))
        .await
        .is_ok()
}

#[tokio::test]
async fn at_the_cap_a_newcomer_takes_a_place_of_the_greediest_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Portal {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        cert: None,
        key: None,
        clients_dir: dir.path().join("clients"),
    };
    let server = PortalServer::bind(&cfg, dir.path()).await.unwrap();
    let addr = server.local_addrs()[0];
    let _tasks = server.serve_with(Arc::new(FakeControl::default()), 6);
    let from = |src: &str| {
        let src: SocketAddr = format!("{src}:0").parse().unwrap();
        async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(src).unwrap();
            s.connect(addr).await.unwrap()
        }
    };
    let mut greedy = Vec::new();
    for _ in 0..4 {
        greedy.push(from("127.0.0.2").await);
    }
    let mut modest = Vec::new();
    for _ in 0..2 {
        modest.push(from("127.0.0.3").await);
    }
    // One accept loop takes connections in the order they completed: these six first.
    let _newcomer = from("127.0.0.4").await;
    let t0 = Instant::now();
    let mut ended = 0;
    while t0.elapsed() < REQUEST_TIMEOUT / 2 {
        ended = 0;
        for s in &mut greedy {
            ended += usize::from(closed(s).await);
        }
        if ended > 0 {
            break;
        }
    }
    assert_eq!(ended, 1, "one of the greediest address's connections ends");
    for s in &mut modest {
        assert!(!closed(s).await, "the modest address keeps its connections");
    }
}
