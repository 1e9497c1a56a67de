//! A route's pool on the real bytecode: flows spread by the Maglev table the daemon
//! computes (the same choice as the host's model of it, flow by flow), stay on their member
//! through `FLOWS` while the pool changes, move when their member goes down; replies of
//! every member leave from the route's public port; one-backend routes keep their path.

use std::{collections::HashMap as Map, net::SocketAddrV4};

use lb_ebpf::flow_hash;

use super::*;
use crate::kernel::dataplane::{encode, maglev};
use crate::table::routes::{Entry, RouteTable};

const POOL_PORT: u16 = 8080;
/// Another route with its own pool slot, for the same flows against another table.
const OTHER_PORT: u16 = 8081;

/// Pool member `i`: on the private leg (no neighbour: the FIB leaves the frame to the
/// kernel, rewritten all the same).
pub(super) fn member(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 210, 250, 100 + i), 8000 + u16::from(i))
}

/// The route on `port` with a pool of `members` (`ADDR:PORT[ drained]` texts), members in
/// `down` found down, as the daemon's table holds it.
pub(super) fn entry(port: u16, members: &[String], down: &[SocketAddrV4]) -> Entry {
    let texts: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut t = RouteTable::new();
    let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    t.replace_config(&[crate::testing::pool_route("judge", port, &texts)], t0)
        .unwrap();
    let mut e = t.entries().next().unwrap().clone();
    e.down = down.iter().copied().collect();
    e
}

pub(super) fn texts(range: impl Iterator<Item = u8>) -> Vec<String> {
    range.map(|i| member(i).to_string()).collect()
}

/// 10 000 distinct TCP clients, as `maglev`'s host tests draw them.
fn clients() -> impl Iterator<Item = Tuple> {
    many_clients(10_000)
}

/// `n` distinct TCP clients (up to 64 000 of them).
fn many_clients(n: u32) -> impl Iterator<Item = Tuple> {
    (0..n).map(|i| {
        (
            Ipv4Addr::new(198, 51, (i / 250) as u8, (i % 250) as u8 + 1),
            20_000 + (i * 7 % 40_000) as u16,
        )
    })
}

impl Harness {
    /// Writes route `e` as the daemon's `MapOp::WriteFrontend` and `WriteReverse` do, its
    /// pool into pool slot `slot`.
    pub(super) fn add_pool_route(&mut self, e: &Entry, slot: u16) {
        let (members, table) = encode::pool_entries(e).unwrap().expect("a pool");
        let mut m: Array<_, Plain<lb_common::PoolMembers>> =
            Array::try_from(self.ebpf.map_mut(map_names::POOL_MEMBERS).unwrap()).unwrap();
        m.set(u32::from(slot), Plain(members), 0).unwrap();
        let mut t: Array<_, Plain<lb_common::PoolTable>> =
            Array::try_from(self.ebpf.map_mut(map_names::POOL_TABLES).unwrap()).unwrap();
        t.set(u32::from(slot), Plain(table), 0).unwrap();
        let mut fronts: Array<_, Plain<Backend>> =
            Array::try_from(self.ebpf.map_mut(map_names::FRONTENDS).unwrap()).unwrap();
        let (fslot, v) = encode::frontend_entry(e, slot);
        fronts.set(fslot, Plain(v), 0).unwrap();
        let mut reverse: HashMap<_, Plain<ReverseKey>, Plain<ReverseValue>> =
            HashMap::try_from(self.ebpf.map_mut(map_names::REVERSE).unwrap()).unwrap();
        for (k, v) in encode::reverse_entries(e) {
            reverse.insert(Plain(k), Plain(v), 0).unwrap();
        }
    }

    /// Where the program sends `client`'s packet to public `port`: the rewritten frame's
    /// destination (its source untouched, checksums right).
    fn member_for(&self, client: Tuple, port: u16) -> Tuple {
        let f = Frame::tcp(client, (PUBLIC, port)).bytes();
        let (action, out) = self.run_only(&f, 1);
        assert!(
            action == XDP_PASS || action == XDP_REDIRECT,
            "{client:?} -> {port}: action {action}"
        );
        let seen = parse(&out);
        assert_eq!(seen.src, client, "the client's end is kept");
        seen.dst
    }

