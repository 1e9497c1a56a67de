//! The state file: the runtime routes (those added through the control API), their public
//! ports and their activity times, so that a restarted daemon gives every route the port it
//! had and reclaims by real idleness. Config routes are not stored: the config file is their
//! source.
//!
//! Writes are crash-safe: the whole table goes to `routes.json.tmp`, which is fsynced and
//! renamed over `routes.json`, then the directory is fsynced; a reader sees the old file or
//! the new one, never a mix. Loading is strict: a file that does not parse, has an unknown
//! version or holds an invalid route is an error naming the file and the problem, never
//! silently emptied, because emptying it would hand the students' ports to others.
//!
//! The accounts are `accounts.json` beside it ([`accounts`], whose encoding the shared store
//! uses too). Changes between snapshots go to an append-only journal (`journal.rs`), so that
//! a change costs its own size rather than the table's; `routes.json` is rewritten in the background
//! once the journal is long, and a load replays the journal over it.
//!
//! A lock (`File::try_lock`, an exclusive `flock`, on `lock` in the same directory) keeps two
//! daemons from sharing one state directory; the kernel drops it when the process dies, even
//! by SIGKILL.
//!
//! The [`Store`] trait is what the daemon persists through, one load/save pair per kind of
//! record (runtime routes; accounts with their port cool-downs), so a shared store (etcd,
//! `crate::cluster`) is a second implementation; what only a shared store does (follow the
//! others, lead, publish last-seen times) is that layer's `Cluster` trait, not this one.
//! `Store::record` takes one change of the runtime routes and returns a `Commit`, waited for
//! after the core's lock is released. `StateError::Unavailable` (503) and `Refused` (409)
//! come only from a shared store. Stored times go through `from_unix`, the one checked
//! conversion.

pub mod accounts;
pub mod backup;
mod journal;

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub use journal::Commit;
use journal::{Flight, Line, Segment};

use serde::{Deserialize, Serialize};

use crate::table::{
    routes::{RouteError, RouteTable, Source},
    users::Users,
};
use lb_model::{check_route, Route, RouteKey, RouteRequest};

/// Where `srvgate run` keeps its state unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/srvgate";
/// The file's name inside the state directory.
pub const STATE_FILE: &str = "routes.json";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    #[error("{}: the state file is corrupt: {reason}\n  srvgate never empties it by itself: repair it, or move it away to start without runtime routes (their ports are then lost)", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: written by another srvgate version (format version {found}; this one reads version {FORMAT_VERSION})", path.display())]
    Version { path: PathBuf, found: u64 },
    #[error("{}: another srvgate is running with this state directory (it holds the lock); stop it first, or give this one its own --state-dir", path.display())]
    Locked { path: PathBuf },
    /// `[cluster]`'s TLS file `field` (`cluster.ca`, `cluster.cert`, `cluster.key`) cannot
    /// be used: the gateway does not start.
    #[error("{field} {}: {reason}", path.display())]
    ClusterFile {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A shared store refused a student's claim by its own count: the quota was reached
    /// through other gateways, or the account was removed through one.
    #[error("{0}")]
    Claim(crate::table::users::Denied),
    /// A shared store did not answer: nothing was changed.
    #[error("etcd at {endpoints} is unreachable ({action}: {reason}); changes are refused until it answers, forwarding and DNS go on with the last table")]
    Unavailable {
        endpoints: String,
        action: &'static str,
        reason: String,
    },
    /// A shared store refused a conditional change: another gateway got there first.
    /// `taken` lists the ports the store holds, so that an allocation can try again
    /// around them.
    #[error("{reason}")]
    Refused {
        reason: String,
        taken: Vec<(u16, lb_model::Protocol)>,
    },
}

impl StateError {
    /// The control API's status for a change the store did not make.
    pub fn status(&self) -> u16 {
        match self {
            StateError::Unavailable { .. } => 503,
            StateError::Refused { .. } => 409,
            StateError::Claim(d) => d.status(),
            _ => 500,
        }
    }
}

