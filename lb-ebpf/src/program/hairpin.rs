//! Private hosts reaching a route by its public address (hairpin NAT), and telling them
//! from clients on a one-armed leg.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH},
    programs::XdpContext,
};
use lb_common::{
    counter, HairpinKey, HairpinValue, ReverseKey, HAIRPIN_LIVE_NS, HAIRPIN_NEW_BURST,
    HAIRPIN_NEW_INTERVAL_NS,
};

use super::fib::{fib_lookup, route_toward, too_big};
use super::maps::{backend_for, frontend, HAIRPIN, HAIRPIN_QUOTA, REVERSE};
use super::nat::{rewrite, send_on};
use super::parse::{End, L4Frame};
use super::{pass, Truncated};

/// A packet from a private leg to the public address: a private host reaching a route
/// by its public port, or a backend answering such a flow (hairpin NAT).
///
/// The request's destination becomes the route's backend, as from outside, and its
/// source the public address with the client's own port kept. The source must change:
/// a backend on the client's own leg would answer the client directly, from its own
/// address, which the client never connected to. Its reply (`backend -> public:port`)
/// then comes back through the gateway, where `HAIRPIN`, keyed by exactly that tuple,
/// gives the client's address; the reply leaves from `public:P`, the address the
/// client connected to. The tuple has no room to carry the client's address (48 bits
/// of address and port in a 16-bit port), hence the one map entry per flow, written
/// only on this path.
///
/// A flow is live while either end sent within `HAIRPIN_LIVE_NS`: a live flow's tuple
/// is never handed to another client (a host spraying source ports cannot take the
/// replies of a client that only listens). A packet from a route's backend address and
/// port that answers no flow is never a request to another route: it answers the
/// gateway's own connection, or a packet someone else made as from `public:Q` (a
/// spoofed datagram to the backend), and a request would let two routes' echo
/// services answer each other through the gateway for ever. New flows come out of
/// each host's bucket (`new_hairpin_allowed`), so that no host fills the LRU map.
#[inline(always)]
pub(super) fn hairpin(
    ctx: &XdpContext,
    frame: &L4Frame,
    partial: bool,
    fib: &mut FibParams,
    (ifindex, public_addr, now, mss): (u32, u32, u64, u16),
) -> Result<u32, Truncated> {
    let protocol = frame.protocol;
    let ((saddr, sport), (_, dport)) = (frame.end(End::Source), frame.end(End::Destination));
    let how = (partial, (ifindex, now, mss));
    // SAFETY: map references are used only during this run (see `try_srvgate`), their
    // fields copied out before the packet is rewritten.
    if let Some(rev) = unsafe { REVERSE.get(ReverseKey::new(saddr, sport, protocol)) } {
        let key = HairpinKey::new(saddr, sport, dport, protocol);
        let Some(flow) = HAIRPIN.get_ptr_mut(key) else {
            // Answers no flow: the gateway's own connection's, or nobody's.
            return Ok(pass(counter::PASS_LOCAL));
        };
        // SAFETY: the map's value for `key`, valid for the program's run; another CPU may
        // write it meanwhile (the same flow's packets on two queues), which at worst
        // stamps `seen_ns` twice.
        let client = unsafe {
            // Written once a tick, not on every packet.
            if (*flow).seen_ns != now {
                (*flow).seen_ns = now;
            }
            (*flow).client_addr
        };
        // A backend's reply to a private client: from `public:P`, to the client.
        let to = ((public_addr, rev.public_port), (client, dport));
        return rewrite_both(ctx, frame, to, (rev.route_id, false), fib, how);
    }
    let Some(backend) = frontend(dport, protocol) else {
        // A private host using one of the gateway's own services.
        return Ok(pass(counter::PASS_NO_ROUTE));
    };
    let route_id = backend.route_id;
    let Some(((new_addr, new_port), _)) = backend_for(backend, (saddr, sport), dport, protocol)
    else {
        return Ok(pass(counter::PASS_NO_ROUTE));
    };
    let key = HairpinKey::new(new_addr, new_port, sport, protocol);
    // SAFETY: as above, for the flow's entry.
    unsafe {
        match HAIRPIN.get_ptr_mut(key) {
            Some(flow) if (*flow).client_addr == saddr => {
                if (*flow).seen_ns != now {
                    (*flow).seen_ns = now;
                }
            }
            Some(flow) if now.wrapping_sub((*flow).seen_ns) < HAIRPIN_LIVE_NS => {
                return Ok(pass(counter::PASS_HAIRPIN_CLASH));
            }
            Some(flow) => {
                if !new_hairpin_allowed(saddr, now) {
                    return Ok(pass(counter::PASS_HAIRPIN_LIMIT));
                }
                (*flow).client_addr = saddr;
                (*flow).seen_ns = now;
            }
            None => {
                if !new_hairpin_allowed(saddr, now) {
                    return Ok(pass(counter::PASS_HAIRPIN_LIMIT));
                }
                let value = HairpinValue {
                    client_addr: saddr,
                    _pad: 0,
                    seen_ns: now,
                };
                if HAIRPIN.insert(key, value, 0).is_err() {
                    // Cannot happen to an LRU map short of memory; the kernel decides.
                    return Ok(pass(counter::PASS_HAIRPIN_CLASH));
                }
            }
        }
    }
    let to = ((public_addr, sport), (new_addr, new_port));
    rewrite_both(ctx, frame, to, (route_id, true), fib, how)
}

