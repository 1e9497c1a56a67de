//! `srvgate doctor`: checks what an admin gets wrong around a gateway, each finding with a
//! one-line fix. The checks are pure functions of the config and a [`Probe`] (what they
//! read of the machine and the network), so each is unit-tested against a fake; the real
//! probe reads sysctls and `/proc`, runs `ip` and `nft`, and asks name servers.
//!
//! | check          | fails when                                                          |
//! |----------------|---------------------------------------------------------------------|
//! | `xdp`          | a leg has no XDP attached (warns: generic/skb mode, slower)          |
//! | `sysctl`       | `ip_forward` is off; strict `rp_filter` on a private leg (warns: `accept_local` off) |
//! | `address`      | the public address is on another interface (warns: on none, as on a standby) |
//! | `firewall`     | an nftables rule (or a chain's drop policy) drops the gateway's own ports (DNS, HTTP, HTTPS, portal) or the port range |
//! | `dns`          | the zone's SOA is not answered on the public address                 |
//! | `nameservers`  | a `[dns.nameservers]` server does not answer, or serials differ      |
//! | `delegation`   | (`--parent`) the parent's NS or glue differ from the config          |
//! | `ports`        | a local service listens on a port of the range (XDP takes its packets) |
//! | `etcd`         | (`[cluster]`) etcd does not answer                                   |
//!
//! Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 for a
//! bad config. `--json` prints the findings as a list for monitoring.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::anyhow;
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RData, RecordType},
};
use lb_client::Failure;
use serde::Serialize;

use crate::{
    config::Config,
    machine::{self, Interface},
};

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The gateway's config.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "/etc/srvgate/srvgate.toml"
    )]
    pub config: PathBuf,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// A name server of the parent zone (ADDR or ADDR:PORT): check the zone's delegation
    /// (NS and glue) there.
    #[arg(long, value_name = "ADDR")]
    pub parent: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check's verdict on one thing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    /// What was checked (a leg, a port, a server).
    pub subject: String,
    pub detail: String,
    /// One line that fixes it; empty when nothing is wrong.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

fn finding(
    check: &'static str,
    status: Status,
    subject: impl Into<String>,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check,
        status,
        subject: subject.into(),
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// How XDP is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
    Offload,
}

/// A socket bound by some process of this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub udp: bool,
    pub addr: std::net::IpAddr,
    pub port: u16,
}

/// The referral a parent server gives for the zone: NS names and their glue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delegation {
    pub ns: BTreeSet<String>,
    pub glue: BTreeSet<(String, Ipv4Addr)>,
}

/// What the checks read of the machine and the network.
pub trait Probe {
    /// A file under /proc/sys/net/ipv4, e.g. `ip_forward` or `conf/eth0/rp_filter`.
    fn sysctl(&self, key: &str) -> Option<String>;
    /// `Ok(None)`: no XDP program on `dev`.
    fn xdp_mode(&self, dev: &str) -> Result<Option<XdpMode>, String>;
    fn interfaces(&self) -> Vec<Interface>;
    /// `nft list ruleset`; `Ok(None)` when nftables is not installed.
    fn ruleset(&self) -> Result<Option<String>, String>;
    fn listening(&self) -> Vec<Listener>;
    /// The serial of `zone`'s SOA as `server` answers it, authoritatively.
    fn soa_serial(&self, server: SocketAddr, zone: &str) -> Result<u32, String>;
    fn delegation(&self, parent: SocketAddr, zone: &str) -> Result<Delegation, String>;
    /// Whether the cluster's etcd answers.
    fn etcd(&self, cfg: &Config) -> Result<(), String>;
}

/// Every check, in the order they are printed.
pub fn run_checks(cfg: &Config, probe: &dyn Probe, parent: Option<SocketAddr>) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(check_xdp(cfg, probe));
    out.extend(check_sysctls(cfg, probe));
    out.extend(check_address(cfg, probe));
    out.extend(check_firewall(cfg, probe));
    out.extend(check_dns(cfg, probe));
    out.extend(check_nameservers(cfg, probe));
    if let Some(parent) = parent {
        out.extend(check_delegation(cfg, probe, parent));
    }
    out.extend(check_ports(cfg, probe));
    if cfg.cluster.is_some() {
        out.push(match probe.etcd(cfg) {
            Ok(()) => finding("etcd", Status::Ok, "etcd", "answers", ""),
            Err(e) => finding(
                "etcd",
                Status::Fail,
                "etcd",
                e,
                "check etcd's health on its hosts: etcdctl endpoint health --cluster",
            ),
        });
    }
    out
}