    fn flows(&self) -> usize {
        let m: HashMap<_, Plain<lb_common::FlowKey>, Plain<lb_common::FlowValue>> =
            HashMap::try_from(self.ebpf.map(map_names::FLOWS).unwrap()).unwrap();
        m.keys().count()
    }
}

fn tuple(a: SocketAddrV4) -> Tuple {
    (*a.ip(), a.port())
}

/// The member the host's model (flow hash, table, sorted members) names for `client`.
fn model_choice(e: &Entry, client: Tuple) -> Tuple {
    let members: Vec<_> = e
        .route
        .backends
        .members()
        .iter()
        .map(|m| {
            let w = e
                .active()
                .iter()
                .find(|(a, _)| *a == m.addr)
                .map_or(0, |&(_, w)| u32::from(w));
            (m.addr, w)
        })
        .collect();
    let order = maglev::members_in_order(&members);
    let t = maglev::table(&members, lb_common::MAGLEV_TABLE_SIZE).unwrap();
    let h = flow_hash(be(client.0), client.1.to_be(), PROTO_TCP);
    tuple(order[usize::from(t[(h % lb_common::MAGLEV_TABLE_SIZE) as usize])].0)
}

#[test]
fn a_pool_spreads_flows_evenly_and_a_removal_moves_few() {
    let Some(mut h) = Harness::new("a_pool_spreads_flows_evenly_and_a_removal_moves_few") else {
        return;
    };
    let sixteen = entry(POOL_PORT, &texts(1..=16), &[]);
    h.add_pool_route(&sixteen, 1);
    let mut shares: Map<Tuple, usize> = Map::new();
    let mut before = Vec::new();
    for c in clients() {
        let to = h.member_for(c, POOL_PORT);
        assert_eq!(
            to,
            model_choice(&sixteen, c),
            "the bytecode's choice is the model's"
        );
        *shares.entry(to).or_default() += 1;
        before.push(to);
    }
    assert_eq!(shares.len(), 16, "every member gets flows: {shares:?}");
    let max = *shares.values().max().unwrap() as f64;
    let mean = 10_000.0 / 16.0;
    eprintln!(
        "bytecode, 16 equal members, 10 000 flows: max/mean {:.3}",
        max / mean
    );
    assert!(max / mean <= 1.10, "max/mean {} ({shares:?})", max / mean);
    // Each flow is remembered (the LRU may evict a few early: its free lists are per CPU).
    let remembered = h.flows();
    assert!(
        (9_000..=10_000).contains(&remembered),
        "{remembered} flows in FLOWS"
    );

    // The same flows to a route whose pool lacks member 7 (its own slot and `FLOWS`
    // keys): the table's disruption, measured on the bytecode.
    let fifteen: Vec<String> = texts((1..=16).filter(|&i| i != 7));
    h.add_pool_route(&entry(OTHER_PORT, &fifteen, &[]), 2);
    let gone = tuple(member(7));
    let mut moved = 0;
    let mut moved_others = 0;
    for (c, was) in clients().zip(&before) {
        let to = h.member_for(c, OTHER_PORT);
        assert_ne!(to, gone);
        if to != *was {
            moved += 1;
            moved_others += usize::from(*was != gone);
        }
    }
    eprintln!("bytecode, 1 of 16 removed: {moved} of 10 000 flows moved, {moved_others} of them not on it");
    assert!(
        moved as f64 / 10_000.0 <= 1.0 / 16.0 + 0.02,
        "{moved} moved"
    );
    assert!(
        moved_others as f64 / 10_000.0 <= 0.02,
        "{moved_others} moved"
    );

    // Weights 1 to 4 (its own slot): each member's share of 40 000 flows against its
    // weight's (40 000 so that chance alone keeps within about 1.5 % of the smallest).
    let weighted: Vec<String> = (1..=4u8)
        .map(|i| format!("{} weight={i}", member(i)))
        .collect();
    let w = entry(OTHER_PORT + 1, &weighted, &[]);
    h.add_pool_route(&w, 3);
    let mut got: Map<Tuple, usize> = Map::new();
    const WEIGHTED_FLOWS: u32 = 40_000;
    for c in many_clients(WEIGHTED_FLOWS) {
        *got.entry(h.member_for(c, OTHER_PORT + 1)).or_default() += 1;
    }
    let weight_error = (1..=4u8)
        .map(|i| {
            let want = f64::from(WEIGHTED_FLOWS) * f64::from(i) / 10.0;
            let n = got.get(&tuple(member(i))).copied().unwrap_or(0) as f64;
            (n - want).abs() / want
        })
        .fold(0.0, f64::max);
    assert!(weight_error <= 0.05, "weights 1..4: {got:?}");
    // The line `cargo xtask bench` reads (`parse::pool_shape`).
    let others = before.iter().filter(|&&was| was != gone).count();
    println!(
        "pool-shape max-mean={:.3} weight-error={weight_error:.3} moved-others={moved_others} \
         others={others}",
        max / mean
    );
}

