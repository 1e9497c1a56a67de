//! The checks' scheduler: one task per target, started and ended as the watched target set
//! changes, all of them sharing one semaphore of probes in flight.
//!
//! Each target's first check comes after a random part of its interval (targets added
//! together spread out), then one every interval plus up to a tenth of it of jitter,
//! counted from the previous check's start. Waiting for a probe slot is not counted against
//! the backend: only the probe itself runs under the timeout.
//!
//! A target's task lives exactly as long as its entry in the set: removed (or the whole
//! runner dropped) means aborted, its in-flight probe with it. A changed spec restarts the
//! task and keeps the verdict. A transition of a target removed at that very moment may
//! still arrive; consumers match transitions against their own table.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, Hasher},
    net::SocketAddrV4,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::{
    sync::{mpsc, watch, Semaphore},
    task::JoinHandle,
    time::Instant,
};

use lb_model::check::CheckSpec;

use super::{
    probe::{check_once, Prober},
    state::Tracker,
};

/// Probes in flight at once by default: enough for hundreds of backends at a 2 s interval,
/// few enough that the checks are no load on a club's gateway or its descriptors.
pub const DEFAULT_MAX_PROBES: usize = 64;

/// Which backend of which route: a backend may be checked for several routes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId {
    /// The route, as its owner names it (`alice/web/tcp`).
    pub key: String,
    pub backend: SocketAddrV4,
}

/// What to check: the runner's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    pub backend: SocketAddrV4,
    pub spec: CheckSpec,
}

impl Target {
    pub fn id(&self) -> TargetId {
        TargetId {
            key: self.key.clone(),
            backend: self.backend,
        }
    }
}

/// A verdict that changed: the runner's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub target: TargetId,
    pub up: bool,
    /// The checks that decided it, with the last one's result.
    pub reason: String,
}

/// One target's health now, for status, the console and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetStatus {
    pub route: String,
    pub backend: SocketAddrV4,
    pub up: bool,
    /// False while a new target's "up" is only assumed (no check has passed yet).
    pub confirmed: bool,
    /// The check, in haproxy's words.
    pub check: String,
    /// The last check's result (`HTTP 200 OK`, `connect: Connection refused ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// Consecutive results that argue against `up`.
    pub against: u32,
    /// When `up` last changed (Unix seconds); absent before the first change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_unix: Option<u64>,
}

/// The runner's statuses, shared with whoever reports them. Cloning shares.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<TargetId, Entry>>>);

struct Entry {
    /// The task that may write this entry; a task that outlived its removal writes nothing.
    task: u64,
    status: TargetStatus,
}

impl Board {
    /// Every target's status, ordered by route and backend.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        self.lock().values().map(|e| e.status.clone()).collect()
    }

    /// The statuses of one route's targets (`key` as the targets name it).
    pub fn route(&self, key: &str) -> Vec<TargetStatus> {
        self.lock()
            .range(
                TargetId {
                    key: key.into(),
                    backend: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
                }..,
            )
            .take_while(|(id, _)| id.key == key)
            .map(|(_, e)| e.status.clone())
            .collect()
    }

    /// Whether the backend is up for this route; `None` when it is not checked.
    pub fn is_up(&self, key: &str, backend: SocketAddrV4) -> Option<bool> {
        let id = TargetId {
            key: key.into(),
            backend,
        };
        self.lock().get(&id).map(|e| e.status.up)
    }

    /// Puts a status as a runner's task would (tests of what reads the board).
    #[cfg(test)]
    pub fn put(&self, status: TargetStatus) {
        let id = TargetId {
            key: status.route.clone(),
            backend: status.backend,
        };
        self.lock().insert(id, Entry { task: 0, status });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TargetId, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: &TargetId, task: u64, f: impl FnOnce(&mut TargetStatus)) {
        if let Some(e) = self.lock().get_mut(id).filter(|e| e.task == task) {
            f(&mut e.status);
        }
    }
}

