//! Attention's softmax in one pass over the scores, for inference: `softmax(scale · s + mask)`
//! with the causal mask applied by bounds rather than by a `[T, S]` tensor, and `exp` vectorised.
//!
//! Unfused, the attention of a prefill makes four passes over its `[H, T, S]` scores (scale,
//! mask add, softmax, each allocating) and computes `exp` of every masked entry; with
//! libm's scalar `expf` that is most of a small model's prefill (a third of the parity
//! checkpoint's CPU time went to `expf` alone: 7 M calls for 638 + 577 positions). Here each
//! row is scaled, reduced, exponentiated and normalised in place, only up to its last visible
//! key, and `exp` is a polynomial the compiler turns into 8-lane AVX2 code where the CPU has
//! AVX2 (chosen at run time; any other CPU runs the same code compiled for its baseline).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp1, Layout};
use rayon::prelude::*;

/// Which keys row `r` of the scores sees: `0..visible(r)`.
#[derive(Debug, Clone)]
pub(super) enum Visible {
    /// Every key.
    All,
    /// `t` queries after `offset` cached positions: row `r` is query `r % t`, at position
    /// `offset + r % t`, and sees keys `0..=offset + r % t`.
    Causal { t: usize, offset: usize },
    /// One query per batch row, `rows` score rows each (its heads): row `r` belongs to batch
    /// row `r / rows`, which sees keys `0..keys[r / rows]`.
    PerBatchRow { rows: usize, keys: Vec<usize> },
}

/// `softmax(scale · x)` over the keys each row sees (the rest of the row 0), over the last dim
/// of a contiguous f32 tensor `[.., R, S]`, in place.
pub(super) struct ScaledSoftmax {
    pub scale: f32,
    pub visible: Visible,
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
        let n_rows = (end - start) / s;
        let scale = self.scale;
        let visible = &self.visible;
        match visible {
            Visible::All => {}
            Visible::Causal { t, offset } => {
                if *t == 0 || offset + t > s || n_rows % t != 0 {
                    candle_core::bail!(
                        "causal softmax of {t} queries after {offset} over {n_rows} rows of {s} keys"
                    );
                }
            }
            Visible::PerBatchRow { rows, keys } => {
                if *rows == 0
                    || rows * keys.len() != n_rows
                    || keys.iter().any(|&k| k == 0 || k > s)
                {
                    candle_core::bail!(
                        "softmax of {n_rows} rows of {s} keys for {} batch rows of {rows} seeing {keys:?} keys",
                        keys.len()
                    );
                }
            }
        }
        // Rows in chunks big enough to be worth a task (~32 k entries).
        let rows_per_task = (32_768 / s).max(1);
        data[start..end]
            .par_chunks_mut(s * rows_per_task)
            .enumerate()
            .for_each(|(chunk, chunk_rows)| {
                for (i, row) in chunk_rows.chunks_mut(s).enumerate() {
                    let r = chunk * rows_per_task + i;
                    let seen = match visible {
                        Visible::All => s,
                        Visible::Causal { t, offset } => offset + r % t + 1,
                        Visible::PerBatchRow { rows, keys } => keys[r / rows],
                    };
                    softmax_row(row, seen, scale);
                }
            });
        Ok(())
    }
}

/// `row[..visible]` ← softmax(scale · row[..visible]); `row[visible..]` ← 0.
pub(super) fn softmax_row(row: &mut [f32], visible: usize, scale: f32) {
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

// `x ← exp(scale · (x − max))` for each element; returns their sum.
super::vexp::with_avx2! {
    fn exp_scaled_sum / exp_scaled_sum_avx2 (xs: &mut [f32], max: f32, scale: f32) -> f32 = exp_scaled_sum_portable;
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
