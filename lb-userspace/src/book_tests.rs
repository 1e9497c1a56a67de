//! The book (`docs/book/src`) checked against the code it describes, without root:
//!
//! - every ```toml block parses through the real config parser (a block with `[gateway]` is
//!   a whole file; any other is merged into a minimal valid file first);
//! - the keys the reference (`reference/config.md`) documents are exactly the keys the
//!   parser accepts, found by asking serde: an unknown key's error lists the expected ones;
//! - every `srvgate ...` and `srvgate-client ...` line of a shell block parses with the
//!   real clap definitions;
//! - every relative link names a page (and the SUMMARY lists every page).
//!
//! A block that shows what is refused on purpose says so in its info string
//! (```toml,refused); it must then fail to parse.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use clap::{FromArgMatches as _, Parser as _, Subcommand as _};
use lb_client::StudentCommand;
use lb_userspace::config::Config;

use super::Cli;

fn book_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/book/src")
}

/// Every page of the book: (path relative to src, text).
fn pages() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let root = book_src();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    assert!(out.len() > 5, "too few pages under {}", root.display());
    out
}

/// A fenced block: where it starts (page:line), its info string and its text.
#[derive(Debug)]
struct Block {
    at: String,
    info: String,
    text: String,
}

fn blocks(page: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((i + 1, info.trim().to_string(), String::new()));
                }
            }
            Some((start, info, body)) => {
                if trimmed.starts_with("```") {
                    out.push(Block {
                        at: format!("{page}:{start}"),
                        info: std::mem::take(info),
                        text: std::mem::take(body),
                    });
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{page}: a code block is never closed");
    out
}

fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|(p, t)| blocks(p, t)).collect()
}

/// The smallest file the parser takes; fragments are merged into it.
const BASE: &str = r#"
[gateway]
public_interface = "eth0"
private_interfaces = ["eth1"]
public_ipv4 = "203.0.113.10"

