//! The evaluation's result: one JSON document (`concepts eval --json`) and a Markdown table.
//!
//! The JSON schema is documented in `docs/evaluation.md`; fields are only ever added.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use concepts_runtime::prompt::PersonalPrompts;
use serde::Serialize;

use crate::dataset::Layout;
use crate::metrics::RecognitionScores;
use crate::model_description::ModelDescription;
use crate::training::{TrainedConcept, TrainingConfig};

/// The `format` field of the JSON document.
pub const REPORT_FORMAT: &str = "concepts-eval";
/// The `version` field of the JSON document.
pub const REPORT_VERSION: u32 = 1;

/// Everything one evaluation measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Always [`REPORT_FORMAT`].
    pub format: &'static str,
    /// Always [`REPORT_VERSION`].
    pub version: u32,
    /// The dataset folder.
    pub data: String,
    /// Its layout.
    pub layout: Layout,
    /// The base model folder.
    pub model: String,
    /// SHA-256 of the base model's input embeddings (identifies the checkpoint).
    pub model_embed_sha256: String,
    /// The subjects evaluated, in order.
    pub subjects: Vec<String>,
    /// Test photos per subject (the largest count).
    pub test_photos: usize,
    /// How the learned concepts were trained.
    pub training_config: TrainingConfig,
    /// No personal prompt, the subject called by name.
    pub vanilla: ConditionReport,
    /// The true description in the prompt; `null` when the dataset has no descriptions.
    pub description: Option<ConditionReport>,
    /// A description the base model wrote from the training photos in the prompt (the paper's
    /// automated baseline); `null` when some subject's captions could not be read.
    pub model_description: Option<ConditionReport>,
    /// What the base model wrote about each subject: its captions and their summary.
    pub model_descriptions: BTreeMap<String, ModelDescription>,
    /// The learned concept active.
    pub learned: ConditionReport,
    /// Recognition where the negatives are each subject's twins (the same description, another
    /// identity detail), per condition (`vanilla`, `description`, `model_description`,
    /// `learned`); `null` when the dataset has no twins.
    pub twins: Option<BTreeMap<&'static str, RecognitionScores>>,
    /// Photos with two or three subjects or impostors, their concepts active; `null` when not
    /// run or no such photos.
    pub multi: Option<MultiReport>,
    /// Generic task accuracy with 0, 1 and 5 concepts active; `null` when not run.
    pub forgetting: Option<ForgettingReport>,
    /// The paper's ablations (k, n, hard negatives); `null` when not run.
    pub ablations: Option<AblationReport>,
    /// The concepts of the learned condition.
    pub concepts: Vec<TrainedConcept>,
    /// Conditions or parts that were skipped, and why.
    pub notes: Vec<String>,
    /// Where the time went.
    pub timings: Timings,
}

/// Scores of one condition: overall (macro average over subjects) and per subject.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionReport {
    /// Recognition accuracy on photos of the subject.
    pub positive: f64,
    /// Recognition accuracy on photos of other subjects.
    pub negative: f64,
    /// `(positive + negative) / 2`.
    pub weighted: f64,
    /// Text-only A/B accuracy; `null` when the dataset has no questions.
    pub text_qa: Option<f64>,
    /// Text-only A/B accuracy per topic (`shape`, `colour`, `pattern`, …), over all the
    /// subjects' questions on that topic.
    pub text_qa_by_topic: BTreeMap<String, f64>,
    /// A/B accuracy about test photos; `null` when the dataset has no such questions.
    pub visual_qa: Option<f64>,
    /// Positive photos asked about, over all subjects.
    pub positives: usize,
    /// Negative photos asked about, over all subjects.
    pub negatives: usize,
    /// Text-only questions asked.
    pub text_questions: usize,
    /// Visual questions asked.
    pub visual_questions: usize,
    /// The same per subject.
    pub per_subject: BTreeMap<String, SubjectScores>,
}

/// One subject's scores under one condition.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectScores {
    /// Recognition.
    #[serde(flatten)]
    pub recognition: RecognitionScores,
    /// Text-only A/B accuracy.
    pub text_qa: Option<f64>,
    /// Visual A/B accuracy.
    pub visual_qa: Option<f64>,
}

/// Multi-concept recognition: every concept named in a photo's labels is active and asked
/// about.
#[derive(Debug, Clone, Serialize)]
pub struct MultiReport {
    /// Photos used.
    pub photos: usize,
    /// Photos showing two subjects.
    pub pair_photos: usize,
    /// Photos showing three subjects.
    pub triple_photos: usize,
    /// Questions about a subject whose look-alike or twin, not itself, is in the photo.
    pub impostor_questions: usize,
    /// Share of two-subject photos where both concepts were recognised.
    pub both_recognised: f64,
    /// Share of three-subject photos where all three concepts were recognised; `null` without
    /// such photos.
    pub triples_all_recognised: Option<f64>,
    /// Share of impostor questions answered "No"; `null` without such questions.
    pub rejected: Option<f64>,
    /// Recognition over every (photo, active concept) question.
    pub recognition: RecognitionScores,
    /// The same questions with every active concept's personal prompt in the prompt (the
    /// scores above introduce only the concept asked about, as the runtime does by default).
    pub all_introduced: MultiScores,
    /// The same questions with no concept active and only the subject's name in the question
    /// (the `vanilla` condition): the floor a learned concept must clear.
    pub vanilla: MultiScores,
    /// The same questions with no concept active and the true description of the subject
    /// asked about in the prompt (the `description` condition); `null` without descriptions.
    /// What the base model can do here with the right words: the ceiling its pretraining sets.
    pub description: Option<MultiScores>,
}

