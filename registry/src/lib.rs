//! concept-registry: the local, content-addressed store of installed concept packages.
//!
//! Its one job is to keep a directory of `.ycpt` packages consistent under concurrent use and
//! crashes. The key design choice is content addressing plus a single small index:
//!
//! ```text
//! <root>/registry.lock                 fs4 lock: exclusive for every read-modify-write, shared for reads
//! <root>/index.json                    names + identifiers → sha256 (+ cached manifest summary)
//! <root>/blobs/sha256/<hex>.ycpt       package files, named by the sha256 of their bytes
//! <root>/tmp/                          temp files (`index-…<pid>.<n>.tmp`, `blob-…`): crash leftovers
//! ```
//!
//! [`Registry::gc`] deletes only what the registry itself made: temp files with its own name
//! pattern, and blob files named `<hex>.ycpt` whose bytes hash to that name and that no index
//! entry references. It never deletes through a folder that is a symbolic link, never deletes a
//! link, and refuses to run when the index is missing while blobs exist;
//! [`Registry::rebuild_index`] rebuilds a lost or damaged index from the blobs.
//!
//! Every write is a temp file in `tmp/`, fsync, rename, fsync of the directory, done while the
//! exclusive lock is held; a package is parsed and validated completely before its blob is written.
//! So readers never see a partial file, and a crash leaves at most unreferenced files that
//! [`Registry::verify`] reports and [`Registry::gc`] removes.
//!
//! The crate runs no inference, prints nothing and reads no environment variables: the caller
//! passes the root directory (the `concepts` CLI resolves `$CONCEPTS_HOME`).

mod compat;
mod digest;
mod error;
mod fsio;
mod index;
mod view;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use concept_format::{ConceptPackage, ModelFingerprint};

pub use compat::{
    check_compatibility, BaseModelMismatch, Compatibility, FieldMismatch, MismatchKind,
};
pub use error::{RegistryError, Result};

/// The registry folder when the user names none: `from_env` (the value of `CONCEPTS_HOME`,
/// which the caller reads; this crate reads no environment), else `<platform data
/// dir>/concepts`. A set but empty value is an error rather than a silent default.
///
/// ```
/// use std::ffi::OsStr;
/// use std::path::Path;
///
/// let home = concept_registry::default_home(Some(OsStr::new("/tmp/my-concepts"))).unwrap();
/// assert_eq!(home, Path::new("/tmp/my-concepts"));
/// assert!(concept_registry::default_home(Some(OsStr::new(""))).is_err());
/// ```
pub fn default_home(from_env: Option<&std::ffi::OsStr>) -> Result<std::path::PathBuf> {
    match from_env {
        Some(home) if home.is_empty() => Err(RegistryError::NoHome(
            "CONCEPTS_HOME is set but empty; set it to the registry folder, or unset it for the \
             default",
        )),
        Some(home) => Ok(std::path::PathBuf::from(home)),
        None => dirs::data_dir()
            .map(|d| d.join("concepts"))
            .ok_or(RegistryError::NoHome(
                "no platform data directory; set CONCEPTS_HOME or pass --home",
            )),
    }
}
pub use digest::InvalidDigest;
pub use index::{Digest, Entry, Summary, INDEX_FORMAT_VERSION};
pub use view::RegistryView;

use error::IoContext;
use fsio::{sync_dir, write_atomic, LockGuard};
use index::Index;

const LOCK_FILE: &str = "registry.lock";
const INDEX_FILE: &str = "index.json";
const BLOB_DIR: &str = "blobs/sha256";
const BLOB_EXT: &str = "ycpt";
const TMP_DIR: &str = "tmp";

