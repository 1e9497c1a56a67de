//! `srvgate`: the gateway daemon (`run`), its config checker (`check`) and the students'
//! client (`ssh`, `ssh-config`).
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 bad input (config, arguments, privileges).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use lb_userspace::{
    config::Config,
    dataplane::{verdict_names, AttachMode, Dataplane},
    dns::DnsServer,
    metrics::{self, RouteSample},
    routes::RouteTable,
    student, sys,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "srvgate",
    version,
    about = "A gateway that gives every instance behind it a DNS name and a public port, forwarded in the kernel by XDP",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: attach XDP, fill the maps, serve DNS and metrics until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Validate a config file (syntax, fields, interfaces) without touching the kernel.
    Check {
        /// The TOML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Connect to an instance by name: resolves its SRV record and runs ssh with the port.
    Ssh(student::SshArgs),
    /// Print a ~/.ssh/config snippet so that plain `ssh NAME.ssh.ZONE` works.
    SshConfig(student::SshConfigArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The TOML config file.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// XDP attach mode: `native` runs in the driver (fast); `skb` is generic XDP for drivers
    /// without native support.
    #[arg(long, value_enum, default_value_t = AttachMode::Native)]
    xdp_mode: AttachMode,
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    fn input(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }
    fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // hickory-server logs every answer at info: that would be a line per query.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { config } => check(&config),
        Command::Ssh(args) => student::ssh(args).map(|_| ()).map_err(Failure::runtime),
        Command::SshConfig(args) => student::ssh_config(args).map_err(Failure::runtime),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("srvgate: error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn load(path: &Path) -> Result<Config, Failure> {
    let cfg = Config::load(path).map_err(Failure::input)?;
    cfg.check_interfaces(path).map_err(Failure::input)?;
    Ok(cfg)
}

fn check(path: &Path) -> Result<(), Failure> {
    let cfg = load(path)?;
    println!(
        "{}: ok ({} routes, public {} on {}, private {})",
        path.display(),
        cfg.routes.len(),
        cfg.gateway.public_ipv4,
        cfg.gateway.public_interface,
        cfg.gateway.private_interfaces.join(", ")
    );
    Ok(())
}

fn run(args: RunArgs) -> Result<(), Failure> {
    let cfg = load(&args.config)?;
    if let Some(missing) = sys::missing_privileges() {
        return Err(Failure::input(anyhow!(
            "srvgate run needs root, or {missing}, to load and attach XDP programs; run it with sudo"
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::runtime)?;
    rt.block_on(daemon(cfg, args))
}

/// Everything the running daemon shares between its tasks.
struct State {
    table: RouteTable,
    dataplane: Dataplane,
}

async fn daemon(cfg: Config, args: RunArgs) -> Result<(), Failure> {
    // Bind every socket before touching the kernel, so a busy port fails with nothing attached.
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {addr}"))
                .map_err(Failure::runtime)?,
        ),
        None => None,
    };
    let mut table = RouteTable::new();
    let diff = table.replace_all(&cfg.routes).map_err(Failure::input)?;
    let dns = match &cfg.dns {
        Some(d) => Some(
            DnsServer::start(d, cfg.gateway.public_ipv4, &cfg.routes)
                .await
                .context("starting the DNS server")
                .map_err(Failure::runtime)?,
        ),
        None => None,
    };

    let mut dataplane = Dataplane::start(&cfg.gateway, args.xdp_mode)
        .context("starting the XDP data plane")
        .map_err(Failure::runtime)?;
    dataplane
        .sync_routes(&table, &diff)
        .context("filling the route maps")
        .map_err(Failure::runtime)?;
    for e in table.entries() {
        let r = &e.route;
        info!(route = %r.key(), public = %format!("{}:{}", cfg.gateway.public_ipv4, r.port), backend = %r.backend, "route");
    }
    let state = Arc::new(Mutex::new(State { table, dataplane }));

    let metrics_task = metrics_listener.map(|listener| {
        let state = state.clone();
        tokio::spawn(metrics::serve(listener, Arc::new(move || scrape(&state))))
    });

    info!(
        routes = cfg.routes.len(),
        public = %cfg.gateway.public_ipv4,
        dns = ?dns.as_ref().map(|d| d.local_addrs()),
        metrics = ?cfg.metrics_listen,
        "srvgate ready"
    );

    let result = serve_until_signal(&args, &state, dns.as_ref()).await;

    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(d) = dns {
        d.shutdown().await;
    }
    // Dropping the data plane detaches XDP from every leg.
    drop(state);
    info!("stopped; XDP detached");
    result
}

async fn serve_until_signal(
    args: &RunArgs,
    state: &Arc<Mutex<State>>,
    dns: Option<&DnsServer>,
) -> Result<(), Failure> {
    let sig = |kind| {
        signal(kind)
            .context("installing signal handlers")
            .map_err(Failure::runtime)
    };
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(()); }
            _ = hup.recv() => reload(&args.config, state, dns),
            _ = refresh.tick() => {
                let mut s = lock(state);
                if let Err(e) = s.dataplane.refresh_egress() {
                    warn!("refreshing egress modes: {e:#}");
                }
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves consistent data (every update is one map
    // operation at a time); keep serving rather than cascading the panic.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SIGHUP: re-reads the config and applies its routes as a diff, without detaching XDP.
/// A bad file is logged and ignored: the running table stays as it was.
fn reload(path: &Path, state: &Mutex<State>, dns: Option<&DnsServer>) {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: keeping the running routes; {e}");
            return;
        }
    };
    let mut s = lock(state);
    let diff = match s.table.replace_all(&cfg.routes) {
        Ok(d) => d,
        Err(e) => {
            error!("SIGHUP: keeping the running routes; {e}");
            return;
        }
    };
    let State { table, dataplane } = &mut *s;
    if let Err(e) = dataplane.sync_routes(table, &diff) {
        error!("SIGHUP: updating the BPF maps failed: {e:#}");
    }
    if let Some(d) = dns {
        d.update(&table.routes());
    }
    info!(
        added = diff.added.len(),
        removed = diff.removed.len(),
        changed = diff.changed.len(),
        "SIGHUP: config reloaded"
    );
    for e in &diff.added {
        info!(route = %e.route.key(), port = e.route.port, backend = %e.route.backend, "route added");
    }
    for e in &diff.removed {
        info!(route = %e.route.key(), port = e.route.port, "route removed");
    }
    for e in &diff.changed {
        info!(route = %e.route.key(), port = e.route.port, backend = %e.route.backend, "route changed");
    }
}

fn scrape(state: &Mutex<State>) -> String {
    let s = lock(state);
    let routes: Vec<RouteSample> = s
        .table
        .entries()
        .map(|e| RouteSample {
            route: e.route.clone(),
            counters: s.dataplane.route_counters(e.id).unwrap_or_default(),
        })
        .collect();
    let verdicts = s.dataplane.verdicts().unwrap_or_default();
    let named: Vec<(&str, u64)> = verdict_names().iter().copied().zip(verdicts).collect();
    metrics::render(&routes, &named)
}
