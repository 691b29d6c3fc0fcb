//! Asking the model one question and reading off its answer without generating text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use concepts_runtime::generate;
use concepts_runtime::preprocess::{preprocess_file, PixelValues};
use concepts_runtime::session::Engine;

use crate::dataset::Letter;
use crate::error::{EvalError, Result};

/// Preprocessed images, each file read once.
#[derive(Default)]
pub struct ImageCache {
    images: HashMap<PathBuf, PixelValues>,
}

impl ImageCache {
    /// The pixel values of `path` for `engine`'s preprocessing.
    pub fn get(&mut self, engine: &Engine, path: &Path) -> Result<&PixelValues> {
        if !self.images.contains_key(path) {
            let pixels = preprocess_file(path, engine.preprocess_config()).map_err(|e| {
                EvalError::Image {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                }
            })?;
            self.images.insert(path.to_path_buf(), pixels);
        }
        Ok(&self.images[path])
    }
}

/// Whether the model answers "Yes" (p(Yes) > p(No) at the first answer position) to
/// `message`, asked in the chat template with the engine's active concepts.
pub fn says_yes(engine: &Engine, message: &str, image: Option<&PixelValues>) -> Result<bool> {
    let prompt = engine.chat_prompt(message, image.cloned());
    Ok(engine.recognize(&prompt)?.is_yes())
}

/// The letter the model prefers (p(A) vs p(B) at the first answer position) for an A/B
/// `message`.
pub fn picks(engine: &Engine, message: &str, image: Option<&PixelValues>) -> Result<Letter> {
    let prompt = engine.chat_prompt(message, image.cloned());
    let a = engine.codec().answer_token("A")?;
    let b = engine.codec().answer_token("B")?;
    let embedded = engine.embed_prompt(&prompt)?;
    let r = generate::recognize(engine.model(), engine.concepts(), &embedded, a, b)?;
    Ok(if r.p_yes >= r.p_no {
        Letter::A
    } else {
        Letter::B
    })
}
