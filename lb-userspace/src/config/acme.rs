//! `[acme]`: certificates ordered from an RFC 8555 CA by DNS-01, answered from the gateway's
//! own zone. Pure validation; the client and the renewal are `crate::serve::acme`.

use std::path::PathBuf;

use serde::Deserialize;

use lb_model::{check_domain, check_label};

/// Names in one certificate: the defaults are two; a CA takes up to 100 (Let's Encrypt).
const MAX_NAMES: usize = 16;
/// Contacts in the account: one or two mail addresses is the usual.
const MAX_CONTACTS: usize = 4;
const MAX_URL: usize = 255;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    directory: String,
    #[serde(default)]
    contact: Vec<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    ca: Option<PathBuf>,
}

/// `[acme]` as validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// The CA's directory URL (`https://`), e.g. Let's Encrypt's.
    pub directory: String,
    /// The account's contacts, `mailto:` URLs.
    pub contact: Vec<String>,
    /// The certificate's names, lowercase, each in `[dns] zone` (its challenge is answered
    /// there): by default `*.<http service>.<zone>` and, with `[portal]`, the gateway's
    /// name `<gateway_name>.<zone>` (which the zone already answers with its address).
    pub names: Vec<String>,
    /// PEM roots to trust for the CA's own HTTPS (a private CA such as pebble); without
    /// it, none: a public CA is reached with webpki's roots.
    pub ca: Option<PathBuf>,
}

/// The portal's public name, which `[acme]` puts in the certificate: the gateway's own
/// name in the zone, so that it resolves with nothing more to set up.
pub fn portal_name(gateway_name: &str, zone: &str) -> String {
    format!("{gateway_name}.{zone}")
}

/// Validates the section; problems go to `bad` under `acme.<field>`. `zone` is `[dns]`'s
/// zone and gateway name (none: `[acme]` is refused, it has nowhere to answer challenges),
/// `http_service` the label of the web routes (`http` by default).
pub(super) fn validate(
    raw: RawAcme,
    zone: Option<(&str, &str)>,
    http_service: &str,
    portal: bool,
    bad: &mut dyn FnMut(&str, String),
) -> Option<Acme> {
    let mut ok = true;
    let Some((zone, gateway_name)) = zone else {
        bad(
            "acme",
            "needs [dns]: the CA's DNS-01 challenges are answered from the gateway's own zone"
                .into(),
        );
        return None;
    };
    let d = &raw.directory;
    if d.len() > MAX_URL || !d.starts_with("https://") || d.contains(char::is_whitespace) {
        bad(
            "acme.directory",
            format!("{d:?} is not an https:// URL of at most {MAX_URL} characters, e.g. \"https://acme-v02.api.letsencrypt.org/directory\""),
        );
        ok = false;
    }
    if raw.contact.len() > MAX_CONTACTS {
        bad(
            "acme.contact",
            format!(
                "lists {} contacts; at most {MAX_CONTACTS}",
                raw.contact.len()
            ),
        );
        ok = false;
    }
    let mut contact = Vec::new();
    for c in &raw.contact {
        let c = c.trim();
        let addr = c.strip_prefix("mailto:").unwrap_or(c);
        let valid = addr.len() <= MAX_URL
            && addr
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && check_domain(host).is_ok());
        if valid {
            contact.push(format!("mailto:{addr}"));
        } else {
            bad(
                "acme.contact",
                format!("{c:?} is not a mail address (e.g. \"admin@example.org\")"),
            );
            ok = false;
        }
    }
    let names = raw.names.unwrap_or_else(|| {
        let mut names = vec![format!("*.{http_service}.{zone}")];
        if portal {
            names.push(portal_name(gateway_name, zone));
        }
        names
    });
    if names.is_empty() || names.len() > MAX_NAMES {
        bad(
            "acme.names",
            format!("lists {} names; give 1 to {MAX_NAMES}", names.len()),
        );
        ok = false;
    }
    let mut checked: Vec<String> = Vec::new();
    for name in names.iter().take(MAX_NAMES) {
        match check_name(name, zone) {
            Ok(n) if checked.contains(&n) => {
                bad("acme.names", format!("{name:?} is listed twice"));
                ok = false;
            }
            Ok(n) => checked.push(n),
            Err(e) => {
                bad("acme.names", e);
                ok = false;
            }
        }
    }
    ok.then_some(Acme {
        directory: raw.directory,
        contact,
        names: checked,
        ca: raw.ca,
    })
}

/// A name the gateway can prove it holds: in the zone, below its apex, with a wildcard
/// only as the whole first label (RFC 8555 section 7.1.3).
fn check_name(name: &str, zone: &str) -> Result<String, String> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let (wild, rest) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let rest = check_domain(rest).map_err(|e| format!("{name:?}: {e}"))?;
    let inside = rest
        .strip_suffix(zone)
        .is_some_and(|head| head.ends_with('.') || (wild && head.is_empty()));
    if !inside {
        return Err(format!(
            "{name:?} is not in the zone {zone}: only names the gateway's zone answers for can be proved by DNS-01"
        ));
    }
    // Every label but the wildcard must also be a plain label (no `_`: those are the
    // challenges' own names).
    for label in rest.split('.') {
        check_label(label).map_err(|e| format!("{name:?}: label {e}"))?;
    }
    Ok(if wild { format!("*.{rest}") } else { rest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(raw: &str, zone: Option<&str>) -> Result<Acme, Vec<String>> {
        let zone = zone.map(|z| (z, "gw"));
        let raw: RawAcme = toml::from_str(raw).unwrap();
        let mut problems = Vec::new();
        let got = validate(raw, zone, "http", true, &mut |f, e| {
            problems.push(format!("{f}: {e}"))
        });
        got.ok_or(problems)
    }

    #[test]
    fn defaults_are_the_web_wildcard_and_the_portal() {
        let a = run(
            "directory = \"https://ca.example/dir\"\ncontact = [\"admin@lab.example\"]",
            Some("lab.example"),
        )
        .unwrap();
        assert_eq!(a.names, ["*.http.lab.example", "gw.lab.example"]);
        assert_eq!(a.contact, ["mailto:admin@lab.example"]);
    }

    #[test]
    fn refuses_what_the_zone_cannot_prove_naming_it() {
        let e = run(
            "directory = \"https://ca.example/dir\"\nnames = [\"www.other.example\", \"a.*.lab.example\", \"x.notlab.example\"]",
            Some("lab.example"),
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].contains("www.other.example") && e[0].contains("not in the zone"),
            "{e:?}"
        );
        assert!(e[1].contains("a.*.lab.example"), "{e:?}");
        assert!(e[2].contains("x.notlab.example"), "{e:?}");
        let e = run("directory = \"http://ca.example/dir\"", Some("lab.example")).unwrap_err();
        assert!(e[0].starts_with("acme.directory"), "{e:?}");
        let e = run("directory = \"https://ca.example/dir\"", None).unwrap_err();
        assert!(e[0].contains("needs [dns]"), "{e:?}");
        let e = run(
            "directory = \"https://ca.example/dir\"\ncontact = [\"nobody\"]",
            Some("lab.example"),
        )
        .unwrap_err();
        assert!(e[0].contains("\"nobody\""), "{e:?}");
    }

    #[test]
    fn a_wildcard_of_the_apex_and_names_below_are_accepted() {
        let a = run(
            "directory = \"https://ca.example/dir\"\nnames = [\"*.LAB.example.\", \"gw.lab.example\"]",
            Some("lab.example"),
        )
        .unwrap();
        assert_eq!(a.names, ["*.lab.example", "gw.lab.example"]);
    }
}
