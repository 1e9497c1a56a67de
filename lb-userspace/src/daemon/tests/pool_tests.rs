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
