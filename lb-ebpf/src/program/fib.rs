//! The next hop (the FIB, cached per route in `NEXT_HOPS`), the way out, packets too big for
//! their egress, and MSS clamping.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC,
    },
    helpers::generated::{
        bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
        bpf_xdp_get_buff_len,
    },
    programs::XdpContext,
};
use lb_common::{counter, NextHop, EGRESS_REDIRECT, NEXT_HOP_USES};
use lb_ebpf::{
    clamped_mss, frag_needed_headers, ipv4_csum_ttl_decrement, mss_csum, EthHdr, Ipv4Hdr, ETH_HLEN,
    ETH_P_IPV4, FRAG_NEEDED_HLEN, ICMP_QUOTE_LEN, IP_DF, TCPOPT_MSS, TCPOPT_NOP, TCP_HLEN, TCP_SYN,
};

use super::maps::{interface, NEXT_HOPS};
use super::parse::ptr_at;
use super::{budget, count, drop, pass, Truncated};

pub(super) const AF_INET: u8 = 2;

/// Lowers the MSS option of a SYN or SYN-ACK in the TCP header at `l4` to `max`, keeping
/// the checksum right, so that neither end sends segments bigger than the smallest leg
/// carries (as `TCPMSS --clamp-mss-to-pmtu` would). The option is looked for where every
/// TCP stack puts it: first, after up to three NOPs. Constant offsets only: a walk with
/// a variable offset made LLVM shift the packet pointer, which the verifier refuses.
#[inline(always)]
pub(super) fn clamp_mss(ctx: &XdpContext, l4: usize, l4_check: *mut u16, max: u16, partial: bool) {
    if max == 0 {
        return;
    }
    let (Ok(doff), Ok(flags)) = (ptr_at::<u8>(ctx, l4 + 12), ptr_at::<u8>(ctx, l4 + 13)) else {
        return;
    };
    // SAFETY: both come from `ptr_at`: inside the packet.
    let (doff, flags) = unsafe { (*doff, *flags) };
    // The header must hold the options looked at: 20 bytes plus at least 4.
    if flags & TCP_SYN == 0 || doff >> 4 < 6 {
        return;
    }
    let _ = clamp_mss_at::<0>(ctx, l4, l4_check, max, partial)
        || clamp_mss_at::<1>(ctx, l4, l4_check, max, partial)
        || clamp_mss_at::<2>(ctx, l4, l4_check, max, partial)
        || clamp_mss_at::<3>(ctx, l4, l4_check, max, partial);
}

/// The MSS option after `NOPS` NOP options, if it is there: clamped; returns whether it
/// was found (so the next position is not tried).
#[inline(always)]
pub(super) fn clamp_mss_at<const NOPS: usize>(
    ctx: &XdpContext,
    l4: usize,
    l4_check: *mut u16,
    max: u16,
    partial: bool,
) -> bool {
    let at = l4 + TCP_HLEN;
    let Ok(option) = ptr_at::<[u8; 4]>(ctx, at + NOPS) else {
        return false;
    };
    if NOPS > 0 {
        // Inside the bytes before the MSS option, which `option` shows exist.
        let Ok(before) = ptr_at::<[u8; 3]>(ctx, at) else {
            return false;
        };
        // SAFETY: from `ptr_at`: inside the packet.
        if unsafe { &*before }[..NOPS].iter().any(|&b| b != TCPOPT_NOP) {
            return false;
        }
    }
    // SAFETY: from `ptr_at`: the 4 bytes lie inside the packet, which the program may
    // write; nothing else touches it during the run.
    let option = unsafe { &mut *option };
    if option[0] != TCPOPT_MSS || option[1] != 4 {
        return false;
    }
    let old = u16::from_be_bytes([option[2], option[3]]);
    if let Some(new) = clamped_mss(old, max) {
        [option[2], option[3]] = new.to_be_bytes();
        // A partial checksum does not cover the options yet: offload sums them later.
        if !partial {
            // SAFETY: `l4_check` comes from `ptr_at`: inside the packet, written by
            // nothing else during the run.
            unsafe { *l4_check = mss_csum(*l4_check, TCP_HLEN + NOPS + 2, old, new) };
        }
    }
    true
}