/// Rewrites both ends of a hairpin packet to `to` (source, destination), counts it for
/// `route` (inbound or not) and sends it on as from the public address.
#[inline(always)]
fn rewrite_both(
    ctx: &XdpContext,
    frame: &L4Frame,
    (src, dst): ((u32, u16), (u32, u16)),
    route: (u32, bool),
    fib: &mut FibParams,
    (partial, (ifindex, now, mss)): (bool, (u32, u64, u16)),
) -> Result<u32, Truncated> {
    // Routed before the rewrite, as in `try_srvgate`'s frontend path.
    let rc = if partial {
        BPF_FIB_LKUP_RET_SUCCESS as i64
    } else {
        let rc = fib_lookup(ctx, fib, frame.ip, ifindex, frame.protocol, src.0, dst.0);
        if let Some(action) = too_big(ctx, frame.ip, fib, rc, (ifindex, now), None)? {
            return Ok(action);
        }
        rc
    };
    rewrite(frame, End::Source, src, partial);
    rewrite(frame, End::Destination, dst, partial);
    Ok(send_on(ctx, frame, (partial, mss, now), route, fib, rc))
}

/// Whether private host `host` may open a new hairpin flow at `now` (the daemon's
/// clock), taking it out of the host's bucket if so: `HAIRPIN_NEW_BURST` at once, then
/// one per `HAIRPIN_NEW_INTERVAL_NS` (see `lb_common::MAX_HAIRPIN_HOSTS` for the
/// algorithm). Two CPUs opening flows for one host at once may both take the same
/// place in its bucket: a few more flows, never fewer.
#[inline(always)]
pub(super) fn new_hairpin_allowed(host: u32, now: u64) -> bool {
    const TOLERANCE_NS: u64 = (HAIRPIN_NEW_BURST as u64 - 1) * HAIRPIN_NEW_INTERVAL_NS;
    let Some(next) = HAIRPIN_QUOTA.get_ptr_mut(host) else {
        // A host not seen (or forgotten): a full bucket, this flow the first out of it.
        // An insert that fails (it cannot, for an LRU map) costs the host nothing.
        let _ = HAIRPIN_QUOTA.insert(host, now + HAIRPIN_NEW_INTERVAL_NS, 0);
        return true;
    };
    // SAFETY: the map's value for `host`, valid for the program's run; another CPU may
    // write it meanwhile, which at worst loses one of the two writes (see above).
    unsafe {
        let at = core::cmp::max(*next, now);
        if at > now + TOLERANCE_NS {
            return false;
        }
        *next = at + HAIRPIN_NEW_INTERVAL_NS;
    }
    true
}

/// Whether a packet to the public address that arrived on a one-armed leg (public and
/// private at once) comes from inside: from a route's backend address and port (its
/// answer on a hairpin flow, or to the gateway itself), or from a host on one of the
/// leg's own subnets (the FIB reaches it without a gateway), which a backend on that
/// wire would answer directly unless the source is translated too. Anyone reached
/// through a router is a client of the world and keeps its address.
#[inline(always)]
pub(super) fn inside_host(
    ctx: &XdpContext,
    fib: &mut FibParams,
    ifindex: u32,
    saddr: u32,
    sport: u16,
    protocol: u8,
) -> bool {
    let key = ReverseKey::new(saddr, sport, protocol);
    // SAFETY: only whether the entry exists is read.
    if unsafe { REVERSE.get(key) }.is_some() {
        return true;
    }
    let rc = route_toward(ctx, fib, ifindex, saddr, BPF_FIB_LOOKUP_SKIP_NEIGH);
    // SAFETY: plain integers in a union the kernel just wrote (or we zeroed).
    rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && unsafe { fib.__bindgen_anon_4.ipv4_dst } == saddr
}
