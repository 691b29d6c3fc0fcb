//! `concepts export NAME -o FILE`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Name or identifier of an installed concept
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to write the package file (replaced atomically if it exists)
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

pub fn run(args: ExportArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let entry = registry.export(&args.name, &args.output).with_context(|| {
        format!(
            "exporting concept `{}` to `{}`",
            args.name,
            args.output.display()
        )
    })?;
    writeln!(
        std::io::stdout().lock(),
        "exported {} ({}) to {}",
        entry.name,
        entry.identifier,
        args.output.display()
    )?;
    Ok(())
}
