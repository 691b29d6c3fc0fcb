//! What a training job is given ([`TrainConfig`], [`Subject`]) and the checks it passes before
//! any long work starts

use std::path::{Path, PathBuf};

use concept_format::Category;
use concepts_runtime::prompt::ConceptMarkers;
use concepts_runtime::session::Engine;

use crate::data::{self, ConversationConfig};
use crate::engine::{AdamW, Init};
use crate::error::{Result, TrainError};
use crate::images;
use crate::mining::PoolSource;
use crate::prefix::PrefixReuse;

/// Easy negatives (the paper: ~100).
pub const DEFAULT_EASY: u32 = 100;

/// Hard negatives wanted in total (the paper: ~100); `m` per positive is this over `n`.
pub const DEFAULT_HARD_TOTAL: u32 = 100;

/// Fewest photos of the subject accepted. Yo'LLaVA trains on 3–5 (the paper's default is 5);
/// with fewer, recognition overfits to one pose or background.
pub const MIN_POSITIVES: usize = 3;

/// Who the concept is.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// File-system-safe name, e.g. `bo`.
    pub name: String,
    /// Identifier text, e.g. `<bo>`.
    pub identifier: String,
    pub display_name: String,
    pub category: Category,
    /// Free-text facts; each becomes a text-only training sample and goes into the manifest.
    pub user_facts: Vec<String>,
}

/// Everything [`train`] needs besides the model.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub subject: Subject,
    /// Folder of photos of the subject (not searched recursively).
    pub images: PathBuf,
    pub negatives: PoolSource,
    /// The `.ycpt` to write; the report and state files go beside it.
    pub output: PathBuf,
    /// Most epochs (the trainer stage may stop early).
    pub epochs: u32,
    /// Latent tokens.
    pub k: usize,
    pub learning_rate: f32,
    pub batch_size: u32,
    pub seed: u64,
    pub init: Init,
    pub adamw: AdamW,
    /// Hard negatives per positive; `None`: [`DEFAULT_HARD_TOTAL`] over the positives.
    pub hard_per_positive: Option<u32>,
    pub easy_negatives: u32,
    /// Crowded views per photo ([`crate::views`]): the photo shrunk into a pool scene as a
    /// positive, and as many crowded hard negatives; 0 trains on the photos alone.
    pub crowded_views: u32,
    /// What those views paste: the whole photo, or its main object cut out.
    pub crowded_style: crate::views::CrowdedStyle,
    pub conversation: ConversationConfig,
    /// Continue from the state file beside `output`.
    pub resume: bool,
    /// Folder for the pool embedding cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Names and identifiers of installed concepts: the new one must differ from all.
    pub installed: Vec<String>,
    /// License of the package.
    pub license: String,
    /// Whether steps run the constant prompt prefix once, without gradients ([`prefix`]).
    pub prefix: PrefixReuse,
}

impl TrainConfig {
    /// The defaults of the paper's recipe for `subject`.
    pub fn new(
        subject: Subject,
        images: PathBuf,
        negatives: PoolSource,
        output: PathBuf,
    ) -> TrainConfig {
        TrainConfig {
            subject,
            images,
            negatives,
            output,
            epochs: 15,
            k: 16,
            learning_rate: 1e-3,
            batch_size: 4,
            seed: 0,
            init: Init::Random,
            adamw: AdamW::REFERENCE,
            hard_per_positive: None,
            easy_negatives: DEFAULT_EASY,
            crowded_views: crate::views::DEFAULT_CROWDED_VIEWS,
            crowded_style: crate::views::CrowdedStyle::default(),
            conversation: ConversationConfig {
                max_answer_tokens: 48,
                questions_per_image: 10,
            },
            resume: false,
            cache_dir: None,
            installed: Vec::new(),
            license: "LicenseRef-personal".to_string(),
            prefix: PrefixReuse::default(),
        }
    }
}

