//! The students' client: `srvgate ssh` and `srvgate ssh-config`, and (in `account`) the
//! verbs that talk to the portal: `login`, `claim`, `mine`, `release`. The gateway's
//! `srvgate` carries them ([`StudentCommand`]), and so does the students' own download,
//! `srvgate-client`, which builds for any OS (Windows included) from this crate and
//! lb-model alone.
//!
//! OpenSSH does not look up SRV records, so `srvgate ssh alice.ssh.lab.example` does it: it
//! asks DNS for `_ssh._tcp.alice.lab.example SRV`, then runs the real `ssh` with `-p PORT`
//! against the SRV target's address. `srvgate ssh-config` prints a `~/.ssh/config` block whose
//! ProxyCommand is `srvgate ssh --proxy %h`: the proxy resolves the same way and pipes
//! stdin/stdout to the service, so plain `ssh alice.ssh.lab.example` works too.
//!
//! Both modes name the host key after the service (`alice.ssh.lab.example`), not after the
//! gateway's `address:port`: the key belongs to alice's machine, and stays the same if her
//! port changes.
//!
//! The commands it prints and the ProxyCommand are quoted by `shlex`, the workspace's one shell
//! quoting (xtask's logged command lines use it too).

pub mod account;
mod resolve;
mod verbs;

use std::{
    convert::Infallible,
    ffi::OsString,
    io::{self, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};

pub use resolve::Endpoint;
pub use verbs::{print_json, Failure, StudentCommand};

use lb_model::{check_domain, check_label, text};

/// How long `--proxy` waits for the TCP connection to the service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `srvgate ssh`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "\
Examples:
  srvgate ssh alice.ssh.lab.example
  srvgate ssh bob@alice.ssh.lab.example -- -L 8888:localhost:8888
  srvgate ssh alice --zone lab.example --dns-server 203.0.113.10
  srvgate ssh _ssh._tcp.alice.lab.example -- uptime")]
pub struct SshArgs {
    /// The instance to reach: NAME.SERVICE.ZONE (alice.ssh.lab.example), the RFC 2782 form
    /// _SERVICE._tcp.NAME.ZONE, or a bare NAME with --zone. An optional USER@ goes to ssh.
    #[arg(value_name = "[USER@]TARGET")]
    pub target: String,

    /// The zone, for a TARGET given without it (alice, or alice.ssh).
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,

    /// The service label for a bare NAME.
    #[arg(long, value_name = "SERVICE", default_value = "ssh")]
    pub service: String,

    /// Ask this DNS server (IP or IP:PORT, port 53 by default) instead of the system
    /// resolver, e.g. the gateway's own address.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_dns_server)]
    pub dns_server: Option<SocketAddr>,

    /// Print the ssh command instead of running it.
    #[arg(long, conflicts_with = "proxy")]
    pub print: bool,

    /// Connect stdin/stdout to the service instead of running ssh: the ProxyCommand mode that
    /// `srvgate ssh-config` sets up.
    #[arg(long)]
    pub proxy: bool,

    /// Arguments for ssh, after `--`, passed through unchanged after the destination.
    #[arg(last = true, value_name = "SSH ARGS")]
    pub ssh_args: Vec<OsString>,
}

/// Arguments of `srvgate ssh-config`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "\
Example:
  srvgate ssh-config --zone lab.example --dns-server 203.0.113.10 >> ~/.ssh/config
  ssh alice.ssh.lab.example")]
pub struct SshConfigArgs {
    /// The zone the gateway serves, e.g. lab.example.
    #[arg(long, value_name = "ZONE")]
    pub zone: String,

    /// The service label of the SSH routes: the block matches *.SERVICE.ZONE.
    #[arg(long, value_name = "SERVICE", default_value = "ssh")]
    pub service: String,

    /// The DNS server the ProxyCommand should ask (IP or IP:PORT) instead of the system
    /// resolver.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_dns_server)]
    pub dns_server: Option<SocketAddr>,

    /// The srvgate program ssh should run; by default this one (by name when it was found
    /// through PATH, else by its full path).
    #[arg(long, value_name = "PATH")]
    pub program: Option<PathBuf>,
}

/// `srvgate ssh`: resolves the target and replaces this process with ssh (or, with
/// `--proxy`, pipes stdin/stdout to the service; with `--print`, prints the command). Only
/// returns on failure.
pub fn ssh(args: SshArgs) -> anyhow::Result<Infallible> {
    if args.proxy {
        return proxy(&args);
    }
    let plan = plan(&args)?;
    if args.print {
        let mut out = io::stdout().lock();
        writeln!(out, "{}", shell_line(&plan.argv)).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
        std::process::exit(0);
    }
    run_ssh(&plan.argv)
}

/// Replaces this process with ssh, so signals and the terminal are ssh's alone.
#[cfg(unix)]
fn run_ssh(argv: &[OsString]) -> anyhow::Result<Infallible> {
    use std::os::unix::process::CommandExt as _;
    let error = Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(error).context("cannot run ssh (is OpenSSH's client installed and in PATH?)")
}

/// Elsewhere there is no exec: run ssh and leave with its exit code.
#[cfg(not(unix))]
fn run_ssh(argv: &[OsString]) -> anyhow::Result<Infallible> {
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .context("cannot run ssh (is OpenSSH's client installed and in PATH?)")?;
    std::process::exit(status.code().unwrap_or(1))
}

/// `srvgate ssh-config`: prints the `~/.ssh/config` block.
pub fn ssh_config(args: SshConfigArgs) -> anyhow::Result<()> {
    let text = ssh_config_text(&args)?;
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// What `srvgate ssh` will do: the name looked up, what it resolved to, and the full ssh
/// command line (`argv[0]` is `ssh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPlan {
    pub target: Target,
    pub endpoint: Endpoint,
    pub argv: Vec<OsString>,
}

/// Resolves `args.target` and builds the ssh command, without running anything.
pub fn plan(args: &SshArgs) -> anyhow::Result<SshPlan> {
    let target = Target::parse(&args.target, args.zone.as_deref(), &args.service)?;
    let endpoint = resolve::lookup(&target.srv_name, args.dns_server)?;
    let argv = ssh_argv(&target, &endpoint, &args.ssh_args);
    Ok(SshPlan {
        target,
        endpoint,
        argv,
    })
}

/// A command-line target, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `bob` of `bob@alice.ssh.lab.example`.
    pub user: Option<String>,
    /// The name to look up, e.g. `_ssh._tcp.alice.lab.example.`: always the RFC 2782 TCP
    /// form, because ssh is TCP and the short form may also list a UDP route's port.
    pub srv_name: String,
    /// The short form, e.g. `alice.ssh.lab.example`: the host key's name.
    pub service_host: String,
}

