//! What one backend's health check is: [`CheckSpec`], read from its TOML/JSON form
//! ([`CheckRequest`], `check = { kind = "http", path = "/healthz" }`) by
//! [`CheckRequest::check`], which names the field of every problem, or from the CLI's
//! `--check KIND[:PORT][PATH]` flags ([`CheckRequest::from_flags`]). Plain data: the
//! gateway's `health` module runs the checks.
//!
//! A route's check is written on the route (its pool carries it, `Pool::check`); a route
//! without one gets [`default_for`]'s: TCP connect for a TCP pool of two or more members,
//! nothing for a one-backend route (there is no other member to send to) or a UDP route (a
//! TCP connect to a UDP port says nothing; write `kind = "tcp", port = 8080` to check a
//! companion TCP port, or `kind = "none"`, always up). A student's check keeps
//! [`CheckSpec::student_limits`] on top of the rules every check keeps.

use std::{fmt, net::SocketAddrV4, time::Duration};

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// haproxy's `inter 2s`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// haproxy's `timeout check` falls back to `inter`; ours is shorter so a slow answer is a
/// failure well before the next check is due.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// haproxy's `rise 2`.
pub const DEFAULT_RISE: u32 = 2;
/// haproxy's `fall 3`.
pub const DEFAULT_FALL: u32 = 3;
/// Below this a check costs the backend more than it tells.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Above this an unhealthy backend stays in a pool for hours.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// A timeout shorter than this fails on a loaded machine's scheduling alone.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// `rise` and `fall` at most: more is a typo rather than a policy.
pub const MAX_COUNT: u32 = 100;
/// Longest HTTP path: it goes on the request line as it is.
pub const MAX_PATH: usize = 1024;
/// Longest Host header: a DNS name (253) with a port.
pub const MAX_HOST: usize = 259;
/// A student's check runs at most once a second per backend: the gateway probes on her
/// behalf, and a faster check is load on a machine the admin does not own.
pub const MIN_STUDENT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `--check` flag value (`http:65535/` and a path).
const MAX_FLAG_TEXT: usize = MAX_PATH + 16;

/// How a backend is probed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// The TCP handshake completes.
    Tcp,
    /// `GET path` answers 2xx or 3xx. `host` is the Host header; `None` sends the backend's
    /// own `address:port`.
    Http { path: String, host: Option<String> },
    /// The server's identification line starts with `SSH-2.0-` (or `SSH-1.99-`, which
    /// RFC 4253 section 5.1 makes a 2.0 server too).
    Ssh,
    /// `kind = "none"`: never checked, always up.
    Off,
}

/// A validated check: built only by [`CheckRequest::check`] (or [`Default`]), so
/// `timeout < interval`, `MIN_INTERVAL <= interval <= MAX_INTERVAL` and
/// `1 <= rise, fall <= MAX_COUNT` always hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// Probe this port of the backend's address instead of the backend's own port (a UDP
    /// service's companion TCP port, an HTTP status port).
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            kind: CheckKind::Tcp,
            port: None,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

impl CheckSpec {
    /// The kind's name as the TOML form spells it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Ssh => "ssh",
            CheckKind::Off => "none",
        }
    }

    /// `kind = "none"`.
    pub fn off() -> Self {
        CheckSpec {
            kind: CheckKind::Off,
            ..CheckSpec::default()
        }
    }

    pub fn is_off(&self) -> bool {
        self.kind == CheckKind::Off
    }

    /// Where the probe goes for `backend`: its address, and `port` when the check names one.
    pub fn probe_addr(&self, backend: SocketAddrV4) -> SocketAddrV4 {
        SocketAddrV4::new(*backend.ip(), self.port.unwrap_or(backend.port()))
    }

    /// What a student's check keeps on top of every check's rules: an interval of at least
    /// [`MIN_STUDENT_INTERVAL`]. The error names the field (`check.interval`).
    pub fn student_limits(&self) -> Result<(), FieldError> {
        if !self.is_off() && self.interval < MIN_STUDENT_INTERVAL {
            return Err(FieldError {
                field: "check.interval".into(),
                reason: format!(
                    "{} is shorter than {}, the shortest interval of a student's check",
                    format_check_duration(self.interval),
                    format_check_duration(MIN_STUDENT_INTERVAL)
                ),
            });
        }
        Ok(())
    }

    /// The longest a backend that stopped answering stays up: `fall` failed checks, each
    /// started an interval (plus at most a tenth of it of jitter) after the last.
    pub fn detection_bound(&self) -> Duration {
        (self.interval + self.interval / 10) * self.fall + self.timeout
    }
}

