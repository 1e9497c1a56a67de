//! The web console in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, both running in the lab's client namespace, against the real srvgate.
//! alice logs in with her token (by keyboard), claims an ssh port, sees the row and the
//! command, the command reaches her instance, the chart shows the traffic, she releases it
//! and the row goes; bob does not see alice's routes; a replaced token sends the session
//! back to login; the admin view lists both users and the gateway's legs. Screenshots of
//! each page land in `target/console-screenshots/`.

use std::{path::PathBuf, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use srvgate_tests::*;

const ZONE: &str = "lab.example";
const DRIVER_PORT: u16 = 9515;
/// Bound of every wait for the page.
const PAGE: Duration = Duration::from_secs(15);

fn config() -> String {
    config_toml(&[]) + &format!("\n[portal]\nlisten = [\"{PUBLIC_IP}:8443\"]\n")
}

fn token(lab: &Lab, add_args: &[&str]) -> String {
    let out = lab.srvgate_ctl_ok(add_args).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn shots_dir() -> PathBuf {
    let d = workspace_root().join("target/console-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

async fn text_of(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(PAGE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Logs in by keyboard: the token typed into the focused field, then Enter.
async fn login(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    let field = c
        .wait()
        .at_most(PAGE)
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("token"),
        "the token field has the focus"
    );
    field.send_keys(&format!("{token}\u{E007}")).await.unwrap();
    c.wait()
        .at_most(PAGE)
        .for_element(Locator::Css("#logout"))
        .await
        .expect("logged in");
}

async fn logout(c: &Client) {
    c.find(Locator::Css("#logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(PAGE)
        .for_element(Locator::Css("#token"))
        .await
        .expect("back at the login form");
}

/// Every visible control has a label, and the page needs no horizontal scrolling.
async fn check_page(c: &Client, what: &str) {
    let unlabelled = c
        .execute(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
               .filter(e => (e.labels ? e.labels.length === 0 : true) && !e.getAttribute('aria-label')
                            && !(e.tagName === 'BUTTON' && e.textContent.trim()))
               .map(e => e.outerHTML);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "{what}: controls without a label");
    let overflow = c
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "{what}: scrolls sideways by {overflow}px"
    );
}

#[test]
fn a_student_with_only_a_browser_gets_an_ssh_endpoint_and_the_admin_sees_the_gateway() {
    if skip_unless_root("a_student_with_only_a_browser_gets_an_ssh_endpoint") {
        return;
    }
    require_srvgate_bin();
    for program in ["chromium", "chromedriver"] {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{program} is missing: `cargo xtask setup` installs it (Debian packages chromium, chromium-driver)"
        );
    }
    let lab = Lab::new("cons").expect("building the lab");
    lab.start_sshd(&lab.b1, "sg-b1").unwrap();
    lab.set_resolver(&lab.client, PUBLIC_IP).unwrap();
    let cfg = lab.write_file("srvgate.toml", &config()).unwrap();
    lab.start_srvgate(&cfg, &[]).unwrap();
    let admin = token(&lab, &["user", "add", "root", "--admin", "--json"]);
    let alice = token(&lab, &["user", "add", "alice", "--allow", B1_IP, "--json"]);
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

    // The driver and the browser it starts live in the client namespace, tracked by the
    // lab: ended by pid (and with the namespace) even if this test fails.
    let profile = lab.dir().join("chromium-profile").display().to_string();
    let port_arg = format!("--port={DRIVER_PORT}");
    let driver = lab
        .spawn(&lab.client, &["chromedriver", &port_arg])
        .unwrap();
    lab.wait_listening(&lab.client, driver, DRIVER_PORT, PAGE)
        .unwrap();

    let base = format!("https://{PUBLIC_IP}:8443");
    let lab = &lab;
    in_netns_scoped(&lab.client, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let caps = json!({
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", "--window-size=1280,1000",
                        // The portal's self-signed certificate (the CLI pins its fingerprint).
                        "--ignore-certificate-errors",
                        format!("--user-data-dir={profile}"),
                    ]
                }
            });
            let Value::Object(caps) = caps else { unreachable!() };
            // Both of rustls' providers are compiled in when the workspace is built as one
            // (`cargo xtask test`), and then rustls will not pick: name the one srvgate uses.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let c = ClientBuilder::rustls()
                .unwrap()
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{DRIVER_PORT}"))
                .await
                .expect("a WebDriver session");
            scenario(&c, lab, &base, &admin, &alice, &bob).await;
            c.close().await.unwrap();
        });
    })
    .unwrap();
}

