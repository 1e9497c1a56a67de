//! Zone transfers to the secondaries of `[dns.secondaries]`: AXFR (RFC 5936) and IXFR
//! (RFC 1995), each request and every message of the answer signed with TSIG ([`tsig`]).
//!
//! Who may transfer: a client whose address is one of the secondaries' and whose request is
//! signed with the key. Anyone else gets REFUSED (not listed, or unsigned) or NOTAUTH (a
//! bad key, MAC or time), and the log names the client and the reason; no zone data leaves
//! before both checks pass.
//!
//! IXFR comes from [`History`]: each change of the zone (one [`super::DnsServer::apply`])
//! is kept as the records it deleted and added between two serials, at most
//! [`History::MAX_DELTAS`] changes and [`History::MAX_RECORDS`] records; a secondary whose
//! serial is older than the oldest kept (or that the history never saw, e.g. from before a
//! restart) gets the whole zone in AXFR form, which RFC 1995 section 4 allows. The history
//! and the zone are swapped under one lock, so a transfer sees a history that ends exactly
//! at its snapshot's serial.
//!
//! Bounded: a request is at most [`super::MAX_TCP_QUERY`] bytes like any TCP query, a
//! transfer only over TCP, each answer message at most [`MESSAGE_BUDGET`] bytes of records.

