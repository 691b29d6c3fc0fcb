//! Ablations of the paper's §6: the number of latent tokens `k`, the number of training photos
//! `n`, and training with or without hard negatives. Each variant retrains every subject's
//! concept (cached like the main ones) and is scored on the learned condition.
//!
//! Output: rows for a Markdown table like the paper's Table 5 and a PNG bar plot like its
//! Figure 5, drawn with the trainer's report font (`concepts_trainer::report::text`).

use std::path::{Path, PathBuf};

use concept_format::ConceptPackage;
use image::{Rgb, RgbImage};

use crate::condition::Condition;
use crate::error::{EvalError, Result};
use crate::metrics::RecognitionScores;
use crate::scorer::Scorer;
use crate::training::{train_or_reuse, TrainingConfig, TrainingJob};

/// The paper's values of `k`; 0 is reported as unsupported (a concept has at least one latent).
pub const K_VALUES: [usize; 5] = [0, 2, 4, 8, 16];
/// The paper's numbers of training photos; fewer than the trainer's minimum are reported as
/// unsupported, more than the dataset has are skipped.
pub const N_VALUES: [usize; 4] = [1, 3, 5, 10];

pub use crate::report::{AblationReport, AblationRow};

struct Variant {
    factor: &'static str,
    value: String,
    config: TrainingConfig,
    photos: Option<usize>,
}

fn variants(base: &TrainingConfig, max_photos: usize) -> (Vec<Variant>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for k in K_VALUES {
        if k == 0 {
            skipped.push("k = 0: a concept needs at least one latent token".to_string());
            continue;
        }
        out.push(Variant {
            factor: "k",
            value: k.to_string(),
            config: TrainingConfig { k, ..base.clone() },
            photos: None,
        });
    }
    for n in N_VALUES {
        if n < concepts_trainer::MIN_POSITIVES {
            skipped.push(format!(
                "n = {n}: the trainer needs at least {} photos",
                concepts_trainer::MIN_POSITIVES
            ));
        } else if n > max_photos {
            skipped.push(format!(
                "n = {n}: a subject has only {max_photos} training photos"
            ));
        } else {
            out.push(Variant {
                factor: "n",
                value: n.to_string(),
                config: base.clone(),
                photos: Some(n),
            });
        }
    }
    for (value, hard) in [("with", base.hard_per_positive), ("without", Some(0))] {
        out.push(Variant {
            factor: "hard_negatives",
            value: value.to_string(),
            config: TrainingConfig {
                hard_per_positive: hard,
                ..base.clone()
            },
            photos: None,
        });
    }
    (out, skipped)
}

/// A folder holding the first `n` training photos of `train` (copies), under `work`.
fn subset(work: &Path, subject: &str, train: &[PathBuf], n: usize) -> Result<PathBuf> {
    let dir = work
        .join("ablation-photos")
        .join(subject)
        .join(format!("n{n}"));
    std::fs::create_dir_all(&dir).map_err(|e| EvalError::io("creating", &dir, e))?;
    for src in train.iter().take(n) {
        let name = src.file_name().unwrap_or_default();
        let dest = dir.join(name);
        if !dest.is_file() {
            std::fs::copy(src, &dest).map_err(|e| EvalError::io("copying", src, e))?;
        }
    }
    Ok(dir)
}

