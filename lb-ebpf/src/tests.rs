//! The incremental updates must agree with checksums computed from scratch, for any packet.

use super::testsupport::{checksum, ipv4_header_checksum, l4_checksum, sum};
use super::*;
use proptest::prelude::*;
use std::vec::Vec;

/// An IPv4 packet (no Ethernet) with valid checksums.
#[derive(Clone, Debug)]
struct Packet {
    bytes: Vec<u8>,
}

impl Packet {
    fn build(
        protocol: u8,
        (src, sport): ([u8; 4], u16),
        (dst, dport): ([u8; 4], u16),
        ttl: u8,
        payload: &[u8],
        udp_no_csum: bool,
    ) -> Self {
        let l4_len = l4_header_len(protocol).unwrap();
        let total = IPV4_HLEN + l4_len + payload.len();
        let mut b = vec![0u8; total];
        b[0] = 0x45;
        b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        b[6] = 0x40; // don't fragment
        b[8] = ttl;
        b[9] = protocol;
        b[12..16].copy_from_slice(&src);
        b[16..20].copy_from_slice(&dst);
        let l4 = IPV4_HLEN;
        b[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        b[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
        if protocol == PROTO_TCP {
            b[l4 + 12] = 0x50;
            b[l4 + 13] = 0x18;
        } else {
            b[l4 + 4..l4 + 6].copy_from_slice(&((l4_len + payload.len()) as u16).to_be_bytes());
        }
        b[l4 + l4_len..].copy_from_slice(payload);
        let hc = ipv4_header_checksum(&b[..IPV4_HLEN]);
        b[10..12].copy_from_slice(&hc.to_be_bytes());
        if !(protocol == PROTO_UDP && udp_no_csum) {
            let c = l4_checksum(src, dst, protocol, &b[l4..]);
            let off = l4 + l4_checksum_offset(protocol).unwrap();
            b[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        Packet { bytes: b }
    }

    fn protocol(&self) -> u8 {
        self.bytes[9]
    }
    fn load16(&self, at: usize) -> u16 {
        u16::from_ne_bytes([self.bytes[at], self.bytes[at + 1]])
    }
    fn store16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    }
    fn load32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.bytes[at..at + 4].try_into().unwrap())
    }
    fn store32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn l4_check_at(&self) -> usize {
        IPV4_HLEN + l4_checksum_offset(self.protocol()).unwrap()
    }

    /// The same steps the XDP program takes: rewrite one address (12 = source,
    /// 16 = destination) and the matching port, patching both checksums.
    fn nat(&mut self, addr_at: usize, new_addr: [u8; 4], new_port: u16) {
        let port_at = IPV4_HLEN + if addr_at == 12 { 0 } else { 2 };
        let old_addr = self.load32(addr_at);
        let new_addr = u32::from_ne_bytes(new_addr);
        let old_port = self.load16(port_at);
        let new_port = u16::from_ne_bytes(new_port.to_be_bytes());
        let ck = self.l4_check_at();
        let l4 = l4_csum_nat(
            self.protocol(),
            self.load16(ck),
            old_addr,
            new_addr,
            old_port,
            new_port,
        );
        self.store16(ck, l4);
        let ip = csum_replace32(self.load16(10), old_addr, new_addr);
        self.store16(10, ip);
        self.store32(addr_at, new_addr);
        self.store16(port_at, new_port);
    }

    fn decrement_ttl(&mut self) {
        let (ttl, proto) = (self.bytes[8], self.bytes[9]);
        let c = ipv4_csum_ttl_decrement(self.load16(10), ttl, proto);
        self.store16(10, c);
        self.bytes[8] = ttl - 1;
    }

    fn header_checksum(&self) -> u16 {
        u16::from_be_bytes([self.bytes[10], self.bytes[11]])
    }
    fn l4_checksum_field(&self) -> u16 {
        let at = self.l4_check_at();
        u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]])
    }
    fn addr(&self, at: usize) -> [u8; 4] {
        self.bytes[at..at + 4].try_into().unwrap()
    }
    fn recomputed_l4(&self) -> u16 {
        l4_checksum(
            self.addr(12),
            self.addr(16),
            self.protocol(),
            &self.bytes[IPV4_HLEN..],
        )
    }
}

