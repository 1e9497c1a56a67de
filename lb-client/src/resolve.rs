//! SRV lookups for `srvgate ssh`, with errors that say what was asked, of whom, and what came
//! back.

use std::{
    hash::{BuildHasher, RandomState},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use hickory_resolver::{
    config::{NameServerConfig, ResolverConfig},
    net::{runtime::TokioRuntimeProvider, DnsError, NetError},
    proto::{
        op::ResponseCode,
        rr::{rdata::SRV, Name, RData, RecordType},
    },
    Resolver, TokioResolver,
};

/// Per try; with two tries an unreachable server fails in about 6 s, not the default 10.
const TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPTS: usize = 2;

/// Where a service is: the chosen SRV record's port and target, and the target's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub port: u16,
    /// The SRV target, e.g. `gw.lab.example.`.
    pub target: Name,
    pub addr: IpAddr,
}

/// Looks up `srv_name` (fully qualified) at `server`, or the system resolver when `None`.
/// Runs on a thread of its own with its own runtime, so callers need not be async and may
/// even be inside another runtime.
pub fn lookup(srv_name: &str, server: Option<SocketAddr>) -> anyhow::Result<Endpoint> {
    lookup_with_timeout(srv_name, server, TIMEOUT)
}

/// [`lookup`] with `timeout` per try instead of [`TIMEOUT`].
pub(crate) fn lookup_with_timeout(
    srv_name: &str,
    server: Option<SocketAddr>,
    timeout: Duration,
) -> anyhow::Result<Endpoint> {
    let owned = srv_name.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the DNS client")?;
        // The resolver warns on the terminal about every reply it ignores (a wrong id, a
        // wrong source): collected here instead, and told once with the outcome.
        let ignored = Ignored::default();
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::registry(),
            ignored.clone(),
        );
        let result = tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(lookup_async(&owned, server, timeout))
        });
        result.map_err(|e| match ignored.summary() {
            Some(what) => anyhow!("{e:#}; {what}"),
            None => e,
        })
    })
    .join()
    .map_err(|_| anyhow!("the DNS lookup of {srv_name} failed unexpectedly"))?
}

async fn lookup_async(
    srv_name: &str,
    server: Option<SocketAddr>,
    timeout: Duration,
) -> anyhow::Result<Endpoint> {
    let name =
        Name::from_ascii(srv_name).with_context(|| format!("{srv_name:?} is not a DNS name"))?;
    let (resolver, of_whom) = resolver(server, timeout)?;
    let asked = |what: &str| format!("looked up {what} via {of_whom}");

    let srv_query = format!("{name} SRV");
    let lookup = match resolver.srv_lookup(name.clone()).await {
        Ok(lookup) => lookup,
        Err(e) => {
            let alias = match &e {
                NetError::Dns(DnsError::NoRecordsFound(no))
                    if no.response_code == ResponseCode::NoError =>
                {
                    aliases(&resolver, &name).await
                }
                _ => None,
            };
            return Err(match alias {
                Some(what) => anyhow!("{}: {what}", asked(&srv_query)),
                None => explain(e, &asked(&srv_query)),
            });
        }
    };
    let records: Vec<SRV> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })
        .collect();
    if records.is_empty() {
        if let Some(what) = aliases(&resolver, &name).await {
            anyhow::bail!("{}: {what}", asked(&srv_query));
        }
    }
    let srv = choose(&records, RandomState::new().hash_one(srv_name))
        .with_context(|| format!("{}: the answer holds no SRV record", asked(&srv_query)))?;
    if srv.port == 0 {
        anyhow::bail!(
            "{}: the record `{name} SRV {} {} 0 {}` has port 0, which nothing can listen on; \
             the gateway's DNS is wrong or the answer is forged",
            asked(&srv_query),
            srv.priority,
            srv.weight,
            srv.target
        );
    }
    if srv.target.is_root() {
        // RFC 2782: a target of "." means the service is decidedly not available here.
        anyhow::bail!(
            "{}: the service is not available (SRV target is \".\")",
            asked(&srv_query)
        );
    }

    // The server puts the target's A record in the additional section; use it when there, so
    // one round trip does.
    let glued = lookup.additionals().iter().find_map(|r| match &r.data {
        RData::A(a) if r.name == srv.target => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) if r.name == srv.target => Some(IpAddr::V6(a.0)),
        _ => None,
    });
    let what = format!("{} (target of {name} SRV)", srv.target);
    let addr = match glued {
        Some(addr) => addr,
        None => {
            let ips = resolver
                .lookup_ip(srv.target.clone())
                .await
                .map_err(|e| explain(e, &asked(&what)))?;
            ips.iter()
                .next()
                .with_context(|| format!("{}: no address", asked(&what)))?
        }
    };
    if !is_host_address(addr) {
        anyhow::bail!(
            "{}: the record `{} {} {addr}` is not a host's address (0.0.0.0 would mean this machine); \
             the gateway's DNS is wrong or the answer is forged",
            asked(&what),
            srv.target,
            if addr.is_ipv4() { "A" } else { "AAAA" }
        );
    }
    Ok(Endpoint {
        port: srv.port,
        target: srv.target.clone(),
        addr,
    })
}

