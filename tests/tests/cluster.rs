//! Two gateways share one table through a real etcd member (see `srvgate_tests::cluster`):
//! a route claimed through one forwards and answers in DNS on the other within a second;
//! concurrent claims split over both never get one port twice; with etcd stopped both go on
//! forwarding and a claim is refused naming etcd; with etcd back, claims work again and
//! both gateways agree on the table and on the SOA serial; accounts are shared; a gateway
//! that was down loads the whole table when it starts again.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use srvgate_tests::cluster::*;

/// Gateway `n`'s routes: name/service -> port.
fn routes(lab: &ClusterLab, n: usize) -> BTreeMap<String, u64> {
    route_views(lab, n)
        .into_iter()
        .map(|(k, r)| (k, r["port"].as_u64().unwrap()))
        .collect()
}

/// How long a change made through one gateway may take to reach the other. The watch
/// brings it in milliseconds (the tests print how long it took, for humans; issue 15 asked
/// for under a second); the bound only says that it arrives, with room for a loaded 2-core
/// machine running etcd, two daemons and the test at once.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Polls `f` every 10 ms until it holds; how long that took, or `None` after `limit`.
fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The time of day (seconds) of the first log line containing `needle` (tracing's
/// `2026-12-06T00:25:23.909169Z` prefix).
fn log_time(log: &str, needle: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let time = line
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// `curl http://VIP:PORT/` from the client, through whichever gateway the lab routes it.
fn fetch(lab: &ClusterLab, port: u16) -> Option<String> {
    let url = format!("http://{VIP}:{port}/");
    lab.exec_ok(&lab.client, &["curl", "-fsS", "--max-time", "2", &url])
        .ok()
}

fn soa_serial(lab: &ClusterLab, n: usize) -> Option<String> {
    let soa = lab.dig(n, "SOA", ZONE).ok()?;
    soa.split_whitespace().nth(2).map(str::to_string)
}

#[test]
fn two_gateways_share_one_table_through_etcd() {
    let Some(lab) = ClusterLab::for_test("two_gateways_share_one_table_through_etcd", "clu") else {
        return;
    };
    lab.start_etcd().unwrap();
    lab.start_srvgate(0).unwrap();
    lab.start_srvgate(1).unwrap();
    start_web(&lab);

    // Both gateways name both as the zone's name servers (`[dns.nameservers]`), each
    // with its own address.
    for n in 0..2 {
        let ns = lab.dig(n, "NS", ZONE).unwrap();
        let mut ns: Vec<_> = ns.lines().collect();
        ns.sort();
        assert_eq!(
            ns,
            [format!("gw1.{ZONE}."), format!("gw2.{ZONE}.")],
            "gw{}",
            n + 1
        );
        for (m, addr) in GW_PUBLIC.iter().enumerate() {
            let a = lab.dig(n, "A", &format!("gw{}.{ZONE}", m + 1)).unwrap();
            assert_eq!(a, *addr, "gw{}'s answer for gw{}", n + 1, m + 1);
        }
    }

    // A claim through gateway 1 reaches gateway 2's DNS and data path (how soon: printed).
    let port = lab.claim(0, "alice", "web", &format!("{BACKEND}:8080"));
    let srv = format!("_web._tcp.alice.{ZONE}");
    let seen = time_until(PROPAGATION, || {
        lab.dig(1, "SRV", &srv)
            .is_ok_and(|a| a.split_whitespace().nth(2) == Some(&port.to_string()))
    });
    let seen = seen.unwrap_or_else(|| {
        panic!(
            "gw2's DNS has no SRV with port {port} after {PROPAGATION:?}\n{}",
            lab.logs()
        )
    });
    eprintln!("cluster: a claim through gw1 answered in gw2's DNS after {seen:?}");
    // The watch's own share of that, from the two daemons' log lines.
    let committed = log_time(&lab.srvgate_log(0), "route added route=alice/web/tcp");
    let applied = log_time(
        &lab.srvgate_log(1),
        "through another gateway route=alice/web/tcp",
    );
    if let (Some(c), Some(a)) = (committed, applied) {
        eprintln!(
            "cluster: gw2 applied it {:+.1} ms from gw1 logging its own add",
            (a - c) * 1000.0
        );
    }
    lab.use_gateway(1).unwrap();
    let forwarded = time_until(PROPAGATION, || {
        fetch(&lab, port).is_some_and(|t| t == "served by b1\n")
    });
    let forwarded =
        forwarded.unwrap_or_else(|| panic!("not forwarded through gw2\n{}", lab.logs()));
    eprintln!(
        "cluster: ... and forwarded through gw2 (both ways) within {:?} more",
        forwarded
    );

    // 20 concurrent claims, 10 through each gateway: 20 distinct ports.
    let ports: Vec<u16> = thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || {
                    let backend = format!("{BACKEND}:{}", 9000 + i);
                    lab.claim(i % 2, &format!("s{i}"), "ssh", &backend)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "ports handed out twice: {ports:?}");
    assert!(
        !ports.contains(&port),
        "alice's port {port} handed out again: {ports:?}"
    );
    let agree = time_until(PROPAGATION, || {
        let a = routes(&lab, 0);
        a.len() == 21 && a == routes(&lab, 1)
    });
    assert!(
        agree.is_some(),
        "the gateways disagree:\ngw1 {:?}\ngw2 {:?}",
        routes(&lab, 0),
        routes(&lab, 1)
    );
    let keys = lab
        .etcdctl(&["get", "--prefix", "/srvgate/ports/", "--keys-only"])
        .unwrap();
    assert_eq!(keys.split_whitespace().count(), 21, "{keys}");

    // etcd stopped: both gateways go on forwarding with the last table; a claim is
    // refused, naming etcd and its endpoint, with exit status 1.
    lab.stop_etcd().unwrap();
    for n in [0, 1] {
        lab.use_gateway(n).unwrap();
        assert_eq!(
            fetch(&lab, port).as_deref(),
            Some("served by b1\n"),
            "through gw{}",
            n + 1
        );
    }
    let started = Instant::now();
    let bob_backend = format!("{BACKEND}:22");
    let out = lab
        .try_claim(0, "bob", "ssh", &bob_backend)
        .expect_err("a claim without etcd");
    let refused_in = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("etcd") && stderr.contains(ETCD_URL),
        "{stderr}"
    );
    eprintln!(
        "cluster: with etcd stopped a claim is refused after {refused_in:?}: {}",
        stderr.trim()
    );
    assert!(refused_in < Duration::from_secs(5), "{refused_in:?}");
    let status = lab.ctl_ok(1, &["status"]).unwrap();
    assert!(status.contains("NOT connected"), "{status}");
    assert!(
        routes(&lab, 0).contains_key("alice/web"),
        "the last table stays"
    );

    // etcd back: the gateways resynchronise, the claim works, both agree.
    lab.start_etcd().unwrap();
    let mut bob = None;
    let back = time_until(Duration::from_secs(10), || {
        bob = lab.try_claim(1, "bob", "ssh", &bob_backend).ok();
        bob.is_some()
    });
    assert!(
        back.is_some(),
        "no claim works 10 s after etcd came back\n{}",
        lab.logs()
    );
    eprintln!(
        "cluster: claims work again {:?} after etcd answered",
        back.unwrap()
    );
    let bob = bob.unwrap();
    assert!(
        !ports.contains(&bob) && bob != port,
        "bob got a port already handed out: {bob}"
    );
    let agree = time_until(PROPAGATION, || {
        let a = routes(&lab, 0);
        a.len() == 22
            && a == routes(&lab, 1)
            && soa_serial(&lab, 0).is_some()
            && soa_serial(&lab, 0) == soa_serial(&lab, 1)
    });
    assert!(
        agree.is_some(),
        "after etcd came back the gateways disagree:\ngw1 {:?} serial {:?}\ngw2 {:?} serial {:?}\n{}",
        routes(&lab, 0),
        soa_serial(&lab, 0),
        routes(&lab, 1),
        soa_serial(&lab, 1),
        lab.logs()
    );
    for n in [0, 1] {
        let status = lab.ctl_ok(n, &["status"]).unwrap();
        assert!(
            status.contains(&format!("cluster: gateway gw{} of [gw1, gw2]", n + 1)),
            "{status}"
        );
        assert!(status.contains(" connected"), "{status}");
    }
    lab.use_gateway(0).unwrap();
    assert_eq!(fetch(&lab, port).as_deref(), Some("served by b1\n"));

    // Accounts are shared too: a student added through one gateway logs in on the other.
    lab.ctl_ok(0, &["user", "add", "carol", "--allow", BACKEND])
        .unwrap();
    let seen = time_until(PROPAGATION, || {
        lab.ctl_ok(1, &["user", "ls"])
            .is_ok_and(|t| t.contains("carol"))
    });
    assert!(seen.is_some(), "gw2 does not know carol\n{}", lab.logs());

    // A gateway that was down loads the whole table when it comes back.
    lab.stop_srvgate(1).unwrap();
    let dave = lab.claim(0, "dave", "ssh", &format!("{BACKEND}:2222"));
    lab.start_srvgate(1).unwrap();
    assert_eq!(routes(&lab, 1).get("dave/ssh"), Some(&u64::from(dave)));
    assert_eq!(routes(&lab, 0), routes(&lab, 1));
}

/// `route ls --json` of gateway `n`, by name/service.
fn route_views(lab: &ClusterLab, n: usize) -> BTreeMap<String, serde_json::Value> {
    let out = lab.ctl_ok(n, &["route", "ls", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    r["name"].as_str().unwrap(),
                    r["service"].as_str().unwrap()
                ),
                r.clone(),
            )
        })
        .collect()
}

