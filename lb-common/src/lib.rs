//! Plain-data types of the BPF maps that srvgate's XDP program reads and its daemon fills.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding, and holds addresses and ports
//! in network byte order exactly as they sit in the packet, so the XDP program compares
//! and copies them without swapping bytes. The daemon converts at the edge.
//!
//! `no_std`; with the `user` feature (the daemon's) the types also derive `bytemuck::Pod`.
#![no_std]

/// Capacity of the route maps; also the number of per-route counter slots. 30 000 routes
/// (a semester's worth of students with a few endpoints each) must fit; the per-route
/// counters cost 40 bytes per slot per CPU (1.3 MB per CPU at this size).
pub const MAX_ROUTES: u32 = 32768;
/// Capacity of the interface maps (public and private legs together).
pub const MAX_INTERFACES: u32 = 64;

/// Slots of `FRONTENDS`: one per public port for TCP, then one per port for UDP. An array
/// indexed by port rather than a hash keyed by it: the lookup on every inbound packet is
/// an index (inlined by the verifier) instead of a hash and a key compare. 12 bytes a slot,
/// 1.5 MiB in all.
pub const FRONTEND_SLOTS: u32 = 2 * 65536;

/// The `FRONTENDS` slot of public `port` (host byte order) for `protocol`; `None` for a
/// protocol routes cannot have.
#[inline(always)]
pub const fn frontend_slot(port: u16, protocol: u8) -> Option<u32> {
    match protocol {
        PROTO_TCP => Some(port as u32),
        PROTO_UDP => Some(65536 + port as u32),
        _ => None,
    }
}

/// IANA protocol numbers, as they appear in the IPv4 header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Map names, shared so the daemon finds what the program declares.
pub mod map_names {
    pub const FRONTENDS: &str = "FRONTENDS";
    pub const REVERSE: &str = "REVERSE";
    pub const INTERFACES: &str = "INTERFACES";
    pub const SETTINGS: &str = "SETTINGS";
    pub const ROUTE_COUNTERS: &str = "ROUTE_COUNTERS";
    pub const GLOBAL_COUNTERS: &str = "GLOBAL_COUNTERS";
    pub const HAIRPIN: &str = "HAIRPIN";
    pub const LEG_CACHE: &str = "LEG_CACHE";
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    pub const CSUM_SCRATCH: &str = "CSUM_SCRATCH";
    pub const HAIRPIN_QUOTA: &str = "HAIRPIN_QUOTA";
    pub const BUDGETS: &str = "BUDGETS";
    pub const SOURCE_GUARD: &str = "SOURCE_GUARD";
    pub const GUARD_OCTETS: &str = "GUARD_OCTETS";
    pub const POOL_MEMBERS: &str = "POOL_MEMBERS";
    pub const POOL_TABLES: &str = "POOL_TABLES";
    pub const FLOWS: &str = "FLOWS";
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "srvgate";
/// Name of the tc egress program of public legs in the object file (the leak guard).
pub const EGRESS_PROGRAM_NAME: &str = "srvgate_egress";

/// Capacity of `SOURCE_GUARD`: the fixed bogons, every address of the gateway and every
/// subnet of its legs, with room to spare.
pub const SOURCE_GUARD_ENTRIES: u32 = 1024;

/// Slots of `GUARD_OCTETS`, one per first octet of an address: non-zero where some
/// `SOURCE_GUARD` prefix covers addresses that start with it. An array lookup (inlined by
/// the verifier) that spares most packets the trie's lookup, a helper call that cost the
/// program more than a fifth of its time: a client whose address starts with an octet no
/// rule covers has no `GUARD_*` bit.
pub const GUARD_OCTETS_SLOTS: u32 = 256;

/// Key of `SOURCE_GUARD`, an LPM trie: an IPv4 prefix, the address in network byte order
/// (the trie matches bits from the first byte on, as the packet holds them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GuardKey {
    /// Significant bits of `addr`, 0..=32 (32 for a lookup).
    pub prefix_len: u32,
    /// Network byte order.
    pub addr: u32,
}

