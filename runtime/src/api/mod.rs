//! The embedded API: one [`Runtime`] serves many requests over one base model, each request
//! with its own set of concepts.
//!
//! # Design
//!
//! * **One base model, many concept sets.** The runtime loads the model once and keeps it
//!   behind an `Arc`; a request gets an [`Engine`] made by [`Engine::with_concepts`], which
//!   shares the weights and tokenizer and owns only its concept table and marker codec. So
//!   requests never lock each other out and never see each other's concepts.
//! * **Concepts come from a [`ConceptSource`].** The runtime does not depend on
//!   `concept-registry`: runtime and registry are siblings (`cli → plugins / runtime /
//!   registry → concept-format`). `concepts-server` implements the trait over the registry;
//!   [`MemorySource`] serves tests and hosts that keep packages themselves.
//! * **Snapshots.** A request resolves every concept it needs — named in the request, or
//!   found as an identifier (`<bo>`) in its text — against one [`ConceptSnapshot`], then
//!   holds them as `Arc`s. A concept installed or removed meanwhile is either wholly in the
//!   request's set or not at all; a package removed between the snapshot and its loading
//!   makes the runtime retry with a fresh snapshot.
//! * **Resident concepts.** Concepts in use are held in memory, checked against the model
//!   (prompt template, base-model fingerprint) and converted to its dtype once. An LRU cache
//!   keyed by package digest keeps at most [`RuntimeConfig::max_resident_bytes`] of them
//!   between requests.
//! * **Async and cancellable.** Every call runs the model on tokio's blocking pool and is
//!   cancelled by dropping its future (or the [`ChatStream`]): the work stops at the next
//!   token, or the next concept of a scan. The methods must be called within a tokio
//!   runtime.
//! * **Concept scan.** In the `llava_v1/yollava-1` layout the image precedes the personal
//!   prompt, so [`Runtime::recognise_all`] runs the shared prefix (system text and image
//!   tokens) once into a copy-on-write [`KvCache`](crate::KvCache) and only each concept's
//!   suffix per concept; its answers equal those of [`Runtime::recognise`] one by one.
//!
//! # Example
//!
//! ```
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! use concepts_runtime::api::{
//!     ChatMessage, ChatRequest, ImageInput, MemorySource, Runtime, RuntimeConfig, Selection,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
//! let source = Arc::new(MemorySource::new());
//! // Packages (`.ycpt`) go in with `source.insert(package)`; this example has none.
//! let runtime = Runtime::load(&fixture.join("model"), source, RuntimeConfig::recommended())?;
//!
//! let tokio = tokio::runtime::Runtime::new()?;
//! tokio.block_on(async {
//!     // Greedy, the chat template, and the concepts the messages mention (none here).
//!     let question = ChatMessage::user("What is in this photo?")
//!         .with_image(ImageInput::File(fixture.join("images/logo.png")));
//!     let request = ChatRequest::new(vec![question], 4);
//!     let mut stream = runtime.chat(request).await?;
//!     let mut text = String::new();
//!     while let Some(event) = stream.next().await {
//!         match event? {
//!             concepts_runtime::api::ChatEvent::Text(delta) => text.push_str(&delta),
//!             concepts_runtime::api::ChatEvent::Done(summary) => {
//!                 assert_eq!(summary.text, text);
//!                 assert!(summary.completion_tokens <= 4);
//!             }
//!         }
//!     }
//!     // Which installed concepts are in the photo? (None are installed here.)
//!     let scores = runtime
//!         .recognise_all(ImageInput::File(fixture.join("images/logo.png")), Selection::All)
//!         .await?;
//!     assert!(scores.is_empty());
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```

mod batcher;
mod prefix;
mod resident;
mod scan;
mod source;

pub use source::{
    find_entry, package_digest, CatalogEntry, ConceptSnapshot, ConceptSource, MemorySource,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use concept_format::{ConceptPackage, ModelFingerprint};
use tokio::sync::mpsc;

use crate::compute::Compute;
use crate::error::{Result, RuntimeError};
use crate::generate::{GenerateConfig, Generation, RowConcepts, Sampling, StopReason};
use crate::preprocess::{decode_image, load_image, preprocess, ImageLimits, PixelValues};
use crate::prompt::Exchange;
pub use crate::prompt::PersonalPrompts;
use crate::session::{CodecCache, Engine, PromptInput, TokenizedPrompt};

use batcher::{Batcher, Job, Running};
use resident::{ResidentCache, ResidentConcept};

/// The recognition question; `{}` stands for the concept's identifier.
pub const RECOGNITION_QUESTION: &str = "Is {} in this photo? Answer with a single word or phrase.";

/// The question [`Runtime::describe`] asks; `{}` stands for the concept's identifier.
pub const DESCRIBE_QUESTION: &str = "Describe {}.";

/// Concept sets whose tokenizers a runtime keeps built.
const CODEC_CACHE_SETS: usize = 256;

/// How often a request re-resolves its concepts when a package vanished under it.
const RESOLVE_ATTEMPTS: usize = 3;

/// Bounds and prompts of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Bytes of concept tensors kept in memory between requests (least recently used
    /// concepts are evicted first). Concepts in use stay in memory regardless.
    pub max_resident_bytes: usize,
    /// Most concepts one chat request may activate together.
    pub max_active_concepts: usize,
    /// Most prompt tokens of a request, image positions included.
    pub max_prompt_tokens: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// Bounds on an image (encoded bytes, pixels, each side after resizing), checked from
    /// its header before it is decoded.
    pub image_limits: ImageLimits,
    /// The recognition question, `{}` replaced by the identifier ([`RECOGNITION_QUESTION`]).
    pub recognition_question: String,
    /// The question of [`Runtime::describe`] ([`DESCRIBE_QUESTION`]).
    pub describe_question: String,
    /// Pad every image to a square with its mean colour before resizing (the original
    /// LLaVA-1.5 `pad` mode), whatever the model's preprocessor config says.
    pub pad_to_square: bool,
    /// The device and compute dtype of the base model ([`Compute::cpu`]: f32 on the CPU).
    pub compute: Compute,
    /// Chats decoded together in one forward pass (continuous batching: chats join and
    /// leave a running batch, each with its own concepts); more wait for a free row. `0`
    /// decodes every chat alone on a blocking thread of its own, as before batching.
    pub decode_batch: usize,
    /// Bytes of keys and values the decode batch keeps of prompt prefixes recent chats began
    /// with, so a chat that starts as one of them (the system text, the same personal prompt)
    /// runs only the rest of its prompt. 0 turns the reuse off.
    pub prefix_cache_bytes: usize,
    /// Threads of the decode batch's own pool, which split each step's kernels. 0 chooses:
    /// one per core for a decoder of at least 16 M weights, one for smaller models, whose
    /// steps are too short to share across cores (docs/serving.md).
    pub batch_threads: usize,
}

impl RuntimeConfig {
    /// 256 MiB of resident concepts, 8 concepts and 4096 tokens per request, one image
    /// within [`ImageLimits::DEFAULT`] (32 MiB, 40 megapixels, sides of 4096 after resizing),
    /// the standard questions, and a decode batch of 8 chats keeping 256 MiB of prompt prefixes.
    pub fn recommended() -> Self {
        RuntimeConfig {
            max_resident_bytes: 256 << 20,
            max_active_concepts: 8,
            max_prompt_tokens: 4096,
            max_images: 1,
            image_limits: ImageLimits::DEFAULT,
            recognition_question: RECOGNITION_QUESTION.to_string(),
            describe_question: DESCRIBE_QUESTION.to_string(),
            pad_to_square: false,
            compute: Compute::cpu(),
            decode_batch: 8,
            prefix_cache_bytes: 256 << 20,
            batch_threads: 0,
        }
    }

    /// The identifier a question asks the recognition question about, if it is that
    /// question: [`RuntimeConfig::recognition_question`] about some `<identifier>`, whole
    /// or only its first sentence, case and runs of white space aside. A client that asks
    /// it should get the p(Yes)/p(No) read-out of [`Runtime::recognise`], not generated text.
    ///
    /// ```
    /// use concepts_runtime::api::RuntimeConfig;
    ///
    /// let config = RuntimeConfig::recommended();
    /// assert_eq!(config.recognition_subject("Is <bo> in this photo?").as_deref(), Some("<bo>"));
    /// assert_eq!(
    ///     config.recognition_subject("is <bo>  in this photo? Answer with a single word or phrase.").as_deref(),
    ///     Some("<bo>")
    /// );
    /// assert_eq!(config.recognition_subject("Is <bo> happy?"), None);
    /// assert_eq!(config.recognition_subject("Is bo in this photo?"), None);
    /// ```
    pub fn recognition_subject(&self, question: &str) -> Option<String> {
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let question = words(question);
        let (before, after) = self.recognition_question.split_once("{}")?;
        let (before, after) = (words(before), words(after));
        let strip_prefix = |text: &str, prefix: &str| -> Option<usize> {
            let head = text.get(..prefix.len())?;
            head.eq_ignore_ascii_case(prefix).then_some(prefix.len())
        };
        let start = strip_prefix(&question, &before)?;
        let rest = question[start..].trim_start();
        let end = rest.find('>')? + 1;
        let identifier = &rest[..end];
        let tail = rest[end..].trim();
        let first_sentence = after
            .find(['?', '.'])
            .map_or(after.as_str(), |i| &after[..=i]);
        let matches = [after.as_str(), first_sentence]
            .iter()
            .any(|want| tail.eq_ignore_ascii_case(want.trim()));
        let well_formed = identifier.starts_with('<')
            && identifier.len() > 2
            && !identifier[1..end - 1].contains(['<', '>', ' ']);
        (matches && well_formed).then(|| identifier.to_string())
    }
}

