//! The XDP program and its maps: loading, attaching to the gateway's legs, keeping the maps
//! equal to the route table, and reading the counters back.
//!
//! Everything the kernel runs is pinned in bpffs under the pin directory (default
//! `/sys/fs/bpf/srvgate`): every map by its name, and one BPF link per leg (`link_<ifname>`),
//! so forwarding outlives the daemon. A daemon that starts and finds pins of an earlier run
//! reuses the maps (entries, counters and all) and swaps its freshly loaded program into the
//! existing links atomically (`bpf_link_update`): there is no moment without XDP on a leg.
//! [`remove_pins`] (`srvgate down`, `--detach-on-exit`) is what detaches.
//!
//! The daemon drives it through the [`Dataplane`] trait: [`XdpDataplane`] is the kernel's,
//! and the daemon's unit tests use an in-memory one. What a table change writes to the maps
//! is decided once, by [`plan`], for both.
//!
//! Invariant: an `XdpDataplane` either has the program attached to *every* configured leg or
//! does not exist. Dropping it leaves the pinned program attached and the maps in place.

mod encode;
mod netdev;
#[cfg(test)]
mod xdp_tests;

use std::sync::Arc;
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fmt, io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{DevMapHash, HashMap, MapData, MapInfo, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use lb_common::{
    counter, map_names, Backend, FrontendKey, Interface, ReverseKey, ReverseValue, RouteCounters,
    Settings, CSUM_FULL, CSUM_MAY_BE_PARTIAL, EGRESS_PASS, EGRESS_REDIRECT, PROGRAM_NAME,
    ROLE_PRIVATE, ROLE_PUBLIC,
};
use tracing::{info, warn};

use encode::{addr_be, decode_frontend, frontend_entry, frontend_key, reverse_entry, reverse_key};

use crate::{
    config::{Gateway, Protocol},
    kernel::sys,
    table::routes::{Diff, Entry, RouteTable},
};

/// Where maps and links are pinned unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/srvgate";
/// Prefix of the per-leg link pins; the rest of the name is the interface's.
const LINK_PREFIX: &str = "link_";

/// What a route's frontend pointed to in the pinned maps: `(port, protocol) -> (backend,
/// slot)`, for [`RouteTable::adopt_slots`].
pub type PinnedFrontends = StdHashMap<(u16, Protocol), (std::net::SocketAddrV4, u32)>;

/// The XDP object built from lb-ebpf by build.rs.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// `bytemuck::Pod` is what lb-common promises; aya wants its own marker. This wrapper is
/// the one place the two meet, so lb-common stays free of aya.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Plain<T>(T);
// SAFETY: bytemuck::Pod guarantees plain data without padding or invalid bit patterns,
// which is all aya::Pod requires.
unsafe impl<T: bytemuck::Pod> aya::Pod for Plain<T> {}

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// In the driver (XDP native mode): the fast path; refused by drivers without XDP.
    Native,
    /// Generic XDP in the kernel stack: works everywhere, much slower.
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    #[error("loading the XDP program into the kernel failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("the XDP object has no {0}; the build of lb-ebpf is out of date")]
    Missing(&'static str),
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error("attaching XDP in {mode} mode to {iface} failed: {error}{hint}")]
    Attach {
        iface: String,
        mode: AttachMode,
        error: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
    #[error("BPF map {name}: {error}")]
    Map {
        name: &'static str,
        error: Box<aya::maps::MapError>,
    },
    #[error("BPF map TX_PORTS: {0}")]
    TxPorts(Box<aya::maps::xdp::XdpMapError>),
    #[error("setting sysctl {path}: {error}")]
    Sysctl { path: String, error: std::io::Error },
    #[error("--pin-dir {}: {reason}", path.display())]
    PinDir { path: PathBuf, reason: String },
    #[error("{}: pinned by an incompatible srvgate build ({what}); `srvgate down --pin-dir {}` removes the old pins (forwarding stops until this one starts)", path.display(), dir.display())]
    IncompatiblePin {
        path: PathBuf,
        dir: PathBuf,
        what: String,
    },
    #[error("srvgate is shutting down: the data plane is no longer changed")]
    Stopped,
    #[error("pinning the XDP link of {iface} at {}: {error}", path.display())]
    PinLink {
        iface: String,
        path: PathBuf,
        error: String,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        error: Box::new(e),
    }
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    pub name: String,
    pub ifindex: u32,
    pub role: u8,
    pub egress: u8,
    /// `CSUM_FULL` or `CSUM_MAY_BE_PARTIAL`, from its driver ([`checksum_kind`]).
    pub checksum: u8,
}

impl Leg {
    /// `public` or `private`, for logs and metrics.
    pub fn role_name(&self) -> &'static str {
        role_name(self.role)
    }

    /// `redirect` or `pass`: how rewritten frames leave through this leg.
    pub fn egress_name(&self) -> &'static str {
        if self.egress == EGRESS_REDIRECT {
            "redirect"
        } else {
            "pass"
        }
    }
}

/// Summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub inbound_packets: u64,
    pub inbound_bytes: u64,
    pub outbound_packets: u64,
    pub outbound_bytes: u64,
    /// Time since the last packet, if any was ever seen.
    pub idle: Option<Duration>,
}

/// What the daemon's operations need from the data plane: keep the maps equal to the route
/// table, read the counters back, keep the program's view of the legs and the clock fresh,
/// and detach. Calls may block (map syscalls, netlink): the daemon makes them off the async
/// threads.
pub trait Dataplane: Send {
    /// Applies one table operation's `diff` (the table already changed); see [`plan`].
    fn apply(&mut self, table: &RouteTable, diff: &Diff) -> Result<(), DataplaneError>;
    /// Makes the maps hold exactly `table`'s routes, whatever they held; `fresh` are the
    /// counter slots that belong to no route yet and are zeroed.
    fn sync_all(&mut self, table: &RouteTable, fresh: &HashSet<u32>) -> Result<(), DataplaneError>;
    /// The frontends the maps held before this run touched them (empty on a first start).
    fn pinned_frontends(&self) -> &PinnedFrontends;
    /// A route's counters, summed over CPUs.
    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError>;
    /// A reader of the same counters that needs nothing else of the data plane, so that
    /// the periodic pass over every route (30 000 map reads at a full gateway: tens of
    /// milliseconds) runs without the daemon's lock and never delays a route change.
    fn counter_reader(&self) -> Result<Arc<dyn CounterReader>, DataplaneError>;
    /// The program's verdict counters, indexed like `lb_common::counter`.
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError>;
    fn legs(&self) -> &[Leg];
    /// Re-reads which legs take redirects.
    fn refresh_egress(&mut self) -> Result<(), DataplaneError>;
    /// Gives the program the time it stamps last-seen with.
    fn tick_clock(&mut self) -> Result<(), DataplaneError>;
    /// Detaches from every leg and removes every pin: forwarding stops.
    fn detach(self: Box<Self>) -> Result<(), DataplaneError>;
}

/// The largest TCP segment a link of `mtu` bytes carries: the MTU less the IPv4 and TCP
/// headers without options (what a SYN's MSS option counts). Never below IPv4's minimum
/// reassembly size's 536.
pub fn tcp_mss_for(mtu: u32) -> u16 {
    u16::try_from(mtu.saturating_sub(40))
        .unwrap_or(u16::MAX)
        .max(536)
}

/// Whether frames arriving through a device driven by `driver` may carry partial
/// checksums (only the pseudo-header's sum, CHECKSUM_PARTIAL): a veth, tap or virtio
/// device hands on what a local stack or a GRO bridge left for offload to finish; a
/// physical NIC receives from a wire, which always carries complete ones. An unknown
/// driver is taken to be the former: looking costs a few additions per frame, missing one
/// costs every such frame.
pub fn checksum_kind(driver: Option<&str>) -> u8 {
    match driver {
        Some(d) if !matches!(d, "veth" | "tun" | "virtio_net") => CSUM_FULL,
        _ => CSUM_MAY_BE_PARTIAL,
    }
}

/// Reads per-route counters by slot; see [`Dataplane::counter_reader`].
pub trait CounterReader: Send + Sync {
    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError>;
}

/// `ROUTE_COUNTERS` through a descriptor of its own (opened from the pin), summed over
/// CPUs: the one place that turns the per-CPU slots into a route's [`Counters`].
pub struct RouteCounterMap(PerCpuArray<MapData, Plain<RouteCounters>>);

impl RouteCounterMap {
    fn open(pin_dir: &Path) -> Result<RouteCounterMap, DataplaneError> {
        let name = map_names::ROUTE_COUNTERS;
        let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
        let map = aya::maps::Map::PerCpuArray(data)
            .try_into()
            .map_err(map_err(name))?;
        Ok(RouteCounterMap(map))
    }
}

