//! `concepts pull REF [-o FILE]`: download a concept package from an OCI registry, every
//! digest verified, to a file (`concepts install oci://REF` installs it directly).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use concepts_oci::ConceptRef;

use crate::ctx::{oci_client, Ctx};

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The concept: `[oci://]HOST[:PORT]/REPOSITORY:TAG` or `…@sha256:HEX`
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Where to write the package (replaced atomically if it exists); default
    /// `NAME.ycpt` in the current folder, NAME being the package's own name
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: PullArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    let reference = ConceptRef::parse(&args.reference)?;
    let pulled = oci_client()?
        .pull(&reference)
        .with_context(|| format!("pulling {reference}"))?;
    let m = pulled.package.manifest();
    let path = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.ycpt", m.name)));
    concepts_fs::write_atomic(&path, &pulled.bytes)
        .with_context(|| format!("writing the package pulled from {reference}"))?;
    writeln!(
        std::io::stdout().lock(),
        "pulled {} ({}) from {} to {}",
        m.name,
        m.identifier,
        pulled.pinned,
        path.display()
    )?;
    Ok(())
}
