//! The TOML manifest: typed fields, reading, canonical writing, validation

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use toml::Value;

use crate::error::quote;
use crate::{FormatError, FORMAT_MAJOR, FORMAT_MINOR, MAX_D, MAX_K, MAX_MANIFEST_LEN, MAX_VOCAB};

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
    /// The base model the tensors belong to
    pub base_model: ModelFingerprint,
    /// Prompt-template id, e.g. `llava_v1/yollava-1`
    pub prompt_template: String,
    /// Training provenance; `None` for imported or hand-packed concepts
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// Free-text facts, e.g. `<bo>'s birthday is May 3`
    #[serde(default)]
    pub user_facts: Vec<String>,
    /// Links to other concepts
    #[serde(default)]
    pub relations: Vec<Relation>,
    /// License of the concept, e.g. an SPDX id
    pub license: String,
    /// Creation time, RFC 3339
    pub created: String,
    /// Lowercase hex SHA-256 of the tensor body; [`crate::ConceptPackage::new`] fills it
    pub body_sha256: String,
    /// The reserved extension table `[ext]`: never interpreted, always preserved
    #[serde(default)]
    pub ext: toml::Table,
}

const TOP_KEYS: &[&str] = &[
    "name",
    "identifier",
    "display_name",
    "category",
    "k",
    "d",
    "dtype",
    "prompt_template",
    "license",
    "created",
    "body_sha256",
    "user_facts",
    "base_model",
    "provenance",
    "relations",
    "ext",
];
const BASE_MODEL_KEYS: &[&str] = &[
    "architecture",
    "hidden_size",
    "vocab_size",
    "tokenizer_sha256",
    "embed_sha256",
    "lm_head_sha256",
];
const PROVENANCE_KEYS: &[&str] = &[
    "trainer",
    "trainer_version",
    "epochs",
    "learning_rate",
    "images",
    "seed",
    "train_accuracy",
    "wall_time_secs",
];
const IMAGES_KEYS: &[&str] = &["positives", "hard_negatives", "easy_negatives"];
const RELATION_KEYS: &[&str] = &["relation", "target"];

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
        let newer_minor = minor > FORMAT_MINOR;
        if !newer_minor {
            check_unknown_keys(&table, minor)?;
        }
        let manifest = extract(&table)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The canonical TOML text of this manifest
    ///
    /// Deterministic: fields in spec order, one table per section, `[ext]` last.
    /// For a manifest that passes [`Manifest::validate`],
    /// `from_toml_str(&m.to_toml_string()) == Ok(m)`.
    pub fn to_toml_string(&self) -> String {
        let mut out = String::new();
        let mut kv = |key: &str, value: String| {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(&value);
            out.push('\n');
        };
        kv("name", toml_string(&self.name));
        kv("identifier", toml_string(&self.identifier));
        kv("display_name", toml_string(&self.display_name));
        kv("category", toml_string(self.category.as_str()));
        kv("k", self.k.to_string());
        kv("d", self.d.to_string());
        kv("dtype", toml_string(self.dtype.as_str()));
        kv("prompt_template", toml_string(&self.prompt_template));
        kv("license", toml_string(&self.license));
        kv("created", toml_string(&self.created));
        kv("body_sha256", toml_string(&self.body_sha256));
        if self.user_facts.is_empty() {
            kv("user_facts", "[]".to_owned());
        } else {
            let mut list = String::from("[\n");
            for fact in &self.user_facts {
                list.push_str("    ");
                list.push_str(&toml_string(fact));
                list.push_str(",\n");
            }
            list.push(']');
            kv("user_facts", list);
        }

        let b = &self.base_model;
        out.push_str("\n[base_model]\n");
        let mut kv = |key: &str, value: String| {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(&value);
            out.push('\n');
        };
        kv("architecture", toml_string(&b.architecture));
        kv("hidden_size", b.hidden_size.to_string());
        kv("vocab_size", b.vocab_size.to_string());
        kv("tokenizer_sha256", toml_string(&b.tokenizer_sha256));
        kv("embed_sha256", toml_string(&b.embed_sha256));
        kv("lm_head_sha256", toml_string(&b.lm_head_sha256));

        if let Some(p) = &self.provenance {
            out.push_str("\n[provenance]\n");
            let mut kv = |key: &str, value: String| {
                out.push_str(key);
                out.push_str(" = ");
                out.push_str(&value);
                out.push('\n');
            };
            kv("trainer", toml_string(&p.trainer));
            kv("trainer_version", toml_string(&p.trainer_version));
            kv("epochs", p.epochs.to_string());
            kv("learning_rate", toml_float(p.learning_rate));
            kv("seed", p.seed.to_string());
            kv("train_accuracy", toml_float(p.train_accuracy));
            kv("wall_time_secs", toml_float(p.wall_time_secs));
            out.push_str("\n[provenance.images]\n");
            out.push_str(&format!(
                "positives = {}\nhard_negatives = {}\neasy_negatives = {}\n",
                p.images.positives, p.images.hard_negatives, p.images.easy_negatives
            ));
        }

        for r in &self.relations {
            out.push_str("\n[[relations]]\n");
            out.push_str(&format!(
                "relation = {}\ntarget = {}\n",
                toml_string(&r.relation),
                toml_string(&r.target)
            ));
        }

        if !self.ext.is_empty() {
            let mut wrapper = toml::Table::new();
            wrapper.insert("ext".to_owned(), sorted(&Value::Table(self.ext.clone())));
            // Serializing a table of plain TOML values cannot fail.
            let text = toml::to_string(&wrapper).unwrap_or_default();
            out.push('\n');
            out.push_str(&text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// Checks every field rule of `spec/ycpt-v1.md`, in spec order
    pub fn validate(&self) -> Result<(), FormatError> {
        check_name(&self.name)?;
        check_identifier("identifier", &self.identifier)?;
        check_text("display_name", &self.display_name, 128)?;
        check_dim("manifest field `k`", u64::from(self.k), u64::from(MAX_K))?;
        check_dim("manifest field `d`", u64::from(self.d), u64::from(MAX_D))?;

        let b = &self.base_model;
        check_token("base_model.architecture", &b.architecture)?;
        check_dim(
            "manifest field `base_model.hidden_size`",
            b.hidden_size,
            u64::from(MAX_D),
        )?;
        check_dim(
            "manifest field `base_model.vocab_size`",
            b.vocab_size,
            MAX_VOCAB,
        )?;
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

// --- reading ---------------------------------------------------------------

fn check_unknown_keys(top: &toml::Table, minor: u16) -> Result<(), FormatError> {
    let mut unknown = Vec::new();
    collect_unknown(top, TOP_KEYS, "", &mut unknown);
    if let Some(Value::Table(t)) = top.get("base_model") {
        collect_unknown(t, BASE_MODEL_KEYS, "base_model.", &mut unknown);
    }
    if let Some(Value::Table(t)) = top.get("provenance") {
        collect_unknown(t, PROVENANCE_KEYS, "provenance.", &mut unknown);
        if let Some(Value::Table(images)) = t.get("images") {
            collect_unknown(images, IMAGES_KEYS, "provenance.images.", &mut unknown);
        }
    }
    if let Some(Value::Array(list)) = top.get("relations") {
        for (i, item) in list.iter().enumerate() {
            if let Value::Table(t) = item {
                collect_unknown(t, RELATION_KEYS, &format!("relations[{i}]."), &mut unknown);
            }
        }
    }
    unknown.sort();
    match unknown.into_iter().next() {
        Some(field) => Err(FormatError::UnknownField {
            field,
            major: FORMAT_MAJOR,
            minor,
        }),
        None => Ok(()),
    }
}

fn collect_unknown(table: &toml::Table, known: &[&str], prefix: &str, out: &mut Vec<String>) {
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            out.push(format!("{prefix}{}", key.escape_debug()));
        }
    }
}

/// Typed access to one TOML table, naming fields by their dotted path
struct Fields<'a> {
    table: &'a toml::Table,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Result<&'a Value, FormatError> {
        self.table
            .get(key)
            .ok_or_else(|| FormatError::MissingField {
                field: self.path(key),
            })
    }

    fn string(&self, key: &str) -> Result<String, FormatError> {
        match self.get(key)? {
            Value::String(s) => Ok(s.clone()),
            v => Err(type_error(self.path(key), "string", v)),
        }
    }

    fn integer(&self, key: &str) -> Result<i64, FormatError> {
        match self.get(key)? {
            Value::Integer(i) => Ok(*i),
            v => Err(type_error(self.path(key), "integer", v)),
        }
    }

    fn u32(&self, key: &str) -> Result<u32, FormatError> {
        let i = self.integer(key)?;
        u32::try_from(i).map_err(|_| FormatError::InvalidField {
            field: self.path(key),
            expected: format!("an integer in 0..={}", u32::MAX),
            found: i.to_string(),
        })
    }

    fn u64(&self, key: &str) -> Result<u64, FormatError> {
        let i = self.integer(key)?;
        u64::try_from(i).map_err(|_| FormatError::InvalidField {
            field: self.path(key),
            expected: format!("an integer in 0..={}", i64::MAX),
            found: i.to_string(),
        })
    }

    /// A dimension: range errors are [`FormatError::DimensionOutOfRange`]
    fn dim(&self, key: &str, max: u64) -> Result<u64, FormatError> {
        let i = self.integer(key)?;
        u64::try_from(i).map_err(|_| FormatError::DimensionOutOfRange {
            what: format!("manifest field `{}`", self.path(key)),
            min: 1,
            max,
            found: i128::from(i),
        })
    }

    /// A float field; an integer is accepted and converted exactly
    fn float(&self, key: &str) -> Result<f64, FormatError> {
        match self.get(key)? {
            Value::Float(f) => Ok(*f),
            Value::Integer(i) if i.unsigned_abs() <= 1 << 53 => Ok(*i as f64),
            v => Err(type_error(self.path(key), "float", v)),
        }
    }

    fn table(&self, key: &str) -> Result<Fields<'a>, FormatError> {
        match self.get(key)? {
            Value::Table(t) => Ok(Fields {
                table: t,
                prefix: format!("{}{key}.", self.prefix),
            }),
            v => Err(type_error(self.path(key), "table", v)),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }
}

fn type_error(field: String, expected: &'static str, found: &Value) -> FormatError {
    FormatError::FieldType {
        field,
        expected,
        found: found.type_str(),
    }
}

fn extract(table: &toml::Table) -> Result<Manifest, FormatError> {
    let top = Fields {
        table,
        prefix: String::new(),
    };
    let name = top.string("name")?;
    let identifier = top.string("identifier")?;
    let display_name = top.string("display_name")?;
    let category: Category = top.string("category")?.parse()?;
    let k = top.dim("k", u64::from(MAX_K))?;
    let k = u32::try_from(k).map_err(|_| FormatError::DimensionOutOfRange {
        what: "manifest field `k`".to_owned(),
        min: 1,
        max: u64::from(MAX_K),
        found: i128::from(k),
    })?;
    let d = top.dim("d", u64::from(MAX_D))?;
    let d = u32::try_from(d).map_err(|_| FormatError::DimensionOutOfRange {
        what: "manifest field `d`".to_owned(),
        min: 1,
        max: u64::from(MAX_D),
        found: i128::from(d),
    })?;
    let dtype: DType = top.string("dtype")?.parse()?;
    let prompt_template = top.string("prompt_template")?;
    let license = top.string("license")?;
    let created = top.string("created")?;
    let body_sha256 = top.string("body_sha256")?;

    let user_facts = if top.has("user_facts") {
        match top.get("user_facts")? {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(type_error(format!("user_facts[{i}]"), "string", v)),
                })
                .collect::<Result<Vec<_>, _>>()?,
            v => return Err(type_error("user_facts".to_owned(), "array", v)),
        }
    } else {
        Vec::new()
    };

    let b = top.table("base_model")?;
    let base_model = ModelFingerprint {
        architecture: b.string("architecture")?,
        hidden_size: b.dim("hidden_size", u64::from(MAX_D))?,
        vocab_size: b.dim("vocab_size", MAX_VOCAB)?,
        tokenizer_sha256: b.string("tokenizer_sha256")?,
        embed_sha256: b.string("embed_sha256")?,
        lm_head_sha256: b.string("lm_head_sha256")?,
    };

    let provenance = if top.has("provenance") {
        let p = top.table("provenance")?;
        let trainer = p.string("trainer")?;
        let trainer_version = p.string("trainer_version")?;
        let epochs = p.u32("epochs")?;
        let learning_rate = p.float("learning_rate")?;
        let images = p.table("images")?;
        let images = ImageCounts {
            positives: images.u32("positives")?,
            hard_negatives: images.u32("hard_negatives")?,
            easy_negatives: images.u32("easy_negatives")?,
        };
        Some(Provenance {
            trainer,
            trainer_version,
            epochs,
            learning_rate,
            images,
            seed: p.u64("seed")?,
            train_accuracy: p.float("train_accuracy")?,
            wall_time_secs: p.float("wall_time_secs")?,
        })
    } else {
        None
    };

    let relations = if top.has("relations") {
        match top.get("relations")? {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Table(t) => {
                        let r = Fields {
                            table: t,
                            prefix: format!("relations[{i}]."),
                        };
                        Ok(Relation {
                            relation: r.string("relation")?,
                            target: r.string("target")?,
                        })
                    }
                    v => Err(type_error(format!("relations[{i}]"), "table", v)),
                })
                .collect::<Result<Vec<_>, _>>()?,
            v => return Err(type_error("relations".to_owned(), "array", v)),
        }
    } else {
        Vec::new()
    };

    let ext = if top.has("ext") {
        match top.get("ext")? {
            Value::Table(t) => t.clone(),
            v => return Err(type_error("ext".to_owned(), "table", v)),
        }
    } else {
        toml::Table::new()
    };

    Ok(Manifest {
        name,
        identifier,
        display_name,
        category,
        k,
        d,
        dtype,
        base_model,
        prompt_template,
        provenance,
        user_facts,
        relations,
        license,
        created,
        body_sha256,
        ext,
    })
}