/// Serves "served by b1" on the backend's port 8080.
fn start_web(lab: &ClusterLab) {
    let site = lab.dir().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "served by b1\n").unwrap();
    let site = site.display().to_string();
    lab.spawn(
        &lab.backend,
        "web",
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            BACKEND,
            "--directory",
            &site,
        ],
        &[],
    )
    .unwrap();
    lab.wait_port(&lab.backend, BACKEND, 8080).unwrap();
}

/// Issue 15: reclaim with an injected clock happens once. Both gateways run with
/// `reclaim_after = "1d"` and one clock; a route claimed through gw1 and used through gw2
/// only stays past the reclaim time as gw1 counts it (gw2's published last-seen time
/// keeps it), an idle route is reclaimed exactly once (one reclaim line across both
/// gateways, by the leader), and both tables agree afterwards.
#[test]
fn reclaim_with_an_injected_clock_happens_once() {
    let Some(lab) = ClusterLab::for_test("reclaim_with_an_injected_clock_happens_once", "clr")
    else {
        return;
    };
    lab.start_etcd().unwrap();
    let clock = lab.dir().join("clock-offset");
    std::fs::write(&clock, "0").unwrap();
    let clock_arg = clock.display().to_string();
    let reclaim = "reclaim_after = \"1d\"";
    for n in [0, 1] {
        lab.start_srvgate_args(
            n,
            &lab.config_with(n, reclaim),
            &["--clock-offset-file", &clock_arg],
        )
        .unwrap();
    }
    start_web(&lab);
    let busy = lab.claim(0, "busy", "web", &format!("{BACKEND}:8080"));
    lab.claim(0, "idle", "web", &format!("{BACKEND}:8081"));
    lab.use_gateway(1).unwrap();
    let through_gw2 = time_until(PROPAGATION, || {
        fetch(&lab, busy).is_some_and(|t| t == "served by b1\n")
    });
    assert!(
        through_gw2.is_some(),
        "busy not forwarded through gw2\n{}",
        lab.logs()
    );
    let leader = |n: usize| {
        let status = lab.ctl_ok(n, &["status"]).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("cluster:"))
            .and_then(|l| l.split("leader: ").nth(1))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
    };
    // One leader, the same seen from both ("this" is how the leader names itself).
    let leaders = (leader(0), leader(1));
    eprintln!("cluster: leaders as gw1 and gw2 see them: {leaders:?}");
    assert!(
        matches!(&leaders, (Some(a), Some(b)) if (a == "this") != (b == "this")),
        "{leaders:?}"
    );

    // 14 hours on: nothing is idle for a day yet. gw2 publishes busy's activity, which
    // gw1, which never carried a packet of it, takes as its own last-seen time.
    std::fs::write(&clock, "14h").unwrap();
    let fresh = time_until(Duration::from_secs(30), || {
        route_views(&lab, 0)
            .get("busy/web")
            .and_then(|r| r["idle_seconds"].as_u64())
            .is_some_and(|idle| idle < 600)
    });
    let fresh = fresh.unwrap_or_else(|| {
        panic!(
            "gw1 never learnt busy's activity through gw2: {:?}\n{}",
            route_views(&lab, 0).get("busy/web"),
            lab.logs()
        )
    });
    eprintln!("cluster: gw1 had gw2's last-seen time of busy after {fresh:?}");
    let on_gw1 = &route_views(&lab, 0)["busy/web"];
    assert_eq!(
        on_gw1["inbound_packets"], 0,
        "gw1 carried none of it: {on_gw1}"
    );

    // 28 hours on: idle (a day and 4 h without a packet) goes; busy, 14 h since gw2 saw
    // it, stays, though gw1 alone would count 28 h.
    std::fs::write(&clock, "28h").unwrap();
    let gone = time_until(Duration::from_secs(20), || {
        !routes(&lab, 0).contains_key("idle/web") && !routes(&lab, 1).contains_key("idle/web")
    });
    assert!(gone.is_some(), "idle not reclaimed\n{}", lab.logs());
    // Two more passes of both gateways: nothing reclaimed again, nothing else.
    thread::sleep(Duration::from_secs(11));
    let logs = [lab.srvgate_log(0), lab.srvgate_log(1)];
    let reclaims: Vec<&str> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("route reclaimed"))
        .collect();
    assert_eq!(reclaims.len(), 1, "{reclaims:#?}\n{}", lab.logs());
    assert!(
        reclaims[0].contains("route=idle/web/tcp"),
        "{}",
        reclaims[0]
    );
    let reclaimer = logs
        .iter()
        .position(|l| l.contains("route reclaimed"))
        .unwrap();
    assert_eq!(
        leader(reclaimer).as_deref(),
        Some("this"),
        "the leader reclaims"
    );
    assert!(
        logs[1 - reclaimer].contains("route removed through another gateway route=idle/web/tcp"),
        "{}",
        lab.logs()
    );
    let (a, b) = (routes(&lab, 0), routes(&lab, 1));
    assert_eq!(a, b, "the tables disagree");
    assert!(a.contains_key("busy/web"), "{a:?}");
    let seen = lab
        .etcdctl(&["get", "--prefix", "/srvgate/seen/", "--keys-only"])
        .unwrap();
    assert!(
        !seen.contains("/idle/") && seen.contains("/srvgate/seen/busy/web/tcp/gw2"),
        "{seen}"
    );
    let _ = lab.use_gateway(0);
}

