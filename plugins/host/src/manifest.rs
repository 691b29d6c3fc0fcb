//! `plugin.toml`: what a plugin package says about itself.

use std::path::{Path, PathBuf};

use concepts_plugin_api::{ApiVersion, Role};
use serde::{Deserialize, Serialize};

use crate::limits::{Capability, ManifestLimits};
use crate::PluginError;

/// The name of the manifest file in a package.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 10;

/// How a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A wasm component, sandboxed.
    Wasm,
    /// A native shared library, trusted; loads only with `--allow-native`.
    Native,
}

impl PluginKind {
    /// `wasm` or `native`
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Wasm => "wasm",
            PluginKind::Native => "native",
        }
    }
}

/// The raw TOML shape; [`Manifest::parse`] validates it into a [`Manifest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: String,
    version: String,
    world: String,
    #[serde(default = "default_kind")]
    kind: PluginKind,
    api: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    library: Option<String>,
    sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "limits_unset")]
    limits: ManifestLimits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    capabilities: Vec<Capability>,
}

fn limits_unset(limits: &ManifestLimits) -> bool {
    *limits == ManifestLimits::default()
}

fn default_kind() -> PluginKind {
    PluginKind::Wasm
}

/// A validated `plugin.toml`.
///
/// ```toml
/// id = "acme.centroid-miner"        # [a-z0-9][a-z0-9._-]{0,63}
/// version = "0.1.0"                 # the plugin's own version
/// world = "negative-miner"          # negative-miner | trainer | metadata-linker
/// kind = "wasm"                     # wasm (default) | native
/// api = "0.1.0"                     # the concepts:plugin version it was built against
/// component = "centroid_miner.wasm" # wasm: the component file (native: `library = "..."`)
/// sha256 = "…64 hex digits…"        # of that file
///
/// [limits]                          # optional; may only lower the host's defaults
/// memory_mib = 64
/// guest_time_ms = 2000
/// host_call_kib = 1024
/// stack_kib = 256
/// ```
///
/// Invariants: the id, version and api are well-formed, the world names a role, exactly the file
/// key of the kind is present and names a plain file in the package folder, and the digest is 64
/// lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    id: String,
    version: String,
    role: Role,
    kind: PluginKind,
    api: ApiVersion,
    file: String,
    sha256: String,
    description: String,
    limits: ManifestLimits,
    capabilities: Vec<Capability>,
}

