//! Tensor ops in two flavours over the same inputs: [`Kernels::Fast`] uses candle's fused
//! kernels, [`Kernels::Differentiable`] composes ops that candle can back-propagate through.
//!
//! candle's fused `rms_norm`, `layer_norm`, `softmax_last_dim` and `rope` have no backward:
//! autograd silently treats their outputs as constants. Training must therefore run the
//! differentiable flavour. Numerics follow transformers: norms and softmax run in f32 for
//! f16/bf16 inputs, RoPE uses the `rotate_half` (non-interleaved) convention.
//!
//! Every fused op here has a unit test checking it against its differentiable twin.

use candle_core::{DType, Device, Tensor, D};

use crate::config::Activation;
use crate::error::{Result, RuntimeError};

mod blocked_attention;
mod half_kv;
mod scaled_softmax;
mod vexp;

/// Which kernels a forward pass may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// candle's fused kernels where they exist; no gradients through norms, softmax or RoPE.
    Fast,
    /// Only ops with a backward; use for training.
    Differentiable,
}

/// The dtype norms and softmax compute in: f32 for half types, else the input dtype.
fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

/// RMSNorm over the last dim (Zhang & Sennrich 2019), as transformers' `LlamaRMSNorm`:
/// `weight * (x / sqrt(mean(x²) + eps)).to(input dtype)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        // The fused op has no f64 kernel.
        Kernels::Fast if x.dtype() != DType::F64 => Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            weight,
            eps as f32,
        )?),
        // In f32 the fused kernel's rounding is the composed one's, so it runs forward with
        // the backward attached: two ops instead of six, and a backward of eight.
        Kernels::Differentiable if x.dtype() == DType::F32 && weight.dtype() == DType::F32 => {
            let x = x.contiguous()?;
            let y = candle_nn::ops::rms_norm(&x.detach(), &weight.detach(), eps as f32)?;
            if !x.track_op() && !weight.track_op() {
                return Ok(y);
            }
            Ok(x.apply_op3(weight, &y, RmsNormGrad { eps })?)
        }
        _ => rms_norm_composed(x, weight, eps),
    }
}

/// RMSNorm from elementary ops, each with candle's backward: the twin the fused op and its
/// backward are tested against, and the path for f64 and half types.
fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(compute_dtype(dtype))?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(weight)?)
}

/// LayerNorm over the last dim (Ba et al. 2016) with affine weight and bias.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    kernels: Kernels,
) -> Result<Tensor> {
    match kernels {
        // The fused op has no f64 kernel.
        Kernels::Fast if x.dtype() != DType::F64 => Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            weight,
            bias,
            eps as f32,
        )?),
        _ => {
            let dtype = x.dtype();
            let cdt = compute_dtype(dtype);
            let xf = x.to_dtype(cdt)?;
            let centered = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
            let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
            let out = normed
                .broadcast_mul(&weight.to_dtype(cdt)?)?
                .broadcast_add(&bias.to_dtype(cdt)?)?;
            Ok(out.to_dtype(dtype)?)
        }
    }
}

/// Softmax over the last dim, computed in f32 for half inputs and returned in the input dtype.
pub fn softmax_last_dim(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(compute_dtype(dtype))?;
    let out = match kernels {
        Kernels::Fast => candle_nn::ops::softmax_last_dim(&xf.contiguous()?)?,
        Kernels::Differentiable if !xf.track_op() => {
            candle_nn::ops::softmax_last_dim(&xf.contiguous()?)?
        }
        Kernels::Differentiable => {
            // The fused kernel's output, with the softmax backward attached: one pass forward
            // instead of five, and the backward `y · (g − Σ g·y)` in three ops.
            let xf = xf.contiguous()?;
            let y = candle_nn::ops::softmax_last_dim(&xf.detach())?;
            let grad_x = |y: &Tensor, g: &Tensor| {
                let dot = (g * y)?.sum_keepdim(D::Minus1)?;
                y.mul(&g.broadcast_sub(&dot)?)
            };
            xf.apply_op2(
                &y,
                FusedGrad {
                    name: "softmax-grad",
                    grad_x,
                },
            )?
        }
    };
    Ok(out.to_dtype(dtype)?)
}

/// `(x, y) -> y`, where `y` is a fused kernel's output for `x` (a constant), with the backward
/// `grad_x(y, g)`: how the softmax and RoPE attach a hand-written backward to a fast kernel that
/// has none.
struct FusedGrad<F> {
    name: &'static str,
    grad_x: F,
}

impl<F> candle_core::CustomOp2 for FusedGrad<F>
where
    F: Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _s1: &candle_core::CpuStorage,
        _l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        pass_through(s2, l2)
    }

    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &candle_core::Layout,
        s2: &candle_core::CudaStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        pass_through(s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.grad_x)(res, grad)?), None))
    }
}

/// `(x, weight, rms_norm(x) · weight) -> rms_norm(x) · weight` with the gradients of `x` and
/// `weight` (the third operand is the fused kernel's output, a constant). With
/// `r = 1 / sqrt(mean(x²) + eps)` per row and `u = g · weight`:
/// `∂x = r · u − x · r³ · mean(u · x)` and `∂weight = Σ_rows g · x · r`.
struct RmsNormGrad {
    eps: f64,
}

