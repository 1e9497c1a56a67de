//! What the servers call: the control API's and the portal's [`Control`] (each change waits
//! for its durability with the core's lock released) and the metrics scrape.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::error;

use crate::{
    api::Control,
    kernel::dataplane::verdict_names,
    serve::metrics::{self, LegSample, RouteSample},
};
use lb_model::{
    api::{
        ApiError, Caller, ClaimRequest, DrainRequest, GatewayView, LegView, MeReply, Removed,
        RouteView, RoutesReply, Shutdown, TokenReply, TrafficMinute, UserRequest, UsersReply,
    },
    RouteRequest, UserView,
};

use super::{lock, unix, Core};

/// One metrics scrape. What needs the core (the routes, the verdicts, the legs) is copied
/// under its lock; the per-route counters, one map read per route, are read after, so a
/// scrape of a full gateway never delays a route change.
pub(super) fn scrape(core: &Mutex<Core>) -> String {
    let (routes, reader, verdicts, legs, routers, rrl) = {
        let c = lock(core);
        let m = &c.mirrors;
        let rrl = m.dns.as_ref().and_then(|d| d.rrl_counts());
        let routers: Vec<_> = m
            .http
            .iter()
            .map(|h| h.sample())
            .chain(m.https.iter().map(|h| h.sample()))
            .collect();
        let routes: Vec<_> = c
            .routes
            .table
            .entries()
            .map(|e| (e.route.clone(), e.id, e.down.clone(), e.fail_open()))
            .collect();
        let legs: Vec<LegSample> = c
            .routes
            .dataplane
            .legs()
            .iter()
            .map(|l| LegSample {
                name: l.name.clone(),
                role: l.role_name(),
                egress: l.egress_name(),
                tx_dropped: None,
                rx_dropped: None,
            })
            .collect();
        (
            routes,
            c.routes.dataplane.counter_reader().ok(),
            c.routes.dataplane.verdicts().unwrap_or_default(),
            legs,
            routers,
            rrl,
        )
    };
    let routes: Vec<RouteSample> = routes
        .into_iter()
        .map(|(route, id, down, fail_open)| RouteSample {
            route,
            down,
            fail_open,
            counters: reader
                .as_ref()
                .and_then(|r| r.route_counters(id).ok())
                .unwrap_or_default(),
        })
        .collect();
    let legs: Vec<LegSample> = legs
        .into_iter()
        .map(|l| LegSample {
            tx_dropped: crate::kernel::sys::netdev_stat(&l.name, "tx_dropped"),
            rx_dropped: crate::kernel::sys::netdev_stat(&l.name, "rx_dropped"),
            ..l
        })
        .collect();
    let named: Vec<(&str, u64)> = verdict_names().iter().copied().zip(verdicts).collect();
    let mut text = metrics::render(&routes, &named, &legs) + &metrics::render_routers(&routers);
    metrics::render_peer_warnings(&mut text, crate::logging::peer_noise().seen());
    if let Some((slipped, dropped)) = rrl {
        metrics::render_dns_rrl(&mut text, slipped, dropped);
    }
    text
}

/// The API's view of the daemon.
pub(super) struct Handle {
    pub(super) core: Arc<Mutex<Core>>,
    pub(super) shutdown: mpsc::UnboundedSender<Shutdown>,
}

impl Handle {
    /// Runs a change on the core, then waits, with the lock released, until what it
    /// recorded is durable: the reply never comes before that. A flush that fails leaves
    /// the change live (it is in the maps and answered by DNS) but maybe not on disk, and
    /// says so; the store then writes a whole snapshot with the next change.
    pub(super) fn change<R>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let (result, commits) = {
            let mut core = lock(&self.core);
            let result = f(&mut core);
            (result, std::mem::take(&mut core.routes.unflushed))
        };
        for commit in commits {
            if let Err(e) = commit.wait() {
                error!("state: {e}");
                return Err(ApiError::new(
                    500,
                    format!("the change is live but may not survive a crash: {e}"),
                ));
            }
        }
        result
    }
}

