//! `[acme]`: one certificate for the web routes' wildcard (`*.http.<zone>`) and the portal's
//! name, ordered from an RFC 8555 CA with DNS-01 challenges that the gateway's own zone
//! answers, and renewed before it expires.
//!
//! Why DNS-01 from the zone: the gateway is the zone's authoritative server, so it can prove
//! a wildcard with no per-student order (no rate-limit exposure) and nothing for the
//! students to run. The protocol is `instant-acme`'s; this module decides when to order,
//! where the challenges go and what happens to the result:
//!
//! - Challenges: the TXT records at `_acme-challenge.<name>` are put in the zone through
//!   [`ChallengeZone`] (the DNS server's one seam for records that are not routes'),
//!   before the CA is told to look, and removed when the order ends, whatever its outcome.
//! - Keys: the account's credentials (`acme-account.json`, for one directory URL) and the
//!   certificate's key (`acme-key.pem`, new for each order) are in the state directory,
//!   0600, beside the chain (`acme-cert.pem`); the key is written first, and a pair that
//!   does not match (a crash between the two writes) is ordered again.
//! - Renewal: at two thirds of the lifetime, less a random jitter of up to a thirtieth of it,
//!   so gateways started together do not order together ([`renew_at`]). A failed order keeps
//!   the certificate in use, warns with its expiry, and is retried after a backoff that
//!   doubles from [`FIRST_RETRY`] to [`LAST_RETRY`] ([`retry_after`]).
//! - Serving: [`Certs`] holds the certificate in force, swapped atomically; a TLS server
//!   asks its [`Certs::resolve`] for a name (a wildcard covers one label), so a handshake
//!   sees the old certificate or the new one. Its expiry is the metric
//!   `srvgate_tls_certificate_expiry_seconds` ([`Certs::render_metrics`]).
//!
//! The order itself is behind [`Issuer`], so the renewal logic is tested with a fake CA
//! (`acme/tests.rs`); [`AcmeIssuer`] is the real one.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    sign::CertifiedKey,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{config::Acme, serve::dns::DnsServer, table::state::write_atomically};

pub const ACCOUNT_FILE: &str = "acme-account.json";
pub const KEY_FILE: &str = "acme-key.pem";
pub const CERT_FILE: &str = "acme-cert.pem";

/// The first wait after a failed order; doubled after each further failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(10);
/// The longest wait between two tries.
pub const LAST_RETRY: Duration = Duration::from_secs(3600);
/// How long one order may take, challenges and polling included, before it counts as failed
/// (a CA that stops answering must not hold the renewal forever).
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest chain taken from a CA: a leaf and a couple of intermediates are a few kB.
const MAX_CHAIN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    #[error("the ACME CA: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("the ACME CA offers no dns-01 challenge for {0}")]
    NoDnsChallenge(String),
    #[error("the ACME CA refused the authorization of {name}: status {status}")]
    Authorization { name: String, status: String },
    #[error("the ACME order ended {0}, not ready for the certificate")]
    Order(String),
    #[error("the ACME order took longer than {0:?}")]
    Timeout(Duration),
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("the issued certificate: {0}")]
    Certificate(String),
    #[error("making the certificate's key or request: {0}")]
    Key(String),
    #[error(transparent)]
    State(#[from] crate::table::state::StateError),
}

/// Where DNS-01 challenges are published: TXT records at a name of the zone.
pub trait ChallengeZone: Send + Sync {
    /// Serves exactly `values` as `name`'s TXT records; none removes them.
    fn set_txt(&self, name: &str, values: &[String]);
}

impl ChallengeZone for DnsServer {
    fn set_txt(&self, name: &str, values: &[String]) {
        match hickory_proto::rr::Name::from_ascii(name) {
            Ok(mut n) => {
                n.set_fqdn(true);
                DnsServer::set_txt(self, &n, values);
            }
            Err(error) => warn!(name, %error, "acme: not a DNS name; challenge not published"),
        }
    }
}

/// The future an [`Issuer`] returns.
pub type IssueFuture<'a> = Pin<Box<dyn Future<Output = Result<String, AcmeError>> + Send + 'a>>;

