//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while evaluating.
///
/// Messages are lowercase, carry no trailing period and name the file or item at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    // === The dataset ===
    /// The folder is in neither the toy-world nor the Yo'LLaVA layout.
    #[error("`{}` is not an evaluation dataset: {msg}", path.display())]
    Layout {
        /// The dataset folder.
        path: PathBuf,
        /// What is missing.
        msg: String,
    },

    /// A dataset file exists but its content is wrong.
    #[error("`{}`: {msg}", path.display())]
    Dataset {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong, with the expected and found values.
        msg: String,
    },

    /// A JSON file of the dataset does not parse.
    #[error("`{}`: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: serde_json::Error,
    },

    /// An option is out of range or the dataset cannot support it.
    #[error("invalid evaluation setting: {0}")]
    Setting(String),

    // === Work ===
    /// A file or folder could not be read or written.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// What was being done ("reading", "creating", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Training a subject's concept failed.
    #[error("training the concept of `{subject}`: {source}")]
    Training {
        /// The subject.
        subject: String,
        /// The trainer's error.
        #[source]
        source: concepts_trainer::TrainError,
    },

    /// A cached or trained concept package could not be read.
    #[error("concept package `{}`: {source}", path.display())]
    Package {
        /// The package file.
        path: PathBuf,
        /// The format's error.
        #[source]
        source: concept_format::FormatError,
    },

    /// The model failed (loading, preprocessing an image, a forward pass).
    #[error(transparent)]
    Runtime(#[from] concepts_runtime::RuntimeError),

    /// An image could not be read or preprocessed.
    #[error("image `{}`: {msg}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The preprocessor's message.
        msg: String,
    },

    /// The evaluation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl EvalError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        EvalError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn dataset(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        EvalError::Dataset {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// `Result` with [`EvalError`].
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
