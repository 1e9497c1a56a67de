//! The config file's shape as serde reads it: unknown keys are errors, so a typo never
//! silently does nothing; every value is checked later, by `validate`.

use std::path::PathBuf;

use lb_model::FieldError;
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
    #[serde(default)]
    pub(super) clients_dir: Option<PathBuf>,
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
    pub(super) listen: OneOrMany,
}

/// `[metrics] listen`: an array like every other `listen`; the single string it used to be
/// is still read (with a deprecation note).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
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
    /// `check = { kind = "http", path = "/healthz", interval = "2s" }`.
    #[serde(default)]
    pub(super) check: Option<lb_model::check::CheckRequest>,
}

/// What [`read`] makes of a file that is valid TOML.
pub(super) struct Read {
    /// The file's shape with its unknown keys left out; `None` when something else in the
    /// shape is wrong (a value of the wrong type, a missing key), which is in `problems`.
    pub(super) raw: Option<RawConfig>,
    /// Every unknown key (with the nearest known one), then the one shape error, if any.
    pub(super) problems: Vec<FieldError>,
}

/// The most unknown keys one file is searched for: a bound on the loop below (each round
/// removes one key), far above any real file's typos.
const MAX_UNKNOWN_KEYS: usize = 64;

/// Reads `text` into [`RawConfig`], reporting every unknown key rather than serde's first:
/// each round deserializes the parsed table, and an unknown-field error (whose message lists
/// the keys that section knows: serde stays the one owner of that list) removes the key and
/// goes on. `Err` is a TOML syntax error (with its line), which stops the reading.
pub(super) fn read(text: &str) -> Result<Read, String> {
    let first = match toml::from_str::<RawConfig>(text) {
        Ok(raw) => {
            return Ok(Read {
                raw: Some(raw),
                problems: Vec::new(),
            })
        }
        Err(e) => e,
    };
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return Err(first.to_string().trim_end().to_string());
    };
    let mut problems = Vec::new();
    for _ in 0..MAX_UNKNOWN_KEYS {
        let e = match toml::Value::Table(table.clone()).try_into::<RawConfig>() {
            Ok(raw) => {
                return Ok(Read {
                    raw: Some(raw),
                    problems,
                })
            }
            Err(e) => e,
        };
        let display = e.to_string();
        let path: Vec<&str> = display
            .lines()
            .filter_map(|l| l.strip_prefix("in `")?.strip_suffix('`'))
            .next_back()
            .map_or_else(Vec::new, |p| p.split('.').collect());
        let unknown = unknown_field(e.message())
            .and_then(|(key, known)| Some((remove_key(&mut table, &path, &key, "")?, known)));
        match unknown {
            Some((field, known)) => problems.push(FieldError {
                reason: unknown_reason(&field, &known),
                field,
            }),
            None if problems.is_empty() => return Err(first.to_string().trim_end().to_string()),
            None => {
                problems.push(FieldError {
                    field: if path.is_empty() {
                        "(file)".into()
                    } else {
                        path.join(".")
                    },
                    reason: e.message().to_string(),
                });
                return Ok(Read {
                    raw: None,
                    problems,
                });
            }
        }
    }
    problems.push(FieldError {
        field: "(file)".into(),
        reason: format!("more than {MAX_UNKNOWN_KEYS} unknown keys; is this a srvgate config?"),
    });
    Ok(Read {
        raw: None,
        problems,
    })
}

/// serde's "unknown field `lisen`, expected one of `listen`, `service`" as the key and the
/// known ones; `None` for any other message.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let known = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((key.to_string(), known))
}

fn unknown_reason(field: &str, known: &[String]) -> String {
    let key = field.rsplit('.').next().unwrap_or(field);
    match lb_model::text::nearest(key, known.iter().map(String::as_str)) {
        Some(near) => format!("unknown key; did you mean `{near}`?"),
        None if known.is_empty() => "unknown key; this section takes none".into(),
        None => format!(
            "unknown key; the keys here are {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Removes `key` from the table at `path` (serde names a section without the index of an
/// array's element: the first element holding `key` is the one) and returns its field name,
/// e.g. `route[2].nmae`.
fn remove_key(table: &mut toml::Table, path: &[&str], key: &str, shown: &str) -> Option<String> {
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}.{b}")
        }
    };
    let Some((first, rest)) = path.split_first() else {
        return table.remove(key).map(|_| join(shown, key));
    };
    match table.get_mut(*first)? {
        toml::Value::Table(t) => remove_key(t, rest, key, &join(shown, first)),
        toml::Value::Array(items) => items.iter_mut().enumerate().find_map(|(i, v)| match v {
            toml::Value::Table(t) => {
                remove_key(t, rest, key, &format!("{}[{}]", join(shown, first), i + 1))
            }
            _ => None,
        }),
        _ => None,
    }
}
