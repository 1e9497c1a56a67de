//! `[cluster]`: the etcd endpoints through which several gateways share one table, and this
//! gateway's name among them. Pure validation into `table::cluster`'s settings, which the store itself uses.

use std::path::PathBuf;

use serde::Deserialize;

use lb_model::check_label;

use crate::table::cluster::{Cluster, ClusterTls};

/// More endpoints than any etcd cluster worth running has members.
const MAX_ENDPOINTS: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default)]
    etcd: Vec<String>,
    gateway_id: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    insecure_http: bool,
}

/// Checks one endpoint: `http(s)://host:port`, nothing after the port. Returns whether it
/// is `https`.
fn check_endpoint(url: &str) -> Result<bool, String> {
    if url.len() > 255 {
        return Err("is longer than 255 characters".into());
    }
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!(
            "{url:?} is not a URL like \"https://10.0.0.2:2379\""
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!(
            "{url:?} names no port (etcd's client port is usually 2379)"
        ));
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("{url:?}: {host:?} is not a host name or address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(https),
        _ => Err(format!("{url:?}: {port:?} is not a port")),
    }
}

/// Validates the section; problems are pushed to `bad` under `cluster.<field>`.
///
/// Whoever can write to etcd can write the accounts, so can make themselves admin: the
/// gateway talks to etcd over TLS with a client certificate (etcd's
/// `--client-cert-auth`), and plain `http://` is refused unless the file says
/// `insecure_http = true` (a lab, or a network nobody else reaches), which the daemon
/// then warns about at every start.
pub(super) fn validate(raw: RawCluster, bad: &mut dyn FnMut(&str, String)) -> Option<Cluster> {
    let mut ok = true;
    if raw.etcd.is_empty() {
        bad(
            "cluster.etcd",
            "is empty; list etcd's client URLs, e.g. [\"https://10.0.0.2:2379\"]".into(),
        );
        ok = false;
    } else if raw.etcd.len() > MAX_ENDPOINTS {
        bad(
            "cluster.etcd",
            format!(
                "lists {} endpoints; at most {MAX_ENDPOINTS}",
                raw.etcd.len()
            ),
        );
        ok = false;
    }
    let (mut plain, mut secure) = (Vec::new(), 0);
    for (i, url) in raw.etcd.iter().enumerate() {
        let field = format!("cluster.etcd[{}]", i + 1);
        match check_endpoint(url) {
            Err(e) => {
                bad(&field, e);
                ok = false;
            }
            Ok(_) if raw.etcd[..i].contains(url) => {
                bad(&field, format!("{url:?} is listed twice"));
                ok = false;
            }
            Ok(true) => secure += 1,
            Ok(false) => plain.push((field, url)),
        }
    }
    let tls = if !plain.is_empty() && secure > 0 {
        bad(
            "cluster.etcd",
            "mixes http:// and https:// endpoints; every member is reached the same way".into(),
        );
        ok = false;
        None
    } else if !plain.is_empty() {
        if !raw.insecure_http {
            for (field, url) in &plain {
                bad(
                    field,
                    format!("{url:?} is plain HTTP: whoever reaches etcd could write the accounts and make themselves admin; use https:// with cluster.ca, cert and key (etcd's --client-cert-auth), or set cluster.insecure_http = true for a network nobody else reaches"),
                );
            }
            ok = false;
        }
        for (field, given) in [
            ("cluster.ca", &raw.ca),
            ("cluster.cert", &raw.cert),
            ("cluster.key", &raw.key),
        ] {
            if given.is_some() {
                bad(
                    field,
                    "is for https:// endpoints; these are http:// (no TLS)".into(),
                );
                ok = false;
            }
        }
        None
    } else {
        if raw.insecure_http {
            bad(
                "cluster.insecure_http",
                "is for http:// endpoints; these are https://".into(),
            );
            ok = false;
        }
        let mut need = |field: &str, given: Option<PathBuf>, what: &str| match given {
            Some(p) if !p.as_os_str().is_empty() => Some(p),
            _ => {
                bad(
                    field,
                    format!("is missing; https:// endpoints need {what} (PEM)"),
                );
                None
            }
        };
        let ca = need(
            "cluster.ca",
            raw.ca,
            "the CA that signed etcd's certificate",
        );
        let cert = need(
            "cluster.cert",
            raw.cert,
            "this gateway's client certificate",
        );
        let key = need("cluster.key", raw.key, "the client certificate's key");
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => Some(ClusterTls { ca, cert, key }),
            _ => {
                ok = false;
                None
            }
        }
    };
    let gateway_id = match raw.gateway_id {
        None => {
            bad(
                "cluster.gateway_id",
                "is missing; name this gateway among the cluster's, e.g. \"gw1\"".into(),
            );
            None
        }
        Some(id) => match check_label(&id) {
            Ok(()) => Some(id),
            Err(e) => {
                bad("cluster.gateway_id", e);
                None
            }
        },
    };
    match (ok, gateway_id) {
        (true, Some(gateway_id)) => Some(Cluster {
            etcd: raw
                .etcd
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            gateway_id,
            tls,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: [(&str, &str); 3] = [
        ("ca", "/etc/srvgate/etcd-ca.pem"),
        ("cert", "/etc/srvgate/etcd-gw1.pem"),
        ("key", "/etc/srvgate/etcd-gw1-key.pem"),
    ];

    /// The section from `etcd`, `id` and `extra` (`ca`/`cert`/`key` paths, or
    /// `insecure_http` = "true").
    fn run(
        etcd: &[&str],
        id: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (Option<Cluster>, Vec<String>) {
        let mut problems = Vec::new();
        let get = |k: &str| {
            extra
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| PathBuf::from(v))
        };
        let raw = RawCluster {
            etcd: etcd.iter().map(|s| s.to_string()).collect(),
            gateway_id: id.map(str::to_string),
            ca: get("ca"),
            cert: get("cert"),
            key: get("key"),
            insecure_http: get("insecure_http").is_some(),
        };
        let c = validate(raw, &mut |f, r| problems.push(format!("{f}: {r}")));
        (c, problems)
    }

    #[test]
    fn good_section() {
        let (c, p) = run(
            &["https://10.0.0.2:2379/", "https://etcd-b:2379"],
            Some("gw1"),
            &TLS,
        );
        assert!(p.is_empty(), "{p:?}");
        let c = c.unwrap();
        assert_eq!(c.etcd, ["https://10.0.0.2:2379", "https://etcd-b:2379"]);
        assert_eq!(c.gateway_id, "gw1");
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from(TLS[0].1));
        assert_eq!(tls.cert, PathBuf::from(TLS[1].1));
        assert_eq!(tls.key, PathBuf::from(TLS[2].1));
    }

    /// Plain HTTP only when asked for by name, and then without TLS files.
    #[test]
    fn plain_http_needs_the_explicit_opt_in() {
        let (c, p) = run(&["http://10.0.0.2:2379"], Some("gw1"), &[]);
        assert!(c.is_none());
        assert!(
            p.iter().any(|x| x.starts_with("cluster.etcd[1]:")
                && x.contains("plain HTTP")
                && x.contains("insecure_http")),
            "{p:?}"
        );
        let (c, p) = run(
            &["http://10.0.0.2:2379"],
            Some("gw1"),
            &[("insecure_http", "true")],
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.unwrap().tls, None);
    }

    #[test]
    fn each_problem_names_its_field() {
        let insecure = [("insecure_http", "true")];
        type Case<'a> = (
            &'a [&'a str],
            Option<&'a str>,
            &'a [(&'a str, &'a str)],
            &'a str,
        );
        let cases: &[Case] = &[
            (&[], Some("gw1"), &TLS, "cluster.etcd: is empty"),
            (
                &["10.0.0.2:2379"],
                Some("gw1"),
                &TLS,
                "cluster.etcd[1]: \"10.0.0.2:2379\" is not a URL",
            ),
            (
                &["https://e"],
                Some("gw1"),
                &TLS,
                "cluster.etcd[1]: \"https://e\" names no port",
            ),
            (&["https://e:0"], Some("gw1"), &TLS, "is not a port"),
            (
                &["https://e:2379", "https://e:2379"],
                Some("gw1"),
                &TLS,
                "cluster.etcd[2]: \"https://e:2379\" is listed twice",
            ),
            (
                &["https://e:2379", "http://f:2379"],
                Some("gw1"),
                &TLS,
                "cluster.etcd: mixes http:// and https://",
            ),
            (
                &["https://e:2379"],
                Some("gw1"),
                &TLS[1..],
                "cluster.ca: is missing",
            ),
            (
                &["https://e:2379"],
                Some("gw1"),
                &TLS[..1],
                "cluster.cert: is missing",
            ),
            (
                &["https://e:2379"],
                Some("gw1"),
                &TLS[..2],
                "cluster.key: is missing",
            ),
            (
                &["https://e:2379"],
                Some("gw1"),
                &[TLS[0], TLS[1], TLS[2], insecure[0]],
                "cluster.insecure_http: is for http://",
            ),
            (
                &["http://e:2379"],
                Some("gw1"),
                &[TLS[0], insecure[0]],
                "cluster.ca: is for https:// endpoints",
            ),
            (
                &["https://e:2379"],
                None,
                &TLS,
                "cluster.gateway_id: is missing",
            ),
            (
                &["https://e:2379"],
                Some("gw_1"),
                &TLS,
                "cluster.gateway_id: ",
            ),
        ];
        for (etcd, id, extra, want) in cases {
            let (c, p) = run(etcd, *id, extra);
            assert!(c.is_none(), "{etcd:?} {id:?} {extra:?} accepted");
            assert!(
                p.iter().any(|x| x.contains(want)),
                "{etcd:?} {id:?}: {p:?} lacks {want:?}"
            );
        }
    }
}
