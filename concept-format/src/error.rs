//! The one error type of the crate

use std::path::PathBuf;

/// Everything that can go wrong reading, validating or writing a concept package
///
/// Every variant names the item at fault and, where there is one, the expected
/// and the found value. [`FormatError::kind`] gives the variant name as a
/// stable string; `spec/ycpt-v1.md` lists the same names as error classes.
/// Fields are named for what they hold (`expected`, `found`, `field`, `tensor`).
#[allow(missing_docs)] // variant fields: see the variant docs and messages
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    // --- files -------------------------------------------------------------
    /// Reading or writing a file failed
    #[error("i/o error on `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`crate::MAX_FILE_LEN`]
    #[error("file is too large: expected at most {limit} bytes, found {found}")]
    FileTooLarge { limit: u64, found: u64 },

    // --- container ---------------------------------------------------------
    /// The byte stream ends inside a fixed-size or length-prefixed part
    #[error("file is truncated in the {what}: expected at least {expected} bytes, found {found}")]
    Truncated {
        what: &'static str,
        expected: u64,
        found: u64,
    },
    /// The first eight bytes are not [`crate::MAGIC`]
    #[error("bad magic: expected {expected}, found {found}")]
    BadMagic { expected: String, found: String },
    /// The major version is not [`crate::FORMAT_MAJOR`]
    #[error(
        "unsupported format version {found_major}.{found_minor}: expected major version {expected_major}"
    )]
    UnsupportedMajor {
        expected_major: u16,
        found_major: u16,
        found_minor: u16,
    },
    /// The manifest length prefix exceeds [`crate::MAX_MANIFEST_LEN`]
    #[error("manifest is too large: expected at most {limit} bytes, found {found}")]
    ManifestTooLarge { limit: u64, found: u64 },
    /// The manifest bytes are not UTF-8
    #[error("manifest is not valid utf-8: expected utf-8 text, found an invalid byte at manifest offset {offset}")]
    ManifestNotUtf8 { offset: usize },

    // --- manifest ----------------------------------------------------------
    /// The manifest is not syntactically valid TOML
    #[error("manifest is not valid toml: {message}")]
    ManifestSyntax { message: String },
    /// A required manifest field is absent
    #[error("manifest field `{field}` is missing")]
    MissingField { field: String },
    /// A manifest field has the wrong TOML type
    #[error("manifest field `{field}` has the wrong type: expected {expected}, found {found}")]
    FieldType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A manifest key this format version does not define, outside `[ext]`
    #[error("manifest field `{field}` is not defined by format version {major}.{minor}: expected only the v{major}.{minor} fields, with extensions under `[ext]`")]
    UnknownField {
        field: String,
        major: u16,
        minor: u16,
    },
    /// The `name` field breaks the name rule
    #[error("manifest field `name` is invalid: expected 1 to 64 characters from `a-z`, `0-9`, `_`, `-`, found {found}")]
    InvalidName { found: String },
    /// The `category` field is not one of the six categories
    #[error("manifest field `category` is invalid: expected one of person, pet, object, landmark, character, other, found {found}")]
    UnknownCategory { found: String },
    /// A dtype string is not one of f32, f16, bf16
    #[error("{field} is invalid: expected one of {expected}, found {found}")]
    UnknownDType {
        field: String,
        expected: &'static str,
        found: String,
    },
    /// The `created` field is not an RFC 3339 date-time
    #[error("manifest field `{field}` is not an rfc 3339 date-time ({reason}): expected e.g. `2025-05-03T12:00:00Z`, found {found}")]
    InvalidTimestamp {
        field: String,
        reason: String,
        found: String,
    },
    /// A dimension (`k`, `d`, a hidden size) is outside its allowed range
    #[error("{what} is out of range: expected {min}..={max}, found {found}")]
    DimensionOutOfRange {
        what: String,
        min: u64,
        max: u64,
        found: i128,
    },
    /// `d` disagrees with `base_model.hidden_size`
    #[error("manifest field `d` disagrees with `base_model.hidden_size`: expected {hidden_size}, found {d}")]
    HiddenSizeMismatch { d: u64, hidden_size: u64 },
    /// Any other manifest field whose value breaks its rule
    #[error("manifest field `{field}` is invalid: expected {expected}, found {found}")]
    InvalidField {
        field: String,
        expected: String,
        found: String,
    },

    // --- body: safetensors header -------------------------------------------
    /// The safetensors header length prefix exceeds [`crate::MAX_BODY_HEADER_LEN`]
    #[error("safetensors header is too large: expected at most {limit} bytes, found {found}")]
    BodyHeaderTooLarge { limit: u64, found: u64 },
    /// The safetensors header is not UTF-8, not JSON, or not shaped like a safetensors header
    #[error("safetensors header is invalid: {reason}")]
    BodyHeaderInvalid { reason: String },
    /// The safetensors header carries `__metadata__`
    #[error("safetensors header has a `__metadata__` entry: expected none, the manifest holds all metadata")]
    BodyMetadata,
    /// A tensor name appears twice in the safetensors header
    #[error("tensor `{name}` appears more than once in the safetensors header: expected it once")]
    DuplicateTensor { name: String },
    /// A tensor other than `identifier`, `latents`, `head`
    #[error(
        "unexpected tensor {name} in the body: expected only `identifier`, `latents` and `head`"
    )]
    UnexpectedTensor { name: String },
    /// One of the three tensors is absent
    #[error("tensor `{name}` is missing from the body")]
    MissingTensor { name: &'static str },
    /// A tensor's dtype is unsupported or disagrees with the manifest
    #[error("tensor `{tensor}` has dtype {found}: expected {expected}")]
    TensorDtype {
        tensor: &'static str,
        expected: String,
        found: String,
    },
    /// A tensor has the wrong number of dimensions
    #[error("tensor `{tensor}` has rank {found}: expected rank {expected}")]
    TensorRank {
        tensor: &'static str,
        expected: usize,
        found: usize,
    },
    /// A tensor's shape disagrees with `k`/`d`
    #[error("tensor `{tensor}` has shape {found:?}: expected {expected:?}")]
    TensorShape {
        tensor: &'static str,
        expected: Vec<u64>,
        found: Vec<u64>,
    },

    // --- body: data section ------------------------------------------------
    /// `data_offsets` with begin after end
    #[error("tensor `{tensor}` has data_offsets [{begin}, {end}]: expected begin <= end")]
    TensorOffsets {
        tensor: &'static str,
        begin: u64,
        end: u64,
    },
    /// A tensor's byte span does not match its shape and dtype
    #[error("tensor `{tensor}` spans {found} bytes: expected {expected} for its shape and dtype")]
    TensorByteLength {
        tensor: &'static str,
        expected: u64,
        found: u64,
    },
    /// A tensor ends past the data section
    #[error("tensor `{tensor}` ends at data byte {end}: expected at most {data_len}, the data section length")]
    TensorOutOfBounds {
        tensor: &'static str,
        end: u64,
        data_len: u64,
    },
    /// Two tensors share bytes
    #[error("tensors `{first}` and `{second}` overlap: expected `{second}` to begin at {expected}, found {found}")]
    TensorOverlap {
        first: &'static str,
        second: &'static str,
        expected: u64,
        found: u64,
    },
    /// Unused bytes before a tensor
    #[error("gap in the data section before tensor `{tensor}`: expected it to begin at {expected}, found {found}")]
    TensorGap {
        tensor: &'static str,
        expected: u64,
        found: u64,
    },
    /// Unused bytes after the last tensor
    #[error("data section has trailing bytes: expected {expected} bytes, found {found}")]
    TrailingBytes { expected: u64, found: u64 },
    /// The `safetensors` crate rejected a body this crate's own checks passed
    #[error("safetensors rejected the body: {message}")]
    Safetensors { message: String },
    /// A NaN or infinity in a tensor
    #[error("tensor `{tensor}` has a non-finite value at element {index}: expected a finite number, found {value}")]
    NonFinite {
        tensor: &'static str,
        index: usize,
        value: f32,
    },
    /// The body is valid but not byte-identical to its canonical encoding
    #[error("body is not canonical: expected the canonical safetensors encoding ({expected_len} bytes), found a difference at body byte {offset} ({found_len} bytes)")]
    NonCanonicalBody {
        offset: u64,
        expected_len: u64,
        found_len: u64,
    },
    /// The body's SHA-256 differs from the manifest's `body_sha256`
    #[error("body sha256 mismatch: expected {expected} (manifest `body_sha256`), found {found}")]
    BodyHashMismatch { expected: String, found: String },

    // --- building ----------------------------------------------------------
    /// A tensor given to [`crate::ConceptTensors::from_f32`] has the wrong length
    #[error("tensor `{tensor}` has {found} elements: expected {expected}")]
    LengthMismatch {
        tensor: &'static str,
        expected: usize,
        found: usize,
    },
    /// A finite `f32` that is not finite once converted to the target dtype
    #[error("tensor `{tensor}` element {index} is {value}: expected a value that stays finite as {dtype}")]
    ValueOverflow {
        tensor: &'static str,
        index: usize,
        value: f32,
        dtype: crate::DType,
    },
    /// Manifest `k`, `d` or `dtype` disagrees with the tensors given to [`crate::ConceptPackage::new`]
    #[error(
        "manifest field `{field}` disagrees with the tensors: expected {expected}, found {found}"
    )]
    ManifestTensorMismatch {
        field: &'static str,
        expected: String,
        found: String,
    },
    /// [`crate::migrate`] was asked to rewrite a newer minor as an older one
    #[error("cannot migrate format version {major}.{found_minor}: expected minor {current_minor} or older, a newer minor would lose fields")]
    MigrateFromNewer {
        major: u16,
        found_minor: u16,
        current_minor: u16,
    },
}

