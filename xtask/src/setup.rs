//! Installs what building and testing srvgate needs, on a Debian-based machine.
//!
//! Each requirement is checked, installed if missing, then checked again, so a run on a
//! machine that has everything costs only a few cheap probes. The bpf-linker install is
//! parameterised by install root and LLVM prefix so that `cargo xtask test` can replay it
//! into a temporary directory even on machines that already have bpf-linker.

use std::{
    collections::BTreeSet,
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{cmd, packages};

/// Tools the integration tests and the benchmark drive (namespaces and veths, sshd, traffic
/// and DNS clients, the benchmark's peers).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "openssh-server",
    "openssh-client",
    "iperf3",
    "dnsutils",
    "knot-dnsutils",
    "ethtool",
    "curl",
    "procps",
    "netcat-openbsd",
    // The HTTPS router's tests: the students' certificates, and `s_client` without SNI.
    "openssl",
    "util-linux",
    // `bpftool net/prog show`: the bench reads the attached program's run-time statistics.
    "bpftool",
    // The C compiler for Windows that ring's build script needs when `cargo xtask test`
    // checks that the students' client builds for x86_64-pc-windows-gnu.
    "gcc-mingw-w64-x86-64",
    // The console's test drives a real browser: headless Chromium through chromedriver.
    "chromium",
    "chromium-driver",
    // `cargo xtask dist` and the package's tests: dpkg-shlibdeps (dpkg-dev) computes the
    // package's Depends, strip (binutils) and gzip shrink its files, `man -l` (man-db)
    // renders the pages, `systemd-analyze verify` (systemd) checks the unit.
    "dpkg-dev",
    "binutils",
    "gzip",
    "man-db",
    "systemd",
    // `cargo xtask bench` (and its smoke run in `cargo xtask test`): the peers it measures
    // srvgate against, the traffic generators and the chart renderer. Their packaged
    // services are never started by the bench; it runs each inside its own namespaces.
    "netsniff-ng",
    "nftables",
    "haproxy",
    "nginx",
    "wrk",
    "sockperf",
    "dnsperf",
    "knot",
    "librsvg2-bin",
    "fonts-dejavu-core",
    // [cluster]: the cluster lab runs a real etcd member (etcd-server) and reads the shared
    // table with etcdctl (etcd-client); the etcd-client crate's build runs protoc.
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
];

/// aya-build runs `rustup run nightly cargo build -Z build-std=core`, so the toolchain must be
/// the channel literally named `nightly`, and it needs the standard library's source.
const NIGHTLY: &str = "nightly";

/// Entry point of `cargo xtask setup`; `check_only` reports without changing anything and
/// fails if something is missing.
pub fn setup(check_only: bool) -> Result<()> {
    let started = Instant::now();
    let mut missing = Vec::new();
    debian_packages(check_only, &mut missing)?;
    programs(check_only, &mut missing)?;
    let have_nightly = nightly_toolchain(check_only, &mut missing)?;
    rust_src(check_only, have_nightly, &mut missing)?;
    fmt_and_clippy(check_only, &mut missing)?;
    windows_target(check_only, &mut missing)?;
    bpf_linker(check_only, have_nightly, &mut missing)?;
    if !missing.is_empty() {
        let as_root = if missing.iter().any(|m| m.starts_with("Debian")) && !is_root() {
            " as root"
        } else {
            ""
        };
        bail!(
            "missing: {}. Run `cargo xtask setup`{as_root} to install them",
            missing.join(", ")
        );
    }
    println!("setup: all requirements met ({:.1} s)", secs(started));
    Ok(())
}

fn report(status: &str, what: &str) {
    println!("  {status:<10} {what}");
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- Debian packages

fn debian_packages(check_only: bool, missing_out: &mut Vec<String>) -> Result<()> {
    let missing = missing_debian_packages()?;
    if missing.is_empty() {
        report(
            "ok",
            &format!("Debian packages ({})", DEBIAN_PACKAGES.join(" ")),
        );
        return Ok(());
    }
    let list = missing.join(" ");
    if check_only {
        report("MISSING", &format!("Debian packages: {list}"));
        missing_out.push(format!("Debian packages ({list})"));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {list}. Installing them needs root: rerun `cargo xtask setup` \
             as root, or run `apt-get install -y {list}` as root first"
        );
    }
    report("installing", &format!("Debian packages: {list}"));
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = missing_debian_packages()?;
    if !still.is_empty() {
        bail!(
            "Debian packages still not installed after apt-get install: {}",
            still.join(" ")
        );
    }
    report("installed", &format!("Debian packages: {list}"));
    Ok(())
}