// --- field rules -------------------------------------------------------------

fn is_slug(s: &str, allowed: impl Fn(char) -> bool) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(allowed)
}

fn check_name(name: &str) -> Result<(), FormatError> {
    if is_slug(name, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
    }) {
        Ok(())
    } else {
        Err(FormatError::InvalidName { found: quote(name) })
    }
}

/// `<` + 1 to 64 characters from `A-Z a-z 0-9 _ -` + `>`
pub(crate) fn is_identifier(s: &str) -> bool {
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .is_some_and(|inner| is_slug(inner, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

fn check_identifier(field: &str, s: &str) -> Result<(), FormatError> {
    if is_identifier(s) {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: "`<` + 1 to 64 characters from `A-Z`, `a-z`, `0-9`, `_`, `-` + `>`"
                .to_owned(),
            found: quote(s),
        })
    }
}

/// Free text: 1 to `max` characters, no control characters
fn check_text(field: &str, s: &str, max: usize) -> Result<(), FormatError> {
    let count = s.chars().count();
    if count == 0 || count > max || s.chars().any(char::is_control) {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: format!("1 to {max} characters without control characters"),
            found: quote(s),
        })
    } else {
        Ok(())
    }
}

/// An id token: 1 to 128 characters from `A-Z a-z 0-9 . _ / -`
fn check_token(field: &str, s: &str) -> Result<(), FormatError> {
    let ok = (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    if ok {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: "1 to 128 characters from `A-Z`, `a-z`, `0-9`, `.`, `_`, `/`, `-`".to_owned(),
            found: quote(s),
        })
    }
}

