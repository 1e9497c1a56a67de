//! Parsers for what the measuring tools print. Pure functions, unit-tested on real output.

use anyhow::{anyhow, bail, ensure, Context as _, Result};

/// iperf3 `-J` output: received bits/s summed over streams, the sender's retransmits, and
/// those as a share of the segments sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Iperf {
    pub bits_per_second: f64,
    pub retransmits: f64,
    /// Retransmits per 100 segments sent. iperf3 does not count segments: they are the sent
    /// bytes over the sender's MSS (`start.tcp_mss_default`), each a full segment as in a
    /// bulk transfer. `None` when iperf3 reported no MSS or no bytes.
    pub retransmit_pct: Option<f64>,
}

pub fn iperf3_json(text: &str) -> Result<Iperf> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("iperf3 -J output: {text:.400}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    let end = v
        .get("end")
        .ok_or_else(|| anyhow!("iperf3 -J output has no `end`"))?;
    let bps = end
        .pointer("/sum_received/bits_per_second")
        .and_then(|b| b.as_f64())
        .ok_or_else(|| anyhow!("iperf3 -J output has no end.sum_received.bits_per_second"))?;
    let retransmits = end
        .pointer("/sum_sent/retransmits")
        .and_then(|r| r.as_f64())
        .unwrap_or(0.0);
    let mss = v.pointer("/start/tcp_mss_default").and_then(|m| m.as_f64());
    let bytes = end.pointer("/sum_sent/bytes").and_then(|b| b.as_f64());
    let retransmit_pct = match (mss, bytes) {
        (Some(mss), Some(bytes)) if mss > 0.0 && bytes > 0.0 => {
            Some(100.0 * retransmits / (bytes / mss))
        }
        _ => None,
    };
    Ok(Iperf {
        bits_per_second: bps,
        retransmits,
        retransmit_pct,
    })
}

/// wrk's summary: requests per second (with `Connection: close`, one connection each), and
/// how many requests failed (socket errors, non-2xx answers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wrk {
    pub requests_per_second: f64,
    pub requests: f64,
    pub errors: f64,
}

pub fn wrk(text: &str) -> Result<Wrk> {
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no `Requests/sec:` in wrk output:\n{text}"))?;
    // "  12345 requests in 5.00s, 1.23MB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    let mut errors = 0.0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<f64>().ok())
                .sum::<f64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(Wrk {
        requests_per_second: rps,
        requests,
        errors,
    })
}

/// sockperf ping-pong with `--full-rtt`: average and 99th percentile round trip, microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sockperf {
    pub avg_us: f64,
    pub p99_us: f64,
    pub observations: f64,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn sockperf(text: &str) -> Result<Sockperf> {
    let text = strip_ansi(text);
    let number_after = |key: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            let i = l.find(key)?;
            l[i + key.len()..]
                .trim_start()
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()?
                .parse()
                .ok()
        })
    };
    let avg = number_after("avg-rtt=")
        .or_else(|| number_after("avg-lat="))
        .ok_or_else(|| anyhow!("no avg-rtt in sockperf output:\n{text}"))?;
    let p99 = number_after("percentile 99.000 =")
        .ok_or_else(|| anyhow!("no 99th percentile in sockperf output:\n{text}"))?;
    let observations = number_after("Total ").unwrap_or(0.0);
    Ok(Sockperf {
        avg_us: avg,
        p99_us: p99,
        observations,
    })
}

/// dnsperf's summary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dnsperf {
    pub qps: f64,
    pub completed: f64,
    pub lost: f64,
    pub avg_latency_us: f64,
}

pub fn dnsperf(text: &str) -> Result<Dnsperf> {
    let field = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let qps = field("Queries per second:")
        .ok_or_else(|| anyhow!("no `Queries per second:` in dnsperf output:\n{text}"))?;
    Ok(Dnsperf {
        qps,
        completed: field("Queries completed:").unwrap_or(0.0),
        lost: field("Queries lost:").unwrap_or(0.0),
        avg_latency_us: field("Average Latency (s):").unwrap_or(0.0) * 1e6,
    })
}