/// Every program in the package table must start once its package is installed: a wrong
/// mapping (the program lives in another package) shows here on a fresh machine, by name.
fn programs(check_only: bool, missing_out: &mut Vec<String>) -> Result<()> {
    let absent: Vec<String> = packages::PROGRAMS
        .iter()
        .filter(|(program, _)| !packages::on_path(program))
        .map(|(program, pkg)| format!("{program} (from {pkg})"))
        .collect();
    if absent.is_empty() {
        report(
            "ok",
            &format!("programs the tests run ({})", packages::PROGRAMS.len()),
        );
    } else if check_only || !missing_out.is_empty() {
        report("MISSING", &format!("programs: {}", absent.join(", ")));
        missing_out.push(format!("programs ({})", absent.join(", ")));
    } else {
        bail!(
            "every package is installed, yet these programs are not on PATH: {}; \
             xtask/src/packages.rs names the wrong package for them",
            absent.join(", ")
        );
    }
    Ok(())
}

fn missing_debian_packages() -> Result<Vec<&'static str>> {
    let mut query = Command::new("dpkg-query");
    query
        .args(["-W", "-f=${Package}\\t${Status}\\n"])
        .args(DEBIAN_PACKAGES);
    let out = cmd::capture(&mut query)
        .context("checking Debian packages (setup supports Debian-based systems only)")?;
    // Exit 1 only means dpkg has never heard of some of the names: that is "missing", and
    // those names are simply absent from stdout. Anything else is dpkg itself failing.
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "`{}` failed ({}): {}",
            cmd::display(&query),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed = installed_packages(&stdout);
    Ok(DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

/// Names whose `${Package}\t${Status}` line says installed. A package may appear once per
/// architecture; any installed architecture counts.
pub fn installed_packages(dpkg_output: &str) -> BTreeSet<&str> {
    dpkg_output
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| dpkg_status_is_installed(status))
        .map(|(name, _)| name.trim())
        .collect()
}

/// dpkg's status is "WANT ERROR STATE"; only the state `installed` means usable files on
/// disk (`config-files`, `half-installed`, `unpacked` ... do not), and a `hold` want or a
/// reinstreq error flag does not change that.
pub fn dpkg_status_is_installed(status: &str) -> bool {
    status.split_whitespace().nth(2) == Some("installed")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------- Rust toolchains

fn nightly_toolchain(check_only: bool, missing: &mut Vec<String>) -> Result<bool> {
    let what = "nightly toolchain (builds the XDP program)";
    if nightly_installed()? {
        report("ok", what);
        return Ok(true);
    }
    if check_only {
        report("MISSING", what);
        missing.push("the nightly toolchain".into());
        return Ok(false);
    }
    report("installing", what);
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
    ]))?;
    if !nightly_installed()? {
        bail!("`rustup toolchain install nightly` succeeded but `rustup toolchain list` does not list nightly");
    }
    report("installed", what);
    Ok(true)
}

fn nightly_installed() -> Result<bool> {
    let list = cmd::stdout(Command::new("rustup").args(["toolchain", "list"]))
        .context("listing rustup toolchains (srvgate's build needs rustup)")?;
    Ok(has_nightly(&list))
}

/// Whether `rustup toolchain list` shows the plain `nightly` channel. Dated nightlies
/// (`nightly-2025-01-01-...`) do not count: `rustup run nightly` would not pick them.
pub fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| match name.strip_prefix(NIGHTLY) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('-')
                .and_then(|r| r.chars().next())
                .is_some_and(|c| !c.is_ascii_digit()),
            None => false,
        })
}

fn rust_src(check_only: bool, have_nightly: bool, missing: &mut Vec<String>) -> Result<()> {
    let what = "rust-src for nightly (for -Z build-std=core)";
    if have_nightly && nightly_component_installed("rust-src")? {
        report("ok", what);
        return Ok(());
    }
    if check_only {
        report("MISSING", what);
        missing.push("rust-src for nightly".into());
        return Ok(());
    }
    report("installing", what);
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !nightly_component_installed("rust-src")? {
        bail!("`rustup component add rust-src --toolchain nightly` succeeded but rustup does not list rust-src as installed");
    }
    report("installed", what);
    Ok(())
}

