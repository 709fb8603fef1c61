//! The code's layering, checked on the source (docs/ARCHITECTURE.md): imports flow binary ->
//! engine crates -> ferry-core; within a crate no two modules import each other; the binary
//! holds no SQL (it parses arguments, wires components and renders output).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The source without comment lines (doc links name modules without importing them).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `crate::NAME` paths in `text`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        // `ferry_core::...` ends in "core::" too: only a bare `crate::` counts.
        if i > 0 && text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Top-level module of each file of a crate's `src`, and what it imports from its crate.
fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(src) {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        deps.entry(top.clone())
            .or_default()
            .extend(crate_paths(&code(&f)).into_iter().filter(|m| *m != top));
    }
    deps
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let mut cycles = Vec::new();
    // ferry-proxy is one concern (the wire proxy) whose session, hold and relay modules call
    // one another by design; the crates below are cut by concern (check, snapshot, cdc, apply,
    // switch, verify, state...), and those must stay apart.
    for krate in ["ferry-core", "ferry-postgres", "ferry-mysql", "ferry-tls", "ferry"] {
        let src = workspace().join("crates").join(krate).join("src");
        let deps = module_imports(&src);
        assert!(!deps.is_empty(), "{krate}: no modules found in {}", src.display());
        for (a, ds) in &deps {
            for b in ds {
                if a < b && deps.get(b).is_some_and(|d| d.contains(a)) {
                    cycles.push(format!("{krate}: {a} <-> {b}"));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "modules that import each other: {cycles:?}");
}

#[test]
fn imports_flow_binary_to_engines_to_core() {
    // Which workspace crates each crate may use.
    let allowed: &[(&str, &[&str])] = &[
        ("ferry-core", &[]),
        ("ferry-tls", &["ferry_core"]),
        ("ferry-proxy", &["ferry_core", "ferry_tls"]),
        ("ferry-postgres", &["ferry_core", "ferry_tls"]),
        ("ferry-mysql", &["ferry_core", "ferry_tls", "ferry_postgres"]),
    ];
    let all = ["ferry_core", "ferry_tls", "ferry_proxy", "ferry_postgres", "ferry_mysql"];
    for (krate, ok) in allowed {
        for f in rust_files(&workspace().join("crates").join(krate).join("src")) {
            let text = code(&f);
            for other in all.iter().filter(|o| !ok.contains(o) && **o != krate.replace('-', "_")) {
                assert!(
                    !text.contains(&format!("{other}::")),
                    "{} uses {other}: {krate} may only use {ok:?}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn the_binary_holds_no_sql() {
    let src = workspace().join("crates/ferry/src");
    let mut found = Vec::new();
    for f in rust_files(&src) {
        // The demo's own workload (its application), not Ferry's.
        if f.ends_with("demo.rs") {
            continue;
        }
        for (n, line) in code(&f).lines().enumerate() {
            for call in [
                ".query(",
                ".query_one(",
                ".query_opt(",
                ".execute(",
                ".batch_execute(",
                ".simple_query(",
            ] {
                if line.contains(call) {
                    found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "statements in the binary crate:\n{}", found.join("\n"));
}
