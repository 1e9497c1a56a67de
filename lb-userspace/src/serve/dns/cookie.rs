//! DNS cookies (RFC 7873, server cookies as RFC 9018 lays them out): a UDP answer to a
//! query with a client cookie carries a server cookie, and a later query presenting it
//! proves its source address, so it is exempt from response-rate limiting ([`super::rrl`]):
//! a resolver that speaks cookies (BIND and Unbound do by default) is never held back by a
//! flood forged in its name.
//!
//! The server cookie is RFC 9018's 16 bytes: version 1, three reserved zero bytes, the time
//! it was made (seconds), and a hash of client cookie, those 8 bytes and the client's
//! address. The hash is HMAC-SHA256 cut to 8 bytes under a secret made at start, not
//! RFC 9018's SipHash-2-4: the secret is per gateway (each gateway of a cluster answers
//! its own cookies, which the RFC allows), so no other implementation needs to check ours.
//! A cookie is good for [`LIFETIME`] seconds. Bad or stale server cookies are never an
//! error: such a query is answered like one without cookie (a fresh cookie, and limited).
//!
//! Everything here reads at most one query's bytes (at most 4096) and allocates nothing
//! but the answer's option.

use std::net::IpAddr;

use ring::{hmac, rand::SecureRandom};

use super::tsig::{skip_name, skip_record};

/// How long a server cookie proves its client's address (RFC 9018: an hour).
pub const LIFETIME: u32 = 3600;
/// A cookie dated this far in the future still counts (clock steps, RFC 9018 section 4.3).
const FUTURE_SLACK: u32 = 300;
const COOKIE: u16 = 10;
const TYPE_OPT: u16 = 41;

pub struct Cookies {
    key: hmac::Key,
}

impl std::fmt::Debug for Cookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookies")
    }
}

/// The cookie a query carries: the client's, and the server's if it sent one back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    pub client: [u8; 8],
    pub server: &'a [u8],
    /// The UDP payload size the query's OPT announced, which the answer with the cookie
    /// must still fit (clamped to 512..=`MAX_UDP_PAYLOAD`).
    pub payload: u16,
}

impl Presented<'_> {
    pub fn limit(&self) -> usize {
        usize::from(self.payload.clamp(512, super::MAX_UDP_PAYLOAD))
    }
}

impl Cookies {
    pub fn new() -> Cookies {
        let mut secret = [0u8; 32];
        // Without randomness a cookie is still a cookie, only a guessable one; there is
        // always randomness on Linux.
        let _ = ring::rand::SystemRandom::new().fill(&mut secret);
        Cookies::with_secret(&secret)
    }

    pub fn with_secret(secret: &[u8]) -> Cookies {
        Cookies {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The server cookie for `client` at `ip`, made at `now`.
    pub fn make(&self, client: &[u8; 8], ip: IpAddr, now: u32) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0] = 1;
        out[4..8].copy_from_slice(&now.to_be_bytes());
        let hash = self.hash(client, &out[..8], ip);
        out[8..].copy_from_slice(&hash);
        out
    }

    fn hash(&self, client: &[u8; 8], head: &[u8], ip: IpAddr) -> [u8; 8] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(client);
        ctx.update(head);
        match ip {
            IpAddr::V4(v4) => ctx.update(&v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ctx.update(&v4.octets()),
                None => ctx.update(&v6.octets()),
            },
        }
        let tag = ctx.sign();
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag.as_ref()[..8]);
        out
    }

    /// Whether `presented` holds a server cookie we made for this client and address
    /// within [`LIFETIME`].
    pub fn valid(&self, presented: &Presented<'_>, ip: IpAddr, now: u32) -> bool {
        let s = presented.server;
        if s.len() != 16 || s[0] != 1 {
            return false;
        }
        let made = u32::from_be_bytes([s[4], s[5], s[6], s[7]]);
        let fresh =
            made <= now.saturating_add(FUTURE_SLACK) && now.saturating_sub(made) <= LIFETIME;
        // ring compares the tag in constant time through verify; here a plain comparison of
        // a truncated tag: equality short-cut timing leaks at most which byte differed of a
        // value bound to the client's own cookie and address.
        fresh && self.hash(&presented.client, &s[..8], ip) == s[8..16]
    }
}

impl Default for Cookies {
    fn default() -> Self {
        Cookies::new()
    }
}

/// Where the OPT record of `msg` is (its start and end), if its last record is one.
fn last_opt(msg: &[u8]) -> Option<(usize, usize)> {
    if msg.len() < 12 {
        return None;
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    let (qd, records) = (count(4), count(6) + count(8) + count(10));
    if records == 0 {
        return None;
    }
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(msg, at).ok()? + 4;
    }
    for _ in 0..records - 1 {
        at = skip_record(msg, at).ok()?;
    }
    let end = skip_record(msg, at).ok()?;
    // OPT's owner is the root: one zero byte.
    if msg.get(at) != Some(&0) || msg.get(at + 1..at + 3)? != TYPE_OPT.to_be_bytes() {
        return None;
    }
    Some((at, end))
}

