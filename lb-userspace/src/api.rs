//! The control API: JSON over a minimal HTTP/1.1 on a Unix socket, and the client the CLI
//! verbs (`srvgate route ...`, `status`, `down`) use.
//!
//! | request                               | does                                          |
//! |---------------------------------------|-----------------------------------------------|
//! | `GET /v1/routes`                      | every route with its counters ([`RoutesReply`]) |
//! | `POST /v1/routes` + [`RouteRequest`]  | adds a runtime route (201 + [`RouteView`])    |
//! | `DELETE /v1/routes/NAME[?service=S]`  | removes NAME's runtime routes ([`Removed`])   |
//! | `POST /v1/shutdown` + [`Shutdown`]    | stops the daemon, detaching XDP if asked     |
//! | `GET /v1/users`                       | every account ([`UsersReply`])                |
//! | `POST /v1/users` + [`UserRequest`]    | adds a student, returns its token ([`TokenReply`]) |
//! | `DELETE /v1/users/NAME[?with_routes=true]` | removes an account (and its routes)      |
//! | `POST /v1/users/NAME/token`           | a new token; the old one stops working        |
//!
//! The students' verbs (`/v1/me...`) are served by `portal` over HTTPS with a token; they
//! call the same [`Control`] methods with the caller's name, so there is one path per
//! operation whoever asks.
//!
//! Errors are `{"error": "...", "field": "port"}` with 400 (invalid input, naming the
//! field), 403 (not root), 404, 409 (clashes with what exists) or 500.
//!
//! Only root may talk to it, checked twice: the socket lives in a 0700 directory with mode
//! 0600, and the server reads the peer's uid from the kernel (`SO_PEERCRED`) and refuses
//! anyone but uid 0, so loosened file modes alone do not open it.

use std::{
    io::{self, Read as _, Write as _},
    os::unix::{fs::DirBuilderExt, fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

pub use crate::config::RouteRequest;
pub use crate::users::UserView;

/// Where `srvgate run` listens and the CLI connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/srvgate/control.sock";
/// Largest request the server reads.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One route as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub name: String,
    pub service: String,
    pub protocol: String,
    /// Public port on `public_ipv4`.
    pub port: u16,
    pub backend: String,
    /// `"config"` or `"runtime"`.
    pub source: String,
    /// When the route was added (or, for config routes, loaded), Unix seconds.
    pub added_unix: u64,
    /// The last packet forwarded either way, Unix seconds; absent if none yet.
    pub last_seen_unix: Option<u64>,
    /// Seconds since the last packet, else since the route was added.
    pub idle_seconds: u64,
    /// Seconds until the route is reclaimed, for runtime routes when reclaiming is on.
    pub reclaim_in_seconds: Option<u64>,
    pub inbound_packets: u64,
    pub outbound_packets: u64,
    pub inbound_bytes: u64,
    pub outbound_bytes: u64,
}

/// `GET /v1/routes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesReply {
    pub public_ipv4: String,
    pub port_range: String,
    /// Ports of the range no route uses in either protocol.
    pub free_ports: u32,
    /// As in the config (`"14d"`), absent when reclaiming is off.
    pub reclaim_after: Option<String>,
    /// The students' HTTPS API and its certificate's fingerprint, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<crate::portal::PortalInfo>,
    pub routes: Vec<RouteView>,
}

/// `DELETE /v1/routes/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: Vec<RouteView>,
}

/// `POST /v1/shutdown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    /// Detach XDP and remove the pinned objects, as `--detach-on-exit` would.
    pub detach: bool,
}

/// `POST /v1/users`: a new account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub name: String,
    /// Backend rules: `10.0.0.11`, `10.0.0.11:22`, `10.0.1.0/28`, `10.0.1.0/28:22`.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Routes the student may hold; `users::DEFAULT_MAX_ROUTES` if absent.
    #[serde(default)]
    pub max_routes: Option<u32>,
    #[serde(default)]
    pub admin: bool,
}

