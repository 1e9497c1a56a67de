//! What is shown in more than one place: the ways in to a route (`claim`, `mine` and the
//! console print the same lines), the `~/.ssh/config` block (printed by `ssh-config`, shown
//! by the console) and byte counts (`route ls` and the console). Shell words are quoted by `shlex`, the workspace's
//! one shell quoting.

use std::net::SocketAddr;

use crate::api::{BackendView, MeReply, RouteView};

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
    fn bytes_in_binary_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(
            human_bytes(5 * 1024 * 1024 * 1024 * 1024 * 1024),
            "5120.0 TiB"
        );
    }
}
