//! The shared table's layout in etcd, pure: key names, values, and what a key or a watch
//! event means. Everything lives under one prefix:
//!
//! - `routes/<name>/<service>/<protocol>`: a runtime route (the state file's JSON for one
//!   route, without last-seen: activity stays with the gateway that sees it);
//! - `ports/<port>/<protocol>` and `backends/<protocol>/<address:port>`: the route's key as
//!   text. They exist so that one transaction can demand that neither the route, nor its
//!   public port, nor its backend is taken (`create_revision == 0` on all three): the
//!   uniqueness `RouteTable` checks locally, made atomic across gateways;
//! - `accounts`: the accounts and port cool-downs (the `accounts.json` format), replaced as
//!   a whole with `mod_revision` as the guard;
//! - `gateways/<gateway_id>`: each running gateway's announcement, on a lease that ends
//!   when it stops renewing it: the cluster's members;
//! - `changed`: written (empty) by every transaction that changes the table, so its
//!   `mod_revision` is the revision of the table's last change, deletions included: the
//!   SOA serial every gateway agrees on;
//! - `seen/<name>/<service>/<protocol>/<gateway_id>`: when that gateway last saw a packet
//!   of the route (Unix seconds), published coarsely by the gateway itself and deleted with
//!   the route (the route's own prefix, so the removal need not know the gateways). No
//!   lease: a gateway that died keeps counting with the last time it published, which
//!   stops mattering once `reclaim_after` has passed since;
//! - `holds/<name>`: the stamp of user `name`'s claims, put by every student's claim
//!   (empty) in the claim's transaction, which demands the `mod_revision` it read together
//!   with the count of `routes/<name>/`: two claims of one user through two gateways at
//!   once cannot both pass the quota, as the second finds the stamp moved and counts
//!   again. Removing the account puts [`REMOVED`] there, demanding the stamp unmoved since
//!   it counted none of the user's routes, so a claim racing the removal fails on one
//!   side; an account added again under that name clears it (a new `mod_revision`, so a
//!   claim read before the removal still fails);
//! - `leader`: the `gateway_id` of the one gateway that reclaims idle routes, put on its
//!   announcement's lease by a transaction that demands the key be absent: when that
//!   gateway stops renewing the lease, the key goes and another one takes it; the leader
//!   is also the one whose health checks decide;
//! - `health/<name>/<service>/<protocol>/<address:port>`: [`DOWN`] while the leader's
//!   checks find that member of the route down (no key: up), put and deleted only by the
//!   leader (fenced by `leader`) and only while the route exists, without a lease so that
//!   a new leader, and a gateway that starts, begin from the last verdicts written; removed
//!   with the route (its own prefix).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::table::state::{self, StoredRoute};
use lb_model::{check_label, Protocol, Route, RouteKey};

/// The prefix every key of the shared table starts with.
pub const PREFIX: &str = "/srvgate/";
/// A route's value is a few hundred bytes; anything much larger is not ours.
pub const MAX_ROUTE_VALUE: usize = 4096;
/// The accounts document: ~200 bytes a user; this allows tens of thousands.
pub const MAX_ACCOUNTS_VALUE: usize = 8 << 20;

pub fn route_key(k: &RouteKey) -> String {
    format!("{PREFIX}routes/{}/{}/{}", k.name, k.service, k.protocol)
}

pub fn port_key(port: u16, protocol: Protocol) -> String {
    format!("{PREFIX}ports/{port}/{protocol}")
}

/// The guard keys of a route's backends, one per member of its pool (a backend belongs to
/// one route across the cluster, as in one table).
pub fn backend_keys(r: &Route) -> Vec<String> {
    r.backends
        .addrs()
        .map(|b| format!("{PREFIX}backends/{}/{b}", r.protocol))
        .collect()
}

/// A removed account's `holds/<name>` value.
pub const REMOVED: &str = "removed";

/// The stamp of user `name`'s claims (see the module docs).
pub fn holds_key(name: &str) -> String {
    format!("{PREFIX}holds/{name}")
}

/// The prefix of every runtime route named `name` (the `/` keeps `ann` from counting
/// `anna`'s).
pub fn routes_of(name: &str) -> String {
    format!("{PREFIX}routes/{name}/")
}

pub fn accounts_key() -> String {
    format!("{PREFIX}accounts")
}

