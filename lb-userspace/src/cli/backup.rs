//! `srvgate backup FILE` and `srvgate restore FILE`: the verbs around `table::state::backup`
//! (the format and its checks live there). A backup is taken from the running daemon
//! (consistent under its lock) or, with none running, from the state directory under its
//! lock; a restore goes into a stopped gateway's state directory, or into the cluster's
//! etcd when the config has `[cluster]`, and refuses to replace existing state unless
//! `--force`.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{anyhow, Context as _};
use lb_client::Failure;

use crate::{
    api::Client,
    cluster::EtcdStore,
    config::Config,
    table::state::{
        accounts,
        backup::{self, Backup, MAX_BACKUP_BYTES},
        StateError, StateStore, Store,
    },
};

#[derive(clap::Args)]
pub struct BackupArgs {
    /// Where to write the backup (mode 0600: it holds token hashes and private keys).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The running daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The state directory (its keys are copied; with no daemon running, its routes and
    /// accounts too).
    #[arg(long, value_name = "DIR", default_value = crate::table::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// A file written by `srvgate backup`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The state directory to restore into (srvgate must be stopped).
    #[arg(long, value_name = "DIR", default_value = crate::table::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The gateway's config: routes are checked against its public address, and with
    /// `[cluster]` the routes and accounts go into its etcd.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Replace existing routes, accounts and files.
    #[arg(long)]
    pub force: bool,
}

fn state_failure(e: StateError) -> Failure {
    match e {
        StateError::Io { .. } | StateError::Unavailable { .. } => Failure::runtime(e),
        other => Failure::input(other),
    }
}

pub fn backup(args: BackupArgs) -> Result<(), Failure> {
    let (mut b, from) = match Client::new(&args.socket).backup() {
        Ok(bytes) => {
            let b = backup::parse(
                Path::new("the daemon's answer"),
                &bytes,
                Ipv4Addr::UNSPECIFIED,
            )
            .map_err(Failure::runtime)?;
            (b, "the running daemon")
        }
        Err(e) if e.no_daemon() => (offline(&args.state_dir)?, "the state directory"),
        Err(e) if e.is_bad_input() => return Err(Failure::input(e)),
        Err(e) => return Err(Failure::runtime(e)),
    };
    b.files = backup::read_files(&args.state_dir).map_err(state_failure)?;
    b.host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    write_private(&args.file, backup::render(&b).as_bytes())
        .with_context(|| format!("writing {}", args.file.display()))
        .map_err(Failure::runtime)?;
    println!(
        "{}: {} runtime routes, {} accounts, {} files (from {from})",
        args.file.display(),
        b.routes.len(),
        b.users.all().count(),
        b.files.len()
    );
    Ok(())
}

/// The routes and accounts of a state directory no daemon runs on, read under its lock.
fn offline(dir: &Path) -> Result<Backup, Failure> {
    if !dir.is_dir() {
        return Err(Failure::input(anyhow!(
            "{}: no such state directory, and no daemon answers on the control socket",
            dir.display()
        )));
    }
    let store = StateStore::open(dir).map_err(state_failure)?;
    Ok(Backup {
        created: SystemTime::now(),
        host: String::new(),
        routes: store.load(Ipv4Addr::UNSPECIFIED).map_err(state_failure)?,
        users: accounts::load(dir).map_err(state_failure)?,
        files: Vec::new(),
    })
}

/// Writes `bytes` to `path` with mode 0600 from the start, atomically (temp file, fsync,
/// rename), so a half-written backup never replaces a good one.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("not a file name"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    Ok(())
}

pub fn restore(args: RestoreArgs) -> Result<(), Failure> {
    let cfg = match &args.config {
        Some(p) => Some(Config::load(p).map_err(Failure::input)?),
        None => None,
    };
    let public = cfg
        .as_ref()
        .map_or(Ipv4Addr::UNSPECIFIED, |c| c.gateway.public_ipv4);
    let mut file = fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))
        .map_err(Failure::input)?;
    let mut bytes = Vec::new();
    // One byte over the bound is enough to refuse it.
    (&mut file)
        .take(MAX_BACKUP_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", args.file.display()))
        .map_err(Failure::runtime)?;
    let b = backup::parse(&args.file, &bytes, public).map_err(state_failure)?;

    let shared = cfg.as_ref().is_some_and(|c| c.cluster.is_some());
    let mut store: Box<dyn Store> = match cfg.as_ref().and_then(|c| c.cluster.as_ref()) {
        Some(cluster) => {
            let store = EtcdStore::connect(cluster).map_err(state_failure)?;
            let held = store.load_routes(public).map_err(state_failure)?.len();
            let accounts = store.load_accounts().map_err(state_failure)?.all().count();
            if (held > 0 || accounts > 0) && !args.force {
                return Err(Failure::input(anyhow!(
                    "{}: the cluster already holds {held} runtime routes and {accounts} accounts; restoring would replace them (--force to do so)",
                    store.location()
                )));
            }
            Box::new(store)
        }
        None => Box::new(StateStore::open(&args.state_dir).map_err(state_failure)?),
    };
    let mut found = backup::existing(&args.state_dir, &b.files).map_err(state_failure)?;
    if shared {
        // In a cluster the routes and accounts live in etcd (checked above); only the
        // files are local.
        found.retain(|f| b.files.iter().any(|k| k.path == Path::new(f)));
    }
    if !found.is_empty() && !args.force {
        return Err(Failure::input(anyhow!(
            "{}: already holds {}; restoring would replace them (--force to do so)",
            args.state_dir.display(),
            found.join(", ")
        )));
    }
    backup::restore(&mut *store, &args.state_dir, &b).map_err(state_failure)?;
    println!(
        "restored {} runtime routes, {} accounts and {} files into {} (taken on {} at {}); start srvgate",
        b.routes.len(),
        b.users.all().count(),
        b.files.len(),
        store.location(),
        if b.host.is_empty() { "?" } else { &b.host },
        b.created
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    Ok(())
}
