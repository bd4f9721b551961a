//! The agent's structure check, run first by `cargo xtask test` (and alone by `cargo xtask
//! layers`): no import cycle between the top-level modules of `sensor-agent/src`, and no
//! source file with more than [`MAX_CODE_LINES`] lines of non-test code.
//!
//! Why: the data path (source -> flow table -> enrichment -> detectors -> alarms -> sinks)
//! is only visible in the tree while every module depends on the ones below it. One
//! `use crate::` pointing back up ties two layers into a knot that every later feature has to
//! untie; this check fails at the first one, naming the files that make each edge.
//!
//! It reads text, not the compiler's resolution: a reference is `crate::MODULE` anywhere
//! outside comments and tests (`#[cfg(test)]` items at the end of a file), or an item of a
//! `use crate::{...}` group. `super::` chains that would
//! climb out of a top-level module are refused outright (write `crate::` instead), so nothing
//! escapes the check. `lib.rs` (which declares the modules) and `main.rs` (a separate crate
//! that sees the library as `sensor_agent`) are not part of the graph.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The most non-test lines of code one agent source file may hold.
pub const MAX_CODE_LINES: usize = 1200;

/// Top-level module -> module it uses -> the files (relative paths) that use it.
pub type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Checks `src` (the agent's `src` directory); prints a summary, fails on a cycle, a `super::`
/// chain out of a top-level module, or an oversized file.
pub fn check(src: &Path) -> Result<()> {
    let files = rust_files(src)?;
    let mut graph = Graph::new();
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap_or(file);
        let rel_s = rel.display().to_string();
        let Some(top) = top_module(rel) else { continue };
        let text = fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        let code = strip_comments(&text);
        let refs = references(&non_test(&code));
        for r in refs.modules {
            if r != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(r)
                    .or_default()
                    .insert(rel_s.clone());
            }
        }
        let depth = module_depth(rel);
        if refs.max_super >= depth {
            problems.push(format!(
                "{rel_s}: a `super::` chain of {} climbs out of module `{top}`; write `crate::` so the structure check sees it",
                refs.max_super
            ));
        }
        let lines = code_lines(&code);
        if lines > MAX_CODE_LINES {
            problems.push(format!(
                "{rel_s}: {lines} lines of non-test code (at most {MAX_CODE_LINES}); split it by concern"
            ));
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        let mut text = format!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
        for pair in cycle.windows(2) {
            if let Some(files) = graph.get(&pair[0]).and_then(|d| d.get(&pair[1])) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                text.push_str(&format!(
                    "\n  {} -> {}: {}",
                    pair[0],
                    pair[1],
                    files.join(", ")
                ));
            }
        }
        problems.push(text);
    }
    let modules: BTreeSet<&String> = graph
        .keys()
        .chain(graph.values().flat_map(|d| d.keys()))
        .collect();
    println!(
        "structure: {} files, {} top-level modules, {} import edges, no file over {MAX_CODE_LINES} lines of code: {}",
        files.len(),
        modules.len(),
        graph.values().map(BTreeMap::len).sum::<usize>(),
        if problems.is_empty() { "ok" } else { "FAILED" }
    );
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// The layers, bottom first (each module after everything it uses), for `cargo xtask layers`.
pub fn layers(src: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let mut graph = Graph::new();
    for file in rust_files(src)? {
        let rel = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
        let Some(top) = top_module(&rel) else {
            continue;
        };
        let code = non_test(&strip_comments(&fs::read_to_string(&file)?));
        graph.entry(top.clone()).or_default();
        for r in references(&code).modules {
            if r != top {
                graph.entry(top.clone()).or_default().entry(r).or_default();
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        bail!("import cycle: {}", cycle.join(" -> "));
    }
    let mut placed: Vec<(String, Vec<String>)> = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    while done.len() < graph.len() {
        for (m, deps) in &graph {
            if !done.contains(m)
                && deps
                    .keys()
                    .all(|d| done.contains(d) || !graph.contains_key(d))
            {
                placed.push((m.clone(), deps.keys().cloned().collect()));
            }
        }
        for (m, _) in &placed {
            done.insert(m.clone());
        }
    }
    Ok(placed)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `engine.rs` -> engine, `enrich/intel/feed.rs` -> enrich; none for lib.rs and main.rs.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.strip_suffix(".rs").unwrap_or(f).to_string()),
    }
}

/// How many `super::` a file's own items may climb and stay inside its top-level module:
/// `flow/table.rs` is `crate::flow::table`, so one `super` reaches `flow`, a second the root.
fn module_depth(rel: &Path) -> usize {
    let parts: Vec<&str> = rel
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    let last = parts.last().copied().unwrap_or_default();
    // Tests are not read, so an inline `mod tests` and its own `super::` never count.
    if last == "mod.rs" {
        parts.len() - 1
    } else {
        parts.len()
    }
}

