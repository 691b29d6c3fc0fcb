//! Hostile test plugin: a miner that panics.
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
        panic!("deliberate panic in the test miner")
    }
}

register_miner!(Hostile);
