use std::net::SocketAddrV4;

use std::path::Path;

use tokio::sync::mpsc;

use super::control::Handle;
use super::lifecycle::{event_loop, finish};
use super::routes::{restart_sections, stored_routes};
use super::*;
use crate::api::Control;
use crate::cluster::Remote;
use crate::kernel::dataplane::Counters;
use crate::table::routes::{Entry, Source};
use crate::table::state::{RouteChange, StoredRoute};
use crate::testing::{FakeDataplane, FakeStore};
use lb_model::api::{ClaimRequest, Shutdown, UserRequest};
use lb_model::RouteRequest;
use lb_model::{PortRange, Protocol, Route};

mod pool_tests;

const DAY: Duration = Duration::from_secs(86400);

fn gateway() -> Gateway {
    Gateway {
        public_interface: "pub0".into(),
        private_interfaces: vec!["priv0".into()],
        public_ipv4: "203.0.113.10".parse().unwrap(),
        port_range: PortRange {
            first: 30001,
            last: 30009,
        },
        reclaim_after: Some(DAY),
        port_cooldown: Duration::ZERO,
    }
}

fn route(name: &str, port: u16, backend: &str) -> Route {
    crate::testing::ssh_route(name, port, backend)
}

fn request(name: &str, backend: &str) -> RouteRequest {
    RouteRequest {
        check: None,
        proxy_protocol: None,
        name: name.into(),
        service: "ssh".into(),
        protocol: None,
        backend: backend.into(),
        backends: vec![],
        port: None,
    }
}

fn config(routes: Vec<Route>) -> Config {
    Config {
        users: Vec::new(),
        gateway: gateway(),
        dns: None,
        http: None,
        https: None,
        portal: None,
        metrics_listen: Vec::new(),
        cluster: None,
        routes,
    }
}

/// A core over fakes, started like `run` starts one (maps synced to the table).
struct Rig {
    core: Core,
    maps: FakeDataplane,
    store: FakeStore,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(RouteTable::new(), FakeDataplane::new())
    }

    fn with(table: RouteTable, maps: FakeDataplane) -> Rig {
        Rig::with_gateway(table, maps, gateway())
    }

    fn with_gateway(table: RouteTable, maps: FakeDataplane, gateway: Gateway) -> Rig {
        Rig::on(table, maps, gateway, FakeStore::new())
    }

    /// A core over `store` as it is (shared or not).
    fn on(table: RouteTable, maps: FakeDataplane, gateway: Gateway, store: FakeStore) -> Rig {
        let cfg = Config {
            gateway,
            ..config(Vec::new())
        };
        // As at a real start, the store holds the runtime routes the table was built from.
        store.state().routes = stored_routes(&table);
        let mut core = Core::new(table, maps.boxed(), store.backing(), &cfg, Clock::default());
        core.settings.interfaces = fake_interfaces;
        core.take_over(false).unwrap();
        Rig { core, maps, store }
    }

    /// A core over a store shared with other gateways (as with `[cluster]`).
    fn shared() -> Rig {
        let store = FakeStore::new();
        store.state().shared = true;
        Rig::on(RouteTable::new(), FakeDataplane::new(), gateway(), store)
    }

    /// Runtime routes added through the API.
    fn with_runtime(names: &[(&str, &str)]) -> Rig {
        let mut rig = Rig::new();
        for (name, backend) in names {
            rig.core.add(request(name, backend)).unwrap();
        }
        rig
    }

    fn entry(&self, name: &str) -> Option<Entry> {
        self.core
            .routes
            .table
            .entries()
            .find(|e| e.route.name == name)
            .cloned()
    }

    fn stored_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .state()
            .routes
            .iter()
            .map(|s| s.route.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The table, the maps and the store all hold the same routes.
    fn assert_agree(&self) {
        let entries: Vec<&Entry> = self.core.routes.table.entries().collect();
        assert!(
            self.maps.maps().holds_exactly(entries.iter().copied()),
            "maps {:?} vs table {entries:?}",
            self.maps.maps()
        );
        let mut runtime: Vec<String> = entries
            .iter()
            .filter(|e| e.source == Source::Runtime)
            .map(|e| e.route.name.clone())
            .collect();
        runtime.sort();
        assert_eq!(self.stored_names(), runtime);
    }
}

#[test]
fn the_clock_moves_by_the_offset_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("offset");
    let clock = Clock::new(Some(file.clone()));
    let real = SystemTime::now();
    assert!(clock.now().duration_since(real).unwrap_or_default() < Duration::from_secs(5));
    std::fs::write(&file, "15d\n").unwrap();
    let ahead = clock.now().duration_since(real).unwrap();
    assert!(ahead >= Duration::from_secs(15 * 86400), "{ahead:?}");
    std::fs::write(&file, "3600").unwrap();
    let ahead = clock.now().duration_since(real).unwrap();
    assert!(ahead >= Duration::from_secs(3600) && ahead < Duration::from_secs(3700));
    // Junk is ignored, not fatal: the clock is the system's.
    std::fs::write(&file, "soon").unwrap();
    assert!(clock.now().duration_since(real).unwrap_or_default() < Duration::from_secs(5));
}

#[test]
fn an_added_route_is_in_the_table_the_maps_and_the_store() {
    let mut rig = Rig::new();
    let view = rig.core.add(request("alice", "10.0.0.11:22")).unwrap();
    assert_eq!(view.port, 30001, "the lowest free port of the range");
    let e = rig.entry("alice").unwrap();
    assert_eq!(e.source, Source::Runtime);
    assert_eq!(
        rig.maps.maps().frontends.get(&(30001, Protocol::Tcp)),
        Some(&("10.0.0.11:22".parse().unwrap(), e.id))
    );
    rig.assert_agree();
}

#[test]
fn a_clashing_add_touches_nothing() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    let (writes, saves) = (rig.maps.maps().writes, rig.store.state().saves);
    let err = rig.core.add(request("bob", "10.0.0.11:22")).unwrap_err();
    assert_eq!(err.status, 409);
    assert_eq!(err.reply.field.as_deref(), Some("backend"));
    assert_eq!(rig.maps.maps().writes, writes);
    assert_eq!(rig.store.state().saves, saves);
    rig.assert_agree();
}

#[test]
fn an_add_the_store_refuses_is_undone_in_the_maps_and_the_table() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    rig.store.state().fail_in = Some(0);
    let err = rig.core.add(request("bob", "10.0.0.12:22")).unwrap_err();
    assert_eq!(err.status, 500);
    assert!(err.reply.error.contains("not added"), "{}", err.reply.error);
    assert!(rig.entry("bob").is_none());
    assert_eq!(rig.stored_names(), ["alice"]);
    rig.assert_agree();
    // Its port went back to the pool.
    assert_eq!(
        rig.core.add(request("carol", "10.0.0.13:22")).unwrap().port,
        30002
    );
}

/// DNS and the web routers are one list of mirrors: each gets every change, a change the
/// store refused is undone in each by the same loop, one the maps refused is never shown
/// to any (only its undo, which removes nothing), and a removal reaches each.
#[test]
fn every_mirror_follows_adds_refusals_and_removals() {
    use crate::testing::FakeMirror;
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    let fakes = [FakeMirror::default(), FakeMirror::default()];
    rig.core.mirrors = Mirrors {
        all: fakes
            .iter()
            .map(|f| Arc::new(f.clone()) as Arc<dyn Mirror>)
            .collect(),
        ..Mirrors::default()
    };
    let names = |f: &FakeMirror| f.state().holds.iter().cloned().collect::<Vec<_>>();
    rig.core.add(request("bob", "10.0.0.12:22")).unwrap();
    for f in &fakes {
        assert_eq!(names(f), ["bob"]);
        assert_eq!(f.state().changes.len(), 1);
    }
    rig.store.state().fail_in = Some(0);
    rig.core.add(request("carol", "10.0.0.13:22")).unwrap_err();
    for f in &fakes {
        assert_eq!(names(f), ["bob"], "carol's add undone");
        let s = f.state();
        assert_eq!(s.changes[1], (vec!["carol".to_string()], vec![]));
        assert_eq!(s.changes[2], (vec![], vec!["carol".to_string()]));
    }
    rig.maps.maps().fail_in = Some(0);
    rig.core.add(request("dave", "10.0.0.14:22")).unwrap_err();
    for f in &fakes {
        let s = f.state();
        assert_eq!(s.changes.len(), 4);
        assert_eq!(s.changes[3], (vec![], vec!["dave".to_string()]));
        assert!(!s.holds.contains("dave"));
    }
    rig.core.remove("bob", None, None).unwrap();
    for f in &fakes {
        assert!(names(f).is_empty());
        assert_eq!(f.state().changes.len(), 5);
    }
    rig.assert_agree();
}