/// A concept registry rooted at a directory.
///
/// The handle is cheap: it holds only the root path. Every operation takes the registry lock for its
/// own duration, so several handles, threads and processes can share one registry.
///
/// ```
/// use concept_format::{Category, ConceptPackage, ConceptTensors, DType, Manifest, ModelFingerprint};
/// use concept_registry::{InstallOptions, InstallOutcome, Registry};
///
/// // A tiny package, as `concepts pack` or the trainer would write it.
/// let (k, d) = (2, 4);
/// let tensors = ConceptTensors::from_f32(DType::F32, k, d, vec![0.5; d], vec![0.25; k * d], vec![-1.0; d])?;
/// let manifest = Manifest {
///     name: "bo".into(),
///     identifier: "<bo>".into(),
///     display_name: "Bo".into(),
///     category: Category::Pet,
///     k: k as u32,
///     d: d as u32,
///     dtype: DType::F32,
///     base_model: ModelFingerprint {
///         architecture: "toy/llava-tiny".into(),
///         hidden_size: d as u64,
///         vocab_size: 1000,
///         tokenizer_sha256: "0".repeat(64),
///         embed_sha256: "1".repeat(64),
///         lm_head_sha256: "2".repeat(64),
///     },
///     prompt_template: "llava_v1/yollava-1".into(),
///     provenance: None,
///     user_facts: vec![],
///     relations: vec![],
///     license: "CC-BY-4.0".into(),
///     created: "2025-05-03T12:00:00Z".into(),
///     body_sha256: String::new(),
///     ext: Default::default(),
/// };
/// let bytes = ConceptPackage::new(manifest, tensors)?.to_bytes();
///
/// let home = tempfile::tempdir()?;
/// let registry = Registry::open(home.path())?;
/// let options = InstallOptions { replace: false, force: false };
/// let report = registry.install_bytes(&bytes, &options)?;
/// assert_eq!(report.outcome, InstallOutcome::Installed);
/// // The identical file again is a no-op.
/// assert_eq!(registry.install_bytes(&bytes, &options)?.outcome, InstallOutcome::AlreadyInstalled);
///
/// let names: Vec<String> = registry.list()?.into_iter().map(|e| e.name).collect();
/// assert_eq!(names, ["bo"]);
/// let (_entry, package) = registry.load("<bo>")?; // by name or identifier
/// assert_eq!(package.to_bytes(), bytes);
/// assert!(registry.verify()?.is_clean());
/// registry.remove("bo")?;
/// assert!(registry.list()?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Registry {
    root: PathBuf,
    /// The index bytes the last [`Registry::view`] read and their entries (shared by clones):
    /// a view of an unchanged index costs a read and a comparison, not a parse.
    last_view: Arc<Mutex<Option<ParsedIndex>>>,
}

/// Index bytes (`None`: no index file) and the entries they hold, in name order.
#[derive(Debug)]
struct ParsedIndex {
    bytes: Option<Vec<u8>>,
    entries: Arc<[Entry]>,
}

/// How [`Registry::install_bytes`] treats clashes and base-model differences.
#[derive(Clone, Copy, Debug)]
pub struct InstallOptions {
    /// Replace installed concepts whose name or identifier the new package takes.
    pub replace: bool,
    /// Accept a package whose base-model *hashes* differ from the pinned base model
    /// (dimension differences are never accepted).
    pub force: bool,
}

/// What [`Registry::install_bytes`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The package is now installed.
    Installed,
    /// The identical file was already installed; nothing changed.
    AlreadyInstalled,
}

/// The result of an install.
#[derive(Clone, Debug)]
pub struct InstallReport {
    /// The index entry of the package.
    pub entry: Entry,
    /// Whether anything changed.
    pub outcome: InstallOutcome,
    /// Concepts that were removed because the package took their name or identifier.
    pub replaced: Vec<Entry>,
    /// How the package compares with the pinned base model; `None` when nothing is pinned.
    pub compatibility: Option<Compatibility>,
}

