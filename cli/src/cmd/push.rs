//! `concepts push NAME REF`: publish an installed concept to an OCI registry.

use std::io::Write;

use anyhow::Context;
use concepts_oci::ConceptRef;

use crate::ctx::{oci_client, Ctx};

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Name or identifier of an installed concept
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to publish it: `[oci://]HOST[:PORT]/REPOSITORY[:TAG]`; without a tag, the
    /// concept's name is the tag
    #[arg(value_name = "REF")]
    pub reference: String,
}

pub fn run(args: PushArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let (entry, bytes) = registry
        .read_bytes(&args.name)
        .with_context(|| format!("pushing concept `{}`", args.name))?;
    let reference = ConceptRef::parse_or_tag(&args.reference, &entry.name)?;
    let pushed = oci_client()?
        .push(&bytes, &reference)
        .with_context(|| format!("pushing concept `{}` to {reference}", entry.name))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "pushed {} ({}) to {}",
        entry.name, entry.identifier, pushed.reference
    )?;
    writeln!(
        out,
        "pinned: {}",
        pushed.reference.pinned(&pushed.manifest_digest)
    )?;
    Ok(())
}