/// An image for a request.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// The bytes of a JPEG, PNG or WebP file; `name` appears in error messages.
    Encoded { name: String, bytes: Arc<[u8]> },
    /// A file to read.
    File(PathBuf),
    /// Pixel values already preprocessed for this model.
    Pixels(PixelValues),
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ignored: the `llava_v1` template's system text is fixed.
    System,
    User,
    Assistant,
}

/// One message of a chat.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: Role,
    pub text: String,
    /// At most one per turn (consecutive messages of one role form a turn).
    pub images: Vec<ImageInput>,
}

impl ChatMessage {
    /// A user message with text only.
    pub fn user(text: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            text: text.into(),
            images: Vec::new(),
        }
    }

    /// An assistant message (an earlier answer).
    pub fn assistant(text: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            text: text.into(),
            images: Vec::new(),
        }
    }

    /// This message with an image attached.
    pub fn with_image(mut self, image: ImageInput) -> Self {
        self.images.push(image);
        self
    }
}

/// How a [`ChatRequest`]'s messages become the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptFormat {
    /// The model's chat template (`llava_v1`, with the personal prompts of the active
    /// concepts).
    #[default]
    Chat,
    /// One user message, used verbatim as the whole prompt: no system text, no template, no
    /// personal prompts; `<image>` marks where its image goes. For parity checks and prompt
    /// research.
    Raw,
}

