//! The PROXY protocol header (haproxy's `proxy-protocol.txt`, versions 1 and 2) that tells a
//! backend which client a relayed connection is for. Only the PROXY command over TCP is
//! written; addresses of mixed families (which a dual-stack listener cannot produce once
//! mapped addresses are unmapped) are `UNKNOWN` / `LOCAL`, as the spec says.

use std::net::{IpAddr, SocketAddr};

use lb_model::ProxyProtocol;

/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header for a connection from `client` that arrived at `local` (the gateway's
/// listening address).
pub fn encode(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = (client.ip().to_canonical(), local.ip().to_canonical());
    match version {
        ProxyProtocol::V1 => match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                format!("PROXY TCP4 {s} {d} {} {}\r\n", client.port(), local.port())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                format!("PROXY TCP6 {s} {d} {} {}\r\n", client.port(), local.port())
            }
            _ => "PROXY UNKNOWN\r\n".to_string(),
        }
        .into_bytes(),
        ProxyProtocol::V2 => {
            let mut h = V2_SIGNATURE.to_vec();
            let mut addrs = Vec::with_capacity(36);
            // Version 2 in the high nibble; the low one is the command.
            let family = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    addrs.extend_from_slice(&s.octets());
                    addrs.extend_from_slice(&d.octets());
                    0x11 // AF_INET, STREAM
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    addrs.extend_from_slice(&s.octets());
                    addrs.extend_from_slice(&d.octets());
                    0x21 // AF_INET6, STREAM
                }
                _ => {
                    // LOCAL: the receiver keeps the connection's own addresses.
                    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
                    return h;
                }
            };
            addrs.extend_from_slice(&client.port().to_be_bytes());
            addrs.extend_from_slice(&local.port().to_be_bytes());
            h.push(0x21); // version 2, PROXY
            h.push(family);
            h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
            h.extend_from_slice(&addrs);
            h
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_is_one_line() {
        let h = encode(
            ProxyProtocol::V1,
            addr("10.210.1.2:51000"),
            addr("10.210.1.1:443"),
        );
        assert_eq!(h, b"PROXY TCP4 10.210.1.2 10.210.1.1 51000 443\r\n");
        let h = encode(ProxyProtocol::V1, addr("[2001:db8::2]:5"), addr("[::1]:80"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::2 ::1 5 80\r\n");
        // A v4 client on a dual-stack listener is a v4 client.
        let h = encode(
            ProxyProtocol::V1,
            addr("[::ffff:10.0.0.2]:7"),
            addr("10.0.0.1:80"),
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.2 10.0.0.1 7 80\r\n");
    }

    #[test]
    fn v2_is_the_binary_header() {
        let h = encode(
            ProxyProtocol::V2,
            addr("10.210.1.2:51000"),
            addr("10.210.1.1:443"),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
        want.extend_from_slice(&[10, 210, 1, 2, 10, 210, 1, 1]);
        want.extend_from_slice(&51000u16.to_be_bytes());
        want.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(h, want);

        let h = encode(ProxyProtocol::V2, addr("[2001:db8::2]:5"), addr("[::1]:80"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_eq!(h.len(), 16 + 36);
    }
}
