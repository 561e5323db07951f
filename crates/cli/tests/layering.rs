//! In every crate of the workspace, the modules of `src/` depend one way: no
//! import circle among them, nor among the files of any directory module.
//!
//! A module is a file of `src/` (a directory, such as `store/`, counts as one
//! module). It depends on module `m` where its code (comments aside) names
//! `crate::m` (in a `use` or a path), or names through `crate::X` or
//! `use crate::{X, ..}` an item the crate root re-exports from `m`. Run with
//! `--nocapture` to see the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of a file without its comments (doc links are not imports).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names following each `crate::` in `code`: `crate::a::b` gives `a`,
/// `crate::{a, b::c}` gives `a` and `b`.
fn crate_paths(code: &str) -> Vec<String> {
    paths_after(code, "crate::")
}

/// The names following each `prefix` (a path ending in `::`) in `code`.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].ends_with(|c: char| is_ident(c) || c == ':') {
            continue; // e.g. `my_crate::`, or `x::crate::` (not a path start)
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            out.push(name);
        }
    }
    out
}

/// Items the crate root re-exports, by the module they come from
/// (`pub use m::{A, B};`, `pub use m::A;`, and the same with `pub(crate)`).
fn root_exports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let lib = code(lib);
    for stmt in lib.split(';') {
        let stmt = stmt.trim();
        let Some(path) = stmt
            .strip_prefix("pub use ")
            .or_else(|| stmt.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.trim().rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                map.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    map
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module of `dir` that `file` belongs to: its first path component below
/// `dir`, without `.rs` (a file `a.rs` or anything under `a/` is `a`).
fn module_of(dir: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(dir).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

fn graph(src: &Path) -> Graph {
    let root = ["lib.rs", "main.rs"]
        .iter()
        .map(|r| src.join(r))
        .find(|p| p.exists())
        .unwrap();
    let lib = std::fs::read_to_string(root).unwrap();
    let exports = root_exports(&lib);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(src, f))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut g: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap();
        let me = module_of(src, f);
        if me == "lib" || me == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for name in crate_paths(&code(&text)) {
            let to = if modules.contains(&name) {
                name
            } else if let Some(m) = exports.get(&name) {
                m.clone()
            } else {
                panic!(
                    "{}: crate::{name} is neither a module nor a root re-export",
                    rel.display()
                );
            };
            if to != me {
                g.get_mut(&me).unwrap().insert(to);
            }
        }
    }
    g
}

/// The graph among the files of directory module `dir` (`src/a/b/`, named
/// `crate::a::b` in paths): a file depends on a sibling it names through
/// `super::` (from a direct child) or `crate::a::b::`, or on the sibling an item
/// it names that way is re-exported from by `mod.rs`. `mod.rs` is the node `mod`.
fn dir_graph(dir: &Path, path: &str) -> Graph {
    let root = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
    let exports = root_exports(&root);
    let mut siblings = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if p.is_dir() {
            siblings.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            siblings.insert(if stem == "mod" {
                "mod".into()
            } else {
                stem.into()
            });
        }
    }
    let mut g: Graph = siblings
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    for f in &files {
        let rel = f.strip_prefix(dir).unwrap();
        let me = module_of(dir, f);
        let text = code(&std::fs::read_to_string(f).unwrap());
        // In a file's `mod tests`, `super::` is that file, not its parent.
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        let mut names = paths_after(&text, &format!("crate::{path}::"));
        if rel.components().count() == 1 && me != "mod" {
            names.extend(paths_after(&text, "super::"));
        }
        if me == "mod" {
            // The parent's own uses of its children; re-exporting one is not
            // using it.
            let used: String = text
                .split(';')
                .filter(|stmt| {
                    let stmt = stmt.trim_start();
                    !stmt.starts_with("pub use ") && !stmt.starts_with("pub(crate) use ")
                })
                .collect::<Vec<_>>()
                .join(";");
            for sib in siblings.iter().filter(|s| *s != "mod") {
                let named = paths_after(&format!(" {used}"), &format!("{sib}::"));
                if !named.is_empty() || used.contains(&format!("self::{sib}::")) {
                    names.push(sib.clone());
                }
            }
        }
        for name in names {
            let to = if siblings.contains(&name) && name != "mod" {
                name
            } else if let Some(m) = exports.get(&name) {
                m.clone()
            } else {
                "mod".to_string()
            };
            if to != me && g.contains_key(&to) {
                g.get_mut(&me).unwrap().insert(to);
            }
        }
    }
    g
}

/// Every directory module under `src`, with its path (`a::b`).
fn dir_modules(src: &Path, prefix: &str, out: &mut Vec<(std::path::PathBuf, String)>) {
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && p.join("mod.rs").exists() {
            let name = p.file_name().unwrap().to_str().unwrap();
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}::{name}")
            };
            dir_modules(&p, &path, out);
            out.push((p, path));
        }
    }
}

/// A cycle of `g`, if it has one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        g: &'a Graph,
        n: &'a str,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|&p| p == n).unwrap();
                let mut c: Vec<String> = path[from..].iter().map(|s| s.to_string()).collect();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        for m in &g[n] {
            if let Some(c) = visit(g, m, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(g, n, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_circle_among_its_modules() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names: Vec<_> = std::fs::read_dir(&crates)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "found only {names:?}");
    for krate in names {
        let g = graph(&krate.join("src"));
        println!("{}:", krate.file_name().unwrap().to_string_lossy());
        for (m, deps) in &g {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            println!("  {m:14} -> {}", deps.join(", "));
        }
        if let Some(c) = find_cycle(&g) {
            panic!("{}: import circle: {}", krate.display(), c.join(" -> "));
        }
        let mut dirs = Vec::new();
        dir_modules(&krate.join("src"), "", &mut dirs);
        for (dir, path) in dirs {
            let g = dir_graph(&dir, &path);
            println!("  {path}/:");
            for (m, deps) in &g {
                let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                println!("    {m:12} -> {}", deps.join(", "));
            }
            if let Some(c) = find_cycle(&g) {
                panic!("{}: import circle: {}", dir.display(), c.join(" -> "));
            }
        }
    }
}

#[test]
fn the_check_finds_a_circle_and_reads_grouped_imports() {
    let paths = crate_paths(&code(
        "use crate::{a, b::C};\nlet x = crate::d::f(); // crate::e\nuse my_crate::g;",
    ));
    assert_eq!(paths, ["a", "b", "d"]);
    let mut g = Graph::new();
    for (m, deps) in [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ] {
        g.insert(m.into(), deps.into_iter().map(String::from).collect());
    }
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}