/// Issue 15: a gateway whose etcd does not answer refuses to start, promptly, naming the
/// endpoint, with exit status 1 (systemd's `Restart=on-failure` tries again; the pinned
/// data plane of an earlier run goes on forwarding meanwhile). Starting without the
/// shared table would make the maps hold only the config file's routes, cutting every
/// runtime route's connections, and DNS deny the students' names.
#[test]
fn without_etcd_a_gateway_refuses_to_start_naming_it() {
    let Some(lab) =
        ClusterLab::for_test("without_etcd_a_gateway_refuses_to_start_naming_it", "cln")
    else {
        return;
    };
    let argv = lab.srvgate_argv(0, &lab.config(0), &[]).unwrap();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = srvgate_tests::run_with_timeout(
        &mut srvgate_tests::netns_command(&lab.gws[0], &argv),
        Duration::from_secs(20),
    )
    .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "cluster: without etcd, srvgate run exited {:?} after {took:?}: {}",
        out.status.code(),
        stderr.trim()
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(ETCD_URL), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing of the kernel was touched: no XDP program on its legs.
    let link = lab
        .exec_ok(&lab.gws[0], &["ip", "link", "show", "pub0"])
        .unwrap();
    assert!(!link.contains("xdp"), "{link}");
    // With etcd up it starts.
    lab.start_etcd().unwrap();
    lab.start_srvgate(0).unwrap();
}

