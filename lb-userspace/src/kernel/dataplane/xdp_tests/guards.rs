//! The public legs' guards: spoofed sources, private destinations, inside sources leaving.

use super::*;

/// `frame` (made by [`Frame::bytes`]) with IPv4 source `src`, header checksum fixed; the
/// L4 checksum is left as it was (the guards look at addresses only).
fn from(mut f: Vec<u8>, src: Ipv4Addr) -> Vec<u8> {
    f[26..30].copy_from_slice(&src.octets());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(sum(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// The shapes the program otherwise leaves to the kernel early: a fragment, and a header
/// with options (a NOP word, so the header is 24 bytes), checksums fixed.
fn fragment_of(f: &[u8]) -> Vec<u8> {
    let mut f = f.to_vec();
    f[14 + 6] = 0x20; // MF, offset 0
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(sum(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn with_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..34].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&f[34..]);
    out[14] = 0x46;
    let tot = (out.len() - 14) as u16;
    out[16..18].copy_from_slice(&tot.to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(sum(&out[14..38], 0));
    out[24..26].copy_from_slice(&c.to_be_bytes());
    out
}

/// Issue 24, item 1: on a public leg, a source no client of the world can have is dropped
/// and counted before anything else looks at the packet (fragments and packets with
/// options too, which the kernel would otherwise forward): the gateway's own addresses
/// (the public one: the reflection loop between two routes), a private leg's subnet and
/// address, and the bogons. A real client is served; a backend's reply on its private leg
/// is not a public leg's business; a frame for another machine is passed as before.
#[test]
fn a_public_leg_drops_sources_no_client_can_have() {
    let Some(h) = Harness::new("a_public_leg_drops_sources_no_client_can_have") else {
        return;
    };
    let to_dns = Frame::udp((CLIENT, 40000), (PUBLIC, DNS_PORT)).bytes();
    let to_ssh = Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT)).bytes();
    let mut ping = to_ssh.clone();
    ping[14 + 9] = 1;
    for (what, src) in [
        ("the public address", PUBLIC),
        ("the gateway's private leg address", LEG),
        ("a backend", BACKEND),
        ("a host on a private leg", INSIDE),
        ("0/8", Ipv4Addr::new(0, 1, 2, 3)),
        ("loopback", Ipv4Addr::new(127, 0, 0, 1)),
        ("link-local", Ipv4Addr::new(169, 254, 7, 7)),
        ("multicast", Ipv4Addr::new(224, 0, 0, 5)),
        ("240/4", Ipv4Addr::new(240, 0, 0, 1)),
        ("broadcast", Ipv4Addr::BROADCAST),
    ] {
        for (shape, frame) in [
            ("UDP to a route", from(to_dns.clone(), src)),
            ("TCP to a route", from(to_ssh.clone(), src)),
            ("ICMP", from(ping.clone(), src)),
            ("a fragment", fragment_of(&from(to_dns.clone(), src))),
            ("with IP options", with_options(&from(to_dns.clone(), src))),
        ] {
            h.expect(
                &frame,
                1,
                (XDP_DROP, counter::DROP_PUBLIC_SOURCE),
                format_args!("{shape} from {what} ({src}) on the public leg"),
            );
        }
    }
    assert_eq!(
        h.route(DNS_ID),
        RouteCounters::default(),
        "nothing reached a route"
    );
    // A client of the world is translated as ever, also one whose address starts like
    // the public address's (its first octet has rules: the trie is asked, and says none).
    let (_, out, verdict) = h.run(&to_dns, 1);
    assert_eq!(name(verdict), name(counter::FWD_PASS_EGRESS));
    assert_eq!(parse(&out).dst, (BACKEND, 53));
    let neighbour = Ipv4Addr::new(203, 0, 113, 7);
    let (_, out, verdict) = h.run(
        &Frame::udp((neighbour, 40000), (PUBLIC, DNS_PORT)).bytes(),
        1,
    );
    assert_eq!(name(verdict), name(counter::FWD_PASS_EGRESS));
    assert_eq!(parse(&out).dst, (BACKEND, 53));
    // The backend's reply, on its private leg, from a private source: translated.
    let reply = Frame::udp((BACKEND, 53), (CLIENT, 40000)).bytes();
    let (_, out, verdict) = h.run(&reply, h.leg);
    assert_eq!(name(verdict), name(counter::FWD_PASS_EGRESS));
    assert_eq!(parse(&out).src, (PUBLIC, DNS_PORT));
    // A frame a switch flooded, for another machine: not ours to judge.
    let mut flooded = from(to_dns.clone(), PUBLIC);
    flooded[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xcc]);
    h.expect(&flooded, 1, (XDP_PASS, counter::PASS_NOT_FOR_US), "");
    // A one-armed leg is public too: its own addresses and the bogons are refused there,
    // its own subnet is the inside (a host there reaches the route as from inside).
    let mut h = h;
    h.one_armed();
    for src in [PUBLIC, LEG, Ipv4Addr::new(127, 0, 0, 1)] {
        h.expect(
            &from(to_dns.clone(), src),
            h.leg,
            (XDP_DROP, counter::DROP_PUBLIC_SOURCE),
            format_args!("{src} on the one-armed leg"),
        );
    }
    let inside = Frame::udp((INSIDE, 40000), (PUBLIC, DNS_PORT)).bytes();
    let (_, out, verdict) = h.run(&inside, h.leg);
    assert_eq!(name(verdict), name(counter::FWD_PASS_EGRESS));
    assert_eq!(parse(&out).src.0, PUBLIC, "translated as from inside");
}

/// Issue 24, item 3: a packet arriving on a public leg for an address the kernel would
/// forward into a private leg (a backend's own address, any host there, a network routed
/// behind it), in whatever shape, is dropped and counted; the gateway's own private
/// address and addresses that lead nowhere inside are the kernel's. On a one-armed leg the
/// inside shares the wire, and this check is not made (the book's reference/security.md says why).
#[test]
fn nothing_from_a_public_leg_reaches_a_private_address() {
    let Some(mut h) = Harness::new("nothing_from_a_public_leg_reaches_a_private_address") else {
        return;
    };
    let udp = |dst: Ipv4Addr| Frame::udp((CLIENT, 40000), (dst, 53)).bytes();
    let mut icmp = udp(BACKEND);
    icmp[14 + 9] = 1;
    // 198.51.100.0/24 is routed via the backend, behind the private leg.
    let routed = Ipv4Addr::new(198, 51, 100, 99);
    for (what, frame) in [
        (
            "TCP to the backend",
            Frame::tcp((CLIENT, 40000), (BACKEND, 22)).bytes(),
        ),
        ("UDP to a host inside", udp(INSIDE)),
        ("UDP to a network behind the private leg", udp(routed)),
        ("ICMP to the backend", from(icmp, CLIENT)),
        ("a fragment to the backend", fragment_of(&udp(BACKEND))),
        ("IP options to the backend", with_options(&udp(BACKEND))),
    ] {
        h.expect(
            &frame,
            1,
            (XDP_DROP, counter::DROP_TO_PRIVATE),
            format_args!("{what}"),
        );
    }
    for (what, frame) in [
        ("the gateway's own private address", udp(LEG)),
        (
            "an address with no route",
            udp(Ipv4Addr::new(203, 0, 113, 99)),
        ),
    ] {
        let out = h.expect(
            &frame,
            1,
            (XDP_PASS, counter::PASS_NO_ROUTE),
            format_args!("{what}"),
        );
        assert_eq!(out, frame, "{what}: untouched");
    }
    h.one_armed();
    h.expect(
        &udp(INSIDE),
        h.leg,
        (XDP_PASS, counter::PASS_NO_ROUTE),
        format_args!("on a one-armed leg"),
    );
}

/// Issue 24, item 3, on the way out: the tc program on public legs drops a packet from an
/// inside address to one that is not inside (what the kernel forwards untranslated: a
/// backend's fragments or packets with options, traffic no masquerade rewrote), counted,
/// and lets everything else on to the next program.
#[test]
fn nothing_leaves_a_public_leg_from_an_inside_address() {
    let Some(mut h) = Harness::new("nothing_leaves_a_public_leg_from_an_inside_address") else {
        return;
    };
    const TCX_NEXT: u32 = -1i32 as u32;
    const TCX_DROP: u32 = 2;
    let prog: &mut SchedClassifier = h
        .ebpf
        .program_mut(EGRESS_PROGRAM_NAME)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load()
        .expect("the verifier accepts the egress program");
    let reply = Frame::udp((BACKEND, 53), (CLIENT, 40000)).bytes();
    let mut arp = reply.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    for (what, frame, want) in [
        ("a backend's packet to a client", reply.clone(), TCX_DROP),
        (
            "a backend's fragment to a client",
            fragment_of(&reply),
            TCX_DROP,
        ),
        (
            "a backend's packet with options",
            with_options(&reply),
            TCX_DROP,
        ),
        (
            "the gateway's private address to the world",
            from(reply.clone(), LEG),
            TCX_DROP,
        ),
        (
            "translated, from the public address",
            from(reply.clone(), PUBLIC),
            TCX_NEXT,
        ),
        (
            "from inside to inside",
            Frame::udp((BACKEND, 53), (INSIDE, 40000)).bytes(),
            TCX_NEXT,
        ),
        (
            "a client's address as source",
            Frame::udp((CLIENT, 40000), (BACKEND, 53)).bytes(),
            TCX_NEXT,
        ),
        ("not IPv4", arp, TCX_NEXT),
    ] {
        let before = h.verdicts();
        let prog: &SchedClassifier = h
            .ebpf
            .program(EGRESS_PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        let after = h.verdicts();
        assert_eq!(result.return_value, want, "{what}");
        let dropped = after[counter::DROP_PRIVATE_SOURCE as usize]
            - before[counter::DROP_PRIVATE_SOURCE as usize];
        assert_eq!(dropped, u64::from(want == TCX_DROP), "{what}: counted");
    }
}
