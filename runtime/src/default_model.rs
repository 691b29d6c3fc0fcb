//! Where the embedded default base model lives.
//!
//! The toy LLaVA the project pretrains is committed under `models/toy-llava/` at the root of
//! the workspace (llava-hf layout). Commands that take `--model` fall back to it. This module
//! reads no environment variable: the CLI resolves `CONCEPTS_DEFAULT_MODEL` and passes it in.

use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// The committed default model directory, relative to the workspace root.
pub const DEFAULT_MODEL_RELATIVE: &str = "models/toy-llava";

/// The default model directory as built into this binary: `<workspace>/models/toy-llava`.
pub fn builtin_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_MODEL_RELATIVE)
}

/// The default model directory: `override_dir` (e.g. from `CONCEPTS_DEFAULT_MODEL`) if given,
/// else [`builtin_model_dir`]. Fails with a clear message when the directory has no
/// `config.json` (the default model has not been trained or committed yet).
pub fn default_model_dir(override_dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match override_dir {
        Some(dir) => dir.to_path_buf(),
        None => builtin_model_dir(),
    };
    if dir.join("config.json").is_file() {
        Ok(dir)
    } else {
        Err(RuntimeError::InvalidInput(format!(
            "the default base model is not available: `{}` has no config.json (train and commit \
             `{DEFAULT_MODEL_RELATIVE}`, set CONCEPTS_DEFAULT_MODEL, or pass --model DIR)",
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_must_hold_a_config() {
        let dir =
            std::env::temp_dir().join(format!("concepts-default-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = default_model_dir(Some(&dir)).unwrap_err().to_string();
        assert!(err.contains("has no config.json"), "{err}");
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        assert_eq!(default_model_dir(Some(&dir)).unwrap(), dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(builtin_model_dir().ends_with(DEFAULT_MODEL_RELATIVE));
    }
}
