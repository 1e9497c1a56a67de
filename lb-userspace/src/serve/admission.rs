//! Who gets a connection when the servers that hold one per client (the web routers, the
//! portal, DNS over TCP) are full: the one owner of "the client of an address" and of the
//! fair-share rule all of them apply.
//!
//! A client is its [`ClientKey`]: an IPv4 address, or an IPv6 address's /64 (one host gets
//! a /64 and chooses the rest, so an exact IPv6 address would be no limit at all).
//!
//! [`Admission`] counts connections in total and per client. At the total limit a newcomer
//! whose client holds fewer than the client holding the most takes one of that client's
//! places: the connection idle longest (no bytes either way, as its [`Activity`] says) is
//! ended, and its task, which waits on [`Slot::evicted`] beside its work, drops its sockets.
//! The client holding the most is never served at another's expense: it is refused as
//! before ([`Share::Fewer`], the web routers and the portal; DNS/TCP's [`Share::AtMost`]
//! lets an equal, or the client itself, replace an idle client, which loses nothing). So a
//! few greedy addresses filling the limit no longer hand the service to whoever filled it
//! first.
//!
//! Invariant: the counts are those of the slots in the table; an evicted slot leaves the
//! table at once (the newcomer takes its place), and its descriptors close as soon as its
//! task runs next, which it does promptly since it only has to return.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

/// The client an address counts as, for every per-address limit: an IPv4 address
/// (IPv4-mapped IPv6 included), or an IPv6 address's /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey(IpAddr::V6(Ipv6Addr::from(bits)))
            }
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a client was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Full, and no client holds more than this one (with this connection) would.
    Full,
    /// This client holds its per-client limit already.
    ClientFull,
}

/// When a connection last moved (either direction), and whether it is in the middle of
/// something that ending it would lose (then it is not evicted).
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Marks the connection busy (not to be evicted) or idle again, which touches it.
    pub fn set_busy(&self, busy: bool) {
        self.touch();
        self.busy.store(busy, Ordering::Relaxed);
    }

    fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }
}

/// Whom a full server may evict for a newcomer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// A client that would still hold fewer than the greediest after the newcomer's
    /// connection: so two clients never take places back and forth. For connections whose
    /// end costs their client something (a relay, a request).
    Fewer,
    /// A client holding fewer than the greediest, and failing that the newcomer's own
    /// client: idle connections that lose nothing when closed (DNS clients between
    /// queries) give way even to an equal, and a client at the limit replaces its own idle
    /// ones rather than being refused.
    AtMost,
}

/// The connection limits of one server.
pub struct Admission {
    total: usize,
    per_client: usize,
    share: Share,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    next_id: u64,
    by_client: HashMap<ClientKey, Vec<Entry>>,
}

struct Entry {
    id: u64,
    activity: Arc<Activity>,
    evict: oneshot::Sender<()>,
}

/// One admitted connection; dropping it gives the place back. Its task must also wait on
/// [`Slot::evicted`] and end (dropping its sockets) when that resolves.
pub struct Slot {
    admission: Arc<Admission>,
    key: ClientKey,
    id: u64,
    activity: Arc<Activity>,
    evicted: oneshot::Receiver<()>,
}

/// What [`Admission::admit`] did besides admitting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evicted {
    /// The client whose connection was ended for this one.
    pub from: ClientKey,
}

impl Admission {
    /// At most `total` connections, `per_client` of them from one client.
    pub fn new(total: usize, per_client: usize, share: Share) -> Arc<Admission> {
        Arc::new(Admission {
            total,
            per_client,
            share,
            held: Mutex::new(Held::default()),
        })
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip`: a free one, or at the limit one that a greedier
    /// client gives up (said in the answer's second half).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Slot, Option<Evicted>), Refused> {
        let key = ClientKey::of(ip);
        let mut held = self.held();
        let mine = held.by_client.get(&key).map_or(0, Vec::len);
        if mine >= self.per_client {
            return Err(Refused::ClientFull);
        }
        let mut evicted = None;
        if held.total >= self.total {
            let from = self.victim(&held, key, mine).ok_or(Refused::Full)?;
            let entries = held.by_client.get_mut(&from).ok_or(Refused::Full)?;
            let idlest = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.activity.busy())
                .max_by_key(|(_, e)| (e.activity.idle_for(), std::cmp::Reverse(e.id)))
                .map(|(i, _)| i)
                .ok_or(Refused::Full)?;
            let gone = entries.remove(idlest);
            if entries.is_empty() {
                held.by_client.remove(&from);
            }
            held.total -= 1;
            // The task may have ended already; then its place is free all the same.
            let _ = gone.evict.send(());
            evicted = Some(Evicted { from });
        }
        let id = held.next_id;
        held.next_id += 1;
        held.total += 1;
        let activity = Arc::new(Activity::default());
        let (tx, rx) = oneshot::channel();
        held.by_client.entry(key).or_default().push(Entry {
            id,
            activity: activity.clone(),
            evict: tx,
        });
        let slot = Slot {
            admission: self.clone(),
            key,
            id,
            activity,
            evicted: rx,
        };
        Ok((slot, evicted))
    }

    /// The client that gives up a place for a newcomer of `key` holding `mine`: the one
    /// holding the most (among equals, the one with the connection idle longest), if it
    /// holds enough more than the newcomer (as `share` says) and has a connection that is
    /// not busy.
    fn victim(&self, held: &Held, key: ClientKey, mine: usize) -> Option<ClientKey> {
        let enough = |n: usize| match self.share {
            Share::Fewer => n > mine + 1,
            Share::AtMost => n > mine,
        };
        let idlest = |v: &Vec<Entry>| {
            v.iter()
                .filter(|e| !e.activity.busy())
                .map(|e| e.activity.idle_for())
                .max()
        };
        let other = held
            .by_client
            .iter()
            .filter(|(k, v)| **k != key && enough(v.len()))
            .filter_map(|(k, v)| Some((v.len(), idlest(v)?, *k)))
            .max_by_key(|(n, idle, _)| (*n, *idle))
            .map(|(_, _, k)| k);
        match self.share {
            Share::AtMost if other.is_none() => {
                held.by_client.get(&key).and_then(idlest).map(|_| key)
            }
            _ => other,
        }
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.held().total
    }

    /// Connections held now that are busy (not to be evicted): what a test waits for
    /// before it counts on them being spared, instead of sleeping.
    #[cfg(test)]
    pub fn busy_now(&self) -> usize {
        self.held()
            .by_client
            .values()
            .flatten()
            .filter(|e| e.activity.busy())
            .count()
    }

    /// The total limit.
    pub fn capacity(&self) -> usize {
        self.total
    }
}

impl Slot {
    /// Its connection's clock: touch it when bytes move, so that the idlest goes first.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    pub fn client(&self) -> ClientKey {
        self.key
    }

    /// Resolves when the admission ended this connection to make room for another
    /// client's; pending for as long as it holds its place.
    pub async fn evicted(&mut self) {
        if (&mut self.evicted).await.is_err() {
            // The sender is dropped only with the entry, which is removed by this slot's
            // own drop or by an eviction that sends first: never while this waits.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.admission.held();
        let Some(entries) = held.by_client.get_mut(&self.key) else {
            return;
        };
        let Some(i) = entries.iter().position(|e| e.id == self.id) else {
            return; // evicted: its place was given away already
        };
        entries.remove(i);
        if entries.is_empty() {
            held.by_client.remove(&self.key);
        }
        held.total -= 1;
    }
}

#[cfg(test)]
mod tests;
