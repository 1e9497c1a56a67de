//! DF packets too big for their egress: answered with "fragmentation needed".

use super::*;

/// An ICMP "fragmentation needed" frame, checked from scratch: (from, to, next-hop MTU,
/// quoted bytes, dst MAC, src MAC).
fn parse_frag_needed(f: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, Vec<u8>, [u8; 6], [u8; 6]) {
    assert_eq!(f.len(), 14 + 20 + 8 + 28, "the answer's length: {f:02x?}");
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    let ip = &f[14..34];
    assert_eq!(
        checksum(sum(ip, 0)),
        0,
        "IPv4 header checksum wrong: {ip:02x?}"
    );
    assert_eq!((ip[0], ip[9]), (0x45, 1), "IPv4, ICMP");
    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), 20 + 8 + 28);
    assert_eq!(checksum(sum(&f[34..], 0)), 0, "ICMP checksum wrong");
    assert_eq!(
        (f[34], f[35]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    let a = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
    let mac = |i: usize| -> [u8; 6] { f[i..i + 6].try_into().unwrap() };
    (
        a(14 + 12),
        a(14 + 16),
        u16::from_be_bytes([f[40], f[41]]),
        f[42..].to_vec(),
        mac(0),
        mac(6),
    )
}

/// A DF packet too big for its egress leg is answered with "fragmentation needed" for
/// that leg's MTU, quoting it as its sender sent it (not as rewritten), from the
/// gateway's address on the sender's side, back out of the leg it came in on; one that
/// fits is forwarded; one without DF is rewritten and left to the kernel, which fragments.
#[test]
fn a_df_packet_too_big_for_its_egress_is_answered_with_fragmentation_needed() {
    let Some(mut h) =
        Harness::new("a_df_packet_too_big_for_its_egress_is_answered_with_fragmentation_needed")
    else {
        return;
    };
    // One NIC, so the answer can leave where the packet came in (a redirect into the leg,
    // which must take redirects), and the egress is the same 1400-byte leg.
    h.one_armed();
    h.allow_redirects();
    let too_big = |f: Frame| Frame {
        payload: usize::from(LEG_MTU),
        ..f
    };
    let cases = [
        (
            "a client's UDP datagram",
            too_big(Frame::udp((CLIENT, 40000), (PUBLIC, DNS_PORT))),
            PUBLIC,
            CLIENT,
        ),
        (
            "a client's TCP segment",
            too_big(Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT))),
            PUBLIC,
            CLIENT,
        ),
        (
            // From the leg's own address, the gateway's on the backend's side.
            "a backend's UDP answer",
            too_big(Frame::udp((BACKEND, 53), (CLIENT, 40000))),
            LEG,
            BACKEND,
        ),
        (
            "a host inside, to the route (hairpin)",
            too_big(Frame::udp((INSIDE, 5000), (PUBLIC, DNS_PORT))),
            LEG,
            INSIDE,
        ),
    ];
    let before = h.route(DNS_ID);
    for (what, frame, from, to) in cases {
        let bytes = frame.bytes();
        let out = h.expect(
            &bytes,
            h.leg,
            (XDP_REDIRECT, counter::TX_FRAG_NEEDED),
            format_args!("{what}"),
        );
        let (src, dst, mtu, quote, dst_mac, src_mac) = parse_frag_needed(&out);
        assert_eq!((src, dst, mtu), (from, to, LEG_MTU), "{what}");
        assert_eq!(quote, &bytes[14..14 + 28], "{what}: the packet as sent");
        assert_eq!(
            (dst_mac, src_mac),
            (
                bytes[6..12].try_into().unwrap(),
                bytes[0..6].try_into().unwrap()
            ),
            "{what}: back to the previous hop"
        );
    }
    assert_eq!(h.route(DNS_ID), before, "nothing was forwarded");

    // Without DF: rewritten, left to the kernel, which fragments it.
    let big = too_big(Frame::udp((CLIENT, 40000), (PUBLIC, DNS_PORT))).bytes();
    let out = h.expect(
        &without_df(big),
        h.leg,
        (XDP_PASS, counter::FWD_PASS_FRAG_NEEDED),
        "",
    );
    assert_eq!(parse(&out).dst, (BACKEND, 53));
    // What fits goes on.
    let fits = Frame {
        payload: usize::from(LEG_MTU) - 28,
        ..Frame::udp((CLIENT, 40000), (PUBLIC, DNS_PORT))
    };
    let out = h.expect(
        &fits.bytes(),
        h.leg,
        (XDP_REDIRECT, counter::FWD_REDIRECT),
        "",
    );
    assert_eq!(parse(&out).dst, (BACKEND, 53));
}
