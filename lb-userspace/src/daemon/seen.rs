//! Last-seen times across gateways (`[cluster]`): each gateway publishes the times its own
//! counters give, coarsely, and takes the others' from the watch into its table, so every
//! table holds the latest packet any gateway saw and the one gateway that reclaims never
//! takes a route in use through another.
//!
//! Write volume is bounded twice: a route's time is published only once it moved by a
//! grain (a hundredth of `reclaim_after`, between [`PUBLISH_SEEN_EVERY`] and an hour), so
//! a busy route costs one write per grain, not one per pass; and a pass publishes at most
//! [`MAX_SEEN_PER_PUBLISH`] routes (the rest are due again at the next pass).

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use tracing::warn;

use crate::table::routes::Source;
use lb_model::RouteKey;

use super::Core;

/// How often a gateway publishes its own last-seen times.
pub(super) const PUBLISH_SEEN_EVERY: Duration = Duration::from_secs(10);
/// Routes one publishing pass writes at most.
pub(super) const MAX_SEEN_PER_PUBLISH: usize = 1000;
/// The coarsest grain: a route in use is written at least this often.
const GRAIN_MAX: Duration = Duration::from_secs(3600);

/// How far a route's own last-seen time must move before it is published again: a
/// hundredth of `reclaim_after` (so the reclaiming gateway's view lags by at most 1% of
/// it, plus a pass), between [`PUBLISH_SEEN_EVERY`] and an hour; an hour without reclaim.
pub(super) fn seen_grain(reclaim_after: Option<Duration>) -> Duration {
    match reclaim_after {
        None => GRAIN_MAX,
        Some(after) => (after / 100).clamp(PUBLISH_SEEN_EVERY, GRAIN_MAX),
    }
}

/// The own times due for publishing: never published, or moved by at least `grain` since;
/// at most `max`, oldest-published first (never published counts as oldest), so a backlog
/// drains fairly.
pub(super) fn due_seen(
    own: &HashMap<RouteKey, SystemTime>,
    published: &HashMap<RouteKey, SystemTime>,
    grain: Duration,
    max: usize,
) -> Vec<(RouteKey, SystemTime)> {
    let mut due: Vec<(Option<SystemTime>, &RouteKey, SystemTime)> = own
        .iter()
        .filter_map(|(k, &at)| match published.get(k) {
            None => Some((None, k, at)),
            Some(&p) if at >= p + grain => Some((Some(p), k, at)),
            Some(_) => None,
        })
        .collect();
    due.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    due.into_iter()
        .take(max)
        .map(|(_, k, at)| (k.clone(), at))
        .collect()
}

impl Core {
    /// Remembers a last-seen time this gateway's own counters gave (runtime routes only:
    /// config routes are each gateway's own and never reclaimed).
    pub(super) fn note_own_seen(&mut self, key: &RouteKey, at: SystemTime) {
        if !self.shared {
            return;
        }
        let t = self.own_seen.entry(key.clone()).or_insert(at);
        *t = (*t).max(at);
    }

    /// Publishes the own times that are due, every [`PUBLISH_SEEN_EVERY`]. A failure
    /// (etcd away) is tried again at the next pass: nothing is marked published.
    pub(super) fn publish_seen(&mut self) {
        if !self.shared
            || self
                .last_publish
                .is_some_and(|t| t.elapsed() < PUBLISH_SEEN_EVERY)
        {
            return;
        }
        self.last_publish = Some(Instant::now());
        let table = &self.table;
        self.own_seen
            .retain(|k, _| table.get(k).is_some_and(|e| e.source == Source::Runtime));
        let own = &self.own_seen;
        self.published.retain(|k, _| own.contains_key(k));
        let due = due_seen(
            &self.own_seen,
            &self.published,
            seen_grain(self.gateway.reclaim_after),
            MAX_SEEN_PER_PUBLISH,
        );
        if due.is_empty() {
            return;
        }
        match self.store.publish_seen(&due) {
            Ok(()) => self.published.extend(due),
            Err(e) => warn!(
                routes = due.len(),
                "cluster: publishing last-seen times: {e}"
            ),
        }
    }

    /// Takes other gateways' last-seen times into the table (the latest wins), so `route
    /// ls`, `mine` and the reclaim all see the cluster's latest packet.
    pub(super) fn note_remote_seen(&mut self, seen: Vec<(RouteKey, SystemTime)>) {
        for (key, at) in seen {
            if self
                .table
                .get(&key)
                .is_some_and(|e| e.source == Source::Runtime)
            {
                self.table.note_activity(&key, at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_model::Protocol;
    use std::time::UNIX_EPOCH;

    fn key(name: &str) -> RouteKey {
        RouteKey {
            name: name.into(),
            service: "ssh".into(),
            protocol: Protocol::Tcp,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_grain_is_a_hundredth_of_reclaim_after_within_bounds() {
        let day = Duration::from_secs(86400);
        assert_eq!(seen_grain(Some(day)), Duration::from_secs(864));
        assert_eq!(seen_grain(Some(14 * day)), GRAIN_MAX);
        assert_eq!(
            seen_grain(Some(Duration::from_secs(60))),
            PUBLISH_SEEN_EVERY
        );
        assert_eq!(seen_grain(None), GRAIN_MAX);
    }

    /// Only times never published or moved by a grain are due, the longest-unpublished
    /// first, at most `max`.
    #[test]
    fn only_times_that_moved_by_a_grain_are_due() {
        let grain = Duration::from_secs(100);
        let own: HashMap<RouteKey, SystemTime> = [
            (key("new"), at(1000)),
            (key("moved"), at(1000)),
            (key("still"), at(1050)),
            (key("older"), at(2000)),
        ]
        .into();
        let published: HashMap<RouteKey, SystemTime> = [
            (key("moved"), at(900)),
            (key("still"), at(1000)),
            (key("older"), at(100)),
        ]
        .into();
        let due = due_seen(&own, &published, grain, 10);
        let names: Vec<&str> = due.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["new", "older", "moved"]);
        assert_eq!(due[0].1, at(1000));
        let due = due_seen(&own, &published, grain, 2);
        let names: Vec<&str> = due.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["new", "older"], "a backlog drains oldest first");
        assert!(due_seen(&own, &own, grain, 10).is_empty());
    }
}
