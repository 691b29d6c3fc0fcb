//! Keys and values of the prompt prefixes recent chats began with, so a chat that starts as an
//! earlier one did (the system text; the same user's personal prompts; the same question
//! again) runs only the rest of its prompt: automatic prefix caching, as vLLM does, matched by
//! the longest common prefix over a few entries.
//!
//! A position's keys and values depend on the tokens up to it and on what they stand for, so
//! prompts are compared by [`prompt_key`]: base-vocabulary ids as they are, a concept's tokens
//! by the package's digest (an id means another concept in another chat), and nothing past
//! the first image (two images are never known to be equal).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::concept_table::{ConceptTable, ConceptToken};
use crate::error::Result;
use crate::model::KvCache;

/// The shortest prefix worth keeping: shorter ones cost little to run again.
const MIN_PREFIX: usize = 8;

/// Most prefixes kept, whatever their size: a lookup compares the prompt with every one.
const MAX_ENTRIES: usize = 64;

/// What each position of a prompt stands for, up to its first image or unknown token.
pub(crate) fn prompt_key(
    ids: &[u32],
    table: &ConceptTable,
    digests: &HashMap<String, String>,
    image_token_id: u32,
) -> Vec<u64> {
    let base = table.base_vocab() as u32;
    let concept = |digest: &str, index: usize| {
        let mut h = DefaultHasher::new();
        (digest, index).hash(&mut h);
        h.finish() | 1 << 63
    };
    ids.iter()
        .map_while(|&id| {
            if id == image_token_id {
                return None;
            }
            if id < base {
                return Some(u64::from(id));
            }
            match table.token(id)? {
                ConceptToken::Identifier { concept: name } => Some(concept(digests.get(name)?, 0)),
                ConceptToken::Latent {
                    concept: name,
                    index,
                } => Some(concept(digests.get(name)?, index + 1)),
            }
        })
        .collect()
}

/// Prompt prefixes and their keys and values, within a byte budget and [`MAX_ENTRIES`]
/// (least recently used first out).
pub(crate) struct PrefixCache {
    budget: usize,
    clock: u64,
    entries: Vec<Entry>,
}

struct Entry {
    key: Vec<u64>,
    cache: KvCache,
    used: u64,
}

impl PrefixCache {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        PrefixCache {
            budget: budget_bytes,
            clock: 0,
            entries: Vec::new(),
        }
    }

    /// A cache holding the longest prefix of `key` an entry shares, at most `limit` positions
    /// (a prompt must run at least its last position itself); `None` below [`MIN_PREFIX`].
    pub(crate) fn lookup(&mut self, key: &[u64], limit: usize) -> Option<KvCache> {
        self.clock += 1;
        let (best, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.key, key).min(limit)))
            .max_by_key(|&(_, n)| n)?;
        if shared < MIN_PREFIX {
            return None;
        }
        let entry = &mut self.entries[best];
        entry.used = self.clock;
        let mut cache = entry.cache.clone();
        cache.truncate(shared);
        Some(cache)
    }

    /// Keeps the first `key.len()` positions of `cache` (as many as it holds), unless an entry
    /// already shares all but fewer than [`MIN_PREFIX`] of them (a prompt that differs from an
    /// earlier one only in its last few tokens, as a new question in the same chat does: running
    /// those few again costs less than copying the whole prefix at every request); an entry
    /// this one extends is replaced.
    pub(crate) fn insert(&mut self, key: &[u64], cache: &KvCache) -> Result<()> {
        let n = key.len().min(cache.len());
        if n < MIN_PREFIX || self.budget == 0 {
            return Ok(());
        }
        let key = &key[..n];
        self.clock += 1;
        let closest = self
            .entries
            .iter_mut()
            .map(|e| (common_prefix(&e.key, key), e))
            .max_by_key(|(shared, _)| *shared);
        if let Some((shared, e)) = closest {
            if n - shared < MIN_PREFIX {
                e.used = self.clock;
                return Ok(());
            }
        }
        let mut kept = cache.clone();
        kept.truncate(n);
        // A copy of exactly these positions, so the entry holds no more than it needs.
        let kept = kept.row(0)?;
        if kept.bytes() > self.budget {
            return Ok(());
        }
        self.entries.retain(|e| !key.starts_with(&e.key));
        self.entries.push(Entry {
            key: key.to_vec(),
            cache: kept,
            used: self.clock,
        });
        while self.bytes() > self.budget || self.entries.len() > MAX_ENTRIES {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
                .expect("over budget means an entry");
            self.entries.swap_remove(oldest);
        }
        Ok(())
    }

    fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.bytes()).sum()
    }
}