use std::{
    collections::{HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hickory_proto::{
    op::{Message, OpCode, ResponseCode},
    rr::{DNSClass, LowerName, RData, Record, RecordType},
};

use super::{tsig, zone::Zone};

/// Uncompressed record bytes put in one answer message: with the header, the question and
/// the TSIG record, well below TCP's 65 535-byte message limit.
pub const MESSAGE_BUDGET: usize = 60_000;

/// The secondaries: who is notified, who may transfer, with which key.
#[derive(Debug)]
pub struct Secondaries {
    /// Where NOTIFYs go; transfers are taken from these addresses (any port).
    pub peers: Vec<SocketAddr>,
    pub key: tsig::Key,
}

impl Secondaries {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.peers.iter().any(|p| canonical(p.ip()) == ip)
    }
}

/// An IPv4 client on a dual-stack socket shows up as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One change of the zone: the serial before and after, and the records it took away and
/// brought (the SOA's change is implied by the serials).
#[derive(Debug)]
pub struct Delta {
    pub from: u32,
    pub to: u32,
    pub deleted: Vec<Record>,
    pub added: Vec<Record>,
}

/// The zone's recent changes, oldest first, each one's `from` the previous one's `to`.
#[derive(Debug, Default)]
pub struct History {
    deltas: VecDeque<Arc<Delta>>,
    records: usize,
}

impl History {
    /// Changes kept at most: days of a club's claims and releases.
    pub const MAX_DELTAS: usize = 1024;
    /// Records kept at most over all changes, so a config reload that rewrites a big zone
    /// cannot hold a second copy of it here for long.
    pub const MAX_RECORDS: usize = 65_536;

    /// Records a change. One that does not continue the last (a serial set from outside, or
    /// one going backwards) starts the history over.
    pub fn push(&mut self, delta: Delta) {
        let continues = self.deltas.back().is_none_or(|last| last.to == delta.from);
        if !continues || !serial_lt(delta.from, delta.to) {
            self.deltas.clear();
            self.records = 0;
        }
        self.records += delta.deleted.len() + delta.added.len();
        self.deltas.push_back(Arc::new(delta));
        while self.deltas.len() > Self::MAX_DELTAS || self.records > Self::MAX_RECORDS {
            let Some(old) = self.deltas.pop_front() else {
                break;
            };
            self.records -= old.deleted.len() + old.added.len();
        }
    }

    /// The changes from `serial` to `to`, if all are kept.
    pub fn between(&self, serial: u32, to: u32) -> Option<Vec<Arc<Delta>>> {
        let start = self.deltas.iter().position(|d| d.from == serial)?;
        let mut out = Vec::new();
        for d in self.deltas.iter().skip(start) {
            out.push(d.clone());
            if d.to == to {
                return Some(out);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.deltas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }
}

/// RFC 1982 serial number arithmetic: whether `a` comes before `b`.
pub fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

/// What the routes `removed` and `added` changed between `old` and `new`: records deleted
/// and records added, at the names those routes own.
pub fn delta(
    old: &Zone,
    new: &Zone,
    removed: &[lb_model::Route],
    added: &[lb_model::Route],
) -> Delta {
    let mut names: Vec<LowerName> = Vec::new();
    let mut seen = HashSet::new();
    for route in removed.iter().chain(added) {
        for name in new.route_names(route).into_iter().flatten() {
            if seen.insert(name.clone()) {
                names.push(name);
            }
        }
    }
    let (mut deleted, mut brought) = (Vec::new(), Vec::new());
    for name in &names {
        let (before, after) = (old.records_at(name), new.records_at(name));
        deleted.extend(before.iter().filter(|r| !after.contains(r)).cloned());
        brought.extend(after.iter().filter(|r| !before.contains(r)).cloned());
    }
    Delta {
        from: old.serial(),
        to: new.serial(),
        deleted,
        added: brought,
    }
}

/// Why a transfer was refused, for the log line that names the client.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no [dns.secondaries] configured")]
    NoSecondaries,
    #[error("{0} is not one of [dns.secondaries]'s addresses")]
    NotListed(IpAddr),
    #[error("TSIG: {0}")]
    Tsig(#[from] tsig::TsigError),
    #[error("the request does not parse: {0}")]
    Malformed(String),
    #[error("asks for {0}, not this zone")]
    OtherZone(String),
}

impl Refusal {
    fn rcode(&self) -> ResponseCode {
        match self {
            Refusal::Tsig(tsig::TsigError::Unsigned) => ResponseCode::Refused,
            Refusal::Tsig(tsig::TsigError::Malformed(_)) | Refusal::Malformed(_) => {
                ResponseCode::FormErr
            }
            Refusal::Tsig(_) => ResponseCode::NotAuth,
            Refusal::OtherZone(_) => ResponseCode::NotAuth,
            Refusal::NoSecondaries | Refusal::NotListed(_) => ResponseCode::Refused,
        }
    }
}

/// Whether `query` asks for a transfer (AXFR or IXFR): read from the question without
/// parsing the rest, so ordinary queries pay nothing.
pub fn is_transfer(query: &[u8]) -> bool {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return false;
    }
    let mut at = 12;
    for _ in 0..128 {
        match query.get(at) {
            Some(0) => {
                let t = query.get(at + 1..at + 3);
                return t.is_some_and(|t| matches!(u16::from_be_bytes([t[0], t[1]]), 251 | 252));
            }
            Some(l) if l & 0xc0 == 0 => at += 1 + usize::from(*l),
            _ => return false,
        }
    }
    false
}

/// The serial of the SOA an IXFR request carries, read without verifying anything: only
/// to pick the history to hand to [`answer`], which checks the request first.
pub fn ixfr_serial(query: &[u8]) -> Option<u32> {
    let m = Message::from_vec(query).ok()?;
    if m.queries.first()?.query_type() != RecordType::IXFR {
        return None;
    }
    m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

/// Answers the transfer request `query` from `peer`: the messages to send in order. A
/// refusal is one unsigned message, and the reason for the log.
pub fn answer(
    secondaries: Option<&Secondaries>,
    zone: &Zone,
    deltas: impl FnOnce(u32) -> Option<Vec<Arc<Delta>>>,
    query: &[u8],
    peer: IpAddr,
    now: u64,
) -> (Vec<Vec<u8>>, Option<Refusal>) {
    match transfer(secondaries, zone, deltas, query, peer, now) {
        Ok(messages) => (messages, None),
        Err(refusal) => {
            let reply = refusal_reply(query, refusal.rcode());
            (reply.into_iter().collect(), Some(refusal))
        }
    }
}

/// An unsigned error answer to `query` with its question, or a bare header when the
/// question does not read; nothing for less than a header.
pub fn refusal(query: &[u8], rcode: ResponseCode) -> Vec<u8> {
    refusal_reply(query, rcode).unwrap_or_default()
}

fn refusal_reply(query: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let mut m = Message::response(id, OpCode::Query);
    if let Ok(q) = Message::from_vec(query) {
        m.metadata.op_code = q.metadata.op_code;
        m.queries = q.queries;
    }
    m.metadata.response_code = rcode;
    m.to_vec().ok()
}

fn transfer(
    secondaries: Option<&Secondaries>,
    zone: &Zone,
    deltas: impl FnOnce(u32) -> Option<Vec<Arc<Delta>>>,
    query: &[u8],
    peer: IpAddr,
    now: u64,
) -> Result<Vec<Vec<u8>>, Refusal> {
    let secondaries = secondaries.ok_or(Refusal::NoSecondaries)?;
    if !secondaries.allows(peer) {
        return Err(Refusal::NotListed(peer));
    }
    let verified = tsig::verify(&secondaries.key, query, now)?;
    let request = Message::from_vec(query).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let [question] = request.queries.as_slice() else {
        return Err(Refusal::Malformed("not one question".into()));
    };
    if question.query_class() != DNSClass::IN || LowerName::new(question.name()) != *zone.origin() {
        return Err(Refusal::OtherZone(question.name().to_string()));
    }
    let records = match question.query_type() {
        RecordType::IXFR => {
            let theirs = request
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(soa.serial),
                    _ => None,
                })
                .ok_or_else(|| Refusal::Malformed("IXFR without the client's SOA".into()))?;
            incremental(zone, theirs, deltas)
        }
        _ => full(zone),
    };
    Ok(encode(
        &request,
        &records,
        &secondaries.key,
        &verified.mac,
        now,
    ))
}

/// AXFR form: the SOA, everything else, the SOA again.
fn full(zone: &Zone) -> Vec<Record> {
    let mut out = Vec::with_capacity(zone.len() * 2 + 2);
    out.push(zone.soa().clone());
    out.extend(zone.records().cloned());
    out.push(zone.soa().clone());
    out
}

/// IXFR form (RFC 1995 section 4): the new SOA, then per change the old SOA, what went,
/// the new SOA, what came, and the new SOA to end; the SOA alone for a secondary already
/// current; AXFR form when the history lacks a change.
fn incremental(
    zone: &Zone,
    theirs: u32,
    deltas: impl FnOnce(u32) -> Option<Vec<Arc<Delta>>>,
) -> Vec<Record> {
    if theirs == zone.serial() || serial_lt(zone.serial(), theirs) {
        return vec![zone.soa().clone()];
    }
    let Some(chain) = deltas(theirs) else {
        return full(zone);
    };
    let mut out = vec![zone.soa().clone()];
    for d in &chain {
        out.push(soa_at(zone, d.from));
        out.extend(d.deleted.iter().cloned());
        out.push(soa_at(zone, d.to));
        out.extend(d.added.iter().cloned());
    }
    out.push(zone.soa().clone());
    out
}

fn soa_at(zone: &Zone, serial: u32) -> Record {
    let mut soa = zone.soa().clone();
    if let RData::SOA(s) = &mut soa.data {
        s.serial = serial;
    }
    soa
}

/// The records as answer messages of at most [`MESSAGE_BUDGET`] record bytes, each with
/// the question and signed over the one before.
fn encode(
    request: &Message,
    records: &[Record],
    key: &tsig::Key,
    request_mac: &[u8],
    now: u64,
) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut at = 0;
    let mut mac = request_mac.to_vec();
    while at < records.len() || messages.is_empty() {
        let mut m = Message::response(request.metadata.id, OpCode::Query);
        m.metadata.authoritative = true;
        m.queries = request.queries.clone();
        let mut bytes = 0;
        while let Some(r) = records.get(at) {
            let len = super::zone::record_len(r);
            if bytes + len > MESSAGE_BUDGET && !m.answers.is_empty() {
                break;
            }
            bytes += len;
            m.answers.push(r.clone());
            at += 1;
        }
        let Ok(mut wire) = m.to_vec() else {
            // Our own records always encode; if not, end the transfer short rather than
            // send a broken one (the secondary retries and keeps what it has).
            tracing::warn!("zone transfer: a message did not encode; transfer cut short");
            return messages;
        };
        let chain = if messages.is_empty() {
            tsig::Chain::Response(&mac)
        } else {
            tsig::Chain::Subsequent(&mac)
        };
        mac = tsig::sign(key, &mut wire, chain, now);
        messages.push(wire);
    }
    messages
}