pub fn changed_key() -> String {
    format!("{PREFIX}changed")
}

pub fn gateway_key(id: &str) -> String {
    format!("{PREFIX}gateways/{id}")
}

pub fn leader_key() -> String {
    format!("{PREFIX}leader")
}

/// The prefix of every gateway's last-seen time of route `k`.
pub fn seen_prefix(k: &RouteKey) -> String {
    format!("{PREFIX}seen/{}/{}/{}/", k.name, k.service, k.protocol)
}

/// Gateway `id`'s last-seen time of route `k`.
pub fn seen_key(k: &RouteKey, id: &str) -> String {
    format!("{}{id}", seen_prefix(k))
}

/// The prefix of route `k`'s health verdicts.
pub fn health_prefix(k: &RouteKey) -> String {
    format!("{PREFIX}health/{}/{}/{}/", k.name, k.service, k.protocol)
}

/// The leading gateway's verdict that member `backend` of route `k` is down (the key
/// exists, value [`DOWN`]); no key: up. Written only by the leader (fenced by the
/// `leader` key), kept across leaders (no lease), removed with the route.
pub fn health_key(k: &RouteKey, backend: SocketAddrV4) -> String {
    format!("{}{backend}", health_prefix(k))
}

/// A health key's value.
pub const DOWN: &str = "down";

/// A last-seen value: Unix seconds.
pub fn encode_seen(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string()
}

/// A last-seen value; `None` unless it is plain Unix seconds (at most 20 digits).
pub fn decode_seen(value: &[u8]) -> Option<SystemTime> {
    if value.is_empty() || value.len() > 20 {
        return None;
    }
    let secs: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
    state::from_unix(secs).ok()
}

/// The end of the prefix's range: every key under it sorts before this.
pub fn prefix_end() -> String {
    // '/' + 1 == '0'
    format!("{}0", &PREFIX[..PREFIX.len() - 1])
}

/// What a key under [`PREFIX`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Route(RouteKey),
    Port(u16, Protocol),
    Backend,
    Accounts,
    Changed,
    Gateway(String),
    Leader,
    /// A user's claims' stamp.
    Holds,
    /// A gateway's last-seen time of a route: the route, the gateway.
    Seen(RouteKey, String),
    /// The leader's verdict on a member of a route: down while the key exists.
    Health(RouteKey, SocketAddrV4),
    /// Not a key this version writes (or not UTF-8): ignored, and said so once per key.
    Unknown,
}

pub fn classify(key: &[u8]) -> Kind {
    let Some(rest) = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(PREFIX))
    else {
        return Kind::Unknown;
    };
    match rest {
        "accounts" => return Kind::Accounts,
        "changed" => return Kind::Changed,
        "leader" => return Kind::Leader,
        _ => {}
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["routes", name, service, protocol] => match protocol.parse() {
            Ok(protocol) if !name.is_empty() && !service.is_empty() => Kind::Route(RouteKey {
                name: name.to_string(),
                service: service.to_string(),
                protocol,
            }),
            _ => Kind::Unknown,
        },
        ["seen", name, service, protocol, id] => match protocol.parse() {
            Ok(protocol) if !name.is_empty() && !service.is_empty() && check_label(id).is_ok() => {
                Kind::Seen(
                    RouteKey {
                        name: name.to_string(),
                        service: service.to_string(),
                        protocol,
                    },
                    id.to_string(),
                )
            }
            _ => Kind::Unknown,
        },
        ["health", name, service, protocol, backend] => {
            match (protocol.parse(), backend.parse::<SocketAddrV4>()) {
                (Ok(protocol), Ok(b)) if !name.is_empty() && !service.is_empty() => Kind::Health(
                    RouteKey {
                        name: name.to_string(),
                        service: service.to_string(),
                        protocol,
                    },
                    b,
                ),
                _ => Kind::Unknown,
            }
        }
        ["ports", port, protocol] => match (port.parse(), protocol.parse()) {
            (Ok(p), Ok(proto)) => Kind::Port(p, proto),
            _ => Kind::Unknown,
        },
        ["backends", _, _] => Kind::Backend,
        ["holds", name] if check_label(name).is_ok() => Kind::Holds,
        ["gateways", id] if check_label(id).is_ok() => Kind::Gateway(id.to_string()),
        _ => Kind::Unknown,
    }
}

