//! `[cluster]`: several gateways share one table through etcd. This layer sits beside
//! `table` (it is a store with a socket) and below `daemon`.
//!
//! Keeping the table and sharing it are two traits. [`Store`] (in `table::state`) is
//! persistence, which every gateway has: `StateStore` alone, [`EtcdStore`] with
//! `[cluster]`. [`Cluster`] is what only a gateway among others does: follow the others'
//! changes ([`Remote`]), count a student's claims where every gateway's meet, know whether
//! it is the one elected to reclaim (and be fenced by that when it does), remember what it
//! wrote itself, and publish its own last-seen times (`seen.rs`). [`EtcdStore`] is both; the
//! daemon holds a [`Backing`], so a single gateway has no cluster to ask and no cluster
//! path pretending.
//!
//! Here: the traits' meeting point ([`Backing`]), [`Remote`], [`Claim`] and `[cluster]`'s
//! [`ClusterSettings`]; `etcd.rs` the
//! client, `keys.rs` the key layout, `tls.rs` `[cluster]`'s TLS files, `seen.rs` which of
//! this gateway's last-seen times are published when.

pub mod etcd;
pub mod keys;
pub mod seen;
pub mod tls;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    ops::{Deref, DerefMut},
    path::PathBuf,
    time::SystemTime,
};

use tokio::sync::mpsc;

pub use etcd::EtcdStore;

use crate::table::{
    state::{Commit, RouteChange, StateError, Store, StoredRoute},
    users::Users,
};
use lb_model::{api::ClusterView, RouteKey};

/// `[cluster]` as validated by `config`: the etcd endpoints and this gateway's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// etcd client URLs, `https://host:port` each (`http://` only with `insecure_http`).
    pub etcd: Vec<String>,
    /// This gateway's name in the cluster (a DNS label): in logs, `status` and the keys
    /// only this gateway writes.
    pub gateway_id: String,
    /// How this gateway proves itself to etcd and checks etcd; `None` only for `http://`
    /// endpoints with `insecure_http = true`.
    pub tls: Option<ClusterTls>,
}

/// The files of `[cluster]`'s TLS: read (and the key's mode checked) when the gateway
/// connects, see [`tls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA that signed etcd's server certificate (PEM); the only one trusted for it.
    pub ca: PathBuf,
    /// This gateway's client certificate (PEM), signed by a CA etcd's
    /// `--trusted-ca-file` names.
    pub cert: PathBuf,
    /// Its private key (PEM), readable by its owner only.
    pub key: PathBuf,
}

/// A change of the shared table made by another gateway (or a whole new view of it).
#[derive(Debug)]
pub enum Remote {
    /// Route changes, in revision order.
    Routes {
        revision: i64,
        changes: Vec<RouteChange>,
    },
    Accounts {
        revision: i64,
        users: Users,
    },
    /// Other gateways' last-seen times of routes (the latest packet each of them saw).
    Seen(Vec<(RouteKey, SystemTime)>),
    /// The leading gateway's health verdicts: route, member, up.
    Health(Vec<(RouteKey, SocketAddrV4, bool)>),
    /// The whole table at `revision`, after the watch was lost (`why`): the daemon makes its
    /// runtime routes exactly these, with the latest last-seen time any gateway
    /// published. `accounts` is `None` when none are stored.
    Resync {
        revision: i64,
        routes: Vec<StoredRoute>,
        accounts: Option<(Users, i64)>,
        /// The members the leader's verdicts say are down, at `revision`.
        down: Vec<(RouteKey, SocketAddrV4)>,
        why: String,
    },
}

/// A student's claim, as [`Cluster::record_claim`] checks it: the account it is made for and
/// its quota. A shared store counts the user's runtime routes itself, so that claims
/// through several gateways at once cannot pass a quota each gateway's own table would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub user: String,
    pub max_routes: u32,
    /// Routes of the user that this gateway's config file declares: they count against
    /// the quota, and no store holds them.
    pub config_held: usize,
}

impl Claim {
    /// Whether one more route fits beside `runtime_held` runtime routes (the quota rule
    /// is `users::check_claim`'s; this only counts).
    pub fn check(&self, runtime_held: usize) -> Result<(), StateError> {
        let used = runtime_held + self.config_held;
        if used >= self.max_routes as usize {
            return Err(StateError::Claim(crate::table::users::Denied::Quota {
                user: self.user.clone(),
                used,
                max: self.max_routes,
            }));
        }
        Ok(())
    }
}

