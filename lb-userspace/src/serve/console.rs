//! The web console: HTML pages on the portal's listener (every path outside `/v1/`), for
//! students who have a browser and a token, and for the admin.
//!
//! | request                          | does                                                  |
//! |----------------------------------|-------------------------------------------------------|
//! | `GET /`                          | my instances and the claim form, or the login form    |
//! | `POST /login` (token)            | opens a session (cookie) after `Control::authenticate` |
//! | `POST /logout`                   | ends it                                               |
//! | `POST /claim`                    | `Control::claim` (service, backend, protocol)         |
//! | `GET /release?service=&protocol=`| asks to confirm; `POST /release` does it              |
//! | `GET /admin`                     | every route, user, leg, verdict and the audit lines   |
//! | `POST /admin/users[/remove,/token]`, `POST /admin/routes[/remove]` | the admin's changes |
//! | `GET /console.css`               | the one stylesheet, embedded in the binary            |
//!
//! Server-rendered pages and plain forms, no script at all, so the Content-Security-Policy
//! allows nothing but the stylesheet and same-origin forms. Sessions live in memory
//! ([`Sessions`]): a 256-bit random id in a `__Host-` cookie (HttpOnly, Secure,
//! SameSite=Strict, [`SESSION_LIFETIME`]), keyed by the id's SHA-256, at most
//! [`MAX_SESSIONS_PER_ACCOUNT`] per account (a token that logs in again and again ends its own
//! oldest sessions, never another account's); a session keeps the
//! SHA-256 of the token it was opened with, never the token, and is checked again with it
//! on every request ([`Control::authenticate_digest`]), so a rotated token or a removed
//! account ends it at once, as does a restart. Every form carries the session's CSRF token;
//! every POST is also refused when the browser says it came from another site
//! (`Sec-Fetch-Site`), which covers the login form too. Every change goes through
//! [`Control`], the same calls the JSON API makes, and is logged on the audit target.

mod page;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use ring::rand::{SecureRandom as _, SystemRandom};
use subtle::ConstantTimeEq as _;
use tracing::{info, warn};

use crate::{api::Control, logging::AUDIT_TARGET, table::users::token_sha256};
use lb_model::{
    api::{ApiError, Caller, ClaimRequest, RouteRequest, UserRequest},
    Protocol, RouteKey, MAX_TOKEN_LEN,
};

pub use page::esc;
use page::{Flash, Kind};

/// The session cookie. `__Host-`: the browser keeps it only if it is Secure, for `/`, and
/// bound to this host (no Domain), so no sibling host can set or read it.
pub const COOKIE: &str = "__Host-sg_session";
/// How long a session lasts from login, whatever it does.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// How long an unused session lasts.
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Sessions held at once; beyond, the least recently used one of the account holding the
/// most goes.
pub const MAX_SESSIONS: usize = 4096;
/// Sessions one account holds at once; beyond, its own least recently used one goes.
pub const MAX_SESSIONS_PER_ACCOUNT: usize = 16;
/// Fields one form may carry, and the longest value of one.
pub const MAX_FIELDS: usize = 16;
pub const MAX_FIELD: usize = 1024;
/// Routes the admin page lists (with their charts); `srvgate route ls` shows them all.
pub const ADMIN_ROUTES_SHOWN: usize = 500;

const CSS: &str = include_str!("console/console.css");

/// Whether `path` is the console's: everything but the JSON API.
pub fn owns(path: &str) -> bool {
    path != "/v1" && !path.starts_with("/v1/")
}

/// One request as the portal read it (head and body already bounded there).
pub struct WebRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub cookie: Option<&'a str>,
    /// The `Sec-Fetch-Site` header: where the browser says the request came from.
    pub fetch_site: Option<&'a str>,
    pub from: IpAddr,
}

/// A complete answer; the portal adds the framing headers.
#[derive(Debug)]
pub struct WebResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The portal's per-address limit on failed logins, shared with the JSON API's tokens.
pub trait Logins {
    fn blocked(&self, ip: IpAddr) -> bool;
    fn failed(&self, ip: IpAddr);
}

struct Session {
    user: String,
    token_sha256: [u8; 32],
    csrf: String,
    opened: Instant,
    used: Instant,
    /// A message for the next page (after a redirect), shown once.
    flash: Option<Flash>,
}

