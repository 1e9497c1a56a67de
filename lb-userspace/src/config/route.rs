//! The one validation of a route's own fields (and of the labels and domains it is made
//! of), shared by the config file, the control API and the state file.
//!
//! Also [`check_backend`], the one rule that a backend is not the gateway itself (an address of
//! [`OwnAddresses`]: every interface's and the etcd endpoints') nor an address no host has
//! ([`NOT_A_HOST`]). It is applied to config routes by `check_machine`, to adds and claims, to
//! a loaded or shared table (a route that breaks it is left out, named), to the table when the
//! machine's addresses change (a runtime route that breaks it is removed), and by the web
//! routers before they connect.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use super::*;

/// Checks one DNS label: 1-63 characters of `a-z`, `0-9` and `-`, not starting or ending
/// with `-`. Uppercase is refused rather than folded so two routes can't differ by case only.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("is empty; a DNS label needs 1 to 63 characters".into());
    }
    if label.len() > 63 {
        return Err(format!(
            "{label:?} is {} characters long; a DNS label has at most 63",
            label.len()
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{label:?} contains {c:?}; a DNS label here uses only a-z, 0-9 and '-'"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("{label:?} starts or ends with '-'"));
    }
    Ok(())
}

/// Checks a domain name (the zone): labels as in [`check_label`], at most 253 characters.
pub fn check_domain(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    for label in name.split('.') {
        check_label(label).map_err(|e| format!("label {e}"))?;
    }
    Ok(name.to_string())
}

/// A route as someone wrote it (a `[[route]]` of the config file, a `srvgate route add`, an
/// entry of the state file), before validation. `port: None` asks for one from the pool.
/// It is also the body of the control API's `POST /v1/routes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    pub name: String,
    pub service: String,
    /// `"tcp"` (the default) or `"udp"`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// One backend, `ADDR:PORT`; or, instead, a pool in `backends`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// A pool: each `ADDR:PORT[ weight=N][ drained]` (`config::Member`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// `"v1"` or `"v2"`: the web routers send a PROXY protocol header first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
}

/// A route whose fields are valid on their own; its port may still have to be allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDraft {
    pub name: String,
    pub service: String,
    pub protocol: Protocol,
    pub backends: Pool,
    pub port: Option<u16>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl RouteDraft {
    /// The route with its public port.
    pub fn with_port(self, port: u16) -> Route {
        Route {
            name: self.name,
            service: self.service,
            protocol: self.protocol,
            backends: self.backends,
            port,
            proxy_protocol: self.proxy_protocol,
        }
    }

    pub fn key(&self) -> RouteKey {
        RouteKey {
            name: self.name.clone(),
            service: self.service.clone(),
            protocol: self.protocol,
        }
    }
}

/// Checks one route's own fields, the same way for every source: the config file, the control
/// API and the state file. `field` turns a field name into its path in the caller's terms
/// (`route[2].port` in the file, plain `port` in the API). `public_ipv4` and `range`, when
/// known, are checked against too. Uniqueness among routes is the caller's business, as it
/// depends on what else exists.
pub fn check_route(
    r: &RouteRequest,
    public_ipv4: Option<Ipv4Addr>,
    range: Option<PortRange>,
    field: &dyn Fn(&str) -> String,
) -> Result<RouteDraft, Vec<FieldError>> {
    let mut problems = Vec::new();
    let mut bad = |f: &str, reason: String| {
        problems.push(FieldError {
            field: field(f),
            reason,
        })
    };
    let name_ok = check_label(&r.name).map_err(|e| bad("name", e)).is_ok();
    let service_ok = check_label(&r.service)
        .and_then(|()| {
            if r.service.len() > MAX_SERVICE_LEN {
                Err(format!(
                    "{:?} is {} characters long; a service has at most {MAX_SERVICE_LEN}, since _{} must be a DNS label",
                    r.service,
                    r.service.len(),
                    r.service
                ))
            } else {
                Ok(())
            }
        })
        .map_err(|e| bad("service", e))
        .is_ok();
    let protocol = match Protocol::parse_or_default(r.protocol.as_deref()) {
        Ok(p) => Some(p),
        Err(e) => {
            bad("protocol", e);
            None
        }
    };
    let backends = match pool_of(r, public_ipv4) {
        Ok(p) => Some(p),
        Err((f, e)) => {
            bad(&f, e);
            None
        }
    };
    let proxy_protocol = match r.proxy_protocol.as_deref().map(ProxyProtocol::parse) {
        None => Ok(None),
        Some(Ok(p)) => Ok(Some(p)),
        Some(Err(e)) => {
            bad("proxy_protocol", e);
            Err(())
        }
    };
    let mut port_ok = true;
    if let (Some(range), Some(port)) = (range, r.port) {
        if !range.contains(port) {
            bad(
                "port",
                format!("{port} is outside gateway.port_range {range}"),
            );
            port_ok = false;
        }
    }
    match (
        protocol,
        backends,
        name_ok,
        service_ok,
        port_ok,
        proxy_protocol,
    ) {
        (Some(protocol), Some(backends), true, true, true, Ok(proxy_protocol)) => Ok(RouteDraft {
            name: r.name.clone(),
            service: r.service.clone(),
            protocol,
            backends,
            port: r.port,
            proxy_protocol,
        }),
        _ => Err(problems),
    }
}

