//! The one error type of the plugin host.

use std::path::PathBuf;

use concepts_plugin_api::Role;

/// Everything that can go wrong loading, installing or calling a plugin.
///
/// Load-time variants refuse a plugin before any of its code runs; call-time variants end one call,
/// and leave the host (and the plugin, whose next call gets a fresh instance) usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    // --- packages and manifests
    /// A file could not be read or written (the path and the cause are in the message).
    #[error(transparent)]
    File(#[from] concepts_fs::FsError),
    /// A file of a package could not be read or written.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// What was being done
        action: &'static str,
        /// The file or folder
        path: PathBuf,
        /// The cause
        source: std::io::Error,
    },
    /// `plugin.toml` is not valid.
    #[error("plugin manifest `{}`: {message}", path.display())]
    Manifest {
        /// The manifest file
        path: PathBuf,
        /// What is wrong, naming the field
        message: String,
    },
    /// A package archive is malformed.
    #[error("plugin archive `{}`: {message}", path.display())]
    Archive {
        /// The archive
        path: PathBuf,
        /// What is wrong
        message: String,
    },
    /// The plugin file does not have the digest its manifest declares.
    #[error(
        "plugin `{id}`: file `{file}` has sha256 {found}, but plugin.toml declares {expected}"
    )]
    HashMismatch {
        /// Plugin id
        id: String,
        /// The file named by the manifest
        file: String,
        /// Digest in plugin.toml
        expected: String,
        /// Digest of the file
        found: String,
    },
    /// A manifest limit is above the host's default; manifests may only lower limits.
    #[error("plugin `{id}`: limit `{limit}` of {requested} exceeds the host's {allowed}; a manifest may only lower limits")]
    LimitAboveDefault {
        /// Plugin id
        id: String,
        /// Manifest key
        limit: &'static str,
        /// The manifest's value
        requested: u64,
        /// The host's value
        allowed: u64,
    },
    /// The manifest requests a capability the user did not grant.
    #[error("plugin `{id}`: requests capability `{capability}`, which was not granted")]
    CapabilityNotGranted {
        /// Plugin id
        id: String,
        /// The capability
        capability: String,
    },
    /// No plugin with this id is installed or built in.
    #[error("no plugin `{id}` is installed or built in")]
    NotFound {
        /// Plugin id
        id: String,
    },
    /// The plugin implements another role than the one asked for.
    #[error("plugin `{id}` is a {found} plugin, not a {expected}")]
    WrongRole {
        /// Plugin id
        id: String,
        /// The role asked for
        expected: Role,
        /// The plugin's role
        found: Role,
    },

    // --- wasm components
    /// The component does not target a supported `concepts:plugin` version.
    #[error("plugin `{id}`: targets plugin API concepts:plugin@{found}, but this host supports concepts:plugin@{supported}")]
    UnsupportedApiVersion {
        /// Plugin id
        id: String,
        /// The version the component uses
        found: String,
        /// The versions the host supports, e.g. `0.1.0 (line 0.1)`
        supported: String,
    },
    /// The component is not a valid (or compatible) wasm component.
    #[error("plugin `{id}`: invalid component: {reason}")]
    InvalidComponent {
        /// Plugin id
        id: String,
        /// The compiler's or linker's reason
        reason: String,
    },
    /// The component imports an interface that is not on the host's allow-list.
    #[error("plugin `{id}`: imports `{import}`, {reason}")]
    ImportNotAllowed {
        /// Plugin id
        id: String,
        /// The import name
        import: String,
        /// Why it is refused
        reason: String,
    },
    /// The component does not export its world's interface.
    #[error("plugin `{id}`: does not export `{expected}` for world `{world}`")]
    MissingExport {
        /// Plugin id
        id: String,
        /// The world in the manifest
        world: String,
        /// The interface it must export
        expected: String,
    },

    // --- call-time limits
    /// The plugin ran longer than its guest-time budget (time in host calls does not count).
    #[error("plugin `{id}`: call `{call}` exceeded its guest-time limit of {limit_ms} ms and was stopped")]
    DeadlineExceeded {
        /// Plugin id
        id: String,
        /// The role method
        call: &'static str,
        /// The limit
        limit_ms: u64,
    },
    /// The plugin tried to grow its memory past its cap.
    #[error("plugin `{id}`: call `{call}` tried to grow memory to {requested} bytes, over its limit of {limit} bytes, and was stopped")]
    MemoryLimitExceeded {
        /// Plugin id
        id: String,
        /// The role method
        call: &'static str,
        /// Bytes asked for
        requested: u64,
        /// The cap
        limit: u64,
    },
    /// A host call moved more data than the host-call cap.
    #[error("plugin `{id}`: host call `{function}` moves {bytes} bytes, over the host-call data cap of {cap} bytes; the call was stopped")]
    HostCallTooLarge {
        /// Plugin id
        id: String,
        /// The host function
        function: &'static str,
        /// Bytes in or out
        bytes: u64,
        /// The cap
        cap: u64,
    },
    /// The plugin trapped (a panic, a stack overflow, ...).
    #[error("plugin `{id}`: call `{call}` trapped: {trap}{}", stderr_suffix(.stderr))]
    Trapped {
        /// Plugin id
        id: String,
        /// The role method
        call: &'static str,
        /// The trap
        trap: String,
        /// The end of what the plugin wrote to stderr (a panic message, usually)
        stderr: String,
    },

    // --- native plugins
    /// Native plugins need an explicit opt-in.
    #[error("plugin `{id}` is a native library; native plugins run unsandboxed and load only with --allow-native")]
    NativeNotAllowed {
        /// Plugin id
        id: String,
    },
    /// The library could not be loaded or lacks a symbol.
    #[error("plugin `{id}`: loading native library `{}`: {reason}", path.display())]
    NativeLoad {
        /// Plugin id
        id: String,
        /// The library
        path: PathBuf,
        /// The loader's reason
        reason: String,
    },
    /// The library reports another ABI version.
    #[error("plugin `{id}`: native ABI version {found}, but this host supports {expected}")]
    NativeAbiMismatch {
        /// Plugin id
        id: String,
        /// The host's ABI version
        expected: u32,
        /// The library's
        found: u32,
    },
    /// The native plugin panicked; the panic was caught at the boundary.
    #[error("plugin `{id}`: call `{call}` panicked: {message}")]
    NativePanic {
        /// Plugin id
        id: String,
        /// The role method
        call: &'static str,
        /// The panic message
        message: String,
    },

    // --- the plugin's own answers
    /// The plugin returned an error.
    #[error("plugin `{id}`: call `{call}` failed: {message}")]
    Failed {
        /// Plugin id
        id: String,
        /// The role method
        call: &'static str,
        /// The plugin's message
        message: String,
    },
    /// The plugin answered something the host cannot accept.
    #[error("plugin `{id}`: call `{call}` returned an invalid answer: {message}")]
    InvalidOutput {
        /// Plugin id
        id: String,
        /// The role method
        call: &'static str,
        /// What is wrong
        message: String,
    },
    /// The linker found problems with a concept's metadata.
    #[error("concept `{concept}`: invalid metadata (checked by `{id}`): {}", problems.join("; "))]
    InvalidMetadata {
        /// Linker plugin id
        id: String,
        /// The concept's name
        concept: String,
        /// Every problem found
        problems: Vec<String>,
    },
    /// An internal wasmtime error outside a plugin call (engine setup, cache I/O, linking).
    #[error("plugin `{id}`: {message}")]
    Host {
        /// Plugin id
        id: String,
        /// What failed
        message: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {stderr})")
    }
}

impl PluginError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PluginError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
