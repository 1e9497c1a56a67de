//! `[acme]` against a real CA: Debian's pebble (an RFC 8555 test CA) in backend 2's
//! namespace, told to resolve names through srvgate's own DNS (`-dnsserver`), so every
//! DNS-01 challenge it checks is answered by the gateway's zone. pebble issues certificates
//! valid for [`VALIDITY`] seconds, so renewal (at two thirds of that) happens within the test.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use srvgate_tests::*;

/// pebble's own HTTPS (the ACME API) and its management API (the roots it signs with).
const ACME_PORT: u16 = 14000;
const MANAGEMENT_PORT: u16 = 15000;
/// Lifetime of the certificates pebble issues: renewal is due after two thirds of it.
const VALIDITY: u64 = 60;
const ISSUED: &str = "srvgate_tls_certificate_expiry_seconds";
const FAILING: &str = "srvgate_tls_certificate_renewal_failing";

/// A CA and a leaf for pebble's own HTTPS (its address as the name), made with openssl:
/// returns (the CA's PEM, which srvgate's `[acme] ca` names; the leaf; its key).
fn pebble_tls(lab: &Lab) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| lab.dir().join(f).display().to_string();
    let ext = lab
        .write_file(
            "pebble.ext",
            &format!("subjectAltName=IP:{B2_IP}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key, csr, leaf, key) = (
        p("ca.pem"),
        p("ca.key"),
        p("pebble.csr"),
        p("pebble.pem"),
        p("pebble.key"),
    );
    let mut argv = vec![
        "openssl",
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=pebble-lab-ca",
    ];
    argv.extend(ec);
    argv.extend(["-keyout", &ca_key, "-out", &ca]);
    lab.exec_ok(&lab.gw, &argv).unwrap();
    let subject = format!("/CN={B2_IP}");
    let mut argv = vec!["openssl", "req", "-subj", &subject];
    argv.extend(ec);
    argv.extend(["-keyout", &key, "-out", &csr]);
    lab.exec_ok(&lab.gw, &argv).unwrap();
    let ext = ext.display().to_string();
    let argv = [
        "openssl",
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &leaf,
    ];
    lab.exec_ok(&lab.gw, &argv).unwrap();
    (ca.into(), leaf.into(), key.into())
}

/// Starts pebble in backend 2's namespace, resolving through the gateway's zone, and waits
/// for its API. Every start makes a new root.
fn start_pebble(lab: &Lab, cert: &Path, key: &Path) -> u32 {
    let config = format!(
        r#"{{"pebble": {{
  "listenAddress": "{B2_IP}:{ACME_PORT}",
  "managementListenAddress": "{B2_IP}:{MANAGEMENT_PORT}",
  "certificate": "{}",
  "privateKey": "{}",
  "httpPort": 5002,
  "tlsPort": 5001,
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false,
  "certificateValidityPeriod": {VALIDITY}
}}}}"#,
        cert.display(),
        key.display()
    );
    let config = lab.write_file("pebble.json", &config).unwrap();
    let dns = format!("{PUBLIC_IP}:53");
    let log = lab.dir().join("pebble.log");
    let argv = [
        "pebble",
        "-config",
        config.to_str().unwrap(),
        "-dnsserver",
        dns.as_str(),
    ];
    let pid = lab
        .spawn_logged(
            &lab.b2,
            &argv,
            &[
                // No random 0-15 s sleep before each validation.
                ("PEBBLE_VA_NOSLEEP", "1"),
                // No deliberately refused nonces: they test a client's retry, not ours.
                ("PEBBLE_WFE_NONCEREJECT", "0"),
                // Every order proves its names again, so renewals exercise the zone too.
                ("PEBBLE_AUTHZREUSE", "0"),
            ],
            &log,
        )
        .unwrap();
    lab.wait_listening(&lab.b2, pid, ACME_PORT, DEFAULT_TIMEOUT)
        .unwrap();
    pid
}

/// The root pebble signs with now (from its management API).
fn pebble_root(lab: &Lab, ca: &Path) -> PathBuf {
    let url = format!("https://{B2_IP}:{MANAGEMENT_PORT}/roots/0");
    let pem = lab
        .exec_ok(
            &lab.gw,
            &[
                "curl",
                "-sf",
                "--max-time",
                "5",
                "--cacert",
                ca.to_str().unwrap(),
                &url,
            ],
        )
        .unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    lab.write_file("pebble-root.pem", &pem).unwrap()
}

