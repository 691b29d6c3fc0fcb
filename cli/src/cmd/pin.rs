//! `concepts pin [SOURCE] [--clear] [--force]`

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use concept_format::{ConceptPackage, ModelFingerprint};

use crate::ctx::Ctx;
use crate::files::read_capped;

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// Pin to the base model of this concept: an installed name or identifier, or a `.ycpt` file.
    /// Without SOURCE or --clear, prints the current pin
    #[arg(value_name = "SOURCE", conflicts_with = "clear")]
    pub source: Option<String>,
    /// Remove the pin, so installs are no longer checked against a base model
    #[arg(long)]
    pub clear: bool,
    /// Pin even if installed concepts differ from the new pin in base-model hashes
    #[arg(long, requires = "source")]
    pub force: bool,
}

pub fn run(args: PinArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let mut out = std::io::stdout().lock();
    if args.clear {
        registry
            .pin_base_model(None, false)
            .context("clearing the pin")?;
        writeln!(
            out,
            "unpinned: installs are not checked against a base model"
        )?;
        return Ok(());
    }
    let Some(source) = args.source else {
        match registry.pinned_base_model().context("reading the pin")? {
            Some(f) => write_fingerprint(&mut out, &f)?,
            None => writeln!(out, "not pinned")?,
        }
        return Ok(());
    };
    let fingerprint = fingerprint_of(&registry, &source)?;
    registry
        .pin_base_model(Some(&fingerprint), args.force)
        .with_context(|| format!("pinning to the base model of `{source}`"))?;
    write_fingerprint(&mut out, &fingerprint)?;
    Ok(())
}

/// The base model of an installed concept, or else of a package file.
fn fingerprint_of(
    registry: &concept_registry::Registry,
    source: &str,
) -> anyhow::Result<ModelFingerprint> {
    match registry.get(source) {
        Ok(entry) => Ok(entry.summary.base_model),
        Err(concept_registry::RegistryError::NotInstalled { .. }) => {
            let path = Path::new(source);
            if !path.exists() {
                bail!("`{source}` is neither an installed concept nor a file");
            }
            let package = ConceptPackage::parse(&read_capped(path)?)
                .with_context(|| format!("`{source}` is not a valid concept package"))?;
            Ok(package.manifest().base_model.clone())
        }
        Err(e) => Err(e).context("reading the registry index"),
    }
}

fn write_fingerprint(out: &mut impl Write, f: &ModelFingerprint) -> std::io::Result<()> {
    writeln!(out, "pinned base model:")?;
    writeln!(out, "  architecture      {}", f.architecture)?;
    writeln!(out, "  hidden_size       {}", f.hidden_size)?;
    writeln!(out, "  vocab_size        {}", f.vocab_size)?;
    writeln!(out, "  tokenizer_sha256  {}", f.tokenizer_sha256)?;
    writeln!(out, "  embed_sha256      {}", f.embed_sha256)?;
    writeln!(out, "  lm_head_sha256    {}", f.lm_head_sha256)
}