/// 0x0000 and 0xffff are both one's-complement zero; a receiver accepts either in TCP.
fn same_ones_complement(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

fn protocol() -> impl Strategy<Value = u8> {
    prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn dnat_and_snat_match_from_scratch(
        protocol in protocol(),
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        sport in any::<u16>(), dport in any::<u16>(),
        new_addr in any::<[u8; 4]>(), new_port in any::<u16>(),
        ttl in 2u8..=255,
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        snat in any::<bool>(),
    ) {
        let mut p = Packet::build(protocol, (src, sport), (dst, dport), ttl, &payload, false);
        p.nat(if snat { 12 } else { 16 }, new_addr, new_port);
        p.decrement_ttl();
        prop_assert_eq!(p.header_checksum(), ipv4_header_checksum(&p.bytes[..IPV4_HLEN]));
        let want = p.recomputed_l4();
        let got = p.l4_checksum_field();
        if protocol == PROTO_UDP {
            prop_assert_ne!(got, 0, "a computed UDP checksum must never become 0");
            prop_assert!(same_ones_complement(got, want), "got {:#x} want {:#x}", got, want);
        } else {
            prop_assert!(same_ones_complement(got, want), "got {:#x} want {:#x}", got, want);
        }
    }

    #[test]
    fn udp_without_checksum_stays_without(
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        new_addr in any::<[u8; 4]>(), new_port in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut p = Packet::build(PROTO_UDP, (src, 4000), (dst, 53), 64, &payload, true);
        p.nat(16, new_addr, new_port);
        prop_assert_eq!(p.l4_checksum_field(), 0);
        prop_assert_eq!(p.header_checksum(), ipv4_header_checksum(&p.bytes[..IPV4_HLEN]));
    }

    #[test]
    fn round_trip_restores_the_packet(
        protocol in protocol(),
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        sport in any::<u16>(), dport in any::<u16>(),
        new_addr in any::<[u8; 4]>(), new_port in any::<u16>(),
    ) {
        let original = Packet::build(protocol, (src, sport), (dst, dport), 64, b"srvgate", false);
        let mut p = original.clone();
        p.nat(16, new_addr, new_port);
        p.nat(16, dst, dport);
        // Same bytes everywhere except possibly a ±0 checksum encoding.
        prop_assert_eq!(&p.bytes[..10], &original.bytes[..10]);
        prop_assert_eq!(&p.bytes[12..IPV4_HLEN], &original.bytes[12..IPV4_HLEN]);
        prop_assert!(same_ones_complement(p.l4_checksum_field(), original.l4_checksum_field()));
    }
}

#[test]
fn rfc1624_example() {
    // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
    let hc = u16::from_ne_bytes(0xdd2fu16.to_be_bytes());
    let m = u16::from_ne_bytes(0x5555u16.to_be_bytes());
    let m2 = u16::from_ne_bytes(0x3285u16.to_be_bytes());
    assert_eq!(csum_replace16(hc, m, m2), 0x0000);
}

#[test]
fn shapes() {
    assert_eq!(ipv4_shape(0x45, 0x4000), Ipv4Shape::Plain);
    assert_eq!(ipv4_shape(0x45, 0x0000), Ipv4Shape::Plain);
    assert_eq!(ipv4_shape(0x46, 0x4000), Ipv4Shape::Options);
    assert_eq!(ipv4_shape(0x45, 0x2000), Ipv4Shape::Fragment);
    assert_eq!(ipv4_shape(0x45, 0x0001), Ipv4Shape::Fragment);
    assert_eq!(ipv4_shape(0x46, 0x2000), Ipv4Shape::Fragment);
    assert_eq!(ipv4_shape(0x44, 0x0000), Ipv4Shape::Invalid);
    assert_eq!(ipv4_shape(0x65, 0x0000), Ipv4Shape::Invalid);
    assert_eq!(l4_checksum_offset(PROTO_TCP), Some(16));
    assert_eq!(l4_checksum_offset(PROTO_UDP), Some(6));
    assert_eq!(l4_checksum_offset(1), None);
}

#[test]
fn ttl_decrement_matches_from_scratch_for_every_ttl() {
    for ttl in 1..=255u8 {
        let mut p = Packet::build(
            PROTO_TCP,
            ([10, 210, 0, 1], 1),
            ([10, 210, 1, 2], 2),
            ttl,
            b"",
            false,
        );
        p.decrement_ttl();
        assert_eq!(
            p.header_checksum(),
            ipv4_header_checksum(&p.bytes[..IPV4_HLEN]),
            "ttl {ttl}"
        );
    }
}

#[test]
fn header_layouts_match_the_wire() {
    use core::mem::size_of;
    assert_eq!(size_of::<EthHdr>(), ETH_HLEN);
    assert_eq!(size_of::<Ipv4Hdr>(), IPV4_HLEN);
    assert_eq!(size_of::<Ports>(), 4);
}

#[test]
fn zero_in_place_clears_every_byte() {
    #[repr(C)]
    struct Block {
        a: [u8; 13],
        b: u16,
        c: u32,
        d: u64,
        e: [u32; 9],
    }
    // SAFETY: integers and arrays of them only.
    unsafe impl crate::Zeroable for Block {}
    let mut slot = core::mem::MaybeUninit::<Block>::uninit();
    // Garbage first, so a store that missed a word would show.
    // SAFETY: the bytes written are exactly those of `slot`; u8 has no invalid values.
    unsafe { core::ptr::write_bytes(slot.as_mut_ptr() as *mut u8, 0xa5, size_of::<Block>()) };
    let block = crate::zero_in_place(&mut slot);
    assert_eq!(
        (block.a, block.b, block.c, block.d, block.e),
        ([0; 13], 0, 0, 0, [0; 9])
    );
    // SAFETY: `block` is initialised, so all of its bytes (padding included, as it was just
    // zeroed) may be read as u8, for as long as the borrow lasts.
    let bytes = unsafe {
        core::slice::from_raw_parts(block as *const Block as *const u8, size_of::<Block>())
    };
    assert!(bytes.iter().all(|&b| b == 0));
}

/// A TCP header with `nops` NOPs, then MSS `mss`, then padding to a 4-byte multiple.
fn syn_with_mss(nops: usize, mss: u16) -> Vec<u8> {
    let mut opts = vec![TCPOPT_NOP; nops];
    opts.extend_from_slice(&[TCPOPT_MSS, 4]);
    opts.extend_from_slice(&mss.to_be_bytes());
    while !opts.len().is_multiple_of(4) {
        opts.push(TCPOPT_EOL);
    }
    let doff = (20 + opts.len()) / 4;
    let mut h = vec![0x9c, 0x40, 0x00, 0x16, 0, 0, 0, 1, 0, 0, 0, 0];
    h.push((doff as u8) << 4);
    h.push(TCP_SYN);
    h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(&opts);
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The incremental MSS checksum equals one computed from scratch, at even and odd
    /// offsets of the value.
    #[test]
    fn mss_clamp_checksum_matches_from_scratch(
        nops in 0usize..8,
        mss in any::<u16>(),
        max in 1u16..=u16::MAX,
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
    ) {
        let mut seg = syn_with_mss(nops, mss);
        let c = l4_checksum(src, dst, PROTO_TCP, &seg);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        let check = u16::from_ne_bytes([seg[16], seg[17]]);
        let Some(new) = clamped_mss(mss, max) else {
            prop_assert!(mss <= max);
            return Ok(());
        };
        prop_assert!(new == max && mss > max);
        let offset = 20 + nops + 2;
        let updated = mss_csum(check, offset, mss, new);
        let mut after = syn_with_mss(nops, new);
        let want = l4_checksum(src, dst, PROTO_TCP, &after);
        after[16..18].copy_from_slice(&updated.to_ne_bytes());
        prop_assert!(
            same_ones_complement(u16::from_be_bytes([after[16], after[17]]), want),
            "nops {nops}: got {:#06x}, want {want:#06x}",
            u16::from_be_bytes([after[16], after[17]])
        );
    }
}

#[test]
fn no_clamp_without_a_maximum_or_below_it() {
    assert_eq!(clamped_mss(1460, 0), None);
    assert_eq!(clamped_mss(1360, 1360), None);
    assert_eq!(clamped_mss(1460, 1360), Some(1360));
}

/// What checksum offload finishes: the segment's sum with the partial field in it,
/// complemented.
fn completed(p: &Packet) -> u16 {
    checksum(sum(&p.bytes[IPV4_HLEN..], 0))
}

proptest! {
    /// A segment whose sender left its checksum to offload (only the pseudo-header's sum
    /// in it) is recognised, and after a rewrite of an address and a port the offload
    /// still completes it to the checksum computed from scratch.
    #[test]
    fn partial_checksums_are_recognised_and_stay_completable(
        protocol in protocol(),
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        ports in any::<(u16, u16)>(),
        new_dst in any::<[u8; 4]>(),
        new_port in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut p = Packet::build(protocol, (src, ports.0), (dst, ports.1), 64, &payload, false);
        let full = p.load16(p.l4_check_at());
        let l4_len = ((p.bytes.len() - IPV4_HLEN) as u16).to_be();
        let (saddr, daddr) = (p.load32(12), p.load32(16));
        let partial = fold(pseudo_header_sum(saddr, daddr, protocol, l4_len));
        prop_assume!(full != partial);
        let pseudo = pseudo_header_sum(saddr, daddr, protocol, l4_len);
        prop_assert!(!is_partial_csum(protocol, full, pseudo));
        prop_assert!(is_partial_csum(protocol, partial, pseudo));
        let ck = p.l4_check_at();
        p.store16(ck, partial);
        prop_assert!(same_ones_complement(completed(&p), p.recomputed_l4()));

        // The program's steps for a partial segment: the address in the pseudo-header,
        // nothing for the port.
        let new_daddr = u32::from_ne_bytes(new_dst);
        p.store16(ck, partial_csum_replace32(partial, daddr, new_daddr));
        p.store32(16, new_daddr);
        p.store16(IPV4_HLEN + 2, u16::from_ne_bytes(new_port.to_be_bytes()));
        let still = p.load16(ck);
        let want_partial = fold(pseudo_header_sum(saddr, new_daddr, protocol, l4_len));
        prop_assert!(same_ones_complement(still, want_partial));
        let (done, want) = (completed(&p), p.recomputed_l4());
        prop_assert!(same_ones_complement(done, want), "completed {done:#06x}, from scratch {want:#06x}");
    }
}

/// What the program sums a segment to: 16-bit words as loaded from memory (native order,
/// as `bpf_csum_diff` does), a zero byte after an odd length.
fn native_sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .fold(0u32, |acc, w| {
            let (s, carry) = acc.overflowing_add(w);
            s + u32::from(carry)
        })
}

