//! Base-model compatibility: does a concept trained against one model fingerprint fit another?

use std::fmt;

use concept_format::ModelFingerprint;

/// Whether a differing field changes tensor shapes (never overridable) or only weights (overridable
/// with `force`: the concept loads, but was trained against other weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MismatchKind {
    /// Architecture, hidden size or vocabulary size differ.
    Dimension,
    /// Tokenizer, embedding or LM-head hashes differ.
    Hash,
}

/// One field on which two fingerprints differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMismatch {
    /// Field name as in the manifest (`hidden_size`, `tokenizer_sha256`, ...).
    pub field: &'static str,
    /// The value the concept package expects.
    pub expected: String,
    /// The value the model has.
    pub actual: String,
    /// Whether `force` may override it.
    pub kind: MismatchKind,
}

impl fmt::Display for FieldMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} expected `{}` found `{}`",
            self.field, self.expected, self.actual
        )
    }
}

/// The result of a successful [`check_compatibility`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compatibility {
    /// Every field matches.
    Exact,
    /// Only hashes differ and `force` was set; these are the overridden differences.
    Forced(Vec<FieldMismatch>),
}

/// The error of a failed [`check_compatibility`]: every differing field, expected and actual.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct BaseModelMismatch {
    mismatches: Vec<FieldMismatch>,
}

impl BaseModelMismatch {
    /// Every differing field, in manifest order. Never empty.
    pub fn mismatches(&self) -> &[FieldMismatch] {
        &self.mismatches
    }

    /// True when some dimension differs, so that `force` cannot help.
    pub fn is_dimension_mismatch(&self) -> bool {
        self.mismatches
            .iter()
            .any(|m| m.kind == MismatchKind::Dimension)
    }
}

impl fmt::Display for BaseModelMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("base model mismatch: ")?;
        for (i, m) in self.mismatches.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{m}")?;
        }
        if self.is_dimension_mismatch() {
            f.write_str(" (dimensions differ; force cannot override this)")
        } else {
            f.write_str(" (only hashes differ; force overrides this)")
        }
    }
}

/// Checks that a concept trained against `expected` (the package's `base_model`) fits a model with
/// fingerprint `actual`.
///
/// Architecture, hidden size and vocabulary size must always match. Tokenizer, embedding and LM-head
/// hashes must match unless `force` is set, in which case the differences are returned in
/// [`Compatibility::Forced`] so the caller can warn about them.
///
/// ```
/// use concept_format::ModelFingerprint;
/// use concept_registry::{check_compatibility, Compatibility};
///
/// let package = ModelFingerprint {
///     architecture: "llava".into(),
///     hidden_size: 4096,
///     vocab_size: 32064,
///     tokenizer_sha256: "a".repeat(64),
///     embed_sha256: "b".repeat(64),
///     lm_head_sha256: "c".repeat(64),
/// };
/// let mut model = package.clone();
/// assert_eq!(check_compatibility(&package, &model, false)?, Compatibility::Exact);
///
/// model.embed_sha256 = "d".repeat(64);
/// assert!(check_compatibility(&package, &model, false).is_err());
/// assert!(matches!(check_compatibility(&package, &model, true)?, Compatibility::Forced(_)));
///
/// model.hidden_size = 2048;
/// let err = check_compatibility(&package, &model, true).unwrap_err();
/// assert!(err.to_string().contains("hidden_size expected `4096` found `2048`"));
/// # Ok::<(), concept_registry::RegistryError>(())
/// ```
pub fn check_compatibility(
    expected: &ModelFingerprint,
    actual: &ModelFingerprint,
    force: bool,
) -> Result<Compatibility, crate::RegistryError> {
    check(expected, actual, force).map_err(Into::into)
}

/// [`check_compatibility`] with the bare mismatch as error, for callers that wrap it.
pub(crate) fn check(
    expected: &ModelFingerprint,
    actual: &ModelFingerprint,
    force: bool,
) -> Result<Compatibility, BaseModelMismatch> {
    let mut mismatches = Vec::new();
    let mut field = |field: &'static str, kind, expected: String, actual: String| {
        if expected != actual {
            mismatches.push(FieldMismatch {
                field,
                expected,
                actual,
                kind,
            });
        }
    };
    use MismatchKind::{Dimension, Hash};
    field(
        "architecture",
        Dimension,
        expected.architecture.clone(),
        actual.architecture.clone(),
    );
    field(
        "hidden_size",
        Dimension,
        expected.hidden_size.to_string(),
        actual.hidden_size.to_string(),
    );
    field(
        "vocab_size",
        Dimension,
        expected.vocab_size.to_string(),
        actual.vocab_size.to_string(),
    );
    field(
        "tokenizer_sha256",
        Hash,
        expected.tokenizer_sha256.clone(),
        actual.tokenizer_sha256.clone(),
    );
    field(
        "embed_sha256",
        Hash,
        expected.embed_sha256.clone(),
        actual.embed_sha256.clone(),
    );
    field(
        "lm_head_sha256",
        Hash,
        expected.lm_head_sha256.clone(),
        actual.lm_head_sha256.clone(),
    );

    if mismatches.is_empty() {
        return Ok(Compatibility::Exact);
    }
    let mismatch = BaseModelMismatch { mismatches };
    if force && !mismatch.is_dimension_mismatch() {
        Ok(Compatibility::Forced(mismatch.mismatches))
    } else {
        Err(mismatch)
    }
}
