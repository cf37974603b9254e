//! The layout rules of the agent and the processor (docs/ARCHITECTURE.md), checked on their
//! source: the stage folders of a crate form no import circle, and no file in a stage folder
//! reaches for what wires the stages (`config`, `run`, `server`, `cli`), so each stage can be
//! read, tested and moved on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that wire the stages together; stages may not import them.
const WIRING: [&str; 4] = ["config", "run", "server", "cli"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (doc links name modules too) and string literals.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// The top-level modules a file names through `crate::`, including `use crate::{a, b}`.
fn crate_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(ident(item.trim()));
                        item.clear();
                    }
                    _ => item.push(c),
                }
            }
            out.extend(ident(item.trim()));
        } else {
            out.extend(ident(rest));
        }
    }
    out
}

fn ident(s: &str) -> Option<String> {
    let name: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Per stage folder of `src`, the other stage folders its files import.
fn folder_graph(src: &Path) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let folders: BTreeSet<String> = std::fs::read_dir(src)
        .expect("source folder")
        .filter_map(|e| {
            let path = e.ok()?.path();
            path.is_dir()
                .then(|| path.file_name()?.to_str().map(str::to_string))?
        })
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wiring = Vec::new();
    for folder in &folders {
        let mut files = Vec::new();
        rust_files(&src.join(folder), &mut files);
        let edges = graph.entry(folder.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for module in crate_modules(&code(&text)) {
                if folders.contains(&module) && &module != folder {
                    edges.insert(module.clone());
                }
                if folder != "cli" && WIRING.contains(&module.as_str()) {
                    wiring.push(format!(
                        "{} names crate::{module}",
                        file.strip_prefix(repo()).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    (graph, wiring)
}

/// A circle in `graph`, as the path that closes it, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut found = path[i..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_stage_folders_of_the_agent_and_the_processor_form_no_import_circle() {
    for krate in ["agent", "processor"] {
        let (graph, _) = folder_graph(&repo().join(krate).join("src"));
        assert!(
            graph.len() >= 6,
            "{krate}: stage folders not found: {graph:?}"
        );
        if let Some(c) = circle(&graph) {
            panic!(
                "{krate}: the stage folders import each other in a circle: {}",
                c.join(" -> ")
            );
        }
    }
}

#[test]
fn no_stage_imports_the_modules_that_wire_the_stages() {
    for krate in ["agent", "processor"] {
        let (_, wiring) = folder_graph(&repo().join(krate).join("src"));
        assert!(wiring.is_empty(), "{krate}:\n{}", wiring.join("\n"));
    }
}

#[test]
fn the_checks_see_circles_groups_and_ignore_comments() {
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(circle(&graph).map(|c| c.join(" ")), Some("a b c a".into()));
    let text = "use crate::{lake::x, land};\n/// see [`crate::cli`]\nlet s = \"crate::run\"; crate::sink::f();";
    assert_eq!(
        crate_modules(&code(text)),
        BTreeSet::from(["lake".into(), "land".into(), "sink".into()])
    );
}
