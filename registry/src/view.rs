//! [`RegistryView`]: a read-only snapshot for the runtime, with packages loaded on first use.

use std::sync::Arc;

use concept_format::ConceptPackage;
use dashmap::DashMap;

use crate::error::{RegistryError, Result};
use crate::index::{Digest, Entry};
use crate::Registry;

/// A snapshot of the index taken by [`Registry::view`]; packages are read, re-hashed and parsed
/// the first time they are asked for, then shared as `Arc`s. Safe to use from many threads.
///
/// The snapshot does not follow later installs or removals; take a new view to see them. A package
/// removed after the snapshot was taken fails to load with [`RegistryError::MissingBlob`] unless it
/// was already loaded.
#[derive(Debug)]
pub struct RegistryView {
    registry: Registry,
    entries: Arc<[Entry]>,
    loaded: DashMap<Digest, Arc<ConceptPackage>>,
}

impl RegistryView {
    pub(crate) fn new(registry: Registry, entries: Arc<[Entry]>) -> RegistryView {
        RegistryView {
            registry,
            entries,
            loaded: DashMap::new(),
        }
    }

    /// The snapshot's entries, sorted by name.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry with this name or, failing that, this identifier.
    pub fn entry(&self, query: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name == query)
            .or_else(|| self.entries.iter().find(|e| e.identifier == query))
    }

    /// The package with this name or identifier, loaded on first use.
    pub fn get(&self, query: &str) -> Result<Arc<ConceptPackage>> {
        let entry = self
            .entry(query)
            .ok_or_else(|| RegistryError::NotInstalled {
                query: query.to_owned(),
            })?;
        if let Some(package) = self.loaded.get(&entry.sha256) {
            return Ok(Arc::clone(&package));
        }
        let bytes = {
            let _lock = self.registry.lock(false)?;
            self.registry.read_blob(entry)?
        };
        let package = Arc::new(crate::parse_blob(entry, &bytes)?);
        tracing::debug!(name = %entry.name, "loaded concept");
        // Two threads may load the same package at once; the first insert wins and both get it.
        Ok(Arc::clone(
            &self.loaded.entry(entry.sha256.clone()).or_insert(package),
        ))
    }

    /// Number of packages loaded so far.
    pub fn loaded_count(&self) -> usize {
        self.loaded.len()
    }
}
