//! Weight matrices used where they lie in the checkpoint's memory map.
//!
//! candle's CPU tensors own their memory (`Vec<T>`), so loading a weight as a `Tensor`
//! copies it out of the mapped safetensors file, and a linear layer that wants `Wᵀ`
//! contiguous copies it again. At LLaVA-7B's width that was seconds per load and every
//! weight held twice while loading. A [`MappedMatrix`] is the stored `[rows, cols]` matrix
//! itself, read in place: products with it call the GEMM kernels on the mapped bytes with
//! the strides of the stored (row-major) layout, and embedding lookups copy only the rows
//! asked for. Loading a model then touches only headers; pages are read when first used,
//! and stay shared with the page cache (and with other processes mapping the same files).
//!
//! Only on the CPU, little-endian, aligned for the element type, for matrices of at least
//! [`MIN_MAPPED_ELEMENTS`], and either stored in the compute dtype (f32 or f16, the dtypes
//! candle's CPU GEMM takes) or stored in half precision (f16, bf16) and computed in f32.
//! In the second case the products convert the stored rows to f32 a block at a time
//! ([`CONVERT_ROWS`] rows, in a per-thread buffer) just before multiplying with them, and
//! lookups convert the rows they copy: the conversion is exact, so this computes what a
//! converted copy would, while the model holds half the bytes. It is what keeps an f32 run
//! of a half-precision checkpoint (every llava-hf release; the quantized folders' embedding
//! table and head) from doubling the weights in memory. Anything else is loaded as a tensor,
//! as before.
//!
//! Products of up to [`row_dots::MAX_ROWS`] input rows computed in f32 or f16 (a decode
//! step) do not go to the GEMM: they are dot products along the stored rows
//! (`model/row_dots.rs`), which stream the weights from memory faster than the GEMM's
//! matrix-vector path and round each row the same whatever the number of rows.
//!
//! Why the size floor: with `W` as stored, both GEMM operands run along the summed dimension,
//! and for products with few outputs (rows × outputs ≤ 256, or one row) the GEMM switches to
//! dot-product kernels that round differently from its blocked kernels. A row's result would
//! then depend on how many rows it was computed with: a batched step would no longer equal
//! each sequence alone bit for bit, nor a resumed training run the uninterrupted one, on the
//! small models (toy, parity) where such products occur. Copying a small matrix costs
//! microseconds; from LLaVA-7B's narrowest matrix (1024 × 1024) up, every product has over
//! 256 outputs per row, and a single row already took the GEMM's vector path with the
//! transposed copy at such depths.
//!
//! The mapping is of a file the user owns: like every memory-mapped load (transformers',
//! llama.cpp's), changing the file in place while a model is loaded is undefined. Replacing
//! it (a new file renamed over the old one, as `concepts` itself writes files) is safe: the
//! mapping keeps the old file's pages.

use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::error::{Result, RuntimeError};
use crate::madvise::{advise, Advice};
use crate::ops::{self, gemm_into};

use super::row_dots;

/// The fewest elements a matrix must have to be read in place (see the module docs).
pub(crate) const MIN_MAPPED_ELEMENTS: usize = 1 << 20;

/// Stored half-precision rows converted to f32 at a time by a product computed in f32: 256
/// rows of LLaVA-7B's 4096 columns are 4 MiB of f32, few enough to stay in cache between
/// the conversion and the GEMM that reads them, many enough that every block has over 256
/// outputs per input row (the GEMM's blocked kernels, as for an unconverted product).
const CONVERT_ROWS: usize = 256;

/// A frozen `[rows, cols]` weight matrix: a tensor, or the stored bytes read in place.
///
/// The model's large matrices (the token embedding table, the LM head, the linear layers)
/// come as either; code outside the model sees only this type's operations.
#[derive(Clone)]
pub struct WeightMatrix(Repr);

#[derive(Clone)]
enum Repr {
    Tensor(Tensor),
    Mapped(Arc<MappedMatrix>),
}

impl WeightMatrix {
    pub(crate) fn tensor(t: Tensor) -> Self {
        WeightMatrix(Repr::Tensor(t))
    }

