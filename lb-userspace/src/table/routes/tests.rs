use std::time::UNIX_EPOCH;

use super::*;
use lb_model::Protocol;

const DAY: Duration = Duration::from_secs(86400);

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn route(name: &str, port: u16, backend: &str) -> Route {
    crate::testing::ssh_route(name, port, backend)
}

fn udp(mut r: Route) -> Route {
    r.protocol = Protocol::Udp;
    r
}

fn range(first: u16, last: u16) -> PortRange {
    PortRange { first, last }
}

fn id_of(t: &RouteTable, n: &str) -> u32 {
    t.entries().find(|e| e.route.name == n).unwrap().id
}

#[test]
fn ids_are_stable_across_reloads_and_reused_after_removal() {
    let mut t = RouteTable::new();
    let a = route("alice", 30001, "10.0.0.11:22");
    let b = route("bob", 30002, "10.0.0.12:22");
    let d = t.replace_config(&[a.clone(), b.clone()], t0()).unwrap();
    assert_eq!(d.added.len(), 2);
    let (ida, idb) = (id_of(&t, "alice"), id_of(&t, "bob"));
    assert_ne!(ida, idb);

    let d = t.replace_config(&[a.clone(), b.clone()], t0()).unwrap();
    assert!(d.is_empty());

    let b2 = route("bob", 30003, "10.0.0.12:22");
    let d = t.replace_config(&[a.clone(), b2], t0()).unwrap();
    assert_eq!(d.changed.len(), 1);
    assert_eq!(d.changed[0].old.route.port, 30002);
    assert_eq!(d.changed[0].new.route.port, 30003);
    assert_eq!(id_of(&t, "bob"), idb);

    let d = t.replace_config(&[a], t0()).unwrap();
    assert_eq!(d.removed.len(), 1);
    let c = route("carol", 30004, "10.0.0.13:22");
    let d = t
        .replace_config(&[route("alice", 30001, "10.0.0.11:22"), c], t0())
        .unwrap();
    assert_eq!(d.added[0].id, idb, "carol reuses bob's freed slot");
    assert_eq!(id_of(&t, "alice"), ida);
}

fn t0() -> SystemTime {
    t(1_700_000_000)
}

#[test]
fn two_config_routes_may_swap_ports_in_one_reload() {
    let mut t = RouteTable::new();
    t.replace_config(
        &[
            route("alice", 30001, "10.0.0.11:22"),
            route("bob", 30002, "10.0.0.12:22"),
        ],
        t0(),
    )
    .unwrap();
    let d = t
        .replace_config(
            &[
                route("alice", 30002, "10.0.0.11:22"),
                route("bob", 30001, "10.0.0.12:22"),
            ],
            t0(),
        )
        .unwrap();
    assert_eq!(d.changed.len(), 2);
    assert!(t.port_in_use(30001, Protocol::Tcp) && t.port_in_use(30002, Protocol::Tcp));
}

#[test]
fn a_reload_that_clashes_with_a_runtime_route_changes_nothing() {
    let mut t = RouteTable::new();
    t.replace_config(&[route("alice", 30001, "10.0.0.11:22")], t0())
        .unwrap();
    t.insert(
        route("rt", 30005, "10.0.0.15:22"),
        Source::Runtime,
        t0(),
        None,
    )
    .unwrap();
    let before: Vec<Entry> = t.entries().cloned().collect();
    // A new config route on the runtime route's port, and alice dropped.
    let err = t
        .replace_config(&[route("carol", 30005, "10.0.0.13:22")], t0())
        .unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].field, "route[1].port");
    assert!(err[0].reason.contains("rt/ssh/tcp"), "{}", err[0]);
    assert!(err[0].reason.contains("runtime"), "{}", err[0]);
    let after: Vec<Entry> = t.entries().cloned().collect();
    assert_eq!(
        before, after,
        "a refused reload must leave the table untouched"
    );

    // Same key as the runtime route but a different port: refused, naming the key.
    let err = t
        .replace_config(&[route("rt", 30006, "10.0.0.15:22")], t0())
        .unwrap_err();
    assert_eq!(err[0].field, "route[1].name");
    assert!(err[0].reason.contains("route rm rt"), "{}", err[0]);
}

#[test]
fn a_config_route_identical_to_a_runtime_one_takes_it_over() {
    let mut t = RouteTable::new();
    let r = route("rt", 30005, "10.0.0.15:22");
    let e = t
        .insert(r.clone(), Source::Runtime, t0(), Some(t0()))
        .unwrap();
    let d = t.replace_config(std::slice::from_ref(&r), t0()).unwrap();
    assert_eq!(d.changed.len(), 1);
    let now = t.get(&r.key()).unwrap();
    assert_eq!(now.source, Source::Config);
    assert_eq!(now.id, e.id);
    // Dropping it from the file then removes it, like any config route.
    let d = t.replace_config(&[], t0()).unwrap();
    assert_eq!(d.removed.len(), 1);
    assert!(t.is_empty());
}