/// What the longest `SOURCE_GUARD` prefix holding an address says about it: a bitmask.
/// The daemon folds every rule into each prefix it writes, so the one longest match is
/// the whole answer.
///
/// `GUARD_REFUSED_SOURCE`: a source no packet arriving on a public leg may carry (one of
/// the gateway's own addresses, a private-only leg's subnet, a bogon): dropped
/// (`DROP_PUBLIC_SOURCE`).
pub const GUARD_REFUSED_SOURCE: u32 = 1;
/// `GUARD_INSIDE`: an address on a private leg (its subnets, less the addresses the
/// gateway itself sends from on a public leg): a packet from it to an address that is not
/// inside too must not leave a public leg untranslated (`DROP_PRIVATE_SOURCE`).
pub const GUARD_INSIDE: u32 = 2;

/// Where a frontend forwards to: the value of its `FRONTENDS` slot ([`frontend_slot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Backend {
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// `BACKEND_LIVE` in a slot that holds a route; every slot of an array exists, and an
    /// all-zero one means no route.
    pub live: u8,
    /// [`NO_POOL`]: `addr` and `port` are the route's one backend. Else the route's slot
    /// in `POOL_MEMBERS` and `POOL_TABLES` (1..[`MAX_POOLS`]), and the program chooses
    /// among the pool (`addr` and `port` then hold its first active member, for readers
    /// of the pins). `live` and `pool` share the two bytes that were one `u16 live` before
    /// pools, so that the value keeps its size and the pins of an earlier build (`live` 1,
    /// `pool` 0 on this little-endian target) are read as one-backend routes: an upgrade
    /// keeps forwarding.
    pub pool: u8,
    /// Slot of this route in `ROUTE_COUNTERS`.
    pub route_id: u32,
}

// A pool slot is one byte of `Backend`.
const _: () = assert!(MAX_POOLS <= 256);
const _: () = assert!(core::mem::size_of::<Backend>() == 12);

/// `Backend::pool` of a route with one backend: no pool slot, no choice to make.
pub const NO_POOL: u16 = 0;

/// `Backend::live` of a slot that holds a route.
pub const BACKEND_LIVE: u8 = 1;

/// Key of the reverse map: a backend's address, port and protocol, as seen in its replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ReverseKey {
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}

impl ReverseKey {
    /// The key of `addr:port` (network byte order, as in the packet) for `protocol`, with
    /// its padding zero, as the kernel's hash of the whole key needs.
    #[inline(always)]
    pub const fn new(addr: u32, port: u16, protocol: u8) -> ReverseKey {
        ReverseKey {
            addr,
            port,
            protocol,
            _pad: 0,
        }
    }
}

/// What a backend's reply source is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ReverseValue {
    /// Public port, network byte order.
    pub public_port: u16,
    pub _pad: u16,
    /// Slot of this route in `ROUTE_COUNTERS`.
    pub route_id: u32,
}

/// Slots of a pool's Maglev lookup table (a prime, as Maglev's permutations need): each
/// names one of the pool's members, so that a flow's hash modulo this size picks its
/// backend. Maglev's spread needs the table much larger than the pool (the paper's M >
/// 100 N): at 4093 a pool of [`MAX_POOL_BACKENDS`] gets 64 slots a member, and the host
/// tests of lb-userspace's `maglev` hold balance (max/mean <= 1.10 over 10 000 flows on 16
/// backends) and disruption (1/16 + 2 % when 1 of 16 leaves) at this size. As u16 indices
/// a table costs 2 x 4093 = 8 KiB.
pub const MAGLEV_TABLE_SIZE: u32 = 4093;
/// Members of one pool at most: a table of [`MAGLEV_TABLE_SIZE`] slots keeps 64 a member.
pub const MAX_POOL_BACKENDS: u32 = 64;

/// Pool slots, the first ([`NO_POOL`]) never used: routes with more than one member at
/// once. Bounded so that the tables stay small: `POOL_TABLES` holds 256 x 4096 B = 1 MiB,
/// `POOL_MEMBERS` 256 x 64 x 8 B = 128 KiB. Routes with one backend, the many, need none.
pub const MAX_POOLS: u32 = 256;

