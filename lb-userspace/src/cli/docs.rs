//! Man pages and shell completions generated from the CLI's clap definitions, so they never
//! drift from `--help`, and `srvgate.toml(5)` from the book's config reference
//! (`docs/book/src/reference/config.md`), so that the manual and the book say one thing. The
//! binary exposes them as verbs of their own (`generate-man DIR`, `completions SHELL`) that
//! the package build runs, and the book's command pages (`generate-book FILE`, which
//! `cargo xtask docs` runs); they are not part of the CLI they describe.

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
Reloaded on SIGHUP (\fBsystemctl reload srvgate\fR). Every key: \fBsrvgate.toml\fR(5).
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
            ".SH SEE ALSO\n{}, \\fBsrvgate.toml\\fR(5), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)\n",
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

/// The book's config reference, the one source of `srvgate.toml(5)`.
pub const CONFIG_REFERENCE: &str = include_str!("../../../docs/book/src/reference/config.md");

/// Writes `srvgate.toml.5` into `dir` (man5), made from [`CONFIG_REFERENCE`].
pub fn write_config_man_page(dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join("srvgate.toml.5");
    fs::write(&path, config_man_page(CONFIG_REFERENCE))?;
    Ok(path)
}

/// Turns the reference's markdown into roff. It knows the few shapes that page uses: a
/// title, paragraphs, `## [section]` headings with their `- `key` (type, default): what`
/// bullets, other `##` headings and fenced blocks; inline code becomes bold, a link its text.
pub fn config_man_page(markdown: &str) -> String {
    let mut out = String::from(
        ".TH SRVGATE.TOML 5 \"\" \"srvgate\" \"srvgate manual\"\n\
         .SH NAME\nsrvgate.toml \\- the config file of srvgate run and srvgate check\n\
         .SH SYNOPSIS\n\\fI/etc/srvgate/srvgate.toml\\fR\n\
         .SH DESCRIPTION\n",
    );
    let mut in_block = false;
    let mut keys_started = false;
    let mut para_open = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            if in_block {
                out.push_str(".fi\n.RE\n");
            } else {
                out.push_str(".PP\n.RS 4\n.nf\n");
            }
            in_block = !in_block;
            para_open = false;
            continue;
        }
        if in_block {
            out.push_str(&roff_line(&escape(line)));
            continue;
        }
        if line.starts_with("# ") {
            continue;
        }
        if let Some(heading) = line.strip_prefix("## ") {
            let heading = heading.trim();
            if heading.starts_with('[') {
                if !keys_started {
                    out.push_str(".SH KEYS\n");
                    keys_started = true;
                }
                out.push_str(&format!(".SS {}\n", escape(heading)));
            } else {
                out.push_str(&format!(".SH {}\n", escape(&heading.to_uppercase())));
            }
            para_open = false;
            continue;
        }
        if line.trim().is_empty() {
            para_open = false;
            continue;
        }
        if let Some(item) = line.strip_prefix("- ") {
            let (term, body) = match item.split_once("): ") {
                Some((term, body)) => (format!("{term})"), body),
                None => (item.to_string(), ""),
            };
            out.push_str(&format!(".TP\n{}\n", inline(&term)));
            if !body.is_empty() {
                out.push_str(&roff_line(&inline(body)));
            }
            para_open = true;
            continue;
        }
        if !para_open {
            out.push_str(".PP\n");
            para_open = true;
        }
        out.push_str(&roff_line(&inline(line.trim())));
    }
    out.push_str(
        ".SH SEE ALSO\n\\fBsrvgate\\fR(1), \\fBsrvgate\\-run\\fR(1), \\fBsrvgate\\-check\\fR(1)\n",
    );
    out
}

/// Roff's special characters in text: the backslash and the hyphen.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A line of text, kept from being read as a request.
fn roff_line(text: &str) -> String {
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}\n")
    } else {
        format!("{text}\n")
    }
}

