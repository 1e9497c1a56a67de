//! Prometheus text exposition of the data plane's counters, over a minimal HTTP server.
//!
//! The server answers `GET /metrics` and nothing else; it is meant for a scraper on a
//! management address, not for the public interface.
//!
//! It reads nothing itself: each scrape calls back into the daemon (on the blocking pool),
//! which reads the counters through `Dataplane` and hands over plain samples (routes, verdicts,
//! legs and their drop counters, the web routers' counters).

use std::{fmt::Write as _, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::debug;

use crate::{kernel::dataplane::Counters, serve::web::RouterSample};
use lb_model::Route;

/// One route and its counters at scrape time.
pub struct RouteSample {
    pub route: Route,
    pub counters: Counters,
    /// The members the health checks found down (`Entry::down`).
    pub down: std::collections::BTreeSet<std::net::SocketAddrV4>,
    /// Every undrained member is down, so all take flows (`Entry::fail_open`).
    pub fail_open: bool,
}

/// One interface the program is attached to, at scrape time.
pub struct LegSample {
    pub name: String,
    /// `public` or `private`.
    pub role: &'static str,
    /// `redirect` or `pass`: how rewritten frames leave through it.
    pub egress: &'static str,
    /// The interface's own drop counters; `None` where the kernel does not say.
    pub tx_dropped: Option<u64>,
    pub rx_dropped: Option<u64>,
}

fn labels(r: &Route) -> String {
    format!(
        "name=\"{}\",service=\"{}\",protocol=\"{}\",port=\"{}\"",
        r.name, r.service, r.protocol, r.port
    )
}

/// Renders the exposition text. `verdicts` pairs each XDP verdict name with its count.
pub fn render(routes: &[RouteSample], verdicts: &[(&str, u64)], legs: &[LegSample]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP srvgate_routes Routes in the table.");
    let _ = writeln!(out, "# TYPE srvgate_routes gauge");
    let _ = writeln!(out, "srvgate_routes {}", routes.len());
    type Pick = fn(&Counters) -> (u64, u64);
    let counters: [(&str, &str, Pick); 2] = [
        (
            "srvgate_route_packets_total",
            "Packets forwarded by XDP for a route.",
            |c| (c.inbound_packets, c.outbound_packets),
        ),
        (
            "srvgate_route_bytes_total",
            "Bytes (whole frames) forwarded by XDP for a route.",
            |c| (c.inbound_bytes, c.outbound_bytes),
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for s in routes {
            let (inbound, outbound) = get(&s.counters);
            let l = labels(&s.route);
            let _ = writeln!(out, "{name}{{{l},direction=\"inbound\"}} {inbound}");
            let _ = writeln!(out, "{name}{{{l},direction=\"outbound\"}} {outbound}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP srvgate_route_idle_seconds Seconds since a route last saw a packet (absent if never)."
    );
    let _ = writeln!(out, "# TYPE srvgate_route_idle_seconds gauge");
    for s in routes {
        if let Some(idle) = s.counters.idle {
            let _ = writeln!(
                out,
                "srvgate_route_idle_seconds{{{}}} {:.3}",
                labels(&s.route),
                idle.as_secs_f64()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP srvgate_backend_up Whether a route's backend passes its health checks (1) or not (0)."
    );
    let _ = writeln!(out, "# TYPE srvgate_backend_up gauge");
    for s in routes {
        let l = labels(&s.route);
        for m in s.route.backends.members() {
            let _ = writeln!(
                out,
                "srvgate_backend_up{{{l},backend=\"{}\",drained=\"{}\"}} {}",
                m.addr,
                m.drained,
                u8::from(!s.down.contains(&m.addr))
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP srvgate_route_fail_open Whether every undrained backend of a route is down, so all of them take new flows."
    );
    let _ = writeln!(out, "# TYPE srvgate_route_fail_open gauge");
    for s in routes {
        let _ = writeln!(
            out,
            "srvgate_route_fail_open{{{}}} {}",
            labels(&s.route),
            u8::from(s.fail_open)
        );
    }
    let _ = writeln!(
        out,
        "# HELP srvgate_xdp_verdicts_total Packets by what the XDP program did with them."
    );
    let _ = writeln!(out, "# TYPE srvgate_xdp_verdicts_total counter");
    // A counter that is no verdict (an event on a packet's way, which gets a verdict too)
    // has a family of its own, so that the verdicts still add up to the packets.
    let is_event = |name: &str| {
        lb_common::counter::NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| !lb_common::counter::is_verdict(i as u32))
    };
    for (name, n) in verdicts.iter().filter(|(name, _)| !is_event(name)) {
        let _ = writeln!(out, "srvgate_xdp_verdicts_total{{verdict=\"{name}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP srvgate_xdp_events_total What the XDP program did on a packet's way besides its verdict."
    );
    let _ = writeln!(out, "# TYPE srvgate_xdp_events_total counter");
    for (name, n) in verdicts.iter().filter(|(name, _)| is_event(name)) {
        let _ = writeln!(out, "srvgate_xdp_events_total{{event=\"{name}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP srvgate_leg_info The interfaces XDP is attached to: role, and whether rewritten frames leave by redirect or through the kernel (pass)."
    );
    let _ = writeln!(out, "# TYPE srvgate_leg_info gauge");
    for l in legs {
        let _ = writeln!(
            out,
            "srvgate_leg_info{{iface=\"{}\",role=\"{}\",egress=\"{}\"}} 1",
            l.name, l.role, l.egress
        );
    }
    // A redirect the egress cannot queue (its ring is full: XDP has no backpressure) is
    // dropped by the kernel after the program returned; the interface's tx_dropped is
    // where that shows.
    let _ = writeln!(
        out,
        "# HELP srvgate_leg_dropped_total The interface's own drop counters; tx includes redirected frames its queue refused."
    );
    let _ = writeln!(out, "# TYPE srvgate_leg_dropped_total counter");
    for l in legs {
        for (direction, n) in [("tx", l.tx_dropped), ("rx", l.rx_dropped)] {
            if let Some(n) = n {
                let _ = writeln!(
                    out,
                    "srvgate_leg_dropped_total{{iface=\"{}\",direction=\"{direction}\"}} {n}",
                    l.name
                );
            }
        }
    }
    out
}

/// Appends the process's own counters: warnings about clients' malformed packets, most of
/// which the log leaves out (`logging::PeerNoise`).
/// DNS response-rate limiting: UDP answers sent truncated (slipped) and dropped.
pub fn render_dns_rrl(out: &mut String, slipped: u64, dropped: u64) {
    let _ = writeln!(
        out,
        "# HELP srvgate_dns_rrl_total UDP answers held back by response-rate limiting: sent empty with TC (slipped) or not at all (dropped)."
    );
    let _ = writeln!(out, "# TYPE srvgate_dns_rrl_total counter");
    let _ = writeln!(out, "srvgate_dns_rrl_total{{action=\"slipped\"}} {slipped}");
    let _ = writeln!(out, "srvgate_dns_rrl_total{{action=\"dropped\"}} {dropped}");
}

pub fn render_peer_warnings(out: &mut String, seen: u64) {
    let _ = writeln!(
        out,
        "# HELP srvgate_peer_warnings_total Warnings about clients' malformed packets, logged or not (the log keeps a few per 10 s)."
    );
    let _ = writeln!(out, "# TYPE srvgate_peer_warnings_total counter");
    let _ = writeln!(out, "srvgate_peer_warnings_total {seen}");
}

/// Scrapes served at once; a Prometheus server sends one at a time.
const MAX_SCRAPES: usize = 16;

/// The web routers' counters (`srvgate_web_*`, labelled `router="http"|"https"`).
pub fn render_routers(routers: &[RouterSample]) -> String {
    let mut out = String::new();
    if routers.is_empty() {
        return out;
    }
    type Pick = fn(&RouterSample) -> u64;
    let series: [(&str, &str, &str, Pick); 4] = [
        (
            "srvgate_web_connections_open",
            "gauge",
            "Client connections a web router holds now.",
            |r| r.open,
        ),
        (
            "srvgate_web_connections_total",
            "counter",
            "Client connections a web router accepted (admitted or not).",
            |r| r.connections,
        ),
        (
            "srvgate_web_requests_total",
            "counter",
            "HTTP requests sent to a backend; TLS connections relayed.",
            |r| r.requests,
        ),
        (
            "srvgate_web_bytes_total",
            "counter",
            "Bytes a web router relayed, by direction.",
            |_| 0,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for r in routers {
            let router = r.router;
            if name == "srvgate_web_bytes_total" {
                let (i, o) = (r.bytes_from_clients, r.bytes_to_clients);
                let _ = writeln!(
                    out,
                    "{name}{{router=\"{router}\",direction=\"inbound\"}} {i}"
                );
                let _ = writeln!(
                    out,
                    "{name}{{router=\"{router}\",direction=\"outbound\"}} {o}"
                );
            } else {
                let _ = writeln!(out, "{name}{{router=\"{router}\"}} {}", get(r));
            }
        }
    }
    let name = "srvgate_web_errors_total";
    let _ = writeln!(
        out,
        "# HELP {name} Connections or requests a web router refused or broke off, by reason."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for r in routers {
        for (reason, n) in &r.errors {
            let _ = writeln!(
                out,
                "{name}{{router=\"{}\",reason=\"{reason}\"}} {n}",
                r.router
            );
        }
    }
    out
}

/// Serves `GET /metrics` with whatever `scrape` returns, until the task is dropped. `scrape`
/// may block (a lock, map syscalls, sysfs reads): it runs on tokio's blocking pool, never
/// on the async threads.
pub async fn serve(listener: TcpListener, scrape: Arc<dyn Fn() -> String + Send + Sync>) {
    let mut backoff = crate::kernel::fds::AcceptBackoff::new("metrics");
    // A scrape is one short request; more at once than this are not scrapers.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.accepted();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: {MAX_SCRAPES} scrapes at once already; closing");
            continue;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 1024];
            // A scraper sends its request at once; a silent peer does not hold a task forever.
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if request.starts_with("GET /metrics ") {
                match tokio::task::spawn_blocking(move || scrape()).await {
                    Ok(text) => ("200 OK", text),
                    Err(_) => (
                        "500 Internal Server Error",
                        "the scrape failed\n".to_string(),
                    ),
                }
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics is served here\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if let Err(e) = async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await
            }
            .await
            {
                debug!(%peer, "metrics client went away: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_model::Protocol;

    fn sample(inbound: u64, idle: Option<Duration>) -> RouteSample {
        RouteSample {
            route: Route {
                name: "alice".into(),
                service: "ssh".into(),
                protocol: Protocol::Tcp,
                backends: lb_model::Pool::parse(&["10.0.0.11:22", "10.0.0.12:22 weight=2 drained"])
                    .unwrap(),
                port: 30001,
                proxy_protocol: None,
            },
            down: ["10.0.0.11:22".parse().unwrap()].into(),
            fail_open: true,
            counters: Counters {
                inbound_packets: inbound,
                inbound_bytes: inbound * 100,
                outbound_packets: 2,
                outbound_bytes: 200,
                idle,
            },
        }
    }

    #[test]
    fn renders_labelled_samples() {
        let legs = [
            LegSample {
                name: "eth1".into(),
                role: "private",
                egress: "pass",
                tx_dropped: Some(5),
                rx_dropped: None,
            },
            LegSample {
                name: "eth0".into(),
                role: "public",
                egress: "redirect",
                tx_dropped: Some(0),
                rx_dropped: Some(3),
            },
        ];
        let text = render(
            &[sample(7, Some(Duration::from_millis(1500)))],
            &[("fwd_redirect", 9), ("csum_unchecked", 2)],
            &legs,
        );
        assert!(text.contains(
            "srvgate_route_packets_total{name=\"alice\",service=\"ssh\",protocol=\"tcp\",port=\"30001\",direction=\"inbound\"} 7\n"
        ), "{text}");
        assert!(text.contains("srvgate_route_bytes_total{name=\"alice\",service=\"ssh\",protocol=\"tcp\",port=\"30001\",direction=\"outbound\"} 200\n"));
        assert!(text.contains("srvgate_route_idle_seconds{name=\"alice\",service=\"ssh\",protocol=\"tcp\",port=\"30001\"} 1.500\n"));
        assert!(text.contains("srvgate_xdp_verdicts_total{verdict=\"fwd_redirect\"} 9\n"));
        assert!(text.contains("srvgate_xdp_events_total{event=\"csum_unchecked\"} 2\n"));
        assert!(
            !text.contains("verdict=\"csum_unchecked\""),
            "an event is no verdict"
        );
        assert!(text.contains("srvgate_routes 1\n"));
        let l = "name=\"alice\",service=\"ssh\",protocol=\"tcp\",port=\"30001\"";
        assert!(text.contains(&format!(
            "srvgate_backend_up{{{l},backend=\"10.0.0.11:22\",drained=\"false\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "srvgate_backend_up{{{l},backend=\"10.0.0.12:22\",drained=\"true\"}} 1\n"
        )));
        assert!(text.contains(&format!("srvgate_route_fail_open{{{l}}} 1\n")));
        assert!(
            text.contains("srvgate_leg_info{iface=\"eth1\",role=\"private\",egress=\"pass\"} 1\n")
        );
        assert!(text
            .contains("srvgate_leg_info{iface=\"eth0\",role=\"public\",egress=\"redirect\"} 1\n"));
        assert!(text.contains("srvgate_leg_dropped_total{iface=\"eth1\",direction=\"tx\"} 5\n"));
        assert!(!text.contains("iface=\"eth1\",direction=\"rx\""), "{text}");
        assert!(text.contains("srvgate_leg_dropped_total{iface=\"eth0\",direction=\"rx\"} 3\n"));
    }

    #[test]
    fn never_seen_routes_have_no_idle_sample() {
        let text = render(&[sample(0, None)], &[], &[]);
        assert!(!text.contains("srvgate_route_idle_seconds{"), "{text}");
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, Arc::new(|| "x 1\n".to_string())));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nx 1\n"), "{ok}");
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }

    /// On a single-threaded runtime, a scrape run on the async thread would stall it: the
    /// task that lets the scrape finish could not run until the scrape gave up.
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_scrape_does_not_stall_the_async_threads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        let scrape = move || {
            let released = wait.lock().unwrap().recv_timeout(Duration::from_secs(3));
            if released.is_ok() {
                "released 1\n"
            } else {
                "stalled 1\n"
            }
            .to_string()
        };
        let task = tokio::spawn(serve(listener, Arc::new(scrape)));
        let client = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        release.send(()).unwrap();
        let reply = client.await.unwrap();
        assert!(reply.ends_with("released 1\n"), "{reply}");
        task.abort();
    }
}
