//! Test helper for `tests/concurrency.rs`, not a user tool: applies a sequence of operations to a
//! registry from its own OS process, so the test can run several of them at once.
//!
//! Usage: `registry-stress ROOT OP...` where OP is `install=FILE`, `replace=FILE` (install with
//! replace) or `remove=NAME`. Exits 0 when every operation succeeded, 1 (with the error on stderr)
//! at the first failure, 2 on bad usage.

use std::path::Path;
use std::process::ExitCode;

use concept_registry::{InstallOptions, Registry, RegistryError};

fn apply(registry: &Registry, op: &str) -> Result<(), RegistryError> {
    let keep = InstallOptions {
        replace: false,
        force: false,
    };
    let replace = InstallOptions {
        replace: true,
        force: false,
    };
    match op.split_once('=') {
        Some(("install", file)) => registry.install_file(Path::new(file), &keep).map(drop),
        Some(("replace", file)) => registry.install_file(Path::new(file), &replace).map(drop),
        Some(("remove", name)) => registry.remove(name).map(drop),
        _ => unreachable!("operations are validated before any is applied"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((root, ops)) = args.split_first() else {
        eprintln!("usage: registry-stress ROOT OP...");
        return ExitCode::from(2);
    };
    if let Some(bad) = ops.iter().find(|op| {
        !matches!(
            op.split_once('='),
            Some(("install" | "replace" | "remove", _))
        )
    }) {
        eprintln!("registry-stress: unknown operation `{bad}`");
        return ExitCode::from(2);
    }
    let registry = match Registry::open(Path::new(root)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("registry-stress: open `{root}`: {e}");
            return ExitCode::FAILURE;
        }
    };
    for op in ops {
        if let Err(e) = apply(&registry, op) {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("registry-stress: {op}: {msg}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
