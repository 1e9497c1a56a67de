//! Pools through the core: adds and claims of several backends, drain and undrain, health
//! verdicts and fail-open, and their rollbacks, against the fakes.

use super::*;
use lb_model::api::DrainRequest;

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn pool_request(name: &str, backends: &[&str]) -> RouteRequest {
    RouteRequest {
        backend: String::new(),
        backends: backends.iter().map(|b| b.to_string()).collect(),
        ..request(name, "")
    }
}

fn drain(backend: &str, drained: bool) -> DrainRequest {
    DrainRequest {
        service: None,
        protocol: None,
        backend: backend.into(),
        drained,
    }
}

/// What the fake maps' frontend of `port` points at.
fn frontend(rig: &Rig, port: u16) -> Option<SocketAddrV4> {
    rig.maps
        .maps()
        .frontends
        .get(&(port, Protocol::Tcp))
        .map(|&(b, _)| b)
}

/// A runtime route `web` of alice with a pool of two, on port 30001.
fn two_backends() -> Rig {
    let mut rig = Rig::new();
    let v = rig
        .core
        .add(pool_request(
            "alice",
            &["10.0.0.11:80", "10.0.0.12:80 weight=2"],
        ))
        .unwrap();
    assert_eq!(v.port, 30001);
    rig
}

#[test]
fn a_pool_is_added_stored_and_every_member_answers_in_reverse() {
    let rig = two_backends();
    let e = rig.entry("alice").unwrap();
    assert_eq!(
        e.route.backends.to_string(),
        "10.0.0.11:80, 10.0.0.12:80 weight=2"
    );
    let maps = rig.maps.maps();
    for b in ["10.0.0.11:80", "10.0.0.12:80"] {
        assert_eq!(
            maps.reverse.get(&(a(b), Protocol::Tcp)),
            Some(&(30001, e.id)),
            "{b}"
        );
    }
    drop(maps);
    assert_eq!(frontend(&rig, 30001), Some(a("10.0.0.11:80")));
    let stored = rig.store.state().routes[0].clone();
    assert_eq!(stored.route.backends, e.route.backends);
    rig.assert_agree();
}

#[test]
fn a_member_of_another_route_is_refused_naming_it() {
    let mut rig = two_backends();
    let e = rig
        .core
        .add(pool_request("bob", &["10.0.0.13:80", "10.0.0.12:80"]))
        .unwrap_err();
    assert_eq!(
        (e.status, e.reply.field.as_deref()),
        (409, Some("backends"))
    );
    assert!(e.reply.error.contains("10.0.0.12:80"), "{}", e.reply.error);
    assert!(rig.entry("bob").is_none());
    rig.assert_agree();
}

#[test]
fn a_pool_with_the_gateway_itself_is_refused() {
    let mut rig = Rig::new();
    let e = rig
        .core
        .add(pool_request("alice", &["10.0.0.11:80", "10.0.0.1:80"]))
        .unwrap_err();
    assert_eq!(
        (e.status, e.reply.field.as_deref()),
        (403, Some("backends"))
    );
    assert!(e.reply.error.contains("10.0.0.1:80"), "{}", e.reply.error);
}

#[test]
fn a_student_cannot_put_a_foreign_backend_in_a_pool() {
    let mut rig = Rig::new();
    rig.core
        .user_add(user_request("alice", &["10.0.0.11"], 4))
        .unwrap();
    let foreign = ClaimRequest {
        backend: String::new(),
        backends: vec!["10.0.0.11:80".into(), "10.0.0.99:80".into()],
        ..claim("web", "")
    };
    let e = rig.core.claim("alice", foreign).unwrap_err();
    assert_eq!((e.status, e.reply.field.as_deref()), (403, Some("backend")));
    assert!(e.reply.error.contains("10.0.0.99:80"), "{}", e.reply.error);
    assert!(
        rig.entry("alice").is_none(),
        "nothing of the pool was added"
    );
    let own = ClaimRequest {
        backend: String::new(),
        backends: vec!["10.0.0.11:80".into(), "10.0.0.11:8080 weight=3".into()],
        ..claim("web", "")
    };
    let v = rig.core.claim("alice", own).unwrap();
    assert_eq!(v.backends.len(), 2);
    assert_eq!(v.backends[1].weight, 3);
}

