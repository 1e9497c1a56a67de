//! HTTP routing by Host header: `alice.http.<zone>` on the gateway's port 80 reaches the
//! backend of route alice/http, the same route table as DNS and the XDP maps.
//!
//! One connection is one route: the first request's Host header picks the backend, then
//! bytes are copied both ways until either side closes (like a TCP-mode proxy after the
//! choice). A client that sends a second request for another host on the same connection
//! still reaches the first one; browsers open a connection per host anyway. The parsing
//! and matching are small pure functions; the server only moves bytes.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{debug, info};

use crate::config::{self, Protocol};

/// A request head larger than this is refused (431); real ones are well under 8 KiB.
pub const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a backend has to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error response, how long and how much of the client's rest is read and dropped.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Connections served at once; past that, new ones get 503 at once.
const MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("http.listen {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
}

/// Why a request gets an error response instead of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not an HTTP/1.x request head, or no usable Host.
    BadRequest(&'static str),
    /// Well-formed, but no route answers to that host.
    NoRoute(String),
}

/// The host a request head asks for: the Host header (or the authority of an absolute
/// request target), lowercased, without port or trailing dot.
pub fn request_host(head: &[u8]) -> Result<String, Reject> {
    let text = std::str::from_utf8(head).map_err(|_| Reject::BadRequest("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(_method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::BadRequest("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Reject::BadRequest("not HTTP/1.x"));
    }
    let mut host = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Reject::BadRequest("malformed header line"));
        };
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(Reject::BadRequest("more than one Host header"));
            }
            host = Some(value.trim());
        }
    }
    // RFC 9112 3.2.2: an absolute-form target's authority wins over Host.
    let authority = target
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .or(host)
        .ok_or(Reject::BadRequest("no Host header"))?;
    normalize_host(authority).ok_or(Reject::BadRequest("invalid Host header"))
}

/// `Alice.HTTP.lab.example.:80` -> `alice.http.lab.example`; `None` if it is not a name.
fn normalize_host(authority: &str) -> Option<String> {
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| name.to_ascii_lowercase())
}

/// The route name in `host` if it is `NAME.<suffix>` with a single-label NAME.
/// `suffix` is `<service>.<zone>`, lowercase.
pub fn route_name<'a>(host: &'a str, suffix: &str) -> Option<&'a str> {
    let name = host.strip_suffix(suffix)?.strip_suffix('.')?;
    (!name.is_empty() && !name.contains('.')).then_some(name)
}

/// Where the request head ends (the index after its blank line), if it has ended.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A complete error response; the connection is closed after it.
pub fn error_response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The backends that hosts map to, rebuilt on every route change.
struct Routes {
    /// `<service>.<zone>`, lowercase.
    suffix: String,
    service: String,
    backends: ArcSwap<HashMap<String, SocketAddrV4>>,
}

impl Routes {
    fn update(&self, routes: &[config::Route]) {
        let map = routes
            .iter()
            .filter(|r| r.protocol == Protocol::Tcp && r.service == self.service)
            .map(|r| (r.name.to_ascii_lowercase(), r.backend))
            .collect();
        self.backends.store(Arc::new(map));
    }

    fn backend(&self, host: &str) -> Result<SocketAddrV4, Reject> {
        route_name(host, &self.suffix)
            .and_then(|name| self.backends.load().get(name).copied())
            .ok_or_else(|| Reject::NoRoute(host.to_string()))
    }
}

/// The running HTTP router. Dropping it stops accepting; connections in flight finish.
pub struct HttpServer {
    routes: Arc<Routes>,
    addrs: Vec<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds every listen address (all before serving any, so a failure leaves nothing
    /// running) and routes `NAME.<service>.<zone>` to the backends of `routes`.
    pub async fn start(
        cfg: &config::Http,
        zone: &str,
        routes: &[config::Route],
    ) -> Result<HttpServer, HttpError> {
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for &addr in &cfg.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|error| HttpError::Bind { addr, error })?;
            let local = l
                .local_addr()
                .map_err(|error| HttpError::Bind { addr, error })?;
            listeners.push((l, local));
        }
        let shared = Arc::new(Routes {
            suffix: format!("{}.{}", cfg.service, zone).to_ascii_lowercase(),
            service: cfg.service.clone(),
            backends: ArcSwap::from_pointee(HashMap::new()),
        });
        shared.update(routes);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let addrs: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
        let accept_tasks = listeners
            .into_iter()
            .map(|(l, _)| tokio::spawn(accept_loop(l, shared.clone(), slots.clone())))
            .collect();
        info!(hosts = %format!("*.{}", shared.suffix), listen = ?addrs, "HTTP routing by Host header started");
        Ok(HttpServer {
            routes: shared,
            addrs,
            accept_tasks,
        })
    }

    /// Takes the new route table; connections already open keep their backend.
    pub fn update(&self, routes: &[config::Route]) {
        self.routes.update(routes);
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        for t in &self.accept_tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, routes: Arc<Routes>, slots: Arc<Semaphore>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning.
                debug!(%error, "HTTP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let reply = error_response(503, "Service Unavailable", "too many connections\n");
            tokio::spawn(async move {
                let _ = reject(client, &reply).await;
            });
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            if let Err(error) = serve(client, &routes).await {
                debug!(%peer, %error, "HTTP connection");
            }
            drop(permit);
        });
    }
}

/// One client connection: read the head, pick the backend, then relay both ways.
async fn serve(mut client: TcpStream, routes: &Routes) -> io::Result<()> {
    let mut buf = Vec::with_capacity(2048);
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client, &mut buf)).await;
    let end = match head {
        Err(_) => {
            let r = error_response(408, "Request Timeout", "no request head in time\n");
            return reject(client, &r).await;
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
            let r = error_response(431, "Request Header Fields Too Large", "head too large\n");
            return reject(client, &r).await;
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => return Ok(()), // closed before sending a request
        Ok(Ok(Some(end))) => end,
    };
    let backend = match request_host(&buf[..end]).and_then(|h| routes.backend(&h)) {
        Ok(b) => b,
        Err(Reject::BadRequest(why)) => {
            let r = error_response(400, "Bad Request", &format!("{why}\n"));
            return reject(client, &r).await;
        }
        Err(Reject::NoRoute(host)) => {
            let body = format!("no route for host {host}\n");
            return reject(client, &error_response(404, "Not Found", &body)).await;
        }
    };
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await;
    let mut upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let body = format!("backend {backend}: {e}\n");
            return reject(client, &error_response(502, "Bad Gateway", &body)).await;
        }
        Err(_) => {
            let body = format!("backend {backend} did not answer\n");
            return reject(client, &error_response(504, "Gateway Timeout", &body)).await;
        }
    };
    // Everything read so far: the head and whatever of the body came with it.
    upstream.write_all(&buf).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Sends an error response and closes gently: FIN first, then what the client still sends
/// is read and discarded for a moment, because closing with unread data makes the kernel
/// send a RST, which can destroy the response before the client has read it.
async fn reject(mut client: TcpStream, response: &[u8]) -> io::Result<()> {
    client.write_all(response).await?;
    client.shutdown().await?;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    Ok(())
}

/// Reads until the head is complete; `None` if the client closed first. A head longer
/// than [`MAX_HEAD`] is an `InvalidData` error.
async fn read_head(client: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut chunk = [0u8; 4096];
    loop {
        let end = head_len(buf);
        if end.unwrap_or(buf.len()) > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        if end.is_some() {
            return Ok(end);
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests;
