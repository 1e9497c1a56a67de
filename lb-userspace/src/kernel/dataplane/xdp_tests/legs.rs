//! Legs: their cache slots, their checksum kind, one-armed legs.

use super::*;

#[test]
fn a_legs_driver_says_whether_its_frames_may_carry_partial_checksums() {
    for driver in ["veth", "tun", "virtio_net"] {
        assert_eq!(
            super::super::checksum_kind(Some(driver)),
            CSUM_MAY_BE_PARTIAL,
            "{driver}"
        );
    }
    for driver in ["ixgbe", "mlx5_core", "e1000e"] {
        assert_eq!(
            super::super::checksum_kind(Some(driver)),
            CSUM_FULL,
            "{driver}"
        );
    }
    assert_eq!(
        super::super::checksum_kind(None),
        CSUM_MAY_BE_PARTIAL,
        "unknown"
    );
}

#[test]
fn each_leg_has_its_cache_slot_unless_an_earlier_leg_took_it() {
    let leg = |name: &str, ifindex, role| super::super::Leg {
        name: name.into(),
        ifindex,
        role,
        egress: EGRESS_REDIRECT,
        checksum: CSUM_FULL,
        mac: [0; 6],
    };
    let legs = [
        leg("pub0", 3, ROLE_PUBLIC),
        leg("priv1", 4, ROLE_PRIVATE),
        leg("priv2", 3 + LEG_CACHE_SLOTS, ROLE_PRIVATE),
    ];
    let cache = super::super::maps::leg_cache(&legs);
    assert_eq!(cache.len(), LEG_CACHE_SLOTS as usize);
    assert_eq!(cache[3].ifindex, 3, "the first leg keeps a shared slot");
    assert_eq!(cache[3].iface.role, ROLE_PUBLIC);
    assert_eq!(cache[4].ifindex, 4);
    assert_eq!(
        cache.iter().filter(|s| s.ifindex != 0).count(),
        2,
        "priv2 is only in INTERFACES"
    );
}

#[test]
fn a_legs_cache_slot_is_read_only_for_that_leg() {
    let Some(mut h) = Harness::new("a_legs_cache_slot_is_read_only_for_that_leg") else {
        return;
    };
    h.allow_redirects();
    let to_ssh = Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT)).bytes();
    let set_slot = |h: &mut Harness, slot: LegSlot| {
        let mut cache: Array<_, Plain<LegSlot>> =
            Array::try_from(h.ebpf.map_mut(map_names::LEG_CACHE).unwrap()).unwrap();
        cache.set(1, Plain(slot), 0).unwrap();
    };
    // The public leg (ifindex 1) cached with no role: the cache, not INTERFACES, decides.
    let no_role = Interface {
        role: 0,
        egress: EGRESS_REDIRECT,
        checksum: CSUM_FULL,
        _pad: 0,
        mac: [0; 6],
        _pad2: [0; 2],
    };
    let slot = LegSlot {
        ifindex: 1,
        iface: no_role,
    };
    set_slot(&mut h, slot);
    let (_, _, verdict) = h.run(&to_ssh, 1);
    assert_eq!(
        name(verdict),
        name(counter::PASS_NO_ROUTE),
        "read from the cache"
    );
    // The same slot holding another leg (ifindex 1 + slots): INTERFACES answers.
    let other = LegSlot {
        ifindex: 1 + LEG_CACHE_SLOTS,
        iface: no_role,
    };
    set_slot(&mut h, other);
    h.expect(
        &to_ssh,
        1,
        (XDP_REDIRECT, counter::FWD_REDIRECT),
        format_args!("another leg's slot is not this leg's"),
    );
}

/// On one NIC that is public and private at once, a client of the world (reached through
/// a router: here the client's route goes via the backend's address) keeps its address,
/// a host on the leg's own subnet is translated as from inside (hairpin), and every
/// answer leaves by the same NIC, with the next hop's MAC.
#[test]
fn a_one_armed_leg_tells_inside_hosts_from_clients_and_forwards_on_itself() {
    let Some(mut h) =
        Harness::new("a_one_armed_leg_tells_inside_hosts_from_clients_and_forwards_on_itself")
    else {
        return;
    };
    h.one_armed();
    h.allow_redirects();
    let cases = [
        (
            "a client to the route",
            Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT)),
            ((CLIENT, 40000), (BACKEND, 22)),
        ),
        (
            "the backend's answer to the client",
            Frame::tcp((BACKEND, 22), (CLIENT, 40000)),
            ((PUBLIC, SSH_PORT), (CLIENT, 40000)),
        ),
        (
            "a host on the leg's subnet to the route",
            Frame::tcp((INSIDE, 40001), (PUBLIC, SSH_PORT)),
            ((PUBLIC, 40001), (BACKEND, 22)),
        ),
        (
            "the backend's answer to that host",
            Frame::tcp((BACKEND, 22), (PUBLIC, 40001)),
            ((PUBLIC, SSH_PORT), (INSIDE, 40001)),
        ),
    ];
    for (what, frame, (src, dst)) in cases {
        let out = h.expect(
            &frame.bytes(),
            h.leg,
            (XDP_REDIRECT, counter::FWD_REDIRECT),
            format_args!("{what}"),
        );
        let seen = parse(&out);
        assert_eq!((seen.src, seen.dst), (src, dst), "{what}");
        assert_eq!(seen.src_mac, h.leg_mac, "{what}: from the leg itself");
        let next_hop = if dst.0 == INSIDE {
            INSIDE_MAC
        } else {
            BACKEND_MAC
        };
        assert_eq!(seen.dst_mac, next_hop, "{what}");
    }
    assert!(
        h.hairpin((BACKEND, 22), 40000, PROTO_TCP).is_none(),
        "a client keeps no state"
    );
    assert!(h.hairpin((BACKEND, 22), 40001, PROTO_TCP).is_some());
    let c = h.route(SSH_ID);
    assert_eq!((c.inbound_packets, c.outbound_packets), (2, 2));
    // Traffic of the gateway's own, and what it does not own, still goes to the kernel.
    let own = Frame::tcp((CLIENT, 40000), (PUBLIC, 22)).bytes();
    let out = h.expect(&own, h.leg, (XDP_PASS, counter::PASS_NO_ROUTE), "");
    assert_eq!(out, own);
}