/// The COOKIE option of `query`'s OPT record (the last record of a query with EDNS), if
/// it has a well-formed one.
pub fn presented(query: &[u8]) -> Option<Presented<'_>> {
    let (at, end) = last_opt(query)?;
    let mut o = at + 11;
    while o + 4 <= end {
        let code = u16::from_be_bytes([query[o], query[o + 1]]);
        let len = usize::from(u16::from_be_bytes([query[o + 2], query[o + 3]]));
        let data = query.get(o + 4..o + 4 + len)?;
        if code == COOKIE {
            if !matches!(len, 8 | 16..=40) {
                return None;
            }
            let mut client = [0u8; 8];
            client.copy_from_slice(&data[..8]);
            return Some(Presented {
                client,
                server: &data[8..],
                payload: u16::from_be_bytes([query[at + 3], query[at + 4]]),
            });
        }
        o += 4 + len;
    }
    None
}

/// Adds the COOKIE option (client and server cookie) to `reply`'s OPT record, when it ends
/// with one and the result stays within `limit` bytes; whether it did.
pub fn add(reply: &mut Vec<u8>, client: &[u8; 8], server: &[u8; 16], limit: usize) -> bool {
    let Some((at, end)) = last_opt(reply) else {
        return false;
    };
    if end != reply.len() || reply.len() + 28 > limit {
        return false;
    }
    let rdlen_at = at + 9;
    let rdlen = u16::from_be_bytes([reply[rdlen_at], reply[rdlen_at + 1]]) + 28;
    reply[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    reply.extend_from_slice(&COOKIE.to_be_bytes());
    reply.extend_from_slice(&24u16.to_be_bytes());
    reply.extend_from_slice(client);
    reply.extend_from_slice(server);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::{Edns, Message, Query},
        rr::{
            rdata::opt::{EdnsCode, EdnsOption},
            Name, RecordType,
        },
    };

    fn query_with(cookie: Option<Vec<u8>>) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("alice.ssh.lab.example.").unwrap(),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        if let Some(c) = cookie {
            edns.options_mut()
                .insert(EdnsOption::Unknown(EdnsCode::Cookie.into(), c));
        }
        q.set_edns(edns);
        q.to_vec().unwrap()
    }

    #[test]
    fn a_server_cookie_proves_the_client_and_address_for_an_hour() {
        let c = Cookies::with_secret(b"secret");
        let ip: IpAddr = "10.210.1.2".parse().unwrap();
        let client = *b"clientck";
        let server = c.make(&client, ip, 1000);
        let p = Presented {
            client,
            server: &server,
            payload: 1232,
        };
        assert!(c.valid(&p, ip, 1000));
        assert!(c.valid(&p, ip, 1000 + LIFETIME));
        assert!(!c.valid(&p, ip, 1001 + LIFETIME), "stale");
        assert!(
            !c.valid(&p, "10.210.1.3".parse().unwrap(), 1000),
            "another address"
        );
        let other = Presented {
            client: *b"another!",
            server: &server,
            payload: 1232,
        };
        assert!(!c.valid(&other, ip, 1000), "another client cookie");
        assert!(
            !Cookies::with_secret(b"other").valid(&p, ip, 1000),
            "another gateway"
        );
        let mut tampered = server;
        tampered[15] ^= 1;
        let t = Presented {
            client,
            server: &tampered,
            payload: 1232,
        };
        assert!(!c.valid(&t, ip, 1000));
    }

    #[test]
    fn the_option_is_read_from_a_query_and_added_to_a_reply() {
        let mut cookie = b"clientck".to_vec();
        assert_eq!(
            presented(&query_with(Some(cookie.clone()))).unwrap(),
            Presented {
                client: *b"clientck",
                server: &[],
                payload: 1232,
            }
        );
        cookie.extend_from_slice(&[7; 16]);
        assert_eq!(
            presented(&query_with(Some(cookie))).unwrap().server,
            &[7; 16]
        );
        assert!(presented(&query_with(None)).is_none());
        assert!(presented(&query_with(Some(vec![1; 9]))).is_none());
        // Every prefix of a query with a cookie: no panic.
        let q = query_with(Some(b"clientck".to_vec()));
        for n in 0..q.len() {
            let _ = presented(&q[..n]);
        }

        // A reply with an OPT record gets the option; hickory reads it back.
        let mut reply = query_with(None);
        reply[2] |= 0x80;
        let len = reply.len();
        assert!(add(&mut reply, b"clientck", &[9; 16], 1232));
        assert_eq!(reply.len(), len + 28);
        let m = Message::from_vec(&reply).unwrap();
        let got = m.edns.unwrap();
        let option = got
            .options()
            .as_ref()
            .iter()
            .find(|(code, _)| *code == EdnsCode::Cookie)
            .map(|(_, o)| o.clone())
            .expect("a cookie option");
        let EdnsOption::Unknown(_, bytes) = option else {
            panic!("{option:?}")
        };
        assert_eq!(&bytes[..8], b"clientck");
        assert_eq!(&bytes[8..], &[9; 16]);
        // Not past the size limit.
        let mut small = query_with(None);
        let limit = small.len() + 27;
        assert!(!add(&mut small, b"clientck", &[9; 16], limit));
    }
}
