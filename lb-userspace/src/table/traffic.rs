//! The last hour of each route's traffic, by minute, for the console's charts.
//!
//! The daemon's periodic pass already reads every route's counters (unlocked, see
//! `daemon::observe_without_lock`); it hands the readings to [`Traffic::record`], which
//! turns the growth of each counter slot's byte counts into per-minute sums (the first
//! reading after start is only a baseline; a slot seen later starts from zero, as the
//! data plane zeroes a slot when it hands it to a route). Pure: the
//! caller gives the time. Bounded: at most [`MINUTES`] minutes per slot, and only minutes
//! that carried bytes are kept, so an idle route costs one baseline reading.

use std::collections::{HashMap, VecDeque};

use lb_model::api::TrafficMinute;

/// How many minutes of history a slot keeps: the chart's last hour.
pub const MINUTES: u64 = 60;

#[derive(Debug, Default)]
struct Slot {
    /// The counters at the previous reading: (inbound, outbound) bytes.
    last: (u64, u64),
    minutes: VecDeque<TrafficMinute>,
}

/// Per-minute byte sums by counter slot.
#[derive(Debug, Default)]
pub struct Traffic {
    slots: HashMap<u32, Slot>,
    /// Whether the first reading (the daemon's start) is in.
    primed: bool,
}

impl Traffic {
    /// Takes one reading of every route's slot (slot id, inbound bytes, outbound bytes) at
    /// `now_unix`. Slots absent from `readings` are forgotten: their routes are gone.
    pub fn record(&mut self, now_unix: u64, readings: &[(u32, u64, u64)]) {
        let minute = now_unix - now_unix % 60;
        let oldest = minute.saturating_sub((MINUTES - 1) * 60);
        let present: std::collections::HashSet<u32> = readings.iter().map(|r| r.0).collect();
        self.slots.retain(|id, _| present.contains(id));
        for &(id, inbound, outbound) in readings {
            if !self.slots.contains_key(&id) {
                // At start the counters hold whatever came before (pinned maps outlive the
                // daemon): a baseline. A slot that appears later was zeroed when it was
                // handed to its route, so all of it is this route's traffic.
                let last = if self.primed {
                    (0, 0)
                } else {
                    (inbound, outbound)
                };
                self.slots.insert(
                    id,
                    Slot {
                        last,
                        minutes: VecDeque::new(),
                    },
                );
            }
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if inbound < slot.last.0 || outbound < slot.last.1 {
                // Counters only grow; smaller ones mean the slot was zeroed and handed to
                // another route, whose history starts here.
                *slot = Slot {
                    last: (0, 0),
                    minutes: VecDeque::new(),
                };
            }
            let (din, dout) = (inbound - slot.last.0, outbound - slot.last.1);
            slot.last = (inbound, outbound);
            while slot.minutes.front().is_some_and(|m| m.minute_unix < oldest) {
                slot.minutes.pop_front();
            }
            if din == 0 && dout == 0 {
                continue;
            }
            match slot.minutes.back_mut() {
                Some(m) if m.minute_unix == minute => {
                    m.inbound_bytes += din;
                    m.outbound_bytes += dout;
                }
                _ => slot.minutes.push_back(TrafficMinute {
                    minute_unix: minute,
                    inbound_bytes: din,
                    outbound_bytes: dout,
                }),
            }
        }
        self.primed = true;
    }

    /// Slot `id`'s minutes since `since_unix` (the route's start: a slot's earlier
    /// minutes belonged to another route), oldest first.
    pub fn history(&self, id: u32, since_unix: u64) -> Vec<TrafficMinute> {
        let since = since_unix - since_unix % 60;
        self.slots
            .get(&id)
            .map(|s| {
                s.minutes
                    .iter()
                    .filter(|m| m.minute_unix >= since)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_growth_by_minute_within_the_last_hour() {
        let mut t = Traffic::default();
        let t0 = 1_000_020;
        t.record(t0, &[(1, 500, 50), (2, 0, 0)]);
        assert!(
            t.history(1, 0).is_empty(),
            "the first reading is a baseline"
        );
        // A route added since: its zeroed slot's first reading is all its own.
        t.record(t0 + 2, &[(1, 500, 50), (2, 0, 0), (3, 40, 4)]);
        assert_eq!(t.history(3, 0)[0].inbound_bytes, 40);
        t.record(t0 + 5, &[(1, 600, 70), (2, 0, 0)]);
        t.record(t0 + 10, &[(1, 650, 70), (2, 0, 0)]);
        t.record(t0 + 60, &[(1, 700, 80), (2, 0, 0)]);
        let h = t.history(1, 0);
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].inbound_bytes, h[0].outbound_bytes), (150, 20));
        assert_eq!(h[0].minute_unix % 60, 0);
        assert_eq!((h[1].inbound_bytes, h[1].outbound_bytes), (50, 10));
        assert!(t.history(2, 0).is_empty(), "idle minutes are not kept");
        // An hour later the old minutes are gone.
        t.record(t0 + 3700, &[(1, 701, 80), (2, 0, 0)]);
        let h = t.history(1, 0);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].inbound_bytes, 1);
        // A slot that went away is forgotten; a zeroed slot starts over.
        t.record(t0 + 3710, &[(1, 10, 0)]);
        assert!(!t.slots.contains_key(&2) && !t.slots.contains_key(&3));
        let h = t.history(1, 0);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].inbound_bytes, 10);
        // Minutes before a route's start belonged to the slot's previous route.
        assert!(t.history(1, t0 + 3800).is_empty());
    }

    #[test]
    fn stays_bounded_per_slot() {
        let mut t = Traffic::default();
        for i in 0..500u64 {
            t.record(i * 60, &[(7, i * 10, i)]);
        }
        assert!(t.history(7, 0).len() as u64 <= MINUTES);
    }
}
