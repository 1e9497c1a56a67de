//! ICMP errors about translated flows, translated like their flow.

use core::mem::{self};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    programs::XdpContext,
};
use lb_common::{counter, HairpinKey, ReverseKey, ROLE_PRIVATE, ROLE_PUBLIC};
use lb_ebpf::{
    addressed_to, csum_replace32, icmp_embedded_nat, icmp_error_plausible, icmp_is_error,
    ipv4_shape, zero_in_place, EthHdr, Ipv4Hdr, Ipv4Shape, Ports, ETH_HLEN, ICMP_HLEN, IPV4_HLEN,
    PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

use super::fib::{fib_lookup, forward, route_toward};
use super::maps::{backend_for, frontend, interface, HAIRPIN, REVERSE, SETTINGS};
use super::parse::ptr_at;
use super::{pass, Truncated};

/// What an ICMP error about a translated flow becomes: the quoted packet's new source
/// and destination (address, port), the error's own new source and destination, and
/// whether an error the FIB would deliver to the gateway itself is about the gateway's
/// own connection (so the kernel's, untouched).
pub(super) struct IcmpNat {
    inner_src: (u32, u16),
    inner_dst: (u32, u16),
    outer: (u32, u32),
    own_if_local: bool,
    /// The quoted destination is a backend or a private host: an error about a
    /// packet to it must come in on the leg that reaches it. (A client of the world
    /// is reached through the one public leg, where every error about it comes in.)
    inside_dst: bool,
}

/// An ICMP error about a translated flow, translated like that flow (see [`icmp_nat`]).
/// The quoted header's addresses and ports, its checksum, a quoted UDP checksum, the
/// ICMP checksum and the outer addresses are rewritten; only the 8 bytes of L4 header
/// an error must carry are read. Anything else ICMP goes to the kernel untouched.
#[inline(always)]
pub(super) fn translate_icmp(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
) -> Result<u32, Truncated> {
    let l4 = ETH_HLEN + IPV4_HLEN;
    let icmp_type: *const u8 = ptr_at(ctx, l4)?;
    // SAFETY: from `ptr_at`: inside the packet.
    if !icmp_is_error(unsafe { *icmp_type }) {
        return Ok(pass(counter::PASS_NOT_TCP_UDP));
    }
    let icmp_code: *const u8 = ptr_at(ctx, l4 + 1)?;
    let icmp_check: *mut u16 = ptr_at(ctx, l4 + 2)?;
    let next_hop_mtu: *const u16 = ptr_at(ctx, l4 + 6)?;
    let inner: *mut Ipv4Hdr = ptr_at(ctx, l4 + ICMP_HLEN)?;
    let inner_l4 = l4 + ICMP_HLEN + IPV4_HLEN;
    let ports: *mut Ports = ptr_at(ctx, inner_l4)?;
    let udp_check: *mut u16 = ptr_at(ctx, inner_l4 + 6)?;
    // SAFETY: `inner` comes from `ptr_at`: inside the packet.
    let (shape, protocol) = unsafe {
        (
            ipv4_shape((*inner).version_ihl, u16::from_be((*inner).frag_off)),
            (*inner).protocol,
        )
    };
    if !matches!(shape, Ipv4Shape::Plain) || (protocol != PROTO_TCP && protocol != PROTO_UDP) {
        return Ok(pass(counter::PASS_NO_ROUTE));
    }
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
    let public_addr = settings.public_addr;
    if public_addr == 0 {
        return Ok(pass(counter::PASS_NO_ROUTE));
    }
    // SAFETY: every pointer comes from `ptr_at`: inside the packet, which the program may
    // write and nothing else touches during the run.
    unsafe {
        let (src, dst) = (
            ((*inner).saddr, (*ports).src),
            ((*inner).daddr, (*ports).dst),
        );
        let nat = match icmp_nat(
            iface.role,
            public_addr,
            ((*ip).saddr, (*ip).daddr),
            (src, dst),
            protocol,
        ) {
            Ok(nat) => nat,
            Err(verdict) => return Ok(pass(verdict)),
        };
        let about = (
            dst.0,
            u16::from_be((*inner).frag_off),
            u16::from_be((*inner).tot_len),
        );
        let said = (*icmp_type, *icmp_code, u16::from_be(*next_hop_mtu));
        if !icmp_error_plausible(said, (*ip).saddr, about) {
            return Ok(pass(counter::PASS_ICMP_IMPLAUSIBLE));
        }
        let mut fib = mem::MaybeUninit::uninit();
        let fib: &mut FibParams = zero_in_place(&mut fib);
        if nat.inside_dst {
            let rc = route_toward(ctx, fib, ifindex, dst.0, BPF_FIB_LOOKUP_SKIP_NEIGH);
            if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || fib.ifindex != ifindex {
                return Ok(pass(counter::PASS_ICMP_IMPLAUSIBLE));
            }
            // `fib_lookup` below sets every input it reads (as after `inside_host`).
        }
        let rc = fib_lookup(ctx, fib, ip, ifindex, PROTO_ICMP, nat.outer.0, nat.outer.1);
        if nat.own_if_local && rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
            return Ok(pass(counter::PASS_LOCAL));
        }
        let udp = (protocol == PROTO_UDP).then(|| *udp_check);
        let (icmp, inner_ip, udp) = icmp_embedded_nat(
            *icmp_check,
            (*inner).check,
            udp,
            src.0,
            nat.inner_src.0,
            src.1,
            nat.inner_src.1,
        );
        let (icmp, inner_ip, udp) = icmp_embedded_nat(
            icmp,
            inner_ip,
            udp,
            dst.0,
            nat.inner_dst.0,
            dst.1,
            nat.inner_dst.1,
        );
        *icmp_check = icmp;
        (*inner).check = inner_ip;
        if let Some(u) = udp {
            *udp_check = u;
        }
        ((*inner).saddr, (*ports).src) = nat.inner_src;
        ((*inner).daddr, (*ports).dst) = nat.inner_dst;
        let check = csum_replace32((*ip).check, (*ip).saddr, nat.outer.0);
        (*ip).check = csum_replace32(check, (*ip).daddr, nat.outer.1);
        ((*ip).saddr, (*ip).daddr) = nat.outer;
        Ok(forward(eth, ip, PROTO_ICMP, fib, rc))
    }
}

