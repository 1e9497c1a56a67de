//! The results file: Markdown tables, ratios, targets, machine facts, commands, and a chart.
//!
//! The machine facts it records are gathered in `facts.rs`.

mod facts;

use std::{fmt::Write as _, time::Duration};

use super::{control, cost, dns, modes::Mode, stats::Metric, stats::Results, stats::Summary, Plan};
pub use facts::*;

pub struct Report<'a> {
    pub facts: &'a Facts,
    pub plan: &'a Plan,
    pub modes: &'a [Mode],
    pub results: &'a Results,
    pub commands: &'a [String],
    pub dns: bool,
    /// Whether route adds were measured ([`control`]).
    pub control: bool,
    pub chart_png: String,
    pub elapsed: Duration,
}

/// Columns of the data-plane table (retransmits go next to their throughput).
const TABLE: [Metric; 10] = [
    Metric::Pps,
    Metric::GwNsPerPacket,
    Metric::XdpNsPerPacket,
    Metric::XdpTestRunNs,
    Metric::PpsPerCore,
    Metric::Tcp1Gbps,
    Metric::Tcp4Gbps,
    Metric::ConnPerSec,
    Metric::RrAvgUs,
    Metric::RrP99Us,
];

/// Metrics whose ratios to `dnat` and `xdp-ceiling` are reported.
const RATIOS: [Metric; 6] = [
    Metric::Pps,
    Metric::PpsPerCore,
    Metric::Tcp1Gbps,
    Metric::Tcp4Gbps,
    Metric::ConnPerSec,
    Metric::RrP99Us,
];

fn num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let s = format!("{v:.decimals$}");
    // Thousands separators for big integers make the table readable.
    if decimals == 0 && v.abs() >= 10_000.0 {
        let digits: Vec<char> = s.chars().collect();
        let mut out = String::new();
        for (i, c) in digits.iter().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) && c.is_ascii_digit() {
                out.push(' ');
            }
            out.push(*c);
        }
        return out;
    }
    s
}

fn cell(s: Option<Summary>, decimals: usize) -> String {
    match s {
        None => String::new(),
        Some(s) if s.n == 1 => num(s.median, decimals),
        Some(s) => format!(
            "{} ({}–{})",
            num(s.median, decimals),
            num(s.min, decimals),
            num(s.max, decimals)
        ),
    }
}

