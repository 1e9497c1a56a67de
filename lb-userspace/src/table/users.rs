//! Students and what they may do: accounts, their login tokens, the backends their routes
//! may point at, their quotas, and the ports that are cooling down after a release.
//!
//! The rules live here and only here: a student holds only routes named after them
//! ([`check_claim`]), pointing at one of their [`BackendRule`]s, at most `max_routes` of
//! them; a token is `sg_<name>_<64 hex digits>` (256 random bits), of which only the
//! SHA-256 is kept, compared in constant time ([`Users::authenticate`]).
//!
//! Everything is pure: the daemon persists a [`Users`] through `accounts` and applies it.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    time::{Duration, SystemTime},
};

use lb_model::{check_label, BackendRule, RouteDraft, UserView, MAX_TOKEN_LEN};

/// Routes a student may hold unless `--max-routes` says otherwise.
pub const DEFAULT_MAX_ROUTES: u32 = 4;
/// The largest quota an account may be given.
pub const MAX_ROUTES_PER_USER: u32 = 1000;
/// A token's random part, in bytes (hex-encoded in the token: twice as many digits).
const SECRET_BYTES: usize = 32;
/// Which config-owned accounts applying a config file's `[[user]]`s removes.
///
/// Gateways sharing their accounts (`[cluster]`) each apply their own file to the same
/// accounts, and their files may differ (a rolling reload, or on purpose). A gateway then
/// removes only what its own file dropped: an account another gateway's file declares is
/// not its to remove, and removing it would drop the token issued for it (re-added by
/// that gateway, it would come back without one).
#[derive(Clone, Copy, Debug)]
pub enum ConfigRemoval<'a> {
    /// Alone: every config-owned account the file does not declare.
    Undeclared,
    /// With other gateways: only those that `previous` (this gateway's last file)
    /// declared and the new file does not; `&[]` removes none.
    DroppedFrom(&'a [lb_model::ConfigUser]),
}

/// One account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub backends: Vec<BackendRule>,
    pub max_routes: u32,
    /// May act on every route and user (the remote equivalent of root on the gateway).
    pub admin: bool,
    /// SHA-256 of the current token; `None` until one is issued.
    pub token_sha256: Option<[u8; 32]>,
    pub created: SystemTime,
    /// Declared by a `[[user]]` of the config file, which owns its fields.
    pub from_config: bool,
}

impl User {
    pub fn allows_backend(&self, backend: SocketAddrV4) -> bool {
        self.backends.iter().any(|r| r.allows(backend))
    }
}

/// A refused action, with the field it concerns and the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    #[error("routes of {user} are named {user}; {name} is not yours")]
    NotYourName { user: String, name: String },
    #[error(
        "backend {backend} is not yours: {user} may use {}",
        list_rules(allowed)
    )]
    NotYourBackend {
        user: String,
        backend: SocketAddrV4,
        allowed: Vec<BackendRule>,
    },
    #[error("quota reached: {user} holds {used} of {max} routes; release one first (srvgate release SERVICE)")]
    Quota { user: String, used: usize, max: u32 },
    #[error("no route {key} of {user}")]
    NoSuchRoute { user: String, key: String },
    /// The account was removed (through another gateway, which this one had not heard of).
    #[error("there is no account {user} any more (removed through another gateway)")]
    NoAccount { user: String },
}

fn list_rules(rules: &[BackendRule]) -> String {
    if rules.is_empty() {
        return "no backend at all (ask the admin to add one)".into();
    }
    rules
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Denied {
    pub fn field(&self) -> &'static str {
        match self {
            Denied::NotYourName { .. } => "name",
            Denied::NotYourBackend { .. } => "backend",
            Denied::Quota { .. } => "quota",
            Denied::NoSuchRoute { .. } => "service",
            Denied::NoAccount { .. } => "name",
        }
    }
    pub fn status(&self) -> u16 {
        match self {
            Denied::NoSuchRoute { .. } => 404,
            _ => 403,
        }
    }
}

