//! What the two web routers (`http`: by Host header, `https`: by TLS SNI) share: the name ->
//! backend snapshot, the admission of clients (a total and a per-client limit, with the fair
//! share of [`super::admission`] at the total), the buffered, time-bounded reads and copies,
//! and the counters `/metrics` shows.
//!
//! Invariants: a connection holds a [`Slot`] for as long as it holds descriptors, so the
//! limits count what the process really has open (an evicted connection's place passes to
//! the newcomer at once and its task drops its sockets when it next runs); every read and
//! write of a client or backend is bounded in time; nothing here decides what a request
//! means.
//!
//! Here: [`Hosts`] (name -> [`Pool`] of backends, swapped atomically), [`connect_pool`] (the
//! next backend when one cannot be reached), [`admission_within`], [`Reader`] (every read,
//! copy and pump bounded by a timeout), [`Stats`], and [`RouterServer`], the one server of
//! both routers (listeners, accept loop, admission, route updates, samples) over their
//! [`RouterCore`]; each [`Router`] brings its per-connection `serve` and its `refuse`.
//! `balance.rs` picks among a pool's backends; `proxy_header.rs` writes the PROXY protocol
//! v1/v2 header.

pub mod balance;
pub mod proxy_header;

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use tracing::debug;

use crate::config;
pub use balance::{Lease, Member, Pool};
use lb_model::{Protocol, ProxyProtocol};

/// Time a backend has to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The route name in `host` if it is `NAME.<suffix>` with a single-label NAME.
/// `suffix` is `<service>.<zone>`, lowercase.
pub fn route_name<'a>(host: &'a str, suffix: &str) -> Option<&'a str> {
    let name = host.strip_suffix(suffix)?.strip_suffix('.')?;
    (!name.is_empty() && !name.contains('.')).then_some(name)
}

/// Where one route's connections go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddrV4,
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// The backends that names map to: routes `NAME/<service>/tcp`, reached as `NAME.<suffix>`
/// for any of the router's suffixes, each a [`Pool`] of the route's usable backends.
/// Rebuilt on every route change; readers take no lock.
pub struct Hosts {
    service: String,
    /// `<label>.<zone>`, lowercase, each a name under which the routes are reached.
    suffixes: Vec<String>,
    pools: ArcSwap<HashMap<String, Arc<Pool>>>,
}

impl Hosts {
    pub fn new(service: &str, suffixes: Vec<String>, routes: &[lb_model::Route]) -> Hosts {
        let hosts = Hosts {
            service: service.to_string(),
            suffixes,
            pools: ArcSwap::from_pointee(HashMap::new()),
        };
        hosts.update(routes);
        hosts
    }

    /// Takes the routes' usable backends.
    pub fn update(&self, routes: &[lb_model::Route]) {
        self.set(
            routes
                .iter()
                .filter(|r| r.protocol == Protocol::Tcp && r.service == self.service)
                .map(|r| {
                    // The daemon hands the routers each route's pool reduced to its active
                    // members (`Entry::serving`), so drain and health reach them too.
                    let members = r
                        .backends
                        .members()
                        .iter()
                        .map(|m| Member {
                            backend: Backend {
                                addr: m.addr,
                                proxy_protocol: r.proxy_protocol,
                            },
                            weight: u32::from(m.weight),
                        })
                        .collect();
                    (r.name.to_ascii_lowercase(), members)
                }),
        );
    }

    /// Replaces every name's pool; a backend that stays keeps its count of open requests.
    pub(crate) fn set(&self, pools: impl IntoIterator<Item = (String, Vec<Member>)>) {
        let old = self.pools.load();
        let map = pools
            .into_iter()
            .map(|(name, members)| {
                let pool = Pool::new(members, old.get(&name).map(|p| &**p));
                (name, Arc::new(pool))
            })
            .collect();
        self.pools.store(Arc::new(map));
    }

