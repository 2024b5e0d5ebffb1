//! Architecture checks that a test can run: the crate graph is a star around procyard-core,
//! `unsafe` appears only in procyard-core's `sys` module, every other crate forbids it, every
//! Rust file opens with a `//!` line, no signal call bypasses core's checked path, no socket path
//! is removed outside core's socket module, no crate has a module cycle, and no source file
//! outside tests is over 500 lines.
//!
//! Shared by `cargo xtask tidy` and the `tidy` test of procyard-tests (included by path).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The component crates: folder under `crates/` and package name.
pub const COMPONENTS: &[(&str, &str)] = &[
    ("asyncjob", "procyard-asyncjob"),
    ("procmgr", "procyard-procmgr"),
    ("daemon", "procyard-daemon"),
    ("bgtask", "procyard-bgtask"),
    ("resultworker", "procyard-resultworker"),
];

/// Runs every check on the workspace at `root`; returns the list of problems (empty: tidy).
pub fn check(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    check_star(root, &mut problems);
    for file in rust_files(root) {
        check_file(root, &file, &mut problems);
    }
    problems.extend(structure(root));
    problems
}

/// The structure rules: no module cycle within a crate, no source file over
/// [`MAX_SOURCE_LINES`] outside tests.
pub fn structure(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for file in rust_files(root) {
        let rel = file.strip_prefix(root).unwrap_or(&file).display().to_string();
        let is_source = rel.starts_with("crates/") && rel.contains("/src/");
        let lines = std::fs::read_to_string(&file).map_or(0, |t| t.lines().count());
        if is_source && lines > MAX_SOURCE_LINES {
            problems.push(format!(
                "{rel}: {lines} lines; split it (at most {MAX_SOURCE_LINES} per source file outside tests)"
            ));
        }
    }
    for folder in std::iter::once("core").chain(COMPONENTS.iter().map(|(f, _)| *f)) {
        check_module_cycles(root, folder, &mut problems);
    }
    problems
}

/// The longest a library or binary source file may be (tests and examples excepted).
pub const MAX_SOURCE_LINES: usize = 500;

/// The top-level module a source file belongs to (`src/supervisor/worker.rs` → `supervisor`),
/// or `None` for a crate root (`lib.rs`, `main.rs`) and for binaries under `src/bin`.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// The identifier at the start of `text`.
fn ident(text: &str) -> String {
    text.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The first path segment of each item of a `{…}` use-group (`a::X, b::{c, d}, e` → a, b, e),
/// `text` starting just after the opening brace.
fn top_level_segments(text: &str) -> Vec<String> {
    let mut out = vec![ident(text)];
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => out.push(ident(&text[i + 1..])),
            _ => {}
        }
    }
    out
}

/// No cycle of `crate::` references between the top-level modules of one crate: a module
/// graph with cycles cannot be read (or split) one module at a time.
fn check_module_cycles(root: &Path, folder: &str, problems: &mut Vec<String>) {
    use std::collections::{BTreeMap, BTreeSet};
    let src = root.join("crates").join(folder).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(root).into_iter().filter(|f| f.starts_with(&src)) {
        let Some(module) = top_module(&src, &file) else { continue };
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let code: String = text
            .lines()
            .map(|l| strip_strings(l.split("//").next().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(" ");
        let is_module = |name: &str| {
            !name.is_empty()
                && name != module
                && (src.join(format!("{name}.rs")).exists() || src.join(name).is_dir())
        };
        let targets = edges.entry(module.clone()).or_default();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names = if let Some(inner) = rest.strip_prefix('{') {
                top_level_segments(inner)
            } else {
                vec![ident(rest)]
            };
            targets.extend(names.into_iter().filter(|n| is_module(n)));
        }
    }
    // Report each cycle once, as the path around it from its smallest module.
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    let min =
                        cycle.iter().enumerate().min_by_key(|(_, m)| *m).map_or(0, |(i, _)| i);
                    cycle.rotate_left(min);
                    if reported.insert(cycle.clone()) {
                        problems.push(format!(
                            "crates/{folder}/src: module cycle {} -> {}",
                            cycle.join(" -> "),
                            cycle[0]
                        ));
                    }
                } else if !path.contains(next) && next > start {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
}

/// Names in the `[dependencies]`-like tables of a Cargo.toml (normal, dev and build).
fn dependency_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
            continue;
        }
        if in_deps
            && !line.starts_with('#')
            && let Some((name, _)) = line.split_once('=')
        {
            let name = name.trim().trim_end_matches(".workspace").trim();
            names.push(name.split('.').next().unwrap_or(name).to_owned());
        }
    }
    names
}