/// A request's `backend` and `backends` fields for the members `texts` someone typed
/// (repeated `--backend`, a form's comma-separated list): one goes in `backend`, as every
/// srvgate before pools reads it; several make `backends`.
pub fn backend_fields(mut texts: Vec<String>) -> (String, Vec<String>) {
    if texts.len() == 1 {
        (texts.pop().unwrap_or_default(), Vec::new())
    } else {
        (String::new(), texts)
    }
}

/// The members a form's field lists, comma-separated.
pub fn split_backends(field: &str) -> Vec<String> {
    field
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The request's pool, from `backend` or `backends` (one of them, not both), each member's
/// address checked as a backend field; the error is `(field, reason)`.
fn pool_of(r: &RouteRequest, public_ipv4: Option<Ipv4Addr>) -> Result<Pool, (String, String)> {
    let (texts, field) = match (r.backend.is_empty(), r.backends.is_empty()) {
        (false, true) => (std::slice::from_ref(&r.backend), "backend"),
        (true, false) => (&r.backends[..], "backends"),
        (false, false) => {
            return Err((
                "backends".into(),
                format!(
                    "route {}/{} names both backend and backends; give one backend or one pool",
                    r.name, r.service
                ),
            ))
        }
        (true, true) => {
            return Err((
                "backend".into(),
                "is missing; name a backend (\"10.0.0.11:22\") or a pool (backends)".into(),
            ))
        }
    };
    let pool = Pool::parse(texts).map_err(|e| (field.to_string(), e))?;
    for m in pool.members() {
        check_backend_field(m.addr, public_ipv4).map_err(|e| (field.to_string(), e))?;
    }
    Ok(pool)
}

/// What a backend address can never be, whatever the machine: [`check_route`]'s part of
/// the backend rule (the machine's part is [`check_backend`]).
fn check_backend_field(b: SocketAddrV4, public_ipv4: Option<Ipv4Addr>) -> Result<(), String> {
    if b.port() == 0 {
        return Err(format!("{b} has port 0"));
    }
    if b.ip().is_unspecified() || b.ip().is_broadcast() || b.ip().is_multicast() {
        return Err(format!("{} cannot be a host's address", b.ip()));
    }
    // XDP rewrites toward the backend and sends the packet out of a private leg; a
    // loopback or "this network" address leads nowhere, while the counters still rise.
    if b.ip().is_loopback() || b.ip().octets()[0] == 0 {
        return Err(format!(
            "{} is not reachable from another host (loopback or 0.0.0.0/8); a backend is a machine behind a private leg",
            b.ip()
        ));
    }
    if Some(*b.ip()) == public_ipv4 {
        return Err(format!(
            "{b} is the gateway's public address; a backend sits behind it"
        ));
    }
    Ok(())
}

/// The field a pool's error names: `backend` for a one-backend route as it was written,
/// else `backends`.
pub fn backend_field(pool: &Pool) -> &'static str {
    if pool.is_single() {
        "backend"
    } else {
        "backends"
    }
}

/// [`check_backend`] for every member of a pool: the first that breaks the rule, named.
pub fn check_pool(pool: &Pool, own: &OwnAddresses) -> Result<(), String> {
    pool.addrs().try_for_each(|b| check_backend(b, own))
}

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
    #[cfg(feature = "gateway")]
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
#[cfg(feature = "gateway")]
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

/// The gateway's rule for a backend's address, apart from [`check_route`]'s own checks of
/// the field: a backend is never the gateway itself nor an address no host has. Refused:
/// - an address `own` holds (any interface's, an etcd endpoint's): the rewritten packet,
///   or a web router's connection, would reach the gateway's own services (sshd, etcd)
///   and publish them;
/// - [`NOT_A_HOST`]: loopback and 0/8, link-local (the address of a cloud's metadata
///   service, and of whatever a link's own hosts answer on, never routed), multicast and
///   240/4 (some also refused by [`check_route`], repeated here so this one function holds
///   the whole rule for the web routers' connect).
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
