//! Man pages and shell completions generated from the CLI's clap definitions, so they never
//! drift from `--help`. The binary exposes them as verbs of their own (`generate-man DIR`,
//! `completions SHELL`) that the package build runs; they are not part of the CLI they
//! describe.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

pub use clap_complete::Shell;

/// The top page's DESCRIPTION: what `--help`'s one line cannot say.
const TOP_DESCRIPTION: &str =
    "srvgate gives every instance behind a gateway a DNS name and a public port on the \
gateway's one public IPv4 address. An XDP program rewrites and forwards the packets in the \
kernel; the daemon (srvgate run) owns the route table, fills the program's maps and serves \
an authoritative DNS zone (SRV and A records) from the same table, so names and forwarding \
never disagree.\n\n\
Routes come from the config file (reloaded on SIGHUP) and from srvgate route add/rm while the \
daemon runs. The program and its maps are pinned in bpffs: stopping, restarting or upgrading \
the daemon never interrupts forwarding; srvgate down stops it for good.\n\n\
Students reach their instances with srvgate ssh NAME.ssh.ZONE, or plain ssh after adding \
the snippet srvgate ssh-config prints.";

/// What only the top page says: the files, the exit codes and the service around it.
const TOP_PAGE_SECTIONS: &str = r#".SH FILES
.TP
\fI/etc/srvgate/srvgate.toml\fR
The config file the packaged service runs with (\fBsrvgate run \-\-config\fR).
Reloaded on SIGHUP (\fBsystemctl reload srvgate\fR).
.TP
\fI/var/lib/srvgate/routes.json\fR
Runtime routes and their ports, kept across restarts (\fB\-\-state\-dir\fR).
.TP
\fI/run/srvgate/control.sock\fR
The control socket of \fBsrvgate route\fR, \fBstatus\fR and \fBdown\fR (\fB\-\-socket\fR); root only.
.TP
\fI/sys/fs/bpf/srvgate/\fR
The pinned maps and XDP links (\fB\-\-pin\-dir\fR). They keep packets forwarding while no
daemon runs; \fBsrvgate down\fR removes them.
.TP
\fI/lib/systemd/system/srvgate.service\fR
The systemd unit: \fBsystemctl enable \-\-now srvgate\fR. Stopping it leaves XDP forwarding.
.SH EXIT STATUS
0 on success, 1 on a runtime failure (including: no daemon is running), 2 on bad input
(config file, state file, arguments, missing privileges, a non\-root caller).
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter, e.g. \fBdebug\fR or \fBinfo,lb_userspace::serve::dns=debug\fR (default \fBinfo\fR).
.TP
\fBNOTIFY_SOCKET\fR
Set by systemd for \fBType=notify\fR: \fBsrvgate run\fR reports readiness there once XDP is
attached and DNS, metrics and the control socket listen.
"#;

/// Writes one man page (section 1) per visible command into `dir`: `srvgate.1`,
/// `srvgate-run.1`, `srvgate-route-add.1`, ... Returns the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut cmd = cmd
        .disable_help_subcommand(true)
        .long_about(TOP_DESCRIPTION);
    // Fills in the display names (`srvgate-route-add`) the file names come from.
    cmd.build();
    let top = cmd.get_name().to_string();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &top, true, &mut written)?;
    written.sort();
    Ok(written)
}

fn write_pages(
    cmd: &clap::Command,
    dir: &Path,
    top: &str,
    is_top: bool,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, top, false, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone()).manual("srvgate manual");
    let mut page = Vec::new();
    man.render(&mut page)?;
    let mut page = String::from_utf8(page)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut extra = String::new();
    if is_top {
        extra.push_str(TOP_PAGE_SECTIONS);
        let subs: Vec<String> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("\\fB{top}\\-{}\\fR(1)", s.get_name().replace('-', "\\-")))
            .collect();
        extra.push_str(&format!(
            ".SH SEE ALSO\n{}, \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)\n",
            subs.join(", ")
        ));
    } else {
        extra.push_str(&format!(".SH SEE ALSO\n\\fB{top}\\fR(1)\n"));
    }
    // Before the version line, where a reader expects the reference sections.
    match page.find(".SH VERSION") {
        Some(at) => page.insert_str(at, &extra),
        None => page.push_str(&extra),
    }
    let path = dir.join(man.get_filename());
    fs::write(&path, page)?;
    written.push(path);
    Ok(())
}

/// Writes the completion script of `shell` for the command `cmd` to `out`.
pub fn write_completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn io::Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clap command (named through a variable: the xtask scan of started programs reads
    /// a literal after `Command::new(` as one).
    fn command(name: &'static str) -> clap::Command {
        clap::Command::new(name)
    }

    fn cli() -> clap::Command {
        command("srvgate")
            .version("1.0")
            .about("a gateway")
            .subcommand(command("run").about("run it"))
            .subcommand(
                command("route")
                    .about("routes")
                    .subcommand(command("add").about("add one")),
            )
            .subcommand(command("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(cli(), dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "srvgate-route-add.1",
                "srvgate-route.1",
                "srvgate-run.1",
                "srvgate.1"
            ]
        );
        let top = fs::read_to_string(dir.path().join("srvgate.1")).unwrap();
        let files = top.find(".SH FILES").unwrap();
        assert!(files < top.find(".SH VERSION").unwrap());
        assert!(top.contains("\\fBsrvgate\\-route\\fR(1)"));
        let run = fs::read_to_string(dir.path().join("srvgate-run.1")).unwrap();
        assert!(!run.contains(".SH FILES"));
        assert!(run.contains(".SH SEE ALSO\n\\fBsrvgate\\fR(1)"));
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut out = Vec::new();
        write_completions(cli(), Shell::Bash, &mut out);
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("srvgate"));
        assert!(script.contains("route"));
        assert!(script.contains("add"));
    }
}
