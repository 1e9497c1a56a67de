//! The authoritative DNS zone for the routes: `_<service>._<proto>.<name>.<zone> SRV` (RFC
//! 2782), `<name>.<service>.<zone> SRV` and `A` (the short form), `<gateway>.<zone> A`, and
//! SOA/NS at the apex.
//!
//! Bird's-eye view: [`zone`] is pure, a [`Zone`] snapshot built from config + routes and the
//! functions that answer a request against it. This file is the I/O. UDP is served by
//! srvgate's own threads (one per core, up to 8, each blocking on a clone of the listen
//! socket with its own answer cache, cleared when the serial changes); TCP by
//! hickory-server's [`Server`], which calls our [`RequestHandler`]. Both read the current
//! snapshot through an [`ArcSwap`]. [`DnsServer::update`] builds a whole new snapshot and
//! swaps it in, so a query sees either the old table or the new one, never a mix, and
//! queries never wait for an update.
//!
//! Deliberately absent: recursion (names outside the zone get REFUSED, RA is never set), zone
//! transfers, dynamic update, DNSSEC, wildcards, and response-rate limiting.
//!
//! hickory-server logs every TCP response at `info` (its `ReportingResponseHandler`); at
//! query rates that is both noise and a bottleneck, so the daemon should filter
//! `hickory_server` to `warn`.

pub mod zone;

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use hickory_proto::op::{Header, HeaderCounts, ResponseCode};
use hickory_server::net::xfer::Protocol;
use hickory_server::{
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    Server,
};
use socket2::{Domain, Socket, Type};

pub use zone::{next_serial, Zone, ZoneError, MAX_UDP_PAYLOAD};

use crate::config;

/// How long an idle TCP client may keep its connection (RFC 7766 suggests seconds).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection before the handler waits for the socket.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Pending TCP connections the kernel holds for us.
const TCP_BACKLOG: i32 = 1024;
/// How often a UDP worker blocked in `recv_from` looks at the stop flag.
const UDP_STOP_POLL: Duration = Duration::from_millis(200);
/// UDP receive buffer to ask for, so a burst of queries waits in the kernel instead of being
/// dropped; the kernel caps it at `net.core.rmem_max`.
const UDP_RECV_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    #[error("dns.listen: cannot bind {transport} {addr}: {error}{hint}")]
    Bind {
        addr: SocketAddr,
        transport: &'static str,
        error: io::Error,
        /// What to do about it, starting with "; " (empty when we have no advice).
        hint: String,
    },
    #[error(
        "dns.listen is empty: list at least one address to serve the zone on, e.g. \"0.0.0.0:53\""
    )]
    NoListen,
    #[error(transparent)]
    Zone(#[from] ZoneError),
}

/// The running DNS server. Dropping it stops the listeners too, but [`DnsServer::shutdown`]
/// waits for them to finish.
pub struct DnsServer {
    server: Server<Handler>,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    udp_workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

struct Shared {
    zone: ArcSwap<Zone>,
    cfg: config::Dns,
    public_ipv4: Ipv4Addr,
    /// Serialises updates, so two of them can't compute the same serial.
    writer: Mutex<()>,
}

impl DnsServer {
    /// Binds UDP and TCP on every listen address and serves the zone built from `routes`.
    /// With port 0, UDP and TCP share the port the kernel picks for UDP.
    pub async fn start(
        cfg: &config::Dns,
        public_ipv4: Ipv4Addr,
        routes: &[config::Route],
    ) -> Result<DnsServer, DnsError> {
        if cfg.listen.is_empty() {
            return Err(DnsError::NoListen);
        }
        let serial = next_serial(0, unix_now());
        let zone = Zone::build(cfg, public_ipv4, routes, serial)?;

        // Everything is bound before anything is served, so a failure leaves nothing running.
        let mut sockets = Vec::with_capacity(cfg.listen.len());
        for &addr in &cfg.listen {
            sockets.push(bind_pair(addr)?);
        }

        let shared = Arc::new(Shared {
            zone: ArcSwap::from_pointee(zone),
            cfg: cfg.clone(),
            public_ipv4,
            writer: Mutex::new(()),
        });
        let mut server = Server::new(Handler {
            shared: shared.clone(),
        });
        let mut addrs = Vec::with_capacity(sockets.len());
        let stop = Arc::new(AtomicBool::new(false));
        let mut udp_workers = Vec::new();
        for (udp, tcp, addr) in sockets {
            let tcp =
                tokio::net::TcpListener::from_std(tcp).map_err(|e| bind_error(addr, "TCP", e))?;
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
            udp_workers.extend(
                spawn_udp_workers(udp, &shared, &stop).map_err(|e| bind_error(addr, "UDP", e))?,
            );
            addrs.push(addr);
        }
        tracing::info!(
            zone = %cfg.zone,
            serial,
            routes = routes.len(),
            listen = ?addrs,
            "DNS server started"
        );
        Ok(DnsServer {
            server,
            shared,
            addrs,
            udp_workers,
            stop,
        })
    }

