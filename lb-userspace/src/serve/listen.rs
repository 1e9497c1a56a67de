//! How every server of the daemon binds its listening sockets: with `IP_FREEBIND`, so an
//! address that is not on this machine (yet) is bound anyway and answers once it arrives.
//! A standby gateway of a failover pair does not hold the public address that keepalived
//! moves to it later; without this, listening on that address would refuse to start.
//!
//! [`not_local`] names the listeners that wait for an address, which the daemon logs at start
//! with whether this gateway holds the public address (`active`) or not (`standby`).

use std::{io, net::SocketAddr};

use socket2::{Domain, Socket, Type};

/// Backlog of every TCP listener: the kernel caps it at `net.core.somaxconn`.
const TCP_BACKLOG: i32 = 1024;

/// A non-blocking socket of type `ty` for `addr`, free-binding, IPv6 sockets v6-only.
pub fn socket(addr: SocketAddr, ty: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        // Otherwise `[::]:53` also takes 0.0.0.0:53 and a config listing both fails.
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A TCP listener on `addr` (see the module docs). `SO_REUSEADDR`: a restarted daemon must
/// get its port back while old connections sit in TIME_WAIT.
pub fn tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket(addr, Type::STREAM)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(TCP_BACKLOG)?;
    Ok(socket.into())
}

/// [`tcp`] for tokio.
pub fn tokio_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(tcp(addr)?)
}

/// The addresses of `addrs` that no interface of this machine (this network namespace)
/// holds now, apart from the wildcard: bound anyway, worth a line in the log.
pub fn not_local(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Ok(ifaces) = crate::machine::interfaces() else {
        return Vec::new();
    };
    addrs
        .iter()
        .filter(|a| match a.ip() {
            std::net::IpAddr::V4(ip) => {
                !ip.is_unspecified() && !ifaces.iter().any(|i| i.ipv4.contains(&ip))
            }
            std::net::IpAddr::V6(_) => false,
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_this_machine_lacks_is_bound_anyway() {
        // TEST-NET-3: on no interface of a test machine.
        let addr: SocketAddr = "203.0.113.77:0".parse().unwrap();
        let plain = std::net::TcpListener::bind(addr).unwrap_err();
        assert_eq!(plain.kind(), io::ErrorKind::AddrNotAvailable);
        let l = tcp(addr).expect("IP_FREEBIND binds a nonlocal address");
        assert_eq!(l.local_addr().unwrap().ip(), addr.ip());
        assert_eq!(
            not_local(&[addr, "0.0.0.0:53".parse().unwrap()]),
            vec![addr]
        );
        let u = socket(addr, Type::DGRAM).unwrap();
        u.bind(&addr.into()).unwrap();
    }
}
