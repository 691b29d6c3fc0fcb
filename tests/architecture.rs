//! The absence-invariants of ARCHITECTURE.md that a machine can check: which crate may not
//! depend on which, and which crates may read the environment or print. A change that breaks
//! one fails here, and either the change or ARCHITECTURE.md is wrong.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use concepts_tests::{code_lines, rust_files, Graph};

fn graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(Graph::load)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Crates that are model code, or the sandbox.
const MODEL: &[&str] = &["candle-", "tokenizers"];
const SANDBOX: &[&str] = &["wasmtime", "libloading"];

#[test]
fn fs_depends_on_nothing_of_the_house() {
    assert_eq!(graph().house_deps("concepts-fs"), BTreeSet::new());
}

#[test]
fn the_format_knows_no_model_no_sandbox_and_no_registry() {
    let g = graph();
    assert_eq!(g.reaches("concept-format", MODEL), Vec::<String>::new());
    assert_eq!(g.reaches("concept-format", SANDBOX), Vec::<String>::new());
    assert_eq!(g.house_deps("concept-format"), set(&["concepts-fs"]));
}

#[test]
fn the_registry_runs_no_inference() {
    let g = graph();
    assert_eq!(g.reaches("concept-registry", MODEL), Vec::<String>::new());
    assert_eq!(
        g.house_deps("concept-registry"),
        set(&["concept-format", "concepts-fs"])
    );
}

#[test]
fn the_oci_client_moves_bytes_and_knows_no_model_and_no_registry() {
    let g = graph();
    assert_eq!(g.reaches("concepts-oci", MODEL), Vec::<String>::new());
    assert_eq!(
        g.house_deps("concepts-oci"),
        set(&["concept-format", "concepts-fs"])
    );
}

#[test]
fn runtime_and_registry_are_siblings() {
    let g = graph();
    assert!(!g
        .house_deps("concepts-runtime")
        .contains("concept-registry"));
    assert!(!g
        .house_deps("concept-registry")
        .contains("concepts-runtime"));
    assert_eq!(g.reaches("concepts-runtime", SANDBOX), Vec::<String>::new());
}

#[test]
fn the_toy_world_knows_nothing_about_models() {
    // Its own word-level tokenizer is a `tokenizers` one; no tensor code.
    let g = graph();
    assert_eq!(g.reaches("toy-world", &["candle-"]), Vec::<String>::new());
    assert_eq!(g.house_deps("toy-world"), BTreeSet::new());
}

#[test]
fn a_plugin_author_gets_no_engine() {
    // The SDK is what third parties compile to wasm: the record types and nothing heavy.
    let g = graph();
    for krate in ["concepts-plugin-api", "concepts-plugin-sdk"] {
        assert_eq!(g.reaches(krate, MODEL), Vec::<String>::new(), "{krate}");
        assert_eq!(g.reaches(krate, SANDBOX), Vec::<String>::new(), "{krate}");
    }
    assert_eq!(
        g.house_deps("concepts-plugin-sdk"),
        set(&["concepts-plugin-api"])
    );
    // The plugin host knows the stages, not the model or the packages.
    let host = g.house_deps("concepts-plugin-host");
    assert!(
        host.iter().all(|d| d.starts_with("concepts-plugin")
            || d.starts_with("concepts-default-")
            || d == "concepts-fs"),
        "{host:?}"
    );
}

#[test]
fn the_server_and_the_bindings_are_edges() {
    // Nothing of the house below the edges depends on them.
    let g = graph();
    for name in g.members().keys() {
        let deps = g.house_deps(name);
        for edge in ["concepts-cli", "concepts-server", "concepts-embed"] {
            let allowed = match edge {
                "concepts-server" => [
                    "concepts-cli",
                    "concepts-embed",
                    "concepts-python",
                    "concepts-c",
                ]
                .contains(&name.as_str()),
                "concepts-embed" => ["concepts-python", "concepts-c"].contains(&name.as_str()),
                _ => false,
            };
            assert!(
                !deps.contains(edge) || allowed,
                "`{name}` depends on the edge `{edge}`"
            );
        }
    }
}

/// Crates that may read the environment and print: the binary and the bindings' facade.
const EDGES: &[&str] = &[
    "concepts-cli",
    "concepts-embed",
    "concepts-python",
    "concepts-c",
    // The test support of this folder asks Cargo where things are.
    "concepts-tests",
];

#[test]
fn only_the_edges_read_the_environment_or_print() {
    let mut found = Vec::new();
    for (name, dir) in graph().members() {
        if EDGES.contains(&name.as_str()) {
            continue;
        }
        for file in rust_files(&dir.join("src")) {
            // A crate's own `src/bin/` tools are edges of their own.
            if file.components().any(|c| c.as_os_str() == "bin") {
                continue;
            }
            for (line, text) in code_lines(&file) {
                let reads_env = text.contains("env::var") || text.contains("env::args");
                let prints = ["println!", "eprintln!", "print!(", "eprint!(", "dbg!("]
                    .iter()
                    .any(|m| text.contains(m));
                if reads_env || prints {
                    found.push(format!("{}:{line}: {}", file.display(), text.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "library code reads the environment or prints:\n{}",
        found.join("\n")
    );
}
