//! Where the model's constructors take their weights from: a `VarBuilder` for dense tensors
//! and, for a quantized model folder, the quantized matrices of its linear layers.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::quant::QuantizedLinears;

/// A `VarBuilder` (same methods, same prefixes) that also knows the quantized linear
/// weights, looked up by the same hub-layout names.
#[derive(Clone)]
pub(crate) struct Weights<'a> {
    vb: VarBuilder<'a>,
    quantized: Option<Arc<QuantizedLinears>>,
}

impl<'a> Weights<'a> {
    pub(crate) fn new(vb: VarBuilder<'a>, quantized: Option<Arc<QuantizedLinears>>) -> Self {
        Weights { vb, quantized }
    }

    pub(crate) fn pp<S: ToString>(&self, s: S) -> Self {
        Weights {
            vb: self.vb.pp(s),
            quantized: self.quantized.clone(),
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
        let full = match self.vb.prefix() {
            p if p.is_empty() => name.to_string(),
            p => format!("{p}.{name}"),
        };
        self.quantized.as_ref()?.get(&full)
    }
}