/// One member of a pool, as the program checks a remembered flow against it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PoolMember {
    /// Network byte order.
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
    /// [`MEMBER_LIVE`]: the member may keep its established flows (it is up, or drained:
    /// drained members own no table slot but finish what they have). 0: down or no
    /// member, and a flow remembered on it moves.
    pub live: u16,
}

/// `PoolMember::live` of a member that keeps its flows.
pub const MEMBER_LIVE: u16 = 1;

/// A pool's members (`POOL_MEMBERS`, by pool slot): the indexes its table and `FLOWS`
/// name, in `maglev::members_in_order` order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PoolMembers {
    pub members: [PoolMember; MAX_POOL_BACKENDS as usize],
}

/// Bytes of a `POOL_TABLES` value: [`MAGLEV_TABLE_SIZE`] slots rounded up to a page.
pub const POOL_TABLE_BYTES: usize = 4096;

/// A pool's Maglev lookup table (`POOL_TABLES`, by pool slot): slot `flow_hash %
/// MAGLEV_TABLE_SIZE` -> member index (< [`MAX_POOL_BACKENDS`], so one byte). The bytes
/// past [`MAGLEV_TABLE_SIZE`] are never read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PoolTable {
    pub slots: [u8; POOL_TABLE_BYTES],
}

/// Capacity of `FLOWS`, an LRU map of the pool flows seen, to the member chosen: a flow
/// stays on its member while the pool changes (Katran's LRU), until that member goes down.
/// About 5 MiB of kernel memory at this size.
pub const MAX_FLOWS: u32 = 65536;

