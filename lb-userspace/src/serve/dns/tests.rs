use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::Stdio,
    str::FromStr,
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, OpCode, Query, ResponseCode},
    rr::{rdata::SRV, DNSClass, LowerName, Name, RData, Record, RecordType},
    serialize::binary::BinEncoder,
};
use hickory_server::{net::xfer::Protocol, server::Request};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::{
    zone::{reply_within, respond, response_edns, to_message},
    *,
};
use lb_model::{Protocol as Proto, Route};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const TTL: u32 = 45;

pub(super) fn dns_cfg() -> config::Dns {
    config::Dns {
        zone: "lab.example".into(),
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        gateway_name: "gw".into(),
        nameservers: vec![],
        secondaries: None,
        rrl: None,
        ttl: TTL,
    }
}

pub(super) fn route(name: &str, service: &str, protocol: Proto, port: u16) -> Route {
    Route {
        name: name.into(),
        service: service.into(),
        protocol,
        backends: lb_model::Pool::one(SocketAddrV4::new(
            Ipv4Addr::new(10, 0, 0, 11),
            port - 30000 + 1000,
        )),
        port,
        proxy_protocol: None,
    }
}

fn alice() -> Vec<Route> {
    vec![route("alice", "ssh", Proto::Tcp, 30001)]
}

pub(super) fn zone(routes: &[Route]) -> Zone {
    Zone::build(&dns_cfg(), GATEWAY, routes, 7).unwrap()
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn query(qname: &str, qtype: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name(qname), qtype));
    q
}

fn with_edns(mut q: Message, payload: u16, version: u8) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload).set_version(version);
    q.set_edns(edns);
    q
}

fn ask_msg(zone: &Zone, q: &Message, protocol: Protocol) -> Message {
    let out = respond(zone, &q.to_vec().unwrap(), protocol, MAX_UDP_PAYLOAD).expect("a response");
    let response = Message::from_vec(&out).unwrap();
    assert_eq!(response.metadata.id, q.metadata.id);
    assert_eq!(
        response.metadata.message_type,
        hickory_proto::op::MessageType::Response
    );
    assert!(!response.metadata.recursion_available, "RA must stay clear");
    response
}

fn ask(zone: &Zone, qname: &str, qtype: RecordType) -> Message {
    ask_msg(zone, &query(qname, qtype), Protocol::Udp)
}

fn srv_of(r: &Record) -> &SRV {
    match &r.data {
        RData::SRV(s) => s,
        other => panic!("expected SRV, got {other:?}"),
    }
}

fn a_of(r: &Record) -> Ipv4Addr {
    match &r.data {
        RData::A(a) => a.0,
        other => panic!("expected A, got {other:?}"),
    }
}

fn srv_summary(records: &[Record]) -> Vec<(u16, u16, u16, String)> {
    records
        .iter()
        .map(srv_of)
        .map(|s| (s.priority, s.weight, s.port, s.target.to_string()))
        .collect()
}

/// Checks a positive answer: NOERROR, AA, and the gateway's A as the only additional record
/// when `glue`.
fn assert_answer(r: &Message, glue: bool) {
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative, "AA must be set in-zone");
    assert!(!r.metadata.truncation);
    assert!(r.authorities.is_empty());
    if glue {
        assert_eq!(r.additionals.len(), 1, "{r}");
        assert_eq!(r.additionals[0].name, name("gw.lab.example."));
        assert_eq!(a_of(&r.additionals[0]), GATEWAY);
    } else {
        assert!(r.additionals.is_empty(), "{r}");
    }
}

/// Checks a negative answer: `rcode`, AA, no answers, the SOA alone in authority.
fn assert_negative(r: &Message, rcode: ResponseCode) {
    assert_eq!(r.metadata.response_code, rcode, "{r}");
    assert!(r.metadata.authoritative, "AA must be set in-zone");
    assert!(r.answers.is_empty(), "{r}");
    assert_eq!(r.authorities.len(), 1, "{r}");
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(r.authorities[0].name, name("lab.example."));
}

fn assert_refused(r: &Message) {
    assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{r}");
    assert!(!r.metadata.authoritative);
    assert!(r.answers.is_empty() && r.authorities.is_empty() && r.additionals.is_empty());
}

