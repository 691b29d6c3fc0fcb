//! Q4_K and Q6_K stored rows against input rows quantized to Q8_K, for a decode step, on
//! AVX-512 VNNI (`vpdpwssd`) where the CPU has it.
//!
//! candle's block kernels for these types (`k_quants::matmul`) are AVX2: per 256-value
//! block, eight 32-byte `maddubs` and `madd` pairs and eight byte shuffles to spread the
//! sub-block scales. Here a block is four 64-byte `maddubs`, each followed by one `vpdpwssd`
//! that multiplies the 16-bit pair sums by their sub-block's scale and accumulates, the scales
//! spread by one `vpermw` each, and the input's bytes laid out once per product so that every
//! load of it lines up with the stored nibbles. The integer sums are the ones ggml and candle
//! compute; only the float summation order differs.
//!
//! Where the CPU lacks AVX-512 VNNI, [`super::Blocks::from_bytes`] declines these types and
//! candle's kernels run them as before.

use half::f16;

use super::ROWS_PER_TASK;

/// Values per K-quant block.
pub(super) const QK_K: usize = 256;

/// ggml's `block_q4_K`: 8 sub-blocks of 32 four-bit values, each with a 6-bit scale and a
/// 6-bit minimum (packed in `scales`), and the block's two f16 multipliers.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ4K {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// ggml's `block_q6_K`: 256 six-bit values (low four bits in `ql`, high two in `qh`), 16
/// signed 8-bit scales (one per 16 values) and the block's f16 multiplier.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ6K {
    ql: [u8; QK_K / 2],
    qh: [u8; QK_K / 4],
    scales: [i8; QK_K / 16],
    d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// A K-quant block type this module multiplies.
pub(crate) trait KBlock: Copy + Sync {
    /// Sums of input values kept per block, one per `QK_K / SUMS` values.
    const SUMS: usize;
    /// Whether the input's sub-blocks of 32 are stored in Q4_K's nibble order (see
    /// [`Input::quantize`]).
    const NIBBLE_ORDER: bool;
    /// `x · w_r` for R stored rows, in integers per block as the vector kernel.
    fn portable<const R: usize>(x: Row, rows: [&[Self]; R]) -> [f32; R];
    /// The same on AVX-512 VNNI.
    ///
    /// # Safety
    /// The CPU must have what [`vnni::available`] checks.
    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni<const R: usize>(x: Row, rows: [&[Self]; R]) -> [f32; R];
}

/// Whether this CPU runs the vector kernels.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return vnni::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Position of sub-block `s` (of 32 values) in an input block in Q4_K's nibble order:
/// `[0, 2, 1, 3, 4, 6, 5, 7]`, so that the low nibbles of a stored 64-byte run (sub-blocks
/// 0 and 2) meet one 64-byte load of the input and its high nibbles (1 and 3) the next.
/// The permutation is its own inverse.
const fn nibble_position(s: usize) -> usize {
    match s % 4 {
        1 => s + 1,
        2 => s - 1,
        _ => s,
    }
}

/// The input rows quantized as ggml's and candle's `quantize_row_q8_K` (scale `−127 / max`,
/// values rounded to the nearest and clamped), laid out for the kernels of `B`.
pub(super) struct Input {
    qs: Vec<i8>,
    ds: Vec<f32>,
    sums: Vec<i16>,
    sums_per_block: usize,
    k: usize,
}

/// One quantized input row.
#[derive(Clone, Copy)]
pub(crate) struct Row<'a> {
    /// `QK_K` values per block, in the layout of the block type's kernel.
    qs: &'a [i8],
    /// One scale per block.
    ds: &'a [f32],
    /// The sums of the values, per 32 (Q4_K) or per 16 (Q6_K) in natural order.
    sums: &'a [i16],
}

