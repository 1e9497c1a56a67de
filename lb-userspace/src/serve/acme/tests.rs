use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
};

use super::*;

/// The zone as the fake CA sees it.
#[derive(Default)]
struct FakeZone {
    txt: Mutex<BTreeMap<String, Vec<String>>>,
}

impl ChallengeZone for FakeZone {
    fn set_txt(&self, name: &str, values: &[String]) {
        let mut txt = self.txt.lock().unwrap();
        if values.is_empty() {
            txt.remove(name);
        } else {
            txt.insert(name.to_string(), values.to_vec());
        }
    }
}

/// A CA that publishes a challenge, checks the zone serves it, and signs (self-signed) for
/// `lifetime`; or fails while `down`.
struct FakeCa {
    down: AtomicBool,
    lifetime: Duration,
    orders: AtomicU32,
    seen: Mutex<Vec<BTreeMap<String, Vec<String>>>>,
    zone: Arc<FakeZone>,
}

impl FakeCa {
    fn new(zone: Arc<FakeZone>) -> FakeCa {
        FakeCa {
            down: AtomicBool::new(false),
            lifetime: Duration::from_secs(90 * 86400),
            orders: AtomicU32::new(0),
            seen: Mutex::new(Vec::new()),
            zone,
        }
    }
}

impl Issuer for FakeCa {
    fn issue<'a>(
        &'a self,
        names: &'a [String],
        key: &'a rcgen::KeyPair,
        zone: &'a dyn ChallengeZone,
    ) -> IssueFuture<'a> {
        Box::pin(async move {
            self.orders.fetch_add(1, Ordering::SeqCst);
            let mut published = Published::new(zone);
            for n in names {
                let base = n.strip_prefix("*.").unwrap_or(n);
                published.add(format!("_acme-challenge.{base}"), format!("token-{n}"));
            }
            self.seen
                .lock()
                .unwrap()
                .push(self.zone.txt.lock().unwrap().clone());
            if self.down.load(Ordering::SeqCst) {
                return Err(AcmeError::Order("refused (the fake CA is down)".into()));
            }
            let mut params = rcgen::CertificateParams::new(names.to_vec()).unwrap();
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::seconds(1);
            params.not_after = now + self.lifetime;
            Ok(params.self_signed(key).unwrap().pem())
        })
    }
}

fn names() -> Vec<String> {
    vec!["*.http.lab.example".into(), "gw.lab.example".into()]
}

#[tokio::test]
async fn an_order_answers_from_the_zone_then_removes_the_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let zone = Arc::new(FakeZone::default());
    let ca = FakeCa::new(zone.clone());
    let certs = Certs::default();
    renew_once(&names(), dir.path(), &certs, &ca, &*zone)
        .await
        .unwrap();
    // While the CA looked, both challenges were in the zone, each at its own owner (the
    // wildcard's without the `*.`).
    let seen = ca.seen.lock().unwrap()[0].clone();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [
            "_acme-challenge.gw.lab.example",
            "_acme-challenge.http.lab.example"
        ]
    );
    assert!(
        zone.txt.lock().unwrap().is_empty(),
        "challenges left behind"
    );
    let c = certs.current().expect("a certificate in force");
    assert!(c.covers("alice.http.lab.example"));
    assert!(c.covers("gw.lab.example"));
    assert!(
        !c.covers("http.lab.example"),
        "a wildcard covers one label, not its parent"
    );
    assert!(!c.covers("a.b.http.lab.example"));
    assert!(certs.resolve(Some("Bob.HTTP.lab.example.")).is_some());
    assert!(certs.resolve(Some("other.example")).is_none());
    assert!(certs.resolve(None).is_none());
    for f in [KEY_FILE, CERT_FILE] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // What was kept is loaded again, and only for the names it has.
    let kept = load(dir.path(), &names()).expect("the kept pair");
    assert_eq!(kept.not_after, c.not_after);
    assert!(load(dir.path(), &["other.lab.example".into()]).is_none());
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_old_certificate_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let zone = Arc::new(FakeZone::default());
    let ca = FakeCa::new(zone.clone());
    let certs = Certs::default();
    renew_once(&names(), dir.path(), &certs, &ca, &*zone)
        .await
        .unwrap();
    let before = certs.current().unwrap();
    let kept_before = std::fs::read_to_string(dir.path().join(CERT_FILE)).unwrap();

    ca.down.store(true, Ordering::SeqCst);
    let e = renew_once(&names(), dir.path(), &certs, &ca, &*zone)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("fake CA is down"), "{e}");
    assert!(
        Arc::ptr_eq(&before, &certs.current().unwrap()),
        "the old one serves"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(CERT_FILE)).unwrap(),
        kept_before
    );
    assert!(
        zone.txt.lock().unwrap().is_empty(),
        "challenges left behind"
    );
    let mut metrics = String::new();
    certs.render_metrics(&mut metrics);
    assert!(
        metrics.contains("srvgate_tls_certificate_renewal_failing 1"),
        "{metrics}"
    );
    let expiry = unix(before.not_after);
    assert!(
        metrics.contains(&format!(
            "srvgate_tls_certificate_expiry_seconds{{name=\"*.http.lab.example\"}} {expiry}"
        )),
        "{metrics}"
    );
    assert!(certs
        .summary(SystemTime::now())
        .contains("last renewal failed"));

    // The CA back: a new certificate replaces it and the warning goes.
    ca.down.store(false, Ordering::SeqCst);
    renew_once(&names(), dir.path(), &certs, &ca, &*zone)
        .await
        .unwrap();
    assert!(!Arc::ptr_eq(&before, &certs.current().unwrap()));
    assert!(certs.last_error().is_none());
    assert_eq!(ca.orders.load(Ordering::SeqCst), 3);
}