/// A chat (generation) request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation so far, ending with a user message.
    pub messages: Vec<ChatMessage>,
    /// Concepts to activate, by name or identifier, in this order.
    pub concepts: Vec<String>,
    /// Also activate installed concepts whose identifier (`<bo>`) appears in the messages.
    pub resolve_identifiers: bool,
    /// Which active concepts get their personal prompt: the ones the messages mention
    /// (the default), or all of them ("Who is in this photo?" about named concepts).
    pub personal_prompts: PersonalPrompts,
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Stop at the model's end-of-sequence token (else only at `max_tokens`).
    pub stop_at_eos: bool,
    pub format: PromptFormat,
    /// Also return the logits of every prompt position ([`ChatSummary::prompt_logits`]).
    pub prompt_logits: bool,
}

impl ChatRequest {
    /// A greedy chat template request for `messages`, activating the concepts they mention,
    /// with at most `max_tokens` new tokens.
    pub fn new(messages: Vec<ChatMessage>, max_tokens: usize) -> ChatRequest {
        ChatRequest {
            messages,
            concepts: Vec::new(),
            resolve_identifiers: true,
            personal_prompts: PersonalPrompts::Mentioned,
            max_tokens,
            sampling: Sampling::Greedy,
            stop_at_eos: true,
            format: PromptFormat::Chat,
            prompt_logits: false,
        }
    }
}

/// A concept a request used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveConcept {
    pub name: String,
    pub identifier: String,
    /// Hex sha256 of the package.
    pub digest: String,
}

/// Why a chat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced its end-of-sequence token.
    Stop,
    /// `max_tokens` or the model's context was reached.
    Length,
    /// The request was cancelled.
    Cancelled,
}

/// The end of a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatSummary {
    /// The whole answer (the concatenated [`ChatEvent::Text`] pieces).
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// The prompt's token ids, each image expanded to one id per image feature.
    pub prompt_ids: Vec<u32>,
    /// The generated ids, without the stop token.
    pub generated_ids: Vec<u32>,
    /// When [`ChatRequest::prompt_logits`] asked for them: row-major f32 logits of every
    /// prompt position over the base vocabulary and the active identifiers, and their
    /// `[T, V + n]` shape.
    pub prompt_logits: Option<(Vec<f32>, [usize; 2])>,
}

/// What a [`ChatStream`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// The next piece of the answer.
    Text(String),
    /// The last event.
    Done(ChatSummary),
}

/// A chat being generated. Dropping it (or [`ChatStream::cancel`]) stops the generation.
#[derive(Debug)]
pub struct ChatStream {
    rx: mpsc::UnboundedReceiver<Result<ChatEvent>>,
    cancel: Arc<AtomicBool>,
    concepts: Vec<ActiveConcept>,
    prompt_tokens: usize,
}

impl ChatStream {
    /// The concepts active for this chat, in prompt order.
    pub fn concepts(&self) -> &[ActiveConcept] {
        &self.concepts
    }

