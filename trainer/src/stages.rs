//! The three replaceable stages as traits shaped like their WIT worlds, and the built-ins.
//!
//! The pipeline calls negative mining, the training policy and metadata linking only through
//! [`NegativeMiner`], [`Trainer`] (which drives a [`TrainingHost`]) and [`MetadataLinker`].
//! [`TrainingHost`] is `concepts_plugin_api`'s, the very trait the plugin host hands to plugin
//! trainers; the three role traits mirror `concepts_plugin_host`'s method for method (same names,
//! same `concepts_plugin_api` records) with the trainer's error type, so a wasm component, a
//! native plugin or an in-process built-in can stand behind them without changing behaviour.
//! The built-ins here run the SDK crates of the default components (`concepts.default-miner`,
//! `-trainer`, `-linker`) in-process through [`concepts_plugin_sdk::backend`], exactly as the
//! plugin host's built-ins do.

use std::cell::RefCell;

/// The training engine's interface and ids, shared with the plugin host.
pub use concepts_plugin_api::{BatchId, EngineError, SnapshotId, TrainingHost};
use concepts_plugin_api::{
    ConceptMetadata, EpochReport, LogLevel, MinedNegative, MiningParams, Recognition, SampleCounts,
    SampleRef, ScoredRow, Split, TrainParams, TrainSummary, Turn,
};
use concepts_plugin_sdk::backend::{self, EmbeddingsBackend, HostBackend, TrainingBackend};

/// Id of the built-in default miner.
pub const DEFAULT_MINER: &str = "concepts.default-miner";
/// Id of the built-in default trainer.
pub const DEFAULT_TRAINER: &str = "concepts.default-trainer";
/// Id of the built-in default linker.
pub const DEFAULT_LINKER: &str = "concepts.default-linker";

/// A stage's failure, as the message the stage gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StageError(pub String);

/// A read-only, row-major `rows × dim` matrix of `f32` image embeddings with row norms.
///
/// Invariant: `data.len() == rows * dim` and every value is finite.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingMatrix {
    dim: usize,
    data: Vec<f32>,
    norms: Vec<f32>,
}

