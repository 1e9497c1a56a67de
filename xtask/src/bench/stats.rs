//! What the benchmark measures, and the samples it collected.

use std::collections::BTreeMap;

/// A measured quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// 64-byte UDP packets per second delivered to the backend's NIC.
    Pps,
    /// Gateway CPU time per delivered packet (ns), from the gateway NAPI thread's run time.
    GwNsPerPacket,
    /// The XDP program's own run time per packet (ns), from the kernel's BPF statistics.
    XdpNsPerPacket,
    /// The XDP program's mean run time on one 64-byte frame by `BPF_PROG_TEST_RUN`, the
    /// kernel's own cost around a run taken off (ns; see `cost`).
    XdpTestRunNs,
    /// Delivered packets per second of gateway CPU (one core fully busy).
    PpsPerCore,
    Tcp1Gbps,
    Tcp1Retransmits,
    /// Retransmitted segments per 100 segments sent (see `parse::Iperf::retransmit_pct`).
    Tcp1RetransmitPct,
    Tcp4Gbps,
    Tcp4Retransmits,
    Tcp4RetransmitPct,
    ConnPerSec,
    RrAvgUs,
    RrP99Us,
    DnsUdpQps,
    DnsUdpAvgUs,
    DnsUdpP99Us,
    DnsTcpQps,
    DnsTcpAvgUs,
    DnsTcpP99Us,
    /// Route adds per second over the control socket, from `control::CLIENTS` clients.
    AddsPerSec,
    AddP50Ms,
    AddP99Ms,
    /// The busiest of 16 equal pool members' flows over the mean (10 000 flows).
    PoolMaxOverMean,
    /// The largest relative error of a weighted pool's members' shares against their weights.
    PoolWeightError,
    /// Of the flows on the 15 members that stay when one of 16 leaves, the share that moved.
    PoolOthersMoved,
}

impl Metric {
    pub const DNS: [Metric; 6] = [
        Metric::DnsUdpQps,
        Metric::DnsUdpAvgUs,
        Metric::DnsUdpP99Us,
        Metric::DnsTcpQps,
        Metric::DnsTcpAvgUs,
        Metric::DnsTcpP99Us,
    ];

    pub const CONTROL: [Metric; 3] = [Metric::AddsPerSec, Metric::AddP50Ms, Metric::AddP99Ms];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Pps => "64 B UDP delivered (kpps)",
            Metric::GwNsPerPacket => "gateway CPU per packet (ns)",
            Metric::XdpNsPerPacket => "of which XDP program (ns)",
            Metric::XdpTestRunNs => "XDP program by test run (ns)",
            Metric::PpsPerCore => "kpps per gateway core",
            Metric::Tcp1Gbps => "TCP 1 stream (Gbit/s)",
            Metric::Tcp1Retransmits => "TCP 1 stream retransmits",
            Metric::Tcp4Gbps => "TCP 4 streams (Gbit/s)",
            Metric::Tcp4Retransmits => "TCP 4 streams retransmits",
            Metric::Tcp1RetransmitPct => "TCP 1 stream retransmits (% of segments)",
            Metric::Tcp4RetransmitPct => "TCP 4 streams retransmits (% of segments)",
            Metric::ConnPerSec => "short TCP connections/s",
            Metric::RrAvgUs => "TCP RR avg (µs)",
            Metric::RrP99Us => "TCP RR p99 (µs)",
            Metric::DnsUdpQps => "UDP queries/s",
            Metric::DnsUdpAvgUs => "UDP avg latency (µs)",
            Metric::DnsUdpP99Us => "UDP p99 latency (µs)",
            Metric::DnsTcpQps => "TCP queries/s",
            Metric::DnsTcpAvgUs => "TCP avg latency (µs)",
            Metric::DnsTcpP99Us => "TCP p99 latency (µs)",
            Metric::AddsPerSec => "route adds/s",
            Metric::AddP50Ms => "add p50 (ms)",
            Metric::AddP99Ms => "add p99 (ms)",
            Metric::PoolMaxOverMean => "busiest member / mean",
            Metric::PoolWeightError => "weights: largest share error",
            Metric::PoolOthersMoved => "1 of 16 removed: others' flows moved",
        }
    }

    /// Digits after the decimal point in tables.
    pub fn decimals(self) -> usize {
        match self {
            Metric::Tcp1Gbps | Metric::Tcp4Gbps => 2,
            Metric::RrAvgUs | Metric::RrP99Us => 1,
            Metric::Tcp1RetransmitPct | Metric::Tcp4RetransmitPct => 3,
            Metric::AddP50Ms | Metric::AddP99Ms => 2,
            Metric::PoolMaxOverMean | Metric::PoolWeightError | Metric::PoolOthersMoved => 3,
            _ => 0,
        }
    }
}

/// Median, minimum and maximum of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(v: &[f64]) -> Option<Summary> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: s[0],
        max: s[n - 1],
        n,
    })
}

/// Everything one run measured: samples per (row, metric), and the reason a cell has none.
#[derive(Default, Debug)]
pub struct Results {
    samples: BTreeMap<(String, Metric), Vec<f64>>,
    missing: BTreeMap<(String, Metric), String>,
}

impl Results {
    pub fn add(&mut self, row: &str, metric: Metric, value: f64) {
        self.samples
            .entry((row.to_string(), metric))
            .or_default()
            .push(value);
    }

    /// Records why `row` has no `metric` (a tool that cannot do it); shown in its cell.
    pub fn not_applicable(&mut self, row: &str, metric: Metric, why: &str) {
        self.missing
            .insert((row.to_string(), metric), why.to_string());
    }

    pub fn summary(&self, row: &str, metric: Metric) -> Option<Summary> {
        self.samples
            .get(&(row.to_string(), metric))
            .and_then(|v| summarize(v))
    }

    pub fn missing_reason(&self, row: &str, metric: Metric) -> Option<&str> {
        self.missing
            .get(&(row.to_string(), metric))
            .map(String::as_str)
    }

    pub fn median(&self, row: &str, metric: Metric) -> Option<f64> {
        self.summary(row, metric).map(|s| s.median)
    }

    /// `row`'s median over `base`'s median, if both exist and the base is not zero.
    pub fn ratio(&self, row: &str, base: &str, metric: Metric) -> Option<f64> {
        let a = self.median(row, metric)?;
        let b = self.median(base, metric)?;
        (b != 0.0).then_some(a / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn ratios_and_missing() {
        let mut r = Results::default();
        r.add("dnat", Metric::Pps, 100.0);
        r.add("srvgate", Metric::Pps, 250.0);
        r.add("srvgate", Metric::Pps, 350.0);
        assert_eq!(r.ratio("srvgate", "dnat", Metric::Pps), Some(3.0));
        assert_eq!(r.ratio("srvgate", "route", Metric::Pps), None);
        r.not_applicable("haproxy", Metric::Pps, "no UDP");
        assert_eq!(r.missing_reason("haproxy", Metric::Pps), Some("no UDP"));
        assert!(r.summary("haproxy", Metric::Pps).is_none());
    }
}
