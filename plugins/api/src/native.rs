//! The C ABI of native plugins (shared libraries loaded with `--allow-native`).
//!
//! A native plugin exports three symbols:
//!
//! - [`SYMBOL_ABI_VERSION`]: `extern "C" fn() -> u32`, which must return [`ABI_VERSION`];
//! - [`SYMBOL_CALL`]: [`CallFn`], one entry point for every role method, named by [`method`];
//! - [`SYMBOL_FREE`]: [`FreeFn`], which frees a [`Buffer`] the plugin returned.
//!
//! Requests and answers are JSON (the [`msg`] types and the crate's records). A call returns a
//! [`status`] code; on [`status::OK`] the output buffer holds the JSON answer, otherwise a UTF-8
//! message. The plugin calls back into the host through the [`HostTable`] it is given, with the same
//! conventions; a buffer is always freed by the side that allocated it.

use std::ffi::c_void;

/// The version of this ABI; the host refuses a library that reports another.
pub const ABI_VERSION: u32 = 1;

/// `extern "C" fn() -> u32`
pub const SYMBOL_ABI_VERSION: &str = "concepts_plugin_abi_version";
/// [`CallFn`]
pub const SYMBOL_CALL: &str = "concepts_plugin_call";
/// [`FreeFn`]
pub const SYMBOL_FREE: &str = "concepts_plugin_free";

/// Bytes owned by one side of the boundary.
///
/// Invariant: `ptr`, `len` and `cap` come from one `Vec<u8>` of the allocating side (or `ptr` is null
/// and both sizes are zero), and only that side's free function releases it.
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    /// Start of the bytes
    pub ptr: *mut u8,
    /// Number of bytes
    pub len: usize,
    /// Allocated capacity
    pub cap: usize,
}

