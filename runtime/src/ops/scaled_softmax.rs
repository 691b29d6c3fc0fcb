//! Attention's softmax in one pass over the scores, for inference: `softmax(scale · s + mask)`
//! with the causal mask applied by bounds rather than by a `[T, S]` tensor, and `exp` vectorised.
//!
//! Unfused, the attention of a prefill makes four passes over its `[H, T, S]` scores (scale,
//! mask add, softmax, each allocating) and computes `exp` of every masked entry; with
//! libm's scalar `expf` that is most of a small model's prefill (a third of the parity
//! checkpoint's CPU time went to `expf` alone: 7 M calls for 638 + 577 positions). Here each
//! row is scaled, reduced, exponentiated and normalised in place, only up to its last visible
//! key, and `exp` is a polynomial the compiler turns into 8-lane FMA code where the CPU has
//! AVX2 (chosen at run time; any other CPU runs the same code compiled for its baseline).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp1, Layout};
use rayon::prelude::*;

/// `softmax(scale · x + causal mask)` over the last dim of a contiguous f32 tensor
/// `[.., R, S]`, in place. With `causal = Some((t, offset))`, row `r` stands for query `r % t` at position
/// `offset + r % t` and sees keys `0..=offset + r % t`; the rest of the row is 0.
pub(super) struct ScaledSoftmax {
    pub scale: f32,
    pub causal: Option<(usize, usize)>,
}

impl InplaceOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "scaled-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let dtype = storage.dtype();
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("scaled-softmax takes f32, got {dtype:?}");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("scaled-softmax takes a contiguous tensor");
        };
        let s = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let (scale, causal) = (self.scale, self.causal);
        if let Some((t, offset)) = causal {
            if t == 0 || offset + t > s {
                candle_core::bail!("causal softmax of {t} queries after {offset} over {s} keys");
            }
        }
        // Rows in chunks big enough to be worth a task (~32 k entries).
        let rows_per_task = (32_768 / s).max(1);
        data[start..end]
            .par_chunks_mut(s * rows_per_task)
            .enumerate()
            .for_each(|(chunk, rows)| {
                for (i, row) in rows.chunks_mut(s).enumerate() {
                    let r = chunk * rows_per_task + i;
                    let visible = match causal {
                        Some((t, offset)) => offset + r % t + 1,
                        None => s,
                    };
                    softmax_row(row, visible, scale);
                }
            });
        Ok(())
    }
}

/// `row[..visible]` ← softmax(scale · row[..visible]); `row[visible..]` ← 0.
fn softmax_row(row: &mut [f32], visible: usize, scale: f32) {
    let (seen, hidden) = row.split_at_mut(visible);
    hidden.fill(0.0);
    let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY || max.is_nan() {
        // Nothing to weigh (or a NaN, which the unfused softmax would spread): as candle does.
        let sum: f32 = seen.iter().map(|&x| (x - max).exp()).sum();
        seen.iter_mut().for_each(|x| *x = (*x - max).exp() / sum);
        return;
    }
    let sum = exp_scaled_sum(seen, max, scale);
    let inv = 1.0 / sum;
    seen.iter_mut().for_each(|x| *x *= inv);
}

/// `x ← exp(scale · (x − max))` for each element; returns their sum.
fn exp_scaled_sum(xs: &mut [f32], max: f32, scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has both features (checked just above).
            return unsafe { exp_scaled_sum_avx2(xs, max, scale) };
        }
    }
    exp_scaled_sum_portable(xs, max, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_scaled_sum_avx2(xs: &mut [f32], max: f32, scale: f32) -> f32 {
    exp_scaled_sum_portable(xs, max, scale)
}

/// Lanes summed side by side (so the sum vectorises too).
const LANES: usize = 8;

#[inline(always)]
fn exp_scaled_sum_portable(xs: &mut [f32], max: f32, scale: f32) -> f32 {
    use super::vexp::exp;
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(acc.iter_mut()) {
            *x = exp(scale * (*x - max));
            *a += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(scale * (*x - max));
        sum += *x;
    }
    acc.iter().sum::<f32>() + sum
}
