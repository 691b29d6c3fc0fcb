//! `concepts train NAME --images DIR [--negatives DIR|FILE] [--epochs N] [--miner ID]
//! [--trainer ID] [--linker ID] [--model DIR] -o FILE`
//!
//! This command line is a contract: outside checks run it. It writes the package to FILE and
//! the training report (`<stem>.training.json`, `<stem>.training.png`) beside it; while
//! training, `FILE.state` holds what `--resume` needs. Ctrl-C stops after the current step and
//! leaves the best checkpoint so far in FILE.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use concept_format::Category;
use concepts_plugin_api::EpochReport;
use concepts_trainer::{Init, Phase, PoolSource, Progress, Subject, TrainConfig};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Concept name (a-z, 0-9, `_`, `-`); the identifier is `<NAME>` unless --identifier is given
    pub name: String,
    /// Folder with 3 to 10 photos of the subject
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Pool of candidate negative images: a folder (searched recursively) or a precomputed
    /// embedding file [default: the `negatives/` folder of the model]
    #[arg(long, value_name = "DIR")]
    pub negatives: Option<PathBuf>,
    /// Most training epochs
    #[arg(long, value_name = "N", default_value_t = 15)]
    pub epochs: u32,
    /// Negative-miner plugin id
    #[arg(long, value_name = "ID", default_value = concepts_plugin_host::builtin::DEFAULT_MINER)]
    pub miner: String,
    /// Trainer plugin id
    #[arg(long, value_name = "ID", default_value = concepts_plugin_host::builtin::DEFAULT_TRAINER)]
    pub trainer: String,
    /// Metadata-linker plugin id
    #[arg(long, value_name = "ID", default_value = concepts_plugin_host::builtin::DEFAULT_LINKER)]
    pub linker: String,
    /// The package to write
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// llava-hf base model folder [default: CONCEPTS_DEFAULT_MODEL, else the embedded toy model]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Identifier used in prompts [default: <NAME>]
    #[arg(long, value_name = "TEXT")]
    pub identifier: Option<String>,
    /// Human-readable name [default: NAME]
    #[arg(long, value_name = "TEXT")]
    pub display_name: Option<String>,
    /// person, pet, object, landmark, character or other (people get human-related questions)
    #[arg(long, default_value = "object")]
    pub category: String,
    /// A fact about the subject (repeatable); each becomes a training sample and is stored
    #[arg(long = "fact", value_name = "TEXT")]
    pub facts: Vec<String>,
    /// Latent tokens
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// AdamW learning rate
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Samples per optimiser step
    #[arg(long, default_value_t = 4)]
    pub batch_size: u32,
    /// Seed for mining, templates, flips and initialisation
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initialisation: random, visual, word:WORD, text:TEXT (the latents spell TEXT) or
    /// text-visual:TEXT (TEXT once, then the photos' object token)
    #[arg(long, default_value = "random")]
    pub init: String,
    #[command(flatten)]
    pub negatives_mix: NegativesArgs,
    /// Attribute questions the base model answers per photo (0 to 10)
    #[arg(long, default_value_t = 10)]
    pub questions: usize,
    /// Continue an interrupted run from FILE.state
    #[arg(long)]
    pub resume: bool,
    /// MiB of prompt-prefix keys and values kept between steps (system text and image, run
    /// once without gradients; beyond this they are recomputed). 0 recomputes every prefix;
    /// `off` runs every step over the whole sequence with gradients, as the reference does
    #[arg(long, value_name = "MIB", default_value = "2048", value_parser = parse_prefix_budget)]
    pub prefix_cache: concepts_trainer::PrefixReuse,
    /// Allow native (unsandboxed) plugin libraries for the stages
    #[arg(long)]
    pub allow_native: bool,
    #[command(flatten)]
    pub compute: crate::ctx::ComputeArgs,
}

