//! The gateway modes, the backends' servers, and the TCP measurements (iperf3, wrk,
//! sockperf) that every mode runs the same way.

use std::{collections::BTreeMap, fmt, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use srvgate_tests::{self as lab, RouteSpec, B1_IP, PRIVATE_IFS, PUBLIC_IF, PUBLIC_IP};

use super::{parse, wait_until, Bench};

/// Ports on backend 1 (10.210.2.11).
pub const SINK_PORT: u16 = 9;
pub const IPERF_PORT: u16 = 5201;
pub const HTTP_PORT: u16 = 8080;
pub const RR_PORT: u16 = 11111;

/// Public ports on the gateway (10.210.1.1) in the modes that translate.
pub const PUB_SINK: u16 = 30009;
pub const PUB_IPERF: u16 = 30201;
pub const PUB_HTTP: u16 = 30080;
pub const PUB_RR: u16 = 30111;

/// Members of the pool modes' pools, all on backend 1 (its own address and this many
/// more: [`pool_member_ip`]), each service on each of them.
pub const POOL_MEMBERS: u8 = 16;

/// Pool member `i`'s address (`0..POOL_MEMBERS`): secondary addresses of backend 1's NIC,
/// so that every member is a neighbour of its own to the gateway, as 16 hosts would be,
/// while the sink and the servers stay one set.
pub fn pool_member_ip(i: u8) -> String {
    format!("10.210.2.{}", 101 + u16::from(i))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Route,
    Dnat,
    Haproxy,
    Srvgate,
    XdpCeiling,
    /// srvgate with every route a pool of [`POOL_MEMBERS`] backends (Maglev in XDP).
    SrvgatePool,
    /// nftables DNAT spreading new connections over the same pool (`numgen inc mod 16`).
    NftablesPool,
    /// haproxy `balance roundrobin` (TCP) over the same pool.
    HaproxyPool,
    /// srvgate as built from `--baseline REV`: the other half of a same-run A/B.
    Baseline,
}

impl Mode {
    pub const ALL: [Mode; 8] = [
        Mode::Route,
        Mode::Dnat,
        Mode::Haproxy,
        Mode::Srvgate,
        Mode::XdpCeiling,
        Mode::SrvgatePool,
        Mode::NftablesPool,
        Mode::HaproxyPool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Route => "route",
            Mode::Dnat => "dnat",
            Mode::Haproxy => "haproxy",
            Mode::Srvgate => "srvgate",
            Mode::XdpCeiling => "xdp-ceiling",
            Mode::SrvgatePool => "srvgate-pool",
            Mode::NftablesPool => "nftables-pool",
            Mode::HaproxyPool => "haproxy-pool",
            Mode::Baseline => "baseline",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL
            .into_iter()
            .chain([Mode::Baseline])
            .find(|m| m.name() == s)
    }

    pub fn description(self) -> &'static str {
        match self {
            Mode::Route => "no NAT: client to the backend's address through the gateway's kernel router",
            Mode::Dnat => "nftables DNAT (prerouting, conntrack) on the gateway",
            Mode::Haproxy => "haproxy 2.6 in TCP mode on the gateway (default threads); no UDP",
            Mode::Srvgate => "srvgate run, XDP in native mode on every gateway leg",
            Mode::XdpCeiling => "lb-ebpf's xdp-ceiling (fib lookup, MACs, TTL, redirect; no NAT) on every gateway leg",
            Mode::SrvgatePool => "srvgate run, every route a pool of 16 backends (16 addresses of backend 1), Maglev and the flow LRU in XDP",
            Mode::NftablesPool => "nftables DNAT over the same 16 backends, `dnat ip addr . port to numgen inc mod 16 map { … }` (conntrack keeps each flow on its backend)",
            Mode::HaproxyPool => "haproxy 2.6 in TCP mode, `balance roundrobin` over the same 16 backends; no UDP",
            Mode::Baseline => "srvgate run as built from the baseline revision (see Machine), configured and measured exactly as `srvgate`",
        }
    }

    /// Whether this mode runs a `srvgate` daemon (the working tree's or the baseline's).
    pub fn is_srvgate(self) -> bool {
        matches!(self, Mode::Srvgate | Mode::Baseline | Mode::SrvgatePool)
    }

    /// Whether this mode spreads each service over the pool of [`POOL_MEMBERS`].
    pub fn is_pool(self) -> bool {
        matches!(
            self,
            Mode::SrvgatePool | Mode::NftablesPool | Mode::HaproxyPool
        )
    }

    /// Whether this mode forwards only TCP.
    pub fn tcp_only(self) -> bool {
        matches!(self, Mode::Haproxy | Mode::HaproxyPool)
    }

    /// Whether the client addresses the backend itself (no translation) in this mode.
    fn direct(self) -> bool {
        matches!(self, Mode::Route | Mode::XdpCeiling)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Backend 1's servers and sink, started once for the whole run; the client's port range.
pub fn start_backends(b: &mut Bench) -> Result<()> {
    let lab = b.lab;
    // The pool modes' members: more addresses of backend 1.
    for i in 0..POOL_MEMBERS {
        let addr = format!("{}/24", pool_member_ip(i));
        b.run(
            &lab.b1,
            &["ip", "addr", "add", &addr, "dev", "eth0"],
            lab::DEFAULT_TIMEOUT,
        )?;
    }
    // The UDP sink: count then drop at the backend's ingress, before IP (cheap, and ARP and
    // everything else still pass).
    let sink = format!(
        "table netdev sgsink {{\n  counter rx {{ }}\n  chain in {{\n    \
         type filter hook ingress device \"eth0\" priority 0; policy accept;\n    \
         ip protocol udp udp dport {SINK_PORT} counter name \"rx\" drop\n  }}\n}}\n"
    );
    let sink_file = lab.write_file("sink.nft", &sink)?;
    b.run(
        &lab.b1,
        &["nft", "-f", &sink_file.display().to_string()],
        lab::DEFAULT_TIMEOUT,
    )?;
    lab.start_iperf3_server(&lab.b1, IPERF_PORT)?;
    b.note_command(&lab.b1, &["iperf3", "-s", "-p", &IPERF_PORT.to_string()]);

    let dir = lab.dir().display().to_string();
    // The second server answers TCP on the sink's port, so that srvgate's default health
    // check of the UDP pool's members (a TCP connect) finds them up.
    let nginx = format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  server {{\n    listen {HTTP_PORT} backlog=4096;\n    \
         location / {{ return 200 \"ok\\n\"; }}\n  }}\n  \
         server {{\n    listen {SINK_PORT};\n    return 444;\n  }}\n}}\n"
    );
    let conf = lab.write_file("nginx.conf", &nginx)?;
    let conf = conf.display().to_string();
    let argv = ["nginx", "-p", &dir, "-c", &conf, "-e", "stderr"];
    let pid = lab.spawn(&lab.b1, &argv)?;
    b.note_command(&lab.b1, &argv);
    lab.wait_listening(&lab.b1, pid, HTTP_PORT, Duration::from_secs(10))
        .context("nginx on backend 1")?;

    let port = RR_PORT.to_string();
    // Every address: the pool members are backend 1's other addresses.
    let argv = ["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", &port];
    let pid = lab.spawn(&lab.b1, &argv)?;
    b.note_command(&lab.b1, &argv);
    lab.wait_listening(&lab.b1, pid, RR_PORT, Duration::from_secs(10))
        .context("sockperf server on backend 1")?;

    // wrk opens one connection per request: give the client every port.
    lab.exec_ok(
        &lab.client,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    )?;
    Ok(())
}

/// A mode while it is configured on the gateway.
pub struct Active {
    pub mode: Mode,
    haproxy: Option<u32>,
    ceiling_xmit_before: u64,
}

impl Active {
    pub fn start(b: &mut Bench, mode: Mode) -> Result<Active> {
        let lab = b.lab;
        let mut active = Active {
            mode,
            haproxy: None,
            ceiling_xmit_before: 0,
        };
        if mode.is_pool() {
            watch_spread(b)?;
        }
        match mode {
            Mode::Route => {}
            Mode::Dnat => {
                let mut rules = String::from(
                    "table ip sgbench {\n  chain prerouting {\n    \
                     type nat hook prerouting priority dstnat; policy accept;\n",
                );
                for (proto, public, port) in forwarded() {
                    rules.push_str(&format!(
                        "    ip daddr {PUBLIC_IP} {proto} dport {public} counter dnat to {B1_IP}:{port}\n"
                    ));
                }
                rules.push_str("  }\n}\n");
                let f = lab.write_file("dnat.nft", &rules)?;
                b.run(
                    &lab.gw,
                    &["nft", "-f", &f.display().to_string()],
                    lab::DEFAULT_TIMEOUT,
                )?;
            }
            Mode::Haproxy => {
                let mut cfg = String::from(
                    "global\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                     timeout client 60s\n  timeout server 60s\n",
                );
                for (proto, public, port) in forwarded() {
                    if proto == "tcp" {
                        cfg.push_str(&format!(
                            "\nlisten p{public}\n  bind {PUBLIC_IP}:{public}\n  server b1 {B1_IP}:{port}\n"
                        ));
                    }
                }
                let f = lab.write_file("haproxy.cfg", &cfg)?;
                let f = f.display().to_string();
                let argv = ["haproxy", "-db", "-f", &f];
                let pid = lab.spawn(&lab.gw, &argv)?;
                b.note_command(&lab.gw, &argv);
                active.haproxy = Some(pid);
                lab.wait_listening(&lab.gw, pid, PUB_IPERF, Duration::from_secs(10))
                    .context("haproxy on the gateway")?;
            }
            Mode::NftablesPool => {
                let mut rules = String::from(
                    "table ip sgbench {\n  chain prerouting {\n    \
                     type nat hook prerouting priority dstnat; policy accept;\n",
                );
                for (proto, public, port) in forwarded() {
                    let map: Vec<String> = (0..POOL_MEMBERS)
                        .map(|i| format!("{i} : {} . {port}", pool_member_ip(i)))
                        .collect();
                    rules.push_str(&format!(
                        "    ip daddr {PUBLIC_IP} {proto} dport {public} counter \
                         dnat ip addr . port to numgen inc mod {POOL_MEMBERS} map {{ {} }}\n",
                        map.join(", ")
                    ));
                }
                rules.push_str("  }\n}\n");
                let f = lab.write_file("dnat-pool.nft", &rules)?;
                b.run(
                    &lab.gw,
                    &["nft", "-f", &f.display().to_string()],
                    lab::DEFAULT_TIMEOUT,
                )?;
            }
            Mode::HaproxyPool => {
                let mut cfg = String::from(
                    "global\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                     timeout client 60s\n  timeout server 60s\n",
                );
                for (proto, public, port) in forwarded() {
                    if proto == "tcp" {
                        cfg.push_str(&format!(
                            "\nlisten p{public}\n  bind {PUBLIC_IP}:{public}\n  balance roundrobin\n"
                        ));
                        for i in 0..POOL_MEMBERS {
                            cfg.push_str(&format!("  server m{i} {}:{port}\n", pool_member_ip(i)));
                        }
                    }
                }
                let f = lab.write_file("haproxy-pool.cfg", &cfg)?;
                let f = f.display().to_string();
                let argv = ["haproxy", "-db", "-f", &f];
                let pid = lab.spawn(&lab.gw, &argv)?;
                b.note_command(&lab.gw, &argv);
                active.haproxy = Some(pid);
                lab.wait_listening(&lab.gw, pid, PUB_IPERF, Duration::from_secs(10))
                    .context("haproxy on the gateway")?;
            }
            Mode::Srvgate | Mode::Baseline | Mode::SrvgatePool => {
                let bin = if mode == Mode::Baseline {
                    b.baseline
                        .clone()
                        .context("mode baseline needs --baseline REV")?
                } else {
                    b.srvgate.clone()
                };
                // The lab starts `$SRVGATE_BIN`; the bench runs one mode at a time and no
                // other thread reads the environment meanwhile.
                std::env::set_var("SRVGATE_BIN", &bin);
                let routes: Vec<RouteSpec> = forwarded()
                    .into_iter()
                    .map(|(proto, public, port)| {
                        RouteSpec::new(
                            "bench",
                            &format!("p{port}"),
                            proto,
                            &format!("{B1_IP}:{port}"),
                            public,
                        )
                    })
                    .collect();
                let text = if mode == Mode::SrvgatePool {
                    pool_config()
                } else {
                    lab::config_toml(&routes)
                };
                let name = if mode == Mode::SrvgatePool {
                    "srvgate-pool.toml"
                } else {
                    "srvgate.toml"
                };
                let cfg = lab.write_file(name, &text)?;
                let shown_bin = match mode {
                    Mode::Baseline => bin.display().to_string(),
                    _ => "srvgate".to_string(),
                };
                let mut argv = vec![
                    shown_bin,
                    "run".into(),
                    "--config".into(),
                    cfg.display().to_string(),
                ];
                argv.extend(b.srvgate_extra_args.iter().cloned());
                let shown: Vec<&str> = argv.iter().map(String::as_str).collect();
                b.note_command(&lab.gw, &shown);
                let extra: Vec<&str> = b.srvgate_extra_args.iter().map(String::as_str).collect();
                lab.start_srvgate(&cfg, &extra)?;
            }
            Mode::XdpCeiling => {
                let obj = b.xdp_ceiling.display().to_string();
                for dev in legs() {
                    b.run(
                        &lab.gw,
                        &[
                            "ip",
                            "link",
                            "set",
                            "dev",
                            dev,
                            "xdpdrv",
                            "obj",
                            &obj,
                            "sec",
                            "xdp.frags",
                        ],
                        lab::DEFAULT_TIMEOUT,
                    )?;
                }
                active.ceiling_xmit_before = xdp_xmit(b)?;
            }
        }
        Ok(active)
    }

    /// Where the client sends each kind of traffic in this mode.
    pub fn target(&self, backend_port: u16) -> (String, u16) {
        if self.mode.direct() {
            return (B1_IP.to_string(), backend_port);
        }
        let public = forwarded()
            .into_iter()
            .find(|(_, _, port)| *port == backend_port)
            .map(|(_, public, _)| public)
            .expect("every backend port has a public port");
        (PUBLIC_IP.to_string(), public)
    }

    pub fn udp_target(&self) -> Option<(String, u16)> {
        (!self.mode.tcp_only()).then(|| self.target(SINK_PORT))
    }

    /// srvgate's XDP verdict counters by verdict, summed over legs (other modes: none), so
    /// that a measurement can say which paths its packets took.
    pub fn verdicts(&self, b: &Bench) -> Result<BTreeMap<String, f64>> {
        let mut by_verdict = BTreeMap::new();
        if self.mode.is_srvgate() {
            for s in lab::parse_metrics(&b.lab.metrics()?) {
                if s.name == "srvgate_xdp_verdicts_total" {
                    if let Some(v) = s.labels.get("verdict") {
                        *by_verdict.entry(v.clone()).or_default() += s.value;
                    }
                }
            }
        }
        Ok(by_verdict)
    }

    /// Proof that the mode's own path carried the traffic, not a fallback.
    pub fn check_path(&self, b: &Bench) -> Result<()> {
        let lab = b.lab;
        match self.mode {
            Mode::Srvgate | Mode::Baseline | Mode::SrvgatePool => {
                let text = lab.metrics()?;
                let redirected = lab::metric_sum(
                    &text,
                    "srvgate_xdp_verdicts_total",
                    &[("verdict", "fwd_redirect")],
                );
                let total = lab::metric_sum(&text, "srvgate_xdp_verdicts_total", &[]);
                println!(
                    "   {}: {redirected:.0} of {total:.0} packets seen by XDP were redirected",
                    self.mode
                );
                ensure!(
                    redirected > 0.0 && redirected >= 0.5 * total,
                    "srvgate's XDP program redirected {redirected} of {total} packets: \
                     traffic went through the kernel instead"
                );
            }
            Mode::XdpCeiling => {
                let sent = xdp_xmit(b)?.saturating_sub(self.ceiling_xmit_before);
                println!("   xdp-ceiling: {sent} frames redirected into priv1");
                ensure!(sent > 0, "xdp-ceiling redirected nothing into priv1");
            }
            Mode::Dnat | Mode::NftablesPool => {
                let text = lab.exec_ok(&lab.gw, &["nft", "list", "table", "ip", "sgbench"])?;
                let hits: u64 = text
                    .lines()
                    .filter(|l| l.contains("dnat to"))
                    .filter_map(|l| parse::nft_counter_packets(l).ok())
                    .sum();
                ensure!(hits > 0, "the DNAT rules matched nothing:\n{text}");
            }
            Mode::Route | Mode::Haproxy | Mode::HaproxyPool => {}
        }
        if self.mode.is_pool() {
            self.check_spread(b)?;
        }
        Ok(())
    }

    /// Proof that a pool mode spread its traffic: every member received some.
    fn check_spread(&self, b: &Bench) -> Result<()> {
        let text = b.lab.exec_ok(
            &b.lab.b1,
            &["nft", "-j", "list", "set", "netdev", SPREAD_TABLE, "seen"],
        )?;
        let got = parse::nft_set_elements(&text)?;
        let seen = (0..POOL_MEMBERS)
            .filter(|&i| got.contains(&pool_member_ip(i)))
            .count();
        println!(
            "   {}: {seen} of {POOL_MEMBERS} pool members received traffic",
            self.mode
        );
        ensure!(
            seen == usize::from(POOL_MEMBERS),
            "{}: only {seen} of the pool's {POOL_MEMBERS} members received traffic:\n{text}",
            self.mode
        );
        Ok(())
    }

    pub fn stop(self, b: &mut Bench) -> Result<()> {
        let lab = b.lab;
        if self.mode.is_pool() {
            lab.exec_ok(&lab.b1, &["nft", "delete", "table", "netdev", SPREAD_TABLE])?;
        }
        match self.mode {
            Mode::Route => {}
            Mode::Dnat | Mode::NftablesPool => {
                lab.exec_ok(&lab.gw, &["nft", "delete", "table", "ip", "sgbench"])?;
            }
            Mode::Haproxy | Mode::HaproxyPool => {
                if let Some(pid) = self.haproxy {
                    lab.stop(pid, Duration::from_secs(5))?;
                }
            }
            Mode::Srvgate | Mode::Baseline | Mode::SrvgatePool => {
                let status = lab.stop_srvgate()?;
                ensure!(
                    status.success(),
                    "srvgate exited with {status} on SIGTERM; its log:\n{}",
                    lab.srvgate_log()
                );
            }
            Mode::XdpCeiling => {
                for dev in legs() {
                    lab.exec_ok(&lab.gw, &["ip", "link", "set", "dev", dev, "xdpdrv", "off"])?;
                }
            }
        }
        // The next mode needs bare legs.
        for dev in legs() {
            let clear = wait_until(Duration::from_secs(5), || {
                !lab.xdp_attached(&lab.gw, dev).unwrap_or(true)
            });
            if !clear {
                bail!(
                    "an XDP program is still attached to {dev} after stopping {}",
                    self.mode
                );
            }
        }
        Ok(())
    }
}

/// Backend 1's table that records which pool members received packets (a pool mode's
/// [`Active::check_spread`]), before the sink drops them.
const SPREAD_TABLE: &str = "sgspread";

/// Starts recording which pool members receive packets, from empty.
fn watch_spread(b: &mut Bench) -> Result<()> {
    let lab = b.lab;
    let rules = format!(
        "table netdev {SPREAD_TABLE} {{\n  set seen {{ type ipv4_addr; size 64; flags dynamic; }}\n  \
         chain in {{\n    type filter hook ingress device \"eth0\" priority -10; policy accept;\n    \
         ip daddr {}-{} add @seen {{ ip daddr }}\n  }}\n}}\n",
        pool_member_ip(0),
        pool_member_ip(POOL_MEMBERS - 1)
    );
    let f = lab.write_file("spread.nft", &rules)?;
    b.run(
        &lab.b1,
        &["nft", "-f", &f.display().to_string()],
        lab::DEFAULT_TIMEOUT,
    )?;
    Ok(())
}

/// The gateway's srvgate config in mode `srvgate-pool`: the lab's, with every service a
/// route whose pool is the [`POOL_MEMBERS`] members on the service's port.
fn pool_config() -> String {
    let mut s = lab::config_toml(&[]);
    for (proto, public, port) in forwarded() {
        let members: Vec<String> = (0..POOL_MEMBERS)
            .map(|i| format!("\"{}:{port}\"", pool_member_ip(i)))
            .collect();
        s.push_str(&format!(
            "\n[[route]]\nname = \"bench\"\nservice = \"p{port}\"\nprotocol = \"{proto}\"\n\
             backends = [{}]\nport = {public}\n",
            members.join(", ")
        ));
    }
    s
}

/// (protocol, public port, backend port) of every service the modes forward.
fn forwarded() -> Vec<(&'static str, u16, u16)> {
    vec![
        ("udp", PUB_SINK, SINK_PORT),
        ("tcp", PUB_IPERF, IPERF_PORT),
        ("tcp", PUB_HTTP, HTTP_PORT),
        ("tcp", PUB_RR, RR_PORT),
    ]
}

fn legs() -> [&'static str; 3] {
    [PUBLIC_IF, PRIVATE_IFS[0], PRIVATE_IFS[1]]
}

/// Frames redirected by XDP into `priv1` (veth's `tx_queue_0_xdp_xmit`).
fn xdp_xmit(b: &Bench) -> Result<u64> {
    let text = b
        .lab
        .exec_ok(&b.lab.gw, &["ethtool", "-S", PRIVATE_IFS[0]])?;
    Ok(parse::ethtool_stat(&text, "tx_queue_0_xdp_xmit").unwrap_or(0))
}

/// iperf3 from the client to backend 1's iperf3 server, through the mode.
pub fn iperf3(b: &mut Bench, active: &Active, streams: u32) -> Result<parse::Iperf> {
    let (ip, port) = active.target(IPERF_PORT);
    let port = port.to_string();
    let secs = b.plan.secs.to_string();
    let omit = b.plan.omit_secs.to_string();
    let p = streams.to_string();
    let argv = [
        "iperf3", "-c", &ip, "-p", &port, "-t", &secs, "-O", &omit, "-P", &p, "-J",
    ];
    let timeout = Duration::from_secs(u64::from(b.plan.secs + b.plan.omit_secs) + 20);
    let lab = b.lab;
    let out = b.run(&lab.client, &argv, timeout);
    parse::iperf3_json(&out?)
}

/// Short connections per second: wrk with `Connection: close` against nginx on backend 1.
pub fn wrk(b: &mut Bench, active: &Active) -> Result<parse::Wrk> {
    let (ip, port) = active.target(HTTP_PORT);
    let url = format!("http://{ip}:{port}/");
    let secs = format!("{}s", b.plan.secs);
    let conns = if b.plan.name == "smoke" { "8" } else { "32" };
    let argv = [
        "wrk",
        "-t1",
        "-c",
        conns,
        "-d",
        &secs,
        "--timeout",
        "2s",
        "-H",
        "Connection: close",
        &url,
    ];
    let timeout = Duration::from_secs(u64::from(b.plan.secs) + 20);
    let lab = b.lab;
    let out = b.run(&lab.client, &argv, timeout)?;
    parse::wrk(&out)
}

/// Request/response latency: sockperf TCP ping-pong (full round trips) to backend 1.
pub fn sockperf(b: &mut Bench, active: &Active) -> Result<parse::Sockperf> {
    let (ip, port) = active.target(RR_PORT);
    let port = port.to_string();
    let secs = b.plan.latency_secs.to_string();
    let argv = [
        "sockperf",
        "ping-pong",
        "--tcp",
        "-i",
        &ip,
        "-p",
        &port,
        "-t",
        &secs,
        "--full-rtt",
    ];
    let timeout = Duration::from_secs(u64::from(b.plan.latency_secs) + 20);
    let lab = b.lab;
    let out = b.run_all(&lab.client, &argv, timeout)?;
    parse::sockperf(&out)
}
