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

pub mod cutout;
pub mod data;
pub mod engine;
pub mod error;
pub mod images;
pub mod mining;
pub mod prefix;
pub mod report;
pub mod templates;
pub mod views;

mod config;
mod job;
mod progress;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use concept_format::ModelFingerprint;
use concepts_plugin_api::{EpochReport, MiningParams, TrainParams, TrainSummary};
use concepts_runtime::session::Engine;
use concepts_runtime::ConceptWeights;

pub use concepts_plugin_host::PluginSet;
use config::{check_config, check_identifier};
pub use config::{Subject, TrainConfig, DEFAULT_EASY, DEFAULT_HARD_TOTAL, MIN_POSITIVES};
pub use data::{ConversationConfig, Dataset, MAX_QUESTIONS_PER_IMAGE};
pub use engine::{AdamW, ConceptParams, EngineConfig, Init, TrainingEngine};
pub use error::{Result, TrainError};
use job::{job_key, metadata, Checkpointer, Job, PackageInfo};
pub use job::{state_path, TRAINER_NAME, TRAINER_VERSION};
pub use mining::PoolSource;
pub use prefix::PrefixReuse;
pub use progress::{Phase, Progress, Silent};

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
    let photo_paths = check_config(cfg)?;
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
    let mining::Negatives {
        hard: hard_negatives,
        easy: easy_negatives,
        report: pool_report,
        usable: pool_usable,
    } = mining::mine_negatives(
        &session,
        &cfg.negatives,
        cfg.cache_dir.as_deref(),
        MiningParams {
            hard_per_positive: cfg
                .hard_per_positive
                .unwrap_or_else(|| DEFAULT_HARD_TOTAL.div_ceil(positives.len() as u32)),
            easy_count: cfg.easy_negatives,
            seed: cfg.seed,
        },
        &positives,
        &model_key,
        min_side,
        stages.miner.as_mut(),
        progress,
        cancel,
    )?;
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
    let (crowded_positives, crowded_negatives) = views::crowded_views(
        &positives,
        &hard_negatives,
        &easy_negatives,
        cfg.crowded_views,
        cfg.crowded_style,
        cfg.seed,
    );
    let mut dataset = Dataset {
        positives,
        hard_negatives,
        easy_negatives,
        crowded_views: crowded_positives.len(),
        conversations,
    };
    dataset.positives.extend(crowded_positives);
    dataset.hard_negatives.extend(crowded_negatives);

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
        positives: dataset.photos(),
        hard_negatives: dataset.mined_hard_negatives(),
        easy_negatives: dataset.easy_negatives.len(),
        conversations: dataset.conversations.len(),
        crowded_views: dataset.crowded_views,
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
            usable: pool_usable,
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
