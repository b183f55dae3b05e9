//! One direction of imports inside each crate of the workspace: no two
//! modules of a crate refer to each other (`crate::` and `super::` paths in
//! code; comments and test modules do not count), so that each crate reads
//! from its lower layers up. A parent module and its own children are left
//! out: a parent declares what its children share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const CRATES: [&str; 8] = [
    "net", "gateway", "cluster", "shards", "broker", "client", "tests", "bench",
];

/// Every module of the crate whose sources are under `src`, by path
/// (`connection::setup`; the crate root is ""), with its code: comment
/// lines and the test module left out.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|last| last == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] || parts.first().is_some_and(|p| p == "bin") {
                parts.clear();
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            found.insert(parts.join("::"), code);
        }
    }
    found
}

/// The identifiers of the path that starts at `text`: `a::b::c`.
fn path_at(text: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        segments.push(&rest[..len]);
        match rest[len..].strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    segments
}

/// The longest prefix of `path` that names a module.
fn module_of(path: &[&str], all: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|len| path[..len].join("::"))
        .find(|candidate| all.contains_key(candidate))
}

/// The other modules `module`'s code refers to.
fn references(module: &str, code: &str, all: &BTreeMap<String, String>) -> BTreeSet<String> {
    let parent: Vec<&str> = module.split("::").filter(|part| !part.is_empty()).collect();
    let parent = &parent[..parent.len().saturating_sub(1)];
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        found.extend(module_of(&path_at(&code[at + "crate::".len()..]), all));
    }
    for (at, _) in code.match_indices("super::") {
        let rest = &code[at + "super::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `super::{a, b::C}`: each first name.
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let mut path = parent.to_vec();
                path.extend(path_at(item.trim()));
                found.extend(module_of(&path, all));
            }
        } else {
            let mut path = parent.to_vec();
            path.extend(path_at(rest));
            found.extend(module_of(&path, all));
        }
    }
    found.remove(module);
    found
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut circles = Vec::new();
    for krate in CRATES {
        let all = modules(&root.join(krate).join("src"));
        assert!(!all.is_empty(), "{krate} has sources");
        let refs: BTreeMap<&String, BTreeSet<String>> = all
            .iter()
            .map(|(module, code)| (module, references(module, code, &all)))
            .collect();
        for (a, to) in &refs {
            for b in to {
                let related = a.is_empty()
                    || b.is_empty()
                    || b.starts_with(&format!("{a}::"))
                    || a.starts_with(&format!("{b}::"));
                if !related && a.as_str() < b.as_str() && refs[b].contains(a.as_str()) {
                    circles.push(format!("{krate}: {a} <-> {b}"));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "modules that import each other (make one the lower layer): {circles:#?}"
    );
}

#[test]
fn the_check_sees_a_circle() {
    let all: BTreeMap<String, String> = [
        ("a".to_string(), "use crate::b::Thing;".to_string()),
        ("b".to_string(), "fn f() { crate::a::g() }".to_string()),
        ("c::d".to_string(), "use super::{e, f::G};".to_string()),
        ("c::e".to_string(), String::new()),
        ("c".to_string(), String::new()),
    ]
    .into_iter()
    .collect();
    assert!(references("a", &all["a"], &all).contains("b"));
    assert!(references("b", &all["b"], &all).contains("a"));
    assert!(references("c::d", &all["c::d"], &all).contains("c::e"));
    assert!(references("c::e", &all["c::e"], &all).is_empty());
}
