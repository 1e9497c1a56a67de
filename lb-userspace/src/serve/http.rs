//! HTTP routing by Host header: `alice.http.<zone>` on the gateway's port 80 reaches the
//! backend of route alice/http, the same route table as DNS and the XDP maps.
//!
//! Every request is routed on its own: the router reads each request head (`http::head`),
//! picks a backend of that request's host (of the route's usable backends, the one with the
//! fewest requests outstanding, round robin among equals: `web::balance`; the next one when
//! a connect fails), sends it the rebuilt head and the body as framed by the head, and
//! relays the response, framed by its own head, before it reads the next request. A request
//! for another host, or picked for another backend, goes over another backend connection;
//! one backend never sees another host's request. A backend connection is reused only for
//! the same backend and only after a response that ended where its head said. A 101 to an
//! upgrade request turns the connection into a tunnel to that backend, counted outstanding
//! until it closes. Errors are complete responses that name no internal address (the log
//! has it).

pub mod head;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::Semaphore,
};
use tracing::{debug, info};

use crate::{
    config::{self, WebLimits},
    serve::web::{
        self, proxy_header, Activity, Failure, Peers, Reader, Refused, Router, RouterCore,
        RouterServer, Stats,
    },
};

pub use head::{normalize_host, parse_request, parse_response, Body, Reject, MAX_REQUEST_HEAD};

/// Time a backend has to start its response, and between reads of a body.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an upgraded connection (a WebSocket) may carry nothing either way.
const TUNNEL_IDLE: Duration = Duration::from_secs(300);
/// After an error response, how long and how much of the client's rest is read and dropped.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Refused clients told why at once; past that (a flood) they are closed without a page, so
/// refusing never holds more descriptors than this.
const MAX_REFUSING: usize = 64;
/// A chunk-size line or a trailer section longer than this is a broken message.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("{section}.listen {addr}: {error}")]
    Bind {
        section: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
}

/// Binds every address (all before serving any, so a failure leaves nothing running).
pub async fn bind_all(
    section: &'static str,
    addrs: &[SocketAddr],
) -> Result<Vec<(TcpListener, SocketAddr)>, HttpError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let bind = |error| HttpError::Bind {
            section,
            addr,
            error,
        };
        let l = super::listen::tokio_tcp(addr).map_err(bind)?;
        let local = l.local_addr().map_err(bind)?;
        listeners.push((l, local));
    }
    Ok(listeners)
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

/// The page for a failure, naming what went wrong for the client but nothing inside.
fn failure_page(f: Failure, detail: &str) -> Vec<u8> {
    let (status, reason, body) = match f {
        Failure::BadRequest => (400, "Bad Request", format!("bad request: {detail}\n")),
        Failure::HeadTooLarge => (
            431,
            "Request Header Fields Too Large",
            "request head too large\n".into(),
        ),
        Failure::HeaderTimeout => (408, "Request Timeout", "no request head in time\n".into()),
        Failure::NoRoute => (404, "Not Found", format!("no route for host {detail}\n")),
        // An evicted connection is closed, not answered; the page is the same.
        Failure::Full | Failure::Evicted => (
            503,
            "Service Unavailable",
            "too many connections; try again later\n".into(),
        ),
        Failure::ClientFull => (
            429,
            "Too Many Requests",
            "too many connections from your address\n".into(),
        ),
        Failure::BackendRefused => (
            502,
            "Bad Gateway",
            format!("the server of {detail} cannot be reached\n"),
        ),
        Failure::BackendTimeout => (
            504,
            "Gateway Timeout",
            format!("the server of {detail} did not answer in time\n"),
        ),
        Failure::BadResponse => (
            502,
            "Bad Gateway",
            format!("the server of {detail} sent a broken response\n"),
        ),
        Failure::NoSni => (400, "Bad Request", "no server name\n".into()),
    };
    error_response(status, reason, &body)
}

