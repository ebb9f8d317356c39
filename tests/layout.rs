//! The library's modules import one another without circles: one concept per file only helps a
//! reader if the files can be read in an order. Reads `src/` as text, takes every `crate::...`
//! path outside comments and `#[cfg(test)]` code, resolves it to the module it names, and fails
//! with the circle's edges when some module reaches itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`store::redis`) to the source text it imports from.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let name = rel.to_str().unwrap().replace('/', "::");
            if name == "lib" || name == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: Vec<&str> = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            out.insert(name, code.join("\n"));
        }
    }
    out
}

/// The modules `code` names: `crate::a::b::Item` and `crate::a::{b, c::D}`, each resolved to the
/// longest prefix that is a module.
fn imports(code: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut paths = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let head: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let head = head.trim_end_matches(':').to_owned();
        let after = &rest[head.len()..];
        if let Some(group) = after.strip_prefix("::{") {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let part = part.trim();
                if !part.is_empty() {
                    paths.push(format!("{head}::{part}"));
                }
            }
        }
        paths.push(head);
    }
    paths
        .iter()
        .filter_map(|p| {
            let parts: Vec<&str> = p.split("::").collect();
            (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|m| names.contains(m))
        })
        .collect()
}

#[test]
fn no_module_imports_itself_through_others() {
    let modules = modules();
    assert!(modules.contains_key("store::redis"), "read src/");
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let edges: BTreeMap<&String, BTreeSet<String>> = modules
        .iter()
        .map(|(m, code)| {
            let mut to = imports(code, &names);
            // A module's own path and its parents' (`crate::store::Sale` from `store::redis`)
            // are not circles of files.
            to.retain(|t| t != m && !m.starts_with(&format!("{t}::")));
            (m, to)
        })
        .collect();
    let mut circles = Vec::new();
    for start in edges.keys() {
        // Depth-first from `start`, remembering the path, looking for `start` again.
        let mut stack = vec![(start.to_string(), vec![start.to_string()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in &edges[&at] {
                if next == *start {
                    let mut c = path.clone();
                    c.push(next.clone());
                    circles.push(c.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles between modules:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_sees_a_circle() {
    // The check can fail: two modules naming each other are found.
    let names: BTreeSet<String> = ["store::batch", "store::redis", "store"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = "use crate::store::redis::{PoolCell, replicated};\nlet x = crate::store::{batch::Order, Sale};";
    let got = imports(code, &names);
    assert_eq!(
        got,
        ["store", "store::batch", "store::redis"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}
