//! The authoritative DNS zone for the routes: `_<service>._<proto>.<name>.<zone> SRV` (RFC
//! 2782), `<name>.<service>.<zone> SRV` and `A` (the short form), `<gateway>.<zone> A`, and
//! SOA/NS at the apex.
//!
//! Bird's-eye view: [`zone`] is pure, a [`Zone`] snapshot built from config + routes and the
//! functions that answer a request against it. This file is the I/O. UDP is served by
//! srvgate's own threads (one per core, up to 8, each blocking on a clone of the listen
//! socket with its own answer cache, cleared when the serial changes); TCP by a tokio task
//! per connection (RFC 7766 framing, one query after another), at most
//! [`fds::Budget::dns_tcp_clients`] at once. Both answer with [`zone::respond`] and read
//! the current snapshot through an [`ArcSwap`]. [`DnsServer::apply`] builds a new snapshot
//! from the old one and a change of the table (costing what the change touches) and swaps
//! it in, so a query sees either the old table or the new one, never a mix, and queries
//! never wait for an update.
//!
//! TCP clients are bounded in number, time and size: at the cap a new connection takes the
//! place of the idlest client of the address holding the most (an IPv6 /64 is one address;
//! its own idlest if no other address holds more; [`crate::serve::admission`]): closed, and
//! a client waiting for its next query loses nothing it asked for. It is closed at once
//! when no such client is between queries, rather than left waiting in the backlog; a client idle for [`TCP_IDLE_TIMEOUT`] is
//! closed, and after only [`TCP_BUSY_IDLE_TIMEOUT`] once the table is three quarters full
//! (RFC 7766 section 6.2.3: shorter timeouts under load); a query must arrive whole within
//! [`TCP_QUERY_TIMEOUT`] and be at most [`MAX_TCP_QUERY`] bytes. UDP needs no descriptor
//! per client, so it is not affected by any of this.
//!
//! Secondaries (`[dns.secondaries]`, [`DnsServer::serve_secondaries`]): zone transfers over
//! TCP ([`xfr`]), NOTIFY after changes ([`notify`]), both TSIG-signed ([`tsig`]); a signed
//! query from a secondary (its SOA check) gets a signed answer, past the answer cache.
//!
//! Deliberately absent: recursion (names outside the zone get REFUSED, RA is never set),
//! dynamic update, DNSSEC and wildcards. UDP answers are rate-limited per client network
//! ([`rrl`], `[dns.rrl]`, on by default) so that forged sources cannot make the zone an
//! amplifier; a UDP answer to a query with a client cookie carries a server cookie
//! ([`cookie`]), and a query presenting a valid one is exempt from the limit.

pub mod cookie;
pub mod notify;
pub mod rrl;
pub mod tsig;
pub mod xfr;
pub mod zone;

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use hickory_server::net::xfer::Protocol;
use socket2::Type;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinSet,
};

pub use zone::{next_serial, Zone, ZoneError, MAX_UDP_PAYLOAD};

use crate::{
    config,
    kernel::fds,
    serve::admission::{Activity, Admission, Share},
};

/// How long an idle TCP client may keep its connection (RFC 7766 suggests seconds).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The idle timeout once three quarters of the TCP client slots are taken.
pub const TCP_BUSY_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// A query's bytes, once its length arrived, and a reply's, must pass within this.
pub const TCP_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest query taken over TCP: as over UDP. A query is a name and an OPT record; a client
/// announcing more is not asking a question, and is disconnected.
pub const MAX_TCP_QUERY: usize = 4096;
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
    #[error(transparent)]
    Key(#[from] notify::KeyError),
}

/// The running DNS server. Dropping it stops the listeners too, but [`DnsServer::shutdown`]
/// waits for them to finish.
pub struct DnsServer {
    notifier: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tcp_tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    udp_workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// The TCP clients' table, kept for the tests to wait on instead of sleeping.
    #[cfg(test)]
    tcp_table: Arc<Admission>,
}

struct Shared {
    zone: ArcSwap<Zone>,
    /// Serialises updates, so two of them can't compute the same serial.
    writer: Mutex<()>,
    /// Set once, by [`DnsServer::serve_secondaries`].
    secondaries: OnceLock<Arc<xfr::Secondaries>>,
    /// The zone's recent changes for IXFR, kept only with secondaries. Locked around the
    /// zone's swap, so that a transfer reading both under it sees them agree.
    history: Mutex<xfr::History>,
    /// Wakes the notifier after a change.
    changed: tokio::sync::Notify,
    /// `[dns.rrl]`, for UDP answers.
    rrl: Option<rrl::Rrl>,
    /// Server cookies for UDP answers; a valid one exempts its query from `rrl`.
    cookies: cookie::Cookies,
}

