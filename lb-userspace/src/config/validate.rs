//! From the raw file to a [`Config`]: every field checked, every problem collected and
//! named (`route[2].port`), never only the first.
//!
//! The routes' uniqueness is checked by inserting them into a scratch `RouteTable` (the table
//! is the one owner of that rule), so a clash adds `see route[N]`; `listener_problems` keeps
//! the listeners off each other's ports and `port_range` off the gateway's own, and
//! `web_router` checks `[http]` and `[https]` alike. With `[cluster]`, `reclaim_after` must be
//! at least `MIN_CLUSTER_RECLAIM`.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, UNIX_EPOCH},
};

use super::raw::RawDns;
use super::*;
use crate::table::routes::{RouteError, RouteTable, Source};
use lb_model::{check_domain, check_label, check_route, parse_duration, RouteKey, RouteRequest};

/// The shortest `reclaim_after` with `[cluster]`: last-seen times travel between gateways
/// every 10 s (and the counters are read every 5 s), so the reclaiming gateway's view of
/// another's traffic is up to ~15 s old; a minute leaves room.
const MIN_CLUSTER_RECLAIM: Duration = Duration::from_secs(60);

/// Parses a list of `address:port` strings; each bad one is reported as `field[N]`.
pub(super) fn socket_addrs(
    list: &[String],
    field: &str,
    example: &str,
    bad: &mut impl FnMut(&str, String),
) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for (i, l) in list.iter().enumerate() {
        match l.parse::<SocketAddr>() {
            Ok(a) => addrs.push(a),
            Err(_) => bad(
                &format!("{field}[{}]", i + 1),
                format!("{l:?} is not an address:port like \"{example}\""),
            ),
        }
    }
    addrs
}

/// Two listeners that cannot both bind (one port, and one address or a wildcard), and
/// `port_range` holding a port the gateway needs itself (its listeners' and sshd's): XDP
/// would send those packets to a route's backend. Port 0 (the kernel picks) clashes with
/// nothing.
pub(super) fn listener_problems(
    listeners: &[(String, SocketAddr)],
    range: Option<PortRange>,
) -> Vec<FieldError> {
    let mut problems = Vec::new();
    for (i, (field, addr)) in listeners.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        let overlaps = |other: &SocketAddr| {
            other.port() == addr.port()
                && other.is_ipv4() == addr.is_ipv4()
                && (other.ip() == addr.ip()
                    || other.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        };
        if let Some((first, other)) = listeners[..i].iter().find(|(_, a)| overlaps(a)) {
            problems.push(FieldError {
                field: field.clone(),
                reason: format!(
                    "{addr} is also {first} ({other}); each listener needs its own port"
                ),
            });
        }
    }
    if let Some(range) = range {
        let own = std::iter::once(("the gateway's sshd".to_string(), SSH_PORT)).chain(
            listeners
                .iter()
                .filter(|(_, a)| a.port() != 0)
                .map(|(f, a)| (f.clone(), a.port())),
        );
        for (what, port) in own {
            if range.contains(port) {
                problems.push(FieldError {
                    field: "gateway.port_range".into(),
                    reason: format!(
                        "{range} contains port {port}, which {what} uses; a route there would take the gateway's own traffic"
                    ),
                });
            }
        }
    }
    problems
}

/// Every socket the daemon binds, named by field: the one list `listener_problems` and the
/// machine's checks go through, so a new listener cannot be left out of one.
pub(super) fn listeners(
    dns: Option<&Dns>,
    http: Option<&Http>,
    https: Option<&Https>,
    portal: Option<&Portal>,
    metrics: &[SocketAddr],
) -> Vec<(String, SocketAddr)> {
    let sections: [(&str, &[SocketAddr]); 5] = [
        ("dns.listen", dns.map_or(&[][..], |d| &d.listen)),
        ("http.listen", http.map_or(&[][..], |h| &h.listen)),
        ("https.listen", https.map_or(&[][..], |h| &h.listen)),
        ("portal.listen", portal.map_or(&[][..], |p| &p.listen)),
        ("metrics.listen", metrics),
    ];
    sections
        .into_iter()
        .flat_map(|(field, addrs)| {
            addrs
                .iter()
                .enumerate()
                .map(move |(i, a)| (format!("{field}[{}]", i + 1), *a))
        })
        .collect()
}

