//! Where the program's packet pointers come from: `ptr_at`, the one bounds check, and
//! `L4Frame`, the validated view of a plain IPv4 TCP or UDP frame whose accessors hold
//! the `unsafe` reads and writes of its headers, so that the paths that route and rewrite
//! a frame (`try_srvgate`, `hairpin`, `nat`) are safe code.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_ebpf::{EthHdr, Ipv4Hdr, Ports};

use super::Truncated;

/// A pointer to a `T` at `offset` bytes into the packet, if the whole `T` lies before
/// `data_end` (the check the verifier wants before any access).
#[inline(always)]
pub(super) fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Truncated> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return Err(Truncated);
    }
    Ok((start + offset) as *mut T)
}

/// Which end of a flow a rewrite changes: the destination (DNAT, toward a backend) or
/// the source (SNAT, a backend's reply leaving from the public address).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Source,
    Destination,
}

/// The headers of a plain (no options, not a fragment) IPv4 TCP or UDP frame, each
/// checked by `ptr_at` to lie inside the packet. Valid until a helper moves the packet's
/// data (`bpf_xdp_adjust_head`/`_tail`, only in `too_big`, which returns a verdict at
/// once and never reads a view again).
#[derive(Clone, Copy)]
pub(super) struct L4Frame {
    pub(super) eth: *mut EthHdr,
    pub(super) ip: *mut Ipv4Hdr,
    ports: *mut Ports,
    check: *mut u16,
    pub(super) protocol: u8,
}

impl L4Frame {
    /// The view of a frame whose Ethernet and IPv4 headers the caller already took from
    /// `ptr_at` (at 0 and `ETH_HLEN`), with its L4 ports at `l4` and checksum at
    /// `l4 + check_off`.
    #[inline(always)]
    pub(super) fn new(
        ctx: &XdpContext,
        (eth, ip): (*mut EthHdr, *mut Ipv4Hdr),
        protocol: u8,
        (l4, check_off): (usize, usize),
    ) -> Result<L4Frame, Truncated> {
        Ok(L4Frame {
            eth,
            ip,
            ports: ptr_at(ctx, l4)?,
            check: ptr_at(ctx, l4 + check_off)?,
            protocol,
        })
    }

    /// The address and port (as loaded from the packet) of one end.
    #[inline(always)]
    pub(super) fn end(&self, end: End) -> (u32, u16) {
        // SAFETY: `ip` and `ports` come from `ptr_at` (see the type): inside the packet.
        unsafe {
            match end {
                End::Source => ((*self.ip).saddr, (*self.ports).src),
                End::Destination => ((*self.ip).daddr, (*self.ports).dst),
            }
        }
    }

    /// Writes one end's address and port; the checksums are the caller's (`nat::rewrite`).
    #[inline(always)]
    pub(super) fn set_end(&self, end: End, (addr, port): (u32, u16)) {
        // SAFETY: as in `end`; the program may write the packet, and nothing else touches
        // it during the run.
        unsafe {
            match end {
                End::Source => ((*self.ip).saddr, (*self.ports).src) = (addr, port),
                End::Destination => ((*self.ip).daddr, (*self.ports).dst) = (addr, port),
            }
        }
    }

    /// The IPv4 total length, host order.
    #[inline(always)]
    pub(super) fn tot_len(&self) -> u16 {
        // SAFETY: as in `end`.
        u16::from_be(unsafe { (*self.ip).tot_len })
    }

    /// The L4 checksum field and the IPv4 header checksum, as loaded.
    #[inline(always)]
    pub(super) fn checksums(&self) -> (u16, u16) {
        // SAFETY: as in `end`.
        unsafe { (*self.check, (*self.ip).check) }
    }

    #[inline(always)]
    pub(super) fn set_checksums(&self, (l4, ip): (u16, u16)) {
        // SAFETY: as in `set_end`.
        unsafe { (*self.check, (*self.ip).check) = (l4, ip) }
    }

    /// The L4 checksum field, for `clamp_mss`, which updates it with the MSS.
    #[inline(always)]
    pub(super) fn check_ptr(&self) -> *mut u16 {
        self.check
    }
}
