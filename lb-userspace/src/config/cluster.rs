//! `[cluster]`: the etcd endpoints through which several gateways share one table, and this
//! gateway's name among them. Pure validation; the store itself is `crate::table::cluster`.

use serde::Deserialize;

use super::check_label;

/// More endpoints than any etcd cluster worth running has members.
const MAX_ENDPOINTS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// etcd client URLs, `http://host:port` each.
    pub etcd: Vec<String>,
    /// This gateway's name in the cluster (a DNS label): in logs, `status` and the keys
    /// only this gateway writes.
    pub gateway_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default)]
    etcd: Vec<String>,
    gateway_id: Option<String>,
}

/// Checks one endpoint: `http://host:port`, nothing after the port. TLS is refused
/// explicitly rather than tried: this build carries no TLS for etcd.
fn check_endpoint(url: &str) -> Result<(), String> {
    if url.len() > 255 {
        return Err("is longer than 255 characters".into());
    }
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https is not supported yet; reach etcd over a private network with http://"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{url:?} is not a URL like \"http://10.0.0.2:2379\""
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
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{url:?}: {port:?} is not a port")),
    }
}

/// Validates the section; problems are pushed to `bad` under `cluster.<field>`.
pub(super) fn validate(raw: RawCluster, bad: &mut dyn FnMut(&str, String)) -> Option<Cluster> {
    let mut ok = true;
    if raw.etcd.is_empty() {
        bad(
            "cluster.etcd",
            "is empty; list etcd's client URLs, e.g. [\"http://10.0.0.2:2379\"]".into(),
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
    for (i, url) in raw.etcd.iter().enumerate() {
        let field = format!("cluster.etcd[{}]", i + 1);
        if let Err(e) = check_endpoint(url) {
            bad(&field, e);
            ok = false;
        } else if raw.etcd[..i].contains(url) {
            bad(&field, format!("{url:?} is listed twice"));
            ok = false;
        }
    }
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
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(etcd: &[&str], id: Option<&str>) -> (Option<Cluster>, Vec<String>) {
        let mut problems = Vec::new();
        let raw = RawCluster {
            etcd: etcd.iter().map(|s| s.to_string()).collect(),
            gateway_id: id.map(str::to_string),
        };
        let c = validate(raw, &mut |f, r| problems.push(format!("{f}: {r}")));
        (c, problems)
    }

    #[test]
    fn good_section() {
        let (c, p) = run(
            &["http://10.0.0.2:2379/", "http://etcd-b:2379"],
            Some("gw1"),
        );
        assert!(p.is_empty(), "{p:?}");
        let c = c.unwrap();
        assert_eq!(c.etcd, ["http://10.0.0.2:2379", "http://etcd-b:2379"]);
        assert_eq!(c.gateway_id, "gw1");
    }

    #[test]
    fn each_problem_names_its_field() {
        let cases: &[(&[&str], Option<&str>, &str)] = &[
            (&[], Some("gw1"), "cluster.etcd: is empty"),
            (
                &["10.0.0.2:2379"],
                Some("gw1"),
                "cluster.etcd[1]: \"10.0.0.2:2379\" is not a URL",
            ),
            (
                &["https://e:2379"],
                Some("gw1"),
                "cluster.etcd[1]: \"https://e:2379\": https is not supported",
            ),
            (
                &["http://e"],
                Some("gw1"),
                "cluster.etcd[1]: \"http://e\" names no port",
            ),
            (&["http://e:0"], Some("gw1"), "is not a port"),
            (
                &["http://e:2379", "http://e:2379"],
                Some("gw1"),
                "cluster.etcd[2]: \"http://e:2379\" is listed twice",
            ),
            (&["http://e:2379"], None, "cluster.gateway_id: is missing"),
            (&["http://e:2379"], Some("gw_1"), "cluster.gateway_id: "),
        ];
        for (etcd, id, want) in cases {
            let (c, p) = run(etcd, *id);
            assert!(c.is_none(), "{etcd:?} {id:?} accepted");
            assert!(
                p.iter().any(|x| x.contains(want)),
                "{etcd:?} {id:?}: {p:?} lacks {want:?}"
            );
        }
    }
}
