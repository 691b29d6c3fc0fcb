//! `concepts eval --data DIR [--base-model DIR] [--json] [--epochs N] [--k K] [--subjects N]
//! [--test-photos N] [--seed S] [--negatives DIR] [--work-dir DIR] [--forgetting N]
//! [--no-multi] [--ablations [--ablation-plot FILE]]`
//!
//! This command line is a contract: outside checks run `concepts eval --data DIR
//! [--base-model DIR] --json`. It trains the concepts it needs (cached under the work folder,
//! so a rerun only asks questions), then prints the results: one JSON document on stdout with
//! `--json` (schema: `docs/evaluation.md`), else Markdown tables. Progress goes to stderr.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use concepts_eval::{read_dataset, EvalConfig, EvalProgress, LatentInit, TrainingConfig};
use concepts_trainer::Progress;
use indicatif::{MultiProgress, ProgressBar};

use crate::cmd::train::{style_bar, TrainBars};
use crate::ctx::Ctx;

/// `--init`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InitArg {
    ModelDescription,
    Random,
    Visual,
    ModelDescriptionVisual,
}

impl From<InitArg> for LatentInit {
    fn from(a: InitArg) -> LatentInit {
        match a {
            InitArg::ModelDescription => LatentInit::ModelDescription,
            InitArg::Random => LatentInit::Random,
            InitArg::Visual => LatentInit::Visual,
            InitArg::ModelDescriptionVisual => LatentInit::ModelDescriptionVisual,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Dataset folder: toy-world layout (`concepts toy dataset`) or Yo'LLaVA layout
    /// (train/<subject>/, test/<subject>/)
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// llava-hf base model folder [default: CONCEPTS_DEFAULT_MODEL, else the embedded toy model]
    #[arg(long, value_name = "DIR")]
    pub base_model: Option<PathBuf>,
    /// Print one JSON document on stdout instead of tables
    #[arg(long)]
    pub json: bool,
    /// Most training epochs per concept
    #[arg(long, value_name = "N", default_value_t = 15)]
    pub epochs: u32,
    /// Latent tokens per concept
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// AdamW learning rate
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Seed for training (mining, templates, initialisation)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Attribute questions the base model answers per photo for the conversation data (0 to 10)
    #[arg(long, default_value_t = 10)]
    pub questions: usize,
    #[command(flatten)]
    pub negatives_mix: crate::cmd::train::NegativesArgs,
    /// Where each concept's latents start: spelling the base model's own description of the
    /// training photos, random (Yo'LLaVA's reference), at the photos' object token (the
    /// sixth of their visual tokens that stands out from the background), or the description
    /// followed by the object token
    #[arg(long, value_enum, default_value_t = InitArg::ModelDescription)]
    pub init: InitArg,
    /// Evaluate only the first N subjects
    #[arg(long, value_name = "N")]
    pub subjects: Option<usize>,
    /// Use at most N test photos per subject
    #[arg(long, value_name = "N")]
    pub test_photos: Option<usize>,
    /// Negative pool for training [default: the dataset's negatives/ folder]
    #[arg(long, value_name = "DIR")]
    pub negatives: Option<PathBuf>,
    /// Where trained concepts are cached [default: <home>/cache/eval]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Also measure forgetting: N questions per generic toy-world task with 0, 1 and 5
    /// concepts active
    #[arg(long, value_name = "N")]
    pub forgetting: Option<usize>,
    /// Skip the multi-concept photos
    #[arg(long)]
    pub no_multi: bool,
    /// Also run the paper's ablations (k, number of photos, hard negatives); slow: every
    /// subject is retrained per variant
    #[arg(long)]
    pub ablations: bool,
    /// Where the ablation plot goes [default: <work dir>/ablations.png]
    #[arg(long, value_name = "FILE")]
    pub ablation_plot: Option<PathBuf>,
    #[command(flatten)]
    pub compute: crate::ctx::ComputeArgs,
}

/// A cancel flag set by Ctrl-C.
pub fn cancel_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    Ok(cancel)
}

pub fn run(args: EvalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let model = crate::ctx::model_dir(args.base_model.as_deref(), ctx)?;
    // Checked here too, not only by the trainer: eval captions every photo before it trains.
    if args.questions > concepts_trainer::MAX_QUESTIONS_PER_IMAGE {
        bail!(
            "--questions {}: at most {}",
            args.questions,
            concepts_trainer::MAX_QUESTIONS_PER_IMAGE
        );
    }
    if args.subjects == Some(0) || args.test_photos == Some(0) {
        bail!("--subjects and --test-photos must be at least 1");
    }
    let mut dataset = read_dataset(&args.data)
        .with_context(|| format!("reading the dataset `{}`", args.data.display()))?;
    if let Some(n) = args.subjects {
        dataset.truncate_subjects(n);
    }
    if let Some(n) = args.test_photos {
        dataset.truncate_test_photos(n);
    }
    let home = ctx.home()?;
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| home.join("cache").join("eval"));
    let ablation_plot = args.ablations.then(|| {
        args.ablation_plot
            .clone()
            .unwrap_or_else(|| work_dir.join("ablations.png"))
    });
    let cfg = EvalConfig {
        model: model.clone(),
        compute: args.compute.resolve()?,
        work_dir,
        pool_cache: Some(home.join("cache").join("pool-embeddings")),
        negatives: args.negatives.clone(),
        training: TrainingConfig {
            epochs: args.epochs,
            k: args.k,
            learning_rate: args.lr,
            seed: args.seed,
            questions_per_image: args.questions,
            hard_per_positive: args.negatives_mix.hard_per_positive,
            easy_negatives: args.negatives_mix.easy,
            crowded_views: args.negatives_mix.crowded_views,
            crowded_style: args.negatives_mix.crowded_style,
            init: args.init.into(),
        },
        multi: !args.no_multi,
        forgetting_per_task: args.forgetting,
        ablations: args.ablations,
        ablation_plot,
    };
    let cancel = cancel_on_ctrl_c()?;
    let mut bars = EvalBars::new();
    let report =
        concepts_eval::evaluate(&dataset, &cfg, &mut bars, &cancel).with_context(|| {
            format!(
                "evaluating `{}` on `{}`",
                model.display(),
                args.data.display()
            )
        })?;
    bars.clear();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        use std::io::Write;
        writeln!(out)?;
    } else {
        use std::io::Write;
        write!(out, "{}", report.to_markdown())?;
    }
    Ok(())
}

