//! The import check: every `crate::` path in this crate's sources, in `use` items and inline,
//! points down [`LAYERS`] (and, inside `table`, down [`TABLE`]), never up and never sideways
//! within a layer. A failure names the file, the line and the arrow.
//!
//! Test code is exempt: the `tests.rs` and `*_tests.rs` files and the folders of that name
//! (`xdp_tests/`, `daemon/tests/`: `#[cfg(test)]` modules split by scenario), `testing.rs` (the fakes, which
//! implement the traits of every layer so that the daemon's operations can be tested) and
//! every `#[cfg(test)]` item. A test may build its fixture with any layer (a config test that
//! asserts what the data plane makes of the parsed config) without that being a dependency
//! of the code that ships; the shipped code is all checked.
//!
//! Cargo already forbids cycles between crates (lb-model, lb-client, lb-userspace).

use std::{
    fs,
    path::{Path, PathBuf},
};

/// lb-userspace's top-level modules, bottom first. A module may use the modules of lower
/// entries only; the modules of one entry may not use each other.
const LAYERS: &[&[&str]] = &[
    &["logging", "machine", "notify"],
    &["health"],
    &["table"],
    &["cluster"],
    &["config"],
    &["kernel"],
    &["api"],
    &["serve"],
    &["cli"],
    &["daemon"],
];

/// The same rule between `table`'s own modules.
const TABLE: &[&[&str]] = &[&["routes", "traffic", "users"], &["state"]];

/// One `crate::` path: where it is and the first two segments it names.
#[derive(Debug, PartialEq, Eq)]
struct Use {
    line: usize,
    path: Vec<String>,
}

/// An arrow that climbs, or a module no list places.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    what: String,
}

fn rank(list: &[&[&str]], module: &str) -> Option<usize> {
    list.iter().position(|layer| layer.contains(&module))
}

/// `text` with comments, string and character literals blanked out (newlines kept, so line
/// numbers stay true), so that a path in a doc comment or a message is not taken for a use.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"' | '#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#, ended by a quote and as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(chars[i..j.min(chars.len())].iter().map(|&c| blank(c)));
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                let step = if chars[i] == '\\' { 2 } else { 1 };
                for k in 0..step {
                    if let Some(&c) = chars.get(i + k) {
                        out.push(blank(c));
                    }
                }
                i += step;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\''), else a lifetime or a label.
            let len = match (next, chars.get(i + 2), chars.get(i + 3)) {
                (Some('\\'), _, _) => chars[i + 2..]
                    .iter()
                    .skip(1)
                    .position(|&c| c == '\'')
                    .map(|p| p + 4),
                (Some(_), Some('\''), _) => Some(3),
                _ => None,
            };
            match len {
                Some(n) => {
                    out.extend(std::iter::repeat_n(' ', n));
                    i += n;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `code` with every `#[cfg(test)]` (or `#[cfg(all(test, ...))]`) item blanked out.
fn without_test_items(code: &str) -> String {
    let mut out = Vec::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if !(t.starts_with("#[cfg(test)]") || t.starts_with("#[cfg(all(test")) {
            out.push(line.to_string());
            continue;
        }
        out.push(String::new());
        // The item: to its `;` if it has no body, else to the brace that closes it.
        let mut depth = 0i32;
        let mut opened = false;
        for line in lines.by_ref() {
            out.push(String::new());
            for c in line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let t = line.trim_end();
            if (opened && depth <= 0) || (!opened && t.ends_with(';')) {
                break;
            }
        }
    }
    out.join("\n")
}

/// Every `crate::` path in `code` (already stripped of comments and literals), expanded
/// through `{...}` groups, each cut to its first two segments.
fn crate_paths(code: &str) -> Vec<Use> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue; // lb_userspace_crate::, a longer name
        }
        if start >= 2 && &code[start - 2..start] == "::" {
            continue; // $crate:: and the like are not ours
        }
        let line = code[..start].matches('\n').count() + 1;
        let mut paths = Vec::new();
        expand(&code[from..], Vec::new(), &mut paths);
        for path in paths {
            found.push(Use { line, path });
        }
    }
    found
}

