//! In-memory stand-ins for the kernel side ([`Dataplane`]) and the persistent side
//! ([`Store`]), so the daemon's operations and every rollback path are unit tests without
//! root, namespaces or disks. Each fake is a cheap handle on shared state: the test keeps a
//! clone to inspect it and to tell it to fail while the daemon owns the other.
//!
//! The fake maps carry out the same [`plan`] as the kernel's, so they hold what the real
//! maps would.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{mpsc, Arc, Mutex, MutexGuard},
    time::Duration,
};

use crate::{
    config::Protocol,
    dataplane::{plan, Counters, Dataplane, DataplaneError, Leg, MapOp, PinnedFrontends},
    routes::{Diff, Entry, RouteTable},
    state::{StateError, Store, StoredRoute},
};

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
                    .insert((r.port, r.protocol), (r.backend, e.id));
            }
            MapOp::WriteReverse(e) => {
                let r = &e.route;
                self.reverse.insert((r.backend, r.protocol), (r.port, e.id));
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
            front.insert((r.port, r.protocol), (r.backend, e.id));
            rev.insert((r.backend, r.protocol), (r.port, e.id));
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
        for &id in fresh {
            m.write(&MapOp::ZeroSlot(id))?;
        }
        for e in table.entries() {
            m.write(&MapOp::WriteFrontend(e.clone()))?;
            m.write(&MapOp::WriteReverse(e.clone()))?;
        }
        let stale_front: Vec<_> = m
            .frontends
            .keys()
            .filter(|&&(port, protocol)| !table.port_in_use(port, protocol))
            .copied()
            .collect();
        for (port, protocol) in stale_front {
            m.write(&MapOp::RemoveFrontend(port, protocol))?;
        }
        let stale_rev: Vec<_> = m
            .reverse
            .keys()
            .filter(|&&(backend, protocol)| !table.backend_in_use(backend, protocol))
            .copied()
            .collect();
        for (backend, protocol) in stale_rev {
            m.write(&MapOp::RemoveReverse(backend, protocol))?;
        }
        Ok(())
    }

    fn pinned_frontends(&self) -> &PinnedFrontends {
        &self.pinned
    }

    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        Ok(self.maps().counters.get(&id).copied().unwrap_or_default())
    }

    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        Ok(self.maps().verdicts.clone())
    }

    fn legs(&self) -> &[Leg] {
        &self.legs
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
    /// Saves to let through before one fails (`Some(0)`: the next fails), once.
    pub fail_in: Option<usize>,
    /// Every save fails while set (a full or read-only disk).
    pub broken: bool,
    /// Saves attempted, failed ones included.
    pub saves: usize,
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

    pub fn boxed(&self) -> Box<dyn Store> {
        Box::new(self.clone())
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
        s.saves += 1;
        let fail = match s.fail_in {
            Some(0) => {
                s.fail_in = None;
                true
            }
            Some(n) => {
                s.fail_in = Some(n - 1);
                s.broken
            }
            None => s.broken,
        };
        if fail {
            return Err(StateError::Io {
                path: PathBuf::from("memory"),
                action: "fsync",
                error: io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        s.routes = routes.to_vec();
        Ok(())
    }
}
