//! DNS: dnsperf against srvgate's zone of 10 000 routes and against Knot DNS serving the same
//! records from a zone file, on the gateway namespace's loopback. Each server is pinned to
//! CPU 0 and dnsperf to CPU 1. Queries/s at saturation; latency (average, p99 from every
//! query's own latency, `dnsperf -v`) at a fixed rate well below either server's limit.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{ensure, Context as _, Result};
use srvgate_tests::{PRIVATE_IFS, PUBLIC_IF, PUBLIC_IP};

use super::{parse, stats::Metric, stats::Results, Bench};

pub const ROUTES: usize = 10_000;
const ZONE: &str = "lab.example";
const KNOT_PORT: u16 = 5300;
const SRVGATE_PORT: u16 = 5301;
const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";

pub struct Dns {
    knot: u32,
    queries: PathBuf,
    srvgate_config: PathBuf,
}

/// The i-th route: name `uNNNNN`, service `ssh`, tcp, public port 20000 + i.
fn route_name(i: usize) -> String {
    format!("u{i:05}")
}

/// srvgate's config: the lab's gateway, the zone on 127.0.0.1:5301, 10 000 routes. Rate
/// limiting off: the load generator is one client, which it would hold to 200 answers/s.
pub fn srvgate_config() -> String {
    let mut s = format!(
        "[gateway]\npublic_interface = \"{PUBLIC_IF}\"\nprivate_interfaces = [\"{}\", \"{}\"]\n\
         public_ipv4 = \"{PUBLIC_IP}\"\nport_range = \"20000-{}\"\n\n\
         [dns]\nzone = \"{ZONE}\"\nlisten = [\"127.0.0.1:{SRVGATE_PORT}\"]\ngateway_name = \"gw\"\nttl = 30\n\n\
         [dns.rrl]\nenabled = false\n",
        PRIVATE_IFS[0],
        PRIVATE_IFS[1],
        20_000 + ROUTES - 1
    );
    for i in 0..ROUTES {
        let _ = write!(
            s,
            "\n[[route]]\nname = \"{}\"\nservice = \"ssh\"\nprotocol = \"tcp\"\n\
             backend = \"10.211.{}.{}:22\"\nport = {}\n",
            route_name(i),
            i / 250,
            i % 250 + 1,
            20_000 + i
        );
    }
    s
}

/// The same records as srvgate's zone (see lb-userspace's dns/zone.rs): SOA and NS at the
/// apex, `gw` A, and per route `_ssh._tcp.NAME` SRV, `NAME.ssh` SRV and A.
pub fn knot_zone() -> String {
    let mut s = format!(
        "$ORIGIN {ZONE}.\n$TTL 30\n\
         @ SOA gw.{ZONE}. hostmaster.{ZONE}. 1 3600 600 1209600 30\n\
         @ NS gw.{ZONE}.\ngw A {PUBLIC_IP}\n"
    );
    for i in 0..ROUTES {
        let n = route_name(i);
        let port = 20_000 + i;
        let _ = writeln!(s, "_ssh._tcp.{n} SRV 0 0 {port} gw.{ZONE}.");
        let _ = writeln!(s, "{n}.ssh SRV 0 0 {port} gw.{ZONE}.");
        let _ = writeln!(s, "{n}.ssh A {PUBLIC_IP}");
    }
    s
}

/// 20 000 queries, a fixed pseudo-random mix: 40 % `_ssh._tcp.NAME SRV`, 20 % `NAME.ssh
/// SRV`, 20 % `NAME.ssh A` (all existing), 20 % names that do not exist (NXDOMAIN).
pub fn query_file() -> String {
    let mut s = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x >> 8) as usize % ROUTES;
        let n = route_name(i);
        let _ = match x % 10 {
            0..=3 => writeln!(s, "_ssh._tcp.{n}.{ZONE} SRV"),
            4 | 5 => writeln!(s, "{n}.ssh.{ZONE} SRV"),
            6 | 7 => writeln!(s, "{n}.ssh.{ZONE} A"),
            8 => writeln!(s, "nx{i:05}.ssh.{ZONE} A"),
            _ => writeln!(s, "_ssh._tcp.nx{i:05}.{ZONE} SRV"),
        };
    }
    s
}

