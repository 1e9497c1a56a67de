//! The students' verbs as one clap subcommand set, so that the gateway's `srvgate` and the
//! students' `srvgate-client` parse and run them the same way, with the same exit codes.

use crate::{account, SshArgs, SshConfigArgs};

/// The students' verbs. `srvgate` flattens them into its own commands, after the admins'.
#[derive(clap::Subcommand)]
pub enum StudentCommand {
    /// Connect to an instance by name: resolves its SRV record and runs ssh with the port.
    Ssh(SshArgs),
    /// Print a ~/.ssh/config snippet so that plain `ssh NAME.ssh.ZONE` works.
    SshConfig(SshConfigArgs),
    /// Students: save the gateway's portal address, its certificate and your token.
    Login(account::LoginArgs),
    /// Students: get a public port for your instance at once (NAME.SERVICE.ZONE).
    Claim(account::ClaimArgs),
    /// Students: your routes, their traffic, and when idle ones are reclaimed.
    Mine(account::MineArgs),
    /// Students: give a route's port back.
    Release(account::ReleaseArgs),
}

impl StudentCommand {
    pub fn run(self) -> Result<(), Failure> {
        match self {
            StudentCommand::Ssh(args) => crate::ssh(args).map(|_| ()).map_err(Failure::runtime),
            StudentCommand::SshConfig(args) => crate::ssh_config(args).map_err(Failure::runtime),
            StudentCommand::Login(args) => account::login(args).map_err(Failure::student),
            StudentCommand::Claim(args) => account::claim(args).map_err(Failure::student),
            StudentCommand::Mine(args) => account::mine(args).map_err(Failure::student),
            StudentCommand::Release(args) => account::release(args).map_err(Failure::student),
        }
    }
}

/// A failure with the exit code it maps to: 2 bad input, 1 a runtime failure.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn input(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }

    pub fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }

    fn student(e: account::StudentError) -> Self {
        if e.is_bad_input() {
            Failure::input(e)
        } else {
            Failure::runtime(e)
        }
    }
}

/// `--json` output, the same shape everywhere: the reply as the API sent it, pretty-printed.
pub fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