impl Shared {
    /// Publishes `zone` (made from the current one by `removed`/`added`), recording the
    /// change for IXFR when there are secondaries.
    fn publish(
        &self,
        old: &Zone,
        zone: Zone,
        removed: &[lb_model::Route],
        added: &[lb_model::Route],
    ) {
        if self.secondaries.get().is_none() {
            self.zone.store(Arc::new(zone));
            return;
        }
        let delta = xfr::delta(old, &zone, removed, added);
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        history.push(delta);
        self.zone.store(Arc::new(zone));
        drop(history);
        self.changed.notify_one();
    }

    /// The current zone and the changes from `serial` to it, read together.
    fn zone_and_deltas(&self, serial: Option<u32>) -> (Arc<Zone>, Option<Vec<Arc<xfr::Delta>>>) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let zone = self.zone.load_full();
        let deltas = serial.and_then(|s| history.between(s, zone.serial()));
        (zone, deltas)
    }
}

impl DnsServer {
    /// Binds UDP and TCP on every listen address and serves the zone built from `routes`.
    /// With port 0, UDP and TCP share the port the kernel picks for UDP. TCP takes as many
    /// clients as the descriptor budget gives it.
    pub async fn start(
        cfg: &config::Dns,
        public_ipv4: Ipv4Addr,
        routes: &[lb_model::Route],
    ) -> Result<DnsServer, DnsError> {
        let clients = fds::Budget::current().dns_tcp_clients();
        Self::start_with(cfg, public_ipv4, routes, clients).await
    }

