//! The etcd client: [`EtcdStore`] is both the daemon's [`Store`] and its [`Cluster`] with
//! `[cluster]`: routes, accounts and port allocations live under one key prefix
//! (`keys.rs`), a change is one etcd transaction that is refused when another gateway got
//! there first (the port, the route's key or its backend already taken), and
//! [`Cluster::follow`] watches the prefix and hands every other gateway's change to the
//! daemon, which applies it to its table, maps, DNS and web routers like its own.
//!
//! The store runs its own small tokio runtime: the core calls it synchronously under its
//! lock, from any thread, and each call is bounded by [`REQUEST_TIMEOUT`], so an etcd that
//! does not answer costs a change a refusal, never a hung daemon. Forwarding and DNS never
//! wait for etcd: they run from the table the daemon already has.
//!
//! The watch follows from the revision the table was loaded at. When it is lost (etcd
//! stopped, the connection cut, the revision compacted away) the store loads the whole
//! table again, with back-off, and hands it over as one [`Remote::Resync`]; the watch then
//! follows from that revision. A gateway's own changes come back through the watch too:
//! their revisions are remembered and skipped, so a late echo never undoes a later change.
//!
//! Activity and reclaim: each gateway publishes its own last-seen times (`publish_seen`,
//! called coarsely by the daemon) and follows the others' through the same watch
//! ([`Remote::Seen`]), so every table holds the latest time across gateways. One gateway,
//! the holder of the `leader` key (taken on its announcement's lease), reclaims idle
//! routes, and its removal is fenced by that key: a gateway that lost the lead while it
//! decided cannot remove anything.
//!
//! Start: [`EtcdStore::connect`] failing is the daemon's `ClusterUnreachable` (exit 1), since a
//! gateway starts only with the shared table, loaded whole a page of keys at a time at one
//! revision, every gateway's last-seen times merged in ([`merge_seen`], the latest wins).
//! Each gateway announces itself under `gateways/<id>` on a lease it renews (the members
//! `srvgate status` shows), and stands for `leader` on that lease. A resync says why it
//! happened; the routes this gateway wrote after the resync's table was read are left as the
//! daemon has them (`Cluster::written_since`), since the watch skips its own writes. A student's
//! claim is `Cluster::record_claim`, one transaction with the user's stamp (the quota across
//! gateways); `save_accounts` removes an account only while etcd holds none of its routes.
//! The key layout is `keys.rs`; `[cluster]`'s TLS files are read by `tls.rs`.

use std::{
    collections::{BTreeSet, HashSet},
    future::Future,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::{runtime::Runtime, sync::mpsc};
use tracing::{error, info, warn};

use super::{
    keys::{self, Kind},
    tls, Claim, Cluster, Remote,
};
use crate::table::{
    state::{Commit, RouteChange, StateError, Store, StoredRoute},
    users::{Denied, Users},
};
use lb_model::{api::ClusterView, RouteKey};

/// Every request to etcd (a load page, a transaction) is answered within this or refused.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Back-off between attempts to load the table again after the watch was lost.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Keys read per request when loading the table.
const PAGE: i64 = 1000;
/// Guard keys per transaction (a route has 2 plus one per backend); etcd's default
/// `--max-txn-ops` is 128.
const KEYS_PER_TXN: usize = 120;
/// Routes per removal (up to 3 + `lb_model::MAX_BACKENDS` operations each: the route, its port,
/// each backend, its last-seen times): sized for the largest pools, since a removal learns
/// a route's pool only from the read inside it.
const DELETES_PER_TXN: usize = KEYS_PER_TXN / (3 + lb_model::MAX_BACKENDS);
/// `puts` cut into runs of at most [`KEYS_PER_TXN`] guard keys; a route is never split
/// (its 2 + `lb_model::MAX_BACKENDS` keys fit in one run).
fn by_keys<'a, 'b>(puts: &'b [&'a StoredRoute]) -> Vec<&'b [&'a StoredRoute]> {
    let mut runs = Vec::new();
    let (mut start, mut keys) = (0, 0);
    for (i, s) in puts.iter().enumerate() {
        let cost = 2 + s.route.backends.members().len();
        if keys + cost > KEYS_PER_TXN && i > start {
            runs.push(&puts[start..i]);
            (start, keys) = (i, 0);
        }
        keys += cost;
    }
    if start < puts.len() {
        runs.push(&puts[start..]);
    }
    runs
}

/// Times a claim counts again when another claim of the same user moved the stamp
/// between its count and its write.
const CLAIM_ATTEMPTS: usize = 5;
/// Accounts one save may remove: each is one compare and one put (and two reads), within
/// etcd's default `--max-txn-ops` of 128 with room for the rest.
const REMOVALS_PER_SAVE: usize = 100;
/// Accounts added in one save whose old `holds/<name>` tombstone is cleared (one
/// operation each); a bulk add beyond (a config file's first start) has none to clear.
const ADDS_STAMPED: usize = 20;
/// Last-seen times per transaction (each a nested transaction of one compare and one put).
const SEEN_PER_TXN: usize = 100;
/// The announcement's lease: a gateway that stops renewing it leaves the member list
/// after this long.
const MEMBER_TTL: i64 = 10;
const MEMBER_RENEW: Duration = Duration::from_secs(3);

/// What the status shows, shared between the store (under the core's lock) and the watch.
#[derive(Default)]
struct Status {
    connected: AtomicBool,
    revision: AtomicI64,
    /// The revision of the last change to the table (`keys::changed_key`'s): what every
    /// gateway that applied the same changes agrees on, unlike the store's revision, which
    /// other keys (announcements) move too. The SOA serial.
    changed: AtomicI64,
    last_sync: Mutex<Option<SystemTime>>,
    error: Mutex<Option<String>>,
    members: Mutex<BTreeSet<String>>,
    /// The gateway that holds the `leader` key, as last read or watched; `None` while
    /// unknown (no one holds it, or the watch is lost).
    leader: Mutex<Option<String>>,
    own: Mutex<OwnWrites>,
}

/// This gateway's writes the watch has not passed yet.
#[derive(Default)]
struct OwnWrites {
    pending: HashSet<i64>,
    /// The highest revision the watch has delivered (or the last load's).
    watched: i64,
    /// The routes each own write touched, by revision, kept while a resync's table (read
    /// at `resync`) may still be on its way to the daemon: writes after that revision
    /// are not in it, and the watch skips them, so the daemon must keep its own view of
    /// those routes (see [`Cluster::written_since`]).
    recent: std::collections::BTreeMap<i64, Vec<RouteKey>>,
    resync: Option<i64>,
}