/// An account and the token just issued for it (shown once, never stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReply {
    pub user: UserView,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersReply {
    pub users: Vec<UserView>,
}

/// A student's claim: the name is theirs, the port comes from the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub service: String,
    pub backend: String,
    /// `"tcp"` (the default) or `"udp"`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `GET /v1/me`: who the token belongs to, and where their routes are reachable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeReply {
    pub user: UserView,
    pub public_ipv4: String,
    /// The DNS zone, when the gateway serves one.
    #[serde(default)]
    pub zone: Option<String>,
    pub routes: Vec<RouteView>,
}

/// The account a token authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A refused or failed operation, as the server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub reply: ErrorReply,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        ApiError {
            status,
            reply: ErrorReply {
                error: error.into(),
                field: None,
            },
        }
    }
    pub fn field(status: u16, field: impl Into<String>, error: impl Into<String>) -> Self {
        ApiError {
            status,
            reply: ErrorReply {
                error: error.into(),
                field: Some(field.into()),
            },
        }
    }
}

/// What the daemon does for the API. Calls may block briefly (map updates, an fsync); the
/// server runs them off the async threads.
pub trait Control: Send + Sync + 'static {
    fn list(&self) -> RoutesReply;
    fn add(&self, request: RouteRequest) -> Result<RouteView, ApiError>;
    fn remove(&self, name: &str, service: Option<&str>) -> Result<Removed, ApiError>;
    fn shutdown(&self, request: Shutdown);
    fn users(&self) -> UsersReply;
    fn user_add(&self, request: UserRequest) -> Result<TokenReply, ApiError>;
    fn user_remove(&self, name: &str, with_routes: bool) -> Result<UserView, ApiError>;
    fn user_token(&self, name: &str) -> Result<TokenReply, ApiError>;
    /// The account `token` belongs to; `None` for any token that is not current.
    fn authenticate(&self, token: &str) -> Option<Caller>;
    fn me(&self, caller: &str) -> Result<MeReply, ApiError>;
    /// Adds a route named after `caller`, confined to their backends and quota.
    fn claim(&self, caller: &str, request: ClaimRequest) -> Result<RouteView, ApiError>;
    /// Removes `caller`'s route for `service` (tcp unless `protocol`).
    fn release(
        &self,
        caller: &str,
        service: &str,
        protocol: Option<&str>,
    ) -> Result<Removed, ApiError>;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiBindError {
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    #[error("{}: another srvgate is already listening on this control socket; stop it first, or give this one its own --socket", path.display())]
    InUse { path: PathBuf },
}

/// Binds the control socket at `path`: creates its directory (mode 0700) if missing,
/// replaces a stale socket left by a daemon that died, refuses one a live daemon answers
/// on, and leaves the socket at mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ApiBindError> {
    let io = |action: &'static str| {
        move |error| ApiBindError::Io {
            path: path.to_path_buf(),
            action,
            error,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("create the socket's directory"))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(_) => {
            if StdUnixStream::connect(path).is_ok() {
                return Err(ApiBindError::InUse {
                    path: path.to_path_buf(),
                });
            }
            // Nobody answers: the socket of a daemon that was killed.
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io("inspect the socket path")(error)),
    }
    let listener = UnixListener::bind(path).map_err(io("listen on the control socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("set the control socket's mode to 0600"))?;
    Ok(listener)
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, control: Arc<dyn Control>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, control).await {
                debug!("control client went away: {e}");
            }
        });
    }
}

/// One parsed request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) body: Vec<u8>,
}

