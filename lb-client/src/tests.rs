use std::{
    io::{Cursor, Read, Write},
    net::{Ipv4Addr, TcpListener},
};

use clap::Parser;
use hickory_resolver::proto::rr::rdata::SRV;

use super::{
    resolve::{self, choose},
    *,
};

fn target(t: &str, zone: Option<&str>) -> anyhow::Result<Target> {
    Target::parse(t, zone, "ssh")
}

fn srv_name(t: &str, zone: Option<&str>) -> String {
    target(t, zone).unwrap().srv_name
}

#[test]
fn every_target_form_looks_up_the_tcp_srv_name() {
    let want = "_ssh._tcp.alice.lab.example.";
    assert_eq!(srv_name("alice.ssh.lab.example", None), want);
    assert_eq!(srv_name("alice.ssh.lab.example.", None), want);
    assert_eq!(srv_name("Alice.SSH.Lab.Example", None), want);
    assert_eq!(srv_name("_ssh._tcp.alice.lab.example", None), want);
    assert_eq!(srv_name("alice", Some("lab.example")), want);
    assert_eq!(srv_name("alice", Some("lab.example.")), want);
    assert_eq!(srv_name("alice.ssh", Some("lab.example")), want);
    assert_eq!(srv_name("alice.ssh.lab.example", Some("lab.example")), want);
    assert_eq!(
        Target::parse("alice", Some("lab.example"), "git")
            .unwrap()
            .srv_name,
        "_git._tcp.alice.lab.example."
    );
    assert_eq!(srv_name("alice.ssh.a.b.c", None), "_ssh._tcp.alice.a.b.c.");

    let t = target("bob@alice.ssh.lab.example", None).unwrap();
    assert_eq!(t.user.as_deref(), Some("bob"));
    assert_eq!(t.service_host, "alice.ssh.lab.example");
    let t = target("_ssh._tcp.alice.lab.example", None).unwrap();
    assert_eq!(t.service_host, "alice.ssh.lab.example");
}

#[test]
fn unusable_targets_say_why() {
    for (t, zone, says) in [
        ("alice", None, "--zone"),
        ("alice.ssh", None, "--zone"),
        ("_ssh._udp.alice.lab.example", None, "TCP"),
        ("_ssh.alice.lab.example", None, "_SERVICE._tcp.NAME.ZONE"),
        ("_ssh._tcp.alice", None, "_SERVICE._tcp.NAME.ZONE"),
        ("a.b.c", Some("lab.example"), "NAME.SERVICE.lab.example"),
        ("lab.example", Some("lab.example"), "zone itself"),
        ("alice..lab.example", None, "not a DNS name"),
        ("@alice.ssh.lab.example", None, "before '@'"),
        ("al_ice.ssh.lab.example", None, "the name"),
        ("alice", Some("bad zone"), "--zone"),
    ] {
        let e = target(t, zone).expect_err(t).to_string();
        assert!(e.contains(says), "{t}: {e}");
    }
}

fn endpoint(port: u16) -> Endpoint {
    Endpoint {
        port,
        target: "gw.lab.example.".parse().unwrap(),
        addr: "203.0.113.7".parse().unwrap(),
    }
}

