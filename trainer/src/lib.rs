//! concepts-trainer: learns a Yo'LLaVA concept — an identifier embedding, `k` latent
//! embeddings and the identifier's LM-head column — from a handful of photos, with the base
//! model frozen, and writes it as a `.ycpt` package with a training report.
//!
//! Key design choice: the four stages of Yo'LLaVA (Nguyen et al. 2024, §3.1–3.3) are separate
//! steps, and the three whose policy is replaceable are the plugin host's role traits, resolved
//! into a [`PluginSet`] (built-in, wasm component or native library alike): negative mining
//! ([`mining`], role [`NegativeMiner`](concepts_plugin_host::NegativeMiner)), conversation data
//! ([`data`], role [`MetadataLinker`](concepts_plugin_host::MetadataLinker)), training ([`engine`],
//! a [`TrainingHost`](concepts_plugin_host::TrainingHost) driven by role
//! [`Trainer`](concepts_plugin_host::Trainer)), and packaging ([`train`]'s last step, [`report`]).
//! The engine owns every tensor; a stage only makes choices.
//!
//! Entry point: [`train`]. Every input is checked before long work starts (too few or
//! unreadable photos, an empty pool, an identifier that clashes with the base vocabulary or an
//! installed concept). Progress goes through [`Progress`]; a cancel flag stops training after
//! the current step, leaving the best checkpoint so far as a valid package (all files are
//! written atomically) and a state file from which `resume` continues to the same result as an
//! uninterrupted run.
//!
//! This crate reads no environment variables and prints nothing.

pub mod data;
pub mod engine;
pub mod error;
pub mod images;
pub mod mining;
pub mod prefix;
pub mod report;
pub mod templates;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use concept_format::{Category, ConceptPackage, Manifest, ModelFingerprint};
use concepts_plugin_api::{ConceptMetadata, EpochReport, MiningParams, TrainParams, TrainSummary};
use concepts_plugin_host::EmbeddingMatrix;
use concepts_runtime::prompt::{ConceptMarkers, TEMPLATE_ID};
use concepts_runtime::session::Engine;
use concepts_runtime::ConceptWeights;
use serde::Serialize;

pub use concepts_plugin_host::PluginSet;
pub use data::{ConversationConfig, Dataset, MAX_QUESTIONS_PER_IMAGE};
pub use engine::{AdamW, ConceptParams, EngineConfig, Init, TrainingEngine};
pub use error::{Result, TrainError};
pub use mining::PoolSource;
pub use prefix::PrefixReuse;

/// The trainer's name in package provenance.
pub const TRAINER_NAME: &str = "concepts-train";
/// The trainer's version in package provenance.
pub const TRAINER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Fewest photos of the subject accepted. Yo'LLaVA trains on 3–5 (the paper's default is 5);
/// with fewer, recognition overfits to one pose or background.
pub const MIN_POSITIVES: usize = 3;
/// Hard negatives wanted in total (the paper: ~100); `m` per positive is this over `n`.
pub const DEFAULT_HARD_TOTAL: u32 = 100;
/// Easy negatives (the paper: ~100).
pub const DEFAULT_EASY: u32 = 100;

/// The long-running phases, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Embedding the pool.
    Mining,
    /// Generating conversation answers.
    Conversations,
}

/// Receives progress; every method has a no-op default.
pub trait Progress {
    /// A phase starts with `total` units of work.
    fn start(&mut self, _phase: Phase, _total: u64) {}
    /// `done` units of the phase are done.
    fn advance(&mut self, _phase: Phase, _done: u64) {}
    /// The phase is over.
    fn finish(&mut self, _phase: Phase) {}
    /// Training starts: `epochs` at most, `replaying` of them from a saved state.
    fn training(&mut self, _epochs: u32, _replaying: u32) {}
    /// An optimiser step finished with this batch loss.
    fn step(&mut self, _step: u64, _loss: f32) {}
    /// An epoch finished (`replayed`: answered from the saved state on resume).
    fn epoch(&mut self, _report: &EpochReport, _replayed: bool) {}
    /// A one-line note for the user.
    fn note(&mut self, _text: &str) {}
}