#[test]
fn apex_has_soa_and_ns() {
    let z = zone(&alice());
    let r = ask(&z, "lab.example.", RecordType::SOA);
    assert_answer(&r, false);
    assert_eq!(r.answers.len(), 1);
    let RData::SOA(soa) = &r.answers[0].data else {
        panic!("{r}")
    };
    assert_eq!(soa.serial, 7);
    assert_eq!(soa.mname, name("gw.lab.example."));
    assert_eq!(soa.rname, name("hostmaster.lab.example."));
    assert_eq!(
        soa.minimum, TTL,
        "negative caching follows the configured TTL"
    );

    let r = ask(&z, "lab.example.", RecordType::NS);
    assert_answer(&r, true);
    let targets: Vec<_> = r
        .answers
        .iter()
        .map(|rec| match &rec.data {
            RData::NS(ns) => ns.0.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(targets, ["gw.lab.example."]);
}

/// `[dns.nameservers]`: the apex NS names every listed gateway, each name answers its own
/// address, an NS answer carries all of them as glue, and SRV answers still point at the
/// public address's name.
#[test]
fn listed_nameservers_are_the_apex_ns_with_their_addresses() {
    let gw1 = Ipv4Addr::new(198, 51, 100, 21);
    let gw2 = Ipv4Addr::new(198, 51, 100, 22);
    let cfg = config::Dns {
        nameservers: vec![("gw1".into(), gw1), ("gw2".into(), gw2)],
        ..dns_cfg()
    };
    let z = Zone::build(&cfg, GATEWAY, &alice(), 7).unwrap();
    let r = ask(&z, "lab.example.", RecordType::NS);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative && !r.metadata.truncation, "{r}");
    let targets: Vec<_> = r
        .answers
        .iter()
        .map(|rec| match &rec.data {
            RData::NS(ns) => ns.0.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(targets, ["gw1.lab.example.", "gw2.lab.example."]);
    let glue: Vec<_> = r
        .additionals
        .iter()
        .map(|rec| (rec.name.to_string(), a_of(rec)))
        .collect();
    assert_eq!(
        glue,
        [
            ("gw1.lab.example.".to_string(), gw1),
            ("gw2.lab.example.".to_string(), gw2)
        ]
    );
    for (n, a) in [("gw1", gw1), ("gw2", gw2), ("gw", GATEWAY)] {
        let r = ask(&z, &format!("{n}.lab.example."), RecordType::A);
        assert_eq!(r.answers.len(), 1, "{n}");
        assert_eq!(a_of(&r.answers[0]), a, "{n}");
    }
    let r = ask(&z, "_ssh._tcp.alice.lab.example.", RecordType::SRV);
    assert_eq!(srv_of(&r.answers[0]).target, name("gw.lab.example."));
    assert_eq!(r.additionals.len(), 1);
    assert_eq!(a_of(&r.additionals[0]), GATEWAY);
}

#[test]
fn gateway_has_its_a_record() {
    let r = ask(&zone(&alice()), "gw.lab.example.", RecordType::A);
    assert_answer(&r, false);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(a_of(&r.answers[0]), GATEWAY);
}

#[test]
fn rfc2782_srv_points_at_the_gateway_with_glue() {
    let r = ask(
        &zone(&alice()),
        "_ssh._tcp.alice.lab.example.",
        RecordType::SRV,
    );
    assert_answer(&r, true);
    assert_eq!(r.answers[0].name, name("_ssh._tcp.alice.lab.example."));
    assert_eq!(
        srv_summary(&r.answers),
        [(0, 0, 30001, "gw.lab.example.".to_string())]
    );
}

#[test]
fn short_form_has_srv_and_a() {
    let z = zone(&alice());
    let r = ask(&z, "alice.ssh.lab.example.", RecordType::SRV);
    assert_answer(&r, true);
    assert_eq!(
        srv_summary(&r.answers),
        [(0, 0, 30001, "gw.lab.example.".to_string())]
    );

    let r = ask(&z, "alice.ssh.lab.example.", RecordType::A);
    assert_answer(&r, false);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(a_of(&r.answers[0]), GATEWAY);
}

#[test]
fn udp_route_has_both_forms() {
    let z = zone(&[route("alice", "iperf", Proto::Udp, 30002)]);
    let r = ask(&z, "_iperf._udp.alice.lab.example.", RecordType::SRV);
    assert_answer(&r, true);
    assert_eq!(srv_summary(&r.answers)[0].2, 30002);
    let r = ask(&z, "alice.iperf.lab.example.", RecordType::SRV);
    assert_answer(&r, true);
    assert_eq!(srv_summary(&r.answers)[0].2, 30002);
    // No TCP route: the TCP name does not exist, but its parent (alice) does.
    assert_negative(
        &ask(&z, "_iperf._tcp.alice.lab.example.", RecordType::SRV),
        ResponseCode::NXDomain,
    );
}

#[test]
fn tcp_and_udp_share_the_short_form() {
    // Listed udp first: the answer still comes out tcp first.
    let z = zone(&[
        route("alice", "iperf", Proto::Udp, 30003),
        route("alice", "iperf", Proto::Tcp, 30004),
    ]);
    let r = ask(&z, "alice.iperf.lab.example.", RecordType::SRV);
    assert_answer(&r, true);
    let ports: Vec<u16> = srv_summary(&r.answers).iter().map(|s| s.2).collect();
    assert_eq!(ports, [30004, 30003]);
    // One A record, not one per protocol.
    let r = ask(&z, "alice.iperf.lab.example.", RecordType::A);
    assert_eq!(r.answers.len(), 1);
    for (qname, port) in [
        ("_iperf._tcp.alice.lab.example.", 30004),
        ("_iperf._udp.alice.lab.example.", 30003),
    ] {
        let r = ask(&z, qname, RecordType::SRV);
        assert_eq!(srv_summary(&r.answers)[0].2, port, "{qname}");
    }
}

#[test]
fn missing_names_are_nxdomain_with_soa() {
    let z = zone(&alice());
    for qname in [
        "bob.ssh.lab.example.",
        "_ssh._tcp.bob.lab.example.",
        "_http._tcp.alice.lab.example.",
        "x.alice.ssh.lab.example.",
        "www.lab.example.",
    ] {
        assert_negative(&ask(&z, qname, RecordType::SRV), ResponseCode::NXDomain);
    }
}

#[test]
fn existing_names_without_the_type_are_nodata() {
    let z = zone(&alice());
    for (qname, qtype) in [
        ("alice.ssh.lab.example.", RecordType::TXT),
        ("alice.ssh.lab.example.", RecordType::AAAA),
        ("_ssh._tcp.alice.lab.example.", RecordType::A),
        ("gw.lab.example.", RecordType::SRV),
        ("lab.example.", RecordType::A),
    ] {
        assert_negative(&ask(&z, qname, qtype), ResponseCode::NoError);
    }
}

#[test]
fn empty_non_terminals_are_nodata() {
    let z = zone(&alice());
    for qname in [
        "ssh.lab.example.",
        "alice.lab.example.",
        "_tcp.alice.lab.example.",
    ] {
        for qtype in [RecordType::A, RecordType::SRV, RecordType::ANY] {
            assert_negative(&ask(&z, qname, qtype), ResponseCode::NoError);
        }
    }
}

#[test]
fn names_outside_the_zone_are_refused() {
    let z = zone(&alice());
    for qname in [
        "example.com.",
        "example.",
        ".",
        "lab.example.com.",
        "alice.ssh.lab.example.org.",
        "xlab.example.",
    ] {
        assert_refused(&ask(&z, qname, RecordType::A));
    }
}

#[test]
fn names_are_case_insensitive() {
    let z = zone(&alice());
    let r = ask(&z, "_SSH._Tcp.ALICE.Lab.Example.", RecordType::SRV);
    assert_answer(&r, true);
    assert_eq!(srv_summary(&r.answers)[0].2, 30001);
    // The question goes back as asked (resolvers using 0x20 randomisation compare it).
    assert_eq!(
        r.queries[0].name().to_string(),
        "_SSH._Tcp.ALICE.Lab.Example."
    );
    assert_negative(
        &ask(&z, "BOB.ssh.LAB.example.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn every_record_carries_the_configured_ttl() {
    let z = zone(&alice());
    for (qname, qtype) in [
        ("lab.example.", RecordType::ANY),
        ("gw.lab.example.", RecordType::A),
        ("_ssh._tcp.alice.lab.example.", RecordType::SRV),
        ("alice.ssh.lab.example.", RecordType::ANY),
        ("nope.lab.example.", RecordType::A),
    ] {
        let r = ask(&z, qname, qtype);
        for rec in r.answers.iter().chain(&r.authorities).chain(&r.additionals) {
            assert_eq!(rec.ttl, TTL, "{rec}");
        }
    }
}

#[test]
fn any_gets_one_rrset_of_the_name() {
    let z = zone(&alice());
    let r = ask(&z, "alice.ssh.lab.example.", RecordType::ANY);
    assert_answer(&r, true);
    let types: Vec<RecordType> = r.answers.iter().map(Record::record_type).collect();
    assert_eq!(types, [RecordType::SRV], "RFC 8482: one RRset, not A+SRV");
    let r = ask(&z, "lab.example.", RecordType::ANY);
    let types: Vec<RecordType> = r.answers.iter().map(Record::record_type).collect();
    assert_eq!(types, [RecordType::SOA]);
}

#[test]
fn header_flags_follow_the_request() {
    let z = zone(&alice());
    let q = query("alice.ssh.lab.example.", RecordType::A);
    let r = ask_msg(&z, &q, Protocol::Udp);
    assert!(r.metadata.recursion_desired, "RD is copied");
    assert!(!r.metadata.recursion_available);
    assert_eq!(r.queries, q.queries);
    let mut q = q;
    q.metadata.recursion_desired = false;
    assert!(!ask_msg(&z, &q, Protocol::Udp).metadata.recursion_desired);
}

#[test]
fn unsupported_requests_get_the_right_rcode() {
    let z = zone(&alice());

    let mut notify = query("lab.example.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        ask_msg(&z, &notify, Protocol::Udp).metadata.response_code,
        ResponseCode::NotImp
    );

    let mut empty = query("lab.example.", RecordType::SOA);
    empty.queries.clear();
    assert_eq!(
        ask_msg(&z, &empty, Protocol::Udp).metadata.response_code,
        ResponseCode::FormErr
    );

    let mut two = query("lab.example.", RecordType::SOA);
    two.add_query(Query::query(name("gw.lab.example."), RecordType::A));
    assert_eq!(
        ask_msg(&z, &two, Protocol::Udp).metadata.response_code,
        ResponseCode::FormErr
    );

    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_refused(&ask_msg(&z, &chaos, Protocol::Udp));
    let mut chaos_in_zone = query("lab.example.", RecordType::SOA);
    chaos_in_zone.queries[0].set_query_class(DNSClass::CH);
    assert_refused(&ask_msg(&z, &chaos_in_zone, Protocol::Udp));

    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        assert_refused(&ask_msg(&z, &query("lab.example.", qtype), Protocol::Tcp));
    }

    let v1 = with_edns(query("lab.example.", RecordType::SOA), 1232, 1);
    let r = ask_msg(&z, &v1, Protocol::Udp);
    // hickory decodes rcode 16 as BADSIG, its other name; on the wire it is BADVERS.
    assert_eq!(
        u16::from(r.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    assert!(r.edns.is_some(), "BADVERS travels in the OPT record");
}

#[test]
fn edns_is_echoed_and_clamped() {
    let z = zone(&alice());
    let plain = ask(&z, "gw.lab.example.", RecordType::A);
    assert!(
        plain.edns.is_none(),
        "no OPT in the response to a query without one"
    );
    for (asked, got) in [
        (4096, MAX_UDP_PAYLOAD),
        (1232, 1232),
        (700, 700),
        (100, 512),
    ] {
        let q = with_edns(query("gw.lab.example.", RecordType::A), asked, 0);
        let r = ask_msg(&z, &q, Protocol::Udp);
        assert_eq!(
            r.edns.as_ref().map(Edns::max_payload),
            Some(got),
            "asked {asked}"
        );
        assert_eq!(r.answers.len(), 1);
    }
}

/// Answers `q` as the server would over UDP, but with the response limited to `limit` bytes.
fn ask_within(zone: &Zone, q: &Message, limit: u16) -> (Message, usize) {
    let src: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let request = Request::from_bytes(q.to_vec().unwrap(), src, Protocol::Udp).unwrap();
    let edns = response_edns(&request, MAX_UDP_PAYLOAD);
    let reply = reply_within(zone, &request, edns.as_ref(), limit);
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_max_size(limit);
    to_message(reply, &request.queries, edns.as_ref())
        .destructive_emit(&mut encoder)
        .unwrap();
    (Message::from_vec(&buf).unwrap(), buf.len())
}

#[test]
fn answers_that_do_not_fit_set_tc_and_carry_nothing() {
    let z = zone(&[
        route("alice", "iperf", Proto::Tcp, 30004),
        route("alice", "iperf", Proto::Udp, 30003),
    ]);
    let q = with_edns(query("alice.iperf.lab.example.", RecordType::SRV), 1232, 0);
    let (full, full_len) = ask_within(&z, &q, 1232);
    assert!(!full.metadata.truncation);
    assert_eq!((full.answers.len(), full.additionals.len()), (2, 1));

    // Room for the answer but not the glue: the glue goes, no TC (RFC 2181 section 9).
    let (r, len) = ask_within(&z, &q, (full_len - 1) as u16);
    assert!(!r.metadata.truncation, "{r}");
    assert_eq!((r.answers.len(), r.additionals.len()), (2, 0), "{r}");
    assert!(r.edns.is_some(), "the OPT record stays");
    assert!(len < full_len);

    // No room for the answer: TC, empty sections, so the client retries over TCP.
    let (r, len) = ask_within(&z, &q, 80);
    assert!(r.metadata.truncation, "{r}");
    assert!(r.metadata.authoritative);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty() && r.authorities.is_empty(), "{r}");
    assert!(len <= 80);
    assert_eq!(r.queries, q.queries);

    // Over TCP the same answer is never truncated.
    let r = ask_msg(&z, &q, Protocol::Tcp);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 2);
}

#[test]
fn malformed_packets_get_formerr_or_nothing_and_never_panic() {
    let z = zone(&alice());
    let good = query("_ssh._tcp.alice.lab.example.", RecordType::SRV)
        .to_vec()
        .unwrap();

    // Shorter than a header: dropped.
    for len in 0..12 {
        assert!(respond(&z, &good[..len], Protocol::Udp, MAX_UDP_PAYLOAD).is_none());
    }
    // A header promising a question that is cut off: FORMERR, same id.
    for len in 12..good.len() {
        let out = respond(&z, &good[..len], Protocol::Udp, MAX_UDP_PAYLOAD).expect("FORMERR");
        let r = Message::from_vec(&out).unwrap();
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::FormErr,
            "cut at {len}"
        );
        assert_eq!(r.metadata.id, u16::from_be_bytes([good[0], good[1]]));
    }
    // A response sent to us is ignored, never answered (no reflection loops).
    let mut response = query("lab.example.", RecordType::SOA);
    response.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert!(respond(
        &z,
        &response.to_vec().unwrap(),
        Protocol::Udp,
        MAX_UDP_PAYLOAD
    )
    .is_none());

    // Random bytes, bit flips of a good query and huge counts: whatever comes back parses.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..20_000 {
        let packet: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 300) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut p = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % p.len();
                p[at] ^= 1 << (next() % 8);
            }
            p
        };
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            if let Some(out) = respond(&z, &packet, protocol, MAX_UDP_PAYLOAD) {
                let r = Message::from_vec(&out).expect("our responses always parse");
                assert_eq!(&out[..2], &packet[..2], "id echoed");
                assert!(out.len() <= 512 || protocol == Protocol::Tcp || r.edns.is_some());
            }
        }
    }
}

