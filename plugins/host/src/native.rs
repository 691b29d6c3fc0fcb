//! Native plugins: shared libraries with the C ABI of `concepts_plugin_api::native`.
//!
//! Native plugins are trusted: they run in the host process without limits, so they load only when
//! the host is configured with `allow_native` (`--allow-native`). The host checks the file digest
//! and the ABI version before calling anything else, catches panics in its own callbacks, and maps a
//! panic the plugin's SDK caught into [`PluginError::NativePanic`].

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use concepts_plugin_api::native::{
    method, msg, status, AbiVersionFn, Buffer, CallFn, FreeFn, HostTable, ABI_VERSION,
    SYMBOL_ABI_VERSION, SYMBOL_CALL, SYMBOL_FREE,
};
use concepts_plugin_api::{self as api};
use serde::de::DeserializeOwned;
use serde::Serialize;

use concepts_fs::sha256_hex;

use crate::manifest::Manifest;
use crate::matrix::EmbeddingMatrix;
use crate::roles::{self, BatchId, MetadataLinker, NegativeMiner, Trainer, TrainingHost};
use crate::services::{Events, Mining, ProgressSink, POOL, POSITIVES};
use crate::PluginError;

/// Largest native library accepted.
const MAX_LIBRARY_BYTES: u64 = 512 << 20;

/// A loaded native plugin library.
pub struct NativePlugin {
    manifest: Manifest,
    path: PathBuf,
    call: CallFn,
    free: FreeFn,
    progress: Option<ProgressSink>,
    // Last, so the symbols above are never used after the library is unloaded.
    _library: libloading::Library,
}

impl std::fmt::Debug for NativePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativePlugin")
            .field("id", &self.manifest.id())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Loads the native plugin of `manifest` from `dir`.
pub(crate) fn load(
    manifest: &Manifest,
    dir: &Path,
    allow_native: bool,
    progress: Option<ProgressSink>,
) -> Result<NativePlugin, PluginError> {
    let id = manifest.id();
    if !allow_native {
        return Err(PluginError::NativeNotAllowed { id: id.to_owned() });
    }
    let path = dir.join(manifest.file());
    let digest = sha256_hex(&concepts_fs::read_bounded(&path, MAX_LIBRARY_BYTES)?);
    if digest != manifest.sha256() {
        return Err(PluginError::HashMismatch {
            id: id.to_owned(),
            file: manifest.file().to_owned(),
            expected: manifest.sha256().to_owned(),
            found: digest,
        });
    }
    let load_err = |reason: String| PluginError::NativeLoad {
        id: id.to_owned(),
        path: path.clone(),
        reason,
    };
    // SAFETY: loading runs the library's initialisers. Native plugins are trusted by the user's
    // explicit `allow_native`, and the file is the one whose digest the manifest declares.
    let library =
        unsafe { libloading::Library::new(&path) }.map_err(|e| load_err(e.to_string()))?;
    // SAFETY: the symbol types are those of the documented C ABI.
    let (abi, call, free) = unsafe {
        let abi: AbiVersionFn = *library
            .get::<AbiVersionFn>(SYMBOL_ABI_VERSION.as_bytes())
            .map_err(|e| load_err(e.to_string()))?;
        let call: CallFn = *library
            .get::<CallFn>(SYMBOL_CALL.as_bytes())
            .map_err(|e| load_err(e.to_string()))?;
        let free: FreeFn = *library
            .get::<FreeFn>(SYMBOL_FREE.as_bytes())
            .map_err(|e| load_err(e.to_string()))?;
        (abi, call, free)
    };
    // SAFETY: a C ABI function without arguments.
    let found = unsafe { abi() };
    if found != ABI_VERSION {
        return Err(PluginError::NativeAbiMismatch {
            id: id.to_owned(),
            expected: ABI_VERSION,
            found,
        });
    }
    let plugin = NativePlugin {
        manifest: manifest.clone(),
        path,
        call,
        free,
        progress,
        _library: library,
    };
    let describe: msg::Describe = plugin.invoke(
        "describe",
        method::DESCRIBE,
        &(),
        &mut NoServices(plugin.events()),
    )?;
    if describe.role != manifest.role() {
        return Err(PluginError::WrongRole {
            id: id.to_owned(),
            expected: manifest.role(),
            found: describe.role,
        });
    }
    Ok(plugin)
}

