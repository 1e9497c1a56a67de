//! A network-namespace lab for srvgate's end-to-end tests and for `cargo xtask run`'s demo.
//!
//! [`Lab::new`] builds four namespaces joined by veth pairs, nothing in the root namespace:
//!
//! ```text
//!  sg-TAG-cli                 sg-TAG-gw                           sg-TAG-b1
//!  eth0 10.210.1.2/24 ──── pub0  10.210.1.1/24 (public address)
//!  default via 10.210.1.1     priv1 10.210.2.1/24 ─────────────── eth0 10.210.2.11/24
//!                             priv2 10.210.3.1/24 ──┐             default via 10.210.2.1
//!                             ip_forward=1          │             sg-TAG-b2
//!                                                   └──────────── eth0 10.210.3.12/24
//!                                                                 default via 10.210.3.1
//! ```
//!
//! The endpoints' `eth0` (client and backends) are set like real remote hosts: `tx off` (full
//! checksums, as a wire delivers) and `gro on` (NAPI, so an XDP redirect into the gateway's
//! leg is delivered). The gateway's legs keep veth defaults: srvgate attaches XDP to them.
//! IPv6 is disabled in every lab namespace so that only the IPv4 traffic a test makes
//! crosses the legs. The gateway has no default route: no packet can leave the lab.
//!
//! srvgate pins its maps and XDP links in a BPF filesystem the lab mounts in its temp dir
//! ([`Lab::pin_dir`]): `ip netns exec` gives each command a private /sys, so pins under
//! /sys/fs/bpf would die with the daemon and a restart could not pick them up. Its state
//! directory and control socket live in the temp dir too ([`Lab::state_dir`],
//! [`Lab::socket_path`]), so labs never share them with each other or with the host.
//!
//! Everything the lab starts is tracked and ended by pid when the [`Lab`] is dropped (also
//! when a test panics), then its namespaces are deleted, which removes the veths, and its
//! bpffs is unmounted, which frees whatever srvgate left pinned. SIGINT, SIGTERM and SIGHUP
//! (Ctrl-C, a `kill`, a dropped ssh session) do the same for every lab of the process and
//! then end it (exit status 128 + the signal), whether or not its stdout and stderr still
//! lead anywhere: cleanup never depends on printing. A lab whose process died without
//! either (SIGKILL) leaves `sg-TAG-*` namespaces behind; the next `Lab::new(TAG)` removes
//! them first.
//!
//! Every command the lab runs is bounded by a timeout. Everything here needs root;
//! tests call [`skip_unless_root`] first.

pub mod cluster;
mod lab;
mod netns;
mod process;
mod prometheus;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use lab::*;
pub use netns::*;
pub use process::*;
pub use prometheus::*;

/// The gateway's public address (on `pub0`); routes are reached at `PUBLIC_IP:port`.
pub const PUBLIC_IP: &str = "10.210.1.1";
/// The client's address (on the client's `eth0`).
pub const CLIENT_IP: &str = "10.210.1.2";
/// The gateway's address on `priv1`, backend 1's default gateway.
pub const GW_PRIV1_IP: &str = "10.210.2.1";
/// The gateway's address on `priv2`, backend 2's default gateway.
pub const GW_PRIV2_IP: &str = "10.210.3.1";
/// Backend 1's address.
pub const B1_IP: &str = "10.210.2.11";
/// Backend 2's address.
pub const B2_IP: &str = "10.210.3.12";
/// The gateway's public leg.
pub const PUBLIC_IF: &str = "pub0";
/// The far host of [`Lab::add_far_host`], its network, and the client namespace's address
/// on that network.
pub const FAR_IP: &str = "10.210.9.2";
pub const FAR_GW_IP: &str = "10.210.9.1";
pub const FAR_NET: &str = "10.210.9.0";
/// The gateway's private legs, toward backend 1 and backend 2.
pub const PRIVATE_IFS: [&str; 2] = ["priv1", "priv2"];
/// Where [`config_toml`] makes srvgate serve metrics (inside the gateway namespace).
pub const METRICS_ADDR: &str = "127.0.0.1:9110";
/// The bound of every command the lab runs unless a caller gives its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Lab::start_srvgate`] waits for the daemon's `ready` line.
pub const SRVGATE_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The `srvgate` binary under test: `$SRVGATE_BIN` if set, else
/// `<workspace>/target/release/srvgate`.
pub fn srvgate_bin() -> PathBuf {
    match std::env::var_os("SRVGATE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/release/srvgate"),
    }
}

/// Whether this process runs as root (effective uid 0), which the lab needs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The environment variable that makes every skip a failure. `cargo xtask test` (which CI's
/// `.ci/run` calls) sets it to `1` for the workspace tests: CI runs as root with every
/// program installed, so a test that would skip there has lost its premise and must say so
/// instead of counting as passed.
pub const SKIPS_FAIL_ENV: &str = "SRVGATE_SKIPS_FAIL";

/// Whether [`SKIPS_FAIL_ENV`] is set (to anything but empty or `0`).
pub fn skips_fail() -> bool {
    std::env::var_os(SKIPS_FAIL_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The one way a test skips: prints `skipped: TEST: REASON` and returns, or panics with the
/// same words when [`skips_fail`]. Every test of the workspace that cannot run here (not
/// root, a program or kernel feature missing) calls it, then returns.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !skips_fail(),
        "{test} cannot run: {reason} (and {SKIPS_FAIL_ENV} is set, so a skip is a failure)"
    );
    println!("skipped: {test}: {reason}");
}

