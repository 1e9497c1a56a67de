//! The students' account verbs: `srvgate login`, `claim`, `mine` and `release`, talking to
//! the gateway's portal over HTTPS with the token `login` saved.
//!
//! The portal's certificate is usually self-signed, so trust is by its SHA-256 fingerprint:
//! `login` shows it (or checks `--fingerprint`) before the token is ever sent, and every
//! later call accepts that certificate only. Handshake signatures are still verified.

use std::{
    fmt,
    io::{self, BufRead as _, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use lb_model::{
    api::{ClaimRequest, ErrorReply, MeReply, Removed, RouteView},
    text::ways_in,
};

const TIMEOUT: Duration = Duration::from_secs(20);
/// The most of an answer we read: a student with many routes stays far below.
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StudentError {
    /// The portal refused: the message says what and why.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("cannot reach the gateway at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Input(String),
    #[error("{}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
}

impl StudentError {
    /// Refused input, wrong credentials: exit 2. An unreachable gateway, or one that could
    /// not make the change (5xx: e.g. its shared store did not answer): exit 1, try again.
    pub fn is_bad_input(&self) -> bool {
        match self {
            StudentError::Unreachable { .. } => false,
            StudentError::Refused { status, .. } => *status < 500,
            _ => true,
        }
    }
}

/// Where `login` keeps the gateway's address, its fingerprint and the token.
#[derive(clap::Args, Debug, Clone)]
pub struct CredentialsArg {
    /// The credentials file (default: $XDG_CONFIG_HOME/srvgate/credentials.json, or
    /// ~/.config/srvgate/credentials.json).
    #[arg(long, value_name = "FILE", env = "SRVGATE_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  srvgate login https://gw.lab.example:8443
  srvgate login https://10.0.0.1:8443 --token-file token.txt --fingerprint AB:CD:...")]
pub struct LoginArgs {
    /// The gateway's portal, https://HOST[:PORT] (port 8443 unless given).
    pub url: String,
    /// Read the token from this file instead of asking for it (asked on a terminal, it is
    /// not echoed; piped, standard input's first line is read).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The certificate's SHA-256 fingerprint as `srvgate status` on the gateway shows it;
    /// without it login shows the fingerprint and asks.
    #[arg(long, value_name = "SHA256")]
    pub fingerprint: Option<String>,
    #[command(flatten)]
    pub credentials: CredentialsArg,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  srvgate claim ssh --backend 10.0.0.11:22
  srvgate claim game --backend 10.0.0.11:25565 --protocol udp
  srvgate claim http --backend 10.0.0.11:80 --backend '10.0.0.12:80 weight=2'
  srvgate claim --service ssh --backend 10.0.0.11:22
  srvgate claim web --backend 10.0.0.11:80 --backend 10.0.0.12:80 --check http:/healthz

Service names: `http` and `https` are the names the gateway's web routers route by: NAME.http.ZONE
on port 80 (by Host) and NAME.https.ZONE on 443 (by SNI), no port to remember. `ssh` is the one
`srvgate ssh-config` sets up, so that plain `ssh NAME.ssh.ZONE` works. Any other label gets a
public port, found by SRV record (`srvgate mine` shows it).")]
#[command(group(clap::ArgGroup::new("which_service").args(["service", "service_flag"]).required(true)))]
pub struct ClaimArgs {
    /// The service label: your route is NAME.SERVICE.ZONE (`http`, `https` and `ssh` are
    /// special: see below).
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
    /// The same as the positional SERVICE, as `srvgate route add --service` spells it.
    #[arg(long = "service", value_name = "SERVICE")]
    pub service_flag: Option<String>,
    /// Your instance's address:port; repeat for a pool (each `ADDR:PORT[ weight=N]`, every
    /// one yours): new connections are spread over them.
    #[arg(long = "backend", value_name = "ADDR:PORT", required = true)]
    pub backends: Vec<String>,
    /// `tcp` (default) or `udp`.
    #[arg(long)]
    pub protocol: Option<String>,
    /// `v1` or `v2`: the web routers (HTTP by Host, HTTPS by SNI) send a PROXY protocol
    /// header first, so the backend sees the visitor's address. Only for a backend that
    /// expects it (nginx `proxy_protocol`, Apache, HAProxy, caddy).
    #[arg(long, value_name = "VERSION")]
    pub proxy_protocol: Option<String>,
    #[command(flatten)]
    pub check: CheckArgs,
    /// Print the new route as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub credentials: CredentialsArg,
}

/// How a route's backends are health-checked: the same flags for a student's `claim` and
/// the admin's `route add`. Left out: TCP connect for a TCP pool of two or more backends,
/// nothing otherwise.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct CheckArgs {
    /// `tcp`, `tcp:PORT`, `ssh`, `http:/PATH`, `http:PORT/PATH` or `none`: what a backend
    /// must answer to get new connections (PORT: probe that port instead of the backend's;
    /// a UDP route's check needs one).
    #[arg(long, value_name = "KIND[:PORT][PATH]")]
    pub check: Option<String>,
    /// Time between checks (`2s`, `500ms`; a student's at least 1s).
    #[arg(long, value_name = "DURATION")]
    pub check_interval: Option<String>,
    /// A check's answer must come within this, shorter than the interval.
    #[arg(long, value_name = "DURATION")]
    pub check_timeout: Option<String>,
    /// Passed checks in a row that bring a backend back (default 2).
    #[arg(long, value_name = "N")]
    pub check_rise: Option<u32>,
    /// Failed checks in a row that take a backend out (default 3).
    #[arg(long, value_name = "N")]
    pub check_fall: Option<u32>,
}

impl CheckArgs {
    /// The request's `check` field; `None` when no flag was given.
    pub fn request(&self) -> Result<Option<lb_model::check::CheckRequest>, String> {
        lb_model::check::CheckRequest::from_flags(&lb_model::check::CheckFlags {
            check: self.check.as_deref(),
            interval: self.check_interval.as_deref(),
            timeout: self.check_timeout.as_deref(),
            rise: self.check_rise,
            fall: self.check_fall,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct MineArgs {
    /// Print the portal's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub credentials: CredentialsArg,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  srvgate release ssh
  srvgate release --service game --protocol udp")]
#[command(group(clap::ArgGroup::new("which_service").args(["service", "service_flag"]).required(true)))]
pub struct ReleaseArgs {
    /// The service label of the route to give back.
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
    /// The same as the positional SERVICE.
    #[arg(long = "service", value_name = "SERVICE")]
    pub service_flag: Option<String>,
    /// `tcp` (default) or `udp`.
    #[arg(long)]
    pub protocol: Option<String>,
    #[command(flatten)]
    pub credentials: CredentialsArg,
}

/// What `login` saves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub url: String,
    pub fingerprint: String,
    pub token: String,
}

/// `https://HOST[:PORT][/]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalUrl {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for PortalUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

impl PortalUrl {
    pub fn parse(url: &str) -> Result<PortalUrl, StudentError> {
        let bad = |why: &str| {
            StudentError::Input(format!(
                "{url:?} is not a portal URL like https://gw.lab.example:8443 ({why})"
            ))
        };
        if url.len() > 300 {
            return Err(bad("too long"));
        }
        let rest = url
            .strip_prefix("https://")
            .or_else(|| {
                url.get(..8)
                    .filter(|p| p.eq_ignore_ascii_case("https://"))
                    .map(|_| &url[8..])
            })
            .ok_or_else(|| bad("it must start with https://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("give only the host and port"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => 8443,
                None => return Err(bad("junk after ]")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_string(), 8443),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(bad("no host or port"));
        }
        Ok(PortalUrl { host, port })
    }
}

/// `AB:CD:...` upper case from any of `ab:cd...`, `ABCD...` or `SHA256:AB:CD...`.
pub fn normalize_fingerprint(text: &str) -> Result<String, StudentError> {
    let t = text.trim();
    let t = t
        .strip_prefix("SHA256:")
        .or_else(|| t.strip_prefix("sha256:"))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&hex, &mut bytes).map_err(|_| {
        StudentError::Input(format!(
            "{text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        ))
    })?;
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Accepts exactly one certificate (by fingerprint), or with `pinned: None` any
/// certificate, recording what it saw; signatures are checked either way.
#[derive(Debug)]
struct Pinned {
    pinned: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = lb_model::cert_fingerprint(end_entity.as_ref());
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp.clone());
        match &self.pinned {
            Some(p) if *p != fp => Err(rustls::Error::General(format!(
                "the gateway's certificate changed: its fingerprint is {fp}, {p} was pinned at login; if the admin replaced it, run `srvgate login` again"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One HTTPS request to the portal; `pinned: None` only fetches the certificate's
/// fingerprint (no request is sent).
fn exchange(
    url: &PortalUrl,
    pinned: Option<&str>,
    request: Option<(&str, &str, &str, Option<Vec<u8>>)>,
) -> Result<(String, u16, Vec<u8>), StudentError> {
    let unreachable = |reason: String| StudentError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        pinned: pinned.map(str::to_string),
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(url.host.clone())
        .map_err(|_| StudentError::Input(format!("{:?} is not a host name", url.host)))?;
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve {}: {e}", url.host)))?
        .next()
        .ok_or_else(|| unreachable(format!("{} has no address", url.host)))?;
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| unreachable(e.to_string()))?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| unreachable(e.to_string()))?;
    tcp.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| unreachable(e.to_string()))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let tls_error = |e: io::Error| {
        let mismatch = e
            .get_ref()
            .is_some_and(|inner| inner.to_string().contains("certificate changed"));
        if mismatch {
            StudentError::Credentials {
                path: PathBuf::from("the pinned fingerprint"),
                reason: e.to_string(),
            }
        } else {
            unreachable(e.to_string())
        }
    };
    let seen = |v: &Pinned| v.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some((method, path, token, body)) = request else {
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(tls_error)?;
        }
        let fp = seen(&verifier).ok_or_else(|| unreachable("no certificate was sent".into()))?;
        return Ok((fp, 0, Vec::new()));
    };
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.host,
        body.len()
    );
    tls.write_all(head.as_bytes()).map_err(tls_error)?;
    tls.write_all(&body).map_err(tls_error)?;
    let mut answer = Vec::new();
    match io::Read::by_ref(&mut tls)
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
    {
        Ok(_) => {}
        // The portal closes without a TLS close_notify only if it died mid-answer; what
        // arrived is still judged by its length below.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(tls_error(e)),
    }
    let fp = seen(&verifier).unwrap_or_default();
    let (status, body) = parse_answer(&answer).map_err(unreachable)?;
    Ok((fp, status, body))
}

fn parse_answer(answer: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the answer ended early".into()),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = resp.code.ok_or("no status")?;
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = &answer[n..];
    match length {
        Some(l) if body.len() < l => Err("the answer ended early".into()),
        Some(l) => Ok((status, body[..l].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

/// A call with saved credentials; 2xx bodies decode to `T`, others to the portal's reason.
fn call<T: DeserializeOwned>(
    creds: &Credentials,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<T, StudentError> {
    let url = PortalUrl::parse(&creds.url)?;
    let (_, status, body) = exchange(
        &url,
        Some(&creds.fingerprint),
        Some((method, path, &creds.token, body)),
    )?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body).map_err(|e| StudentError::Unreachable {
            url: creds.url.clone(),
            reason: format!("undecodable answer: {e}"),
        });
    }
    let message = serde_json::from_slice::<ErrorReply>(&body)
        .map(|r| r.error)
        .unwrap_or_else(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()));
    let message = match status {
        401 => format!("{message}; your token may have been replaced: ask the admin for a new one and run `srvgate login` again"),
        _ => message,
    };
    Err(StudentError::Refused { status, message })
}

pub fn credentials_path(arg: &CredentialsArg) -> Result<PathBuf, StudentError> {
    if let Some(p) = &arg.credentials {
        return Ok(p.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .or_else(|| std::env::var_os("APPDATA").map(PathBuf::from))
        .ok_or_else(|| {
            StudentError::Input("no HOME (or XDG_CONFIG_HOME): give --credentials FILE".into())
        })?;
    Ok(base.join("srvgate").join("credentials.json"))
}

pub fn load_credentials(arg: &CredentialsArg) -> Result<Credentials, StudentError> {
    let path = credentials_path(arg)?;
    let bad = |reason: String| StudentError::Credentials {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            bad("not logged in: run `srvgate login https://GATEWAY:8443` first".into())
        }
        _ => bad(format!("cannot read: {e}")),
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        bad(format!(
            "not a srvgate credentials file ({e}); run `srvgate login` again"
        ))
    })
}

/// Writes the credentials readable by their owner only (the directory too).
pub fn save_credentials(path: &Path, creds: &Credentials) -> Result<(), StudentError> {
    let bad = |reason: String| StudentError::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir)
            .map_err(|e| bad(format!("cannot create its directory: {e}")))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(&tmp)
        .map_err(|e| bad(format!("cannot write: {e}")))?;
    let text = serde_json::to_string_pretty(creds).unwrap_or_default();
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| bad(format!("cannot write: {e}")))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| bad(format!("cannot write: {e}")))
}

fn read_line(prompt: &str) -> Result<String, StudentError> {
    eprint!("{prompt}");
    let _ = io::stderr().flush();
    let mut line = String::new();
    io::stdin()
        .lock()
        .take(4096)
        .read_line(&mut line)
        .map_err(|e| StudentError::Input(format!("reading standard input: {e}")))?;
    Ok(line.trim().to_string())
}

/// The token from the terminal, not echoed as it is typed (or pasted: it is a secret on a
/// screen others may see); from standard input as a line when that is no terminal, for
/// scripts (`echo $TOKEN | srvgate login URL`).
fn read_token() -> Result<String, StudentError> {
    use std::io::IsTerminal as _;
    if !io::stdin().is_terminal() {
        return read_line("Token: ");
    }
    let token = rpassword::prompt_password("Token (not shown as you type): ")
        .map_err(|e| StudentError::Input(format!("reading the token from the terminal: {e}")))?;
    Ok(token.trim().to_string())
}

/// `--token-file`: the first line, bounded like a typed one.
fn read_token_file(f: &std::path::Path) -> Result<String, StudentError> {
    let unreadable = |e: io::Error| StudentError::Credentials {
        path: f.to_path_buf(),
        reason: format!("cannot read the token: {e}"),
    };
    let mut text = String::new();
    std::fs::File::open(f)
        .map_err(unreadable)?
        .take(4096)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// `srvgate login URL`.
pub fn login(args: LoginArgs) -> Result<(), StudentError> {
    let url = PortalUrl::parse(&args.url)?;
    let path = credentials_path(&args.credentials)?;
    let (seen, _, _) = exchange(&url, None, None)?;
    match &args.fingerprint {
        Some(expected) => {
            let expected = normalize_fingerprint(expected)?;
            if expected != seen {
                return Err(StudentError::Refused {
                    status: 0,
                    message: format!(
                        "the gateway's certificate has fingerprint {seen}, not {expected}: not sending the token (is this the right address?)"
                    ),
                });
            }
        }
        None => {
            eprintln!("The portal's certificate has SHA-256 fingerprint\n  {seen}\nCompare it with what the admin published (`srvgate status` on the gateway shows it).");
            let answer = read_line("Trust it? [y/N] ")?;
            if !matches!(answer.as_str(), "y" | "Y" | "yes") {
                return Err(StudentError::Input(
                    "not trusted; nothing saved (pass --fingerprint to skip the question)".into(),
                ));
            }
        }
    }
    let token = match &args.token_file {
        Some(f) => read_token_file(f)?,
        None => read_token()?,
    };
    if token.is_empty() || token.len() > lb_model::MAX_TOKEN_LEN {
        return Err(StudentError::Input(
            "that is not a srvgate token (sg_NAME_...); the admin's `srvgate user add` printed it"
                .into(),
        ));
    }
    let creds = Credentials {
        url: url.to_string(),
        fingerprint: seen,
        token,
    };
    let me: MeReply = call(&creds, "GET", "/v1/me", None)?;
    save_credentials(&path, &creds)?;
    println!(
        "logged in as {} ({} of {} routes); credentials saved in {}",
        me.user.name,
        me.user.routes,
        me.user.max_routes,
        path.display()
    );
    Ok(())
}

/// SERVICE given positionally or as `--service` (clap's group lets exactly one through).
fn one_service(positional: Option<String>, flag: Option<String>) -> String {
    positional.or(flag).unwrap_or_default()
}

#[cfg(test)]
pub(crate) fn one_service_of_claim(a: &ClaimArgs) -> String {
    one_service(a.service.clone(), a.service_flag.clone())
}

#[cfg(test)]
pub(crate) fn one_service_of_release(a: &ReleaseArgs) -> String {
    one_service(a.service.clone(), a.service_flag.clone())
}

/// `srvgate claim SERVICE --backend ADDR:PORT`.
pub fn claim(args: ClaimArgs) -> Result<(), StudentError> {
    let creds = load_credentials(&args.credentials)?;
    let (backend, backends) = lb_model::backend_fields(args.backends);
    let check = args.check.request().map_err(StudentError::Input)?;
    let body = serde_json::to_vec(&ClaimRequest {
        service: one_service(args.service, args.service_flag),
        backend,
        backends,
        protocol: args.protocol,
        proxy_protocol: args.proxy_protocol,
        check,
    })
    .unwrap_or_default();
    let v: RouteView = call(&creds, "POST", "/v1/me/routes", Some(body))?;
    if args.json {
        crate::print_json(&v);
        return Ok(());
    }
    let me: MeReply = call(&creds, "GET", "/v1/me", None)?;
    println!(
        "{}/{}/{}: public port {} -> {}",
        v.name,
        v.service,
        v.protocol,
        v.port,
        v.pool_text()
    );
    for w in ways_in(&v, &me) {
        println!("  {w}");
    }
    Ok(())
}

/// `srvgate mine`.
pub fn mine(args: MineArgs) -> Result<(), StudentError> {
    let creds = load_credentials(&args.credentials)?;
    let me: MeReply = call(&creds, "GET", "/v1/me", None)?;
    if args.json {
        crate::print_json(&me);
        return Ok(());
    }
    print!("{}", render_mine(&me));
    Ok(())
}

pub fn render_mine(me: &MeReply) -> String {
    let mut out = format!(
        "{}: {} of {} routes\n",
        me.user.name, me.user.routes, me.user.max_routes
    );
    for v in &me.routes {
        let reclaim = v.reclaim_in_seconds.map_or("never".to_string(), |s| {
            lb_model::format_duration(Duration::from_secs(s))
        });
        out.push_str(&format!(
            "{}/{}: port {} -> {}, {} in / {} out bytes, idle {}, reclaimed in {}\n",
            v.service,
            v.protocol,
            v.port,
            v.pool_text(),
            v.inbound_bytes,
            v.outbound_bytes,
            lb_model::format_duration(Duration::from_secs(v.idle_seconds)),
            reclaim
        ));
        for w in ways_in(v, me) {
            out.push_str(&format!("  {w}\n"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for line in lb_model::text::health_board(v, now) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if me.routes.is_empty() {
        out.push_str("no routes; claim one: srvgate claim ssh --backend ADDR:22\n");
    }
    out
}

/// `srvgate release SERVICE`.
pub fn release(args: ReleaseArgs) -> Result<(), StudentError> {
    let service = one_service(args.service, args.service_flag);
    lb_model::check_label(&service).map_err(|e| StudentError::Input(format!("service: {e}")))?;
    let creds = load_credentials(&args.credentials)?;
    let path = match &args.protocol {
        Some(p) => format!("/v1/me/routes/{service}?protocol={}", urlsafe(p)?),
        None => format!("/v1/me/routes/{service}"),
    };
    let removed: Removed = call(&creds, "DELETE", &path, None)?;
    for v in removed.removed {
        println!(
            "released {}/{}/{} (port {})",
            v.name, v.service, v.protocol, v.port
        );
    }
    Ok(())
}

fn urlsafe(p: &str) -> Result<&str, StudentError> {
    match p {
        "tcp" | "udp" => Ok(p),
        other => Err(StudentError::Input(format!(
            "protocol: {other:?} is not a protocol (expected \"tcp\" or \"udp\")"
        ))),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn portal_urls() {
        let u = PortalUrl::parse("https://gw.lab.example:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("gw.lab.example", 8443));
        assert_eq!(PortalUrl::parse("https://10.0.0.1/").unwrap().port, 8443);
        assert_eq!(PortalUrl::parse("HTTPS://10.0.0.1:9").unwrap().port, 9);
        let v6 = PortalUrl::parse("https://[fd00::1]:8443").unwrap();
        assert_eq!(v6.host, "fd00::1");
        assert_eq!(v6.to_string(), "https://[fd00::1]:8443");
        for bad in [
            "http://gw:8443",
            "gw:8443",
            "https://gw:0",
            "https://gw:x",
            "https://gw/v1/me",
            "https://user@gw",
            "https://",
        ] {
            assert!(PortalUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints_in_any_common_spelling() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_fingerprint(&fp.to_lowercase()).unwrap(), fp);
        assert_eq!(normalize_fingerprint(&fp.replace(':', "")).unwrap(), fp);
        assert_eq!(normalize_fingerprint(&format!("SHA256:{fp}")).unwrap(), fp);
        assert!(normalize_fingerprint("AB:CD").is_err());
        assert!(normalize_fingerprint(&"ZZ".repeat(32)).is_err());
    }

    #[test]
    fn credentials_are_private_to_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/srvgate/credentials.json");
        let creds = Credentials {
            url: "https://10.0.0.1:8443".into(),
            fingerprint: "AB".into(),
            token: "sg_alice_x".into(),
        };
        save_credentials(&path, &creds).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let arg = CredentialsArg {
            credentials: Some(path.clone()),
        };
        assert_eq!(load_credentials(&arg).unwrap(), creds);
        std::fs::write(&path, "junk").unwrap();
        assert!(load_credentials(&arg)
            .unwrap_err()
            .to_string()
            .contains("login"));
    }

    #[test]
    fn answers_are_parsed_by_their_length() {
        let a = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope";
        assert_eq!(parse_answer(a).unwrap(), (403, b"nope".to_vec()));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_answer(b"garbage").is_err());
    }
}