#[test]
fn drain_moves_new_flows_keeps_replies_and_is_stored() {
    let mut rig = two_backends();
    let v = rig
        .core
        .drain("alice", drain("10.0.0.11:80", true))
        .unwrap();
    assert!(v.backends[0].drained && !v.backends[1].drained);
    assert_eq!(frontend(&rig, 30001), Some(a("10.0.0.12:80")));
    // Established flows to the drained member still get their replies translated.
    assert!(rig
        .maps
        .maps()
        .reverse
        .contains_key(&(a("10.0.0.11:80"), Protocol::Tcp)));
    assert_eq!(
        rig.store.state().routes[0].route.backends.to_string(),
        "10.0.0.11:80 drained, 10.0.0.12:80 weight=2"
    );
    rig.assert_agree();
    // Again: nothing changes, nothing is written.
    let writes = rig.maps.maps().writes;
    rig.core
        .drain("alice", drain("10.0.0.11:80", true))
        .unwrap();
    assert_eq!(rig.maps.maps().writes, writes);
    // The last undrained member cannot go.
    let e = rig
        .core
        .drain("alice", drain("10.0.0.12:80", true))
        .unwrap_err();
    assert_eq!((e.status, e.reply.field.as_deref()), (409, Some("backend")));
    rig.core
        .drain("alice", drain("10.0.0.11:80", false))
        .unwrap();
    assert_eq!(frontend(&rig, 30001), Some(a("10.0.0.11:80")));
    assert_eq!(
        rig.store.state().routes[0].route.backends.to_string(),
        "10.0.0.11:80, 10.0.0.12:80 weight=2"
    );
    rig.assert_agree();
}

#[test]
fn drain_names_what_it_cannot_find() {
    let mut rig = two_backends();
    let e = rig
        .core
        .drain("alice", drain("10.0.0.13:80", true))
        .unwrap_err();
    assert_eq!((e.status, e.reply.field.as_deref()), (404, Some("backend")));
    assert!(e.reply.error.contains("10.0.0.13:80"), "{}", e.reply.error);
    let e = rig
        .core
        .drain("alice", drain("10.0.0.11", true))
        .unwrap_err();
    assert_eq!((e.status, e.reply.field.as_deref()), (400, Some("backend")));
    let e = rig
        .core
        .drain(
            "alice",
            DrainRequest {
                service: Some("web".into()),
                ..drain("10.0.0.11:80", true)
            },
        )
        .unwrap_err();
    assert_eq!(e.status, 404);
}

#[test]
fn a_drain_the_store_refuses_is_undone_in_the_maps_and_the_table() {
    let mut rig = two_backends();
    let before = rig.entry("alice").unwrap();
    rig.store.state().fail_in = Some(0);
    let e = rig
        .core
        .drain("alice", drain("10.0.0.11:80", true))
        .unwrap_err();
    assert!(e.reply.error.contains("not changed"), "{}", e.reply.error);
    assert_eq!(rig.entry("alice").unwrap(), before);
    assert_eq!(frontend(&rig, 30001), Some(a("10.0.0.11:80")));
    assert!(!rig.store.state().routes[0].route.backends.members()[0].drained);
    rig.assert_agree();
}

#[test]
fn a_drain_the_maps_refuse_is_undone_and_not_stored() {
    let mut rig = two_backends();
    let before = rig.entry("alice").unwrap();
    let saves = rig.store.state().saves;
    rig.maps.maps().fail_in = Some(0);
    let e = rig
        .core
        .drain("alice", drain("10.0.0.11:80", true))
        .unwrap_err();
    assert_eq!(e.status, 500);
    assert_eq!(rig.entry("alice").unwrap(), before);
    assert_eq!(rig.store.state().saves, saves);
    rig.assert_agree();
}

#[test]
fn a_config_routes_drain_lives_in_the_table_and_outlasts_a_reload() {
    let pool = crate::testing::pool_route("carol", 30005, &["10.0.0.21:22", "10.0.0.22:22"]);
    let mut rig = Rig::new();
    rig.core.reload(config(vec![pool.clone()]));
    rig.core
        .drain("carol", drain("10.0.0.21:22", true))
        .unwrap();
    assert!(
        rig.store.state().routes.is_empty(),
        "config routes are never stored"
    );
    assert_eq!(frontend(&rig, 30005), Some(a("10.0.0.22:22")));
    rig.core.reload(config(vec![pool]));
    let e = rig.entry("carol").unwrap();
    assert!(e.route.backends.members()[0].drained, "kept across SIGHUP");
    assert_eq!(frontend(&rig, 30005), Some(a("10.0.0.22:22")));
    rig.assert_agree();
}