    pub(crate) fn mapped(m: Arc<MappedMatrix>) -> Self {
        WeightMatrix(Repr::Mapped(m))
    }

    /// `(rows, cols)`.
    pub fn dims2(&self) -> (usize, usize) {
        match &self.0 {
            Repr::Tensor(t) => t.dims2().unwrap_or((0, 0)),
            Repr::Mapped(m) => (m.rows, m.cols),
        }
    }

    pub fn elem_count(&self) -> usize {
        let (r, c) = self.dims2();
        r * c
    }

    pub fn dtype(&self) -> DType {
        match &self.0 {
            Repr::Tensor(t) => t.dtype(),
            Repr::Mapped(m) => m.dtype,
        }
    }

    pub fn device(&self) -> &Device {
        match &self.0 {
            Repr::Tensor(t) => t.device(),
            Repr::Mapped(_) => &Device::Cpu,
        }
    }

    /// Whether the matrix is read in place from the checkpoint's memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Repr::Mapped(_))
    }

    /// The tensor, when the matrix is one (not mapped): for identity checks such as "no
    /// gradient reached this weight".
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match &self.0 {
            Repr::Tensor(t) => Some(t),
            Repr::Mapped(_) => None,
        }
    }

    /// The whole matrix as a tensor: the tensor itself, or a copy of the mapped bytes.
    pub fn to_tensor(&self) -> Result<Tensor> {
        match &self.0 {
            Repr::Tensor(t) => Ok(t.clone()),
            Repr::Mapped(m) => {
                let all: Vec<u32> = (0..m.rows as u32).collect();
                m.rows_of(&all)
            }
        }
    }

    /// The standard deviation of all elements (population, computed in f64).
    pub fn std(&self) -> Result<f64> {
        match &self.0 {
            Repr::Tensor(t) => {
                let t = t.to_dtype(DType::F64)?.flatten_all()?;
                let mean = t.mean_all()?.to_scalar::<f64>()?;
                Ok(t.affine(1.0, -mean)?
                    .sqr()?
                    .mean_all()?
                    .to_scalar::<f64>()?
                    .sqrt())
            }
            Repr::Mapped(m) => Ok(match m.stored {
                DType::F32 => std_of(m.slice::<f32>().iter().map(|&x| x as f64)),
                DType::F16 => std_of(m.slice::<f16>().iter().map(|x| x.to_f64())),
                DType::BF16 => std_of(m.slice::<bf16>().iter().map(|x| x.to_f64())),
                other => unreachable!("a mapped matrix stored in {other:?}"),
            }),
        }
    }

    /// Rows `ids` (u32, any shape) -> `[.., cols]`. Ids must be below `rows`.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let flat = ids.flatten_all()?;
        let list = flat.to_vec1::<u32>()?;
        let (rows, cols) = self.dims2();
        if let Some(&bad) = list.iter().find(|&&id| id as usize >= rows) {
            return Err(RuntimeError::InvalidInput(format!(
                "row {bad} of a matrix of {rows} rows"
            )));
        }
        let gathered = match &self.0 {
            Repr::Tensor(t) => t.index_select(&flat, 0)?,
            Repr::Mapped(m) => m.rows_of(&list)?,
        };
        let mut shape = ids.dims().to_vec();
        shape.push(cols);
        Ok(gathered.reshape(shape)?)
    }

    /// `x · Wᵀ`: `[.., cols]` -> `[.., rows]`. The gradient flows to `x` only (the weight is
    /// frozen).
    pub fn linear_t(&self, x: &Tensor) -> Result<Tensor> {
        match &self.0 {
            Repr::Tensor(w) => ops::linear(x, w, None),
            Repr::Mapped(m) => {
                let dims = x.dims();
                let (&inner, lead) = dims
                    .split_last()
                    .ok_or_else(|| RuntimeError::InvalidInput("linear on a scalar".into()))?;
                let rows: usize = lead.iter().product();
                let y = m.matmul_t(&x.reshape((rows, inner))?)?;
                let mut shape = lead.to_vec();
                shape.push(m.rows);
                Ok(y.reshape(shape)?)
            }
        }
    }
}