/// Reads one use tree at the start of `rest` into `out`, each path after `prefix`.
fn expand(rest: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut i = 0;
    let b = rest.as_bytes();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
                i += expand(&rest[i..], path.clone(), out);
            }
        }
        let len = rest[i..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - i);
        if len == 0 {
            // `*`, or the end of the path.
            if !path.is_empty() {
                out.push(path.into_iter().take(2).collect());
            }
            return i + rest[i..].find([',', '}', ';']).unwrap_or(rest.len() - i);
        }
        let segment = &rest[i..i + len];
        i += len;
        if segment != "self" {
            path.push(segment.to_string());
        }
        if rest[i..].starts_with("::") {
            i += 2;
            continue;
        }
        out.push(path.into_iter().take(2).collect());
        // Skip an `as NAME` and whatever else ends this element.
        return i + rest[i..]
            .find([',', '}', ';', '\n'])
            .unwrap_or(rest.len() - i);
    }
}

/// The module path of the file at `rel` (relative to `src/`): `table/state/journal.rs` is
/// `table::state::journal`; `lib.rs` and `main.rs` are the crate root.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

fn is_test_file(rel: &Path) -> bool {
    let name = rel.file_name().unwrap_or_default().to_string_lossy();
    let test_dir = rel
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .any(|c| {
            let c = c.as_os_str().to_string_lossy();
            c == "tests" || c.ends_with("_tests")
        });
    test_dir || name == "tests.rs" || name.ends_with("_tests.rs") || name == "testing.rs"
}

/// The arrows of one file's `source` that break the layer lists.
fn check_source(rel: &Path, source: &str) -> Vec<Violation> {
    let module = module_of(rel);
    let Some(from) = module.first() else {
        return Vec::new();
    };
    let code = without_test_items(&code_only(source));
    let mut bad = Vec::new();
    let mut report = |line: usize, what: String| {
        let v = Violation {
            file: format!("src/{}", rel.display()),
            line,
            what,
        };
        // One line naming two paths down the same arrow (`kernel::{fds, sys}`) is one.
        if !bad.contains(&v) {
            bad.push(v);
        }
    };
    let Some(from_rank) = rank(LAYERS, from) else {
        report(
            1,
            format!("module `{from}` is in no layer: add it to LAYERS"),
        );
        return bad;
    };
    for u in crate_paths(&code) {
        let Some(to) = u.path.first() else { continue };
        if to == from {
            // Inside one top-level module: only `table` orders its own modules.
            if from != "table" {
                continue;
            }
            let (Some(inner_from), Some(inner_to)) = (module.get(1), u.path.get(1)) else {
                continue;
            };
            if inner_from == inner_to {
                continue;
            }
            match (rank(TABLE, inner_from), rank(TABLE, inner_to)) {
                (Some(a), Some(b)) if b < a => {}
                (None, _) => report(
                    u.line,
                    format!("module `table::{inner_from}` is in no layer: add it to TABLE"),
                ),
                (_, None) => report(
                    u.line,
                    format!("module `table::{inner_to}` is in no layer: add it to TABLE"),
                ),
                _ => report(
                    u.line,
                    format!(
                        "table::{inner_from} -> table::{inner_to}: `{inner_to}` is not below `{inner_from}` in TABLE"
                    ),
                ),
            }
            continue;
        }
        match rank(LAYERS, to) {
            Some(to_rank) if to_rank < from_rank => {}
            Some(_) => report(
                u.line,
                format!("{from} -> {to}: `{to}` is not below `{from}` in LAYERS"),
            ),
            None => report(
                u.line,
                format!("{from} -> {to}: `{to}` is in no layer: add it to LAYERS"),
            ),
        }
    }
    bad
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        if is_test_file(rel) {
            continue;
        }
        checked += 1;
        bad.extend(check_source(rel, &fs::read_to_string(file).unwrap()));
    }
    // The walk found the crate, not an empty directory.
    assert!(
        checked > 50,
        "only {checked} source files under {}",
        src.display()
    );
    let report: Vec<String> = bad
        .iter()
        .map(|v| format!("{}:{}: {}", v.file, v.line, v.what))
        .collect();
    assert!(
        report.is_empty(),
        "{} upward arrows:\n{}",
        report.len(),
        report.join("\n")
    );
}

