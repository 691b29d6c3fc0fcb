//! `concepts._concepts`: the Python extension module behind the `concepts` package.
//!
//! A thin layer over [`concepts_embed::Host`]: Python values in, the facade's blocking calls
//! with the GIL released, Python values and exceptions out. Long calls ask for pending
//! signals every [`concepts_embed::POLL_INTERVAL`], so Ctrl-C stops them at the next token,
//! concept or training step and raises `KeyboardInterrupt`.

use std::path::PathBuf;
use std::sync::Mutex;

use concepts_embed::{
    ChatOptions, EmbedError, ErrorKind, Host, Image, Message, TrainEvent, TrainImages, TrainRequest,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

create_exception!(
    _concepts,
    ConceptsError,
    PyException,
    "Base class of every concepts error."
);
create_exception!(
    _concepts,
    InvalidInputError,
    ConceptsError,
    "A bad argument: an image that is not one, a folder without photos, an unknown role."
);
create_exception!(
    _concepts,
    NotFoundError,
    ConceptsError,
    "No such installed concept."
);
create_exception!(
    _concepts,
    ConflictError,
    ConceptsError,
    "The name or identifier is taken by another installed concept."
);
create_exception!(
    _concepts,
    PackageError,
    ConceptsError,
    "A concept package that is malformed or does not fit the base model."
);
create_exception!(
    _concepts,
    ModelError,
    ConceptsError,
    "The base model folder is missing or malformed."
);
create_exception!(
    _concepts,
    LimitError,
    ConceptsError,
    "A request over one of the runtime's limits."
);
create_exception!(
    _concepts,
    TrainingError,
    ConceptsError,
    "Training failed after its inputs were checked."
);
create_exception!(
    _concepts,
    StorageError,
    ConceptsError,
    "A file-system error."
);

/// The exception for an error; `interrupt` is the `KeyboardInterrupt` a signal check raised.
fn to_py(e: EmbedError, interrupt: Option<PyErr>) -> PyErr {
    let msg = e.message;
    match e.kind {
        ErrorKind::InvalidInput => InvalidInputError::new_err(msg),
        ErrorKind::NotFound => NotFoundError::new_err(msg),
        ErrorKind::Conflict => ConflictError::new_err(msg),
        ErrorKind::Package => PackageError::new_err(msg),
        ErrorKind::Model => ModelError::new_err(msg),
        ErrorKind::Limit => LimitError::new_err(msg),
        ErrorKind::Training => TrainingError::new_err(msg),
        ErrorKind::Io => StorageError::new_err(msg),
        ErrorKind::Cancelled => {
            interrupt.unwrap_or_else(|| PyKeyboardInterrupt::new_err("interrupted"))
        }
        ErrorKind::Internal => ConceptsError::new_err(msg),
    }
}

/// Asks Python for pending signals (Ctrl-C); keeps the exception the handler raised.
#[derive(Default)]
struct Signals {
    raised: Option<PyErr>,
}

impl Signals {
    fn check(&mut self) -> bool {
        if self.raised.is_some() {
            return true;
        }
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                self.raised = Some(e);
                true
            }
        })
    }
}

/// Runs `f` with the GIL released and a signal check as its `interrupted` callback.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> bool) -> Result<T, EmbedError> + Send,
) -> PyResult<T> {
    let mut signals = Signals::default();
    let result = py.detach(|| f(&mut || signals.check()));
    result.map_err(|e| to_py(e, signals.raised.take()))
}

/// A path from `str` or `os.PathLike`.
fn path_of(obj: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    obj.extract::<PathBuf>()
        .map_err(|_| InvalidInputError::new_err(format!("expected a path, got {}", type_name(obj))))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an unknown type".to_string())
}

/// An image from a path, the bytes of an image file, a PIL image or a numpy `uint8` array of
/// shape `(height, width, 3)`.
fn image_of(obj: &Bound<'_, PyAny>) -> PyResult<Image> {
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<pyo3::types::PyByteArray>() {
        return Ok(Image::Encoded {
            name: "<bytes>".to_string(),
            bytes: obj.extract::<Vec<u8>>()?,
        });
    }
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        return Ok(Image::Path(path_of(obj)?));
    }
    // PIL: convert to RGB and take its raw bytes.
    if obj.hasattr("convert")? && obj.hasattr("tobytes")? && obj.hasattr("size")? {
        let rgb = obj.call_method1("convert", ("RGB",))?;
        let (width, height): (u32, u32) = rgb.getattr("size")?.extract()?;
        let data: Vec<u8> = rgb.call_method0("tobytes")?.extract()?;
        return Ok(Image::Rgb {
            width,
            height,
            data,
        });
    }
    // numpy (or anything with its array interface).
    if obj.hasattr("shape")? && obj.hasattr("dtype")? && obj.hasattr("tobytes")? {
        let dtype: String = obj.getattr("dtype")?.str()?.extract()?;
        let shape: Vec<usize> = obj.getattr("shape")?.extract()?;
        if dtype != "uint8" || shape.len() != 3 || shape[2] != 3 {
            return Err(InvalidInputError::new_err(format!(
                "an image array must be uint8 of shape (height, width, 3), got {dtype} of shape \
                 {shape:?}"
            )));
        }
        let data: Vec<u8> = obj.call_method0("tobytes")?.extract()?;
        return Ok(Image::Rgb {
            width: u32::try_from(shape[1]).map_err(|_| InvalidInputError::new_err("too wide"))?,
            height: u32::try_from(shape[0]).map_err(|_| InvalidInputError::new_err("too tall"))?,
            data,
        });
    }
    Err(InvalidInputError::new_err(format!(
        "expected an image: a path, the bytes of a PNG/JPEG/WebP file, a PIL image or a uint8 \
         array of shape (height, width, 3); got {}",
        type_name(obj)
    )))
}

