//! The one reader of request heads for the control socket and the portal: httparse, bounded
//! in size by the caller's limits (and in time by the caller's timeout); duplicate framing
//! headers refused.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{ApiError, Request};

/// Reads one request: its head parsed by httparse (at most `max_head` bytes), its body by
/// Content-Length (at most `max_body`). The caller bounds it in time.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    max_head: usize,
    max_body: usize,
) -> Result<(Request, Headers), ApiError> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let Head {
        len: head_len,
        method,
        target,
        length,
        headers,
    } = loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| ApiError::new(400, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(ApiError::new(400, "connection closed mid-request"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(parsed) = parse_head(&buf)? {
            break parsed;
        }
        if buf.len() > max_head {
            return Err(ApiError::new(
                431,
                format!("request head over {max_head} bytes"),
            ));
        }
    };
    if length > max_body {
        return Err(ApiError::new(
            413,
            format!("request body over {max_body} bytes"),
        ));
    }
    while buf.len() < head_len + length {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| ApiError::new(400, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(ApiError::new(400, "connection closed mid-body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target, None),
    };
    Ok((
        Request {
            method,
            path,
            query,
            body: buf[head_len..head_len + length].to_vec(),
        },
        headers,
    ))
}

/// A request head as parsed.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) len: usize,
    pub(crate) method: String,
    pub(crate) target: String,
    /// Content-Length.
    pub(crate) length: usize,
    pub(crate) headers: Headers,
}

/// The headers the API and the console read.
#[derive(Debug, Default)]
pub(crate) struct Headers {
    /// The bearer token of `Authorization`.
    pub(crate) token: Option<String>,
    pub(crate) cookie: Option<String>,
    pub(crate) fetch_site: Option<String>,
}

/// `Ok(None)` while the head is incomplete. Duplicate Content-Length or Authorization, and
/// Transfer-Encoding (no client of ours sends chunked bodies), are refused.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ApiError::new(400, format!("malformed request: {e}"))),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(ApiError::new(400, "malformed request line"));
    };
    let mut length = None;
    let mut headers = Headers::default();
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| ApiError::new(400, format!("header {} is not UTF-8", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| ApiError::new(400, "bad Content-Length"))?;
            if length.replace(n).is_some() {
                return Err(ApiError::new(400, "more than one Content-Length"));
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::new(
                400,
                "Transfer-Encoding is not accepted; send Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("authorization") {
            let t = value
                .strip_prefix("Bearer ")
                .ok_or_else(|| ApiError::new(401, "Authorization must be `Bearer <token>`"))?;
            if headers.token.replace(t.trim().to_string()).is_some() {
                return Err(ApiError::new(400, "more than one Authorization header"));
            }
        } else if h.name.eq_ignore_ascii_case("cookie") {
            // Browsers send one Cookie header; joining several keeps what each said.
            match &mut headers.cookie {
                Some(c) => {
                    c.push_str("; ");
                    c.push_str(value);
                }
                None => headers.cookie = Some(value.to_string()),
            }
        } else if h.name.eq_ignore_ascii_case("sec-fetch-site") {
            headers.fetch_site = Some(value.to_string());
        }
    }
    Ok(Some(Head {
        len: head_len,
        method: method.to_string(),
        target: target.to_string(),
        length: length.unwrap_or(0),
        headers,
    }))
}
