//! Running an SDK plugin in-process: for hosts, not plugin authors.
//!
//! A host implements the backend traits of the plugin's role over its own data and calls the role
//! function here (`mine`, `train`, ...). The native C ABI glue of the SDK implements the same traits
//! over JSON, so a plugin sees identical behaviour whether it runs in-process, as a native library or
//! as a wasm component.

use concepts_plugin_api::LogLevel;
#[cfg(feature = "linker")]
use concepts_plugin_api::{ConceptMetadata, Turn};
#[cfg(feature = "trainer")]
use concepts_plugin_api::{
    EpochReport, Recognition, SampleCounts, SampleRef, Split, TrainParams, TrainSummary,
};
#[cfg(feature = "miner")]
use concepts_plugin_api::{MinedNegative, MiningParams, ScoredRow};

use crate::{Context, Result};

/// Logging and progress.
pub trait HostBackend {
    /// Records `message` at `level`.
    fn log(&self, level: LogLevel, message: &str);
    /// Reports progress of the current call.
    fn progress(&self, done: u64, total: u64, message: &str);
}

/// The embedding matrices of a mining call, named by handle.
#[cfg(feature = "miner")]
pub trait EmbeddingsBackend {
    /// This backend as a [`HostBackend`].
    fn as_host(&self) -> &dyn HostBackend;
    /// Rows of matrix `matrix`.
    fn rows(&self, matrix: u32) -> u32;
    /// Columns of matrix `matrix`.
    fn dim(&self, matrix: u32) -> u32;
    /// Rows `start .. start + count`, row-major.
    fn read_rows(&self, matrix: u32, start: u32, count: u32) -> Result<Vec<f32>>;
    /// For each row of `query`, the `k` most similar rows of `pool`, best first.
    fn top_k(&self, query: u32, pool: u32, k: u32) -> Result<Vec<Vec<ScoredRow>>>;
    /// For each row of `pool`, its highest similarity to any row of `query`.
    fn max_similarity(&self, query: u32, pool: u32) -> Result<Vec<f32>>;
}

/// The training engine of a training call. Batches are named by handle.
#[cfg(feature = "trainer")]
pub trait TrainingBackend {
    /// This backend as a [`HostBackend`].
    fn as_host(&self) -> &dyn HostBackend;
    /// The sizes of the sample lists.
    fn counts(&self) -> SampleCounts;
    /// Encodes samples into a batch; returns its handle.
    fn build_batch(&self, samples: &[SampleRef]) -> Result<u32>;
    /// Samples in batch `batch`.
    fn batch_len(&self, batch: u32) -> u32;
    /// Frees batch `batch`.
    fn drop_batch(&self, batch: u32);
    /// One optimiser step; returns the loss before it.
    fn train_step(&self, batch: u32, learning_rate: f32) -> Result<f32>;
    /// Recognition on a split.
    fn evaluate_recognition(&self, split: Split) -> Result<Recognition>;
    /// Copies the trainable parameters; returns a snapshot id.
    fn snapshot(&self) -> Result<u32>;
    /// Restores a snapshot.
    fn restore(&self, snapshot: u32) -> Result<()>;
    /// Records an epoch's outcome.
    fn report_epoch(&self, report: &EpochReport);
}

/// Runs `M::mine` with matrices `positives` and `pool` of `backend`.
#[cfg(feature = "miner")]
pub fn mine<M: crate::NegativeMiner>(
    backend: &dyn EmbeddingsBackend,
    positives: u32,
    pool: u32,
    params: MiningParams,
) -> Result<Vec<MinedNegative>> {
    let job = crate::MiningJob::new(
        Context::new(backend.as_host()),
        crate::Matrix::new(backend, positives),
        crate::Matrix::new(backend, pool),
    );
    M::new().mine(&job, params)
}

/// Runs `T::train` on `backend`.
#[cfg(feature = "trainer")]
pub fn train<T: crate::Trainer>(
    backend: &dyn TrainingBackend,
    params: TrainParams,
) -> Result<TrainSummary> {
    T::new().train(&crate::TrainingJob::new(backend), params)
}

/// Runs `L::validate`.
#[cfg(feature = "linker")]
pub fn validate<L: crate::MetadataLinker>(
    host: &dyn HostBackend,
    metadata: &ConceptMetadata,
) -> Result<(), Vec<String>> {
    L::new().validate(&Context::new(host), metadata)
}

/// Runs `L::link_conversation`.
#[cfg(feature = "linker")]
pub fn link_conversation<L: crate::MetadataLinker>(
    host: &dyn HostBackend,
    metadata: &ConceptMetadata,
    placeholders: &[String],
    turns: Vec<Turn>,
) -> Result<Vec<Turn>> {
    L::new().link_conversation(&Context::new(host), metadata, placeholders, turns)
}

/// Runs `L::render_context`.
#[cfg(feature = "linker")]
pub fn render_context<L: crate::MetadataLinker>(
    host: &dyn HostBackend,
    active: &[ConceptMetadata],
) -> Result<String> {
    L::new().render_context(&Context::new(host), active)
}
