//! The XDP programs' own cost by `BPF_PROG_TEST_RUN`, beside the sampled `bpf_stats` of the
//! 64-byte flood: the same frame and state for both programs, no other work on the CPU, so
//! the ratio holds from run to run where the sampled one moves by several ns.
//!
//! The measuring itself is `program_cost_for_the_bench` in lb-userspace's `xdp_tests`
//! (it needs that harness: the program loaded, its maps filled as the daemon fills them,
//! a namespace with a neighbour to forward to); this runs it once a round and reads the
//! line it prints. Its figures less the kernel's own cost around a run (which it prints
//! too) are each program's time.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::{
    baseline::Baseline,
    parse,
    stats::{Metric, Results},
};
use crate::cmd;

/// The test's name, matched as a substring so that a baseline revision whose tests live in
/// another module still runs its own copy.
const TEST: &str = "program_cost_for_the_bench";

/// Rows of the pool path's cost by test run (`pool-cost-ns`), beside the modes' rows.
pub const ONE_BACKEND_ROW: &str = "test run: one-backend route";
pub const POOL_ROW: &str = "test run: 16-member pool";
pub const POOL_NEW_ROW: &str = "test run: 16-member pool, new flows";

/// The test that measures how the real bytecode spreads a pool, and prints `pool-shape`.
const SHAPE_TEST: &str = "a_pool_spreads_flows_evenly_and_a_removal_moves_few";

/// Row of the pool's shape (`Metric::PoolMaxOverMean` and its kin).
pub const SHAPE_ROW: &str = "pool shape";

fn run_test(c: &mut Command) -> Result<String> {
    c.args([
        "-p",
        "lb-userspace",
        "--lib",
        TEST,
        "--",
        "--ignored",
        "--nocapture",
    ]);
    cmd::stdout(c).context("the program-cost measurement")
}

/// Runs the measurement once and adds each program's ns to `results` (rows `srvgate` and
/// `xdp-ceiling`, for those of them in `rows`, and the pool path's rows with
/// `srvgate-pool`). `release`: by a release build of the test, as the baseline's is
/// measured (an A/B must not compare two builds of the harness: the debug build's heavier
/// work between two runs leaves the kernel's caches colder for the next, about 8 ns more
/// per run of the same program here).
pub fn measure(root: &Path, rows: &[&str], release: bool, results: &mut Results) -> Result<()> {
    let mut c = Command::new("cargo");
    c.current_dir(root).arg("test");
    if release {
        c.arg("--release");
    }
    let out = run_test(&mut c)?;
    let cost = parse::program_cost(&out)?;
    println!(
        "   test run: srvgate {:.1} ns, xdp-ceiling {:.1} ns (the kernel's own {:.1} ns taken off)",
        cost.srvgate, cost.ceiling, cost.harness
    );
    for (row, ns) in [("srvgate", cost.srvgate), ("xdp-ceiling", cost.ceiling)] {
        if rows.contains(&row) {
            results.add(row, Metric::XdpTestRunNs, ns);
        }
    }
    if rows.contains(&"srvgate-pool") {
        let pool = parse::pool_cost(&out)?;
        println!(
            "   test run, 256 flows: one-backend route {:.1} ns, 16-member pool {:.1} ns, \
             pool on new flows {:.1} ns",
            pool.one_backend, pool.pool, pool.pool_new
        );
        results.add("srvgate-pool", Metric::XdpTestRunNs, pool.pool);
        results.add(ONE_BACKEND_ROW, Metric::XdpTestRunNs, pool.one_backend);
        results.add(POOL_ROW, Metric::XdpTestRunNs, pool.pool);
        results.add(POOL_NEW_ROW, Metric::XdpTestRunNs, pool.pool_new);
    }
    Ok(())
}

/// How the real bytecode spreads a pool (balance, weights, disruption): lb-userspace's
/// pools test, run once (its flows are fixed, so its figures are too), its `pool-shape`
/// line read into row [`SHAPE_ROW`].
pub fn measure_pool_shape(root: &Path, results: &mut Results) -> Result<()> {
    let out = cmd::stdout(Command::new("cargo").current_dir(root).args([
        "test",
        "-p",
        "lb-userspace",
        "--lib",
        SHAPE_TEST,
        "--",
        "--nocapture",
    ]))
    .context("the pool-shape measurement")?;
    let shape = parse::pool_shape(&out)?;
    println!(
        "   pool shape on the bytecode: max/mean {:.3}, weights off by {:.1} % at most, \
         {:.2} % of the other members' flows moved when 1 of 16 left",
        shape.max_over_mean,
        shape.weight_error * 100.0,
        shape.others_moved * 100.0
    );
    results.add(SHAPE_ROW, Metric::PoolMaxOverMean, shape.max_over_mean);
    results.add(SHAPE_ROW, Metric::PoolWeightError, shape.weight_error);
    results.add(SHAPE_ROW, Metric::PoolOthersMoved, shape.others_moved);
    Ok(())
}

/// The same measurement of the baseline's program, by the baseline's own test (release, to
/// reuse the dependencies its srvgate build compiled): row `baseline`.
pub fn measure_baseline(b: &Baseline, results: &mut Results) -> Result<()> {
    let cost = parse::program_cost(&run_test(
        Command::new("cargo")
            .current_dir(&b.dir)
            .env("CARGO_TARGET_DIR", &b.target)
            .args(["test", "--release"]),
    )?)?;
    println!(
        "   test run: baseline {:.1} ns (the kernel's own {:.1} ns taken off)",
        cost.srvgate, cost.harness
    );
    results.add("baseline", Metric::XdpTestRunNs, cost.srvgate);
    Ok(())
}