    /// Replaces the route records atomically; the SOA serial strictly increases. Builds the
    /// new snapshot on the caller's thread (O(routes)); queries keep using the old one until
    /// the swap.
    pub fn update(&self, routes: &[config::Route]) {
        let shared = &self.shared;
        let _writer = shared.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let serial = next_serial(shared.zone.load().serial(), unix_now());
        match Zone::build(&shared.cfg, shared.public_ipv4, routes, serial) {
            Ok(zone) => {
                shared.zone.store(Arc::new(zone));
                tracing::info!(serial, routes = routes.len(), "DNS zone updated");
            }
            // start() built a zone from the same config, so the names are valid and this is
            // unreachable in practice; keep serving the old zone rather than nothing.
            Err(error) => tracing::error!(%error, "DNS zone not updated"),
        }
    }

    /// Applies a change of the table: the routes `removed` go, `added` come (a route changed
    /// in place is in both). Costs what the change touches, not the zone's size, so it can
    /// follow every single add; queries keep the old snapshot until the swap.
    pub fn apply(&self, removed: &[config::Route], added: &[config::Route]) {
        let shared = &self.shared;
        let _writer = shared.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let old = shared.zone.load();
        let serial = next_serial(old.serial(), unix_now());
        let zone = old.with_changes(removed, added, serial);
        shared.zone.store(Arc::new(zone));
        tracing::debug!(
            serial,
            removed = removed.len(),
            added = added.len(),
            "DNS zone changed"
        );
    }

    pub fn serial(&self) -> u32 {
        self.shared.zone.load().serial()
    }

    /// The current snapshot, e.g. for metrics or to answer a query in-process.
    pub fn zone(&self) -> Arc<Zone> {
        self.shared.zone.load_full()
    }

    /// The bound addresses, one per `listen` entry, with the real port where it was 0; each
    /// serves both UDP and TCP.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Stops accepting queries and waits for the listeners to finish.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let workers = std::mem::take(&mut self.udp_workers);
        let joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        });
        if let Err(error) = self.server.shutdown_gracefully().await {
            tracing::warn!(%error, "DNS server did not shut down cleanly");
        }
        let _ = joined.await;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Without shutdown(): the UDP workers still notice within UDP_STOP_POLL and exit.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// UDP is served by plain threads, one per core, blocking in `recv_from` on clones of one
/// socket and answering with [`zone::respond`]. hickory's `Server` spends a task and a
/// channel hop per datagram, which made UDP queries/s half of Knot's in `cargo xtask bench`;
/// a datagram needs no per-query state, so a loop is all it takes. TCP stays with hickory.
fn spawn_udp_workers(
    socket: UdpSocket,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
) -> io::Result<Vec<JoinHandle<()>>> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(UDP_STOP_POLL))?;
    let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let socket = socket.try_clone()?;
        let (shared, stop) = (shared.clone(), stop.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || serve_udp(&socket, &shared, &stop))?,
        );
    }
    Ok(workers)
}

fn serve_udp(socket: &UdpSocket, shared: &Shared, stop: &AtomicBool) {
    // Larger than any UDP query a client may send with EDNS; longer ones are truncated by
    // the kernel and then fail to parse (FORMERR), as they should.
    let mut buf = [0u8; 4096];
    let mut cache = AnswerCache::default();
    let mut out = Vec::with_capacity(512);
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                // ICMP errors from earlier sends surface here (ECONNREFUSED); keep serving.
                tracing::debug!(%error, "DNS UDP receive");
                continue;
            }
        };
        let zone = shared.zone.load();
        if cache.answer(&zone, &buf[..n], &mut out) {
            if let Err(error) = socket.send_to(&out, peer) {
                tracing::debug!(%error, %peer, "DNS UDP reply not sent");
            }
        }
    }
}

