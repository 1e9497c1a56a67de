//! Small-packet forwarding: trafgen floods 64-byte UDP frames from the client; the backend
//! counts what arrives; the gateway's CPU per packet comes from its NAPI thread's run time.
//!
//! On veth every hop's receive work runs on whichever CPU sent the frame, so with two cores
//! the generator, the gateway and the sink would share one CPU and nobody's cost could be
//! told apart. For this measurement only, the harness therefore gives the gateway a core of
//! its own:
//!
//! - the gateway's ingress leg `pub0` gets GRO on (so it has a NAPI instance in every mode,
//!   as a real NIC has) and threaded NAPI; that thread is pinned to CPU 0 at SCHED_FIFO 10.
//!   It runs everything the gateway does to a packet: XDP or the kernel's GRO, routing,
//!   netfilter, and the transmit into `priv1`;
//! - backend 1's `eth0` gets threaded NAPI too, pinned to CPU 1 at SCHED_FIFO 10, so that the
//!   sink always keeps up: what the gateway forwards is delivered;
//! - trafgen runs on CPU 1 (normal priority), with what the sink leaves it.
//!
//! "Delivered" means counted by an nftables netdev ingress rule on backend 1's `eth0` (UDP to
//! port 9), which then drops the packet: it reached the backend's NIC, correctly addressed.
//! Gateway CPU per packet = the NAPI thread's on-CPU time (`/proc/PID/schedstat`) / packets
//! delivered, over the same interval. When the gateway's core is not saturated (the
//! generator is the limit), packets per second per gateway core (1e9 / that) is the
//! comparable figure: throughput at equal gateway CPU.

