//! Log output: human lines on a terminal, journald-friendly lines under systemd.
//!
//! Under a service manager stderr is the journal's stream socket (systemd says so in
//! `$JOURNAL_STREAM`). There each line starts with its syslog priority (`<4>` for a
//! warning: journald's `SyslogLevelPrefix=`, on by default), so `journalctl -p warning`
//! works, and carries no timestamp (the journal stamps every line) and no colours. Fields
//! stay `key=value` after the message, the same as on a terminal, so
//! `journalctl -u srvgate --grep 'route=alice/'` finds a route's history.
//!
//! The audit lines (target [`AUDIT_TARGET`]: who changed what, from where) are also kept,
//! the latest [`AUDIT_LINES`] of them, for the console's admin view ([`recent_audit`]),
//! whatever `RUST_LOG` lets through to stderr.
//!
//! Warnings about peers' packets (hickory's targets) go through [`PeerNoise`]: a few per
//! window, the rest counted for metrics and summed up by [`report_suppressed`], which the
//! event loop calls.

use std::{
    collections::VecDeque,
    fmt::{self, Write as _},
    io::IsTerminal as _,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

use tracing::{field::Field, Event, Level, Metadata, Subscriber};
use tracing_subscriber::{
    filter::Targets,
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    layer::{Context, SubscriberExt as _},
    registry::LookupSpan,
    util::SubscriberInitExt as _,
    EnvFilter, Layer,
};

/// Without `RUST_LOG`: hickory-server logs every answer at info, a line per query.
const DEFAULT_FILTER: &str = "info,hickory_server=warn";

/// The target of every audit line (`info!(target: AUDIT_TARGET, user, from, action, ...)`).
pub const AUDIT_TARGET: &str = "srvgate::audit";
/// How many audit lines [`recent_audit`] keeps.
pub const AUDIT_LINES: usize = 200;

static RECENT_AUDIT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The latest audit lines, oldest first: `2026-12-01T22:14:40Z INFO portal user=alice ...`.
pub fn recent_audit() -> Vec<String> {
    let recent = RECENT_AUDIT.lock().unwrap_or_else(|p| p.into_inner());
    recent.iter().cloned().collect()
}

/// Installs the global subscriber, writing to stderr, with warnings about peers' packets
/// rate-limited ([`PeerNoise`]).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr = if stderr_is_journal() {
        layer
            .with_ansi(false)
            .event_format(Journal(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .with_filter(filter)
            .boxed()
    } else {
        layer
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    };
    let audit = AuditRing.with_filter(Targets::new().with_target(AUDIT_TARGET, Level::INFO));
    // Peer noise first: an event it refuses reaches neither stderr nor the audit ring.
    tracing_subscriber::registry()
        .with(RateLimited(peer_noise().clone()))
        .with(stderr)
        .with(audit)
        .init();
}

/// A subscriber that keeps only the audit lines, for tests that check what an operation
/// audits ([`recent_audit`] is process-wide: look for a line only that test makes).
#[cfg(test)]
pub(crate) fn audit_only() -> impl Subscriber {
    tracing_subscriber::registry()
        .with(AuditRing.with_filter(Targets::new().with_target(AUDIT_TARGET, Level::INFO)))
}

/// Keeps the latest audit events as text lines in [`RECENT_AUDIT`].
struct AuditRing;

impl<S: Subscriber> Layer<S> for AuditRing {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut line = String::new();
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let when = time::OffsetDateTime::from_unix_timestamp(secs)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let _ = write!(line, "{when} {}", event.metadata().level());
        event.record(&mut Fields(&mut line));
        let mut recent = RECENT_AUDIT.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= AUDIT_LINES {
            recent.pop_front();
        }
        recent.push_back(line);
    }
}

/// Writes an event's fields as ` message key=value ...`.
struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// Where a warning about a peer's packet comes from: hickory's decoder warns once per
/// malformed packet (e.g. an OPT record whose options do not fill its RDLEN). Such lines
/// describe the sender, cost nothing to send, and can be spoofed, so a flood of them
/// must not flood the log.
fn is_peer_noise(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::WARN && meta.target().starts_with("hickory_")
}

/// Warnings about peers' packets: a few per window are printed, the rest only counted;
/// [`report_suppressed`] logs how many were left out, and metrics export the total.
#[derive(Debug)]
pub struct PeerNoise {
    window: Mutex<(Option<Instant>, u32)>,
    seen: AtomicU64,
    suppressed: AtomicU64,
    reported: AtomicU64,
}

impl PeerNoise {
    /// Printed per window; the rest of the window's are counted.
    pub const BURST: u32 = 5;
    pub const WINDOW: Duration = Duration::from_secs(10);

    fn new() -> Self {
        PeerNoise {
            window: Mutex::new((None, 0)),
            seen: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }
    }

