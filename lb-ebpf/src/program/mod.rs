//! The program by concern, as Katran's headers are: `maps` (the maps and the lookups every
//! path shares), `fib` (the next hop, packets too big for their egress, MSS clamping, the
//! way out), `nat` (rewriting addresses and ports with their checksums), `hairpin`, `icmp`
//! and `guard`. Here: the entry point, the verdicts' counters, the per-CPU budgets, and a
//! TCP/UDP frame's path (`try_srvgate`), which the crate's doc walks through.

use core::mem;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::bpf_xdp_get_buff_len,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    counter, member_next_hop_slot, next_hop_slot, Budget, ReverseKey, CSUM_CHECKS_PER_TICK,
    CSUM_MAY_BE_PARTIAL, ROLE_PRIVATE, ROLE_PUBLIC, TX_ANSWERS_PER_TICK,
};
use lb_ebpf::{
    addressed_to, ipv4_shape, is_partial_csum, l4_checksum_offset, l4_header_len,
    pseudo_header_sum, zero_in_place, EthHdr, Ipv4Hdr, Ipv4Shape, ETH_HLEN, ETH_P_IPV4, IPV4_HLEN,
    PROTO_ICMP,
};

mod fib;
mod guard;
mod hairpin;
mod icmp;
mod maps;
mod nat;
mod parse;

use fib::{route_cached, too_big};
use hairpin::{hairpin, inside_host};
use icmp::translate_icmp;
use maps::{
    backend_for, frontend, interface, BUDGETS, GLOBAL_COUNTERS, REVERSE, ROUTE_COUNTERS, SETTINGS,
};
use nat::{complete_checksum, rewrite, send_on};
use parse::{ptr_at, End, L4Frame};

struct Truncated;