#[test]
fn pool_flows_stay_on_their_member_until_it_goes_down() {
    let Some(mut h) = Harness::new("pool_flows_stay_on_their_member_until_it_goes_down") else {
        return;
    };
    let three = entry(POOL_PORT, &texts(1..=3), &[]);
    h.add_pool_route(&three, 1);
    let flows: Vec<Tuple> = clients().take(1_000).collect();
    let first: Vec<Tuple> = flows.iter().map(|&c| h.member_for(c, POOL_PORT)).collect();
    let mut n: Map<Tuple, usize> = Map::new();
    for to in &first {
        *n.entry(*to).or_default() += 1;
    }
    assert_eq!(n.len(), 3, "1 000 flows reach every member: {n:?}");
    for (c, to) in flows.iter().zip(&first).take(100) {
        assert_eq!(h.member_for(*c, POOL_PORT), *to, "the same flow sticks");
    }

    // A fourth member (sorting last, so the others keep their indexes): the table gives
    // it a quarter of the slots, yet every established flow stays where it was; only
    // new flows reach it.
    let four = entry(POOL_PORT, &texts(1..=4), &[]);
    h.add_pool_route(&four, 1);
    let taken = flows
        .iter()
        .filter(|&&c| model_choice(&four, c) == tuple(member(4)))
        .count();
    assert!(
        taken > 100,
        "the new table hands the new member flows ({taken})"
    );
    for (c, to) in flows.iter().zip(&first) {
        assert_eq!(
            h.member_for(*c, POOL_PORT),
            *to,
            "{c:?} stays on its member"
        );
    }
    let fresh: Vec<Tuple> = clients().skip(1_000).take(1_000).collect();
    assert!(fresh
        .iter()
        .any(|&c| h.member_for(c, POOL_PORT) == tuple(member(4))));

    // Member 2 drained: no new flows, its established ones finish there.
    let mut drained = texts(1..=4);
    drained[1].push_str(" drained");
    h.add_pool_route(&entry(POOL_PORT, &drained, &[]), 1);
    for (c, to) in flows.iter().zip(&first) {
        assert_eq!(
            h.member_for(*c, POOL_PORT),
            *to,
            "{c:?} finishes on its member"
        );
    }
    let newer: Vec<Tuple> = clients().skip(2_000).take(1_000).collect();
    assert!(newer
        .iter()
        .all(|&c| h.member_for(c, POOL_PORT) != tuple(member(2))));

    // Member 1 found down: its flows move to the others (TCP resets them); the others'
    // flows stay.
    let down = entry(POOL_PORT, &texts(1..=4), &[member(1)]);
    h.add_pool_route(&down, 1);
    let mut moved = 0;
    for (c, to) in flows.iter().zip(&first) {
        let now = h.member_for(*c, POOL_PORT);
        if *to == tuple(member(1)) {
            assert_ne!(now, *to, "{c:?} leaves the member that is down");
            moved += 1;
        } else {
            assert_eq!(now, *to, "{c:?} stays");
        }
    }
    assert!(moved > 0);
}

