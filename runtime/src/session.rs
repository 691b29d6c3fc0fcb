//! [`Engine`]: a loaded model with its tokenizer, image preprocessor and active concepts,
//! turning text and images into prompts and prompts into answers.
//!
//! Key design choice: the engine owns the concept token map. Activating or deactivating a
//! concept updates the [`ConceptTable`] (token ids after the base vocabulary) and rebuilds the
//! [`TextCodec`] so that the concept's markers (`<bo>`, `<bo:1>` …) tokenize to those ids;
//! the base model, tokenizer file and weights are never modified.
//!
//! The model and tokenizer sit behind `Arc`s: [`Engine::with_concepts`] makes another
//! engine over the same weights with its own concept set, which is how a server gives each
//! request its own concepts without copying or locking the base model.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use concept_format::{ConceptPackage, ModelFingerprint};
use tokenizers::Tokenizer;

use crate::concept_table::{ConceptTable, ConceptWeights};
use crate::error::{Result, RuntimeError};
use crate::fingerprint::{fingerprint, TOKENIZER_FILE};
use crate::generate::{self, EmbeddedPrompt, GenerateConfig, Generation, Recognition};
use crate::model::{KvCache, LlavaModel};
use crate::ops::Kernels;
use crate::preprocess::{PixelValues, PreprocessConfig};
use crate::prompt::{
    expand_image_tokens, load_tokenizer, ConceptMarkers, Conversation, MarkerId, PersonalPrompts,
    TextCodec, IMAGE_MARKER, TEMPLATE_ID,
};

/// A prompt's text and the images its `<image>` markers stand for, in order.
#[derive(Debug, Clone)]
pub struct PromptInput {
    /// The full text given to the tokenizer (template already applied, or raw).
    pub text: String,
    pub images: Vec<PixelValues>,
}

/// A prompt after [`Engine::tokenize`]: its token ids (each `<image>` expanded to one position
/// per image feature), the positions of each image, and the images. A server tokenizes once,
/// to check the prompt's length, and embeds later where it runs.
#[derive(Debug, Clone)]
pub struct TokenizedPrompt {
    pub ids: Vec<u32>,
    pub spans: Vec<Range<usize>>,
    pub images: Vec<PixelValues>,
}

/// A loaded model ready to answer.
pub struct Engine {
    model: Arc<LlavaModel>,
    tokenizer: Arc<Tokenizer>,
    tokenizer_path: PathBuf,
    preprocess: PreprocessConfig,
    model_dir: Option<PathBuf>,
    fingerprint: Option<ModelFingerprint>,
    table: ConceptTable,
    markers: Vec<(String, ConceptMarkers)>,
    personal_prompts: PersonalPrompts,
    codec: Arc<TextCodec>,
}