impl candle_core::CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        _s1: &candle_core::CpuStorage,
        _l1: &candle_core::Layout,
        _s2: &candle_core::CpuStorage,
        _l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        pass_through(s3, l3)
    }

    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &candle_core::Layout,
        _s2: &candle_core::CudaStorage,
        _l2: &candle_core::Layout,
        s3: &candle_core::CudaStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        pass_through(s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xr = x.broadcast_mul(&r)?;
        let dx = x.track_op().then(|| -> candle_core::Result<Tensor> {
            let u = grad.broadcast_mul(weight)?;
            let m = (&u * &xr)?.mean_keepdim(D::Minus1)?;
            (u - xr.broadcast_mul(&m)?)?.broadcast_mul(&r)
        });
        let dw = weight.track_op().then(|| -> candle_core::Result<Tensor> {
            let d = weight.dim(0)?;
            (grad * &xr)?.reshape(((), d))?.sum(0)
        });
        Ok((dx.transpose()?, dw.transpose()?, None))
    }
}

/// The forward of the fused-kernel-with-backward ops: the constant operand, unchanged.
fn pass_through<S: candle_core::backend::BackendStorage>(
    s: &S,
    l: &candle_core::Layout,
) -> candle_core::Result<(S, candle_core::Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("a fused kernel's output must be contiguous");
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}

/// Log-softmax over the last dim, built from differentiable ops, in f32 for half inputs.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(compute_dtype(dtype))?;
    let max = xf.max_keepdim(D::Minus1)?.detach();
    let shifted = xf.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?.to_dtype(dtype)?)
}

/// Rotary position embedding (Su et al. 2021) in transformers' `rotate_half` convention:
/// `x * cos + rotate_half(x) * sin` where `rotate_half([x1, x2]) = [-x2, x1]` over halves of
/// the head dim.
///
/// `x` is `[B, H, T, D]`; `cos` and `sin` are `[T, D/2]` in `x`'s dtype.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fast => Ok(candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &cos.contiguous()?,
            &sin.contiguous()?,
        )?),
        // The fused kernel forward and its rotation back as the backward: one op each way
        // instead of about ten. `cos` and `sin` are constants (positions, not parameters).
        Kernels::Differentiable if !cos.track_op() && !sin.track_op() => {
            let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
            let x = x.contiguous()?;
            let y = candle_nn::rotary_emb::rope(&x.detach(), &cos, &sin)?;
            if !x.track_op() {
                return Ok(y);
            }
            // RoPE rotates each pair of halves by its angle, so the gradient is the rotation
            // back, `rope(g, cos, -sin)`.
            let neg_sin = sin.neg()?;
            let grad_x = move |_: &Tensor, g: &Tensor| {
                candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &neg_sin)
            };
            Ok(x.apply_op2(
                &y,
                FusedGrad {
                    name: "rope-grad",
                    grad_x,
                },
            )?)
        }
        Kernels::Differentiable => rope_composed(x, cos, sin),
    }
}

/// RoPE from elementary ops, each with candle's backward: the twin the fused op and its
/// backward are tested against.
fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let half = d / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, d - half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// The activation functions of [`Activation`].
pub fn activation(x: &Tensor, act: Activation, kernels: Kernels) -> Result<Tensor> {
    if kernels == Kernels::Fast && x.device().is_cpu() && x.dtype() == DType::F32 {
        if let Some(op) = vexp::SigmoidGated::of(act) {
            // One pass with the vectorised exp (candle's sigmoid / silu call libm per element).
            return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
        }
        if act == Activation::GeluErf {
            return Ok(x.contiguous()?.apply_op1_no_bwd(&vexp::GeluErf)?);
        }
    }
    Ok(match act {
        Activation::QuickGelu => {
            let z = (x * 1.702)?;
            let sig = match kernels {
                Kernels::Fast => candle_nn::ops::sigmoid(&z)?,
                // sigmoid(z) = (1 + tanh(z / 2)) / 2 cannot overflow, unlike 1 / (1 + exp(-z)).
                Kernels::Differentiable => ((z * 0.5)?.tanh()? * 0.5)?.affine(1.0, 0.5)?,
            };
            (x * sig)?
        }
        Activation::GeluErf => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Silu => x.silu()?,
    })
}

/// `act(x) · u` (a gated MLP's `act(gate) · up`), in one pass where [`activation`] has a
/// fused kernel for `act`.
pub fn gated(x: &Tensor, u: &Tensor, act: Activation, kernels: Kernels) -> Result<Tensor> {
    if kernels == Kernels::Fast
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && u.dtype() == DType::F32
    {
        if let Some(op) = vexp::SigmoidGated::of(act) {
            return Ok(x.contiguous()?.apply_op2_no_bwd(&u.contiguous()?, &op)?);
        }
    }
    Ok((activation(x, act, kernels)? * u)?)
}

