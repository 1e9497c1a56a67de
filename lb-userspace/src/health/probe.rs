//! One check of one backend: the [`Prober`] trait, and [`NetProber`], which really connects.
//!
//! Every answer is read within a byte bound (an HTTP response up to its status code within
//! [`MAX_HTTP_HEAD`], an SSH server's lines up to its identification within
//! [`MAX_SSH_BANNER`]); the time bound is the spec's `timeout`, applied by [`check_once`]
//! around the whole probe (connect, write, reads). Whatever a backend sends reaches a log or
//! a status only escaped and cut short.
//!
//! A check never leaves from the gateway's public address: the backend's answer would come
//! from a route's `backend:port` addressed to the public address, which the XDP program
//! treats as a packet of the route's clients (hairpin), not as a reply to the gateway's own
//! connection (those it passes: an answer to any other local address). [`choose_source`]
//! picks another address of the same interface, or refuses the check with the reason.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::machine::Interface;
use lb_model::check::{format_check_duration, CheckKind, CheckSpec};

/// Most bytes of an HTTP answer read looking for its status code.
pub const MAX_HTTP_HEAD: usize = 8192;
/// Most bytes read looking for an SSH server's identification line (RFC 4253 allows other
/// lines before it; the line itself is at most 255 bytes).
pub const MAX_SSH_BANNER: usize = 2048;
/// What a check's status or log line keeps of anything a backend sent.
const MAX_QUOTE: usize = 80;

/// Why a check failed, in words that name what the backend did.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {}", format_check_duration(*.0))]
    TimedOut(Duration),
    #[error("connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Io(String),
    #[error("HTTP {code} {reason} (a check passes on 2xx or 3xx)")]
    Status { code: u16, reason: String },
    #[error("{0}")]
    BadAnswer(String),
    /// The check was not sent: no source address other than the public one.
    #[error("not checked: {0}")]
    Source(String),
}

/// Probes a backend once. `Ok` carries what passed (`HTTP 200 OK`), for the status.
/// Implementations need not bound time: [`check_once`] does.
pub trait Prober: Send + Sync + 'static {
    fn probe(
        &self,
        backend: SocketAddrV4,
        spec: &CheckSpec,
    ) -> impl Future<Output = Result<String, ProbeError>> + Send;
}

/// One check, cut off at the spec's timeout.
pub async fn check_once<P: Prober>(
    prober: &P,
    backend: SocketAddrV4,
    spec: &CheckSpec,
) -> Result<String, ProbeError> {
    tokio::time::timeout(spec.timeout, prober.probe(spec.probe_addr(backend), spec))
        .await
        .unwrap_or(Err(ProbeError::TimedOut(spec.timeout)))
}

/// The source address a check to `backend` uses, given the one the kernel would pick:
/// `Ok(None)` to let the kernel choose (its pick is not `public`), `Ok(Some(a))` for another
/// address of the interface that holds `public` (one on `backend`'s subnet first), or the
/// reason there is none.
pub fn choose_source(
    kernel_pick: Ipv4Addr,
    public: Ipv4Addr,
    backend: Ipv4Addr,
    interfaces: &[Interface],
) -> Result<Option<Ipv4Addr>, String> {
    if kernel_pick != public {
        return Ok(None);
    }
    let holders: Vec<&Interface> = interfaces
        .iter()
        .filter(|i| i.ipv4.contains(&public))
        .collect();
    let others = || {
        holders
            .iter()
            .flat_map(|i| i.ipv4_nets.iter())
            .filter(|(a, _)| *a != public)
    };
    let on_subnet = others().find(|(a, len)| same_net(*a, backend, *len));
    match on_subnet.or_else(|| others().next()) {
        Some((a, _)) => Ok(Some(*a)),
        None => Err(format!(
            "the kernel would send the check to {backend} from the public address {public}, whose interface ({}) has no other IPv4 address to send it from; give that interface a second address or route {backend} through a private leg",
            holders.first().map_or("none found", |i| i.name.as_str())
        )),
    }
}