/// Two passes (mean, then squared deviations), as the tensor computation does.
fn std_of<I: Iterator<Item = f64> + Clone>(values: I) -> f64 {
    let (n, sum) = values
        .clone()
        .fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    if n == 0 {
        return 0.0;
    }
    let mean = sum / n as f64;
    (values.map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64).sqrt()
}

/// A `[rows, cols]` row-major matrix in a memory-mapped safetensors file.
pub(crate) struct MappedMatrix {
    /// Keeps the mapping (and so `ptr`) alive.
    _files: Arc<MmapedSafetensors>,
    ptr: *const u8,
    rows: usize,
    cols: usize,
    /// How the elements are stored.
    stored: DType,
    /// What products and lookups compute in: `stored`, or f32 over half-precision storage.
    dtype: DType,
}

// SAFETY: the pointer is into a read-only mapping that `_files` keeps alive for the
// matrix's whole life and that nothing writes through; sharing reads across threads is safe.
unsafe impl Send for MappedMatrix {}
unsafe impl Sync for MappedMatrix {}

impl MappedMatrix {
    /// The stored bytes `data` of a `[rows, cols]` matrix of `stored` elements, used in place
    /// to compute in `dtype`, or `None` where that cannot be done on them as they are (see
    /// the module docs).
    pub(crate) fn new(
        files: Arc<MmapedSafetensors>,
        data: &[u8],
        rows: usize,
        cols: usize,
        stored: DType,
        dtype: DType,
    ) -> Option<Self> {
        let size = match (stored, dtype) {
            (DType::F32, DType::F32) => 4,
            (DType::F16, DType::F16 | DType::F32) | (DType::BF16, DType::F32) => 2,
            _ => return None,
        };
        let aligned = (data.as_ptr() as usize).is_multiple_of(size);
        if !cfg!(target_endian = "little") || !aligned || data.len() != rows * cols * size {
            return None;
        }
        // SAFETY: `data` lies in the file mapping `files` keeps alive; huge pages are advice.
        unsafe { advise(data.as_ptr(), data.len(), Advice::HugePages) };
        Some(MappedMatrix {
            _files: files,
            ptr: data.as_ptr(),
            rows,
            cols,
            stored,
            dtype,
        })
    }

    /// The stored elements; `T` must be `stored`'s element type.
    fn slice<T: candle_core::WithDType>(&self) -> &[T] {
        assert_eq!(T::DTYPE, self.stored, "mapped matrix read as another dtype");
        // SAFETY: `new` checked that the bytes are `rows * cols` elements of the stored dtype
        // (plain old data), which the assertion above makes `T`, aligned for it, in a mapping
        // that lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<T>(), self.rows * self.cols) }
    }

    /// Copies of rows `ids` (each checked below `rows` by the caller) as a `[n, cols]` tensor.
    fn rows_of(&self, ids: &[u32]) -> Result<Tensor> {
        fn gather<T: Copy>(all: &[T], cols: usize, ids: &[u32]) -> Vec<T> {
            let mut out = Vec::with_capacity(ids.len() * cols);
            for &id in ids {
                let start = id as usize * cols;
                out.extend_from_slice(&all[start..start + cols]);
            }
            out
        }
        let shape = (ids.len(), self.cols);
        Ok(match (self.stored, self.dtype) {
            (DType::F32, _) => Tensor::from_vec(
                gather(self.slice::<f32>(), self.cols, ids),
                shape,
                &Device::Cpu,
            )?,
            (DType::F16, DType::F16) => Tensor::from_vec(
                gather(self.slice::<f16>(), self.cols, ids),
                shape,
                &Device::Cpu,
            )?,
            (DType::F16 | DType::BF16, DType::F32) => {
                let mut out = vec![0f32; ids.len() * self.cols];
                for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
                    self.convert_rows(id as usize, dst);
                }
                Tensor::from_vec(out, shape, &Device::Cpu)?
            }
            (stored, dtype) => unreachable!("a mapped {stored:?} matrix computed in {dtype:?}"),
        })
    }

    /// Rows `first..` converted to f32 into `dst` (a whole number of rows), from half
    /// precision storage.
    fn convert_rows(&self, first: usize, dst: &mut [f32]) {
        let start = first * self.cols;
        let end = start + dst.len();
        match self.stored {
            DType::F16 => self.slice::<f16>()[start..end].convert_to_f32_slice(dst),
            DType::BF16 => self.slice::<bf16>()[start..end].convert_to_f32_slice(dst),
            other => unreachable!("converting a mapped {other:?} matrix"),
        }
    }

    /// `x · Wᵀ` for `x` `[m, cols]`, with a backward to `x`.
    fn matmul_t(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != self.dtype || !x.device().is_cpu() {
            return Err(RuntimeError::InvalidInput(format!(
                "a product of a {:?} matrix with {:?} on {:?}",
                self.dtype,
                x.dtype(),
                x.device()
            )));
        }
        Ok(x.apply_op1(MappedMatmul {
            w: self.clone(),
            transposed: false,
        })?)
    }
}

