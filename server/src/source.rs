//! [`RegistrySource`]: the runtime's [`ConceptSource`] over a concept registry, optionally
//! filled on demand from an OCI repository ([`RemoteRepository`]).
//!
//! The runtime and the registry are sibling crates that do not know each other; this is
//! the glue. A snapshot is a [`RegistryView`] (one read of the index); packages are read,
//! re-hashed and parsed on first use.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concept_format::ConceptPackage;
use concept_registry::{InstallOptions, Registry, RegistryError, RegistryView};
use concepts_oci::{OciError, RepositoryRef};
use concepts_runtime::api::{CatalogEntry, ConceptSnapshot, ConceptSource};
use concepts_runtime::RuntimeError;

/// Concepts installed in a registry, as the runtime reads them.
#[derive(Debug, Clone)]
pub struct RegistrySource {
    registry: Registry,
    remote: Option<Arc<RemoteRepository>>,
}

impl RegistrySource {
    pub fn new(registry: Registry) -> Self {
        RegistrySource {
            registry,
            remote: None,
        }
    }

    /// A source that pulls a named concept it lacks from `remote` (`REPO:NAME`) into the
    /// registry, its local content-addressed cache: how stateless replicas serve the concepts
    /// of one OCI repository (`concepts serve --concepts-from oci://REPO`).
    pub fn with_remote(registry: Registry, remote: RemoteRepository) -> Self {
        RegistrySource {
            registry,
            remote: Some(Arc::new(remote)),
        }
    }
}

/// An OCI repository whose tags are concept names.
#[derive(Debug)]
pub struct RemoteRepository {
    repository: RepositoryRef,
    client: concepts_oci::Client,
    /// Names the repository lacked, and when: asked again only after [`MISS_TTL`], so a
    /// client repeating an unknown name does not turn every request into a registry call.
    misses: Mutex<Vec<(String, Instant)>>,
}

/// How long a name the repository lacked is remembered.
const MISS_TTL: Duration = Duration::from_secs(10);
/// How many remembered misses at most.
const MAX_MISSES: usize = 1024;

impl RemoteRepository {
    pub fn new(repository: RepositoryRef, client: concepts_oci::Client) -> Self {
        RemoteRepository {
            repository,
            client,
            misses: Mutex::new(Vec::new()),
        }
    }

    /// Fails unless the registry answers (and accepts the credentials): checked at start-up,
    /// so a mistyped host or a registry that is down stops the server with its address.
    pub fn check(&self) -> Result<(), OciError> {
        self.client.check(&self.repository.concept("probe")?)
    }

    /// The repository.
    pub fn repository(&self) -> &RepositoryRef {
        &self.repository
    }

    fn missed_recently(&self, name: &str) -> bool {
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        misses.retain(|(_, at)| at.elapsed() < MISS_TTL);
        misses.iter().any(|(n, _)| n == name)
    }

    fn remember_miss(&self, name: &str) {
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses.len() >= MAX_MISSES {
            misses.remove(0);
        }
        misses.push((name.to_string(), Instant::now()));
    }

    /// Pulls `REPO:name` into `registry`; `false` when the repository has no such tag.
    fn fetch_into(&self, registry: &Registry, query: &str) -> Result<bool, RuntimeError> {
        // `<bo>` asks for `bo`; anything that cannot be a tag cannot be in the repository.
        let name = query
            .strip_prefix('<')
            .and_then(|q| q.strip_suffix('>'))
            .unwrap_or(query);
        if self.missed_recently(name) {
            return Ok(false);
        }
        let Ok(reference) = self.repository.concept(name) else {
            return Ok(false);
        };
        let source = |e: &dyn std::fmt::Display| {
            RuntimeError::Source(format!(
                "fetching concept `{name}` from {}: {e}",
                self.repository
            ))
        };
        let pulled = match self.client.pull(&reference) {
            Ok(pulled) => pulled,
            Err(OciError::NotFound { .. }) => {
                self.remember_miss(name);
                return Ok(false);
            }
            Err(e) => return Err(source(&e)),
        };
        let found = &pulled.package.manifest().name;
        if found != name {
            return Err(source(&format!(
                "{} holds the concept `{found}`, not `{name}`",
                pulled.pinned
            )));
        }
        let origin = format!("{}{}", concepts_oci::SCHEME, pulled.pinned);
        registry
            .install_bytes_from(
                &pulled.bytes,
                &origin,
                &InstallOptions {
                    replace: false,
                    force: false,
                },
            )
            .map_err(|e| source(&e))?;
        tracing::info!(%name, reference = %pulled.pinned, "concept pulled into the local registry");
        Ok(true)
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

    fn fetch(&self, query: &str) -> concepts_runtime::Result<bool> {
        match &self.remote {
            Some(remote) => remote.fetch_into(&self.registry, query),
            None => Ok(false),
        }
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