#[test]
fn an_add_whose_map_update_fails_half_way_is_undone_and_never_saved() {
    for written in 0..3 {
        let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
        let saves = rig.store.state().saves;
        // Zero the slot, write the frontend, write the reverse entry: fail at each.
        rig.maps.maps().fail_in = Some(written);
        let err = rig.core.add(request("bob", "10.0.0.12:22")).unwrap_err();
        assert_eq!(err.status, 500, "failing write {written}");
        assert!(rig.entry("bob").is_none());
        assert_eq!(rig.store.state().saves, saves, "never made durable");
        rig.assert_agree();
    }
}

#[test]
fn a_removed_route_leaves_the_table_the_maps_and_the_store() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22"), ("bob", "10.0.0.12:22")]);
    let removed = rig.core.remove("alice", None, None).unwrap();
    assert_eq!(removed.removed.len(), 1);
    assert_eq!(removed.removed[0].name, "alice");
    assert!(rig.entry("alice").is_none());
    rig.assert_agree();
    assert_eq!(
        rig.core.remove("alice", None, None).unwrap_err().status,
        404
    );
}

#[test]
fn a_removal_the_store_refuses_puts_the_route_back() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22"), ("bob", "10.0.0.12:22")]);
    let before: Vec<Entry> = rig.core.routes.table.entries().cloned().collect();
    let writes = rig.maps.maps().writes;
    rig.store.state().fail_in = Some(0);
    let err = rig.core.remove("alice", None, None).unwrap_err();
    assert_eq!(err.status, 500);
    assert!(
        err.reply.error.contains("not removed"),
        "{}",
        err.reply.error
    );
    assert_eq!(
        rig.core.routes.table.entries().cloned().collect::<Vec<_>>(),
        before
    );
    // Not recorded, so not done: the maps were never touched.
    assert_eq!(rig.maps.maps().writes, writes);
    rig.assert_agree();
}

#[test]
fn a_multi_route_removal_the_store_refuses_keeps_every_route_in_its_slot() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22"), ("bob", "10.0.0.12:22")]);
    for service in ["web", "db"] {
        rig.core
            .add(RouteRequest {
                service: service.into(),
                ..request("alice", &format!("10.0.0.11:{}", service.len() + 8000))
            })
            .unwrap();
    }
    let before: Vec<Entry> = rig.core.routes.table.entries().cloned().collect();
    rig.store.state().fail_in = Some(0);
    rig.core.remove("alice", None, None).unwrap_err();
    // The maps still carry each route's slot as its route_id: counters, last-seen and
    // reclaim must stay with the route they count.
    assert_eq!(
        rig.core.routes.table.entries().cloned().collect::<Vec<_>>(),
        before
    );
    rig.assert_agree();
}

#[test]
fn a_recorded_removal_stands_when_the_maps_fail() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    rig.maps.maps().broken = true;
    rig.core.remove("alice", None, None).unwrap();
    assert!(rig.entry("alice").is_none());
    assert!(rig.stored_names().is_empty());
}

#[test]
fn config_routes_are_not_removed_through_the_api() {
    let mut rig = Rig::new();
    rig.core
        .reload(config(vec![route("alice", 30001, "10.0.0.11:22")]));
    let err = rig.core.remove("alice", None, None).unwrap_err();
    assert_eq!(err.status, 409);
    assert!(rig.entry("alice").is_some());
    rig.assert_agree();
}

#[test]
fn a_reload_carries_the_config_diff_into_the_maps() {
    let mut rig = Rig::with_runtime(&[("carol", "10.0.0.13:22")]);
    rig.core.reload(config(vec![
        route("alice", 30005, "10.0.0.11:22"),
        route("bob", 30006, "10.0.0.12:22"),
    ]));
    rig.assert_agree();
    let alice = rig.entry("alice").unwrap().id;
    rig.core
        .reload(config(vec![route("alice", 30007, "10.0.0.11:22")]));
    assert!(rig.entry("bob").is_none());
    assert_eq!(rig.entry("alice").unwrap().route.port, 30007);
    assert_eq!(
        rig.entry("alice").unwrap().id,
        alice,
        "a changed route keeps its slot"
    );
    assert_eq!(rig.entry("carol").unwrap().source, Source::Runtime);
    rig.assert_agree();
}

#[test]
fn a_reload_that_clashes_changes_nothing() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    let (writes, before) = (
        rig.maps.maps().writes,
        rig.core.routes.table.entries().cloned().collect::<Vec<_>>(),
    );
    // bob wants alice's port.
    rig.core
        .reload(config(vec![route("bob", 30001, "10.0.0.12:22")]));
    assert_eq!(
        rig.core.routes.table.entries().cloned().collect::<Vec<_>>(),
        before
    );
    assert_eq!(rig.maps.maps().writes, writes);
    rig.assert_agree();
}

#[test]
fn a_runtime_route_the_config_file_takes_over_leaves_the_store() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22"), ("bob", "10.0.0.12:22")]);
    let alice = rig.entry("alice").unwrap();
    rig.core.reload(config(vec![alice.route.clone()]));
    let now = rig.entry("alice").unwrap();
    assert_eq!(now.source, Source::Config);
    assert_eq!(now.id, alice.id);
    assert_eq!(rig.stored_names(), ["bob"]);
    rig.assert_agree();
}

/// A config route and two runtime routes, all added three days ago and silent since.
fn old_table() -> RouteTable {
    let long_ago = SystemTime::now() - 3 * DAY;
    let mut table = RouteTable::new();
    table
        .replace_config(&[route("admin", 30009, "10.0.0.9:22")], long_ago)
        .unwrap();
    for (name, port, backend) in [
        ("alice", 30001, "10.0.0.11:22"),
        ("bob", 30002, "10.0.0.12:22"),
    ] {
        table
            .insert(route(name, port, backend), Source::Runtime, long_ago, None)
            .unwrap();
    }
    table
}

/// [`old_table`] started without reclaim, which is then switched on.
fn old_rig() -> Rig {
    let mut gw = gateway();
    gw.reclaim_after = None;
    let mut rig = Rig::with_gateway(old_table(), FakeDataplane::new(), gw);
    rig.core.settings.gateway.reclaim_after = Some(DAY);
    rig
}

#[test]
fn what_went_idle_while_no_daemon_ran_is_reclaimed_at_start() {
    let rig = Rig::with(old_table(), FakeDataplane::new());
    assert!(rig.entry("alice").is_none());
    assert!(rig.entry("bob").is_none());
    assert!(
        rig.entry("admin").is_some(),
        "config routes are never reclaimed"
    );
    rig.assert_agree();
}

