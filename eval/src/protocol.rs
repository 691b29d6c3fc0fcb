//! [`evaluate`]: the whole protocol on one dataset — train what is needed, then ask every
//! question under every condition.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use concept_format::ConceptPackage;
use concepts_runtime::session::Engine;
use concepts_runtime::Compute;

use crate::ask::ImageCache;
use crate::condition::Condition;
use crate::dataset::EvalDataset;
use crate::error::{EvalError, Result};
use crate::model_description::{self, ModelDescription};
use crate::report::{EvalReport, Timings, REPORT_FORMAT, REPORT_VERSION};
use crate::scorer::{check_cancel, EvalProgress, Scorer};
use crate::training::{train_or_reuse, TrainedConcept, TrainingConfig, TrainingJob};
use crate::{ablation, forgetting, multi};

/// What to run besides the dataset.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The base model folder (llava-hf layout, or quantized by `concepts quantize`).
    pub model: PathBuf,
    /// Its device and compute dtype, for training and evaluation alike.
    pub compute: Compute,
    /// Where trained concepts are cached (`<work_dir>/concepts/`).
    pub work_dir: PathBuf,
    /// Cache of pool embeddings for the miner; `None` disables it.
    pub pool_cache: Option<PathBuf>,
    /// The negative pool; `None`: the dataset's `negatives/` folder.
    pub negatives: Option<PathBuf>,
    /// How concepts are trained.
    pub training: TrainingConfig,
    /// Also run the multi-concept evaluation (needs the dataset's `multi/` photos).
    pub multi: bool,
    /// Also measure forgetting with this many questions per generic toy-world task.
    pub forgetting_per_task: Option<usize>,
    /// Also run the ablations (slow: retrains every subject per variant).
    pub ablations: bool,
    /// Where the ablation plot (PNG) goes; `None`: no plot.
    pub ablation_plot: Option<PathBuf>,
}