/// The address the gateway itself would send from to reach `addr` (the kernel's own
/// choice: its route's preferred source, else the egress leg's address on that
/// subnet), if it has one. Overwrites `fib`.
#[inline(always)]
pub(super) fn own_address_toward(
    ctx: &XdpContext,
    fib: &mut FibParams,
    ifindex: u32,
    addr: u32,
) -> Option<u32> {
    let rc = route_toward(
        ctx,
        fib,
        ifindex,
        addr,
        BPF_FIB_LOOKUP_SKIP_NEIGH | BPF_FIB_LOOKUP_SRC,
    );
    // SAFETY: plain integers in a union the kernel wrote (or we zeroed).
    let src = unsafe { fib.__bindgen_anon_3.ipv4_src };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && src != 0).then_some(src)
}

/// A FIB lookup of `addr` as if a packet to it had arrived on `ifindex`, without the
/// MTU check, with `flags`.
#[inline(always)]
pub(super) fn route_toward(
    ctx: &XdpContext,
    fib: &mut FibParams,
    ifindex: u32,
    addr: u32,
    flags: u32,
) -> i64 {
    fib.family = AF_INET;
    fib.l4_protocol = 0;
    fib.__bindgen_anon_1.tot_len = 0;
    fib.__bindgen_anon_2.tos = 0;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = 0;
    fib.__bindgen_anon_4.ipv4_dst = addr;
    // SAFETY: `fib` is a live, exclusive `FibParams` of the size passed, and `ctx.ctx`
    // the program's context.
    unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib as *mut FibParams,
            size_of::<FibParams>() as i32,
            flags,
        )
    }
}

/// A packet whose sender forbade fragmenting it (DF) and that is too big for its egress
/// leg (`rc` says so, `fib` holds the leg's MTU): answered here, before any rewrite,
/// with ICMP "fragmentation needed" from `from` (the gateway's address on the sender's
/// side: the public address for a client of the world, given; for a private host, the
/// kernel's own source toward it, looked up here, so only on this rare path) quoting
/// it as sent, out of the leg it came in on (a redirect into it). The kernel could not: it
/// would see it rewritten, and answer a source that is the public address or quote a
/// tuple the sender never used. `None`: forward as usual (DF clear, the kernel
/// fragments it; or the ingress leg cannot take XDP's transmit).
#[inline(always)]
pub(super) fn too_big(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    fib: &mut FibParams,
    rc: i64,
    (ifindex, now): (u32, u64),
    from: Option<u32>,
) -> Result<Option<u32>, Truncated> {
    if rc != BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return Ok(None);
    }
    // SAFETY: `ip` comes from `ptr_at`: inside the packet.
    let (frag_off, to, tot_len) = unsafe {
        (
            u16::from_be((*ip).frag_off),
            (*ip).saddr,
            u16::from_be((*ip).tot_len),
        )
    };
    // The answer leaves by a redirect into the ingress leg itself, if it takes
    // redirects. Not XDP_TX: on a veth (kernel 6.18) frames sent back
    // that way never reached the peer's stack (measured in the mtu lab: the leg
    // counted 25 xdp_tx, no error, the sender's IP layer received nothing), while a
    // redirect into the same leg is what the one-armed path does all the time.
    if frag_off & IP_DF == 0 || !takes_redirects(ifindex) {
        return Ok(None);
    }
    // The FIB judged the length the header claims. A frame shorter than that is what the
    // kernel drops as truncated, and answering it would let 60-byte frames claiming
    // 64 KiB buy an ICMP answer each, to any source they name.
    // SAFETY: `ctx.ctx` is the program's context, all the helper reads.
    let real_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    if real_len < ETH_HLEN as u64 + u64::from(tot_len) {
        return Ok(Some(pass(counter::PASS_MALFORMED)));
    }
    // What the program sends of its own is bounded, as the kernel bounds its ICMP; a
    // packet that fits nowhere and is not answered is dropped (counted).
    match budget(now) {
        Some(b) if b.tx_left > 0 => b.tx_left -= 1,
        _ => return Ok(Some(drop(counter::DROP_TX_BUDGET))),
    }
    // SAFETY: plain integer in a union the kernel wrote on FRAG_NEEDED.
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
    let Some(from) = from.or_else(|| own_address_toward(ctx, fib, ifindex, to)) else {
        return Ok(None);
    };
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // The quote must be there before anything moves.
    ptr_at::<[u8; ICMP_QUOTE_LEN]>(ctx, ETH_HLEN)?;
    // SAFETY: from `ptr_at`: inside the packet.
    let (dst_mac, src_mac) = unsafe { ((*eth).src, (*eth).dst) };
    // Room in front for the answer's IPv4 and ICMP headers; the old IPv4 header and
    // 8 bytes of L4 stay where they are and become the quote.
    // SAFETY: `ctx.ctx` is the program's context; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(FRAG_NEEDED_HLEN as i32)) } != 0 {
        // No headroom (XDP guarantees 256 bytes, so never seen). The helper call ended
        // every packet pointer the caller holds, so the packet goes to the kernel as
        // it is, which fails it as it would without srvgate.
        return Ok(Some(pass(counter::FWD_PASS_FRAG_NEEDED)));
    }
    let keep = (ETH_HLEN + FRAG_NEEDED_HLEN + ICMP_QUOTE_LEN) as i64;
    // SAFETY: as above; shrinking (frags first, then the linear part) never fails for
    // a frame longer than `keep`, and if it did the trailing bytes lie beyond the
    // answer's total length, where receivers ignore them.
    unsafe {
        let len = bpf_xdp_get_buff_len(ctx.ctx) as i64;
        if len > keep {
            bpf_xdp_adjust_tail(ctx.ctx, (keep - len) as i32);
        }
    }
    let out: *mut [u8; FRAG_NEEDED_HLEN] = ptr_at(ctx, ETH_HLEN)?;
    let quote: *const [u8; ICMP_QUOTE_LEN] = ptr_at(ctx, ETH_HLEN + FRAG_NEEDED_HLEN)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: every pointer comes from `ptr_at` after the last adjustment: inside the
    // packet, which the program may write and nothing else touches during the run.
    unsafe {
        *out = frag_needed_headers(from, to, mtu, &*quote);
        (*eth).dst = dst_mac;
        (*eth).src = src_mac;
        (*eth).proto = ETH_P_IPV4.to_be();
    }
    count(counter::TX_FRAG_NEEDED);
    // SAFETY: plain integers.
    Ok(Some(unsafe { bpf_redirect(ifindex, 0) } as u32))
}