/// One runtime route as the daemon keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoute {
    pub route: Route,
    pub added: SystemTime,
    pub last_seen: Option<SystemTime>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u64,
    routes: Vec<RawRoute>,
}

/// One change to the runtime routes, as [`Store::record`] takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// Added, or changed in place (e.g. a new last-seen time).
    Put(StoredRoute),
    Delete(RouteKey),
}

/// A route's key as the journal writes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    name: String,
    service: String,
    protocol: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    name: String,
    service: String,
    protocol: String,
    /// A one-backend route's backend (what every state file before pools has), else empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    backend: String,
    /// A pool's members, `ADDR:PORT[ weight=N][ drained]` (`lb_model::Member`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    backends: Vec<String>,
    port: u16,
    /// Seconds since the Unix epoch.
    added_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proxy_protocol: Option<String>,
    /// The route's own health check (files before checks have none: the default). Boxed:
    /// most routes have none, and the journal's lines stay small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    check: Option<Box<lb_model::check::CheckRequest>>,
}

/// What the daemon persists, wherever it is kept: [`StateStore`] (a local directory) alone,
/// or the store shared by several gateways (`cluster::EtcdStore`). Each kind of record has
/// its own load/save pair, replaced as a whole: runtime routes, and the accounts with
/// their port cool-downs.
///
/// Loading is strict (see the module docs): a store it cannot read is an error, never "none".
/// Saving is all or nothing: after an error the previous contents are still what a load
/// returns.
pub trait Store: Send {
    /// Names the store in messages: a path, or a URL.
    fn location(&self) -> String;
    /// The runtime routes; none stored yet means none. `public_ipv4` is checked like a
    /// config route's backend would be.
    fn load_routes(&self, public_ipv4: Ipv4Addr) -> Result<Vec<StoredRoute>, StateError>;
    /// Replaces the runtime routes with `routes`, durably before it returns.
    fn save_routes(&mut self, routes: &[StoredRoute]) -> Result<(), StateError>;
    /// Records `changes` to the runtime routes. When it returns they are written (an error
    /// means none was); they are durable once the [`Commit`] has been waited for, which the
    /// caller does after releasing its locks so that concurrent changes share one flush.
    /// `all` gives every runtime route after the changes, for a store that decides to write
    /// a whole snapshot instead.
    fn record(
        &mut self,
        changes: &[RouteChange],
        all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError>;
    /// Records that runtime route `route` changed in place (its pool's drained flags), its
    /// key, port and backends as they were. A shared store makes it only while the route
    /// still exists there.
    fn record_update(
        &mut self,
        route: &StoredRoute,
        all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError>;
    /// The accounts and port cool-downs; none stored yet means none.
    fn load_accounts(&self) -> Result<Users, StateError>;
    fn save_accounts(&mut self, users: &Users) -> Result<(), StateError>;
}

impl Store for StateStore {
    fn location(&self) -> String {
        self.file.display().to_string()
    }
    fn load_routes(&self, public_ipv4: Ipv4Addr) -> Result<Vec<StoredRoute>, StateError> {
        self.load(public_ipv4)
    }
    fn save_routes(&mut self, routes: &[StoredRoute]) -> Result<(), StateError> {
        self.save(routes)
    }
    fn record(
        &mut self,
        changes: &[RouteChange],
        all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError> {
        self.append(changes, all)
    }
    fn record_update(
        &mut self,
        route: &StoredRoute,
        all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError> {
        self.append(&[RouteChange::Put(route.clone())], all)
    }
    fn load_accounts(&self) -> Result<Users, StateError> {
        crate::table::state::accounts::load(&self.dir)
    }
    fn save_accounts(&mut self, users: &Users) -> Result<(), StateError> {
        crate::table::state::accounts::save(&self.dir, users)
    }
}

/// Journal lines after which the store folds the journal into a new `routes.json`: at
/// least this many, and at least twice the routes the last snapshot held, so that the
/// snapshot's cost (proportional to the table) is spread over as many changes.
const COMPACT_AFTER: u64 = 20_000;

/// The state directory, locked for this process.
pub struct StateStore {
    dir: PathBuf,
    file: PathBuf,
    _lock: File,
    /// The segment changes are appended to; created at the first change after a snapshot.
    segment: Option<Arc<Segment>>,
    /// The number the next segment gets: every existing one is below it.
    next_segment: u64,
    /// Journal lines on disk that the snapshot does not include.
    lines: u64,
    /// Routes in the last snapshot written.
    snapshot_routes: u64,
    /// The snapshot being written in the background, if any.
    flight: Option<Arc<Flight>>,
}

impl StateStore {
    /// Creates `dir` (mode 0700) if needed and takes its lock.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| StateError::Io {
                path: dir.to_path_buf(),
                action: "create the state directory",
                error,
            })?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|error| StateError::Io {
                path: lock_path.clone(),
                action: "open the lock file",
                error,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(error)) => {
                return Err(StateError::Io {
                    path: lock_path,
                    action: "lock the state directory",
                    error,
                })
            }
        }
        let next_segment = journal::segments(dir)?.last().map_or(1, |(n, _)| n + 1);
        Ok(StateStore {
            dir: dir.to_path_buf(),
            file: dir.join(STATE_FILE),
            _lock: lock,
            segment: None,
            next_segment,
            lines: 0,
            snapshot_routes: 0,
            flight: None,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Reads the stored routes: `routes.json` (none yet means none) with the journal
    /// replayed over it. `public_ipv4` is checked like a config route's backend would be.
    pub fn load(&self, public_ipv4: Ipv4Addr) -> Result<Vec<StoredRoute>, StateError> {
        let mut snapshot = true;
        let raw = match fs::read(&self.file) {
            Ok(bytes) => parse_raw(&self.file, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                snapshot = false;
                Vec::new()
            }
            Err(error) => {
                return Err(StateError::Io {
                    path: self.file.clone(),
                    action: "read the state file",
                    error,
                })
            }
        };
        let segments = journal::segments(&self.dir)?;
        if segments.is_empty() {
            return validate(&self.file, raw, public_ipv4);
        }
        let key = |name: &str, service: &str, protocol: &str| {
            (name.to_string(), service.to_string(), protocol.to_string())
        };
        let mut routes: BTreeMap<(String, String, String), RawRoute> = raw
            .into_iter()
            .map(|r| (key(&r.name, &r.service, &r.protocol), r))
            .collect();
        for (_, path) in &segments {
            let bytes = fs::read(path).map_err(|error| StateError::Io {
                path: path.clone(),
                action: "read the journal segment",
                error,
            })?;
            for line in journal::parse(path, &bytes)? {
                match line {
                    Line::Put(r) => {
                        routes.insert(key(&r.name, &r.service, &r.protocol), r);
                    }
                    Line::Delete(k) => {
                        routes.remove(&key(&k.name, &k.service, &k.protocol));
                    }
                }
            }
        }
        let files: Vec<String> = snapshot
            .then(|| STATE_FILE.to_string())
            .into_iter()
            .chain(
                segments
                    .iter()
                    .map(|(n, _)| format!("{}{n}", journal::SEGMENT_PREFIX)),
            )
            .collect();
        let named = self.dir.join(format!("{{{}}}", files.join(",")));
        validate(&named, routes.into_values().collect(), public_ipv4)
    }

    /// Replaces the stored routes with `routes`, crash-safely, before returning.
    pub fn save(&mut self, routes: &[StoredRoute]) -> Result<(), StateError> {
        self.snapshot(routes.to_vec()).wait()
    }

    /// Starts writing `routes` as the new `routes.json` in the background; the segments
    /// written so far are deleted once it is durable. Changes recorded from now on go to a
    /// new segment, so they never depend on the snapshot.
    fn snapshot(&mut self, routes: Vec<StoredRoute>) -> Commit {
        if let Some(flight) = self.flight.take() {
            // One at a time: its segments must be gone before the next one counts.
            if let Err(e) = flight.wait() {
                tracing::warn!("state: the previous snapshot failed (the journal still holds its changes): {e}");
            }
        }
        let covered = self.next_segment - 1;
        self.segment = None;
        self.lines = 0;
        self.snapshot_routes = routes.len() as u64;
        let flight = Arc::new(Flight::default());
        self.flight = Some(Arc::clone(&flight));
        let dir = self.dir.clone();
        let writer = Arc::clone(&flight);
        let work = move || {
            let result = write_snapshot(&dir, &routes, covered).map_err(|e| e.to_string());
            writer.finish(result);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("srvgate-snapshot".into())
            .spawn(work)
        {
            flight.finish(Err(format!("cannot start the snapshot thread: {e}")));
        }
        Commit::new(move || {
            flight.wait().map_err(|reason| StateError::Io {
                path: PathBuf::from(STATE_FILE),
                action: "write the snapshot",
                error: io::Error::other(reason),
            })
        })
    }

    /// Appends `changes` to the journal (see [`Store::record`]).
    fn append(
        &mut self,
        changes: &[RouteChange],
        all: &dyn Fn() -> Vec<StoredRoute>,
    ) -> Result<Commit, StateError> {
        if self
            .segment
            .as_ref()
            .is_some_and(|s| s.broken.load(Ordering::SeqCst))
        {
            // What that segment holds may not be on disk: a whole snapshot (with these
            // changes in it) is the only way to be sure again.
            tracing::warn!("state: a journal flush failed earlier; writing a whole snapshot");
            self.snapshot(all()).wait()?;
            return Ok(Commit::done());
        }
        let segment = match &self.segment {
            Some(s) => Arc::clone(s),
            None => {
                let s = Arc::new(Segment::create(&self.dir, self.next_segment)?);
                self.next_segment += 1;
                self.segment = Some(Arc::clone(&s));
                s
            }
        };
        let mut text = String::new();
        for change in changes {
            let line = match change {
                RouteChange::Put(r) => Line::Put(raw(r)),
                RouteChange::Delete(k) => Line::Delete(RawKey {
                    name: k.name.clone(),
                    service: k.service.clone(),
                    protocol: k.protocol.to_string(),
                }),
            };
            // Plain strings and integers always serialise.
            text.push_str(&serde_json::to_string(&line).unwrap_or_default());
            text.push('\n');
        }
        let count = changes.len() as u64;
        let upto = segment.append(&text, count)?;
        self.lines += count;
        let commit = Commit::flush(&segment, upto);
        if self.lines >= COMPACT_AFTER.max(2 * self.snapshot_routes) {
            // Nobody waits for this one: the lines just written are durable by their own
            // flush, and a failed snapshot leaves the journal as it was.
            drop(self.snapshot(all()));
        }
        Ok(commit)
    }

    /// The state directory (other files of the daemon's state live beside the routes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Replaces `dir/name` with `text` so that a crash leaves the old file or the new one,
/// never a mix: write `name.tmp` (mode 0600), fsync, rename over, fsync the directory.
pub fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), StateError> {
    let file = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |error| StateError::Io {
            path,
            action,
            error,
        }
    };
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, &file).map_err(io("rename the new file into", &file))?;
    // The rename itself is durable only once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the state directory", dir))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The latest stored time srvgate accepts: 9999-12-31T23:59:59Z. Far past any real date,
/// and far enough below `SystemTime`'s limit that adding a cool-down or `reclaim_after`
/// to it cannot overflow either.
pub const MAX_STORED_UNIX: u64 = 253_402_300_799;

/// A stored time (Unix seconds) as a `SystemTime`: the one conversion of every time read
/// from a file or a shared store. A value past [`MAX_STORED_UNIX`] is damage, refused with
/// a reason naming it, never the panic of `UNIX_EPOCH + Duration` on overflow.
pub(crate) fn from_unix(secs: u64) -> Result<SystemTime, String> {
    if secs > MAX_STORED_UNIX {
        return Err(format!(
            "{secs} is past any real date (at most {MAX_STORED_UNIX}, the end of year 9999)"
        ));
    }
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| format!("{secs} is not a time this system can represent"))
}

impl RawRoute {
    /// The route's stored times; an error names the bad field.
    fn times(&self) -> Result<(SystemTime, Option<SystemTime>), String> {
        let added = from_unix(self.added_unix).map_err(|e| format!("added_unix: {e}"))?;
        let last_seen = self
            .last_seen_unix
            .map(from_unix)
            .transpose()
            .map_err(|e| format!("last_seen_unix: {e}"))?;
        Ok((added, last_seen))
    }
}

/// The steps of a snapshot whose order makes it crash-safe, behind a seam so that a test
/// can record them.
trait Disk {
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

struct RealDisk;

impl Disk for RealDisk {
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }
}

/// Writes the snapshot, then deletes the segments up to `covered`, which it includes.
fn write_snapshot(dir: &Path, routes: &[StoredRoute], covered: u64) -> Result<(), StateError> {
    write_snapshot_on(&RealDisk, dir, routes, covered)
}

fn write_snapshot_on(
    disk: &dyn Disk,
    dir: &Path,
    routes: &[StoredRoute],
    covered: u64,
) -> Result<(), StateError> {
    write_atomically(dir, STATE_FILE, &render(routes))?;
    let mut unlinked = false;
    for (n, path) in journal::segments(dir)? {
        if n > covered {
            break;
        }
        disk.remove_file(&path).map_err(|error| StateError::Io {
            path: path.clone(),
            action: "delete the journal segment",
            error,
        })?;
        unlinked = true;
    }
    // An unlink is durable only once the directory is. A segment a crash brings back is
    // replayed over the snapshot although its lines are older: a last-seen time that only
    // the snapshot moved forward would go back (an early reclaim). So the snapshot counts
    // as written only once its segments are gone for good.
    if unlinked {
        disk.sync_dir(dir).map_err(|error| StateError::Io {
            path: dir.to_path_buf(),
            action: "fsync the state directory after deleting journal segments",
            error,
        })?;
    }
    Ok(())
}

/// One route as JSON: the journal's and the shared store's value.
pub(crate) fn encode_route(s: &StoredRoute) -> String {
    // Plain strings and integers always serialise.
    serde_json::to_string(&raw(s)).unwrap_or_default()
}

/// Routes stored one per key (a shared store's), each JSON as [`encode_route`] writes it
/// and stored under its own key (`(stored key as errors name it, route key, value)`);
/// checked together like a state file (`path` names the store).
pub(crate) fn decode_routes(
    path: &Path,
    values: &[(String, RouteKey, &[u8])],
    public_ipv4: Ipv4Addr,
) -> Result<Vec<StoredRoute>, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut raw = Vec::with_capacity(values.len());
    for (stored, key, bytes) in values {
        let r: RawRoute = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("{stored}: not a route: {e}")))?;
        if (r.name.as_str(), r.service.as_str(), r.protocol.as_str())
            != (
                key.name.as_str(),
                key.service.as_str(),
                key.protocol.as_str(),
            )
        {
            return Err(corrupt(format!(
                "{stored}: holds route {}/{}/{}",
                r.name, r.service, r.protocol
            )));
        }
        // Checked here as well as in `validate` so that the error names the key.
        r.times().map_err(|e| corrupt(format!("{stored}: {e}")))?;
        raw.push(r);
    }
    validate(path, raw, public_ipv4)
}