async fn scenario(c: &Client, lab: &Lab, base: &str, admin: &str, alice: &str, bob: &str) {
    // What the browser is told: nothing may run or load but the console's own stylesheet.
    let url = format!("{base}/");
    let head = lab
        .exec_ok(
            &lab.client,
            &["curl", "-ksS", "-D", "-", "-o", "/dev/null", &url],
        )
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; style-src 'self';"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    c.goto(&format!("{base}/")).await.unwrap();
    text_of(c, "h1").await;
    check_page(c, "login").await;
    shot(c, "login").await;
    // A wrong token: a readable message, still the login form.
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys("sg_alice_nope\u{E007}").await.unwrap();
    let msg = text_of(c, "#flash").await;
    assert!(msg.contains("not valid"), "{msg}");

    // alice: log in, claim, see the row and the command.
    login(c, base, alice).await;
    assert!(text_of(c, "#no-routes").await.contains("no routes"));
    c.find(Locator::Css("#backend"))
        .await
        .unwrap()
        .send_keys(&format!("{B1_IP}:22"))
        .await
        .unwrap();
    c.find(Locator::Css("#claim"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = text_of(c, "#route-ssh-tcp").await;
    assert!(
        row.contains(&format!("srvgate ssh alice.ssh.{ZONE}")),
        "{row}"
    );
    assert!(text_of(c, "#flash").await.contains("Claimed alice/ssh/tcp"));
    let port: u16 = text_of(c, "#route-ssh-tcp td.port")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(row.contains(&format!("ssh -p {port} {PUBLIC_IP}")), "{row}");
    check_page(c, "my instances").await;

    // The commands the page shows work from the client namespace.
    let bin = srvgate_bin().display().to_string();
    let opts = lab.ssh_options().unwrap();
    let target = format!("root@alice.ssh.{ZONE}");
    let mut argv: Vec<&str> = vec![&bin, "ssh", &target, "--"];
    argv.extend(opts.iter().map(String::as_str));
    argv.push("hostname");
    let out = lab.exec(&lab.client, &argv, DEFAULT_TIMEOUT).unwrap();
    assert_eq!(
        expect_success("srvgate ssh alice", &out).unwrap().trim(),
        "sg-b1"
    );
    assert_eq!(
        lab.ssh(&lab.client, PUBLIC_IP, port, "hostname").unwrap(),
        "sg-b1"
    );

    // The chart shows that traffic once the daemon's next pass has read the counters.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        c.refresh().await.unwrap();
        let bars = c
            .find_all(Locator::Css("#route-ssh-tcp svg.chart rect.in"))
            .await
            .unwrap();
        if !bars.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no traffic in the chart after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shot(c, "my-instances").await;
    c.set_window_size(390, 844).await.unwrap();
    c.refresh().await.unwrap();
    text_of(c, "#route-ssh-tcp").await;
    check_page(c, "my instances at phone width").await;
    shot(c, "my-instances-phone").await;
    c.set_window_size(1280, 1000).await.unwrap();

    // A replaced token ends the session: back to login.
    let new_alice = token(lab, &["user", "token", "alice", "--json"]);
    c.refresh().await.unwrap();
    let msg = text_of(c, "#flash").await;
    assert!(msg.contains("session has ended"), "{msg}");
    c.find(Locator::Css("#token"))
        .await
        .expect("the login form");

    // bob sees only his own (none), and cannot release alice's.
    login(c, base, bob).await;
    let page = c.source().await.unwrap();
    assert!(page.contains("id=\"no-routes\""), "{page}");
    assert!(!page.contains("alice/ssh"), "{page}");
    c.goto(&format!("{base}/release?service=ssh&protocol=tcp"))
        .await
        .unwrap();
    let msg = text_of(c, "#flash").await;
    assert!(msg.contains("no route bob/ssh/tcp"), "{msg}");
    c.goto(&format!("{base}/admin")).await.unwrap();
    assert!(text_of(c, "h1").await.contains("Admins only"));
    c.goto(&format!("{base}/")).await.unwrap();
    logout(c).await;

    // The admin sees both users, the route, the legs, the verdicts and the audit lines.
    login(c, base, admin).await;
    c.goto(&format!("{base}/admin")).await.unwrap();
    let users = text_of(c, "#users").await;
    assert!(users.contains("alice") && users.contains("bob"), "{users}");
    let routes = text_of(c, "#all-routes").await;
    assert!(routes.contains("alice/ssh/tcp"), "{routes}");
    let legs = text_of(c, "#legs").await;
    for leg in [PUBLIC_IF, PRIVATE_IFS[0], PRIVATE_IFS[1]] {
        assert!(legs.contains(leg), "{legs}");
    }
    assert!(!text_of(c, "#verdicts").await.is_empty());
    let audit = text_of(c, "#audit").await;
    assert!(
        audit.contains("alice") && audit.contains("claim ssh/tcp"),
        "{audit}"
    );
    check_page(c, "admin").await;
    shot(c, "admin").await;
    // A new account from the admin's form: its token is shown once, and it works.
    c.find(Locator::Css("#user-name"))
        .await
        .unwrap()
        .send_keys("carol")
        .await
        .unwrap();
    c.find(Locator::Css("#user-backends"))
        .await
        .unwrap()
        .send_keys(B2_IP)
        .await
        .unwrap();
    c.find(Locator::Css("#add-user"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let carol = text_of(c, "#new-token").await;
    assert!(carol.starts_with("sg_carol_"), "{carol}");
    assert!(text_of(c, "#users").await.contains("carol"));
    logout(c).await;
    login(c, base, &carol).await;
    assert!(text_of(c, "#allowed").await.contains(B2_IP));
    logout(c).await;

    // alice, with her new token, releases: asked to confirm, then the row goes.
    login(c, base, &new_alice).await;
    c.find(Locator::Css("#route-ssh-tcp a.button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let title = text_of(c, "h1").await;
    assert!(title.contains("Release alice/ssh/tcp?"), "{title}");
    shot(c, "release").await;
    c.find(Locator::Css("#confirm-release"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(c, "#flash")
        .await
        .contains("Released alice/ssh/tcp"));
    text_of(c, "#no-routes").await;
    assert!(c
        .find_all(Locator::Css("#route-ssh-tcp"))
        .await
        .unwrap()
        .is_empty());
    assert!(
        !lab.ssh_output(&lab.client, PUBLIC_IP, port, "hostname")
            .unwrap()
            .status
            .success(),
        "the released port no longer reaches alice's instance"
    );
}