/// A [`Progress`] that ignores everything.
pub struct Silent;

impl Progress for Silent {}

/// Who the concept is.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// File-system-safe name, e.g. `bo`.
    pub name: String,
    /// Identifier text, e.g. `<bo>`.
    pub identifier: String,
    pub display_name: String,
    pub category: Category,
    /// Free-text facts; each becomes a text-only training sample and goes into the manifest.
    pub user_facts: Vec<String>,
}

/// Everything [`train`] needs besides the model.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub subject: Subject,
    /// Folder of photos of the subject (not searched recursively).
    pub images: PathBuf,
    pub negatives: PoolSource,
    /// The `.ycpt` to write; the report and state files go beside it.
    pub output: PathBuf,
    /// Most epochs (the trainer stage may stop early).
    pub epochs: u32,
    /// Latent tokens.
    pub k: usize,
    pub learning_rate: f32,
    pub batch_size: u32,
    pub seed: u64,
    pub init: Init,
    pub adamw: AdamW,
    /// Hard negatives per positive; `None`: [`DEFAULT_HARD_TOTAL`] over the positives.
    pub hard_per_positive: Option<u32>,
    pub easy_negatives: u32,
    pub conversation: ConversationConfig,
    /// Continue from the state file beside `output`.
    pub resume: bool,
    /// Folder for the pool embedding cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Names and identifiers of installed concepts: the new one must differ from all.
    pub installed: Vec<String>,
    /// License of the package.
    pub license: String,
    /// Whether steps run the constant prompt prefix once, without gradients ([`prefix`]).
    pub prefix: PrefixReuse,
}

impl TrainConfig {
    /// The defaults of the paper's recipe for `subject`.
    pub fn new(
        subject: Subject,
        images: PathBuf,
        negatives: PoolSource,
        output: PathBuf,
    ) -> TrainConfig {
        TrainConfig {
            subject,
            images,
            negatives,
            output,
            epochs: 15,
            k: 16,
            learning_rate: 1e-3,
            batch_size: 4,
            seed: 0,
            init: Init::Random,
            adamw: AdamW::REFERENCE,
            hard_per_positive: None,
            easy_negatives: DEFAULT_EASY,
            conversation: ConversationConfig {
                max_answer_tokens: 48,
                questions_per_image: 10,
            },
            resume: false,
            cache_dir: None,
            installed: Vec::new(),
            license: "LicenseRef-personal".to_string(),
            prefix: PrefixReuse::default(),
        }
    }
}

/// The state file beside the output: `bo.ycpt` → `bo.ycpt.state`.
pub fn state_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".state");
    output.with_file_name(name)
}

/// What [`train`] produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub package: PathBuf,
    pub report_json: PathBuf,
    pub report_png: PathBuf,
    pub summary: TrainSummary,
    /// Weighted recognition ([`Recognition::weighted`](concepts_plugin_api::Recognition::weighted))
    /// of the best epoch on the validation images: the figure the package, the report and its
    /// plot show.
    pub best_accuracy: f32,
    pub counts: report::Counts,
    pub pool: mining::PoolReport,
    pub epochs: Vec<EpochReport>,
    pub step_losses: Vec<f32>,
    pub fingerprint: ModelFingerprint,
}

/// Writes `bytes` to `path` atomically, as a regular file ([`concepts_fs::write_atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(concepts_fs::write_atomic(path, bytes)?)
}