/// An address clients reach a host at: the public address, a name server's.
fn host_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    match text.parse::<Ipv4Addr>() {
        Ok(a) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
            Err(format!("{a} cannot be a host's address"))
        }
        Ok(a) if a.is_loopback() => Err(format!(
            "{a} is a loopback address; clients reach the gateway on the public interface's address"
        )),
        Ok(a) => Ok(a),
        Err(_) => Err(format!("{text:?} is not an IPv4 address")),
    }
}

/// `[dns.nameservers]`: labels that are DNS labels, host addresses, at most
/// [`MAX_NAMESERVERS`]; the gateway's own name may be listed only with the public address,
/// since its A record is that address.
fn nameservers(
    d: &RawDns,
    public_ipv4: Option<Ipv4Addr>,
    bad: &mut impl FnMut(&str, String),
) -> Vec<(String, Ipv4Addr)> {
    if d.nameservers.len() > MAX_NAMESERVERS {
        bad(
            "dns.nameservers",
            format!("lists {}; at most {MAX_NAMESERVERS}", d.nameservers.len()),
        );
    }
    let mut out = Vec::new();
    for (label, addr) in &d.nameservers {
        let field = format!("dns.nameservers.{label}");
        let label = label.to_ascii_lowercase();
        if let Err(e) = check_label(&label) {
            bad(&field, e);
            continue;
        }
        match host_ipv4(addr) {
            Ok(a) if label == d.gateway_name.to_ascii_lowercase() && Some(a) != public_ipv4 => bad(
                &field,
                format!(
                    "{label:?} is dns.gateway_name, whose A record is gateway.public_ipv4; list it with that address or name the name server apart"
                ),
            ),
            Ok(a) => out.push((label, a)),
            Err(e) => bad(&field, e),
        }
    }
    out
}

/// `[dns.secondaries]`: addresses (port 53 unless given), at most [`MAX_SECONDARIES`], a key
/// name that is a DNS name.
fn secondaries(s: &super::raw::RawSecondaries, bad: &mut impl FnMut(&str, String)) -> Secondaries {
    if s.addresses.is_empty() {
        bad(
            "dns.secondaries.addresses",
            "is empty; list the secondaries' addresses, e.g. [\"192.0.2.53\"]".into(),
        );
    }
    if s.addresses.len() > MAX_SECONDARIES {
        bad(
            "dns.secondaries.addresses",
            format!("lists {}; at most {MAX_SECONDARIES}", s.addresses.len()),
        );
    }
    let mut peers = Vec::new();
    for text in &s.addresses {
        let parsed = text.parse::<SocketAddr>().or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) if a.ip().is_unspecified() || a.port() == 0 => bad(
                "dns.secondaries.addresses",
                format!("{text:?} is not a server's address"),
            ),
            Ok(a) => peers.push(a),
            Err(_) => bad(
                "dns.secondaries.addresses",
                format!("{text:?} is not an address, e.g. \"192.0.2.53\" or \"192.0.2.53:5353\""),
            ),
        }
    }
    if let Err(e) = check_domain(&s.key_name.trim_end_matches('.').to_ascii_lowercase()) {
        bad("dns.secondaries.key_name", e);
    }
    Secondaries {
        peers,
        key_name: s.key_name.clone(),
        key_file: s.key_file.clone(),
    }
}

/// `[dns.rrl]`: on unless `enabled = false`; a rate of at least 1, a slip of at most 100.
fn rrl(r: Option<&super::raw::RawRrl>, bad: &mut impl FnMut(&str, String)) -> Option<Rrl> {
    let default = Rrl::default();
    let Some(r) = r else {
        return Some(default);
    };
    if !r.enabled {
        return None;
    }
    let rate = r.rate.unwrap_or(default.rate);
    let slip = r.slip.unwrap_or(default.slip);
    if rate == 0 {
        bad(
            "dns.rrl.rate",
            "is 0; answers per second per client network, e.g. 200 (enabled = false turns limiting off)".into(),
        );
    }
    if slip > 100 {
        bad(
            "dns.rrl.slip",
            format!("{slip} is above 100; 2 truncates every second answer over the rate"),
        );
    }
    Some(Rrl { rate, slip })
}

/// What [`validate`] found: the config, its problems, and what only deserves a warning
/// (a deprecated form).
pub(super) struct Validated {
    pub(super) config: Option<Config>,
    pub(super) problems: Vec<FieldError>,
    pub(super) warnings: Vec<FieldError>,
}

