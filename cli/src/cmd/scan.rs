//! `concepts scan IMAGE [--concept NAME]... [--json] [--model DIR]`
//!
//! "Which of my concepts are in this photo?" The command line `concepts scan IMAGE
//! [--concept NAME]... [--json]` is a contract: outside checks run it. Without `--concept`
//! every installed concept this model can use is asked; the prompt prefix (system text and
//! image) is computed once and shared. Without `--model` the embedded default base model is
//! used.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use concepts_runtime::api::{ImageInput, Runtime, RuntimeConfig, Selection};
use concepts_server::RegistrySource;
use serde_json::json;

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// The photo (JPEG, PNG or WebP)
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Ask about this installed concept (name or identifier); repeatable [default: all]
    #[arg(long = "concept", value_name = "NAME")]
    pub concepts: Vec<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// llava-hf model directory [default: $CONCEPTS_DEFAULT_MODEL, else the embedded toy model]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub compute: crate::ctx::ComputeArgs,
}

pub fn run(args: ScanArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let model = crate::ctx::model_dir(args.model.as_deref(), ctx)?;
    let registry = ctx.registry()?;
    let source = Arc::new(RegistrySource::new(registry));
    let config = RuntimeConfig {
        compute: args.compute.resolve()?,
        ..RuntimeConfig::recommended()
    };
    let runtime = Runtime::load(&model, source, config)
        .with_context(|| format!("loading model `{}`", model.display()))?;
    let selection = if args.concepts.is_empty() {
        Selection::All
    } else {
        Selection::Named(args.concepts)
    };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let scores = tokio
        .block_on(runtime.recognise_all(ImageInput::File(args.image.clone()), selection))
        .with_context(|| format!("scanning `{}`", args.image.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let concepts: Vec<_> = scores.iter().map(concepts_server::score_json).collect();
        let doc = json!({
            "image": args.image.display().to_string(),
            "model": runtime.model_id(),
            "concepts": concepts,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    if scores.is_empty() {
        writeln!(
            out,
            "no concepts to scan for (install some with `concepts install`)"
        )?;
        return Ok(());
    }
    let width = scores
        .iter()
        .map(|s| s.concept.name.len().max(s.concept.identifier.len()))
        .max()
        .unwrap_or(0)
        .max("CONCEPT".len());
    writeln!(
        out,
        "{:<7}  {:<width$}  {:<width$}  {:>8}  {:>8}",
        "PRESENT", "CONCEPT", "IDENTIFIER", "P(YES)", "P(NO)"
    )?;
    for s in &scores {
        writeln!(
            out,
            "{:<7}  {:<width$}  {:<width$}  {:>8.4}  {:>8.4}",
            if s.present() { "yes" } else { "no" },
            s.concept.name,
            s.concept.identifier,
            s.p_yes,
            s.p_no
        )?;
    }
    Ok(())
}
