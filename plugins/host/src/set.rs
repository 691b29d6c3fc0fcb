//! Picking the three stages by plugin id (`--miner`, `--trainer`, `--linker`).

use concepts_plugin_api::Role;

use crate::builtin::{self, DEFAULT_LINKER, DEFAULT_MINER, DEFAULT_TRAINER};
use crate::host::PluginHost;
use crate::roles::{MetadataLinker, NegativeMiner, Trainer};
use crate::store::PluginStore;
use crate::PluginError;

/// Which plugin to use for each stage; `None` means the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSelection {
    /// `--miner`
    pub miner: Option<String>,
    /// `--trainer`
    pub trainer: Option<String>,
    /// `--linker`
    pub linker: Option<String>,
}

/// The three stages of a training pipeline, resolved and loaded.
pub struct PluginSet {
    /// The negative miner
    pub miner: Box<dyn NegativeMiner>,
    /// The trainer
    pub trainer: Box<dyn Trainer>,
    /// The metadata linker
    pub linker: Box<dyn MetadataLinker>,
}

impl PluginSet {
    /// The built-in default miner, trainer and linker, run in-process; loads nothing.
    pub fn builtin() -> PluginSet {
        PluginSet {
            miner: builtin::default_miner(None),
            trainer: builtin::default_trainer(None),
            linker: builtin::default_linker(None),
        }
    }

    /// The three stage ids, in the order miner, trainer, linker.
    pub fn ids(&self) -> [&str; 3] {
        [self.miner.id(), self.trainer.id(), self.linker.id()]
    }

    /// Resolves each selected id — an installed plugin of that id first, then a built-in — and
    /// loads it in its role. Unselected stages use `concepts.default-miner`, `-trainer`, `-linker`.
    pub fn resolve(
        host: &PluginHost,
        store: Option<&PluginStore>,
        selection: &PluginSelection,
    ) -> Result<PluginSet, PluginError> {
        let pick = |id: &Option<String>, default: &str| id.clone().unwrap_or(default.to_owned());
        let miner = pick(&selection.miner, DEFAULT_MINER);
        let trainer = pick(&selection.trainer, DEFAULT_TRAINER);
        let linker = pick(&selection.linker, DEFAULT_LINKER);
        Ok(PluginSet {
            miner: resolve_one(
                host,
                store,
                &miner,
                Role::Miner,
                |p| p.into_miner(),
                || builtin::default_miner(host.config().progress.clone()),
            )?,
            trainer: resolve_one(
                host,
                store,
                &trainer,
                Role::Trainer,
                |p| p.into_trainer(),
                || builtin::default_trainer(host.config().progress.clone()),
            )?,
            linker: resolve_one(
                host,
                store,
                &linker,
                Role::Linker,
                |p| p.into_linker(),
                || builtin::default_linker(host.config().progress.clone()),
            )?,
        })
    }
}

fn resolve_one<T: ?Sized>(
    host: &PluginHost,
    store: Option<&PluginStore>,
    id: &str,
    role: Role,
    into: impl FnOnce(crate::host::LoadedPlugin) -> Result<Box<T>, PluginError>,
    builtin: impl FnOnce() -> Box<T>,
) -> Result<Box<T>, PluginError> {
    if let Some(store) = store {
        if let Some(installed) = store.get(id)? {
            return into(host.load(installed.manifest(), installed.dir())?);
        }
    }
    match builtin::builtin_role(id) {
        Some(found) if found == role => Ok(builtin()),
        Some(found) => Err(PluginError::WrongRole {
            id: id.to_owned(),
            expected: role,
            found,
        }),
        None => Err(PluginError::NotFound { id: id.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostConfig;

    #[test]
    fn built_ins_resolve_in_their_role_only() {
        assert_eq!(
            PluginSet::builtin().ids(),
            [DEFAULT_MINER, DEFAULT_TRAINER, DEFAULT_LINKER]
        );
        let host = PluginHost::new(HostConfig::sandboxed());
        let pick = |miner: &str| PluginSelection {
            miner: Some(miner.to_owned()),
            trainer: None,
            linker: None,
        };
        let set = PluginSet::resolve(&host, None, &pick(DEFAULT_MINER)).unwrap();
        assert_eq!(set.ids(), PluginSet::builtin().ids());
        let wrong = PluginSet::resolve(&host, None, &pick(DEFAULT_TRAINER)).err();
        assert!(
            matches!(wrong, Some(PluginError::WrongRole { .. })),
            "{wrong:?}"
        );
        let unknown = PluginSet::resolve(&host, None, &pick("acme.miner")).err();
        assert!(
            matches!(unknown, Some(PluginError::NotFound { .. })),
            "{unknown:?}"
        );
    }
}
