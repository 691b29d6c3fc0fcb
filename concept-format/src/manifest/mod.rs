//! The TOML manifest: typed fields (the schema), reading, canonical writing, validation
//!
//! The structs below are the one definition of the manifest's fields: their serde derive is
//! what [`read`] walks to extract a file (and to find keys it does not define) and what
//! [`write`] lays out as canonical text. [`rules`] holds the value rules.

mod read;
mod rules;
mod write;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};
use toml::Value;

use crate::error::quote;
use crate::{FormatError, FORMAT_MAJOR, FORMAT_MINOR, MAX_MANIFEST_LEN};
use rules::{
    check_dimension, check_ext_floats, check_float, check_identifier, check_name, check_rfc3339,
    check_sha256, check_text, check_token, is_slug,
};

/// Element type of the three stored tensors
///
/// Serialized lowercase in the manifest (`"f32"`); the safetensors body spells
/// it uppercase (`"F32"`, see [`DType::safetensors_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 binary32
    F32,
    /// IEEE 754 binary16
    F16,
    /// bfloat16 (the top 16 bits of a binary32)
    BF16,
}

impl DType {
    /// All dtypes, in manifest order
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The manifest spelling: `f32`, `f16`, `bf16`
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The safetensors header spelling: `F32`, `F16`, `BF16`
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    pub(crate) fn from_safetensors_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.safetensors_name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| FormatError::UnknownDType {
                field: "manifest field `dtype`".to_owned(),
                expected: "f32, f16, bf16",
                found: quote(s),
            })
    }
}

/// What kind of subject a concept is
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// A person
    Person,
    /// A pet or other animal
    Pet,
    /// A thing
    Object,
    /// A place or building
    Landmark,
    /// A fictional character
    Character,
    /// Anything else
    Other,
}

impl Category {
    /// All categories, in spec order
    pub const ALL: [Category; 6] = [
        Category::Person,
        Category::Pet,
        Category::Object,
        Category::Landmark,
        Category::Character,
        Category::Other,
    ];

    /// The manifest spelling, e.g. `pet`
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Person => "person",
            Category::Pet => "pet",
            Category::Object => "object",
            Category::Landmark => "landmark",
            Category::Character => "character",
            Category::Other => "other",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| FormatError::UnknownCategory { found: quote(s) })
    }
}

/// Identity of the base model a concept was trained against
///
/// A runtime compares this with the loaded model before it injects a concept,
/// so a concept is never silently used with the wrong embeddings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    /// Architecture id, e.g. `llava-hf/llava-1.5-7b-hf`
    pub architecture: String,
    /// Hidden size of the language model; equals the concept's `d`
    pub hidden_size: u64,
    /// Vocabulary size of the base tokenizer (before concept tokens are added)
    pub vocab_size: u64,
    /// Lowercase hex SHA-256 of the tokenizer file
    pub tokenizer_sha256: String,
    /// Lowercase hex SHA-256 of the input-embedding weights
    pub embed_sha256: String,
    /// Lowercase hex SHA-256 of the LM-head weights
    pub lm_head_sha256: String,
}

/// How many images of each kind training used
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCounts {
    /// Images of the subject
    pub positives: u32,
    /// Retrieved look-alikes used as negatives
    pub hard_negatives: u32,
    /// Random unrelated images used as negatives
    pub easy_negatives: u32,
}

/// How a concept was trained; absent for imported or hand-packed concepts
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Trainer id, e.g. `concepts-train`
    pub trainer: String,
    /// Trainer version, e.g. `0.1.0`
    pub trainer_version: String,
    /// Training epochs
    pub epochs: u32,
    /// Finite and positive
    pub learning_rate: f64,
    /// Images used
    pub images: ImageCounts,
    /// At most `i64::MAX` (TOML integers are signed 64-bit)
    #[serde(serialize_with = "serialize_seed")]
    pub seed: u64,
    /// Finite, in `0.0..=1.0`
    pub train_accuracy: f64,
    /// Finite, at least zero
    pub wall_time_secs: f64,
}

/// A typed link to another concept, e.g. `owner` -> `<T>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    /// 1 to 64 characters from `a-z`, `0-9`, `_`, `-`
    pub relation: String,
    /// The other concept's identifier text, e.g. `<T>`
    pub target: String,
}