    /// Prompt length in tokens, image positions included.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The next event; `None` after [`ChatEvent::Done`] or an error.
    pub async fn next(&mut self) -> Option<Result<ChatEvent>> {
        self.rx.recv().await
    }

    /// Asks the generation to stop; it ends with [`FinishReason::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Waits for the end and returns it.
    pub async fn collect(mut self) -> Result<ChatSummary> {
        while let Some(event) = self.next().await {
            if let ChatEvent::Done(summary) = event? {
                return Ok(summary);
            }
        }
        Err(RuntimeError::Cancelled)
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Which concepts [`Runtime::recognise_all`] asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every concept of the source that this model can use (others are skipped).
    All,
    /// These, by name or identifier.
    Named(Vec<String>),
}

/// The recognition read-out for one concept.
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptScore {
    pub concept: ActiveConcept,
    /// Softmax probability of "Yes" at the answer position.
    pub p_yes: f64,
    /// Same for "No".
    pub p_no: f64,
}

impl ConceptScore {
    /// The decision: p(Yes) > p(No).
    pub fn present(&self) -> bool {
        self.p_yes > self.p_no
    }
}

/// A snapshot of the runtime's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Concepts in the resident cache.
    pub resident_concepts: usize,
    /// Bytes of their tensors.
    pub resident_bytes: usize,
    /// Chats generating now.
    pub running_generations: usize,
}

/// A loaded base model serving requests with concepts from a [`ConceptSource`].
///
/// Cheap to clone (an `Arc`); `Send + Sync`. See the [module docs](self).
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    base: Engine,
    fingerprint: ModelFingerprint,
    model_id: String,
    source: Arc<dyn ConceptSource>,
    resident: Mutex<ResidentCache>,
    config: RuntimeConfig,
    running: Arc<AtomicUsize>,
    /// The running decode batch, when [`RuntimeConfig::decode_batch`] is not 0.
    batcher: Option<Batcher>,
    /// Tokenizers of the concept sets requests used lately.
    codecs: CodecCache,
}

