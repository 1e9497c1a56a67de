//! The control API's and the portal's wire types: the JSON bodies of requests and replies,
//! the same for the gateway that serves them and the clients that send them. The
//! requests and their paths are listed in lb-userspace's `api` module.

use serde::{Deserialize, Serialize};

pub use crate::route::RouteRequest;
pub use crate::users::UserView;

/// One route as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub name: String,
    pub service: String,
    pub protocol: String,
    /// Public port on `public_ipv4`.
    pub port: u16,
    /// Where a new flow goes first (the first active member): what a client that knows
    /// one backend per route shows.
    pub backend: String,
    /// Every member of the route's pool, in order.
    #[serde(default)]
    pub backends: Vec<BackendView>,
    /// Every undrained member is down, so all of them take flows (fail open).
    #[serde(default)]
    pub fail_open: bool,
    /// `"config"` or `"runtime"`.
    pub source: String,
    /// When the route was added (or, for config routes, loaded), Unix seconds.
    pub added_unix: u64,
    /// The last packet forwarded either way, Unix seconds; absent if none yet.
    pub last_seen_unix: Option<u64>,
    /// Seconds since the last packet, else since the route was added.
    pub idle_seconds: u64,
    /// Seconds until the route is reclaimed, for runtime routes when reclaiming is on.
    pub reclaim_in_seconds: Option<u64>,
    pub inbound_packets: u64,
    pub outbound_packets: u64,
    pub inbound_bytes: u64,
    pub outbound_bytes: u64,
    /// `"v1"` or `"v2"` when the web routers send this route's backend a PROXY header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// The health check its members get, in haproxy's words (`CheckSpec`'s text); absent
    /// when nothing is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl RouteView {
    /// The route's backends for a person: each member's [`BackendView::label`], and a pool
    /// in fail-open said loudly. A daemon before pools sends only `backend`.
    pub fn pool_text(&self) -> String {
        if self.backends.is_empty() {
            return self.backend.clone();
        }
        let members: Vec<String> = self.backends.iter().map(BackendView::label).collect();
        let mut text = members.join(", ");
        if self.fail_open {
            text.push_str(" (FAIL-OPEN: every backend is down, all take flows)");
        }
        text
    }
}

/// `POST /v1/routes/NAME/drain`: one member of one of NAME's routes gets no new flows
/// (`drained: true`) or gets them again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The route's service, when NAME has several routes.
    #[serde(default)]
    pub service: Option<String>,
    /// `"tcp"` or `"udp"`, when the backend serves both.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The member, `ADDR:PORT`.
    pub backend: String,
    pub drained: bool,
}

/// One member of a route's pool as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    /// `ADDR:PORT`.
    pub addr: String,
    pub weight: u16,
    pub drained: bool,
    /// What the health checks last said (up until they say otherwise).
    pub up: bool,
    /// When `up` last changed, Unix seconds; absent before the first change (or when not
    /// checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_unix: Option<u64>,
    /// The last check's result (`HTTP 200 OK`, `connect: Connection refused`); absent
    /// before the first check (or when not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
}

impl BackendView {
    /// `ADDR:PORT`, with what is not the default said after it: `weight=2`, `drained`,
    /// `DOWN`.
    pub fn label(&self) -> String {
        let mut s = self.addr.clone();
        if self.weight != 1 {
            s.push_str(&format!(" weight={}", self.weight));
        }
        if self.drained {
            s.push_str(" drained");
        }
        if !self.up {
            s.push_str(" DOWN");
        }
        s
    }
}

/// `GET /v1/routes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesReply {
    pub public_ipv4: String,
    pub port_range: String,
    /// Ports of the range no route uses in either protocol.
    pub free_ports: u32,
    /// As in the config (`"14d"`), absent when reclaiming is off.
    pub reclaim_after: Option<String>,
    /// The students' HTTPS API and its certificate's fingerprint, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<PortalInfo>,
    /// The shared table, when the gateway runs with `[cluster]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
    pub routes: Vec<RouteView>,
}

