//! Zone transfers, NOTIFY and TSIG through a running server on loopback.

use std::time::Duration;

use hickory_proto::{
    op::{Message, OpCode, Query, ResponseCode},
    rr::{rdata::SOA, DNSClass, Name, RData, Record, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::{
    tests::{dns_cfg, route},
    tsig, xfr, DnsServer,
};
use lb_model::Protocol as Proto;

const SECRET: &[u8] = b"a shared secret of 32 bytes.....";

fn key() -> tsig::Key {
    tsig::Key::new("srvgate-xfr", SECRET).unwrap()
}

fn now() -> u64 {
    super::unix_now().into()
}

fn xfr_query(qtype: RecordType, serial: Option<u32>) -> Message {
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("lab.example.").unwrap(),
        qtype,
    ));
    if let Some(serial) = serial {
        let soa = SOA::new(Name::root(), Name::root(), serial, 0, 0, 0, 0);
        q.add_authority(Record::from_rdata(
            Name::from_ascii("lab.example.").unwrap(),
            0,
            RData::SOA(soa),
        ));
    }
    q
}

/// Sends `query` (signed with `key` when given) and reads answer messages until the final
/// SOA, a refusal, or 50 messages.
async fn transfer(
    addr: std::net::SocketAddr,
    query: &Message,
    key: Option<&tsig::Key>,
) -> (Vec<Message>, Vec<bool>) {
    let mut wire = query.to_vec().unwrap();
    if let Some(k) = key {
        tsig::sign(k, &mut wire, tsig::Chain::Request, now());
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&wire);
    s.write_all(&framed).await.unwrap();
    let mut out = Vec::new();
    let mut signed = Vec::new();
    let mut soas = 0;
    for _ in 0..50 {
        let mut len = [0u8; 2];
        if timeout(Duration::from_secs(10), s.read_exact(&mut len))
            .await
            .unwrap()
            .is_err()
        {
            break;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        signed.push(tsig::find(&buf).unwrap().is_some());
        soas += m
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .count();
        let done = m.metadata.response_code != ResponseCode::NoError
            || soas >= 2
            || (soas == 1 && m.answers.len() == 1 && out.is_empty());
        out.push(m);
        if done {
            break;
        }
    }
    (out, signed)
}

fn serial_of(r: &Record) -> u32 {
    match &r.data {
        RData::SOA(s) => s.serial,
        other => panic!("not an SOA: {other:?}"),
    }
}

async fn server() -> DnsServer {
    DnsServer::start(
        &dns_cfg(),
        "203.0.113.7".parse().unwrap(),
        &[route("alice", "ssh", Proto::Tcp, 30001)],
    )
    .await
    .unwrap()
}

/// AXFR with the key from a listed address; IXFR after a change carries exactly that
/// change; the NOTIFY for it arrives signed; without the key, with another key, or from
/// an address not listed, nothing of the zone leaves.
#[tokio::test]
async fn secondaries_transfer_with_tsig_and_are_notified() {
    let notified = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = server().await;
    let addr = dns.local_addrs()[0];
    dns.serve_secondaries(
        xfr::Secondaries {
            peers: vec![notified.local_addr().unwrap()],
            key: key(),
        },
        None,
    );
    // The NOTIFY sent at start, signed with the key; we answer it.
    let mut buf = [0u8; 2048];
    let (n, from) = timeout(Duration::from_secs(10), notified.recv_from(&mut buf))
        .await
        .expect("a NOTIFY at start")
        .unwrap();
    tsig::verify(&key(), &buf[..n], now()).expect("NOTIFY signed with the key");
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.op_code, OpCode::Notify);
    assert!(m.metadata.authoritative);
    let mut reply = m.clone();
    reply.metadata.message_type = hickory_proto::op::MessageType::Response;
    reply.signature = None;
    notified
        .send_to(&reply.to_vec().unwrap(), from)
        .await
        .unwrap();

    let (axfr, signed) = transfer(addr, &xfr_query(RecordType::AXFR, None), Some(&key())).await;
    let records: Vec<&Record> = axfr.iter().flat_map(|m| m.answers.iter()).collect();
    let first = dns.serial();
    assert_eq!(serial_of(records[0]), first);
    assert_eq!(serial_of(records[records.len() - 1]), first);
    let texts: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("_ssh._tcp.alice.lab.example.") && t.contains("30001")),
        "{texts:#?}"
    );
    assert!(signed.iter().all(|s| *s), "every message signed");

    // A claim: NOTIFY within the bound, then IXFR holds bob's records and nothing else.
    dns.apply(&[], &[route("bob", "ssh", Proto::Tcp, 30002)]);
    let second = dns.serial();
    assert!(xfr::serial_lt(first, second));
    let (n, _) = timeout(Duration::from_secs(10), notified.recv_from(&mut buf))
        .await
        .expect("a NOTIFY after the change")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(serial_of(&m.answers[0]), second);

    let ixfr = transfer(
        addr,
        &xfr_query(RecordType::IXFR, Some(first)),
        Some(&key()),
    )
    .await
    .0;
    let records: Vec<&Record> = ixfr.iter().flat_map(|m| m.answers.iter()).collect();
    let serials: Vec<u32> = records
        .iter()
        .filter(|r| r.record_type() == RecordType::SOA)
        .map(|r| serial_of(r))
        .collect();
    assert_eq!(serials, [second, first, second, second], "IXFR form");
    let added: Vec<String> = records
        .iter()
        .filter(|r| r.record_type() != RecordType::SOA)
        .map(|r| r.to_string())
        .collect();
    assert_eq!(added.len(), 3, "bob's two SRV and his A: {added:#?}");
    assert!(added.iter().all(|t| t.contains("bob")), "{added:#?}");

    // Current already: the SOA alone. Unknown serial: the whole zone (AXFR form).
    let same = transfer(
        addr,
        &xfr_query(RecordType::IXFR, Some(second)),
        Some(&key()),
    )
    .await
    .0;
    assert_eq!(same.iter().map(|m| m.answers.len()).sum::<usize>(), 1);
    let unknown = transfer(addr, &xfr_query(RecordType::IXFR, Some(5)), Some(&key()))
        .await
        .0;
    let n = unknown.iter().map(|m| m.answers.len()).sum::<usize>();
    assert_eq!(n, axfr.iter().map(|m| m.answers.len()).sum::<usize>() + 3);

    // Refused: unsigned, another secret, another key name.
    let unsigned = transfer(addr, &xfr_query(RecordType::AXFR, None), None)
        .await
        .0;
    assert_eq!(unsigned.len(), 1);
    assert_eq!(unsigned[0].metadata.response_code, ResponseCode::Refused);
    assert!(unsigned[0].answers.is_empty());
    let wrong = tsig::Key::new("srvgate-xfr", b"not the secret, but as long.....").unwrap();
    let bad = transfer(addr, &xfr_query(RecordType::AXFR, None), Some(&wrong))
        .await
        .0;
    assert_eq!(bad[0].metadata.response_code, ResponseCode::NotAuth);
    assert!(bad[0].answers.is_empty());
    let other = tsig::Key::new("other", SECRET).unwrap();
    let bad = transfer(
        addr,
        &xfr_query(RecordType::IXFR, Some(first)),
        Some(&other),
    )
    .await
    .0;
    assert_eq!(bad[0].metadata.response_code, ResponseCode::NotAuth);

    // A signed SOA query (a secondary's refresh) gets a signed answer.
    let mut soa = Message::query();
    soa.add_query(Query::query(
        Name::from_ascii("lab.example.").unwrap(),
        RecordType::SOA,
    ));
    let mut wire = soa.to_vec().unwrap();
    tsig::sign(&key(), &mut wire, tsig::Chain::Request, now());
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&wire, addr).await.unwrap();
    let (n, _) = timeout(Duration::from_secs(10), udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert!(tsig::find(&buf[..n]).unwrap().is_some(), "{r}");
    assert_eq!(serial_of(&r.answers[0]), second);
    dns.shutdown().await;
}

