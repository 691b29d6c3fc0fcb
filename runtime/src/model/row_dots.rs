//! `x · Wᵀ` for a few input rows — a decode step — as dot products along `W`'s stored rows,
//! computed in f32 from f32, f16 or bf16 storage.
//!
//! A decode step multiplies one row per chat with every weight matrix: it reads each weight
//! once and does two flops per element read, so it runs at the speed memory delivers the
//! weights. The GEMM's matrix-vector path streams them at 14–20 GB/s on this project's 2-core
//! AVX2 machine (`torch.nn.functional.linear` 18–22 GB/s); reading four stored rows at once
//! with two 8-lane accumulators each, and splitting the rows across threads in blocks of
//! [`ROWS_PER_TASK`], streams them at 28–34 GB/s. Half-precision rows are widened in
//! registers (F16C; bf16 by a shift), so they cost half the memory traffic of f32 ones.
//!
//! Every output element is one row's dot product in a fixed order, whatever the number of
//! input rows and whichever thread computes it: a batched decode step of up to [`MAX_ROWS`]
//! chats gives each the bits it gets alone.

use half::{bf16, f16};
use rayon::prelude::*;

/// The most input rows computed this way; more go to the GEMM (a prefill, or a decode batch
/// larger than the default 8 chats).
pub(crate) const MAX_ROWS: usize = 8;

/// Stored rows per task: 32 rows of LLaVA-7B's 4 096 columns are 512 KiB of f32, and a
/// 4 096-row matrix still makes 128 tasks.
const ROWS_PER_TASK: usize = 32;

/// A row-major `[n, k]` weight matrix as stored.
#[derive(Clone, Copy)]
pub(crate) enum Stored<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// `y = x · Wᵀ`: `x` is `m ≤ MAX_ROWS` rows of `k` values, row `i` at `x[i * x_rs..]`;
/// `W` is `[n, k]` row-major. Returns `y` as `[m, n]` row-major.
pub(crate) fn product(x: &[f32], x_rs: usize, m: usize, w: Stored, n: usize, k: usize) -> Vec<f32> {
    assert!(m <= MAX_ROWS, "{m} rows for a row-dot product");
    assert!(
        m == 0 || x.len() >= (m - 1) * x_rs + k,
        "input shorter than {m} rows of {k}"
    );
    let stored = match w {
        Stored::F32(w) => w.len(),
        Stored::F16(w) => w.len(),
        Stored::BF16(w) => w.len(),
    };
    assert_eq!(stored, n * k, "a [{n}, {k}] matrix of {stored} elements");
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    by_stored_row_tasks(n, m, ROWS_PER_TASK, |first, rows, out| {
        let (start, end) = (first * k, (first + rows) * k);
        let block = match w {
            Stored::F32(w) => Stored::F32(&w[start..end]),
            Stored::F16(w) => Stored::F16(&w[start..end]),
            Stored::BF16(w) => Stored::BF16(&w[start..end]),
        };
        dots(x, x_rs, m, block, k, out);
    })
}

/// Runs `task(first, rows, out)` in parallel over blocks of `rows_per_task` stored rows, each
/// writing its rows' outputs by stored row (`out[r * m + i]`, so every task owns a contiguous
/// block), and returns all outputs as `[m, n]` by input row.
pub(super) fn by_stored_row_tasks(
    n: usize,
    m: usize,
    rows_per_task: usize,
    task: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut by_row = vec![0f32; n * m];
    by_row
        .par_chunks_mut(rows_per_task * m)
        .enumerate()
        .for_each(|(t, out)| task(t * rows_per_task, out.len() / m, out));
    if m == 1 {
        return by_row;
    }
    let mut y = vec![0f32; m * n];
    for (j, row) in by_row.chunks_exact(m).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            y[i * n + j] = v;
        }
    }
    y
}

/// `out[j * m + i] = x_i · w_j` for the stored rows `w_j` of one block.
fn dots(x: &[f32], x_rs: usize, m: usize, w: Stored, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            // SAFETY: the CPU has the three features (checked just above).
            unsafe {
                match w {
                    Stored::F32(w) => avx2::dots_f32(x, x_rs, m, w, k, out),
                    Stored::F16(w) => avx2::dots_f16(x, x_rs, m, w, k, out),
                    Stored::BF16(w) => avx2::dots_bf16(x, x_rs, m, w, k, out),
                }
            }
            return;
        }
    }
    match w {
        Stored::F32(w) => portable::dots(x, x_rs, m, w, k, out, |v| v),
        Stored::F16(w) => portable::dots(x, x_rs, m, w, k, out, f16::to_f32),
        Stored::BF16(w) => portable::dots(x, x_rs, m, w, k, out, bf16::to_f32),
    }
}

