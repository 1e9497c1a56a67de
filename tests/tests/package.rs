//! The Debian package `cargo xtask dist` builds (`cargo xtask test` builds it just before
//! these tests and says where in `$SRVGATE_DIST_DIR`; default `target/dist`): what it
//! holds, that systemd accepts its unit, that its man pages render and its completions
//! load, and that the dashboard asks only for metrics srvgate exports.
//!
//! None of this needs root: the package is inspected and unpacked, never installed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use srvgate_tests::*;

/// The package built by `cargo xtask dist`: the one `.deb` in the dist directory.
fn deb() -> PathBuf {
    let dir = std::env::var_os("SRVGATE_DIST_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/dist"));
    let debs: Vec<PathBuf> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    match &debs[..] {
        [one] => one.clone(),
        [] => panic!(
            "no package in {}: build it with `cargo xtask dist` (or set SRVGATE_DIST_DIR)",
            dir.display()
        ),
        more => panic!("more than one package in {}: {more:?}", dir.display()),
    }
}

fn tool(argv: &[&str]) -> String {
    run_env(argv, &[])
}

fn run_env(argv: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]).envs(env.iter().copied());
    let out = run_with_timeout(&mut c, Duration::from_secs(60)).unwrap();
    expect_success(&argv.join(" "), &out).unwrap()
}

/// The package unpacked into a temp dir (the files, and its control files in DEBIAN/).
fn unpacked() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (deb, root) = (deb(), dir.path().display().to_string());
    let deb = deb.to_str().unwrap();
    tool(&["dpkg-deb", "-x", deb, &root]);
    tool(&["dpkg-deb", "-e", deb, &format!("{root}/DEBIAN")]);
    dir
}

/// The visible subcommands, as `srvgate --help` lists them (the man pages follow these).
fn subcommands(bin: &Path, parent: &[&str]) -> Vec<String> {
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend_from_slice(parent);
    argv.push("--help");
    let help = tool(&argv);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_package_holds_what_it_promises() {
    let deb = deb();
    let deb = deb.to_str().unwrap();
    let contents = tool(&["dpkg-deb", "--contents", deb]);
    let paths: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    let mut promised: Vec<String> = [
        "./usr/bin/srvgate",
        "./lib/systemd/system/srvgate.service",
        "./etc/srvgate/srvgate.toml",
        "./usr/share/man/man1/srvgate.1.gz",
        "./usr/share/man/man5/srvgate.toml.5.gz",
        "./usr/share/bash-completion/completions/srvgate",
        "./usr/share/zsh/vendor-completions/_srvgate",
        "./usr/share/fish/vendor_completions.d/srvgate.fish",
        "./usr/share/srvgate/grafana/srvgate.json",
        "./usr/share/doc/srvgate/copyright",
    ]
    .map(String::from)
    .to_vec();
    // One man page per command and subcommand, named as man(1) looks them up.
    let bin = srvgate_bin();
    for sub in subcommands(&bin, &[]) {
        promised.push(format!("./usr/share/man/man1/srvgate-{sub}.1.gz"));
        for subsub in subcommands(&bin, &[&sub]) {
            promised.push(format!("./usr/share/man/man1/srvgate-{sub}-{subsub}.1.gz"));
        }
    }
    assert!(promised.len() > 12, "too few commands found: {promised:?}");
    for p in &promised {
        assert!(
            paths.contains(&p.as_str()),
            "{p} missing from {deb}:\n{contents}"
        );
    }
    // Nothing hidden (the packaging helpers) gets a page.
    assert!(!contents.contains("generate-man"), "{contents}");
    // Root-owned, whoever built it; the binary executable, data files not.
    for line in contents.lines() {
        assert!(line.contains(" root/root "), "not root-owned: {line}");
    }
    let mode_of = |path: &str| {
        contents
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    assert_eq!(mode_of("./usr/bin/srvgate"), "-rwxr-xr-x");
    assert_eq!(
        mode_of("./lib/systemd/system/srvgate.service"),
        "-rw-r--r--"
    );

    let field = |name: &str| tool(&["dpkg-deb", "--field", deb, name]).trim().to_string();
    assert_eq!(field("Package"), "srvgate");
    let version = tool(&[bin.to_str().unwrap(), "--version"]);
    assert_eq!(format!("srvgate {}", field("Version")), version.trim());
    assert!(
        field("Depends").contains("libc6 (>= "),
        "{}",
        field("Depends")
    );
    assert!(deb.ends_with(&format!(
        "srvgate_{}_{}.deb",
        field("Version"),
        field("Architecture")
    )));

    // The config is a conffile (an admin's edits survive upgrades), and the checksums hold.
    let root = unpacked();
    let conffiles = fs::read_to_string(root.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles, "/etc/srvgate/srvgate.toml\n");
    let mut md5 = Command::new("md5sum");
    md5.args(["--check", "--quiet", "DEBIAN/md5sums"])
        .current_dir(root.path());
    let out = run_with_timeout(&mut md5, Duration::from_secs(30)).unwrap();
    expect_success("md5sum --check DEBIAN/md5sums", &out).unwrap();
    for script in ["postinst", "prerm", "postrm"] {
        let path = root.path().join("DEBIAN").join(script);
        tool(&["sh", "-n", path.to_str().unwrap()]);
    }
    // What is shipped is what is in the repository.
    for (shipped, source) in [
        ("lib/systemd/system/srvgate.service", "dist/srvgate.service"),
        ("etc/srvgate/srvgate.toml", "dist/srvgate.toml"),
        (
            "usr/share/srvgate/grafana/srvgate.json",
            "dist/grafana/srvgate.json",
        ),
    ] {
        assert_eq!(
            fs::read(root.path().join(shipped)).unwrap(),
            fs::read(workspace_root().join(source)).unwrap(),
            "{shipped} differs from {source}"
        );
    }
    // The packaged binary is a working srvgate (stripped of debug info, not of symbols).
    let packaged = root.path().join("usr/bin/srvgate");
    assert_eq!(tool(&[packaged.to_str().unwrap(), "--version"]), version);
}

/// Issue 27: the package ships the students' client for Windows and as a static Linux
/// binary, with the SHA256SUMS the portal checks each file against before it offers it at
/// `/clients/` (`serve::clients`, whose unit tests serve and hash them).
#[test]
fn the_clients_ship_with_their_sha256() {
    let root = unpacked();
    let dir = root.path().join("usr/share/srvgate/clients");
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let names: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        names,
        [
            "srvgate-client-windows-x86_64.exe",
            "srvgate-client-linux-x86_64"
        ],
        "{sums}"
    );
    let mut check = Command::new("sha256sum");
    check
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dir);
    let out = run_with_timeout(&mut check, Duration::from_secs(30)).unwrap();
    expect_success("sha256sum --check SHA256SUMS", &out).unwrap();

    let exe = fs::read(dir.join("srvgate-client-windows-x86_64.exe")).unwrap();
    assert!(exe.starts_with(b"MZ"), "not a Windows executable");
    let linux = dir.join("srvgate-client-linux-x86_64");
    let elf = fs::read(&linux).unwrap();
    assert!(elf.starts_with(b"\x7fELF"));
    // Static: no dynamic loader named inside (a glibc build names /lib64/ld-linux-x86-64.so.2).
    assert!(
        !elf.windows(b"ld-linux".len()).any(|w| w == b"ld-linux"),
        "the Linux client is not static"
    );
    let help = tool(&[linux.to_str().unwrap(), "--help"]);
    assert!(help.contains("login"), "{help}");
}