impl Runtime {
    /// Loads a llava-hf model directory (or a quantized one, `concepts quantize`) on
    /// `config.compute`'s device and dtype, and computes its fingerprint.
    /// Blocking: call it before serving, or from a blocking task.
    pub fn load(
        model_dir: &Path,
        source: Arc<dyn ConceptSource>,
        config: RuntimeConfig,
    ) -> Result<Runtime> {
        let compute = &config.compute;
        let mut base = Engine::load(model_dir, &compute.device, compute.dtype)?;
        let fingerprint = base.fingerprint()?.clone();
        let model_id = model_dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "concepts".to_string());
        tracing::info!(model = %model_id, dir = %model_dir.display(), "loaded base model");
        let batcher = match config.decode_batch {
            0 => None,
            slots => {
                let threads = match config.batch_threads {
                    0 => batcher::default_threads(base.model().config()),
                    n => n,
                };
                Some(Batcher::start(slots, config.prefix_cache_bytes, threads)?)
            }
        };
        Ok(Runtime {
            inner: Arc::new(Inner {
                base,
                fingerprint,
                model_id,
                source,
                resident: Mutex::new(ResidentCache::new(config.max_resident_bytes)),
                config,
                running: Arc::new(AtomicUsize::new(0)),
                batcher,
                codecs: CodecCache::new(CODEC_CACHE_SETS),
            }),
        })
    }

    /// The model's name: its directory's name.
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    /// The base-model fingerprint concepts must have been trained against.
    pub fn fingerprint(&self) -> &ModelFingerprint {
        &self.inner.fingerprint
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The base model's configuration (widths, image size, vocabulary).
    pub fn model_config(&self) -> &crate::config::LlavaConfig {
        self.inner.base.model().config()
    }

    /// Checks that a package can be activated with this model (prompt template,
    /// base-model fingerprint, tensor shapes), e.g. before installing it.
    pub fn check_package(&self, package: &ConceptPackage) -> Result<()> {
        self.inner.base.package_weights(package).map(|_| ())
    }

    /// The concepts the source offers now. Blocking (it may read the source's index).
    pub fn catalog(&self) -> Result<Vec<CatalogEntry>> {
        Ok(self.inner.source.snapshot()?.entries().to_vec())
    }

    pub fn stats(&self) -> RuntimeStats {
        let resident = self.inner.resident();
        RuntimeStats {
            resident_concepts: resident.len(),
            resident_bytes: resident.bytes(),
            running_generations: self.inner.running.load(Ordering::SeqCst),
        }
    }

    /// Starts a chat: resolves its concepts, decodes its images and checks its bounds, then
    /// generates it in the runtime's decode batch (with chats of other concept sets), or alone
    /// on a blocking thread when [`RuntimeConfig::decode_batch`] is 0. Errors in the request
    /// are returned here, before any text; the stream carries the answer.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatStream> {
        let prepared = self
            .run_blocking(move |inner, _| inner.prepare_chat(request))
            .await?;
        let PreparedChat {
            engine,
            prompt,
            cfg,
            concepts,
            row_concepts,
        } = prepared;
        let prompt_tokens = prompt.ids.len();
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            concepts: row_concepts,
            digests: concepts
                .iter()
                .map(|c| (c.name.clone(), c.digest.clone()))
                .collect(),
            engine,
            prompt,
            cfg,
            events: tx,
            cancel: Arc::clone(&cancel),
            running: Running::start(&self.inner.running),
        };
        match &self.inner.batcher {
            Some(batcher) => batcher.submit(job),
            None => {
                tokio::task::spawn_blocking(move || generate_alone(job));
            }
        }
        Ok(ChatStream {
            rx,
            cancel,
            concepts,
            prompt_tokens,
        })
    }

    /// Asks the model to describe a concept (greedy, [`RuntimeConfig::describe_question`]).
    pub async fn describe(&self, concept: &str, max_tokens: usize) -> Result<ChatSummary> {
        let question = self.inner.config.describe_question.clone();
        let name = concept.to_string();
        let identifier = self
            .run_blocking(move |inner, _| {
                Ok(inner.resolve(&[name], None, true)?[0]
                    .entry
                    .identifier
                    .clone())
            })
            .await?;
        let request = ChatRequest {
            concepts: vec![concept.to_string()],
            resolve_identifiers: false,
            ..ChatRequest::new(
                vec![ChatMessage::user(question.replace("{}", &identifier))],
                max_tokens,
            )
        };
        self.chat(request).await?.collect().await
    }

    /// p(Yes) / p(No) for one concept and an image: the whole prompt is run, as a client
    /// asking the recognition question would.
    pub async fn recognise(&self, image: ImageInput, concept: &str) -> Result<ConceptScore> {
        let name = concept.to_string();
        self.run_blocking(move |inner, cancel| {
            let concept = inner.resolve(&[name], None, false)?.remove(0);
            let pixels = inner.pixels(&image)?;
            check(cancel)?;
            scan::recognise_one(inner, &concept, pixels)
        })
        .await
    }

    /// Which of these concepts are in the image: [`Runtime::recognise`] for each, sharing
    /// the prompt prefix (system text and image tokens) between them. Results come in the
    /// order of the selection ([`Selection::All`]: by name).
    pub async fn recognise_all(
        &self,
        image: ImageInput,
        selection: Selection,
    ) -> Result<Vec<ConceptScore>> {
        self.run_blocking(move |inner, cancel| {
            let concepts = match &selection {
                Selection::All => inner.resolve_all()?,
                Selection::Named(names) => inner.resolve(names, None, false)?,
            };
            let pixels = inner.pixels(&image)?;
            scan::recognise_all(inner, &pixels, &concepts, cancel)
        })
        .await
    }

    /// Loads these concepts into memory (the resident cache) and checks that they can be
    /// active together, so a later request finds them ready.
    pub async fn warm(&self, concepts: Vec<String>) -> Result<Vec<ActiveConcept>> {
        self.run_blocking(move |inner, _| {
            let resident = inner.resolve(&concepts, None, true)?;
            inner.engine_for(&resident)?;
            Ok(resident.iter().map(|c| active(c)).collect())
        })
        .await
    }

    /// Runs `f` on the blocking pool; dropping the returned future raises its cancel flag.
    async fn run_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &AtomicBool) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let cancel = Arc::new(AtomicBool::new(false));
        let _on_drop = CancelOnDrop(Arc::clone(&cancel));
        match tokio::task::spawn_blocking(move || f(&inner, &cancel)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(RuntimeError::Cancelled),
        }
    }
}

/// Generates one chat on the calling thread, alone (no batch).
fn generate_alone(job: Job) {
    let Job {
        engine,
        prompt,
        cfg,
        events,
        cancel,
        running: _running,
        ..
    } = job;
    let mut on_text = |text: &str| {
        if events.send(Ok(ChatEvent::Text(text.to_string()))).is_err() {
            cancel.store(true, Ordering::SeqCst);
        }
    };
    let result = engine
        .generate_tokenized(&prompt, &cfg, &mut on_text, &|| {
            cancel.load(Ordering::SeqCst)
        })
        .and_then(summary);
    // The reader may be gone; then nobody is waiting for the end either.
    let _ = events.send(result.map(ChatEvent::Done));
}

