//! The students' client (lb-client) against this server: what `srvgate ssh` plans for each
//! form of target, and the errors it reports, as a student would see them.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
};

use lb_client::{plan, SshArgs, SshPlan};
use lb_model::{Protocol as Proto, Route};

use super::DnsServer;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

fn strings(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn route(name: &str, service: &str, port: u16) -> Route {
    Route {
        name: name.into(),
        service: service.into(),
        protocol: Proto::Tcp,
        backends: lb_model::Pool::one(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 11), 22)),
        port,
        proxy_protocol: None,
    }
}

fn args(target: &str, dns_server: SocketAddr) -> SshArgs {
    SshArgs {
        target: target.into(),
        zone: None,
        service: "ssh".into(),
        dns_server: Some(dns_server),
        print: true,
        proxy: false,
        ssh_args: vec!["-v".into()],
    }
}

/// `plan` blocks on its own thread and runtime, so the test's runtime must keep serving DNS
/// meanwhile: multi-threaded, with `plan` on a blocking thread.
async fn plan_of(a: SshArgs) -> anyhow::Result<SshPlan> {
    tokio::task::spawn_blocking(move || plan(&a)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_against_the_real_server() {
    let cfg = crate::config::Dns {
        zone: "lab.example".into(),
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        gateway_name: "gw".into(),
        nameservers: vec![],
        ttl: 30,
        secondaries: None,
        rrl: None,
    };
    let routes = [route("alice", "ssh", 30001), route("alice", "web", 30002)];
    let server = DnsServer::start(&cfg, GATEWAY, &routes).await.unwrap();
    let dns = server.local_addrs()[0];

    for t in [
        "alice.ssh.lab.example",
        "_ssh._tcp.alice.lab.example",
        "carol@ALICE.ssh.lab.example.",
    ] {
        let p = plan_of(args(t, dns)).await.unwrap();
        assert_eq!(p.endpoint.port, 30001, "{t}");
        assert_eq!(p.endpoint.addr, IpAddr::V4(GATEWAY));
        assert_eq!(p.endpoint.target.to_string(), "gw.lab.example.");
        let argv = strings(&p.argv);
        assert_eq!(
            argv[..5],
            [
                "ssh",
                "-p",
                "30001",
                "-o",
                "HostKeyAlias=alice.ssh.lab.example"
            ]
        );
        assert!(
            argv[5].ends_with("127.0.0.1") && argv[6] == "-v",
            "{argv:?}"
        );
    }
    let mut bare = args("alice", dns);
    bare.zone = Some("lab.example".into());
    bare.service = "web".into();
    assert_eq!(plan_of(bare).await.unwrap().endpoint.port, 30002);

    let e = format!(
        "{:#}",
        plan_of(args("bob.ssh.lab.example", dns)).await.unwrap_err()
    );
    assert!(
        e.contains("_ssh._tcp.bob.lab.example.") && e.contains("NXDOMAIN"),
        "{e}"
    );
    assert!(e.contains(&dns.to_string()), "names the server: {e}");

    let e = format!(
        "{:#}",
        plan_of(args("alice.ssh.other.example", dns))
            .await
            .unwrap_err()
    );
    assert!(e.contains("REFUSED"), "{e}");

    server.shutdown().await;
}
