//! The zone as an immutable snapshot, and answering one request against it.
//!
//! Everything here is pure: no sockets, no clocks. [`Zone::build`] turns the config and the
//! route table into a hash map from owner name to its RRsets, so that answering a query is one
//! hash lookup whatever the number of routes. [`reply`] decides what a response holds;
//! [`to_message`] turns that into hickory's borrowed [`MessageResponse`], which the server
//! (or [`respond`], for tests and tools) encodes.
//!
//! The names live in Arc'd hash-map shards; [`Zone::with_changes`] copies only the shards a
//! route change touches, so a change costs the same whatever the table's size. Each name counts
//! the names with records below it, which is how a removal deletes the empty non-terminals it
//! leaves (RFC 8020) without a rebuild; [`Zone::build`] takes the same route-by-route path from
//! an empty zone. Fixed for the zone's life (`[dns]`): the SOA but for its serial, the
//! gateway's A and the apex NS with its glue (`[dns.nameservers]`, or the gateway's name).

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::Ipv4Addr,
    sync::Arc,
};

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
    rr::{
        rdata::{opt::EdnsCode, A, NS, SOA, SRV},
        DNSClass, LowerName, Name, RData, Record, RecordType,
    },
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding},
};
use hickory_server::{
    net::xfer::Protocol,
    server::Request,
    zone_handler::{MessageRequest, MessageResponse, MessageResponseBuilder, Queries},
};

use crate::config;

/// Largest UDP response we send, whatever the client advertises: the DNS Flag Day 2020 value,
/// which fits any usual path MTU, so answers are never lost to IP fragmentation. Larger
/// answers set TC and the client retries over TCP.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// Clients without EDNS, or advertising less, get the RFC 1035 limit (RFC 6891 section 6.2.5).
const MIN_UDP_PAYLOAD: u16 = 512;

// SOA timers: the usual RFC 1912 values. Secondaries (`[dns.secondaries]`) learn of changes
// by NOTIFY within a second; refresh and retry are only their fallback when one is lost,
// and expire how long they keep serving a zone srvgate no longer answers for.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 1_209_600;

/// A name in the config could not become a DNS name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    #[error("dns.{field}: {value:?} is not a usable DNS name: {reason}")]
    Name {
        field: &'static str,
        value: String,
        reason: String,
    },
}

/// One RRset, with what the server needs to answer with it quickly.
#[derive(Clone, Debug)]
pub struct RRset {
    rtype: RecordType,
    records: Vec<Record>,
    /// The records point at the gateway's name (SRV, NS), whose A record then goes in the
    /// additional section, so clients need no second query.
    wants_glue: bool,
    /// Size of the records on the wire without name compression: an upper bound that lets
    /// [`reply`] skip an exact size check for every ordinary answer.
    wire_len: usize,
}

impl RRset {
    pub fn record_type(&self) -> RecordType {
        self.rtype
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }
}

/// An owner name. No RRsets means an empty non-terminal (e.g. `ssh.<zone>` above
/// `alice.ssh.<zone>`): such a name exists, so it answers NODATA, not NXDOMAIN (RFC 8020).
#[derive(Clone, Debug, Default)]
struct Node {
    rrsets: Vec<RRset>,
    /// How many names with records lie below this one. A name without records exists
    /// exactly while this is not zero, which is what lets a removal delete the empty
    /// non-terminals it leaves behind without looking at the rest of the zone.
    below: u32,
    /// On a route's short name (`NAME.SERVICE.<zone>`): the public ports of its tcp and its
    /// udp route, from which the name's SRV RRset is rebuilt when either changes.
    ports: [Option<u16>; 2],
}

/// How many pieces the name map is cut into. A change copies only the pieces holding the
/// names it touches (an Arc'd piece is cloned on write), so one route's change costs the
/// same whatever the size of the zone: at 30 000 routes (120 000 names) a piece holds ~120.
const SHARDS: usize = 1024;

type Shard = HashMap<LowerName, Arc<Node>>;

/// What the records are made of, fixed for the zone's lifetime (the config's `[dns]`).
#[derive(Clone, Debug)]
struct Params {
    /// The apex without its final dot, lowercase.
    zone: String,
    origin: Name,
    gateway: Name,
    hostmaster: Name,
    ttl: u32,
    address: Ipv4Addr,
    /// The apex's NS names with their addresses: `[dns.nameservers]`, or the gateway's own
    /// name and the public address.
    nameservers: Vec<(Name, Ipv4Addr)>,
}

