//! ICMP errors about translated flows (and hairpin flows), and the implausible ones left alone.

use super::*;

/// An ICMP error as it leaves, every checksum it can be checked by verified from scratch:
/// (outer source, outer destination, quoted source, quoted destination, quoted UDP
/// checksum).
fn parse_icmp(f: &[u8]) -> (Ipv4Addr, Ipv4Addr, (Ipv4Addr, u16), (Ipv4Addr, u16), u16) {
    let ip = &f[14..34];
    assert_eq!(checksum(sum(ip, 0)), 0, "outer IPv4 checksum");
    assert_eq!(checksum(sum(&f[34..], 0)), 0, "ICMP checksum");
    let inner = &f[42..62];
    assert_eq!(checksum(sum(inner, 0)), 0, "quoted IPv4 checksum");
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    (
        addr(&ip[12..16]),
        addr(&ip[16..20]),
        (addr(&inner[12..16]), port(62)),
        (addr(&inner[16..20]), port(64)),
        port(68),
    )
}

/// A UDP datagram's own checksum, as its frame says.
fn udp_checksum_of(f: &Frame) -> u16 {
    let b = f.bytes();
    u16::from_be_bytes([b[40], b[41]])
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_both_ways() {
    let Some(mut h) = Harness::new("icmp_errors_about_translated_flows_are_translated_both_ways")
    else {
        return;
    };
    h.allow_redirects();
    // A router beyond the public side could not forward the backend's (translated) segment
    // to the client: the error comes to the public address and goes to the backend.
    let sent = Frame::tcp((PUBLIC, SSH_PORT), (CLIENT, 40000));
    let err = icmp_error(3, ROUTER, PUBLIC, &sent, 8);
    let out = h.expect(&err, 1, (XDP_REDIRECT, counter::FWD_REDIRECT), "");
    let (src, dst, qsrc, qdst, _) = parse_icmp(&out);
    assert_eq!((src, dst), (ROUTER, BACKEND));
    assert_eq!((qsrc, qdst), ((BACKEND, 22), (CLIENT, 40000)));

    // The same about a UDP datagram: its quoted checksum becomes the backend's datagram's.
    let sent = Frame::udp((PUBLIC, DNS_PORT), (CLIENT, 5000));
    let (_, out, _) = h.run(&icmp_error(11, ROUTER, PUBLIC, &sent, 8), 1);
    let (_, dst, qsrc, _, qudp) = parse_icmp(&out);
    assert_eq!((dst, qsrc), (BACKEND, (BACKEND, 53)));
    let original = Frame::udp((BACKEND, 53), (CLIENT, 5000));
    assert_eq!(qudp, udp_checksum_of(&original));

    // The backend refusing a client's datagram: out from the public address and port.
    let sent = Frame::udp((CLIENT, 5000), (BACKEND, 53));
    let (action, out, _) = h.run(&icmp_error(3, BACKEND, CLIENT, &sent, 8), h.leg);
    assert_eq!(action, XDP_REDIRECT);
    let (src, dst, qsrc, qdst, qudp) = parse_icmp(&out);
    assert_eq!((src, dst), (PUBLIC, CLIENT));
    assert_eq!((qsrc, qdst), ((CLIENT, 5000), (PUBLIC, DNS_PORT)));
    assert_eq!(
        qudp,
        udp_checksum_of(&Frame::udp((CLIENT, 5000), (PUBLIC, DNS_PORT)))
    );

    // About no flow of ours, not an error, or quoting too little: the kernel's, untouched.
    let unknown = icmp_error(
        3,
        ROUTER,
        PUBLIC,
        &Frame::tcp((PUBLIC, 9999), (CLIENT, 1)),
        8,
    );
    let mut echo = icmp_error(3, ROUTER, PUBLIC, &sent, 8);
    echo[34] = 8;
    let short = icmp_error(
        3,
        ROUTER,
        PUBLIC,
        &Frame::tcp((PUBLIC, SSH_PORT), (CLIENT, 1)),
        4,
    );
    for (what, frame, want) in [
        ("an unknown flow", &unknown, counter::PASS_NO_ROUTE),
        ("an echo request", &echo, counter::PASS_NOT_TCP_UDP),
        (
            "a quote shorter than 8 bytes",
            &short,
            counter::PASS_MALFORMED,
        ),
    ] {
        let (action, out, verdict) = h.run(frame, 1);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(&out, frame, "{what}: untouched");
        assert_eq!(name(verdict), name(want), "{what}");
    }
}

/// ICMP errors about hairpin flows (a private host using a route's public address and
/// port): each end hears of the other as it knows it, both on a private leg and on a
/// one-armed gateway's one NIC.
#[test]
fn icmp_errors_about_hairpin_flows_reach_the_other_end_as_it_knows_it() {
    let Some(mut h) =
        Harness::new("icmp_errors_about_hairpin_flows_reach_the_other_end_as_it_knows_it")
    else {
        return;
    };
    h.allow_redirects();
    // Without a hairpin flow, an error about `public:port -> backend` is about the
    // gateway's own connection from its public address: the kernel's, untouched.
    let own = icmp_error(
        3,
        BACKEND,
        PUBLIC,
        &Frame::tcp((PUBLIC, 41000), (BACKEND, 22)),
        8,
    );
    let out = h.expect(&own, h.leg, (XDP_PASS, counter::PASS_LOCAL), "");
    assert_eq!(out, own, "untouched");

    for one_armed in [false, true] {
        if one_armed {
            h.one_armed();
        }
        let ask = Frame::udp((INSIDE, 5000), (PUBLIC, DNS_PORT));
        assert_eq!(h.run(&ask.bytes(), h.leg).0, XDP_REDIRECT, "the flow");
        let syn = Frame {
            syn: Some((0, 1460, false)),
            ..Frame::tcp((INSIDE, 40000), (PUBLIC, SSH_PORT))
        };
        assert_eq!(h.run(&syn.bytes(), h.leg).0, XDP_REDIRECT, "the flow");

        // The backend refuses the translated datagram: the host hears it from the address
        // and port it sent to, about the datagram it sent.
        let sent = Frame::udp((PUBLIC, 5000), (BACKEND, 53));
        let out = h.expect(
            &icmp_error(3, BACKEND, PUBLIC, &sent, 8),
            h.leg,
            (XDP_REDIRECT, counter::FWD_REDIRECT),
            format_args!("one-armed: {one_armed}"),
        );
        let (src, dst, qsrc, qdst, qudp) = parse_icmp(&out);
        assert_eq!((src, dst), (PUBLIC, INSIDE), "one-armed: {one_armed}");
        assert_eq!((qsrc, qdst), ((INSIDE, 5000), (PUBLIC, DNS_PORT)));
        assert_eq!(qudp, udp_checksum_of(&ask));
        assert_eq!(out[..6], INSIDE_MAC, "to the host's MAC");

        // The host refuses the backend's answer: the backend hears it from the public
        // address, about its datagram to `public:5000`.
        let answered = Frame::udp((PUBLIC, DNS_PORT), (INSIDE, 5000));
        let (action, out, _) = h.run(&icmp_error(3, INSIDE, PUBLIC, &answered, 8), h.leg);
        assert_eq!(action, XDP_REDIRECT, "one-armed: {one_armed}");
        let (src, dst, qsrc, qdst, qudp) = parse_icmp(&out);
        assert_eq!((src, dst), (PUBLIC, BACKEND), "one-armed: {one_armed}");
        assert_eq!((qsrc, qdst), ((BACKEND, 53), (PUBLIC, 5000)));
        assert_eq!(
            qudp,
            udp_checksum_of(&Frame::udp((BACKEND, 53), (PUBLIC, 5000)))
        );
        assert_eq!(out[..6], BACKEND_MAC, "to the backend's MAC");

        // TCP, an error from a router on the way (time exceeded), both directions. Not
        // from the gateway's own address: on the one-armed (public) leg that source is
        // refused as spoofed.
        let sent = Frame::tcp((PUBLIC, 40000), (BACKEND, 22));
        let (_, out, _) = h.run(&icmp_error(11, INSIDE_2, PUBLIC, &sent, 8), h.leg);
        let (src, dst, qsrc, qdst, _) = parse_icmp(&out);
        assert_eq!((src, dst), (PUBLIC, INSIDE));
        assert_eq!((qsrc, qdst), ((INSIDE, 40000), (PUBLIC, SSH_PORT)));
        let answered = Frame::tcp((PUBLIC, SSH_PORT), (INSIDE, 40000));
        let (_, out, _) = h.run(&icmp_error(11, INSIDE_2, PUBLIC, &answered, 8), h.leg);
        let (src, dst, qsrc, qdst, _) = parse_icmp(&out);
        assert_eq!((src, dst), (PUBLIC, BACKEND));
        assert_eq!((qsrc, qdst), ((BACKEND, 22), (PUBLIC, 40000)));
    }

    // About an answer to a host that is not the flow's client: on a private leg nobody's
    // (the kernel's, untouched); on the one-armed leg, still of this test, that host is a
    // client of the world and the error goes to the backend as any client's would.
    let stranger = Frame::udp((PUBLIC, DNS_PORT), (INSIDE_2, 5000));
    let err = icmp_error(3, INSIDE_2, PUBLIC, &stranger, 8);
    let (_, out, _) = h.run(&err, h.leg);
    let (_, dst, qsrc, qdst, _) = parse_icmp(&out);
    assert_eq!(
        (dst, qsrc, qdst),
        (BACKEND, (BACKEND, 53), (INSIDE_2, 5000))
    );
    h.edit_leg(h.leg, |leg| leg.role = ROLE_PRIVATE);
    let out = h.expect(&err, h.leg, (XDP_PASS, counter::PASS_NO_ROUTE), "");
    assert_eq!(out, err, "untouched");
}

/// What an ICMP error says of itself is checked against the packet it quotes, as far as
/// no connection state is needed: a port or protocol unreachable comes from the quoted
/// packet's destination itself (RFC 1122 3.2.2.1: only it knows), a "fragmentation
/// needed" quotes a DF packet longer than the MTU it names, and an error about a packet
/// to a backend or a private host comes in on the leg that reaches that address. Anything
/// else is passed untouched, not translated to a flow's other end.
#[test]
fn icmp_errors_no_packet_of_the_flow_could_have_caused_are_not_translated() {
    let Some(mut h) =
        Harness::new("icmp_errors_no_packet_of_the_flow_could_have_caused_are_not_translated")
    else {
        return;
    };
    h.allow_redirects();
    const PORT_UNREACHABLE: (u8, u8, u16) = (3, 3, 0);
    const FRAG_NEEDED: (u8, u8, u16) = (3, 4, 1400);
    let answer = Frame::udp((PUBLIC, DNS_PORT), (CLIENT, 5000));
    let big = Frame {
        payload: 1400,
        ..answer.clone()
    };
    let request = Frame::udp((CLIENT, 5000), (BACKEND, 53));
    // Each with the leg it arrives on; first what is plausible, which is translated.
    let plausible = [
        (
            "the client refusing the backend's answer",
            icmp_error_code(PORT_UNREACHABLE, CLIENT, PUBLIC, &answer.bytes(), 8),
            1,
        ),
        (
            "a router: the backend's DF answer is too big",
            icmp_error_code(FRAG_NEEDED, ROUTER, PUBLIC, &big.bytes(), 8),
            1,
        ),
        (
            "the backend refusing the client's datagram",
            icmp_error_code(PORT_UNREACHABLE, BACKEND, CLIENT, &request.bytes(), 8),
            h.leg,
        ),
    ];
    for (what, frame, ifindex) in &plausible {
        h.expect(
            frame,
            *ifindex,
            (XDP_REDIRECT, counter::FWD_REDIRECT),
            format_args!("{what}"),
        );
    }
    h.edit_leg(1, |leg| leg.role = ROLE_PUBLIC | ROLE_PRIVATE);
    let implausible = [
        (
            "a port unreachable from a router, not from the client",
            icmp_error_code(PORT_UNREACHABLE, ROUTER, PUBLIC, &answer.bytes(), 8),
            1,
        ),
        (
            "fragmentation needed about a packet that fits the MTU",
            icmp_error_code(FRAG_NEEDED, ROUTER, PUBLIC, &answer.bytes(), 8),
            1,
        ),
        (
            "fragmentation needed about a packet without DF",
            icmp_error_code(FRAG_NEEDED, ROUTER, PUBLIC, &without_df(big.bytes()), 8),
            1,
        ),
        (
            "a port unreachable from another private host, not from the backend",
            icmp_error_code(PORT_UNREACHABLE, INSIDE, CLIENT, &request.bytes(), 8),
            h.leg,
        ),
        (
            // From a router, not the backend: the public legs' source guard drops the
            // backend's own address arriving there before anything else looks at it.
            "an error about a packet to the backend from a leg that does not reach it",
            icmp_error(3, ROUTER, CLIENT, &request, 8),
            1,
        ),
    ];
    for (what, frame, ifindex) in &implausible {
        let out = h.expect(
            frame,
            *ifindex,
            (XDP_PASS, counter::PASS_ICMP_IMPLAUSIBLE),
            format_args!("{what}"),
        );
        assert_eq!(&out, frame, "{what}: untouched");
    }
}
