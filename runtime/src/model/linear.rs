//! The linear layer shared by the vision tower, the projector and the decoder.

use std::sync::Arc;

use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Result, RuntimeError};
use crate::model::amx;
use crate::model::block_dots::{self, Blocks};
use crate::model::matrix::WeightMatrix;
use crate::model::source::Weights;

/// `y = x · Wᵀ + b` for a checkpoint weight `W` of shape `[out, in]`.
pub(crate) struct Linear {
    weight: LinearWeight,
    in_features: usize,
    out_features: usize,
    bias: Option<Tensor>,
    /// The bias in f32 for a quantized weight: its product on the CPU adds it as it writes
    /// the result, instead of a separate pass (and candle's thread pool) over the output.
    bias_f32: Option<Arc<[f32]>>,
}

enum LinearWeight {
    /// `Wᵀ`, `[in, out]` and contiguous: candle's CPU GEMM runs measurably faster on it than
    /// on a transposed view, at the cost of one copy at load.
    Dense(Tensor),
    /// `W` as stored, `[out, in]`, read in place from the checkpoint's memory map: no copy
    /// at load, the GEMM reads it through transposing strides (`crate::model::matrix`).
    Mapped(WeightMatrix),
    /// `W` quantized by rows, `[out, padded_in]`: quantized blocks span the input dimension,
    /// so an input width that is not a multiple of the block size was padded with zero
    /// columns (`crate::quant`), and the input is padded with zeros to match.
    Quantized(Arc<QTensor>),
}

impl Linear {
    pub(crate) fn load(
        vb: Weights,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = match vb.quantized("weight") {
            Some(q) => {
                let (rows, cols) = q.shape().dims2()?;
                let block = q.dtype().block_size();
                if rows != out_features || cols != in_features.div_ceil(block) * block {
                    return Err(RuntimeError::TensorShape {
                        name: format!("{}.weight (quantized)", vb.prefix()),
                        expected: vec![out_features, in_features.div_ceil(block) * block],
                        actual: vec![rows, cols],
                    });
                }
                LinearWeight::Quantized(q)
            }
            None => match vb.mapped_matrix(out_features, in_features, "weight") {
                Some(m) => LinearWeight::Mapped(WeightMatrix::mapped(m)),
                None => {
                    let w = vb.get((out_features, in_features), "weight")?;
                    LinearWeight::Dense(w.t()?.contiguous()?)
                }
            },
        };
        let bias = if bias {
            Some(vb.get(out_features, "bias")?)
        } else {
            None
        };
        let bias_f32 = match (&weight, &bias) {
            (LinearWeight::Quantized(_), Some(b)) => {
                Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?.into())
            }
            _ => None,
        };
        Ok(Linear {
            weight,
            in_features,
            out_features,
            bias,
            bias_f32,
        })
    }

    /// `[.., in]` -> `[.., out]`, as one matrix product over the folded leading dims.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (&inner, lead) = dims.split_last().unwrap_or((&0, &[]));
        let rows: usize = lead.iter().product();
        let x = x.reshape((rows, inner))?;
        // Whether the product adds the bias itself (quantized, on the CPU).
        let bias_added = self.bias_f32.is_some() && x.device().is_cpu();
        let y = match &self.weight {
            LinearWeight::Dense(w_t) => crate::ops::matmul(&x, w_t)?,
            LinearWeight::Mapped(w) => w.linear_t(&x)?,
            LinearWeight::Quantized(w) => {
                let padded = w.shape().dims()[1];
                let x = if padded > self.in_features {
                    x.pad_with_zeros(1, 0, padded - self.in_features)?
                } else {
                    x.contiguous()?
                };
                let bias = self.bias_f32.clone().filter(|_| bias_added);
                x.apply_op1(QuantizedMatmul(w.clone(), bias))?
            }
        };
        let y = match &self.bias {
            Some(b) if !bias_added => y.broadcast_add(b)?,
            _ => y,
        };
        let mut shape = lead.to_vec();
        shape.push(self.out_features);
        Ok(y.reshape(shape)?)
    }
}