#[test]
fn serial_is_time_based_and_strictly_increasing() {
    assert_eq!(next_serial(0, 1_700_000_000), 1_700_000_000);
    assert_eq!(next_serial(1_600_000_000, 1_700_000_000), 1_700_000_000);
    // Several updates in one second, or a clock that stepped back: still up by one.
    assert_eq!(next_serial(1_700_000_000, 1_700_000_000), 1_700_000_001);
    assert_eq!(next_serial(1_700_000_005, 1_700_000_000), 1_700_000_006);
}

#[test]
fn routes_that_cannot_be_names_are_left_out() {
    let long = "a".repeat(63);
    let cfg = config::Dns {
        zone: format!("{long}.{long}.example"),
        ..dns_cfg()
    };
    let routes = vec![
        route("Bad_Name", "ssh", Proto::Tcp, 30001),
        route("alice", "ssh", Proto::Tcp, 30002),
        // Fine as labels, but _ssh._tcp.<63>.<zone> is longer than 255 bytes.
        route(&long, "ssh", Proto::Tcp, 30003),
    ];
    let z = Zone::build(&cfg, GATEWAY, &routes, 1).unwrap();
    let ok = LowerName::from_str(&format!("alice.ssh.{long}.{long}.example.")).unwrap();
    assert!(z.rrsets(&ok).is_some_and(|s| !s.is_empty()));
    let bad = LowerName::from_str(&format!("bad_name.ssh.{long}.{long}.example.")).unwrap();
    assert!(z.rrsets(&bad).is_none());
}