    /// The backends of `host` (lowercase, no port, no trailing dot), if a route answers it.
    pub fn pool(&self, host: &str) -> Option<Arc<Pool>> {
        let name = self.suffixes.iter().find_map(|s| route_name(host, s))?;
        self.pools
            .load()
            .get(name)
            .filter(|p| !p.is_empty())
            .cloned()
    }

    /// `*.<suffix>` for each suffix, for the log.
    pub fn patterns(&self) -> String {
        self.suffixes
            .iter()
            .map(|s| format!("*.{s}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub use super::admission::{Activity, Admission, Refused, Share, Slot};

/// A web router's admission: `max_connections` in total, but at most `relays` (what the
/// open-files limit allows: each relay holds two descriptors), and
/// `max_connections_per_client` per client.
pub fn admission_within(limits: &config::WebLimits, relays: usize) -> Arc<Admission> {
    if limits.max_connections > relays {
        tracing::warn!(
            max_connections = limits.max_connections,
            allowed = relays,
            "web router: max_connections lowered to what the open-files limit allows (raise LimitNOFILE to allow more)"
        );
    }
    Admission::new(
        limits.max_connections.min(relays),
        limits.max_connections_per_client,
        Share::Fewer,
    )
}

/// Why a connection or request ended without reaching a backend, or broke off; the label of
/// `srvgate_web_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    BadRequest,
    HeadTooLarge,
    HeaderTimeout,
    NoRoute,
    NoSni,
    Full,
    ClientFull,
    BackendRefused,
    BackendTimeout,
    BadResponse,
    /// Ended at the limit to make room for a client holding fewer connections.
    Evicted,
}

impl Failure {
    pub const ALL: [Failure; 11] = [
        Failure::BadRequest,
        Failure::HeadTooLarge,
        Failure::HeaderTimeout,
        Failure::NoRoute,
        Failure::NoSni,
        Failure::Full,
        Failure::ClientFull,
        Failure::BackendRefused,
        Failure::BackendTimeout,
        Failure::BadResponse,
        Failure::Evicted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::BadRequest => "bad_request",
            Failure::HeadTooLarge => "head_too_large",
            Failure::HeaderTimeout => "header_timeout",
            Failure::NoRoute => "no_route",
            Failure::NoSni => "no_sni",
            Failure::Full => "max_connections",
            Failure::ClientFull => "max_connections_per_client",
            Failure::BackendRefused => "backend_refused",
            Failure::BackendTimeout => "backend_timeout",
            Failure::BadResponse => "bad_response",
            Failure::Evicted => "evicted",
        }
    }
}

impl From<Refused> for Failure {
    fn from(r: Refused) -> Failure {
        match r {
            Refused::Full => Failure::Full,
            Refused::ClientFull => Failure::ClientFull,
        }
    }
}

/// A router's counters.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// HTTP requests sent to a backend; TLS connections relayed.
    pub requests: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    errors: [AtomicU64; Failure::ALL.len()],
}

impl Stats {
    pub fn failed(&self, f: Failure) {
        self.errors[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sample(&self, router: &'static str, open: usize) -> RouterSample {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouterSample {
            router,
            open: open as u64,
            connections: get(&self.connections),
            requests: get(&self.requests),
            bytes_from_clients: get(&self.bytes_from_clients),
            bytes_to_clients: get(&self.bytes_to_clients),
            errors: Failure::ALL
                .iter()
                .map(|&f| (f.label(), get(&self.errors[f as usize])))
                .collect(),
        }
    }
}

/// One router's counters at scrape time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSample {
    /// `http` or `https`.
    pub router: &'static str,
    pub open: u64,
    pub connections: u64,
    pub requests: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    pub errors: Vec<(&'static str, u64)>,
}

pub fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: timed out"))
}

/// A reader with a buffer the parsers look into: bytes read past what one step needed (a
/// pipelined request, a body that came with its head) stay for the next.
pub struct Reader<R> {
    io: R,
    pub buf: Vec<u8>,
    /// The connection's clock, touched by every read that brought bytes.
    watch: Option<Arc<Activity>>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R) -> Self {
        Reader {
            io,
            buf: Vec::new(),
            watch: None,
        }
    }

