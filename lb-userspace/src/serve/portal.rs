//! The students' API: JSON over HTTPS on `[portal] listen`, authenticated by a bearer
//! token. Every operation calls the daemon's [`Control`], the same one the root-only
//! control socket calls, so a claim from a student and a `srvgate route add` from root take
//! one path (table, maps, DNS, HTTP router, state file) and are live and durable before the
//! reply.
//!
//! | request                                       | does                                  |
//! |-----------------------------------------------|---------------------------------------|
//! | `GET /v1/me`                                  | the caller's account and routes       |
//! | `GET /v1/me/routes`                           | the caller's routes                   |
//! | `POST /v1/me/routes` + [`ClaimRequest`]       | claims a port (201 + the route)       |
//! | `DELETE /v1/me/routes/SERVICE[?protocol=udp]` | releases it                           |
//! | `/v1/routes...`, `/v1/users...`               | admin tokens only: as the control socket |
//! | `GET /clients/...`                            | the client downloads (`clients`)      |
//! | any other path                                | the web console (`console`)           |
//!
//! Bounds: one request per connection, TLS handshake and request within
//! [`REQUEST_TIMEOUT`], a head of at most [`MAX_HEAD`] and a body of at most [`MAX_BODY`],
//! at most [`MAX_CONNECTIONS`] at once and [`MAX_PER_ADDRESS`] from one client (an IPv4 address
//! or an IPv6 /64, [`ClientKey`]); at the limit a newcomer takes the place of a connection of
//! the client holding the most, if that client holds more than the newcomer's would
//! ([`Admission`]); after [`MAX_FAILURES`] bad tokens from one client within
//! [`FAILURE_WINDOW`] that client gets 429 until the window ends. Every change is
//! logged at info on the `srvgate::audit` target with who, what and from where.
//!
//! Without `cert`/`key` the portal makes a self-signed certificate once and keeps it in the
//! state directory; its SHA-256 fingerprint is logged and shown by `srvgate status`, and
//! `srvgate login` pins it.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use tokio::{io::AsyncWriteExt, net::TcpListener, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    api::{self, Control, Request},
    config::Portal,
    serve::{
        admission::{Admission, ClientKey, Refused, Share},
        clients::Clients,
        console::{self, Console, Logins, WebRequest, WebResponse},
    },
    table::state::{write_atomically, StateError},
};
use lb_model::{
    api::{ApiError, ClaimRequest, PortalInfo},
    cert_fingerprint as fingerprint,
};

pub const MAX_HEAD: usize = 16 * 1024;
pub const MAX_BODY: usize = 64 * 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = crate::kernel::fds::MAX_PORTAL_CONNECTIONS;
/// Connections one address may hold at once, so one slow client cannot take every slot.
pub const MAX_PER_ADDRESS: usize = 16;
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses the failure counter remembers at most; beyond, the oldest windows go first.
const MAX_TRACKED: usize = 10_000;