/// A CA: proves `names` through `zone` and returns the PEM chain for `key`.
pub trait Issuer: Send + Sync {
    fn issue<'a>(
        &'a self,
        names: &'a [String],
        key: &'a rcgen::KeyPair,
        zone: &'a dyn ChallengeZone,
    ) -> IssueFuture<'a>;
}

/// One certificate with its key, as served.
#[derive(Debug)]
pub struct Issued {
    pub certified: Arc<CertifiedKey>,
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Issued {
    /// Reads a PEM chain and key; refuses a pair whose key is not the leaf's.
    pub fn from_pem(chain: &str, key: &str) -> Result<Issued, String> {
        if chain.len() > MAX_CHAIN {
            return Err(format!(
                "the chain is {} bytes; at most {MAX_CHAIN}",
                chain.len()
            ));
        }
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
        let Some(leaf) = certs.first() else {
            return Err("holds no certificate".into());
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("the leaf is not an X.509 certificate: {e}"))?;
        let validity = parsed.validity();
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let (not_before, not_after) = (
            at(validity.not_before.timestamp()),
            at(validity.not_after.timestamp()),
        );
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| format!("the key is not a PEM private key: {e}"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("the key is not usable for TLS: {e}"))?;
        let certified = CertifiedKey::new(certs, signer);
        certified
            .keys_match()
            .map_err(|e| format!("the key is not the certificate's: {e}"))?;
        Ok(Issued {
            certified: Arc::new(certified),
            names,
            not_before,
            not_after,
        })
    }

    /// Whether this certificate covers `name` (lowercase): exactly, or by a wildcard of
    /// one label (RFC 6125 section 6.4.3).
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => n == name,
        })
    }
}

/// The certificate in force and what the last renewal said, shared by the renewal task,
/// the TLS servers and the metrics.
#[derive(Debug, Default)]
pub struct Certs {
    current: ArcSwapOption<Issued>,
    last_error: Mutex<Option<String>>,
}

impl Certs {
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.current.load_full()
    }

    /// Puts `issued` in force: the next handshake presents it.
    pub fn replace(&self, issued: Issued) {
        self.current.store(Some(Arc::new(issued)));
    }

    /// Why the last order failed, until one succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// The certificate for a TLS client naming `server_name`, if it covers that name.
    pub fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = server_name?.trim_end_matches('.').to_ascii_lowercase();
        let current = self.current.load();
        let issued = current.as_ref()?;
        issued.covers(&name).then(|| issued.certified.clone())
    }

    /// `srvgate_tls_certificate_expiry_seconds` (the Unix time of notAfter, per name) and
    /// `srvgate_tls_certificate_renewal_failing` (1 while the last order failed).
    pub fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP srvgate_tls_certificate_expiry_seconds When the ACME certificate in force expires (Unix time), per name."
        );
        let _ = writeln!(out, "# TYPE srvgate_tls_certificate_expiry_seconds gauge");
        if let Some(c) = self.current() {
            let expiry = unix(c.not_after);
            for n in &c.names {
                let _ = writeln!(
                    out,
                    "srvgate_tls_certificate_expiry_seconds{{name=\"{n}\"}} {expiry}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP srvgate_tls_certificate_renewal_failing 1 while the last ACME order failed (the old certificate stays in use)."
        );
        let _ = writeln!(out, "# TYPE srvgate_tls_certificate_renewal_failing gauge");
        let failing = u8::from(self.last_error().is_some());
        let _ = writeln!(out, "srvgate_tls_certificate_renewal_failing {failing}");
    }

    /// One line for `srvgate status` and the log: expiry and the last failure.
    pub fn summary(&self, now: SystemTime) -> String {
        let mut s = match self.current() {
            Some(c) => {
                let left = c.not_after.duration_since(now).unwrap_or_default();
                format!(
                    "{}: expires in {}",
                    c.names.join(", "),
                    lb_model::format_duration(Duration::from_secs(left.as_secs() / 60 * 60))
                )
            }
            None => "no certificate yet".to_string(),
        };
        if let Some(e) = self.last_error() {
            let _ = write!(s, "; last renewal failed: {e}");
        }
        s
    }
}

