//! The wasm side: `wit-bindgen` bindings of the role's world, and generic `Guest` impls that run a
//! role trait.

#[cfg(feature = "miner")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/since_v0.1.0",
        world: "negative-miner",
        pub_export_macro: true,
        export_macro_name: "__concepts_export_world",
    });
}

#[cfg(feature = "trainer")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/since_v0.1.0",
        world: "trainer",
        pub_export_macro: true,
        export_macro_name: "__concepts_export_world",
    });
}

#[cfg(feature = "linker")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/since_v0.1.0",
        world: "metadata-linker",
        pub_export_macro: true,
        export_macro_name: "__concepts_export_world",
    });
}

use core::marker::PhantomData;

use bindings::concepts::plugin::host;
use concepts_plugin_api::LogLevel;

pub(crate) fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Trace => host::LogLevel::Trace,
        LogLevel::Debug => host::LogLevel::Debug,
        LogLevel::Info => host::LogLevel::Info,
        LogLevel::Warn => host::LogLevel::Warn,
        LogLevel::Error => host::LogLevel::Error,
    };
    host::log(level, message);
}

pub(crate) fn progress(done: u64, total: u64, message: &str) {
    host::progress(done, total, message);
}

#[cfg(feature = "miner")]
pub use miner::*;

#[cfg(feature = "miner")]
mod miner {
    use super::bindings::concepts::plugin::embeddings::{self as wit, Matrix};
    use super::bindings::exports::concepts::plugin::miner as export;
    use super::PhantomData;
    use crate::{MinedNegative, MiningParams, NegativeMiner, NegativeRole, ScoredRow};

    pub(crate) fn top_k(
        query: &Matrix,
        pool: &Matrix,
        k: u32,
    ) -> Result<Vec<Vec<ScoredRow>>, String> {
        let lists = wit::top_k(query, pool, k)?;
        Ok(lists
            .into_iter()
            .map(|list| {
                list.into_iter()
                    .map(|s| ScoredRow {
                        row: s.row,
                        score: s.score,
                    })
                    .collect()
            })
            .collect())
    }

    pub(crate) fn max_similarity(query: &Matrix, pool: &Matrix) -> Result<Vec<f32>, String> {
        wit::max_similarity(query, pool)
    }

    /// Exports `M` as the world's `miner` interface.
    pub struct MinerComponent<M>(PhantomData<M>);

    impl<M: NegativeMiner> export::Guest for MinerComponent<M> {
        fn mine(
            positives: &Matrix,
            pool: &Matrix,
            params: export::MiningParams,
        ) -> Result<Vec<export::MinedNegative>, String> {
            let job = crate::MiningJob::new(
                crate::Context::new(),
                crate::Matrix::new(positives),
                crate::Matrix::new(pool),
            );
            let params = MiningParams {
                hard_per_positive: params.hard_per_positive,
                easy_count: params.easy_count,
                seed: params.seed,
            };
            let mined = M::new().mine(&job, params)?;
            Ok(mined
                .into_iter()
                .map(|m: MinedNegative| export::MinedNegative {
                    pool_row: m.pool_row,
                    role: match m.role {
                        NegativeRole::Hard => export::NegativeRole::Hard,
                        NegativeRole::Easy => export::NegativeRole::Easy,
                    },
                    score: m.score,
                })
                .collect())
        }
    }
}

#[cfg(feature = "trainer")]
pub use trainer::*;

#[cfg(feature = "trainer")]
mod trainer {
    use super::bindings::concepts::plugin::training_host as wit;
    use super::bindings::exports::concepts::plugin::training_policy as export;
    use super::PhantomData;
    use crate::{
        EpochReport, Recognition, SampleCounts, SampleKind, SampleRef, Split, TrainParams, Trainer,
    };

    pub(crate) fn counts() -> SampleCounts {
        let c = wit::counts();
        SampleCounts {
            positives: c.positives,
            hard_negatives: c.hard_negatives,
            easy_negatives: c.easy_negatives,
            conversations: c.conversations,
            recognition_templates: c.recognition_templates,
        }
    }

    pub(crate) fn build_batch(samples: &[SampleRef]) -> Result<wit::Batch, String> {
        let samples: Vec<wit::SampleRef> = samples
            .iter()
            .map(|s| wit::SampleRef {
                kind: match s.kind {
                    SampleKind::Positive => wit::SampleKind::Positive,
                    SampleKind::HardNegative => wit::SampleKind::HardNegative,
                    SampleKind::EasyNegative => wit::SampleKind::EasyNegative,
                    SampleKind::Conversation => wit::SampleKind::Conversation,
                },
                index: s.index,
                template: s.template,
            })
            .collect();
        wit::build_batch(&samples)
    }

