//! Students serve themselves: the admin registers accounts, a student logs in with a token
//! over the portal (HTTPS, pinned fingerprint), claims a port, reaches their instance by
//! name with real ssh, and loses the route only by releasing it or leaving it idle. Every
//! step runs the real srvgate binary from the lab's client namespace.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Output, time::Duration};

use serde_json::Value;
use srvgate_tests::*;

const ZONE: &str = "lab.example";

fn config() -> String {
    config_toml(&[]).replace(
        "port_cooldown = \"0s\"",
        "port_cooldown = \"1d\"\nreclaim_after = \"14d\"",
    ) + &format!("\n[portal]\nlisten = [\"{PUBLIC_IP}:8443\"]\n")
}

/// `srvgate ARGS...` in namespace `ns`, whatever its exit status.
fn student(lab: &Lab, ns: &str, args: &[&str]) -> Output {
    let bin = srvgate_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    lab.exec(ns, &argv, DEFAULT_TIMEOUT).unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A refusal: exit code 2, and stderr says why.
fn refused(out: &Output, what: &str, words: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what} should be refused:\n{err}"
    );
    for w in words {
        assert!(err.contains(w), "{what}: stderr should say {w:?}:\n{err}");
    }
}

fn token(lab: &Lab, add_args: &[&str]) -> String {
    let out = lab.srvgate_ctl_ok(add_args).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// `srvgate claim SERVICE --backend BACKEND` as the student whose credentials are `creds`.
fn claim(lab: &Lab, creds: &str, service: &str, backend: &str) -> Output {
    student(
        lab,
        &lab.client,
        &[
            "claim",
            service,
            "--backend",
            backend,
            "--credentials",
            creds,
        ],
    )
}

fn mine(lab: &Lab, creds: &str) -> Value {
    let out = ok(
        &student(
            lab,
            &lab.client,
            &["mine", "--json", "--credentials", creds],
        ),
        "mine",
    );
    serde_json::from_str(&out).unwrap()
}

fn ssh_hostname(lab: &Lab, target: &str) -> Output {
    let bin = srvgate_bin().display().to_string();
    let opts = lab.ssh_options().unwrap();
    let mut argv: Vec<&str> = vec![&bin, "ssh", target, "--"];
    argv.extend(opts.iter().map(String::as_str));
    argv.push("hostname");
    lab.exec(&lab.client, &argv, DEFAULT_TIMEOUT).unwrap()
}

#[test]
fn a_student_with_a_token_gets_an_ssh_endpoint_by_name_and_keeps_it_until_released() {
    let Some(lab) = Lab::for_test(
        "a_student_with_a_token_gets_an_ssh_endpoint_by_name",
        "stud",
    ) else {
        return;
    };
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    lab.start_sshd(&lab.b2, "sg-b2").unwrap();
    lab.set_resolver(&lab.client, PUBLIC_IP).unwrap();
    let cfg = lab.write_file("srvgate.toml", &config()).unwrap();
    let offset = lab.write_file("clock-offset", "0").unwrap();
    let offset_arg = offset.display().to_string();
    lab.start_srvgate(&cfg, &["--clock-offset-file", &offset_arg])
        .unwrap();

    // The admin registers two students and publishes the portal's fingerprint.
    let alice = token(
        &lab,
        &[
            "user",
            "add",
            "alice",
            "--allow",
            B1_IP,
            "--max-routes",
            "1",
            "--json",
        ],
    );
    let bob = token(
        &lab,
        &[
            "user",
            "add",
            "bob",
            "--allow",
            &format!("{B2_IP}:22"),
            "--json",
        ],
    );
    let status: Value =
        serde_json::from_str(&lab.srvgate_ctl_ok(&["status", "--json"]).unwrap()).unwrap();
    let fp = status["portal"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let users = lab.srvgate_ctl_ok(&["user", "ls"]).unwrap();
    assert!(users.contains("alice") && users.contains("bob"), "{users}");

    let url = format!("https://{PUBLIC_IP}:8443");
    let dir = lab.dir().display().to_string();
    let (alice_creds, bob_creds) = (format!("{dir}/alice.json"), format!("{dir}/bob.json"));
    // `srvgate login` with NAME's token, checking the fingerprint `fp`.
    let login_with = |name: &str, token: &str, fp: &str, creds: &str| {
        let file = lab.write_file(&format!("{name}.token"), token).unwrap();
        student(
            &lab,
            &lab.client,
            &[
                "login",
                &url,
                "--token-file",
                &file.display().to_string(),
                "--fingerprint",
                fp,
                "--credentials",
                creds,
            ],
        )
    };
    let login = |name: &str, token: &str, creds: &str| login_with(name, token, &fp, creds);
    let out = ok(&login("alice", &alice, &alice_creds), "alice login");
    assert!(out.contains("logged in as alice"), "{out}");
    let mode = std::fs::metadata(&alice_creds)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the saved credentials are private");
    ok(&login("bob", &bob, &bob_creds), "bob login");
    // A wrong fingerprint stops login before the token is sent.
    let wrong_fp = "00:".repeat(31) + "00";
    let out = login_with("x", &alice, &wrong_fp, &format!("{dir}/x.json"));
    refused(
        &out,
        "login with the wrong fingerprint",
        &["not sending the token"],
    );

    // One command: a port, and the way to use it.
    let out = ok(
        &claim(&lab, &alice_creds, "ssh", &format!("{B1_IP}:22")),
        "alice claim",
    );
    assert!(
        out.contains(&format!("srvgate ssh alice.ssh.{ZONE}")),
        "{out}"
    );
    let port = mine(&lab, &alice_creds)["routes"][0]["port"]
        .as_u64()
        .unwrap();
    let out = ssh_hostname(&lab, &format!("root@alice.ssh.{ZONE}"));
    assert_eq!(ok(&out, "srvgate ssh alice").trim(), "sg-b1");

    // Confined: not bob's backend, not past the quota, never another name.
    let out = claim(&lab, &alice_creds, "web", &format!("{B2_IP}:22"));
    refused(&out, "a claim on bob's backend", &["not yours", B2_IP]);
    let out = claim(&lab, &alice_creds, "web", &format!("{B1_IP}:80"));
    refused(&out, "a claim past the quota", &["quota", "1 of 1"]);
    assert_eq!(
        mine(&lab, &bob_creds)["routes"].as_array().unwrap().len(),
        0
    );
    let out = student(
        &lab,
        &lab.client,
        &["release", "ssh", "--credentials", &bob_creds],
    );
    refused(&out, "bob releasing alice's route", &["no route"]);
    // The change is in the audit log with who and from where.
    let log = lab.srvgate_log();
    assert!(
        log.lines()
            .any(|l| l.contains("audit") && l.contains("alice") && l.contains("from=")),
        "{log}"
    );

    // A new token locks the old one out.
    let new_alice = token(&lab, &["user", "token", "alice", "--json"]);
    let out = student(&lab, &lab.client, &["mine", "--credentials", &alice_creds]);
    refused(&out, "the old token", &["invalid or missing token"]);
    ok(
        &login("alice", &new_alice, &alice_creds),
        "alice login again",
    );

    // A restart keeps accounts, routes and ports.
    lab.stop_srvgate().unwrap();
    lab.start_srvgate(&cfg, &["--clock-offset-file", &offset_arg])
        .unwrap();
    assert_eq!(
        mine(&lab, &alice_creds)["routes"][0]["port"].as_u64(),
        Some(port)
    );
    assert_eq!(
        ok(
            &ssh_hostname(&lab, &format!("root@alice.ssh.{ZONE}")),
            "ssh after restart"
        )
        .trim(),
        "sg-b1"
    );

    // Released: the port cools down, bob gets another one; a day later it is back.
    ok(
        &student(
            &lab,
            &lab.client,
            &["release", "ssh", "--credentials", &alice_creds],
        ),
        "alice release",
    );
    assert_eq!(
        mine(&lab, &alice_creds)["routes"].as_array().unwrap().len(),
        0
    );
    assert!(!ssh_hostname(&lab, &format!("root@alice.ssh.{ZONE}"))
        .status
        .success());
    ok(
        &claim(&lab, &bob_creds, "ssh", &format!("{B2_IP}:22")),
        "bob claim",
    );
    let bob_port = mine(&lab, &bob_creds)["routes"][0]["port"]
        .as_u64()
        .unwrap();
    assert_ne!(
        bob_port, port,
        "a released port is not handed out during its cool-down"
    );
    std::fs::write(&offset, "2d").unwrap();
    wait_until(
        "alice's old port leaves the cool-down",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(lab.state_dir().join("accounts.json")).unwrap();
            !text.contains(&format!("\"port\": {port}"))
        },
    );
    ok(
        &claim(&lab, &alice_creds, "ssh", &format!("{B1_IP}:22")),
        "alice claims again",
    );
    assert_eq!(
        mine(&lab, &alice_creds)["routes"][0]["port"].as_u64(),
        Some(port)
    );

    // Left idle past reclaim_after: gone from `mine` (and from DNS).
    std::fs::write(&offset, "30d").unwrap();
    wait_until(
        "alice's idle route is reclaimed",
        Duration::from_secs(15),
        || {
            mine(&lab, &alice_creds)["routes"]
                .as_array()
                .unwrap()
                .is_empty()
        },
    );

    // Idle connections that never finish a handshake cannot take the portal from others:
    // one address gets a bounded share, and each is dropped after the request timeout.
    let portal: std::net::SocketAddr = format!("{PUBLIC_IP}:8443").parse().unwrap();
    let idle: Vec<_> = (0..40)
        .filter_map(|_| {
            tcp_connect(&lab.b2, portal, Duration::from_secs(3))
                .unwrap()
                .ok()
        })
        .collect();
    assert!(!idle.is_empty());
    mine(&lab, &bob_creds);
    drop(idle);

    // Repeated bad tokens from one address: 429 (from backend 2's namespace, so the client
    // namespace is not locked out).
    let junk = "sg_bob_".to_string() + &"0".repeat(64);
    let bad = format!("{dir}/bad.json");
    std::fs::write(
        &bad,
        serde_json::json!({"url": url, "fingerprint": fp, "token": junk}).to_string(),
    )
    .unwrap();
    let mut last = String::new();
    for _ in 0..12 {
        let out = student(&lab, &lab.b2, &["mine", "--credentials", &bad]);
        assert_eq!(out.status.code(), Some(2));
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    assert!(last.contains("too many failed logins"), "{last}");
    // The client namespace is not affected.
    mine(&lab, &bob_creds);

    // State files are root's alone: every file in the state directory (the accounts, the
    // portal's key, the routes' snapshot and journal segments).
    let files: Vec<String> = std::fs::read_dir(lab.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for must in ["accounts.json", "portal-key.pem"] {
        assert!(files.iter().any(|f| f == must), "{must} missing: {files:?}");
    }
    assert!(
        files
            .iter()
            .any(|f| f == "routes.json" || f.starts_with("routes.journal.")),
        "no routes stored: {files:?}"
    );
    for f in &files {
        let p = lab.state_dir().join(f);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
        let out = lab
            .exec(
                &lab.gw,
                &[
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "cat",
                    &p.display().to_string(),
                ],
                DEFAULT_TIMEOUT,
            )
            .unwrap();
        assert!(!out.status.success(), "nobody could read {}", p.display());
    }
    assert!(Path::new(&alice_creds).exists());
}