#[test]
fn health_moves_new_flows_and_a_pool_all_down_fails_open() {
    let mut rig = two_backends();
    let key = rig.entry("alice").unwrap().route.key();
    assert!(rig.core.set_health(&key, a("10.0.0.11:80"), false));
    assert!(
        !rig.core.set_health(&key, a("10.0.0.11:80"), false),
        "no news"
    );
    assert!(
        !rig.core.set_health(&key, a("10.0.0.99:80"), false),
        "no member"
    );
    assert_eq!(frontend(&rig, 30001), Some(a("10.0.0.12:80")));
    let v = rig.core.list().routes.remove(0);
    assert!(!v.backends[0].up && v.backends[1].up && !v.fail_open);
    assert!(rig.core.set_health(&key, a("10.0.0.12:80"), false));
    let e = rig.entry("alice").unwrap();
    assert!(e.fail_open());
    assert_eq!(
        e.active(),
        vec![(a("10.0.0.11:80"), 1), (a("10.0.0.12:80"), 2)],
        "all of them, rather than none"
    );
    let v = rig.core.list().routes.remove(0);
    assert!(v.fail_open);
    assert!(v.pool_text().contains("FAIL-OPEN"), "{}", v.pool_text());
    assert!(rig.core.set_health(&key, a("10.0.0.12:80"), true));
    assert_eq!(frontend(&rig, 30001), Some(a("10.0.0.12:80")));
    assert!(
        rig.store.state().routes[0].route == e.route,
        "health is never stored"
    );
    rig.assert_agree();
}

#[test]
fn a_verdict_the_maps_refuse_is_put_back() {
    let mut rig = two_backends();
    let key = rig.entry("alice").unwrap().route.key();
    rig.maps.maps().fail_in = Some(0);
    assert!(!rig.core.set_health(&key, a("10.0.0.11:80"), false));
    assert!(rig.entry("alice").unwrap().down.is_empty());
    assert_eq!(frontend(&rig, 30001), Some(a("10.0.0.11:80")));
    rig.assert_agree();
}

#[test]
fn checks_follow_pools_and_tell_the_runner_only_of_news() {
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
    let mut rig = Rig::new();
    rig.core.checks = Some(std::cell::RefCell::new(crate::daemon::pools::Checks::new(
        tx,
        crate::health::Board::default(),
    )));
    rig.core
        .add(pool_request(
            "alice",
            &["10.0.0.11:80", "10.0.0.12:80 weight=2"],
        ))
        .unwrap();
    rig.core.add(request("bob", "10.0.0.13:22")).unwrap();
    let mut seen: Vec<(String, SocketAddrV4)> = rx
        .borrow_and_update()
        .iter()
        .map(|t| (t.key.clone(), t.backend))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("alice/ssh/tcp".to_string(), a("10.0.0.11:80")),
            ("alice/ssh/tcp".to_string(), a("10.0.0.12:80")),
        ],
        "the pool's members, none of a one-backend route"
    );
    // A verdict changes the entry, not what is checked: no news for the runner.
    let key = rig.entry("alice").unwrap().route.key();
    assert!(rig.core.set_health(&key, a("10.0.0.11:80"), false));
    assert!(!rx.has_changed().unwrap());
    // The route goes, and its checks with it.
    rig.core.remove("alice", None, None).unwrap();
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().is_empty());
}

#[test]
fn a_drain_through_another_gateway_changes_the_route_in_place() {
    let mut rig = two_backends();
    let before = rig.entry("alice").unwrap();
    let key = before.route.key();
    assert!(rig.core.set_health(&key, a("10.0.0.12:80"), false));
    let mut s = rig.store.state().routes[0].clone();
    s.route.backends = s
        .route
        .backends
        .with_drained(a("10.0.0.11:80"), true)
        .unwrap();
    rig.core.apply_shared(vec![RouteChange::Put(s.clone())]);
    let after = rig.entry("alice").unwrap();
    assert_eq!(after.id, before.id, "same slot, same counters");
    assert_eq!(after.route, s.route);
    assert!(after.down.contains(&a("10.0.0.12:80")), "health kept");
    assert!(after.fail_open(), "the one undrained member is down");
    assert_eq!(frontend(&rig, 30001), Some(a("10.0.0.12:80")));
}

