use std::sync::Mutex;

use super::*;

/// A control that records calls and answers from a fixed script.
#[derive(Default)]
struct Fake {
    added: Mutex<Vec<RouteRequest>>,
    shutdowns: Mutex<Vec<Shutdown>>,
    users: Mutex<crate::users::Users>,
}

fn view(name: &str, port: u16) -> RouteView {
    RouteView {
        name: name.into(),
        service: "ssh".into(),
        protocol: "tcp".into(),
        port,
        backend: "10.0.0.11:22".into(),
        source: "runtime".into(),
        added_unix: 1,
        last_seen_unix: None,
        idle_seconds: 0,
        reclaim_in_seconds: None,
        inbound_packets: 0,
        outbound_packets: 0,
        inbound_bytes: 0,
        outbound_bytes: 0,
    }
}

impl Control for Fake {
    fn list(&self) -> RoutesReply {
        RoutesReply {
            public_ipv4: "203.0.113.10".into(),
            port_range: "30000-30009".into(),
            free_ports: 9,
            reclaim_after: Some("14d".into()),
            routes: vec![view("alice", 30000)],
        }
    }
    fn add(&self, request: RouteRequest) -> Result<RouteView, ApiError> {
        if request.port == Some(40000) {
            return Err(ApiError::field(
                400,
                "port",
                "port: 40000 is outside gateway.port_range 30000-30009",
            ));
        }
        let v = view(&request.name, request.port.unwrap_or(30001));
        self.added.lock().unwrap().push(request);
        Ok(v)
    }
    fn remove(&self, name: &str, service: Option<&str>) -> Result<Removed, ApiError> {
        match (name, service) {
            ("alice", None | Some("ssh")) => Ok(Removed {
                removed: vec![view("alice", 30000)],
            }),
            _ => Err(ApiError::new(404, format!("no runtime route named {name}"))),
        }
    }
    fn shutdown(&self, request: Shutdown) {
        self.shutdowns.lock().unwrap().push(request);
    }
    fn users(&self) -> UsersReply {
        let users = self.users.lock().unwrap();
        UsersReply {
            users: users.all().map(|u| UserView::of(u, 0)).collect(),
        }
    }
    fn user_add(&self, r: UserRequest) -> Result<TokenReply, ApiError> {
        let rules = crate::users::parse_rules(&r.backends)
            .map_err(|e| ApiError::field(400, "backends", e))?;
        let mut users = self.users.lock().unwrap();
        let token = users
            .add(
                &r.name,
                rules,
                r.max_routes.unwrap_or(4),
                r.admin,
                std::time::UNIX_EPOCH,
            )
            .map_err(|e| ApiError::field(e.status(), "name", e.to_string()))?;
        let user = UserView::of(users.get(&r.name).unwrap(), 0);
        Ok(TokenReply { user, token })
    }
    fn user_remove(&self, name: &str, _with_routes: bool) -> Result<UserView, ApiError> {
        let mut users = self.users.lock().unwrap();
        let u = users
            .remove(name)
            .map_err(|e| ApiError::field(e.status(), "name", e.to_string()))?;
        Ok(UserView::of(&u, 0))
    }
    fn user_token(&self, name: &str) -> Result<TokenReply, ApiError> {
        let mut users = self.users.lock().unwrap();
        let token = users
            .rotate(name)
            .map_err(|e| ApiError::field(e.status(), "name", e.to_string()))?;
        let user = UserView::of(users.get(name).unwrap(), 0);
        Ok(TokenReply { user, token })
    }
    fn authenticate(&self, token: &str) -> Option<Caller> {
        let users = self.users.lock().unwrap();
        let u = users.authenticate(token).ok()?;
        Some(Caller {
            name: u.name.clone(),
            admin: u.admin,
        })
    }
    fn me(&self, caller: &str) -> Result<MeReply, ApiError> {
        let users = self.users.lock().unwrap();
        let u = users
            .get(caller)
            .ok_or_else(|| ApiError::new(404, "no such user"))?;
        Ok(MeReply {
            user: UserView::of(u, 0),
            public_ipv4: "203.0.113.10".into(),
            zone: Some("lab.example".into()),
            routes: vec![],
        })
    }
    fn claim(&self, caller: &str, r: ClaimRequest) -> Result<RouteView, ApiError> {
        self.add(RouteRequest {
            name: caller.into(),
            service: r.service,
            protocol: r.protocol,
            backend: r.backend,
            port: None,
        })
    }
    fn release(
        &self,
        caller: &str,
        service: &str,
        _protocol: Option<&str>,
    ) -> Result<Removed, ApiError> {
        self.remove(caller, Some(service))
    }
}

fn request(name: &str, port: Option<u16>) -> RouteRequest {
    RouteRequest {
        name: name.into(),
        service: "ssh".into(),
        protocol: None,
        backend: "10.0.0.11:22".into(),
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

        assert_eq!(c.remove("alice", Some("ssh")).unwrap().removed.len(), 1);
        let err = c.remove("zed", None).unwrap_err();
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

#[test]
fn requests_are_parsed_only_when_complete() {
    assert_eq!(
        parse_request(b"GET /v1/routes HTTP/1.1\r\nHost: x\r\n").unwrap(),
        None
    );
    let r = parse_request(b"DELETE /v1/routes/alice?service=ssh HTTP/1.1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.path, "/v1/routes/alice");
    assert_eq!(query_param(r.query.as_deref(), "service"), Some("ssh"));
    assert_eq!(
        parse_request(b"POST /v1/routes HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"a\"").unwrap(),
        None
    );
    assert!(parse_request(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    assert!(parse_request(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").is_err());
}
