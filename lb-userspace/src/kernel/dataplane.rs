//! The XDP program and its maps: loading, attaching to the gateway's legs, keeping the maps
//! equal to the route table, and reading the counters back.
//!
//! Everything the kernel runs is pinned in bpffs under the pin directory (default
//! `/sys/fs/bpf/srvgate`): every map by its name, one BPF link per leg (`link_<ifname>`) and
//! one per public leg for the egress guard (`egress_<ifname>`), so forwarding outlives the
//! daemon. A daemon that starts and finds pins of an earlier run
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
//!
//! This file holds the contract (the trait, its types and errors, and [`plan`]) and the
//! kernel's implementation's state; `attach.rs` loads the program and puts it on the legs,
//! `maps.rs` keeps the maps and reads them back, `pins.rs` owns what lives in bpffs.
//!
//! A leg is a device: [`leg_roles`] merges a one-armed gateway's public interface listed among
//! the private ones into one leg with both roles. [`plan`] and `sync_plan` (a whole table over
//! what the maps hold) are the one translation of the table into `MapOp`s. Also here:
//! `encode.rs` (the maps' encoding), `maglev.rs` (a pool's lookup table), `guard.rs` (the public legs' guards), `netdev.rs` (whether
//! a device takes redirects), and `xdp_tests.rs`.

mod attach;
mod encode;
mod guard;
pub mod maglev;
mod maps;
mod netdev;
mod pins;
#[cfg(test)]
mod xdp_tests;

use std::sync::Arc;
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fmt,
    path::PathBuf,
    time::Duration,
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::links::PinnedLink,
    Ebpf,
};
use lb_common::{
    counter, Backend, Interface, LegSlot, ReverseKey, ReverseValue, RouteCounters, Settings,
    CSUM_FULL, CSUM_MAY_BE_PARTIAL, EGRESS_REDIRECT, ROLE_PRIVATE, ROLE_PUBLIC,
};

pub use guard::{guard_entries, guard_octets, BOGONS};
pub use maps::RouteCounterMap;
pub use pins::{remove_pins, RemovedPins, DEFAULT_PIN_DIR};

use maps::Plain;

use crate::{
    config::Gateway,
    table::routes::{Diff, Entry, RouteTable},
};
use lb_model::Protocol;

/// What a route's frontend pointed to in the pinned maps: `(port, protocol) -> (backend,
/// slot)`, for [`RouteTable::adopt_slots`].
pub type PinnedFrontends = StdHashMap<(u16, Protocol), (std::net::SocketAddrV4, u32)>;

/// The XDP object built from lb-ebpf by build.rs.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

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

/// `error`'s text followed by each cause's that it does not already say: aya's errors keep
/// the kernel's errno a level or two down ("failed to create map X" hides "Operation not
/// permitted"), and the errno is what tells an admin which setting refused the call.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    #[error("loading the XDP program into the kernel failed: {}", with_causes(.0.as_ref()))]
    Load(Box<aya::EbpfError>),
    #[error("the XDP object has no {0}; the build of lb-ebpf is out of date")]
    Missing(&'static str),
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error("attaching XDP in {mode} mode to {iface} failed: {}{hint}", with_causes(error.as_ref()))]
    Attach {
        iface: String,
        mode: AttachMode,
        error: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
    #[error("BPF map {name}: {}", with_causes(error.as_ref()))]
    Map {
        name: &'static str,
        error: Box<aya::maps::MapError>,
    },
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
    #[error("the public legs' source guard needs {prefixes} prefixes (the machine's addresses, its private legs' subnets and the bogons), more than SOURCE_GUARD holds ({capacity}); remove addresses from the gateway's interfaces")]
    GuardFull { prefixes: usize, capacity: u32 },
    #[error("srvgate is shutting down: the data plane is no longer changed")]
    Stopped,
    #[error("reading the machine's interface addresses (the public legs' source guard is made of them): {0}")]
    Interfaces(std::io::Error),
    #[error("pinning the XDP link of {iface} at {}: {error}", path.display())]
    PinLink {
        iface: String,
        path: PathBuf,
        error: String,
    },
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
    /// Its own MAC address (all zero if it has none): the program translates only frames
    /// sent to it. Read again with the egress mode, since an address can be changed.
    pub mac: [u8; 6],
}

