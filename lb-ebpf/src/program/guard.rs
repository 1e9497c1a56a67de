//! The public legs' guards (issue 24, items 1 and 3): which sources may arrive there, which
//! destinations they may reach, and what may leave there untranslated.
//!
//! The kernel's reverse-path and martian checks never see what XDP redirects, so the
//! program checks the source itself, before anything else looks at the packet: every IPv4
//! frame sent to a public leg's MAC, fragments and packets with options included. The
//! rules live in `SOURCE_GUARD`, an LPM trie the daemon fills (the gateway's own addresses,
//! its legs' subnets, the fixed bogons), so one lookup answers, and only for addresses
//! whose first octet `GUARD_OCTETS` says it has rules for. What the program passes to
//! the kernel untranslated and the kernel then forwards out of a public leg is seen only on
//! the way out: `srvgate_egress`, a tc program on each public leg, drops it there (after
//! netfilter's POSTROUTING, so an admin's masquerade of the backends' own traffic has
//! already given it the gateway's address).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    macros::{classifier, map},
    maps::{lpm_trie::Key, Array, LpmTrie},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    counter, GUARD_INSIDE, GUARD_OCTETS_SLOTS, GUARD_REFUSED_SOURCE, ROLE_PRIVATE, ROLE_PUBLIC,
    SOURCE_GUARD_ENTRIES,
};
use lb_ebpf::{addressed_to, zero_in_place, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IPV4};

use super::{
    count,
    fib::route_toward,
    maps::{interface, SETTINGS},
};

/// What the gateway knows about addresses, by prefix (`lb_common::GUARD_*` bits).
#[map(name = "SOURCE_GUARD")]
static SOURCE_GUARD: LpmTrie<u32, u32> = LpmTrie::with_max_entries(SOURCE_GUARD_ENTRIES, 0);
/// Which first octets `SOURCE_GUARD` has anything for (`lb_common::GUARD_OCTETS_SLOTS`).
#[map(name = "GUARD_OCTETS")]
static GUARD_OCTETS: Array<u32> = Array::with_max_entries(GUARD_OCTETS_SLOTS, 0);

/// tcx's verdicts: let the next program (or the stack) have it; drop it.
const TCX_NEXT: i32 = -1;
const TCX_DROP: i32 = 2;

/// The `GUARD_*` bits of the longest prefix holding `addr` (network byte order); 0 if none.
#[inline(always)]
fn guard_bits(addr: u32) -> u32 {
    if GUARD_OCTETS
        .get(u32::from_be(addr) >> 24)
        .is_none_or(|&any| any == 0)
    {
        return 0;
    }
    // The layout of `lb_common::GuardKey`, which the daemon writes.
    SOURCE_GUARD.get(Key::new(32, addr)).copied().unwrap_or(0)
}

/// The verdict on a frame, before the program looks further at it, by the leg it came in on:
/// `Some(XDP_DROP)` (counted) for a frame sent to a public leg's MAC whose source no
/// packet from outside may carry, or whose destination (not the public address) the
/// kernel would forward into a private leg; `None`: carry on. Private legs, and frames not
/// sent to the leg's MAC (flooded, broadcast; the kernel forwards none of those), are not
/// looked at.
///
/// The destination check is skipped on a one-armed leg (public and private at once): the
/// inside is on the same wire there, and whether a frame to an inside address came from
/// the world or from inside is the source's question, which `inside_host` answers only for
/// the public address.
#[inline(always)]
pub(super) fn public_leg_guard(
    ctx: &XdpContext,
    eth: *const EthHdr,
    ip: *const Ipv4Hdr,
) -> Option<u32> {
    // SAFETY: `ctx.ctx` is the xdp_md the kernel passed this program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let iface = interface(ifindex)?;
    // SAFETY: `eth` and `ip` come from `ptr_at` in the caller: inside the packet.
    let (dst_mac, saddr, daddr) = unsafe { (&(*eth).dst, (*ip).saddr, (*ip).daddr) };
    if iface.role & ROLE_PUBLIC == 0 || !addressed_to(dst_mac, &iface.mac) {
        return None;
    }
    if guard_bits(saddr) & GUARD_REFUSED_SOURCE != 0 {
        count(counter::DROP_PUBLIC_SOURCE);
        return Some(xdp_action::XDP_DROP);
    }
    if iface.role & ROLE_PRIVATE != 0 {
        return None;
    }
    let public_addr = SETTINGS.get(0).map_or(0, |s| s.public_addr);
    if daddr == public_addr {
        return None;
    }
    // Rare on a public leg (the gateway's other addresses, or traffic that is not the
    // gateway's at all), so the FIB is asked every time: it also knows the networks
    // routed behind a private leg, which the legs' own subnets do not.
    let mut fib = core::mem::MaybeUninit::uninit();
    let fib: &mut FibParams = zero_in_place(&mut fib);
    let rc = route_toward(ctx, fib, ifindex, daddr, BPF_FIB_LOOKUP_SKIP_NEIGH);
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64
        && interface(fib.ifindex).is_some_and(|leg| leg.role & ROLE_PRIVATE != 0)
    {
        count(counter::DROP_TO_PRIVATE);
        return Some(xdp_action::XDP_DROP);
    }
    None
}

/// On each public leg's egress (tcx): drops an IPv4 packet from an inside address
/// (`GUARD_INSIDE`) to one that is not inside, i.e. anything the kernel would send to the
/// world with a private source: a backend's fragments or packets with IP options, which
/// XDP leaves to the kernel untranslated, or its own traffic when no masquerade rewrote
/// it. What XDP redirects never passes here (a redirect skips the qdisc layer), and what
/// it passes to the kernel translated carries the public address.
#[classifier]
pub fn srvgate_egress(ctx: TcContext) -> i32 {
    if ctx.skb.protocol() != u32::from(ETH_P_IPV4.to_be()) {
        return TCX_NEXT;
    }
    // Source and destination, read by the helper: an egress skb's headers are linear,
    // but the helper does not depend on it. A frame too short for them is no IPv4 packet
    // the kernel built, and is left alone.
    let Ok(addrs) = ctx.load::<[u32; 2]>(ETH_HLEN + 12) else {
        return TCX_NEXT;
    };
    let [saddr, daddr] = addrs;
    if guard_bits(saddr) & GUARD_INSIDE != 0 && guard_bits(daddr) & GUARD_INSIDE == 0 {
        count(counter::DROP_PRIVATE_SOURCE);
        return TCX_DROP;
    }
    TCX_NEXT
}
