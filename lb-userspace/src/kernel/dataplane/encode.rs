//! How a route is written into the BPF maps: the keys and values of `FRONTENDS` and
//! `REVERSE`, in network byte order as the XDP program compares them with the packet, and
//! back (a pinned entry read at start). The one place that knows the maps' encoding; the
//! route table stays free of it.

use std::net::SocketAddrV4;

use lb_common::{Backend, FrontendKey, ReverseKey, ReverseValue};

use crate::{config::Protocol, table::routes::Entry};

/// Network-order u32 of an address, as the XDP program loads it from the packet.
pub fn addr_be(ip: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The frontend map entry of a route: `(public port, protocol) -> backend`.
pub fn frontend_entry(e: &Entry) -> (FrontendKey, Backend) {
    let r = &e.route;
    (
        frontend_key(r.port, r.protocol),
        Backend {
            addr: addr_be(*r.backend.ip()),
            port: r.backend.port().to_be(),
            _pad: 0,
            route_id: e.id,
        },
    )
}

pub fn frontend_key(port: u16, protocol: Protocol) -> FrontendKey {
    FrontendKey {
        port: port.to_be(),
        protocol: protocol.number(),
        _pad: 0,
    }
}

pub fn reverse_key(backend: SocketAddrV4, protocol: Protocol) -> ReverseKey {
    ReverseKey {
        addr: addr_be(*backend.ip()),
        port: backend.port().to_be(),
        protocol: protocol.number(),
        _pad: 0,
    }
}

/// The reverse map entry of a route: `backend (address, port, protocol) -> public port`.
pub fn reverse_entry(e: &Entry) -> (ReverseKey, ReverseValue) {
    let r = &e.route;
    (
        reverse_key(r.backend, r.protocol),
        ReverseValue {
            public_port: r.port.to_be(),
            _pad: 0,
            route_id: e.id,
        },
    )
}

/// The route (port, protocol, backend, slot) a pinned frontend entry stands for, if its
/// protocol is one of ours.
pub fn decode_frontend(
    k: &FrontendKey,
    v: &Backend,
) -> Option<((u16, Protocol), (SocketAddrV4, u32))> {
    let protocol = match k.protocol {
        lb_common::PROTO_TCP => Protocol::Tcp,
        lb_common::PROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    let ip = std::net::Ipv4Addr::from(v.addr.to_ne_bytes());
    Some((
        (u16::from_be(k.port), protocol),
        (SocketAddrV4::new(ip, u16::from_be(v.port)), v.route_id),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::routes::RouteTable;

    fn t0() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    }

    fn route(name: &str, port: u16, backend: &str) -> crate::config::Route {
        crate::config::Route {
            name: name.into(),
            service: "ssh".into(),
            protocol: Protocol::Tcp,
            backend: backend.parse().unwrap(),
            port,
            proxy_protocol: None,
        }
    }

    #[test]
    fn entries_are_in_network_order() {
        let mut t = RouteTable::new();
        t.replace_config(&[route("alice", 30001, "10.0.0.11:22")], t0())
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
        assert_eq!(
            decode_frontend(&fk, &be),
            Some((
                (30001, Protocol::Tcp),
                ("10.0.0.11:22".parse().unwrap(), e.id)
            ))
        );
    }
}
