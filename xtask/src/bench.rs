//! `cargo xtask bench`: srvgate side by side with its peers, in one run, on one topology.
//!
//! One network-namespace lab (`sg-bench-*`, the tests' [`Lab`]: client, gateway, two
//! backends; the endpoints' veths set like remote hosts, tx checksum offload off and GRO on)
//! and, round after round, each gateway MODE in turn (the order rotates every round):
//!
//! - `route`: no NAT, the client talks to the backend's own address through the gateway's
//!   kernel router: the kernel's ceiling;
//! - `dnat`: an nftables DNAT rule on the gateway (what most admins would write);
//! - `haproxy`: haproxy in TCP mode on the gateway (the userspace choice; no UDP);
//! - `srvgate`: the release `srvgate run` with XDP attached in native mode;
//! - `xdp-ceiling`: lb-ebpf's `xdp-ceiling` program (fib lookup, MACs, TTL, redirect; no NAT)
//!   on every gateway leg, addressed like `route`: the limit of this path on this machine;
//! - `srvgate-pool`, `nftables-pool`, `haproxy-pool`: every service spread over a pool of 16
//!   backends (16 addresses of backend 1): srvgate's Maglev in XDP, nftables DNAT with
//!   `numgen inc mod 16`, haproxy `balance roundrobin`; each must reach all 16 members
//!   (`modes::Active::check_spread`). With them, the pool path's own cost by test run beside
//!   the one-backend path's, and the balance, weights and disruption the real bytecode gives
//!   (lb-userspace's pools test, run once).
//!
//! Per mode: 64-byte UDP forwarding rate and gateway CPU per packet ([`pps`]), iperf3 TCP
//! with 1 and 4 streams, short connections per second (wrk, `Connection: close`, nginx), and
//! TCP request/response latency (sockperf ping-pong). Then DNS: dnsperf against srvgate's
//! zone of 10 000 routes and against Knot DNS serving the same zone ([`dns`]). Then route
//! adds over the control socket from 8 clients, with an empty and with a full table
//! ([`control`]).
//!
//! Output: `bench/results/<date>.md` with medians and min-max, ratios to `dnat` and to
//! `xdp-ceiling`, the targets, machine facts and the exact commands, and a chart
//! (`<date>.svg`, rendered to `<date>.png` by rsvg-convert). `--smoke` (one short round,
//! results in a temp dir) checks that every mode forwarded traffic: `cargo xtask test` runs it.

mod baseline;
mod control;
mod cost;
mod dns;
mod modes;
mod parse;
mod pps;
mod report;
mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use srvgate_tests::{self as lab, Lab};

use crate::cmd;
pub use modes::Mode;
use stats::{Metric, Results};

/// How long each measurement runs, and how many rounds.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub name: &'static str,
    pub rounds: usize,
    /// Seconds per throughput measurement (pps, iperf3, wrk, dnsperf queries/s).
    pub secs: u32,
    /// Seconds of each latency measurement (sockperf, dnsperf at a fixed rate).
    pub latency_secs: u32,
    /// iperf3 `-O`: seconds omitted at the start of each TCP test (slow start).
    pub omit_secs: u32,
    /// Whether DNS is also measured over TCP.
    pub dns_tcp: bool,
}

impl Plan {
    pub const FULL: Plan = Plan {
        name: "full",
        rounds: 3,
        secs: 8,
        latency_secs: 5,
        omit_secs: 1,
        dns_tcp: true,
    };
    pub const QUICK: Plan = Plan {
        name: "quick",
        rounds: 1,
        secs: 3,
        latency_secs: 2,
        omit_secs: 1,
        dns_tcp: true,
    };
    pub const SMOKE: Plan = Plan {
        name: "smoke",
        rounds: 1,
        secs: 1,
        latency_secs: 1,
        omit_secs: 0,
        dns_tcp: false,
    };
}

pub struct Options {
    pub plan: Plan,
    pub rounds: Option<usize>,
    pub modes: Vec<Mode>,
    pub skip_dns: bool,
    pub skip_control: bool,
    pub out_dir: Option<PathBuf>,
    /// A git revision to build and measure as mode `baseline` in the same rounds.
    pub baseline: Option<String>,
}

/// Everything the measurements need from the build and the lab.
pub struct Bench<'a> {
    pub lab: &'a Lab,
    pub plan: Plan,
    pub xdp_ceiling: PathBuf,
    /// The working tree's release build.
    pub srvgate: PathBuf,
    /// The baseline revision's release build, with `--baseline`.
    pub baseline: Option<PathBuf>,
    pub srvgate_extra_args: Vec<String>,
    /// The exact command lines run, once each (placeholders filled), for the report.
    pub commands: Vec<String>,
}

