//! Packet maths for srvgate's XDP program: header offsets and incremental checksums.
//!
//! These are plain functions so they build for the host too, where they are unit- and
//! property-tested against checksums recomputed from scratch. The XDP program
//! (`src/main.rs`) calls them on the fields it reads from the packet.
//!
//! Byte order: the one's-complement sum commutes with byte swapping, so every function
//! here takes 16- and 32-bit fields *as they were loaded from packet memory* (native
//! load of network-order bytes) and returns the checksum in that same form. No swaps are
//! needed on the hot path, and the maths is right on either endianness.
//!
//! Also here: the checks the program makes on what it reads (`addressed_to`,
//! `is_partial_csum`, `sums_to_complete`, `icmp_error_plausible`), the headers of an ICMP
//! "fragmentation needed" answer (`frag_needed_headers`), the wire header structs, and
//! `zero_in_place`, zeroing without an out-of-line memset for types that implement the
//! `unsafe trait Zeroable` (the promise that all-zero is valid is made once per type; a
//! compile-fail doc test keeps it required). `src/tests.rs` property-tests this file against
//! `src/testsupport.rs`, the checksum oracle that lb-userspace's `xdp_tests` use too.
#![cfg_attr(not(any(test, feature = "test-support")), no_std)]

pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4, in network order as a big-endian number.
pub const ETH_P_IPV4: u16 = 0x0800;
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// lb-common's, which the maps' keys are built with: one definition for the packet code
/// and the daemon.
pub use lb_common::{PROTO_TCP, PROTO_UDP};

/// Ethernet header as it sits in the frame (fields in network byte order).
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

/// IPv4 header without options (fields in network byte order).
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// The first four bytes of a TCP or UDP header (network byte order).
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// How the program treats an IPv4 header, from its first byte and its flags/fragment field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv4Shape {
    /// Version 4, no options, not a fragment: ports follow at `IPV4_HLEN`.
    Plain,
    /// Carries options; the program leaves it to the kernel.
    Options,
    /// A fragment (more-fragments set or a non-zero offset); only the first has ports.
    Fragment,
    /// Not a valid IPv4 header (version is not 4 or IHL below 5).
    Invalid,
}

/// Whether a frame sent to `dst` is for a leg whose own MAC is `own`: its own unicast
/// address, or any frame when the leg's MAC is unknown (all zero). Broadcast, multicast and
/// other machines' addresses are not.
#[inline(always)]
pub fn addressed_to(dst: &[u8; 6], own: &[u8; 6]) -> bool {
    // As one 32-bit and one 16-bit word: a byte-by-byte loop cost about 5 ns a packet
    // (BPF_PROG_TEST_RUN), and an array comparison may become a call to memcmp, which BPF
    // lacks.
    let (dst_hi, dst_lo) = mac_words(dst);
    let (own_hi, own_lo) = mac_words(own);
    (own_hi | own_lo as u32) == 0 || (dst_hi == own_hi && dst_lo == own_lo)
}

#[inline(always)]
fn mac_words(mac: &[u8; 6]) -> (u32, u16) {
    let p = mac.as_ptr();
    // In BPF, one load per word. An unaligned read would be lowered to a load per byte
    // (LLVM's BPF target assumes no misaligned access), 35 instructions for the check.
    // SAFETY: both reads lie inside the 6 bytes `mac` refers to. BPF loads are not
    // alignment-checked where the CPU does not need it (the verifier allows unaligned
    // packet access on such machines, x86 and arm64 among them), and the program reads
    // packet fields this way throughout (the IPv4 addresses at frame offsets 26 and 30).
    #[cfg(target_arch = "bpf")]
    unsafe {
        (p.cast::<u32>().read(), p.add(4).cast::<u16>().read())
    }
    // SAFETY: as above; on the host (tests) the reads may not assume alignment.
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        (
            p.cast::<u32>().read_unaligned(),
            p.add(4).cast::<u16>().read_unaligned(),
        )
    }
}