/// The serial of the certificate the portal presents for `name` (SNI), from the client.
fn served_serial(lab: &Lab, name: &str) -> String {
    let script = format!(
        "openssl s_client -connect {PUBLIC_IP}:8443 -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    lab.sh(&lab.client, &script).unwrap().trim().to_string()
}

/// `curl --cacert ROOT https://NAME:8443/` from the client, the name resolved by the
/// gateway's zone: whether the TLS handshake verified (any HTTP status will do).
fn verified(lab: &Lab, root: &Path, name: &str) -> Result<(), String> {
    let url = format!("https://{name}:8443/");
    let out = lab
        .exec(
            &lab.client,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "--cacert",
                root.to_str().unwrap(),
                "-w",
                "%{http_code}",
                &url,
            ],
            DEFAULT_TIMEOUT,
        )
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "curl {url}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `curl --cacert ROOT VERSION https://NAME/hi` from the client: (the HTTP version used,
/// the body).
fn https_get(lab: &Lab, root: &Path, name: &str, version: &str) -> (String, String) {
    let url = format!("https://{name}/hi");
    let out = lab
        .exec_ok(
            &lab.client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                version,
                "--cacert",
                root.to_str().unwrap(),
                "-H",
                "X-Forwarded-For: 6.6.6.6",
                "-w",
                "\n%{http_version}",
                &url,
            ],
        )
        .unwrap();
    let (body, v) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (v.to_string(), body.trim_end().to_string())
}

/// The names in the certificate the HTTPS router presents for `name`.
fn names_served(lab: &Lab, name: &str) -> String {
    let script = format!(
        "openssl s_client -connect {PUBLIC_IP}:443 -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
    );
    lab.sh(&lab.client, &script).unwrap()
}

/// `srvgate ARGS...` as a student in the client namespace, trusting `root` as this
/// machine's CA (`SSL_CERT_FILE`, as the system's roots would be for a public CA).
fn student(lab: &Lab, root: &Path, args: &[&str]) -> std::process::Output {
    let bin = srvgate_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    let mut cmd = netns_command(&lab.client, &argv);
    cmd.env("SSL_CERT_FILE", root);
    run_with_timeout(&mut cmd, DEFAULT_TIMEOUT).unwrap()
}

fn issued(lab: &Lab, name: &str) -> Option<f64> {
    lab.metric(ISSUED, &[("name", name)]).ok()
}