impl Status {
    /// Remembers a revision this gateway wrote, unless the watch is already past it (its
    /// echo was then applied already, harmlessly: it changed nothing).
    fn wrote(&self, revision: i64, keys: Vec<RouteKey>) {
        let mut own = lock(&self.own);
        if revision > own.watched {
            own.pending.insert(revision);
        }
        if own.resync.is_some_and(|r| revision > r) || revision > own.watched {
            own.recent.insert(revision, keys);
        }
        drop(own);
        self.revision.fetch_max(revision, Ordering::SeqCst);
        self.changed.fetch_max(revision, Ordering::SeqCst);
    }

    /// The routes this gateway wrote after `revision`; the resync at `revision` is then
    /// applied, and what the watch passed is forgotten.
    fn written_since(&self, revision: i64) -> Vec<RouteKey> {
        let mut own = lock(&self.own);
        let keys = own
            .recent
            .range(revision + 1..)
            .flat_map(|(_, k)| k.iter().cloned())
            .collect();
        if own.resync == Some(revision) {
            own.resync = None;
            let watched = own.watched;
            own.recent = own.recent.split_off(&(watched + 1));
        }
        keys
    }

    fn is_own(&self, revision: i64) -> bool {
        lock(&self.own).pending.contains(&revision)
    }

    /// The watch (or a load) has delivered everything up to `revision`.
    fn passed(&self, revision: i64) {
        let mut own = lock(&self.own);
        own.watched = own.watched.max(revision);
        let watched = own.watched;
        own.pending.retain(|&r| r > watched);
        let keep_after = own.resync.map_or(watched, |r| r.min(watched));
        own.recent = own.recent.split_off(&(keep_after + 1));
        drop(own);
        self.revision.fetch_max(revision, Ordering::SeqCst);
    }

    fn lost(&self, why: String) {
        self.connected.store(false, Ordering::SeqCst);
        // Whoever leads now, this gateway cannot tell: it must not act as the leader.
        *lock(&self.leader) = None;
        *lock(&self.error) = Some(why);
    }

    fn synced(&self, revision: i64, changed: i64, members: BTreeSet<String>) {
        self.passed(revision);
        self.changed.store(changed, Ordering::SeqCst);
        *lock(&self.last_sync) = Some(SystemTime::now());
        *lock(&self.members) = members;
        *lock(&self.error) = None;
        self.connected.store(true, Ordering::SeqCst);
    }

    /// Records who leads (logged when it changes).
    fn set_leader(&self, leader: Option<String>, own: &str) {
        let mut l = lock(&self.leader);
        if *l == leader {
            return;
        }
        match &leader {
            Some(id) if id == own => {
                info!(leader = %id, "cluster: this gateway is the leader now: it reclaims idle routes for the cluster")
            }
            Some(id) => {
                info!(leader = %id, "cluster: {id} is the leader (it reclaims idle routes)")
            }
            None => info!("cluster: no gateway leads for now; idle routes wait"),
        }
        *l = leader;
    }

