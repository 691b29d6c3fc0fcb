//! Where the model's constructors take their weights from: a `VarBuilder` for dense tensors,
//! the checkpoint's memory map for matrices used in place, and, for a quantized model
//! folder, the quantized matrices of its linear layers.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use super::matrix::{MappedMatrix, WeightMatrix};
use crate::quant::QuantizedLinears;
use crate::weights::MappedFiles;

/// A `VarBuilder` (same methods, same prefixes) that also knows the quantized linear
/// weights and the memory-mapped files, looked up by the same hub-layout names.
#[derive(Clone)]
pub(crate) struct Weights<'a> {
    vb: VarBuilder<'a>,
    quantized: Option<Arc<QuantizedLinears>>,
    mapped: Option<Arc<MappedFiles>>,
}

impl<'a> Weights<'a> {
    pub(crate) fn new(
        vb: VarBuilder<'a>,
        quantized: Option<Arc<QuantizedLinears>>,
        mapped: Option<Arc<MappedFiles>>,
    ) -> Self {
        Weights {
            vb,
            quantized,
            mapped,
        }
    }

    /// Whether linear layers come quantized (a folder written by `concepts quantize`).
    pub(crate) fn is_quantized(&self) -> bool {
        self.quantized.is_some()
    }

    pub(crate) fn pp<S: ToString>(&self, s: S) -> Self {
        Weights {
            vb: self.vb.pp(s),
            quantized: self.quantized.clone(),
            mapped: self.mapped.clone(),
        }
    }

    /// The `[rows, cols]` matrix stored as `name`: read in place from the memory map where
    /// the kernels can use its bytes as stored (CPU, aligned, stored in the compute dtype or
    /// in half precision for an f32 computation; see `model::matrix`), else loaded as a
    /// tensor.
    pub(crate) fn matrix(
        &self,
        rows: usize,
        cols: usize,
        name: &str,
    ) -> candle_core::Result<WeightMatrix> {
        if let Some(m) = self.mapped_matrix(rows, cols, name) {
            return Ok(WeightMatrix::mapped(m));
        }
        Ok(WeightMatrix::tensor(self.vb.get((rows, cols), name)?))
    }

    /// The stored `[rows, cols]` matrix `name` used in place, where it can be.
    pub(crate) fn mapped_matrix(
        &self,
        rows: usize,
        cols: usize,
        name: &str,
    ) -> Option<Arc<MappedMatrix>> {
        let files = self.mapped.as_ref()?;
        if !self.vb.device().is_cpu() {
            return None;
        }
        files
            .matrix(&self.full_name(name), rows, cols, self.vb.dtype())
            .map(Arc::new)
    }

    fn full_name(&self, name: &str) -> String {
        match self.vb.prefix() {
            p if p.is_empty() => name.to_string(),
            p => format!("{p}.{name}"),
        }
    }

    pub(crate) fn prefix(&self) -> String {
        self.vb.prefix()
    }

    pub(crate) fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name) || self.quantized(name).is_some()
    }

    pub(crate) fn get<S: Into<Shape>>(&self, s: S, name: &str) -> candle_core::Result<Tensor> {
        self.vb.get(s, name)
    }

    pub(crate) fn get_with_hints<S: Into<Shape>>(
        &self,
        s: S,
        name: &str,
        hints: Init,
    ) -> candle_core::Result<Tensor> {
        self.vb.get_with_hints(s, name, hints)
    }

    /// The quantized matrix stored as `name` under this prefix, if the folder has one.
    pub(crate) fn quantized(&self, name: &str) -> Option<Arc<QTensor>> {
        self.quantized.as_ref()?.get(&self.full_name(name))
    }
}
