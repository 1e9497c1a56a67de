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

fn run_test(c: &mut Command) -> Result<parse::ProgramCost> {
    c.args([
        "-p",
        "lb-userspace",
        "--lib",
        TEST,
        "--",
        "--ignored",
        "--nocapture",
    ]);
    let out = cmd::stdout(c).context("the program-cost measurement")?;
    parse::program_cost(&out)
}

/// Runs the measurement once and adds each program's ns to `results` (rows `srvgate` and
/// `xdp-ceiling`, for those of them in `rows`).
pub fn measure(root: &Path, rows: &[&str], results: &mut Results) -> Result<()> {
    let cost = run_test(Command::new("cargo").current_dir(root).arg("test"))?;
    println!(
        "   test run: srvgate {:.1} ns, xdp-ceiling {:.1} ns (the kernel's own {:.1} ns taken off)",
        cost.srvgate, cost.ceiling, cost.harness
    );
    for (row, ns) in [("srvgate", cost.srvgate), ("xdp-ceiling", cost.ceiling)] {
        if rows.contains(&row) {
            results.add(row, Metric::XdpTestRunNs, ns);
        }
    }
    Ok(())
}

/// The same measurement of the baseline's program, by the baseline's own test (release, to
/// reuse the dependencies its srvgate build compiled): row `baseline`.
pub fn measure_baseline(b: &Baseline, results: &mut Results) -> Result<()> {
    let cost = run_test(
        Command::new("cargo")
            .current_dir(&b.dir)
            .env("CARGO_TARGET_DIR", &b.target)
            .args(["test", "--release"]),
    )?;
    println!(
        "   test run: baseline {:.1} ns (the kernel's own {:.1} ns taken off)",
        cost.srvgate, cost.harness
    );
    results.add("baseline", Metric::XdpTestRunNs, cost.srvgate);
    Ok(())
}
