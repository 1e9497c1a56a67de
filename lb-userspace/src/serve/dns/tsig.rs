//! TSIG (RFC 8945) with HMAC-SHA256, on wire bytes: what authenticates the secondaries'
//! transfers and our NOTIFYs to them.
//!
//! Pure and small on purpose: hickory 0.26 keeps its TSIG signer behind its DNSSEC features
//! and signs whole `Message`s, while the server answers in bytes ([`super::zone::respond`])
//! and a transfer is a run of messages, each signed over the one before (section 5.3.1).
//! So this works on the bytes: [`verify`] finds the TSIG record (the last additional
//! record), checks the key, time and MAC; [`sign`] appends one. ring's HMAC compares in
//! constant time.
//!
//! Bounded: a message is at most 64 KiB and the walk over it reads each byte once; any
//! malformed length is a [`TsigError::Malformed`] naming what was wrong.

use hickory_proto::rr::Name;
use ring::hmac;

/// The one algorithm we speak (RFC 8945 section 6: mandatory to implement).
pub const ALGORITHM: &str = "hmac-sha256.";
/// Seconds a signature's time may differ from ours, both ways (the RFC's recommended 300).
pub const FUDGE: u16 = 300;
const TYPE_TSIG: u16 = 250;
const CLASS_ANY: u16 = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TsigError {
    #[error("the request is not signed (no TSIG record)")]
    Unsigned,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("signed with key {0:?}, not ours")]
    UnknownKey(String),
    #[error("signed with algorithm {0:?}; only hmac-sha256 is accepted")]
    BadAlgorithm(String),
    #[error("the MAC does not match (wrong secret, or the message was changed)")]
    BadSignature,
    #[error("signed at {signed}, {off} s away from our clock (at most {FUDGE})")]
    BadTime { signed: u64, off: u64 },
}

/// A shared secret and its name, as both ends have it configured.
pub struct Key {
    /// The name in canonical wire form (lowercase, uncompressed), as the MAC covers it.
    name_wire: Vec<u8>,
    name: String,
    key: hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Key").field("name", &self.name).finish()
    }
}

