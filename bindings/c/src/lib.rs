//! The C ABI of the embedded runtime: `libconcepts.so` and `include/concepts.h`.
//!
//! A thin layer over [`concepts_embed::Host`], the facade the Python package wraps too.
//! Conventions (see `bindings/c/README.md`):
//!
//! * Opaque handles ([`ConceptsRuntime`]) made by `*_open` and released by `*_free`.
//! * Every fallible call returns a [`ConceptsStatus`]; on failure
//!   [`concepts_last_error`] gives the message (thread-local, valid until the thread's next
//!   call into the library). Outputs are written only on success.
//! * Strings in and out are UTF-8 and NUL-terminated; strings and arrays the library returns
//!   are released with [`concepts_string_free`] and [`concepts_scores_free`].
//! * No panic crosses the boundary: it becomes [`ConceptsStatus::Internal`].
//! * A handle may be used from several threads at once.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use concepts_embed::{ChatOptions, EmbedError, ErrorKind, Host, Image, Message};

/// What a call returned.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConceptsStatus {
    Ok = 0,
    /// A bad argument (a null pointer where one is required, invalid UTF-8, a bad image).
    InvalidInput = 1,
    /// No such concept or file.
    NotFound = 2,
    /// The name or identifier is taken by another installed concept.
    Conflict = 3,
    /// A package that is malformed or does not fit the base model.
    Package = 4,
    /// The base model folder is missing or malformed.
    Model = 5,
    /// A file-system error.
    Io = 6,
    /// A request over one of the runtime's limits.
    Limit = 7,
    /// Training failed.
    Training = 8,
    /// The call was cancelled.
    Cancelled = 9,
    /// A bug: an internal error or a caught panic.
    Internal = 10,
}

impl From<ErrorKind> for ConceptsStatus {
    fn from(kind: ErrorKind) -> ConceptsStatus {
        match kind {
            ErrorKind::InvalidInput => ConceptsStatus::InvalidInput,
            ErrorKind::NotFound => ConceptsStatus::NotFound,
            ErrorKind::Conflict => ConceptsStatus::Conflict,
            ErrorKind::Package => ConceptsStatus::Package,
            ErrorKind::Model => ConceptsStatus::Model,
            ErrorKind::Io => ConceptsStatus::Io,
            ErrorKind::Limit => ConceptsStatus::Limit,
            ErrorKind::Training => ConceptsStatus::Training,
            ErrorKind::Cancelled => ConceptsStatus::Cancelled,
            ErrorKind::Internal => ConceptsStatus::Internal,
        }
    }
}

/// A loaded base model and its concept registry. Opaque.
pub struct ConceptsRuntime {
    host: Host,
}

/// One concept's recognition read-out.
#[repr(C)]
pub struct ConceptsScore {
    /// The concept's name (UTF-8, owned by the array).
    pub name: *mut c_char,
    /// Its identifier, e.g. `<bo>`.
    pub identifier: *mut c_char,
    /// Probability of "Yes" at the answer position.
    pub p_yes: f64,
    /// Probability of "No".
    pub p_no: f64,
    /// The decision, `p_yes > p_no`.
    pub present: bool,
}

/// Receives each piece of a streamed answer; return `false` to stop the generation.
pub type ConceptsTextCallback =
    Option<unsafe extern "C" fn(piece: *const c_char, user_data: *mut c_void) -> bool>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// Runs `f`, turning an error or a panic into a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<(), EmbedError>) -> ConceptsStatus {
    set_error("");
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ConceptsStatus::Ok,
        Ok(Err(e)) => {
            set_error(&e.message);
            e.kind.into()
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".to_string());
            set_error(&format!("internal error (a panic): {what}"));
            ConceptsStatus::Internal
        }
    }
}

fn invalid(message: impl Into<String>) -> EmbedError {
    EmbedError::new(ErrorKind::InvalidInput, message)
}

/// A required UTF-8 string argument.
///
/// # Safety
/// `ptr` is null or a NUL-terminated string.
unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, EmbedError> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map_err(|_| invalid(format!("{what} is not valid UTF-8")))
}

/// An optional UTF-8 string argument (NULL: none).
///
/// # Safety
/// As [`text`].
unsafe fn optional_text<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, EmbedError> {
    if ptr.is_null() {
        Ok(None)
    } else {
        text(ptr, what).map(Some)
    }
}

/// `n` UTF-8 strings.
///
/// # Safety
/// `ptr` is null (with `n == 0`) or points to `n` NUL-terminated strings.
unsafe fn texts(
    ptr: *const *const c_char,
    n: usize,
    what: &str,
) -> Result<Vec<String>, EmbedError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL but its length is {n}")));
    }
    (0..n)
        .map(|i| text(*ptr.add(i), &format!("{what}[{i}]")).map(str::to_string))
        .collect()
}