#[test]
fn bad_zone_or_gateway_names_are_errors() {
    let bad_zone = config::Dns {
        zone: "lab..example".into(),
        ..dns_cfg()
    };
    let e = Zone::build(&bad_zone, GATEWAY, &[], 1).unwrap_err();
    assert!(e.to_string().starts_with("dns.zone:"), "{e}");
    let bad_gateway = config::Dns {
        gateway_name: "g w".into(),
        ..dns_cfg()
    };
    let e = Zone::build(&bad_gateway, GATEWAY, &[], 1).unwrap_err();
    assert!(e.to_string().starts_with("dns.gateway_name:"), "{e}");
}

#[test]
fn ten_thousand_routes_answer_like_one() {
    let routes: Vec<Route> = (0..10_000u16)
        .map(|i| {
            let mut r = route(&format!("user{i}"), "ssh", Proto::Tcp, 30000 + (i % 2700));
            r.port = i.wrapping_add(1);
            r
        })
        .collect();
    let z = zone(&routes);
    // apex + gw + per route: SRV, short form, and the ENTs user<i> and _tcp.user<i>; plus ssh.
    assert_eq!(z.len(), 2 + 1 + 4 * routes.len());
    let r = ask(&z, "_ssh._tcp.user9999.lab.example.", RecordType::SRV);
    assert_eq!(srv_summary(&r.answers)[0].2, 10_000);
    let r = ask(&z, "user42.ssh.lab.example.", RecordType::SRV);
    assert_eq!(srv_summary(&r.answers)[0].2, 43);
}

// ---- The server, over real sockets ----

async fn udp_ask(server: SocketAddr, packet: &[u8]) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    match timeout(Duration::from_millis(700), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(Message::from_vec(&buf[..n]).unwrap()),
        _ => None,
    }
}

