//! Routes and their parts, and the one validation of a route's own fields (and of the
//! labels and domains it is made of), shared by the config file, the control API, the state
//! file and the students' client.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{check::CheckRequest, pool::Pool};

/// The transport protocol of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// A route's protocol when its config, request or form names none.
    pub const DEFAULT: Protocol = Protocol::Tcp;

    /// `s` parsed, or [`Protocol::DEFAULT`] when absent.
    pub fn parse_or_default(s: Option<&str>) -> Result<Protocol, String> {
        s.map_or(Ok(Protocol::DEFAULT), str::parse)
    }

    /// IANA protocol number, as in the IPv4 header.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!(
                "{other:?} is not a protocol (expected \"tcp\" or \"udp\")"
            )),
        }
    }
}

/// An inclusive range of public ports that routes may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a range like \"30000-32767\""))?;
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&v| v != 0)
                .ok_or_else(|| format!("{p:?} is not a port number (1-65535)"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("range {s:?} is empty: {first} is above {last}"));
        }
        Ok(PortRange { first, last })
    }
}

/// One forwarding rule: `public_ipv4:port/protocol -> a pool of backends`, named
/// `<name>.<service>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Owner label, e.g. `alice`: the first label of `alice.ssh.<zone>`.
    pub name: String,
    /// Service label, e.g. `ssh`: `_ssh._tcp.alice.<zone>`.
    pub service: String,
    pub protocol: Protocol,
    pub backends: Pool,
    /// Public port on the gateway.
    pub port: u16,
    /// The PROXY protocol header the web routers send this backend before the client's
    /// bytes (config routes only; off unless set, since a backend that does not expect it
    /// would take it for a broken request).
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// Which PROXY protocol header (haproxy's spec) a backend gets first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text line `PROXY TCP4 ...`.
    V1,
    /// The binary header.
    V2,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }

    pub fn parse(text: &str) -> Result<ProxyProtocol, String> {
        match text {
            "v1" => Ok(ProxyProtocol::V1),
            "v2" => Ok(ProxyProtocol::V2),
            other => Err(format!("{other:?} is not \"v1\" or \"v2\"")),
        }
    }
}

impl Route {
    /// What identifies a route: at most one per (name, service, protocol).
    pub fn key(&self) -> RouteKey {
        RouteKey {
            name: self.name.clone(),
            service: self.service.clone(),
            protocol: self.protocol,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub name: String,
    pub service: String,
    pub protocol: Protocol,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.name, self.service, self.protocol)
    }
}

/// Longest service label: `_SERVICE` must still be a label (63 characters) in the SRV name.
pub const MAX_SERVICE_LEN: usize = 62;

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `gateway.public_ipv4` or `route[2].port` (routes count from 1,
    /// in file order).
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

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
    /// A pool: each `ADDR:PORT[ weight=N][ drained]` (`lb_model::Member`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// `"v1"` or `"v2"`: the web routers send a PROXY protocol header first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// How the pool's members are health-checked; left out: the protocol's default
    /// (`check::default_for`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckRequest>,
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
    let check = r
        .check
        .as_ref()
        .map(|c| c.check(&|f| field(&format!("check.{f}"))))
        .transpose();
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
    let check = check.map_err(|errors| problems.extend(errors));
    match (
        protocol,
        backends,
        name_ok,
        service_ok,
        port_ok,
        proxy_protocol,
        check,
    ) {
        (Some(protocol), Some(backends), true, true, true, Ok(proxy_protocol), Ok(check)) => {
            Ok(RouteDraft {
                name: r.name.clone(),
                service: r.service.clone(),
                protocol,
                backends: backends.with_check(check),
                port: r.port,
                proxy_protocol,
            })
        }
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
/// the backend rule (the machine's part is lb-userspace's `config::check_backend`).
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

/// Parses a duration like `14d`, `36h`, `90m`, `45s`, `2w` or a sum such as `1d12h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => {
                return Err(format!(
                    "{text:?} is not a duration like \"14d\", \"36h\" or \"1d12h\" (units s, m, h, d, w)"
                ))
            }
        };
        let n: u64 = digits.parse().map_err(|_| {
            format!("{text:?} is not a duration like \"14d\": a number must come before {c:?}")
        })?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(format!(
            "{text:?} is not a duration like \"14d\", \"36h\" or \"1d12h\": every number needs a unit (s, m, h, d, w)"
        ));
    }
    if total == 0 {
        return Err(format!(
            "{text:?} is zero; remove the key to turn reclaiming off"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Renders a duration the way [`parse_duration`] reads it (largest units first).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= n {
            out.push_str(&format!("{}{unit}", secs / n));
            secs %= n;
        }
    }
    out
}

#[cfg(test)]
mod tests;