/// One problem found by [`Registry::verify`].
#[derive(Clone, Debug, PartialEq)]
pub enum Damage {
    /// The index names a blob that is not on disk.
    MissingBlob {
        /// Concept name.
        name: String,
        /// Expected blob path.
        path: PathBuf,
    },
    /// A blob's bytes do not hash to its address.
    HashMismatch {
        /// Concept name.
        name: String,
        /// Digest recorded in the index.
        expected: Digest,
        /// Digest of the bytes on disk.
        found: Digest,
    },
    /// A blob hashes correctly but does not parse as a concept package.
    Unparsable {
        /// Concept name.
        name: String,
        /// The format error, rendered.
        error: String,
    },
    /// The index entry disagrees with the manifest inside its blob.
    IndexMismatch {
        /// Concept name (from the index).
        name: String,
        /// The disagreeing field.
        field: &'static str,
        /// Value in the index.
        index: String,
        /// Value in the blob.
        blob: String,
    },
    /// A temp file left by an interrupted write; [`Registry::gc`] removes it.
    OrphanTempFile {
        /// Its path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// A file in the blob directory that no index entry references (a crash between writing a blob
    /// and updating the index leaves one); [`Registry::gc`] removes it.
    UnreferencedBlob {
        /// Its path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// A file in a registry folder that the registry did not make; [`Registry::gc`] leaves it.
    ForeignFile {
        /// Its path.
        path: PathBuf,
        /// Why it is not the registry's.
        reason: &'static str,
    },
    /// `index.json` is missing while blobs are stored ([`Registry::rebuild_index`] repairs it).
    IndexMissing {
        /// How many blobs are stored.
        blobs: usize,
    },
}

impl Damage {
    /// True for a file the registry did not make (wrong name, a link, a blob whose bytes do
    /// not hash to its name): reported, never deleted.
    pub fn is_foreign(&self) -> bool {
        matches!(self, Damage::ForeignFile { .. })
    }

    /// True for leftovers that [`Registry::gc`] repairs; false for damage to installed concepts.
    pub fn is_leftover(&self) -> bool {
        matches!(
            self,
            Damage::OrphanTempFile { .. } | Damage::UnreferencedBlob { .. }
        )
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::MissingBlob { name, path } => {
                write!(f, "concept `{name}`: blob `{}` is missing", path.display())
            }
            Damage::HashMismatch {
                name,
                expected,
                found,
            } => write!(
                f,
                "concept `{name}`: blob hash mismatch, expected sha256:{expected}, found sha256:{found}"
            ),
            Damage::Unparsable { name, error } => {
                write!(f, "concept `{name}`: blob does not parse: {error}")
            }
            Damage::IndexMismatch {
                name,
                field,
                index,
                blob,
            } => write!(
                f,
                "concept `{name}`: index says {field} `{index}`, blob manifest says `{blob}`"
            ),
            Damage::OrphanTempFile { path, size } => {
                write!(f, "orphan temp file `{}` ({size} bytes)", path.display())
            }
            Damage::UnreferencedBlob { path, size } => {
                write!(f, "unreferenced blob `{}` ({size} bytes)", path.display())
            }
            Damage::ForeignFile { path, reason } => {
                write!(f, "`{}` is not the registry's ({reason}); left alone", path.display())
            }
            Damage::IndexMissing { blobs } => write!(
                f,
                "the index is missing but {blobs} package file(s) are stored; \
                 `concepts verify --repair` rebuilds it"
            ),
        }
    }
}

/// The result of [`Registry::verify`].
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// Number of installed concepts whose blobs were re-hashed and re-parsed.
    pub checked: usize,
    /// Every problem found, concepts first (by name), then leftovers (by path).
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    /// True when nothing at all was found.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// The result of [`Registry::gc`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcReport {
    /// Unreferenced blobs that were deleted.
    pub removed_blobs: Vec<PathBuf>,
    /// Stale temp files that were deleted.
    pub removed_temp_files: Vec<PathBuf>,
    /// Total size of the deleted files.
    pub bytes_freed: u64,
}

/// The result of [`Registry::rebuild_index`].
#[derive(Clone, Debug, PartialEq)]
pub struct RepairReport {
    /// Entries of the rebuilt index, sorted by name.
    pub indexed: Vec<Entry>,
    /// Blobs left out of the index: their path and why (damaged, or a name or identifier
    /// that another blob kept). They stay on disk.
    pub skipped: Vec<(PathBuf, String)>,
    /// Whether the base-model pin survived (the old index was readable and had one).
    pub kept_pin: bool,
    /// Whether the old index could be read at all.
    pub old_index_readable: bool,
}

impl Registry {
    /// Opens the registry at `root`, creating the directory layout if it does not exist, and checks
    /// that the index (if any) is readable by this version.
    pub fn open(root: &Path) -> Result<Registry> {
        let registry = Registry {
            root: root.to_path_buf(),
            last_view: Arc::default(),
        };
        for dir in [registry.blob_dir(), registry.tmp_dir()] {
            fs::create_dir_all(&dir).io("create directory", &dir)?;
        }
        let _lock = registry.lock(false)?;
        Index::load(&registry.index_path())?;
        Ok(registry)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir()
            .join(format!("{}.{BLOB_EXT}", digest.as_hex()))
    }

    /// Installs the package file at `path`. See [`Registry::install_bytes`].
    ///
    /// Only a regular file of at most [`concept_format::MAX_FILE_LEN`] bytes is read (a FIFO or
    /// device is refused, not drained).
    pub fn install_file(&self, path: &Path, options: &InstallOptions) -> Result<InstallReport> {
        let bytes = concepts_fs::read_bounded(path, concept_format::MAX_FILE_LEN)?;
        self.install_checked(&bytes, path.display().to_string(), options)
    }

    /// Like [`Registry::install_bytes`], with `origin` (a path, a URL) naming the bytes in
    /// errors.
    pub fn install_bytes_from(
        &self,
        bytes: &[u8],
        origin: &str,
        options: &InstallOptions,
    ) -> Result<InstallReport> {
        self.install_checked(bytes, origin.to_owned(), options)
    }

