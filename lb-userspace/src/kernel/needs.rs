//! The kernel versions srvgate needs, checked against the running kernel's release: `check`
//! reports each, and `run` refuses to start on a kernel that lacks a required one ("kernel
//! 6.1.0 found, 6.7 needed for ...") instead of attaching a program that would hand every
//! packet to the slow path.
//!
//! What each needs, and where the version comes from:
//!
//! - `BPF_FIB_LOOKUP_SRC` (the program's next-hop lookup, `lb-ebpf` `program/fib.rs`, asks
//!   the kernel for the source address of the leg it leaves by): Linux 6.7. Upstream commit
//!   dab4e1f06cab "bpf: Derive source IP addr via bpf_*_fib_lookup()", applied to bpf-next
//!   in October 2023, so first released in 6.7; the helper documentation (docs.ebpf.io,
//!   `bpf_fib_lookup`) describes the flag. On an older kernel the helper refuses the unknown
//!   flag and every packet goes up the stack. The commit was backported to the 5.15 stable
//!   series in 5.15.151 (its stable review, March 2024), which [`BACKPORTS`] accepts.
//! - The generic-netlink `netdev` family's `xdp-features` (`kernel::dataplane::netdev`,
//!   whether a leg takes redirects): Linux 6.3, where `Documentation/netlink/specs/netdev.yaml`
//!   and `include/uapi/linux/netdev.h` first appear (v6.3-rc tags).
//! - tcx links (the public legs' egress guard, `dataplane::guard`): Linux 6.6. Wanted, not
//!   required: without it the legs run unguarded, said at start, and a firewall can do the
//!   same (the guard's own doc).
//!
//! Everything else the program uses is older than 6.3 and so covered: `bpf_fib_lookup`
//! (4.18), `bpf_xdp_load_bytes`/`bpf_xdp_get_buff_len` (5.18, docs.ebpf.io), XDP BPF links
//! (5.9, the pinning `attach` relies on), LRU hash and LPM trie maps (4.10, 4.11).
//!
//! A distribution kernel may carry a feature under an older version number (a backport not
//! listed here): `srvgate run --skip-kernel-check` starts anyway, and the admin owns that.

use std::{cmp::Ordering, fmt};

/// A kernel release's `major.minor.patch` (the rest, `-18-amd64`, is the distribution's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.2 {
            0 => write!(f, "{}.{}", self.0, self.1),
            p => write!(f, "{}.{}.{p}", self.0, self.1),
        }
    }
}

impl Version {
    /// Reads `uname -r`'s form, `6.1.0-18-amd64`, `6.12.9+bpo-amd64`, `6.7`.
    pub fn parse_release(release: &str) -> Option<Version> {
        let numeric = release
            .trim()
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?;
        let mut parts = numeric.split('.').filter(|p| !p.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Version(major, minor, patch))
    }
}

/// One kernel feature srvgate uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Need {
    /// What the feature is, as the admin reads it in a refusal.
    pub feature: &'static str,
    /// What srvgate uses it for.
    pub used_for: &'static str,
    /// The first mainline release that has it.
    pub since: Version,
    /// Whether `run` refuses without it (else it is a warning).
    pub required: bool,
}

/// What srvgate needs, newest first (see the module doc for each version's source).
pub const NEEDS: &[Need] = &[
    Need {
        feature: "BPF_FIB_LOOKUP_SRC",
        used_for: "the XDP program's next-hop lookup (without it every packet takes the slow path)",
        since: Version(6, 7, 0),
        required: true,
    },
    Need {
        feature: "tcx links",
        used_for: "the public legs' egress guard (without it they run unguarded)",
        since: Version(6, 6, 0),
        required: false,
    },
    Need {
        feature: "the netdev family's xdp-features",
        used_for: "knowing which legs take XDP redirects",
        since: Version(6, 3, 0),
        required: true,
    },
];

/// Stable series that got a feature after its mainline release: (feature, series, first
/// release of that series with it).
pub const BACKPORTS: &[(&str, (u32, u32), Version)] =
    &[("BPF_FIB_LOOKUP_SRC", (5, 15), Version(5, 15, 151))];