/// What a gateway sharing its table with others does beyond keeping it: the other half
/// of a shared store (see the module docs). Every call is bounded in time; an error means
/// nothing was changed.
pub trait Cluster: Send {
    /// Starts sending other gateways' changes (from the revision the loads returned) to
    /// `tx`, which waits when the daemon is behind.
    fn follow(&mut self, public_ipv4: Ipv4Addr, tx: mpsc::Sender<Remote>);
    /// The state `srvgate status` shows.
    fn view(&self) -> ClusterView;
    /// Whether this gateway is the one of them elected to reclaim idle routes.
    fn leads(&self) -> bool;
    /// Records one new runtime route a student claims, only while `claim.user`'s account
    /// exists in the shared table and within its quota counted there, in the same
    /// transaction as the route ([`StateError::Claim`] otherwise), so that claims through
    /// several gateways at once cannot pass a quota each gateway's own table would.
    fn record_claim(&mut self, route: &StoredRoute, claim: &Claim) -> Result<Commit, StateError>;
    /// Records the removal of idle routes, only while this gateway leads at the moment it
    /// commits ([`StateError::Refused`] otherwise).
    fn reclaim(&mut self, gone: &[RouteKey]) -> Result<Commit, StateError>;
    /// The accounts the core now holds are those of `revision` (`stored`, as the shared
    /// table held them), which a conditional save then demands, so that a save never
    /// overwrites a change it has not seen.
    fn accounts_seen(&mut self, revision: i64, stored: &Users);
    /// The routes this gateway itself changed after `revision` (the revision of a
    /// resync's table): the table read then does not hold those changes, and the watch does
    /// not bring this gateway's own writes back, so the daemon keeps its own view of them.
    fn written_since(&mut self, revision: i64) -> Vec<RouteKey>;
    /// Publishes this gateway's own last-seen times of routes, for the others (and the one
    /// that reclaims) to take into account.
    fn publish_seen(&mut self, seen: &[(RouteKey, SystemTime)]) -> Result<(), StateError>;
    /// Writes the leader's verdict on member `backend` of route `key`, only while this
    /// gateway leads and the route exists ([`StateError::Refused`] otherwise): every
    /// gateway applies it, so all of them choose among the same members.
    fn publish_health(
        &mut self,
        key: &RouteKey,
        backend: SocketAddrV4,
        up: bool,
    ) -> Result<(), StateError>;
    /// The members the leader's verdicts said were down when the table was loaded; given
    /// once (the watch brings the changes after that).
    fn loaded_health(&mut self) -> Vec<(RouteKey, SocketAddrV4)>;
}

/// A store that is also a [`Cluster`] (etcd's), so that [`Backing`] can lend it as either.
pub trait SharedStore: Store + Cluster {}

impl<T: Store + Cluster> SharedStore for T {}

/// What the daemon keeps its table in: a store of its own, or one shared with other
/// gateways. It is the store in every case (`Deref`); [`Backing::cluster`] is the cluster,
/// if there is one.
pub enum Backing {
    Local(Box<dyn Store>),
    Shared(Box<dyn SharedStore>),
}

impl Backing {
    pub fn cluster(&self) -> Option<&dyn Cluster> {
        match self {
            Backing::Local(_) => None,
            Backing::Shared(s) => Some(&**s),
        }
    }

    pub fn cluster_mut(&mut self) -> Option<&mut dyn Cluster> {
        match self {
            Backing::Local(_) => None,
            Backing::Shared(s) => Some(&mut **s),
        }
    }

    /// Whether other gateways share the table.
    pub fn is_shared(&self) -> bool {
        matches!(self, Backing::Shared(_))
    }
}

impl Deref for Backing {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        match self {
            Backing::Local(s) => &**s,
            Backing::Shared(s) => &**s,
        }
    }
}

impl DerefMut for Backing {
    fn deref_mut(&mut self) -> &mut (dyn Store + 'static) {
        match self {
            Backing::Local(s) => &mut **s,
            Backing::Shared(s) => &mut **s,
        }
    }
}
