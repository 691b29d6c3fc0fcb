//! `concepts gc`

use std::io::Write;

use anyhow::Context;

use crate::ctx::Ctx;
use crate::render;

#[derive(Debug, clap::Args)]
pub struct GcArgs {}

pub fn run(_args: GcArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let report = registry
        .gc()
        .with_context(|| format!("collecting garbage in `{}`", registry.root().display()))?;
    let mut out = std::io::stdout().lock();
    for path in report
        .removed_blobs
        .iter()
        .chain(&report.removed_temp_files)
    {
        writeln!(out, "deleted {}", path.display())?;
    }
    writeln!(
        out,
        "removed {} unreferenced blob(s) and {} temp file(s), freed {}",
        report.removed_blobs.len(),
        report.removed_temp_files.len(),
        render::bytes(report.bytes_freed)
    )?;
    Ok(())
}
