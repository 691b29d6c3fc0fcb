//! Hostile test plugin: a miner that reads the whole pool in one host call.
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
        let _ = params;
        let pool = job.pool();
        let all = pool.read_rows(0, pool.rows())?;
        Err(format!("read {} values in one call", all.len()))
    }
}

register_miner!(Hostile);
