//! A route's pool of backends: the one owner of what a pool may hold, for every source of
//! routes (config file, `route add`, the control API, claims, the state file, etcd).
//!
//! A pool has 1 to [`MAX_BACKENDS`] members, no address twice, each with a weight of 1 to
//! [`MAX_WEIGHT`] and a `drained` flag, and at least one member not drained (draining the
//! last one would leave the route nowhere to send a new flow: remove the route instead).
//! A member's text form, the one encoding every file, key, flag and form uses, is
//! `ADDR:PORT[ weight=N][ drained]`; a plain `ADDR:PORT` is weight 1, not drained, so a
//! one-backend route's text is what `backend =` always was.
//!
//! How the members are checked is here ([`Pool::check`], stored with the route; a pool
//! without one gets `check::default_for`'s). Health is not here: whether a member answers is runtime state of the table's `Entry`
//! (`table::routes::Entry::down`), never stored with the route. The address rules
//! (`check_backend`, `check_route`'s field checks) apply to every member; uniqueness of an
//! address among routes is the table's (`table::routes`).

use std::{fmt, net::SocketAddrV4};

use crate::check::CheckSpec;

/// Most members of one pool: a club's service runs on a handful of machines, and the data
/// plane's per-route lookup table is sized for this many.
pub const MAX_BACKENDS: usize = 32;

/// Highest weight of a member (the lowest is 1): a member of weight `w` gets about `w`
/// shares of new flows; 255 to 1 is already more skew than a club's machines have.
pub const MAX_WEIGHT: u16 = 255;

/// Longest text of one member (`255.255.255.255:65535 weight=255 drained` is 40): a longer
/// one is refused before it is parsed.
const MAX_MEMBER_TEXT: usize = 64;

/// One backend of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub addr: SocketAddrV4,
    /// 1 to [`MAX_WEIGHT`].
    pub weight: u16,
    /// Gets no new flows; established ones finish.
    pub drained: bool,
}

impl Member {
    /// Weight 1, not drained.
    pub fn new(addr: SocketAddrV4) -> Member {
        Member {
            addr,
            weight: 1,
            drained: false,
        }
    }

    /// Parses `ADDR:PORT[ weight=N][ drained]`; the error names the bad part.
    pub fn parse(text: &str) -> Result<Member, String> {
        if text.len() > MAX_MEMBER_TEXT {
            return Err(format!(
                "{:?}... is {} characters long; a backend is \"ADDR:PORT[ weight=N][ drained]\" (at most {MAX_MEMBER_TEXT})",
                text.chars().take(24).collect::<String>(),
                text.len()
            ));
        }
        let mut words = text.split_whitespace();
        let addr = words.next().unwrap_or_default();
        let addr = addr
            .parse::<SocketAddrV4>()
            .map_err(|_| format!("{addr:?} is not an IPv4 address:port like \"10.0.0.11:22\""))?;
        let mut member = Member::new(addr);
        let (mut weighted, mut drained) = (false, false);
        for word in words {
            if let Some(w) = word.strip_prefix("weight=") {
                if weighted {
                    return Err(format!("{text:?} gives a weight twice"));
                }
                weighted = true;
                member.weight = w
                    .parse::<u16>()
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| {
                        format!("{text:?}: weight {w:?} is not a number from 1 to {MAX_WEIGHT}")
                    })?;
            } else if word == "drained" && !drained {
                drained = true;
                member.drained = true;
            } else {
                return Err(format!(
                    "{text:?}: {word:?} is not \"weight=N\" or \"drained\" (a backend is \"ADDR:PORT[ weight=N][ drained]\")"
                ));
            }
        }
        Ok(member)
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.weight != 1 {
            write!(f, " weight={}", self.weight)?;
        }
        if self.drained {
            f.write_str(" drained")?;
        }
        Ok(())
    }
}

/// A route's backends, valid by construction: only [`Pool::new`] (and [`Pool::one`]) make
/// one, so a `Pool` always keeps the rules of the module's doc.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    members: Vec<Member>,
    /// The check its author wrote; `None`: the protocol's default.
    check: Option<CheckSpec>,
}

impl Pool {
    /// The one-backend pool of a route that names `backend`.
    pub fn one(addr: SocketAddrV4) -> Pool {
        Pool {
            members: vec![Member::new(addr)],
            check: None,
        }
    }

    /// `members` if they make a pool; the reason names the rule and the member that breaks it.
    pub fn new(members: Vec<Member>) -> Result<Pool, String> {
        if members.is_empty() {
            return Err("is empty; a route needs at least one backend".into());
        }
        if members.len() > MAX_BACKENDS {
            return Err(format!(
                "has {} backends; a pool has at most {MAX_BACKENDS}",
                members.len()
            ));
        }
        for (i, m) in members.iter().enumerate() {
            if !(1..=MAX_WEIGHT).contains(&m.weight) {
                return Err(format!(
                    "{}: weight {} is not from 1 to {MAX_WEIGHT}",
                    m.addr, m.weight
                ));
            }
            if members[..i].iter().any(|o| o.addr == m.addr) {
                return Err(format!(
                    "{} is named twice; each backend is one member",
                    m.addr
                ));
            }
        }
        if members.iter().all(|m| m.drained) {
            return Err(
                "has every backend drained; keep one to take new flows (or remove the route)"
                    .into(),
            );
        }
        Ok(Pool {
            members,
            check: None,
        })
    }

    /// The same members, checked by `check` (`None`: the protocol's default).
    pub fn with_check(mut self, check: Option<CheckSpec>) -> Pool {
        self.check = check;
        self
    }

    /// The check its author wrote, if any.
    pub fn check(&self) -> Option<&CheckSpec> {
        self.check.as_ref()
    }