#[test]
fn every_member_answers_from_the_public_port_and_one_backend_routes_keep_their_path() {
    let Some(mut h) = Harness::new(
        "every_member_answers_from_the_public_port_and_one_backend_routes_keep_their_path",
    ) else {
        return;
    };
    let e = entry(POOL_PORT, &texts(1..=3), &[]);
    h.add_pool_route(&e, 1);
    for i in 1..=3 {
        let reply = Frame::tcp(tuple(member(i)), (CLIENT, 40000)).bytes();
        let (action, out, verdict) = h.run(&reply, h.leg);
        assert_ne!(action, XDP_DROP, "member {i}: {}", name(verdict));
        let seen = parse(&out);
        assert_eq!(seen.src, (PUBLIC, POOL_PORT), "member {i}'s reply");
        assert_eq!(seen.dst, (CLIENT, 40000));
    }
    assert_eq!(h.route(e.id).outbound_packets, 3);

    // A private host reaching the pool by the public address: to a member, from the
    // public address, and its member's reply back to it.
    let hair = Frame::tcp((INSIDE, 41001), (PUBLIC, POOL_PORT)).bytes();
    let (_, out, verdict) = h.run(&hair, h.leg);
    let seen = parse(&out);
    assert!(
        (1..=3).any(|i| seen.dst == tuple(member(i))),
        "hairpin to a member: {seen:?} ({})",
        name(verdict)
    );
    assert_eq!(seen.src, (PUBLIC, 41001));
    let back = Frame::tcp(seen.dst, (PUBLIC, 41001)).bytes();
    let (_, out, verdict) = h.run(&back, h.leg);
    let seen = parse(&out);
    assert_eq!(
        (seen.src, seen.dst),
        ((PUBLIC, POOL_PORT), (INSIDE, 41001)),
        "{}",
        name(verdict)
    );

    // The one-backend route: its backend, and no flow remembered for it.
    let before = h.flows();
    let to = h.member_for((CLIENT, 40000), SSH_PORT);
    assert_eq!(to, (BACKEND, 22));
    assert_eq!(h.flows(), before, "a one-backend route keeps no flow state");
}

#[test]
fn each_member_of_a_pool_keeps_its_own_next_hop() {
    let Some(mut h) = Harness::new("each_member_of_a_pool_keeps_its_own_next_hop") else {
        return;
    };
    super::forwarding::stay_on_this_cpu();
    h.allow_redirects();
    let mac = |i: u8, version: u8| [0x02, 0, 0, 0, version, i];
    let index = |m: Tuple| m.0.octets()[3] - 100;
    for i in 1..=3 {
        set_neighbour(*member(i).ip(), mac(i, 1));
    }
    let e = entry(POOL_PORT, &texts(1..=3), &[]);
    h.add_pool_route(&e, 1);
    // A client of each member, taken in turn below: a flood spread over the pool.
    let mut client_of: Map<Tuple, Tuple> = Map::new();
    for c in clients() {
        client_of.entry(model_choice(&e, c)).or_insert(c);
    }
    assert_eq!(client_of.len(), 3);
    let next_hop = |h: &Harness, c: Tuple| -> (Tuple, [u8; 6]) {
        let f = Frame::tcp(c, (PUBLIC, POOL_PORT)).bytes();
        let out = h.expect(&f, 1, (XDP_REDIRECT, counter::FWD_REDIRECT), "");
        let seen = parse(&out);
        (seen.dst, seen.dst_mac)
    };
    for (&m, &c) in &client_of {
        assert_eq!(next_hop(&h, c), (m, mac(index(m), 1)));
    }
    // Every member's neighbour moves: within this tick each member's packets still use
    // the answer kept for that member (the FIB was not asked), though the three took turns.
    for i in 1..=3 {
        set_neighbour(*member(i).ip(), mac(i, 2));
    }
    for _ in 0..3 {
        for (&m, &c) in &client_of {
            assert_eq!(
                next_hop(&h, c),
                (m, mac(index(m), 1)),
                "{m:?}'s answer is kept"
            );
        }
    }
    h.set_clock(NOW_NS + SECOND);
    for (&m, &c) in &client_of {
        assert_eq!(next_hop(&h, c), (m, mac(index(m), 2)), "the next tick asks");
    }
}