/// Classifies a header from its version/IHL byte and its flags+fragment-offset field
/// (host order, i.e. `u16::from_be` of the wire value).
#[inline(always)]
pub fn ipv4_shape(version_ihl: u8, flags_frag_off: u16) -> Ipv4Shape {
    let version = version_ihl >> 4;
    let ihl = version_ihl & 0x0f;
    if version != 4 || ihl < 5 {
        Ipv4Shape::Invalid
    } else if flags_frag_off & 0x3fff != 0 {
        // 0x2000 is more-fragments, 0x1fff the offset; 0x4000 (don't fragment) is fine.
        Ipv4Shape::Fragment
    } else if ihl != 5 {
        Ipv4Shape::Options
    } else {
        Ipv4Shape::Plain
    }
}

/// Offset of the checksum field inside the L4 header, for the protocols the program rewrites.
#[inline(always)]
pub fn l4_checksum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        _ => None,
    }
}

/// Bytes of L4 header the program must be able to read for `protocol`.
#[inline(always)]
pub fn l4_header_len(protocol: u8) -> Option<usize> {
    match protocol {
        PROTO_TCP => Some(TCP_HLEN),
        PROTO_UDP => Some(UDP_HLEN),
        _ => None,
    }
}

/// Folds a 32-bit one's-complement accumulator into 16 bits. Two rounds suffice for any
/// sum of fewer than 65536 16-bit terms, and a fixed count keeps the verifier happy.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
fn halves(v: u32) -> (u32, u32) {
    (v & 0xffff, v >> 16)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit field changes from `old` to `new`,
/// `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub fn csum_replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address): two 16-bit words at once.
#[inline(always)]
pub fn csum_replace32(check: u16, old: u32, new: u32) -> u16 {
    let (old_lo, old_hi) = halves(!old);
    let (new_lo, new_hi) = halves(new);
    let sum = (!check) as u32 + old_lo + old_hi + new_lo + new_hi;
    !fold(sum)
}

/// The TCP/UDP checksum after NAT changes one address (in the pseudo-header) and one port.
///
/// UDP over IPv4 may carry checksum 0, meaning "not computed": it stays 0. A computed
/// UDP checksum of 0 is sent as 0xffff (RFC 768), since 0 would mean "none".
#[inline(always)]
pub fn l4_csum_nat(
    protocol: u8,
    check: u16,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> u16 {
    if protocol == PROTO_UDP && check == 0 {
        return 0;
    }
    let (old_lo, old_hi) = halves(!old_addr);
    let (new_lo, new_hi) = halves(new_addr);
    let sum =
        (!check) as u32 + old_lo + old_hi + new_lo + new_hi + (!old_port) as u32 + new_port as u32;
    let out = !fold(sum);
    if protocol == PROTO_UDP && out == 0 {
        0xffff
    } else {
        out
    }
}

/// The one's-complement sum of the IPv4 pseudo-header (RFC 9293 3.1, RFC 768): both
/// addresses, the protocol and `l4_len` (the TCP/UDP length as loaded from packet memory,
/// i.e. network order), unfolded.
#[inline(always)]
pub fn pseudo_header_sum(saddr: u32, daddr: u32, protocol: u8, l4_len: u16) -> u32 {
    let (s_lo, s_hi) = halves(saddr);
    let (d_lo, d_hi) = halves(daddr);
    s_lo + s_hi + d_lo + d_hi + u16::from_ne_bytes([0, protocol]) as u32 + l4_len as u32
}

/// Whether an L4 checksum field holds only the pseudo-header's folded sum (`pseudo`, from
/// [`pseudo_header_sum`]), not complemented: what a stack that leaves the rest to checksum
/// offload writes (CHECKSUM_PARTIAL; the offload adds the segment and complements). A UDP checksum of 0
/// means none and is never partial. A complete checksum can equal that value by chance
/// (about one segment in 65 536 on a leg where partial ones are looked for), so the
/// program sums a segment this says yes to ([`sums_to_complete`]) before it treats it as
/// partial: updated as a partial one, a complete checksum would be left wrong, and the
/// segment would take the kernel's path, out of order with its flow's others.
#[inline(always)]
pub fn is_partial_csum(protocol: u8, check: u16, pseudo: u32) -> bool {
    !(protocol == PROTO_UDP && check == 0) && check == fold(pseudo)
}

/// Whether a segment's checksum field holds its complete checksum: `sum`, the
/// one's-complement sum of its pseudo-header ([`pseudo_header_sum`]) and of every byte of
/// the segment with that field in it (an odd length padded with a zero byte, RFC 1071), is
/// all ones. A field holding the partial value passes only if that value is also the
/// complete checksum, when either reading of it is right.
#[inline(always)]
pub fn sums_to_complete(sum: u32) -> bool {
    fold(sum) == 0xffff
}

/// A partial checksum (see [`is_partial_csum`]) after one address changes: only the
/// pseudo-header part moves, and it is not complemented. Ports and options lie in the
/// part the offload sums later, so their changes need nothing here.
#[inline(always)]
pub fn partial_csum_replace32(check: u16, old_addr: u32, new_addr: u32) -> u16 {
    let (old_lo, old_hi) = halves(!old_addr);
    let (new_lo, new_hi) = halves(new_addr);
    fold(check as u32 + old_lo + old_hi + new_lo + new_hi)
}

pub const PROTO_ICMP: u8 = 1;
/// ICMP messages that carry the header of the packet they are about (RFC 792), and so
/// must be translated like that packet's flow.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP header: type, code, checksum, and four bytes that depend on the type.
pub const ICMP_HLEN: usize = 8;

#[inline(always)]
pub fn icmp_is_error(icmp_type: u8) -> bool {
    icmp_type == ICMP_DEST_UNREACH || icmp_type == ICMP_TIME_EXCEEDED
}

/// The checksums after one address and one port of the packet embedded in an ICMP error
/// change (`old_addr` -> `new_addr`, `old_port` -> `new_port`; all as loaded from packet
/// memory): the embedded IPv4 header's, the embedded UDP checksum's if there is one (it
/// lies in the 8 bytes of L4 header an error must carry; a TCP checksum does not, and is
/// left alone), and the ICMP checksum, which covers all of those bytes, the changed
/// checksums included. Returns (icmp, embedded IPv4, embedded UDP).
#[inline(always)]
pub fn icmp_embedded_nat(
    icmp_check: u16,
    inner_ip_check: u16,
    inner_udp_check: Option<u16>,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> (u16, u16, Option<u16>) {
    let ip = csum_replace32(inner_ip_check, old_addr, new_addr);
    let mut icmp = csum_replace32(icmp_check, old_addr, new_addr);
    icmp = csum_replace16(icmp, old_port, new_port);
    icmp = csum_replace16(icmp, inner_ip_check, ip);
    let udp = match inner_udp_check {
        Some(old) => {
            let new = l4_csum_nat(PROTO_UDP, old, old_addr, new_addr, old_port, new_port);
            icmp = csum_replace16(icmp, old, new);
            Some(new)
        }
        None => None,
    };
    (icmp, ip, udp)
}

/// Code of "fragmentation needed and DF set" under destination unreachable (RFC 792, 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// What an ICMP error quotes of the packet it is about: its IPv4 header (without options,
/// the only kind the program forwards) and the first 8 bytes of its L4 header, which hold
/// the ports, all a sender's stack needs to find the socket (RFC 792).
pub const ICMP_QUOTE_LEN: usize = IPV4_HLEN + 8;
/// Codes of "protocol unreachable" and "port unreachable" under destination unreachable:
/// only the quoted packet's destination host itself can know either (RFC 1122 3.2.2.1).
pub const ICMP_PROT_UNREACH: u8 = 2;
pub const ICMP_PORT_UNREACH: u8 = 3;

/// What the fields an ICMP error carries about itself (its type, code, the next-hop MTU
/// of a "fragmentation needed", the address it came from) and the quoted packet's header
/// (destination, flags and offset in host order, total length) allow, without connection
/// state: an error that none of the quoted flow's packets could have caused is `false`.
/// A port or protocol unreachable must come from the quoted destination itself; a
/// "fragmentation needed" must quote a DF packet longer than the MTU it names (0: an old
/// router that names none, RFC 1191 section 5). Everything else (which packet of the flow,
/// whether the flow exists at all) needs the state only its endpoints hold: the error
/// goes to the endpoint, whose stack checks it (a TCP stack, the quoted sequence number).
#[inline(always)]
pub fn icmp_error_plausible(
    (icmp_type, code, mtu): (u8, u8, u16),
    sender: u32,
    (quoted_dst, quoted_frag_off, quoted_tot_len): (u32, u16, u16),
) -> bool {
    if icmp_type != ICMP_DEST_UNREACH {
        return true;
    }
    match code {
        ICMP_PROT_UNREACH | ICMP_PORT_UNREACH => sender == quoted_dst,
        ICMP_FRAG_NEEDED => quoted_frag_off & IP_DF != 0 && (mtu == 0 || quoted_tot_len > mtu),
        _ => true,
    }
}

/// IPv4 and ICMP headers of a "fragmentation needed" answer, in front of the quote.
pub const FRAG_NEEDED_HLEN: usize = IPV4_HLEN + ICMP_HLEN;
/// The IP-flags bit "don't fragment", in the host-order flags+offset field.
pub const IP_DF: u16 = 0x4000;

/// Big-endian 16-bit words of `bytes` (of even length) summed, unfolded.
#[inline(always)]
fn be_words_sum(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// The IPv4 and ICMP headers of a "fragmentation needed" error from `from` to `to` (both
/// as loaded from packet memory), announcing `next_hop_mtu` (host order) and quoting
/// `quote` (the offending packet's IPv4 header and first 8 L4 bytes, as its sender sent
/// them), checksums computed. TOS 0xc0 (internetwork control) and TTL 64, as Linux sends
/// its own; DF set and ID 0 (an atomic datagram, RFC 6864): 56 bytes are never fragmented.
#[inline(always)]
pub fn frag_needed_headers(
    from: u32,
    to: u32,
    next_hop_mtu: u16,
    quote: &[u8; ICMP_QUOTE_LEN],
) -> [u8; FRAG_NEEDED_HLEN] {
    let mut h = [0u8; FRAG_NEEDED_HLEN];
    let total = (FRAG_NEEDED_HLEN + ICMP_QUOTE_LEN) as u16;
    h[0] = 0x45;
    h[1] = 0xc0;
    [h[2], h[3]] = total.to_be_bytes();
    [h[6], h[7]] = IP_DF.to_be_bytes();
    h[8] = 64;
    h[9] = PROTO_ICMP;
    [h[12], h[13], h[14], h[15]] = from.to_ne_bytes();
    [h[16], h[17], h[18], h[19]] = to.to_ne_bytes();
    [h[10], h[11]] = (!fold(be_words_sum(&h[..IPV4_HLEN]))).to_be_bytes();
    h[20] = ICMP_DEST_UNREACH;
    h[21] = ICMP_FRAG_NEEDED;
    [h[26], h[27]] = next_hop_mtu.to_be_bytes();
    let icmp = be_words_sum(&h[IPV4_HLEN..]) + be_words_sum(quote);
    [h[22], h[23]] = (!fold(icmp)).to_be_bytes();
    h
}

/// The SYN bit of the TCP flags byte (header byte 13).
pub const TCP_SYN: u8 = 0x02;
/// TCP option kinds (RFC 9293).
pub const TCPOPT_EOL: u8 = 0;
pub const TCPOPT_NOP: u8 = 1;
pub const TCPOPT_MSS: u8 = 2;

/// The MSS to write instead of `mss` when it exceeds `max` (0: no clamping).
#[inline(always)]
pub fn clamped_mss(mss: u16, max: u16) -> Option<u16> {
    (max != 0 && mss > max).then_some(max)
}

/// The TCP checksum after the MSS value at byte `offset` of the TCP header changes from
/// `old` to `new` (host order). At an odd offset (options after a single NOP) the value
/// straddles two checksum words, which in one's-complement arithmetic is the same as the
/// byte-swapped value in one word.
#[inline(always)]
pub fn mss_csum(check: u16, offset: usize, old: u16, new: u16) -> u16 {
    let (o, n) = (old.to_be_bytes(), new.to_be_bytes());
    if offset.is_multiple_of(2) {
        csum_replace16(check, u16::from_ne_bytes(o), u16::from_ne_bytes(n))
    } else {
        csum_replace16(
            check,
            u16::from_ne_bytes([o[1], o[0]]),
            u16::from_ne_bytes([n[1], n[0]]),
        )
    }
}

/// The 16-bit word holding TTL and protocol, as loaded from packet memory.
#[inline(always)]
pub fn ttl_proto_word(ttl: u8, protocol: u8) -> u16 {
    u16::from_ne_bytes([ttl, protocol])
}

/// The IPv4 header checksum after the TTL drops by one.
#[inline(always)]
pub fn ipv4_csum_ttl_decrement(check: u16, ttl: u8, protocol: u8) -> u16 {
    csum_replace16(
        check,
        ttl_proto_word(ttl, protocol),
        ttl_proto_word(ttl.wrapping_sub(1), protocol),
    )
}

/// The hash that places a flow in a pool's Maglev table (slot = hash % table size): of
/// the client's address and port (as loaded from packet memory) and the protocol, so that
/// every packet of a flow, on any gateway, lands on the same slot. The public port is not
/// in it: a pool belongs to one route, whose table is looked up by that port already.
/// MurmurHash3's 32-bit finaliser over one word mixing the three: a handful of
/// multiplications and shifts, no loop, no table, so the same on the host (lb-userspace's
/// `maglev` tests) as in BPF.
#[inline(always)]
pub fn flow_hash(addr: u32, port: u16, protocol: u8) -> u32 {
    let mut h = addr ^ ((u32::from(port) << 8) | u32::from(protocol)).wrapping_mul(0x9e37_79b9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Types whose all-zero bit pattern is a valid value: what [`zero_in_place`] hands out.
///
/// # Safety
///
/// Implement it only for types that are valid all-zero: plain integers, arrays and
/// `#[repr(C)]` structs or unions of them, such as the C structs passed to helpers. Not for
/// references, function pointers, `NonZero*`, `bool`-like enums without a zero variant, or
/// anything containing them.
pub unsafe trait Zeroable {}

// SAFETY: the fib lookup parameters are a C struct of integers and unions of integers; the
// kernel's own callers zero them with memset.
#[cfg(target_arch = "bpf")]
unsafe impl Zeroable for aya_ebpf::bindings::bpf_fib_lookup {}

/// Zeroes a value in place and hands it out initialised, for structs passed to helpers
/// (the 64-byte `bpf_fib_lookup` parameters above all). `mem::zeroed()`, or any zeroed value
/// moved into place, compiles for BPF to a call of a byte-at-a-time memset subprogram: in a
/// profile of the forwarding path it cost over half as much as the rest of the program.
/// Volatile word stores into the final location cannot be turned back into that call.
/// The words are 32-bit: the verifier refuses stack stores that are not aligned to their
/// size, and the fib parameters are only 4-aligned.
///
/// `T` must be 4-aligned and of a size that is a multiple of 4 (checked at compile time),
/// and valid all-zero ([`Zeroable`]), so the function is safe to call:
///
/// ```
/// #[repr(C)]
/// struct Params { a: u32, b: [u16; 2] }
/// // SAFETY: integers only.
/// unsafe impl lb_ebpf::Zeroable for Params {}
/// let mut slot = core::mem::MaybeUninit::<Params>::uninit();
/// assert_eq!(lb_ebpf::zero_in_place(&mut slot).b, [0, 0]);
/// ```
///
/// A type that is not valid all-zero does not compile:
///
/// ```compile_fail
/// let mut slot = core::mem::MaybeUninit::<core::num::NonZeroU32>::uninit();
/// let _ = lb_ebpf::zero_in_place(&mut slot);
/// ```
#[inline(always)]
pub fn zero_in_place<T: Zeroable>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const {
        assert!(core::mem::size_of::<T>().is_multiple_of(4));
        assert!(core::mem::align_of::<T>() >= 4);
    };
    let words = slot.as_mut_ptr() as *mut u32;
    for i in 0..core::mem::size_of::<T>() / 4 {
        // SAFETY: i < size_of::<T>() / 4, so every store is inside `slot`.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte was just written, and `T: Zeroable` says all-zero is a valid T.
    unsafe { slot.assume_init_mut() }
}

#[cfg(any(test, feature = "test-support"))]
pub mod testsupport;

#[cfg(test)]
mod tests;