/// The config and every problem found. The config is there whenever the fields everything
/// else hangs on (`public_ipv4`, `port_range`) are valid, problems or not, with what was
/// wrong left out (a clashing route, a bad listener), so that `srvgate check` can still
/// hold it against the machine and report that too.
pub(super) fn validate(raw: RawConfig) -> Validated {
    let mut problems = Vec::new();
    let mut bad = |field: &str, reason: String| {
        problems.push(FieldError {
            field: field.to_string(),
            reason,
        })
    };
    let mut warnings = Vec::new();
    let mut deprecated = |field: &str, reason: String| {
        warnings.push(FieldError {
            field: field.to_string(),
            reason: format!("deprecated: {reason}"),
        })
    };

    let g = raw.gateway;
    if g.public_interface.trim().is_empty() {
        bad("gateway.public_interface", "is empty".into());
    }
    if g.private_interfaces.is_empty() {
        bad(
            "gateway.private_interfaces",
            format!(
                "is empty; list the interfaces toward the backends (on a one-armed gateway, whose one NIC carries both, list {:?} here too)",
                g.public_interface
            ),
        );
    }
    // The public interface may be a private leg too: a one-armed gateway (a VM, a club
    // machine on a campus LAN) whose one NIC carries the public address and the backends.
    for (i, name) in g.private_interfaces.iter().enumerate() {
        let field = format!("gateway.private_interfaces[{}]", i + 1);
        if g.private_interfaces[..i].contains(name) {
            bad(&field, format!("{name:?} is listed twice"));
        } else if name.trim().is_empty() {
            bad(&field, "is empty".into());
        }
    }
    let public_ipv4 = host_ipv4(&g.public_ipv4)
        .map_err(|e| bad("gateway.public_ipv4", e))
        .ok();
    let port_range = match g.port_range.parse::<PortRange>() {
        Ok(r) => Some(r),
        Err(e) => {
            bad("gateway.port_range", e);
            None
        }
    };
    let reclaim_after = match g.reclaim_after.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) if raw.cluster.is_some() && d < MIN_CLUSTER_RECLAIM => {
            // Last-seen times reach the reclaiming gateway a pass or two late.
            bad(
                "gateway.reclaim_after",
                format!("is shorter than {} with [cluster]: gateways share their last-seen times every 10 s, so a shorter one could reclaim a route in use through another gateway", lb_model::format_duration(MIN_CLUSTER_RECLAIM)),
            );
            None
        }
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            bad("gateway.reclaim_after", e);
            None
        }
    };
    let cluster = raw
        .cluster
        .and_then(|c| super::cluster::validate(c, &mut bad));

    let port_cooldown = match g.port_cooldown.as_deref().map(str::trim) {
        None => DEFAULT_PORT_COOLDOWN,
        Some("0" | "0s") => Duration::ZERO,
        Some(text) => match parse_duration(text) {
            Ok(d) => d,
            Err(e) => {
                bad("gateway.port_cooldown", e);
                DEFAULT_PORT_COOLDOWN
            }
        },
    };

    let portal = raw.portal.map(|p| {
        if p.listen.is_empty() {
            bad("portal.listen", "is empty; e.g. [\"10.0.0.1:8443\"]".into());
        }
        let listen = socket_addrs(&p.listen, "portal.listen", "0.0.0.0:8443", &mut bad);
        if p.cert.is_some() != p.key.is_some() {
            bad(
                "portal.cert",
                "cert and key go together: give both, or neither for a self-signed certificate"
                    .into(),
            );
        }
        Portal {
            listen,
            cert: p.cert,
            key: p.key,
            clients_dir: p
                .clients_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CLIENTS_DIR)),
        }
    });

    let dns = raw.dns.and_then(|d| {
        let zone = check_domain(&d.zone.to_ascii_lowercase())
            .and_then(|z| {
                if z.len() > MAX_ZONE_LEN {
                    Err(format!(
                        "is {} characters long; at most {MAX_ZONE_LEN}, so that every route's names (up to {LONGEST_ROUTE_PREFIX} more characters) fit in a domain name",
                        z.len()
                    ))
                } else {
                    Ok(z)
                }
            })
            .map_err(|e| bad("dns.zone", e))
            .ok();
        if d.listen.is_empty() {
            bad("dns.listen", "is empty; e.g. [\"0.0.0.0:53\"]".into());
        }
        let listen = socket_addrs(&d.listen, "dns.listen", "0.0.0.0:53", &mut bad);
        if let Err(e) = check_label(&d.gateway_name) {
            bad("dns.gateway_name", e);
        }
        let nameservers = nameservers(&d, public_ipv4, &mut bad);
        if d.ttl > MAX_TTL {
            bad(
                "dns.ttl",
                format!("{} is above {MAX_TTL}, the largest TTL (RFC 2181)", d.ttl),
            );
        }
        let secondaries = d.secondaries.as_ref().map(|s| secondaries(s, &mut bad));
        let rrl = rrl(d.rrl.as_ref(), &mut bad);
        Some(Dns {
            zone: zone?,
            listen,
            gateway_name: d.gateway_name,
            ttl: d.ttl,
            nameservers,
            secondaries,
            rrl,
        })
    });

    let has_dns = dns.is_some();
    let http = raw.http.map(|h| {
        let (listen, service, limits) = web_router(
            WebSection {
                name: "http",
                example: "0.0.0.0:80",
                listen: &h.listen,
                service: &h.service,
                counts: [h.max_connections, h.max_connections_per_client],
                times: [h.header_timeout.as_deref(), h.idle_timeout.as_deref()],
            },
            has_dns,
            &mut bad,
        );
        Http {
            listen,
            service,
            limits,
            forwarded_for: h.forwarded_for,
        }
    });

    let https = raw.https.map(|h| {
        let (listen, service, limits) = web_router(
            WebSection {
                name: "https",
                example: "0.0.0.0:443",
                listen: &h.listen,
                service: &h.service,
                counts: [h.max_connections, h.max_connections_per_client],
                times: [h.header_timeout.as_deref(), h.idle_timeout.as_deref()],
            },
            has_dns,
            &mut bad,
        );
        Https {
            listen,
            service,
            limits,
        }
    });

    if let (Some(h), Some(s)) = (&http, &https) {
        if h.service == s.service {
            bad(
                "https.service",
                format!(
                    "{:?} is also http.service; plain HTTP and TLS need routes of their own",
                    s.service
                ),
            );
        }
    }

    let metrics_listen = raw.metrics.map_or_else(Vec::new, |m| {
        let list = match m.listen {
            super::raw::OneOrMany::One(one) => {
                deprecated(
                    "metrics.listen",
                    format!("a single string is read as before; write it as an array, listen = [{one:?}]"),
                );
                vec![one]
            }
            super::raw::OneOrMany::Many(list) => list,
        };
        socket_addrs(&list, "metrics.listen", "127.0.0.1:9110", &mut bad)
    });

    // Every socket the daemon binds, so that two never share a port and routes stay off them.
    let listeners = listeners(
        dns.as_ref(),
        http.as_ref(),
        https.as_ref(),
        portal.as_ref(),
        &metrics_listen,
    );
    for problem in listener_problems(&listeners, port_range) {
        bad(&problem.field, problem.reason);
    }

    // The route table owns uniqueness (key, port, backend): the file's routes are checked
    // by going into a scratch one, in order, so a clash names the earlier route[N].
    let mut routes = Vec::new();
    let mut scratch = RouteTable::new();
    let mut numbered: HashMap<RouteKey, usize> = HashMap::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let n = i + 1;
        let field = |f: &str| format!("route[{n}].{f}");
        let request = RouteRequest {
            name: r.name,
            service: r.service,
            protocol: r.protocol,
            backend: r.backend,
            backends: r.backends,
            port: Some(r.port),
            proxy_protocol: r.proxy_protocol,
            check: r.check,
        };
        let route = match check_route(&request, public_ipv4, port_range, &field) {
            Ok(draft) => draft.with_port(r.port),
            Err(errors) => {
                for e in errors {
                    bad(&e.field, e.reason);
                }
                continue;
            }
        };
        match scratch.insert(route.clone(), Source::Config, UNIX_EPOCH, None) {
            Ok(_) => {
                numbered.insert(route.key(), n);
                routes.push(route);
            }
            Err(RouteError::Conflict(c)) => {
                let holder = numbered
                    .get(&c.holder)
                    .map_or(String::new(), |first| format!("; see route[{first}]"));
                bad(
                    &field(&c.error.field),
                    format!("{}{holder}", c.error.reason),
                );
            }
            Err(other) => bad(&field("name"), other.to_string()),
        }
    }

    let mut users: Vec<ConfigUser> = Vec::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        let field = |f: &str| format!("user[{}].{f}", i + 1);
        if let Err(e) = check_label(&u.name) {
            bad(&field("name"), e);
            continue;
        }
        if let Some(first) = users.iter().position(|x| x.name == u.name) {
            bad(
                &field("name"),
                format!("{} is already defined by user[{}]", u.name, first + 1),
            );
            continue;
        }
        let backends = match lb_model::parse_rules(&u.backends) {
            Ok(b) => b,
            Err(e) => {
                bad(&field("backends"), e);
                continue;
            }
        };
        let max_routes = u
            .max_routes
            .unwrap_or(crate::table::users::DEFAULT_MAX_ROUTES);
        if max_routes > crate::table::users::MAX_ROUTES_PER_USER {
            bad(
                &field("max_routes"),
                format!(
                    "{max_routes} is more than {} routes for one student",
                    crate::table::users::MAX_ROUTES_PER_USER
                ),
            );
            continue;
        }
        users.push(ConfigUser {
            name: u.name,
            backends,
            max_routes,
            admin: u.admin,
        });
    }

    let (Some(public_ipv4), Some(port_range)) = (public_ipv4, port_range) else {
        return Validated {
            config: None,
            problems,
            warnings,
        };
    };
    let config = Config {
        gateway: Gateway {
            public_interface: g.public_interface,
            private_interfaces: g.private_interfaces,
            public_ipv4,
            port_range,
            reclaim_after,
            port_cooldown,
        },
        users,
        dns,
        http,
        https,
        portal,
        metrics_listen,
        cluster,
        routes,
    };
    Validated {
        config: Some(config),
        problems,
        warnings,
    }
}