#[xdp(frags)]
pub fn srvgate(ctx: XdpContext) -> u32 {
    match try_srvgate(&ctx) {
        Ok(action) => action,
        Err(Truncated) => pass(counter::PASS_MALFORMED),
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = GLOBAL_COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer, so a plain add is exact.
        // SAFETY: the map returned a pointer to this CPU's slot, valid for the whole run
        // of the program, and nothing else writes it meanwhile.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn pass(reason: u32) -> u32 {
    count(reason);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn drop(reason: u32) -> u32 {
    count(reason);
    xdp_action::XDP_DROP
}

/// This CPU's budgets for the daemon's tick `now`, refilled when the tick is another:
/// what bounds the work a sender can make the program do beyond rewriting its packet
/// (an ICMP answer, a checksum sum), whatever its headers say. Only the rare paths
/// look. While the daemon's clock stands still (the daemon stopped) nothing refills:
/// the program then does less, never more.
#[inline(always)]
fn budget(now: u64) -> Option<&'static mut Budget> {
    let b = BUDGETS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run; nothing
    // else reads or writes it meanwhile (the daemon never does).
    let b = unsafe { &mut *b };
    if b.tick_ns != now {
        *b = Budget {
            tick_ns: now,
            tx_left: TX_ANSWERS_PER_TICK,
            csum_left: CSUM_CHECKS_PER_TICK,
        };
    }
    Some(b)
}

#[inline(always)]
fn account(ctx: &XdpContext, ip: *const Ipv4Hdr, route_id: u32, inbound: bool, now: u64) {
    let Some(c) = ROUTE_COUNTERS.get_ptr_mut(route_id) else {
        return;
    };
    // The frame's bytes from its IPv4 total length: exact for a coalesced frame too
    // (up to 64 KiB), and no helper call on every packet. BIG TCP's frames carry 0
    // there; only they need the helper, which sums the linear part and the fragments.
    // SAFETY: `ip` comes from `ptr_at` in the caller: inside the packet.
    let tot_len = u16::from_be(unsafe { (*ip).tot_len });
    let bytes = if tot_len != 0 {
        ETH_HLEN as u64 + u64::from(tot_len)
    } else {
        // SAFETY: `ctx.ctx` is the xdp_md the kernel passed this program, which is all
        // the helper reads.
        unsafe { bpf_xdp_get_buff_len(ctx.ctx) }
    };
    // SAFETY: `c` points to this CPU's slot of a per-CPU array (valid for the program's
    // run, no other writer).
    unsafe {
        if inbound {
            (*c).inbound_packets += 1;
            (*c).inbound_bytes += bytes;
        } else {
            (*c).outbound_packets += 1;
            (*c).outbound_bytes += bytes;
        }
        (*c).last_seen_ns = now;
    }
}

#[inline(always)]
fn try_srvgate(ctx: &XdpContext) -> Result<u32, Truncated> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `eth` comes from `ptr_at`, which checked that the whole header lies
    // before `data_end`: inside the packet, which the program may read and write.
    if unsafe { (*eth).proto } != ETH_P_IPV4.to_be() {
        return Ok(pass(counter::PASS_NOT_IPV4));
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // Before the shape: fragments and packets with options are checked too.
    if let Some(action) = guard::public_leg_guard(ctx, eth, ip) {
        return Ok(action);
    }
    // SAFETY: `ip` comes from `ptr_at`, which checked that the whole header lies
    // before `data_end`: inside the packet, which the program may read and write.
    let (version_ihl, frag_off, protocol) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).frag_off),
            (*ip).protocol,
        )
    };
    match ipv4_shape(version_ihl, frag_off) {
        Ipv4Shape::Plain => {}
        Ipv4Shape::Options => return Ok(pass(counter::PASS_IP_OPTIONS)),
        Ipv4Shape::Fragment => return Ok(pass(counter::PASS_FRAGMENT)),
        Ipv4Shape::Invalid => return Ok(pass(counter::PASS_MALFORMED)),
    }
    if protocol == PROTO_ICMP {
        return translate_icmp(ctx, eth, ip);
    }
    let (Some(_), Some(check_off)) = (l4_header_len(protocol), l4_checksum_offset(protocol)) else {
        return Ok(pass(counter::PASS_NOT_TCP_UDP));
    };
    let l4 = ETH_HLEN + IPV4_HLEN;
    let frame = L4Frame::new(ctx, (eth, ip), protocol, (l4, check_off))?;

    // SAFETY: `ctx.ctx` is the xdp_md the kernel passed this program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(iface) = interface(ifindex) else {
        return Ok(pass(counter::PASS_NO_ROUTE));
    };
    // SAFETY: `eth` comes from `ptr_at`: inside the packet.
    if !addressed_to(unsafe { &(*eth).dst }, &iface.mac) {
        return Ok(pass(counter::PASS_NOT_FOR_US));
    }
    let Some(settings) = SETTINGS.get(0) else {
        return Ok(pass(counter::PASS_NO_ROUTE));
    };
    let (public_addr, now, mss) = (settings.public_addr, settings.now_ns, settings.mss);
    let (src, dst) = (frame.end(End::Source), frame.end(End::Destination));
    let partial = iface.checksum == CSUM_MAY_BE_PARTIAL && {
        let l4_len = frame.tot_len().wrapping_sub(IPV4_HLEN as u16);
        let pseudo = pseudo_header_sum(src.0, dst.0, protocol, l4_len.to_be());
        is_partial_csum(protocol, frame.checksums().0, pseudo)
            && !complete_checksum(ctx, l4, l4_len, pseudo, now)
    };
    let mut fib = mem::MaybeUninit::uninit();
    let fib: &mut FibParams = zero_in_place(&mut fib);

    let to_public = dst.0 == public_addr && public_addr != 0;
    // On a one-armed leg (both roles) a packet to the public address is from a private
    // host (hairpin, as on any private leg) or from a client of the world.
    let inside = to_public
        && iface.role & ROLE_PRIVATE != 0
        && (iface.role & ROLE_PUBLIC == 0
            || inside_host(ctx, fib, ifindex, src.0, src.1, protocol));
    if to_public && !inside && iface.role & ROLE_PUBLIC != 0 {
        // The FRONTENDS and REVERSE values are read during this run only, while the kernel
        // keeps the elements alive, and copied out before the packet is rewritten; the
        // daemon changes an existing key's value only on a reload, so a lookup racing that
        // update can misroute that one packet, as it could arrive just before or after it.
        let Some(backend) = frontend(dst.1, protocol) else {
            return Ok(pass(counter::PASS_NO_ROUTE));
        };
        let route_id = backend.route_id;
        let Some((to, member)) = backend_for(backend, src, dst.1, protocol) else {
            return Ok(pass(counter::PASS_NO_ROUTE));
        };
        // Routed before the rewrite, so that a packet too big for its egress can be
        // answered quoting what its sender sent.
        let rc = if partial {
            BPF_FIB_LKUP_RET_SUCCESS as i64
        } else {
            let slot = member_next_hop_slot(route_id, member);
            let rc = route_cached(ctx, fib, ip, (ifindex, protocol, src.0, to.0), slot, now);
            if let Some(action) = too_big(ctx, ip, fib, rc, (ifindex, now), Some(public_addr))? {
                return Ok(action);
            }
            rc
        };
        rewrite(&frame, End::Destination, to, partial);
        Ok(send_on(
            ctx,
            &frame,
            (partial, mss, now),
            (route_id, true),
            fib,
            rc,
        ))
    } else if inside {
        hairpin(ctx, &frame, partial, fib, (ifindex, public_addr, now, mss))
    } else if iface.role & ROLE_PRIVATE != 0 && !to_public && public_addr != 0 {
        // SAFETY: as for FRONTENDS above.
        let Some(rev) = (unsafe { REVERSE.get(ReverseKey::new(src.0, src.1, protocol)) }) else {
            return Ok(pass(counter::PASS_NO_ROUTE));
        };
        let (to, route_id) = ((public_addr, rev.public_port), rev.route_id);
        // Routed before the rewrite, as it will leave (from the public address): a packet
        // from a route's backend address and port that the gateway does not forward is
        // addressed to the gateway itself, a reply on the gateway's own connection to that
        // backend (an admin's ssh, a health check), not to a client of the route.
        let slot = next_hop_slot(route_id, true);
        let rc = route_cached(
            ctx,
            fib,
            ip,
            (ifindex, protocol, public_addr, dst.0),
            slot,
            now,
        );
        if rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
            return Ok(pass(counter::PASS_LOCAL));
        }
        if !partial {
            if let Some(action) = too_big(ctx, ip, fib, rc, (ifindex, now), None)? {
                return Ok(action);
            }
        }
        rewrite(&frame, End::Source, to, partial);
        Ok(send_on(
            ctx,
            &frame,
            (partial, mss, now),
            (route_id, false),
            fib,
            rc,
        ))
    } else {
        Ok(pass(counter::PASS_NO_ROUTE))
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier refuses a program with a reachable path to here (there is no
    // unwinding in BPF), so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
