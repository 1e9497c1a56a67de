//! `srvgate backup` / `srvgate restore`: everything a gateway keeps, in one file.
//!
//! A backup is one JSON document, mode 0600 (it holds token hashes and private keys):
//!
//! ```json
//! { "srvgate_backup": 1, "created_unix": 1765152000, "host": "gw1",
//!   "routes":   { "version": 1, "routes": [ ... ] },             // routes.json's format
//!   "accounts": { "version": 1, "users": [ ... ], "cooldown": [ ... ] },  // accounts.json's
//!   "files":    [ { "path": "portal.key", "mode": 384, "hex": "2d2d..." } ] }
//! ```
//!
//! `srvgate_backup` is the header: the format's version, checked before anything else.
//! The runtime routes (with their ports, added and last-seen times) and the accounts (token
//! hashes, quotas, the ports cooling down) are written by the state files' own encoders and
//! read back through their own parsers (`state::parse`, `accounts::parse`), so a backup is
//! checked by exactly the rules a state directory is, and an error names the record
//! (`backup.json: routes: routes[2].port: ...`). `files` are the other files of the state
//! directory (the portal's certificate and key, and whatever key a later feature keeps
//! there), each bounded in size.
//!
//! Consistency while the daemon runs: the routes and accounts come from the daemon
//! (`GET /v1/backup`), copied under its lock, so they are one moment of the table; with no
//! daemon, from the state directory under its lock (no daemon can start meanwhile). Files
//! are read by the CLI itself: each is replaced atomically by whoever writes it.

use std::{
    fs,
    io::{self, Write as _},
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{accounts, journal, StateError, Store, StoredRoute, STATE_FILE};
use crate::table::users::Users;

/// The format this build writes and reads.
pub const BACKUP_VERSION: u64 = 1;
/// A backup larger than this is refused before it is parsed (a full table of 30 000
/// routes and its accounts is a few megabytes).
pub const MAX_BACKUP_BYTES: u64 = 64 << 20;
/// A state-directory file larger than this is not a key: refused rather than copied.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// At most this many files, at most this deep below the state directory.
pub const MAX_FILES: usize = 256;
const MAX_DEPTH: usize = 4;

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub created: SystemTime,
    /// The machine it was taken on, for the admin's eyes only.
    pub host: String,
    pub routes: Vec<StoredRoute>,
    pub users: Users,
    pub files: Vec<KeyFile>,
}

/// One file of the state directory other than the routes and accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    /// Relative to the state directory, without `..`.
    pub path: PathBuf,
    /// Permission bits (`0o600`, ...).
    pub mode: u32,
    pub bytes: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    srvgate_backup: u64,
    created_unix: u64,
    #[serde(default)]
    host: String,
    routes: serde_json::Value,
    accounts: serde_json::Value,
    #[serde(default)]
    files: Vec<RawFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: String,
    mode: u32,
    hex: String,
}

