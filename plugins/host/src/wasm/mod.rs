//! Wasm component plugins: engines, load-time checks, the sandboxed store and calls.
//!
//! Each call gets a fresh store and instance, so a trap, a runaway loop or an allocation bomb ends
//! that call only. Limits: memory through a [`wasmtime::ResourceLimiter`], guest time through epoch
//! interruption with a callback that subtracts time spent in host calls, the host-call data cap in
//! every host function, and the wasm stack through the engine's `max_wasm_stack` (one engine per
//! distinct stack limit).

pub(crate) mod since_v0_1_0;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concepts_plugin_api::{self as api, ApiVersion, Role, API_VERSION, WIT_PACKAGE};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::limits::{Capability, Grants, Limits};
use concepts_fs::sha256_hex;

use crate::manifest::Manifest;
use crate::matrix::EmbeddingMatrix;
use crate::roles::{self, MetadataLinker, NegativeMiner, Trainer, TrainingHost};
use crate::services::{Events, ProgressSink};
use crate::PluginError;

use since_v0_1_0 as latest;

/// How often the epoch ticker advances every engine's epoch.
const TICK: Duration = Duration::from_millis(5);

/// Bytes of a plugin's stderr kept for error messages.
const STDERR_CAPACITY: usize = 64 << 10;

/// Largest component file accepted.
pub(crate) const MAX_COMPONENT_BYTES: u64 = 64 << 20;

// --- errors raised inside a call, recognised by `classify`

#[derive(Debug)]
struct DeadlineHit;

impl std::fmt::Display for DeadlineHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("guest-time limit reached")
    }
}
impl std::error::Error for DeadlineHit {}

#[derive(Debug)]
struct MemoryHit {
    requested: u64,
    limit: u64,
}

impl std::fmt::Display for MemoryHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory growth to {} bytes over the limit of {}",
            self.requested, self.limit
        )
    }
}
impl std::error::Error for MemoryHit {}

#[derive(Debug)]
pub(crate) struct CallCap {
    function: &'static str,
    bytes: u64,
    cap: u64,
}

impl std::fmt::Display for CallCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host call `{}` moves {} bytes, over the cap of {}",
            self.function, self.bytes, self.cap
        )
    }
}
impl std::error::Error for CallCap {}

// --- the store

/// Guest time of the current call: wall time since the call began, less time in host calls.
pub(crate) struct GuestClock {
    started: Instant,
    pub(crate) in_host: Duration,
}

impl GuestClock {
    fn guest_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.in_host)
    }
}

