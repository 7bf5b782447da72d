//! The crate's module graph, read from its sources: no `use` cycle between modules, and
//! the arrows point one way — the contract, layouts, packed input, epilogue and budget
//! import nothing from the micro-kernels (`arch`) or the driver and dispatch, and the
//! micro-kernels import only those. `--nocapture` prints the graph.
//!
//! ```text
//! cargo test -p kestrel-kernels --test module_graph -- --nocapture
//! ```
//!
//! An edge is a path `crate::a::b…` (or `super::…`) in a file's code, outside comments
//! and its trailing `#[cfg(test)] mod tests`, resolved to the deepest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Module path (`conv::layout::blocks4`, `""` for the crate root) → source text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("src directory")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if name != "mod" && name != "lib" {
                    p.push(name);
                }
                out.insert(p.join("::"), fs::read_to_string(&path).expect("source"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut out,
    );
    out
}

/// The code of a file: comments removed, and its trailing unit tests.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path a file names: `crate::x::y`, `crate::x::{a, b}`, `super::z`.
fn named_paths(module: &str, code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let parent: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    for (root, base) in [
        ("crate::", Vec::new()),
        ("super::", parent[..parent.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            // `crate::` inside an identifier (`kestrel_kernels::crate::`) cannot occur;
            // skip a preceding `::` (a longer path) or identifier character.
            let before = rest[..at].chars().last();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
                .unwrap_or(rest.len());
            let path = &rest[..end];
            let mut segments: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            if let Some(open) = path.find('{') {
                let prefix = path[..open].trim_end_matches(':');
                segments.extend(
                    prefix
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                );
                let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
                for item in rest[open + 1..close].split(',') {
                    let item = item.trim().split(" as ").next().unwrap_or("").trim();
                    let mut full = segments.clone();
                    full.extend(item.split("::").filter(|s| !s.is_empty()).map(String::from));
                    found.push(full.join("::"));
                }
            } else {
                segments.extend(path.split("::").filter(|s| !s.is_empty()).map(String::from));
                found.push(segments.join("::"));
            }
        }
    }
    found
}

/// The deepest known module a path names.
fn resolve(path: &str, known: &BTreeSet<String>) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| known.contains(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = modules();
    let known: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(module, text)| {
            let targets = named_paths(module, &code(text))
                .iter()
                .filter_map(|p| resolve(p, &known))
                .filter(|t| t != module)
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

fn is_under(module: &str, root: &str) -> bool {
    module == root || module.starts_with(&format!("{root}::"))
}

/// A cycle through the graph, if any, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for t in graph.get(m).into_iter().flatten() {
            match state.get(t.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == t).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(t.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(t, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(m, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// What the conv contract, the wide kernels' contract and their data modules are.
const FOUNDATION: [&str; 10] = [
    "conv::contract",
    "conv::winograd",
    "conv::params",
    "conv::layout",
    "conv::input",
    "conv::epilogue",
    "conv::budget",
    "quant",
    "window",
    "wide::contract",
];

#[test]
fn the_module_graph_has_no_cycle_and_points_one_way() {
    let graph = graph();
    for (m, targets) in &graph {
        let name = if m.is_empty() { "(crate)" } else { m };
        let list: Vec<&str> = targets.iter().map(String::as_str).collect();
        println!("{name} -> {}", list.join(", "));
    }
    // A graph read wrongly (no edges) would pass everything below.
    assert!(graph["conv::drive"].contains("conv::input"));
    assert!(graph["conv::dispatch"].contains("conv::drive"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("use cycle: {}", cycle.join(" -> "));
    }
    println!("no cycle among {} modules", graph.len());
    for (m, targets) in &graph {
        let foundation = FOUNDATION.iter().any(|f| is_under(m, f));
        for t in targets {
            if foundation {
                assert!(
                    !is_under(t, "arch")
                        && !is_under(t, "conv::drive")
                        && !is_under(t, "conv::dispatch"),
                    "{m} (contract, layout, input, epilogue or budget) imports {t}"
                );
            }
            if is_under(m, "arch") {
                let allowed = FOUNDATION.iter().any(|f| is_under(t, f))
                    || is_under(t, "arch")
                    || t == "conv::kernel"
                    || t == "conv::tiles";
                assert!(allowed, "micro-kernel module {m} imports {t}");
            }
        }
    }
}

#[test]
fn paths_resolve_to_the_modules_they_name() {
    let known: BTreeSet<String> = ["conv", "conv::layout", "conv::layout::blocks4", "quant"]
        .into_iter()
        .map(String::from)
        .collect();
    let code = "use crate::conv::layout::{blocks4, Shape};\nlet x = crate::quant::finish(1);";
    let got: BTreeSet<String> = named_paths("conv::input", code)
        .iter()
        .filter_map(|p| resolve(p, &known))
        .collect();
    let want: BTreeSet<String> = ["conv::layout", "conv::layout::blocks4", "quant"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        named_paths("conv::layout::blocks4", "super::Shape"),
        vec!["conv::layout::Shape".to_string()]
    );
}