/// The whole zone at one serial. Immutable once published: [`Zone::with_changes`] makes the
/// next one, sharing every name it does not touch, and the server swaps it in.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: LowerName,
    serial: u32,
    shards: Vec<Arc<Shard>>,
    /// Picks a name's shard; kept across versions so a name stays in its shard.
    hasher: RandomState,
    names: usize,
    params: Arc<Params>,
    /// The apex SOA alone: the authority section of every negative answer (RFC 2308).
    soa: [Record; 1],
    soa_len: usize,
    /// `<gateway_name>.<zone> A`, the additional section of SRV answers.
    glue: [Record; 1],
    glue_len: usize,
    /// The name servers' A records, the additional section of NS answers.
    ns_glue: Arc<[Record]>,
}

impl Zone {
    /// Builds the zone for `routes` at `serial`. Routes whose labels are not DNS labels or
    /// whose names would exceed 255 bytes are left out with a warning: one bad route must not
    /// take the whole zone down (config validation normally rejects them before this).
    pub fn build(
        cfg: &config::Dns,
        public_ipv4: Ipv4Addr,
        routes: &[lb_model::Route],
        serial: u32,
    ) -> Result<Zone, ZoneError> {
        let params = Params::new(cfg, public_ipv4)?;
        let glue = Record::from_rdata(params.gateway.clone(), params.ttl, RData::A(A(public_ipv4)));
        let soa = params.soa(serial);
        let ns_glue: Arc<[Record]> = params
            .nameservers
            .iter()
            .map(|(name, a)| Record::from_rdata(name.clone(), params.ttl, RData::A(A(*a))))
            .collect();
        let mut zone = Zone {
            origin: LowerName::new(&params.origin),
            serial,
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
            hasher: RandomState::new(),
            names: 0,
            soa_len: wire_len(&soa),
            soa: [soa],
            glue_len: wire_len(&glue),
            glue: [glue.clone()],
            ns_glue: ns_glue.clone(),
            params: Arc::new(params),
        };
        zone.set_apex();
        let gateway = LowerName::new(&zone.params.gateway);
        zone.set(&gateway, group(vec![glue]), [None; 2]);
        for a in ns_glue.iter() {
            let name = LowerName::new(&a.name);
            if name != gateway {
                zone.set(&name, group(vec![a.clone()]), [None; 2]);
            }
        }
        for route in routes {
            zone.apply_route(route, true);
        }
        Ok(zone)
    }

    /// This zone after the routes `removed` went and `added` came, at `serial`: the work is
    /// proportional to the change, not to the zone. A route changed in place is in both.
    pub fn with_changes(
        &self,
        removed: &[lb_model::Route],
        added: &[lb_model::Route],
        serial: u32,
    ) -> Zone {
        let mut zone = self.clone();
        for route in removed {
            zone.apply_route(route, false);
        }
        for route in added {
            zone.apply_route(route, true);
        }
        zone.serial = serial;
        let soa = zone.params.soa(serial);
        zone.soa_len = wire_len(&soa);
        zone.soa = [soa];
        zone.set_apex();
        zone
    }

    /// The apex's SOA (at the current serial) and NS.
    fn set_apex(&mut self) {
        let p = &self.params;
        let mut records = vec![self.soa[0].clone()];
        records.extend(p.nameservers.iter().map(|(name, _)| {
            Record::from_rdata(p.origin.clone(), p.ttl, RData::NS(NS(name.clone())))
        }));
        let rrsets = group(records);
        let origin = self.origin.clone();
        self.set(&origin, rrsets, [None; 2]);
    }