/// Asks the kernel's FIB where the packet goes once it is from `saddr` to `daddr` (its
/// size and TOS as they are), and whether it fits there (`FRAG_NEEDED`, with the
/// egress MTU in `mtu_result`).
#[inline(always)]
pub(super) fn fib_lookup(
    ctx: &XdpContext,
    fib: &mut FibParams,
    ip: *mut Ipv4Hdr,
    ifindex: u32,
    protocol: u8,
    saddr: u32,
    daddr: u32,
) -> i64 {
    // SAFETY: `ip` comes from `ptr_at` (the header lies inside the packet); the fields
    // of the bindgen unions are plain integers, valid whatever was there; `fib` is a
    // live, exclusive `FibParams` of the size passed, and `ctx.ctx` the program's context.
    unsafe {
        fib.family = AF_INET;
        fib.l4_protocol = protocol;
        fib.__bindgen_anon_1.tot_len = u16::from_be((*ip).tot_len);
        fib.__bindgen_anon_2.tos = (*ip).tos;
        fib.ifindex = ifindex;
        fib.__bindgen_anon_3.ipv4_src = saddr;
        fib.__bindgen_anon_4.ipv4_dst = daddr;
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib as *mut FibParams,
            size_of::<FibParams>() as i32,
            0,
        )
    }
}