fn legs(cfg: &Config) -> Vec<(&str, bool)> {
    let g = &cfg.gateway;
    std::iter::once((g.public_interface.as_str(), true))
        .chain(g.private_interfaces.iter().map(|p| (p.as_str(), false)))
        .collect()
}

pub fn check_xdp(cfg: &Config, probe: &dyn Probe) -> Vec<Finding> {
    legs(cfg)
        .into_iter()
        .map(|(leg, _)| match probe.xdp_mode(leg) {
            Ok(Some(XdpMode::Native)) => finding("xdp", Status::Ok, leg, "native XDP (in the driver)", ""),
            Ok(Some(XdpMode::Offload)) => finding("xdp", Status::Ok, leg, "offloaded XDP", ""),
            Ok(Some(XdpMode::Generic)) => finding(
                "xdp",
                Status::Warn,
                leg,
                "generic XDP (skb mode): every packet pays for an skb, several times slower",
                format!("use a driver with native XDP on {leg}, then: srvgate down; srvgate run --xdp-mode native"),
            ),
            Ok(None) => finding(
                "xdp",
                Status::Fail,
                leg,
                "no XDP program attached: nothing is forwarded on this leg",
                "systemctl start srvgate",
            ),
            Err(e) => finding("xdp", Status::Fail, leg, format!("cannot read the interface: {e}"), format!("ip link show {leg}  # does it exist?")),
        })
        .collect()
}

/// The effective value of a per-interface sysctl: the larger of `all` and the interface's,
/// which is how the kernel combines `rp_filter` and `accept_local`.
fn conf(probe: &dyn Probe, dev: &str, key: &str) -> Option<u32> {
    let read = |d: &str| {
        probe
            .sysctl(&format!("conf/{d}/{key}"))?
            .trim()
            .parse::<u32>()
            .ok()
    };
    match (read("all"), read(dev)) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
    }
}

pub fn check_sysctls(cfg: &Config, probe: &dyn Probe) -> Vec<Finding> {
    let mut out = Vec::new();
    match probe.sysctl("ip_forward").as_deref().map(str::trim) {
        Some("1") => out.push(finding(
            "sysctl",
            Status::Ok,
            "net.ipv4.ip_forward",
            "1",
            "",
        )),
        other => out.push(finding(
            "sysctl",
            Status::Fail,
            "net.ipv4.ip_forward",
            format!(
                "{} (bpf_fib_lookup finds no next hop without forwarding)",
                other.unwrap_or("unreadable")
            ),
            "sysctl -w net.ipv4.ip_forward=1  # srvgate sets it at start; something reset it",
        )),
    }
    for (leg, public) in legs(cfg) {
        if public {
            continue;
        }
        let subject = format!("net.ipv4.conf.{leg}.rp_filter");
        match conf(probe, leg, "rp_filter") {
            Some(1) => out.push(finding(
                "sysctl",
                Status::Fail,
                subject,
                "1 (strict, counting conf.all): replies passed to the kernel on this leg carry the public address as source and are dropped",
                format!("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{leg}.rp_filter=2"),
            )),
            Some(v) => out.push(finding("sysctl", Status::Ok, subject, v.to_string(), "")),
            None => out.push(finding("sysctl", Status::Warn, subject, "unreadable", format!("ip link show {leg}  # does it exist?"))),
        }
        let subject = format!("net.ipv4.conf.{leg}.accept_local");
        match conf(probe, leg, "accept_local") {
            Some(0) | None => out.push(finding(
                "sysctl",
                Status::Warn,
                subject,
                "0: rewritten replies passed to the kernel are dropped (srvgate sets it to 1 at start)",
                format!("sysctl -w net.ipv4.conf.{leg}.accept_local=1"),
            )),
            Some(v) => out.push(finding("sysctl", Status::Ok, subject, v.to_string(), "")),
        }
    }
    out
}