fn strings(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn ssh_gets_the_port_the_address_and_every_other_argument() {
    let t = target("bob@alice.ssh.lab.example", None).unwrap();
    let argv = ssh_argv(
        &t,
        &endpoint(30001),
        &["-L".into(), "8888:localhost:8888".into(), "uptime".into()],
    );
    assert_eq!(
        strings(&argv),
        [
            "ssh",
            "-p",
            "30001",
            "-o",
            "HostKeyAlias=alice.ssh.lab.example",
            "bob@203.0.113.7",
            "-L",
            "8888:localhost:8888",
            "uptime"
        ]
    );
    // The user's own HostKeyAlias wins: ours is left out.
    let t = target("alice.ssh.lab.example", None).unwrap();
    let argv = ssh_argv(&t, &endpoint(30001), &["-oHostKeyAlias=x".into()]);
    assert_eq!(
        strings(&argv),
        ["ssh", "-p", "30001", "203.0.113.7", "-oHostKeyAlias=x"]
    );
}

#[test]
fn printed_commands_are_shell_quoted() {
    let argv: Vec<OsString> = ["ssh", "-p", "30001", "a b", "it's", ""]
        .map(OsString::from)
        .to_vec();
    assert_eq!(shell_line(&argv), r#"ssh -p 30001 'a b' "it's" ''"#);
}

#[test]
fn printed_commands_read_back_word_for_word_in_a_shell() {
    let words = [
        "a b",
        "it's",
        "",
        "$HOME",
        "`id`",
        "back\\slash",
        "-oX=%h",
        "tab\tnew\nline",
        "ünï",
    ];
    let argv: Vec<OsString> = std::iter::once("printf")
        .chain(std::iter::once("%s\\0"))
        .chain(words)
        .map(OsString::from)
        .collect();
    let out = std::process::Command::new("sh")
        .args(["-c", &shell_line(&argv)])
        .output()
        .unwrap();
    let back: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(String::from)
        .collect();
    assert_eq!(back, words);
}

#[test]
fn rfc2782_selection() {
    let srv = |priority, weight, port| {
        SRV::new(priority, weight, port, "gw.lab.example.".parse().unwrap())
    };
    assert!(choose(&[], 7).is_none());
    let records = [srv(10, 0, 1), srv(0, 0, 2), srv(0, 0, 3), srv(5, 100, 4)];
    for random in 0..10 {
        let port = choose(&records, random).unwrap().port;
        assert!(port == 2 || port == 3, "lowest priority only");
    }
    let weighted = [srv(0, 1, 1), srv(0, 3, 2), srv(0, 0, 3)];
    let picks: Vec<u16> = (0..4).map(|r| choose(&weighted, r).unwrap().port).collect();
    assert_eq!(
        picks,
        [1, 2, 2, 2],
        "by weight; weight 0 loses to any weight"
    );
}

#[test]
fn clap_reads_the_documented_command_lines() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ssh: SshArgs,
    }
    let cli = Cli::try_parse_from([
        "srvgate",
        "alice.ssh.lab.example",
        "--dns-server",
        "10.0.0.1",
        "--",
        "-v",
        "uptime",
    ])
    .unwrap();
    assert_eq!(cli.ssh.dns_server, Some("10.0.0.1:53".parse().unwrap()));
    assert_eq!(
        cli.ssh.ssh_args,
        [OsString::from("-v"), OsString::from("uptime")]
    );
    assert!(!cli.ssh.print && !cli.ssh.proxy);

    let cli = Cli::try_parse_from([
        "srvgate",
        "--proxy",
        "--dns-server",
        "[::1]:5353",
        "x.ssh.z",
    ])
    .unwrap();
    assert!(cli.ssh.proxy);
    assert_eq!(cli.ssh.dns_server, Some("[::1]:5353".parse().unwrap()));

    assert!(Cli::try_parse_from(["srvgate", "x", "--dns-server", "nope"]).is_err());
    assert!(Cli::try_parse_from(["srvgate", "x", "--print", "--proxy"]).is_err());
}

fn config_args(dns_server: Option<&str>) -> SshConfigArgs {
    SshConfigArgs {
        zone: "Lab.Example".into(),
        service: "ssh".into(),
        dns_server: dns_server.map(|s| s.parse().unwrap()),
        program: Some("/opt/srv gate/bin/srvgate".into()),
    }
}

#[test]
fn ssh_config_block_proxies_through_srvgate() {
    let text = ssh_config_text(&config_args(Some("203.0.113.7:53"))).unwrap();
    assert!(text.contains("\nHost *.ssh.lab.example\n"), "{text}");
    assert!(
        text.contains("    ProxyCommand '/opt/srv gate/bin/srvgate' ssh --proxy --dns-server 203.0.113.7:53 %h\n"),
        "{text}"
    );
    let text = ssh_config_text(&config_args(None)).unwrap();
    assert!(!text.contains("--dns-server"), "{text}");
    let bad = SshConfigArgs {
        zone: "lab example".into(),
        ..config_args(None)
    };
    assert!(ssh_config_text(&bad)
        .unwrap_err()
        .to_string()
        .contains("--zone"));
}

