//! Route changes: how fast runtime routes are added over the control socket, live (maps,
//! DNS) and durable (journal flushed) before each reply, with a small table and with a
//! full one. The peer here is srvgate itself with an empty table: the claim measured is
//! that an add costs the same whatever the table holds.
//!
//! The daemon runs in the gateway namespace with its state directory on the lab's disk;
//! [`CLIENTS`] threads of this process each send one `POST /v1/routes` per connection (as
//! `srvgate route add` does, minus the process start) and time it from connect to the last
//! byte of the reply.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use srvgate_tests::{PRIVATE_IFS, PUBLIC_IF, PUBLIC_IP};

use super::{stats::Metric, stats::Results, Bench};

/// Concurrent clients, as in the target (a semester's first hour: many students at once).
pub const CLIENTS: usize = 8;
/// The public ports handed out: room for the full table plus the measured adds.
const FIRST_PORT: u16 = 10_000;
const LAST_PORT: u16 = 44_999;
/// Kept clear of the port range (and of the kernel's default, which overlaps it), so the
/// daemon's own outgoing connections never collide with a route.
const EPHEMERAL: &str = "50000 60999";
const DNS_PORT: u16 = 5302;
/// Bound on one add, far above any healthy figure: a stuck daemon fails the run.
const ADD_TIMEOUT: Duration = Duration::from_secs(10);

/// Table sizes measured at: empty, and full (`plan` decides how full).
pub fn sizes(smoke: bool) -> [usize; 2] {
    [0, if smoke { 3_000 } else { 30_000 }]
}

/// Adds measured at each size: with the full table, they must still fit in the maps
/// (`lb_common::MAX_ROUTES`, 32 768).
fn measured_adds(smoke: bool) -> usize {
    if smoke {
        400
    } else {
        2_000
    }
}

/// Percentiles of one `key=<µs>` field over the daemon's `route added` log lines: where an
/// add's time goes inside the daemon (live: maps and DNS; written: plus the journal line).
fn daemon_side(log: &str, key: &str) -> Option<(f64, f64)> {
    let needle = format!("{key}=");
    let mut v: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("route added"))
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1e3;
    Some((at(0.5), at(0.99)))
}

pub fn row(size: usize) -> String {
    format!("{size} routes")
}

/// The peer: one 200-byte append plus `fdatasync` at a time, on the state directory's disk,
/// which is what each add would cost without group commit, and the floor under any store
/// that makes each change durable before answering.
pub const DISK_ROW: &str = "one append + fdatasync";
const DISK_SAMPLES: usize = 300;

