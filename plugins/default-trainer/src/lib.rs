//! concepts-default-trainer: the default training policy.
//!
//! Each epoch mixes every hard and easy negative once with a seeded random recognition template,
//! every positive as often as it takes to match the negatives (each time with its own template;
//! see [`positive_repeats`]), and every conversation once; it shuffles them (seeded) and trains
//! in batches at a cosine-decayed learning rate ([`learning_rate`]). After each epoch it
//! evaluates recognition on the validation split; a better epoch (higher weighted accuracy —
//! the mean of positive and negative accuracy, as the paper scores — ties broken by lower loss)
//! is snapshotted. Training stops early after [`PATIENCE`] epochs without improvement,
//! and the best snapshot is restored at the end. Key design choice: the policy owns every decision
//! and the host owns every tensor; nothing here depends on how the host trains.
//!
//! Built for `wasm32-wasip2` this crate is the component `concepts.default-trainer`; built for the
//! host it is the same policy as in-process Rust.

use concepts_plugin_sdk::rng::SplitMix64;
use concepts_plugin_sdk::{
    register_trainer, EpochReport, Recognition, Result, SampleKind, SampleRef, Split, TrainParams,
    TrainSummary, Trainer, TrainingJob,
};

/// Epochs when the pipeline does not say (Yo'LLaVA trains for 15).
pub const DEFAULT_EPOCHS: u32 = 15;
/// Base learning rate when the pipeline does not say (Yo'LLaVA: 0.001).
pub const DEFAULT_LEARNING_RATE: f32 = 1e-3;
/// Samples per batch when the pipeline does not say.
pub const DEFAULT_BATCH_SIZE: u32 = 4;
/// Epochs without a better validation result before training stops.
pub const PATIENCE: u32 = 3;
/// The last epoch's learning rate, as a fraction of the base rate.
pub const FINAL_LR_FRACTION: f32 = 0.1;

/// The learning rate of `epoch` (1-based) of `epochs`: cosine decay from `base` at epoch 1 to
/// `base * FINAL_LR_FRACTION` at the last epoch.
pub fn learning_rate(base: f32, epoch: u32, epochs: u32) -> f32 {
    if epochs <= 1 {
        return base;
    }
    let t = (epoch.saturating_sub(1)) as f32 / (epochs - 1) as f32;
    let cosine = 0.5 * (1.0 + (core::f32::consts::PI * t.min(1.0)).cos());
    base * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * cosine)
}

/// The default trainer; see the crate docs.
pub struct DefaultTrainer;

impl Trainer for DefaultTrainer {
    fn new() -> Self {
        DefaultTrainer
    }

    fn train(&mut self, job: &TrainingJob<'_>, params: TrainParams) -> Result<TrainSummary> {
        let epochs = params.epochs.unwrap_or(DEFAULT_EPOCHS);
        let base_lr = params.learning_rate.unwrap_or(DEFAULT_LEARNING_RATE);
        let batch_size = params.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if epochs == 0 {
            return Err("epochs must be at least 1".to_owned());
        }
        if batch_size == 0 {
            return Err("batch size must be at least 1".to_owned());
        }
        if !(base_lr.is_finite() && base_lr > 0.0) {
            return Err(format!("learning rate must be positive, got {base_lr}"));
        }
        let counts = job.counts();
        let mut rng = SplitMix64(params.seed);
        let mut best: Option<(u32, Recognition, concepts_plugin_sdk::Snapshot)> = None;
        let mut since_best = 0;
        let mut epochs_run = 0;
        let mut stopped_early = false;
        for epoch in 1..=epochs {
            let lr = learning_rate(base_lr, epoch, epochs);
            let samples = epoch_samples(counts, &mut rng);
            if samples.is_empty() {
                return Err("the host offers no training samples".to_owned());
            }
            let mut loss_sum = 0.0f64;
            let mut batches = 0u32;
            for chunk in samples.chunks(batch_size as usize) {
                let batch = job.build_batch(chunk)?;
                let loss = job.train_step(&batch, lr)?;
                if !loss.is_finite() {
                    return Err(format!("training diverged in epoch {epoch}: loss {loss}"));
                }
                loss_sum += f64::from(loss);
                batches += 1;
            }
            epochs_run = epoch;
            let validation = job.evaluate_recognition(Split::Validation)?;
            let is_best = match &best {
                None => true,
                Some((_, b, _)) => {
                    validation.weighted() > b.weighted()
                        || (validation.weighted() == b.weighted() && validation.loss < b.loss)
                }
            };
            if is_best {
                best = Some((epoch, validation, job.snapshot()?));
                since_best = 0;
            } else {
                since_best += 1;
            }
            job.report_epoch(&EpochReport {
                epoch,
                learning_rate: lr,
                mean_loss: (loss_sum / f64::from(batches)) as f32,
                validation,
                is_best,
            });
            job.progress(u64::from(epoch), u64::from(epochs), "epoch done");
            if since_best >= PATIENCE && epoch < epochs {
                stopped_early = true;
                job.info(&format!(
                    "stopping after epoch {epoch}: no better validation result for {PATIENCE} epochs"
                ));
                break;
            }
        }
        let (best_epoch, best_recognition, snapshot) = best.expect("at least one epoch ran");
        if best_epoch != epochs_run {
            job.restore(snapshot)?;
        }
        Ok(TrainSummary {
            epochs_run,
            best_epoch,
            best_accuracy: best_recognition.weighted(),
            stopped_early,
        })
    }
}