fn raw(s: &StoredRoute) -> RawRoute {
    RawRoute {
        name: s.route.name.clone(),
        service: s.route.service.clone(),
        protocol: s.route.protocol.to_string(),
        backend: single_backend(&s.route),
        backends: pool_texts(&s.route),
        port: s.route.port,
        added_unix: unix(s.added),
        last_seen_unix: s.last_seen.map(unix),
        proxy_protocol: s.route.proxy_protocol.map(|p| p.as_str().to_string()),
        check: s.route.backends.check().map(|c| Box::new(c.into())),
    }
}

/// A plain one-backend route's backend, written as `backend` so that a file of such routes
/// reads the same as before pools (and an older srvgate reads it).
pub(crate) fn single_backend(r: &lb_model::Route) -> String {
    if r.backends.is_single() {
        r.backends.first().to_string()
    } else {
        String::new()
    }
}

/// A pool's members' texts, unless [`single_backend`] writes the route.
pub(crate) fn pool_texts(r: &lb_model::Route) -> Vec<String> {
    if r.backends.is_single() {
        Vec::new()
    } else {
        r.backends.texts()
    }
}

/// The file's text for `routes`, sorted so that successive versions diff cleanly.
pub fn render(routes: &[StoredRoute]) -> String {
    let mut raw: Vec<RawRoute> = routes.iter().map(raw).collect();
    raw.sort_by(|a, b| (&a.name, &a.service, &a.protocol).cmp(&(&b.name, &b.service, &b.protocol)));
    let file = FileFormat {
        version: FORMAT_VERSION.into(),
        routes: raw,
    };
    // Serialising plain strings and integers cannot fail.
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    text
}

