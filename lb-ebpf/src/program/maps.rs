//! The program's maps (but the guard's, in `guard.rs`) and the lookups every path shares.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    counter, frontend_slot, Backend, Budget, CsumScratch, FlowKey, FlowValue, HairpinKey,
    HairpinValue, Interface, LegSlot, NextHop, PoolMembers, PoolTable, ReverseKey, ReverseValue,
    RouteCounters, Settings, BACKEND_LIVE, FRONTEND_SLOTS, LEG_CACHE_SLOTS, MAGLEV_TABLE_SIZE,
    MAX_FLOWS, MAX_HAIRPIN, MAX_HAIRPIN_HOSTS, MAX_INTERFACES, MAX_POOLS, MAX_ROUTES, MEMBER_LIVE,
    NEXT_HOP_SLOTS, NO_POOL,
};
use lb_ebpf::flow_hash;

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

/// Each pool's members, by pool slot (`Backend::pool`).
#[map(name = "POOL_MEMBERS")]
pub(super) static POOL_MEMBERS: Array<PoolMembers> = Array::with_max_entries(MAX_POOLS, 0);
/// Each pool's Maglev table, by pool slot.
#[map(name = "POOL_TABLES")]
pub(super) static POOL_TABLES: Array<PoolTable> = Array::with_max_entries(MAX_POOLS, 0);
/// The member each recent pool flow went to (`pool_member`).
#[map(name = "FLOWS")]
pub(super) static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);

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

/// Where route `backend`'s packets from `client` (address, port) to `public_port` (all
/// network byte order) go, and its index in the route's pool: its one backend (index 0),
/// or for a pool (`Backend::pool`) the member [`pool_member`] chooses. The one-backend
/// route pays one compare for pools.
#[inline(always)]
pub(super) fn backend_for(
    backend: &Backend,
    client: (u32, u16),
    public_port: u16,
    protocol: u8,
) -> Option<((u32, u16), u32)> {
    let pool = u16::from(backend.pool);
    if pool == NO_POOL {
        return Some(((backend.addr, backend.port), 0));
    }
    pool_member(pool, client, public_port, protocol)
}

/// The member of pool `pool` for a client's flow: the one `FLOWS` remembers for it while
/// that member is still in the pool at the same index and live (so a flow stays put when
/// the table changes, drained members finishing theirs); else the member the pool's Maglev
/// table names for the flow's hash, remembered from now on. The daemon writes a pool's
/// members and table before any frontend names the pool; a packet racing a rewrite may
/// read a mix of two tables, and goes to a member either would name.
#[inline(always)]
fn pool_member(
    pool: u16,
    client: (u32, u16),
    public_port: u16,
    protocol: u8,
) -> Option<((u32, u16), u32)> {
    let members = &POOL_MEMBERS.get(u32::from(pool))?.members;
    let key = FlowKey::new(client.0, client.1, public_port, protocol);
    // SAFETY: read during this run only, the fields copied out at once; another CPU may
    // rewrite the entry meanwhile (the same flow on two queues), and both write the same.
    if let Some(flow) = unsafe { FLOWS.get(key) } {
        let (addr, port, index) = (flow.addr, flow.port, flow.member);
        if let Some(m) = members.get(usize::from(index)) {
            if m.live == MEMBER_LIVE && m.addr == addr && m.port == port {
                return Some(((addr, port), u32::from(index)));
            }
        }
    }
    let table = &POOL_TABLES.get(u32::from(pool))?.slots;
    let slot = (flow_hash(client.0, client.1, protocol) % MAGLEV_TABLE_SIZE) as usize;
    // LLVM knows the remainder is inside the table and drops the bounds check, but the
    // verifier does not follow the division (done by multiplication): read the slot back
    // through the stack, so that the check stays.
    // SAFETY: a read of a local just written.
    let slot = unsafe { core::ptr::read_volatile(&slot) };
    let index = *table.get(slot)?;
    let m = members.get(usize::from(index))?;
    let (addr, port) = (m.addr, m.port);
    let value = FlowValue {
        addr,
        port,
        member: u16::from(index),
    };
    // A full map evicts the flow used longest ago; a failed write only means the next
    // packet chooses again, the same member while the table stands.
    let _ = FLOWS.insert(key, value, 0);
    Some(((addr, port), u32::from(index)))
}