/// Answers already computed for this zone snapshot, keyed by the query's bytes after its
/// id. [`zone::respond`] is a pure function of the snapshot and the query, and the only
/// bytes of a reply that depend on the id are the id itself, so a repeated question (the
/// normal case for a resolver-facing server) costs a hash lookup and a copy instead of a
/// parse, a lookup and an encode. Per worker thread: no locks.
#[derive(Default)]
pub(crate) struct AnswerCache {
    serial: Option<u32>,
    /// `None`: the query is to be dropped (not a query, too short).
    answers: std::collections::HashMap<Box<[u8]>, Option<Box<[u8]>>>,
}

impl AnswerCache {
    /// Bounds memory under a flood of distinct (e.g. random-name) queries.
    const MAX_ENTRIES: usize = 16384;

    /// Writes the UDP reply to `query` into `out`; false when it is to be dropped.
    pub(crate) fn answer(&mut self, zone: &Zone, query: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        if query.len() < 12 {
            return false;
        }
        // Serials strictly increase with every update, so they name a snapshot.
        if self.serial != Some(zone.serial()) {
            self.answers.clear();
            self.serial = Some(zone.serial());
        }
        let key = &query[2..];
        let cached = match self.answers.get(key) {
            Some(a) => a.as_deref(),
            None => {
                let fresh = zone::respond(zone, query, Protocol::Udp, MAX_UDP_PAYLOAD)
                    .map(|r| r[2.min(r.len())..].to_vec().into_boxed_slice());
                if self.answers.len() >= Self::MAX_ENTRIES {
                    self.answers.clear();
                }
                self.answers.entry(key.into()).or_insert(fresh).as_deref()
            }
        };
        let Some(rest) = cached else {
            return false;
        };
        out.extend_from_slice(&query[..2]);
        out.extend_from_slice(rest);
        true
    }
}

struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // A guard, not an Arc clone: no shared reference count to bounce between cores.
        let zone = self.shared.zone.load();
        let edns = zone::response_edns(request, MAX_UDP_PAYLOAD);
        let reply = zone::reply(&zone, request, edns.as_ref(), request.protocol());
        let mut metadata = reply.metadata;
        let message = zone::to_message(reply, &request.queries, edns.as_ref());
        match response_handle.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                // The client is gone or the socket failed; nothing to tell anyone but the log.
                tracing::debug!(%error, src = %request.src(), "DNS response not sent");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Binds UDP and TCP on `addr`. For port 0 the kernel picks a free UDP port, which TCP may
/// still have taken by someone else, hence the few tries.
fn bind_pair(
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener, SocketAddr), DnsError> {
    let tries = if addr.port() == 0 { 8 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = bind_udp(addr).map_err(|e| bind_error(addr, "UDP", e))?;
        let bound = udp.local_addr().map_err(|e| bind_error(addr, "UDP", e))?;
        match bind_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < tries => continue,
            Err(e) => return Err(bind_error(bound, "TCP", e)),
        }
    }
}

fn new_socket(addr: SocketAddr, ty: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        // Otherwise `[::]:53` also takes 0.0.0.0:53 and a config listing both fails.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM)?;
    if let Err(error) = socket.set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::debug!(%error, "DNS UDP receive buffer left at the default");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = new_socket(addr, Type::STREAM)?;
    // A restarted daemon must get its port back while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(TCP_BACKLOG)?;
    Ok(socket.into())
}

fn bind_error(addr: SocketAddr, transport: &'static str, error: io::Error) -> DnsError {
    let hint = match error.kind() {
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "; port {} needs root or CAP_NET_BIND_SERVICE \
             (`setcap cap_net_bind_service=+ep $(which srvgate)`), or use a port above 1023",
            addr.port()
        ),
        io::ErrorKind::AddrInUse => format!(
            "; address in use: another DNS server (or srvgate) already listens there; \
             `ss -lntup 'sport = :{}'` shows which. systemd-resolved holds 127.0.0.53:53 only, \
             so list the gateway's own addresses instead of 0.0.0.0",
            addr.port()
        ),
        io::ErrorKind::AddrNotAvailable => {
            "; no interface on this machine has that address".to_string()
        }
        _ => String::new(),
    };
    DnsError::Bind {
        addr,
        transport,
        error,
        hint,
    }
}

#[cfg(test)]
mod tests;
