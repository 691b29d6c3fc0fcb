//! Shared by the CLI's integration tests: a tiny model on disk and the binary under test.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Writes a tiny random LLaVA over the toy-world tokenizer (weights drawn from `seed`) to `dir`.
pub fn write_model(dir: &Path, seed: u64) {
    let json =
        concepts_runtime::testing::tiny_config_json_with_vocab(toy_world::vocabulary().len(), 4);
    concepts_runtime::testing::write_random_checkpoint(dir, &json, seed).unwrap();
    toy_world::write_tokenizer(&dir.join("tokenizer.json")).unwrap();
}

/// Runs `concepts --home HOME ARGS…` without the default-model override of the environment.
pub fn concepts(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concepts"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("CONCEPTS_DEFAULT_MODEL")
        .output()
        .unwrap()
}