impl EmbeddingMatrix {
    /// A matrix of `data.len() / dim` rows; `None` when the sizes disagree or a value is not
    /// finite.
    pub fn new(dim: usize, data: Vec<f32>) -> Option<EmbeddingMatrix> {
        if dim == 0 || data.len() % dim != 0 || data.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let norms = data
            .chunks_exact(dim)
            .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
            .collect();
        Some(EmbeddingMatrix { dim, data, norms })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.norms.len()
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `r`; panics when out of range.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    /// Cosine similarity of row `a` of `self` and row `b` of `other` (0 for a zero row).
    pub fn cosine(&self, a: usize, other: &EmbeddingMatrix, b: usize) -> f32 {
        let dot: f32 = self
            .row(a)
            .iter()
            .zip(other.row(b))
            .map(|(x, y)| x * y)
            .sum();
        let norm = self.norms[a] * other.norms[b];
        if norm > 0.0 {
            dot / norm
        } else {
            0.0
        }
    }

    /// For each row of `self`, the `k` most similar rows of `pool`, best first (ties by row).
    pub fn top_k(&self, pool: &EmbeddingMatrix, k: usize) -> Vec<Vec<ScoredRow>> {
        (0..self.rows())
            .map(|q| {
                let mut scored: Vec<ScoredRow> = (0..pool.rows())
                    .map(|r| ScoredRow {
                        row: r as u32,
                        score: self.cosine(q, pool, r),
                    })
                    .collect();
                scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
                scored.truncate(k);
                scored
            })
            .collect()
    }

    /// For each row of `pool`, its highest similarity to any row of `self`.
    pub fn max_similarity(&self, pool: &EmbeddingMatrix) -> Vec<f32> {
        (0..pool.rows())
            .map(|r| {
                (0..self.rows())
                    .map(|q| self.cosine(q, pool, r))
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect()
    }
}

/// World `negative-miner`: chooses negatives for the subject from a pool of images.
pub trait NegativeMiner {
    /// The plugin id.
    fn id(&self) -> &str;

    /// Chooses negatives for the subject shown in `positives` from `pool`.
    fn mine(
        &mut self,
        positives: &EmbeddingMatrix,
        pool: &EmbeddingMatrix,
        params: MiningParams,
    ) -> Result<Vec<MinedNegative>, StageError>;
}

/// World `trainer`: drives a training job through a [`TrainingHost`].
pub trait Trainer {
    /// The plugin id.
    fn id(&self) -> &str;

    /// Runs a training job; when it returns, `host` holds the parameters of
    /// [`TrainSummary::best_epoch`].
    fn train(
        &mut self,
        host: &mut dyn TrainingHost,
        params: TrainParams,
    ) -> Result<TrainSummary, StageError>;
}

/// World `metadata-linker`: validates metadata and links it into text.
pub trait MetadataLinker {
    /// The plugin id.
    fn id(&self) -> &str;

    /// Checks a concept's metadata; every problem is in the message.
    fn validate(&mut self, metadata: &ConceptMetadata) -> Result<(), StageError>;

    /// Rewrites generated conversation data to talk about the concept's identifier.
    fn link_conversation(
        &mut self,
        metadata: &ConceptMetadata,
        placeholders: &[String],
        turns: Vec<Turn>,
    ) -> Result<Vec<Turn>, StageError>;
}

/// The three stages of one training job.
pub struct Stages {
    pub miner: Box<dyn NegativeMiner>,
    pub trainer: Box<dyn Trainer>,
    pub linker: Box<dyn MetadataLinker>,
}

impl Stages {
    /// The built-in stages for the given ids (`None`: the default of the role). An id that is
    /// not a built-in of that role is an error naming the ids that are.
    pub fn builtin(
        miner: Option<&str>,
        trainer: Option<&str>,
        linker: Option<&str>,
    ) -> Result<Stages, StageError> {
        let check = |role: &str, id: Option<&str>, default: &str| match id {
            None => Ok(()),
            Some(id) if id == default => Ok(()),
            Some(id) => Err(StageError(format!(
                "no {role} plugin `{id}` is built in (built-in: `{default}`); installed \
                 plugins need the plugin host"
            ))),
        };
        check("miner", miner, DEFAULT_MINER)?;
        check("trainer", trainer, DEFAULT_TRAINER)?;
        check("linker", linker, DEFAULT_LINKER)?;
        Ok(Stages {
            miner: Box::new(BuiltinMiner),
            trainer: Box::new(BuiltinTrainer),
            linker: Box::new(BuiltinLinker),
        })
    }
}

/// Plugin log records go to `tracing`, tagged with the plugin id; progress is logged too.
struct Log(&'static str);

impl HostBackend for Log {
    fn log(&self, level: LogLevel, message: &str) {
        let plugin = self.0;
        match level {
            LogLevel::Trace => tracing::trace!(target: "concepts_plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "concepts_plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "concepts_plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "concepts_plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "concepts_plugin", plugin, "{message}"),
        }
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        tracing::trace!(target: "concepts_plugin", plugin = self.0, done, total, "{message}");
    }
}

/// `concepts.default-miner`, in-process.
struct BuiltinMiner;

/// Handles 0 and 1 of a mining call: the positives and the pool.
struct MiningMatrices<'a> {
    log: Log,
    positives: &'a EmbeddingMatrix,
    pool: &'a EmbeddingMatrix,
}

impl MiningMatrices<'_> {
    fn matrix(&self, handle: u32) -> Result<&EmbeddingMatrix, String> {
        match handle {
            0 => Ok(self.positives),
            1 => Ok(self.pool),
            _ => Err(format!("no matrix with handle {handle}")),
        }
    }
}

impl EmbeddingsBackend for MiningMatrices<'_> {
    fn as_host(&self) -> &dyn HostBackend {
        &self.log
    }

    fn rows(&self, matrix: u32) -> u32 {
        self.matrix(matrix).map_or(0, |m| m.rows() as u32)
    }

    fn dim(&self, matrix: u32) -> u32 {
        self.matrix(matrix).map_or(0, |m| m.dim() as u32)
    }

    fn read_rows(&self, matrix: u32, start: u32, count: u32) -> Result<Vec<f32>, String> {
        let m = self.matrix(matrix)?;
        let (start, count) = (start as usize, count as usize);
        if start.checked_add(count).is_none_or(|end| end > m.rows()) {
            return Err(format!(
                "rows {start}..{} are out of range for a matrix of {} rows",
                start.saturating_add(count),
                m.rows()
            ));
        }
        Ok(m.data[start * m.dim..(start + count) * m.dim].to_vec())
    }

    fn top_k(&self, query: u32, pool: u32, k: u32) -> Result<Vec<Vec<ScoredRow>>, String> {
        Ok(self.matrix(query)?.top_k(self.matrix(pool)?, k as usize))
    }

    fn max_similarity(&self, query: u32, pool: u32) -> Result<Vec<f32>, String> {
        Ok(self.matrix(query)?.max_similarity(self.matrix(pool)?))
    }
}

impl NegativeMiner for BuiltinMiner {
    fn id(&self) -> &str {
        DEFAULT_MINER
    }