/// Not listed: refused before the key is looked at, and no zone data in the answer.
#[tokio::test]
async fn a_transfer_from_an_unlisted_address_is_refused() {
    let dns = server().await;
    let addr = dns.local_addrs()[0];
    dns.serve_secondaries(
        xfr::Secondaries {
            peers: vec!["192.0.2.53:53".parse().unwrap()],
            key: key(),
        },
        None,
    );
    let r = transfer(addr, &xfr_query(RecordType::AXFR, None), Some(&key()))
        .await
        .0;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].metadata.response_code, ResponseCode::Refused);
    assert!(r[0].answers.is_empty());
    // Without [dns.secondaries] at all, the same.
    let plain = server().await;
    let r = transfer(
        plain.local_addrs()[0],
        &xfr_query(RecordType::AXFR, None),
        Some(&key()),
    )
    .await
    .0;
    assert_eq!(r[0].metadata.response_code, ResponseCode::Refused);
    dns.shutdown().await;
    plain.shutdown().await;
}

/// The serial saved by a run is where the next continues, even when the clock is behind it
/// (a burst of changes ran the serial ahead of time).
#[tokio::test]
async fn the_serial_continues_above_the_last_run_s() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = super::unix_now() + 100_000;
    std::fs::write(
        dir.path().join(super::notify::SERIAL_FILE),
        format!("{ahead}\n"),
    )
    .unwrap();
    let dns = server().await;
    dns.serve_secondaries(
        xfr::Secondaries {
            peers: vec!["127.0.0.1:9".parse().unwrap()],
            key: key(),
        },
        Some(dir.path().into()),
    );
    assert_eq!(dns.serial(), ahead + 1);
    dns.apply(&[], &[route("bob", "ssh", Proto::Tcp, 30002)]);
    let serial = dns.serial();
    // Saved after the coalescing delay.
    let mut saved = None;
    for _ in 0..100 {
        saved = super::notify::saved_serial(dir.path());
        if saved == Some(serial) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(saved, Some(serial));
    dns.shutdown().await;
}