    /// Whether this gateway is the one that reclaims: connected and holding the key.
    fn leads(&self, own: &str) -> bool {
        self.connected.load(Ordering::SeqCst) && lock(&self.leader).as_deref() == Some(own)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The whole prefix at one revision, as read.
struct Snapshot {
    revision: i64,
    routes: Vec<(Vec<u8>, Vec<u8>)>,
    /// The accounts document and its `mod_revision`.
    accounts: Option<(Vec<u8>, i64)>,
    members: BTreeSet<String>,
    /// The revision of the last change to the table.
    changed: i64,
    /// Every gateway's last-seen times: route, gateway, time.
    seen: Vec<(RouteKey, String, SystemTime)>,
    leader: Option<String>,
    /// The members the leader's verdicts say are down.
    down: Vec<(RouteKey, SocketAddrV4)>,
}

/// Gives each route the latest last-seen time any gateway published for it (a route never
/// seen keeps what it had).
/// A last-seen value read from etcd; one that is not Unix seconds in range (damage, or a
/// time past year 9999) is ignored with a warning naming its key: one gateway's time of
/// one route is not worth refusing the table for.
fn seen_value(key: &[u8], value: &[u8]) -> Option<SystemTime> {
    let at = keys::decode_seen(value);
    if at.is_none() {
        warn!(
            key = %String::from_utf8_lossy(key),
            value = %String::from_utf8_lossy(&value[..value.len().min(32)]),
            "etcd: ignoring a last-seen value that is not Unix seconds up to year 9999"
        );
    }
    at
}

pub fn merge_seen(routes: &mut [StoredRoute], seen: &[(RouteKey, String, SystemTime)]) {
    let mut latest: std::collections::HashMap<&RouteKey, SystemTime> =
        std::collections::HashMap::new();
    for (k, _, at) in seen {
        let t = latest.entry(k).or_insert(*at);
        *t = (*t).max(*at);
    }
    for r in routes {
        if let Some(&at) = latest.get(&r.route.key()) {
            r.last_seen = Some(r.last_seen.map_or(at, |t| t.max(at)));
        }
    }
}

/// The shared table in etcd, for one gateway.
pub struct EtcdStore {
    /// `None` only while dropping (see `Drop`).
    rt: Option<Runtime>,
    client: Client,
    cluster: super::ClusterSettings,
    endpoints: String,
    status: Arc<Status>,
    /// What the table was loaded from at start, until [`Cluster::follow`].
    initial: Option<Snapshot>,
    /// The accounts document's `mod_revision` the core's accounts are (0: none stored).
    accounts_rev: i64,
    /// The names in that document: a save that drops one removes an account, which the
    /// store fences against claims ([`EtcdStore::save_accounts`]).
    accounts_names: BTreeSet<String>,
}

/// How a conditional put of routes ended.
enum Put {
    Done(i64),
    /// Only the claim's stamp had moved: count again.
    StampMoved,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which tokio forbids on an async
        // thread (where the daemon may drop the core); its tasks hold nothing to finish.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl EtcdStore {
    /// Connects to `cluster.etcd` and loads the whole table (strictly: see
    /// [`Store::load_routes`]).
    pub fn connect(cluster: &super::ClusterSettings) -> Result<EtcdStore, StateError> {
        let endpoints = cluster.etcd.join(",");
        let unavailable = |action: &'static str, reason: String| StateError::Unavailable {
            endpoints: endpoints.clone(),
            action,
            reason,
        };
        // Before the runtime: a bad file returns here, and dropping a runtime is refused
        // on the async thread the daemon starts on (see `Drop`).
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            // A peer that vanishes without a reset (a cut cable) ends the watch within
            // seconds instead of TCP's minutes.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        match &cluster.tls {
            Some(t) => options = options.with_tls(tls::options(t)?),
            None => warn!(
                endpoints,
                "cluster: etcd is reached over plain HTTP (insecure_http = true): whoever reaches it can read every account's token digest and write the accounts, i.e. make themselves admin; use https:// with a client certificate"
            ),
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("srvgate-etcd")
            .enable_all()
            .build()
            .map_err(|e| unavailable("start its client", e.to_string()))?;
        let urls = cluster.etcd.clone();
        let connected = run(&rt, async move {
            tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(urls, Some(options)))
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|e| describe(&e))
        })
        .map_err(|e| ("connect", e))
        .and_then(|client| {
            let mut reader = client.clone();
            run(&rt, async move { load(&mut reader).await })
                .map(|snapshot| (client, snapshot))
                .map_err(|e| ("load the shared table", e))
        });
        let (client, snapshot) = match connected {
            Ok(c) => c,
            Err((action, reason)) => {
                // Dropping a runtime blocks, which tokio refuses on the async thread the
                // daemon starts on (see `Drop`).
                rt.shutdown_background();
                return Err(unavailable(action, reason));
            }
        };
        let status = Arc::new(Status::default());
        status.synced(
            snapshot.revision,
            snapshot.changed,
            snapshot.members.clone(),
        );
        status.set_leader(snapshot.leader.clone(), &cluster.gateway_id);
        let accounts_rev = snapshot.accounts.as_ref().map_or(0, |(_, r)| *r);
        // A document that does not parse fails `load_accounts` at start anyway.
        let accounts_names = snapshot
            .accounts
            .as_ref()
            .and_then(|(bytes, _)| {
                crate::table::state::accounts::parse(Path::new(&keys::accounts_key()), bytes).ok()
            })
            .map(|u| names(&u))
            .unwrap_or_default();
        info!(
            endpoints,
            gateway_id = %cluster.gateway_id,
            revision = snapshot.revision,
            routes = snapshot.routes.len(),
            "cluster: shared table loaded from etcd"
        );
        Ok(EtcdStore {
            rt: Some(rt),
            client,
            cluster: cluster.clone(),
            endpoints,
            status,
            initial: Some(snapshot),
            accounts_rev,
            accounts_names,
        })
    }

    /// A request that failed. Whether the store counts as connected is the watch's to say
    /// (it notices a lost etcd by itself): one refused request must not mark it lost for
    /// good while the watch runs on.
    fn unavailable(&self, action: &'static str, reason: String) -> StateError {
        StateError::Unavailable {
            endpoints: self.endpoints.clone(),
            action,
            reason,
        }
    }

    /// Runs `f` on the store's runtime and waits for it, at most [`REQUEST_TIMEOUT`].
    fn call<T: Send + 'static>(
        &self,
        action: &'static str,
        f: impl FnOnce(
            Client,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<T, etcd_client::Error>> + Send>>,
    ) -> Result<T, StateError> {
        let Some(rt) = &self.rt else {
            return Err(self.unavailable(action, "the client is stopped".into()));
        };
        let fut = f(self.client.clone());
        run(rt, async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(describe(&e)),
                Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
            }
        })
        .map_err(|reason| self.unavailable(action, reason))
    }

    /// Puts the routes of `puts` (new ones): one transaction demanding that none of their
    /// keys, ports or backends exists yet, and, for a claim, that the user's stamp
    /// (`holds/<name>`) still has the `mod_revision` read with their count (and moving it).
    fn put_routes(
        &self,
        puts: &[&StoredRoute],
        stamp: Option<(&str, i64)>,
    ) -> Result<Put, StateError> {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut reads = Vec::new();
        // Where each route's guards start among `reads`: route, port, then its backends.
        let mut starts = Vec::new();
        for s in puts {
            let r = &s.route;
            let key_text = r.key().to_string();
            starts.push(reads.len());
            let mut guards = vec![
                (keys::route_key(&r.key()), keys::encode_route(s)),
                (keys::port_key(r.port, r.protocol), key_text.clone()),
            ];
            guards.extend(
                keys::backend_keys(r)
                    .into_iter()
                    .map(|k| (k, key_text.clone())),
            );
            for (k, v) in guards {
                compares.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
                reads.push(TxnOp::get(k.clone(), None));
                ops.push(TxnOp::put(k, v, None));
            }
        }
        if let Some((key, revision)) = stamp {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, revision));
            ops.push(TxnOp::put(key, "", None));
            reads.push(TxnOp::get(key, None));
        }
        let ports = TxnOp::get(
            format!("{}ports/", keys::PREFIX),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        );
        reads.push(ports);
        ops.push(TxnOp::put(keys::changed_key(), "", None));
        let txn = Txn::new().when(compares).and_then(ops).or_else(reads);
        let resp = self.call("add the route", move |mut c| {
            Box::pin(async move { c.txn(txn).await })
        })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(Put::Done(revision));
        }
        // Say which guard held, and hand back the ports taken so that an allocation can
        // go around them.
        let found: Vec<Option<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .collect();
        let mut reason = Vec::new();
        for (i, s) in puts.iter().enumerate() {
            let r = &s.route;
            let holder = |j: usize| {
                found
                    .get(starts[i] + j)
                    .and_then(Option::as_ref)
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            };
            if holder(0).is_some() {
                reason.push(format!("route {} already exists", r.key()));
            } else if let Some(by) = holder(1) {
                reason.push(format!(
                    "port {}/{} was just taken by {by} (claimed through another gateway)",
                    r.port, r.protocol
                ));
            } else if let Some((b, by)) = r
                .backends
                .addrs()
                .enumerate()
                .find_map(|(j, b)| holder(2 + j).map(|by| (b, by)))
            {
                reason.push(format!(
                    "backend {b}/{} is already a backend of {by}; replies could not be told apart",
                    r.protocol
                ));
            }
        }
        let mut taken = Vec::new();
        if let Some(TxnOpResponse::Get(g)) = resp.op_responses().last() {
            for kv in g.kvs() {
                if let Kind::Port(p, proto) = keys::classify(kv.key()) {
                    taken.push((p, proto));
                }
            }
        }
        if reason.is_empty() {
            if let Some((_, read)) = stamp {
                let now = found
                    .get(3 * puts.len())
                    .and_then(Option::as_ref)
                    .map_or(0, KeyValue::mod_revision);
                if now != read {
                    return Ok(Put::StampMoved);
                }
            }
            reason.push("changed by another gateway meanwhile; try again".into());
        }
        Err(StateError::Refused {
            reason: reason.join("; "),
            taken,
        })
    }

    /// User `name`'s stamp (`holds/<name>`'s `mod_revision`, 0 if none), whether it says
    /// the account was removed, and how many runtime routes the user holds: read together,
    /// at one revision.
    fn count_routes(&self, name: &str) -> Result<(i64, bool, usize), StateError> {
        let txn = Txn::new().and_then([
            TxnOp::get(keys::holds_key(name), None),
            TxnOp::get(
                keys::routes_of(name),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        ]);
        let resp = self.call("count the user's routes", move |mut c| {
            Box::pin(async move { c.txn(txn).await })
        })?;
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(stamp), Some(count)) = (gets.next(), gets.next()) else {
            return Err(self.unavailable(
                "count the user's routes",
                "etcd's answer lacks a read".into(),
            ));
        };
        let kv = stamp.kvs().first();
        Ok((
            kv.map_or(0, KeyValue::mod_revision),
            kv.is_some_and(|kv| kv.value() == keys::REMOVED.as_bytes()),
            usize::try_from(count.count()).unwrap_or(usize::MAX),
        ))
    }

    /// Deletes the routes `gone` with their port and backend keys and every gateway's
    /// last-seen time of them. A route already gone (another gateway removed it) is left
    /// alone. `fenced`: only while this gateway holds the `leader` key (a reclaim).
    fn delete_routes(&self, gone: &[&RouteKey], fenced: bool) -> Result<Option<i64>, StateError> {
        let route_keys: Vec<String> = gone.iter().map(|k| keys::route_key(k)).collect();
        let reads: Vec<TxnOp> = route_keys
            .iter()
            .map(|k| TxnOp::get(k.clone(), None))
            .collect();
        let txn = Txn::new().and_then(reads);
        let resp = self.call("read the routes to remove", move |mut c| {
            Box::pin(async move { c.txn(txn).await })
        })?;
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for (key, r) in route_keys.iter().zip(resp.op_responses()) {
            let TxnOpResponse::Get(g) = r else { continue };
            let Some(kv) = g.kvs().first() else { continue };
            let Kind::Route(k) = keys::classify(kv.key()) else {
                continue;
            };
            let route = keys::decode_routes(
                "etcd",
                &[(kv.key().to_vec(), kv.value().to_vec())],
                // Only the port and backend are needed here, never checked against it.
                Ipv4Addr::UNSPECIFIED,
            )
            .ok()
            .and_then(|mut v| v.pop());
            compares.push(Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            ));
            ops.push(TxnOp::delete(key.clone(), None));
            ops.push(TxnOp::delete(
                keys::seen_prefix(&k),
                Some(DeleteOptions::new().with_prefix()),
            ));
            ops.push(TxnOp::delete(
                keys::health_prefix(&k),
                Some(DeleteOptions::new().with_prefix()),
            ));
            if let Some(s) = route {
                ops.push(TxnOp::delete(
                    keys::port_key(s.route.port, k.protocol),
                    None,
                ));
                for k in keys::backend_keys(&s.route) {
                    ops.push(TxnOp::delete(k, None));
                }
            }
        }
        if ops.is_empty() {
            return Ok(None);
        }
        ops.push(TxnOp::put(keys::changed_key(), "", None));
        if fenced {
            compares.push(Compare::value(
                keys::leader_key(),
                CompareOp::Equal,
                self.cluster.gateway_id.clone(),
            ));
        }
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self.call("remove the route", move |mut c| {
            Box::pin(async move { c.txn(txn).await })
        })?;
        if !resp.succeeded() {
            let reason = if fenced {
                "changed by another gateway meanwhile, or this gateway no longer leads; left to the leader"
            } else {
                "changed by another gateway meanwhile; try again"
            };
            return Err(StateError::Refused {
                reason: reason.into(),
                taken: Vec::new(),
            });
        }
        Ok(resp.header().map(|h| h.revision()))
    }
}

