//! TLS termination on the HTTPS router: `https://NAME.<http service>.<zone>/` served with
//! the `[acme]` wildcard certificate and proxied, request by request, to the plain-HTTP
//! backends of route NAME/<http service>: HTTP/2 and HTTP/1.1 to clients (ALPN `h2`,
//! `http/1.1`), HTTP/1.1 to backends, by hyper.
//!
//! Which name is terminated: one the certificate covers, with a route of `[http]` and no
//! route of `[https]` of that name. A student who runs her own TLS claims the https service
//! and keeps passthrough (her name, her certificate); one who serves plain HTTP gets HTTPS
//! for nothing. So the choice is the student's, per route, with nothing else to set.
//!
//! Every request reaches the backend with `X-Forwarded-Proto: https`, `X-Forwarded-For`
//! and `Forwarded` naming the client (any the client sent are dropped: the gateway is the
//! edge), `Host` as the client asked, and no hop-by-hop header. Each request takes the
//! backend with the fewest open requests (`web::balance`), the next one when a connect
//! fails, like the HTTP router. A request asking for an Upgrade (WebSocket) keeps it, and
//! after the backend's 101 the two connections are joined.
//!
//! Bounds: the handshake within `header_timeout`; a request head at most [`MAX_HEAD`]
//! (HTTP/1.1: hyper's read buffer; HTTP/2: the header list) and within `header_timeout`;
//! at most [`MAX_STREAMS`] requests at once on one HTTP/2 connection; a connection with no
//! request in flight and no byte moved for `idle_timeout` is closed; the backend has
//! `idle_timeout` for its response head. Connections count against the router's total and
//! per-client limits like relayed ones (the accept loop's admission).

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tracing::debug;

use crate::serve::{
    acme::Certs,
    http::HttpRouter,
    web::{self, proxy_header, Activity, Failure, Peers, Pool, Router as _, RouterCore, Stats},
};

/// Largest request head taken: as the HTTP router's.
pub const MAX_HEAD: usize = 64 * 1024;
/// Requests in flight on one HTTP/2 connection.
pub const MAX_STREAMS: u32 = 100;

type Body = BoxBody<Bytes, hyper::Error>;

/// What termination needs: the certificate and the `[http]` routes.
pub struct Terminate {
    certs: Arc<Certs>,
    http: Arc<HttpRouter>,
    tls: tokio_rustls::TlsAcceptor,
}

impl Terminate {
    pub fn new(certs: Arc<Certs>, http: Arc<HttpRouter>) -> Result<Terminate, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Terminate {
            certs,
            http,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The `[http]` route's backends for `name`, if the certificate covers the name.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.certs.resolve(Some(name))?;
        self.http.core().hosts.pool(name)
    }
}

/// What every request of one connection shares.
struct Conn {
    pool: Arc<Pool>,
    name: String,
    peers: Peers,
    core: Arc<super::HttpsRouter>,
    in_flight: AtomicUsize,
}

/// Serves one client connection whose ClientHello (`read`, already taken from `stream`)
/// named `name`.
pub(super) async fn serve(
    stream: TcpStream,
    read: Vec<u8>,
    name: String,
    pool: Arc<Pool>,
    router: Arc<super::HttpsRouter>,
    peers: Peers,
    activity: Arc<Activity>,
) -> Result<(), (Failure, String)> {
    let Some(terminate) = router.terminate.as_ref() else {
        return Err((Failure::NoRoute, format!("no route for name {name}")));
    };
    let limits = router.core.limits.clone();
    let io = Watched {
        prefix: read,
        at: 0,
        io: stream,
        activity: activity.clone(),
    };
    let tls = match tokio::time::timeout(limits.header_timeout, terminate.tls.accept(io)).await {
        Err(_) => return Err((Failure::HeaderTimeout, "no TLS handshake in time".into())),
        Ok(Err(e)) => return Err((Failure::BadRequest, format!("TLS handshake: {e}"))),
        Ok(Ok(tls)) => tls,
    };
    let conn = Arc::new(Conn {
        pool,
        name,
        peers,
        core: router.clone(),
        in_flight: AtomicUsize::new(0),
    });
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(proxy(req, &conn).await) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.idle_timeout);
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    // Idle: no request in flight and no byte either way for idle_timeout.
    let idle = async {
        loop {
            tokio::time::sleep(limits.idle_timeout / 4).await;
            if conn.in_flight.load(Ordering::Relaxed) == 0
                && activity.idle_for() >= limits.idle_timeout
            {
                return;
            }
        }
    };
    tokio::select! {
        r = serving => r.map_err(|e| (Failure::BadRequest, format!("HTTP over TLS: {e}"))),
        () = idle => {
            debug!(client = %peers.client, "HTTPS (terminated): idle connection closed");
            Ok(())
        }
    }
}

