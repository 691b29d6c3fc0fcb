//! Training the concepts the learned condition needs, with an on-disk cache.
//!
//! A trained package is stored as `<work>/concepts/<subject>-<key>.ycpt`, where the key is a
//! digest of everything that determines it: the subject's name and training photos (bytes),
//! the base model's fingerprint, the negative pool's listing and the training settings. A
//! rerun with the same inputs reuses the package instead of training again.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use concept_format::{Category, ConceptPackage, ModelFingerprint};
use concepts_runtime::Compute;
use concepts_trainer::views::CrowdedStyle;
use concepts_trainer::{Init, PluginSet, PoolSource, Progress, Subject, TrainConfig};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::condition::identifier;
use crate::dataset::EvalSubject;
use crate::error::{EvalError, Result};

/// Version of the cache key; bump when the key's inputs change meaning.
const CACHE_KEY_VERSION: u32 = 1;

/// The training settings of every concept of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingConfig {
    /// Most epochs.
    pub epochs: u32,
    /// Latent tokens.
    pub k: usize,
    /// AdamW learning rate.
    pub learning_rate: f32,
    /// Seed for mining, templates and initialisation.
    pub seed: u64,
    /// Attribute questions the base model answers per photo for the conversation data (0-10).
    pub questions_per_image: usize,
    /// Hard negatives per photo; `None`: the trainer's default (100 over the photos).
    pub hard_per_positive: Option<u32>,
    /// Easy negatives.
    pub easy_negatives: u32,
    /// Crowded views per photo (`concepts_trainer::views`).
    pub crowded_views: u32,
    /// What they paste. Left out of the cache key while it is the default, so concepts
    /// trained before the option existed are still found.
    #[serde(skip_serializing_if = "is_photo")]
    pub crowded_style: CrowdedStyle,
    /// How the latent rows start.
    pub init: LatentInit,
}

fn is_photo(style: &CrowdedStyle) -> bool {
    *style == CrowdedStyle::Photo
}

/// How each concept's latent rows start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatentInit {
    /// Spelling the base model's own description of the subject's training photos (the
    /// prompt of the `model_description` condition; `Init::Text` in the trainer), so training
    /// starts where that prompt ends. Random for a subject the model wrote none for.
    ModelDescription,
    /// Gaussian rows (Yo'LLaVA's reference, `Init::Random`).
    Random,
    /// Every row at the mean object token of the training photos (MC-LLaVA's idea,
    /// `Init::Visual`).
    Visual,
    /// The model-written description once, then the photos' object token in the remaining
    /// rows (`Init::TextVisual`); the object token alone for a subject the model wrote none for.
    ModelDescriptionVisual,
}

impl LatentInit {
    /// The trainer's initialisation for a subject the base model described as `description`.
    pub fn for_subject(self, description: Option<&str>) -> Init {
        match (self, description) {
            (LatentInit::ModelDescription, Some(d)) => Init::Text(d.to_string()),
            (LatentInit::ModelDescriptionVisual, Some(d)) => Init::TextVisual(d.to_string()),
            (LatentInit::Visual | LatentInit::ModelDescriptionVisual, _) => Init::Visual,
            _ => Init::Random,
        }
    }
}

/// One concept of the learned condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainedConcept {
    /// The subject.
    pub subject: String,
    /// The package file.
    pub package: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Seconds spent training it in this run (0 when cached).
    pub seconds: f64,
    /// The trainer's recognition accuracy on its own validation split.
    pub train_accuracy: f64,
    /// Epochs the trainer ran.
    pub epochs_run: u32,
}

/// Where the trainer finds its inputs.
#[derive(Clone, Copy)]
pub struct TrainingJob<'a> {
    /// The base model folder.
    pub model: &'a Path,
    /// Its fingerprint (part of the cache key).
    pub fingerprint: &'a ModelFingerprint,
    /// Its device and compute dtype (part of the cache key: a quantized folder has its
    /// source's fingerprint, but trains other concepts).
    pub compute: &'a Compute,
    /// The SHA-256 of the folder's quantized weights, if it has them (part of the cache key:
    /// quantized folders of one source share its fingerprint). Hashed once per evaluation
    /// with [`concepts_runtime::quant::quantized_digest`], not once per subject.
    pub quantized_digest: Option<&'a str>,
    /// The negative pool folder.
    pub pool: &'a Path,
    /// Cache of pool embeddings, shared by every subject.
    pub pool_cache: Option<&'a Path>,
    /// The folder holding `concepts/`.
    pub work_dir: &'a Path,
    /// The settings.
    pub config: &'a TrainingConfig,
}