/// The check a route without its own gets (see the module's doc): `None` when nothing is
/// checked.
pub fn default_for(protocol: crate::Protocol, members: usize) -> Option<CheckSpec> {
    (protocol == crate::Protocol::Tcp && members >= 2).then(CheckSpec::default)
}

/// `http GET /healthz (Host h) inter 2s timeout 1s rise 2 fall 3`: haproxy's words; `none`
/// for a check that is off.
impl fmt::Display for CheckSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("none");
        }
        match &self.kind {
            CheckKind::Http { path, host } => {
                write!(f, "http GET {path}")?;
                if let Some(host) = host {
                    write!(f, " (Host {host})")?;
                }
            }
            _ => f.write_str(self.kind_name())?,
        }
        if let Some(port) = self.port {
            write!(f, " port {port}")?;
        }
        write!(
            f,
            " inter {} timeout {} rise {} fall {}",
            format_check_duration(self.interval),
            format_check_duration(self.timeout),
            self.rise,
            self.fall
        )
    }
}

/// A check as someone wrote it, before validation: the TOML form
/// `check = { kind = "http", path = "/healthz", interval = "5s" }` and its JSON twin.
/// Every field may be left out; [`CheckRequest::check`] fills in haproxy's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// `"tcp"` (the default), `"http"`, `"ssh"` or `"none"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The port to probe instead of the backend's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `http` only; `"/"` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http` only: the Host header; the backend's `address:port` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `"2s"`, `"500ms"`, `"1m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
}

impl CheckRequest {
    /// Validates every field and reports all problems at once. `field` turns a field name
    /// into its path in the caller's terms (`route[2].check.path` in the file).
    ///
    /// Left-out `timeout` is [`DEFAULT_TIMEOUT`], or half the interval when that is
    /// shorter, so a short `interval` alone is valid.
    pub fn check(&self, field: &dyn Fn(&str) -> String) -> Result<CheckSpec, Vec<FieldError>> {
        let mut problems = Vec::new();
        let mut bad = |f: &str, reason: String| {
            problems.push(FieldError {
                field: field(f),
                reason,
            })
        };
        let kind = self.kind.as_deref().unwrap_or("tcp");
        let is_http = kind == "http";
        if !matches!(kind, "tcp" | "http" | "ssh" | "none") {
            bad(
                "kind",
                format!("{kind:?} is not a check kind; use \"tcp\", \"http\", \"ssh\" or \"none\""),
            );
        }
        if kind == "none" {
            let given = [
                ("port", self.port.is_some()),
                ("path", self.path.is_some()),
                ("host", self.host.is_some()),
                ("interval", self.interval.is_some()),
                ("timeout", self.timeout.is_some()),
                ("rise", self.rise.is_some()),
                ("fall", self.fall.is_some()),
            ];
            for (name, _) in given.iter().filter(|(_, g)| *g) {
                bad(
                    name,
                    "means nothing for kind = \"none\" (never checked)".into(),
                );
            }
            return if problems.is_empty() {
                Ok(CheckSpec::off())
            } else {
                Err(problems)
            };
        }
        if self.port == Some(0) {
            bad("port", "0 is not a port (1-65535)".into());
        }
        if !is_http {
            for (name, value) in [("path", &self.path), ("host", &self.host)] {
                if value.is_some() {
                    bad(
                        name,
                        format!("is only for kind = \"http\", and this check is {kind:?}"),
                    );
                }
            }
        }
        let path = self.path.clone().unwrap_or_else(|| "/".into());
        if is_http {
            if let Err(e) = check_path(&path) {
                bad("path", e);
            }
            if let Some(Err(e)) = self.host.as_deref().map(check_host) {
                bad("host", e);
            }
        }
        let interval = match self.interval.as_deref().map(parse_check_duration) {
            None => Some(DEFAULT_INTERVAL),
            Some(Ok(d)) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => Some(d),
            Some(Ok(d)) => {
                bad(
                    "interval",
                    format!(
                        "{} is outside {} to {}",
                        format_check_duration(d),
                        format_check_duration(MIN_INTERVAL),
                        format_check_duration(MAX_INTERVAL)
                    ),
                );
                None
            }
            Some(Err(e)) => {
                bad("interval", e);
                None
            }
        };
        let timeout = match self.timeout.as_deref().map(parse_check_duration) {
            None => interval.map(|i| DEFAULT_TIMEOUT.min(i / 2)),
            Some(Ok(d)) if d < MIN_TIMEOUT => {
                bad(
                    "timeout",
                    format!(
                        "{} is shorter than {}",
                        format_check_duration(d),
                        format_check_duration(MIN_TIMEOUT)
                    ),
                );
                None
            }
            Some(Ok(d)) => match interval {
                Some(i) if d >= i => {
                    bad(
                        "timeout",
                        format!(
                            "{} is not shorter than the interval ({}): a check must end before the next one starts",
                            format_check_duration(d),
                            format_check_duration(i)
                        ),
                    );
                    None
                }
                _ => Some(d),
            },
            Some(Err(e)) => {
                bad("timeout", e);
                None
            }
        };
        let mut count = |name: &str, value: Option<u32>, default: u32| match value {
            None => default,
            Some(n) if (1..=MAX_COUNT).contains(&n) => n,
            Some(n) => {
                bad(name, format!("{n} is outside 1 to {MAX_COUNT}"));
                default
            }
        };
        let rise = count("rise", self.rise, DEFAULT_RISE);
        let fall = count("fall", self.fall, DEFAULT_FALL);
        match (interval, timeout) {
            (Some(interval), Some(timeout)) if problems.is_empty() => Ok(CheckSpec {
                kind: match kind {
                    "http" => CheckKind::Http {
                        path,
                        host: self.host.clone(),
                    },
                    "ssh" => CheckKind::Ssh,
                    _ => CheckKind::Tcp,
                },
                port: self.port,
                interval,
                timeout,
                rise,
                fall,
            }),
            _ => Err(problems),
        }
    }
}