    /// [`DnsServer::start`] with at most `tcp_clients` TCP clients at once (over all the
    /// listen addresses).
    pub async fn start_with(
        cfg: &config::Dns,
        public_ipv4: Ipv4Addr,
        routes: &[lb_model::Route],
        tcp_clients: usize,
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
            writer: Mutex::new(()),
            secondaries: OnceLock::new(),
            history: Mutex::new(xfr::History::default()),
            changed: tokio::sync::Notify::new(),
            rrl: cfg.rrl.map(|r| rrl::Rrl::new(r.rate, r.slip)),
            cookies: cookie::Cookies::new(),
        });
        let table = tcp_admission(tcp_clients);
        let mut listeners = Vec::with_capacity(sockets.len());
        let mut addrs = Vec::with_capacity(sockets.len());
        let stop = Arc::new(AtomicBool::new(false));
        let mut udp_workers = Vec::new();
        for (udp, tcp, addr) in sockets {
            listeners.push(
                tokio::net::TcpListener::from_std(tcp).map_err(|e| bind_error(addr, "TCP", e))?,
            );
            udp_workers.extend(
                spawn_udp_workers(udp, &shared, &stop).map_err(|e| bind_error(addr, "UDP", e))?,
            );
            addrs.push(addr);
        }
        let tcp_tasks = listeners
            .into_iter()
            .map(|l| tokio::spawn(serve_tcp(l, shared.clone(), table.clone())))
            .collect();
        #[cfg(test)]
        let tcp_table = table;
        tracing::info!(
            zone = %cfg.zone,
            serial,
            routes = routes.len(),
            listen = ?addrs,
            tcp_clients,
            "DNS server started"
        );
        Ok(DnsServer {
            notifier: Mutex::new(None),
            tcp_tasks,
            shared,
            addrs,
            udp_workers,
            stop,
            #[cfg(test)]
            tcp_table,
        })
    }

    /// The TCP clients held now, and how many of them are in the middle of a query.
    #[cfg(test)]
    pub(crate) fn tcp_clients(&self) -> (usize, usize) {
        (self.tcp_table.open(), self.tcp_table.busy_now())
    }

    /// Applies a change of the table: the routes `removed` go, `added` come (a route changed
    /// in place is in both). Costs what the change touches, not the zone's size, so it can
    /// follow every single add; queries keep the old snapshot until the swap.
    pub fn apply(&self, removed: &[lb_model::Route], added: &[lb_model::Route]) {
        let shared = &self.shared;
        let _writer = shared.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let old = shared.zone.load_full();
        let serial = next_serial(old.serial(), unix_now());
        let zone = old.with_changes(removed, added, serial);
        shared.publish(&old, zone, removed, added);
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

    /// UDP answers sent truncated and dropped by rate limiting; `None` when it is off.
    pub fn rrl_counts(&self) -> Option<(u64, u64)> {
        self.shared.rrl.as_ref().map(rrl::Rrl::counts)
    }

    /// Sets the SOA serial (a shared store's revision, so that gateways agree), keeping
    /// the records; a serial already in force changes nothing.
    pub fn set_serial(&self, serial: u32) {
        let shared = &self.shared;
        let _writer = shared.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let old = shared.zone.load_full();
        if old.serial() != serial {
            shared.publish(&old, old.with_changes(&[], &[], serial), &[], &[]);
        }
    }

    /// Serves `secondaries`: transfers to them, NOTIFY after every change (and now, so a
    /// restart is noticed). With `state_dir`, the serial continues above the one the last
    /// run saved there, and each change's is saved. Once per server; a second call is
    /// ignored with a warning.
    pub fn serve_secondaries(&self, secondaries: xfr::Secondaries, state_dir: Option<PathBuf>) {
        let shared = &self.shared;
        {
            let _writer = shared.writer.lock().unwrap_or_else(PoisonError::into_inner);
            if shared.secondaries.set(Arc::new(secondaries)).is_err() {
                tracing::warn!("DNS: secondaries already served; the new list is ignored");
                return;
            }
            let old = shared.zone.load_full();
            let saved = state_dir.as_deref().and_then(notify::saved_serial);
            if let Some(saved) = saved.filter(|&s| !xfr::serial_lt(s, old.serial())) {
                let serial = next_serial(saved, unix_now());
                shared
                    .zone
                    .store(Arc::new(old.with_changes(&[], &[], serial)));
                tracing::info!(saved, serial, "DNS: serial continues above the last run's");
            }
        }
        shared.changed.notify_one();
        let task = tokio::spawn(notify::run(shared.clone(), state_dir));
        *self.notifier.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
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
        if let Some(t) = self
            .notifier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
        // Each accept task owns its connections' tasks: aborting it ends them too.
        for t in std::mem::take(&mut self.tcp_tasks) {
            t.abort();
            let _ = t.await;
        }
        let _ = joined.await;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Without shutdown(): the UDP workers still notice within UDP_STOP_POLL and exit.
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tcp_tasks {
            t.abort();
        }
        if let Some(t) = self
            .notifier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            t.abort();
        }
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
        let query = &buf[..n];
        let now = unix_now();
        let presented = cookie::presented(query);
        let proven = presented
            .as_ref()
            .is_some_and(|p| shared.cookies.valid(p, peer.ip(), now));
        // Every answer counts against its network's rate, whatever it turns out to be,
        // unless a server cookie proved the source.
        if let (Some(limit), false) = (&shared.rrl, proven) {
            match limit.check(peer.ip(), now) {
                rrl::Verdict::Answer => {}
                rrl::Verdict::Drop => continue,
                rrl::Verdict::Slip => {
                    if let Some(tc) = rrl::slip(&buf[..n]) {
                        if let Err(error) = socket.send_to(&tc, peer) {
                            tracing::debug!(%error, %peer, "DNS UDP reply not sent");
                        }
                    }
                    continue;
                }
            }
        }
        // After the limit: a forged flood of signed-looking queries costs a MAC each.
        if let Some(reply) = signed_answer(shared, &buf[..n], Protocol::Udp, peer) {
            if let Err(error) = socket.send_to(&reply, peer) {
                tracing::debug!(%error, %peer, "DNS UDP reply not sent");
            }
            continue;
        }
        let zone = shared.zone.load();
        if cache.answer(&zone, query, &mut out) {
            // The cached answer is the same for every client; the cookie is this one's.
            if let Some(p) = &presented {
                let server = shared.cookies.make(&p.client, peer.ip(), now);
                cookie::add(&mut out, &p.client, &server, p.limit());
            }
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
///
/// Bounded in bytes ([`AnswerCache::MAX_BYTES`] per worker, at most 8 workers), and only
/// ordinary questions are kept: a query longer than [`AnswerCache::MAX_QUERY`] or one that
/// is dropped or gets FORMERR is answered afresh every time, so a flood of large or
/// malformed distinct queries costs CPU but no memory.
#[derive(Default)]
pub(crate) struct AnswerCache {
    serial: Option<u32>,
    /// `None`: the query is to be dropped.
    answers: HashMap<Box<[u8]>, Option<Box<[u8]>>>,
    /// Key and reply bytes held, plus [`AnswerCache::ENTRY_OVERHEAD`] per entry.
    bytes: usize,
}

impl AnswerCache {
    /// Memory one worker's cache may hold; full, it starts over (a flood of distinct names
    /// then costs a parse each, which is what an uncached server does anyway).
    pub const MAX_BYTES: usize = 4 << 20;
    /// Longest query cached: a 255-byte name, the question's fixed part and an OPT record
    /// with a cookie fit well within it.
    pub const MAX_QUERY: usize = 512;
    /// The map's own cost per entry (two boxes, the option, hashing slack), roughly.
    const ENTRY_OVERHEAD: usize = 64;

    /// Writes the UDP reply to `query` into `out`; false when it is to be dropped.
    pub(crate) fn answer(&mut self, zone: &Zone, query: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        if query.len() < 12 {
            return false;
        }
        // Serials strictly increase with every update, so they name a snapshot.
        if self.serial != Some(zone.serial()) {
            self.clear();
            self.serial = Some(zone.serial());
        }
        let key = &query[2..];
        if let Some(cached) = self.answers.get(key) {
            let Some(rest) = cached else {
                return false;
            };
            out.extend_from_slice(&query[..2]);
            out.extend_from_slice(rest);
            return true;
        }
        let Some(fresh) = zone::respond(zone, query, Protocol::Udp, MAX_UDP_PAYLOAD) else {
            return false;
        };
        out.extend_from_slice(&fresh);
        // RCODE is the low nibble of the fourth byte; 1 is FORMERR.
        let formerr = fresh.get(3).is_some_and(|b| b & 0x0f == 1);
        if query.len() <= Self::MAX_QUERY && !formerr {
            let cost = key.len() + fresh.len() + Self::ENTRY_OVERHEAD;
            if self.bytes + cost > Self::MAX_BYTES {
                self.clear();
            }
            self.bytes += cost;
            let rest = fresh[2.min(fresh.len())..].to_vec().into_boxed_slice();
            self.answers.insert(key.into(), Some(rest));
        }
        true
    }

    fn clear(&mut self) {
        self.answers.clear();
        self.answers.shrink_to(1024);
        self.bytes = 0;
    }

    /// Bytes held, as counted against [`AnswerCache::MAX_BYTES`].
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.answers.len()
    }
}

/// The DNS/TCP clients of all listen addresses: `Share::AtMost`, since a client between
/// queries loses nothing when closed, and no per-client limit beyond the total (a client
/// at the total replaces its own idle connections).
fn tcp_admission(capacity: usize) -> Arc<Admission> {
    Admission::new(capacity, usize::MAX, Share::AtMost)
}

/// Whether fewer than a quarter of the slots are free: then idle clients go sooner.
fn busy(table: &Admission) -> bool {
    table.capacity().saturating_sub(table.open()) < table.capacity() / 4
}

/// Accepts DNS/TCP clients on `listener` while the admission finds a slot; otherwise
/// closes the new connection at once, so the client can try another server instead of
/// waiting.
async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>, table: Arc<Admission>) {
    let mut backoff = fds::AcceptBackoff::new("DNS TCP");
    let mut clients = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.accepted();
        while clients.try_join_next().is_some() {}
        let Ok((mut slot, _)) = table.admit(peer.ip()) else {
            refused += 1;
            // Once per thousand: a flood is worth knowing about, not a line per connection.
            if refused % 1000 == 1 {
                tracing::warn!(%peer, refused, "DNS TCP: {} clients at once, none idle that may give way; closing new connections", table.capacity());
            }
            continue;
        };
        let (shared, table) = (shared.clone(), table.clone());
        clients.spawn(async move {
            let activity = slot.activity().clone();
            tokio::select! {
                r = serve_tcp_client(stream, peer, &shared, &table, &activity) => {
                    if let Err(error) = r {
                        tracing::debug!(%error, %peer, "DNS TCP client");
                    }
                }
                // Chosen while idle: dropping the future closes the connection.
                () = slot.evicted() => {}
            }
            drop(slot);
        });
    }
}

