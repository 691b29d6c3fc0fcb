//! AdamW (Loshchilov & Hutter 2019) over named `Var`s, with a learning-rate schedule and
//! global-norm gradient clipping.
//!
//! The update is candle-nn's `AdamW` step, but the moments live in a name-keyed map so a
//! checkpoint can save and restore them exactly (candle-nn keeps them private).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// AdamW hyper-parameters (the runtime's update, written once) and this optimiser's clipping.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Betas, epsilon and decoupled weight decay; the decay applies to matrices and kernels
    /// only (not to norms, biases or 1-D embeddings). Flattened: saved configs keep their keys.
    #[serde(flatten)]
    pub adamw: concepts_runtime::optim::AdamW,
    /// Global gradient-norm clip; 0 disables clipping.
    pub clip_norm: f64,
}

impl AdamWConfig {
    pub fn standard() -> AdamWConfig {
        AdamWConfig {
            adamw: concepts_runtime::optim::AdamW {
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            clip_norm: 1.0,
        }
    }
}

/// Moments of one parameter and its update count.
#[derive(Debug, Clone)]
pub struct Moments {
    pub m: Tensor,
    pub v: Tensor,
    pub t: u64,
}

/// AdamW state keyed by parameter name.
#[derive(Debug, Clone, Default)]
pub struct AdamW {
    moments: BTreeMap<String, Moments>,
}

/// What one optimizer step saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

impl AdamW {
    pub fn new() -> AdamW {
        AdamW::default()
    }

    /// Restores saved moments.
    pub fn from_moments(moments: BTreeMap<String, Moments>) -> AdamW {
        AdamW { moments }
    }

    pub fn moments(&self) -> &BTreeMap<String, Moments> {
        &self.moments
    }

    /// Updates each of `params` (name, variable, learning rate) that has a gradient in
    /// `grads`. Clipping uses the norm over all of them.
    pub fn step(
        &mut self,
        params: &[(String, Var, f64)],
        grads: &GradStore,
        cfg: &AdamWConfig,
    ) -> Result<StepStats> {
        let with_grad: Vec<(&String, &Var, f64, &Tensor)> = params
            .iter()
            .filter_map(|(n, v, lr)| grads.get(v.as_tensor()).map(|g| (n, v, *lr, g)))
            .collect();
        let mut sq = Vec::with_capacity(with_grad.len());
        for (_, _, _, g) in &with_grad {
            sq.push(g.sqr()?.sum_all()?);
        }
        let grad_norm = if sq.is_empty() {
            0.0
        } else {
            Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()?.sqrt()
        };
        let scale = if cfg.clip_norm > 0.0 && f64::from(grad_norm) > cfg.clip_norm {
            cfg.clip_norm / f64::from(grad_norm)
        } else {
            1.0
        };
        for (name, var, lr, g) in with_grad {
            let g = if scale != 1.0 {
                (g * scale)?
            } else {
                g.clone()
            };
            let state = match self.moments.remove(name) {
                Some(s) => s,
                None => Moments {
                    m: g.zeros_like()?,
                    v: g.zeros_like()?,
                    t: 0,
                },
            };
            let t = state.t + 1;
            let (w, m, v) = cfg.adamw.update(
                &var.as_tensor().detach(),
                &g,
                &state.m,
                &state.v,
                t,
                lr,
                var.rank() >= 2,
            )?;
            var.set(&w)?;
            self.moments.insert(name.clone(), Moments { m, v, t });
        }
        Ok(StepStats { grad_norm })
    }
}

/// Linear warmup to `peak`, then cosine decay to `peak · floor` at `total`.
pub fn learning_rate(step: u64, total: u64, warmup: u64, peak: f64, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (floor + (1.0 - floor) * cosine)
}