/// Multi-concept scores under one way of introducing the active concepts.
#[derive(Debug, Clone, Serialize)]
pub struct MultiScores {
    /// Share of two-subject photos where both concepts were recognised.
    pub both_recognised: f64,
    /// Share of three-subject photos where all three were recognised.
    pub triples_all_recognised: Option<f64>,
    /// Share of impostor questions answered "No".
    pub rejected: Option<f64>,
    /// Recognition over every (photo, active concept) question.
    pub recognition: RecognitionScores,
}

/// Generic (non-personal) task accuracy as concepts are added.
#[derive(Debug, Clone, Serialize)]
pub struct ForgettingReport {
    /// Questions per generic task.
    pub per_task: usize,
    /// One entry per number of active concepts and way of introducing them: 0, 1, 5
    /// concepts as the runtime asks by default (`mentioned`), then 1 and 5 with every
    /// personal prompt before each question (`all`).
    pub runs: Vec<ForgettingRun>,
}

/// Generic accuracy with `concepts` concepts active.
#[derive(Debug, Clone, Serialize)]
pub struct ForgettingRun {
    /// Active concepts.
    pub concepts: usize,
    /// Which of them had their personal prompt before each (concept-free) question.
    pub personal_prompts: PersonalPrompts,
    /// Exact-match accuracy over all tasks.
    pub accuracy: f64,
    /// Per task.
    pub tasks: BTreeMap<String, f64>,
}

/// Wall-clock seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    /// The whole evaluation.
    pub total_secs: f64,
    /// Training concepts in this run.
    pub training_secs: f64,
    /// Mean seconds per concept trained in this run; `null` when all came from the cache.
    pub seconds_per_concept: Option<f64>,
    /// Asking the questions.
    pub scoring_secs: f64,
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn opt_pct(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_string(), pct)
}

/// "both recognised X%, all three Y%, present Z%": how many subjects one way of asking found in
/// the multi photos.
fn found(m: &MultiScores) -> String {
    format!(
        "both recognised {}%, all three {}%, present {}%",
        pct(m.both_recognised),
        opt_pct(m.triples_all_recognised),
        pct(m.recognition.positive)
    )
}

impl EvalReport {
    /// The conditions that ran, in report order.
    pub fn conditions(&self) -> Vec<(&'static str, &ConditionReport)> {
        let mut out = vec![("vanilla", &self.vanilla)];
        if let Some(d) = &self.description {
            out.push(("description", d));
        }
        if let Some(d) = &self.model_description {
            out.push(("model_description", d));
        }
        out.push(("learned", &self.learned));
        out
    }