/// `x · weightᵀ + bias` with `weight` as `[out, in]`; leading dims of `x` are folded into one
/// matrix so the product is a single GEMM.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let (&inner, lead) = dims
        .split_last()
        .ok_or_else(|| RuntimeError::InvalidInput("linear on a scalar".to_string()))?;
    let rows: usize = lead.iter().product();
    let out_features = weight.dim(0)?;
    let y = matmul(&x.reshape((rows, inner))?, &weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_shape = lead.to_vec();
    out_shape.push(out_features);
    Ok(y.reshape(out_shape)?)
}

/// `x · w` for a 2-D `x` `[m, k]` and `w` `[k, n]`.
///
/// When `x` carries gradients and `w` does not (a frozen weight: neither a `Var` nor computed
/// from one), the product is a custom op whose backward yields `∂x` only. candle's own matmul
/// backward always computes the gradient of both operands, which for a frozen model means
/// a weight-sized gradient per layer: as many FLOPs again as `∂x`, and weight-sized memory.
pub fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.track_op() && !w.track_op() {
        Ok(x.apply_op2(w, FrozenMatmul)?)
    } else {
        Ok(x.matmul(w)?)
    }
}

/// `[m, k] · [k, n]` whose backward only reaches the left operand.
struct FrozenMatmul;

impl FrozenMatmul {
    fn fwd<S: candle_core::backend::BackendStorage>(
        s1: &S,
        l1: &candle_core::Layout,
        s2: &S,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(S, candle_core::Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen matmul of [{m}, {k}] and [{k2}, {n}]");
        }
        Ok((s1.matmul(s2, (1, m, n, k), l1, l2)?, (m, n).into()))
    }
}

impl candle_core::CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        Self::fwd(s1, l1, s2, l2)
    }

    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CudaStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        Self::fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w.t()?)?), None))
    }
}

/// An additive causal mask `[t, offset + t]`: 0 where query `i` (at position `offset + i`)
/// may attend key `j`, `-inf` where `j > offset + i`.
pub fn causal_mask(t: usize, offset: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let s = offset + t;
    let values: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (t, s), device)?.to_dtype(dtype)?)
}

/// Which keys each query of [`attention`] sees.
#[derive(Debug)]
pub enum Mask {
    /// Every key (the vision tower; a single query over its cache).
    All,
    /// `t` queries after `offset` cached positions: query `i` sees keys `0..=offset + i`.
    /// The inference kernel applies it by bounds; the additive `[t, offset + t]` tensor is
    /// built (once, on first use) only for the differentiable path.
    Causal {
        t: usize,
        offset: usize,
        additive: std::sync::OnceLock<Tensor>,
    },
    /// One query per batch row over `span` keys, batch row `b` seeing keys `0..keys[b]`: a
    /// batched decode step whose rows have cached different numbers of positions. The
    /// additive `[B, 1, 1, span]` tensor is built only for the composed path.
    PerBatchRow {
        keys: Vec<usize>,
        span: usize,
        additive: std::sync::OnceLock<Tensor>,
    },
    /// An additive mask: `[T, S]`, or `[B, 1, 1, S]` (one per batch row) when `T` is 1.
    Additive(Tensor),
}

impl Mask {
    /// [`Mask::Causal`] for `t` queries after `offset` positions.
    pub fn causal(t: usize, offset: usize) -> Self {
        Mask::Causal {
            t,
            offset,
            additive: std::sync::OnceLock::new(),
        }
    }

    /// [`Mask::PerBatchRow`]: batch row `b` sees keys `0..keys[b]` of `span`.
    pub fn per_batch_row(keys: Vec<usize>, span: usize) -> Self {
        Mask::PerBatchRow {
            keys,
            span,
            additive: std::sync::OnceLock::new(),
        }
    }

    /// The mask as an additive tensor, if it masks anything.
    fn additive(&self, dtype: DType, device: &Device) -> Result<Option<&Tensor>> {
        match self {
            Mask::All => Ok(None),
            Mask::Additive(mask) => Ok(Some(mask)),
            Mask::Causal {
                t,
                offset,
                additive,
            } => {
                if additive.get().is_none() {
                    // A race only builds the same tensor twice.
                    let _ = additive.set(causal_mask(*t, *offset, dtype, device)?);
                }
                Ok(additive.get())
            }
            Mask::PerBatchRow {
                keys,
                span,
                additive,
            } => {
                if additive.get().is_none() {
                    let values: Vec<f32> = keys
                        .iter()
                        .flat_map(|&k| {
                            (0..*span).map(move |j| if j < k { 0.0 } else { f32::NEG_INFINITY })
                        })
                        .collect();
                    let mask = Tensor::from_vec(values, (keys.len(), 1, 1, *span), device)?
                        .to_dtype(dtype)?;
                    let _ = additive.set(mask);
                }
                Ok(additive.get())
            }
        }
    }
}

