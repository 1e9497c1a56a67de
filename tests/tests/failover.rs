//! The public address fails over (issue 15): two gateways of the cluster lab (see
//! `srvgate_tests::cluster`), each running srvgate and a real keepalived (VRRPv3, the public
//! and the private virtual address as one sync group, sub-second adverts). Both srvgates
//! start as standbys, without the address they serve and with their DNS bound to it. An ssh
//! session and an iperf3 stream run through gateway 1; gateway 1 then dies (unplugged from
//! both switches, srvgate SIGKILLed, keepalived stopped): both connections must complete
//! through gateway 2, and the stream's longest gap is printed and bounded. Gateway 2's DNS
//! then answers on the address it took over.
//!
//! A route's pool (issue 26) fails over too: long-lived connections spread over a
//! two-backend pool each stay on their backend through gateway 2, which holds no state of
//! gateway 1's: its choice is a function of the pool and of health both gateways agree on.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use srvgate_tests::cluster::*;

/// VRRP advert interval (seconds): VRRPv3 counts in centiseconds. A backup takes over
/// after 3 adverts missed plus its skew ((256 - priority) / 256 of an interval).
const ADVERT_INT: &str = "0.05";

/// The keepalived config of gateway `n` (0 or 1); the book's example (admin/failover.md) is
/// this one.
fn keepalived_conf(n: usize) -> String {
    let priority = [150, 100][n];
    let instance = |name: &str, dev: &str, vrid: u8, vip: &str| {
        format!(
            "vrrp_instance {name} {{
    state BACKUP
    interface {dev}
    virtual_router_id {vrid}
    priority {priority}
    advert_int {ADVERT_INT}
    virtual_ipaddress {{
        {vip}/24 dev {dev}
    }}
}}
"
        )
    };
    format!(
        "global_defs {{
    router_id sg-gw{}
    vrrp_version 3
    # Gratuitous ARPs: a burst at once on becoming master, another a second later.
    vrrp_garp_master_repeat 3
    vrrp_garp_master_delay 1
}}
vrrp_sync_group SRVGATE {{
    group {{
        PUBLIC
        PRIVATE
    }}
}}
{}{}",
        n + 1,
        instance("PUBLIC", "pub0", 51, VIP),
        instance("PRIVATE", "priv1", 52, VIP_PRIVATE),
    )
}

/// Prefixes each line of stdin with the monotonic time it arrived.
const STAMP: &str = r#"python3 -u -c 'import sys, time
for l in sys.stdin: print("%.4f %s" % (time.monotonic(), l), end="", flush=True)'"#;

/// Where each gateway serves Prometheus metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9110";

