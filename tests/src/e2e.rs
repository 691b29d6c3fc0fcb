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

/// The address a `concepts serve` child announces on its first stderr line
/// (`… on http://ADDR …`), and its stderr for what it prints later.
pub fn served_address(
    child: &mut std::process::Child,
) -> (String, std::io::BufReader<std::process::ChildStderr>) {
    use std::io::BufRead;
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (addr, stderr)
}

/// One HTTP/1.1 request with a JSON body over a fresh loopback connection; the status and
/// the body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
