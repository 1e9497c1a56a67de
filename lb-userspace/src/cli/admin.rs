//! The admins' side of the CLI: `srvgate route add|rm|ls`, `srvgate status` and
//! `srvgate down`, all talking to the running daemon through the control socket (`down`
//! also works with no daemon, on what a stopped one left pinned).

use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    api::{Client, ClientError, DEFAULT_SOCKET},
    kernel::dataplane::{remove_pins, DEFAULT_PIN_DIR},
};
use lb_model::{
    api::{
        DrainRequest, RouteRequest, RouteView, RoutesReply, Shutdown, TokenReply, UserRequest,
        UsersReply,
    },
    check_label,
};

/// How long `down` waits for a running daemon to detach and exit.
const DOWN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(clap::Args, Clone, Debug)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum RouteCommand {
    /// Add a runtime route: a public port (from gateway.port_range unless --port) forwarded
    /// to BACKEND, and its DNS records. Kept across restarts until removed or reclaimed.
    Add(AddArgs),
    /// Remove NAME's runtime routes (only those of --service if given).
    Rm(RmArgs),
    /// List every route, config and runtime.
    Ls(LsArgs),
    /// Send no new flows to one backend of NAME's route (established ones finish, kept by
    /// the data plane): for a rolling upgrade. A runtime route's drain is stored; a config
    /// route's lasts until a restart (write `drained` in the file to keep it).
    Drain(DrainArgs),
    /// Send new flows to a drained backend again.
    Undrain(DrainArgs),
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The route's owner label.
    pub name: String,
    /// The route's service, when NAME has several routes with this backend.
    #[arg(long)]
    pub service: Option<String>,
    /// `tcp` or `udp`, when the backend serves both.
    #[arg(long)]
    pub protocol: Option<String>,
    /// The member, address:port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub backend: String,
    /// Print the route as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// Owner label, e.g. `alice`: alice.ssh.ZONE.
    pub name: String,
    /// Service label, e.g. `ssh`.
    #[arg(long)]
    pub service: String,
    /// Where to forward, address:port; repeat for a pool (each `ADDR:PORT[ weight=N][
    /// drained]`): new flows are spread over its members by weight.
    #[arg(long = "backend", value_name = "ADDR:PORT", required = true)]
    pub backends: Vec<String>,
    /// A specific public port instead of the lowest free one.
    #[arg(long)]
    pub port: Option<u16>,
    /// `tcp` (default) or `udp`.
    #[arg(long)]
    pub protocol: Option<String>,
    /// `v1` or `v2`: the web routers (HTTP by Host, HTTPS by SNI) send a PROXY protocol
    /// header first, so the backend sees the visitor's address. Only for a backend that
    /// expects it (nginx `proxy_protocol`, Apache, HAProxy, caddy).
    #[arg(long, value_name = "VERSION")]
    pub proxy_protocol: Option<String>,
    #[command(flatten)]
    pub check: lb_client::account::CheckArgs,
    /// Print the route as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Register a student: the backends their routes may point at and how many routes they
    /// may hold. Prints their login token once (only its hash is kept).
    Add(UserAddArgs),
    /// List every account.
    Ls(LsArgs),
    /// Remove an account (refused while it holds routes, unless --with-routes).
    Rm(UserRmArgs),
    /// Issue a new token for NAME; the old one stops working at once.
    Token(UserNameArgs),
}

