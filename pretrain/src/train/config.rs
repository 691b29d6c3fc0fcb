//! What determines a pretraining run: [`TrainConfig`] and its two schedules

use serde::{Deserialize, Serialize};
use toy_world::ImageSize;

use crate::error::{PretrainError, Result};
use crate::eval::EvalConfig;
use crate::model::ToySize;
use crate::optim::AdamWConfig;

/// Everything that determines a run. Saved with each checkpoint; a resumed run must be
/// given the same values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub size: ToySize,
    pub stage0_steps: u64,
    pub stage0_batch: usize,
    pub stage0_lr: f64,
    pub stage1_steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    /// Stage-1 step from which the tower trains too (`>= stage1_steps`: never).
    pub unfreeze_tower_at: u64,
    /// The tower's learning rate relative to `lr` once unfrozen.
    pub tower_lr_scale: f64,
    /// Weight of the stage-0 classification loss while the tower trains in stage 1.
    pub aux_weight: f64,
    pub optim: AdamWConfig,
    pub eval_every: u64,
    pub eval: EvalConfig,
}

impl TrainConfig {
    /// The committed toy model's run.
    pub fn standard(seed: u64) -> TrainConfig {
        TrainConfig {
            seed,
            size: ToySize::standard(),
            stage0_steps: 1200,
            stage0_batch: 64,
            stage0_lr: 2e-3,
            stage1_steps: 16000,
            batch: 24,
            lr: 1.5e-3,
            warmup: 300,
            unfreeze_tower_at: 4000,
            tower_lr_scale: 0.3,
            aux_weight: 0.2,
            optim: AdamWConfig::standard(),
            eval_every: 500,
            eval: EvalConfig::standard(),
        }
    }

    /// A run small enough for unit tests.
    pub fn tiny(seed: u64) -> TrainConfig {
        TrainConfig {
            seed,
            size: ToySize::tiny(),
            stage0_steps: 2,
            stage0_batch: 4,
            stage0_lr: 1e-2,
            stage1_steps: 4,
            batch: 3,
            lr: 1e-2,
            warmup: 1,
            unfreeze_tower_at: 2,
            tower_lr_scale: 0.5,
            aux_weight: 0.2,
            optim: AdamWConfig::standard(),
            eval_every: 1000,
            eval: EvalConfig::tiny(),
        }
    }

    pub fn total_steps(&self) -> u64 {
        self.stage0_steps + self.stage1_steps
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(PretrainError::Config(m.to_string()));
        if self.batch == 0 || self.stage0_batch == 0 {
            return bad("batch sizes must be positive");
        }
        if self.warmup == 0 || self.eval_every == 0 {
            return bad("warmup and eval_every must be positive");
        }
        if !(self.lr > 0.0 && self.stage0_lr > 0.0 && self.tower_lr_scale >= 0.0) {
            return bad("learning rates must be positive");
        }
        ImageSize::new(self.size.image_size as u32)
            .map(|_| ())
            .or_else(|_| {
                if self.size.image_size == 16 {
                    Ok(())
                } else {
                    bad("image_size must be 16 (tests) or within toy-world's 48..=64 px")
                }
            })
    }
}
