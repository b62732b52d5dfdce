//! The workspace's shape, checked: no module of a crate depends on another
//! that depends back on it (no module circle), no source file but a test
//! grows past what one reader holds in mind (700 lines), and the processes
//! that only talk to regions (collector, router, web app) do not build the
//! store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 8] = [
    "core",
    "replicator",
    "auditor",
    "collector",
    "router",
    "web",
    "lab",
    ".",
];

/// Longest a source file may be.
const MAX_LINES: usize = 700;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments, string contents or test modules.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The crate's top-level modules each of its modules names (`crate::x`).
fn module_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = code(&std::fs::read_to_string(&f).expect("readable source"));
        let deps = graph.entry(module.clone()).or_default();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if rest.starts_with('{') {
                let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap_or("").trim();
                    if !name.is_empty() && name != module {
                        deps.insert(name.to_owned());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && rest[name.len()..].starts_with("::") {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// A path from `from` back to `from` through `graph`, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        target: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == target {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, target, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_owned()];
    walk(graph, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let mut circles = Vec::new();
    for krate in CRATES {
        let graph = module_graph(krate);
        assert!(
            graph.len() > 1 || krate == "auditor",
            "found no modules in {krate}"
        );
        let mut reported = BTreeSet::new();
        for module in graph.keys() {
            if reported.contains(module) {
                continue;
            }
            if let Some(path) = circle(&graph, module) {
                reported.extend(path.iter().cloned());
                circles.push(format!("{krate}: {}", path.join(" -> ")));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "module circles (each module names the next with crate::):\n  {}",
        circles.join("\n  ")
    );
}

#[test]
fn the_circle_check_sees_a_circle() {
    let text =
        "use crate::b::X;\nfn f() { crate::c::g() }\n// crate::d::h\nlet s = \"crate::e::x\";";
    let code = code(text);
    assert!(code.contains("crate::b::X") && code.contains("crate::c::g"));
    assert!(!code.contains("crate::d") && !code.contains("crate::e"));
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(circle(&graph, "a").expect("a circle").join(">"), "a>b>c>a");
    graph.get_mut("c").expect("c").clear();
    assert!(circle(&graph, "a").is_none());
}

#[test]
fn no_source_file_is_too_long_to_read() {
    let mut long = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root().join(krate).join("src"), &mut files);
        for f in files {
            let rel = f
                .strip_prefix(root())
                .expect("under the workspace")
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            // Unit-test files are tests.
            if rel.ends_with("/tests.rs") || rel.contains("/tests/") {
                continue;
            }
            let lines = std::fs::read_to_string(&f)
                .expect("readable")
                .lines()
                .count();
            if lines > MAX_LINES {
                long.push(format!("{rel}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by concern):\n  {}",
        long.join("\n  ")
    );
}

/// The workspace crates (`parallax-*`) and external crates each crate's
/// `[dependencies]` names, by folder.
fn dependencies(krate: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).expect("a manifest");
    let mut deps = BTreeSet::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
            if !name.is_empty() {
                deps.insert(name.to_owned());
            }
        }
    }
    deps
}

/// Every crate `krate` builds, directly or through workspace crates.
fn reaches(krate: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![krate.to_owned()];
    while let Some(k) = todo.pop() {
        for d in dependencies(&k) {
            if let Some(folder) = d.strip_prefix("parallax-") {
                if out.insert(d.clone()) {
                    todo.push(folder.to_owned());
                }
            } else {
                out.insert(d);
            }
        }
    }
    out
}

#[test]
fn what_only_talks_to_regions_does_not_build_the_store() {
    // The check sees what it looks for: the lab starts region nodes.
    let lab = reaches("lab");
    assert!(
        lab.contains("parallax-replicator") && lab.contains("redb"),
        "{lab:?}"
    );
    let core = reaches("core");
    assert!(
        !core.iter().any(|d| d.starts_with("parallax-")) && !core.contains("redb"),
        "parallax-core must stand alone and hold no store: {core:?}"
    );
    for krate in ["collector", "router", "web"] {
        let deps = reaches(krate);
        assert!(
            deps.contains("parallax-core"),
            "{krate} should stand on parallax-core: {deps:?}"
        );
        assert!(
            !deps.contains("parallax-replicator") && !deps.contains("redb"),
            "{krate} builds the region store (parallax-replicator, redb) though it only talks to regions: {deps:?}"
        );
    }
}
