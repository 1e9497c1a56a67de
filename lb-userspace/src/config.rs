//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing is two-staged: serde reads the raw shape (unknown keys are errors, so a typo
//! never silently does nothing), then [`validate`] checks every field and reports *all*
//! problems at once, each naming its field, e.g. `route[2].port`. Interface existence is a
//! separate step ([`Config::check_machine`]) because it depends on the machine.
//!
//! Here: the validated types and the errors. `raw.rs` is the file's serde shape,
//! `validate.rs` turns it into a [`Config`] (a route's own fields by lb-model's
//! `check_route`, which every source of routes shares; uniqueness with a scratch
//! `RouteTable`), `backend.rs` the rule that no backend is the gateway itself, and
//! `machine.rs` the checks against this machine.

mod backend;
mod cluster;
mod machine;
mod raw;
mod validate;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_model::{ConfigUser, FieldError, PortRange, Route, MAX_SERVICE_LEN};

use crate::cluster::ClusterSettings;

pub use backend::{check_backend, check_pool, not_a_host, OwnAddresses, NOT_A_HOST};

use raw::RawConfig;
use validate::validate;

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
    /// The students' client builds offered at `/clients/` (`serve::clients`).
    pub clients_dir: PathBuf,
}

/// Where the package installs the students' client builds: `[portal] clients_dir`'s
/// default (`serve::clients` serves them).
pub const DEFAULT_CLIENTS_DIR: &str = "/usr/share/srvgate/clients";

/// Where the package installs the config, and so where `run` and `check` look by default.
pub const DEFAULT_CONFIG: &str = "/etc/srvgate/srvgate.toml";

/// RFC 2181 section 8: a TTL is at most 2^31 - 1 (resolvers read larger ones as 0).
pub const MAX_TTL: u32 = i32::MAX as u32;

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
    /// `[dns.secondaries]`: servers that take the zone by transfer; none: no transfers.
    pub secondaries: Option<Secondaries>,
    /// `[dns.rrl]`: response-rate limiting of UDP answers; none: off.
    pub rrl: Option<Rrl>,
}

/// `[dns.rrl]`: UDP answers per client prefix (/24, /56) and second, and the slip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rrl {
    pub rate: u32,
    /// Every slip-th answer over the rate goes out empty with TC (the client retries over
    /// TCP); the others are dropped. 0: all dropped.
    pub slip: u32,
}

impl Default for Rrl {
    /// NSD's defaults: 200 answers a second is far above what a network's resolvers ask of
    /// one zone, and a slip of 2 answers half of the excess truncated.
    fn default() -> Self {
        Rrl { rate: 200, slip: 2 }
    }
}

/// `[dns.secondaries]`: the secondaries (e.g. the university's DNS) that are notified of
/// every change and may transfer the zone, with the TSIG key both sides hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secondaries {
    /// Where NOTIFYs go (port 53 unless given); transfers are taken from these addresses.
    pub peers: Vec<SocketAddr>,
    /// The TSIG key's name, as the secondaries configure it.
    pub key_name: String,
    /// The base64 secret (mode 0600); none: `dns-xfr.key` in the state directory, made
    /// the first time.
    pub key_file: Option<std::path::PathBuf>,
}

/// At most this many secondaries: each change sends one NOTIFY to each.
pub const MAX_SECONDARIES: usize = 16;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub gateway: Gateway,
    pub users: Vec<ConfigUser>,
    pub dns: Option<Dns>,
    pub http: Option<Http>,
    pub https: Option<Https>,
    pub portal: Option<Portal>,
    /// Where to serve Prometheus metrics (`[metrics] listen`), if anywhere.
    pub metrics_listen: Vec<SocketAddr>,
    /// `[cluster]`: the table shared through etcd; without it, the local state directory.
    pub cluster: Option<ClusterSettings>,
    pub routes: Vec<Route>,
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
        match Config::parse_all(file, text)? {
            Parsed {
                config: Some(config),
                problems,
                ..
            } if problems.is_empty() => Ok(config),
            Parsed { problems, .. } => Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                problems,
            }),
        }
    }

    /// Every problem of `text` at once (unknown keys with the nearest known one, then each
    /// field's), and the config as far as it is valid; `Err` only for a TOML syntax error.
    /// `srvgate check` reports from this; [`Config::parse`] refuses any problem.
    pub fn parse_all(file: &Path, text: &str) -> Result<Parsed, ConfigError> {
        let read = raw::read(text).map_err(|message| ConfigError::Syntax {
            file: file.to_path_buf(),
            message,
        })?;
        let mut problems = read.problems;
        let mut warnings = Vec::new();
        let config = read.raw.and_then(|raw: RawConfig| {
            let v = validate(raw);
            problems.extend(v.problems);
            warnings = v.warnings;
            v.config
        });
        Ok(Parsed {
            config,
            problems,
            warnings,
        })
    }

    /// Reads `file` like [`Config::load`], keeping the warnings (deprecated forms) for the
    /// caller to show.
    pub fn load_all(file: &Path) -> Result<Parsed, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read {
            file: file.to_path_buf(),
            error,
        })?;
        Config::parse_all(file, &text)
    }

    /// Every socket the daemon binds, each named by its field (`http.listen[1]`).
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        validate::listeners(
            self.dns.as_ref(),
            self.http.as_ref(),
            self.https.as_ref(),
            self.portal.as_ref(),
            &self.metrics_listen,
        )
    }

    /// What is valid but likely not meant: no `[dns]` (routes get no names, students can
    /// find no port), students (`accounts` more, from the state directory) and no
    /// `[portal]` to log in to.
    pub fn advice(&self, accounts: usize) -> Vec<FieldError> {
        let mut advice = Vec::new();
        if self.dns.is_none() {
            advice.push(FieldError {
                field: "dns".into(),
                reason: "no [dns] section: routes get no names and SRV records, and `srvgate ssh`/`ssh-config` cannot find a port; add [dns] with zone = \"lab.example.edu\"".into(),
            });
        }
        // Config users are also in the accounts file once the daemon has run.
        let students = self.users.len().max(accounts);
        if students > 0 && self.portal.is_none() {
            advice.push(FieldError {
                field: "portal".into(),
                reason: format!(
                    "{students} student account(s) but no [portal]: their tokens can log in nowhere; add [portal] (listen = [\"0.0.0.0:8443\"])"
                ),
            });
        }
        advice
    }
}

/// What [`Config::parse_all`] found.
#[derive(Debug)]
pub struct Parsed {
    /// The config with whatever was invalid left out; `None` when a field the rest depends
    /// on (`public_ipv4`, `port_range`, the file's shape) is wrong.
    pub config: Option<Config>,
    pub problems: Vec<FieldError>,
    /// Valid but deprecated forms, each with the form to write instead.
    pub warnings: Vec<FieldError>,
}

impl Config {}

#[cfg(test)]
mod tests;