/// The history keeps a chain of changes, bounded, and starts over when a serial does not
/// follow; what it lacks is answered in AXFR form (checked above).
#[test]
fn the_history_is_bounded_and_chained() {
    let mut h = xfr::History::default();
    let rec = || {
        Record::from_rdata(
            Name::from_ascii("a.lab.example.").unwrap(),
            1,
            RData::A("10.0.0.1".parse().unwrap()),
        )
    };
    for i in 0..(xfr::History::MAX_DELTAS as u32 + 10) {
        h.push(xfr::Delta {
            from: 100 + i,
            to: 101 + i,
            deleted: vec![],
            added: vec![rec()],
        });
    }
    assert_eq!(h.len(), xfr::History::MAX_DELTAS);
    assert!(h.between(100, 110).is_none(), "the oldest went");
    let last = 100 + xfr::History::MAX_DELTAS as u32 + 10;
    assert_eq!(h.between(last - 3, last).unwrap().len(), 3);
    // Records bound: one huge change pushes out the others.
    h.push(xfr::Delta {
        from: last,
        to: last + 1,
        deleted: vec![],
        added: vec![rec(); xfr::History::MAX_RECORDS],
    });
    assert_eq!(h.len(), 1);
    // A serial from outside that does not follow: the history starts over.
    h.push(xfr::Delta {
        from: 7,
        to: 8,
        deleted: vec![],
        added: vec![],
    });
    assert_eq!(h.len(), 1);
    assert!(h.between(last, last + 1).is_none());
    let _ = DNSClass::IN;
}

/// Every prefix of a signed transfer request is refused or ignored, never a panic.
#[test]
fn truncated_transfer_requests_are_refused_without_panic() {
    let z = super::tests::zone(&[]);
    let s = xfr::Secondaries {
        peers: vec!["127.0.0.1:53".parse().unwrap()],
        key: key(),
    };
    let mut wire = xfr_query(RecordType::IXFR, Some(3)).to_vec().unwrap();
    tsig::sign(&key(), &mut wire, tsig::Chain::Request, now());
    for n in 0..wire.len() {
        let (msgs, refusal) = xfr::answer(
            Some(&s),
            &z,
            |_| None,
            &wire[..n],
            "127.0.0.1".parse().unwrap(),
            now(),
        );
        assert!(refusal.is_some(), "{n} bytes");
        assert!(msgs.len() <= 1);
    }
}

/// Without `key_file`, the key is made once in the state directory, 0600, and kept; a key
/// file others can read, or one that is not a base64 secret, is refused by name.
#[test]
fn the_transfer_key_is_made_once_private_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::config::Secondaries {
        peers: vec!["192.0.2.53:53".parse().unwrap()],
        key_name: "srvgate-xfr".into(),
        key_file: None,
    };
    super::notify::load(&cfg, dir.path()).unwrap();
    let path = dir.path().join(super::notify::KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let made = std::fs::read_to_string(&path).unwrap();
    super::notify::load(&cfg, dir.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        made,
        "kept, not remade"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = super::notify::load(&cfg, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("readable by others") && e.contains("dns-xfr.key"),
        "{e}"
    );

    let other = dir.path().join("given.key");
    std::fs::write(&other, "not base64 !!\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let given = crate::config::Secondaries {
        key_file: Some(other),
        ..cfg
    };
    let e = super::notify::load(&given, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not base64") && e.contains("given.key"), "{e}");
}
