//! The control API: JSON over a minimal HTTP/1.1 on a Unix socket, and the client the CLI
//! verbs (`srvgate route ...`, `status`, `down`) use.
//!
//! | request                               | does                                          |
//! |---------------------------------------|-----------------------------------------------|
//! | `GET /v1/routes`                      | every route with its counters ([`RoutesReply`]) |
//! | `POST /v1/routes` + [`RouteRequest`]  | adds a runtime route (201 + [`RouteView`])    |
//! | `DELETE /v1/routes/NAME[?service=S]`  | removes NAME's runtime routes ([`Removed`])   |
//! | `POST /v1/routes/NAME/drain` + [`DrainRequest`] | drains or undrains one backend ([`RouteView`]) |
//! | `POST /v1/shutdown` + [`Shutdown`]    | stops the daemon, detaching XDP if asked     |
//! | `GET /v1/users`                       | every account ([`UsersReply`])                |
//! | `POST /v1/users` + [`UserRequest`]    | adds a student, returns its token ([`TokenReply`]) |
//! | `DELETE /v1/users/NAME[?with_routes=true]` | removes an account (and its routes)      |
//! | `POST /v1/users/NAME/token`           | a new token; the old one stops working        |
//! | `GET /v1/backup`                      | the runtime routes and accounts at one moment (`state::backup`'s document, no files) |
//!
//! The students' verbs (`/v1/me...`) are served by `portal` over HTTPS with a token; they
//! call the same [`Control`] methods with the caller's name, so there is one path per
//! operation whoever asks.
//!
//! Errors are `{"error": "...", "field": "port"}` with 400 (invalid input, naming the
//! field), 403 (not root), 404, 409 (clashes with what exists) or 500.
//!
//! Only root may talk to it, checked twice (both in `socket.rs`): the socket lives in a 0700
//! directory with mode 0600, and the server reads the peer's uid from the kernel
//! (`SO_PEERCRED`) and refuses anyone but uid 0, so loosened file modes alone do not open it.
//!
//! Here: the [`Control`] trait (the bodies it takes and returns are `lb_model::api`'s), which
//! the daemon implements:
//! the routes, the users, the students' `me`/`claim`/`release`, and what the console reads
//! (a session's token digest, the gateway's legs and verdicts, traffic, audit lines).
//! `socket.rs` is the server and the blocking client; `request.rs` reads request heads for
//! this socket and the portal alike.

use lb_model::{
    api::{
        ApiError, Caller, ClaimRequest, DrainRequest, GatewayView, MeReply, Removed, RouteRequest,
        RouteView, RoutesReply, Shutdown, TokenReply, TrafficMinute, UserRequest, UserView,
        UsersReply,
    },
    RouteKey,
};

/// Where `srvgate run` listens and the CLI connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/srvgate/control.sock";

mod request;
mod socket;
pub(crate) use request::read_request;
#[cfg(test)]
pub(crate) use request::{parse_head, Head};
pub use socket::*;

/// What the daemon does for the API. Calls may block briefly (map updates, an fsync); the
/// server runs them off the async threads.
pub trait Control: Send + Sync + 'static {
    fn list(&self) -> RoutesReply;
    fn add(&self, request: RouteRequest) -> Result<RouteView, ApiError>;
    /// Removes `name`'s runtime routes, only those of `service` and `protocol` when given.
    fn remove(
        &self,
        name: &str,
        service: Option<&str>,
        protocol: Option<lb_model::Protocol>,
    ) -> Result<Removed, ApiError>;
    /// Drains or undrains one backend of one of `name`'s routes.
    fn drain(&self, name: &str, request: DrainRequest) -> Result<RouteView, ApiError>;
    fn shutdown(&self, request: Shutdown);
    fn users(&self) -> UsersReply;
    fn user_add(&self, request: UserRequest) -> Result<TokenReply, ApiError>;
    fn user_remove(&self, name: &str, with_routes: bool) -> Result<UserView, ApiError>;
    fn user_token(&self, name: &str) -> Result<TokenReply, ApiError>;
    /// The account `token` belongs to; `None` for any token that is not current.
    fn authenticate(&self, token: &str) -> Option<Caller>;
    fn me(&self, caller: &str) -> Result<MeReply, ApiError>;
    /// Adds a route named after `caller`, confined to their backends and quota.
    fn claim(&self, caller: &str, request: ClaimRequest) -> Result<RouteView, ApiError>;
    /// Removes `caller`'s route for `service` (tcp unless `protocol`).
    fn release(
        &self,
        caller: &str,
        service: &str,
        protocol: Option<&str>,
    ) -> Result<Removed, ApiError>;
    /// The account `name` while its current token has the SHA-256 `token_sha256`: a
    /// console session keeps only the digest of the token it was opened with and is
    /// checked again with it on every request.
    fn authenticate_digest(&self, name: &str, token_sha256: &[u8; 32]) -> Option<Caller>;
    /// The legs and verdict counters (for admins).
    fn gateway(&self) -> GatewayView;
    /// The last hour of traffic of each route in `routes`, by minute, oldest first (only
    /// minutes that carried traffic); empty for a route the daemon has no samples of.
    fn traffic(&self, routes: &[RouteKey]) -> Vec<Vec<TrafficMinute>>;
    /// The latest audit log lines (who changed what, from where), oldest first.
    fn recent_audit(&self) -> Vec<String>;
    /// The runtime routes and the accounts, copied at one moment (`srvgate backup`); the
    /// state directory's files are the caller's to add.
    fn backup(&self) -> crate::table::state::backup::Backup;
}

#[cfg(test)]
mod tests;
