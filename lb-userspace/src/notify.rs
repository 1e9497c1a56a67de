//! The systemd readiness protocol (`sd_notify`), for `Type=notify` units: one datagram of
//! `KEY=value` lines to the socket named by `$NOTIFY_SOCKET`. Without that variable (not
//! started by systemd) every call is a no-op, so the daemon calls these unconditionally.
//!
//! Written out rather than taken from a crate because it is a dozen lines and must also
//! reach abstract sockets (`@name`), which container managers hand out.
//!
//! The daemon sends `READY=1` only after its "srvgate ready" line, i.e. with XDP attached and
//! every socket listening.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

/// Name of the environment variable systemd sets for services with `Type=notify`.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=value` assignments) to `$NOTIFY_SOCKET`. Returns
/// whether a manager was listening for it (`false` when the variable is unset).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(path) if !path.is_empty() => send_to(&path, state).map(|()| true),
        _ => Ok(false),
    }
}

fn send_to(path: &OsStr, state: &str) -> io::Result<()> {
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(path)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{NOTIFY_SOCKET}={path:?} is neither a path nor an abstract socket"),
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification was truncated",
        ));
    }
    Ok(())
}

/// A `STATUS=` line: one line of free text that `systemctl status` shows.
fn status_line(status: &str) -> String {
    // A newline would end the assignment and start another one.
    format!("STATUS={}", status.replace('\n', " "))
}

/// Tells the manager that start-up (or a reload) is complete, with a status line.
pub fn ready(status: &str) -> io::Result<bool> {
    notify(&format!("READY=1\n{}\n", status_line(status)))
}

/// A new status line, nothing else.
pub fn status(status: &str) -> io::Result<bool> {
    notify(&format!("{}\n", status_line(status)))
}

/// Tells the manager a reload (SIGHUP) is under way; [`ready`] ends it.
pub fn reloading() -> io::Result<bool> {
    notify(&format!(
        "RELOADING=1\n{}\n",
        status_line("reloading the config file")
    ))
}

/// How often to send [`watchdog`] under `WatchdogSec=`: half the interval systemd gives in
/// `$WATCHDOG_USEC`, so one late tick is not a restart. `None` without a watchdog, or when
/// `$WATCHDOG_PID` names another process (the variables leaked to a child).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<std::time::Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(me)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(std::time::Duration::from_micros(usec / 2))
}

/// The keep-alive of `WatchdogSec=`.
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1\n")
}

/// Tells the manager the daemon is shutting down.
pub fn stopping(status: &str) -> io::Result<bool> {
    notify(&format!("STOPPING=1\n{}\n", status_line(status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_interval_is_half_of_systemds_and_only_for_its_process() {
        let half = Some(std::time::Duration::from_secs(15));
        assert_eq!(watchdog_from(Some("30000000"), Some("42"), 42), half);
        assert_eq!(watchdog_from(Some("30000000"), None, 42), half);
        assert_eq!(watchdog_from(Some("30000000"), Some("7"), 42), None);
        assert_eq!(watchdog_from(None, Some("42"), 42), None);
        assert_eq!(watchdog_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_from(Some("x"), None, 42), None);
    }

    #[test]
    fn status_lines_stay_one_line() {
        assert_eq!(status_line("a\nb"), "STATUS=a b");
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\nSTATUS=up\n").unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up\n");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("srvgate-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn refuses_relative_names() {
        assert!(send_to(OsStr::new("notify"), "READY=1\n").is_err());
    }
}