/// The HTTP router's state, shared by its connections.
pub struct HttpRouter {
    core: RouterCore,
    forwarded_for: bool,
    refusing: Arc<Semaphore>,
    /// `[http] redirect_https`: the certificate whose names are sent to HTTPS.
    redirect: std::sync::OnceLock<Arc<crate::serve::acme::Certs>>,
}

impl HttpRouter {
    /// Sends the names `certs` covers to `https://` from now on (`redirect_https`).
    pub fn redirect_to_https(&self, certs: Arc<crate::serve::acme::Certs>) {
        let _ = self.redirect.set(certs);
    }
}

/// A 308 to the same request over HTTPS; the connection is closed after it.
fn redirect_page(host: &str, path: &str) -> Vec<u8> {
    let path = if path.starts_with('/') { path } else { "/" };
    let location = format!("https://{host}{path}");
    format!(
        "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{location}\n",
        location.len() + 1
    )
    .into_bytes()
}

/// The running HTTP router.
pub type HttpServer = RouterServer<HttpRouter>;

impl RouterServer<HttpRouter> {
    /// Binds every listen address and routes `NAME.<service>.<zone>` to the backends of
    /// `routes`.
    pub async fn start(
        cfg: &config::Http,
        zone: &str,
        routes: &[lb_model::Route],
    ) -> Result<HttpServer, HttpError> {
        let listeners = bind_all("http", &cfg.listen).await?;
        let suffix = format!("{}.{}", cfg.service, zone).to_ascii_lowercase();
        let server = RouterServer::spawn(
            listeners,
            Arc::new(HttpRouter {
                core: RouterCore::new(&cfg.service, vec![suffix], routes, &cfg.limits),
                forwarded_for: cfg.forwarded_for,
                refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
                redirect: std::sync::OnceLock::new(),
            }),
        );
        info!(hosts = %server.shared().core.hosts.patterns(), listen = ?server.local_addrs(), "HTTP routing by Host header started");
        Ok(server)
    }
}

impl Router for HttpRouter {
    const NAME: &'static str = "http";
    const WHAT: &'static str = "HTTP router";

    fn core(&self) -> &RouterCore {
        &self.core
    }

    async fn serve(self: Arc<Self>, client: TcpStream, peers: Peers, activity: Arc<Activity>) {
        serve(client, peers, &self, &activity).await;
    }

    fn refuse(self: &Arc<Self>, client: TcpStream, peer: SocketAddr, refused: Refused) {
        if refused == Refused::Full {
            debug!(%peer, "HTTP: max_connections reached");
        }
        // Each holds one descriptor for at most LINGER_TIME.
        if let Ok(permit) = self.refusing.clone().try_acquire_owned() {
            tokio::spawn(async move {
                let _ = reject(client, &failure_page(refused.into(), "")).await;
                drop(permit);
            });
        }
    }
}

/// How one connection ended.
enum End {
    /// Closed: by the client, after a response that asked for it, or on a transfer error.
    Close,
    /// Send this page, then close gently.
    Refuse(Vec<u8>),
}