impl Leg {
    /// `public`, `private` or `public+private` (a one-armed gateway's one NIC), for logs
    /// and metrics.
    pub fn role_name(&self) -> &'static str {
        role_name(self.role)
    }

    /// What the program reads about this leg (`INTERFACES`, `LEG_CACHE`).
    pub fn interface(&self) -> Interface {
        Interface {
            role: self.role,
            egress: self.egress,
            checksum: self.checksum,
            _pad: 0,
            mac: self.mac,
            _pad2: [0; 2],
        }
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
    /// Makes the public legs' source guard say what the machine's `interfaces` (their
    /// addresses, as the daemon just read them for the backend rule too) now say.
    fn refresh_guard(
        &mut self,
        interfaces: &[crate::machine::Interface],
    ) -> Result<(), DataplaneError>;
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
        for b in r.backends.addrs() {
            if !table.backend_in_use(b, r.protocol) {
                ops.push(MapOp::RemoveReverse(b, r.protocol));
            }
        }
    }
    ops
}

/// The map writes that make the maps hold exactly `table` (at start, over whatever the
/// pinned maps kept): the `fresh` counter slots zeroed, every route written, then every
/// frontend (`held_frontends`) and reverse key (`held_reverse`) the maps hold that no route
/// of `table` uses removed. The one sweep rule, for the kernel's maps and the tests' fake.
pub fn sync_plan(
    table: &RouteTable,
    fresh: &HashSet<u32>,
    held_frontends: impl IntoIterator<Item = (u16, Protocol)>,
    held_reverse: impl IntoIterator<Item = (std::net::SocketAddrV4, Protocol)>,
) -> Vec<MapOp> {
    let mut ops: Vec<MapOp> = fresh.iter().map(|&id| MapOp::ZeroSlot(id)).collect();
    for e in table.entries() {
        ops.push(MapOp::WriteFrontend(e.clone()));
        ops.push(MapOp::WriteReverse(e.clone()));
    }
    ops.extend(
        held_frontends
            .into_iter()
            .filter(|&(port, protocol)| !table.port_in_use(port, protocol))
            .map(|(port, protocol)| MapOp::RemoveFrontend(port, protocol)),
    );
    ops.extend(
        held_reverse
            .into_iter()
            .filter(|&(backend, protocol)| !table.backend_in_use(backend, protocol))
            .map(|(backend, protocol)| MapOp::RemoveReverse(backend, protocol)),
    );
    ops
}

/// The data plane in the kernel: the loaded program, its pinned maps and links.
pub struct XdpDataplane {
    frontends: aya::maps::Array<MapData, Plain<Backend>>,
    pool_members: aya::maps::Array<MapData, Plain<lb_common::PoolMembers>>,
    pool_tables: aya::maps::Array<MapData, Plain<lb_common::PoolTable>>,
    /// Which route holds which pool slot. Empty at start: `sync_all` hands slots out
    /// afresh, writing each pool before its frontend names it.
    pool_slots: encode::PoolSlots,
    reverse: HashMap<MapData, Plain<ReverseKey>, Plain<ReverseValue>>,
    interfaces: HashMap<MapData, u32, Plain<Interface>>,
    leg_cache: aya::maps::Array<MapData, Plain<LegSlot>>,
    /// What `leg_cache` holds, once this run wrote all of it: later refreshes write only
    /// the slots that change.
    leg_cache_written: Option<Vec<LegSlot>>,
    route_counters: PerCpuArray<MapData, Plain<RouteCounters>>,
    /// Reads the same map for [`Dataplane::counter_reader`] and [`Dataplane::route_counters`].
    counter_reader: Arc<RouteCounterMap>,
    global_counters: PerCpuArray<MapData, u64>,
    settings: aya::maps::Array<MapData, Plain<Settings>>,
    /// `[gateway] public_ipv4`, for [`Settings::public_addr`] and the source guard.
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
    /// `SOURCE_GUARD`, refreshed with the legs (the machine's addresses can change).
    source_guard: guard::SourceGuard,
    /// Links this run created and pinned; reused links live inside the program. Dropping
    /// either only closes a descriptor: the pin keeps the link attached.
    _links: Vec<PinnedLink>,
    /// The egress guard's links on the public legs, pinned the same way.
    _egress_links: Vec<PinnedLink>,
    _ebpf: Ebpf,
}