/// Host services offered to a native call.
trait Services {
    fn call(&mut self, method: &str, input: &[u8]) -> Result<Vec<u8>, (i32, String)>;
}

fn decode<T: DeserializeOwned>(method: &str, input: &[u8]) -> Result<T, (i32, String)> {
    serde_json::from_slice(input)
        .map_err(|e| (status::BAD_REQUEST, format!("input of `{method}`: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, (i32, String)> {
    serde_json::to_vec(value).map_err(|e| (status::ERROR, e.to_string()))
}

fn common(events: &Events, method: &str, input: &[u8]) -> Result<Vec<u8>, (i32, String)> {
    match method {
        method::LOG => {
            let log: msg::Log = decode(method, input)?;
            events.log(log.level, &log.message);
            encode(&())
        }
        method::PROGRESS => {
            let p: msg::Progress = decode(method, input)?;
            events.progress(p.done, p.total, &p.message);
            encode(&())
        }
        _ => Err((
            status::BAD_REQUEST,
            format!("unknown host method `{method}`"),
        )),
    }
}

struct NoServices(Events);

impl Services for NoServices {
    fn call(&mut self, method: &str, input: &[u8]) -> Result<Vec<u8>, (i32, String)> {
        common(&self.0, method, input)
    }
}

struct MinerServices {
    events: Events,
    mining: Mining,
}

impl Services for MinerServices {
    fn call(&mut self, name: &str, input: &[u8]) -> Result<Vec<u8>, (i32, String)> {
        let m = &self.mining;
        let err = |e: String| (status::ERROR, e);
        match name {
            method::MATRIX_ROWS => {
                encode(&(m.matrix(decode(name, input)?).map_err(err)?.rows() as u32))
            }
            method::MATRIX_DIM => {
                encode(&(m.matrix(decode(name, input)?).map_err(err)?.dim() as u32))
            }
            method::READ_ROWS => {
                let r: msg::ReadRows = decode(name, input)?;
                encode(
                    &Mining::read_rows(m.matrix(r.matrix).map_err(err)?, r.start, r.count)
                        .map_err(err)?,
                )
            }
            method::TOP_K => {
                let r: msg::TopK = decode(name, input)?;
                let (q, p) = (
                    m.matrix(r.query).map_err(err)?,
                    m.matrix(r.pool).map_err(err)?,
                );
                encode(&Mining::top_k(q, p, r.k).map_err(err)?)
            }
            method::MAX_SIMILARITY => {
                let r: msg::Pair = decode(name, input)?;
                let (q, p) = (
                    m.matrix(r.query).map_err(err)?,
                    m.matrix(r.pool).map_err(err)?,
                );
                encode(&Mining::max_similarity(q, p).map_err(err)?)
            }
            _ => common(&self.events, name, input),
        }
    }
}

struct TrainerServices<'a> {
    events: Events,
    host: &'a mut dyn TrainingHost,
    /// The plugin's batch handles; the host's batch ids behind them.
    batches: HashMap<u32, BatchId>,
    next_batch: u32,
}

impl Services for TrainerServices<'_> {
    fn call(&mut self, name: &str, input: &[u8]) -> Result<Vec<u8>, (i32, String)> {
        let err = |e: roles::EngineError| (status::ERROR, e.0);
        let no_batch = |b: u32| (status::ERROR, format!("no batch with handle {b}"));
        match name {
            method::COUNTS => encode(&self.host.counts()),
            method::BUILD_BATCH => {
                let samples: Vec<api::SampleRef> = decode(name, input)?;
                let id = self.host.build_batch(&samples).map_err(err)?;
                let handle = self.next_batch;
                self.next_batch += 1;
                self.batches.insert(handle, id);
                encode(&handle)
            }
            method::BATCH_LEN => {
                let b: u32 = decode(name, input)?;
                let id = *self.batches.get(&b).ok_or_else(|| no_batch(b))?;
                encode(&self.host.batch_len(id))
            }
            method::DROP_BATCH => {
                let b: u32 = decode(name, input)?;
                let id = self.batches.remove(&b).ok_or_else(|| no_batch(b))?;
                self.host.drop_batch(id);
                encode(&())
            }
            method::TRAIN_STEP => {
                let s: msg::TrainStep = decode(name, input)?;
                let id = *self
                    .batches
                    .get(&s.batch)
                    .ok_or_else(|| no_batch(s.batch))?;
                encode(&self.host.train_step(id, s.learning_rate).map_err(err)?)
            }
            method::EVALUATE => {
                let split: api::Split = decode(name, input)?;
                encode(&self.host.evaluate_recognition(split).map_err(err)?)
            }
            method::SNAPSHOT => encode(&self.host.snapshot().map_err(err)?.0),
            method::RESTORE => {
                let s: u32 = decode(name, input)?;
                encode(&self.host.restore(roles::SnapshotId(s)).map_err(err)?)
            }
            method::REPORT_EPOCH => {
                let r: api::EpochReport = decode(name, input)?;
                self.host.report_epoch(&r);
                encode(&())
            }
            _ => common(&self.events, name, input),
        }
    }
}

unsafe extern "C" fn host_call(
    ctx: *mut c_void,
    method: *const u8,
    method_len: usize,
    input: *const u8,
    input_len: usize,
    output: *mut Buffer,
) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `&mut &mut dyn Services` that `invoke` put in the table, alive for
        // the call; the slices are live for this callback by the ABI contract.
        let (services, method, input) = unsafe {
            (
                &mut *(ctx as *mut &mut dyn Services),
                std::slice::from_raw_parts(method, method_len),
                if input.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(input, input_len)
                },
            )
        };
        let method = std::str::from_utf8(method)
            .map_err(|_| (status::BAD_REQUEST, "method name is not UTF-8".to_owned()))?;
        services.call(method, input)
    }));
    let (code, bytes) = match outcome {
        Ok(Ok(bytes)) => (status::OK, bytes),
        Ok(Err((code, message))) => (code, message.into_bytes()),
        Err(_) => (status::PANIC, b"the host panicked".to_vec()),
    };
    if !output.is_null() {
        // SAFETY: writable by the ABI contract.
        unsafe { output.write(Buffer::from_vec(bytes)) };
    }
    code
}