impl Key {
    /// `name` is a domain name (e.g. `srvgate-xfr`), `secret` the raw bytes.
    pub fn new(name: &str, secret: &[u8]) -> Result<Key, String> {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let parsed = Name::from_ascii(format!("{lower}.")).map_err(|e| e.to_string())?;
        Ok(Key {
            name_wire: wire_name(&parsed),
            name: lower,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn wire_name(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// What a verified request carried, needed to sign the answer.
#[derive(Clone, Debug)]
pub struct Verified {
    pub mac: Vec<u8>,
    /// Length of the request without its TSIG record (ARCOUNT is one more there).
    pub unsigned_len: usize,
}

/// Where the TSIG record starts, if the last additional record is one.
pub fn find(msg: &[u8]) -> Result<Option<usize>, TsigError> {
    if msg.len() < 12 {
        return Err(TsigError::Malformed("shorter than a header"));
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if ar == 0 {
        return Ok(None);
    }
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(msg, at)? + 4;
    }
    for _ in 0..an + ns + ar - 1 {
        at = skip_record(msg, at)?;
    }
    let start = at;
    let after_name = skip_name(msg, at)?;
    let rtype = msg
        .get(after_name..after_name + 2)
        .ok_or(TsigError::Malformed("record cut short"))?;
    if u16::from_be_bytes([rtype[0], rtype[1]]) != TYPE_TSIG {
        return Ok(None);
    }
    if skip_record(msg, start)? != msg.len() {
        return Err(TsigError::Malformed("bytes after the TSIG record"));
    }
    Ok(Some(start))
}

pub(super) fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, TsigError> {
    // 128 labels is the most a 255-byte name holds; a loop of pointers cannot get further.
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(TsigError::Malformed("name cut short"))?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => {
                return if at + 2 <= msg.len() {
                    Ok(at + 2)
                } else {
                    Err(TsigError::Malformed("name cut short"))
                }
            }
            l if l & 0xc0 != 0 => return Err(TsigError::Malformed("unknown label type")),
            l => at += 1 + usize::from(l),
        }
    }
    Err(TsigError::Malformed("name too long"))
}

pub(super) fn skip_record(msg: &[u8], at: usize) -> Result<usize, TsigError> {
    let at = skip_name(msg, at)?;
    let rdlen = msg
        .get(at + 8..at + 10)
        .ok_or(TsigError::Malformed("record cut short"))?;
    let end = at + 10 + usize::from(u16::from_be_bytes([rdlen[0], rdlen[1]]));
    if end > msg.len() {
        return Err(TsigError::Malformed("record data cut short"));
    }
    Ok(end)
}

/// Reads an uncompressed name's labels into canonical wire form.
fn read_name(msg: &[u8], at: usize) -> Result<(Vec<u8>, usize), TsigError> {
    let end = skip_name(msg, at)?;
    let raw = &msg[at..end];
    if raw.last() != Some(&0) {
        return Err(TsigError::Malformed("compressed name in TSIG"));
    }
    Ok((raw.iter().map(u8::to_ascii_lowercase).collect(), end))
}

fn name_text(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while let Some(&l) = wire.get(at) {
        if l == 0 {
            break;
        }
        let label = wire
            .get(at + 1..at + 1 + usize::from(l))
            .unwrap_or_default();
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        at += 1 + usize::from(l);
    }
    out
}

fn be16(b: &[u8], at: usize) -> Result<u16, TsigError> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or(TsigError::Malformed("TSIG data cut short"))
}

/// Checks the signed request `msg` against `key` at time `now` (seconds since the epoch).
pub fn verify(key: &Key, msg: &[u8], now: u64) -> Result<Verified, TsigError> {
    let start = find(msg)?.ok_or(TsigError::Unsigned)?;
    let (name, at) = read_name(msg, start)?;
    if name != key.name_wire {
        return Err(TsigError::UnknownKey(name_text(&name)));
    }
    if be16(msg, at + 2)? != CLASS_ANY {
        return Err(TsigError::Malformed("TSIG class is not ANY"));
    }
    let rdata = at + 10;
    let (alg, at) = read_name(msg, rdata)?;
    if name_text(&alg) != ALGORITHM {
        return Err(TsigError::BadAlgorithm(name_text(&alg)));
    }
    let time_fudge = msg
        .get(at..at + 8)
        .ok_or(TsigError::Malformed("TSIG data cut short"))?;
    let signed = time_fudge[..6]
        .iter()
        .fold(0u64, |t, b| t << 8 | u64::from(*b));
    let mac_len = usize::from(be16(msg, at + 8)?);
    let mac = msg
        .get(at + 10..at + 10 + mac_len)
        .ok_or(TsigError::Malformed("TSIG MAC cut short"))?;
    let rest = at + 10 + mac_len;
    let original_id = msg
        .get(rest..rest + 2)
        .ok_or(TsigError::Malformed("TSIG data cut short"))?;
    let error_other = msg
        .get(rest + 2..)
        .ok_or(TsigError::Malformed("TSIG data cut short"))?;
    let other_len = usize::from(be16(error_other, 2)?);
    if error_other.len() != 4 + other_len {
        return Err(TsigError::Malformed("TSIG other data length"));
    }
    // The digest: the message as it was before signing (original id, one fewer additional
    // record), then the TSIG variables (section 4.3.3).
    let mut tbs = Vec::with_capacity(start + 64);
    tbs.extend_from_slice(original_id);
    tbs.extend_from_slice(&msg[2..start]);
    let ar = u16::from_be_bytes([msg[10], msg[11]]) - 1;
    tbs[10..12].copy_from_slice(&ar.to_be_bytes());
    tbs.extend_from_slice(&name);
    tbs.extend_from_slice(&CLASS_ANY.to_be_bytes());
    tbs.extend_from_slice(&0u32.to_be_bytes());
    tbs.extend_from_slice(&alg);
    tbs.extend_from_slice(time_fudge);
    tbs.extend_from_slice(error_other);
    hmac::verify(&key.key, &tbs, mac).map_err(|_| TsigError::BadSignature)?;
    // Time after the MAC: an unauthenticated time says nothing (section 5.2.3).
    let fudge = u64::from(u16::from_be_bytes([time_fudge[6], time_fudge[7]]));
    let off = now.abs_diff(signed);
    if off > fudge.min(u64::from(FUDGE)) {
        return Err(TsigError::BadTime { signed, off });
    }
    Ok(Verified {
        mac: mac.to_vec(),
        unsigned_len: start,
    })
}

/// The request without its TSIG record, as an unsigned query reads: for the ordinary
/// answering path.
pub fn strip(msg: &[u8], verified: &Verified) -> Vec<u8> {
    let mut out = msg[..verified.unsigned_len].to_vec();
    let ar = u16::from_be_bytes([out[10], out[11]]).saturating_sub(1);
    out[10..12].copy_from_slice(&ar.to_be_bytes());
    out
}

/// How a message's MAC chains to what came before.
#[derive(Clone, Copy, Debug)]
pub enum Chain<'a> {
    /// A request (a NOTIFY we send).
    Request,
    /// The first (or only) message of a response: over the request's MAC and all variables.
    Response(&'a [u8]),
    /// A later message of a multi-message response: over the previous MAC and the timers
    /// only (section 5.3.1).
    Subsequent(&'a [u8]),
}

/// Appends a TSIG record to `msg` (whose id is the original id), bumping ARCOUNT, and
/// returns the MAC for the next message of the chain.
pub fn sign(key: &Key, msg: &mut Vec<u8>, chain: Chain<'_>, now: u64) -> Vec<u8> {
    let alg = wire_name(&Name::from_ascii(ALGORITHM).unwrap_or_else(|_| Name::root()));
    let time = now.to_be_bytes();
    let mut timers = Vec::with_capacity(8);
    timers.extend_from_slice(&time[2..]);
    timers.extend_from_slice(&FUDGE.to_be_bytes());
    let mut ctx = hmac::Context::with_key(&key.key);
    match chain {
        Chain::Request => {}
        Chain::Response(prior) | Chain::Subsequent(prior) => {
            ctx.update(&(prior.len() as u16).to_be_bytes());
            ctx.update(prior);
        }
    }
    ctx.update(msg);
    match chain {
        Chain::Subsequent(_) => ctx.update(&timers),
        Chain::Request | Chain::Response(_) => {
            ctx.update(&key.name_wire);
            ctx.update(&CLASS_ANY.to_be_bytes());
            ctx.update(&0u32.to_be_bytes());
            ctx.update(&alg);
            ctx.update(&timers);
            // Error NOERROR, no other data.
            ctx.update(&[0, 0, 0, 0]);
        }
    }
    let mac = ctx.sign();
    let mac = mac.as_ref();
    let id = [msg[0], msg[1]];
    let mut rdata = Vec::with_capacity(alg.len() + 16 + mac.len());
    rdata.extend_from_slice(&alg);
    rdata.extend_from_slice(&timers);
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(mac);
    rdata.extend_from_slice(&id);
    rdata.extend_from_slice(&[0, 0, 0, 0]);
    msg.extend_from_slice(&key.name_wire);
    msg.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    msg.extend_from_slice(&CLASS_ANY.to_be_bytes());
    msg.extend_from_slice(&0u32.to_be_bytes());
    msg.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    msg.extend_from_slice(&rdata);
    let ar = u16::from_be_bytes([msg[10], msg[11]]).wrapping_add(1);
    msg[10..12].copy_from_slice(&ar.to_be_bytes());
    mac.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::{Message, Query},
        rr::RecordType,
    };

    fn key() -> Key {
        Key::new("srvgate-xfr", b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn request() -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("lab.example.").unwrap(),
            RecordType::AXFR,
        ));
        q.to_vec().unwrap()
    }

    #[test]
    fn a_signed_request_verifies_and_strips_back_to_the_original() {
        let k = key();
        let original = request();
        let mut msg = original.clone();
        let mac = sign(&k, &mut msg, Chain::Request, 1_000_000);
        let v = verify(&k, &msg, 1_000_100).unwrap();
        assert_eq!(v.mac, mac);
        assert_eq!(strip(&msg, &v), original);
        // hickory reads it as a message still.
        assert!(Message::from_vec(&msg).is_ok());
    }

    #[test]
    fn tampering_a_wrong_key_or_a_stale_time_is_refused() {
        let k = key();
        let mut msg = request();
        sign(&k, &mut msg, Chain::Request, 1_000_000);
        let mut changed = msg.clone();
        changed[13] ^= 0x20;
        assert_eq!(
            verify(&k, &changed, 1_000_000).unwrap_err(),
            TsigError::BadSignature
        );
        let other = Key::new("srvgate-xfr", b"another secret, same name........").unwrap();
        assert_eq!(
            verify(&other, &msg, 1_000_000).unwrap_err(),
            TsigError::BadSignature
        );
        let named = Key::new("other-key", b"0123456789abcdef0123456789abcdef").unwrap();
        assert!(matches!(
            verify(&named, &msg, 1_000_000),
            Err(TsigError::UnknownKey(n)) if n == "srvgate-xfr."
        ));
        assert!(matches!(
            verify(&k, &msg, 1_000_301),
            Err(TsigError::BadTime { off: 301, .. })
        ));
        assert_eq!(
            verify(&k, &request(), 1_000_000).unwrap_err(),
            TsigError::Unsigned
        );
        // Every truncation is an error, never a panic.
        for n in 0..msg.len() {
            assert!(verify(&k, &msg[..n], 1_000_000).is_err(), "{n} bytes");
        }
    }

    /// A response chain verifies the way a secondary checks it: the first message over the
    /// request's MAC, the next over the first's MAC and timers only (checked here by
    /// recomputing the digest by hand).
    #[test]
    fn a_response_chain_covers_the_previous_mac() {
        let k = key();
        let mut first = request();
        first[2] |= 0x80;
        let mac1 = sign(&k, &mut first, Chain::Response(b"request-mac"), 5);
        let mut tbs = Vec::new();
        tbs.extend_from_slice(&11u16.to_be_bytes());
        tbs.extend_from_slice(b"request-mac");
        let unsigned = find(&first).unwrap().unwrap();
        let mut plain = first[..unsigned].to_vec();
        plain[11] -= 1;
        tbs.extend_from_slice(&plain);
        tbs.extend_from_slice(&k.name_wire);
        tbs.extend_from_slice(&[0, 255, 0, 0, 0, 0]);
        tbs.extend_from_slice(&wire_name(&Name::from_ascii(ALGORITHM).unwrap()));
        tbs.extend_from_slice(&[0, 0, 0, 0, 0, 5, 1, 44, 0, 0, 0, 0]);
        assert_eq!(hmac::sign(&k.key, &tbs).as_ref(), mac1.as_slice());

        let plain = request();
        let mut second = plain.clone();
        let mac2 = sign(&k, &mut second, Chain::Subsequent(&mac1), 6);
        let mut tbs = Vec::new();
        tbs.extend_from_slice(&32u16.to_be_bytes());
        tbs.extend_from_slice(&mac1);
        tbs.extend_from_slice(&plain);
        tbs.extend_from_slice(&[0, 0, 0, 0, 0, 6, 1, 44]);
        assert_eq!(hmac::sign(&k.key, &tbs).as_ref(), mac2.as_slice());
    }
}
