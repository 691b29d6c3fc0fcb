//! Where the workspace is, and its dependency graph as Cargo resolves it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the folder above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The resolved dependency graph of this platform, normal and build dependencies only (what a
/// crate carries into its users; dev-dependencies are the tests' business).
pub struct Graph {
    /// Package name → names of its direct normal and build dependencies.
    deps: BTreeMap<String, BTreeSet<String>>,
    /// The workspace's own packages: name → folder.
    members: BTreeMap<String, PathBuf>,
}

impl Graph {
    /// Runs `cargo metadata` (offline: everything is in `Cargo.lock` and the local cache).
    pub fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let host = host_triple(&cargo);
        let out = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", &host])
            .current_dir(workspace_root())
            .output()
            .expect("running cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
        let packages = meta["packages"].as_array().expect("packages");
        let name_of: BTreeMap<&str, &str> = packages
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let member_ids: BTreeSet<&str> = meta["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .map(|id| id.as_str().unwrap())
            .collect();
        let members = packages
            .iter()
            .filter(|p| member_ids.contains(p["id"].as_str().unwrap()))
            .map(|p| {
                let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
                let dir = manifest.parent().unwrap().to_path_buf();
                (p["name"].as_str().unwrap().to_string(), dir)
            })
            .collect();
        let mut deps = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve") {
            let name = name_of[node["id"].as_str().unwrap()].to_string();
            let carried = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].as_str() != Some("dev"))
                })
                .map(|d| name_of[d["pkg"].as_str().unwrap()].to_string());
            deps.entry(name)
                .or_insert_with(BTreeSet::new)
                .extend(carried);
        }
        Graph { deps, members }
    }

    /// The workspace's own packages: name → folder.
    pub fn members(&self) -> &BTreeMap<String, PathBuf> {
        &self.members
    }

    /// The workspace's own packages that `name` depends on, directly or not.
    pub fn house_deps(&self, name: &str) -> BTreeSet<String> {
        self.closure(name)
            .into_iter()
            .filter(|d| self.members.contains_key(d))
            .collect()
    }

    /// Every package `name` depends on, directly or not.
    pub fn closure(&self, name: &str) -> BTreeSet<String> {
        assert!(self.deps.contains_key(name), "no package `{name}`");
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(next) = todo.pop() {
            for dep in self.deps.get(&next).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    todo.push(dep.clone());
                }
            }
        }
        seen
    }

    /// The dependencies of `name` (direct or not) whose names start with any of `prefixes`.
    pub fn reaches(&self, name: &str, prefixes: &[&str]) -> Vec<String> {
        self.closure(name)
            .into_iter()
            .filter(|d| prefixes.iter().any(|p| d.starts_with(p)))
            .collect()
    }
}

fn host_triple(cargo: &str) -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .unwrap_or_else(|e| panic!("running rustc -vV (for {cargo} metadata): {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// The `.rs` files under `dir`, recursively.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The lines of a Rust file that are code: `//` comments (doc comments included) and
/// `#[cfg(test)]` modules at the end of the file are left out.
pub fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        lines.push((i + 1, line.to_string()));
    }
    lines
}
