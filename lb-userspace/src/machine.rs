//! This machine's network interfaces and their IPv4 addresses, read in this one place for
//! the config's checks (`config::machine`, `config::OwnAddresses`) and the kernel side (the
//! data plane's legs and guards) alike; and the source address its routing picks toward a
//! destination ([`route_source`]), which the web routers and the health checks ask.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

/// A network interface as the config's checks and the data plane needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub loopback: bool,
    pub ipv4: Vec<Ipv4Addr>,
    /// The same addresses, each with its prefix length (from its netmask).
    pub ipv4_nets: Vec<(Ipv4Addr, u8)>,
}

/// Every network interface of this network namespace with its flags and IPv4 addresses
/// (`getifaddrs(3)`, which lists interfaces without an address too, as AF_PACKET entries).
pub fn interfaces() -> io::Result<Vec<Interface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is ours until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out: Vec<Interface> = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a non-null `ifa_name` is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let i = match out.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                out.push(Interface {
                    name,
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        out[i].loopback |= ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        // SAFETY: a non-null `ifa_addr` points to a sockaddr whose family says its type;
        // for AF_INET it is a sockaddr_in, and so is a non-null `ifa_netmask` beside it.
        unsafe {
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let addr = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let len = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                    u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
                };
                out[i].ipv4.push(addr);
                out[i].ipv4_nets.push((addr, len));
            }
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The local address the kernel would use toward `addr`: `addr` itself when it is one of
/// this machine's own. A UDP socket's connect picks it and sends nothing.
pub fn route_source(addr: SocketAddrV4) -> io::Result<SocketAddr> {
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    probe.connect(addr)?;
    probe.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_lists_loopback_with_its_flag() {
        let all = interfaces().unwrap();
        let lo = all
            .iter()
            .find(|i| i.name == "lo")
            .expect("lo in every namespace");
        assert!(lo.loopback);
        if let Some(other) = all.iter().find(|i| i.ipv4.iter().any(|a| !a.is_loopback())) {
            assert!(!other.loopback, "{other:?}");
        }
    }
}
