//! The public legs' guards, daemon side: what `SOURCE_GUARD` holds ([`guard_entries`], pure:
//! the one place that decides which addresses are refused as sources on a public leg and
//! which count as inside), keeping the map equal to it as the machine's addresses change,
//! and the tc egress program (`srvgate_egress`) on each public leg, pinned like the XDP
//! links.
//!
//! The daemon reads the machine's addresses every 2 s, one read serving both this guard and the
//! backend rule (`config::check_backend`).

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::{
    maps::{lpm_trie::Key, LpmTrie, MapData},
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifier, TcAttachOptions, TcAttachType},
    },
    Ebpf,
};
use lb_common::{map_names, GUARD_INSIDE, GUARD_REFUSED_SOURCE, ROLE_PRIVATE, ROLE_PUBLIC};
use tracing::{info, warn};

use super::{encode::addr_be, maps::map_err, DataplaneError, Leg};
use crate::machine::Interface;

/// Sources no packet from outside can honestly carry, whatever the machine: the addresses
/// no host has (`config::NOT_A_HOST`: 0/8, 127/8, 169.254/16, 224/4, and 240/4 with the
/// limited broadcast), the same list the backend rule refuses.
pub const BOGONS: [(Ipv4Addr, u8); 5] = {
    let mut out = [(Ipv4Addr::UNSPECIFIED, 0); 5];
    let mut i = 0;
    while i < out.len() {
        out[i] = (
            crate::config::NOT_A_HOST[i].0,
            crate::config::NOT_A_HOST[i].1,
        );
        i += 1;
    }
    out
};

/// A prefix: its first address (host bits zero) and length.
pub type Prefix = (Ipv4Addr, u8);

fn network((addr, len): Prefix) -> Prefix {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    (Ipv4Addr::from(u32::from(addr) & mask), len.min(32))
}

fn contains(outer: Prefix, inner: Prefix) -> bool {
    outer.1 <= inner.1 && network((inner.0, outer.1)) == outer
}

/// `SOURCE_GUARD`'s entries for the legs (`(name, role)`), the machine's interfaces and the
/// public address: each prefix with every `GUARD_*` bit of the rules that cover it, so the
/// program's one longest-prefix lookup is the whole answer.
///
/// - Refused as a source on a public leg: every address of the gateway (any interface's,
///   and the public address, which a standby does not hold yet), the subnets of legs that
///   are only private, and [`BOGONS`].
/// - Inside: the subnets of every private leg, a one-armed leg's too; but not the
///   gateway's own addresses on a public leg nor the public address, which are what the
///   gateway sends from toward the world.
///
/// A one-armed leg's subnets are not refused: the inside is on that wire. A subnet of
/// length 0 is ignored (it would make every address inside).
pub fn guard_entries(
    legs: &[(String, u8)],
    interfaces: &[Interface],
    public: Ipv4Addr,
) -> BTreeMap<Prefix, u32> {
    let role = |name: &str| legs.iter().find(|(n, _)| n == name).map_or(0, |l| l.1);
    let mut rules: Vec<(Prefix, u32)> = BOGONS
        .iter()
        .map(|&p| (network(p), GUARD_REFUSED_SOURCE))
        .collect();
    // The addresses the gateway sends from toward the world: never inside.
    let mut outward: Vec<Ipv4Addr> = vec![public];
    rules.push(((public, 32), GUARD_REFUSED_SOURCE));
    for iface in interfaces {
        let r = role(&iface.name);
        for &(addr, len) in &iface.ipv4_nets {
            rules.push(((addr, 32), GUARD_REFUSED_SOURCE));
            if r & ROLE_PUBLIC != 0 {
                outward.push(addr);
            }
            if r & ROLE_PRIVATE != 0 && len > 0 {
                let refused = if r & ROLE_PUBLIC == 0 {
                    GUARD_REFUSED_SOURCE
                } else {
                    0
                };
                rules.push((network((addr, len)), GUARD_INSIDE | refused));
            }
        }
    }
    let mut out = BTreeMap::new();
    for &(p, _) in &rules {
        let mut bits = rules
            .iter()
            .filter(|(outer, _)| contains(*outer, p))
            .fold(0, |acc, (_, b)| acc | b);
        if p.1 == 32 && outward.contains(&p.0) {
            bits &= !GUARD_INSIDE;
        }
        out.insert(p, bits);
    }
    out
}