fn same_net(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// Lists this machine's interfaces (injectable, so tests can give loopback a second address).
pub type InterfaceSource = Arc<dyn Fn() -> io::Result<Vec<Interface>> + Send + Sync>;

/// Checks over real sockets, never from `public`.
pub struct NetProber {
    public: Ipv4Addr,
    interfaces: InterfaceSource,
}

impl NetProber {
    /// A prober that reads this machine's interfaces when it must avoid `public`.
    pub fn new(public: Ipv4Addr) -> Self {
        Self::with_interfaces(public, Arc::new(crate::machine::interfaces))
    }

    pub fn with_interfaces(public: Ipv4Addr, interfaces: InterfaceSource) -> Self {
        NetProber { public, interfaces }
    }

    /// The address to bind before connecting to `backend`, if the kernel's own pick won't do.
    fn source(&self, backend: SocketAddrV4) -> Result<Option<Ipv4Addr>, ProbeError> {
        let pick = match crate::machine::route_source(backend) {
            Ok(SocketAddr::V4(a)) => *a.ip(),
            // No route: the connect fails on its own, with the kernel's words.
            Ok(_) | Err(_) => return Ok(None),
        };
        if pick != self.public {
            return Ok(None);
        }
        let interfaces = (self.interfaces)()
            .map_err(|e| ProbeError::Source(format!("cannot list interfaces: {e}")))?;
        choose_source(pick, self.public, *backend.ip(), &interfaces).map_err(ProbeError::Source)
    }

    async fn connect(&self, backend: SocketAddrV4) -> Result<TcpStream, ProbeError> {
        let source = self.source(backend)?;
        let connect_err = |e: io::Error| ProbeError::Connect(e.to_string());
        let socket = TcpSocket::new_v4().map_err(connect_err)?;
        if let Some(source) = source {
            socket
                .bind(SocketAddr::from((source, 0)))
                .map_err(|e| ProbeError::Source(format!("cannot bind {source}: {e}")))?;
        }
        let stream = socket.connect(backend.into()).await.map_err(connect_err)?;
        // The same rule after the fact: a kernel that picked otherwise than asked is caught.
        if let Ok(local) = stream.local_addr() {
            if local.ip() == IpAddr::V4(self.public) {
                return Err(ProbeError::Source(format!(
                    "the connection to {backend} left from the public address {}",
                    self.public
                )));
            }
        }
        Ok(stream)
    }
}

impl Prober for NetProber {
    async fn probe(&self, backend: SocketAddrV4, spec: &CheckSpec) -> Result<String, ProbeError> {
        let mut stream = self.connect(backend).await?;
        match &spec.kind {
            CheckKind::Tcp => Ok("TCP connect".into()),
            CheckKind::Http { path, host } => {
                let host = host.clone().unwrap_or_else(|| backend.to_string());
                http_check(&mut stream, path, &host).await
            }
            CheckKind::Ssh => ssh_check(&mut stream).await,
            // Never a target (`Pool::effective_check`); a connect is all it could mean.
            CheckKind::Off => Ok("not checked".into()),
        }
    }
}

fn io_err(what: &str) -> impl Fn(io::Error) -> ProbeError + '_ {
    move |e| ProbeError::Io(format!("{what}: {e}"))
}

/// Sends `GET path` and reads until the status code is known, at most [`MAX_HTTP_HEAD`] bytes.
async fn http_check(stream: &mut TcpStream, path: &str, host: &str) -> Result<String, ProbeError> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: srvgate-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_err("sending the request"))?;
    let mut buf = vec![0u8; MAX_HTTP_HEAD];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(ProbeError::BadAnswer(format!(
                "no HTTP status line in the first {MAX_HTTP_HEAD} bytes: {}",
                quote(&buf[..len])
            )));
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(io_err("reading the answer"))?;
        if n == 0 {
            return Err(ProbeError::BadAnswer(if len == 0 {
                "closed the connection without answering".into()
            } else {
                format!(
                    "closed the connection within the status line: {}",
                    quote(&buf[..len])
                )
            }));
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(&buf[..len]);
        // httparse fills the code as soon as the status line has it; the rest is not ours.
        if let Some(code) = response.code {
            let reason = escaped(response.reason.unwrap_or("").as_bytes());
            return if (200..400).contains(&code) {
                Ok(format!("HTTP {code} {reason}").trim_end().to_string())
            } else {
                Err(ProbeError::Status { code, reason })
            };
        }
        if let Err(e) = parsed {
            return Err(ProbeError::BadAnswer(format!(
                "not an HTTP response ({e}): {}",
                quote(&buf[..len])
            )));
        }
    }
}

