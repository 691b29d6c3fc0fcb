//! concepts-plugin-api: the plain-Rust face of the `concepts:plugin` WIT package.
//!
//! Its one job is to name, once, the data that crosses a plugin boundary: the records of the WIT
//! package in `spec/plugins/wit/` as Rust types, the roles and their worlds, the API version, the
//! training engine a trainer drives ([`TrainingHost`]), and the C ABI of native plugins. Key
//! design choice: both sides of the boundary (the host crate and the plugin SDK) use these types,
//! so a record cannot drift between them; the wasm bindings on either side convert into and out
//! of them field by field.
//!
//! The crate has no dependencies on wasm targets; on native targets it derives `serde` for the JSON
//! that native plugins exchange (see [`native`]).

#![deny(missing_docs)]

pub mod native;
mod training_host;

pub use training_host::{BatchId, EngineError, SnapshotId, TrainingHost};

#[cfg(not(target_arch = "wasm32"))]
use serde::{Deserialize, Serialize};

/// The WIT package name, without version.
pub const WIT_PACKAGE: &str = "concepts:plugin";

/// The newest `concepts:plugin` version these types mirror.
pub const API_VERSION: ApiVersion = ApiVersion::new(0, 1, 0);

/// A semantic version of the `concepts:plugin` WIT package.
///
/// The *line* of a version is what must match between a plugin and a host: the major version, or for
/// `0.y.z` the major and minor version. Within a line the package only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    /// Major version
    pub major: u32,
    /// Minor version
    pub minor: u32,
    /// Patch version
    pub patch: u32,
}

impl ApiVersion {
    /// `major.minor.patch`
    pub const fn new(major: u32, minor: u32, patch: u32) -> ApiVersion {
        ApiVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `major.minor.patch` (no pre-release or build suffix).
    pub fn parse(text: &str) -> Option<ApiVersion> {
        let mut parts = text.split('.');
        let mut next = || -> Option<u32> {
            let part = parts.next()?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let version = ApiVersion::new(next()?, next()?, next()?);
        parts.next().is_none().then_some(version)
    }

    /// Whether `self` and `other` are in the same release line (see the type's docs).
    pub fn same_line(self, other: ApiVersion) -> bool {
        if self.major == 0 || other.major == 0 {
            self.major == other.major && self.minor == other.minor
        } else {
            self.major == other.major
        }
    }

    /// The line as text: `0.1` for `0.1.z`, `1` for `1.y.z`.
    pub fn line(self) -> String {
        if self.major == 0 {
            format!("{}.{}", self.major, self.minor)
        } else {
            self.major.to_string()
        }
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The three replaceable training stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(Serialize, Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Role {
    /// Chooses negative images (world `negative-miner`).
    Miner,
    /// Drives a training job (world `trainer`).
    Trainer,
    /// Validates metadata and links it into text (world `metadata-linker`).
    Linker,
}

impl Role {
    /// All roles, in pipeline order
    pub const ALL: [Role; 3] = [Role::Miner, Role::Trainer, Role::Linker];

    /// `miner`, `trainer` or `linker`
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Miner => "miner",
            Role::Trainer => "trainer",
            Role::Linker => "linker",
        }
    }

    /// The WIT world a wasm plugin of this role targets.
    pub fn world(self) -> &'static str {
        match self {
            Role::Miner => "negative-miner",
            Role::Trainer => "trainer",
            Role::Linker => "metadata-linker",
        }
    }

    /// The role whose world is `world`.
    pub fn from_world(world: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.world() == world)
    }

    /// The interface a wasm plugin of this role exports.
    pub fn export_interface(self) -> &'static str {
        match self {
            Role::Miner => "miner",
            Role::Trainer => "training-policy",
            Role::Linker => "linker",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity of a plugin's log record (`host.log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(Serialize, Deserialize),
    serde(rename_all = "lowercase")
)]
#[allow(missing_docs)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One pool row and its similarity to a query (`embeddings.scored-row`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct ScoredRow {
    /// Row of the pool matrix
    pub row: u32,
    /// Cosine similarity
    pub score: f32,
}

/// What the pipeline asks a miner for (`miner.mining-params`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct MiningParams {
    /// Hard negatives to retrieve per positive image (the paper's m)
    pub hard_per_positive: u32,
    /// Easy (random) negatives to add in total
    pub easy_count: u32,
    /// Seed for every random choice
    pub seed: u64,
}

/// Why a pool image was chosen (`miner.negative-role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(Serialize, Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum NegativeRole {
    /// Similar to a positive
    Hard,
    /// Random, mostly dissimilar
    Easy,
}

impl NegativeRole {
    /// `hard` or `easy`
    pub fn as_str(self) -> &'static str {
        match self {
            NegativeRole::Hard => "hard",
            NegativeRole::Easy => "easy",
        }
    }
}

/// One chosen pool image (`miner.mined-negative`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct MinedNegative {
    /// Row of the pool matrix
    pub pool_row: u32,
    /// Hard or easy
    pub role: NegativeRole,
    /// The plugin's score for the choice
    pub score: f32,
}

/// The sizes of a training job's sample lists (`training-host.sample-counts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct SampleCounts {
    /// Photos of the subject
    pub positives: u32,
    /// Mined hard negatives
    pub hard_negatives: u32,
    /// Mined easy negatives
    pub easy_negatives: u32,
    /// Generated conversations
    pub conversations: u32,
    /// Recognition question templates
    pub recognition_templates: u32,
}

