//! One decode step's attention over keys and values kept in f16, for an f32 computation.
//!
//! A key/value cache in f16 holds half the bytes of an f32 one (for LLaVA-7B with an image,
//! 0.34 GB instead of 0.67 GB at 640 positions). Converting the whole cache to f32 before each
//! token's attention would write and read that f32 copy at every layer of every token; here
//! each head reads its f16 keys and values once, converting a few positions at a time into a
//! small f32 buffer (F16C where the CPU has it, through `half`), so a step reads half the
//! bytes an f32 cache would. Scores, softmax and the weighted sum are f32.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Positions converted to f32 at a time (with a head dim of 128: 16 KiB, well inside L1+L2).
const CHUNK: usize = 32;

/// `softmax(scale · q·Kᵀ) · V` for one query per batch row: `q` `[B, H, 1, D]` f32, keys and
/// values `[B, H_kv, S, D]` f16 with positions contiguous within a head (a cache's view),
/// query head `h` reading key/value head `h / (H / H_kv)`; batch row `b` sees keys
/// `0..seen[b]`. The result is `[B, H, 1, D]` f32.
pub(super) struct HalfKvDecode {
    pub scale: f32,
    pub seen: Vec<usize>,
}

impl CustomOp3 for HalfKvDecode {
    fn name(&self) -> &'static str {
        "half-kv-decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F16(k), CpuStorage::F16(v)) = (qs, ks, vs) else {
            candle_core::bail!(
                "half-kv attention takes f32 queries and f16 keys and values, got {:?} {:?} {:?}",
                qs.dtype(),
                ks.dtype(),
                vs.dtype()
            );
        };
        let &[b, h, t, d] = ql.dims() else {
            candle_core::bail!(
                "half-kv attention queries {:?}, expected [B, H, 1, D]",
                ql.dims()
            );
        };
        let &[kb, h_kv, s, kd] = kl.dims() else {
            candle_core::bail!("half-kv attention keys {:?}, expected 4 dims", kl.dims());
        };
        let q_start = match ql.contiguous_offsets() {
            Some((start, _)) => start,
            None => candle_core::bail!("half-kv attention needs contiguous queries"),
        };
        let heads_ok = h_kv > 0 && h % h_kv == 0;
        let seen_ok = self.seen.len() == b && self.seen.iter().all(|&n| n > 0 && n <= s);
        if t != 1 || kb != b || kd != d || vl.dims() != kl.dims() || !heads_ok || !seen_ok {
            candle_core::bail!(
                "half-kv attention of queries {:?} over keys {:?} and values {:?} seeing {:?}",
                ql.dims(),
                kl.dims(),
                vl.dims(),
                self.seen
            );
        }
        // Positions of one head must lie one after another, `D` apart.
        let (k_stride, v_stride) = (kl.stride(), vl.stride());
        if k_stride[2..] != [d, 1] || v_stride[2..] != [d, 1] {
            candle_core::bail!(
                "half-kv attention needs positions contiguous within a head, strides {k_stride:?} {v_stride:?}"
            );
        }
        let n_rep = h / h_kv;
        let mut out = vec![0f32; b * h * d];
        out.par_chunks_mut(n_rep * d)
            .enumerate()
            .for_each(|(task, out)| {
                let (row, head) = (task / h_kv, task % h_kv);
                let n = self.seen[row];
                let k_at = kl.start_offset() + row * k_stride[0] + head * k_stride[1];
                let v_at = vl.start_offset() + row * v_stride[0] + head * v_stride[1];
                let q_at = q_start + (row * h + head * n_rep) * d;
                attend(
                    d,
                    &q[q_at..q_at + n_rep * d],
                    &k[k_at..k_at + n * d],
                    &v[v_at..v_at + n * d],
                    self.scale,
                    out,
                );
            });
        Ok((CpuStorage::F32(out), Shape::from((b, h, 1, d))))
    }
}

