//! `concepts verify`

use std::io::Write;

use anyhow::{bail, Context};

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {}

/// Prints every problem found; fails (exit 1) when there is at least one.
pub fn run(_args: VerifyArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let report = registry
        .verify()
        .with_context(|| format!("verifying registry `{}`", registry.root().display()))?;
    let mut out = std::io::stdout().lock();
    for damage in &report.damage {
        writeln!(out, "damaged: {damage}")?;
    }
    writeln!(
        out,
        "checked {} concept{}: {} problem{} found",
        report.checked,
        if report.checked == 1 { "" } else { "s" },
        report.damage.len(),
        if report.damage.len() == 1 { "" } else { "s" },
    )?;
    if report.is_clean() {
        return Ok(());
    }
    let leftovers = report.damage.iter().filter(|d| d.is_leftover()).count();
    let broken = report.damage.len() - leftovers;
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