fn common_prefix(a: &[u64], b: &[u64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::concept_table::ConceptWeights;
    use crate::model::LlavaModel;
    use crate::ops::Kernels;
    use crate::testing::{randn, random_model, tiny_config};

    fn concept(seed: u64) -> ConceptWeights {
        let r = |shape: &[usize], s| randn(shape, s, DType::F32, &Device::Cpu).unwrap();
        ConceptWeights::new(r(&[16], seed), r(&[2, 16], seed + 1), r(&[16], seed + 2)).unwrap()
    }

    fn filled(model: &LlavaModel, len: usize, seed: u64) -> KvCache {
        let mut cache = KvCache::new(model.config());
        let x: Tensor = randn(&[1, len, 16], seed, DType::F32, &Device::Cpu).unwrap();
        model
            .forward_embeds(&x, Some(&mut cache), Kernels::Fast)
            .unwrap();
        cache
    }

    #[test]
    fn concept_tokens_are_keyed_by_package_and_images_end_the_key() {
        let (model, _) = random_model(&tiny_config(), 1, DType::F32, &Device::Cpu).unwrap();
        let image = model.config().image_token_id;
        let v = model.config().text.vocab_size as u32;
        let digests = |d: &str| HashMap::from([("bo".to_string(), d.to_string())]);
        let mut table = ConceptTable::new(&model);
        table.activate("bo", concept(1)).unwrap();
        let ids = [1, 2, v, v + 1, 3, image, 4];
        let a = prompt_key(&ids, &table, &digests("aaa"), image);
        assert_eq!(a.len(), 5, "stops at the image");
        assert_eq!(&a[..2], &[1, 2]);
        let b = prompt_key(&ids, &table, &digests("bbb"), image);
        assert_eq!(&b[..2], &a[..2]);
        assert_ne!(b[2], a[2], "another package's identifier is another token");
        assert_eq!(a, prompt_key(&ids, &table, &digests("aaa"), image));
        // The same package under another id (another concept set) is the same token.
        let mut other = ConceptTable::new(&model);
        other.activate("kiki", concept(9)).unwrap();
        other.activate("bo", concept(1)).unwrap();
        let moved = [1, 2, v + 1, other.latent_ids("bo").unwrap().start, 3];
        let mut both = digests("aaa");
        both.insert("kiki".into(), "kkk".into());
        assert_eq!(prompt_key(&moved, &other, &both, image), a);
    }

    #[test]
    fn lookups_share_the_longest_common_prefix_within_the_budget() {
        let (model, _) = random_model(&tiny_config(), 2, DType::F32, &Device::Cpu).unwrap();
        let key: Vec<u64> = (0..20).collect();
        let cache = filled(&model, 20, 3);
        let mut prefixes = PrefixCache::new(1 << 20);
        assert!(prefixes.lookup(&key, 19).is_none());
        prefixes.insert(&key, &cache).unwrap();
        // A prompt sharing 12 positions gets 12; the same prompt at most what it asks for.
        let mut other: Vec<u64> = (0..12).collect();
        other.extend([99, 98, 97]);
        assert_eq!(prefixes.lookup(&other, 14).map(|c| c.len()), Some(12));
        assert_eq!(prefixes.lookup(&key, 19).map(|c| c.len()), Some(19));
        assert_eq!(prefixes.lookup(&key, 10).map(|c| c.len()), Some(10));
        // Too short to be worth it.
        assert!(prefixes.lookup(&[0, 1, 2, 77], 3).is_none());
        // A prompt adding fewer than MIN_PREFIX positions to an entry is not kept; one adding
        // that many is.
        let mut near = key.clone();
        near.truncate(15);
        near.extend([50, 51, 52, 53, 54]);
        prefixes.insert(&near, &cache).unwrap();
        assert_eq!(prefixes.lookup(&near, 19).map(|c| c.len()), Some(15));
        let mut far = key.clone();
        far.truncate(12);
        far.extend(60..68);
        prefixes.insert(&far, &cache).unwrap();
        assert_eq!(prefixes.lookup(&far, 19).map(|c| c.len()), Some(19));
        // A budget below one entry keeps nothing.
        let mut tiny = PrefixCache::new(16);
        tiny.insert(&key, &cache).unwrap();
        assert!(tiny.lookup(&key, 19).is_none());
        // Past the budget, the least recently used entry goes.
        let one = cache.row(0).unwrap().bytes();
        let mut two = PrefixCache::new(2 * one);
        let keys: Vec<Vec<u64>> = (0..3u64)
            .map(|k| (0..20).map(|i| i + 100 * k).collect())
            .collect();
        two.insert(&keys[0], &cache).unwrap();
        two.insert(&keys[1], &cache).unwrap();
        two.lookup(&keys[0], 19).unwrap();
        two.insert(&keys[2], &cache).unwrap();
        assert!(
            two.lookup(&keys[1], 19).is_none(),
            "the least recently used went"
        );
        assert!(two.lookup(&keys[0], 19).is_some() && two.lookup(&keys[2], 19).is_some());
    }
}
