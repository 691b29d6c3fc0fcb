//! [`evaluate`]: the whole protocol on one dataset — train what is needed, then ask every
//! question under every condition.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device};
use concept_format::ConceptPackage;
use concepts_runtime::session::Engine;

use crate::ask::{picks, says_yes, ImageCache};
use crate::condition::{
    described_message, identifier, user_message, Condition, RECOGNITION_QUESTION,
};
use crate::dataset::EvalDataset;
use crate::error::{EvalError, Result};
use crate::metrics::{mean_accuracy, mean_recognition, RecognitionScores, RecognitionTally, Tally};
use crate::model_description::{self, ModelDescription};
use crate::report::{
    ConditionReport, EvalReport, SubjectScores, Timings, REPORT_FORMAT, REPORT_VERSION,
};
use crate::training::{train_or_reuse, TrainedConcept, TrainingConfig, TrainingJob};
use crate::{ablation, forgetting, multi};

/// What to run besides the dataset.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The base model folder (llava-hf layout).
    pub model: PathBuf,
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

/// Receives progress. Only the CLI draws it; every method has a no-op default.
pub trait EvalProgress {
    /// The trainer's progress sink while the concept of `subject` trains; `None`: silent.
    fn training(&mut self, _subject: &str) -> Option<&mut dyn concepts_trainer::Progress> {
        None
    }
    /// Concept `index` of `total` (for `subject`) is ready.
    fn concept(&mut self, _subject: &str, _index: usize, _total: usize, _cached: bool) {}
    /// A scoring pass of `total` questions starts.
    fn start(&mut self, _label: &str, _total: u64) {}
    /// One more question was asked.
    fn tick(&mut self) {}
    /// The scoring pass is over.
    fn finish(&mut self) {}
}

/// An [`EvalProgress`] that ignores everything.
pub struct Quiet;

impl EvalProgress for Quiet {}

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(EvalError::Cancelled)
    } else {
        Ok(())
    }
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
    let mut engine = Engine::load(&cfg.model, &Device::Cpu, DType::F32)?;
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
    let job = TrainingJob {
        model: &cfg.model,
        fingerprint: &fingerprint,
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

/// Asks questions over the dataset with a chosen set of active concepts.
pub(crate) struct Scorer<'a> {
    pub(crate) dataset: &'a EvalDataset,
    pub(crate) base: &'a Engine,
    /// The converted weights of each subject's concept, in subject order.
    pub(crate) weights: &'a [concepts_runtime::ConceptWeights],
    /// What the base model wrote about each subject, by name.
    pub(crate) model_descriptions: &'a BTreeMap<String, ModelDescription>,
    pub(crate) images: &'a mut ImageCache,
    pub(crate) progress: &'a mut dyn EvalProgress,
    pub(crate) cancel: &'a AtomicBool,
}

