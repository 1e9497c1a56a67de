//! Maglev's lookup table (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4): which member of a route's pool each of the
//! table's `size` slots names. The XDP program hashes a flow (`lb_ebpf::flow_hash`) to a
//! slot; the table decides the backend.
//!
//! Why Maglev: every slot is filled by the member whose permutation reaches it first, so
//! equal members own `size / n` slots each (±1), and a member that leaves frees only its
//! own slots (and, through the fill order, a few of others': bounded by the host tests
//! below, 1/16 + 2 % when 1 of 16 leaves).
//!
//! Deterministic by construction, so that every gateway computes the same table from the
//! same pool without talking to the others: members are sorted by address and port first
//! (the order they are given in does not matter), and each member's permutation comes
//! from a fixed hash of its address and port alone ([`member_hash`]: FNV-1a, no random
//! seed, no dependency whose hash could change with a version).
//!
//! Weights follow the weighted variant Katran uses: in each round a member of weight `w`
//! takes `w` turns, so shares are proportional to weights (within a round's worth of slots).
//! Weights are bounded ([`MAX_WEIGHT`]); a weight of 0 is a member that takes no new flows
//! (drained): it is left out of the fill, so it names no slot.

use std::net::SocketAddrV4;

/// The largest weight a member may carry: a round is the sum of the weights, and a pool of
/// `MAX_POOL_BACKENDS` members of this weight still fills a table in a few rounds.
pub const MAX_WEIGHT: u32 = 256;

/// What can be wrong with a pool given to [`table`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("the table size {0} is not a prime above 1")]
    SizeNotPrime(u32),
    #[error("the pool has {members} members; a table of {size} slots takes at most {max}")]
    TooManyMembers {
        members: usize,
        size: u32,
        max: usize,
    },
    #[error("backend {0} appears twice in the pool")]
    Duplicate(SocketAddrV4),
    #[error("backend {0} has weight {1}; weights are 0 (drained) to {MAX_WEIGHT}")]
    Weight(SocketAddrV4, u32),
}

/// The members in the order the table's indices refer to: sorted by address and port, so
/// that the same pool gives the same indices on every gateway.
pub fn members_in_order(members: &[(SocketAddrV4, u32)]) -> Vec<(SocketAddrV4, u32)> {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|(addr, _)| (u32::from(*addr.ip()), addr.port()));
    sorted
}

