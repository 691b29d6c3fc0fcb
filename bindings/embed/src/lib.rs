//! The embedded runtime for host languages: one blocking, interruptible facade over
//! [`concepts_runtime::api::Runtime`], the concept registry and the trainer, which the Python
//! package (`bindings/python`) and the C ABI (`bindings/c`) both wrap.
//!
//! # Why a facade
//!
//! The Rust API is async (tokio) and cancelled by dropping futures; Python and C callers are
//! synchronous and are interrupted by Ctrl-C or a callback's answer. This crate is the one place
//! that bridges the two: every call blocks the calling thread, polls an `interrupted` callback
//! every [`POLL_INTERVAL`], and when it says stop, drops the work (the runtime stops at its next
//! token or concept, the trainer at its next step) and returns [`ErrorKind::Cancelled`]. Nothing
//! here re-implements inference, training or the registry: [`Host`] holds the same
//! `api::Runtime` over the same [`RegistrySource`] as `concepts scan` and `concepts serve`, and
//! trains through [`concepts_trainer::train`] with the built-in stages, as `concepts eval` does.
//!
//! # Example
//!
//! ```no_run
//! use concepts_embed::{Host, Image};
//!
//! # fn main() -> Result<(), concepts_embed::EmbedError> {
//! // `None`: the default base model ($CONCEPTS_DEFAULT_MODEL or the embedded toy model) and
//! // the default registry ($CONCEPTS_HOME or the platform data folder).
//! let host = Host::open(None, None)?;
//! host.install(std::path::Path::new("bo.ycpt"), false)?;
//! let scores = host.recognise(Image::Path("photo.png".into()), &[], &mut || false)?;
//! for s in scores {
//!     println!("{}: p(yes) = {:.3}, present: {}", s.name, s.p_yes, s.present);
//! }
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use concept_format::Category;
use concept_registry::{InstallOptions, Registry, RegistryError};
use concepts_runtime::api::{
    ChatEvent, ChatMessage, ChatRequest, ChatStream, ChatSummary, ImageInput, Role, Runtime,
    RuntimeConfig, Selection,
};
use concepts_runtime::RuntimeError;
use concepts_server::RegistrySource;
use concepts_trainer::PluginSet;
use concepts_trainer::{Init, Phase, PoolSource, Progress, Subject, TrainConfig, TrainError};

/// How often a blocking call asks its `interrupted` callback whether to stop.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What kind of failure an [`EmbedError`] is; bindings map it to an exception class or an
/// error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad argument: an empty name, an image that is not one, a folder without photos.
    InvalidInput,
    /// No such concept (or file).
    NotFound,
    /// The name or identifier is taken by another installed concept.
    Conflict,
    /// A package that is malformed or does not fit the base model.
    Package,
    /// The base model folder is missing or malformed.
    Model,
    /// A file-system error.
    Io,
    /// A request over one of the runtime's limits (image size, concepts, tokens).
    Limit,
    /// Training failed (after its inputs were checked).
    Training,
    /// The caller interrupted the call.
    Cancelled,
    /// A bug: an internal error or a panic caught at the boundary.
    Internal,
}

/// An error with the runtime's message and the [`ErrorKind`] a binding reports it as.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EmbedError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EmbedError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> EmbedError {
        EmbedError {
            kind,
            message: message.into(),
        }
    }

    /// Converts `e` and puts what was being done before its message.
    fn doing(what: impl std::fmt::Display, e: impl Into<EmbedError>) -> EmbedError {
        let e = e.into();
        EmbedError::new(e.kind, format!("{what}: {}", e.message))
    }

    fn cancelled() -> EmbedError {
        EmbedError::new(ErrorKind::Cancelled, "interrupted")
    }
}

pub type Result<T> = std::result::Result<T, EmbedError>;

impl From<RuntimeError> for EmbedError {
    fn from(e: RuntimeError) -> EmbedError {
        EmbedError::new(runtime_kind(&e), e.to_string())
    }
}