    /// Adds (`present`) or removes one route's names: `_SERVICE._PROTO.NAME` SRV, and on
    /// `NAME.SERVICE` its port among the SRV records (tcp before udp) and the A record.
    fn apply_route(&mut self, route: &lb_model::Route, present: bool) {
        let (rfc2782, short) = match self.params.names(route) {
            Ok(names) => names,
            Err(reason) => {
                if present {
                    tracing::warn!(route = %route.key(), "route left out of the DNS zone: {reason}");
                }
                return;
            }
        };
        let p = Arc::clone(&self.params);
        let rrsets = if present {
            group(vec![p.srv(&rfc2782, route.port)])
        } else {
            Vec::new()
        };
        self.set(&LowerName::new(&rfc2782), rrsets, [None; 2]);

        let owner = LowerName::new(&short);
        let mut ports = self.node(&owner).map_or([None; 2], |n| n.ports);
        let i = match route.protocol {
            lb_model::Protocol::Tcp => 0,
            lb_model::Protocol::Udp => 1,
        };
        ports[i] = present.then_some(route.port);
        let mut records: Vec<Record> = Vec::with_capacity(3);
        for port in ports.iter().flatten() {
            let srv = p.srv(&short, *port);
            // A tcp+udp pair usually shares one number: one SRV record then.
            if !records.contains(&srv) {
                records.push(srv);
            }
        }
        if !records.is_empty() {
            records.push(Record::from_rdata(short, p.ttl, RData::A(A(p.address))));
        }
        self.set(&owner, group(records), ports);
    }

    /// Every name with its records as text, sorted: for tests comparing two zones.
    #[cfg(test)]
    pub(crate) fn dump(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.shards
            .iter()
            .flat_map(|s| s.iter())
            .map(|(name, node)| {
                let records = node
                    .rrsets
                    .iter()
                    .flat_map(|s| s.records.iter())
                    .map(|r| r.to_string())
                    .collect();
                (name.to_string(), records)
            })
            .collect()
    }

    fn shard_of(&self, name: &LowerName) -> usize {
        (self.hasher.hash_one(name) % SHARDS as u64) as usize
    }

    fn node(&self, name: &LowerName) -> Option<&Node> {
        self.shards[self.shard_of(name)].get(name).map(|n| &**n)
    }

    /// Gives `name` these RRsets (none: it has no records of its own), keeping the count of
    /// names below it, and keeps every name between it and the apex existing exactly while
    /// some name with records lies below.
    fn set(&mut self, name: &LowerName, rrsets: Vec<RRset>, ports: [Option<u16>; 2]) {
        let (had, below) = self
            .node(name)
            .map_or((false, 0), |n| (!n.rrsets.is_empty(), n.below));
        let has = !rrsets.is_empty();
        self.put(
            name,
            Node {
                rrsets,
                below,
                ports,
            },
        );
        if had == has {
            return;
        }
        let mut parent = name.base_name();
        while parent.num_labels() > self.origin.num_labels() {
            let mut node = self.node(&parent).cloned().unwrap_or_default();
            node.below = if has {
                node.below + 1
            } else {
                node.below.saturating_sub(1)
            };
            self.put(&parent, node);
            parent = parent.base_name();
        }
    }

    /// Stores `node` at `name`, or deletes the name if the node says it no longer exists.
    fn put(&mut self, name: &LowerName, node: Node) {
        let i = self.shard_of(name);
        let shard = Arc::make_mut(&mut self.shards[i]);
        if node.rrsets.is_empty() && node.below == 0 {
            if shard.remove(name).is_some() {
                self.names -= 1;
            }
        } else if shard.insert(name.clone(), Arc::new(node)).is_none() {
            self.names += 1;
        }
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The apex SOA at this serial.
    pub fn soa(&self) -> &Record {
        &self.soa[0]
    }

    /// Every record but the apex SOA, in no particular order: the body of a zone transfer.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.shards
            .iter()
            .flat_map(|s| s.values())
            .flat_map(|n| n.rrsets.iter())
            .filter(|s| s.rtype != RecordType::SOA)
            .flat_map(|s| s.records.iter())
    }

    /// The records at `name` (none if it does not exist, or holds none).
    pub fn records_at(&self, name: &LowerName) -> Vec<Record> {
        self.node(name)
            .map(|n| n.rrsets.iter().flat_map(|s| s.records.clone()).collect())
            .unwrap_or_default()
    }

    /// The names a route's records live at, if it has any in the zone.
    pub fn route_names(&self, route: &lb_model::Route) -> Option<[LowerName; 2]> {
        let (rfc2782, short) = self.params.names(route).ok()?;
        Some([LowerName::new(&rfc2782), LowerName::new(&short)])
    }

