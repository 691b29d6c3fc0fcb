//! What long work reports as it goes: [`Progress`] and its phases

use concepts_plugin_api::EpochReport;

/// The long-running phases, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Embedding the pool.
    Mining,
    /// Generating conversation answers.
    Conversations,
}

/// Receives progress; every method has a no-op default.
pub trait Progress {
    /// A phase starts with `total` units of work.
    fn start(&mut self, _phase: Phase, _total: u64) {}
    /// `done` units of the phase are done.
    fn advance(&mut self, _phase: Phase, _done: u64) {}
    /// The phase is over.
    fn finish(&mut self, _phase: Phase) {}
    /// Training starts: `epochs` at most, `replaying` of them from a saved state.
    fn training(&mut self, _epochs: u32, _replaying: u32) {}
    /// An optimiser step finished with this batch loss.
    fn step(&mut self, _step: u64, _loss: f32) {}
    /// An epoch finished (`replayed`: answered from the saved state on resume).
    fn epoch(&mut self, _report: &EpochReport, _replayed: bool) {}
    /// A one-line note for the user.
    fn note(&mut self, _text: &str) {}
}

/// A [`Progress`] that ignores everything.
pub struct Silent;

impl Progress for Silent {}
