//! The shape of the crate, kept as it was made: reads every `crate::` path
//! in `src/` and fails on an import against the layer order below, on a
//! tool that reaches into the server, or on any cycle between top-level
//! modules; then reads every `crate::` and `super::` path and fails on a
//! cycle between the files (or folders) of one module, at any depth.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. A module may use modules of its own layer or of any
/// layer below; never one above. The same order is `lib.rs`'s map.
const LAYERS: &[&[&str]] = &[
    &["cli", "app"],
    &["http", "tools"],
    &["session"],
    &["state"],
    &["cluster"],
    &["routing"],
    &[
        "events",
        "telemetry",
        "metrics",
        "error",
        "auth",
        "trace_context",
        "client_address",
        "tls",
        "websocket",
        "protocol",
        "limits",
        "caps",
        "sampling",
        "shutdown",
        "sync",
    ],
];

/// The tools are clients of the server, not parts of it: the protocol, the
/// log line format (`telemetry`'s files, `events`' messages), the secret
/// wrapper for tokens and a TLS client's trust are all they share.
const TOOLS_MAY_USE: &[&str] = &["tools", "protocol", "telemetry", "events", "auth", "tls"];

type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// module → (module it uses → the files and lines that say so).
fn import_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let module = top_module(relative);
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            assert!(
                !code.contains("crate::{"),
                "{}:{}: write one `use crate::module::…` per module, so this test can read it",
                relative.display(),
                number + 1
            );
            for used in crate_paths(code) {
                if used != module {
                    uses.entry(used).or_default().push(format!(
                        "{}:{}",
                        relative.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn top_module(relative: &Path) -> String {
    let first = relative.components().next().unwrap();
    let name = first.as_os_str().to_str().unwrap();
    name.trim_end_matches(".rs").to_string()
}

/// The top-level modules named by `crate::<module>` in one line of code.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| {
            // `wstrace_crate::` or `$crate::` are not this crate's paths.
            let before = code[..*at].chars().next_back();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every way `graph` breaks the rules, as readable lines.
fn violations(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for (module, uses) in graph {
        let Some(layer) = layer_of(module) else {
            found.push(format!(
                "module `{module}` has no layer: add it to LAYERS and lib.rs's map"
            ));
            continue;
        };
        for (used, at) in uses {
            let Some(used_layer) = layer_of(used) else {
                found.push(format!(
                    "`{module}` uses `{used}`, which has no layer ({at:?})"
                ));
                continue;
            };
            if used_layer < layer {
                found.push(format!(
                    "`{module}` (layer {layer}) uses `{used}` (layer {used_layer}, above it) at {at:?}"
                ));
            }
            if module == "tools" && !TOOLS_MAY_USE.contains(&used.as_str()) {
                found.push(format!(
                    "`tools` reaches into the server's `{used}` at {at:?}"
                ));
            }
        }
    }
    found.extend(cycles(graph));
    found
}

/// Cycles between modules, each reported once by the path that closes it.
fn cycles(graph: &Graph) -> Vec<String> {
    fn visit(
        module: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_string());
            found.push(format!("import cycle: {}", cycle.join(" → ")));
            return;
        }
        if done.contains(module) {
            return;
        }
        path.push(module.to_string());
        for used in graph.get(module).into_iter().flat_map(|uses| uses.keys()) {
            visit(used, graph, path, done, found);
        }
        path.pop();
        done.insert(module.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// A file's module path: `src/session/commands/ping.rs` is
/// `session::commands::ping`, `src/session/mod.rs` is `session`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_str().unwrap().to_string())
        .collect();
    let file = path.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" {
        path.push(stem.to_string());
    }
    path
}

/// The statements of a file, a multi-line `use` joined into one, each with
/// its first line's number and whether it sits in an inline module
/// (`mod tests {`), where `super` means the file itself.
fn statements(text: &str) -> Vec<(usize, String, bool)> {
    let mut found = Vec::new();
    let mut inline = false;
    let mut pending: Option<(usize, String)> = None;
    for (number, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        if let Some((start, mut joined)) = pending.take() {
            joined.push_str(code);
            if code.contains(';') {
                found.push((start, joined, inline));
            } else {
                pending = Some((start, joined));
            }
            continue;
        }
        if code.starts_with("mod ") && code.ends_with('{') {
            inline = true;
        }
        if code.starts_with("use ") && !code.contains(';') {
            pending = Some((number, code.to_string()));
        } else {
            found.push((number, code.to_string(), inline));
        }
    }
    found
}

/// The paths one statement names through `crate::` or `super::`, resolved
/// from `module` (the file's module, or its inline module).
fn named_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut paths = Vec::new();
    for (at, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| ident(c) || c == '$' || c == ':') {
            continue;
        }
        let mut base: Vec<String> = Vec::new();
        let mut rest = &code[at..];
        if let Some(after) = rest.strip_prefix("crate::") {
            rest = after;
        } else {
            base = module.to_vec();
            while let Some(after) = rest.strip_prefix("super::") {
                base.pop();
                rest = after;
            }
        }
        let mut prefix = base;
        loop {
            let segment: String = rest.chars().take_while(|c| ident(*c)).collect();
            if segment.is_empty() {
                break;
            }
            rest = &rest[segment.len()..];
            prefix.push(segment);
            match rest.strip_prefix("::") {
                Some(after) => rest = after,
                None => break,
            }
        }
        // `super::{a::B, c}`: each part of the group, one level deep.
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for part in group.split(',') {
                let first: String = part.trim().chars().take_while(|c| ident(*c)).collect();
                let mut path = prefix.clone();
                if !first.is_empty() {
                    path.push(first);
                }
                paths.push(path);
            }
        } else {
            paths.push(prefix);
        }
    }
    paths
}