    /// A reader whose reads show on `activity` (the admission evicts the idlest first).
    pub fn watched(io: R, activity: &Arc<Activity>) -> Self {
        Reader {
            watch: Some(activity.clone()),
            ..Reader::new(io)
        }
    }

    /// Reads once more into the buffer, within `idle`; 0 at end of stream.
    pub async fn fill(&mut self, idle: Duration) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(idle, self.io.read(&mut chunk))
            .await
            .map_err(|_| timed_out("read"))??;
        self.buf.extend_from_slice(&chunk[..n]);
        if let (Some(a), 1..) = (&self.watch, n) {
            a.touch();
        }
        Ok(n)
    }

    /// [`Reader::fill`] inside a framed message: the stream ending there is an error.
    pub async fn fill_more(&mut self, idle: Duration) -> io::Result<()> {
        match self.fill(idle).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    /// The reader and the bytes it holds that no step took yet.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        (self.io, self.buf)
    }

    pub fn get_ref(&self) -> &R {
        &self.io
    }

    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
    }

    /// Copies exactly `n` bytes to `w`; an error if the stream ends first.
    pub async fn copy_exact<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        mut n: u64,
        idle: Duration,
        counter: &AtomicU64,
    ) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill_more(idle).await?;
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            write_all(w, &self.buf[..take], idle).await?;
            Stats::count(counter, take as u64);
            self.consume(take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Copies everything until the end of the stream to `w`, then shuts `w` down. With
    /// `both`, the two directions of a relay share one idle clock: a side that stays
    /// silent while the other talks (a download) is not idle.
    pub async fn pump<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        idle: Duration,
        counter: &AtomicU64,
        both: Option<&Activity>,
    ) -> io::Result<()> {
        loop {
            if self.buf.is_empty() {
                let wait = both.map_or(idle, |a| {
                    idle.saturating_sub(a.idle_for())
                        .max(Duration::from_millis(10))
                });
                match self.fill(wait).await {
                    Ok(0) => return w.shutdown().await,
                    Ok(_) => {
                        if let Some(a) = both {
                            a.touch();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        if both.is_some_and(|a| a.idle_for() < idle) {
                            continue;
                        }
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            write_all(w, &self.buf, idle).await?;
            Stats::count(counter, self.buf.len() as u64);
            self.buf.clear();
        }
    }
}

/// `write_all` within `idle`: a peer that stops reading cannot hold the connection.
pub async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    idle: Duration,
) -> io::Result<()> {
    tokio::time::timeout(idle, w.write_all(bytes))
        .await
        .map_err(|_| timed_out("write"))?
}

/// Connects to a backend within [`CONNECT_TIMEOUT`]; a timeout is `TimedOut`. A backend
/// that is the gateway itself is `PermissionDenied` ([`not_self`]), whatever the table
/// says: the table's rule is checked when a route is added, and an address can arrive on
/// an interface later.
pub async fn connect(addr: SocketAddrV4) -> io::Result<TcpStream> {
    // Before any SYN, so the gateway's own service never sees the connection: the source
    // address the kernel's routing picks for `addr` (a UDP socket's connect sends
    // nothing). Without a route, the TCP connect below fails on its own.
    let source = crate::machine::route_source(addr)
        .unwrap_or_else(|_| SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)));
    not_self(addr, source, cfg!(test))?;
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connect"))??;
    not_self(addr, s.local_addr()?, cfg!(test))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Backends a request or connection tries before it is refused: a backend that just died
/// is still in its pool until its health check notices, so the next one is tried.
pub const MAX_TRIES: usize = 3;

/// Connects to `first`'s backend, or else to the pool's next ones, at most [`MAX_TRIES`]
/// backends in all (each within [`CONNECT_TIMEOUT`]). The error is the last backend's, with
/// the backends tried, each failure logged with `host`.
pub async fn connect_pool(
    pool: &Pool,
    first: Lease,
    host: &str,
) -> Result<(Lease, TcpStream), (io::Error, Vec<SocketAddrV4>)> {
    let mut tried = Vec::new();
    let mut lease = first;
    loop {
        let addr = lease.backend.addr;
        let error = match connect(addr).await {
            Ok(s) => return Ok((lease, s)),
            Err(e) => e,
        };
        tried.push(addr);
        debug!(backend = %addr, host, %error, "web backend cannot be reached");
        match pool.pick(&tried) {
            Some(next) if tried.len() < MAX_TRIES => lease = next,
            _ => return Err((error, tried)),
        }
    }
}

/// Refuses a backend connection that reached the gateway itself: `addr` breaking the
/// backend rule's fixed part (`config::check_backend`: loopback, link-local, ...), or a
/// `local` address equal to the peer's, which is how the kernel connects to one of its own
/// addresses (any interface's, also one added after the route was checked). A refused
/// connection has carried no byte of the client's. `allow_loopback` is for the unit
/// tests, whose backends listen on loopback.
fn not_self(addr: SocketAddrV4, local: SocketAddr, allow_loopback: bool) -> io::Result<()> {
    if allow_loopback && addr.ip().is_loopback() {
        return Ok(());
    }
    let refuse = |rule: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, rule));
    if let Err(rule) = config::check_backend(addr, &config::OwnAddresses::default()) {
        return refuse(rule);
    }
    if local.ip() == std::net::IpAddr::V4(*addr.ip()) {
        return refuse(format!(
            "backend {addr} is an address of the gateway itself; the web routers never relay to it"
        ));
    }
    Ok(())
}