/// The sessions, in memory only: a restart logs everyone out.
#[derive(Default)]
struct Sessions {
    by_id: HashMap<[u8; 32], Session>,
}

impl Sessions {
    fn live(s: &Session, now: Instant) -> bool {
        now.duration_since(s.opened) < SESSION_LIFETIME && now.duration_since(s.used) < SESSION_IDLE
    }

    /// Keeps `s`, within [`MAX_SESSIONS_PER_ACCOUNT`] and [`MAX_SESSIONS`]: past its own
    /// account's cap, that account's least recently used session ends; at the global cap,
    /// the least recently used one of the account holding the most (its own, if no other
    /// account holds more). So one token, however often it logs in, ends only its own sessions.
    fn insert(&mut self, key: [u8; 32], s: Session, now: Instant) {
        let mine = self.held_by(&s.user);
        if mine >= MAX_SESSIONS_PER_ACCOUNT || self.by_id.len() >= MAX_SESSIONS {
            self.by_id.retain(|_, s| Self::live(s, now));
        }
        if self.held_by(&s.user) >= MAX_SESSIONS_PER_ACCOUNT {
            self.end_least_recent_of(&s.user);
        } else if self.by_id.len() >= MAX_SESSIONS {
            // Per account: how many, and its least recent use (among equals, the account
            // whose idlest session is the oldest gives way).
            let mut held: HashMap<&str, (usize, Instant)> = HashMap::new();
            for x in self.by_id.values() {
                let e = held.entry(x.user.as_str()).or_insert((0, x.used));
                e.0 += 1;
                e.1 = e.1.min(x.used);
            }
            let mine = held.get(s.user.as_str()).map_or(0, |e| e.0);
            let greediest = held
                .into_iter()
                .max_by(|(_, a), (_, b)| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
                // An account holding as many as any other ends its own: equals never take
                // each other's places back and forth.
                .map(|(u, e)| if e.0 > mine { u } else { s.user.as_str() })
                .map(str::to_string);
            if let Some(user) = greediest {
                self.end_least_recent_of(&user);
            }
        }
        self.by_id.insert(key, s);
    }

    fn held_by(&self, user: &str) -> usize {
        self.by_id.values().filter(|x| x.user == user).count()
    }

    fn end_least_recent_of(&mut self, user: &str) {
        if let Some(k) = self
            .by_id
            .iter()
            .filter(|(_, x)| x.user == user)
            .min_by_key(|(_, x)| x.used)
            .map(|(k, _)| *k)
        {
            self.by_id.remove(&k);
        }
    }
}

/// The console: its sessions and randomness; pages are rendered per request.
pub struct Console {
    sessions: Mutex<Sessions>,
    rng: SystemRandom,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            sessions: Mutex::default(),
            rng: SystemRandom::new(),
        }
    }
}

/// Who is asking, once their session checked out.
struct Visitor {
    key: [u8; 32],
    caller: Caller,
    csrf: String,
    flash: Option<Flash>,
}

/// A form body or query string, bounded and decoded by `form_urlencoded`.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(bytes: &[u8]) -> Result<Form, ApiError> {
        let mut fields = Vec::new();
        for (k, v) in form_urlencoded::parse(bytes) {
            if fields.len() >= MAX_FIELDS {
                return Err(ApiError::new(
                    413,
                    format!("more than {MAX_FIELDS} form fields"),
                ));
            }
            if v.len() > MAX_FIELD || k.len() > MAX_FIELD {
                return Err(ApiError::new(
                    413,
                    format!("a form field is longer than {MAX_FIELD} bytes"),
                ));
            }
            fields.push((k.into_owned(), v.into_owned()));
        }
        Ok(Form(fields))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::field(400, name, format!("{name} is required")))
    }
}

/// A form's optional `check` field, in the CLI's `--check` syntax (`http:/healthz`); its
/// values are validated where the request arrives, as the CLI's are.
fn form_check(form: &Form) -> Result<Option<lb_model::check::CheckRequest>, ApiError> {
    let check = form.get("check").map(str::trim).filter(|c| !c.is_empty());
    lb_model::check::CheckRequest::from_flags(&lb_model::check::CheckFlags {
        check,
        ..Default::default()
    })
    .map_err(|e| ApiError::field(400, "check", e))
}

