//! The students' and their accounts' operations: users added, removed and given tokens by
//! an admin; `me`, `claim` and `release` by a student, each checked by `users::check_claim`
//! and then carried out by the same route operation root's calls take.

use std::time::SystemTime;

use tracing::{error, info, warn};

use crate::table::{
    routes::{Entry, Source},
    users::{Denied, User, UserError, Users, DEFAULT_MAX_ROUTES},
};
use lb_model::{
    api::{
        ApiError, ClaimRequest, MeReply, Onboarding, PortalInfo, Removed, RouteView, TokenReply,
        UserRequest, UsersReply,
    },
    parse_rules, RouteRequest, UserView,
};

use super::{Core, Students};

impl Core {
    /// Starts the cool-down of the ports `gone` held that no remaining route uses, and
    /// records it (a failure only shortens a cool-down, so it is logged, not fatal).
    pub(super) fn cool_ports(&mut self, gone: &[Entry], now: SystemTime) {
        let cooldown = self.settings.gateway.port_cooldown;
        if cooldown.is_zero() || gone.is_empty() {
            return;
        }
        for e in gone {
            let p = e.route.port;
            if !self.routes.table.port_in_use(p, lb_model::Protocol::Tcp)
                && !self.routes.table.port_in_use(p, lb_model::Protocol::Udp)
            {
                self.students.users.cool(p, now, cooldown);
            }
        }
        if let Err(e) = self.routes.store.save_accounts(&self.students.users) {
            warn!("recording the released ports' cool-down: {e}");
        }
    }

    pub(super) fn held_by(&self, name: &str) -> usize {
        self.routes.table.named(name).count()
    }

    pub(super) fn user_view(&self, u: &User) -> UserView {
        crate::table::users::user_view(u, self.held_by(&u.name))
    }

    pub(super) fn users_reply(&self) -> UsersReply {
        UsersReply {
            users: self
                .students
                .users
                .all()
                .map(|u| self.user_view(u))
                .collect(),
        }
    }

    pub(super) fn user_add(&mut self, r: UserRequest) -> Result<TokenReply, ApiError> {
        let backends = parse_rules(&r.backends).map_err(|e| ApiError::field(400, "backends", e))?;
        let max = r.max_routes.unwrap_or(DEFAULT_MAX_ROUTES);
        let now = self.clock.now();
        let token = self
            .students
            .users
            .add(&r.name, backends, max, r.admin, now)
            .map_err(user_error)?;
        if let Err(e) = self.routes.store.save_accounts(&self.students.users) {
            let _ = self.students.users.remove(&r.name);
            error!(user = %r.name, "user add: {e}");
            return Err(ApiError::new(e.status(), format!("not added: {e}")));
        }
        let u = self.students.user(&r.name)?;
        info!(user = %u.name, admin = u.admin, max_routes = u.max_routes, backends = %r.backends.join(","), "user added");
        Ok(TokenReply {
            user: self.user_view(&u),
            token,
            onboarding: self.onboarding(),
        })
    }

    pub(super) fn user_remove(
        &mut self,
        name: &str,
        with_routes: bool,
    ) -> Result<UserView, ApiError> {
        let u = self.students.user(name)?;
        // A config-owned account this gateway's file does not declare (another gateway's,
        // or left by a file this gateway was restarted without) may be removed here.
        if u.from_config && self.students.config_users.iter().any(|c| c.name == name) {
            return Err(ApiError::field(
                409,
                "name",
                format!("{name} is a [[user]] of the config file: remove it there and send SIGHUP"),
            ));
        }
        let held: Vec<Entry> = self.routes.table.named(name).cloned().collect();
        if !held.is_empty() && !with_routes {
            let keys: Vec<String> = held.iter().map(|e| e.route.key().to_string()).collect();
            return Err(ApiError::field(
                409,
                "name",
                format!(
                    "{name} still holds {}: release them first, or remove the user --with-routes",
                    keys.join(", ")
                ),
            ));
        }
        let view = self.user_view(&u);
        let runtime: Vec<Entry> = held
            .into_iter()
            .filter(|e| e.source == Source::Runtime)
            .collect();
        if !runtime.is_empty() {
            self.remove_entries(&format!("routes of user {name}"), &runtime)?;
            // The deletions must be durable before the account's removal is: a crash in
            // between would otherwise bring the routes back without their account. So this
            // one change flushes under the lock (one fsync; user rm is rare).
            for commit in std::mem::take(&mut self.routes.unflushed) {
                if let Err(e) = commit.wait() {
                    error!(user = %name, "user rm: {e}");
                    return Err(ApiError::new(
                        500,
                        format!("the routes are removed but may come back after a crash, so the account is kept: {e}"),
                    ));
                }
            }
        }
        let gone = self.students.users.remove(name).map_err(user_error)?;
        if let Err(e) = self.routes.store.save_accounts(&self.students.users) {
            self.students.users = Users::new(
                self.students
                    .users
                    .all()
                    .cloned()
                    .chain(std::iter::once(gone))
                    .collect(),
                self.students.users.cooldown().clone(),
            );
            error!(user = %name, "user rm: {e}");
            return Err(ApiError::new(e.status(), format!("not removed: {e}")));
        }
        info!(user = %name, "user removed");
        Ok(view)
    }

