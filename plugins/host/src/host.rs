//! The plugin host: configuration, and loading a package folder into a role implementation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use concepts_plugin_api::Role;

use crate::limits::{Grants, Limits};
use crate::manifest::{Manifest, PluginKind};
use crate::native::{self, NativeLinker, NativeMiner, NativePlugin, NativeTrainer};
use crate::roles::{MetadataLinker, NegativeMiner, Trainer};
use crate::services::ProgressSink;
use crate::wasm::{self, Engines, WasmLinker, WasmMiner, WasmPlugin, WasmTrainer};
use crate::PluginError;

/// How a [`PluginHost`] loads and limits plugins.
#[derive(Clone)]
pub struct HostConfig {
    /// Default (and maximum) limits of wasm plugins
    pub limits: Limits,
    /// Capabilities the user granted
    pub grants: Grants,
    /// Whether native (unsandboxed) plugins may load (`--allow-native`)
    pub allow_native: bool,
    /// Where compiled components are cached; `None` compiles on every load
    pub cache_dir: Option<PathBuf>,
    /// Parent of the per-plugin folders that the `filesystem` capability exposes
    pub data_dir: Option<PathBuf>,
    /// Receives plugins' progress reports
    pub progress: Option<ProgressSink>,
}

impl HostConfig {
    /// The host defaults: [`Limits::HOST_DEFAULTS`], nothing granted, native plugins refused, no
    /// cache and no data folder.
    pub fn sandboxed() -> HostConfig {
        HostConfig {
            limits: Limits::HOST_DEFAULTS,
            grants: Grants::none(),
            allow_native: false,
            cache_dir: None,
            data_dir: None,
            progress: None,
        }
    }
}

/// Loads plugin packages. One host serves any number of plugins and calls; a plugin that traps or
/// exceeds a limit ends only its own call.
pub struct PluginHost {
    config: HostConfig,
    engines: Engines,
}

/// A loaded plugin of any kind, before it is used in its role.
#[derive(Debug, Clone)]
pub enum LoadedPlugin {
    /// A sandboxed wasm component
    Wasm(Arc<WasmPlugin>),
    /// A native library
    Native(Arc<NativePlugin>),
}

impl PluginHost {
    /// A host with `config`.
    pub fn new(config: HostConfig) -> PluginHost {
        PluginHost {
            config,
            engines: Engines::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Loads the package in folder `dir` (`plugin.toml` and its file). Checks everything that can
    /// be checked without running plugin code; see [`PluginError`] for what is refused.
    pub fn load_dir(&self, dir: &Path) -> Result<LoadedPlugin, PluginError> {
        let manifest = Manifest::read(dir)?;
        self.load(&manifest, dir)
    }

    /// Loads the package of `manifest`, whose file is in `dir`.
    pub fn load(&self, manifest: &Manifest, dir: &Path) -> Result<LoadedPlugin, PluginError> {
        match manifest.kind() {
            PluginKind::Wasm => {
                let cx = wasm::LoadContext {
                    engines: &self.engines,
                    host_limits: self.config.limits,
                    grants: &self.config.grants,
                    cache_dir: self.config.cache_dir.as_deref(),
                    data_dir: self.config.data_dir.as_deref(),
                    progress: self.config.progress.clone(),
                };
                Ok(LoadedPlugin::Wasm(Arc::new(wasm::load(
                    &cx, manifest, dir,
                )?)))
            }
            PluginKind::Native => Ok(LoadedPlugin::Native(Arc::new(native::load(
                manifest,
                dir,
                self.config.allow_native,
                self.config.progress.clone(),
            )?))),
        }
    }
}

impl LoadedPlugin {
    /// The plugin's manifest.
    pub fn manifest(&self) -> &Manifest {
        match self {
            LoadedPlugin::Wasm(p) => p.manifest(),
            LoadedPlugin::Native(p) => p.manifest(),
        }
    }

    fn check_role(&self, expected: Role) -> Result<(), PluginError> {
        let found = self.manifest().role();
        if found != expected {
            return Err(PluginError::WrongRole {
                id: self.manifest().id().to_owned(),
                expected,
                found,
            });
        }
        Ok(())
    }

    /// The plugin as a miner.
    pub fn into_miner(self) -> Result<Box<dyn NegativeMiner>, PluginError> {
        self.check_role(Role::Miner)?;
        Ok(match self {
            LoadedPlugin::Wasm(p) => Box::new(WasmMiner(p)),
            LoadedPlugin::Native(p) => Box::new(NativeMiner(p)),
        })
    }

    /// The plugin as a trainer.
    pub fn into_trainer(self) -> Result<Box<dyn Trainer>, PluginError> {
        self.check_role(Role::Trainer)?;
        Ok(match self {
            LoadedPlugin::Wasm(p) => Box::new(WasmTrainer(p)),
            LoadedPlugin::Native(p) => Box::new(NativeTrainer(p)),
        })
    }

    /// The plugin as a linker.
    pub fn into_linker(self) -> Result<Box<dyn MetadataLinker>, PluginError> {
        self.check_role(Role::Linker)?;
        Ok(match self {
            LoadedPlugin::Wasm(p) => Box::new(WasmLinker(p)),
            LoadedPlugin::Native(p) => Box::new(NativeLinker(p)),
        })
    }
}
