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
//! verdict back, so the table never says what the maps do not. Every transition is an audit
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
use crate::health::{Board, Target, Transition};

/// The health checks the table asks for, kept in step with it: the runner's input; and the
/// runner's board, which the views read.
pub(super) struct Checks {
    by_route: BTreeMap<RouteKey, Vec<Target>>,
    tx: tokio::sync::watch::Sender<Vec<Target>>,
    board: Board,
}

impl Checks {
    pub(super) fn new(tx: tokio::sync::watch::Sender<Vec<Target>>, board: Board) -> Checks {
        Checks {
            by_route: BTreeMap::new(),
            tx,
            board,
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
            Some(c.set_health_because(&key, t.target.backend, t.up, &t.reason))
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
