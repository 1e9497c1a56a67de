//! Log output: human lines on a terminal, journald-friendly lines under systemd.
//!
//! Under a service manager stderr is the journal's stream socket (systemd says so in
//! `$JOURNAL_STREAM`). There each line starts with its syslog priority (`<4>` for a
//! warning: journald's `SyslogLevelPrefix=`, on by default), so `journalctl -p warning`
//! works, and carries no timestamp (the journal stamps every line) and no colours. Fields
//! stay `key=value` after the message, the same as on a terminal, so
//! `journalctl -u srvgate --grep 'route=alice/'` finds a route's history.

use std::{fmt, io::IsTerminal as _, os::fd::AsRawFd as _};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
    EnvFilter,
};

/// Without `RUST_LOG`: hickory-server logs every answer at info, a line per query.
const DEFAULT_FILTER: &str = "info,hickory_server=warn";

/// Installs the global subscriber, writing to stderr.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        builder
            .with_ansi(false)
            .event_format(Journal(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Whether stderr is the stream `$JOURNAL_STREAM` names (`DEVICE:INODE`). Comparing the
/// inode matters: a child whose stderr was redirected inherits the variable.
fn stderr_is_journal() -> bool {
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat on fd 2 with a zeroed out-parameter; a closed fd only makes it fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(std::io::stderr().as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    named.to_str() == Some(&format!("{}:{}", st.st_dev, st.st_ino))
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Prefixes every event with its syslog priority, then formats it as `F` does.
struct Journal<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::TRACE), 7);
    }
}
