//! The part of the protocol that every section shares: asking questions over the dataset with
//! a chosen set of active concepts ([`Scorer`]), progress and cancellation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use concepts_runtime::session::Engine;

use crate::ask::{picks, says_yes, ImageCache};
use crate::condition::{
    described_message, identifier, user_message, Condition, RECOGNITION_QUESTION,
};
use crate::dataset::EvalDataset;
use crate::error::{EvalError, Result};
use crate::metrics::{mean_accuracy, mean_recognition, RecognitionScores, RecognitionTally, Tally};
use crate::model_description::ModelDescription;
use crate::report::{ConditionReport, SubjectScores};

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

pub(crate) fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(EvalError::Cancelled)
    } else {
        Ok(())
    }
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