#[test]
fn upward_uses_are_found_in_every_form() {
    let check = |file: &str, source: &str| check_source(Path::new(file), source);
    let lines = |v: Vec<Violation>| {
        v.iter()
            .map(|v| (v.line, v.what.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lines(check("table/state.rs", "use crate::serve::portal::MAX;\n")),
        [(
            1,
            "table -> serve: `serve` is not below `table` in LAYERS".into()
        )]
    );
    // Nested groups, an inline path, and a use that is fine beside them.
    let source = "use crate::{\n    machine::Interface,\n    kernel::{fds, sys::mtu},\n};\nfn f() { crate::daemon::run(); }\n";
    assert_eq!(
        lines(check("config/machine.rs", source)),
        [
            (
                1,
                "config -> kernel: `kernel` is not below `config` in LAYERS".into()
            ),
            (
                5,
                "config -> daemon: `daemon` is not below `config` in LAYERS".into()
            ),
        ]
    );
    // Sideways within a layer, and inside `table`.
    assert_eq!(
        check("machine.rs", "use crate::logging;").len(),
        1,
        "logging and machine share a layer"
    );
    assert_eq!(
        lines(check("table/state.rs", "use crate::table::routes::Source;")),
        [],
        "state is above routes in TABLE"
    );
    assert_eq!(
        lines(check(
            "table/routes.rs",
            "use crate::table::state::StoredRoute;"
        )),
        [(
            1,
            "table::routes -> table::state: `state` is not below `routes` in TABLE".into()
        )]
    );
    // The shared store is a layer of its own above `table`.
    assert_eq!(
        lines(check("table/state.rs", "use crate::cluster::keys;")),
        [(
            1,
            "table -> cluster: `cluster` is not below `table` in LAYERS".into()
        )]
    );
    assert!(check(
        "cluster/keys.rs",
        "use crate::table::{state, users::Users};"
    )
    .is_empty());
    // A module no list names fails until it is placed.
    assert_eq!(check("newthing.rs", "").len(), 1);
    assert_eq!(check("serve.rs", "use crate::newthing::X;").len(), 1);
}

#[test]
fn comments_strings_and_test_items_are_not_uses() {
    let source = r##"
//! Reaches the daemon through `crate::daemon::Core`.
/* crate::cli::admin */
const S: &str = "crate::daemon::x";
const R: &str = r#"crate::daemon::"y""#;
const C: char = '"';
fn f<'a>(x: &'a str) -> &'a str { x }
#[cfg(test)]
mod tests {
    use crate::testing::FakeControl;
    use crate::daemon::Core;
}
#[cfg(test)]
use crate::daemon::Core;
use crate::table::routes::RouteTable;
fn g() { crate::serve::dns::start(); }
"##;
    let found = check_source(Path::new("kernel/fds.rs"), source);
    let lines: Vec<usize> = found.iter().map(|v| v.line).collect();
    assert_eq!(lines, [16], "{found:?}");
    assert_eq!(
        found[0].what,
        "kernel -> serve: `serve` is not below `kernel` in LAYERS"
    );
}

#[test]
fn test_modules_are_exempt_by_file_or_folder_name() {
    for test in [
        "daemon/tests.rs",
        "serve/admission_tests.rs",
        "testing.rs",
        "kernel/dataplane/xdp_tests/pools.rs",
        "daemon/tests/pool_tests.rs",
    ] {
        assert!(is_test_file(Path::new(test)), "{test} is test code");
    }
    for shipped in [
        "kernel/dataplane/encode.rs",
        "serve/http.rs",
        "health/state.rs",
    ] {
        assert!(!is_test_file(Path::new(shipped)), "{shipped} ships");
    }
}
