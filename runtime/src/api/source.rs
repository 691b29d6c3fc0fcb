//! Where a [`Runtime`](super::Runtime) reads concepts from: the [`ConceptSource`] trait and
//! [`MemorySource`], an in-memory implementation.
//!
//! Key design choice: a source hands out *snapshots*. A request resolves every concept it
//! needs against one [`ConceptSnapshot`], so installs and removals that happen meanwhile
//! are either wholly visible to it or not at all. The runtime does not depend on the
//! registry crate (the two are siblings); `concepts-server` implements this trait over
//! `concept_registry::Registry`.

use std::sync::{Arc, Mutex};

use concept_format::ConceptPackage;
use sha2::{Digest, Sha256};

use crate::error::{Result, RuntimeError};

/// One concept a source offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Unique name (`bo`).
    pub name: String,
    /// Unique identifier marker (`<bo>`).
    pub identifier: String,
    /// Content address of the package (hex sha256 of its file bytes): the key of the
    /// runtime's resident-concept cache, so a replaced package is never confused with the
    /// one it replaced.
    pub digest: String,
}

/// A store of concept packages that can be read while it changes.
pub trait ConceptSource: Send + Sync {
    /// A consistent view of the concepts installed now.
    fn snapshot(&self) -> Result<Box<dyn ConceptSnapshot + '_>>;

    /// Makes the concept named `query` available when this source can fetch concepts on
    /// demand (a server backed by a remote repository), returning whether it now has it.
    ///
    /// The runtime calls this, on a blocking thread, when a request names a concept that its
    /// snapshot lacks, then takes a new snapshot. Concepts found only through identifiers in a
    /// prompt's text are not fetched: naming them is what asks for them. The default fetches
    /// nothing.
    fn fetch(&self, query: &str) -> Result<bool> {
        let _ = query;
        Ok(false)
    }
}

/// A fixed set of concepts, as seen at one moment.
pub trait ConceptSnapshot {
    /// The concepts, each name and identifier at most once.
    fn entries(&self) -> &[CatalogEntry];

    /// The package of one of [`ConceptSnapshot::entries`].
    ///
    /// Fails with [`RuntimeError::ConceptNotFound`] when the package was removed after the
    /// snapshot was taken (the runtime then retries with a fresh snapshot), and with
    /// [`RuntimeError::Source`] when it cannot be read.
    fn load(&self, entry: &CatalogEntry) -> Result<Arc<ConceptPackage>>;
}

/// The entry with this name, else this identifier, else the identifier `<query>`.
pub fn find_entry<'a>(entries: &'a [CatalogEntry], query: &str) -> Option<&'a CatalogEntry> {
    entries
        .iter()
        .find(|e| e.name == query)
        .or_else(|| entries.iter().find(|e| e.identifier == query))
        .or_else(|| {
            let bracketed = format!("<{query}>");
            entries.iter().find(|e| e.identifier == bracketed)
        })
}

/// The hex sha256 of a package's file bytes.
pub fn package_digest(package: &ConceptPackage) -> String {
    hex::encode(Sha256::digest(package.to_bytes()))
}

type Packages = Arc<Vec<(CatalogEntry, Arc<ConceptPackage>)>>;

/// Concept packages held in memory, for tests and for hosts that manage packages
/// themselves. Snapshots share the package list (copy-on-write), so taking one is cheap.
#[derive(Default)]
pub struct MemorySource {
    packages: Mutex<Packages>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a package, replacing any concept with the same name or identifier.
    pub fn insert(&self, package: ConceptPackage) -> CatalogEntry {
        let m = package.manifest();
        let entry = CatalogEntry {
            name: m.name.clone(),
            identifier: m.identifier.clone(),
            digest: package_digest(&package),
        };
        let mut guard = self.lock();
        let mut next: Vec<_> = guard
            .iter()
            .filter(|(e, _)| e.name != entry.name && e.identifier != entry.identifier)
            .cloned()
            .collect();
        next.push((entry.clone(), Arc::new(package)));
        next.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        *guard = Arc::new(next);
        entry
    }

    /// Removes the concept with this name or identifier.
    pub fn remove(&self, query: &str) -> Option<CatalogEntry> {
        let mut guard = self.lock();
        let entries: Vec<CatalogEntry> = guard.iter().map(|(e, _)| e.clone()).collect();
        let found = find_entry(&entries, query)?.clone();
        let next = guard
            .iter()
            .filter(|(e, _)| e.name != found.name)
            .cloned()
            .collect();
        *guard = Arc::new(next);
        Some(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Packages> {
        // The list is replaced whole, so a panic elsewhere cannot leave it half-changed.
        self.packages.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct MemorySnapshot {
    entries: Vec<CatalogEntry>,
    packages: Packages,
}

impl ConceptSource for MemorySource {
    fn snapshot(&self) -> Result<Box<dyn ConceptSnapshot + '_>> {
        let packages = Arc::clone(&self.lock());
        Ok(Box::new(MemorySnapshot {
            entries: packages.iter().map(|(e, _)| e.clone()).collect(),
            packages,
        }))
    }
}

impl ConceptSnapshot for MemorySnapshot {
    fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    fn load(&self, entry: &CatalogEntry) -> Result<Arc<ConceptPackage>> {
        self.packages
            .iter()
            .find(|(e, _)| e.digest == entry.digest)
            .map(|(_, p)| Arc::clone(p))
            .ok_or_else(|| RuntimeError::ConceptNotFound {
                query: entry.name.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, identifier: &str) -> CatalogEntry {
        CatalogEntry {
            name: name.into(),
            identifier: identifier.into(),
            digest: format!("{name}-digest"),
        }
    }

    #[test]
    fn entries_are_found_by_name_identifier_or_bare_identifier() {
        let entries = [entry("bo", "<dog>"), entry("dog", "<kiki>")];
        assert_eq!(find_entry(&entries, "bo").map(|e| &e.name[..]), Some("bo"));
        // A name wins over an identifier's bare form.
        assert_eq!(
            find_entry(&entries, "dog").map(|e| &e.name[..]),
            Some("dog")
        );
        assert_eq!(
            find_entry(&entries, "<dog>").map(|e| &e.name[..]),
            Some("bo")
        );
        assert_eq!(
            find_entry(&entries, "kiki").map(|e| &e.name[..]),
            Some("dog")
        );
        assert!(find_entry(&entries, "<bo>").is_none());
        assert!(find_entry(&entries, "ki").is_none());
    }
}