#[test]
fn systemd_accepts_the_unit() {
    let root = unpacked();
    let unit = fs::read_to_string(root.path().join("lib/systemd/system/srvgate.service")).unwrap();
    // `verify` checks that ExecStart's binary exists and that the Documentation= man pages
    // open: point both at the unpacked package rather than at an installed one.
    let packaged = root.path().join("usr/bin/srvgate");
    let probe = root.path().join("verify");
    fs::create_dir(&probe).unwrap();
    let copy = probe.join("srvgate.service");
    fs::write(
        &copy,
        unit.replace("/usr/bin/srvgate", packaged.to_str().unwrap()),
    )
    .unwrap();
    let manpath = root.path().join("usr/share/man").display().to_string();
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").arg(&copy).env("MANPATH", &manpath);
    let out = run_with_timeout(&mut verify, Duration::from_secs(60)).unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify complained:\n{said}"
    );

    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect();
    let has = |s: &str| settings.contains(&s);
    for want in [
        "Type=notify",
        "ExecStartPre=/usr/bin/srvgate check --config /etc/srvgate/srvgate.toml",
        "ExecStart=/usr/bin/srvgate run --config /etc/srvgate/srvgate.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "StateDirectory=srvgate",
        "RuntimeDirectory=srvgate",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "WantedBy=multi-user.target",
    ] {
        assert!(has(want), "the unit lacks {want}:\n{unit}");
    }
    // Stopping must leave XDP forwarding: nothing detaches on the way out.
    assert!(
        !settings.iter().any(|s| s.contains("--detach-on-exit")),
        "{unit}"
    );
    assert!(
        !settings.iter().any(|s| s.starts_with("ExecStop")),
        "{unit}"
    );
    // Every capability it keeps says why, in a comment above the list.
    let caps = settings
        .iter()
        .find_map(|s| s.strip_prefix("CapabilityBoundingSet="))
        .expect("a CapabilityBoundingSet");
    for cap in caps.split_whitespace() {
        assert!(
            unit.contains(&format!("# {cap}: ")),
            "{cap} has no comment saying why:\n{unit}"
        );
    }
}