pub fn check_address(cfg: &Config, probe: &dyn Probe) -> Vec<Finding> {
    let g = &cfg.gateway;
    let ip = g.public_ipv4;
    let ifaces = probe.interfaces();
    let holders: Vec<&Interface> = ifaces.iter().filter(|i| i.ipv4.contains(&ip)).collect();
    let subject = format!("{ip}");
    if holders.iter().any(|i| i.name == g.public_interface) {
        return vec![finding(
            "address",
            Status::Ok,
            subject,
            format!("on {}", g.public_interface),
            "",
        )];
    }
    match holders.first() {
        Some(other) => {
            let len = other
                .ipv4_nets
                .iter()
                .find(|(a, _)| *a == ip)
                .map_or(32, |(_, l)| *l);
            vec![finding(
                "address",
                Status::Fail,
                subject,
                format!("on {}, not on the public leg {}: students' packets arrive where XDP does not translate them", other.name, g.public_interface),
                format!("ip addr del {ip}/{len} dev {} && ip addr add {ip}/{len} dev {}", other.name, g.public_interface),
            )]
        }
        None => vec![finding(
            "address",
            Status::Warn,
            subject,
            format!("on no interface (right on a failover standby; otherwise nobody answers ARP for it on {})", g.public_interface),
            format!("ip addr add {ip}/24 dev {}  # with your prefix length", g.public_interface),
        )],
    }
}

/// A port the gateway needs open, and what needs it.
#[derive(Clone, Debug)]
struct Needed {
    udp: bool,
    ports: (u16, u16),
    what: String,
    /// The hooks whose drops hit it.
    hooks: &'static [&'static str],
}

const OWN_HOOKS: &[&str] = &["prerouting", "input"];
/// Packets XDP passes to the kernel (fragments, what it cannot redirect) take these.
const RANGE_HOOKS: &[&str] = &["prerouting", "input", "forward"];

fn needed(cfg: &Config) -> Vec<Needed> {
    let mut out = Vec::new();
    let mut own = |udp: bool, addrs: &[SocketAddr], what: &str| {
        for a in addrs {
            out.push(Needed {
                udp,
                ports: (a.port(), a.port()),
                what: format!("{what} {a}"),
                hooks: OWN_HOOKS,
            });
        }
    };
    if let Some(d) = &cfg.dns {
        own(true, &d.listen, "dns");
        own(false, &d.listen, "dns");
    }
    if let Some(h) = &cfg.http {
        own(false, &h.listen, "http");
    }
    if let Some(h) = &cfg.https {
        own(false, &h.listen, "https");
    }
    if let Some(p) = &cfg.portal {
        own(false, &p.listen, "portal");
    }
    let r = cfg.gateway.port_range;
    for udp in [false, true] {
        out.push(Needed {
            udp,
            ports: (r.first, r.last),
            what: format!("port_range {}-{}", r.first, r.last),
            hooks: RANGE_HOOKS,
        });
    }
    out
}

/// One nftables rule as `nft list ruleset` prints it, with its chain.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    chain: String,
    hook: Option<String>,
    text: String,
    /// `None`: the rule matches every port (no dport match).
    ports: Option<Vec<(u16, u16)>>,
    /// `Some(true)`: only udp; `Some(false)`: only tcp; `None`: either.
    udp: Option<bool>,
    verdict: Verdict,
    /// Whether anything but the protocol and the port narrows it (addresses, interfaces,
    /// conntrack state): such a catch-all drop is not reported.
    narrowed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Drop,
    Other,
}

/// A chain: its hook, its policy, its rules in order.
#[derive(Clone, Debug, Default)]
struct Chain {
    name: String,
    hook: Option<String>,
    policy_drop: bool,
    rules: Vec<Rule>,
}

fn parse_ports(text: &str) -> Option<Vec<(u16, u16)>> {
    let one = |s: &str| -> Option<(u16, u16)> {
        let s = s.trim().trim_end_matches(',');
        match s.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => s.parse().ok().map(|p| (p, p)),
        }
    };
    if let Some(set) = text.strip_prefix('{') {
        let inner = set.split('}').next()?;
        inner.split(',').map(one).collect()
    } else {
        one(text.split_whitespace().next()?).map(|p| vec![p])
    }
}

