//! Rewriting a packet's addresses and ports with their checksums.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::{bpf_csum_diff, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{counter, CsumScratch, CSUM_CHECK_MAX};
use lb_ebpf::{
    csum_replace32, l4_csum_nat, partial_csum_replace32, sums_to_complete, EthHdr, Ipv4Hdr, Ports,
    ETH_HLEN, IPV4_HLEN, PROTO_TCP,
};

use super::fib::{clamp_mss, fib_lookup, forward, too_big};
use super::maps::CSUM_SCRATCH;
use super::{account, budget, count, pass, Truncated};

/// Rewrites both ends of a hairpin packet to `to` (source, destination: address and
/// port), with its checksums, clamps a SYN's MSS, counts it for `route` (inbound or
/// not) and sends it on as from the public address.
#[inline(always)]
pub(super) fn rewrite_both(
    ctx: &XdpContext,
    (eth, ip, ports, l4_check): (*mut EthHdr, *mut Ipv4Hdr, *mut Ports, *mut u16),
    (protocol, partial): (u8, bool),
    ((saddr, sport), (daddr, dport)): ((u32, u16), (u32, u16)),
    (route_id, inbound): (u32, bool),
    fib: &mut FibParams,
    (ifindex, _, now, mss): (u32, u32, u64, u16),
) -> Result<u32, Truncated> {
    // SAFETY: as in `hairpin`, which these pointers come from.
    unsafe {
        // Routed before the rewrite, as in `try_srvgate`'s frontend path.
        let rc = if partial {
            BPF_FIB_LKUP_RET_SUCCESS as i64
        } else {
            fib_lookup(ctx, fib, ip, ifindex, protocol, saddr, daddr)
        };
        if !partial {
            if let Some(action) = too_big(ctx, ip, fib, rc, (ifindex, now), None)? {
                return Ok(action);
            }
        }
        let (old_saddr, old_daddr) = ((*ip).saddr, (*ip).daddr);
        let (old_sport, old_dport) = ((*ports).src, (*ports).dst);
        let check = l4_nat(
            partial, protocol, *l4_check, old_saddr, saddr, old_sport, sport,
        );
        *l4_check = l4_nat(partial, protocol, check, old_daddr, daddr, old_dport, dport);
        let check = csum_replace32((*ip).check, old_saddr, saddr);
        (*ip).check = csum_replace32(check, old_daddr, daddr);
        (*ip).saddr = saddr;
        (*ip).daddr = daddr;
        (*ports).src = sport;
        (*ports).dst = dport;
        if protocol == PROTO_TCP {
            clamp_mss(ctx, ETH_HLEN + IPV4_HLEN, l4_check, mss, partial);
        }
        account(ctx, ip, route_id, inbound, now);
        if partial {
            return Ok(pass(counter::FWD_PASS_PARTIAL_CSUM));
        }
        Ok(forward(eth, ip, protocol, fib, rc))
    }
}

/// The L4 checksum after one address and one port change: a complete one is updated
/// for both (RFC 1624), a partial one (only the pseudo-header's sum, left to checksum
/// offload) for the address alone, as the port lies in the part offload sums later.
#[inline(always)]
pub(super) fn l4_nat(
    partial: bool,
    protocol: u8,
    check: u16,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> u16 {
    if partial {
        partial_csum_replace32(check, old_addr, new_addr)
    } else {
        l4_csum_nat(protocol, check, old_addr, new_addr, old_port, new_port)
    }
}

/// Whether the segment at `l4` (`l4_len` bytes, to the end of the IPv4 packet), whose
/// checksum field holds the partial value, holds its complete checksum after all (see
/// `lb_ebpf::is_partial_csum`). Only such segments are summed: on a leg without
/// partial checksums about one in 65 536; on one with them (where every segment takes
/// the kernel's path anyway) each. The segment is copied into `CSUM_SCRATCH`
/// (`bpf_xdp_load_bytes` reads across a frame's fragments too) and summed there by
/// `bpf_csum_diff`. Longer than `CSUM_CHECK_MAX`, or a helper failing: no. Past this
/// CPU's budget of sums for the tick (`CSUM_CHECKS_PER_TICK`): no, counted
/// (`CSUM_UNCHECKED`), so that frames forged with that value cannot buy a sum each at
/// line rate. Taking such a frame as partial is what a sender could have had anyway
/// (a frame the kernel forwards); the only frame it is wrong for is a complete
/// checksum that collides with the partial value (one in 65 536) while the budget is
/// spent, which leaves with a wrong checksum and is dropped by its receiver.
#[inline(always)]
pub(super) fn complete_checksum(
    ctx: &XdpContext,
    l4: usize,
    l4_len: u16,
    pseudo: u32,
    now: u64,
) -> bool {
    const STEP: u32 = 512;
    let len = u32::from(l4_len);
    if len == 0 || len > CSUM_CHECK_MAX {
        return false;
    }
    match budget(now) {
        Some(b) if b.csum_left > 0 => b.csum_left -= 1,
        _ => {
            count(counter::CSUM_UNCHECKED);
            return false;
        }
    }
    let Some(scratch) = CSUM_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let buf = scratch as *mut u8;
    // SAFETY: `buf` is this CPU's scratch buffer, valid for the program's run and
    // used by nothing else meanwhile; `len & !3` + 4 <= CSUM_CHECK_MAX + 4 is inside
    // it (lb_common's test). The word holding the segment's last bytes is cleared
    // first, so that the sum over whole words adds zeros past the segment (RFC 1071's
    // padding); the copy then overwrites what belongs to the segment.
    unsafe {
        (buf.add((len & !3) as usize) as *mut u32).write_unaligned(0);
        if bpf_xdp_load_bytes(ctx.ctx, l4 as u32, buf as *mut _, len) != 0 {
            return false;
        }
    }
    let words = (len + 3) & !3;
    let mut sum = pseudo;
    let mut done = 0;
    for _ in 0..size_of::<CsumScratch>() as u32 / STEP {
        if done >= words {
            break;
        }
        let size = core::cmp::min(words - done, STEP);
        // SAFETY: `done + size <= words`, inside the buffer as above; `bpf_csum_diff`
        // with no `from` only sums `to` into the seed.
        let r = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                buf.add(done as usize) as *mut u32,
                size,
                sum,
            )
        };
        if r < 0 {
            return false;
        }
        sum = r as u32;
        done += STEP;
    }
    sums_to_complete(sum)
}
