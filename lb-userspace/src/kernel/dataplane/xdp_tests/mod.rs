//! The compiled XDP program on crafted packets (`BPF_PROG_TEST_RUN`): every verdict it can
//! reach, checked on the real bytecode (action, bytes out, counters), as Cilium tests its
//! datapath. Needs root (loading BPF); each test runs in a network namespace of its own
//! (`unshare` on the test's thread), with one veth leg, a neighbour and a route, so that
//! the program's FIB lookups have the same answer on any machine.
//!
//! By scenario, as Cilium's bpf/tests are: `forwarding`, `reverse`, `hairpin`, `icmp`, `mss`,
//! `mtu`, `checksums`, `budgets`, `legs`, `guards`, `pools`, and `maps` (without root: the object's
//! maps against `lb_common`'s names and sizes); `bench` holds the measurements the bench
//! runs. Here: the packets (`Frame`, `parse`, the checksum oracle) and the `Harness`, whose
//! `expect` runs a frame and asserts its action and verdict.

use std::{mem::size_of, net::Ipv4Addr, process::Command};

use aya::{
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    counter, frontend_slot, map_names, Backend, Budget, CsumScratch, GuardKey, HairpinKey,
    HairpinValue, Interface, LegSlot, NextHop, ReverseKey, ReverseValue, RouteCounters, Settings,
    BACKEND_LIVE, CSUM_CHECKS_PER_TICK, CSUM_FULL, CSUM_MAY_BE_PARTIAL, EGRESS_PASS,
    EGRESS_PROGRAM_NAME, EGRESS_REDIRECT, FRONTEND_SLOTS, GUARD_OCTETS_SLOTS, HAIRPIN_LIVE_NS,
    HAIRPIN_NEW_BURST, HAIRPIN_NEW_PER_SEC, LEG_CACHE_SLOTS, MAX_HAIRPIN, MAX_HAIRPIN_HOSTS,
    MAX_INTERFACES, MAX_ROUTES, NEXT_HOP_SLOTS, NEXT_HOP_USES, PROGRAM_NAME, PROTO_TCP, PROTO_UDP,
    ROLE_PRIVATE, ROLE_PUBLIC, SOURCE_GUARD_ENTRIES, TX_ANSWERS_PER_TICK,
};

use lb_ebpf::testsupport::{checksum, l4_checksum, partial_checksum, sum};

use super::{guard, guard_entries, guard_octets, maps::Plain, pins::object_maps, PROGRAM};

mod bench;
mod budgets;
mod checksums;
mod forwarding;
mod guards;
mod hairpin;
mod icmp;
mod legs;
mod maps;
mod mss;
mod mtu;
mod pools;
mod reverse;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The private leg's own address, and the backend behind it (a permanent neighbour).
const LEG: Ipv4Addr = Ipv4Addr::new(10, 210, 250, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 210, 250, 2);
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// A private host on the backend's leg (a permanent neighbour too), and one more.
const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 210, 250, 3);
const INSIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const INSIDE_2: Ipv4Addr = Ipv4Addr::new(10, 210, 250, 4);
/// Another route's backend on the private leg (a UDP echo service), when a test adds it.
const BACKEND_2: Ipv4Addr = Ipv4Addr::new(10, 210, 250, 5);
const BACKEND_2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const ECHO_PORT: u16 = 7007;
const ECHO_ID: u32 = 8;
const SECOND: u64 = 1_000_000_000;
/// A backend no route leads to.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(10, 210, 252, 7);
const LEG_MTU: u16 = 1400;
/// What the daemon would clamp to with [`LEG_MTU`] the smallest leg.
const MSS: u16 = LEG_MTU - 40;
const NOW_NS: u64 = 123_456_789;
/// The MAC both legs have in `INTERFACES`: where every crafted frame is sent.
const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

const SSH_PORT: u16 = 2222;
const DNS_PORT: u16 = 5353;
const LOST_PORT: u16 = 2223;
const SSH_ID: u32 = 5;
const DNS_ID: u32 = 6;