fn owned(s: &str) -> *mut c_char {
    CString::new(s.replace('\0', "\\0"))
        .unwrap_or_default()
        .into_raw()
}

/// # Safety
/// `rt` is null or a handle from [`concepts_runtime_open`] not yet freed.
unsafe fn handle<'a>(rt: *const ConceptsRuntime) -> Result<&'a Host, EmbedError> {
    rt.as_ref()
        .map(|r| &r.host)
        .ok_or_else(|| invalid("the runtime handle is NULL"))
}

/// The message of the calling thread's last failed call ("" after a successful one). Valid
/// until the thread's next call into the library; never NULL.
#[no_mangle]
pub extern "C" fn concepts_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The name of a status, e.g. `"not_found"`. Static; never NULL.
#[no_mangle]
pub extern "C" fn concepts_status_name(status: ConceptsStatus) -> *const c_char {
    let name: &'static CStr = match status {
        ConceptsStatus::Ok => c"ok",
        ConceptsStatus::InvalidInput => c"invalid_input",
        ConceptsStatus::NotFound => c"not_found",
        ConceptsStatus::Conflict => c"conflict",
        ConceptsStatus::Package => c"package",
        ConceptsStatus::Model => c"model",
        ConceptsStatus::Io => c"io",
        ConceptsStatus::Limit => c"limit",
        ConceptsStatus::Training => c"training",
        ConceptsStatus::Cancelled => c"cancelled",
        ConceptsStatus::Internal => c"internal",
    };
    name.as_ptr()
}

/// Loads the base model in `model_dir` (NULL: `$CONCEPTS_DEFAULT_MODEL`, else the embedded toy
/// model) and opens the registry in `home` (NULL: `$CONCEPTS_HOME`, else the platform data
/// folder). On success `*out` holds a handle to release with [`concepts_runtime_free`].
///
/// # Safety
/// `model_dir` and `home` are NULL or NUL-terminated strings; `out` points to writable memory.
#[no_mangle]
pub unsafe extern "C" fn concepts_runtime_open(
    model_dir: *const c_char,
    home: *const c_char,
    out: *mut *mut ConceptsRuntime,
) -> ConceptsStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let model_dir = optional_text(model_dir, "model_dir")?.map(PathBuf::from);
        let home = optional_text(home, "home")?.map(PathBuf::from);
        let host = Host::open(model_dir.as_deref(), home.as_deref())?;
        *out = Box::into_raw(Box::new(ConceptsRuntime { host }));
        Ok(())
    })
}

/// Releases a handle (NULL is ignored).
///
/// # Safety
/// `rt` is NULL or a handle from [`concepts_runtime_open`], freed once.
#[no_mangle]
pub unsafe extern "C" fn concepts_runtime_free(rt: *mut ConceptsRuntime) {
    if !rt.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(rt))));
    }
}

/// Installs the `.ycpt` package at `path`; `replace` lets it take the name or identifier of an
/// installed concept. On success, if `out_name` is not NULL, `*out_name` is the concept's name
/// (release with [`concepts_string_free`]).
///
/// # Safety
/// `rt` is a live handle; `path` a NUL-terminated string; `out_name` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn concepts_install(
    rt: *const ConceptsRuntime,
    path: *const c_char,
    replace: bool,
    out_name: *mut *mut c_char,
) -> ConceptsStatus {
    guard(|| {
        let host = handle(rt)?;
        let path = text(path, "path")?;
        let concept = host.install(path.as_ref(), replace)?;
        if !out_name.is_null() {
            *out_name = owned(&concept.name);
        }
        Ok(())
    })
}

/// Removes the installed concept `name` (a name or an identifier).
///
/// # Safety
/// `rt` is a live handle; `name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn concepts_remove(
    rt: *const ConceptsRuntime,
    name: *const c_char,
) -> ConceptsStatus {
    guard(|| {
        let host = handle(rt)?;
        host.remove(text(name, "name")?)?;
        Ok(())
    })
}

/// The installed concepts as a JSON array of `{"name", "identifier", "sha256", "size"}`
/// (release `*out_json` with [`concepts_string_free`]).
///
/// # Safety
/// `rt` is a live handle; `out_json` writable.
#[no_mangle]
pub unsafe extern "C" fn concepts_list_json(
    rt: *const ConceptsRuntime,
    out_json: *mut *mut c_char,
) -> ConceptsStatus {
    guard(|| {
        let host = handle(rt)?;
        if out_json.is_null() {
            return Err(invalid("out_json is NULL"));
        }
        let list: Vec<_> = host
            .list()?
            .into_iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "identifier": c.identifier,
                    "sha256": c.digest,
                    "size": c.size,
                })
            })
            .collect();
        *out_json = owned(&serde_json::Value::Array(list).to_string());
        Ok(())
    })
}

