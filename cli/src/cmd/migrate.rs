//! `concepts migrate FILE [-o OUT]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use concept_format::ConceptPackage;

use crate::ctx::Ctx;
use crate::files::read_capped;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The `.ycpt` package file to rewrite
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Where to write the result [default: FILE, replaced atomically]
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,
}

/// Validates FILE and writes it at the current format minor in canonical form. With v1.0 the only
/// version, this validates and rewrites canonically.
pub fn run(args: MigrateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let bytes = read_capped(&args.file)?;
    let context = || format!("migrating `{}`", args.file.display());
    let (major, minor) = concept_format::peek_version(&bytes).with_context(context)?;
    let migrated = concept_format::migrate(&bytes).with_context(context)?;
    // `migrate` returns canonical bytes of a validated package; parse again for the atomic writer.
    let package = ConceptPackage::parse(&migrated).with_context(context)?;
    let output = args.output.as_ref().unwrap_or(&args.file);
    crate::files::check_output(output, ctx)?;
    package
        .write_file_atomic(output)
        .with_context(|| format!("writing `{}`", output.display()))?;
    let change = if migrated == bytes {
        "unchanged"
    } else {
        "rewritten"
    };
    writeln!(
        std::io::stdout().lock(),
        "{}: v{major}.{minor} -> v{}.{} ({change}) -> {}",
        args.file.display(),
        concept_format::FORMAT_MAJOR,
        concept_format::FORMAT_MINOR,
        output.display()
    )?;
    Ok(())
}
