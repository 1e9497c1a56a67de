//! The control socket's server and blocking client (see the parent module): binding it (a
//! 0700 directory, mode 0600), the root-only check on every connection (the peer's uid from
//! `SO_PEERCRED`), and `route_request`, the one router of the control API's paths, which the
//! portal uses for admin tokens too.

use std::{
    io::{self, Read as _, Write as _},
    os::unix::{fs::DirBuilderExt, fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use super::*;
use lb_model::api::ErrorReply;

/// Largest request the server reads.
const MAX_REQUEST: usize = 64 * 1024;
/// The largest request head (request line and headers) the control socket reads.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
    let mut backoff = crate::kernel::fds::AcceptBackoff::new("control socket");
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.accepted();
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
    let request = tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_request(&mut stream, MAX_HEAD, MAX_REQUEST),
    )
    .await;
    let (status, body) = match (uid, request) {
        (Some(0), Ok(Ok((r, _)))) => dispatch(r, control).await,
        (Some(0), Ok(Err(e))) => error_body(&e),
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
            let protocol = query_param(r.query.as_deref(), "protocol")
                .map(|p| {
                    p.parse::<lb_model::Protocol>()
                        .map_err(|e| ApiError::field(400, "protocol", e))
                })
                .transpose()?;
            Ok((200, json(&control.remove(name, service, protocol)?)))
        }
        ("POST", ["v1", "routes", name, "drain"]) => {
            let request: DrainRequest = parse_body(&r.body)?;
            Ok((200, json(&control.drain(name, request)?)))
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
        ("GET", ["v1", "backup"]) => Ok((
            200,
            crate::table::state::backup::render(&control.backup()).into_bytes(),
        )),
        (
            _,
            ["v1", "routes"]
            | ["v1", "routes", _]
            | ["v1", "routes", _, "drain"]
            | ["v1", "shutdown"]
            | ["v1", "users"]
            | ["v1", "users", _]
            | ["v1", "users", _, "token"]
            | ["v1", "backup"],
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
        // The console's answer to a form: GET the page it names.
        303 => "See Other",
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
    pub fn remove(
        &self,
        name: &str,
        service: Option<&str>,
        protocol: Option<lb_model::Protocol>,
    ) -> Result<Removed, ClientError> {
        let query: Vec<String> = service
            .map(|s| format!("service={s}"))
            .into_iter()
            .chain(protocol.map(|p| format!("protocol={p}")))
            .collect();
        let path = match query.is_empty() {
            true => format!("/v1/routes/{name}"),
            false => format!("/v1/routes/{name}?{}", query.join("&")),
        };
        self.call("DELETE", &path, None)
    }

    pub fn drain(&self, name: &str, request: &DrainRequest) -> Result<RouteView, ClientError> {
        self.call(
            "POST",
            &format!("/v1/routes/{name}/drain"),
            Some(json(request)),
        )
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

    /// The runtime routes and accounts as a backup document (see `state::backup`).
    pub fn backup(&self) -> Result<Vec<u8>, ClientError> {
        self.call_raw("GET", "/v1/backup", None)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let body = self.call_raw(method, path, body)?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("undecodable answer ({e})")))
    }

    /// A successful answer's body as it came.
    fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, ClientError> {
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
            Ok(body.to_vec())
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