impl Manifest {
    /// Parses and validates manifest text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, PluginError> {
        let bad = |message: String| PluginError::Manifest {
            path: path.to_owned(),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| bad(e.message().to_owned()))?;
        if !is_plugin_id(&raw.id) {
            return Err(bad(format!(
                "id `{}`: expected 1 to 64 characters from a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit",
                raw.id
            )));
        }
        if ApiVersion::parse(&raw.version).is_none() {
            return Err(bad(format!(
                "version `{}`: expected major.minor.patch",
                raw.version
            )));
        }
        let role = Role::from_world(&raw.world).ok_or_else(|| {
            bad(format!(
                "world `{}`: expected negative-miner, trainer or metadata-linker",
                raw.world
            ))
        })?;
        let api = ApiVersion::parse(&raw.api)
            .ok_or_else(|| bad(format!("api `{}`: expected major.minor.patch", raw.api)))?;
        let file = match (raw.kind, raw.component, raw.library) {
            (PluginKind::Wasm, Some(file), None) | (PluginKind::Native, None, Some(file)) => file,
            (PluginKind::Wasm, _, _) => {
                return Err(bad(
                    "a wasm plugin names its file with `component` (and no `library`)".to_owned(),
                ))
            }
            (PluginKind::Native, _, _) => {
                return Err(bad(
                    "a native plugin names its file with `library` (and no `component`)".to_owned(),
                ))
            }
        };
        if !is_plain_file_name(&file) {
            return Err(bad(format!(
                "file `{file}`: expected a plain file name inside the package folder"
            )));
        }
        if raw.sha256.len() != 64
            || !raw
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(format!(
                "sha256 `{}`: expected 64 lowercase hex digits",
                raw.sha256
            )));
        }
        let mut capabilities = raw.capabilities;
        capabilities.sort_unstable();
        capabilities.dedup();
        if raw.kind == PluginKind::Native && !capabilities.is_empty() {
            return Err(bad(
                "capabilities: native plugins are not sandboxed, so they request none".to_owned(),
            ));
        }
        Ok(Manifest {
            id: raw.id,
            version: raw.version,
            role,
            kind: raw.kind,
            api,
            file,
            sha256: raw.sha256,
            description: raw.description,
            limits: raw.limits,
            capabilities,
        })
    }

    /// Reads and validates `<dir>/plugin.toml`.
    pub fn read(dir: &Path) -> Result<Manifest, PluginError> {
        let path = dir.join(MANIFEST_FILE);
        let text = concepts_fs::read_bounded(&path, MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(text).map_err(|_| PluginError::Manifest {
            path: path.clone(),
            message: "not UTF-8".to_owned(),
        })?;
        Manifest::parse(&text, &path)
    }

    /// The manifest as TOML.
    pub fn to_toml(&self) -> String {
        let (component, library) = match self.kind {
            PluginKind::Wasm => (Some(self.file.clone()), None),
            PluginKind::Native => (None, Some(self.file.clone())),
        };
        let raw = RawManifest {
            id: self.id.clone(),
            version: self.version.clone(),
            world: self.role.world().to_owned(),
            kind: self.kind,
            api: self.api.to_string(),
            component,
            library,
            sha256: self.sha256.clone(),
            description: self.description.clone(),
            limits: self.limits,
            capabilities: self.capabilities.clone(),
        };
        toml::to_string(&raw).expect("a manifest always serializes")
    }

    /// Plugin id, e.g. `concepts.default-miner`
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The plugin's own version
    pub fn version(&self) -> &str {
        &self.version
    }
    /// The role (from the world)
    pub fn role(&self) -> Role {
        self.role
    }
    /// Wasm or native
    pub fn kind(&self) -> PluginKind {
        self.kind
    }
    /// The `concepts:plugin` version it was built against
    pub fn api(&self) -> ApiVersion {
        self.api
    }
    /// The component or library file name
    pub fn file(&self) -> &str {
        &self.file
    }
    /// Declared lowercase hex sha256 of the file
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// Free text
    pub fn description(&self) -> &str {
        &self.description
    }
    /// Requested limits
    pub fn limits(&self) -> &ManifestLimits {
        &self.limits
    }
    /// Requested capabilities, sorted
    pub fn capabilities(&self) -> &[Capability] {
        &self.capabilities
    }
}

/// Builds a manifest for a file the caller has just produced (packaging tools and tests).
#[derive(Debug, Clone)]
pub struct ManifestSpec<'a> {
    /// Plugin id
    pub id: &'a str,
    /// Plugin version
    pub version: &'a str,
    /// Role
    pub role: Role,
    /// Kind
    pub kind: PluginKind,
    /// File name inside the package
    pub file: &'a str,
    /// The file's bytes (hashed into the manifest)
    pub bytes: &'a [u8],
    /// Requested limits
    pub limits: ManifestLimits,
    /// Requested capabilities
    pub capabilities: &'a [Capability],
}