/// The request that [`CheckRequest::check`] turns back into the same spec, defaults left
/// out, so a stored route keeps the short form its author wrote.
impl From<&CheckSpec> for CheckRequest {
    fn from(s: &CheckSpec) -> Self {
        if s.is_off() {
            return CheckRequest {
                kind: Some("none".into()),
                ..CheckRequest::default()
            };
        }
        let (path, host) = match &s.kind {
            CheckKind::Http { path, host } => ((path != "/").then(|| path.clone()), host.clone()),
            _ => (None, None),
        };
        let default_timeout = DEFAULT_TIMEOUT.min(s.interval / 2);
        CheckRequest {
            kind: (s.kind != CheckKind::Tcp).then(|| s.kind_name().to_string()),
            port: s.port,
            path,
            host,
            interval: (s.interval != DEFAULT_INTERVAL).then(|| format_check_duration(s.interval)),
            timeout: (s.timeout != default_timeout).then(|| format_check_duration(s.timeout)),
            rise: (s.rise != DEFAULT_RISE).then_some(s.rise),
            fall: (s.fall != DEFAULT_FALL).then_some(s.fall),
        }
    }
}

/// The CLI's check flags, one syntax for `srvgate route add` and a student's `claim`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckFlags<'a> {
    /// `--check KIND[:PORT][PATH]`: `tcp`, `tcp:8080`, `ssh`, `none`, `http:/healthz`,
    /// `http:8080/healthz`.
    pub check: Option<&'a str>,
    /// `--check-interval 2s`.
    pub interval: Option<&'a str>,
    /// `--check-timeout 1s`.
    pub timeout: Option<&'a str>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

