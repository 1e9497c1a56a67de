//! srvgate's XDP program: `public:P -> backend:port` on the way in, the reverse on the way out.
//!
//! One program serves every interface; the `INTERFACES` map says whether a leg is public
//! (look up frontends) or private (look up replies). Anything the program does not own or
//! cannot parse goes to the kernel untouched (`XDP_PASS`), but for what a public leg refuses
//! first (`program/guard.rs`: spoofed sources, packets for private addresses), which is
//! dropped; every verdict is counted in `GLOBAL_COUNTERS`, so nothing is dropped silently.
//!
//! A frame's path, each step in its own function: the public legs' guards; the leg
//! (`LEG_CACHE`, a direct-mapped array by ifindex, else `INTERFACES`), whose role is a bitmask:
//! a one-armed gateway's one NIC is public and private at once, and there `inside_host` tells
//! a hairpin flow's inside end from a client; the MAC check (a frame not sent to the leg's own
//! MAC, e.g. one a switch flooded to a standby gateway, passes as `PASS_NOT_FOR_US`);
//! `FRONTENDS` (an array by port and protocol, `lb_common::frontend_slot`) or `REVERSE`; the
//! next hop, asked before the rewrite (`route_cached`: a per-CPU cache of FIB successes in
//! `NEXT_HOPS`, valid for one tick of the daemon's clock and `NEXT_HOP_USES` packets), so that
//! a DF packet too big for its egress is answered by `too_big` and a backend's packet the
//! gateway would not forward stays untouched; the rewrite (MSS lowered on SYNs by
//! `clamp_mss`; ICMP errors about a flow translated by `translate_icmp`); then `bpf_redirect`
//! if the egress leg takes redirects (`Interface.egress`), else `XDP_PASS`. Segments with
//! partial checksums (veth, tap, virtio) are rewritten for offload and passed to the kernel.
//!
//! The program reads no clock: time is `SETTINGS.now_ns`, which the daemon advances each
//! second. Per-route traffic is counted in `ROUTE_COUNTERS` (bytes of whole frames).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // This binary is only meaningful as BPF bytecode, built by lb-userspace's build.rs for
    // bpfel-unknown-none. On the host it exists so the workspace builds and tests.
}

#[cfg(target_arch = "bpf")]
mod program {
    use core::mem::{self, size_of};

    use aya_ebpf::{
        bindings::{
            bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
            BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
            BPF_FIB_LOOKUP_SRC,
        },
        helpers::generated::{
            bpf_csum_diff, bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
            bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
        },
        macros::{map, xdp},
        maps::{Array, HashMap, LruHashMap, PerCpuArray},
        programs::XdpContext,
    };
    use lb_common::{
        counter, frontend_slot, next_hop_slot, Backend, Budget, CsumScratch, HairpinKey,
        HairpinValue, Interface, LegSlot, NextHop, ReverseKey, ReverseValue, RouteCounters,
        Settings, BACKEND_LIVE, CSUM_CHECKS_PER_TICK, CSUM_CHECK_MAX, CSUM_MAY_BE_PARTIAL,
        EGRESS_REDIRECT, FRONTEND_SLOTS, HAIRPIN_LIVE_NS, HAIRPIN_NEW_BURST,
        HAIRPIN_NEW_INTERVAL_NS, LEG_CACHE_SLOTS, MAX_HAIRPIN, MAX_HAIRPIN_HOSTS, MAX_INTERFACES,
        MAX_ROUTES, NEXT_HOP_SLOTS, NEXT_HOP_USES, ROLE_PRIVATE, ROLE_PUBLIC, TX_ANSWERS_PER_TICK,
    };
    use lb_ebpf::{
        addressed_to, clamped_mss, csum_replace32, frag_needed_headers, icmp_embedded_nat,
        icmp_error_plausible, icmp_is_error, ipv4_csum_ttl_decrement, ipv4_shape, is_partial_csum,
        l4_checksum_offset, l4_csum_nat, l4_header_len, mss_csum, partial_csum_replace32,
        pseudo_header_sum, sums_to_complete, zero_in_place, EthHdr, Ipv4Hdr, Ipv4Shape, Ports,
        ETH_HLEN, ETH_P_IPV4, FRAG_NEEDED_HLEN, ICMP_HLEN, ICMP_QUOTE_LEN, IPV4_HLEN, IP_DF,
        PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCPOPT_MSS, TCPOPT_NOP, TCP_HLEN, TCP_SYN,
    };

    const AF_INET: u8 = 2;

    mod guard;

