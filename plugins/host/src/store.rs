//! Installed plugin packages under `<home>/plugins/`.
//!
//! ```text
//! <home>/plugins/installed/<id>/plugin.toml   one folder per installed plugin
//! <home>/plugins/installed/<id>/<file>
//! <home>/plugins/cache/<key>.cwasm            compiled components (by digest and engine config)
//! <home>/plugins/data/<id>/                   what a plugin granted `filesystem` sees as /data
//! ```
//!
//! A package is installed only after it loaded completely (digest, limits, API version, imports,
//! compilation) from a staging folder, which then is renamed into place.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::host::PluginHost;
use crate::manifest::{is_plugin_id, Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use crate::PluginError;

/// Largest file accepted from an archive.
const MAX_ARCHIVE_FILE_BYTES: u64 = 512 << 20;

/// The plugin folder of a `concepts` home.
#[derive(Debug, Clone)]
pub struct PluginStore {
    root: PathBuf,
}

/// An installed plugin package.
#[derive(Debug, Clone)]
pub struct InstalledPlugin {
    manifest: Manifest,
    dir: PathBuf,
}

impl InstalledPlugin {
    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl PluginStore {
    /// The store at `root` (normally `<home>/plugins`); creates nothing until written to.
    pub fn new(root: &Path) -> PluginStore {
        PluginStore {
            root: root.to_owned(),
        }
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where compiled components are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Parent of the plugins' data folders.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn installed_dir(&self) -> PathBuf {
        self.root.join("installed")
    }

    /// Installs the package at `source`: a folder, or a `.tar` archive whose files sit at its top
    /// level or in one folder. `host` loads it first; a package that does not load is not installed.
    /// An installed plugin with the same id is replaced.
    pub fn install(
        &self,
        host: &PluginHost,
        source: &Path,
    ) -> Result<InstalledPlugin, PluginError> {
        let installed = self.installed_dir();
        std::fs::create_dir_all(&installed)
            .map_err(|e| PluginError::io("creating", &installed, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&installed)
            .map_err(|e| PluginError::io("creating a staging folder in", &installed, e))?;
        let meta = std::fs::metadata(source).map_err(|e| PluginError::io("reading", source, e))?;
        let manifest = if meta.is_dir() {
            let manifest = Manifest::read(source)?;
            for name in [MANIFEST_FILE, manifest.file()] {
                let from = source.join(name);
                std::fs::copy(&from, staging.path().join(name))
                    .map_err(|e| PluginError::io("copying", &from, e))?;
            }
            manifest
        } else {
            unpack_tar(source, staging.path())?
        };
        host.load(&manifest, staging.path())?;
        let target = installed.join(manifest.id());
        let old = if target.exists() {
            let old = tempfile::Builder::new()
                .prefix(".old-")
                .tempdir_in(&installed)
                .map_err(|e| PluginError::io("creating a folder in", &installed, e))?;
            std::fs::rename(&target, old.path().join("pkg"))
                .map_err(|e| PluginError::io("moving aside", &target, e))?;
            Some(old)
        } else {
            None
        };
        let staged = staging.keep();
        if let Err(e) = std::fs::rename(&staged, &target) {
            // Put the previous version back; the staged copy is left for `remove_dir_all` below.
            if let Some(old) = &old {
                let _ = std::fs::rename(old.path().join("pkg"), &target);
            }
            let _ = std::fs::remove_dir_all(&staged);
            return Err(PluginError::io("installing", &target, e));
        }
        drop(old);
        Ok(InstalledPlugin {
            manifest,
            dir: target,
        })
    }

    /// Every installed plugin, sorted by id. Folders whose manifest does not parse are skipped with
    /// a warning.
    pub fn list(&self) -> Result<Vec<InstalledPlugin>, PluginError> {
        let installed = self.installed_dir();
        let entries = match std::fs::read_dir(&installed) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(PluginError::io("listing", &installed, e)),
        };
        let mut plugins = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| PluginError::io("listing", &installed, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| is_plugin_id(n)) else {
                continue;
            };
            match Manifest::read(&entry.path()) {
                Ok(manifest) if manifest.id() == name => plugins.push(InstalledPlugin {
                    manifest,
                    dir: entry.path(),
                }),
                Ok(manifest) => tracing::warn!(
                    "skipping `{}`: its manifest names plugin `{}`",
                    entry.path().display(),
                    manifest.id()
                ),
                Err(e) => tracing::warn!("skipping `{}`: {e}", entry.path().display()),
            }
        }
        plugins.sort_by(|a, b| a.manifest.id().cmp(b.manifest.id()));
        Ok(plugins)
    }

    /// The installed plugin `id`, if any.
    pub fn get(&self, id: &str) -> Result<Option<InstalledPlugin>, PluginError> {
        if !is_plugin_id(id) {
            return Ok(None);
        }
        let dir = self.installed_dir().join(id);
        if !dir.is_dir() {
            return Ok(None);
        }
        let manifest = Manifest::read(&dir)?;
        Ok(Some(InstalledPlugin { manifest, dir }))
    }

    /// Removes the installed plugin `id` (and its data folder).
    pub fn remove(&self, id: &str) -> Result<InstalledPlugin, PluginError> {
        let plugin = self
            .get(id)?
            .ok_or_else(|| PluginError::NotFound { id: id.to_owned() })?;
        std::fs::remove_dir_all(&plugin.dir)
            .map_err(|e| PluginError::io("removing", &plugin.dir, e))?;
        let data = self.data_dir().join(id);
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| PluginError::io("removing", &data, e))?;
        }
        Ok(plugin)
    }
}

