//! Request and response heads: parsed by httparse (which already refuses obsolete line
//! folding, whitespace before a colon and bare control characters in requests), then held to
//! the rules that keep the router and a backend from ever disagreeing on where a message
//! ends (RFC 9112 §6: one Content-Length or one `Transfer-Encoding: chunked`, never both)
//! and on which host a request is for (exactly one Host; an absolute-form target's
//! authority wins, RFC 9112 §3.2.2). The head a backend gets is rebuilt from the parsed
//! fields, so it sees canonical CRLF lines and the Host it was routed by.

use std::net::IpAddr;

/// A request head larger than this is refused (431); real ones are well under 8 KiB.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Backends may send big cookies; still bounded.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// More header lines than this is a 431 (httparse needs the room up front).
const MAX_HEADERS: usize = 100;

/// Why a request gets an error response instead of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not a request the router will pass on: 400 with the reason.
    BadRequest(&'static str),
    /// Too many header lines (431); too many bytes is found by the reader.
    TooLarge,
    /// CONNECT: a gateway to students' sites is no forward proxy (405).
    Method,
}

impl Reject {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Reject::BadRequest(_) => (400, "Bad Request"),
            Reject::TooLarge => (431, "Request Header Fields Too Large"),
            Reject::Method => (405, "Method Not Allowed"),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadRequest(why) => why,
            Reject::TooLarge => "too many header lines",
            Reject::Method => "CONNECT is not served here",
        }
    }
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Responses only: until the backend closes.
    UntilClose,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the head as the client sent it.
    pub len: usize,
    pub method: String,
    /// Origin-form (or `*`): what the backend gets.
    pub path: String,
    /// 0 or 1: HTTP/1.0 or HTTP/1.1.
    pub version: u8,
    /// The authority the request is for, as it will be sent (`Host`), with any port.
    pub authority: String,
    /// The routing name: lowercase, no port, no trailing dot.
    pub host: String,
    pub body: Body,
    /// The client asked for the connection to end after this exchange.
    pub close: bool,
    /// `Connection: upgrade` with an `Upgrade` header (a WebSocket handshake).
    pub upgrade: bool,
    /// Header lines other than Host, in order.
    headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The head the backend gets. With `forwarded_for`, the client's own `X-Forwarded-For`
    /// and `Forwarded` are dropped (the gateway is the edge: anything before it is the
    /// client's say) and ones naming `forwarded_for` are added.
    pub fn head_for_backend(&self, forwarded_for: Option<IpAddr>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len + 64);
        out.extend_from_slice(
            format!(
                "{} {} HTTP/1.{}\r\nHost: {}\r\n",
                self.method, self.path, self.version, self.authority
            )
            .as_bytes(),
        );
        for (name, value) in &self.headers {
            let forged = name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case("forwarded");
            if forwarded_for.is_some() && forged {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(ip) = forwarded_for {
            let ip = ip.to_canonical();
            let node = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("\"[{v6}]\""),
            };
            out.extend_from_slice(
                format!("X-Forwarded-For: {ip}\r\nForwarded: for={node}\r\n").as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, Reject> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(httparse::Error::Version) => return Err(Reject::BadRequest("not HTTP/1.x")),
        Err(httparse::Error::HeaderName) => {
            return Err(Reject::BadRequest(
                "malformed header name (whitespace before a colon?)",
            ))
        }
        Err(_) => return Err(Reject::BadRequest("malformed request head")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequest("malformed request line"));
    };
    if method == "CONNECT" {
        return Err(Reject::Method);
    }

    let mut host_header = None;
    let mut length = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut connection = Tokens::default();
    let mut upgrade_header = false;
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host_header.is_some() {
                return Err(Reject::BadRequest("more than one Host header"));
            }
            let v = std::str::from_utf8(h.value)
                .map_err(|_| Reject::BadRequest("invalid Host header"))?;
            host_header = Some(v.trim());
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(Reject::BadRequest("more than one Content-Length"));
            }
            length =
                Some(content_length(h.value).ok_or(Reject::BadRequest("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te_seen {
                return Err(Reject::BadRequest("more than one Transfer-Encoding"));
            }
            te_seen = true;
            if !trimmed(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(Reject::BadRequest("Transfer-Encoding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = true;
        }
        headers.push((name.to_string(), trimmed(h.value).to_vec()));
    }
    if te_seen && version == 0 {
        return Err(Reject::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    let body = match (length, chunked) {
        (Some(_), true) => {
            return Err(Reject::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (Some(0) | None, false) => Body::None,
        (Some(n), false) => Body::Length(n),
        (None, true) => Body::Chunked,
    };

    let (path, absolute) = split_target(method, target)?;
    if version == 1 && host_header.is_none() {
        return Err(Reject::BadRequest("no Host header"));
    }
    let authority = absolute
        .or(host_header)
        .ok_or(Reject::BadRequest("no Host header"))?;
    let host = normalize_host(authority).ok_or(Reject::BadRequest("invalid Host"))?;
    let close = if version == 0 {
        !connection.keep_alive
    } else {
        connection.close
    };
    Ok(Some(Request {
        len,
        method: method.to_string(),
        path,
        version,
        authority: authority.to_string(),
        host,
        body,
        close,
        upgrade: upgrade_header && connection.upgrade,
        headers,
    }))
}

/// The origin-form path a target asks for, and the authority of an absolute-form target.
fn split_target<'a>(method: &str, target: &'a str) -> Result<(String, Option<&'a str>), Reject> {
    if target.starts_with('/') {
        return Ok((target.to_string(), None));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(("*".into(), None))
        } else {
            Err(Reject::BadRequest("* is a target for OPTIONS only"))
        };
    }
    let rest = match target.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        _ => return Err(Reject::BadRequest("malformed request target")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(Reject::BadRequest("user information in the request target"));
    }
    let path = match tail.as_bytes().first() {
        None | Some(b'#') => "/".to_string(),
        Some(b'?') => format!("/{tail}"),
        _ => tail.to_string(),
    };
    Ok((path, Some(authority)))
}

/// `Alice.HTTP.lab.example.:80` -> `alice.http.lab.example`; `None` if it is not a name.
pub fn normalize_host(authority: &str) -> Option<String> {
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| name.to_ascii_lowercase())
}

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub len: usize,
    pub status: u16,
    pub body: Body,
    /// 1xx other than 101: another head follows.
    pub interim: bool,
    /// 101 to an upgrade request: the connection is a tunnel from here on.
    pub upgraded: bool,
    /// The backend will not take another request on this connection.
    pub close: bool,
}

/// Parses the response head at the start of `buf` to a request that was a HEAD (no body
/// whatever it says) or an upgrade; `Ok(None)` while incomplete.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    upgrade_request: bool,
) -> Result<Option<Response>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err("malformed status line");
    };
    let mut length = None;
    let mut te: Option<bool> = None;
    let mut connection = Tokens::default();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = content_length(h.value).ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length");
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; anything else is read until close.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            te = Some(trimmed(last).eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
    }
    if length.is_some() && te.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    let upgraded = status == 101;
    if upgraded && !upgrade_request {
        return Err("101 to a request that asked for no upgrade");
    }
    let interim = (100..200).contains(&status) && !upgraded;
    let no_body = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let body = match (no_body, te, length) {
        (true, _, _) => Body::None,
        (false, Some(true), _) => Body::Chunked,
        (false, Some(false), _) => Body::UntilClose,
        (false, None, Some(0)) => Body::None,
        (false, None, Some(n)) => Body::Length(n),
        (false, None, None) => Body::UntilClose,
    };
    let close = if version == 0 {
        !connection.keep_alive
    } else {
        connection.close
    };
    Ok(Some(Response {
        len,
        status,
        body,
        interim,
        upgraded,
        close: close || body == Body::UntilClose,
    }))
}

/// Connection header tokens the router cares about.
#[derive(Default)]
struct Tokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

impl Tokens {
    fn add(&mut self, value: &[u8]) {
        for t in value.split(|&b| b == b',').map(trimmed) {
            self.close |= t.eq_ignore_ascii_case(b"close");
            self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
        }
    }
}

/// Digits only (no sign, no list): anything else is how smuggling starts.
fn content_length(value: &[u8]) -> Option<u64> {
    let v = trimmed(value);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn trimmed(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end]
}
