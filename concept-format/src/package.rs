//! The container: magic, version, length-prefixed manifest, tensor body

use std::fs::File;
use std::io::Read;
use std::path::Path;

use concepts_fs::sha256_hex;

use crate::tensors::{parse_body, Expected};
use crate::{
    peek_version, ConceptTensors, FormatError, Manifest, FORMAT_MAJOR, FORMAT_MINOR, MAGIC,
    MAX_FILE_LEN, MAX_MANIFEST_LEN,
};

/// Bytes before the manifest: magic (8), major (2), minor (2), manifest length (4)
pub const PREAMBLE_LEN: usize = 16;

/// A validated concept package: a manifest and tensors that agree with it
///
/// Invariants: the manifest passes [`Manifest::validate`], its `k`, `d` and
/// `dtype` equal the tensors', and its `body_sha256` is the SHA-256 of
/// [`ConceptTensors::safetensors_bytes`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptPackage {
    manifest: Manifest,
    tensors: ConceptTensors,
}

impl ConceptPackage {
    /// Joins a manifest and tensors, filling `manifest.body_sha256`
    ///
    /// Validates the manifest, then checks that its `k`, `d` and `dtype`
    /// match the tensors.
    pub fn new(mut manifest: Manifest, tensors: ConceptTensors) -> Result<Self, FormatError> {
        manifest.body_sha256 = sha256_hex(tensors.safetensors_bytes());
        manifest.validate()?;
        let pairs = [
            ("k", manifest.k.to_string(), tensors.k().to_string()),
            ("d", manifest.d.to_string(), tensors.d().to_string()),
            (
                "dtype",
                manifest.dtype.to_string(),
                tensors.dtype().to_string(),
            ),
        ];
        for (field, in_manifest, in_tensors) in pairs {
            if in_manifest != in_tensors {
                return Err(FormatError::ManifestTensorMismatch {
                    field,
                    expected: in_tensors,
                    found: in_manifest,
                });
            }
        }
        Ok(ConceptPackage { manifest, tensors })
    }

    /// Parses and fully validates a `.ycpt` byte stream
    ///
    /// Checks run in the order of `spec/ycpt-v1.md` §validation; the first
    /// failure is returned. Never panics, whatever the input.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let len = bytes.len() as u64;
        if len > MAX_FILE_LEN {
            return Err(FormatError::FileTooLarge {
                limit: MAX_FILE_LEN,
                found: len,
            });
        }
        let (major, minor) = peek_version(bytes)?;
        if major != FORMAT_MAJOR {
            return Err(FormatError::UnsupportedMajor {
                expected_major: FORMAT_MAJOR,
                found_major: major,
                found_minor: minor,
            });
        }
        let Some(len_bytes) = bytes.get(12..PREAMBLE_LEN) else {
            return Err(FormatError::Truncated {
                what: "manifest length",
                expected: PREAMBLE_LEN as u64,
                found: len,
            });
        };
        let manifest_len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        if manifest_len > MAX_MANIFEST_LEN {
            return Err(FormatError::ManifestTooLarge {
                limit: u64::from(MAX_MANIFEST_LEN),
                found: u64::from(manifest_len),
            });
        }
        // manifest_len <= 64 KiB, so this cannot overflow.
        let manifest_end = PREAMBLE_LEN + manifest_len as usize;
        let Some(manifest_bytes) = bytes.get(PREAMBLE_LEN..manifest_end) else {
            return Err(FormatError::Truncated {
                what: "manifest",
                expected: manifest_end as u64,
                found: len,
            });
        };
        let text =
            std::str::from_utf8(manifest_bytes).map_err(|e| FormatError::ManifestNotUtf8 {
                offset: e.valid_up_to(),
            })?;
        let manifest = Manifest::from_toml_str_for_minor(text, minor)?;

        let body = &bytes[manifest_end..];
        let found = sha256_hex(body);
        if found != manifest.body_sha256 {
            return Err(FormatError::BodyHashMismatch {
                expected: manifest.body_sha256,
                found,
            });
        }
        let tensors = parse_body(
            body,
            Some(Expected {
                dtype: manifest.dtype,
                k: u64::from(manifest.k),
                d: u64::from(manifest.d),
            }),
        )?;
        Ok(ConceptPackage { manifest, tensors })
    }

    /// The canonical bytes of this package, always at the current minor version
    ///
    /// Deterministic: `parse(&p.to_bytes()) == Ok(p)`, and for a file written by
    /// this function `parse(b)?.to_bytes() == b`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let manifest = self.manifest.to_toml_string();
        let body = self.tensors.safetensors_bytes();
        let mut out = Vec::with_capacity(PREAMBLE_LEN + manifest.len() + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
        out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
        // `validate` bounds the canonical manifest by MAX_MANIFEST_LEN, which fits a u32.
        out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        out.extend_from_slice(manifest.as_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Reads and parses a file, refusing files over [`MAX_FILE_LEN`] before reading them
    pub fn read_file(path: &Path) -> Result<Self, FormatError> {
        let io = |source| FormatError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > MAX_FILE_LEN {
            return Err(FormatError::FileTooLarge {
                limit: MAX_FILE_LEN,
                found: size,
            });
        }
        // The file may grow between stat and read: read at most one byte past the cap.
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        ConceptPackage::parse(&bytes)
    }

    /// Writes the package so that `path` holds either the old file or the whole new one
    ///
    /// Writes a temporary file in the same directory, fsyncs it, renames it over
    /// `path`, then fsyncs the directory (on Unix); see [`concepts_fs::write_atomic`]. The
    /// temporary file is removed on failure, an existing file keeps its mode, and a path
    /// that is a device, FIFO, folder or symbolic link is refused before anything is written.
    pub fn write_file_atomic(&self, path: &Path) -> Result<(), FormatError> {
        concepts_fs::write_atomic(path, &self.to_bytes()).map_err(|e| match e {
            concepts_fs::FsError::Io { path, source, .. } => FormatError::Io { path, source },
            other => FormatError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, other.to_string()),
            },
        })
    }

    /// The validated manifest
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The tensors
    pub fn tensors(&self) -> &ConceptTensors {
        &self.tensors
    }

    /// Splits the package into its manifest and tensors
    pub fn into_parts(self) -> (Manifest, ConceptTensors) {
        (self.manifest, self.tensors)
    }
}
