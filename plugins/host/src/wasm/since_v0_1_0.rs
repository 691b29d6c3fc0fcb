//! Bindings of the frozen `concepts:plugin@0.1.0` worlds (`spec/plugins/wit/since_v0.1.0/`).
//!
//! The host implementations here read and write the API-neutral types of `concepts-plugin-api`;
//! a later `since_vX_Y_Z.rs` adds its own bindings and converts into the same types.

use std::time::Instant;

use concepts_plugin_api::{self as api, ApiVersion, LogLevel};
use wasmtime::component::{HasSelf, Linker, Resource};

use super::StoreState;
use crate::matrix::EmbeddingMatrix;
use crate::roles::BatchId;
use crate::services::Mining;

/// The first `concepts:plugin` version these bindings serve.
pub(crate) const MIN_VERSION: ApiVersion = ApiVersion::new(0, 1, 0);

pub(crate) mod miner {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/since_v0.1.0",
        world: "negative-miner",
        imports: { default: trappable },
        with: {
            "concepts:plugin/embeddings.matrix": crate::matrix::EmbeddingMatrix,
        },
    });
}

pub(crate) mod trainer {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/since_v0.1.0",
        world: "trainer",
        imports: { default: trappable },
        with: {
            "concepts:plugin/host": super::miner::concepts::plugin::host,
            "concepts:plugin/training-host.batch": super::BatchRep,
        },
    });
}

pub(crate) mod linker {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/since_v0.1.0",
        world: "metadata-linker",
        imports: { default: trappable },
        with: {
            "concepts:plugin/host": super::miner::concepts::plugin::host,
        },
    });
}

use miner::concepts::plugin::{embeddings, host};
use trainer::concepts::plugin::training_host as th;

/// A batch resource: the training host's batch id (it knows the batch's size).
pub struct BatchRep {
    id: BatchId,
}

/// Adds this version's host interfaces to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    host::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    embeddings::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    th::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    Ok(())
}

/// Pre-instantiated components of this version, one per world.
pub(crate) enum Pre {
    Miner(miner::NegativeMinerPre<StoreState>),
    Trainer(trainer::TrainerPre<StoreState>),
    Linker(linker::MetadataLinkerPre<StoreState>),
}

impl Pre {
    pub(crate) fn new(
        role: api::Role,
        pre: wasmtime::component::InstancePre<StoreState>,
    ) -> wasmtime::Result<Pre> {
        Ok(match role {
            api::Role::Miner => Pre::Miner(miner::NegativeMinerPre::new(pre)?),
            api::Role::Trainer => Pre::Trainer(trainer::TrainerPre::new(pre)?),
            api::Role::Linker => Pre::Linker(linker::MetadataLinkerPre::new(pre)?),
        })
    }
}

// --- calls into the guest

pub(crate) fn mine(
    pre: &Pre,
    store: &mut wasmtime::Store<StoreState>,
    positives: EmbeddingMatrix,
    pool: EmbeddingMatrix,
    params: api::MiningParams,
) -> wasmtime::Result<Result<Vec<api::MinedNegative>, String>> {
    let Pre::Miner(pre) = pre else {
        unreachable!("roles are checked at load")
    };
    let bindings = pre.instantiate(&mut *store)?;
    let positives = store.data_mut().table.push(positives)?;
    let pool = store.data_mut().table.push(pool)?;
    let params = miner::exports::concepts::plugin::miner::MiningParams {
        hard_per_positive: params.hard_per_positive,
        easy_count: params.easy_count,
        seed: params.seed,
    };
    store.data_mut().start_call();
    let answer =
        bindings
            .concepts_plugin_miner()
            .call_mine(&mut *store, positives, pool, params)?;
    Ok(answer.map(|mined| {
        use miner::exports::concepts::plugin::miner::NegativeRole;
        mined
            .into_iter()
            .map(|m| api::MinedNegative {
                pool_row: m.pool_row,
                role: match m.role {
                    NegativeRole::Hard => api::NegativeRole::Hard,
                    NegativeRole::Easy => api::NegativeRole::Easy,
                },
                score: m.score,
            })
            .collect()
    }))
}

pub(crate) fn train(
    pre: &Pre,
    store: &mut wasmtime::Store<StoreState>,
    params: api::TrainParams,
) -> wasmtime::Result<Result<api::TrainSummary, String>> {
    let Pre::Trainer(pre) = pre else {
        unreachable!("roles are checked at load")
    };
    let bindings = pre.instantiate(&mut *store)?;
    let params = trainer::exports::concepts::plugin::training_policy::TrainParams {
        epochs: params.epochs,
        learning_rate: params.learning_rate,
        batch_size: params.batch_size,
        seed: params.seed,
    };
    store.data_mut().start_call();
    let answer = bindings
        .concepts_plugin_training_policy()
        .call_train(&mut *store, params)?;
    Ok(answer.map(|s| api::TrainSummary {
        epochs_run: s.epochs_run,
        best_epoch: s.best_epoch,
        best_accuracy: s.best_accuracy,
        stopped_early: s.stopped_early,
    }))
}

use linker::exports::concepts::plugin::linker as lx;