    /// The apex, e.g. `lab.example.`.
    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// Number of names, empty non-terminals included.
    pub fn len(&self) -> usize {
        self.names
    }

    pub fn is_empty(&self) -> bool {
        self.names == 0
    }

    /// The RRsets at `name`: `None` if the name does not exist, empty for an empty
    /// non-terminal.
    pub fn rrsets(&self, name: &LowerName) -> Option<&[RRset]> {
        self.node(name).map(|n| n.rrsets.as_slice())
    }

    /// Answers `qtype` at `name`: one hash lookup, plus a suffix check only for names that
    /// are not in the zone.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Answer<'_> {
        let Some(node) = self.node(name) else {
            return if self.origin.zone_of(name) {
                Answer::negative(ResponseCode::NXDomain, &self.soa)
            } else {
                Answer::refused()
            };
        };
        // ANY gets one RRset of the name (RFC 8482 section 4.2, as Knot and Cloudflare): the
        // first, SOA at the apex and SRV on a route's name, which says the name exists and
        // what it is for, and keeps ANY from being the largest answer a spoofed source can
        // ask for.
        let sets: &[RRset] = if qtype == RecordType::ANY {
            &node.rrsets[..node.rrsets.len().min(1)]
        } else {
            match node.rrsets.iter().position(|s| s.rtype == qtype) {
                Some(i) => std::slice::from_ref(&node.rrsets[i]),
                None => &[],
            }
        };
        if sets.is_empty() {
            return Answer::negative(ResponseCode::NoError, &self.soa);
        }
        let glue: &[Record] = if sets.iter().any(|s| s.rtype == RecordType::NS) {
            &self.ns_glue
        } else if sets.iter().any(|s| s.wants_glue) {
            &self.glue
        } else {
            &[]
        };
        Answer {
            response_code: ResponseCode::NoError,
            authoritative: true,
            answers: sets,
            authorities: &[],
            additionals: glue,
        }
    }

    /// Upper bound of the wire size of `records`, which are ours (the SOA or the glue).
    fn len_of(&self, records: &[Record]) -> usize {
        match records {
            [] => 0,
            [r] if std::ptr::eq(r, &self.soa[0]) => self.soa_len,
            [r] if std::ptr::eq(r, &self.glue[0]) => self.glue_len,
            _ => records.iter().map(wire_len).sum(),
        }
    }
}

/// What the zone says about one query, borrowing the records from the zone.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub response_code: ResponseCode,
    /// AA: set for every answer from the zone, positive or negative.
    pub authoritative: bool,
    pub answers: &'a [RRset],
    pub authorities: &'a [Record],
    pub additionals: &'a [Record],
}

impl<'a> Answer<'a> {
    fn negative(response_code: ResponseCode, soa: &'a [Record]) -> Self {
        Answer {
            response_code,
            authoritative: true,
            answers: &[],
            authorities: soa,
            additionals: &[],
        }
    }

    /// Not our zone: we never recurse, so the only honest answer is REFUSED, without AA.
    fn refused() -> Self {
        Self::error(ResponseCode::Refused)
    }

    fn error(response_code: ResponseCode) -> Self {
        Answer {
            response_code,
            authoritative: false,
            answers: &[],
            authorities: &[],
            additionals: &[],
        }
    }
}

/// A response ready to encode: header plus borrowed sections.
#[derive(Clone, Copy, Debug)]
pub struct Reply<'a> {
    pub metadata: Metadata,
    pub answer: Answer<'a>,
}

/// The EDNS record of the response, if the request had one (RFC 6891 says it must then).
/// Its payload size is the UDP limit of this response: the client's, clamped to
/// 512..=`max_udp`, because hickory's encoder enforces exactly that value.
pub fn response_edns(request: &MessageRequest, max_udp: u16) -> Option<Edns> {
    let theirs = request.edns.as_ref()?.max_payload();
    let mut edns = Edns::new();
    edns.set_max_payload(theirs.clamp(MIN_UDP_PAYLOAD, max_udp.max(MIN_UDP_PAYLOAD)))
        .set_version(0);
    Some(edns)
}