fn check_star(root: &Path, problems: &mut Vec<String>) {
    let core = root.join("crates/core/Cargo.toml");
    match std::fs::read_to_string(&core) {
        Ok(text) => {
            for dep in dependency_names(&text) {
                if dep.starts_with("procyard-") {
                    problems.push(format!(
                        "crates/core/Cargo.toml: procyard-core must not depend on {dep}"
                    ));
                }
            }
        }
        Err(e) => problems.push(format!("crates/core/Cargo.toml: unreadable: {e}")),
    }
    for (folder, package) in COMPONENTS {
        let path = root.join("crates").join(folder).join("Cargo.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("crates/{folder}/Cargo.toml: unreadable: {e}"));
                continue;
            }
        };
        if !text.contains(&format!("name = \"{package}\"")) {
            problems.push(format!("crates/{folder}/Cargo.toml: package must be named {package}"));
        }
        let deps = dependency_names(&text);
        if !deps.iter().any(|d| d == "procyard-core") {
            problems.push(format!("crates/{folder}/Cargo.toml: must depend on procyard-core"));
        }
        for dep in deps.iter().filter(|d| d.starts_with("procyard-") && *d != "procyard-core") {
            problems.push(format!(
                "crates/{folder}/Cargo.toml: depends on sibling {dep}; the crate graph is a star"
            ));
        }
        for root_file in ["src/lib.rs", "src/main.rs"] {
            let p = root.join("crates").join(folder).join(root_file);
            if let Ok(src) = std::fs::read_to_string(&p)
                && !src.contains("#![forbid(unsafe_code)]")
            {
                problems
                    .push(format!("crates/{folder}/{root_file}: must say #![forbid(unsafe_code)]"));
            }
        }
    }
}

fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> =
        ["crates", "xtask", "tests"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn check_file(root: &Path, file: &Path, problems: &mut Vec<String>) {
    let rel = file.strip_prefix(root).unwrap_or(file).display().to_string();
    let Ok(text) = std::fs::read_to_string(file) else {
        problems.push(format!("{rel}: unreadable"));
        return;
    };
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if !first.starts_with("//!") {
        problems.push(format!("{rel}: must open with a //! line saying what the file is"));
    }
    let in_core_sys = rel.starts_with("crates/core/src/sys/");
    let lines: Vec<&str> = text.lines().collect();

    for (idx, line) in lines.iter().enumerate() {
        let code = strip_strings(line.split("//").next().unwrap_or(""));
        let code = code.as_str();
        check_boundary_calls(&rel, idx + 1, code, problems);
        let has_unsafe =
            code.contains("unsafe {") || code.contains("unsafe fn") || code.contains("unsafe impl");
        if !has_unsafe || code.trim_start().starts_with("#!") {
            continue;
        }
        if !in_core_sys {
            let mut msg = String::new();
            let _ = write!(msg, "{rel}:{}: `unsafe` outside procyard-core's sys module", idx + 1);
            problems.push(msg);
        } else if code.contains("unsafe {") {
            let documented = lines[..idx].iter().rev().take(12).any(|l| l.contains("SAFETY:"));
            if !documented {
                problems
                    .push(format!("{rel}:{}: unsafe block without a // SAFETY: comment", idx + 1));
            }
        }
    }
}

/// Raw signal calls: only core's checked path (`procyard_core::kill_process`,
/// `kill_process_group`, `Child::signal*`) may reach `kill(2)`, so no pid or group <= 1 ever does.
const RAW_SIGNAL_CALLS: &[&str] = &[
    "libc::kill(",
    "libc::killpg(",
    "process::kill_process",
    "process::kill_current_process_group",
    "sys::signal::kill(",
    "signal::kill(",
];

/// Invariants 10 and 12 as text rules: no raw signal call outside core's signal path, and no
/// `remove_file` of a socket path outside core's socket module (which removes only stale sockets
/// or the one it bound).
fn check_boundary_calls(rel: &str, line: usize, code: &str, problems: &mut Vec<String>) {
    let signal_path = rel == "crates/core/src/signal.rs" || rel.starts_with("crates/core/src/sys/");
    if !signal_path && let Some(call) = RAW_SIGNAL_CALLS.iter().find(|c| code.contains(*c)) {
        problems.push(format!(
            "{rel}:{line}: raw signal call `{call}`: use procyard_core::kill_process or kill_process_group"
        ));
    }
    let lower = code.to_ascii_lowercase();
    if rel != "crates/core/src/socket.rs"
        && (lower.contains("remove_file(") || lower.contains("unlink("))
        && lower.contains("sock")
    {
        problems.push(format!(
            "{rel}:{line}: socket path removed by hand: use procyard_core::socket (only stale sockets are unlinked)"
        ));
    }
}

/// The line without the contents of its string literals (so messages may name keywords).
fn strip_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in line.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}
