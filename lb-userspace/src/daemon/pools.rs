//! The operations on a route's pool that keep its key, port and slot: drain and undrain
//! (`srvgate route drain|undrain`, the control API) and a health check's verdict. Each is a
//! `Changed` entry of the table, carried to the maps and the web routers like any change
//! (DNS is unchanged: its SRV records name the public port, not a backend).
//!
//! Drain: table, maps, then the store for a runtime route (the pool is stored with its
//! `drained` flags); a refusal of the maps or the store undoes it in the table and the maps.
//! A config route's drain lives in the table only (the file is the admin's): it lasts
//! across SIGHUP while the file names the member (`RouteTable::replace_config`), not across
//! a restart; write `drained` in the file to keep it.
//!
//! What is checked ([`Checks`]): every member of every route whose pool has a check, its
//! own or the default (`Pool::effective_check`: TCP connect every 2 s, down after 3
//! failures, up after 2 successes, for a TCP pool of two or more members; nothing for a
//! UDP route or a one-backend route unless its author wrote a check; `kind = "none"`
//! never). A checked one-backend route is never left without its backend (fail open), but
//! its owner sees its health. [`Checks`] follows the table change by change (its cost is
//! the change's), and the `health` runner gets the whole target list only when it changed.
//!
//! The health board: the runner's [`Board`] (last result, when the verdict changed) joined
//! with the table's verdicts in each member's [`BackendView`], which `route ls`, `status`,
//! `mine` and the console render (`lb_model::text::backend_state`).
//!
//! Health: table (the entry's down set), maps, web routers; a refusal of the maps puts the
//! verdict back, so the table never says what the maps do not.
//!
//! With `[cluster]`, every gateway makes the same choice because the leader's checks alone
//! decide: each gateway runs the checks (so its board shows what it sees, and a gateway
//! that becomes leader has warm verdicts), but only the leader applies its own verdicts,
//! and it writes each to etcd (`Cluster::publish_health`, fenced by the `leader` key);
//! the others apply what the watch brings (`Remote::Health`) and ignore their own. So
//! every table holds the same down sets, hence the same Maglev tables. Config routes are
//! each gateway's own (its file's): their verdicts stay local, as before. A gateway starts
//! (and resynchronises) from the verdicts stored ([`Core::adopt_health`]); a new leader
//! keeps them and, every [`LEAD_HEALTH_EVERY`], writes only where its own *confirmed*
//! verdicts differ ([`Core::lead_health`]): a verdict its checks only assume (a target not
//! yet checked) never overrides the last one written, so a leader change does not flap. Every transition is an audit
//! line; a pool whose every undrained member is down goes on sending to all of them (fail
//! open), said in a warning, in `status` and in `srvgate_backend_up`'s companion metric.

use std::{collections::BTreeMap, net::SocketAddrV4, sync::Arc};

use tracing::{error, info, warn};

use crate::{
    logging::AUDIT_TARGET,
    table::routes::{Changed, Diff, Entry, Source},
    table::state::StoredRoute,
};
use lb_model::{
    api::{ApiError, BackendView, DrainRequest, RouteView},
    Protocol, RouteKey,
};

use super::{lifecycle::on_core, Core};

/// How often the leader compares its checks' confirmed verdicts with the shared ones: a
/// new leader's correction, or a write that failed, waits at most this long.
pub const LEAD_HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The audit reason of a verdict that came from the leader.
const LEADERS: &str = "the leading gateway's checks";
use crate::health::{Board, Target, Transition};

/// The health checks the table asks for, kept in step with it: the runner's input; and the
/// runner's board, which the views read.
pub(super) struct Checks {
    by_route: BTreeMap<RouteKey, Vec<Target>>,
    tx: tokio::sync::watch::Sender<Vec<Target>>,
    board: Board,
    /// With `[cluster]`, on the leader: verdicts applied here whose write to the shared
    /// table failed, written again by [`Core::lead_health`].
    unpublished: BTreeMap<(RouteKey, SocketAddrV4), bool>,
}

impl Checks {
    pub(super) fn new(tx: tokio::sync::watch::Sender<Vec<Target>>, board: Board) -> Checks {
        Checks {
            by_route: BTreeMap::new(),
            tx,
            board,
            unpublished: BTreeMap::new(),
        }
    }

    /// The check `key`'s members get, in haproxy's words, if they are checked.
    fn spec_text(&self, key: &RouteKey) -> Option<String> {
        let t = self.by_route.get(key)?.first()?;
        Some(t.spec.to_string())
    }