fn knot_conf(dir: &str) -> String {
    format!(
        "server:\n    listen: 127.0.0.1@{KNOT_PORT}\n    rundir: {dir}/knot\n    \
         udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
         log:\n  - target: stderr\n    any: warning\n\
         database:\n    storage: {dir}/knot\n\
         template:\n  - id: default\n    storage: {dir}/knot\n    semantic-checks: off\n    \
         journal-content: none\n    zonefile-sync: -1\n\
         zone:\n  - domain: {ZONE}\n    file: {dir}/knot/{ZONE}.zone\n"
    )
}

/// Writes the zone, Knot's config and the query file, starts Knot (it stays up, idle
/// between DNS measurements) and checks that it answers.
pub fn prepare(b: &mut Bench) -> Result<Dns> {
    let lab = b.lab;
    let dir = lab.dir().display().to_string();
    std::fs::create_dir_all(format!("{dir}/knot")).context("creating the knot directory")?;
    lab.write_file(&format!("knot/{ZONE}.zone"), &knot_zone())?;
    let conf = lab.write_file("knot/knot.conf", &knot_conf(&dir))?;
    let queries = lab.write_file("queries.txt", &query_file())?;
    let srvgate_config = lab.write_file("srvgate-dns.toml", &srvgate_config())?;
    let conf = conf.display().to_string();
    let argv = ["taskset", "-c", SERVER_CPU, "knotd", "-c", &conf];
    let knot = lab.spawn(&lab.gw, &argv)?;
    b.note_command(&lab.gw, &argv);
    lab.wait_listening(&lab.gw, knot, KNOT_PORT, Duration::from_secs(20))
        .context("knotd")?;
    check_answers(b, KNOT_PORT)?;
    Ok(Dns {
        knot,
        queries,
        srvgate_config,
    })
}

/// Both servers must give the same answer to the same question; a spot check.
fn check_answers(b: &Bench, port: u16) -> Result<String> {
    let lab = b.lab;
    let p = port.to_string();
    let out = lab.exec_ok(
        &lab.gw,
        &[
            "kdig",
            "@127.0.0.1",
            "-p",
            &p,
            "+short",
            &format!("_ssh._tcp.{}.{ZONE}", route_name(4242)),
            "SRV",
        ],
    )?;
    ensure!(
        out.trim() == format!("0 0 {} gw.{ZONE}.", 20_000 + 4242),
        "the server on port {port} answered {out:?} for route 4242's SRV record"
    );
    Ok(out)
}

pub fn measure(b: &mut Bench, dns: &Dns, round: usize, results: &mut Results) -> Result<()> {
    let lab = b.lab;
    ensure!(lab.is_running(dns.knot), "knotd is no longer running");
    let order: [&str; 2] = if round.is_multiple_of(2) {
        ["srvgate", "knot"]
    } else {
        ["knot", "srvgate"]
    };
    for server in order {
        if server == "knot" {
            run_server(b, dns, "knot", KNOT_PORT, results)?;
            continue;
        }
        let extra: Vec<&str> = b.srvgate_extra_args.iter().map(String::as_str).collect();
        let pid = lab.start_srvgate(&dns.srvgate_config, &extra)?;
        let cfg = dns.srvgate_config.display().to_string();
        b.note_command(&lab.gw, &["srvgate", "run", "--config", &cfg]);
        let pinned = lab.exec_ok(
            &lab.gw,
            &["taskset", "-a", "-p", "-c", SERVER_CPU, &pid.to_string()],
        );
        b.note_command(
            &lab.gw,
            &["taskset", "-a", "-p", "-c", SERVER_CPU, "SRVGATE_PID"],
        );
        let outcome = pinned
            .and_then(|_| check_answers(b, SRVGATE_PORT))
            .and_then(|_| run_server(b, dns, "srvgate", SRVGATE_PORT, results));
        let stopped = lab.stop_srvgate();
        outcome?;
        let status = stopped?;
        ensure!(status.success(), "srvgate (DNS) exited with {status}");
    }
    Ok(())
}