/// The summary of a finished generation.
fn summary(g: Generation) -> Result<ChatSummary> {
    Ok(ChatSummary {
        prompt_logits: g.prompt_logits_f32()?,
        text: g.text,
        finish: match g.stop {
            StopReason::Eos => FinishReason::Stop,
            StopReason::MaxTokens | StopReason::ContextFull => FinishReason::Length,
            StopReason::Cancelled => FinishReason::Cancelled,
        },
        prompt_tokens: g.prompt_ids.len(),
        completion_tokens: g.generated_ids.len(),
        prompt_ids: g.prompt_ids,
        generated_ids: g.generated_ids,
    })
}

/// A chat ready to generate.
struct PreparedChat {
    engine: Engine,
    prompt: TokenizedPrompt,
    cfg: GenerateConfig,
    concepts: Vec<ActiveConcept>,
    /// For the decode batch (stacked here, off the batch thread).
    row_concepts: Option<RowConcepts>,
}

/// One user turn and the answer that followed it, if any.
struct Turn<'a> {
    user: String,
    image: Option<&'a ImageInput>,
    assistant: Option<String>,
}

impl Inner {
    fn resident(&self) -> MutexGuard<'_, ResidentCache> {
        // The cache is consistent after every call, so a panic elsewhere cannot corrupt it.
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The concepts named in `wanted` (in order), then those whose identifier occurs in
    /// `text`, resolved against one snapshot and made resident.
    fn resolve(
        &self,
        wanted: &[String],
        text: Option<&str>,
        bounded: bool,
    ) -> Result<Vec<Arc<ResidentConcept>>> {
        let mut attempt = 0;
        let mut fetched: Vec<String> = Vec::new();
        loop {
            attempt += 1;
            let snapshot = self.source.snapshot()?;
            let entries = match select(snapshot.entries(), wanted, text) {
                // A source that fetches on demand gets one try per missing name.
                Err(RuntimeError::ConceptNotFound { query }) if !fetched.contains(&query) => {
                    drop(snapshot);
                    if !self.source.fetch(&query)? {
                        return Err(RuntimeError::ConceptNotFound { query });
                    }
                    tracing::debug!(%query, "concept fetched on demand");
                    fetched.push(query);
                    attempt -= 1;
                    continue;
                }
                other => other?,
            };
            let limit = self.config.max_active_concepts;
            if bounded && entries.len() > limit {
                return Err(RuntimeError::Limit {
                    what: "active concepts",
                    limit: limit as u64,
                    found: entries.len() as u64,
                });
            }
            match self.make_resident(&*snapshot, &entries) {
                Err(RuntimeError::ConceptNotFound { query }) if attempt < RESOLVE_ATTEMPTS => {
                    tracing::debug!(%query, attempt, "concept vanished, taking a new snapshot");
                }
                result => return result,
            }
        }
    }

