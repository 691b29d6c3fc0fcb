//! LLaVA's multimodal projector (Liu et al. 2023, "Improved Baselines with Visual Instruction
//! Tuning", the `mlp2x_gelu` connector), as transformers' `LlavaMultiModalProjector`:
//! `linear_2(act(linear_1(x)))`, the activation being the exact erf GELU for LLaVA-1.5.

use crate::model::source::Weights;
use candle_core::Tensor;

use crate::config::{Activation, LlavaConfig};
use crate::error::Result;
use crate::model::linear::Linear;
use crate::ops::{self, Kernels};

pub(crate) struct Projector {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl Projector {
    pub(crate) fn load(vb: Weights, cfg: &LlavaConfig) -> Result<Self> {
        let dv = cfg.vision.hidden_size;
        let dt = cfg.text.hidden_size;
        let bias = cfg.projector.bias;
        Ok(Projector {
            linear_1: Linear::load(vb.pp("linear_1"), dv, dt, bias)?,
            linear_2: Linear::load(vb.pp("linear_2"), dt, dt, bias)?,
            act: cfg.projector.hidden_act,
        })
    }

    /// `[.., d_vision]` -> `[.., d_text]`.
    pub(crate) fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let h = self.linear_1.forward(x)?;
        let h = ops::activation(&h, self.act, kernels)?;
        self.linear_2.forward(&h)
    }
}