fn check_sha256(field: &str, s: &str) -> Result<(), FormatError> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: "64 lowercase hex digits (a sha256)".to_owned(),
            found: quote(s),
        })
    }
}

fn check_dim(what: &str, value: u64, max: u64) -> Result<(), FormatError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(FormatError::DimensionOutOfRange {
            what: what.to_owned(),
            min: 1,
            max,
            found: i128::from(value),
        })
    }
}

fn check_float(
    field: &str,
    x: f64,
    expected: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<(), FormatError> {
    if x.is_finite() && ok(x) {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: expected.to_owned(),
            found: x.to_string(),
        })
    }
}

/// `[ext]` may hold any TOML except non-finite floats (they would break round-trip equality)
fn check_ext_floats(path: &str, v: &Value) -> Result<(), FormatError> {
    match v {
        Value::Float(f) if !f.is_finite() => Err(FormatError::InvalidField {
            field: path.to_owned(),
            expected: "a finite float".to_owned(),
            found: f.to_string(),
        }),
        Value::Table(t) => t
            .iter()
            .try_for_each(|(k, v)| check_ext_floats(&format!("{path}.{}", k.escape_debug()), v)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_ext_floats(&format!("{path}[{i}]"), v)),
        _ => Ok(()),
    }
}

/// Checks an RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`
///
/// `T` and `Z` may be lowercase (RFC 3339 §5.6 note); seconds may be 60 (leap second).
fn check_rfc3339(field: &str, s: &str) -> Result<(), FormatError> {
    rfc3339_error(s).map_or(Ok(()), |reason| {
        Err(FormatError::InvalidTimestamp {
            field: field.to_owned(),
            reason,
            found: quote(s),
        })
    })
}

