//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing is two-staged: serde reads the raw shape (unknown keys are errors, so a typo
//! never silently does nothing), then [`validate`] checks every field and reports *all*
//! problems at once, each naming its field, e.g. `route[2].port`. Interface existence is a
//! separate step ([`Config::check_machine`]) because it depends on the machine.

use std::{
    collections::HashMap,
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The transport protocol of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
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

/// One forwarding rule: `public_ipv4:port/protocol -> backend`, named `<name>.<service>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Owner label, e.g. `alice`: the first label of `alice.ssh.<zone>`.
    pub name: String,
    /// Service label, e.g. `ssh`: `_ssh._tcp.alice.<zone>`.
    pub service: String,
    pub protocol: Protocol,
    pub backend: SocketAddrV4,
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
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    dns: Option<RawDns>,
    http: Option<RawHttp>,
    https: Option<RawHttps>,
    portal: Option<RawPortal>,
    metrics: Option<RawMetrics>,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
    #[serde(default, rename = "user")]
    users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default)]
    backends: Vec<String>,
    #[serde(default)]
    max_routes: Option<u32>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    public_interface: String,
    private_interfaces: Vec<String>,
    public_ipv4: String,
    #[serde(default = "default_port_range")]
    port_range: String,
    #[serde(default)]
    reclaim_after: Option<String>,
    #[serde(default)]
    port_cooldown: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    #[serde(default = "default_portal_listen")]
    listen: Vec<String>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

fn default_portal_listen() -> Vec<String> {
    vec!["0.0.0.0:8443".to_string()]
}

fn default_port_range() -> String {
    "30000-32767".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    zone: String,
    #[serde(default = "default_dns_listen")]
    listen: Vec<String>,
    #[serde(default = "default_gateway_name")]
    gateway_name: String,
    #[serde(default = "default_ttl")]
    ttl: u32,
}

fn default_dns_listen() -> Vec<String> {
    vec!["0.0.0.0:53".to_string()]
}
fn default_gateway_name() -> String {
    "gw".to_string()
}
fn default_ttl() -> u32 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_http_listen")]
    listen: Vec<String>,
    #[serde(default = "default_http_service")]
    service: String,
    #[serde(default)]
    forwarded_for: bool,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_connections_per_client: Option<usize>,
    #[serde(default)]
    header_timeout: Option<String>,
    #[serde(default)]
    idle_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttps {
    #[serde(default = "default_https_listen")]
    listen: Vec<String>,
    #[serde(default = "default_https_service")]
    service: String,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_connections_per_client: Option<usize>,
    #[serde(default)]
    header_timeout: Option<String>,
    #[serde(default)]
    idle_timeout: Option<String>,
}

fn default_https_listen() -> Vec<String> {
    vec!["0.0.0.0:443".to_string()]
}
fn default_https_service() -> String {
    "https".to_string()
}

