//! `concepts remove NAME`

use std::io::Write;

use anyhow::Context;

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// Name or identifier of an installed concept
    #[arg(value_name = "NAME")]
    pub name: String,
}

pub fn run(args: RemoveArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let entry = registry
        .remove(&args.name)
        .with_context(|| format!("removing concept `{}`", args.name))?;
    writeln!(
        std::io::stdout().lock(),
        "removed {} ({}) sha256:{}",
        entry.name,
        entry.identifier,
        entry.sha256.short()
    )?;
    Ok(())
}
