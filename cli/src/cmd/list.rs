//! `concepts list [--json]`

use std::io::Write;

use anyhow::Context;

use crate::ctx::Ctx;
use crate::render::{self, EntryJson};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table
    ///
    /// The output is a JSON array sorted by name, one object per installed concept:
    /// `{"name", "identifier", "display_name", "category", "k", "d", "dtype", "sha256", "size",
    /// "base_model": {"architecture", "hidden_size", "vocab_size", "tokenizer_sha256",
    /// "embed_sha256", "lm_head_sha256"}}`; an empty registry prints `[]`.
    #[arg(long)]
    pub json: bool,
}

/// Prints the installed concepts.
///
/// `--json` prints an array of [`EntryJson`] objects sorted by name (see its doc comment for the
/// exact shape), `[]` when nothing is installed.
pub fn run(args: ListArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let entries = registry.list().context("listing installed concepts")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let items: Vec<EntryJson<'_>> = entries.iter().map(EntryJson::new).collect();
        return render::write_json(&mut out, &items);
    }
    if entries.is_empty() {
        writeln!(
            out,
            "no concepts installed in `{}`",
            registry.root().display()
        )?;
        return Ok(());
    }
    render::write_table(
        &mut out,
        [
            "NAME",
            "IDENTIFIER",
            "CATEGORY",
            "K",
            "D",
            "DTYPE",
            "SIZE",
            "SHA256",
            "DISPLAY NAME",
        ],
        entries.iter().map(|e| {
            [
                e.name.clone(),
                e.identifier.clone(),
                e.summary.category.to_string(),
                e.summary.k.to_string(),
                e.summary.d.to_string(),
                e.summary.dtype.to_string(),
                render::bytes(e.size),
                e.sha256.short().to_owned(),
                e.summary.display_name.clone(),
            ]
        }),
    )?;
    Ok(())
}