/// What `[http]` and `[https]` both say: where to listen, the service their routes are
/// named by, and the connection limits and timeouts.
pub(super) struct WebSection<'a> {
    pub(super) name: &'static str,
    /// An address for the error that finds `listen` empty.
    pub(super) example: &'static str,
    pub(super) listen: &'a [String],
    pub(super) service: &'a str,
    /// `[max_connections, max_connections_per_client]`.
    pub(super) counts: [Option<usize>; 2],
    /// `[header_timeout, idle_timeout]`.
    pub(super) times: [Option<&'a str>; 2],
}

/// One web router's section, checked the same way for `[http]` and `[https]`: it needs
/// `[dns]` (its names are NAME.SERVICE.<dns.zone>), a listen address and a service label;
/// each problem is named under the section.
pub(super) fn web_router(
    s: WebSection<'_>,
    has_dns: bool,
    bad: &mut impl FnMut(&str, String),
) -> (Vec<SocketAddr>, String, WebLimits) {
    let name = s.name;
    if !has_dns {
        bad(
            name,
            "needs a [dns] section: the names it routes are NAME.SERVICE.<dns.zone>".into(),
        );
    }
    if s.listen.is_empty() {
        bad(
            &format!("{name}.listen"),
            format!("is empty; e.g. [\"{}\"]", s.example),
        );
    }
    let listen = socket_addrs(s.listen, &format!("{name}.listen"), s.example, bad);
    let service = s.service.to_ascii_lowercase();
    if let Err(e) = check_label(&service) {
        bad(&format!("{name}.service"), e);
    }
    let limits = web_limits(name, s.counts, s.times, bad);
    (listen, service, limits)
}

