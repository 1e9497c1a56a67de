use std::{cell::RefCell, time::UNIX_EPOCH};

use super::*;
use crate::testing::FakeControl;
use lb_model::api::TrafficMinute;

#[derive(Default)]
struct CountingLogins {
    failed: RefCell<u32>,
}

impl Logins for CountingLogins {
    fn blocked(&self, _: IpAddr) -> bool {
        *self.failed.borrow() >= 3
    }
    fn failed(&self, _: IpAddr) {
        *self.failed.borrow_mut() += 1;
    }
}

struct Browser<'a> {
    console: &'a Console,
    control: &'a FakeControl,
    logins: CountingLogins,
    cookie: Option<String>,
}

impl Browser<'_> {
    fn send(&self, method: &str, target: &str, body: &str, site: Option<&str>) -> WebResponse {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let r = WebRequest {
            method,
            path,
            query,
            body: body.as_bytes(),
            cookie: self.cookie.as_deref(),
            fetch_site: site,
            from: "10.0.0.9".parse().unwrap(),
        };
        self.console.answer(&r, self.control, &self.logins)
    }
    fn get(&self, target: &str) -> (u16, String) {
        let r = self.send("GET", target, "", Some("same-origin"));
        (r.status, String::from_utf8(r.body).unwrap())
    }
    fn post(&self, target: &str, body: &str) -> WebResponse {
        self.send("POST", target, body, Some("same-origin"))
    }
}

fn header<'a>(r: &'a WebResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The CSRF token a rendered page carries.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_string()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn escaping_covers_every_html_special_character() {
    assert_eq!(
        esc("<a href=\"x\" title='y'>&amp;</a>").to_string(),
        "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
    );
    assert_eq!(esc("plain ✓").to_string(), "plain ✓");
}

#[test]
fn a_student_logs_in_claims_releases_and_loses_the_session_with_the_token() {
    let control = FakeControl::default();
    let token = control
        .users
        .lock()
        .unwrap()
        .add(
            "alice",
            vec!["10.0.0.11".parse().unwrap()],
            4,
            false,
            UNIX_EPOCH,
        )
        .unwrap();
    let console = Console::default();
    let mut b = Browser {
        console: &console,
        control: &control,
        logins: CountingLogins::default(),
        cookie: None,
    };

    let (status, page) = b.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("action=\"/login\"") && page.contains("<label for=\"token\">"));
    let r = b.post("/login", "token=sg_alice_nope");
    assert_eq!(r.status, 401);
    assert_eq!(*b.logins.failed.borrow(), 1);
    assert!(header(&r, "Set-Cookie").is_none());

    let r = b.post("/login", &format!("token={}", enc(&token)));
    assert_eq!(r.status, 303);
    let cookie = header(&r, "Set-Cookie").unwrap().to_string();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(cookie.starts_with("__Host-sg_session="), "{cookie}");
    b.cookie = Some(cookie.split(';').next().unwrap().to_string());

    let r = b.send("GET", "/", "", None);
    let csp = header(&r, "Content-Security-Policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let page = String::from_utf8(r.body).unwrap();
    assert!(page.contains("My instances") && page.contains("id=\"no-routes\""));
    assert!(!page.contains("<script"), "no scripts: {page}");
    assert!(
        page.contains("<option value=\"10.0.0.11:22\">"),
        "allowed backends offered"
    );
    let token_field = csrf(&page);

    // Without the CSRF token, or from another site, nothing happens.
    assert_eq!(
        b.post("/claim", "service=ssh&backend=10.0.0.11:22").status,
        403
    );
    let body = format!("csrf={token_field}&service=ssh&backend=10.0.0.11%3A22&protocol=tcp");
    assert_eq!(
        b.send("POST", "/claim", &body, Some("cross-site")).status,
        403
    );
    assert!(control.added.lock().unwrap().is_empty());

    let r = b.post("/claim", &body);
    assert_eq!((r.status, header(&r, "Location")), (303, Some("/")));
    assert_eq!(crate::api::reason(r.status), "See Other");
    assert_eq!(control.added.lock().unwrap()[0].name, "alice");
    let (_, page) = b.get("/");
    assert!(page.contains("Claimed alice/ssh/tcp"), "{page}");
    assert!(page.contains("srvgate ssh alice.ssh.lab.example"), "{page}");
    assert!(page.contains("ssh -p 30000 203.0.113.10"), "{page}");
    assert!(page.contains("ProxyCommand"), "the ssh-config snippet");
    assert!(page.contains("<svg class=\"chart\""), "a traffic chart");
    // The message was shown once.
    assert!(!b.get("/").1.contains("Claimed alice/ssh/tcp"));

    // Release asks first.
    let (status, page) = b.get("/release?service=ssh&protocol=tcp");
    assert_eq!(status, 200);
    assert!(page.contains("Release alice/ssh/tcp?") && page.contains("action=\"/release\""));
    let r = b.post(
        "/release",
        &format!("csrf={token_field}&service=ssh&protocol=tcp"),
    );
    assert_eq!(r.status, 303);
    assert!(b.get("/").1.contains("Released alice/ssh/tcp (port 30000)"));

    // The API's refusal, as a readable message.
    let r = b.post(
        "/claim",
        &format!("csrf={token_field}&service=ssh&backend=nonsense"),
    );
    assert_eq!(r.status, 303);
    assert_eq!(b.get("/").0, 200);

    // Bounded input.
    let long = "x".repeat(MAX_FIELD + 1);
    let r = b.post("/claim", &format!("csrf={token_field}&service={long}"));
    assert_eq!(r.status, 303);
    assert!(b.get("/").1.contains("longer than"));

    // A student is not an admin.
    assert_eq!(b.get("/admin").0, 403);
    assert_eq!(
        b.post("/admin/users", &format!("csrf={token_field}&name=eve"))
            .status,
        403
    );

    // A new token ends the session at once.
    control.users.lock().unwrap().rotate("alice").unwrap();
    let (status, page) = b.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("session has ended") && page.contains("action=\"/login\""));
    let r = b.post("/claim", &body);
    assert_eq!((r.status, header(&r, "Location")), (303, Some("/?ended=1")));
}