/// Whether `found` has `need`, counting the known backports.
pub fn has(found: Version, need: &Need) -> bool {
    found >= need.since
        || BACKPORTS.iter().any(|(feature, (major, minor), first)| {
            *feature == need.feature
                && found.0 == *major
                && found.1 == *minor
                && found.cmp(first) != Ordering::Less
        })
}

/// The needs `found` lacks.
pub fn missing(found: Version) -> Vec<&'static Need> {
    NEEDS.iter().filter(|n| !has(found, n)).collect()
}

/// "kernel 6.1 found, 6.7 needed for BPF_FIB_LOOKUP_SRC (...)": `run`'s refusal, `None`
/// when nothing required is missing.
pub fn refusal(found: Version) -> Option<String> {
    let lacking: Vec<String> = missing(found)
        .into_iter()
        .filter(|n| n.required)
        .map(|n| format!("{} needed for {}, {}", n.since, n.feature, n.used_for))
        .collect();
    if lacking.is_empty() {
        return None;
    }
    Some(format!(
        "kernel {found} found, {}; upgrade the kernel (Debian 12: its backports kernel, 6.12), or, for a kernel that carries these as a backport, start with --skip-kernel-check",
        lacking.join("; ")
    ))
}

/// The running kernel's release (`uname -r`).
pub fn running() -> Option<Version> {
    // /proc is there wherever srvgate can run (it reads interfaces and sysctls there too).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    Version::parse_release(&release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_as_uname_prints_them() {
        assert_eq!(
            Version::parse_release("6.1.0-18-amd64"),
            Some(Version(6, 1, 0))
        );
        assert_eq!(
            Version::parse_release("6.12.9+bpo-amd64\n"),
            Some(Version(6, 12, 9))
        );
        assert_eq!(Version::parse_release("6.7"), Some(Version(6, 7, 0)));
        assert_eq!(
            Version::parse_release("5.15.151-generic"),
            Some(Version(5, 15, 151))
        );
        assert_eq!(Version::parse_release("linux"), None);
        assert_eq!(Version::parse_release(""), None);
    }

    #[test]
    fn an_old_kernel_is_refused_naming_found_needed_and_why() {
        // Debian 12's own kernel.
        let why = refusal(Version(6, 1, 0)).expect("6.1 lacks BPF_FIB_LOOKUP_SRC");
        assert!(
            why.starts_with("kernel 6.1 found, 6.7 needed for BPF_FIB_LOOKUP_SRC"),
            "{why}"
        );
        assert!(!why.contains("tcx"), "tcx is wanted, not required: {why}");
        // 6.5 has the netdev family but not the flag.
        let why = refusal(Version(6, 5, 3)).unwrap();
        assert!(why.contains("6.7 needed"), "{why}");
        assert!(!why.contains("xdp-features"), "{why}");
        // 6.2 lacks both required features, and says both.
        let why = refusal(Version(6, 2, 0)).unwrap();
        assert!(why.contains("6.3 needed for the netdev family"), "{why}");
        assert!(why.contains("6.7 needed"), "{why}");
    }

    #[test]
    fn new_kernels_and_known_backports_pass() {
        for ok in [Version(6, 7, 0), Version(6, 12, 9), Version(7, 0, 0)] {
            assert_eq!(refusal(ok), None, "{ok}");
            assert!(missing(ok).is_empty(), "{ok}");
        }
        // 6.6 has every required feature but the flag: refused.
        assert!(refusal(Version(6, 6, 30)).is_some());
        // The 5.15 backport counts for the flag alone, not for xdp-features.
        let v = Version(5, 15, 151);
        assert!(has(v, &NEEDS[0]));
        assert!(!has(Version(5, 15, 150), &NEEDS[0]));
        assert!(!has(Version(5, 16, 0), &NEEDS[0]));
        let why = refusal(v).unwrap();
        assert!(!why.contains("BPF_FIB_LOOKUP_SRC"), "{why}");
        assert!(why.contains("xdp-features"), "{why}");
    }

    #[test]
    fn tcx_alone_missing_is_a_warning_not_a_refusal() {
        let lacking = missing(Version(6, 5, 0));
        assert!(lacking
            .iter()
            .any(|n| n.feature == "tcx links" && !n.required));
        // 6.6.0 has tcx; a 6.6 kernel is refused for the flag only.
        assert!(missing(Version(6, 6, 0)).iter().all(|n| n.required));
    }
}
