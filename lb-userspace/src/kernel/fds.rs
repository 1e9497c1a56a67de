//! File descriptors: the process's limit, how it is shared out between the listeners, and
//! what an accept loop does when it runs out anyway.
//!
//! Every connection costs descriptors (an HTTP relay two), and at the limit `accept` fails
//! with EMFILE for every listener at once, the control socket included, and retrying at
//! once spins a core. So, as Knot and NSD do: the soft limit is raised to the hard one at
//! start ([`raise_limit`]); each listener gets a share of what is left after a reserve for
//! the daemon's own descriptors ([`Budget`]), and refuses connections past its share
//! rather than taking someone else's; and an accept loop that still meets EMFILE pauses,
//! growing the pause, and says so at most every few seconds ([`AcceptBackoff`]).

use std::{
    io,
    time::{Duration, Instant},
};

/// Descriptors kept for the daemon itself and never handed to a listener's clients: BPF
/// maps, program and links, netlink, the state and log files, the listening sockets, and
/// the control socket's and metrics' clients (root and a scraper: few, short-lived).
pub const RESERVED: usize = 128;

/// Upper bounds of each share, whatever the limit: more than enough for their clients.
pub const MAX_DNS_TCP_CLIENTS: usize = 1024;
pub const MAX_HTTP_RELAYS: usize = 4096;
/// The portal's connections at once (`serve::portal`).
pub const MAX_PORTAL_CONNECTIONS: usize = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (before, after).
pub fn raise_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard one needs no
        // privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// How the descriptors under the soft limit are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    limit: usize,
}

impl Budget {
    /// The budget of this process's current soft limit.
    pub fn current() -> Budget {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid out-pointer for the duration of the call.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        // 1024 is what a process gets when nobody raised it: the cautious guess.
        let limit = if ok { lim.rlim_cur } else { 1024 };
        Budget::of(usize::try_from(limit).unwrap_or(usize::MAX))
    }

    pub fn of(limit: usize) -> Budget {
        Budget { limit }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What the listeners share: the limit less [`RESERVED`].
    fn spare(&self) -> usize {
        self.limit.saturating_sub(RESERVED)
    }

    /// DNS over TCP clients at once (NSD's `tcp-count`): a quarter of the spare descriptors.
    pub fn dns_tcp_clients(&self) -> usize {
        (self.spare() / 4).clamp(1, MAX_DNS_TCP_CLIENTS)
    }

    /// HTTP relays at once, two descriptors each: half of the spare descriptors.
    pub fn http_relays(&self) -> usize {
        (self.spare() / 4).clamp(1, MAX_HTTP_RELAYS)
    }

    /// Portal connections at once: an eighth, within the portal's own cap. The last eighth
    /// is slack.
    pub fn portal_connections(&self) -> usize {
        (self.spare() / 8).clamp(1, MAX_PORTAL_CONNECTIONS)
    }
}

/// Shortest and longest pause after a failed accept that ran out of something.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// At most one warning per listener this often; the ones in between are counted in it.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What an accept loop does with a failed `accept`. Running out of descriptors or memory
/// pauses the loop (10 ms, doubling to 1 s while it lasts) so that the loop does not spin
/// and connections that close can make room; other errors (a client that reset before we
/// accepted) are the client's and cost nothing.
#[derive(Debug)]
pub struct AcceptBackoff {
    what: &'static str,
    pause: Duration,
    unreported: u64,
    reported: Option<Instant>,
}

impl AcceptBackoff {
    /// `what` names the listener in the log, e.g. `"control socket"`.
    pub fn new(what: &'static str) -> Self {
        AcceptBackoff {
            what,
            pause: FIRST_PAUSE,
            unreported: 0,
            reported: None,
        }
    }

    /// After a successful accept: the next failure pauses briefly again.
    pub fn accepted(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    /// After a failed accept; returns once the loop may try again.
    pub async fn failed(&mut self, error: &io::Error) {
        let Some(pause) = self.next_pause(error, Instant::now()) else {
            tracing::debug!(%error, "{}: accept failed", self.what);
            return;
        };
        tokio::time::sleep(pause).await;
    }

    /// The pure part of [`AcceptBackoff::failed`]: how long to pause (`None`: not at all),
    /// logging a warning when one is due.
    fn next_pause(&mut self, error: &io::Error, now: Instant) -> Option<Duration> {
        if !runs_out(error) {
            return None;
        }
        self.unreported += 1;
        if self
            .reported
            .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY)
        {
            tracing::warn!(
                failures = self.unreported,
                "{}: accept failed: {error}; pausing accepts (up to {LONGEST_PAUSE:?}) until descriptors free up",
                self.what
            );
            self.reported = Some(now);
            self.unreported = 0;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        Some(pause)
    }
}

/// Errors of `accept` that mean the process (or the system) is out of something, and that
/// retrying at once cannot cure.
fn runs_out(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_under_the_limit() {
        for limit in [64, 1024, 4096, 65536, 1 << 20] {
            let b = Budget::of(limit);
            let used =
                RESERVED + b.dns_tcp_clients() + 2 * b.http_relays() + b.portal_connections();
            assert!(
                limit <= RESERVED || used <= limit,
                "limit {limit}: {used} descriptors promised"
            );
            assert!(b.dns_tcp_clients() >= 1 && b.http_relays() >= 1);
        }
        assert_eq!(Budget::of(1024).dns_tcp_clients(), 224);
        assert_eq!(Budget::of(1 << 20).dns_tcp_clients(), MAX_DNS_TCP_CLIENTS);
    }

    #[test]
    fn emfile_pauses_longer_each_time_and_is_reported_once_per_period() {
        let mut b = AcceptBackoff::new("test");
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let t0 = Instant::now();
        let pauses: Vec<_> = (0..9).map(|_| b.next_pause(&emfile, t0).unwrap()).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), LONGEST_PAUSE);
        assert_eq!(b.unreported, 8, "only the first failure was reported");
        b.next_pause(&emfile, t0 + REPORT_EVERY);
        assert_eq!(b.unreported, 0);
        b.accepted();
        assert_eq!(b.next_pause(&emfile, t0).unwrap(), FIRST_PAUSE);
        let reset = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(b.next_pause(&reset, t0), None);
    }

    #[test]
    fn the_soft_limit_rises_to_the_hard_one() {
        let (before, after) = raise_limit().unwrap();
        assert!(after >= before);
        assert_eq!(Budget::current().limit() as u64, after);
    }
}
