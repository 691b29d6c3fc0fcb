//! The one support crate of the workspace's cross-crate tests.
//!
//! - [`workspace`]: where the workspace is and its dependency graph (`architecture.rs`).
//! - [`e2e`]: the `concepts` binary as a user runs it, and the models and fixtures the
//!   end-to-end tests in `tests/e2e/` use.
//! - [`oci_registry`]: a real OCI registry (CNCF Distribution) on loopback.
//! - [`plugins`]: plugin crates built from source into components and native libraries,
//!   packages, and a real training host (the plugin host's tests and the CLI's).
//!
//! The end-to-end tests in `tests/e2e/` are test targets of the `concepts-cli` package (as
//! ripgrep keeps its binary's tests in its top-level `tests/`), so that Cargo builds the
//! binary they run and hands them its path (`CARGO_BIN_EXE_concepts`, [`concepts_bin!`]).

pub mod e2e;
pub mod oci_registry;
pub mod plugins;
pub mod workspace;

pub use workspace::{code_lines, rust_files, workspace_root, Graph};

/// The `concepts` binary under test; only in the test targets of `concepts-cli`.
#[macro_export]
macro_rules! concepts_bin {
    () => {
        std::path::Path::new(env!("CARGO_BIN_EXE_concepts"))
    };
}