/// The TOML manifest of a concept package
///
/// Field rules are in `spec/ycpt-v1.md`; [`Manifest::validate`] checks all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// File-system-safe name: 1 to 64 characters from `a-z`, `0-9`, `_`, `-`
    pub name: String,
    /// Identifier text used in prompts, e.g. `<bo>`
    pub identifier: String,
    /// Human-readable name, e.g. `Bo`
    pub display_name: String,
    /// What kind of subject this is
    pub category: Category,
    /// Number of latent soft tokens
    pub k: u32,
    /// Embedding width; equals `base_model.hidden_size`
    pub d: u32,
    /// Element type of all three tensors
    pub dtype: DType,
    /// Prompt-template id, e.g. `llava_v1/yollava-1`
    pub prompt_template: String,
    /// License of the concept, e.g. an SPDX id
    pub license: String,
    /// Creation time, RFC 3339
    pub created: String,
    /// Lowercase hex SHA-256 of the tensor body; [`crate::ConceptPackage::new`] fills it
    pub body_sha256: String,
    /// Free-text facts, e.g. `<bo>'s birthday is May 3`
    #[serde(default)]
    pub user_facts: Vec<String>,
    /// The base model the tensors belong to
    pub base_model: ModelFingerprint,
    /// Training provenance; `None` for imported or hand-packed concepts
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// Links to other concepts
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relations: Vec<Relation>,
    /// The reserved extension table `[ext]`: never interpreted, always preserved
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub ext: toml::Table,
}

/// TOML integers are signed 64-bit: a seed above `i64::MAX` (which [`Manifest::validate`]
/// rejects) is written as a string, so writing never fails and reading it back names the field
fn serialize_seed<S: Serializer>(seed: &u64, s: S) -> Result<S::Ok, S::Error> {
    match i64::try_from(*seed) {
        Ok(i) => s.serialize_i64(i),
        Err(_) => s.serialize_str(&seed.to_string()),
    }
}

/// Most entries in `user_facts`
pub const MAX_USER_FACTS: usize = 64;
/// Most entries in `relations`
pub const MAX_RELATIONS: usize = 64;

impl Manifest {
    /// Parses and validates a manifest as format version [`FORMAT_MAJOR`].[`FORMAT_MINOR`]
    ///
    /// Keys outside `[ext]` that this version does not define are rejected.
    pub fn from_toml_str(s: &str) -> Result<Manifest, FormatError> {
        Manifest::from_toml_str_for_minor(s, FORMAT_MINOR)
    }