async fn tcp_ask(stream: &mut TcpStream, q: &Message) -> Message {
    let bytes = q.to_vec().unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = timeout(Duration::from_secs(5), stream.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

async fn start_test_server(routes: &[Route]) -> (DnsServer, SocketAddr) {
    let server = DnsServer::start(&dns_cfg(), GATEWAY, routes).await.unwrap();
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 1);
    assert_ne!(addrs[0].port(), 0, "the real port, not 0");
    (server, addrs[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_udp_and_tcp_survives_garbage_and_follows_updates() {
    let (server, addr) = start_test_server(&alice()).await;
    let srv_query = query("_ssh._tcp.alice.lab.example.", RecordType::SRV);

    // Garbage first: dropped or FORMERR, and the listener keeps serving.
    assert!(
        udp_ask(addr, b"hello").await.is_none(),
        "too short to answer"
    );
    let mut junk = srv_query.to_vec().unwrap();
    junk.truncate(20);
    let r = udp_ask(addr, &junk)
        .await
        .expect("FORMERR for a cut-off question");
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.metadata.id, srv_query.metadata.id);

    let r = udp_ask(addr, &srv_query.to_vec().unwrap())
        .await
        .expect("an answer over UDP");
    assert_answer(&r, true);
    assert_eq!(
        srv_summary(&r.answers),
        [(0, 0, 30001, "gw.lab.example.".to_string())]
    );
    let r = udp_ask(
        addr,
        &query("example.com.", RecordType::A).to_vec().unwrap(),
    )
    .await
    .unwrap();
    assert_refused(&r);

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let r = tcp_ask(&mut tcp, &srv_query).await;
    assert_answer(&r, true);
    assert_eq!(srv_summary(&r.answers)[0].2, 30001);
    // Several queries on one connection (RFC 7766).
    let r = tcp_ask(&mut tcp, &query("nope.lab.example.", RecordType::A)).await;
    assert_negative(&r, ResponseCode::NXDomain);

    // Update: bob appears, alice moves, the serial goes up even within the same second.
    let before = server.serial();
    let (alice_moved, bob) = (
        route("alice", "ssh", Proto::Tcp, 30009),
        route("bob", "ssh", Proto::Tcp, 30010),
    );
    server.apply(&alice(), &[alice_moved.clone(), bob]);
    let after = server.serial();
    assert!(after > before, "{after} > {before}");
    server.apply(&[alice_moved], &[]);
    assert!(server.serial() > after);
    let r = udp_ask(
        addr,
        &query("_ssh._tcp.bob.lab.example.", RecordType::SRV)
            .to_vec()
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(srv_summary(&r.answers)[0].2, 30010);
    let r = tcp_ask(&mut tcp, &srv_query).await;
    assert_negative(&r, ResponseCode::NXDomain);
    let r = tcp_ask(&mut tcp, &query("lab.example.", RecordType::SOA)).await;
    let RData::SOA(soa) = &r.answers[0].data else {
        panic!("{r}")
    };
    assert_eq!(soa.serial, server.serial());

    server.shutdown().await;
    assert!(
        udp_ask(addr, &srv_query.to_vec().unwrap()).await.is_none(),
        "stopped"
    );
}

/// Runs `dig @addr -p port ARGS`, or `None` when dig is not installed.
async fn dig(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(out) => {
            assert!(out.status.success(), "dig {args:?}: {out:?}");
            Some(String::from_utf8(out.stdout).unwrap())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running dig: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_agrees() {
    let (server, addr) = start_test_server(&alice()).await;
    let Some(out) = dig(addr, &["+short", "_ssh._tcp.alice.lab.example", "SRV"]).await else {
        srvgate_tests::skip(
            "dig_agrees",
            "dig is not installed (apt-get install dnsutils)",
        );
        return;
    };
    assert_eq!(out.trim(), "0 0 30001 gw.lab.example.");

    let out = dig(addr, &["+tcp", "+short", "alice.ssh.lab.example", "A"])
        .await
        .unwrap();
    assert_eq!(out.trim(), GATEWAY.to_string());

    let out = dig(addr, &["alice.ssh.lab.example", "SRV"]).await.unwrap();
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa rd;"), "AA set, RA clear: {out}");
    assert!(
        out.contains("alice.ssh.lab.example.\t45\tIN\tSRV\t0 0 30001 gw.lab.example."),
        "{out}"
    );
    assert!(
        out.contains("gw.lab.example.\t\t45\tIN\tA\t203.0.113.7"),
        "glue: {out}"
    );

    let out = dig(addr, &["bob.ssh.lab.example", "A"]).await.unwrap();
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("AUTHORITY: 1"), "{out}");
    assert!(
        out.contains("IN\tSOA\tgw.lab.example. hostmaster.lab.example."),
        "{out}"
    );

    let out = dig(addr, &["ssh.lab.example", "A"]).await.unwrap();
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "ENT: {out}"
    );

    let out = dig(addr, &["example.com", "A"]).await.unwrap();
    assert!(out.contains("status: REFUSED"), "{out}");
    server.shutdown().await;
}

#[tokio::test]
async fn bind_failures_name_the_address_and_the_cause() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = config::Dns {
        listen: vec![addr],
        ..dns_cfg()
    };
    let Err(e) = DnsServer::start(&cfg, GATEWAY, &alice()).await else {
        panic!("bound a taken port")
    };
    let msg = e.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("address in use"),
        "{msg}"
    );
    assert!(matches!(
        e,
        DnsError::Bind {
            transport: "UDP",
            ..
        }
    ));

    let cfg = config::Dns {
        listen: vec![],
        ..dns_cfg()
    };
    assert!(matches!(
        DnsServer::start(&cfg, GATEWAY, &alice()).await,
        Err(DnsError::NoListen)
    ));

    let hint = bind_error(
        "0.0.0.0:53".parse().unwrap(),
        "UDP",
        std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    )
    .to_string();
    assert!(
        hint.contains("0.0.0.0:53") && hint.contains("CAP_NET_BIND_SERVICE"),
        "{hint}"
    );
}

#[tokio::test]
async fn listens_on_several_addresses_including_ipv6() {
    let mut listen: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap()];
    let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
    if v6 {
        listen.push("[::1]:0".parse().unwrap());
    }
    let cfg = config::Dns {
        listen,
        ..dns_cfg()
    };
    let server = DnsServer::start(&cfg, GATEWAY, &alice()).await.unwrap();
    for addr in server.local_addrs() {
        let r = udp_ask_from(addr, &query("gw.lab.example.", RecordType::A)).await;
        assert_eq!(a_of(&r.answers[0]), GATEWAY, "{addr}");
    }
    server.shutdown().await;
}

async fn udp_ask_from(server: SocketAddr, q: &Message) -> Message {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    socket.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

#[test]
fn the_udp_answer_cache_replies_byte_for_byte_like_respond() {
    let z = zone(&alice());
    let mut cache = AnswerCache::default();
    let mut out = Vec::new();
    let mut queries: Vec<Vec<u8>> = [
        query("_ssh._tcp.alice.lab.example.", RecordType::SRV),
        query("alice.ssh.lab.example.", RecordType::A),
        query("nobody.lab.example.", RecordType::SRV),
        query("example.com.", RecordType::A),
        with_edns(query("gw.lab.example.", RecordType::A), 4096, 0),
    ]
    .iter()
    .map(|q| q.to_vec().unwrap())
    .collect();
    queries.push(b"garbage that is long".to_vec());
    queries.push(b"short".to_vec());
    for round in 0..3u16 {
        for q in &queries {
            let mut q = q.clone();
            if q.len() >= 2 {
                // A different id each round: the cached reply must carry the new one.
                q[..2].copy_from_slice(&(0x1234 + round).to_be_bytes());
            }
            let want = respond(&z, &q, Protocol::Udp, MAX_UDP_PAYLOAD);
            let sent = cache.answer(&z, &q, &mut out);
            assert_eq!(sent, want.is_some(), "round {round}: {q:?}");
            if let Some(want) = want {
                assert_eq!(out, want, "round {round}: {q:?}");
            }
        }
    }
}

#[test]
fn the_udp_answer_cache_forgets_an_old_zone() {
    let old = zone(&alice());
    let new = Zone::build(
        &dns_cfg(),
        GATEWAY,
        &[route("bob", "ssh", Proto::Tcp, 30002)],
        old.serial() + 1,
    )
    .unwrap();
    let q = query("_ssh._tcp.bob.lab.example.", RecordType::SRV)
        .to_vec()
        .unwrap();
    let mut cache = AnswerCache::default();
    let mut out = Vec::new();
    assert!(cache.answer(&old, &q, &mut out));
    let before = Message::from_vec(&out).unwrap();
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);
    assert!(cache.answer(&new, &q, &mut out));
    let after = Message::from_vec(&out).unwrap();
    assert_eq!(after.metadata.response_code, ResponseCode::NoError);
    assert_eq!(after.answers.len(), 1);
}

// Issue 10, items 3 and 5-7, and the TCP side of item 1.

#[test]
fn a_malformed_response_is_dropped_not_answered() {
    let z = zone(&alice());
    let mut packet = query("_ssh._tcp.alice.lab.example.", RecordType::SRV)
        .to_vec()
        .unwrap();
    packet.truncate(20);
    // As a query, the cut packet gets FORMERR...
    assert!(respond(&z, &packet, Protocol::Udp, MAX_UDP_PAYLOAD).is_some());
    // ...and with QR=1 nothing, over either transport.
    packet[2] |= 0x80;
    assert!(respond(&z, &packet, Protocol::Udp, MAX_UDP_PAYLOAD).is_none());
    assert!(respond(&z, &packet, Protocol::Tcp, MAX_UDP_PAYLOAD).is_none());
}

#[test]
fn every_cookie_option_is_checked() {
    let z = zone(&alice());
    let mut q = with_cookie(8);
    q.edns.as_mut().unwrap().options_mut().insert(
        hickory_proto::rr::rdata::opt::EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5]),
    );
    let r = ask_msg(&z, &q, Protocol::Udp);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
}

