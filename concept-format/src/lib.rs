//! concept-format reads, validates and writes `.ycpt` concept packages, format v1.
//!
//! A concept package is what Yo'LLaVA-style personalisation learns about one
//! subject (say the dog `<bo>`): an identifier embedding `[d]`, `k` latent
//! soft-token embeddings `[k, d]`, one LM-head column `[d]`, and a TOML
//! manifest that says what they are and which base model they belong to.
//!
//! Design choice: one self-contained file laid out like safetensors itself —
//! magic and version, a length-prefixed header (the TOML manifest), then a
//! standard safetensors byte stream as the body. Parsing works on a borrowed
//! `&[u8]`, caps every length before using it, uses checked arithmetic, checks
//! everything in one documented order and returns the first failure as a
//! [`FormatError`] naming the item, the expected and the found value. Writing
//! is canonical, so rewriting a parsed file reproduces it byte for byte.
//! `spec/ycpt-v1.md` is the normative description; this crate implements it.
//!
//! Invariant: concept-format depends on neither candle nor wasmtime and runs
//! no model code; the only I/O is [`ConceptPackage::read_file`] and
//! [`ConceptPackage::write_file_atomic`].
//!
//! ```
//! use concept_format::{Category, ConceptPackage, ConceptTensors, DType, Manifest, ModelFingerprint};
//!
//! let (k, d) = (4, 8);
//! let tensors = ConceptTensors::from_f32(
//!     DType::F16,
//!     k,
//!     d,
//!     vec![0.5; d],
//!     (0..k * d).map(|i| i as f32 / 8.0).collect(),
//!     vec![-0.25; d],
//! )?;
//! let manifest = Manifest {
//!     name: "bo".into(),
//!     identifier: "<bo>".into(),
//!     display_name: "Bo".into(),
//!     category: Category::Pet,
//!     k: k as u32,
//!     d: d as u32,
//!     dtype: DType::F16,
//!     base_model: ModelFingerprint {
//!         architecture: "toy/llava-tiny".into(),
//!         hidden_size: d as u64,
//!         vocab_size: 1000,
//!         tokenizer_sha256: "0".repeat(64),
//!         embed_sha256: "1".repeat(64),
//!         lm_head_sha256: "2".repeat(64),
//!     },
//!     prompt_template: "llava_v1/yollava-1".into(),
//!     provenance: None,
//!     user_facts: vec!["<bo>'s birthday is May 3".into()],
//!     relations: vec![],
//!     license: "CC-BY-4.0".into(),
//!     created: "2025-05-03T12:00:00Z".into(),
//!     body_sha256: String::new(), // filled in by ConceptPackage::new
//!     ext: Default::default(),
//! };
//! let package = ConceptPackage::new(manifest, tensors)?;
//! let bytes = package.to_bytes();
//! let parsed = ConceptPackage::parse(&bytes)?;
//! assert_eq!(parsed, package);
//! assert_eq!(parsed.to_bytes(), bytes);
//! assert_eq!(parsed.tensors().latent_row(1)[0], 1.0);
//! # Ok::<(), concept_format::FormatError>(())
//! ```
#![warn(missing_docs)]

mod error;
mod manifest;
mod package;
mod tensors;

pub use error::FormatError;
pub use manifest::{
    Category, DType, ImageCounts, Manifest, ModelFingerprint, Provenance, Relation, MAX_RELATIONS,
    MAX_USER_FACTS,
};
pub use package::{ConceptPackage, PREAMBLE_LEN};
pub use tensors::{ConceptTensors, TensorStats};

/// The eight bytes every `.ycpt` file starts with (PNG-style: a high byte, the
/// ASCII tag, then CR LF and SUB to catch text-mode mangling)
pub const MAGIC: [u8; 8] = *b"\x89YCPT\r\n\x1a";
/// Major format version this crate reads and writes
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version this crate writes
pub const FORMAT_MINOR: u16 = 0;
/// Largest file accepted, in bytes (64 MiB)
pub const MAX_FILE_LEN: u64 = 64 * 1024 * 1024;
/// Largest manifest accepted, in bytes (64 KiB)
pub const MAX_MANIFEST_LEN: u32 = 64 * 1024;
/// Largest safetensors JSON header accepted, in bytes
pub const MAX_BODY_HEADER_LEN: u64 = 4096;
/// Largest number of latent tokens `k`
pub const MAX_K: u32 = 256;
/// Largest embedding width `d` (and `base_model.hidden_size`)
pub const MAX_D: u32 = 16384;
/// Largest `base_model.vocab_size`
pub const MAX_VOCAB: u64 = 1 << 24;

/// Reads the `(major, minor)` version of a `.ycpt` byte stream
///
/// Checks only that the magic is present; it does not reject an unsupported
/// major, so tools can report what a file claims to be.
pub fn peek_version(bytes: &[u8]) -> Result<(u16, u16), FormatError> {
    let len = bytes.len() as u64;
    let Some(magic) = bytes.get(..8) else {
        return Err(FormatError::Truncated {
            what: "magic",
            expected: 8,
            found: len,
        });
    };
    if magic != MAGIC {
        return Err(FormatError::BadMagic {
            expected: MAGIC.escape_ascii().to_string(),
            found: magic.escape_ascii().to_string(),
        });
    }
    let Some(version) = bytes.get(8..12) else {
        return Err(FormatError::Truncated {
            what: "version",
            expected: 12,
            found: len,
        });
    };
    Ok((
        u16::from_le_bytes([version[0], version[1]]),
        u16::from_le_bytes([version[2], version[3]]),
    ))
}

/// What `concepts migrate` does: rewrites a v1.x file (x <= current) as the current minor
///
/// Fully validates the input first. Refuses a newer minor (that would drop
/// fields this reader does not know) and any other major. The result is the
/// canonical encoding, so migrating a current-minor canonical file returns
/// the same bytes.
pub fn migrate(bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let (major, minor) = peek_version(bytes)?;
    if major == FORMAT_MAJOR && minor > FORMAT_MINOR {
        return Err(FormatError::MigrateFromNewer {
            major,
            found_minor: minor,
            current_minor: FORMAT_MINOR,
        });
    }
    Ok(ConceptPackage::parse(bytes)?.to_bytes())
}
