//! Hostile test plugin: a miner that allocates until something stops it.
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
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 16 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

register_miner!(Hostile);