/// Scaled dot-product attention with grouped-query heads.
///
/// `q` is `[B, H, T, D]`, `k` and `v` are `[B, H_kv, S, D]` with `H` a multiple of `H_kv`;
/// query head `h` reads key/value head `h / (H / H_kv)` as transformers' `repeat_kv` does.
/// Instead of repeating keys and values, the query heads of a group are stacked into the
/// rows of one matrix, so nothing is copied.
///
/// With [`Kernels::Fast`] on the CPU the scores are scaled, masked and softmaxed in one pass
/// per row in f32, a causal mask by bounds (`scaled_softmax`); an f32 prefill (several
/// queries, every key or causal) runs one block of query rows per task with its scores in
/// cache and skips the keys a causal block cannot see (`blocked_attention`). Otherwise (and
/// for f64, which the model tests use for exact comparisons) by differentiable ops over the
/// additive mask.
///
/// Keys and values may be kept narrower than `q` (an f16 cache of an f32 model): a decode
/// step (one query per batch row) on the CPU reads them as they lie (`half_kv`); anything
/// else attends over copies in `q`'s dtype.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Mask,
    scale: f64,
    kernels: Kernels,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, h_kv, s, _) = k.dims4()?;
    if h % h_kv != 0 {
        return Err(RuntimeError::InvalidInput(format!(
            "attention with {h} query heads over {h_kv} key/value heads"
        )));
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        // Keys and values kept narrower than the computation (an f16 cache for an f32 model):
        // a decode step reads them as they lie; anything else attends over f32 copies.
        let seen = match mask {
            _ if t != 1 => None,
            Mask::All => Some(vec![s; b]),
            Mask::Causal { t: 1, offset, .. } if offset + 1 == s => Some(vec![s; b]),
            Mask::PerBatchRow { keys, span, .. } if keys.len() == b && *span == s => {
                Some(keys.clone())
            }
            _ => None,
        };
        match seen {
            Some(seen)
                if kernels == Kernels::Fast
                    && q.device().is_cpu()
                    && (q.dtype(), k.dtype(), v.dtype())
                        == (DType::F32, DType::F16, DType::F16) =>
            {
                let op = half_kv::HalfKvDecode {
                    scale: scale as f32,
                    seen,
                };
                return Ok(q.contiguous()?.apply_op3_no_bwd(k, v, &op)?);
            }
            _ => {
                let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
                return attention(q, &k, &v, mask, scale, kernels);
            }
        }
    }
    if kernels == Kernels::Fast && q.device().is_cpu() && q.dtype() == DType::F32 && t > 1 {
        // A prefill: one block of query rows per task, scores kept in cache.
        let seen = match mask {
            Mask::All => Some(blocked_attention::Seen::All),
            Mask::Causal { t: mt, offset, .. } if *mt == t && offset + t == s => {
                Some(blocked_attention::Seen::Causal { offset: *offset })
            }
            _ => None,
        };
        if let Some(seen) = seen {
            let op = blocked_attention::BlockedAttention {
                scale: scale as f32,
                seen,
            };
            return Ok(q.apply_op3_no_bwd(k, v, &op)?);
        }
    }
    let n_rep = h / h_kv;
    let q = q.contiguous()?.reshape((b, h_kv, n_rep * t, d))?;
    let scores = q.matmul(&k.t()?)?;
    let fused = match mask {
        Mask::All => Some(scaled_softmax::Visible::All),
        Mask::Causal { t: mt, offset, .. } if *mt == t && offset + t == s => {
            Some(scaled_softmax::Visible::Causal { t, offset: *offset })
        }
        Mask::PerBatchRow { keys, span, .. } if t == 1 && keys.len() == b && *span == s => {
            Some(scaled_softmax::Visible::PerBatchRow {
                rows: h,
                keys: keys.clone(),
            })
        }
        _ => None,
    };
    let probs = match fused {
        Some(visible)
            if kernels == Kernels::Fast
                && scores.device().is_cpu()
                && scores.dtype() != DType::F64 =>
        {
            let dtype = scores.dtype();
            let op = scaled_softmax::ScaledSoftmax {
                scale: scale as f32,
                visible,
            };
            // In place: `scores` is this function's own fresh tensor (or its f32 copy).
            let scores = scores.to_dtype(DType::F32)?.contiguous()?;
            scores.inplace_op1(&op)?;
            scores.to_dtype(dtype)?
        }
        _ => {
            let scores = (scores * scale)?;
            let scores = match mask.additive(scores.dtype(), scores.device())? {
                Some(mask) if mask.rank() == 4 && t == 1 => scores.broadcast_add(mask)?,
                Some(mask) if n_rep == 1 => scores.broadcast_add(mask)?,
                Some(mask) => {
                    let mask = mask
                        .unsqueeze(0)?
                        .broadcast_as((n_rep, t, s))?
                        .reshape((n_rep * t, s))?;
                    scores.broadcast_add(&mask)?
                }
                None => scores,
            };
            softmax_last_dim(&scores, kernels)?
        }
    };
    Ok(probs.matmul(v)?.reshape((b, h, t, d))?)
}

/// `dst (=, or += when accumulating) lhs · rhs` for `(m, n, k)`, each operand a pointer with
/// its row and column strides (`dst` row-major with the given row stride).
///
/// # Safety
/// Every element the strides address must lie within its operand's allocation, and `dst`'s
/// elements must not be written by anyone else during the call.
pub(crate) unsafe fn gemm_into<T: 'static + Copy + num_traits::Zero + num_traits::One>(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, accumulate): (*mut T, isize, bool),
    (lhs, lhs_rs, lhs_cs): (*const T, isize, isize),
    (rhs, rhs_rs, rhs_cs): (*const T, isize, isize),
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the caller's contract; gemm computes dst = alpha·dst + beta·lhs·rhs, reading dst
    // only when asked to.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Mean cross-entropy of `logits` (`[N, V]`) against `targets` over the positions where