impl Store for EtcdStore {
    fn location(&self) -> String {
        format!("etcd {} (keys under {})", self.endpoints, keys::PREFIX)
    }

    /// The shared routes, each with the latest last-seen time any gateway published.
    fn load_routes(&self, public_ipv4: Ipv4Addr) -> Result<Vec<StoredRoute>, StateError> {
        let Some(s) = &self.initial else {
            return Ok(Vec::new());
        };
        let mut routes =
            keys::decode_routes(&self.location(), &s.routes, public_ipv4).map_err(|reason| {
                StateError::Corrupt {
                    path: self.location().into(),
                    reason,
                }
            })?;
        merge_seen(&mut routes, &s.seen);
        Ok(routes)
    }

    /// Nothing to do: the shared table is written change by change ([`Store::record`]),
    /// and last-seen times stay with the gateway that sees the traffic (its pinned
    /// counters keep them across restarts). Writing the whole table from one gateway's
    /// view would undo another's changes it has not seen yet.
    fn save_routes(&mut self, _routes: &[StoredRoute]) -> Result<(), StateError> {
        Ok(())
    }

    fn record(
        &mut self,
        changes: &[RouteChange],
        _all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError> {
        let puts: Vec<&StoredRoute> = changes
            .iter()
            .filter_map(|c| match c {
                RouteChange::Put(s) => Some(s),
                RouteChange::Delete(_) => None,
            })
            .collect();
        let deletes: Vec<&RouteKey> = changes
            .iter()
            .filter_map(|c| match c {
                RouteChange::Delete(k) => Some(k),
                RouteChange::Put(_) => None,
            })
            .collect();
        for chunk in by_keys(&puts) {
            // Without a stamp nothing but the guards can refuse (and those are errors).
            let Put::Done(revision) = self.put_routes(chunk, None)? else {
                return Err(StateError::Refused {
                    reason: "changed by another gateway meanwhile; try again".into(),
                    taken: Vec::new(),
                });
            };
            self.status
                .wrote(revision, chunk.iter().map(|s| s.route.key()).collect());
        }
        for chunk in deletes.chunks(DELETES_PER_TXN) {
            if let Some(revision) = self.delete_routes(chunk, false)? {
                self.status
                    .wrote(revision, chunk.iter().map(|&k| k.clone()).collect());
            }
        }
        // etcd answers once the change is committed by a quorum: nothing left to wait for.
        Ok(Commit::done())
    }

    /// Puts the route's new value (its pool's drained flags) only while the route exists:
    /// its port and backend keys stay as they are, since neither changed.
    fn record_update(
        &mut self,
        route: &StoredRoute,
        _all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError> {
        let key = route.route.key();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                keys::route_key(&key),
                CompareOp::Greater,
                0,
            )])
            .and_then(vec![
                TxnOp::put(keys::route_key(&key), keys::encode_route(route), None),
                TxnOp::put(keys::changed_key(), "", None),
            ]);
        let resp = self.call("change the route", move |mut c| {
            Box::pin(async move { c.txn(txn).await })
        })?;
        if !resp.succeeded() {
            return Err(StateError::Refused {
                reason: format!("{key} was removed through another gateway meanwhile"),
                taken: Vec::new(),
            });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        self.status.wrote(revision, vec![key]);
        Ok(Commit::done())
    }

