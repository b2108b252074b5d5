//! Every committed fixture names the script and command that made it and the versions of the
//! tools it used (tests/fixtures/provenance.json, written by scripts/fixture_provenance.py), and
//! is the file that was recorded there: a fixture regenerated or edited without its provenance
//! fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Every file under `dir`, as paths relative to `base` with '/' separators.
fn files(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, base, out);
        } else {
            let rel = p.strip_prefix(base).unwrap();
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn every_fixture_records_its_generator_tools_and_hash() {
    let fix = root().join("tests/fixtures");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fix.join("provenance.json")).unwrap())
            .unwrap();
    let mut recorded = BTreeMap::new();
    for entry in manifest["fixtures"].as_array().unwrap() {
        let script = entry["generator"].as_str().unwrap();
        assert!(root().join(script).is_file(), "{script}: no such script");
        assert!(!entry["command"].as_str().unwrap().is_empty(), "{script}");
        let tools = entry["tools"].as_object().unwrap();
        assert!(
            tools.contains_key("python") && tools.len() >= 2,
            "{script}: tools {tools:?}"
        );
        for (file, hash) in entry["files"].as_object().unwrap() {
            let prev = recorded.insert(file.clone(), (script, hash.as_str().unwrap()));
            assert!(prev.is_none(), "{file} is listed twice");
        }
    }
    let mut on_disk = Vec::new();
    files(&fix, &fix, &mut on_disk);
    on_disk.retain(|f| f != "provenance.json");
    on_disk.sort();
    let listed: Vec<&String> = recorded.keys().collect();
    assert_eq!(
        on_disk.iter().collect::<Vec<_>>(),
        listed,
        "fixture files vs provenance.json (run scripts/fixture_provenance.py)"
    );
    for (file, (script, hash)) in &recorded {
        let got = format!(
            "{:x}",
            Sha256::digest(std::fs::read(fix.join(file)).unwrap())
        );
        assert_eq!(
            &got, hash,
            "{file} changed since {script} recorded it: update provenance.json"
        );
    }
    println!(
        "{} fixture files, each with its generator, tools and hash",
        recorded.len()
    );
}
