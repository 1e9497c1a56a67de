//! How a route is written into the BPF maps: the slots and values of `FRONTENDS` and the
//! keys and values of `REVERSE`, in network byte order as the XDP program compares them
//! with the packet, and back (a pinned entry read at start). The one place that knows the
//! maps' encoding; the route table stays free of it.

use std::net::SocketAddrV4;

use std::collections::HashMap;

use lb_common::{
    Backend, PoolMember, PoolMembers, PoolTable, ReverseKey, ReverseValue, BACKEND_LIVE,
    MAGLEV_TABLE_SIZE, MAX_POOLS, MEMBER_LIVE, NO_POOL,
};

use super::maglev::{self, MaglevError};

use crate::table::routes::Entry;
use lb_model::Protocol;

/// Network-order u32 of an address, as the XDP program loads it from the packet.
pub fn addr_be(ip: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The frontend map entry of a route: the slot of `(public port, protocol)` -> its pool
/// slot `pool` ([`NO_POOL`] for a route the program does not choose for) and the pool's
/// first active member (`Entry::primary`), the one backend of a route without a pool.
pub fn frontend_entry(e: &Entry, pool: u16) -> (u32, Backend) {
    let r = &e.route;
    let backend = e.primary();
    (
        frontend_slot(r.port, r.protocol),
        Backend {
            addr: addr_be(*backend.ip()),
            port: backend.port().to_be(),
            live: BACKEND_LIVE,
            // `PoolSlots` hands out slots below `MAX_POOLS`, which fits a byte.
            pool: u8::try_from(pool).unwrap_or(0),
            route_id: e.id,
        },
    )
}

/// What the program needs to choose among a route's pool: its members and its Maglev
/// table; `None` for a route with one member, which the program forwards without a pool.
///
/// Every member is in `members` (sorted as [`maglev::members_in_order`]), so that a flow
/// the program remembers keeps its member's index while the member is drained or down;
/// only [`Entry::active`]'s members own table slots (the others have weight 0 there).
/// Live, so that their established flows stay: the active members and the drained ones
/// that are up. A member found down is not live: its flows move (TCP resets them).
pub fn pool_entries(e: &Entry) -> Result<Option<(PoolMembers, PoolTable)>, MaglevError> {
    let all = e.route.backends.members();
    if all.len() < 2 {
        return Ok(None);
    }
    let active = e.active();
    let weight = |addr| {
        active
            .iter()
            .find(|(a, _)| *a == addr)
            .map_or(0, |&(_, w)| u32::from(w))
    };
    let pool = maglev::members_in_order(
        &all.iter()
            .map(|m| (m.addr, weight(m.addr)))
            .collect::<Vec<_>>(),
    );
    let slots = maglev::table(&pool, MAGLEV_TABLE_SIZE)?;
    let max = lb_common::MAX_POOL_BACKENDS as usize;
    if pool.len() > max {
        return Err(MaglevError::TooManyMembers {
            members: pool.len(),
            size: MAGLEV_TABLE_SIZE,
            max,
        });
    }
    let mut members = <PoolMembers as bytemuck::Zeroable>::zeroed();
    for (slot, &(addr, w)) in members.members.iter_mut().zip(&pool) {
        let drained_up = all
            .iter()
            .any(|m| m.addr == addr && m.drained && !e.down.contains(&addr));
        *slot = PoolMember {
            addr: addr_be(*addr.ip()),
            port: addr.port().to_be(),
            live: if w > 0 || drained_up { MEMBER_LIVE } else { 0 },
        };
    }
    let mut table = <PoolTable as bytemuck::Zeroable>::zeroed();
    for (to, from) in table.slots.iter_mut().zip(&slots) {
        // An index below MAX_POOL_BACKENDS (checked above): one byte.
        *to = *from as u8;
    }
    Ok(Some((members, table)))
}

/// Which pool slot each route with a pool holds, by its public port and protocol: handed
/// out when a route first needs one, freed when it no longer does or leaves. The one owner
/// of `POOL_MEMBERS` and `POOL_TABLES` slots.
#[derive(Debug, Default)]
pub struct PoolSlots {
    held: HashMap<(u16, Protocol), u16>,
    free: Vec<u16>,
    next: u16,
}

impl PoolSlots {
    /// The slot of the route on `port`/`protocol`, a new one if it has none; `None` when
    /// every slot is taken ([`MAX_POOLS`] less [`NO_POOL`]).
    pub fn slot_for(&mut self, port: u16, protocol: Protocol) -> Option<u16> {
        if let Some(&slot) = self.held.get(&(port, protocol)) {
            return Some(slot);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if u32::from(self.next) + 1 < MAX_POOLS => {
                self.next += 1;
                self.next
            }
            None => return None,
        };
        debug_assert_ne!(slot, NO_POOL);
        self.held.insert((port, protocol), slot);
        Some(slot)
    }

    /// The slots the pinned `FRONTENDS` of an earlier run name (`(port, protocol)`, pool
    /// slot), so that a pool keeps its slot across a restart and no frontend of the earlier
    /// run names a slot that another pool is written into meanwhile. Slots out of range,
    /// or named twice, are left out.
    pub fn adopt(held: impl IntoIterator<Item = ((u16, Protocol), u16)>) -> PoolSlots {
        let mut slots = PoolSlots::default();
        let mut used = std::collections::HashSet::new();
        for (key, slot) in held {
            if slot != NO_POOL && u32::from(slot) < MAX_POOLS && used.insert(slot) {
                slots.held.insert(key, slot);
                slots.next = slots.next.max(slot);
            }
        }
        slots.free = (1..slots.next)
            .rev()
            .filter(|s| !used.contains(s))
            .collect();
        slots
    }

    /// Frees the slot of the route on `port`/`protocol`, if it held one.
    pub fn release(&mut self, port: u16, protocol: Protocol) {
        if let Some(slot) = self.held.remove(&(port, protocol)) {
            self.free.push(slot);
        }
    }
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
        let (slot, be) = frontend_entry(e, NO_POOL);
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
        assert_eq!(pool_entries(e), Ok(None), "one member needs no pool");
    }

    fn pool_route(backends: &[&str]) -> Entry {
        let mut r = route("judge", 30080, backends[0]);
        r.backends = lb_model::Pool::new(
            backends
                .iter()
                .map(|b| lb_model::Member::new(b.parse().unwrap()))
                .collect(),
        )
        .unwrap();
        let mut t = RouteTable::new();
        t.replace_config(&[r], t0()).unwrap();
        let e = t.entries().next().unwrap().clone();
        e
    }

    #[test]
    fn a_pool_names_every_member_and_only_active_ones_own_slots() {
        let mut e = pool_route(&["10.0.0.13:80", "10.0.0.11:80", "10.0.0.12:80"]);
        let (members, table) = pool_entries(&e).unwrap().unwrap();
        let addrs: Vec<_> = members.members[..3]
            .iter()
            .map(|m| m.addr.to_ne_bytes()[3])
            .collect();
        assert_eq!(addrs, [11, 12, 13], "sorted as maglev::members_in_order");
        assert!(members.members[..3].iter().all(|m| m.live == MEMBER_LIVE));
        assert_eq!(members.members[3].live, 0, "past the pool: no member");
        let owned = |t: &PoolTable, i: u8| {
            t.slots[..MAGLEV_TABLE_SIZE as usize]
                .iter()
                .filter(|&&s| s == i)
                .count()
        };
        for i in 0..3 {
            assert!(owned(&table, i) > 1300, "member {i}: {}", owned(&table, i));
        }
        // 10.0.0.12 found down: it owns no slot and its flows move (not live), while the
        // others keep their indexes.
        e.down.insert("10.0.0.12:80".parse().unwrap());
        let (members, table) = pool_entries(&e).unwrap().unwrap();
        assert_eq!(members.members[1].live, 0);
        assert_eq!(members.members[2].live, MEMBER_LIVE);
        assert_eq!(owned(&table, 1), 0);
        assert_eq!(
            owned(&table, 0) + owned(&table, 2),
            MAGLEV_TABLE_SIZE as usize
        );
        // Drained but up: no slot, yet live, so its established flows finish.
        e.down.clear();
        let mut r = e.route.clone();
        let mut m = r.backends.members().to_vec();
        m.iter_mut()
            .find(|m| m.addr.ip().octets()[3] == 13)
            .unwrap()
            .drained = true;
        r.backends = lb_model::Pool::new(m).unwrap();
        e.route = r;
        let (members, table) = pool_entries(&e).unwrap().unwrap();
        assert_eq!(members.members[2].live, MEMBER_LIVE);
        assert_eq!(owned(&table, 2), 0);
    }

    #[test]
    fn pool_slots_are_reused_and_bounded() {
        let mut slots = PoolSlots::default();
        let a = slots.slot_for(1, Protocol::Tcp).unwrap();
        assert_ne!(a, NO_POOL);
        assert_eq!(
            slots.slot_for(1, Protocol::Tcp),
            Some(a),
            "a route keeps its slot"
        );
        let b = slots.slot_for(1, Protocol::Udp).unwrap();
        assert_ne!(a, b);
        slots.release(1, Protocol::Tcp);
        assert_eq!(
            slots.slot_for(2, Protocol::Tcp),
            Some(a),
            "a freed slot is handed on"
        );
        let adopted = PoolSlots::adopt([
            ((80, Protocol::Tcp), 5),
            ((81, Protocol::Tcp), 5),
            ((82, Protocol::Tcp), 2),
        ]);
        let mut again = adopted;
        assert_eq!(
            again.slot_for(80, Protocol::Tcp),
            Some(5),
            "kept across a restart"
        );
        assert_eq!(again.slot_for(82, Protocol::Tcp), Some(2));
        let fresh: Vec<_> = (0..3)
            .map(|p| again.slot_for(100 + p, Protocol::Tcp))
            .collect();
        assert_eq!(
            fresh,
            [Some(1), Some(3), Some(4)],
            "the gaps, then new slots"
        );
        assert_eq!(again.slot_for(103, Protocol::Tcp), Some(6));
        for port in 3.. {
            match slots.slot_for(port, Protocol::Tcp) {
                Some(s) => assert!(u32::from(s) < MAX_POOLS && s != NO_POOL),
                None => {
                    assert_eq!(
                        port - 3,
                        MAX_POOLS as u16 - 3,
                        "every slot but 0 handed out"
                    );
                    break;
                }
            }
        }
    }
}