fn nightly_component_installed(component: &str) -> Result<bool> {
    let list = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    Ok(component_installed(&list, component))
}

/// Parses `rustup component list --installed`, whose lines are component names, some with
/// the host triple appended (`clippy-x86_64-unknown-linux-gnu`) and some not (`rust-src`).
/// Lines carrying an annotation must say `(installed)`/`(default)`, so that the output
/// of a plain `rustup component list` is not misread as "everything is installed".
pub fn component_installed(listing: &str, component: &str) -> bool {
    listing.lines().any(|line| {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else {
            return false;
        };
        let rest: Vec<&str> = words.collect();
        let name_matches = match name.strip_prefix(component) {
            Some("") => true,
            // A target triple has at least two dashes; this keeps `rust` from matching
            // `rust-src` while accepting `rustfmt-x86_64-unknown-linux-gnu` for `rustfmt`.
            Some(rest) => rest
                .strip_prefix('-')
                .is_some_and(|triple| triple.matches('-').count() >= 2),
            None => false,
        };
        name_matches
            && (rest.is_empty()
                || rest
                    .iter()
                    .any(|w| *w == "(installed)" || *w == "(default)"))
    })
}

/// `cargo xtask test` runs `cargo fmt` and `cargo clippy` with the workspace's own
/// toolchain; probing the subcommands works however that toolchain was installed.
fn fmt_and_clippy(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let what = "rustfmt and clippy (active toolchain)";
    let probe = || {
        ["fmt", "clippy"]
            .into_iter()
            .filter(|sub| !cmd::succeeds(Command::new("cargo").args([sub, "--version"])))
            .map(|sub| if sub == "fmt" { "rustfmt" } else { "clippy" })
            .collect::<Vec<_>>()
    };
    let absent = probe();
    if absent.is_empty() {
        report("ok", what);
        return Ok(());
    }
    if check_only {
        report("MISSING", &format!("{what}: {}", absent.join(" ")));
        missing.extend(absent.iter().map(|c| c.to_string()));
        return Ok(());
    }
    report("installing", &format!("{what}: {}", absent.join(" ")));
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&absent),
    )?;
    let still = probe();
    if !still.is_empty() {
        bail!(
            "`cargo fmt/clippy --version` still fail after `rustup component add`: {}",
            still.join(" ")
        );
    }
    report("installed", what);
    Ok(())
}

/// The students' client is checked for Windows; rustup adds the target's standard library.
pub const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

fn windows_target(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let what = "Rust target x86_64-pc-windows-gnu (the students' client on Windows)";
    let installed = || -> Result<bool> {
        let list = cmd::stdout(Command::new("rustup").args(["target", "list", "--installed"]))?;
        Ok(list.lines().any(|l| l.trim() == WINDOWS_TARGET))
    };
    if installed()? {
        report("ok", what);
        return Ok(());
    }
    if check_only {
        report("MISSING", what);
        missing.push(WINDOWS_TARGET.into());
        return Ok(());
    }
    report("installing", what);
    cmd::run(Command::new("rustup").args(["target", "add", WINDOWS_TARGET]))?;
    if !installed()? {
        bail!("`rustup target add {WINDOWS_TARGET}` succeeded but rustup does not list it");
    }
    report("installed", what);
    Ok(())
}

// ---------------------------------------------------------------- bpf-linker

/// The nightly toolchain's shared LLVM, which bpf-linker must link against so that it reads
/// the bitcode that nightly rustc emits.
#[derive(Debug, Clone)]
pub struct NightlyLlvm {
    /// Full path of the real shared object, e.g. `<sysroot>/lib/libLLVM.so.22.1-rust-1.97.0-nightly`.
    pub lib: PathBuf,
    pub file_name: String,
    /// What follows `libLLVM.so.`, e.g. `22.1-rust-1.97.0-nightly`.
    pub version: String,
    pub major: u32,
}