/// Reads lines until the server's identification (`SSH-...`), at most [`MAX_SSH_BANNER`]
/// bytes, and wants protocol 2.0.
async fn ssh_check(stream: &mut TcpStream) -> Result<String, ProbeError> {
    let mut buf = vec![0u8; MAX_SSH_BANNER];
    let mut len = 0;
    let mut line_start = 0;
    loop {
        // Every complete line so far: the identification, or one of the lines RFC 4253
        // section 4.2 lets a server send before it.
        while let Some(end) = buf[line_start..len].iter().position(|&b| b == b'\n') {
            let line = &buf[line_start..line_start + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            line_start += end + 1;
            if line.starts_with(b"SSH-") {
                return if line.starts_with(b"SSH-2.0-") || line.starts_with(b"SSH-1.99-") {
                    Ok(format!("SSH banner {}", quote(line)))
                } else {
                    Err(ProbeError::BadAnswer(format!(
                        "identification {} is not SSH protocol 2.0",
                        quote(line)
                    )))
                };
            }
        }
        if len == buf.len() {
            return Err(ProbeError::BadAnswer(format!(
                "no SSH identification line in the first {MAX_SSH_BANNER} bytes: {}",
                quote(&buf[..len.min(MAX_QUOTE)])
            )));
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(io_err("reading the banner"))?;
        if n == 0 {
            return Err(ProbeError::BadAnswer(if len == 0 {
                "closed the connection without an SSH banner".into()
            } else {
                format!(
                    "closed the connection before an SSH identification line: {}",
                    quote(&buf[line_start..len])
                )
            }));
        }
        len += n;
    }
}

/// A backend's bytes as they may appear in a log: quoted, escaped, at most [`MAX_QUOTE`].
fn quote(bytes: &[u8]) -> String {
    let mut text = format!("\"{}\"", escaped(&bytes[..bytes.len().min(MAX_QUOTE)]));
    if bytes.len() > MAX_QUOTE {
        text.push_str("...");
    }
    text
}

/// The same without quotes, for a word the backend chose (an HTTP reason phrase).
fn escaped(bytes: &[u8]) -> String {
    bytes[..bytes.len().min(MAX_QUOTE)]
        .escape_ascii()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, nets: &[(Ipv4Addr, u8)]) -> Interface {
        Interface {
            name: name.into(),
            loopback: false,
            ipv4: nets.iter().map(|(a, _)| *a).collect(),
            ipv4_nets: nets.to_vec(),
        }
    }

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    #[test]
    fn the_kernels_pick_stands_unless_it_is_public() {
        let private = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(
            choose_source(private, PUBLIC, Ipv4Addr::new(10, 0, 0, 9), &[]),
            Ok(None)
        );
    }

    #[test]
    fn a_public_pick_is_replaced_by_another_address_of_its_interface() {
        let ifs = [
            iface("eth1", &[(Ipv4Addr::new(10, 0, 0, 1), 24)]),
            iface(
                "eth0",
                &[
                    (PUBLIC, 24),
                    (Ipv4Addr::new(192, 168, 5, 1), 24),
                    (Ipv4Addr::new(172, 16, 0, 1), 16),
                ],
            ),
        ];
        // The one on the backend's subnet first...
        assert_eq!(
            choose_source(PUBLIC, PUBLIC, Ipv4Addr::new(172, 16, 9, 9), &ifs),
            Ok(Some(Ipv4Addr::new(172, 16, 0, 1)))
        );
        // ...else the interface's first other address; never another interface's.
        assert_eq!(
            choose_source(PUBLIC, PUBLIC, Ipv4Addr::new(198, 51, 100, 7), &ifs),
            Ok(Some(Ipv4Addr::new(192, 168, 5, 1)))
        );
    }

    #[test]
    fn no_other_address_refuses_the_check_with_the_reason() {
        let ifs = [
            iface("eth0", &[(PUBLIC, 24)]),
            iface("eth1", &[(Ipv4Addr::new(10, 0, 0, 1), 24)]),
        ];
        let e = choose_source(PUBLIC, PUBLIC, Ipv4Addr::new(203, 0, 113, 50), &ifs).unwrap_err();
        assert!(e.contains("public address 203.0.113.10"), "{e}");
        assert!(e.contains("(eth0)"), "{e}");
    }

    #[test]
    fn subnets_compare_by_prefix() {
        let a = Ipv4Addr::new(10, 1, 2, 3);
        assert!(same_net(a, Ipv4Addr::new(10, 1, 200, 1), 16));
        assert!(!same_net(a, Ipv4Addr::new(10, 1, 200, 1), 24));
        assert!(same_net(a, Ipv4Addr::new(99, 9, 9, 9), 0));
        assert!(!same_net(a, Ipv4Addr::new(10, 1, 2, 4), 32));
    }

    #[test]
    fn quotes_are_escaped_and_cut() {
        assert_eq!(quote(b"a\r\n\x1b"), "\"a\\r\\n\\x1b\"");
        let long = quote(&[b'x'; 200]);
        assert!(long.ends_with("\"...") && long.len() < 100, "{long}");
    }
}