/// `mask` is true; differentiable. Callers shift: row `i` of `logits` predicts `targets[i]`.
pub fn masked_cross_entropy(logits: &Tensor, targets: &[u32], mask: &[bool]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n || mask.len() != n {
        return Err(RuntimeError::InvalidInput(format!(
            "cross-entropy over {n} rows with {} targets and {} mask entries",
            targets.len(),
            mask.len()
        )));
    }
    if let Some(bad) = targets
        .iter()
        .zip(mask)
        .find(|(&t, &m)| m && t as usize >= v)
    {
        return Err(RuntimeError::InvalidInput(format!(
            "cross-entropy target {} outside {v} logits",
            bad.0
        )));
    }
    let rows: Vec<u32> = (0..n as u32).filter(|&i| mask[i as usize]).collect();
    if rows.is_empty() {
        return Err(RuntimeError::InvalidInput(
            "cross-entropy mask selects no position".to_string(),
        ));
    }
    let device = logits.device();
    let picked: Vec<u32> = rows.iter().map(|&i| targets[i as usize]).collect();
    let count = rows.len();
    let rows = Tensor::from_vec(rows, count, device)?;
    let picked = Tensor::from_vec(picked, (count, 1), device)?;
    let log_probs = log_softmax_last_dim(&logits.index_select(&rows, 0)?)?;
    let nll = log_probs.gather(&picked, 1)?.neg()?;
    Ok(nll.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::testing::randn(shape, seed, DType::F32, &Device::Cpu).unwrap()
    }

    /// Runs both kernel flavours and checks they agree within `tol`.
    fn check(f: impl Fn(Kernels) -> Tensor, tol: f64) {
        let fast = f(Kernels::Fast);
        let diff = f(Kernels::Differentiable);
        let err = max_abs_diff(&fast, &diff);
        assert!(err < tol, "fast and differentiable differ by {err}");
    }

    #[test]
    fn rms_norm_fast_matches_differentiable() {
        let x = randn(&[2, 5, 16], 1);
        let w = randn(&[16], 2);
        check(|k| rms_norm(&x, &w, 1e-5, k).unwrap(), 1e-5);
        let composed = rms_norm_composed(&x, &w, 1e-5).unwrap();
        let fused = rms_norm(&x, &w, 1e-5, Kernels::Differentiable).unwrap();
        assert!(max_abs_diff(&composed, &fused) < 1e-5);
    }

    /// Gradients of `loss(f(inputs))` for every input, `loss` a fixed random projection, so
    /// every output element gets a different upstream gradient.
    fn gradients(inputs: &[&Tensor], f: impl Fn(&[Tensor]) -> Tensor) -> Vec<Tensor> {
        let vars: Vec<candle_core::Var> = inputs
            .iter()
            .map(|t| candle_core::Var::from_tensor(t).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors);
        let proj = randn(out.dims(), 99);
        let grads = (out * proj).unwrap().sum_all().unwrap().backward().unwrap();
        tensors
            .iter()
            .map(|t| grads.get(t).expect("a gradient for every input").clone())
            .collect()
    }

    #[test]
    fn rms_norm_backward_matches_the_composed_ops() {
        let x = randn(&[2, 5, 16], 11);
        let w = randn(&[16], 12);
        let fused = gradients(&[&x, &w], |t| {
            rms_norm(&t[0], &t[1], 1e-5, Kernels::Differentiable).unwrap()
        });
        let composed = gradients(&[&x, &w], |t| {
            rms_norm_composed(&t[0], &t[1], 1e-5).unwrap()
        });
        for (name, (a, b)) in ["x", "weight"].iter().zip(fused.iter().zip(&composed)) {
            let err = max_abs_diff(a, b);
            assert!(err < 1e-4, "∂{name} differs by {err}");
        }
        // Only one operand tracked: the other gets no gradient, the tracked one the same.
        let x_only = candle_core::Var::from_tensor(&x).unwrap();
        let out = rms_norm(x_only.as_tensor(), &w, 1e-5, Kernels::Differentiable).unwrap();
        let grads = (out * randn(&[2, 5, 16], 99))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_abs_diff(grads.get(x_only.as_tensor()).unwrap(), &fused[0]) < 1e-6);
        assert!(grads.get(&w).is_none());
    }

    #[test]
    fn rope_backward_matches_the_composed_ops() {
        let x = randn(&[2, 3, 5, 8], 13);
        let angles = randn(&[5, 4], 14);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let fused = gradients(&[&x], |t| {
            rope(&t[0], &cos, &sin, Kernels::Differentiable).unwrap()
        });
        let composed = gradients(&[&x], |t| rope_composed(&t[0], &cos, &sin).unwrap());
        let err = max_abs_diff(&fused[0], &composed[0]);
        assert!(err < 1e-5, "∂x differs by {err}");
        let forward = max_abs_diff(
            &rope(&x, &cos, &sin, Kernels::Differentiable).unwrap(),
            &rope_composed(&x, &cos, &sin).unwrap(),
        );
        assert!(forward < 1e-5, "forward differs by {forward}");
    }

    #[test]
    fn layer_norm_fast_matches_differentiable() {
        let x = (randn(&[3, 7, 12], 3) + 0.5).unwrap();
        let w = randn(&[12], 4);
        let b = randn(&[12], 5);
        check(|k| layer_norm(&x, &w, &b, 1e-5, k).unwrap(), 1e-5);
    }

    #[test]
    fn softmax_fast_matches_differentiable_and_sums_to_one() {
        let x = (randn(&[2, 3, 4, 9], 6) * 4.0).unwrap();
        check(|k| softmax_last_dim(&x, k).unwrap(), 1e-6);
        let sums = softmax_last_dim(&x, Kernels::Differentiable)
            .unwrap()
            .sum(D::Minus1)
            .unwrap();
        let ones = Tensor::ones((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_abs_diff(&sums, &ones) < 1e-6);
    }

    #[test]
    fn rope_fast_matches_differentiable() {
        let x = randn(&[2, 3, 5, 8], 7);
        let cos = randn(&[5, 4], 8);
        let sin = randn(&[5, 4], 9);
        check(|k| rope(&x, &cos, &sin, k).unwrap(), 1e-6);
    }

    #[test]
    fn rope_is_rotate_half_not_interleaved() {
        // One head of dim 4 at one position: pairs are (x0, x2) and (x1, x3).
        let x = Tensor::new(&[[[[1f32, 2., 3., 4.]]]], &Device::Cpu).unwrap();
        let (c0, c1, s0, s1) = (0.5f32, 0.25f32, 0.75f32, -0.5f32);
        let cos = Tensor::new(&[[c0, c1]], &Device::Cpu).unwrap();
        let sin = Tensor::new(&[[s0, s1]], &Device::Cpu).unwrap();
        let want = [
            1. * c0 - 3. * s0,
            2. * c1 - 4. * s1,
            3. * c0 + 1. * s0,
            4. * c1 + 2. * s1,
        ];
        for k in [Kernels::Fast, Kernels::Differentiable] {
            let got = rope(&x, &cos, &sin, k)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got, want, "{k:?}");
        }
    }

    #[test]
    fn activations_fast_match_differentiable() {
        let x = (randn(&[4, 33], 10) * 3.0).unwrap();
        for act in [
            Activation::QuickGelu,
            Activation::GeluErf,
            Activation::GeluTanh,
            Activation::Silu,
        ] {
            check(|k| activation(&x, act, k).unwrap(), 1e-5);
        }
        // quick_gelu(1) = 1 * sigmoid(1.702).
        let one = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let want = 1.0 / (1.0 + (-1.702f32).exp());
        for k in [Kernels::Fast, Kernels::Differentiable] {
            let got = activation(&one, Activation::QuickGelu, k)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0];
            assert!((got - want).abs() < 1e-6, "{k:?}: {got} vs {want}");
        }
    }

    #[test]
    fn attention_fast_matches_differentiable_and_repeat_kv() {
        // 4 query heads over 2 key/value heads, causal with an offset of 2.
        let q = randn(&[1, 4, 3, 8], 11);
        let k = randn(&[1, 2, 5, 8], 12);
        let v = randn(&[1, 2, 5, 8], 13);
        let mask = causal_mask(3, 2, DType::F32, &Device::Cpu).unwrap();
        check(
            |kern| attention(&q, &k, &v, &Mask::causal(3, 2), 0.3, kern).unwrap(),
            1e-5,
        );
        // Reference: transformers' repeat_kv (head h reads kv head h / 2), then plain attention.
        let rep = |t: &Tensor| {
            let parts: Vec<Tensor> = (0..4).map(|h| t.narrow(1, h / 2, 1).unwrap()).collect();
            Tensor::cat(&parts, 1).unwrap()
        };
        let (kr, vr) = (rep(&k), rep(&v));
        let scores = (q.matmul(&kr.t().unwrap()).unwrap() * 0.3)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&vr)
            .unwrap();
        let got = attention(&q, &k, &v, &Mask::causal(3, 2), 0.3, Kernels::Fast).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5);
        // The same mask as a tensor takes the unfused path.
        let additive = attention(&q, &k, &v, &Mask::Additive(mask), 0.3, Kernels::Fast).unwrap();
        assert!(max_abs_diff(&additive, &want) < 1e-5);
        // The first query (at position 2) sees exactly keys 0..=2.
        let first = attention(
            &q.narrow(2, 0, 1).unwrap(),
            &k.narrow(2, 0, 3).unwrap(),
            &v.narrow(2, 0, 3).unwrap(),
            &Mask::All,
            0.3,
            Kernels::Fast,
        )
        .unwrap();
        assert!(max_abs_diff(&first, &got.narrow(2, 0, 1).unwrap()) < 1e-6);
    }

    /// The one-pass kernel at a prefill's size (rows split over tasks, batch rows, grouped
    /// heads, large scores) against the composed ops, causal and unmasked, f32 and f16.
    #[test]
    fn fused_attention_softmax_matches_composed_at_prefill_size() {
        let q = (randn(&[2, 4, 37, 16], 21) * 4.0).unwrap();
        let k = (randn(&[2, 2, 300, 16], 22) * 4.0).unwrap();
        let v = randn(&[2, 2, 300, 16], 23);
        for mask in [Mask::causal(37, 263), Mask::All] {
            let fast = attention(&q, &k, &v, &mask, 0.25, Kernels::Fast).unwrap();
            let composed = attention(&q, &k, &v, &mask, 0.25, Kernels::Differentiable).unwrap();
            let diff = max_abs_diff(&fast, &composed);
            assert!(diff < 2e-6, "{mask:?}: {diff}");
            let half = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
            let fast = attention(&half(&q), &half(&k), &half(&v), &mask, 0.25, Kernels::Fast)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let diff = max_abs_diff(&fast, &composed);
            assert!(diff < 5e-2, "{mask:?} f16: {diff}");
        }
        // A batched decode step: one query per batch row, each seeing its own number of keys.
        let q = (randn(&[3, 4, 1, 16], 24) * 4.0).unwrap();
        let k = (randn(&[3, 2, 40, 16], 25) * 4.0).unwrap();
        let v = randn(&[3, 2, 40, 16], 26);
        let mask = Mask::per_batch_row(vec![40, 7, 23], 40);
        let fast = attention(&q, &k, &v, &mask, 0.25, Kernels::Fast).unwrap();
        let composed = attention(&q, &k, &v, &mask, 0.25, Kernels::Differentiable).unwrap();
        let diff = max_abs_diff(&fast, &composed);
        assert!(diff < 2e-6, "per batch row: {diff}");
        // Row 1 alone over its 7 keys.
        let alone = attention(
            &q.narrow(0, 1, 1).unwrap(),
            &k.narrow(0, 1, 1).unwrap().narrow(2, 0, 7).unwrap(),
            &v.narrow(0, 1, 1).unwrap().narrow(2, 0, 7).unwrap(),
            &Mask::All,
            0.25,
            Kernels::Fast,
        )
        .unwrap();
        assert!(max_abs_diff(&alone, &fast.narrow(0, 1, 1).unwrap()) < 2e-6);
        // A causal mask that does not fit the scores is refused, not misapplied.
        let wrong = Tensor::zeros((1, 1, 4, 6), DType::F32, &Device::Cpu).unwrap();
        let op = scaled_softmax::ScaledSoftmax {
            scale: 1.0,
            visible: scaled_softmax::Visible::Causal { t: 4, offset: 3 },
        };
        assert!(wrong.inplace_op1(&op).is_err());
    }

    /// The blocked prefill attention over several blocks of query rows (300 queries: two
    /// whole blocks and a partial one), causal after 0 and after 50 cached positions and
    /// unmasked, against the composed ops: grouped heads, a head dim of 24, queries as a
    /// transposed view and keys and values as views of a longer buffer (a cache's). A causal
    /// shape that does not fit is refused.
    #[test]
    fn blocked_attention_matches_composed_across_blocks() {
        let (t, d) = (300, 24);
        for offset in [0, 50] {
            let s = offset + t;
            let q = (randn(&[1, t, 4, d], 31) * 3.0)
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            let k_buf = (randn(&[1, 2, 420, d], 32) * 3.0).unwrap();
            let v_buf = randn(&[1, 2, 420, d], 33);
            let (k, v) = (
                k_buf.narrow(2, 0, s).unwrap(),
                v_buf.narrow(2, 0, s).unwrap(),
            );
            for mask in [Mask::causal(t, offset), Mask::All] {
                let fast = attention(&q, &k, &v, &mask, 0.2, Kernels::Fast).unwrap();
                let composed = attention(&q, &k, &v, &mask, 0.2, Kernels::Differentiable).unwrap();
                let diff = max_abs_diff(&fast, &composed);
                assert!(diff < 1e-5, "{mask:?}: {diff}");
                let seen = match mask {
                    Mask::All => blocked_attention::Seen::All,
                    _ => blocked_attention::Seen::Causal { offset },
                };
                let op = blocked_attention::BlockedAttention { scale: 0.2, seen };
                let direct = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
                assert!(max_abs_diff(&direct, &composed) < 1e-5);
            }
            // The last query sees every key: the same as attending alone over all of them.
            let last = attention(
                &q.narrow(2, t - 1, 1).unwrap(),
                &k,
                &v,
                &Mask::All,
                0.2,
                Kernels::Fast,
            )
            .unwrap();
            let all = attention(&q, &k, &v, &Mask::causal(t, offset), 0.2, Kernels::Fast).unwrap();
            assert!(max_abs_diff(&last, &all.narrow(2, t - 1, 1).unwrap()) < 1e-5);
        }
        let q = randn(&[1, 2, 5, 8], 34);
        let k = randn(&[1, 2, 9, 8], 35);
        let op = blocked_attention::BlockedAttention {
            scale: 1.0,
            seen: blocked_attention::Seen::Causal { offset: 3 },
        };
        assert!(q.apply_op3_no_bwd(&k, &k, &op).is_err());
    }

    /// A decode step over f16 keys and values (an f16 cache of an f32 model) read as they lie
    /// equals the f32 attention over the same values converted, for every mask a decode step
    /// uses; views of a longer buffer (a cache's), grouped heads, a head dim that is not a
    /// multiple of 8 and more keys than one conversion chunk. Anything else (a prefill)
    /// attends over converted copies.
    #[test]
    fn decode_attention_reads_half_keys_and_values_as_they_lie() {
        let half = |t: Tensor| t.to_dtype(DType::F16).unwrap();
        let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        // Head dims for the portable kernel (12) and the F16C one (24: one pair of 8-lane
        // steps and one single; 128: LLaVA-7B's).
        for d in [12, 24, 128] {
            // Buffers of 96 positions of which 70 are in use, as a cache's views are.
            let k = half((randn(&[3, 2, 96, d], 31) * 3.0).unwrap());
            let v = half(randn(&[3, 2, 96, d], 32));
            let (k, v) = (k.narrow(2, 0, 70).unwrap(), v.narrow(2, 0, 70).unwrap());
            assert!(!k.is_contiguous());
            let q = (randn(&[3, 4, 1, d], 33) * 3.0).unwrap();
            for mask in [
                Mask::All,
                Mask::causal(1, 69),
                Mask::per_batch_row(vec![70, 5, 33], 70),
            ] {
                let got = attention(&q, &k, &v, &mask, 0.3, Kernels::Fast).unwrap();
                assert_eq!(got.dtype(), DType::F32);
                let want = attention(
                    &q,
                    &f32_of(&k),
                    &f32_of(&v),
                    &mask,
                    0.3,
                    Kernels::Differentiable,
                )
                .unwrap();
                let diff = max_abs_diff(&got, &want);
                assert!(diff < 1e-5, "head dim {d}, {mask:?}: {diff}");
            }
        }
        let k = half((randn(&[3, 2, 96, 12], 31) * 3.0).unwrap());
        let v = half(randn(&[3, 2, 96, 12], 32));
        let (k, v) = (k.narrow(2, 0, 70).unwrap(), v.narrow(2, 0, 70).unwrap());
        let q = (randn(&[3, 4, 1, 12], 33) * 3.0).unwrap();
        // A prefill chunk of 3 queries after 67 positions: converted, same as f32.
        let q3 = randn(&[3, 4, 3, 12], 34);
        let mask = Mask::causal(3, 67);
        let got = attention(&q3, &k, &v, &mask, 0.3, Kernels::Fast).unwrap();
        let want = attention(&q3, &f32_of(&k), &f32_of(&v), &mask, 0.3, Kernels::Fast).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-6);
        // Keys seen beyond those present are refused, not read.
        let op = half_kv::HalfKvDecode {
            scale: 1.0,
            seen: vec![70, 71, 1],
        };
        assert!(q.apply_op3_no_bwd(&k, &v, &op).is_err());
    }

    #[test]
    fn frozen_matmul_backward_reaches_only_the_tracked_operand() {
        let x = candle_core::Var::from_tensor(&randn(&[3, 4], 17)).unwrap();
        let w = randn(&[5, 4], 18);
        let y = matmul(x.as_tensor(), &w.t().unwrap()).unwrap();
        let want = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        assert_eq!(max_abs_diff(&y, &want), 0.0);
        let grads = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let wx = candle_core::Var::from_tensor(x.as_tensor()).unwrap();
        let plain = wx.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let plain_grads = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        assert!(max_abs_diff(gx, plain_grads.get(wx.as_tensor()).unwrap()) < 1e-5);
        assert!(grads.get(&w).is_none() && grads.get(&w.t().unwrap()).is_none());
        // A weight that is itself a variable still gets its gradient (pretraining).
        let wv = candle_core::Var::from_tensor(&w).unwrap();
        let y = matmul(x.as_tensor(), &wv.as_tensor().t().unwrap()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(wv.as_tensor()).is_some());
    }

    #[test]
    fn causal_mask_blocks_future_keys() {
        let m = causal_mask(2, 1, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn linear_folds_leading_dims() {
        let x = randn(&[2, 3, 4], 14);
        let w = randn(&[5, 4], 15);
        let b = randn(&[5], 16);
        let got = linear(&x, &w, Some(&b)).unwrap();
        let want = x
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-6);
    }

    #[test]
    fn masked_cross_entropy_matches_hand_computation() {
        let logits = Tensor::new(&[[0f32, 0.0], [1.0, 3.0], [2.0, 0.0]], &Device::Cpu).unwrap();
        let loss = masked_cross_entropy(&logits, &[1, 1, 0], &[false, true, true])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let nll1 = (1f32.exp() + 3f32.exp()).ln() - 3.0;
        let nll2 = (2f32.exp() + 1.0).ln() - 2.0;
        assert!((loss - (nll1 + nll2) / 2.0).abs() < 1e-6);
        assert!(masked_cross_entropy(&logits, &[1, 1, 0], &[false; 3]).is_err());
        assert!(masked_cross_entropy(&logits, &[1, 7, 0], &[true; 3]).is_err());
    }
}