fn with_cookie(len: usize) -> Message {
    let mut q = with_edns(query("gw.lab.example.", RecordType::A), 1232, 0);
    let cookie = (0..len as u8).collect::<Vec<u8>>();
    q.edns.as_mut().unwrap().options_mut().insert(
        hickory_proto::rr::rdata::opt::EdnsOption::Unknown(10, cookie),
    );
    q
}

#[test]
fn a_cookie_of_the_wrong_length_is_formerr() {
    let z = zone(&alice());
    for len in [1, 5, 7, 9, 15, 41] {
        let r = ask_msg(&z, &with_cookie(len), Protocol::Udp);
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::FormErr,
            "length {len}"
        );
        assert!(r.answers.is_empty());
    }
    for len in [8, 16, 40] {
        let r = ask_msg(&z, &with_cookie(len), Protocol::Udp);
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NoError,
            "length {len}"
        );
        assert_eq!(a_of(&r.answers[0]), GATEWAY);
    }
}

#[test]
fn answers_copy_the_question_s_case() {
    let z = zone(&alice());
    for (asked, qtype) in [
        ("_SsH._TcP.AlIcE.lAb.ExAmPlE.", RecordType::SRV),
        ("AlIcE.sSh.LAB.example.", RecordType::A),
        ("aLiCe.SsH.lab.EXAMPLE.", RecordType::ANY),
        ("alice.ssh.lab.example.", RecordType::SRV),
    ] {
        let r = ask_msg(&z, &query(asked, qtype), Protocol::Udp);
        assert!(!r.answers.is_empty(), "{asked}");
        assert_eq!(r.queries[0].name().to_string(), asked);
        for a in &r.answers {
            assert_eq!(a.name.to_string(), asked, "answer owner for {asked}");
        }
        // The glue keeps the zone's spelling: it is another name.
        for g in &r.additionals {
            assert_eq!(g.name.to_string(), "gw.lab.example.");
        }
    }
}

#[test]
fn the_udp_answer_cache_is_bounded_in_bytes_and_skips_large_and_malformed_queries() {
    let z = zone(&alice());
    let mut cache = AnswerCache::default();
    let mut out = Vec::new();
    // Distinct names, each a fresh entry, until well past the cap.
    for i in 0..60_000u32 {
        let q = query(&format!("n{i}.lab.example."), RecordType::A);
        assert!(cache.answer(&z, &q.to_vec().unwrap(), &mut out));
        assert!(cache.bytes() <= AnswerCache::MAX_BYTES);
    }
    // A 4 KB query (padding in an OPT option) is answered but not kept.
    let mut big = with_edns(query("gw.lab.example.", RecordType::A), 1232, 0);
    big.edns.as_mut().unwrap().options_mut().insert(
        hickory_proto::rr::rdata::opt::EdnsOption::Unknown(12, vec![0; 4000]),
    );
    let big = big.to_vec().unwrap();
    let held = (cache.len(), cache.bytes());
    assert!(cache.answer(&z, &big, &mut out));
    assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 1);
    // FORMERR is not kept either.
    let mut cut = query("gw.lab.example.", RecordType::A).to_vec().unwrap();
    cut.truncate(20);
    assert!(cache.answer(&z, &cut, &mut out));
    assert_eq!((cache.len(), cache.bytes()), held);
}

/// Waits (at most 10 s, generous for a loaded machine) until the server holds `open` TCP
/// clients of which `busy` are mid-query: what a test then relies on has happened.
async fn wait_tcp_clients(server: &DnsServer, open: usize, busy: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.tcp_clients() != (open, busy) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server holds {:?} TCP clients (open, busy), not ({open}, {busy})",
            server.tcp_clients()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_tcp_cap_the_longest_idle_client_makes_room() {
    const CAP: usize = 8;
    let server = DnsServer::start_with(&dns_cfg(), GATEWAY, &alice(), CAP)
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let q = query("gw.lab.example.", RecordType::A);
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(a_of(&tcp_ask_on(&mut s, &q).await.answers[0]), GATEWAY);
        held.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A newcomer is answered; the client idle the longest (the first) was closed for it.
    let mut newcomer = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        a_of(&tcp_ask_on(&mut newcomer, &q).await.answers[0]),
        GATEWAY
    );
    assert_closed(
        &mut held[0],
        Duration::from_secs(2),
        "the oldest idle client is closed",
    )
    .await;
    drop(held);
    drop(newcomer);

    // Clients in the middle of a query (its length sent, not its bytes) are not evicted:
    // with every slot taken that way, a newcomer is closed at once, not left waiting.
    let mut busy = Vec::new();
    while busy.len() < CAP {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&30u16.to_be_bytes()).await.unwrap();
        busy.push(s);
    }
    wait_tcp_clients(&server, CAP, CAP).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert_closed(
        &mut extra,
        Duration::from_secs(2),
        "closed at once, not left waiting",
    )
    .await;
    drop(busy);

    // A client announcing a huge query is cut off; UDP is unaffected throughout.
    wait_tcp_clients(&server, 0, 0).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(a_of(&tcp_ask_on(&mut s, &q).await.answers[0]), GATEWAY);
    s.write_all(&60000u16.to_be_bytes()).await.unwrap();
    assert_closed(
        &mut s,
        Duration::from_secs(2),
        "a query longer than the limit disconnects",
    )
    .await;
    let r = udp_ask_from(addr, &q).await;
    assert_eq!(a_of(&r.answers[0]), GATEWAY);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_clients_go_sooner_when_the_table_is_busy() {
    const CAP: usize = 8;
    let server = DnsServer::start_with(&dns_cfg(), GATEWAY, &alice(), CAP)
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let q = query("gw.lab.example.", RecordType::A);
    let mut held = Vec::new();
    for _ in 0..CAP - 1 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        tcp_ask_on(&mut s, &q).await;
        held.push(s);
    }
    // 1 of 8 free: busy, so a client asking again after the busy timeout finds it closed.
    tokio::time::sleep(TCP_BUSY_IDLE_TIMEOUT + Duration::from_millis(500)).await;
    assert_closed(
        &mut held[CAP - 2],
        Duration::from_secs(1),
        "closed by the busy idle timeout",
    )
    .await;
    server.shutdown().await;
}

