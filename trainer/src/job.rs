//! One training job's outputs: the package, the report and the state file, written after
//! every epoch and at the end

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use concept_format::{ConceptPackage, Manifest, ModelFingerprint};
use concepts_plugin_api::ConceptMetadata;
use concepts_runtime::prompt::TEMPLATE_ID;
use serde::Serialize;

use crate::config::{Subject, TrainConfig};
use crate::data::Dataset;
use crate::engine::{self, ConceptParams};
use crate::error::{Result, TrainError};
use crate::progress::Progress;
use crate::{images, report, templates};
use concepts_plugin_host::PluginSet;

/// The trainer's version in package provenance.
pub const TRAINER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The trainer's name in package provenance.
pub const TRAINER_NAME: &str = "concepts-train";

/// The state file beside the output: `bo.ycpt` → `bo.ycpt.state`.
pub fn state_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".state");
    output.with_file_name(name)
}

pub(crate) fn metadata(subject: &Subject) -> ConceptMetadata {
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
pub(crate) struct PackageInfo {
    pub(crate) epochs_run: u32,
    pub(crate) best_epoch: u32,
    pub(crate) best_accuracy: f32,
    pub(crate) stopped_early: bool,
    pub(crate) complete: bool,
}

/// What the package and report writers need to know about the job.
pub(crate) struct Job<'a> {
    pub(crate) cfg: &'a TrainConfig,
    pub(crate) fingerprint: ModelFingerprint,
    pub(crate) counts: report::Counts,
    pub(crate) stage_ids: report::StageIds,
    pub(crate) pool: report::PoolSummary,
    pub(crate) started: Instant,
    pub(crate) timings: report::Timings,
    /// Id of the recognition template set.
    pub(crate) templates: String,
}

impl Job<'_> {
    pub(crate) fn package(
        &self,
        params: &ConceptParams,
        info: &PackageInfo,
    ) -> Result<ConceptPackage> {
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

    pub(crate) fn report(
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

    pub(crate) fn write_report(
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
pub(crate) struct Checkpointer<'a, 'b> {
    pub(crate) job: &'b Job<'a>,
    pub(crate) progress: &'b mut dyn Progress,
    pub(crate) written_best: Option<u32>,
    pub(crate) live_steps: u64,
    pub(crate) live_since: Instant,
    pub(crate) checkpoint_secs: f64,
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

/// A digest of everything that determines the result of training, so a state file is only
/// resumed by the same job.
pub(crate) fn job_key(
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
        crowded_views: u32,
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
        crowded_views: cfg.crowded_views,
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