use std::{
    collections::BTreeSet,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use srvgate_tests::{self as lab, CLIENT_IP, PUBLIC_IF};

use super::{modes::Active, parse, wait_until, Bench};

pub struct Pps {
    /// Packets per second delivered to backend 1.
    pub pps: f64,
    /// Gateway NAPI thread nanoseconds per delivered packet.
    pub gw_ns_per_packet: f64,
    /// Share of one core the gateway's NAPI thread used.
    pub gw_core_share: f64,
    /// The XDP program's own run time per packet on the gateway's ingress leg, from the
    /// kernel's BPF statistics; `None` when no XDP program is attached there.
    pub xdp_ns_per_packet: Option<f64>,
}

const GATEWAY_CPU: usize = 0;
const TRAFFIC_CPU: usize = 1;
const RT_PRIORITY: i32 = 10;
const WMEM_DEFAULT: &str = "/proc/sys/net/core/wmem_default";
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// How long the XDP program's own run time is sampled, after the main interval.
const PROG_STATS_SECS: u64 = 1;
/// trafgen's own default: enough socket buffer that a full queue at the gateway does not make
/// its TX ring flush fail with EAGAIN (which trafgen treats as fatal).
const TRAFGEN_WMEM: u64 = 4 << 20;

pub fn measure(b: &mut Bench, _active: &Active, (ip, port): (String, u16)) -> Result<Pps> {
    let lab = b.lab;
    ensure!(
        thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        "the pps measurement needs two CPUs (gateway on one, generator on the other)"
    );
    let mac = lab
        .exec_ok(
            &lab.gw,
            &["cat", &format!("/sys/class/net/{PUBLIC_IF}/address")],
        )?
        .trim()
        .to_string();
    let napi = ThreadedNapi::enable(b)?;

    // 14 + 20 + 8 + 18 = 60 bytes on the veth: a 64-byte frame on a wire (with its FCS).
    // 256 source ports: 256 flows, so conntrack (dnat) holds 256 entries, not one.
    let cfg = format!(
        "cpu({TRAFFIC_CPU}): {{ eth(da={mac}), ipv4(sa={CLIENT_IP}, da={ip}, ttl=64), \
         udp(sp=dinc(1024, 1279), dp={port}), fill(0x00, 18) }}\n"
    );
    let cfg_path = lab.write_file("trafgen.cfg", &cfg)?;
    let cfg_path = cfg_path.display().to_string();
    let cpus = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    let argv = [
        "trafgen",
        "-o",
        "eth0",
        "-P",
        &cpus,
        "--no-sock-mem",
        "--notouch-irq",
        "-n",
        "0",
        "-c",
        &cfg_path,
    ];
    b.note_command(&lab.client, &argv);
    let trafgen = {
        let _wmem = Sysctl::raise_wmem_default(TRAFGEN_WMEM)?;
        let pid = lab.spawn(&lab.client, &argv)?;
        // The socket takes its send buffer size when trafgen creates it, at start.
        thread::sleep(Duration::from_millis(500));
        pid
    };
    let outcome = (|| -> Result<Pps> {
        thread::sleep(Duration::from_millis(700));
        let (d0, n0, t0) = (delivered(b)?, napi.gateway_ns()?, Instant::now());
        thread::sleep(Duration::from_secs(u64::from(b.plan.secs)));
        let (d1, n1, t1) = (delivered(b)?, napi.gateway_ns()?, Instant::now());
        if !lab.is_running(trafgen) {
            let log = lab
                .log_path(trafgen)
                .and_then(|p| fs::read_to_string(p).ok())
                .unwrap_or_default();
            bail!("trafgen stopped during the measurement; its log:\n{log}");
        }
        let secs = (t1 - t0).as_secs_f64();
        let packets = d1.saturating_sub(d0) as f64;
        let ns = n1.saturating_sub(n0) as f64;
        // Sampled after the main interval: the statistics add two clock reads per run,
        // which would otherwise tax the XDP modes' figures above.
        let xdp_ns_per_packet = xdp_prog_ns_per_run(b)?;
        Ok(Pps {
            xdp_ns_per_packet,
            pps: packets / secs,
            gw_ns_per_packet: if packets > 0.0 {
                ns / packets
            } else {
                f64::NAN
            },
            gw_core_share: ns / 1e9 / secs,
        })
    })();
    let stopped = lab.stop(trafgen, Duration::from_secs(3));
    let restored = napi.disable(b);
    let r = outcome?;
    stopped?;
    restored?;
    Ok(r)
}

/// The run time per invocation of the XDP program attached to the gateway's ingress leg,
/// over [`PROG_STATS_SECS`] of the running flood (`kernel.bpf_stats_enabled` on meanwhile).
fn xdp_prog_ns_per_run(b: &Bench) -> Result<Option<f64>> {
    let lab = b.lab;
    let net = lab.exec_ok(&lab.gw, &["bpftool", "-j", "net", "show", "dev", PUBLIC_IF])?;
    let Some(id) = parse::bpftool_xdp_prog_id(&net)? else {
        return Ok(None);
    };
    let id = id.to_string();
    let stats = || -> Result<(u64, u64)> {
        let text = lab.exec_ok(&lab.gw, &["bpftool", "-j", "prog", "show", "id", &id])?;
        parse::bpftool_run_stats(&text)
    };
    let _on = Sysctl::set(BPF_STATS, "1")?;
    let (c0, t0) = stats()?;
    thread::sleep(Duration::from_secs(PROG_STATS_SECS));
    let (c1, t1) = stats()?;
    let runs = c1.saturating_sub(c0);
    ensure!(
        runs > 0,
        "the XDP program {id} on {PUBLIC_IF} did not run during the flood"
    );
    Ok(Some(t1.saturating_sub(t0) as f64 / runs as f64))
}

/// Packets counted by the sink on backend 1.
fn delivered(b: &Bench) -> Result<u64> {
    let text = b.lab.exec_ok(
        &b.lab.b1,
        &["nft", "list", "counter", "netdev", "sgsink", "rx"],
    )?;
    parse::nft_counter_packets(&text)
}

/// Kernel threads named `napi/...` (threaded NAPI), by pid.
fn napi_threads(prefix: &str) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
            if comm.trim_end().starts_with(prefix) {
                set.insert(pid);
            }
        }
    }
    set
}

/// Nanoseconds `pid` has run (first field of /proc/PID/schedstat).
fn run_ns(pid: u32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("parsing /proc/{pid}/schedstat: {text:?}"))
}

