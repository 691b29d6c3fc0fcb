//! `concepts base …`: the base model. `build-toy` pretrains the toy LLaVA on the toy world.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use candle_core::Device;
use concepts_pretrain::corpus::{write_corpus, CorpusSize};
use concepts_pretrain::{Event, RunPaths, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct BaseArgs {
    #[command(subcommand)]
    command: BaseCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BaseCommand {
    /// Pretrain the toy base model (resumes from OUT/train-state when it exists; Ctrl-C saves
    /// and exits). Writes the llava-hf model folder to OUT and OUT/eval.jsonl
    BuildToy(BuildToyArgs),
    /// Write the toy run's corpus, gate, initial weights and reference outputs as tensor
    /// files for an external trainer (tools/toy_gpu/train.py on a lent GPU)
    ExportCorpus(ExportCorpusArgs),
    /// Import weights trained outside (`weights.safetensors` of tools/toy_gpu/train.py):
    /// evaluate them with this runtime, write OUT/eval.json and export the model folder
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
struct ExportCorpusArgs {
    /// Output folder
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Seed of the run (initial weights and data)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stage-0 scenes
    #[arg(long, default_value_t = 200_000)]
    stage0: usize,
    /// Stage-1 samples
    #[arg(long, default_value_t = 600_000)]
    stage1: usize,
    /// Generator threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// The trained weights (model and stage-0 heads, hub-layout names)
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Model folder to export to
    #[arg(long, default_value = "models/toy-llava", value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct BuildToyArgs {
    /// Output folder: the llava-hf export, eval.jsonl, and train-state/
    #[arg(long, default_value = "models/toy-llava", value_name = "DIR")]
    out: PathBuf,
    /// Seed of the whole run (weights and data)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stage-1 (language) steps [default: the standard run's]
    #[arg(long)]
    steps: Option<u64>,
    /// Stage-0 (vision tower) steps [default: the standard run's]
    #[arg(long)]
    stage0_steps: Option<u64>,
    /// Stage-1 batch size [default: the standard run's]
    #[arg(long)]
    batch: Option<usize>,
    /// Evaluate, export and checkpoint every N steps [default: the standard run's]
    #[arg(long)]
    eval_every: Option<u64>,
    /// Also checkpoint at least this often
    #[arg(long, default_value_t = 4)]
    checkpoint_minutes: u64,
    /// Discard OUT/train-state and start from step 0
    #[arg(long)]
    fresh: bool,
    /// Stop (saving) after this many steps of this invocation, e.g. to time steps
    #[arg(long)]
    max_steps: Option<u64>,
}

pub fn run(args: BaseArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    match args.command {
        BaseCommand::BuildToy(args) => build_toy(args),
        BaseCommand::ExportCorpus(args) => export_corpus(args),
        BaseCommand::Import(args) => import(args),
    }
}

fn export_corpus(args: ExportCorpusArgs) -> anyhow::Result<()> {
    let trainer = Trainer::new(TrainConfig::standard(args.seed), &Device::Cpu)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let start = std::time::Instant::now();
    let meta = write_corpus(
        &trainer,
        CorpusSize {
            stage0: args.stage0,
            stage1: args.stage1,
            threads,
        },
        &args.out,
    )
    .with_context(|| format!("writing the corpus to `{}`", args.out.display()))?;
    eprintln!(
        "corpus in `{}`: {} stage-0 scenes, {} stage-1 samples ({} images), {} gate items, {:.1}s",
        args.out.display(),
        meta.stage0,
        meta.stage1,
        meta.stage1_images,
        meta.gate,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let cfg = TrainConfig::standard(0);
    let total = cfg.total_steps();
    let mut trainer = Trainer::new(cfg, &Device::Cpu)?;
    trainer
        .load_weights(&args.weights)
        .with_context(|| format!("loading `{}`", args.weights.display()))?;
    trainer.set_step(total);
    eprintln!("evaluating `{}` …", args.weights.display());
    let report = trainer.evaluate()?;
    trainer
        .export(&args.out)
        .with_context(|| format!("exporting to `{}`", args.out.display()))?;
    let path = args.out.join("eval.json");
    // `step` is the CPU schedule's end: imported weights are evaluated as a finished run.
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "weights": args.weights.file_name().map(|n| n.to_string_lossy().into_owned()),
        "evaluation": report,
    }))?;
    concepts_fs::write_atomic(&path, format!("{text}\n").as_bytes())
        .with_context(|| format!("writing `{}`", path.display()))?;
    println!("{text}");
    Ok(())
}

fn build_toy(args: BuildToyArgs) -> anyhow::Result<()> {
    let mut cfg = TrainConfig::standard(args.seed);
    if let Some(s) = args.steps {
        cfg.stage1_steps = s;
    }
    if let Some(s) = args.stage0_steps {
        cfg.stage0_steps = s;
    }
    if let Some(b) = args.batch {
        cfg.batch = b;
    }
    if let Some(e) = args.eval_every {
        cfg.eval_every = e;
    }
    let paths = RunPaths {
        out: args.out.clone(),
    };
    std::fs::create_dir_all(&paths.out)
        .with_context(|| format!("creating `{}`", paths.out.display()))?;
    let state = paths.state();
    if args.fresh && state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("removing `{}`", state.display()))?;
    }
    let device = Device::Cpu;
    let mut trainer = Trainer::resume_or_new(cfg, &state, &device)
        .with_context(|| format!("opening the run in `{}`", paths.out.display()))?;
    let total = trainer.config().total_steps();
    eprintln!(
        "toy base model: {} parameters, steps {}/{} (stage 0: {}), state in `{}`",
        trainer.params().count(),
        trainer.step(),
        total,
        trainer.config().stage0_steps,
        state.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} ({eta} left) {msg}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_position(trainer.step());
    let start_step = trainer.step();
    let limit = args.max_steps.map(|n| start_step + n);
    let mut smoothed: Option<f32> = None;
    let mut timing = (0.0f64, 0u64);
    // A hidden bar (output not a terminal, e.g. `nohup … > log`) drops `println`: log lines
    // must still reach the log.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let result = trainer.run(
        &paths,
        Duration::from_secs(args.checkpoint_minutes.max(1) * 60),
        &stop,
        |event| match event {
            Event::Step(r) => {
                let s = smoothed.map_or(r.loss, |s| 0.98 * s + 0.02 * r.loss);
                smoothed = Some(s);
                timing = (timing.0 + r.seconds, timing.1 + 1);
                bar.set_position(r.step + 1);
                bar.set_message(format!(
                    "stage {} loss {:.3} lr {:.1e} |g| {:.2} {:.2}s/step",
                    r.stage,
                    s,
                    r.lr,
                    r.grad_norm,
                    timing.0 / timing.1 as f64
                ));
                if (r.step + 1) % 50 == 0 {
                    say(format!(
                        "step {} stage {} loss {:.4} (smoothed {:.4}) lr {:.2e} |g| {:.2} {:.2}s",
                        r.step + 1,
                        r.stage,
                        r.loss,
                        s,
                        r.lr,
                        r.grad_norm,
                        r.seconds
                    ));
                }
                if limit.is_some_and(|l| r.step + 1 >= l) {
                    stop.store(true, Ordering::SeqCst);
                }
            }
            Event::Eval(report) => say(format!(
                "eval {}",
                serde_json::to_string(&report).unwrap_or_default()
            )),
            Event::Saved { step, dir } => say(format!("saved step {step} to `{}`", dir.display())),
            Event::Exported { step, dir } => {
                say(format!("exported step {step} to `{}`", dir.display()))
            }
        },
    );
    bar.abandon();
    result.context("pretraining")?;
    if timing.1 > 0 {
        eprintln!(
            "{} steps this run, {:.3} s/step",
            timing.1,
            timing.0 / timing.1 as f64
        );
    }
    eprintln!(
        "stopped at step {}/{}; resume with the same command",
        trainer.step(),
        total
    );
    Ok(())
}
