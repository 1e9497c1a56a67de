//! Measurements for `cargo xtask bench` (ignored as tests).

use super::*;

/// The mean duration of `calls` runs of `prog`, one run per `BPF_PROG_TEST_RUN` call (the
/// kernel does not restore the frame between repeats of one call), on `frames` in turn
/// (all of one length); each run's verdict must be `want` when given, so that the path
/// measured is the one meant.
fn mean_run_ns(prog: &Xdp, frames: &[Vec<u8>], calls: usize, want: Option<u32>) -> f64 {
    let mut ctx = Vec::with_capacity(24);
    for v in [0, frames[0].len() as u32, 0, 1, 0, 0] {
        ctx.extend_from_slice(&v.to_ne_bytes());
    }
    let mut total = 0u128;
    for frame in frames.iter().cycle().take(calls) {
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        if let Some(want) = want {
            assert_eq!(r.return_value, want, "the path measured");
        }
        total += r.duration.as_nanos();
    }
    total as f64 / calls as f64
}

/// Not a test: the measurement behind the bench's "XDP program, test run" column (`cargo
/// xtask bench` runs it and reads the line it prints; nothing here asserts a time). Each
/// program runs once per `BPF_PROG_TEST_RUN` call, [`COST_CALLS`] calls, on a 60-byte UDP
/// frame it forwards by redirect: srvgate to a route's public port, xdp-ceiling to the
/// backend's own address. One run per call because the kernel does not restore the frame
/// between repeats of one call, so `repeat` would time the already rewritten frame (which
/// srvgate passes as sent to another MAC). The kernel's own cost around a run (its timer)
/// is what xdp-ceiling takes on an ARP frame, which it passes at once; the line gives it
/// so the bench can take it off both. The legs are set as the daemon sets a veth's (frames
/// may carry partial checksums; `LEG_CACHE` filled), as in the bench's lab.
#[test]
#[ignore = "a measurement for `cargo xtask bench`, not a test"]
fn program_cost_for_the_bench() {
    const COST_CALLS: usize = 200_000;
    let Some(mut h) = Harness::new("program_cost_for_the_bench") else {
        return;
    };
    h.allow_redirects();
    h.look_for_partial_checksums();
    let legs: Vec<(u32, Interface)> = {
        let ifaces: HashMap<_, u32, Plain<Interface>> =
            HashMap::try_from(h.ebpf.map(map_names::INTERFACES).unwrap()).unwrap();
        [1, h.leg]
            .iter()
            .map(|&i| (i, ifaces.get(&i, 0).unwrap().0))
            .collect()
    };
    let mut cache: Array<_, Plain<LegSlot>> =
        Array::try_from(h.ebpf.map_mut(map_names::LEG_CACHE).unwrap()).unwrap();
    for (ifindex, iface) in legs {
        let slot = LegSlot { ifindex, iface };
        cache
            .set(ifindex % LEG_CACHE_SLOTS, Plain(slot), 0)
            .unwrap();
    }
    let mut ceiling = EbpfLoader::new()
        .load(CEILING)
        .expect("loading xdp-ceiling");
    let prog: &mut Xdp = ceiling
        .program_mut("xdp_ceiling")
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().expect("the verifier accepts xdp-ceiling");
    let srvgate: &Xdp = h.ebpf.program(PROGRAM_NAME).unwrap().try_into().unwrap();
    let ceiling: &Xdp = ceiling.program("xdp_ceiling").unwrap().try_into().unwrap();
    let to_route = Frame::udp((CLIENT, 1024), (PUBLIC, DNS_PORT)).bytes();
    let to_backend = Frame::udp((CLIENT, 1024), (BACKEND, 53)).bytes();
    let mut arp = to_backend.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let one = |f: Vec<u8>| vec![f];
    let harness = mean_run_ns(ceiling, &one(arp), COST_CALLS, Some(XDP_PASS));
    let ceiling = mean_run_ns(ceiling, &one(to_backend), COST_CALLS, Some(XDP_REDIRECT));
    let srvgate = mean_run_ns(srvgate, &one(to_route), COST_CALLS, Some(XDP_REDIRECT));
    println!("program-cost-ns harness={harness:.1} xdp-ceiling={ceiling:.1} srvgate={srvgate:.1}");
    pool_cost(&mut h, harness);
}

/// Public port of the bench's 16-member pool (UDP).
const POOL_PORT: u16 = 9009;