#[derive(clap::Args, Debug)]
pub struct UserAddArgs {
    /// The student's name: their routes are NAME.SERVICE.ZONE.
    pub name: String,
    /// An address, address:port, CIDR block or block:port their routes may point at, e.g.
    /// 10.0.0.11, 10.0.0.11:22, 10.0.1.0/28 (repeat for more).
    #[arg(long = "allow", value_name = "RULE")]
    pub allow: Vec<String>,
    /// The old name of --allow (elsewhere --backend is a route's ADDR:PORT); still read,
    /// with a deprecation note.
    #[arg(long = "backend", value_name = "RULE", hide = true)]
    pub deprecated_backend: Vec<String>,
    /// How many routes they may hold at once.
    #[arg(long, default_value_t = crate::table::users::DEFAULT_MAX_ROUTES)]
    pub max_routes: u32,
    /// May act on every route and account through the portal, as root does here.
    #[arg(long)]
    pub admin: bool,
    /// Print the account and token as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct UserRmArgs {
    /// The student's name, as `srvgate user ls` lists it.
    pub name: String,
    /// Also remove the student's runtime routes (their ports start cooling down).
    #[arg(long)]
    pub with_routes: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct UserNameArgs {
    /// The student's name, as `srvgate user ls` lists it.
    pub name: String,
    /// Print the account and token as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  srvgate route rm alice                      # every runtime route of alice
  srvgate route rm alice --service ssh
  srvgate route rm alice --service game --protocol udp")]
pub struct RmArgs {
    /// The routes' owner label (the NAME of NAME.SERVICE.ZONE). Config routes are removed
    /// from the file instead.
    pub name: String,
    /// Only the route of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only routes over `tcp` or `udp`.
    #[arg(long)]
    pub protocol: Option<String>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// Where a stopped daemon left its pins (used only when no daemon answers).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Invalid(String),
    #[error("{}: removing the pins: {error}", dir.display())]
    Pins { dir: PathBuf, error: io::Error },
    #[error("srvgate acknowledged `down` but its socket {} is still there after {DOWN_TIMEOUT:?}; is it stuck?", socket.display())]
    StillRunning { socket: PathBuf },
}

impl AdminError {
    /// Whether the caller's input or privileges are at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        match self {
            AdminError::Client(e) => e.is_bad_input(),
            AdminError::Invalid(_) => true,
            _ => false,
        }
    }
}

pub fn route(cmd: RouteCommand) -> Result<(), AdminError> {
    match cmd {
        RouteCommand::Add(a) => {
            let client = Client::new(&a.socket.socket);
            let (backend, backends) = lb_model::backend_fields(a.backends);
            let v = client.add(&RouteRequest {
                name: a.name,
                service: a.service,
                protocol: a.protocol,
                backend,
                backends,
                port: a.port,
                proxy_protocol: a.proxy_protocol,
                check: a.check.request().map_err(AdminError::Invalid)?,
            })?;
            if a.json {
                crate::cli::print_json(&v);
            } else {
                println!(
                    "{}/{}/{}: public port {} -> {} ({})",
                    v.name,
                    v.service,
                    v.protocol,
                    v.port,
                    v.pool_text(),
                    v.source
                );
            }
            Ok(())
        }
        RouteCommand::Rm(r) => {
            // The name travels in the URL path: refuse what is not a label before sending.
            check_label(&r.name).map_err(|e| AdminError::Invalid(format!("name: {e}")))?;
            if let Some(s) = &r.service {
                check_label(s).map_err(|e| AdminError::Invalid(format!("service: {e}")))?;
            }
            let protocol = r
                .protocol
                .as_deref()
                .map(|p| {
                    p.parse::<lb_model::Protocol>()
                        .map_err(|e| AdminError::Invalid(format!("protocol: {e}")))
                })
                .transpose()?;
            let removed =
                Client::new(&r.socket.socket).remove(&r.name, r.service.as_deref(), protocol)?;
            for v in removed.removed {
                println!(
                    "removed {}/{}/{} (port {} is free again)",
                    v.name, v.service, v.protocol, v.port
                );
            }
            Ok(())
        }
        RouteCommand::Ls(l) => print_routes(&l, render_ls),
        RouteCommand::Drain(d) => drain(d, true),
        RouteCommand::Undrain(d) => drain(d, false),
    }
}

/// `srvgate route drain|undrain`.
fn drain(d: DrainArgs, drained: bool) -> Result<(), AdminError> {
    // The name travels in the URL path: refuse what is not a label before sending.
    check_label(&d.name).map_err(|e| AdminError::Invalid(format!("name: {e}")))?;
    let v = Client::new(&d.socket.socket).drain(
        &d.name,
        &DrainRequest {
            service: d.service,
            protocol: d.protocol,
            backend: d.backend.clone(),
            drained,
        },
    )?;
    if d.json {
        crate::cli::print_json(&v);
    } else {
        let what = if drained { "drained" } else { "undrained" };
        println!(
            "{}/{}/{}: {} {what}; backends {}",
            v.name,
            v.service,
            v.protocol,
            d.backend,
            v.pool_text()
        );
    }
    Ok(())
}

