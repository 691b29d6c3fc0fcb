//! `concepts verify [--repair]`

use std::io::Write;

use anyhow::{bail, Context};
use concept_registry::Registry;

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Rebuild a lost or damaged index from the stored package files (nothing is deleted;
    /// blobs that cannot be indexed are listed), then verify again
    #[arg(long)]
    pub repair: bool,
}

/// Prints every problem found; fails (exit 1) when there is at least one.
pub fn run(args: VerifyArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.repair {
        let home = ctx.home()?;
        let report = Registry::rebuild_index(&home)
            .with_context(|| format!("rebuilding the index of `{}`", home.display()))?;
        for entry in &report.indexed {
            writeln!(
                out,
                "indexed: {} ({}) sha256:{}",
                entry.name,
                entry.identifier,
                entry.sha256.short()
            )?;
        }
        for (path, why) in &report.skipped {
            writeln!(out, "not indexed: {}: {why}", path.display())?;
        }
        writeln!(
            out,
            "rebuilt the index: {} concept(s){}{}",
            report.indexed.len(),
            if report.old_index_readable {
                ""
            } else {
                " (the old index was unreadable)"
            },
            if report.kept_pin {
                ", base-model pin kept"
            } else {
                ""
            },
        )?;
    }
    let registry = ctx.registry()?;
    let report = registry
        .verify()
        .with_context(|| format!("verifying registry `{}`", registry.root().display()))?;
    for damage in &report.damage {
        let label = if damage.is_foreign() {
            "note"
        } else {
            "damaged"
        };
        writeln!(out, "{label}: {damage}")?;
    }
    let problems = report.damage.iter().filter(|d| !d.is_foreign()).count();
    writeln!(
        out,
        "checked {} concept{}: {} problem{} found",
        report.checked,
        if report.checked == 1 { "" } else { "s" },
        problems,
        if problems == 1 { "" } else { "s" },
    )?;
    if problems == 0 {
        return Ok(());
    }
    let leftovers = report.damage.iter().filter(|d| d.is_leftover()).count();
    let missing_index = report
        .damage
        .iter()
        .any(|d| matches!(d, concept_registry::Damage::IndexMissing { .. }));
    if missing_index {
        bail!("the registry index is missing; `concepts verify --repair` rebuilds it from the package files");
    }
    let broken = problems - leftovers;
    match (broken, leftovers) {
        (0, n) => bail!("registry has {n} crash leftover(s); `concepts gc` removes them"),
        (b, 0) => bail!(
            "registry has {b} damaged concept(s); reinstall them with `concepts install --replace`"
        ),
        (b, n) => bail!(
            "registry has {b} damaged concept(s) and {n} crash leftover(s); reinstall the \
             damaged ones with `concepts install --replace` and run `concepts gc`"
        ),
    }
}
