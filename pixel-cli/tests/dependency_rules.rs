//! The dependency rules of docs/ARCHITECTURE.md ("Dependency rules"), checked from the member
//! manifests and the sources: crates depend one way, down a fixed order; the tensor-free crates
//! have no dfdx anywhere below them; no module imports a module that imports it back.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Each library crate's layer: a crate depends only on crates of lower layers, so crates of one
/// layer never depend on each other. A new pixel-* crate must be placed here.
const LAYERS: &[(&str, u32)] = &[
    ("pixel-base", 0),
    ("pixel-core", 1),
    ("pixel-metrics", 1),
    ("pixel-render", 1),
    ("pixel-vision", 2),
    ("pixel-lm", 2),
    ("pixel-data", 2),
    ("pixel-train", 2),
    ("pixel-model", 3),
    ("pixel-run", 4),
    ("pixel-cli", 5),
];

/// Crates whose whole dependency closure must be free of dfdx (a project without tensors can
/// use them).
const TENSOR_FREE: &[&str] = &["pixel-base", "pixel-metrics", "pixel-render", "pixel-data"];

struct Member {
    name: String,
    dir: PathBuf,
    /// `[dependencies]` and `[dev-dependencies]` names.
    deps: BTreeSet<String>,
    dev_deps: BTreeSet<String>,
}

fn table_keys(manifest: &toml::Value, key: &str) -> BTreeSet<String> {
    manifest
        .get(key)
        .and_then(|t| t.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

fn members() -> Vec<Member> {
    let root: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    root["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let dir = repo().join(m.as_str().unwrap());
            let manifest: toml::Value =
                toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
            Member {
                name: manifest["package"]["name"].as_str().unwrap().to_string(),
                dir,
                deps: table_keys(&manifest, "dependencies"),
                dev_deps: table_keys(&manifest, "dev-dependencies"),
            }
        })
        .collect()
}

fn layer(name: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let members = members();
    let mut broken = Vec::new();
    for m in members.iter().filter(|m| m.name.starts_with("pixel-")) {
        let Some(own) = layer(&m.name) else {
            // The benches crate is not a library layer; everything else must be placed.
            assert_eq!(m.name, "pixel-benches", "{} has no layer in LAYERS", m.name);
            continue;
        };
        for dep in m.deps.iter().chain(&m.dev_deps) {
            if let Some(theirs) = layer(dep) {
                if theirs >= own {
                    broken.push(format!(
                        "{} (layer {own}) depends on {dep} (layer {theirs})",
                        m.name
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependency rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn nothing_but_binaries_depends_on_the_cli() {
    for m in members() {
        if m.deps.contains("pixel-cli") {
            // Only crates that are a `pixel` command of their own (a user's heads) may.
            assert!(
                m.dir.join("src/main.rs").exists(),
                "{} depends on pixel-cli but is no binary",
                m.name
            );
        }
    }
}

#[test]
fn tensor_free_crates_have_no_dfdx_below_them() {
    let members = members();
    let by_name: BTreeMap<&str, &Member> = members.iter().map(|m| (m.name.as_str(), m)).collect();
    for start in TENSOR_FREE {
        let mut seen = BTreeSet::new();
        let mut todo = vec![*start];
        while let Some(name) = todo.pop() {
            if !seen.insert(name) {
                continue;
            }
            let m = by_name[name];
            assert!(
                !m.deps.contains("dfdx"),
                "{start} reaches dfdx through {name}"
            );
            todo.extend(
                m.deps
                    .iter()
                    .filter_map(|d| by_name.get(d.as_str()).map(|m| m.name.as_str())),
            );
        }
    }
}

/// A module of a crate, as its path from the crate root (`["sam", "config"]`).
type ModPath = Vec<String>;

fn module_files(src: &Path, prefix: &ModPath, out: &mut Vec<(ModPath, PathBuf)>) {
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            let mut sub = prefix.clone();
            sub.push(stem);
            module_files(&path, &sub, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut module = prefix.clone();
            if !["lib", "main", "mod"].contains(&stem.as_str()) {
                module.push(stem);
            }
            out.push((module, path));
        }
    }
}

/// `crate::a::b::...` paths in code (comments and doc comments skipped), as segments.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let path: Vec<String> = after
                .split("::")
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|s| !s.is_empty())
                .collect();
            paths.push(path);
            rest = after;
        }
    }
    paths
}

/// For each module with children, the edges between its children: `a -> b` when code in `a`
/// (or below it) names something in `b` (or below it).
fn sibling_edges(src: &Path) -> BTreeMap<ModPath, BTreeSet<(String, String)>> {
    let mut files = Vec::new();
    module_files(src, &Vec::new(), &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<ModPath, BTreeSet<(String, String)>> = BTreeMap::new();
    for (from, file) in &files {
        for path in crate_paths(&std::fs::read_to_string(file).unwrap()) {
            // The longest prefix of the path that is a module.
            let to = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p))
                .unwrap_or_default();
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common < from.len() && common < to.len() {
                edges
                    .entry(from[..common].to_vec())
                    .or_default()
                    .insert((from[common].clone(), to[common].clone()));
            }
        }
    }
    edges
}

/// One cycle among `edges`, as the modules along it, if there is any.
fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeSet<(String, String)>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node);
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(cycle) = visit(to, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    edges
        .iter()
        .find_map(|(from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut cyclic = BTreeMap::new();
    for m in members() {
        for (parent, edges) in sibling_edges(&m.dir.join("src")) {
            if let Some(cycle) = find_cycle(&edges) {
                let at = if parent.is_empty() {
                    String::new()
                } else {
                    format!("{}::", parent.join("::"))
                };
                cyclic
                    .entry(m.name.clone())
                    .or_insert_with(Vec::new)
                    .push(format!("{at}{}", cycle.join(&format!(" -> {at}"))));
            }
        }
    }
    let cycles: Vec<String> = cyclic
        .iter()
        .map(|(name, cycles)| format!("{name}: {}", cycles.join("; ")))
        .collect();
    assert!(
        cycles.is_empty(),
        "module import cycles:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_cycles_and_only_cycles() {
    let edges = |pairs: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        find_cycle(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])),
        None
    );
    let cycle = find_cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
    assert_eq!(
        crate_paths("use crate::sam::config::X; // crate::not_this\n/// crate::nor_this"),
        vec![vec!["sam".to_string(), "config".into(), "X".into()]]
    );
}