/// Which translated flow an ICMP error from `outer` (source, destination) quoting
/// `src -> dst` (address, port) is about, and what it becomes; else the verdict of an
/// error left to the kernel untouched. An error the gateway's translation made the
/// sender of (quoted source `public`, to the public address) is about:
/// - a hairpin request `public:port -> backend` (arriving from the backend's side):
///   goes to the private client, quoting `client:port -> public:P`;
/// - a hairpin reply `public:P -> client:port` (from the client's side): goes to the
///   backend, quoting `backend -> public:port`;
/// - `public:P -> client` on the public side: goes to the backend, quoting
///   `backend -> client`.
///
/// An error from the private side about `client -> backend` goes out from the public
/// address, quoting `client -> public:P`. Hairpin errors go out from the public
/// address too: the other end knows the gateway only by it.
#[inline(always)]
pub(super) fn icmp_nat(
    role: u8,
    public_addr: u32,
    outer: (u32, u32),
    (src, dst): ((u32, u16), (u32, u16)),
    protocol: u8,
) -> Result<IcmpNat, u32> {
    let from_public = outer.1 == public_addr && src.0 == public_addr;
    // SAFETY: map references are used only during this run (see `try_srvgate`); the
    // fields are copied out at once.
    let rev = unsafe { REVERSE.get(ReverseKey::new(dst.0, dst.1, protocol)) };
    if from_public && role & ROLE_PRIVATE != 0 {
        if let Some(rev) = rev {
            let key = HairpinKey::new(dst.0, dst.1, src.1, protocol);
            // SAFETY: as for `rev`: read during this run only, copied out at once.
            if let Some(flow) = unsafe { HAIRPIN.get(key) } {
                return Ok(IcmpNat {
                    inner_src: (flow.client_addr, src.1),
                    inner_dst: (public_addr, rev.public_port),
                    outer: (public_addr, flow.client_addr),
                    own_if_local: false,
                    inside_dst: true,
                });
            }
        } else if let Some((addr, port)) =
            frontend(src.1, protocol).and_then(|b| Some(backend_for(b, dst, src.1, protocol)?.0))
        {
            let key = HairpinKey::new(addr, port, dst.1, protocol);
            // SAFETY: as for `rev`: read during this run only, compared at once.
            if unsafe { HAIRPIN.get(key) }.is_some_and(|flow| flow.client_addr == dst.0) {
                return Ok(IcmpNat {
                    inner_src: (addr, port),
                    inner_dst: (public_addr, dst.1),
                    outer: (public_addr, addr),
                    own_if_local: false,
                    inside_dst: true,
                });
            }
        }
    }
    if from_public && role & ROLE_PUBLIC != 0 {
        let (addr, port) = frontend(src.1, protocol)
            .and_then(|b| Some(backend_for(b, dst, src.1, protocol)?.0))
            .ok_or(counter::PASS_NO_ROUTE)?;
        return Ok(IcmpNat {
            inner_src: (addr, port),
            inner_dst: dst,
            outer: (outer.0, addr),
            own_if_local: false,
            inside_dst: false,
        });
    }
    match rev {
        Some(rev) if role & ROLE_PRIVATE != 0 => Ok(IcmpNat {
            inner_src: src,
            inner_dst: (public_addr, rev.public_port),
            outer: (public_addr, outer.1),
            own_if_local: true,
            inside_dst: true,
        }),
        _ => Err(counter::PASS_NO_ROUTE),
    }
}