/// Concept names from `None`, one string or a list of strings.
fn names_of(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    match obj {
        None => Ok(Vec::new()),
        Some(o) if o.is_none() => Ok(Vec::new()),
        Some(o) if o.is_instance_of::<PyString>() => Ok(vec![o.extract()?]),
        Some(o) => o
            .extract::<Vec<String>>()
            .map_err(|_| InvalidInputError::new_err("concepts must be a name or a list of names")),
    }
}

/// Messages from one string (a user message) or a list of `{"role", "content", "image"}`.
fn messages_of(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Message>> {
    if obj.is_instance_of::<PyString>() {
        return Ok(vec![Message {
            role: "user".to_string(),
            text: obj.extract()?,
            image: None,
        }]);
    }
    let list = obj
        .cast::<PyList>()
        .map_err(|_| InvalidInputError::new_err("messages must be a string or a list of dicts"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let dict = item
            .cast::<PyDict>()
            .map_err(|_| InvalidInputError::new_err(format!("message {i} is not a dict")))?;
        let role: String = match dict.get_item("role")? {
            Some(r) => r.extract()?,
            None => "user".to_string(),
        };
        let text: String = match dict.get_item("content")? {
            Some(t) => t.extract().map_err(|_| {
                InvalidInputError::new_err(format!("message {i}: content must be a string"))
            })?,
            None => {
                return Err(InvalidInputError::new_err(format!(
                    "message {i} has no \"content\""
                )))
            }
        };
        let image = match dict.get_item("image")? {
            Some(img) if !img.is_none() => Some(image_of(&img)?),
            _ => None,
        };
        out.push(Message { role, text, image });
    }
    Ok(out)
}

/// An installed concept.
#[pyclass(frozen, get_all, module = "concepts")]
struct Concept {
    /// Unique name (`bo`).
    name: String,
    /// Identifier token (`<bo>`).
    identifier: String,
    /// Hex sha256 of the package file.
    digest: String,
    /// Size of the package file in bytes.
    size: u64,
}

#[pymethods]
impl Concept {
    fn __repr__(&self) -> String {
        format!(
            "Concept(name={:?}, identifier={:?}, digest={:?})",
            self.name,
            self.identifier,
            &self.digest[..12.min(self.digest.len())]
        )
    }
}

impl From<concepts_embed::Concept> for Concept {
    fn from(c: concepts_embed::Concept) -> Concept {
        Concept {
            name: c.name,
            identifier: c.identifier,
            digest: c.digest,
            size: c.size,
        }
    }
}

/// The recognition read-out of one concept: p(Yes) and p(No) at the answer position.
#[pyclass(frozen, get_all, module = "concepts")]
struct Score {
    name: String,
    identifier: String,
    p_yes: f64,
    p_no: f64,
    /// The decision, `p_yes > p_no` (as `concepts scan` and the server decide).
    present: bool,
}

#[pymethods]
impl Score {
    fn __repr__(&self) -> String {
        format!(
            "Score(name={:?}, p_yes={:.4}, p_no={:.4}, present={})",
            self.name,
            self.p_yes,
            self.p_no,
            if self.present { "True" } else { "False" }
        )
    }
}

/// A streamed answer: iterate for the text pieces; dropping it stops the generation.
#[pyclass(module = "concepts")]
struct ChatStream {
    chat: Mutex<Option<concepts_embed::Chat>>,
    /// The answer so far.
    #[pyo3(get)]
    text: String,
}

#[pymethods]
impl ChatStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<String>> {
        let chat = &self.chat;
        let piece = detached(py, |interrupted| {
            let mut guard = chat.lock().expect("chat lock");
            let Some(c) = guard.as_mut() else {
                return Ok(None);
            };
            let piece = c.next_piece(interrupted);
            if !matches!(piece, Ok(Some(_))) {
                *guard = None;
            }
            piece
        })?;
        if let Some(p) = &piece {
            self.text.push_str(p);
        }
        Ok(piece)
    }
}

/// One base model and a concept registry: install, list and remove concepts, recognise them
/// in photos, chat about them and train new ones.
///
/// `model_dir`: a llava-hf model folder (default: `$CONCEPTS_DEFAULT_MODEL`, else the embedded
/// toy model). `home`: the registry folder (default: `$CONCEPTS_HOME`, else the platform's
/// data folder), shared with the `concepts` command line.
#[pyclass(frozen, module = "concepts")]
struct Runtime {
    host: Host,
}

#[pymethods]
impl Runtime {
    #[new]
    #[pyo3(signature = (model_dir=None, home=None))]
    fn new(
        py: Python<'_>,
        model_dir: Option<&Bound<'_, PyAny>>,
        home: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Runtime> {
        let model_dir = model_dir
            .filter(|m| !m.is_none())
            .map(path_of)
            .transpose()?;
        let home = home.filter(|h| !h.is_none()).map(path_of).transpose()?;
        let host = detached(py, |_| Host::open(model_dir.as_deref(), home.as_deref()))?;
        Ok(Runtime { host })
    }

    /// The base model's name (its folder's name).
    #[getter]
    fn model_id(&self) -> &str {
        self.host.model_id()
    }

    /// The base model folder.
    #[getter]
    fn model_dir(&self) -> PathBuf {
        self.host.model_dir().to_path_buf()
    }

    /// The registry folder.
    #[getter]
    fn home(&self) -> PathBuf {
        self.host.home().to_path_buf()
    }

    /// Installs a `.ycpt` package; `replace=True` lets it take the name or identifier of an
    /// installed concept.
    #[pyo3(signature = (path, replace=false))]
    fn install(&self, py: Python<'_>, path: &Bound<'_, PyAny>, replace: bool) -> PyResult<Concept> {
        let path = path_of(path)?;
        detached(py, |_| self.host.install(&path, replace)).map(Concept::from)
    }

    /// Removes an installed concept by name or identifier.
    fn remove(&self, py: Python<'_>, name: &str) -> PyResult<Concept> {
        detached(py, |_| self.host.remove(name)).map(Concept::from)
    }

    /// The installed concepts.
    fn list(&self, py: Python<'_>) -> PyResult<Vec<Concept>> {
        detached(py, |_| self.host.list()).map(|v| v.into_iter().map(Concept::from).collect())
    }

    /// Which concepts are in the photo: `{name: Score}` for `concepts` (a name, a list of
    /// names, or `None` for every installed concept this model can use).
    #[pyo3(signature = (image, concepts=None))]
    fn recognise<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        concepts: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let image = image_of(image)?;
        let names = names_of(concepts)?;
        let scores = detached(py, |interrupted| {
            self.host.recognise(image, &names, interrupted)
        })?;
        let out = PyDict::new(py);
        for s in scores {
            out.set_item(
                s.name.clone(),
                Score {
                    name: s.name,
                    identifier: s.identifier,
                    p_yes: s.p_yes,
                    p_no: s.p_no,
                    present: s.present,
                },
            )?;
        }
        Ok(out)
    }

    /// Answers a conversation: `messages` is a string (one user message) or a list of
    /// `{"role": "user" | "assistant", "content": str, "image": optional image}`. Concepts
    /// named in `concepts` or mentioned by identifier (`<bo>`) are active. Returns the answer,
    /// or with `stream=True` an iterator over its pieces.
    #[pyo3(signature = (messages, concepts=None, max_tokens=64, stream=false))]
    fn chat<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        concepts: Option<&Bound<'py, PyAny>>,
        max_tokens: usize,
        stream: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let messages = messages_of(messages)?;
        let options = ChatOptions {
            concepts: names_of(concepts)?,
            max_tokens,
        };
        if stream {
            let chat = detached(py, |interrupted| {
                self.host.chat(messages, options, interrupted)
            })?;
            let stream = ChatStream {
                chat: Mutex::new(Some(chat)),
                text: String::new(),
            };
            Ok(Bound::new(py, stream)?.into_any())
        } else {
            let summary = detached(py, |interrupted| {
                self.host
                    .chat(messages, options, interrupted)?
                    .collect(interrupted)
            })?;
            Ok(PyString::new(py, &summary.text).into_any())
        }
    }

    /// Trains a concept named `name` from `images` (a folder, or a list of images as
    /// `recognise` takes them) against the negative pool `negatives` (a folder; default: the
    /// model's `negatives/`), and returns the path of the package (default
    /// `<home>/trained/<name>.ycpt`; not installed). `progress`, if given, is called with a
    /// dict per event (`{"event": "phase" | "epoch" | "note", ...}`). `init` starts the latent
    /// tokens as `concepts train --init` does: `"random"` (default), `"visual"`, `"word:WORD"`
    /// or `"text:TEXT"` (e.g. the subject's description).
    #[pyo3(signature = (name, images, negatives=None, progress=None, epochs=None, questions=None, init=None, seed=0, output=None))]
    #[allow(clippy::too_many_arguments)]
    fn train(
        &self,
        py: Python<'_>,
        name: String,
        images: &Bound<'_, PyAny>,
        negatives: Option<&Bound<'_, PyAny>>,
        progress: Option<Py<PyAny>>,
        epochs: Option<u32>,
        questions: Option<usize>,
        init: Option<String>,
        seed: u64,
        output: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PathBuf> {
        let images = if images.is_instance_of::<PyString>() || images.hasattr("__fspath__")? {
            TrainImages::Dir(path_of(images)?)
        } else if let Ok(list) = images.cast::<PyList>() {
            TrainImages::List(list.iter().map(|i| image_of(&i)).collect::<PyResult<_>>()?)
        } else {
            return Err(InvalidInputError::new_err(
                "images must be a folder or a list of images",
            ));
        };
        let request = TrainRequest {
            name,
            images,
            negatives: negatives
                .filter(|n| !n.is_none())
                .map(path_of)
                .transpose()?,
            output: output.filter(|o| !o.is_none()).map(path_of).transpose()?,
            epochs,
            questions,
            init,
            seed,
        };
        // A callback that raises stops the training; its exception is the one raised.
        let callback_error: Mutex<Option<PyErr>> = Mutex::new(None);
        let mut signals = Signals::default();
        let result = py.detach(|| {
            let mut on_event = |event: TrainEvent| {
                let Some(cb) = &progress else { return };
                let mut failed = callback_error.lock().expect("callback error lock");
                if failed.is_some() {
                    return;
                }
                Python::attach(|py| {
                    if let Err(e) = event_dict(py, &event).and_then(|d| cb.call1(py, (d,))) {
                        *failed = Some(e);
                    }
                });
            };
            let mut interrupted = || {
                callback_error
                    .lock()
                    .expect("callback error lock")
                    .is_some()
                    || signals.check()
            };
            self.host.train(request, &mut on_event, &mut interrupted)
        });
        if let Some(e) = callback_error.into_inner().expect("callback error lock") {
            return Err(e);
        }
        result
            .map(|trained| trained.package)
            .map_err(|e| to_py(e, signals.raised.take()))
    }

    fn __repr__(&self) -> String {
        format!(
            "Runtime(model={:?}, home={:?})",
            self.host.model_dir().display().to_string(),
            self.host.home().display().to_string()
        )
    }
}

fn event_dict<'py>(py: Python<'py>, event: &TrainEvent) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match event {
        TrainEvent::Phase { phase, done, total } => {
            d.set_item("event", "phase")?;
            d.set_item("phase", *phase)?;
            d.set_item("done", *done)?;
            d.set_item("total", *total)?;
        }
        TrainEvent::Epoch {
            epoch,
            epochs,
            loss,
            recognition,
        } => {
            d.set_item("event", "epoch")?;
            d.set_item("epoch", *epoch)?;
            d.set_item("epochs", *epochs)?;
            d.set_item("loss", *loss)?;
            d.set_item("recognition", *recognition)?;
        }
        TrainEvent::Note(text) => {
            d.set_item("event", "note")?;
            d.set_item("text", text)?;
        }
    }
    Ok(d)
}

/// Writes a toy dataset (as `concepts toy dataset`) into `path`: photos, a negative pool and
/// questions for `subjects` held-out toy subjects of the embedded model's world. Returns
/// `{name: description}`.
#[pyfunction]
#[pyo3(signature = (path, seed=1, subjects=2))]
fn toy_dataset<'py>(
    py: Python<'py>,
    path: &Bound<'py, PyAny>,
    seed: u64,
    subjects: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let path = path_of(path)?;
    let written = detached(py, |_| concepts_embed::toy_dataset(&path, seed, subjects))?;
    let out = PyDict::new(py);
    for (name, description) in written {
        out.set_item(name, description)?;
    }
    Ok(out)
}

#[pymodule]
fn _concepts(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Runtime>()?;
    m.add_class::<Concept>()?;
    m.add_class::<Score>()?;
    m.add_class::<ChatStream>()?;
    m.add_function(wrap_pyfunction!(toy_dataset, m)?)?;
    m.add("ConceptsError", py.get_type::<ConceptsError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("PackageError", py.get_type::<PackageError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("LimitError", py.get_type::<LimitError>())?;
    m.add("TrainingError", py.get_type::<TrainingError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    Ok(())
}
