//! `cargo xtask run` without arguments: a self-contained demo lab in network namespaces
//! (`sg-demo-*`): a client (the internet), the gateway running srvgate with XDP attached,
//! and two student instances with real sshd and a small web server. It runs, and prints,
//! what a newcomer would type: first the admin's static routes, then a student (carol) who
//! is added, logs in through the portal, claims an ssh port, uses it by name, sees the web
//! console's address (and a screenshot, if Chromium is there) and releases it. Before the
//! student, a route with a pool of two backends: requests spread, a drain, and one
//! backend's service stopped while the route goes on with the other. Then it
//! keeps the lab up until Ctrl-C and removes it all.
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
use srvgate_tests::{
    config_toml, is_root, workspace_root, Lab, RouteSpec, B1_IP, B2_IP, PUBLIC_IP,
};

const ZONE: &str = "lab.example";
/// The students' portal (HTTPS API and web console) on the gateway's public address.
const PORTAL_PORT: u16 = 8443;
/// carol's sshd on bob's machine (B2): port 22 there is bob's route's backend already.
const CAROL_SSH_PORT: u16 = 2222;
/// The judge site's pool: its public port, and its port on both backends (80 is taken by
/// alice's and bob's web routes: a backend belongs to one route).
const POOL_PORT: u16 = 30100;
const POOL_BACKEND_PORT: u16 = 8080;
/// New connections per look at the pool: enough that a spread shows, few enough to read.
const POOL_REQUESTS: usize = 8;

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
    // carol's instance: another sshd on bob's machine, her own port there.
    lab.start_sshd_on(&lab.b2, "carol-box", B2_IP, CAROL_SSH_PORT)?;
    for (ns, who) in [(&lab.b1, "alice"), (&lab.b2, "bob")] {
        lab.start_web(ns, &format!("hello from {who}'s instance"))?;
    }
    let routes = [
        RouteSpec::tcp("alice", "ssh", &format!("{B1_IP}:22"), 30001),
        RouteSpec::tcp("bob", "ssh", &format!("{B2_IP}:22"), 30002),
        RouteSpec::tcp("alice", "http", &format!("{B1_IP}:80"), 30080),
        RouteSpec::tcp("bob", "http", &format!("{B2_IP}:80"), 30081),
    ];
    // HTTP by Host header on the gateway's port 80: alice.http.<zone> needs no port. The
    // portal is where students log in and claim; an idle claim goes back after 14 days.
    let config = format!(
        "{}\n[http]\nlisten = [\"{PUBLIC_IP}:80\"]\n\n[portal]\nlisten = [\"{PUBLIC_IP}:{PORTAL_PORT}\"]\n",
        config_toml(&routes).replace(
            "port_cooldown = \"0s\"",
            "port_cooldown = \"0s\"\nreclaim_after = \"14d\""
        )
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
    pool(&lab)?;
    let portal = student(&lab, &bin)?;
    if once {
        say!("\ndemo: all steps worked; removing the lab.");
        return Ok(());
    }
    say!(
        "\nThe lab stays up. In another terminal, try as root:\n\
         \n    ip netns exec {cli} {bin} ssh root@bob.ssh.{ZONE} -- -i {key} -o StrictHostKeyChecking=no\
         \n    ip netns exec {cli} dig @{PUBLIC_IP} SRV _ssh._tcp.bob.{ZONE}\
         \n    ip netns exec {cli} curl http://bob.http.{ZONE}/\
         \n    ip netns exec {gw} curl -s http://127.0.0.1:9110/metrics\
         \n    ip netns exec {gw} {bin} user add dave --allow {B1_IP} --socket {socket}\
         \n    ip netns exec {cli} {bin} login {portal} --fingerprint FINGERPRINT --credentials /tmp/dave.json\n\
         \nPress Ctrl-C to remove the lab.",
        socket = lab.socket_path().display(),
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

/// A route with a pool of two backends (issue 26): new connections spread over both, a
/// drain sends new ones to the other, and a stopped service leaves the pool through the
/// health checks while the route goes on with the member that is left.
fn pool(lab: &Lab) -> Result<()> {
    let (m1, m2) = (
        format!("{B1_IP}:{POOL_BACKEND_PORT}"),
        format!("{B2_IP}:{POOL_BACKEND_PORT}"),
    );
    let web1 = lab.start_echo_web(&lab.b1, "judge-1", POOL_BACKEND_PORT)?;
    lab.start_echo_web(&lab.b2, "judge-2", POOL_BACKEND_PORT)?;
    say!(
        "\nA route may have a pool of backends. The judge site runs on both machines\n\
         (port {POOL_BACKEND_PORT}); the admin gives its route both:"
    );
    let port = POOL_PORT.to_string();
    admin(
        lab,
        &[
            "route",
            "add",
            "judge",
            "--service",
            "http",
            "--backend",
            &m1,
            "--backend",
            &m2,
            "--port",
            &port,
        ],
    )?;
    // By name, srvgate's HTTP router picks a backend per request over the pool.
    let url = format!("http://judge.http.{ZONE}/");
    let (n1, n2) = spread(lab, &url, POOL_REQUESTS)?;
    if n1 == 0 || n2 == 0 {
        bail!("{POOL_REQUESTS} requests to {url} all went to one backend ({n1}/{n2}); the pool is not balanced");
    }
    admin(lab, &["route", "drain", "judge", "--backend", &m1])?;
    let drained = spread(lab, &url, POOL_REQUESTS)?;
    if drained != (0, POOL_REQUESTS) {
        bail!("after the drain of {m1}: {drained:?} answers from (judge-1, judge-2)");
    }
    say!("  no new request goes to a drained backend; established ones finish there.");
    admin(lab, &["route", "undrain", "judge", "--backend", &m1])?;

    say!(
        "\njudge-1's service stops. srvgate checks every member of a pool (tcp connect, every\n\
         2 s, down after 3 failures) and takes it out of the pool:"
    );
    lab.stop(web1, Duration::from_secs(5))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ls = lab.srvgate_ctl_ok(&["route", "ls"])?;
        if ls.lines().any(|l| l.contains(&m1) && l.contains("DOWN")) {
            say!("\n  gw# srvgate route ls");
            for line in ls.lines() {
                say!("    {line}");
            }
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("{m1} is still not down 60 s after its service stopped:\n{ls}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let xdp = format!("http://{PUBLIC_IP}:{POOL_PORT}/");
    let left = spread(lab, &xdp, POOL_REQUESTS)?;
    if left != (0, POOL_REQUESTS) {
        bail!("with judge-1 down: {left:?} answers from (judge-1, judge-2) on {xdp}");
    }
    say!("  the route goes on with judge-2, through XDP and by name alike.");
    Ok(())
}

/// Runs an admin verb in the gateway namespace, printing it and its output.
fn admin(lab: &Lab, args: &[&str]) -> Result<()> {
    say!("\n  gw# srvgate {}", args.join(" "));
    for line in lab.srvgate_ctl_ok(args)?.lines() {
        say!("    {line}");
    }
    Ok(())
}

/// `n` new connections to `url` from the client: how many each judge answered, printed.
fn spread(lab: &Lab, url: &str, n: usize) -> Result<(usize, usize)> {
    let (mut n1, mut n2) = (0, 0);
    for _ in 0..n {
        let out = lab.exec(
            &lab.client,
            &["curl", "-fsS", "--max-time", "5", url],
            Duration::from_secs(10),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.split_whitespace().next() {
            Some("judge-1") if out.status.success() => n1 += 1,
            Some("judge-2") if out.status.success() => n2 += 1,
            _ => bail!("curl {url}: no judge answered ({}): {text}", out.status),
        }
    }
    say!("\n  $ for i in $(seq {n}); do curl -s {url}; done   (answers counted)\n    judge-1: {n1}, judge-2: {n2}");
    Ok((n1, n2))
}

/// The mission's central idea, from the student's side: the admin adds carol, who logs in
/// from the client (the internet), claims an ssh port, uses it by name, looks at her routes
/// and the console, and gives the port back. Returns the portal's URL.
fn student(lab: &Lab, bin: &str) -> Result<String> {
    say!(
        "\nStudents get their own endpoints by asking. On the gateway, the admin adds carol,\n\
         who may point routes at {B2_IP} (her instance, sshd on port {CAROL_SSH_PORT}):"
    );
    say!("\n  gw# srvgate user add carol --allow {B2_IP}");
    let added = lab.srvgate_ctl_ok(&["user", "add", "carol", "--allow", B2_IP])?;
    for line in added.lines() {
        say!("    {line}");
    }
    // The onboarding block's `Token:` line (`lb_model::text::onboarding`).
    let token = added
        .lines()
        .find_map(|l| l.trim().strip_prefix("Token:"))
        .context("`srvgate user add` printed no token")?
        .trim()
        .to_string();
    say!("\n  gw# srvgate status   (the portal's line)");
    let status = lab.srvgate_ctl_ok(&["status"])?;
    let portal_line = status
        .lines()
        .find(|l| l.starts_with("portal "))
        .context("`srvgate status` shows no portal")?;
    say!("    {portal_line}");
    let fingerprint = portal_line
        .rsplit("SHA-256 ")
        .next()
        .and_then(|f| f.strip_suffix(')'))
        .context("no certificate fingerprint on the portal's status line")?
        .to_string();

    let url = format!("https://{PUBLIC_IP}:{PORTAL_PORT}");
    let token_file = lab.write_file("carol.token", &format!("{token}\n"))?;
    let token_file = token_file.display().to_string();
    let creds = lab.dir().join("carol.json").display().to_string();
    say!(
        "\ncarol, on her own machine (the client namespace), with the token the admin gave her\n\
         and the fingerprint the admin published (--credentials keeps the demo out of ~/.config):"
    );
    let argv = |args: &[&str]| -> Vec<String> {
        let mut v = vec![bin.to_string()];
        v.extend(args.iter().map(|a| a.to_string()));
        v.extend(["--credentials".to_string(), creds.clone()]);
        v
    };
    let run = |shown: &str, args: &[&str]| -> Result<Output> {
        let v = argv(args);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        show(lab, &format!("{shown} --credentials {creds}"), &v)
    };
    let out = run(
        &format!("srvgate login {url} --fingerprint {fingerprint} --token-file {token_file}"),
        &[
            "login",
            &url,
            "--fingerprint",
            &fingerprint,
            "--token-file",
            &token_file,
        ],
    )?;
    expect(&out, "logged in as carol")?;
    let backend = format!("{B2_IP}:{CAROL_SSH_PORT}");
    let out = run(
        &format!("srvgate claim ssh --backend {backend}"),
        &["claim", "ssh", "--backend", &backend],
    )?;
    expect(&out, &format!("srvgate ssh carol.ssh.{ZONE}"))?;

    let quiet = lab.ssh_options()?;
    let target = format!("root@carol.ssh.{ZONE}");
    let mut ssh = vec![bin, "ssh", target.as_str(), "--"];
    ssh.extend(quiet.iter().map(String::as_str));
    ssh.push("hostname");
    let out = show(lab, &format!("srvgate ssh {target} -- hostname"), &ssh)?;
    expect(&out, "carol-box")?;
    let out = run("srvgate mine", &["mine"])?;
    expect(&out, "carol: 1 of")?;
    expect(&out, "reclaimed in")?;
    say!(
        "\nThe port is carol's while she uses it: left idle for 14 days ([gateway] reclaim_after)\n\
         it goes back by itself, which `mine` counts down."
    );

    say!(
        "\nThe same, in a browser: the web console at {url}/ (log in with the token; the\n\
         certificate is self-signed, its SHA-256 is the fingerprint above)."
    );
    console_screenshot(lab, &url);

    let out = run("srvgate release ssh", &["release", "ssh"])?;
    if !out.status.success() {
        bail!(
            "carol's release failed ({}); the demo lab is not working",
            out.status
        );
    }
    let out = run("srvgate mine", &["mine"])?;
    expect(&out, "no routes")?;
    let srv = format!("_ssh._tcp.carol.{ZONE}");
    let out = show(
        lab,
        &format!("dig @{PUBLIC_IP} SRV {srv} +short"),
        &["dig", &format!("@{PUBLIC_IP}"), "SRV", &srv, "+short"],
    )?;
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
        bail!("carol's name still answers after the release; the demo lab is not working");
    }
    say!("\nReleased: the port, the name and the route are gone.");
    Ok(url)
}

/// A screenshot of the console's login page with headless Chromium in the client
/// namespace, when Chromium is installed; otherwise (or if it fails) the command to take
/// one. Not a step the demo checks: the console's own tests drive it in a browser.
fn console_screenshot(lab: &Lab, url: &str) {
    let dir = workspace_root().join("target/demo");
    let path = dir.join("console-login.png");
    let profile = lab.dir().join("chromium");
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-dev-shm-usage".to_string(),
        // Self-signed: this picture needs no pinning; the CLI pins the fingerprint.
        "--ignore-certificate-errors".to_string(),
        format!("--user-data-dir={}", profile.display()),
        "--window-size=1200,800".to_string(),
        format!("--screenshot={}", path.display()),
        format!("{url}/"),
    ];
    let shown = format!("chromium {}", args.join(" "));
    let taken = std::fs::create_dir_all(&dir).is_ok() && {
        let _ = std::fs::remove_file(&path);
        let mut argv = vec!["chromium"];
        argv.extend(args.iter().map(String::as_str));
        lab.exec(&lab.client, &argv, Duration::from_secs(60))
            .is_ok_and(|o| o.status.success())
            && path.exists()
    };
    if taken {
        say!("  screenshot of its login page: {}", path.display());
    } else {
        say!(
            "  (no screenshot: Chromium is missing or failed; take one with\n    ip netns exec {} {shown})",
            lab.client
        );
    }
    say!(
        "  the logged-in pages, as the console's tests see them: {}",
        workspace_root()
            .join("target/console-screenshots")
            .display()
    );
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