/// One key/value head of head dim `d`: `out` (its query heads' results, one after another)
/// from `q` (the same heads' queries) over the head's keys and values, `d` values a position.
fn attend(d: usize, q: &[f32], k: &[f16], v: &[f16], scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if d.is_multiple_of(8) && has!("avx2") && has!("fma") && has!("f16c") {
            // SAFETY: the CPU has the three features (checked just above).
            return unsafe { attend_f16c(d, q, k, v, scale, out) };
        }
    }
    attend_converted(d, q, k, v, scale, out)
}

/// [`attend`] with F16C: each 8 keys' or values' halves are converted in a register and
/// multiplied at once (`half`'s slice conversion calls a function per 8 values, which made a
/// 7B q4k decode step slower than with an f32 cache).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_f16c(d: usize, q: &[f32], k: &[f16], v: &[f16], scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n_rep = q.len() / d;
    let n = k.len() / d;
    debug_assert!(d.is_multiple_of(8) && v.len() == k.len() && out.len() == q.len());
    // Eight halves from `p`, as f32 lanes.
    let halves = |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()));
    let mut scores = vec![0f32; n_rep * n];
    for r in 0..n_rep {
        let q = &q[r * d..(r + 1) * d];
        for p in 0..n {
            let key = k[p * d..(p + 1) * d].as_ptr();
            let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= d {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), halves(key.add(i)), a);
                b = _mm256_fmadd_ps(
                    _mm256_loadu_ps(q.as_ptr().add(i + 8)),
                    halves(key.add(i + 8)),
                    b,
                );
                i += 16;
            }
            if i < d {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), halves(key.add(i)), a);
            }
            let sum = _mm256_add_ps(a, b);
            let sum = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
            let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
            let sum = _mm_add_ss(sum, _mm_shuffle_ps(sum, sum, 1));
            scores[r * n + p] = _mm_cvtss_f32(sum);
        }
    }
    for row in scores.chunks_exact_mut(n) {
        super::scaled_softmax::softmax_row(row, n, scale);
    }
    out.fill(0.0);
    for r in 0..n_rep {
        let out = &mut out[r * d..(r + 1) * d];
        for p in 0..n {
            let weight = _mm256_set1_ps(scores[r * n + p]);
            let value = v[p * d..(p + 1) * d].as_ptr();
            for i in (0..d).step_by(8) {
                let o = out.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    o,
                    _mm256_fmadd_ps(weight, halves(value.add(i)), _mm256_loadu_ps(o)),
                );
            }
        }
    }
}

// [`attend`] for any CPU and head dim: a few positions at a time converted to f32, then
// multiplied.
super::vexp::with_simd! {
    fn attend_converted / attend_converted_avx2 (d: usize, q: &[f32], k: &[f16], v: &[f16], scale: f32, out: &mut [f32]) = attend_portable;
}

#[inline(always)]
fn attend_portable(d: usize, q: &[f32], k: &[f16], v: &[f16], scale: f32, out: &mut [f32]) {
    let n_rep = q.len() / d;
    let n = k.len() / d;
    let mut scores = vec![0f32; n_rep * n];
    let mut buf = vec![0f32; CHUNK * d];
    for (c, keys) in k.chunks(CHUNK * d).enumerate() {
        let buf = &mut buf[..keys.len()];
        keys.convert_to_f32_slice(buf);
        for (p, key) in buf.chunks_exact(d).enumerate() {
            for (r, q) in q.chunks_exact(d).enumerate() {
                scores[r * n + c * CHUNK + p] = dot(q, key);
            }
        }
    }
    for row in scores.chunks_exact_mut(n) {
        super::scaled_softmax::softmax_row(row, n, scale);
    }
    out.fill(0.0);
    for (c, values) in v.chunks(CHUNK * d).enumerate() {
        let buf = &mut buf[..values.len()];
        values.convert_to_f32_slice(buf);
        for (p, value) in buf.chunks_exact(d).enumerate() {
            for (r, out) in out.chunks_exact_mut(d).enumerate() {
                let weight = scores[r * n + c * CHUNK + p];
                for (o, x) in out.iter_mut().zip(value) {
                    *o += weight * x;
                }
            }
        }
    }
}

/// Lanes summed side by side, so the sum vectorises.
const LANES: usize = 8;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}