#[test]
fn observing_reads_last_seen_from_the_counters_and_reclaims_only_the_idle() {
    let mut rig = old_rig();
    let bob = rig.entry("bob").unwrap().id;
    rig.maps.maps().counters.insert(
        bob,
        Counters {
            idle: Some(Duration::from_secs(3600)),
            ..Counters::default()
        },
    );
    rig.core.observe();
    assert!(rig.entry("alice").is_none());
    let seen = rig
        .entry("bob")
        .expect("active an hour ago")
        .last_seen
        .unwrap();
    let ago = SystemTime::now().duration_since(seen).unwrap();
    assert!(
        ago >= Duration::from_secs(3600) && ago < Duration::from_secs(3660),
        "{ago:?}"
    );
    assert!(
        rig.entry("admin").is_some(),
        "config routes are never reclaimed"
    );
    rig.assert_agree();
}

#[test]
fn a_reclaim_the_store_refuses_is_still_carried_out_and_saved_later() {
    let mut rig = old_rig();
    rig.store.state().routes = rig.core.routes.stored();
    rig.store.state().fail_in = Some(0);
    rig.core.observe();
    assert!(rig.entry("alice").is_none() && rig.entry("bob").is_none());
    assert!(rig
        .maps
        .maps()
        .holds_exactly(rig.core.routes.table.entries()));
    assert_eq!(
        rig.stored_names(),
        ["alice", "bob"],
        "the failed save changed nothing"
    );
    assert!(rig.core.routes.activity_unsaved, "retried on a later pass");
    rig.core.routes.save().unwrap();
    rig.assert_agree();
}

#[test]
fn start_up_adopts_the_pinned_slots_and_drops_stale_entries() {
    let maps = FakeDataplane::new();
    {
        let mut m = maps.maps();
        let alice: SocketAddrV4 = "10.0.0.11:22".parse().unwrap();
        m.pinned.insert((30001, Protocol::Tcp), (alice, 7));
        // What an earlier run left: alice on slot 7, and a route this table lacks.
        m.frontends.insert((30001, Protocol::Tcp), (alice, 7));
        m.reverse.insert((alice, Protocol::Tcp), (30001, 7));
        m.frontends
            .insert((30004, Protocol::Udp), ("10.0.0.99:53".parse().unwrap(), 3));
    }
    let mut table = RouteTable::new();
    table
        .replace_config(
            &[
                route("alice", 30001, "10.0.0.11:22"),
                route("bob", 30002, "10.0.0.12:22"),
            ],
            SystemTime::now(),
        )
        .unwrap();
    let rig = Rig::with(table, maps);
    assert_eq!(
        rig.entry("alice").unwrap().id,
        7,
        "counters kept across the restart"
    );
    assert_ne!(rig.entry("bob").unwrap().id, 7);
    rig.assert_agree();
}

fn user_request(name: &str, backends: &[&str], max: u32) -> UserRequest {
    UserRequest {
        name: name.into(),
        backends: backends.iter().map(|b| b.to_string()).collect(),
        max_routes: Some(max),
        admin: false,
    }
}

fn claim(service: &str, backend: &str) -> ClaimRequest {
    ClaimRequest {
        check: None,
        proxy_protocol: None,
        service: service.into(),
        backend: backend.into(),
        backends: vec![],
        protocol: None,
    }
}

#[test]
fn students_claim_only_their_names_backends_and_quota() {
    let mut rig = Rig::new();
    let token = rig
        .core
        .user_add(user_request("alice", &["10.0.0.11"], 2))
        .unwrap()
        .token;
    rig.core
        .user_add(user_request("bob", &["10.0.0.12"], 4))
        .unwrap();
    assert_eq!(
        rig.core.students.users.authenticate(&token).unwrap().name,
        "alice"
    );

    let v = rig
        .core
        .claim("alice", claim("ssh", "10.0.0.11:22"))
        .unwrap();
    assert_eq!((v.name.as_str(), v.service.as_str()), ("alice", "ssh"));
    let e = rig
        .core
        .claim("alice", claim("web", "10.0.0.12:80"))
        .unwrap_err();
    assert_eq!((e.status, e.reply.field.as_deref()), (403, Some("backend")));
    assert!(e.reply.error.contains("10.0.0.12:80"), "{}", e.reply.error);
    rig.core
        .claim("alice", claim("http", "10.0.0.11:80"))
        .unwrap();
    let e = rig
        .core
        .claim("alice", claim("db", "10.0.0.11:5432"))
        .unwrap_err();
    assert_eq!((e.status, e.reply.field.as_deref()), (403, Some("quota")));
    assert!(e.reply.error.contains("2 of 2"), "{}", e.reply.error);

    // bob cannot see or release alice's routes: his namespace is his name.
    assert!(rig.core.me("bob").unwrap().routes.is_empty());
    let e = rig.core.release("bob", "ssh", None).unwrap_err();
    assert_eq!(e.status, 404);
    assert_eq!(rig.core.me("alice").unwrap().routes.len(), 2);
    rig.assert_agree();

    // user rm refuses while routes are held, removes them with --with-routes.
    let e = rig.core.user_remove("alice", false).unwrap_err();
    assert_eq!(e.status, 409);
    assert!(e.reply.error.contains("alice/ssh/tcp"), "{}", e.reply.error);
    rig.core.user_remove("alice", true).unwrap();
    assert!(rig.entry("alice").is_none());
    assert!(rig.core.students.users.get("alice").is_none());
    assert!(rig.core.students.users.authenticate(&token).is_err());
    rig.assert_agree();
    assert!(rig.store.state().users.get("alice").is_none());
}

#[test]
fn a_released_port_cools_down_before_anyone_gets_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    let store = FakeStore::new();
    let maps = FakeDataplane::new();
    let mut core = Core::new(
        RouteTable::new(),
        maps.boxed(),
        store.backing(),
        &Config {
            gateway: Gateway {
                port_cooldown: DAY,
                ..gateway()
            },
            ..config(Vec::new())
        },
        Clock::new(Some(offset.clone())),
    );
    core.take_over(false).unwrap();
    core.user_add(user_request("alice", &["10.0.0.0/24"], 4))
        .unwrap();
    core.user_add(user_request("bob", &["10.0.1.0/24"], 4))
        .unwrap();
    let first = core
        .claim("alice", claim("ssh", "10.0.0.11:22"))
        .unwrap()
        .port;
    core.release("alice", "ssh", None).unwrap();
    // The cool-down is durable, and the next claim gets another port.
    assert!(store.state().users.cooldown().contains_key(&first));
    let second = core
        .claim("bob", claim("ssh", "10.0.1.11:22"))
        .unwrap()
        .port;
    assert_ne!(second, first);
    // Two days on: alice's old port is free again, and bob's idle route was reclaimed, so
    // his port is the one cooling down now.
    std::fs::write(&offset, "2d").unwrap();
    core.observe();
    assert!(core.routes.table.entries().next().is_none());
    let cooling: Vec<u16> = store.state().users.cooldown().keys().copied().collect();
    assert_eq!(cooling, [second]);
    let third = core
        .claim("alice", claim("ssh", "10.0.0.11:22"))
        .unwrap()
        .port;
    assert_eq!(third, first);
}

#[test]
fn account_changes_the_store_refuses_are_undone() {
    let mut rig = Rig::new();
    rig.core
        .user_add(user_request("alice", &["10.0.0.11"], 4))
        .unwrap();
    let old = rig.core.students.users.get("alice").unwrap().token_sha256;
    rig.store.state().broken = true;
    let e = rig
        .core
        .user_add(user_request("bob", &["10.0.0.12"], 4))
        .unwrap_err();
    assert_eq!(e.status, 500);
    assert!(rig.core.students.users.get("bob").is_none());
    assert!(rig.core.user_token("alice").is_err());
    assert_eq!(
        rig.core.students.users.get("alice").unwrap().token_sha256,
        old
    );
    assert!(rig.core.user_remove("alice", false).is_err());
    assert!(rig.core.students.users.get("alice").is_some());
    // A claim whose route cannot be made durable is not held either.
    let e = rig
        .core
        .claim("alice", claim("ssh", "10.0.0.11:22"))
        .unwrap_err();
    assert_eq!(e.status, 500);
    assert!(rig.entry("alice").is_none());
    rig.store.state().broken = false;
    rig.assert_agree();
}