/// The failure a backend connection error counts as.
pub fn connect_failure(e: &io::Error) -> Failure {
    if e.kind() == io::ErrorKind::TimedOut {
        Failure::BackendTimeout
    } else {
        Failure::BackendRefused
    }
}

/// The client's and the listener's addresses, as the PROXY header names them.
#[derive(Clone, Copy, Debug)]
pub struct Peers {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

/// What every web router's connections share: the names it routes, its limits, its
/// admission and its counters.
pub struct RouterCore {
    pub hosts: Hosts,
    pub limits: config::WebLimits,
    pub admission: Arc<Admission>,
    pub stats: Stats,
}

impl RouterCore {
    /// Routes `NAME.<suffix>` for each of `suffixes` to route NAME/<service>'s backend.
    pub fn new(
        service: &str,
        suffixes: Vec<String>,
        routes: &[lb_model::Route],
        limits: &config::WebLimits,
    ) -> RouterCore {
        RouterCore {
            hosts: Hosts::new(service, suffixes, routes),
            limits: limits.clone(),
            admission: admission_within(
                limits,
                crate::kernel::fds::Budget::current().http_relays(),
            ),
            stats: Stats::default(),
        }
    }
}

/// One web router's part of its server: what it does with an admitted connection, and with
/// one the limits refused. [`RouterServer`] does the rest (listeners, accept loop,
/// admission, route updates, counters) the same way for both.
pub trait Router: Send + Sync + Sized + 'static {
    /// `http` or `https`: the label of its counters.
    const NAME: &'static str;
    /// How the accept loop's warnings name it.
    const WHAT: &'static str;
    fn core(&self) -> &RouterCore;
    /// Serves one admitted connection to its end, touching `activity` when bytes move.
    /// The future is dropped (and with it the sockets) if the connection is evicted.
    fn serve(
        self: Arc<Self>,
        client: TcpStream,
        peers: Peers,
        activity: Arc<Activity>,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// Answers (or just closes) a connection the admission refused; it is counted already.
    fn refuse(self: &Arc<Self>, client: TcpStream, peer: SocketAddr, refused: Refused);
}

/// A running web router: one accept task per listener. Dropping it stops accepting;
/// connections in flight finish.
pub struct RouterServer<R: Router> {
    shared: Arc<R>,
    addrs: Vec<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl<R: Router> RouterServer<R> {
    /// Starts accepting on every bound listener.
    pub fn spawn(listeners: Vec<(TcpListener, SocketAddr)>, shared: Arc<R>) -> Self {
        let addrs: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
        let accept_tasks = listeners
            .into_iter()
            .map(|(l, local)| tokio::spawn(accept_loop(l, local, shared.clone())))
            .collect();
        RouterServer {
            shared,
            addrs,
            accept_tasks,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<R> {
        &self.shared
    }

    /// Takes the new route table: the next request (HTTP) or connection (HTTPS) is routed
    /// by it.
    pub fn update(&self, routes: &[lb_model::Route]) {
        self.shared.core().hosts.update(routes);
    }

    /// The service whose routes it routes (`[http] service`, `[https] service`).
    pub fn service(&self) -> &str {
        &self.shared.core().hosts.service
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    pub fn sample(&self) -> RouterSample {
        let core = self.shared.core();
        core.stats.sample(R::NAME, core.admission.open())
    }
}

impl<R: Router> Drop for RouterServer<R> {
    fn drop(&mut self) {
        for t in &self.accept_tasks {
            t.abort();
        }
    }
}

async fn accept_loop<R: Router>(listener: TcpListener, local: SocketAddr, shared: Arc<R>) {
    let mut backoff = crate::kernel::fds::AcceptBackoff::new(R::WHAT);
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => {
                backoff.accepted();
                c
            }
            Err(error) => {
                backoff.failed(&error).await;
                continue;
            }
        };
        let core = shared.core();
        Stats::count(&core.stats.connections, 1);
        match core.admission.admit(peer.ip()) {
            Ok((mut slot, evicted)) => {
                if let Some(e) = evicted {
                    debug!(%peer, from = %e.from, "{}: at max_connections; ended the idlest connection of the client holding the most", R::WHAT);
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    let peers = Peers {
                        client: peer,
                        local,
                    };
                    let activity = slot.activity().clone();
                    tokio::select! {
                        () = shared.clone().serve(client, peers, activity) => {}
                        () = slot.evicted() => {
                            // Dropping the relay's future closes both of its sockets.
                            shared.core().stats.failed(Failure::Evicted);
                        }
                    }
                    drop(slot);
                });
            }
            Err(refused) => {
                core.stats.failed(refused.into());
                shared.refuse(client, peer, refused);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Instant};

    use super::*;

    #[test]
    fn route_names_are_one_label_under_the_suffix() {
        let s = "http.lab.example";
        assert_eq!(route_name("alice.http.lab.example", s), Some("alice"));
        assert_eq!(route_name("http.lab.example", s), None);
        assert_eq!(route_name("x.alice.http.lab.example", s), None);
        assert_eq!(route_name("alice.ssh.lab.example", s), None);
        assert_eq!(route_name("alicehttp.lab.example", s), None);
        assert_eq!(route_name(".http.lab.example", s), None);
    }

    /// Defence in depth: whatever the table says, a web router never relays to the gateway
    /// itself. A connection whose local address is its peer's went to one of this
    /// machine's own addresses (the kernel's answer at connect time, so an address added
    /// after the route was checked is caught too).
    #[tokio::test]
    async fn a_router_never_connects_to_the_gateway_itself() {
        let own = crate::machine::interfaces()
            .unwrap()
            .into_iter()
            .filter(|i| !i.loopback)
            .flat_map(|i| i.ipv4)
            .find(|a| !a.is_loopback() && !a.is_link_local());
        let Some(own) = own else {
            srvgate_tests::skip(
                "a_router_never_connects_to_the_gateway_itself",
                "this machine has no non-loopback IPv4 address to connect to",
            );
            return;
        };
        let l = tokio::net::TcpListener::bind((own, 0)).await.unwrap();
        let addr = match l.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        let e = connect(addr).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("gateway itself"), "{e}");
        // Refused before a SYN: the gateway's service never sees the connection (one
        // completed by the kernel would be waiting in the backlog at once).
        let accepted = tokio::time::timeout(Duration::from_millis(500), l.accept()).await;
        assert!(
            accepted.is_err(),
            "the service saw a connection: {accepted:?}"
        );
        // Loopback is refused by the rule alone (the unit tests' own backends live there,
        // so only `connect` in a test build lets it through).
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 22);
        let e = not_self(lo, SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)), false).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let far = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 11), 80);
        not_self(
            far,
            SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000)),
            false,
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_silent_side_of_a_busy_relay_is_not_idle() {
        // The other side talks for 1.2 s, more than twice `idle`, one byte every 100 ms: a
        // scheduling hiccup of 400 ms would be needed to make it look idle.
        const WRITES: u64 = 12;
        let idle = Duration::from_millis(500);
        let both = Activity::default();
        let counter = AtomicU64::new(0);
        let (_quiet_peer, quiet) = tokio::io::duplex(64);
        let (mut talker, talk) = tokio::io::duplex(64);
        let mut quiet = Reader::new(quiet);
        let mut talk = Reader::new(talk);
        let t0 = Instant::now();
        let silent = async {
            let r = quiet
                .pump(&mut tokio::io::sink(), idle, &counter, Some(&both))
                .await;
            (r, t0.elapsed())
        };
        let mut drain = tokio::io::sink();
        let busy = talk.pump(&mut drain, idle, &counter, Some(&both));
        let feed = async {
            for _ in 0..WRITES {
                tokio::time::sleep(Duration::from_millis(100)).await;
                talker.write_all(b"x").await.unwrap();
            }
            t0.elapsed()
        };
        let ((silent, at), _, talked_until) = tokio::join!(silent, busy, feed);
        assert_eq!(silent.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // The premise: the talk outlasted `idle`, else the silent side would pass alone.
        assert!(talked_until > idle * 2, "{talked_until:?}");
        // Alive while the other side talked, closed after it stopped: within `idle` on an
        // idle machine, bounded generously here for a loaded one (it must not hang).
        assert!(
            at >= talked_until,
            "closed at {at:?}, talk until {talked_until:?}"
        );
        assert!(
            at < talked_until + idle + Duration::from_secs(5),
            "closed at {at:?}, talk until {talked_until:?}"
        );
        assert_eq!(counter.load(Ordering::Relaxed), WRITES);
    }

    #[test]
    fn hosts_take_every_member_of_a_route_with_its_weight() {
        let route = lb_model::Route {
            service: "http".into(),
            ..crate::testing::pool_route("judge", 30080, &["10.0.0.21:80", "10.0.0.22:80 weight=2"])
        };
        let hosts = Hosts::new(
            "http",
            vec!["http.lab.example".into()],
            std::slice::from_ref(&route),
        );
        let pool = hosts.pool("judge.http.lab.example").unwrap();
        let picks: Vec<String> = (0..6)
            .map(|_| pool.pick(&[]).unwrap().backend.addr.to_string())
            .collect();
        assert_eq!(
            picks,
            [
                "10.0.0.22:80",
                "10.0.0.21:80",
                "10.0.0.22:80",
                "10.0.0.22:80",
                "10.0.0.21:80",
                "10.0.0.22:80"
            ]
        );
        // A request still open on a member counts in the pool of the next update.
        let open = pool.pick(&[]).unwrap();
        hosts.update(&[route]);
        let again = hosts.pool("judge.http.lab.example").unwrap();
        assert_eq!(again.outstanding(open.backend.addr), 1);
        assert!(hosts.pool("nobody.http.lab.example").is_none());
    }
}
