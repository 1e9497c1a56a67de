//! What is shown in more than one place: the ways in to a route (`claim`, `mine` and the
//! console print the same lines), the `~/.ssh/config` block (printed by `ssh-config`, shown
//! by the console) and byte counts (`route ls` and the console). Shell words are quoted by `shlex`, the workspace's
//! one shell quoting. `onboarding` is the block `srvgate user add` prints for the student. `nearest` is the one "did you mean" (config keys, interface names).

use std::net::SocketAddr;

use crate::api::{BackendView, MeReply, Onboarding, RouteView, CLIENTS_PATH};

/// The ways in to a route, as `claim` and `mine` print them.
pub fn ways_in(v: &RouteView, me: &MeReply) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(zone) = &me.zone {
        let name = format!("{}.{}.{zone}", v.name, v.service);
        if v.protocol == "tcp" && v.service == "ssh" {
            out.push(format!("srvgate ssh {name}"));
        } else if v.protocol == "tcp" && me.http_service.as_deref() == Some(v.service.as_str()) {
            out.push(format!("http://{name}/"));
        }
        out.push(format!(
            "{name} (SRV _{}._{}.{}.{zone})",
            v.service, v.protocol, v.name
        ));
    }
    if v.protocol == "tcp" && v.service == "ssh" {
        out.push(format!("ssh -p {} {}", v.port, me.public_ipv4));
    } else {
        out.push(format!("{}:{}/{}", me.public_ipv4, v.port, v.protocol));
    }
    out
}

/// The `~/.ssh/config` block that makes plain `ssh NAME.SERVICE.ZONE` go through
/// `PROGRAM ssh --proxy`, which looks the port up in DNS (asking `dns_server` if given).
pub fn ssh_config_block(
    zone: &str,
    service: &str,
    program: &str,
    dns_server: Option<SocketAddr>,
) -> String {
    let mut command = format!("{} ssh --proxy", ssh_config_word(program));
    if let Some(server) = dns_server {
        command.push_str(&format!(" --dns-server {server}"));
    }
    let pattern = format!("*.{service}.{zone}");
    format!(
        "# srvgate: plain `ssh NAME.{service}.{zone}` looks the port up in DNS (SRV record)\n\
         # and connects through `srvgate ssh --proxy`. Put this block above any `Host *`.\n\
         Host {pattern}\n    ProxyCommand {command} %h\n",
    )
}

/// Quotes a word for ssh_config's ProxyCommand, which ssh hands to the shell after expanding
/// `%` tokens.
fn ssh_config_word(word: &str) -> String {
    shell_word(word).replace('%', "%%")
}

/// `word` as one shell word, quoted (by shlex) only where it needs to be.
pub fn shell_word(word: &str) -> String {
    // NULs allowed: then quoting cannot fail, and no argument or path can hold one anyway.
    shlex::Quoter::new()
        .allow_nul(true)
        .quote(word)
        .map_or_else(|_| String::new(), std::borrow::Cow::into_owned)
}

/// 1536 -> `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What `srvgate user add` (and `user token`) prints for the admin to send the student in
/// one paste: the portal, the certificate's fingerprint while it is self-signed, the zone,
/// where to download the client, and the exact login line. Without a portal it says that
/// the token can log in nowhere yet.
pub fn onboarding(name: &str, token: &str, how: Option<&Onboarding>) -> String {
    let Some(how) = how else {
        return format!(
            "token for {name} (shown once):\n{token}\n\
             note: this gateway has no [portal]: the token can log in nowhere until one is configured\n"
        );
    };
    let url = &how.portal_url;
    let mut login = format!("srvgate login {}", shell_word(url));
    let mut out = format!("----- send to {name} privately (the token is shown only now) -----\n");
    out.push_str(&format!(
        "Portal:      {url}  (web console: log in with the token)\n"
    ));
    if let Some(fp) = &how.fingerprint {
        out.push_str(&format!(
            "Certificate: SHA-256 {fp}\n             (self-signed: login checks this fingerprint)\n"
        ));
        login.push_str(&format!(" --fingerprint {fp}"));
    }
    if let Some(zone) = &how.zone {
        out.push_str(&format!(
            "Zone:        {zone}  (your routes are {name}.SERVICE.{zone})\n"
        ));
    }
    out.push_str(&format!(
        "Client:      {url}{CLIENTS_PATH}  (Windows and Linux, with their SHA-256)\n"
    ));
    out.push_str(&format!("Log in:      {login}\n"));
    out.push_str(&format!("Token:       {token}\n"));
    out.push_str("             (paste it when login asks; it is not shown as you type)\n");
    out.push_str("-----\n");
    out
}