#[test]
fn logout_ends_the_session_and_admins_see_everything() {
    let control = FakeControl::default();
    let token = control
        .users
        .lock()
        .unwrap()
        .add("root", vec![], 4, true, UNIX_EPOCH)
        .unwrap();
    let console = Console::default();
    let mut b = Browser {
        console: &console,
        control: &control,
        logins: CountingLogins::default(),
        cookie: None,
    };
    let r = b.post("/login", &format!("token={}", enc(&token)));
    b.cookie = Some(
        header(&r, "Set-Cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string(),
    );
    let (status, page) = b.get("/admin");
    assert_eq!(status, 200);
    for part in [
        "id=\"legs\"",
        "eth0",
        "redirect",
        "rewritten",
        "id=\"users\"",
        "id=\"all-routes\"",
        "alice/ssh/tcp",
        "action=\"/admin/users\"",
        "action=\"/admin/routes\"",
    ] {
        assert!(page.contains(part), "{part}: {page}");
    }
    // Audit lines are shown escaped.
    assert!(page.contains("user=&quot;&lt;alice&gt;&quot;"), "{page}");
    let c = csrf(&page);
    let r = b.post(
        "/admin/users",
        &format!("csrf={c}&name=bob&backends=10.0.0.12%2C+10.0.1.0%2F28&max_routes=2"),
    );
    assert_eq!(r.status, 200);
    let page = String::from_utf8(r.body).unwrap();
    assert!(page.contains("id=\"new-token\">sg_bob_"), "{page}");
    let bob = control.users.lock().unwrap().get("bob").cloned().unwrap();
    assert_eq!((bob.backends.len(), bob.max_routes), (2, 2));

    let r = b.post("/logout", &format!("csrf={c}"));
    assert_eq!(r.status, 303);
    assert!(header(&r, "Set-Cookie").unwrap().contains("Max-Age=0"));
    let (_, page) = b.get("/admin");
    assert!(!page.contains("id=\"legs\""));
}

#[test]
fn too_many_bad_logins_are_refused_before_the_token_is_checked() {
    let control = FakeControl::default();
    let console = Console::default();
    let b = Browser {
        console: &console,
        control: &control,
        logins: CountingLogins::default(),
        cookie: None,
    };
    for _ in 0..3 {
        assert_eq!(b.post("/login", "token=x").status, 401);
    }
    assert_eq!(b.post("/login", "token=x").status, 429);
    assert_eq!(b.get("/nope").0, 404);
    assert!(b.get("/nope").1.contains("There is no page /nope"));
}

#[test]
fn the_chart_puts_each_minute_in_its_place() {
    let now = 6000;
    let svg = page::chart(
        &[
            TrafficMinute {
                minute_unix: 6000,
                inbound_bytes: 2048,
                outbound_bytes: 0,
            },
            TrafficMinute {
                minute_unix: 6000 - 59 * 60,
                inbound_bytes: 1,
                outbound_bytes: 1024,
            },
        ],
        now,
    );
    assert!(svg.contains("2.0 KiB in, 1.0 KiB out"), "{svg}");
    // The newest minute on the right, at full height; the oldest on the left.
    assert!(
        svg.contains("class=\"in\" x=\"118\" y=\"0\" width=\"2\" height=\"15\""),
        "{svg}"
    );
    assert!(svg.contains("class=\"out\" x=\"0\" y=\"15\""), "{svg}");
    assert_eq!(svg.matches("<rect").count(), 3);
}

#[test]
fn sessions_expire_and_stay_bounded() {
    let t0 = Instant::now();
    let session = |used: Instant| Session {
        user: "alice".into(),
        token_sha256: [0; 32],
        csrf: String::new(),
        opened: t0,
        used,
        flash: None,
    };
    assert!(Sessions::live(&session(t0), t0 + SESSION_IDLE / 2));
    assert!(!Sessions::live(&session(t0), t0 + SESSION_IDLE));
    let late = t0 + SESSION_LIFETIME - Duration::from_secs(1);
    assert!(!Sessions::live(&session(late), t0 + SESSION_LIFETIME));
    let mut s = Sessions::default();
    for i in 0..MAX_SESSIONS + 10 {
        let used = t0 + Duration::from_millis(i as u64);
        let mut one = session(used);
        one.user = format!("u{}", i / MAX_SESSIONS_PER_ACCOUNT);
        s.insert(key(i), one, used);
    }
    assert_eq!(s.by_id.len(), MAX_SESSIONS);
    // The least recently used went first.
    assert!(!s.by_id.contains_key(&key(0)));
}

fn key(i: usize) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64).to_le_bytes());
    key
}