register_trainer!(DefaultTrainer);

/// How often each positive enters an epoch: enough to match the negatives (a handful of
/// photos against a hundred negatives otherwise teaches "no"), at most [`MAX_POSITIVE_REPEATS`].
pub fn positive_repeats(counts: concepts_plugin_sdk::SampleCounts) -> u32 {
    let negatives = counts.hard_negatives + counts.easy_negatives;
    match counts.positives {
        0 => 0,
        p => negatives.div_ceil(p).clamp(1, MAX_POSITIVE_REPEATS),
    }
}

/// Cap of [`positive_repeats`].
pub const MAX_POSITIVE_REPEATS: u32 = 32;

/// One epoch's data mix, shuffled: every negative once and every positive
/// [`positive_repeats`] times, each with a random recognition template, and every
/// conversation once.
pub fn epoch_samples(
    counts: concepts_plugin_sdk::SampleCounts,
    rng: &mut SplitMix64,
) -> Vec<SampleRef> {
    let templates = counts.recognition_templates.max(1);
    let mut samples = Vec::new();
    for kind in [
        SampleKind::Positive,
        SampleKind::HardNegative,
        SampleKind::EasyNegative,
    ] {
        let repeats = if kind == SampleKind::Positive {
            positive_repeats(counts)
        } else {
            1
        };
        for index in 0..counts.of(kind) {
            for _ in 0..repeats {
                let template = rng.below(u64::from(templates)) as u32;
                samples.push(SampleRef {
                    kind,
                    index,
                    template,
                });
            }
        }
    }
    for index in 0..counts.conversations {
        samples.push(SampleRef {
            kind: SampleKind::Conversation,
            index,
            template: 0,
        });
    }
    for i in (1..samples.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        samples.swap(i, j);
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;
    use concepts_plugin_sdk::{Recognition, SampleCounts};

    #[test]
    fn schedule_decays_from_base_to_a_tenth() {
        assert_eq!(learning_rate(1.0, 1, 10), 1.0);
        assert!((learning_rate(1.0, 10, 10) - FINAL_LR_FRACTION).abs() < 1e-6);
        let rates: Vec<f32> = (1..=10).map(|e| learning_rate(1.0, e, 10)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "{rates:?}");
        assert_eq!(learning_rate(0.5, 1, 1), 0.5);
    }

    #[test]
    fn positives_are_repeated_to_match_the_negatives() {
        let counts = SampleCounts {
            positives: 5,
            hard_negatives: 31,
            easy_negatives: 100,
            conversations: 0,
            recognition_templates: 30,
        };
        let samples = epoch_samples(counts, &mut SplitMix64(1));
        let pos = samples
            .iter()
            .filter(|s| s.kind == SampleKind::Positive)
            .count();
        assert_eq!(pos, 5 * 27);
        for i in 0..5 {
            assert_eq!(
                samples
                    .iter()
                    .filter(|s| s.kind == SampleKind::Positive && s.index == i)
                    .count(),
                27
            );
        }
        let one = SampleCounts {
            positives: 1,
            hard_negatives: 1000,
            ..counts
        };
        assert_eq!(positive_repeats(one), MAX_POSITIVE_REPEATS);
    }

    #[test]
    fn the_best_epoch_is_judged_by_weighted_accuracy() {
        let all_no = Recognition {
            accuracy: 0.96,
            positive_accuracy: 0.0,
            negative_accuracy: 1.0,
            loss: 0.3,
            examples: 136,
        };
        let balanced = Recognition {
            accuracy: 0.9,
            positive_accuracy: 0.8,
            negative_accuracy: 0.9,
            loss: 0.4,
            examples: 136,
        };
        assert!(balanced.weighted() > all_no.weighted());
    }

    #[test]
    fn every_sample_in_every_epoch() {
        let counts = SampleCounts {
            positives: 3,
            hard_negatives: 4,
            easy_negatives: 5,
            conversations: 2,
            recognition_templates: 3,
        };
        let samples = epoch_samples(counts, &mut SplitMix64(9));
        // 3 positives × 3 repeats (9 negatives), 9 negatives, 2 conversations.
        assert_eq!(samples.len(), 20);
        for kind in [
            SampleKind::Positive,
            SampleKind::HardNegative,
            SampleKind::EasyNegative,
            SampleKind::Conversation,
        ] {
            let mut idx: Vec<u32> = samples
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.index)
                .collect();
            idx.sort_unstable();
            idx.dedup();
            assert_eq!(idx, (0..counts.of(kind)).collect::<Vec<_>>(), "{kind:?}");
        }
        assert!(samples.iter().all(|s| s.template < 3));
        let other = epoch_samples(counts, &mut SplitMix64(10));
        assert_ne!(samples, other, "seed must change the order");
    }
}
