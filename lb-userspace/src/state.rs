//! The state file: the runtime routes (those added through the control API), their public
//! ports and their activity times, so that a restarted daemon gives every route the port it
//! had and reclaims by real idleness. Config routes are not stored: the config file is their
//! source.
//!
//! Writes are crash-safe: the whole table goes to `routes.json.tmp`, which is fsynced and
//! renamed over `routes.json`, then the directory is fsynced; a reader sees the old file or
//! the new one, never a mix. Loading is strict: a file that does not parse, has an unknown
//! version or holds an invalid route is an error naming the file and the problem, never
//! silently emptied, because emptying it would hand the students' ports to others.
//!
//! A lock (`File::try_lock`, an exclusive `flock`, on `lock` in the same directory) keeps two
//! daemons from sharing one state directory; the kernel drops it when the process dies, even
//! by SIGKILL.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{check_route, Route, RouteRequest},
    users::Users,
};

/// Where `srvgate run` keeps its state unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/srvgate";
/// The file's name inside the state directory.
pub const STATE_FILE: &str = "routes.json";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    #[error("{}: the state file is corrupt: {reason}\n  srvgate never empties it by itself: repair it, or move it away to start without runtime routes (their ports are then lost)", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: written by another srvgate version (format version {found}; this one reads version {FORMAT_VERSION})", path.display())]
    Version { path: PathBuf, found: u64 },
    #[error("{}: another srvgate is running with this state directory (it holds the lock); stop it first, or give this one its own --state-dir", path.display())]
    Locked { path: PathBuf },
}

/// One runtime route as the daemon keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoute {
    pub route: Route,
    pub added: SystemTime,
    pub last_seen: Option<SystemTime>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u64,
    routes: Vec<RawRoute>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    service: String,
    protocol: String,
    backend: String,
    port: u16,
    /// Seconds since the Unix epoch.
    added_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen_unix: Option<u64>,
}

/// What the daemon persists, wherever it is kept. [`StateStore`] (a local directory) is the
/// implementation `srvgate run` uses; a store shared by several gateways (etcd) would be a
/// second one. Each kind of record has its own load/save pair, replaced as a whole: runtime
/// routes now, users, tokens and port allocations next, each its own pair (and file).
///
/// Loading is strict (see the module docs): a store it cannot read is an error, never "none".
/// Saving is all or nothing: after an error the previous contents are still what a load
/// returns.
pub trait Store: Send {
    /// Names the store in messages: a path, or a URL.
    fn location(&self) -> String;
    /// The runtime routes; none stored yet means none. `public_ipv4` is checked like a
    /// config route's backend would be.
    fn load_routes(&self, public_ipv4: Ipv4Addr) -> Result<Vec<StoredRoute>, StateError>;
    /// Replaces the runtime routes with `routes`.
    fn save_routes(&mut self, routes: &[StoredRoute]) -> Result<(), StateError>;
    /// The accounts and port cool-downs; none stored yet means none.
    fn load_accounts(&self) -> Result<Users, StateError>;
    fn save_accounts(&mut self, users: &Users) -> Result<(), StateError>;
}

impl Store for StateStore {
    fn location(&self) -> String {
        self.file.display().to_string()
    }
    fn load_routes(&self, public_ipv4: Ipv4Addr) -> Result<Vec<StoredRoute>, StateError> {
        self.load(public_ipv4)
    }
    fn save_routes(&mut self, routes: &[StoredRoute]) -> Result<(), StateError> {
        self.save(routes)
    }
    fn load_accounts(&self) -> Result<Users, StateError> {
        crate::accounts::load(&self.dir)
    }
    fn save_accounts(&mut self, users: &Users) -> Result<(), StateError> {
        crate::accounts::save(&self.dir, users)
    }
}

/// The state directory, locked for this process.
pub struct StateStore {
    dir: PathBuf,
    file: PathBuf,
    _lock: File,
}