/// Whether `user` may add `draft`, given that they hold `held` routes now: their name, every
/// member of the pool their own (one foreign member refuses the whole claim), within their
/// quota. Admins may add anything; the table's own rules (uniqueness, the port range) still apply after this.
pub fn check_claim(user: &User, draft: &RouteDraft, held: usize) -> Result<(), Denied> {
    if user.admin {
        return Ok(());
    }
    if draft.name != user.name {
        return Err(Denied::NotYourName {
            user: user.name.clone(),
            name: draft.name.clone(),
        });
    }
    if let Some(backend) = draft.backends.addrs().find(|b| !user.allows_backend(*b)) {
        return Err(Denied::NotYourBackend {
            user: user.name.clone(),
            backend,
            allowed: user.backends.clone(),
        });
    }
    if held >= user.max_routes as usize {
        return Err(Denied::Quota {
            user: user.name.clone(),
            used: held,
            max: user.max_routes,
        });
    }
    Ok(())
}

/// Why a presented token was not accepted. Deliberately one message for every case, so a
/// caller cannot tell a wrong name from a wrong secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid or missing token")]
pub struct BadToken;

/// A new token for `name` and its SHA-256.
pub fn new_token(name: &str) -> Result<(String, [u8; 32]), ring::error::Unspecified> {
    use ring::rand::SecureRandom as _;
    let mut secret = [0u8; SECRET_BYTES];
    ring::rand::SystemRandom::new().fill(&mut secret)?;
    let token = format!("sg_{name}_{}", hex::encode(secret));
    let hash = token_sha256(&token);
    Ok((token, hash))
}

pub fn token_sha256(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The user name a token claims to be for (`sg_<name>_<secret>`), if it has that shape.
pub fn token_user(token: &str) -> Option<&str> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let rest = token.strip_prefix("sg_")?;
    let (name, secret) = rest.rsplit_once('_')?;
    (secret.len() == SECRET_BYTES * 2 && check_label(name).is_ok()).then_some(name)
}

/// Every account and the ports cooling down after a release.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    by_name: BTreeMap<String, User>,
    /// Port -> when it may be handed out again.
    cooldown: BTreeMap<u16, SystemTime>,
}

/// A problem with an account operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    #[error("name: {0}")]
    Name(String),
    #[error("name: user {0} already exists")]
    Exists(String),
    #[error("name: no user named {0}")]
    NoSuchUser(String),
    #[error("max_routes: {0} is more than 1000 routes for one student")]
    Quota(u32),
    #[error("token: the system's random generator failed")]
    Random,
}

impl UserError {
    pub fn status(&self) -> u16 {
        match self {
            UserError::Name(_) | UserError::Quota(_) => 400,
            UserError::Exists(_) => 409,
            UserError::NoSuchUser(_) => 404,
            UserError::Random => 500,
        }
    }
}

