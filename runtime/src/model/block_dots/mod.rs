//! `x · Wᵀ` for a few input rows — a decode step — over a matrix of Q8_0 blocks as stored,
//! as dot products along `W`'s stored rows (the quantized counterpart of [`super::row_dots`]);
//! Q4_K and Q6_K blocks likewise on AVX-512 VNNI CPUs ([`k_quants`]).
//!
//! A decode step reads every weight once per token, so its speed is the speed at which the
//! blocks stream from memory. The input rows are quantized once per product as llama.cpp and
//! candle quantize them (Q8_0 blocks of 32, scales rounded to f16), then eight stored rows are
//! multiplied at a time, each input block loaded once for the eight, and the stored rows are
//! split across rayon's threads in tasks of [`ROWS_PER_TASK`]. candle's `k_quants::matmul`
//! computes the same integer sums one stored row at a time: measured in one process per
//! kernel on LLaVA-7B's four matrix shapes, 2 threads, 10–12 GB/s there and 20–22 GB/s here
//! (its AVX2 Q4_K kernel already streams 20–22 GB/s there, so on AVX2 CPUs Q4_K stays with
//! candle).
//!
//! Every output element is one row's dot product in a fixed order, whatever the number of
//! input rows and whichever thread computes it: a batched decode step of up to [`MAX_ROWS`]
//! chats gives each the bits it gets alone.

use half::f16;

mod k_quants;

pub(crate) use k_quants::{BlockQ4K, BlockQ6K};

/// The most input rows computed this way; more go to the block kernels' prefill paths.
pub(crate) const MAX_ROWS: usize = 8;

/// Stored rows per task: 64 rows of LLaVA-7B's 4 096 columns are 278 KiB of blocks, and a
/// 4 096-row matrix still makes 64 tasks.
const ROWS_PER_TASK: usize = 64;

/// Values per Q8_0 block.
const Q8_0_BLOCK: usize = 32;

/// ggml's `block_q8_0`: 32 signed 8-bit values and their scale.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ8_0 {
    d: f16,
    qs: [i8; Q8_0_BLOCK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// A block type's values, for the AMX prefill ([`crate::model::amx`]): in f32 as ggml's
/// `dequantize_row_*` computes them (plain loops, the reference the tests hold the rest to),
/// and rounded to bf16 straight into the tiles' layout.
pub(crate) trait Dequantize: Copy + Sync {
    /// Values per block.
    const VALUES: usize;
    /// `blocks`' values, `VALUES` per block, into `out`.
    #[cfg(test)]
    fn dequantize(blocks: &[Self], out: &mut [f32]);

    /// `blocks`' values rounded to bf16 ([`Self::dequantize`]'s values, ties to even), run `s`
    /// of 32 values into `out[s * stride..][..32]` (a last partial run padded with zeros): a
    /// weight row straight into the AMX tiles' layout, in registers, without the f32 row in
    /// between (a prefill dequantizes every weight of the model once per product).
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX-512 BF16 must be available; `out` must hold every run.
    #[cfg(target_arch = "x86_64")]
    unsafe fn bf16_runs(blocks: &[Self], out: &mut [u16], stride: usize);
}

impl Dequantize for BlockQ8_0 {
    const VALUES: usize = Q8_0_BLOCK;

    #[cfg(test)]
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (blk, out) in blocks.iter().zip(out.chunks_exact_mut(Q8_0_BLOCK)) {
            let d = blk.d.to_f32();
            for (y, q) in out.iter_mut().zip(&blk.qs) {
                *y = *q as f32 * d;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn bf16_runs(blocks: &[Self], out: &mut [u16], stride: usize) {
        // SAFETY: passed on (AVX-512, room for every run).
        unsafe { bf16::q8_0_runs(blocks, out, stride) }
    }
}

/// The AVX-512 halves of [`Dequantize::bf16_runs`].
#[cfg(target_arch = "x86_64")]
pub(crate) mod bf16 {
    use super::{BlockQ8_0, Q8_0_BLOCK};
    use std::arch::x86_64::*;

    /// 32 values (`lo` then `hi`) rounded to bf16 into `out[..32]`, in one instruction
    /// (`VCVTNE2PS2BF16`: ties to even as `half` rounds, NaN kept, except that it flushes
    /// subnormal values to zero, which the values of f16-scaled blocks never are).
    ///
    /// # Safety
    /// `out` must hold 32 values.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) unsafe fn store_run(out: *mut u16, lo: __m512, hi: __m512) {
        let run = _mm512_cvtne2ps_pbh(hi, lo);
        // SAFETY: 64 bytes at `out` (the caller's promise); an unaligned store.
        unsafe {
            _mm512_storeu_si512(out as *mut _, std::mem::transmute::<__m512bh, __m512i>(run))
        };
    }

    /// Sixteen bytes from `at` widened to sixteen `i32` lanes, unsigned.
    ///
    /// # Safety
    /// 16 bytes readable at `at`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn bytes_u32(at: *const u8) -> __m512i {
        // SAFETY: the caller's promise.
        _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(at as *const __m128i) })
    }

    /// [`super::Dequantize::bf16_runs`] for Q8_0: one run per block, `q · d`.
    ///
    /// # Safety
    /// As the trait method's.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn q8_0_runs(blocks: &[BlockQ8_0], out: &mut [u16], stride: usize) {
        assert!(blocks.is_empty() || (blocks.len() - 1) * stride + Q8_0_BLOCK <= out.len());
        for (s, blk) in blocks.iter().enumerate() {
            let d = _mm512_set1_ps(blk.d.to_f32());
            let qs = blk.qs.as_ptr() as *const __m128i;
            // SAFETY: 32 bytes in `qs`; the run is within `out` (asserted).
            unsafe {
                let lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(qs));
                let hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(qs.add(1)));
                store_run(
                    out.as_mut_ptr().add(s * stride),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d),
                );
            }
        }
    }
}