proptest! {
    /// Summing the segment tells a complete checksum from a partial one whenever the two
    /// differ, for both protocols and any length (odd ones included).
    #[test]
    fn a_complete_checksum_is_told_from_a_partial_one_by_the_sum(
        protocol in protocol(),
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        ports in any::<(u16, u16)>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let mut p = Packet::build(protocol, (src, ports.0), (dst, ports.1), 64, &payload, false);
        let l4_len = ((p.bytes.len() - IPV4_HLEN) as u16).to_be();
        let (saddr, daddr) = (p.load32(12), p.load32(16));
        let pseudo = pseudo_header_sum(saddr, daddr, protocol, l4_len);
        let full = p.load16(p.l4_check_at());
        let partial = fold(pseudo);
        prop_assume!(!same_ones_complement(full, partial));
        let sum = |p: &Packet| {
            let (s, carry) = pseudo.overflowing_add(native_sum(&p.bytes[IPV4_HLEN..]));
            s + u32::from(carry)
        };
        prop_assert!(sums_to_complete(sum(&p)));
        let ck = p.l4_check_at();
        p.store16(ck, partial);
        prop_assert!(!sums_to_complete(sum(&p)));
    }
}

#[test]
fn a_udp_checksum_of_zero_is_never_partial() {
    assert!(!is_partial_csum(PROTO_UDP, 0, 0));
}

