use super::*;
use crate::testing::stored_route as stored;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

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
    let mut store = StateStore::open(dir.path()).unwrap();
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
        msg.contains("routes[2].port: 30000/tcp is already used by alice/ssh/tcp"),
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

fn names(routes: &[StoredRoute]) -> Vec<String> {
    let mut n: Vec<String> = routes.iter().map(|r| r.route.name.clone()).collect();
    n.sort();
    n
}

fn put(r: &StoredRoute) -> RouteChange {
    RouteChange::Put(r.clone())
}

fn delete(r: &StoredRoute) -> RouteChange {
    RouteChange::Delete(r.route.key())
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(journal::SEGMENT_PREFIX))
        .collect();
    found.sort();
    found
}

#[test]
fn recorded_changes_replay_over_the_snapshot_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let alice = stored("alice", 30000, "10.0.0.11:22", None);
    let bob = stored("bob", 30001, "10.0.0.12:22", None);
    let carol = stored("carol", 30002, "10.0.0.13:22", None);
    {
        let mut store = StateStore::open(dir.path()).unwrap();
        store.save(std::slice::from_ref(&alice)).unwrap();
        let none = Vec::new;
        store.record(&[put(&bob)], &none).unwrap().wait().unwrap();
        store
            .record(&[put(&carol), delete(&alice)], &none)
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(names(&store.load(PUBLIC).unwrap()), ["bob", "carol"]);
    }
    // A new daemon reads the same, and appends to a segment of its own.
    let mut store = StateStore::open(dir.path()).unwrap();
    assert_eq!(names(&store.load(PUBLIC).unwrap()), ["bob", "carol"]);
    let seen = StoredRoute {
        last_seen: Some(from_unix(1_700_000_900).unwrap()),
        ..bob.clone()
    };
    store
        .record(&[put(&seen)], &Vec::new)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    let back = store.load(PUBLIC).unwrap();
    assert_eq!(back.iter().find(|r| r.route.name == "bob"), Some(&seen));
    // A snapshot folds the journal in and removes the segments it covers.
    store.save(&back).unwrap();
    assert!(segment_files(dir.path()).is_empty());
    assert_eq!(store.load(PUBLIC).unwrap().len(), 2);
}

#[test]
fn a_torn_last_line_is_skipped_and_a_bad_line_before_it_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let alice = stored("alice", 30000, "10.0.0.11:22", None);
    let bob = stored("bob", 30001, "10.0.0.12:22", None);
    let mut store = StateStore::open(dir.path()).unwrap();
    store
        .record(&[put(&alice), put(&bob)], &Vec::new)
        .unwrap()
        .wait()
        .unwrap();
    let seg = dir.path().join(&segment_files(dir.path())[0]);
    let whole = fs::read(&seg).unwrap();
    // A crash in the middle of a write: the last line lacks its end.
    let torn = &whole[..whole.len() - 7];
    fs::write(&seg, torn).unwrap();
    assert_eq!(names(&store.load(PUBLIC).unwrap()), ["alice"]);
    // Damage anywhere else is refused, naming the file and the line.
    let mut bad = b"{\"put\":{\"name\":1}}\n".to_vec();
    bad.extend_from_slice(&whole);
    fs::write(&seg, &bad).unwrap();
    let e = store.load(PUBLIC).unwrap_err().to_string();
    assert!(
        e.contains("routes.journal.1") && e.contains("line 1"),
        "{e}"
    );
    // So is a journal whose routes clash with each other.
    let twin = stored("twin", 30000, "10.0.0.14:22", None);
    let text = format!(
        "{}{{\"put\":{}}}\n",
        String::from_utf8_lossy(&whole),
        serde_json::to_string(&raw(&twin)).unwrap()
    );
    fs::write(&seg, text).unwrap();
    let e = store.load(PUBLIC).unwrap_err().to_string();
    assert!(
        e.contains("30000/tcp is already used by alice/ssh/tcp"),
        "{e}"
    );
}

