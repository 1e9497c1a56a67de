//! In-memory stand-ins for the kernel side ([`Dataplane`]) and the persistent side
//! ([`Store`], and [`Cluster`] as a shared store is), so the daemon's operations and every rollback path are unit tests without
//! root, namespaces or disks. Each fake is a cheap handle on shared state: the test keeps a
//! clone to inspect it and to tell it to fail while the daemon owns the other.
//!
//! The fake maps carry out the same [`plan`] as the kernel's, so they hold what the real
//! maps would.
//!
//! Also `FakeMirror`, a stand-in for DNS and the web routers, `FakeControl`, a scripted
//! daemon for the servers' tests (control socket, portal), and `FakeProber`, scripted health
//! checks for the runner and whatever consumes its verdicts.

use crate::kernel::dataplane::CounterReader;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use crate::{
    cluster::{Backing, Claim, Cluster},
    health::{ProbeError, Prober},
    kernel::dataplane::{
        plan, sync_plan, Counters, Dataplane, DataplaneError, Leg, MapOp, PinnedFrontends,
    },
    table::{
        routes::{Diff, Entry, RouteTable},
        state::{Commit, RouteChange, StateError, Store, StoredRoute},
        users::Users,
    },
};
use lb_model::Protocol;

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A failed assertion in one test thread must not hide the state from the report.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the fake data plane's maps hold, and how it is told to misbehave.
#[derive(Debug, Default)]
pub struct FakeMaps {
    /// `FRONTENDS`: `(public port, protocol) -> (backend, slot)`.
    pub frontends: BTreeMap<(u16, Protocol), (SocketAddrV4, u32)>,
    /// `REVERSE`: `(backend, protocol) -> (public port, slot)`.
    pub reverse: BTreeMap<(SocketAddrV4, Protocol), (u16, u32)>,
    /// `ROUTE_COUNTERS` by slot; an absent slot reads as zero.
    pub counters: HashMap<u32, Counters>,
    pub verdicts: Vec<u64>,
    pub legs: Vec<Leg>,
    /// What the pinned maps of an "earlier run" held, for slot adoption at start.
    pub pinned: PinnedFrontends,
    /// Map writes to let through before one fails (`Some(0)`: the next fails), once.
    pub fail_in: Option<usize>,
    /// Every map write fails while set (a map the kernel refuses to change).
    pub broken: bool,
    /// Map writes attempted, failed ones included.
    pub writes: usize,
    pub egress_refreshes: usize,
    /// Source-guard refreshes, each with the interfaces the core read.
    pub guard_refreshes: usize,
    /// The next egress refresh blocks until this receives (as netlink may), at most 3 s.
    pub egress_gate: Option<mpsc::Receiver<()>>,
    /// A gated refresh gave up waiting: whoever should have released it could not run.
    pub stalled: bool,
    pub clock_ticks: usize,
    pub detached: bool,
}

impl FakeMaps {
    fn write(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        self.writes += 1;
        match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                return Err(injected());
            }
            Some(n) => self.fail_in = Some(n - 1),
            None => {}
        }
        if self.broken {
            return Err(injected());
        }
        match op {
            MapOp::ZeroSlot(id) => {
                self.counters.remove(id);
            }
            MapOp::WriteFrontend(e) => {
                let r = &e.route;
                self.frontends
                    .insert((r.port, r.protocol), (e.primary(), e.id));
            }
            MapOp::WriteReverse(e) => {
                let r = &e.route;
                for b in r.backends.addrs() {
                    self.reverse.insert((b, r.protocol), (r.port, e.id));
                }
            }
            MapOp::RemoveFrontend(port, protocol) => {
                self.frontends.remove(&(*port, *protocol));
            }
            MapOp::RemoveReverse(backend, protocol) => {
                self.reverse.remove(&(*backend, *protocol));
            }
        }
        Ok(())
    }

    /// The maps as they hold `entries`, and nothing else: the maps agree with a table.
    pub fn holds_exactly<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) -> bool {
        let (mut front, mut rev) = (BTreeMap::new(), BTreeMap::new());
        for e in entries {
            let r = &e.route;
            front.insert((r.port, r.protocol), (e.primary(), e.id));
            for b in r.backends.addrs() {
                rev.insert((b, r.protocol), (r.port, e.id));
            }
        }
        front == self.frontends && rev == self.reverse
    }
}