[dns]
zone = "lab.example"
"#;

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (Some(toml::Value::Array(a)), toml::Value::Array(b)) => a.extend(b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// What the parser makes of a book's toml block: a whole file, or a fragment merged into
/// [`BASE`].
fn parse_block(block: &Block) -> Result<Config, String> {
    let fragment: toml::Table = toml::from_str(&block.text).map_err(|e| e.to_string())?;
    let text = if fragment.contains_key("gateway") {
        block.text.clone()
    } else {
        let mut base: toml::Table = toml::from_str(BASE).unwrap();
        merge(&mut base, fragment);
        toml::to_string(&base).unwrap()
    };
    Config::parse(Path::new(&block.at), &text).map_err(|e| e.to_string())
}

fn check_toml_blocks(blocks: &[Block]) -> Vec<String> {
    let mut problems = Vec::new();
    for b in blocks.iter().filter(|b| b.info.starts_with("toml")) {
        let refused = b.info.split(',').any(|w| w.trim() == "refused");
        match (parse_block(b), refused) {
            (Ok(_), false) | (Err(_), true) => {}
            (Err(e), false) => problems.push(format!("{}: {e}", b.at)),
            (Ok(_), true) => problems.push(format!(
                "{}: marked `refused`, but the parser accepts it",
                b.at
            )),
        }
    }
    problems
}

#[test]
fn every_toml_block_of_the_book_parses() {
    let blocks = all_blocks();
    assert!(
        blocks.iter().filter(|b| b.info.starts_with("toml")).count() >= 3,
        "too few toml blocks found"
    );
    let problems = check_toml_blocks(&blocks);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_bad_toml_block_is_caught() {
    let block = |info: &str, text: &str| Block {
        at: "test.md:1".into(),
        info: info.into(),
        text: text.into(),
    };
    let bad = [
        block("toml", "[gateway]\npublic_interfce = \"eth0\"\n"),
        block("toml", "[http]\nlisten = \"0.0.0.0:80\"\n"),
        block("toml", "[[route]]\nname = \"alice\"\nservice = \"ssh\"\n"),
        block("toml,refused", "[http]\nlisten = [\"0.0.0.0:80\"]\n"),
    ];
    let problems = check_toml_blocks(&bad);
    assert_eq!(problems.len(), bad.len(), "{problems:#?}");
    let good = [block("toml", "[[route]]\nname = \"alice\"\nservice = \"ssh\"\nbackend = \"10.0.0.11:22\"\nport = 30001\n")];
    assert!(check_toml_blocks(&good).is_empty());
}

/// An unknown key no real key is near, so that the parser lists a section's keys rather
/// than suggesting one (suggestions stop at 64 characters).
const PROBE: &str =
    "zz_probe_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// The fields the parser expects where `header` (a TOML header such as `[dns]` or
/// `[[route]]`, or nothing for the top level) stands, from the error an unknown key there
/// gets (serde's "unknown field `k`, expected one of `a`, `b`", or the same list in other
/// words); None when the value there is no table of known keys (a map, a string).
fn expected_fields(header: &str) -> Option<BTreeSet<String>> {
    let text = format!("{header}\n{PROBE} = 1\n");
    let err = Config::parse(Path::new("probe"), &text)
        .unwrap_err()
        .to_string();
    let line = err
        .lines()
        .find(|l| l.contains(PROBE) && l.contains("unknown"))?;
    let rest = line.replace(&format!("`{PROBE}`"), "").replace(PROBE, "");
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every key the parser accepts, by section: `""` holds the top-level keys (the sections),
/// `gateway` the keys of `[gateway]`, `route` those of `[[route]]`, `cluster.x` a nested
/// table's.
fn accepted_keys() -> BTreeMap<String, BTreeSet<String>> {
    let top = expected_fields("").expect("no field list for the top level");
    let mut out = BTreeMap::new();
    let mut todo: Vec<String> = top.iter().cloned().collect();
    out.insert(String::new(), top);
    while let Some(section) = todo.pop() {
        let fields = expected_fields(&format!("[{section}]"))
            .or_else(|| expected_fields(&format!("[[{section}]]")));
        let Some(fields) = fields else { continue };
        for f in &fields {
            let nested = format!("{section}.{f}");
            if expected_fields(&format!("[{nested}]")).is_some() {
                todo.push(nested);
            }
        }
        out.insert(section, fields);
    }
    out
}

/// The keys `reference/config.md` documents: `- `key` (...)` lines under `## [section]`,
/// `## [[section]]` or `## [section.table]` headings.
fn documented_keys(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let name = h.trim().trim_start_matches('[').trim_end_matches(']');
            section = (h.trim().starts_with('[') && !name.is_empty()).then(|| name.to_string());
            // A nested table's heading (`## [dns.rrl]`) documents its key in the parent
            // (`rrl` of `[dns]`), as a section's heading documents it at the top level.
            if let Some(s) = &section {
                let (parent, key) = s.rsplit_once('.').unwrap_or(("", s));
                out.entry(parent.to_string())
                    .or_default()
                    .insert(key.to_string());
                out.entry(s.clone()).or_default();
            }
        } else if line.starts_with("# ") {
            section = None;
        } else if let (Some(s), Some(rest)) = (&section, line.strip_prefix("- `")) {
            if let Some((key, _)) = rest.split_once('`') {
                out.get_mut(s).unwrap().insert(key.to_string());
            }
        }
    }
    out
}

fn key_differences(
    accepted: &BTreeMap<String, BTreeSet<String>>,
    documented: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let name = |s: &str, k: &str| match s {
        "" => format!("[{k}]"),
        s => format!("{s}.{k}"),
    };
    let empty = BTreeSet::new();
    for (section, keys) in accepted {
        let doc = documented.get(section).unwrap_or(&empty);
        for k in keys.difference(doc) {
            problems.push(format!(
                "{} is accepted by the parser but not documented in reference/config.md",
                name(section, k)
            ));
        }
    }
    for (section, keys) in documented {
        let acc = accepted.get(section).unwrap_or(&empty);
        for k in keys.difference(acc) {
            problems.push(format!(
                "{} is documented in reference/config.md but the parser refuses it",
                name(section, k)
            ));
        }
    }
    problems
}

fn reference() -> String {
    fs::read_to_string(book_src().join("reference/config.md")).unwrap()
}

#[test]
fn the_reference_documents_exactly_the_keys_the_parser_accepts() {
    let accepted = accepted_keys();
    assert!(
        accepted["gateway"].contains("public_ipv4") && accepted.contains_key("route"),
        "the probe found too little: {accepted:?}"
    );
    let problems = key_differences(&accepted, &documented_keys(&reference()));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_key_missing_from_or_unknown_to_the_reference_is_caught() {
    let accepted = accepted_keys();
    let text = reference()
        .replace("- `ttl` (", "- `time_to_live` (")
        .replace("- `insecure_http` (", "insecure_http is not a bullet (");
    let problems = key_differences(&accepted, &documented_keys(&text));
    assert!(
        problems.iter().any(|p| p.contains("dns.ttl is accepted")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("dns.time_to_live is documented")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("cluster.insecure_http")),
        "{problems:?}"
    );
}

/// `srvgate-client`'s command line as its main.rs declares it: the students' verbs, and
/// `--version`.
fn client_cli() -> clap::Command {
    // Named through a variable: xtask's scan of started programs reads a literal after
    // `Command::new(` as one.
    let name = "srvgate-client";
    StudentCommand::augment_subcommands(clap::Command::new(name))
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
}

/// The command lines of a shell block: continuation lines joined, prompts (`$ `, `# `) and
/// `sudo` taken off; only those that start `srvgate` or `srvgate-client`.
fn command_lines(block: &Block) -> Vec<(String, Vec<String>)> {
    let mut joined = Vec::new();
    let mut acc = String::new();
    for line in block.text.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            acc.push_str(head);
            acc.push(' ');
            continue;
        }
        acc.push_str(line);
        joined.push(std::mem::take(&mut acc));
    }
    let mut out = Vec::new();
    for line in joined {
        let mut l = line.trim();
        for prompt in ["$ ", "# ", "sudo "] {
            l = l.strip_prefix(prompt).unwrap_or(l).trim_start();
        }
        if !(l.starts_with("srvgate ") || l.starts_with("srvgate-client ") || l == "srvgate") {
            continue;
        }
        let Some(words) = shlex::split(&without_substitutions(l)) else {
            out.push((line.clone(), vec![]));
            continue;
        };
        // Up to a comment, a pipe or a redirection.
        let words: Vec<String> = words
            .into_iter()
            .take_while(|w| !w.starts_with('#') && !matches!(w.as_str(), "|" | ">" | "&&" | ";"))
            .collect();
        out.push((line.clone(), words));
    }
    out
}