/// One TCP client: length-prefixed queries (RFC 1035 section 4.2.2), answered in order,
/// until it closes or idles too long; busy (not to be evicted) from a query's length to
/// its answer.
async fn serve_tcp_client(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    table: &Admission,
    activity: &Activity,
) -> io::Result<()> {
    let timed_out = || io::Error::from(io::ErrorKind::TimedOut);
    let mut query = Vec::with_capacity(512);
    loop {
        let idle = if busy(table) {
            TCP_BUSY_IDLE_TIMEOUT
        } else {
            TCP_IDLE_TIMEOUT
        };
        activity.set_busy(false);
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        activity.set_busy(true);
        let len = usize::from(u16::from_be_bytes(len));
        if len > MAX_TCP_QUERY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a {len}-byte query (at most {MAX_TCP_QUERY})"),
            ));
        }
        query.clear();
        query.resize(len, 0);
        tokio::time::timeout(TCP_QUERY_TIMEOUT, stream.read_exact(&mut query))
            .await
            .map_err(|_| timed_out())??;
        let replies = if xfr::is_transfer(&query) {
            transfer(shared, &query, peer)
        } else if let Some(reply) = signed_answer(shared, &query, Protocol::Tcp, peer) {
            vec![reply]
        } else {
            let zone = shared.zone.load();
            // A response or a runt: dropped, as over UDP; the connection stays.
            zone::respond(&zone, &query, Protocol::Tcp, MAX_UDP_PAYLOAD)
                .into_iter()
                .collect()
        };
        for reply in replies {
            let Ok(n) = u16::try_from(reply.len()) else {
                continue;
            };
            let mut out = Vec::with_capacity(2 + reply.len());
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&reply);
            tokio::time::timeout(TCP_QUERY_TIMEOUT, stream.write_all(&out))
                .await
                .map_err(|_| timed_out())??;
        }
    }
}