fn options() -> Options {
    Options {
        config: "/nonexistent/srvgate.toml".into(),
        xdp_mode: AttachMode::Skb,
        state_dir: "/nonexistent/state".into(),
        pin_dir: "/nonexistent/pins".into(),
        socket: "/nonexistent/control.sock".into(),
        detach_on_exit: false,
        clock_offset_file: None,
    }
}

/// On a single-threaded runtime, a timer's blocking work done on the event loop would stall
/// it: the task that lets the work finish could not run until the work gave up.
#[tokio::test(flavor = "current_thread")]
async fn the_event_loop_does_blocking_work_off_the_async_thread() {
    let Rig { core, maps, .. } = Rig::new();
    let (release, gate) = std::sync::mpsc::channel();
    maps.maps().egress_gate = Some(gate);
    let core = Arc::new(Mutex::new(core));
    let (stop, mut stopped) = mpsc::unbounded_channel();
    let helper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = release.send(());
        stop.send(Shutdown { detach: false }).unwrap();
    });
    let opts = options();
    let run = event_loop(&opts, &core, &mut stopped, None);
    let detach = tokio::time::timeout(Duration::from_secs(30), run).await;
    assert!(!detach.expect("the loop ends on shutdown").unwrap());
    helper.await.unwrap();
    let m = maps.maps();
    assert!(m.egress_refreshes >= 1);
    assert!(!m.stalled, "the egress refresh blocked the event loop");
}

#[test]
fn a_reload_names_every_section_only_a_restart_applies() {
    let running = Config {
        dns: Some(crate::config::Dns {
            zone: "lab.example".into(),
            listen: vec!["127.0.0.1:53".parse().unwrap()],
            gateway_name: "gw".into(),
            nameservers: vec![],
            secondaries: None,
            rrl: None,
            ttl: 30,
        }),
        http: Some(crate::config::Http {
            listen: vec!["127.0.0.1:80".parse().unwrap()],
            service: "http".into(),
            limits: Default::default(),
            forwarded_for: false,
        }),
        metrics_listen: vec!["127.0.0.1:9110".parse().unwrap()],
        cluster: None,
        ..config(vec![route("alice", 30001, "10.0.0.11:22")])
    };
    // What a reload applies is not listed.
    let mut live = running.clone();
    live.routes.clear();
    live.gateway.port_range.last = 30099;
    live.gateway.reclaim_after = None;
    assert!(restart_sections(&running, &live).is_empty());

    let mut new = running.clone();
    new.dns.as_mut().unwrap().ttl = 60;
    assert_eq!(restart_sections(&running, &new), ["[dns]"]);
    new.http = None;
    new.metrics_listen = vec!["127.0.0.1:9111".parse().unwrap()];
    assert_eq!(
        restart_sections(&running, &new),
        ["[dns]", "[http]", "[metrics]"]
    );
    new.gateway.private_interfaces.push("priv1".into());
    assert_eq!(restart_sections(&running, &new).len(), 4);
    assert_eq!(
        restart_sections(&running, &new)[0],
        "[gateway] interfaces or public_ipv4"
    );
    new.cluster = Some(crate::cluster::ClusterSettings {
        etcd: vec!["http://10.0.0.2:2379".into()],
        gateway_id: "gw1".into(),
        tls: None,
    });
    assert_eq!(restart_sections(&running, &new).last(), Some(&"[cluster]"));
    // A section added where there was none counts too.
    let bare = config(Vec::new());
    assert_eq!(
        restart_sections(&bare, &running),
        ["[dns]", "[http]", "[metrics]"]
    );
}

/// Shutdown takes the data plane out under the lock: a clone of the core that outlives its
/// task (an API call still in flight) neither keeps the program's descriptors nor makes the
/// detach fall back to removing pins while they are held.
#[test]
fn shutdown_detaches_though_a_clone_of_the_core_lingers() {
    let Rig { core, maps, .. } = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    let core = Arc::new(Mutex::new(core));
    let lingering = core.clone();
    finish(&mut lock(&core), true, Path::new("/nonexistent/pins")).unwrap();
    assert!(maps.maps().detached, "the data plane itself was detached");
    // What the lingering holder does next touches no map.
    let writes = maps.maps().writes;
    let err = lock(&lingering)
        .add(request("bob", "10.0.0.12:22"))
        .unwrap_err();
    assert_eq!(err.status, 500);
    assert!(
        err.reply.error.contains("shutting down"),
        "{}",
        err.reply.error
    );
    assert_eq!(maps.maps().writes, writes);
    assert_eq!(lock(&lingering).routes.table.len(), 1);
}

#[test]
fn shutdown_without_detach_leaves_the_data_plane_attached() {
    let Rig { mut core, maps, .. } = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    finish(&mut core, false, Path::new("/nonexistent/pins")).unwrap();
    assert!(!maps.maps().detached);
    assert_eq!(maps.maps().frontends.len(), 1, "forwarding stays as it was");
}

/// Through the API handle: an add is answered only after its flush; a flush that fails
/// is a 500 that says the route is live but maybe not durable (and it is live), and a
/// write that fails is undone everywhere.
#[test]
fn the_reply_waits_for_the_flush_and_a_failed_flush_is_reported() {
    let rig = Rig::new();
    let (maps, store) = (rig.maps.clone(), rig.store.clone());
    let (tx, _rx) = mpsc::unbounded_channel();
    let handle = Handle {
        core: Arc::new(Mutex::new(rig.core)),
        shutdown: tx,
    };
    handle.add(request("alice", "10.0.0.11:22")).unwrap();
    assert!(
        lock(&handle.core).routes.unflushed.is_empty(),
        "waited for, not left behind"
    );

    store.state().flush_fails = true;
    let e = handle.add(request("bob", "10.0.0.12:22")).unwrap_err();
    assert_eq!(e.status, 500);
    assert!(
        e.reply.error.contains("live but may not survive a crash"),
        "{}",
        e.reply.error
    );
    let core = lock(&handle.core);
    assert!(core.routes.table.entries().any(|e| e.route.name == "bob"));
    assert!(maps.maps().holds_exactly(core.routes.table.entries()));
    drop(core);

    store.state().flush_fails = false;
    store.state().fail_in = Some(0);
    let e = handle.add(request("carol", "10.0.0.13:22")).unwrap_err();
    assert_eq!(e.status, 500);
    let core = lock(&handle.core);
    assert!(
        !core.routes.table.entries().any(|e| e.route.name == "carol"),
        "undone"
    );
    assert!(maps.maps().holds_exactly(core.routes.table.entries()));
}

#[test]
fn a_claim_may_ask_for_the_proxy_protocol_and_a_bad_one_names_the_field() {
    let mut rig = Rig::new();
    rig.core
        .user_add(UserRequest {
            name: "alice".into(),
            backends: vec!["10.0.0.11".into()],
            max_routes: None,
            admin: false,
        })
        .unwrap();
    let v = rig
        .core
        .claim(
            "alice",
            ClaimRequest {
                check: None,
                service: "https".into(),
                backend: "10.0.0.11:443".into(),
                backends: vec![],
                protocol: None,
                proxy_protocol: Some("v2".into()),
            },
        )
        .unwrap();
    assert_eq!(v.proxy_protocol.as_deref(), Some("v2"));
    let stored = &rig.store.state().routes;
    assert_eq!(
        stored[0].route.proxy_protocol,
        Some(lb_model::ProxyProtocol::V2)
    );
    let e = rig
        .core
        .claim(
            "alice",
            ClaimRequest {
                check: None,
                service: "web".into(),
                backend: "10.0.0.11:80".into(),
                backends: vec![],
                protocol: None,
                proxy_protocol: Some("v3".into()),
            },
        )
        .unwrap_err();
    assert_eq!(
        e.reply.field.as_deref(),
        Some("proxy_protocol"),
        "{:?}",
        e.reply
    );
}