impl Input {
    pub(super) fn quantize<B: KBlock>(x: &[f32], x_rs: usize, m: usize, k: usize) -> Self {
        let blocks = k / QK_K;
        let per_sum = QK_K / B::SUMS;
        let mut qs = vec![0i8; m * k];
        let mut ds = Vec::with_capacity(m * blocks);
        let mut sums = Vec::with_capacity(m * blocks * B::SUMS);
        let mut natural = [0i8; QK_K];
        for i in 0..m {
            let row = &x[i * x_rs..i * x_rs + k];
            for (b, xs) in row.chunks_exact(QK_K).enumerate() {
                let (mut max, mut amax) = (0f32, 0f32);
                for &v in xs {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                if amax == 0.0 {
                    natural.fill(0);
                    ds.push(0.0);
                } else {
                    let iscale = -127f32 / max;
                    for (q, &v) in natural.iter_mut().zip(xs) {
                        *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
                    }
                    ds.push(1.0 / iscale);
                }
                for part in natural.chunks_exact(per_sum) {
                    sums.push(part.iter().map(|&q| q as i16).sum());
                }
                let out = &mut qs[i * k + b * QK_K..i * k + (b + 1) * QK_K];
                for s in 0..QK_K / 32 {
                    let to = if B::NIBBLE_ORDER {
                        nibble_position(s)
                    } else {
                        s
                    };
                    out[to * 32..(to + 1) * 32].copy_from_slice(&natural[s * 32..(s + 1) * 32]);
                }
            }
        }
        Input {
            qs,
            ds,
            sums,
            sums_per_block: B::SUMS,
            k,
        }
    }

    fn row(&self, i: usize) -> Row<'_> {
        let blocks = self.k / QK_K;
        Row {
            qs: &self.qs[i * self.k..(i + 1) * self.k],
            ds: &self.ds[i * blocks..(i + 1) * blocks],
            sums: &self.sums
                [i * blocks * self.sums_per_block..(i + 1) * blocks * self.sums_per_block],
        }
    }
}

/// `y = x · Wᵀ` as [`super::product`] (which checked the shapes), for `W` in K-quant blocks.
pub(super) fn product<B: KBlock>(
    x: &[f32],
    x_rs: usize,
    m: usize,
    w: &[B],
    n: usize,
    k: usize,
) -> Vec<f32> {
    let per_row = k / QK_K;
    let input = Input::quantize::<B>(x, x_rs, m, k);
    let fast = available();
    crate::model::row_dots::by_stored_row_tasks(n, m, ROWS_PER_TASK, |first, rows, out| {
        let w = &w[first * per_row..(first + rows) * per_row];
        let mut j = 0;
        while j < rows {
            j += match rows - j {
                4.. => rows_at::<B, 4>(fast, &input, m, w, per_row, j, out),
                _ => rows_at::<B, 1>(fast, &input, m, w, per_row, j, out),
            };
        }
    })
}

/// The R stored rows from `j` against every input row; returns R.
fn rows_at<B: KBlock, const R: usize>(
    fast: bool,
    input: &Input,
    m: usize,
    w: &[B],
    per_row: usize,
    j: usize,
    out: &mut [f32],
) -> usize {
    let rows: [&[B]; R] = std::array::from_fn(|r| &w[(j + r) * per_row..(j + r + 1) * per_row]);
    for i in 0..m {
        let sums = group::<B, R>(fast, input.row(i), rows);
        for (r, sum) in sums.into_iter().enumerate() {
            out[(j + r) * m + i] = sum;
        }
    }
    R
}