/// `x · Wᵀ (+ b)` for a quantized `W` (`x` is `[m, k]`, contiguous): a forward on candle's
/// quantized kernels (the input quantized on the fly, as llama.cpp does), and a backward that
/// gives the input its gradient `dy · W` through the dequantized matrix. The frozen weight
/// itself gets none; this is what lets concepts train on a quantized base.
///
/// `QTensor`'s own forward is not called on the stored matrix: on x86 it caches a repacked
/// copy of every matrix it multiplies (VNNI/AMX tiles, kept beside the original), which took
/// a Q4_K LLaVA-1.5-7B from 5.8 GB after loading to a 20 GB peak during the first prefill.
/// Inputs of fewer than [`REPACK_ROWS`] rows (decoding) are multiplied with the blocks as
/// stored: Q8_0 ones of at most [`block_dots::MAX_ROWS`] rows by [`block_dots`], the others by
/// candle's block kernels (`k_quants::matmul`). Larger ones (prefills, image encoding) get a
/// transient copy of the matrix, repacked by that forward and dropped after the call, so the
/// repacked kernels' speed costs one matrix of memory.
/// Where candle has no repacked kernel for the format ([`candle_repacks`]), large inputs are
/// multiplied on the f32 GEMM through a dequantized copy instead ([`dequantized_matmul`]).
/// Where the CPU has AMX ([`amx::available`]), large inputs against Q8_0, Q4_K and Q6_K
/// matrices of at least [`MIN_TILE_ELEMENTS`] go to bf16 tiles instead ([`amx::matmul_t`],
/// which checks the shapes), as a bf16 prefill in PyTorch does on such a CPU: three times
/// faster than the repacked kernels there, and no transient copy.
///
/// A bias, where given, is added to the product on the CPU (the CUDA forward does not take
/// one: the caller adds it there).
struct QuantizedMatmul(Arc<QTensor>, Option<Arc<[f32]>>);

/// Rows from which a quantized product repacks its matrix for the call. Measured on the
/// 7B shape (2 threads, AVX-512 VNNI): the prefill took 43 s repacked against 108 s on the
/// block kernels, decoding 1.1 tokens/s repacked against 2.4.
const REPACK_ROWS: usize = 16;

impl QuantizedMatmul {
    /// `x · Wᵀ + bias`.
    fn matmul(&self, mkn: (usize, usize, usize), lhs: &[f32]) -> candle_core::Result<Vec<f32>> {
        let bias = self.1.as_deref();
        if takes_tiles(mkn) {
            // The tiles add the bias as they write.
            if let Some(y) = self.tile_product(mkn, lhs, bias)? {
                return Ok(y);
            }
        }
        let mut y = self.product(mkn, lhs)?;
        if let Some(bias) = bias {
            for row in y.chunks_exact_mut(mkn.2) {
                for (y, b) in row.iter_mut().zip(bias) {
                    *y += b;
                }
            }
        }
        Ok(y)
    }

    /// The product on AMX tiles, for the block formats (an f32 "quantized" matrix stays
    /// exact): `None` for other formats.
    fn tile_product(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f32],
        bias: Option<&[f32]>,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let bytes = self.0.data()?;
        Ok(match self.0.dtype() {
            GgmlDType::Q8_0 => Some(amx::matmul_t(
                mkn,
                lhs,
                blocks::<block_dots::BlockQ8_0>(&bytes)?,
                bias,
            )),
            GgmlDType::Q4K => Some(amx::matmul_t(
                mkn,
                lhs,
                blocks::<block_dots::BlockQ4K>(&bytes)?,
                bias,
            )),
            GgmlDType::Q6K => Some(amx::matmul_t(
                mkn,
                lhs,
                blocks::<block_dots::BlockQ6K>(&bytes)?,
                bias,
            )),
            _ => None,
        })
    }

    /// `x · Wᵀ` off the tiles.
    fn product(&self, mkn: (usize, usize, usize), lhs: &[f32]) -> candle_core::Result<Vec<f32>> {
        let bytes = self.0.data()?;
        if mkn.0 >= REPACK_ROWS && !candle_repacks(self.0.dtype()) {
            return match self.0.dtype() {
                GgmlDType::Q8_0 => dequantized_matmul(mkn, lhs, blocks::<BlockQ8_0>(&bytes)?),
                other => candle_core::bail!("quantized linear layers of type {other:?}"),
            };
        }
        if mkn.0 >= REPACK_ROWS {
            let storage = QStorage::from_data(bytes, &Device::Cpu, self.0.dtype())?;
            let transient = QTensor::new(storage, self.0.shape().clone())?;
            let x = Tensor::from_slice(lhs, (mkn.0, mkn.1), &Device::Cpu)?;
            let y = x.apply_op1_no_bwd(&transient)?;
            return y.flatten_all()?.to_vec1::<f32>();
        }
        if mkn.0 <= block_dots::MAX_ROWS {
            if let Some(blocks) = Blocks::from_bytes(self.0.dtype(), &bytes) {
                let (m, k, n) = mkn;
                return Ok(block_dots::product(lhs, k, m, blocks, n, k));
            }
        }
        let mut dst = vec![0f32; mkn.0 * mkn.2];
        match self.0.dtype() {
            GgmlDType::Q8_0 => k_quants::matmul(mkn, lhs, blocks::<BlockQ8_0>(&bytes)?, &mut dst)?,
            GgmlDType::Q4K => k_quants::matmul(mkn, lhs, blocks::<BlockQ4K>(&bytes)?, &mut dst)?,
            GgmlDType::Q6K => k_quants::matmul(mkn, lhs, blocks::<BlockQ6K>(&bytes)?, &mut dst)?,
            GgmlDType::F32 => k_quants::matmul(mkn, lhs, blocks::<f32>(&bytes)?, &mut dst)?,
            other => candle_core::bail!("quantized linear layers of type {other:?}"),
        }
        Ok(dst)
    }
}

