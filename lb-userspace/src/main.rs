//! `srvgate`: the gateway daemon (`run`), its config checker (`check`), the admins' verbs
//! (`route`, `status`, `down`) and the students' client (`ssh`, `ssh-config`).
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 bad input (config, state file, arguments,
//! privileges).

use std::path::Path;
use std::{path::PathBuf, process::ExitCode};

use anyhow::anyhow;
use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use lb_client::{Failure, StudentCommand};
use lb_userspace::{
    api::DEFAULT_SOCKET,
    cli::admin::{self, DownArgs, LsArgs, RouteCommand, UserCommand},
    cli::docs,
    cli::{backup, doctor},
    config::Config,
    daemon::{self, Options},
    kernel::dataplane::{AttachMode, DEFAULT_PIN_DIR},
    kernel::sys,
    logging,
    table::state::DEFAULT_STATE_DIR,
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
    /// Run the gateway: attach XDP (pinned), fill the maps, serve DNS, metrics and the
    /// control socket until SIGINT/SIGTERM. XDP keeps forwarding after it exits unless
    /// --detach-on-exit.
    Run(RunArgs),
    /// Validate a config file (syntax, fields, interfaces) without touching the kernel.
    Check {
        /// The TOML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Manage the running gateway's routes (add, rm, ls).
    #[command(subcommand)]
    Route(RouteCommand),
    /// Manage the students' accounts (add, ls, rm, token).
    #[command(subcommand)]
    User(UserCommand),
    /// A table of every route with its traffic and when it last saw a packet.
    Status(LsArgs),
    /// Stop forwarding: make a running daemon detach XDP and exit, or remove what a stopped
    /// one left pinned.
    Down(DownArgs),
    /// Write the runtime routes, the accounts (token hashes, cool-downs) and the state
    /// directory's keys to one file (mode 0600), consistent while the daemon runs.
    Backup(backup::BackupArgs),
    /// Put a backup into a stopped gateway's state directory (or, with `[cluster]` in
    /// --config, into etcd); refuses to replace existing state unless --force.
    Restore(backup::RestoreArgs),
    /// Check the gateway's machine, firewall, DNS and delegation; one line to fix each
    /// problem. Exit 1 when a check fails; --json for monitoring.
    Doctor(doctor::DoctorArgs),
    // The students' verbs (ssh, ssh-config, login, claim, mine, release), lb-client's.
    #[command(flatten)]
    Student(StudentCommand),
}

/// The package build's verbs. Parsed apart from [`Cli`] so that they appear in none of the
/// man pages and completion scripts they generate from it (clap's completion generators
/// list hidden subcommands too).
#[derive(Parser)]
#[command(name = "srvgate")]
enum Packaging {
    /// Write the man pages (one per command) into DIR.
    GenerateMan { dir: PathBuf },
    /// Write srvgate.toml(5), from the book's config reference, into DIR.
    GenerateConfigMan { dir: PathBuf },
    /// Write the book's page of every command (markdown) to FILE.
    GenerateBook { file: PathBuf },
    /// Print the completion script for SHELL.
    Completions { shell: docs::Shell },
}

impl Packaging {
    fn is_invoked() -> bool {
        let verb = std::env::args_os().nth(1);
        matches!(
            verb.as_ref().and_then(|v| v.to_str()),
            Some("generate-man" | "generate-config-man" | "generate-book" | "completions")
        )
    }

    fn run(self) -> anyhow::Result<()> {
        match self {
            Packaging::GenerateMan { dir } => docs::write_man_pages(Cli::command(), &dir)
                .map(|_| ())
                .with_context(|| format!("writing man pages to {}", dir.display())),
            Packaging::GenerateConfigMan { dir } => docs::write_config_man_page(&dir)
                .map(|_| ())
                .with_context(|| format!("writing srvgate.toml(5) to {}", dir.display())),
            Packaging::GenerateBook { file } => {
                std::fs::write(&file, docs::book_commands_page(Cli::command()))
                    .with_context(|| format!("writing {}", file.display()))
            }
            Packaging::Completions { shell } => {
                docs::write_completions(Cli::command(), shell, &mut std::io::stdout());
                Ok(())
            }
        }
    }
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
    logging::init();
    let admin_failure = |e: admin::AdminError| {
        if e.is_bad_input() {
            Failure::input(e)
        } else {
            Failure::runtime(e)
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { config } => check(&config),
        Command::Route(cmd) => admin::route(cmd).map_err(admin_failure),
        Command::User(cmd) => admin::user(cmd).map_err(admin_failure),
        Command::Status(args) => admin::status(args).map_err(admin_failure),
        Command::Down(args) => admin::down(args).map_err(admin_failure),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
        Command::Doctor(args) => doctor::doctor(args),
        Command::Student(cmd) => cmd.run(),
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
    let warnings = cfg.check_machine(path).map_err(Failure::input)?;
    for w in warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(cfg)
}

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

#[cfg(test)]
mod book_tests;