/// The cache key of `subject` for `job`, its latents starting at `init`: lowercase hex, 16
/// digits.
pub fn cache_key(job: &TrainingJob<'_>, subject: &EvalSubject, init: &Init) -> Result<String> {
    #[derive(Serialize)]
    struct Key<'a> {
        version: u32,
        trainer: &'a str,
        subject: &'a str,
        photos: Vec<String>,
        fingerprint: &'a ModelFingerprint,
        compute: String,
        /// The quantized weights' digest: folders of one source share its fingerprint.
        quantized: Option<&'a str>,
        pool: Vec<(String, u64)>,
        config: &'a TrainingConfig,
        init: String,
        /// The model's own template set, which the trainer reads (not part of the fingerprint).
        templates: Option<String>,
    }
    let photos = concepts_trainer::images::list_images(&subject.train_dir, false)
        .map_err(|e| EvalError::dataset(&subject.train_dir, e.to_string()))?
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| hex::encode(Sha256::digest(&b)))
                .map_err(|e| EvalError::io("reading", p, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let pool = concepts_trainer::images::list_images(job.pool, true)
        .map_err(|e| EvalError::dataset(job.pool, e.to_string()))?
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            let rel = p.strip_prefix(job.pool).unwrap_or(&p).display().to_string();
            (rel, len)
        })
        .collect();
    let key = Key {
        version: CACHE_KEY_VERSION,
        trainer: concepts_trainer::TRAINER_VERSION,
        subject: &subject.name,
        photos,
        fingerprint: job.fingerprint,
        compute: job.compute.label(job.model)?,
        quantized: job.quantized_digest,
        pool,
        config: job.config,
        init: init.label(),
        templates: std::fs::read_to_string(
            job.model
                .join(concepts_trainer::templates::MODEL_TEMPLATES_FILE),
        )
        .ok(),
    };
    let json = serde_json::to_vec(&key).map_err(|source| EvalError::Json {
        path: subject.train_dir.clone(),
        source,
    })?;
    Ok(hex::encode(Sha256::digest(&json))[..16].to_string())
}

/// Returns the cached package of `subject` or trains it through the full Yo'LLaVA pipeline
/// (built-in stages) and caches it. `description` is what the base model wrote about the
/// subject, for [`LatentInit::ModelDescription`].
pub fn train_or_reuse(
    job: &TrainingJob<'_>,
    subject: &EvalSubject,
    description: Option<&str>,
    progress: &mut dyn Progress,
    cancel: &AtomicBool,
) -> Result<TrainedConcept> {
    let dir = job.work_dir.join("concepts");
    std::fs::create_dir_all(&dir).map_err(|e| EvalError::io("creating", &dir, e))?;
    let init = job.config.init.for_subject(description);
    let key = cache_key(job, subject, &init)?;
    let package = dir.join(format!("{}-{key}.ycpt", subject.name));
    if package.is_file() {
        match ConceptPackage::read_file(&package) {
            Ok(p) => {
                tracing::info!(subject = %subject.name, path = %package.display(), "reusing the cached concept");
                let (train_accuracy, epochs_run) = p
                    .manifest()
                    .provenance
                    .as_ref()
                    .map_or((0.0, 0), |p| (p.train_accuracy, p.epochs));
                return Ok(TrainedConcept {
                    subject: subject.name.clone(),
                    package,
                    cached: true,
                    seconds: 0.0,
                    train_accuracy,
                    epochs_run,
                });
            }
            Err(e) => {
                tracing::warn!(path = %package.display(), "retraining: the cached package is unreadable: {e}");
            }
        }
    }
    let cfg = job.config;
    let trainer_subject = Subject {
        name: subject.name.clone(),
        identifier: identifier(subject),
        display_name: subject.text_name(),
        category: Category::Object,
        user_facts: Vec::new(),
    };
    let mut tc = TrainConfig::new(
        trainer_subject,
        subject.train_dir.clone(),
        PoolSource::Dir(job.pool.to_path_buf()),
        package.clone(),
    );
    tc.epochs = cfg.epochs;
    tc.k = cfg.k;
    tc.learning_rate = cfg.learning_rate;
    tc.seed = cfg.seed;
    tc.conversation.questions_per_image = cfg.questions_per_image;
    tc.hard_per_positive = cfg.hard_per_positive;
    tc.easy_negatives = cfg.easy_negatives;
    tc.crowded_views = cfg.crowded_views;
    tc.crowded_style = cfg.crowded_style;
    tc.init = init;
    tc.cache_dir = job.pool_cache.map(Path::to_path_buf);
    let mut stages = PluginSet::builtin();
    let started = Instant::now();
    let outcome = concepts_trainer::train(
        job.model,
        &job.compute.device,
        job.compute.dtype,
        &tc,
        &mut stages,
        progress,
        cancel,
    )
    .map_err(|source| EvalError::Training {
        subject: subject.name.clone(),
        source,
    })?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(subject = %subject.name, seconds, "trained");
    Ok(TrainedConcept {
        subject: subject.name.clone(),
        package: outcome.package,
        cached: false,
        seconds,
        train_accuracy: f64::from(outcome.best_accuracy),
        epochs_run: outcome.summary.epochs_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crowded_style_enters_the_cache_key_only_when_it_is_not_the_default() {
        let mut cfg = TrainingConfig {
            epochs: 15,
            k: 16,
            learning_rate: 1e-3,
            seed: 0,
            questions_per_image: 10,
            hard_per_positive: None,
            easy_negatives: 100,
            crowded_views: 4,
            crowded_style: CrowdedStyle::Photo,
            init: LatentInit::ModelDescription,
        };
        let photo = serde_json::to_string(&cfg).unwrap();
        assert!(!photo.contains("crowded_style"), "{photo}");
        cfg.crowded_style = CrowdedStyle::Object;
        let object = serde_json::to_string(&cfg).unwrap();
        assert!(object.contains(r#""crowded_style":"object""#), "{object}");
    }
}
