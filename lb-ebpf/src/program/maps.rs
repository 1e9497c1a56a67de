//! The program's maps (but the guard's, in `guard.rs`) and the lookups every path shares.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    counter, frontend_slot, Backend, Budget, CsumScratch, HairpinKey, HairpinValue, Interface,
    LegSlot, NextHop, ReverseKey, ReverseValue, RouteCounters, Settings, BACKEND_LIVE,
    FRONTEND_SLOTS, LEG_CACHE_SLOTS, MAX_HAIRPIN, MAX_HAIRPIN_HOSTS, MAX_INTERFACES, MAX_ROUTES,
    NEXT_HOP_SLOTS,
};

#[map(name = "FRONTENDS")]
pub(super) static FRONTENDS: Array<Backend> = Array::with_max_entries(FRONTEND_SLOTS, 0);
#[map(name = "REVERSE")]
pub(super) static REVERSE: HashMap<ReverseKey, ReverseValue> =
    HashMap::with_max_entries(MAX_ROUTES, 0);
#[map(name = "INTERFACES")]
pub(super) static INTERFACES: HashMap<u32, Interface> =
    HashMap::with_max_entries(MAX_INTERFACES, 0);
#[map(name = "LEG_CACHE")]
pub(super) static LEG_CACHE: Array<LegSlot> = Array::with_max_entries(LEG_CACHE_SLOTS, 0);
#[map(name = "SETTINGS")]
pub(super) static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map(name = "ROUTE_COUNTERS")]
pub(super) static ROUTE_COUNTERS: PerCpuArray<RouteCounters> =
    PerCpuArray::with_max_entries(MAX_ROUTES, 0);
#[map(name = "GLOBAL_COUNTERS")]
pub(super) static GLOBAL_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(counter::SLOTS, 0);
/// The FIB's recent answers for each route's two paths, per CPU (`route_cached`).
#[map(name = "NEXT_HOPS")]
pub(super) static NEXT_HOPS: PerCpuArray<NextHop> =
    PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);
/// Where a segment is copied to be summed (`complete_checksum`), per CPU.
#[map(name = "CSUM_SCRATCH")]
pub(super) static CSUM_SCRATCH: PerCpuArray<CsumScratch> = PerCpuArray::with_max_entries(1, 0);
/// Flows from private hosts to the public address (hairpin), by the tuple their replies
/// carry: the one per-flow state the program keeps, because a private client's address cannot
/// be recovered from the translated packet (see `hairpin`).
#[map(name = "HAIRPIN")]
pub(super) static HAIRPIN: LruHashMap<HairpinKey, HairpinValue> =
    LruHashMap::with_max_entries(MAX_HAIRPIN, 0);
/// Each private host's bucket of new hairpin flows (`new_hairpin_allowed`).
#[map(name = "HAIRPIN_QUOTA")]
pub(super) static HAIRPIN_QUOTA: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(MAX_HAIRPIN_HOSTS, 0);
/// This CPU's budgets for the tick: ICMP answers, checksum sums (`budget`).
#[map(name = "BUDGETS")]
pub(super) static BUDGETS: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// The leg of `ifindex`: from its `LEG_CACHE` slot if it holds it, else `INTERFACES`.
#[inline(always)]
pub(super) fn interface(ifindex: u32) -> Option<Interface> {
    if let Some(slot) = LEG_CACHE.get(ifindex % LEG_CACHE_SLOTS) {
        if slot.ifindex == ifindex {
            return Some(slot.iface);
        }
    }
    // SAFETY: the element is copied out at once, while the kernel keeps it alive. A
    // lookup racing the daemon's rewrite of the entries (every 2 s) may read a mix of
    // two legs' entries; with the wrong role no frontend or reverse entry matches, so
    // that one packet is passed to the kernel.
    unsafe { INTERFACES.get(ifindex) }.copied()
}

/// The route of public `port` (network byte order, as in the packet) for `protocol`.
#[inline(always)]
pub(super) fn frontend(port: u16, protocol: u8) -> Option<&'static Backend> {
    let backend = FRONTENDS.get(frontend_slot(u16::from_be(port), protocol)?)?;
    (backend.live == BACKEND_LIVE).then_some(backend)
}
