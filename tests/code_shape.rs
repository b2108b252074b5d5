//! The shape issue 21 set for `src/`: no file over 800 lines, and no function over 120 lines
//! outside tests (from a `#[cfg(test)] mod tests` on, and test-only files, are skipped).

mod common;

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 120;

/// The lines before a file's `#[cfg(test)] mod tests` (all of them if it has none).
fn non_test_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

/// Whether a line starts a function item: `fn name`, with any visibility and qualifiers.
fn is_fn_start(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "unsafe ",
        "async ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let name = rest.strip_prefix("fn ")?;
    Some(name.split(['(', '<']).next().unwrap_or(name))
}

/// (name, first line, length) of every function in `lines` longer than `max`.
fn long_functions(lines: &[&str], max: usize) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = is_fn_start(line) else {
            continue;
        };
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            // Braces in char literals ('{', '}') are not blocks.
            let l = l.replace("'{'", "").replace("'}'", "");
            if !opened && l.trim_end().ends_with(';') {
                break; // a declaration without a body
            }
            for c in l.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth == 0 {
                if j - i + 1 > max {
                    out.push((name.to_string(), i + 1, j - i + 1));
                }
                break;
            }
        }
    }
    out
}

fn src_files() -> Vec<PathBuf> {
    common::rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_file_over_800_lines() {
    let over: Vec<String> = src_files()
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > MAX_FILE_LINES).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(
        over.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        over.join("\n")
    );
}

#[test]
fn no_function_over_120_lines_outside_tests() {
    let mut over = Vec::new();
    for f in src_files() {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (name, line, len) in long_functions(&non_test_lines(&text), MAX_FN_LINES) {
            over.push(format!("{}:{line}: fn {name}, {len} lines", f.display()));
        }
    }
    assert!(
        over.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        over.join("\n")
    );
}

/// The scanner itself: a long body is caught, a short one and a body-less declaration are not,
/// and braces in char literals do not count.
#[test]
fn the_scanner_measures_functions() {
    let mut text = String::from("pub fn long(x: u32) -> u32 {\n");
    text.push_str(&"    let _ = '{';\n".repeat(5));
    text.push_str("}\nfn short() {}\nfn decl();\n");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(long_functions(&lines, 6), [("long".to_string(), 1, 7)]);
    assert!(long_functions(&lines, 7).is_empty());
    let with_tests = "fn a() {}\n#[cfg(test)]\nmod tests {\n}\n";
    assert_eq!(non_test_lines(with_tests), ["fn a() {}"]);
}

/// Two ignored tests in `src/data/mod.rs` once read a fixed absolute path instead of
/// `DECODEX_DATA`, and an example wrote to a fixed /tmp folder: no string literal in the code,
/// the tests, the examples or the benches names a folder of one machine.
#[test]
fn no_fixed_machine_paths() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["src", "tests", "examples", "benches"] {
        for f in common::rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for top in ["tmp", "home", "root", "work", "Users", "mnt"] {
                    if line.contains(&format!("\"/{top}/")) {
                        found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "fixed paths:\n{}", found.join("\n"));
}
