//! Built-in plugins: SDK plugins compiled into the host and run in-process.
//!
//! The default miner, trainer and linker are registered here under their ids, from the same crates
//! that build their wasm components, through the SDK's [`concepts_plugin_sdk::backend`]; so the
//! built-in and the component of a default plugin behave identically.

use std::cell::RefCell;
use std::marker::PhantomData;

use concepts_plugin_api::{self as api, LogLevel, Role};
use concepts_plugin_sdk::backend::{EmbeddingsBackend, HostBackend, TrainingBackend};

use crate::matrix::EmbeddingMatrix;
use crate::roles::{self, BatchId, MetadataLinker, NegativeMiner, Trainer, TrainingHost};
use crate::services::{Events, Mining, ProgressSink};
use crate::PluginError;

/// Id of the built-in default miner.
pub const DEFAULT_MINER: &str = "concepts.default-miner";
/// Id of the built-in default trainer.
pub const DEFAULT_TRAINER: &str = "concepts.default-trainer";
/// Id of the built-in default linker.
pub const DEFAULT_LINKER: &str = "concepts.default-linker";

/// Version of the built-in plugins (the host crate's).
pub const BUILTIN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The built-in plugins: `(id, role)`.
pub const BUILTINS: [(&str, Role); 3] = [
    (DEFAULT_MINER, Role::Miner),
    (DEFAULT_TRAINER, Role::Trainer),
    (DEFAULT_LINKER, Role::Linker),
];

/// The role of built-in `id`, if there is one.
pub fn builtin_role(id: &str) -> Option<Role> {
    BUILTINS.iter().find(|(b, _)| *b == id).map(|&(_, r)| r)
}

/// The built-in default miner.
pub fn default_miner(progress: Option<ProgressSink>) -> Box<dyn NegativeMiner> {
    Box::new(BuiltinMiner::<concepts_default_miner::DefaultMiner>::new(
        DEFAULT_MINER,
        progress,
    ))
}

/// The built-in default trainer.
pub fn default_trainer(progress: Option<ProgressSink>) -> Box<dyn Trainer> {
    Box::new(
        BuiltinTrainer::<concepts_default_trainer::DefaultTrainer>::new(DEFAULT_TRAINER, progress),
    )
}

/// The built-in default linker.
pub fn default_linker(progress: Option<ProgressSink>) -> Box<dyn MetadataLinker> {
    Box::new(BuiltinLinker::<concepts_default_linker::DefaultLinker>::new(DEFAULT_LINKER, progress))
}

impl HostBackend for Events {
    fn log(&self, level: LogLevel, message: &str) {
        Events::log(self, level, message);
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        Events::progress(self, done, total, message);
    }
}

/// Any SDK miner `M`, run in-process.
pub struct BuiltinMiner<M> {
    events: Events,
    _miner: PhantomData<fn() -> M>,
}

impl<M: concepts_plugin_sdk::NegativeMiner> BuiltinMiner<M> {
    /// `M` under plugin id `id`.
    pub fn new(id: &str, progress: Option<ProgressSink>) -> Self {
        BuiltinMiner {
            events: Events::new(id, progress),
            _miner: PhantomData,
        }
    }
}

struct MiningBackend<'a> {
    events: &'a Events,
    mining: Mining,
}

impl EmbeddingsBackend for MiningBackend<'_> {
    fn as_host(&self) -> &dyn HostBackend {
        self.events
    }

    fn rows(&self, matrix: u32) -> u32 {
        self.mining.matrix(matrix).map_or(0, |m| m.rows() as u32)
    }

    fn dim(&self, matrix: u32) -> u32 {
        self.mining.matrix(matrix).map_or(0, |m| m.dim() as u32)
    }

    fn read_rows(&self, matrix: u32, start: u32, count: u32) -> Result<Vec<f32>, String> {
        Mining::read_rows(self.mining.matrix(matrix)?, start, count)
    }

    fn top_k(&self, query: u32, pool: u32, k: u32) -> Result<Vec<Vec<api::ScoredRow>>, String> {
        Mining::top_k(self.mining.matrix(query)?, self.mining.matrix(pool)?, k)
    }

    fn max_similarity(&self, query: u32, pool: u32) -> Result<Vec<f32>, String> {
        Mining::max_similarity(self.mining.matrix(query)?, self.mining.matrix(pool)?)
    }
}

impl<M: concepts_plugin_sdk::NegativeMiner> NegativeMiner for BuiltinMiner<M> {
    fn id(&self) -> &str {
        self.events.id()
    }

    fn mine(
        &mut self,
        positives: &EmbeddingMatrix,
        pool: &EmbeddingMatrix,
        params: api::MiningParams,
    ) -> Result<Vec<api::MinedNegative>, PluginError> {
        let backend = MiningBackend {
            events: &self.events,
            mining: Mining {
                positives: positives.clone(),
                pool: pool.clone(),
            },
        };
        let mined = concepts_plugin_sdk::backend::mine::<M>(
            &backend,
            crate::services::POSITIVES,
            crate::services::POOL,
            params,
        )
        .map_err(|message| PluginError::Failed {
            id: self.id().to_owned(),
            call: "mine",
            message,
        })?;
        roles::check_mined(self.id(), pool.rows(), &mined)?;
        Ok(mined)
    }
}

/// Any SDK trainer `T`, run in-process.
pub struct BuiltinTrainer<T> {
    events: Events,
    _trainer: PhantomData<fn() -> T>,
}