fn check_config(cfg: &TrainConfig) -> Result<()> {
    let bad = |m: String| Err(TrainError::Input(m));
    if cfg.epochs == 0 {
        return bad("epochs must be at least 1".into());
    }
    if cfg.k == 0 || cfg.k > 256 {
        return bad(format!("k = {} latent tokens, expected 1 to 256", cfg.k));
    }
    if cfg.batch_size == 0 {
        return bad("batch size must be at least 1".into());
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return bad(format!(
            "learning rate {} must be positive",
            cfg.learning_rate
        ));
    }
    if cfg.conversation.questions_per_image > data::MAX_QUESTIONS_PER_IMAGE {
        return bad(format!(
            "{} conversation questions per photo, at most {}",
            cfg.conversation.questions_per_image,
            data::MAX_QUESTIONS_PER_IMAGE
        ));
    }
    if cfg.seed > i64::MAX as u64 {
        return bad(format!("seed {} must be at most {}", cfg.seed, i64::MAX));
    }
    let name_ok = (1..=64).contains(&cfg.subject.name.len())
        && cfg
            .subject
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        return bad(format!(
            "concept name `{}`: expected 1 to 64 characters from a-z, 0-9, `_`, `-`",
            cfg.subject.name
        ));
    }
    let dir = cfg
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return bad(format!(
            "the output folder `{}` does not exist",
            dir.display()
        ));
    }
    if !cfg.images.is_dir() {
        return bad(format!(
            "`{}` is not a folder of photos",
            cfg.images.display()
        ));
    }
    Ok(())
}

/// Checks `identifier` (and its latent markers) against the tokenizer and installed concepts.
fn check_identifier(session: &Engine, cfg: &TrainConfig) -> Result<ConceptMarkers> {
    let subject = &cfg.subject;
    let err = |msg: String| TrainError::Identifier {
        identifier: subject.identifier.clone(),
        msg,
    };
    let markers =
        ConceptMarkers::new(&subject.identifier, cfg.k).map_err(|e| err(e.to_string()))?;
    if let Some(other) = cfg
        .installed
        .iter()
        .find(|i| **i == subject.identifier || **i == subject.name)
    {
        return Err(err(format!(
            "an installed concept is already called `{other}`; remove it or choose another name"
        )));
    }
    let codec = session.codec();
    let unk = codec.token_id("<unk>");
    for marker in markers.all() {
        if codec.token_id(marker).is_some() {
            return Err(err(format!(
                "clashes with the base vocabulary: the tokenizer already has the token `{marker}`"
            )));
        }
        let ids = codec.encode(marker, false)?;
        if ids.len() == 1 && Some(ids[0]) != unk {
            return Err(err(format!(
                "clashes with the base vocabulary: `{marker}` tokenizes to the single existing token {}",
                ids[0]
            )));
        }
    }
    Ok(markers)
}

fn metadata(subject: &Subject) -> ConceptMetadata {
    ConceptMetadata {
        name: subject.name.clone(),
        identifier: subject.identifier.clone(),
        display_name: subject.display_name.clone(),
        category: subject.category.as_str().to_string(),
        user_facts: subject.user_facts.clone(),
        relations: Vec::new(),
    }
}

/// Provenance and bookkeeping of one package write.
#[derive(Debug, Clone, Serialize)]
struct PackageInfo {
    epochs_run: u32,
    best_epoch: u32,
    best_accuracy: f32,
    stopped_early: bool,
    complete: bool,
}

/// What the package and report writers need to know about the job.
struct Job<'a> {
    cfg: &'a TrainConfig,
    fingerprint: ModelFingerprint,
    counts: report::Counts,
    stage_ids: report::StageIds,
    pool: report::PoolSummary,
    started: Instant,
    timings: report::Timings,
    /// Id of the recognition template set.
    templates: String,
}