impl CheckRequest {
    /// The request the CLI's flags say, `None` when no flag is given. Only the shape is
    /// read here (`--check`'s parts); [`CheckRequest::check`] validates the values where
    /// the request arrives, so the CLI and the API refuse the same things.
    pub fn from_flags(f: &CheckFlags<'_>) -> Result<Option<CheckRequest>, String> {
        if *f == CheckFlags::default() {
            return Ok(None);
        }
        let mut r = CheckRequest {
            interval: f.interval.map(str::to_string),
            timeout: f.timeout.map(str::to_string),
            rise: f.rise,
            fall: f.fall,
            ..CheckRequest::default()
        };
        let Some(text) = f.check else {
            return Ok(Some(r));
        };
        if text.len() > MAX_FLAG_TEXT {
            return Err(format!(
                "--check is {} characters long; at most {MAX_FLAG_TEXT}",
                text.len()
            ));
        }
        let form = || {
            format!("--check {text:?} is not KIND[:PORT][PATH] (tcp, tcp:8080, ssh, none, http:/healthz, http:8080/healthz)")
        };
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        if !matches!(kind, "tcp" | "http" | "ssh" | "none") {
            return Err(form());
        }
        if kind != "tcp" {
            r.kind = Some(kind.to_string());
        }
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (port, path) = rest.split_at(digits);
        if !port.is_empty() {
            r.port = Some(port.parse().map_err(|_| form())?);
        }
        if !path.is_empty() {
            if kind != "http" || !path.starts_with('/') {
                return Err(form());
            }
            r.path = Some(path.to_string());
        }
        if text.ends_with(':') && port.is_empty() && path.is_empty() {
            return Err(form());
        }
        Ok(Some(r))
    }
}

/// A spec inside another serde type (a route of the state file, the API's body) reads as its
/// [`CheckRequest`] form and is validated on the way in; the error names each field.
impl Serialize for CheckSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CheckRequest::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for CheckSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CheckRequest::deserialize(d)?
            .check(&|f| format!("check.{f}"))
            .map_err(|problems| {
                let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                serde::de::Error::custom(text.join("; "))
            })
    }
}

/// An absolute path of visible ASCII: it is sent as it is on the request line, so a space or
/// a line break would make the request another one.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} does not start with '/'"));
    }
    if path.len() > MAX_PATH {
        return Err(format!(
            "is {} bytes long; a check path has at most {MAX_PATH}",
            path.len()
        ));
    }
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{path:?} contains {c:?}; a check path is visible ASCII (percent-encode the rest)"
        ));
    }
    Ok(())
}

/// A host name or address, with an optional port: what a Host header may carry.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > MAX_HOST {
        return Err(format!(
            "is {} characters long; a Host header has 1 to {MAX_HOST}",
            host.len()
        ));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port {
        if port.parse::<u16>().is_err() {
            return Err(format!("{host:?} has {port:?} after ':', which is no port"));
        }
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!(
            "{host:?} is not a host name or IPv4 address (letters, digits, '-' and '.', then an optional :port)"
        ));
    }
    Ok(())
}

/// Reads `500ms`, `2s`, `1m` or a sum such as `1s500ms`. Checks need sub-second durations,
/// which the route module's `parse_duration` (whole seconds, up to weeks) does not read.
pub fn parse_check_duration(text: &str) -> Result<Duration, String> {
    let form =
        || format!("{text:?} is not a duration like \"2s\", \"500ms\" or \"1m\" (units ms, s, m)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(form());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 || digits > 9 {
            return Err(form());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| form())?;
        rest = &rest[digits..];
        let unit = if let Some(r) = rest.strip_prefix("ms") {
            rest = r;
            Duration::from_millis(n)
        } else if let Some(r) = rest.strip_prefix('s') {
            rest = r;
            Duration::from_secs(n)
        } else if let Some(r) = rest.strip_prefix('m') {
            rest = r;
            Duration::from_secs(n * 60)
        } else {
            return Err(form());
        };
        total += unit;
    }
    Ok(total)
}