fn rfc3339_error(s: &str) -> Option<&'static str> {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        if part.iter().all(u8::is_ascii_digit) {
            Some(part.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
        } else {
            None
        }
    };
    if b.len() < 20 {
        return Some("too short");
    }
    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Some("date digits");
    };
    if b[4] != b'-' || b[7] != b'-' {
        return Some("date separators");
    }
    if !(1..=12).contains(&month) {
        return Some("month out of range");
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=days).contains(&day) {
        return Some("day out of range");
    }
    if !matches!(b[10], b'T' | b't') {
        return Some("missing `T` between date and time");
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11..13), digits(14..16), digits(17..19))
    else {
        return Some("time digits");
    };
    if b[13] != b':' || b[16] != b':' {
        return Some("time separators");
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Some("time out of range");
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Some("empty fraction");
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => None,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let all_digits = [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit());
            let h = u32::from(h1.wrapping_sub(b'0')) * 10 + u32::from(h2.wrapping_sub(b'0'));
            let m = u32::from(m1.wrapping_sub(b'0')) * 10 + u32::from(m2.wrapping_sub(b'0'));
            if all_digits && h <= 23 && m <= 59 {
                None
            } else {
                Some("offset out of range")
            }
        }
        _ => Some("missing or malformed offset"),
    }
}

