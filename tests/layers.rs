//! The crate's layers import only downward, and no two top-level modules import each other
//! through any path:
//!
//! kernels < nn < models < decode < {train, tasks, search, eval} < cli,
//!
//! with the base modules (`error`, `tokenizer`, `data`, `plot`), which know no model, below them
//! all. Test modules (from a `#[cfg(test)]` line on) are skipped: a test may compare against a
//! layer above.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The level of each top-level module of `src/`; a module may import its own level or below.
fn level(module: &str) -> Option<u32> {
    Some(match module {
        "error" => 0,
        "tokenizer" | "data" | "plot" => 1,
        "kernels" => 2,
        "nn" => 3,
        "models" => 4,
        "decode" => 5,
        "train" | "tasks" | "search" | "eval" | "serve" => 6,
        "cli" => 7,
        _ => return None,
    })
}

/// The top-level modules named by `crate::X` or `decodex::X` paths in `text`, including each
/// name of a `crate::{a, b::c, …}` group (over several lines too).
fn referenced(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["crate::", "decodex::"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let (mut depth, mut end) = (1, group.len());
                for (i, c) in group.char_indices() {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                let mut depth = 0;
                let mut item = String::new();
                for c in group[..end].chars().chain([',']) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            let name: String = item
                                .trim()
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_')
                                .collect();
                            if !name.is_empty() {
                                out.push(name);
                            }
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
    }
    out
}

/// The part of a source file outside its tests: everything before the first `#[cfg(test)]`.
fn non_test(src: &str) -> &str {
    src.find("#[cfg(test)]").map_or(src, |i| &src[..i])
}

/// Files that exist only under `#[cfg(test)]` (declared `#[cfg(test)] mod name;`).
fn test_only(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let src = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = src.lines().collect();
        for w in lines.windows(2) {
            if w[0].trim() == "#[cfg(test)]" {
                if let Some(name) = w[1]
                    .trim()
                    .strip_prefix("mod ")
                    .and_then(|s| s.strip_suffix(';'))
                {
                    let dir = if f.file_name().unwrap() == "mod.rs" || f.ends_with("src/lib.rs") {
                        f.parent().unwrap().to_path_buf()
                    } else {
                        f.with_extension("")
                    };
                    out.insert(dir.join(format!("{name}.rs")));
                }
            }
        }
    }
    out
}

/// (file, from, to) for every import of `src/` from a module into one of a higher level, and the
/// import graph between top-level modules.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn scan(root: &Path) -> (Vec<(String, String, String)>, Graph) {
    let src = root.join("src");
    let files = common::rust_files(&src);
    let skip = test_only(&files);
    let (mut climbs, mut graph) = (Vec::new(), Graph::new());
    for f in files.iter().filter(|f| !skip.contains(*f)) {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let me = first.trim_end_matches(".rs").to_string();
        if level(&me).is_none() {
            continue; // lib.rs, main.rs, testutil.rs
        }
        let text = std::fs::read_to_string(f).unwrap();
        for to in referenced(non_test(&text)) {
            if to == me || level(&to).is_none() {
                continue;
            }
            if level(&to) > level(&me) {
                climbs.push((rel.display().to_string(), me.clone(), to.clone()));
            }
            graph.entry(me.clone()).or_default().insert(to);
        }
    }
    (climbs, graph)
}

/// A cycle of the graph, if there is one, as the modules along it.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let at = path.iter().position(|p| p == m).unwrap();
                    let mut c = path[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, g, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let (climbs, _) = scan(Path::new(env!("CARGO_MANIFEST_DIR")));
    let report: Vec<String> = climbs
        .iter()
        .map(|(f, from, to)| format!("src/{f}: {from} -> {to}"))
        .collect();
    assert!(
        report.is_empty(),
        "imports that climb:\n{}",
        report.join("\n")
    );
}

#[test]
fn no_circles_between_modules() {
    let (_, graph) = scan(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(graph.contains_key("cli") && graph.contains_key("models"));
    if let Some(c) = cycle(&graph) {
        panic!("modules import each other: {}", c.join(" -> "));
    }
}

/// The checker itself: a climb in a use group over several lines, a plain path and a
/// `decodex::` path are all seen; tests and words ending in "crate" are not.
#[test]
fn the_checker_sees_every_form_of_import() {
    let text = "use crate::{\n    error::Result,\n    train::{a, b},\n};\nfn f() { crate::cli::x(); decodex::eval::y(); notcrate::decode::z(); }\n#[cfg(test)]\nuse crate::search;";
    let got = referenced(non_test(text));
    assert_eq!(got, ["error", "train", "cli", "eval"]);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}