    fn mine(
        &mut self,
        positives: &EmbeddingMatrix,
        pool: &EmbeddingMatrix,
        params: MiningParams,
    ) -> Result<Vec<MinedNegative>, StageError> {
        let matrices = MiningMatrices {
            log: Log(DEFAULT_MINER),
            positives,
            pool,
        };
        let mined = backend::mine::<concepts_default_miner::DefaultMiner>(&matrices, 0, 1, params)
            .map_err(StageError)?;
        check_mined(pool.rows(), &mined)?;
        Ok(mined)
    }
}

/// Checks a miner's answer against the pool: rows in range, each once, finite scores.
pub fn check_mined(pool_rows: usize, mined: &[MinedNegative]) -> Result<(), StageError> {
    let mut seen = vec![false; pool_rows];
    for m in mined {
        let row = m.pool_row as usize;
        if row >= pool_rows {
            return Err(StageError(format!(
                "pool row {row} is out of range for a pool of {pool_rows}"
            )));
        }
        if std::mem::replace(&mut seen[row], true) {
            return Err(StageError(format!("pool row {row} is chosen twice")));
        }
        if !m.score.is_finite() {
            return Err(StageError(format!("pool row {row} has score {}", m.score)));
        }
    }
    Ok(())
}

/// `concepts.default-trainer`, in-process.
struct BuiltinTrainer;

/// A [`TrainingHost`] seen through the SDK's `&self` backend interface.
struct HostAdapter<'a> {
    log: Log,
    host: RefCell<&'a mut dyn TrainingHost>,
}

impl TrainingBackend for HostAdapter<'_> {
    fn as_host(&self) -> &dyn HostBackend {
        &self.log
    }

    fn counts(&self) -> SampleCounts {
        self.host.borrow().counts()
    }

    fn build_batch(&self, samples: &[SampleRef]) -> Result<u32, String> {
        let id = self.host.borrow_mut().build_batch(samples);
        id.map(|b| b.0).map_err(|e| e.0)
    }

    fn batch_len(&self, batch: u32) -> u32 {
        self.host.borrow().batch_len(BatchId(batch))
    }

    fn drop_batch(&self, batch: u32) {
        self.host.borrow_mut().drop_batch(BatchId(batch));
    }

    fn train_step(&self, batch: u32, learning_rate: f32) -> Result<f32, String> {
        let loss = self
            .host
            .borrow_mut()
            .train_step(BatchId(batch), learning_rate);
        loss.map_err(|e| e.0)
    }

    fn evaluate_recognition(&self, split: Split) -> Result<Recognition, String> {
        let r = self.host.borrow_mut().evaluate_recognition(split);
        r.map_err(|e| e.0)
    }

    fn snapshot(&self) -> Result<u32, String> {
        let s = self.host.borrow_mut().snapshot();
        s.map(|s| s.0).map_err(|e| e.0)
    }

    fn restore(&self, snapshot: u32) -> Result<(), String> {
        let r = self.host.borrow_mut().restore(SnapshotId(snapshot));
        r.map_err(|e| e.0)
    }

    fn report_epoch(&self, report: &EpochReport) {
        self.host.borrow_mut().report_epoch(report);
    }
}