impl Console {
    /// Answers one request. Blocking (it calls `control`): run it off the async threads.
    pub fn answer(
        &self,
        r: &WebRequest,
        control: &dyn Control,
        logins: &dyn Logins,
    ) -> WebResponse {
        if r.method == "GET" && r.path == "/console.css" {
            return WebResponse {
                status: 200,
                headers: vec![
                    ("Content-Type", "text/css; charset=utf-8".into()),
                    ("Cache-Control", "no-cache".into()),
                    ("X-Content-Type-Options", "nosniff".into()),
                ],
                body: CSS.as_bytes().to_vec(),
            };
        }
        if r.method == "POST" && !same_site(r.fetch_site) {
            return html(
                403,
                page::error_page(
                    "Refused",
                    "This form was sent from another site; open the console's own page and try again.",
                ),
            );
        }
        match (r.method, r.path) {
            ("POST", "/login") => return self.login(r, control, logins),
            ("GET", "/") | ("GET", "/release") | ("GET", "/admin") => {}
            ("POST", _) => {}
            _ => {
                return html(
                    if r.method == "GET" { 404 } else { 405 },
                    page::error_page("Not found", &format!("There is no page {} here.", r.path)),
                )
            }
        }
        let visitor = match self.visitor(r.cookie, control) {
            Some(v) => v,
            None if r.method == "GET" && r.path == "/" => {
                let notice = if r.cookie.is_some_and(|c| session_id(c).is_some()) {
                    Some(Flash::new(
                        Kind::Info,
                        "Your session has ended (logged out, expired, or your token was replaced). Log in again.",
                    ))
                } else if query(r.query, "ended").is_some() {
                    Some(Flash::new(
                        Kind::Info,
                        "Your session has ended. Log in again.",
                    ))
                } else {
                    None
                };
                let mut resp = html(200, page::login(notice.as_ref()));
                if r.cookie.is_some_and(|c| session_id(c).is_some()) {
                    resp.headers.push(("Set-Cookie", clear_cookie()));
                }
                return resp;
            }
            None => {
                // Only a session that existed has ended; a visitor without one just logs in.
                return if r.cookie.is_some_and(|c| session_id(c).is_some()) {
                    let mut resp = redirect("/?ended=1");
                    resp.headers.push(("Set-Cookie", clear_cookie()));
                    resp
                } else {
                    redirect("/")
                };
            }
        };
        if r.method == "POST" {
            let form = match Form::parse(r.body) {
                Ok(f) => f,
                Err(e) => return self.fail(&visitor, "/", &e),
            };
            let sent = form.get("csrf").unwrap_or_default();
            if !bool::from(sent.as_bytes().ct_eq(visitor.csrf.as_bytes())) {
                return html(
                    403,
                    page::error_page(
                        "Refused",
                        "This form is out of date (its security token does not match your session). Go back, reload the page and try again.",
                    ),
                );
            }
            return self.change(r, &visitor, &form, control);
        }
        match r.path {
            "/release" => self.confirm_release(r, &visitor, control),
            "/admin" => self.admin(&visitor, control, None),
            _ => self.home(&visitor, control),
        }
    }