fn pin(pid: u32, cpu: usize) -> Result<()> {
    // SAFETY: plain syscalls on a zeroed cpu_set_t and a sched_param we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "pinning thread {pid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
        let param = libc::sched_param {
            sched_priority: RT_PRIORITY,
        };
        if libc::sched_setscheduler(pid as libc::pid_t, libc::SCHED_FIFO, &param) != 0 {
            bail!(
                "making thread {pid} SCHED_FIFO: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Threaded NAPI on the gateway's `pub0` (pinned to CPU 0) and backend 1's `eth0` (CPU 1)
/// for the duration of one pps measurement.
struct ThreadedNapi {
    gateway: BTreeSet<u32>,
    gro_was_on: bool,
}

impl ThreadedNapi {
    fn enable(b: &mut Bench) -> Result<ThreadedNapi> {
        let lab = b.lab;
        let features = lab.exec_ok(&lab.gw, &["ethtool", "-k", PUBLIC_IF])?;
        let gro_was_on = features
            .lines()
            .any(|l| l.trim() == "generic-receive-offload: on");
        let before = napi_threads("napi/");
        b.run(
            &lab.gw,
            &["ethtool", "-K", PUBLIC_IF, "gro", "on"],
            lab::DEFAULT_TIMEOUT,
        )?;
        b.run(
            &lab.gw,
            &[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{PUBLIC_IF}/threaded"),
            ],
            lab::DEFAULT_TIMEOUT,
        )?;
        let mut napi = ThreadedNapi {
            gateway: BTreeSet::new(),
            gro_was_on,
        };
        let prefix = format!("napi/{PUBLIC_IF}-");
        wait_until(Duration::from_secs(3), || {
            napi.gateway = napi_threads(&prefix).difference(&before).copied().collect();
            !napi.gateway.is_empty()
        });
        ensure!(
            !napi.gateway.is_empty(),
            "no threaded NAPI kthread appeared for the gateway's {PUBLIC_IF}"
        );
        let before = napi_threads("napi/");
        b.run(
            &lab.b1,
            &["sh", "-c", "echo 1 > /sys/class/net/eth0/threaded"],
            lab::DEFAULT_TIMEOUT,
        )?;
        let mut sink = BTreeSet::new();
        wait_until(Duration::from_secs(3), || {
            sink = napi_threads("napi/eth0-")
                .difference(&before)
                .copied()
                .collect();
            !sink.is_empty()
        });
        ensure!(
            !sink.is_empty(),
            "no threaded NAPI kthread appeared for backend 1's eth0"
        );
        for &pid in &napi.gateway {
            pin(pid, GATEWAY_CPU)?;
        }
        for &pid in &sink {
            pin(pid, TRAFFIC_CPU)?;
        }
        b.note_command(
            "(root)",
            &["# pin: napi/pub0-* -> CPU 0, napi/eth0-* of backend 1 -> CPU 1, both chrt -f 10"],
        );
        Ok(napi)
    }

    fn gateway_ns(&self) -> Result<u64> {
        self.gateway.iter().map(|&p| run_ns(p)).sum()
    }

    fn disable(self, b: &Bench) -> Result<()> {
        let lab = b.lab;
        lab.sh(
            &lab.gw,
            &format!("echo 0 > /sys/class/net/{PUBLIC_IF}/threaded"),
        )?;
        lab.sh(&lab.b1, "echo 0 > /sys/class/net/eth0/threaded")?;
        if !self.gro_was_on {
            lab.exec_ok(&lab.gw, &["ethtool", "-K", PUBLIC_IF, "gro", "off"])?;
        }
        Ok(())
    }
}

/// A global sysctl (not per network namespace) set for a while; the old value goes back
/// on drop.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Result<Sysctl> {
        let old = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        fs::write(path, value).with_context(|| format!("writing {value} to {path}"))?;
        Ok(Sysctl {
            path,
            old: old.trim().to_string(),
        })
    }

    /// `net.core.wmem_default` at least `to` while trafgen opens its socket.
    fn raise_wmem_default(to: u64) -> Result<Sysctl> {
        let old =
            fs::read_to_string(WMEM_DEFAULT).with_context(|| format!("reading {WMEM_DEFAULT}"))?;
        let current: u64 = old.trim().parse().unwrap_or(0);
        Sysctl::set(WMEM_DEFAULT, &current.max(to).to_string())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(self.path, &self.old) {
            eprintln!("bench: restoring {} to {}: {e}", self.path, self.old);
        }
    }
}
