//! LLaVA's multimodal projector (Liu et al. 2023, "Improved Baselines with Visual Instruction
//! Tuning", the `mlp2x_gelu` connector), as transformers' `LlavaMultiModalProjector`:
//! `linear_2(act(linear_1(x)))`, the activation being the exact erf GELU for LLaVA-1.5.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::config::{Activation, LlavaConfig};
use crate::error::Result;
use crate::ops::{self, Kernels};

pub(crate) struct Projector {
    linear_1: (Tensor, Option<Tensor>),
    linear_2: (Tensor, Option<Tensor>),
    act: Activation,
}

impl Projector {
    pub(crate) fn load(vb: VarBuilder, cfg: &LlavaConfig) -> Result<Self> {
        let dv = cfg.vision.hidden_size;
        let dt = cfg.text.hidden_size;
        let linear = |vb: VarBuilder, i: usize, o: usize| -> Result<(Tensor, Option<Tensor>)> {
            let w = vb.get((o, i), "weight")?;
            let b = if cfg.projector.bias {
                Some(vb.get(o, "bias")?)
            } else {
                None
            };
            Ok((w, b))
        };
        Ok(Projector {
            linear_1: linear(vb.pp("linear_1"), dv, dt)?,
            linear_2: linear(vb.pp("linear_2"), dt, dt)?,
            act: cfg.projector.hidden_act,
        })
    }

    /// `[.., d_vision]` -> `[.., d_text]`.
    pub(crate) fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let h = ops::linear(x, &self.linear_1.0, self.linear_1.1.as_ref())?;
        let h = ops::activation(&h, self.act, kernels)?;
        ops::linear(&h, &self.linear_2.0, self.linear_2.1.as_ref())
    }
}