/// Decides the response to `request`, given the response's EDNS record from
/// [`response_edns`].
pub fn reply<'a>(
    zone: &'a Zone,
    request: &MessageRequest,
    edns: Option<&Edns>,
    protocol: Protocol,
) -> Reply<'a> {
    reply_within(zone, request, edns, size_limit(protocol, edns))
}

/// The largest response `protocol` can carry: the EDNS payload size for UDP (which
/// [`response_edns`] already clamped), 512 without EDNS.
fn size_limit(protocol: Protocol, edns: Option<&Edns>) -> u16 {
    match protocol {
        Protocol::Udp => edns.map_or(MIN_UDP_PAYLOAD, Edns::max_payload),
        _ => u16::MAX,
    }
}

/// [`reply`] with an explicit size limit, so tests can make any answer too large.
pub(super) fn reply_within<'a>(
    zone: &'a Zone,
    request: &MessageRequest,
    edns: Option<&Edns>,
    limit: u16,
) -> Reply<'a> {
    let mut metadata = response_metadata(&request.metadata);
    let answer = answer(zone, request);
    metadata.response_code = answer.response_code;
    metadata.authoritative = answer.authoritative;
    let mut reply = Reply { metadata, answer };
    fit(zone, &mut reply, &request.queries, edns, limit);
    reply
}

fn answer<'a>(zone: &'a Zone, request: &MessageRequest) -> Answer<'a> {
    if request.metadata.op_code != OpCode::Query {
        // NOTIFY, UPDATE and the rest: the zone is owned by the route table, not by peers.
        return Answer::error(ResponseCode::NotImp);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Answer::error(ResponseCode::BADVERS);
    }
    if request.edns.as_ref().is_some_and(|e| !cookie_ok(e)) {
        return Answer::error(ResponseCode::FormErr);
    }
    let [query] = request.queries.queries() else {
        return Answer::error(ResponseCode::FormErr);
    };
    if query.query_class() != DNSClass::IN {
        return Answer::refused();
    }
    match query.query_type() {
        // No secondaries, so no zone transfers.
        RecordType::AXFR | RecordType::IXFR => Answer::refused(),
        // A meta type only meaningful in the additional section.
        RecordType::OPT => Answer::error(ResponseCode::FormErr),
        qtype => zone.lookup(query.name(), qtype),
    }
}

/// RFC 7873 section 5.2.2: a COOKIE option holds an 8-byte client cookie, optionally followed
/// by an 8- to 32-byte server cookie; any other length is FORMERR. The server cookie is
/// made and checked by the UDP path ([`super::cookie`]), not here: the answer is the same
/// for every client, and so can be cached.
fn cookie_ok(edns: &Edns) -> bool {
    // Every COOKIE option, not just the first: a client may send more than one.
    edns.options()
        .as_ref()
        .iter()
        .filter(|(code, _)| *code == EdnsCode::Cookie)
        .all(|(_, option)| matches!(option.len(), 8 | 16..=40))
}

/// Makes the response fit in `limit` bytes. If the answer itself does not fit, TC is set and
/// every section emptied, so the client retries over TCP rather than using a partial RRset;
/// if only the additional records do not fit, they are dropped without TC (RFC 2181 section
/// 9). Ordinary answers are far below the limit, which the uncompressed size bound shows
/// without encoding anything.
fn fit(zone: &Zone, reply: &mut Reply<'_>, queries: &Queries, edns: Option<&Edns>, limit: u16) {
    const HEADER: usize = 12;
    const OPT: usize = 11;
    let answer = &reply.answer;
    let fixed = HEADER + queries.as_bytes().len() + if edns.is_some() { OPT } else { 0 };
    let needed =
        answer.answers.iter().map(|s| s.wire_len).sum::<usize>() + zone.len_of(answer.authorities);
    let extra = zone.len_of(answer.additionals);
    if fixed + needed + extra <= usize::from(limit) {
        return;
    }
    let truncated = |reply: Reply<'_>| {
        let mut buf = Vec::with_capacity(usize::from(limit));
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(limit);
        match to_message(reply, queries, edns).destructive_emit(&mut encoder) {
            Ok(info) => info.truncation,
            Err(_) => true,
        }
    };
    let mut without_extra = *reply;
    without_extra.answer.additionals = &[];
    if truncated(without_extra) {
        reply.metadata.truncation = true;
        reply.answer.answers = &[];
        reply.answer.authorities = &[];
        reply.answer.additionals = &[];
    } else if truncated(*reply) {
        reply.answer.additionals = &[];
    }
}