/// `x · Wᵀ` (`transposed: false`, `[m, cols]` -> `[m, rows]`) or `x · W` (`transposed:
/// true`, `[m, rows]` -> `[m, cols]`, the other's input gradient) with the mapped `W`.
struct MappedMatmul {
    w: Arc<MappedMatrix>,
    transposed: bool,
}

impl MappedMatmul {
    /// `(m, k, n)` of the product with an input laid out as `layout`, checked against `W`.
    fn dims(&self, layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (m, k) = layout.shape().dims2()?;
        let (rows, cols) = (self.w.rows, self.w.cols);
        let (want_k, n) = if self.transposed {
            (rows, cols)
        } else {
            (cols, rows)
        };
        if k != want_k {
            candle_core::bail!(
                "mapped matrix [{rows}, {cols}] multiplied with [{m}, {k}] (transposed: {})",
                self.transposed
            );
        }
        Ok((m, k, n))
    }

    /// `dst[m, n] = lhs[m, k] · rhs[k, n]` where `rhs` is `W` or `Wᵀ` as stored: the GEMM
    /// reads the stored row-major bytes through strides, packing them as it does any operand.
    fn gemm<T: 'static + Copy + num_traits::Zero + num_traits::One>(
        &self,
        lhs: &[T],
        layout: &Layout,
        w: &[T],
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let (m, k, n) = self.dims(layout)?;
        let cols = self.w.cols as isize;
        // Element (i, j) of rhs is W[j, i] (not transposed) or W[i, j].
        let (rhs_rs, rhs_cs) = if self.transposed {
            (cols, 1)
        } else {
            (1, cols)
        };
        let mut dst = vec![T::zero(); m * n];
        let [lhs_rs, lhs_cs] = strides2(layout);
        // SAFETY: dst is [m, n] row-major; lhs is addressed through its layout's strides from
        // its start offset, within its storage (candle's own matmul passes the same); rhs
        // addresses rows * cols elements of `w` through the strides chosen above.
        unsafe {
            gemm_into(
                (m, n, k),
                (dst.as_mut_ptr(), n as isize, false),
                (lhs[layout.start_offset()..].as_ptr(), lhs_rs, lhs_cs),
                (w.as_ptr(), rhs_rs, rhs_cs),
                parallelism(),
            );
        }
        Ok((dst, (m, n).into()))
    }

    /// `x · Wᵀ` for at most [`row_dots::MAX_ROWS`] input rows (a decode step) by dot
    /// products along the stored rows in f32 (`row_dots`), or `None` for any other product.
    /// An f16 computation's rows are widened first and its results rounded back to f16 (the
    /// GEMM's f16 path accumulates in f32 as well on CPUs without f16 arithmetic).
    fn few_rows(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<Option<CpuStorage>> {
        let (m, k, n) = self.dims(layout)?;
        if self.transposed || m > row_dots::MAX_ROWS {
            return Ok(None);
        }
        let (start, rs, cs) = (
            layout.start_offset(),
            layout.stride()[0],
            layout.stride()[1],
        );
        let at = |e: usize| start + (e / k) * rs + (e % k) * cs;
        // The kernels read each row's values one after another, in f32.
        let widened;
        let (x, x_rs) = match (x, self.w.dtype) {
            (CpuStorage::F32(x), DType::F32) if cs == 1 => (&x[start..], rs),
            (CpuStorage::F32(x), DType::F32) => {
                widened = (0..m * k).map(|e| x[at(e)]).collect::<Vec<f32>>();
                (&widened[..], k)
            }
            (CpuStorage::F16(x), DType::F16) => {
                widened = (0..m * k).map(|e| x[at(e)].to_f32()).collect::<Vec<f32>>();
                (&widened[..], k)
            }
            _ => return Ok(None),
        };
        let w = match self.w.stored {
            DType::F32 => row_dots::Stored::F32(self.w.slice::<f32>()),
            DType::F16 => row_dots::Stored::F16(self.w.slice::<f16>()),
            DType::BF16 => row_dots::Stored::BF16(self.w.slice::<bf16>()),
            other => candle_core::bail!("a mapped {other:?} matrix"),
        };
        let y = row_dots::product(x, x_rs, m, w, n, k);
        Ok(Some(match self.w.dtype {
            DType::F16 => CpuStorage::F16(y.into_iter().map(f16::from_f32).collect()),
            _ => CpuStorage::F32(y),
        }))
    }

    /// The f32 product with `W` stored in half precision: blocks of [`CONVERT_ROWS`] stored
    /// rows are converted to f32 in a per-thread buffer and multiplied with at once. The
    /// forward (`x · Wᵀ`) gives each block its own output columns, so blocks run in parallel;
    /// the input gradient (`x · W`) sums over the blocks, one after another.
    fn gemm_converted(
        &self,
        lhs: &[f32],
        layout: &Layout,
    ) -> candle_core::Result<(Vec<f32>, Shape)> {
        use rayon::prelude::*;

        let (m, k, n) = self.dims(layout)?;
        let w = &*self.w;
        let mut dst = vec![0f32; m * n];
        let lhs = &lhs[layout.start_offset()..];
        let [lhs_rs, lhs_cs] = strides2(layout);
        if !self.transposed {
            let out = SyncPtr(dst.as_mut_ptr());
            (0..w.rows)
                .into_par_iter()
                .step_by(CONVERT_ROWS)
                .for_each(|first| {
                    let count = CONVERT_ROWS.min(w.rows - first);
                    CONVERTED.with_borrow_mut(|buf| {
                        buf.resize(count * w.cols, 0.0);
                        w.convert_rows(first, buf);
                        // SAFETY: this block writes output columns first..first + count of
                        // the [m, n] dst, which no other block writes; lhs as in `gemm`; rhs
                        // element (i, j) is buf[j, i], within the count * cols buffer.
                        unsafe {
                            gemm_into(
                                (m, count, k),
                                (out.get().add(first), n as isize, false),
                                (lhs.as_ptr(), lhs_rs, lhs_cs),
                                (buf.as_ptr(), 1, w.cols as isize),
                                gemm::Parallelism::None,
                            );
                        }
                    });
                });
        } else {
            let mut buf = Vec::new();
            for first in (0..w.rows).step_by(CONVERT_ROWS) {
                let count = CONVERT_ROWS.min(w.rows - first);
                buf.resize(count * w.cols, 0.0);
                w.convert_rows(first, &mut buf);
                // SAFETY: dst [m, n] row-major, accumulated after the first block; lhs columns
                // first..first + count through its strides (k = rows, so within the input);
                // rhs is the converted [count, cols] block, row-major.
                unsafe {
                    gemm_into(
                        (m, n, count),
                        (dst.as_mut_ptr(), n as isize, first > 0),
                        (lhs.as_ptr().offset(first as isize * lhs_cs), lhs_rs, lhs_cs),
                        (buf.as_ptr(), w.cols as isize, 1),
                        parallelism(),
                    );
                }
            }
        }
        Ok((dst, (m, n).into()))
    }
}

