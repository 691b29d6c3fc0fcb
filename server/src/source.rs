//! [`RegistrySource`]: the runtime's [`ConceptSource`] over a concept registry.
//!
//! The runtime and the registry are sibling crates that do not know each other; this is
//! the glue. A snapshot is a [`RegistryView`] (one read of the index); packages are read,
//! re-hashed and parsed on first use.

use std::sync::Arc;

use concept_format::ConceptPackage;
use concept_registry::{Registry, RegistryError, RegistryView};
use concepts_runtime::api::{CatalogEntry, ConceptSnapshot, ConceptSource};
use concepts_runtime::RuntimeError;

/// Concepts installed in a registry, as the runtime reads them.
#[derive(Debug, Clone)]
pub struct RegistrySource {
    registry: Registry,
}

impl RegistrySource {
    pub fn new(registry: Registry) -> Self {
        RegistrySource { registry }
    }
}

struct RegistrySnapshot {
    view: RegistryView,
    entries: Vec<CatalogEntry>,
}

impl ConceptSource for RegistrySource {
    fn snapshot(&self) -> concepts_runtime::Result<Box<dyn ConceptSnapshot + '_>> {
        let view = self
            .registry
            .view()
            .map_err(|e| RuntimeError::Source(e.to_string()))?;
        let entries = view
            .entries()
            .iter()
            .map(|e| CatalogEntry {
                name: e.name.clone(),
                identifier: e.identifier.clone(),
                digest: e.sha256.as_hex().to_string(),
            })
            .collect();
        Ok(Box::new(RegistrySnapshot { view, entries }))
    }
}

impl ConceptSnapshot for RegistrySnapshot {
    fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    fn load(&self, entry: &CatalogEntry) -> concepts_runtime::Result<Arc<ConceptPackage>> {
        self.view.get(&entry.name).map_err(|e| match e {
            // Removed since the snapshot was taken: the runtime takes a new one.
            RegistryError::NotInstalled { .. } | RegistryError::MissingBlob { .. } => {
                RuntimeError::ConceptNotFound {
                    query: entry.name.clone(),
                }
            }
            other => RuntimeError::Source(format!("loading concept `{}`: {other}", entry.name)),
        })
    }
}