impl CounterReader for RouteCounterMap {
    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        let per_cpu = self
            .0
            .get(&id, 0)
            .map_err(map_err(map_names::ROUTE_COUNTERS))?;
        let mut c = Counters::default();
        let mut last = 0u64;
        for Plain(v) in per_cpu.iter() {
            c.inbound_packets += v.inbound_packets;
            c.inbound_bytes += v.inbound_bytes;
            c.outbound_packets += v.outbound_packets;
            c.outbound_bytes += v.outbound_bytes;
            last = last.max(v.last_seen_ns);
        }
        if last != 0 {
            c.idle = Some(sys::monotonic_now().saturating_sub(Duration::from_nanos(last)));
        }
        Ok(c)
    }
}

/// One write to the frontend, reverse or counter maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Zero a counter slot handed to a new route (it may hold its previous route's counts).
    ZeroSlot(u32),
    /// Insert or overwrite the route's `FRONTENDS` entry.
    WriteFrontend(Entry),
    /// Insert or overwrite the route's `REVERSE` entry.
    WriteReverse(Entry),
    /// Delete a `FRONTENDS` key (absent is fine).
    RemoveFrontend(u16, Protocol),
    /// Delete a `REVERSE` key (absent is fine).
    RemoveReverse(std::net::SocketAddrV4, Protocol),
}

/// The map writes that carry `diff` (already applied to `table`) into the maps, in order:
/// O(size of the diff), so adding a route costs a few writes whatever the table's size. New
/// and changed entries are written before old keys go, and an old key is removed only if no
/// route of `table` still uses it (a reload may hand a port from one route to another).
pub fn plan(table: &RouteTable, diff: &Diff) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for e in &diff.added {
        ops.push(MapOp::ZeroSlot(e.id));
        ops.push(MapOp::WriteFrontend(e.clone()));
        ops.push(MapOp::WriteReverse(e.clone()));
    }
    for c in &diff.changed {
        ops.push(MapOp::WriteFrontend(c.new.clone()));
        ops.push(MapOp::WriteReverse(c.new.clone()));
    }
    let old = diff
        .removed
        .iter()
        .chain(diff.changed.iter().map(|c| &c.old));
    for e in old {
        let r = &e.route;
        if !table.port_in_use(r.port, r.protocol) {
            ops.push(MapOp::RemoveFrontend(r.port, r.protocol));
        }
        if !table.backend_in_use(r.backend, r.protocol) {
            ops.push(MapOp::RemoveReverse(r.backend, r.protocol));
        }
    }
    ops
}

/// The data plane in the kernel: the loaded program, its pinned maps and links.
pub struct XdpDataplane {
    frontends: HashMap<MapData, Plain<FrontendKey>, Plain<Backend>>,
    reverse: HashMap<MapData, Plain<ReverseKey>, Plain<ReverseValue>>,
    interfaces: HashMap<MapData, u32, Plain<Interface>>,
    route_counters: PerCpuArray<MapData, Plain<RouteCounters>>,
    /// Reads the same map for [`Dataplane::counter_reader`] and [`Dataplane::route_counters`].
    counter_reader: Arc<RouteCounterMap>,
    global_counters: PerCpuArray<MapData, u64>,
    settings: aya::maps::Array<MapData, Plain<Settings>>,
    /// The legs that take redirects, and only those: the program's egress check.
    tx_ports: DevMapHash<MapData>,
    /// Network byte order, as the program compares it.
    public_addr: u32,
    /// What SYN and SYN-ACK segments are clamped to ([`Settings::mss`]).
    mss: u16,
    legs: Vec<Leg>,
    /// Legs whose egress mode has been logged once.
    logged_egress: HashSet<u32>,
    features: Option<netdev::XdpFeatures>,
    pin_dir: PathBuf,
    /// The frontends found in pinned maps at start, before this run touched them.
    pinned_frontends: PinnedFrontends,
    /// Links this run created and pinned; reused links live inside the program. Dropping
    /// either only closes a descriptor: the pin keeps the link attached.
    _links: Vec<PinnedLink>,
    _ebpf: Ebpf,
}