async fn handle(mut stream: UnixStream, control: Arc<dyn Control>) -> io::Result<()> {
    // The kernel's word on who connected, taken at connect time: file modes can be loosened
    // by mistake, this cannot.
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let request = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await;
    let (status, body) = match (uid, request) {
        (Some(0), Ok(Ok(r))) => dispatch(r, control).await,
        (Some(0), Ok(Err(e))) => error_body(&ApiError::new(400, e)),
        (Some(0), Err(_)) => error_body(&ApiError::new(408, "request not received in time")),
        (uid, _) => {
            let who = uid.map_or("unknown".to_string(), |u| u.to_string());
            warn!(uid = %who, "control socket: refused a client that is not root");
            error_body(&ApiError::new(
                403,
                format!("permission denied: only root may use the srvgate control socket (you are uid {who})"),
            ))
        }
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(request) = parse_request(&buf)? {
            return Ok(request);
        }
        if buf.len() > MAX_REQUEST {
            return Err(format!("request larger than {MAX_REQUEST} bytes"));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("connection closed before the request was complete".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a complete HTTP/1.1 request from `buf`; `Ok(None)` while more bytes are needed.
fn parse_request(buf: &[u8]) -> Result<Option<Request>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(_version)) = (first.next(), first.next(), first.next())
    else {
        return Err("malformed request line".into());
    };
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| "bad Content-Length".to_string())?;
            }
        }
    }
    if length > MAX_REQUEST {
        return Err(format!("request body larger than {MAX_REQUEST} bytes"));
    }
    let body_start = end + 4;
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Ok(Some(Request {
        method: method.to_string(),
        path,
        query,
        body: buf[body_start..body_start + length].to_vec(),
    }))
}

pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn dispatch(r: Request, control: Arc<dyn Control>) -> (u16, Vec<u8>) {
    let result = tokio::task::spawn_blocking(move || route_request(r, &*control)).await;
    match result {
        Ok(Ok((status, body))) => (status, body),
        Ok(Err(e)) => error_body(&e),
        Err(e) => error_body(&ApiError::new(500, format!("the operation failed: {e}"))),
    }
}

pub(crate) fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our reply types are plain strings and numbers: serialising cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn error_body(e: &ApiError) -> (u16, Vec<u8>) {
    (e.status, json(&e.reply))
}

pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("bad request body: {e}")))
}

pub(crate) fn route_request(r: Request, control: &dyn Control) -> Result<(u16, Vec<u8>), ApiError> {
    let segments: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    match (r.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "routes"]) => Ok((200, json(&control.list()))),
        ("POST", ["v1", "routes"]) => {
            let request: RouteRequest = parse_body(&r.body)?;
            Ok((201, json(&control.add(request)?)))
        }
        ("DELETE", ["v1", "routes", name]) => {
            let service = query_param(r.query.as_deref(), "service");
            Ok((200, json(&control.remove(name, service)?)))
        }
        ("POST", ["v1", "shutdown"]) => {
            let request: Shutdown = parse_body(&r.body)?;
            control.shutdown(request);
            Ok((202, json(&request)))
        }
        ("GET", ["v1", "users"]) => Ok((200, json(&control.users()))),
        ("POST", ["v1", "users"]) => {
            let request: UserRequest = parse_body(&r.body)?;
            Ok((201, json(&control.user_add(request)?)))
        }
        ("DELETE", ["v1", "users", name]) => {
            let with_routes = query_param(r.query.as_deref(), "with_routes") == Some("true");
            Ok((200, json(&control.user_remove(name, with_routes)?)))
        }
        ("POST", ["v1", "users", name, "token"]) => Ok((200, json(&control.user_token(name)?))),
        (
            _,
            ["v1", "routes"]
            | ["v1", "routes", _]
            | ["v1", "shutdown"]
            | ["v1", "users"]
            | ["v1", "users", _]
            | ["v1", "users", _, "token"],
        ) => Err(ApiError::new(
            405,
            format!("{} is not allowed on {}", r.method, r.path),
        )),
        _ => Err(ApiError::new(404, format!("no such endpoint: {}", r.path))),
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        401 => "Unauthorized",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("{}: cannot connect to srvgate's control socket: {error}{hint}", socket.display())]
    Connect {
        socket: PathBuf,
        error: io::Error,
        hint: &'static str,
    },
    #[error("{}: {error} (talking to srvgate)", socket.display())]
    Io { socket: PathBuf, error: io::Error },
    /// The daemon refused or failed the operation; its message names the field when there
    /// is one.
    #[error("{}", reply.error)]
    Refused { status: u16, reply: ErrorReply },
    #[error("srvgate answered something unexpected: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the caller's input (or privileges) is at fault rather than the daemon.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => (400..500).contains(status),
            ClientError::Connect { error, .. } => {
                matches!(error.kind(), io::ErrorKind::PermissionDenied)
            }
            _ => false,
        }
    }

    /// Whether no daemon is listening on the socket.
    pub fn no_daemon(&self) -> bool {
        matches!(self, ClientError::Connect { error, .. }
            if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused))
    }
}