    /// What the health checks run on this pool's members for a route of `protocol`: the
    /// written check, else the default; `None` when nothing is checked (`kind = "none"`
    /// included).
    pub fn effective_check(&self, protocol: crate::Protocol) -> Option<CheckSpec> {
        match &self.check {
            Some(c) if c.is_off() => None,
            Some(c) => Some(c.clone()),
            None => crate::check::default_for(protocol, self.members.len()),
        }
    }

    /// Parses members' texts (see [`Member::parse`]); more than [`MAX_BACKENDS`] are refused
    /// before any is read.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Pool, String> {
        if texts.len() > MAX_BACKENDS {
            return Err(format!(
                "has {} backends; a pool has at most {MAX_BACKENDS}",
                texts.len()
            ));
        }
        let members = texts
            .iter()
            .map(|t| Member::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Pool::new(members)
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Every member's address, drained or not.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.members.iter().map(|m| m.addr)
    }

    /// The first member: the route's backend for what names one (a one-backend route's
    /// only member; the first written for a pool).
    pub fn first(&self) -> SocketAddrV4 {
        self.members[0].addr
    }

    pub fn member(&self, addr: SocketAddrV4) -> Option<&Member> {
        self.members.iter().find(|m| m.addr == addr)
    }

    /// The pool with `addr` drained (or not); refused if `addr` is no member or the pool's
    /// rules would break (the last undrained member).
    pub fn with_drained(&self, addr: SocketAddrV4, drained: bool) -> Result<Pool, String> {
        let mut members = self.members.clone();
        let m = members
            .iter_mut()
            .find(|m| m.addr == addr)
            .ok_or_else(|| format!("{addr} is not a backend of this route ({self})"))?;
        m.drained = drained;
        Ok(Pool::new(members)?.with_check(self.check.clone()))
    }

    /// Each member's text, in order: what files and keys store.
    pub fn texts(&self) -> Vec<String> {
        self.members.iter().map(ToString::to_string).collect()
    }

    /// Whether this is a plain one-backend pool (weight 1, not drained), which files and
    /// keys still write as a single `backend`, so that an older srvgate reads them.
    pub fn is_single(&self) -> bool {
        self.members.len() == 1 && self.members[0] == Member::new(self.members[0].addr)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_member_reads_and_writes_one_text() {
        for text in [
            "10.0.0.11:80",
            "10.0.0.11:80 weight=2",
            "10.0.0.11:80 drained",
            "10.0.0.11:80 weight=255 drained",
        ] {
            assert_eq!(Member::parse(text).unwrap().to_string(), text);
        }
        let m = Member::parse("  10.0.0.12:80   drained weight=3 ").unwrap();
        assert_eq!((m.addr, m.weight, m.drained), (a("10.0.0.12:80"), 3, true));
        assert_eq!(m.to_string(), "10.0.0.12:80 weight=3 drained");
    }

    #[test]
    fn a_bad_member_is_refused_naming_the_part() {
        for (text, part) in [
            ("", "\"\""),
            ("10.0.0.11", "10.0.0.11"),
            ("10.0.0.11:80 weight=0", "weight \"0\""),
            ("10.0.0.11:80 weight=256", "weight \"256\""),
            ("10.0.0.11:80 weight=2 weight=3", "weight twice"),
            ("10.0.0.11:80 fast", "\"fast\""),
            ("10.0.0.11:80 drained drained", "\"drained\""),
        ] {
            let e = Member::parse(text).unwrap_err();
            assert!(e.contains(part), "{text:?}: {e}");
        }
        let long = format!("10.0.0.11:80{}", " ".repeat(100));
        assert!(Member::parse(&long).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn a_pool_keeps_its_rules() {
        assert!(Pool::new(vec![]).unwrap_err().contains("empty"));
        let dup = Pool::parse(&["10.0.0.11:80", "10.0.0.12:80", "10.0.0.11:80 weight=2"]);
        assert!(dup.unwrap_err().contains("10.0.0.11:80 is named twice"));
        let many: Vec<String> = (1..=33).map(|i| format!("10.0.1.{i}:80")).collect();
        assert!(Pool::parse(&many).unwrap_err().contains("at most 32"));
        assert!(Pool::parse(&many[..32]).is_ok());
        let heavy = Member {
            weight: 300,
            ..Member::new(a("10.0.0.11:80"))
        };
        assert!(Pool::new(vec![heavy]).unwrap_err().contains("weight 300"));
        let all_drained = Pool::parse(&["10.0.0.11:80 drained", "10.0.0.12:80 drained"]);
        assert!(all_drained.unwrap_err().contains("every backend drained"));
    }

    #[test]
    fn drain_and_undrain_keep_the_rules() {
        let p = Pool::parse(&["10.0.0.11:80", "10.0.0.12:80 weight=2"]).unwrap();
        let d = p.with_drained(a("10.0.0.12:80"), true).unwrap();
        assert_eq!(d.to_string(), "10.0.0.11:80, 10.0.0.12:80 weight=2 drained");
        assert!(d
            .with_drained(a("10.0.0.11:80"), true)
            .unwrap_err()
            .contains("every backend drained"));
        assert_eq!(d.with_drained(a("10.0.0.12:80"), false).unwrap(), p);
        assert!(p
            .with_drained(a("10.0.0.13:80"), true)
            .unwrap_err()
            .contains("10.0.0.13:80 is not a backend"));
    }

    #[test]
    fn only_a_plain_single_backend_is_single() {
        assert!(Pool::one(a("10.0.0.11:80")).is_single());
        assert!(!Pool::parse(&["10.0.0.11:80 weight=2"]).unwrap().is_single());
        assert!(!Pool::parse(&["10.0.0.11:80", "10.0.0.12:80"])
            .unwrap()
            .is_single());
    }
}