    /// Parses and validates a manifest read from a file of minor version `minor`
    ///
    /// For `minor <= FORMAT_MINOR` unknown keys outside `[ext]` are an error;
    /// for a newer minor they are ignored (and dropped on rewrite).
    pub fn from_toml_str_for_minor(s: &str, minor: u16) -> Result<Manifest, FormatError> {
        let table: toml::Table =
            s.parse()
                .map_err(|e: toml::de::Error| FormatError::ManifestSyntax {
                    message: e.message().trim_end_matches('.').to_owned()
                        + &e.span()
                            .map(|r| format!(" at manifest bytes {}..{}", r.start, r.end))
                            .unwrap_or_default(),
                })?;
        let table = Value::Table(table);
        // A newer minor may define keys this reader does not know: they are ignored.
        let newer_minor = minor > FORMAT_MINOR;
        if !newer_minor {
            if let Some(field) = read::unknown_keys::<Manifest>(&table).into_iter().min() {
                return Err(FormatError::UnknownField {
                    field,
                    major: FORMAT_MAJOR,
                    minor,
                });
            }
        }
        let manifest: Manifest = read::extract(&table)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The canonical TOML text of this manifest
    ///
    /// Deterministic: fields in spec order, one table per section, `[ext]` last.
    /// For a manifest that passes [`Manifest::validate`],
    /// `from_toml_str(&m.to_toml_string()) == Ok(m)`.
    pub fn to_toml_string(&self) -> String {
        match Value::try_from(self) {
            Ok(Value::Table(table)) => write::canonical_text(&table),
            // Every field is a string, a number, a list or a table of them (the seed is kept in
            // TOML's range by `serialize_seed`), so serde's TOML serializer has nothing to refuse.
            other => unreachable!("a manifest serializes to a TOML table, got {other:?}"),
        }
    }

    /// Checks every field rule of `spec/ycpt-v1.md`, in spec order
    pub fn validate(&self) -> Result<(), FormatError> {
        check_name(&self.name)?;
        check_identifier("identifier", &self.identifier)?;
        check_text("display_name", &self.display_name, 128)?;
        check_dimension("k", u64::from(self.k))?;
        check_dimension("d", u64::from(self.d))?;

        let b = &self.base_model;
        check_token("base_model.architecture", &b.architecture)?;
        check_dimension("base_model.hidden_size", b.hidden_size)?;
        check_dimension("base_model.vocab_size", b.vocab_size)?;
        check_sha256("base_model.tokenizer_sha256", &b.tokenizer_sha256)?;
        check_sha256("base_model.embed_sha256", &b.embed_sha256)?;
        check_sha256("base_model.lm_head_sha256", &b.lm_head_sha256)?;
        if u64::from(self.d) != b.hidden_size {
            return Err(FormatError::HiddenSizeMismatch {
                d: u64::from(self.d),
                hidden_size: b.hidden_size,
            });
        }

        check_token("prompt_template", &self.prompt_template)?;

        if let Some(p) = &self.provenance {
            check_text("provenance.trainer", &p.trainer, 128)?;
            check_text("provenance.trainer_version", &p.trainer_version, 64)?;
            check_float(
                "provenance.learning_rate",
                p.learning_rate,
                "a finite number greater than 0",
                |x| x > 0.0,
            )?;
            if p.seed > i64::MAX as u64 {
                return Err(FormatError::InvalidField {
                    field: "provenance.seed".to_owned(),
                    expected: format!("an integer in 0..={}", i64::MAX),
                    found: p.seed.to_string(),
                });
            }
            check_float(
                "provenance.train_accuracy",
                p.train_accuracy,
                "a finite number in 0.0..=1.0",
                |x| (0.0..=1.0).contains(&x),
            )?;
            check_float(
                "provenance.wall_time_secs",
                p.wall_time_secs,
                "a finite number at least 0",
                |x| x >= 0.0,
            )?;
        }

        if self.user_facts.len() > MAX_USER_FACTS {
            return Err(FormatError::InvalidField {
                field: "user_facts".to_owned(),
                expected: format!("at most {MAX_USER_FACTS} facts"),
                found: format!("{} facts", self.user_facts.len()),
            });
        }
        for (i, fact) in self.user_facts.iter().enumerate() {
            check_text(&format!("user_facts[{i}]"), fact, 512)?;
        }

        if self.relations.len() > MAX_RELATIONS {
            return Err(FormatError::InvalidField {
                field: "relations".to_owned(),
                expected: format!("at most {MAX_RELATIONS} relations"),
                found: format!("{} relations", self.relations.len()),
            });
        }
        for (i, r) in self.relations.iter().enumerate() {
            if !is_slug(&r.relation, |c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
            }) {
                return Err(FormatError::InvalidField {
                    field: format!("relations[{i}].relation"),
                    expected: "1 to 64 characters from `a-z`, `0-9`, `_`, `-`".to_owned(),
                    found: quote(&r.relation),
                });
            }
            check_identifier(&format!("relations[{i}].target"), &r.target)?;
        }

        check_text("license", &self.license, 128)?;
        check_rfc3339("created", &self.created)?;
        check_sha256("body_sha256", &self.body_sha256)?;
        check_ext_floats("ext", &Value::Table(self.ext.clone()))?;

        let len = self.to_toml_string().len() as u64;
        if len > u64::from(MAX_MANIFEST_LEN) {
            return Err(FormatError::ManifestTooLarge {
                limit: u64::from(MAX_MANIFEST_LEN),
                found: len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_and_dtype_parse_their_display_form() {
        for c in Category::ALL {
            assert_eq!(c.to_string().parse::<Category>().unwrap(), c);
        }
        for d in DType::ALL {
            assert_eq!(d.to_string().parse::<DType>().unwrap(), d);
            assert_eq!(DType::from_safetensors_name(d.safetensors_name()), Some(d));
        }
        assert_eq!(
            "dog".parse::<Category>().unwrap_err().kind(),
            "UnknownCategory"
        );
        assert_eq!("F32".parse::<DType>().unwrap_err().kind(), "UnknownDType");
    }
}