impl Target {
    /// Understands `[USER@]TARGET` as documented on [`SshArgs::target`]. `zone` applies to
    /// targets not already under it; `service` to a bare name.
    pub fn parse(target: &str, zone: Option<&str>, service: &str) -> anyhow::Result<Target> {
        let (user, host) = match target.rsplit_once('@') {
            Some((user, host)) if !user.is_empty() => (Some(user.to_string()), host),
            Some(_) => bail!("{target:?}: nothing before '@'; write USER@TARGET or just TARGET"),
            None => (None, target),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if host.is_empty() || host.split('.').any(str::is_empty) {
            bail!("{target:?} is not a DNS name");
        }
        let zone = zone
            .map(|z| {
                check_domain(&z.to_ascii_lowercase()).map_err(|e| anyhow::anyhow!("--zone {e}"))
            })
            .transpose()?;
        let labels: Vec<&str> = host.split('.').collect();

        let (name, service, zone) = if let Some(rest) = labels[0].strip_prefix('_') {
            // _SERVICE._tcp.NAME.ZONE
            match labels.as_slice() {
                [_, "_tcp", name, zone @ ..] if !zone.is_empty() => {
                    (name.to_string(), rest.to_string(), zone.join("."))
                }
                [_, "_tcp", ..] => bail!("{host:?}: expected _SERVICE._tcp.NAME.ZONE"),
                [_, proto, ..] if proto.starts_with('_') => {
                    bail!("{host:?}: ssh needs a TCP service; use _{rest}._tcp.NAME.ZONE")
                }
                _ => bail!("{host:?}: expected _SERVICE._tcp.NAME.ZONE"),
            }
        } else {
            let (relative, zone) = match &zone {
                Some(zone) if host == *zone => {
                    bail!("{host:?} is the zone itself, not an instance")
                }
                Some(zone) => match host.strip_suffix(&format!(".{zone}")) {
                    Some(relative) => (relative.to_string(), zone.clone()),
                    None => (host.clone(), zone.clone()),
                },
                None if labels.len() >= 3 => (labels[..2].join("."), labels[2..].join(".")),
                None => bail!(
                    "{host:?}: give the full name (NAME.SERVICE.ZONE, e.g. alice.ssh.lab.example) \
                     or the zone with --zone"
                ),
            };
            match relative.split('.').collect::<Vec<_>>().as_slice() {
                [name] => (name.to_string(), service.to_string(), zone),
                [name, service] => (name.to_string(), service.to_string(), zone),
                _ => bail!("{host:?}: expected NAME.SERVICE.{zone}"),
            }
        };
        for (what, label) in [("name", &name), ("service", &service)] {
            check_label(label).map_err(|e| anyhow::anyhow!("{host:?}: the {what} {e}"))?;
        }
        Ok(Target {
            user,
            srv_name: format!("_{service}._tcp.{name}.{zone}."),
            service_host: format!("{name}.{service}.{zone}"),
        })
    }
}

/// `ssh -p PORT -o HostKeyAlias=SERVICE_HOST [USER@]ADDRESS [SSH ARGS...]`. The destination
/// comes before the user's arguments so that a remote command among them stays a command;
/// OpenSSH reads options after the destination too.
pub fn ssh_argv(target: &Target, endpoint: &Endpoint, ssh_args: &[OsString]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["ssh".into(), "-p".into(), endpoint.port.to_string().into()];
    let user_alias = ssh_args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a.to_ascii_lowercase().contains("hostkeyalias"))
    });
    if !user_alias {
        argv.push("-o".into());
        argv.push(format!("HostKeyAlias={}", target.service_host).into());
    }
    let host = match endpoint.addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => a.to_string(),
    };
    argv.push(match &target.user {
        Some(user) => format!("{user}@{host}").into(),
        None => host.into(),
    });
    argv.extend(ssh_args.iter().cloned());
    argv
}