fn runtime_kind(e: &RuntimeError) -> ErrorKind {
    match e {
        RuntimeError::Io { .. } | RuntimeError::Source(_) => ErrorKind::Io,
        RuntimeError::Json { .. }
        | RuntimeError::Safetensors { .. }
        | RuntimeError::InvalidConfig(_)
        | RuntimeError::Unsupported(_)
        | RuntimeError::MissingTensor { .. }
        | RuntimeError::TensorShape { .. }
        | RuntimeError::WeightLayout(_)
        | RuntimeError::Tokenizer { .. } => ErrorKind::Model,
        RuntimeError::InvalidInput(_) | RuntimeError::Prompt(_) | RuntimeError::Image(_) => {
            ErrorKind::InvalidInput
        }
        RuntimeError::Concept { .. } => ErrorKind::Package,
        RuntimeError::ConceptNotFound { .. } => ErrorKind::NotFound,
        RuntimeError::Limit { .. } => ErrorKind::Limit,
        RuntimeError::Cancelled => ErrorKind::Cancelled,
        _ => ErrorKind::Internal,
    }
}

impl From<RegistryError> for EmbedError {
    fn from(e: RegistryError) -> EmbedError {
        let kind = match &e {
            RegistryError::NotInstalled { .. } => ErrorKind::NotFound,
            RegistryError::NameTaken { .. } | RegistryError::IdentifierTaken { .. } => {
                ErrorKind::Conflict
            }
            RegistryError::InvalidPackage { .. }
            | RegistryError::BaseModel(_)
            | RegistryError::PinnedBaseModel { .. }
            | RegistryError::InvalidDigest(_) => ErrorKind::Package,
            RegistryError::InsideRegistry { .. } => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        EmbedError::new(kind, e.to_string())
    }
}

impl From<TrainError> for EmbedError {
    fn from(e: TrainError) -> EmbedError {
        let kind = match &e {
            TrainError::Input(_)
            | TrainError::Image { .. }
            | TrainError::TooFewPositives { .. }
            | TrainError::EmptyPool { .. }
            | TrainError::Identifier { .. } => ErrorKind::InvalidInput,
            TrainError::Interrupted { .. } => ErrorKind::Cancelled,
            TrainError::Io { .. } | TrainError::File { .. } | TrainError::Output(_) => {
                ErrorKind::Io
            }
            TrainError::Runtime(inner) => runtime_kind(inner),
            _ => ErrorKind::Training,
        };
        EmbedError::new(kind, e.to_string())
    }
}

/// An installed concept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concept {
    /// Unique name (`bo`).
    pub name: String,
    /// Identifier token (`<bo>`).
    pub identifier: String,
    /// Hex sha256 of the package file.
    pub digest: String,
    /// Size of the package file in bytes.
    pub size: u64,
}

impl From<&concept_registry::Entry> for Concept {
    fn from(e: &concept_registry::Entry) -> Concept {
        Concept {
            name: e.name.clone(),
            identifier: e.identifier.clone(),
            digest: e.sha256.as_hex().to_string(),
            size: e.size,
        }
    }
}

/// The recognition read-out of one concept (`concepts scan`'s, the server's).
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub name: String,
    pub identifier: String,
    /// Softmax probability of "Yes" at the answer position.
    pub p_yes: f64,
    /// Same for "No".
    pub p_no: f64,
    /// The decision: `p_yes > p_no`.
    pub present: bool,
}

/// An image as a host language hands it over.
#[derive(Debug, Clone)]
pub enum Image {
    /// A JPEG, PNG or WebP file.
    Path(PathBuf),
    /// The bytes of such a file; `name` appears in error messages.
    Encoded { name: String, bytes: Vec<u8> },
    /// Raw 8-bit RGB pixels, row-major (a numpy `uint8` array of shape `(height, width, 3)`).
    Rgb {
        width: u32,
        height: u32,
        data: Vec<u8>,
    },
}

impl Image {
    /// The runtime's input. Raw pixels are encoded as PNG so that they take the one bounded
    /// image path every other image takes.
    fn into_input(self) -> Result<ImageInput> {
        match self {
            Image::Path(path) => Ok(ImageInput::File(path)),
            Image::Encoded { name, bytes } => Ok(ImageInput::Encoded {
                name,
                bytes: bytes.into(),
            }),
            Image::Rgb {
                width,
                height,
                data,
            } => Ok(ImageInput::Encoded {
                name: format!("<{width}x{height} RGB array>"),
                bytes: encode_rgb_png(width, height, data)?.into(),
            }),
        }
    }
}

fn encode_rgb_png(width: u32, height: u32, data: Vec<u8>) -> Result<Vec<u8>> {
    let expected = width as u64 * height as u64 * 3;
    if width == 0 || height == 0 || data.len() as u64 != expected {
        return Err(EmbedError::new(
            ErrorKind::InvalidInput,
            format!(
                "an RGB image of {width}x{height} needs {expected} bytes (height x width x 3, \
                 uint8), got {}",
                data.len()
            ),
        ));
    }
    let image = image::RgbImage::from_raw(width, height, data)
        .ok_or_else(|| EmbedError::new(ErrorKind::InvalidInput, "bad RGB buffer"))?;
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| EmbedError::new(ErrorKind::Internal, format!("encoding PNG: {e}")))?;
    Ok(png)
}