fn session_of(user: &str, used: Instant) -> Session {
    Session {
        user: user.into(),
        token_sha256: [0; 32],
        csrf: String::new(),
        opened: used,
        used,
        flash: None,
    }
}

fn held_by(s: &Sessions, user: &str) -> usize {
    s.by_id.values().filter(|x| x.user == user).count()
}

/// One token (stolen, or a script) logging in over and over ends only its own account's
/// oldest sessions, never the admin's or anyone else's.
#[test]
fn one_account_cannot_end_other_accounts_sessions() {
    let t0 = Instant::now();
    let mut s = Sessions::default();
    s.insert(key(0), session_of("admin", t0), t0);
    for i in 1..=MAX_SESSIONS + 10 {
        let used = t0 + Duration::from_millis(i as u64);
        s.insert(key(i), session_of("alice", used), used);
    }
    assert!(
        s.by_id.contains_key(&key(0)),
        "the admin's session was ended"
    );
    assert_eq!(held_by(&s, "alice"), MAX_SESSIONS_PER_ACCOUNT);
    // Alice's newest are the ones kept.
    let newest = MAX_SESSIONS + 10;
    for i in newest + 1 - MAX_SESSIONS_PER_ACCOUNT..=newest {
        assert!(s.by_id.contains_key(&key(i)), "session {i}");
    }
    assert!(!s
        .by_id
        .contains_key(&key(newest - MAX_SESSIONS_PER_ACCOUNT)));
}

