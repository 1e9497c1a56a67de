//! Response-rate limiting against a reflection flood: 10 000 queries with forged sources
//! spread over one /24 (10.210.7.0/24, the victim's network) get at most one answer byte
//! out per query byte in for that network, while a client elsewhere is still answered.
//!
//! The forged sources are real to the kernel: the client namespace routes 10.210.7.0/24 to
//! itself (`ip route add local`), so a socket can send from any of them and count what the
//! gateway sends back, which it routes there through the client. Without limiting, each
//! SRV answer (with its glue) is about twice its query: the test fails on the old code.
//!
//! Needs root; skips with a message otherwise.

use std::time::Duration;

use srvgate_tests::*;

const VICTIM_NET: &str = "10.210.7.0/24";

/// Sends `FLOOD` SRV queries from 200 sources in the victim's /24 in bursts of 500,
/// draining answers between bursts; after each burst one query from the real client, which
/// must be answered (three tries of a second). Prints `in out truncated answered`.
const FLOOD: &str = r#"
import select, socket, struct, sys, time
server, client, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
def query(qid, name):
    q = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 33, 1)
flood = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(200)]
for i, s in enumerate(flood):
    s.bind(("10.210.7.%d" % (i + 20), 0))
    s.setblocking(False)
real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
real.bind((client, 0))
real.settimeout(1.0)
q = query(0x4242, "_ssh._tcp.alice.lab.example")
bytes_in = bytes_out = truncated = answered = 0
def drain(wait):
    global bytes_out, truncated
    end = time.time() + wait
    while True:
        left = end - time.time()
        if left <= 0:
            return
        ready, _, _ = select.select(flood, [], [], left)
        for s in ready:
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                bytes_out += len(data)
                if len(data) > 2 and data[2] & 0x02:
                    truncated += 1
sent = 0
while sent < total:
    for _ in range(min(500, total - sent)):
        try:
            flood[sent % len(flood)].sendto(q, (server, 53))
            bytes_in += len(q)
        except BlockingIOError:
            pass
        sent += 1
    drain(0.05)
    for attempt in range(3):
        real.sendto(query(sent % 65536, "_ssh._tcp.alice.lab.example"), (server, 53))
        try:
            data = real.recv(4096)
            if len(data) > 12 and data[3] & 0x0f == 0 and not data[2] & 0x02:
                answered += 1
                break
        except socket.timeout:
            pass
drain(2.0)
print(bytes_in, bytes_out, truncated, answered, (total + 499) // 500)
"#;

#[test]
fn a_forged_source_flood_is_not_amplified_and_others_are_answered() {
    let Some(lab) = Lab::for_test("a_forged_source_flood", "rrl") else {
        return;
    };
    lab.start_with_routes(&[RouteSpec::tcp(
        "alice",
        "ssh",
        &format!("{B1_IP}:22"),
        30001,
    )])
    .expect("starting srvgate");
    lab.exec_ok(
        &lab.client,
        &["ip", "route", "add", "local", VICTIM_NET, "dev", "lo"],
    )
    .unwrap();
    lab.exec_ok(
        &lab.gw,
        &["ip", "route", "add", VICTIM_NET, "via", CLIENT_IP],
    )
    .unwrap();
    let script = lab.write_file("flood.py", FLOOD).unwrap();
    let script = script.display().to_string();
    let out = lab
        .exec(
            &lab.client,
            &["python3", &script, PUBLIC_IP, CLIENT_IP, "10000"],
            Duration::from_secs(300),
        )
        .expect("the flood");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let [bytes_in, bytes_out, truncated, answered, rounds] = n[..] else {
        panic!("{text}")
    };
    eprintln!(
        "flood: {bytes_in} bytes in, {bytes_out} out ({:.2} per byte), {truncated} truncated; the other client answered {answered} of {rounds}",
        bytes_out as f64 / bytes_in as f64
    );
    assert!(bytes_in >= 10_000 * 40, "the flood was sent: {text}");
    assert!(
        bytes_out <= bytes_in,
        "at most one byte out per byte in for the victim's network: {text}"
    );
    assert!(truncated > 0, "some answers slip out truncated: {text}");
    assert_eq!(answered, rounds, "the other client is answered: {text}");
    let slipped = lab
        .metric("srvgate_dns_rrl_total", &[("action", "slipped")])
        .unwrap();
    let dropped = lab
        .metric("srvgate_dns_rrl_total", &[("action", "dropped")])
        .unwrap();
    assert!(slipped > 0.0 && dropped > 0.0, "{slipped} {dropped}");
}
