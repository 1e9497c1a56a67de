//! The accounts file: students, their token hashes and the ports cooling down, in
//! `accounts.json` beside the routes' state file, written the same crash-safe way (mode
//! 0600: it holds token hashes) and loaded as strictly: a file srvgate cannot read stops
//! the start with a reason, it is never emptied.

use std::{
    collections::BTreeMap,
    fs, io,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::table::{
    state::{from_unix, write_atomically, StateError},
    users::{User, Users},
};
use lb_model::parse_rules;

pub const ACCOUNTS_FILE: &str = "accounts.json";
const VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u64,
    users: Vec<RawUser>,
    #[serde(default)]
    cooldown: Vec<RawCooldown>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    backends: Vec<String>,
    max_routes: u32,
    #[serde(default)]
    admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_sha256: Option<String>,
    created_unix: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    from_config: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCooldown {
    port: u16,
    until_unix: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads `dir/accounts.json`; no file yet means no accounts.
pub fn load(dir: &Path) -> Result<Users, StateError> {
    let path = dir.join(ACCOUNTS_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Users::default()),
        Err(error) => {
            return Err(StateError::Io {
                path,
                action: "read the accounts file",
                error,
            })
        }
    };
    parse(&path, &bytes)
}

pub fn parse(path: &Path, bytes: &[u8]) -> Result<Users, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file: FileFormat = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("not a valid accounts file: {e}")))?;
    if file.version != VERSION {
        return Err(corrupt(format!(
            "format version {} (this srvgate reads version {VERSION})",
            file.version
        )));
    }
    let mut users = Vec::with_capacity(file.users.len());
    let mut names = std::collections::BTreeSet::new();
    for (i, u) in file.users.into_iter().enumerate() {
        let at = |what: &str| format!("users[{}].{what}", i + 1);
        lb_model::check_label(&u.name).map_err(|e| corrupt(format!("{}: {e}", at("name"))))?;
        if !names.insert(u.name.clone()) {
            return Err(corrupt(format!("{}: {} appears twice", at("name"), u.name)));
        }
        let backends =
            parse_rules(&u.backends).map_err(|e| corrupt(format!("{}: {e}", at("backends"))))?;
        let token_sha256 = match u.token_sha256 {
            None => None,
            Some(h) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(&h, &mut out)
                    .map_err(|_| corrupt(format!("{}: not 64 hex digits", at("token_sha256"))))?;
                Some(out)
            }
        };
        users.push(User {
            name: u.name,
            backends,
            max_routes: u.max_routes,
            admin: u.admin,
            token_sha256,
            created: from_unix(u.created_unix)
                .map_err(|e| corrupt(format!("{}: {e}", at("created_unix"))))?,
            from_config: u.from_config,
        });
    }
    let mut cooldown = BTreeMap::new();
    for (i, c) in file.cooldown.into_iter().enumerate() {
        let until = from_unix(c.until_unix)
            .map_err(|e| corrupt(format!("cooldown[{}].until_unix: {e}", i + 1)))?;
        cooldown.insert(c.port, until);
    }
    Ok(Users::new(users, cooldown))
}

pub fn render(users: &Users) -> String {
    let file = FileFormat {
        version: VERSION,
        users: users
            .all()
            .map(|u| RawUser {
                name: u.name.clone(),
                backends: u.backends.iter().map(ToString::to_string).collect(),
                max_routes: u.max_routes,
                admin: u.admin,
                token_sha256: u.token_sha256.map(hex::encode),
                created_unix: unix(u.created),
                from_config: u.from_config,
            })
            .collect(),
        cooldown: users
            .cooldown()
            .iter()
            .map(|(&port, &until)| RawCooldown {
                port,
                until_unix: unix(until),
            })
            .collect(),
    };
    // Plain strings and integers: serialising cannot fail.
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    text
}

pub fn save(dir: &Path, users: &Users) -> Result<(), StateError> {
    write_atomically(dir, ACCOUNTS_FILE, &render(users))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn accounts_round_trip_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Users::default());
        let mut users = Users::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = users
            .add(
                "alice",
                parse_rules(&["10.0.0.11".into(), "10.0.1.0/28:22".into()]).unwrap(),
                3,
                false,
                now,
            )
            .unwrap();
        users.add("root", vec![], 4, true, now).unwrap();
        users.cool(30001, now, Duration::from_secs(86400));
        save(dir.path(), &users).unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back, users);
        assert_eq!(back.authenticate(&token).unwrap().name, "alice");
        let path = dir.path().join(ACCOUNTS_FILE);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&token[9..]),
            "the token itself is never stored"
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        for bad in [
            "",
            "{}",
            r#"{"version":2,"users":[]}"#,
            r#"{"version":1,"users":[{"name":"Al!","backends":[],"max_routes":1,"created_unix":0}]}"#,
            r#"{"version":1,"users":[{"name":"a","backends":["127.0.0.1"],"max_routes":1,"created_unix":0}]}"#,
            r#"{"version":1,"users":[{"name":"a","backends":[],"max_routes":1,"token_sha256":"xyz","created_unix":0}]}"#,
            r#"{"version":1,"users":[{"name":"a","backends":[],"max_routes":1,"created_unix":0},{"name":"a","backends":[],"max_routes":1,"created_unix":0}]}"#,
        ] {
            fs::write(&path, bad).unwrap();
            let e = load(dir.path()).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{bad}: {e}");
        }
    }

    /// A created or cool-down time past any real date is corruption naming the field, not
    /// a panic (the old `UNIX_EPOCH + Duration::from_secs` overflowed).
    #[test]
    fn a_huge_stored_time_is_corruption_not_a_panic() {
        let huge = u64::MAX;
        for (text, field) in [
            (
                format!(
                    r#"{{"version":1,"users":[{{"name":"a","backends":[],"max_routes":1,"created_unix":{huge}}}]}}"#
                ),
                "users[1].created_unix",
            ),
            (
                format!(
                    r#"{{"version":1,"users":[],"cooldown":[{{"port":30001,"until_unix":{huge}}}]}}"#
                ),
                "cooldown[1].until_unix",
            ),
        ] {
            let e =
                parse(Path::new("/var/lib/srvgate/accounts.json"), text.as_bytes()).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
            let e = e.to_string();
            assert!(e.contains("accounts.json") && e.contains(field), "{e}");
        }
    }
}
