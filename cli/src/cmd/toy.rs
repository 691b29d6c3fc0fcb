//! `concepts toy …`: the procedurally generated toy world (datasets of held-out subjects).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use toy_world::{write_dataset, DatasetConfig, ImageSize};

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct ToyArgs {
    #[command(subcommand)]
    command: ToyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ToyCommand {
    /// Write a dataset of held-out subjects (train/ and test/ photos per subject, A/B questions,
    /// a negative pool and two-subject photos) in the layout of toy-world/README.md
    Dataset(DatasetArgs),
}

#[derive(Debug, clap::Args)]
struct DatasetArgs {
    /// Seed: every seed gives a different dataset, the same seed the same bytes
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of subjects (1-100)
    #[arg(long, default_value_t = 5)]
    subjects: usize,
    /// Output directory (must be empty or absent unless --overwrite)
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Training photos per subject
    #[arg(long, default_value_t = DatasetConfig::standard().train_per_subject)]
    train: usize,
    /// Test photos per subject
    #[arg(long, default_value_t = DatasetConfig::standard().test_per_subject)]
    test: usize,
    /// Image side in pixels (48-64)
    #[arg(long, default_value_t = 48)]
    image_size: u32,
    /// Replace a non-empty output directory
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: ToyArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    match args.command {
        ToyCommand::Dataset(args) => dataset(args),
    }
}

fn dataset(args: DatasetArgs) -> anyhow::Result<()> {
    let config = DatasetConfig {
        image_size: ImageSize::new(args.image_size)?,
        train_per_subject: args.train,
        test_per_subject: args.test,
        overwrite: args.overwrite,
        ..DatasetConfig::standard()
    };
    let summary = write_dataset(&args.output, args.seed, args.subjects, &config)
        .with_context(|| format!("writing the toy dataset to `{}`", args.output.display()))?;
    let mut out = std::io::stdout().lock();
    for subject in &summary.subjects {
        writeln!(out, "{}: {}", subject.name(), subject.description())?;
    }
    writeln!(
        out,
        "wrote {} images and {} questions for {} subject(s) to {}",
        summary.images,
        summary.questions,
        summary.subjects.len(),
        summary.dir.display()
    )?;
    Ok(())
}