/// A row-major `[n, k]` quantized matrix as stored: `k / 32` (Q8_0) or `k / 256` (K-quants)
/// blocks per row.
#[derive(Clone, Copy)]
pub(crate) enum Blocks<'a> {
    Q8_0(&'a [BlockQ8_0]),
    Q4K(&'a [k_quants::BlockQ4K]),
    Q6K(&'a [k_quants::BlockQ6K]),
}

impl<'a> Blocks<'a> {
    /// Reads `bytes` (a quantized tensor's storage, ggml's block layout) as blocks of `dtype`:
    /// `None` for a type this module does not multiply on this CPU (Q4_K and Q6_K need
    /// AVX-512 VNNI), or for bytes that are not a whole, aligned run of blocks.
    pub(crate) fn from_bytes(
        dtype: candle_core::quantized::GgmlDType,
        bytes: &'a [u8],
    ) -> Option<Self> {
        use candle_core::quantized::GgmlDType;
        match dtype {
            GgmlDType::Q8_0 => cast(bytes).map(Blocks::Q8_0),
            GgmlDType::Q4K if k_quants::available() => cast(bytes).map(Blocks::Q4K),
            GgmlDType::Q6K if k_quants::available() => cast(bytes).map(Blocks::Q6K),
            _ => None,
        }
    }
}

/// `bytes` (a quantized tensor's storage) as a slice of plain-old-data blocks, if aligned and a
/// whole number of them. `T` must be a `repr(C)` block of integers and f16s (ggml's layouts).
pub(super) fn cast<T>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
        || !bytes.len().is_multiple_of(size)
    {
        return None;
    }
    // SAFETY: aligned for `T` and a whole number of `T`s (checked above); `T` is a
    // `repr(C)` struct of integers and f16s, for which every bit pattern is a value.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// The input rows quantized for the products: 8-bit values, one scale per block.
struct Quantized {
    qs: Vec<i8>,
    ds: Vec<f32>,
}

impl Quantized {
    /// As candle's (and llama.cpp's) `quantize_row_q8_0`: scale `amax / 127` rounded to f16.
    fn q8_0(x: &[f32], x_rs: usize, m: usize, k: usize) -> Self {
        let mut qs = vec![0i8; m * k];
        let mut ds = Vec::with_capacity(m * k / Q8_0_BLOCK);
        for i in 0..m {
            let row = &x[i * x_rs..i * x_rs + k];
            for (xs, q) in row
                .chunks_exact(Q8_0_BLOCK)
                .zip(qs[i * k..(i + 1) * k].chunks_exact_mut(Q8_0_BLOCK))
            {
                let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (q, &v) in q.iter_mut().zip(xs) {
                    *q = (v * id).round() as i8;
                }
                ds.push(f16::from_f32(d).to_f32());
            }
        }
        Quantized { qs, ds }
    }
}

/// `y = x · Wᵀ`: `x` is `m ≤ MAX_ROWS` rows of `k` values, row `i` at `x[i * x_rs..]`;
/// `W` is `[n, k]` in blocks, `k` a multiple of the block size. Returns `y` as `[m, n]`
/// row-major.
pub(crate) fn product(x: &[f32], x_rs: usize, m: usize, w: Blocks, n: usize, k: usize) -> Vec<f32> {
    assert!(m <= MAX_ROWS, "{m} rows for a block-dot product");
    assert!(
        m == 0 || x.len() >= (m - 1) * x_rs + k,
        "input shorter than {m} rows of {k}"
    );
    let (block, blocks) = match w {
        Blocks::Q8_0(w) => (Q8_0_BLOCK, w.len()),
        Blocks::Q4K(w) => (k_quants::QK_K, w.len()),
        Blocks::Q6K(w) => (k_quants::QK_K, w.len()),
    };
    assert!(k.is_multiple_of(block), "{k} columns in blocks of {block}");
    assert_eq!(
        blocks,
        n * (k / block),
        "a [{n}, {k}] matrix of {blocks} blocks"
    );
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let w = match w {
        Blocks::Q8_0(w) => w,
        Blocks::Q4K(w) => return k_quants::product(x, x_rs, m, w, n, k),
        Blocks::Q6K(w) => return k_quants::product(x, x_rs, m, w, n, k),
    };
    let per_row = k / Q8_0_BLOCK;
    let q = Quantized::q8_0(x, x_rs, m, k);
    super::row_dots::by_stored_row_tasks(n, m, ROWS_PER_TASK, |first, rows, out| {
        let blocks = &w[first * per_row..(first + rows) * per_row];
        dots(&q, m, blocks, per_row, out);
    })
}

/// `out[j * m + i] = x_i · w_j` for the stored rows `w_j` of one task, eight at a time (each
/// read once from memory, then from cache for the other input rows; eight streams measured
/// 8–10 % faster than four on LLaVA-7B's shapes), then four, then one by one.
fn dots(q: &Quantized, m: usize, w: &[BlockQ8_0], per_row: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let fast = avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    let n = w.len() / per_row;
    let mut j = 0;
    while j < n {
        j += match n - j {
            8.. => rows_at::<8>(fast, q, m, w, per_row, j, out),
            4.. => rows_at::<4>(fast, q, m, w, per_row, j, out),
            _ => rows_at::<1>(fast, q, m, w, per_row, j, out),
        };
    }
}

/// The R stored rows from `j` against every input row; returns R.
fn rows_at<const R: usize>(
    fast: bool,
    q: &Quantized,
    m: usize,
    w: &[BlockQ8_0],
    per_row: usize,
    j: usize,
    out: &mut [f32],
) -> usize {
    let k = per_row * Q8_0_BLOCK;
    let rows: [&[BlockQ8_0]; R] =
        std::array::from_fn(|r| &w[(j + r) * per_row..(j + r + 1) * per_row]);
    for i in 0..m {
        let qs = &q.qs[i * k..(i + 1) * k];
        let ds = &q.ds[i * per_row..(i + 1) * per_row];
        for (r, sum) in group(fast, qs, ds, rows).into_iter().enumerate() {
            out[(j + r) * m + i] = sum;
        }
    }
    R
}

/// `x · w_r` for R stored rows, on the vector kernel where `fast`.
fn group<const R: usize>(fast: bool, qs: &[i8], ds: &[f32], rows: [&[BlockQ8_0]; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` only where the CPU has AVX2, FMA and F16C (`avx2::available`).
        return unsafe { avx2::q8_0::<R>(qs, ds, rows) };
    }
    let _ = fast;
    portable::q8_0::<R>(qs, ds, rows)
}

/// The same dot products on any CPU, in integers per block as the vector kernel.
mod portable {
    use super::*;

    pub(super) fn q8_0<const R: usize>(qs: &[i8], ds: &[f32], rows: [&[BlockQ8_0]; R]) -> [f32; R] {
        rows.map(|row| {
            let mut sum = 0f32;
            for (b, blk) in row.iter().enumerate() {
                let y = &qs[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
                let dot: i32 = blk
                    .qs
                    .iter()
                    .zip(y)
                    .map(|(&a, &b)| a as i32 * b as i32)
                    .sum();
                sum += dot as f32 * (blk.d.to_f32() * ds[b]);
            }
            sum
        })
    }
}

/// An f16 scale widened with F16C (`half`'s conversion is a call per value).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "f16c")]
fn widen(h: f16) -> f32 {
    use std::arch::x86_64::*;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::model::row_dots::avx2::lanes_sum;

    pub(super) fn available() -> bool {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && has!("f16c")
    }

    /// `Σ_b d_b · (x_b · y_b)` for R stored rows against one quantized input row: per block,
    /// the 32 products of signed bytes summed in 32-bit integers (`|x| · sign(y, x)` through
    /// `maddubs`, as ggml), converted once and scaled.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0<const R: usize>(
        qs: &[i8],
        ds: &[f32],
        rows: [&[BlockQ8_0]; R],
    ) -> [f32; R] {
        let blocks = ds.len();
        assert!(qs.len() == blocks * Q8_0_BLOCK && rows.iter().all(|r| r.len() == blocks));
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            // SAFETY: b < blocks, the length of every row and of `ds`; `qs` has 32 per block
            // (asserted above).
            unsafe {
                let y = _mm256_loadu_si256(qs.as_ptr().add(b * Q8_0_BLOCK).cast());
                let dy = *ds.get_unchecked(b);
                for (acc, row) in acc.iter_mut().zip(&rows) {
                    let blk = row.get_unchecked(b);
                    let x = _mm256_loadu_si256(blk.qs.as_ptr().cast());
                    let pairs =
                        _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
                    let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(widen(blk.d) * dy), dot, *acc);
                }
            }
        }
        let mut sums = [0f32; R];
        for (sum, acc) in sums.iter_mut().zip(acc) {
            *sum = lanes_sum(acc);
        }
        sums
    }
}

/// A seeded `[n, k]` matrix quantized to `dtype`, and its dequantized values.
#[cfg(test)]
fn quantized_matrix(
    n: usize,
    k: usize,
    seed: u32,
    dtype: candle_core::quantized::GgmlDType,
) -> (candle_core::quantized::QTensor, Vec<f32>) {
    use candle_core::{Device, Tensor};
    let values = crate::testing::hashed_values(n * k, seed);
    let w = Tensor::from_vec(values, (n, k), &Device::Cpu).unwrap();
    let q = candle_core::quantized::QTensor::quantize(&w, dtype).unwrap();
    let dense = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (q, dense)
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::k_quants::{
        self as candle_k, BlockQ4K as CandleQ4K, BlockQ6K as CandleQ6K, BlockQ8_0 as CandleQ8_0,
    };
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::testing::hashed_values as values;

    /// candle's block kernels on the same bytes: the products this module replaces.
    fn candle_product(
        dtype: GgmlDType,
        bytes: &[u8],
        x: &[f32],
        (m, k, n): (usize, usize, usize),
    ) -> Vec<f32> {
        fn blocks<T>(bytes: &[u8]) -> &[T] {
            // SAFETY: the bytes are a quantized tensor's storage, a `Vec` of candle's blocks
            // of `T` (the caller matches `T` to the tensor's type).
            unsafe {
                std::slice::from_raw_parts(
                    bytes.as_ptr().cast(),
                    bytes.len() / std::mem::size_of::<T>(),
                )
            }
        }
        let mut y = vec![0f32; m * n];
        let mkn = (m, k, n);
        match dtype {
            GgmlDType::Q8_0 => candle_k::matmul(mkn, x, blocks::<CandleQ8_0>(bytes), &mut y),
            GgmlDType::Q4K => candle_k::matmul(mkn, x, blocks::<CandleQ4K>(bytes), &mut y),
            GgmlDType::Q6K => candle_k::matmul(mkn, x, blocks::<CandleQ6K>(bytes), &mut y),
            other => panic!("{other:?}"),
        }
        .unwrap();
        y
    }

    /// The dequantizers give candle's (ggml's) values bit for bit.
    #[test]
    fn dequantized_values_are_candles() {
        fn check<B: Dequantize>(dtype: GgmlDType) {
            let (q, dense) = quantized_matrix(3, 1024, 5, dtype);
            let bytes = q.data().unwrap();
            let blocks = cast::<B>(&bytes).unwrap();
            let mut ours = vec![f32::NAN; blocks.len() * B::VALUES];
            B::dequantize(blocks, &mut ours);
            assert_eq!(ours.len(), dense.len());
            for (i, (a, b)) in ours.iter().zip(&dense).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?} value {i}: {a} vs {b}");
            }
        }
        check::<BlockQ8_0>(GgmlDType::Q8_0);
        check::<BlockQ4K>(GgmlDType::Q4K);
        check::<BlockQ6K>(GgmlDType::Q6K);
    }

    /// The AVX-512 bf16 runs are the f32 values rounded to bf16 (as `half` rounds, ties to
    /// even) bit for bit, each run at its place and nothing written between runs.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn bf16_runs_are_the_rounded_values() {
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16");
        if !avx512 {
            eprintln!("no AVX-512 BF16 here: the bf16 runs are not used");
            return;
        }
        fn check<B: Dequantize>(dtype: GgmlDType) {
            let (q, _) = quantized_matrix(3, 1024, 9, dtype);
            let bytes = q.data().unwrap();
            let blocks = cast::<B>(&bytes).unwrap();
            let mut dense = vec![0f32; blocks.len() * B::VALUES];
            B::dequantize(blocks, &mut dense);
            let stride = 48;
            let runs = dense.len() / 32;
            let mut out = vec![0xdeadu16; runs * stride];
            // SAFETY: AVX-512F/BW/BF16 checked above; `out` holds every run.
            unsafe { B::bf16_runs(blocks, &mut out, stride) };
            for (s, run) in dense.chunks_exact(32).enumerate() {
                let at = &out[s * stride..(s + 1) * stride];
                for (i, v) in run.iter().enumerate() {
                    let want = half::bf16::from_f32(*v).to_bits();
                    assert_eq!(at[i], want, "{dtype:?} run {s} value {i}: {v}");
                }
                assert!(
                    at[32..].iter().all(|&w| w == 0xdead),
                    "{dtype:?} run {s}: gap written"
                );
            }
        }
        check::<BlockQ8_0>(GgmlDType::Q8_0);
        check::<BlockQ4K>(GgmlDType::Q4K);
        check::<BlockQ6K>(GgmlDType::Q6K);
    }

    /// With stored-row counts that leave partial groups of eight and four and a partial task, and 1 to
    /// 8 input rows: every product equals candle's block kernels'
    /// (same quantized input, same integer sums) within float summation order, lies within
    /// the input's 8-bit rounding of `x · dequantize(W)ᵀ` in f64, and every row equals bit for
    /// bit the same row computed alone. Q4_K and Q6_K where this CPU has their kernels.
    #[test]
    fn few_row_products_match_the_block_kernels_and_do_not_depend_on_the_batch() {
        let shapes = |dtype| match dtype {
            GgmlDType::Q8_0 => [(70, 512), (133, 96), (3, 1024)],
            _ => [(70, 512), (133, 256), (3, 1280)],
        };
        let dtypes = [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K];
        for (dtype, (n, k)) in dtypes
            .into_iter()
            .filter(|&d| d == GgmlDType::Q8_0 || k_quants::available())
            .flat_map(|d| shapes(d).map(|s| (d, s)))
        {
            let (q, dense) = quantized_matrix(n, k, 7, dtype);
            let bytes = q.data().unwrap();
            let blocks = Blocks::from_bytes(dtype, &bytes).unwrap();
            let x_rs = k + 3;
            let x = values(MAX_ROWS * x_rs, 11);
            for m in 1..=MAX_ROWS {
                let y = product(&x, x_rs, m, blocks, n, k);
                assert_eq!(y.len(), m * n);
                let packed: Vec<f32> = (0..m)
                    .flat_map(|i| x[i * x_rs..i * x_rs + k].to_vec())
                    .collect();
                let theirs = candle_product(dtype, &bytes, &packed, (m, k, n));
                for i in 0..m {
                    let alone = product(&x[i * x_rs..], x_rs, 1, blocks, n, k);
                    for j in 0..n {
                        let got = y[i * n + j];
                        let exact: f64 = (0..k)
                            .map(|c| x[i * x_rs + c] as f64 * dense[j * k + c] as f64)
                            .sum();
                        let size: f64 = (0..k)
                            .map(|c| (x[i * x_rs + c] as f64 * dense[j * k + c] as f64).abs())
                            .sum();
                        let at = format!("{dtype:?} [{n}, {k}] m {m} ({i}, {j})");
                        assert!(
                            (got - theirs[i * n + j]).abs() <= 1e-5 * (1.0 + size as f32),
                            "{at}: {got} vs candle {}",
                            theirs[i * n + j]
                        );
                        assert!(
                            (got as f64 - exact).abs() <= 1e-2 * size,
                            "{at}: {got} vs {exact}"
                        );
                        assert_eq!(
                            got.to_bits(),
                            alone[j].to_bits(),
                            "{at}: alone {}",
                            alone[j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_portable_kernel_computes_the_same_products() {
        let (n, k, m) = (9, 512, 3);
        let w = Tensor::from_vec(values(n * k, 3), (n, k), &Device::Cpu).unwrap();
        let x = values(m * k, 5);
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let bytes = q.data().unwrap();
        let blocks = Blocks::from_bytes(GgmlDType::Q8_0, &bytes).unwrap();
        let fast = product(&x, k, m, blocks, n, k);
        for i in 0..m {
            let q = Quantized::q8_0(&x[i * k..], k, 1, k);
            for j in 0..n {
                let Blocks::Q8_0(blocks) = blocks else {
                    unreachable!()
                };
                let slow = portable::q8_0::<1>(&q.qs, &q.ds, [&blocks[j * 16..(j + 1) * 16]])[0];
                let got = fast[i * n + j];
                assert!(
                    (slow - got).abs() <= 1e-5 * (1.0 + got.abs()),
                    "({i}, {j}): {slow} vs {got}"
                );
            }
        }
    }

    #[test]
    fn bytes_that_are_not_whole_aligned_blocks_are_refused() {
        // Backed by u16s, so aligned for the blocks' f16 scales.
        let words = vec![0u16; 144];
        // SAFETY: the bytes of a live Vec<u16>.
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), 288) };
        assert!(Blocks::from_bytes(GgmlDType::Q8_0, &bytes[..34 * 4]).is_some());
        assert!(Blocks::from_bytes(GgmlDType::Q8_0, &bytes[..34 * 4 + 1]).is_none());
        assert!(Blocks::from_bytes(GgmlDType::Q8_0, &bytes[1..34 * 4 + 1]).is_none());
        assert!(Blocks::from_bytes(GgmlDType::Q4_0, bytes).is_none());
        assert!(Blocks::from_bytes(GgmlDType::F16, &bytes[..34 * 4]).is_none());
    }
}