/// Whether candle's forward runs `dtype` on repacked kernels on this CPU. Its x86 kernels
/// take Q4_K from AVX2 on but Q8_0 only with VNNI (`dpbusd`; AVX2's `maddubs` would overflow,
/// candle's `repack_x86::select`); without VNNI its Q8_0 forward falls back to the block dot
/// products, one row and four columns at a time: a 7B prompt's prefill took 6.5 minutes in
/// q8_0 against 75 s in q4k on this project's 2-core AVX2 machine.
fn candle_repacks(dtype: GgmlDType) -> bool {
    #[cfg(target_arch = "x86_64")]
    if dtype == GgmlDType::Q8_0 {
        use std::arch::is_x86_feature_detected as has;
        return (has!("avx512f") && has!("avx512vnni")) || (has!("avxvnni") && has!("avx2"));
    }
    let _ = dtype;
    true
}

/// Rows of `W` dequantized and multiplied at a time, and of those, per dequantizing task.
const DEQUANTIZE_CHUNK: usize = 1024;
const DEQUANTIZE_TASK: usize = 64;

/// `x · Wᵀ` (`x` `[m, k]`, `W` `[n, k]` as `blocks`) on the f32 GEMM, `W` dequantized
/// [`DEQUANTIZE_CHUNK`] rows at a time into a transient f32 buffer: for a prefill where candle
/// has no repacked kernel, the f32 GEMM's throughput for at most 45 MB of f32 (LLaVA-7B's
/// widest rows) held during the call. The input is not quantized, unlike the block kernels'.
fn dequantized_matmul<T: GgmlType + Sync>(
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    blocks: &[T],
) -> candle_core::Result<Vec<f32>> {
    let per_row = k / T::BLCK_SIZE;
    if k % T::BLCK_SIZE != 0 || blocks.len() != n * per_row || lhs.len() != m * k {
        candle_core::bail!(
            "dequantized product of [{m}, {k}] with {} blocks for [{n}, {k}]",
            blocks.len()
        );
    }
    let x = Tensor::from_slice(lhs, (m, k), &Device::Cpu)?;
    let mut y = vec![0f32; m * n];
    for start in (0..n).step_by(DEQUANTIZE_CHUNK) {
        let rows = DEQUANTIZE_CHUNK.min(n - start);
        let mut w = vec![0f32; rows * k];
        w.par_chunks_mut(DEQUANTIZE_TASK * k)
            .zip(
                blocks[start * per_row..(start + rows) * per_row]
                    .par_chunks(DEQUANTIZE_TASK * per_row),
            )
            .for_each(|(w, blocks)| T::to_float(blocks, w));
        let w = Tensor::from_vec(w, (rows, k), &Device::Cpu)?;
        let part = x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        for (y, part) in y.chunks_exact_mut(n).zip(part.chunks_exact(rows)) {
            y[start..start + rows].copy_from_slice(part);
        }
    }
    Ok(y)
}

/// The fewest weights a quantized matrix needs for its prefill-sized products to go to the
/// AMX tiles. Every linear layer of a 7B model has at least 2^20; the toy base (128 × 344)
/// and the parity fixture stay on the kernels that keep the input in f32 or 8 bits: there
/// the tiles gain nothing measurable, and concepts trained on a quantized toy base through
/// the bf16 tiles differed more than a point from those trained without them (seed 1, q8_0:
/// recognition 0.888 against 0.933, one draw each; not isolated from training noise).
const MIN_TILE_ELEMENTS: usize = 1 << 20;

/// Whether a product `[m, k] · [k, n]` over a quantized matrix runs on AMX tiles.
fn takes_tiles((m, k, n): (usize, usize, usize)) -> bool {
    m >= REPACK_ROWS && k * n >= MIN_TILE_ELEMENTS && amx::available()
}

