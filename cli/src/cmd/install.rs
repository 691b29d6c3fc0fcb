//! `concepts install FILE [--replace] [--force]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use concept_registry::{Compatibility, InstallOptions, InstallOutcome};

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The `.ycpt` package file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Replace installed concepts that use the package's name or identifier
    #[arg(long)]
    pub replace: bool,
    /// Install even if the base-model hashes differ from the registry's pinned base model
    /// (architecture and dimensions must still match)
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: InstallArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let options = InstallOptions {
        replace: args.replace,
        force: args.force,
    };
    let report = registry
        .install_file(&args.file, &options)
        .with_context(|| format!("installing `{}`", args.file.display()))?;
    if let Some(Compatibility::Forced(overridden)) = &report.compatibility {
        for m in overridden {
            eprintln!("concepts: warning: forced past base-model difference: {m}");
        }
    }
    let e = &report.entry;
    let mut out = std::io::stdout().lock();
    for old in &report.replaced {
        writeln!(
            out,
            "replaced {} ({}) sha256:{}",
            old.name,
            old.identifier,
            old.sha256.short()
        )?;
    }
    match report.outcome {
        InstallOutcome::Installed => writeln!(
            out,
            "installed {} ({}) sha256:{}",
            e.name,
            e.identifier,
            e.sha256.short()
        )?,
        InstallOutcome::AlreadyInstalled => writeln!(
            out,
            "{} ({}) sha256:{} is already installed; nothing to do",
            e.name,
            e.identifier,
            e.sha256.short()
        )?,
    }
    Ok(())
}
