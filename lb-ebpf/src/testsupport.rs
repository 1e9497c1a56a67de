//! The checksum oracle of every packet test: RFC 1071 sums computed from scratch over
//! whole headers, with none of the incremental maths under test. lb-ebpf's property tests
//! and lb-userspace's `xdp_tests` (BPF_PROG_TEST_RUN on the real bytecode) both check the
//! program's rewrites against it, so the two suites cannot drift apart on what a right
//! checksum is. Host only: built for this crate's tests and, through the `test-support`
//! feature, for lb-userspace's (a dev-dependency).

use crate::{l4_checksum_offset, PROTO_UDP};

/// `acc` plus the one's-complement sum of `data` taken as big-endian 16-bit words, an odd
/// last byte padded with zero; unfolded.
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        acc += hi | pair.get(1).map_or(0, |&b| u32::from(b));
    }
    acc
}

/// The checksum of a sum (folded to 16 bits, complemented): 0 over bytes that include a
/// right checksum.
pub fn checksum(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv4 pseudo-header of a TCP or UDP segment of `len` bytes.
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], protocol: u8, len: usize) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    pseudo
}

/// The checksum an IPv4 header (without options) should carry, whatever its checksum
/// field holds now.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut h = header.to_vec();
    h[10..12].copy_from_slice(&[0, 0]);
    checksum(sum(&h, 0))
}

/// The checksum a TCP or UDP `segment` from `src` to `dst` should carry, whatever its
/// checksum field holds now; a UDP checksum that computes to 0 is sent as 0xffff (RFC 768).
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    let mut s = segment.to_vec();
    let off = l4_checksum_offset(protocol).expect("TCP or UDP");
    s[off..off + 2].copy_from_slice(&[0, 0]);
    let c = checksum(sum(&s, sum(&pseudo_header(src, dst, protocol, s.len()), 0)));
    if protocol == PROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// What a stack leaving the checksum to offload writes (CHECKSUM_PARTIAL): the
/// pseudo-header's folded sum, not complemented.
pub fn partial_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, len: usize) -> u16 {
    !checksum(sum(&pseudo_header(src, dst, protocol, len), 0))
}