/// Unpacks `plugin.toml` and the file it names from a tar archive into `dest`; nothing else is
/// written, so hostile entry names cannot escape `dest`.
fn unpack_tar(archive: &Path, dest: &Path) -> Result<Manifest, PluginError> {
    let bad = |message: String| PluginError::Archive {
        path: archive.to_owned(),
        message,
    };
    let read_all = || -> Result<Vec<(String, Vec<u8>)>, PluginError> {
        let file =
            std::fs::File::open(archive).map_err(|e| PluginError::io("opening", archive, e))?;
        let mut tar = tar::Archive::new(file);
        let mut files = Vec::new();
        let entries = tar.entries().map_err(|e| bad(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(e.to_string()))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
            let parts: Vec<_> = path.components().collect();
            let name = match parts.as_slice() {
                [std::path::Component::Normal(n)] => n,
                [std::path::Component::Normal(_), std::path::Component::Normal(n)] => n,
                _ => continue,
            };
            let Some(name) = name.to_str() else { continue };
            let cap = if name == MANIFEST_FILE {
                MAX_MANIFEST_BYTES
            } else {
                MAX_ARCHIVE_FILE_BYTES
            };
            let mut bytes = Vec::new();
            entry
                .take(cap + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| bad(e.to_string()))?;
            if bytes.len() as u64 > cap {
                return Err(bad(format!("`{name}` is larger than {cap} bytes")));
            }
            files.push((name.to_owned(), bytes));
        }
        Ok(files)
    };
    let files = read_all()?;
    let find = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b);
    let text = find(MANIFEST_FILE).ok_or_else(|| bad(format!("no `{MANIFEST_FILE}`")))?;
    let text =
        std::str::from_utf8(text).map_err(|_| bad(format!("`{MANIFEST_FILE}` is not UTF-8")))?;
    let manifest = Manifest::parse(text, &archive.join(MANIFEST_FILE))?;
    let file = find(manifest.file())
        .ok_or_else(|| bad(format!("no `{}`, which plugin.toml names", manifest.file())))?;
    for (name, bytes) in [
        (MANIFEST_FILE, text.as_bytes()),
        (manifest.file(), file.as_slice()),
    ] {
        let path = dest.join(name);
        std::fs::write(&path, bytes).map_err(|e| PluginError::io("writing", &path, e))?;
    }
    Ok(manifest)
}