// --- writing ------------------------------------------------------------------

/// A TOML basic string with every character TOML requires escaped
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A copy with every table's keys in sorted order, so the text does not depend
/// on whether `toml` was built with `preserve_order`
fn sorted(v: &Value) -> Value {
    match v {
        Value::Table(t) => {
            let mut keys: Vec<&String> = t.keys().collect();
            keys.sort();
            Value::Table(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&t[k.as_str()])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        v => v.clone(),
    }
}

/// The shortest decimal that reads back as the same `f64`, always TOML-float-shaped
fn toml_float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) || !x.is_finite() {
        s
    } else {
        s + ".0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_accepts_valid_date_times() {
        for ok in [
            "2025-05-03T12:00:00Z",
            "2024-02-29T23:59:60.123456789+05:30",
            "1999-12-31t00:00:00z",
            "2025-05-03T12:00:00-00:00",
        ] {
            assert_eq!(rfc3339_error(ok), None, "{ok}");
        }
    }

    #[test]
    fn rfc3339_rejects_malformed_date_times() {
        for (bad, reason) in [
            ("2025-05-03", "too short"),
            ("2025-05-03 12:00:00Z", "missing `T` between date and time"),
            ("2023-02-29T12:00:00Z", "day out of range"),
            ("2025-13-01T12:00:00Z", "month out of range"),
            ("2025-05-03T24:00:00Z", "time out of range"),
            ("2025-05-03T12:00:00", "too short"),
            ("2025-05-03T12:00:00.Z", "empty fraction"),
            ("2025-05-03T12:00:00+5:30", "missing or malformed offset"),
            ("2025-05-03T12:00:00+24:00", "offset out of range"),
            ("2025/05/03T12:00:00Z", "date separators"),
            ("2025-05-03T12:00:00Zjunk", "missing or malformed offset"),
        ] {
            assert_eq!(rfc3339_error(bad), Some(reason), "{bad}");
        }
    }

    #[test]
    fn toml_string_escapes_round_trip_through_the_toml_parser() {
        let nasty = "quote \" backslash \\ nl \n tab \t cr \r bell \u{7} del \u{7f} é 🐕";
        let doc = format!("x = {}", toml_string(nasty));
        let table: toml::Table = doc.parse().unwrap();
        assert_eq!(table["x"].as_str(), Some(nasty));
    }

    #[test]
    fn toml_float_round_trips_exactly() {
        for x in [
            0.001,
            1.0,
            1e-5,
            1e20,
            123.0,
            -0.0,
            0.1 + 0.2,
            f64::MIN_POSITIVE,
        ] {
            let doc = format!("x = {}", toml_float(x));
            let table: toml::Table = doc.parse().unwrap();
            let back = table["x"].as_float().unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x:?} -> {doc}");
        }
    }

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
