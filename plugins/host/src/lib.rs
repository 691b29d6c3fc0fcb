//! concepts-plugin-host: loads, sandboxes and calls the plugins that set the policy of the three
//! training stages — negative miner, trainer and metadata linker.
//!
//! Key design choice: the training pipeline sees each stage only as a Rust trait shaped like its
//! WIT world ([`NegativeMiner`], [`Trainer`] driving a [`TrainingHost`], [`MetadataLinker`]), and
//! every plugin kind implements the same traits: a sandboxed wasm component (wasmtime, component
//! model, `concepts:plugin` WIT in `spec/plugins/wit/`), a trusted native library (C ABI, only with
//! `allow_native`), or a built-in compiled from the same SDK crate as the default components. Large
//! data (embedding matrices, tensors) stays on the host behind handles.
//!
//! Entry points: [`PluginHost::load_dir`] (a package folder → [`LoadedPlugin`]), [`PluginStore`]
//! (install, list, remove under `<home>/plugins`), [`PluginSet::resolve`] (ids → the three stages).
//!
//! This crate reads no environment variables and prints nothing; log records go to `tracing`
//! (target `concepts_plugin`, field `plugin`).

#![deny(missing_docs)]

pub mod builtin;
mod error;
mod host;
pub mod limits;
pub mod manifest;
pub mod matrix;
mod native;
mod roles;
mod services;
mod set;
mod store;
mod wasm;

pub use concepts_plugin_api as api;
pub use error::PluginError;
pub use host::{HostConfig, LoadedPlugin, PluginHost};
pub use limits::{Capability, Grants, Limits, ManifestLimits};
pub use manifest::{Manifest, ManifestSpec, PluginKind};
pub use matrix::EmbeddingMatrix;
pub use native::{NativeLinker, NativeMiner, NativePlugin, NativeTrainer};
pub use roles::{
    check_mined, check_summary, BatchId, EngineError, MetadataLinker, NegativeMiner, SnapshotId,
    Trainer, TrainingHost,
};
pub use services::{ProgressEvent, ProgressSink};
pub use set::{PluginSelection, PluginSet};
pub use store::{InstalledPlugin, PluginStore};
pub use wasm::{WasmLinker, WasmMiner, WasmPlugin, WasmTrainer};