fn default_http_listen() -> Vec<String> {
    vec!["0.0.0.0:80".to_string()]
}
fn default_http_service() -> String {
    "http".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    service: String,
    #[serde(default)]
    protocol: Option<String>,
    backend: String,
    port: u16,
    #[serde(default)]
    proxy_protocol: Option<String>,
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

    /// Checks the config against this machine (this network namespace): every interface
    /// exists and is not a loopback, `public_ipv4` is not a private leg's own address, and
    /// `port_range` stays clear of the kernel's ephemeral ports. Errors name the field; the
    /// `Ok` value lists what is only worth a warning (`public_ipv4` on no interface yet, as
    /// on a standby gateway of a failover pair). `srvgate check`, `run` and SIGHUP all call
    /// this, after [`Config::load`].
    #[cfg(feature = "gateway")]
    pub fn check_machine(&self, file: &Path) -> Result<Vec<FieldError>, ConfigError> {
        let sysctl = |name: &str| {
            std::fs::read_to_string(Path::new("/proc/sys/net/ipv4").join(name)).unwrap_or_default()
        };
        let machine = Machine {
            interfaces: crate::kernel::sys::interfaces().unwrap_or_default(),
            ephemeral: parse_port_pair(&sysctl("ip_local_port_range")),
            reserved: parse_port_list(&sysctl("ip_local_reserved_ports")),
        };
        let (problems, warnings) = self.check_against(&machine);
        if problems.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                problems,
            })
        }
    }

    /// The pure part of [`Config::check_machine`]: (errors, warnings).
    #[cfg(feature = "gateway")]
    fn check_against(&self, m: &Machine) -> (Vec<FieldError>, Vec<FieldError>) {
        let (mut problems, mut warnings) = (Vec::new(), Vec::new());
        let g = &self.gateway;
        let named = std::iter::once(("gateway.public_interface".to_string(), &g.public_interface))
            .chain(
                g.private_interfaces
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("gateway.private_interfaces[{}]", i + 1), n)),
            );
        let mut on_public = false;
        for (field, name) in named {
            let Some(iface) = m.interfaces.iter().find(|i| &i.name == name) else {
                problems.push(FieldError {
                    field,
                    reason: format!("no network interface named {name:?} on this machine"),
                });
                continue;
            };
            if iface.loopback {
                problems.push(FieldError {
                    field,
                    reason: format!(
                        "{name:?} is the loopback interface; a leg is a real link toward clients or backends"
                    ),
                });
                continue;
            }
            let holds = iface.ipv4.contains(&g.public_ipv4);
            if name == &g.public_interface {
                on_public = holds;
            } else if holds {
                problems.push(FieldError {
                    field: "gateway.public_ipv4".into(),
                    reason: format!(
                        "{} is an address of the private leg {name:?}; public_ipv4 is the address clients reach on {:?}",
                        g.public_ipv4, g.public_interface
                    ),
                });
            }
        }
        let public_exists = m.interfaces.iter().any(|i| i.name == g.public_interface);
        if public_exists && !on_public {
            warnings.push(FieldError {
                field: "gateway.public_ipv4".into(),
                reason: format!(
                    "{} is not (yet) an address of {:?}: nothing reaches the routes until it is (fine for a standby gateway)",
                    g.public_ipv4, g.public_interface
                ),
            });
        }
        if let Some(ephemeral) = m.ephemeral {
            let clash = (g.port_range.first.max(ephemeral.first)
                ..=g.port_range.last.min(ephemeral.last))
                .filter(|p| !m.reserved.iter().any(|r| r.contains(*p)))
                .collect::<Vec<u16>>();
            if let (Some(first), Some(last)) = (clash.first(), clash.last()) {
                problems.push(FieldError {
                    field: "gateway.port_range".into(),
                    reason: format!(
                        "{} overlaps the kernel's ephemeral ports {ephemeral} (net.ipv4.ip_local_port_range) in {} ports ({first}-{last}): \
                         the gateway's own outgoing connections would get replies that XDP sends to a backend; \
                         narrow one of the two ranges, or reserve the ports (sysctl net.ipv4.ip_local_reserved_ports={})",
                        g.port_range,
                        clash.len(),
                        g.port_range
                    ),
                });
            }
        }
        (problems, warnings)
    }
}

/// What [`Config::check_machine`] reads from the machine, apart so the rules are testable.
#[cfg(feature = "gateway")]
#[derive(Clone, Debug, Default)]
struct Machine {
    interfaces: Vec<Interface>,
    /// `net.ipv4.ip_local_port_range`.
    ephemeral: Option<PortRange>,
    /// `net.ipv4.ip_local_reserved_ports`: never picked as ephemeral ports.
    reserved: Vec<PortRange>,
}

/// A network interface as [`Config::check_machine`] needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub loopback: bool,
    pub ipv4: Vec<Ipv4Addr>,
}

/// `ip_local_port_range`: two numbers separated by whitespace.
#[cfg(feature = "gateway")]
fn parse_port_pair(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    match (it.next()??, it.next()??) {
        (first, last) if first <= last => Some(PortRange { first, last }),
        _ => None,
    }
}