/// Times [`DISK_SAMPLES`] appends, each flushed before the next; returns (flushes per
/// second, every latency).
fn disk_floor(dir: &Path) -> Result<(f64, Vec<Duration>)> {
    let path = dir.join("fdatasync-probe");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let line = [b'x'; 200];
    let started = Instant::now();
    let mut lat = Vec::with_capacity(DISK_SAMPLES);
    for _ in 0..DISK_SAMPLES {
        let t = Instant::now();
        f.write_all(&line)?;
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    let rate = DISK_SAMPLES as f64 / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((rate, lat))
}

fn config() -> String {
    format!(
        "[gateway]\npublic_interface = \"{PUBLIC_IF}\"\nprivate_interfaces = [\"{}\", \"{}\"]\n\
         public_ipv4 = \"{PUBLIC_IP}\"\nport_range = \"{FIRST_PORT}-{LAST_PORT}\"\n\n\
         [dns]\nzone = \"lab.example\"\nlisten = [\"127.0.0.1:{DNS_PORT}\"]\ngateway_name = \"gw\"\nttl = 30\n",
        PRIVATE_IFS[0], PRIVATE_IFS[1]
    )
}

/// The i-th route's backend: distinct for every i below 127 * 250 * 8, inside the lab's
/// 10.210.0.0/16 (no packet is ever sent to it).
fn backend(i: usize) -> String {
    format!(
        "10.210.{}.{}:{}",
        128 + (i / 250) % 127,
        i % 250 + 1,
        22 + i / (127 * 250)
    )
}

/// One add over the control socket; returns its latency.
fn add(socket: &Path, i: usize) -> Result<Duration> {
    let body = format!(
        "{{\"name\":\"b{i}\",\"service\":\"ssh\",\"protocol\":\"tcp\",\"backend\":\"{}\"}}",
        backend(i)
    );
    let request = format!(
        "POST /v1/routes HTTP/1.1\r\nHost: srvgate\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(ADD_TIMEOUT))?;
    s.set_write_timeout(Some(ADD_TIMEOUT))?;
    s.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let took = started.elapsed();
    if !reply.starts_with(b"HTTP/1.1 201") {
        bail!(
            "route b{i}: the daemon answered {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(300)])
        );
    }
    Ok(took)
}

/// Adds routes `from..to` with [`CLIENTS`] threads; returns (adds per second, every
/// latency).
fn burst(socket: &Path, from: usize, to: usize) -> Result<(f64, Vec<Duration>)> {
    let started = Instant::now();
    let per = (to - from).div_ceil(CLIENTS);
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let socket = socket.to_path_buf();
            let (a, b) = (from + c * per, (from + (c + 1) * per).min(to));
            thread::spawn(move || (a..b).map(|i| add(&socket, i)).collect::<Result<Vec<_>>>())
        })
        .collect();
    let mut all = Vec::with_capacity(to - from);
    for w in workers {
        all.extend(
            w.join()
                .map_err(|_| anyhow!("a client thread panicked"))??,
        );
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(((to - from) as f64 / secs, all))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// Starts a daemon with an empty table, measures a burst of adds, fills the table, measures
/// again, stops the daemon and forgets its routes (the lab's state directory is shared with
/// the data-plane modes).
pub fn measure(b: &mut Bench, results: &mut Results) -> Result<()> {
    let lab = b.lab;
    let smoke = b.plan.name == "smoke";
    let argv = [
        "sysctl",
        "-w",
        &format!("net.ipv4.ip_local_port_range={EPHEMERAL}"),
    ];
    b.run(&lab.gw, &argv, Duration::from_secs(10))?;
    let (rate, mut lat) = disk_floor(lab.dir())?;
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    println!("   the disk: {rate:.0} flushes/s one at a time, p50 {p50:.2} ms, p99 {p99:.2} ms");
    results.add(DISK_ROW, Metric::AddsPerSec, rate);
    results.add(DISK_ROW, Metric::AddP50Ms, p50);
    results.add(DISK_ROW, Metric::AddP99Ms, p99);
    let cfg = lab.write_file("srvgate-control.toml", &config())?;
    let extra: Vec<&str> = b.srvgate_extra_args.iter().map(String::as_str).collect();
    lab.start_srvgate(&cfg, &extra)?;
    let cfg_s = cfg.display().to_string();
    b.note_command(&lab.gw, &["srvgate", "run", "--config", &cfg_s]);
    let socket = lab.socket_path();
    let outcome = (|| -> Result<()> {
        let n = measured_adds(smoke);
        let mut next = 0;
        for size in sizes(smoke) {
            if next < size {
                let t = Instant::now();
                let (rate, _) = burst(&socket, next, size)?;
                println!(
                    "   filled the table to {size} routes in {:.1} s ({rate:.0} adds/s)",
                    t.elapsed().as_secs_f64()
                );
                next = size;
            }
            let (rate, mut lat) = burst(&socket, next, next + n)?;
            next += n;
            lat.sort();
            let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
            println!(
                "   at {size} routes: {rate:.0} adds/s from {CLIENTS} clients, p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
                percentile(&lat, 1.0)
            );
            let row = row(size);
            results.add(&row, Metric::AddsPerSec, rate);
            results.add(&row, Metric::AddP50Ms, p50);
            results.add(&row, Metric::AddP99Ms, p99);
        }
        let log = lab.srvgate_log();
        for key in ["live_us", "written_us"] {
            if let Some((p50, p99)) = daemon_side(&log, key) {
                println!(
                    "   inside the daemon, {key}: p50 {p50:.3} ms, p99 {p99:.3} ms (all adds)"
                );
            }
        }
        // Every add that was answered is in the table.
        let listed = lab.srvgate_ctl_ok(&["route", "ls", "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&listed).context("route ls --json is not JSON")?;
        let count = v["routes"].as_array().map_or(0, Vec::len);
        ensure!(
            count == next,
            "route ls lists {count} routes after {next} adds"
        );
        Ok(())
    })();
    let stopped = lab.stop_srvgate();
    let _ = std::fs::remove_dir_all(lab.state_dir());
    outcome?;
    let status = stopped?;
    ensure!(
        status.success(),
        "srvgate (route adds) exited with {status}"
    );
    Ok(())
}