/// Asks whether each concept is in the photo at `image_path`: the `n_concepts` names in
/// `concepts`, or every installed concept this model can use when `n_concepts` is 0. On
/// success `*out_scores` is an array of `*out_len` scores (release with
/// [`concepts_scores_free`]).
///
/// # Safety
/// `rt` is a live handle; `image_path` a NUL-terminated string; `concepts` NULL or
/// `n_concepts` strings; `out_scores` and `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn concepts_recognise(
    rt: *const ConceptsRuntime,
    image_path: *const c_char,
    concepts: *const *const c_char,
    n_concepts: usize,
    out_scores: *mut *mut ConceptsScore,
    out_len: *mut usize,
) -> ConceptsStatus {
    guard(|| {
        let host = handle(rt)?;
        let image = Image::Path(PathBuf::from(text(image_path, "image_path")?));
        let names = texts(concepts, n_concepts, "concepts")?;
        if out_scores.is_null() || out_len.is_null() {
            return Err(invalid("out_scores or out_len is NULL"));
        }
        let scores = host.recognise(image, &names, &mut || false)?;
        let array: Box<[ConceptsScore]> = scores
            .iter()
            .map(|s| ConceptsScore {
                name: owned(&s.name),
                identifier: owned(&s.identifier),
                p_yes: s.p_yes,
                p_no: s.p_no,
                present: s.present,
            })
            .collect();
        *out_len = array.len();
        *out_scores = Box::into_raw(array) as *mut ConceptsScore;
        Ok(())
    })
}

/// Releases an array from [`concepts_recognise`] (NULL is ignored).
///
/// # Safety
/// `scores` and `len` are exactly what [`concepts_recognise`] returned, freed once.
#[no_mangle]
pub unsafe extern "C" fn concepts_scores_free(scores: *mut ConceptsScore, len: usize) {
    if scores.is_null() {
        return;
    }
    let array = Box::from_raw(std::ptr::slice_from_raw_parts_mut(scores, len));
    for s in array.iter() {
        drop(CString::from_raw(s.name));
        drop(CString::from_raw(s.identifier));
    }
}

/// Answers `prompt` (one user message; `image_path` NULL or a photo) with the `n_concepts`
/// concepts of `concepts` active, besides those whose identifier (`<bo>`) the prompt mentions,
/// generating at most `max_tokens` tokens greedily. Each piece of the answer goes to
/// `on_text` (if not NULL) as it is generated; when it returns `false` the generation stops
/// and the call succeeds with the answer so far. If `out_text` is not NULL, `*out_text` is the
/// whole answer (release with [`concepts_string_free`]).
///
/// # Safety
/// `rt` is a live handle; the strings NUL-terminated; `concepts` NULL or `n_concepts` strings;
/// `on_text`, if not NULL, callable with `user_data`; `out_text` NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn concepts_chat(
    rt: *const ConceptsRuntime,
    prompt: *const c_char,
    image_path: *const c_char,
    concepts: *const *const c_char,
    n_concepts: usize,
    max_tokens: usize,
    on_text: ConceptsTextCallback,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
) -> ConceptsStatus {
    guard(|| {
        let host = handle(rt)?;
        let message = Message {
            role: "user".to_string(),
            text: text(prompt, "prompt")?.to_string(),
            image: optional_text(image_path, "image_path")?.map(|p| Image::Path(p.into())),
        };
        let options = ChatOptions {
            concepts: texts(concepts, n_concepts, "concepts")?,
            max_tokens,
        };
        let mut chat = host.chat(vec![message], options, &mut || false)?;
        let mut answer = String::new();
        while let Some(piece) = chat.next_piece(&mut || false)? {
            answer.push_str(&piece);
            if let Some(callback) = on_text {
                let piece = CString::new(piece.replace('\0', "\\0")).unwrap_or_default();
                if !callback(piece.as_ptr(), user_data) {
                    break; // dropping `chat` stops the generation
                }
            }
        }
        if !out_text.is_null() {
            *out_text = owned(&answer);
        }
        Ok(())
    })
}

/// Releases a string the library returned (NULL is ignored).
///
/// # Safety
/// `s` is NULL or a string from this library, freed once.
#[no_mangle]
pub unsafe extern "C" fn concepts_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}

/// The library's version, e.g. `"0.1.0"`. Static; never NULL.
#[no_mangle]
pub extern "C" fn concepts_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
