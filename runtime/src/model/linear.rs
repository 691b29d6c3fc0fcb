//! The linear layer shared by the vision tower, the projector and the decoder.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::Result;

/// `y = x · Wᵀ + b` for a checkpoint weight `W` of shape `[out, in]`.
///
/// The weight is kept transposed and contiguous (`[in, out]`): candle's CPU GEMM runs
/// measurably faster on it than on a transposed view, at the cost of one copy at load.
pub(crate) struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn load(
        vb: VarBuilder,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((out_features, in_features), "weight")?;
        let bias = if bias {
            Some(vb.get(out_features, "bias")?)
        } else {
            None
        };
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// `[.., in]` -> `[.., out]`, as one GEMM over the folded leading dims.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (&inner, lead) = dims.split_last().unwrap_or((&0, &[]));
        let rows: usize = lead.iter().product();
        let y = crate::ops::matmul(&x.reshape((rows, inner))?, &self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut shape = lead.to_vec();
        shape.push(self.weight_t.dim(1)?);
        Ok(y.reshape(shape)?)
    }
}
