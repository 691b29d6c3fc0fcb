//! Stage 3's engine: the [`TrainingHost`] over the frozen base model.
//!
//! The trainable parameters are one `[1 + k, d]` f32 matrix (identifier row, then the `k`
//! latent rows) and the identifier's `[d]` LM-head column; nothing else is a variable, so the
//! base model cannot change. A step embeds each sample (frozen token rows from a per-template
//! cache, cached projected image features, the concept rows spliced in with a differentiable
//! `where`), runs the decoder with [`Kernels::Differentiable`], takes the answer-only
//! cross-entropy over the base vocabulary plus the identifier column, and applies AdamW
//! (decoupled weight decay on the concept rows only — they are the only parameters).
//!
//! Constant work is done once: each recognition template and conversation is tokenized and
//! embedded once, and the projected image features of each training image are computed once
//! per flip variant. Samples in a batch are right-padded to the longest one; with causal
//! attention, padding after a sequence cannot change it, and padded positions carry no loss.
//! Image-free samples (conversations) form their own sub-batch so they are not padded to image
//! length.
//!
//! Reproducibility and resume: every random choice is a pure function of the seed and a
//! counter (horizontal flips hash the seed, the batch number and the position). After each
//! epoch the engine can save its state (parameters, AdamW moments, counters, the loss of every
//! step and every evaluation). A resumed engine *replays* the trainer stage's calls up to the
//! saved point, answering them from the record without computing, then continues live; so any
//! deterministic trainer policy resumes to the same result as an uninterrupted run.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Tensor};
use concepts_plugin_api::{EpochReport, Recognition, SampleRef};
use concepts_runtime::session::Engine;
use concepts_runtime::{ConceptWeights, LlavaModel};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::{Result, TrainError};
use crate::prefix::{PrefixReuse, PrefixStore};
use crate::templates;

mod encode;
mod forward;
mod host;
mod init;
mod state;

use encode::{Encoded, Prompts};
pub use init::Init;
use state::{Moments, Replay, Snapshot};
pub use state::{SavedState, STATE_FORMAT};

pub use concepts_runtime::optim::AdamW;

/// The trainable tensors, f32.
#[derive(Debug, Clone)]
pub struct ConceptParams {
    /// `[1 + k, d]`: identifier, then latents.
    pub rows: Tensor,
    /// `[d]`: the identifier's LM-head column.
    pub head: Tensor,
}

impl ConceptParams {
    /// As runtime concept weights in `dtype`.
    pub fn to_weights(&self, dtype: DType) -> Result<ConceptWeights> {
        let k = self.rows.dim(0)? - 1;
        Ok(ConceptWeights::new(
            self.rows.get(0)?.to_dtype(dtype)?,
            self.rows.narrow(0, 1, k)?.to_dtype(dtype)?,
            self.head.to_dtype(dtype)?,
        )?)
    }
}

/// The best epoch so far and its parameters.
#[derive(Debug, Clone)]
pub struct Best {
    pub epoch: u32,
    pub params: ConceptParams,
    pub recognition: Recognition,
}

/// What happened so far: the loss of every step and every epoch's report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub step_losses: Vec<f32>,
    pub epochs: Vec<EpochReport>,
}

/// Where the engine's time went (live work only; replayed calls cost nothing).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineTimings {
    /// Optimiser steps: forward, backward and AdamW.
    pub steps_secs: f64,
    /// Recognition read-outs after each epoch.
    pub recognition_secs: f64,
    /// Running prompt prefixes (part of the two above).
    pub prefixes_secs: f64,
    /// Prompt prefixes run, kept or not.
    pub prefixes_run: u64,
    /// Bytes of prompt-prefix keys and values kept at the end.
    pub prefixes_kept_bytes: u64,
}

/// Everything a [`TrainingEngine`] needs besides the model and the data.
pub struct EngineConfig {
    pub k: usize,
    pub init: Init,
    pub seed: u64,
    pub adamw: AdamW,
    /// Recognition templates (the base model's own, or Yo'LLaVA's).
    pub templates: templates::TemplateSet,
    /// Whether steps run the constant prompt prefix once, without gradients ([`crate::prefix`]).
    pub prefix: PrefixReuse,
}

/// Called after each epoch (and for each replayed epoch on resume).
pub struct EpochEvent<'a> {
    pub report: &'a EpochReport,
    /// The epoch was answered from a saved record (on resume), not trained now.
    pub replayed: bool,
    pub best: Option<&'a Best>,
    pub history: &'a History,
}