/// Issue 24, item 8: `[cluster]`, a student's claim is made by the shared store only within
/// their quota as the store counts it (routes claimed through other gateways that this one
/// has not heard of yet included) and only while their account exists there: the core
/// hands the store the account and its quota with the claim, turns the store's refusal
/// into the same 403 a local refusal is, and leaves nothing behind.
#[test]
fn a_claim_is_bounded_by_the_shared_stores_count_and_account() {
    let mut rig = Rig::shared();
    rig.core
        .user_add(user_request("alice", &["10.0.0.11"], 1))
        .unwrap();
    rig.core
        .user_add(user_request("bob", &["10.0.0.12"], 2))
        .unwrap();
    // alice's one route was claimed through another gateway a moment ago.
    rig.store.state().held_elsewhere.insert("alice".into(), 1);
    let e = rig
        .core
        .claim("alice", claim("ssh", "10.0.0.11:22"))
        .unwrap_err();
    assert_eq!((e.status, e.reply.field.as_deref()), (403, Some("quota")));
    assert!(e.reply.error.contains("1 of 1"), "{}", e.reply.error);
    assert!(rig.entry("alice").is_none());
    rig.assert_agree();
    let claims = rig.store.state().claims.clone();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(
        (
            claims[0].user.as_str(),
            claims[0].max_routes,
            claims[0].config_held
        ),
        ("alice", 1, 0)
    );
    // bob was removed through another gateway; this one has not heard yet.
    rig.store.state().removed_elsewhere.push("bob".into());
    let e = rig
        .core
        .claim("bob", claim("ssh", "10.0.0.12:22"))
        .unwrap_err();
    assert_eq!((e.status, e.reply.field.as_deref()), (403, Some("name")));
    assert!(e.reply.error.contains("bob"), "{}", e.reply.error);
    assert!(rig.entry("bob").is_none());
    rig.assert_agree();
    // Within the store's count, a claim goes through.
    rig.store.state().held_elsewhere.clear();
    rig.core
        .claim("alice", claim("ssh", "10.0.0.11:22"))
        .unwrap();
    assert!(rig.entry("alice").is_some());
    rig.assert_agree();
    // An admin's route add is no student's claim: no quota for the store to check.
    let before = rig.store.state().claims.len();
    rig.core.add(request("carol", "10.0.0.13:22")).unwrap();
    assert_eq!(rig.store.state().claims.len(), before);
}

/// Issue 24, item 8: `user rm` that the shared store refuses (a route of the user was
/// claimed through another gateway meanwhile) keeps the account, so no route is left
/// without one.
#[test]
fn a_user_removal_the_shared_store_refuses_keeps_the_account() {
    let mut rig = Rig::shared();
    rig.core
        .user_add(user_request("alice", &["10.0.0.11"], 1))
        .unwrap();
    rig.store.state().held_elsewhere.insert("alice".into(), 1);
    let e = rig.core.user_remove("alice", true).unwrap_err();
    assert_eq!(e.status, 409, "{}", e.reply.error);
    assert!(e.reply.error.contains("alice"), "{}", e.reply.error);
    assert!(rig.core.students.users.get("alice").is_some());
    assert!(rig.store.state().users.get("alice").is_some());
    rig.store.state().held_elsewhere.clear();
    rig.core.user_remove("alice", true).unwrap();
    assert!(rig.store.state().users.get("alice").is_none());
}

/// Issue 24, item 9: a gateway whose `[[user]]` list lacks an account another gateway's
/// file added (a rolling reload) neither drops it nor its token when it takes the shared
/// accounts, nor when it saves them next; one its own file declares but the other gateway
/// removed is kept here without a token.
#[test]
fn another_gateways_config_user_and_its_token_survive_here() {
    use crate::table::users::ConfigRemoval;
    use lb_model::ConfigUser;
    let now = SystemTime::UNIX_EPOCH;
    let user = |name: &str| ConfigUser {
        name: name.into(),
        backends: vec!["10.0.0.11".parse().unwrap()],
        max_routes: 2,
        admin: false,
    };
    let mut rig = Rig::shared();
    rig.core.students.config_users = vec![user("alice")];
    // gw1 (the other gateway) runs a file with alice and carol; carol got a token there.
    let mut theirs = Users::default();
    theirs.apply_config(
        &[user("alice"), user("carol")],
        ConfigRemoval::Undeclared,
        now,
    );
    let carol = theirs.rotate("carol").unwrap();
    rig.core.adopt_accounts(theirs, 7);
    assert_eq!(
        rig.core.students.users.authenticate(&carol).unwrap().name,
        "carol"
    );
    // This gateway's next save (an admin adds dave) keeps carol and her token.
    rig.core
        .user_add(user_request("dave", &["10.0.0.12"], 1))
        .unwrap();
    let saved = rig.store.state().users.clone();
    assert_eq!(saved.authenticate(&carol).unwrap().name, "carol");
    // carol is not this file's: an admin may remove her here.
    rig.core.user_remove("carol", false).unwrap();
    // alice is: removed through the other gateway, she stays here (without a token).
    let mut without_alice = Users::default();
    without_alice.apply_config(&[], ConfigRemoval::Undeclared, now);
    rig.core.adopt_accounts(without_alice, 9);
    let a = rig.core.students.users.get("alice").unwrap();
    assert!(a.from_config && a.token_sha256.is_none());
    let e = rig.core.user_remove("alice", false).unwrap_err();
    assert_eq!(e.status, 409);
}

/// `[cluster]`: a port another gateway took a moment ago is refused by the shared store;
/// the core undoes its attempt everywhere and allocates again above every port the store
/// named, so the claim succeeds on a free one.
#[test]
fn a_port_taken_through_another_gateway_is_allocated_around() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    rig.store.state().others = vec![(30002, Protocol::Tcp), (30003, Protocol::Tcp)];
    let view = rig.core.add(request("bob", "10.0.0.12:22")).unwrap();
    // Above the ports the store named (the other gateway goes on from the lowest free one),
    // a few ports apart.
    assert!((30004..=30009).contains(&view.port), "{}", view.port);
    rig.assert_agree();
    assert!(!rig
        .maps
        .maps()
        .frontends
        .contains_key(&(30002, Protocol::Tcp)));
    // An explicit port is never moved: refused, with the store's reason, nothing left.
    let mut explicit = request("carol", "10.0.0.13:22");
    explicit.port = Some(30002);
    let err = rig.core.add(explicit).unwrap_err();
    assert_eq!(err.status, 409);
    assert!(
        err.reply.error.contains("30002 was just taken"),
        "{}",
        err.reply.error
    );
    assert!(rig.entry("carol").is_none());
    rig.assert_agree();
}

/// `[cluster]`, etcd unreachable: a change is refused with 503 naming etcd and its
/// endpoint, and nothing changes (table, maps); forwarding keeps the last table.
#[test]
fn an_unreachable_shared_store_refuses_changes_with_503() {
    let mut rig = Rig::with_runtime(&[("alice", "10.0.0.11:22")]);
    rig.store.state().unreachable = true;
    let err = rig.core.add(request("bob", "10.0.0.12:22")).unwrap_err();
    assert_eq!(err.status, 503);
    assert!(
        err.reply
            .error
            .contains("etcd at http://192.0.2.1:2379 is unreachable"),
        "{}",
        err.reply.error
    );
    assert!(rig.entry("bob").is_none());
    let err = rig.core.remove("alice", None, None).unwrap_err();
    assert_eq!(err.status, 503);
    assert!(
        rig.entry("alice").is_some(),
        "a removal etcd did not record is undone"
    );
    rig.assert_agree();
    rig.store.state().unreachable = false;
    assert_eq!(
        rig.core.add(request("bob", "10.0.0.12:22")).unwrap().port,
        30002
    );
    rig.assert_agree();
}

