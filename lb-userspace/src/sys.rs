//! Thin, safe wrappers over the few system calls srvgate needs beyond std.

use std::{ffi::CString, io, path::Path, time::Duration};

/// The ifindex of interface `name` in this network namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Time since boot on CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Capabilities the daemon needs to load and attach XDP programs.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Names the capabilities this process lacks to run the gateway, or `None` if it has them.
/// CAP_SYS_ADMIN stands in for CAP_BPF, as it does in the kernel.
pub fn missing_privileges() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
    missing_from_mask(eff)
}

fn missing_from_mask(eff: u64) -> Option<String> {
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    (!missing.is_empty()).then(|| missing.join(" and "))
}

/// Writes a sysctl under /proc/sys, returning whether it changed.
pub fn set_sysctl(path: &str, value: &str) -> io::Result<bool> {
    let full = Path::new("/proc/sys").join(path);
    let old = std::fs::read_to_string(&full)?;
    if old.trim() == value {
        return Ok(false);
    }
    std::fs::write(&full, value)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_masks() {
        assert_eq!(missing_from_mask(u64::MAX), None);
        assert_eq!(
            missing_from_mask(0).as_deref(),
            Some("CAP_NET_ADMIN and CAP_BPF")
        );
        assert_eq!(
            missing_from_mask(1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN),
            None
        );
        assert_eq!(
            missing_from_mask(1 << CAP_BPF).as_deref(),
            Some("CAP_NET_ADMIN")
        );
    }

    #[test]
    fn loopback_exists_and_junk_does_not() {
        assert!(ifindex("lo").is_some());
        assert!(ifindex("sg-no-such-if").is_none());
        assert!(ifindex("bad\0name").is_none());
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a);
    }
}
