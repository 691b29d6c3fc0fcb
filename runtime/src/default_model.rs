//! The embedded default base model.
//!
//! The toy LLaVA the project pretrains is committed under `models/toy-llava/` (llava-hf
//! layout, about 5 MB) and compiled into every binary that can fall back to it, so an
//! installed `concepts` works after its checkout moved or was deleted. The runtime loads
//! models from folders (the weights are memory-mapped), so on first use the embedded files
//! are written, atomically, to `<home>/models/toy-llava-<digest>/toy-llava/` (the last
//! component is what the runtime reports as the model's id); later uses find them there. This module reads no environment variable: the edges resolve
//! `CONCEPTS_DEFAULT_MODEL` and the home folder and pass them in.

use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// The committed default model folder, relative to the workspace root.
pub const DEFAULT_MODEL_RELATIVE: &str = "models/toy-llava";

/// The files of the embedded model: what loading, training and the recognition templates
/// read (the training log stays in the source tree).
const EMBEDDED: &[(&str, &[u8])] = &[
    (
        "config.json",
        include_bytes!("../../models/toy-llava/config.json"),
    ),
    (
        "preprocessor_config.json",
        include_bytes!("../../models/toy-llava/preprocessor_config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../models/toy-llava/tokenizer.json"),
    ),
    (
        "concepts_templates.json",
        include_bytes!("../../models/toy-llava/concepts_templates.json"),
    ),
    (
        "eval.json",
        include_bytes!("../../models/toy-llava/eval.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../models/toy-llava/model.safetensors"),
    ),
];

/// The committed model folder in this source tree, for the tests and benchmarks of the
/// workspace. Programs use [`default_model_dir`], which does not need the source tree.
pub fn checkout_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_MODEL_RELATIVE)
}

/// The default model folder: `override_dir` (e.g. from `CONCEPTS_DEFAULT_MODEL`) if given,
/// which must hold a `config.json`; else the embedded model, written under `home` on first
/// use ([`embedded_model_dir`]).
pub fn default_model_dir(override_dir: Option<&Path>, home: &Path) -> Result<PathBuf> {
    match override_dir {
        Some(dir) if dir.join("config.json").is_file() => Ok(dir.to_path_buf()),
        Some(dir) => Err(RuntimeError::InvalidInput(format!(
            "the default base model `{}` (CONCEPTS_DEFAULT_MODEL) has no config.json; point it \
             at a llava-hf model folder, unset it for the embedded toy model, or pass --model DIR",
            dir.display()
        ))),
        None => embedded_model_dir(home),
    }
}

/// The embedded model as a folder under `home`: `<home>/models/toy-llava-<digest>/toy-llava/`, written
/// on first use. Each file is written atomically into a staging folder that is then renamed
/// into place, so a folder of that name is always complete; processes racing to write it
/// agree on the same bytes, and the loser removes its staging copy.
pub fn embedded_model_dir(home: &Path) -> Result<PathBuf> {
    let digest = embedded_digest();
    let models = home.join("models");
    let root = models.join(format!("toy-llava-{digest}"));
    let dir = root.join("toy-llava");
    if is_complete(&dir) {
        return Ok(dir);
    }
    let io = |action: &str, path: &Path, e: std::io::Error| {
        RuntimeError::InvalidInput(format!(
            "writing the embedded default model: {action} `{}`: {e}",
            path.display()
        ))
    };
    std::fs::create_dir_all(&models).map_err(|e| io("creating", &models, e))?;
    if root.exists() {
        // Damaged since it was placed (a file truncated or removed): write it again.
        std::fs::remove_dir_all(&root).map_err(|e| io("removing", &root, e))?;
    }
    let staging = models.join(format!(".toy-llava-{digest}.{}.tmp", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io("removing", &staging, e))?;
    }
    let staged = staging.join("toy-llava");
    std::fs::create_dir_all(&staged).map_err(|e| io("creating", &staged, e))?;
    let written = EMBEDDED.iter().try_for_each(|(name, bytes)| {
        concepts_fs::write_atomic(&staged.join(name), bytes).map_err(|e| {
            RuntimeError::InvalidInput(format!("writing the embedded default model: {e}"))
        })
    });
    let placed = written.and_then(|()| {
        std::fs::rename(&staging, &root).or_else(|e| {
            // Another process placed it first: theirs has the same bytes.
            if is_complete(&dir) {
                Ok(())
            } else {
                Err(io("placing", &root, e))
            }
        })
    });
    let _ = std::fs::remove_dir_all(&staging);
    placed?;
    concepts_fs::sync_dir(&models).map_err(|e| {
        RuntimeError::InvalidInput(format!("writing the embedded default model: {e}"))
    })?;
    Ok(dir)
}

/// The first 16 hex digits of the SHA-256 of the embedded files (names and bytes), so a
/// binary with another model never reads this one's folder. Hashed once per process.
fn embedded_digest() -> &'static str {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| {
        let mut all = Vec::new();
        for (name, bytes) in EMBEDDED {
            all.extend_from_slice(name.as_bytes());
            all.push(0);
            all.extend_from_slice(concepts_fs::sha256_hex(bytes).as_bytes());
        }
        concepts_fs::sha256_hex(&all)[..16].to_string()
    })
}

/// Whether `dir` holds every embedded file at its size (the folder is only ever renamed
/// into place complete; the sizes catch a file truncated afterwards).
fn is_complete(dir: &Path) -> bool {
    EMBEDDED.iter().all(|(name, bytes)| {
        std::fs::symlink_metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_must_hold_a_config() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("model");
        std::fs::create_dir_all(&dir).unwrap();
        let err = default_model_dir(Some(&dir), home.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no config.json"), "{err}");
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        assert_eq!(default_model_dir(Some(&dir), home.path()).unwrap(), dir);
    }

    #[test]
    fn the_embedded_model_is_written_once_and_equals_the_checkout() {
        let home = tempfile::tempdir().unwrap();
        let dir = default_model_dir(None, home.path()).unwrap();
        assert!(dir.starts_with(home.path().join("models")));
        assert_eq!(
            dir.file_name().unwrap(),
            "toy-llava",
            "the runtime's model id"
        );
        for (name, _) in EMBEDDED {
            assert_eq!(
                std::fs::read(dir.join(name)).unwrap(),
                std::fs::read(checkout_model_dir().join(name)).unwrap(),
                "{name}"
            );
        }
        // A second use finds it; a truncated file is noticed and the folder rewritten.
        assert_eq!(embedded_model_dir(home.path()).unwrap(), dir);
        std::fs::write(dir.join("model.safetensors"), b"").unwrap();
        assert!(!is_complete(&dir));
        assert_eq!(embedded_model_dir(home.path()).unwrap(), dir);
        assert!(is_complete(&dir));
        let leftovers: Vec<_> = std::fs::read_dir(home.path().join("models"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
