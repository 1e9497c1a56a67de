//! The probes against servers these tests start on loopback, and the runner with a fake
//! prober (scripted results, counted tasks) and with the real one.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, watch},
};

use lb_model::check::{CheckKind, CheckSpec};

use super::*;
use crate::{machine::Interface, testing::FakeProber};

/// Generous: conditions are waited for, never timed.
const PATIENCE: Duration = Duration::from_secs(30);

fn spec(kind: CheckKind) -> CheckSpec {
    CheckSpec {
        port: None,
        kind,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(2000),
        rise: 2,
        fall: 2,
    }
}

fn http(path: &str) -> CheckKind {
    CheckKind::Http {
        path: path.into(),
        host: None,
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("bound on 127.0.0.1"),
    }
}

/// A server on loopback that answers every connection with `answer` (after reading what
/// the client sent, up to its first blank line when `read_request`), then closes. Returns
/// its address and what it was sent, connection by connection.
async fn server(
    answer: impl Fn() -> Vec<u8> + Send + Sync + 'static,
    read_request: bool,
) -> (SocketAddrV4, Arc<Mutex<Vec<(SocketAddr, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = v4(listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            let mut request = Vec::new();
            if read_request {
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
            }
            log.lock()
                .unwrap()
                .push((peer, String::from_utf8_lossy(&request).into_owned()));
            let _ = s.write_all(&answer()).await;
        }
    });
    (addr, seen)
}

/// Accepts connections and never answers (holds them until the test ends).
async fn black_hole() -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = v4(listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A loopback port nothing listens on.
async fn closed_port() -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    v4(listener.local_addr().unwrap())
}

/// A prober for tests on loopback: the public address is one no test uses.
fn prober() -> NetProber {
    NetProber::with_interfaces(Ipv4Addr::new(203, 0, 113, 10), Arc::new(|| Ok(Vec::new())))
}

async fn probe(addr: SocketAddrV4, kind: CheckKind) -> Result<String, ProbeError> {
    check_once(&prober(), addr, &spec(kind)).await
}