/// The text without `//` and `/* */` comments (doc comments link to other modules freely)
/// and without the contents of string literals.
pub fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b.get(i) == Some(&b'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

#[derive(Debug, Default, PartialEq)]
pub struct References {
    pub modules: BTreeSet<String>,
    /// The longest `super::super::...` chain.
    pub max_super: usize,
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level modules a (comment-free) source text refers to.
pub fn references(code: &str) -> References {
    let mut refs = References::default();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let after = &rest[at + "crate::".len()..];
        if !preceded_by_ident {
            let after = after.trim_start();
            if let Some(group) = after.strip_prefix('{') {
                // `use crate::{a::x, b, c::{y, z}}`: the first segment of each item.
                let mut depth = 0usize;
                let mut item_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                            item_start = false;
                            let name = ident_at(&group[i..]);
                            if name != "self" {
                                refs.modules.insert(name.to_string());
                            }
                        }
                        _ => {}
                    }
                }
            } else {
                let name = ident_at(after);
                if !name.is_empty() {
                    refs.modules.insert(name.to_string());
                }
            }
        }
        rest = after;
    }
    for (i, _) in code.match_indices("super::") {
        let preceded = code[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if preceded {
            continue;
        }
        let mut n = 0;
        let mut s = &code[i..];
        while let Some(r) = s.strip_prefix("super::") {
            n += 1;
            s = r;
        }
        refs.max_super = refs.max_super.max(n);
    }
    refs
}

/// The code before the file's first top-level `#[cfg(test)]` item: what the agent is built
/// from (a test may load the whole configuration, for instance, without tying layers).
fn non_test(code: &str) -> String {
    code.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines of non-test code, blank lines not counted.
fn code_lines(code: &str) -> usize {
    non_test(code)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A cycle as a path that starts and ends with the same module, if there is one.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        if let Some(deps) = graph.get(m) {
            for d in deps.keys() {
                match state.get(d.as_str()).copied().unwrap_or(0) {
                    1 => {
                        let from = stack.iter().position(|s| s == d).unwrap_or(0);
                        let mut cycle = stack[from..].to_vec();
                        cycle.push(d.clone());
                        return Some(cycle);
                    }
                    0 => {
                        if let Some(c) = visit(d, graph, state, stack) {
                            return Some(c);
                        }
                    }
                    _ => {}
                }
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(m, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "layers-{}-{}",
            std::process::id(),
            files.len() * 7 + files.iter().map(|f| f.1.len()).sum::<usize>()
        ));
        let _ = fs::remove_dir_all(&dir);
        for (path, text) in files {
            let p = dir.join(path);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, text).expect("write");
        }
        dir
    }

    #[test]
    fn groups_paths_and_comments() {
        let code = strip_comments(
            "use crate::{a::x, b, c::{d, e}};\n// crate::f\n/// [`crate::g`]\nlet s = \"crate::h\";\nfn x() { crate::i::j(); }\n",
        );
        let refs = references(&code);
        let got: Vec<&str> = refs.modules.iter().map(String::as_str).collect();
        assert_eq!(got, ["a", "b", "c", "i"]);
    }

    #[test]
    fn a_cycle_fails_and_names_its_files() {
        let dir = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "use crate::b::X;"),
            ("b/mod.rs", "pub mod y;"),
            (
                "b/y.rs",
                "use crate::{a::Z};\n#[cfg(test)]\nmod tests { use crate::c::W; }\n",
            ),
            ("c.rs", "use crate::a::Q;"),
        ]);
        let e = check(&dir).expect_err("cycle").to_string();
        assert!(
            e.contains("a -> b -> a") || e.contains("b -> a -> b"),
            "{e}"
        );
        assert!(e.contains("b/y.rs") && e.contains("a.rs"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn layers_pass_and_super_out_of_a_module_fails() {
        let dir = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "pub struct Z;"),
            ("b/mod.rs", "use crate::a::Z; mod y;"),
            ("b/y.rs", "use super::super::a::Z;"),
        ]);
        let e = check(&dir).expect_err("super chain").to_string();
        assert!(e.contains("b/y.rs") && e.contains("super::"), "{e}");
        fs::write(dir.join("b/y.rs"), "use super::Q;").expect("write");
        check(&dir).expect("no cycle");
        let l = layers(&dir).expect("layers");
        assert_eq!(l[0].0, "a");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn oversized_files_fail() {
        let big = "fn f() {}\n".repeat(MAX_CODE_LINES + 1);
        let tests = format!("fn f() {{}}\n#[cfg(test)]\nmod tests {{\n{big}}}\n");
        let dir = tree(&[("lib.rs", ""), ("a.rs", &big), ("b.rs", &tests)]);
        let e = check(&dir).expect_err("too big").to_string();
        assert!(e.contains("a.rs") && !e.contains("b.rs"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