    /// Whether the warning seen at `now` is printed.
    fn admit(&self, now: Instant) -> bool {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if w.0
            .is_none_or(|start| now.duration_since(start) >= Self::WINDOW)
        {
            *w = (Some(now), 0);
        }
        w.1 += 1;
        let admitted = w.1 <= Self::BURST;
        if !admitted {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Warnings about peers' packets since start, printed or not.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Suppressed since the last call.
    fn take_unreported(&self) -> u64 {
        let total = self.suppressed.load(Ordering::Relaxed);
        total - self.reported.swap(total, Ordering::Relaxed)
    }
}

/// The process's one [`PeerNoise`].
pub fn peer_noise() -> &'static Arc<PeerNoise> {
    static NOISE: OnceLock<Arc<PeerNoise>> = OnceLock::new();
    NOISE.get_or_init(|| Arc::new(PeerNoise::new()))
}

/// Logs one summary line for the warnings about peers' packets suppressed since the last
/// call, if any; the daemon calls it every few seconds.
pub fn report_suppressed() {
    let n = peer_noise().take_unreported();
    if n > 0 {
        tracing::warn!(
            suppressed = n,
            total = peer_noise().seen(),
            "{n} more warnings about malformed packets from clients left out of the log (at most {} per {:?}; srvgate_peer_warnings_total counts them all)",
            PeerNoise::BURST,
            PeerNoise::WINDOW
        );
    }
}

/// The layer that applies [`PeerNoise`]: an event it refuses reaches no other layer.
struct RateLimited(Arc<PeerNoise>);

impl<S: Subscriber> Layer<S> for RateLimited {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        !is_peer_noise(event.metadata()) || self.0.admit(Instant::now())
    }
}

/// Whether stderr is the stream `$JOURNAL_STREAM` names (`DEVICE:INODE`). Comparing the
/// inode matters: a child whose stderr was redirected inherits the variable.
fn stderr_is_journal() -> bool {
    let named = std::env::var_os("JOURNAL_STREAM");
    is_stream(named.as_deref(), &std::io::stderr())
}

/// Whether `fd` is the file `named` (`DEVICE:INODE`, as systemd writes it) identifies.
fn is_stream(named: Option<&std::ffi::OsStr>, fd: &impl AsRawFd) -> bool {
    let Some(named) = named.and_then(|n| n.to_str()) else {
        return false;
    };
    // SAFETY: `stat` is plain integers, for which all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into `st`, which outlives the call; a closed fd only makes
    // it fail.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    named == format!("{}:{}", st.st_dev, st.st_ino)
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
    use std::{ffi::OsStr, os::unix::fs::MetadataExt as _};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_priority_and_fields_but_no_time_or_colour() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(Journal(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(iface = "eth1", "egress through the kernel");
            tracing::info!(route = "alice/ssh/tcp", port = 30001, "route added");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("<4> WARN "), "{text}");
        assert!(
            lines[0].ends_with("egress through the kernel iface=\"eth1\""),
            "{text}"
        );
        assert!(lines[1].starts_with("<6> INFO "), "{text}");
        assert!(
            lines[1].contains("route=\"alice/ssh/tcp\" port=30001"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn the_journal_stream_is_recognised_by_device_and_inode() {
        let file = tempfile::tempfile().unwrap();
        let meta = file.metadata().unwrap();
        let right = format!("{}:{}", meta.dev(), meta.ino());
        assert!(is_stream(Some(OsStr::new(&right)), &file));
        let wrong = format!("{}:{}", meta.dev(), meta.ino() + 1);
        assert!(!is_stream(Some(OsStr::new(&wrong)), &file));
        assert!(!is_stream(None, &file));
    }

    #[test]
    fn warnings_about_peers_packets_are_rate_limited_and_counted() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let noise = Arc::new(PeerNoise::new());
        let subscriber = tracing_subscriber::registry()
            .with(RateLimited(noise.clone()))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || writer.clone())
                    .with_ansi(false),
            );
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..1000 {
                tracing::warn!(target: "hickory_proto::rr::rdata::opt", "poorly formatted EDNS");
            }
            tracing::warn!("a warning of our own");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("poorly formatted").count(),
            PeerNoise::BURST as usize,
            "{text}"
        );
        assert!(text.contains("a warning of our own"), "{text}");
        assert_eq!(noise.seen(), 1000);
        assert_eq!(noise.take_unreported(), 1000 - u64::from(PeerNoise::BURST));
        assert_eq!(noise.take_unreported(), 0);
        // A new window prints again.
        assert!(noise.admit(Instant::now() + PeerNoise::WINDOW));
    }

    #[test]
    fn audit_lines_are_kept_and_bounded() {
        let subscriber = tracing_subscriber::registry()
            .with(AuditRing.with_filter(Targets::new().with_target(AUDIT_TARGET, Level::INFO)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "srvgate::other", "not an audit line");
            for i in 0..AUDIT_LINES + 5 {
                tracing::info!(target: AUDIT_TARGET, user = "alice", from = %"10.0.0.9", n = i, "console");
            }
        });
        let lines = recent_audit();
        assert_eq!(lines.len(), AUDIT_LINES);
        let last = lines.last().unwrap();
        assert!(
            last.contains(" INFO console user=\"alice\" from=10.0.0.9"),
            "{last}"
        );
        assert!(last.contains(&format!("n={}", AUDIT_LINES + 4)), "{last}");
        assert!(!lines.iter().any(|l| l.contains("not an audit line")));
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::TRACE), 7);
    }
}