pub fn user(cmd: UserCommand) -> Result<(), AdminError> {
    let name_ok = |n: &str| check_label(n).map_err(|e| AdminError::Invalid(format!("name: {e}")));
    match cmd {
        UserCommand::Add(a) => {
            name_ok(&a.name)?;
            let mut rules = a.allow;
            if !a.deprecated_backend.is_empty() {
                eprintln!(
                    "srvgate: note: `user add --backend RULE` is deprecated; write --allow RULE (elsewhere --backend is a route's ADDR:PORT)"
                );
                rules.extend(a.deprecated_backend);
            }
            let reply = Client::new(&a.socket.socket).user_add(&UserRequest {
                name: a.name,
                backends: rules,
                max_routes: Some(a.max_routes),
                admin: a.admin,
            })?;
            print_token(&reply, a.json);
            Ok(())
        }
        UserCommand::Token(t) => {
            name_ok(&t.name)?;
            let reply = Client::new(&t.socket.socket).user_token(&t.name)?;
            print_token(&reply, t.json);
            Ok(())
        }
        UserCommand::Rm(r) => {
            name_ok(&r.name)?;
            let u = Client::new(&r.socket.socket).user_remove(&r.name, r.with_routes)?;
            println!("removed user {} (held {} routes)", u.name, u.routes);
            Ok(())
        }
        UserCommand::Ls(l) => {
            let reply = Client::new(&l.socket.socket).users()?;
            if l.json {
                crate::cli::print_json(&reply);
            } else {
                print!("{}", render_users(&reply));
            }
            Ok(())
        }
    }
}

fn print_token(reply: &TokenReply, json: bool) {
    if json {
        crate::cli::print_json(reply);
        return;
    }
    let u = &reply.user;
    println!(
        "user {}: {} of {} routes, backends {}{}",
        u.name,
        u.routes,
        u.max_routes,
        if u.backends.is_empty() {
            "none".to_string()
        } else {
            u.backends.join(", ")
        },
        if u.admin { " (admin)" } else { "" }
    );
    print!(
        "{}",
        lb_model::text::onboarding(&u.name, &reply.token, reply.onboarding.as_ref())
    );
}

pub fn render_users(reply: &UsersReply) -> String {
    let mut out = format!(
        "{:<20} {:>6} {:>5}  {:<6} BACKENDS\n",
        "NAME", "ROUTES", "MAX", "ADMIN"
    );
    for u in &reply.users {
        out.push_str(&format!(
            "{:<20} {:>6} {:>5}  {:<6} {}\n",
            u.name,
            u.routes,
            u.max_routes,
            if u.admin { "yes" } else { "no" },
            u.backends.join(",")
        ));
    }
    if reply.users.is_empty() {
        out.push_str("(no users; add one with `srvgate user add NAME --allow ADDR`)\n");
    }
    out
}

pub fn status(args: LsArgs) -> Result<(), AdminError> {
    print_routes(&args, render_status)
}

/// Asks the daemon for its routes and prints them as JSON (`--json`) or as `render` lays
/// them out.
fn print_routes(args: &LsArgs, render: fn(&RoutesReply) -> String) -> Result<(), AdminError> {
    let reply = Client::new(&args.socket.socket).list()?;
    if args.json {
        crate::cli::print_json(&reply);
    } else {
        print!("{}", render(&reply));
    }
    Ok(())
}