/// The document's text.
pub fn render(b: &Backup) -> String {
    let value = |text: String| serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let doc = Document {
        srvgate_backup: BACKUP_VERSION,
        created_unix: b
            .created
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host: b.host.clone(),
        // The state files' own encoders: one writer per format.
        routes: value(super::render(&b.routes)),
        accounts: value(accounts::render(&b.users)),
        files: b
            .files
            .iter()
            .map(|f| RawFile {
                path: f.path.to_string_lossy().into_owned(),
                mode: f.mode,
                hex: hex::encode(&f.bytes),
            })
            .collect(),
    };
    // Strings, integers and values that came from JSON: serialising cannot fail.
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads and checks a backup: the header, then every route and account by the state
/// files' own rules (`public_ipv4` as the gateway's address, `Ipv4Addr::UNSPECIFIED` when
/// not known), then every file's path and size. `path` names the backup in errors.
pub fn parse(path: &Path, bytes: &[u8], public_ipv4: Ipv4Addr) -> Result<Backup, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() as u64 > MAX_BACKUP_BYTES {
        return Err(corrupt(format!(
            "{} bytes is more than a backup can be ({MAX_BACKUP_BYTES})",
            bytes.len()
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("not a srvgate backup (not JSON: {e})")))?;
    match value.get("srvgate_backup").map(serde_json::Value::as_u64) {
        Some(Some(BACKUP_VERSION)) => {}
        Some(Some(v)) => {
            return Err(corrupt(format!(
                "backup format version {v}; this srvgate reads version {BACKUP_VERSION}"
            )))
        }
        _ => {
            return Err(corrupt(
                "not a srvgate backup (no \"srvgate_backup\" version header)".into(),
            ))
        }
    }
    let doc: Document = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
    let part = |name: &str| PathBuf::from(format!("{}: {name}", path.display()));
    let routes_text = serde_json::to_vec(&doc.routes).unwrap_or_default();
    let routes = super::parse(&part("routes"), &routes_text, public_ipv4)?;
    let accounts_text = serde_json::to_vec(&doc.accounts).unwrap_or_default();
    let users = accounts::parse(&part("accounts"), &accounts_text)?;
    if doc.files.len() > MAX_FILES {
        return Err(corrupt(format!(
            "files: {} files, at most {MAX_FILES}",
            doc.files.len()
        )));
    }
    let mut files = Vec::with_capacity(doc.files.len());
    for (i, f) in doc.files.into_iter().enumerate() {
        let at = |what: &str| format!("files[{}].{what}", i + 1);
        let rel = check_file_path(&f.path).map_err(|e| corrupt(format!("{}: {e}", at("path"))))?;
        if f.mode & !0o777 != 0 {
            return Err(corrupt(format!(
                "{}: {:o} is not a permission mode",
                at("mode"),
                f.mode
            )));
        }
        let bytes = hex::decode(&f.hex)
            .map_err(|e| corrupt(format!("{} ({}): not hex: {e}", at("hex"), f.path)))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(corrupt(format!(
                "{} ({}): {} bytes, at most {MAX_FILE_BYTES}",
                at("hex"),
                f.path,
                bytes.len()
            )));
        }
        files.push(KeyFile {
            path: rel,
            mode: f.mode,
            bytes,
        });
    }
    let created =
        super::from_unix(doc.created_unix).map_err(|e| corrupt(format!("created_unix: {e}")))?;
    Ok(Backup {
        created,
        host: doc.host,
        routes,
        users,
        files,
    })
}

/// A file's path from a backup: relative, plain names only, and not one of the files the
/// routes and accounts are restored to.
fn check_file_path(text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text);
    let plain = !text.is_empty()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && path.components().count() <= MAX_DEPTH;
    if !plain {
        return Err(format!(
            "{text:?} is not a relative path of plain names inside the state directory"
        ));
    }
    if is_state_record(path) {
        return Err(format!(
            "{text:?} is one of the state files (routes and accounts travel in their own fields)"
        ));
    }
    Ok(path.to_path_buf())
}

/// Whether `rel` (relative to the state directory) is one of the files the store itself
/// owns: the routes, their journal, the accounts, the lock, or a temporary file.
fn is_state_record(rel: &Path) -> bool {
    let Some(name) = rel.to_str() else {
        return false;
    };
    name == STATE_FILE
        || name == accounts::ACCOUNTS_FILE
        || name == "lock"
        || name.ends_with(".tmp")
        || name.starts_with(journal::SEGMENT_PREFIX)
}

