//! The pretraining error type.

use std::path::PathBuf;

/// Errors of pretraining, checkpointing and export.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    /// The model code failed (shapes, dtypes, a missing weight).
    #[error(transparent)]
    Runtime(#[from] concepts_runtime::RuntimeError),
    /// A tensor op failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The toy world rejected a request.
    #[error(transparent)]
    ToyWorld(#[from] toy_world::Error),
    /// Image preprocessing failed.
    #[error(transparent)]
    Preprocess(#[from] concepts_runtime::preprocess::PreprocessError),
    /// A file could not be read or written.
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("`{path}`: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The tokenizer failed or met a word outside the vocabulary.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A saved training state does not fit this run.
    #[error("training state `{path}`: {message}")]
    State { path: PathBuf, message: String },
    /// A configuration value is out of range.
    #[error("invalid pretraining config: {0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error("loss is not finite at step {step}: {loss}")]
    NonFinite { step: u64, loss: f32 },
}

/// `Result` with [`PretrainError`].
pub type Result<T, E = PretrainError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PretrainError + '_ {
    move |source| PretrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