/// `GUARD_OCTETS` for `entries`: 1 for each first octet some prefix covers addresses of
/// (a prefix shorter than 8 bits covers several), else 0.
pub fn guard_octets(entries: &BTreeMap<Prefix, u32>) -> Vec<u32> {
    let mut octets = vec![0; lb_common::GUARD_OCTETS_SLOTS as usize];
    for &(addr, len) in entries.keys() {
        let first = usize::from(addr.octets()[0]);
        let span = 1usize << (8 - len.min(8));
        for o in &mut octets[first..(first + span).min(256)] {
            *o = 1;
        }
    }
    octets
}

/// `SOURCE_GUARD` and `GUARD_OCTETS` through the daemon's descriptors, and what this run
/// wrote into them.
pub(super) struct SourceGuard {
    map: LpmTrie<MapData, u32, u32>,
    written: Option<BTreeMap<Prefix, u32>>,
    octets: aya::maps::Array<MapData, u32>,
    octets_written: Option<Vec<u32>>,
}

pub(super) fn key((addr, len): Prefix) -> Key<u32> {
    Key::new(u32::from(len), addr_be(addr))
}

impl SourceGuard {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<SourceGuard, DataplaneError> {
        let name = map_names::SOURCE_GUARD;
        let map = ebpf
            .take_map(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()
            .map_err(map_err(name))?;
        let octets_name = map_names::GUARD_OCTETS;
        let octets = ebpf
            .take_map(octets_name)
            .ok_or(DataplaneError::Missing(octets_name))?
            .try_into()
            .map_err(map_err(octets_name))?;
        Ok(SourceGuard {
            map,
            written: None,
            octets,
            octets_written: None,
        })
    }

    /// Writes the `GUARD_OCTETS` slots that differ from `want` (all of them the first time).
    fn sync_octets(&mut self, want: Vec<u32>) -> Result<(), DataplaneError> {
        let name = map_names::GUARD_OCTETS;
        for (slot, &v) in (0u32..).zip(&want) {
            let old = self.octets_written.as_ref().map(|w| w[slot as usize]);
            if old != Some(v) {
                self.octets.set(slot, v, 0).map_err(map_err(name))?;
            }
        }
        self.octets_written = Some(want);
        Ok(())
    }

