use std::path::PathBuf;

use concept_format::FormatError;

use crate::compat::BaseModelMismatch;
use crate::digest::{Digest, InvalidDigest};

/// Everything that can go wrong in the registry.
///
/// Messages are lowercase, name the item (path, concept, digest) and carry the expected and found
/// values where there are two of them.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    // --- File system ---
    /// No registry folder was given and none can be chosen.
    #[error("{0}")]
    NoHome(&'static str),

    /// An I/O operation on a registry path (or an export destination) failed.
    #[error("{op} `{}`", path.display())]
    Io {
        /// What was being done ("read", "write", "lock", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file could not be written, or its destination is not a regular file.
    #[error(transparent)]
    File(#[from] concepts_fs::FsError),
    /// An export destination lies inside the registry, whose files only the registry writes.
    #[error(
        "`{}` is inside the registry `{}`; write exports elsewhere", path.display(), root.display()
    )]
    InsideRegistry {
        /// The refused destination.
        path: PathBuf,
        /// The registry root.
        root: PathBuf,
    },
    /// A registry folder is a symbolic link or not a folder; `gc` and repair do not delete or
    /// write through it.
    #[error("`{}` is {what}, not a folder of the registry; refusing to {action} through it", path.display())]
    UnsafeFolder {
        /// The folder.
        path: PathBuf,
        /// What it is instead ("a symbolic link", ...).
        what: &'static str,
        /// What was refused.
        action: &'static str,
    },
    /// `index.json` is missing while packages are stored: deleting them as unreferenced would
    /// lose every concept.
    #[error(
        "index `{}` is missing but {blobs} package file(s) are stored; run `concepts verify --repair` \
         to rebuild it",
        path.display()
    )]
    IndexMissing {
        /// Where the index should be.
        path: PathBuf,
        /// How many blobs are stored.
        blobs: usize,
    },

    // --- Index ---
    /// `index.json` is not valid JSON or does not have the expected shape.
    #[error("index `{}` is not a valid registry index", path.display())]
    IndexCorrupt {
        /// Path of the index.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// `index.json` was written by an incompatible version of the registry.
    #[error("index `{}` has format version {found}, expected {expected}", path.display())]
    IndexVersion {
        /// Path of the index.
        path: PathBuf,
        /// Version this build understands.
        expected: u32,
        /// Version found in the file.
        found: u32,
    },
    /// `index.json` parsed but breaks an invariant (a name or identifier used twice).
    #[error("index `{}` is inconsistent: {reason}", path.display())]
    IndexInvalid {
        /// Path of the index.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A string is not a sha256 digest (64 lowercase hex digits).
    #[error(transparent)]
    InvalidDigest(#[from] InvalidDigest),

    // --- Packages ---
    /// Bytes offered for installation are not a valid concept package.
    #[error("`{origin}` is not a valid concept package")]
    InvalidPackage {
        /// Where the bytes came from (a path, or `sha256:<hex>` for in-memory bytes).
        origin: String,
        /// Why the format crate rejected them (boxed: format errors are large).
        #[source]
        source: Box<FormatError>,
    },
    /// The name is already installed with different contents.
    #[error(
        "concept `{name}` is already installed as sha256:{existing}, the new package is sha256:{new} \
         (replace to overwrite)"
    )]
    NameTaken {
        /// The clashing name.
        name: String,
        /// Digest of the installed package.
        existing: Digest,
        /// Digest of the offered package.
        new: Digest,
    },
    /// The identifier is already used by a differently named concept.
    #[error(
        "identifier `{identifier}` of concept `{name}` is already used by installed concept \
         `{existing_name}` (replace to overwrite)"
    )]
    IdentifierTaken {
        /// The clashing identifier.
        identifier: String,
        /// Name of the offered concept.
        name: String,
        /// Name of the installed concept that uses the identifier.
        existing_name: String,
    },
    /// No installed concept has this name or identifier.
    #[error("concept `{query}` is not installed (no name or identifier matches)")]
    NotInstalled {
        /// What was looked up.
        query: String,
    },

    // --- Blobs ---
    /// The index names a blob that is not on disk.
    #[error("blob of concept `{name}` is missing: expected `{}`", path.display())]
    MissingBlob {
        /// Concept name.
        name: String,
        /// Where the blob should be.
        path: PathBuf,
    },
    /// A blob's bytes no longer hash to its address.
    #[error(
        "blob of concept `{name}` is damaged: expected sha256:{expected}, found sha256:{found}"
    )]
    HashMismatch {
        /// Concept name.
        name: String,
        /// The address (digest recorded in the index).
        expected: Digest,
        /// The digest of the bytes on disk.
        found: Digest,
    },
    /// A blob hashes correctly but does not parse (written by an incompatible format version).
    #[error("blob of concept `{name}` (sha256:{digest}) is not a valid concept package")]
    UnparsableBlob {
        /// Concept name.
        name: String,
        /// The blob's digest.
        digest: Digest,
        /// The format error (boxed: format errors are large).
        #[source]
        source: Box<FormatError>,
    },

    // --- Base model ---
    /// A package's base model does not match a model fingerprint.
    #[error(transparent)]
    BaseModel(#[from] BaseModelMismatch),
    /// A package does not fit the base model the registry is pinned to.
    #[error("concept `{name}` does not fit the registry's pinned base model")]
    PinnedBaseModel {
        /// Concept name.
        name: String,
        /// The differences.
        #[source]
        source: BaseModelMismatch,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Attaches the operation and path to an [`std::io::Error`].
pub(crate) trait IoContext<T> {
    fn io(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| RegistryError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