/// Full of other accounts, a newcomer's login ends a session of an account holding the
/// most, not the least recently used one of whoever holds a single session.
#[test]
fn at_the_global_cap_the_account_holding_the_most_gives_way() {
    let t0 = Instant::now();
    let at = |i: usize| t0 + Duration::from_millis(i as u64);
    let mut s = Sessions::default();
    s.insert(key(0), session_of("admin", t0), t0);
    let mut i = 1;
    let full_accounts = (MAX_SESSIONS - 1) / MAX_SESSIONS_PER_ACCOUNT;
    for a in 0..full_accounts {
        for _ in 0..MAX_SESSIONS_PER_ACCOUNT {
            s.insert(key(i), session_of(&format!("u{a}"), at(i)), at(i));
            i += 1;
        }
    }
    while s.by_id.len() < MAX_SESSIONS {
        s.insert(key(i), session_of("mid", at(i)), at(i));
        i += 1;
    }
    let mid = held_by(&s, "mid");
    assert!(mid < MAX_SESSIONS_PER_ACCOUNT, "{mid}");
    s.insert(key(i), session_of("zed", at(i)), at(i));
    assert_eq!(s.by_id.len(), MAX_SESSIONS);
    assert!(
        s.by_id.contains_key(&key(0)),
        "the admin's session was ended"
    );
    assert_eq!(held_by(&s, "mid"), mid);
    assert_eq!(held_by(&s, "zed"), 1);
    // u0 held the most and its least recently used session was the oldest of those.
    assert_eq!(held_by(&s, "u0"), MAX_SESSIONS_PER_ACCOUNT - 1);
    assert!(!s.by_id.contains_key(&key(1)));
    // More logins of the newcomer take one session each from the accounts holding the
    // most, so no account is left with fewer than the newcomer.
    for _ in 0..MAX_SESSIONS_PER_ACCOUNT - 2 {
        i += 1;
        s.insert(key(i), session_of("zed", at(i)), at(i));
    }
    assert_eq!(held_by(&s, "zed"), MAX_SESSIONS_PER_ACCOUNT - 1);
    for a in 0..full_accounts {
        assert!(held_by(&s, &format!("u{a}")) >= MAX_SESSIONS_PER_ACCOUNT - 1);
    }
    assert!(
        s.by_id.contains_key(&key(0)),
        "the admin's session was ended"
    );
    assert_eq!(s.by_id.len(), MAX_SESSIONS);
}

/// At the global cap, an account holding as many as the most ends its own least recent
/// session: equals never take each other's places.
#[test]
fn at_the_global_cap_an_account_holding_as_many_as_any_ends_its_own() {
    let t0 = Instant::now();
    let at = |i: usize| t0 + Duration::from_millis(i as u64);
    let per = MAX_SESSIONS_PER_ACCOUNT - 1;
    let mut s = Sessions::default();
    s.insert(key(0), session_of("admin", t0), t0);
    let mut i = 1;
    while s.by_id.len() < MAX_SESSIONS {
        let user = format!("u{}", (i - 1) / per);
        s.insert(key(i), session_of(&user, at(i)), at(i));
        i += 1;
    }
    let accounts = (i - 1).div_ceil(per);
    let last = format!("u{}", accounts - 1);
    let before: Vec<usize> = (0..accounts)
        .map(|a| held_by(&s, &format!("u{a}")))
        .collect();
    // u5 holds as many as any: its own oldest goes.
    s.insert(key(i), session_of("u5", at(i)), at(i));
    let after: Vec<usize> = (0..accounts)
        .map(|a| held_by(&s, &format!("u{a}")))
        .collect();
    assert_eq!(before, after, "accounts up to {last}");
    assert!(!s.by_id.contains_key(&key(5 * per + 1)));
    assert!(s.by_id.contains_key(&key(0)));
}

#[test]
fn the_login_page_offers_the_client_download() {
    let html = page::login(None);
    assert!(
        html.contains("<a href=\"/clients/\" id=\"clients\">"),
        "{html}"
    );
}