/// Headers that belong to one connection (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn answer(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(text + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request to a backend of the connection's pool, and its answer.
async fn proxy(mut req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    conn.in_flight.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight(&conn.in_flight);
    let stats = &conn.core.core.stats;
    let core: &RouterCore = &conn.core.core;
    // The name the client asked for: HTTP/2's :authority or HTTP/1.1's Host, which must be
    // the name the TLS session is for (no borrowing another student's session).
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(h, _)| h).to_string())
        })
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    if host.as_deref() != Some(conn.name.as_str()) {
        stats.failed(Failure::BadRequest);
        return answer(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this connection is for {}, not {}",
                conn.name,
                host.unwrap_or_else(|| "(no host)".into())
            ),
        );
    }
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), ToString::to_string);
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => return answer(StatusCode::BAD_REQUEST, "bad request target".into()),
    };
    parts.version = hyper::Version::HTTP_11;
    scrub(&mut parts.headers, conn, upgrade);
    let Some(first) = conn.pool.pick(&[]) else {
        stats.failed(Failure::NoRoute);
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no backend for {}", conn.name),
        );
    };
    let (lease, mut upstream) = match web::connect_pool(&conn.pool, first, &conn.name).await {
        Ok(c) => c,
        Err((e, tried)) => {
            stats.failed(web::connect_failure(&e));
            debug!(name = conn.name, ?tried, error = %e, "HTTPS (terminated): no backend reached");
            return answer(
                StatusCode::BAD_GATEWAY,
                format!("the backend of {} cannot be reached", conn.name),
            );
        }
    };
    let idle = core.limits.idle_timeout;
    if let Some(v) = lease.backend.proxy_protocol {
        let header = proxy_header::encode(v, conn.peers.client, conn.peers.local);
        if web::write_all(&mut upstream, &header, idle).await.is_err() {
            stats.failed(Failure::BackendRefused);
            return answer(StatusCode::BAD_GATEWAY, "the backend closed".into());
        }
    }
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(c) => c,
            Err(e) => {
                stats.failed(Failure::BackendRefused);
                return answer(StatusCode::BAD_GATEWAY, format!("the backend: {e}"));
            }
        };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "HTTPS (terminated): backend connection");
        }
    });
    Stats::count(&stats.requests, 1);
    let request = Request::from_parts(parts, body);
    let mut response = match tokio::time::timeout(idle, sender.send_request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            stats.failed(Failure::BadResponse);
            return answer(StatusCode::BAD_GATEWAY, format!("the backend: {e}"));
        }
        Err(_) => {
            stats.failed(Failure::BackendTimeout);
            return answer(
                StatusCode::GATEWAY_TIMEOUT,
                "the backend did not answer in time".into(),
            );
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                // The lease counts the tunnel against its backend until it ends.
                let _lease = lease;
                if let (Ok(c), Ok(b)) = (client_upgrade.await, backend_upgrade.await) {
                    let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                }
            });
        }
    } else {
        for h in HOP_BY_HOP {
            response.headers_mut().remove(h);
        }
    }
    response.map(|b| b.boxed())
}

/// The backend's view of the request's headers: hop-by-hop ones gone (an Upgrade kept when
/// asked), the client named by the gateway alone.
fn scrub(headers: &mut hyper::HeaderMap, conn: &Conn, upgrade: bool) {
    if let Some(listed) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    {
        for name in listed.split(',').map(str::trim) {
            if !name.eq_ignore_ascii_case("upgrade") {
                headers.remove(name);
            }
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if !headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&conn.name) {
            headers.insert(header::HOST, v);
        }
    }
    for h in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        headers.remove(h);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    let ip = conn.peers.client.ip();
    let node = match conn.peers.client {
        SocketAddr::V4(_) => ip.to_string(),
        SocketAddr::V6(_) => format!("\"[{ip}]\""),
    };
    if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    let fwd = format!("for={node};proto=https;host={}", conn.name);
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        headers.insert(header::FORWARDED, v);
    }
}

/// The client's socket, with the bytes the router read for the ClientHello put back in
/// front, and every byte that moves shown on the connection's clock.
struct Watched {
    prefix: Vec<u8>,
    at: usize,
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
