//! Private hosts reaching routes by the public address (hairpin NAT): flows, clashes, rates.

use super::*;

#[test]
fn a_private_host_reaches_a_route_by_its_public_port_and_hears_back_from_it() {
    let Some(mut h) =
        Harness::new("a_private_host_reaches_a_route_by_its_public_port_and_hears_back_from_it")
    else {
        return;
    };
    h.allow_redirects();
    // A host on the backend's own leg connects to the public address: to the backend, from
    // the public address (with its own port), so the backend answers through the gateway.
    let syn = Frame {
        syn: Some((0, 1460, false)),
        ..Frame::tcp((INSIDE, 40000), (PUBLIC, SSH_PORT))
    };
    let out = h.expect(
        &syn.bytes(),
        h.leg,
        (XDP_REDIRECT, counter::FWD_REDIRECT),
        "",
    );
    let seen = parse(&out);
    assert_eq!((seen.src, seen.dst), ((PUBLIC, 40000), (BACKEND, 22)));
    assert_eq!((seen.dst_mac, seen.ttl), (BACKEND_MAC, 63));
    assert_eq!(mss_of(&out), Some(MSS), "clamped like any SYN");
    let flow = h
        .hairpin((BACKEND, 22), 40000, PROTO_TCP)
        .expect("the flow's entry");
    assert_eq!((flow.client_addr, flow.seen_ns), (be(INSIDE), NOW_NS));

    // The backend's answer goes to the host, from the address and port it connected to.
    let reply = Frame::tcp((BACKEND, 22), (PUBLIC, 40000)).bytes();
    let out = h.expect(&reply, h.leg, (XDP_REDIRECT, counter::FWD_REDIRECT), "");
    let seen = parse(&out);
    assert_eq!((seen.src, seen.dst), ((PUBLIC, SSH_PORT), (INSIDE, 40000)));
    assert_eq!(seen.dst_mac, INSIDE_MAC);
    let c = h.route(SSH_ID);
    assert_eq!((c.inbound_packets, c.outbound_packets), (1, 1));

    // UDP too, and a datagram without a checksum keeps none, both ways.
    for no_checksum in [false, true] {
        let ask = Frame {
            udp_no_checksum: no_checksum,
            ..Frame::udp((INSIDE, 5000), (PUBLIC, DNS_PORT))
        };
        let (_, out, _) = h.run(&ask.bytes(), h.leg);
        let seen = parse(&out);
        assert_eq!((seen.src, seen.dst), ((PUBLIC, 5000), (BACKEND, 53)));
        assert_eq!(seen.udp_checksum_zero, no_checksum);
        let answer = Frame {
            udp_no_checksum: no_checksum,
            ..Frame::udp((BACKEND, 53), (PUBLIC, 5000))
        };
        let (_, out, _) = h.run(&answer.bytes(), h.leg);
        let seen = parse(&out);
        assert_eq!((seen.src, seen.dst), ((PUBLIC, DNS_PORT), (INSIDE, 5000)));
        assert_eq!(seen.udp_checksum_zero, no_checksum);
    }
}

#[test]
fn a_hairpin_tuple_in_use_is_not_taken_and_the_gateways_own_flows_are_untouched() {
    let Some(mut h) = Harness::new(
        "a_hairpin_tuple_in_use_is_not_taken_and_the_gateways_own_flows_are_untouched",
    ) else {
        return;
    };
    h.allow_redirects();
    let first = Frame::tcp((INSIDE, 40000), (PUBLIC, SSH_PORT)).bytes();
    assert_eq!(h.run(&first, h.leg).0, XDP_REDIRECT);
    // Another host from the same port would be translated to the same tuple: refused
    // while the first is live, so its replies never reach the wrong host.
    let second = Frame::tcp((INSIDE_2, 40000), (PUBLIC, SSH_PORT)).bytes();
    let out = h.expect(&second, h.leg, (XDP_PASS, counter::PASS_HAIRPIN_CLASH), "");
    assert_eq!(out, second, "untouched");
    let flow = h.hairpin((BACKEND, 22), 40000, PROTO_TCP).unwrap();
    assert_eq!(flow.client_addr, be(INSIDE));
    // Once the first has been quiet for longer than a live flow can be, the tuple is free.
    h.set_clock(NOW_NS + HAIRPIN_LIVE_NS);
    assert_eq!(h.run(&second, h.leg).0, XDP_REDIRECT);
    let flow = h.hairpin((BACKEND, 22), 40000, PROTO_TCP).unwrap();
    assert_eq!(
        (flow.client_addr, flow.seen_ns),
        (be(INSIDE_2), NOW_NS + HAIRPIN_LIVE_NS)
    );

    // The backend answering the gateway's own connection from the public address (no
    // hairpin flow), and a private host asking one of the gateway's own services: the
    // kernel's.
    let to_gateway = Frame::tcp((BACKEND, 22), (PUBLIC, 50000)).bytes();
    let to_service = Frame::udp((INSIDE, 5000), (PUBLIC, 53)).bytes();
    for (what, frame, want) in [
        ("a reply to the gateway", &to_gateway, counter::PASS_LOCAL),
        ("a gateway service", &to_service, counter::PASS_NO_ROUTE),
    ] {
        let (action, out, verdict) = h.run(frame, h.leg);
        assert_eq!((action, name(verdict)), (XDP_PASS, name(want)), "{what}");
        assert_eq!(&out, frame, "{what}: untouched");
    }
}