fn group<B: KBlock, const R: usize>(fast: bool, x: Row, rows: [&[B]; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` only where `vnni::available()`.
        return unsafe { B::vnni::<R>(x, rows) };
    }
    let _ = fast;
    B::portable::<R>(x, rows)
}

/// Q4_K's packed 6-bit scales and minimums of its 8 sub-blocks (ggml's `get_scale_min_k4`).
fn scales_and_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = packed[j] & 63;
            mn[j] = packed[j + 4] & 63;
        } else {
            sc[j] = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
            mn[j] = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

impl super::Dequantize for BlockQ4K {
    const VALUES: usize = QK_K;

    /// ggml's `dequantize_row_q4_K`: per 64 values, the low nibbles of 32 bytes with one
    /// sub-block's scale and minimum, then their high nibbles with the next one's.
    #[cfg(test)]
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (blk, out) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let (sc, mn) = scales_and_mins(&blk.scales);
            let (d, dmin) = (blk.d.to_f32(), blk.dmin.to_f32());
            for (j, (q, out)) in blk
                .qs
                .chunks_exact(32)
                .zip(out.chunks_exact_mut(64))
                .enumerate()
            {
                let (lo, hi) = out.split_at_mut(32);
                let (d1, m1) = (d * sc[2 * j] as f32, dmin * mn[2 * j] as f32);
                let (d2, m2) = (d * sc[2 * j + 1] as f32, dmin * mn[2 * j + 1] as f32);
                for ((lo, hi), q) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
                    *lo = d1 * (q & 0xF) as f32 - m1;
                    *hi = d2 * (q >> 4) as f32 - m2;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn bf16_runs(blocks: &[Self], out: &mut [u16], stride: usize) {
        // SAFETY: passed on.
        unsafe { bf16::q4k_runs(blocks, out, stride) }
    }
}

impl super::Dequantize for BlockQ6K {
    const VALUES: usize = QK_K;

    /// ggml's `dequantize_row_q6_K`: per half block of 128 values, four runs of 32 built from
    /// `ql`'s nibbles and two bits of `qh` each, with a signed scale per 16 values.
    #[cfg(test)]
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (blk, out) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = blk.d.to_f32();
            for h in 0..2 {
                let ql = &blk.ql[64 * h..64 * h + 64];
                let qh = &blk.qh[32 * h..32 * h + 32];
                let sc = &blk.scales[8 * h..8 * h + 8];
                let y = &mut out[128 * h..128 * h + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | (qh[l] & 3) << 4) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (qh[l] >> 2 & 3) << 4) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (qh[l] >> 4 & 3) << 4) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4) as i32 - 32;
                    y[l] = d * sc[is] as f32 * q1 as f32;
                    y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                    y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                    y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn bf16_runs(blocks: &[Self], out: &mut [u16], stride: usize) {
        // SAFETY: passed on.
        unsafe { bf16::q6k_runs(blocks, out, stride) }
    }
}

/// The K-quants' [`super::Dequantize::bf16_runs`] on AVX-512: the loops of `dequantize` 16
/// values a vector, the same operations in the same order (so the same f32 values before the
/// rounding).
#[cfg(target_arch = "x86_64")]
mod bf16 {
    use super::super::bf16::{bytes_u32, store_run};
    use super::{scales_and_mins, BlockQ4K, BlockQ6K, QK_K};
    use std::arch::x86_64::*;

    /// Runs per K-quant block.
    const RUNS: usize = QK_K / 32;

    /// # Safety
    /// AVX-512F/BW/BF16; `out` holds `blocks.len() * 8` runs `stride` apart.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn q4k_runs(blocks: &[BlockQ4K], out: &mut [u16], stride: usize) {
        assert!(blocks.is_empty() || (blocks.len() * RUNS - 1) * stride + 32 <= out.len());
        let nibble = _mm512_set1_epi32(0xF);
        for (b, blk) in blocks.iter().enumerate() {
            let (sc, mn) = scales_and_mins(&blk.scales);
            let (d, dmin) = (blk.d.to_f32(), blk.dmin.to_f32());
            for j in 0..RUNS / 2 {
                let q = blk.qs[32 * j..].as_ptr();
                // SAFETY: 32 bytes at `q` (a 128-byte array); both runs within `out` (asserted).
                unsafe {
                    let (q0, q1) = (bytes_u32(q), bytes_u32(q.add(16)));
                    for (h, (q0, q1)) in [
                        (_mm512_and_si512(q0, nibble), _mm512_and_si512(q1, nibble)),
                        (_mm512_srli_epi32::<4>(q0), _mm512_srli_epi32::<4>(q1)),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let s = 2 * j + h;
                        let scale = _mm512_set1_ps(d * sc[s] as f32);
                        let min = _mm512_set1_ps(dmin * mn[s] as f32);
                        let lo = _mm512_sub_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(q0)), min);
                        let hi = _mm512_sub_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(q1)), min);
                        store_run(out.as_mut_ptr().add((b * RUNS + s) * stride), lo, hi);
                    }
                }
            }
        }
    }

    /// # Safety
    /// As [`q4k_runs`].
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn q6k_runs(blocks: &[BlockQ6K], out: &mut [u16], stride: usize) {
        assert!(blocks.is_empty() || (blocks.len() * RUNS - 1) * stride + 32 <= out.len());
        let (low4, two) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(3));
        let offset = _mm512_set1_epi32(32);
        for (b, blk) in blocks.iter().enumerate() {
            let d = blk.d.to_f32();
            for h in 0..2 {
                let (ql, qh) = (blk.ql[64 * h..].as_ptr(), blk.qh[32 * h..].as_ptr());
                let sc = &blk.scales[8 * h..8 * h + 8];
                // SAFETY: 64 bytes in `ql[64 h..]`, 32 in `qh[32 h..]`.
                let (a, c, high) = unsafe {
                    (
                        [bytes_u32(ql), bytes_u32(ql.add(16))],
                        [bytes_u32(ql.add(32)), bytes_u32(ql.add(48))],
                        [bytes_u32(qh), bytes_u32(qh.add(16))],
                    )
                };
                // Run `run`'s values `l` (half 0) and `l + 16` (half 1): the low four bits
                // from `ql` (run 0 and 2 from its first 32 bytes, 1 and 3 from the next 32, the
                // low nibbles then the high ones), two bits from `qh` (shifted by `2 run`).
                for run in 0..4 {
                    let mut values = [_mm512_setzero_ps(); 2];
                    for (half, value) in values.iter_mut().enumerate() {
                        let bytes = if run % 2 == 0 { a[half] } else { c[half] };
                        let low = if run < 2 {
                            _mm512_and_si512(bytes, low4)
                        } else {
                            _mm512_srli_epi32::<4>(bytes)
                        };
                        let two_bits = match run {
                            0 => high[half],
                            1 => _mm512_srli_epi32::<2>(high[half]),
                            2 => _mm512_srli_epi32::<4>(high[half]),
                            _ => _mm512_srli_epi32::<6>(high[half]),
                        };
                        let two_bits = _mm512_slli_epi32::<4>(_mm512_and_si512(two_bits, two));
                        let q = _mm512_sub_epi32(_mm512_or_si512(low, two_bits), offset);
                        let scale = _mm512_set1_ps(d * sc[half + 2 * run] as f32);
                        *value = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(q));
                    }
                    let [lo, hi] = values;
                    let at = (b * RUNS + 4 * h + run) * stride;
                    // SAFETY: within `out` (asserted above).
                    unsafe { store_run(out.as_mut_ptr().add(at), lo, hi) };
                }
            }
        }
    }
}

impl KBlock for BlockQ4K {
    const SUMS: usize = 8;
    const NIBBLE_ORDER: bool = true;

    fn portable<const R: usize>(x: Row, rows: [&[Self]; R]) -> [f32; R] {
        rows.map(|row| {
            let mut sum = 0f32;
            for (b, blk) in row.iter().enumerate() {
                let (sc, mn) = scales_and_mins(&blk.scales);
                let y = &x.qs[b * QK_K..(b + 1) * QK_K];
                let mut dot = 0i32;
                let mut min = 0i32;
                for s in 0..8 {
                    let ys = &y[nibble_position(s) * 32..nibble_position(s) * 32 + 32];
                    let stored = &blk.qs[(s / 2) * 32..(s / 2) * 32 + 32];
                    let part: i32 = stored
                        .iter()
                        .zip(ys)
                        .map(|(&q, &y)| {
                            (if s % 2 == 0 { q & 0xF } else { q >> 4 }) as i32 * y as i32
                        })
                        .sum();
                    dot += sc[s] as i32 * part;
                    min += mn[s] as i32 * x.sums[b * 8 + s] as i32;
                }
                sum += x.ds[b] * (blk.d.to_f32() * dot as f32 - blk.dmin.to_f32() * min as f32);
            }
            sum
        })
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni<const R: usize>(x: Row, rows: [&[Self]; R]) -> [f32; R] {
        // SAFETY: passed on from the caller.
        unsafe { vnni::q4k::<R>(x, rows) }
    }
}

impl KBlock for BlockQ6K {
    const SUMS: usize = 16;
    const NIBBLE_ORDER: bool = false;

    fn portable<const R: usize>(x: Row, rows: [&[Self]; R]) -> [f32; R] {
        rows.map(|row| {
            let mut sum = 0f32;
            for (b, blk) in row.iter().enumerate() {
                let y = &x.qs[b * QK_K..(b + 1) * QK_K];
                let mut dot = 0i32;
                for (v, &y) in y.iter().enumerate() {
                    // ggml's `dequantize_row_q6_K`, value by value: halves of 128, each
                    // four runs of 32 from 64 bytes of `ql` and 32 of `qh`.
                    let (half, at) = (v / 128, v % 128);
                    let (run, l) = (at / 32, at % 32);
                    let ql = blk.ql[half * 64 + (run % 2) * 32 + l];
                    let low = if run < 2 { ql & 0xF } else { ql >> 4 };
                    let high = (blk.qh[half * 32 + l] >> (2 * run)) & 3;
                    let q = (low | (high << 4)) as i32 - 32;
                    dot += blk.scales[v / 16] as i32 * q * y as i32;
                }
                sum += x.ds[b] * blk.d.to_f32() * dot as f32;
            }
            sum
        })
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni<const R: usize>(x: Row, rows: [&[Self]; R]) -> [f32; R] {
        // SAFETY: passed on from the caller.
        unsafe { vnni::q6k::<R>(x, rows) }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vnni {
    use std::arch::x86_64::*;

    use super::*;
    use crate::model::block_dots::widen;

    pub(in crate::model::block_dots) fn available() -> bool {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512vnni")
            && has!("f16c")
            && has!("fma")
    }

    /// One input block's 256 values as four 64-byte vectors.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn input_block(y: &[i8]) -> [__m512i; 4] {
        assert!(y.len() == QK_K);
        // SAFETY: four 64-byte loads within the 256 values (asserted).
        unsafe {
            let y = y.as_ptr();
            [
                _mm512_loadu_si512(y.cast()),
                _mm512_loadu_si512(y.add(64).cast()),
                _mm512_loadu_si512(y.add(128).cast()),
                _mm512_loadu_si512(y.add(192).cast()),
            ]
        }
    }

    /// Sixteen-bit lane indices: `[a; 16]` then `[b; 16]`, or eight lanes each of `four`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn spread(lanes: [u16; 32]) -> __m512i {
        // SAFETY: 64 bytes read from a 64-byte array.
        unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
    }

    fn pairs(a: u16, b: u16) -> [u16; 32] {
        std::array::from_fn(|i| if i < 16 { a } else { b })
    }

    fn eights(first: u16) -> [u16; 32] {
        std::array::from_fn(|i| first + (i / 8) as u16)
    }

    /// Q4_K's 8 scales then 8 minimums as bytes, unpacked from their 12 bytes four at a time
    /// (ggml's and candle's `utmp` shuffle; the same values as [`scales_and_mins`]).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn unpacked_scales(packed: &[u8; 12]) -> __m128i {
        const KMASK1: u32 = 0x3f3f3f3f;
        const KMASK2: u32 = 0x0f0f0f0f;
        const KMASK3: u32 = 0x03030303;
        let word =
            |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
        let (u0, u1, u2) = (word(0), word(4), word(8));
        let mins_high = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
        let mins_low = u1 & KMASK1;
        let scales_high = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
        let scales_low = u0 & KMASK1;
        _mm_set_epi32(
            mins_high as i32,
            mins_low as i32,
            scales_high as i32,
            scales_low as i32,
        )
    }

    #[inline]
    #[target_feature(enable = "sse3")]
    fn sum4(v: __m128) -> f32 {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Q4_K: per block and stored row, the two 64-byte runs of nibbles against the input's
    /// four 64-byte loads (sub-blocks `[0|2]`, `[1|3]`, `[4|6]`, `[5|7]` in [`nibble_position`]
    /// order), each `maddubs` pair sum multiplied by its sub-block's scale in `vpdpwssd`;
    /// the minimums against the input's sums of 32 separately.
    ///
    /// # Safety
    /// The CPU must have what [`available`] checks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma,sse3")]
    pub(super) unsafe fn q4k<const R: usize>(x: Row, rows: [&[BlockQ4K]; R]) -> [f32; R] {
        let blocks = x.ds.len();
        assert!(x.qs.len() == blocks * QK_K && x.sums.len() == blocks * 8);
        assert!(rows.iter().all(|r| r.len() == blocks));
        let nibble = _mm512_set1_epi8(0x0F);
        let index = [
            spread(pairs(0, 2)),
            spread(pairs(1, 3)),
            spread(pairs(4, 6)),
            spread(pairs(5, 7)),
        ];
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_min = [_mm_setzero_ps(); R];
        for b in 0..blocks {
            // SAFETY: in bounds by the asserts above: QK_K input bytes and 8 sums per block,
            // `blocks` blocks in every row.
            unsafe {
                let ys = input_block(&x.qs[b * QK_K..(b + 1) * QK_K]);
                let sums = _mm_loadu_si128(x.sums.as_ptr().add(b * 8).cast());
                let dy = *x.ds.get_unchecked(b);
                for r in 0..R {
                    let blk = rows[r].get_unchecked(b);
                    let sc_mn = _mm256_cvtepu8_epi16(unpacked_scales(&blk.scales));
                    let scales = _mm512_castsi256_si512(sc_mn);
                    let mins = _mm256_extracti128_si256(sc_mn, 1);
                    let min = _mm_cvtepi32_ps(_mm_madd_epi16(mins, sums));
                    acc_min[r] = _mm_fmadd_ps(_mm_set1_ps(widen(blk.dmin) * dy), min, acc_min[r]);
                    let mut dot = _mm512_setzero_si512();
                    for half in 0..2 {
                        let q = _mm512_loadu_si512(blk.qs.as_ptr().add(64 * half).cast());
                        let low = _mm512_and_si512(q, nibble);
                        let high = _mm512_and_si512(_mm512_srli_epi16(q, 4), nibble);
                        dot = _mm512_dpwssd_epi32(
                            dot,
                            _mm512_maddubs_epi16(low, ys[2 * half]),
                            _mm512_permutexvar_epi16(index[2 * half], scales),
                        );
                        dot = _mm512_dpwssd_epi32(
                            dot,
                            _mm512_maddubs_epi16(high, ys[2 * half + 1]),
                            _mm512_permutexvar_epi16(index[2 * half + 1], scales),
                        );
                    }
                    acc[r] = _mm512_fmadd_ps(
                        _mm512_set1_ps(widen(blk.d) * dy),
                        _mm512_cvtepi32_ps(dot),
                        acc[r],
                    );
                }
            }
        }
        let mut sums = [0f32; R];
        for r in 0..R {
            sums[r] = _mm512_reduce_add_ps(acc[r]) - sum4(acc_min[r]);
        }
        sums
    }

    /// Q6_K: per block, stored row and half of 128 values, the low four bits of 64 bytes of
    /// `ql` joined with two bits each of the half's 32 bytes of `qh` (shifted into place per
    /// 32-byte lane) into two runs of 64 six-bit values, against the input's two 64-byte
    /// loads in natural order; each `maddubs` pair sum multiplied by its scale (one per 16
    /// values) in `vpdpwssd`. The values' offset of 32 is taken off through the input's
    /// sums of 16.
    ///
    /// # Safety
    /// The CPU must have what [`available`] checks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma,sse3")]
    pub(super) unsafe fn q6k<const R: usize>(x: Row, rows: [&[BlockQ6K]; R]) -> [f32; R] {
        let blocks = x.ds.len();
        assert!(x.qs.len() == blocks * QK_K && x.sums.len() == blocks * 16);
        assert!(rows.iter().all(|r| r.len() == blocks));
        let nibble = _mm512_set1_epi8(0x0F);
        let top = _mm512_set1_epi8(0x30);
        let index = [
            spread(eights(0)),
            spread(eights(4)),
            spread(eights(8)),
            spread(eights(12)),
        ];
        // Shifts bringing `qh`'s bit pairs 0, 1 (first 32 bytes) and 2, 3 (last 32) to bits 4
        // and 5 for the low nibbles; 4, 5 and 6, 7 for the high ones.
        let up = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        let down = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_offset = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            // SAFETY: in bounds by the asserts above.
            unsafe {
                let ys = input_block(&x.qs[b * QK_K..(b + 1) * QK_K]);
                let sums = _mm256_loadu_si256(x.sums.as_ptr().add(b * 16).cast());
                let dy = *x.ds.get_unchecked(b);
                for r in 0..R {
                    let blk = rows[r].get_unchecked(b);
                    let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.scales.as_ptr().cast()));
                    let scales = _mm512_castsi256_si512(sc16);
                    let offset = _mm256_cvtepi32_ps(_mm256_madd_epi16(sc16, sums));
                    let d = widen(blk.d) * dy;
                    acc_offset[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(32.0 * d), offset, acc_offset[r]);
                    let mut dot = _mm512_setzero_si512();
                    for half in 0..2 {
                        let ql = _mm512_loadu_si512(blk.ql.as_ptr().add(64 * half).cast());
                        let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                            blk.qh.as_ptr().add(32 * half).cast(),
                        ));
                        let low = _mm512_or_si512(
                            _mm512_and_si512(ql, nibble),
                            _mm512_and_si512(_mm512_sllv_epi16(qh, up), top),
                        );
                        let high = _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16(ql, 4), nibble),
                            _mm512_and_si512(_mm512_srlv_epi16(qh, down), top),
                        );
                        dot = _mm512_dpwssd_epi32(
                            dot,
                            _mm512_maddubs_epi16(low, ys[2 * half]),
                            _mm512_permutexvar_epi16(index[2 * half], scales),
                        );
                        dot = _mm512_dpwssd_epi32(
                            dot,
                            _mm512_maddubs_epi16(high, ys[2 * half + 1]),
                            _mm512_permutexvar_epi16(index[2 * half + 1], scales),
                        );
                    }
                    acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(dot), acc[r]);
                }
            }
        }
        let mut sums = [0f32; R];
        for r in 0..R {
            let o = acc_offset[r];
            let o = _mm_add_ps(_mm256_castps256_ps128(o), _mm256_extractf128_ps(o, 1));
            sums[r] = _mm512_reduce_add_ps(acc[r]) - sum4(o);
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::*;
    use crate::model::block_dots::{cast, quantized_matrix};
    use crate::testing::hashed_values as values;

    /// The portable kernels (the vector kernels' definition) against candle's dequantization
    /// of the same blocks, on every CPU: for each stored row, `Σ x̂ · ŵ` where `x̂` is the input
    /// as the kernels quantized it (read back from [`Input`]) and `ŵ` candle's dequantized
    /// row, to float rounding; and the vector kernels where the CPU has them, to float
    /// summation order, for one and four rows at a time.
    fn check<B: KBlock>(dtype: GgmlDType) {
        let (n, k, m) = (9, 768, 3);
        let (q, dense) = quantized_matrix(n, k, 17, dtype);
        let bytes = q.data().unwrap();
        let blocks: &[B] = cast(&bytes).unwrap();
        let x = values(m * k, 19);
        let input = Input::quantize::<B>(&x, k, m, k);
        let per_row = k / QK_K;
        for i in 0..m {
            let row = input.row(i);
            // The input as quantized, in natural order.
            let natural: Vec<f64> = (0..k)
                .map(|c| {
                    let (b, v) = (c / QK_K, c % QK_K);
                    let s = v / 32;
                    let at = if B::NIBBLE_ORDER {
                        nibble_position(s)
                    } else {
                        s
                    };
                    row.qs[b * QK_K + at * 32 + v % 32] as f64 * row.ds[b] as f64
                })
                .collect();
            for j in 0..n {
                let stored = &blocks[j * per_row..(j + 1) * per_row];
                let exact: f64 = (0..k).map(|c| natural[c] * dense[j * k + c] as f64).sum();
                let size: f64 = (0..k)
                    .map(|c| (natural[c] * dense[j * k + c] as f64).abs())
                    .sum();
                let slow = B::portable::<1>(row, [stored])[0];
                assert!(
                    (slow as f64 - exact).abs() <= 1e-5 * (1.0 + size),
                    "{dtype:?} ({i}, {j}): portable {slow} vs {exact}"
                );
                #[cfg(target_arch = "x86_64")]
                if available() {
                    // SAFETY: the CPU has the kernels' features (checked just above).
                    let one = unsafe { B::vnni::<1>(row, [stored]) }[0];
                    assert!(
                        (one - slow).abs() as f64 <= 1e-5 * (1.0 + size),
                        "{dtype:?} ({i}, {j}): vnni {one} vs portable {slow}"
                    );
                    if j + 4 <= n {
                        let four: [&[B]; 4] = std::array::from_fn(|r| {
                            &blocks[(j + r) * per_row..(j + r + 1) * per_row]
                        });
                        // SAFETY: as above.
                        let fours = unsafe { B::vnni::<4>(row, four) };
                        assert_eq!(fours[0].to_bits(), one.to_bits(), "{dtype:?} ({i}, {j})");
                    }
                }
            }
        }
    }

    #[test]
    fn q4k_dot_products_are_the_dequantized_ones() {
        check::<BlockQ4K>(GgmlDType::Q4K);
    }

    #[test]
    fn q6k_dot_products_are_the_dequantized_ones() {
        check::<BlockQ6K>(GgmlDType::Q6K);
    }

    /// The input quantization is candle's `BlockQ8K::from_float`, value for value.
    #[test]
    fn inputs_are_quantized_as_candle_quantizes_them() {
        use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
        let k = 512;
        let mut x = values(k, 23);
        x[300] = 0.0;
        x[256..512].iter_mut().for_each(|v| *v *= 1e-3);
        let input = Input::quantize::<BlockQ6K>(&x, k, 1, k);
        let mut theirs = vec![BlockQ8K::zeros(); k / QK_K];
        BlockQ8K::from_float(&x, &mut theirs);
        let mut back = vec![0f32; k];
        BlockQ8K::to_float(&theirs, &mut back);
        for (c, theirs) in back.iter().enumerate() {
            let ours = input.qs[c] as f32 * input.ds[c / QK_K];
            assert_eq!(ours.to_bits(), theirs.to_bits(), "value {c}");
        }
    }
}