/// A web router's `[max_connections, max_connections_per_client]` and `[header_timeout,
/// idle_timeout]`, defaults where absent; each problem named under `section`.
pub(super) fn web_limits(
    section: &str,
    counts: [Option<usize>; 2],
    times: [Option<&str>; 2],
    bad: &mut impl FnMut(&str, String),
) -> WebLimits {
    let mut limits = WebLimits::default();
    let [total, per_client] = counts;
    if let Some(n) = total {
        if n == 0 {
            bad(
                &format!("{section}.max_connections"),
                "must be at least 1".into(),
            );
        }
        limits.max_connections = n;
    }
    if let Some(n) = per_client {
        if n == 0 {
            bad(
                &format!("{section}.max_connections_per_client"),
                "must be at least 1".into(),
            );
        }
        limits.max_connections_per_client = n;
    }
    let [header, idle] = times;
    for (key, text, slot) in [
        ("header_timeout", header, &mut limits.header_timeout),
        ("idle_timeout", idle, &mut limits.idle_timeout),
    ] {
        let Some(text) = text else { continue };
        match parse_duration(text) {
            Ok(d) if d.is_zero() => bad(&format!("{section}.{key}"), "must be above 0s".into()),
            Ok(d) => *slot = d,
            Err(e) => bad(&format!("{section}.{key}"), e),
        }
    }
    limits
}
