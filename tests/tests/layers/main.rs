//! The layering of the `shared` crate, read from its sources: no cycle between its top-level
//! modules, and the domain, the stages and the local engine never name an adapter (a store
//! or bus implementation, the Bedrock adapter, an SDK or driver crate). Test code (`tests.rs`,
//! `testing.rs`, inline `#[cfg(test)] mod`) is left out: tests may wire anything. See
//! `docs/architecture.md`, "Layers and ports".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that hold the product's rules and must stay free of adapters.
const PURE: [&str; 3] = ["domain", "stages", "engine"];

/// What an adapter is named by: its module path, or the crate it is built on.
const ADAPTERS: [&str; 10] = [
    "crate::store::dynamo",
    "crate::store::sqlite",
    "crate::store::memory",
    "crate::bus::aws",
    "crate::bus::local",
    "crate::llm::bedrock",
    "aws_sdk_",
    "rusqlite",
    "hyper",
    "lambda_runtime",
];

/// One reference from a source line: the file and line it is on.
#[derive(Debug, Clone)]
struct At {
    file: String,
    line: usize,
    text: String,
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the shared sources") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The product code of a source file: its lines up to an inline test module, comments cut.
fn product_lines(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let next_is_mod = lines
            .get(i + 1)
            .is_some_and(|next| next.trim_start().starts_with("mod "));
        if line.trim_start().starts_with("#[cfg(test)]") && next_is_mod {
            break;
        }
        let code = line.split("//").next().unwrap_or_default();
        out.push((i + 1, code.to_owned()));
    }
    out
}

/// `crate::<module>` references of one line.
fn crate_refs(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .filter(|m: &String| !m.is_empty())
        .collect()
}

struct Graph {
    edges: BTreeMap<String, BTreeMap<String, At>>,
    adapters_named: Vec<(String, At)>,
}

fn graph() -> Graph {
    let root = tests::bins::workspace_root().join("shared").join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut graph = Graph {
        edges: BTreeMap::new(),
        adapters_named: Vec::new(),
    };
    for path in files {
        let relative = path
            .strip_prefix(&root)
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if relative == "lib.rs" || name == "tests.rs" || name == "testing.rs" {
            continue;
        }
        let module = relative
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&path).expect("a source file");
        for (line, code) in product_lines(&text) {
            let at = At {
                file: relative.clone(),
                line,
                text: code.trim().to_owned(),
            };
            for target in crate_refs(&code) {
                if target != module {
                    graph
                        .edges
                        .entry(module.clone())
                        .or_default()
                        .entry(target)
                        .or_insert_with(|| at.clone());
                }
            }
            if PURE.contains(&module.as_str()) && ADAPTERS.iter().any(|a| code.contains(a)) {
                graph.adapters_named.push((module.clone(), at.clone()));
            }
        }
    }
    graph
}

/// A cycle through `start`, as the modules on it, if there is one.
fn cycle_from(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("never empty");
        for next in graph.edges.get(last).into_iter().flat_map(BTreeMap::keys) {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_two_top_level_modules_depend_on_each_other() {
    let graph = graph();
    assert!(
        graph.edges.len() > 8,
        "the scan found the modules: {:?}",
        graph.edges.keys()
    );
    for module in graph.edges.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let at = &graph.edges[&w[0]][&w[1]];
                    format!(
                        "{} -> {} ({}:{}: {})",
                        w[0], w[1], at.file, at.line, at.text
                    )
                })
                .collect();
            panic!(
                "module cycle {}:\n  {}",
                cycle.join(" -> "),
                steps.join("\n  ")
            );
        }
    }
}

#[test]
fn the_domain_the_stages_and_the_engine_name_no_adapter() {
    let graph = graph();
    let named: Vec<String> = graph
        .adapters_named
        .iter()
        .map(|(module, at)| format!("{module}: {}:{}: {}", at.file, at.line, at.text))
        .collect();
    assert!(named.is_empty(), "adapters named:\n{}", named.join("\n"));
}

#[test]
fn the_scan_sees_a_cycle_and_an_adapter_when_there_is_one() {
    // The checks themselves, on lines like the ones they guard against.
    assert_eq!(
        crate_refs("use crate::store::{A, B}; let x = crate::llm::f();"),
        ["store", "llm"]
    );
    assert!(product_lines("use a;\n#[cfg(test)]\nmod tests {\n use crate::x;\n}").len() == 1);
    let at = At {
        file: "x.rs".into(),
        line: 1,
        text: String::new(),
    };
    let mut graph = Graph {
        edges: BTreeMap::new(),
        adapters_named: Vec::new(),
    };
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a")] {
        graph
            .edges
            .entry(from.into())
            .or_default()
            .insert(to.into(), at.clone());
    }
    assert_eq!(
        cycle_from(&graph, "a").expect("a cycle"),
        ["a", "b", "c", "a"]
    );
    graph.edges.get_mut("c").expect("c").clear();
    assert_eq!(cycle_from(&graph, "a"), None);
}