#[test]
fn the_gateway_orders_renews_and_keeps_its_certificate_through_its_own_zone() {
    let Some(lab) = Lab::for_test(
        "the_gateway_orders_renews_and_keeps_its_certificate_through_its_own_zone",
        "acme",
    ) else {
        return;
    };
    let (ca, cert, key) = pebble_tls(&lab);
    let pebble = start_pebble(&lab, &cert, &key);
    lab.start_echo_web(&lab.b1, "alice", 8080).unwrap();
    lab.start_echo_web(&lab.b1, "bob", 8081).unwrap();
    let alice = RouteSpec::tcp("alice", "http", &format!("{B1_IP}:8080"), 30080);
    let config = format!(
        "{}\n[http]\nlisten = [\"{PUBLIC_IP}:80\"]\nredirect_https = true\n\n[https]\nlisten = [\"{PUBLIC_IP}:443\"]\n\n\
         [portal]\nlisten = [\"{PUBLIC_IP}:8443\"]\n\n\
         [acme]\ndirectory = \"https://{B2_IP}:{ACME_PORT}/dir\"\ncontact = [\"admin@lab.example\"]\nca = \"{}\"\n",
        config_toml(&[alice]),
        ca.display()
    );
    let config = lab.write_file("srvgate.toml", &config).unwrap();
    lab.start_srvgate(&config, &[]).unwrap();
    lab.set_resolver(&lab.client, PUBLIC_IP).unwrap();

    // Ordered at start: the wildcard of the web routes and the portal's (gateway's) name.
    wait_until("the certificate is issued", Duration::from_secs(90), || {
        issued(&lab, "*.http.lab.example").is_some()
    });
    assert!(issued(&lab, "gw.lab.example").is_some());
    assert_eq!(lab.metric(FAILING, &[]).unwrap(), 0.0);
    let log = lab.srvgate_log();
    assert!(log.contains("certificate issued and in force"), "{log}");
    let status = lab.srvgate_ctl_ok(&["status"]).unwrap();
    assert!(
        status.contains("certificate (ACME) *.http.lab.example, gw.lab.example: expires in"),
        "{status}"
    );
    // pebble checked the challenges through the gateway's zone, which no longer has them.
    let (_, answers) = lab.dig("TXT", "_acme-challenge.http.lab.example");
    assert!(
        answers.is_empty(),
        "challenge left in the zone: {answers:?}"
    );
    // The keys and the chain are the state directory's, readable by root alone.
    for f in ["acme-account.json", "acme-key.pem", "acme-cert.pem"] {
        let path = lab.state_dir().join(f);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // The portal presents it under its public name, verified against pebble's root; by
    // address (no name) it still presents its own self-signed one, pinned as before.
    let root = pebble_root(&lab, &ca);
    verified(&lab, &root, "gw.lab.example").unwrap();
    // So a student logs in by the portal's name with no fingerprint to compare, and her
    // later calls verify the chain again (it renews) instead of pinning it.
    let out = lab
        .srvgate_ctl_ok(&["user", "add", "carol", "--backend", B1_IP, "--json"])
        .unwrap();
    let token = serde_json::from_str::<serde_json::Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let token_file = lab.write_file("carol.token", &token).unwrap();
    let creds = lab.dir().join("carol.json").display().to_string();
    let login = student(
        &lab,
        &root,
        &[
            "login",
            "https://gw.lab.example:8443",
            "--token-file",
            token_file.to_str().unwrap(),
            "--credentials",
            &creds,
        ],
    );
    let err = String::from_utf8_lossy(&login.stderr);
    assert!(login.status.success(), "login: {err}");
    assert!(
        err.contains("certificate authority this machine trusts"),
        "{err}"
    );
    let saved = std::fs::read_to_string(&creds).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["verified"], true, "{saved}");
    let by_address = lab
        .sh(
            &lab.client,
            &format!("openssl s_client -connect {PUBLIC_IP}:8443 </dev/null 2>/dev/null | openssl x509 -noout -issuer"),
        )
        .unwrap();
    assert!(
        !by_address.to_lowercase().contains("pebble"),
        "{by_address}"
    );

    // alice's plain-HTTP site over HTTPS with the wildcard, HTTP/2 and HTTP/1.1, verified;
    // her backend hears of the client from the gateway alone.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (v, body) = https_get(&lab, &root, "alice.http.lab.example", flag);
        assert_eq!(v, version, "{body}");
        assert!(
            body.starts_with("alice GET /hi host=alice.http.lab.example"),
            "{body}"
        );
        assert!(body.ends_with(&format!("xff={CLIENT_IP}")), "{body}");
    }
    // Plain HTTP for that name is sent to HTTPS (`redirect_https`).
    let out = lab
        .exec_ok(
            &lab.client,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "http://alice.http.lab.example/hi?x=1",
            ],
        )
        .unwrap();
    assert_eq!(out.trim(), "308 https://alice.http.lab.example/hi?x=1");
    // A second student's name: served at once by the same wildcard, no order of its own.
    lab.srvgate_ctl_ok(&[
        "route",
        "add",
        "bob",
        "--service",
        "http",
        "--backend",
        &format!("{B1_IP}:8081"),
    ])
    .unwrap();
    let (_, body) = https_get(&lab, &root, "bob.http.lab.example", "--http2");
    assert!(body.starts_with("bob GET /hi"), "{body}");
    let names = names_served(&lab, "bob.http.lab.example");
    assert!(names.contains("DNS:*.http.lab.example"), "{names}");
    assert!(!names.contains("bob"), "{names}");
    let first_login_creds = creds;

    // Renewal at two thirds of the lifetime replaces it, with no handshake failing meanwhile.
    let first = served_serial(&lab, "gw.lab.example");
    wait_until(
        "the certificate is renewed",
        Duration::from_secs(VALIDITY * 3),
        || {
            verified(&lab, &root, "gw.lab.example").unwrap();
            served_serial(&lab, "gw.lab.example") != first
        },
    );
    let renewed = served_serial(&lab, "gw.lab.example");
    // The student's saved login still works with the renewed certificate.
    let mine = student(&lab, &root, &["mine", "--credentials", &first_login_creds]);
    assert!(
        mine.status.success(),
        "mine after renewal: {}",
        String::from_utf8_lossy(&mine.stderr)
    );

    // The CA away during the next renewal: the warning shows, the certificate stays.
    lab.stop(pebble, Duration::from_secs(5)).unwrap();
    wait_until(
        "the renewal's failure is reported",
        Duration::from_secs(VALIDITY * 3),
        || lab.metric(FAILING, &[]).is_ok_and(|v| v == 1.0),
    );
    let log = lab.srvgate_log();
    assert!(log.contains("renewal failed"), "{log}");
    let status = lab.srvgate_ctl_ok(&["status"]).unwrap();
    assert!(status.contains("last renewal failed"), "{status}");
    assert_eq!(served_serial(&lab, "gw.lab.example"), renewed);
    assert!(issued(&lab, "*.http.lab.example").is_some());
    lab.stop_srvgate().unwrap();
}