impl XdpDataplane {
    /// Loads the program, fills the gateway-wide maps and attaches to every leg of `gw`,
    /// pinning maps and links under `pin_dir`. Pins of an earlier run are reused: the maps
    /// keep their entries and counters and the new program replaces the old one in place.
    pub fn start(
        gw: &Gateway,
        mode: AttachMode,
        pin_dir: &Path,
    ) -> Result<XdpDataplane, DataplaneError> {
        let mut legs = Vec::new();
        let names = std::iter::once((&gw.public_interface, ROLE_PUBLIC))
            .chain(gw.private_interfaces.iter().map(|n| (n, ROLE_PRIVATE)));
        for (name, role) in names {
            let ifindex =
                sys::ifindex(name).ok_or_else(|| DataplaneError::NoInterface(name.clone()))?;
            let driver = sys::driver(name);
            let checksum = checksum_kind(driver.as_deref().ok());
            let driver = driver.unwrap_or_else(|e| format!("unknown ({e})"));
            if checksum == CSUM_MAY_BE_PARTIAL {
                info!(iface = %name, %driver, "partial checksums possible on this leg (a local sender or a GRO bridge may leave them to offload): such frames are rewritten and passed to the kernel, which keeps their checksum state; the rest by the leg's egress");
            } else {
                info!(iface = %name, %driver, "full checksums only on this leg (a wire delivers them): every frame by the leg's egress");
            }
            legs.push(Leg {
                name: name.clone(),
                ifindex,
                role,
                egress: EGRESS_PASS,
                checksum,
            });
        }
        prepare_kernel(gw)?;
        prepare_pin_dir(pin_dir)?;
        let reused = check_pinned_maps(pin_dir)?;
        Self::load_and_attach(gw, mode, pin_dir, legs, reused).inspect_err(|_| {
            // A first start that fails leaves nothing behind, as before pinning: without
            // pins of an earlier run there is no forwarding to keep.
            if reused == 0 {
                if let Err(e) = remove_pins(pin_dir) {
                    warn!(
                        "removing the pins of the failed start in {}: {e}",
                        pin_dir.display()
                    );
                }
            }
        })
    }