    /// Takes a change of the table; tells the runner if what is checked changed.
    pub(super) fn follow(&mut self, diff: &Diff) {
        let mut changed = false;
        for e in diff
            .removed
            .iter()
            .chain(diff.changed.iter().map(|c| &c.old))
        {
            changed |= self.by_route.remove(&e.route.key()).is_some();
        }
        for e in diff.added.iter().chain(diff.changed.iter().map(|c| &c.new)) {
            let Some(spec) = e.route.backends.effective_check(e.route.protocol) else {
                continue;
            };
            let key = e.route.key();
            let targets = e
                .route
                .backends
                .members()
                .iter()
                .map(|m| Target {
                    key: key.to_string(),
                    backend: m.addr,
                    spec: spec.clone(),
                })
                .collect();
            self.by_route.insert(key, targets);
            changed = true;
        }
        if changed {
            let all: Vec<Target> = self.by_route.values().flatten().cloned().collect();
            self.tx.send_if_modified(|now| {
                let news = *now != all;
                *now = all;
                news
            });
        }
    }

    /// The route a runner's target names (`name/service/protocol`), if it is checked.
    fn route(&self, text: &str) -> Option<RouteKey> {
        let mut parts = text.split('/');
        let key = RouteKey {
            name: parts.next()?.to_string(),
            service: parts.next()?.to_string(),
            protocol: parts.next()?.parse().ok()?,
        };
        self.by_route.contains_key(&key).then_some(key)
    }
}

/// Applies the runner's verdicts to the core, one operation each, until the runner stops.
pub(super) async fn apply_verdicts(
    core: Arc<std::sync::Mutex<Core>>,
    mut verdicts: tokio::sync::mpsc::Receiver<Transition>,
) {
    while let Some(t) = verdicts.recv().await {
        on_core(&core, move |c| {
            // A verdict about a route changed or removed meanwhile matches nothing.
            let key = c.checks.as_ref()?.borrow().route(&t.target.key)?;
            Some(c.own_verdict(&key, t.target.backend, t.up, &t.reason))
        })
        .await;
    }
}

/// The members of `e`'s pool with their health, as the API shows them: the table's verdict
/// (what the maps do), with the board's last result and time of change when `checks` runs.
pub(super) fn backend_views(e: &Entry, checks: Option<&Checks>) -> Vec<BackendView> {
    let key = e.route.key().to_string();
    let board: BTreeMap<SocketAddrV4, crate::health::TargetStatus> = checks
        .map(|c| c.board.route(&key))
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.backend, s))
        .collect();
    e.route
        .backends
        .members()
        .iter()
        .map(|m| {
            let status = board.get(&m.addr);
            BackendView {
                addr: m.addr.to_string(),
                weight: m.weight,
                drained: m.drained,
                up: !e.down.contains(&m.addr),
                since_unix: status.and_then(|s| s.changed_unix),
                last_check: status.and_then(|s| s.last.clone()),
            }
        })
        .collect()
}

/// The check text a route's view shows.
pub(super) fn check_text(e: &Entry, checks: Option<&Checks>) -> Option<String> {
    match checks {
        Some(c) => c.spec_text(&e.route.key()),
        // The tests' cores run no checks; the route still says what it would get.
        None => e
            .route
            .backends
            .effective_check(e.route.protocol)
            .map(|s| s.to_string()),
    }
}