    /// Every concept of one snapshot that this model can use, made resident; concepts
    /// trained for another model (or template) are skipped with a warning.
    fn resolve_all(&self) -> Result<Vec<Arc<ResidentConcept>>> {
        let mut attempt = 0;
        'snapshot: loop {
            attempt += 1;
            let snapshot = self.source.snapshot()?;
            let mut out = Vec::with_capacity(snapshot.entries().len());
            for entry in snapshot.entries() {
                match self.make_resident(&*snapshot, std::slice::from_ref(entry)) {
                    Ok(mut one) => out.append(&mut one),
                    Err(e @ RuntimeError::Concept { .. }) => {
                        tracing::warn!(name = %entry.name, "skipping concept: {e}");
                    }
                    Err(RuntimeError::ConceptNotFound { .. }) if attempt < RESOLVE_ATTEMPTS => {
                        continue 'snapshot;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(out);
        }
    }

    fn make_resident(
        &self,
        snapshot: &dyn ConceptSnapshot,
        entries: &[CatalogEntry],
    ) -> Result<Vec<Arc<ResidentConcept>>> {
        entries
            .iter()
            .map(|entry| {
                if let Some(concept) = self.resident().get(&entry.digest) {
                    return Ok(concept);
                }
                let package = snapshot.load(entry)?;
                let m = package.manifest();
                if (m.name.as_str(), m.identifier.as_str())
                    != (entry.name.as_str(), entry.identifier.as_str())
                {
                    return Err(RuntimeError::Source(format!(
                        "concept `{}` ({}): the package says `{}` ({})",
                        entry.name, entry.identifier, m.name, m.identifier
                    )));
                }
                let weights = self.base.package_weights(&package)?;
                tracing::debug!(name = %entry.name, "concept made resident");
                let concept = Arc::new(ResidentConcept::new(entry.clone(), weights));
                Ok(self.resident().insert(concept))
            })
            .collect()
    }

    /// An engine over the base model with exactly these concepts active.
    fn engine_for(&self, concepts: &[Arc<ResidentConcept>]) -> Result<Engine> {
        self.base.with_concepts_cached(
            concepts.iter().map(|c| {
                (
                    c.entry.name.as_str(),
                    c.entry.identifier.as_str(),
                    c.weights.clone(),
                )
            }),
            Some(&self.codecs),
        )
    }

    /// Decodes (bounded by [`RuntimeConfig::image_limits`]) and preprocesses an image for
    /// this model.
    fn pixels(&self, image: &ImageInput) -> Result<PixelValues> {
        let base = self.base.preprocess_config();
        let config = base
            .clone()
            .with_limits(self.config.image_limits)
            .with_pad_to_square(self.config.pad_to_square || base.pad_to_square);
        let img = match image {
            ImageInput::Pixels(px) => return Ok(px.clone()),
            ImageInput::Encoded { name, bytes } => decode_image(bytes, Path::new(name), &config)?,
            ImageInput::File(path) => load_image(path, &config)?,
        };
        Ok(preprocess(&img, &config)?)
    }

    fn prepare_chat(&self, request: ChatRequest) -> Result<PreparedChat> {
        let turns = turns(&request.messages)?;
        let image_count = turns.iter().filter(|t| t.image.is_some()).count();
        if image_count > self.config.max_images {
            return Err(RuntimeError::Limit {
                what: "images",
                limit: self.config.max_images as u64,
                found: image_count as u64,
            });
        }
        let all_text: String = request
            .messages
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let concepts = self.resolve(
            &request.concepts,
            request.resolve_identifiers.then_some(all_text.as_str()),
            true,
        )?;
        let mut engine = self.engine_for(&concepts)?;
        engine.set_personal_prompts(request.personal_prompts);
        let (last, earlier) = turns.split_last().expect("turns() returns at least one");
        let text = match request.format {
            PromptFormat::Chat => {
                let mut conversation = engine.conversation();
                for turn in earlier {
                    conversation.push(Exchange {
                        user: turn.user.clone(),
                        image: turn.image.is_some(),
                        assistant: turn.assistant.clone().unwrap_or_default(),
                    });
                }
                conversation.prompt(&last.user, last.image.is_some())
            }
            PromptFormat::Raw if earlier.is_empty() => last.user.clone(),
            PromptFormat::Raw => {
                return Err(RuntimeError::InvalidInput(
                    "messages: a raw prompt is one user message".into(),
                ))
            }
        };
        let images = turns
            .iter()
            .filter_map(|t| t.image)
            .map(|image| self.pixels(image))
            .collect::<Result<Vec<_>>>()?;
        // Tokenized once, here: the batch thread embeds these ids.
        let prompt = engine.tokenize(PromptInput { text, images })?;
        let max_pos = engine.model().config().text.max_position_embeddings;
        let limit = self.config.max_prompt_tokens.min(max_pos.saturating_sub(1));
        if prompt.ids.len() > limit {
            return Err(RuntimeError::Limit {
                what: "prompt tokens",
                limit: limit as u64,
                found: prompt.ids.len() as u64,
            });
        }
        let stop_ids = if request.stop_at_eos {
            engine.stop_ids()
        } else {
            Vec::new()
        };
        Ok(PreparedChat {
            cfg: GenerateConfig {
                max_tokens: request.max_tokens,
                sampling: request.sampling,
                stop_ids,
                prompt_logits: request.prompt_logits,
            },
            row_concepts: match self.batcher {
                Some(_) => RowConcepts::of(engine.concepts())?,
                None => None,
            },
            prompt,
            concepts: concepts.iter().map(|c| active(c)).collect(),
            engine,
        })
    }
}

fn active(concept: &ResidentConcept) -> ActiveConcept {
    ActiveConcept {
        name: concept.entry.name.clone(),
        identifier: concept.entry.identifier.clone(),
        digest: concept.entry.digest.clone(),
    }
}

fn check(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::SeqCst) {
        Err(RuntimeError::Cancelled)
    } else {
        Ok(())
    }
}

/// Groups messages into turns: system messages are dropped, consecutive messages of one
/// role are joined with a newline, and the conversation must alternate user / assistant,
/// starting and ending with the user.
fn turns(messages: &[ChatMessage]) -> Result<Vec<Turn<'_>>> {
    let bad = |msg: &str| Err(RuntimeError::InvalidInput(format!("messages: {msg}")));
    let mut turns: Vec<Turn<'_>> = Vec::new();
    let mut last_role = None;
    for m in messages.iter().filter(|m| m.role != Role::System) {
        match (m.role, last_role) {
            (Role::User, Some(Role::User)) => {
                let turn = turns.last_mut().expect("a user turn is open");
                turn.user.push('\n');
                turn.user.push_str(&m.text);
            }
            (Role::User, _) => turns.push(Turn {
                user: m.text.clone(),
                image: None,
                assistant: None,
            }),
            (Role::Assistant, None) => return bad("the first message must be the user's"),
            (Role::Assistant, _) => {
                if !m.images.is_empty() {
                    return bad("assistant messages cannot carry images");
                }
                let turn = turns.last_mut().expect("a turn is open");
                let answer = turn.assistant.get_or_insert_with(String::new);
                if !answer.is_empty() {
                    answer.push('\n');
                }
                answer.push_str(&m.text);
            }
            (Role::System, _) => unreachable!("filtered out"),
        }
        if m.role == Role::User {
            let turn = turns.last_mut().expect("a user turn is open");
            for image in &m.images {
                if turn.image.replace(image).is_some() {
                    return bad(
                        "a user turn can carry one image (the llava_v1 template has one slot)",
                    );
                }
            }
        }
        last_role = Some(m.role);
    }
    match last_role {
        None => bad("no user message"),
        Some(Role::Assistant) => bad("the last message must be the user's"),
        _ => Ok(turns),
    }
}