const CERT_FILE: &str = "portal-cert.pem";
const KEY_FILE: &str = "portal-key.pem";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortalError {
    #[error("portal.listen: cannot listen on {addr}: {error}")]
    Listen { addr: SocketAddr, error: io::Error },
    #[error("{}: {reason}", path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("making the portal's self-signed certificate: {0}")]
    Generate(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The portal's sockets and certificate, ready to serve once the daemon is.
pub struct PortalServer {
    listeners: Vec<TcpListener>,
    acceptor: tokio_rustls::TlsAcceptor,
    info: PortalInfo,
    clients: Clients,
}

impl PortalServer {
    /// Loads (or makes) the certificate and binds every listen address.
    pub async fn bind(cfg: &Portal, state_dir: &Path) -> Result<PortalServer, PortalError> {
        let (certs, key) = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => load_pem(c, k)?,
            _ => self_signed(state_dir, &cfg.listen)?,
        };
        let info = PortalInfo {
            listen: cfg.listen.iter().map(ToString::to_string).collect(),
            fingerprint: fingerprint(certs[0].as_ref()),
            self_signed: cfg.cert.is_none(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| PortalError::Cert {
                path: cfg
                    .cert
                    .clone()
                    .unwrap_or_else(|| state_dir.join(CERT_FILE)),
                reason: format!("not usable for TLS: {e}"),
            })?;
        let mut listeners = Vec::new();
        for &addr in &cfg.listen {
            let l = super::listen::tokio_tcp(addr)
                .map_err(|error| PortalError::Listen { addr, error })?;
            listeners.push(l);
        }
        Ok(PortalServer {
            listeners,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            info,
            clients: Clients::load(&cfg.clients_dir),
        })
    }

    pub fn info(&self) -> &PortalInfo {
        &self.info
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until the returned tasks are aborted.
    pub fn serve(self, control: Arc<dyn Control>) -> Vec<JoinHandle<()>> {
        let connections = crate::kernel::fds::Budget::current().portal_connections();
        self.serve_with(control, connections)
    }

    /// [`PortalServer::serve`] with at most `connections` at once.
    pub fn serve_with(self, control: Arc<dyn Control>, connections: usize) -> Vec<JoinHandle<()>> {
        let shared = Arc::new(Shared {
            control,
            console: Console::default(),
            clients: self.clients,
            acceptor: self.acceptor,
            admission: Admission::new(connections, MAX_PER_ADDRESS, Share::Fewer),
            failures: Mutex::new(Failures::default()),
        });
        self.listeners
            .into_iter()
            .map(|l| tokio::spawn(accept_loop(l, shared.clone())))
            .collect()
    }
}

fn load_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PortalError> {
    let bad = |path: &Path, reason: String| PortalError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, format!("cannot read the certificate: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad(cert, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(key, format!("not a PEM private key: {e}")))?;
    Ok((certs, key))
}

/// The state directory's self-signed certificate, made on first use.
fn self_signed(
    dir: &Path,
    listen: &[SocketAddr],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PortalError> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if cert.exists() && key.exists() {
        return load_pem(&cert, &key);
    }
    let mut names = vec!["srvgate".to_string()];
    names.extend(
        listen
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| ip.to_string()),
    );
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| PortalError::Generate(e.to_string()))?;
    // The key first: a certificate without its key would be loaded next time and fail.
    write_atomically(dir, KEY_FILE, &made.key_pair.serialize_pem())?;
    write_atomically(dir, CERT_FILE, &made.cert.pem())?;
    info!(cert = %cert.display(), "portal: made a self-signed certificate");
    load_pem(&cert, &key)
}

struct Shared {
    control: Arc<dyn Control>,
    console: Console,
    clients: Clients,
    acceptor: tokio_rustls::TlsAcceptor,
    admission: Arc<Admission>,
    failures: Mutex<Failures>,
}

/// Bad-token counts per client ([`ClientKey`]: an IPv6 /64 counts as one), in fixed windows.
#[derive(Default)]
struct Failures {
    by_addr: HashMap<ClientKey, (Instant, u32)>,
}

impl Failures {
    fn blocked(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = ClientKey::of(ip);
        match self.by_addr.get(&ip) {
            Some((start, n)) if now.duration_since(*start) < FAILURE_WINDOW => *n >= MAX_FAILURES,
            Some(_) => {
                self.by_addr.remove(&ip);
                false
            }
            None => false,
        }
    }

    fn failed(&mut self, ip: IpAddr, now: Instant) {
        let ip = ClientKey::of(ip);
        if self.by_addr.len() >= MAX_TRACKED {
            self.by_addr
                .retain(|_, (start, _)| now.duration_since(*start) < FAILURE_WINDOW);
            if self.by_addr.len() >= MAX_TRACKED {
                // Spoofing-proof (TCP) but a botnet could fill it: forget the oldest half.
                let mut starts: Vec<Instant> = self.by_addr.values().map(|v| v.0).collect();
                starts.sort_unstable();
                let cut = starts[starts.len() / 2];
                self.by_addr.retain(|_, (start, _)| *start > cut);
            }
        }
        let e = self.by_addr.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= FAILURE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = crate::kernel::fds::AcceptBackoff::new("portal");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.accepted();
        let mut slot = match shared.admission.admit(peer.ip()) {
            Ok((slot, None)) => slot,
            Ok((slot, Some(e))) => {
                debug!(%peer, from = %e.from, "portal: connection limit reached; ended a connection of the client holding the most");
                slot
            }
            Err(Refused::ClientFull) => {
                debug!(%peer, "portal: {MAX_PER_ADDRESS} connections from this client already; closing");
                continue;
            }
            Err(Refused::Full) => {
                debug!(%peer, "portal: connection limit reached; closing");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let serve = tokio::time::timeout(REQUEST_TIMEOUT, serve_one(stream, peer, &shared));
            tokio::select! {
                r = serve => {
                    if let Ok(Err(e)) = r {
                        debug!(%peer, "portal: {e}");
                    }
                }
                // Dropping the request's future closes its connection.
                () = slot.evicted() => debug!(%peer, "portal: ended for a client holding fewer connections"),
            }
            drop(slot);
        });
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let mut tls = shared.acceptor.accept(stream).await?;
    let response = match api::read_request(&mut tls, MAX_HEAD, MAX_BODY).await {
        Ok((request, _)) if Clients::owns(&request.path) => {
            shared.clients.answer(&request.method, &request.path)
        }
        Ok((request, headers)) if console::owns(&request.path) => {
            let shared = shared.clone();
            let ip = peer.ip();
            tokio::task::spawn_blocking(move || {
                let r = WebRequest {
                    method: &request.method,
                    path: &request.path,
                    query: request.query.as_deref(),
                    body: &request.body,
                    cookie: headers.cookie.as_deref(),
                    fetch_site: headers.fetch_site.as_deref(),
                    from: ip,
                };
                shared.console.answer(&r, &*shared.control, &*shared)
            })
            .await
            .unwrap_or_else(|e| {
                json_response(api::error_body(&ApiError::new(
                    500,
                    format!("the console failed: {e}"),
                )))
            })
        }
        Ok((request, headers)) => {
            json_response(answer(request, headers.token, peer.ip(), shared).await)
        }
        Err(e) => json_response(api::error_body(&e)),
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        api::reason(response.status),
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(&response.body).await?;
    tls.shutdown().await
}

fn json_response((status, body): (u16, Vec<u8>)) -> WebResponse {
    WebResponse {
        status,
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("Cache-Control", "no-store".into()),
        ],
        body,
    }
}

impl Logins for Shared {
    fn blocked(&self, ip: IpAddr) -> bool {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .blocked(ip, Instant::now())
    }
    fn failed(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(ip, Instant::now());
    }
}

async fn answer(
    request: Request,
    token: Option<String>,
    ip: IpAddr,
    shared: &Arc<Shared>,
) -> (u16, Vec<u8>) {
    let now = Instant::now();
    if shared
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .blocked(ip, now)
    {
        return api::error_body(&ApiError::new(
            429,
            format!("too many failed logins from {ip}; wait a minute"),
        ));
    }
    let control = shared.control.clone();
    let caller = match token {
        Some(t) if t.len() <= lb_model::MAX_TOKEN_LEN => {
            let c = control.clone();
            tokio::task::spawn_blocking(move || c.authenticate(&t))
                .await
                .ok()
                .flatten()
        }
        _ => None,
    };
    let Some(caller) = caller else {
        shared
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(ip, now);
        warn!(target: "srvgate::audit", from = %ip, path = %request.path, "portal: refused an invalid or missing token");
        return api::error_body(&ApiError::new(
            401,
            "invalid or missing token (send `Authorization: Bearer <token>`; `srvgate login` saves it)",
        ));
    };
    let action = format!("{} {}", request.method, request.path);
    let mutating = request.method != "GET";
    let who = caller.name.clone();
    let result = tokio::task::spawn_blocking(move || dispatch(request, &caller, &*control)).await;
    let (status, body) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => api::error_body(&e),
        Err(e) => api::error_body(&ApiError::new(500, format!("the operation failed: {e}"))),
    };
    if mutating {
        info!(target: "srvgate::audit", user = %who, from = %ip, action = %action, status, "portal");
    }
    (status, body)
}

fn dispatch(
    r: Request,
    caller: &lb_model::api::Caller,
    control: &dyn Control,
) -> Result<(u16, Vec<u8>), ApiError> {
    let segments: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let me = caller.name.as_str();
    match (r.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "me"]) => Ok((200, api::json(&control.me(me)?))),
        ("GET", ["v1", "me", "routes"]) => Ok((200, api::json(&control.me(me)?.routes))),
        ("POST", ["v1", "me", "routes"]) => {
            let claim: ClaimRequest = api::parse_body(&r.body)?;
            Ok((201, api::json(&control.claim(me, claim)?)))
        }
        ("DELETE", ["v1", "me", "routes", service]) => {
            let protocol = api::query_param(r.query.as_deref(), "protocol");
            Ok((200, api::json(&control.release(me, service, protocol)?)))
        }
        (_, ["v1", "shutdown"]) => Err(ApiError::new(
            403,
            "stopping the gateway is only possible on it (`srvgate down` as root)",
        )),
        (_, ["v1", "routes" | "users", ..]) if caller.admin => api::route_request(r, control),
        (_, ["v1", "routes" | "users", ..]) => Err(ApiError::new(
            403,
            format!("{} needs an admin token; {me} is a student account", r.path),
        )),
        (_, ["v1", "me", ..]) => Err(ApiError::new(
            405,
            format!("{} is not allowed on {}", r.method, r.path),
        )),
        _ => Err(ApiError::new(404, format!("no such endpoint: {}", r.path))),
    }
}

#[cfg(test)]
mod tests;