/// Per-query latencies (microseconds) from `dnsperf -v` lines `> RCODE NAME TYPE SECONDS`,
/// with the count of answers that were neither NOERROR nor NXDOMAIN.
pub fn dnsperf_latencies(text: &str) -> (Vec<f64>, usize) {
    let mut lat = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("> ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let rcode = parts.next().unwrap_or("");
        if let Some(secs) = parts.last().and_then(|s| s.parse::<f64>().ok()) {
            lat.push(secs * 1e6);
        }
        if rcode != "NOERROR" && rcode != "NXDOMAIN" {
            bad += 1;
        }
    }
    (lat, bad)
}

/// The `q`-quantile (0..=1) of `v` by nearest rank; NaN for an empty slice.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The `packets N` of `nft list counter ...` output.
pub fn nft_counter_packets(text: &str) -> Result<u64> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            if let Some(n) = words.next().and_then(|n| n.parse().ok()) {
                return Ok(n);
            }
        }
    }
    bail!("no `packets N` in nft output:\n{text}")
}

/// One `name: value` line of `ethtool -S` output.
pub fn ethtool_stat(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k.trim() == name).then(|| v.trim().parse().ok())?
    })
}

/// The id of the XDP program `bpftool -j net show dev DEV` lists, if one is attached.
pub fn bpftool_xdp_prog_id(text: &str) -> Result<Option<u64>> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("bpftool net show: {text:?}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("xdp")?.as_array())
        .flatten()
        .find_map(|p| p.get("id")?.as_u64()))
}

/// `(run_cnt, run_time_ns)` from `bpftool -j prog show id N` (zero while statistics were
/// never enabled, when bpftool leaves the fields out).
pub fn bpftool_run_stats(text: &str) -> Result<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("bpftool prog show: {text:?}"))?;
    let field = |k: &str| v.get(k).and_then(|n| n.as_u64()).unwrap_or(0);
    ensure!(
        v.get("id").is_some(),
        "bpftool prog show printed no program: {text:?}"
    );
    Ok((field("run_cnt"), field("run_time_ns")))
}

/// What `program_cost_for_the_bench` measured: each program's mean ns per run, the
/// kernel's own cost around a run taken off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProgramCost {
    pub harness: f64,
    pub ceiling: f64,
    pub srvgate: f64,
}

/// The rest of the first line of `text` that starts with `tag` and a space: a
/// measurement's `KEY=VALUE` fields.
fn tagged_line<'a>(text: &'a str, tag: &str) -> Result<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(tag)?.strip_prefix(' '))
        .with_context(|| format!("no {tag} line in the measurement's output:\n{text}"))
}

/// Field `name` of a [`tagged_line`], as a number.
fn field(line: &str, name: &str) -> Result<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .with_context(|| format!("no {name}= in {line:?}"))?
        .parse::<f64>()
        .with_context(|| format!("{name} in {line:?}"))
}

/// The `program-cost-ns harness=H xdp-ceiling=C srvgate=S` line of the measurement's
/// output.
pub fn program_cost(text: &str) -> Result<ProgramCost> {
    let line = tagged_line(text, "program-cost-ns")?;
    let harness = field(line, "harness")?;
    Ok(ProgramCost {
        harness,
        ceiling: field(line, "xdp-ceiling")? - harness,
        srvgate: field(line, "srvgate")? - harness,
    })
}

/// The pool path's cost by test run, each less the kernel's own cost around a run: the
/// one-backend route and the 16-member pool on the same 256 flows, and the pool on a new
/// flow every packet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolCost {
    pub one_backend: f64,
    pub pool: f64,
    pub pool_new: f64,
}

/// The `pool-cost-ns harness=H one-backend=O pool16=P pool16-new=N` line.
pub fn pool_cost(text: &str) -> Result<PoolCost> {
    let line = tagged_line(text, "pool-cost-ns")?;
    let harness = field(line, "harness")?;
    Ok(PoolCost {
        one_backend: field(line, "one-backend")? - harness,
        pool: field(line, "pool16")? - harness,
        pool_new: field(line, "pool16-new")? - harness,
    })
}

/// How the real bytecode spreads a pool (lb-userspace's `pools` test): the busiest of 16
/// equal members over the mean, the largest relative error of a weighted pool's shares,
/// and of the flows on the 15 members that stay when one of 16 is removed, the share that
/// moved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolShape {
    pub max_over_mean: f64,
    pub weight_error: f64,
    pub others_moved: f64,
}