impl Core {
    /// Drains (or undrains) one member of one of `name`'s routes: the route whose pool has
    /// `r.backend`, among those of `r.service` and `r.protocol` when given.
    pub(super) fn drain(&mut self, name: &str, r: DrainRequest) -> Result<RouteView, ApiError> {
        let backend: SocketAddrV4 = r.backend.parse().map_err(|_| {
            ApiError::field(
                400,
                "backend",
                format!(
                    "{:?} is not an IPv4 address:port like \"10.0.0.11:22\"",
                    r.backend
                ),
            )
        })?;
        let protocol = r
            .protocol
            .as_deref()
            .map(str::parse::<Protocol>)
            .transpose()
            .map_err(|e| ApiError::field(400, "protocol", e))?;
        let matching: Vec<Entry> = self
            .routes
            .table
            .named(name)
            .filter(|e| r.service.as_ref().is_none_or(|s| *s == e.route.service))
            .filter(|e| protocol.is_none_or(|p| p == e.route.protocol))
            .filter(|e| e.route.backends.member(backend).is_some())
            .cloned()
            .collect();
        let entry = match matching.as_slice() {
            [e] => e.clone(),
            [] => {
                let of = r
                    .service
                    .as_ref()
                    .map_or(name.to_string(), |s| format!("{name}/{s}"));
                return Err(ApiError::field(
                    404,
                    "backend",
                    format!("no route of {of} has the backend {backend}"),
                ));
            }
            _ => {
                return Err(ApiError::field(
                    409,
                    "protocol",
                    format!(
                        "{backend} is a backend of {name}'s tcp and udp routes; say which with --protocol"
                    ),
                ))
            }
        };
        let key = entry.route.key();
        let pool = entry
            .route
            .backends
            .with_drained(backend, r.drained)
            .map_err(|e| ApiError::field(409, "backend", e))?;
        let now = self.clock.now();
        if pool == entry.route.backends {
            return Ok(self.view(&entry, now));
        }
        let changed = self
            .routes
            .table
            .set_backends(&key, pool)
            .map_err(|e| ApiError::new(409, e.to_string()))?;
        let diff = Diff {
            changed: vec![changed.clone()],
            ..Diff::default()
        };
        let live = self
            .routes
            .dataplane
            .apply(&self.routes.table, &diff)
            .map_err(|e| ApiError::new(500, format!("not changed: {e}")));
        let recorded = live.and_then(|()| {
            if entry.source == Source::Config {
                return Ok(());
            }
            let stored = StoredRoute {
                route: changed.new.route.clone(),
                added: changed.new.added,
                last_seen: changed.new.last_seen,
            };
            self.routes
                .record_update(&stored)
                .map_err(|e| ApiError::new(e.status(), format!("not changed: {e}")))
        });
        if let Err(e) = recorded {
            error!(route = %key, %backend, "route drain: {}", e.reply.error);
            self.undo_pool(&changed);
            return Err(e);
        }
        self.publish(&diff);
        let action = if r.drained { "drain" } else { "undrain" };
        info!(target: AUDIT_TARGET, action, route = %key, %backend, source = entry.source.as_str(), "route {action}");
        Ok(self.view(&changed.new, now))
    }

    /// [`Core::set_health_because`] without a reason: the tests' verdicts.
    #[cfg(test)]
    pub(super) fn set_health(&mut self, key: &RouteKey, backend: SocketAddrV4, up: bool) -> bool {
        self.set_health_because(key, backend, up, "")
    }

    /// Applies a health check's verdict on member `backend` of route `key`; `reason` (`3
    /// checks in a row failed, last: ...`) goes on the transition's audit line. Returns
    /// whether the table and maps now hold it (`false`: no such member, nothing new, or the
    /// maps refused it, which is logged and put back).
    pub(super) fn set_health_because(
        &mut self,
        key: &RouteKey,
        backend: SocketAddrV4,
        up: bool,
        reason: &str,
    ) -> bool {
        let Some(changed) = self.routes.table.set_down(key, backend, !up) else {
            return false;
        };
        let diff = Diff {
            changed: vec![changed.clone()],
            ..Diff::default()
        };
        if let Err(e) = self.routes.dataplane.apply(&self.routes.table, &diff) {
            error!(route = %key, %backend, up, "health: updating the BPF maps failed: {e}; keeping the previous verdict");
            self.undo_pool(&changed);
            return false;
        }
        self.publish(&diff);
        let action = if up { "backend up" } else { "backend down" };
        info!(target: AUDIT_TARGET, action, route = %key, %backend, reason, "health");
        match (changed.old.fail_open(), changed.new.fail_open()) {
            (false, true) => {
                warn!(route = %key, backends = %changed.new.route.backends, "every undrained backend of {key} is down: sending new flows to all of them (fail open)")
            }
            (true, false) => {
                info!(route = %key, %backend, "{key} has a backend up again: fail-open over")
            }
            _ => {}
        }
        true
    }

    /// A verdict of this gateway's own checks: applied; with `[cluster]`, only on the
    /// leader, which also writes it for the others (see the module docs).
    pub(super) fn own_verdict(
        &mut self,
        key: &RouteKey,
        backend: SocketAddrV4,
        up: bool,
        reason: &str,
    ) -> bool {
        // A config route is each gateway's own (its file's), so are its verdicts.
        let shared_route = self
            .routes
            .table
            .get(key)
            .is_some_and(|e| e.source == Source::Runtime);
        match self.routes.store.cluster().map(|c| c.leads()) {
            None => self.set_health_because(key, backend, up, reason),
            Some(_) if !shared_route => self.set_health_because(key, backend, up, reason),
            Some(false) => {
                info!(route = %key, %backend, up, "health check: {reason}; the leading gateway decides");
                false
            }
            Some(true) => {
                let applied = self.set_health_because(key, backend, up, reason);
                self.publish_verdict(key, backend, up);
                applied
            }
        }
    }