#[test]
fn renewal_is_at_two_thirds_less_a_bounded_jitter_and_backs_off() {
    let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let life = Duration::from_secs(90 * 86400);
    assert_eq!(
        renew_at(start, start + life, 0.0),
        start + Duration::from_secs(60 * 86400)
    );
    assert_eq!(
        renew_at(start, start + life, 1.0),
        start + Duration::from_secs(57 * 86400)
    );
    // Out-of-range jitter and a certificate that expired before it began stay sane.
    assert_eq!(
        renew_at(start, start + life, 7.0),
        start + Duration::from_secs(57 * 86400)
    );
    assert_eq!(renew_at(start, start, 0.5), start);
    assert_eq!(retry_after(1), FIRST_RETRY);
    assert_eq!(retry_after(2), FIRST_RETRY * 2);
    assert_eq!(retry_after(40), LAST_RETRY);
    let j = jitter();
    assert!((0.0..=1.0).contains(&j));
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let a = rcgen::KeyPair::generate().unwrap();
    let b = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x.lab.example".into()])
        .unwrap()
        .self_signed(&a)
        .unwrap()
        .pem();
    assert!(Issued::from_pem(&cert, &a.serialize_pem()).is_ok());
    let e = Issued::from_pem(&cert, &b.serialize_pem()).unwrap_err();
    assert!(e.contains("not the certificate's"), "{e}");
    assert!(Issued::from_pem("junk", &a.serialize_pem()).is_err());
    let huge = "A".repeat(MAX_CHAIN + 1);
    assert!(Issued::from_pem(&huge, &a.serialize_pem())
        .unwrap_err()
        .contains("at most"));
}

/// The zone seam: a TXT set through the DNS server's snapshot answers queries, and goes.
#[test]
fn the_zone_serves_challenge_txt_records_until_removed() {
    use hickory_proto::rr::{LowerName, Name, RecordType};

    let cfg = crate::config::Dns {
        zone: "lab.example".into(),
        listen: vec![],
        gateway_name: "gw".into(),
        ttl: 30,
        nameservers: vec![],
        secondaries: None,
        rrl: None,
    };
    let zone =
        crate::serve::dns::Zone::build(&cfg, "203.0.113.1".parse().unwrap(), &[], 1).unwrap();
    let name = Name::from_ascii("_acme-challenge.http.lab.example.").unwrap();
    let with = zone.with_txt(&name, &["a".into(), "b".into()], 2);
    let lower = LowerName::new(&name);
    let answer = with.lookup(&lower, RecordType::TXT);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(answer.answers[0].records().len(), 2);
    assert_eq!(with.serial(), 2);
    // Its parent exists (empty non-terminal) while it does.
    let parent = LowerName::new(&Name::from_ascii("http.lab.example.").unwrap());
    assert!(with.rrsets(&parent).is_some());
    let without = with.with_txt(&name, &[], 3);
    assert!(without.rrsets(&lower).is_none());
    assert!(without.rrsets(&parent).is_none());
    // Outside the zone: nothing.
    let out = Name::from_ascii("_acme-challenge.other.example.").unwrap();
    let same = zone.with_txt(&out, &["a".into()], 4);
    assert_eq!(same.len(), zone.len());
}
