//! Rewriting a packet's addresses and ports with their checksums.

use core::mem::size_of;

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    helpers::generated::{bpf_csum_diff, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{counter, CsumScratch, CSUM_CHECK_MAX};
use lb_ebpf::{
    csum_replace32, l4_csum_nat, partial_csum_replace32, sums_to_complete, ETH_HLEN, IPV4_HLEN,
    PROTO_TCP,
};

use super::fib::{clamp_mss, forward};
use super::maps::CSUM_SCRATCH;
use super::parse::{End, L4Frame};
use super::{account, budget, count, pass};

/// One end of `frame` (`end`: the destination for DNAT, the source for SNAT) becomes
/// `to` (address, port), with the IPv4 and L4 checksums updated to match (a partial L4
/// checksum as offload wants it, see `l4_nat`). The one rewrite of every path: a client's
/// packet to its backend, a backend's reply, and both ends of a hairpin packet.
#[inline(always)]
pub(super) fn rewrite(frame: &L4Frame, end: End, to: (u32, u16), partial: bool) {
    let (old_addr, old_port) = frame.end(end);
    let (l4, ip) = frame.checksums();
    frame.set_checksums((
        l4_nat(partial, frame.protocol, l4, old_addr, to.0, old_port, to.1),
        csum_replace32(ip, old_addr, to.0),
    ));
    frame.set_end(end, to);
}

/// What follows a rewrite on every path: a SYN's MSS clamped to `mss`, the frame counted
/// for `route` (its id, inbound or not) at `now`, and the frame sent on: to the kernel
/// with a partial checksum (offload finishes it there), else `forward` by the FIB's
/// answer `rc` in `fib`.
#[inline(always)]
pub(super) fn send_on(
    ctx: &XdpContext,
    frame: &L4Frame,
    (partial, mss, now): (bool, u16, u64),
    (route_id, inbound): (u32, bool),
    fib: &FibParams,
    rc: i64,
) -> u32 {
    if frame.protocol == PROTO_TCP {
        clamp_mss(ctx, ETH_HLEN + IPV4_HLEN, frame.check_ptr(), mss, partial);
    }
    account(ctx, frame.ip, route_id, inbound, now);
    if partial {
        return pass(counter::FWD_PASS_PARTIAL_CSUM);
    }
    forward(frame.eth, frame.ip, frame.protocol, fib, rc)
}

/// The L4 checksum after one address and one port change: a complete one is updated
/// for both (RFC 1624), a partial one (only the pseudo-header's sum, left to checksum
/// offload) for the address alone, as the port lies in the part offload sums later.
#[inline(always)]
fn l4_nat(
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