impl<T: concepts_plugin_sdk::Trainer> BuiltinTrainer<T> {
    /// `T` under plugin id `id`.
    pub fn new(id: &str, progress: Option<ProgressSink>) -> Self {
        BuiltinTrainer {
            events: Events::new(id, progress),
            _trainer: PhantomData,
        }
    }
}

struct TrainerBackend<'a> {
    events: &'a Events,
    host: RefCell<&'a mut dyn TrainingHost>,
    /// The plugin's batch handles (indices); the host's batch ids behind them.
    batches: RefCell<Vec<Option<BatchId>>>,
}

impl TrainerBackend<'_> {
    fn batch(&self, handle: u32) -> Result<BatchId, String> {
        self.batches
            .borrow()
            .get(handle as usize)
            .copied()
            .flatten()
            .ok_or_else(|| format!("no batch with handle {handle}"))
    }
}

impl TrainingBackend for TrainerBackend<'_> {
    fn as_host(&self) -> &dyn HostBackend {
        self.events
    }

    fn counts(&self) -> api::SampleCounts {
        self.host.borrow().counts()
    }

    fn build_batch(&self, samples: &[api::SampleRef]) -> Result<u32, String> {
        let id = self
            .host
            .borrow_mut()
            .build_batch(samples)
            .map_err(|e| e.0)?;
        let mut batches = self.batches.borrow_mut();
        batches.push(Some(id));
        Ok(batches.len() as u32 - 1)
    }

    fn batch_len(&self, batch: u32) -> u32 {
        self.batch(batch)
            .map_or(0, |id| self.host.borrow().batch_len(id))
    }

    fn drop_batch(&self, batch: u32) {
        let taken = self
            .batches
            .borrow_mut()
            .get_mut(batch as usize)
            .and_then(Option::take);
        if let Some(id) = taken {
            self.host.borrow_mut().drop_batch(id);
        }
    }

    fn train_step(&self, batch: u32, learning_rate: f32) -> Result<f32, String> {
        let id = self.batch(batch)?;
        self.host
            .borrow_mut()
            .train_step(id, learning_rate)
            .map_err(|e| e.0)
    }

    fn evaluate_recognition(&self, split: api::Split) -> Result<api::Recognition, String> {
        self.host
            .borrow_mut()
            .evaluate_recognition(split)
            .map_err(|e| e.0)
    }

    fn snapshot(&self) -> Result<u32, String> {
        self.host
            .borrow_mut()
            .snapshot()
            .map(|s| s.0)
            .map_err(|e| e.0)
    }

    fn restore(&self, snapshot: u32) -> Result<(), String> {
        self.host
            .borrow_mut()
            .restore(roles::SnapshotId(snapshot))
            .map_err(|e| e.0)
    }

    fn report_epoch(&self, report: &api::EpochReport) {
        self.host.borrow_mut().report_epoch(report);
    }
}

impl<T: concepts_plugin_sdk::Trainer> Trainer for BuiltinTrainer<T> {
    fn id(&self) -> &str {
        self.events.id()
    }

    fn train(
        &mut self,
        host: &mut dyn TrainingHost,
        params: api::TrainParams,
    ) -> Result<api::TrainSummary, PluginError> {
        let backend = TrainerBackend {
            events: &self.events,
            host: RefCell::new(host),
            batches: RefCell::new(Vec::new()),
        };
        let summary =
            concepts_plugin_sdk::backend::train::<T>(&backend, params).map_err(|message| {
                PluginError::Failed {
                    id: self.events.id().to_owned(),
                    call: "train",
                    message,
                }
            })?;
        roles::check_summary(self.events.id(), &summary)?;
        Ok(summary)
    }
}

/// Any SDK linker `L`, run in-process.
pub struct BuiltinLinker<L> {
    events: Events,
    _linker: PhantomData<fn() -> L>,
}

impl<L: concepts_plugin_sdk::MetadataLinker> BuiltinLinker<L> {
    /// `L` under plugin id `id`.
    pub fn new(id: &str, progress: Option<ProgressSink>) -> Self {
        BuiltinLinker {
            events: Events::new(id, progress),
            _linker: PhantomData,
        }
    }

    fn failed(&self, call: &'static str, message: String) -> PluginError {
        PluginError::Failed {
            id: self.events.id().to_owned(),
            call,
            message,
        }
    }
}

impl<L: concepts_plugin_sdk::MetadataLinker> MetadataLinker for BuiltinLinker<L> {
    fn id(&self) -> &str {
        self.events.id()
    }

    fn validate(&mut self, metadata: &api::ConceptMetadata) -> Result<(), PluginError> {
        concepts_plugin_sdk::backend::validate::<L>(&self.events, metadata)
            .map_err(|problems| roles::invalid_metadata(self.events.id(), metadata, problems))
    }

    fn link_conversation(
        &mut self,
        metadata: &api::ConceptMetadata,
        placeholders: &[String],
        turns: Vec<api::Turn>,
    ) -> Result<Vec<api::Turn>, PluginError> {
        concepts_plugin_sdk::backend::link_conversation::<L>(
            &self.events,
            metadata,
            placeholders,
            turns,
        )
        .map_err(|m| self.failed("link-conversation", m))
    }

    fn render_context(&mut self, active: &[api::ConceptMetadata]) -> Result<String, PluginError> {
        concepts_plugin_sdk::backend::render_context::<L>(&self.events, active)
            .map_err(|m| self.failed("render-context", m))
    }
}