/// One chat message.
#[derive(Debug, Clone)]
pub struct Message {
    /// `user` or `assistant` (`system` is accepted and ignored, as by the server).
    pub role: String,
    pub text: String,
    pub image: Option<Image>,
}

/// A chat request's options besides its messages.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Concepts to activate by name or identifier; identifiers in the text (`<bo>`) are
    /// activated too.
    pub concepts: Vec<String>,
    /// Most tokens to generate.
    pub max_tokens: usize,
}

/// What a training run reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// A phase (`"mining"` or `"conversations"`) advanced to `done` of `total`.
    Phase {
        phase: &'static str,
        done: u64,
        total: u64,
    },
    /// An epoch ended: its mean loss and weighted validation recognition.
    Epoch {
        epoch: u32,
        epochs: u32,
        loss: f32,
        recognition: f32,
    },
    /// A note for the user.
    Note(String),
}

/// The photos of a subject.
#[derive(Debug, Clone)]
pub enum TrainImages {
    /// A folder of photos (not searched recursively).
    Dir(PathBuf),
    /// Photos given one by one; they are written to a temporary folder for the trainer.
    List(Vec<Image>),
}

/// What [`Host::train`] trains.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// The concept's name (`bo`); its identifier is `<name>`.
    pub name: String,
    pub images: TrainImages,
    /// The negative pool (a folder or an embedding file); `None`: the model's `negatives/`.
    pub negatives: Option<PathBuf>,
    /// Where the package goes; `None`: `<home>/trained/<name>.ycpt`.
    pub output: Option<PathBuf>,
    /// Most epochs; `None`: the trainer's default (15).
    pub epochs: Option<u32>,
    /// Conversation questions per photo (at most
    /// [`MAX_QUESTIONS_PER_IMAGE`](concepts_trainer::MAX_QUESTIONS_PER_IMAGE)); `None`: all.
    pub questions: Option<usize>,
    /// How the latent tokens start: `random` (the default), `visual`, `word:WORD` or
    /// `text:TEXT` (as `concepts train --init`).
    pub init: Option<String>,
    pub seed: u64,
}

/// What [`Host::train`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    pub package: PathBuf,
    pub best_epoch: u32,
    pub epochs_run: u32,
    /// Weighted recognition of the best epoch on the training photos.
    pub recognition: f32,
}

/// One base model, one registry and the async runtime that drives them.
pub struct Host {
    runtime: Runtime,
    registry: Registry,
    model_dir: PathBuf,
    home: PathBuf,
    tokio: Arc<tokio::runtime::Runtime>,
}

impl Host {
    /// Loads the base model in `model_dir` (default: `$CONCEPTS_DEFAULT_MODEL`, else the
    /// embedded toy model) and opens, creating if needed, the registry in `home` (default:
    /// `$CONCEPTS_HOME`, else `<data dir>/concepts`), as the CLI resolves them.
    pub fn open(model_dir: Option<&Path>, home: Option<&Path>) -> Result<Host> {
        let home = match home {
            Some(home) => home.to_path_buf(),
            None => concept_registry::default_home(std::env::var_os("CONCEPTS_HOME").as_deref())
                .map_err(|e| EmbedError::new(ErrorKind::InvalidInput, e.to_string()))?,
        };
        let model_dir = match model_dir {
            Some(dir) if dir.join("config.json").is_file() => dir.to_path_buf(),
            Some(dir) => {
                return Err(EmbedError::new(
                    ErrorKind::Model,
                    format!(
                        "`{}` is not a model folder (it has no config.json)",
                        dir.display()
                    ),
                ))
            }
            None => {
                let from_env = std::env::var_os("CONCEPTS_DEFAULT_MODEL").map(PathBuf::from);
                concepts_runtime::default_model::default_model_dir(from_env.as_deref(), &home)
                    .map_err(|e| EmbedError::new(ErrorKind::Model, e.to_string()))?
            }
        };
        let registry = Registry::open(&home)?;
        let source = Arc::new(RegistrySource::new(registry.clone()));
        let runtime =
            Runtime::load(&model_dir, source, RuntimeConfig::recommended()).map_err(|e| {
                EmbedError::doing(format_args!("loading model `{}`", model_dir.display()), e)
            })?;
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("concepts-embed")
            .enable_time()
            .build()
            .map_err(|e| EmbedError::new(ErrorKind::Internal, format!("starting tokio: {e}")))?;
        Ok(Host {
            runtime,
            registry,
            model_dir,
            home,
            tokio: Arc::new(tokio),
        })
    }