/// For a TLS server that presents the certificate alone (no fallback): a client naming
/// something it does not cover gets no certificate, so the handshake fails.
impl rustls::server::ResolvesServerCert for Certs {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Certs::resolve(self, hello.server_name())
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds of
/// its lifetime, `jitter` (0..1) of a thirtieth of the lifetime earlier.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let spread = life / 30;
    not_before + life * 2 / 3 - spread.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The wait after `failures` failed orders in a row (1 or more).
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(LAST_RETRY)
}

/// A number in 0..1 from the system's random source, for the renewal's jitter.
fn jitter() -> f64 {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

/// The certificate kept in `dir`, if there is a usable one for `names`.
pub fn load(dir: &Path, names: &[String]) -> Option<Issued> {
    let chain = std::fs::read_to_string(dir.join(CERT_FILE)).ok()?;
    let key = std::fs::read_to_string(dir.join(KEY_FILE)).ok()?;
    match Issued::from_pem(&chain, &key) {
        Ok(i) if names.iter().all(|n| i.names.contains(n)) => Some(i),
        Ok(i) => {
            info!(have = ?i.names, want = ?names, "acme: the kept certificate is for other names; ordering a new one");
            None
        }
        Err(e) => {
            warn!(dir = %dir.display(), "acme: the kept certificate is not usable ({e}); ordering a new one");
            None
        }
    }
}

/// One order: a new key, the certificate for it, both kept in `dir` and put in force.
/// On failure nothing changes but the error recorded in `certs`.
pub async fn renew_once(
    names: &[String],
    dir: &Path,
    certs: &Certs,
    issuer: &dyn Issuer,
    zone: &dyn ChallengeZone,
) -> Result<(), AcmeError> {
    let result = async {
        let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Key(e.to_string()))?;
        let chain = tokio::time::timeout(ORDER_TIMEOUT, issuer.issue(names, &key, zone))
            .await
            .map_err(|_| AcmeError::Timeout(ORDER_TIMEOUT))??;
        let key_pem = key.serialize_pem();
        let issued = Issued::from_pem(&chain, &key_pem).map_err(AcmeError::Certificate)?;
        if let Some(missing) = names.iter().find(|n| !issued.names.contains(n)) {
            return Err(AcmeError::Certificate(format!(
                "it does not name {missing}"
            )));
        }
        // The key first: a chain without its key would be loaded next time and fail.
        write_atomically(dir, KEY_FILE, &key_pem)?;
        write_atomically(dir, CERT_FILE, &chain)?;
        Ok(issued)
    }
    .await;
    match result {
        Ok(issued) => {
            info!(names = ?issued.names, expires = unix(issued.not_after), "acme: certificate issued and in force");
            certs.replace(issued);
            certs.set_error(None);
            Ok(())
        }
        Err(e) => {
            certs.set_error(Some(e.to_string()));
            Err(e)
        }
    }
}