/// Issue 15: a gateway that misses revisions etcd then compacts away resynchronises: gw2
/// is paused (SIGSTOP) while gw1 changes the table and enough other writes pass that
/// etcd cannot hold them for gw2's watch, etcd compacts to its latest revision, gw2
/// resumes: its watch is cancelled as compacted, and it loads the whole table again,
/// saying so, and ends up with gw1's table.
#[test]
fn a_gateway_that_missed_compacted_revisions_resynchronises() {
    let Some(lab) = ClusterLab::for_test(
        "a_gateway_that_missed_compacted_revisions_resynchronises",
        "clc",
    ) else {
        return;
    };
    lab.start_etcd().unwrap();
    lab.start_srvgate(0).unwrap();
    lab.start_srvgate(1).unwrap();
    lab.claim(0, "ann", "ssh", &format!("{BACKEND}:22"));
    let seen = time_until(PROPAGATION, || routes(&lab, 1).contains_key("ann/ssh"));
    assert!(seen.is_some(), "{}", lab.logs());

    lab.signal_srvgate(1, "STOP").unwrap();
    let resume = |lab: &ClusterLab| {
        let _ = lab.signal_srvgate(1, "CONT");
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Writes under the prefix (keys this version ignores) that fill what etcd and the
        // connection hold for a stopped watcher, so that etcd stops holding them: its
        // watcher channel takes 1024 responses, the HTTP/2 windows and the sockets ~11 MB
        // more (~700 of these). 3000 revisions of 16 KiB.
        // etcd demands a client certificate: the lab's admin one. One connection for all
        // (a TLS handshake per put would keep gw2 paused past its announcement's lease).
        let filler = r#"
import base64, http.client, json, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
host, port = sys.argv[4].removeprefix("https://").split(":")
conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=5)
value = base64.b64encode(b"x" * 16384).decode()
for i in range(3000):
    key = base64.b64encode(f"/srvgate/filler/{i}".encode()).decode()
    body = json.dumps({"key": key, "value": value})
    conn.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"put {i}: HTTP {r.status}")
"#;
        let pki = |f: &str| lab.pki(f).display().to_string();
        let (ca, cert, key) = (pki("ca.pem"), pki("admin.pem"), pki("admin-key.pem"));
        let out = srvgate_tests::run_with_timeout(
            &mut srvgate_tests::netns_command(
                &lab.etcd_ns,
                &["python3", "-c", filler, &ca, &cert, &key, ETCD_URL],
            ),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.etcdctl(&["del", "--prefix", "/srvgate/filler/"])
            .unwrap();
        // The table's own changes, behind all of that: gw2 can learn them only anew.
        lab.claim(0, "ben", "ssh", &format!("{BACKEND}:2222"));
        lab.ctl_ok(0, &["route", "rm", "ann", "--service", "ssh"])
            .unwrap();
        let status = lab.etcdctl(&["endpoint", "status", "-w", "json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        let revision = v[0]["Status"]["header"]["revision"].as_u64().unwrap();
        lab.etcdctl(&["compact", &revision.to_string()]).unwrap();
        revision
    }));
    resume(&lab);
    let revision = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!("cluster: compacted to revision {revision} while gw2 was paused");

    let resynced = time_until(Duration::from_secs(20), || {
        lab.srvgate_log(1)
            .contains("table resynchronised with etcd")
    });
    assert!(
        resynced.is_some(),
        "gw2 did not resynchronise\n{}",
        lab.logs()
    );
    eprintln!("cluster: gw2 resynchronised {resynced:?} after it resumed");
    let agreed = time_until(PROPAGATION, || {
        let b = routes(&lab, 1);
        b.contains_key("ben/ssh") && !b.contains_key("ann/ssh") && b == routes(&lab, 0)
    });
    assert!(
        agreed.is_some(),
        "gw2 never caught up\ngw1 {:?}\ngw2 {:?}\n{}",
        routes(&lab, 0),
        routes(&lab, 1),
        lab.logs()
    );
    let log = lab.srvgate_log(1);
    let line = log
        .lines()
        .find(|l| l.contains("table resynchronised with etcd"))
        .unwrap_or_default();
    assert!(line.contains("compacted"), "{line}");
    eprintln!(
        "cluster: gw2 {}",
        line.split("INFO").nth(1).unwrap_or(line).trim()
    );
}