impl NightlyLlvm {
    pub fn detect() -> Result<Self> {
        let sysroot = cmd::stdout(
            Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
        )
        .context("finding the nightly sysroot")?;
        let lib_dir = Path::new(sysroot.trim()).join("lib");
        let names: Vec<String> = fs::read_dir(&lib_dir)
            .with_context(|| format!("listing {}", lib_dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        let (file_name, version, major) = find_libllvm(names.iter().map(String::as_str))
            .with_context(|| format!("looking for the nightly libLLVM in {}", lib_dir.display()))?;
        Ok(Self {
            lib: lib_dir.join(&file_name),
            file_name,
            version,
            major,
        })
    }
}

/// Parses `libLLVM.so.22.1-rust-1.97.0-nightly` into (`22.1-rust-1.97.0-nightly`, 22).
/// The sibling `libLLVM-22-rust-*.so` is a linker script, not a library, so it is rejected.
pub fn parse_libllvm_name(name: &str) -> Option<(String, u32)> {
    let version = name.strip_prefix("libLLVM.so.")?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().ok()?;
    Some((version.to_string(), major))
}

/// Picks the one real libLLVM among a directory's file names: (file name, version, major).
pub fn find_libllvm<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(String, String, u32)> {
    let mut found: Vec<(String, String, u32)> = names
        .into_iter()
        .filter_map(|n| parse_libllvm_name(n).map(|(v, m)| (n.to_string(), v, m)))
        .collect();
    match found.len() {
        0 => bail!("no libLLVM.so.<version> file; is the nightly toolchain complete? (try `rustup toolchain install nightly --force`)"),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "several libLLVM files, cannot tell which one rustc uses: {}",
            found.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Where the LLVM prefix lives between runs: it must outlive the install, because
/// bpf-linker's RUNPATH points into it.
pub fn default_llvm_prefix(llvm: &NightlyLlvm) -> Result<PathBuf> {
    let data_home = match env::var_os("XDG_DATA_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => home()?.join(".local/share"),
    };
    Ok(data_home
        .join("srvgate")
        .join(format!("llvm-{}", llvm.version)))
}

/// Where `cargo install` puts binaries by default (without config-file overrides).
pub fn default_install_root() -> Result<PathBuf> {
    if let Some(root) = env::var_os("CARGO_INSTALL_ROOT").filter(|r| !r.is_empty()) {
        return Ok(PathBuf::from(root));
    }
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    Ok(home()?.join(".cargo"))
}

fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("HOME is not set"))
}

/// Makes `<prefix>/lib64` look like an LLVM install to bpf-linker's build script: the two
/// names it links and loads, both pointing at nightly's libLLVM. Idempotent; stale links
/// (left by an older nightly) are replaced.
pub fn prepare_llvm_prefix(prefix: &Path, llvm: &NightlyLlvm) -> Result<()> {
    let lib64 = prefix.join("lib64");
    fs::create_dir_all(&lib64).with_context(|| format!("creating {}", lib64.display()))?;
    for name in ["libLLVM.so", llvm.file_name.as_str()] {
        let link = lib64.join(name);
        if fs::read_link(&link).is_ok_and(|t| t == llvm.lib) {
            continue;
        }
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
        }
        std::os::unix::fs::symlink(&llvm.lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.lib.display()))?;
    }
    Ok(())
}

/// Builds bpf-linker against nightly's LLVM into `<install_root>/bin` and returns the path
/// of the binary. `--force` because the usual reason to get here is an existing bpf-linker
/// that no longer starts (its libLLVM went away with a nightly update), which plain
/// `cargo install` would consider up to date.
pub fn install_bpf_linker(
    install_root: &Path,
    llvm_prefix: &Path,
    llvm: &NightlyLlvm,
) -> Result<PathBuf> {
    prepare_llvm_prefix(llvm_prefix, llvm)?;
    let mut install = Command::new("cargo");
    install
        .env("LLVM_PREFIX", llvm_prefix)
        .env("CARGO_INSTALL_ROOT", install_root)
        // Outside the workspace so that its .cargo/config.toml cannot change the build.
        .current_dir(env::temp_dir())
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{}", llvm.major));
    cmd::run(&mut install).with_context(|| {
        format!(
            "building bpf-linker against nightly's LLVM {} (needs a C toolchain; \
             bpf-linker must offer the llvm-{} feature)",
            llvm.version, llvm.major
        )
    })?;
    Ok(install_root.join("bin").join("bpf-linker"))
}