/// Renders a duration the way [`parse_check_duration`] reads it: `2s`, `1500ms`, `1m30s`.
pub fn format_check_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<CheckSpec, Vec<FieldError>> {
        #[derive(Deserialize)]
        struct Holder {
            check: CheckRequest,
        }
        let h: Holder = toml::from_str(toml_text).expect("toml");
        h.check.check(&|f| format!("route[1].check.{f}"))
    }

    #[test]
    fn defaults_are_haproxys() {
        let s = parse("check = {}").unwrap();
        assert_eq!(s, CheckSpec::default());
        assert_eq!(s.kind, CheckKind::Tcp);
        assert_eq!(
            (s.interval, s.timeout, s.rise, s.fall),
            (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
        );
        assert_eq!(s.to_string(), "tcp inter 2s timeout 1s rise 2 fall 3");
    }

    #[test]
    fn http_form_reads_path_host_and_durations() {
        let s = parse(
            r#"check = { kind = "http", path = "/healthz", host = "judge.example", interval = "5s", timeout = "1500ms", rise = 1, fall = 5 }"#,
        )
        .unwrap();
        assert_eq!(
            s.kind,
            CheckKind::Http {
                path: "/healthz".into(),
                host: Some("judge.example".into())
            }
        );
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.timeout, Duration::from_millis(1500));
        assert_eq!((s.rise, s.fall), (1, 5));
        assert_eq!(
            s.to_string(),
            "http GET /healthz (Host judge.example) inter 5s timeout 1500ms rise 1 fall 5"
        );
        let plain = parse(r#"check = { kind = "http" }"#).unwrap();
        assert_eq!(
            plain.kind,
            CheckKind::Http {
                path: "/".into(),
                host: None
            }
        );
    }

    #[test]
    fn a_short_interval_alone_gets_a_timeout_that_fits() {
        let s = parse(r#"check = { interval = "500ms" }"#).unwrap();
        assert_eq!(s.timeout, Duration::from_millis(250));
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let e = parse(
            r#"check = { kind = "icmp", path = "x", interval = "2h", timeout = "soon", rise = 0, fall = 1000 }"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "route[1].check.kind",
                "route[1].check.path",
                "route[1].check.interval",
                "route[1].check.timeout",
                "route[1].check.rise",
                "route[1].check.fall"
            ],
            "{e:?}"
        );
        assert!(e[0].reason.contains("\"icmp\""), "{}", e[0]);
        assert!(e[3].reason.contains("\"soon\""), "{}", e[3]);
    }

    #[test]
    fn timeout_must_end_before_the_next_check() {
        let e = parse(r#"check = { interval = "1s", timeout = "1s" }"#).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "route[1].check.timeout");
        assert!(
            e[0].reason.contains("not shorter than the interval"),
            "{}",
            e[0]
        );
        let e = parse(r#"check = { timeout = "1ms" }"#).unwrap_err();
        assert_eq!(e[0].field, "route[1].check.timeout");
    }

    #[test]
    fn http_fields_are_refused_on_other_kinds_and_bad_values_named() {
        let e = parse(r#"check = { kind = "ssh", path = "/" }"#).unwrap_err();
        assert_eq!(e[0].field, "route[1].check.path");
        assert!(e[0].reason.contains("only for kind = \"http\""), "{}", e[0]);
        let e = parse(r#"check = { host = "a" }"#).unwrap_err();
        assert_eq!(e[0].field, "route[1].check.host");
        // A path that would smuggle a second request line, and a header injection.
        let e = parse("check = { kind = \"http\", path = \"/ HTTP/1.1\\r\\nX: y\" }").unwrap_err();
        assert_eq!(e[0].field, "route[1].check.path");
        let e = parse("check = { kind = \"http\", host = \"a\\r\\nX-Evil: 1\" }").unwrap_err();
        assert_eq!(e[0].field, "route[1].check.host");
        let long = "/".repeat(MAX_PATH + 1);
        let e = parse(&format!("check = {{ kind = \"http\", path = \"{long}\" }}")).unwrap_err();
        assert!(e[0].reason.contains("at most 1024"), "{}", e[0]);
        assert!(parse(r#"check = { kind = "http", host = "10.0.0.5:8080" }"#).is_ok());
        assert!(parse(r#"check = { kind = "http", host = "a:99999" }"#).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<CheckRequest, _> = toml::from_str(
            r#"kind = "tcp"
inter = "2s""#,
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("inter"), "{e}");
    }

    #[test]
    fn the_short_form_round_trips_through_json() {
        for text in [
            "check = {}",
            r#"check = { kind = "ssh", fall = 2 }"#,
            r#"check = { kind = "http", path = "/h", interval = "300ms" }"#,
            r#"check = { kind = "http", interval = "10s", timeout = "3s", rise = 4 }"#,
        ] {
            let spec = parse(text).unwrap();
            let json = serde_json::to_string(&spec).unwrap();
            let back: CheckSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(back, spec, "{text} -> {json}");
        }
        assert_eq!(
            serde_json::to_string(&CheckSpec::default()).unwrap(),
            "{}",
            "defaults are left out"
        );
        let e = serde_json::from_str::<CheckSpec>(r#"{"rise": 0}"#).unwrap_err();
        assert!(e.to_string().contains("check.rise: 0 is outside"), "{e}");
    }

    #[test]
    fn durations_parse_and_format() {
        for (text, d) in [
            ("2s", Duration::from_secs(2)),
            ("500ms", Duration::from_millis(500)),
            ("1m", Duration::from_secs(60)),
            ("1s500ms", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse_check_duration(text), Ok(d), "{text}");
        }
        for bad in ["", "2", "s", "2h", "1.5s", "-1s", "9999999999s"] {
            assert!(parse_check_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_check_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_check_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_check_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_check_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn none_takes_no_other_field_and_a_port_is_probed_instead() {
        let s = parse(r#"check = { kind = "none" }"#).unwrap();
        assert!(s.is_off());
        assert_eq!(s.to_string(), "none");
        let e = parse(r#"check = { kind = "none", interval = "2s", port = 80 }"#).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["route[1].check.port", "route[1].check.interval"]);
        let s = parse(r#"check = { kind = "tcp", port = 8080 }"#).unwrap();
        let b: SocketAddrV4 = "10.0.0.11:27015".parse().unwrap();
        assert_eq!(s.probe_addr(b), "10.0.0.11:8080".parse().unwrap());
        assert_eq!(CheckSpec::default().probe_addr(b), b);
        assert_eq!(
            parse(r#"check = { port = 0 }"#).unwrap_err()[0].field,
            "route[1].check.port"
        );
        for text in [
            r#"check = { kind = "none" }"#,
            r#"check = { port = 8080, kind = "http", path = "/s" }"#,
        ] {
            let spec = parse(text).unwrap();
            let back: CheckSpec =
                serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
            assert_eq!(back, spec, "{text}");
        }
    }

    #[test]
    fn defaults_depend_on_protocol_and_size() {
        use crate::Protocol;
        assert_eq!(default_for(Protocol::Tcp, 2), Some(CheckSpec::default()));
        assert_eq!(default_for(Protocol::Tcp, 1), None);
        assert_eq!(default_for(Protocol::Udp, 3), None);
    }

    #[test]
    fn a_students_check_runs_at_most_once_a_second() {
        let fast = parse(r#"check = { interval = "999ms" }"#).unwrap();
        let e = fast.student_limits().unwrap_err();
        assert_eq!(e.field, "check.interval");
        assert!(e.reason.contains("999ms"), "{}", e.reason);
        assert!(parse(r#"check = { interval = "1s" }"#)
            .unwrap()
            .student_limits()
            .is_ok());
        assert!(CheckSpec::off().student_limits().is_ok());
    }

    #[test]
    fn the_flags_read_kind_port_and_path() {
        let flags = |check: &str| {
            CheckRequest::from_flags(&CheckFlags {
                check: Some(check),
                ..CheckFlags::default()
            })
        };
        assert_eq!(CheckRequest::from_flags(&CheckFlags::default()), Ok(None));
        let r = flags("http:/healthz").unwrap().unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.path.as_deref(), r.port),
            (Some("http"), Some("/healthz"), None)
        );
        let r = flags("http:8080/s?x=1").unwrap().unwrap();
        assert_eq!((r.port, r.path.as_deref()), (Some(8080), Some("/s?x=1")));
        let r = flags("tcp:8080").unwrap().unwrap();
        assert_eq!((r.kind, r.port), (None, Some(8080)));
        assert_eq!(
            flags("none").unwrap().unwrap().kind.as_deref(),
            Some("none")
        );
        assert_eq!(
            flags("ssh")
                .unwrap()
                .unwrap()
                .check(&|f| f.into())
                .unwrap()
                .kind,
            CheckKind::Ssh
        );
        for bad in [
            "icmp",
            "tcp:/x",
            "http:",
            "http:99999/",
            "ssh:x",
            "http:healthz",
        ] {
            let e = flags(bad).unwrap_err();
            assert!(e.contains("KIND[:PORT][PATH]"), "{bad}: {e}");
        }
        let r = CheckRequest::from_flags(&CheckFlags {
            interval: Some("5s"),
            fall: Some(4),
            ..CheckFlags::default()
        })
        .unwrap()
        .unwrap();
        let spec = r.check(&|f| f.into()).unwrap();
        assert_eq!(
            (spec.kind, spec.interval, spec.fall),
            (CheckKind::Tcp, Duration::from_secs(5), 4)
        );
    }
}