/// One-complement sum of `data` as big-endian words, from scratch.
/// A crafted Ethernet + IPv4 + TCP/UDP frame, checksums computed from scratch.
#[derive(Clone)]
struct Frame {
    protocol: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    payload: usize,
    /// UDP only: send a zero checksum ("none"), which must stay zero.
    udp_no_checksum: bool,
    /// TCP only: a SYN (with `ack`, a SYN-ACK) whose options are this many NOPs and then
    /// an MSS option with this value.
    syn: Option<(usize, u16, bool)>,
    /// Leave the L4 checksum partial, as a sender with checksum offload does: only the
    /// pseudo-header's sum, not complemented (CHECKSUM_PARTIAL).
    partial: bool,
}

impl Frame {
    fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Frame {
        Frame {
            protocol: PROTO_TCP,
            src,
            dst,
            ttl: 64,
            payload: 32,
            udp_no_checksum: false,
            syn: None,
            partial: false,
        }
    }

    fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Frame {
        Frame {
            protocol: PROTO_UDP,
            ..Frame::tcp(src, dst)
        }
    }

    fn l4_len(&self) -> usize {
        match (self.protocol, self.syn) {
            (PROTO_TCP, Some((nops, _, _))) => 20 + (nops + 4).div_ceil(4) * 4,
            (PROTO_TCP, None) => 20,
            _ => 8,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let l4 = self.l4_len() + self.payload;
        let tot = 20 + l4;
        let mut f = Vec::with_capacity(14 + tot);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xaa]); // dst MAC
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xbb]); // src MAC
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(tot as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, DF
        ip.extend_from_slice(&[self.ttl, self.protocol, 0, 0]);
        ip.extend_from_slice(&self.src.0.octets());
        ip.extend_from_slice(&self.dst.0.octets());
        let c = checksum(sum(&ip, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut seg = Vec::with_capacity(l4);
        seg.extend_from_slice(&self.src.1.to_be_bytes());
        seg.extend_from_slice(&self.dst.1.to_be_bytes());
        if let (PROTO_TCP, Some((nops, mss, ack))) = (self.protocol, self.syn) {
            let mut opts = vec![1u8; nops];
            opts.extend_from_slice(&[2, 4]);
            opts.extend_from_slice(&mss.to_be_bytes());
            while !opts.len().is_multiple_of(4) {
                opts.push(0);
            }
            let doff = ((20 + opts.len()) / 4) as u8;
            let flags = if ack { 0x12 } else { 0x02 };
            seg.extend_from_slice(&[
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                doff << 4,
                flags,
                0xff,
                0xff,
                0,
                0,
                0,
                0,
            ]);
            seg.extend_from_slice(&opts);
        } else if self.protocol == PROTO_TCP {
            seg.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            seg.extend_from_slice(&(l4 as u16).to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
        }
        seg.extend((0..self.payload).map(|i| i as u8));
        if !(self.protocol == PROTO_UDP && self.udp_no_checksum) {
            let at = if self.protocol == PROTO_TCP { 16 } else { 6 };
            let c = if self.partial {
                partial_checksum(
                    self.src.0.octets(),
                    self.dst.0.octets(),
                    self.protocol,
                    seg.len(),
                )
            } else {
                l4_checksum(
                    self.src.0.octets(),
                    self.dst.0.octets(),
                    self.protocol,
                    &seg,
                )
            };
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        f.extend_from_slice(&seg);
        f
    }
}

/// An output frame whose L4 checksum must still be partial, for its new addresses: checked,
/// then completed as offload would (the segment's sum, complemented) and parsed, which
/// verifies the completed checksum from scratch.
fn parse_partial(f: &[u8]) -> Seen {
    let ip = &f[14..34];
    let protocol = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let at = 34 + if protocol == PROTO_TCP { 16 } else { 6 };
    let stored = u16::from_be_bytes([f[at], f[at + 1]]);
    let want = partial_checksum(src.octets(), dst.octets(), protocol, f.len() - 34);
    assert!(
        stored == want || (stored ^ want == 0xffff && (stored == 0 || want == 0)),
        "partial checksum {stored:#06x}, want {want:#06x} for {src} -> {dst}"
    );
    let mut done = f.to_vec();
    let c = checksum(sum(&f[34..], 0));
    done[at..at + 2].copy_from_slice(&c.to_be_bytes());
    parse(&done)
}

/// What an output frame says, with its checksums verified from scratch.
#[derive(Debug, PartialEq)]
struct Seen {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    udp_checksum_zero: bool,
}

fn parse(f: &[u8]) -> Seen {
    let ip = &f[14..34];
    assert_eq!(
        checksum(sum(ip, 0)),
        0,
        "IPv4 header checksum wrong: {ip:02x?}"
    );
    let protocol = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let seg = &f[34..];
    let port = |i: usize| u16::from_be_bytes([seg[i], seg[i + 1]]);
    let at = if protocol == PROTO_TCP { 16 } else { 6 };
    let stored = port(at);
    let udp_checksum_zero = protocol == PROTO_UDP && stored == 0;
    if !udp_checksum_zero {
        let mut zeroed = seg.to_vec();
        zeroed[at..at + 2].copy_from_slice(&[0, 0]);
        assert_eq!(
            stored,
            l4_checksum(src.octets(), dst.octets(), protocol, &zeroed),
            "L4 checksum wrong"
        );
    }
    let mac = |i: usize| -> [u8; 6] { f[i..i + 6].try_into().unwrap() };
    Seen {
        src: (src, port(0)),
        dst: (dst, port(2)),
        ttl: ip[8],
        dst_mac: mac(0),
        src_mac: mac(6),
        udp_checksum_zero,
    }
}

fn run(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asked of this thread's namespace (sysfs would show the namespace it was mounted in).
fn ifindex(name: &str) -> u32 {
    crate::kernel::sys::ifindex(name).unwrap_or_else(|| panic!("no interface {name}"))
}

/// `ip -o link show NAME`'s `link/ether` address.
fn mac(name: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-o", "link", "show", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC address for {name} in {text:?}"));
    let bytes: Vec<u8> = hex
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// A permanent neighbour on the private leg: `addr` is at `mac` from now on.
fn set_neighbour(addr: Ipv4Addr, mac: [u8; 6]) {
    let addr = addr.to_string();
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    run(&[
        "ip",
        "neigh",
        "replace",
        &addr,
        "lladdr",
        &mac,
        "dev",
        "sg-pt0",
        "nud",
        "permanent",
    ]);
}

fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// The program loaded in a namespace of this thread's own: `lo` is the public leg, the
/// veth `sg-pt0` the private one (10.210.250.1/24, the backend a permanent neighbour,
/// MTU [`LEG_MTU`]), the client reachable through the backend's address.
struct Harness {
    ebpf: Ebpf,
    leg: u32,
    leg_mac: [u8; 6],
}

impl Harness {
    fn new(test: &str) -> Option<Harness> {
        if !srvgate_tests::is_root() {
            srvgate_tests::skip(test, "loading BPF programs needs root");
            return None;
        }
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread (the
        // test's own) into a new network namespace, which goes when the thread ends.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        for argv in [
            &["ip", "link", "set", "lo", "up"][..],
            &[
                "ip", "link", "add", "sg-pt0", "type", "veth", "peer", "name", "sg-pt1",
            ],
            &[
                "ip",
                "link",
                "set",
                "sg-pt0",
                "mtu",
                &LEG_MTU.to_string(),
                "up",
            ],
            &["ip", "link", "set", "sg-pt1", "up"],
            &["ip", "addr", "add", "10.210.250.1/24", "dev", "sg-pt0"],
            &[
                "ip",
                "route",
                "add",
                "198.51.100.0/24",
                "via",
                "10.210.250.2",
            ],
        ] {
            run(argv);
        }
        set_neighbour(BACKEND, BACKEND_MAC);
        set_neighbour(INSIDE, INSIDE_MAC);
        // The FIB lookup forwards only from legs that forward.
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").unwrap();
        let leg = ifindex("sg-pt0");
        let leg_mac = mac("sg-pt0");

        let mut ebpf = EbpfLoader::new().load(PROGRAM).expect("loading the object");
        let prog: &mut Xdp = ebpf.program_mut(PROGRAM_NAME).unwrap().try_into().unwrap();
        prog.load().expect("the verifier accepts the program");
        let mut h = Harness { ebpf, leg, leg_mac };
        h.fill();
        h.fill_guard(ROLE_PRIVATE);
        Some(h)
    }

    fn fill(&mut self) {
        self.set_clock(NOW_NS);
        let mut ifaces: HashMap<_, u32, Plain<Interface>> =
            HashMap::try_from(self.ebpf.map_mut(map_names::INTERFACES).unwrap()).unwrap();
        ifaces
            .insert(1, Plain(leg_entry(ROLE_PUBLIC, CSUM_FULL)), 0)
            .unwrap();
        ifaces
            .insert(self.leg, Plain(leg_entry(ROLE_PRIVATE, CSUM_FULL)), 0)
            .unwrap();
        for (public, protocol, backend, id) in [
            (SSH_PORT, PROTO_TCP, (BACKEND, 22u16), SSH_ID),
            (DNS_PORT, PROTO_UDP, (BACKEND, 53), DNS_ID),
            (LOST_PORT, PROTO_TCP, (NOWHERE, 22), 7),
        ] {
            self.add_route(public, protocol, backend, id);
        }
    }

    /// Route `id`: `public:public_port` (for `protocol`) to `backend`, both maps, as the
    /// daemon writes it.
    fn add_route(&mut self, public: u16, protocol: u8, backend: (Ipv4Addr, u16), id: u32) {
        let mut fronts: Array<_, Plain<Backend>> =
            Array::try_from(self.ebpf.map_mut(map_names::FRONTENDS).unwrap()).unwrap();
        let value = Backend {
            addr: be(backend.0),
            port: backend.1.to_be(),
            live: BACKEND_LIVE,
            pool: 0,
            route_id: id,
        };
        let slot = frontend_slot(public, protocol).unwrap();
        fronts.set(slot, Plain(value), 0).unwrap();
        let mut reverse: HashMap<_, Plain<ReverseKey>, Plain<ReverseValue>> =
            HashMap::try_from(self.ebpf.map_mut(map_names::REVERSE).unwrap()).unwrap();
        let key = ReverseKey::new(be(backend.0), backend.1.to_be(), protocol);
        let value = ReverseValue {
            public_port: public.to_be(),
            _pad: 0,
            route_id: id,
        };
        reverse.insert(Plain(key), Plain(value), 0).unwrap();
    }

    /// What the daemon's clock tick writes: the settings with `now_ns`.
    fn set_clock(&mut self, now_ns: u64) {
        let mut settings: Array<_, Plain<Settings>> =
            Array::try_from(self.ebpf.map_mut(map_names::SETTINGS).unwrap()).unwrap();
        let s = Settings {
            public_addr: be(PUBLIC),
            mss: MSS,
            _pad: 0,
            now_ns,
        };
        settings.set(0, Plain(s), 0).unwrap();
    }

    /// What the daemon writes into `SOURCE_GUARD` for this namespace's addresses, with
    /// `lo` the public leg and the veth a leg of `veth_role`; whatever it held goes.
    fn fill_guard(&mut self, veth_role: u8) {
        let legs = [
            ("lo".to_string(), ROLE_PUBLIC),
            ("sg-pt0".to_string(), veth_role),
        ];
        let want = guard_entries(&legs, &crate::machine::interfaces().unwrap(), PUBLIC);
        let mut m: LpmTrie<_, u32, u32> =
            LpmTrie::try_from(self.ebpf.map_mut(map_names::SOURCE_GUARD).unwrap()).unwrap();
        let old: Vec<_> = m.keys().filter_map(Result::ok).collect();
        for k in old {
            m.remove(&k).unwrap();
        }
        for (&p, &bits) in &want {
            m.insert(&guard::key(p), bits, 0).unwrap();
        }
        let mut octets: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(map_names::GUARD_OCTETS).unwrap()).unwrap();
        for (slot, v) in (0u32..).zip(guard_octets(&want)) {
            octets.set(slot, v, 0).unwrap();
        }
    }

    /// The `HAIRPIN` entry of a flow to `backend` from a private client's `port`.
    fn hairpin(&self, backend: (Ipv4Addr, u16), port: u16, protocol: u8) -> Option<HairpinValue> {
        let m: HashMap<_, Plain<HairpinKey>, Plain<HairpinValue>> =
            HashMap::try_from(self.ebpf.map(map_names::HAIRPIN).unwrap()).unwrap();
        let key = HairpinKey::new(be(backend.0), backend.1.to_be(), port.to_be(), protocol);
        m.get(&Plain(key), 0).ok().map(|Plain(v)| v)
    }

    /// Marks both legs as ones whose frames may carry partial checksums (veths), as the
    /// daemon does from their driver.
    fn look_for_partial_checksums(&mut self) {
        for ifindex in [1, self.leg] {
            self.edit_leg(ifindex, |leg| leg.checksum = CSUM_MAY_BE_PARTIAL);
        }
    }

    /// Lets the private leg take redirects (the program's egress check), as the daemon
    /// says of a leg whose device does.
    fn allow_redirects(&mut self) {
        self.edit_leg(self.leg, |leg| leg.egress = EGRESS_REDIRECT);
    }

    /// Changes what `INTERFACES` says of leg `ifindex`, keeping the rest.
    fn edit_leg(&mut self, ifindex: u32, edit: impl FnOnce(&mut Interface)) {
        let mut ifaces: HashMap<_, u32, Plain<Interface>> =
            HashMap::try_from(self.ebpf.map_mut(map_names::INTERFACES).unwrap()).unwrap();
        let Plain(mut iface) = ifaces.get(&ifindex, 0).unwrap();
        edit(&mut iface);
        ifaces.insert(ifindex, Plain(iface), 0).unwrap();
    }

    fn verdicts(&self) -> Vec<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map_names::GLOBAL_COUNTERS).unwrap()).unwrap();
        (0..counter::COUNT)
            .map(|i| m.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    fn route(&self, id: u32) -> RouteCounters {
        let m: PerCpuArray<_, Plain<RouteCounters>> =
            PerCpuArray::try_from(self.ebpf.map(map_names::ROUTE_COUNTERS).unwrap()).unwrap();
        let mut c = RouteCounters::default();
        for Plain(v) in m.get(&id, 0).unwrap().iter() {
            c.inbound_packets += v.inbound_packets;
            c.inbound_bytes += v.inbound_bytes;
            c.outbound_packets += v.outbound_packets;
            c.outbound_bytes += v.outbound_bytes;
            c.last_seen_ns = c.last_seen_ns.max(v.last_seen_ns);
        }
        c
    }

    /// Runs the program once on `frame` arriving on `ifindex`: (action, frame out, the one
    /// verdict counter that moved).
    fn run(&self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>, u32) {
        let before = self.verdicts();
        let (action, out) = self.run_only(frame, ifindex);
        let after = self.verdicts();
        let moved: Vec<u32> = (0..counter::COUNT)
            .filter(|&i| counter::is_verdict(i) && after[i as usize] != before[i as usize])
            .collect();
        assert_eq!(moved.len(), 1, "exactly one verdict per packet: {moved:?}");
        assert_eq!(after[moved[0] as usize], before[moved[0] as usize] + 1);
        (action, out, moved[0])
    }

    /// Runs the program once on `frame` arriving on `ifindex` and asserts its action and the
    /// one verdict counter that moved (`want`, as `run` finds it), saying `why` on failure:
    /// the frame out, for the test's own checks of it.
    fn expect(
        &self,
        frame: &[u8],
        ifindex: u32,
        (action, verdict): (u32, u32),
        why: impl std::fmt::Display,
    ) -> Vec<u8> {
        let (got, out, moved) = self.run(frame, ifindex);
        assert_eq!((got, name(moved)), (action, name(verdict)), "{why}");
        out
    }

    /// Runs the program once on `frame` arriving on `ifindex`: (action, frame out), without
    /// reading the counters (for many runs).
    fn run_only(&self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let prog: &Xdp = self.ebpf.program(PROGRAM_NAME).unwrap().try_into().unwrap();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (all u32).
        let mut ctx = Vec::with_capacity(24);
        for v in [0, frame.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Keeps this test's thread on one CPU, so that every run sees the same per-CPU state
    /// (the program's budgets are per CPU).
    fn pin_to_one_cpu(&self) {
        // SAFETY: `set` is a zeroed cpu_set_t owned here; sched_setaffinity(0, ..) applies
        // to the calling thread only and reads `size_of` bytes of it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
                0,
                "sched_setaffinity"
            );
        }
    }
}

fn name(verdict: u32) -> &'static str {
    counter::NAMES[verdict as usize]
}

