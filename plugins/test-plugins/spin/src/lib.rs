//! Hostile test plugin: a miner that never returns.
//!
//! Used by `concepts-plugin-host`'s tests to check that the host stops it with a specific error
//! and stays usable.

use concepts_plugin_sdk::{
    register_miner, MinedNegative, MiningJob, MiningParams, NegativeMiner, Result,
};

/// The hostile miner.
pub struct Hostile;

impl NegativeMiner for Hostile {
    fn new() -> Self {
        Hostile
    }

    fn mine(&mut self, job: &MiningJob<'_>, params: MiningParams) -> Result<Vec<MinedNegative>> {
        let _ = (job, params);
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

register_miner!(Hostile);