unsafe extern "C" fn host_free(buffer: Buffer) {
    // SAFETY: `buffer` came from `host_call`, i.e. from `Buffer::from_vec` in this binary.
    drop(unsafe { buffer.into_vec() });
}

impl NativePlugin {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn events(&self) -> Events {
        Events::new(self.manifest.id(), self.progress.clone())
    }

    fn invoke<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        call: &'static str,
        name: &str,
        input: &I,
        services: &mut dyn Services,
    ) -> Result<O, PluginError> {
        let id = self.manifest.id();
        let input = serde_json::to_vec(input).map_err(|e| PluginError::Host {
            id: id.to_owned(),
            message: format!("encoding `{name}`: {e}"),
        })?;
        let mut services: &mut dyn Services = services;
        let table = HostTable {
            abi_version: ABI_VERSION,
            ctx: (&mut services as *mut &mut dyn Services).cast(),
            call: host_call,
            free: host_free,
        };
        let mut output = Buffer::EMPTY;
        // SAFETY: the arguments satisfy `CallFn`'s contract; the output buffer is the plugin's and
        // goes back to the plugin's free function.
        let (code, bytes) = unsafe {
            let code = (self.call)(
                &table,
                name.as_ptr(),
                name.len(),
                input.as_ptr(),
                input.len(),
                &mut output,
            );
            let bytes = output.as_slice().to_vec();
            (self.free)(output);
            (code, bytes)
        };
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        match code {
            status::OK => serde_json::from_slice(&bytes).map_err(|e| PluginError::InvalidOutput {
                id: id.to_owned(),
                call,
                message: e.to_string(),
            }),
            status::ERROR => Err(PluginError::Failed {
                id: id.to_owned(),
                call,
                message: text(),
            }),
            status::PANIC => Err(PluginError::NativePanic {
                id: id.to_owned(),
                call,
                message: text(),
            }),
            status::BAD_REQUEST => Err(PluginError::InvalidOutput {
                id: id.to_owned(),
                call,
                message: format!("the plugin refused the request: {}", text()),
            }),
            other => Err(PluginError::InvalidOutput {
                id: id.to_owned(),
                call,
                message: format!("unknown status code {other}"),
            }),
        }
    }
}

