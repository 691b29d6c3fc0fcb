//! `x · Wᵀ` on Intel AMX tiles in bf16, for prefill-sized products over quantized weights.
//!
//! Why: on a CPU with AMX (Sapphire Rapids and later) transformers' bf16 prefill runs its
//! matrix products on the tile units through oneDNN, several times faster than any f32 or
//! int8-dot-product kernel on the same cores; candle has no AMX kernels. The product is
//! computed transposed, `W · xᵀ`: a quantized frozen matrix is dequantized a row at a time and
//! rounded to bf16 into tiles of 16 rows × 32 values (the tile instruction's first operand
//! takes rows as they lie), the input is rounded to bf16 once per call into the second
//! operand's layout (pairs of consecutive `k` interleaved, "VNNI" order), `TDPBF16PS`
//! accumulates in f32, and the result tiles are written into `y` transposed. Only prefills
//! and image encoding take this path; decoding (a few rows) stays on the block kernels, which
//! read the quantized bytes directly.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are written as inline assembly
//! (stable `asm!`); Linux hands out the tile state only after `arch_prctl(ARCH_REQ_XCOMP_PERM)`,
//! asked once per process. [`available`] is false on other CPUs, other systems, or after
//! [`disable_amx_tiles`] (which the CLI calls when `CONCEPTS_AMX=0` is set).
//!
//! Numerics: inputs and weights are rounded to bf16 (8 significant bits), products summed in
//! f32 — the same as a bf16 matrix product in PyTorch, and finer than the 8-bit input
//! quantization of the block kernels it replaces.

use rayon::prelude::*;

use crate::model::block_dots::Dequantize;
use crate::model::matrix::SyncPtr;

/// `k` values per tile step (a tile row is 64 bytes of bf16).
const STEP: usize = 32;
/// Rows and columns of one tile (of the weight, of the input, of the result).
const TILE: usize = 16;
/// Weight rows (output features) dequantized and multiplied per task.
const NC: usize = 256;
/// `k` values per block of the product. Tile loads run at the tile unit's full rate from L2
/// but at a third of it once the data spill out of L2 (2 MB a core here; measured with a
/// 2 × 2 tile loop: 1.2–1.3 T products/s streaming 512 KB, 0.4–0.5 T streaming 2 MB), so a
/// block's weight tiles (256 × 256 bf16, 128 KB), input tiles (a 638-row prompt: 330 KB) and
/// accumulators (650 KB) stay within L2 together.
const KC: usize = 256;