/// Stops forwarding: a running daemon is asked to detach and exit (and waited for); with
/// no daemon, the pins it left in `--pin-dir` are removed.
pub fn down(args: DownArgs) -> Result<(), AdminError> {
    let socket = &args.socket.socket;
    match Client::new(socket).shutdown(Shutdown { detach: true }) {
        Ok(_) => {
            let deadline = Instant::now() + DOWN_TIMEOUT;
            // The daemon removes its socket last, after detaching.
            while socket.exists() {
                if Instant::now() >= deadline {
                    return Err(AdminError::StillRunning {
                        socket: socket.clone(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            println!("srvgate stopped; XDP detached from every leg and its pins removed");
            Ok(())
        }
        Err(e) if e.no_daemon() => {
            let dir = &args.pin_dir;
            let removed = remove_pins(dir).map_err(|error| AdminError::Pins {
                dir: dir.clone(),
                error,
            })?;
            if removed.links + removed.maps == 0 {
                println!(
                    "no srvgate running and nothing pinned in {}: nothing to do",
                    dir.display()
                );
            } else {
                println!(
                    "no srvgate running; removed {} XDP link(s) (detached) and {} map(s) from {}",
                    removed.links,
                    removed.maps,
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Columns padded to their widest cell, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn summary(r: &RoutesReply) -> String {
    let runtime = r.routes.iter().filter(|v| v.source == "runtime").count();
    format!(
        "public {}, ports {} ({} free), {} routes ({} config, {} runtime), reclaim {}\n",
        r.public_ipv4,
        r.port_range,
        r.free_ports,
        r.routes.len(),
        r.routes.len() - runtime,
        runtime,
        r.reclaim_after
            .as_deref()
            .map_or("off".to_string(), |d| format!("after {d} idle"))
    )
}

/// `[cluster]`'s line of `srvgate status`: who we are, who else is there, how fresh.
fn cluster_line(c: &lb_model::api::ClusterView) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let synced = c.last_sync_unix.map_or("never".to_string(), |t| {
        format!("{} ago", human_duration(now.saturating_sub(t)))
    });
    let state = if c.connected {
        "connected".to_string()
    } else {
        format!(
            "NOT connected ({}): changes are refused",
            c.error.as_deref().unwrap_or("no answer")
        )
    };
    let leader = match &c.leader {
        Some(l) if *l == c.gateway_id => "leader: this gateway (reclaims idle routes)".to_string(),
        Some(l) => format!("leader: {l} (reclaims idle routes)"),
        None => "no leader now (idle routes wait)".to_string(),
    };
    format!(
        "cluster: gateway {} of [{}], {leader}, etcd {} {state}, revision {}, last full sync {synced}\n",
        c.gateway_id,
        c.members.join(", "),
        c.endpoints.join(","),
        c.revision
    )
}

/// The columns both tables start with: NAME, SERVICE, PROTO, PORT, BACKEND.
fn identity_cells(v: &RouteView) -> Vec<String> {
    vec![
        v.name.clone(),
        v.service.clone(),
        v.protocol.clone(),
        v.port.to_string(),
        v.pool_text(),
    ]
}

/// `srvgate route ls`.
pub fn render_ls(r: &RoutesReply) -> String {
    let rows: Vec<Vec<String>> = r
        .routes
        .iter()
        .map(|v| {
            let mut row = identity_cells(v);
            row.push(v.source.clone());
            row.push(v.reclaim_in_seconds.map_or("-".into(), human_duration));
            row
        })
        .collect();
    summary(r)
        + &table(
            &[
                "NAME",
                "SERVICE",
                "PROTO",
                "PORT",
                "BACKEND",
                "SOURCE",
                "RECLAIM IN",
            ],
            &rows,
        )
        + &health_section(r, unix_now())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The health board of every checked or pooled route, after the table.
fn health_section(r: &RoutesReply, now_unix: u64) -> String {
    let mut out = String::new();
    for v in &r.routes {
        let board = lb_model::text::health_board(v, now_unix);
        if board.is_empty() {
            continue;
        }
        if out.is_empty() {
            out.push_str("\nhealth:\n");
        }
        out.push_str(&format!("{}/{}/{}\n", v.name, v.service, v.protocol));
        for line in board {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// `srvgate status`.
pub fn render_status(r: &RoutesReply) -> String {
    let rows: Vec<Vec<String>> = r
        .routes
        .iter()
        .map(|v| {
            let mut row = identity_cells(v);
            row.extend([
                (v.inbound_packets + v.outbound_packets).to_string(),
                lb_model::text::human_bytes(v.inbound_bytes + v.outbound_bytes),
                last_seen(v),
                v.source.clone(),
            ]);
            row
        })
        .collect();
    let portal = r.portal.as_ref().map_or(String::new(), |p| {
        format!(
            "portal https on {} (certificate SHA-256 {})\n",
            p.listen.join(", "),
            p.fingerprint
        )
    });
    summary(r)
        + &portal
        + &r.cluster.as_ref().map_or(String::new(), cluster_line)
        + &table(
            &[
                "NAME",
                "SERVICE",
                "PROTO",
                "PORT",
                "BACKEND",
                "PACKETS",
                "BYTES",
                "LAST SEEN",
                "SOURCE",
            ],
            &rows,
        )
        + &health_section(r, unix_now())
}

fn last_seen(v: &RouteView) -> String {
    match v.last_seen_unix {
        Some(_) => format!("{} ago", human_duration(v.idle_seconds)),
        None => "never".into(),
    }
}

/// The largest unit that fits: `42s`, `5m`, `3h`, `12d`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser as _};

    #[derive(clap::Parser, Debug)]
    struct Admin {
        #[command(subcommand)]
        command: AdminCommand,
    }

    #[derive(clap::Subcommand, Debug)]
    enum AdminCommand {
        #[command(subcommand)]
        Route(RouteCommand),
        #[command(subcommand)]
        User(UserCommand),
    }

    #[test]
    fn user_add_takes_allow_and_still_the_old_backend() {
        let parsed = Admin::try_parse_from([
            "srvgate",
            "user",
            "add",
            "alice",
            "--allow",
            "10.0.0.11",
            "--backend",
            "10.0.1.0/28",
        ])
        .unwrap();
        let AdminCommand::User(UserCommand::Add(a)) = parsed.command else {
            panic!("not user add");
        };
        assert_eq!(a.allow, ["10.0.0.11"]);
        assert_eq!(a.deprecated_backend, ["10.0.1.0/28"]);
        // The old name stays out of the help (and so of the man page).
        let mut cmd = Admin::command();
        let help = cmd
            .find_subcommand_mut("user")
            .unwrap()
            .find_subcommand_mut("add")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("--allow <RULE>"), "{help}");
        assert!(!help.contains("--backend"), "{help}");
    }

    #[test]
    fn route_rm_takes_a_protocol_and_every_argument_has_help() {
        let parsed = Admin::try_parse_from([
            "srvgate",
            "route",
            "rm",
            "alice",
            "--service",
            "game",
            "--protocol",
            "udp",
        ])
        .unwrap();
        let AdminCommand::Route(RouteCommand::Rm(r)) = parsed.command else {
            panic!("not route rm");
        };
        assert_eq!(r.protocol.as_deref(), Some("udp"));
        let mut cmd = Admin::command();
        for (group, verb) in [("route", "rm"), ("user", "rm"), ("user", "token")] {
            let sub = cmd
                .find_subcommand_mut(group)
                .unwrap()
                .find_subcommand_mut(verb)
                .unwrap();
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "{group} {verb}: {} has no help",
                    arg.get_id()
                );
            }
        }
    }

    fn view(name: &str, source: &str, last_seen: Option<u64>, idle: u64) -> RouteView {
        RouteView {
            check: None,
            proxy_protocol: None,
            name: name.into(),
            service: "ssh".into(),
            protocol: "tcp".into(),
            port: 30000,
            backend: "10.0.0.11:22".into(),
            backends: vec![],
            fail_open: false,
            source: source.into(),
            added_unix: 1,
            last_seen_unix: last_seen,
            idle_seconds: idle,
            reclaim_in_seconds: (source == "runtime").then_some(86400 * 3),
            inbound_packets: 10,
            outbound_packets: 5,
            inbound_bytes: 2048,
            outbound_bytes: 1024,
        }
    }

    fn reply() -> RoutesReply {
        RoutesReply {
            public_ipv4: "203.0.113.10".into(),
            port_range: "30000-30009".into(),
            free_ports: 8,
            reclaim_after: Some("14d".into()),
            portal: None,
            cluster: None,
            routes: vec![
                view("alice", "runtime", Some(100), 90),
                view("carol", "config", None, 5),
            ],
        }
    }

    #[test]
    fn status_is_a_table_with_counters_and_last_seen() {
        let text = render_status(&reply());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("8 free") && lines[0].contains("after 14d idle"),
            "{text}"
        );
        assert!(lines[1].starts_with("NAME  "), "{text}");
        assert!(lines[1].contains("LAST SEEN"), "{text}");
        let alice: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            alice,
            [
                "alice",
                "ssh",
                "tcp",
                "30000",
                "10.0.0.11:22",
                "15",
                "3.0",
                "KiB",
                "1m",
                "ago",
                "runtime"
            ]
        );
        assert!(
            lines[3].contains("never") && lines[3].ends_with("config"),
            "{text}"
        );
    }

    #[test]
    fn status_and_ls_end_with_the_health_board_of_checked_routes() {
        let mut r = reply();
        assert!(!render_status(&r).contains("health:"), "nothing checked");
        let v = &mut r.routes[0];
        v.check = Some("ssh inter 2s timeout 1s rise 2 fall 3".into());
        v.backends = ["10.0.0.11:22", "10.0.0.12:22"]
            .iter()
            .map(|a| lb_model::api::BackendView {
                addr: a.to_string(),
                weight: 1,
                drained: false,
                up: true,
                since_unix: None,
                last_check: Some("SSH-2.0-OpenSSH_9.2".into()),
            })
            .collect();
        v.backends[1].up = false;
        v.backends[1].since_unix = Some(1000);
        v.backends[1].last_check = Some("connect: Connection refused".into());
        let text = health_section(&r, 1060);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "",
                "health:",
                "alice/ssh/tcp",
                "  check: ssh inter 2s timeout 1s rise 2 fall 3",
                "  10.0.0.11:22  up; last check: SSH-2.0-OpenSSH_9.2",
                "  10.0.0.12:22  down since 1970-01-01 00:16:40Z (1m ago); last check: connect: Connection refused",
            ]
        );
        assert!(render_status(&r).contains("health:\nalice/ssh/tcp\n"));
        assert!(render_ls(&r).contains("health:\nalice/ssh/tcp\n"));
    }

    #[test]
    fn status_shows_the_cluster() {
        let mut r = reply();
        r.cluster = Some(lb_model::api::ClusterView {
            gateway_id: "gw2".into(),
            members: vec!["gw1".into(), "gw2".into()],
            leader: None,
            endpoints: vec!["http://10.0.0.2:2379".into()],
            connected: false,
            revision: 42,
            last_sync_unix: None,
            error: Some("connection refused".into()),
        });
        let text = render_status(&r);
        let line = text.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "cluster: gateway gw2 of [gw1, gw2], no leader now (idle routes wait), etcd http://10.0.0.2:2379 NOT connected (connection refused): changes are refused, revision 42, last full sync never"
        );
        for (leader, shown) in [
            ("gw1", "leader: gw1 (reclaims idle routes)"),
            ("gw2", "leader: this gateway (reclaims idle routes)"),
        ] {
            if let Some(c) = r.cluster.as_mut() {
                c.leader = Some(leader.into());
                c.connected = true;
            }
            let text = render_status(&r);
            let line = text.lines().nth(1).unwrap();
            assert!(
                line.starts_with(&format!("cluster: gateway gw2 of [gw1, gw2], {shown}, etcd http://10.0.0.2:2379 connected,")),
                "{line}"
            );
        }
    }

    #[test]
    fn ls_shows_the_source_and_the_reclaim_countdown() {
        let text = render_ls(&reply());
        assert!(text.contains("runtime  3d"), "{text}");
        let carol: Vec<&str> = text.lines().nth(3).unwrap().split_whitespace().collect();
        assert_eq!(carol[5..], ["config", "-"], "{text}");
    }

    #[test]
    fn units() {
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(14 * 86400), "14d");
    }
}