/// A native plugin in the miner role.
pub struct NativeMiner(pub(crate) std::sync::Arc<NativePlugin>);
/// A native plugin in the trainer role.
pub struct NativeTrainer(pub(crate) std::sync::Arc<NativePlugin>);
/// A native plugin in the linker role.
pub struct NativeLinker(pub(crate) std::sync::Arc<NativePlugin>);

impl NegativeMiner for NativeMiner {
    fn id(&self) -> &str {
        self.0.manifest.id()
    }

    fn mine(
        &mut self,
        positives: &EmbeddingMatrix,
        pool: &EmbeddingMatrix,
        params: api::MiningParams,
    ) -> Result<Vec<api::MinedNegative>, PluginError> {
        let mut services = MinerServices {
            events: self.0.events(),
            mining: Mining {
                positives: positives.clone(),
                pool: pool.clone(),
            },
        };
        let request = msg::MineRequest {
            positives: POSITIVES,
            pool: POOL,
            params,
        };
        let mined: Vec<api::MinedNegative> =
            self.0
                .invoke("mine", method::MINE, &request, &mut services)?;
        roles::check_mined(self.id(), pool.rows(), &mined)?;
        Ok(mined)
    }
}

impl Trainer for NativeTrainer {
    fn id(&self) -> &str {
        self.0.manifest.id()
    }

    fn train(
        &mut self,
        host: &mut dyn TrainingHost,
        params: api::TrainParams,
    ) -> Result<api::TrainSummary, PluginError> {
        let mut services = TrainerServices {
            events: self.0.events(),
            host,
            batches: HashMap::new(),
            next_batch: 0,
        };
        let summary: api::TrainSummary =
            self.0
                .invoke("train", method::TRAIN, &params, &mut services)?;
        // Batches the plugin leaked are freed here.
        for (_, id) in services.batches.drain() {
            services.host.drop_batch(id);
        }
        roles::check_summary(self.id(), &summary)?;
        Ok(summary)
    }
}

impl MetadataLinker for NativeLinker {
    fn id(&self) -> &str {
        self.0.manifest.id()
    }

    fn validate(&mut self, metadata: &api::ConceptMetadata) -> Result<(), PluginError> {
        let problems: Vec<String> = self.0.invoke(
            "validate",
            method::VALIDATE,
            metadata,
            &mut NoServices(self.0.events()),
        )?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(roles::invalid_metadata(self.id(), metadata, problems))
        }
    }

    fn link_conversation(
        &mut self,
        metadata: &api::ConceptMetadata,
        placeholders: &[String],
        turns: Vec<api::Turn>,
    ) -> Result<Vec<api::Turn>, PluginError> {
        let request = msg::LinkConversation {
            metadata: metadata.clone(),
            placeholders: placeholders.to_vec(),
            turns,
        };
        self.0.invoke(
            "link-conversation",
            method::LINK_CONVERSATION,
            &request,
            &mut NoServices(self.0.events()),
        )
    }

    fn render_context(&mut self, active: &[api::ConceptMetadata]) -> Result<String, PluginError> {
        self.0.invoke(
            "render-context",
            method::RENDER_CONTEXT,
            active,
            &mut NoServices(self.0.events()),
        )
    }
}
