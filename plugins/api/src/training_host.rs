//! The training engine as a trainer sees it (WIT interface `training-host`), as a Rust trait.
//!
//! One definition for both sides that drive it: the plugin host hands a `&mut dyn TrainingHost`
//! to wasm and native trainer plugins, and the training pipeline hands the same trait object to
//! its in-process built-in trainer. Tensors never leave the implementation: samples are referred
//! to by kind and index, batches and snapshots by id.

use crate::{EpochReport, Recognition, SampleCounts, SampleRef, Split};

/// A failure of the training engine, reported to the trainer as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError(pub String);

impl core::fmt::Display for EngineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

/// A batch of encoded samples held by a [`TrainingHost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u32);

/// A snapshot of trainable parameters held by a [`TrainingHost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub u32);

/// The training engine as a trainer sees it (WIT interface `training-host`).
///
/// Errors are reported to the trainer, which decides what to do (normally it gives up and
/// returns the error).
pub trait TrainingHost {
    /// The sizes of the sample lists.
    fn counts(&self) -> SampleCounts;
    /// Encodes samples into a batch.
    fn build_batch(&mut self, samples: &[SampleRef]) -> Result<BatchId, EngineError>;
    /// Samples in a batch (0 for an unknown batch).
    fn batch_len(&self, batch: BatchId) -> u32;
    /// Frees a batch; the trainer dropped it.
    fn drop_batch(&mut self, batch: BatchId);
    /// One optimiser step on `batch`; returns the batch loss before the step.
    fn train_step(&mut self, batch: BatchId, learning_rate: f32) -> Result<f32, EngineError>;
    /// Recognition on a split, without changing parameters.
    fn evaluate_recognition(&mut self, split: Split) -> Result<Recognition, EngineError>;
    /// Copies the trainable parameters and optimiser state.
    fn snapshot(&mut self) -> Result<SnapshotId, EngineError>;
    /// Restores a snapshot.
    fn restore(&mut self, snapshot: SnapshotId) -> Result<(), EngineError>;
    /// Records an epoch's outcome (progress display, provenance).
    fn report_epoch(&mut self, report: &EpochReport);
}