/// The pool path against the one-backend path, each on the bench flood's 256 flows (one
/// client, source ports 1024..1279, taken in turn, so that consecutive packets of the pool
/// go to different members): `one-backend` to the DNS route, `pool16` to a route with 16
/// members on the private leg (each a neighbour, so every packet is redirected), its flows
/// remembered in `FLOWS` after the first round; `pool16-new` on [`COST_CALLS`] distinct
/// clients, every packet a new flow (a table lookup and a `FLOWS` insert, evicting once
/// full). Less the kernel's own cost `harness`, as the line above. One line, `pool-cost-ns
/// ...`, which the bench reads.
fn pool_cost(h: &mut Harness, harness: f64) {
    const COST_CALLS: usize = 200_000;
    let mut e = pools::entry(POOL_PORT, &pools::texts(1..=16), &[]);
    e.route.protocol = lb_model::Protocol::Udp;
    for i in 1..=16 {
        set_neighbour(*pools::member(i).ip(), [0x02, 0, 0, 0, 1, i]);
    }
    h.add_pool_route(&e, 1);
    let prog: &Xdp = h.ebpf.program(PROGRAM_NAME).unwrap().try_into().unwrap();
    let flows = |port: u16| -> Vec<Vec<u8>> {
        (1024..1280)
            .map(|sport| Frame::udp((CLIENT, sport), (PUBLIC, port)).bytes())
            .collect()
    };
    let one_backend = mean_run_ns(prog, &flows(DNS_PORT), COST_CALLS, Some(XDP_REDIRECT));
    let pool = mean_run_ns(prog, &flows(POOL_PORT), COST_CALLS, Some(XDP_REDIRECT));
    let new: Vec<Vec<u8>> = (0..COST_CALLS as u32)
        .map(|i| {
            let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i / 64);
            Frame::udp((client, 1024 + (i % 64) as u16), (PUBLIC, POOL_PORT)).bytes()
        })
        .collect();
    let pool_new = mean_run_ns(prog, &new, COST_CALLS, Some(XDP_REDIRECT));
    println!(
        "pool-cost-ns harness={harness:.1} one-backend={one_backend:.1} pool16={pool:.1} \
         pool16-new={pool_new:.1}"
    );
}

/// Not a test: what a frame whose checksum field holds the partial value costs the program
/// (the book, reference/security.md, "Flows, packets the gateway makes, ICMP errors"): mean
/// ns of a run on UDP frames to a route, on a leg that may carry partial checksums, with a 1480-byte segment
/// (the longest summed) and a 40-byte one, while this CPU's budget of sums lasts and once
/// it is spent; and a complete 1400-byte frame (not summed) for comparison. Run with
/// `flock /tmp/sg-netns.lock cargo test -p lb-userspace --lib forged_checksum_cost --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn forged_checksum_cost() {
    const CALLS: usize = 20_000;
    let Some(mut h) = Harness::new("forged_checksum_cost") else {
        return;
    };
    h.pin_to_one_cpu();
    h.allow_redirects();
    h.look_for_partial_checksums();
    let mean_ns = |h: &Harness, frame: &[u8], calls: usize| -> f64 {
        let prog: &Xdp = h.ebpf.program(PROGRAM_NAME).unwrap().try_into().unwrap();
        mean_run_ns(prog, &[frame.to_vec()], calls, None)
    };
    let full = |partial: bool, payload: usize| {
        Frame {
            partial,
            payload,
            ..Frame::udp((CLIENT, 1024), (PUBLIC, DNS_PORT))
        }
        .bytes()
    };
    let forged = full(true, 1480 - 8);
    let small_forged = full(true, 32);
    let complete = full(false, usize::from(LEG_MTU) - 28);
    // The budget (if any) is spent after this many sums on this CPU in this tick.
    let budget = CSUM_CHECKS_PER_TICK as usize;
    let summed = mean_ns(&h, &forged, CALLS.min(budget / 2));
    let _ = mean_ns(&h, &forged, budget);
    let spent = mean_ns(&h, &forged, CALLS);
    let small_spent = mean_ns(&h, &small_forged, CALLS);
    h.set_clock(NOW_NS + SECOND);
    let small_summed = mean_ns(&h, &small_forged, CALLS.min(budget / 2));
    let complete = mean_ns(&h, &complete, CALLS);
    println!(
        "forged-checksum-ns summed-1480={summed:.1} unsummed-1480={spent:.1} \
         summed-40={small_summed:.1} unsummed-40={small_spent:.1} complete-1400={complete:.1}"
    );
}