fn run_server(b: &mut Bench, dns: &Dns, row: &str, port: u16, results: &mut Results) -> Result<()> {
    let protos: &[&str] = if b.plan.dns_tcp {
        &["udp", "tcp"]
    } else {
        &["udp"]
    };
    for &proto in protos {
        let (qps_m, avg_m, p99_m) = if proto == "udp" {
            (Metric::DnsUdpQps, Metric::DnsUdpAvgUs, Metric::DnsUdpP99Us)
        } else {
            (Metric::DnsTcpQps, Metric::DnsTcpAvgUs, Metric::DnsTcpP99Us)
        };
        let d = dnsperf(b, dns, port, proto, None)?;
        ensure!(d.completed > 0.0, "{row} answered no {proto} query:\n{d:?}");
        results.add(row, qps_m, d.qps);
        // Latency at a fixed, moderate rate: every query's own latency, for the p99.
        let rate = if b.plan.name == "smoke" {
            2_000
        } else {
            10_000
        };
        let out = dnsperf_raw(b, dns, port, proto, Some(rate))?;
        let (lat, bad) = parse::dnsperf_latencies(&out);
        ensure!(
            !lat.is_empty(),
            "dnsperf -v printed no per-query latency for {row}"
        );
        ensure!(
            bad == 0,
            "{row} gave {bad} answers other than NOERROR/NXDOMAIN over {proto}"
        );
        let avg = lat.iter().sum::<f64>() / lat.len() as f64;
        let p99 = parse::quantile(&lat, 0.99);
        results.add(row, avg_m, avg);
        results.add(row, p99_m, p99);
        println!(
            "   {row} {proto}: {:.0} queries/s ({} lost); at {rate}/s: avg {avg:.0} µs, p99 {p99:.0} µs",
            d.qps, d.lost
        );
    }
    Ok(())
}

fn dnsperf_argv(b: &Bench, dns: &Dns, port: u16, proto: &str, rate: Option<u32>) -> Vec<String> {
    let secs = if rate.is_some() {
        b.plan.latency_secs
    } else {
        b.plan.secs
    };
    let mut v: Vec<String> = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-m",
        proto,
        "-d",
        &dns.queries.display().to_string(),
        "-l",
        &secs.to_string(),
        "-c",
        "8",
        "-q",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(r) = rate {
        v.extend(["-Q".to_string(), r.to_string(), "-v".to_string()]);
    }
    v
}

fn dnsperf_raw(
    b: &mut Bench,
    dns: &Dns,
    port: u16,
    proto: &str,
    rate: Option<u32>,
) -> Result<String> {
    let lab = b.lab;
    let argv = dnsperf_argv(b, dns, port, proto, rate);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let timeout = Duration::from_secs(u64::from(b.plan.secs.max(b.plan.latency_secs)) + 20);
    b.run(&lab.gw, &argv, timeout)
}

fn dnsperf(
    b: &mut Bench,
    dns: &Dns,
    port: u16,
    proto: &str,
    rate: Option<u32>,
) -> Result<parse::Dnsperf> {
    parse::dnsperf(&dnsperf_raw(b, dns, port, proto, rate)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_and_config_agree() {
        let zone = knot_zone();
        assert!(zone.contains("_ssh._tcp.u09999 SRV 0 0 29999 gw.lab.example."));
        assert!(zone.contains("u00000.ssh A 10.210.1.1"));
        assert_eq!(zone.lines().count(), 5 + 3 * ROUTES);
        let cfg = srvgate_config();
        assert_eq!(cfg.matches("[[route]]").count(), ROUTES);
        assert!(cfg.contains("port_range = \"20000-29999\""));
        assert!(cfg.contains("backend = \"10.211.39.250:22\""));
    }

    #[test]
    fn query_mix() {
        let q = query_file();
        let n = q.lines().count();
        assert_eq!(n, 20_000);
        let nx = q
            .lines()
            .filter(|l| l.contains(".nx") || l.starts_with("nx"))
            .count();
        let share = nx as f64 / n as f64;
        assert!((0.15..0.25).contains(&share), "{share}");
    }
}
