//! The route table: which routes exist, where each came from, which public ports are free,
//! how recently each route carried traffic, and which counter slot each route owns. How a
//! route is encoded in the BPF maps is not known here (`kernel::dataplane::encode`).
//!
//! Routes come from two sources: the config file (replaced as a whole on start and SIGHUP,
//! never reclaimed) and the control API (added and removed one at a time, persisted by
//! `state`, released after `reclaim_after` of idleness). Both share one key space, one set of
//! public ports and one set of backends, so the table is the single place that decides
//! whether a route may exist.
//!
//! Each route owns a counter slot (`route_id`) in the per-CPU `ROUTE_COUNTERS` array. A
//! route keeps its slot for as long as it exists, across reloads and, through
//! [`RouteTable::adopt_slots`], across daemon restarts, so its counters and last-seen time
//! survive; freed slots are reused, and the data plane zeroes a slot when it is handed out
//! again.
//!
//! A route's pool (`lb_model::Pool`) says which backends it has and which are drained; whether
//! each answers is runtime state kept here, in [`Entry::down`], never stored. What the data
//! plane and the web routers send new flows to is the pure [`Entry::active`]: members neither
//! drained nor down, or, when every undrained member is down, all of them (fail open: a
//! health check that wrongly fails everything must not take the service away;
//! [`Entry::fail_open`] says so for the logs, metrics and status). A change of health or
//! drain is a [`Changed`] entry with the same key, so everything that mirrors the table
//! follows it as it follows any other change.
//!
//! The one owner of uniqueness (key, public port, backend; a clash names the field): the config
//! file and the state file are checked by inserting them into a scratch table. Also here:
//! `replace_config` (the SIGHUP diff, all or nothing), `restore` (a rolled-back removal puts
//! each route back in its own slot, which the maps still name) and [`idle_routes`], the pure
//! reclaim rule taking `now`. A backend belongs to one route: every member of every pool is
//! indexed, drained or not, so a reply is always found by its source. Indexes by port, by
//! backend, of the free ports and of a name's
//! routes keep every operation independent of the table's size.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddrV4,
    time::{Duration, SystemTime},
};

use lb_common::MAX_ROUTES;

use lb_model::{FieldError, Pool, PortRange, Protocol, Route, RouteKey};

/// Why a route cannot join the table: the field that clashes (`name`, `port` or `backend`)
/// with the reason, and the key of the route that holds it, so a caller that numbers its
/// routes (the config file's `route[N]`) can name the holder its own way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clash {
    pub error: FieldError,
    pub holder: RouteKey,
}

/// Where a route comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A `[[route]]` of the config file: changed only by editing it (and SIGHUP).
    Config,
    /// Added through the control API: persisted in the state file, reclaimable.
    Runtime,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Runtime => "runtime",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    #[error("the route table is full ({MAX_ROUTES} routes)")]
    Full,
    #[error("port: every port of gateway.port_range {range} is taken for {protocol}; remove a route, or widen the range in the config file and send SIGHUP")]
    RangeFull {
        range: PortRange,
        protocol: Protocol,
    },
    /// The route clashes with one that exists; the field says which part.
    #[error("{}", .0.error)]
    Conflict(Clash),
    #[error("counter slot {0} belongs to another route")]
    SlotTaken(u32),
    #[error("{0} does not exist")]
    Missing(RouteKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub route: Route,
    /// Slot in `ROUTE_COUNTERS`.
    pub id: u32,
    pub source: Source,
    /// When the route was added (wall clock): its idleness starts here.
    pub added: SystemTime,
    /// The last packet seen on the route (wall clock), if any was.
    pub last_seen: Option<SystemTime>,
    /// Members the health checks found down (runtime state: never stored, empty at start).
    pub down: BTreeSet<SocketAddrV4>,
}

impl Entry {
    /// The moment the route last did something: its last packet, else its creation.
    pub fn last_activity(&self) -> SystemTime {
        match self.last_seen {
            Some(t) if t > self.added => t,
            _ => self.added,
        }
    }

    /// Where new flows go, with each member's weight, in pool order: the members neither
    /// drained nor down; if that leaves none, every undrained member (fail open). Never
    /// empty, since a pool always has an undrained member.
    pub fn active(&self) -> Vec<(SocketAddrV4, u16)> {
        let members = self.route.backends.members();
        let serving = |m: &&lb_model::Member| !m.drained;
        let up: Vec<_> = members
            .iter()
            .filter(serving)
            .filter(|m| !self.down.contains(&m.addr))
            .map(|m| (m.addr, m.weight))
            .collect();
        if !up.is_empty() {
            return up;
        }
        members
            .iter()
            .filter(serving)
            .map(|m| (m.addr, m.weight))
            .collect()
    }

