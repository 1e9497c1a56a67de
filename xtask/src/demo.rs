//! `cargo xtask run` without arguments: a self-contained demo lab. Not built yet; this
//! placeholder says what it will do so that the command is already discoverable.

use anyhow::Result;

pub fn run() -> Result<()> {
    println!(
        "\
srvgate demo lab (not built yet)

When it exists, `cargo xtask run` with no arguments will:
  1. create network namespaces on this machine: a client, the gateway and a few
     backend instances, wired together with veth pairs;
  2. start sshd and iperf3 inside each backend instance;
  3. write a srvgate config naming those instances and start `srvgate run` on the
     gateway, which attaches the XDP program and serves the DNS zone;
  4. from the client, look up the instances' SRV records (dig / kdig), connect with
     `srvgate ssh NAME` and push traffic through the gateway;
  5. tear everything down on exit or Ctrl-C.

For now, run the gateway on your own config with:
  cargo xtask run -- --config /path/to/srvgate.toml"
    );
    Ok(())
}
