//! The config file's shape as serde reads it: unknown keys are errors, so a typo never
//! silently does nothing; every value is checked later, by `validate`.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) gateway: RawGateway,
    pub(super) dns: Option<RawDns>,
    pub(super) http: Option<RawHttp>,
    pub(super) https: Option<RawHttps>,
    pub(super) portal: Option<RawPortal>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) cluster: Option<super::cluster::RawCluster>,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default, rename = "user")]
    pub(super) users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: String,
    #[serde(default)]
    pub(super) backends: Vec<String>,
    #[serde(default)]
    pub(super) max_routes: Option<u32>,
    #[serde(default)]
    pub(super) admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) public_interface: String,
    pub(super) private_interfaces: Vec<String>,
    pub(super) public_ipv4: String,
    #[serde(default = "default_port_range")]
    pub(super) port_range: String,
    #[serde(default)]
    pub(super) reclaim_after: Option<String>,
    #[serde(default)]
    pub(super) port_cooldown: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPortal {
    #[serde(default = "default_portal_listen")]
    pub(super) listen: Vec<String>,
    #[serde(default)]
    pub(super) cert: Option<PathBuf>,
    #[serde(default)]
    pub(super) key: Option<PathBuf>,
}

pub(super) fn default_portal_listen() -> Vec<String> {
    vec!["0.0.0.0:8443".to_string()]
}

pub(super) fn default_port_range() -> String {
    "30000-32767".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) zone: String,
    #[serde(default = "default_dns_listen")]
    pub(super) listen: Vec<String>,
    #[serde(default = "default_gateway_name")]
    pub(super) gateway_name: String,
    #[serde(default = "default_ttl")]
    pub(super) ttl: u32,
    /// Label -> IPv4 address of each name server (gateway) the apex NS lists.
    #[serde(default)]
    pub(super) nameservers: std::collections::BTreeMap<String, String>,
    pub(super) secondaries: Option<RawSecondaries>,
    pub(super) rrl: Option<RawRrl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRrl {
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    pub(super) rate: Option<u32>,
    pub(super) slip: Option<u32>,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecondaries {
    /// "ADDRESS" or "ADDRESS:PORT" of each secondary.
    pub(super) addresses: Vec<String>,
    #[serde(default = "default_key_name")]
    pub(super) key_name: String,
    pub(super) key_file: Option<std::path::PathBuf>,
}

pub(super) fn default_key_name() -> String {
    "srvgate-xfr".to_string()
}

pub(super) fn default_dns_listen() -> Vec<String> {
    vec!["0.0.0.0:53".to_string()]
}
pub(super) fn default_gateway_name() -> String {
    "gw".to_string()
}
pub(super) fn default_ttl() -> u32 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(default = "default_http_listen")]
    pub(super) listen: Vec<String>,
    #[serde(default = "default_http_service")]
    pub(super) service: String,
    #[serde(default)]
    pub(super) forwarded_for: bool,
    #[serde(default)]
    pub(super) max_connections: Option<usize>,
    #[serde(default)]
    pub(super) max_connections_per_client: Option<usize>,
    #[serde(default)]
    pub(super) header_timeout: Option<String>,
    #[serde(default)]
    pub(super) idle_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttps {
    #[serde(default = "default_https_listen")]
    pub(super) listen: Vec<String>,
    #[serde(default = "default_https_service")]
    pub(super) service: String,
    #[serde(default)]
    pub(super) max_connections: Option<usize>,
    #[serde(default)]
    pub(super) max_connections_per_client: Option<usize>,
    #[serde(default)]
    pub(super) header_timeout: Option<String>,
    #[serde(default)]
    pub(super) idle_timeout: Option<String>,
}

pub(super) fn default_https_listen() -> Vec<String> {
    vec!["0.0.0.0:443".to_string()]
}
pub(super) fn default_https_service() -> String {
    "https".to_string()
}

pub(super) fn default_http_listen() -> Vec<String> {
    vec!["0.0.0.0:80".to_string()]
}
pub(super) fn default_http_service() -> String {
    "http".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: String,
    pub(super) service: String,
    #[serde(default)]
    pub(super) protocol: Option<String>,
    #[serde(default)]
    pub(super) backend: String,
    #[serde(default)]
    pub(super) backends: Vec<String>,
    pub(super) port: u16,
    #[serde(default)]
    pub(super) proxy_protocol: Option<String>,
}
