//! The `concepts` binary as a user runs it, and the models and fixtures of the end-to-end
//! tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

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

/// `bin` as a user runs it on the registry `home` (`CONCEPTS_HOME`), without the logging and
/// default-model settings of the test's own environment.
pub fn command(bin: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("CONCEPTS_HOME", home)
        .env_remove("RUST_LOG")
        .env_remove("CONCEPTS_DEFAULT_MODEL");
    cmd
}

/// Runs `bin ARGS…` ([`command`]) to its end.
pub fn run(bin: &Path, home: &Path, args: &[&str]) -> Run {
    Run::from(command(bin, home).args(args).output().unwrap())
}

/// What a run of `concepts` produced: the boundary every end-to-end test checks.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output
                .status
                .code()
                .expect("exited, not killed by a signal"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

impl Run {
    /// Asserts success (status 0, no panic), showing the output when it is not.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }

    /// Asserts a clean failure: exit status 1 and a `concepts: error: ` message, never a panic (101).
    #[track_caller]
    pub fn fails(self) -> Run {
        assert_eq!(self.code, 1, "expected exit status 1: {self:#?}");
        assert!(
            self.stderr.starts_with("concepts: error: "),
            "stderr must start with the error prefix: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }

    /// Stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}