/// The error a fake data plane reports: what the kernel says to an update of a full map.
fn injected() -> DataplaneError {
    DataplaneError::Map {
        name: "FAKE",
        error: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(libc::E2BIG),
        })),
    }
}

/// A data plane whose maps are [`FakeMaps`].
#[derive(Clone, Debug, Default)]
pub struct FakeDataplane {
    maps: Arc<Mutex<FakeMaps>>,
    // Owned here so that `pinned_frontends` and `legs` can hand out references; copied
    // from the shared state when the daemon takes the fake.
    pinned: PinnedFrontends,
    legs: Vec<Leg>,
}

impl FakeDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// The maps, to inspect or to arm a failure.
    pub fn maps(&self) -> MutexGuard<'_, FakeMaps> {
        guard(&self.maps)
    }

    /// The boxed handle the daemon owns, sharing this one's maps; `pinned` and `legs` are
    /// those set in the maps so far.
    pub fn boxed(&self) -> Box<dyn Dataplane> {
        let (pinned, legs) = {
            let m = self.maps();
            (m.pinned.clone(), m.legs.clone())
        };
        Box::new(FakeDataplane {
            maps: self.maps.clone(),
            pinned,
            legs,
        })
    }
}

impl Dataplane for FakeDataplane {
    fn apply(&mut self, table: &RouteTable, diff: &Diff) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        plan(table, diff).iter().try_for_each(|op| m.write(op))
    }

    fn sync_all(&mut self, table: &RouteTable, fresh: &HashSet<u32>) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        let held_frontends: Vec<_> = m.frontends.keys().copied().collect();
        let held_reverse: Vec<_> = m.reverse.keys().copied().collect();
        sync_plan(table, fresh, held_frontends, held_reverse)
            .iter()
            .try_for_each(|op| m.write(op))
    }

    fn pinned_frontends(&self) -> &PinnedFrontends {
        &self.pinned
    }

    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        Ok(self.maps().counters.get(&id).copied().unwrap_or_default())
    }

    fn counter_reader(&self) -> Result<Arc<dyn CounterReader>, DataplaneError> {
        Ok(Arc::new(self.clone()))
    }

    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        Ok(self.maps().verdicts.clone())
    }

    fn legs(&self) -> &[Leg] {
        &self.legs
    }

    fn refresh_guard(&mut self, _: &[crate::machine::Interface]) -> Result<(), DataplaneError> {
        self.maps().guard_refreshes += 1;
        Ok(())
    }

    fn refresh_egress(&mut self) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        m.egress_refreshes += 1;
        if let Some(gate) = m.egress_gate.take() {
            m.stalled = gate.recv_timeout(Duration::from_secs(3)).is_err();
        }
        Ok(())
    }

    fn tick_clock(&mut self) -> Result<(), DataplaneError> {
        self.maps().clock_ticks += 1;
        Ok(())
    }

    fn detach(self: Box<Self>) -> Result<(), DataplaneError> {
        self.maps().detached = true;
        Ok(())
    }
}

