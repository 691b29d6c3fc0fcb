//! Attention's softmax in one pass over the scores, for inference: `softmax(scale · s + mask)`
//! with the causal mask applied by bounds rather than by a `[T, S]` tensor, and `exp` vectorised.
//!
//! Unfused, the attention of a prefill makes four passes over its `[H, T, S]` scores (scale,
//! mask add, softmax, each allocating) and computes `exp` of every masked entry; with
//! libm's scalar `expf` that is most of a small model's prefill (a third of the parity
//! checkpoint's CPU time went to `expf` alone: 7 M calls for 638 + 577 positions). Here each
//! row is scaled, reduced, exponentiated and normalised in place, only up to its last visible
//! key, and `exp` is a polynomial the compiler turns into 16-lane AVX-512 or 8-lane AVX2 code
//! where the CPU has them (chosen at run time; any other CPU runs the same code compiled for
//! its baseline), as is the row's maximum.

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
    let inv = 1.0 / exp_row(row, visible, scale);
    row[..visible].iter_mut().for_each(|x| *x *= inv);
}

/// `row[..visible]` ← exp(scale · (row[..visible] − max)), `row[visible..]` ← 0; returns the
/// sum that [`softmax_row`] divides by. An attention that multiplies the row with the values
/// can divide its output row instead (`d` divisions where the softmax makes `visible`).
pub(super) fn exp_row(row: &mut [f32], visible: usize, scale: f32) -> f32 {
    let (seen, hidden) = row.split_at_mut(visible);
    hidden.fill(0.0);
    let max = row_max(seen);
    if max == f32::NEG_INFINITY || max.is_nan() {
        // Nothing to weigh (or a NaN, which the unfused softmax would spread): as candle does.
        seen.iter_mut().for_each(|x| *x = (*x - max).exp());
        return seen.iter().sum();
    }
    exp_scaled_sum(seen, max, scale)
}

// `x ← exp(scale · (x − max))` for each element; returns their sum.
super::vexp::with_simd! {
    fn exp_scaled_sum / exp_scaled_sum_avx2 (xs: &mut [f32], max: f32, scale: f32) -> f32 = exp_scaled_sum_portable;
}

/// Lanes summed side by side (so the sum vectorises too).
const LANES: usize = 16;

// The largest element (NaNs ignored, as `f32::max` does; −∞ for an empty row).
super::vexp::with_simd! {
    fn row_max / row_max_avx2 (xs: &[f32]) -> f32 = row_max_portable;
}

#[inline(always)]
fn row_max_portable(xs: &[f32]) -> f32 {
    // A comparison per lane rather than `f32::max`, whose NaN rule keeps the loop scalar.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

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
