//! HTTPS by name, passed through: the router reads the client's TLS ClientHello (rustls'
//! `Acceptor` parses it, bounded in size and time), takes its SNI name, and relays the
//! connection untouched (the hello included) to a backend of route NAME/<https.service>:
//! each connection to the one of the route's usable backends with the fewest relays open,
//! round robin among equals (`web::balance`), the next one when a connect fails.
//! The gateway holds no student's key and terminates nothing; `NAME.<https.service>.<zone>`
//! and, with `[http]`, the HTTP name `NAME.<http.service>.<zone>` both reach it.
//!
//! With `[acme]` and `[http]`, a name of the HTTP routes that the certificate covers and no
//! HTTPS route answers is terminated here instead (`terminate`).
//!
//! What cannot be relayed gets a fatal TLS alert and the reason goes to the log: no SNI or
//! a name no route answers (`unrecognized_name`), a backend that cannot be reached
//! (`internal_error`), a hello rustls refuses (rustls' own alert).

use std::{io, net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tracing::{debug, info};

use crate::{
    config::{self, WebLimits},
    serve::http::{bind_all, normalize_host, HttpError},
    serve::web::{
        self, proxy_header, Activity, Failure, Peers, Reader, Refused, Router, RouterCore,
        RouterServer, Stats,
    },
};

/// A ClientHello (with every extension a browser sends, post-quantum key shares included)
/// is a few KiB; more than this before it is complete is not a hello.
pub const MAX_HELLO: usize = 32 * 1024;

/// TLS alert descriptions (RFC 8446 §6).
const UNRECOGNIZED_NAME: u8 = 112;
const INTERNAL_ERROR: u8 = 80;

/// A fatal alert record, sent in place of a ServerHello; the record layer says TLS 1.2,
/// which every TLS 1.x client takes before the version is settled.
pub fn alert(description: u8) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

/// What the ClientHello at the start of `buf` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Partial,
    /// The SNI name, lowercase, without a trailing dot; `None` if the hello has none.
    Complete(Option<String>),
    /// Not a ClientHello rustls accepts: the reason, and the alert rustls would send.
    Refused(String, Vec<u8>),
}

/// Parses the ClientHello in `buf` (everything the client sent so far).
pub fn parse_hello(buf: &[u8]) -> Hello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Hello::Refused(e.to_string(), alert(INTERNAL_ERROR).to_vec()),
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => {
                let name = accepted
                    .client_hello()
                    .server_name()
                    .and_then(normalize_host);
                return Hello::Complete(name);
            }
            Err((error, mut alert)) => {
                let mut bytes = Vec::new();
                let _ = alert.write_all(&mut bytes);
                return Hello::Refused(error.to_string(), bytes);
            }
        }
    }
    Hello::Partial
}

pub mod terminate;

pub use terminate::Terminate;

/// The HTTPS relay's state, shared by its connections.
pub struct HttpsRouter {
    core: RouterCore,
    /// TLS termination of the `[http]` routes' names, with `[acme]`.
    terminate: Option<Terminate>,
}

/// The running HTTPS relay.
pub type HttpsServer = RouterServer<HttpsRouter>;

impl RouterServer<HttpsRouter> {
    /// Binds every listen address and relays `NAME.<service>.<zone>` (and
    /// `NAME.<http_service>.<zone>`) to the backends of route NAME/<service>.
    pub async fn start(
        cfg: &config::Https,
        http_service: Option<&str>,
        zone: &str,
        routes: &[lb_model::Route],
        terminate: Option<Terminate>,
    ) -> Result<HttpsServer, HttpError> {
        let listeners = bind_all("https", &cfg.listen).await?;
        let suffixes = std::iter::once(cfg.service.as_str())
            .chain(http_service)
            .map(|s| format!("{s}.{zone}").to_ascii_lowercase())
            .collect();
        let server = RouterServer::spawn(
            listeners,
            Arc::new(HttpsRouter {
                core: RouterCore::new(&cfg.service, suffixes, routes, &cfg.limits),
                terminate,
            }),
        );
        info!(names = %server.shared().core.hosts.patterns(), listen = ?server.local_addrs(), "HTTPS relay by SNI started");
        Ok(server)
    }
}

impl Router for HttpsRouter {
    const NAME: &'static str = "https";
    const WHAT: &'static str = "HTTPS relay";

    fn core(&self) -> &RouterCore {
        &self.core
    }

    async fn serve(self: Arc<Self>, client: TcpStream, peers: Peers, activity: Arc<Activity>) {
        if let Err((f, why)) = serve(client, peers, &self, &activity).await {
            self.core.stats.failed(f);
            info!(client = %peers.client, reason = %why, "HTTPS connection refused");
        }
    }

    /// Nothing is read, so nothing is owed: closing is the answer.
    fn refuse(self: &Arc<Self>, _: TcpStream, _: SocketAddr, _: Refused) {}
}