impl StateStore {
    /// Creates `dir` (mode 0700) if needed and takes its lock.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| StateError::Io {
                path: dir.to_path_buf(),
                action: "create the state directory",
                error,
            })?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|error| StateError::Io {
                path: lock_path.clone(),
                action: "open the lock file",
                error,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(error)) => {
                return Err(StateError::Io {
                    path: lock_path,
                    action: "lock the state directory",
                    error,
                })
            }
        }
        Ok(StateStore {
            dir: dir.to_path_buf(),
            file: dir.join(STATE_FILE),
            _lock: lock,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Reads the stored routes; no file yet means none. `public_ipv4` is checked against
    /// like a config route's backend would be.
    pub fn load(&self, public_ipv4: Ipv4Addr) -> Result<Vec<StoredRoute>, StateError> {
        let bytes = match fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(StateError::Io {
                    path: self.file.clone(),
                    action: "read the state file",
                    error,
                })
            }
        };
        parse(&self.file, &bytes, public_ipv4)
    }

    /// Replaces the stored routes with `routes`, crash-safely.
    pub fn save(&self, routes: &[StoredRoute]) -> Result<(), StateError> {
        write_atomically(&self.dir, STATE_FILE, &render(routes))
    }

    /// The state directory (other files of the daemon's state live beside the routes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Replaces `dir/name` with `text` so that a crash leaves the old file or the new one,
/// never a mix: write `name.tmp` (mode 0600), fsync, rename over, fsync the directory.
pub fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), StateError> {
    let file = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |error| StateError::Io {
            path,
            action,
            error,
        }
    };
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, &file).map_err(io("rename the new file into", &file))?;
    // The rename itself is durable only once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the state directory", dir))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The file's text for `routes`, sorted so that successive versions diff cleanly.
pub fn render(routes: &[StoredRoute]) -> String {
    let mut raw: Vec<RawRoute> = routes
        .iter()
        .map(|s| RawRoute {
            name: s.route.name.clone(),
            service: s.route.service.clone(),
            protocol: s.route.protocol.to_string(),
            backend: s.route.backend.to_string(),
            port: s.route.port,
            added_unix: unix(s.added),
            last_seen_unix: s.last_seen.map(unix),
        })
        .collect();
    raw.sort_by(|a, b| (&a.name, &a.service, &a.protocol).cmp(&(&b.name, &b.service, &b.protocol)));
    let file = FileFormat {
        version: FORMAT_VERSION.into(),
        routes: raw,
    };
    // Serialising plain strings and integers cannot fail.
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    text
}

/// Parses and validates a state file's contents; `path` only names it in errors.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    public_ipv4: Ipv4Addr,
) -> Result<Vec<StoredRoute>, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // The writer never leaves an empty file, so this is damage, not "no routes".
        return Err(corrupt(
            "it is empty (srvgate always writes a version and a route list)".into(),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    match value.get("version").map(|v| v.as_u64()) {
        Some(Some(v)) if v == u64::from(FORMAT_VERSION) => {}
        Some(Some(found)) => {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found,
            })
        }
        Some(None) => return Err(corrupt("\"version\" is not a number".into())),
        None => return Err(corrupt("it has no \"version\" field".into())),
    }
    let file: FileFormat = serde_json::from_value(value).map_err(|e| corrupt(format!("{e}")))?;

    let mut problems = Vec::new();
    let mut keys = HashSet::new();
    let mut ports = HashSet::new();
    let mut backends = HashSet::new();
    let mut routes = Vec::with_capacity(file.routes.len());
    for (i, r) in file.routes.into_iter().enumerate() {
        let n = i + 1;
        let field = |f: &str| format!("routes[{n}].{f}");
        let request = RouteRequest {
            name: r.name,
            service: r.service,
            protocol: Some(r.protocol),
            backend: r.backend,
            port: Some(r.port),
        };
        // The port range is not checked: a range narrowed in the config later must not
        // take allocated ports away.
        let route = match check_route(&request, Some(public_ipv4), None, &field) {
            Ok(_) if r.port == 0 => {
                problems.push(format!("{}: 0 is not a port", field("port")));
                continue;
            }
            Ok(d) => d.with_port(r.port),
            Err(errors) => {
                problems.extend(errors.iter().map(ToString::to_string));
                continue;
            }
        };
        if !keys.insert(route.key()) {
            problems.push(format!("{}: {} appears twice", field("name"), route.key()));
            continue;
        }
        if !ports.insert((route.port, route.protocol)) {
            problems.push(format!(
                "{}: {}/{} is used twice",
                field("port"),
                route.port,
                route.protocol
            ));
            continue;
        }
        if !backends.insert((route.backend, route.protocol)) {
            problems.push(format!(
                "{}: {}/{} is the backend of two routes",
                field("backend"),
                route.backend,
                route.protocol
            ));
            continue;
        }
        routes.push(StoredRoute {
            route,
            added: from_unix(r.added_unix),
            last_seen: r.last_seen_unix.map(from_unix),
        });
    }
    if problems.is_empty() {
        Ok(routes)
    } else {
        Err(corrupt(format!(
            "invalid routes:\n    {}",
            problems.join("\n    ")
        )))
    }
}

#[cfg(test)]
mod tests;