impl Trainer for BuiltinTrainer {
    fn id(&self) -> &str {
        DEFAULT_TRAINER
    }

    fn train(
        &mut self,
        host: &mut dyn TrainingHost,
        params: TrainParams,
    ) -> Result<TrainSummary, StageError> {
        let adapter = HostAdapter {
            log: Log(DEFAULT_TRAINER),
            host: RefCell::new(host),
        };
        let summary = backend::train::<concepts_default_trainer::DefaultTrainer>(&adapter, params)
            .map_err(StageError)?;
        check_summary(&summary)?;
        Ok(summary)
    }
}

/// Checks that a trainer's summary is consistent.
pub fn check_summary(summary: &TrainSummary) -> Result<(), StageError> {
    if summary.best_epoch == 0 || summary.best_epoch > summary.epochs_run {
        return Err(StageError(format!(
            "best epoch {} is not one of the {} epochs run",
            summary.best_epoch, summary.epochs_run
        )));
    }
    Ok(())
}

/// `concepts.default-linker`, in-process.
struct BuiltinLinker;

impl MetadataLinker for BuiltinLinker {
    fn id(&self) -> &str {
        DEFAULT_LINKER
    }

    fn validate(&mut self, metadata: &ConceptMetadata) -> Result<(), StageError> {
        backend::validate::<concepts_default_linker::DefaultLinker>(&Log(DEFAULT_LINKER), metadata)
            .map_err(|problems| {
                StageError(format!(
                    "concept `{}`: invalid metadata: {}",
                    metadata.name,
                    problems.join("; ")
                ))
            })
    }

    fn link_conversation(
        &mut self,
        metadata: &ConceptMetadata,
        placeholders: &[String],
        turns: Vec<Turn>,
    ) -> Result<Vec<Turn>, StageError> {
        let n = turns.len();
        let linked = backend::link_conversation::<concepts_default_linker::DefaultLinker>(
            &Log(DEFAULT_LINKER),
            metadata,
            placeholders,
            turns,
        )
        .map_err(StageError)?;
        if linked.len() != n {
            return Err(StageError(format!(
                "returned {} turns for {n}",
                linked.len()
            )));
        }
        Ok(linked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_ids_resolve_and_unknown_ids_are_named() {
        assert!(Stages::builtin(None, None, None).is_ok());
        assert!(Stages::builtin(Some(DEFAULT_MINER), Some(DEFAULT_TRAINER), None).is_ok());
        let err = Stages::builtin(Some("acme.miner"), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`acme.miner`") && err.contains(DEFAULT_MINER),
            "{err}"
        );
        assert!(Stages::builtin(None, Some(DEFAULT_MINER), None).is_err());
    }

    #[test]
    fn default_miner_skips_near_duplicates_and_mines_hard_first() {
        let positives = EmbeddingMatrix::new(2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        // Row 0 duplicates positive 0; rows 1 and 2 are close to positives; 3.. are far.
        let mut pool = vec![1.0, 0.0, 0.9, 0.3, 0.3, 0.9];
        for i in 0..6 {
            pool.extend([-1.0, 0.1 * i as f32]);
        }
        let pool = EmbeddingMatrix::new(2, pool).unwrap();
        let params = MiningParams {
            hard_per_positive: 1,
            easy_count: 2,
            seed: 3,
        };
        let mined = BuiltinMiner.mine(&positives, &pool, params).unwrap();
        let rows: Vec<u32> = mined.iter().map(|m| m.pool_row).collect();
        assert_eq!(&rows[..2], [1, 2]);
        assert_eq!(rows.len(), 4);
        assert!(!rows.contains(&0));
        assert_eq!(mined, BuiltinMiner.mine(&positives, &pool, params).unwrap());
    }
}