    fn load_and_attach(
        gw: &Gateway,
        mode: AttachMode,
        pin_dir: &Path,
        legs: Vec<Leg>,
        reused: usize,
    ) -> Result<XdpDataplane, DataplaneError> {
        let mut loader = EbpfLoader::new();
        let map_names: Vec<String> = object_maps()?.into_iter().map(|m| m.0).collect();
        for name in &map_names {
            loader.map_pin_path(name.as_str(), pin_dir.join(name));
        }
        let mut ebpf = loader
            .load(PROGRAM)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        if reused > 0 {
            info!(dir = %pin_dir.display(), maps = reused, "reusing the maps pinned by an earlier run");
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DataplaneError::Missing(name))
        };
        let settings: aya::maps::Array<MapData, Plain<Settings>> =
            take(&mut ebpf, map_names::SETTINGS)?
                .try_into()
                .map_err(map_err(map_names::SETTINGS))?;
        let mut tx_ports: DevMapHash<MapData> = take(&mut ebpf, map_names::TX_PORTS)?
            .try_into()
            .map_err(map_err(map_names::TX_PORTS))?;
        let current: HashSet<u32> = legs.iter().map(|l| l.ifindex).collect();
        // Legs an earlier run had that this config dropped; refresh_egress() below puts in
        // the legs of this one that take redirects.
        let stale: Vec<u32> = tx_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !current.contains(k))
            .collect();
        for k in stale {
            tx_ports.remove(k).map_err(map_err(map_names::TX_PORTS))?;
        }
        let mut dp = XdpDataplane {
            frontends: take(&mut ebpf, map_names::FRONTENDS)?
                .try_into()
                .map_err(map_err(map_names::FRONTENDS))?,
            reverse: take(&mut ebpf, map_names::REVERSE)?
                .try_into()
                .map_err(map_err(map_names::REVERSE))?,
            interfaces: take(&mut ebpf, map_names::INTERFACES)?
                .try_into()
                .map_err(map_err(map_names::INTERFACES))?,
            route_counters: take(&mut ebpf, map_names::ROUTE_COUNTERS)?
                .try_into()
                .map_err(map_err(map_names::ROUTE_COUNTERS))?,
            counter_reader: Arc::new(RouteCounterMap::open(pin_dir)?),
            global_counters: take(&mut ebpf, map_names::GLOBAL_COUNTERS)?
                .try_into()
                .map_err(map_err(map_names::GLOBAL_COUNTERS))?,
            legs,
            logged_egress: HashSet::new(),
            features: match netdev::XdpFeatures::open() {
                Ok(f) => Some(f),
                Err(e) => {
                    warn!("cannot read xdp-features ({e}); forwarding through the kernel (XDP_PASS) on every leg");
                    None
                }
            },
            settings,
            tx_ports,
            public_addr: addr_be(gw.public_ipv4),
            mss: 0,
            pin_dir: pin_dir.to_path_buf(),
            pinned_frontends: PinnedFrontends::new(),
            _links: Vec::new(),
            _ebpf: ebpf,
        };
        dp.pinned_frontends = dp
            .frontends
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| decode_frontend(&k.0, &v.0))
            .collect();
        let stale: Vec<u32> = dp
            .interfaces
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !current.contains(k))
            .collect();
        for k in stale {
            dp.interfaces
                .remove(&k)
                .map_err(map_err(map_names::INTERFACES))?;
        }
        // Egress first: it reads the legs' MTUs, which the clock tick writes with the time.
        dp.refresh_egress()?;
        dp.tick_clock()?;

        let program: &mut Xdp = dp
            ._ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DataplaneError::Missing("XDP program"))?
            .try_into()
            .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ProgramError(e))))?;
        program
            .load()
            .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ProgramError(e))))?;
        let mut links: Vec<PinnedLink> = Vec::new();
        for leg in &dp.legs {
            match attach_leg(program, leg, mode, pin_dir) {
                Ok(Some(link)) => links.push(link),
                Ok(None) => {}
                Err(e) => {
                    // Not every leg: the legs this run attached go again (unpinned, then
                    // detached as their last descriptor closes); reused links keep forwarding.
                    for l in links {
                        let _ = l.unpin();
                    }
                    return Err(e);
                }
            }
        }
        dp._links = links;
        detach_dropped_legs(pin_dir, &dp.legs);
        Ok(dp)
    }

    /// Zeroes counter slot `id`: a reused slot still holds its previous route's counts.
    fn zero_slot(&mut self, id: u32) -> Result<(), DataplaneError> {
        let zero = PerCpuValues::try_from(vec![
            Plain(RouteCounters::default());
            nr_cpus().unwrap_or(1)
        ])
        .map_err(|e| map_err(map_names::ROUTE_COUNTERS)(e.into()))?;
        self.route_counters
            .set(id, zero, 0)
            .map_err(map_err(map_names::ROUTE_COUNTERS))
    }

    fn write_entry(&mut self, e: &Entry) -> Result<(), DataplaneError> {
        self.run(&MapOp::WriteFrontend(e.clone()))?;
        self.run(&MapOp::WriteReverse(e.clone()))
    }

    /// Carries out one write of a [`plan`].
    fn run(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        match op {
            MapOp::ZeroSlot(id) => self.zero_slot(*id),
            MapOp::WriteFrontend(e) => {
                let (k, v) = frontend_entry(e);
                self.frontends
                    .insert(Plain(k), Plain(v), 0)
                    .map_err(map_err(map_names::FRONTENDS))
            }
            MapOp::WriteReverse(e) => {
                let (k, v) = reverse_entry(e);
                self.reverse
                    .insert(Plain(k), Plain(v), 0)
                    .map_err(map_err(map_names::REVERSE))
            }
            MapOp::RemoveFrontend(port, protocol) => {
                match self
                    .frontends
                    .remove(&Plain(frontend_key(*port, *protocol)))
                {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    Err(e) => Err(map_err(map_names::FRONTENDS)(e)),
                }
            }
            MapOp::RemoveReverse(backend, protocol) => {
                match self
                    .reverse
                    .remove(&Plain(reverse_key(*backend, *protocol)))
                {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    Err(e) => Err(map_err(map_names::REVERSE)(e)),
                }
            }
        }
    }
}

impl Dataplane for XdpDataplane {
    /// The frontends the pinned maps held when this run started (empty on a first start).
    fn pinned_frontends(&self) -> &PinnedFrontends {
        &self.pinned_frontends
    }

    /// Detaches XDP from every leg and removes every pin: forwarding stops.
    fn detach(self: Box<Self>) -> Result<(), DataplaneError> {
        let dir = self.pin_dir.clone();
        // The pins go first, then our descriptors with `self`: the last reference to each
        // link is what detaches it.
        let removed = remove_pins(&dir).map_err(|e| DataplaneError::PinDir {
            path: dir.clone(),
            reason: format!("removing the pins: {e}"),
        })?;
        drop(self);
        info!(dir = %dir.display(), links = removed.links, maps = removed.maps, "XDP detached from every leg; pins removed");
        Ok(())
    }

    fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// Re-reads each leg's ability to take redirects and updates the program's view.
    /// Called at start and periodically: GRO or a peer's XDP program can change any time.
    fn refresh_egress(&mut self) -> Result<(), DataplaneError> {
        let smallest = self
            .legs
            .iter()
            .filter_map(|l| Some((crate::kernel::sys::mtu(&l.name)?, l.name.as_str())))
            .min();
        let mss = smallest.map_or(0, |(mtu, _)| tcp_mss_for(mtu));
        if mss != self.mss {
            if let Some((mtu, leg)) = smallest {
                info!(mss, mtu, iface = %leg, "TCP MSS clamped to what the smallest leg carries");
            }
            self.mss = mss;
        }
        for leg in &mut self.legs {
            let (egress, why) = match self.features.as_mut().map(|f| f.get(leg.ifindex)) {
                Some(Ok(bits)) if bits & netdev::XDP_ACT_NDO_XMIT != 0 => {
                    (EGRESS_REDIRECT, String::new())
                }
                Some(Ok(_)) => (
                    EGRESS_PASS,
                    "the device does not accept XDP redirects (a veth does only while its peer has GRO on or an XDP program)".to_string(),
                ),
                Some(Err(e)) => (EGRESS_PASS, format!("reading its xdp-features failed: {e}")),
                None => (EGRESS_PASS, "xdp-features are unavailable".to_string()),
            };
            let first = self.logged_egress.insert(leg.ifindex);
            if first || egress != leg.egress {
                if egress == EGRESS_REDIRECT {
                    info!(iface = %leg.name, "egress by XDP redirect");
                } else {
                    warn!(iface = %leg.name, "egress by XDP_PASS through the kernel stack (slower, but delivered): {why}");
                }
            }
            leg.egress = egress;
            if egress == EGRESS_REDIRECT {
                self.tx_ports
                    .insert(leg.ifindex, leg.ifindex, None, 0)
                    .map_err(|e| DataplaneError::TxPorts(Box::new(e)))?;
            } else {
                absent_is_removed(self.tx_ports.remove(leg.ifindex))
                    .map_err(map_err(map_names::TX_PORTS))?;
            }
            self.interfaces
                .insert(
                    leg.ifindex,
                    Plain(Interface {
                        role: leg.role,
                        egress,
                        checksum: leg.checksum,
                        _pad: 0,
                    }),
                    0,
                )
                .map_err(map_err(map_names::INTERFACES))?;
        }
        Ok(())
    }

    /// Gives the program the time it stamps `last_seen_ns` with. Called at start and every
    /// second; while no daemon runs the stamp stands still, which only delays a reclaim.
    fn tick_clock(&mut self) -> Result<(), DataplaneError> {
        let now_ns = u64::try_from(sys::monotonic_now().as_nanos()).unwrap_or(u64::MAX);
        self.settings
            .set(
                0,
                Plain(Settings {
                    public_addr: self.public_addr,
                    mss: self.mss,
                    _pad: 0,
                    now_ns,
                }),
                0,
            )
            .map_err(map_err(map_names::SETTINGS))
    }

    /// Makes the frontend and reverse maps hold exactly `table`'s routes, whatever they held
    /// (at start, when they may come from an earlier run). `fresh` are the slots whose
    /// counters belong to no one yet. Entries are written before stale ones are removed,
    /// so a route that stays never has a gap.
    fn sync_all(&mut self, table: &RouteTable, fresh: &HashSet<u32>) -> Result<(), DataplaneError> {
        for &id in fresh {
            self.zero_slot(id)?;
        }
        let mut want_front = HashSet::new();
        let mut want_rev = HashSet::new();
        for e in table.entries() {
            self.write_entry(e)?;
            want_front.insert(frontend_entry(e).0);
            want_rev.insert(reverse_entry(e).0);
        }
        let stale_front: Vec<_> = self
            .frontends
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want_front.contains(&k.0))
            .collect();
        for k in stale_front {
            self.frontends
                .remove(&k)
                .map_err(map_err(map_names::FRONTENDS))?;
        }
        let stale_rev: Vec<_> = self
            .reverse
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want_rev.contains(&k.0))
            .collect();
        for k in stale_rev {
            self.reverse
                .remove(&k)
                .map_err(map_err(map_names::REVERSE))?;
        }
        Ok(())
    }

    fn apply(&mut self, table: &RouteTable, diff: &Diff) -> Result<(), DataplaneError> {
        plan(table, diff).iter().try_for_each(|op| self.run(op))
    }

    /// A route's counters, summed over CPUs.
    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        self.counter_reader.route_counters(id)
    }

    fn counter_reader(&self) -> Result<Arc<dyn CounterReader>, DataplaneError> {
        Ok(self.counter_reader.clone())
    }

    /// The program's verdict counters, summed over CPUs, indexed like `lb_common::counter`.
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..counter::COUNT)
            .map(|i| {
                self.global_counters
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(map_names::GLOBAL_COUNTERS))
            })
            .collect()
    }
}