/// The reply as hickory's borrowed response message, ready for `ResponseHandler`.
pub fn to_message<'q, 'a>(
    reply: Reply<'a>,
    queries: &'q Queries,
    edns: Option<&'q Edns>,
) -> MessageResponse<
    'q,
    'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
> {
    to_message_with(reply, queries, edns, &[])
}

/// The answer records under the question's own spelling of the name, when it has capitals
/// (a resolver's 0x20 case randomisation checks that the answer echoes it, as Knot and BIND
/// do), or nothing when the zone's lowercase records already match. Every answer here is
/// owned by the question's name: the zone has no CNAMEs or wildcards.
pub fn answers_in_query_case(reply: &Reply<'_>, queries: &Queries) -> Vec<Record> {
    let Some(query) = queries.queries().first() else {
        return Vec::new();
    };
    let asked = query.original().name();
    if reply.answer.answers.is_empty() || !asked.iter().flatten().any(u8::is_ascii_uppercase) {
        return Vec::new();
    }
    reply
        .answer
        .answers
        .iter()
        .flat_map(|s| s.records.iter())
        .map(|r| {
            let mut r = r.clone();
            r.name = asked.clone();
            r
        })
        .collect()
}

/// [`to_message`], with `answers` (from [`answers_in_query_case`]) as the answer section
/// instead of the zone's records when it is not empty.
pub fn to_message_with<'q, 'a>(
    reply: Reply<'a>,
    queries: &'q Queries,
    edns: Option<&'q Edns>,
    answers: &'a [Record],
) -> MessageResponse<
    'q,
    'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
> {
    let zone_answers = if answers.is_empty() {
        reply.answer.answers
    } else {
        &[]
    };
    MessageResponseBuilder::new(queries, edns).build(
        reply.metadata,
        answers
            .iter()
            .chain(zone_answers.iter().flat_map(|s| s.records.iter())),
        reply.answer.authorities.iter(),
        std::iter::empty(),
        reply.answer.additionals.iter(),
    )
}

/// Answers one wire-format request the way the server does: `None` where the server drops
/// the packet (shorter than a header, or itself a response), FORMERR where the header reads
/// but the rest does not. `max_udp` caps the UDP response size ([`MAX_UDP_PAYLOAD`] in the
/// server).
pub fn respond(zone: &Zone, packet: &[u8], protocol: Protocol, max_udp: u16) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    // Never answer a response, even a malformed one (as Knot and NSD): a spoofed source
    // would otherwise make two servers answer each other forever.
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    // The source address only feeds hickory's logging.
    let src = ([127, 0, 0, 1], 53).into();
    let request = match Request::from_bytes(packet.to_vec(), src, protocol) {
        Ok(request) => request,
        Err(_) => return Some(error_header(&header.metadata, ResponseCode::FormErr)),
    };
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let edns = response_edns(&request, max_udp);
    let reply = reply(zone, &request, edns.as_ref(), protocol);
    let limit = size_limit(protocol, edns.as_ref());
    let answers = answers_in_query_case(&reply, &request.queries);
    let mut buf = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_max_size(limit);
    let message = to_message_with(reply, &request.queries, edns.as_ref(), &answers);
    match message.destructive_emit(&mut encoder) {
        Ok(_) => Some(buf),
        Err(_) => Some(error_header(&request.metadata, ResponseCode::ServFail)),
    }
}

/// The response header for `request`: hickory's, but RD and CD, query flags, are echoed only
/// for the query opcode. ISC's genreport flags a NOTIMP that echoes them (the prober then
/// cannot tell the opcode was not understood).
fn response_metadata(request: &Metadata) -> Metadata {
    let mut metadata = Metadata::response_from_request(request);
    if request.op_code != OpCode::Query {
        metadata.recursion_desired = false;
        metadata.checking_disabled = false;
    }
    metadata
}