    pub(crate) fn train_step(batch: &wit::Batch, learning_rate: f32) -> Result<f32, String> {
        wit::train_step(batch, learning_rate)
    }

    fn split(split: Split) -> wit::Split {
        match split {
            Split::Train => wit::Split::Train,
            Split::Validation => wit::Split::Validation,
        }
    }

    fn recognition(r: wit::Recognition) -> Recognition {
        Recognition {
            accuracy: r.accuracy,
            positive_accuracy: r.positive_accuracy,
            negative_accuracy: r.negative_accuracy,
            loss: r.loss,
            examples: r.examples,
        }
    }

    pub(crate) fn evaluate_recognition(s: Split) -> Result<Recognition, String> {
        wit::evaluate_recognition(split(s)).map(recognition)
    }

    pub(crate) fn snapshot() -> Result<u32, String> {
        wit::snapshot()
    }

    pub(crate) fn restore(snapshot: u32) -> Result<(), String> {
        wit::restore(snapshot)
    }

    pub(crate) fn report_epoch(report: &EpochReport) {
        let v = report.validation;
        wit::report_epoch(wit::EpochReport {
            epoch: report.epoch,
            learning_rate: report.learning_rate,
            mean_loss: report.mean_loss,
            validation: wit::Recognition {
                accuracy: v.accuracy,
                positive_accuracy: v.positive_accuracy,
                negative_accuracy: v.negative_accuracy,
                loss: v.loss,
                examples: v.examples,
            },
            is_best: report.is_best,
        });
    }

    /// Exports `T` as the world's `training-policy` interface.
    pub struct TrainerComponent<T>(PhantomData<T>);

    impl<T: Trainer> export::Guest for TrainerComponent<T> {
        fn train(params: export::TrainParams) -> Result<export::TrainSummary, String> {
            let params = TrainParams {
                epochs: params.epochs,
                learning_rate: params.learning_rate,
                batch_size: params.batch_size,
                seed: params.seed,
            };
            let s = T::new().train(&crate::TrainingJob::new(), params)?;
            Ok(export::TrainSummary {
                epochs_run: s.epochs_run,
                best_epoch: s.best_epoch,
                best_accuracy: s.best_accuracy,
                stopped_early: s.stopped_early,
            })
        }
    }
}

#[cfg(feature = "linker")]
pub use linker::*;

#[cfg(feature = "linker")]
mod linker {
    use super::bindings::exports::concepts::plugin::linker as export;
    use super::PhantomData;
    use crate::{ConceptMetadata, Context, MetadataLinker, Relation, Turn};

    fn metadata(m: export::ConceptMetadata) -> ConceptMetadata {
        ConceptMetadata {
            name: m.name,
            identifier: m.identifier,
            display_name: m.display_name,
            category: m.category,
            user_facts: m.user_facts,
            relations: m
                .relations
                .into_iter()
                .map(|r| Relation {
                    relation: r.relation,
                    target: r.target,
                })
                .collect(),
        }
    }

    /// Exports `L` as the world's `linker` interface.
    pub struct LinkerComponent<L>(PhantomData<L>);

    impl<L: MetadataLinker> export::Guest for LinkerComponent<L> {
        fn validate(m: export::ConceptMetadata) -> Result<(), Vec<String>> {
            L::new().validate(&Context::new(), &metadata(m))
        }

        fn link_conversation(
            m: export::ConceptMetadata,
            placeholders: Vec<String>,
            turns: Vec<export::Turn>,
        ) -> Result<Vec<export::Turn>, String> {
            let turns = turns
                .into_iter()
                .map(|t| Turn {
                    question: t.question,
                    answer: t.answer,
                })
                .collect();
            let linked =
                L::new().link_conversation(&Context::new(), &metadata(m), &placeholders, turns)?;
            Ok(linked
                .into_iter()
                .map(|t| export::Turn {
                    question: t.question,
                    answer: t.answer,
                })
                .collect())
        }

        fn render_context(active: Vec<export::ConceptMetadata>) -> Result<String, String> {
            let active: Vec<ConceptMetadata> = active.into_iter().map(metadata).collect();
            L::new().render_context(&Context::new(), &active)
        }
    }
}
