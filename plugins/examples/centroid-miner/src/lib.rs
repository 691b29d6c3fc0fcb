//! concepts-example-centroid-miner: an example third-party negative miner.
//!
//! It shows what a plugin can do with the SDK beyond the default policy: it reads both embedding
//! matrices from the host in chunks (staying under the host-call data cap) and does its own math.
//! Policy: hard negatives are the `m × positives` pool images nearest (cosine) to the *centroid* of
//! the positives, instead of each positive's nearest; easy negatives are the `easy-count` images
//! farthest from the centroid, with no randomness. Near-duplicates of a positive (similarity ≥ 0.98,
//! asked of the host) are never chosen.
//!
//! Build it as a wasm component with `cargo build --release --target wasm32-wasip2 -p
//! concepts-example-centroid-miner`, or as a native plugin with `--features
//! concepts-plugin-sdk/native` for the host target.

use concepts_plugin_sdk::{
    register_miner, Matrix, MinedNegative, MiningJob, MiningParams, NegativeMiner, NegativeRole,
    Result,
};

/// Rows read per host call.
const CHUNK_ROWS: u32 = 64;

/// Pool images at least this similar to a positive are never chosen.
const NEAR_DUPLICATE: f32 = 0.98;

/// The centroid miner; see the crate docs.
pub struct CentroidMiner;

impl NegativeMiner for CentroidMiner {
    fn new() -> Self {
        CentroidMiner
    }

    fn mine(&mut self, job: &MiningJob<'_>, params: MiningParams) -> Result<Vec<MinedNegative>> {
        let (positives, pool) = (job.positives(), job.pool());
        let dim = positives.dim() as usize;
        if positives.rows() == 0 || dim == 0 || pool.dim() as usize != dim {
            return Err("need at least one positive and matrices of equal width".to_owned());
        }
        let mut centroid = vec![0.0f32; dim];
        for_each_row(positives, |_, row| {
            let norm = norm(row);
            for (c, v) in centroid.iter_mut().zip(row) {
                *c += if norm > 0.0 { v / norm } else { 0.0 };
            }
        })?;
        let centroid_norm = norm(&centroid);
        let mut scored = Vec::with_capacity(pool.rows() as usize);
        for_each_row(pool, |r, row| {
            let denom = centroid_norm * norm(row);
            let dot: f32 = centroid.iter().zip(row).map(|(a, b)| a * b).sum();
            scored.push((r, if denom > 0.0 { dot / denom } else { 0.0 }));
        })?;
        let nearest = positives.max_similarity(pool)?;
        scored.retain(|&(r, _)| nearest[r as usize] < NEAR_DUPLICATE);
        // Nearest to the centroid first; ties by row.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let hard =
            (params.hard_per_positive as usize * positives.rows() as usize).min(scored.len());
        let easy = (params.easy_count as usize).min(scored.len() - hard);
        let mut mined: Vec<MinedNegative> = scored[..hard]
            .iter()
            .map(|&(row, score)| MinedNegative {
                pool_row: row,
                role: NegativeRole::Hard,
                score,
            })
            .collect();
        mined.extend(
            scored[scored.len() - easy..]
                .iter()
                .rev()
                .map(|&(row, score)| MinedNegative {
                    pool_row: row,
                    role: NegativeRole::Easy,
                    score,
                }),
        );
        job.info(&format!(
            "centroid miner chose {hard} hard and {easy} easy negatives"
        ));
        Ok(mined)
    }
}

register_miner!(CentroidMiner);

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Calls `f(row index, row)` for every row, reading `CHUNK_ROWS` rows per host call.
fn for_each_row(m: &Matrix<'_>, mut f: impl FnMut(u32, &[f32])) -> Result<()> {
    let (rows, dim) = (m.rows(), m.dim() as usize);
    let mut start = 0;
    while start < rows {
        let count = CHUNK_ROWS.min(rows - start);
        let chunk = m.read_rows(start, count)?;
        for (i, row) in chunk.chunks_exact(dim).enumerate() {
            f(start + i as u32, row);
        }
        start += count;
    }
    Ok(())
}