impl Engine {
    /// Loads a llava-hf model directory: `config.json`, the safetensors weights,
    /// `tokenizer.json` and (optionally) `preprocessor_config.json`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let model = LlavaModel::load(dir, device, dtype)?;
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer = load_tokenizer(&tokenizer_path)?;
        let preprocess =
            PreprocessConfig::from_model_dir(dir, model.config().vision.image_size as u32)?;
        let mut engine = Engine::from_parts(model, tokenizer, &tokenizer_path, preprocess)?;
        engine.model_dir = Some(dir.to_path_buf());
        Ok(engine)
    }

    /// An engine over parts already in memory; `tokenizer_path` names the tokenizer in
    /// messages. Concept packages can only be activated with
    /// [`Engine::activate_package`] when the engine was [`Engine::load`]ed from a directory
    /// (their model fingerprint is checked against it).
    pub fn from_parts(
        model: LlavaModel,
        tokenizer: Tokenizer,
        tokenizer_path: &Path,
        preprocess: PreprocessConfig,
    ) -> Result<Self> {
        let image_size = model.config().vision.image_size as u32;
        if let Some((h, w)) = preprocess.crop {
            if (h, w) != (image_size, image_size) {
                return Err(RuntimeError::InvalidConfig(format!(
                    "preprocessor crops {h}x{w}, the vision tower takes {image_size}x{image_size}"
                )));
            }
        }
        let codec = Arc::new(TextCodec::new(&tokenizer, tokenizer_path, &[])?);
        let table = ConceptTable::new(&model);
        Ok(Engine {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            tokenizer_path: tokenizer_path.to_path_buf(),
            preprocess,
            model_dir: None,
            fingerprint: None,
            table,
            markers: Vec::new(),
            personal_prompts: PersonalPrompts::default(),
            codec,
        })
    }

    pub fn model(&self) -> &LlavaModel {
        &self.model
    }

    /// The shared model itself, for work that outlives a borrow of this engine.
    pub fn model_arc(&self) -> &Arc<LlavaModel> {
        &self.model
    }

    pub fn concepts(&self) -> &ConceptTable {
        &self.table
    }

    /// The tokenizer for the active concepts.
    pub fn codec(&self) -> &TextCodec {
        &self.codec
    }

    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Activates a concept under `name`, written in prompts as `identifier` (e.g. `<bo>`).
    pub fn activate(
        &mut self,
        name: &str,
        identifier: &str,
        weights: ConceptWeights,
    ) -> Result<()> {
        push_concept(
            &mut self.table,
            &mut self.markers,
            name,
            identifier,
            weights,
        )?;
        self.rebuild_codec()
    }

    /// A new engine over the same model, tokenizer and preprocessing (shared, not copied)
    /// with exactly `concepts` active, in this order: `(name, identifier, weights)`.
    ///
    /// This engine's own active concepts are not carried over and it is not changed. The
    /// cost is one tokenizer rebuild plus reference counts, whatever the number of concepts.
    pub fn with_concepts<'a>(
        &self,
        concepts: impl IntoIterator<Item = (&'a str, &'a str, ConceptWeights)>,
    ) -> Result<Engine> {
        self.with_concepts_cached(concepts, None)
    }

    /// [`Engine::with_concepts`] that takes the tokenizer for these markers from `codecs`
    /// when an earlier engine built it (a server's requests repeat a few concept sets).
    pub fn with_concepts_cached<'a>(
        &self,
        concepts: impl IntoIterator<Item = (&'a str, &'a str, ConceptWeights)>,
        codecs: Option<&CodecCache>,
    ) -> Result<Engine> {
        let mut table = ConceptTable::new(&self.model);
        let mut markers = Vec::new();
        for (name, identifier, weights) in concepts {
            push_concept(&mut table, &mut markers, name, identifier, weights)?;
        }
        let ids = marker_ids(&table, &markers)?;
        let build = || TextCodec::new(&self.tokenizer, &self.tokenizer_path, &ids).map(Arc::new);
        let codec = match codecs {
            Some(codecs) => codecs.get_or_build(&ids, build)?,
            None => build()?,
        };
        Ok(Engine {
            model: Arc::clone(&self.model),
            tokenizer: Arc::clone(&self.tokenizer),
            tokenizer_path: self.tokenizer_path.clone(),
            preprocess: self.preprocess.clone(),
            model_dir: self.model_dir.clone(),
            fingerprint: self.fingerprint.clone(),
            table,
            markers,
            personal_prompts: self.personal_prompts,
            codec,
        })
    }

    /// Activates a concept package after checking its prompt template and that it was
    /// trained against this model (fingerprint of embeddings, LM head and tokenizer).
    pub fn activate_package(&mut self, package: &ConceptPackage) -> Result<()> {
        self.fingerprint()?;
        let weights = self.package_weights(package)?;
        let manifest = package.manifest();
        self.activate(&manifest.name, &manifest.identifier, weights)
    }

    /// Checks a concept package as [`Engine::activate_package`] does (prompt template and
    /// base-model fingerprint) and converts its tensors to the model's dtype and device,
    /// without activating it.
    pub fn package_weights(&self, package: &ConceptPackage) -> Result<ConceptWeights> {
        let manifest = package.manifest();
        let err = |msg: String| RuntimeError::Concept {
            name: manifest.name.clone(),
            msg,
        };
        if manifest.prompt_template != TEMPLATE_ID {
            return Err(err(format!(
                "uses prompt template `{}`, this runtime implements `{TEMPLATE_ID}`",
                manifest.prompt_template
            )));
        }
        let computed;
        let ours = match &self.fingerprint {
            Some(fp) => fp,
            None => {
                computed = self.compute_fingerprint()?;
                &computed
            }
        };
        if manifest.base_model != *ours {
            return Err(err(format!(
                "was trained for base model {:?}, this model is {:?}",
                manifest.base_model, ours
            )));
        }
        ConceptWeights::from_format(package.tensors(), self.model.dtype(), self.model.device())
    }

    /// Deactivates a concept; the ids of later concepts move down.
    pub fn deactivate(&mut self, name: &str) -> Result<()> {
        self.table.deactivate(name)?;
        self.markers.retain(|(n, _)| n != name);
        self.rebuild_codec()
    }

    /// The fingerprint of the loaded model directory, computed once.
    pub fn fingerprint(&mut self) -> Result<&ModelFingerprint> {
        if self.fingerprint.is_none() {
            self.fingerprint = Some(self.compute_fingerprint()?);
        }
        Ok(self.fingerprint.as_ref().expect("just set"))
    }

    fn compute_fingerprint(&self) -> Result<ModelFingerprint> {
        let dir = self.model_dir.as_ref().ok_or_else(|| {
            RuntimeError::InvalidInput(
                "the engine was not loaded from a model directory, so it has no fingerprint"
                    .to_string(),
            )
        })?;
        fingerprint(dir)
    }

    fn rebuild_codec(&mut self) -> Result<()> {
        let ids = marker_ids(&self.table, &self.markers)?;
        self.codec = Arc::new(TextCodec::new(&self.tokenizer, &self.tokenizer_path, &ids)?);
        Ok(())
    }

    /// Which active concepts [`Engine::conversation`] introduces with their personal prompt
    /// (default: the [mentioned](PersonalPrompts::Mentioned) ones).
    pub fn set_personal_prompts(&mut self, personal_prompts: PersonalPrompts) {
        self.personal_prompts = personal_prompts;
    }

    /// See [`Engine::set_personal_prompts`].
    pub fn personal_prompts(&self) -> PersonalPrompts {
        self.personal_prompts
    }

    /// A `llava_v1/yollava-1` conversation over the active concepts.
    pub fn conversation(&self) -> Conversation {
        Conversation::new(self.markers.iter().map(|(_, m)| m.clone()).collect())
            .with_personal_prompts(self.personal_prompts)
    }

    /// The chat prompt for one question, with the personal prompts of the active concepts
    /// it introduces ([`Engine::set_personal_prompts`]).
    pub fn chat_prompt(&self, question: &str, image: Option<PixelValues>) -> PromptInput {
        PromptInput {
            text: self.conversation().prompt(question, image.is_some()),
            images: image.into_iter().collect(),
        }
    }

    /// Tokenizes a prompt (BOS as the tokenizer adds it), expands each `<image>` to one
    /// position per image feature, and embeds it with the image features in place.
    pub fn embed_prompt(&self, prompt: &PromptInput) -> Result<EmbeddedPrompt> {
        let (ids, spans) = self.tokenize_prompt(&prompt.text, prompt.images.len())?;
        self.embed_parts(ids, &spans, &prompt.images)
    }

    /// The first half of [`Engine::embed_prompt`]: the prompt's ids and image positions.
    pub fn tokenize(&self, prompt: PromptInput) -> Result<TokenizedPrompt> {
        let (ids, spans) = self.tokenize_prompt(&prompt.text, prompt.images.len())?;
        Ok(TokenizedPrompt {
            ids,
            spans,
            images: prompt.images,
        })
    }

    /// The second half of [`Engine::embed_prompt`]: embeddings with the image features in
    /// place. `prompt` must come from [`Engine::tokenize`] of an engine with the same
    /// concepts (the ids of concept tokens are this engine's).
    pub fn embed_tokenized(&self, prompt: &TokenizedPrompt) -> Result<EmbeddedPrompt> {
        self.embed_parts(prompt.ids.clone(), &prompt.spans, &prompt.images)
    }

    /// The embeddings `[n, d]` of positions `range` of a tokenized prompt: only those ids
    /// when no image falls in the range (a prompt whose prefix is already in a kv cache),
    /// else the whole prompt's, narrowed.
    pub fn embed_range(&self, prompt: &TokenizedPrompt, range: Range<usize>) -> Result<Tensor> {
        let ids = prompt.ids.get(range.clone()).ok_or_else(|| {
            RuntimeError::InvalidInput(format!(
                "positions {range:?} of a prompt of {} tokens",
                prompt.ids.len()
            ))
        })?;
        if prompt
            .spans
            .iter()
            .all(|span| span.end <= range.start || span.start >= range.end)
        {
            return self.table.embed_ids(&self.model, ids);
        }
        let all = self.embed_tokenized(prompt)?;
        Ok(all.embeds.narrow(0, range.start, range.len())?)
    }

    fn embed_parts(
        &self,
        ids: Vec<u32>,
        spans: &[Range<usize>],
        images: &[PixelValues],
    ) -> Result<EmbeddedPrompt> {
        let features = if spans.is_empty() {
            None
        } else {
            Some(self.image_features(images)?)
        };
        let embeds = self.embed_with_features(&ids, spans, features.as_ref())?;
        Ok(EmbeddedPrompt { ids, embeds })
    }

    /// The first step of [`Engine::embed_prompt`] for a prompt text with `images` images:
    /// token ids with each `<image>` expanded to one position per image feature, and the
    /// positions of each image.
    pub fn tokenize_prompt(
        &self,
        text: &str,
        images: usize,
    ) -> Result<(Vec<u32>, Vec<Range<usize>>)> {
        let cfg = self.model.config();
        let ids = self.codec.encode(text, true)?;
        let image_id = cfg.image_token_id;
        let markers = ids.iter().filter(|&&id| id == image_id).count();
        if markers != images {
            return Err(RuntimeError::Prompt(format!(
                "the text has {markers} `{IMAGE_MARKER}` markers for {images} image(s)"
            )));
        }
        Ok(expand_image_tokens(&ids, image_id, cfg.image_seq_len()))
    }

    /// Projected features `[n, N, d]` of `n >= 1` preprocessed images, in order.
    pub fn image_features(&self, images: &[PixelValues]) -> Result<Tensor> {
        let size = self.model.config().vision.image_size;
        if images.is_empty() {
            return Err(RuntimeError::InvalidInput("no images".to_string()));
        }
        let mut pixels = Vec::with_capacity(images.len());
        for px in images {
            if (px.height(), px.width()) != (size, size) {
                return Err(RuntimeError::InvalidInput(format!(
                    "image of {}x{} pixels, the vision tower takes {size}x{size}",
                    px.height(),
                    px.width()
                )));
            }
            pixels.push(px.to_tensor(self.model.device())?);
        }
        let pixels = Tensor::cat(&pixels, 0)?.to_dtype(self.model.dtype())?;
        self.model.image_features(&pixels, Kernels::Fast)
    }

    /// Embeddings `[T, d]` of `ids` with the active concepts, where image `i`'s features
    /// (row `i` of `features`, `[n, N, d]`) replace the positions `spans[i]`.
    pub fn embed_with_features(
        &self,
        ids: &[u32],
        spans: &[Range<usize>],
        features: Option<&Tensor>,
    ) -> Result<Tensor> {
        let embeds = self.table.embed_ids(&self.model, ids)?;
        let features = match features {
            Some(f) if !spans.is_empty() => f,
            _ if spans.is_empty() => return Ok(embeds),
            _ => {
                return Err(RuntimeError::InvalidInput(format!(
                    "{} image span(s) without image features",
                    spans.len()
                )))
            }
        };
        let mut parts = Vec::with_capacity(2 * spans.len() + 1);
        let mut pos = 0;
        for (i, span) in spans.iter().enumerate() {
            if span.start > pos {
                parts.push(embeds.narrow(0, pos, span.start - pos)?);
            }
            parts.push(features.get(i)?);
            pos = span.end;
        }
        if pos < ids.len() {
            parts.push(embeds.narrow(0, pos, ids.len() - pos)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Stop ids for generation: the config's EOS ids, else the tokenizer's `</s>`.
    pub fn stop_ids(&self) -> Vec<u32> {
        let eos = &self.model.config().eos_token_ids;
        if !eos.is_empty() {
            return eos.clone();
        }
        self.codec.token_id("</s>").into_iter().collect()
    }

    /// Generates an answer to `prompt`, calling `on_text` with each piece of text.
    pub fn generate(
        &self,
        prompt: &PromptInput,
        cfg: &GenerateConfig,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let embedded = self.embed_prompt(prompt)?;
        generate::generate(
            &self.model,
            &self.table,
            &self.codec,
            &embedded,
            cfg,
            on_text,
        )
    }

    /// [`Engine::generate`] that stops early, with
    /// [`generate::StopReason::Cancelled`], once `cancelled` returns true.
    pub fn generate_cancellable(
        &self,
        prompt: &PromptInput,
        cfg: &GenerateConfig,
        on_text: &mut dyn FnMut(&str),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation> {
        let embedded = self.embed_prompt(prompt)?;
        self.generate_embedded(&embedded, cfg, on_text, cancelled)
    }

    /// [`Engine::generate_cancellable`] for a prompt already tokenized by [`Engine::tokenize`]
    /// (of an engine with the same concepts).
    pub fn generate_tokenized(
        &self,
        prompt: &TokenizedPrompt,
        cfg: &GenerateConfig,
        on_text: &mut dyn FnMut(&str),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation> {
        let embedded = self.embed_tokenized(prompt)?;
        self.generate_embedded(&embedded, cfg, on_text, cancelled)
    }

    fn generate_embedded(
        &self,
        embedded: &EmbeddedPrompt,
        cfg: &GenerateConfig,
        on_text: &mut dyn FnMut(&str),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation> {
        generate::generate_cancellable(
            &self.model,
            &self.table,
            &self.codec,
            embedded,
            cfg,
            on_text,
            cancelled,
        )
    }

    /// p(Yes) vs p(No) at the first answer position of `prompt` (softmax over the base
    /// vocabulary and the active identifiers).
    pub fn recognize(&self, prompt: &PromptInput) -> Result<Recognition> {
        let (yes, no) = self.answer_tokens()?;
        let embedded = self.embed_prompt(prompt)?;
        generate::recognize(&self.model, &self.table, &embedded, yes, no)
    }

    /// [`Engine::recognize`] for a prompt whose first positions were already run into
    /// `prefix` (built from the same image and text, e.g. by another engine over this
    /// model): only `ids[prefix.len()..]` are embedded and run.
    pub fn recognize_after_prefix(&self, prefix: &KvCache, ids: &[u32]) -> Result<Recognition> {
        let (yes, no) = self.answer_tokens()?;
        let suffix = ids
            .get(prefix.len()..)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!(
                    "prompt of {} tokens has no suffix after a prefix of {}",
                    ids.len(),
                    prefix.len()
                ))
            })?;
        let embeds = self.table.embed_ids(&self.model, suffix)?;
        generate::recognize_after_prefix(&self.model, &self.table, prefix, &embeds, yes, no)
    }

    /// The "Yes" and "No" answer token ids.
    fn answer_tokens(&self) -> Result<(u32, u32)> {
        Ok((
            self.codec.answer_token("Yes")?,
            self.codec.answer_token("No")?,
        ))
    }
}

/// Tokenizers with concept markers, by marker set, for [`Engine::with_concepts_cached`]:
/// building one clones the base tokenizer and compiles its added tokens, which costs more
/// than the rest of a small model's request. Bounded: past `capacity` sets, the least
/// recently used half is dropped.
pub struct CodecCache {
    capacity: usize,
    entries: std::sync::Mutex<CodecEntries>,
}

#[derive(Default)]
struct CodecEntries {
    clock: u64,
    map: std::collections::HashMap<Vec<MarkerId>, (Arc<TextCodec>, u64)>,
}

impl CodecCache {
    /// A cache of at most `capacity` marker sets.
    pub fn new(capacity: usize) -> Self {
        CodecCache {
            capacity: capacity.max(1),
            entries: std::sync::Mutex::new(CodecEntries::default()),
        }
    }

    /// The codec for `ids`, built by `build` when it is not cached (outside the lock).
    fn get_or_build(
        &self,
        ids: &[MarkerId],
        build: impl FnOnce() -> Result<Arc<TextCodec>>,
    ) -> Result<Arc<TextCodec>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one call.
        let lock = || self.entries.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut entries = lock();
            entries.clock += 1;
            let now = entries.clock;
            if let Some((codec, used)) = entries.map.get_mut(ids) {
                *used = now;
                return Ok(Arc::clone(codec));
            }
        }
        let codec = build()?;
        let mut entries = lock();
        if entries.map.len() >= self.capacity {
            let mut ages: Vec<u64> = entries.map.values().map(|(_, used)| *used).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            entries.map.retain(|_, (_, used)| *used > cutoff);
        }
        let now = entries.clock;
        entries.map.insert(ids.to_vec(), (Arc::clone(&codec), now));
        Ok(codec)
    }

    /// Marker sets cached.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Adds a concept to a table and its markers (the codec is rebuilt by the caller).
fn push_concept(
    table: &mut ConceptTable,
    markers: &mut Vec<(String, ConceptMarkers)>,
    name: &str,
    identifier: &str,
    weights: ConceptWeights,
) -> Result<()> {
    let new = ConceptMarkers::new(identifier, weights.k())?;
    if let Some((other, _)) = markers.iter().find(|(_, m)| m.identifier() == identifier) {
        return Err(RuntimeError::Concept {
            name: name.to_string(),
            msg: format!("identifier `{identifier}` is already used by `{other}`"),
        });
    }
    table.activate(name, weights)?;
    markers.push((name.to_string(), new));
    Ok(())
}

/// The token id of every marker of the active concepts.
fn marker_ids(table: &ConceptTable, markers: &[(String, ConceptMarkers)]) -> Result<Vec<MarkerId>> {
    let mut ids = Vec::new();
    for (name, markers) in markers {
        let missing = || RuntimeError::Concept {
            name: name.clone(),
            msg: "is not in the concept table".to_string(),
        };
        let identifier = table.identifier_id(name).ok_or_else(missing)?;
        let latents = table.latent_ids(name).ok_or_else(missing)?;
        ids.push(MarkerId {
            marker: markers.identifier().to_string(),
            id: identifier,
        });
        for (marker, id) in markers.latents().iter().zip(latents) {
            ids.push(MarkerId {
                marker: marker.clone(),
                id,
            });
        }
    }
    Ok(ids)
}