/// The same dot products on any CPU, 16 lanes summed side by side.
mod portable {
    pub(super) fn dots<T: Copy>(
        x: &[f32],
        x_rs: usize,
        m: usize,
        w: &[T],
        k: usize,
        out: &mut [f32],
        widen: impl Fn(T) -> f32,
    ) {
        for (j, w_row) in w.chunks_exact(k).enumerate() {
            for i in 0..m {
                let x_row = &x[i * x_rs..i * x_rs + k];
                let mut acc = [0f32; 16];
                let mut chunks = x_row.chunks_exact(16).zip(w_row.chunks_exact(16));
                for (xs, ws) in &mut chunks {
                    for l in 0..16 {
                        acc[l] += xs[l] * widen(ws[l]);
                    }
                }
                let mut sum = acc.iter().sum::<f32>();
                let tail = k - k % 16;
                for c in tail..k {
                    sum += x_row[c] * widen(w_row[c]);
                }
                out[j * m + i] = sum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    /// The sum of a vector's 8 lanes, in a fixed order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::model) fn lanes_sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// One kernel per storage type: `$load` widens 8 stored elements at a pointer to f32
    /// lanes, `$widen` one element.
    macro_rules! dots_kernel {
        ($name:ident, $group:ident, $t:ty, $load:expr, $widen:expr) => {
            /// `x_row · w_r` for the `R` stored rows in `w`: two 8-lane accumulators per row
            /// over 16 columns a step, then the remaining columns one by one. A row's sum
            /// does not depend on `R`.
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn $group<const R: usize>(x_row: &[f32], w: &[$t], k: usize) -> [f32; R] {
                debug_assert!(x_row.len() == k && w.len() == R * k);
                let body = k - k % 16;
                let xp = x_row.as_ptr();
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                let mut c = 0;
                while c < body {
                    // SAFETY: c + 16 ≤ k: within x's row and within each of the R rows.
                    unsafe {
                        let x0 = _mm256_loadu_ps(xp.add(c));
                        let x1 = _mm256_loadu_ps(xp.add(c + 8));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let wp = w.as_ptr().add(r * k + c);
                            acc[0] = _mm256_fmadd_ps(x0, $load(wp), acc[0]);
                            acc[1] = _mm256_fmadd_ps(x1, $load(wp.add(8)), acc[1]);
                        }
                    }
                    c += 16;
                }
                let mut sums = [0f32; R];
                for (r, (sum, acc)) in sums.iter_mut().zip(&acc).enumerate() {
                    *sum = lanes_sum(_mm256_add_ps(acc[0], acc[1]));
                    for c in body..k {
                        *sum += x_row[c] * $widen(w[r * k + c]);
                    }
                }
                sums
            }

            /// `out[j * m + i] = x_i · w_j`, four stored rows at a time (each read once from
            /// memory, then from cache for the other input rows).
            ///
            /// # Safety
            /// The CPU must have AVX2, FMA and F16C.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $name(
                x: &[f32],
                x_rs: usize,
                m: usize,
                w: &[$t],
                k: usize,
                out: &mut [f32],
            ) {
                let n = w.len() / k;
                debug_assert!(out.len() == n * m && x.len() >= (m - 1) * x_rs + k);
                let mut j = 0;
                while j < n {
                    let group = if n - j >= 4 { 4 } else { 1 };
                    for i in 0..m {
                        let x_row = &x[i * x_rs..i * x_rs + k];
                        if group == 4 {
                            let sums = $group::<4>(x_row, &w[j * k..(j + 4) * k], k);
                            for (r, sum) in sums.into_iter().enumerate() {
                                out[(j + r) * m + i] = sum;
                            }
                        } else {
                            out[j * m + i] = $group::<1>(x_row, &w[j * k..(j + 1) * k], k)[0];
                        }
                    }
                    j += group;
                }
            }
        };
    }

    dots_kernel!(
        dots_f32,
        group_f32,
        f32,
        |p: *const f32| _mm256_loadu_ps(p),
        |v: f32| v
    );
    dots_kernel!(
        dots_f16,
        group_f16,
        f16,
        |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())),
        f16::to_f32
    );
    dots_kernel!(
        dots_bf16,
        group_bf16,
        bf16,
        |p: *const bf16| _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast::<__m128i>())),
            16
        )),
        bf16::to_f32
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hashed_values as values;

    /// Within 1e-5 of the f64 products of the widened weights, for every storage, with
    /// column counts that leave a tail after the 16-column steps and row counts that leave
    /// a partial group of four and a partial task; and every row equal bit for bit to the
    /// same row computed alone.
    #[test]
    fn few_row_products_match_f64_and_do_not_depend_on_the_batch() {
        for (n, k) in [(70, 37), (133, 64), (5, 300)] {
            let w32 = values(n * k, 7);
            let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let x_rs = k + 3;
            let x = values(MAX_ROWS * x_rs, 11);
            for w in [Stored::F32(&w32), Stored::F16(&w16), Stored::BF16(&wb)] {
                let widened = |j: usize, c: usize| -> f64 {
                    match w {
                        Stored::F32(w) => w[j * k + c] as f64,
                        Stored::F16(w) => w[j * k + c].to_f64(),
                        Stored::BF16(w) => w[j * k + c].to_f64(),
                    }
                };
                for m in 1..=MAX_ROWS {
                    let y = product(&x, x_rs, m, w, n, k);
                    assert_eq!(y.len(), m * n);
                    for i in 0..m {
                        let alone = product(&x[i * x_rs..], x_rs, 1, w, n, k);
                        for j in 0..n {
                            let want: f64 =
                                (0..k).map(|c| x[i * x_rs + c] as f64 * widened(j, c)).sum();
                            let got = y[i * n + j];
                            assert!(
                                (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "[{n}, {k}] m {m} ({i}, {j}): {got} vs {want}"
                            );
                            assert_eq!(got.to_bits(), alone[j].to_bits(), "row {i} of {m}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_portable_kernel_computes_the_same_products() {
        let (n, k, m) = (9, 45, 3);
        let w = values(n * k, 3);
        let x = values(m * k, 5);
        let mut out = vec![0f32; n * m];
        portable::dots(&x, k, m, &w, k, &mut out, |v| v);
        let fast = product(&x, k, m, Stored::F32(&w), n, k);
        for j in 0..n {
            for i in 0..m {
                assert!((out[j * m + i] - fast[i * n + j]).abs() < 1e-5);
            }
        }
    }
}
