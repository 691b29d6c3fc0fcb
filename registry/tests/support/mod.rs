//! Shared helpers for the registry tests: packages built in memory, registry snapshots.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use concept_format::{Category, ConceptPackage, ConceptTensors, DType, Manifest, ModelFingerprint};
use concept_registry::{InstallOptions, Registry};

pub const KEEP: InstallOptions = InstallOptions {
    replace: false,
    force: false,
};
pub const REPLACE: InstallOptions = InstallOptions {
    replace: true,
    force: false,
};

pub const D: usize = 8;

pub fn fingerprint() -> ModelFingerprint {
    ModelFingerprint {
        architecture: "toy/llava-tiny".into(),
        hidden_size: D as u64,
        vocab_size: 1000,
        tokenizer_sha256: "0".repeat(64),
        embed_sha256: "1".repeat(64),
        lm_head_sha256: "2".repeat(64),
    }
}

/// A valid package named `name` with identifier `<ident>`; `seed` varies the tensor values, so
/// different seeds give different bytes.
pub fn package_with(name: &str, ident: &str, seed: u32, base_model: ModelFingerprint) -> Vec<u8> {
    let k = 2;
    let v = |offset: usize, len: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i + offset) as f32 + seed as f32) / 16.0)
            .collect()
    };
    let tensors =
        ConceptTensors::from_f32(DType::F32, k, D, v(0, D), v(D, k * D), v(3 * D, D)).unwrap();
    let manifest = Manifest {
        name: name.into(),
        identifier: format!("<{ident}>"),
        display_name: name.to_uppercase(),
        category: Category::Pet,
        k: k as u32,
        d: D as u32,
        dtype: DType::F32,
        base_model,
        prompt_template: "llava_v1/yollava-1".into(),
        provenance: None,
        user_facts: vec![],
        relations: vec![],
        license: "CC-BY-4.0".into(),
        created: "2025-05-03T12:00:00Z".into(),
        body_sha256: String::new(),
        ext: Default::default(),
    };
    ConceptPackage::new(manifest, tensors).unwrap().to_bytes()
}

pub fn package(name: &str, seed: u32) -> Vec<u8> {
    package_with(name, name, seed, fingerprint())
}

/// Writes `bytes` to `dir/file_name` and returns the path.
pub fn write(dir: &Path, file_name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(file_name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `name identifier sha256-prefix` for every installed concept, sorted by name.
pub fn installed(registry: &Registry) -> Vec<String> {
    registry
        .list()
        .unwrap()
        .iter()
        .map(|e| format!("{} {} {}", e.name, e.identifier, e.sha256.short()))
        .collect()
}

/// `name identifier sha256-prefix` for a package's bytes, as `installed` renders it.
pub fn line(name: &str, bytes: &[u8]) -> String {
    let digest = concept_registry::Digest::of(bytes);
    format!("{name} <{name}> {}", digest.short())
}

/// Relative paths of every file under the registry root except the lock file, sorted.
pub fn files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel != "registry.lock" {
                    out.push(rel);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

pub fn blob_file(bytes: &[u8]) -> String {
    format!(
        "blobs/sha256/{}.ycpt",
        concept_registry::Digest::of(bytes).as_hex()
    )
}
