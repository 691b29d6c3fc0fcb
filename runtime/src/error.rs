//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `concepts-runtime`.
///
/// Messages are lowercase, carry no trailing period and name the item at fault.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    // === Files ===
    /// A file of the model directory could not be read.
    #[error("reading `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file of the model directory is not valid JSON of the expected shape.
    #[error("parsing `{path}`: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A safetensors file is malformed.
    #[error("safetensors file `{path}`: {source}")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A quantized-weights file (GGUF) is malformed or was not written by `concepts quantize`.
    #[error("quantized weights `{path}`: {source}")]
    Quantized {
        path: PathBuf,
        #[source]
        source: Box<candle_core::Error>,
    },

    // === Configuration ===
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// The configuration asks for something this runtime does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),

    // === Weights ===
    /// A tensor the model needs is not in the checkpoint.
    #[error("missing tensor `{name}`")]
    MissingTensor { name: String },

    /// A checkpoint tensor has another shape than the config implies.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// None or several of the known tensor-name layouts match the checkpoint.
    #[error("weight layout: {0}")]
    WeightLayout(String),

    // === Inputs ===
    /// A model input has the wrong shape, dtype or content.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    // === Concepts ===
    /// A concept's tensors do not fit the model, or the concept is unknown or already active.
    #[error("concept `{name}`: {msg}")]
    Concept { name: String, msg: String },

    // === Prompts and images ===
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer `{path}`: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    /// A prompt cannot be built or does not fit its inputs.
    #[error("prompt: {0}")]
    Prompt(String),

    /// An image could not be decoded or preprocessed.
    #[error(transparent)]
    Image(#[from] crate::preprocess::PreprocessError),

    // === Serving (`crate::api`) ===
    /// No concept of the source has this name or identifier.
    #[error("concept `{query}` is not installed")]
    ConceptNotFound { query: String },

    /// The concept source (e.g. the registry) failed to list or load concepts.
    #[error("concept source: {0}")]
    Source(String),

    /// A request exceeds a configured bound.
    #[error("{what} is {found}, the limit is {limit}")]
    Limit {
        what: &'static str,
        limit: u64,
        found: u64,
    },

    /// The request was cancelled before it finished.
    #[error("request cancelled")]
    Cancelled,

    // === Tensor backend ===
    /// Any other error raised by candle.
    #[error(transparent)]
    Candle(candle_core::Error),
}

/// The crate's result type.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl From<candle_core::Error> for RuntimeError {
    /// Lifts candle's missing-tensor and shape errors (raised by `VarBuilder` backends) into
    /// [`RuntimeError::MissingTensor`] and [`RuntimeError::TensorShape`], looking through
    /// backtrace and context wrappers.
    fn from(err: candle_core::Error) -> Self {
        fn find(err: &candle_core::Error) -> Option<RuntimeError> {
            match err {
                candle_core::Error::CannotFindTensor { path } => {
                    Some(RuntimeError::MissingTensor { name: path.clone() })
                }
                candle_core::Error::SafeTensor(safetensors::SafeTensorError::TensorNotFound(
                    name,
                )) => Some(RuntimeError::MissingTensor { name: name.clone() }),
                // `VarBuilder` backends word it so; other shape errors stay candle's.
                candle_core::Error::UnexpectedShape { msg, expected, got } => msg
                    .strip_prefix("shape mismatch for ")
                    .map(|name| RuntimeError::TensorShape {
                        name: name.to_string(),
                        expected: expected.dims().to_vec(),
                        actual: got.dims().to_vec(),
                    }),
                candle_core::Error::WithBacktrace { inner, .. }
                | candle_core::Error::Context { inner, .. }
                | candle_core::Error::WithPath { inner, .. } => find(inner),
                _ => None,
            }
        }
        find(&err).unwrap_or(RuntimeError::Candle(err))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;

    #[test]
    fn varbuilder_errors_become_tensor_errors() {
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(
            HashMap::from([("a.w".to_string(), t)]),
            DType::F32,
            &Device::Cpu,
        );
        match RuntimeError::from(vb.pp("a").get((3, 2), "w").unwrap_err()) {
            RuntimeError::TensorShape {
                name,
                expected,
                actual,
            } => assert_eq!(
                (name.as_str(), expected, actual),
                ("a.w", vec![3, 2], vec![2, 3])
            ),
            other => panic!("{other}"),
        }
        match RuntimeError::from(vb.get(3, "b").unwrap_err()) {
            RuntimeError::MissingTensor { name } => assert_eq!(name, "b"),
            other => panic!("{other}"),
        }
        let other = Tensor::zeros(4, DType::F32, &Device::Cpu)
            .unwrap()
            .reshape((3, 2))
            .unwrap_err();
        assert!(matches!(RuntimeError::from(other), RuntimeError::Candle(_)));
    }
}