/// The FIB's answer for a route's packet (`question`: ingress ifindex, protocol, source
/// and destination as the packet will leave), left in `fib` as `fib_lookup` leaves it,
/// with the helper's code. The helper (a route lookup, then a neighbour lookup) is the
/// largest cost of the fast path, and a route's packets ask it the same question
/// thousands of times a second; so this CPU's `NEXT_HOPS` slot `slot` answers instead
/// while it holds a success for the same question from this tick of the daemon's clock
/// (`now`, one-second steps), with uses left, and the packet is no longer than one the
/// FIB let through (a longer one may be too big for the egress). Anything else asks the
/// FIB, and its success replaces the slot. Failures are never kept: the kernel path
/// they lead to (resolving a neighbour, an ICMP error) must see every packet.
#[inline(always)]
pub(super) fn route_cached(
    ctx: &XdpContext,
    fib: &mut FibParams,
    ip: *mut Ipv4Hdr,
    question: (u32, u8, u32, u32),
    slot: u32,
    now: u64,
) -> i64 {
    let (iif, protocol, saddr, daddr) = question;
    // SAFETY: `ip` comes from `ptr_at`: inside the packet.
    let (tot_len, tos) = unsafe { (u16::from_be((*ip).tot_len), (*ip).tos) };
    let Some(hop) = NEXT_HOPS.get_ptr_mut(slot) else {
        return fib_lookup(ctx, fib, ip, iif, protocol, saddr, daddr);
    };
    // SAFETY: `hop` points to this CPU's slot of a per-CPU array, valid for the
    // program's run; nothing else reads or writes it meanwhile (the daemon never does).
    let hop = unsafe { &mut *hop };
    if hop.now_ns == now
        && hop.uses > 0
        && hop.daddr == daddr
        && hop.saddr == saddr
        && hop.iif == iif
        && hop.protocol == protocol
        && hop.tos == tos
        && tot_len <= hop.max_len
    {
        hop.uses -= 1;
        fib.ifindex = hop.ifindex;
        fib.dmac = hop.dmac;
        fib.smac = hop.smac;
        return BPF_FIB_LKUP_RET_SUCCESS as i64;
    }
    let rc = fib_lookup(ctx, fib, ip, iif, protocol, saddr, daddr);
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        *hop = NextHop {
            now_ns: now,
            saddr,
            daddr,
            iif,
            protocol,
            tos,
            // This packet is the first of them.
            uses: NEXT_HOP_USES - 1,
            ifindex: fib.ifindex,
            dmac: fib.dmac,
            smac: fib.smac,
            max_len: tot_len,
            _pad: [0; 6],
        };
    }
    rc
}

/// Sends the rewritten packet on its way: straight out of the egress interface when the
/// FIB knows the next hop and the egress takes redirects, else up the kernel stack, which
/// routes the (already rewritten) packet itself.
#[inline(always)]
pub(super) fn forward(
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    protocol: u8,
    fib: &FibParams,
    rc: i64,
) -> u32 {
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return pass(counter::FWD_PASS_FRAG_NEEDED);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // NO_NEIGH above all: the kernel resolves the neighbour while forwarding this one.
        return pass(counter::FWD_PASS_FIB);
    }
    // SAFETY: `ip` comes from `ptr_at`: the header lies inside the packet.
    let ttl = unsafe { (*ip).ttl };
    if ttl <= 1 {
        return pass(counter::FWD_PASS_TTL);
    }
    if !takes_redirects(fib.ifindex) {
        return pass(counter::FWD_PASS_EGRESS);
    }
    // SAFETY: `eth` and `ip` come from `ptr_at`: both headers lie inside the packet,
    // which the program may write; bpf_redirect takes plain integers.
    unsafe {
        (*ip).check = ipv4_csum_ttl_decrement((*ip).check, ttl, protocol);
        (*ip).ttl = ttl - 1;
        (*eth).dst = fib.dmac;
        (*eth).src = fib.smac;
        count(counter::FWD_REDIRECT);
        bpf_redirect(fib.ifindex, 0) as u32
    }
}

/// Whether the leg `ifindex` takes XDP redirects (the daemon reads it from the device's
/// xdp-features): a redirect into a device that does not is dropped after the program
/// returns, where no counter sees it. Not a leg: no. Read from `LEG_CACHE` (an array
/// lookup the verifier inlines) rather than a devmap, whose lookup on every packet
/// cost more than a tenth of the program's time; `bpf_redirect` then finds the device
/// by index after the program returns, as the devmap's own redirect would.
#[inline(always)]
pub(super) fn takes_redirects(ifindex: u32) -> bool {
    interface(ifindex).is_some_and(|leg| leg.egress == EGRESS_REDIRECT)
}