/// What the fake store holds, and how it is told to misbehave.
#[derive(Debug, Default)]
pub struct FakeState {
    pub routes: Vec<StoredRoute>,
    pub users: Users,
    /// Saves to let through before one fails (`Some(0)`: the next fails), once.
    pub fail_in: Option<usize>,
    /// Every save fails while set (a full or read-only disk).
    pub broken: bool,
    /// Saves attempted, failed ones included.
    pub saves: usize,
    /// Recorded changes are written but their flush fails (an fsync error).
    pub flush_fails: bool,
    /// As a shared store: ports other gateways hold. A recorded route on one of them is
    /// refused (`StateError::Refused`, naming them all), as etcd's transaction is.
    pub others: Vec<(u16, lb_model::Protocol)>,
    /// As a shared store that does not answer: every write is `StateError::Unavailable`.
    pub unreachable: bool,
    /// Acts as a store shared with other gateways, also the core's [`Cluster`] (read when
    /// the core is made, by [`FakeStore::backing`]).
    pub shared: bool,
    /// As a shared store: another gateway leads, so this one may not reclaim, and a
    /// reclaim is refused as the fenced transaction would be.
    pub follower: bool,
    /// Every batch of last-seen times published, in order.
    pub published: Vec<Vec<(lb_model::RouteKey, std::time::SystemTime)>>,
    /// The health verdicts the shared table holds: the members it says are down (what a
    /// leader's `publish_health` wrote, or a test put there).
    pub down: std::collections::BTreeSet<(lb_model::RouteKey, std::net::SocketAddrV4)>,
    /// Every verdict published, in order: route, member, up.
    pub verdicts: Vec<(lb_model::RouteKey, std::net::SocketAddrV4, bool)>,
    /// The routes a crash would leave: recorded changes count only once their commit has
    /// been waited for (their flush), a whole save at once.
    pub durable_routes: Vec<StoredRoute>,
    /// What a crash right after each accounts save would leave on disk: the durable
    /// routes and the accounts just saved, in order.
    pub accounts_saves: Vec<(Vec<StoredRoute>, Users)>,
    /// As a shared store: runtime routes each user holds through other gateways, which
    /// count against their quota in [`Cluster::record_claim`], and which a removal of
    /// the user's account waits for (refused while any is held).
    pub held_elsewhere: std::collections::BTreeMap<String, usize>,
    /// As a shared store: accounts removed through another gateway; a claim of theirs is
    /// refused.
    pub removed_elsewhere: Vec<String>,
    /// Every claim the core asked the store to make, in order.
    pub claims: Vec<Claim>,
}

fn apply_changes(routes: &mut Vec<StoredRoute>, changes: &[RouteChange]) {
    for change in changes {
        match change {
            RouteChange::Put(r) => {
                let key = r.route.key();
                routes.retain(|o| o.route.key() != key);
                routes.push(r.clone());
            }
            RouteChange::Delete(key) => routes.retain(|o| &o.route.key() != key),
        }
    }
}

/// A store that keeps what it is given in memory.
#[derive(Clone, Debug, Default)]
pub struct FakeStore {
    state: Arc<Mutex<FakeState>>,
}

impl FakeStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        guard(&self.state)
    }

    /// The store for a core: its own, or (`shared`) one that is also its cluster.
    pub fn backing(&self) -> Backing {
        if self.state().shared {
            Backing::Shared(Box::new(self.clone()))
        } else {
            Backing::Local(Box::new(self.clone()))
        }
    }
}

impl CounterReader for FakeDataplane {
    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        Ok(self.maps().counters.get(&id).copied().unwrap_or_default())
    }
}

impl Store for FakeStore {
    fn location(&self) -> String {
        "memory".to_string()
    }

    fn load_routes(&self, _public_ipv4: Ipv4Addr) -> Result<Vec<StoredRoute>, StateError> {
        Ok(self.state().routes.clone())
    }

    fn save_routes(&mut self, routes: &[StoredRoute]) -> Result<(), StateError> {
        let mut s = self.state();
        s.save_or_fail()?;
        s.routes = routes.to_vec();
        s.durable_routes = routes.to_vec();
        Ok(())
    }

