//! How a web router spreads one route's work over the route's usable backends: the HTTP
//! router per request, the HTTPS router per connection.
//!
//! The pick is the backend with the fewest outstanding leases relative to its weight (an
//! HTTP request until its response ended, an upgraded or TLS connection until it closed);
//! ties, which is every pick of a quiet pool, go round robin, weighted the way nginx's
//! smooth weighted round robin does it (`2:1` gives `a a b`, interleaved `a b a`). Which
//! backends are usable (healthy, not drained, or all of them when none is) is the pool's
//! rule, decided before a [`Pool`] is built; a pool only picks among what it was given.
//!
//! A pool is rebuilt on every route or health change; its backends' outstanding counts
//! carry over to the new one ([`Pool::new`] takes the previous pool), so the leases still
//! open against the old pool count in the new one and end there too.

use std::{
    net::SocketAddrV4,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use super::Backend;

/// One usable backend of a route and its weight (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub backend: Backend,
    pub weight: u32,
}

struct Slot {
    member: Member,
    /// Leases open against this backend, shared with the pools that replace this one.
    outstanding: Arc<AtomicUsize>,
}

/// A route's usable backends, and where the next pick comes from.
pub struct Pool {
    slots: Vec<Slot>,
    /// Smooth weighted round robin's current weights, one per slot.
    current: Mutex<Vec<i64>>,
}

/// One backend chosen for a request or a connection; counted as outstanding until dropped.
#[derive(Debug)]
pub struct Lease {
    pub backend: Backend,
    outstanding: Arc<AtomicUsize>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A pool of `members` (duplicates of an address are folded into the first), keeping the
    /// outstanding counts of `previous` for the addresses both have.
    pub fn new(members: Vec<Member>, previous: Option<&Pool>) -> Pool {
        let mut slots: Vec<Slot> = Vec::with_capacity(members.len());
        for m in members {
            if slots
                .iter()
                .any(|s| s.member.backend.addr == m.backend.addr)
            {
                continue;
            }
            let outstanding = previous
                .and_then(|p| p.slot(m.backend.addr))
                .map_or_else(Default::default, |s| s.outstanding.clone());
            slots.push(Slot {
                member: Member {
                    weight: m.weight.max(1),
                    ..m
                },
                outstanding,
            });
        }
        let current = Mutex::new(vec![0; slots.len()]);
        Pool { slots, current }
    }

    fn slot(&self, addr: SocketAddrV4) -> Option<&Slot> {
        self.slots.iter().find(|s| s.member.backend.addr == addr)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.slots.iter().map(|s| &s.member)
    }

    /// Leases open against `addr` now (0 for an address not in the pool).
    pub fn outstanding(&self, addr: SocketAddrV4) -> usize {
        self.slot(addr)
            .map_or(0, |s| s.outstanding.load(Ordering::Relaxed))
    }

    /// The next backend, leaving out those in `tried` (the ones that just failed to
    /// connect); `None` when no other is left.
    pub fn pick(&self, tried: &[SocketAddrV4]) -> Option<Lease> {
        let eligible: Vec<(usize, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !tried.contains(&s.member.backend.addr))
            .map(|(i, s)| (i, s.outstanding.load(Ordering::Relaxed)))
            .collect();
        // The least loaded per unit of weight: a/wa < b/wb without division.
        let load = |&(i, n): &(usize, usize)| (n as u128, u128::from(self.slots[i].member.weight));
        let (n0, w0) =
            eligible.iter().map(load).reduce(
                |(a, wa), (b, wb)| {
                    if b * wa < a * wb {
                        (b, wb)
                    } else {
                        (a, wa)
                    }
                },
            )?;
        let least: Vec<usize> = eligible
            .iter()
            .filter(|e| {
                let (n, w) = load(e);
                n * w0 == n0 * w
            })
            .map(|&(i, _)| i)
            .collect();
        let chosen = {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let mut total = 0i64;
            let mut best = least[0];
            for &i in &least {
                let w = i64::from(self.slots[i].member.weight);
                current[i] += w;
                total += w;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best
        };
        let slot = &self.slots[chosen];
        slot.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            backend: slot.member.backend,
            outstanding: slot.outstanding.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn member(n: u8, weight: u32) -> Member {
        Member {
            backend: Backend {
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 210, 0, n), 80),
                proxy_protocol: None,
            },
            weight,
        }
    }