    fn load_accounts(&self) -> Result<Users, StateError> {
        match self.initial.as_ref().and_then(|s| s.accounts.as_ref()) {
            None => Ok(Users::default()),
            Some((bytes, _)) => {
                crate::table::state::accounts::parse(Path::new(&keys::accounts_key()), bytes)
            }
        }
    }

    /// Replaces the accounts, demanding the document this gateway last saw. An account
    /// it drops is removed only while the user holds no runtime route in the shared
    /// table, fenced by the user's stamp (`holds/<name>`, then marked removed), so a claim
    /// through another gateway cannot leave a route without an account, nor hand it to a
    /// later account of the same name.
    fn save_accounts(&mut self, users: &Users) -> Result<(), StateError> {
        let key = keys::accounts_key();
        let text = crate::table::state::accounts::render(users);
        let seen = self.accounts_rev;
        let now = names(users);
        let removed: Vec<&String> = self.accounts_names.difference(&now).collect();
        let added: Vec<&String> = now.difference(&self.accounts_names).collect();
        if removed.len() > REMOVALS_PER_SAVE {
            return Err(StateError::Refused {
                reason: format!(
                    "{} accounts removed at once; the shared store removes at most {REMOVALS_PER_SAVE} in one change",
                    removed.len()
                ),
                taken: Vec::new(),
            });
        }
        let mut compares = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, seen)];
        let mut ops = vec![
            TxnOp::put(key, text, None),
            TxnOp::put(keys::changed_key(), "", None),
        ];
        for name in &removed {
            let (stamp, _, held) = self.count_routes(name)?;
            if held > 0 {
                return Err(StateError::Refused {
                    reason: format!("{name} holds {held} route(s) in the shared table that this gateway did not remove (claimed through another gateway a moment ago, or not forwarded here); remove the user --with-routes again, or through a gateway that has them"),
                    taken: Vec::new(),
                });
            }
            let holds = keys::holds_key(name);
            compares.push(Compare::mod_revision(
                holds.clone(),
                CompareOp::Equal,
                stamp,
            ));
            ops.push(TxnOp::put(holds, keys::REMOVED, None));
        }
        for name in added.iter().take(ADDS_STAMPED) {
            // A new stamp for a name that had one (an account of that name was removed):
            // a claim counted under the old one fails.
            let holds = keys::holds_key(name);
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::version(holds.clone(), CompareOp::Greater, 0)])
                    .and_then([TxnOp::put(holds, "", None)]),
            ));
        }
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self.call("save the accounts", move |mut c| {
            Box::pin(async move { c.txn(txn).await })
        })?;
        if !resp.succeeded() {
            let reason = if removed.is_empty() {
                "the accounts were changed through another gateway a moment ago; try again".into()
            } else {
                format!(
                    "the accounts, or the routes of {}, were changed through another gateway a moment ago; try again",
                    removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )
            };
            return Err(StateError::Refused {
                reason,
                taken: Vec::new(),
            });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        self.accounts_rev = revision;
        self.accounts_names = now;
        self.status.wrote(revision, Vec::new());
        Ok(())
    }
}

impl Cluster for EtcdStore {
    /// Counts `claim.user`'s runtime routes in the shared table and puts `route` only if
    /// one more fits and the account was not removed, in one transaction with the count's
    /// stamp (see `keys.rs`, `holds/<name>`): a claim of the same user through another
    /// gateway in between moves the stamp, and this one counts again.
    fn record_claim(&mut self, route: &StoredRoute, claim: &Claim) -> Result<Commit, StateError> {
        let stamp = keys::holds_key(&claim.user);
        for _ in 0..CLAIM_ATTEMPTS {
            let (read, removed, held) = self.count_routes(&claim.user)?;
            if removed {
                return Err(StateError::Claim(Denied::NoAccount {
                    user: claim.user.clone(),
                }));
            }
            claim.check(held)?;
            match self.put_routes(&[route], Some((&stamp, read)))? {
                Put::Done(revision) => {
                    self.status.wrote(revision, vec![route.route.key()]);
                    return Ok(Commit::done());
                }
                Put::StampMoved => continue,
            }
        }
        Err(StateError::Refused {
            reason: format!(
                "{}'s claims through several gateways kept crossing this one; try again",
                claim.user
            ),
            taken: Vec::new(),
        })
    }

    /// Removes idle routes, only while this gateway leads (the `leader` key is fenced in
    /// the transaction, so a gateway that lost the lead a moment ago removes nothing).
    fn reclaim(&mut self, gone: &[RouteKey]) -> Result<Commit, StateError> {
        let gone: Vec<&RouteKey> = gone.iter().collect();
        for chunk in gone.chunks(DELETES_PER_TXN) {
            if let Some(revision) = self.delete_routes(chunk, true)? {
                self.status
                    .wrote(revision, chunk.iter().map(|&k| k.clone()).collect());
            }
        }
        Ok(Commit::done())
    }

    fn leads(&self) -> bool {
        self.status.leads(&self.cluster.gateway_id)
    }

    fn written_since(&mut self, revision: i64) -> Vec<RouteKey> {
        self.status.written_since(revision)
    }