/// A packet from a route's backend address and port to the public address that answers
/// no hairpin flow is the reply to a packet someone else made (`public:Q -> backend`,
/// spoofed from outside or from inside), or the gateway's own connection's: never a new
/// request to route Q, so two routes' UDP echo services cannot be made to answer each
/// other through the gateway for ever.
#[test]
fn a_backends_packet_that_answers_no_hairpin_flow_is_never_a_request_to_another_route() {
    let Some(mut h) = Harness::new(
        "a_backends_packet_that_answers_no_hairpin_flow_is_never_a_request_to_another_route",
    ) else {
        return;
    };
    h.allow_redirects();
    set_neighbour(BACKEND_2, BACKEND_2_MAC);
    h.add_route(ECHO_PORT, PROTO_UDP, (BACKEND_2, 7), ECHO_ID);
    let cases = [
        (
            "to another route",
            Frame::udp((BACKEND, 53), (PUBLIC, ECHO_PORT)),
            (BACKEND_2, 7),
        ),
        (
            "that route's echo back",
            Frame::udp((BACKEND_2, 7), (PUBLIC, DNS_PORT)),
            (BACKEND, 53),
        ),
        (
            "to its own route",
            Frame::udp((BACKEND, 53), (PUBLIC, DNS_PORT)),
            (BACKEND, 53),
        ),
        (
            "TCP",
            Frame::tcp((BACKEND, 22), (PUBLIC, LOST_PORT)),
            (NOWHERE, 22),
        ),
    ];
    for one_armed in [false, true] {
        if one_armed {
            h.one_armed();
        }
        for (what, frame, to) in &cases {
            let bytes = frame.bytes();
            let out = h.expect(
                &bytes,
                h.leg,
                (XDP_PASS, counter::PASS_LOCAL),
                format_args!("{what}, one-armed: {one_armed}"),
            );
            assert_eq!(out, bytes, "{what}: untouched");
            assert!(
                h.hairpin(*to, frame.src.1, frame.protocol).is_none(),
                "{what}: no flow made"
            );
        }
    }
    for id in [SSH_ID, DNS_ID, 7, ECHO_ID] {
        assert_eq!(h.route(id), RouteCounters::default(), "route {id}: nothing");
    }
    // The backend's host from another port is a private client like any other.
    let ask = Frame::udp((BACKEND, 40000), (PUBLIC, ECHO_PORT)).bytes();
    let (action, out, _) = h.run(&ask, h.leg);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(parse(&out).dst, (BACKEND_2, 7));
}