/// Key of `FLOWS`: a client's flow to a pool route's public port. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    pub client_addr: u32,
    pub client_port: u16,
    pub public_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The key of a flow (all network byte order), padding zero.
    #[inline(always)]
    pub const fn new(client_addr: u32, client_port: u16, public_port: u16, protocol: u8) -> Self {
        FlowKey {
            client_addr,
            client_port,
            public_port,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// Value of `FLOWS`: the member a flow went to, by index and by address (the index alone
/// could name another backend after the pool changed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowValue {
    pub addr: u32,
    pub port: u16,
    pub member: u16,
}

/// Capacity of `HAIRPIN`: flows from private legs to the public address at once. An LRU
/// map, so a full table forgets the flow used longest ago, not the newest.
pub const MAX_HAIRPIN: u32 = 65536;
/// A hairpin entry either end of which sent within this time is live: another client's flow
/// that would translate to the same tuple is refused (`PASS_HAIRPIN_CLASH`) rather than
/// taking its replies. Two minutes: longer than TCP's TIME_WAIT (60 s on Linux), so a
/// closed connection's tuple is not handed on while its last segments may still arrive.
pub const HAIRPIN_LIVE_NS: u64 = 120_000_000_000;

/// Key of `HAIRPIN`: a flow from a private host to `public:P`, as the route's backend
/// sees it after translation (`public:client_port -> backend`) and so as its replies carry
/// it back (`backend -> public:client_port`). The client's port is kept, so the key and
/// the reply's tuple are the same bytes and the reply needs one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct HairpinKey {
    /// Backend IPv4 address, network byte order.
    pub backend_addr: u32,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// The private client's own source port (kept by the translation), network byte order.
    pub client_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl HairpinKey {
    /// The key of a hairpin flow to `backend_addr:backend_port` from a private client's
    /// `client_port` (all network byte order), padding zero.
    #[inline(always)]
    pub const fn new(
        backend_addr: u32,
        backend_port: u16,
        client_port: u16,
        protocol: u8,
    ) -> HairpinKey {
        HairpinKey {
            backend_addr,
            backend_port,
            client_port,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// Whose flow a `HAIRPIN` entry is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct HairpinValue {
    /// The private client's address, network byte order.
    pub client_addr: u32,
    pub _pad: u32,
    /// `Settings::now_ns` when either end last sent on this flow (the client, or the backend
    /// answering it): a flow quiet both ways for `HAIRPIN_LIVE_NS` may go to another client.
    pub seen_ns: u64,
}

/// New hairpin flows one private host (by source address) may open at once: a bucket of
/// this many, refilled by [`HAIRPIN_NEW_PER_SEC`] per second of the daemon's clock.
/// Refreshing a flow it holds costs nothing. Within a live flow's lifetime
/// ([`HAIRPIN_LIVE_NS`]) one host thus opens at most 256 + 32 * 120 = 4096 flows, a
/// sixteenth of [`MAX_HAIRPIN`], so it can neither evict everyone else's flows nor spray
/// the table's tuples on its own.
pub const HAIRPIN_NEW_BURST: u32 = 256;
/// Refill of each host's [`HAIRPIN_NEW_BURST`] bucket, per second.
pub const HAIRPIN_NEW_PER_SEC: u32 = 32;
/// Capacity of `HAIRPIN_QUOTA`, the buckets by host: an LRU map keyed by the host's
/// address (network byte order) whose value is the bucket's theoretical arrival time
/// (the generic cell rate algorithm: a new flow at `now` is allowed while that time is at most
/// `now + (burst - 1) * interval`, and moves it one interval on from `max(it, now)`). A host
/// quiet long enough to be forgotten starts again with a full bucket, as it would have
/// refilled anyway.
pub const MAX_HAIRPIN_HOSTS: u32 = 16384;
/// The interval between new flows at [`HAIRPIN_NEW_PER_SEC`], in ns.
pub const HAIRPIN_NEW_INTERVAL_NS: u64 = 1_000_000_000 / HAIRPIN_NEW_PER_SEC as u64;

/// ICMP answers the program itself makes (`too_big`), per CPU and tick of the daemon's
/// clock (one second): past it, the packet that would have been answered is dropped and
/// counted (`DROP_TX_BUDGET`). The kernel's own limit is 1000 per second in all
/// (`icmp_msgs_per_sec`); this keeps the program's answers as bounded, whatever a
/// sender's headers claim.
pub const TX_ANSWERS_PER_TICK: u32 = 64;
/// Segments the program sums to tell a complete checksum from a partial one
/// (`complete_checksum`), per CPU and tick: past it, a segment with the partial value is
/// taken as partial without summing, as a longer one than [`CSUM_CHECK_MAX`] always is
/// (counted, `CSUM_UNCHECKED`).
pub const CSUM_CHECKS_PER_TICK: u32 = 16384;

/// This CPU's budgets for the current tick (`BUDGETS`, a per-CPU array of one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Budget {
    /// `Settings::now_ns` of the tick the budgets below are for; another tick refills them.
    pub tick_ns: u64,
    /// ICMP answers left ([`TX_ANSWERS_PER_TICK`]).
    pub tx_left: u32,
    /// Checksum sums left ([`CSUM_CHECKS_PER_TICK`]).
    pub csum_left: u32,
}

/// Role of an interface the program is attached to: a bitmask. A one-armed gateway's one
/// NIC carries both the public address and the private network, and has both bits.
pub const ROLE_PUBLIC: u8 = 1;
pub const ROLE_PRIVATE: u8 = 2;

/// How frames leave through an interface after a rewrite.
/// `EGRESS_REDIRECT`: `bpf_redirect` straight to its transmit path.
/// `EGRESS_PASS`: hand the rewritten packet to the kernel stack, which routes it. Used where a
/// redirect would be silently dropped (a veth whose peer has neither GRO nor XDP).
/// The program reads it from the egress leg's `Interface` (its `LEG_CACHE` slot).
pub const EGRESS_PASS: u8 = 0;
pub const EGRESS_REDIRECT: u8 = 1;

/// What the L4 checksums of frames arriving on a leg can be.
/// `CSUM_FULL`: always complete, as a wire delivers them (a physical NIC).
/// `CSUM_MAY_BE_PARTIAL`: possibly only the pseudo-header's sum (CHECKSUM_PARTIAL), left
/// for an offload to finish: a veth, tap or virtio device, whose sender (a local stack, or a
/// bridge that coalesced frames with GRO and split them again) may never have completed
/// them. XDP cannot see the skb's checksum state, so the program recognises such a frame by
/// its checksum field and hands it, rewritten, to the kernel, which keeps that state.
pub const CSUM_FULL: u8 = 0;
pub const CSUM_MAY_BE_PARTIAL: u8 = 1;

/// The longest TCP/UDP segment (header and payload) whose checksum the program sums to
/// tell a complete checksum from a partial one: that of a 1500-byte IPv4 packet. A longer
/// one with the partial value (a coalesced frame, or a jumbo frame) is taken as partial.
pub const CSUM_CHECK_MAX: u32 = 1480;

/// The program's per-CPU scratch buffer for that sum (`CSUM_SCRATCH`): three of
/// `bpf_csum_diff`'s 512-byte steps, more than [`CSUM_CHECK_MAX`] rounded up to a word.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CsumScratch {
    pub bytes: [u8; 1536],
}

/// Per-interface facts, keyed by ifindex.
///
/// Aligned to 4 although every field is bytes: the program copies a leg out of its map
/// entry on every packet, and at alignment 1 LLVM's BPF target loads the MAC a byte at a
/// time and shifts it together (twelve instructions where two loads do). The layout and
/// size (12 bytes) are the same either way.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Interface {
    pub role: u8,
    pub egress: u8,
    /// `CSUM_FULL` or `CSUM_MAY_BE_PARTIAL`.
    pub checksum: u8,
    pub _pad: u8,
    /// The leg's own MAC address. The program translates only frames sent to it: one
    /// that a switch floods to every port (it has not learnt where the destination is)
    /// belongs to another machine, e.g. the active gateway of a failover pair, and is
    /// passed untouched (`PASS_NOT_FOR_US`). All zero: unknown (a leg without a MAC), no
    /// check.
    pub mac: [u8; 6],
    pub _pad2: [u8; 2],
}