/// A blocking client for the CLI verbs.
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn list(&self) -> Result<RoutesReply, ClientError> {
        self.call("GET", "/v1/routes", None)
    }

    pub fn add(&self, request: &RouteRequest) -> Result<RouteView, ClientError> {
        self.call("POST", "/v1/routes", Some(json(request)))
    }

    /// `name` must be a valid label (the CLI checks it), so it needs no escaping in a path.
    pub fn remove(&self, name: &str, service: Option<&str>) -> Result<Removed, ClientError> {
        let path = match service {
            Some(s) => format!("/v1/routes/{name}?service={s}"),
            None => format!("/v1/routes/{name}"),
        };
        self.call("DELETE", &path, None)
    }

    pub fn shutdown(&self, request: Shutdown) -> Result<Shutdown, ClientError> {
        self.call("POST", "/v1/shutdown", Some(json(&request)))
    }

    pub fn users(&self) -> Result<UsersReply, ClientError> {
        self.call("GET", "/v1/users", None)
    }

    pub fn user_add(&self, request: &UserRequest) -> Result<TokenReply, ClientError> {
        self.call("POST", "/v1/users", Some(json(request)))
    }

    /// `name` must be a valid label (the CLI checks it).
    pub fn user_remove(&self, name: &str, with_routes: bool) -> Result<UserView, ClientError> {
        let q = if with_routes { "?with_routes=true" } else { "" };
        self.call("DELETE", &format!("/v1/users/{name}{q}"), None)
    }

    pub fn user_token(&self, name: &str) -> Result<TokenReply, ClientError> {
        self.call("POST", &format!("/v1/users/{name}/token"), None)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let mut stream =
            StdUnixStream::connect(&self.socket).map_err(|error| ClientError::Connect {
                hint: connect_hint(&error),
                socket: self.socket.clone(),
                error,
            })?;
        let io = |error| ClientError::Io {
            socket: self.socket.clone(),
            error,
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: srvgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(&body).map_err(io)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(io)?;
        let (status, body) = parse_response(&answer)?;
        if (200..300).contains(&status) {
            serde_json::from_slice(body)
                .map_err(|e| ClientError::Protocol(format!("undecodable answer ({e})")))
        } else {
            let reply = serde_json::from_slice(body).unwrap_or_else(|_| ErrorReply {
                error: format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
                field: None,
            });
            Err(ClientError::Refused { status, reply })
        }
    }
}

fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "; is srvgate running? (`srvgate run` creates the socket; pass --socket if it uses another path)"
        }
        io::ErrorKind::ConnectionRefused => {
            "; nobody listens there: srvgate is not running (this socket was left by a daemon that stopped)"
        }
        io::ErrorKind::PermissionDenied => {
            "; permission denied: the control socket is for root only; run this with sudo"
        }
        _ => "",
    }
}

fn parse_response(answer: &[u8]) -> Result<(u16, &[u8]), ClientError> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol("no HTTP header in the answer".into()))?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line {head:?}")))?;
    Ok((status, &answer[end + 4..]))
}

#[cfg(test)]
mod tests;
