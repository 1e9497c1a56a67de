//! `srvgate backup` and `srvgate restore`: a backup taken while the gateway forwards,
//! restored onto a gateway that lost everything (no pins, no state directory), gives every
//! student back their token, their routes with the same ports, reachable by name, and the
//! portal's key (so the fingerprint students pinned still matches).

use std::{os::unix::fs::PermissionsExt as _, process::Output};

use serde_json::Value;
use srvgate_tests::*;

const ZONE: &str = "lab.example";

fn config() -> String {
    config_toml(&[]).replace("port_cooldown = \"0s\"", "port_cooldown = \"1d\"")
        + &format!("\n[portal]\nlisten = [\"{PUBLIC_IP}:8443\"]\n")
}

/// `srvgate ARGS...` in namespace `ns`, whatever its exit status.
fn run(lab: &Lab, ns: &str, args: &[&str]) -> Output {
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

fn mine(lab: &Lab, creds: &str) -> Value {
    let out = ok(
        &run(
            lab,
            &lab.client,
            &["mine", "--json", "--credentials", creds],
        ),
        "mine",
    );
    serde_json::from_str(&out).unwrap()
}

fn ssh_hostname(lab: &Lab, target: &str) -> String {
    let bin = srvgate_bin().display().to_string();
    let opts = lab.ssh_options().unwrap();
    let mut argv: Vec<&str> = vec![&bin, "ssh", target, "--"];
    argv.extend(opts.iter().map(String::as_str));
    argv.push("hostname");
    let out = lab.exec(&lab.client, &argv, DEFAULT_TIMEOUT).unwrap();
    ok(&out, &format!("srvgate ssh {target}"))
        .trim()
        .to_string()
}

#[test]
fn a_backup_restored_onto_a_new_gateway_gives_every_student_their_token_routes_and_ports() {
    let Some(lab) = Lab::for_test("a_backup_restored_onto_a_new_gateway", "bkp") else {
        return;
    };
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    lab.start_sshd(&lab.b2, "sg-b2").unwrap();
    lab.set_resolver(&lab.client, PUBLIC_IP).unwrap();
    let cfg = lab.write_file("srvgate.toml", &config()).unwrap();
    lab.start_srvgate(&cfg, &[]).unwrap();

    let alice = token(
        &lab,
        &[
            "user",
            "add",
            "alice",
            "--backend",
            B1_IP,
            "--max-routes",
            "2",
            "--json",
        ],
    );
    let bob = token(
        &lab,
        &[
            "user",
            "add",
            "bob",
            "--backend",
            B2_IP,
            "--max-routes",
            "2",
            "--json",
        ],
    );
    let status: Value =
        serde_json::from_str(&lab.srvgate_ctl_ok(&["status", "--json"]).unwrap()).unwrap();
    let fp = status["portal"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("https://{PUBLIC_IP}:8443");
    let dir = lab.dir().display().to_string();
    let creds = |name: &str| format!("{dir}/{name}.json");
    for (name, tok) in [("alice", &alice), ("bob", &bob)] {
        let file = lab.write_file(&format!("{name}.token"), tok).unwrap();
        ok(
            &run(
                &lab,
                &lab.client,
                &[
                    "login",
                    &url,
                    "--token-file",
                    &file.display().to_string(),
                    "--fingerprint",
                    &fp,
                    "--credentials",
                    &creds(name),
                ],
            ),
            "login",
        );
    }
    let claim = |name: &str, service: &str, backend: &str| {
        run(
            &lab,
            &lab.client,
            &[
                "claim",
                service,
                "--backend",
                backend,
                "--credentials",
                &creds(name),
            ],
        )
    };
    ok(
        &claim("alice", "ssh", &format!("{B1_IP}:22")),
        "alice claims ssh",
    );
    ok(
        &claim("bob", "ssh", &format!("{B2_IP}:22")),
        "bob claims ssh",
    );
    // A released port cools down for a day: the backup must carry that too.
    ok(
        &claim("bob", "tmp", &format!("{B2_IP}:8080")),
        "bob claims tmp",
    );
    let cooling = mine(&lab, &creds("bob"))["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "tmp")
        .unwrap()["port"]
        .as_u64()
        .unwrap();
    ok(
        &run(
            &lab,
            &lab.client,
            &["release", "tmp", "--credentials", &creds("bob")],
        ),
        "bob releases tmp",
    );
    let port_of = |name: &str| {
        mine(&lab, &creds(name))["routes"][0]["port"]
            .as_u64()
            .unwrap()
    };
    let (alice_port, bob_port) = (port_of("alice"), port_of("bob"));
    assert_eq!(
        ssh_hostname(&lab, &format!("root@alice.ssh.{ZONE}")),
        "sg-b1"
    );

    // The backup, taken from the running daemon.
    let state = lab.state_dir().display().to_string();
    let file = lab.dir().join("gateway.backup");
    let file_arg = file.display().to_string();
    let out = lab
        .srvgate_ctl_ok(&["backup", &file_arg, "--state-dir", &state])
        .unwrap();
    assert!(
        out.contains("2 runtime routes")
            && out.contains("2 accounts")
            && out.contains("running daemon"),
        "{out}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a backup holds token hashes and keys");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("{\n  \"srvgate_backup\": 1"), "{text}");
    for secret in [&alice, &bob] {
        assert!(
            !text.contains(&secret[secret.len() - 20..]),
            "a token itself is never written"
        );
    }

    // The gateway dies: forwarding stops, its state directory is gone.
    lab.srvgate_ctl_ok(&["down"]).unwrap();
    let _ = lab.stop_srvgate();
    std::fs::rename(lab.state_dir(), lab.dir().join("state.lost")).unwrap();
    let restore = |args: &[&str]| {
        // `srvgate restore ARGS... --state-dir STATE`.
        let argv: Vec<&str> = std::iter::once("restore")
            .chain(args.iter().copied())
            .chain(["--state-dir", state.as_str()])
            .collect();
        lab.srvgate(&argv, DEFAULT_TIMEOUT).unwrap()
    };

    // A damaged backup is refused naming the record, and nothing is written.
    let bad = lab
        .write_file(
            "bad.backup",
            &text.replacen(
                &format!("\"port\": {bob_port}"),
                &format!("\"port\": {alice_port}"),
                1,
            ),
        )
        .unwrap();
    let out = restore(&[&bad.display().to_string()]);
    refused(
        &out,
        "a backup where two routes share a port",
        &["bad.backup", "routes[", ".port"],
    );

    let out = restore(&[&file_arg]);
    let said = ok(&out, "restore");
    assert!(
        said.contains("2 runtime routes") && said.contains("2 accounts"),
        "{said}"
    );
    // Twice is refused: it would replace what is there.
    refused(
        &restore(&[&file_arg]),
        "a second restore",
        &["already holds", "--force"],
    );
    ok(&restore(&[&file_arg, "--force"]), "restore --force");

    lab.start_srvgate(&cfg, &[]).unwrap();
    // Reached by name on the same port, through the restored DNS and maps.
    assert_eq!(
        ssh_hostname(&lab, &format!("root@alice.ssh.{ZONE}")),
        "sg-b1"
    );
    assert_eq!(ssh_hostname(&lab, &format!("root@bob.ssh.{ZONE}")), "sg-b2");
    // The old tokens and the pinned fingerprint (the portal's restored key) still work.
    assert_eq!(port_of("alice"), alice_port);
    assert_eq!(port_of("bob"), bob_port);
    ok(
        &claim("alice", "web", &format!("{B1_IP}:80")),
        "alice claims with her old token",
    );
    let web = mine(&lab, &creds("alice"))["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "web")
        .unwrap()["port"]
        .as_u64()
        .unwrap();
    assert_ne!(web, cooling, "the cooling port was restored as cooling");
    // Quotas came back too.
    let out = claim("alice", "third", &format!("{B1_IP}:81"));
    refused(&out, "a claim past the restored quota", &["quota"]);
}