    /// The base model folder.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The registry folder.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The async runtime underneath, for Rust hosts that want both.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The base model's name (its folder's name).
    pub fn model_id(&self) -> &str {
        self.runtime.model_id()
    }

    /// Installs a `.ycpt` package; `replace` lets it take the name or identifier of an
    /// installed concept. The package is validated completely before it becomes visible.
    pub fn install(&self, path: &Path, replace: bool) -> Result<Concept> {
        let options = InstallOptions {
            replace,
            force: false,
        };
        let report = self
            .registry
            .install_file(path, &options)
            .map_err(|e| EmbedError::doing(format_args!("installing `{}`", path.display()), e))?;
        Ok(Concept::from(&report.entry))
    }

    /// Removes an installed concept by name or identifier.
    pub fn remove(&self, query: &str) -> Result<Concept> {
        Ok(Concept::from(&self.registry.remove(query)?))
    }

    /// The installed concepts.
    pub fn list(&self) -> Result<Vec<Concept>> {
        Ok(self.registry.list()?.iter().map(Concept::from).collect())
    }

    /// Asks whether each concept is in the photo: `concepts` by name or identifier, or every
    /// installed concept this model can use when empty. The image prefix is computed once
    /// (the concept scan).
    pub fn recognise(
        &self,
        image: Image,
        concepts: &[String],
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Score>> {
        let selection = if concepts.is_empty() {
            Selection::All
        } else {
            Selection::Named(concepts.to_vec())
        };
        let input = image.into_input()?;
        let scores = block_on(
            &self.tokio,
            self.runtime.recognise_all(input, selection),
            interrupted,
        )??;
        Ok(scores
            .into_iter()
            .map(|s| Score {
                present: s.present(),
                name: s.concept.name,
                identifier: s.concept.identifier,
                p_yes: s.p_yes,
                p_no: s.p_no,
            })
            .collect())
    }

    /// Starts a chat (greedy decoding); read the answer piece by piece from the [`Chat`].
    pub fn chat(
        &self,
        messages: Vec<Message>,
        options: ChatOptions,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Chat> {
        if messages.is_empty() {
            return Err(EmbedError::new(
                ErrorKind::InvalidInput,
                "a chat needs at least one message",
            ));
        }
        let mut converted = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "system" => Role::System,
                other => {
                    return Err(EmbedError::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "message {i}: role `{other}` is not one of user, assistant, system"
                        ),
                    ))
                }
            };
            let mut message = ChatMessage {
                role,
                text: m.text,
                images: Vec::new(),
            };
            if let Some(image) = m.image {
                message = message.with_image(image.into_input()?);
            }
            converted.push(message);
        }
        let request = ChatRequest {
            concepts: options.concepts,
            ..ChatRequest::new(converted, options.max_tokens)
        };
        let stream = block_on(&self.tokio, self.runtime.chat(request), interrupted)??;
        Ok(Chat {
            stream: Some(stream),
            tokio: self.tokio.clone(),
            summary: None,
        })
    }

    /// Trains a concept with the built-in stages and writes its package (not installed:
    /// call [`Host::install`]). `on_event` is called on the calling thread.
    pub fn train(
        &self,
        request: TrainRequest,
        on_event: &mut dyn FnMut(TrainEvent),
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Trained> {
        // The name, the numbers and the pool are checked by the trainer before any work.
        let invalid = |m: String| EmbedError::new(ErrorKind::InvalidInput, m);
        let init = match &request.init {
            None => Init::Random,
            Some(text) => Init::parse(text).ok_or_else(|| {
                invalid(format!(
                    "init `{text}`: expected random, visual, word:WORD or text:TEXT"
                ))
            })?,
        };
        let negatives = match &request.negatives {
            Some(path) => PoolSource::from_path(path),
            None => {
                let dir = self.model_dir.join("negatives");
                if !dir.is_dir() {
                    return Err(invalid(format!(
                        "no negative pool: pass negatives (the model `{}` has no `negatives/` \
                         folder)",
                        self.model_dir.display()
                    )));
                }
                PoolSource::Dir(dir)
            }
        };
        // Photos given one by one go into a folder of their own, named in order.
        let staged;
        let images = match request.images {
            TrainImages::Dir(dir) => dir,
            TrainImages::List(list) => {
                staged = tempfile::Builder::new()
                    .prefix("concepts-train-")
                    .tempdir()
                    .map_err(|e| EmbedError::new(ErrorKind::Io, format!("temp folder: {e}")))?;
                for (i, image) in list.into_iter().enumerate() {
                    stage_image(staged.path(), i, image)?;
                }
                staged.path().to_path_buf()
            }
        };
        let output = match request.output {
            Some(path) => path,
            None => {
                let dir = self.home.join("trained");
                std::fs::create_dir_all(&dir).map_err(|e| {
                    EmbedError::new(ErrorKind::Io, format!("creating `{}`: {e}", dir.display()))
                })?;
                dir.join(format!("{}.ycpt", request.name))
            }
        };
        let installed = self
            .registry
            .list()?
            .into_iter()
            .flat_map(|e| [e.name, e.identifier])
            .collect();
        let subject = Subject {
            identifier: format!("<{}>", request.name),
            display_name: request.name.clone(),
            name: request.name.clone(),
            category: Category::Other,
            user_facts: Vec::new(),
        };
        let mut cfg = TrainConfig::new(subject, images, negatives, output);
        if let Some(epochs) = request.epochs {
            cfg.epochs = epochs;
        }
        if let Some(q) = request.questions {
            cfg.conversation.questions_per_image = q;
        }
        cfg.seed = request.seed;
        cfg.init = init;
        cfg.cache_dir = Some(self.home.join("cache").join("pool-embeddings"));
        cfg.installed = installed;

        let cancel = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel();
        let model_dir = &self.model_dir;
        let outcome = std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                // The stages are not `Send`: they are made on the thread that uses them.
                let mut stages = PluginSet::builtin();
                let mut progress = Forward {
                    tx,
                    epochs: cfg.epochs,
                    totals: [0; 2],
                };
                concepts_trainer::train(
                    model_dir,
                    &candle_core::Device::Cpu,
                    candle_core::DType::F32,
                    &cfg,
                    &mut stages,
                    &mut progress,
                    &cancel,
                )
            });
            loop {
                match rx.recv_timeout(POLL_INTERVAL) {
                    Ok(event) => on_event(event),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // The worker dropped its sender: it is done.
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if !cancel.load(Ordering::SeqCst) && interrupted() {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
            worker.join()
        });
        let outcome = match outcome {
            Ok(result) => result,
            Err(_) => {
                return Err(EmbedError::new(
                    ErrorKind::Internal,
                    "the training thread panicked",
                ))
            }
        };
        let outcome = outcome
            .map_err(|e| EmbedError::doing(format_args!("training `{}`", request.name), e))?;
        Ok(Trained {
            package: outcome.package,
            best_epoch: outcome.summary.best_epoch,
            epochs_run: outcome.summary.epochs_run,
            recognition: outcome.summary.best_accuracy,
        })
    }
}

