//! Where a base model runs and in what precision: the `--device` and `--dtype` of every
//! command that loads one.

use std::path::Path;

use candle_core::{DType, Device};

use crate::error::{Result, RuntimeError};
use crate::quant;

/// The device and the compute dtype of a base model. Concept tensors, head columns and
/// logits stay f32 whatever this says; a quantized folder keeps its matrices quantized and
/// computes the rest in `dtype`.
#[derive(Debug, Clone)]
pub struct Compute {
    pub device: Device,
    pub dtype: DType,
}

impl Default for Compute {
    fn default() -> Self {
        Compute::cpu()
    }
}

impl Compute {
    /// f32 on the CPU.
    pub fn cpu() -> Self {
        Compute {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }

    /// From command-line words: `device` is `cpu` or `cuda` (GPU 0; needs a binary built
    /// with the `cuda` feature), `dtype` `f32`, `f16` or `bf16` (default: f32 on the CPU,
    /// f16 on CUDA).
    ///
    /// ```
    /// use concepts_runtime::Compute;
    /// let c = Compute::parse("cpu", Some("f16"))?;
    /// assert_eq!(c.dtype, candle_core::DType::F16);
    /// assert!(Compute::parse("tpu", None).is_err());
    /// # Ok::<(), concepts_runtime::RuntimeError>(())
    /// ```
    pub fn parse(device: &str, dtype: Option<&str>) -> Result<Self> {
        let device = match device {
            "cpu" => Device::Cpu,
            "cuda" => Device::new_cuda(0).map_err(|e| {
                RuntimeError::Unsupported(format!(
                    "device cuda: {e} (CUDA needs a binary built with `--features cuda`)"
                ))
            })?,
            other => {
                return Err(RuntimeError::Unsupported(format!(
                    "device `{other}`: expected cpu or cuda"
                )))
            }
        };
        let dtype = match dtype {
            None if device.is_cuda() => DType::F16,
            None | Some("f32") => DType::F32,
            Some("f16") => DType::F16,
            Some("bf16") => DType::BF16,
            Some(other) => {
                return Err(RuntimeError::Unsupported(format!(
                    "dtype `{other}`: expected f32, f16 or bf16"
                )))
            }
        };
        Ok(Compute { device, dtype })
    }

    /// What the model in `dir` computes with, in words for caches and logs: the dtype,
    /// the quantization of a quantized folder and the device, e.g. `q4k+f32 on cpu`.
    pub fn label(&self, dir: &Path) -> Result<String> {
        let dtype = self.dtype.as_str();
        let device = if self.device.is_cuda() { "cuda" } else { "cpu" };
        Ok(match quant::folder_format(dir)? {
            Some(f) => format!("{f}+{dtype} on {device}"),
            None => format!("{dtype} on {device}"),
        })
    }
}