/// For each module with files or folders of its own (`session`,
/// `session::commands`, …): which of its children uses which, each child
/// standing for everything under it. A child using its parent (the
/// module's `mod.rs`, its interface) is not an edge here; children using
/// each other are.
fn child_graph(src: &Path) -> Graph {
    let files = rust_files(src);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|f| module_path(f.strip_prefix(src).unwrap()))
        .collect();
    let resolve = |path: &[String]| {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains(p))
    };
    let mut graph = Graph::new();
    for file in &files {
        let relative = file.strip_prefix(src).unwrap();
        let from = module_path(relative);
        if from.is_empty() || from == ["main"] || from == ["lib"] {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (number, code, inline) in statements(&text) {
            let mut scope = from.clone();
            if inline {
                scope.push("tests".into());
            }
            for named in named_paths(&code, &scope) {
                let Some(to) = resolve(&named) else { continue };
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                if common == to.len() || common == from.len() {
                    continue; // to an ancestor, or to a descendant
                }
                let (a, b) = (from[..=common].join("::"), to[..=common].join("::"));
                graph
                    .entry(a)
                    .or_default()
                    .entry(b)
                    .or_default()
                    .push(format!("{}:{}", relative.display(), number + 1));
            }
        }
    }
    graph
}

#[test]
fn files_of_a_module_depend_one_way() {
    let src = crate::common::repo_root().join("src");
    let graph = child_graph(&src);
    assert!(
        graph.contains_key("session::reader"),
        "the reader's imports were read: {:?}",
        graph.keys().collect::<Vec<_>>()
    );
    let found = cycles(&graph);
    assert!(found.is_empty(), "file-level cycles:\n{}", found.join("\n"));
}

/// The file-level reader resolves what it is for.
#[test]
fn named_paths_resolve_super_crate_and_groups() {
    let module: Vec<String> = ["session", "commands", "ping"].map(String::from).into();
    let named = named_paths(
        "use super::super::reader::{Gone, Reader}; x = crate::routing::hub::Hub; $crate::no",
        &module,
    );
    let named: Vec<String> = named.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        named,
        [
            "routing::hub::Hub",
            "session::reader::Gone",
            "session::reader::Reader"
        ]
    );
    let text = "use super::{\n    a::X,\n    b,\n};\nmod tests {\n    use super::*;\n}\n";
    let statements = statements(text);
    assert_eq!(statements.len(), 4, "{statements:?}");
    assert_eq!(statements[0].1, "use super::{a::X,b,};");
    assert!(statements[3].2, "inside the inline module");
}

#[test]
fn modules_depend_one_way() {
    let src = crate::common::repo_root().join("src");
    let graph = import_graph(&src);
    assert!(graph.contains_key("session") && graph.contains_key("routing"));
    let found = violations(&graph);
    assert!(
        found.is_empty(),
        "architecture broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_module_is_in_the_map() {
    let lib = std::fs::read_to_string(crate::common::repo_root().join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(module) = line
            .strip_prefix("pub mod ")
            .and_then(|m| m.strip_suffix(';'))
        {
            assert!(layer_of(module).is_some(), "`{module}` has no layer");
            assert!(
                lib.contains(&format!("[`{module}`]")),
                "lib.rs's map does not mention `{module}`"
            );
        }
    }
}

/// The checker itself finds what it is for.
#[test]
fn checker_finds_upward_imports_cycles_and_tools_reaching_in() {
    let graph: Graph = [
        ("routing", vec!["session"]),
        ("session", vec!["routing", "protocol"]),
        ("tools", vec!["state"]),
        ("protocol", vec![]),
    ]
    .into_iter()
    .map(|(module, uses)| {
        let uses = uses
            .into_iter()
            .map(|u| (u.to_string(), vec![format!("src/{module}.rs:1")]))
            .collect();
        (module.to_string(), uses)
    })
    .collect();
    let found = violations(&graph);
    let has = |needle: &str| found.iter().any(|f| f.contains(needle));
    assert!(has("`routing` (layer 5) uses `session`"), "{found:#?}");
    assert!(
        has("import cycle: routing → session → routing"),
        "{found:#?}"
    );
    assert!(
        has("`tools` reaches into the server's `state`"),
        "{found:#?}"
    );
    // session → routing is downward: allowed.
    assert!(
        !found.iter().any(|f| f.starts_with("`session`")),
        "{found:#?}"
    );
    assert_eq!(
        crate_paths("use crate::a::b; x = crate::c::d(); wstrace_crate::e; $crate::f"),
        ["a", "c"]
    );
}