/// Every other file of the state directory (see the module docs), sorted by path.
pub fn read_files(dir: &Path) -> Result<Vec<KeyFile>, StateError> {
    let mut out = Vec::new();
    walk(dir, Path::new(""), 0, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(root: &Path, rel: &Path, depth: usize, out: &mut Vec<KeyFile>) -> Result<(), StateError> {
    let dir = root.join(rel);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |error| StateError::Io {
            path,
            action,
            error,
        }
    };
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound && depth == 0 => return Ok(()),
        Err(e) => return Err(io("list the state directory", &dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("list the state directory", &dir))?;
        let name = rel.join(entry.file_name());
        if is_state_record(&name) {
            continue;
        }
        let full = root.join(&name);
        // Not followed: a link could take the backup out of the state directory.
        let meta = fs::symlink_metadata(&full).map_err(io("inspect", &full))?;
        if meta.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                return Err(StateError::Corrupt {
                    path: full,
                    reason: format!("more than {MAX_DEPTH} directories deep in the state directory; srvgate keeps nothing there"),
                });
            }
            walk(root, &name, depth + 1, out)?;
        } else if meta.is_file() {
            if meta.len() > MAX_FILE_BYTES {
                return Err(StateError::Corrupt {
                    path: full,
                    reason: format!(
                        "{} bytes: more than a key file can be ({MAX_FILE_BYTES}); move it out of the state directory",
                        meta.len()
                    ),
                });
            }
            if out.len() >= MAX_FILES {
                return Err(StateError::Corrupt {
                    path: dir.clone(),
                    reason: format!("more than {MAX_FILES} files in the state directory"),
                });
            }
            let bytes = fs::read(&full).map_err(io("read", &full))?;
            out.push(KeyFile {
                path: name,
                mode: meta.permissions().mode() & 0o777,
                bytes,
            });
        } else {
            tracing::warn!(
                "backup: {} is neither a file nor a directory; not copied",
                full.display()
            );
        }
    }
    Ok(())
}

/// What restoring into `dir` would replace: the routes, their journal, the accounts, and
/// any of `files` that exists. Empty means a fresh machine.
pub fn existing(dir: &Path, files: &[KeyFile]) -> Result<Vec<String>, StateError> {
    let mut found = Vec::new();
    for name in [STATE_FILE, accounts::ACCOUNTS_FILE] {
        if dir.join(name).exists() {
            found.push(name.to_string());
        }
    }
    for (n, _) in journal::segments(dir)? {
        found.push(format!("{}{n}", journal::SEGMENT_PREFIX));
    }
    for f in files {
        if dir.join(&f.path).exists() {
            found.push(f.path.display().to_string());
        }
    }
    Ok(found)
}

/// Writes `b`'s routes and accounts into `store` (replacing what it holds) and its files
/// into `dir`, each file atomically with its mode.
pub fn restore(store: &mut dyn Store, dir: &Path, b: &Backup) -> Result<(), StateError> {
    store.save_routes(&b.routes)?;
    store.save_accounts(&b.users)?;
    for f in &b.files {
        write_file(dir, f)?;
    }
    Ok(())
}