/// A rig whose core follows its table with checks, and the runner's end of them.
fn checked_rig() -> (
    Rig,
    tokio::sync::watch::Receiver<Vec<crate::health::Target>>,
) {
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let mut rig = Rig::new();
    rig.core.checks = Some(std::cell::RefCell::new(crate::daemon::pools::Checks::new(
        tx,
        crate::health::Board::default(),
    )));
    (rig, rx)
}

fn check_request(toml_text: &str) -> lb_model::check::CheckRequest {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn a_routes_own_check_is_what_its_members_get_and_is_stored() {
    let (mut rig, mut rx) = checked_rig();
    let mut r = pool_request("alice", &["10.0.0.11:80", "10.0.0.12:80"]);
    r.check = Some(check_request(
        "kind = \"http\"\npath = \"/healthz\"\ninterval = \"3s\"\nfall = 2",
    ));
    let v = rig.core.add(r).unwrap();
    assert_eq!(
        v.check.as_deref(),
        Some("http GET /healthz inter 3s timeout 1s rise 2 fall 2")
    );
    let targets = rx.borrow_and_update().clone();
    assert_eq!(targets.len(), 2);
    assert!(targets
        .iter()
        .all(|t| t.spec.to_string() == v.check.clone().unwrap()));
    // The store keeps the check as written, and a reload gives the same route back.
    let stored = rig.store.state().routes[0].clone();
    let spec = stored.route.backends.check().unwrap();
    assert_eq!(spec.interval, std::time::Duration::from_secs(3));
    let json = crate::table::state::encode_route(&stored);
    assert!(
        json.contains(r#""check":{"kind":"http","path":"/healthz","interval":"3s","fall":2}"#),
        "{json}"
    );

    // A one-backend route with a check is checked too (its owner sees its health); one
    // without is not; `none` turns a pool's default off.
    let mut one = request("bob", "10.0.0.13:22");
    one.check = Some(check_request("kind = \"ssh\""));
    rig.core.add(one).unwrap();
    let mut off = pool_request("carol", &["10.0.0.21:80", "10.0.0.22:80"]);
    off.check = Some(check_request("kind = \"none\""));
    let v = rig.core.add(off).unwrap();
    assert_eq!(v.check, None, "kind none: nothing checked");
    rig.core.add(request("dave", "10.0.0.31:22")).unwrap();
    let keys: std::collections::BTreeSet<String> = rx
        .borrow_and_update()
        .iter()
        .map(|t| t.key.clone())
        .collect();
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        ["alice/ssh/tcp", "bob/ssh/tcp"]
    );
}

#[test]
fn a_udp_pool_is_not_checked_unless_it_names_a_port_to_check() {
    let (mut rig, mut rx) = checked_rig();
    let mut udp = pool_request("alice", &["10.0.0.11:27015", "10.0.0.12:27015"]);
    udp.protocol = Some("udp".into());
    let v = rig.core.add(udp.clone()).unwrap();
    assert_eq!(v.check, None, "a TCP connect to a UDP port says nothing");
    assert!(rx.borrow_and_update().is_empty());
    rig.core.remove("alice", None, None).unwrap();
    udp.check = Some(check_request("kind = \"tcp\"\nport = 8080"));
    let v = rig.core.add(udp).unwrap();
    assert_eq!(
        v.check.as_deref(),
        Some("tcp port 8080 inter 2s timeout 1s rise 2 fall 3")
    );
    let targets = rx.borrow_and_update().clone();
    assert_eq!(
        targets
            .iter()
            .map(|t| t.spec.probe_addr(t.backend))
            .collect::<Vec<_>>(),
        [a("10.0.0.11:8080"), a("10.0.0.12:8080")],
        "the companion port of each member is probed"
    );
}

#[test]
fn a_bad_check_is_refused_naming_its_field_and_a_students_is_bounded() {
    let mut rig = Rig::new();
    let mut r = pool_request("alice", &["10.0.0.11:80", "10.0.0.12:80"]);
    r.check = Some(check_request(
        "kind = \"http\"\npath = \"/a b\"\ninterval = \"1s\"\ntimeout = \"1s\"",
    ));
    let e = rig.core.add(r).unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(e.reply.field.as_deref(), Some("check.path"));
    assert!(e.reply.error.contains("check.timeout"), "{}", e.reply.error);
    assert!(rig.entry("alice").is_none());

    rig.core
        .user_add(user_request("bob", &["10.0.0.31"], 4))
        .unwrap();
    let mut fast = ClaimRequest {
        backend: String::new(),
        backends: vec!["10.0.0.31:80".into(), "10.0.0.31:81".into()],
        ..claim("web", "")
    };
    fast.check = Some(check_request("interval = \"500ms\""));
    let e = rig.core.claim("bob", fast.clone()).unwrap_err();
    assert_eq!(
        (e.status, e.reply.field.as_deref()),
        (400, Some("check.interval"))
    );
    assert!(e.reply.error.contains("500ms"), "{}", e.reply.error);
    assert!(rig.entry("bob").is_none());
    fast.check = Some(check_request(
        "kind = \"http\"\npath = \"/up\"\ninterval = \"1s\"",
    ));
    let v = rig.core.claim("bob", fast).unwrap();
    assert_eq!(
        v.check.as_deref(),
        Some("http GET /up inter 1s timeout 500ms rise 2 fall 3")
    );
}

#[test]
fn a_drain_keeps_the_routes_check() {
    let mut rig = Rig::new();
    let mut r = pool_request("alice", &["10.0.0.11:80", "10.0.0.12:80"]);
    r.check = Some(check_request("kind = \"ssh\""));
    rig.core.add(r).unwrap();
    let v = rig
        .core
        .drain("alice", drain("10.0.0.11:80", true))
        .unwrap();
    assert!(
        v.check.as_deref().unwrap().starts_with("ssh "),
        "{:?}",
        v.check
    );
    let stored = rig.store.state().routes[0].clone();
    assert!(stored.route.backends.check().is_some());
}

#[test]
fn a_health_transition_is_an_audit_line_with_its_reason() {
    let mut rig = Rig::new();
    rig.core
        .add(pool_request("audited", &["10.0.0.41:80", "10.0.0.42:80"]))
        .unwrap();
    let key = rig.entry("audited").unwrap().route.key();
    tracing::subscriber::with_default(crate::logging::audit_only(), || {
        assert!(rig.core.set_health_because(
            &key,
            a("10.0.0.42:80"),
            false,
            "3 checks in a row failed, last: connect: Connection refused"
        ));
        assert!(rig.core.set_health_because(
            &key,
            a("10.0.0.42:80"),
            true,
            "2 checks in a row passed"
        ));
    });
    let lines: Vec<String> = crate::logging::recent_audit()
        .into_iter()
        .filter(|l| l.contains("audited/ssh/tcp"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("action=\"backend down\"")
            && lines[0].contains("10.0.0.42:80")
            && lines[0].contains("Connection refused"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("action=\"backend up\""), "{}", lines[1]);
}

/// A gateway of a cluster (`follower`: another one leads) with the two-member pool of
/// [`two_backends`], following its table with checks; the board its runner would fill.
fn cluster_gateway(follower: bool) -> (Rig, crate::health::Board) {
    let mut rig = Rig::shared();
    rig.store.state().follower = follower;
    let (tx, _rx) = tokio::sync::watch::channel(Vec::new());
    let board = crate::health::Board::default();
    rig.core.checks = Some(std::cell::RefCell::new(crate::daemon::pools::Checks::new(
        tx,
        board.clone(),
    )));
    rig.core
        .add(pool_request(
            "alice",
            &["10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:80"],
        ))
        .unwrap();
    (rig, board)
}

/// The Maglev table the data plane would write for `name`'s pool on this gateway.
fn maglev_of(rig: &Rig, name: &str) -> Vec<u16> {
    let members: Vec<(SocketAddrV4, u32)> = rig
        .entry(name)
        .unwrap()
        .active()
        .into_iter()
        .map(|(a, w)| (a, u32::from(w)))
        .collect();
    crate::kernel::dataplane::maglev::table(&members, 251).unwrap()
}

fn status(backend: &str, up: bool, confirmed: bool) -> crate::health::TargetStatus {
    crate::health::TargetStatus {
        route: "alice/ssh/tcp".into(),
        backend: a(backend),
        up,
        confirmed,
        check: "tcp".into(),
        last: None,
        against: 0,
        changed_unix: None,
    }
}

#[test]
fn every_gateway_applies_the_leaders_verdicts_so_both_choose_alike() {
    let (mut leader, _) = cluster_gateway(false);
    let (mut other, _) = cluster_gateway(true);
    let key = leader.entry("alice").unwrap().route.key();
    assert_eq!(maglev_of(&leader, "alice"), maglev_of(&other, "alice"));
    let before = maglev_of(&leader, "alice");

    // The follower's own checks see another member down: the leader decides, not it.
    assert!(!other
        .core
        .own_verdict(&key, a("10.0.0.11:80"), false, "1 check failed"));
    assert!(other.entry("alice").unwrap().down.is_empty());
    assert!(
        other.store.state().verdicts.is_empty(),
        "a follower writes none"
    );

    // The leader's verdict: applied there and written for the others.
    assert!(leader
        .core
        .own_verdict(&key, a("10.0.0.12:80"), false, "3 checks in a row failed"));
    let written = leader.store.state().verdicts.clone();
    assert_eq!(written, [(key.clone(), a("10.0.0.12:80"), false)]);
    other
        .core
        .apply_remote(crate::cluster::Remote::Health(written.clone()));
    assert_eq!(
        other.entry("alice").unwrap().down,
        leader.entry("alice").unwrap().down
    );
    let after = maglev_of(&leader, "alice");
    assert_ne!(after, before, "the member left the table");
    assert_eq!(maglev_of(&other, "alice"), after, "the same choice on both");
    let chosen: std::collections::BTreeSet<u16> = after.iter().copied().collect();
    assert_eq!(
        chosen.len(),
        2,
        "the table spreads over the two members left"
    );
    other.assert_agree();

    // An echo of an older verdict does not undo the leader's newer one.
    leader
        .core
        .apply_remote(crate::cluster::Remote::Health(vec![(
            key.clone(),
            a("10.0.0.12:80"),
            true,
        )]));
    assert!(leader
        .entry("alice")
        .unwrap()
        .down
        .contains(&a("10.0.0.12:80")));

    // A gateway that resynchronises (or starts) takes the stored verdicts as a whole.
    let (mut late, _) = cluster_gateway(true);
    let (routes, down) = {
        let s = leader.store.state();
        (s.routes.clone(), s.down.iter().cloned().collect())
    };
    late.core.apply_remote(crate::cluster::Remote::Resync {
        revision: 9,
        routes,
        accounts: None,
        down,
        why: "test".into(),
    });
    assert_eq!(maglev_of(&late, "alice"), after);
}

#[test]
fn a_new_leader_starts_from_the_last_verdicts_written_without_a_flap() {
    let (mut gw2, board) = cluster_gateway(true);
    let key = gw2.entry("alice").unwrap().route.key();
    // What the old leader wrote, as a start (or resync) loads it.
    gw2.core
        .adopt_health(vec![(key.clone(), a("10.0.0.12:80"))]);
    let shared = maglev_of(&gw2, "alice");
    assert!(gw2
        .entry("alice")
        .unwrap()
        .down
        .contains(&a("10.0.0.12:80")));

    // gw2 becomes leader. Its checks have only assumed .12 up so far (never checked it),
    // and confirmed the others: nothing changes, nothing is written.
    gw2.store.state().follower = false;
    board.put(status("10.0.0.11:80", true, true));
    board.put(status("10.0.0.12:80", true, false));
    board.put(status("10.0.0.13:80", true, true));
    gw2.core.lead_health();
    assert_eq!(
        maglev_of(&gw2, "alice"),
        shared,
        "no flap at the change of leader"
    );
    assert!(gw2.store.state().verdicts.is_empty());

    // Once its checks confirm .12 is back, the new leader says so for everyone; and a
    // member its checks find down leaves everywhere.
    board.put(status("10.0.0.12:80", true, true));
    board.put(status("10.0.0.13:80", false, true));
    gw2.core.lead_health();
    assert_eq!(
        gw2.store.state().verdicts,
        [
            (key.clone(), a("10.0.0.12:80"), true),
            (key.clone(), a("10.0.0.13:80"), false)
        ]
    );
    let e = gw2.entry("alice").unwrap();
    assert_eq!(
        e.down.iter().copied().collect::<Vec<_>>(),
        [a("10.0.0.13:80")]
    );
    gw2.assert_agree();
    // Nothing differs any more: the next pass writes nothing.
    gw2.core.lead_health();
    assert_eq!(gw2.store.state().verdicts.len(), 2);
}

#[test]
fn a_verdict_the_shared_table_refused_is_written_again() {
    let (mut leader, _) = cluster_gateway(false);
    let key = leader.entry("alice").unwrap().route.key();
    leader.store.state().unreachable = true;
    assert!(leader
        .core
        .own_verdict(&key, a("10.0.0.12:80"), false, "3 checks in a row failed"));
    assert!(leader.store.state().down.is_empty(), "etcd did not take it");
    leader.core.lead_health();
    assert!(leader.store.state().down.is_empty(), "still unreachable");
    leader.store.state().unreachable = false;
    leader.core.lead_health();
    assert_eq!(
        leader
            .store
            .state()
            .down
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        [(key, a("10.0.0.12:80"))]
    );
    leader.core.lead_health();
    assert_eq!(leader.store.state().verdicts.len(), 1, "written once");
}

#[test]
fn the_views_carry_the_boards_last_result_and_time_of_change() {
    let (mut rig, board) = cluster_gateway(false);
    let mut down = status("10.0.0.12:80", false, true);
    down.last = Some("connect: Connection refused".into());
    down.changed_unix = Some(1_796_691_000);
    board.put(down);
    let mut up = status("10.0.0.11:80", true, true);
    up.last = Some("TCP connect".into());
    board.put(up);
    // Another route's status with a key that sorts after this one's is not taken.
    let mut other = status("10.0.0.12:80", true, true);
    other.route = "alice/ssh/udp".into();
    board.put(other);
    let key = rig.entry("alice").unwrap().route.key();
    assert!(rig
        .core
        .own_verdict(&key, a("10.0.0.12:80"), false, "3 checks in a row failed"));
    let reply = rig.core.list();
    let v = reply.routes.iter().find(|v| v.name == "alice").unwrap();
    assert_eq!(
        v.check.as_deref(),
        Some("tcp inter 2s timeout 1s rise 2 fall 3")
    );
    let b: Vec<(&str, bool, Option<u64>, Option<&str>)> = v
        .backends
        .iter()
        .map(|b| (b.addr.as_str(), b.up, b.since_unix, b.last_check.as_deref()))
        .collect();
    assert_eq!(
        b,
        [
            ("10.0.0.11:80", true, None, Some("TCP connect")),
            (
                "10.0.0.12:80",
                false,
                Some(1_796_691_000),
                Some("connect: Connection refused")
            ),
            ("10.0.0.13:80", true, None, None),
        ]
    );
    assert!(lb_model::text::health_board(v, 1_796_691_060)[2].contains("down since"));
}

#[test]
fn a_config_routes_verdicts_stay_with_each_gateway() {
    let (mut rig, _) = cluster_gateway(true);
    let judge = Route {
        name: "judge".into(),
        service: "http".into(),
        protocol: Protocol::Tcp,
        backends: lb_model::Pool::parse(&["10.0.0.51:80", "10.0.0.52:80"]).unwrap(),
        port: 30050,
        proxy_protocol: None,
    };
    rig.core.reload(config(vec![judge]));
    let key = rig.entry("judge").unwrap().route.key();
    assert_eq!(rig.entry("judge").unwrap().source, Source::Config);
    // A follower applies its own checks' verdict on its own config route, writes nothing,
    // and neither a resync's shared set nor the leader's verdicts touch it.
    assert!(rig
        .core
        .own_verdict(&key, a("10.0.0.52:80"), false, "3 checks in a row failed"));
    assert!(rig.store.state().verdicts.is_empty());
    rig.core.adopt_health(Vec::new());
    rig.core.apply_remote(crate::cluster::Remote::Health(vec![(
        key.clone(),
        a("10.0.0.52:80"),
        true,
    )]));
    assert!(rig
        .entry("judge")
        .unwrap()
        .down
        .contains(&a("10.0.0.52:80")));
}