/// Receives steps and epochs; an error stops training.
pub trait EngineObserver {
    fn step(&mut self, _step: u64, _loss: f32) {}
    fn epoch(&mut self, event: EpochEvent<'_>) -> Result<()>;
}

/// The training engine; see the module docs.
pub struct TrainingEngine<'a> {
    session: &'a Engine,
    data: &'a Dataset,
    cfg: EngineConfig,
    base_vocab: u32,
    positive: Vec<Encoded>,
    negative: Vec<Encoded>,
    conversations: Vec<Encoded>,
    eval: Encoded,
    yes_id: u32,
    no_id: u32,
    features: HashMap<(u8, u32, bool), Tensor>,
    prefixes: RefCell<PrefixStore>,
    timings: EngineTimings,
    params: ConceptParams,
    moments: Moments,
    batches: BTreeMap<u32, Vec<(SampleRef, bool)>>,
    built: u32,
    snapshots: Vec<Snapshot>,
    snapshot_since_eval: Option<usize>,
    steps: usize,
    evals: usize,
    history: History,
    best: Option<Best>,
    replay: Option<Replay>,
    state: Option<(PathBuf, String)>,
    failed: Option<TrainError>,
    cancel: &'a AtomicBool,
    observer: &'a mut dyn EngineObserver,
}

impl<'a> TrainingEngine<'a> {
    /// An engine over `session`, in which the concept `name` must be active (so its markers
    /// tokenize to its ids) and no other concept.
    pub fn new(
        session: &'a Engine,
        name: &str,
        data: &'a Dataset,
        cfg: EngineConfig,
        resume: Option<SavedState>,
        cancel: &'a AtomicBool,
        observer: &'a mut dyn EngineObserver,
    ) -> Result<TrainingEngine<'a>> {
        let model = session.model();
        let table = session.concepts();
        if table.len() != 1 || table.identifier_id(name).is_none() {
            return Err(TrainError::Input(format!(
                "the engine must have exactly the concept `{name}` active"
            )));
        }
        let base_vocab = table.base_vocab() as u32;
        let markers = session.conversation().concepts().to_vec();
        let codec = session.codec();
        let yes_id = codec.answer_token("Yes")?;
        let no_id = codec.answer_token("No")?;
        let Prompts {
            positive,
            negative,
            conversations,
            eval,
        } = Prompts::new(session, &markers, base_vocab, &cfg.templates, data)?;
        let device = model.device().clone();
        let mut engine = TrainingEngine {
            session,
            data,
            base_vocab,
            positive,
            negative,
            conversations,
            eval,
            yes_id,
            no_id,
            features: HashMap::new(),
            prefixes: RefCell::new(PrefixStore::new(match cfg.prefix {
                PrefixReuse::Off => 0,
                PrefixReuse::Cached { budget_bytes } => budget_bytes,
            })),
            timings: EngineTimings::default(),
            params: ConceptParams {
                rows: Tensor::zeros((cfg.k + 1, 1), DType::F32, &device)?,
                head: Tensor::zeros(1, DType::F32, &device)?,
            },
            moments: Moments {
                m_rows: Tensor::zeros(1, DType::F32, &device)?,
                v_rows: Tensor::zeros(1, DType::F32, &device)?,
                m_head: Tensor::zeros(1, DType::F32, &device)?,
                v_head: Tensor::zeros(1, DType::F32, &device)?,
                t: 0,
            },
            cfg,
            batches: BTreeMap::new(),
            built: 0,
            snapshots: Vec::new(),
            snapshot_since_eval: None,
            steps: 0,
            evals: 0,
            history: History::default(),
            best: None,
            replay: None,
            state: None,
            failed: None,
            cancel,
            observer,
        };
        match resume {
            Some(saved) => engine.resume_from(saved),
            None => engine.start_fresh()?,
        }
        Ok(engine)
    }

    fn model(&self) -> &LlavaModel {
        self.session.model()
    }

    /// The current parameters.
    pub fn params(&self) -> &ConceptParams {
        &self.params
    }

    /// The token ids of a sample (`<image>` expanded, concept tokens as their runtime ids
    /// after the base vocabulary) and the positions whose token is a training target (the
    /// answer and its `</s>`).
    pub fn sample_tokens(&self, sample: &SampleRef) -> Result<(Vec<u32>, Vec<usize>)> {
        let enc = self.encoded(sample)?;
        Ok((
            enc.ids.clone(),
            enc.targets.iter().map(|&(p, _)| p + 1).collect(),
        ))
    }

    /// Forgets the cached image features and prompt prefixes (benchmarks use it to time the
    /// uncached path).
    pub fn clear_caches(&mut self) {
        self.features.clear();
        self.prefixes.borrow_mut().clear();
    }

    /// Where the time went so far.
    pub fn timings(&self) -> EngineTimings {
        let store = self.prefixes.borrow();
        EngineTimings {
            prefixes_secs: store.secs,
            prefixes_run: store.computed,
            prefixes_kept_bytes: store.bytes() as u64,
            ..self.timings
        }
    }

    /// The first error an observer returned, if any (it stopped training).
    pub fn take_failure(&mut self) -> Option<TrainError> {
        self.failed.take()
    }

    /// The best epoch so far.
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    pub fn history(&self) -> &History {
        &self.history
    }
}

/// The engine's answer when the cancel flag is set.
pub const INTERRUPTED: &str = "interrupted";
