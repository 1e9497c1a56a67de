use super::*;
use crate::config::Protocol;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn stored(name: &str, port: u16, backend: &str, last_seen: Option<u64>) -> StoredRoute {
    StoredRoute {
        route: Route {
            name: name.into(),
            service: "ssh".into(),
            protocol: Protocol::Tcp,
            backend: backend.parse().unwrap(),
            port,
            proxy_protocol: None,
        },
        added: from_unix(1_700_000_000),
        last_seen: last_seen.map(from_unix),
    }
}

fn corrupt_reason(text: &str) -> String {
    match parse(
        Path::new("/var/lib/srvgate/routes.json"),
        text.as_bytes(),
        PUBLIC,
    ) {
        Err(e @ StateError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("/var/lib/srvgate/routes.json: "), "{msg}");
            msg
        }
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
}

#[test]
fn saved_routes_load_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert!(store.load(PUBLIC).unwrap().is_empty(), "no file: no routes");
    let routes = vec![
        stored("bob", 30001, "10.0.0.12:22", None),
        stored("alice", 30000, "10.0.0.11:22", Some(1_700_000_500)),
    ];
    store.save(&routes).unwrap();
    let mut back = store.load(PUBLIC).unwrap();
    back.sort_by(|a, b| a.route.name.cmp(&b.route.name));
    assert_eq!(back, vec![routes[1].clone(), routes[0].clone()]);
    // No temp file is left behind, and the file is private.
    assert!(!dir.path().join("routes.json.tmp").exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(store.path()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Saving again replaces, never appends.
    store.save(&routes[..1]).unwrap();
    assert_eq!(store.load(PUBLIC).unwrap().len(), 1);
}

#[test]
fn a_second_daemon_cannot_take_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = StateStore::open(dir.path()).unwrap();
    let err = StateStore::open(dir.path()).err().expect("second open");
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    drop(first);
    StateStore::open(dir.path()).expect("free again once the first is gone");
}

#[test]
fn garbage_truncation_and_emptiness_are_corruption() {
    let good = render(&[stored("alice", 30000, "10.0.0.11:22", None)]);
    let msg = corrupt_reason("\u{0}\u{1}garbage");
    assert!(msg.contains("not valid JSON"), "{msg}");
    let msg = corrupt_reason(&good[..good.len() / 2]);
    assert!(msg.contains("not valid JSON"), "{msg}");
    assert!(corrupt_reason("").contains("empty"));
    assert!(corrupt_reason("{\"routes\": []}").contains("no \"version\""));
    let msg = corrupt_reason(&good.replace("\"port\"", "\"prot\""));
    assert!(msg.contains("prot"), "{msg}");
}

#[test]
fn invalid_routes_are_named_by_index_and_field() {
    let text = render(&[
        stored("alice", 30000, "10.0.0.11:22", None),
        stored("bob", 30000, "10.0.0.12:22", None),
        stored("carol", 30002, "203.0.113.10:22", None),
    ])
    .replace("\"carol\"", "\"Carol\"");
    let msg = corrupt_reason(&text);
    assert!(
        msg.contains("routes[2].port: 30000/tcp is used twice"),
        "{msg}"
    );
    assert!(msg.contains("routes[3].name"), "{msg}");
    assert!(msg.contains("routes[3].backend"), "{msg}");
}

#[test]
fn another_version_is_refused_not_guessed() {
    let err = parse(
        Path::new("s.json"),
        b"{\"version\": 7, \"routes\": []}",
        PUBLIC,
    )
    .unwrap_err();
    assert!(matches!(err, StateError::Version { found: 7, .. }), "{err}");
}

#[test]
fn an_unreadable_file_is_an_error_not_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    // A directory where the file should be: reading fails with an I/O error.
    fs::create_dir(store.path()).unwrap();
    let err = store.load(PUBLIC).unwrap_err();
    assert!(matches!(err, StateError::Io { .. }), "{err}");
    assert!(err.to_string().contains("routes.json"), "{err}");
}