fn stored(name: &str, port: u16, backend: &str) -> StoredRoute {
    crate::testing::stored_route(name, port, backend, None)
}

/// Other gateways' changes reach the table and the maps (and never the store: it holds
/// them already); the last change of a key in one batch wins; a route this gateway's
/// config file clashes with is not taken, and the config route stays.
#[test]
fn changes_from_other_gateways_reach_the_table_and_the_maps() {
    let mut table = RouteTable::new();
    table
        .replace_config(&[route("cfg", 30009, "10.0.0.99:22")], UNIX_EPOCH)
        .unwrap();
    let mut rig = Rig::with(table, FakeDataplane::new());
    rig.core.add(request("alice", "10.0.0.11:22")).unwrap();
    let saves = rig.store.state().saves;
    rig.core.apply_remote(Remote::Routes {
        revision: 7,
        changes: vec![
            RouteChange::Put(stored("bob", 30002, "10.0.0.12:22")),
            RouteChange::Put(stored("carol", 30003, "10.0.0.13:22")),
            RouteChange::Delete(lb_model::RouteKey {
                name: "carol".into(),
                service: "ssh".into(),
                protocol: Protocol::Tcp,
            }),
            // Clashes with the config route's port.
            RouteChange::Put(stored("dave", 30009, "10.0.0.14:22")),
        ],
    });
    assert_eq!(rig.store.state().saves, saves, "nothing written back");
    let bob = rig.entry("bob").unwrap();
    assert_eq!((bob.source, bob.route.port), (Source::Runtime, 30002));
    assert!(rig.entry("carol").is_none());
    assert!(rig.entry("dave").is_none());
    assert_eq!(rig.entry("cfg").unwrap().route.port, 30009);
    let entries: Vec<Entry> = rig.core.routes.table.entries().cloned().collect();
    assert!(rig.maps.maps().holds_exactly(entries.iter()));
    // A port the table now holds through another gateway is not allocated here.
    assert_eq!(
        rig.core.add(request("erin", "10.0.0.15:22")).unwrap().port,
        30003
    );

    // A resynchronisation makes the runtime routes exactly the store's.
    let seen = SystemTime::now() - Duration::from_secs(600);
    rig.core.apply_remote(Remote::Resync {
        down: Vec::new(),
        revision: 20,
        routes: vec![
            StoredRoute {
                last_seen: Some(seen),
                ..stored("bob", 30002, "10.0.0.12:22")
            },
            stored("frank", 30005, "10.0.0.16:22"),
        ],
        accounts: None,
        why: "a test".into(),
    });
    assert_eq!(
        rig.entry("bob").unwrap().last_seen,
        Some(seen),
        "the latest time any gateway published, for a route already held"
    );
    let mut runtime: Vec<String> = rig
        .core
        .routes
        .table
        .entries()
        .filter(|e| e.source == Source::Runtime)
        .map(|e| e.route.name.clone())
        .collect();
    runtime.sort();
    assert_eq!(runtime, ["bob", "frank"]);
    assert!(
        rig.entry("cfg").is_some(),
        "config routes are this gateway's own"
    );
    let entries: Vec<Entry> = rig.core.routes.table.entries().cloned().collect();
    assert!(rig.maps.maps().holds_exactly(entries.iter()));
}

/// [`old_table`] over a shared store (as with `[cluster]`), reclaim switched on after
/// start; `follower`: another gateway leads.
fn old_shared_rig(follower: bool) -> Rig {
    let store = FakeStore::new();
    store.state().shared = true;
    store.state().follower = follower;
    let mut gw = gateway();
    gw.reclaim_after = None;
    let mut rig = Rig::on(old_table(), FakeDataplane::new(), gw, store);
    rig.core.settings.gateway.reclaim_after = Some(DAY);
    rig
}

fn key(name: &str) -> lb_model::RouteKey {
    lb_model::RouteKey {
        name: name.into(),
        service: "ssh".into(),
        protocol: Protocol::Tcp,
    }
}

/// `[cluster]`: a route in use through another gateway (its published last-seen time) is
/// never reclaimed; an idle one is reclaimed only by the elected gateway, through the
/// store, and every gateway's table, maps and store agree afterwards.
#[test]
fn only_the_elected_gateway_reclaims_and_with_every_gateways_last_seen() {
    let mut rig = old_shared_rig(true);
    // alice's traffic goes through gw2 only: an hour ago, as gw2 published.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    rig.core
        .apply_remote(Remote::Seen(vec![(key("alice"), hour_ago)]));
    assert_eq!(rig.entry("alice").unwrap().last_seen, Some(hour_ago));
    // Not the leader: bob, idle for three days, stays.
    rig.core.observe();
    assert!(rig.entry("bob").is_some(), "only the leader reclaims");
    rig.assert_agree();

    // Leading now: bob goes, alice (in use through gw2) stays.
    rig.store.state().follower = false;
    rig.core.observe();
    assert!(rig.entry("bob").is_none());
    assert!(
        rig.entry("alice").is_some(),
        "in use through another gateway"
    );
    assert!(rig.entry("admin").is_some());
    rig.assert_agree();
    // Another gateway applies the reclaim through the watch like any removal.
    let mut other = old_shared_rig(true);
    other
        .core
        .apply_remote(Remote::Seen(vec![(key("alice"), hour_ago)]));
    other.core.apply_remote(Remote::Routes {
        revision: 9,
        changes: vec![RouteChange::Delete(key("bob"))],
    });
    let names = |r: &Rig| -> Vec<String> {
        let mut n: Vec<String> = r
            .core
            .routes
            .table
            .entries()
            .map(|e| e.route.name.clone())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&rig), names(&other));
}

/// `[cluster]`: a reclaim the shared store refuses (the lead moved a moment ago, or etcd
/// is away) is undone: the route is back in the table and the maps, nothing half-done.
#[test]
fn a_reclaim_the_shared_store_refuses_is_undone() {
    let mut rig = old_shared_rig(false);
    rig.store.state().unreachable = true;
    let before: Vec<Entry> = rig.core.routes.table.entries().cloned().collect();
    rig.core.observe();
    assert!(rig.entry("alice").is_some() && rig.entry("bob").is_some());
    let after: Vec<Entry> = rig.core.routes.table.entries().cloned().collect();
    assert_eq!(before, after, "each route back in its own slot");
    assert!(rig.maps.maps().holds_exactly(after.iter()));
    rig.store.state().unreachable = false;
    rig.core.observe();
    assert!(rig.entry("alice").is_none() && rig.entry("bob").is_none());
    rig.assert_agree();
}

/// `[cluster]`: each gateway publishes its own counters' last-seen times, only routes whose
/// time moved by the grain (a hundredth of `reclaim_after`), never another gateway's.
#[test]
fn own_last_seen_times_are_published_coarsely() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "0").unwrap();
    let store = FakeStore::new();
    store.state().shared = true;
    let mut rig = Rig::on(RouteTable::new(), FakeDataplane::new(), gateway(), store);
    rig.core.clock = Clock::new(Some(offset.clone()));
    rig.core.add(request("alice", "10.0.0.11:22")).unwrap();
    rig.core.add(request("bob", "10.0.0.12:22")).unwrap();
    let alice = rig.entry("alice").unwrap().id;
    let active = |rig: &Rig, secs: u64| {
        rig.maps.maps().counters.insert(
            alice,
            Counters {
                idle: Some(Duration::from_secs(secs)),
                ..Counters::default()
            },
        );
    };
    active(&rig, 5);
    // bob is in use through another gateway only: never published from here.
    rig.core
        .apply_remote(Remote::Seen(vec![(key("bob"), SystemTime::now())]));
    let publish = |rig: &mut Rig| {
        rig.core.seen.as_mut().unwrap().publish_now();
        rig.core.observe();
    };
    publish(&mut rig);
    let published = rig.store.state().published.clone();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].len(), 1, "{published:?}");
    assert_eq!(published[0][0].0, key("alice"));
    // Within the publishing interval: nothing more, whatever moved.
    rig.core.observe();
    assert_eq!(rig.store.state().published.len(), 1);
    // Moved by less than the grain (864 s with reclaim_after 1d): not written again.
    active(&rig, 1);
    publish(&mut rig);
    assert_eq!(rig.store.state().published.len(), 1);
    // An hour later, still in use: written again.
    std::fs::write(&offset, "1h").unwrap();
    publish(&mut rig);
    let published = rig.store.state().published.clone();
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(published[1].len(), 1);
    assert_eq!(published[1][0].0, key("alice"));
    assert!(published[1][0].1 >= published[0][0].1 + Duration::from_secs(3590));
    // etcd away: tried again at the next pass, nothing lost.
    std::fs::write(&offset, "2h").unwrap();
    rig.store.state().unreachable = true;
    publish(&mut rig);
    rig.store.state().unreachable = false;
    publish(&mut rig);
    assert_eq!(rig.store.state().published.len(), 3);
}

