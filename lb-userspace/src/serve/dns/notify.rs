//! NOTIFY (RFC 1996) to the secondaries after the zone changes, and the transfer key and
//! serial kept in the state directory.
//!
//! Changes are coalesced: the first change wakes the notifier, which waits [`COALESCE`] so
//! that a burst (a config reload, a student claiming three ports) costs one NOTIFY per
//! secondary, then sends each a TSIG-signed NOTIFY for the serial current at that moment,
//! [`TRIES`] times [`TRY_TIMEOUT`] at most until it answers. A change during the sends wakes
//! it again afterwards, so none is lost. The serial is written to `dns-serial` at the same
//! time, so that a restarted gateway continues above it (a time-based serial alone goes
//! backwards after a burst of more changes than seconds).

use std::{
    fs,
    io::{self, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, Record, RecordType},
};
use ring::rand::SecureRandom;

use super::{tsig, xfr::Secondaries, Shared};
use crate::config;

/// How long the notifier waits after a change for more before it sends.
pub const COALESCE: Duration = Duration::from_millis(200);
/// How long a secondary has to answer a NOTIFY before it is sent again.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(1);
pub const TRIES: usize = 3;
/// The transfer key made in the state directory when the config names none.
pub const KEY_FILE: &str = "dns-xfr.key";
/// The last serial served, so a restart continues above it.
pub const SERIAL_FILE: &str = "dns-serial";
/// A key file is a base64 line; anything longer is not one.
const MAX_KEY_FILE: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("dns.secondaries.key_file {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("dns.secondaries.key_file {path}: readable by others (mode {mode:o}); chmod 600 it")]
    Mode { path: PathBuf, mode: u32 },
    #[error("dns.secondaries.key_file {path}: {reason}")]
    Content { path: PathBuf, reason: String },
}

/// The secondaries of the config with their key: `key_file`, or `dns-xfr.key` in the state
/// directory, made (32 random bytes, mode 0600) the first time.
pub fn load(cfg: &config::Secondaries, state_dir: &Path) -> Result<Secondaries, KeyError> {
    let path = match &cfg.key_file {
        Some(p) => p.clone(),
        None => {
            let p = state_dir.join(KEY_FILE);
            if !p.exists() {
                make_key(&p)?;
            }
            p
        }
    };
    let io_err = |error| KeyError::Io {
        path: path.clone(),
        error,
    };
    let meta = fs::metadata(&path).map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode { path, mode });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyError::Content {
            path,
            reason: format!("{} bytes; a key file is one base64 line", meta.len()),
        });
    }
    let text = fs::read_to_string(&path).map_err(io_err)?;
    let secret = data_encoding::BASE64
        .decode(text.trim().as_bytes())
        .map_err(|e| KeyError::Content {
            path: path.clone(),
            reason: format!("not base64: {e}"),
        })?;
    if secret.len() < 16 {
        return Err(KeyError::Content {
            path,
            reason: format!("a {}-byte secret; at least 16", secret.len()),
        });
    }
    let key = tsig::Key::new(&cfg.key_name, &secret).map_err(|reason| KeyError::Content {
        path: path.clone(),
        reason: format!("key_name {:?}: {reason}", cfg.key_name),
    })?;
    Ok(Secondaries {
        peers: cfg.peers.clone(),
        key,
    })
}

fn make_key(path: &Path) -> Result<(), KeyError> {
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| KeyError::Content {
            path: path.into(),
            reason: "no randomness to make a key from".into(),
        })?;
    let line = format!("{}\n", data_encoding::BASE64.encode(&secret));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| KeyError::Io {
            path: path.into(),
            error,
        })?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|error| KeyError::Io {
            path: path.into(),
            error,
        })?;
    tracing::info!(path = %path.display(), "made the zone transfer key (TSIG hmac-sha256); give its secret to the secondaries");
    Ok(())
}

/// The serial saved by the last run, if any.
pub fn saved_serial(state_dir: &Path) -> Option<u32> {
    fs::read_to_string(state_dir.join(SERIAL_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn save_serial(state_dir: &Path, serial: u32) {
    let tmp = state_dir.join(format!("{SERIAL_FILE}.tmp"));
    let result = fs::write(&tmp, format!("{serial}\n"))
        .and_then(|()| fs::rename(&tmp, state_dir.join(SERIAL_FILE)));
    if let Err(error) = result {
        tracing::warn!(%error, "DNS: cannot save the zone's serial; a restart may reuse one");
    }
}

/// Runs until the server stops: waits for a change, coalesces, saves the serial, notifies.
pub(super) async fn run(shared: Arc<Shared>, state_dir: Option<PathBuf>) {
    let Some(secondaries) = shared.secondaries.get().cloned() else {
        return;
    };
    let mut sent: Option<u32> = None;
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(COALESCE).await;
        let zone = shared.zone.load_full();
        let serial = zone.serial();
        if let Some(dir) = &state_dir {
            save_serial(dir, serial);
        }
        if sent == Some(serial) {
            continue;
        }
        sent = Some(serial);
        let origin = Name::from(zone.origin().clone());
        let mut sends = tokio::task::JoinSet::new();
        for &peer in &secondaries.peers {
            let (secondaries, origin) = (secondaries.clone(), origin.clone());
            let soa = zone.soa().clone();
            sends.spawn(async move {
                match notify(&secondaries.key, peer, &origin, &soa).await {
                    Ok(true) => tracing::debug!(%peer, serial, "NOTIFY answered"),
                    Ok(false) => tracing::warn!(%peer, serial, "NOTIFY: no answer after {TRIES} tries; the secondary catches up at its SOA refresh"),
                    Err(error) => tracing::warn!(%peer, serial, %error, "NOTIFY not sent"),
                }
            });
        }
        while sends.join_next().await.is_some() {}
    }
}

/// Sends one signed NOTIFY with `soa` to `peer`, again until it answers; whether it did.
pub async fn notify(
    key: &tsig::Key,
    peer: SocketAddr,
    origin: &Name,
    soa: &Record,
) -> io::Result<bool> {
    let local: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(peer).await?;
    let mut id = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut id);
    let id = u16::from_be_bytes(id);
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    m.add_query(Query::query(origin.clone(), RecordType::SOA));
    // The new SOA as a hint (RFC 1996 section 3.7); the secondary asks for it anyway.
    m.add_answer(soa.clone());
    let wire = m.to_vec().map_err(io::Error::other)?;
    let mut buf = [0u8; 1024];
    for _ in 0..TRIES {
        let mut signed = wire.clone();
        tsig::sign(
            key,
            &mut signed,
            tsig::Chain::Request,
            super::unix_now().into(),
        );
        socket.send(&signed).await?;
        let deadline = tokio::time::Instant::now() + TRY_TIMEOUT;
        loop {
            let Ok(got) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await else {
                break;
            };
            // Refused (ICMP: the secondary is not up yet) is like no answer: the next try
            // after the timeout, not at once.
            let Ok(n) = got else {
                tokio::time::sleep_until(deadline).await;
                break;
            };
            if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
                let rcode = buf[3] & 0x0f;
                if rcode != 0 {
                    tracing::warn!(%peer, rcode, "NOTIFY answered with an error (the secondary's acl or key?)");
                }
                return Ok(true);
            }
        }
    }
    Ok(false)
}
