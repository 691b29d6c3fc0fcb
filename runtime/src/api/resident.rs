//! The resident-concept cache: concepts converted to model tensors, kept in memory under a
//! byte budget and evicted least recently used first.
//!
//! Requests hold their concepts as `Arc`s, so evicting one that is in use only drops the
//! cache's reference: the request keeps computing with it, and the next request loads it
//! again. Entries are keyed by package digest, so a replaced package never serves a stale
//! tensor.

use std::collections::HashMap;
use std::sync::Arc;

use crate::concept_table::ConceptWeights;

use super::source::CatalogEntry;

/// A concept ready to activate: checked against the model and converted to its dtype.
#[derive(Debug)]
pub(crate) struct ResidentConcept {
    pub(crate) entry: CatalogEntry,
    pub(crate) weights: ConceptWeights,
    /// Bytes of tensor data.
    pub(crate) bytes: usize,
}

impl ResidentConcept {
    pub(crate) fn new(entry: CatalogEntry, weights: ConceptWeights) -> Self {
        let elements = (weights.k() + 2) * weights.d();
        let bytes = elements * weights.identifier().dtype().size_in_bytes();
        ResidentConcept {
            entry,
            weights,
            bytes,
        }
    }
}

struct Slot {
    concept: Arc<ResidentConcept>,
    last_used: u64,
}

/// The LRU map from package digest to resident concept.
pub(crate) struct ResidentCache {
    slots: HashMap<String, Slot>,
    clock: u64,
    bytes: usize,
    budget: usize,
}

impl ResidentCache {
    /// An empty cache that keeps at most `budget` bytes of concept tensors.
    pub(crate) fn new(budget: usize) -> Self {
        ResidentCache {
            slots: HashMap::new(),
            clock: 0,
            bytes: 0,
            budget,
        }
    }

    /// The concept with this digest, marked as just used.
    pub(crate) fn get(&mut self, digest: &str) -> Option<Arc<ResidentConcept>> {
        self.clock += 1;
        let slot = self.slots.get_mut(digest)?;
        slot.last_used = self.clock;
        Some(Arc::clone(&slot.concept))
    }

    /// Adds a concept (or returns the copy another thread added first), then evicts least
    /// recently used concepts until the budget holds.
    pub(crate) fn insert(&mut self, concept: Arc<ResidentConcept>) -> Arc<ResidentConcept> {
        if let Some(existing) = self.get(&concept.entry.digest) {
            return existing;
        }
        self.clock += 1;
        self.bytes += concept.bytes;
        self.slots.insert(
            concept.entry.digest.clone(),
            Slot {
                concept: Arc::clone(&concept),
                last_used: self.clock,
            },
        );
        while self.bytes > self.budget {
            let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(d, _)| d.clone())
            else {
                break;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.bytes -= slot.concept.bytes;
                tracing::debug!(name = %slot.concept.entry.name, "evicted resident concept");
            }
        }
        concept
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, digest: &str) -> bool {
        self.slots.contains_key(digest)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// A concept with k = 2 and d = 4 in f32: 16 elements, 64 bytes.
    fn concept(name: &str) -> Arc<ResidentConcept> {
        let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let weights = ConceptWeights::new(t(&[4]), t(&[2, 4]), t(&[4])).unwrap();
        let entry = CatalogEntry {
            name: name.into(),
            identifier: format!("<{name}>"),
            digest: format!("{name}-digest"),
        };
        Arc::new(ResidentConcept::new(entry, weights))
    }

    #[test]
    fn least_recently_used_concepts_are_evicted_past_the_budget() {
        let mut cache = ResidentCache::new(3 * 64);
        for name in ["a", "b", "c"] {
            cache.insert(concept(name));
        }
        assert_eq!((cache.len(), cache.bytes()), (3, 192));
        // Touch `a`, so `b` is now the least recently used.
        assert!(cache.get("a-digest").is_some());
        cache.insert(concept("d"));
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains("b-digest"));
        for kept in ["a-digest", "c-digest", "d-digest"] {
            assert!(cache.contains(kept), "{kept}");
        }
    }

    #[test]
    fn a_second_insert_of_the_same_digest_returns_the_first() {
        let mut cache = ResidentCache::new(1024);
        let first = cache.insert(concept("a"));
        let second = cache.insert(concept("a"));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(cache.bytes(), 64);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let mut cache = ResidentCache::new(0);
        let c = cache.insert(concept("a"));
        assert_eq!(c.entry.name, "a");
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }
}