fn to_wit_metadata(m: &api::ConceptMetadata) -> lx::ConceptMetadata {
    lx::ConceptMetadata {
        name: m.name.clone(),
        identifier: m.identifier.clone(),
        display_name: m.display_name.clone(),
        category: m.category.clone(),
        user_facts: m.user_facts.clone(),
        relations: m
            .relations
            .iter()
            .map(|r| lx::Relation {
                relation: r.relation.clone(),
                target: r.target.clone(),
            })
            .collect(),
    }
}

fn linker_bindings(
    pre: &Pre,
    store: &mut wasmtime::Store<StoreState>,
) -> wasmtime::Result<linker::MetadataLinker> {
    let Pre::Linker(pre) = pre else {
        unreachable!("roles are checked at load")
    };
    pre.instantiate(&mut *store)
}

pub(crate) fn validate(
    pre: &Pre,
    store: &mut wasmtime::Store<StoreState>,
    metadata: &api::ConceptMetadata,
) -> wasmtime::Result<Result<(), Vec<String>>> {
    let bindings = linker_bindings(pre, store)?;
    store.data_mut().start_call();
    bindings
        .concepts_plugin_linker()
        .call_validate(&mut *store, &to_wit_metadata(metadata))
}

pub(crate) fn link_conversation(
    pre: &Pre,
    store: &mut wasmtime::Store<StoreState>,
    metadata: &api::ConceptMetadata,
    placeholders: &[String],
    turns: Vec<api::Turn>,
) -> wasmtime::Result<Result<Vec<api::Turn>, String>> {
    let bindings = linker_bindings(pre, store)?;
    let turns: Vec<lx::Turn> = turns
        .into_iter()
        .map(|t| lx::Turn {
            question: t.question,
            answer: t.answer,
        })
        .collect();
    store.data_mut().start_call();
    let answer = bindings.concepts_plugin_linker().call_link_conversation(
        &mut *store,
        &to_wit_metadata(metadata),
        placeholders,
        &turns,
    )?;
    Ok(answer.map(|turns| {
        turns
            .into_iter()
            .map(|t| api::Turn {
                question: t.question,
                answer: t.answer,
            })
            .collect()
    }))
}

pub(crate) fn render_context(
    pre: &Pre,
    store: &mut wasmtime::Store<StoreState>,
    active: &[api::ConceptMetadata],
) -> wasmtime::Result<Result<String, String>> {
    let bindings = linker_bindings(pre, store)?;
    let active: Vec<lx::ConceptMetadata> = active.iter().map(to_wit_metadata).collect();
    store.data_mut().start_call();
    bindings
        .concepts_plugin_linker()
        .call_render_context(&mut *store, &active)
}

// --- host implementations

impl host::Host for StoreState {
    fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        self.check_in("host.log", message.len() as u64)?;
        let level = match level {
            host::LogLevel::Trace => LogLevel::Trace,
            host::LogLevel::Debug => LogLevel::Debug,
            host::LogLevel::Info => LogLevel::Info,
            host::LogLevel::Warn => LogLevel::Warn,
            host::LogLevel::Error => LogLevel::Error,
        };
        self.events.log(level, &message);
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64, message: String) -> wasmtime::Result<()> {
        self.check_in("host.progress", message.len() as u64)?;
        self.events.progress(done, total, &message);
        Ok(())
    }
}