#[test]
fn a_crash_between_a_snapshot_and_deleting_its_segments_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let alice = stored("alice", 30000, "10.0.0.11:22", None);
    let bob = stored("bob", 30001, "10.0.0.12:22", None);
    let mut store = StateStore::open(dir.path()).unwrap();
    let none = Vec::new;
    store
        .record(&[put(&alice), put(&bob)], &none)
        .unwrap()
        .wait()
        .unwrap();
    store
        .record(&[delete(&alice)], &none)
        .unwrap()
        .wait()
        .unwrap();
    let kept = fs::read(dir.path().join("routes.journal.1")).unwrap();
    // The snapshot is written, then the segment it covers comes back as if never deleted.
    store.save(std::slice::from_ref(&bob)).unwrap();
    fs::write(dir.path().join("routes.journal.1"), kept).unwrap();
    assert_eq!(names(&store.load(PUBLIC).unwrap()), ["bob"]);
}

#[test]
fn a_long_journal_is_folded_into_a_snapshot_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    let mut all: Vec<StoredRoute> = Vec::new();
    let mut last = None;
    for i in 0..(COMPACT_AFTER + 5) as u16 {
        let r = stored(
            &format!("u{i}"),
            10000 + i,
            &format!("10.1.{}.{}:22", i / 250, i % 250 + 1),
            None,
        );
        all.push(r.clone());
        // Waiting for each flush would take minutes; the last one covers them all.
        let snapshot = &all;
        last = Some(store.record(&[put(&r)], &|| snapshot.clone()).unwrap());
    }
    last.unwrap().wait().unwrap();
    // The background snapshot finishes before the next one starts, or here.
    if let Some(f) = store.flight.take() {
        f.wait().unwrap();
    }
    let left = segment_files(dir.path());
    assert_eq!(left, ["routes.journal.2"], "the folded segment is gone");
    assert_eq!(store.load(PUBLIC).unwrap().len(), all.len());
}

#[test]
fn concurrent_flushes_share_one_fsync_and_all_return() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    let none = Vec::new;
    let commits: Vec<Commit> = (0..8u16)
        .map(|i| {
            let r = stored(
                &format!("u{i}"),
                30000 + i,
                &format!("10.0.0.{}:22", i + 1),
                None,
            );
            store.record(&[put(&r)], &none).unwrap()
        })
        .collect();
    let waiters: Vec<_> = commits
        .into_iter()
        .map(|c| std::thread::spawn(move || c.wait()))
        .collect();
    for w in waiters {
        w.join().unwrap().unwrap();
    }
    assert_eq!(store.load(PUBLIC).unwrap().len(), 8);
}

#[test]
fn a_routes_proxy_protocol_survives_the_journal_and_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    let mut web = stored("alice", 30000, "10.0.0.11:443", None);
    web.route.service = "https".into();
    web.route.proxy_protocol = Some(lb_model::ProxyProtocol::V2);
    store
        .record(&[put(&web)], &Vec::new)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(store.load(PUBLIC).unwrap(), vec![web.clone()]);
    store.save(std::slice::from_ref(&web)).unwrap();
    assert_eq!(store.load(PUBLIC).unwrap(), vec![web]);
}

/// A stored time past any real date (here u64::MAX seconds) is corruption naming the file
/// and field, not a panic in `UNIX_EPOCH + Duration`: one bad value must not crash every
/// daemon that reads it.
#[test]
fn a_huge_stored_time_is_corruption_not_a_panic() {
    let good = render(&[stored("alice", 30000, "10.0.0.11:22", Some(1_700_000_500))]);
    let huge = u64::MAX.to_string();
    let msg = corrupt_reason(&good.replace("1700000000", &huge));
    assert!(msg.contains("routes[1].added_unix"), "{msg}");
    assert!(msg.contains(&huge), "{msg}");
    let msg = corrupt_reason(&good.replace("1700000500", &huge));
    assert!(msg.contains("routes[1].last_seen_unix"), "{msg}");

    // The same in a journal line.
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    let bob = stored("bob", 30001, "10.0.0.12:22", None);
    store
        .record(&[put(&bob)], &Vec::new)
        .unwrap()
        .wait()
        .unwrap();
    let seg = dir.path().join(&segment_files(dir.path())[0]);
    let line = fs::read_to_string(&seg).unwrap();
    fs::write(&seg, line.replace("1700000000", &huge)).unwrap();
    let e = store.load(PUBLIC).unwrap_err();
    assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("routes.journal.1") && e.contains("added_unix"),
        "{e}"
    );
}