/// OpenSSH itself must accept the block and apply it to the service names (and only those).
#[test]
fn openssh_parses_the_ssh_config_block() {
    let text = ssh_config_text(&config_args(Some("203.0.113.7:53"))).unwrap();
    let dir = std::env::temp_dir().join(format!("srvgate-ssh-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config");
    std::fs::write(&file, text).unwrap();
    let g = |host: &str| {
        std::process::Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&file)
            .arg(host)
            .output()
    };
    let out = match g("alice.ssh.lab.example") {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            srvgate_tests::skip(
                "openssh_parses_the_ssh_config_block",
                "ssh is not installed (apt-get install openssh-client)",
            );
            return;
        }
        Err(e) => panic!("running ssh -G: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(
            "proxycommand '/opt/srv gate/bin/srvgate' ssh --proxy --dns-server 203.0.113.7:53 %h"
        ),
        "{stdout}"
    );
    let other = g("example.com").unwrap();
    assert!(!String::from_utf8_lossy(&other.stdout).contains("proxycommand"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn splice_relays_both_ways_until_the_service_closes() {
    // An echo service that upper-cases, so the test sees data went through it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let service = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap(); // until the proxy half-closes
        conn.write_all(&got.to_ascii_uppercase()).unwrap();
    });
    let stream = TcpStream::connect(addr).unwrap();
    let mut output = Vec::new();
    // Binary data without a newline: nothing may sit in a line buffer.
    splice(
        Cursor::new(b"ssh-2.0\x00\xff".to_vec()),
        &mut output,
        stream,
    )
    .unwrap();
    service.join().unwrap();
    assert_eq!(output, b"SSH-2.0\x00\xff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_as_such() {
    // A port nobody listens on: ICMP port unreachable over UDP, RST over TCP.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = std::time::Instant::now();
    let e = tokio::task::spawn_blocking(move || {
        resolve::lookup_with_timeout(
            "_ssh._tcp.alice.lab.example.",
            Some(dead),
            Duration::from_millis(300),
        )
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.contains(&dead.to_string()) && e.contains("unreachable"),
        "{e}"
    );
}

// Issue 10, items 12 and 13: answers `srvgate ssh` must not act on, and telling what
// happened once.

/// A UDP DNS server on loopback that answers each query with `answer(query)` (`None`: no
/// reply), for at most `max` queries or 20 s.
fn fake_dns(
    max: usize,
    answer: impl Fn(&Message) -> Option<Vec<u8>> + Send + 'static,
) -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 1500];
        let mut served = 0;
        while served < max && std::time::Instant::now() < deadline {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            served += 1;
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if let Some(reply) = answer(&q) {
                let _ = socket.send_to(&reply, peer);
            }
        }
    });
    addr
}

use hickory_resolver::proto::{
    op::{Message, MessageType},
    rr::{rdata::CNAME, Name, RData, Record},
};

fn reply_to(q: &Message, answers: Vec<Record>, additionals: Vec<Record>) -> Vec<u8> {
    let mut r = Message::query();
    r.metadata.id = q.metadata.id;
    r.metadata.message_type = MessageType::Response;
    r.metadata.authoritative = true;
    r.add_queries(q.queries.clone());
    r.add_answers(answers);
    r.add_additionals(additionals);
    r.to_vec().unwrap()
}

fn lookup_at(server: SocketAddr) -> String {
    let e = resolve::lookup_with_timeout(
        "_ssh._tcp.alice.lab.example.",
        Some(server),
        Duration::from_millis(400),
    )
    .unwrap_err();
    format!("{e:#}")
}

fn srv_answer(q: &Message, port: u16, glue: Ipv4Addr) -> Vec<u8> {
    let qname = q.queries[0].name().clone();
    let gw = Name::from_ascii("gw.lab.example.").unwrap();
    reply_to(
        q,
        vec![Record::from_rdata(
            qname,
            30,
            RData::SRV(SRV::new(0, 0, port, gw.clone())),
        )],
        vec![Record::from_rdata(gw, 30, RData::A(glue.into()))],
    )
}

#[test]
fn an_srv_record_with_port_0_is_refused_naming_it() {
    let server = fake_dns(4, |q| Some(srv_answer(q, 0, Ipv4Addr::new(203, 0, 113, 7))));
    let e = lookup_at(server);
    assert!(
        e.contains("port 0") && e.contains("SRV 0 0 0 gw.lab.example."),
        "{e}"
    );
}