    /// Makes the map hold exactly `want`: new and changed prefixes first, then those gone,
    /// so an address that stays refused is never absent meanwhile. The first call also
    /// removes what an earlier run left.
    pub(super) fn sync(&mut self, want: &BTreeMap<Prefix, u32>) -> Result<(), DataplaneError> {
        let name = map_names::SOURCE_GUARD;
        if want.len() > lb_common::SOURCE_GUARD_ENTRIES as usize {
            // Refused whole rather than cut: a missing own address would let its spoofs in.
            return Err(DataplaneError::GuardFull {
                prefixes: want.len(),
                capacity: lb_common::SOURCE_GUARD_ENTRIES,
            });
        }
        let have = match self.written.take() {
            Some(w) => w,
            None => self
                .map
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| {
                    let addr = Ipv4Addr::from(k.data().to_ne_bytes());
                    ((addr, k.prefix_len() as u8), v)
                })
                .collect(),
        };
        if have == *want && self.octets_written.is_some() {
            self.written = Some(have);
            return Ok(());
        }
        for (&p, &bits) in want {
            if have.get(&p) != Some(&bits) {
                self.map.insert(&key(p), bits, 0).map_err(map_err(name))?;
            }
        }
        // After the new prefixes, before the old ones go: an octet marked too early or
        // cleared too late only costs a lookup that finds nothing.
        self.sync_octets(guard_octets(want))?;
        for &p in have.keys().filter(|p| !want.contains_key(p)) {
            match self.map.remove(&key(p)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        info!(
            prefixes = want.len(),
            refused = want
                .values()
                .filter(|b| *b & GUARD_REFUSED_SOURCE != 0)
                .count(),
            inside = want.values().filter(|b| *b & GUARD_INSIDE != 0).count(),
            "public legs' source guard updated"
        );
        self.written = Some(want.clone());
        Ok(())
    }
}

/// Puts the egress guard on every public leg of `legs` (tcx, kernel 6.6 and later), each
/// link pinned as `egress_<ifname>` in `dir`. A link an earlier run pinned is replaced by a
/// new one attached first, so the leg is never unguarded in between. Where tcx is missing
/// the leg runs without the guard, said loudly: forwarding matters more, and the admin's
/// firewall can do the same (the book, reference/security.md, "Left to a firewall").
pub(super) fn attach_egress_guard(
    ebpf: &mut Ebpf,
    legs: &[Leg],
    dir: &Path,
) -> Result<Vec<PinnedLink>, DataplaneError> {
    let name = lb_common::EGRESS_PROGRAM_NAME;
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::Missing("tc egress program"))?
        .try_into()
        .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ProgramError(e))))?;
    program
        .load()
        .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ProgramError(e))))?;
    let mut links = Vec::new();
    for leg in legs.iter().filter(|l| l.role & ROLE_PUBLIC != 0) {
        let path = egress_pin_path(dir, &leg.name);
        let attached = program
            .attach_with_options(
                &leg.name,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| e.to_string())
            .and_then(|id| program.take_link(id).map_err(|e| e.to_string()))
            .and_then(|link| FdLink::try_from(link).map_err(|e| e.to_string()));
        let link = match attached {
            Ok(link) => link,
            Err(e) => {
                warn!(iface = %leg.name, "cannot attach the egress guard ({e}; tcx needs Linux 6.6 or later): packets the kernel forwards untranslated may leave this public leg with a private source; drop them with a firewall");
                continue;
            }
        };
        // The old link, if any, detaches when its pin goes (nothing else holds it).
        if path.exists() {
            if let Err(e) = std::fs::remove_file(&path) {
                warn!("removing {}: {e}", path.display());
            }
        }
        let pinned = link.pin(&path).map_err(|e| DataplaneError::PinLink {
            iface: leg.name.clone(),
            path: path.clone(),
            error: e.to_string(),
        })?;
        info!(iface = %leg.name, "egress guard attached: nothing leaves this leg from an inside address to the world");
        links.push(pinned);
    }
    Ok(links)
}

/// Prefix of the egress guard's link pins; the rest is the interface's name as in
/// `pins::link_pin_path`.
pub(super) const EGRESS_PREFIX: &str = "egress_";