impl Job<'_> {
    fn package(&self, params: &ConceptParams, info: &PackageInfo) -> Result<ConceptPackage> {
        let cfg = self.cfg;
        let tensors = params
            .to_weights(DType::F32)?
            .to_format(concept_format::DType::F32)?;
        let mut ext = toml::Table::new();
        let mut training = toml::Table::new();
        let s = |v: &str| toml::Value::String(v.to_string());
        let i = |v: u64| toml::Value::Integer(v.min(i64::MAX as u64) as i64);
        training.insert("best_epoch".into(), i(info.best_epoch.into()));
        training.insert("epochs_run".into(), i(info.epochs_run.into()));
        training.insert(
            "stopped_early".into(),
            toml::Value::Boolean(info.stopped_early),
        );
        training.insert("complete".into(), toml::Value::Boolean(info.complete));
        training.insert("conversations".into(), i(self.counts.conversations as u64));
        training.insert("recognition_templates".into(), s(&self.templates));
        training.insert("miner".into(), s(&self.stage_ids.miner));
        training.insert("trainer".into(), s(&self.stage_ids.trainer));
        training.insert("linker".into(), s(&self.stage_ids.linker));
        training.insert("init".into(), s(&cfg.init.label()));
        training.insert("batch_size".into(), i(cfg.batch_size.into()));
        training.insert(
            "base_fingerprint_embed".into(),
            s(&self.fingerprint.embed_sha256),
        );
        ext.insert("training".into(), toml::Value::Table(training));
        let created = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| TrainError::Input(e.to_string()))?;
        let manifest = Manifest {
            name: cfg.subject.name.clone(),
            identifier: cfg.subject.identifier.clone(),
            display_name: cfg.subject.display_name.clone(),
            category: cfg.subject.category,
            k: cfg.k as u32,
            d: self.fingerprint.hidden_size as u32,
            dtype: concept_format::DType::F32,
            base_model: self.fingerprint.clone(),
            prompt_template: TEMPLATE_ID.to_string(),
            provenance: Some(concept_format::Provenance {
                trainer: TRAINER_NAME.to_string(),
                trainer_version: TRAINER_VERSION.to_string(),
                epochs: info.epochs_run,
                learning_rate: f64::from(cfg.learning_rate),
                images: concept_format::ImageCounts {
                    positives: self.counts.positives as u32,
                    hard_negatives: self.counts.hard_negatives as u32,
                    easy_negatives: self.counts.easy_negatives as u32,
                },
                seed: cfg.seed,
                train_accuracy: f64::from(info.best_accuracy).clamp(0.0, 1.0),
                wall_time_secs: self.started.elapsed().as_secs_f64(),
            }),
            user_facts: cfg.subject.user_facts.clone(),
            relations: Vec::new(),
            license: cfg.license.clone(),
            created,
            body_sha256: String::new(),
            ext,
        };
        Ok(ConceptPackage::new(manifest, tensors)?)
    }

    fn report(
        &self,
        status: &str,
        history: &engine::History,
        best: Option<&engine::Best>,
    ) -> report::TrainingReport {
        let cfg = self.cfg;
        report::TrainingReport {
            name: cfg.subject.name.clone(),
            identifier: cfg.subject.identifier.clone(),
            status: status.to_string(),
            trainer_version: TRAINER_VERSION.to_string(),
            stages: self.stage_ids.clone(),
            seed: cfg.seed,
            init: cfg.init.label(),
            k: cfg.k,
            learning_rate: cfg.learning_rate,
            batch_size: cfg.batch_size,
            counts: self.counts,
            pool: self.pool.clone(),
            best_epoch: best.map(|b| b.epoch),
            best_accuracy: best.map(|b| b.recognition.weighted()),
            epochs: history.epochs.clone(),
            step_losses: history.step_losses.clone(),
            timings: self.timings,
        }
    }

    fn write_report(
        &self,
        status: &str,
        history: &engine::History,
        best: Option<&engine::Best>,
    ) -> Result<()> {
        let (json, png) = report::report_paths(&self.cfg.output);
        report::write_report(&self.report(status, history, best), &json, &png)
    }
}

/// Writes the best checkpoint and the report after every epoch.
struct Checkpointer<'a, 'b> {
    job: &'b Job<'a>,
    progress: &'b mut dyn Progress,
    written_best: Option<u32>,
    live_steps: u64,
    live_since: Instant,
    checkpoint_secs: f64,
}

impl engine::EngineObserver for Checkpointer<'_, '_> {
    fn step(&mut self, step: u64, loss: f32) {
        self.live_steps += 1;
        self.progress.step(step, loss);
    }

    fn epoch(&mut self, event: engine::EpochEvent<'_>) -> Result<()> {
        let started = Instant::now();
        let result = self.checkpoint(&event);
        self.checkpoint_secs += started.elapsed().as_secs_f64();
        self.progress.epoch(event.report, event.replayed);
        result
    }
}