/// Slots of `LEG_CACHE`, a direct-mapped copy of `INTERFACES`: the leg of ifindex `i` is
/// in slot `i % LEG_CACHE_SLOTS` unless another leg took that slot first. An array lookup
/// (inlined by the verifier) replaces a hash lookup on every packet; a leg that found its
/// slot taken is still found in `INTERFACES`, which holds every leg.
pub const LEG_CACHE_SLOTS: u32 = 256;

/// A `LEG_CACHE` slot: the leg whose facts it holds (ifindex 0, which no interface has:
/// none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LegSlot {
    pub ifindex: u32,
    pub iface: Interface,
}

/// Slots of `NEXT_HOPS`, the program's per-CPU cache of FIB answers for the two paths of
/// a route (from the world to its backend, and back). Direct-mapped by [`next_hop_slot`];
/// two routes sharing a slot only cost each other lookups, as every entry says which
/// question it answers.
pub const NEXT_HOP_SLOTS: u32 = 4096;

/// How many packets one `NEXT_HOPS` answer serves before the FIB is asked again, even
/// within one tick of the daemon's clock: while the daemon is stopped that clock stands
/// still, and the FIB's changes must still be followed.
pub const NEXT_HOP_USES: u16 = 256;

/// The `NEXT_HOPS` slot of route `route_id`'s packets in one direction.
pub const fn next_hop_slot(route_id: u32, outbound: bool) -> u32 {
    ((route_id << 1) | outbound as u32) & (NEXT_HOP_SLOTS - 1)
}

/// The `NEXT_HOPS` slot of the packets from the world to member `member` of route
/// `route_id`'s pool (0 for a route with one backend: [`next_hop_slot`]'s). Each member is
/// a neighbour of its own, so the members of one pool sharing the route's slot would evict
/// each other's answer on nearly every packet of a flood spread over them; members at
/// [`POOL_HOP_STRIDE`] slots apart keep a pool's 64 in distinct slots, away from the
/// neighbouring route ids of routes added together.
pub const fn member_next_hop_slot(route_id: u32, member: u32) -> u32 {
    next_hop_slot(
        route_id.wrapping_add(member.wrapping_mul(POOL_HOP_STRIDE)),
        false,
    )
}

/// Route ids between the `NEXT_HOPS` slots of two consecutive members of a pool: odd, so
/// that a pool's members never share a slot.
pub const POOL_HOP_STRIDE: u32 = 613;