/// Progress bars on stderr: one per scoring pass, and the trainer's phases and epochs.
pub struct EvalBars {
    multi: MultiProgress,
    pass: Option<ProgressBar>,
    trainer: TrainBars,
}

impl EvalBars {
    pub fn new() -> EvalBars {
        let multi = MultiProgress::new();
        EvalBars {
            trainer: TrainBars::new(multi.clone(), "", false),
            multi,
            pass: None,
        }
    }

    fn bar(&self, total: u64, prefix: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total));
        style_bar(&bar);
        bar.set_prefix(prefix.to_string());
        bar
    }

    /// Prints a line above the bars.
    pub fn note(&self, text: &str) {
        let _ = self.multi.println(text);
    }

    pub fn clear(&mut self) {
        if let Some(bar) = self.pass.take() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

impl EvalProgress for EvalBars {
    fn training(&mut self, subject: &str) -> Option<&mut dyn Progress> {
        self.trainer.label = format!("<{subject}>");
        Some(&mut self.trainer)
    }

    fn concept(&mut self, subject: &str, index: usize, total: usize, cached: bool) {
        self.trainer.clear_epochs();
        self.note(&format!(
            "concept {index}/{total} `<{subject}>` {}",
            if cached {
                "reused from the cache"
            } else {
                "trained"
            }
        ));
    }

    fn start(&mut self, label: &str, total: u64) {
        self.pass = Some(self.bar(total, label));
    }

    fn tick(&mut self) {
        if let Some(bar) = &self.pass {
            bar.inc(1);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.pass.take() {
            bar.finish_and_clear();
        }
    }
}
