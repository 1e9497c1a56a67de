//! `cargo xtask`: what plain `cargo` cannot do for srvgate: install the eBPF toolchain
//! (nightly, rust-src, bpf-linker) and the test tools, then build, run and test.

mod bench;
mod cmd;
mod demo;
mod dist;
mod docs;
mod packages;
mod setup;

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test srvgate",
    long_about = "Set up, build, run and test srvgate.\n\n\
        srvgate's XDP program is built by nightly rustc with bpf-linker; every command here \
        first makes sure those (and the tools the tests drive) are installed, so the same \
        command works on a fresh Debian machine and on one that is already set up."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install whatever is missing: Debian test tools, nightly + rust-src, rustfmt + clippy,
    /// bpf-linker.
    ///
    /// Idempotent and quick when everything is present. Installing Debian packages needs
    /// root. bpf-linker is built against the nightly toolchain's own LLVM (a minute or two).
    Setup {
        /// Only report what is missing; change nothing, exit 1 if anything is missing.
        #[arg(long)]
        check: bool,
        /// Print the Debian packages setup installs, one per line, and exit.
        #[arg(long, conflicts_with = "check")]
        list_packages: bool,
    },
    /// Set up, then build the srvgate binary (release unless --debug).
    Build {
        /// Build the debug profile (target/debug/srvgate) instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build (release), then run `srvgate run ARGS...`, or the demo lab without ARGS.
    ///
    /// The srvgate process replaces this one, so Ctrl-C and signals reach it directly.
    /// Example: cargo xtask run -- --config /etc/srvgate/srvgate.toml
    Run {
        /// Arguments for `srvgate run`, after `--`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Set up, then run fmt, clippy, unit tests, the release build, the book, the package
    /// and the workspace tests (what CI runs).
    ///
    /// Stops at the first failing step. Unless --quick, also installs bpf-linker from
    /// scratch into a temporary directory and runs it, to prove that `setup` works on a
    /// fresh machine even when this one already has bpf-linker.
    Test {
        /// Skip the from-scratch bpf-linker install check (saves a minute or two).
        #[arg(long)]
        quick: bool,
    },
    /// Measure srvgate against its peers on one netns lab, in one run, and write
    /// bench/results/<date>.md with a chart.
    ///
    /// Modes, interleaved and repeated: route (kernel router, no NAT), dnat (nftables),
    /// haproxy (TCP mode), srvgate (XDP, native), xdp-ceiling (minimal XDP forwarder). Per
    /// mode: 64-byte UDP packets/s and gateway CPU per packet, iperf3 TCP 1 and 4 streams,
    /// short connections/s, TCP request/response latency. Then DNS: srvgate vs Knot DNS on a
    /// zone of 10 000 routes. Needs root; takes about 20 minutes (--quick: under 3).
    Bench {
        /// One round with short measurements (under 3 minutes); writes <date>-quick.md.
        #[arg(long, conflicts_with = "smoke")]
        quick: bool,
        /// One very short round that only checks every mode forwards traffic and every cell
        /// of the table gets a value (what `cargo xtask test` runs); results go to a temp dir.
        #[arg(long)]
        smoke: bool,
        /// Number of rounds (default: 3, or 1 with --quick/--smoke).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only these modes, comma-separated (route,dnat,haproxy,srvgate,xdp-ceiling,
        /// srvgate-pool,nftables-pool,haproxy-pool,baseline).
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// Skip the DNS comparison.
        #[arg(long)]
        no_dns: bool,
        /// Skip the route-add measurement (control socket, empty and full table).
        #[arg(long)]
        no_control: bool,
        /// Directory for the results (default: bench/results).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also measure srvgate as built from this git revision (commit, tag or branch), as
        /// mode `baseline`, in the same rounds as the working tree's build: a same-run A/B.
        /// Its sources are exported with `git archive` to target/bench-baseline/<commit> and
        /// built there (release; a few minutes the first time, reused after).
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
    },
    /// Set up, build (release), then build the Debian package target/dist/srvgate_VERSION_ARCH.deb.
    ///
    /// It holds the binary, the systemd unit, an example /etc/srvgate/srvgate.toml
    /// (a conffile), man pages and bash/zsh/fish completions generated from the CLI, the
    /// Grafana dashboard, and the students' client for Windows and static Linux (musl) with
    /// their SHA256SUMS, which the portal offers at /clients/. Install it with
    /// `apt install ./target/dist/srvgate_*.deb`.
    Dist {
        /// Directory for the package (default: target/dist).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Set up, build (release), then build the book (docs/book) into target/book with mdBook.
    ///
    /// Its command pages are generated from the CLI first (`srvgate generate-book`); any
    /// mdBook warning fails the build. Open target/book/index.html.
    Docs {
        /// Directory for the book (default: target/book).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Set up, build, then run the demo lab (what `run` does without arguments).
    Demo {
        /// Run the demo's steps once, checking each, and remove the lab (a smoke test).
        #[arg(long)]
        once: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Printed by hand rather than by returning the error from main: that would dump
            // a backtrace whenever RUST_BACKTRACE is set, burying the actionable message.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> Result<()> {
    match command {
        Cmd::Setup {
            list_packages: true,
            ..
        } => {
            for p in setup::DEBIAN_PACKAGES {
                println!("{p}");
            }
            Ok(())
        }
        Cmd::Setup { check, .. } => setup::setup(check),
        Cmd::Build { debug } => {
            setup::setup(false)?;
            let bin = build(!debug)?;
            println!("built {}", bin.display());
            Ok(())
        }
        Cmd::Run { args } => {
            setup::setup(false)?;
            let bin = build(true)?;
            if args.is_empty() {
                return demo::run(&bin, false);
            }
            let mut srvgate = Command::new(&bin);
            srvgate.arg("run").args(&args);
            // exec only returns on failure.
            let err = srvgate.exec();
            Err(anyhow!(err).context(format!("could not exec `{}`", cmd::display(&srvgate))))
        }
        Cmd::Test { quick } => test(quick),
        Cmd::Bench {
            quick,
            smoke,
            rounds,
            modes,
            no_dns,
            no_control,
            out,
            baseline,
        } => {
            setup::setup(false)?;
            let plan = if smoke {
                bench::Plan::SMOKE
            } else if quick {
                bench::Plan::QUICK
            } else {
                bench::Plan::FULL
            };
            let modes = if modes.is_empty() {
                bench::Mode::ALL.to_vec()
            } else {
                modes
                    .iter()
                    .map(|m| {
                        bench::Mode::parse(m).ok_or_else(|| {
                            anyhow!(
                                "unknown mode {m:?}: use route, dnat, haproxy, srvgate, xdp-ceiling \
                                 or baseline (with --baseline REV)"
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            bench::run(
                bench::Options {
                    plan,
                    rounds,
                    modes,
                    skip_dns: no_dns,
                    skip_control: no_control,
                    out_dir: out,
                    baseline,
                },
                &workspace_root()?,
            )
        }
        Cmd::Dist { out } => {
            setup::setup(false)?;
            let bin = build(true)?;
            let root = workspace_root()?;
            let out = out.unwrap_or_else(|| dist_dir(&root));
            fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let clients = dist::build_clients(&root, &target_dir(&root))?;
            let deb = dist::package(&root, &bin, &clients, &out)?;
            println!("built {}", deb.display());
            Ok(())
        }
        Cmd::Docs { out } => {
            setup::setup(false)?;
            let bin = build(true)?;
            let root = workspace_root()?;
            let target = target_dir(&root);
            let out = out.unwrap_or_else(|| target.join("book"));
            let index = docs::build(&root, &target, &bin, &out)?;
            println!("built {}", index.display());
            Ok(())
        }
        Cmd::Demo { once } => {
            setup::setup(false)?;
            let bin = build(true)?;
            demo::run(&bin, once)
        }
    }
}

/// A step of `xtask test` that cannot run without root: skipped with `reason`, or an error
/// when skips are failures (srvgate_tests::SKIPS_FAIL_ENV, as in CI).
fn not_root_skip(reason: &str) -> Result<()> {
    if srvgate_tests::skips_fail() {
        bail!(
            "{reason}, and {} is set: a skip is a failure",
            srvgate_tests::SKIPS_FAIL_ENV
        );
    }
    println!("skipped: {reason}");
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    // Cargo sets CARGO_MANIFEST_DIR for `cargo run` too; the compile-time value is a
    // fallback for running target/debug/xtask directly.
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask's manifest dir {} has no parent", manifest.display()))
}

fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Where `cargo xtask dist` puts the package, and where the package tests look for it.
fn dist_dir(root: &Path) -> PathBuf {
    target_dir(root).join("dist")
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root);
    c
}

fn build(release: bool) -> Result<PathBuf> {
    let root = workspace_root()?;
    let mut c = cargo(&root);
    c.args(["build", "-p", "lb-userspace"]);
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)?;
    let profile = if release { "release" } else { "debug" };
    let bin = target_dir(&root).join(profile).join("srvgate");
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

enum Action {
    Cargo(Command),
    BpfLinkerFromScratch,
    /// `cargo xtask dist` from the release binary, for the package tests to inspect.
    Package(PathBuf),
    /// The README's first command, once, checking every step it shows.
    Demo(PathBuf),
    /// `cargo xtask bench --smoke`: one short round of every mode.
    BenchSmoke,
    /// `cargo xtask docs` with the release binary: the book, warnings refused.
    Book(PathBuf),
}

struct Step {
    name: &'static str,
    action: Action,
}

fn test(quick: bool) -> Result<()> {
    let started = Instant::now();
    setup::setup(false)?;
    let root = workspace_root()?;
    let bin = target_dir(&root).join("release").join("srvgate");

    let cargo_step = |name, args: &[&str]| {
        let mut c = cargo(&root);
        c.args(args);
        Step {
            name,
            action: Action::Cargo(c),
        }
    };
    let mut steps = vec![
        cargo_step("format", &["fmt", "--all", "--", "--check"]),
        cargo_step(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        cargo_step(
            "the students' client for Windows",
            &[
                "clippy",
                "-p",
                "lb-client",
                "--target",
                setup::WINDOWS_TARGET,
                "--bins",
                "--",
                "-D",
                "warnings",
            ],
        ),
        // Linked, not only checked: the .exe the students download (MinGW's linker).
        cargo_step(
            "the students' client linked for Windows",
            &[
                "build",
                "-p",
                "lb-client",
                "--target",
                setup::WINDOWS_TARGET,
                "--bins",
            ],
        ),
        cargo_step("lb-ebpf unit tests", &["test", "-p", "lb-ebpf", "--lib"]),
        // The compile-fail examples that hold its unsafe contracts (Zeroable) in place.
        cargo_step("lb-ebpf doc tests", &["test", "-p", "lb-ebpf", "--doc"]),
        // The workspace clippy above sees the XDP programs only as host stubs; this lints
        // the real ones (SAFETY comments on every unsafe block above all).
        cargo_step(
            "clippy on the XDP programs (BPF target)",
            &[
                "+nightly",
                "clippy",
                "-p",
                "lb-ebpf",
                "--bins",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ],
        ),
        cargo_step(
            "release build",
            &["build", "--release", "-p", "lb-userspace"],
        ),
    ];
    steps.push(Step {
        name: "the book (cargo xtask docs)",
        action: Action::Book(bin.clone()),
    });
    steps.push(Step {
        name: "Debian package (cargo xtask dist)",
        action: Action::Package(bin.clone()),
    });
    // Before the workspace tests so that cargo test's summary is what ends the log.
    steps.push(Step {
        name: "demo lab (cargo xtask run), once",
        action: Action::Demo(bin.clone()),
    });
    if !quick {
        steps.push(Step {
            name: "bpf-linker install from scratch",
            action: Action::BpfLinkerFromScratch,
        });
    }
    let mut tests = cargo_step(
        "workspace tests",
        &[
            "test",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--",
            "--test-threads=1",
        ],
    );
    if let Action::Cargo(c) = &mut tests.action {
        c.env("SRVGATE_BIN", &bin);
        c.env("SRVGATE_DIST_DIR", dist_dir(&root));
        // As root, on a machine setup prepared, every test can run: one that would skip
        // fails with its reason instead of passing unseen. (CI's .ci/run sets it whoever
        // runs it; a developer's run without root keeps its skips.)
        if srvgate_tests::is_root() {
            c.env(srvgate_tests::SKIPS_FAIL_ENV, "1");
        }
    }
    steps.push(tests);
    steps.push(Step {
        name: "benchmark harness smoke run (cargo xtask bench --smoke)",
        action: Action::BenchSmoke,
    });

    let total = steps.len();
    for (i, step) in steps.into_iter().enumerate() {
        let n = i + 1;
        let what = match &step.action {
            Action::Cargo(c) => cmd::display(c),
            Action::BpfLinkerFromScratch => {
                "install bpf-linker into a temporary root and run it".to_string()
            }
            Action::Package(_) => "cargo xtask dist".to_string(),
            Action::Demo(_) => "cargo xtask demo --once".to_string(),
            Action::BenchSmoke => "cargo xtask bench --smoke".to_string(),
            Action::Book(_) => "cargo xtask docs".to_string(),
        };
        println!("\n==> [{n}/{total}] {}: {what}", step.name);
        let t = Instant::now();
        let result = match step.action {
            Action::Cargo(mut c) => cmd::run(&mut c),
            Action::BpfLinkerFromScratch => {
                setup::verify_bpf_linker_install_from_scratch().map(|_| ())
            }
            Action::Package(bin) => {
                let out = dist_dir(&root);
                fs::create_dir_all(&out)
                    .with_context(|| format!("creating {}", out.display()))
                    .and_then(|()| dist::build_clients(&root, &target_dir(&root)))
                    .and_then(|clients| dist::package(&root, &bin, &clients, &out))
                    .map(|deb| println!("built {}", deb.display()))
            }
            Action::Demo(_) if !srvgate_tests::is_root() => {
                not_root_skip("the demo lab needs root (network namespaces, XDP)")
            }
            Action::Demo(bin) => demo::run(&bin, true),
            Action::Book(bin) => {
                let target = target_dir(&root);
                docs::build(&root, &target, &bin, &target.join("book"))
                    .map(|index| println!("built {}", index.display()))
            }
            Action::BenchSmoke if !srvgate_tests::is_root() => {
                not_root_skip("the benchmark lab needs root (network namespaces, XDP)")
            }
            Action::BenchSmoke => bench::run(
                bench::Options {
                    plan: bench::Plan::SMOKE,
                    rounds: None,
                    modes: bench::Mode::ALL.to_vec(),
                    skip_dns: false,
                    skip_control: false,
                    out_dir: None,
                    baseline: None,
                },
                &root,
            ),
        };
        let secs = t.elapsed().as_secs_f64();
        result.with_context(|| {
            format!("step {n}/{total} ({}) failed after {secs:.1} s", step.name)
        })?;
        println!("<== [{n}/{total}] {}: ok ({secs:.1} s)", step.name);
    }
    println!(
        "\nxtask test: all {total} steps passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