/// `srvgate run` for gateway `n` with the config file `config`, expected to refuse to
/// start: its exit code and stderr.
fn refused_start(lab: &ClusterLab, n: usize, config: &str) -> (Option<i32>, String) {
    let argv = lab.srvgate_argv(n, config, &[]).unwrap();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = srvgate_tests::run_with_timeout(
        &mut srvgate_tests::netns_command(&lab.gws[n], &argv),
        Duration::from_secs(30),
    )
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 24, item 7: etcd takes only clients with a certificate its CA signed, so whoever
/// merely reaches it (here: a student's backend on the private network) cannot write
/// `/srvgate/accounts` and make themselves admin, neither with plain HTTP nor with TLS and
/// no certificate or another CA's; and a gateway refuses to start when etcd's certificate
/// is not signed by its `cluster.ca` (naming the endpoint), when etcd refuses its
/// certificate, or when its key is readable by others (naming the file).
#[test]
fn only_the_gateways_certificates_reach_etcd() {
    let Some(lab) = ClusterLab::for_test("only_the_gateways_certificates_reach_etcd", "clt") else {
        return;
    };
    lab.start_etcd().unwrap();
    let admin_doc = r#"{"version":1,"users":[{"name":"eve","admin":true}]}"#;
    let accounts = "/srvgate/accounts";
    let stored = |lab: &ClusterLab| {
        lab.etcdctl(&["get", accounts, "--print-value-only"])
            .unwrap()
    };
    // etcdctl over TLS without a certificate, and with one another CA signed.
    for (cert, ca) in [(None, "ca.pem"), (Some("rogue"), "ca.pem")] {
        let out = lab
            .etcdctl_as(cert, ca, &["put", accounts, admin_doc])
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "cluster: etcdctl put with certificate {cert:?}: {:?} {}",
            out.status.code(),
            stderr.trim()
        );
        assert!(!out.status.success(), "{cert:?}: {stderr}");
    }
    // Plain HTTP, and HTTPS without a certificate, through etcd's JSON gateway.
    let body = r#"{"key":"L3NydmdhdGUvYWNjb3VudHM=","value":"eyJ2ZXJzaW9uIjoxfQ=="}"#;
    for url in [
        format!("http://{ETCD}:2379/v3/kv/put"),
        format!("{ETCD_URL}/v3/kv/put"),
    ] {
        let ca = lab.pki("ca.pem").display().to_string();
        let out = srvgate_tests::run_with_timeout(
            &mut srvgate_tests::netns_command(
                &lab.backend,
                &["curl", "-sS", "-m", "5", "--cacert", &ca, "-d", body, &url],
            ),
            Duration::from_secs(10),
        )
        .unwrap();
        eprintln!(
            "cluster: curl {url}: {:?} {} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    assert_eq!(
        stored(&lab).trim(),
        "",
        "someone without a certificate wrote the accounts"
    );

    // A gateway whose CA did not sign etcd's certificate does not start, naming etcd.
    let ca = lab.pki("ca.pem").display().to_string();
    let other_ca = lab.pki("other-ca.pem").display().to_string();
    let (code, stderr) = refused_start(&lab, 0, &lab.config(0).replace(&ca, &other_ca));
    eprintln!("cluster: with another CA: {code:?} {}", stderr.trim());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(ETCD_URL), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    // Nor one whose certificate etcd does not trust.
    let gw1 = |f: &str| lab.pki(f).display().to_string();
    let config = lab
        .config(0)
        .replace(&gw1("gw1.pem"), &gw1("rogue.pem"))
        .replace(&gw1("gw1-key.pem"), &gw1("rogue-key.pem"));
    let (code, stderr) = refused_start(&lab, 0, &config);
    eprintln!(
        "cluster: with a rogue certificate: {code:?} {}",
        stderr.trim()
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(ETCD_URL), "{stderr}");
    // Nor one whose key others can read: named, before anything is sent.
    let open_key = lab.dir().join("open-key.pem");
    std::fs::copy(lab.pki("gw1-key.pem"), &open_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let open_key = open_key.display().to_string();
    let (code, stderr) = refused_start(
        &lab,
        0,
        &lab.config(0).replace(&gw1("gw1-key.pem"), &open_key),
    );
    eprintln!(
        "cluster: with a key others read: {code:?} {}",
        stderr.trim()
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cluster.key {open_key}")),
        "{stderr}"
    );
    assert!(stderr.contains("0644"), "{stderr}");
    // `srvgate check` finds it too, before any start.
    let config_file = lab.dir().join("open-key.toml");
    std::fs::write(
        &config_file,
        lab.config(0).replace(&gw1("gw1-key.pem"), &open_key),
    )
    .unwrap();
    let bin = srvgate_tests::srvgate_bin().display().to_string();
    let out = srvgate_tests::run_with_timeout(
        &mut srvgate_tests::netns_command(
            &lab.gws[0],
            &[
                &bin,
                "check",
                "--config",
                &config_file.display().to_string(),
            ],
        ),
        Duration::from_secs(10),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cluster.key {open_key}")),
        "{stderr}"
    );

    // With its own certificate it starts, and writes the accounts (an admin adds a user).
    lab.start_srvgate(0).unwrap();
    lab.ctl_ok(0, &["user", "add", "ann", "--allow", BACKEND])
        .unwrap();
    assert!(stored(&lab).contains("\"ann\""), "{}", lab.logs());
    assert!(!stored(&lab).contains("eve"));
}

/// Gateway `n`'s config with a students' portal on its own public address.
fn with_portal(lab: &ClusterLab, n: usize) -> String {
    format!(
        "{}\n[portal]\nlisten = [\"{}:8443\"]\n",
        lab.config(n),
        GW_PUBLIC[n]
    )
}

/// `srvgate ARGS...` as a student, from the client's namespace; the output whatever the
/// status.
fn student(lab: &ClusterLab, args: &[&str]) -> std::process::Output {
    let bin = srvgate_tests::srvgate_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    srvgate_tests::run_with_timeout(
        &mut srvgate_tests::netns_command(&lab.client, &argv),
        Duration::from_secs(20),
    )
    .unwrap()
}

/// A new account NAME (quota `max`) through gateway 1, logged in at each gateway's portal:
/// the two credentials files.
fn student_at_both(lab: &ClusterLab, name: &str, max: u32) -> [String; 2] {
    let out = lab
        .ctl_ok(
            0,
            &[
                "user",
                "add",
                name,
                "--allow",
                BACKEND,
                "--max-routes",
                &max.to_string(),
                "--json",
            ],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token_file = lab.dir().join(format!("{name}.token"));
    std::fs::write(&token_file, v["token"].as_str().unwrap()).unwrap();
    let known = time_until(PROPAGATION, || {
        lab.ctl_ok(1, &["user", "ls"]).is_ok_and(|ls| {
            ls.lines()
                .any(|l| l.split_whitespace().next() == Some(name))
        })
    });
    assert!(known.is_some(), "gw2 never heard of {name}\n{}", lab.logs());
    [0, 1].map(|n| {
        let status: serde_json::Value =
            serde_json::from_str(&lab.ctl_ok(n, &["status", "--json"]).unwrap()).unwrap();
        let fp = status["portal"]["fingerprint"]
            .as_str()
            .unwrap()
            .to_string();
        let creds = lab
            .dir()
            .join(format!("{name}-gw{}.json", n + 1))
            .display()
            .to_string();
        let out = student(
            lab,
            &[
                "login",
                &format!("https://{}:8443", GW_PUBLIC[n]),
                "--token-file",
                &token_file.display().to_string(),
                "--fingerprint",
                &fp,
                "--credentials",
                &creds,
            ],
        );
        assert!(
            out.status.success(),
            "{name} login at gw{}: {}",
            n + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        creds
    })
}

/// `srvgate claim SERVICE` with `creds`, through both gateways at the same moment, each
/// to its own backend port (one backend is one route's: the same one twice would be
/// refused for that alone).
fn claims_at_once(
    lab: &ClusterLab,
    creds: &[String; 2],
    services: [&str; 2],
) -> [std::process::Output; 2] {
    let go = std::sync::Barrier::new(2);
    thread::scope(|s| {
        let handles = [0, 1].map(|n| {
            let (go, creds) = (&go, &creds[n]);
            let service = services[n];
            s.spawn(move || {
                let backend = format!("{BACKEND}:{}", 1022 + 1000 * n);
                go.wait();
                student(
                    lab,
                    &[
                        "claim",
                        service,
                        "--backend",
                        &backend,
                        "--credentials",
                        creds,
                    ],
                )
            })
        });
        handles.map(|h| h.join().unwrap())
    })
}

/// The runtime routes of `name` in etcd.
fn stored_routes_of(lab: &ClusterLab, name: &str) -> Vec<String> {
    lab.etcdctl(&[
        "get",
        "--prefix",
        &format!("/srvgate/routes/{name}/"),
        "--keys-only",
    ])
    .unwrap()
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(str::to_string)
    .collect()
}

/// Issue 24, item 8: a quota of 1 holds across gateways. Claims of one student through
/// both gateways' portals at the same moment: exactly one is made, every round, and the
/// other is refused naming the quota; the shared table holds one route.
#[test]
fn a_quota_holds_across_gateways_claiming_at_once() {
    let Some(lab) = ClusterLab::for_test("a_quota_holds_across_gateways_claiming_at_once", "clq")
    else {
        return;
    };
    lab.start_etcd().unwrap();
    lab.start_srvgate_with(0, &with_portal(&lab, 0)).unwrap();
    lab.start_srvgate_with(1, &with_portal(&lab, 1)).unwrap();
    let creds = student_at_both(&lab, "ann", 1);
    for round in 0..6 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let outs = claims_at_once(&lab, &creds, [&a, &b]);
        let won: Vec<usize> = (0..2).filter(|&n| outs[n].status.success()).collect();
        for (n, out) in outs.iter().enumerate() {
            eprintln!(
                "cluster: round {round}, claim through gw{}: {:?} {}",
                n + 1,
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        assert_eq!(
            won.len(),
            1,
            "round {round}: {} claims made with a quota of 1\n{}",
            won.len(),
            lab.logs()
        );
        let lost = 1 - won[0];
        let err = String::from_utf8_lossy(&outs[lost].stderr);
        assert!(err.contains("quota"), "round {round}: {err}");
        assert_eq!(stored_routes_of(&lab, "ann").len(), 1);
        // Released through the gateway that made it; gone from both before the next round.
        let service = [&a, &b][won[0]];
        let out = student(&lab, &["release", service, "--credentials", &creds[won[0]]]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gone = time_until(PROPAGATION, || {
            (0..2).all(|n| !routes(&lab, n).keys().any(|k| k.starts_with("ann/")))
        });
        assert!(gone.is_some(), "{}", lab.logs());
    }
    // What a claim costs now (a count, then the transaction: two round trips to etcd),
    // from the gateways' own log: until the route is live and until etcd committed it.
    let mut written: Vec<u64> = (0..2)
        .flat_map(|n| {
            lab.srvgate_log(n)
                .lines()
                .filter(|l| l.contains("route added"))
                .filter_map(|l| {
                    let v = l.split("written_us=").nth(1)?;
                    v.split_whitespace().next()?.parse().ok()
                })
                .collect::<Vec<u64>>()
        })
        .collect();
    written.sort_unstable();
    eprintln!("cluster: claims recorded in etcd after (µs, from the claim's start): {written:?}");
}

/// Issue 24, item 8: `user rm --with-routes` through one gateway racing the user's claim
/// through the other never leaves a route without an account: afterwards either the
/// account exists, or neither it nor any route of its name does, in etcd and on both
/// gateways. Ten rounds, each with a fresh account of the same name, the removal 3 ms
/// later each round (the claim wins from about the fifth on).
#[test]
fn removing_a_user_while_they_claim_leaves_no_orphan() {
    let Some(lab) =
        ClusterLab::for_test("removing_a_user_while_they_claim_leaves_no_orphan", "clo")
    else {
        return;
    };
    lab.start_etcd().unwrap();
    // gw1's file holds port 30500 (see the end).
    let config_route = format!(
        "\n[[route]]\nname = \"cfg\"\nservice = \"x\"\nbackend = \"{BACKEND}:6000\"\nport = 30500\n"
    );
    lab.start_srvgate_with(0, &(with_portal(&lab, 0) + &config_route))
        .unwrap();
    lab.start_srvgate_with(1, &with_portal(&lab, 1)).unwrap();
    let backend = format!("{BACKEND}:22");
    let accounts = |lab: &ClusterLab| {
        lab.etcdctl(&["get", "/srvgate/accounts", "--print-value-only"])
            .unwrap()
    };
    for round in 0..10 {
        let creds = student_at_both(&lab, "ann", 2);
        let go = std::sync::Barrier::new(2);
        let (claim, rm) = thread::scope(|s| {
            let claim = s.spawn(|| {
                go.wait();
                student(
                    &lab,
                    &[
                        "claim",
                        "ssh",
                        "--backend",
                        &backend,
                        "--credentials",
                        &creds[1],
                    ],
                )
            });
            let rm = s.spawn(|| {
                go.wait();
                // The claim (a process, TLS to the portal) takes longer than `user rm`
                // (the control socket): later each round, so both orders are met.
                thread::sleep(Duration::from_millis(3 * round));
                lab.ctl(0, &["user", "rm", "ann", "--with-routes"]).unwrap()
            });
            (claim.join().unwrap(), rm.join().unwrap())
        });
        eprintln!(
            "cluster: round {round}: claim {:?} {}; user rm {:?} {}",
            claim.status.code(),
            String::from_utf8_lossy(&claim.stderr).trim(),
            rm.status.code(),
            String::from_utf8_lossy(&rm.stderr).trim()
        );
        let routes_left = stored_routes_of(&lab, "ann");
        let has_account = accounts(&lab).contains("\"ann\"");
        assert!(
            has_account || routes_left.is_empty(),
            "round {round}: routes {routes_left:?} left without an account\n{}",
            lab.logs()
        );
        // Settle: remove what is left, and wait until both gateways forgot ann.
        if has_account {
            lab.ctl_ok(0, &["user", "rm", "ann", "--with-routes"])
                .unwrap();
        }
        let settled = time_until(PROPAGATION, || {
            (0..2).all(|n| {
                !routes(&lab, n).keys().any(|k| k.starts_with("ann/"))
                    && lab.ctl_ok(n, &["user", "ls"]).is_ok_and(|ls| {
                        !ls.lines()
                            .any(|l| l.split_whitespace().next() == Some("ann"))
                    })
            })
        });
        assert!(settled.is_some(), "round {round}\n{}", lab.logs());
        assert!(stored_routes_of(&lab, "ann").is_empty());
    }

    // Without a race: a route of ann that etcd holds and gw1 does not (it clashes with
    // gw1's config route, so gw1 does not take it, as after a claim gw1 has not heard of
    // yet). `user rm --with-routes` through gw1 removes none of ann's routes itself, and
    // etcd refuses the removal: ann keeps her account.
    student_at_both(&lab, "ann", 2);
    let route = format!(
        r#"{{"name":"ann","service":"x","protocol":"tcp","backend":"{BACKEND}:5000","port":30500,"added_unix":1}}"#
    );
    lab.etcdctl(&["put", "/srvgate/routes/ann/x/tcp", &route])
        .unwrap();
    let at_gw2 = time_until(PROPAGATION, || routes(&lab, 1).contains_key("ann/x"));
    assert!(at_gw2.is_some(), "{}", lab.logs());
    assert!(!routes(&lab, 0).contains_key("ann/x"));
    let out = lab.ctl(0, &["user", "rm", "ann", "--with-routes"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "cluster: user rm through the gateway that lacks ann's route: {:?} {}",
        out.status.code(),
        stderr.trim()
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("ann holds 1 route"), "{stderr}");
    assert!(accounts(&lab).contains("\"ann\""));
    // Through gw2, which has it, the route goes with the account.
    lab.ctl_ok(1, &["user", "rm", "ann", "--with-routes"])
        .unwrap();
    assert!(stored_routes_of(&lab, "ann").is_empty());
    assert!(!accounts(&lab).contains("\"ann\""));
}

/// Gateway `n`'s accounts as `user ls --json` shows them: name -> the account's view.
fn users_of(lab: &ClusterLab, n: usize) -> BTreeMap<String, serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&lab.ctl_ok(n, &["user", "ls", "--json"]).unwrap()).unwrap();
    v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap().to_string(), u.clone()))
        .collect()
}

/// Issue 24, item 9, with real config files: mid-way through a rolling reload gw1's file
/// declares carol and gw2's does not yet. carol gets a token through gw1; gw2 takes the
/// shared accounts and then saves them (an admin adds dave through it): carol is still
/// there on both gateways, with her token, and the stored accounts keep its digest.
#[test]
fn a_config_user_only_one_gateway_declares_keeps_its_token() {
    let Some(lab) = ClusterLab::for_test(
        "a_config_user_only_one_gateway_declares_keeps_its_token",
        "clu",
    ) else {
        return;
    };
    lab.start_etcd().unwrap();
    let carol =
        format!("\n[[user]]\nname = \"carol\"\nbackends = [\"{BACKEND}\"]\nmax_routes = 2\n");
    lab.start_srvgate(1).unwrap();
    lab.start_srvgate_with(0, &(lab.config(0) + &carol))
        .unwrap();
    let token = lab
        .ctl_ok(0, &["user", "token", "carol", "--json"])
        .unwrap();
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert!(token["token"]
        .as_str()
        .is_some_and(|t| t.starts_with("sg_carol_")));
    let stored = |lab: &ClusterLab| {
        lab.etcdctl(&["get", "/srvgate/accounts", "--print-value-only"])
            .unwrap()
    };
    let digest_of_carol = |doc: &str| -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(doc.trim()).ok()?;
        v["users"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == "carol")
            .map(|u| u["token_sha256"].clone())
    };
    let before = digest_of_carol(&stored(&lab));
    assert!(
        before.as_ref().is_some_and(|d| d.is_string()),
        "{}",
        stored(&lab)
    );
    let seen = time_until(PROPAGATION, || {
        users_of(&lab, 1)
            .get("carol")
            .is_some_and(|u| u["has_token"] == true)
    });
    assert!(
        seen.is_some(),
        "gw2: {:?}\n{}",
        users_of(&lab, 1),
        lab.logs()
    );
    // gw2 saves the accounts.
    lab.ctl_ok(1, &["user", "add", "dave", "--allow", BACKEND])
        .unwrap();
    let both = time_until(PROPAGATION, || users_of(&lab, 0).contains_key("dave"));
    assert!(both.is_some(), "{}", lab.logs());
    thread::sleep(Duration::from_millis(300));
    for n in 0..2 {
        let users = users_of(&lab, n);
        let c = users.get("carol");
        assert!(
            c.is_some_and(|u| u["has_token"] == true && u["from_config"] == true),
            "gw{}: {users:?}\n{}",
            n + 1,
            lab.logs()
        );
    }
    assert_eq!(digest_of_carol(&stored(&lab)), before, "{}", stored(&lab));
}