/// A task aborted when its handle is dropped, so no path forgets one.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the checks of `targets` until the sender of `targets` or the receiver of `out` is
/// gone (or this future is dropped), at most `max_probes` at once. Transitions go to `out`,
/// statuses to `board`.
pub async fn run<P: Prober>(
    prober: Arc<P>,
    mut targets: watch::Receiver<Vec<Target>>,
    out: mpsc::Sender<Transition>,
    board: Board,
    max_probes: usize,
) {
    let slots = Arc::new(Semaphore::new(max_probes.max(1)));
    let mut tasks: HashMap<TargetId, (CheckSpec, Owned)> = HashMap::new();
    let mut next_task = 0u64;
    loop {
        let wanted: HashMap<TargetId, CheckSpec> = targets
            .borrow_and_update()
            .iter()
            .map(|t| (t.id(), t.spec.clone()))
            .collect();
        // Verdicts of targets whose spec changed, carried over to their new task.
        let mut kept: HashMap<TargetId, (bool, bool)> = HashMap::new();
        tasks.retain(|id, (spec, _)| {
            let keep = wanted.get(id) == Some(spec);
            if !keep {
                if let Some(e) = board.lock().remove(id) {
                    if wanted.contains_key(id) {
                        kept.insert(id.clone(), (e.status.up, e.status.confirmed));
                    }
                }
            }
            keep
        });
        for (id, spec) in wanted {
            if tasks.contains_key(&id) {
                continue;
            }
            next_task += 1;
            let tracker = match kept.get(&id) {
                Some(&(up, confirmed)) => Tracker::resume(spec.rise, spec.fall, up, confirmed),
                None => Tracker::new(spec.rise, spec.fall),
            };
            board.lock().insert(
                id.clone(),
                Entry {
                    task: next_task,
                    status: TargetStatus {
                        route: id.key.clone(),
                        backend: id.backend,
                        up: tracker.up(),
                        confirmed: tracker.confirmed(),
                        check: spec.to_string(),
                        last: None,
                        against: 0,
                        changed_unix: None,
                    },
                },
            );
            let task = tokio::spawn(watch_target(
                Job {
                    id: id.clone(),
                    task: next_task,
                    spec: spec.clone(),
                    tracker,
                },
                prober.clone(),
                slots.clone(),
                board.clone(),
                out.clone(),
            ));
            tasks.insert(id, (spec, Owned(task)));
        }
        tokio::select! {
            changed = targets.changed() => if changed.is_err() { break },
            () = out.closed() => break,
        }
    }
    let mut b = board.lock();
    for id in tasks.keys() {
        b.remove(id);
    }
}

struct Job {
    id: TargetId,
    task: u64,
    spec: CheckSpec,
    tracker: Tracker,
}

async fn watch_target<P: Prober>(
    mut job: Job,
    prober: Arc<P>,
    slots: Arc<Semaphore>,
    board: Board,
    out: mpsc::Sender<Transition>,
) {
    let spec = job.spec.clone();
    tokio::time::sleep(random_below(spec.interval)).await;
    loop {
        let started = Instant::now();
        let result = {
            let Ok(_slot) = slots.acquire().await else {
                return;
            };
            check_once(&*prober, job.id.backend, &spec).await
        };
        let passed = result.is_ok();
        let text = match &result {
            Ok(what) => what.clone(),
            Err(e) => e.to_string(),
        };
        let was_confirmed = job.tracker.confirmed();
        let change = job.tracker.record(passed);
        let now_unix = change.map(|_| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        board.update(&job.id, job.task, |s| {
            s.up = job.tracker.up();
            s.confirmed = job.tracker.confirmed();
            s.against = job.tracker.against();
            s.last = Some(text.clone());
            if now_unix.is_some() {
                s.changed_unix = now_unix;
            }
        });
        if let Some(up) = change {
            let reason = match (up, was_confirmed) {
                (false, false) => format!("first check failed: {text}"),
                (false, true) => format!("{} checks in a row failed, last: {text}", spec.fall),
                (true, _) => format!("{} checks in a row passed, last: {text}", spec.rise),
            };
            let t = Transition {
                target: job.id.clone(),
                up,
                reason,
            };
            if out.send(t).await.is_err() {
                return;
            }
        }
        let next = started + spec.interval + random_below(spec.interval / 10);
        tokio::time::sleep_until(next).await;
    }
}

/// A duration uniformly in `[0, d)`, from std's randomly keyed hasher (no RNG crate needed
/// for jitter).
fn random_below(d: Duration) -> Duration {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d.mul_f64((bits >> 11) as f64 / (1u64 << 53) as f64)
}
