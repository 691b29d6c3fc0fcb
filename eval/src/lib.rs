//! concepts-eval: the Yo'LLaVA evaluation protocol (Nguyen et al. 2024, §5) on any base model
//! and any dataset folder in the toy-world or the Yo'LLaVA layout.
//!
//! For each subject, its test photos are positives and every other subject's test photos are
//! negatives; the model is asked `Can you see if <sks> is in this photo? Answer with a single
//! word or phrase.` and its answer is read off as p(Yes) > p(No). Multiple-choice questions
//! (A/B, text-only and about a photo) are read off the same way as p(A) vs p(B). Four
//! conditions name the subject: [`Condition::Vanilla`] (by name), [`Condition::Description`]
//! (its true description in the prompt), [`Condition::ModelDescription`] (a description the
//! base model wrote from the training photos, the paper's automated baseline;
//! [`model_description`]) and [`Condition::Learned`] (a concept trained with
//! `concepts-trainer` on the subject's training photos). Optional parts: multi-concept photos,
//! forgetting on generic toy-world tasks, and the paper's ablations ([`ablation`]).
//!
//! Key design choice: no answer is generated (only the model-written descriptions are) —
//! every answer is a comparison of two next-token probabilities, so the numbers are
//! deterministic and cheap, and a weak model cannot score by rambling. Trained concepts are
//! cached under a work folder, keyed by everything that determines them, so a rerun only asks
//! questions.
//!
//! Entry points: [`read_dataset`], then [`evaluate`], which returns an [`EvalReport`] (JSON
//! via serde, or [`EvalReport::to_markdown`]). This crate reads no environment variable and
//! prints nothing.

#![deny(missing_docs)]

pub mod ablation;
pub mod ask;
pub mod condition;
pub mod dataset;
pub mod error;
mod forgetting;
pub mod metrics;
pub mod model_description;
mod multi;
mod protocol;
pub mod report;
mod scorer;
pub mod training;

pub use condition::{Condition, RECOGNITION_QUESTION};
pub use dataset::{read_dataset, EvalDataset, EvalSubject, Layout};
pub use error::{EvalError, Result};
pub use protocol::{evaluate, EvalConfig};
pub use report::EvalReport;
pub use scorer::{EvalProgress, Quiet};
pub use training::{LatentInit, TrainedConcept, TrainingConfig};