/// A hairpin flow is live while either end sends: a backend's packets keep it, so another
/// private host can never take over the tuple of a flow whose client only listens (its
/// backend's packets would then go to the taker); quiet both ways for a live flow's
/// lifetime, the tuple is free again.
#[test]
fn a_hairpin_flow_lives_while_either_end_sends_and_never_moves_to_another_client() {
    let Some(mut h) = Harness::new(
        "a_hairpin_flow_lives_while_either_end_sends_and_never_moves_to_another_client",
    ) else {
        return;
    };
    h.allow_redirects();
    let ask = Frame::udp((INSIDE, 5000), (PUBLIC, DNS_PORT)).bytes();
    let answer = Frame::udp((BACKEND, 53), (PUBLIC, 5000)).bytes();
    let taker = Frame::udp((INSIDE_2, 5000), (PUBLIC, DNS_PORT)).bytes();
    assert_eq!(h.run(&ask, h.leg).0, XDP_REDIRECT);
    // The client goes quiet; the backend keeps sending, past a live flow's lifetime.
    let mut now = NOW_NS;
    while now < NOW_NS + 2 * HAIRPIN_LIVE_NS {
        now += 10 * SECOND;
        h.set_clock(now);
        let (action, out, _) = h.run(&answer, h.leg);
        assert_eq!(action, XDP_REDIRECT, "{}s", (now - NOW_NS) / SECOND);
        assert_eq!(parse(&out).dst, (INSIDE, 5000));
        let out = h.expect(
            &taker,
            h.leg,
            (XDP_PASS, counter::PASS_HAIRPIN_CLASH),
            format_args!("another host at {}s", (now - NOW_NS) / SECOND),
        );
        assert_eq!(out, taker, "untouched");
    }
    let flow = h.hairpin((BACKEND, 53), 5000, PROTO_UDP).unwrap();
    assert_eq!(
        (flow.client_addr, flow.seen_ns),
        (be(INSIDE), now),
        "stamped by the backend's packets"
    );
    // Quiet both ways for one second less than a lifetime: still the client's.
    h.set_clock(now + HAIRPIN_LIVE_NS - SECOND);
    assert_eq!(h.run(&taker, h.leg).2, counter::PASS_HAIRPIN_CLASH);
    h.set_clock(now + HAIRPIN_LIVE_NS);
    assert_eq!(h.run(&taker, h.leg).0, XDP_REDIRECT, "a dead flow's tuple");
    let flow = h.hairpin((BACKEND, 53), 5000, PROTO_UDP).unwrap();
    assert_eq!(flow.client_addr, be(INSIDE_2));
}

/// One private host opens new hairpin flows from a bucket of [`HAIRPIN_NEW_BURST`],
/// refilled by [`HAIRPIN_NEW_PER_SEC`] a second of the daemon's clock: a host spraying
/// source ports can neither fill `HAIRPIN` (evicting everyone's flows) nor hold more than
/// its share of it; its flows go on, and other hosts are not held back.
#[test]
fn one_private_host_opens_new_hairpin_flows_at_a_bounded_rate() {
    let Some(mut h) = Harness::new("one_private_host_opens_new_hairpin_flows_at_a_bounded_rate")
    else {
        return;
    };
    h.allow_redirects();
    let from = |host: Ipv4Addr, port: u32| {
        Frame::udp((host, u16::try_from(port).unwrap()), (PUBLIC, DNS_PORT)).bytes()
    };
    for i in 0..HAIRPIN_NEW_BURST {
        let (action, _) = h.run_only(&from(INSIDE, 10000 + i), h.leg);
        assert_eq!(action, XDP_REDIRECT, "new flow {i}, within the burst");
    }
    let over = from(INSIDE, 20000);
    let out = h.expect(&over, h.leg, (XDP_PASS, counter::PASS_HAIRPIN_LIMIT), "");
    assert_eq!(out, over, "untouched");
    assert!(h.hairpin((BACKEND, 53), 20000, PROTO_UDP).is_none());
    // Its flows go on both ways; another host opens its own.
    assert_eq!(h.run(&from(INSIDE, 10000), h.leg).0, XDP_REDIRECT);
    let answer = Frame::udp((BACKEND, 53), (PUBLIC, 10000)).bytes();
    assert_eq!(h.run(&answer, h.leg).0, XDP_REDIRECT);
    assert_eq!(h.run(&from(INSIDE_2, 20000), h.leg).0, XDP_REDIRECT);
    // A second later, that many more; after a long quiet, never more than the burst.
    for (after, port, want) in [
        (SECOND, 30000, HAIRPIN_NEW_PER_SEC),
        (1000 * SECOND, 40000, HAIRPIN_NEW_BURST),
    ] {
        h.set_clock(NOW_NS + after);
        let opened = (0..2 * want)
            .take_while(|i| h.run_only(&from(INSIDE, port + i), h.leg).0 == XDP_REDIRECT)
            .count();
        assert_eq!(opened, want as usize, "{}s later", after / SECOND);
    }
}