fn parse_ruleset(text: &str) -> Vec<Chain> {
    let mut chains = Vec::new();
    let mut table = String::new();
    let mut current: Option<Chain> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            table = rest.trim_end_matches('{').trim().to_string();
        } else if let Some(rest) = line.strip_prefix("chain ") {
            if let Some(c) = current.take() {
                chains.push(c);
            }
            current = Some(Chain {
                name: format!("{table} {}", rest.trim_end_matches('{').trim()),
                ..Chain::default()
            });
        } else if line == "}" {
            if let Some(c) = current.take() {
                chains.push(c);
            }
        } else if let Some(c) = current.as_mut() {
            if line.starts_with("type ") && line.contains(" hook ") {
                c.hook = line
                    .split_whitespace()
                    .skip_while(|w| *w != "hook")
                    .nth(1)
                    .map(str::to_string);
                c.policy_drop = line.contains("policy drop");
            } else if !line.is_empty() {
                let words: Vec<&str> = line.split_whitespace().collect();
                let verdict = if words.iter().any(|w| *w == "drop" || *w == "reject") {
                    Verdict::Drop
                } else if words.contains(&"accept") {
                    Verdict::Accept
                } else {
                    Verdict::Other
                };
                let dport = line.find("dport ").map(|i| &line[i + 6..]);
                let udp = if line.contains("udp ") || line.contains("meta l4proto udp") {
                    Some(true)
                } else if line.contains("tcp ") || line.contains("meta l4proto tcp") {
                    Some(false)
                } else {
                    None
                };
                let narrowed = [
                    "saddr", "daddr", "iif", "oif", "ct ", "sport", "limit", "mark", "flags",
                ]
                .iter()
                .any(|w| line.contains(w));
                c.rules.push(Rule {
                    chain: c.name.clone(),
                    hook: c.hook.clone(),
                    text: line.split(" # handle").next().unwrap_or(line).to_string(),
                    ports: dport.and_then(parse_ports),
                    udp,
                    verdict,
                    narrowed,
                });
            }
        }
    }
    chains
}