/// A FIB answer kept for reuse: what `bpf_fib_lookup` said (success) to one question, the
/// lookup's inputs but the packet length, during one tick of the daemon's clock. Only the
/// program reads and writes these.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NextHop {
    /// `Settings::now_ns` when the FIB answered; 0: empty.
    pub now_ns: u64,
    /// The question, network byte order: source, destination, ingress ifindex, protocol
    /// and TOS, as the FIB got them.
    pub saddr: u32,
    pub daddr: u32,
    pub iif: u32,
    pub protocol: u8,
    pub tos: u8,
    /// Packets this answer may still serve (from [`NEXT_HOP_USES`]).
    pub uses: u16,
    /// The answer: egress ifindex and the frame's new MAC addresses.
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The largest IPv4 total length the FIB let through with this answer: a longer
    /// packet asks it again, as it may be too big for the egress leg.
    pub max_len: u16,
    pub _pad: [u8; 6],
}

/// Gateway-wide settings: the single entry of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Settings {
    /// The public IPv4 address, network byte order. 0 disables forwarding.
    pub public_addr: u32,
    /// The largest TCP MSS every leg can carry (the smallest leg MTU less 40 bytes of IPv4
    /// and TCP headers), host byte order: SYN and SYN-ACK segments announcing more are
    /// clamped to it, so neither end ever sends a segment a leg must drop. 0: no clamping.
    pub mss: u16,
    pub _pad: u16,
    /// CLOCK_MONOTONIC in nanoseconds, rewritten by the daemon every second. The program
    /// stamps `last_seen_ns` with it: a per-packet `bpf_ktime_get_ns` cost more than every
    /// map lookup of the fast path, and idle reclaim counts in days.
    pub now_ns: u64,
}

/// Per-route, per-CPU traffic counters. `inbound` is client to backend, `outbound` the replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RouteCounters {
    pub inbound_packets: u64,
    pub inbound_bytes: u64,
    pub outbound_packets: u64,
    pub outbound_bytes: u64,
    /// `Settings::now_ns` (CLOCK_MONOTONIC, one-second steps) when this CPU last saw a packet.
    pub last_seen_ns: u64,
}