    /// Installs a package from its file bytes.
    ///
    /// The bytes are parsed and validated completely first. Under the exclusive lock, the package is
    /// then checked against the pinned base model (if any), clashes are resolved, the blob is written
    /// atomically and the index is rewritten atomically.
    ///
    /// Installing a file whose identical bytes are already installed under the same name changes
    /// nothing and reports [`InstallOutcome::AlreadyInstalled`] (a missing or damaged blob is
    /// rewritten on the way). A different package with the same name or identifier is refused with
    /// [`RegistryError::NameTaken`] / [`RegistryError::IdentifierTaken`] unless `options.replace`.
    pub fn install_bytes(&self, bytes: &[u8], options: &InstallOptions) -> Result<InstallReport> {
        self.install_checked(bytes, format!("sha256:{}", Digest::of(bytes)), options)
    }

    fn install_checked(
        &self,
        bytes: &[u8],
        origin: String,
        options: &InstallOptions,
    ) -> Result<InstallReport> {
        let digest = Digest::of(bytes);
        let package = ConceptPackage::parse(bytes).map_err(|e| RegistryError::InvalidPackage {
            origin,
            source: Box::new(e),
        })?;
        let entry = Entry::for_package(&package, digest, bytes.len() as u64);

        let _lock = self.lock(true)?;
        let mut index = Index::load(&self.index_path())?;

        let compatibility = match &index.pinned_base_model {
            Some(pinned) => Some(
                compat::check(&entry.summary.base_model, pinned, options.force).map_err(
                    |source| RegistryError::PinnedBaseModel {
                        name: entry.name.clone(),
                        source,
                    },
                )?,
            ),
            None => None,
        };

        if index.by_name(&entry.name).map(|e| &e.sha256) == Some(&entry.sha256) {
            if !self.blob_intact(&entry.sha256)? {
                tracing::warn!(name = %entry.name, "rewriting missing or damaged blob");
                self.write_blob(&entry.sha256, bytes)?;
            }
            tracing::info!(name = %entry.name, sha256 = %entry.sha256, "already installed");
            return Ok(InstallReport {
                entry,
                outcome: InstallOutcome::AlreadyInstalled,
                replaced: Vec::new(),
                compatibility,
            });
        }

        let mut clashes: Vec<Entry> = Vec::new();
        if let Some(existing) = index.by_name(&entry.name) {
            if !options.replace {
                return Err(RegistryError::NameTaken {
                    name: entry.name.clone(),
                    existing: existing.sha256.clone(),
                    new: entry.sha256.clone(),
                });
            }
            clashes.push(existing.clone());
        }
        if let Some(existing) = index.by_identifier(&entry.identifier) {
            if existing.name != entry.name {
                if !options.replace {
                    return Err(RegistryError::IdentifierTaken {
                        identifier: entry.identifier.clone(),
                        name: entry.name.clone(),
                        existing_name: existing.name.clone(),
                    });
                }
                clashes.push(existing.clone());
            }
        }

        if !self.blob_intact(&entry.sha256)? {
            self.write_blob(&entry.sha256, bytes)?;
        }
        for clash in &clashes {
            index.remove(&clash.name);
        }
        index.insert(entry.clone());
        self.write_index(&index)?;
        for clash in &clashes {
            self.delete_blob_if_unreferenced(&index, &clash.sha256)?;
        }
        tracing::info!(name = %entry.name, sha256 = %entry.sha256, replaced = clashes.len(), "installed");
        Ok(InstallReport {
            entry,
            outcome: InstallOutcome::Installed,
            replaced: clashes,
            compatibility,
        })
    }

    /// Removes the concept with this name or identifier, and its blob.
    pub fn remove(&self, query: &str) -> Result<Entry> {
        let _lock = self.lock(true)?;
        let mut index = Index::load(&self.index_path())?;
        let name = index.find(query).map(|e| e.name.clone()).ok_or_else(|| {
            RegistryError::NotInstalled {
                query: query.to_owned(),
            }
        })?;
        let entry = index.remove(&name).expect("entry was just found");
        self.write_index(&index)?;
        self.delete_blob_if_unreferenced(&index, &entry.sha256)?;
        tracing::info!(name = %entry.name, "removed");
        Ok(entry)
    }