/// A Markdown table's header and alignment rows: `first`, then one column per metric.
fn table_head(first: &str, metrics: &[Metric]) -> String {
    let labels: Vec<&str> = metrics.iter().map(|m| m.label()).collect();
    format!(
        "| {first} | {} |\n|---|{}\n",
        labels.join(" | "),
        "---:|".repeat(metrics.len())
    )
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

impl Report<'_> {
    fn rows(&self) -> Vec<&'static str> {
        self.modes.iter().map(|m| m.name()).collect()
    }

    fn value_cell(&self, row: &str, m: Metric) -> String {
        if let Some(why) = self.results.missing_reason(row, m) {
            return why.to_string();
        }
        let mut c = cell(self.results.summary(row, m), m.decimals());
        let retr = match m {
            Metric::Tcp1Gbps => Some((Metric::Tcp1Retransmits, Metric::Tcp1RetransmitPct)),
            Metric::Tcp4Gbps => Some((Metric::Tcp4Retransmits, Metric::Tcp4RetransmitPct)),
            _ => None,
        };
        if let (Some((r, pct)), false) = (retr, c.is_empty()) {
            if let Some(s) = self.results.summary(row, r) {
                let _ = write!(c, ", {} retr", num(s.median, 0));
            }
            if let Some(s) = self.results.summary(row, pct) {
                let _ = write!(c, " ({} %)", num(s.median, pct.decimals()));
            }
        }
        c
    }

    /// (mode, metric) cells with neither a value nor a documented reason.
    pub fn empty_cells(&self) -> Vec<String> {
        let mut v = Vec::new();
        for row in self.rows() {
            for m in TABLE {
                if self.value_cell(row, m).is_empty() {
                    v.push(format!("{row}/{}", m.label()));
                }
            }
        }
        if self.control {
            for size in control::sizes(self.plan.name == "smoke") {
                for m in Metric::CONTROL {
                    if self.results.summary(&control::row(size), m).is_none() {
                        v.push(format!("route adds {}/{}", control::row(size), m.label()));
                    }
                }
            }
            for m in Metric::CONTROL {
                if self.results.summary(control::DISK_ROW, m).is_none() {
                    v.push(format!("route adds {}/{}", control::DISK_ROW, m.label()));
                }
            }
        }
        if self.dns {
            let metrics: &[Metric] = if self.plan.dns_tcp {
                &Metric::DNS
            } else {
                &Metric::DNS[..3]
            };
            for row in ["knot", "srvgate"] {
                for &m in metrics {
                    if self.results.summary(row, m).is_none() {
                        v.push(format!("dns {row}/{}", m.label()));
                    }
                }
            }
        }
        v
    }

    /// The data-plane table alone (printed at the end of a run).
    pub fn summary_table(&self) -> String {
        let mut s = table_head("mode", &TABLE);
        for row in self.rows() {
            let cells: Vec<String> = TABLE.iter().map(|&m| self.value_cell(row, m)).collect();
            let _ = writeln!(s, "| {row} | {} |", cells.join(" | "));
        }
        s
    }

    fn ratio_table(&self, base: &str) -> String {
        let mut s = table_head("mode", &RATIOS);
        for row in self.rows() {
            let cells: Vec<String> = RATIOS
                .iter()
                .map(|&m| {
                    if self.results.missing_reason(row, m).is_some() {
                        "n/a".to_string()
                    } else {
                        ratio(self.results.ratio(row, base, m))
                    }
                })
                .collect();
            let _ = writeln!(s, "| {row} | {} |", cells.join(" | "));
        }
        s
    }

    /// The A/B's program cost by test run, the figure a change to the hot path is judged by.
    fn baseline_cost_line(&self) -> String {
        let m = Metric::XdpTestRunNs;
        let (Some(new), Some(old)) = (
            self.results.summary("srvgate", m),
            self.results.summary("baseline", m),
        ) else {
            return String::new();
        };
        format!(
            "\nXDP program by test run: `srvgate` {} ns ({}–{}), `baseline` {} ns ({}–{}): {}.\n",
            num(new.median, 1),
            num(new.min, 1),
            num(new.max, 1),
            num(old.median, 1),
            num(old.min, 1),
            num(old.max, 1),
            ratio(self.results.ratio("srvgate", "baseline", m)),
        )
    }

    fn dns_table(&self) -> String {
        let metrics: Vec<Metric> = if self.plan.dns_tcp {
            Metric::DNS.to_vec()
        } else {
            Metric::DNS[..3].to_vec()
        };
        let mut s = table_head("server", &metrics);
        for row in ["srvgate", "knot"] {
            let cells: Vec<String> = metrics
                .iter()
                .map(|&m| cell(self.results.summary(row, m), 0))
                .collect();
            let _ = writeln!(s, "| {row} | {} |", cells.join(" | "));
        }
        let cells: Vec<String> = metrics
            .iter()
            .map(|&m| ratio(self.results.ratio("srvgate", "knot", m)))
            .collect();
        let _ = writeln!(s, "| srvgate ÷ knot | {} |", cells.join(" | "));
        s
    }

    fn control_table(&self) -> String {
        let [empty, full] = control::sizes(self.plan.name == "smoke");
        let mut s = table_head("table size", &Metric::CONTROL);
        let rows = [
            control::row(empty),
            control::row(full),
            control::DISK_ROW.to_string(),
        ];
        for row in rows {
            let cells: Vec<String> = Metric::CONTROL
                .iter()
                .map(|&m| cell(self.results.summary(&row, m), m.decimals()))
                .collect();
            let _ = writeln!(s, "| {row} | {} |", cells.join(" | "));
        }
        let cells: Vec<String> = Metric::CONTROL
            .iter()
            .map(|&m| {
                ratio(
                    self.results
                        .ratio(&control::row(full), &control::row(empty), m),
                )
            })
            .collect();
        let _ = writeln!(s, "| full ÷ empty | {} |", cells.join(" | "));
        let cells: Vec<String> = Metric::CONTROL
            .iter()
            .map(|&m| {
                ratio(
                    self.results
                        .ratio(&control::row(full), control::DISK_ROW, m),
                )
            })
            .collect();
        let _ = writeln!(s, "| full ÷ disk | {} |", cells.join(" | "));
        s
    }

    /// The pool modes side by side, the pool path's own cost and the pool's shape.
    fn pools_section(&self) -> String {
        let r = self.results;
        let mut s = String::from("## Pools: 16 backends per service\n\n");
        let _ = writeln!(s, "### Ratios to `srvgate-pool`\n");
        s.push_str(&self.ratio_table("srvgate-pool"));
        let m = Metric::XdpTestRunNs;
        let _ = writeln!(
            s,
            "\nThe program by test run on the flood's 256 flows (one client, source ports \
             1024–1279 in turn, so consecutive packets go to different members), less the \
             kernel's own cost around a run:\n\n| path | ns | ÷ one-backend |\n|---|---:|---:|"
        );
        for row in [cost::ONE_BACKEND_ROW, cost::POOL_ROW, cost::POOL_NEW_ROW] {
            let _ = writeln!(
                s,
                "| {row} | {} | {} |",
                cell(r.summary(row, m), 1),
                ratio(r.ratio(row, cost::ONE_BACKEND_ROW, m))
            );
        }
        let _ = writeln!(
            s,
            "\n*New flows*: every packet from another client, so every one is a Maglev \
             table lookup and a `FLOWS` insert (evicting once the LRU is full); the others \
             find their flow in `FLOWS`.\n"
        );
        let _ = writeln!(
            s,
            "On the real bytecode (lb-userspace's pools test, `BPF_PROG_TEST_RUN` per flow): \
             10 000 flows over 16 equal members; 40 000 flows over members of weights 1–4; \
             the same 10 000 flows to the pool less one member.\n"
        );
        let metrics = [
            Metric::PoolMaxOverMean,
            Metric::PoolWeightError,
            Metric::PoolOthersMoved,
        ];
        s.push_str(&table_head("", &metrics));
        let cells: Vec<String> = metrics
            .iter()
            .map(|&m| cell(r.summary(cost::SHAPE_ROW, m), m.decimals()))
            .collect();
        let _ = writeln!(s, "| {} | {} |\n", cost::SHAPE_ROW, cells.join(" | "));
        s
    }

    /// The pool targets of issue 26, when a pool mode ran.
    fn pool_targets(&self, v: &mut Vec<(String, String, String)>) {
        let r = self.results;
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "met".to_string(),
            Some(false) => "**missed**".to_string(),
            None => "not measured".to_string(),
        };
        let per_core = r.ratio("srvgate-pool", "srvgate", Metric::PpsPerCore);
        v.push((
            "pools: 16-backend pool ≥ 0.95× one-backend packets/s per gateway core".to_string(),
            format!(
                "{} per gateway core ({} raw packets/s)",
                ratio(per_core),
                ratio(r.ratio("srvgate-pool", "srvgate", Metric::Pps))
            ),
            verdict(per_core.map(|x| x >= 0.95)),
        ));
        let m = Metric::XdpTestRunNs;
        let cost = r.ratio(cost::POOL_ROW, cost::ONE_BACKEND_ROW, m);
        v.push((
            "pools: program by test run, pool path ≤ 1.15× one-backend path".to_string(),
            format!(
                "{} (new flows {})",
                ratio(cost),
                ratio(r.ratio(cost::POOL_NEW_ROW, cost::ONE_BACKEND_ROW, m))
            ),
            verdict(cost.map(|x| x <= 1.15)),
        ));
        let nft = r.ratio("srvgate-pool", "nftables-pool", Metric::PpsPerCore);
        v.push((
            "pools: srvgate ≥ 1.5× nftables per gateway core on small packets".to_string(),
            format!(
                "{} per gateway core ({} raw packets/s)",
                ratio(nft),
                ratio(r.ratio("srvgate-pool", "nftables-pool", Metric::Pps))
            ),
            verdict(nft.map(|x| x >= 1.5)),
        ));
        let shape = |m| r.median(cost::SHAPE_ROW, m);
        let balance = shape(Metric::PoolMaxOverMean);
        v.push((
            "pools: 10 000 flows over 16 equal members, max/mean ≤ 1.10".to_string(),
            balance.map_or("–".into(), |x| num(x, 3)),
            verdict(balance.map(|x| x <= 1.10)),
        ));
        let weights = shape(Metric::PoolWeightError);
        v.push((
            "pools: weights honoured within 5 %".to_string(),
            weights.map_or("–".into(), |x| format!("{:.1} %", x * 100.0)),
            verdict(weights.map(|x| x <= 0.05)),
        ));
        let moved = shape(Metric::PoolOthersMoved);
        v.push((
            "pools: 1 of 16 removed moves ≤ 1/16 + 2 % of the others' flows".to_string(),
            moved.map_or("–".into(), |x| format!("{:.2} %", x * 100.0)),
            verdict(moved.map(|x| x <= 1.0 / 16.0 + 0.02)),
        ));
    }

    /// (target, measured, verdict) rows.
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let r = self.results;
        let mut v = Vec::new();
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "met".to_string(),
            Some(false) => "**missed**".to_string(),
            None => "not measured".to_string(),
        };
        let per_core = r.ratio("srvgate", "dnat", Metric::PpsPerCore);
        v.push((
            "small packets: srvgate ≥ 3× dnat packets/s at equal gateway CPU".to_string(),
            format!(
                "{} per gateway core ({} raw packets/s)",
                ratio(per_core),
                ratio(r.ratio("srvgate", "dnat", Metric::Pps))
            ),
            verdict(per_core.map(|x| x >= 3.0)),
        ));
        let ceil = r.ratio("srvgate", "xdp-ceiling", Metric::PpsPerCore);
        v.push((
            "small packets: srvgate ≥ 70 % of xdp-ceiling".to_string(),
            format!(
                "{} per gateway core ({} raw packets/s)",
                ceil.map_or("–".into(), |x| format!("{:.0} %", x * 100.0)),
                r.ratio("srvgate", "xdp-ceiling", Metric::Pps)
                    .map_or("–".into(), |x| format!("{:.0} %", x * 100.0))
            ),
            verdict(ceil.map(|x| x >= 0.7)),
        ));
        // Judged by the test run, which holds from run to run; the sampled statistics move
        // by several ns between runs of the same program here, and their clock reads
        // around every run land partly in either program's time.
        let cost = r.ratio("srvgate", "xdp-ceiling", Metric::XdpTestRunNs);
        v.push((
            "program cost: srvgate ≤ 1.15× xdp-ceiling ns per packet".to_string(),
            format!(
                "{} by test run, {} by sampled bpf_stats",
                ratio(cost),
                ratio(r.ratio("srvgate", "xdp-ceiling", Metric::XdpNsPerPacket))
            ),
            verdict(cost.map(|x| x <= 1.15)),
        ));
        let tcp = r.ratio("srvgate", "dnat", Metric::Tcp1Gbps);
        v.push((
            "TCP single stream: srvgate ≥ 1.3× dnat".to_string(),
            ratio(tcp),
            verdict(tcp.map(|x| x >= 1.3)),
        ));
        // Shares, not counts: the modes move different amounts of data in the same time.
        let retr = r.ratio("srvgate", "dnat", Metric::Tcp4RetransmitPct);
        v.push((
            "TCP 4 streams: srvgate retransmits (% of segments) ≤ 2× dnat's".to_string(),
            format!(
                "{} % vs {} % ({})",
                r.median("srvgate", Metric::Tcp4RetransmitPct)
                    .map_or("–".into(), |x| num(x, 3)),
                r.median("dnat", Metric::Tcp4RetransmitPct)
                    .map_or("–".into(), |x| num(x, 3)),
                ratio(retr)
            ),
            verdict(retr.map(|x| x <= 2.0)),
        ));
        let p99 = r.ratio("srvgate", "route", Metric::RrP99Us);
        v.push((
            "latency p99 within 10 % of route".to_string(),
            p99.map_or("–".into(), |x| format!("{:+.0} %", (x - 1.0) * 100.0)),
            verdict(p99.map(|x| x <= 1.10)),
        ));
        if self.modes.iter().any(|m| m.is_pool()) {
            self.pool_targets(&mut v);
        }
        if self.control {
            let full = control::row(control::sizes(self.plan.name == "smoke")[1]);
            let rate = r.median(&full, Metric::AddsPerSec);
            v.push((
                format!(
                    "route adds at {full}: ≥ 1000/s from {} clients",
                    control::CLIENTS
                ),
                rate.map_or("–".into(), |x| format!("{x:.0}/s")),
                verdict(rate.map(|x| x >= 1000.0)),
            ));
            let p99 = r.median(&full, Metric::AddP99Ms);
            v.push((
                format!("route adds at {full}: p99 < 20 ms, live and durable"),
                p99.map_or("–".into(), |x| format!("{x:.2} ms")),
                verdict(p99.map(|x| x < 20.0)),
            ));
        }
        if self.dns {
            let q = r.ratio("srvgate", "knot", Metric::DnsUdpQps);
            v.push((
                "DNS: srvgate ≥ 1.0× Knot queries/s (UDP)".to_string(),
                ratio(q),
                verdict(q.map(|x| x >= 1.0)),
            ));
            let l = r.ratio("srvgate", "knot", Metric::DnsUdpP99Us);
            v.push((
                "DNS: srvgate p99 latency no worse than Knot (UDP)".to_string(),
                ratio(l),
                verdict(l.map(|x| x <= 1.0)),
            ));
            if self.plan.dns_tcp {
                let q = r.ratio("srvgate", "knot", Metric::DnsTcpQps);
                v.push((
                    "DNS over TCP (no target; for information): srvgate ÷ Knot queries/s"
                        .to_string(),
                    ratio(q),
                    "–".to_string(),
                ));
            }
        }
        v
    }

    pub fn markdown(&self) -> String {
        let f = self.facts;
        let p = self.plan;
        let mut s = String::new();
        let _ = writeln!(s, "# srvgate benchmark, {} ({} plan)\n", f.date, p.name);
        let _ = writeln!(
            s,
            "Produced by `cargo xtask bench{}` in {:.0} s. Medians over {} round(s), \
             min–max in parentheses; the order of the modes rotates every round. \
             Absolute figures drift on a shared machine: compare the ratios.\n",
            match p.name {
                "full" => "",
                "quick" => " --quick",
                _ => " --smoke",
            },
            self.elapsed.as_secs_f64(),
            p.rounds
        );
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "- {} cores: {}", f.cores, f.cpu_model);
        let _ = writeln!(s, "- kernel {}, {} of memory", f.kernel, f.memory);
        let _ = writeln!(
            s,
            "- load average when the run started: {} (other work on the machine competes \
             for the same two cores)",
            f.loadavg
        );
        let _ = writeln!(s, "- srvgate commit {}", f.commit);
        if let Some(b) = &f.baseline {
            let _ = writeln!(s, "- baseline commit {b}");
        }
        let tools: Vec<String> = f.tools.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let _ = writeln!(s, "- tools: {}\n", tools.join("; "));

        let _ = writeln!(s, "## Modes\n");
        for m in self.modes {
            let _ = writeln!(s, "- `{m}`: {}", m.description());
        }
        if !f.ipvs {
            let _ = writeln!(
                s,
                "- `ipvs`: **not measured**: this kernel has no IPVS (CONFIG_IP_VS is not built \
                 in and modules are disabled), so `ipvsadm` cannot be used here."
            );
        }
        let _ = writeln!(
            s,
            "- request/response latency uses sockperf (TCP ping-pong, full round trip): \
             netperf is not in Debian's main archive.\n"
        );

        let _ = writeln!(s, "## Data plane\n");
        s.push_str(&self.summary_table());
        let _ = writeln!(
            s,
            "\n64-byte UDP: trafgen on CPU 1 floods the gateway (256 flows); *delivered* = \
             counted by an nftables netdev ingress rule on backend 1's NIC. *Gateway CPU per \
             packet* = on-CPU time of the gateway's threaded NAPI kthread (pinned alone to \
             CPU 0; it does all of the gateway's work for these packets) / packets delivered; \
             *of which XDP program* = the program's own run time per packet on the ingress \
             leg (`kernel.bpf_stats_enabled`, sampled for 1 s after the main interval, since \
             the statistics themselves cost two clock reads per packet): the rest is the \
             kernel's veth, page-pool and redirect work, the same for every XDP mode. \
             *XDP program by test run* = the program's mean time over 200 000 \
             `BPF_PROG_TEST_RUN` calls on one such frame (as the daemon sets a veth leg up), \
             less the kernel's own cost around a run, once a round (lb-userspace's \
             `program_cost_for_the_bench`): the same frame and state for both programs. \
             *kpps per gateway core* = 1 s / that: the forwarding rate at equal gateway CPU \
             (one full core), which is what counts when the generator, not the gateway, is the \
             limit. TCP: iperf3 for {} s (first {} s omitted), retransmits as reported by the \
             sender, in parentheses per 100 segments sent (segments = the sent bytes over the \
             sender's MSS, iperf3's `tcp_mss_default`); short connections: wrk, 1 thread, `Connection: close`, nginx `return 200`; \
             RR: sockperf ping-pong over TCP, {} s.\n",
            p.secs, p.omit_secs, p.latency_secs
        );
        let _ = writeln!(s, "### Ratios to `dnat`\n");
        s.push_str(&self.ratio_table("dnat"));
        let _ = writeln!(s, "\n### Ratios to `xdp-ceiling`\n");
        s.push_str(&self.ratio_table("xdp-ceiling"));
        if self.modes.contains(&Mode::Baseline) {
            let _ = writeln!(s, "\n### Ratios to `baseline` (the same-run A/B)\n");
            s.push_str(&self.ratio_table("baseline"));
            s.push_str(&self.baseline_cost_line());
        }
        s.push('\n');

        if self.modes.iter().any(|m| m.is_pool()) {
            s.push_str(&self.pools_section());
        }
        if self.control {
            let _ = writeln!(
                s,
                "## Route adds over the control socket, {} clients\n",
                control::CLIENTS
            );
            s.push_str(&self.control_table());
            let _ = writeln!(
                s,
                "\nEach add is one `POST /v1/routes` on its own connection to the control \
                 socket, timed from connect to the reply's last byte; the reply comes once \
                 the route is in the BPF maps and the DNS zone and its journal line is \
                 flushed to disk. Ports are allocated by the daemon. The full table is \
                 filled with the same adds first. The daemon also serves the zone (DNS \
                 on loopback), so every add changes it. The peer is the disk itself: one \
                 200-byte append and `fdatasync` at a time in the same directory, the cost \
                 of one durable change without group commit.\n"
            );
        }
        if self.dns {
            let _ = writeln!(
                s,
                "## DNS: srvgate's zone vs Knot DNS, {} routes\n",
                dns::ROUTES
            );
            s.push_str(&self.dns_table());
            let _ = writeln!(
                s,
                "\nBoth servers serve the same records (SOA, NS, `gw` A, and per route \
                 `_ssh._tcp.NAME` SRV, `NAME.ssh` SRV and A) on the gateway namespace's \
                 loopback, pinned to CPU 0; dnsperf runs on CPU 1 (8 clients, 100 queries \
                 outstanding). Query mix: 40 % RFC 2782 SRV, 20 % short-form SRV, 20 % A, \
                 20 % names that do not exist. Queries/s at saturation for {} s; latency at a \
                 fixed {} queries/s for {} s from every query's own latency (`dnsperf -v`). \
                 Knot: `udp-workers: 1`, `tcp-workers: 1`.\n",
                p.secs,
                if p.name == "smoke" { 2_000 } else { 10_000 },
                p.latency_secs
            );
        }

        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target | measured | verdict |\n|---|---|---|");
        for (t, m, v) in self.targets() {
            let _ = writeln!(s, "| {t} | {m} | {v} |");
        }
        s.push('\n');
        let _ = writeln!(s, "![main figures]({})\n", self.chart_png);
        let _ = writeln!(s, "## Commands\n\n```sh");
        for c in self.commands {
            let _ = writeln!(s, "{c}");
        }
        let _ = writeln!(s, "```");
        s
    }

    /// An SVG chart: throughput ratios to `dnat` (higher is better), RR p99, DNS queries/s.
    pub fn chart_svg(&self) -> String {
        let (w, h) = (1200.0, 520.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, sans-serif">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="20" y="28" font-size="18" font-weight="bold">srvgate benchmark {} ({} plan, {} cores, kernel {})</text>"#,
            self.facts.date, self.plan.name, self.facts.cores, self.facts.kernel
        );
        let colors = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
        let rows = self.rows();
        // Legend.
        for (i, row) in rows.iter().enumerate() {
            let x = 20.0 + i as f64 * 150.0;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="44" width="14" height="14" fill="{}"/><text x="{}" y="56" font-size="13">{row}</text>"#,
                colors[i % colors.len()],
                x + 20.0
            );
        }

        // Panel 1: ratios to dnat.
        let metrics = [
            (Metric::PpsPerCore, "kpps per\ngateway core"),
            (Metric::Pps, "kpps\ndelivered"),
            (Metric::Tcp1Gbps, "TCP\n1 stream"),
            (Metric::Tcp4Gbps, "TCP\n4 streams"),
            (Metric::ConnPerSec, "connections/s"),
        ];
        let (x0, y0, pw, ph) = (70.0, 90.0, 640.0, 340.0);
        let mut max: f64 = 1.0;
        for (m, _) in metrics {
            for row in &rows {
                if let (Some(sum), Some(base)) =
                    (self.results.summary(row, m), self.results.median("dnat", m))
                {
                    if base > 0.0 {
                        max = max.max(sum.max / base);
                    }
                }
            }
        }
        let top = nice_ceiling(max);
        self.axes(
            &mut s,
            x0,
            y0,
            pw,
            ph,
            top,
            "ratio to dnat (higher is better)",
        );
        let group = pw / metrics.len() as f64;
        let bar = group * 0.8 / rows.len() as f64;
        for (gi, (m, label)) in metrics.iter().enumerate() {
            let gx = x0 + gi as f64 * group + group * 0.1;
            for (ri, row) in rows.iter().enumerate() {
                let base = self.results.median("dnat", *m).filter(|b| *b > 0.0);
                let (Some(sum), Some(base)) = (self.results.summary(row, *m), base) else {
                    continue;
                };
                let x = gx + ri as f64 * bar;
                self.bar(
                    &mut s,
                    x,
                    bar,
                    y0,
                    ph,
                    top,
                    sum,
                    base,
                    colors[ri % colors.len()],
                );
            }
            for (li, part) in label.split('\n').enumerate() {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{part}</text>"#,
                    gx + group * 0.4,
                    y0 + ph + 18.0 + li as f64 * 14.0
                );
            }
        }
        // The dnat = 1 line.
        let y1 = y0 + ph - ph / top;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y1}" x2="{}" y2="{y1}" stroke="#d62728" stroke-dasharray="4 3"/>"##,
            x0 + pw
        );

        // Panel 2: RR p99 (µs), lower is better.
        let (x0, pw) = (780.0, 170.0);
        let mut max: f64 = 1.0;
        for row in &rows {
            if let Some(sum) = self.results.summary(row, Metric::RrP99Us) {
                max = max.max(sum.max);
            }
        }
        let top = nice_ceiling(max);
        self.axes(&mut s, x0, y0, pw, ph, top, "RR p99 µs (lower: better)");
        let bar = pw * 0.8 / rows.len() as f64;
        for (ri, row) in rows.iter().enumerate() {
            if let Some(sum) = self.results.summary(row, Metric::RrP99Us) {
                let x = x0 + pw * 0.1 + ri as f64 * bar;
                self.bar(
                    &mut s,
                    x,
                    bar,
                    y0,
                    ph,
                    top,
                    sum,
                    1.0,
                    colors[ri % colors.len()],
                );
            }
        }

        // Panel 3: DNS queries/s (thousands).
        if self.dns {
            let (x0, pw) = (1030.0, 140.0);
            let series = [("srvgate", "#2ca02c"), ("knot", "#8c564b")];
            let protos: Vec<(Metric, &str)> = if self.plan.dns_tcp {
                vec![(Metric::DnsUdpQps, "UDP"), (Metric::DnsTcpQps, "TCP")]
            } else {
                vec![(Metric::DnsUdpQps, "UDP")]
            };
            let mut max: f64 = 1.0;
            for (m, _) in &protos {
                for (row, _) in series {
                    if let Some(sum) = self.results.summary(row, *m) {
                        max = max.max(sum.max / 1e3);
                    }
                }
            }
            let top = nice_ceiling(max);
            self.axes(&mut s, x0, y0, pw, ph, top, "DNS k queries/s");
            let group = pw / protos.len() as f64;
            let bar = group * 0.8 / series.len() as f64;
            for (gi, (m, label)) in protos.iter().enumerate() {
                let gx = x0 + gi as f64 * group + group * 0.1;
                for (si, (row, color)) in series.iter().enumerate() {
                    if let Some(sum) = self.results.summary(row, *m) {
                        let x = gx + si as f64 * bar;
                        self.bar(&mut s, x, bar, y0, ph, top, sum, 1e3, color);
                    }
                }
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{label}</text>"#,
                    gx + group * 0.4,
                    y0 + ph + 18.0
                );
            }
            for (si, (row, color)) in series.iter().enumerate() {
                let y = y0 + ph + 40.0 + si as f64 * 16.0;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x0}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{y}" font-size="12">{row}</text>"#,
                    y - 11.0,
                    x0 + 18.0
                );
            }
        }
        let _ = writeln!(
            s,
            r##"<text x="20" y="{}" font-size="11" fill="#555">Bars: medians; whiskers: min–max over rounds. Details and method: the Markdown report next to this chart.</text>"##,
            h - 10.0
        );
        s.push_str("</svg>\n");
        s
    }

    #[allow(clippy::too_many_arguments)]
    fn axes(&self, s: &mut String, x0: f64, y0: f64, pw: f64, ph: f64, top: f64, title: &str) {
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}" font-size="13" font-weight="bold">{title}</text>"#,
            y0 - 8.0
        );
        for i in 0..=4 {
            let v = top * f64::from(i) / 4.0;
            let y = y0 + ph - ph * f64::from(i) / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#e0e0e0"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
                x0 + pw,
                x0 - 4.0,
                y + 4.0,
                if top < 10.0 {
                    format!("{v:.2}")
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_string()
                } else {
                    format!("{v:.0}")
                }
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/><line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            y0 + ph,
            y0 + ph,
            x0 + pw,
            y0 + ph
        );
    }

    /// A bar of `sum.median / scale` with a min–max whisker, in a panel of height `ph`.
    #[allow(clippy::too_many_arguments)]
    fn bar(
        &self,
        s: &mut String,
        x: f64,
        width: f64,
        y0: f64,
        ph: f64,
        top: f64,
        sum: Summary,
        scale: f64,
        color: &str,
    ) {
        let y = |v: f64| y0 + ph - ph * (v / scale / top).clamp(0.0, 1.0);
        let ym = y(sum.median);
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{ym:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
            width * 0.9,
            y0 + ph - ym
        );
        if sum.n > 1 {
            let cx = x + width * 0.45;
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#,
                y(sum.min),
                y(sum.max)
            );
        }
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(1e-9) * 1.05;
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * base >= v {
            return m * base;
        }
    }
    10.0 * base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_513), (2026, 3, 1));
    }

    #[test]
    fn numbers() {
        assert_eq!(num(1_234_567.0, 0), "1 234 567");
        assert_eq!(num(9_999.0, 0), "9999");
        assert_eq!(num(2.345, 2), "2.35");
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.9), 1.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
    }

    fn report_with(results: &Results, f: impl FnOnce(&Report)) {
        let facts = Facts {
            date: "2026-01-01".into(),
            cores: 2,
            cpu_model: "cpu".into(),
            kernel: "6.18".into(),
            memory: "24 GiB".into(),
            loadavg: "0.1 0.1 0.1".into(),
            commit: "abc".into(),
            baseline: None,
            tools: vec![],
            ipvs: false,
        };
        let r = Report {
            facts: &facts,
            plan: &Plan::SMOKE,
            modes: &Mode::ALL,
            results,
            commands: &[],
            dns: true,
            control: true,
            chart_png: "x.png".into(),
            elapsed: Duration::from_secs(1),
        };
        f(&r)
    }

    #[test]
    fn empty_cells_and_targets() {
        let mut res = Results::default();
        for (i, m) in Mode::ALL.iter().enumerate() {
            for metric in TABLE {
                if m.tcp_only()
                    && matches!(
                        metric,
                        Metric::Pps
                            | Metric::GwNsPerPacket
                            | Metric::XdpNsPerPacket
                            | Metric::XdpTestRunNs
                            | Metric::PpsPerCore
                    )
                {
                    res.not_applicable(m.name(), metric, "n/a: no UDP");
                } else {
                    res.add(m.name(), metric, 100.0 + i as f64);
                }
            }
        }
        for row in ["knot", "srvgate"] {
            for m in &Metric::DNS[..3] {
                res.add(row, *m, 1000.0);
            }
        }
        report_with(&res, |r| {
            let missing = r.empty_cells();
            assert!(
                missing.iter().all(|c| c.starts_with("route adds")),
                "{missing:?}"
            );
            assert_eq!(missing.len(), 9, "{missing:?}");
        });
        for m in Metric::CONTROL {
            res.add(control::DISK_ROW, m, 300.0);
        }
        for size in control::sizes(true) {
            res.add(&control::row(size), Metric::AddsPerSec, 900.0 + size as f64);
            res.add(&control::row(size), Metric::AddP50Ms, 2.0);
            res.add(&control::row(size), Metric::AddP99Ms, 9.0);
        }
        report_with(&res, |r| {
            assert!(r.empty_cells().is_empty(), "{:?}", r.empty_cells());
            let md = r.markdown();
            assert!(
                md.contains("| full ÷ empty |") && md.contains("| full ÷ disk |"),
                "{md}"
            );
            let adds: Vec<_> = r
                .targets()
                .into_iter()
                .filter(|t| t.0.contains("route adds"))
                .collect();
            assert_eq!(adds.len(), 2);
            assert_eq!(adds[0].2, "met", "{adds:?}");
            assert_eq!(adds[1].2, "met", "{adds:?}");
            let md = r.markdown();
            assert!(md.contains("n/a: no UDP"));
            assert!(md.contains("IPVS"));
            let t = r.targets();
            assert_eq!(t[0].2, "**missed**");
            assert!(r.chart_svg().starts_with("<svg"));
        });
        let res = Results::default();
        report_with(&res, |r| assert!(!r.empty_cells().is_empty()));
    }

    #[test]
    fn pool_section_and_targets() {
        let mut res = Results::default();
        res.add("srvgate", Metric::PpsPerCore, 1000.0);
        res.add("srvgate-pool", Metric::PpsPerCore, 900.0);
        res.add("nftables-pool", Metric::PpsPerCore, 300.0);
        res.add(cost::ONE_BACKEND_ROW, Metric::XdpTestRunNs, 100.0);
        res.add(cost::POOL_ROW, Metric::XdpTestRunNs, 110.0);
        res.add(cost::POOL_NEW_ROW, Metric::XdpTestRunNs, 400.0);
        res.add(cost::SHAPE_ROW, Metric::PoolMaxOverMean, 1.06);
        res.add(cost::SHAPE_ROW, Metric::PoolWeightError, 0.07);
        res.add(cost::SHAPE_ROW, Metric::PoolOthersMoved, 0.012);
        report_with(&res, |r| {
            let md = r.markdown();
            assert!(md.contains("## Pools"), "{md}");
            assert!(md.contains("| 1.10× |") && md.contains("| 4.00× |"), "{md}");
            let pools: Vec<_> = r
                .targets()
                .into_iter()
                .filter(|t| t.0.starts_with("pools:"))
                .map(|t| t.2)
                .collect();
            assert_eq!(
                pools,
                ["**missed**", "met", "met", "met", "**missed**", "met"],
                "0.90× per core, 1.10× cost, 3× nftables, 1.06, 7 %, 1.2 %"
            );
        });
    }
}
