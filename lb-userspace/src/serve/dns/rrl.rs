//! Response-rate limiting for UDP, as Knot and NSD do it: an open authoritative server must
//! not be an amplifier for reflection attacks, where queries with a victim's forged source
//! address make us send the victim answers.
//!
//! Per client prefix (an IPv4 /24, an IPv6 /56: what one network holds, and what a flood
//! with random sources in one network shares), at most [`Rrl::rate`] answers per second;
//! beyond it, every [`Rrl::slip`]th query gets a "slip": an empty answer with TC set (no
//! larger than the query), so a real client behind the prefix retries over TCP, which a
//! forged source cannot; the rest are dropped. TCP is not limited (it proves the source).
//!
//! The table is a fixed array of [`SLOTS`] atomic words, one per hashed prefix, each
//! holding the current second and the answers given in it: no lock, no allocation, and
//! bounded whatever the number of sources. Two prefixes sharing a slot share a budget,
//! which only makes limiting stricter for both.

use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

/// Slots in the table: 512 KiB.
pub const SLOTS: usize = 1 << 16;

/// What to do with one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Send a truncated empty answer instead.
    Slip,
    Drop,
}

pub struct Rrl {
    rate: u32,
    slip: u32,
    slots: Box<[AtomicU64]>,
    hasher: RandomState,
    slipped: AtomicU64,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Rrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rrl")
            .field("rate", &self.rate)
            .field("slip", &self.slip)
            .finish()
    }
}

impl Rrl {
    /// `rate` answers per second per prefix; `slip`: every slip-th limited one is sent
    /// truncated (0: none, all dropped).
    pub fn new(rate: u32, slip: u32) -> Rrl {
        Rrl {
            rate: rate.max(1),
            slip,
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            slipped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn slip(&self) -> u32 {
        self.slip
    }

    /// Answers truncated and dropped so far, for the metrics.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.slipped.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Decides the answer to a query from `ip` at `now` (seconds, any monotonic origin).
    pub fn check(&self, ip: IpAddr, now: u32) -> Verdict {
        let slot = &self.slots[(self.hasher.hash_one(prefix(ip)) as usize) % SLOTS];
        let mut current = slot.load(Ordering::Relaxed);
        let count = loop {
            let (second, count) = ((current >> 32) as u32, current as u32);
            let count = if second == now {
                count.saturating_add(1)
            } else {
                1
            };
            let next = (u64::from(now) << 32) | u64::from(count);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break count,
                Err(seen) => current = seen,
            }
        };
        if count <= self.rate {
            return Verdict::Answer;
        }
        let over = count - self.rate;
        if self.slip > 0 && over.is_multiple_of(self.slip) {
            self.slipped.fetch_add(1, Ordering::Relaxed);
            Verdict::Slip
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Verdict::Drop
        }
    }
}

/// The client's network: its /24 (IPv4, also when mapped into IPv6) or /56.
pub fn prefix(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
            None => (u128::from(v6) & !((1u128 << 72) - 1)) | 1,
        },
    }
}

/// The slip: the query's header and question back with QR and TC set, nothing else; no
/// longer than the query. `None` for a query too short to be one.
pub fn slip(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([query[4], query[5]]);
    let mut end = 12;
    if qd == 1 {
        // The question's name, then type and class.
        let mut at = 12;
        for _ in 0..128 {
            match query.get(at) {
                Some(0) => {
                    end = at + 5;
                    break;
                }
                Some(l) if l & 0xc0 == 0 => at += 1 + usize::from(*l),
                _ => break,
            }
        }
        if end > query.len() {
            end = 12;
        }
    }
    let mut out = query[..end].to_vec();
    // QR and TC; the opcode and RD as asked; AA clear.
    out[2] = 0x80 | (query[2] & 0x79) | 0x02;
    out[3] = 0;
    let qd_out = u16::from(end > 12);
    out[4..6].copy_from_slice(&qd_out.to_be_bytes());
    out[6..12].fill(0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_gets_its_rate_then_every_slipth_is_truncated() {
        let rrl = Rrl::new(5, 2);
        let a: IpAddr = "10.210.5.1".parse().unwrap();
        let b: IpAddr = "10.210.5.200".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..11)
            .map(|i| rrl.check(if i % 2 == 0 { a } else { b }, 100))
            .collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Answer, Answer, Answer, Answer, Answer, Drop, Slip, Drop, Slip, Drop, Slip],
            "one /24, one budget"
        );
        // Another network is not affected; the next second starts afresh.
        assert_eq!(rrl.check("10.210.6.1".parse().unwrap(), 100), Answer);
        assert_eq!(rrl.check(a, 101), Answer);
        assert_eq!(rrl.counts(), (3, 3));
        // IPv6: one /56.
        let v6 = |s: &str| rrl.check(s.parse().unwrap(), 200);
        for _ in 0..5 {
            assert_eq!(v6("2001:db8:0:100::1"), Answer);
        }
        assert_eq!(v6("2001:db8:0:1ff::2"), Drop);
        assert_eq!(v6("2001:db8:0:200::1"), Answer);
    }

    #[test]
    fn a_slip_is_the_question_with_tc_and_never_longer_than_the_query() {
        let mut q = hickory_proto::op::Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii("alice.ssh.lab.example.").unwrap(),
            hickory_proto::rr::RecordType::A,
        ));
        let wire = q.to_vec().unwrap();
        let s = slip(&wire).unwrap();
        assert!(s.len() <= wire.len());
        let r = hickory_proto::op::Message::from_vec(&s).unwrap();
        assert!(r.metadata.truncation);
        assert_eq!(r.metadata.id, q.metadata.id);
        assert_eq!(r.queries, q.queries);
        assert!(r.answers.is_empty() && r.additionals.is_empty());
        for n in 0..wire.len() {
            if let Some(s) = slip(&wire[..n]) {
                assert!(s.len() <= n);
            }
        }
    }
}