/// The `~/.ssh/config` block printed by `srvgate ssh-config`.
pub fn ssh_config_text(args: &SshConfigArgs) -> anyhow::Result<String> {
    let zone =
        check_domain(&args.zone.to_ascii_lowercase()).map_err(|e| anyhow::anyhow!("--zone {e}"))?;
    check_label(&args.service).map_err(|e| anyhow::anyhow!("--service {e}"))?;
    let program = match &args.program {
        Some(p) => p.clone(),
        None => default_program(),
    };
    let program = program
        .to_str()
        .with_context(|| format!("--program {}: not UTF-8", program.display()))?;
    Ok(text::ssh_config_block(
        &zone,
        &args.service,
        program,
        args.dns_server,
    ))
}

fn proxy(args: &SshArgs) -> anyhow::Result<Infallible> {
    if !args.ssh_args.is_empty() {
        bail!("--proxy takes no ssh arguments: ssh itself runs the proxy");
    }
    let target = Target::parse(&args.target, args.zone.as_deref(), &args.service)?;
    let endpoint = resolve::lookup(&target.srv_name, args.dns_server)?;
    let addr = SocketAddr::new(endpoint.addr, endpoint.port);
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).with_context(|| {
        format!(
            "connecting to {addr} ({} is {}:{} per DNS)",
            target.service_host, endpoint.target, endpoint.port
        )
    })?;
    // Keystrokes go out at once, as they would on ssh's own socket.
    stream.set_nodelay(true).ok();
    splice(io::stdin(), io::stdout(), stream).context("relaying between ssh and the service")?;
    std::process::exit(0)
}

/// Relays `input` -> `stream` and `stream` -> `output` until the service closes its side.
/// The upload direction runs on its own thread and is not waited for: once the service is
/// done, ssh is too, and blocking on its stdin would only delay the exit.
fn splice<R, W>(input: R, output: W, stream: TcpStream) -> io::Result<()>
where
    R: Read + Send + 'static,
    W: Write,
{
    let mut upstream = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = pump(input, &mut upstream);
        // Half-close: the service sees EOF, as with `ssh -W`.
        let _ = upstream.shutdown(Shutdown::Write);
    });
    pump(stream, output)
}

/// Copies until EOF, flushing every chunk: stdout is line-buffered, and SSH's binary packets
/// rarely end in a newline.
fn pump(mut from: impl Read, mut to: impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not IP or IP:PORT (e.g. 203.0.113.10 or 127.0.0.1:5353)"))
}

/// This program as ssh should call it: by name if it was started through PATH (the user's
/// ProxyCommand shell has the same PATH, and upgrades keep working), else by full path.
fn default_program() -> PathBuf {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if !argv0.is_empty() && !argv0.to_string_lossy().contains('/') {
        return PathBuf::from(argv0);
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("srvgate"))
}

fn shell_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| text::shell_word(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