/// One client: its hello, its backend, then the relay. An error is what the client was
/// refused for, after its alert went out.
async fn serve(
    client: TcpStream,
    peers: Peers,
    shared: &Arc<HttpsRouter>,
    activity: &Arc<Activity>,
) -> Result<(), (Failure, String)> {
    let limits = &shared.core.limits;
    let (cr, mut cw) = client.into_split();
    let mut cr = Reader::watched(cr, activity);
    let hello = tokio::time::timeout(limits.header_timeout, read_hello(&mut cr, limits)).await;
    let name = match hello {
        Err(_) => return Err((Failure::HeaderTimeout, "no ClientHello in time".into())),
        Ok(Err(e)) => return Err((Failure::BadRequest, format!("reading the ClientHello: {e}"))),
        Ok(Ok(Hello::Complete(name))) => name,
        Ok(Ok(Hello::Refused(why, alert))) => {
            send_alert(&mut cw, &alert, limits).await;
            return Err((Failure::BadRequest, format!("ClientHello refused: {why}")));
        }
        Ok(Ok(Hello::Partial)) => {
            return Err((Failure::BadRequest, "closed before its ClientHello".into()))
        }
    };
    let Some(name) = name else {
        send_alert(&mut cw, &alert(UNRECOGNIZED_NAME), limits).await;
        return Err((
            Failure::NoSni,
            "no server name (SNI) in the ClientHello".into(),
        ));
    };
    let passthrough = shared.core.hosts.pool(&name);
    if passthrough.is_none() {
        if let Some(pool) = shared.terminate.as_ref().and_then(|t| t.pool(&name)) {
            let (cr, buf) = cr.into_parts();
            let client = cr
                .reunite(cw)
                .map_err(|e| (Failure::BadRequest, e.to_string()))?;
            let (shared, activity) = (shared.clone(), activity.clone());
            return terminate::serve(client, buf, name, pool, shared, peers, activity).await;
        }
    }
    let Some((first, pool)) = passthrough.and_then(|pool| Some((pool.pick(&[])?, pool))) else {
        send_alert(&mut cw, &alert(UNRECOGNIZED_NAME), limits).await;
        return Err((Failure::NoRoute, format!("no route for name {name}")));
    };
    // The lease counts this connection against its backend until the relay ends.
    let (lease, upstream) = match web::connect_pool(&pool, first, &name).await {
        Ok(connected) => connected,
        Err((e, tried)) => {
            send_alert(&mut cw, &alert(INTERNAL_ERROR), limits).await;
            let tried: Vec<String> = tried.iter().map(ToString::to_string).collect();
            let why = format!("backend {} of {name}: {e}", tried.join(", "));
            return Err((web::connect_failure(&e), why));
        }
    };
    let backend = lease.backend;
    let (ur, mut uw) = upstream.into_split();
    let mut first = Vec::new();
    if let Some(v) = backend.proxy_protocol {
        first = proxy_header::encode(v, peers.client, peers.local);
    }
    first.extend_from_slice(&cr.buf);
    Stats::count(&shared.core.stats.requests, 1);
    Stats::count(&shared.core.stats.bytes_from_clients, cr.buf.len() as u64);
    cr.buf.clear();
    if let Err(e) = web::write_all(&mut uw, &first, limits.idle_timeout).await {
        send_alert(&mut cw, &alert(INTERNAL_ERROR), limits).await;
        let why = format!("backend {} of {name}: {e}", backend.addr);
        return Err((Failure::BackendRefused, why));
    }
    debug!(client = %peers.client, name, backend = %backend.addr, "HTTPS relay");
    let mut ur = Reader::watched(ur, activity);
    let stats = &shared.core.stats;
    let idle = limits.idle_timeout;
    // The connection's clock is the relay's too: the two directions share one idle time.
    activity.touch();
    let up = cr.pump(&mut uw, idle, &stats.bytes_from_clients, Some(activity));
    let down = ur.pump(&mut cw, idle, &stats.bytes_to_clients, Some(activity));
    let _ = tokio::join!(up, down);
    drop(lease);
    Ok(())
}

async fn read_hello<R: AsyncRead + Unpin>(
    cr: &mut Reader<R>,
    limits: &WebLimits,
) -> io::Result<Hello> {
    loop {
        if cr.fill(limits.header_timeout).await? == 0 {
            return Ok(Hello::Partial);
        }
        match parse_hello(&cr.buf) {
            Hello::Partial if cr.buf.len() > MAX_HELLO => {
                let why = format!("more than {MAX_HELLO} bytes without a complete ClientHello");
                return Ok(Hello::Refused(why, alert(INTERNAL_ERROR).to_vec()));
            }
            Hello::Partial => {}
            done => return Ok(done),
        }
    }
}

async fn send_alert<W: AsyncWrite + Unpin>(w: &mut W, alert: &[u8], limits: &WebLimits) {
    let _ = web::write_all(w, alert, limits.header_timeout).await;
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests;
