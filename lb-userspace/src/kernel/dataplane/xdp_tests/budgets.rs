//! What a sender can make the program do beyond rewriting its packet: bounded per CPU and tick.

use super::*;

/// Sets an IPv4 frame's total length to `len` (whatever the frame holds), fixing the
/// header checksum.
fn claim_length(f: &mut [u8], len: u16) {
    f[16..18].copy_from_slice(&len.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(sum(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// A short frame whose header claims a length too big for the egress is not answered with
/// "fragmentation needed" (which would let a sender of 60-byte frames make the gateway
/// send ICMP to any address it names): it is what the kernel drops as truncated.
#[test]
fn a_frame_shorter_than_its_header_claims_is_never_answered() {
    let Some(mut h) = Harness::new("a_frame_shorter_than_its_header_claims_is_never_answered")
    else {
        return;
    };
    h.one_armed();
    h.allow_redirects();
    for (what, frame) in [
        (
            "a client's",
            Frame::udp((CLIENT, 40000), (PUBLIC, DNS_PORT)),
        ),
        ("a backend's", Frame::udp((BACKEND, 53), (CLIENT, 40000))),
        (
            "a host inside's",
            Frame::udp((INSIDE, 5000), (PUBLIC, DNS_PORT)),
        ),
    ] {
        for claim in [65000, LEG_MTU + 1] {
            let mut bytes = frame.bytes();
            claim_length(&mut bytes, claim);
            let out = h.expect(
                &bytes,
                h.leg,
                (XDP_PASS, counter::PASS_MALFORMED),
                format_args!("{what} {}-byte frame claiming {claim}", bytes.len()),
            );
            assert_eq!(out, bytes, "{what}: untouched");
        }
    }
    assert_eq!(h.verdicts()[counter::TX_FRAG_NEEDED as usize], 0);
}

/// The ICMP answers the program makes are bounded per CPU and tick of the daemon's clock
/// ([`TX_ANSWERS_PER_TICK`]): past it, what would have been answered is dropped and
/// counted; the next tick answers again.
#[test]
fn the_programs_own_icmp_answers_are_bounded_per_cpu_and_tick() {
    let Some(mut h) = Harness::new("the_programs_own_icmp_answers_are_bounded_per_cpu_and_tick")
    else {
        return;
    };
    h.pin_to_one_cpu();
    h.one_armed();
    h.allow_redirects();
    let too_big = Frame {
        payload: usize::from(LEG_MTU),
        ..Frame::udp((CLIENT, 40000), (PUBLIC, DNS_PORT))
    }
    .bytes();
    for tick in 0..2 {
        h.set_clock(NOW_NS + tick * SECOND);
        for i in 0..TX_ANSWERS_PER_TICK {
            h.expect(
                &too_big,
                h.leg,
                (XDP_REDIRECT, counter::TX_FRAG_NEEDED),
                format_args!("answer {i} of tick {tick}"),
            );
        }
        for _ in 0..3 {
            h.expect(
                &too_big,
                h.leg,
                (XDP_DROP, counter::DROP_TX_BUDGET),
                format_args!("past the budget of tick {tick}"),
            );
        }
    }
}

/// Summing segments that carry the partial checksum value (to tell a complete checksum
/// that collides with it) is bounded per CPU and tick ([`CSUM_CHECKS_PER_TICK`]): past
/// it, such a segment is taken as partial unsummed, as a long one always is, and counted;
/// the next tick sums again.
#[test]
fn summing_checksums_is_bounded_per_cpu_and_tick() {
    let Some(mut h) = Harness::new("summing_checksums_is_bounded_per_cpu_and_tick") else {
        return;
    };
    h.pin_to_one_cpu();
    h.allow_redirects();
    h.look_for_partial_checksums();
    let client = Frame::udp((CLIENT, 5000), (PUBLIC, DNS_PORT));
    let collider = colliding(&client);
    let forged = Frame {
        partial: true,
        ..client.clone()
    }
    .bytes();
    let unchecked = |h: &Harness| h.verdicts()[counter::CSUM_UNCHECKED as usize];
    for tick in 0..2 {
        h.set_clock(NOW_NS + tick * SECOND);
        let base = unchecked(&h);
        h.expect(
            &collider,
            1,
            (XDP_REDIRECT, counter::FWD_REDIRECT),
            format_args!("summed, tick {tick}"),
        );
        for _ in 1..CSUM_CHECKS_PER_TICK {
            assert_eq!(h.run_only(&forged, 1).0, XDP_PASS);
        }
        assert_eq!(unchecked(&h), base, "all summed so far, tick {tick}");
        let out = h.expect(
            &collider,
            1,
            (XDP_PASS, counter::FWD_PASS_PARTIAL_CSUM),
            format_args!("past the budget, tick {tick}"),
        );
        assert_eq!(parse_partial(&out).dst, (BACKEND, 53));
        assert_eq!(unchecked(&h), base + 1, "counted, tick {tick}");
        let (_, _, verdict) = h.run(&forged, 1);
        assert_eq!(name(verdict), name(counter::FWD_PASS_PARTIAL_CSUM));
        assert_eq!(unchecked(&h), base + 2, "still spent, tick {tick}");
    }
}
