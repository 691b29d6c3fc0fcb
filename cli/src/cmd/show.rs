//! `concepts show NAME [--json]`

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::render::{self, EntryJson, TensorJson};

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Name or identifier of an installed concept
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print JSON: `{"installed": <list --json item>, "manifest": {...}, "tensors": [...]}`
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ShowJson<'a> {
    installed: EntryJson<'a>,
    manifest: &'a concept_format::Manifest,
    tensors: Vec<TensorJson<'a>>,
}

pub fn run(args: ShowArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let (entry, package) = registry
        .load(&args.name)
        .with_context(|| format!("loading concept `{}`", args.name))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let stats = package.tensors().stats();
        return render::write_json(
            &mut out,
            &ShowJson {
                installed: EntryJson::new(&entry),
                manifest: package.manifest(),
                tensors: stats.iter().map(TensorJson::new).collect(),
            },
        );
    }
    writeln!(out, "installed:  {} ({})", entry.name, entry.identifier)?;
    writeln!(out, "sha256:     {}", entry.sha256)?;
    writeln!(out, "size:       {}", render::bytes(entry.size))?;
    writeln!(
        out,
        "blob:       {}",
        registry.blob_path(&entry.sha256).display()
    )?;
    writeln!(out)?;
    render::write_package(&mut out, &package)?;
    Ok(())
}