pub(super) fn egress_pin_path(dir: &Path, iface: &str) -> std::path::PathBuf {
    dir.join(format!("{EGRESS_PREFIX}{}", iface.replace('.', ":")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, nets: &[(&str, u8)]) -> Interface {
        Interface {
            name: name.into(),
            loopback: name == "lo",
            ipv4: nets.iter().map(|(a, _)| a.parse().unwrap()).collect(),
            ipv4_nets: nets.iter().map(|(a, l)| (a.parse().unwrap(), *l)).collect(),
        }
    }

    fn p(a: &str, l: u8) -> Prefix {
        (a.parse().unwrap(), l)
    }

    /// The answer the program's longest-prefix lookup gets for `addr`.
    fn lookup(entries: &BTreeMap<Prefix, u32>, addr: &str) -> u32 {
        let a: Ipv4Addr = addr.parse().unwrap();
        entries
            .iter()
            .filter(|(q, _)| contains(**q, (a, 32)))
            .max_by_key(|(q, _)| q.1)
            .map_or(0, |(_, b)| *b)
    }

    #[test]
    fn a_two_armed_gateway_refuses_its_own_and_its_private_addresses_on_the_public_leg() {
        let legs = vec![
            ("pub0".to_string(), ROLE_PUBLIC),
            ("priv1".to_string(), ROLE_PRIVATE),
        ];
        let ifaces = [
            iface("lo", &[("127.0.0.1", 8)]),
            iface("pub0", &[("203.0.113.10", 24)]),
            iface("priv1", &[("10.210.2.1", 24)]),
            iface("docker0", &[("172.17.0.1", 16)]),
        ];
        let e = guard_entries(&legs, &ifaces, "203.0.113.10".parse().unwrap());
        let (r, i) = (GUARD_REFUSED_SOURCE, GUARD_INSIDE);
        for (addr, want) in [
            ("203.0.113.10", r),    // the public address
            ("203.0.113.7", 0),     // a client on the public leg's own subnet
            ("198.51.100.7", 0),    // a client anywhere
            ("10.210.2.11", r | i), // a backend
            ("10.210.2.1", r | i),  // the gateway's private address: inside, and refused
            ("172.17.0.1", r),      // an address of another interface
            ("172.17.0.2", 0),      // not a leg's subnet
            ("0.1.2.3", r),
            ("127.0.0.1", r),
            ("169.254.3.4", r),
            ("224.0.0.5", r),
            ("239.255.255.250", r),
            ("240.0.0.1", r),
            ("255.255.255.255", r),
        ] {
            assert_eq!(lookup(&e, addr), want, "{addr}");
        }
        assert_eq!(e.get(&p("10.210.2.0", 24)), Some(&(r | i)));
    }

    #[test]
    fn a_one_armed_legs_subnets_are_inside_but_not_refused() {
        let legs = vec![("eth0".to_string(), ROLE_PUBLIC | ROLE_PRIVATE)];
        let ifaces = [iface("eth0", &[("10.210.1.1", 24), ("10.210.2.1", 24)])];
        let e = guard_entries(&legs, &ifaces, "10.210.1.1".parse().unwrap());
        let (r, i) = (GUARD_REFUSED_SOURCE, GUARD_INSIDE);
        for (addr, want) in [
            ("10.210.2.11", i), // a backend on the shared wire
            ("10.210.1.2", i),  // the router
            ("10.210.1.1", r),  // the public address: sent from toward the world
            ("10.210.2.1", r),  // the gateway's own: it sends from it, never inside
            ("10.210.9.2", 0),  // a client behind the router
        ] {
            assert_eq!(lookup(&e, addr), want, "{addr}");
        }
    }

    #[test]
    fn the_public_address_is_refused_even_where_no_interface_holds_it() {
        let legs = vec![("pub0".to_string(), ROLE_PUBLIC)];
        let e = guard_entries(&legs, &[], "192.0.2.1".parse().unwrap());
        assert_eq!(lookup(&e, "192.0.2.1"), GUARD_REFUSED_SOURCE);
        assert_eq!(e.len(), BOGONS.len() + 1);
    }

    #[test]
    fn the_octets_say_where_the_trie_has_rules() {
        let legs = vec![
            ("pub0".to_string(), ROLE_PUBLIC),
            ("priv1".to_string(), ROLE_PRIVATE),
        ];
        let ifaces = [iface("priv1", &[("10.210.2.1", 24)])];
        let e = guard_entries(&legs, &ifaces, "203.0.113.10".parse().unwrap());
        let octets = guard_octets(&e);
        let marked: Vec<usize> = (0..256).filter(|&o| octets[o] != 0).collect();
        let mut want = vec![0, 10, 127, 169, 203];
        want.extend(224..256);
        assert_eq!(marked, want);
        // Every address the trie has bits for starts with a marked octet.
        for addr in ["10.210.2.5", "203.0.113.10", "231.1.1.1", "255.255.255.255"] {
            let first = usize::from(addr.parse::<Ipv4Addr>().unwrap().octets()[0]);
            assert_ne!(lookup(&e, addr), 0, "{addr}");
            assert_eq!(octets[first], 1, "{addr}");
        }
    }

    #[test]
    fn prefixes_are_networks() {
        assert_eq!(network(p("10.210.2.77", 24)), p("10.210.2.0", 24));
        assert_eq!(network(p("10.210.2.77", 0)), p("0.0.0.0", 0));
        assert!(contains(p("10.0.0.0", 8), p("10.210.2.0", 24)));
        assert!(!contains(p("10.210.2.0", 24), p("10.0.0.0", 8)));
        assert!(!contains(p("10.210.2.0", 24), p("10.210.3.1", 32)));
    }
}