/// A zone transfer's messages for `peer`, or its refusal, logged with the client's address.
fn transfer(shared: &Shared, query: &[u8], peer: SocketAddr) -> Vec<Vec<u8>> {
    let ixfr_serial = xfr::ixfr_serial(query);
    let (zone, deltas) = shared.zone_and_deltas(ixfr_serial);
    let secondaries = shared.secondaries.get().map(|s| &**s);
    let (messages, refusal) = xfr::answer(
        secondaries,
        &zone,
        move |_| deltas,
        query,
        peer.ip(),
        unix_now().into(),
    );
    match refusal {
        Some(reason) => tracing::warn!(client = %peer, %reason, "DNS: zone transfer refused"),
        None => tracing::info!(
            client = %peer,
            serial = zone.serial(),
            messages = messages.len(),
            "DNS: zone transferred"
        ),
    }
    messages
}

/// With secondaries, a query carrying TSIG (a secondary's SOA check) is verified and
/// answered signed, or refused NOTAUTH; `None` for every other query, which takes the
/// ordinary path (no cost there without secondaries).
fn signed_answer(
    shared: &Shared,
    query: &[u8],
    protocol: Protocol,
    peer: SocketAddr,
) -> Option<Vec<u8>> {
    let secondaries = shared.secondaries.get()?;
    // Only a query with an additional record besides the usual OPT can carry TSIG.
    if query.len() < 12 || query[11] == 0 && query[10] == 0 {
        return None;
    }
    tsig::find(query).ok()??;
    let now = u64::from(unix_now());
    let verified = match tsig::verify(&secondaries.key, query, now) {
        Ok(v) if secondaries.allows(peer.ip()) => v,
        Ok(_) => {
            tracing::warn!(client = %peer, "DNS: signed query from an address not in [dns.secondaries]; refused");
            return Some(xfr::refusal(
                query,
                hickory_proto::op::ResponseCode::Refused,
            ));
        }
        Err(reason) => {
            tracing::warn!(client = %peer, %reason, "DNS: signed query refused");
            return Some(xfr::refusal(
                query,
                hickory_proto::op::ResponseCode::NotAuth,
            ));
        }
    };
    let plain = tsig::strip(query, &verified);
    let zone = shared.zone.load();
    let mut reply = zone::respond(&zone, &plain, protocol, MAX_UDP_PAYLOAD)?;
    tsig::sign(
        &secondaries.key,
        &mut reply,
        tsig::Chain::Response(&verified.mac),
        now,
    );
    Some(reply)
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

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = super::listen::socket(addr, Type::DGRAM)?;
    if let Err(error) = socket.set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::debug!(%error, "DNS UDP receive buffer left at the default");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    super::listen::tcp(addr)
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
mod client_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod xfr_tests;