impl Scorer<'_> {
    /// An engine over the base model with the concepts of the subjects at `indices` active.
    pub(crate) fn engine_with(&self, indices: &[usize]) -> Result<Engine> {
        let subjects = &self.dataset.subjects;
        let ids: Vec<String> = indices.iter().map(|&i| identifier(&subjects[i])).collect();
        let concepts = indices.iter().zip(&ids).map(|(&i, id)| {
            (
                subjects[i].name.as_str(),
                id.as_str(),
                self.weights[i].clone(),
            )
        });
        Ok(self.base.with_concepts(concepts)?)
    }

    /// `template` about `subject` under `condition`; `None` when the condition has nothing to
    /// say about the subject.
    fn message(
        &self,
        condition: Condition,
        subject: &crate::dataset::EvalSubject,
        template: &str,
    ) -> Option<String> {
        match condition {
            Condition::ModelDescription => self
                .model_descriptions
                .get(&subject.name)?
                .description
                .as_deref()
                .map(|d| described_message(subject, d, template)),
            _ => user_message(condition, subject, template),
        }
    }

    /// Scores `condition`: recognition against the other subjects' test photos and the A/B
    /// questions, and, when the dataset has twins, recognition against the subject's twins
    /// (its test photos as positives, its twins' photos as negatives).
    pub(crate) fn condition(
        &mut self,
        condition: Condition,
    ) -> Result<(ConditionReport, Option<RecognitionScores>)> {
        let subjects = &self.dataset.subjects;
        let photos: usize = subjects.iter().map(|s| s.test.len()).sum();
        let questions: usize = subjects
            .iter()
            .filter_map(|s| s.qa.as_ref())
            .map(|q| q.text.len() + q.visual.len())
            .sum::<usize>()
            + subjects.iter().map(|s| s.twins.len()).sum::<usize>();
        self.progress.start(
            condition.as_str(),
            (subjects.len() * photos + questions) as u64,
        );
        let mut per_subject = BTreeMap::new();
        let (mut recs, mut texts, mut visuals) = (Vec::new(), Vec::new(), Vec::new());
        let mut twin_recs = Vec::new();
        let mut by_topic: BTreeMap<String, Tally> = BTreeMap::new();
        for (si, subject) in subjects.iter().enumerate() {
            let engine = match condition {
                Condition::Learned => self.engine_with(&[si])?,
                _ => self.base.with_concepts([])?,
            };
            let Some(message) = self.message(condition, subject, RECOGNITION_QUESTION) else {
                continue;
            };
            let mut rec = RecognitionTally::default();
            for (oi, other) in subjects.iter().enumerate() {
                for photo in &other.test {
                    check_cancel(self.cancel)?;
                    let pixels = self.images.get(&engine, photo)?;
                    rec.add(oi == si, says_yes(&engine, &message, Some(pixels))?);
                    self.progress.tick();
                }
            }
            if !subject.twins.is_empty() {
                // Positives are the answers already given on the subject's own test photos.
                let mut twin = RecognitionTally {
                    positive: rec.positive,
                    ..Default::default()
                };
                for photo in &subject.twins {
                    check_cancel(self.cancel)?;
                    let pixels = self.images.get(&engine, photo)?;
                    twin.add(false, says_yes(&engine, &message, Some(pixels))?);
                    self.progress.tick();
                }
                twin_recs.push(twin.scores());
            }
            let (mut text, mut visual) = (Tally::default(), Tally::default());
            if let Some(qa) = &subject.qa {
                for q in &qa.text {
                    check_cancel(self.cancel)?;
                    let msg = self
                        .message(condition, subject, &q.prompt)
                        .unwrap_or_default();
                    let picked = picks(&engine, &msg, None)?;
                    let right = picked == q.answer;
                    tracing::debug!(
                        condition = condition.as_str(),
                        subject = %subject.name,
                        about = %q.about,
                        question = ?q.prompt,
                        answer = ?q.answer,
                        ?picked,
                        "text question"
                    );
                    text.add(right);
                    by_topic.entry(q.about.clone()).or_default().add(right);
                    self.progress.tick();
                }
                for v in &qa.visual {
                    check_cancel(self.cancel)?;
                    let msg = self
                        .message(condition, subject, &v.question.prompt)
                        .unwrap_or_default();
                    let pixels = self.images.get(&engine, &v.image)?;
                    visual.add(picks(&engine, &msg, Some(pixels))? == v.question.answer);
                    self.progress.tick();
                }
            }
            let scores = rec.scores();
            recs.push(scores);
            texts.push(text);
            visuals.push(visual);
            per_subject.insert(
                subject.name.clone(),
                SubjectScores {
                    recognition: scores,
                    text_qa: text.accuracy(),
                    visual_qa: visual.accuracy(),
                },
            );
        }
        self.progress.finish();
        let overall = mean_recognition(&recs).ok_or_else(|| {
            EvalError::Setting(format!(
                "no subject could be asked about under `{}`",
                condition.as_str()
            ))
        })?;
        let twins = (twin_recs.len() == recs.len())
            .then(|| mean_recognition(&twin_recs))
            .flatten();
        let report = ConditionReport {
            positive: overall.positive,
            negative: overall.negative,
            weighted: overall.weighted,
            text_qa: mean_accuracy(&texts),
            text_qa_by_topic: by_topic
                .into_iter()
                .filter_map(|(topic, t)| Some((topic, t.accuracy()?)))
                .collect(),
            visual_qa: mean_accuracy(&visuals),
            positives: overall.positives,
            negatives: overall.negatives,
            text_questions: texts.iter().map(|t| t.total).sum(),
            visual_questions: visuals.iter().map(|t| t.total).sum(),
            per_subject,
        };
        Ok((report, twins))
    }
}