fn resolver(
    server: Option<SocketAddr>,
    timeout: Duration,
) -> anyhow::Result<(TokioResolver, String)> {
    let (mut builder, of_whom) = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut ns.connections {
                connection.port = addr.port();
            }
            let config = ResolverConfig::from_name_servers(vec![ns]);
            (
                Resolver::builder_with_config(config, TokioRuntimeProvider::default()),
                format!("DNS server {addr}"),
            )
        }
        None => (
            TokioResolver::builder_tokio().context(
                "reading the system's resolver configuration (/etc/resolv.conf); \
                 pass --dns-server IP[:PORT] to ask a server directly",
            )?,
            "the system resolver (/etc/resolv.conf)".to_string(),
        ),
    };
    let options = builder.options_mut();
    options.timeout = timeout;
    options.attempts = ATTEMPTS;
    let resolver = builder.build().context("setting up the DNS client")?;
    Ok((resolver, of_whom))
}

/// Where a CNAME chain from `name` leads, when an SRV query found none: the resolver does not
/// follow CNAMEs for SRV, so without this a loop or a dangling alias reads as "no record of
/// that type". `None` when `name` is no alias. At most [`MAX_ALIASES`] queries.
async fn aliases(resolver: &TokioResolver, name: &Name) -> Option<String> {
    let mut chain = vec![name.clone()];
    while chain.len() <= MAX_ALIASES {
        let last = chain.last()?;
        let next = resolver
            .lookup(last.clone(), RecordType::CNAME)
            .await
            .ok()
            .and_then(|l| {
                l.answers().iter().find_map(|r| match &r.data {
                    RData::CNAME(c) if r.name == *last => Some(c.0.clone()),
                    _ => None,
                })
            });
        let Some(next) = next else {
            break;
        };
        let looped = chain.contains(&next);
        chain.push(next);
        if looped {
            return Some(format!("CNAME loop: {}", join(&chain)));
        }
    }
    match chain.len() {
        1 => None,
        n if n > MAX_ALIASES => Some(format!(
            "CNAME chain longer than {MAX_ALIASES}: {} ...",
            join(&chain)
        )),
        _ => Some(format!(
            "an alias (CNAME) that leads to no SRV record: {}",
            join(&chain)
        )),
    }
}

/// Longest CNAME chain followed when explaining a missing SRV record.
const MAX_ALIASES: usize = 8;

fn join(chain: &[Name]) -> String {
    chain
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// An address a host can be reached at: not 0.0.0.0 or ::, not multicast or broadcast.
fn is_host_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

/// The resolver's warnings during one lookup (replies it ignored), counted by message.
#[derive(Clone, Default)]
struct Ignored(std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>);

impl Ignored {
    /// One sentence for all of them, if there were any.
    fn summary(&self) -> Option<String> {
        let seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.is_empty() {
            return None;
        }
        let what: Vec<String> = seen
            .iter()
            .map(|(message, n)| format!("{n} × {message}"))
            .collect();
        Some(format!(
            "the resolver ignored replies that did not match the query ({}): a forged answer or a broken middlebox",
            what.join("; ")
        ))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Ignored {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        // The first words name the kind ("ignoring response with wrong message id"); ids
        // and addresses after a colon differ per reply.
        let kind = m.0.split(':').next().unwrap_or_default().trim().to_string();
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = seen.iter().position(|(k, _)| *k == kind) {
            seen[i].1 += 1;
        } else if seen.len() < 8 {
            seen.push((kind, 1));
        }
    }
}

/// RFC 2782 selection: the lowest priority wins; within it, a weighted random pick (`random`
/// is any random number), or any record when all weights are 0.
pub(crate) fn choose(records: &[SRV], random: u64) -> Option<&SRV> {
    let best = records.iter().map(|s| s.priority).min()?;
    let group: Vec<&SRV> = records.iter().filter(|s| s.priority == best).collect();
    let total: u64 = group.iter().map(|s| u64::from(s.weight)).sum();
    if total == 0 {
        return group.get((random % group.len() as u64) as usize).copied();
    }
    let mut pick = random % total;
    for srv in &group {
        let weight = u64::from(srv.weight);
        if pick < weight {
            return Some(srv);
        }
        pick -= weight;
    }
    group.last().copied()
}

/// Turns a resolver error into a sentence a student can act on.
fn explain(error: NetError, asked: &str) -> anyhow::Error {
    let what = match &error {
        NetError::Dns(DnsError::NoRecordsFound(no)) if no.response_code == ResponseCode::NXDomain => {
            "NXDOMAIN: no such name. Check the spelling (NAME.SERVICE.ZONE) and that the route exists"
                .to_string()
        }
        NetError::Dns(DnsError::NoRecordsFound(no)) => format!(
            "{}: the name exists but has no record of that type",
            no.response_code
        ),
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            "REFUSED: that server does not serve this zone and does not recurse; \
             point --dns-server at the gateway"
                .to_string()
        }
        NetError::Dns(DnsError::ResponseCode(code)) => format!("the server answered {code}"),
        NetError::Timeout | NetError::NoConnections | NetError::Io(_) | NetError::Busy => {
            format!("no answer, the server is unreachable or not running ({error})")
        }
        _ => error.to_string(),
    };
    anyhow!("{asked}: {what}")
}
