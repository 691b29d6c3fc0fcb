//! `index.json`: names and identifiers → blob digests, plus a cached manifest summary.

use std::collections::BTreeMap;
use std::path::Path;

use concept_format::{Category, ConceptPackage, DType, ModelFingerprint};
use serde::{Deserialize, Serialize};

pub use crate::digest::Digest;
use crate::error::{IoContext, RegistryError, Result};

/// Version of the `index.json` layout written by this build.
pub const INDEX_FORMAT_VERSION: u32 = 1;

/// The part of a manifest cached in the index, so that `list` never opens a blob.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Human-readable name.
    pub display_name: String,
    /// What kind of subject the concept is.
    pub category: Category,
    /// Number of latent soft tokens.
    pub k: u32,
    /// Embedding width.
    pub d: u32,
    /// Element type of the stored tensors.
    pub dtype: DType,
    /// The base model the concept was trained against.
    pub base_model: ModelFingerprint,
}

/// One installed concept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique concept name (`bo`).
    pub name: String,
    /// Unique identifier token (`<bo>`).
    pub identifier: String,
    /// Address of the blob: sha256 of the package file bytes.
    pub sha256: Digest,
    /// Size of the package file in bytes.
    pub size: u64,
    /// Cached manifest summary.
    pub summary: Summary,
}

impl Entry {
    /// The entry a package with these file bytes gets.
    pub(crate) fn for_package(package: &ConceptPackage, sha256: Digest, size: u64) -> Entry {
        let m = package.manifest();
        Entry {
            name: m.name.clone(),
            identifier: m.identifier.clone(),
            sha256,
            size,
            summary: Summary {
                display_name: m.display_name.clone(),
                category: m.category,
                k: m.k,
                d: m.d,
                dtype: m.dtype,
                base_model: m.base_model.clone(),
            },
        }
    }
}

/// On-disk shape of `index.json`.
#[derive(Serialize, Deserialize)]
struct IndexFile {
    format_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pinned_base_model: Option<ModelFingerprint>,
    concepts: Vec<Entry>,
}

/// The in-memory index. Invariant: names are unique and identifiers are unique.
#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    by_name: BTreeMap<String, Entry>,
    pub(crate) pinned_base_model: Option<ModelFingerprint>,
}

impl Index {
    /// Reads `path`; a missing file is an empty index.
    pub(crate) fn load(path: &Path) -> Result<Index> {
        match Index::read_bytes(path)? {
            Some(bytes) => Index::parse(path, &bytes),
            None => Ok(Index::default()),
        }
    }

    /// The bytes of the index at `path`; `None` when there is no file (an empty index).
    pub(crate) fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).io("read", path),
        }
    }

    /// Parses and checks index bytes read from `path` (named in errors).
    pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Index> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|source| RegistryError::IndexCorrupt {
                path: path.to_path_buf(),
                source,
            })?;
        if version.format_version != INDEX_FORMAT_VERSION {
            return Err(RegistryError::IndexVersion {
                path: path.to_path_buf(),
                expected: INDEX_FORMAT_VERSION,
                found: version.format_version,
            });
        }
        let file: IndexFile =
            serde_json::from_slice(bytes).map_err(|source| RegistryError::IndexCorrupt {
                path: path.to_path_buf(),
                source,
            })?;
        let mut index = Index {
            by_name: BTreeMap::new(),
            pinned_base_model: file.pinned_base_model,
        };
        for entry in file.concepts {
            let invalid = |reason: String| RegistryError::IndexInvalid {
                path: path.to_path_buf(),
                reason,
            };
            if index.by_name.contains_key(&entry.name) {
                return Err(invalid(format!("name `{}` appears twice", entry.name)));
            }
            if let Some(other) = index.by_identifier(&entry.identifier) {
                return Err(invalid(format!(
                    "identifier `{}` is used by both `{}` and `{}`",
                    entry.identifier, other.name, entry.name
                )));
            }
            index.by_name.insert(entry.name.clone(), entry);
        }
        Ok(index)
    }

    /// Serialises the index (pretty JSON, entries sorted by name, trailing newline).
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let file = IndexFile {
            format_version: INDEX_FORMAT_VERSION,
            pinned_base_model: self.pinned_base_model.clone(),
            concepts: self.by_name.values().cloned().collect(),
        };
        let mut out = serde_json::to_vec_pretty(&file).expect("index serialises to json");
        out.push(b'\n');
        out
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_name.values()
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name)
    }

    pub(crate) fn by_identifier(&self, identifier: &str) -> Option<&Entry> {
        self.by_name.values().find(|e| e.identifier == identifier)
    }

    /// Looks `query` up as a name first, then as an identifier.
    pub(crate) fn find(&self, query: &str) -> Option<&Entry> {
        self.by_name(query).or_else(|| self.by_identifier(query))
    }

    pub(crate) fn references(&self, digest: &Digest) -> bool {
        self.by_name.values().any(|e| &e.sha256 == digest)
    }

    /// Removes the entry called `name`.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Entry> {
        self.by_name.remove(name)
    }

    /// Inserts `entry`. The caller has removed every entry that clashes with it.
    pub(crate) fn insert(&mut self, entry: Entry) {
        debug_assert!(self.by_identifier(&entry.identifier).is_none());
        self.by_name.insert(entry.name.clone(), entry);
    }
}
