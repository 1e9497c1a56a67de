//! `cargo xtask run` without arguments: a self-contained demo lab in network namespaces
//! (`sg-demo-*`): a client (the internet), the gateway running srvgate with XDP attached,
//! and two student instances with real sshd and a small web server. It runs, and prints,
//! what a newcomer would type, then keeps the lab up until Ctrl-C and removes it all.
//!
//! Stopping it is the lab's business: SIGINT, SIGTERM and SIGHUP make the lab library
//! remove every namespace, process and the bpffs, also when stdout is gone (`| tee`, ended
//! by the same Ctrl-C; a dropped ssh session), and nothing here panics on a closed stdout
//! ([`say`]). A demo killed outright is cleaned up by the next one (`Lab::new`).
//!
//! The lab itself is the tests' `Lab`, so the demo and the end-to-end tests exercise the
//! same topology.

use std::{io::Write as _, path::Path, process::Output, time::Duration};

use anyhow::{bail, Context as _, Result};
use srvgate_tests::{config_toml, is_root, Lab, RouteSpec, B1_IP, B2_IP, PUBLIC_IP};

const ZONE: &str = "lab.example";

/// `println!` that cannot panic: with stdout gone the demo still runs, and is still removed.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Builds the lab, shows srvgate working, then (unless `once`) waits for Ctrl-C.
/// Every shown step checks its own result, so `once` doubles as a smoke test.
pub fn run(srvgate: &Path, once: bool) -> Result<()> {
    if !is_root() {
        bail!("the demo lab creates network namespaces and attaches XDP: run it as root (sudo cargo xtask run)");
    }
    say!("srvgate demo lab: building namespaces sg-demo-{{cli,gw,b1,b2}} ...");
    let lab = Lab::new("demo").context("building the demo lab")?;
    lab.start_sshd(&lab.b1, "alice-box")?;
    lab.start_sshd(&lab.b2, "bob-box")?;
    for (ns, who) in [(&lab.b1, "alice"), (&lab.b2, "bob")] {
        lab.start_web(ns, &format!("hello from {who}'s instance"))?;
    }
    let routes = [
        RouteSpec::tcp("alice", "ssh", &format!("{B1_IP}:22"), 30001),
        RouteSpec::tcp("bob", "ssh", &format!("{B2_IP}:22"), 30002),
        RouteSpec::tcp("alice", "http", &format!("{B1_IP}:80"), 30080),
        RouteSpec::tcp("bob", "http", &format!("{B2_IP}:80"), 30081),
    ];
    // HTTP by Host header on the gateway's port 80: alice.http.<zone> needs no port.
    let config = format!(
        "{}\n[http]\nlisten = [\"{PUBLIC_IP}:80\"]\n",
        config_toml(&routes)
    );
    let config = lab.write_file("srvgate.toml", &config)?;
    std::env::set_var("SRVGATE_BIN", srvgate);
    lab.start_srvgate(&config, &[])
        .context("starting srvgate in the gateway namespace")?;
    lab.set_resolver(&lab.client, PUBLIC_IP)?;

    say!(
        "\nThe gateway (namespace {gw}) holds the public address {PUBLIC_IP}; srvgate attached its\n\
         XDP program to pub0, priv1 and priv2 and serves the zone {ZONE}. Its config:\n",
        gw = lab.gw
    );
    for line in std::fs::read_to_string(&config)?.lines() {
        say!("    {line}");
    }
    say!(
        "\nFrom the client namespace ({cli}, the internet), whose resolver is the gateway:",
        cli = lab.client
    );

    let bin = srvgate.display().to_string();
    let dig_target = format!("_ssh._tcp.alice.{ZONE}");
    let out = show(
        &lab,
        &format!("dig @{PUBLIC_IP} SRV {dig_target} +short"),
        &[
            "dig",
            &format!("@{PUBLIC_IP}"),
            "SRV",
            &dig_target,
            "+short",
        ],
    )?;
    expect(&out, &format!("0 0 30001 gw.{ZONE}."))?;

    let key = lab.client_key()?.display().to_string();
    // The lab's throwaway key and host keys; a real student has their own ~/.ssh.
    let quiet = lab.ssh_options()?;
    let quiet: Vec<&str> = quiet.iter().map(String::as_str).collect();
    for (who, host) in [("alice", "alice-box"), ("bob", "bob-box")] {
        let target = format!("root@{who}.ssh.{ZONE}");
        let mut argv = vec![bin.as_str(), "ssh", target.as_str(), "--"];
        argv.extend_from_slice(&quiet);
        argv.push("hostname");
        let out = show(&lab, &format!("srvgate ssh {target} -- hostname"), &argv)?;
        expect(&out, host)?;
    }
    for (who, url) in [
        ("alice", format!("http://alice.http.{ZONE}/")),
        ("bob", format!("http://bob.http.{ZONE}/")),
        ("alice", format!("http://alice.http.{ZONE}:30080/")),
    ] {
        let out = show(
            &lab,
            &format!("curl {url}"),
            &["curl", "-s", "--max-time", "5", &url],
        )?;
        expect(&out, &format!("hello from {who}'s instance"))?;
    }

    let packets = lab
        .metric(
            "srvgate_route_packets_total",
            &[
                ("name", "alice"),
                ("service", "ssh"),
                ("direction", "inbound"),
            ],
        )
        .unwrap_or(0.0);
    let redirected = lab
        .metric("srvgate_xdp_verdicts_total", &[("verdict", "fwd_redirect")])
        .unwrap_or(0.0);
    say!(
        "\nThose packets never went through the gateway's kernel stack: srvgate's XDP program\n\
         rewrote and redirected {redirected} of them ({packets} inbound on alice's ssh route),\n\
         as its metrics show (curl http://127.0.0.1:9110/metrics in {gw}). The web pages by\n\
         name alone went through srvgate's HTTP router on port 80, which picks the backend by\n\
         the Host header; with :30080 the same page came through XDP.",
        gw = lab.gw
    );
    if once {
        say!("\ndemo: all steps worked; removing the lab.");
        return Ok(());
    }
    say!(
        "\nThe lab stays up. In another terminal, try as root:\n\
         \n    ip netns exec {cli} {bin} ssh root@bob.ssh.{ZONE} -- -i {key} -o StrictHostKeyChecking=no\
         \n    ip netns exec {cli} dig @{PUBLIC_IP} SRV _ssh._tcp.bob.{ZONE}\
         \n    ip netns exec {cli} curl http://bob.http.{ZONE}/\
         \n    ip netns exec {gw} curl -s http://127.0.0.1:9110/metrics\n\
         \nPress Ctrl-C to remove the lab.",
        cli = lab.client,
        gw = lab.gw
    );
    // Until a signal: the lab library's watcher removes the lab and ends the process.
    loop {
        if let Some(pid) = lab.srvgate_pid().filter(|p| !lab.is_running(*p)) {
            bail!(
                "srvgate (pid {pid}) exited; its log:\n{}",
                lab.srvgate_log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints `$ shown`, runs `argv` in the client namespace, prints its output.
fn show(lab: &Lab, shown: &str, argv: &[&str]) -> Result<Output> {
    say!("\n  $ {shown}");
    let out = lab.exec(&lab.client, argv, Duration::from_secs(20))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        say!("    {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        say!("    {line}");
    }
    Ok(out)
}

fn expect(out: &Output, want: &str) -> Result<()> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(want) {
        bail!(
            "expected {want:?} in the output ({}); the demo lab is not working",
            out.status
        );
    }
    Ok(())
}