    #[map(name = "FRONTENDS")]
    static FRONTENDS: Array<Backend> = Array::with_max_entries(FRONTEND_SLOTS, 0);
    #[map(name = "REVERSE")]
    static REVERSE: HashMap<ReverseKey, ReverseValue> = HashMap::with_max_entries(MAX_ROUTES, 0);
    #[map(name = "INTERFACES")]
    static INTERFACES: HashMap<u32, Interface> = HashMap::with_max_entries(MAX_INTERFACES, 0);
    #[map(name = "LEG_CACHE")]
    static LEG_CACHE: Array<LegSlot> = Array::with_max_entries(LEG_CACHE_SLOTS, 0);
    #[map(name = "SETTINGS")]
    static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
    #[map(name = "ROUTE_COUNTERS")]
    static ROUTE_COUNTERS: PerCpuArray<RouteCounters> =
        PerCpuArray::with_max_entries(MAX_ROUTES, 0);
    #[map(name = "GLOBAL_COUNTERS")]
    static GLOBAL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);
    /// The FIB's recent answers for each route's two paths, per CPU (`route_cached`).
    #[map(name = "NEXT_HOPS")]
    static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);
    /// Where a segment is copied to be summed (`complete_checksum`), per CPU.
    #[map(name = "CSUM_SCRATCH")]
    static CSUM_SCRATCH: PerCpuArray<CsumScratch> = PerCpuArray::with_max_entries(1, 0);
    /// Flows from private hosts to the public address (hairpin), by the tuple their replies
    /// carry: the one per-flow state the program keeps, because a private client's address cannot
    /// be recovered from the translated packet (see `hairpin`).
    #[map(name = "HAIRPIN")]
    static HAIRPIN: LruHashMap<HairpinKey, HairpinValue> =
        LruHashMap::with_max_entries(MAX_HAIRPIN, 0);
    /// Each private host's bucket of new hairpin flows (`new_hairpin_allowed`).
    #[map(name = "HAIRPIN_QUOTA")]
    static HAIRPIN_QUOTA: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_HAIRPIN_HOSTS, 0);
    /// This CPU's budgets for the tick: ICMP answers, checksum sums (`budget`).
    #[map(name = "BUDGETS")]
    static BUDGETS: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

    /// Frame too short for the headers it claims: the kernel counts and drops those.
    struct Truncated;

    /// The leg of `ifindex`: from its `LEG_CACHE` slot if it holds it, else `INTERFACES`.
    #[inline(always)]
    fn interface(ifindex: u32) -> Option<Interface> {
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
    fn frontend(port: u16, protocol: u8) -> Option<&'static Backend> {
        let backend = FRONTENDS.get(frontend_slot(u16::from_be(port), protocol)?)?;
        (backend.live == BACKEND_LIVE).then_some(backend)
    }

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
    fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Truncated> {
        let start = ctx.data();
        if start + offset + size_of::<T>() > ctx.data_end() {
            return Err(Truncated);
        }
        Ok((start + offset) as *mut T)
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
        let (Some(_), Some(check_off)) = (l4_header_len(protocol), l4_checksum_offset(protocol))
        else {
            return Ok(pass(counter::PASS_NOT_TCP_UDP));
        };
        let l4 = ETH_HLEN + IPV4_HLEN;
        let ports: *mut Ports = ptr_at(ctx, l4)?;
        let l4_check: *mut u16 = ptr_at(ctx, l4 + check_off)?;

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
        // SAFETY: `ip` and `l4_check` come from `ptr_at`: inside the packet.
        let partial = iface.checksum == CSUM_MAY_BE_PARTIAL
            && unsafe {
                let l4_len = u16::from_be((*ip).tot_len).wrapping_sub(IPV4_HLEN as u16);
                let pseudo = pseudo_header_sum((*ip).saddr, (*ip).daddr, protocol, l4_len.to_be());
                is_partial_csum(protocol, *l4_check, pseudo)
                    && !complete_checksum(ctx, l4, l4_len, pseudo, now)
            };
        let mut fib = mem::MaybeUninit::uninit();
        let fib: &mut FibParams = zero_in_place(&mut fib);

        // SAFETY: `ip`, `ports` and `l4_check` come from `ptr_at`, which checked that each
        // lies wholly before `data_end`: inside the packet, which the program may read and
        // write; nothing else touches the packet during the run. The FRONTENDS and REVERSE
        // references are used only during this run, while the kernel keeps the elements
        // alive; their fields are copied out before the packet is rewritten, and the daemon
        // changes an existing key's value only on a reload, so a lookup racing that update
        // can misroute that one packet, as it could arrive just before or after it anyway.
        unsafe {
            let to_public = (*ip).daddr == public_addr && public_addr != 0;
            // On a one-armed leg (both roles) a packet to the public address is from a
            // private host (hairpin, as on any private leg) or from a client of the world.
            let inside = to_public
                && iface.role & ROLE_PRIVATE != 0
                && (iface.role & ROLE_PUBLIC == 0
                    || inside_host(ctx, fib, ifindex, (*ip).saddr, (*ports).src, protocol));
            if to_public && !inside && iface.role & ROLE_PUBLIC != 0 {
                let Some(backend) = frontend((*ports).dst, protocol) else {
                    return Ok(pass(counter::PASS_NO_ROUTE));
                };
                let (new_addr, new_port) = (backend.addr, backend.port);
                // Routed before the rewrite, so that a packet too big for its egress can be
                // answered quoting what its sender sent.
                let rc = if partial {
                    BPF_FIB_LKUP_RET_SUCCESS as i64
                } else {
                    let slot = next_hop_slot(backend.route_id, false);
                    let question = (ifindex, protocol, (*ip).saddr, new_addr);
                    route_cached(ctx, fib, ip, question, slot, now)
                };
                if let Some(action) = too_big(ctx, ip, fib, rc, (ifindex, now), Some(public_addr))?
                {
                    return Ok(action);
                }
                *l4_check = l4_nat(
                    partial,
                    protocol,
                    *l4_check,
                    (*ip).daddr,
                    new_addr,
                    (*ports).dst,
                    new_port,
                );
                (*ip).check = csum_replace32((*ip).check, (*ip).daddr, new_addr);
                (*ip).daddr = new_addr;
                (*ports).dst = new_port;
                if protocol == PROTO_TCP {
                    clamp_mss(ctx, l4, l4_check, mss, partial);
                }
                account(ctx, ip, backend.route_id, true, now);
                if partial {
                    return Ok(pass(counter::FWD_PASS_PARTIAL_CSUM));
                }
                Ok(forward(eth, ip, protocol, fib, rc))
            } else if inside {
                hairpin(
                    ctx,
                    (eth, ip, ports, l4_check),
                    (protocol, partial),
                    fib,
                    (ifindex, public_addr, now, mss),
                )
            } else if iface.role & ROLE_PRIVATE != 0 && !to_public && public_addr != 0 {
                let key = ReverseKey::new((*ip).saddr, (*ports).src, protocol);
                let Some(rev) = REVERSE.get(key) else {
                    return Ok(pass(counter::PASS_NO_ROUTE));
                };
                // Routed before the rewrite, as it will leave (from the public address): a
                // packet from a route's backend address and port that the gateway does not
                // forward is addressed to the gateway itself, a reply on the gateway's own
                // connection to that backend (an admin's ssh, a health check), not to a
                // client of the route.
                let slot = next_hop_slot(rev.route_id, true);
                let question = (ifindex, protocol, public_addr, (*ip).daddr);
                let rc = route_cached(ctx, fib, ip, question, slot, now);
                if rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
                    return Ok(pass(counter::PASS_LOCAL));
                }
                if !partial {
                    if let Some(action) = too_big(ctx, ip, fib, rc, (ifindex, now), None)? {
                        return Ok(action);
                    }
                }
                let new_port = rev.public_port;
                *l4_check = l4_nat(
                    partial,
                    protocol,
                    *l4_check,
                    (*ip).saddr,
                    public_addr,
                    (*ports).src,
                    new_port,
                );
                (*ip).check = csum_replace32((*ip).check, (*ip).saddr, public_addr);
                (*ip).saddr = public_addr;
                (*ports).src = new_port;
                if protocol == PROTO_TCP {
                    clamp_mss(ctx, l4, l4_check, mss, partial);
                }
                account(ctx, ip, rev.route_id, false, now);
                if partial {
                    return Ok(pass(counter::FWD_PASS_PARTIAL_CSUM));
                }
                Ok(forward(eth, ip, protocol, fib, rc))
            } else {
                Ok(pass(counter::PASS_NO_ROUTE))
            }
        }
    }

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
    fn hairpin(
        ctx: &XdpContext,
        (eth, ip, ports, l4_check): (*mut EthHdr, *mut Ipv4Hdr, *mut Ports, *mut u16),
        (protocol, partial): (u8, bool),
        fib: &mut FibParams,
        (ifindex, public_addr, now, mss): (u32, u32, u64, u16),
    ) -> Result<u32, Truncated> {
        // SAFETY: the four pointers come from `ptr_at` in `try_srvgate`: inside the packet,
        // which the program may write and nothing else touches during the run. Map
        // references are used only during this run (see `try_srvgate`); a `HAIRPIN` value
        // may be written by another CPU meanwhile (the same flow's packets on two queues),
        // which at worst stamps `seen_ns` twice.
        unsafe {
            let (saddr, sport, dport) = ((*ip).saddr, (*ports).src, (*ports).dst);
            if let Some(rev) = REVERSE.get(ReverseKey::new(saddr, sport, protocol)) {
                let key = HairpinKey::new(saddr, sport, dport, protocol);
                let Some(flow) = HAIRPIN.get_ptr_mut(key) else {
                    // Answers no flow: the gateway's own connection's, or nobody's.
                    return Ok(pass(counter::PASS_LOCAL));
                };
                // Written once a tick, not on every packet.
                if (*flow).seen_ns != now {
                    (*flow).seen_ns = now;
                }
                // A backend's reply to a private client: from `public:P`, to the client.
                let to = ((public_addr, rev.public_port), ((*flow).client_addr, dport));
                return rewrite_both(
                    ctx,
                    (eth, ip, ports, l4_check),
                    (protocol, partial),
                    to,
                    (rev.route_id, false),
                    fib,
                    (ifindex, public_addr, now, mss),
                );
            }
            let Some(backend) = frontend(dport, protocol) else {
                // A private host using one of the gateway's own services.
                return Ok(pass(counter::PASS_NO_ROUTE));
            };
            let (new_addr, new_port, route_id) = (backend.addr, backend.port, backend.route_id);
            let key = HairpinKey::new(new_addr, new_port, sport, protocol);
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
            rewrite_both(
                ctx,
                (eth, ip, ports, l4_check),
                (protocol, partial),
                ((public_addr, sport), (new_addr, new_port)),
                (route_id, true),
                fib,
                (ifindex, public_addr, now, mss),
            )
        }
    }

    /// Whether private host `host` may open a new hairpin flow at `now` (the daemon's
    /// clock), taking it out of the host's bucket if so: `HAIRPIN_NEW_BURST` at once, then
    /// one per `HAIRPIN_NEW_INTERVAL_NS` (see `lb_common::MAX_HAIRPIN_HOSTS` for the
    /// algorithm). Two CPUs opening flows for one host at once may both take the same
    /// place in its bucket: a few more flows, never fewer.
    #[inline(always)]
    fn new_hairpin_allowed(host: u32, now: u64) -> bool {
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

    /// Rewrites both ends of a hairpin packet to `to` (source, destination: address and
    /// port), with its checksums, clamps a SYN's MSS, counts it for `route` (inbound or
    /// not) and sends it on as from the public address.
    #[inline(always)]
    fn rewrite_both(
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

    /// What an ICMP error about a translated flow becomes: the quoted packet's new source
    /// and destination (address, port), the error's own new source and destination, and
    /// whether an error the FIB would deliver to the gateway itself is about the gateway's
    /// own connection (so the kernel's, untouched).
    struct IcmpNat {
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
    fn translate_icmp(
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
    fn icmp_nat(
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
            } else if let Some(backend) = frontend(src.1, protocol) {
                let (addr, port) = (backend.addr, backend.port);
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
            let backend = frontend(src.1, protocol).ok_or(counter::PASS_NO_ROUTE)?;
            return Ok(IcmpNat {
                inner_src: (backend.addr, backend.port),
                inner_dst: dst,
                outer: (outer.0, backend.addr),
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

    /// Lowers the MSS option of a SYN or SYN-ACK in the TCP header at `l4` to `max`, keeping
    /// the checksum right, so that neither end sends segments bigger than the smallest leg
    /// carries (as `TCPMSS --clamp-mss-to-pmtu` would). The option is looked for where every
    /// TCP stack puts it: first, after up to three NOPs. Constant offsets only: a walk with
    /// a variable offset made LLVM shift the packet pointer, which the verifier refuses.
    #[inline(always)]
    fn clamp_mss(ctx: &XdpContext, l4: usize, l4_check: *mut u16, max: u16, partial: bool) {
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
    fn clamp_mss_at<const NOPS: usize>(
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

    /// Whether a packet to the public address that arrived on a one-armed leg (public and
    /// private at once) comes from inside: from a route's backend address and port (its
    /// answer on a hairpin flow, or to the gateway itself), or from a host on one of the
    /// leg's own subnets (the FIB reaches it without a gateway), which a backend on that
    /// wire would answer directly unless the source is translated too. Anyone reached
    /// through a router is a client of the world and keeps its address.
    #[inline(always)]
    fn inside_host(
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

    /// The address the gateway itself would send from to reach `addr` (the kernel's own
    /// choice: its route's preferred source, else the egress leg's address on that
    /// subnet), if it has one. Overwrites `fib`.
    #[inline(always)]
    fn own_address_toward(
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
    fn route_toward(
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
    fn too_big(
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
    fn fib_lookup(
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
    fn complete_checksum(ctx: &XdpContext, l4: usize, l4_len: u16, pseudo: u32, now: u64) -> bool {
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
    fn route_cached(
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
    fn forward(eth: *mut EthHdr, ip: *mut Ipv4Hdr, protocol: u8, fib: &FibParams, rc: i64) -> u32 {
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
    fn takes_redirects(ifindex: u32) -> bool {
        interface(ifindex).is_some_and(|leg| leg.egress == EGRESS_REDIRECT)
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
}