/// A connection to the backend of the current request, kept for the next one if it is for
/// the same backend.
struct Upstream {
    addr: std::net::SocketAddrV4,
    rd: Reader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

async fn serve(mut client: TcpStream, peers: Peers, shared: &HttpRouter, activity: &Arc<Activity>) {
    let _ = client.set_nodelay(true);
    let end = {
        let (cr, mut cw) = client.split();
        let mut cr = Reader::watched(cr, activity);
        exchanges(&mut cr, &mut cw, peers, shared, activity).await
    };
    if let End::Refuse(page) = end {
        let _ = reject(client, &page).await;
    }
}

/// Serves requests one after the other until the connection ends.
async fn exchanges<R, W>(
    cr: &mut Reader<R>,
    cw: &mut W,
    peers: Peers,
    shared: &HttpRouter,
    activity: &Arc<Activity>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let stats = &shared.core.stats;
    let limits = &shared.core.limits;
    let mut upstream: Option<Upstream> = None;
    let mut first = true;
    loop {
        let req = match read_request(cr, first, limits).await {
            Ok(Some(r)) => r,
            Ok(None) => return End::Close,
            Err(f) => {
                stats.failed(f);
                return End::Refuse(failure_page(f, ""));
            }
        };
        first = false;
        let req = match req {
            Ok(r) => r,
            Err(reject) => {
                stats.failed(Failure::BadRequest);
                let (status, reason) = reject.status();
                let why = reject.reason();
                debug!(client = %peers.client, why, "HTTP request refused");
                let body = if status == 400 {
                    format!("bad request: {why}\n")
                } else {
                    format!("{why}\n")
                };
                return End::Refuse(error_response(status, reason, &body));
            }
        };
        if let Some(certs) = shared.redirect.get() {
            if certs.resolve(Some(&req.host)).is_some() {
                return End::Refuse(redirect_page(&req.host, &req.path));
            }
        }
        let Some(lease) = shared
            .core
            .hosts
            .pool(&req.host)
            .and_then(|pool| Some((pool.pick(&[])?, pool)))
        else {
            stats.failed(Failure::NoRoute);
            return End::Refuse(failure_page(Failure::NoRoute, &req.host));
        };
        cr.consume(req.len);

        // Each request goes where the pool says (the lease counts it as outstanding until
        // its response ended); the connection of the previous one is kept only when the
        // pick is its backend again.
        let (lease, pool) = lease;
        if upstream
            .as_ref()
            .is_some_and(|u| u.addr != lease.backend.addr || !reusable(u))
        {
            upstream = None;
        }
        let (lease, up) = match upstream.take() {
            Some(u) => (lease, u),
            None => match web::connect_pool(&pool, lease, &req.host).await {
                Ok((lease, s)) => {
                    let backend = lease.backend;
                    let (rd, mut wr) = s.into_split();
                    if let Some(v) = backend.proxy_protocol {
                        let h = proxy_header::encode(v, peers.client, peers.local);
                        if let Err(error) = web::write_all(&mut wr, &h, limits.idle_timeout).await {
                            info!(backend = %backend.addr, host = req.host, %error, "HTTP backend");
                            stats.failed(Failure::BackendRefused);
                            return End::Refuse(failure_page(Failure::BackendRefused, &req.host));
                        }
                    }
                    let up = Upstream {
                        addr: backend.addr,
                        rd: Reader::watched(rd, activity),
                        wr,
                    };
                    (lease, up)
                }
                Err((error, tried)) => {
                    let f = web::connect_failure(&error);
                    info!(backends = ?tried, host = req.host, %error, "HTTP backend cannot be reached");
                    stats.failed(f);
                    return End::Refuse(failure_page(f, &req.host));
                }
            },
        };
        let backend = lease.backend;
        let mut up = up;
        Stats::count(&stats.requests, 1);
        let forwarded = shared.forwarded_for.then_some(peers.client.ip());
        let head = req.head_for_backend(forwarded);

        let send = async {
            web::write_all(&mut up.wr, &head, limits.idle_timeout).await?;
            copy_body(
                cr,
                &mut up.wr,
                req.body,
                limits.idle_timeout,
                &stats.bytes_from_clients,
            )
            .await
        };
        let relay = relay_response(&mut up.rd, cw, &req, &stats.bytes_to_clients);
        let (sent, relayed) = tokio::join!(send, relay);
        let outcome = match relayed {
            Ok(o) => o,
            Err((error, replied)) => {
                info!(backend = %backend.addr, host = req.host, %error, "HTTP backend response");
                let f = if error.kind() == io::ErrorKind::TimedOut {
                    Failure::BackendTimeout
                } else {
                    Failure::BadResponse
                };
                stats.failed(f);
                return if replied {
                    End::Close
                } else {
                    End::Refuse(failure_page(f, &req.host))
                };
            }
        };
        if let Err(error) = sent {
            // The response is complete but the request body did not all arrive: the next
            // bytes of this connection would be the body's rest, not a request.
            debug!(client = %peers.client, %error, "HTTP request body");
            return End::Close;
        }
        match outcome {
            Outcome::Upgraded => {
                tunnel(cr, cw, &mut up, stats).await;
                return End::Close;
            }
            Outcome::Done { close } => {
                if close || req.close {
                    return End::Close;
                }
                upstream = Some(up);
            }
        }
    }
}

/// Whether a backend connection can carry the next request: nothing arrived after the
/// response (bytes before a request are no response to anything) and the backend has not
/// closed it, which a keep-alive backend does when it likes.
fn reusable(up: &Upstream) -> bool {
    if !up.rd.buf.is_empty() {
        return false;
    }
    let mut probe = [0u8; 1];
    matches!(up.rd.get_ref().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The next request head: `None` if the client closed between requests; `Some(Err)` for a
/// head that is complete but refused; `Err` for what the reader found (too large, late).
/// The first request has `header_timeout` from the accept; later ones `idle_timeout` until
/// their first byte, then `header_timeout`.
async fn read_request<R: AsyncRead + Unpin>(
    cr: &mut Reader<R>,
    first: bool,
    limits: &WebLimits,
) -> Result<Option<Result<head::Request, Reject>>, Failure> {
    // Idle after a response: closing without a word is what nginx and haproxy do too.
    if !first && cr.buf.is_empty() && !matches!(cr.fill(limits.idle_timeout).await, Ok(1..)) {
        return Ok(None);
    }
    let read = async {
        loop {
            match parse_request(&cr.buf) {
                Ok(Some(r)) if r.len > MAX_REQUEST_HEAD => return Err(Failure::HeadTooLarge),
                Ok(Some(r)) => return Ok(Some(Ok(r))),
                Err(reject) => return Ok(Some(Err(reject))),
                Ok(None) if cr.buf.len() > MAX_REQUEST_HEAD => return Err(Failure::HeadTooLarge),
                Ok(None) => {}
            }
            match cr.fill(limits.header_timeout).await {
                Ok(0) if cr.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(Failure::BadRequest), // closed mid-head
                Ok(_) => {}
                Err(_) => return Err(Failure::HeaderTimeout),
            }
        }
    };
    tokio::time::timeout(limits.header_timeout, read)
        .await
        .unwrap_or(Err(Failure::HeaderTimeout))
}

/// Copies one request body as its head framed it.
async fn copy_body<R, W>(
    r: &mut Reader<R>,
    w: &mut W,
    body: Body,
    idle: Duration,
    counter: &std::sync::atomic::AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match body {
        Body::None => Ok(()),
        Body::Length(n) => r.copy_exact(w, n, idle, counter).await,
        Body::Chunked => copy_chunked(r, w, idle, counter).await,
        Body::UntilClose => r.pump(w, idle, counter, None).await,
    }
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Copies a chunked body (chunks, the last chunk, trailers) as it is, checking its framing
/// so that the copy ends exactly where the body does.
async fn copy_chunked<R, W>(
    r: &mut Reader<R>,
    w: &mut W,
    idle: Duration,
    counter: &std::sync::atomic::AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(&r.buf) {
                Ok(httparse::Status::Complete(done)) => break done,
                Ok(httparse::Status::Partial) if r.buf.len() > MAX_CHUNK_LINE => {
                    return Err(invalid("chunk size line too long"))
                }
                Ok(httparse::Status::Partial) => {
                    r.fill_more(idle).await?;
                }
                Err(_) => return Err(invalid("invalid chunk size")),
            }
        };
        r.copy_exact(w, line as u64, idle, counter).await?;
        if size == 0 {
            return copy_trailers(r, w, idle, counter).await;
        }
        r.copy_exact(w, size, idle, counter).await?;
        while r.buf.len() < 2 {
            r.fill_more(idle).await?;
        }
        if &r.buf[..2] != b"\r\n" {
            return Err(invalid("chunk data not followed by CRLF"));
        }
        r.copy_exact(w, 2, idle, counter).await?;
    }
}

/// The trailer section after the last chunk: header lines up to an empty line.
async fn copy_trailers<R, W>(
    r: &mut Reader<R>,
    w: &mut W,
    idle: Duration,
    counter: &std::sync::atomic::AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0;
    loop {
        let Some(eol) = r.buf.iter().position(|&b| b == b'\n') else {
            if r.buf.len() + total > MAX_CHUNK_LINE {
                return Err(invalid("trailers too long"));
            }
            r.fill_more(idle).await?;
            continue;
        };
        if eol == 0 || r.buf[eol - 1] != b'\r' {
            return Err(invalid("bare LF in trailers"));
        }
        let last = eol == 1;
        total += eol + 1;
        if total > MAX_CHUNK_LINE {
            return Err(invalid("trailers too long"));
        }
        r.copy_exact(w, (eol + 1) as u64, idle, counter).await?;
        if last {
            return Ok(());
        }
    }
}

enum Outcome {
    Done { close: bool },
    Upgraded,
}

/// Relays the response (interim ones first) to `req`. An error says whether any of it was
/// already sent to the client (then only closing is left).
async fn relay_response<R, W>(
    up: &mut Reader<R>,
    cw: &mut W,
    req: &head::Request,
    counter: &std::sync::atomic::AtomicU64,
) -> Result<Outcome, (io::Error, bool)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut replied = false;
    loop {
        let resp = loop {
            match parse_response(&up.buf, req.is_head(), req.upgrade) {
                Ok(Some(r)) => break r,
                Ok(None) if up.buf.len() > head::MAX_RESPONSE_HEAD => {
                    return Err((invalid("response head too large"), replied))
                }
                Ok(None) => match up.fill(BACKEND_TIMEOUT).await {
                    Ok(0) => return Err((io::ErrorKind::UnexpectedEof.into(), replied)),
                    Ok(_) => {}
                    Err(e) => return Err((e, replied)),
                },
                Err(why) => return Err((invalid(why), replied)),
            }
        };
        replied = true;
        up.copy_exact(cw, resp.len as u64, BACKEND_TIMEOUT, counter)
            .await
            .map_err(|e| (e, true))?;
        if resp.interim {
            continue;
        }
        if resp.upgraded {
            return Ok(Outcome::Upgraded);
        }
        copy_body(up, cw, resp.body, BACKEND_TIMEOUT, counter)
            .await
            .map_err(|e| (e, true))?;
        return Ok(Outcome::Done { close: resp.close });
    }
}

/// After a 101: bytes both ways until both sides closed or nothing moved for a while.
async fn tunnel<R, W>(cr: &mut Reader<R>, cw: &mut W, up: &mut Upstream, stats: &Stats)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let both = web::Activity::default();
    let to_backend = cr.pump(
        &mut up.wr,
        TUNNEL_IDLE,
        &stats.bytes_from_clients,
        Some(&both),
    );
    let to_client = up
        .rd
        .pump(cw, TUNNEL_IDLE, &stats.bytes_to_clients, Some(&both));
    let _ = tokio::join!(to_backend, to_client);
}

/// Sends an error response and closes gently: FIN first, then what the client still sends
/// is read and discarded for a moment, because closing with unread data makes the kernel
/// send a RST, which can destroy the response before the client has read it.
async fn reject(mut client: TcpStream, response: &[u8]) -> io::Result<()> {
    web::write_all(&mut client, response, LINGER_TIME).await?;
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

#[cfg(test)]
mod tests;
