//! The servers that answer from their own copy of the route table: DNS (`dns`, a zone
//! snapshot) and the web routers (`web`'s `Hosts`, HTTP by Host and HTTPS by SNI). Each is
//! a [`Mirror`], so that the daemon gives a change of the table to all of them in one loop,
//! and undoes one (a change the store refused) by the same loop with the opposite diff.
//!
//! A mirror's update is an in-memory swap that cannot fail: readers keep the old snapshot
//! until it is replaced. What each one takes of a change is its own rule, here: DNS the
//! change itself (its cost is the change's), a web router, which holds only its own
//! service's routes, all of those again when one of them changed.

use crate::{
    serve::{
        dns::DnsServer,
        web::{Router, RouterServer},
    },
    table::routes::{Diff, RouteTable},
};
use lb_model::Route;

/// Something that reflects the route table and takes every change of it.
pub trait Mirror: Send + Sync {
    /// Takes `diff`, a change already made to `table` (which it gives as it is now).
    fn publish(&self, table: &RouteTable, diff: &Diff);
}

/// The routes `diff` takes away: removed ones, and the old side of changed ones.
fn removed(diff: &Diff) -> impl Iterator<Item = &Route> {
    diff.removed
        .iter()
        .chain(diff.changed.iter().map(|c| &c.old))
        .map(|e| &e.route)
}

/// The routes `diff` brings: added ones, and the new side of changed ones.
fn added(diff: &Diff) -> impl Iterator<Item = &Route> {
    diff.added
        .iter()
        .chain(diff.changed.iter().map(|c| &c.new))
        .map(|e| &e.route)
}

impl Mirror for DnsServer {
    fn publish(&self, _table: &RouteTable, diff: &Diff) {
        let removed: Vec<Route> = removed(diff).cloned().collect();
        let added: Vec<Route> = added(diff).cloned().collect();
        self.apply(&removed, &added);
    }
}

impl<R: Router> Mirror for RouterServer<R> {
    fn publish(&self, table: &RouteTable, diff: &Diff) {
        let service = self.service();
        if !removed(diff)
            .chain(added(diff))
            .any(|r| r.service == service)
        {
            return;
        }
        let routes: Vec<Route> = table
            .entries()
            .filter(|e| e.route.service == service)
            .map(|e| e.route.clone())
            .collect();
        self.update(&routes);
    }
}
