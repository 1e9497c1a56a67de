//! Partial checksums (veth, virtio): rewritten for offload; a complete one equal to the
//! partial value is taken as complete.

use super::*;

/// A route's packets on each of its paths but the client's TCP (which tests vary): UDP
/// from a client, the backend's UDP and TCP replies, and a hairpin flow (the inside host's
/// request, then the backend's answer), each with the leg it arrives on and the (source,
/// destination) it must leave with.
fn route_paths(h: &Harness) -> Vec<(Frame, u32, (Tuple, Tuple))> {
    vec![
        (
            Frame::udp((CLIENT, 5000), (PUBLIC, DNS_PORT)),
            1,
            ((CLIENT, 5000), (BACKEND, 53)),
        ),
        (
            Frame::udp((BACKEND, 53), (CLIENT, 5000)),
            h.leg,
            ((PUBLIC, DNS_PORT), (CLIENT, 5000)),
        ),
        (
            Frame::tcp((BACKEND, 22), (CLIENT, 40000)),
            h.leg,
            ((PUBLIC, SSH_PORT), (CLIENT, 40000)),
        ),
        (
            Frame::tcp((INSIDE, 41000), (PUBLIC, SSH_PORT)),
            h.leg,
            ((PUBLIC, 41000), (BACKEND, 22)),
        ),
        (
            Frame::tcp((BACKEND, 22), (PUBLIC, 41000)),
            h.leg,
            ((PUBLIC, SSH_PORT), (INSIDE, 41000)),
        ),
    ]
}

#[test]
fn frames_with_partial_checksums_are_rewritten_for_offload_and_passed_to_the_kernel() {
    let Some(mut h) = Harness::new(
        "frames_with_partial_checksums_are_rewritten_for_offload_and_passed_to_the_kernel",
    ) else {
        return;
    };
    assert_eq!(crate::kernel::sys::driver("sg-pt0").unwrap(), "veth");
    h.allow_redirects();
    let partial = Frame {
        partial: true,
        ..Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT))
    };
    // A leg with full checksums only is not looked at: the frame is taken as it comes.
    h.expect(
        &partial.bytes(),
        1,
        (XDP_REDIRECT, counter::FWD_REDIRECT),
        "",
    );

    h.look_for_partial_checksums();
    // Rewritten, its checksum still partial (for the new addresses), and left to the
    // kernel, which keeps the skb's checksum state for the egress to complete.
    let out = h.expect(
        &partial.bytes(),
        1,
        (XDP_PASS, counter::FWD_PASS_PARTIAL_CSUM),
        "",
    );
    let seen = parse_partial(&out);
    assert_eq!((seen.src, seen.dst), ((CLIENT, 40000), (BACKEND, 22)));
    assert_eq!(seen.ttl, 64, "the kernel forwards it and decrements");
    assert_eq!(h.route(SSH_ID).inbound_packets, 2);
    // A complete checksum on the same leg takes the fast path as before.
    let full = Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT)).bytes();
    let (action, out, _) = h.run(&full, 1);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(parse(&out).dst, (BACKEND, 22));

    // A SYN: the MSS is clamped, which a partial checksum does not cover yet.
    let syn = Frame {
        syn: Some((1, 1460, false)),
        partial: true,
        ..Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT))
    };
    let (_, out, _) = h.run(&syn.bytes(), 1);
    assert_eq!(mss_of(&out), Some(MSS));
    parse_partial(&out);
    // UDP, both ways, and the backend's reply and a hairpin flow on the private leg.
    let cases = route_paths(&h);
    for (frame, ifindex, want) in cases {
        let frame = Frame {
            partial: true,
            ..frame
        };
        let out = h.expect(
            &frame.bytes(),
            ifindex,
            (XDP_PASS, counter::FWD_PASS_PARTIAL_CSUM),
            format_args!("{want:?}"),
        );
        let seen = parse_partial(&out);
        assert_eq!((seen.src, seen.dst), want);
    }
}

#[test]
fn a_complete_checksum_equal_to_the_partial_value_is_taken_as_complete() {
    let Some(mut h) =
        Harness::new("a_complete_checksum_equal_to_the_partial_value_is_taken_as_complete")
    else {
        return;
    };
    h.allow_redirects();
    h.look_for_partial_checksums();
    let mut cases = vec![(
        Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT)),
        1,
        ((CLIENT, 40000), (BACKEND, 22)),
    )];
    cases.extend(route_paths(&h));
    // An odd length: the sum pads the last byte with zero.
    cases.push((
        Frame {
            payload: 33,
            ..Frame::udp((BACKEND, 53), (CLIENT, 5000))
        },
        h.leg,
        ((PUBLIC, DNS_PORT), (CLIENT, 5000)),
    ));
    for (frame, ifindex, want) in cases {
        let bytes = colliding(&frame);
        // The bytes really are ambiguous: the same field read as a partial checksum.
        parse_partial(&bytes);
        parse(&bytes);
        let out = h.expect(
            &bytes,
            ifindex,
            (XDP_REDIRECT, counter::FWD_REDIRECT),
            format_args!("{want:?}"),
        );
        // Updated as a complete checksum: right from scratch for the new addresses.
        let seen = parse(&out);
        assert_eq!((seen.src, seen.dst), want);
    }
    // A partial checksum on the same leg still takes the kernel's path.
    let partial = Frame {
        partial: true,
        ..Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT))
    };
    h.expect(
        &partial.bytes(),
        1,
        (XDP_PASS, counter::FWD_PASS_PARTIAL_CSUM),
        "",
    );
}