/// Set by [`disable_amx_tiles`].
static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keep prefill-sized products of quantized layers off the AMX tiles, on the kernels used
/// where a CPU has none (to compare the two on one machine; `concepts` and the `real_scale`
/// benchmark call it when `CONCEPTS_AMX=0` is set). Products already running are not affected.
///
/// ```
/// concepts_runtime::model::disable_amx_tiles();
/// ```
pub fn disable_amx_tiles() {
    DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the bf16 tile kernels can run here (the hardware and the system checked once).
pub(crate) fn available() -> bool {
    static HARDWARE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    *HARDWARE.get_or_init(|| {
        let ok = imp::request();
        if ok {
            tracing::debug!("prefill products on AMX bf16 tiles");
        }
        ok
    })
}

/// Round to the nearest bf16, ties to even (NaN stays NaN).
#[cfg(test)]
fn bf16_bits(x: f32) -> u16 {
    (rounded(x) >> 16) as u16
}

/// `x`'s bits rounded to bf16 in the upper half (the lower half is garbage), branch-free so
/// that loops over it vectorise.
#[inline(always)]
fn rounded(x: f32) -> u32 {
    let b = x.to_bits();
    let nearest = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    if x.is_nan() {
        b | 0x0040_0000
    } else {
        nearest
    }
}

/// Pads of a product `[m, k] · [k, n]` to whole tiles: `m` and `n` to 32 (two tiles in each
/// direction per kernel call), `k` to [`STEP`].
#[derive(Debug, Clone, Copy)]
struct Padded {
    m: usize,
    k: usize,
    n: usize,
}

impl Padded {
    fn new(m: usize, k: usize, n: usize) -> Self {
        let up = |v: usize, to: usize| v.div_ceil(to) * to;
        Self {
            m: up(m, 2 * TILE),
            k: up(k, STEP),
            n: up(n, 2 * TILE),
        }
    }

    /// Steps of [`STEP`] along `k`.
    fn steps(&self) -> usize {
        self.k / STEP
    }

    /// bf16 values from one group of 16 rows to the next in the tile-major layouts (the
    /// packed input, a task's weight tiles): the group's steps of one 1 KB tile each. (A tile
    /// of padding per group, so that groups do not lie a power of two apart at 4 096 columns,
    /// measured neither faster nor slower on LLaVA-7B's products.)
    fn group_len(&self) -> usize {
        self.steps() * TILE * STEP
    }
}

/// Plain numbers that any bit pattern is a value of (what [`Lines`] may be viewed as).
trait Plain: Copy {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for f32 {}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A zeroed buffer that starts on a cache line. Tile loads and stores of rows that straddle
/// lines run at a third of the speed (measured here: 16.8 against 4.9 ns per step of a 2 × 2
/// tile block), and the allocator's large blocks start 16 bytes past a page.
#[derive(Default)]
struct Lines(Vec<Line>);

impl Lines {
    fn zeroed<T: Plain>(len: usize) -> Self {
        Self(vec![Line([0; 64]); (len * size_of::<T>()).div_ceil(64)])
    }

    /// Room for `len` values, reallocated (zeroed) only when it is too small.
    fn at_least<T: Plain>(&mut self, len: usize) {
        if self.0.len() * 64 < len * size_of::<T>() {
            *self = Self::zeroed::<T>(len);
        }
    }

    fn view<T: Plain>(&self, len: usize) -> &[T] {
        assert!(len * size_of::<T>() <= self.0.len() * 64);
        // SAFETY: in bounds (asserted), aligned (64 ≥ align of T), any bits are a `T`.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const T, len) }
    }

    fn view_mut<T: Plain>(&mut self, len: usize) -> &mut [T] {
        assert!(len * size_of::<T>() <= self.0.len() * 64);
        // SAFETY: as in `view`, and borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut T, len) }
    }
}

/// A row's values as bf16 pairs, `words[p]` holding `row[2p]` low and `row[2p + 1]` high
/// (zeros past the row's end).
fn pair_words(row: &[f32], words: &mut [u32]) {
    let (pairs, rest) = row.as_chunks::<2>();
    for (w, pair) in words.iter_mut().zip(pairs) {
        *w = rounded(pair[0]) >> 16 | rounded(pair[1]) & 0xffff_0000;
    }
    words[pairs.len()..].fill(0);
    if let [last] = rest {
        words[pairs.len()] = rounded(*last) >> 16;
    }
}

/// The input as the tile instruction's second operand: per tile of 16 rows, per step of 32
/// `k` values, 16 rows of `k`-pairs × 16 input rows — word `[p][i]` of tile `t` holds
/// `x[16t + i][2p]` low and `x[16t + i][2p + 1]` high, tiles [`Padded::group_len`] apart.
/// Zero-padded to `pad`. `lines` is reused (every word a product reads is written here).
fn pack_input<'a>(x: &[f32], m: usize, k: usize, pad: Padded, lines: &'a mut Lines) -> &'a [u32] {
    let (pairs, words) = (pad.k / 2, pad.group_len() / 2);
    lines.at_least::<u32>(pad.m / TILE * words);
    lines
        .view_mut::<u32>(pad.m / TILE * words)
        .par_chunks_mut(words)
        .enumerate()
        .for_each(|(t, group)| {
            let tile = &mut group[..TILE * pairs];
            let rows = &x[(t * TILE).min(m) * k..((t + 1) * TILE).min(m) * k];
            if available() {
                // SAFETY: AMX, and with it AVX-512 (`available` checks both).
                unsafe { imp::pack_tile(rows, k, tile) }
            } else {
                pack_tile(rows, k, tile)
            }
        });
    lines.view::<u32>(pad.m / TILE * words)
}