/// `line` with each `$(...)` made one word, as the shell makes its output (shlex knows
/// quotes, not command substitution): `backup /root/x-$(date +%F).tar` has two words.
fn without_substitutions(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("$(") {
        out.push_str(&rest[..at]);
        let mut depth = 0;
        let end = rest[at..].char_indices().find_map(|(i, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            (depth == 0 && c == ')').then_some(at + i)
        });
        let Some(end) = end else {
            out.push_str(&rest[at..]);
            return out;
        };
        out.push_str("SUBSTITUTED");
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn check_command_lines(blocks: &[Block]) -> (usize, Vec<String>) {
    let shells = ["sh", "bash", "console", "shell"];
    let mut problems = Vec::new();
    let mut seen = 0;
    for b in blocks.iter().filter(|b| shells.contains(&b.info.as_str())) {
        for (line, words) in command_lines(b) {
            seen += 1;
            if words.is_empty() {
                problems.push(format!("{}: cannot split {line:?} into words", b.at));
                continue;
            }
            let parsed = if words[0] == "srvgate" {
                Cli::try_parse_from(&words).map(|_| ())
            } else {
                client_cli()
                    .try_get_matches_from(&words)
                    .and_then(|m| StudentCommand::from_arg_matches(&m).map(|_| ()))
            };
            // `--help` and `--version` are lines that parse: clap answers them as errors.
            let parsed = parsed.or_else(|e| match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Ok(())
                }
                _ => Err(e),
            });
            if let Err(e) = parsed {
                let first = e.to_string();
                let first = first.lines().next().unwrap_or("");
                problems.push(format!("{}: {line:?}: {first}", b.at));
            }
        }
    }
    (seen, problems)
}