#[test]
fn conflicts_name_the_field() {
    let mut t = RouteTable::new();
    t.insert(
        route("alice", 30001, "10.0.0.11:22"),
        Source::Config,
        t0(),
        None,
    )
    .unwrap();
    let field = |r: Route| match t.clone().insert(r, Source::Runtime, t0(), None) {
        Err(RouteError::Conflict(c)) => c.error.field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(route("alice", 30002, "10.0.0.12:22")), "name");
    assert_eq!(field(route("bob", 30001, "10.0.0.12:22")), "port");
    assert_eq!(field(route("bob", 30002, "10.0.0.11:22")), "backend");
    // The other protocol may share port and backend.
    assert!(t
        .clone()
        .insert(
            udp(route("bob", 30001, "10.0.0.11:22")),
            Source::Runtime,
            t0(),
            None
        )
        .is_ok());
}

#[test]
fn ports_are_allocated_lowest_first_never_twice_and_a_full_range_is_an_error() {
    let mut t = RouteTable::new();
    let r = range(30000, 30009);
    let mut seen = HashSet::new();
    for i in 0..10 {
        let name = format!("s{i}");
        let port = t.allocate_port(&name, "ssh", Protocol::Tcp, r).unwrap();
        assert_eq!(port, 30000 + i);
        assert!(seen.insert(port));
        t.insert(
            route(&name, port, &format!("10.0.1.{}:22", i + 1)),
            Source::Runtime,
            t0(),
            None,
        )
        .unwrap();
    }
    let err = t
        .allocate_port("late", "ssh", Protocol::Tcp, r)
        .unwrap_err();
    assert_eq!(
        err,
        RouteError::RangeFull {
            range: r,
            protocol: Protocol::Tcp
        }
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("port:") && msg.contains("30000-30009"),
        "{msg}"
    );

    // A removed route's port goes back to the pool, lowest first.
    t.remove(&route("s3", 0, "10.0.1.4:22").key()).unwrap();
    assert_eq!(
        t.allocate_port("late", "ssh", Protocol::Tcp, r).unwrap(),
        30003
    );
}

#[test]
fn a_udp_sibling_shares_its_tcp_port_but_strangers_do_not() {
    let mut t = RouteTable::new();
    let r = range(30000, 30009);
    t.insert(
        route("alice", 30000, "10.0.0.11:5201"),
        Source::Runtime,
        t0(),
        None,
    )
    .unwrap();
    // bob's udp route does not get 30000 even though udp/30000 is free.
    assert_eq!(
        t.allocate_port("bob", "ssh", Protocol::Udp, r).unwrap(),
        30001
    );
    // alice/ssh/udp is the sibling of alice/ssh/tcp: same number.
    assert_eq!(
        t.allocate_port("alice", "ssh", Protocol::Udp, r).unwrap(),
        30000
    );
}

#[test]
fn slots_are_adopted_from_the_pinned_maps_after_a_restart() {
    let mut t = RouteTable::new();
    t.insert(
        route("alice", 30001, "10.0.0.11:22"),
        Source::Config,
        t0(),
        None,
    )
    .unwrap();
    t.insert(
        route("bob", 30002, "10.0.0.12:22"),
        Source::Runtime,
        t0(),
        None,
    )
    .unwrap();
    t.insert(
        route("carol", 30003, "10.0.0.13:22"),
        Source::Runtime,
        t0(),
        None,
    )
    .unwrap();
    let pinned: HashMap<_, _> = [
        // alice kept slot 7 in the previous run.
        ((30001, Protocol::Tcp), ("10.0.0.11:22".parse().unwrap(), 7)),
        // bob's port pointed elsewhere: his counters are not his.
        ((30002, Protocol::Tcp), ("10.0.0.99:22".parse().unwrap(), 3)),
    ]
    .into();
    let fresh = t.adopt_slots(&pinned);
    assert_eq!(id_of(&t, "alice"), 7);
    let (b, c) = (id_of(&t, "bob"), id_of(&t, "carol"));
    assert_eq!(fresh, HashSet::from([b, c]));
    assert!(b != 7 && c != 7 && b != c);
    // New routes never get a slot in use.
    let d = t
        .insert(
            route("dave", 30004, "10.0.0.14:22"),
            Source::Runtime,
            t0(),
            None,
        )
        .unwrap();
    assert!(![7, b, c].contains(&d.id), "{}", d.id);
}

