use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    sync::Arc,
};

use super::*;
use crate::testing::FakeControl as Fake;

fn request(name: &str, port: Option<u16>) -> RouteRequest {
    RouteRequest {
        check: None,
        proxy_protocol: None,
        name: name.into(),
        service: "ssh".into(),
        protocol: None,
        backend: "10.0.0.11:22".into(),
        backends: vec![],
        port,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_and_server_agree() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/control.sock");
    let listener = bind(&socket).unwrap();
    let fake = Arc::new(Fake::default());
    let server = tokio::spawn(serve(listener, fake.clone()));

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "directory mode {dir_mode:o}");

    let s = socket.clone();
    tokio::task::spawn_blocking(move || {
        let c = Client::new(&s);
        let list = c.list().unwrap();
        assert_eq!(list.routes[0].name, "alice");
        assert_eq!(list.free_ports, 9);

        assert_eq!(c.add(&request("bob", None)).unwrap().port, 30001);
        let err = c.add(&request("bob", Some(40000))).unwrap_err();
        assert!(err.is_bad_input());
        match &err {
            ClientError::Refused { status, reply } => {
                assert_eq!(*status, 400);
                assert_eq!(reply.field.as_deref(), Some("port"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("outside gateway.port_range"),
            "{err}"
        );

        assert_eq!(
            c.remove("alice", Some("ssh"), None).unwrap().removed.len(),
            1
        );
        // The protocol travels too: the fake holds alice's ssh over tcp only.
        assert_eq!(
            c.remove("alice", Some("ssh"), Some(lb_model::Protocol::Tcp))
                .unwrap()
                .removed
                .len(),
            1
        );
        let err = c
            .remove("alice", Some("ssh"), Some(lb_model::Protocol::Udp))
            .unwrap_err();
        assert!(err.to_string().contains("alice"), "{err}");
        let err = c.remove("zed", None, None).unwrap_err();
        assert!(
            matches!(err, ClientError::Refused { status: 404, .. }),
            "{err}"
        );

        c.shutdown(Shutdown { detach: true }).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(fake.added.lock().unwrap().len(), 1);
    assert_eq!(
        *fake.shutdowns.lock().unwrap(),
        vec![Shutdown { detach: true }]
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn user_endpoints_round_trip_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("u.sock");
    let fake = Arc::new(Fake::default());
    let server = tokio::spawn(serve(bind(&socket).unwrap(), fake.clone()));
    tokio::task::spawn_blocking(move || {
        let c = Client::new(&socket);
        let added = c
            .user_add(&UserRequest {
                name: "alice".into(),
                backends: vec!["10.0.0.11".into()],
                max_routes: Some(2),
                admin: false,
            })
            .unwrap();
        assert_eq!(added.user.name, "alice");
        assert_eq!(added.user.backends, ["10.0.0.11"]);
        assert!(added.token.starts_with("sg_alice_"));
        let err = c
            .user_add(&UserRequest {
                name: "bob".into(),
                backends: vec!["127.0.0.1".into()],
                ..UserRequest::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
        assert!(err.is_bad_input());
        assert_eq!(c.users().unwrap().users.len(), 1);
        let rotated = c.user_token("alice").unwrap();
        assert_ne!(rotated.token, added.token);
        assert_eq!(c.user_remove("alice", false).unwrap().name, "alice");
        let err = c.user_remove("alice", false).unwrap_err();
        assert!(
            matches!(err, ClientError::Refused { status: 404, .. }),
            "{err}"
        );
    })
    .await
    .unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("c.sock");
    let server = tokio::spawn(serve(bind(&socket).unwrap(), Arc::new(Fake::default())));
    let raw = |text: &'static str| {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = StdUnixStream::connect(&socket).unwrap();
            s.write_all(text.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    };
    let out = raw("GET /nope HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(out.contains("{\"error\":"), "{out}");
    let out = raw("PUT /v1/routes HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    let out = raw("POST /v1/routes HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"nam\":1}")
        .await
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("bad request body"), "{out}");
    let out = raw("garbage\r\n\r\n").await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("c.sock");
    // A socket file nobody listens on: what a SIGKILLed daemon leaves.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let live = bind(&socket).expect("a stale socket is replaced");
    let err = bind(&socket).unwrap_err();
    assert!(matches!(err, ApiBindError::InUse { .. }), "{err}");
    drop(live);
}

#[test]
fn a_missing_daemon_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::new(dir.path().join("none.sock"))
        .list()
        .unwrap_err();
    assert!(err.no_daemon());
    assert!(err.to_string().contains("is srvgate running"), "{err}");
}

#[tokio::test]
async fn requests_are_read_by_the_one_head_parser_within_their_bounds() {
    let read = |bytes: &'static [u8]| async move {
        let mut r = bytes;
        read_request(&mut r, 1024, 64).await
    };
    assert_eq!(
        parse_head(b"GET /v1/routes HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .map(|h| h.len),
        None
    );
    let (r, _) = read(b"DELETE /v1/routes/alice?service=ssh HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.method, "DELETE");
    assert_eq!(r.path, "/v1/routes/alice");
    assert_eq!(query_param(r.query.as_deref(), "service"), Some("ssh"));
    let (r, _) = read(b"POST /v1/routes HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"a\":")
        .await
        .unwrap();
    assert_eq!(r.body, b"{\"a\":");
    let status = |r: Result<_, ApiError>| r.map(|_| ()).unwrap_err().status;
    for (bytes, want) in [
        (
            &b"POST /v1/routes HTTP/1.1\r\nContent-Length: 5\r\n\r\n{"[..],
            400,
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n", 413),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            400,
        ),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /\x01 HTTP/1.1\r\n\r\n", 400),
    ] {
        assert_eq!(
            status(read(bytes).await),
            want,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(2000));
    let long: &'static [u8] = Box::leak(long.into_bytes().into_boxed_slice());
    assert_eq!(status(read(long).await), 431);
}
