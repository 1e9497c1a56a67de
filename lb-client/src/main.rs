//! `srvgate-client`: the students' verbs of `srvgate` alone (`ssh`, `ssh-config`, `login`,
//! `claim`, `mine`, `release`), for machines that are not the gateway, Windows included.
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 bad input.

use std::process::ExitCode;

use clap::Parser;
use lb_client::StudentCommand;

#[derive(Parser)]
#[command(
    name = "srvgate-client",
    version,
    about = "The students' side of srvgate: reach your instances by name, claim and release their public ports",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: StudentCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Plain lines on stderr; RUST_LOG raises the level.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("srvgate-client: error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
