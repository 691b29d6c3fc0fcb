//! The three training stages as host-side traits, shaped like their WIT worlds.
//!
//! The training pipeline calls stages only through these traits. Each has three implementations —
//! a wasm component, a native library and an in-process built-in — and the choice between them is
//! the [`crate::PluginSet`]'s, so moving a stage between them changes no behaviour.

pub use concepts_plugin_api::{BatchId, EngineError, SnapshotId, TrainingHost};
use concepts_plugin_api::{
    ConceptMetadata, MinedNegative, MiningParams, TrainParams, TrainSummary, Turn,
};

use crate::matrix::EmbeddingMatrix;
use crate::PluginError;

/// World `negative-miner`: chooses negatives from a pool of images.
pub trait NegativeMiner {
    /// The plugin id
    fn id(&self) -> &str;

    /// Chooses negatives for the subject shown in `positives` from `pool`.
    ///
    /// The answer is checked: every `pool_row` is a row of `pool` and appears once, every score is
    /// finite.
    fn mine(
        &mut self,
        positives: &EmbeddingMatrix,
        pool: &EmbeddingMatrix,
        params: MiningParams,
    ) -> Result<Vec<MinedNegative>, PluginError>;
}

/// World `trainer`: drives a training job through a [`TrainingHost`].
pub trait Trainer {
    /// The plugin id
    fn id(&self) -> &str;

    /// Runs a training job; when it returns, `host` holds the parameters of
    /// [`TrainSummary::best_epoch`].
    fn train(
        &mut self,
        host: &mut dyn TrainingHost,
        params: TrainParams,
    ) -> Result<TrainSummary, PluginError>;
}

/// World `metadata-linker`: validates metadata and links it into text.
pub trait MetadataLinker {
    /// The plugin id
    fn id(&self) -> &str;

    /// Checks a concept's metadata; problems come back as [`PluginError::InvalidMetadata`].
    fn validate(&mut self, metadata: &ConceptMetadata) -> Result<(), PluginError>;

    /// Rewrites generated conversation data to talk about the concept's identifier.
    fn link_conversation(
        &mut self,
        metadata: &ConceptMetadata,
        placeholders: &[String],
        turns: Vec<Turn>,
    ) -> Result<Vec<Turn>, PluginError>;

    /// The per-request context for the active concepts.
    fn render_context(&mut self, active: &[ConceptMetadata]) -> Result<String, PluginError>;
}

/// Checks a miner's answer against a pool of `pool_rows` rows: every row in range and chosen once,
/// every score finite. Every implementation here calls it; callers of a foreign implementation can too.
pub fn check_mined(id: &str, pool_rows: usize, mined: &[MinedNegative]) -> Result<(), PluginError> {
    let invalid = |message: String| PluginError::InvalidOutput {
        id: id.to_owned(),
        call: "mine",
        message,
    };
    let mut seen = vec![false; pool_rows];
    for m in mined {
        let row = m.pool_row as usize;
        if row >= pool_rows {
            return Err(invalid(format!(
                "pool row {row} is out of range for a pool of {pool_rows}"
            )));
        }
        if std::mem::replace(&mut seen[row], true) {
            return Err(invalid(format!("pool row {row} is chosen twice")));
        }
        if !m.score.is_finite() {
            return Err(invalid(format!("pool row {row} has score {}", m.score)));
        }
    }
    Ok(())
}

/// Checks that a trainer's summary is consistent: the best epoch is one of the epochs run.
pub fn check_summary(id: &str, summary: &TrainSummary) -> Result<(), PluginError> {
    if summary.best_epoch == 0 || summary.best_epoch > summary.epochs_run {
        return Err(PluginError::InvalidOutput {
            id: id.to_owned(),
            call: "train",
            message: format!(
                "best epoch {} is not one of the {} epochs run",
                summary.best_epoch, summary.epochs_run
            ),
        });
    }
    Ok(())
}

/// The error for a linker's list of problems.
pub(crate) fn invalid_metadata(
    id: &str,
    metadata: &ConceptMetadata,
    problems: Vec<String>,
) -> PluginError {
    PluginError::InvalidMetadata {
        id: id.to_owned(),
        concept: metadata.name.clone(),
        problems,
    }
}
