//! `cargo xtask dist`: the Debian package, built with `dpkg-deb --build` from a staged tree.
//!
//! Staging by hand rather than with cargo-deb: dpkg-deb, dpkg-shlibdeps, gzip and strip are
//! on every Debian machine that can build srvgate at all, while cargo-deb would be one more
//! tool to compile and keep installed. The man pages and completions come from the built
//! binary's own clap definitions (`srvgate generate-man`, `srvgate completions`), which
//! xtask cannot link against (it depends on no project crate but the lab library). The
//! students' client is built for Windows and as a static Linux binary (musl) and shipped
//! in `/usr/share/srvgate/clients` with its `SHA256SUMS`, which the portal offers for
//! download.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::cmd;

/// What the package holds besides the binary and the man pages, relative to the
/// workspace's `dist/`, and where each file goes.
const FILES: &[(&str, &str, u32)] = &[
    (
        "srvgate.service",
        "lib/systemd/system/srvgate.service",
        0o644,
    ),
    ("srvgate.toml", "etc/srvgate/srvgate.toml", 0o644),
    (
        "grafana/srvgate.json",
        "usr/share/srvgate/grafana/srvgate.json",
        0o644,
    ),
];

/// Where each shell looks for completions shipped by packages.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/srvgate"),
    ("zsh", "usr/share/zsh/vendor-completions/_srvgate"),
    ("fish", "usr/share/fish/vendor_completions.d/srvgate.fish"),
];

/// The conffiles: dpkg keeps an admin's edits to them across upgrades.
const CONFFILES: &[&str] = &["/etc/srvgate/srvgate.toml"];

const MAINTAINER_SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// The students' client builds the package ships for download from the portal: (Rust
/// target, the file cargo writes, its name in the package).
pub const CLIENTS: &[(&str, &str, &str)] = &[
    (
        crate::setup::WINDOWS_TARGET,
        "srvgate-client.exe",
        "srvgate-client-windows-x86_64.exe",
    ),
    (
        crate::setup::MUSL_TARGET,
        "srvgate-client",
        "srvgate-client-linux-x86_64",
    ),
];

/// Where the package puts them, with their SHA256SUMS (the portal's `[portal] clients_dir`
/// default).
pub const CLIENTS_DIR: &str = "usr/share/srvgate/clients";

/// Builds the students' client for each of [`CLIENTS`] (release); returns each build with
/// its name in the package.
pub fn build_clients(root: &Path, target_dir: &Path) -> Result<Vec<(PathBuf, &'static str)>> {
    let mut built = Vec::new();
    for (target, file, name) in CLIENTS {
        cmd::run(
            Command::new("cargo")
                .current_dir(root)
                .args([
                    "build",
                    "--release",
                    "-p",
                    "lb-client",
                    "--bin",
                    "srvgate-client",
                ])
                .args(["--target", target])
                // A download: no debug info (the Windows .exe was 61 MiB with it, near the
                // portal's per-file bound of 64 MiB; without it a few MiB).
                .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
                .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"),
        )?;
        let path = target_dir.join(target).join("release").join(file);
        ensure!(
            path.is_file(),
            "the {target} build wrote no {}",
            path.display()
        );
        built.push((path, *name));
    }
    Ok(built)
}