    /// Where a new token is used: the portal (if any), as `user add` tells the student.
    fn onboarding(&self) -> Option<Onboarding> {
        let portal = self.settings.portal.as_ref()?;
        Some(Onboarding {
            portal_url: portal_url(portal, self.settings.gateway.public_ipv4)?,
            fingerprint: portal.self_signed.then(|| portal.fingerprint.clone()),
            zone: self.settings.zone.clone(),
        })
    }

    pub(super) fn user_token(&mut self, name: &str) -> Result<TokenReply, ApiError> {
        let before = self.students.users.clone();
        let token = self.students.users.rotate(name).map_err(user_error)?;
        if let Err(e) = self.routes.store.save_accounts(&self.students.users) {
            self.students.users = before;
            error!(user = %name, "user token: {e}");
            return Err(ApiError::new(e.status(), format!("no new token: {e}")));
        }
        let u = self.students.user(name)?;
        info!(user = %name, "new token issued; the old one no longer works");
        Ok(TokenReply {
            user: self.user_view(&u),
            token,
            onboarding: self.onboarding(),
        })
    }

    pub(super) fn me(&mut self, caller: &str) -> Result<MeReply, ApiError> {
        let u = self.students.user(caller)?;
        self.observe_activity_of(caller);
        let now = self.clock.now();
        Ok(MeReply {
            user: self.user_view(&u),
            public_ipv4: self.settings.gateway.public_ipv4.to_string(),
            zone: self.settings.zone.clone(),
            http_service: self.settings.http_service.clone(),
            routes: self
                .routes
                .table
                .named(caller)
                .map(|e| self.view(e, now))
                .collect(),
        })
    }

    pub(super) fn claim(&mut self, caller: &str, r: ClaimRequest) -> Result<RouteView, ApiError> {
        let u = self.students.user(caller)?;
        // The gateway probes on the student's behalf: her check keeps the students' bound
        // (an invalid one is refused by `check_route` below, naming its field).
        if let Some(Ok(spec)) = r.check.as_ref().map(|c| c.check(&|f| format!("check.{f}"))) {
            if !u.admin {
                spec.student_limits()
                    .map_err(|e| ApiError::field(400, e.field, e.reason))?;
            }
        }
        let request = RouteRequest {
            name: u.name.clone(),
            service: r.service,
            protocol: r.protocol,
            backend: r.backend,
            backends: r.backends,
            port: None,
            proxy_protocol: r.proxy_protocol,
            check: r.check,
        };
        self.add_as(request, Some(&u))
    }

    pub(super) fn release(
        &mut self,
        caller: &str,
        service: &str,
        protocol: Option<&str>,
    ) -> Result<Removed, ApiError> {
        let protocol = lb_model::Protocol::parse_or_default(protocol)
            .map_err(|e| ApiError::field(400, "protocol", e))?;
        let key = lb_model::RouteKey {
            name: caller.to_string(),
            service: service.to_string(),
            protocol,
        };
        let Some(e) = self.routes.table.get(&key).cloned() else {
            return Err(denied(Denied::NoSuchRoute {
                user: caller.to_string(),
                key: key.to_string(),
            }));
        };
        if e.source == Source::Config {
            return Err(ApiError::field(
                403,
                "service",
                format!("{key} is set in the gateway's config file; ask the admin to remove it"),
            ));
        }
        self.remove_entries(&key.to_string(), &[e])
    }
}

impl Students {
    pub(super) fn user(&self, name: &str) -> Result<User, ApiError> {
        self.users
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::field(404, "name", format!("no user named {name}")))
    }
}

pub(super) fn denied(d: Denied) -> ApiError {
    ApiError::field(d.status(), d.field(), d.to_string())
}

pub(super) fn user_error(e: UserError) -> ApiError {
    let field = match e {
        UserError::Quota(_) => "max_routes",
        UserError::Random => "token",
        _ => "name",
    };
    let msg = e.to_string();
    let msg = msg
        .split_once(": ")
        .map_or(msg.clone(), |(_, m)| m.to_string());
    ApiError::field(e.status(), field, msg)
}

/// The portal's URL as students reach it: its first listen address, or the public address
/// where it listens on every address.
pub(super) fn portal_url(portal: &PortalInfo, public: std::net::Ipv4Addr) -> Option<String> {
    let addr: std::net::SocketAddr = portal.listen.first()?.parse().ok()?;
    let host = if addr.ip().is_unspecified() {
        std::net::IpAddr::V4(public)
    } else {
        addr.ip()
    };
    Some(match host {
        std::net::IpAddr::V4(v4) => format!("https://{v4}:{}", addr.port()),
        std::net::IpAddr::V6(v6) => format!("https://[{v6}]:{}", addr.port()),
    })
}
