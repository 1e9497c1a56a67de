//! The students' client for download from the gateway itself: `GET /clients/` on the
//! portal's listeners (beside the JSON API and the web console, no login needed) lists each
//! build with its size and SHA-256, `GET /clients/FILE` sends it, `GET /clients/SHA256SUMS`
//! the sums in `sha256sum -c` form.
//!
//! What is offered is what the package installed in `[portal] clients_dir`
//! (`/usr/share/srvgate/clients`: `cargo xtask dist` builds the Windows and static Linux
//! clients and writes their `SHA256SUMS`). The portal reads it once when it binds, bounded:
//! the sums file at most [`MAX_SUMS`] bytes and [`MAX_FILES`] lines, each file named in it
//! at most [`MAX_FILE`] bytes, with a plain name, and only a file whose bytes match its
//! listed SHA-256 is offered (one that does not is left out, said in the log). A missing
//! directory offers nothing; the index says so.

use std::{io::Read as _, path::Path, sync::Arc};

use lb_model::api::CLIENTS_PATH;
use tracing::warn;

use super::console::WebResponse;

/// The sums file's name, in the directory and in the URL.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// The largest `SHA256SUMS` read.
pub const MAX_SUMS: u64 = 64 * 1024;
/// The most files offered.
pub const MAX_FILES: usize = 16;
/// The largest client offered (a release build is a few MiB).
pub const MAX_FILE: u64 = 64 * 1024 * 1024;

/// One build offered for download.
#[derive(Clone, Debug)]
pub struct ClientFile {
    pub name: String,
    pub sha256: String,
    pub bytes: Arc<Vec<u8>>,
}

/// What the portal offers under [`CLIENTS_PATH`].
#[derive(Clone, Debug, Default)]
pub struct Clients {
    pub files: Vec<ClientFile>,
}

impl Clients {
    /// Reads `dir`'s `SHA256SUMS` and the files it names (see the module doc for the
    /// bounds); what fails a check is logged and left out, never served.
    pub fn load(dir: &Path) -> Clients {
        let sums_path = dir.join(SUMS_FILE);
        let sums = match read_bounded(&sums_path, MAX_SUMS) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => return Clients::default(),
            Err(e) => {
                warn!(path = %sums_path.display(), "client downloads: {e}");
                return Clients::default();
            }
        };
        let mut files = Vec::new();
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            if files.len() == MAX_FILES {
                warn!(path = %sums_path.display(), "client downloads: more than {MAX_FILES} files listed; the rest are left out");
                break;
            }
            let Some((sha256, name)) = parse_sum_line(line) else {
                warn!(path = %sums_path.display(), line, "client downloads: not a `SHA256  NAME` line");
                continue;
            };
            let path = dir.join(name);
            match read_bounded(&path, MAX_FILE) {
                Ok(Some(bytes))
                    if hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
                        == sha256 =>
                {
                    files.push(ClientFile {
                        name: name.to_string(),
                        sha256,
                        bytes: Arc::new(bytes),
                    })
                }
                Ok(Some(_)) => {
                    warn!(path = %path.display(), "client downloads: its SHA-256 is not the one SHA256SUMS lists; not offered")
                }
                Ok(None) => {
                    warn!(path = %path.display(), "client downloads: listed in SHA256SUMS but missing")
                }
                Err(e) => warn!(path = %path.display(), "client downloads: {e}"),
            }
        }
        Clients { files }
    }

    /// Whether `path` is one of ours.
    pub fn owns(path: &str) -> bool {
        path == CLIENTS_PATH.trim_end_matches('/') || path.starts_with(CLIENTS_PATH)
    }

    /// The answer to `GET path` (`owns(path)`).
    pub fn answer(&self, method: &str, path: &str) -> WebResponse {
        if method != "GET" {
            return text(405, "only GET here\n".into());
        }
        let name = path.strip_prefix(CLIENTS_PATH).unwrap_or_default();
        if name.is_empty() {
            return self.index();
        }
        if name == SUMS_FILE {
            return text(200, self.sums());
        }
        match self.files.iter().find(|f| f.name == name) {
            Some(f) => WebResponse {
                status: 200,
                headers: vec![
                    ("Content-Type", "application/octet-stream".into()),
                    (
                        "Content-Disposition",
                        format!("attachment; filename=\"{}\"", f.name),
                    ),
                    ("Cache-Control", "no-cache".into()),
                ],
                body: f.bytes.as_ref().clone(),
            },
            None => text(
                404,
                format!("no client named {name:?} here; see {CLIENTS_PATH}\n"),
            ),
        }
    }

    /// `sha256sum -c` form, one line a file.
    pub fn sums(&self) -> String {
        self.files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.name))
            .collect()
    }

    fn index(&self) -> WebResponse {
        let mut rows = String::new();
        for f in &self.files {
            rows.push_str(&format!(
                "<tr><td><a href=\"{CLIENTS_PATH}{name}\">{name}</a></td><td>{size}</td><td><code>{sha}</code></td></tr>\n",
                name = f.name,
                size = lb_model::text::human_bytes(f.bytes.len() as u64),
                sha = f.sha256
            ));
        }
        let body = if self.files.is_empty() {
            "<p>No client builds are installed on this gateway. Build one with <code>cargo build --release -p lb-client</code>.</p>".to_string()
        } else {
            format!(
                "<table><tr><th>File</th><th>Size</th><th>SHA-256</th></tr>\n{rows}</table>\n\
                 <p>Check a download against its SHA-256 (<code>sha256sum FILE</code>, or on Windows \
                 <code>Get-FileHash FILE</code>), or all at once with <a href=\"{CLIENTS_PATH}{SUMS_FILE}\">{SUMS_FILE}</a>.</p>"
            )
        };
        WebResponse {
            status: 200,
            headers: vec![
                ("Content-Type", "text/html; charset=utf-8".into()),
                ("Cache-Control", "no-cache".into()),
            ],
            body: format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>srvgate client</title></head>\
                 <body><h1>The srvgate client</h1>\n{body}</body></html>\n"
            )
            .into_bytes(),
        }
    }
}

/// `HEX  NAME` (or `HEX *NAME`, binary mode) with a plain file name: no path, no dots in
/// front, nothing a URL or a header would need escaping for.
fn parse_sum_line(line: &str) -> Option<(String, &str)> {
    let (sha, name) = line.split_once(char::is_whitespace)?;
    let name = name.trim_start().trim_start_matches('*').trim_end();
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name != SUMS_FILE
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let sha = sha.to_ascii_lowercase();
    let hex_ok = sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit());
    (plain && hex_ok).then_some((sha, name))
}

/// The file's bytes, `None` if it does not exist, an error if it is larger than `max`.
fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes; not offered"));
    }
    Ok(Some(bytes))
}

fn text(status: u16, body: String) -> WebResponse {
    WebResponse {
        status,
        headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
        body: body.into_bytes(),
    }
}

#[cfg(test)]
mod tests;
