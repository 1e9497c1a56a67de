//! bpf-linker, built against the LLVM that nightly rustc ships, and the from-scratch check
//! that replays its install into a temporary directory.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::cmd;

use super::*;

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

pub(super) fn home() -> Result<PathBuf> {
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

pub(super) fn bpf_linker(
    check_only: bool,
    have_nightly: bool,
    missing: &mut Vec<String>,
) -> Result<()> {
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
pub(super) fn prepend_to_path(dir: &Path) -> Result<()> {
    let old = env::var_os("PATH").unwrap_or_default();
    let new = env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&old)))
        .context("PATH would contain an invalid entry")?;
    env::set_var("PATH", new);
    Ok(())
}

// ---------------------------------------------------------------- from-scratch check

/// A directory removed on drop, so that an interrupted or failed check leaves no
/// 30 MB bpf-linker builds behind in /tmp.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> Result<Self> {
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