impl ManifestSpec<'_> {
    /// The manifest text for this spec, against the host's newest API version.
    pub fn to_toml(&self) -> Result<String, PluginError> {
        let kind = self.kind.as_str();
        let file_key = match self.kind {
            PluginKind::Wasm => "component",
            PluginKind::Native => "library",
        };
        let mut text = format!(
            "id = {:?}\nversion = {:?}\nworld = {:?}\nkind = {kind:?}\napi = \"{}\"\n{file_key} = {:?}\nsha256 = \"{}\"\n",
            self.id,
            self.version,
            self.role.world(),
            concepts_plugin_api::API_VERSION,
            self.file,
            sha256_hex(self.bytes),
        );
        if !self.capabilities.is_empty() {
            let caps: Vec<String> = self
                .capabilities
                .iter()
                .map(|c| format!("{:?}", c.as_str()))
                .collect();
            text.push_str(&format!("capabilities = [{}]\n", caps.join(", ")));
        }
        let limits = toml::to_string(&self.limits).expect("limits always serialize");
        if !limits.trim().is_empty() {
            text.push_str("\n[limits]\n");
            text.push_str(&limits);
        }
        // Round-trip through the parser so a spec can never produce an invalid manifest.
        Manifest::parse(&text, Path::new(MANIFEST_FILE))?;
        Ok(text)
    }

    /// Writes `plugin.toml` and the file into `dir` (created if needed).
    pub fn write_package(&self, dir: &Path) -> Result<PathBuf, PluginError> {
        let text = self.to_toml()?;
        std::fs::create_dir_all(dir).map_err(|e| PluginError::io("creating", dir, e))?;
        // The file first: a manifest is only ever next to the file it describes.
        concepts_fs::write_atomic(&dir.join(self.file), self.bytes)?;
        concepts_fs::write_atomic(&dir.join(MANIFEST_FILE), text.as_bytes())?;
        Ok(dir.to_owned())
    }
}

/// `[a-z0-9][a-z0-9._-]{0,63}`
pub fn is_plugin_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=64).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        })
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name != MANIFEST_FILE
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

use concepts_fs::sha256_hex;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "acme.centroid-miner"
version = "0.2.0"
world = "negative-miner"
api = "0.1.0"
component = "miner.wasm"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[limits]
memory_mib = 32
"#;

    fn check(text: &str, expected: Result<(), &str>) {
        let got = Manifest::parse(text, Path::new("p/plugin.toml")).map(|_| ());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(msg)) => assert_eq!(
                e.to_string(),
                format!("plugin manifest `p/plugin.toml`: {msg}")
            ),
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn good_manifest_parses_and_round_trips() {
        let m = Manifest::parse(GOOD, Path::new("plugin.toml")).unwrap();
        assert_eq!(m.id(), "acme.centroid-miner");
        assert_eq!(m.role(), Role::Miner);
        assert_eq!(m.kind(), PluginKind::Wasm);
        assert_eq!(m.limits().memory_mib, Some(32));
        let again = Manifest::parse(&m.to_toml(), Path::new("plugin.toml")).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn bad_manifests_name_the_field() {
        check(&GOOD.replace("acme.centroid-miner", "Acme"), Err("id `Acme`: expected 1 to 64 characters from a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit"));
        check(
            &GOOD.replace("negative-miner", "miner"),
            Err("world `miner`: expected negative-miner, trainer or metadata-linker"),
        );
        check(
            &GOOD.replace("miner.wasm", "../miner.wasm"),
            Err("file `../miner.wasm`: expected a plain file name inside the package folder"),
        );
        check(
            &GOOD.replace("api = \"0.1.0\"", "api = \"0.1\""),
            Err("api `0.1`: expected major.minor.patch"),
        );
        check(
            &GOOD.replace("component =", "library ="),
            Err("a wasm plugin names its file with `component` (and no `library`)"),
        );
        check(&GOOD.replace("sha256 = \"0", "sha256 = \"A"), Err("sha256 `A000000000000000000000000000000000000000000000000000000000000000`: expected 64 lowercase hex digits"));
        check(&GOOD.replace("memory_mib", "memory"), Err("unknown field `memory`, expected one of `memory_mib`, `guest_time_ms`, `host_call_kib`, `stack_kib`"));
        check(GOOD, Ok(()));
    }
}