    fn record(
        &mut self,
        changes: &[RouteChange],
        _all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError> {
        let mut s = self.state();
        s.save_or_fail()?;
        if let Some(taken) = changes.iter().find_map(|c| match c {
            RouteChange::Put(r) if s.others.iter().any(|&(p, _)| p == r.route.port) => Some(r),
            _ => None,
        }) {
            return Err(StateError::Refused {
                reason: format!("port {} was just taken", taken.route.port),
                taken: s.others.clone(),
            });
        }
        apply_changes(&mut s.routes, changes);
        if s.flush_fails {
            return Ok(Commit::failing(StateError::Io {
                path: PathBuf::from("memory"),
                action: "fsync",
                error: io::Error::from_raw_os_error(libc::EIO),
            }));
        }
        let (state, changes) = (Arc::clone(&self.state), changes.to_vec());
        Ok(Commit::new(move || {
            apply_changes(&mut guard(&state).durable_routes, &changes);
            Ok(())
        }))
    }

    fn record_update(
        &mut self,
        route: &StoredRoute,
        all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError> {
        self.record(&[RouteChange::Put(route.clone())], all)
    }

    fn load_accounts(&self) -> Result<Users, StateError> {
        Ok(self.state().users.clone())
    }

    fn save_accounts(&mut self, users: &Users) -> Result<(), StateError> {
        let mut s = self.state();
        s.save_or_fail()?;
        if let Some(name) =
            s.users.all().map(|u| &u.name).find(|n| {
                users.get(n).is_none() && s.held_elsewhere.get(*n).is_some_and(|&c| c > 0)
            })
        {
            return Err(StateError::Refused {
                reason: format!("{name} holds routes claimed through another gateway"),
                taken: Vec::new(),
            });
        }
        s.users = users.clone();
        let image = (s.durable_routes.clone(), users.clone());
        s.accounts_saves.push(image);
        Ok(())
    }
}

impl Cluster for FakeStore {
    fn follow(
        &mut self,
        _public_ipv4: Ipv4Addr,
        _tx: tokio::sync::mpsc::Sender<crate::cluster::Remote>,
    ) {
    }

    fn accounts_seen(&mut self, _revision: i64, _stored: &Users) {}

    fn written_since(&mut self, _revision: i64) -> Vec<lb_model::RouteKey> {
        Vec::new()
    }

    fn record_claim(&mut self, route: &StoredRoute, claim: &Claim) -> Result<Commit, StateError> {
        {
            let mut s = self.state();
            s.claims.push(claim.clone());
            if s.removed_elsewhere.contains(&claim.user) {
                return Err(StateError::Claim(crate::table::users::Denied::NoAccount {
                    user: claim.user.clone(),
                }));
            }
            let here = s
                .routes
                .iter()
                .filter(|r| r.route.name == claim.user)
                .count();
            let held = here + s.held_elsewhere.get(&claim.user).copied().unwrap_or(0);
            claim.check(held)?;
        }
        self.record(&[RouteChange::Put(route.clone())], &Vec::new)
    }

    fn view(&self) -> lb_model::api::ClusterView {
        let s = self.state();
        lb_model::api::ClusterView {
            gateway_id: "gw1".into(),
            members: vec!["gw1".into(), "gw2".into()],
            leader: Some(if s.follower { "gw2" } else { "gw1" }.into()),
            endpoints: vec!["http://192.0.2.1:2379".into()],
            connected: !s.unreachable,
            revision: 1,
            last_sync_unix: None,
            error: None,
        }
    }

    fn reclaim(&mut self, gone: &[lb_model::RouteKey]) -> Result<Commit, StateError> {
        if self.state().follower {
            self.state().saves += 1;
            return Err(StateError::Refused {
                reason: "this gateway no longer leads".into(),
                taken: Vec::new(),
            });
        }
        let changes: Vec<RouteChange> = gone.iter().cloned().map(RouteChange::Delete).collect();
        self.record(&changes, &Vec::new)
    }

    fn leads(&self) -> bool {
        !self.state().follower
    }

    fn publish_seen(
        &mut self,
        seen: &[(lb_model::RouteKey, std::time::SystemTime)],
    ) -> Result<(), StateError> {
        let mut s = self.state();
        s.save_or_fail()?;
        s.published.push(seen.to_vec());
        Ok(())
    }

    /// As etcd's: only while this gateway leads and the route exists.
    fn publish_health(
        &mut self,
        key: &lb_model::RouteKey,
        backend: std::net::SocketAddrV4,
        up: bool,
    ) -> Result<(), StateError> {
        let mut s = self.state();
        s.save_or_fail()?;
        if s.follower || !s.routes.iter().any(|r| r.route.key() == *key) {
            return Err(StateError::Refused {
                reason: "this gateway no longer leads, or the route is gone".into(),
                taken: Vec::new(),
            });
        }
        if up {
            s.down.remove(&(key.clone(), backend));
        } else {
            s.down.insert((key.clone(), backend));
        }
        s.verdicts.push((key.clone(), backend, up));
        Ok(())
    }

    fn loaded_health(&mut self) -> Vec<(lb_model::RouteKey, std::net::SocketAddrV4)> {
        self.state().down.iter().cloned().collect()
    }
}

impl FakeState {
    /// Counts a save and fails it if told to.
    fn save_or_fail(&mut self) -> Result<(), StateError> {
        self.saves += 1;
        if self.unreachable {
            return Err(StateError::Unavailable {
                endpoints: "http://192.0.2.1:2379".into(),
                action: "add the route",
                reason: "connection refused".into(),
            });
        }
        let fail = match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                true
            }
            Some(n) => {
                self.fail_in = Some(n - 1);
                self.broken
            }
            None => self.broken,
        };
        if fail {
            return Err(StateError::Io {
                path: PathBuf::from("memory"),
                action: "fsync",
                error: io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        Ok(())
    }
}

/// A mirror of the table (as DNS and the web routers are) that keeps the names of the
/// routes the changes it was given leave, and every change's added and removed names.
#[derive(Clone, Debug, Default)]
pub struct FakeMirror {
    state: Arc<Mutex<FakeMirrorState>>,
}

#[derive(Debug, Default)]
pub struct FakeMirrorState {
    pub holds: std::collections::BTreeSet<String>,
    /// Per change: the names added, then the names removed.
    pub changes: Vec<(Vec<String>, Vec<String>)>,
}

impl FakeMirror {
    pub fn state(&self) -> MutexGuard<'_, FakeMirrorState> {
        guard(&self.state)
    }
}

impl crate::serve::mirror::Mirror for FakeMirror {
    fn publish(&self, _table: &RouteTable, diff: &Diff) {
        let names = |entries: &mut dyn Iterator<Item = &Entry>| -> Vec<String> {
            entries.map(|e| e.route.name.clone()).collect()
        };
        let removed = names(
            &mut diff
                .removed
                .iter()
                .chain(diff.changed.iter().map(|c| &c.old)),
        );
        let added = names(&mut diff.added.iter().chain(diff.changed.iter().map(|c| &c.new)));
        let mut s = self.state();
        for n in &removed {
            s.holds.remove(n);
        }
        s.holds.extend(added.iter().cloned());
        s.changes.push((added, removed));
    }
}

// ---------------------------------------------------------------- the daemon, for its servers

use crate::api::Control;
use lb_model::api::{
    ApiError, Caller, ClaimRequest, DrainRequest, GatewayView, LegView, MeReply, Removed,
    RouteRequest, RouteView, RoutesReply, Shutdown, TokenReply, TrafficMinute, UserRequest,
    UserView, UsersReply,
};

/// A control that records calls and answers from a fixed script.
#[derive(Default)]
pub struct FakeControl {
    pub added: std::sync::Mutex<Vec<RouteRequest>>,
    pub shutdowns: std::sync::Mutex<Vec<Shutdown>>,
    pub drains: std::sync::Mutex<Vec<(String, DrainRequest)>>,
    pub users: std::sync::Mutex<crate::table::users::Users>,
}

pub fn view(name: &str, port: u16) -> RouteView {
    RouteView {
        check: None,
        proxy_protocol: None,
        name: name.into(),
        service: "ssh".into(),
        protocol: "tcp".into(),
        port,
        backend: "10.0.0.11:22".into(),
        backends: vec![lb_model::api::BackendView {
            last_check: None,
            since_unix: None,
            addr: "10.0.0.11:22".into(),
            weight: 1,
            drained: false,
            up: true,
        }],
        fail_open: false,
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

impl Control for FakeControl {
    fn list(&self) -> RoutesReply {
        RoutesReply {
            public_ipv4: "203.0.113.10".into(),
            port_range: "30000-30009".into(),
            free_ports: 9,
            reclaim_after: Some("14d".into()),
            portal: None,
            cluster: None,
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
    fn remove(
        &self,
        name: &str,
        service: Option<&str>,
        protocol: Option<lb_model::Protocol>,
    ) -> Result<Removed, ApiError> {
        match (name, service, protocol) {
            ("alice", None | Some("ssh"), None | Some(lb_model::Protocol::Tcp)) => Ok(Removed {
                removed: vec![view("alice", 30000)],
            }),
            _ => Err(ApiError::new(404, format!("no runtime route named {name}"))),
        }
    }
    fn drain(&self, name: &str, request: DrainRequest) -> Result<RouteView, ApiError> {
        if request.backend != "10.0.0.11:22" {
            return Err(ApiError::field(
                404,
                "backend",
                format!("no route of {name} has the backend {}", request.backend),
            ));
        }
        let mut v = view(name, 30000);
        v.backends[0].drained = request.drained;
        self.drains.lock().unwrap().push((name.into(), request));
        Ok(v)
    }
    fn shutdown(&self, request: Shutdown) {
        self.shutdowns.lock().unwrap().push(request);
    }
    fn users(&self) -> UsersReply {
        let users = self.users.lock().unwrap();
        UsersReply {
            users: users
                .all()
                .map(|u| crate::table::users::user_view(u, 0))
                .collect(),
        }
    }
    fn user_add(&self, r: UserRequest) -> Result<TokenReply, ApiError> {
        let rules =
            lb_model::parse_rules(&r.backends).map_err(|e| ApiError::field(400, "backends", e))?;
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
        let user = crate::table::users::user_view(users.get(&r.name).unwrap(), 0);
        Ok(TokenReply {
            user,
            token,
            onboarding: None,
        })
    }
    fn user_remove(&self, name: &str, _with_routes: bool) -> Result<UserView, ApiError> {
        let mut users = self.users.lock().unwrap();
        let u = users
            .remove(name)
            .map_err(|e| ApiError::field(e.status(), "name", e.to_string()))?;
        Ok(crate::table::users::user_view(&u, 0))
    }
    fn user_token(&self, name: &str) -> Result<TokenReply, ApiError> {
        let mut users = self.users.lock().unwrap();
        let token = users
            .rotate(name)
            .map_err(|e| ApiError::field(e.status(), "name", e.to_string()))?;
        let user = crate::table::users::user_view(users.get(name).unwrap(), 0);
        Ok(TokenReply {
            user,
            token,
            onboarding: None,
        })
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
        let routes: Vec<RouteView> = self
            .added
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name == caller)
            .enumerate()
            .map(|(i, r)| RouteView {
                service: r.service.clone(),
                backend: r.backend.clone(),
                ..view(caller, 30000 + i as u16)
            })
            .collect();
        Ok(MeReply {
            user: crate::table::users::user_view(u, routes.len()),
            public_ipv4: "203.0.113.10".into(),
            zone: Some("lab.example".into()),
            http_service: Some("http".into()),
            routes,
        })
    }
    fn claim(&self, caller: &str, r: ClaimRequest) -> Result<RouteView, ApiError> {
        self.add(RouteRequest {
            check: None,
            name: caller.into(),
            service: r.service,
            protocol: r.protocol,
            backend: r.backend,
            backends: r.backends,
            port: None,
            proxy_protocol: r.proxy_protocol,
        })
    }
    fn release(
        &self,
        caller: &str,
        service: &str,
        _protocol: Option<&str>,
    ) -> Result<Removed, ApiError> {
        self.remove(caller, Some(service), None)
    }
    fn authenticate_digest(&self, name: &str, token_sha256: &[u8; 32]) -> Option<Caller> {
        let users = self.users.lock().unwrap();
        let u = users.authenticate_digest(name, token_sha256).ok()?;
        Some(Caller {
            name: u.name.clone(),
            admin: u.admin,
        })
    }
    fn gateway(&self) -> GatewayView {
        GatewayView {
            legs: vec![LegView {
                name: "eth0".into(),
                role: "public".into(),
                egress: "redirect".into(),
            }],
            verdicts: vec![("rewritten".into(), 7)],
        }
    }
    fn traffic(&self, routes: &[lb_model::RouteKey]) -> Vec<Vec<TrafficMinute>> {
        routes
            .iter()
            .map(|_| {
                vec![TrafficMinute {
                    minute_unix: 60,
                    inbound_bytes: 1000,
                    outbound_bytes: 4000,
                }]
            })
            .collect()
    }
    fn recent_audit(&self) -> Vec<String> {
        vec!["2026-12-01T00:00:00Z INFO portal user=\"<alice>\"".into()]
    }
    fn backup(&self) -> crate::table::state::backup::Backup {
        crate::table::state::backup::Backup {
            created: std::time::UNIX_EPOCH,
            host: String::new(),
            routes: Vec::new(),
            users: crate::table::users::Users::default(),
            files: Vec::new(),
        }
    }
}

/// A scripted [`Prober`]: each backend passes unless the test says otherwise; counts the
/// probes in flight, the most at once, and the probes of each backend. Probes of a backend
/// in `hang` never end (the runner's timeout or abort must end them).
#[derive(Default)]
pub struct FakeProber {
    pub pass: Mutex<HashMap<SocketAddrV4, bool>>,
    pub hang: Mutex<Vec<SocketAddrV4>>,
    /// How long each probe takes.
    pub delay: Duration,
    pub in_flight: AtomicUsize,
    pub most: AtomicUsize,
    pub probed: Mutex<HashMap<SocketAddrV4, usize>>,
}

/// Counts a probe out of `in_flight` however it ends (done, timed out, aborted).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Prober for FakeProber {
    async fn probe(
        &self,
        backend: SocketAddrV4,
        _: &lb_model::check::CheckSpec,
    ) -> Result<String, ProbeError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _counted = InFlight(&self.in_flight);
        self.most.fetch_max(now, Ordering::SeqCst);
        *guard(&self.probed).entry(backend).or_default() += 1;
        if guard(&self.hang).contains(&backend) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        if *guard(&self.pass).get(&backend).unwrap_or(&true) {
            Ok("fake pass".into())
        } else {
            Err(ProbeError::Connect("fake refusal".into()))
        }
    }
}

/// The route NAME/ssh/tcp on `port` to `backend`: the tests' usual one.
pub fn ssh_route(name: &str, port: u16, backend: &str) -> lb_model::Route {
    lb_model::Route {
        name: name.into(),
        service: "ssh".into(),
        protocol: Protocol::Tcp,
        backends: lb_model::Pool::one(backend.parse().unwrap()),
        port,
        proxy_protocol: None,
    }
}

/// [`ssh_route`] with a pool of `backends`, each `ADDR:PORT[ weight=N][ drained]`.
pub fn pool_route(name: &str, port: u16, backends: &[&str]) -> lb_model::Route {
    lb_model::Route {
        backends: lb_model::Pool::parse(backends).unwrap(),
        ..ssh_route(name, port, backends[0].split(' ').next().unwrap())
    }
}

/// [`ssh_route`] as stored: added at 1 700 000 000 s after the epoch and last seen at
/// `last_seen` seconds, if given.
pub fn stored_route(name: &str, port: u16, backend: &str, last_seen: Option<u64>) -> StoredRoute {
    let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
    StoredRoute {
        route: ssh_route(name, port, backend),
        added: at(1_700_000_000),
        last_seen: last_seen.map(at),
    }
}