type Tuple = (Ipv4Addr, u16);

/// A leg's entry as the daemon writes it for a veth that does not take redirects (until
/// [`Harness::allow_redirects`]), with the MAC the crafted frames are sent to.
fn leg_entry(role: u8, checksum: u8) -> Interface {
    Interface {
        role,
        egress: EGRESS_PASS,
        checksum,
        _pad: 0,
        mac: OWN_MAC,
        _pad2: [0; 2],
    }
}

impl Harness {
    /// Makes the private leg a one-armed gateway's one NIC: public and private at once.
    fn one_armed(&mut self) {
        self.edit_leg(self.leg, |leg| leg.role = ROLE_PUBLIC | ROLE_PRIVATE);
        self.fill_guard(ROLE_PUBLIC | ROLE_PRIVATE);
    }
}

/// `frame` with a complete checksum, its first two payload bytes chosen so that that
/// checksum is exactly the partial value for its addresses: a segment on which the
/// partial-checksum test alone is wrong, about one in 65 536 of those a sender completes.
fn colliding(frame: &Frame) -> Vec<u8> {
    let mut f = frame.bytes();
    let l4 = 34;
    let at = l4 + if frame.protocol == PROTO_TCP { 16 } else { 6 };
    let payload = l4 + frame.l4_len();
    let want = partial_checksum(
        frame.src.0.octets(),
        frame.dst.0.octets(),
        frame.protocol,
        f.len() - l4,
    );
    for x in 0..=u16::MAX {
        f[payload..payload + 2].copy_from_slice(&x.to_be_bytes());
        f[at..at + 2].copy_from_slice(&[0, 0]);
        let c = l4_checksum(
            frame.src.0.octets(),
            frame.dst.0.octets(),
            frame.protocol,
            &f[l4..],
        );
        if c == want {
            f[at..at + 2].copy_from_slice(&c.to_be_bytes());
            return f;
        }
    }
    panic!("no two payload bytes make the checksum collide");
}

