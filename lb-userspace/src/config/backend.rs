//! [`check_backend`], the one rule that a backend is not the gateway itself (an address of
//! [`OwnAddresses`]: every interface's and the etcd endpoints') nor an address no host has
//! ([`NOT_A_HOST`]). It is applied to config routes by `check_machine`, to adds and claims, to
//! a loaded or shared table (a route that breaks it is left out, named), to the table when the
//! machine's addresses change (a runtime route that breaks it is removed), and by the web
//! routers before they connect.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_model::Pool;

use crate::machine::Interface;

/// The addresses that are the gateway itself: every IPv4 address its interfaces hold (all
/// of them, not only the legs') and the etcd endpoints of `[cluster]`, each with what holds
/// it, for the reason a refusal gives. What [`check_backend`] keeps backends off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnAddresses {
    holders: std::collections::BTreeMap<Ipv4Addr, String>,
}

impl OwnAddresses {
    /// `interfaces` as read from the machine, and `etcd` the `[cluster]` endpoint URLs
    /// (`http://host:port`; only an address is taken, a host name is not resolved here).
    pub fn new(interfaces: &[Interface], etcd: &[String]) -> OwnAddresses {
        let mut holders = std::collections::BTreeMap::new();
        for url in etcd {
            if let Some(ip) = endpoint_ipv4(url) {
                holders.insert(ip, format!("the etcd endpoint {url} of [cluster]"));
            }
        }
        // An interface's name wins: it says more than the endpoint.
        for i in interfaces {
            for ip in &i.ipv4 {
                holders.insert(
                    *ip,
                    format!("an address of this gateway's interface {:?}", i.name),
                );
            }
        }
        OwnAddresses { holders }
    }

    /// What holds `ip`, if it is the gateway's own.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&str> {
        self.holders.get(&ip).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}

/// The address of an etcd endpoint URL, when it is written as one.
fn endpoint_ipv4(url: &str) -> Option<Ipv4Addr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.parse().ok()
}

/// Addresses no host on either side of the gateway can honestly have, each with the reason:
/// the one list that both the backend rule ([`check_backend`]) and the public legs' source
/// guard (`kernel::dataplane::guard_entries`) refuse (RFC 1122 3.2.1.3, RFC 3927,
/// RFC 5771, RFC 1112).
pub const NOT_A_HOST: [(Ipv4Addr, u8, &str); 5] = [
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "is this machine itself (0.0.0.0/8, \"this network\")",
    ),
    (
        Ipv4Addr::new(127, 0, 0, 0),
        8,
        "is this machine itself (loopback, 127.0.0.0/8)",
    ),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "is link-local (169.254.0.0/16): it means this machine's own link (a cloud's metadata service), never a host behind or in front of the gateway",
    ),
    (
        Ipv4Addr::new(224, 0, 0, 0),
        4,
        "is a multicast address (224.0.0.0/4)",
    ),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "is reserved (240.0.0.0/4, or the broadcast address)",
    ),
];

/// Why `ip` is in [`NOT_A_HOST`], if it is.
pub fn not_a_host(ip: Ipv4Addr) -> Option<&'static str> {
    let ip = u32::from(ip);
    NOT_A_HOST
        .iter()
        .find(|(net, len, _)| (ip ^ u32::from(*net)) >> (32 - u32::from(*len)) == 0)
        .map(|(_, _, why)| *why)
}

/// The gateway's rule for a backend's address, apart from lb-model's [`check_route`]'s own
/// checks of the field: a backend is never the gateway itself nor an address no host has. Refused:
/// - an address `own` holds (any interface's, an etcd endpoint's): the rewritten packet,
///   or a web router's connection, would reach the gateway's own services (sshd, etcd)
///   and publish them;
/// - [`NOT_A_HOST`]: loopback and 0/8, link-local (the address of a cloud's metadata
///   service, and of whatever a link's own hosts answer on, never routed), multicast and
///   240/4 (some also refused by [`check_route`], repeated here so this one function holds
///   the whole rule for the web routers' connect).
///
/// [`check_route`]: lb_model::check_route
///
/// Applied to every backend named (config file, `route add`, claims, a loaded or shared
/// table) and before every web router connection. The reason names the rule.
pub fn check_backend(backend: SocketAddrV4, own: &OwnAddresses) -> Result<(), String> {
    let ip = *backend.ip();
    if let Some(holder) = own.holder(ip) {
        return Err(format!(
            "{backend} is {holder}: a backend that is the gateway itself would publish the gateway's own services"
        ));
    }
    match not_a_host(ip) {
        Some(why) => Err(format!("{backend} {why}")),
        None => Ok(()),
    }
}

/// [`check_backend`] for every member of a pool: the first that breaks the rule, named.
pub fn check_pool(pool: &Pool, own: &OwnAddresses) -> Result<(), String> {
    pool.addrs().try_for_each(|b| check_backend(b, own))
}
