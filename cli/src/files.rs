//! Reading user-supplied files.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// Reads a file, stopping one byte past the format's size cap so that an oversized (or endless)
/// file is rejected by the parser instead of filling memory.
pub fn read_capped(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(concept_format::MAX_FILE_LEN + 1)
                .read_to_end(&mut bytes)
        })
        .with_context(|| format!("reading `{}`", path.display()))?;
    Ok(bytes)
}
