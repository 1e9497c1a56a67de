//! Thin, safe wrappers over the few system calls srvgate needs beyond std: a device's
//! ifindex, MTU, MAC, statistics and driver (`ETHTOOL_GDRVINFO`), `CLOCK_MONOTONIC`, capabilities, sysctls, bpffs detection and mounting,
//! and `BPF_OBJ_GET` with link info for a pinned link's interface.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    time::Duration,
};

/// The ifindex of interface `name` in this network namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// A counter of interface `name` from `/sys/class/net/NAME/statistics/STAT` (as seen from
/// this process's network namespace), if the file exists and holds a number.
pub fn netdev_stat(name: &str, stat: &str) -> Option<u64> {
    let path = format!("/sys/class/net/{name}/statistics/{stat}");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The kernel driver behind interface `name` (`veth`, `virtio_net`, `tun`, `mlx5_core`,
/// ...), as `ethtool -i` shows it: the `ETHTOOL_GDRVINFO` ioctl, which every driver answers.
pub fn driver(name: &str) -> io::Result<String> {
    /// `struct ethtool_drvinfo` (linux/ethtool.h): the command, the driver's name, then
    /// version strings and counts this code does not read (196 bytes in all).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: `ifreq` is plain C data, valid all-zero.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: plain socket(2) call; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifr` names the device (NUL-terminated: zeroed, name shorter than IFNAMSIZ)
    // and points at `info`, a live `ethtool_drvinfo` the kernel writes at most its size of.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// The MTU of interface `name` (from sysfs, as seen from this process's namespace).
pub fn mtu(name: &str) -> Option<u32> {
    let path = format!("/sys/class/net/{name}/mtu");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The MAC address of interface `name` (from sysfs, as seen from this process's
/// namespace), if it has a 6-byte one (an Ethernet-like device; a tun has none).
pub fn mac(name: &str) -> Option<[u8; 6]> {
    let path = format!("/sys/class/net/{name}/address");
    parse_mac(std::fs::read_to_string(path).ok()?.trim())
}

/// `aa:bb:cc:dd:ee:ff` as 6 bytes; anything else is `None`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// 6 bytes as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Time since boot on CLOCK_MONOTONIC, the clock the daemon gives the program.
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
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Names the capabilities this process lacks to run the gateway, or `None` if it has them.
/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as it does in the kernel. Without
/// CAP_PERFMON the verifier refuses the program's packet-pointer arithmetic ("pointer
/// arithmetic with it prohibited for !root"): a plain message beats that log.
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
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    (!missing.is_empty()).then(|| missing.join(", "))
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

/// `statfs(2)` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Whether `path` (which must exist) is on a BPF filesystem, where objects can be pinned.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = c_path(path)?;
    // SAFETY: statfs is plain C data, valid all-zero.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a writable statfs, both live for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs.
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a BPF filesystem on `path`, as systemd does on /sys/fs/bpf at boot.
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    let fstype = c"bpf";
    // SAFETY: every pointer is a valid NUL-terminated string or null (no data).
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process runs in the mount namespace of pid 1. Outside it (e.g. under
/// `ip netns exec`), a filesystem this process mounts disappears with its namespace.
pub fn in_init_mount_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        // Unknowable (no /proc/1 access): do not warn about something we cannot see.
        _ => true,
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points to `size` bytes of a bpf_attr variant matching `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a BPF object pinned at `path`.
pub fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = c_path(path)?;
    let mut attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(
        BPF_OBJ_GET,
        (&mut attr as *mut ObjGet).cast(),
        std::mem::size_of::<ObjGet>(),
    )?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The interface an XDP BPF link pinned at `path` is attached to; 0 once the link is
/// defunct (its interface was deleted).
pub fn pinned_xdp_link_ifindex(path: &Path) -> io::Result<u32> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_LINK_TYPE_XDP: u32 = 6;
    let fd = bpf_obj_get(path)?;
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose `xdp` member
    // is { __u32 ifindex }, at byte 16. The buffer is larger than the kernel's struct;
    // the tail stays zero, which the kernel accepts.
    let mut info = [0u64; 32];
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&mut attr as *mut InfoByFd).cast(),
        std::mem::size_of::<InfoByFd>(),
    )?;
    let bytes: &[u8] = bytemuck::cast_slice(&info);
    let word =
        |at: usize| u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let link_type = word(0);
    if link_type != BPF_LINK_TYPE_XDP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an XDP link (link type {link_type})"),
        ));
    }
    Ok(word(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let bytes = [0x02, 0x00, 0x5e, 0xab, 0xcd, 0xef];
        assert_eq!(parse_mac("02:00:5e:ab:cd:ef"), Some(bytes));
        assert_eq!(format_mac(&bytes), "02:00:5e:ab:cd:ef");
        for bad in [
            "",
            "02:00:5e:ab:cd",
            "02:00:5e:ab:cd:ef:00",
            "2:00:5e:ab:cd:ef",
            "zz:00:5e:ab:cd:ef",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
        assert_eq!(mac("lo"), Some([0; 6]), "loopback's address is all zero");
    }

    #[test]
    fn capability_masks() {
        assert_eq!(missing_from_mask(u64::MAX), None);
        assert_eq!(
            missing_from_mask(0).as_deref(),
            Some("CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON")
        );
        assert_eq!(
            missing_from_mask(1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN),
            None
        );
        // What the systemd unit grants.
        assert_eq!(
            missing_from_mask(1 << CAP_NET_ADMIN | 1 << CAP_BPF | 1 << CAP_PERFMON),
            None
        );
        assert_eq!(
            missing_from_mask(1 << CAP_BPF | 1 << CAP_PERFMON).as_deref(),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(
            missing_from_mask(1 << CAP_NET_ADMIN | 1 << CAP_BPF).as_deref(),
            Some("CAP_PERFMON")
        );
    }

    #[test]
    fn loopback_exists_and_junk_does_not() {
        assert!(ifindex("lo").is_some());
        assert!(ifindex("sg-no-such-if").is_none());
        assert!(ifindex("bad\0name").is_none());
    }

    #[test]
    fn ordinary_directories_are_not_bpffs() {
        assert!(!is_bpffs(Path::new("/")).unwrap());
        assert!(is_bpffs(Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn netdev_stats_of_loopback_and_of_nothing() {
        // Every network namespace has `lo`; no interface is called this.
        assert!(netdev_stat("lo", "rx_packets").is_some());
        assert_eq!(netdev_stat("sg-no-such-if", "rx_packets"), None);
        assert_eq!(netdev_stat("lo", "no_such_counter"), None);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a);
    }
}
