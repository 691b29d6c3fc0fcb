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
//! Only when the stored bytes are what the kernels read as they are: on the CPU, stored in
//! the compute dtype (f32 or f16, the dtypes candle's CPU GEMM takes), little-endian and
//! aligned for the element type; and only for matrices of at least [`MIN_MAPPED_ELEMENTS`].
//! Anything else is loaded as a tensor, as before.
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
use half::f16;

use crate::error::{Result, RuntimeError};
use crate::ops;

/// The fewest elements a matrix must have to be read in place (see the module docs).
pub(crate) const MIN_MAPPED_ELEMENTS: usize = 1 << 20;

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
            Repr::Mapped(m) => Ok(match m.dtype {
                DType::F32 => std_of(m.slice::<f32>().iter().map(|&x| x as f64)),
                DType::F16 => std_of(m.slice::<f16>().iter().map(|x| x.to_f64())),
                other => unreachable!("a mapped matrix of {other:?}"),
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
    dtype: DType,
}

// SAFETY: the pointer is into a read-only mapping that `_files` keeps alive for the
// matrix's whole life and that nothing writes through; sharing reads across threads is safe.
unsafe impl Send for MappedMatrix {}
unsafe impl Sync for MappedMatrix {}

impl MappedMatrix {
    /// The stored bytes `data` of a `[rows, cols]` matrix of `dtype`, used in place, or
    /// `None` where the kernels cannot read them as they are (see the module docs).
    pub(crate) fn new(
        files: Arc<MmapedSafetensors>,
        data: &[u8],
        rows: usize,
        cols: usize,
        dtype: DType,
    ) -> Option<Self> {
        let size = match dtype {
            DType::F32 => 4,
            DType::F16 => 2,
            _ => return None,
        };
        let aligned = (data.as_ptr() as usize) % size == 0;
        if !cfg!(target_endian = "little") || !aligned || data.len() != rows * cols * size {
            return None;
        }
        advise_huge_pages(data);
        Some(MappedMatrix {
            _files: files,
            ptr: data.as_ptr(),
            rows,
            cols,
            dtype,
        })
    }

    fn slice<T>(&self) -> &[T] {
        // SAFETY: `new` checked that the bytes are `rows * cols` elements of `T` (the dtype's
        // element type: f32 or f16, plain old data), aligned for it, in a mapping that lives
        // as long as `self`.
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
        Ok(match self.dtype {
            DType::F32 => Tensor::from_vec(
                gather(self.slice::<f32>(), self.cols, ids),
                shape,
                &Device::Cpu,
            )?,
            DType::F16 => Tensor::from_vec(
                gather(self.slice::<f16>(), self.cols, ids),
                shape,
                &Device::Cpu,
            )?,
            other => unreachable!("a mapped matrix of {other:?}"),
        })
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

/// Asks the kernel to map `bytes` (in a file mapping) with huge pages where it can.
fn advise_huge_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (bytes.as_ptr() as usize).div_ceil(HUGE) * HUGE;
        let end = (bytes.as_ptr() as usize + bytes.len()) / HUGE * HUGE;
        if end > start {
            // SAFETY: an advice on whole huge pages inside `bytes`' mapping; it changes how
            // pages are mapped, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// `x · Wᵀ` (`transposed: false`, `[m, cols]` -> `[m, rows]`) or `x · W` (`transposed:
/// true`, `[m, rows]` -> `[m, cols]`, the other's input gradient) with the mapped `W`.
struct MappedMatmul {
    w: Arc<MappedMatrix>,
    transposed: bool,
}

impl MappedMatmul {
    /// `dst[m, n] = lhs[m, k] · rhs[k, n]` where `rhs` is `W` or `Wᵀ` as stored: the GEMM
    /// reads the stored row-major bytes through strides, packing them as it does any operand.
    fn gemm<T: 'static + Copy + num_traits::Zero + num_traits::One>(
        &self,
        lhs: &[T],
        layout: &Layout,
        w: &[T],
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let (rows, cols) = (self.w.rows, self.w.cols);
        // Element (i, j) of rhs is W[j, i] (not transposed) or W[i, j].
        let (want_k, n, rhs_rs, rhs_cs) = if self.transposed {
            (rows, cols, cols as isize, 1)
        } else {
            (cols, rows, 1, cols as isize)
        };
        if k != want_k {
            candle_core::bail!(
                "mapped matrix [{rows}, {cols}] multiplied with [{m}, {k}] (transposed: {})",
                self.transposed
            );
        }
        let stride = layout.stride();
        let lhs = &lhs[layout.start_offset()..];
        let mut dst = vec![T::zero(); m * n];
        if m == 0 || n == 0 {
            return Ok((dst, (m, n).into()));
        }
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: dst is [m, n] row-major; lhs is addressed through its layout's strides from
        // its start offset, within its storage (candle's own matmul passes the same); rhs
        // addresses rows * cols elements of `w` through the strides chosen above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                stride[1] as isize,
                stride[0] as isize,
                w.as_ptr(),
                rhs_cs,
                rhs_rs,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok((dst, (m, n).into()))
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
        match (storage, self.w.dtype) {
            (CpuStorage::F32(x), DType::F32) => {
                let (y, s) = self.gemm(x, layout, self.w.slice::<f32>())?;
                Ok((CpuStorage::F32(y), s))
            }
            (CpuStorage::F16(x), DType::F16) => {
                let (y, s) = self.gemm(x, layout, self.w.slice::<f16>())?;
                Ok((CpuStorage::F16(y), s))
            }
            (other, dtype) => candle_core::bail!(
                "a product of a mapped {dtype:?} matrix with {:?}",
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
    /// tensor, as in a real checkpoint) and mapped back.
    fn mapped(w: &Tensor) -> (tempfile::TempDir, WeightMatrix) {
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
        let m = MappedMatrix::new(files.clone(), view.data(), rows, cols, w.dtype())
            .expect("an aligned f32/f16 matrix is mapped");
        // Another dtype, or bytes that do not make the shape, are not mapped.
        assert!(MappedMatrix::new(files.clone(), view.data(), rows, cols, DType::BF16).is_none());
        assert!(MappedMatrix::new(files.clone(), view.data(), rows + 1, cols, w.dtype()).is_none());
        (dir, WeightMatrix::mapped(Arc::new(m)))
    }

    #[test]
    fn mapped_products_and_rows_match_the_tensor_ones() {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 2e-2)] {
            let w = randn(&[37, 19], 1, DType::F32, &Device::Cpu).unwrap();
            let w = w.to_dtype(dtype).unwrap();
            let (_dir, m) = mapped(&w);
            let t = WeightMatrix::tensor(w.clone());
            assert!(m.is_mapped() && !t.is_mapped());
            assert_eq!((m.dims2(), m.dtype()), ((37, 19), dtype));
            // Rows are copied bit for bit, any id shape; an id past the end is refused.
            let ids = Tensor::new(&[[36u32, 0, 5], [5, 2, 17]], &Device::Cpu).unwrap();
            assert_eq!(
                max_abs_diff(&m.rows(&ids).unwrap(), &t.rows(&ids).unwrap()),
                0.0
            );
            assert_eq!(m.rows(&ids).unwrap().dims(), [2, 3, 19]);
            let bad = Tensor::new(&[37u32], &Device::Cpu).unwrap();
            assert!(m.rows(&bad).is_err());
            assert_eq!(max_abs_diff(&m.to_tensor().unwrap(), &w), 0.0);
            assert!((m.std().unwrap() - t.std().unwrap()).abs() < 1e-12);
            // x · Wᵀ for a batch of rows, a single row (decoding) and a strided input.
            for rows in [1usize, 4, 33] {
                let x = randn(&[2, rows, 19], 2, DType::F32, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let want = t.linear_t(&x).unwrap();
                let got = m.linear_t(&x).unwrap();
                assert_eq!(got.dims(), [2, rows, 37]);
                assert!(max_abs_diff(&got, &want) < tol, "{dtype:?} rows {rows}");
            }
            let wide = randn(&[5, 38], 3, DType::F32, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let strided = wide.narrow(1, 7, 19).unwrap();
            assert!(!strided.is_contiguous());
            let want = t.linear_t(&strided.contiguous().unwrap()).unwrap();
            assert!(max_abs_diff(&m.linear_t(&strided).unwrap(), &want) < tol);
            // A product with another dtype is refused, not converted.
            let other = if dtype == DType::F32 {
                DType::F16
            } else {
                DType::F32
            };
            assert!(m
                .linear_t(&wide.narrow(1, 0, 19).unwrap().to_dtype(other).unwrap())
                .is_err());
        }
    }

    /// The input gradient of a product with a mapped matrix is `dy · W`, as through a tensor.
    #[test]
    fn mapped_product_passes_the_input_gradient() {
        let w = randn(&[23, 11], 4, DType::F32, &Device::Cpu).unwrap();
        let (_dir, m) = mapped(&w);
        let t = WeightMatrix::tensor(w);
        let x0 = randn(&[3, 11], 5, DType::F32, &Device::Cpu).unwrap();
        let probe = randn(&[3, 23], 6, DType::F32, &Device::Cpu).unwrap();
        let grad = |mat: &WeightMatrix| {
            let x = candle_core::Var::from_tensor(&x0).unwrap();
            let y = mat.linear_t(x.as_tensor()).unwrap();
            let loss = (y * &probe).unwrap().sum_all().unwrap();
            loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
        };
        let (gm, gt) = (grad(&m), grad(&t));
        assert_eq!(gm.dims(), [3, 11]);
        assert!(max_abs_diff(&gm, &gt) < 1e-5, "{}", max_abs_diff(&gm, &gt));
    }
}