    fn publish_verdict(&mut self, key: &RouteKey, backend: SocketAddrV4, up: bool) {
        let Some(c) = self.routes.store.cluster_mut() else {
            return;
        };
        let result = c.publish_health(key, backend, up);
        if let Err(e) = &result {
            warn!(route = %key, %backend, up, "health: writing the verdict for the other gateways: {e}; trying again within {LEAD_HEALTH_EVERY:?}");
        }
        if let Some(checks) = &self.checks {
            let mut checks = checks.borrow_mut();
            match result {
                Ok(()) => checks.unpublished.remove(&(key.clone(), backend)),
                Err(_) => checks.unpublished.insert((key.clone(), backend), up),
            };
        }
    }

    /// On the leader: where its checks' confirmed verdicts differ from the table (which
    /// holds the shared ones), applies and writes them. Proportional to the checked
    /// backends, not the table.
    pub(super) fn lead_health(&mut self) {
        if !self.routes.store.cluster().is_some_and(|c| c.leads()) {
            return;
        }
        let Some(checks) = &self.checks else { return };
        let retry: Vec<(RouteKey, SocketAddrV4, bool)> =
            std::mem::take(&mut checks.borrow_mut().unpublished)
                .into_iter()
                .map(|((k, b), up)| (k, b, up))
                .collect();
        let wrong: Vec<(RouteKey, SocketAddrV4, bool)> = {
            let checks = checks.borrow();
            checks
                .board
                .snapshot()
                .into_iter()
                .filter(|s| s.confirmed)
                .filter_map(|s| {
                    let key = checks.route(&s.route)?;
                    let e = self.routes.table.get(&key)?;
                    (e.source == Source::Runtime && e.down.contains(&s.backend) == s.up)
                        .then_some((key, s.backend, s.up))
                })
                .collect()
        };
        for (key, backend, up) in retry {
            self.publish_verdict(&key, backend, up);
        }
        for (key, backend, up) in wrong {
            self.set_health_because(
                &key,
                backend,
                up,
                "this gateway leads now, and its checks say so",
            );
            self.publish_verdict(&key, backend, up);
        }
    }

    /// The leader's verdicts from the watch. The leader itself skips them: it applied its
    /// own first, and an echo arriving after a newer verdict would undo it for a moment.
    pub(super) fn apply_leaders_verdicts(&mut self, verdicts: Vec<(RouteKey, SocketAddrV4, bool)>) {
        if self.routes.store.cluster().is_some_and(|c| c.leads()) {
            return;
        }
        for (key, backend, up) in verdicts {
            if self
                .routes
                .table
                .get(&key)
                .is_some_and(|e| e.source == Source::Runtime)
            {
                self.set_health_because(&key, backend, up, LEADERS);
            }
        }
    }

    /// Makes the table's down sets the shared ones, `down` being every member the leader
    /// says is down (at start, and after a resync; proportional to the table, as those
    /// are). The leader keeps its own: [`Core::lead_health`] corrects the shared ones.
    pub(super) fn adopt_health(&mut self, down: Vec<(RouteKey, SocketAddrV4)>) {
        if self.routes.store.cluster().is_none_or(|c| c.leads()) {
            return;
        }
        let down: std::collections::HashSet<(RouteKey, SocketAddrV4)> = down.into_iter().collect();
        let wrong: Vec<(RouteKey, SocketAddrV4, bool)> = self
            .routes
            .table
            .entries()
            .filter(|e| e.source == Source::Runtime)
            .flat_map(|e| {
                let key = e.route.key();
                e.route
                    .backends
                    .addrs()
                    .filter(|b| e.down.contains(b) != down.contains(&(key.clone(), *b)))
                    .map(|b| (key.clone(), b, e.down.contains(&b)))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (key, backend, up) in wrong {
            self.set_health_because(&key, backend, up, LEADERS);
        }
    }

    /// Puts `changed.old` back in the table and the maps after a refused change.
    fn undo_pool(&mut self, changed: &Changed) {
        let key = changed.old.route.key();
        let back = self
            .routes
            .table
            .set_backends(&key, changed.old.route.backends.clone())
            .map(|_| {
                for b in changed.old.route.backends.addrs() {
                    let down = changed.old.down.contains(&b);
                    self.routes.table.set_down(&key, b, down);
                }
            });
        if let Err(e) = back {
            error!(route = %key, "putting the pool back: {e}");
            return;
        }
        let undo = Diff {
            changed: vec![Changed {
                old: changed.new.clone(),
                new: changed.old.clone(),
            }],
            ..Diff::default()
        };
        if let Err(e) = self.routes.dataplane.apply(&self.routes.table, &undo) {
            error!(route = %key, "putting the pool back in the BPF maps: {e}");
        }
    }
}