#[test]
fn every_command_line_of_the_book_parses() {
    let (seen, problems) = check_command_lines(&all_blocks());
    assert!(seen >= 20, "only {seen} command lines found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_bad_command_line_is_caught() {
    let block = Block {
        at: "test.md:1".into(),
        info: "console".into(),
        text: "# srvgate route add alice --service ssh --backend 10.0.0.11:22\n\
               $ srvgate route add alice --sevrice ssh\n\
               srvgate-client claim ssh --backend 10.0.0.11:22   # fine\n\
               srvgate-client clam ssh\n\
               srvgate user rm alice [--with-routes]\n\
               srvgate route ls --json > /root/routes-$(date +%F -d \"$(echo now)\").json\n\
               echo srvgate is not checked\n"
            .into(),
    };
    let (seen, problems) = check_command_lines(&[block]);
    assert_eq!(seen, 6);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("--sevrice"), "{problems:?}");
}

/// Relative links to pages (`](x.md)`, `](../y/z.md#anchor)`), each with its page.
fn broken_links(pages: &[(String, String)]) -> Vec<String> {
    let names: BTreeSet<PathBuf> = pages.iter().map(|(p, _)| PathBuf::from(p)).collect();
    let mut problems = Vec::new();
    for (page, text) in pages {
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let Some(end) = target.find(')') else {
                continue;
            };
            let target = &target[..end];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap();
            if !file.ends_with(".md") {
                continue;
            }
            let mut path = PathBuf::new();
            for part in dir.join(file).components() {
                match part {
                    std::path::Component::ParentDir => {
                        path.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => path.push(other),
                }
            }
            if !names.contains(&path) {
                problems.push(format!("{page}: link to {target} names no page"));
            }
        }
    }
    let summary = &pages
        .iter()
        .find(|(p, _)| p == "SUMMARY.md")
        .expect("no SUMMARY.md")
        .1;
    for (page, _) in pages {
        if page != "SUMMARY.md" && !summary.contains(&format!("]({page})")) {
            problems.push(format!("{page} is not in SUMMARY.md"));
        }
    }
    problems
}

#[test]
fn every_link_names_a_page_and_every_page_is_in_the_summary() {
    let problems = broken_links(&pages());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_broken_link_is_caught() {
    let pages = vec![
        ("SUMMARY.md".to_string(), "- [A](admin/a.md)\n".to_string()),
        (
            "admin/a.md".to_string(),
            "[b](../reference/b.md#x) [a](a.md) [web](https://example.org/x.md)".to_string(),
        ),
        ("admin/orphan.md".to_string(), String::new()),
    ];
    let problems = broken_links(&pages);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("reference/b.md"));
    assert!(problems[1].contains("orphan"));
}

/// The reference's config page is also `srvgate.toml(5)`: the page the package ships is made
/// from this text (see `cli::docs::config_man_page`).
#[test]
fn the_config_man_page_comes_from_the_reference() {
    let page = lb_userspace::cli::docs::config_man_page(&reference());
    assert!(page.contains(".TH SRVGATE.TOML 5"), "{page}");
    for key in [
        "public_interface",
        "port_cooldown",
        "proxy_protocol",
        "insecure_http",
    ] {
        assert!(
            page.contains(&format!("\\fB{key}\\fR")),
            "no {key} in the man page"
        );
    }
}

#[test]
fn a_nested_tables_heading_documents_its_key_in_the_parent() {
    let doc = documented_keys(
        "# Keys\n\n## [dns]\n\n- `zone` (string): z\n\n## [dns.rrl]\n\n- `rate` (integer): r\n\n\
         ## [[route]]\n\n- `name` (string): n\n\n## What a reload applies\n\n- `not_a_key` x\n",
    );
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(doc[""], set(&["dns", "route"]));
    assert_eq!(doc["dns"], set(&["zone", "rrl"]));
    assert_eq!(doc["dns.rrl"], set(&["rate"]));
    assert_eq!(doc["route"], set(&["name"]));
    assert_eq!(doc.len(), 4, "{doc:?}");
}