/// A delete of a key that is not there has done its job. Hash maps report that as
/// `KeyNotFound`; devmaps as the raw ENOENT of the syscall.
fn absent_is_removed(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn role_name(role: u8) -> &'static str {
    if role == ROLE_PUBLIC {
        "public"
    } else {
        "private"
    }
}

/// What to tell the admin when attaching fails, from the kernel's errno.
fn attach_hint(e: &aya::programs::ProgramError, mode: AttachMode) -> &'static str {
    // aya nests the kernel's errno a level or two down (SyscallError, NetlinkError).
    let mut errno = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            errno = io.raw_os_error();
            break;
        }
        cause = c.source();
    }
    match (errno, mode) {
        (Some(libc::EOPNOTSUPP), AttachMode::Native) | (Some(libc::EINVAL), AttachMode::Native) => {
            "; the driver may not support native XDP: rerun with `--xdp-mode skb` (generic XDP, slower)"
        }
        (Some(libc::ERANGE), _) => {
            "; the MTU is too large for XDP on this device (a veth peer's MTU must be at most 3506 without multi-buffer support)"
        }
        (Some(libc::EBUSY), _) | (Some(libc::EEXIST), _) => {
            "; another XDP program is already attached (another srvgate, or a leftover: check `ip link show dev IFACE`)"
        }
        _ => "",
    }
}

/// The sysctls that forwarding needs: `bpf_fib_lookup` reports FWD_DISABLED without
/// ip_forward, and packets passed to the kernel after rewriting carry the public address
/// as source on a private leg, which is dropped as martian without accept_local.
fn prepare_kernel(gw: &Gateway) -> Result<(), DataplaneError> {
    let set = |path: String| match sys::set_sysctl(&path, "1") {
        Ok(true) => {
            info!("set {path} = 1");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(error) => Err(DataplaneError::Sysctl { path, error }),
    };
    set("net/ipv4/ip_forward".to_string())?;
    for name in &gw.private_interfaces {
        set(format!("net/ipv4/conf/{name}/accept_local"))?;
    }
    Ok(())
}

/// Makes sure `dir` can hold pins: it must be on a BPF filesystem. Under /sys/fs/bpf, a
/// missing bpffs is mounted (what systemd does at boot); anywhere else it is an error.
fn prepare_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    let bad = |reason: String| DataplaneError::PinDir {
        path: dir.to_path_buf(),
        reason,
    };
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let on_bpffs =
        sys::is_bpffs(existing).map_err(|e| bad(format!("{}: {e}", existing.display())))?;
    if !on_bpffs {
        let sys_bpf = Path::new("/sys/fs/bpf");
        if dir.starts_with(sys_bpf) && sys_bpf.is_dir() && !sys::is_bpffs(sys_bpf).unwrap_or(true) {
            sys::mount_bpffs(sys_bpf)
                .map_err(|e| bad(format!("mounting a BPF filesystem on /sys/fs/bpf: {e}")))?;
            info!("mounted a BPF filesystem on /sys/fs/bpf");
            if !sys::in_init_mount_namespace() {
                warn!("this process runs in a private mount namespace (ip netns exec?): the bpffs it mounted, and the pins in it, go away when srvgate exits, so a restart will not be hitless; mount bpffs on /sys/fs/bpf on the host, or pass a --pin-dir on a bpffs the host mounted");
            }
        } else {
            return Err(bad(format!(
                "is not on a BPF filesystem; mount one (`mount -t bpf bpf {}`) or use a directory under /sys/fs/bpf",
                existing.display()
            )));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| bad(format!("creating it: {e}")))?;
    Ok(())
}

/// What a map looks like to the kernel; two maps with the same shape are interchangeable.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MapShape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// The maps of the embedded object, by name.
fn object_maps() -> Result<Vec<(String, MapShape)>, DataplaneError> {
    let obj = aya_obj::Object::parse(PROGRAM)
        .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ParseError(e))))?;
    Ok(obj
        .maps
        .iter()
        .map(|(name, m)| {
            let shape = MapShape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
            };
            (name.clone(), shape)
        })
        .collect())
}

/// Checks every map pinned in `dir` against the embedded object's definition, so that a
/// program is never handed maps whose layout it does not expect. Returns how many maps
/// are pinned already.
fn check_pinned_maps(dir: &Path) -> Result<usize, DataplaneError> {
    let mut reused = 0;
    for (name, want) in object_maps()? {
        let path = dir.join(&name);
        if !path.exists() {
            continue;
        }
        let incompatible = |what: String| DataplaneError::IncompatiblePin {
            path: path.clone(),
            dir: dir.to_path_buf(),
            what,
        };
        let info = MapInfo::from_pin(&path).map_err(|e| incompatible(format!("not a map: {e}")))?;
        let have = MapShape {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if want != have {
            return Err(incompatible(format!(
                "pinned {have:?}, this build expects {want:?}"
            )));
        }
        reused += 1;
    }
    Ok(reused)
}

/// Where the link of leg `iface` is pinned. Interface names may contain '.', which bpffs
/// reserves, but never ':', so the mapping is one to one.
fn link_pin_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{}", iface.replace('.', ":")))
}

