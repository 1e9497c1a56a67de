//! Which Debian package provides each program that srvgate, its tests, its demo and its
//! bench run. One table, so that setup installs exactly what the code needs: the unit test
//! below scans the sources for every program they start and fails on one that is not here,
//! and `cargo xtask setup` checks after installing that each program is on PATH.
//!
//! The scan relies on one convention, kept across the workspace: a program is started by
//! `Command::new("prog")`, by a lab helper whose argv is a literal (`lab.exec_ok(ns,
//! &["prog", ...])`, `spawn`, `host`, `netns_command`, `note_command`), by a variable named
//! `argv` whose first element is the program (`let argv = ["prog", ...]`), or as the first
//! word of a `lab.sh(ns, "prog ...")` script. A list of a program's own arguments is never
//! called `argv` (call it `args`).

/// Packages every machine of this kind has before setup runs: Debian's essential set and
/// what the image ships (`/work/.library/env/packages/installed-rust.txt` lists it).
#[cfg(test)]
pub const BASE_IMAGE: &[&str] = &[
    "apt",
    "bash",
    "coreutils",
    "curl",
    "dash",
    "dpkg",
    "git",
    "hostname",
    "iproute2",
    "mount",
    "procps",
    "python3",
    "tar",
    "util-linux",
];

/// Programs that come from no Debian package: the Rust toolchain (rustup), srvgate itself,
/// mdBook (`cargo install`ed by setup, pinned: `setup::MDBOOK_VERSION`), and a name the
/// subprocess helpers' tests use because it does not exist.
#[cfg(test)]
pub const NOT_FROM_DEBIAN: &[&str] = &[
    "cargo",
    "mdbook",
    "rustup",
    "srvgate",
    "srvgate-no-such-program",
];

/// Program -> the Debian package that provides it.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("bash", "bash"),
    ("bpftool", "bpftool"),
    ("cat", "coreutils"),
    // The console's browser test: chromedriver starts chromium (headless) for WebDriver.
    ("chromedriver", "chromium-driver"),
    ("chromium", "chromium"),
    ("curl", "curl"),
    ("dig", "dnsutils"),
    ("dnsperf", "dnsperf"),
    ("dpkg", "dpkg"),
    ("dpkg-deb", "dpkg"),
    ("dpkg-query", "dpkg"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("echo", "coreutils"),
    // The cluster lab's shared store, and the tool it inspects it with.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("ethtool", "ethtool"),
    ("git", "git"),
    ("gzip", "gzip"),
    ("haproxy", "haproxy"),
    ("hostname", "hostname"),
    ("ip", "iproute2"),
    ("iperf3", "iperf3"),
    ("kdig", "knot-dnsutils"),
    // The failover lab's VRRP daemon, one per gateway namespace.
    ("keepalived", "keepalived"),
    ("kill", "procps"),
    ("knotd", "knot"),
    ("man", "man-db"),
    ("md5sum", "coreutils"),
    // The booted test's Debian root (tests/tests/booted.rs).
    ("mmdebstrap", "mmdebstrap"),
    ("mount", "mount"),
    // The C compiler ring's build script runs for x86_64-unknown-linux-musl (the static
    // Linux client of `cargo xtask dist`).
    ("musl-gcc", "musl-tools"),
    ("nft", "nftables"),
    ("nginx", "nginx"),
    // Into the booted container's namespaces (there is no machined for `systemctl -M`).
    ("nsenter", "util-linux"),
    ("openssl", "openssl"),
    // The ACME lab's test CA (RFC 8555), answered by the gateway's own zone.
    ("pebble", "pebble"),
    // etcd-client's build script (tonic-build) compiles etcd's .proto files with it.
    ("protoc", "protobuf-compiler"),
    ("python3", "python3"),
    ("rsvg-convert", "librsvg2-bin"),
    ("setpriv", "util-linux"),
    ("sh", "dash"),
    // `cargo xtask dist`: the clients' SHA256SUMS.
    ("sha256sum", "coreutils"),
    ("sleep", "coreutils"),
    ("sockperf", "sockperf"),
    ("ss", "iproute2"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("sshd", "openssh-server"),
    ("strip", "binutils"),
    ("sysctl", "procps"),
    ("systemd-analyze", "systemd"),
    ("systemd-nspawn", "systemd-container"),
    // `cargo xtask bench --baseline`: unpacks `git archive` of the baseline revision.
    ("tar", "tar"),
    ("taskset", "util-linux"),
    ("tc", "iproute2"),
    ("timeout", "coreutils"),
    ("trafgen", "netsniff-ng"),
    ("umount", "mount"),
    ("unshare", "util-linux"),
    ("wrk", "wrk"),
    // The linker .cargo/config.toml names for x86_64-pc-windows-gnu (the Windows client).
    ("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64"),
];

/// The package that provides `program`, if the table knows it.
#[cfg(test)]
pub fn package_of(program: &str) -> Option<&'static str> {
    PROGRAMS
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, pkg)| *pkg)
}