/// A route's value.
pub fn encode_route(r: &StoredRoute) -> String {
    state::encode_route(&StoredRoute {
        last_seen: None,
        ..r.clone()
    })
}

/// Decodes and validates routes read from etcd (`(key, value)` pairs), all together: the
/// same validation as a state file's (`state::decode_routes`), plus each value's key must be
/// the key it is stored under. `source` names the store in errors.
pub fn decode_routes(
    source: &str,
    pairs: &[(Vec<u8>, Vec<u8>)],
    public_ipv4: Ipv4Addr,
) -> Result<Vec<StoredRoute>, String> {
    let mut values = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let shown = String::from_utf8_lossy(key);
        let Kind::Route(k) = classify(key) else {
            return Err(format!("{shown}: not a route key"));
        };
        if value.len() > MAX_ROUTE_VALUE {
            return Err(format!(
                "{shown}: {} bytes, more than a route's {MAX_ROUTE_VALUE}",
                value.len()
            ));
        }
        values.push((shown.into_owned(), k, value.as_slice()));
    }
    let routes =
        state::decode_routes(Path::new(source), &values, public_ipv4).map_err(|e| e.to_string())?;
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stored(name: &str, port: u16, backend: &str) -> StoredRoute {
        crate::testing::stored_route(name, port, backend, Some(1_700_000_100))
    }

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

    #[test]
    fn keys_classify_back() {
        let s = stored("alice", 30001, "10.0.0.5:22");
        let k = s.route.key();
        assert_eq!(classify(route_key(&k).as_bytes()), Kind::Route(k.clone()));
        assert_eq!(
            classify(port_key(30001, Protocol::Udp).as_bytes()),
            Kind::Port(30001, Protocol::Udp)
        );
        for k in backend_keys(&s.route) {
            assert_eq!(classify(k.as_bytes()), Kind::Backend);
        }
        assert_eq!(classify(accounts_key().as_bytes()), Kind::Accounts);
        assert_eq!(classify(changed_key().as_bytes()), Kind::Changed);
        assert_eq!(
            classify(gateway_key("gw1").as_bytes()),
            Kind::Gateway("gw1".into())
        );
        assert_eq!(classify(leader_key().as_bytes()), Kind::Leader);
        assert_eq!(classify(holds_key("alice").as_bytes()), Kind::Holds);
        let b: std::net::SocketAddrV4 = "10.0.0.5:22".parse().unwrap();
        assert_eq!(
            classify(health_key(&k, b).as_bytes()),
            Kind::Health(k.clone(), b)
        );
        assert!(health_key(&k, b).starts_with(&health_prefix(&k)));
        assert_eq!(
            classify(format!("{}10.0.0.5", health_prefix(&k)).as_bytes()),
            Kind::Unknown,
            "a member is address:port"
        );
        assert!(route_key(&k).starts_with(&routes_of("alice")));
        assert!(!route_key(&k).starts_with(&routes_of("alic")));
        assert!(holds_key("alice").as_str() < prefix_end().as_str());
        assert_eq!(
            classify(seen_key(&s.route.key(), "gw2").as_bytes()),
            Kind::Seen(s.route.key(), "gw2".into())
        );
        assert!(seen_key(&s.route.key(), "gw2").starts_with(&seen_prefix(&s.route.key())));
        assert!(seen_key(&s.route.key(), "gw2").as_str() < prefix_end().as_str());
        for bad in [
            "/srvgate/routes/a/b",
            "/srvgate/routes/a/b/sctp",
            "/other/accounts",
            "/srvgate/ports/x/tcp",
            "/srvgate/seen/a/b/tcp/not a label",
            "/srvgate/seen/a/b/tcp",
        ] {
            assert_eq!(classify(bad.as_bytes()), Kind::Unknown, "{bad}");
        }
        assert_eq!(classify(&[0xff, 0xfe]), Kind::Unknown);
        assert!(route_key(&s.route.key()).as_str() < prefix_end().as_str());
        assert!(accounts_key().as_str() < prefix_end().as_str());
        assert!(PREFIX < prefix_end().as_str());
    }

    #[test]
    fn seen_values_are_plain_unix_seconds() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_123);
        assert_eq!(encode_seen(t), "1700000123");
        assert_eq!(decode_seen(b"1700000123"), Some(t));
        for bad in [
            &b""[..],
            b"-1",
            b"1.5",
            b" 1",
            b"123456789012345678901",
            &[0xff],
        ] {
            assert_eq!(decode_seen(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn routes_round_trip_without_last_seen() {
        let a = stored("alice", 30001, "10.0.0.5:22");
        let b = stored("bob", 30002, "10.0.0.6:22");
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = [&a, &b]
            .iter()
            .map(|s| {
                (
                    route_key(&s.route.key()).into_bytes(),
                    encode_route(s).into_bytes(),
                )
            })
            .collect();
        let got = decode_routes("etcd", &pairs, PUBLIC).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].route, a.route);
        assert_eq!(got[0].added, a.added);
        assert_eq!(got[0].last_seen, None);
        assert_eq!(got[1].route, b.route);
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let a = stored("alice", 30001, "10.0.0.5:22");
        let key = route_key(&a.route.key()).into_bytes();
        // Stored under another route's key.
        let other = route_key(&stored("bob", 1, "10.0.0.1:1").route.key()).into_bytes();
        let e =
            decode_routes("etcd", &[(other, encode_route(&a).into_bytes())], PUBLIC).unwrap_err();
        assert!(e.contains("/srvgate/routes/bob/ssh/tcp"), "{e}");
        let e = decode_routes("etcd", &[(key.clone(), b"{".to_vec())], PUBLIC).unwrap_err();
        assert!(e.contains("/srvgate/routes/alice/ssh/tcp"), "{e}");
        let e = decode_routes(
            "etcd",
            &[(key.clone(), vec![b' '; MAX_ROUTE_VALUE + 1])],
            PUBLIC,
        )
        .unwrap_err();
        assert!(e.contains("more than a route's"), "{e}");
        // Two routes on one port: the table's own uniqueness rules apply.
        let b = stored("bob", 30001, "10.0.0.6:22");
        let pairs = vec![
            (key, encode_route(&a).into_bytes()),
            (
                route_key(&b.route.key()).into_bytes(),
                encode_route(&b).into_bytes(),
            ),
        ];
        let e = decode_routes("etcd", &pairs, PUBLIC).unwrap_err();
        assert!(e.contains("port"), "{e}");
        // A backend on the public address is refused like in a state file.
        let c = stored("carol", 30003, "203.0.113.1:22");
        let e = decode_routes(
            "etcd",
            &[(
                route_key(&c.route.key()).into_bytes(),
                encode_route(&c).into_bytes(),
            )],
            PUBLIC,
        )
        .unwrap_err();
        assert!(e.contains("backend"), "{e}");
    }

    /// A value whose time is past any real date is refused naming the key, where the old
    /// decoder panicked (and with it every gateway that loaded or watched the table).
    #[test]
    fn a_huge_time_in_a_value_is_refused_naming_the_key() {
        let a = stored("alice", 30001, "10.0.0.5:22");
        let key = route_key(&a.route.key());
        let value = encode_route(&a).replace("1700000000", &u64::MAX.to_string());
        let e = decode_routes(
            "etcd",
            &[(key.clone().into_bytes(), value.into_bytes())],
            PUBLIC,
        )
        .unwrap_err();
        assert!(e.contains(&key) && e.contains("added_unix"), "{e}");
        assert_eq!(decode_seen(u64::MAX.to_string().as_bytes()), None);
    }

    #[test]
    fn a_pool_has_a_guard_key_per_member_and_its_value_decodes() {
        let mut s = stored("judge", 30002, "10.0.0.21:80");
        s.route.backends =
            lb_model::Pool::parse(&["10.0.0.21:80", "10.0.0.22:80 weight=2"]).unwrap();
        assert_eq!(
            backend_keys(&s.route),
            [
                format!("{PREFIX}backends/tcp/10.0.0.21:80"),
                format!("{PREFIX}backends/tcp/10.0.0.22:80"),
            ]
        );
        let back = decode_routes(
            "etcd",
            &[(
                route_key(&s.route.key()).into_bytes(),
                encode_route(&s).into_bytes(),
            )],
            PUBLIC,
        )
        .unwrap();
        assert_eq!(back[0].route, s.route);
        // A value written before pools (one `backend`) still decodes.
        let old = stored("alice", 30001, "10.0.0.5:22");
        let value = encode_route(&old);
        assert!(value.contains("\"backend\":\"10.0.0.5:22\""), "{value}");
        assert!(!value.contains("backends"), "{value}");
    }
}