fn write_file(dir: &Path, f: &KeyFile) -> Result<(), StateError> {
    let target = dir.join(&f.path);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |error| StateError::Io {
            path,
            action,
            error,
        }
    };
    let parent = target.parent().unwrap_or(dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(io("create", parent))?;
    let tmp = target.with_file_name(format!(
        "{}.tmp",
        target.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(&f.bytes).map_err(io("write", &tmp))?;
    // The mode is set on the open file: `mode()` above is filtered by the umask.
    file.set_permissions(fs::Permissions::from_mode(f.mode))
        .map_err(io("set the mode of", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(io("rename the restored file into", &target))?;
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::state::StateStore;
    use lb_model::parse_rules;
    use std::time::Duration;

    fn sample(dir: &Path) -> (Backup, String) {
        let now = UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let mut users = Users::default();
        let token = users
            .add(
                "alice",
                parse_rules(&["10.0.0.11".into()]).unwrap(),
                3,
                false,
                now,
            )
            .unwrap();
        users.cool(30007, now, Duration::from_secs(86400));
        let text = r#"{"version":1,"routes":[
            {"name":"alice","service":"ssh","protocol":"tcp","backend":"10.0.0.11:22","port":30001,"added_unix":1765000000,"last_seen_unix":1765000100},
            {"name":"alice","service":"web","protocol":"tcp","backends":["10.0.0.11:80","10.0.0.11:81 weight=2"],"port":30002,"added_unix":1765000000}]}"#;
        let routes =
            crate::table::state::parse(dir, text.as_bytes(), Ipv4Addr::UNSPECIFIED).unwrap();
        let b = Backup {
            created: now,
            host: "gw1".into(),
            routes,
            users,
            files: vec![KeyFile {
                path: "portal.key".into(),
                mode: 0o600,
                bytes: b"-----BEGIN PRIVATE KEY-----\n\x00\xff".to_vec(),
            }],
        };
        (b, token)
    }

    #[test]
    fn a_backup_round_trips_and_restores_into_a_fresh_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (b, token) = sample(dir.path());
        let text = render(&b);
        assert!(text.starts_with("{\n  \"srvgate_backup\": 1,"), "{text}");
        assert!(
            !text.contains(&token[9..]),
            "the token itself is never written"
        );
        let back = parse(Path::new("b.json"), text.as_bytes(), Ipv4Addr::UNSPECIFIED).unwrap();
        assert_eq!(back, b);

        let target = tempfile::tempdir().unwrap();
        assert!(existing(target.path(), &back.files).unwrap().is_empty());
        let mut store = StateStore::open(target.path()).unwrap();
        restore(&mut store, target.path(), &back).unwrap();
        assert_eq!(store.load(Ipv4Addr::UNSPECIFIED).unwrap(), b.routes);
        let users = accounts::load(target.path()).unwrap();
        assert_eq!(users.authenticate(&token).unwrap().name, "alice");
        assert_eq!(users.cooldown(), b.users.cooldown());
        let key = target.path().join("portal.key");
        assert_eq!(fs::read(&key).unwrap(), b.files[0].bytes);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The directory now holds state: a second restore would replace it.
        let found = existing(target.path(), &back.files).unwrap();
        assert_eq!(found, ["routes.json", "accounts.json", "portal.key"]);
        // And what it holds is taken back by a backup of the directory's files.
        assert_eq!(read_files(target.path()).unwrap(), b.files);
    }

    #[test]
    fn a_bad_record_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = sample(dir.path());
        let good = render(&b);
        let cases = [
            (
                good.replace("\"srvgate_backup\": 1", "\"srvgate_backup\": 9"),
                "version 9",
            ),
            (
                good.replace("\"srvgate_backup\": 1,", ""),
                "no \"srvgate_backup\"",
            ),
            (
                good.replace("\"port\": 30002", "\"port\": 30001"),
                "routes[2].port",
            ),
            (
                good.replace("10.0.0.11:81", "203.0.113.10:81"),
                "routes[2].backends",
            ),
            (
                good.replace("\"max_routes\": 3", "\"max_routes\": -1"),
                "accounts",
            ),
            (
                good.replace("\"portal.key\"", "\"../etc/shadow\""),
                "files[1].path",
            ),
            (
                good.replace("\"portal.key\"", "\"routes.json\""),
                "files[1].path",
            ),
            (
                good.replace("\"mode\": 384", "\"mode\": 4096"),
                "files[1].mode",
            ),
            ("[]".to_string(), "no \"srvgate_backup\""),
        ];
        for (text, names) in cases {
            let e = parse(
                Path::new("b.json"),
                text.as_bytes(),
                "203.0.113.10".parse().unwrap(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("b.json") && e.contains(names), "{names}: {e}");
        }
    }

    #[test]
    fn the_state_files_are_not_copied_as_files_and_big_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "routes.json",
            "accounts.json",
            "lock",
            "routes.journal.3",
            "x.tmp",
        ] {
            fs::write(dir.path().join(name), "{}").unwrap();
        }
        fs::create_dir(dir.path().join("keys")).unwrap();
        fs::write(dir.path().join("keys/tsig.key"), "secret").unwrap();
        let files = read_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, Path::new("keys/tsig.key"));
        fs::write(
            dir.path().join("huge"),
            vec![0u8; MAX_FILE_BYTES as usize + 1],
        )
        .unwrap();
        let e = read_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("huge"), "{e}");
    }
}