    /// A Markdown summary: the overall table, one table per condition with a row per
    /// subject, then multi-concept, forgetting and notes. Accuracies are percentages.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Evaluation of `{}` on `{}` ({} subjects, up to {} test photos each)\n",
            self.model,
            self.data,
            self.subjects.len(),
            self.test_photos
        );
        let _ = writeln!(
            s,
            "| condition | positive | negative | weighted | text QA | visual QA |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for (name, c) in self.conditions() {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | **{}** | {} | {} |",
                pct(c.positive),
                pct(c.negative),
                pct(c.weighted),
                opt_pct(c.text_qa),
                opt_pct(c.visual_qa)
            );
        }
        let topics: std::collections::BTreeSet<&str> = self
            .conditions()
            .iter()
            .flat_map(|(_, c)| c.text_qa_by_topic.keys().map(String::as_str))
            .collect();
        if !topics.is_empty() {
            let _ = writeln!(s, "\nText QA per topic:\n");
            let topics: Vec<&str> = topics.into_iter().collect();
            let _ = writeln!(s, "| condition | {} |", topics.join(" | "));
            let _ = writeln!(s, "|---|{}", "---:|".repeat(topics.len()));
            for (name, c) in self.conditions() {
                let cells: Vec<String> = topics
                    .iter()
                    .map(|t| opt_pct(c.text_qa_by_topic.get(*t).copied()))
                    .collect();
                let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "Weighted recognition per subject:\n");
        let names: Vec<&str> = self.conditions().iter().map(|(n, _)| *n).collect();
        let _ = writeln!(s, "| subject | {} |", names.join(" | "));
        let _ = writeln!(s, "|---|{}", "---:|".repeat(names.len()));
        for subject in &self.subjects {
            let cells: Vec<String> = self
                .conditions()
                .iter()
                .map(|(_, c)| {
                    c.per_subject
                        .get(subject)
                        .map_or_else(|| "–".into(), |x| pct(x.recognition.weighted))
                })
                .collect();
            let _ = writeln!(s, "| {subject} | {} |", cells.join(" | "));
        }
        let written: Vec<(&String, &str)> = self
            .model_descriptions
            .iter()
            .filter_map(|(name, d)| Some((name, d.description.as_deref()?)))
            .collect();
        if !written.is_empty() {
            let _ = writeln!(s, "\nModel-written descriptions (model_description):\n");
            for (name, d) in written {
                let _ = writeln!(s, "- {name}: {d}");
            }
        }
        if let Some(twins) = &self.twins {
            let cells: Vec<String> = twins
                .iter()
                .map(|(name, t)| format!("{name} {}", pct(t.weighted)))
                .collect();
            let _ = writeln!(
                s,
                "\nTwins (negatives: the subject's twins, same description, another tone), \
                 weighted: {}",
                cells.join(", ")
            );
        }
        if let Some(m) = &self.multi {
            let _ = write!(
                s,
                "\nMulti-concept ({} photos: {} with two subjects, {} with three): both \
                 recognised {}%, all three recognised {}%, present subjects recognised {}%",
                m.photos,
                m.pair_photos,
                m.triple_photos,
                pct(m.both_recognised),
                opt_pct(m.triples_all_recognised),
                pct(m.recognition.positive)
            );
            if m.impostor_questions > 0 {
                let _ = write!(
                    s,
                    ", subjects shown only as a look-alike or twin rejected {}%",
                    opt_pct(m.rejected)
                );
            }
            let _ = writeln!(
                s,
                "; with every active concept introduced: {}",
                found(&m.all_introduced)
            );
            let v = &m.vanilla;
            let _ = write!(s, "Vanilla (the name only): {}", found(v));
            // Weighted recognition counts a side without questions as 0: only meaningful
            // with impostors.
            if m.impostor_questions > 0 {
                let _ = write!(
                    s,
                    ", impostors rejected {}%, weighted {}% (learned {}%)",
                    opt_pct(v.rejected),
                    pct(v.recognition.weighted),
                    pct(m.recognition.weighted)
                );
            }
            s.push('\n');
            if let Some(d) = &m.description {
                let _ = writeln!(
                    s,
                    "With the true description instead of a concept: {}, impostors rejected {}%",
                    found(d),
                    opt_pct(d.rejected)
                );
            }
        }
        if let Some(f) = &self.forgetting {
            let runs: Vec<String> = f
                .runs
                .iter()
                .map(|r| {
                    let how = match (r.concepts, r.personal_prompts) {
                        (0, _) | (_, PersonalPrompts::Mentioned) => "",
                        (_, PersonalPrompts::All) => " (all introduced)",
                    };
                    format!("{} concepts{how} {}%", r.concepts, pct(r.accuracy))
                })
                .collect();
            let _ = writeln!(s, "\nGeneric accuracy: {}", runs.join(", "));
        }
        if let Some(a) = &self.ablations {
            let _ = writeln!(s, "\nAblations (learned condition):\n\n{}", a.to_markdown());
            if let Some(plot) = &a.plot {
                let _ = writeln!(s, "Plot: `{}`", plot.display());
            }
        }
        let trained = self.concepts.iter().filter(|c| !c.cached).count();
        let cached = self.concepts.len() - trained;
        let _ = match self.timings.seconds_per_concept {
            Some(secs) => writeln!(
                s,
                "\nConcepts: {trained} trained ({secs:.0} s each on average), {cached} from the \
                 cache; total {:.0} s",
                self.timings.total_secs
            ),
            None => writeln!(
                s,
                "\nConcepts: all {cached} from the cache; total {:.0} s",
                self.timings.total_secs
            ),
        };
        for note in &self.notes {
            let _ = writeln!(s, "\nNote: {note}");
        }
        s
    }
}
/// One ablation variant's learned-condition scores.
#[derive(Debug, Clone, Serialize)]
pub struct AblationRow {
    /// `k`, `n` or `hard_negatives`.
    pub factor: String,
    /// The factor's value (`2`, `5`, `without`).
    pub value: String,
    /// Recognition, macro-averaged over subjects.
    pub recognition: RecognitionScores,
    /// Text-only A/B accuracy, when the dataset has questions.
    pub text_qa: Option<f64>,
}

/// All variants.
#[derive(Debug, Clone, Serialize)]
pub struct AblationReport {
    /// One row per variant that ran.
    pub rows: Vec<AblationRow>,
    /// Variants that could not run, and why.
    pub skipped: Vec<String>,
    /// The PNG plot, when one was written.
    pub plot: Option<PathBuf>,
}
