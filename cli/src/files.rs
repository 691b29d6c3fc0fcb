//! Reading user-supplied files and checking where outputs go.

use std::path::Path;

use anyhow::{bail, Context};

use crate::ctx::Ctx;

/// Reads a regular file of at most the format's size cap: an oversized, endless or special
/// file (FIFO, device) is refused instead of filling memory.
pub fn read_capped(path: &Path) -> anyhow::Result<Vec<u8>> {
    concepts_fs::read_bounded(path, concept_format::MAX_FILE_LEN)
        .with_context(|| format!("reading `{}`", path.display()))
}

/// Refuses an output path inside the registry folder: its files are written by the registry
/// alone (an export over `index.json` would lose every concept). Device nodes, FIFOs and
/// links are refused by the writer itself ([`concepts_fs::write_atomic`]).
pub fn check_output(path: &Path, ctx: &Ctx) -> anyhow::Result<()> {
    if let Ok(home) = ctx.home() {
        if concept_registry::is_inside(&home, path) {
            bail!(
                "`{}` is inside the registry `{}`; write outputs elsewhere",
                path.display(),
                home.display()
            );
        }
    }
    Ok(())
}
