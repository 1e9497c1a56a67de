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
    cli::{backup, check, docs, doctor},
    config::{Config, ConfigError, DEFAULT_CONFIG},
    daemon::{self, Options},
    kernel::dataplane::{AttachMode, DEFAULT_PIN_DIR},
    kernel::{needs, sys},
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
    /// Check a config file and this machine without changing anything: every problem at
    /// once (syntax, unknown keys with the nearest known one, fields, listeners, interfaces,
    /// the kernel), each with its fix. Exit status 0 when there is no error (warnings do
    /// not change it), 2 when there is one.
    Check(CheckArgs),
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
struct CheckArgs {
    /// The TOML config file.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print the findings as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// The state directory, whose students count for the portal's warning.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The TOML config file.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Start even on a kernel older than srvgate needs (one that carries the features as a
    /// distribution backport); `srvgate check` lists what is missing.
    #[arg(long)]
    skip_kernel_check: bool,
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
        Command::Check(args) => check(&args),
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
    let parsed = Config::load_all(path).map_err(Failure::input)?;
    for w in &parsed.warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    let cfg = match parsed.config {
        Some(cfg) if parsed.problems.is_empty() => cfg,
        _ => {
            return Err(Failure::input(ConfigError::Invalid {
                file: path.to_path_buf(),
                problems: parsed.problems,
            }))
        }
    };
    let warnings = cfg.check_machine(path).map_err(Failure::input)?;
    for w in warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(cfg)
}

fn check(args: &CheckArgs) -> Result<(), Failure> {
    let report = check::check_file(&args.config, &args.state_dir);
    if args.json {
        lb_userspace::cli::print_json(&report);
    } else {
        eprint!("{}", report.render_text());
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure::input(anyhow!(
            "{}: {} error(s); nothing was changed",
            args.config.display(),
            report.errors()
        )))
    }
}

fn run(args: RunArgs) -> Result<(), Failure> {
    let cfg = load(&args.config)?;
    // Before anything is attached: a kernel without what the program needs would leave
    // every packet to the slow path, which looks like a working gateway.
    match (needs::running(), args.skip_kernel_check) {
        (Some(found), false) => {
            if let Some(why) = needs::refusal(found) {
                return Err(Failure::input(anyhow!("{why}")));
            }
        }
        (None, false) => {
            tracing::warn!("cannot read the kernel's release; its features are not checked")
        }
        (_, true) => {}
    }
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
