//! The constant prompt prefix of each training sample, run once without gradients.
//!
//! In Yo'LLaVA's prompt layout everything before the first concept token — the system text,
//! `USER:`, the image's tokens and the newline after them — does not depend on any trainable
//! parameter: at every layer its keys and values are constants of the sample. The reference
//! recipe recomputes and back-propagates through all of it on every step; here the prefix runs
//! once with the fast (gradient-free) kernels, its keys and values are kept, and each step runs
//! only the suffix (personal prompt, question, answer: tens of tokens) with gradients, attending
//! to the kept prefix. The loss and the gradients are those of the whole sequence: the prefix's
//! outputs never depend on the suffix (causal attention), and nothing trainable flows into it.
//!
//! What is kept is bounded by bytes ([`PrefixReuse::Cached`]). A prefix that does not fit is
//! recomputed on every step it is used, still without gradients — which costs one forward over
//! it instead of the reference's forward and backward, and keeps no activations for backward.
//! docs/training.md states the rule for a 7B base.

use std::collections::HashMap;

use concepts_runtime::KvCache;

/// The default byte budget for kept prefixes (2 GiB, `concepts train --prefix-cache 2048`):
/// the toy model's whole training set takes about 100 MB; a 7B base in f16 keeps about six
/// image prompts (≈ 320 MB each) and recomputes the rest (docs/training.md, "Memory").
pub const DEFAULT_PREFIX_BUDGET: usize = 2 << 30;

/// How a training step treats the constant prompt prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixReuse {
    /// Run the whole sequence with gradients on every step, as the reference recipe does.
    Off,
    /// Run the prefix without gradients and keep its keys and values for up to `budget_bytes`
    /// bytes in all; prefixes beyond the budget are recomputed (still without gradients) on
    /// every step that uses them.
    Cached { budget_bytes: usize },
}

impl Default for PrefixReuse {
    fn default() -> Self {
        PrefixReuse::Cached {
            budget_bytes: DEFAULT_PREFIX_BUDGET,
        }
    }
}

/// What identifies a prefix: the image variant in it (kind, index, flip), if any, and its token
/// ids (image positions included, as one id each).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PrefixKey {
    pub image: Option<(u8, u32, bool)>,
    pub ids: Vec<u32>,
}

/// Kept prefixes (caches of batch 1) within a byte budget.
#[derive(Default)]
pub(crate) struct PrefixStore {
    entries: HashMap<PrefixKey, KvCache>,
    bytes: usize,
    budget: usize,
    /// Prefix computations so far, kept or not.
    pub computed: u64,
    /// Seconds spent on them.
    pub secs: f64,
}

impl PrefixStore {
    pub fn new(budget: usize) -> Self {
        PrefixStore {
            budget,
            ..Default::default()
        }
    }

    pub fn get(&self, key: &PrefixKey) -> Option<&KvCache> {
        self.entries.get(key)
    }

    /// Keeps `cache` if it fits the budget; otherwise hands it back.
    pub fn insert(&mut self, key: PrefixKey, cache: KvCache) -> Option<KvCache> {
        let size = cache.bytes();
        if self.bytes + size > self.budget {
            return Some(cache);
        }
        self.bytes += size;
        if let Some(old) = self.entries.insert(key, cache) {
            self.bytes -= old.bytes();
        }
        None
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