/// A chat being generated; dropping it stops the generation.
pub struct Chat {
    stream: Option<ChatStream>,
    tokio: Arc<tokio::runtime::Runtime>,
    summary: Option<ChatSummary>,
}

impl Chat {
    /// The next piece of the answer, or `None` at the end (then [`Chat::summary`] is set).
    pub fn next_piece(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<Option<String>> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match block_on(&self.tokio, stream.next(), interrupted) {
            Err(e) => {
                // Interrupted: dropping the stream stops the generation.
                self.stream = None;
                Err(e)
            }
            Ok(None) => {
                self.stream = None;
                Err(EmbedError::cancelled())
            }
            Ok(Some(Err(e))) => {
                self.stream = None;
                Err(e.into())
            }
            Ok(Some(Ok(ChatEvent::Text(piece)))) => Ok(Some(piece)),
            Ok(Some(Ok(ChatEvent::Done(summary)))) => {
                self.summary = Some(summary);
                self.stream = None;
                Ok(None)
            }
        }
    }

    /// Reads the whole answer.
    pub fn collect(mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<ChatSummary> {
        while self.next_piece(interrupted)?.is_some() {}
        self.summary
            .take()
            .ok_or_else(|| EmbedError::new(ErrorKind::Internal, "the chat ended without a summary"))
    }

    /// The end of the chat, once [`Chat::next_piece`] returned `None`.
    pub fn summary(&self) -> Option<&ChatSummary> {
        self.summary.as_ref()
    }
}

/// Writes a toy dataset (`concepts toy dataset --seed S --subjects N -o DIR`): photos, a
/// negative pool and questions for `subjects` held-out toy subjects. Returns each subject's
/// name and description.
pub fn toy_dataset(dir: &Path, seed: u64, subjects: usize) -> Result<Vec<(String, String)>> {
    let summary =
        toy_world::write_dataset(dir, seed, subjects, &toy_world::DatasetConfig::standard())
            .map_err(|e| {
                EmbedError::new(
                    ErrorKind::InvalidInput,
                    format!("writing the toy dataset to `{}`: {e}", dir.display()),
                )
            })?;
    Ok(summary
        .subjects
        .iter()
        .map(|s| (s.name().to_string(), s.description().to_string()))
        .collect())
}

/// The registry folder when none is given: `$CONCEPTS_HOME`, else `<data dir>/concepts`.
/// Writes one photo of a [`TrainImages::List`] into the trainer's folder.
fn stage_image(dir: &Path, index: usize, image: Image) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| {
        EmbedError::new(ErrorKind::Io, format!("`{}`: {e}", path.display()))
    };
    let (ext, bytes) = match image {
        Image::Path(path) => {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .unwrap_or_default();
            if !["png", "jpg", "jpeg", "webp"].contains(&ext.as_str()) {
                return Err(EmbedError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "`{}` is not a .png, .jpg, .jpeg or .webp file",
                        path.display()
                    ),
                ));
            }
            let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
            (ext, bytes)
        }
        Image::Encoded { name, bytes } => {
            let format = image::guess_format(&bytes).map_err(|_| {
                EmbedError::new(
                    ErrorKind::InvalidInput,
                    format!("image {index} ({name}) is not a PNG, JPEG or WebP file"),
                )
            })?;
            let ext = match format {
                image::ImageFormat::Png => "png",
                image::ImageFormat::Jpeg => "jpg",
                image::ImageFormat::WebP => "webp",
                _ => {
                    return Err(EmbedError::new(
                        ErrorKind::InvalidInput,
                        format!("image {index} ({name}) is not a PNG, JPEG or WebP file"),
                    ))
                }
            };
            (ext.to_string(), bytes)
        }
        Image::Rgb {
            width,
            height,
            data,
        } => ("png".to_string(), encode_rgb_png(width, height, data)?),
    };
    let path = dir.join(format!("{index:04}.{ext}"));
    std::fs::write(&path, bytes).map_err(|e| io(&path, e))
}