/// The blocks of a CPU quantized tensor's storage (a `Vec<T>`, so aligned for `T`).
fn blocks<T>(bytes: &[u8]) -> candle_core::Result<&[T]> {
    match block_dots::cast(bytes) {
        Some(blocks) => Ok(blocks),
        None => candle_core::bail!("quantized storage is not a whole, aligned run of blocks"),
    }
}

impl CustomOp1 for QuantizedMatmul {
    fn name(&self) -> &'static str {
        "quantized-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.shape().dims2()?;
        let (m, k_in) = layout.shape().dims2()?;
        if k_in != k {
            candle_core::bail!("quantized linear of [{n}, {k}] applied to [{m}, {k_in}]");
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quantized linear on a non-contiguous input");
        };
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(self.matmul((m, k, n), &x[start..end])?),
            CpuStorage::F16(x) => {
                let x: Vec<f32> = x[start..end].iter().map(|v| v.to_f32()).collect();
                let y = self.matmul((m, k, n), &x)?;
                CpuStorage::F16(y.into_iter().map(half::f16::from_f32).collect())
            }
            CpuStorage::BF16(x) => {
                let x: Vec<f32> = x[start..end].iter().map(|v| v.to_f32()).collect();
                let y = self.matmul((m, k, n), &x)?;
                CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect())
            }
            other => candle_core::bail!(
                "quantized linear on {:?} input",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        };
        Ok((out, Shape::from((m, n))))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.0.cuda_fwd(storage, layout)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let w = self.0.dequantize(arg.device())?;
        let grad = grad_res.to_dtype(DType::F32)?.matmul(&w)?;
        Ok(Some(grad.to_dtype(arg.dtype())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, randn};

    /// A prefill-sized quantized product (where candle has no repacked kernel, through the
    /// dequantized matrix) agrees with the decode-sized one, row by row, within the block
    /// kernels' rounding of the input to 8 bits; and, where it is dequantized, with `x · Wᵀ`
    /// over the dequantized matrix itself. A bias given to the product is added exactly as a
    /// separate `broadcast_add` adds it.
    #[test]
    fn prefill_and_decode_sized_quantized_products_agree() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            // More rows than one dequantized chunk, and a partial chunk; enough weights for
            // the AMX tiles where the CPU has them.
            let w = randn(&[DEQUANTIZE_CHUNK + 76, 1024], 1, DType::F32, &Device::Cpu).unwrap();
            let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
            let x = randn(&[REPACK_ROWS + 3, 1024], 2, DType::F32, &Device::Cpu).unwrap();
            let op = || QuantizedMatmul(q.clone(), None);
            let all = x.apply_op1_no_bwd(&op()).unwrap();
            // A bias is added as `broadcast_add` adds it, on the tiles and off them.
            let n = q.shape().dims()[0];
            let bias = randn(&[n], 3, DType::F32, &Device::Cpu).unwrap();
            let with_bias = QuantizedMatmul(q.clone(), Some(bias.to_vec1::<f32>().unwrap().into()));
            for rows in [x.dim(0).unwrap(), 1] {
                let x = x.narrow(0, 0, rows).unwrap();
                let plain = x
                    .apply_op1_no_bwd(&op())
                    .unwrap()
                    .broadcast_add(&bias)
                    .unwrap();
                let fused = x.apply_op1_no_bwd(&with_bias).unwrap();
                assert_eq!(max_abs_diff(&plain, &fused), 0.0, "{dtype:?}, {rows} rows");
            }
            let one_by_one = (0..x.dim(0).unwrap())
                .map(|r| x.narrow(0, r, 1).unwrap().apply_op1_no_bwd(&op()).unwrap())
                .collect::<Vec<_>>();
            let one_by_one = Tensor::cat(&one_by_one, 0).unwrap();
            let scale = max_abs_diff(&all, &all.zeros_like().unwrap());
            let diff = max_abs_diff(&all, &one_by_one) / scale;
            assert!(diff < 2e-2, "{dtype:?}: {diff}");
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let want = x.matmul(&dense.t().unwrap()).unwrap();
            let (m, k) = x.dims2().unwrap();
            if takes_tiles((m, k, q.shape().dims()[0])) {
                // On AMX tiles: both operands rounded to bf16 (8 significant bits).
                let off = max_abs_diff(&all, &want) / scale;
                assert!(off < 1e-2, "{dtype:?}: tile product off by {off}");
            } else if !candle_repacks(dtype) {
                assert!(max_abs_diff(&all, &want) < 1e-4, "{dtype:?}");
            }
        }
    }
}