/// Returns `true` (after [`skip`]) when `test` must be skipped because this process is not
/// root. Use at the top of a test: `if skip_unless_root("name") { return; }`.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    skip(
        test,
        "needs root (it builds network namespaces, veths and attaches XDP; run the tests \
         as root, e.g. `sudo -E cargo test -p srvgate-tests`)",
    );
    true
}

/// A UDP echo service for `python3 -c`: on port `argv[1]` it answers every datagram to
/// its sender and prints the sender (`ADDR PORT`, one line each), for `argv[2]` seconds or
/// `argv[3]` datagrams, whichever ends first. A test counts the lines or reads them.
pub const UDP_ECHO: &str = r#"import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
end = time.monotonic() + float(sys.argv[2])
n = 0
while n < int(sys.argv[3]):
    left = end - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        break
    n += 1
    print(peer[0], peer[1], flush=True)
    s.sendto(data, peer)
"#;

/// One route of a lab config, see [`config_toml`].
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub name: String,
    pub service: String,
    /// `"tcp"` or `"udp"`.
    pub protocol: String,
    /// `address:port` of the backend.
    pub backend: String,
    /// Public port on [`PUBLIC_IP`].
    pub port: u16,
}

impl RouteSpec {
    pub fn tcp(name: &str, service: &str, backend: &str, port: u16) -> Self {
        Self::new(name, service, "tcp", backend, port)
    }
    pub fn udp(name: &str, service: &str, backend: &str, port: u16) -> Self {
        Self::new(name, service, "udp", backend, port)
    }
    pub fn new(name: &str, service: &str, protocol: &str, backend: &str, port: u16) -> Self {
        RouteSpec {
            name: name.into(),
            service: service.into(),
            protocol: protocol.into(),
            backend: backend.into(),
            port,
        }
    }
}

/// The srvgate config of the lab's gateway: public `pub0` (10.210.1.1), private `priv1` and
/// `priv2`, port range 30000-32767, DNS zone `lab.example` on 10.210.1.1:53, metrics on
/// [`METRICS_ADDR`], and `routes`. Released ports go straight back to the pool
/// (`port_cooldown = "0s"`): the tests that want the cool-down set it.
pub fn config_toml(routes: &[RouteSpec]) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        r#"[gateway]
public_interface = "{PUBLIC_IF}"
private_interfaces = ["{}", "{}"]
public_ipv4 = "{PUBLIC_IP}"
port_range = "30000-32767"
port_cooldown = "0s"

[dns]
zone = "lab.example"
listen = ["{PUBLIC_IP}:53"]
gateway_name = "gw"
ttl = 30

[metrics]
listen = "{METRICS_ADDR}"
"#,
        PRIVATE_IFS[0], PRIVATE_IFS[1]
    );
    for r in routes {
        let _ = write!(
            s,
            "\n[[route]]\nname = \"{}\"\nservice = \"{}\"\nprotocol = \"{}\"\nbackend = \"{}\"\nport = {}\n",
            r.name, r.service, r.protocol, r.backend, r.port
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Instant};

    use super::*;

    #[test]
    fn parses_prometheus_samples() {
        let text = "# HELP x y\n# TYPE srvgate_route_packets_total counter\n\
            srvgate_route_packets_total{name=\"alice\",service=\"ssh\",protocol=\"tcp\",port=\"30001\",direction=\"inbound\"} 42\n\
            srvgate_route_packets_total{name=\"alice\",service=\"ssh\",protocol=\"tcp\",port=\"30001\",direction=\"outbound\"} 40\n\
            srvgate_routes 3\n\
            weird{a=\"x\\\"y,}\"} 1.5e3\n";
        assert_eq!(
            metric_value(
                text,
                "srvgate_route_packets_total",
                &[("name", "alice"), ("direction", "outbound")]
            ),
            Some(40.0)
        );
        assert_eq!(metric_value(text, "srvgate_routes", &[]), Some(3.0));
        assert_eq!(
            metric_value(text, "weird", &[("a", "x\"y,}")]),
            Some(1500.0)
        );
        assert_eq!(metric_sum(text, "srvgate_route_packets_total", &[]), 82.0);
        assert_eq!(metric_value(text, "srvgate_routes", &[("a", "b")]), None);
    }

    #[test]
    fn parses_snmp_counters() {
        let text = "Ip: Forwarding DefaultTTL InReceives ForwDatagrams\nIp: 1 64 100 7\n\
                    Udp: InDatagrams InCsumErrors\nUdp: 5 0\n\
                    TcpExt: SyncookiesSent ListenDrops\nTcpExt: 0 3\n";
        assert_eq!(parse_snmp(text, "IpForwDatagrams"), Some(7));
        assert_eq!(parse_snmp(text, "UdpInDatagrams"), Some(5));
        assert_eq!(parse_snmp(text, "TcpExtListenDrops"), Some(3));
        assert_eq!(parse_snmp(text, "IpNope"), None);
    }

    #[test]
    fn ready_is_a_word() {
        assert!(log_says_ready("2026 INFO srvgate ready routes=4"));
        assert!(!log_says_ready("another XDP program is already attached"));
    }

    #[test]
    fn config_has_routes() {
        let c = config_toml(&[RouteSpec::udp("alice", "iperf", "10.210.2.11:5201", 30003)]);
        assert!(c.contains("public_ipv4 = \"10.210.1.1\""));
        assert!(c.contains("protocol = \"udp\""));
        assert!(c.contains("port = 30003"));
    }

    #[test]
    fn runs_with_a_bound() {
        let t = Instant::now();
        let r = run_with_timeout(Command::new("sleep").arg("5"), Duration::from_millis(200));
        assert!(r.is_err());
        assert!(t.elapsed() < Duration::from_secs(3));
        let out = run_with_timeout(Command::new("echo").arg("hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    }
}
