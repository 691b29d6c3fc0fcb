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
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor, Var, D};
use concepts_plugin_api::{EpochReport, Recognition, SampleCounts, SampleKind, SampleRef, Split};
use concepts_runtime::prompt::{expand_image_tokens, ConceptMarkers, Conversation};
use concepts_runtime::session::Engine;
use concepts_runtime::{ops, ConceptWeights, Kernels, KvCache, LlavaModel};
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::{Result, TrainError};
use crate::prefix::{PrefixKey, PrefixReuse, PrefixStore};
use crate::templates;
use concepts_plugin_host::{BatchId, EngineError, SnapshotId, TrainingHost};
use concepts_plugin_sdk::rng::SplitMix64;

/// Images per evaluation forward pass.
const EVAL_BATCH: usize = 16;

/// The `format` of state files.
pub const STATE_FORMAT: &str = "concepts-train-state/1";

/// How the concept rows start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Init {
    /// Gaussian rows with the spread of the base embedding table (the reference).
    Random,
    /// Every row starts at the mean projected visual token of the positives.
    Visual,
    /// Every row starts at this word's embedding (mean over its tokens), the head column at the
    /// word's LM-head row.
    Word(String),
    /// The latent rows start at the embeddings of this text's tokens, in order and repeated
    /// until the k rows are full, so the personal prompt `<sks> is <sks:1>…<sks:k>.` starts out
    /// saying the text ("<sks> is a red star with blue dots a red star …"); the identifier
    /// row and the head column start as in [`Init::Random`]. Given a description of the
    /// subject (the base model's own, see `concepts-eval`), training starts where that prompt
    /// ends and has only what words miss left to learn.
    Text(String),
}

impl Init {
    /// `random`, `visual`, `word:WORD` or `text:TEXT`.
    pub fn parse(text: &str) -> Option<Init> {
        let arg = |prefix: &str| {
            text.strip_prefix(prefix)
                .filter(|w| !w.trim().is_empty())
                .map(str::to_string)
        };
        match text {
            "random" => Some(Init::Random),
            "visual" => Some(Init::Visual),
            _ => arg("word:")
                .map(Init::Word)
                .or_else(|| arg("text:").map(Init::Text)),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Init::Random => "random".to_string(),
            Init::Visual => "visual".to_string(),
            Init::Word(w) => format!("word:{w}"),
            Init::Text(t) => format!("text:{t}"),
        }
    }
}

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

#[derive(Debug, Clone)]
struct Moments {
    m_rows: Tensor,
    v_rows: Tensor,
    m_head: Tensor,
    v_head: Tensor,
    t: u64,
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

/// An image variant among the cached features: (kind code, index, flipped).
type FeatureKey = (u8, u32, bool);

/// Samples run in one decoder pass: each encoding with its image variant, if any.
type Group<'e> = Vec<(&'e Encoded, Option<FeatureKey>)>;

/// One tokenized, embedded prompt + answer.
struct Encoded {
    len: usize,
    /// Token ids, `<image>` expanded to one id per image feature.
    ids: Vec<u32>,
    image: Option<Range<usize>>,
    /// `[len, d]` base embeddings in the model dtype (image and concept positions are
    /// placeholders).
    base: Tensor,
    /// (position, concept row) of every concept token.
    concept: Vec<(usize, u32)>,
    /// (position, target id): the position's logits must predict the target.
    targets: Vec<(usize, u32)>,
    /// Length of the constant prefix: the positions before the first concept token (and
    /// before the first loss position), which no trainable parameter reaches.
    prefix: usize,
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

/// Saved state from a previous run, to resume from.
pub struct SavedState {
    meta: StateMeta,
    params: ConceptParams,
    moments: Moments,
    best: Option<ConceptParams>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateMeta {
    format: String,
    job_key: String,
    adam_t: u64,
    history: History,
    best_epoch: Option<u32>,
    best_recognition: Option<Recognition>,
}

impl SavedState {
    /// Reads a state file written by [`TrainingEngine`] for the job `job_key`.
    pub fn read(path: &Path, job_key: &str, device: &Device) -> Result<SavedState> {
        let bad = |msg: String| TrainError::Resume {
            path: path.to_path_buf(),
            msg,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("state"))
            .ok_or_else(|| bad("not a training state file".to_string()))?;
        let meta: StateMeta = serde_json::from_str(meta).map_err(|e| bad(e.to_string()))?;
        if meta.format != STATE_FORMAT {
            return Err(bad(format!(
                "format `{}`, expected `{STATE_FORMAT}`",
                meta.format
            )));
        }
        if meta.job_key != job_key {
            return Err(bad(
                "it belongs to another training job (the images, options, model or seed differ)"
                    .to_string(),
            ));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| bad(e.to_string()))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| bad(format!("no tensor `{name}`")))
        };
        let params = ConceptParams {
            rows: get("rows")?,
            head: get("head")?,
        };
        let moments = Moments {
            m_rows: get("m_rows")?,
            v_rows: get("v_rows")?,
            m_head: get("m_head")?,
            v_head: get("v_head")?,
            t: meta.adam_t,
        };
        let best = match meta.best_epoch {
            Some(_) => Some(ConceptParams {
                rows: get("best_rows")?,
                head: get("best_head")?,
            }),
            None => None,
        };
        Ok(SavedState {
            meta,
            params,
            moments,
            best,
        })
    }

