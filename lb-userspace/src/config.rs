//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing is two-staged: serde reads the raw shape (unknown keys are errors, so a typo
//! never silently does nothing), then [`validate`] checks every field and reports *all*
//! problems at once, each naming its field, e.g. `route[2].port`. Interface existence is a
//! separate step ([`Config::check_machine`]) because it depends on the machine.
//!
//! Here: the validated types and the errors. `raw.rs` is the file's serde shape,
//! `validate.rs` turns it into a [`Config`], `route.rs` holds the checks of a route's own
//! fields that every source of routes shares, and `machine.rs` the checks against this
//! machine.

mod cluster;
// The whole module is the gateway's (it reads this machine's interfaces and sysctls).
#[cfg(feature = "gateway")]
mod machine;
mod pool;
mod raw;
mod route;
mod validate;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

pub use cluster::{Cluster, ClusterTls};
#[cfg(feature = "gateway")]
pub use machine::Interface;
pub use pool::{Member, Pool, MAX_BACKENDS, MAX_WEIGHT};
pub use route::{
    backend_field, backend_fields, check_backend, check_domain, check_label, check_pool,
    check_route, not_a_host, split_backends, OwnAddresses, RouteDraft, RouteRequest, NOT_A_HOST,
};

use raw::RawConfig;
use validate::validate;

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

    fn parse(text: &str) -> Result<ProxyProtocol, String> {
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub public_interface: String,
    pub private_interfaces: Vec<String>,
    pub public_ipv4: Ipv4Addr,
    pub port_range: PortRange,
    /// Runtime routes idle for this long are released; `None`: never.
    pub reclaim_after: Option<Duration>,
    /// A released or reclaimed port is not handed out again for this long, so that stale
    /// DNS caches and saved commands never reach the next owner's instance.
    pub port_cooldown: Duration,
}

/// `[portal]`: the students' HTTPS API (and, later, their web console).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain and private key; without them srvgate makes a self-signed
    /// certificate once and keeps it in the state directory.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// RFC 2181 section 8: a TTL is at most 2^31 - 1 (resolvers read larger ones as 0).
pub const MAX_TTL: u32 = i32::MAX as u32;

/// Longest service label: `_SERVICE` must still be a label (63 characters) in the SRV name.
pub const MAX_SERVICE_LEN: usize = 62;

/// The longest names a route gets in the zone, `_SERVICE._tcp.NAME.` with the longest
/// labels, take this many characters before the zone.
const LONGEST_ROUTE_PREFIX: usize = 1 + MAX_SERVICE_LEN + 6 + 63 + 1;

/// Longest `dns.zone` (characters, without the final dot) that leaves every route's names
/// within the 253 characters of a domain name, so no valid route is ever left out of DNS.
pub const MAX_ZONE_LEN: usize = 253 - LONGEST_ROUTE_PREFIX;

/// The gateway's own sshd: a route there would take the admins' way in.
pub const SSH_PORT: u16 = 22;

/// The default `gateway.port_cooldown`.
pub const DEFAULT_PORT_COOLDOWN: Duration = Duration::from_secs(86400);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    /// Zone apex without the trailing dot, lowercase, e.g. `lab.example`.
    pub zone: String,
    pub listen: Vec<SocketAddr>,
    /// Label of the gateway's A record: `<gateway_name>.<zone>`.
    pub gateway_name: String,
    pub ttl: u32,
    /// `[dns.nameservers]`: the apex's NS names (`<label>.<zone>`, each with its A record),
    /// sorted by label, e.g. every gateway of a cluster. Empty: the NS is `gateway_name`.
    pub nameservers: Vec<(String, Ipv4Addr)>,
}

/// At most this many `[dns.nameservers]`: an NS answer with all its glue stays small (a
/// client without EDNS gets it truncated and retries over TCP), and a zone served by one
/// table needs no more name servers than it has gateways.
pub const MAX_NAMESERVERS: usize = 8;

/// `[http]`: HTTP routing by Host header on the gateway, `NAME.<service>.<dns.zone>` to the
/// backend of route NAME/<service>/tcp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http {
    pub listen: Vec<SocketAddr>,
    /// The service label of the routes reachable this way, `http` unless set.
    pub service: String,
    pub limits: WebLimits,
    /// Whether requests reach the backend with `X-Forwarded-For` and `Forwarded` naming the
    /// client (any the client sent are dropped: the gateway is the edge).
    pub forwarded_for: bool,
}

/// `[https]`: TLS passed through untouched by SNI, `NAME.<service>.<dns.zone>` (or the
/// `[http]` name `NAME.<http.service>.<dns.zone>`) to the backend of route NAME/<service>/tcp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Https {
    pub listen: Vec<SocketAddr>,
    /// The service label of the routes reachable this way, `https` unless set.
    pub service: String,
    pub limits: WebLimits,
}

/// How far the web routers trust their clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebLimits {
    /// Connections served at once by one router (each holds two descriptors).
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_client: usize,
    /// Time a client has for a request head (HTTP) or its ClientHello (HTTPS).
    pub header_timeout: Duration,
    /// Time a connection may sit idle between requests, and in a relay.
    pub idle_timeout: Duration,
}

impl Default for WebLimits {
    fn default() -> Self {
        WebLimits {
            max_connections: 1024,
            max_connections_per_client: 128,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
        }
    }
}

/// A `[[user]]` of the config file: an account whose fields the file owns (its token is
/// still issued at runtime, by `srvgate user token NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigUser {
    pub name: String,
    pub backends: Vec<crate::table::users::BackendRule>,
    pub max_routes: u32,
    pub admin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub gateway: Gateway,
    pub users: Vec<ConfigUser>,
    pub dns: Option<Dns>,
    pub http: Option<Http>,
    pub https: Option<Https>,
    pub portal: Option<Portal>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// `[cluster]`: the table shared through etcd; without it, the local state directory.
    pub cluster: Option<Cluster>,
    pub routes: Vec<Route>,
}

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

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {error}", file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    #[error("{}: invalid configuration:\n{}", file.display(), list(problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<FieldError>,
    },
}

fn list(problems: &[FieldError]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
impl Config {
    /// Reads and validates `file`. Does not look at the machine (see `check_machine`).
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read {
            file: file.to_path_buf(),
            error,
        })?;
        Config::parse(file, &text)
    }

    /// Validates `text` as if read from `file` (which only names the source in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate(raw).map_err(|problems| ConfigError::Invalid {
            file: file.to_path_buf(),
            problems,
        })
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
