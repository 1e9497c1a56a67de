//! One target's verdict from its checks' results: pure, no clock, no I/O.
//!
//! A target starts **up, unconfirmed**: a daemon restart or a re-added route keeps
//! sending traffic to backends that were serving a moment ago rather than dropping every
//! pool until `rise` checks pass. Until its first check has passed, one failure is enough to
//! take it down (haproxy's start: its health counter begins at `rise`, the lowest "up"
//! value), so a dead backend that was just added leaves within one interval and timeout,
//! not `fall` intervals. After that, `fall` consecutive failures take it down and `rise`
//! consecutive successes bring it back; a result that agrees with the current state resets
//! the opposite run.

/// The verdict of one target and the run of results that argue against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    up: bool,
    /// Whether any check has passed or the target has been down: an unconfirmed "up" is
    /// only assumed.
    confirmed: bool,
    /// Consecutive results that disagree with `up`.
    against: u32,
}

impl Tracker {
    /// A new target: up, unconfirmed.
    pub fn new(rise: u32, fall: u32) -> Self {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            confirmed: false,
            against: 0,
        }
    }

    /// A target whose check changed: the verdict it had, with no run against it.
    pub fn resume(rise: u32, fall: u32, up: bool, confirmed: bool) -> Self {
        Tracker {
            up,
            confirmed: confirmed || !up,
            ..Tracker::new(rise, fall)
        }
    }

    pub fn up(&self) -> bool {
        self.up
    }

    /// Whether a check has decided the verdict (false only for the assumed "up" of a new
    /// target).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// Records one check's result; `Some(up)` when the verdict changed.
    pub fn record(&mut self, passed: bool) -> Option<bool> {
        if passed == self.up {
            self.against = 0;
            self.confirmed = true;
            return None;
        }
        self.against += 1;
        let needed = match (self.up, self.confirmed) {
            (true, false) => 1,
            (true, true) => self.fall,
            (false, _) => self.rise,
        };
        if self.against < needed {
            return None;
        }
        self.up = passed;
        self.confirmed = true;
        self.against = 0;
        Some(passed)
    }

    /// Consecutive results that argue against the current verdict (0 when the last one
    /// agreed with it).
    pub fn against(&self) -> u32 {
        self.against
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` (`+` pass, `-` fail) and returns the verdict after each as `U`/`D`.
    fn run(t: &mut Tracker, results: &str) -> String {
        results
            .chars()
            .map(|c| {
                t.record(c == '+');
                if t.up() {
                    'U'
                } else {
                    'D'
                }
            })
            .collect()
    }

    #[test]
    fn a_new_target_is_up_until_its_first_failure() {
        let t = Tracker::new(2, 3);
        assert!(t.up() && !t.confirmed());
        let mut t1 = t.clone();
        assert_eq!(t1.record(false), Some(false), "one failure before any pass");
        let mut t2 = t;
        assert_eq!(t2.record(true), None);
        assert!(t2.confirmed());
        assert_eq!(
            run(&mut t2, "--+---"),
            "UUUUUD",
            "confirmed: fall=3 in a row"
        );
    }

    #[test]
    fn rise_and_fall_count_consecutive_results_only() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(
            run(&mut t, "+--+--+"),
            "UUUUUUU",
            "never 3 failures in a row"
        );
        assert_eq!(run(&mut t, "---"), "UUD");
        assert_eq!(run(&mut t, "+-+-"), "DDDD", "never 2 passes in a row");
        assert_eq!(run(&mut t, "++"), "DU");
        assert_eq!(t.against(), 0);
        assert_eq!(run(&mut t, "--"), "UU");
        assert_eq!(t.against(), 2);
    }

    #[test]
    fn transitions_are_reported_once() {
        let mut t = Tracker::new(1, 1);
        let changes: Vec<Option<bool>> = [true, false, false, true, true]
            .iter()
            .map(|&r| t.record(r))
            .collect();
        assert_eq!(changes, [None, Some(false), None, Some(true), None]);
    }

    #[test]
    fn zero_counts_act_as_one() {
        let mut t = Tracker::new(0, 0);
        assert_eq!(run(&mut t, "+-+"), "UDU");
    }
}
