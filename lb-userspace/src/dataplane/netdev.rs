//! Asks the kernel whether an interface can take XDP redirects, via the generic-netlink
//! `netdev` family (Linux 6.3+).
//!
//! The kernel refuses (and drops) a redirect into a device whose `xdp-features` lack
//! `NDO_XMIT`. A veth advertises `NDO_XMIT` only while its *peer* has GRO on or an XDP
//! program attached, which is exactly the "peer needs NAPI" rule from XDP-NOTES; reading
//! the flag covers that case and every physical driver alike, without guessing.

use std::{io, mem::size_of, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd, time::Duration};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the device implements `ndo_xdp_xmit`, i.e. accepts redirects.
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLA_HDRLEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one generic-netlink request with the given attributes.
pub(crate) fn request(family: u16, cmd: u8, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut msg = vec![0u8; NLMSG_HDRLEN + GENL_HDRLEN];
    for (kind, payload) in attrs {
        let len = NLA_HDRLEN + payload.len();
        msg.extend_from_slice(&(len as u16).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(payload);
        msg.resize(align4(msg.len()), 0);
    }
    let total = msg.len() as u32;
    msg[0..4].copy_from_slice(&total.to_ne_bytes());
    msg[4..6].copy_from_slice(&family.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    msg[NLMSG_HDRLEN] = cmd;
    msg[NLMSG_HDRLEN + 1] = 1; // version
    msg
}

/// The attributes of the first reply with sequence number `seq`, or the kernel's error.
pub(crate) fn reply_attrs(buf: &[u8], seq: u32) -> io::Result<Vec<(u16, Vec<u8>)>> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let msg_seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        if msg_seq == seq {
            if kind == NLMSG_ERROR {
                let errno = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                    .unwrap_or(-libc::EIO);
                return Err(io::Error::from_raw_os_error(-errno));
            }
            return Ok(parse_attrs(body.get(GENL_HDRLEN..).unwrap_or_default()));
        }
        at += align4(len);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no netlink reply to our request",
    ))
}

pub(crate) fn parse_attrs(mut data: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while data.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits of the type.
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < NLA_HDRLEN || len > data.len() {
            break;
        }
        out.push((kind, data[NLA_HDRLEN..len].to_vec()));
        data = &data[align4(len).min(data.len())..];
    }
    out
}

struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A kernel that never answers must not hang start-up.
        let timeout = Duration::from_secs(2);
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and has the size we pass.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Socket { fd, seq: 0 })
    }

    fn call(
        &mut self,
        family: u16,
        cmd: u8,
        attrs: &[(u16, &[u8])],
    ) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq += 1;
        let msg = request(family, cmd, self.seq, attrs);
        // SAFETY: `msg` is a valid buffer of the given length.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16384];
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        reply_attrs(&buf[..n as usize], self.seq)
    }
}

/// Reads `xdp-features` of interfaces in the current network namespace.
pub struct XdpFeatures {
    sock: Socket,
    family: u16,
}

impl XdpFeatures {
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::open()?;
        let attrs = sock.call(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")],
        )?;
        let family = attrs
            .iter()
            .find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
            .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no netdev family id"))?;
        Ok(XdpFeatures { sock, family })
    }

    /// The `NETDEV_XDP_ACT_*` bit set of `ifindex`.
    pub fn get(&mut self, ifindex: u32) -> io::Result<u64> {
        let attrs = self.sock.call(
            self.family,
            NETDEV_CMD_DEV_GET,
            &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
        )?;
        attrs
            .iter()
            .find(|(k, v)| *k == NETDEV_A_DEV_XDP_FEATURES && v.len() >= 8)
            .map(|(_, v)| u64::from_ne_bytes(v[..8].try_into().unwrap_or_default()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "reply lacks xdp-features"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_padded_and_sized() {
        let m = request(0x1234, 7, 9, &[(2, b"netdev\0")]);
        assert_eq!(m.len(), 16 + 4 + 4 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x1234);
        assert_eq!(m[16], 7);
        let attrs = parse_attrs(&m[20..]);
        assert_eq!(attrs, vec![(2, b"netdev\0".to_vec())]);
    }

    #[test]
    fn errors_and_truncation_do_not_panic() {
        // An NLMSG_ERROR reply carrying -ENODEV.
        let mut m = vec![0u8; 16 + 4];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[8..12].copy_from_slice(&5u32.to_ne_bytes());
        m[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let e = reply_attrs(&m, 5).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        for cut in 0..m.len() {
            let _ = reply_attrs(&m[..cut], 5);
        }
        assert!(parse_attrs(&[0xff, 0xff, 1, 0]).is_empty());
    }

    #[test]
    fn loopback_reports_its_features() {
        // Every kernel with the netdev family answers for lo (features may be 0).
        match XdpFeatures::open() {
            Ok(mut f) => {
                let lo = crate::sys::ifindex("lo").unwrap();
                f.get(lo).expect("xdp-features of lo");
            }
            Err(e) => eprintln!("skipped: netdev genetlink family unavailable: {e}"),
        }
    }
}