impl Checkpointer<'_, '_> {
    fn checkpoint(&mut self, event: &engine::EpochEvent<'_>) -> Result<()> {
        if let Some(best) = event.best {
            if self.written_best != Some(best.epoch) {
                let info = PackageInfo {
                    epochs_run: event.report.epoch,
                    best_epoch: best.epoch,
                    best_accuracy: best.recognition.weighted(),
                    stopped_early: false,
                    complete: false,
                };
                self.job
                    .package(&best.params, &info)?
                    .write_file_atomic(&self.job.cfg.output)?;
                self.written_best = Some(best.epoch);
            }
        }
        self.job.write_report("running", event.history, event.best)
    }
}

/// Trains the concept of `cfg` on the model in `model_dir` and writes the package, its
/// report and (while training) a resumable state file. See the crate docs.
pub fn train(
    model_dir: &Path,
    device: &Device,
    dtype: DType,
    cfg: &TrainConfig,
    stages: &mut PluginSet,
    progress: &mut dyn Progress,
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    let started = Instant::now();
    // --- Every check before long work.
    check_config(cfg)?;
    let photo_paths = images::list_images(&cfg.images, false)?;
    if photo_paths.len() < MIN_POSITIVES {
        return Err(TrainError::TooFewPositives {
            dir: cfg.images.clone(),
            found: photo_paths.len(),
            min: MIN_POSITIVES,
        });
    }
    match &cfg.negatives {
        PoolSource::Dir(dir) => {
            if !dir.is_dir() {
                return Err(TrainError::Input(format!(
                    "the negative pool `{}` is not a folder",
                    dir.display()
                )));
            }
            if images::list_images(dir, true)?.is_empty() {
                return Err(TrainError::EmptyPool {
                    path: dir.clone(),
                    detail: " (no .png, .jpg, .jpeg or .webp files)".to_string(),
                });
            }
        }
        PoolSource::EmbeddingFile(file) => {
            if !file.is_file() {
                return Err(TrainError::Input(format!(
                    "the negative pool `{}` does not exist",
                    file.display()
                )));
            }
        }
    }
    let mut session = Engine::load(model_dir, device, dtype)?;
    let recognition_templates =
        templates::TemplateSet::for_model(model_dir).map_err(TrainError::Input)?;
    let min_side = images::min_image_side(session.model().config().vision.image_size);
    let positives = photo_paths
        .iter()
        .map(|p| images::load_checked(p, session.preprocess_config(), min_side))
        .collect::<Result<Vec<_>>>()?;
    check_identifier(&session, cfg)?;
    let metadata = metadata(&cfg.subject);
    stages
        .linker
        .validate(&metadata)
        .map_err(|source| TrainError::Stage {
            role: "linker",
            source: Box::new(source),
        })?;
    let state_file = state_path(&cfg.output);
    if cfg.resume && !state_file.is_file() {
        return Err(TrainError::Resume {
            path: state_file,
            msg: "there is no saved state to resume from (it is removed when training completes)"
                .into(),
        });
    }
    let fingerprint = session.fingerprint()?.clone();
    let model_key = mining::model_key(session.model(), &fingerprint, session.preprocess_config())?;

    // --- Stage 1: negative mining.
    let t0 = Instant::now();
    let pos_images: Vec<image::RgbImage> = positives.iter().map(|p| p.image.clone()).collect();
    let pos_rows = mining::embed_images(session.model(), session.preprocess_config(), &pos_images)?;
    let dim = session.model().config().vision.hidden_size;
    let pos_matrix = EmbeddingMatrix::new(dim, pos_rows.concat())
        .map_err(|e| TrainError::Input(format!("the positives' embeddings: {e}")))?;
    let mut cache = mining::EmbeddingCache::open(cfg.cache_dir.as_deref(), &model_key, dim);
    let embedder = mining::Embedder {
        model: session.model(),
        preprocess: session.preprocess_config(),
        model_key: &model_key,
        min_side,
    };
    let exclude: Vec<String> = positives.iter().map(|p| p.sha256.clone()).collect();
    let (pool, pool_report) = mining::embed_pool(
        &embedder,
        &cfg.negatives,
        &mut cache,
        &exclude,
        progress,
        cancel,
    )?;
    let hard_per_positive = cfg
        .hard_per_positive
        .unwrap_or_else(|| DEFAULT_HARD_TOTAL.div_ceil(positives.len() as u32));
    let mined = mining::mine(
        stages.miner.as_mut(),
        &pos_matrix,
        &pool,
        MiningParams {
            hard_per_positive,
            easy_count: cfg.easy_negatives,
            seed: cfg.seed,
        },
    )?;
    let load = |rows: &[usize]| -> Result<Vec<images::LoadedImage>> {
        rows.iter()
            .map(|&r| {
                let img = images::load_checked(
                    &pool.entries[r].path,
                    session.preprocess_config(),
                    min_side,
                )?;
                if img.sha256 != pool.entries[r].sha256 {
                    return Err(TrainError::Image {
                        path: img.path,
                        msg: "changed since its embedding was computed".into(),
                    });
                }
                Ok(img)
            })
            .collect()
    };
    let hard_negatives = load(&mined.hard)?;
    let easy_negatives = load(&mined.easy)?;
    progress.finish(Phase::Mining);
    let mining_secs = t0.elapsed().as_secs_f64();

    // --- Stage 2: conversation data.
    let t1 = Instant::now();
    let conversations = data::generate_conversations(
        &session,
        &positives,
        &metadata,
        stages.linker.as_mut(),
        &cfg.conversation,
        &recognition_templates,
        progress,
        cancel,
    )?;
    let data_secs = t1.elapsed().as_secs_f64();
    let dataset = Dataset {
        positives,
        hard_negatives,
        easy_negatives,
        conversations,
    };

    // --- Stage 3: training.
    let d = session.model().config().text.hidden_size;
    let zeros = Tensor::zeros(d, session.model().dtype(), device)?;
    let placeholder = ConceptWeights::new(
        zeros.clone(),
        Tensor::zeros((cfg.k, d), session.model().dtype(), device)?,
        zeros,
    )?;
    session.activate(&cfg.subject.name, &cfg.subject.identifier, placeholder)?;
    let job_key = job_key(cfg, &model_key, &dataset, stages, &recognition_templates);
    let saved = if cfg.resume {
        Some(engine::SavedState::read(&state_file, &job_key, device)?)
    } else {
        None
    };
    let replaying = saved.as_ref().map_or(0, |s| s.epochs_done() as u32);
    let counts = report::Counts {
        positives: dataset.positives.len(),
        hard_negatives: dataset.hard_negatives.len(),
        easy_negatives: dataset.easy_negatives.len(),
        conversations: dataset.conversations.len(),
    };
    let mut job = Job {
        cfg,
        templates: recognition_templates.id.clone(),
        fingerprint: fingerprint.clone(),
        counts,
        stage_ids: report::StageIds {
            miner: stages.miner.id().to_string(),
            trainer: stages.trainer.id().to_string(),
            linker: stages.linker.id().to_string(),
        },
        pool: report::PoolSummary {
            source: cfg.negatives.path().display().to_string(),
            listed: pool_report.listed,
            usable: pool.entries.len(),
            cache_hits: pool_report.cache_hits,
            embedded: pool_report.embedded,
            skipped: pool_report.skipped.len(),
        },
        started,
        timings: report::Timings {
            mining_secs,
            data_secs,
            ..Default::default()
        },
    };
    progress.training(cfg.epochs, replaying);
    let t2 = Instant::now();
    let mut checkpointer = Checkpointer {
        job: &job,
        progress,
        written_best: None,
        live_steps: 0,
        live_since: Instant::now(),
        checkpoint_secs: 0.0,
    };
    let engine_cfg = EngineConfig {
        k: cfg.k,
        init: cfg.init.clone(),
        seed: cfg.seed,
        adamw: cfg.adamw,
        templates: recognition_templates.clone(),
        prefix: cfg.prefix,
    };
    let mut engine = TrainingEngine::new(
        &session,
        &cfg.subject.name,
        &dataset,
        engine_cfg,
        saved,
        cancel,
        &mut checkpointer,
    )?;
    engine.save_state_to(&state_file, &job_key);
    let result = stages.trainer.train(
        &mut engine,
        TrainParams {
            epochs: Some(cfg.epochs),
            learning_rate: Some(cfg.learning_rate),
            batch_size: Some(cfg.batch_size),
            seed: cfg.seed,
        },
    );
    let failure = engine.take_failure();
    let history = engine.history().clone();
    let best = engine.best().cloned();
    let params = engine.params().clone();
    let engine_timings = engine.timings();
    drop(engine);
    let (live_steps, live_secs, wrote_best, checkpoint_secs) = (
        checkpointer.live_steps,
        checkpointer.live_since.elapsed().as_secs_f64(),
        checkpointer.written_best,
        checkpointer.checkpoint_secs,
    );
    job.timings.training_secs = t2.elapsed().as_secs_f64();
    job.timings.seconds_per_step = (live_steps > 0).then(|| live_secs / live_steps as f64);
    job.timings.checkpoint_secs = checkpoint_secs;
    job.timings.engine = engine_timings;
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            let interrupted = cancel.load(Ordering::Relaxed);
            job.write_report(
                if interrupted { "interrupted" } else { "failed" },
                &history,
                best.as_ref(),
            )?;
            if let Some(f) = failure {
                return Err(f);
            }
            if interrupted {
                return Err(TrainError::Interrupted {
                    best: wrote_best.map(|_| cfg.output.clone()),
                });
            }
            return Err(TrainError::Stage {
                role: "trainer",
                source: Box::new(e),
            });
        }
    };
    // --- Stage 4: packaging. The trainer left the best epoch's parameters in the engine.
    let best_accuracy = history
        .epochs
        .iter()
        .find(|e| e.epoch == summary.best_epoch)
        .map_or(summary.best_accuracy, |e| e.validation.weighted());
    let info = PackageInfo {
        epochs_run: summary.epochs_run,
        best_epoch: summary.best_epoch,
        best_accuracy,
        stopped_early: summary.stopped_early,
        complete: true,
    };
    job.package(&params, &info)?
        .write_file_atomic(&cfg.output)?;
    job.write_report("complete", &history, best.as_ref())?;
    if state_file.exists() {
        std::fs::remove_file(&state_file)
            .map_err(|e| TrainError::io("removing", &state_file, e))?;
    }
    let (report_json, report_png) = report::report_paths(&cfg.output);
    Ok(TrainOutcome {
        package: cfg.output.clone(),
        report_json,
        report_png,
        summary,
        best_accuracy,
        counts,
        pool: pool_report,
        epochs: history.epochs,
        step_losses: history.step_losses,
        fingerprint,
    })
}