/// Markdown's inline code (bold), strong emphasis (bold) and links (their text), escaped.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '`' {
            if let Some(end) = rest[1..].find('`') {
                out.push_str(&format!("\\fB{}\\fR", escape(&rest[1..1 + end])));
                rest = &rest[end + 2..];
                continue;
            }
        }
        if rest.starts_with("**") {
            if let Some(end) = rest[2..].find("**") {
                out.push_str(&format!("\\fB{}\\fR", inline(&rest[2..2 + end])));
                rest = &rest[end + 4..];
                continue;
            }
        }
        if c == '[' {
            if let Some((label, after)) = rest[1..].split_once("](") {
                if let Some(close) = after.find(')') {
                    if !label.contains(']') {
                        out.push_str(&inline(label));
                        rest = &after[close + 1..];
                        continue;
                    }
                }
            }
        }
        out.push_str(&escape(&c.to_string()));
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The book's page of every command: for each visible command, its `--help` text.
pub fn book_commands_page(cmd: clap::Command) -> String {
    let mut cmd = cmd.disable_help_subcommand(true).term_width(100);
    cmd.build();
    let mut out = String::from(
        "# Commands\n\n\
         Generated by `cargo xtask docs` from the CLI's definition (what `--help` prints), so it \
         never drifts from the binary. The students' verbs (`ssh`, `ssh-config`, `login`, \
         `claim`, `mine`, `release`) are the same in `srvgate-client`. Exit codes: 0 success, \
         1 a runtime failure (including: no daemon is running, the gateway unreachable), 2 bad \
         input (config file, state file, arguments, missing privileges, a refused claim).\n",
    );
    book_command(&mut cmd, &mut Vec::new(), &mut out);
    out
}

fn book_command(cmd: &mut clap::Command, path: &mut Vec<String>, out: &mut String) {
    path.push(cmd.get_name().to_string());
    let help = cmd.render_long_help().to_string();
    out.push_str(&format!(
        "\n## {}\n\n```text\n{}\n```\n",
        path.join(" "),
        help.trim_end()
    ));
    for sub in cmd.get_subcommands_mut().filter(|s| !s.is_hide_set()) {
        book_command(sub, path, out);
    }
    path.pop();
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
    fn the_config_page_is_roff_made_from_the_markdown() {
        let md = "# Title\n\nIntro with `code` and a [link](x.md).\n\n## [gateway]\n\n\
                  Required.\n\n- `port_range` (string, default `\"30000-32767\"`): the ports;\n  \
                  more.\n\n## What a reload applies\n\n```toml\n.starts = \"with a dot\"\n```\n";
        let page = config_man_page(md);
        assert!(page.starts_with(".TH SRVGATE.TOML 5"), "{page}");
        assert!(
            page.contains(".SH DESCRIPTION\n.PP\nIntro with \\fBcode\\fR and a link.\n"),
            "{page}"
        );
        assert!(page.contains(".SH KEYS\n.SS [gateway]\n"), "{page}");
        assert!(
            page.contains(".TP\n\\fBport_range\\fR (string, default \\fB\"30000\\-32767\"\\fR)\nthe ports;\nmore.\n"),
            "{page}"
        );
        assert!(page.contains(".SH WHAT A RELOAD APPLIES\n"), "{page}");
        assert!(
            page.contains(".nf\n\\&.starts = \"with a dot\"\n.fi\n"),
            "{page}"
        );
        assert!(page.contains(".SH SEE ALSO"), "{page}");
        // Nothing the markdown marks up is left raw.
        assert!(
            !page.contains('`') && !page.contains("](") && !page.contains("## "),
            "{page}"
        );
    }

    #[test]
    fn the_book_page_has_every_visible_command() {
        let page = book_commands_page(cli());
        assert!(page.contains("\n## srvgate route add\n"), "{page}");
        assert!(
            page.contains("\n## srvgate run\n\n```text\nrun it"),
            "{page}"
        );
        assert!(!page.contains("secret"), "{page}");
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