/// The `pool-shape max-mean=M weight-error=W moved-others=N others=T` line.
pub fn pool_shape(text: &str) -> Result<PoolShape> {
    let line = tagged_line(text, "pool-shape")?;
    let others = field(line, "others")?;
    ensure!(others > 0.0, "no flows on the other members in {line:?}");
    Ok(PoolShape {
        max_over_mean: field(line, "max-mean")?,
        weight_error: field(line, "weight-error")?,
        others_moved: field(line, "moved-others")? / others,
    })
}

/// The elements of `nft -j list set ...` output, as text.
pub fn nft_set_elements(text: &str) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("nft -j list set: {text:?}"))?;
    let set = v
        .get("nftables")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .find_map(|o| o.get("set"))
        .with_context(|| format!("no set in {text:?}"))?;
    Ok(set
        .get("elem")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        // A plain element is its value; one with attributes (timeout, counter) an object.
        .filter_map(|e| {
            e.as_str()
                .or_else(|| e.pointer("/elem/val").and_then(|v| v.as_str()))
                .map(str::to_string)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3() {
        let j = r#"{"start":{"tcp_mss_default":1448},"end":{"sum_sent":{"bytes":14480000,
            "bits_per_second":9.1e9,"retransmits":12},"sum_received":{"bits_per_second":9.0e9}}}"#;
        assert_eq!(
            iperf3_json(j).unwrap(),
            Iperf {
                bits_per_second: 9.0e9,
                retransmits: 12.0,
                retransmit_pct: Some(0.12),
            }
        );
        // No MSS in the output (an older iperf3): the share is unknown, not zero.
        let j = r#"{"start":{},"end":{"sum_sent":{"bytes":1000,"retransmits":1},
            "sum_received":{"bits_per_second":1.0}}}"#;
        assert_eq!(iperf3_json(j).unwrap().retransmit_pct, None);
        let e = r#"{"start":{},"end":{},"error":"unable to connect to server"}"#;
        assert!(format!("{:#}", iperf3_json(e).unwrap_err()).contains("unable to connect"));
    }

    #[test]
    fn wrk_summary() {
        let out = "Running 5s test @ http://10.210.2.11:8080/\n  1 threads and 32 connections\n\
            \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
            \x20   Latency     1.50ms  300.00us   8.00ms   90.00%\n\
            \x20 51234 requests in 5.00s, 7.03MB read\n\
            \x20 Socket errors: connect 0, read 3, write 0, timeout 1\n\
            Non-2xx or 3xx responses: 2\n\
            Requests/sec:  10246.80\nTransfer/sec:      1.41MB\n";
        let w = wrk(out).unwrap();
        assert_eq!(w.requests_per_second, 10246.8);
        assert_eq!(w.requests, 51234.0);
        assert_eq!(w.errors, 6.0);
        assert!(wrk("garbage").is_err());
    }

    #[test]
    fn sockperf_full_rtt() {
        let out = "sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=41175; ReceivedMessages=41175\n\
            sockperf: \x1b[2;35m====> avg-rtt=37.625 (std-dev=214.622)\x1b[0m\n\
            sockperf: \x1b[2;35mTotal 41175 observations\x1b[0m; each percentile contains 411.75 observations\n\
            sockperf: ---> percentile 99.900 = 3968.822\n\
            sockperf: ---> percentile 99.000 =   62.402\n\
            sockperf: ---> percentile 90.000 =   39.879\n";
        let s = sockperf(out).unwrap();
        assert_eq!(s.avg_us, 37.625);
        assert_eq!(s.p99_us, 62.402);
        assert_eq!(s.observations, 41175.0);
    }

    #[test]
    fn dnsperf_summary_and_verbose() {
        let out = "Statistics:\n\n  Queries sent:         174434\n  Queries completed:    174434 (100.00%)\n\
            \x20 Queries lost:         0 (0.00%)\n\n  Run time (s):         2.001965\n\
            \x20 Queries per second:   87131.393406\n\n\
            \x20 Average Latency (s):  0.000865 (min 0.000013, max 0.008570)\n";
        let d = dnsperf(out).unwrap();
        assert_eq!(d.qps, 87131.393406);
        assert_eq!(d.completed, 174434.0);
        assert_eq!(d.lost, 0.0);
        assert!((d.avg_latency_us - 865.0).abs() < 1e-6);

        let v = "[Status] x\n> NOERROR _ssh._tcp.u1.lab.example SRV 0.000169\n\
            > NXDOMAIN nx.ssh.lab.example A 0.000091\n> SERVFAIL u1.ssh.lab.example A 0.000100\n";
        let (lat, bad) = dnsperf_latencies(v);
        assert_eq!(lat.len(), 3);
        assert!((lat[0] - 169.0).abs() < 1e-6);
        assert_eq!(bad, 1);
    }

    #[test]
    fn quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn bpftool_json() {
        let net = r#"[{"xdp":[{"devname":"pub0","ifindex":2,"mode":"driver","id":2136}],"tc":[],"flow_dissector":[]}]"#;
        assert_eq!(bpftool_xdp_prog_id(net).unwrap(), Some(2136));
        let none = r#"[{"xdp":[],"tc":[],"flow_dissector":[]}]"#;
        assert_eq!(bpftool_xdp_prog_id(none).unwrap(), None);
    }

    #[test]
    fn program_cost_line() {
        let out = "running 1 test\nprogram-cost-ns harness=43.5 xdp-ceiling=100.0 srvgate=125.5\ntest ... ok\n";
        let c = program_cost(out).unwrap();
        assert_eq!((c.harness, c.ceiling, c.srvgate), (43.5, 56.5, 82.0));
        assert!(program_cost("test result: ok").is_err());
        assert!(program_cost("program-cost-ns harness=1 srvgate=2").is_err());
        assert!(program_cost("program-cost-ns harness=x xdp-ceiling=1 srvgate=2").is_err());
        let out = "pool-cost-ns harness=70.0 one-backend=190.0 pool16=260.5 pool16-new=870.0\n";
        assert_eq!(
            pool_cost(out).unwrap(),
            PoolCost {
                one_backend: 120.0,
                pool: 190.5,
                pool_new: 800.0
            }
        );
        assert!(pool_cost("pool-cost-ns harness=70 one-backend=1").is_err());
        let shape = pool_shape(
            "x\npool-shape max-mean=1.052 weight-error=0.031 moved-others=94 others=9400\n",
        )
        .unwrap();
        assert_eq!(shape.max_over_mean, 1.052);
        assert_eq!(shape.weight_error, 0.031);
        assert!((shape.others_moved - 0.01).abs() < 1e-12);
        assert!(
            pool_shape("pool-shape max-mean=1 weight-error=0 moved-others=0 others=0").is_err()
        );
        let set = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "netdev",
            "name": "seen", "table": "sgspread", "type": "ipv4_addr", "elem": ["10.210.2.101",
            "10.210.2.116"]}}]}"#;
        assert_eq!(
            nft_set_elements(set).unwrap(),
            ["10.210.2.101", "10.210.2.116"]
        );
        let empty = r#"{"nftables": [{"set": {"name": "seen", "type": "ipv4_addr"}}]}"#;
        assert!(nft_set_elements(empty).unwrap().is_empty());
        assert!(bpftool_xdp_prog_id("Error: no such device").is_err());
        let prog = r#"{"id":2099,"type":"xdp","name":"srvgate","run_time_ns":1563524190,"run_cnt":4417943}"#;
        assert_eq!(bpftool_run_stats(prog).unwrap(), (4417943, 1563524190));
        let never = r#"{"id":2099,"type":"xdp","name":"srvgate"}"#;
        assert_eq!(bpftool_run_stats(never).unwrap(), (0, 0));
    }

    #[test]
    fn counters() {
        let nft =
            "table netdev sgsink {\n\tcounter rx {\n\t\tpackets 1989888 bytes 91534848\n\t}\n}\n";
        assert_eq!(nft_counter_packets(nft).unwrap(), 1989888);
        let eth = "NIC statistics:\n     peer_ifindex: 2\n     tx_queue_0_xdp_xmit: 5756271\n";
        assert_eq!(ethtool_stat(eth, "tx_queue_0_xdp_xmit"), Some(5756271));
        assert_eq!(ethtool_stat(eth, "nope"), None);
    }
}
