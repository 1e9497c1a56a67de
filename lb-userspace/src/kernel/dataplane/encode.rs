//! How a route is written into the BPF maps: the slots and values of `FRONTENDS` and the
//! keys and values of `REVERSE`, in network byte order as the XDP program compares them
//! with the packet, and back (a pinned entry read at start). The one place that knows the
//! maps' encoding; the route table stays free of it.

use std::net::SocketAddrV4;

use lb_common::{Backend, ReverseKey, ReverseValue, BACKEND_LIVE};

use crate::table::routes::Entry;
use lb_model::Protocol;

/// Network-order u32 of an address, as the XDP program loads it from the packet.
pub fn addr_be(ip: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The frontend map entry of a route: the slot of `(public port, protocol)` -> the pool's
/// first active member (`Entry::primary`), until the program chooses among the pool.
pub fn frontend_entry(e: &Entry) -> (u32, Backend) {
    let r = &e.route;
    let backend = e.primary();
    (
        frontend_slot(r.port, r.protocol),
        Backend {
            addr: addr_be(*backend.ip()),
            port: backend.port().to_be(),
            live: BACKEND_LIVE,
            route_id: e.id,
        },
    )
}

/// The `FRONTENDS` slot of a public port (host order) and protocol.
pub fn frontend_slot(port: u16, protocol: Protocol) -> u32 {
    // Every `Protocol` has slots; were one added without, the write to slot u32::MAX
    // would fail with the map's error rather than land in another route's slot.
    lb_common::frontend_slot(port, protocol.number()).unwrap_or(u32::MAX)
}

pub fn reverse_key(backend: SocketAddrV4, protocol: Protocol) -> ReverseKey {
    ReverseKey::new(
        addr_be(*backend.ip()),
        backend.port().to_be(),
        protocol.number(),
    )
}

/// The reverse map entries of a route, one per member, drained and down ones too (their
/// established flows still answer): `backend (address, port, protocol) -> public port`.
pub fn reverse_entries(e: &Entry) -> Vec<(ReverseKey, ReverseValue)> {
    let r = &e.route;
    r.backends
        .addrs()
        .map(|b| {
            (
                reverse_key(b, r.protocol),
                ReverseValue {
                    public_port: r.port.to_be(),
                    _pad: 0,
                    route_id: e.id,
                },
            )
        })
        .collect()
}

/// The route (port, protocol, backend, counter slot) a pinned frontend slot stands for,
/// if it holds one.
pub fn decode_frontend(slot: u32, v: &Backend) -> Option<((u16, Protocol), (SocketAddrV4, u32))> {
    if v.live != BACKEND_LIVE {
        return None;
    }
    let port = u16::try_from(slot & 0xffff).ok()?;
    let protocol = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .find(|p| lb_common::frontend_slot(port, p.number()) == Some(slot))?;
    let ip = std::net::Ipv4Addr::from(v.addr.to_ne_bytes());
    Some((
        (port, protocol),
        (SocketAddrV4::new(ip, u16::from_be(v.port)), v.route_id),
    ))
}

/// The backend and protocol a `REVERSE` key stands for (`None`: a protocol srvgate never
/// writes).
pub fn decode_reverse(k: &ReverseKey) -> Option<(SocketAddrV4, Protocol)> {
    let protocol = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .find(|p| p.number() == k.protocol)?;
    let ip = std::net::Ipv4Addr::from(k.addr.to_ne_bytes());
    Some((SocketAddrV4::new(ip, u16::from_be(k.port)), protocol))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::routes::RouteTable;

    fn t0() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    }

    fn route(name: &str, port: u16, backend: &str) -> lb_model::Route {
        crate::testing::ssh_route(name, port, backend)
    }

    #[test]
    fn entries_are_in_network_order() {
        let mut t = RouteTable::new();
        t.replace_config(&[route("alice", 30001, "10.0.0.11:22")], t0())
            .unwrap();
        let e = t.entries().next().unwrap();
        let (slot, be) = frontend_entry(e);
        assert_eq!(slot, 30001, "TCP ports are the first 65536 slots");
        assert_eq!(be.addr.to_ne_bytes(), [10, 0, 0, 11]);
        assert_eq!(be.port.to_ne_bytes(), 22u16.to_be_bytes());
        assert_eq!(be.live, BACKEND_LIVE);
        let [(rk, rv)] = reverse_entries(e)[..] else {
            panic!("one member, one reverse entry")
        };
        assert_eq!(rk.addr, be.addr);
        assert_eq!(rk.port, be.port);
        assert_eq!(
            decode_reverse(&rk),
            Some(("10.0.0.11:22".parse().unwrap(), Protocol::Tcp))
        );
        assert_eq!(rv.public_port, 30001u16.to_be());
        assert_eq!(rv.route_id, be.route_id);
        assert_eq!(
            decode_frontend(slot, &be),
            Some((
                (30001, Protocol::Tcp),
                ("10.0.0.11:22".parse().unwrap(), e.id)
            ))
        );
        assert_eq!(frontend_slot(30001, Protocol::Udp), 65536 + 30001);
        assert_eq!(
            decode_frontend(65536 + 30001, &be).map(|d| d.0),
            Some((30001, Protocol::Udp))
        );
        // An empty slot (every slot of an array exists) is no route.
        let empty = <Backend as bytemuck::Zeroable>::zeroed();
        assert_eq!(decode_frontend(slot, &empty), None);
    }
}
