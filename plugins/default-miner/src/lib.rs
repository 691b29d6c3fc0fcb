//! concepts-default-miner: the default negative-mining policy (Yo'LLaVA §3.2).
//!
//! For each positive photo, the `m` most similar pool images (cosine similarity on the host's
//! embeddings) become hard negatives; the union is deduplicated, and a pool image that is a positive
//! itself or a near-duplicate of one (similarity ≥ [`NEAR_DUPLICATE`] to any positive) is never
//! chosen. Then `easy-count` easy negatives are drawn, seeded, from the rest. Key design choice: all
//! per-element work (similarities, top-k) is asked of the host; the plugin only makes choices over
//! the answers, so it runs as fast inside a fuel- or epoch-limited sandbox as natively.
//!
//! Built for `wasm32-wasip2` this crate is the component `concepts.default-miner`; built for the
//! host it is the same policy as in-process Rust.

use concepts_plugin_sdk::rng::SplitMix64;
use concepts_plugin_sdk::{
    register_miner, MinedNegative, MiningJob, MiningParams, NegativeMiner, NegativeRole, Result,
};

/// Pool images at least this similar to a positive are treated as the positive itself.
pub const NEAR_DUPLICATE: f32 = 0.98;

/// The default miner; see the crate docs.
pub struct DefaultMiner;

impl NegativeMiner for DefaultMiner {
    fn new() -> Self {
        DefaultMiner
    }

    fn mine(&mut self, job: &MiningJob<'_>, params: MiningParams) -> Result<Vec<MinedNegative>> {
        let (positives, pool) = (job.positives(), job.pool());
        if positives.rows() == 0 {
            return Err("no positive images to mine negatives for".to_owned());
        }
        if positives.dim() != pool.dim() {
            return Err(format!(
                "positives have width {} but the pool has width {}",
                positives.dim(),
                pool.dim()
            ));
        }
        let nearest = positives.max_similarity(pool)?;
        let excluded: Vec<bool> = nearest
            .iter()
            .map(|&s| s.is_nan() || s >= NEAR_DUPLICATE)
            .collect();
        let n_excluded = excluded.iter().filter(|&&e| e).count() as u32;
        // Ask for enough candidates that `m` survive the exclusion for every positive.
        let k = params
            .hard_per_positive
            .saturating_add(n_excluded)
            .min(pool.rows());
        let ranked: Vec<Vec<u32>> = positives
            .top_k(pool, k)?
            .into_iter()
            .map(|list| list.into_iter().map(|s| s.row).collect())
            .collect();
        job.progress(1, 2, "hard negatives chosen");
        let mined = choose(&nearest, &excluded, &ranked, params);
        let hard = mined
            .iter()
            .filter(|m| m.role == NegativeRole::Hard)
            .count();
        job.info(&format!(
            "mined {hard} hard and {} easy negatives from a pool of {} ({n_excluded} near-duplicates of a positive excluded)",
            mined.len() - hard,
            pool.rows(),
        ));
        job.progress(2, 2, "easy negatives chosen");
        Ok(mined)
    }
}

register_miner!(DefaultMiner);

/// The policy over host answers: `nearest[row]` is a pool row's highest similarity to any positive,
/// `excluded[row]` marks near-duplicates, `ranked[p]` lists pool rows by similarity to positive `p`.
///
/// Hard negatives come first, in retrieval order, scored by `nearest`; then the easy ones.
pub fn choose(
    nearest: &[f32],
    excluded: &[bool],
    ranked: &[Vec<u32>],
    params: MiningParams,
) -> Vec<MinedNegative> {
    let mut chosen = vec![false; nearest.len()];
    let mut mined = Vec::new();
    for list in ranked {
        let candidates = list
            .iter()
            .map(|&row| row as usize)
            .filter(|&row| row < nearest.len() && !excluded[row])
            .take(params.hard_per_positive as usize);
        for row in candidates {
            if !chosen[row] {
                chosen[row] = true;
                mined.push(MinedNegative {
                    pool_row: row as u32,
                    role: NegativeRole::Hard,
                    score: nearest[row],
                });
            }
        }
    }
    let mut rest: Vec<u32> = (0..nearest.len())
        .filter(|&row| !chosen[row] && !excluded[row])
        .map(|row| row as u32)
        .collect();
    let mut rng = SplitMix64(params.seed);
    let easy = (params.easy_count as usize).min(rest.len());
    // A partial Fisher-Yates shuffle: the first `easy` entries are a uniform sample.
    for i in 0..easy {
        let j = i + rng.below((rest.len() - i) as u64) as usize;
        rest.swap(i, j);
    }
    mined.extend(rest[..easy].iter().map(|&row| MinedNegative {
        pool_row: row,
        role: NegativeRole::Easy,
        score: nearest[row as usize],
    }));
    mined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(m: u32, easy: u32, seed: u64) -> MiningParams {
        MiningParams {
            hard_per_positive: m,
            easy_count: easy,
            seed,
        }
    }

    #[test]
    fn hard_negatives_are_deduplicated_and_skip_near_duplicates() {
        let nearest = [0.99, 0.9, 0.8, 0.7, 0.1, 0.2];
        let excluded: Vec<bool> = nearest.iter().map(|&s| s >= NEAR_DUPLICATE).collect();
        let ranked = vec![vec![0, 1, 2, 3], vec![0, 2, 1, 3]];
        let mined = choose(&nearest, &excluded, &ranked, params(2, 0, 1));
        let rows: Vec<u32> = mined.iter().map(|m| m.pool_row).collect();
        assert_eq!(rows, [1, 2]);
        assert!(mined.iter().all(|m| m.role == NegativeRole::Hard));
        assert_eq!(mined[0].score, 0.9);
    }

    #[test]
    fn easy_negatives_are_seeded_and_disjoint_from_hard() {
        let nearest: Vec<f32> = (0..50).map(|i| i as f32 / 100.0).collect();
        let excluded = vec![false; 50];
        let ranked = vec![(0..50).rev().collect::<Vec<u32>>()];
        let a = choose(&nearest, &excluded, &ranked, params(5, 10, 7));
        let b = choose(&nearest, &excluded, &ranked, params(5, 10, 7));
        let c = choose(&nearest, &excluded, &ranked, params(5, 10, 8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let easy: Vec<u32> = a
            .iter()
            .filter(|m| m.role == NegativeRole::Easy)
            .map(|m| m.pool_row)
            .collect();
        assert_eq!(easy.len(), 10);
        assert!(
            easy.iter().all(|&r| r < 45),
            "hard rows 45..50 reused: {easy:?}"
        );
        let mut unique = easy.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 10);
    }

    #[test]
    fn easy_count_is_capped_by_what_is_left() {
        let nearest = [0.1, 0.2, 0.3];
        let mined = choose(
            &nearest,
            &[false, true, false],
            &[vec![2]],
            params(1, 100, 0),
        );
        let rows: Vec<u32> = mined.iter().map(|m| m.pool_row).collect();
        assert_eq!(rows, [2, 0]);
    }
}