struct MemoryCap {
    limit: u64,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            return Err(wasmtime::Error::new(MemoryHit {
                requested: desired as u64,
                limit: self.limit,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Each element is a pointer; keep tables well inside the memory cap.
        Ok((desired as u64).saturating_mul(8) <= self.limit)
    }
}

/// The clocks of a plugin without the `clock` capability: always zero.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A borrowed `&mut dyn TrainingHost`, alive for one `train` call.
struct TrainingRef(*mut (dyn TrainingHost + 'static));

// SAFETY: a `TrainingRef` lives in a store that is created, used and dropped on the thread of one
// `train` call, which holds the `&mut dyn TrainingHost` it points to for that whole time.
unsafe impl Send for TrainingRef {}

/// The data of one call's store.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    limiter: MemoryCap,
    pub(crate) events: Events,
    limits: Limits,
    pub(crate) clock: GuestClock,
    training: Option<TrainingRef>,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreState {
    /// Resets the guest clock: the call proper begins now.
    pub(crate) fn start_call(&mut self) {
        self.clock = GuestClock {
            started: Instant::now(),
            in_host: Duration::ZERO,
        };
    }

    /// Traps when a host call takes in more than the cap.
    pub(crate) fn check_in(&self, function: &'static str, bytes: u64) -> wasmtime::Result<()> {
        self.check_out(function, bytes)
    }

    /// Traps when a host call would give out more than the cap.
    pub(crate) fn check_out(&self, function: &'static str, bytes: u64) -> wasmtime::Result<()> {
        let cap = self.limits.host_call_bytes;
        if bytes > cap {
            return Err(wasmtime::Error::new(CallCap {
                function,
                bytes,
                cap,
            }));
        }
        Ok(())
    }

    pub(crate) fn training(&mut self) -> wasmtime::Result<&mut dyn TrainingHost> {
        match &self.training {
            // SAFETY: see `TrainingRef`; `&mut self` makes this the only live borrow.
            Some(t) => Ok(unsafe { &mut *t.0 }),
            None => Err(wasmtime::Error::msg("no training job in this call")),
        }
    }
}

// --- engines

struct EngineEntry {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
}

/// Engines by wasm stack limit, each with an epoch ticker and a linker of the host interfaces.
pub(crate) struct Engines {
    by_stack: Mutex<BTreeMap<u64, Arc<EngineEntry>>>,
}

impl Engines {
    pub(crate) fn new() -> Engines {
        Engines {
            by_stack: Mutex::new(BTreeMap::new()),
        }
    }

    fn get(&self, stack_bytes: u64) -> Result<Arc<EngineEntry>, String> {
        let mut map = self.by_stack.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get(&stack_bytes) {
            return Ok(entry.clone());
        }
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(stack_bytes as usize);
        let engine = Engine::new(&config).map_err(|e| format!("creating engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| format!("linking WASI: {e}"))?;
        latest::add_to_linker(&mut linker).map_err(|e| format!("linking host: {e}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("concepts-plugin-epoch".to_owned())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })
            .map_err(|e| format!("starting the epoch ticker: {e}"))?;
        let entry = Arc::new(EngineEntry {
            engine,
            linker: Arc::new(linker),
        });
        map.insert(stack_bytes, entry.clone());
        Ok(entry)
    }
}

// --- loading

/// What `load` needs from the host's configuration.
pub(crate) struct LoadContext<'a> {
    pub(crate) engines: &'a Engines,
    pub(crate) host_limits: Limits,
    pub(crate) grants: &'a Grants,
    pub(crate) cache_dir: Option<&'a Path>,
    pub(crate) data_dir: Option<&'a Path>,
    pub(crate) progress: Option<ProgressSink>,
}

/// A loaded, checked and pre-instantiated wasm plugin.
pub struct WasmPlugin {
    manifest: Manifest,
    limits: Limits,
    api: ApiVersion,
    engine: Engine,
    pre: latest::Pre,
    environment: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    progress: Option<ProgressSink>,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("id", &self.manifest.id())
            .field("api", &self.api)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Loads the wasm plugin of `manifest` from `dir`: checks the digest, limits, capabilities, API
/// version and imports, compiles (or takes the compiled artefact from the cache) and
/// pre-instantiates. No plugin code runs.
pub(crate) fn load(
    cx: &LoadContext<'_>,
    manifest: &Manifest,
    dir: &Path,
) -> Result<WasmPlugin, PluginError> {
    let id = manifest.id();
    let path = dir.join(manifest.file());
    let bytes = concepts_fs::read_bounded(&path, MAX_COMPONENT_BYTES)?;
    let digest = sha256_hex(&bytes);
    if digest != manifest.sha256() {
        return Err(PluginError::HashMismatch {
            id: id.to_owned(),
            file: manifest.file().to_owned(),
            expected: manifest.sha256().to_owned(),
            found: digest,
        });
    }
    let limits = cx.host_limits.lowered_by(id, manifest.limits())?;
    for &capability in manifest.capabilities() {
        if !cx.grants.allows(id, capability) {
            return Err(PluginError::CapabilityNotGranted {
                id: id.to_owned(),
                capability: capability.to_string(),
            });
        }
    }
    let host_err = |message: String| PluginError::Host {
        id: id.to_owned(),
        message,
    };
    let entry = cx.engines.get(limits.stack_bytes).map_err(host_err)?;
    let component = compile(&entry.engine, id, &bytes, &digest, cx.cache_dir)?;
    let api = check_component(&entry.engine, &component, manifest)?;
    let pre =
        entry
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::InvalidComponent {
                id: id.to_owned(),
                reason: format!("{e:#}"),
            })?;
    let pre = if api >= latest::MIN_VERSION {
        latest::Pre::new(manifest.role(), pre).map_err(|e| PluginError::InvalidComponent {
            id: id.to_owned(),
            reason: format!("{e:#}"),
        })?
    } else {
        unreachable!("versions below the oldest supported are refused by check_component")
    };
    let environment = if manifest.capabilities().contains(&Capability::Environment) {
        cx.grants.environment.clone()
    } else {
        Vec::new()
    };
    let data_dir = if manifest.capabilities().contains(&Capability::Filesystem) {
        let base = cx.data_dir.ok_or_else(|| {
            host_err("the filesystem capability needs a plugin data directory".to_owned())
        })?;
        let dir = base.join(id);
        std::fs::create_dir_all(&dir).map_err(|e| PluginError::io("creating", &dir, e))?;
        Some(dir)
    } else {
        None
    };
    Ok(WasmPlugin {
        manifest: manifest.clone(),
        limits,
        api,
        engine: entry.engine.clone(),
        pre,
        environment,
        data_dir,
        progress: cx.progress.clone(),
    })
}

/// Compiles `bytes`, or deserializes the artefact cached under `cache_dir` for the same component
/// digest and engine configuration (which includes the wasmtime version).
fn compile(
    engine: &Engine,
    id: &str,
    bytes: &[u8],
    digest: &str,
    cache_dir: Option<&Path>,
) -> Result<Component, PluginError> {
    let invalid = |e: wasmtime::Error| PluginError::InvalidComponent {
        id: id.to_owned(),
        reason: format!("{e:#}"),
    };
    let Some(cache_dir) = cache_dir else {
        return Component::new(engine, bytes).map_err(invalid);
    };
    let path = cache_dir.join(format!("{}.cwasm", cache_key(engine, digest)));
    // Read into memory rather than mapping the file: a file truncated under a mapping would crash
    // the process (SIGBUS), and artefacts are small.
    if let Ok(artefact) = std::fs::read(&path) {
        // SAFETY: the cache directory holds only artefacts this host serialized (written
        // atomically under a name derived from the component digest and engine configuration);
        // wasmtime still checks that the artefact matches the engine.
        match unsafe { Component::deserialize(engine, &artefact) } {
            Ok(component) => return Ok(component),
            Err(e) => tracing::warn!(
                target: "concepts_plugin",
                plugin = id,
                "ignoring unusable cached artefact `{}`: {e}",
                path.display()
            ),
        }
    }
    let component = Component::new(engine, bytes).map_err(invalid)?;
    if let Err(e) = write_cache(&component, cache_dir, &path) {
        tracing::warn!(target: "concepts_plugin", plugin = id, "not caching the compiled component: {e}");
    }
    Ok(component)
}

fn write_cache(component: &Component, dir: &Path, path: &Path) -> Result<(), String> {
    let bytes = component.serialize().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(|e| e.to_string())?;
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist(path).map_err(|e| e.to_string())?;
    Ok(())
}

/// sha256 over the component digest and the engine's compatibility hash.
pub(crate) fn cache_key(engine: &Engine, digest: &str) -> String {
    use sha2::Digest;
    use std::hash::Hash;
    struct ShaHasher(sha2::Sha256);
    impl std::hash::Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only `write` is used")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(sha2::Sha256::new());
    hasher.0.update(digest.as_bytes());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}

/// The `concepts:plugin` interfaces a role's world imports.
fn role_imports(role: Role) -> &'static [&'static str] {
    match role {
        Role::Miner => &["host", "embeddings"],
        Role::Trainer => &["host", "training-host"],
        Role::Linker => &["host"],
    }
}

/// Splits `ns:pkg/iface@version` into `("ns:pkg", "iface", Some("version"))`.
fn split_name(name: &str) -> Option<(&str, &str, Option<&str>)> {
    let (package, rest) = name.split_once('/')?;
    let (interface, version) = match rest.split_once('@') {
        Some((i, v)) => (i, Some(v)),
        None => (rest, None),
    };
    Some((package, interface, version))
}

/// The versions this host serves, for messages.
pub(crate) fn supported_versions() -> String {
    format!("{} (line {})", API_VERSION, API_VERSION.line())
}

/// Checks the component's `concepts:plugin` version, its exports and its import allow-list.
fn check_component(
    engine: &Engine,
    component: &Component,
    manifest: &Manifest,
) -> Result<ApiVersion, PluginError> {
    let id = manifest.id();
    let role = manifest.role();
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();

    // The API version first: a component for another line fails here, whatever else it does.
    let mut api = None;
    for name in imports.iter().chain(&exports) {
        let Some((WIT_PACKAGE, _, version)) = split_name(name) else {
            continue;
        };
        let found = version.unwrap_or("(none)");
        let parsed = version.and_then(ApiVersion::parse);
        let ok = parsed.is_some_and(|v| {
            v.same_line(API_VERSION) && v <= API_VERSION && v >= latest::MIN_VERSION
        });
        if !ok {
            return Err(PluginError::UnsupportedApiVersion {
                id: id.to_owned(),
                found: found.to_owned(),
                supported: supported_versions(),
            });
        }
        api = api.max(parsed);
    }

    let export = role.export_interface();
    if !exports
        .iter()
        .any(|name| matches!(split_name(name), Some((WIT_PACKAGE, iface, _)) if iface == export))
    {
        return Err(PluginError::MissingExport {
            id: id.to_owned(),
            world: role.world().to_owned(),
            expected: format!("{WIT_PACKAGE}/{export}"),
        });
    }

    for name in &imports {
        let refuse = |reason: String| PluginError::ImportNotAllowed {
            id: id.to_owned(),
            import: name.clone(),
            reason,
        };
        let needs = match split_name(name) {
            Some((WIT_PACKAGE, iface, _)) => {
                if role_imports(role).contains(&iface) {
                    None
                } else {
                    return Err(refuse(format!(
                        "which the `{}` world does not import",
                        role.world()
                    )));
                }
            }
            Some(("wasi:cli" | "wasi:io" | "wasi:random", _, _)) => None,
            // `wasi:filesystem/types` uses the wall clock's types, so a filesystem plugin imports
            // it too; without `clock` its clocks are frozen at zero (see `new_store`).
            Some(("wasi:clocks", _, _))
                if manifest.capabilities().contains(&Capability::Filesystem) =>
            {
                None
            }
            Some(("wasi:clocks", _, _)) => Some(Capability::Clock),
            Some(("wasi:filesystem", _, _)) => Some(Capability::Filesystem),
            Some(("wasi:sockets", _, _)) => Some(Capability::Network),
            _ => return Err(refuse("which is not on the host's allow-list".to_owned())),
        };
        if let Some(capability) = needs {
            if !manifest.capabilities().contains(&capability) {
                return Err(refuse(format!(
                    "which needs capability `{capability}`; its manifest does not request it"
                )));
            }
        }
    }
    api.ok_or_else(|| PluginError::MissingExport {
        id: id.to_owned(),
        world: role.world().to_owned(),
        expected: format!("{WIT_PACKAGE}/{export}"),
    })
}

// --- calls

impl WasmPlugin {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The effective limits (host defaults lowered by the manifest).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The `concepts:plugin` version the component targets.
    pub fn api(&self) -> ApiVersion {
        self.api
    }

    fn new_store(&self) -> Result<(Store<StoreState>, MemoryOutputPipe), PluginError> {
        let id = self.manifest.id();
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        wasi.envs(&self.environment);
        if let Some(dir) = &self.data_dir {
            wasi.preopened_dir(dir, "/data", FsPerms::ReadWrite)
                .map_err(|e| PluginError::Host {
                    id: id.to_owned(),
                    message: format!("opening data directory `{}`: {e}", dir.display()),
                })?;
        }
        if !self.manifest.capabilities().contains(&Capability::Clock) {
            wasi.wall_clock(FrozenClock);
            wasi.monotonic_clock(FrozenClock);
        }
        if self.manifest.capabilities().contains(&Capability::Network) {
            wasi.inherit_network();
            wasi.allow_ip_name_lookup(true);
        }
        let state = StoreState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryCap {
                limit: self.limits.memory_bytes,
            },
            events: Events::new(id, self.progress.clone()),
            limits: self.limits,
            clock: GuestClock {
                started: Instant::now(),
                in_host: Duration::ZERO,
            },
            training: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        let limit = self.limits.guest_time;
        store.epoch_deadline_callback(move |cx| {
            if cx.data().clock.guest_time() > limit {
                Err(wasmtime::Error::new(DeadlineHit))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        Ok((store, stderr))
    }

    /// Turns a failed call into the specific error.
    fn classify(
        &self,
        call: &'static str,
        error: wasmtime::Error,
        stderr: &MemoryOutputPipe,
    ) -> PluginError {
        let id = self.manifest.id().to_owned();
        if error.downcast_ref::<DeadlineHit>().is_some() {
            return PluginError::DeadlineExceeded {
                id,
                call,
                limit_ms: self.limits.guest_time.as_millis() as u64,
            };
        }
        if let Some(hit) = error.downcast_ref::<MemoryHit>() {
            return PluginError::MemoryLimitExceeded {
                id,
                call,
                requested: hit.requested,
                limit: hit.limit,
            };
        }
        if let Some(cap) = error.downcast_ref::<CallCap>() {
            return PluginError::HostCallTooLarge {
                id,
                function: cap.function,
                bytes: cap.bytes,
                cap: cap.cap,
            };
        }
        let trap = match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        PluginError::Trapped {
            id,
            call,
            trap,
            stderr: stderr_tail(&stderr.contents()),
        }
    }

    fn failed(&self, call: &'static str, message: String) -> PluginError {
        PluginError::Failed {
            id: self.manifest.id().to_owned(),
            call,
            message,
        }
    }
}

fn stderr_tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.char_indices().rev().nth(1000).map_or(0, |(i, _)| i);
    text[start..].to_owned()
}

/// A wasm plugin in the miner role.
pub struct WasmMiner(pub(crate) Arc<WasmPlugin>);
/// A wasm plugin in the trainer role.
pub struct WasmTrainer(pub(crate) Arc<WasmPlugin>);
/// A wasm plugin in the linker role.
pub struct WasmLinker(pub(crate) Arc<WasmPlugin>);

impl NegativeMiner for WasmMiner {
    fn id(&self) -> &str {
        self.0.manifest.id()
    }

    fn mine(
        &mut self,
        positives: &EmbeddingMatrix,
        pool: &EmbeddingMatrix,
        params: api::MiningParams,
    ) -> Result<Vec<api::MinedNegative>, PluginError> {
        let p = &self.0;
        let (mut store, stderr) = p.new_store()?;
        let answer = latest::mine(&p.pre, &mut store, positives.clone(), pool.clone(), params)
            .map_err(|e| p.classify("mine", e, &stderr))?
            .map_err(|m| p.failed("mine", m))?;
        roles::check_mined(p.manifest.id(), pool.rows(), &answer)?;
        Ok(answer)
    }
}

impl Trainer for WasmTrainer {
    fn id(&self) -> &str {
        self.0.manifest.id()
    }

    fn train(
        &mut self,
        host: &mut dyn TrainingHost,
        params: api::TrainParams,
    ) -> Result<api::TrainSummary, PluginError> {
        let p = &self.0;
        let (mut store, stderr) = p.new_store()?;
        let host: *mut (dyn TrainingHost + '_) = host;
        // SAFETY: only the lifetime is erased. The pointer lives in `store`, which is dropped at
        // the end of this function, while `host` is still mutably borrowed by it.
        let host: *mut (dyn TrainingHost + 'static) = unsafe { std::mem::transmute(host) };
        store.data_mut().training = Some(TrainingRef(host));
        let result = latest::train(&p.pre, &mut store, params);
        drop(store);
        let summary = result
            .map_err(|e| p.classify("train", e, &stderr))?
            .map_err(|m| p.failed("train", m))?;
        roles::check_summary(p.manifest.id(), &summary)?;
        Ok(summary)
    }
}

impl MetadataLinker for WasmLinker {
    fn id(&self) -> &str {
        self.0.manifest.id()
    }

    fn validate(&mut self, metadata: &api::ConceptMetadata) -> Result<(), PluginError> {
        let p = &self.0;
        let (mut store, stderr) = p.new_store()?;
        latest::validate(&p.pre, &mut store, metadata)
            .map_err(|e| p.classify("validate", e, &stderr))?
            .map_err(|problems| roles::invalid_metadata(p.manifest.id(), metadata, problems))
    }

    fn link_conversation(
        &mut self,
        metadata: &api::ConceptMetadata,
        placeholders: &[String],
        turns: Vec<api::Turn>,
    ) -> Result<Vec<api::Turn>, PluginError> {
        let p = &self.0;
        let (mut store, stderr) = p.new_store()?;
        latest::link_conversation(&p.pre, &mut store, metadata, placeholders, turns)
            .map_err(|e| p.classify("link-conversation", e, &stderr))?
            .map_err(|m| p.failed("link-conversation", m))
    }

    fn render_context(&mut self, active: &[api::ConceptMetadata]) -> Result<String, PluginError> {
        let p = &self.0;
        let (mut store, stderr) = p.new_store()?;
        latest::render_context(&p.pre, &mut store, active)
            .map_err(|e| p.classify("render-context", e, &stderr))?
            .map_err(|m| p.failed("render-context", m))
    }
}