/// Trains and scores every variant; writes the plot to `plot` when given.
pub(crate) fn evaluate(
    scorer: &mut Scorer<'_>,
    job: &TrainingJob<'_>,
    plot: Option<&Path>,
) -> Result<AblationReport> {
    let dataset = scorer.dataset;
    let max_photos = dataset
        .subjects
        .iter()
        .map(|s| s.train.len())
        .min()
        .unwrap_or(0);
    let (variants, skipped) = variants(job.config, max_photos);
    let mut rows = Vec::new();
    for v in &variants {
        let mut weights = Vec::with_capacity(dataset.subjects.len());
        for subject in &dataset.subjects {
            let mut subject = subject.clone();
            if let Some(n) = v.photos {
                subject.train_dir = subset(job.work_dir, &subject.name, &subject.train, n)?;
            }
            let variant_job = TrainingJob {
                config: &v.config,
                ..*job
            };
            let mut silent = concepts_trainer::Silent;
            let sink: &mut dyn concepts_trainer::Progress =
                match scorer.progress.training(&subject.name) {
                    Some(p) => p,
                    None => &mut silent,
                };
            let description = scorer
                .model_descriptions
                .get(&subject.name)
                .and_then(|d| d.description.as_deref());
            let trained = train_or_reuse(&variant_job, &subject, description, sink, scorer.cancel)?;
            let package = ConceptPackage::read_file(&trained.package).map_err(|source| {
                EvalError::Package {
                    path: trained.package.clone(),
                    source,
                }
            })?;
            weights.push(scorer.base.package_weights(&package)?);
        }
        let mut variant_scorer = Scorer {
            dataset,
            base: scorer.base,
            weights: &weights,
            model_descriptions: scorer.model_descriptions,
            images: &mut *scorer.images,
            progress: &mut *scorer.progress,
            cancel: scorer.cancel,
        };
        let (c, _) = variant_scorer.condition(Condition::Learned)?;
        rows.push(AblationRow {
            factor: v.factor.to_string(),
            value: v.value.clone(),
            recognition: RecognitionScores {
                positive: c.positive,
                negative: c.negative,
                weighted: c.weighted,
                positives: c.positives,
                negatives: c.negatives,
            },
            text_qa: c.text_qa,
        });
    }
    let plot = match plot {
        Some(path) => {
            let img = draw(&rows);
            img.save(path).map_err(|e| EvalError::Io {
                action: "writing",
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
            Some(path.to_path_buf())
        }
        None => None,
    };
    Ok(AblationReport {
        rows,
        skipped,
        plot,
    })
}

impl AblationReport {
    /// A Markdown table like the paper's Table 5: one row per variant.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| factor | value | positive | negative | weighted | text QA |\n\
             |---|---|---:|---:|---:|---:|\n",
        );
        for r in &self.rows {
            let pct = |x: f64| format!("{:.1}", 100.0 * x);
            s.push_str(&format!(
                "| {} | {} | {} | {} | **{}** | {} |\n",
                r.factor,
                r.value,
                pct(r.recognition.positive),
                pct(r.recognition.negative),
                pct(r.recognition.weighted),
                r.text_qa.map_or_else(|| "–".to_string(), pct)
            ));
        }
        for note in &self.skipped {
            s.push_str(&format!("\nSkipped: {note}\n"));
        }
        s
    }
}

/// One panel per factor, a bar per value showing weighted recognition (0 to 1), like the
/// paper's Figure 5.
fn draw(rows: &[AblationRow]) -> RgbImage {
    use concepts_trainer::report::text;
    const PANEL_W: u32 = 220;
    const H: u32 = 200;
    const TOP: u32 = 30;
    const BOTTOM: u32 = 30;
    let factors: Vec<&str> = {
        let mut f: Vec<&str> = rows.iter().map(|r| r.factor.as_str()).collect();
        f.dedup();
        f
    };
    let width = PANEL_W * factors.len().max(1) as u32;
    let mut img = RgbImage::from_pixel(width, H, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    let bar = Rgb([70, 110, 200]);
    let grey = Rgb([200, 200, 200]);
    let plot_h = H - TOP - BOTTOM;
    for (p, factor) in factors.iter().enumerate() {
        let x0 = p as u32 * PANEL_W + 20;
        text(&mut img, x0, 8, &format!("weighted vs {factor}"), black, 1);
        // The 0.5 chance line.
        for x in x0..x0 + PANEL_W - 40 {
            img.put_pixel(x, TOP + plot_h / 2, grey);
            img.put_pixel(x, TOP + plot_h, black);
        }
        let mine: Vec<&AblationRow> = rows.iter().filter(|r| r.factor == *factor).collect();
        let slot = (PANEL_W - 40) / mine.len().max(1) as u32;
        for (i, r) in mine.iter().enumerate() {
            let h = (r.recognition.weighted.clamp(0.0, 1.0) * f64::from(plot_h)).round() as u32;
            let bx = x0 + i as u32 * slot + slot / 6;
            for x in bx..bx + slot * 2 / 3 {
                for y in TOP + plot_h - h..TOP + plot_h {
                    img.put_pixel(x, y, bar);
                }
            }
            text(&mut img, bx, TOP + plot_h + 8, &r.value, black, 1);
        }
    }
    img
}
