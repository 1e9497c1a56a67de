//! Asks the kernel whether an interface can take XDP redirects, via the generic-netlink
//! `netdev` family (Linux 6.3+).
//!
//! The kernel refuses (and drops) a redirect into a device whose `xdp-features` lack
//! `NDO_XMIT`. A veth advertises `NDO_XMIT` only while its *peer* has GRO on or an XDP
//! program attached, which is exactly the "peer needs NAPI" rule from XDP-NOTES; reading
//! the flag covers that case and every physical driver alike, without guessing.
//!
//! A reply counts only if it carries the request's sequence number and our port id, so a late
//! answer to a timed-out request is skipped, never taken for the next one's.

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

/// A message's attributes: `(type, payload)`.
pub(crate) type Attrs = Vec<(u16, Vec<u8>)>;

/// What one datagram from the kernel says about request `seq` of socket `portid`: `None`
/// when none of its messages answers it (a late reply to an earlier request, which is
/// skipped), else the reply's attributes or the kernel's error.
pub(crate) fn match_reply(buf: &[u8], seq: u32, portid: u32) -> Option<io::Result<Attrs>> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let len = word(at) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let (msg_seq, msg_pid) = (word(at + 8), word(at + 12));
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        if msg_seq == seq && msg_pid == portid {
            if kind == NLMSG_ERROR {
                let errno = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-libc::EIO);
                if errno == 0 {
                    // An acknowledgement carries no attributes; ours asks for none.
                    return Some(Ok(Vec::new()));
                }
                return Some(Err(io::Error::from_raw_os_error(-errno)));
            }
            return Some(Ok(parse_attrs(body.get(GENL_HDRLEN..).unwrap_or_default())));
        }
        at += align4(len);
    }
    None
}

/// Receives datagrams with `recv` until one answers request `seq` of socket `portid`,
/// skipping the late replies to earlier requests (one that timed out is answered later,
/// and must not be taken for the answer to the next). Gives up after `limit` datagrams.
pub(crate) fn await_reply(
    mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
    seq: u32,
    portid: u32,
    limit: usize,
) -> io::Result<Attrs> {
    let mut buf = vec![0u8; 16384];
    for _ in 0..limit {
        let n = recv(&mut buf)?;
        if let Some(reply) = match_reply(&buf[..n], seq, portid) {
            return reply;
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("no netlink reply to request {seq} among {limit} messages"),
    ))
}