fn role_name(role: u8) -> &'static str {
    match (role & ROLE_PUBLIC != 0, role & ROLE_PRIVATE != 0) {
        (true, true) => "public+private",
        (true, false) => "public",
        _ => "private",
    }
}

/// The legs of `gw` by name, in the config's order, each once with its roles: the public
/// interface, then the private ones. A one-armed gateway lists its one NIC as both, and
/// gets one leg with both roles (one attachment, one `INTERFACES` entry).
pub fn leg_roles(gw: &Gateway) -> Vec<(String, u8)> {
    let mut legs: Vec<(String, u8)> = vec![(gw.public_interface.clone(), ROLE_PUBLIC)];
    for name in &gw.private_interfaces {
        match legs.iter_mut().find(|(n, _)| n == name) {
            Some((_, role)) => *role |= ROLE_PRIVATE,
            None => legs.push((name.clone(), ROLE_PRIVATE)),
        }
    }
    legs
}

/// The counters' names for logs and metrics.
pub fn verdict_names() -> &'static [&'static str] {
    &counter::NAMES
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map the kernel refused names the errno (a booted test under systemd saw only
    /// "failed to create map `GLOBAL_COUNTERS`", without why).
    #[test]
    fn a_load_error_says_the_kernels_errno() {
        let e = DataplaneError::Load(Box::new(aya::EbpfError::MapError(
            aya::maps::MapError::CreateError {
                name: "GLOBAL_COUNTERS".into(),
                io_error: std::io::Error::from_raw_os_error(libc::EPERM),
            },
        )));
        let text = e.to_string();
        assert!(
            text.contains("GLOBAL_COUNTERS") && text.contains("Operation not permitted"),
            "{text}"
        );
        // Each cause once, though aya's outer text repeats the inner one's.
        assert_eq!(text.matches("failed to create map").count(), 1, "{text}");
    }

    /// The sweep removes what the maps hold and no route uses, by port and by backend, and
    /// keeps a key a route still uses though another route held it before.
    #[test]
    fn the_sync_plan_writes_every_route_and_sweeps_only_the_unused() {
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut table = RouteTable::new();
        table
            .replace_config(
                &[crate::testing::ssh_route("alice", 30001, "10.0.0.11:22")],
                t0,
            )
            .unwrap();
        let alice = table.entries().next().unwrap().clone();
        let fresh = HashSet::from([alice.id]);
        let ops = sync_plan(
            &table,
            &fresh,
            [
                (30001, Protocol::Tcp),
                (30002, Protocol::Tcp),
                (30001, Protocol::Udp),
            ],
            [
                ("10.0.0.11:22".parse().unwrap(), Protocol::Tcp),
                ("10.0.0.12:22".parse().unwrap(), Protocol::Tcp),
            ],
        );
        assert_eq!(
            ops,
            [
                MapOp::ZeroSlot(alice.id),
                MapOp::WriteFrontend(alice.clone()),
                MapOp::WriteReverse(alice),
                MapOp::RemoveFrontend(30002, Protocol::Tcp),
                MapOp::RemoveFrontend(30001, Protocol::Udp),
                MapOp::RemoveReverse("10.0.0.12:22".parse().unwrap(), Protocol::Tcp),
            ]
        );
    }

    /// A member that leaves a pool loses its reverse entry; the members that stay keep
    /// theirs, rewritten with the route.
    #[test]
    fn the_plan_writes_every_member_and_removes_only_the_one_that_left() {
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut table = RouteTable::new();
        let three = crate::testing::pool_route(
            "alice",
            30001,
            &["10.0.0.11:22", "10.0.0.12:22", "10.0.0.13:22"],
        );
        table.replace_config(&[three], t0).unwrap();
        let two = crate::testing::pool_route("alice", 30001, &["10.0.0.11:22", "10.0.0.13:22"]);
        let diff = table.replace_config(&[two], t0).unwrap();
        let c = diff.changed[0].clone();
        assert_eq!(
            plan(&table, &diff),
            [
                MapOp::WriteFrontend(c.new.clone()),
                MapOp::WriteReverse(c.new),
                MapOp::RemoveReverse("10.0.0.12:22".parse().unwrap(), Protocol::Tcp),
            ]
        );
    }
}