/// Keeps `certs` valid for as long as the daemon runs: loads the kept certificate, orders
/// when there is none or it is due, retries failures with backoff. Never returns.
pub async fn run(
    settings: Acme,
    dir: PathBuf,
    certs: Arc<Certs>,
    issuer: Arc<dyn Issuer>,
    zone: Arc<dyn ChallengeZone>,
) {
    if let Some(kept) = load(&dir, &settings.names) {
        info!(names = ?kept.names, expires = unix(kept.not_after), "acme: serving the kept certificate");
        certs.replace(kept);
    }
    let mut failures = 0u32;
    loop {
        let now = SystemTime::now();
        let due = certs
            .current()
            .map_or(now, |c| renew_at(c.not_before, c.not_after, jitter()));
        if let Ok(wait) = due.duration_since(now) {
            info!(in_seconds = wait.as_secs(), "acme: next renewal");
            tokio::time::sleep(wait).await;
        }
        match renew_once(&settings.names, &dir, &certs, &*issuer, &*zone).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                let wait = retry_after(failures);
                let expiry = certs.current().map(|c| unix(c.not_after));
                warn!(
                    error = %e,
                    failures,
                    retry_in_seconds = wait.as_secs(),
                    expires = ?expiry,
                    "acme: the certificate's renewal failed; the one in force (if any) keeps serving"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The real CA, through `instant-acme`.
pub struct AcmeIssuer {
    settings: Acme,
    dir: PathBuf,
}

/// What `acme-account.json` holds: an account is the directory's.
#[derive(Serialize, Deserialize)]
struct KeptAccount {
    directory: String,
    credentials: AccountCredentials,
}

impl AcmeIssuer {
    pub fn new(settings: Acme, dir: PathBuf) -> AcmeIssuer {
        AcmeIssuer { settings, dir }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        Ok(match &self.settings.ca {
            Some(ca) => Account::builder_with_root(ca).map_err(|e| AcmeError::File {
                path: ca.clone(),
                reason: format!("not usable as the CA's roots: {e}"),
            })?,
            None => Account::builder()?,
        })
    }

    /// The kept account for this directory, or a new one (then kept).
    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.dir.join(ACCOUNT_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            match serde_json::from_str::<KeptAccount>(&text) {
                Ok(k) if k.directory == self.settings.directory => {
                    return Ok(self.builder()?.from_credentials(k.credentials).await?);
                }
                Ok(_) => info!("acme: the kept account is another directory's; making one"),
                Err(e) => {
                    warn!(path = %path.display(), "acme: the kept account is unreadable ({e}); making one")
                }
            }
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                None,
            )
            .await?;
        let kept = KeptAccount {
            directory: self.settings.directory.clone(),
            credentials,
        };
        let text = serde_json::to_string(&kept).map_err(|e| AcmeError::Key(e.to_string()))?;
        write_atomically(&self.dir, ACCOUNT_FILE, &text)?;
        info!(id = account.id(), "acme: account made");
        Ok(account)
    }

    async fn order(
        &self,
        names: &[String],
        key: &rcgen::KeyPair,
        published: &mut Published<'_>,
    ) -> Result<String, AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Authorization {
                        name: authz.identifier().to_string(),
                        status: format!("{other:?}"),
                    })
                }
            }
            let name = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(ChallengeType::Dns01)
                .ok_or_else(|| AcmeError::NoDnsChallenge(name.clone()))?;
            let Identifier::Dns(base) = challenge.identifier().identifier else {
                return Err(AcmeError::NoDnsChallenge(name));
            };
            let owner = format!("_acme-challenge.{base}");
            published.add(owner, challenge.key_authorization().dns_value());
            challenge.set_ready().await?;
        }
        let retry = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Order(format!("{status:?}")));
        }
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|e| AcmeError::Key(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(key)
            .map_err(|e| AcmeError::Key(e.to_string()))?;
        order.finalize_csr(csr.der()).await?;
        Ok(order.poll_certificate(&retry).await?)
    }
}

impl Issuer for AcmeIssuer {
    fn issue<'a>(
        &'a self,
        names: &'a [String],
        key: &'a rcgen::KeyPair,
        zone: &'a dyn ChallengeZone,
    ) -> IssueFuture<'a> {
        Box::pin(async move {
            let mut published = Published::new(zone);
            self.order(names, key, &mut published).await
        })
    }
}

/// The challenges an order has put in the zone; removed when it is dropped, so an order
/// that fails or is cancelled (timeout) leaves none behind.
pub struct Published<'a> {
    zone: &'a dyn ChallengeZone,
    records: BTreeMap<String, Vec<String>>,
}

impl<'a> Published<'a> {
    pub fn new(zone: &'a dyn ChallengeZone) -> Published<'a> {
        Published {
            zone,
            records: BTreeMap::new(),
        }
    }

    /// Adds `value` to `owner`'s TXT records (a wildcard and its parent share one owner).
    pub fn add(&mut self, owner: String, value: String) {
        let values = self.records.entry(owner.clone()).or_default();
        if !values.contains(&value) {
            values.push(value);
        }
        self.zone.set_txt(&owner, values);
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for owner in self.records.keys() {
            self.zone.set_txt(owner, &[]);
        }
    }
}

#[cfg(test)]
mod tests;
