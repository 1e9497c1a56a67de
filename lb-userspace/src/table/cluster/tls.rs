//! `[cluster]`'s TLS: the files named by `cluster.ca`, `cert` and `key`, read and checked
//! before the gateway connects, each problem naming its file. The handshake itself
//! (rustls, through tonic) checks etcd's certificate against `ca` alone, with the
//! endpoint's host as the name it must carry (an IP address needs an IP SAN), and shows
//! etcd this gateway's certificate, which etcd's `--client-cert-auth` demands.

use std::{fs, io::Read as _, os::unix::fs::MetadataExt as _, path::Path};

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

use crate::table::{cluster::ClusterTls, state::StateError};

/// A PEM file of certificates or a key is a few kilobytes; anything this large is not one.
const MAX_PEM: u64 = 1 << 20;

/// Reads `tls`'s files into the client's options. The key must be readable by its owner
/// only (as ssh demands of its keys): a key others can read proves nothing about who
/// connects, so the gateway refuses it rather than warn.
pub fn options(tls: &ClusterTls) -> Result<TlsOptions, StateError> {
    let ca = read("cluster.ca", &tls.ca)?;
    certificates("cluster.ca", &tls.ca, &ca)?;
    let cert = read("cluster.cert", &tls.cert)?;
    certificates("cluster.cert", &tls.cert, &cert)?;
    let key = read("cluster.key", &tls.key)?;
    key_mode(
        "cluster.key",
        &tls.key,
        fs::metadata(&tls.key).map(|m| m.mode()),
    )?;
    if PrivateKeyDer::from_pem_slice(&key).is_err() {
        return Err(bad(
            "cluster.key",
            &tls.key,
            "holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\" or an RSA/EC one)".into(),
        ));
    }
    Ok(TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key)))
}

fn bad(field: &'static str, path: &Path, reason: String) -> StateError {
    StateError::ClusterFile {
        field,
        path: path.to_path_buf(),
        reason,
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, StateError> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM + 1).read_to_end(&mut bytes))
        .map_err(|e| bad(field, path, format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(bad(
            field,
            path,
            format!("is larger than {MAX_PEM} bytes: not a PEM file"),
        ));
    }
    Ok(bytes)
}

fn certificates(field: &'static str, path: &Path, pem: &[u8]) -> Result<(), StateError> {
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| bad(field, path, format!("is not valid PEM: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(bad(
            field,
            path,
            "holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    Ok(())
}

/// The key's mode must grant nothing to group or others.
fn key_mode(
    field: &'static str,
    path: &Path,
    mode: std::io::Result<u32>,
) -> Result<(), StateError> {
    let mode = mode.map_err(|e| bad(field, path, format!("cannot read it: {e}")))?;
    if mode & 0o077 != 0 {
        return Err(bad(
            field,
            path,
            format!(
                "is readable by others (mode {:04o}); a private key must be the owner's only: chmod 600 {}",
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A CA, a certificate it signed and that certificate's key, as PEM.
    fn pki() -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn good_files_are_taken() {
        let d = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pki();
        let tls = ClusterTls {
            ca: write(d.path(), "ca.pem", &ca, 0o644),
            cert: write(d.path(), "gw1.pem", &cert, 0o644),
            key: write(d.path(), "gw1-key.pem", &key, 0o600),
        };
        options(&tls).unwrap();
    }

    /// Each refusal names the field and the file, and says what is wrong with it.
    #[test]
    fn each_bad_file_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pki();
        let good = ClusterTls {
            ca: write(d.path(), "ca.pem", &ca, 0o644),
            cert: write(d.path(), "gw1.pem", &cert, 0o644),
            key: write(d.path(), "gw1-key.pem", &key, 0o600),
        };
        let missing = d.path().join("nowhere.pem");
        let open_key = write(d.path(), "open-key.pem", &key, 0o644);
        let group_key = write(d.path(), "group-key.pem", &key, 0o640);
        let not_pem = write(d.path(), "junk.pem", "hello\n", 0o600);
        let cases = [
            (
                ClusterTls {
                    ca: missing.clone(),
                    ..good.clone()
                },
                "cluster.ca",
                missing.clone(),
                "cannot read it",
            ),
            (
                ClusterTls {
                    cert: not_pem.clone(),
                    ..good.clone()
                },
                "cluster.cert",
                not_pem.clone(),
                "no PEM certificate",
            ),
            (
                ClusterTls {
                    key: open_key.clone(),
                    ..good.clone()
                },
                "cluster.key",
                open_key.clone(),
                "mode 0644",
            ),
            (
                ClusterTls {
                    key: group_key.clone(),
                    ..good.clone()
                },
                "cluster.key",
                group_key.clone(),
                "mode 0640",
            ),
            (
                ClusterTls {
                    key: not_pem.clone(),
                    ..good.clone()
                },
                "cluster.key",
                not_pem.clone(),
                "no PEM private key",
            ),
            (
                ClusterTls {
                    // A key where the CA should be.
                    ca: good.key.clone(),
                    ..good.clone()
                },
                "cluster.ca",
                good.key.clone(),
                "no PEM certificate",
            ),
        ];
        for (tls, field, path, want) in cases {
            let e = options(&tls).unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(&e, StateError::ClusterFile { field: f, path: p, .. } if *f == field && *p == path),
                "{text}"
            );
            assert!(
                text.starts_with(&format!("{field} {}", path.display())),
                "{text}"
            );
            assert!(text.contains(want), "{text} lacks {want:?}");
        }
    }
}