/// Whether `program` can be started: found in PATH or in the sbin directories that root's
/// PATH has (a non-root PATH often lacks them, yet the tests run as root).
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .any(|dir| {
            let f = dir.join(program);
            std::fs::metadata(&f).is_ok_and(|m| m.is_file())
        })
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        fs,
        path::{Path, PathBuf},
    };

    use regex::Regex;

    use super::*;
    use crate::setup::DEBIAN_PACKAGES;

    /// The programs `source` starts, by the conventions in the module docs.
    fn programs_in(source: &str) -> BTreeSet<String> {
        // Comments may name programs (`# pin: ...`) without running them.
        let code: String = source
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let patterns = [
            r#"Command::new\(\s*"([^"]+)""#,
            r#"\b(?:exec|exec_ok|spawn|host|netns_command|note_command|tool|run_with_timeout)\([^;]{0,200}?&\[\s*"([^"]+)""#,
            r#"\bargv\s*=\s*(?:vec!)?\[\s*"([^"]+)""#,
            r#"\.sh\(\s*[^,;]{1,60},\s*"([A-Za-z0-9_.-]+)"#,
            r"/usr/s?bin/([A-Za-z0-9_.-]+)",
        ];
        let mut found = BTreeSet::new();
        for p in patterns {
            let re = Regex::new(&format!("(?s){p}")).unwrap();
            // A name with spaces is a note (`note_command(.., &["# pinned ..."])`).
            for c in re.captures_iter(&code) {
                if !c[1].contains(char::is_whitespace) {
                    found.insert(c[1].to_string());
                }
            }
        }
        found
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                // This file's own test feeds the scan made-up programs.
                && !path.ends_with("xtask/src/packages.rs")
            {
                out.push(path);
            }
        }
    }

    /// Every program the workspace's code runs, with one file that runs it.
    fn programs_in_workspace() -> BTreeMap<String, PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut files = Vec::new();
        for dir in [
            "xtask/src",
            "tests/src",
            "tests/tests",
            "lb-userspace/src",
            "lb-client/src",
        ] {
            rust_files(&root.join(dir), &mut files);
        }
        let mut found = BTreeMap::new();
        for f in files {
            for p in programs_in(&fs::read_to_string(&f).unwrap()) {
                found.entry(p).or_insert_with(|| f.clone());
            }
        }
        found
    }

    #[test]
    fn every_program_the_code_runs_has_a_package_that_setup_installs() {
        let found = programs_in_workspace();
        // The scan itself works: it sees programs started in each of the ways it knows.
        for known in ["sshd", "iperf3", "bpftool", "dig", "trafgen", "ip"] {
            assert!(
                found.contains_key(known),
                "the scan no longer finds {known}"
            );
        }
        let mut problems = Vec::new();
        for (program, file) in &found {
            if NOT_FROM_DEBIAN.contains(&program.as_str()) {
                continue;
            }
            match package_of(program) {
                None => problems.push(format!(
                    "{} runs `{program}`, which is not in xtask/src/packages.rs PROGRAMS",
                    file.display()
                )),
                Some(pkg) if !DEBIAN_PACKAGES.contains(&pkg) && !BASE_IMAGE.contains(&pkg) => {
                    problems.push(format!(
                        "`{program}` comes from {pkg}, which neither setup's DEBIAN_PACKAGES nor BASE_IMAGE names"
                    ))
                }
                Some(_) => {}
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_scan_sees_each_way_of_starting_a_program() {
        let src = r#"
            let a = Command::new("one").arg("x");
            lab.exec_ok(&lab.gw, &["two", "-x"]).unwrap();
            lab.spawn(
                &lab.client,
                &["three", &format!("{x}")],
            );
            let mut argv = vec![
                "four",
                "--flag",
            ];
            lab.sh(&lab.gw, "five -br addr");
            let script = "exec /usr/sbin/six -D";
            // lab.exec_ok(ns, &["commented", "out"]);
            lab.srvgate_ctl_ok(&["route", "ls"]);
            let args = vec!["not-a-program"];
        "#;
        let got: Vec<String> = programs_in(src).into_iter().collect();
        assert_eq!(got, ["five", "four", "one", "six", "three", "two"]);
    }

    #[test]
    fn the_table_is_sorted_and_has_no_duplicates() {
        let names: Vec<&str> = PROGRAMS.iter().map(|(p, _)| *p).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}