/// Indexes of `GLOBAL_COUNTERS`: one per verdict the program can reach, so nothing it does
/// is silent.
pub mod counter {
    /// Not IPv4 (ARP, IPv6, ...).
    pub const PASS_NOT_IPV4: u32 = 0;
    /// IPv4 but not TCP or UDP (ICMP, ...).
    pub const PASS_NOT_TCP_UDP: u32 = 1;
    /// An IP fragment: ports are not in every fragment, so the kernel reassembles.
    pub const PASS_FRAGMENT: u32 = 2;
    /// IPv4 header with options, which the program does not parse.
    pub const PASS_IP_OPTIONS: u32 = 3;
    /// Truncated headers: let the kernel count and drop them.
    pub const PASS_MALFORMED: u32 = 4;
    /// TCP/UDP with no matching route (including the gateway's own services).
    pub const PASS_NO_ROUTE: u32 = 5;
    /// Rewritten and redirected by XDP.
    pub const FWD_REDIRECT: u32 = 6;
    /// Rewritten, then passed to the kernel because the FIB lookup did not succeed
    /// (no neighbour entry yet, unreachable, ...).
    pub const FWD_PASS_FIB: u32 = 7;
    /// Rewritten, then passed to the kernel because the egress cannot take redirects (its
    /// `Interface` says `EGRESS_PASS`, or it is not a leg).
    pub const FWD_PASS_EGRESS: u32 = 8;
    /// Rewritten, then passed so the kernel sends ICMP time exceeded.
    pub const FWD_PASS_TTL: u32 = 9;
    /// Rewritten, then passed because the packet is larger than the egress MTU and may be
    /// fragmented (DF clear; the kernel fragments it), or its ingress leg cannot send the
    /// ICMP answer back (it does not take redirects).
    pub const FWD_PASS_FRAG_NEEDED: u32 = 10;
    /// From a route's backend address and port but addressed to the gateway itself (the
    /// FIB does not forward it): a reply on the gateway's own connection to that backend,
    /// left untouched. Also such a packet to the public address that answers no hairpin
    /// flow (the gateway's own connection from the public address, or the answer to a
    /// packet someone made as from it): never taken as a request to another route.
    pub const PASS_LOCAL: u32 = 11;
    /// From a private leg to a route's public port, but the tuple it would be translated
    /// to (`public:its port -> backend`) belongs to another private host's live flow: the
    /// kernel gets it untouched (and refuses it), the client retries from another port.
    /// (Also a hairpin flow whose entry could not be written.)
    pub const PASS_HAIRPIN_CLASH: u32 = 12;
    /// Rewritten, then passed to the kernel because its L4 checksum was partial (only the
    /// pseudo-header's sum, on a `CSUM_MAY_BE_PARTIAL` leg): the kernel keeps the skb's
    /// checksum state and the egress completes it; a redirect would lose that state.
    pub const FWD_PASS_PARTIAL_CSUM: u32 = 13;
    /// A TCP/UDP/ICMP frame whose Ethernet destination is not the leg's own MAC (flooded
    /// by a switch, meant for another machine such as the active gateway of a failover
    /// pair, or broadcast): passed untouched, so a standby never duplicates traffic.
    pub const PASS_NOT_FOR_US: u32 = 14;
    /// A DF packet too big for its egress leg: answered with ICMP "fragmentation needed"
    /// (the egress MTU as next-hop MTU, quoting the packet as its sender sent it), sent
    /// back out of the leg it came in on (a redirect into that leg).
    pub const TX_FRAG_NEEDED: u32 = 15;
    /// From a private host to a route's public port, a new hairpin flow past the host's
    /// bucket (`HAIRPIN_NEW_BURST`, `HAIRPIN_NEW_PER_SEC`): passed untouched, no entry made.
    pub const PASS_HAIRPIN_LIMIT: u32 = 16;
    /// A DF packet too big for its egress that this CPU's budget of ICMP answers for the
    /// tick (`TX_ANSWERS_PER_TICK`) could not answer: dropped (it fits nowhere).
    pub const DROP_TX_BUDGET: u32 = 17;
    /// Not a verdict (the packet gets one too): a segment with the partial checksum value
    /// taken as partial without being summed, this CPU's budget of sums for the tick
    /// (`CSUM_CHECKS_PER_TICK`) being spent.
    pub const CSUM_UNCHECKED: u32 = 18;
    /// An ICMP error about a translated flow that no packet of that flow could have
    /// caused, as far as the error itself tells (`lb_ebpf::icmp_error_plausible`, and the
    /// leg it came in on): passed untouched, not translated to the flow's other end.
    pub const PASS_ICMP_IMPLAUSIBLE: u32 = 19;
    /// Arrived on a public leg (addressed to its MAC) from a source no packet from there may
    /// carry (`GUARD_REFUSED_SOURCE`: the gateway's own addresses, a private-only leg's
    /// subnets, 0/8, 127/8, 169.254/16, multicast, 240/4 and broadcast): dropped. Forwarded,
    /// its reply would come back from a backend to the gateway itself (the reflection loop
    /// of issue 24) or to a host inside.
    pub const DROP_PUBLIC_SOURCE: u32 = 20;
    /// Arrived on a public leg (not a one-armed one) for an address other than the public
    /// one that the kernel would forward into a private leg: dropped, as nothing from
    /// outside may reach a private address except through a route.
    pub const DROP_TO_PRIVATE: u32 = 21;
    /// Leaving a public leg (the tc egress guard) from an inside address to one that is not
    /// inside: something the kernel forwarded untranslated (a fragment, a packet with IP
    /// options, a backend's own traffic without the admin's masquerade): dropped.
    pub const DROP_PRIVATE_SOURCE: u32 = 22;
    /// Number of counters.
    pub const COUNT: u32 = 23;
    /// Slots of `GLOBAL_COUNTERS`: more than `COUNT`, so that a build with new verdicts
    /// still fits the map an earlier build pinned.
    pub const SLOTS: u32 = 32;