thread_local! {
    /// The packed input of the calling thread's last product, kept for the next: a fresh
    /// buffer per product (up to 14 MB in a 7B prefill) cost its page faults every time.
    static PACKED: std::cell::RefCell<Lines> = std::cell::RefCell::default();
}

/// One tile of [`pack_input`]: up to 16 rows of `k` values into `tile` (zeroed). The rows'
/// pairs as words first, then per step the 16 × 16 block of words transposed into 1 KB of
/// the tile: reads of one line per row, writes of whole lines.
#[inline(always)]
fn pack_tile(rows: &[f32], k: usize, tile: &mut [u32]) {
    let pairs = tile.len() / TILE;
    let mut words = vec![0u32; TILE * pairs];
    for (words, row) in words.chunks_exact_mut(pairs).zip(rows.chunks_exact(k)) {
        pair_words(row, words);
    }
    for (s, out) in tile.chunks_exact_mut(TILE * TILE).enumerate() {
        for (p, out) in out.chunks_exact_mut(TILE).enumerate() {
            for (i, out) in out.iter_mut().enumerate() {
                *out = words[i * pairs + s * TILE + p];
            }
        }
    }
}

/// `y = x · Wᵀ (+ bias)` with `x` `[m, k]` (f32, row-major) and `W` `[n, k]` stored as
/// `blocks` (row-major, `k / B::VALUES` blocks a row), the bias (`n` values) added as the
/// result is written. Panics where AMX is not [`available`].
///
/// The weight is the tile product's first operand (its rows as they lie, in bf16), the input
/// the second (packed once per call, [`pack_input`]): so what each weight value costs besides
/// its products is a dequantization and a rounding, both along contiguous rows. Each task
/// takes [`NC`] weight rows, accumulates the block `W · xᵀ` in tiles and writes it into `y`
/// transposed.
pub(crate) fn matmul_t<B: Dequantize>(
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    blocks: &[B],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "input of [{m}, {k}]");
    assert!(bias.is_none_or(|b| b.len() == n), "bias of {n} values");
    assert!(
        k.is_multiple_of(B::VALUES) && blocks.len() * B::VALUES == n * k,
        "{} blocks of {} for [{n}, {k}]",
        blocks.len(),
        B::VALUES
    );
    // Also what asks Linux for the tile state: without it the first tile instruction faults.
    assert!(
        available(),
        "AMX tile products called where AMX is not available"
    );
    let pad = Padded::new(m, k, n);
    PACKED.with(|packed| {
        // A product started while this thread waits inside another (rayon lets a waiting
        // thread take other work) finds the buffer borrowed: it packs into one of its own.
        let (mut kept, mut own) = (packed.try_borrow_mut().ok(), Lines::default());
        let lines = kept.as_deref_mut().unwrap_or(&mut own);
        let xs = pack_input(x, m, k, pad, lines);
        multiply_packed((m, k, n), xs, blocks, bias, pad)
    })
}

