//! srvgate's XDP program: `public:P -> backend:port` on the way in, the reverse on the way out.
//!
//! One program serves every interface; the `INTERFACES` map says whether a leg is public
//! (look up frontends) or private (look up replies). Anything the program does not own or
//! cannot parse goes to the kernel untouched (`XDP_PASS`), but for what a public leg refuses
//! first (`program/guard.rs`: spoofed sources, packets for private addresses), which is
//! dropped; every verdict is counted in `GLOBAL_COUNTERS`, so nothing is dropped silently.
//!
//! A frame's path, each step in its own function: the public legs' guards; the leg
//! (`LEG_CACHE`, a direct-mapped array by ifindex, else `INTERFACES`), whose role is a bitmask:
//! a one-armed gateway's one NIC is public and private at once, and there `inside_host` tells
//! a hairpin flow's inside end from a client; the MAC check (a frame not sent to the leg's own
//! MAC, e.g. one a switch flooded to a standby gateway, passes as `PASS_NOT_FOR_US`);
//! `FRONTENDS` (an array by port and protocol, `lb_common::frontend_slot`) or `REVERSE`; for
//! a route with a pool, its member (`backend_for`: the flow's member in `FLOWS` while it is
//! live, else the pool's Maglev table in `POOL_TABLES` by `flow_hash`; a one-backend route
//! skips this on one compare); the
//! next hop, asked before the rewrite (`route_cached`: a per-CPU cache of FIB successes in
//! `NEXT_HOPS`, valid for one tick of the daemon's clock and `NEXT_HOP_USES` packets), so that
//! a DF packet too big for its egress is answered by `too_big` and a backend's packet the
//! gateway would not forward stays untouched; the rewrite (MSS lowered on SYNs by
//! `clamp_mss`; ICMP errors about a flow translated by `translate_icmp`); then `bpf_redirect`
//! if the egress leg takes redirects (`Interface.egress`), else `XDP_PASS`. Segments with
//! partial checksums (veth, tap, virtio) are rewritten for offload and passed to the kernel.
//!
//! The program reads no clock: time is `SETTINGS.now_ns`, which the daemon advances each
//! second. Per-route traffic is counted in `ROUTE_COUNTERS` (bytes of whole frames).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // This binary is only meaningful as BPF bytecode, built by lb-userspace's build.rs for
    // bpfel-unknown-none. On the host it exists so the workspace builds and tests.
}

#[cfg(target_arch = "bpf")]
mod program;