    /// Puts this gateway's last-seen times, each only while its route exists (a nested
    /// transaction per route), so a time published just after a removal leaves nothing
    /// behind. Refused at once while the watch is lost: the daemon tries again later.
    fn publish_seen(&mut self, seen: &[(RouteKey, SystemTime)]) -> Result<(), StateError> {
        if !self.status.connected.load(Ordering::SeqCst) {
            return Err(self.unavailable("publish last-seen times", "not connected".into()));
        }
        for chunk in seen.chunks(SEEN_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, at)| {
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::version(keys::route_key(k), CompareOp::Greater, 0)])
                            .and_then([TxnOp::put(
                                keys::seen_key(k, &self.cluster.gateway_id),
                                keys::encode_seen(*at),
                                None,
                            )]),
                    )
                })
                .collect();
            let txn = Txn::new().and_then(ops);
            self.call("publish last-seen times", move |mut c| {
                Box::pin(async move { c.txn(txn).await })
            })?;
        }
        Ok(())
    }

    /// Every change another gateway makes from the loaded revision on goes to `tx`
    /// (waiting when the daemon is behind), and a whole new table after the watch is lost.
    /// Also announces this gateway under `gateways/`.
    fn follow(&mut self, public_ipv4: Ipv4Addr, tx: mpsc::Sender<Remote>) {
        let from = self.initial.take().map_or(0, |s| s.revision) + 1;
        let Some(rt) = &self.rt else { return };
        rt.spawn(follow(
            self.client.clone(),
            self.status.clone(),
            self.cluster.gateway_id.clone(),
            self.endpoints.clone(),
            public_ipv4,
            from,
            tx,
        ));
    }

    fn publish_health(
        &mut self,
        key: &RouteKey,
        backend: SocketAddrV4,
        up: bool,
    ) -> Result<(), StateError> {
        let health = keys::health_key(key, backend);
        let op = if up {
            TxnOp::delete(health, None)
        } else {
            TxnOp::put(health, keys::DOWN, None)
        };
        let txn = Txn::new()
            .when([
                Compare::value(
                    keys::leader_key(),
                    CompareOp::Equal,
                    self.cluster.gateway_id.clone(),
                ),
                Compare::version(keys::route_key(key), CompareOp::Greater, 0),
            ])
            .and_then([op]);
        let resp = self.call("publish a health verdict", move |mut c| {
            Box::pin(async move { c.txn(txn).await })
        })?;
        if !resp.succeeded() {
            return Err(StateError::Refused {
                reason: "this gateway no longer leads, or the route is gone".into(),
                taken: Vec::new(),
            });
        }
        Ok(())
    }

    fn loaded_health(&mut self) -> Vec<(RouteKey, SocketAddrV4)> {
        self.initial
            .as_mut()
            .map(|s| std::mem::take(&mut s.down))
            .unwrap_or_default()
    }

    fn accounts_seen(&mut self, revision: i64, stored: &Users) {
        self.accounts_rev = revision;
        self.accounts_names = names(stored);
    }

    fn view(&self) -> ClusterView {
        let s = &self.status;
        let connected = s.connected.load(Ordering::SeqCst);
        ClusterView {
            gateway_id: self.cluster.gateway_id.clone(),
            members: lock(&s.members).iter().cloned().collect(),
            leader: if connected {
                lock(&s.leader).clone()
            } else {
                None
            },
            endpoints: self.cluster.etcd.clone(),
            connected,
            revision: s.changed.load(Ordering::SeqCst),
            last_sync_unix: lock(&s.last_sync)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            error: if connected {
                None
            } else {
                lock(&s.error).clone()
            },
        }
    }
}

/// The account names of `users`.
fn names(users: &Users) -> BTreeSet<String> {
    users.all().map(|u| u.name.clone()).collect()
}

/// Runs `fut` on `rt` and waits for its result from any thread, async or not (unlike
/// `Runtime::block_on`, which refuses to run inside another runtime).
fn run<T: Send + 'static>(
    rt: &Runtime,
    fut: impl Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    // The future bounds itself; this only guards against a runtime that never ran it.
    rx.recv_timeout(REQUEST_TIMEOUT * 3)
        .unwrap_or_else(|_| Err("the etcd client did not answer".into()))
}

/// An etcd error in a line an operator can act on: a gRPC status's message and the cause
/// at the bottom of its chain ("tcp connect error: Connection refused (os error 111)"),
/// rather than the nested debug text of every layer.
fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let mut cause = status.source();
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c);
        cause = c.source();
    }
    match last {
        // tonic often puts the cause's own text in the message: once is enough.
        Some(c) if c.to_string() != status.message() => format!("{}: {c}", status.message()),
        _ => status.message().to_string(),
    }
}

/// Reads the whole prefix at one revision, a page at a time.
async fn load(client: &mut Client) -> Result<Snapshot, String> {
    let mut kv = client.kv_client();
    let mut snapshot = Snapshot {
        revision: 0,
        routes: Vec::new(),
        accounts: None,
        members: BTreeSet::new(),
        changed: 0,
        seen: Vec::new(),
        leader: None,
        down: Vec::new(),
    };
    let mut start = keys::PREFIX.as_bytes().to_vec();
    loop {
        let mut options = GetOptions::new()
            .with_range(keys::prefix_end())
            .with_limit(PAGE);
        if snapshot.revision != 0 {
            options = options.with_revision(snapshot.revision);
        }
        let page = tokio::time::timeout(REQUEST_TIMEOUT, kv.get(start.clone(), Some(options)))
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| describe(&e))?;
        if snapshot.revision == 0 {
            snapshot.revision = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            match keys::classify(kv.key()) {
                Kind::Route(_) => snapshot
                    .routes
                    .push((kv.key().to_vec(), kv.value().to_vec())),
                Kind::Accounts => {
                    if kv.value().len() > keys::MAX_ACCOUNTS_VALUE {
                        return Err(format!(
                            "{}: {} bytes, more than {}",
                            keys::accounts_key(),
                            kv.value().len(),
                            keys::MAX_ACCOUNTS_VALUE
                        ));
                    }
                    snapshot.accounts = Some((kv.value().to_vec(), kv.mod_revision()));
                }
                Kind::Gateway(id) => {
                    snapshot.members.insert(id);
                }
                Kind::Changed => snapshot.changed = kv.mod_revision(),
                Kind::Leader => {
                    snapshot.leader = Some(String::from_utf8_lossy(kv.value()).into_owned())
                }
                Kind::Seen(k, id) => {
                    if let Some(at) = seen_value(kv.key(), kv.value()) {
                        snapshot.seen.push((k, id, at));
                    }
                }
                Kind::Health(k, b) => snapshot.down.push((k, b)),
                Kind::Port(..) | Kind::Backend | Kind::Holds | Kind::Unknown => {}
            }
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => return Ok(snapshot),
        }
    }
}