/// The tasks of [`matmul_t`] over the packed input `xs`.
fn multiply_packed<B: Dequantize>(
    (m, k, n): (usize, usize, usize),
    xs: &[u32],
    blocks: &[B],
    bias: Option<&[f32]>,
    pad: Padded,
) -> Vec<f32> {
    // Not zeroed: the tasks write every value (zeroing would be a memset of up to 28 MB per
    // product of a 7B prefill, and its page faults).
    let mut y = Vec::<f32>::with_capacity(m * n);
    let out = SyncPtr(y.as_mut_ptr());
    (0..pad.n.div_ceil(NC)).into_par_iter().for_each(|task| {
        let first = task * NC;
        let rows = NC.min(pad.n - first);
        // SAFETY: AMX (and with it AVX-512) is available (asserted above); the task writes
        // only its own columns of `y`.
        unsafe { imp::task((m, k, n), blocks, bias, xs, pad, first, rows, out) };
    });
    // SAFETY: the tasks wrote all `m × n` values: task `t` every input row of output
    // columns `t·NC..(t + 1)·NC` below `n`, and the tasks cover `0..pad.n ⊇ 0..n`.
    unsafe { y.set_len(m * n) };
    y
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::{Lines, Padded, KC, STEP, TILE};
    use crate::model::block_dots::Dequantize;
    use crate::model::matrix::SyncPtr;
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// CPUID says AMX-TILE and AMX-BF16 (and the AVX-512 the tasks are compiled for), and
    /// Linux grants this process the tile state.
    pub(super) fn request() -> bool {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
        use std::arch::is_x86_feature_detected as has;
        let avx512 = has!("avx512f")
            && has!("avx512bw")
            && has!("avx512bf16")
            && has!("avx512vl")
            && has!("avx2")
            && has!("fma")
            && has!("f16c");
        if !(amx_bf16 && amx_tile && avx512) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with two integers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }

    /// One task of [`super::matmul_t`]: dequantize weight rows `first..first + rows` into
    /// bf16 tiles, multiply them by the packed input, write the result into `y` transposed.
    /// Compiled for AVX-512, which every AMX CPU has, so that the dequantizers' loops
    /// ([`Dequantize`], inlined here) and the roundings vectorise.
    ///
    /// # Safety
    /// AMX and AVX-512 must be available; `y` holds `m × n` values and no other task writes
    /// these columns.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    pub(super) unsafe fn task<B: Dequantize>(
        (m, k, n): (usize, usize, usize),
        blocks: &[B],
        bias: Option<&[f32]>,
        xs: &[u32],
        pad: Padded,
        first: usize,
        rows: usize,
        y: SyncPtr,
    ) {
        let per_row = k / B::VALUES;
        // This task's weight rows in bf16, zero-padded to whole tiles, tile-major: per group of
        // 16 rows and step, the group's 16 rows of 32 values (one 1 KB tile), so that a tile
        // load reads 1 KB in a row instead of 16 lines a row apart.
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { w, c } = scratch;
            let group_len = pad.group_len();
            w.at_least::<u16>(rows / TILE * group_len);
            c.at_least::<f32>(pad.m * rows);
            let w = w.view_mut::<u16>(rows / TILE * group_len);
            for row in first..first + rows {
                let (g, r) = ((row - first) / TILE, (row - first) % TILE);
                let group = &mut w[g * group_len..(g + 1) * group_len];
                if row < n {
                    let row = &blocks[row * per_row..(row + 1) * per_row];
                    // SAFETY: AVX-512 (this function's features); the row's `pad.steps()`
                    // runs (the last one zero-padded) lie `TILE · STEP` apart in `group`
                    // from `r · STEP` on.
                    B::bf16_runs(row, &mut group[r * STEP..], TILE * STEP);
                } else {
                    for s in 0..pad.steps() {
                        group[(s * TILE + r) * STEP..][..STEP].fill(0);
                    }
                }
            }
            let c = c.view_mut::<f32>(pad.m * rows);
            multiply(w, xs, pad, rows, c);
            // `c` holds 32 × 32 blocks (input rows × weight rows) as four 16 × 16 tiles each,
            // tile `q` covering weight rows `16 (q / 2)..` and input rows `16 (q % 2)..`, weight
            // rows along its rows: written into `y` transposed.
            let pairs_n = rows / (2 * TILE);
            let down = _mm512_mullo_epi32(
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                _mm512_set1_epi32(TILE as i32),
            );
            for (b, block) in c.chunks_exact(4 * TILE * TILE).enumerate() {
                let (mp, np) = (b / pairs_n, b % pairs_n);
                for (q, tile) in block.chunks_exact(TILE * TILE).enumerate() {
                    let w0 = first + np * 2 * TILE + TILE * (q / 2);
                    let x0 = mp * 2 * TILE + TILE * (q % 2);
                    let cols = TILE.min(n.saturating_sub(w0));
                    for i in 0..TILE.min(m.saturating_sub(x0)) {
                        let dst = y.get().add((x0 + i) * n + w0);
                        if cols == TILE {
                            // Column `i` of the tile is row `x0 + i`'s 16 outputs.
                            let column = _mm512_i32gather_ps::<4>(down, tile.as_ptr().add(i));
                            let column = match bias {
                                Some(b) => _mm512_add_ps(column, _mm512_loadu_ps(&b[w0])),
                                None => column,
                            };
                            _mm512_storeu_ps(dst, column);
                        } else {
                            for r in 0..cols {
                                let b = bias.map_or(0.0, |b| b[w0 + r]);
                                *dst.add(r) = tile[r * TILE + i] + b;
                            }
                        }
                    }
                }
            }
        });
    }

    /// A rayon thread's buffers for [`task`], kept between calls: allocating them per task
    /// cost the kernel's page zeroing and a memset of several MB each time (up to
    /// 256 × 11 008 bf16 = 5.6 MB of weight tiles at LLaVA-7B's widest rows).
    #[derive(Default)]
    struct Scratch {
        w: Lines,
        c: Lines,
    }

    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    }

    /// [`super::pack_tile`] for AVX-512: whole tiles (16 rows, `k` a multiple of 32) one step
    /// at a time, each row's 32 values loaded in a line and rounded to 16 bf16 pairs in one
    /// instruction (`VCVTNE2PS2BF16`: ties to even, NaN kept; it flushes subnormal values,
    /// below 1.2e-38, to zero), then the 16 × 16 words transposed in registers into the step's
    /// 16 lines. (Gathering each line from 16 rows `k` apart cost a cycle per value.) Edge
    /// tiles take the portable path.
    ///
    /// # Safety
    /// AVX-512 and AVX-512 BF16 must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    pub(super) unsafe fn pack_tile(rows: &[f32], k: usize, tile: &mut [u32]) {
        if rows.len() != TILE * k || !k.is_multiple_of(STEP) {
            return super::pack_tile(rows, k, tile);
        }
        for (s, lines) in tile.chunks_exact_mut(TILE * TILE).enumerate() {
            let mut words = [_mm512_setzero_si512(); TILE];
            for (i, words) in words.iter_mut().enumerate() {
                let at = rows.as_ptr().add(i * k + s * STEP);
                let pairs = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(at.add(16)), _mm512_loadu_ps(at));
                *words = std::mem::transmute::<__m512bh, __m512i>(pairs);
            }
            transpose(&mut words);
            for (line, words) in lines.chunks_exact_mut(TILE).zip(words) {
                _mm512_storeu_si512(line.as_mut_ptr() as *mut _, words);
            }
        }
    }

    /// `r[i]`'s word `j` becomes `r[j]`'s word `i`: 32-bit then 64-bit interleaves within
    /// 128-bit lanes, then two rounds of lane shuffles.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose(r: &mut [__m512i; TILE]) {
        let mut t = [_mm512_setzero_si512(); TILE];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // `r[4i + j]`'s lane `l` now holds word `4l + j` of rows `4i..4i + 4`.
        for i in 0..4 {
            r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
            r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
            r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
            r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
        }
        for i in 0..2 {
            for j in 0..4 {
                t[8 * i + j] = _mm512_shuffle_i32x4::<0x88>(r[8 * i + j], r[8 * i + 4 + j]);
                t[8 * i + 4 + j] = _mm512_shuffle_i32x4::<0xdd>(r[8 * i + j], r[8 * i + 4 + j]);
            }
        }
        for j in 0..8 {
            r[j] = _mm512_shuffle_i32x4::<0x88>(t[j], t[8 + j]);
            r[8 + j] = _mm512_shuffle_i32x4::<0xdd>(t[j], t[8 + j]);
        }
    }

    /// Palette 1; tiles 0–3 accumulate a 32 × 32 block (16 × 16 f32 each), 4–5 hold two
    /// 16-row tiles of weight rows, 6–7 two tiles of the packed input (all 16 rows × 64 bytes).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn new() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64;
                c[48 + t] = TILE as u8;
            }
            Self(c)
        }
    }

    /// `c = W · xᵀ` for `rows` weight rows `w` against the whole packed input `xs`, in blocks
    /// of [`KC`] along `k` so that a block of weight rows stays in L2 while every tile pair of
    /// the input passes it.
    ///
    /// # Safety
    /// AMX must be available; `w` holds `rows / 16` groups of weight tiles, `xs` `pad.m / 16`
    /// groups of input tiles ([`Padded::group_len`] apart),
    /// `c` `pad.m` × `rows`; `rows` is a multiple of 32.
    #[inline(always)]
    unsafe fn multiply(w: &[u16], xs: &[u32], pad: Padded, rows: usize, c: &mut [f32]) {
        debug_assert!(w.len() == rows / TILE * pad.group_len());
        debug_assert!(xs.len() * 2 == pad.m / TILE * pad.group_len());
        debug_assert!(c.len() == pad.m * rows && rows.is_multiple_of(2 * TILE));
        let config = TileConfig::new();
        asm!("ldtilecfg [{0}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        let steps = pad.steps();
        // Bytes from one group of 16 weight rows to the next.
        let w_group = pad.group_len() * 2;
        // Bytes from one packed input tile to the next.
        let x_tile = pad.group_len() * 2;
        let w = w.as_ptr() as *const u8;
        let xs = xs.as_ptr() as *const u8;
        let c = c.as_mut_ptr() as *mut u8;
        let kc = KC / STEP;
        for k0 in (0..steps).step_by(kc) {
            let block = kc.min(steps - k0);
            for mp in 0..pad.m / (2 * TILE) {
                let b = xs.add(2 * mp * x_tile + k0 * 1024);
                for np in 0..rows / (2 * TILE) {
                    let a = w.add(2 * np * w_group + k0 * 1024);
                    let c = c.add((mp * rows / (2 * TILE) + np) * 4096);
                    kernel(a, w_group, b, x_tile, c, block, k0 > 0);
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// A 32 × 32 block over `steps` steps of `k`: zeroed first (or loaded, to go on from an
    /// earlier block of `k`), then `c += A · B` per step, then stored as four 1 KB tiles.
    #[inline(always)]
    unsafe fn kernel(
        a: *const u8,
        w_group: usize,
        b: *const u8,
        x_tile: usize,
        c: *mut u8,
        steps: usize,
        accumulate: bool,
    ) {
        let a1 = a.add(w_group);
        let b1 = b.add(x_tile);
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c} + {s64}*1]",
                "tileloadd tmm1, [{c} + {s64}*1 + 1024]",
                "tileloadd tmm2, [{c} + {s64}*1 + 2048]",
                "tileloadd tmm3, [{c} + {s64}*1 + 3072]",
                c = in(reg) c, s64 = in(reg) 64usize,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a} + {s64}*1]",
            "tileloadd tmm6, [{b} + {s64}*1]",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 1024",
            "add {a1}, 1024",
            "add {b}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            a = inout(reg) a => _,
            a1 = inout(reg) a1 => _,
            b = inout(reg) b => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) steps => _,
            s64 = in(reg) 64usize,
            options(nostack, readonly),
        );
        asm!(
            "tilestored [{c} + {s64}*1], tmm0",
            "tilestored [{c} + {s64}*1 + 1024], tmm1",
            "tilestored [{c} + {s64}*1 + 2048], tmm2",
            "tilestored [{c} + {s64}*1 + 3072], tmm3",
            c = in(reg) c, s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use super::Padded;
    use crate::model::matrix::SyncPtr;

    pub(super) fn request() -> bool {
        false
    }

    pub(super) unsafe fn pack_tile(_: &[f32], _: usize, _: &mut [u32]) {
        unreachable!("AMX is never available here")
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn task<B: crate::model::block_dots::Dequantize>(
        _: (usize, usize, usize),
        _: &[B],
        _: Option<&[f32]>,
        _: &[u32],
        _: Padded,
        _: usize,
        _: usize,
        _: SyncPtr,
    ) {
        unreachable!("AMX is never available here")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f32 rows as "blocks" of one value.
    impl Dequantize for f32 {
        const VALUES: usize = 1;
        fn dequantize(blocks: &[Self], out: &mut [f32]) {
            out.copy_from_slice(blocks)
        }

        #[cfg(target_arch = "x86_64")]
        unsafe fn bf16_runs(blocks: &[Self], out: &mut [u16], stride: usize) {
            for (s, run) in blocks.chunks(STEP).enumerate() {
                let (values, padding) = out[s * stride..][..STEP].split_at_mut(run.len());
                for (w, v) in values.iter_mut().zip(run) {
                    *w = bf16_bits(*v);
                }
                padding.fill(0);
            }
        }
    }

    fn bf16_value(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        for x in [1.0f32, -2.5, 3.0e-3, 1.0e30, f32::INFINITY, 0.0, -0.0] {
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        let xs = random(10_000, 1);
        for x in xs {
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        // A tie rounds to the even neighbour: 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷.
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
    }

    /// The packed input puts `x[16t + i][2p + h]` where the tile instruction reads it, and
    /// zeros past the input's rows and columns: for whole tiles (transposed in registers,
    /// where AMX is) and partial ones.
    #[test]
    fn the_packed_input_interleaves_pairs_of_k() {
        for (m, k) in [(19, 45), (32, 64)] {
            packed_input_is_interleaved(m, k);
        }
    }

    fn packed_input_is_interleaved(m: usize, k: usize) {
        let x: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
        let pad = Padded::new(m, k, 1);
        // A used buffer: everything read must be written.
        let mut lines = Lines(vec![Line([0xa5; 64]); 1 << 12]);
        let packed = pack_input(&x, m, k, pad, &mut lines);
        for t in 0..pad.m / TILE {
            for p in 0..pad.k / 2 {
                for i in 0..TILE {
                    let word = packed[t * pad.group_len() / 2 + p * TILE + i];
                    for h in 0..2 {
                        let (row, col) = (t * TILE + i, 2 * p + h);
                        let want = if row < m && col < k {
                            x[row * k + col]
                        } else {
                            0.0
                        };
                        let got = bf16_value((word >> (16 * h)) as u16);
                        assert_eq!(got, bf16_value(bf16_bits(want)), "row {row} col {col}");
                    }
                }
            }
        }
    }

    /// On an AMX machine, the tile product equals the f64 product of the bf16-rounded operands
    /// (plus the bias, for odd `m`) to f32 summation error, for shapes that are not whole tiles
    /// in any direction.
    #[test]
    fn tile_products_match_the_rounded_operands() {
        if !available() {
            eprintln!("no AMX bf16 here: the tile kernel is not exercised");
            return;
        }
        for (m, k, n) in [(1, 32, 16), (37, 70, 45), (64, 1100, 300), (70, 4096, 33)] {
            let x = random(m * k, m as u64);
            let w = random(n * k, n as u64 + 7);
            let bias = random(n, 99);
            let y = matmul_t((m, k, n), &x, &w, (m % 2 == 1).then_some(&bias[..]));
            assert_eq!(y.len(), m * n);
            let round = |v: f32| bf16_value(bf16_bits(v)) as f64;
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| round(x[i * k + t]) * round(w[j * k + t]))
                        .sum::<f64>()
                        + if m % 2 == 1 { bias[j] as f64 } else { 0.0 };
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (k as f64).sqrt() + 1e-6 * want.abs(),
                        "[{m}, {k}, {n}] at ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
