//! concepts-runtime: runs LLaVA-1.5 with personal concepts (Yo'LLaVA subjects) injected as
//! extra tokens, over candle tensors.
//!
//! Key design choice: the base model is frozen and never modified. Concepts live in a
//! separate [`ConceptTable`] whose embedding rows and head columns are spliced in per call,
//! and the model exposes an embeddings-in, hidden-states-out forward pass with two kernel
//! sets ([`Kernels`]): fused candle kernels for inference, and ops that candle can
//! back-propagate through for training concept embeddings.
//!
//! Model code (`model`, `ops`, `concept_table`) does no I/O; `weights` and `fingerprint`
//! read model directories.
//!
//! [`api::Runtime`] is the embedded API for host applications and servers: one resident base
//! model, concepts read from a [`api::ConceptSource`] per request, async and cancellable.

pub mod api;
pub mod compute;
pub mod concept_table;
pub mod config;
pub mod default_model;
pub mod error;
pub mod fingerprint;
pub mod generate;
mod madvise;
pub mod model;
pub mod ops;
pub mod optim;
pub mod preprocess;
pub mod prompt;
pub mod quant;
pub mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod weights;

pub use compute::Compute;
pub use concept_table::{ConceptTable, ConceptToken, ConceptWeights};
pub use config::LlavaConfig;
pub use error::{Result, RuntimeError};
pub use fingerprint::fingerprint;
pub use model::{BatchKvCache, KvCache, LlavaModel};
pub use ops::Kernels;