impl SampleCounts {
    /// How many samples of `kind` there are.
    pub fn of(&self, kind: SampleKind) -> u32 {
        match kind {
            SampleKind::Positive => self.positives,
            SampleKind::HardNegative => self.hard_negatives,
            SampleKind::EasyNegative => self.easy_negatives,
            SampleKind::Conversation => self.conversations,
        }
    }
}

/// Which list a sample comes from (`training-host.sample-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(Serialize, Deserialize),
    serde(rename_all = "kebab-case")
)]
#[allow(missing_docs)]
pub enum SampleKind {
    Positive,
    HardNegative,
    EasyNegative,
    Conversation,
}

/// One training example (`training-host.sample-ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct SampleRef {
    /// Which list
    pub kind: SampleKind,
    /// Index within the list
    pub index: u32,
    /// Recognition template; ignored for conversations
    pub template: u32,
}

/// Which images a recognition evaluation uses (`training-host.split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(Serialize, Deserialize),
    serde(rename_all = "lowercase")
)]
#[allow(missing_docs)]
pub enum Split {
    Train,
    Validation,
}

/// Result of a recognition evaluation (`training-host.recognition`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct Recognition {
    /// Fraction of correct answers
    pub accuracy: f32,
    /// Fraction of positives answered "yes"
    pub positive_accuracy: f32,
    /// Fraction of negatives answered "no"
    pub negative_accuracy: f32,
    /// Mean loss over the split
    pub loss: f32,
    /// Number of images asked about
    pub examples: u32,
}

impl Recognition {
    /// The paper's recognition score, and the one figure every report shows: the mean of
    /// positive and negative accuracy, so that answering "no" to everything scores 0.5
    /// however many negatives there are ([`Recognition::accuracy`] would be near 1).
    pub fn weighted(&self) -> f32 {
        (self.positive_accuracy + self.negative_accuracy) / 2.0
    }
}

/// One epoch's outcome (`training-host.epoch-report`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct EpochReport {
    /// 1-based epoch number
    pub epoch: u32,
    /// Learning rate used in the epoch
    pub learning_rate: f32,
    /// Mean training loss of the epoch
    pub mean_loss: f32,
    /// Validation recognition after the epoch
    pub validation: Recognition,
    /// Whether this epoch is the best so far
    pub is_best: bool,
}

/// What the pipeline asks a trainer for (`training-policy.train-params`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct TrainParams {
    /// Maximum epochs; `None` leaves the choice to the policy
    pub epochs: Option<u32>,
    /// Base learning rate; `None` leaves the choice to the policy
    pub learning_rate: Option<f32>,
    /// Samples per batch; `None` leaves the choice to the policy
    pub batch_size: Option<u32>,
    /// Seed for every random choice
    pub seed: u64,
}

/// What a trainer did (`training-policy.train-summary`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct TrainSummary {
    /// Epochs that ran
    pub epochs_run: u32,
    /// The epoch whose parameters the host holds at the end (1-based)
    pub best_epoch: u32,
    /// Validation accuracy of that epoch
    pub best_accuracy: f32,
    /// Whether training stopped before the epoch budget ran out
    pub stopped_early: bool,
}

/// A typed link to another concept (`linker.relation`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct Relation {
    /// E.g. `owner`
    pub relation: String,
    /// The other concept's identifier, e.g. `<T>`
    pub target: String,
}

/// A concept's metadata (`linker.concept-metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct ConceptMetadata {
    /// File-system-safe name, e.g. `bo`
    pub name: String,
    /// Identifier text used in prompts, e.g. `<bo>`
    pub identifier: String,
    /// Human-readable name
    pub display_name: String,
    /// `person`, `pet`, `object`, `landmark`, `character` or `other`
    pub category: String,
    /// Free-text facts
    pub user_facts: Vec<String>,
    /// Links to other concepts
    pub relations: Vec<Relation>,
}

/// One question and its answer (`linker.turn`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct Turn {
    /// The question
    pub question: String,
    /// The answer
    pub answer: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lines() {
        let v010 = ApiVersion::new(0, 1, 0);
        assert!(v010.same_line(ApiVersion::new(0, 1, 7)));
        assert!(!v010.same_line(ApiVersion::new(0, 2, 0)));
        assert!(!v010.same_line(ApiVersion::new(9, 0, 0)));
        assert!(ApiVersion::new(1, 0, 0).same_line(ApiVersion::new(1, 4, 2)));
        assert_eq!(v010.line(), "0.1");
        assert_eq!(ApiVersion::new(2, 3, 4).line(), "2");
    }

    #[test]
    fn version_parse() {
        assert_eq!(ApiVersion::parse("9.0.0"), Some(ApiVersion::new(9, 0, 0)));
        for bad in ["", "1", "1.2", "1.2.3.4", "1.x.3", "1.2.3-rc1", " 1.2.3"] {
            assert_eq!(ApiVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn roles_round_trip_through_worlds() {
        for role in Role::ALL {
            assert_eq!(Role::from_world(role.world()), Some(role));
        }
        assert_eq!(Role::from_world("miner"), None);
    }
}