    fn last_octets(picks: &[Lease]) -> Vec<u8> {
        picks
            .iter()
            .map(|l| l.backend.addr.ip().octets()[3])
            .collect()
    }

    /// `count` picks, each lease dropped before the next (a quiet pool).
    fn sequence(pool: &Pool, count: usize) -> Vec<u8> {
        (0..count)
            .map(|_| pool.pick(&[]).unwrap().backend.addr.ip().octets()[3])
            .collect()
    }

    #[test]
    fn a_quiet_pool_goes_round_robin() {
        let pool = Pool::new(vec![member(1, 1), member(2, 1), member(3, 1)], None);
        assert_eq!(sequence(&pool, 6), [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn weights_interleave_smoothly() {
        let pool = Pool::new(vec![member(1, 2), member(2, 1)], None);
        assert_eq!(sequence(&pool, 6), [1, 2, 1, 1, 2, 1]);
        let pool = Pool::new(vec![member(1, 5), member(2, 1), member(3, 1)], None);
        let picks = sequence(&pool, 700);
        let share = |n| picks.iter().filter(|&&p| p == n).count();
        assert_eq!((share(1), share(2), share(3)), (500, 100, 100));
        // Never five of the heavy one in a row from a cold start: it is spread.
        assert!(
            !picks.windows(5).any(|w| w.iter().all(|&p| p == 1)),
            "{picks:?}"
        );
    }

    #[test]
    fn the_least_loaded_backend_is_picked_while_leases_are_open() {
        let pool = Pool::new(vec![member(1, 1), member(2, 1), member(3, 1)], None);
        let held: Vec<Lease> = (0..3).map(|_| pool.pick(&[]).unwrap()).collect();
        assert_eq!(last_octets(&held), [1, 2, 3]);
        let mut held = held;
        held.remove(1); // backend 2's request ended
        let next = pool.pick(&[]).unwrap();
        assert_eq!(next.backend.addr.ip().octets()[3], 2);
        assert_eq!(pool.outstanding(next.backend.addr), 1);
        drop(held);
        assert_eq!(pool.outstanding(member(1, 1).backend.addr), 0);
    }

    #[test]
    fn tried_backends_are_left_out_until_none_is_left() {
        let pool = Pool::new(vec![member(1, 1), member(2, 1)], None);
        let a = member(1, 1).backend.addr;
        let b = member(2, 1).backend.addr;
        for _ in 0..4 {
            assert_eq!(pool.pick(&[a]).unwrap().backend.addr, b);
        }
        assert!(pool.pick(&[a, b]).is_none());
        assert!(Pool::new(vec![], None).pick(&[]).is_none());
    }

    #[test]
    fn a_rebuilt_pool_keeps_the_open_leases_count() {
        let old = Pool::new(vec![member(1, 1), member(2, 1)], None);
        let open = old.pick(&[]).unwrap();
        assert_eq!(open.backend.addr.ip().octets()[3], 1);
        // Backend 2 drained, backend 3 added; backend 1 still has its request in flight.
        let new = Pool::new(vec![member(1, 1), member(3, 1), member(3, 9)], Some(&old));
        assert_eq!(new.len(), 2, "a duplicate address is folded");
        assert_eq!(new.outstanding(open.backend.addr), 1);
        assert_eq!(new.pick(&[]).unwrap().backend.addr.ip().octets()[3], 3);
        drop(open);
        assert_eq!(new.outstanding(member(1, 1).backend.addr), 0);
    }
}
