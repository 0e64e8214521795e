//! The layer map in `src/lib.rs`'s header, held against the source: every
//! `crate::…` path a module names (outside comments) points to its own
//! layer or one below, and no two modules, or two sibling files of one
//! module, name each other in a circle. Reads files only; no build needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module → layer number, from the table in lib.rs's header
/// (`//! | 3 table | `pipeline` | … |`).
fn layer_map() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut map = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.strip_prefix("//! | ")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let Some(n) = cells[0].split_whitespace().next().and_then(|n| n.parse::<u32>().ok()) else { continue };
        for m in cells[1].split(',') {
            map.insert(m.trim().trim_matches('`').to_string(), n);
        }
    }
    map
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source of `file` without comments (line comments and doc comments).
fn code(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap().lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The top-level module a file belongs to (`src/run/http.rs` → `run`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::NAME` in `text`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `resevent_crate::`, not ours
        }
        let name: String = text[at + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Whether `edges` has a circle; returns one when it does.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(n: &str, edges: &BTreeMap<String, BTreeSet<String>>, state: &mut BTreeMap<String, u8>, path: &mut Vec<String>) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| p == n).unwrap();
                return Some(path[start..].iter().cloned().chain([n.to_string()]).collect());
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn every_module_is_in_the_layer_map_and_every_import_points_down() {
    let layers = layer_map();
    assert!(layers.len() >= 20, "lib.rs's layer table lists the modules: {layers:?}");
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for file in &files {
        let m = module_of(file);
        if m == "lib" || m == "main" {
            continue;
        }
        let Some(&from) = layers.get(&m) else { panic!("{} is in no layer of lib.rs's map", file.display()) };
        for target in crate_refs(&code(file)) {
            if target == m {
                continue;
            }
            let Some(&to) = layers.get(&target) else { panic!("{} names crate::{target}, which is in no layer", file.display()) };
            if to > from {
                upward.push(format!("{} (layer {from}) -> crate::{target} (layer {to})", file.strip_prefix(src()).unwrap().display()));
            }
            graph.entry(m.clone()).or_default().insert(target);
        }
    }
    assert!(upward.is_empty(), "imports that point up:\n{}", upward.join("\n"));
    assert_eq!(find_cycle(&graph), None, "modules that import each other in a circle");
}

#[test]
fn no_two_sibling_files_import_each_other_in_a_circle() {
    // Within one module directory: `super::x` and `crate::module::x` between
    // its files (mod.rs, the parent, is left out: children naming their
    // parent's items is how Rust modules nest).
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut by_dir: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for f in files.into_iter().filter(|f| f.file_name().unwrap() != "mod.rs" && f.parent().unwrap() != src()) {
        by_dir.entry(f.parent().unwrap().to_path_buf()).or_default().push(f);
    }
    for (dir, siblings) in by_dir {
        let names: BTreeSet<String> = siblings.iter().map(|f| f.file_stem().unwrap().to_string_lossy().to_string()).collect();
        let module = dir.strip_prefix(src()).unwrap().to_string_lossy().replace('/', "::");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &siblings {
            let me = f.file_stem().unwrap().to_string_lossy().to_string();
            let text = code(f);
            for other in names.iter().filter(|n| **n != me) {
                if text.contains(&format!("super::{other}::")) || text.contains(&format!("super::{other};")) || text.contains(&format!("crate::{module}::{other}")) {
                    graph.entry(me.clone()).or_default().insert(other.clone());
                }
            }
        }
        assert_eq!(find_cycle(&graph), None, "files of src/{} that import each other in a circle", dir.strip_prefix(src()).unwrap().display());
    }
}

#[test]
fn the_checks_catch_what_they_claim_to() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("cache".into()).or_default().insert("commit".into());
    assert_eq!(find_cycle(&edges), None);
    edges.entry("commit".into()).or_default().insert("cache".into());
    assert!(find_cycle(&edges).is_some(), "cache <-> commit is a circle");
    assert_eq!(crate_refs("use crate::kafka::x; // crate::run"), ["kafka", "run"].into_iter().map(String::from).collect());
    assert!(code(&src().join("lib.rs")).trim().starts_with("pub mod"), "comments are left out");
}