/// Runs `<bin> --version`; the error carries bpf-linker's stderr (typically the dynamic
/// loader naming the libLLVM it could not find).
pub fn bpf_linker_version(bin: &Path) -> Result<String> {
    let out = cmd::stdout(Command::new(bin).arg("--version"))?;
    Ok(out.trim().to_string())
}

fn bpf_linker(check_only: bool, have_nightly: bool, missing: &mut Vec<String>) -> Result<()> {
    let what = "bpf-linker (links the XDP program)";
    let root = default_install_root()?;
    let root_bin = root.join("bin");
    if let Ok(v) = bpf_linker_version(Path::new("bpf-linker")) {
        report("ok", &format!("{what}: {v}"));
        return Ok(());
    }
    if let Ok(v) = bpf_linker_version(&root_bin.join("bpf-linker")) {
        prepend_to_path(&root_bin)?;
        report(
            "ok",
            &format!(
                "{what}: {v} (in {}, which is not on PATH: added for this run)",
                root_bin.display()
            ),
        );
        return Ok(());
    }
    if check_only {
        report("MISSING", what);
        missing.push("bpf-linker".into());
        return Ok(());
    }
    if !have_nightly {
        bail!("bpf-linker needs the nightly toolchain's LLVM, but nightly is not installed");
    }
    let llvm = NightlyLlvm::detect()?;
    let prefix = default_llvm_prefix(&llvm)?;
    report(
        "installing",
        &format!(
            "{what} against LLVM {} (takes a minute or two)",
            llvm.version
        ),
    );
    let started = Instant::now();
    let bin = install_bpf_linker(&root, &prefix, &llvm)?;
    let v = bpf_linker_version(&bin).with_context(|| {
        format!(
            "bpf-linker was installed to {} but does not run",
            bin.display()
        )
    })?;
    if bpf_linker_version(Path::new("bpf-linker")).is_err() {
        prepend_to_path(&root_bin)?;
        println!(
            "  note: {} is not on PATH; add it there so plain `cargo build` finds bpf-linker",
            root_bin.display()
        );
    }
    report(
        "installed",
        &format!("{what}: {v} ({:.0} s)", secs(started)),
    );
    Ok(())
}

/// rustc finds bpf-linker through PATH, and the build runs in our child processes, so
/// extending our own PATH is enough for this run. xtask is single-threaded, so mutating
/// the environment is sound.
fn prepend_to_path(dir: &Path) -> Result<()> {
    let old = env::var_os("PATH").unwrap_or_default();
    let new = env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&old)))
        .context("PATH would contain an invalid entry")?;
    env::set_var("PATH", new);
    Ok(())
}

// ---------------------------------------------------------------- from-scratch check