/// What `srvgate status` shows of `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// This gateway's `gateway_id`.
    pub gateway_id: String,
    /// The gateways that announce themselves in the store now (this one included when
    /// connected), by `gateway_id`.
    pub members: Vec<String>,
    /// The gateway that reclaims idle routes for the cluster (`None`: none known now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    pub endpoints: Vec<String>,
    /// Whether the watch on the shared table is running.
    pub connected: bool,
    /// The store's revision the table is at.
    pub revision: i64,
    /// When the table was last loaded whole from the store (start, reconnection,
    /// compaction).
    pub last_sync_unix: Option<u64>,
    /// Why the store is not connected, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `srvgate status` shows of the portal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalInfo {
    pub listen: Vec<String>,
    /// SHA-256 of the certificate, `AB:CD:...`.
    pub fingerprint: String,
    /// The gateway made the certificate itself (no `[portal] cert`): students must pin the
    /// fingerprint, which they get from the admin.
    #[serde(default)]
    pub self_signed: bool,
}

/// `DELETE /v1/routes/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: Vec<RouteView>,
}

/// `POST /v1/shutdown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    /// Detach XDP and remove the pinned objects, as `--detach-on-exit` would.
    pub detach: bool,
}

/// `POST /v1/users`: a new account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub name: String,
    /// Backend rules: `10.0.0.11`, `10.0.0.11:22`, `10.0.1.0/28`, `10.0.1.0/28:22`.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Routes the student may hold; `users::DEFAULT_MAX_ROUTES` if absent.
    #[serde(default)]
    pub max_routes: Option<u32>,
    #[serde(default)]
    pub admin: bool,
}

/// An account and the token just issued for it (shown once, never stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReply {
    pub user: UserView,
    pub token: String,
    /// What the student needs besides the token (`text::onboarding`); absent from a
    /// gateway without a portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboarding: Option<Onboarding>,
}

/// Where the portal and the console offer the students' client for download (an index
/// with each file's SHA-256, then `/clients/FILE`).
pub const CLIENTS_PATH: &str = "/clients/";

/// Where a student logs in, as `srvgate user add` tells them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onboarding {
    /// `https://HOST:PORT` of the portal, as reached from outside.
    pub portal_url: String,
    /// The certificate's SHA-256, while it is self-signed (then `login` must pin it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The DNS zone the student's routes are named in, if the gateway serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersReply {
    pub users: Vec<UserView>,
}

/// A student's claim: the name is theirs, the port comes from the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub service: String,
    /// One backend; or, instead, a pool in `backends`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// A pool: each `ADDR:PORT[ weight=N]`, every one the student's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// `"tcp"` (the default) or `"udp"`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `"v1"` or `"v2"`: the web routers send a PROXY protocol header first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// How the pool's members are checked (`check::CheckRequest`), within
    /// `CheckSpec::student_limits`; left out: the protocol's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::check::CheckRequest>,
}

/// `GET /v1/me`: who the token belongs to, and where their routes are reachable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeReply {
    pub user: UserView,
    pub public_ipv4: String,
    /// The DNS zone, when the gateway serves one.
    #[serde(default)]
    pub zone: Option<String>,
    /// `[http] service`, when the gateway runs the HTTP router: the routes with this label
    /// are reachable as `http://NAME.<service>.<zone>/`.
    #[serde(default)]
    pub http_service: Option<String>,
    pub routes: Vec<RouteView>,
}

/// The account a token authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
}

/// One interface the XDP program is attached to, as the console's admin view shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegView {
    pub name: String,
    /// `public` or `private`.
    pub role: String,
    /// `redirect` or `pass`: how rewritten frames leave through it.
    pub egress: String,
}

/// The data plane at a glance: its legs and every verdict the program counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayView {
    pub legs: Vec<LegView>,
    /// Each XDP verdict's name and count, in the program's order.
    pub verdicts: Vec<(String, u64)>,
}

/// The bytes one route forwarded during one minute (the console's traffic chart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficMinute {
    /// The minute's start, Unix seconds (a multiple of 60).
    pub minute_unix: u64,
    pub inbound_bytes: u64,
    pub outbound_bytes: u64,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A refused or failed operation, as the server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub reply: ErrorReply,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        ApiError {
            status,
            reply: ErrorReply {
                error: error.into(),
                field: None,
            },
        }
    }
    pub fn field(status: u16, field: impl Into<String>, error: impl Into<String>) -> Self {
        ApiError {
            status,
            reply: ErrorReply {
                error: error.into(),
                field: Some(field.into()),
            },
        }
    }
}