/// Runs the protocol of `docs/evaluation.md` on `dataset`: trains (or reuses) one concept per
/// subject, then scores recognition and A/B questions under each condition, and the optional
/// multi-concept and forgetting parts.
pub fn evaluate(
    dataset: &EvalDataset,
    cfg: &EvalConfig,
    progress: &mut dyn EvalProgress,
    cancel: &AtomicBool,
) -> Result<EvalReport> {
    let started = Instant::now();
    if dataset.subjects.is_empty() {
        return Err(EvalError::Setting("the dataset has no subjects".into()));
    }
    let pool = cfg
        .negatives
        .clone()
        .or_else(|| dataset.negatives.clone())
        .ok_or_else(|| {
            EvalError::Setting(format!(
                "no negative pool to train concepts with: `{}` has no `negatives/` folder with \
                 images; pass one explicitly",
                dataset.root.display()
            ))
        })?;
    let mut notes = Vec::new();
    let mut engine = Engine::load(&cfg.model, &cfg.compute.device, cfg.compute.dtype)?;
    let fingerprint = engine.fingerprint()?.clone();

    // --- The model-written descriptions (captions of the training photos, summarised): a
    // condition of their own, and where the learned concepts' latents start.
    let mut images = ImageCache::default();
    let mut written: BTreeMap<String, ModelDescription> = BTreeMap::new();
    let photos: usize = dataset.subjects.iter().map(|s| s.train.len()).sum();
    progress.start("captions", photos as u64);
    for subject in &dataset.subjects {
        let d = model_description::write(
            &engine,
            subject,
            &mut images,
            &mut || progress.tick(),
            cancel,
        )?;
        written.insert(subject.name.clone(), d);
    }
    progress.finish();
    let unreadable: Vec<&str> = written
        .iter()
        .filter(|(_, d)| d.description.is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    // Scored only when every subject has one, so that its averages are over the same
    // subjects as the other conditions'.
    if !unreadable.is_empty() {
        notes.push(format!(
            "model_description: skipped, the base model's captions of the training photos of {} \
             are not in the toy world's caption layout",
            unreadable.join(", ")
        ));
    }
    let score_model_description = unreadable.is_empty();

    // --- Concepts.
    let t_train = Instant::now();
    let quantized_digest = concepts_runtime::quant::quantized_digest(&cfg.model)?;
    let job = TrainingJob {
        model: &cfg.model,
        fingerprint: &fingerprint,
        compute: &cfg.compute,
        quantized_digest: quantized_digest.as_deref(),
        pool: &pool,
        pool_cache: cfg.pool_cache.as_deref(),
        work_dir: &cfg.work_dir,
        config: &cfg.training,
    };
    let total = dataset.subjects.len();
    let mut concepts: Vec<TrainedConcept> = Vec::with_capacity(total);
    for (i, subject) in dataset.subjects.iter().enumerate() {
        check_cancel(cancel)?;
        let mut silent = concepts_trainer::Silent;
        let sink: &mut dyn concepts_trainer::Progress = match progress.training(&subject.name) {
            Some(p) => p,
            None => &mut silent,
        };
        let description = written
            .get(&subject.name)
            .and_then(|d| d.description.as_deref());
        let trained = train_or_reuse(&job, subject, description, sink, cancel)?;
        progress.concept(&subject.name, i + 1, total, trained.cached);
        concepts.push(trained);
    }
    let training_secs = t_train.elapsed().as_secs_f64();
    let fresh: Vec<f64> = concepts
        .iter()
        .filter(|c| !c.cached)
        .map(|c| c.seconds)
        .collect();
    let mut weights = Vec::with_capacity(total);
    for c in &concepts {
        let package =
            ConceptPackage::read_file(&c.package).map_err(|source| EvalError::Package {
                path: c.package.clone(),
                source,
            })?;
        weights.push(engine.package_weights(&package)?);
    }

    let t_score = Instant::now();

    // --- Questions.
    let mut scorer = Scorer {
        dataset,
        base: &engine,
        weights: &weights,
        model_descriptions: &written,
        images: &mut images,
        progress,
        cancel,
    };
    let mut twins = BTreeMap::new();
    let (vanilla, t) = scorer.condition(Condition::Vanilla)?;
    twins.extend(t.map(|t| ("vanilla", t)));
    let description = if dataset.has_descriptions() {
        let (d, t) = scorer.condition(Condition::Description)?;
        twins.extend(t.map(|t| ("description", t)));
        Some(d)
    } else {
        notes.push(
            "description: skipped, the dataset has no subject descriptions (Yo'LLaVA layout)"
                .to_string(),
        );
        None
    };
    let model_description = if score_model_description {
        let (d, t) = scorer.condition(Condition::ModelDescription)?;
        twins.extend(t.map(|t| ("model_description", t)));
        Some(d)
    } else {
        None
    };
    let (learned, t) = scorer.condition(Condition::Learned)?;
    twins.extend(t.map(|t| ("learned", t)));
    if twins.is_empty() {
        notes.push("twins: the dataset has no photos of twins (toy layout 1)".to_string());
    }
    if vanilla.text_qa.is_none() {
        notes.push("text and visual QA: the dataset has no A/B questions".to_string());
    }
    let multi = if cfg.multi {
        let m = multi::evaluate(&mut scorer)?;
        if m.is_none() {
            notes.push("multi: the dataset has no multi-subject photos".to_string());
        }
        m
    } else {
        None
    };
    let forgetting = match cfg.forgetting_per_task {
        Some(per_task) => Some(forgetting::evaluate(&mut scorer, per_task)?),
        None => None,
    };
    let ablations = if cfg.ablations {
        Some(ablation::evaluate(
            &mut scorer,
            &job,
            cfg.ablation_plot.as_deref(),
        )?)
    } else {
        None
    };
    let scoring_secs = t_score.elapsed().as_secs_f64();

    Ok(EvalReport {
        format: REPORT_FORMAT,
        version: REPORT_VERSION,
        data: dataset.root.display().to_string(),
        layout: dataset.layout,
        model: cfg.model.display().to_string(),
        model_embed_sha256: fingerprint.embed_sha256.clone(),
        subjects: dataset.subjects.iter().map(|s| s.name.clone()).collect(),
        test_photos: dataset
            .subjects
            .iter()
            .map(|s| s.test.len())
            .max()
            .unwrap_or(0),
        training_config: cfg.training.clone(),
        vanilla,
        description,
        model_description,
        model_descriptions: written,
        learned,
        twins: (!twins.is_empty()).then_some(twins),
        multi,
        forgetting,
        ablations,
        concepts,
        notes,
        timings: Timings {
            total_secs: started.elapsed().as_secs_f64(),
            training_secs,
            seconds_per_concept: (!fresh.is_empty())
                .then(|| fresh.iter().sum::<f64>() / fresh.len() as f64),
            scoring_secs,
        },
    })
}
