//! Content digests: the names of the registry's blobs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A string is not a sha256 digest (64 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest `{found}` is not 64 lowercase hex digits")]
pub struct InvalidDigest {
    /// The rejected string.
    pub found: String,
}

/// A sha256 digest: always 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(concepts_fs::sha256_hex(bytes))
    }

    /// Parses 64 lowercase hex digits.
    pub fn parse(hex: &str) -> Result<Digest, InvalidDigest> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(Digest(hex.to_owned()))
        } else {
            Err(InvalidDigest {
                found: hex.to_owned(),
            })
        }
    }

    /// The 64 hex digits.
    pub fn as_hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = InvalidDigest;
    fn try_from(s: String) -> Result<Digest, InvalidDigest> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}