impl embeddings::HostMatrix for StoreState {
    fn rows(&mut self, this: Resource<EmbeddingMatrix>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&this)?.rows() as u32)
    }

    fn dim(&mut self, this: Resource<EmbeddingMatrix>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&this)?.dim() as u32)
    }

    fn read_rows(
        &mut self,
        this: Resource<EmbeddingMatrix>,
        start: u32,
        count: u32,
    ) -> wasmtime::Result<Result<Vec<f32>, String>> {
        let started = Instant::now();
        let m = self.table.get(&this)?;
        let bytes = Mining::read_rows_bytes(m, count);
        let answer = Mining::read_rows(m, start, count);
        self.check_out("embeddings.read-rows", bytes)?;
        self.clock.in_host += started.elapsed();
        Ok(answer)
    }

    fn drop(&mut self, this: Resource<EmbeddingMatrix>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl embeddings::Host for StoreState {
    fn top_k(
        &mut self,
        query: Resource<EmbeddingMatrix>,
        pool: Resource<EmbeddingMatrix>,
        k: u32,
    ) -> wasmtime::Result<Result<Vec<Vec<embeddings::ScoredRow>>, String>> {
        let started = Instant::now();
        let (q, p) = (self.table.get(&query)?, self.table.get(&pool)?);
        let bytes = Mining::top_k_bytes(q, p, k);
        self.check_out("embeddings.top-k", bytes)?;
        let (q, p) = (self.table.get(&query)?, self.table.get(&pool)?);
        let answer = Mining::top_k(q, p, k).map(|lists| {
            lists
                .into_iter()
                .map(|l| {
                    l.into_iter()
                        .map(|s| embeddings::ScoredRow {
                            row: s.row,
                            score: s.score,
                        })
                        .collect()
                })
                .collect()
        });
        self.clock.in_host += started.elapsed();
        Ok(answer)
    }

    fn max_similarity(
        &mut self,
        query: Resource<EmbeddingMatrix>,
        pool: Resource<EmbeddingMatrix>,
    ) -> wasmtime::Result<Result<Vec<f32>, String>> {
        let started = Instant::now();
        let p = self.table.get(&pool)?;
        let bytes = Mining::max_similarity_bytes(p);
        self.check_out("embeddings.max-similarity", bytes)?;
        let (q, p) = (self.table.get(&query)?, self.table.get(&pool)?);
        let answer = Mining::max_similarity(q, p);
        self.clock.in_host += started.elapsed();
        Ok(answer)
    }
}

fn engine_result<T>(r: Result<T, crate::roles::EngineError>) -> Result<T, String> {
    r.map_err(|e| e.0)
}

impl th::HostBatch for StoreState {
    fn len(&mut self, this: Resource<BatchRep>) -> wasmtime::Result<u32> {
        let id = self.table.get(&this)?.id;
        Ok(self.training()?.batch_len(id))
    }

    fn drop(&mut self, this: Resource<BatchRep>) -> wasmtime::Result<()> {
        let batch = self.table.delete(this)?;
        let started = Instant::now();
        self.training()?.drop_batch(batch.id);
        self.clock.in_host += started.elapsed();
        Ok(())
    }
}

impl th::Host for StoreState {
    fn counts(&mut self) -> wasmtime::Result<th::SampleCounts> {
        let c = self.training()?.counts();
        Ok(th::SampleCounts {
            positives: c.positives,
            hard_negatives: c.hard_negatives,
            easy_negatives: c.easy_negatives,
            conversations: c.conversations,
            recognition_templates: c.recognition_templates,
        })
    }

    fn build_batch(
        &mut self,
        samples: Vec<th::SampleRef>,
    ) -> wasmtime::Result<Result<Resource<BatchRep>, String>> {
        self.check_in(
            "training-host.build-batch",
            (samples.len() * std::mem::size_of::<th::SampleRef>()) as u64,
        )?;
        let samples: Vec<api::SampleRef> = samples
            .into_iter()
            .map(|s| api::SampleRef {
                kind: match s.kind {
                    th::SampleKind::Positive => api::SampleKind::Positive,
                    th::SampleKind::HardNegative => api::SampleKind::HardNegative,
                    th::SampleKind::EasyNegative => api::SampleKind::EasyNegative,
                    th::SampleKind::Conversation => api::SampleKind::Conversation,
                },
                index: s.index,
                template: s.template,
            })
            .collect();
        let started = Instant::now();
        let built = self.training()?.build_batch(&samples);
        self.clock.in_host += started.elapsed();
        match built {
            Ok(id) => Ok(Ok(self.table.push(BatchRep { id })?)),
            Err(e) => Ok(Err(e.0)),
        }
    }

    fn train_step(
        &mut self,
        batch: Resource<BatchRep>,
        learning_rate: f32,
    ) -> wasmtime::Result<Result<f32, String>> {
        let id = self.table.get(&batch)?.id;
        let started = Instant::now();
        let loss = engine_result(self.training()?.train_step(id, learning_rate));
        self.clock.in_host += started.elapsed();
        Ok(loss)
    }

    fn evaluate_recognition(
        &mut self,
        split: th::Split,
    ) -> wasmtime::Result<Result<th::Recognition, String>> {
        let split = match split {
            th::Split::Train => api::Split::Train,
            th::Split::Validation => api::Split::Validation,
        };
        let started = Instant::now();
        let r = engine_result(self.training()?.evaluate_recognition(split));
        self.clock.in_host += started.elapsed();
        Ok(r.map(|r| th::Recognition {
            accuracy: r.accuracy,
            positive_accuracy: r.positive_accuracy,
            negative_accuracy: r.negative_accuracy,
            loss: r.loss,
            examples: r.examples,
        }))
    }

    fn snapshot(&mut self) -> wasmtime::Result<Result<u32, String>> {
        let started = Instant::now();
        let s = engine_result(self.training()?.snapshot()).map(|s| s.0);
        self.clock.in_host += started.elapsed();
        Ok(s)
    }

    fn restore(&mut self, snapshot: u32) -> wasmtime::Result<Result<(), String>> {
        let started = Instant::now();
        let r = engine_result(self.training()?.restore(crate::roles::SnapshotId(snapshot)));
        self.clock.in_host += started.elapsed();
        Ok(r)
    }

    fn report_epoch(&mut self, r: th::EpochReport) -> wasmtime::Result<()> {
        let v = r.validation;
        let report = api::EpochReport {
            epoch: r.epoch,
            learning_rate: r.learning_rate,
            mean_loss: r.mean_loss,
            validation: api::Recognition {
                accuracy: v.accuracy,
                positive_accuracy: v.positive_accuracy,
                negative_accuracy: v.negative_accuracy,
                loss: v.loss,
                examples: v.examples,
            },
            is_best: r.is_best,
        };
        self.training()?.report_epoch(&report);
        Ok(())
    }
}