/// A digest of everything that determines the result of training, so a state file is only
/// resumed by the same job.
fn job_key(
    cfg: &TrainConfig,
    model_key: &str,
    data: &Dataset,
    stages: &PluginSet,
    templates: &templates::TemplateSet,
) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        model: &'a str,
        positives: Vec<&'a str>,
        hard: Vec<&'a str>,
        easy: Vec<&'a str>,
        conversations: Vec<(&'a str, &'a str)>,
        k: usize,
        init: String,
        seed: u64,
        epochs: u32,
        lr: f32,
        batch: u32,
        adamw: [f64; 4],
        stages: [&'a str; 3],
        templates: &'a templates::TemplateSet,
        identifier: &'a str,
    }
    fn hashes(v: &[images::LoadedImage]) -> Vec<&str> {
        v.iter().map(|i| i.sha256.as_str()).collect()
    }
    let key = Key {
        model: model_key,
        positives: hashes(&data.positives),
        hard: hashes(&data.hard_negatives),
        easy: hashes(&data.easy_negatives),
        conversations: data
            .conversations
            .iter()
            .map(|t| (t.question.as_str(), t.answer.as_str()))
            .collect(),
        k: cfg.k,
        init: cfg.init.label(),
        seed: cfg.seed,
        epochs: cfg.epochs,
        lr: cfg.learning_rate,
        batch: cfg.batch_size,
        adamw: [
            cfg.adamw.beta1,
            cfg.adamw.beta2,
            cfg.adamw.eps,
            cfg.adamw.weight_decay,
        ],
        stages: stages.ids(),
        templates,
        identifier: &cfg.subject.identifier,
    };
    concepts_fs::sha256_hex(serde_json::to_string(&key).unwrap_or_default().as_bytes())
}