/// Runs `fut` to completion on `tokio`, asking `interrupted` every [`POLL_INTERVAL`]; when it
/// says stop, the future is dropped (which cancels the runtime's work) and the call returns
/// [`ErrorKind::Cancelled`].
fn block_on<F: Future>(
    tokio: &tokio::runtime::Runtime,
    fut: F,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<F::Output> {
    tokio.block_on(async {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                _ = tick.tick() => {
                    if interrupted() {
                        return Err(EmbedError::cancelled());
                    }
                }
            }
        }
    })
}

/// The trainer's progress, sent to the calling thread.
struct Forward {
    tx: mpsc::Sender<TrainEvent>,
    epochs: u32,
    /// The total of each phase (mining, conversations), from its start.
    totals: [u64; 2],
}

impl Progress for Forward {
    fn start(&mut self, phase: Phase, total: u64) {
        self.totals[phase_index(phase)] = total;
        self.send_phase(phase, 0);
    }

    fn advance(&mut self, phase: Phase, done: u64) {
        self.send_phase(phase, done);
    }

    fn training(&mut self, epochs: u32, _replaying: u32) {
        self.epochs = epochs;
    }

    fn epoch(&mut self, report: &concepts_plugin_api::EpochReport, _replayed: bool) {
        let v = &report.validation;
        let _ = self.tx.send(TrainEvent::Epoch {
            epoch: report.epoch,
            epochs: self.epochs,
            loss: report.mean_loss,
            recognition: (v.positive_accuracy + v.negative_accuracy) / 2.0,
        });
    }

    fn note(&mut self, text: &str) {
        let _ = self.tx.send(TrainEvent::Note(text.to_string()));
    }
}

impl Forward {
    fn send_phase(&mut self, phase: Phase, done: u64) {
        let total = self.totals[phase_index(phase)];
        let name = ["mining", "conversations"][phase_index(phase)];
        let _ = self.tx.send(TrainEvent::Phase {
            phase: name,
            done,
            total,
        });
    }
}

fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::Mining => 0,
        Phase::Conversations => 1,
    }
}