/// Parses and validates a state file's contents; `path` only names it in errors.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    public_ipv4: Ipv4Addr,
) -> Result<Vec<StoredRoute>, StateError> {
    validate(path, parse_raw(path, bytes)?, public_ipv4)
}

/// Reads a state file's routes without checking them.
fn parse_raw(path: &Path, bytes: &[u8]) -> Result<Vec<RawRoute>, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // The writer never leaves an empty file, so this is damage, not "no routes".
        return Err(corrupt(
            "it is empty (srvgate always writes a version and a route list)".into(),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    match value.get("version").map(|v| v.as_u64()) {
        Some(Some(v)) if v == u64::from(FORMAT_VERSION) => {}
        Some(Some(found)) => {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found,
            })
        }
        Some(None) => return Err(corrupt("\"version\" is not a number".into())),
        None => return Err(corrupt("it has no \"version\" field".into())),
    }
    let file: FileFormat = serde_json::from_value(value).map_err(|e| corrupt(format!("{e}")))?;
    Ok(file.routes)
}

/// Checks stored routes one by one and against each other: the one validation of what a
/// snapshot and its journal hold.
fn validate(
    path: &Path,
    raw: Vec<RawRoute>,
    public_ipv4: Ipv4Addr,
) -> Result<Vec<StoredRoute>, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut problems = Vec::new();
    let mut scratch = RouteTable::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let n = i + 1;
        let field = |f: &str| format!("routes[{n}].{f}");
        let times = r.times();
        let request = RouteRequest {
            name: r.name,
            service: r.service,
            protocol: Some(r.protocol),
            backend: r.backend,
            backends: r.backends,
            port: Some(r.port),
            proxy_protocol: r.proxy_protocol,
            check: r.check.map(|c| *c),
        };
        // The port range is not checked: a range narrowed in the config later must not
        // take allocated ports away.
        let route = match check_route(&request, Some(public_ipv4), None, &field) {
            Ok(_) if r.port == 0 => {
                problems.push(format!("{}: 0 is not a port", field("port")));
                continue;
            }
            Ok(d) => d.with_port(r.port),
            Err(errors) => {
                problems.extend(errors.iter().map(ToString::to_string));
                continue;
            }
        };
        // The route table owns uniqueness (key, port, backend); the stored routes are
        // checked by going into a scratch one.
        if let Err(e) = scratch.insert(route.clone(), Source::Runtime, UNIX_EPOCH, None) {
            match e {
                RouteError::Conflict(c) => {
                    problems.push(format!("{}: {}", field(&c.error.field), c.error.reason))
                }
                other => problems.push(format!("{}: {other}", field("name"))),
            }
            continue;
        }
        let (added, last_seen) = match times {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("routes[{n}].{e}"));
                continue;
            }
        };
        routes.push(StoredRoute {
            route,
            added,
            last_seen,
        });
    }
    if problems.is_empty() {
        Ok(routes)
    } else {
        Err(corrupt(format!(
            "invalid routes:\n    {}",
            problems.join("\n    ")
        )))
    }
}

#[cfg(test)]
mod tests;