    /// Every installed concept, sorted by name.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let _lock = self.lock(false)?;
        Ok(Index::load(&self.index_path())?
            .entries()
            .cloned()
            .collect())
    }

    /// The index entry of the concept with this name (or, failing that, this identifier).
    pub fn get(&self, query: &str) -> Result<Entry> {
        let _lock = self.lock(false)?;
        let index = Index::load(&self.index_path())?;
        find(&index, query).cloned()
    }

    /// The verified file bytes of an installed concept: the blob is re-hashed against its address.
    pub fn read_bytes(&self, query: &str) -> Result<(Entry, Vec<u8>)> {
        let _lock = self.lock(false)?;
        let index = Index::load(&self.index_path())?;
        let entry = find(&index, query)?.clone();
        let bytes = self.read_blob(&entry)?;
        Ok((entry, bytes))
    }

    /// Loads an installed concept: reads, re-hashes and parses its blob.
    pub fn load(&self, query: &str) -> Result<(Entry, ConceptPackage)> {
        let (entry, bytes) = self.read_bytes(query)?;
        let package = parse_blob(&entry, &bytes)?;
        Ok((entry, package))
    }

    /// Whether `path` (existing or not) lies inside the registry's folder, where only the
    /// registry may write. Symbolic links in the path's folders are resolved.
    pub fn contains(&self, path: &Path) -> bool {
        is_inside(&self.root, path)
    }

    /// Writes an installed concept's package file to `dest` (atomically: temp file next to `dest`,
    /// fsync, rename). The bytes written are exactly the installed file's. A destination inside
    /// the registry, or one that is not a regular file (a device, FIFO, link), is refused; an
    /// existing file keeps its mode.
    pub fn export(&self, query: &str, dest: &Path) -> Result<Entry> {
        if self.contains(dest) {
            return Err(RegistryError::InsideRegistry {
                path: dest.to_path_buf(),
                root: self.root.clone(),
            });
        }
        let (entry, bytes) = self.read_bytes(query)?;
        parse_blob(&entry, &bytes)?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        write_atomic(dir, ".concepts-export-", dest, &bytes)?;
        tracing::info!(name = %entry.name, dest = %dest.display(), "exported");
        Ok(entry)
    }

    /// Re-hashes and re-parses every blob, checks each index entry against its blob's manifest, and
    /// looks for leftovers (temp files, unreferenced blobs). Reports every problem; fails only when
    /// the index itself cannot be read.
    pub fn verify(&self) -> Result<VerifyReport> {
        let _lock = self.lock(false)?;
        let index = Index::load(&self.index_path())?;
        let mut damage = Vec::new();
        let mut checked = 0;
        for entry in index.entries() {
            checked += 1;
            let bytes = match self.read_blob(entry) {
                Ok(bytes) => bytes,
                Err(RegistryError::MissingBlob { name, path }) => {
                    damage.push(Damage::MissingBlob { name, path });
                    continue;
                }
                Err(RegistryError::HashMismatch {
                    name,
                    expected,
                    found,
                }) => {
                    damage.push(Damage::HashMismatch {
                        name,
                        expected,
                        found,
                    });
                    continue;
                }
                Err(other) => return Err(other),
            };
            let package = match ConceptPackage::parse(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    damage.push(Damage::Unparsable {
                        name: entry.name.clone(),
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let actual = Entry::for_package(&package, entry.sha256.clone(), bytes.len() as u64);
            damage.extend(entry_mismatches(entry, &actual));
        }
        let scan = self.scan_leftovers(&index)?;
        if let Some(blobs) = self.index_missing_with_blobs()? {
            damage.push(Damage::IndexMissing { blobs });
        }
        for (path, size) in scan.blobs {
            damage.push(Damage::UnreferencedBlob { path, size });
        }
        for (path, size) in scan.temps {
            damage.push(Damage::OrphanTempFile { path, size });
        }
        for (path, reason) in scan.foreign {
            damage.push(Damage::ForeignFile { path, reason });
        }
        Ok(VerifyReport { checked, damage })
    }

    /// Deletes unreferenced blobs and stale temp files, and nothing else: only files the
    /// registry made (see the crate docs), never through a symbolic link, and not at all while
    /// the index is missing and blobs are stored ([`RegistryError::IndexMissing`]).
    ///
    /// Safe while other processes use the registry: every write happens under the exclusive lock,
    /// which gc holds, so no temp file it sees belongs to a write in progress.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock(true)?;
        let index = Index::load(&self.index_path())?;
        if let Some(blobs) = self.index_missing_with_blobs()? {
            return Err(RegistryError::IndexMissing {
                path: self.index_path(),
                blobs,
            });
        }
        let scan = self.scan_leftovers(&index)?;
        let mut report = GcReport {
            removed_blobs: Vec::new(),
            removed_temp_files: Vec::new(),
            bytes_freed: 0,
        };
        for (path, size) in scan.blobs {
            remove_file(&path)?;
            report.bytes_freed += size;
            report.removed_blobs.push(path);
        }
        for (path, size) in scan.temps {
            remove_file(&path)?;
            report.bytes_freed += size;
            report.removed_temp_files.push(path);
        }
        sync_dir(&self.blob_dir())?;
        sync_dir(&self.tmp_dir())?;
        tracing::info!(bytes_freed = report.bytes_freed, "gc done");
        Ok(report)
    }

    /// Rebuilds `index.json` from the blobs: every blob that hashes to its name and parses
    /// becomes an entry. The old index, when it can still be read, settles clashes (a name or
    /// identifier two blobs claim keeps the blob it named; otherwise the newer `created` wins)
    /// and keeps its base-model pin. Blobs left out stay on disk and are listed; nothing is
    /// deleted. Works on a registry whose index is missing or unreadable, which
    /// [`Registry::open`] refuses.
    pub fn rebuild_index(root: &Path) -> Result<RepairReport> {
        let registry = Registry {
            root: root.to_path_buf(),
            last_view: Arc::default(),
        };
        let blob_dir = registry.blob_dir();
        registry.check_folder(&blob_dir, "rebuild the index")?;
        let _lock = registry.lock(true)?;
        let old = Index::load(&registry.index_path()).ok();
        let mut candidates: Vec<(Entry, String)> = Vec::new();
        let mut skipped = Vec::new();
        for (path, _) in files_in(&blob_dir)? {
            match registry.own_blob(&path)? {
                Ok((digest, bytes)) => match ConceptPackage::parse(&bytes) {
                    Ok(package) => {
                        let entry = Entry::for_package(&package, digest, bytes.len() as u64);
                        let created = package.manifest().created.clone();
                        candidates.push((entry, created));
                    }
                    Err(e) => skipped.push((path, format!("does not parse: {e}"))),
                },
                Err(reason) => skipped.push((path, reason.to_string())),
            }
        }
        // Blobs the old index named first, then newest first.
        let named = |e: &Entry| {
            old.as_ref()
                .and_then(|o| o.by_name(&e.name))
                .is_some_and(|o| o.sha256 == e.sha256)
        };
        candidates.sort_by(|(a, ca), (b, cb)| {
            named(b)
                .cmp(&named(a))
                .then_with(|| cb.cmp(ca))
                .then_with(|| a.sha256.as_hex().cmp(b.sha256.as_hex()))
        });
        let mut index = Index::default();
        for (entry, _) in candidates {
            let path = registry.blob_path(&entry.sha256);
            if let Some(other) = index.by_name(&entry.name) {
                let why = format!("name `{}` kept by sha256:{}", entry.name, other.sha256);
                skipped.push((path, why));
            } else if let Some(other) = index.by_identifier(&entry.identifier) {
                let why = format!("identifier `{}` kept by `{}`", entry.identifier, other.name);
                skipped.push((path, why));
            } else {
                index.insert(entry);
            }
        }
        index.pinned_base_model = old.as_ref().and_then(|o| o.pinned_base_model.clone());
        fs::create_dir_all(registry.tmp_dir()).io("create directory", &registry.tmp_dir())?;
        registry.write_index(&index)?;
        skipped.sort();
        tracing::info!(
            entries = index.entries().count(),
            skipped = skipped.len(),
            "index rebuilt"
        );
        Ok(RepairReport {
            indexed: index.entries().cloned().collect(),
            skipped,
            kept_pin: index.pinned_base_model.is_some(),
            old_index_readable: old.is_some(),
        })
    }

    /// The base model this registry is pinned to, if any.
    pub fn pinned_base_model(&self) -> Result<Option<ModelFingerprint>> {
        let _lock = self.lock(false)?;
        Ok(Index::load(&self.index_path())?.pinned_base_model)
    }

    /// Pins the registry to a base model (or unpins it with `None`).
    ///
    /// Once pinned, every install is checked with [`check_compatibility`] against the pin. Pinning
    /// checks every installed concept the same way and refuses if one does not fit; `force` lets
    /// hash-only differences through, as for install.
    pub fn pin_base_model(
        &self,
        fingerprint: Option<&ModelFingerprint>,
        force: bool,
    ) -> Result<()> {
        let _lock = self.lock(true)?;
        let mut index = Index::load(&self.index_path())?;
        if let Some(pin) = fingerprint {
            for entry in index.entries() {
                compat::check(&entry.summary.base_model, pin, force).map_err(|source| {
                    RegistryError::PinnedBaseModel {
                        name: entry.name.clone(),
                        source,
                    }
                })?;
            }
        }
        index.pinned_base_model = fingerprint.cloned();
        self.write_index(&index)
    }

    /// An in-memory view for the runtime: a snapshot of the index whose packages load on demand.
    ///
    /// A server takes one per request: when the index file holds the same bytes as at the
    /// previous view, its entries are shared instead of parsed again.
    pub fn view(&self) -> Result<RegistryView> {
        let _lock = self.lock(false)?;
        let path = self.index_path();
        let bytes = Index::read_bytes(&path)?;
        let mut last = self.last_view.lock().unwrap_or_else(|e| e.into_inner());
        let entries = match last.as_ref() {
            Some(parsed) if parsed.bytes == bytes => Arc::clone(&parsed.entries),
            _ => {
                let entries: Arc<[Entry]> = match &bytes {
                    Some(bytes) => Index::parse(&path, bytes)?.entries().cloned().collect(),
                    None => Arc::new([]),
                };
                *last = Some(ParsedIndex {
                    bytes,
                    entries: Arc::clone(&entries),
                });
                entries
            }
        };
        Ok(RegistryView::new(self.clone(), entries))
    }

    // --- internals ---

    fn lock(&self, exclusive: bool) -> Result<Option<LockGuard>> {
        LockGuard::acquire(&self.root.join(LOCK_FILE), exclusive)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join(BLOB_DIR)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        write_atomic(
            &self.tmp_dir(),
            "index-",
            &self.index_path(),
            &index.to_json(),
        )
    }

    fn write_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.tmp_dir(), "blob-", &self.blob_path(digest), bytes)
    }

    /// True when the blob exists and hashes to its address.
    fn blob_intact(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        match fs::read(&path) {
            Ok(bytes) => Ok(&Digest::of(&bytes) == digest),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).io("read", &path),
        }
    }

    /// Reads an entry's blob and checks its hash.
    pub(crate) fn read_blob(&self, entry: &Entry) -> Result<Vec<u8>> {
        let path = self.blob_path(&entry.sha256);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::MissingBlob {
                    name: entry.name.clone(),
                    path,
                })
            }
            Err(e) => return Err(e).io("read", &path),
        };
        let found = Digest::of(&bytes);
        if found != entry.sha256 {
            return Err(RegistryError::HashMismatch {
                name: entry.name.clone(),
                expected: entry.sha256.clone(),
                found,
            });
        }
        Ok(bytes)
    }

    fn delete_blob_if_unreferenced(&self, index: &Index, digest: &Digest) -> Result<()> {
        if index.references(digest) {
            return Ok(());
        }
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.blob_dir()),
            // Already gone (damaged registry); nothing to free.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).io("remove", &path),
        }
    }

    /// The leftovers `gc` may delete and the foreign files it must not, from the blob and temp
    /// folders (each refused when it is a symbolic link).
    fn scan_leftovers(&self, index: &Index) -> Result<Leftovers> {
        let mut out = Leftovers::default();
        let blob_dir = self.blob_dir();
        self.check_folder(&blob_dir, "delete")?;
        let referenced: std::collections::HashSet<PathBuf> =
            index.entries().map(|e| self.blob_path(&e.sha256)).collect();
        for (path, size) in files_in(&blob_dir)? {
            // An installed concept's blob, intact or not, is `verify`'s business, never gc's.
            if referenced.contains(&path) {
                continue;
            }
            match self.own_blob(&path)? {
                Ok(_) => out.blobs.push((path, size)),
                Err(reason) => out.foreign.push((path, reason)),
            }
        }
        let tmp_dir = self.tmp_dir();
        self.check_folder(&tmp_dir, "delete")?;
        for (path, size) in files_in(&tmp_dir)? {
            let regular = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if !regular {
                out.foreign.push((path, "not a regular file"));
            } else if !is_own_temp_name(&name) {
                out.foreign
                    .push((path, "not a temp-file name the registry uses"));
            } else {
                out.temps.push((path, size));
            }
        }
        Ok(out)
    }

    /// The digest and bytes of a blob file that the registry made: a regular file named
    /// `<hex>.ycpt` whose bytes hash to `<hex>`; otherwise why not.
    fn own_blob(
        &self,
        path: &Path,
    ) -> Result<std::result::Result<(Digest, Vec<u8>), &'static str>> {
        let meta = fs::symlink_metadata(path).io("stat", path)?;
        if !meta.is_file() {
            return Ok(Err("not a regular file"));
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(digest) = name
            .strip_suffix(&format!(".{BLOB_EXT}"))
            .and_then(|hex| Digest::parse(hex).ok())
        else {
            return Ok(Err("not named <sha256>.ycpt"));
        };
        let bytes = fs::read(path).io("read", path)?;
        if Digest::of(&bytes) != digest {
            return Ok(Err("its bytes do not hash to its name"));
        }
        Ok(Ok((digest, bytes)))
    }

    /// Refuses a registry folder that is (or lies under) a symbolic link, or is not a folder:
    /// deleting or writing through it would touch files elsewhere.
    fn check_folder(&self, dir: &Path, action: &'static str) -> Result<()> {
        let relative = dir.strip_prefix(&self.root).unwrap_or(dir);
        let mut current = self.root.clone();
        for component in relative.components() {
            current.push(component);
            let what = match fs::symlink_metadata(&current) {
                Ok(m) if m.file_type().is_symlink() => "a symbolic link",
                Ok(m) if !m.is_dir() => "not a folder",
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e).io("stat", &current),
            };
            return Err(RegistryError::UnsafeFolder {
                path: current,
                what,
                action,
            });
        }
        Ok(())
    }

    /// The number of blob files when `index.json` does not exist but blobs do.
    fn index_missing_with_blobs(&self) -> Result<Option<usize>> {
        if self.index_path().exists() {
            return Ok(None);
        }
        let blobs = files_in(&self.blob_dir())?.len();
        Ok((blobs > 0).then_some(blobs))
    }
}

