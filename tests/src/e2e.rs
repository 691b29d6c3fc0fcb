//! The `concepts` binary as a user runs it, and the models and fixtures of the end-to-end
//! tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::workspace_root;

/// The parity fixture: a tiny llava-hf checkpoint made by transformers, images and reference
/// outputs (`runtime/tests/fixtures/parity`).
pub fn parity_fixture() -> PathBuf {
    workspace_root().join("runtime/tests/fixtures/parity")
}

/// The parity fixture's model folder.
pub fn parity_model() -> PathBuf {
    parity_fixture().join("model")
}

/// Writes a tiny random LLaVA over the toy-world tokenizer (weights drawn from `seed`) to `dir`.
pub fn write_model(dir: &Path, seed: u64) {
    let json =
        concepts_runtime::testing::tiny_config_json_with_vocab(toy_world::vocabulary().len(), 4);
    concepts_runtime::testing::write_random_checkpoint(dir, &json, seed).unwrap();
    toy_world::write_tokenizer(&dir.join("tokenizer.json")).unwrap();
}

/// Runs `BIN --home HOME ARGS…` without the default-model override of the environment.
pub fn concepts(bin: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("CONCEPTS_DEFAULT_MODEL")
        .output()
        .unwrap()
}
