//! The native side: the C ABI of `concepts_plugin_api::native`, with panics caught at the boundary.

use std::panic::{catch_unwind, AssertUnwindSafe};

use concepts_plugin_api::native::{method, msg, status, Buffer, HostTable};
pub use concepts_plugin_api::native::{Buffer as NativeBuffer, HostTable as NativeHostTable};
use concepts_plugin_api::{LogLevel, Role, API_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use concepts_plugin_api::native::ABI_VERSION;

use crate::backend::HostBackend;

/// Why a plugin-side dispatch failed.
pub enum Failure {
    /// The role method returned an error; the message is the user's.
    Plugin(String),
    /// The host sent an unknown method or bad JSON.
    BadRequest(String),
}

/// A role's dispatcher: runs `method` with JSON `input` against the host.
pub type Dispatch = fn(&JsonHost, &str, &[u8]) -> Result<Vec<u8>, Failure>;

/// The host services of a native call, reached through the host's [`HostTable`] with JSON.
pub struct JsonHost {
    table: *const HostTable,
}

impl JsonHost {
    fn call<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        method: &str,
        input: &I,
    ) -> Result<O, String> {
        let input = serde_json::to_vec(input).map_err(|e| format!("encoding `{method}`: {e}"))?;
        let mut output = Buffer::EMPTY;
        // SAFETY: `table` is the live table the host passed to `concepts_plugin_call`, which is
        // still running; the pointers and lengths describe live slices.
        let (code, bytes) = unsafe {
            let table = &*self.table;
            let code = (table.call)(
                table.ctx,
                method.as_ptr(),
                method.len(),
                input.as_ptr(),
                input.len(),
                &mut output,
            );
            let bytes = output.as_slice().to_vec();
            (table.free)(output);
            (code, bytes)
        };
        match code {
            status::OK => serde_json::from_slice(&bytes)
                .map_err(|e| format!("decoding the host's answer to `{method}`: {e}")),
            _ => Err(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    fn notify<I: Serialize + ?Sized>(&self, method: &str, input: &I) {
        // Logging and progress cannot fail in a way the plugin could act on.
        let _: Result<(), String> = self.call(method, input);
    }
}

impl HostBackend for JsonHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.notify(
            method::LOG,
            &msg::Log {
                level,
                message: message.to_owned(),
            },
        );
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        self.notify(
            method::PROGRESS,
            &msg::Progress {
                done,
                total,
                message: message.to_owned(),
            },
        );
    }
}

#[cfg(feature = "miner")]
impl crate::backend::EmbeddingsBackend for JsonHost {
    fn as_host(&self) -> &dyn HostBackend {
        self
    }

    fn rows(&self, matrix: u32) -> u32 {
        self.call(method::MATRIX_ROWS, &matrix).unwrap_or(0)
    }

    fn dim(&self, matrix: u32) -> u32 {
        self.call(method::MATRIX_DIM, &matrix).unwrap_or(0)
    }

    fn read_rows(&self, matrix: u32, start: u32, count: u32) -> crate::Result<Vec<f32>> {
        self.call(
            method::READ_ROWS,
            &msg::ReadRows {
                matrix,
                start,
                count,
            },
        )
    }

    fn top_k(&self, query: u32, pool: u32, k: u32) -> crate::Result<Vec<Vec<crate::ScoredRow>>> {
        self.call(method::TOP_K, &msg::TopK { query, pool, k })
    }

    fn max_similarity(&self, query: u32, pool: u32) -> crate::Result<Vec<f32>> {
        self.call(method::MAX_SIMILARITY, &msg::Pair { query, pool })
    }
}

#[cfg(feature = "trainer")]
impl crate::backend::TrainingBackend for JsonHost {
    fn as_host(&self) -> &dyn HostBackend {
        self
    }

    fn counts(&self) -> crate::SampleCounts {
        self.call(method::COUNTS, &()).unwrap_or_default()
    }

    fn build_batch(&self, samples: &[crate::SampleRef]) -> crate::Result<u32> {
        self.call(method::BUILD_BATCH, samples)
    }

    fn batch_len(&self, batch: u32) -> u32 {
        self.call(method::BATCH_LEN, &batch).unwrap_or(0)
    }

    fn drop_batch(&self, batch: u32) {
        self.notify(method::DROP_BATCH, &batch);
    }

    fn train_step(&self, batch: u32, learning_rate: f32) -> crate::Result<f32> {
        self.call(
            method::TRAIN_STEP,
            &msg::TrainStep {
                batch,
                learning_rate,
            },
        )
    }

    fn evaluate_recognition(&self, split: crate::Split) -> crate::Result<crate::Recognition> {
        self.call(method::EVALUATE, &split)
    }

    fn snapshot(&self) -> crate::Result<u32> {
        self.call(method::SNAPSHOT, &())
    }

    fn restore(&self, snapshot: u32) -> crate::Result<()> {
        self.call(method::RESTORE, &snapshot)
    }

    fn report_epoch(&self, report: &crate::EpochReport) {
        self.notify(method::REPORT_EPOCH, report);
    }
}

fn decode<T: DeserializeOwned>(method: &str, input: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(input)
        .map_err(|e| Failure::BadRequest(format!("input of `{method}`: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(value).map_err(|e| Failure::Plugin(format!("encoding the answer: {e}")))
}

fn describe(role: Role) -> Result<Vec<u8>, Failure> {
    encode(&msg::Describe {
        abi_version: ABI_VERSION,
        role,
        api_version: API_VERSION.to_string(),
    })
}

fn unknown(method: &str, role: Role) -> Failure {
    Failure::BadRequest(format!("unknown method `{method}` for a {role} plugin"))
}

/// Dispatches the miner methods to `M`.
#[cfg(feature = "miner")]
pub fn dispatch_miner<M: crate::NegativeMiner>(
    host: &JsonHost,
    name: &str,
    input: &[u8],
) -> Result<Vec<u8>, Failure> {
    match name {
        method::DESCRIBE => describe(Role::Miner),
        method::MINE => {
            let req: msg::MineRequest = decode(name, input)?;
            let mined = crate::backend::mine::<M>(host, req.positives, req.pool, req.params)
                .map_err(Failure::Plugin)?;
            encode(&mined)
        }
        _ => Err(unknown(name, Role::Miner)),
    }
}

/// Dispatches the trainer methods to `T`.
#[cfg(feature = "trainer")]
pub fn dispatch_trainer<T: crate::Trainer>(
    host: &JsonHost,
    name: &str,
    input: &[u8],
) -> Result<Vec<u8>, Failure> {
    match name {
        method::DESCRIBE => describe(Role::Trainer),
        method::TRAIN => {
            let params: crate::TrainParams = decode(name, input)?;
            let summary = crate::backend::train::<T>(host, params).map_err(Failure::Plugin)?;
            encode(&summary)
        }
        _ => Err(unknown(name, Role::Trainer)),
    }
}

/// Dispatches the linker methods to `L`.
#[cfg(feature = "linker")]
pub fn dispatch_linker<L: crate::MetadataLinker>(
    host: &JsonHost,
    name: &str,
    input: &[u8],
) -> Result<Vec<u8>, Failure> {
    match name {
        method::DESCRIBE => describe(Role::Linker),
        method::VALIDATE => {
            let metadata: crate::ConceptMetadata = decode(name, input)?;
            // A list of problems is an answer, not a failure of the call.
            let problems = match crate::backend::validate::<L>(host, &metadata) {
                Ok(()) => Vec::new(),
                Err(problems) => problems,
            };
            encode(&problems)
        }
        method::LINK_CONVERSATION => {
            let req: msg::LinkConversation = decode(name, input)?;
            let turns = crate::backend::link_conversation::<L>(
                host,
                &req.metadata,
                &req.placeholders,
                req.turns,
            )
            .map_err(Failure::Plugin)?;
            encode(&turns)
        }
        method::RENDER_CONTEXT => {
            let active: Vec<crate::ConceptMetadata> = decode(name, input)?;
            let text =
                crate::backend::render_context::<L>(host, &active).map_err(Failure::Plugin)?;
            encode(&text)
        }
        _ => Err(unknown(name, Role::Linker)),
    }
}

/// The body of `concepts_plugin_call`: checks the host's ABI, runs `dispatch` with panics caught,
/// and writes the answer.
///
/// # Safety
///
/// The arguments must satisfy the contract of `concepts_plugin_api::native::CallFn`.
pub unsafe fn call(
    dispatch: Dispatch,
    host: *const HostTable,
    method: *const u8,
    method_len: usize,
    input: *const u8,
    input_len: usize,
    output: *mut Buffer,
) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if host.is_null() || output.is_null() || method.is_null() {
            return Err(Failure::BadRequest("null pointer argument".to_owned()));
        }
        // SAFETY: non-null, and live for the call by the caller's contract.
        let (table, name, input) = unsafe {
            (
                &*host,
                std::slice::from_raw_parts(method, method_len),
                if input.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(input, input_len)
                },
            )
        };
        if table.abi_version != ABI_VERSION {
            return Err(Failure::BadRequest(format!(
                "host ABI version {} is not the plugin's {ABI_VERSION}",
                table.abi_version
            )));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| Failure::BadRequest("method name is not UTF-8".to_owned()))?;
        dispatch(&JsonHost { table: host }, name, input)
    }));
    let (code, bytes) = match outcome {
        Ok(Ok(bytes)) => (status::OK, bytes),
        Ok(Err(Failure::Plugin(message))) => (status::ERROR, message.into_bytes()),
        Ok(Err(Failure::BadRequest(message))) => (status::BAD_REQUEST, message.into_bytes()),
        Err(payload) => (status::PANIC, panic_message(payload.as_ref()).into_bytes()),
    };
    if !output.is_null() {
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { output.write(Buffer::from_vec(bytes)) };
    }
    code
}

/// The body of `concepts_plugin_free`.
///
/// # Safety
///
/// `buffer` must come from [`call`] in this library and not have been freed.
pub unsafe fn free(buffer: Buffer) {
    // SAFETY: by the caller's contract.
    drop(unsafe { buffer.into_vec() });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string panic payload");
    format!("plugin panicked: {text}")
}