/// What [`Registry::scan_leftovers`] found.
#[derive(Default)]
struct Leftovers {
    blobs: Vec<(PathBuf, u64)>,
    temps: Vec<(PathBuf, u64)>,
    foreign: Vec<(PathBuf, &'static str)>,
}

/// The temp-file prefixes of the registry's own writes.
const TEMP_PREFIXES: [&str; 2] = ["index-", "blob-"];

/// Whether `name` is a temp file of the registry: today's pattern, or the
/// `<prefix><6 random characters>.tmp` of registries written before it.
fn is_own_temp_name(name: &str) -> bool {
    TEMP_PREFIXES.iter().any(|prefix| {
        concepts_fs::is_temp_name(name, prefix)
            || name
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(".tmp"))
                .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
    })
}

/// Whether `path` lies inside the registry folder `root` once both are resolved (a path that
/// does not exist yet is resolved through its folder). Callers that write user-named outputs
/// refuse such paths.
pub fn is_inside(root: &Path, path: &Path) -> bool {
    let Ok(root) = root.canonicalize() else {
        return false;
    };
    let resolved = path.canonicalize().or_else(|_| {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        parent
            .canonicalize()
            .map(|p| p.join(path.file_name().unwrap_or_default()))
    });
    resolved.is_ok_and(|p| p.starts_with(&root))
}

