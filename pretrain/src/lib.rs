//! concepts-pretrain: pretrains the toy LLaVA base model on the procedural toy world.
//!
//! Key design choice: the model trained here is the runtime's own `LlavaModel`, built from
//! `Var`s with the runtime's differentiable kernels, so pretraining and inference share one
//! code path and the export is an ordinary llava-hf checkpoint (with our declared
//! convolutional vision stem). Everything is seeded; a run resumes exactly from its saved
//! state. This crate prints nothing and reads no environment; the CLI drives it.

pub mod corpus;
pub mod data;
pub mod error;
pub mod eval;
pub mod heads;
pub mod model;
pub mod optim;
pub mod train;

pub use error::{PretrainError, Result};
pub use eval::{EvalConfig, EvalReport, GateReport};
pub use model::{Params, ToySize};
pub use train::{Event, RunPaths, StepReport, TrainConfig, Trainer};
