//! Installs what building and testing srvgate needs, on a Debian-based machine.
//!
//! Each requirement is checked, installed if missing, then checked again, so a run on a
//! machine that has everything costs only a few cheap probes. The bpf-linker install is
//! parameterised by install root and LLVM prefix so that `cargo xtask test` can replay it
//! into a temporary directory even on machines that already have bpf-linker.

mod debian;
mod linker;
mod mdbook;
mod toolchain;

use std::time::Instant;

use anyhow::{bail, Result};

pub use debian::*;
pub use linker::*;
pub use mdbook::*;
pub use toolchain::*;

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
    // The lab's own test attaches a ready-made pass-all XDP program (xdp-filter's
    // xdpfilt_alw_all.o, which libxdp1 ships) to see `Lab::xdp_attached` follow it.
    "libxdp1",
    // The C compiler and linker for Windows: ring's build script needs the compiler, and
    // `cargo xtask test` links the students' client (srvgate-client.exe) with the linker
    // (.cargo/config.toml) for x86_64-pc-windows-gnu.
    "gcc-mingw-w64-x86-64",
    // `cargo xtask dist` builds the students' static Linux client for x86_64-unknown-linux-musl:
    // ring's build script compiles its C and assembly with musl-gcc.
    "musl-tools",
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
    // table with etcdctl (etcd-client); the etcd-client crate's build runs protoc, and
    // etcd's .proto files import protobuf's well-known types (google/protobuf/descriptor.proto,
    // struct.proto), which Debian ships in libprotobuf-dev, not in protobuf-compiler: without
    // it a fresh machine fails to build the daemon ("descriptor.proto: File not found").
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // The failover lab moves the public and private addresses between two gateways with a
    // real keepalived (VRRPv3), run in each gateway's namespace; its packaged service is
    // never started by the tests.
    "keepalived",
    // The booted test of the package (tests/tests/booted.rs): a Debian bookworm root made
    // by mmdebstrap and booted with systemd-nspawn (systemd-container), so that the unit
    // runs under a real systemd as PID 1.
    "mmdebstrap",
    "systemd-container",
];

/// aya-build runs `rustup run nightly cargo build -Z build-std=core`, so the toolchain must be
/// the channel literally named `nightly`, and it needs the standard library's source.
pub(super) const NIGHTLY: &str = "nightly";

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
    client_targets(check_only, &mut missing)?;
    bpf_linker(check_only, have_nightly, &mut missing)?;
    mdbook(check_only, &mut missing)?;
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

pub(super) fn report(status: &str, what: &str) {
    println!("  {status:<10} {what}");
}

pub(super) fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn mdbook_versions() {
        assert!(is_pinned_mdbook(&format!("mdbook v{MDBOOK_VERSION}")));
        assert!(is_pinned_mdbook(&format!("mdbook v{MDBOOK_VERSION}\n")));
        assert!(!is_pinned_mdbook("mdbook v0.4.40"));
        assert!(!is_pinned_mdbook(&format!("mdbook v{MDBOOK_VERSION}1")));
        assert!(!is_pinned_mdbook(""));
    }

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