/// Gateway `n`'s counter of the XDP verdict `verdict`.
fn verdicts(lab: &ClusterLab, n: usize, verdict: &str) -> u64 {
    let url = format!("http://{METRICS}/metrics");
    let text = lab
        .exec_ok(&lab.gws[n], &["curl", "-fsS", "--max-time", "3", &url])
        .unwrap();
    let sample = format!("srvgate_xdp_verdicts_total{{verdict=\"{verdict}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&sample))
        .unwrap_or_else(|| panic!("no {sample} in gw{}'s metrics:\n{text}", n + 1))
        .parse()
        .unwrap()
}

/// Packets gateway `n` translated for any route, both ways.
fn translated(lab: &ClusterLab, n: usize) -> u64 {
    let out = lab.ctl_ok(n, &["route", "ls", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["inbound_packets"].as_u64().unwrap() + r["outbound_packets"].as_u64().unwrap())
        .sum()
}

/// Waits up to `limit` for `f`; how long it took.
fn wait_for(
    what: &str,
    lab: &ClusterLab,
    limit: Duration,
    mut f: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what}: not after {limit:?}\n{}",
            lab.logs()
        );
        thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// From iperf3's JSON (`-J -i 0.1`): the (start, end) of each interval and its bytes.
fn intervals(json: &str) -> Vec<(f64, f64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("iperf3's output is no JSON ({e}):\n{json}"));
    if let Some(e) = v["error"].as_str() {
        panic!("iperf3 failed: {e}");
    }
    v["intervals"]
        .as_array()
        .expect("iperf3's intervals")
        .iter()
        .map(|i| {
            let s = &i["sum"];
            (
                s["start"].as_f64().unwrap(),
                s["end"].as_f64().unwrap(),
                s["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// How long the stream stalled, from its intervals: `(from, empty, lost)`. `empty` is the
/// longest run of intervals that received nothing (a lower bound, in 100 ms steps); `lost`
/// adds the shortfall of the intervals on either side that received less than 90 % of the
/// stream's median (the stall rarely starts or ends on an interval's edge): the time the
/// stream lost at its steady rate.
fn stall(iv: &[(f64, f64, u64)]) -> (f64, f64, f64) {
    let mut sorted: Vec<u64> = iv.iter().map(|i| i.2).collect();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2].max(1) as f64;
    let (mut empty, mut from, mut worst, mut run) = (0.0, 0.0, 0, None);
    for (k, &(start, end, bytes)) in iv.iter().enumerate() {
        if bytes == 0 {
            let (s, first) = *run.get_or_insert((start, k));
            if end - s > empty {
                (empty, from, worst) = (end - s, s, first);
            }
        } else {
            run = None;
        }
    }
    if empty == 0.0 {
        worst = (0..iv.len()).min_by_key(|&k| iv[k].2).unwrap_or(0);
        from = iv.get(worst).map_or(0.0, |i| i.0);
    }
    let short = |k: usize| (iv[k].2 as f64) < 0.9 * median;
    let (mut a, mut b) = (worst, worst);
    while a > 0 && short(a - 1) {
        a -= 1;
    }
    while b + 1 < iv.len() && short(b + 1) {
        b += 1;
    }
    let lost = iv[a..=b]
        .iter()
        .map(|&(s, e, bytes)| (e - s) * (1.0 - (bytes as f64 / median).min(1.0)))
        .sum();
    (from, empty, lost)
}

/// Starts etcd and both gateways' srvgate as standbys (neither holds the VIP, DNS bound to
/// it), each gateway seeing the other's frames too (the standby must not translate them).
fn start_standbys(lab: &ClusterLab) {
    lab.route_through_vips().unwrap();
    lab.flood().unwrap();
    lab.start_etcd().unwrap();
    for (n, own) in GW_PUBLIC.iter().enumerate() {
        let config = lab
            .config(n)
            .replace(&format!("\"{own}:53\""), &format!("\"{VIP}:53\""))
            + &format!("\n[metrics]\nlisten = \"{METRICS}\"\n");
        lab.start_srvgate_with(n, &config).unwrap();
        let log = lab.srvgate_log(n);
        assert!(
            log.contains("standby"),
            "gw{}'s log does not say it starts as a standby:\n{log}",
            n + 1
        );
    }
}

/// keepalived on both gateways, gw1 first so it becomes master; (gw1's, gw2's) pids.
fn start_keepaliveds(lab: &ClusterLab) -> (u32, u32) {
    let active = lab.start_keepalived(0, &keepalived_conf(0)).unwrap();
    let took = wait_for("gw1 holds both VIPs", lab, Duration::from_secs(5), || {
        lab.holds(0, "pub0", VIP).unwrap() && lab.holds(0, "priv1", VIP_PRIVATE).unwrap()
    });
    eprintln!("failover: gw1 became master after {took:?}");
    let standby = lab.start_keepalived(1, &keepalived_conf(1)).unwrap();
    thread::sleep(Duration::from_millis(500));
    assert!(
        !lab.holds(1, "pub0", VIP).unwrap(),
        "gw2 took the VIP from a live gw1\n{}",
        lab.logs()
    );
    (active, standby)
}

/// gw1 dies: off both switches, srvgate SIGKILLed, keepalived (`active`) stopped (its
/// priority-0 adverts go nowhere: gw2 must notice the silence). Returns once gw2 holds
/// both VIPs.
fn gw1_dies(lab: &ClusterLab, active: u32) {
    let died = Instant::now();
    lab.unplug(0).unwrap();
    lab.kill_srvgate(0).unwrap();
    let took = thread::scope(|s| {
        // Stopped meanwhile, so its exit does not delay the watch on gw2.
        let stopping = s.spawn(|| lab.stop(active, Duration::from_secs(5)));
        wait_for("gw2 takes both VIPs", lab, Duration::from_secs(5), || {
            lab.holds(1, "pub0", VIP).unwrap() && lab.holds(1, "priv1", VIP_PRIVATE).unwrap()
        });
        let took = died.elapsed();
        stopping.join().unwrap().unwrap();
        took
    });
    eprintln!("failover: gw2 holds both VIPs {took:?} after gw1 died");
}

#[test]
fn connections_survive_the_active_gateway_dying() {
    let Some(lab) = ClusterLab::for_test("connections_survive_the_active_gateway_dying", "fo")
    else {
        return;
    };
    start_standbys(&lab);
    lab.start_sshd(22).unwrap();
    let iperf = lab
        .spawn(
            &lab.backend,
            "iperf3-server",
            &["iperf3", "-s", "-B", BACKEND, "-p", "5201"],
            &[],
        )
        .unwrap();
    lab.wait_port(&lab.backend, BACKEND, 5201).unwrap();
    let ssh_port = lab.claim(0, "alice", "ssh", &format!("{BACKEND}:22"));
    let iperf_port = lab.claim(0, "alice", "iperf", &format!("{BACKEND}:5201"));

    let (active, standby) = start_keepaliveds(&lab);

    // An interactive-like ssh session (a tick every ~20 ms) and a bulk stream, both
    // through gw1. iperf3 -R: the client receives, so its intervals show the real gap.
    // The client stamps each tick's arrival (monotonic seconds), so the session's own
    // longest silence is measured too, to a tick's resolution.
    let ticks = 300;
    let ssh = lab.ssh_argv(
        VIP,
        ssh_port,
        &format!("for i in $(seq 1 {ticks}); do echo tick $i; sleep 0.02; done"),
    );
    let ssh = shlex::try_join(ssh.iter().map(String::as_str)).unwrap();
    let script = format!("set -o pipefail; {ssh} | {STAMP}");
    let ssh = lab
        .spawn(&lab.client, "ssh-session", &["bash", "-c", &script], &[])
        .unwrap();
    let port = iperf_port.to_string();
    let stream = lab
        .spawn(
            &lab.client,
            "iperf3-client",
            &[
                "iperf3",
                "-c",
                VIP,
                "-p",
                &port,
                "-R",
                "-t",
                "8",
                "-i",
                "0.1",
                "-b",
                "200M",
                "-J",
                "--connect-timeout",
                "3000",
            ],
            &[],
        )
        .unwrap();
    let (ssh_log, stream_log) = (lab.log_of(ssh).unwrap(), lab.log_of(stream).unwrap());
    thread::sleep(Duration::from_millis(2500));
    let before = fs::read_to_string(&ssh_log).unwrap_or_default();
    assert!(
        before.contains("tick 5"),
        "the ssh session is not running through gw1:\n{before}\n{}",
        lab.logs()
    );

    // The switches flood gw1's traffic to gw2 too: gw2 passes it untouched, translates none.
    let (standby_translated, flooded) = (translated(&lab, 1), verdicts(&lab, 1, "pass_not_for_us"));
    eprintln!(
        "failover: before: gw1 translated {} packets; gw2 {standby_translated}, and passed {flooded} flooded frames untouched",
        translated(&lab, 0)
    );
    assert_eq!(
        standby_translated, 0,
        "the standby translated flooded frames"
    );
    assert!(
        flooded > 100,
        "gw2 saw no flooded frames ({flooded}): the switches do not flood"
    );
    // Adverts this frequent must not be missed under load: gw2 never took over meanwhile.
    let log = lab.output_of(standby);
    assert!(
        !log.contains("Entering MASTER STATE"),
        "gw2 became master while gw1 was alive (adverts missed):\n{log}"
    );

    gw1_dies(&lab, active);

    let status = lab.wait_exit(stream, Duration::from_secs(20)).unwrap();
    let json = fs::read_to_string(&stream_log).unwrap();
    assert!(status.success(), "iperf3 failed ({status}):\n{json}");
    let iv = intervals(&json);
    let received: u64 = iv.iter().map(|i| i.2).sum();
    let (from, empty, gap) = stall(&iv);
    eprintln!(
        "failover: iperf3 received {:.1} MB in {} intervals; stalled {:.0} ms from t={from:.1} s ({:.0} ms of intervals with nothing)",
        received as f64 / 1e6,
        iv.len(),
        gap * 1000.0,
        empty * 1000.0
    );
    let after = iv
        .iter()
        .filter(|i| i.0 > from + empty)
        .map(|i| i.2)
        .sum::<u64>();
    assert!(after > 0, "nothing received after the gap: {iv:?}");

    let status = lab.wait_exit(ssh, Duration::from_secs(20)).unwrap();
    let out = fs::read_to_string(&ssh_log).unwrap();
    assert!(
        status.success(),
        "the ssh session failed ({status}):\n{out}"
    );
    let seen: Vec<(f64, &str)> = out
        .lines()
        .filter_map(|l| {
            let (t, rest) = l.split_once(' ')?;
            Some((t.parse().ok()?, rest.strip_prefix("tick ")?))
        })
        .collect();
    assert_eq!(seen.len(), ticks, "ssh ticks missing:\n{out}");
    assert_eq!(seen.last().map(|s| s.1), Some(ticks.to_string().as_str()));
    let silence = seen.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max);
    eprintln!(
        "failover: the ssh session's longest silence between two ticks (sent every ~20 ms): {:.0} ms",
        silence * 1000.0
    );

    // gw2's DNS, bound to the VIP while it was a standby, answers on it now.
    let srv = format!("_ssh._tcp.alice.{ZONE}");
    let answer = lab
        .exec_ok(
            &lab.client,
            &[
                "dig",
                "+short",
                "+time=1",
                "+tries=2",
                &format!("@{VIP}"),
                "SRV",
                &srv,
            ],
        )
        .unwrap();
    assert!(
        answer.split_whitespace().nth(2) == Some(&ssh_port.to_string()),
        "gw2's DNS on the VIP: {answer:?}"
    );
    lab.stop(iperf, Duration::from_secs(2)).unwrap();

    // Issue 15 asks for < 1 s end to end; the stall is printed above and the book's failover
    // table records the runs (about 0.2 s with 50 ms adverts). What must hold on any machine
    // is that gw2 took over, not the old gateway's timeouts: a loaded 2-core machine can
    // delay keepalived's adverts and TCP's retransmission timer doubles (0.2 + 0.4 + 0.8 +
    // 1.6 s), so the bound is 5 s, still below the ~6 s of keepalived's 1 s default adverts.
    // The stream's stall is bounded from above by its empty intervals plus both neighbours.
    const STALL_BOUND: f64 = 5.0;
    assert!(
        empty + 0.2 < STALL_BOUND && silence < STALL_BOUND,
        "stalled when gw1 died: stream {:.0}-{:.0} ms, ssh {:.0} ms\n{}",
        empty * 1000.0,
        (empty + 0.2) * 1000.0,
        silence * 1000.0,
        lab.logs()
    );
}

/// The pool's second backend: an alias on the backend's machine, so one namespace runs both.
const BACKEND2: &str = "10.210.41.22";
/// Each pool member's service port.
const MEMBER_PORT: u16 = 7000;
/// Long-lived connections held across the failover.
const HELD: usize = 20;

/// A pool member's service: answers each line with `ADDR LINE`, so a client knows which
/// member holds its connection. Args: ADDR PORT.
const WHO: &str = r#"import socketserver, sys
addr, port = sys.argv[1], int(sys.argv[2])
class Who(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(addr.encode() + b" " + line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer((addr, port), Who).serve_forever()
"#;

/// The client: opens N connections to HOST:PORT, asks each which member holds it, prints
/// `ready`, waits (bounded) for the file GO, asks each again on the same connection and
/// prints `I FIRST SECOND` per connection. Args: HOST PORT N GO.
const HOLD: &str = r#"import os, socket, sys, time
host, port, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def ask(s, f, msg):
    s.sendall(msg.encode() + b"\n")
    words = f.readline().decode().split()
    if len(words) != 2 or words[1] != msg:
        sys.exit("connection %s: answer %r to %s" % (msg, words, msg))
    return words[0]
conns = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=20)
    f = s.makefile("rb")
    conns.append((s, f, ask(s, f, "before%d" % i)))
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no go after 60 s")
    time.sleep(0.05)
for i, (s, f, first) in enumerate(conns):
    print(i, first, ask(s, f, "after%d" % i), flush=True)
"#;

/// Gateway `n`'s view of route `name`'s members, as `route ls --json` shows them:
/// (addr, up); empty while the route is not there.
fn members_seen(lab: &ClusterLab, n: usize, name: &str) -> Vec<(String, bool)> {
    let out = lab.ctl_ok(n, &["route", "ls", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let Some(route) = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
    else {
        return vec![];
    };
    route["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backends in gw{}'s {route}", n + 1))
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_string(),
                b["up"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn pool_connections_stay_on_their_backends_through_a_failover() {
    let Some(lab) = ClusterLab::for_test(
        "pool_connections_stay_on_their_backends_through_a_failover",
        "fp",
    ) else {
        return;
    };
    start_standbys(&lab);
    let alias = format!("{BACKEND2}/24");
    lab.exec_ok(&lab.backend, &["ip", "addr", "add", &alias, "dev", "eth0"])
        .unwrap();
    let who = lab.dir().join("who.py");
    fs::write(&who, WHO).unwrap();
    let who = who.display().to_string();
    let port = MEMBER_PORT.to_string();
    for addr in [BACKEND, BACKEND2] {
        lab.spawn(
            &lab.backend,
            &format!("who-{addr}"),
            &["python3", &who, addr, &port],
            &[],
        )
        .unwrap();
        lab.wait_port(&lab.backend, addr, MEMBER_PORT).unwrap();
    }
    let members = [BACKEND, BACKEND2].map(|a| format!("{a}:{MEMBER_PORT}"));
    let added = lab
        .ctl_ok(
            0,
            &[
                "route",
                "add",
                "judge",
                "--service",
                "judge",
                "--backend",
                &members[0],
                "--backend",
                &members[1],
                "--json",
            ],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&added).unwrap();
    let public_port = v["port"].as_u64().expect("a port in the reply");
    // Both gateways see the pool (through etcd) with both members up by their own checks:
    // the same pool and the same health give the same choice for every flow.
    let want: Vec<(String, bool)> = members.iter().map(|m| (m.clone(), true)).collect();
    for n in 0..2 {
        wait_for(
            &format!("gw{} sees both members up", n + 1),
            &lab,
            Duration::from_secs(60),
            || members_seen(&lab, n, "judge") == want,
        );
    }
    let (active, _standby) = start_keepaliveds(&lab);

    let hold = lab.dir().join("hold.py");
    fs::write(&hold, HOLD).unwrap();
    let go = lab.dir().join("go");
    let (hold, go_arg) = (hold.display().to_string(), go.display().to_string());
    let (public_port, held) = (public_port.to_string(), HELD.to_string());
    let client = lab
        .spawn(
            &lab.client,
            "pool-client",
            &["python3", &hold, VIP, &public_port, &held, &go_arg],
            &[],
        )
        .unwrap();
    // Read after it exits too, when the lab no longer tracks it.
    let client_log = lab.log_of(client).unwrap();
    wait_for(
        "the client holds its connections",
        &lab,
        Duration::from_secs(30),
        || lab.output_of(client).contains("ready"),
    );
    let through_gw1 = translated(&lab, 0);
    assert!(
        through_gw1 > 0 && translated(&lab, 1) == 0,
        "the connections are not all through gw1 (gw1 {through_gw1}, gw2 {})",
        translated(&lab, 1)
    );

    gw1_dies(&lab, active);
    fs::write(&go, "").unwrap();
    let status = lab.wait_exit(client, Duration::from_secs(90)).unwrap();
    let out = fs::read_to_string(&client_log).unwrap_or_default();
    assert!(
        status.success(),
        "the client failed ({status}):\n{out}\n{}",
        lab.logs()
    );
    let answers: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 3)
        .collect();
    assert_eq!(answers.len(), HELD, "answers after the failover:\n{out}");
    for w in &answers {
        assert!(
            [BACKEND, BACKEND2].contains(&w[1]),
            "connection {} answered by {}",
            w[0],
            w[1]
        );
        assert_eq!(
            w[1], w[2],
            "connection {} moved from {} to {} through the failover",
            w[0], w[1], w[2]
        );
    }
    let on_second = answers.iter().filter(|w| w[1] == BACKEND2).count();
    eprintln!(
        "failover: {HELD} pool connections survived on their backends ({} on {BACKEND}, {on_second} on {BACKEND2})",
        HELD - on_second
    );
    // XDP places each flow by Maglev over the two members: all 20 on one would happen by
    // chance about twice in a million runs, and would mean the pool was not balanced (so
    // the survival above would not show that two gateways choose alike).
    assert!(
        on_second > 0 && on_second < HELD,
        "all {HELD} connections on one member ({on_second} on {BACKEND2}): the pool did not spread"
    );
}