/// What a concept trains against besides its photos; `concepts train` and `concepts eval`
/// take the same options.
#[derive(Debug, clap::Args)]
pub struct NegativesArgs {
    /// Hard negatives per training photo [default: 100 / number of photos]
    #[arg(long, value_name = "M")]
    pub hard_per_positive: Option<u32>,
    /// Easy (random) negatives per concept
    #[arg(long, default_value_t = concepts_trainer::DEFAULT_EASY)]
    pub easy: u32,
    /// Crowded views per training photo: the photo shrunk into a pool scene (a positive),
    /// and as many crowded hard negatives, so the concept finds its subject among others
    #[arg(long, value_name = "N", default_value_t = concepts_trainer::views::DEFAULT_CROWDED_VIEWS)]
    pub crowded_views: u32,
    /// What a crowded view pastes: `photo` (the whole photo) or `object` (its main object cut
    /// from the backdrop, so the view looks like one scene of several objects: subjects are
    /// found beside others far more often, look-alikes rejected less often; docs/training.md)
    #[arg(long, value_name = "STYLE", default_value = "photo")]
    pub crowded_style: concepts_trainer::views::CrowdedStyle,
}

/// Progress bars for mining, conversation generation and epochs; `concepts eval` shows one
/// of these per concept it trains.
pub(crate) struct TrainBars {
    multi: MultiProgress,
    phase: Option<ProgressBar>,
    epochs: Option<ProgressBar>,
    /// Prefix of the epoch bar (`epochs`, or the concept being trained).
    pub(crate) label: String,
    /// Print a line per epoch (the `train` command) or only move the bar (`eval`).
    epoch_lines: bool,
}

impl TrainBars {
    pub(crate) fn new(multi: MultiProgress, label: &str, epoch_lines: bool) -> TrainBars {
        TrainBars {
            multi,
            phase: None,
            epochs: None,
            label: label.to_string(),
            epoch_lines,
        }
    }

    fn bar(&self, total: u64, prefix: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total));
        style_bar(&bar);
        bar.set_prefix(prefix.to_string());
        bar
    }

    /// Removes the epoch bar of the concept just trained.
    pub(crate) fn clear_epochs(&mut self) {
        if let Some(bar) = self.epochs.take() {
            bar.finish_and_clear();
        }
    }
}

/// The bar style shared by `train` and `eval`.
pub(crate) fn style_bar(bar: &ProgressBar) {
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>13} [{bar:30}] {pos}/{len} ({elapsed} / {eta} left) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
}

impl Progress for TrainBars {
    fn start(&mut self, phase: Phase, total: u64) {
        let name = match phase {
            Phase::Mining => "embedding pool",
            Phase::Conversations => "conversations",
        };
        self.phase = Some(self.bar(total, name));
    }

    fn advance(&mut self, _phase: Phase, done: u64) {
        if let Some(bar) = &self.phase {
            bar.set_position(done);
        }
    }

    fn finish(&mut self, _phase: Phase) {
        if let Some(bar) = self.phase.take() {
            bar.finish();
        }
    }

    fn training(&mut self, epochs: u32, replaying: u32) {
        let bar = self.bar(u64::from(epochs), &self.label);
        if replaying > 0 {
            bar.println(format!("resuming after epoch {replaying}"));
        }
        self.epochs = Some(bar);
    }

    fn step(&mut self, step: u64, loss: f32) {
        if let Some(bar) = &self.epochs {
            bar.set_message(format!("step {step} loss {loss:.4}"));
        }
    }

    fn epoch(&mut self, r: &EpochReport, replayed: bool) {
        if let Some(bar) = &self.epochs {
            bar.set_position(u64::from(r.epoch));
            if !self.epoch_lines {
                return;
            }
            bar.println(format!(
                "epoch {:>2}{}: loss {:.4}, recognition {:.1}% weighted (positives {:.1}%, negatives {:.1}%){}",
                r.epoch,
                if replayed { " (saved)" } else { "" },
                r.mean_loss,
                100.0 * r.validation.weighted(),
                100.0 * r.validation.positive_accuracy,
                100.0 * r.validation.negative_accuracy,
                if r.is_best { ", best so far" } else { "" }
            ));
        }
    }

    fn note(&mut self, text: &str) {
        let _ = self.multi.println(text);
    }
}