#[test]
fn only_frames_to_the_legs_own_mac_are_addressed_to_it() {
    let own = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    assert!(addressed_to(&own, &own));
    let mut other = own;
    for i in 0..6 {
        other[i] ^= 0x01;
        assert!(!addressed_to(&other, &own), "differs in byte {i}");
        other[i] = own[i];
    }
    assert!(!addressed_to(&[0xff; 6], &own), "broadcast");
    assert!(
        !addressed_to(&[0x01, 0x00, 0x5e, 0, 0, 0x12], &own),
        "multicast"
    );
    // A leg without a MAC (all zero): no check.
    assert!(addressed_to(&[0xff; 6], &[0; 6]));
    assert!(addressed_to(&own, &[0; 6]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The answer's two checksums verify from scratch over what is sent (IPv4 header;
    /// ICMP header and quote), and every field says what RFC 792/1191 want.
    #[test]
    fn frag_needed_headers_verify_from_scratch(
        from in any::<[u8; 4]>(),
        to in any::<[u8; 4]>(),
        mtu in 68u16..=9000,
        quote in proptest::collection::vec(any::<u8>(), ICMP_QUOTE_LEN),
    ) {
        let quote: [u8; ICMP_QUOTE_LEN] = quote.try_into().unwrap();
        let h = frag_needed_headers(
            u32::from_ne_bytes(from),
            u32::from_ne_bytes(to),
            mtu,
            &quote,
        );
        prop_assert_eq!(ipv4_header_checksum(&h[..IPV4_HLEN]), u16::from_be_bytes([h[10], h[11]]));
        prop_assert_eq!(checksum(sum(&h[..IPV4_HLEN], 0)), 0);
        let mut icmp = h[IPV4_HLEN..].to_vec();
        icmp.extend_from_slice(&quote);
        prop_assert_eq!(checksum(sum(&icmp, 0)), 0, "ICMP checksum");
        prop_assert_eq!(&h[12..16], &from[..]);
        prop_assert_eq!(&h[16..20], &to[..]);
        prop_assert_eq!(usize::from(u16::from_be_bytes([h[2], h[3]])), FRAG_NEEDED_HLEN + ICMP_QUOTE_LEN);
        prop_assert_eq!((h[0], h[9], h[20], h[21]), (0x45, PROTO_ICMP, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED));
        prop_assert_eq!(u16::from_be_bytes([h[26], h[27]]), mtu);
        prop_assert_eq!((h[24], h[25]), (0, 0), "unused");
    }
}

#[test]
fn an_icmp_error_is_plausible_only_as_the_packet_it_quotes_allows() {
    let (client, router) = (0x0a00_0001, 0x0a00_0002);
    let df = IP_DF;
    let unreach = |code, mtu| (ICMP_DEST_UNREACH, code, mtu);
    // Only the destination says its port or protocol is unreachable.
    for code in [ICMP_PORT_UNREACH, ICMP_PROT_UNREACH] {
        assert!(icmp_error_plausible(
            unreach(code, 0),
            client,
            (client, df, 100)
        ));
        assert!(!icmp_error_plausible(
            unreach(code, 0),
            router,
            (client, df, 100)
        ));
    }
    // Fragmentation needed: a DF packet longer than the MTU named (or none named).
    let frag = |mtu| unreach(ICMP_FRAG_NEEDED, mtu);
    assert!(icmp_error_plausible(frag(1400), router, (client, df, 1401)));
    assert!(icmp_error_plausible(frag(0), router, (client, df, 1401)));
    assert!(!icmp_error_plausible(
        frag(1400),
        router,
        (client, df, 1400)
    ));
    assert!(!icmp_error_plausible(frag(1400), router, (client, 0, 1500)));
    // Any router on the way may say the rest.
    assert!(icmp_error_plausible(unreach(1, 0), router, (client, 0, 60)));
    assert!(icmp_error_plausible(
        (ICMP_TIME_EXCEEDED, 0, 0),
        router,
        (client, 0, 60)
    ));
}

/// Flows of one client address differing only by source port, and of addresses differing
/// in a few bits, spread evenly over a table's slots: no bucket of 61 gets more than 1.25x
/// its share of 61 000 flows. Both step by 61, so a hash that passed ports or addresses
/// through unmixed would pile them into a few buckets.
#[test]
fn flow_hash_spreads_ports_and_addresses() {
    const BUCKETS: usize = 61;
    let mut by_port = [0u32; BUCKETS];
    let mut by_addr = [0u32; BUCKETS];
    let addr = u32::from_ne_bytes([198, 51, 100, 7]);
    for i in 0..61_000u32 {
        by_port
            [flow_hash(addr, (i.wrapping_mul(61) as u16).to_be(), PROTO_TCP) as usize % BUCKETS] +=
            1;
        let client = u32::from_ne_bytes((0x0a00_0000 + i * 61).to_be_bytes());
        by_addr[flow_hash(client, 443u16.to_be(), PROTO_TCP) as usize % BUCKETS] += 1;
    }
    for counts in [by_port, by_addr] {
        let max = *counts.iter().max().unwrap();
        assert!(max <= 1250, "max bucket {max} of mean 1000: {counts:?}");
    }
}

proptest! {
    /// Every input moves the hash: the same flow always hashes alike, and a flow differing
    /// in address, port or protocol alone hashes elsewhere (the finaliser is a bijection
    /// of the mixed word, so only a collision of the mix itself could hide a change).
    #[test]
    fn flow_hash_depends_on_every_part(addr: u32, port: u16, other: u16, protocol in prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP)]) {
        prop_assert_eq!(flow_hash(addr, port, protocol), flow_hash(addr, port, protocol));
        prop_assert_ne!(flow_hash(addr, port, PROTO_TCP), flow_hash(addr, port, PROTO_UDP));
        prop_assert_ne!(flow_hash(addr, port, protocol), flow_hash(addr ^ 1, port, protocol));
        if other != port {
            prop_assert_ne!(flow_hash(addr, port, protocol), flow_hash(addr, other, protocol));
        }
    }
}