/// `ip_local_reserved_ports`: `30000-32767,40000`, possibly empty.
#[cfg(feature = "gateway")]
fn parse_port_list(text: &str) -> Vec<PortRange> {
    text.trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some(PortRange {
                    first: a.trim().parse().ok()?,
                    last: b.trim().parse().ok()?,
                }),
                None => part.parse().ok().map(|p| PortRange { first: p, last: p }),
            }
        })
        .collect()
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
    pub backend: String,
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
    pub backend: SocketAddrV4,
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
            backend: self.backend,
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
    let protocol = match r.protocol.as_deref().unwrap_or("tcp").parse::<Protocol>() {
        Ok(p) => Some(p),
        Err(e) => {
            bad("protocol", e);
            None
        }
    };
    let backend = match r.backend.parse::<SocketAddrV4>() {
        Ok(b) if b.port() == 0 => {
            bad("backend", format!("{b} has port 0"));
            None
        }
        Ok(b) if b.ip().is_unspecified() || b.ip().is_broadcast() || b.ip().is_multicast() => {
            bad("backend", format!("{} cannot be a host's address", b.ip()));
            None
        }
        // XDP rewrites toward the backend and sends the packet out of a private leg; a
        // loopback or "this network" address leads nowhere, while the counters still rise.
        Ok(b) if b.ip().is_loopback() || b.ip().octets()[0] == 0 => {
            bad(
                "backend",
                format!(
                    "{} is not reachable from another host (loopback or 0.0.0.0/8); a backend is a machine behind a private leg",
                    b.ip()
                ),
            );
            None
        }
        Ok(b) if Some(*b.ip()) == public_ipv4 => {
            bad(
                "backend",
                format!("{b} is the gateway's public address; a backend sits behind it"),
            );
            None
        }
        Ok(b) => Some(b),
        Err(_) => {
            bad(
                "backend",
                format!(
                    "{:?} is not an IPv4 address:port like \"10.0.0.11:22\"",
                    r.backend
                ),
            );
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
        backend,
        name_ok,
        service_ok,
        port_ok,
        proxy_protocol,
    ) {
        (Some(protocol), Some(backend), true, true, true, Ok(proxy_protocol)) => Ok(RouteDraft {
            name: r.name.clone(),
            service: r.service.clone(),
            protocol,
            backend,
            port: r.port,
            proxy_protocol,
        }),
        _ => Err(problems),
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

/// Parses a list of `address:port` strings; each bad one is reported as `field[N]`.
fn socket_addrs(
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
fn listener_problems(
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

fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut problems = Vec::new();
    let mut bad = |field: &str, reason: String| {
        problems.push(FieldError {
            field: field.to_string(),
            reason,
        })
    };

    let g = raw.gateway;
    if g.public_interface.trim().is_empty() {
        bad("gateway.public_interface", "is empty".into());
    }
    if g.private_interfaces.is_empty() {
        bad(
            "gateway.private_interfaces",
            "is empty; list the interfaces toward the backends".into(),
        );
    }
    for (i, name) in g.private_interfaces.iter().enumerate() {
        let field = format!("gateway.private_interfaces[{}]", i + 1);
        if name == &g.public_interface {
            bad(
                &field,
                format!("{name:?} is also the public interface; a leg is one or the other"),
            );
        } else if g.private_interfaces[..i].contains(name) {
            bad(&field, format!("{name:?} is listed twice"));
        } else if name.trim().is_empty() {
            bad(&field, "is empty".into());
        }
    }
    let public_ipv4 = match g.public_ipv4.parse::<Ipv4Addr>() {
        Ok(a) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
            bad(
                "gateway.public_ipv4",
                format!("{a} cannot be a host's address"),
            );
            None
        }
        Ok(a) if a.is_loopback() => {
            bad(
                "gateway.public_ipv4",
                format!("{a} is a loopback address; clients reach the gateway on the public interface's address"),
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            bad(
                "gateway.public_ipv4",
                format!("{:?} is not an IPv4 address", g.public_ipv4),
            );
            None
        }
    };
    let port_range = match g.port_range.parse::<PortRange>() {
        Ok(r) => Some(r),
        Err(e) => {
            bad("gateway.port_range", e);
            None
        }
    };
    let reclaim_after = match g.reclaim_after.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            bad("gateway.reclaim_after", e);
            None
        }
    };

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
        if d.ttl > MAX_TTL {
            bad(
                "dns.ttl",
                format!("{} is above {MAX_TTL}, the largest TTL (RFC 2181)", d.ttl),
            );
        }
        Some(Dns {
            zone: zone?,
            listen,
            gateway_name: d.gateway_name,
            ttl: d.ttl,
        })
    });

    let http = raw.http.map(|h| {
        if dns.is_none() {
            bad(
                "http",
                "needs a [dns] section: the host names it routes are NAME.SERVICE.<dns.zone>"
                    .into(),
            );
        }
        if h.listen.is_empty() {
            bad("http.listen", "is empty; e.g. [\"0.0.0.0:80\"]".into());
        }
        let listen = socket_addrs(&h.listen, "http.listen", "0.0.0.0:80", &mut bad);
        let service = h.service.to_ascii_lowercase();
        if let Err(e) = check_label(&service) {
            bad("http.service", e);
        }
        let limits = web_limits(
            "http",
            [h.max_connections, h.max_connections_per_client],
            [h.header_timeout.as_deref(), h.idle_timeout.as_deref()],
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
        if dns.is_none() {
            bad(
                "https",
                "needs a [dns] section: the names it routes are NAME.SERVICE.<dns.zone>".into(),
            );
        }
        if h.listen.is_empty() {
            bad("https.listen", "is empty; e.g. [\"0.0.0.0:443\"]".into());
        }
        let listen = socket_addrs(&h.listen, "https.listen", "0.0.0.0:443", &mut bad);
        let service = h.service.to_ascii_lowercase();
        if let Err(e) = check_label(&service) {
            bad("https.service", e);
        }
        let limits = web_limits(
            "https",
            [h.max_connections, h.max_connections_per_client],
            [h.header_timeout.as_deref(), h.idle_timeout.as_deref()],
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

    let metrics_listen = raw
        .metrics
        .and_then(|m| match m.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                bad(
                    "metrics.listen",
                    format!(
                        "{:?} is not an address:port like \"127.0.0.1:9110\"",
                        m.listen
                    ),
                );
                None
            }
        });

    // Every socket the daemon binds, so that two never share a port and routes stay off them.
    let mut listeners: Vec<(String, SocketAddr)> = Vec::new();
    let mut listening = |field: &str, addrs: &[SocketAddr]| {
        for (i, a) in addrs.iter().enumerate() {
            listeners.push((format!("{field}[{}]", i + 1), *a));
        }
    };
    if let Some(d) = &dns {
        listening("dns.listen", &d.listen);
    }
    if let Some(h) = &http {
        listening("http.listen", &h.listen);
    }
    if let Some(p) = &portal {
        listening("portal.listen", &p.listen);
    }
    if let Some(m) = metrics_listen {
        listeners.push(("metrics.listen".into(), m));
    }
    for problem in listener_problems(&listeners, port_range) {
        bad(&problem.field, problem.reason);
    }

    let mut routes = Vec::new();
    let mut by_key: HashMap<RouteKey, usize> = HashMap::new();
    let mut by_port: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut by_backend: HashMap<(SocketAddrV4, Protocol), usize> = HashMap::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let n = i + 1;
        let field = |f: &str| format!("route[{n}].{f}");
        let request = RouteRequest {
            name: r.name,
            service: r.service,
            protocol: r.protocol,
            backend: r.backend,
            port: Some(r.port),
            proxy_protocol: r.proxy_protocol,
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
        let (protocol, backend) = (route.protocol, route.backend);
        if let Some(first) = by_key.insert(route.key(), n) {
            bad(
                &field("name"),
                format!(
                    "{} is already defined by route[{first}]; name, service and protocol together must be unique",
                    route.key()
                ),
            );
            continue;
        }
        if let Some(first) = by_port.insert((route.port, protocol), n) {
            bad(
                &field("port"),
                format!(
                    "{}/{protocol} is already used by route[{first}]",
                    route.port
                ),
            );
            continue;
        }
        if let Some(first) = by_backend.insert((backend, protocol), n) {
            bad(
                &field("backend"),
                format!(
                    "{backend}/{protocol} is already the backend of route[{first}]; replies could not be told apart"
                ),
            );
            continue;
        }
        routes.push(route);
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
        let backends = match crate::table::users::parse_rules(&u.backends) {
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

    let (Some(public_ipv4), Some(port_range), true) =
        (public_ipv4, port_range, problems.is_empty())
    else {
        return Err(problems);
    };
    Ok(Config {
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
        routes,
    })
}

/// A web router's `[max_connections, max_connections_per_client]` and `[header_timeout,
/// idle_timeout]`, defaults where absent; each problem named under `section`.
fn web_limits(
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

#[cfg(test)]
mod tests;