/// Checks the options, the photos and the negative pool before any long work; the photos'
/// paths
pub(crate) fn check_config(cfg: &TrainConfig) -> Result<Vec<PathBuf>> {
    check_options(cfg)?;
    let photo_paths = images::list_images(&cfg.images, false)?;
    if photo_paths.len() < MIN_POSITIVES {
        return Err(TrainError::TooFewPositives {
            dir: cfg.images.clone(),
            found: photo_paths.len(),
            min: MIN_POSITIVES,
        });
    }
    match &cfg.negatives {
        PoolSource::Dir(dir) => {
            if !dir.is_dir() {
                return Err(TrainError::Input(format!(
                    "the negative pool `{}` is not a folder",
                    dir.display()
                )));
            }
            if images::list_images(dir, true)?.is_empty() {
                return Err(TrainError::EmptyPool {
                    path: dir.clone(),
                    detail: " (no .png, .jpg, .jpeg or .webp files)".to_string(),
                });
            }
        }
        PoolSource::EmbeddingFile(file) => {
            if !file.is_file() {
                return Err(TrainError::Input(format!(
                    "the negative pool `{}` does not exist",
                    file.display()
                )));
            }
        }
    }
    Ok(photo_paths)
}

fn check_options(cfg: &TrainConfig) -> Result<()> {
    let bad = |m: String| Err(TrainError::Input(m));
    if cfg.epochs == 0 {
        return bad("epochs must be at least 1".into());
    }
    if cfg.k == 0 || cfg.k > 256 {
        return bad(format!("k = {} latent tokens, expected 1 to 256", cfg.k));
    }
    if cfg.batch_size == 0 {
        return bad("batch size must be at least 1".into());
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return bad(format!(
            "learning rate {} must be positive",
            cfg.learning_rate
        ));
    }
    if cfg.conversation.questions_per_image > data::MAX_QUESTIONS_PER_IMAGE {
        return bad(format!(
            "{} conversation questions per photo, at most {}",
            cfg.conversation.questions_per_image,
            data::MAX_QUESTIONS_PER_IMAGE
        ));
    }
    if cfg.crowded_views > crate::views::MAX_CROWDED_VIEWS {
        return bad(format!(
            "{} crowded views per photo, at most {}",
            cfg.crowded_views,
            crate::views::MAX_CROWDED_VIEWS
        ));
    }
    if cfg.seed > i64::MAX as u64 {
        return bad(format!("seed {} must be at most {}", cfg.seed, i64::MAX));
    }
    let name_ok = (1..=64).contains(&cfg.subject.name.len())
        && cfg
            .subject
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        return bad(format!(
            "concept name `{}`: expected 1 to 64 characters from a-z, 0-9, `_`, `-`",
            cfg.subject.name
        ));
    }
    let dir = cfg
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return bad(format!(
            "the output folder `{}` does not exist",
            dir.display()
        ));
    }
    if !cfg.images.is_dir() {
        return bad(format!(
            "`{}` is not a folder of photos",
            cfg.images.display()
        ));
    }
    Ok(())
}

/// Checks `identifier` (and its latent markers) against the tokenizer and installed concepts.
pub(crate) fn check_identifier(session: &Engine, cfg: &TrainConfig) -> Result<ConceptMarkers> {
    let subject = &cfg.subject;
    let err = |msg: String| TrainError::Identifier {
        identifier: subject.identifier.clone(),
        msg,
    };
    let markers =
        ConceptMarkers::new(&subject.identifier, cfg.k).map_err(|e| err(e.to_string()))?;
    if let Some(other) = cfg
        .installed
        .iter()
        .find(|i| **i == subject.identifier || **i == subject.name)
    {
        return Err(err(format!(
            "an installed concept is already called `{other}`; remove it or choose another name"
        )));
    }
    let codec = session.codec();
    let unk = codec.token_id("<unk>");
    for marker in markers.all() {
        if codec.token_id(marker).is_some() {
            return Err(err(format!(
                "clashes with the base vocabulary: the tokenizer already has the token `{marker}`"
            )));
        }
        let ids = codec.encode(marker, false)?;
        if ids.len() == 1 && Some(ids[0]) != unk {
            return Err(err(format!(
                "clashes with the base vocabulary: `{marker}` tokenizes to the single existing token {}",
                ids[0]
            )));
        }
    }
    Ok(markers)
}