#[test]
fn reclaim_takes_only_idle_runtime_routes() {
    let mut t = RouteTable::new();
    let added = t0();
    t.insert(
        route("cfg", 30001, "10.0.0.11:22"),
        Source::Config,
        added,
        None,
    )
    .unwrap();
    t.insert(
        route("idle", 30002, "10.0.0.12:22"),
        Source::Runtime,
        added,
        None,
    )
    .unwrap();
    t.insert(
        route("busy", 30003, "10.0.0.13:22"),
        Source::Runtime,
        added,
        None,
    )
    .unwrap();
    t.insert(
        route("old", 30004, "10.0.0.14:22"),
        Source::Runtime,
        added,
        Some(added + DAY),
    )
    .unwrap();
    let busy = route("busy", 0, "10.0.0.13:22").key();
    assert!(t.note_activity(&busy, added + 13 * DAY));
    assert!(
        !t.note_activity(&busy, added + DAY),
        "last-seen never moves back"
    );

    let names = |now: SystemTime| -> Vec<String> {
        let mut v: Vec<String> = idle_routes(t.entries(), now, 14 * DAY)
            .into_iter()
            .map(|k| k.name)
            .collect();
        v.sort();
        v
    };
    assert!(names(added + 13 * DAY).is_empty());
    // 14 days after creation: the never-used route goes; "old" was last seen on day 1.
    assert_eq!(names(added + 14 * DAY), ["idle"]);
    assert_eq!(names(added + 15 * DAY), ["idle", "old"]);
    // busy's last packet was on day 13.
    assert_eq!(names(added + 27 * DAY), ["busy", "idle", "old"]);
    // A clock set back never reclaims.
    assert!(names(added - DAY).is_empty());
}

#[test]
fn a_full_table_is_an_error_not_a_panic() {
    let mut t = RouteTable::new();
    t.next_id = MAX_ROUTES;
    assert_eq!(
        t.insert(
            route("alice", 30001, "10.0.0.11:22"),
            Source::Runtime,
            t0(),
            None
        ),
        Err(RouteError::Full)
    );
}

#[test]
fn restored_routes_get_their_own_slots_back_in_any_order() {
    let mut t = RouteTable::new();
    let names = ["alice", "bob", "carol"];
    for (i, n) in names.iter().enumerate() {
        let port = 30001 + i as u16;
        t.insert(
            route(n, port, &format!("10.0.0.{}:22", 11 + i)),
            Source::Runtime,
            t0(),
            None,
        )
        .unwrap();
    }
    let before: Vec<Entry> = t.entries().cloned().collect();
    let gone: Vec<Entry> = names
        .iter()
        .map(|n| {
            t.remove(
                &before
                    .iter()
                    .find(|e| e.route.name == *n)
                    .unwrap()
                    .route
                    .key(),
            )
        })
        .map(Option::unwrap)
        .collect();
    for e in gone {
        t.restore(e).unwrap();
    }
    assert_eq!(t.entries().cloned().collect::<Vec<_>>(), before);
    // The slots are taken again: a new route gets a fresh one.
    let d = t.insert(
        route("dave", 30009, "10.0.0.20:22"),
        Source::Runtime,
        t0(),
        None,
    );
    assert_eq!(d.unwrap().id, 3);
    // A slot in use cannot be restored into.
    let mut clash = before[0].clone();
    clash.route = route("erin", 30008, "10.0.0.21:22");
    assert_eq!(t.restore(clash), Err(RouteError::SlotTaken(before[0].id)));
}

/// The free-port index agrees with the routes after any mix of tcp/udp adds and removes
/// (a port is free only when neither protocol uses it), and `named` finds exactly a name's
/// routes.
#[test]
fn the_free_port_index_and_the_name_index_follow_every_change() {
    let mut t = RouteTable::new();
    let r = range(30000, 30019);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for step in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let name = format!("n{}", x % 7);
        let service = ["ssh", "web"][((x >> 8) % 2) as usize];
        let proto = if (x >> 16).is_multiple_of(2) {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let key = RouteKey {
            name: name.clone(),
            service: service.into(),
            protocol: proto,
        };
        if t.get(&key).is_some() {
            t.remove(&key);
        } else if let Ok(port) = t.allocate_port(&name, service, proto, r) {
            let mut route = route(
                &name,
                port,
                &format!("10.0.{}.{}:22", step % 200, x % 200 + 1),
            );
            route.service = service.into();
            route.protocol = proto;
            let _ = t.insert(route, Source::Runtime, t0(), None);
        }
        let lowest = (r.first..=r.last)
            .find(|&p| !t.port_in_use(p, Protocol::Tcp) && !t.port_in_use(p, Protocol::Udp));
        let got = t.allocate_port("stranger", "ssh", Protocol::Tcp, r).ok();
        assert_eq!(got, lowest, "step {step}");
        for n in 0..7 {
            let n = format!("n{n}");
            let by_scan: Vec<&Entry> = t.entries().filter(|e| e.route.name == n).collect();
            assert_eq!(t.named(&n).collect::<Vec<_>>(), by_scan, "step {step}");
        }
    }
}