/// A header-only response, as hickory's server sends for requests it cannot parse; an
/// opcode we do not implement gets NOTIMP whatever else is wrong with the request.
fn error_header(request: &Metadata, response_code: ResponseCode) -> Vec<u8> {
    let mut metadata = response_metadata(request);
    metadata.response_code = if request.op_code == OpCode::Query {
        response_code
    } else {
        ResponseCode::NotImp
    };
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    // A bare header always encodes.
    header.to_bytes().unwrap_or_default()
}

impl Params {
    fn new(cfg: &config::Dns, address: Ipv4Addr) -> Result<Params, ZoneError> {
        let zone = cfg.zone.trim_end_matches('.').to_ascii_lowercase();
        let name_error = |field, value: &str| {
            let value = value.to_string();
            move |reason| ZoneError::Name {
                field,
                value,
                reason,
            }
        };
        let origin = fqdn(&zone).map_err(name_error("zone", &cfg.zone))?;
        lb_model::check_label(&cfg.gateway_name)
            .map_err(name_error("gateway_name", &cfg.gateway_name))?;
        let gateway = fqdn(&format!("{}.{zone}", cfg.gateway_name))
            .map_err(name_error("gateway_name", &cfg.gateway_name))?;
        let hostmaster =
            fqdn(&format!("hostmaster.{zone}")).map_err(name_error("zone", &cfg.zone))?;
        let mut nameservers = Vec::new();
        for (label, a) in &cfg.nameservers {
            lb_model::check_label(label).map_err(name_error("nameservers", label))?;
            let name =
                fqdn(&format!("{label}.{zone}")).map_err(name_error("nameservers", label))?;
            nameservers.push((name, *a));
        }
        if nameservers.is_empty() {
            nameservers.push((gateway.clone(), address));
        }
        Ok(Params {
            zone,
            origin,
            gateway,
            hostmaster,
            ttl: cfg.ttl,
            address,
            nameservers,
        })
    }

    fn soa(&self, serial: u32) -> Record {
        Record::from_rdata(
            self.origin.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                self.gateway.clone(),
                self.hostmaster.clone(),
                serial,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                self.ttl,
            )),
        )
    }

    fn srv(&self, owner: &Name, port: u16) -> Record {
        Record::from_rdata(
            owner.clone(),
            self.ttl,
            RData::SRV(SRV::new(0, 0, port, self.gateway.clone())),
        )
    }

    /// A route's two owner names: `_SERVICE._PROTO.NAME.<zone>` and `NAME.SERVICE.<zone>`.
    fn names(&self, route: &lb_model::Route) -> Result<(Name, Name), String> {
        lb_model::check_label(&route.name)?;
        lb_model::check_label(&route.service)?;
        let zone = &self.zone;
        let rfc2782 = fqdn(&format!(
            "_{}._{}.{}.{zone}",
            route.service,
            route.protocol.as_str(),
            route.name
        ))?;
        let short = fqdn(&format!("{}.{}.{zone}", route.name, route.service))?;
        Ok((rfc2782, short))
    }
}

/// The SOA serial after `prev` at time `now` (seconds since the epoch): time-based, so a
/// restarted daemon still moves forward, and strictly increasing even for several updates in
/// one second.
pub fn next_serial(prev: u32, now: u32) -> u32 {
    now.max(prev.wrapping_add(1))
}

fn fqdn(name: &str) -> Result<Name, String> {
    Name::from_ascii(format!("{name}.")).map_err(|e| e.to_string())
}

fn group(records: Vec<Record>) -> Vec<RRset> {
    let mut sets: Vec<RRset> = Vec::new();
    for record in records {
        let rtype = record.record_type();
        let len = wire_len(&record);
        match sets.iter_mut().find(|s| s.rtype == rtype) {
            Some(set) => {
                set.wire_len += len;
                set.records.push(record);
            }
            None => sets.push(RRset {
                rtype,
                wants_glue: matches!(rtype, RecordType::SRV | RecordType::NS),
                records: vec![record],
                wire_len: len,
            }),
        }
    }
    sets
}

pub(crate) fn record_len(record: &Record) -> usize {
    wire_len(record)
}

fn wire_len(record: &Record) -> usize {
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    // Our records are built from valid names and always encode; if one somehow did not,
    // "huge" makes `fit` check it exactly instead of trusting the bound.
    match record.emit(&mut encoder) {
        Ok(()) => buf.len(),
        Err(_) => usize::from(u16::MAX),
    }
}