pub(crate) fn parse_attrs(mut data: &[u8]) -> Attrs {
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

/// How long the kernel may take to answer one request: a kernel that never answers must
/// not hang start-up or the refresh.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Datagrams read while waiting for one reply: late replies to requests that timed out
/// are few, so more means something else is wrong.
const MAX_SKIPPED: usize = 64;

struct Socket {
    fd: OwnedFd,
    /// Our netlink port id: the kernel addresses its replies to it.
    portid: u32,
    seq: u32,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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
        check(fd)?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and has the size we pass.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        // Bound with port id 0, the kernel picks a unique one; replies name it.
        // SAFETY: sockaddr_nl is plain data, valid all-zero.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let mut len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` is a sockaddr_nl of the length we pass.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            )
        })?;
        // SAFETY: `addr` and `len` are writable and `len` holds `addr`'s size.
        check(unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                &mut addr as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        })?;
        Ok(Socket {
            fd,
            portid: addr.nl_pid,
            seq: 0,
        })
    }

    /// One datagram from the kernel (others' are dropped); `flags` as for recvfrom(2).
    fn recv(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        loop {
            // SAFETY: sockaddr_nl is plain data, valid all-zero.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf` is writable for its whole length, `from` for `len` bytes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    flags,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if from.nl_pid == 0 {
                return Ok(n as usize);
            }
        }
    }

    /// Discards whatever is queued: late replies to requests that timed out.
    fn drain(&self) {
        let mut buf = vec![0u8; 16384];
        while self.recv(&mut buf, libc::MSG_DONTWAIT).is_ok() {}
    }

    fn call(&mut self, family: u16, cmd: u8, attrs: &[(u16, &[u8])]) -> io::Result<Attrs> {
        self.drain();
        self.seq = self.seq.wrapping_add(1);
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
        await_reply(|buf| self.recv(buf, 0), self.seq, self.portid, MAX_SKIPPED)
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

    /// A datagram from the kernel: one message of `family` answering `seq` on port `pid`.
    fn reply(seq: u32, pid: u32, xdp_features: u64) -> Vec<u8> {
        let mut m = request(
            0x20,
            NETDEV_CMD_DEV_GET,
            seq,
            &[(NETDEV_A_DEV_XDP_FEATURES, &xdp_features.to_ne_bytes())],
        );
        m[12..16].copy_from_slice(&pid.to_ne_bytes());
        m
    }

    fn features(attrs: &[(u16, Vec<u8>)]) -> u64 {
        let (_, v) = attrs
            .iter()
            .find(|(k, _)| *k == NETDEV_A_DEV_XDP_FEATURES)
            .expect("xdp-features attribute");
        u64::from_ne_bytes(v[..8].try_into().unwrap())
    }

    /// Hands out `datagrams` one per receive, then times out like SO_RCVTIMEO.
    fn kernel(datagrams: Vec<Vec<u8>>) -> impl FnMut(&mut [u8]) -> io::Result<usize> {
        let mut queue: std::collections::VecDeque<Vec<u8>> = datagrams.into();
        move |buf| match queue.pop_front() {
            Some(d) => {
                buf[..d.len()].copy_from_slice(&d);
                Ok(d.len())
            }
            None => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
        }
    }

    #[test]
    fn a_late_reply_to_a_timed_out_request_is_not_the_next_ones_answer() {
        // Request 1 timed out; its reply arrives while we wait for request 2's.
        let got = await_reply(kernel(vec![reply(1, 77, 1), reply(2, 77, 4)]), 2, 77, 8).unwrap();
        assert_eq!(features(&got), 4);
        // And the one after is not shifted either.
        let got = await_reply(kernel(vec![reply(3, 77, 5)]), 3, 77, 8).unwrap();
        assert_eq!(features(&got), 5);
    }

    #[test]
    fn replies_to_another_port_are_not_ours() {
        let got = await_reply(kernel(vec![reply(2, 78, 1), reply(2, 77, 4)]), 2, 77, 8).unwrap();
        assert_eq!(features(&got), 4);
        assert!(match_reply(&reply(2, 78, 1), 2, 77).is_none());
    }

    #[test]
    fn the_answer_may_follow_a_stale_message_in_one_datagram() {
        let mut d = reply(1, 77, 1);
        d.extend(reply(2, 77, 4));
        assert_eq!(features(&match_reply(&d, 2, 77).unwrap().unwrap()), 4);
    }

    #[test]
    fn waiting_ends_on_timeout_or_after_the_limit() {
        let e = await_reply(kernel(vec![reply(1, 77, 1)]), 2, 77, 8).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        let stale = (0..10).map(|_| reply(1, 77, 1)).collect();
        let e = await_reply(kernel(stale), 2, 77, 8).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn errors_and_truncation_do_not_panic() {
        // An NLMSG_ERROR reply carrying -ENODEV.
        let mut m = vec![0u8; 16 + 4];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[8..12].copy_from_slice(&5u32.to_ne_bytes());
        m[12..16].copy_from_slice(&77u32.to_ne_bytes());
        m[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let e = match_reply(&m, 5, 77).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        for cut in 0..m.len() {
            assert!(match_reply(&m[..cut], 5, 77).is_none());
        }
        assert!(parse_attrs(&[0xff, 0xff, 1, 0]).is_empty());
    }

    #[test]
    fn a_late_reply_is_drained_before_the_next_request() {
        // Every kernel with the netdev family answers for lo; skipped without it.
        let Ok(mut f) = XdpFeatures::open() else {
            srvgate_tests::skip(
                "a_late_reply_is_drained_before_the_next_request",
                "the kernel has no netdev genetlink family",
            );
            return;
        };
        let lo = crate::kernel::sys::ifindex("lo").unwrap();
        // A request whose reply nobody reads, as after a timeout.
        f.sock.seq += 1;
        let msg = request(
            f.family,
            NETDEV_CMD_DEV_GET,
            f.sock.seq,
            &[(NETDEV_A_DEV_IFINDEX, &lo.to_ne_bytes())],
        );
        // SAFETY: `msg` is a valid buffer of the given length.
        let sent = unsafe {
            libc::send(
                f.sock.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        assert_eq!(sent, msg.len() as isize);
        for _ in 0..3 {
            f.get(lo).expect("xdp-features of lo");
        }
    }

    #[test]
    fn loopback_reports_its_features() {
        // Every kernel with the netdev family answers for lo (features may be 0).
        match XdpFeatures::open() {
            Ok(mut f) => {
                let lo = crate::kernel::sys::ifindex("lo").unwrap();
                f.get(lo).expect("xdp-features of lo");
            }
            Err(e) => srvgate_tests::skip(
                "loopback_reports_its_features",
                &format!("the kernel has no netdev genetlink family: {e}"),
            ),
        }
    }
}