pub fn run(args: TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let model = crate::ctx::model_dir(args.model.as_deref(), ctx)?;
    let negatives = match &args.negatives {
        Some(path) => PoolSource::from_path(path),
        None => {
            let dir = model.join("negatives");
            if !dir.is_dir() {
                bail!(
                    "no negative pool: pass --negatives DIR (the model `{}` has no `negatives/` folder)",
                    model.display()
                );
            }
            PoolSource::Dir(dir)
        }
    };
    let category: Category = args
        .category
        .parse()
        .with_context(|| format!("--category `{}`", args.category))?;
    let init = Init::parse(&args.init).with_context(|| {
        format!(
            "--init `{}`: expected random, visual, word:WORD, text:TEXT or text-visual:TEXT",
            args.init
        )
    })?;
    // Installed plugins first, then the built-ins, each through the plugin host.
    let (store, plugin_host) = crate::cmd::plugin::store_and_host(ctx, args.allow_native)?;
    let selection = concepts_plugin_host::PluginSelection {
        miner: Some(args.miner.clone()),
        trainer: Some(args.trainer.clone()),
        linker: Some(args.linker.clone()),
    };
    let mut stages =
        concepts_plugin_host::PluginSet::resolve(&plugin_host, Some(&store), &selection)?;

    let home = ctx.home()?;
    let registry = ctx.registry()?;
    let installed = registry
        .list()?
        .into_iter()
        .flat_map(|e| [e.name, e.identifier])
        .collect();
    let subject = Subject {
        identifier: args
            .identifier
            .clone()
            .unwrap_or_else(|| format!("<{}>", args.name)),
        display_name: args
            .display_name
            .clone()
            .unwrap_or_else(|| args.name.clone()),
        name: args.name.clone(),
        category,
        user_facts: args.facts.clone(),
    };
    let mut cfg = TrainConfig::new(subject, args.images.clone(), negatives, args.output.clone());
    cfg.epochs = args.epochs;
    cfg.k = args.k;
    cfg.learning_rate = args.lr;
    cfg.batch_size = args.batch_size;
    cfg.seed = args.seed;
    cfg.init = init;
    cfg.hard_per_positive = args.negatives_mix.hard_per_positive;
    cfg.easy_negatives = args.negatives_mix.easy;
    cfg.crowded_views = args.negatives_mix.crowded_views;
    cfg.crowded_style = args.negatives_mix.crowded_style;
    cfg.conversation.questions_per_image = args.questions;
    cfg.resume = args.resume;
    cfg.prefix = args.prefix_cache;
    cfg.cache_dir = Some(home.join("cache").join("pool-embeddings"));
    cfg.installed = installed;

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut bars = TrainBars::new(MultiProgress::new(), "epochs", true);
    let compute = args.compute.resolve()?;
    let outcome = concepts_trainer::train(
        &model,
        &compute.device,
        compute.dtype,
        &cfg,
        &mut stages,
        &mut bars,
        &cancel,
    )
    .with_context(|| format!("training `{}` on `{}`", args.name, model.display()))?;
    if let Some(bar) = bars.epochs.take() {
        bar.finish_and_clear();
    }
    let s = &outcome.summary;
    println!(
        "wrote `{}`: best epoch {} of {}{} (recognition {:.1}% weighted, on the training images)",
        outcome.package.display(),
        s.best_epoch,
        s.epochs_run,
        if s.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        100.0 * outcome.best_accuracy
    );
    println!(
        "trained on {} photos, {} hard and {} easy negatives, {} crowded views of each, {} conversations; pool: {} images ({} from cache)",
        outcome.counts.positives,
        outcome.counts.hard_negatives,
        outcome.counts.easy_negatives,
        outcome.counts.crowded_views,
        outcome.counts.conversations,
        outcome.pool.listed,
        outcome.pool.cache_hits
    );
    println!(
        "report: `{}`, `{}`",
        outcome.report_json.display(),
        outcome.report_png.display()
    );
    Ok(())
}

/// `off`, or a budget in MiB, for `--prefix-cache`.
fn parse_prefix_budget(text: &str) -> Result<concepts_trainer::PrefixReuse, String> {
    if text == "off" {
        return Ok(concepts_trainer::PrefixReuse::Off);
    }
    let mib: usize = text
        .parse()
        .map_err(|_| format!("`{text}`: expected a number of MiB or `off`"))?;
    let budget_bytes = mib
        .checked_mul(1 << 20)
        .ok_or_else(|| format!("{mib} MiB is more than this machine can address"))?;
    Ok(concepts_trainer::PrefixReuse::Cached { budget_bytes })
}