impl Control for Handle {
    fn list(&self) -> RoutesReply {
        lock(&self.core).list()
    }
    fn add(&self, request: RouteRequest) -> Result<RouteView, ApiError> {
        self.change(|c| c.add(request))
    }
    fn remove(
        &self,
        name: &str,
        service: Option<&str>,
        protocol: Option<lb_model::Protocol>,
    ) -> Result<Removed, ApiError> {
        self.change(|c| c.remove(name, service, protocol))
    }
    fn drain(&self, name: &str, request: DrainRequest) -> Result<RouteView, ApiError> {
        self.change(|c| c.drain(name, request))
    }
    fn shutdown(&self, request: Shutdown) {
        let _ = self.shutdown.send(request);
    }
    fn users(&self) -> UsersReply {
        lock(&self.core).users_reply()
    }
    fn user_add(&self, request: UserRequest) -> Result<TokenReply, ApiError> {
        lock(&self.core).user_add(request)
    }
    fn user_remove(&self, name: &str, with_routes: bool) -> Result<UserView, ApiError> {
        self.change(|c| c.user_remove(name, with_routes))
    }
    fn user_token(&self, name: &str) -> Result<TokenReply, ApiError> {
        lock(&self.core).user_token(name)
    }
    fn authenticate(&self, token: &str) -> Option<Caller> {
        let core = lock(&self.core);
        let u = core.students.users.authenticate(token).ok()?;
        Some(Caller {
            name: u.name.clone(),
            admin: u.admin,
        })
    }
    fn me(&self, caller: &str) -> Result<MeReply, ApiError> {
        lock(&self.core).me(caller)
    }
    fn claim(&self, caller: &str, request: ClaimRequest) -> Result<RouteView, ApiError> {
        self.change(|c| c.claim(caller, request))
    }
    fn release(
        &self,
        caller: &str,
        service: &str,
        protocol: Option<&str>,
    ) -> Result<Removed, ApiError> {
        self.change(|c| c.release(caller, service, protocol))
    }
    fn authenticate_digest(&self, name: &str, token_sha256: &[u8; 32]) -> Option<Caller> {
        let core = lock(&self.core);
        let u = core
            .students
            .users
            .authenticate_digest(name, token_sha256)
            .ok()?;
        Some(Caller {
            name: u.name.clone(),
            admin: u.admin,
        })
    }
    fn gateway(&self) -> GatewayView {
        let core = lock(&self.core);
        let names = verdict_names().iter().map(|n| n.to_string());
        GatewayView {
            legs: core
                .routes
                .dataplane
                .legs()
                .iter()
                .map(|l| LegView {
                    name: l.name.clone(),
                    role: l.role_name().to_string(),
                    egress: l.egress_name().to_string(),
                })
                .collect(),
            verdicts: names
                .zip(core.routes.dataplane.verdicts().unwrap_or_default())
                .collect(),
        }
    }
    fn traffic(&self, routes: &[lb_model::RouteKey]) -> Vec<Vec<TrafficMinute>> {
        let (slots, traffic) = {
            let core = lock(&self.core);
            let slots: Vec<Option<(u32, u64)>> = routes
                .iter()
                .map(|k| core.routes.table.get(k).map(|e| (e.id, unix(e.added))))
                .collect();
            (slots, core.traffic.clone())
        };
        let traffic = traffic.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .into_iter()
            .map(|s| s.map_or_else(Vec::new, |(id, added)| traffic.history(id, added)))
            .collect()
    }
    fn recent_audit(&self) -> Vec<String> {
        crate::logging::recent_audit()
    }
    fn backup(&self) -> crate::table::state::backup::Backup {
        // One lock: the routes and the accounts are of the same moment (a claim changes
        // both).
        let core = lock(&self.core);
        crate::table::state::backup::Backup {
            created: std::time::SystemTime::now(),
            host: String::new(),
            routes: core.routes.stored(),
            users: core.students.users.clone(),
            files: Vec::new(),
        }
    }
}