impl Buffer {
    /// A buffer that owns nothing.
    pub const EMPTY: Buffer = Buffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    /// Gives up `bytes` to the other side, which must hand the buffer back to this side's free
    /// function.
    pub fn from_vec(bytes: Vec<u8>) -> Buffer {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Buffer {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }

    /// Takes back a buffer that [`Buffer::from_vec`] made on this side.
    ///
    /// # Safety
    ///
    /// `self` must come from [`Buffer::from_vec`] in the same binary, and not have been freed.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: by the caller's contract these are the parts of a live `Vec<u8>` of ours.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }

    /// The bytes, borrowed.
    ///
    /// # Safety
    ///
    /// The buffer must be live (not yet freed) and `ptr`/`len` must describe readable memory.
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Frees a [`Buffer`] allocated by the side that exports this function.
pub type FreeFn = unsafe extern "C" fn(buffer: Buffer);

/// `concepts_plugin_abi_version`
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;

/// Calls `method` with JSON `input`; writes the answer (or error message) to `output` and returns a
/// [`status`] code.
pub type CallFn = unsafe extern "C" fn(
    host: *const HostTable,
    method: *const u8,
    method_len: usize,
    input: *const u8,
    input_len: usize,
    output: *mut Buffer,
) -> i32;

/// The host's side of a call: the plugin calls `call` for host services, and `free` on every buffer
/// `call` gave it.
#[repr(C)]
pub struct HostTable {
    /// [`ABI_VERSION`] of the host
    pub abi_version: u32,
    /// Opaque host state, passed back to `call`
    pub ctx: *mut c_void,
    /// Host services, same conventions as [`CallFn`]
    pub call: unsafe extern "C" fn(
        ctx: *mut c_void,
        method: *const u8,
        method_len: usize,
        input: *const u8,
        input_len: usize,
        output: *mut Buffer,
    ) -> i32,
    /// Frees buffers returned by `call`
    pub free: FreeFn,
}

/// Status codes of [`CallFn`] and [`HostTable::call`].
pub mod status {
    /// The output holds the JSON answer.
    pub const OK: i32 = 0;
    /// The callee reported an error; the output holds its message.
    pub const ERROR: i32 = 1;
    /// The callee panicked; the panic was caught at the boundary and the output holds its message.
    pub const PANIC: i32 = 2;
    /// The method is unknown or its input is not valid JSON for it; the output holds a message.
    pub const BAD_REQUEST: i32 = 3;
}

/// Method names.
pub mod method {
    /// Plugin: describe yourself; answers [`super::msg::Describe`].
    pub const DESCRIBE: &str = "plugin.describe";
    /// Plugin: [`super::msg::MineRequest`] → `Vec<MinedNegative>`.
    pub const MINE: &str = "miner.mine";
    /// Plugin: `TrainParams` → `TrainSummary`.
    pub const TRAIN: &str = "trainer.train";
    /// Plugin: `ConceptMetadata` → `Vec<String>` problems (empty when valid).
    pub const VALIDATE: &str = "linker.validate";
    /// Plugin: [`super::msg::LinkConversation`] → `Vec<Turn>`.
    pub const LINK_CONVERSATION: &str = "linker.link-conversation";
    /// Plugin: `Vec<ConceptMetadata>` → `String`.
    pub const RENDER_CONTEXT: &str = "linker.render-context";

    /// Host: [`super::msg::Log`] → `()`.
    pub const LOG: &str = "host.log";
    /// Host: [`super::msg::Progress`] → `()`.
    pub const PROGRESS: &str = "host.progress";
    /// Host: matrix handle `u32` → `u32`.
    pub const MATRIX_ROWS: &str = "embeddings.rows";
    /// Host: matrix handle `u32` → `u32`.
    pub const MATRIX_DIM: &str = "embeddings.dim";
    /// Host: [`super::msg::ReadRows`] → `Vec<f32>`.
    pub const READ_ROWS: &str = "embeddings.read-rows";
    /// Host: [`super::msg::TopK`] → `Vec<Vec<ScoredRow>>`.
    pub const TOP_K: &str = "embeddings.top-k";
    /// Host: [`super::msg::Pair`] → `Vec<f32>`.
    pub const MAX_SIMILARITY: &str = "embeddings.max-similarity";
    /// Host: `()` → `SampleCounts`.
    pub const COUNTS: &str = "training.counts";
    /// Host: `Vec<SampleRef>` → batch handle `u32`.
    pub const BUILD_BATCH: &str = "training.build-batch";
    /// Host: batch handle `u32` → `u32`.
    pub const BATCH_LEN: &str = "training.batch-len";
    /// Host: batch handle `u32` → `()`.
    pub const DROP_BATCH: &str = "training.drop-batch";
    /// Host: [`super::msg::TrainStep`] → `f32`.
    pub const TRAIN_STEP: &str = "training.train-step";
    /// Host: `Split` → `Recognition`.
    pub const EVALUATE: &str = "training.evaluate-recognition";
    /// Host: `()` → snapshot id `u32`.
    pub const SNAPSHOT: &str = "training.snapshot";
    /// Host: snapshot id `u32` → `()`.
    pub const RESTORE: &str = "training.restore";
    /// Host: `EpochReport` → `()`.
    pub const REPORT_EPOCH: &str = "training.report-epoch";
}

/// JSON messages that are not plain records of the crate.
#[cfg(not(target_arch = "wasm32"))]
pub mod msg {
    use serde::{Deserialize, Serialize};

    use crate::{ConceptMetadata, LogLevel, MiningParams, Role, Turn};

    /// Answer to [`super::method::DESCRIBE`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Describe {
        /// The plugin's [`super::ABI_VERSION`]
        pub abi_version: u32,
        /// The role it implements
        pub role: Role,
        /// The `concepts:plugin` version its SDK mirrors, `x.y.z`
        pub api_version: String,
    }

    /// Input of [`super::method::MINE`]; matrices are host handles.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MineRequest {
        /// Handle of the positives matrix
        pub positives: u32,
        /// Handle of the pool matrix
        pub pool: u32,
        /// The mining parameters
        pub params: MiningParams,
    }

    /// Input of [`super::method::LINK_CONVERSATION`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LinkConversation {
        /// The concept
        pub metadata: ConceptMetadata,
        /// Neutral names the generator used for the subject
        pub placeholders: Vec<String>,
        /// The conversation
        pub turns: Vec<Turn>,
    }

    /// Input of [`super::method::LOG`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Log {
        /// Severity
        pub level: LogLevel,
        /// Text
        pub message: String,
    }

    /// Input of [`super::method::PROGRESS`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Progress {
        /// Units done
        pub done: u64,
        /// Units in all
        pub total: u64,
        /// What is being done
        pub message: String,
    }

    /// Input of [`super::method::READ_ROWS`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ReadRows {
        /// Matrix handle
        pub matrix: u32,
        /// First row
        pub start: u32,
        /// Number of rows
        pub count: u32,
    }

    /// Input of [`super::method::TOP_K`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TopK {
        /// Query matrix handle
        pub query: u32,
        /// Pool matrix handle
        pub pool: u32,
        /// Rows per query row
        pub k: u32,
    }

    /// Input of [`super::method::MAX_SIMILARITY`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Pair {
        /// Query matrix handle
        pub query: u32,
        /// Pool matrix handle
        pub pool: u32,
    }

    /// Input of [`super::method::TRAIN_STEP`].
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct TrainStep {
        /// Batch handle
        pub batch: u32,
        /// Learning rate
        pub learning_rate: f32,
    }
}
