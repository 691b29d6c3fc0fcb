//! The engine as the trainer stage sees it: the plugin API's [`TrainingHost`]

use std::sync::atomic::Ordering;

use concepts_plugin_api::{EpochReport, Recognition, SampleCounts, SampleKind, SampleRef, Split};

use super::state::Snapshot;
use super::{Best, EpochEvent, TrainingEngine, INTERRUPTED};
use crate::error::Result;
use concepts_plugin_host::{BatchId, EngineError, SnapshotId, TrainingHost};

fn engine_err(e: impl std::fmt::Display) -> EngineError {
    EngineError(e.to_string())
}

impl TrainingHost for TrainingEngine<'_> {
    fn counts(&self) -> SampleCounts {
        SampleCounts {
            positives: self.data.positives.len() as u32,
            hard_negatives: self.data.hard_negatives.len() as u32,
            easy_negatives: self.data.easy_negatives.len() as u32,
            conversations: self.data.conversations.len() as u32,
            recognition_templates: self.positive.len().max(self.negative.len()) as u32,
        }
    }

    fn build_batch(&mut self, samples: &[SampleRef]) -> Result<BatchId, EngineError> {
        if samples.is_empty() {
            return Err(EngineError("an empty batch".to_string()));
        }
        let counts = self.counts();
        for s in samples {
            if s.index >= counts.of(s.kind) {
                return Err(EngineError(format!(
                    "sample {:?} {} is out of range ({} of that kind)",
                    s.kind,
                    s.index,
                    counts.of(s.kind)
                )));
            }
        }
        let id = self.built;
        self.built += 1;
        let entries = samples
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, s.kind != SampleKind::Conversation && self.flip(id, i)))
            .collect();
        self.batches.insert(id, entries);
        Ok(BatchId(id))
    }

    fn batch_len(&self, batch: BatchId) -> u32 {
        self.batches.get(&batch.0).map_or(0, |b| b.len() as u32)
    }

    fn drop_batch(&mut self, batch: BatchId) {
        self.batches.remove(&batch.0);
    }

    fn train_step(&mut self, batch: BatchId, learning_rate: f32) -> Result<f32, EngineError> {
        if !self.batches.contains_key(&batch.0) {
            return Err(EngineError(format!("no batch {}", batch.0)));
        }
        if let Some(loss) = self.replaying_steps() {
            self.steps += 1;
            return Ok(loss);
        }
        if let Some(e) = &self.failed {
            return Err(EngineError(e.to_string()));
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(EngineError(INTERRUPTED.to_string()));
        }
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(EngineError(format!(
                "learning rate {learning_rate} must be positive"
            )));
        }
        let started = std::time::Instant::now();
        let loss = self.step(batch, learning_rate).map_err(engine_err)?;
        self.timings.steps_secs += started.elapsed().as_secs_f64();
        self.steps += 1;
        self.history.step_losses.push(loss);
        self.observer.step(self.steps as u64, loss);
        Ok(loss)
    }

    fn evaluate_recognition(&mut self, _split: Split) -> Result<Recognition, EngineError> {
        self.snapshot_since_eval = None;
        if let Some(r) = &self.replay {
            if self.evals < r.evals {
                let rec = self.history.epochs[self.evals].validation;
                self.evals += 1;
                return Ok(rec);
            }
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(EngineError(INTERRUPTED.to_string()));
        }
        let started = std::time::Instant::now();
        let rec = self.recognition().map_err(engine_err)?;
        self.timings.recognition_secs += started.elapsed().as_secs_f64();
        self.evals += 1;
        Ok(rec)
    }

    fn snapshot(&mut self) -> Result<SnapshotId, EngineError> {
        let epoch = self.evals as u32;
        let snap = match &self.replay {
            // A snapshot after a replayed epoch other than the last saved one: only the best
            // epoch's parameters were saved.
            Some(r) if (epoch as usize) < r.evals => match (r.best_epoch, &r.best) {
                (Some(e), Some(p)) if e == epoch => Snapshot::Kept(p.clone(), self.moments.clone()),
                _ => Snapshot::Lost { epoch },
            },
            _ => Snapshot::Kept(self.params.clone(), self.moments.clone()),
        };
        self.snapshots.push(snap);
        self.snapshot_since_eval = Some(self.snapshots.len() - 1);
        Ok(SnapshotId(self.snapshots.len() as u32 - 1))
    }

    fn restore(&mut self, snapshot: SnapshotId) -> Result<(), EngineError> {
        match self.snapshots.get(snapshot.0 as usize) {
            Some(Snapshot::Kept(params, moments)) => {
                self.params = params.clone();
                self.moments = moments.clone();
                Ok(())
            }
            Some(Snapshot::Lost { epoch }) => Err(EngineError(format!(
                "snapshot {} of epoch {epoch} was taken before the resume point and not saved",
                snapshot.0
            ))),
            None => Err(EngineError(format!("no snapshot {}", snapshot.0))),
        }
    }

    fn report_epoch(&mut self, report: &EpochReport) {
        let replayed = self
            .replay
            .as_ref()
            .is_some_and(|r| (report.epoch as usize) <= r.evals);
        if !replayed {
            if report.is_best {
                let params = match self.snapshot_since_eval.and_then(|i| self.snapshots.get(i)) {
                    Some(Snapshot::Kept(p, _)) => p.clone(),
                    _ => self.params.clone(),
                };
                self.best = Some(Best {
                    epoch: report.epoch,
                    params,
                    recognition: report.validation,
                });
            }
            self.history.epochs.push(*report);
            if let Err(e) = self.save_state() {
                tracing::warn!("saving the training state: {e}");
            }
        }
        let event = EpochEvent {
            report,
            replayed,
            best: self.best.as_ref(),
            history: &self.history,
        };
        if let Err(e) = self.observer.epoch(event) {
            tracing::warn!("after epoch {}: {e}", report.epoch);
            self.failed.get_or_insert(e);
        }
    }
}