#[test]
fn a_glue_address_of_0_0_0_0_is_refused_naming_it() {
    let server = fake_dns(4, |q| Some(srv_answer(q, 30001, Ipv4Addr::UNSPECIFIED)));
    let e = lookup_at(server);
    assert!(
        e.contains("gw.lab.example. A 0.0.0.0") && e.contains("not a host's address"),
        "{e}"
    );
}

#[test]
fn a_cname_loop_is_called_one() {
    let server = fake_dns(20, |q| {
        let qname = q.queries[0].name().clone();
        let a = Name::from_ascii("_ssh._tcp.alice.lab.example.").unwrap();
        let b = Name::from_ascii("b.lab.example.").unwrap();
        let next = if qname == a { b } else { a };
        Some(reply_to(
            q,
            vec![Record::from_rdata(qname, 30, RData::CNAME(CNAME(next)))],
            vec![],
        ))
    });
    let e = lookup_at(server);
    assert!(e.contains("CNAME loop"), "{e}");
    assert!(
        e.contains(
            "_ssh._tcp.alice.lab.example. -> b.lab.example. -> _ssh._tcp.alice.lab.example."
        ),
        "{e}"
    );
}

#[test]
fn replies_with_a_wrong_id_are_told_once_with_the_outcome() {
    let server = fake_dns(20, |q| {
        let mut reply = srv_answer(q, 30001, Ipv4Addr::new(203, 0, 113, 7));
        reply[0] ^= 0x5a;
        Some(reply)
    });
    let e = lookup_at(server);
    assert!(e.contains("unreachable") || e.contains("no answer"), "{e}");
    assert_eq!(e.matches("wrong message id").count(), 1, "{e}");
    assert!(e.contains("forged"), "{e}");
}

#[test]
fn a_gateway_that_could_not_change_anything_is_not_bad_input() {
    use super::account::StudentError;
    let refused = |status| StudentError::Refused {
        status,
        message: "x".into(),
    };
    assert!(refused(403).is_bad_input(), "exit 2: the student's request");
    assert!(
        !refused(503).is_bad_input(),
        "exit 1: etcd unreachable, try again"
    );
    assert!(!StudentError::Unreachable {
        url: "https://gw".into(),
        reason: "refused".into()
    }
    .is_bad_input());
}

#[derive(clap::Parser)]
struct Student {
    #[command(subcommand)]
    command: StudentCommand,
}

fn parse_student(args: &[&str]) -> Result<StudentCommand, clap::Error> {
    Student::try_parse_from(std::iter::once("srvgate").chain(args.iter().copied()))
        .map(|s| s.command)
}

#[test]
fn claim_and_release_take_the_service_either_way_but_once() {
    let claim = |args: &[&str]| match parse_student(args) {
        Ok(StudentCommand::Claim(a)) => Ok(account::one_service_of_claim(&a)),
        Ok(_) => panic!("not claim"),
        Err(e) => Err(e.kind()),
    };
    assert_eq!(
        claim(&["claim", "ssh", "--backend", "10.0.0.11:22"]),
        Ok("ssh".into())
    );
    assert_eq!(
        claim(&["claim", "--service", "ssh", "--backend", "10.0.0.11:22"]),
        Ok("ssh".into())
    );
    assert_eq!(
        claim(&[
            "claim",
            "ssh",
            "--service",
            "web",
            "--backend",
            "10.0.0.11:22"
        ]),
        Err(clap::error::ErrorKind::ArgumentConflict)
    );
    assert_eq!(
        claim(&["claim", "--backend", "10.0.0.11:22"]),
        Err(clap::error::ErrorKind::MissingRequiredArgument)
    );
    for args in [&["release", "game"][..], &["release", "--service", "game"]] {
        let Ok(StudentCommand::Release(r)) = parse_student(args) else {
            panic!("{args:?}");
        };
        assert_eq!(account::one_service_of_release(&r), "game");
    }
}

#[test]
fn claim_help_says_which_names_are_special() {
    use clap::CommandFactory as _;
    let mut cmd = Student::command();
    let help = cmd
        .find_subcommand_mut("claim")
        .unwrap()
        .render_long_help()
        .to_string();
    assert!(
        help.contains("`http` and `https` are the names the gateway's web routers route by"),
        "{help}"
    );
    assert!(
        help.contains("`ssh` is the one\n`srvgate ssh-config` sets up"),
        "{help}"
    );
}