fn pool(name: &str, port: u16, backends: &[&str]) -> Route {
    crate::testing::pool_route(name, port, backends)
}

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

#[test]
fn every_member_of_a_pool_belongs_to_its_route_alone() {
    let mut t = RouteTable::new();
    t.insert(
        pool("alice", 30001, &["10.0.0.11:80", "10.0.0.12:80 drained"]),
        Source::Runtime,
        t0(),
        None,
    )
    .unwrap();
    assert!(
        t.backend_in_use(a("10.0.0.12:80"), Protocol::Tcp),
        "drained too"
    );
    let e = t
        .insert(
            pool("bob", 30002, &["10.0.0.13:80", "10.0.0.12:80"]),
            Source::Runtime,
            t0(),
            None,
        )
        .unwrap_err();
    let RouteError::Conflict(c) = e else {
        panic!("{e:?}")
    };
    assert_eq!(c.error.field, "backends");
    assert!(
        c.error.reason.contains("10.0.0.12:80/tcp"),
        "{}",
        c.error.reason
    );
    // The same address over the other protocol is another backend.
    t.insert(
        udp(pool("bob", 30002, &["10.0.0.13:80", "10.0.0.12:80"])),
        Source::Runtime,
        t0(),
        None,
    )
    .unwrap();
    // Removing a pool frees every member.
    t.remove(&pool("alice", 30001, &["10.0.0.11:80"]).key());
    assert!(!t.backend_in_use(a("10.0.0.11:80"), Protocol::Tcp));
    assert!(!t.backend_in_use(a("10.0.0.12:80"), Protocol::Tcp));
}

#[test]
fn active_skips_drained_and_down_and_fails_open() {
    let mut t = RouteTable::new();
    let r = pool(
        "alice",
        30001,
        &[
            "10.0.0.11:80",
            "10.0.0.12:80 weight=3",
            "10.0.0.13:80 drained",
        ],
    );
    let key = r.key();
    t.insert(r, Source::Runtime, t0(), None).unwrap();
    let e = t.get(&key).unwrap();
    assert_eq!(
        e.active(),
        vec![(a("10.0.0.11:80"), 1), (a("10.0.0.12:80"), 3)]
    );
    assert!(!e.fail_open());
    let c = t.set_down(&key, a("10.0.0.11:80"), true).unwrap();
    assert_eq!((c.old.route.key(), c.new.id), (key.clone(), c.old.id));
    assert_eq!(c.new.active(), vec![(a("10.0.0.12:80"), 3)]);
    assert_eq!(c.new.primary(), a("10.0.0.12:80"));
    assert!(
        t.set_down(&key, a("10.0.0.11:80"), true).is_none(),
        "no news"
    );
    assert!(
        t.set_down(&key, a("10.0.0.99:80"), true).is_none(),
        "no member"
    );
    // Down and drained both: still never chosen while another is up.
    t.set_down(&key, a("10.0.0.13:80"), true).unwrap();
    let c = t.set_down(&key, a("10.0.0.12:80"), true).unwrap();
    assert!(c.new.fail_open() && !c.old.fail_open());
    assert_eq!(
        c.new.active(),
        vec![(a("10.0.0.11:80"), 1), (a("10.0.0.12:80"), 3)],
        "every undrained member, never the drained one"
    );
    assert_eq!(
        c.new.serving().backends.to_string(),
        "10.0.0.11:80, 10.0.0.12:80 weight=3"
    );
}

#[test]
fn set_backends_keeps_the_slot_and_the_health_of_members_that_stay() {
    let mut t = RouteTable::new();
    let r = pool("alice", 30001, &["10.0.0.11:80", "10.0.0.12:80"]);
    let key = r.key();
    t.insert(r, Source::Runtime, t0(), None).unwrap();
    t.set_down(&key, a("10.0.0.12:80"), true).unwrap();
    let drained = t
        .get(&key)
        .unwrap()
        .route
        .backends
        .with_drained(a("10.0.0.11:80"), true)
        .unwrap();
    let c = t.set_backends(&key, drained).unwrap();
    assert_eq!(c.new.id, c.old.id);
    assert_eq!(c.new.down, c.old.down);
    assert!(c.new.fail_open(), "the only undrained member is down");
    assert_eq!(c.new.active(), vec![(a("10.0.0.12:80"), 1)]);
    let missing = RouteKey {
        name: "nobody".into(),
        ..key
    };
    assert_eq!(
        t.set_backends(&missing, Pool::one(a("10.0.0.13:80"))),
        Err(RouteError::Missing(missing))
    );
}