fn find<'i>(index: &'i Index, query: &str) -> Result<&'i Entry> {
    index
        .find(query)
        .ok_or_else(|| RegistryError::NotInstalled {
            query: query.to_owned(),
        })
}

pub(crate) fn parse_blob(entry: &Entry, bytes: &[u8]) -> Result<ConceptPackage> {
    ConceptPackage::parse(bytes).map_err(|e| RegistryError::UnparsableBlob {
        name: entry.name.clone(),
        digest: entry.sha256.clone(),
        source: Box::new(e),
    })
}

/// Fields on which an index entry disagrees with the entry its blob would produce.
fn entry_mismatches(index: &Entry, blob: &Entry) -> Vec<Damage> {
    let mut out = Vec::new();
    let mut field = |field: &'static str, i: String, b: String| {
        if i != b {
            out.push(Damage::IndexMismatch {
                name: index.name.clone(),
                field,
                index: i,
                blob: b,
            });
        }
    };
    field("name", index.name.clone(), blob.name.clone());
    field(
        "identifier",
        index.identifier.clone(),
        blob.identifier.clone(),
    );
    field("size", index.size.to_string(), blob.size.to_string());
    field(
        "summary",
        format!("{:?}", index.summary),
        format!("{:?}", blob.summary),
    );
    out
}

/// Plain files (and anything else that is not a directory) directly in `dir`, with sizes, sorted.
fn files_in(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).io("list directory", dir),
    };
    for entry in entries {
        let entry = entry.io("list directory", dir)?;
        let meta = fs::symlink_metadata(entry.path()).io("stat", &entry.path())?;
        if !meta.is_dir() {
            out.push((entry.path(), meta.len()));
        }
    }
    out.sort();
    Ok(out)
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).io("remove", path),
    }
}