/// Puts the program on `leg`: into the link pinned there by an earlier run if it is alive
/// and on this interface (an atomic replace), else as a new link, pinned. Returns the new
/// link's pin, `None` when an existing link was reused.
fn attach_leg(
    program: &mut Xdp,
    leg: &Leg,
    mode: AttachMode,
    dir: &Path,
) -> Result<Option<PinnedLink>, DataplaneError> {
    let path = link_pin_path(dir, &leg.name);
    if path.exists() {
        match sys::pinned_xdp_link_ifindex(&path) {
            Ok(ifindex) if ifindex == leg.ifindex => {
                let reused = PinnedLink::from_pin(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
                    .and_then(|l| program.attach_to_link(l).map_err(|e| e.to_string()));
                match reused {
                    Ok(_) => {
                        info!(iface = %leg.name, ifindex = leg.ifindex, role = role_name(leg.role), "XDP program replaced in place (pinned link reused, no interruption)");
                        return Ok(None);
                    }
                    Err(e) => {
                        warn!(iface = %leg.name, "cannot reuse the pinned XDP link ({e}); attaching a new one")
                    }
                }
            }
            Ok(0) => {
                info!(iface = %leg.name, "the pinned XDP link is defunct (its interface was deleted); attaching a new one")
            }
            Ok(other) => {
                warn!(iface = %leg.name, "the pinned XDP link is on ifindex {other}, not {}; attaching a new one", leg.ifindex)
            }
            Err(e) => {
                warn!(iface = %leg.name, "cannot read the pinned XDP link ({e}); attaching a new one")
            }
        }
        // The old link, if still attached somewhere, goes with its last reference.
        if let Err(e) = std::fs::remove_file(&path) {
            warn!("removing {}: {e}", path.display());
        }
    }
    let xdp_mode = match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    };
    let id = program
        .attach_to_if_index(leg.ifindex, xdp_mode)
        .map_err(|e| DataplaneError::Attach {
            iface: leg.name.clone(),
            mode,
            hint: attach_hint(&e, mode),
            error: Box::new(e),
        })?;
    let pin_error = |error: String| DataplaneError::PinLink {
        iface: leg.name.clone(),
        path: path.clone(),
        error,
    };
    let link = program
        .take_link(id)
        .map_err(|e| pin_error(e.to_string()))?;
    // Only a BPF link can be pinned; the netlink fallback of kernels before 5.9 cannot.
    let link = FdLink::try_from(link).map_err(|e| {
        pin_error(format!("{e} (the kernel attached XDP through netlink; BPF links for XDP need Linux 5.9 or later)"))
    })?;
    let pinned = link.pin(&path).map_err(|e| pin_error(e.to_string()))?;
    info!(iface = %leg.name, ifindex = leg.ifindex, %mode, role = role_name(leg.role), "XDP attached");
    Ok(Some(pinned))
}

/// Removes the link pins of interfaces that are no longer legs, which detaches XDP there.
fn detach_dropped_legs(dir: &Path, legs: &[Leg]) {
    let keep: HashSet<PathBuf> = legs.iter().map(|l| link_pin_path(dir, &l.name)).collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(LINK_PREFIX) && !keep.contains(&entry.path()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(pin = %name, "XDP detached from an interface that is no longer a leg")
                }
                Err(e) => warn!("removing {}: {e}", entry.path().display()),
            }
        }
    }
}

/// What [`remove_pins`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovedPins {
    pub links: usize,
    pub maps: usize,
}

/// Removes every pin under `dir` and the directory itself. Once no process holds them,
/// links detach from their interfaces and maps are freed. A missing `dir` is not an error.
pub fn remove_pins(dir: &Path) -> io::Result<RemovedPins> {
    let mut removed = RemovedPins::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if name.starts_with(LINK_PREFIX) {
            removed.links += 1;
        } else {
            removed.maps += 1;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(removed),
        Err(e) => Err(e),
    }
}

/// The counters' names for logs and metrics.
pub fn verdict_names() -> &'static [&'static str] {
    &counter::NAMES
}
