//! `srvgate`: the gateway daemon (`run`), its config checker (`check`), the admins' verbs
//! (`route`, `status`, `down`) and the students' client (`ssh`, `ssh-config`).
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 bad input (config, state file, arguments,
//! privileges).

#[cfg(feature = "gateway")]
use std::path::Path;
use std::{path::PathBuf, process::ExitCode};

#[cfg(feature = "gateway")]
use anyhow::anyhow;
use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
#[cfg(feature = "gateway")]
use lb_userspace::{
    cli::admin::{self, DownArgs, LsArgs, RouteCommand, UserCommand},
    config::Config,
    daemon::{self, Options},
    kernel::dataplane::{AttachMode, DEFAULT_PIN_DIR},
    kernel::sys,
    logging,
    serve::api::DEFAULT_SOCKET,
    table::state::DEFAULT_STATE_DIR,
};
use lb_userspace::{
    cli::docs,
    cli::student::{self, account},
};

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
    #[cfg(feature = "gateway")]
    /// Run the gateway: attach XDP (pinned), fill the maps, serve DNS, metrics and the
    /// control socket until SIGINT/SIGTERM. XDP keeps forwarding after it exits unless
    /// --detach-on-exit.
    Run(RunArgs),
    #[cfg(feature = "gateway")]
    /// Validate a config file (syntax, fields, interfaces) without touching the kernel.
    Check {
        /// The TOML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    #[cfg(feature = "gateway")]
    /// Manage the running gateway's routes (add, rm, ls).
    #[command(subcommand)]
    Route(RouteCommand),
    #[cfg(feature = "gateway")]
    /// Manage the students' accounts (add, ls, rm, token).
    #[command(subcommand)]
    User(UserCommand),
    #[cfg(feature = "gateway")]
    /// A table of every route with its traffic and when it last saw a packet.
    Status(LsArgs),
    #[cfg(feature = "gateway")]
    /// Stop forwarding: make a running daemon detach XDP and exit, or remove what a stopped
    /// one left pinned.
    Down(DownArgs),
    /// Connect to an instance by name: resolves its SRV record and runs ssh with the port.
    Ssh(student::SshArgs),
    /// Print a ~/.ssh/config snippet so that plain `ssh NAME.ssh.ZONE` works.
    SshConfig(student::SshConfigArgs),
    /// Students: save the gateway's portal address, its certificate and your token.
    Login(account::LoginArgs),
    /// Students: get a public port for your instance at once (NAME.SERVICE.ZONE).
    Claim(account::ClaimArgs),
    /// Students: your routes, their traffic, and when idle ones are reclaimed.
    Mine(account::MineArgs),
    /// Students: give a route's port back.
    Release(account::ReleaseArgs),
}

/// The package build's verbs. Parsed apart from [`Cli`] so that they appear in none of the
/// man pages and completion scripts they generate from it (clap's completion generators
/// list hidden subcommands too).
#[derive(Parser)]
#[command(name = "srvgate")]
enum Packaging {
    /// Write the man pages (one per command) into DIR.
    GenerateMan { dir: PathBuf },
    /// Print the completion script for SHELL.
    Completions { shell: docs::Shell },
}

impl Packaging {
    fn is_invoked() -> bool {
        let verb = std::env::args_os().nth(1);
        matches!(
            verb.as_ref().and_then(|v| v.to_str()),
            Some("generate-man" | "completions")
        )
    }

    fn run(self) -> anyhow::Result<()> {
        match self {
            Packaging::GenerateMan { dir } => docs::write_man_pages(Cli::command(), &dir)
                .map(|_| ())
                .with_context(|| format!("writing man pages to {}", dir.display())),
            Packaging::Completions { shell } => {
                docs::write_completions(Cli::command(), shell, &mut std::io::stdout());
                Ok(())
            }
        }
    }
}

#[cfg(feature = "gateway")]
#[derive(clap::Args)]
struct RunArgs {
    /// The TOML config file.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// XDP attach mode: `native` runs in the driver (fast); `skb` is generic XDP for drivers
    /// without native support.
    #[arg(long, value_enum, default_value_t = AttachMode::Native)]
    xdp_mode: AttachMode,
    /// Where runtime routes and their ports are kept across restarts.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// bpffs directory for the pinned maps and XDP links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The control socket `srvgate route`, `status` and `down` talk to.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// On SIGINT/SIGTERM, detach XDP and remove the pins (forwarding stops) instead of
    /// leaving them for the next `srvgate run`.
    #[arg(long)]
    detach_on_exit: bool,
    /// Tests only: a file holding an offset (seconds, or e.g. `15d`) added to the clock
    /// that reclaiming reads.
    #[arg(long, value_name = "FILE", hide = true)]
    clock_offset_file: Option<PathBuf>,
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
    if Packaging::is_invoked() {
        return match Packaging::parse().run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("srvgate: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    #[cfg(feature = "gateway")]
    logging::init();
    // The students' client alone: plain lines on stderr.
    #[cfg(not(feature = "gateway"))]
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    #[cfg(feature = "gateway")]
    let admin_failure = |e: admin::AdminError| {
        if e.is_bad_input() {
            Failure::input(e)
        } else {
            Failure::runtime(e)
        }
    };
    let result = match cli.command {
        #[cfg(feature = "gateway")]
        Command::Run(args) => run(args),
        #[cfg(feature = "gateway")]
        Command::Check { config } => check(&config),
        #[cfg(feature = "gateway")]
        Command::Route(cmd) => admin::route(cmd).map_err(admin_failure),
        #[cfg(feature = "gateway")]
        Command::User(cmd) => admin::user(cmd).map_err(admin_failure),
        #[cfg(feature = "gateway")]
        Command::Status(args) => admin::status(args).map_err(admin_failure),
        #[cfg(feature = "gateway")]
        Command::Down(args) => admin::down(args).map_err(admin_failure),
        Command::Ssh(args) => student::ssh(args).map(|_| ()).map_err(Failure::runtime),
        Command::SshConfig(args) => student::ssh_config(args).map_err(Failure::runtime),
        Command::Login(args) => account::login(args).map_err(student_failure),
        Command::Claim(args) => account::claim(args).map_err(student_failure),
        Command::Mine(args) => account::mine(args).map_err(student_failure),
        Command::Release(args) => account::release(args).map_err(student_failure),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("srvgate: error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn student_failure(e: account::StudentError) -> Failure {
    if e.is_bad_input() {
        Failure::input(e)
    } else {
        Failure::runtime(e)
    }
}

#[cfg(feature = "gateway")]
fn load(path: &Path) -> Result<Config, Failure> {
    let cfg = Config::load(path).map_err(Failure::input)?;
    let warnings = cfg.check_machine(path).map_err(Failure::input)?;
    for w in warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(cfg)
}

#[cfg(feature = "gateway")]
fn check(path: &Path) -> Result<(), Failure> {
    let cfg = load(path)?;
    // The files `run` reads before it connects: a bad one is the file's fault, found now.
    if let Some(tls) = cfg.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
        lb_userspace::cluster::tls::options(tls).map_err(Failure::input)?;
    }
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

#[cfg(feature = "gateway")]
fn run(args: RunArgs) -> Result<(), Failure> {
    let cfg = load(&args.config)?;
    if let Some(missing) = sys::missing_privileges() {
        return Err(Failure::input(anyhow!(
            "srvgate run needs root, or {missing}, to load and attach XDP programs; run it with sudo"
        )));
    }
    // Before any socket: the listeners' shares are taken from the raised limit.
    match lb_userspace::kernel::fds::raise_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!("open files: soft limit raised from {before} to the hard limit {after}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("open files: cannot raise the soft limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::runtime)?;
    let opts = Options {
        config: args.config,
        xdp_mode: args.xdp_mode,
        state_dir: args.state_dir,
        pin_dir: args.pin_dir,
        socket: args.socket,
        detach_on_exit: args.detach_on_exit,
        clock_offset_file: args.clock_offset_file,
    };
    rt.block_on(daemon::run(cfg, opts)).map_err(|e| {
        if e.is_bad_input() {
            Failure::input(e)
        } else {
            Failure::runtime(e)
        }
    })
}