fn overlaps(a: (u16, u16), b: (u16, u16)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn matches(rule: &Rule, need: &Needed) -> bool {
    rule.udp.is_none_or(|u| u == need.udp)
        && match &rule.ports {
            Some(ps) => ps.iter().any(|p| overlaps(*p, need.ports)),
            None => rule.udp.is_some() || !rule.narrowed,
        }
}

pub fn check_firewall(cfg: &Config, probe: &dyn Probe) -> Vec<Finding> {
    let text = match probe.ruleset() {
        Ok(Some(t)) => t,
        Ok(None) => {
            return vec![finding(
                "firewall",
                Status::Ok,
                "nftables",
                "not installed",
                "",
            )]
        }
        Err(e) => {
            return vec![finding(
                "firewall",
                Status::Warn,
                "nftables",
                format!("cannot list the ruleset: {e}"),
                "nft list ruleset  # run as root",
            )]
        }
    };
    let chains = parse_ruleset(&text);
    let mut out = Vec::new();
    for need in needed(cfg) {
        let proto = if need.udp { "udp" } else { "tcp" };
        let subject = format!("{proto} {} ({})", port_text(need.ports), need.what);
        let mut blocked = None;
        for chain in chains
            .iter()
            .filter(|c| c.hook.as_deref().is_some_and(|h| need.hooks.contains(&h)))
        {
            // The first rule that decides for these ports: an explicit drop, or an accept
            // before it. A narrowed rule decides only for some packets, so a drop that is
            // narrowed is still reported (some students are cut off), an accept that is
            // narrowed does not save the port from a later drop.
            let mut verdict = None;
            for rule in &chain.rules {
                if !matches(rule, &need) {
                    continue;
                }
                match rule.verdict {
                    Verdict::Drop => {
                        verdict = Some(Some(format!(
                            "dropped by `{}` in chain {}",
                            rule.text, rule.chain
                        )));
                        break;
                    }
                    Verdict::Accept if !rule.narrowed => {
                        verdict = Some(None);
                        break;
                    }
                    _ => {}
                }
            }
            let why = match verdict {
                Some(v) => v,
                None if chain.policy_drop => Some(format!(
                    "no rule accepts it in chain {} (policy drop)",
                    chain.name
                )),
                None => None,
            };
            if why.is_some() {
                blocked = why;
                break;
            }
        }
        match blocked {
            Some(why) => out.push(finding(
                "firewall",
                Status::Fail,
                subject,
                why,
                format!(
                    "nft insert rule <table> <chain> {proto} dport {} accept  # before the drop",
                    port_text(need.ports)
                ),
            )),
            None => out.push(finding("firewall", Status::Ok, subject, "not dropped", "")),
        }
    }
    out
}

fn port_text((a, b): (u16, u16)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// Where the zone is served on the public address.
fn dns_server(cfg: &Config) -> Option<SocketAddr> {
    let d = cfg.dns.as_ref()?;
    let port = d.listen.first().map_or(53, SocketAddr::port);
    Some(SocketAddr::V4(SocketAddrV4::new(
        cfg.gateway.public_ipv4,
        port,
    )))
}

pub fn check_dns(cfg: &Config, probe: &dyn Probe) -> Vec<Finding> {
    let (Some(d), Some(server)) = (cfg.dns.as_ref(), dns_server(cfg)) else {
        return Vec::new();
    };
    vec![match probe.soa_serial(server, &d.zone) {
        Ok(serial) => finding(
            "dns",
            Status::Ok,
            server.to_string(),
            format!("answers {} SOA, serial {serial}", d.zone),
            "",
        ),
        Err(e) => finding(
            "dns",
            Status::Fail,
            server.to_string(),
            format!("{} SOA: {e}", d.zone),
            format!(
                "systemctl status srvgate; nft list ruleset | grep -w {}  # running? dropped?",
                server.port()
            ),
        ),
    }]
}

/// The zone's name servers as the config says they are: `(name, address)`.
fn expected_ns(cfg: &Config) -> Vec<(String, Ipv4Addr)> {
    let Some(d) = &cfg.dns else { return Vec::new() };
    if d.nameservers.is_empty() {
        vec![(
            format!("{}.{}", d.gateway_name, d.zone),
            cfg.gateway.public_ipv4,
        )]
    } else {
        d.nameservers
            .iter()
            .map(|(label, ip)| (format!("{label}.{}", d.zone), *ip))
            .collect()
    }
}

pub fn check_nameservers(cfg: &Config, probe: &dyn Probe) -> Vec<Finding> {
    let Some(d) = &cfg.dns else { return Vec::new() };
    if d.nameservers.is_empty() {
        return Vec::new();
    }
    let port = dns_server(cfg).map_or(53, |s| s.port());
    let answers: Vec<(String, Result<u32, String>)> = expected_ns(cfg)
        .into_iter()
        .map(|(name, ip)| {
            let server = SocketAddr::V4(SocketAddrV4::new(ip, port));
            (
                format!("{name} ({server})"),
                probe.soa_serial(server, &d.zone),
            )
        })
        .collect();
    let serials: BTreeSet<u32> = answers
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().copied())
        .collect();
    let newest = serials.iter().max().copied();
    answers
        .into_iter()
        .map(|(subject, r)| match r {
            Err(e) => finding(
                "nameservers",
                Status::Fail,
                subject,
                format!("no SOA: {e}"),
                "start srvgate on that gateway, or drop it from [dns.nameservers]",
            ),
            Ok(s) if serials.len() > 1 && Some(s) != newest => finding(
                "nameservers",
                Status::Fail,
                subject,
                format!(
                    "serial {s}, others have {}: its table differs",
                    newest.unwrap_or(s)
                ),
                "systemctl restart srvgate on that gateway  # [cluster] keeps their tables equal",
            ),
            Ok(s) => finding(
                "nameservers",
                Status::Ok,
                subject,
                format!("serial {s}"),
                "",
            ),
        })
        .collect()
}

pub fn check_delegation(cfg: &Config, probe: &dyn Probe, parent: SocketAddr) -> Vec<Finding> {
    let Some(d) = &cfg.dns else {
        return vec![finding(
            "delegation",
            Status::Warn,
            d_zone(cfg),
            "no [dns] in the config",
            "",
        )];
    };
    let subject = format!("{} at {parent}", d.zone);
    let got = match probe.delegation(parent, &d.zone) {
        Ok(g) => g,
        Err(e) => {
            return vec![finding(
                "delegation",
                Status::Fail,
                subject,
                e,
                "ask the parent zone's admins to delegate the zone (NS + glue)",
            )]
        }
    };
    let want = expected_ns(cfg);
    let want_ns: BTreeSet<String> = want.iter().map(|(n, _)| n.clone()).collect();
    let mut out = Vec::new();
    if got.ns != want_ns {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(" ");
        out.push(finding(
            "delegation",
            Status::Fail,
            subject.clone(),
            format!(
                "the parent says NS {}; the config says {}",
                list(&got.ns),
                list(&want_ns)
            ),
            format!(
                "ask the parent's admins for: {}",
                want.iter()
                    .map(|(n, _)| format!("{} NS {n}.", d.zone))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    for (name, ip) in &want {
        let glue: Vec<Ipv4Addr> = got
            .glue
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .collect();
        // Glue is needed only for names inside the zone, which ours all are.
        if glue != [*ip] {
            out.push(finding(
                "delegation",
                Status::Fail,
                format!("{name} at {parent}"),
                format!("glue {:?}; the config says {ip}", glue),
                format!("ask the parent's admins for: {name}. A {ip}"),
            ));
        }
    }
    if out.is_empty() {
        out.push(finding(
            "delegation",
            Status::Ok,
            subject,
            format!("NS and glue agree ({} servers)", want.len()),
            "",
        ));
    }
    out
}

fn d_zone(cfg: &Config) -> String {
    cfg.dns
        .as_ref()
        .map_or_else(|| "zone".into(), |d| d.zone.clone())
}

pub fn check_ports(cfg: &Config, probe: &dyn Probe) -> Vec<Finding> {
    let r = cfg.gateway.port_range;
    let public = std::net::IpAddr::V4(cfg.gateway.public_ipv4);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for l in probe.listening() {
        let reaches_public = l.addr.is_unspecified() || l.addr == public;
        if !(r.first..=r.last).contains(&l.port) || !reaches_public || !seen.insert((l.udp, l.port))
        {
            continue;
        }
        let proto = if l.udp { "udp" } else { "tcp" };
        out.push(finding(
            "ports",
            Status::Fail,
            format!("{proto} {}", l.port),
            format!("a local service listens on {}:{} inside port_range: XDP hands its packets to a route once the port is claimed", l.addr, l.port),
            format!("ss -lpn 'sport = :{}'  # move that service below {}, or narrow port_range", l.port, r.first),
        ));
    }
    if out.is_empty() {
        out.push(finding(
            "ports",
            Status::Ok,
            format!("port_range {}-{}", r.first, r.last),
            "no local service listens in it",
            "",
        ));
    }
    out
}

/// The probe of this machine (its network namespace).
pub struct System;

impl Probe for System {
    fn sysctl(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{key}")).ok()
    }
    fn xdp_mode(&self, dev: &str) -> Result<Option<XdpMode>, String> {
        let out = Command::new("ip")
            .args(["-j", "-d", "link", "show", "dev", dev])
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("ip -j: {e}"))?;
        // iproute2's XDP_ATTACHED_* numbers: 1 driver, 2 skb, 3 hardware, 4 several.
        Ok(match v[0]["xdp"]["mode"].as_u64() {
            None | Some(0) => None,
            Some(2) => Some(XdpMode::Generic),
            Some(3) => Some(XdpMode::Offload),
            Some(_) => Some(XdpMode::Native),
        })
    }
    fn interfaces(&self) -> Vec<Interface> {
        machine::interfaces().unwrap_or_default()
    }
    fn ruleset(&self) -> Result<Option<String>, String> {
        match Command::new("nft").args(["list", "ruleset"]).output() {
            Ok(o) if o.status.success() => {
                Ok(Some(String::from_utf8_lossy(&o.stdout).into_owned()))
            }
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
    fn listening(&self) -> Vec<Listener> {
        let mut out = Vec::new();
        for (file, udp) in [
            ("tcp", false),
            ("tcp6", false),
            ("udp", true),
            ("udp6", true),
        ] {
            let text = std::fs::read_to_string(format!("/proc/net/{file}")).unwrap_or_default();
            out.extend(parse_proc_net(&text, udp));
        }
        out
    }
    fn soa_serial(&self, server: SocketAddr, zone: &str) -> Result<u32, String> {
        let r = ask(server, zone, RecordType::SOA)?;
        if !r.metadata.authoritative {
            return Err(format!(
                "answer without AA ({:?})",
                r.metadata.response_code
            ));
        }
        r.answers
            .iter()
            .find_map(|rec| match &rec.data {
                RData::SOA(soa) => Some(soa.serial),
                _ => None,
            })
            .ok_or_else(|| format!("no SOA in the answer ({:?})", r.metadata.response_code))
    }
    fn delegation(&self, parent: SocketAddr, zone: &str) -> Result<Delegation, String> {
        let r = ask(parent, zone, RecordType::NS)?;
        let mut d = Delegation::default();
        let trim = |n: &Name| n.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        for rec in r.answers.iter().chain(r.authorities.iter()) {
            if let RData::NS(ns) = &rec.data {
                d.ns.insert(trim(&ns.0));
            }
        }
        for rec in &r.additionals {
            if let RData::A(a) = &rec.data {
                d.glue.insert((trim(&rec.name), a.0));
            }
        }
        if d.ns.is_empty() {
            return Err(format!("no NS for {zone} ({:?})", r.metadata.response_code));
        }
        Ok(d)
    }
    fn etcd(&self, cfg: &Config) -> Result<(), String> {
        let cluster = cfg.cluster.as_ref().ok_or("no [cluster]")?;
        crate::cluster::EtcdStore::connect(cluster)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// One UDP query, non-recursive, three tries of two seconds.
fn ask(server: SocketAddr, zone: &str, rtype: RecordType) -> Result<Message, String> {
    let name = Name::from_ascii(format!("{zone}.")).map_err(|e| format!("{zone}: {e}"))?;
    let mut q = Message::query();
    q.add_query(Query::query(name, rtype));
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let sock = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let mut last = String::from("no answer");
    for _ in 0..3 {
        sock.send(&bytes).map_err(|e| e.to_string())?;
        match sock.recv(&mut buf) {
            Ok(n) => match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == q.metadata.id => return Ok(m),
                Ok(_) => last = "an answer to another query".into(),
                Err(e) => last = format!("undecodable answer: {e}"),
            },
            Err(e) => last = format!("no answer in 2 s ({e})"),
        }
    }
    Err(last)
}

/// Listening TCP sockets and bound UDP sockets of a `/proc/net/{tcp,udp}[6]` table.
fn parse_proc_net(text: &str, udp: bool) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
            continue;
        };
        // TCP_LISTEN is 0A; an unconnected bound UDP socket is 07 (TCP_CLOSE).
        if *state != if udp { "07" } else { "0A" } {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        let addr = match addr.len() {
            8 =>
            // The address's bytes as the kernel holds them, printed as a host-order word.
            {
                u32::from_str_radix(addr, 16)
                    .ok()
                    .map(|a| std::net::IpAddr::V4(Ipv4Addr::from(a.to_ne_bytes())))
            }
            32 => u128::from_str_radix(addr, 16).ok().map(|a| {
                // Four 32-bit words, each in host (little-endian) order.
                let b = a.to_be_bytes();
                let mut o = [0u8; 16];
                for w in 0..4 {
                    for i in 0..4 {
                        o[w * 4 + i] = b[w * 4 + 3 - i];
                    }
                }
                let v6 = std::net::Ipv6Addr::from(o);
                v6.to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
            }),
            _ => None,
        };
        if let Some(addr) = addr {
            out.push(Listener { udp, addr, port });
        }
    }
    out
}

/// The text report: one line per finding, the fix under it.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(s, "{tag} {:<12} {}: {}", f.check, f.subject, f.detail);
        if !f.fix.is_empty() {
            let _ = writeln!(s, "     fix: {}", f.fix);
        }
    }
    let count = |st| findings.iter().filter(|f| f.status == st).count();
    let _ = writeln!(
        s,
        "{} failed, {} warnings, {} ok",
        count(Status::Fail),
        count(Status::Warn),
        count(Status::Ok)
    );
    s
}

pub fn doctor(args: DoctorArgs) -> Result<(), Failure> {
    let cfg = Config::load(&args.config).map_err(Failure::input)?;
    let parent = match &args.parent {
        None => None,
        Some(p) => Some(
            p.parse::<SocketAddr>()
                .or_else(|_| p.parse::<Ipv4Addr>().map(|ip| SocketAddr::from((ip, 53))))
                .map_err(|_| {
                    Failure::input(anyhow!("--parent {p:?}: not an address or address:port"))
                })?,
        ),
    };
    let findings = run_checks(&cfg, &System, parent);
    if args.json {
        crate::cli::print_json(&findings);
    } else {
        print!("{}", render(&findings));
    }
    if findings.iter().any(|f| f.status == Status::Fail) {
        let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
        return Err(Failure::runtime(anyhow!("{failed} checks failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