/// A directory removed on drop, so that an interrupted or failed check leaves no
/// 30 MB bpf-linker builds behind in /tmp.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = env::temp_dir().join(format!("srvgate-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Replays the bpf-linker install into a fresh temporary root and LLVM prefix and runs the
/// result, proving the install path works even where bpf-linker is already installed.
/// Returns the new binary's `--version` line.
pub fn verify_bpf_linker_install_from_scratch() -> Result<String> {
    let llvm = NightlyLlvm::detect()?;
    let tmp = TempDir::new("bpf-linker-install")?;
    let root = tmp.0.join("root");
    let prefix = tmp.0.join(format!("llvm-{}", llvm.version));
    println!(
        "installing bpf-linker (llvm-{}) into {} with LLVM prefix {}",
        llvm.major,
        root.display(),
        prefix.display()
    );
    let bin = install_bpf_linker(&root, &prefix, &llvm)?;
    let version = bpf_linker_version(&bin)
        .with_context(|| format!("the freshly installed {} does not run", bin.display()))?;
    println!("{}: {version}", bin.display());
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_states() {
        assert!(dpkg_status_is_installed("install ok installed"));
        assert!(dpkg_status_is_installed("hold ok installed"));
        assert!(!dpkg_status_is_installed("deinstall ok config-files"));
        assert!(!dpkg_status_is_installed(
            "install reinstreq half-installed"
        ));
        assert!(!dpkg_status_is_installed("unknown ok not-installed"));
        assert!(!dpkg_status_is_installed(""));
        assert!(!dpkg_status_is_installed("garbage"));
    }

    #[test]
    fn dpkg_output_with_multiarch_and_removed_packages() {
        let out = "curl\tinstall ok installed\n\
                   libfoo\tdeinstall ok config-files\n\
                   libbar\tdeinstall ok config-files\n\
                   libbar\tinstall ok installed\n\
                   malformed line\n";
        let got = installed_packages(out);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["curl", "libbar"]);
        assert!(installed_packages("").is_empty());
    }

    #[test]
    fn nightly_detection() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(has_nightly("nightly\n"));
        assert!(!has_nightly(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        assert!(!has_nightly("no installed toolchains\n"));
        assert!(!has_nightly("nightlyish\n"));
        assert!(!has_nightly(""));
    }

    #[test]
    fn component_listing() {
        let installed = "cargo-x86_64-unknown-linux-gnu\n\
                         clippy-x86_64-unknown-linux-gnu\n\
                         rust-src\n\
                         rustfmt-x86_64-unknown-linux-gnu\n";
        assert!(component_installed(installed, "rust-src"));
        assert!(component_installed(installed, "clippy"));
        assert!(component_installed(installed, "rustfmt"));
        assert!(!component_installed(installed, "rust"));
        assert!(!component_installed(installed, "llvm-tools"));
        assert!(!component_installed("", "rust-src"));

        let full = "rust-src\n\
                    rust-std-x86_64-unknown-linux-gnu (installed)\n\
                    rust-docs-x86_64-unknown-linux-gnu (default)\n\
                    miri-x86_64-unknown-linux-gnu (available)\n";
        assert!(component_installed(full, "rust-std"));
        assert!(component_installed(full, "rust-docs"));
        assert!(!component_installed(full, "miri"));
    }

    #[test]
    fn libllvm_names() {
        assert_eq!(
            parse_libllvm_name("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(("22.1-rust-1.97.0-nightly".to_string(), 22))
        );
        assert_eq!(
            parse_libllvm_name("libLLVM-22-rust-1.97.0-nightly.so"),
            None
        );
        assert_eq!(parse_libllvm_name("libLLVM.so."), None);
        assert_eq!(parse_libllvm_name("libLLVM.so.x"), None);
        assert_eq!(parse_libllvm_name("librustc_driver-b5a9.so"), None);

        let dir = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
            "rustlib",
        ];
        let (file, version, major) = find_libllvm(dir).unwrap();
        assert_eq!(file, "libLLVM.so.22.1-rust-1.97.0-nightly");
        assert_eq!(version, "22.1-rust-1.97.0-nightly");
        assert_eq!(major, 22);

        assert!(find_libllvm(["rustlib"]).is_err());
        assert!(find_libllvm(["libLLVM.so.21.1-a", "libLLVM.so.22.1-b"]).is_err());
    }

    /// The same check as `cargo xtask test`'s from-scratch step, for running it alone:
    /// `cargo test -p xtask -- --ignored --nocapture bpf_linker_installs_from_scratch`.
    #[test]
    #[ignore = "builds bpf-linker: a minute or two, needs the nightly toolchain"]
    fn bpf_linker_installs_from_scratch() {
        let version = verify_bpf_linker_install_from_scratch().unwrap();
        assert!(version.starts_with("bpf-linker "), "{version}");
    }

    #[test]
    fn llvm_prefix_links_are_idempotent_and_replace_stale_ones() {
        let tmp = TempDir::new("xtask-unit").unwrap();
        let lib = tmp.0.join("libLLVM.so.22.1-test");
        fs::write(&lib, b"").unwrap();
        let llvm = NightlyLlvm {
            lib: lib.clone(),
            file_name: "libLLVM.so.22.1-test".into(),
            version: "22.1-test".into(),
            major: 22,
        };
        let prefix = tmp.0.join("prefix");
        fs::create_dir_all(prefix.join("lib64")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", prefix.join("lib64/libLLVM.so")).unwrap();
        prepare_llvm_prefix(&prefix, &llvm).unwrap();
        prepare_llvm_prefix(&prefix, &llvm).unwrap();
        for name in ["libLLVM.so", "libLLVM.so.22.1-test"] {
            assert_eq!(fs::read_link(prefix.join("lib64").join(name)).unwrap(), lib);
        }
    }
}