/// The watch's life: follow from `from`; when lost, load the table again (with back-off)
/// and follow from there. Ends when the daemon stops listening.
async fn follow(
    mut client: Client,
    status: Arc<Status>,
    gateway_id: String,
    endpoints: String,
    public_ipv4: Ipv4Addr,
    mut from: i64,
    tx: mpsc::Sender<Remote>,
) {
    loop {
        let why = watch(&mut client, &status, &gateway_id, public_ipv4, from, &tx).await;
        if tx.is_closed() {
            return;
        }
        warn!(endpoints, "cluster: {why}; changes are refused until etcd answers again (forwarding and DNS go on with the last table)");
        status.lost(why.clone());
        let mut wait = RETRY_FIRST;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
            let snapshot = match load(&mut client).await {
                Ok(s) => s,
                Err(e) => {
                    status.lost(e);
                    continue;
                }
            };
            let mut routes = match keys::decode_routes("etcd", &snapshot.routes, public_ipv4) {
                Ok(r) => r,
                Err(e) => {
                    error!("cluster: the shared table is invalid, keeping the last one: {e}");
                    status.lost(e);
                    continue;
                }
            };
            let accounts = match &snapshot.accounts {
                None => None,
                Some((bytes, rev)) => {
                    match crate::table::state::accounts::parse(
                        Path::new(&keys::accounts_key()),
                        bytes,
                    ) {
                        Ok(u) => Some((u, *rev)),
                        Err(e) => {
                            error!("cluster: keeping the last accounts: {e}");
                            None
                        }
                    }
                }
            };
            merge_seen(&mut routes, &snapshot.seen);
            let revision = snapshot.revision;
            lock(&status.own).resync = Some(revision);
            info!(
                endpoints,
                revision,
                routes = routes.len(),
                "cluster: etcd answers; resynchronising the whole table ({why})"
            );
            if tx
                .send(Remote::Resync {
                    revision,
                    routes,
                    accounts,
                    down: snapshot.down.clone(),
                    why: why.clone(),
                })
                .await
                .is_err()
            {
                return;
            }
            status.synced(revision, snapshot.changed, snapshot.members);
            status.set_leader(snapshot.leader, &gateway_id);
            from = revision + 1;
            break;
        }
    }
}

/// Follows the prefix from `from` until the watch is lost; returns why. Renews this
/// gateway's announcement meanwhile.
async fn watch(
    client: &mut Client,
    status: &Status,
    gateway_id: &str,
    public_ipv4: Ipv4Addr,
    from: i64,
    tx: &mpsc::Sender<Remote>,
) -> String {
    let options = WatchOptions::new()
        .with_range(keys::prefix_end())
        .with_start_revision(from);
    let mut stream = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.watch(keys::PREFIX, Some(options)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("cannot watch the shared table: {}", describe(&e)),
        Err(_) => {
            return format!("cannot watch the shared table: no answer within {REQUEST_TIMEOUT:?}")
        }
    };
    let (lease, mut keeper, mut renewals) = match announce(client, gateway_id).await {
        Ok(k) => k,
        Err(e) => return format!("cannot announce this gateway: {}", describe(&e)),
    };
    let mut renew = tokio::time::interval(MEMBER_RENEW);
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = renew.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    return format!("renewing this gateway's announcement: {}", describe(&e));
                }
                // No leader known (none yet, or its lease ran out): stand.
                if lock(&status.leader).is_none() {
                    match campaign(client, gateway_id, lease).await {
                        Ok(leader) => status.set_leader(leader, gateway_id),
                        Err(e) => return format!("standing for leader: {}", describe(&e)),
                    }
                }
                continue;
            }
            r = renewals.message() => match r {
                Ok(Some(r)) if r.ttl() > 0 => continue,
                Ok(Some(_)) => return "this gateway's announcement expired".into(),
                Ok(None) => return "etcd ended the announcement's renewals".into(),
                Err(e) => return format!("renewing this gateway's announcement: {}", describe(&e)),
            },
        };
        let resp = match message {
            Ok(Some(r)) => r,
            Ok(None) => return "etcd closed the watch".into(),
            Err(e) => return format!("the watch was lost: {}", describe(&e)),
        };
        if resp.canceled() {
            return if resp.compact_revision() > 0 {
                format!(
                    "the watch fell behind changes etcd compacted away (history kept from revision {}; the watch started at {from})",
                    resp.compact_revision()
                )
            } else {
                format!("etcd canceled the watch: {}", resp.cancel_reason())
            };
        }
        if resp.created() {
            status.connected.store(true, Ordering::SeqCst);
        }
        let mut changes = Vec::new();
        let mut seen = Vec::new();
        let mut health = Vec::new();
        let mut last = 0;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            last = last.max(revision);
            if keys::classify(kv.key()) == Kind::Changed {
                status.changed.fetch_max(revision, Ordering::SeqCst);
                continue;
            }
            if status.is_own(revision) {
                continue;
            }
            // etcd gives a deleted key's entry version 0; reading that rather than the
            // event's type never panics on a type this client does not know.
            let deleted = kv.version() == 0;
            match keys::classify(kv.key()) {
                Kind::Route(k) if deleted => changes.push(RouteChange::Delete(k)),
                Kind::Route(_) => {
                    match keys::decode_routes(
                        "etcd",
                        &[(kv.key().to_vec(), kv.value().to_vec())],
                        public_ipv4,
                    ) {
                        Ok(mut r) => changes.extend(r.pop().map(RouteChange::Put)),
                        Err(e) => error!("cluster: ignoring a change of the shared table: {e}"),
                    }
                }
                Kind::Accounts if !deleted => {
                    if !changes.is_empty() {
                        let changes = std::mem::take(&mut changes);
                        if tx.send(Remote::Routes { revision, changes }).await.is_err() {
                            return "the daemon stopped".into();
                        }
                    }
                    if kv.value().len() > keys::MAX_ACCOUNTS_VALUE {
                        error!("cluster: ignoring accounts of {} bytes", kv.value().len());
                        continue;
                    }
                    match crate::table::state::accounts::parse(
                        Path::new(&keys::accounts_key()),
                        kv.value(),
                    ) {
                        Ok(users) => {
                            if tx.send(Remote::Accounts { revision, users }).await.is_err() {
                                return "the daemon stopped".into();
                            }
                        }
                        Err(e) => error!("cluster: ignoring a change of the accounts: {e}"),
                    }
                }
                Kind::Gateway(id) => {
                    let mut m = lock(&status.members);
                    if deleted {
                        m.remove(&id);
                    } else {
                        m.insert(id);
                    }
                }
                Kind::Leader if deleted => {
                    status.set_leader(None, gateway_id);
                    match campaign(client, gateway_id, lease).await {
                        Ok(leader) => status.set_leader(leader, gateway_id),
                        Err(e) => return format!("standing for leader: {}", describe(&e)),
                    }
                }
                Kind::Leader => status.set_leader(
                    Some(String::from_utf8_lossy(kv.value()).into_owned()),
                    gateway_id,
                ),
                // This gateway's own times are in its table already.
                Kind::Seen(k, id) if !deleted && id != gateway_id => {
                    if let Some(at) = seen_value(kv.key(), kv.value()) {
                        seen.push((k, at));
                    }
                }
                // The leader's own verdicts come back too: applying one again changes nothing.
                Kind::Health(k, b) => health.push((k, b, deleted)),
                Kind::Seen(..)
                | Kind::Accounts
                | Kind::Changed
                | Kind::Port(..)
                | Kind::Backend
                | Kind::Holds
                | Kind::Unknown => {}
            }
        }
        if !changes.is_empty()
            && tx
                .send(Remote::Routes {
                    revision: last,
                    changes,
                })
                .await
                .is_err()
        {
            return "the daemon stopped".into();
        }
        // After the routes of the same response, so a new route's first time finds it.
        if !seen.is_empty() && tx.send(Remote::Seen(seen)).await.is_err() {
            return "the daemon stopped".into();
        }
        if !health.is_empty() && tx.send(Remote::Health(health)).await.is_err() {
            return "the daemon stopped".into();
        }
        if last > 0 {
            status.passed(last);
        }
    }
}