#[test]
fn the_man_pages_render() {
    let root = unpacked();
    let dir = root.path().join("usr/share/man/man1");
    let mut pages: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert!(pages.len() > 5, "{pages:?}");
    for page in &pages {
        let mut man = Command::new("man");
        man.args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80");
        let out = run_with_timeout(&mut man, Duration::from_secs(30)).unwrap();
        let text = expect_success(&format!("man -l {}", page.display()), &out).unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{}: {warnings}", page.display());
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"] {
            assert!(
                text.lines().any(|l| l == section),
                "{} has no {section} section:\n{text}",
                page.display()
            );
        }
    }
    // srvgate.toml(5), made from the book's config reference: renders without a warning
    // and describes the keys.
    let config_page = root.path().join("usr/share/man/man5/srvgate.toml.5.gz");
    let mut man = Command::new("man");
    man.args(["--warnings", "-l"])
        .arg(&config_page)
        .env("MANWIDTH", "80");
    let out = run_with_timeout(&mut man, Duration::from_secs(30)).unwrap();
    let text = expect_success(&format!("man -l {}", config_page.display()), &out).unwrap();
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.trim().is_empty(), "srvgate.toml(5): {warnings}");
    for want in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "KEYS",
        "SEE ALSO",
        "public_ipv4",
        "[[route]]",
    ] {
        assert!(text.contains(want), "srvgate.toml(5) lacks {want}:\n{text}");
    }
    let top = run_env(
        &["man", "-l", dir.join("srvgate.1.gz").to_str().unwrap()],
        &[("MANWIDTH", "80")],
    );
    for want in [
        "FILES",
        "EXIT STATUS",
        "/etc/srvgate/srvgate.toml",
        "srvgate-run(1)",
    ] {
        assert!(top.contains(want), "srvgate(1) lacks {want}:\n{top}");
    }
    let run_page = run_env(
        &["man", "-l", dir.join("srvgate-run.1.gz").to_str().unwrap()],
        &[("MANWIDTH", "80")],
    );
    for option in ["--config", "--xdp-mode", "--pin-dir", "--detach-on-exit"] {
        assert!(run_page.contains(option), "srvgate-run(1) lacks {option}");
    }
    // Test-only flags stay out of the manual.
    assert!(!run_page.contains("--clock-offset-file"), "{run_page}");
}

/// What bash completes for the words `line` (the last one being completed).
fn bash_complete(script: &Path, line: &[&str]) -> Vec<String> {
    let words = line
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let program = format!(
        "source '{}' || exit 1\n\
         spec=$(complete -p srvgate) || exit 1\n\
         func=$(printf '%s' \"$spec\" | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n\
         COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n\
         \"$func\" srvgate \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display()
    );
    tool(&["bash", "--norc", "--noprofile", "-c", &program])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_completions_load() {
    let root = unpacked();
    let bash = root
        .path()
        .join("usr/share/bash-completion/completions/srvgate");
    let top = bash_complete(&bash, &["srvgate", ""]);
    for sub in [
        "run",
        "check",
        "route",
        "status",
        "down",
        "ssh",
        "ssh-config",
    ] {
        assert!(top.contains(&sub.to_string()), "no {sub} in {top:?}");
    }
    assert!(
        !top.iter()
            .any(|w| w == "generate-man" || w == "completions"),
        "{top:?}"
    );
    assert_eq!(bash_complete(&bash, &["srvgate", "rou"]), ["route"]);
    let route = bash_complete(&bash, &["srvgate", "route", ""]);
    for sub in ["add", "rm", "ls"] {
        assert!(route.contains(&sub.to_string()), "no {sub} in {route:?}");
    }
    let run_opts = bash_complete(&bash, &["srvgate", "run", "--"]);
    assert!(run_opts.contains(&"--config".to_string()), "{run_opts:?}");

    // zsh and fish at least parse their scripts where they are installed.
    for (shell, path) in [
        ("zsh", "usr/share/zsh/vendor-completions/_srvgate"),
        ("fish", "usr/share/fish/vendor_completions.d/srvgate.fish"),
    ] {
        let script = root.path().join(path);
        let text = fs::read_to_string(&script).unwrap();
        assert!(text.contains("srvgate"), "{path}");
        let mut check = Command::new(shell);
        check.arg("-n").arg(&script);
        match run_with_timeout(&mut check, Duration::from_secs(30)) {
            Ok(out) => {
                expect_success(&format!("{shell} -n {path}"), &out).unwrap();
            }
            Err(e) => println!("{shell} not checked ({e:#}); its completions are not parsed here"),
        }
    }
}

/// The metric names a dashboard's queries use.
fn dashboard_metrics() -> Vec<String> {
    let text = fs::read_to_string(workspace_root().join("dist/grafana/srvgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("srvgate_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_dashboard_queries_exported_metrics() {
    let names = dashboard_metrics();
    let metrics_rs =
        fs::read_to_string(workspace_root().join("lb-userspace/src/serve/metrics.rs")).unwrap();
    for want in [
        "srvgate_routes",
        "srvgate_route_bytes_total",
        "srvgate_route_packets_total",
        "srvgate_route_idle_seconds",
        "srvgate_xdp_verdicts_total",
        "srvgate_leg_dropped_total",
        "srvgate_leg_info",
    ] {
        assert!(
            names.contains(&want.to_string()),
            "the dashboard has no {want}"
        );
    }
    for name in &names {
        assert!(
            metrics_rs.contains(&format!("\"{name}")) || metrics_rs.contains(&format!(" {name} ")),
            "the dashboard queries {name}, which metrics.rs does not export"
        );
    }
}