/// The lookup table of `size` slots (a prime) for the pool `members` (backend, weight):
/// slot -> index into [`members_in_order`]. Empty when no member has a weight (every one
/// drained): the caller decides what such a pool does.
pub fn table(members: &[(SocketAddrV4, u32)], size: u32) -> Result<Vec<u16>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime(size));
    }
    // An index is a u16, and every member must be able to own slots.
    let max = (size as usize).min(usize::from(u16::MAX));
    if members.len() > max {
        return Err(MaglevError::TooManyMembers {
            members: members.len(),
            size,
            max,
        });
    }
    let sorted = members_in_order(members);
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(MaglevError::Duplicate(pair[0].0));
        }
    }
    if let Some((addr, w)) = sorted.iter().find(|(_, w)| *w > MAX_WEIGHT) {
        return Err(MaglevError::Weight(*addr, *w));
    }
    if sorted.iter().all(|(_, w)| *w == 0) {
        return Ok(Vec::new());
    }
    let m = u64::from(size);
    // Each member's permutation: offset + j * skip (mod size), skip in 1..size, so that
    // (size being prime) it visits every slot once.
    let mut perm: Vec<(u64, u64, u64)> = sorted
        .iter()
        .map(|(addr, _)| {
            let h = member_hash(*addr);
            let offset = (h >> 32) % m;
            let skip = (h & 0xffff_ffff) % (m - 1) + 1;
            (offset, skip, 0)
        })
        .collect();
    const EMPTY: u16 = u16::MAX;
    let mut slots = vec![EMPTY; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, (_, weight)) in sorted.iter().enumerate() {
            for _ in 0..*weight {
                let (offset, skip, next) = &mut perm[i];
                // A member's next free preference: at most `size` steps over its life, as
                // each step passes a slot for good.
                let mut slot = (*offset + *next * *skip) % m;
                while slots[slot as usize] != EMPTY {
                    *next += 1;
                    slot = (*offset + *next * *skip) % m;
                }
                slots[slot as usize] = i as u16;
                *next += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    Ok(slots)
}

/// A stable 64-bit hash of a backend's address and port (FNV-1a over their network-order
/// bytes): the seed of its permutation, the same on every gateway and every version.
pub fn member_hash(addr: SocketAddrV4) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in addr
        .ip()
        .octets()
        .into_iter()
        .chain(addr.port().to_be_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // FNV's low bits mix poorly for inputs this short; a final avalanche (the finaliser of
    // MurmurHash3's 64-bit variant) spreads every input bit over both halves.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::Ipv4Addr};

    use lb_ebpf::flow_hash;

    use super::*;

    /// The table size of a large pool, as lb-common gives it.
    const SIZE: u32 = lb_common::MAGLEV_TABLE_SIZE;

    fn backend(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 210, 1, i), 8000 + u16::from(i))
    }

    fn pool(n: u8) -> Vec<(SocketAddrV4, u32)> {
        (1..=n).map(|i| (backend(i), 1)).collect()
    }

    /// 10 000 distinct flows (client address, port, TCP), as the program hashes them.
    fn flows() -> impl Iterator<Item = u32> {
        (0..10_000u32).map(|i| {
            let client = Ipv4Addr::new(198, 51, (i / 250) as u8, (i % 250) as u8 + 1);
            let port = 20_000 + (i * 7 % 40_000) as u16;
            flow_hash(
                u32::from_ne_bytes(client.octets()),
                port.to_be(),
                lb_common::PROTO_TCP,
            )
        })
    }

    /// Which member (by address) each of the flows lands on.
    fn choices(members: &[(SocketAddrV4, u32)]) -> Vec<SocketAddrV4> {
        let t = table(members, SIZE).unwrap();
        let order = members_in_order(members);
        flows()
            .map(|h| order[usize::from(t[(h % SIZE) as usize])].0)
            .collect()
    }

    fn shares(choices: &[SocketAddrV4]) -> HashMap<SocketAddrV4, usize> {
        let mut n = HashMap::new();
        for c in choices {
            *n.entry(*c).or_insert(0) += 1;
        }
        n
    }

    #[test]
    fn equal_backends_share_flows_evenly() {
        let members = pool(16);
        let t = table(&members, SIZE).unwrap();
        // The table itself: each member owns size/16 slots, give or take one.
        let mut owned = [0usize; 16];
        for &i in &t {
            owned[usize::from(i)] += 1;
        }
        let (lo, hi) = (owned.iter().min().unwrap(), owned.iter().max().unwrap());
        assert!(hi - lo <= 1, "slots per member {owned:?}");
        // The flows: max/mean <= 1.10.
        let n = shares(&choices(&members));
        assert_eq!(n.len(), 16, "every backend gets flows: {n:?}");
        let max = *n.values().max().unwrap() as f64;
        let mean = 10_000.0 / 16.0;
        eprintln!(
            "16 equal backends, 10 000 flows: max/mean {:.3}",
            max / mean
        );
        assert!(max / mean <= 1.10, "max/mean {} ({n:?})", max / mean);
    }

    #[test]
    fn weights_are_honoured_within_five_percent() {
        let members: Vec<_> = (1..=4u8).map(|i| (backend(i), u32::from(i))).collect();
        let t = table(&members, SIZE).unwrap();
        let order = members_in_order(&members);
        let total: u32 = members.iter().map(|(_, w)| w).sum();
        for (i, (addr, w)) in order.iter().enumerate() {
            let owned = t.iter().filter(|&&s| usize::from(s) == i).count() as f64;
            let want = f64::from(SIZE) * f64::from(*w) / f64::from(total);
            assert!(
                (owned - want).abs() / want <= 0.05,
                "{addr} weight {w}: {owned} slots, want {want}"
            );
        }
        let n = shares(&choices(&members));
        for (addr, w) in &members {
            let got = n[addr] as f64;
            let want = 10_000.0 * f64::from(*w) / f64::from(total);
            assert!(
                (got - want).abs() / want <= 0.05,
                "{addr} weight {w}: {got} flows, want {want}"
            );
        }
    }

    #[test]
    fn removing_one_of_sixteen_moves_few_of_the_others_flows() {
        let before = choices(&pool(16));
        let gone = backend(7);
        let after_members: Vec<_> = pool(16).into_iter().filter(|(a, _)| *a != gone).collect();
        let after = choices(&after_members);
        let moved_others = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != gone && b != a)
            .count();
        let moved_all = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(after.iter().all(|a| *a != gone));
        let flows = before.len() as f64;
        eprintln!(
            "1 of 16 removed: {moved_all} of {flows} flows moved, {moved_others} of them not on it"
        );
        assert!(
            moved_all as f64 / flows <= 1.0 / 16.0 + 0.02,
            "{moved_all} of {flows} flows moved ({moved_others} not on the removed backend)"
        );
        assert!(moved_others as f64 / flows <= 0.02, "{moved_others} moved");
    }

    #[test]
    fn the_same_pool_gives_the_same_table_in_any_order() {
        let members = pool(9);
        let mut reversed = members.clone();
        reversed.reverse();
        let t = table(&members, SIZE).unwrap();
        assert_eq!(t, table(&reversed, SIZE).unwrap());
        // Indices name the sorted members, so the same slot names the same backend.
        assert_eq!(members_in_order(&reversed), members_in_order(&members));
        // A fixed hash: a change to it would split gateways of two versions.
        assert_eq!(member_hash(backend(1)), member_hash(backend(1)));
        assert_ne!(member_hash(backend(1)), member_hash(backend(2)));
    }

    #[test]
    fn a_drained_member_names_no_slot_and_an_all_drained_pool_is_empty() {
        let mut members = pool(3);
        members[1].1 = 0;
        let t = table(&members, 13).unwrap();
        let drained = members_in_order(&members)
            .iter()
            .position(|m| m.0 == members[1].0)
            .unwrap();
        assert!(t.iter().all(|&s| usize::from(s) != drained));
        assert_eq!(t.len(), 13);
        let none: Vec<_> = pool(2).into_iter().map(|(a, _)| (a, 0)).collect();
        assert!(table(&none, 13).unwrap().is_empty());
    }

    #[test]
    fn bad_pools_are_refused_with_the_reason() {
        assert_eq!(table(&pool(2), 12), Err(MaglevError::SizeNotPrime(12)));
        assert_eq!(
            table(&pool(14), 13),
            Err(MaglevError::TooManyMembers {
                members: 14,
                size: 13,
                max: 13
            })
        );
        let dup = vec![(backend(1), 1), (backend(1), 2)];
        assert_eq!(table(&dup, 13), Err(MaglevError::Duplicate(backend(1))));
        let heavy = vec![(backend(1), MAX_WEIGHT + 1)];
        assert_eq!(
            table(&heavy, 13),
            Err(MaglevError::Weight(backend(1), MAX_WEIGHT + 1))
        );
    }
}
