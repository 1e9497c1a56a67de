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
    table::routes::{Diff, Entry, RouteTable},
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
            .map(Entry::serving)
            .collect();
        self.update(&routes);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::SystemTime};

    use super::*;
    use crate::{
        config::{Http, WebLimits},
        serve::http::HttpServer,
        table::routes::Source,
    };

    fn route(name: &str, service: &str, port: u16) -> Route {
        Route {
            name: name.into(),
            service: service.into(),
            protocol: lb_model::Protocol::Tcp,
            backends: lb_model::Pool::one(format!("10.0.0.{}:80", port % 200).parse().unwrap()),
            port,
            proxy_protocol: None,
        }
    }

    /// A web router takes a change only when it touches its own service, and then every
    /// route of that service as the table holds it; a removal takes the name away.
    #[tokio::test]
    async fn a_router_takes_the_changes_of_its_own_service_only() {
        let cfg = Http {
            listen: vec![(Ipv4Addr::LOCALHOST, 0).into()],
            service: "http".into(),
            limits: WebLimits::default(),
            forwarded_for: false,
            redirect_https: false,
        };
        let server = HttpServer::start(&cfg, "lab.example", &[]).await.unwrap();
        let routes = |s: &HttpServer| -> Vec<&str> {
            ["alice", "bob", "carol"]
                .into_iter()
                .filter(|n| {
                    let host = format!("{n}.http.lab.example");
                    s.shared().core().hosts.pool(&host).is_some()
                })
                .collect()
        };
        let now = SystemTime::now();
        let mut table = RouteTable::new();
        // In the table, but in no change the router was given.
        table
            .insert(route("alice", "http", 30001), Source::Runtime, now, None)
            .unwrap();
        let ssh = table
            .insert(route("bob", "ssh", 30002), Source::Runtime, now, None)
            .unwrap();
        server.publish(
            &table,
            &Diff {
                added: vec![ssh],
                ..Diff::default()
            },
        );
        assert!(
            routes(&server).is_empty(),
            "an ssh change is not the router's"
        );
        let carol = table
            .insert(route("carol", "http", 30003), Source::Runtime, now, None)
            .unwrap();
        server.publish(
            &table,
            &Diff {
                added: vec![carol.clone()],
                ..Diff::default()
            },
        );
        assert_eq!(routes(&server), ["alice", "carol"]);
        table.remove(&carol.route.key()).unwrap();
        server.publish(
            &table,
            &Diff {
                removed: vec![carol],
                ..Diff::default()
            },
        );
        assert_eq!(routes(&server), ["alice"]);
    }
}
