//! The students' rules as data: where a student's routes may point ([`BackendRule`]), an
//! account as the config file declares it and as the API shows it, and the certificate
//! fingerprint both the portal and `srvgate login` print.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// The longest token we look at; anything longer is refused before hashing.
pub const MAX_TOKEN_LEN: usize = 128;

/// Where a student's routes may point: one address or a CIDR block, optionally one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendRule {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub port: Option<u16>,
}

impl BackendRule {
    pub fn allows(&self, backend: SocketAddrV4) -> bool {
        let mask = prefix_mask(self.prefix);
        (u32::from(*backend.ip()) & mask) == u32::from(self.network)
            && self.port.is_none_or(|p| p == backend.port())
    }
}

fn prefix_mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for BackendRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.network)?;
        if self.prefix != 32 {
            write!(f, "/{}", self.prefix)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl FromStr for BackendRule {
    type Err = String;

    /// `10.0.0.11`, `10.0.0.11:22`, `10.0.1.0/28` or `10.0.1.0/28:22`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "{s:?} is not a backend rule like \"10.0.0.11\", \"10.0.0.11:22\", \"10.0.1.0/28\" or \"10.0.1.0/28:22\""
            )
        };
        let (net, port) = match s.rsplit_once(':') {
            Some((net, port)) => {
                let port: u16 = port.parse().map_err(|_| usage())?;
                if port == 0 {
                    return Err(format!("{s:?}: port 0 is not a port"));
                }
                (net, Some(port))
            }
            None => (s, None),
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(usage)?,
            ),
            None => (net, 32),
        };
        let network: Ipv4Addr = addr.parse().map_err(|_| usage())?;
        if u32::from(network) & !prefix_mask(prefix) != 0 {
            let base = Ipv4Addr::from(u32::from(network) & prefix_mask(prefix));
            return Err(format!(
                "{s:?}: {network} has bits set beyond /{prefix}; the block starts at {base}"
            ));
        }
        if prefix < 8 {
            return Err(format!(
                "{s:?} is wider than a /8; give the student their own addresses"
            ));
        }
        if network.is_loopback()
            || network.is_unspecified()
            || network.is_multicast()
            || network.is_broadcast()
        {
            return Err(format!("{s:?}: {network} cannot be a backend's address"));
        }
        Ok(BackendRule {
            network,
            prefix,
            port,
        })
    }
}

/// Parses a list of backend rules, naming the first bad one.
pub fn parse_rules(rules: &[String]) -> Result<Vec<BackendRule>, String> {
    rules.iter().map(|r| r.parse()).collect()
}

/// A `[[user]]` of the config file: an account whose fields the file owns (its token is
/// still issued at runtime, by `srvgate user token NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigUser {
    pub name: String,
    pub backends: Vec<BackendRule>,
    pub max_routes: u32,
    pub admin: bool,
}

/// How a user is shown and stored (the token only as its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserView {
    pub name: String,
    pub backends: Vec<String>,
    pub max_routes: u32,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub routes: usize,
    /// Declared in the config file (`[[user]]`): change it there.
    #[serde(default)]
    pub from_config: bool,
    /// Whether a token has been issued (`srvgate user token NAME` issues one).
    #[serde(default)]
    pub has_token: bool,
}

/// `AB:CD:...` of a certificate's SHA-256, as `openssl x509 -fingerprint -sha256` prints
/// it: how the portal publishes its certificate and how `srvgate login` pins it.
pub fn cert_fingerprint(cert_der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests;