/// Words longer than this get no "did you mean".
const MAX_NEAREST_LEN: usize = 64;

/// The candidate closest to `word` by edit distance (case-insensitive), if close enough to
/// be a typo: at most a third of the longer word's characters differ (at least one). Ties
/// go to the earlier candidate, so the answer does not depend on hashing.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // A name is short; a long one is no typo of one (and the table below stays small).
    if word.len() > MAX_NEAREST_LEN {
        return None;
    }
    let word = word.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates
        .into_iter()
        .filter(|c| c.len() <= MAX_NEAREST_LEN)
    {
        let d = edit_distance(&word, &c.to_ascii_lowercase());
        let allowed = (word.chars().count().max(c.chars().count()) / 3).max(1);
        if d <= allowed && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Edit distance over characters: insert, delete, substitute, or swap two neighbours, each
/// 1 (optimal string alignment), so `eht1` is one edit from `eth1`. Quadratic: callers keep
/// both words within `MAX_NEAREST_LEN`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: the distance between a's first i characters and b's first j.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// One backend's state as the health board says it: `up`, `up since T`, `down since T`,
/// `drained`, or `down, fail-open` (every undrained member is down, so it takes flows).
/// `now_unix` makes the age (`3m ago`).
pub fn backend_state(b: &BackendView, fail_open: bool, now_unix: u64) -> String {
    let since = |t: Option<u64>| {
        t.map_or(String::new(), |t| {
            format!(
                " since {} ({} ago)",
                utc_time(t),
                crate::format_duration(std::time::Duration::from_secs(now_unix.saturating_sub(t)))
            )
        })
    };
    let mut s = if b.drained {
        "drained".to_string()
    } else if b.up {
        format!("up{}", since(b.since_unix))
    } else if fail_open {
        format!("down{}, fail-open (takes flows)", since(b.since_unix))
    } else {
        format!("down{}", since(b.since_unix))
    };
    if b.drained && !b.up {
        s.push_str(", down");
    }
    s
}

/// The health board of a route: its check, then one line per member, `ADDR  STATE  last:
/// RESULT`. Empty for a route that is neither checked nor a pool (nothing to say).
pub fn health_board(v: &RouteView, now_unix: u64) -> Vec<String> {
    if v.check.is_none() && v.backends.len() < 2 && v.backends.iter().all(|b| b.up && !b.drained) {
        return Vec::new();
    }
    let mut out = vec![format!(
        "check: {}",
        v.check.as_deref().unwrap_or("none (always up)")
    )];
    let width = v.backends.iter().map(|b| b.addr.len()).max().unwrap_or(0);
    for b in &v.backends {
        let mut line = format!(
            "{:width$}  {}",
            b.addr,
            backend_state(b, v.fail_open, now_unix)
        );
        if let Some(last) = &b.last_check {
            line.push_str(&format!("; last check: {last}"));
        }
        out.push(line);
    }
    out
}

/// `2026-12-08 00:41:07Z` from Unix seconds, without a time zone database.
pub fn utc_time(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(addr: &str, up: bool, drained: bool, since: Option<u64>) -> BackendView {
        BackendView {
            addr: addr.into(),
            weight: 1,
            drained,
            up,
            since_unix: since,
            last_check: Some(
                if up {
                    "HTTP 200 OK"
                } else {
                    "connect: Connection refused"
                }
                .into(),
            ),
        }
    }

    #[test]
    fn utc_times_are_civil() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc_time(1_796_691_667), "2026-12-08 01:01:07Z");
    }

    #[test]
    fn the_board_says_each_state_and_the_last_result() {
        let now = 1_796_691_667;
        let mut v: RouteView = serde_json::from_str(
            r#"{"name":"judge","service":"http","protocol":"tcp","port":30001,"backend":"10.0.0.11:80",
                "source":"runtime","added_unix":0,"last_seen_unix":null,"idle_seconds":0,"reclaim_in_seconds":null,
                "inbound_packets":0,"outbound_packets":0,"inbound_bytes":0,"outbound_bytes":0}"#,
        )
        .unwrap();
        v.check = Some("http GET /healthz inter 2s timeout 1s rise 2 fall 3".into());
        v.backends = vec![
            member("10.0.0.11:80", true, false, None),
            member("10.0.0.12:80", false, false, Some(now - 180)),
            member("10.0.0.13:80", true, true, None),
        ];
        let board = health_board(&v, now);
        assert_eq!(
            board[0],
            "check: http GET /healthz inter 2s timeout 1s rise 2 fall 3"
        );
        assert_eq!(board[1], "10.0.0.11:80  up; last check: HTTP 200 OK");
        assert_eq!(
            board[2],
            "10.0.0.12:80  down since 2026-12-08 00:58:07Z (3m ago); last check: connect: Connection refused"
        );
        assert!(
            board[3].starts_with("10.0.0.13:80  drained;"),
            "{}",
            board[3]
        );
        v.fail_open = true;
        assert!(
            health_board(&v, now)[2].contains("fail-open (takes flows)"),
            "{:?}",
            health_board(&v, now)
        );
        // A plain one-backend route that nobody checks has no board.
        v.check = None;
        v.backends = vec![member("10.0.0.11:80", true, false, None)];
        assert!(health_board(&v, now).is_empty());
    }

    #[test]
    fn the_onboarding_block_has_everything_a_student_needs() {
        let how = Onboarding {
            portal_url: "https://203.0.113.10:8443".into(),
            fingerprint: Some("AB:CD".into()),
            zone: Some("lab.example.edu".into()),
        };
        let block = onboarding("alice", "sg_alice_x", Some(&how));
        for want in [
            "Portal:      https://203.0.113.10:8443",
            "Certificate: SHA-256 AB:CD",
            "Zone:        lab.example.edu  (your routes are alice.SERVICE.lab.example.edu)",
            "Client:      https://203.0.113.10:8443/clients/",
            "Log in:      srvgate login https://203.0.113.10:8443 --fingerprint AB:CD\n",
            "Token:       sg_alice_x\n",
        ] {
            assert!(block.contains(want), "no {want:?} in\n{block}");
        }
        // A certificate from a CA needs no pinning.
        let signed = Onboarding {
            fingerprint: None,
            ..how
        };
        let block = onboarding("alice", "sg_alice_x", Some(&signed));
        assert!(!block.contains("fingerprint"), "{block}");
        assert!(
            block.contains("Log in:      srvgate login https://203.0.113.10:8443\n"),
            "{block}"
        );
        let none = onboarding("alice", "sg_alice_x", None);
        assert!(
            none.contains("sg_alice_x") && none.contains("no [portal]"),
            "{none}"
        );
    }

    #[test]
    fn nearest_names_the_typo_and_nothing_far() {
        let keys = ["listen", "service", "max_connections"];
        assert_eq!(nearest("lisen", keys), Some("listen"));
        assert_eq!(nearest("LISTEN", keys), Some("listen"));
        assert_eq!(nearest("servcie", keys), Some("service"));
        assert_eq!(nearest("zone", keys), None);
        assert_eq!(nearest("x", keys), None);
        assert_eq!(nearest("eth1", ["eth0", "lo", "ens3"]), Some("eth0"));
        assert_eq!(nearest("eht1", ["eth0", "eth1"]), Some("eth1"));
        assert_eq!(nearest("anything", []), None);
        assert_eq!(nearest(&"a".repeat(100), ["a"]), None);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("eht1", "eth1"), 1);
    }

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(
            human_bytes(5 * 1024 * 1024 * 1024 * 1024 * 1024),
            "5120.0 TiB"
        );
    }
}