/// `user rm --with-routes` through the API handle, with a crash right after the accounts
/// file is written: the routes' deletions must be durable by then, or the restarted
/// gateway would load routes of a user it no longer has (and, deleted later, older
/// last-seen times).
#[test]
fn a_crash_after_user_rm_leaves_no_route_without_its_account() {
    let rig = Rig::new();
    let store = rig.store.clone();
    let (tx, _rx) = mpsc::unbounded_channel();
    let handle = Handle {
        core: Arc::new(Mutex::new(rig.core)),
        shutdown: tx,
    };
    handle
        .user_add(user_request("alice", &["10.0.0.0/24"], 4))
        .unwrap();
    handle.claim("alice", claim("ssh", "10.0.0.11:22")).unwrap();
    handle.claim("alice", claim("web", "10.0.0.11:80")).unwrap();
    assert_eq!(
        store.state().durable_routes.len(),
        2,
        "the claims are durable"
    );

    handle.user_remove("alice", true).unwrap();
    let s = store.state();
    let (routes, users) = s.accounts_saves.last().expect("the accounts were saved");
    assert!(users.get("alice").is_none());
    let orphans: Vec<String> = routes
        .iter()
        .filter(|r| users.get(&r.route.name).is_none())
        .map(|r| r.route.key().to_string())
        .collect();
    assert!(
        orphans.is_empty(),
        "a crash after accounts.json leaves routes without an account: {orphans:?}"
    );
    assert!(s.durable_routes.is_empty());
    drop(s);

    // A deletion whose flush fails keeps the account (a route left without it is worse).
    handle
        .user_add(user_request("bob", &["10.0.0.0/24"], 4))
        .unwrap();
    handle.claim("bob", claim("ssh", "10.0.0.12:22")).unwrap();
    store.state().flush_fails = true;
    let e = handle.user_remove("bob", true).unwrap_err();
    assert_eq!(e.status, 500);
    assert!(
        e.reply.error.contains("account is kept"),
        "{}",
        e.reply.error
    );
    assert!(store.state().users.get("bob").is_some());
}

/// The interfaces of the daemon tests' machine: its private leg with 10.0.0.1.
fn fake_interfaces() -> std::io::Result<Vec<crate::machine::Interface>> {
    Ok(vec![crate::machine::Interface {
        name: "priv0".into(),
        loopback: false,
        ipv4: vec!["10.0.0.1".parse().unwrap()],
        ipv4_nets: vec![("10.0.0.1".parse().unwrap(), 24)],
    }])
}

/// The gateway's own addresses in the daemon's tests: its private leg's.
fn own() -> config::OwnAddresses {
    config::OwnAddresses::new(&fake_interfaces().unwrap(), &[])
}

/// Issue 24's scenario: a student whose rule is the private /24 claims the gateway's own
/// private address (its sshd), or link-local; an admin adds the same. All are refused,
/// naming the rule, and nothing reaches the maps or the store.
#[test]
fn a_backend_that_is_the_gateway_itself_is_refused_to_students_and_admins() {
    let mut rig = Rig::new();
    rig.core.settings.own = own();
    rig.core
        .user_add(user_request("eve", &["10.0.0.0/24"], 4))
        .unwrap();
    for backend in ["10.0.0.1:22", "169.254.169.254:80"] {
        let e = rig.core.claim("eve", claim("http", backend)).unwrap_err();
        assert_eq!((e.status, e.reply.field.as_deref()), (403, Some("backend")));
        assert!(
            e.reply.error.contains(backend)
                && (e.reply.error.contains("gateway itself")
                    || e.reply.error.contains("link-local")),
            "{}",
            e.reply.error
        );
        let e = rig.core.add(request("root", backend)).unwrap_err();
        assert_eq!((e.status, e.reply.field.as_deref()), (403, Some("backend")));
    }
    assert!(rig.core.routes.table.entries().next().is_none());
    assert!(rig.maps.maps().frontends.is_empty());
    assert!(rig.store.state().routes.is_empty());
    // A neighbour on the same /24 is still the student's.
    rig.core
        .claim("eve", claim("http", "10.0.0.11:80"))
        .unwrap();
}

/// A loaded table (the state file, or etcd at start) that holds a route to the gateway
/// itself: the daemon starts, the route is left out and named, and the state file is
/// rewritten without it (else its port could later be handed out twice).
#[test]
fn a_stored_route_to_the_gateway_itself_is_left_out_at_start() {
    let store = FakeStore::new();
    let stored_routes = vec![
        stored("alice", 30001, "10.0.0.11:22"),
        stored("eve", 30002, "10.0.0.1:22"),
    ];
    let (table, rewrite) = super::lifecycle::build_table(
        &config(Vec::new()),
        Path::new("srvgate.toml"),
        &store,
        stored_routes,
        &own(),
        UNIX_EPOCH,
    )
    .unwrap();
    assert!(rewrite, "the store must drop it too");
    let names: Vec<String> = table.entries().map(|e| e.route.name.clone()).collect();
    assert_eq!(names, ["alice"]);

    // With the local state files: the start rewrites them without the route.
    let dir = tempfile::tempdir().unwrap();
    let public = gateway().public_ipv4;
    {
        let mut files = crate::table::state::StateStore::open(dir.path()).unwrap();
        // Added just now, so that the start's reclaim pass leaves them alone.
        let fresh = |s: StoredRoute| StoredRoute {
            added: Clock::default().now(),
            ..s
        };
        files
            .save(&[
                fresh(stored("alice", 30001, "10.0.0.11:22")),
                fresh(stored("eve", 30002, "10.0.0.1:22")),
            ])
            .unwrap();
    }
    let files = crate::table::state::StateStore::open(dir.path()).unwrap();
    let loaded = files.load(public).unwrap();
    let (table, rewrite) = super::lifecycle::build_table(
        &config(Vec::new()),
        Path::new("srvgate.toml"),
        &files,
        loaded,
        &own(),
        UNIX_EPOCH,
    )
    .unwrap();
    let cfg = config(Vec::new());
    let mut core = Core::new(
        table,
        FakeDataplane::new().boxed(),
        crate::cluster::Backing::Local(Box::new(files)),
        &cfg,
        Clock::default(),
    );
    core.settings.interfaces = fake_interfaces;
    core.take_over(rewrite).unwrap();
    drop(core);
    let files = crate::table::state::StateStore::open(dir.path()).unwrap();
    let back: Vec<String> = files
        .load(public)
        .unwrap()
        .into_iter()
        .map(|s| s.route.name)
        .collect();
    assert_eq!(back, ["alice"], "eve's route left the state file");
}