    /// Whether [`Entry::active`] fell back to members that are down.
    pub fn fail_open(&self) -> bool {
        self.route
            .backends
            .members()
            .iter()
            .filter(|m| !m.drained)
            .all(|m| self.down.contains(&m.addr))
    }

    /// The backend a one-backend view of the route names (the first active member): the
    /// data plane's frontend of a route without a pool slot (one member, or no slot left).
    pub fn primary(&self) -> SocketAddrV4 {
        self.active()
            .first()
            .map_or(self.route.backends.first(), |&(a, _)| a)
    }

    /// The route as the web routers see it: its pool reduced to [`Entry::active`].
    pub fn serving(&self) -> Route {
        let mut route = self.route.clone();
        let members = self
            .active()
            .into_iter()
            .map(|(addr, weight)| lb_model::Member {
                addr,
                weight,
                drained: false,
            })
            .collect();
        if let Ok(pool) = Pool::new(members) {
            route.backends = pool;
        }
        route
    }

    /// Forgets the health of addresses that are no longer members.
    fn prune_down(&mut self) {
        let pool = &self.route.backends;
        self.down.retain(|a| pool.member(*a).is_some());
    }
}

/// A route changed in place (same key): its slot stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    pub old: Entry,
    pub new: Entry,
}

/// What a table operation changed, for the data plane, the logs and zeroing reused slots.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<Entry>,
    pub removed: Vec<Entry>,
    pub changed: Vec<Changed>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct RouteTable {
    entries: BTreeMap<RouteKey, Entry>,
    by_port: HashMap<(u16, Protocol), RouteKey>,
    by_backend: HashMap<(SocketAddrV4, Protocol), RouteKey>,
    /// Every port no route uses in either protocol, so that allocation finds the lowest
    /// free one in a range without walking the ports in use (30 000 at a full gateway).
    free_ports: BTreeSet<u16>,
    free: Vec<u32>,
    next_id: u32,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            entries: BTreeMap::new(),
            by_port: HashMap::new(),
            by_backend: HashMap::new(),
            free_ports: (1..=u16::MAX).collect(),
            free: Vec::new(),
            next_id: 0,
        }
    }
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The routes named `name`, in key order, found without looking at the others.
    pub fn named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Entry> + 'a {
        let start = RouteKey {
            name: name.to_string(),
            service: String::new(),
            protocol: Protocol::Tcp,
        };
        let name = start.name.clone();
        self.entries
            .range(start..)
            .take_while(move |(k, _)| k.name == name)
            .map(|(_, e)| e)
    }

    /// Whether `route` could be added now: its key, public port and backend must all be
    /// unused (by a route other than `replacing`). The error names the field that clashes
    /// and the route holding it.
    pub fn check_conflicts(
        &self,
        route: &Route,
        replacing: Option<&RouteKey>,
    ) -> Result<(), Clash> {
        let key = route.key();
        let other = |k: &RouteKey| Some(k) != replacing;
        let clash = |field: &str, holder: &RouteKey, reason: String| Clash {
            error: FieldError {
                field: field.into(),
                reason,
            },
            holder: holder.clone(),
        };
        if let Some(e) = self.entries.get(&key).filter(|_| other(&key)) {
            return Err(clash(
                "name",
                &key,
                format!(
                    "{key} already exists ({} route on port {}); name, service and protocol together must be unique",
                    e.source.as_str(),
                    e.route.port
                ),
            ));
        }
        if let Some(k) = self
            .by_port
            .get(&(route.port, route.protocol))
            .filter(|k| other(k))
        {
            return Err(clash(
                "port",
                k,
                format!(
                    "{}/{} is already used by {k} ({} route)",
                    route.port,
                    route.protocol,
                    self.entries[k].source.as_str()
                ),
            ));
        }
        for backend in route.backends.addrs() {
            if let Some(k) = self
                .by_backend
                .get(&(backend, route.protocol))
                .filter(|k| other(k))
            {
                let field = if route.backends.is_single() {
                    "backend"
                } else {
                    "backends"
                };
                return Err(clash(
                    field,
                    k,
                    format!(
                        "{backend}/{} is already a backend of {k} ({} route); replies could not be told apart",
                        route.protocol,
                        self.entries[k].source.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adds one route after checking it against every route there is.
    pub fn insert(
        &mut self,
        route: Route,
        source: Source,
        added: SystemTime,
        last_seen: Option<SystemTime>,
    ) -> Result<Entry, RouteError> {
        self.check_conflicts(&route, None)
            .map_err(RouteError::Conflict)?;
        let id = self.allocate_id()?;
        let e = Entry {
            route,
            id,
            source,
            added,
            last_seen,
            down: BTreeSet::new(),
        };
        self.index(&e);
        self.entries.insert(e.route.key(), e.clone());
        Ok(e)
    }

    /// Puts back a route [`RouteTable::remove`] took out, in the slot it had: the maps still
    /// carry that slot as its `route_id`, and its counters and last-seen time are in it.
    /// (Inserting it anew would hand out whichever slot was freed last.)
    pub fn restore(&mut self, e: Entry) -> Result<(), RouteError> {
        self.check_conflicts(&e.route, None)
            .map_err(RouteError::Conflict)?;
        let at = self
            .free
            .iter()
            .position(|&id| id == e.id)
            .ok_or(RouteError::SlotTaken(e.id))?;
        self.free.remove(at);
        self.index(&e);
        self.entries.insert(e.route.key(), e);
        Ok(())
    }

    /// Removes one route, freeing its port, backend and slot.
    pub fn remove(&mut self, key: &RouteKey) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.unindex(&e);
        self.free.push(e.id);
        Some(e)
    }

    pub fn get(&self, key: &RouteKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Gives route `key` the pool `backends` in place (drain, undrain): same port and slot,
    /// health kept for the members that stay. Refused if a new member is another route's.
    pub fn set_backends(&mut self, key: &RouteKey, backends: Pool) -> Result<Changed, RouteError> {
        let old = self
            .entries
            .get(key)
            .cloned()
            .ok_or_else(|| RouteError::Missing(key.clone()))?;
        let mut new = old.clone();
        new.route.backends = backends;
        new.prune_down();
        self.check_conflicts(&new.route, Some(key))
            .map_err(RouteError::Conflict)?;
        self.unindex(&old);
        self.index(&new);
        self.entries.insert(key.clone(), new.clone());
        Ok(Changed { old, new })
    }

    /// Records whether member `backend` of route `key` is down: the change, or `None` if
    /// nothing changed (no such route or member, or the same verdict as before).
    pub fn set_down(
        &mut self,
        key: &RouteKey,
        backend: SocketAddrV4,
        down: bool,
    ) -> Option<Changed> {
        let e = self.entries.get_mut(key)?;
        e.route.backends.member(backend)?;
        if e.down.contains(&backend) == down {
            return None;
        }
        let old = e.clone();
        if down {
            e.down.insert(backend);
        } else {
            e.down.remove(&backend);
        }
        Some(Changed {
            old,
            new: e.clone(),
        })
    }

    /// A free public port for a new route `(name, service, protocol)`: the port its sibling
    /// of the other protocol uses if that is free in this protocol (so an iperf3-style
    /// tcp+udp pair shares one number), else the lowest port of `range` that no route uses
    /// in either protocol, so one number never means two students.
    pub fn allocate_port(
        &self,
        name: &str,
        service: &str,
        protocol: Protocol,
        range: PortRange,
    ) -> Result<u16, RouteError> {
        self.allocate_port_avoiding(name, service, protocol, range, &|_| false)
    }

    /// [`RouteTable::allocate_port`], never returning a port for which `cooling` is true
    /// (released recently: its old owner's clients may still come).
    pub fn allocate_port_avoiding(
        &self,
        name: &str,
        service: &str,
        protocol: Protocol,
        range: PortRange,
        cooling: &dyn Fn(u16) -> bool,
    ) -> Result<u16, RouteError> {
        let other = match protocol {
            Protocol::Tcp => Protocol::Udp,
            Protocol::Udp => Protocol::Tcp,
        };
        let sibling = RouteKey {
            name: name.to_string(),
            service: service.to_string(),
            protocol: other,
        };
        if let Some(e) = self.entries.get(&sibling) {
            let p = e.route.port;
            if range.contains(p) && !self.by_port.contains_key(&(p, protocol)) {
                return Ok(p);
            }
        }
        self.free_ports
            .range(range.first..=range.last)
            .copied()
            .find(|&p| !cooling(p))
            .ok_or(RouteError::RangeFull { range, protocol })
    }

    /// Makes the config routes exactly `routes` (already validated together), keeping the
    /// slot of every route whose key stays and leaving runtime routes alone. A config route
    /// identical to a runtime one takes it over (it becomes a config route: the admin
    /// pinned a student's allocation in the file). Nothing changes unless every route fits:
    /// the errors name the config route (`route[N].field`, counting from 1) and the route it
    /// clashes with.
    pub fn replace_config(
        &mut self,
        routes: &[Route],
        now: SystemTime,
    ) -> Result<Diff, Vec<FieldError>> {
        // A config route's members drained at runtime (`route drain`: kept in the table
        // only, since the file is the admin's) stay drained while the file names them.
        let carried: Vec<Route> = routes
            .iter()
            .map(|r| match self.entries.get(&r.key()) {
                Some(e) if e.source == Source::Config => carry_drain(&e.route, r),
                _ => r.clone(),
            })
            .collect();
        let wanted: BTreeMap<RouteKey, (usize, &Route)> = carried
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key(), (i + 1, r)))
            .collect();
        // Check on a scratch copy first, so a refused reload leaves the table untouched.
        let mut scratch = self.clone();
        let mut diff = Diff::default();
        let mut problems = Vec::new();
        let gone: Vec<RouteKey> = scratch
            .entries
            .iter()
            .filter(|(k, e)| e.source == Source::Config && !wanted.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(e) = scratch.remove(&key) {
                diff.removed.push(e);
            }
        }
        // Every changed route lets go of its port and backend before any is checked, so
        // two routes may swap ports in one reload.
        let mut changing = Vec::new();
        for (key, &(n, route)) in &wanted {
            let Some(e) = scratch.entries.get(key).cloned() else {
                continue;
            };
            if e.route == *route {
                if e.source == Source::Runtime {
                    // Identical: the file takes the runtime route over, port and slot kept.
                    let mut new = e.clone();
                    new.source = Source::Config;
                    scratch.entries.insert(key.clone(), new.clone());
                    diff.changed.push(Changed { old: e, new });
                }
                continue;
            }
            if e.source == Source::Runtime {
                problems.push(FieldError {
                    field: format!("route[{n}].name"),
                    reason: format!(
                        "{key} is a runtime route (port {}, backends {}); remove it with `srvgate route rm {} --service {}` first, or copy it into the file unchanged",
                        e.route.port, e.route.backends, key.name, key.service
                    ),
                });
                continue;
            }
            scratch.unindex(&e);
            changing.push((key.clone(), n, route, e));
        }
        for (key, n, route, old) in changing {
            if let Err(c) = scratch.check_conflicts(route, Some(&key)) {
                problems.push(FieldError {
                    field: format!("route[{n}].{}", c.error.field),
                    reason: c.error.reason,
                });
                continue;
            }
            let mut new = old.clone();
            new.route = route.clone();
            new.prune_down();
            scratch.index(&new);
            scratch.entries.insert(key, new.clone());
            diff.changed.push(Changed { old, new });
        }
        for (key, &(n, route)) in &wanted {
            if scratch.entries.contains_key(key) {
                continue;
            }
            match scratch.insert(route.clone(), Source::Config, now, None) {
                Ok(e) => diff.added.push(e),
                Err(RouteError::Conflict(c)) => problems.push(FieldError {
                    field: format!("route[{n}].{}", c.error.field),
                    reason: c.error.reason,
                }),
                Err(other) => problems.push(FieldError {
                    field: format!("route[{n}].name"),
                    reason: other.to_string(),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        *self = scratch;
        Ok(diff)
    }

    /// Renumbers slots after a restart so that every route whose frontend is still in the
    /// pinned map (same port, protocol and backend) gets back the slot it had, keeping its
    /// counters. `pinned` maps `(port, protocol)` to the pinned backend and slot. Returns
    /// the slots that are new to their route, which the data plane must zero. Call before the
    /// first sync.
    pub fn adopt_slots(
        &mut self,
        pinned: &HashMap<(u16, Protocol), (SocketAddrV4, u32)>,
    ) -> HashSet<u32> {
        let mut used = HashSet::new();
        let mut pending = Vec::new();
        for e in self.entries.values_mut() {
            match pinned.get(&(e.route.port, e.route.protocol)) {
                // The frontend held one member of the pool (whichever was active then).
                Some(&(backend, id))
                    if e.route.backends.member(backend).is_some()
                        && id < MAX_ROUTES
                        && used.insert(id) =>
                {
                    e.id = id;
                }
                _ => pending.push(e.route.key()),
            }
        }
        let mut fresh = HashSet::new();
        let mut next = 0u32;
        for key in pending {
            while used.contains(&next) {
                next += 1;
            }
            if let Some(e) = self.entries.get_mut(&key) {
                e.id = next;
            }
            used.insert(next);
            fresh.insert(next);
        }
        self.next_id = used.iter().max().map_or(0, |m| m + 1);
        self.free = (0..self.next_id).filter(|i| !used.contains(i)).collect();
        // Lowest first out of `pop`, so slots stay dense.
        self.free.reverse();
        fresh
    }

    /// Records that route `key` saw a packet at `at` (wall clock); returns whether its
    /// last-seen time moved forward. Moves under a second are ignored: `at` is derived from
    /// two clocks (wall now minus monotonic idle) whose difference jitters.
    pub fn note_activity(&mut self, key: &RouteKey, at: SystemTime) -> bool {
        match self.entries.get_mut(key) {
            Some(e) if e.last_seen.is_none_or(|t| at > t + Duration::from_secs(1)) => {
                e.last_seen = Some(at);
                true
            }
            _ => false,
        }
    }

    fn index(&mut self, e: &Entry) {
        self.free_ports.remove(&e.route.port);
        let key = e.route.key();
        self.by_port
            .insert((e.route.port, e.route.protocol), key.clone());
        for b in e.route.backends.addrs() {
            self.by_backend.insert((b, e.route.protocol), key.clone());
        }
    }

    fn unindex(&mut self, e: &Entry) {
        let p = e.route.port;
        self.by_port.remove(&(p, e.route.protocol));
        for b in e.route.backends.addrs() {
            self.by_backend.remove(&(b, e.route.protocol));
        }
        if !self.by_port.contains_key(&(p, Protocol::Tcp))
            && !self.by_port.contains_key(&(p, Protocol::Udp))
        {
            self.free_ports.insert(p);
        }
    }

    fn allocate_id(&mut self) -> Result<u32, RouteError> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        if self.next_id >= MAX_ROUTES {
            return Err(RouteError::Full);
        }
        self.next_id += 1;
        Ok(self.next_id - 1)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn routes(&self) -> Vec<Route> {
        self.entries.values().map(|e| e.route.clone()).collect()
    }

    /// Every route as the web routers see it ([`Entry::serving`]).
    pub fn serving_routes(&self) -> Vec<Route> {
        self.entries.values().map(Entry::serving).collect()
    }

    /// Whether some route uses public `port` for `protocol`.
    pub fn port_in_use(&self, port: u16, protocol: Protocol) -> bool {
        self.by_port.contains_key(&(port, protocol))
    }

    /// Whether some route forwards to `backend` over `protocol`.
    pub fn backend_in_use(&self, backend: SocketAddrV4, protocol: Protocol) -> bool {
        self.by_backend.contains_key(&(backend, protocol))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `file`'s route with the members that `held` had drained drained too, when the pool's
/// rules allow it (else the file's as written).
fn carry_drain(held: &Route, file: &Route) -> Route {
    let mut route = file.clone();
    let members = file
        .backends
        .members()
        .iter()
        .map(|m| lb_model::Member {
            drained: m.drained || held.backends.member(m.addr).is_some_and(|h| h.drained),
            ..*m
        })
        .collect();
    if let Ok(pool) = Pool::new(members) {
        route.backends = pool;
    }
    route
}

/// The runtime routes to reclaim at `now`: those whose last activity (last packet, else
/// creation) is at least `after` ago. Config routes are never reclaimed. A last activity in
/// the future (the clock was set back) counts as now.
pub fn idle_routes<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    now: SystemTime,
    after: Duration,
) -> Vec<RouteKey> {
    entries
        .into_iter()
        .filter(|e| e.source == Source::Runtime)
        .filter(|e| {
            now.duration_since(e.last_activity())
                .is_ok_and(|idle| idle >= after)
        })
        .map(|e| e.route.key())
        .collect()
}

#[cfg(test)]
mod tests;