const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// An ICMP error (`icmp_type`, code) from `from` to `to` about the packet `about`, which
/// it quotes as RFC 792 asks: its IPv4 header and the first 8 bytes of its L4 header.
fn icmp_error(
    icmp_type: u8,
    from: Ipv4Addr,
    to: Ipv4Addr,
    about: &Frame,
    l4_bytes: usize,
) -> Vec<u8> {
    // Host unreachable, or TTL exceeded in transit: what any router on the way may send.
    let code = if icmp_type == 3 { 1 } else { 0 };
    icmp_error_code((icmp_type, code, 0), from, to, &about.bytes(), l4_bytes)
}

/// An ICMP error (type, code, next-hop MTU) from `from` to `to` quoting the frame `quoted`:
/// its IPv4 header and `l4_bytes` of its L4 header.
fn icmp_error_code(
    (icmp_type, code, mtu): (u8, u8, u16),
    from: Ipv4Addr,
    to: Ipv4Addr,
    quoted: &[u8],
    l4_bytes: usize,
) -> Vec<u8> {
    let mut body = vec![icmp_type, code, 0, 0, 0, 0];
    body.extend_from_slice(&mtu.to_be_bytes());
    body.extend_from_slice(&quoted[14..34 + l4_bytes]);
    let c = checksum(sum(&body, 0));
    body[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = quoted[..14].to_vec();
    let tot = 20 + body.len();
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(tot as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let c = checksum(sum(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&body);
    f
}

/// The MSS option of a SYN or SYN-ACK as it leaves.
fn mss_of(f: &[u8]) -> Option<u16> {
    let tcp = &f[34..];
    let hlen = usize::from(tcp[12] >> 4) * 4;
    let mut off = 20;
    while off < hlen {
        match tcp[off] {
            0 => return None,
            1 => off += 1,
            2 => return Some(u16::from_be_bytes([tcp[off + 2], tcp[off + 3]])),
            _ => off += usize::from(tcp[off + 1]).max(2),
        }
    }
    None
}

/// Clears the DF bit of a frame made by [`Frame::bytes`], fixing the header checksum.
fn without_df(mut f: Vec<u8>) -> Vec<u8> {
    f[14 + 6] &= !0x40;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(sum(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// `xdp-ceiling`, the yardstick `cargo xtask bench` compares the program with.
static CEILING: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ceiling"));