impl Users {
    pub fn new(users: Vec<User>, cooldown: BTreeMap<u16, SystemTime>) -> Self {
        Users {
            by_name: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            cooldown,
        }
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &User> {
        self.by_name.values()
    }

    pub fn cooldown(&self) -> &BTreeMap<u16, SystemTime> {
        &self.cooldown
    }

    /// Adds an account and returns its first token.
    pub fn add(
        &mut self,
        name: &str,
        backends: Vec<BackendRule>,
        max_routes: u32,
        admin: bool,
        now: SystemTime,
    ) -> Result<String, UserError> {
        check_label(name).map_err(UserError::Name)?;
        if self.by_name.contains_key(name) {
            return Err(UserError::Exists(name.to_string()));
        }
        if max_routes > MAX_ROUTES_PER_USER {
            return Err(UserError::Quota(max_routes));
        }
        let (token, hash) = new_token(name).map_err(|_| UserError::Random)?;
        self.by_name.insert(
            name.to_string(),
            User {
                name: name.to_string(),
                backends,
                max_routes,
                admin,
                token_sha256: Some(hash),
                created: now,
                from_config: false,
            },
        );
        Ok(token)
    }

    pub fn remove(&mut self, name: &str) -> Result<User, UserError> {
        self.by_name
            .remove(name)
            .ok_or_else(|| UserError::NoSuchUser(name.to_string()))
    }

    /// Makes the config file's `[[user]]`s config-owned accounts: new ones are added
    /// (without a token until one is issued), existing ones take the file's fields and
    /// keep their token (a token is never dropped here), and the config-owned accounts
    /// `removal` names are removed. Returns the names added, changed and removed.
    pub fn apply_config(
        &mut self,
        declared: &[lb_model::ConfigUser],
        removal: ConfigRemoval<'_>,
        now: SystemTime,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for c in declared {
            match self.by_name.get_mut(&c.name) {
                Some(u) => {
                    let before = u.clone();
                    u.backends = c.backends.clone();
                    u.max_routes = c.max_routes;
                    u.admin = c.admin;
                    u.from_config = true;
                    if *u != before {
                        changed.push(c.name.clone());
                    }
                }
                None => {
                    self.by_name.insert(
                        c.name.clone(),
                        User {
                            name: c.name.clone(),
                            backends: c.backends.clone(),
                            max_routes: c.max_routes,
                            admin: c.admin,
                            token_sha256: None,
                            created: now,
                            from_config: true,
                        },
                    );
                    added.push(c.name.clone());
                }
            }
        }
        let declares =
            |list: &[lb_model::ConfigUser], name: &str| list.iter().any(|c| c.name == name);
        self.by_name.retain(|name, u| {
            let dropped = match removal {
                ConfigRemoval::Undeclared => !declares(declared, name),
                ConfigRemoval::DroppedFrom(previous) => {
                    declares(previous, name) && !declares(declared, name)
                }
            };
            let keep = !u.from_config || !dropped;
            if !keep {
                removed.push(name.clone());
            }
            keep
        });
        (added, changed, removed)
    }

    /// A new token for `name`; the old one stops working at once.
    pub fn rotate(&mut self, name: &str) -> Result<String, UserError> {
        let user = self
            .by_name
            .get_mut(name)
            .ok_or_else(|| UserError::NoSuchUser(name.to_string()))?;
        let (token, hash) = new_token(name).map_err(|_| UserError::Random)?;
        user.token_sha256 = Some(hash);
        Ok(token)
    }

    /// The account a presented token belongs to.
    pub fn authenticate(&self, token: &str) -> Result<&User, BadToken> {
        let name = token_user(token).ok_or(BadToken)?;
        self.authenticate_digest(name, &token_sha256(token))
    }

    /// The account `name` if its current token has the SHA-256 `digest`: how a console
    /// session, which keeps the digest and never the token, is checked again on every
    /// request, so a rotated token or a removed account ends its sessions at once.
    pub fn authenticate_digest(&self, name: &str, digest: &[u8; 32]) -> Result<&User, BadToken> {
        let user = self.by_name.get(name).ok_or(BadToken)?;
        let stored = user.token_sha256.ok_or(BadToken)?;
        // Comparing digests already hides the secret; constant time hides the prefix too.
        use subtle::ConstantTimeEq as _;
        if bool::from(digest.ct_eq(&stored)) {
            Ok(user)
        } else {
            Err(BadToken)
        }
    }

    /// Keeps `port` out of allocation until `now + cooldown`.
    pub fn cool(&mut self, port: u16, now: SystemTime, cooldown: Duration) {
        if cooldown.is_zero() {
            return;
        }
        let until = now + cooldown;
        let e = self.cooldown.entry(port).or_insert(until);
        *e = (*e).max(until);
    }

    pub fn is_cooling(&self, port: u16, now: SystemTime) -> bool {
        self.cooldown.get(&port).is_some_and(|until| *until > now)
    }

    /// Forgets cool-downs that have ended; true if any did.
    pub fn expire_cooldowns(&mut self, now: SystemTime) -> bool {
        let before = self.cooldown.len();
        self.cooldown.retain(|_, until| *until > now);
        self.cooldown.len() != before
    }
}

/// How the API shows `u`, who holds `routes` routes (the token only as whether one was
/// issued).
pub fn user_view(u: &User, routes: usize) -> UserView {
    UserView {
        name: u.name.clone(),
        backends: u.backends.iter().map(ToString::to_string).collect(),
        max_routes: u.max_routes,
        admin: u.admin,
        routes,
        from_config: u.from_config,
        has_token: u.token_sha256.is_some(),
    }
}

#[cfg(test)]
mod tests;