/// Takes the `leader` key on `lease` unless someone holds it; returns who leads (`None`:
/// the holder's key vanished meanwhile; the next renewal stands again).
async fn campaign(
    client: &mut Client,
    gateway_id: &str,
    lease: i64,
) -> Result<Option<String>, etcd_client::Error> {
    let key = keys::leader_key();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            gateway_id,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let resp = match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
        Ok(r) => r?,
        Err(_) => return Ok(None),
    };
    if resp.succeeded() {
        return Ok(Some(gateway_id.to_string()));
    }
    Ok(resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        _ => None,
    }))
}

/// Puts `gateways/<id>` on a fresh lease; returns the lease and what renews it.
async fn announce(
    client: &mut Client,
    gateway_id: &str,
) -> Result<
    (
        i64,
        etcd_client::LeaseKeeper,
        etcd_client::LeaseKeepAliveStream,
    ),
    etcd_client::Error,
> {
    let lease = client.lease_grant(MEMBER_TTL, None).await?.id();
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    client
        .put(
            keys::gateway_key(gateway_id),
            format!("{{\"since_unix\":{since}}}"),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    let (keeper, stream) = client.lease_keep_alive(lease).await?;
    Ok((lease, keeper, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway's own write is skipped when the watch brings it back, and only that one:
    /// the revisions the watch has passed are forgotten, and a write the watch had already
    /// passed (its echo applied, harmlessly) is never remembered, so nothing accumulates.
    #[test]
    fn own_writes_are_skipped_once_and_forgotten() {
        let s = Status::default();
        s.wrote(5, Vec::new());
        s.wrote(7, Vec::new());
        assert!(s.is_own(5) && s.is_own(7) && !s.is_own(6));
        s.passed(6);
        assert!(!s.is_own(5), "passed: forgotten");
        assert!(s.is_own(7));
        s.passed(9);
        s.wrote(8, Vec::new());
        assert!(!s.is_own(8), "behind the watch: never remembered");
        assert!(lock(&s.own).pending.is_empty());
        // The serial follows the table's changes only.
        assert_eq!(s.changed.load(Ordering::SeqCst), 8);
        s.synced(20, 12, BTreeSet::new());
        assert_eq!(s.changed.load(Ordering::SeqCst), 12);
        assert_eq!(s.revision.load(Ordering::SeqCst), 20);
        assert!(s.connected.load(Ordering::SeqCst));
    }

    /// A route this gateway wrote after a resync's table was read is named to the daemon
    /// (which keeps its own view of it), even once the watch passed that write; nothing
    /// accumulates once the resync is applied.
    #[test]
    fn own_writes_after_a_resync_are_kept_until_it_is_applied() {
        let s = Status::default();
        let k = crate::testing::stored_route("bob", 30001, "10.0.0.5:22", None)
            .route
            .key();
        s.passed(10);
        // The table is read at 12 (the watch was lost); bob is claimed at 13.
        lock(&s.own).resync = Some(12);
        s.synced(12, 12, BTreeSet::new());
        s.wrote(13, vec![k.clone()]);
        s.passed(13);
        assert!(!s.is_own(13));
        assert_eq!(s.written_since(12), [k]);
        assert!(s.written_since(12).is_empty(), "applied: forgotten");
        assert!(lock(&s.own).recent.is_empty());
        s.wrote(14, Vec::new());
        s.passed(14);
        assert!(lock(&s.own).recent.is_empty(), "no resync: nothing kept");
    }

    /// A route takes the latest time of any gateway; a dead gateway's old time is simply
    /// outweighed; a route nobody saw keeps its own.
    #[test]
    fn the_latest_last_seen_of_any_gateway_wins() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let mut routes = vec![
            crate::testing::stored_route("alice", 30001, "10.0.0.5:22", None),
            crate::testing::stored_route("bob", 30002, "10.0.0.6:22", Some(500)),
            crate::testing::stored_route("carol", 30003, "10.0.0.7:22", Some(50)),
        ];
        let (a, b) = (routes[0].route.key(), routes[1].route.key());
        merge_seen(
            &mut routes,
            &[
                (a.clone(), "gw1".into(), t(100)),
                (a, "gw2".into(), t(300)),
                (b, "gw3".into(), t(200)),
            ],
        );
        assert_eq!(routes[0].last_seen, Some(t(300)));
        assert_eq!(routes[1].last_seen, Some(t(500)));
        assert_eq!(routes[2].last_seen, Some(t(50)));
    }

    /// Only the gateway holding the key leads, and only while connected.
    #[test]
    fn leading_needs_the_key_and_the_connection() {
        let s = Status::default();
        s.synced(1, 1, BTreeSet::new());
        assert!(!s.leads("gw1"));
        s.set_leader(Some("gw1".into()), "gw1");
        assert!(s.leads("gw1") && !s.leads("gw2"));
        s.lost("etcd went away".into());
        assert!(
            !s.leads("gw1"),
            "lost: whoever leads, not this one for sure"
        );
        s.synced(2, 1, BTreeSet::new());
        assert!(!s.leads("gw1"), "until the key is read again");
    }
}