    /// Epochs the saved run completed.
    pub fn epochs_done(&self) -> usize {
        self.meta.history.epochs.len()
    }
}

struct Replay {
    steps: usize,
    evals: usize,
    best_epoch: Option<u32>,
    best: Option<ConceptParams>,
}

enum Snapshot {
    Kept(ConceptParams, Moments),
    /// Taken while replaying an epoch whose parameters were not saved.
    Lost {
        epoch: u32,
    },
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

fn engine_err(e: impl std::fmt::Display) -> EngineError {
    EngineError(e.to_string())
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
        let identifier = markers[0].identifier().to_string();
        let codec = session.codec();
        let yes_id = codec.answer_token("Yes")?;
        let no_id = codec.answer_token("No")?;
        let enc = |question: &str, answer: Option<&str>, image: bool| {
            encode(session, &markers, base_vocab, question, answer, image)
        };
        let fill = |t: &str| templates::fill(t, &identifier);
        // Only templates the base model's vocabulary can say (a small word-level vocabulary
        // lacks most of Yo'LLaVA's phrasing); the evaluation question with a one-word answer
        // is the fallback when none is left.
        let usable =
            |pairs: &[(String, String)], fallback: &str| -> Result<Vec<(String, String)>> {
                let mut out = Vec::new();
                for (q, a) in pairs {
                    let (q, a) = (fill(q), fill(a));
                    if codec.represents(&q)? && codec.represents(&a)? {
                        out.push((q, a));
                    }
                }
                if out.len() < pairs.len() {
                    tracing::info!(
                    kept = out.len(),
                    of = pairs.len(),
                    "dropped recognition templates with words outside the base model's vocabulary"
                );
                }
                if out.is_empty() {
                    out.push((fill(templates::EVAL_QUESTION), fallback.to_string()));
                }
                Ok(out)
            };
        let positive = usable(&cfg.templates.positive, "Yes")?
            .iter()
            .map(|(q, a)| enc(q, Some(a), true))
            .collect::<Result<Vec<_>>>()?;
        let negative = usable(&cfg.templates.negative, "No")?
            .iter()
            .map(|(q, a)| enc(q, Some(a), true))
            .collect::<Result<Vec<_>>>()?;
        let conversations = data
            .conversations
            .iter()
            .map(|t| enc(&t.question, Some(&t.answer), false))
            .collect::<Result<Vec<_>>>()?;
        let eval = enc(&fill(templates::EVAL_QUESTION), None, true)?;
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
            Some(saved) => {
                engine.params = saved.params;
                engine.moments = saved.moments;
                engine.replay = Some(Replay {
                    steps: saved.meta.history.step_losses.len(),
                    evals: saved.meta.history.epochs.len(),
                    best_epoch: saved.meta.best_epoch,
                    best: saved.best.clone(),
                });
                if let (Some(epoch), Some(params), Some(recognition)) = (
                    saved.meta.best_epoch,
                    saved.best,
                    saved.meta.best_recognition,
                ) {
                    engine.best = Some(Best {
                        epoch,
                        params,
                        recognition,
                    });
                }
                engine.history = saved.meta.history;
            }
            None => {
                engine.params = engine.initial_params()?;
                let z = |t: &Tensor| t.zeros_like();
                engine.moments = Moments {
                    m_rows: z(&engine.params.rows)?,
                    v_rows: z(&engine.params.rows)?,
                    m_head: z(&engine.params.head)?,
                    v_head: z(&engine.params.head)?,
                    t: 0,
                };
            }
        }
        Ok(engine)
    }

    /// Save the state to `path` after every epoch, tagged with `job_key`.
    pub fn save_state_to(&mut self, path: &Path, job_key: &str) {
        self.state = Some((path.to_path_buf(), job_key.to_string()));
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

    fn initial_params(&mut self) -> Result<ConceptParams> {
        let model = self.session.model();
        let (k, d) = (self.cfg.k, model.config().text.hidden_size);
        let device = model.device().clone();
        let std = |t: &Tensor| -> Result<f64> {
            let t = t.to_dtype(DType::F64)?.flatten_all()?;
            let mean = t.mean_all()?.to_scalar::<f64>()?;
            Ok(t.affine(1.0, -mean)?
                .sqr()?
                .mean_all()?
                .to_scalar::<f64>()?
                .sqrt())
        };
        let embed_std = std(model.embed_weight())?;
        let head_std = std(model.lm_head_weight())?;
        let noise = |shape: &[usize], seed: u64, scale: f64| -> Result<Tensor> {
            Ok((concepts_runtime::optim::randn(shape, seed, DType::F32, &device)? * scale)?)
        };
        let seed = self.cfg.seed ^ 0x1a2b_3c4d;
        let rows_noise = noise(&[k + 1, d], seed, embed_std)?;
        let head = noise(&[d], seed + 1, head_std)?;
        Ok(match self.cfg.init.clone() {
            Init::Random => ConceptParams {
                rows: rows_noise,
                head,
            },
            Init::Visual => {
                let mut sum: Option<Tensor> = None;
                for i in 0..self.data.positives.len() {
                    let f = self
                        .features(SampleKind::Positive, i as u32, false)?
                        .to_dtype(DType::F32)?
                        .mean(0)?;
                    sum = Some(match sum {
                        Some(s) => (s + f)?,
                        None => f,
                    });
                }
                let mean = (sum.ok_or_else(|| TrainError::Input("no positives".into()))?
                    / self.data.positives.len() as f64)?;
                ConceptParams {
                    rows: (mean.unsqueeze(0)?.broadcast_as((k + 1, d))? + (rows_noise * 0.1)?)?,
                    head,
                }
            }
            Init::Word(word) => {
                let ids = self.session.codec().encode(&word, false)?;
                let ids: Vec<u32> = ids.into_iter().filter(|&i| i < self.base_vocab).collect();
                if ids.is_empty() {
                    return Err(TrainError::Input(format!(
                        "the initialisation word `{word}` has no tokens"
                    )));
                }
                let idx = Tensor::new(ids.as_slice(), &device)?;
                let emb = model
                    .embed_weight()
                    .index_select(&idx, 0)?
                    .to_dtype(DType::F32)?
                    .mean(0)?;
                let out = model
                    .lm_head_weight()
                    .index_select(&idx, 0)?
                    .to_dtype(DType::F32)?
                    .mean(0)?;
                ConceptParams {
                    rows: (emb.unsqueeze(0)?.broadcast_as((k + 1, d))? + (rows_noise * 0.1)?)?,
                    head: out,
                }
            }
            Init::Text(text) => {
                let ids = self.known_ids(&text)?;
                let cycled: Vec<u32> = ids.iter().copied().cycle().take(k).collect();
                let idx = Tensor::new(cycled.as_slice(), &device)?;
                let latents = model
                    .embed_weight()
                    .index_select(&idx, 0)?
                    .to_dtype(DType::F32)?;
                let identifier = rows_noise.narrow(0, 0, 1)?;
                ConceptParams {
                    rows: Tensor::cat(&[&identifier, &latents], 0)?,
                    head,
                }
            }
        })
    }

    /// The ids of `text` in the base vocabulary, refusing text the tokenizer does not know
    /// (a word-level vocabulary turns unknown words into `<unk>`, which says nothing).
    fn known_ids(&self, text: &str) -> Result<Vec<u32>> {
        let codec = self.session.codec();
        if !codec.represents(text)? {
            return Err(TrainError::Input(format!(
                "the initialisation text `{text}` has words the base model's tokenizer lacks"
            )));
        }
        let ids: Vec<u32> = codec
            .encode(text, false)?
            .into_iter()
            .filter(|&i| i < self.base_vocab)
            .collect();
        if ids.is_empty() {
            return Err(TrainError::Input(format!(
                "the initialisation text `{text}` has no tokens"
            )));
        }
        Ok(ids)
    }

    fn image(&self, kind: SampleKind, index: u32) -> Result<&image::RgbImage> {
        let list = match kind {
            SampleKind::Positive => &self.data.positives,
            SampleKind::HardNegative => &self.data.hard_negatives,
            SampleKind::EasyNegative => &self.data.easy_negatives,
            SampleKind::Conversation => {
                return Err(TrainError::Input("conversations have no image".into()))
            }
        };
        list.get(index as usize).map(|i| &i.image).ok_or_else(|| {
            TrainError::Input(format!(
                "{kind:?} {index} is out of range ({} images)",
                list.len()
            ))
        })
    }

    fn kind_code(kind: SampleKind) -> u8 {
        match kind {
            SampleKind::Positive => 0,
            SampleKind::HardNegative => 1,
            SampleKind::EasyNegative => 2,
            SampleKind::Conversation => 3,
        }
    }

    /// Projected image features `[N, d]` of an image variant, computed once.
    fn features(&mut self, kind: SampleKind, index: u32, flip: bool) -> Result<Tensor> {
        self.ensure_features(&[(kind, index, flip)])?;
        Ok(self.features[&(Self::kind_code(kind), index, flip)].clone())
    }

    /// Computes the missing features of `wanted` in batched vision-tower calls.
    fn ensure_features(&mut self, wanted: &[(SampleKind, u32, bool)]) -> Result<()> {
        let mut missing: Vec<(SampleKind, u32, bool)> = Vec::new();
        for &(kind, index, flip) in wanted {
            let key = (Self::kind_code(kind), index, flip);
            if !self.features.contains_key(&key) && !missing.contains(&(kind, index, flip)) {
                missing.push((kind, index, flip));
            }
        }
        let preprocess = self.session.preprocess_config().clone();
        for chunk in missing.chunks(EVAL_BATCH) {
            let mut px = Vec::with_capacity(chunk.len());
            for &(kind, index, flip) in chunk {
                let img = self.image(kind, index)?;
                px.push(
                    crate::images::pixels(img, flip, &preprocess)?
                        .to_tensor(self.model().device())
                        .map_err(concepts_runtime::RuntimeError::from)?,
                );
            }
            let px = Tensor::cat(&px, 0)?.to_dtype(self.model().dtype())?;
            let feats = self.model().image_features(&px, Kernels::Fast)?;
            for (i, &(kind, index, flip)) in chunk.iter().enumerate() {
                self.features
                    .insert((Self::kind_code(kind), index, flip), feats.get(i)?);
            }
        }
        Ok(())
    }

    fn encoded(&self, sample: &SampleRef) -> Result<&Encoded> {
        let list = match sample.kind {
            SampleKind::Positive => &self.positive,
            SampleKind::HardNegative | SampleKind::EasyNegative => &self.negative,
            SampleKind::Conversation => {
                return self
                    .conversations
                    .get(sample.index as usize)
                    .ok_or_else(|| {
                        TrainError::Input(format!("conversation {} is out of range", sample.index))
                    })
            }
        };
        Ok(&list[sample.template as usize % list.len()])
    }

    /// The padded constant embeddings `[B, T, d]` and the concept index/mask of a group of
    /// (encoding, image features) pairs.
    fn assemble(
        &self,
        group: &[(&Encoded, Option<Tensor>)],
    ) -> Result<(Tensor, Vec<u32>, Vec<u8>, usize)> {
        let model = self.model();
        let d = model.config().text.hidden_size;
        let t_max = group.iter().map(|(e, _)| e.len).max().unwrap_or(0);
        let mut rows = Vec::with_capacity(group.len());
        let mut idx = vec![0u32; group.len() * t_max];
        let mut mask = vec![0u8; group.len() * t_max];
        for (b, (enc, feats)) in group.iter().enumerate() {
            let mut parts = Vec::new();
            match (&enc.image, feats) {
                (Some(span), Some(f)) => {
                    if span.start > 0 {
                        parts.push(enc.base.narrow(0, 0, span.start)?);
                    }
                    parts.push(f.clone());
                    if span.end < enc.len {
                        parts.push(enc.base.narrow(0, span.end, enc.len - span.end)?);
                    }
                }
                _ => parts.push(enc.base.clone()),
            }
            if enc.len < t_max {
                parts.push(Tensor::zeros(
                    (t_max - enc.len, d),
                    model.dtype(),
                    model.device(),
                )?);
            }
            rows.push(Tensor::cat(&parts, 0)?);
            for &(pos, row) in &enc.concept {
                idx[b * t_max + pos] = row;
                mask[b * t_max + pos] = 1;
            }
        }
        Ok((Tensor::stack(&rows, 0)?, idx, mask, t_max))
    }

    /// Splices the concept rows (`[1 + k, d]`, model dtype) into constant embeddings.
    fn splice(
        &self,
        constant: &Tensor,
        rows: &Tensor,
        idx: Vec<u32>,
        mask: Vec<u8>,
    ) -> Result<Tensor> {
        let (b, t, d) = constant.dims3()?;
        let device = constant.device();
        let idx = Tensor::from_vec(idx, b * t, device)?;
        let mask = Tensor::from_vec(mask, (b * t, 1), device)?.broadcast_as((b * t, d))?;
        let picked = rows.index_select(&idx, 0)?;
        Ok(mask
            .where_cond(&picked, &constant.reshape((b * t, d))?)?
            .reshape((b, t, d))?)
    }

    /// Logits `[M, V + 1]` (f32) for hidden states `[M, d]`.
    fn logits(&self, hidden: &Tensor, head: &Tensor) -> Result<Tensor> {
        let base = self.model().base_logits(hidden)?;
        let own = hidden.matmul(&head.unsqueeze(1)?)?;
        Ok(Tensor::cat(&[&base, &own], D::Minus1)?.to_dtype(DType::F32)?)
    }

    /// The keys and values of the constant prefixes (`p` positions) of `group`, stacked into
    /// one cache with room for `reserve` more positions: kept ones reused, the others run now
    /// (in one batch, without gradients) and kept while the budget lasts.
    fn prefix_kv(
        &self,
        group: &[(&Encoded, Option<FeatureKey>)],
        constant: &Tensor,
        p: usize,
        reserve: usize,
    ) -> Result<KvCache> {
        let keys: Vec<PrefixKey> = group
            .iter()
            .map(|(enc, image)| PrefixKey {
                image: *image,
                ids: enc.ids[..p].to_vec(),
            })
            .collect();
        let mut store = self.prefixes.borrow_mut();
        let mut missing: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if store.get(key).is_none() && !missing.iter().any(|&j| keys[j] == *key) {
                missing.push(i);
            }
        }
        let mut unkept: HashMap<&PrefixKey, KvCache> = HashMap::new();
        if !missing.is_empty() {
            let device = constant.device();
            let picked = Tensor::from_vec(
                missing.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                missing.len(),
                device,
            )?;
            let started = std::time::Instant::now();
            let embeds = constant
                .index_select(&picked, 0)?
                .narrow(1, 0, p)?
                .contiguous()?;
            let mut kv = KvCache::new(self.model().config());
            self.model()
                .forward_embeds(&embeds, Some(&mut kv), Kernels::Fast)?;
            store.computed += missing.len() as u64;
            store.secs += started.elapsed().as_secs_f64();
            for (row, &i) in missing.iter().enumerate() {
                if let Some(back) = store.insert(keys[i].clone(), kv.row(row)?) {
                    unkept.insert(&keys[i], back);
                }
            }
        }
        let rows = keys
            .iter()
            .map(|key| {
                store
                    .get(key)
                    .or_else(|| unkept.get(key))
                    .ok_or_else(|| TrainError::Input("a prompt prefix went missing".into()))
            })
            .collect::<Result<Vec<&KvCache>>>()?;
        Ok(KvCache::stack(&rows, reserve)?)
    }

    /// Runs the decoder over a group of samples with the concept rows spliced in. Returns the
    /// final hidden states `[B, S, d]` of positions `start..start + S` of the right-padded
    /// batch: `start` is the group's constant prefix when it is reused ([`PrefixReuse`]), 0
    /// otherwise. Every sample of the group must have the same prefix length.
    fn forward_group(
        &self,
        group: &[(&Encoded, Option<FeatureKey>)],
        rows: &Tensor,
        kernels: Kernels,
    ) -> Result<(Tensor, usize)> {
        let with_features: Vec<(&Encoded, Option<Tensor>)> = group
            .iter()
            .map(|&(enc, key)| (enc, key.map(|k| self.features[&k].clone())))
            .collect();
        let (constant, idx, mask, t) = self.assemble(&with_features)?;
        drop(with_features);
        let p = group.first().map_or(0, |(enc, _)| enc.prefix);
        debug_assert!(group.iter().all(|(enc, _)| enc.prefix == p));
        if self.cfg.prefix == PrefixReuse::Off || p == 0 {
            let embeds = self.splice(&constant, rows, idx, mask)?;
            return Ok((self.model().forward_embeds(&embeds, None, kernels)?, 0));
        }
        let s = t - p;
        let mut cache = self.prefix_kv(group, &constant, p, s)?;
        fn suffix<T: Copy>(v: &[T], t: usize, p: usize) -> Vec<T> {
            v.chunks(t)
                .flat_map(|row| row[p..].iter().copied())
                .collect()
        }
        let embeds = self.splice(
            &constant.narrow(1, p, s)?,
            rows,
            suffix(&idx, t, p),
            suffix(&mask, t, p),
        )?;
        let hidden = self
            .model()
            .forward_embeds(&embeds, Some(&mut cache), kernels)?;
        Ok((hidden, p))
    }

    /// Sum of the answer-token NLL of a batch and the number of answer tokens.
    fn batch_nll(
        &mut self,
        samples: &[(SampleRef, bool)],
        rows: &Tensor,
        head: &Tensor,
    ) -> Result<(Tensor, usize)> {
        let wanted: Vec<(SampleKind, u32, bool)> = samples
            .iter()
            .filter(|(s, _)| s.kind != SampleKind::Conversation)
            .map(|(s, flip)| (s.kind, s.index, *flip))
            .collect();
        self.ensure_features(&wanted)?;
        // Image-free samples apart (they would be padded to image length), and samples with
        // different prefix lengths apart (a prefix cannot be padded).
        let mut groups: BTreeMap<(bool, usize), Group<'_>> = BTreeMap::new();
        for (s, flip) in samples {
            let enc = self.encoded(s)?;
            let image = (s.kind != SampleKind::Conversation)
                .then(|| (Self::kind_code(s.kind), s.index, *flip));
            groups
                .entry((image.is_some(), enc.prefix))
                .or_default()
                .push((enc, image));
        }
        let mut total: Option<Tensor> = None;
        let mut count = 0;
        for group in groups.values() {
            let (hidden, start) = self.forward_group(group, rows, Kernels::Differentiable)?;
            let (b, s, d) = hidden.dims3()?;
            let mut loss_rows = Vec::new();
            let mut targets = Vec::new();
            for (i, (enc, _)) in group.iter().enumerate() {
                for &(pos, target) in &enc.targets {
                    loss_rows.push((i * s + pos - start) as u32);
                    targets.push(target);
                }
            }
            let device = hidden.device().clone();
            let n = loss_rows.len();
            let picked = hidden
                .reshape((b * s, d))?
                .index_select(&Tensor::from_vec(loss_rows, n, &device)?, 0)?;
            let logp = ops::log_softmax_last_dim(&self.logits(&picked, head)?)?;
            let nll = logp
                .gather(&Tensor::from_vec(targets, (n, 1), &device)?, 1)?
                .neg()?
                .sum_all()?;
            count += n;
            total = Some(match total {
                Some(t) => (t + nll)?,
                None => nll,
            });
        }
        let total = total.ok_or_else(|| TrainError::Input("empty batch".into()))?;
        Ok((total, count))
    }

    /// The mean answer-token loss of `batch` at the current parameters and its gradients
    /// with respect to the concept rows `[1 + k, d]` and the head column `[d]` (f32). The
    /// step applies AdamW to these; tests compare them across [`PrefixReuse`] settings.
    pub fn loss_and_gradients(&mut self, batch: BatchId) -> Result<(f32, Tensor, Tensor)> {
        let samples = self
            .batches
            .get(&batch.0)
            .cloned()
            .ok_or_else(|| TrainError::Input(format!("no batch {}", batch.0)))?;
        let dtype = self.model().dtype();
        let rows_var = Var::from_tensor(&self.params.rows)?;
        let head_var = Var::from_tensor(&self.params.head)?;
        let rows = rows_var.as_tensor().to_dtype(dtype)?;
        let head = head_var.as_tensor().to_dtype(dtype)?;
        let (nll, count) = self.batch_nll(&samples, &rows, &head)?;
        let loss = (nll / count as f64)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Ok((
                value,
                self.params.rows.zeros_like()?,
                self.params.head.zeros_like()?,
            ));
        }
        let grads = loss.backward()?;
        let g_rows = match grads.get(rows_var.as_tensor()) {
            Some(g) => g.clone(),
            None => self.params.rows.zeros_like()?,
        };
        let g_head = match grads.get(head_var.as_tensor()) {
            Some(g) => g.clone(),
            None => self.params.head.zeros_like()?,
        };
        Ok((value, g_rows, g_head))
    }

    fn step(&mut self, batch: BatchId, lr: f32) -> Result<f32> {
        let (value, g_rows, g_head) = self.loss_and_gradients(batch)?;
        if !value.is_finite() {
            return Ok(value);
        }
        let a = self.cfg.adamw;
        let m = &mut self.moments;
        m.t += 1;
        let lr = f64::from(lr);
        // Weight decay applies to every trainable tensor here, as Yo'LLaVA's optimiser does.
        let update =
            |p: &Tensor, g: &Tensor, mo: &Tensor, v: &Tensor| a.update(p, g, mo, v, m.t, lr, true);
        let (rows, m_rows, v_rows) = update(&self.params.rows, &g_rows, &m.m_rows, &m.v_rows)?;
        let (head, m_head, v_head) = update(&self.params.head, &g_head, &m.m_head, &m.v_head)?;
        m.m_rows = m_rows;
        m.v_rows = v_rows;
        m.m_head = m_head;
        m.v_head = v_head;
        self.params = ConceptParams { rows, head };
        Ok(value)
    }

    /// Recognition over every training image (unflipped) with the evaluation question.
    fn recognition(&mut self) -> Result<Recognition> {
        let dtype = self.model().dtype();
        let rows = self.params.rows.to_dtype(dtype)?;
        let head = self.params.head.to_dtype(dtype)?;
        let mut images: Vec<(SampleKind, u32)> = Vec::new();
        for (kind, n) in [
            (SampleKind::Positive, self.data.positives.len()),
            (SampleKind::HardNegative, self.data.hard_negatives.len()),
            (SampleKind::EasyNegative, self.data.easy_negatives.len()),
        ] {
            images.extend((0..n as u32).map(|i| (kind, i)));
        }
        let (mut pos_ok, mut pos_n, mut neg_ok, mut neg_n, mut loss) =
            (0u32, 0u32, 0u32, 0u32, 0f64);
        for chunk in images.chunks(EVAL_BATCH) {
            let wanted: Vec<_> = chunk.iter().map(|&(k, i)| (k, i, false)).collect();
            self.ensure_features(&wanted)?;
            let group: Vec<(&Encoded, Option<FeatureKey>)> = chunk
                .iter()
                .map(|&(k, i)| (&self.eval, Some((Self::kind_code(k), i, false))))
                .collect();
            let (hidden, start) = self.forward_group(&group, &rows, Kernels::Fast)?;
            let last = hidden.narrow(1, self.eval.len - 1 - start, 1)?.squeeze(1)?;
            let logp = ops::log_softmax_last_dim(&self.logits(&last, &head)?)?.to_vec2::<f32>()?;
            for (&(kind, _), lp) in chunk.iter().zip(logp) {
                let (yes, no) = (lp[self.yes_id as usize], lp[self.no_id as usize]);
                let positive = kind == SampleKind::Positive;
                let said_yes = yes > no;
                loss -= f64::from(if positive { yes } else { no });
                if positive {
                    pos_n += 1;
                    pos_ok += u32::from(said_yes);
                } else {
                    neg_n += 1;
                    neg_ok += u32::from(!said_yes);
                }
            }
        }
        let frac = |a: u32, b: u32| if b == 0 { 1.0 } else { a as f32 / b as f32 };
        let n = pos_n + neg_n;
        Ok(Recognition {
            accuracy: frac(pos_ok + neg_ok, n),
            positive_accuracy: frac(pos_ok, pos_n),
            negative_accuracy: frac(neg_ok, neg_n),
            loss: (loss / f64::from(n.max(1))) as f32,
            examples: n,
        })
    }

    fn flip(&self, batch: u32, position: usize) -> bool {
        SplitMix64::hash(self.cfg.seed ^ (u64::from(batch) << 24) ^ position as u64) & 1 == 1
    }

    fn replaying_steps(&self) -> Option<f32> {
        let r = self.replay.as_ref()?;
        (self.steps < r.steps).then(|| self.history.step_losses[self.steps])
    }

    fn save_state(&self) -> Result<()> {
        let Some((path, job_key)) = &self.state else {
            return Ok(());
        };
        let meta = StateMeta {
            format: STATE_FORMAT.to_string(),
            job_key: job_key.clone(),
            adam_t: self.moments.t,
            history: self.history.clone(),
            best_epoch: self.best.as_ref().map(|b| b.epoch),
            best_recognition: self.best.as_ref().map(|b| b.recognition),
        };
        let mut named: Vec<(&str, &Tensor)> = vec![
            ("rows", &self.params.rows),
            ("head", &self.params.head),
            ("m_rows", &self.moments.m_rows),
            ("v_rows", &self.moments.v_rows),
            ("m_head", &self.moments.m_head),
            ("v_head", &self.moments.v_head),
        ];
        if let Some(best) = &self.best {
            named.push(("best_rows", &best.params.rows));
            named.push(("best_head", &best.params.head));
        }
        let mut data = Vec::new();
        for (name, t) in &named {
            let bytes: Vec<u8> = t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            data.push((*name, t.dims().to_vec(), bytes));
        }
        let views = data
            .iter()
            .map(|(n, shape, bytes)| {
                TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map(|v| (*n, v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| TrainError::File {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        let meta = serde_json::to_string(&meta).map_err(|e| TrainError::File {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let bytes =
            safetensors::serialize(views, Some(HashMap::from([("state".to_string(), meta)])))
                .map_err(|e| TrainError::File {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
        crate::write_atomic(path, &bytes)
    }
}

/// Tokenizes and embeds one `llava_v1/yollava-1` sample: the personal prompt and `question`
/// (after `<image>\n` when `image`), then ` {answer}</s>` as the only loss positions. Without
/// an answer (evaluation), the prompt alone.
fn encode(
    session: &Engine,
    markers: &[ConceptMarkers],
    base_vocab: u32,
    question: &str,
    answer: Option<&str>,
    image: bool,
) -> Result<Encoded> {
    let model = session.model();
    let cfg = model.config();
    let codec = session.codec();
    let prompt = Conversation::new(markers.to_vec()).prompt(question, image);
    let prompt_ids = codec.encode(&prompt, true)?;
    let ids = match answer {
        Some(a) => codec.encode(&format!("{prompt} {a}</s>"), true)?,
        None => prompt_ids.clone(),
    };
    if ids.len() <= prompt_ids.len() && answer.is_some()
        || !ids.starts_with(&prompt_ids[..prompt_ids.len().min(ids.len())])
    {
        return Err(TrainError::Input(format!(
            "the tokenizer does not split `{prompt}` the same with and without its answer"
        )));
    }
    let (ids, spans) = expand_image_tokens(&ids, cfg.image_token_id, cfg.image_seq_len());
    let prompt_len = prompt_ids.len() + spans.len() * cfg.image_seq_len().saturating_sub(1);
    if spans.len() != usize::from(image) {
        return Err(TrainError::Input(format!(
            "the prompt has {} image positions, expected {}",
            spans.len(),
            usize::from(image)
        )));
    }
    let len = ids.len();
    if len > cfg.text.max_position_embeddings {
        return Err(TrainError::Input(format!(
            "a training sample of {len} tokens exceeds the model's {} positions",
            cfg.text.max_position_embeddings
        )));
    }
    let concept: Vec<(usize, u32)> = ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id >= base_vocab)
        .map(|(p, &id)| (p, id - base_vocab))
        .collect();
    let base_ids: Vec<u32> = ids
        .iter()
        .map(|&id| if id >= base_vocab { 0 } else { id })
        .collect();
    let base = model.embed_tokens(&Tensor::from_vec(base_ids, len, model.device())?)?;
    let targets: Vec<(usize, u32)> = match answer {
        Some(_) => (prompt_len - 1..len - 1).map(|p| (p, ids[p + 1])).collect(),
        None => Vec::new(),
    };
    // Without an answer the last position is read (evaluation), so it stays in the suffix.
    let prefix = concept
        .first()
        .map(|&(p, _)| p)
        .into_iter()
        .chain(targets.first().map(|&(p, _)| p))
        .chain(std::iter::once(len - 1))
        .min()
        .unwrap_or(0);
    Ok(Encoded {
        len,
        ids,
        image: spans.into_iter().next(),
        base,
        concept,
        targets,
        prefix,
    })
}

impl TrainingHost for TrainingEngine<'_> {
    fn counts(&self) -> SampleCounts {
        SampleCounts {
            positives: self.data.positives.len() as u32,
            hard_negatives: self.data.hard_negatives.len() as u32,
            easy_negatives: self.data.easy_negatives.len() as u32,
            conversations: self.data.conversations.len() as u32,
            recognition_templates: self.positive.len().max(self.negative.len()) as u32,
        }
    }

    fn build_batch(&mut self, samples: &[SampleRef]) -> Result<BatchId, EngineError> {
        if samples.is_empty() {
            return Err(EngineError("an empty batch".to_string()));
        }
        let counts = self.counts();
        for s in samples {
            if s.index >= counts.of(s.kind) {
                return Err(EngineError(format!(
                    "sample {:?} {} is out of range ({} of that kind)",
                    s.kind,
                    s.index,
                    counts.of(s.kind)
                )));
            }
        }
        let id = self.built;
        self.built += 1;
        let entries = samples
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, s.kind != SampleKind::Conversation && self.flip(id, i)))
            .collect();
        self.batches.insert(id, entries);
        Ok(BatchId(id))
    }

    fn batch_len(&self, batch: BatchId) -> u32 {
        self.batches.get(&batch.0).map_or(0, |b| b.len() as u32)
    }

    fn drop_batch(&mut self, batch: BatchId) {
        self.batches.remove(&batch.0);
    }

    fn train_step(&mut self, batch: BatchId, learning_rate: f32) -> Result<f32, EngineError> {
        if !self.batches.contains_key(&batch.0) {
            return Err(EngineError(format!("no batch {}", batch.0)));
        }
        if let Some(loss) = self.replaying_steps() {
            self.steps += 1;
            return Ok(loss);
        }
        if let Some(e) = &self.failed {
            return Err(EngineError(e.to_string()));
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(EngineError(INTERRUPTED.to_string()));
        }
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(EngineError(format!(
                "learning rate {learning_rate} must be positive"
            )));
        }
        let started = std::time::Instant::now();
        let loss = self.step(batch, learning_rate).map_err(engine_err)?;
        self.timings.steps_secs += started.elapsed().as_secs_f64();
        self.steps += 1;
        self.history.step_losses.push(loss);
        self.observer.step(self.steps as u64, loss);
        Ok(loss)
    }

    fn evaluate_recognition(&mut self, _split: Split) -> Result<Recognition, EngineError> {
        self.snapshot_since_eval = None;
        if let Some(r) = &self.replay {
            if self.evals < r.evals {
                let rec = self.history.epochs[self.evals].validation;
                self.evals += 1;
                return Ok(rec);
            }
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(EngineError(INTERRUPTED.to_string()));
        }
        let started = std::time::Instant::now();
        let rec = self.recognition().map_err(engine_err)?;
        self.timings.recognition_secs += started.elapsed().as_secs_f64();
        self.evals += 1;
        Ok(rec)
    }

    fn snapshot(&mut self) -> Result<SnapshotId, EngineError> {
        let epoch = self.evals as u32;
        let snap = match &self.replay {
            // A snapshot after a replayed epoch other than the last saved one: only the best
            // epoch's parameters were saved.
            Some(r) if (epoch as usize) < r.evals => match (r.best_epoch, &r.best) {
                (Some(e), Some(p)) if e == epoch => Snapshot::Kept(p.clone(), self.moments.clone()),
                _ => Snapshot::Lost { epoch },
            },
            _ => Snapshot::Kept(self.params.clone(), self.moments.clone()),
        };
        self.snapshots.push(snap);
        self.snapshot_since_eval = Some(self.snapshots.len() - 1);
        Ok(SnapshotId(self.snapshots.len() as u32 - 1))
    }

    fn restore(&mut self, snapshot: SnapshotId) -> Result<(), EngineError> {
        match self.snapshots.get(snapshot.0 as usize) {
            Some(Snapshot::Kept(params, moments)) => {
                self.params = params.clone();
                self.moments = moments.clone();
                Ok(())
            }
            Some(Snapshot::Lost { epoch }) => Err(EngineError(format!(
                "snapshot {} of epoch {epoch} was taken before the resume point and not saved",
                snapshot.0
            ))),
            None => Err(EngineError(format!("no snapshot {}", snapshot.0))),
        }
    }

    fn report_epoch(&mut self, report: &EpochReport) {
        let replayed = self
            .replay
            .as_ref()
            .is_some_and(|r| (report.epoch as usize) <= r.evals);
        if !replayed {
            if report.is_best {
                let params = match self.snapshot_since_eval.and_then(|i| self.snapshots.get(i)) {
                    Some(Snapshot::Kept(p, _)) => p.clone(),
                    _ => self.params.clone(),
                };
                self.best = Some(Best {
                    epoch: report.epoch,
                    params,
                    recognition: report.validation,
                });
            }
            self.history.epochs.push(*report);
            if let Err(e) = self.save_state() {
                tracing::warn!("saving the training state: {e}");
            }
        }
        let event = EpochEvent {
            report,
            replayed,
            best: self.best.as_ref(),
            history: &self.history,
        };
        if let Err(e) = self.observer.epoch(event) {
            tracing::warn!("after epoch {}: {e}", report.epoch);
            self.failed.get_or_insert(e);
        }
    }
}

/// The engine's answer when the cancel flag is set.
pub const INTERRUPTED: &str = "interrupted";