/// Another gateway's change (etcd's watch) naming this gateway's own address is not
/// forwarded here.
#[test]
fn a_shared_route_to_the_gateway_itself_is_not_forwarded_here() {
    let mut rig = Rig::new();
    rig.core.settings.own = own();
    rig.core.apply_remote(Remote::Routes {
        revision: 7,
        changes: vec![
            RouteChange::Put(stored("bob", 30002, "10.0.0.12:22")),
            RouteChange::Put(stored("eve", 30003, "10.0.0.1:22")),
        ],
    });
    assert!(rig.entry("bob").is_some());
    assert!(rig.entry("eve").is_none());
    let own_ip: std::net::Ipv4Addr = "10.0.0.1".parse().unwrap();
    assert!(!rig
        .maps
        .maps()
        .frontends
        .values()
        .any(|(backend, _)| *backend.ip() == own_ip));
}

/// The addresses are read again for every add, so one that arrived on an interface since
/// the last periodic refresh is refused at once.
#[test]
fn an_address_added_at_run_time_is_refused_at_once() {
    let mut rig = Rig::new();
    rig.core.add(request("alice", "10.0.0.50:22")).unwrap();
    rig.core.settings.interfaces = || {
        let mut i = fake_interfaces()?;
        i[0].ipv4.push("10.0.0.50".parse().unwrap());
        Ok(i)
    };
    let e = rig.core.add(request("bob", "10.0.0.50:80")).unwrap_err();
    assert_eq!(e.status, 403);
    assert!(e.reply.error.contains("\"priv0\""), "{}", e.reply.error);
    // The periodic refresh takes it in and withdraws the runtime route already there
    // from the table, the maps and the store (a config route is the file's: named only).
    rig.core.refresh_own();
    assert!(rig
        .core
        .settings
        .own
        .holder("10.0.0.50".parse().unwrap())
        .is_some());
    assert!(rig.entry("alice").is_none());
    assert!(rig.maps.maps().frontends.is_empty());
    assert!(rig.store.state().routes.is_empty());
    rig.assert_agree();
}

/// Unable to read the machine's addresses, an add fails closed rather than skipping the
/// gateway's rule.
#[test]
fn an_add_is_refused_when_the_addresses_cannot_be_read() {
    let mut rig = Rig::new();
    rig.core.settings.interfaces = || Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    let e = rig.core.add(request("alice", "10.0.0.11:22")).unwrap_err();
    assert_eq!(e.status, 503, "{}", e.reply.error);
    assert!(e.reply.error.contains("addresses"), "{}", e.reply.error);
    assert!(rig.entry("alice").is_none());
}

/// The periodic refresh reads the machine once and hands what it read on (to the data
/// plane's source guard); when the machine cannot be read it hands nothing, and the last
/// known addresses stay the backend rule's.
#[test]
fn the_refresh_hands_on_what_it_read_once() {
    let mut rig = Rig::new();
    let read = rig
        .core
        .refresh_own()
        .expect("the fake machine is readable");
    assert_eq!(read, fake_interfaces().unwrap());
    let known = rig.core.settings.own.clone();
    assert!(known.holder("10.0.0.1".parse().unwrap()).is_some());
    rig.core.settings.interfaces = || Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    assert!(rig.core.refresh_own().is_none());
    assert_eq!(rig.core.settings.own, known);
}

/// `[http] service` names which routes the HTTP router serves by name: a student's ways in
/// show a URL for those, and for no route when there is no `[http]` (they once assumed the
/// label `http` whatever the config said).
#[test]
fn the_ways_in_follow_the_http_routers_service_label() {
    let dns = crate::config::Dns {
        zone: "lab.example".into(),
        listen: vec!["127.0.0.1:53".parse().unwrap()],
        gateway_name: "gw".into(),
        nameservers: vec![],
        secondaries: None,
        rrl: None,
        ttl: 30,
    };
    let http = |service: &str| crate::config::Http {
        listen: vec!["127.0.0.1:80".parse().unwrap()],
        service: service.into(),
        limits: Default::default(),
        forwarded_for: false,
    };
    let mine = |http: Option<crate::config::Http>| {
        let cfg = Config {
            dns: Some(dns.clone()),
            http,
            ..config(Vec::new())
        };
        let (maps, store) = (FakeDataplane::new(), FakeStore::new());
        let mut core = Core::new(
            RouteTable::new(),
            maps.boxed(),
            store.backing(),
            &cfg,
            Clock::default(),
        );
        core.settings.interfaces = fake_interfaces;
        core.take_over(false).unwrap();
        core.user_add(user_request("alice", &["10.0.0.11"], 4))
            .unwrap();
        for (service, backend) in [("web", "10.0.0.11:80"), ("http", "10.0.0.11:8080")] {
            core.claim("alice", claim(service, backend)).unwrap();
        }
        lb_client::account::render_mine(&core.me("alice").unwrap())
    };

    let out = mine(Some(http("web")));
    assert!(out.contains("http://alice.web.lab.example/"), "{out}");
    assert!(!out.contains("http://alice.http.lab.example/"), "{out}");

    let out = mine(Some(http("http")));
    assert!(out.contains("http://alice.http.lab.example/"), "{out}");
    assert!(!out.contains("http://alice.web.lab.example/"), "{out}");

    let out = mine(None);
    assert!(!out.contains("http://"), "{out}");
    // The name still resolves (SRV), so it is shown without a URL.
    assert!(out.contains("alice.http.lab.example (SRV"), "{out}");
}

#[test]
fn a_new_token_comes_with_where_to_use_it() {
    let mut rig = Rig::new();
    // No portal: nothing to say but the token.
    let reply = rig
        .core
        .user_add(user_request("alice", &["10.0.0.11"], 2))
        .unwrap();
    assert_eq!(reply.onboarding, None);

    rig.core.settings.portal = Some(lb_model::api::PortalInfo {
        listen: vec!["0.0.0.0:8443".into()],
        fingerprint: "AB:CD".into(),
        self_signed: true,
    });
    rig.core.settings.zone = Some("lab.example".into());
    let how = rig.core.user_token("alice").unwrap().onboarding.unwrap();
    // A wildcard listener is reached at the public address.
    let public = rig.core.settings.gateway.public_ipv4;
    assert_eq!(how.portal_url, format!("https://{public}:8443"));
    assert_eq!(how.fingerprint.as_deref(), Some("AB:CD"));
    assert_eq!(how.zone.as_deref(), Some("lab.example"));

    // A CA's certificate needs no pinning; a specific listener is its own address.
    rig.core.settings.portal = Some(lb_model::api::PortalInfo {
        listen: vec!["10.0.0.1:443".into(), "10.0.0.2:443".into()],
        fingerprint: "AB:CD".into(),
        self_signed: false,
    });
    let how = rig
        .core
        .user_add(user_request("bob", &["10.0.0.12"], 2))
        .unwrap()
        .onboarding
        .unwrap();
    assert_eq!(how.portal_url, "https://10.0.0.1:443");
    assert_eq!(how.fingerprint, None);
}

#[test]
fn route_rm_can_name_the_protocol() {
    let mut rig = Rig::new();
    for protocol in ["tcp", "udp"] {
        rig.core
            .add(RouteRequest {
                name: "alice".into(),
                service: "game".into(),
                protocol: Some(protocol.into()),
                backend: "10.0.0.11:25565".into(),
                ..Default::default()
            })
            .unwrap();
    }
    let removed = rig
        .core
        .remove("alice", Some("game"), Some(lb_model::Protocol::Udp))
        .unwrap();
    assert_eq!(removed.removed.len(), 1);
    assert_eq!(removed.removed[0].protocol, "udp");
    let err = rig
        .core
        .remove("alice", Some("game"), Some(lb_model::Protocol::Udp))
        .unwrap_err();
    assert_eq!(err.status, 404);
    assert!(err.reply.error.contains("over udp"), "{}", err.reply.error);
    assert_eq!(
        rig.core.remove("alice", None, None).unwrap().removed.len(),
        1
    );
}