async fn tcp_ask_on(stream: &mut TcpStream, q: &Message) -> Message {
    let bytes = q.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
    let len = timeout(Duration::from_secs(5), stream.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[test]
fn the_longest_zone_still_holds_the_longest_route() {
    let zone_name = format!("{}.{}.ex", "a".repeat(58), "b".repeat(58));
    assert_eq!(zone_name.len(), config::MAX_ZONE_LEN);
    let cfg = config::Dns {
        zone: zone_name.clone(),
        ..dns_cfg()
    };
    let (n, s) = ("n".repeat(63), "s".repeat(lb_model::MAX_SERVICE_LEN));
    let r = Route {
        name: n.clone(),
        service: s.clone(),
        ..route("x", "y", Proto::Udp, 30001)
    };
    let z = Zone::build(&cfg, GATEWAY, &[r], 1).unwrap();
    let owner = LowerName::from(name(&format!("_{s}._udp.{n}.{zone_name}.")));
    assert!(z.rrsets(&owner).is_some_and(|sets| !sets.is_empty()));
}

/// The incremental path must give exactly the zone a rebuild gives, names and records, for
/// any sequence of adds and removes (tcp+udp pairs sharing a short name and a port,
/// names that share empty non-terminals, removing the last route under a name).
#[test]
fn a_changed_zone_equals_the_zone_built_from_scratch() {
    let services = ["ssh", "http", "game"];
    let names = ["alice", "bob", "ssh", "x"];
    let mut live: Vec<Route> = Vec::new();
    let mut z = zone(&[]);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for step in 0..600u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let name = names[(x % 4) as usize];
        let service = services[((x >> 8) % 3) as usize];
        let protocol = if (x >> 16).is_multiple_of(2) {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        // Often the same number for a pair, sometimes not.
        let port = 30000 + ((x >> 24) % 3) as u16;
        let serial = z.serial() + 1;
        let at = live
            .iter()
            .position(|r| r.name == name && r.service == service && r.protocol == protocol);
        z = match at {
            Some(i) => {
                let gone = live.remove(i);
                z.with_changes(&[gone], &[], serial)
            }
            None => {
                let r = route(name, service, protocol, port);
                live.push(r.clone());
                z.with_changes(&[], &[r], serial)
            }
        };
        let want = Zone::build(&dns_cfg(), GATEWAY, &live, serial).unwrap();
        assert_eq!(z.dump(), want.dump(), "step {step}: {live:?}");
        assert_eq!(z.len(), want.len(), "step {step}");
    }
    // All gone again: only the apex and the gateway's name are left.
    let serial = z.serial() + 1;
    let z = z.with_changes(&live, &[], serial);
    assert_eq!(z.len(), 2, "{:?}", z.dump().keys().collect::<Vec<_>>());
}

/// A change leaves the zone it came from as it was: queries in flight keep a consistent
/// snapshot.
#[test]
fn a_change_does_not_touch_the_old_snapshot() {
    let old = zone(&alice());
    let before = old.dump();
    let new = old.with_changes(&alice(), &[route("bob", "ssh", Proto::Tcp, 30002)], 8);
    assert_eq!(old.dump(), before);
    assert_ne!(new.dump(), before);
    assert_eq!(new.serial(), 8);
    assert!(
        new.dump()
            .get("lab.example.")
            .is_some_and(|r| r.iter().any(|r| r.contains(" 8 "))),
        "{:?}",
        new.dump()
    );
}

/// A TCP connection to `addr` from `src` (any 127/8 address is the loopback's).
async fn tcp_from(src: &str, addr: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

/// At the cap the newcomer's place comes from the address holding the most, even when
/// another address's client has been idle longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_tcp_cap_the_greediest_address_makes_room() {
    const CAP: usize = 8;
    let server = DnsServer::start_with(&dns_cfg(), GATEWAY, &alice(), CAP)
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let q = query("gw.lab.example.", RecordType::A);
    let mut modest = tcp_from("127.0.0.3", addr).await;
    assert_eq!(a_of(&tcp_ask_on(&mut modest, &q).await.answers[0]), GATEWAY);
    let mut greedy = Vec::new();
    for _ in 0..CAP - 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut s = tcp_from("127.0.0.2", addr).await;
        assert_eq!(a_of(&tcp_ask_on(&mut s, &q).await.answers[0]), GATEWAY);
        greedy.push(s);
    }
    let mut newcomer = tcp_from("127.0.0.4", addr).await;
    assert_eq!(
        a_of(&tcp_ask_on(&mut newcomer, &q).await.answers[0]),
        GATEWAY
    );
    // The greedy address's idlest (its first) was closed, not the modest one's.
    assert_closed(
        &mut greedy[0],
        Duration::from_secs(2),
        "the greediest address's idlest client is closed",
    )
    .await;
    assert_eq!(a_of(&tcp_ask_on(&mut modest, &q).await.answers[0]), GATEWAY);
    server.shutdown().await;
}

/// Asserts that the server closed `s` within `within` (end of stream, or a reset).
async fn assert_closed(s: &mut TcpStream, within: Duration, what: &str) {
    let mut byte = [0u8; 1];
    let n = timeout(within, s.read(&mut byte))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {within:?}"))
        .unwrap_or(0);
    assert_eq!(n, 0, "{what}: the server sent a byte instead of closing");
}

/// ISC's genreport "opcode" check: a request with an opcode we do not implement gets NOTIMP
/// with RD and CD clear (the flags are the query opcode's, and echoing them tells a prober
/// the request was read as one). Failed on the old code, which copied both.
#[test]
fn an_unknown_opcode_gets_notimp_without_rd_or_cd() {
    let z = zone(&alice());
    for op in [OpCode::Unknown(15), OpCode::Status, OpCode::Update] {
        let mut q = query("lab.example.", RecordType::SOA);
        q.metadata.op_code = op;
        q.metadata.recursion_desired = true;
        q.metadata.checking_disabled = true;
        let r = ask_msg(&z, &q, Protocol::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp, "{op:?}");
        assert!(!r.metadata.recursion_desired, "RD echoed for {op:?}");
        assert!(!r.metadata.checking_disabled, "CD echoed for {op:?}");
        assert!(!r.metadata.authoritative, "AA for {op:?}");
    }
    // A header hickory cannot read past (opcode 15, one question cut short) gets the same.
    let mut q = query("lab.example.", RecordType::SOA);
    q.metadata.op_code = OpCode::Unknown(15);
    q.metadata.recursion_desired = true;
    q.metadata.checking_disabled = true;
    let bytes = q.to_vec().unwrap();
    let out = respond(&z, &bytes[..14], Protocol::Udp, MAX_UDP_PAYLOAD).unwrap();
    let r = Message::from_vec(&out).unwrap();
    assert!(!r.metadata.recursion_desired && !r.metadata.checking_disabled);
}

/// `[dns.rrl]` in the server: one client network gets its rate of answers in a second,
/// then every second query a truncated empty answer and nothing for the rest; over TCP it is
/// answered in full. Bounded: 40 queries, each waited for at most half a second.
#[tokio::test]
async fn rate_limited_udp_slips_truncated_answers_and_tcp_still_answers() {
    let cfg = config::Dns {
        rrl: Some(config::Rrl { rate: 10, slip: 2 }),
        ..dns_cfg()
    };
    let server = DnsServer::start(&cfg, GATEWAY, &alice()).await.unwrap();
    let addr = server.local_addrs()[0];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let q = query("_ssh._tcp.alice.lab.example.", RecordType::SRV);
    let (mut full, mut truncated, mut silent) = (0u64, 0u64, 0u64);
    // One second's budget: the limit counts per wall-clock second, so start on a fresh one.
    let start = unix_now();
    while unix_now() == start {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = unix_now();
    for _ in 0..40 {
        socket.send_to(&q.to_vec().unwrap(), addr).await.unwrap();
        let mut buf = [0u8; 1500];
        match timeout(Duration::from_millis(500), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let r = Message::from_vec(&buf[..n]).unwrap();
                if r.metadata.truncation {
                    assert!(r.answers.is_empty() && n <= q.to_vec().unwrap().len());
                    truncated += 1;
                } else {
                    assert_eq!(r.answers.len(), 1);
                    full += 1;
                }
            }
            _ => silent += 1,
        }
    }
    if unix_now() == second {
        // All 40 within one second (the usual case): exact counts.
        assert_eq!((full, truncated, silent), (10, 15, 15));
    } else {
        // A slow machine crossed into the next second, which has its own budget.
        assert!(
            full >= 10 && truncated >= 1 && silent >= 1,
            "{full} {truncated} {silent}"
        );
    }
    let (slipped, dropped) = server.rrl_counts().unwrap();
    assert_eq!((slipped, dropped), (truncated, silent));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let r = tcp_ask(&mut tcp, &q).await;
    assert_eq!(r.answers.len(), 1, "TCP is not limited");
    server.shutdown().await;
}

/// A client sending a cookie gets a server cookie back, and with it its queries are no
/// longer rate-limited (they prove their source), while the same client without the
/// cookie is. RFC 7873 section 5.2.
#[tokio::test]
async fn a_server_cookie_comes_back_and_exempts_its_client_from_the_limit() {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    let cfg = config::Dns {
        rrl: Some(config::Rrl { rate: 1, slip: 0 }),
        ..dns_cfg()
    };
    let server = DnsServer::start(&cfg, GATEWAY, &alice()).await.unwrap();
    let addr = server.local_addrs()[0];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let with_cookie = |cookie: Vec<u8>| {
        let mut q = with_edns(query("alice.ssh.lab.example.", RecordType::A), 1232, 0);
        if let Some(e) = q.edns.as_mut() {
            e.options_mut()
                .insert(EdnsOption::Unknown(EdnsCode::Cookie.into(), cookie));
        }
        q.to_vec().unwrap()
    };
    let ask = |packet: Vec<u8>| {
        let socket = &socket;
        async move {
            socket.send_to(&packet, addr).await.unwrap();
            let mut buf = [0u8; 1500];
            match timeout(Duration::from_millis(500), socket.recv(&mut buf)).await {
                Ok(Ok(n)) => Some(Message::from_vec(&buf[..n]).unwrap()),
                _ => None,
            }
        }
    };
    // The first answer of this second (rate 1) brings the server cookie.
    let first = ask(with_cookie(b"clientck".to_vec()))
        .await
        .expect("answered");
    let cookie = first
        .edns
        .as_ref()
        .and_then(|e| {
            e.options()
                .as_ref()
                .iter()
                .find(|(c, _)| *c == EdnsCode::Cookie)
                .map(|(_, o)| o.clone())
        })
        .expect("a cookie option in the answer");
    let EdnsOption::Unknown(_, bytes) = cookie else {
        panic!("{cookie:?}")
    };
    assert_eq!(bytes.len(), 24);
    assert_eq!(&bytes[..8], b"clientck");
    // With it: every query answered, far past the rate.
    for i in 0..20 {
        let r = ask(with_cookie(bytes.clone())).await;
        assert!(
            r.is_some_and(|r| r.answers.len() == 1),
            "query {i} with the cookie"
        );
    }
    // With a forged one, the limit holds: one answer a second (each silent query costs
    // its half-second wait, so the loop spans a few seconds).
    let mut forged = bytes.clone();
    forged[23] ^= 1;
    let mut answered = 0;
    let start = unix_now();
    for _ in 0..10 {
        answered += u32::from(ask(with_cookie(forged.clone())).await.is_some());
    }
    let seconds = unix_now() - start + 1;
    assert!(
        answered <= seconds && answered < 10,
        "{answered} answers in {seconds} s at 1/s"
    );
    server.shutdown().await;
}