    fn login(&self, r: &WebRequest, control: &dyn Control, logins: &dyn Logins) -> WebResponse {
        if logins.blocked(r.from) {
            let msg = format!("Too many failed logins from {}; wait a minute.", r.from);
            return html(429, page::login(Some(&Flash::new(Kind::Error, &msg))));
        }
        let token = Form::parse(r.body)
            .ok()
            .and_then(|f| f.get("token").map(str::to_string))
            .unwrap_or_default();
        let caller = if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            None
        } else {
            control.authenticate(&token)
        };
        let Some(caller) = caller else {
            logins.failed(r.from);
            warn!(target: AUDIT_TARGET, from = %r.from, "console: refused an invalid token");
            let msg = "That token is not valid (check for a missing character, or ask the admin for a new one).";
            return html(401, page::login(Some(&Flash::new(Kind::Error, msg))));
        };
        let (Some(id), Some(csrf)) = (self.random_hex(), self.random_hex()) else {
            return html(
                500,
                page::error_page("Error", "The gateway's random generator failed; try again."),
            );
        };
        let now = Instant::now();
        let session = Session {
            user: caller.name.clone(),
            token_sha256: token_sha256(&token),
            csrf,
            opened: now,
            used: now,
            flash: None,
        };
        lock(&self.sessions).insert(token_sha256(&id), session, now);
        info!(target: AUDIT_TARGET, user = %caller.name, from = %r.from, action = "login", "console");
        let mut resp = redirect("/");
        resp.headers.push((
            "Set-Cookie",
            format!(
                "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_LIFETIME.as_secs()
            ),
        ));
        resp
    }

    /// The session the cookie names, if it is live and its token is still the account's.
    fn visitor(&self, cookie: Option<&str>, control: &dyn Control) -> Option<Visitor> {
        let id = session_id(cookie?)?;
        let key = token_sha256(id);
        let now = Instant::now();
        let (user, digest) = {
            let mut sessions = lock(&self.sessions);
            let s = sessions.by_id.get(&key)?;
            if !Sessions::live(s, now) {
                sessions.by_id.remove(&key);
                return None;
            }
            (s.user.clone(), s.token_sha256)
        };
        // Outside the sessions' lock: this takes the daemon's.
        let caller = control.authenticate_digest(&user, &digest);
        let mut sessions = lock(&self.sessions);
        let Some(caller) = caller else {
            sessions.by_id.remove(&key);
            return None;
        };
        let s = sessions.by_id.get_mut(&key)?;
        s.used = now;
        Some(Visitor {
            key,
            caller,
            csrf: s.csrf.clone(),
            flash: s.flash.take(),
        })
    }

    fn random_hex(&self) -> Option<String> {
        let mut b = [0u8; 32];
        self.rng.fill(&mut b).ok()?;
        Some(hex::encode(b))
    }

    /// Leaves `flash` for the visitor's next page and sends them to `to`.
    fn then(&self, v: &Visitor, to: &str, flash: Flash) -> WebResponse {
        if let Some(s) = lock(&self.sessions).by_id.get_mut(&v.key) {
            s.flash = Some(flash);
        }
        redirect(to)
    }

    fn fail(&self, v: &Visitor, to: &str, e: &ApiError) -> WebResponse {
        self.then(v, to, Flash::new(Kind::Error, &e.reply.error))
    }

    fn home(&self, v: &Visitor, control: &dyn Control) -> WebResponse {
        match control.me(&v.caller.name) {
            Ok(me) => {
                let keys: Vec<RouteKey> = me.routes.iter().filter_map(key_of).collect();
                let traffic = control.traffic(&keys);
                let now = now_unix();
                html(
                    200,
                    page::home(
                        &me,
                        &traffic,
                        v.caller.admin,
                        &v.csrf,
                        v.flash.as_ref(),
                        now,
                    ),
                )
            }
            Err(e) => html(e.status, page::error_page("Error", &e.reply.error)),
        }
    }

    fn confirm_release(&self, r: &WebRequest, v: &Visitor, control: &dyn Control) -> WebResponse {
        let service = query(r.query, "service").unwrap_or_default();
        let protocol =
            query(r.query, "protocol").unwrap_or_else(|| Protocol::DEFAULT.as_str().into());
        let me = match control.me(&v.caller.name) {
            Ok(me) => me,
            Err(e) => return html(e.status, page::error_page("Error", &e.reply.error)),
        };
        match me
            .routes
            .iter()
            .find(|x| x.service == service && x.protocol == protocol)
        {
            Some(route) => html(200, page::confirm_release(route, v.caller.admin, &v.csrf)),
            None => self.then(
                v,
                "/",
                Flash::new(
                    Kind::Error,
                    &format!("You hold no route {}/{service}/{protocol}.", v.caller.name),
                ),
            ),
        }
    }

    fn admin(&self, v: &Visitor, control: &dyn Control, shown: Option<Flash>) -> WebResponse {
        if !v.caller.admin {
            return html(
                403,
                page::error_page(
                    "Admins only",
                    &format!(
                        "{} is a student account; the admin view needs an admin token.",
                        v.caller.name
                    ),
                ),
            );
        }
        let routes = control.list();
        let keys: Vec<RouteKey> = routes
            .routes
            .iter()
            .take(ADMIN_ROUTES_SHOWN)
            .filter_map(key_of)
            .collect();
        let view = page::AdminView {
            user: &v.caller.name,
            routes: &routes,
            users: &control.users(),
            gateway: &control.gateway(),
            traffic: &control.traffic(&keys),
            audit: &control.recent_audit(),
            csrf: &v.csrf,
            flash: shown.as_ref().or(v.flash.as_ref()),
            now_unix: now_unix(),
        };
        html(200, page::admin(&view))
    }

    /// A POST with a valid session and CSRF token.
    fn change(
        &self,
        r: &WebRequest,
        v: &Visitor,
        form: &Form,
        control: &dyn Control,
    ) -> WebResponse {
        let me = v.caller.name.as_str();
        let audit = |action: &str, status: u16| {
            info!(target: AUDIT_TARGET, user = %me, from = %r.from, action = %action, status, "console");
        };
        let admin_only = r.path.starts_with("/admin/");
        if admin_only && !v.caller.admin {
            return html(
                403,
                page::error_page("Admins only", &format!("{me} is a student account.")),
            );
        }
        let back = if admin_only { "/admin" } else { "/" };
        let result: Result<Flash, ApiError> = match r.path {
            "/logout" => {
                lock(&self.sessions).by_id.remove(&v.key);
                audit("logout", 200);
                let mut resp = redirect("/");
                resp.headers.push(("Set-Cookie", clear_cookie()));
                return resp;
            }
            "/claim" => (|| {
                let (backend, backends) =
                    lb_model::backend_fields(lb_model::split_backends(form.required("backend")?));
                let claim = ClaimRequest {
                    proxy_protocol: None,
                    check: form_check(form)?,
                    service: form.required("service")?.to_string(),
                    backend,
                    backends,
                    protocol: form
                        .get("protocol")
                        .filter(|p| !p.is_empty())
                        .map(str::to_string),
                };
                let what = format!(
                    "claim {}/{}",
                    claim.service,
                    claim
                        .protocol
                        .as_deref()
                        .unwrap_or(Protocol::DEFAULT.as_str())
                );
                let result = control.claim(me, claim);
                audit(&what, result.as_ref().map_or_else(|e| e.status, |_| 201));
                let v = result?;
                Ok(Flash::new(
                    Kind::Ok,
                    &format!(
                        "Claimed {}/{}/{}: public port {} -> {}.",
                        v.name,
                        v.service,
                        v.protocol,
                        v.port,
                        v.pool_text()
                    ),
                ))
            })(),
            "/release" => (|| {
                let service = form.required("service")?;
                let protocol = form.get("protocol").filter(|p| !p.is_empty());
                let result = control.release(me, service, protocol);
                let what = format!(
                    "release {service}/{}",
                    protocol.unwrap_or(Protocol::DEFAULT.as_str())
                );
                audit(&what, result.as_ref().map_or_else(|e| e.status, |_| 200));
                let gone = result?;
                let names: Vec<String> = gone
                    .removed
                    .iter()
                    .map(|x| format!("{}/{}/{} (port {})", x.name, x.service, x.protocol, x.port))
                    .collect();
                Ok(Flash::new(
                    Kind::Ok,
                    &format!("Released {}.", names.join(", ")),
                ))
            })(),
            "/admin/users" => {
                let result = (|| {
                    let max_routes = match form.get("max_routes").filter(|m| !m.is_empty()) {
                        Some(m) => Some(m.parse::<u32>().map_err(|_| {
                            ApiError::field(
                                400,
                                "max_routes",
                                format!("max_routes: {m:?} is not a number"),
                            )
                        })?),
                        None => None,
                    };
                    let request = UserRequest {
                        name: form.required("name")?.to_string(),
                        backends: form
                            .get("backends")
                            .unwrap_or_default()
                            .split(|c: char| c == ',' || c.is_whitespace())
                            .filter(|b| !b.is_empty())
                            .map(str::to_string)
                            .collect(),
                        max_routes,
                        admin: form.get("admin") == Some("on"),
                    };
                    let what = format!("user add {}", request.name);
                    let result = control.user_add(request);
                    audit(&what, result.as_ref().map_or_else(|e| e.status, |_| 201));
                    result
                })();
                return match result {
                    // Shown in this answer only, never kept: the session holds no token.
                    Ok(t) => self.admin(
                        v,
                        control,
                        Some(Flash::token(
                            &format!("User {} added. Their token, shown once (give it to them privately):", t.user.name),
                            &t.token,
                        )),
                    ),
                    Err(e) => self.fail(v, back, &e),
                };
            }
            "/admin/users/token" => {
                let result = form.required("name").and_then(|name| {
                    let result = control.user_token(name);
                    audit(
                        &format!("user token {name}"),
                        result.as_ref().map_or_else(|e| e.status, |_| 200),
                    );
                    result
                });
                return match result {
                    Ok(t) => self.admin(
                        v,
                        control,
                        Some(Flash::token(
                            &format!(
                                "A new token for {}; the old one no longer works. Shown once:",
                                t.user.name
                            ),
                            &t.token,
                        )),
                    ),
                    Err(e) => self.fail(v, back, &e),
                };
            }
            "/admin/users/remove" => (|| {
                let name = form.required("name")?;
                let with_routes = form.get("with_routes") == Some("on");
                let result = control.user_remove(name, with_routes);
                audit(
                    &format!("user rm {name}"),
                    result.as_ref().map_or_else(|e| e.status, |_| 200),
                );
                result?;
                Ok(Flash::new(Kind::Ok, &format!("User {name} removed.")))
            })(),
            "/admin/routes" => (|| {
                let port = match form.get("port").filter(|p| !p.is_empty()) {
                    Some(p) => Some(p.parse::<u16>().map_err(|_| {
                        ApiError::field(400, "port", format!("port: {p:?} is not a port number"))
                    })?),
                    None => None,
                };
                let (backend, backends) =
                    lb_model::backend_fields(lb_model::split_backends(form.required("backend")?));
                let request = RouteRequest {
                    proxy_protocol: None,
                    check: form_check(form)?,
                    name: form.required("name")?.to_string(),
                    service: form.required("service")?.to_string(),
                    protocol: form
                        .get("protocol")
                        .filter(|p| !p.is_empty())
                        .map(str::to_string),
                    backend,
                    backends,
                    port,
                };
                let what = format!("route add {}/{}", request.name, request.service);
                let result = control.add(request);
                audit(&what, result.as_ref().map_or_else(|e| e.status, |_| 201));
                let v = result?;
                Ok(Flash::new(
                    Kind::Ok,
                    &format!(
                        "Added {}/{}/{}: port {} -> {}.",
                        v.name,
                        v.service,
                        v.protocol,
                        v.port,
                        v.pool_text()
                    ),
                ))
            })(),
            "/admin/routes/remove" => (|| {
                let name = form.required("name")?;
                let service = form.required("service")?;
                let result = control.remove(name, Some(service), None);
                audit(
                    &format!("route rm {name}/{service}"),
                    result.as_ref().map_or_else(|e| e.status, |_| 200),
                );
                let gone = result?;
                Ok(Flash::new(
                    Kind::Ok,
                    &format!(
                        "Removed {} route(s) of {name}/{service}.",
                        gone.removed.len()
                    ),
                ))
            })(),
            _ => {
                return html(
                    404,
                    page::error_page("Not found", &format!("There is no form {} here.", r.path)),
                )
            }
        };
        match result {
            Ok(flash) => self.then(v, back, flash),
            Err(e) => self.fail(v, back, &e),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key_of(v: &lb_model::api::RouteView) -> Option<RouteKey> {
    Some(RouteKey {
        name: v.name.clone(),
        service: v.service.clone(),
        protocol: v.protocol.parse::<Protocol>().ok()?,
    })
}

/// Whether a POST may be acted on: browsers that send `Sec-Fetch-Site` say where the form
/// was; one without the header (an old browser, a script) still needs the CSRF token.
fn same_site(fetch_site: Option<&str>) -> bool {
    matches!(fetch_site, None | Some("same-origin") | Some("none"))
}

/// The session id in a `Cookie` header: 64 hex digits, else none.
fn session_id(cookie: &str) -> Option<&str> {
    cookie
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn query(q: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(q?.as_bytes())
        .take(MAX_FIELDS)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.chars().take(MAX_FIELD).collect())
}

fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The console's security headers: nothing runs, nothing loads but our stylesheet, no
/// other site may frame us or receive our forms.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn html(status: u16, body: String) -> WebResponse {
    WebResponse {
        status,
        headers: vec![
            ("Content-Type", "text/html; charset=utf-8".into()),
            ("Content-Security-Policy", CSP.into()),
            ("X-Content-Type-Options", "nosniff".into()),
            ("X-Frame-Options", "DENY".into()),
            ("Referrer-Policy", "no-referrer".into()),
            ("Cache-Control", "no-store".into()),
        ],
        body: body.into_bytes(),
    }
}

/// 303: after a form, the browser GETs `to` (reloading it never re-sends the form).
fn redirect(to: &str) -> WebResponse {
    let mut r = html(303, String::new());
    r.headers.push(("Location", to.to_string()));
    r
}

#[cfg(test)]
mod tests;
