//! What is shown in more than one place: the ways in to a route (`claim`, `mine` and the
//! console print the same lines), the `~/.ssh/config` block (printed by `ssh-config`, shown
//! by the console) and byte counts (`route ls` and the console). Shell words are quoted by `shlex`, the workspace's
//! one shell quoting.

use std::net::SocketAddr;

use crate::api::{MeReply, RouteView};

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

#[cfg(test)]
mod tests {
    use super::*;

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