/// Builds `OUT_DIR/srvgate_VERSION_ARCH.deb` from the release binary `bin`; returns its path.
/// Earlier packages in `out_dir` are removed, so the directory holds exactly one.
pub fn package(
    root: &Path,
    bin: &Path,
    clients: &[(PathBuf, &str)],
    out_dir: &Path,
) -> Result<PathBuf> {
    let dist = root.join("dist");
    let version = binary_version(bin)?;
    let arch = cmd::stdout(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();

    // dpkg-shlibdeps wants the tree at debian/PACKAGE below its working directory.
    let work = out_dir.join("work");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let stage = work.join("debian").join("srvgate");
    fs::create_dir_all(stage.join("DEBIAN"))?;
    fs::write(work.join("debian").join("control"), "")?;

    let packaged_bin = stage.join("usr/bin/srvgate");
    fs::create_dir_all(packaged_bin.parent().unwrap())?;
    cmd::run(
        Command::new("strip")
            .args(["--strip-debug", "-o"])
            .arg(&packaged_bin)
            .arg(bin),
    )?;
    set_mode(&packaged_bin, 0o755)?;

    for (from, to, mode) in FILES {
        install(&dist.join(from), &stage.join(to), *mode)?;
    }
    stage_clients(&stage.join(CLIENTS_DIR), clients)?;
    let copyright = stage.join("usr/share/doc/srvgate/copyright");
    fs::create_dir_all(copyright.parent().unwrap())?;
    fs::write(
        &copyright,
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: srvgate\n\n\
         Files: *\n\
         License: MIT or Apache-2.0\n",
    )?;

    let man = stage.join("usr/share/man/man1");
    cmd::run(Command::new(bin).arg("generate-man").arg(&man))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    ensure!(
        pages.iter().any(|p| p.ends_with("srvgate.1")),
        "`srvgate generate-man` wrote no srvgate.1 into {}",
        man.display()
    );
    for page in &pages {
        set_mode(page, 0o644)?;
        // -n: no name or time stamp inside, so the same page gives the same bytes.
        cmd::run(Command::new("gzip").args(["-9nf"]).arg(page))?;
    }

    // srvgate.toml(5): the book's config reference, as roff.
    let man5 = stage.join("usr/share/man/man5");
    cmd::run(Command::new(bin).arg("generate-config-man").arg(&man5))?;
    let config_page = man5.join("srvgate.toml.5");
    ensure!(
        config_page.is_file(),
        "`srvgate generate-config-man` wrote no srvgate.toml.5 into {}",
        man5.display()
    );
    set_mode(&config_page, 0o644)?;
    cmd::run(Command::new("gzip").args(["-9nf"]).arg(&config_page))?;

    for (shell, to) in COMPLETIONS {
        let script = cmd::stdout(Command::new(bin).args(["completions", shell]))?;
        ensure!(
            !script.is_empty(),
            "`srvgate completions {shell}` printed nothing"
        );
        let path = stage.join(to);
        fs::create_dir_all(path.parent().unwrap())?;
        fs::write(&path, script)?;
        set_mode(&path, 0o644)?;
    }

    for script in MAINTAINER_SCRIPTS {
        install(
            &dist.join("debian").join(script),
            &stage.join("DEBIAN").join(script),
            0o755,
        )?;
    }
    fs::write(
        stage.join("DEBIAN/conffiles"),
        CONFFILES
            .iter()
            .map(|c| format!("{c}\n"))
            .collect::<String>(),
    )?;
    write_md5sums(&stage)?;

    let depends = shlib_depends(&work, &packaged_bin)?;
    let control = format!(
        "Package: srvgate\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: srvgate maintainers <root@localhost>\n\
         Installed-Size: {}\n\
         Depends: {depends}\n\
         Suggests: bash-completion\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP port-forwarding gateway with an authoritative DNS zone\n \
         srvgate gives every instance behind a gateway a DNS name (SRV and A records)\n \
         and a public port on the gateway's one public IPv4 address. Packets are\n \
         rewritten and forwarded in the kernel by an XDP program; a daemon owns the\n \
         route table, fills the program's maps and serves the zone from the same\n \
         table. Includes the systemd unit, man pages, shell completions and a\n \
         Grafana dashboard for its Prometheus metrics.\n",
        installed_size_kib(&stage)?
    );
    fs::write(stage.join("DEBIAN/control"), control)?;

    for old in fs::read_dir(out_dir)? {
        let old = old?.path();
        if old.extension().is_some_and(|e| e == "deb") {
            fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    let deb = out_dir.join(format!("srvgate_{version}_{arch}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// Copies the client builds into `dir` (the Linux one stripped of its debug info, as the
/// daemon is) and writes their `SHA256SUMS`, which the portal checks each file against
/// before it offers it.
fn stage_clients(dir: &Path, clients: &[(PathBuf, &str)]) -> Result<()> {
    fs::create_dir_all(dir)?;
    for (from, name) in clients {
        let to = dir.join(name);
        if name.ends_with(".exe") {
            install(from, &to, 0o644)?;
        } else {
            cmd::run(
                Command::new("strip")
                    .args(["--strip-debug", "-o"])
                    .arg(&to)
                    .arg(from),
            )?;
            set_mode(&to, 0o755)?;
        }
    }
    let names: Vec<&str> = clients.iter().map(|(_, n)| *n).collect();
    let sums = cmd::stdout(Command::new("sha256sum").current_dir(dir).args(&names))?;
    ensure!(
        sums.lines().count() == names.len(),
        "sha256sum listed {} files, not {}",
        sums.lines().count(),
        names.len()
    );
    let path = dir.join("SHA256SUMS");
    fs::write(&path, sums)?;
    set_mode(&path, 0o644)
}

/// The version `srvgate --version` reports (the workspace's), so the package can never
/// claim another one than the binary inside it.
fn binary_version(bin: &Path) -> Result<String> {
    let out = cmd::stdout(Command::new(bin).arg("--version"))?;
    match out.split_whitespace().collect::<Vec<_>>()[..] {
        ["srvgate", v] if v.starts_with(|c: char| c.is_ascii_digit()) => Ok(v.to_string()),
        _ => bail!("unexpected `srvgate --version` output: {out:?}"),
    }
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().unwrap())?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Every regular file below `dir`, as paths relative to it, sorted.
fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                walk(base, &path, out)?;
            } else {
                out.push(path.strip_prefix(base).unwrap().to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// DEBIAN/md5sums: every shipped file except the conffiles (dpkg tracks those itself).
fn write_md5sums(stage: &Path) -> Result<()> {
    let files: Vec<PathBuf> = files_below(stage)?
        .into_iter()
        .filter(|f| !f.starts_with("DEBIAN"))
        .filter(|f| !CONFFILES.contains(&format!("/{}", f.display()).as_str()))
        .collect();
    let mut md5 = Command::new("md5sum");
    md5.current_dir(stage).args(&files);
    fs::write(stage.join("DEBIAN/md5sums"), cmd::stdout(&mut md5)?)?;
    Ok(())
}

fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut kib = 0;
    for f in files_below(stage)? {
        if f.starts_with("DEBIAN") {
            continue;
        }
        kib += fs::metadata(stage.join(f))?.len().div_ceil(1024);
    }
    Ok(kib)
}

/// The library packages the binary links against, with the versions its symbols need.
fn shlib_depends(work: &Path, bin: &Path) -> Result<String> {
    let rel = bin.strip_prefix(work).unwrap();
    let out = cmd::stdout(
        Command::new("dpkg-shlibdeps")
            .current_dir(work)
            .arg("-O")
            .arg(rel),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("dpkg-shlibdeps printed no shlibs:Depends: {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staged clients and their SHA256SUMS agree, in `sha256sum -c` form: what the
    /// portal checks each file against before it offers it.
    #[test]
    fn staged_clients_carry_their_sums() {
        let dir =
            std::env::temp_dir().join(format!("srvgate-stage-clients-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("built.exe");
        fs::write(&exe, b"MZ not really windows").unwrap();
        // Any ELF binary strips; this machine's `true` stands in for the musl build.
        let elf = PathBuf::from("/bin/true");
        let out = dir.join("clients");
        stage_clients(
            &out,
            &[
                (exe.clone(), "srvgate-client-windows-x86_64.exe"),
                (elf, "srvgate-client-linux-x86_64"),
            ],
        )
        .unwrap();
        let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
        let names: Vec<&str> = sums
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(
            names,
            [
                "srvgate-client-windows-x86_64.exe",
                "srvgate-client-linux-x86_64"
            ]
        );
        let check = cmd::stdout(
            Command::new("sha256sum")
                .args(["--check", "--strict", "SHA256SUMS"])
                .current_dir(&out),
        )
        .unwrap();
        assert_eq!(
            check.lines().filter(|l| l.ends_with(": OK")).count(),
            2,
            "{check}"
        );
        assert_eq!(
            fs::read(out.join("srvgate-client-windows-x86_64.exe")).unwrap(),
            fs::read(&exe).unwrap()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
