//! What every subcommand gets besides its own arguments.

use std::path::PathBuf;

use anyhow::Context;
use concept_registry::Registry;

/// Global options, resolved once in `main`.
#[derive(Debug)]
pub struct Ctx {
    /// `--home` / `$CONCEPTS_HOME`, if given.
    home: Option<PathBuf>,
}

impl Ctx {
    pub fn new(home: Option<PathBuf>) -> Ctx {
        Ctx { home }
    }

    /// The registry directory: `--home`, else `$CONCEPTS_HOME`, else `<data dir>/concepts`.
    pub fn home(&self) -> anyhow::Result<PathBuf> {
        match &self.home {
            Some(home) => Ok(home.clone()),
            None => dirs::data_dir()
                .map(|d| d.join("concepts"))
                .context("no platform data directory; set CONCEPTS_HOME or pass --home"),
        }
    }

    /// Opens (creating if needed) the registry. Commands that do not need it never call this, so
    /// `inspect`, `pack` and `migrate` leave the file system alone.
    pub fn registry(&self) -> anyhow::Result<Registry> {
        let home = self.home()?;
        Registry::open(&home).with_context(|| format!("opening registry `{}`", home.display()))
    }
}