/// Records a snapshot's unlinks and directory fsyncs, doing them for real.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl Disk for Recorder {
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        self.0.lock().unwrap().push(format!("unlink {name}"));
        RealDisk.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.lock().unwrap().push("fsync dir".into());
        RealDisk.sync_dir(dir)
    }
}

/// A snapshot's unlinks of the segments it covers are made durable by an fsync of the
/// directory before it reports success: until then a crash can bring a segment back, and
/// with it older last-seen times than the snapshot's (an early reclaim).
#[test]
fn a_snapshot_fsyncs_the_directory_after_unlinking_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let alice = stored("alice", 30000, "10.0.0.11:22", None);
    {
        let mut store = StateStore::open(dir.path()).unwrap();
        store
            .record(&[put(&alice)], &Vec::new)
            .unwrap()
            .wait()
            .unwrap();
    }
    {
        let mut store = StateStore::open(dir.path()).unwrap();
        store
            .record(&[delete(&alice)], &Vec::new)
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(segment_files(dir.path()).len(), 2);
    let disk = Recorder::default();
    write_snapshot_on(&disk, dir.path(), &[], 2).unwrap();
    assert!(segment_files(dir.path()).is_empty());
    let ops = disk.0.into_inner().unwrap();
    let last_unlink = ops.iter().rposition(|o| o.starts_with("unlink")).unwrap();
    assert_eq!(
        ops[last_unlink - 1..],
        [
            "unlink routes.journal.1",
            "unlink routes.journal.2",
            "fsync dir"
        ],
        "{ops:?}"
    );
}

#[test]
fn a_pool_is_stored_and_a_single_backend_keeps_the_old_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    let mut judge = stored("judge", 30002, "10.0.0.21:80", None);
    judge.route.backends =
        lb_model::Pool::parse(&["10.0.0.21:80", "10.0.0.22:80 weight=2 drained"]).unwrap();
    let routes = vec![stored("alice", 30001, "10.0.0.11:22", None), judge];
    store.save(&routes).unwrap();
    let text = fs::read_to_string(store.path()).unwrap();
    assert!(text.contains("\"backend\": \"10.0.0.11:22\""), "{text}");
    assert!(text.contains("\"10.0.0.22:80 weight=2 drained\""), "{text}");
    let mut back = store.load(PUBLIC).unwrap();
    back.sort_by(|a, b| a.route.name.cmp(&b.route.name));
    assert_eq!(back, routes);
    // The journal carries a pool too.
    let mut changed = routes[1].clone();
    changed.route.backends = changed
        .route
        .backends
        .with_drained("10.0.0.22:80".parse().unwrap(), false)
        .unwrap();
    store
        .record(&[RouteChange::Put(changed.clone())], &|| Vec::new())
        .unwrap()
        .wait()
        .unwrap();
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    let back = store.load(PUBLIC).unwrap();
    assert!(back.contains(&changed), "{back:?}");
}

#[test]
fn a_stored_pool_breaking_a_rule_is_refused_naming_it() {
    let text = r#"{"version": 1, "routes": [{"name": "judge", "service": "http", "protocol": "tcp",
        "backend": "10.0.0.21:80", "backends": ["10.0.0.22:80"], "port": 30002, "added_unix": 1700000000}]}"#;
    let reason = corrupt_reason(text);
    assert!(reason.contains("routes[1].backends"), "{reason}");
    assert!(reason.contains("names both"), "{reason}");
}