    /// Names for logs and metrics, indexed like the constants above.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ipv4",
        "pass_not_tcp_udp",
        "pass_fragment",
        "pass_ip_options",
        "pass_malformed",
        "pass_no_route",
        "fwd_redirect",
        "fwd_pass_fib",
        "fwd_pass_egress",
        "fwd_pass_ttl",
        "fwd_pass_frag_needed",
        "pass_local",
        "pass_hairpin_clash",
        "fwd_pass_partial_csum",
        "pass_not_for_us",
        "tx_frag_needed",
        "pass_hairpin_limit",
        "drop_tx_budget",
        "csum_unchecked",
        "pass_icmp_implausible",
        "drop_public_source",
        "drop_to_private",
        "drop_private_source",
    ];

    /// Whether counter `index` is a packet's verdict (each packet gets exactly one) rather
    /// than an event on its way.
    pub const fn is_verdict(index: u32) -> bool {
        index != CSUM_UNCHECKED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn map_types_have_the_sizes_the_kernel_sees() {
        assert_eq!(frontend_slot(65535, PROTO_UDP), Some(FRONTEND_SLOTS - 1));
        assert_eq!(frontend_slot(65535, PROTO_TCP), Some(65535));
        assert_eq!(frontend_slot(0, PROTO_UDP), Some(65536));
        assert_eq!(frontend_slot(80, 1), None);
        assert_eq!(size_of::<Backend>(), 12);
        assert_eq!(size_of::<PoolMember>(), 8);
        assert_eq!(size_of::<PoolMembers>(), 8 * MAX_POOL_BACKENDS as usize);
        assert!(size_of::<PoolTable>() >= MAGLEV_TABLE_SIZE as usize);
        const { assert!(MAX_POOL_BACKENDS <= 256, "a member index is one table byte") };
        assert_eq!(size_of::<FlowKey>(), 12);
        assert_eq!(size_of::<FlowValue>(), 8);
        assert_eq!(size_of::<ReverseKey>(), 8);
        assert_eq!(size_of::<ReverseValue>(), 8);
        assert_eq!(size_of::<Interface>(), 12);
        assert_eq!(size_of::<LegSlot>(), 16);
        assert_eq!(size_of::<Settings>(), 16);
        assert_eq!(size_of::<RouteCounters>(), 40);
        assert_eq!(size_of::<HairpinKey>(), 12);
        assert_eq!(size_of::<HairpinValue>(), 16);
        assert_eq!(size_of::<NextHop>(), 48);
        assert_eq!(size_of::<Budget>(), 16);
        assert_eq!(size_of::<GuardKey>(), 8);
        assert!(size_of::<CsumScratch>() >= (CSUM_CHECK_MAX as usize).next_multiple_of(4));
        assert_eq!(size_of::<CsumScratch>() % 512, 0);
        // Each route's two paths have slots of their own, wrapping around the cache.
        assert_eq!(next_hop_slot(0, false), 0);
        assert_eq!(next_hop_slot(0, true), 1);
        assert_eq!(next_hop_slot(NEXT_HOP_SLOTS / 2, true), 1);
        assert!(next_hop_slot(MAX_ROUTES - 1, true) < NEXT_HOP_SLOTS);
        const { assert!(counter::COUNT <= counter::SLOTS) };
    }

    #[test]
    fn a_pools_members_have_next_hop_slots_of_their_own() {
        for route_id in [0, 1, 7, MAX_ROUTES / 2, MAX_ROUTES - 1] {
            assert_eq!(
                member_next_hop_slot(route_id, 0),
                next_hop_slot(route_id, false),
                "a one-backend route keeps its slot"
            );
            let mut taken = [false; NEXT_HOP_SLOTS as usize];
            for m in 0..MAX_POOL_BACKENDS {
                let s = member_next_hop_slot(route_id, m);
                assert!(
                    s < NEXT_HOP_SLOTS && s.is_multiple_of(2),
                    "an inbound slot: {s}"
                );
                assert!(
                    !taken[s as usize],
                    "route {route_id}: member {m} shares {s}"
                );
                taken[s as usize] = true;
            }
            // The next few routes (added with it) keep clear of its members' slots.
            for m in 1..MAX_POOL_BACKENDS {
                for near in 1..8 {
                    assert_ne!(
                        member_next_hop_slot(route_id, m),
                        next_hop_slot(route_id + near, false)
                    );
                }
            }
        }
    }
}
