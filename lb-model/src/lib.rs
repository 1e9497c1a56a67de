//! The bottom layer of srvgate: plain data and pure rules that the gateway (lb-userspace) and
//! the students' client (lb-client) share. Nothing here touches the machine or the network.
//!
//! - [`route`]: a route and its parts (`Route`, `RouteKey`, `Protocol`, `PortRange`,
//!   `ProxyProtocol`), the one check of a route's own fields (`check_route`) and of the
//!   labels and domains it is made of, and the duration syntax of the config and the CLI.
//! - [`pool`]: a route's pool of backends (`Pool`, `Member`), the one owner of its rules.
//! - [`check`]: a backend's health check (`CheckSpec`, its TOML/JSON form `CheckRequest`,
//!   haproxy's defaults) and the sub-second durations it is written in.
//! - [`users`]: the students' rules as data (`BackendRule`, a declared `ConfigUser`,
//!   `UserView`) and the certificate fingerprint.
//! - [`api`]: the JSON bodies of the control API and the portal.
//! - [`text`]: what both the CLI and the console print: the ways in to a route and the
//!   `~/.ssh/config` block.
//!
//! Validation that needs the whole route table (uniqueness, ports) is lb-userspace's.
pub mod api;
pub mod check;
pub mod pool;
pub mod route;
pub mod text;
pub mod users;

pub use pool::*;
pub use route::*;
pub use users::*;