thread_local! {
    /// A product's converted block of stored rows, kept per thread across products (4 MiB
    /// at LLaVA-7B's width) so that no product allocates and faults in a fresh one per block.
    static CONVERTED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output pointer shared by the parallel blocks of one product, each writing its own
/// columns (here and in [`super::amx`]).
#[derive(Clone, Copy)]
pub(super) struct SyncPtr(pub(super) *mut f32);

// SAFETY: blocks write disjoint elements through it while the owning Vec outlives them.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// A method (not a field access) so that closures capture the whole wrapper.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `[row stride, column stride]` of a 2-D input layout.
fn strides2(layout: &Layout) -> [isize; 2] {
    let s = layout.stride();
    [s[0] as isize, s[1] as isize]
}

/// The GEMM's parallelism for a whole product: candle's thread count.
fn parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        threads if threads > 1 => gemm::Parallelism::Rayon(threads),
        _ => gemm::Parallelism::None,
    }
}

impl CustomOp1 for MappedMatmul {
    fn name(&self) -> &'static str {
        "mapped-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if let Some(y) = self.few_rows(storage, layout)? {
            return Ok((y, Shape::from((layout.dims()[0], self.w.rows))));
        }
        match (storage, self.w.stored, self.w.dtype) {
            (CpuStorage::F32(x), DType::F32, DType::F32) => {
                let (y, s) = self.gemm(x, layout, self.w.slice::<f32>())?;
                Ok((CpuStorage::F32(y), s))
            }
            (CpuStorage::F16(x), DType::F16, DType::F16) => {
                let (y, s) = self.gemm(x, layout, self.w.slice::<f16>())?;
                Ok((CpuStorage::F16(y), s))
            }
            (CpuStorage::F32(x), DType::F16 | DType::BF16, DType::F32) => {
                let (y, s) = self.gemm_converted(x, layout)?;
                Ok((CpuStorage::F32(y), s))
            }
            (other, stored, dtype) => candle_core::bail!(
                "a product of a mapped {stored:?} matrix computed in {dtype:?} with {:?}",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.apply_op1(MappedMatmul {
            w: self.w.clone(),
            transposed: !self.transposed,
        })?;
        Ok(Some(grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, randn};

    /// `[rows, cols]` matrices `w` stored in a safetensors file (after a few bytes of another
    /// tensor, as in a real checkpoint) and mapped back, to compute in `compute`.
    fn mapped(w: &Tensor, compute: DType) -> (tempfile::TempDir, WeightMatrix) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let lead = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &[("a.lead", lead), ("w", w.clone())].into_iter().collect(),
            &path,
        )
        .unwrap();
        // SAFETY: the file is this test's own and is not modified while mapped.
        let files = Arc::new(unsafe { MmapedSafetensors::new(&path) }.unwrap());
        let view = files.get("w").unwrap();
        let (rows, cols) = w.dims2().unwrap();
        let stored = w.dtype();
        let m = MappedMatrix::new(files.clone(), view.data(), rows, cols, stored, compute)
            .expect("an aligned matrix is mapped");
        // Computing in a dtype other than the stored one or f32 over half precision, or bytes
        // that do not make the shape, are not mapped.
        for other in [DType::BF16, DType::F64] {
            let m = MappedMatrix::new(files.clone(), view.data(), rows, cols, stored, other);
            assert!(m.is_none(), "{stored:?} computed in {other:?}");
        }
        let short = MappedMatrix::new(files.clone(), view.data(), rows + 1, cols, stored, compute);
        assert!(short.is_none());
        (dir, WeightMatrix::mapped(Arc::new(m)))
    }

    /// Stored dtype, compute dtype, tolerance of products against the tensor computation.
    /// The last two convert half-precision storage to f32 by blocks of stored rows: 600 rows
    /// make two whole blocks and a partial one.
    const CASES: [(DType, DType, f64); 4] = [
        (DType::F32, DType::F32, 1e-5),
        (DType::F16, DType::F16, 2e-2),
        (DType::F16, DType::F32, 1e-5),
        (DType::BF16, DType::F32, 1e-5),
    ];

    #[test]
    fn mapped_products_and_rows_match_the_tensor_ones() {
        let (n, k) = (600, 19);
        for (stored, compute, tol) in CASES {
            let w = randn(&[n, k], 1, DType::F32, &Device::Cpu).unwrap();
            let w = w.to_dtype(stored).unwrap();
            let (_dir, m) = mapped(&w, compute);
            // The reference: the stored values as a tensor in the compute dtype (exact).
            let w = w.to_dtype(compute).unwrap();
            let t = WeightMatrix::tensor(w.clone());
            assert!(m.is_mapped() && !t.is_mapped());
            assert_eq!((m.dims2(), m.dtype()), ((n, k), compute));
            // Rows are copied bit for bit, any id shape; an id past the end is refused.
            let ids = Tensor::new(&[[599u32, 0, 5], [5, 2, 300]], &Device::Cpu).unwrap();
            assert_eq!(
                max_abs_diff(&m.rows(&ids).unwrap(), &t.rows(&ids).unwrap()),
                0.0
            );
            assert_eq!(m.rows(&ids).unwrap().dims(), [2, 3, k]);
            let bad = Tensor::new(&[n as u32], &Device::Cpu).unwrap();
            assert!(m.rows(&bad).is_err());
            assert_eq!(max_abs_diff(&m.to_tensor().unwrap(), &w), 0.0);
            assert!((m.std().unwrap() - t.std().unwrap()).abs() < 1e-12);
            // x · Wᵀ for a batch of rows, a single row (decoding) and a strided input: up to
            // `row_dots::MAX_ROWS` rows by dot products along the stored rows, more by the GEMM.
            for rows in [1usize, 4, 33] {
                let x = randn(&[2, rows, k], 2, DType::F32, &Device::Cpu)
                    .unwrap()
                    .to_dtype(compute)
                    .unwrap();
                let want = t.linear_t(&x).unwrap();
                let got = m.linear_t(&x).unwrap();
                assert_eq!(got.dims(), [2, rows, n]);
                let diff = max_abs_diff(&got, &want);
                assert!(diff < tol, "{stored:?}/{compute:?} rows {rows}: {diff}");
            }
            let wide = randn(&[5, 2 * k], 3, DType::F32, &Device::Cpu)
                .unwrap()
                .to_dtype(compute)
                .unwrap();
            let strided = wide.narrow(1, 7, k).unwrap();
            assert!(!strided.is_contiguous());
            let want = t.linear_t(&strided.contiguous().unwrap()).unwrap();
            assert!(max_abs_diff(&m.linear_t(&strided).unwrap(), &want) < tol);
            // Columns a stride apart (a transposed view): the few-row path copies them first.
            let columns = randn(&[k, 3], 7, DType::F32, &Device::Cpu)
                .unwrap()
                .to_dtype(compute)
                .unwrap()
                .t()
                .unwrap();
            assert_eq!(columns.stride(), [1, 3]);
            let want = t.linear_t(&columns.contiguous().unwrap()).unwrap();
            assert!(max_abs_diff(&m.linear_t(&columns).unwrap(), &want) < tol);
            // A product with another dtype is refused, not converted.
            let other = if compute == DType::F32 {
                DType::F16
            } else {
                DType::F32
            };
            assert!(m
                .linear_t(&wide.narrow(1, 0, k).unwrap().to_dtype(other).unwrap())
                .is_err());
        }
    }

    /// The input gradient of a product with a mapped matrix is `dy · W`, as through a tensor
    /// (for converted storage: summed over the blocks of stored rows).
    #[test]
    fn mapped_product_passes_the_input_gradient() {
        for (stored, compute, _) in CASES {
            if compute != DType::F32 {
                continue;
            }
            let w = randn(&[600, 11], 4, DType::F32, &Device::Cpu).unwrap();
            let w = w.to_dtype(stored).unwrap();
            let (_dir, m) = mapped(&w, compute);
            let t = WeightMatrix::tensor(w.to_dtype(compute).unwrap());
            let x0 = randn(&[3, 11], 5, DType::F32, &Device::Cpu).unwrap();
            let probe = randn(&[3, 600], 6, DType::F32, &Device::Cpu).unwrap();
            let grad = |mat: &WeightMatrix| {
                let x = candle_core::Var::from_tensor(&x0).unwrap();
                let y = mat.linear_t(x.as_tensor()).unwrap();
                let loss = (y * &probe).unwrap().sum_all().unwrap();
                loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
            };
            let (gm, gt) = (grad(&m), grad(&t));
            assert_eq!(gm.dims(), [3, 11]);
            let diff = max_abs_diff(&gm, &gt);
            assert!(diff < 1e-4, "{stored:?}: {diff}");
        }
    }
}