/// Catalog entries for the names in `wanted` (each must exist), then for the identifiers
/// found in `text`; each concept once, in order of first mention.
fn select(
    entries: &[CatalogEntry],
    wanted: &[String],
    text: Option<&str>,
) -> Result<Vec<CatalogEntry>> {
    let mut out: Vec<CatalogEntry> = Vec::new();
    for query in wanted {
        let entry = find_entry(entries, query).ok_or_else(|| RuntimeError::ConceptNotFound {
            query: query.clone(),
        })?;
        if !out.iter().any(|e| e.name == entry.name) {
            out.push(entry.clone());
        }
    }
    for identifier in text.map(identifiers_in).unwrap_or_default() {
        if let Some(entry) = entries.iter().find(|e| e.identifier == identifier) {
            if !out.iter().any(|e| e.name == entry.name) {
                out.push(entry.clone());
            }
        }
    }
    Ok(out)
}

/// Every `<name>` in `text` whose name has no `<`, `>`, `:` or whitespace, in order.
fn identifiers_in(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        match after.find(|c: char| matches!(c, '<' | '>' | ':') || c.is_whitespace()) {
            Some(end) if end > 0 && after[end..].starts_with('>') => {
                out.push(&rest[start..start + end + 2]);
                rest = &after[end + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

/// Raises a cancel flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_found_in_order() {
        assert_eq!(
            identifiers_in("Is <bo> with <kiki:1> or <kiki>? <a b> <> <x<y> <image>"),
            ["<bo>", "<kiki>", "<y>", "<image>"]
        );
        assert!(identifiers_in("a < b > c").is_empty());
    }

    #[test]
    fn messages_become_alternating_turns() {
        let image = ImageInput::File("a.png".into());
        let messages = vec![
            ChatMessage {
                role: Role::System,
                text: "be brief".into(),
                images: vec![],
            },
            ChatMessage::user("Hi").with_image(image.clone()),
            ChatMessage::user("there"),
            ChatMessage::assistant("Hello"),
            ChatMessage::user("Who is <bo>?"),
        ];
        let got = turns(&messages).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].user, "Hi\nthere");
        assert!(got[0].image.is_some());
        assert_eq!(got[0].assistant.as_deref(), Some("Hello"));
        assert_eq!(got[1].user, "Who is <bo>?");

        let err = |m: Vec<ChatMessage>| turns(&m).err().unwrap().to_string();
        assert!(err(vec![]).contains("no user message"));
        assert!(err(vec![ChatMessage::assistant("x")]).contains("first message"));
        assert!(
            err(vec![ChatMessage::user("x"), ChatMessage::assistant("y")]).contains("last message")
        );
        let two = ChatMessage::user("x")
            .with_image(image.clone())
            .with_image(image);
        assert!(err(vec![two]).contains("one image"));
    }

    #[test]
    fn selection_puts_named_concepts_first_and_rejects_unknown_names() {
        let entry = |name: &str| CatalogEntry {
            name: name.into(),
            identifier: format!("<{name}>"),
            digest: name.into(),
        };
        let entries = [entry("bo"), entry("kiki"), entry("tom")];
        let names = |v: Vec<CatalogEntry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        let picked = select(
            &entries,
            &["kiki".into()],
            Some("<tom> and <bo> and <kiki> and <nobody>"),
        )
        .unwrap();
        assert_eq!(names(picked), ["kiki", "tom", "bo"]);
        assert!(select(&entries, &[], None).unwrap().is_empty());
        match select(&entries, &["nobody".into()], None) {
            Err(RuntimeError::ConceptNotFound { query }) => assert_eq!(query, "nobody"),
            other => panic!("{other:?}"),
        }
    }
}