#[tokio::test]
async fn tcp_passes_on_a_listener_and_fails_on_a_closed_port() {
    let (addr, seen) = server(Vec::new, false).await;
    assert_eq!(probe(addr, CheckKind::Tcp).await, Ok("TCP connect".into()));
    let closed = closed_port().await;
    let e = probe(closed, CheckKind::Tcp).await.unwrap_err();
    assert!(matches!(e, ProbeError::Connect(_)), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    // The accept loop may lag the probe; the connection did reach it.
    tokio::time::timeout(PATIENCE, async {
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn http_wants_2xx_or_3xx_and_sends_path_and_host() {
    let (ok, seen) = server(
        || b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(probe(ok, http("/healthz")).await, Ok("HTTP 200 OK".into()));
    let request = seen.lock().unwrap()[0].1.clone();
    assert!(
        request.starts_with("GET /healthz HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("\r\nHost: {ok}\r\n")),
        "{request}"
    );

    let named = CheckKind::Http {
        path: "/".into(),
        host: Some("judge.example".into()),
    };
    assert!(probe(ok, named).await.is_ok());
    assert!(seen.lock().unwrap()[1]
        .1
        .contains("\r\nHost: judge.example\r\n"));

    let (moved, _) = server(
        || b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(probe(moved, http("/")).await, Ok("HTTP 302 Found".into()));

    let (broken, _) = server(
        || b"HTTP/1.1 500 Internal Server Error\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(
        probe(broken, http("/")).await,
        Err(ProbeError::Status {
            code: 500,
            reason: "Internal Server Error".into()
        })
    );
}

#[tokio::test]
async fn http_answers_that_are_no_http_are_refused_within_the_bound() {
    let (garbage, _) = server(|| b"SSH-2.0-OpenSSH\r\n".to_vec(), true).await;
    let e = probe(garbage, http("/")).await.unwrap_err();
    assert!(e.to_string().starts_with("not an HTTP response"), "{e}");

    // Endless blank lines (which may precede a status line): refused at the bound, not
    // read on.
    let (endless, _) = server(|| b"\r\n".repeat(3 * MAX_HTTP_HEAD), true).await;
    let e = probe(endless, http("/")).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("no HTTP status line in the first 8192 bytes"),
        "{e}"
    );

    let (silent, _) = server(Vec::new, true).await;
    let e = probe(silent, http("/")).await.unwrap_err();
    assert_eq!(e.to_string(), "closed the connection without answering");
}

#[tokio::test]
async fn a_backend_that_never_answers_times_out() {
    let hole = black_hole().await;
    let mut s = spec(http("/"));
    s.timeout = Duration::from_millis(300);
    let e = check_once(&prober(), hole, &s).await.unwrap_err();
    assert_eq!(e, ProbeError::TimedOut(Duration::from_millis(300)));
    assert_eq!(e.to_string(), "no answer within 300ms");
    s.kind = CheckKind::Ssh;
    assert!(matches!(
        check_once(&prober(), hole, &s).await,
        Err(ProbeError::TimedOut(_))
    ));
}

#[tokio::test]
async fn ssh_wants_a_2_0_identification_line() {
    let (sshd, _) = server(|| b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n".to_vec(), false).await;
    assert_eq!(
        probe(sshd, CheckKind::Ssh).await,
        Ok("SSH banner \"SSH-2.0-OpenSSH_9.6p1 Debian-4\"".into())
    );
    // Lines before the identification are allowed (RFC 4253 section 4.2).
    let (chatty, _) = server(
        || b"Welcome to the judge\r\nno root logins\r\nSSH-1.99-old\r\n".to_vec(),
        false,
    )
    .await;
    assert!(probe(chatty, CheckKind::Ssh).await.is_ok());

    let (v1, _) = server(|| b"SSH-1.5-ancient\r\n".to_vec(), false).await;
    let e = probe(v1, CheckKind::Ssh).await.unwrap_err();
    assert!(e.to_string().contains("is not SSH protocol 2.0"), "{e}");

    let (web, _) = server(|| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(), false).await;
    let e = probe(web, CheckKind::Ssh).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("closed the connection before an SSH identification"),
        "{e}"
    );

    let (flood, _) = server(|| vec![b'x'; 4 * MAX_SSH_BANNER], false).await;
    let e = probe(flood, CheckKind::Ssh).await.unwrap_err();
    assert!(e.to_string().contains("in the first 2048 bytes"), "{e}");
}

#[tokio::test]
async fn a_check_leaves_from_another_address_than_the_public_one() {
    let (addr, seen) = server(Vec::new, false).await;
    // Loopback plays the public leg: the kernel would send from 127.0.0.1, the "public"
    // address, and the interface has a second one (all of 127/8 is local on Linux).
    let lo = |nets: Vec<(Ipv4Addr, u8)>| Interface {
        name: "lo".into(),
        loopback: true,
        ipv4: nets.iter().map(|(a, _)| *a).collect(),
        ipv4_nets: nets,
    };
    let public = Ipv4Addr::LOCALHOST;
    let second = Ipv4Addr::new(127, 0, 0, 2);
    let two = lo(vec![(public, 8), (second, 8)]);
    let p = NetProber::with_interfaces(public, Arc::new(move || Ok(vec![two.clone()])));
    assert!(check_once(&p, addr, &spec(CheckKind::Tcp)).await.is_ok());
    let peer = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some((peer, _)) = seen.lock().unwrap().first() {
                return *peer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(second));

    // Only the public address: the check is refused, and nothing was sent.
    let one = lo(vec![(public, 8)]);
    let p = NetProber::with_interfaces(public, Arc::new(move || Ok(vec![one.clone()])));
    let e = check_once(&p, addr, &spec(CheckKind::Tcp))
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::Source(_)), "{e}");
    assert!(
        e.to_string().contains("from the public address 127.0.0.1"),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.lock().unwrap().len(), 1, "the refused check connected");
}

fn backend(n: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 210, 0, n), 80)
}

fn target(n: u8, spec: CheckSpec) -> Target {
    Target {
        key: format!("r{n}/web/tcp"),
        backend: backend(n),
        spec,
    }
}

struct Running {
    targets: watch::Sender<Vec<Target>>,
    transitions: mpsc::Receiver<Transition>,
    board: Board,
    task: tokio::task::JoinHandle<()>,
}

fn start<P: Prober>(prober: Arc<P>, targets: Vec<Target>, max_probes: usize) -> Running {
    let (tx, rx) = watch::channel(targets);
    let (out, transitions) = mpsc::channel(64);
    let board = Board::default();
    let task = tokio::spawn(run(prober, rx, out, board.clone(), max_probes));
    Running {
        targets: tx,
        transitions,
        board,
        task,
    }
}

async fn next(r: &mut Running) -> Transition {
    tokio::time::timeout(PATIENCE, r.transitions.recv())
        .await
        .expect("a transition in time")
        .expect("the runner is running")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {what}"));
}

#[tokio::test]
async fn the_runner_reports_down_and_up_with_reasons() {
    let fake = Arc::new(FakeProber::default());
    fake.pass.lock().unwrap().insert(backend(2), false);
    let mut r = start(
        fake.clone(),
        vec![
            target(1, spec(CheckKind::Tcp)),
            target(2, spec(CheckKind::Tcp)),
        ],
        8,
    );
    let t = next(&mut r).await;
    assert_eq!(t.target.backend, backend(2));
    assert_eq!(t.target.key, "r2/web/tcp");
    assert!(!t.up);
    assert_eq!(t.reason, "first check failed: connect: fake refusal");
    assert_eq!(r.board.is_up("r2/web/tcp", backend(2)), Some(false));

    fake.pass.lock().unwrap().insert(backend(2), true);
    let t = next(&mut r).await;
    assert!(t.up && t.target.backend == backend(2));
    assert_eq!(t.reason, "2 checks in a row passed, last: fake pass");

    fake.pass.lock().unwrap().insert(backend(2), false);
    let t = next(&mut r).await;
    assert!(!t.up);
    assert_eq!(
        t.reason,
        "2 checks in a row failed, last: connect: fake refusal"
    );

    // Backend 1 passed all along: no transition of its own, and confirmed up.
    let one = r
        .board
        .snapshot()
        .into_iter()
        .find(|s| s.backend == backend(1))
        .unwrap();
    assert!(one.up && one.confirmed, "{one:?}");
    assert_eq!(one.last.as_deref(), Some("fake pass"));
    assert_eq!(one.check, "tcp inter 100ms timeout 2s rise 2 fall 2");
    r.task.abort();
}

#[tokio::test]
async fn probes_in_flight_stay_within_the_limit() {
    let fake = Arc::new(FakeProber {
        delay: Duration::from_millis(30),
        ..FakeProber::default()
    });
    let targets: Vec<Target> = (1..=40).map(|n| target(n, spec(CheckKind::Tcp))).collect();
    let r = start(fake.clone(), targets, 4);
    wait_for("every target probed twice", || {
        let p = fake.probed.lock().unwrap();
        p.len() == 40 && p.values().all(|&n| n >= 2)
    })
    .await;
    let most = fake.most.load(Ordering::SeqCst);
    assert!(most <= 4, "{most} probes at once with a limit of 4");
    r.task.abort();
}

#[tokio::test]
async fn removed_targets_leave_no_task_and_no_status() {
    let fake = Arc::new(FakeProber::default());
    fake.hang.lock().unwrap().extend([backend(1), backend(2)]);
    let mut slow = spec(CheckKind::Tcp);
    slow.interval = Duration::from_secs(2);
    slow.timeout = Duration::from_secs(1);
    let all = vec![
        target(1, slow.clone()),
        target(2, slow.clone()),
        target(3, spec(CheckKind::Tcp)),
    ];
    let r = start(fake.clone(), all.clone(), 8);
    // Each target's task holds the prober: the test's, the runner's and three.
    wait_for("three tasks", || Arc::strong_count(&fake) == 5).await;
    wait_for("a hanging probe", || {
        fake.in_flight.load(Ordering::SeqCst) >= 1
    })
    .await;
    r.targets.send(vec![all[2].clone()]).unwrap();
    wait_for("two tasks ended", || Arc::strong_count(&fake) == 3).await;
    let routes: Vec<String> = r.board.snapshot().into_iter().map(|s| s.route).collect();
    assert_eq!(routes, ["r3/web/tcp"]);

    // The runner ends with its input, and takes every task with it.
    r.targets.send(all).unwrap();
    wait_for("three tasks again", || Arc::strong_count(&fake) == 5).await;
    drop(r.targets);
    wait_for("no task", || Arc::strong_count(&fake) == 1).await;
    assert!(r.board.snapshot().is_empty());
    tokio::time::timeout(PATIENCE, r.task)
        .await
        .unwrap()
        .unwrap();
    wait_for("no probe in flight", || {
        fake.in_flight.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn dropping_the_runner_aborts_its_tasks() {
    let fake = Arc::new(FakeProber::default());
    let r = start(fake.clone(), vec![target(1, spec(CheckKind::Tcp))], 8);
    wait_for("one task", || Arc::strong_count(&fake) == 3).await;
    r.task.abort();
    wait_for("no task", || Arc::strong_count(&fake) == 1).await;
}

#[tokio::test]
async fn a_changed_check_keeps_the_verdict() {
    let fake = Arc::new(FakeProber::default());
    fake.pass.lock().unwrap().insert(backend(1), false);
    let mut r = start(fake.clone(), vec![target(1, spec(CheckKind::Tcp))], 8);
    assert!(!next(&mut r).await.up);
    let mut other = spec(http("/healthz"));
    other.rise = 3;
    r.targets.send(vec![target(1, other)]).unwrap();
    wait_for("the new check", || {
        r.board
            .snapshot()
            .first()
            .is_some_and(|s| s.check.starts_with("http GET /healthz"))
    })
    .await;
    let s = &r.board.snapshot()[0];
    assert!(!s.up && s.confirmed, "{s:?}");
    // Down, it needs `rise` passes: not the new target's single failure.
    fake.pass.lock().unwrap().insert(backend(1), true);
    let t = next(&mut r).await;
    assert!(t.up);
    assert_eq!(t.reason, "3 checks in a row passed, last: fake pass");
    r.task.abort();
}

#[tokio::test]
async fn the_runner_with_real_probes_follows_an_http_backend() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let (addr, _) = server(
        move || {
            if flag.load(Ordering::SeqCst) {
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
            } else {
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n".to_vec()
            }
        },
        true,
    )
    .await;
    let t = Target {
        key: "judge/http/tcp".into(),
        backend: addr,
        spec: spec(http("/healthz")),
    };
    let mut r = start(Arc::new(prober()), vec![t], 8);
    wait_for("a passed check", || {
        r.board.snapshot().first().and_then(|s| s.last.clone())
            == Some("HTTP 204 No Content".into())
    })
    .await;
    healthy.store(false, Ordering::SeqCst);
    let down = next(&mut r).await;
    assert!(!down.up);
    assert_eq!(
        down.reason,
        "2 checks in a row failed, last: HTTP 503 Service Unavailable (a check passes on 2xx or 3xx)"
    );
    healthy.store(true, Ordering::SeqCst);
    assert!(next(&mut r).await.up);
    r.task.abort();
}

#[test]
fn a_status_reads_as_json() {
    let status = TargetStatus {
        route: "judge/http/tcp".into(),
        backend: backend(1),
        up: false,
        confirmed: true,
        check: CheckSpec::default().to_string(),
        last: Some("connect: refused".into()),
        against: 0,
        changed_unix: None,
    };
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["backend"], "10.210.0.1:80");
    assert_eq!(json["up"], false);
    assert_eq!(json["check"], "tcp inter 2s timeout 1s rise 2 fall 3");
    assert_eq!(json["last"], "connect: refused");
    assert!(json.get("changed_unix").is_none(), "{json}");
}