impl FormatError {
    /// The variant name, a stable error-class identifier (see `spec/ycpt-v1.md`)
    pub fn kind(&self) -> &'static str {
        match self {
            FormatError::Io { .. } => "Io",
            FormatError::FileTooLarge { .. } => "FileTooLarge",
            FormatError::Truncated { .. } => "Truncated",
            FormatError::BadMagic { .. } => "BadMagic",
            FormatError::UnsupportedMajor { .. } => "UnsupportedMajor",
            FormatError::ManifestTooLarge { .. } => "ManifestTooLarge",
            FormatError::ManifestNotUtf8 { .. } => "ManifestNotUtf8",
            FormatError::ManifestSyntax { .. } => "ManifestSyntax",
            FormatError::MissingField { .. } => "MissingField",
            FormatError::FieldType { .. } => "FieldType",
            FormatError::UnknownField { .. } => "UnknownField",
            FormatError::InvalidName { .. } => "InvalidName",
            FormatError::UnknownCategory { .. } => "UnknownCategory",
            FormatError::UnknownDType { .. } => "UnknownDType",
            FormatError::InvalidTimestamp { .. } => "InvalidTimestamp",
            FormatError::DimensionOutOfRange { .. } => "DimensionOutOfRange",
            FormatError::HiddenSizeMismatch { .. } => "HiddenSizeMismatch",
            FormatError::InvalidField { .. } => "InvalidField",
            FormatError::BodyHeaderTooLarge { .. } => "BodyHeaderTooLarge",
            FormatError::BodyHeaderInvalid { .. } => "BodyHeaderInvalid",
            FormatError::BodyMetadata => "BodyMetadata",
            FormatError::DuplicateTensor { .. } => "DuplicateTensor",
            FormatError::UnexpectedTensor { .. } => "UnexpectedTensor",
            FormatError::MissingTensor { .. } => "MissingTensor",
            FormatError::TensorDtype { .. } => "TensorDtype",
            FormatError::TensorRank { .. } => "TensorRank",
            FormatError::TensorShape { .. } => "TensorShape",
            FormatError::TensorOffsets { .. } => "TensorOffsets",
            FormatError::TensorByteLength { .. } => "TensorByteLength",
            FormatError::TensorOutOfBounds { .. } => "TensorOutOfBounds",
            FormatError::TensorOverlap { .. } => "TensorOverlap",
            FormatError::TensorGap { .. } => "TensorGap",
            FormatError::TrailingBytes { .. } => "TrailingBytes",
            FormatError::Safetensors { .. } => "Safetensors",
            FormatError::NonFinite { .. } => "NonFinite",
            FormatError::NonCanonicalBody { .. } => "NonCanonicalBody",
            FormatError::BodyHashMismatch { .. } => "BodyHashMismatch",
            FormatError::LengthMismatch { .. } => "LengthMismatch",
            FormatError::ValueOverflow { .. } => "ValueOverflow",
            FormatError::ManifestTensorMismatch { .. } => "ManifestTensorMismatch",
            FormatError::MigrateFromNewer { .. } => "MigrateFromNewer",
        }
    }
}

/// Quotes untrusted text for an error message: backticks, escaped, at most 80 characters
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::from("`");
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('`');
    out
}
