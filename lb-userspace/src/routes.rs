//! The route table: which routes exist, and the BPF map entries they turn into.
//!
//! Each route owns a counter slot (`route_id`) in the per-CPU `ROUTE_COUNTERS` array. A
//! route keeps its slot for as long as it exists, across reloads, so its counters survive;
//! freed slots are reused, and the data plane zeroes a slot when it is handed out again.

use std::collections::BTreeMap;

use lb_common::{Backend, FrontendKey, ReverseKey, ReverseValue, MAX_ROUTES};

use crate::config::{Route, RouteKey};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    #[error("the route table is full ({MAX_ROUTES} routes)")]
    Full,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub route: Route,
    /// Slot in `ROUTE_COUNTERS`.
    pub id: u32,
}

/// What `replace_all` changed, for logging and for zeroing reused counter slots.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<Entry>,
    pub removed: Vec<Entry>,
    /// Same key, new backend or port; the route keeps its slot.
    pub changed: Vec<Entry>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    entries: BTreeMap<RouteKey, Entry>,
    free: Vec<u32>,
    next_id: u32,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the table hold exactly `routes` (already validated together), keeping the
    /// slot of every route whose key stays.
    pub fn replace_all(&mut self, routes: &[Route]) -> Result<Diff, RouteError> {
        let mut diff = Diff::default();
        let wanted: BTreeMap<RouteKey, &Route> = routes.iter().map(|r| (r.key(), r)).collect();
        let gone: Vec<RouteKey> = self
            .entries
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(e) = self.entries.remove(&key) {
                self.free.push(e.id);
                diff.removed.push(e);
            }
        }
        for (key, route) in wanted {
            match self.entries.get_mut(&key) {
                Some(e) if e.route == *route => {}
                Some(e) => {
                    e.route = route.clone();
                    diff.changed.push(e.clone());
                }
                None => {
                    let id = self.allocate_id()?;
                    let e = Entry {
                        route: route.clone(),
                        id,
                    };
                    self.entries.insert(key, e.clone());
                    diff.added.push(e);
                }
            }
        }
        Ok(diff)
    }

    fn allocate_id(&mut self) -> Result<u32, RouteError> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        if self.next_id >= MAX_ROUTES {
            return Err(RouteError::Full);
        }
        self.next_id += 1;
        Ok(self.next_id - 1)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn routes(&self) -> Vec<Route> {
        self.entries.values().map(|e| e.route.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Network-order u32 of an address, as the XDP program loads it from the packet.
pub fn addr_be(ip: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The frontend map entry of a route: `(public port, protocol) -> backend`.
pub fn frontend_entry(e: &Entry) -> (FrontendKey, Backend) {
    let r = &e.route;
    (
        FrontendKey {
            port: r.port.to_be(),
            protocol: r.protocol.number(),
            _pad: 0,
        },
        Backend {
            addr: addr_be(*r.backend.ip()),
            port: r.backend.port().to_be(),
            _pad: 0,
            route_id: e.id,
        },
    )
}

/// The reverse map entry of a route: `backend (address, port, protocol) -> public port`.
pub fn reverse_entry(e: &Entry) -> (ReverseKey, ReverseValue) {
    let r = &e.route;
    (
        ReverseKey {
            addr: addr_be(*r.backend.ip()),
            port: r.backend.port().to_be(),
            protocol: r.protocol.number(),
            _pad: 0,
        },
        ReverseValue {
            public_port: r.port.to_be(),
            _pad: 0,
            route_id: e.id,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn route(name: &str, port: u16, backend: &str) -> Route {
        Route {
            name: name.into(),
            service: "ssh".into(),
            protocol: Protocol::Tcp,
            backend: backend.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn ids_are_stable_across_reloads_and_reused_after_removal() {
        let mut t = RouteTable::new();
        let a = route("alice", 30001, "10.0.0.11:22");
        let b = route("bob", 30002, "10.0.0.12:22");
        let d = t.replace_all(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(d.added.len(), 2);
        let id_of = |t: &RouteTable, n: &str| t.entries().find(|e| e.route.name == n).unwrap().id;
        let (ida, idb) = (id_of(&t, "alice"), id_of(&t, "bob"));
        assert_ne!(ida, idb);

        let d = t.replace_all(&[a.clone(), b.clone()]).unwrap();
        assert!(d.is_empty());

        let b2 = route("bob", 30003, "10.0.0.12:22");
        let d = t.replace_all(&[a.clone(), b2]).unwrap();
        assert_eq!(d.changed.len(), 1);
        assert_eq!(id_of(&t, "bob"), idb);

        let d = t.replace_all(&[a]).unwrap();
        assert_eq!(d.removed.len(), 1);
        let c = route("carol", 30004, "10.0.0.13:22");
        let d = t
            .replace_all(&[route("alice", 30001, "10.0.0.11:22"), c])
            .unwrap();
        assert_eq!(d.added[0].id, idb, "carol reuses bob's freed slot");
        assert_eq!(id_of(&t, "alice"), ida);
    }

    #[test]
    fn entries_are_in_network_order() {
        let mut t = RouteTable::new();
        t.replace_all(&[route("alice", 30001, "10.0.0.11:22")])
            .unwrap();
        let e = t.entries().next().unwrap();
        let (fk, be) = frontend_entry(e);
        assert_eq!(fk.port.to_ne_bytes(), 30001u16.to_be_bytes());
        assert_eq!(fk.protocol, 6);
        assert_eq!(be.addr.to_ne_bytes(), [10, 0, 0, 11]);
        assert_eq!(be.port.to_ne_bytes(), 22u16.to_be_bytes());
        let (rk, rv) = reverse_entry(e);
        assert_eq!(rk.addr, be.addr);
        assert_eq!(rk.port, be.port);
        assert_eq!(rv.public_port, fk.port);
        assert_eq!(rv.route_id, be.route_id);
    }

    #[test]
    fn a_full_table_is_an_error_not_a_panic() {
        let mut t = RouteTable::new();
        t.next_id = MAX_ROUTES;
        assert_eq!(
            t.replace_all(&[route("alice", 30001, "10.0.0.11:22")]),
            Err(RouteError::Full)
        );
    }
}
