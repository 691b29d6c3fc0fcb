//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `toy-world`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // Invalid values.
    /// An image side outside [`crate::ImageSize::MIN`]..=[`crate::ImageSize::MAX`].
    #[error("image size {px} px is outside {min}..={max}")]
    ImageSize {
        /// The requested side.
        px: u32,
        /// Smallest allowed side.
        min: u32,
        /// Largest allowed side.
        max: u32,
    },
    /// A tone index outside `0..Tone::COUNT`.
    #[error("tone {index} does not exist (tones are 0..3)")]
    InvalidTone {
        /// The index given.
        index: u8,
    },
    /// A combination that breaks a [`crate::Combo`] invariant.
    #[error("invalid combo `{key}`: {reason}")]
    InvalidCombo {
        /// The combination as `shape/colour/pattern[/secondary]`.
        key: String,
        /// Which invariant it breaks.
        reason: &'static str,
    },
    /// A subject name that is not a lowercase identifier.
    #[error("subject name `{name}` must be 1-24 lowercase ascii letters")]
    SubjectName {
        /// The rejected name.
        name: String,
    },
    /// A subject built from a combination that pretraining may contain.
    #[error("subject `{name}`: combo `{key}` is not held out from pretraining")]
    NotHeldOut {
        /// The subject's name.
        name: String,
        /// Its combination.
        key: String,
    },
    /// A task mix whose weights sum to zero.
    #[error("task mix has no task with a positive weight")]
    EmptyTaskMix,
    /// More subjects than the name list or held-out split can supply.
    #[error("{requested} subjects requested, at most {max} are available")]
    TooManySubjects {
        /// Requested count.
        requested: usize,
        /// Largest supported count.
        max: usize,
    },
    /// A dataset count in [`crate::DatasetConfig`] that is zero or too large.
    #[error("dataset config: `{field}` is {value}, expected {expected}")]
    DatasetConfig {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The allowed range, in words.
        expected: &'static str,
    },

    // Output.
    /// The dataset directory exists, is not empty and overwriting was not asked for.
    #[error("refusing to overwrite non-empty directory {}", path.display())]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was attempted ("create", "write", "rename", ...).
        op: &'static str,
        /// The path it was attempted on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("encode png {}: {source}", path.display())]
    Png {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
    /// JSON serialisation failed.
    #[error("serialise {}: {source}", path.display())]
    Json {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The `tokenizers` crate rejected the tokenizer or failed to save it.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