impl Bench<'_> {
    /// Records a representative command line for the report (first occurrence only).
    pub fn note_command(&mut self, ns: &str, argv: &[&str]) {
        let line = format!("ip netns exec {ns} {}", shell_join(argv));
        if !self.commands.contains(&line) {
            self.commands.push(line);
        }
    }

    /// Runs `argv` in `ns` (bounded), requiring success; recorded for the report.
    pub fn run(&mut self, ns: &str, argv: &[&str], timeout: Duration) -> Result<String> {
        self.note_command(ns, argv);
        let out = self.lab.exec(ns, argv, timeout)?;
        lab::expect_success(&format!("[{ns}] {}", argv.join(" ")), &out)
    }

    /// Like [`Bench::run`], returning stdout and stderr together (for tools that print their
    /// results on either).
    pub fn run_all(&mut self, ns: &str, argv: &[&str], timeout: Duration) -> Result<String> {
        self.note_command(ns, argv);
        let out = self.lab.exec(ns, argv, timeout)?;
        let mut text = lab::expect_success(&format!("[{ns}] {}", argv.join(" ")), &out)?;
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    }
}

pub fn shell_join(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| crate::cmd::shell_word(a))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(opts: Options, root: &Path) -> Result<()> {
    let started = Instant::now();
    ensure!(
        lab::is_root(),
        "the benchmark builds network namespaces and attaches XDP: run it as root"
    );
    let (srvgate, xdp_ceiling) = build(root)?;
    // The lab starts `$SRVGATE_BIN`; nothing else runs yet, so setting it is sound.
    std::env::set_var("SRVGATE_BIN", &srvgate);
    let mut modes = opts.modes.clone();
    let baseline = match &opts.baseline {
        Some(rev) => {
            let b = baseline::prepare(root, rev)?;
            if !modes.contains(&Mode::Baseline) {
                modes.push(Mode::Baseline);
            }
            Some(b)
        }
        None => {
            ensure!(
                !modes.contains(&Mode::Baseline),
                "mode baseline needs --baseline REV (the revision to compare with)"
            );
            None
        }
    };

    let mut plan = opts.plan;
    if let Some(r) = opts.rounds {
        plan.rounds = r.max(1);
    }
    let mut facts = report::Facts::collect(root, &srvgate)?;
    facts.baseline = baseline.as_ref().map(baseline::Baseline::describe);
    println!(
        "bench: {} plan, {} round(s); {}",
        plan.name,
        plan.rounds,
        facts.one_line()
    );

    let help = lab::run_with_timeout(
        Command::new(&srvgate).args(["run", "--help"]),
        Duration::from_secs(10),
    )?;
    let mut srvgate_extra_args = Vec::new();
    let baseline_knows = |flag: &str| baseline.as_ref().is_none_or(|b| b.run_help.contains(flag));
    if String::from_utf8_lossy(&help.stdout).contains("--detach-on-exit")
        && baseline_knows("--detach-on-exit")
    {
        srvgate_extra_args.push("--detach-on-exit".to_string());
    }

    let tag = if plan.name == "smoke" {
        "bsmoke"
    } else {
        "bench"
    };
    let lab = Lab::new(tag)?;
    let mut bench = Bench {
        lab: &lab,
        plan,
        xdp_ceiling,
        srvgate: srvgate.clone(),
        baseline: baseline.as_ref().map(|b| b.srvgate.clone()),
        srvgate_extra_args,
        commands: Vec::new(),
    };
    let mut results = Results::default();
    modes::start_backends(&mut bench)?;
    let knot = if opts.skip_dns {
        None
    } else {
        Some(dns::prepare(&mut bench)?)
    };

    for round in 0..plan.rounds {
        let n = modes.len();
        for i in 0..n {
            // Rotate the order each round so that no mode always runs first or last.
            let mode = modes[(i + round) % n];
            println!("\n== round {}/{}: {mode}", round + 1, plan.rounds);
            let t = Instant::now();
            measure_mode(&mut bench, mode, &mut results)
                .with_context(|| format!("round {}, mode {mode}", round + 1))?;
            println!("   ({mode}: {:.1} s)", t.elapsed().as_secs_f64());
        }
        let xdp_rows: Vec<&str> = modes
            .iter()
            .map(|m| m.name())
            .filter(|m| ["srvgate", "xdp-ceiling", "baseline", "srvgate-pool"].contains(m))
            .collect();
        if !xdp_rows.is_empty() {
            println!(
                "\n== round {}/{}: XDP programs by test run",
                round + 1,
                plan.rounds
            );
            cost::measure(root, &xdp_rows, baseline.is_some(), &mut results)
                .with_context(|| format!("round {}, program cost", round + 1))?;
            if let Some(b) = &baseline {
                cost::measure_baseline(b, &mut results)
                    .with_context(|| format!("round {}, the baseline's program cost", round + 1))?;
            }
        }
        if round == 0 && modes.iter().any(|m| m.is_pool()) {
            println!("\n== pool shape on the bytecode");
            cost::measure_pool_shape(root, &mut results).context("the pool's shape")?;
        }
        if let Some(knot) = &knot {
            println!("\n== round {}/{}: DNS", round + 1, plan.rounds);
            dns::measure(&mut bench, knot, round, &mut results)
                .with_context(|| format!("round {}, DNS", round + 1))?;
        }
    }
    if !opts.skip_control {
        // Once: filling the table is most of its time, and its figures vary little.
        println!("\n== route adds");
        control::measure(&mut bench, &mut results).context("route adds")?;
    }

    let smoke = plan.name == "smoke";
    let out_dir = match &opts.out_dir {
        Some(d) => d.clone(),
        None if smoke => {
            std::env::temp_dir().join(format!("srvgate-bench-smoke-{}", std::process::id()))
        }
        None => root.join("bench").join("results"),
    };
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stem = match plan.name {
        "full" => facts.date.clone(),
        other => format!("{}-{other}", facts.date),
    };
    let report = report::Report {
        facts: &facts,
        plan: &plan,
        modes: &modes,
        results: &results,
        commands: &bench.commands,
        dns: knot.is_some(),
        control: !opts.skip_control,
        chart_png: format!("{stem}.png"),
        elapsed: started.elapsed(),
    };
    let md = out_dir.join(format!("{stem}.md"));
    fs::write(&md, report.markdown()).with_context(|| format!("writing {}", md.display()))?;
    let svg = out_dir.join(format!("{stem}.svg"));
    fs::write(&svg, report.chart_svg()).with_context(|| format!("writing {}", svg.display()))?;
    let png = out_dir.join(&report.chart_png);
    cmd::run(
        Command::new("rsvg-convert")
            .args(["--background-color", "white", "-o"])
            .arg(&png)
            .arg(&svg),
    )?;
    drop(lab);
    println!("\n{}", report.summary_table());
    println!(
        "bench: wrote {}, {} and {} in {:.0} s",
        md.display(),
        svg.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
    if smoke {
        let empty = report.empty_cells();
        if !empty.is_empty() {
            bail!(
                "the smoke run left cells without a measurement (mode/metric): {}\nreport: {}",
                empty.join(", "),
                md.display()
            );
        }
        println!("bench smoke: every mode forwarded traffic and every cell has a value");
        let _ = fs::remove_dir_all(&out_dir);
    }
    Ok(())
}

/// One mode: configure the gateway, run every measurement, undo the configuration.
fn measure_mode(b: &mut Bench, mode: Mode, results: &mut Results) -> Result<()> {
    let active = modes::Active::start(b, mode)?;
    let row = mode.name();
    let outcome = (|| -> Result<()> {
        match active.udp_target() {
            Some(target) => {
                let r = pps::measure(b, &active, target)?;
                println!(
                    "   pps: {:.0} kpps delivered, gateway {:.0} ns/packet ({:.0}% of a core)",
                    r.pps / 1e3,
                    r.gw_ns_per_packet,
                    r.gw_core_share * 100.0
                );
                ensure!(r.pps > 0.0, "{mode}: no UDP packet reached the backend");
                results.add(row, Metric::Pps, r.pps / 1e3);
                results.add(row, Metric::GwNsPerPacket, r.gw_ns_per_packet);
                results.add(row, Metric::PpsPerCore, 1e6 / r.gw_ns_per_packet);
                match r.xdp_ns_per_packet {
                    Some(ns) => {
                        println!("   XDP program: {ns:.0} ns/packet (bpf_stats)");
                        results.add(row, Metric::XdpNsPerPacket, ns);
                    }
                    None => {
                        for m in [Metric::XdpNsPerPacket, Metric::XdpTestRunNs] {
                            results.not_applicable(row, m, "n/a: no XDP program");
                        }
                    }
                }
            }
            None => {
                for m in [
                    Metric::Pps,
                    Metric::GwNsPerPacket,
                    Metric::XdpNsPerPacket,
                    Metric::XdpTestRunNs,
                    Metric::PpsPerCore,
                ] {
                    results.not_applicable(row, m, "n/a: haproxy does not forward UDP");
                }
            }
        }
        for streams in [1, 4] {
            let before = active.verdicts(b)?;
            let r = modes::iperf3(b, &active, streams)?;
            println!(
                "   iperf3 -P {streams}: {:.2} Gbit/s, {} retransmits ({} % of segments)",
                r.bits_per_second / 1e9,
                r.retransmits,
                r.retransmit_pct.map_or("?".into(), |p| format!("{p:.3}"))
            );
            let moved: Vec<String> = active
                .verdicts(b)?
                .into_iter()
                .filter_map(|(v, n)| {
                    let d = n - before.get(&v).copied().unwrap_or(0.0);
                    (d > 0.0).then(|| format!("{v} {d:.0}"))
                })
                .collect();
            if !moved.is_empty() {
                println!("   XDP verdicts meanwhile: {}", moved.join(", "));
            }
            ensure!(r.bits_per_second > 0.0, "{mode}: iperf3 moved no data");
            let (g, rt, pct) = if streams == 1 {
                (
                    Metric::Tcp1Gbps,
                    Metric::Tcp1Retransmits,
                    Metric::Tcp1RetransmitPct,
                )
            } else {
                (
                    Metric::Tcp4Gbps,
                    Metric::Tcp4Retransmits,
                    Metric::Tcp4RetransmitPct,
                )
            };
            results.add(row, g, r.bits_per_second / 1e9);
            results.add(row, rt, r.retransmits);
            if let Some(p) = r.retransmit_pct {
                results.add(row, pct, p);
            }
        }
        let w = modes::wrk(b, &active)?;
        println!(
            "   wrk: {:.0} connections/s ({} requests, {} errors)",
            w.requests_per_second, w.requests, w.errors
        );
        ensure!(w.requests > 0.0, "{mode}: wrk completed no request");
        results.add(row, Metric::ConnPerSec, w.requests_per_second);
        let s = modes::sockperf(b, &active)?;
        println!(
            "   sockperf: avg {:.1} µs, p99 {:.1} µs",
            s.avg_us, s.p99_us
        );
        ensure!(s.observations > 0.0, "{mode}: sockperf saw no round trip");
        results.add(row, Metric::RrAvgUs, s.avg_us);
        results.add(row, Metric::RrP99Us, s.p99_us);
        active.check_path(b)
    })();
    let stopped = active.stop(b);
    outcome?;
    stopped
}

/// Builds the release srvgate (whose build script also builds every lb-ebpf binary with
/// aya-build), and finds `xdp-ceiling` in lb-userspace's build-script output directory.
fn build(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let mut c = Command::new("cargo");
    c.current_dir(root)
        .args(["build", "--release", "-p", "lb-userspace"]);
    cmd::run(&mut c)?;
    // A second, no-op build that reports where the build script's output went.
    let mut c = Command::new("cargo");
    c.current_dir(root).args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "--message-format=json",
    ]);
    let out = cmd::stdout(&mut c)?;
    let mut srvgate = None;
    let mut out_dir = None;
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let pkg = v.get("package_id").and_then(|p| p.as_str()).unwrap_or("");
        if !pkg.contains("lb-userspace") {
            continue;
        }
        match v.get("reason").and_then(|r| r.as_str()) {
            Some("build-script-executed") => {
                out_dir = v.get("out_dir").and_then(|d| d.as_str()).map(PathBuf::from);
            }
            Some("compiler-artifact")
                if v.pointer("/target/name").and_then(|n| n.as_str()) == Some("srvgate") =>
            {
                srvgate = v
                    .get("executable")
                    .and_then(|e| e.as_str())
                    .map(PathBuf::from);
            }
            _ => {}
        }
    }
    let srvgate = srvgate.ok_or_else(|| anyhow!("cargo did not report the srvgate binary"))?;
    let out_dir =
        out_dir.ok_or_else(|| anyhow!("cargo did not report lb-userspace's build script"))?;
    let ceiling = out_dir.join("xdp-ceiling");
    ensure!(
        ceiling.is_file(),
        "{} is missing: aya-build should have built lb-ebpf's xdp-ceiling binary",
        ceiling.display()
    );
    Ok((srvgate, ceiling))
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
