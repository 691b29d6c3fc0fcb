//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while training a concept.
///
/// Input errors (`Input`, `Image`, `Identifier`, ...) are raised before any long work starts.
/// Messages are lowercase, carry no trailing period and name the item at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    // === Inputs, checked before any long work ===
    /// A training option or input is out of range or inconsistent.
    #[error("invalid input: {0}")]
    Input(String),

    /// An image could not be read or decoded, or is too small to train on.
    #[error("image `{}`: {msg}", path.display())]
    Image { path: PathBuf, msg: String },

    /// Fewer photos of the subject than the trainer needs.
    #[error("{found} photo(s) of the subject in `{}`, at least {min} are needed", dir.display())]
    TooFewPositives {
        dir: PathBuf,
        found: usize,
        min: usize,
    },

    /// The negative pool holds no usable image.
    #[error("the negative pool `{}` holds no usable image{detail}", path.display())]
    EmptyPool { path: PathBuf, detail: String },

    /// The concept identifier cannot be used with this base model or registry.
    #[error("identifier `{identifier}`: {msg}")]
    Identifier { identifier: String, msg: String },

    /// `--resume` was asked for but the saved state does not fit this job.
    #[error("cannot resume from `{}`: {msg}", path.display())]
    Resume { path: PathBuf, msg: String },

    // === During training ===
    /// A stage (miner, trainer or linker) failed or answered something unusable.
    #[error("{role}: {source}")]
    Stage {
        role: &'static str,
        // Boxed: the plugin host's error is large, and every `Result` here would carry it.
        source: Box<concepts_plugin_host::PluginError>,
    },

    /// The user interrupted training; the best checkpoint so far, if any, was written.
    #[error("interrupted{}", match .best { Some(p) => format!("; the best checkpoint so far is in `{}`", p.display()), None => " before the first epoch finished; nothing was written".to_string() })]
    Interrupted { best: Option<PathBuf> },

    // === Files and libraries ===
    /// A file or directory could not be read or written.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A cache, state or report file is malformed.
    #[error("file `{}`: {msg}", path.display())]
    File { path: PathBuf, msg: String },

    /// The model runtime failed.
    #[error(transparent)]
    Runtime(#[from] concepts_runtime::RuntimeError),

    /// The concept package could not be built or written.
    #[error(transparent)]
    Format(#[from] concept_format::FormatError),

    /// An output file could not be written (or is not a regular file).
    #[error(transparent)]
    Output(#[from] concepts_fs::FsError),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Runtime(e.into())
    }
}

impl TrainError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        TrainError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
