//! `toy-world`: the procedural visual world the `concepts` base model is pretrained on,
//! its word-level tokenizer, the pretraining task generators, and the Yo'LLaVA-style
//! personalisation dataset writer.
//!
//! Images are small (48-64 px) scenes of 1-3 objects, each a [`Combo`] of shape, main
//! colour, pattern and secondary colour, drawn at some size, position and rotation on a
//! solid, gradient or noisy background. A *subject* (the analogue of a user's pet) is a
//! named combo; its look-alikes differ from it in exactly one attribute.
//!
//! Key design choice: **everything is a pure function of a seed**. Randomness comes from
//! ChaCha8 streams, the rasteriser only uses IEEE-exact arithmetic (no libm `sin`, no
//! float formatting, no hash-map iteration), so the same seed gives byte-identical PNG and
//! JSON files on every machine. A fixed hash rule ([`Combo::split`]) holds out ~15% of
//! combos: pretraining samples never draw them at all, and every subject is drawn from
//! them, so personalisation always meets a combination the base model has never seen.
//!
//! This crate does no model work and knows nothing of candle or the CLI; the only I/O is
//! [`write_dataset`] and [`write_tokenizer`].
//!
//! ```
//! use rand::SeedableRng;
//! use toy_world::{build_tokenizer, choose_subjects, sample, ImageSize, TaskMix};
//!
//! // Pretraining samples: an optional image plus plain-text question and answer.
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let s = sample(&mut rng, &TaskMix::balanced(), ImageSize::DEFAULT);
//! let tokenizer = build_tokenizer();
//! let ids = tokenizer.encode(s.question.as_str(), true).unwrap();
//! assert!(!ids.get_ids().contains(&0), "every generated word is in the vocabulary");
//!
//! // Subjects are held out from pretraining and carry their true description.
//! let ziggy = &choose_subjects(7, 1).unwrap()[0];
//! assert!(ziggy.combo().is_held_out());
//! assert!(ziggy.description().starts_with('a'));
//! ```

#![deny(missing_docs)]

mod attr;
mod dataset;
mod error;
mod math;
mod render;
mod subject;
mod tasks;
pub mod text;
mod tokenizer;

pub use attr::{
    random_combo, Attribute, Colour, Combo, Difficulty, Pattern, Shape, Size, Split, Tone,
    HELD_OUT_PER_MILLE, LOW_CONTRAST_PAIRS,
};
pub use dataset::{write_dataset, DatasetConfig, DatasetSummary, LAYOUT_VERSION};
pub use error::{Error, Result};
pub use math::{fnv1a64, FNV1A64_START};
pub use render::{encode_png, render, Background, Direction, ImageSize, Object, Scene, Side};
pub use subject::{
    choose_subjects, generic_scene, group_photo, lookalike, pair_photo, photo_in_tone, photo_of,
    Member, Sizing, Subject, MAX_SUBJECTS,
};
pub use tasks::{
    caption_of, intrinsic_choice, intrinsic_choices, sample, visual_choice, Choice, Letter, Sample,
    TaskKind, TaskMix,
};
pub use tokenizer::{
    build_tokenizer, vocabulary, write_tokenizer, BOS, EOS, IMAGE, PAD, SPECIAL_TOKENS, UNK,
};
