//! Host services shared by every kind of plugin: logging, progress and the mining matrices.

use std::sync::Arc;

use concepts_plugin_api::{LogLevel, ScoredRow};

use crate::matrix::{self, EmbeddingMatrix};

/// One progress report of a plugin call.
#[derive(Debug, Clone, Copy)]
pub struct ProgressEvent<'a> {
    /// The plugin id
    pub plugin: &'a str,
    /// Units done
    pub done: u64,
    /// Units in all
    pub total: u64,
    /// What is being done
    pub message: &'a str,
}

/// Receives progress reports (the CLI draws a progress bar).
pub type ProgressSink = Arc<dyn Fn(&ProgressEvent<'_>) + Send + Sync>;

/// Where a plugin's log records and progress reports go.
#[derive(Clone)]
pub(crate) struct Events {
    id: Arc<str>,
    progress: Option<ProgressSink>,
}

impl Events {
    pub(crate) fn new(id: &str, progress: Option<ProgressSink>) -> Events {
        Events {
            id: id.into(),
            progress,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Records a plugin's message in `tracing`, tagged with the plugin id.
    pub(crate) fn log(&self, level: LogLevel, message: &str) {
        let plugin = &*self.id;
        match level {
            LogLevel::Trace => tracing::trace!(target: "concepts_plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "concepts_plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "concepts_plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "concepts_plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "concepts_plugin", plugin, "{message}"),
        }
    }

    pub(crate) fn progress(&self, done: u64, total: u64, message: &str) {
        tracing::trace!(target: "concepts_plugin", plugin = &*self.id, done, total, "{message}");
        if let Some(sink) = &self.progress {
            sink(&ProgressEvent {
                plugin: &self.id,
                done,
                total,
                message,
            });
        }
    }
}

/// The two matrices of a mining call, by handle: 0 is the positives, 1 the pool.
pub(crate) struct Mining {
    pub(crate) positives: EmbeddingMatrix,
    pub(crate) pool: EmbeddingMatrix,
}

pub(crate) const POSITIVES: u32 = 0;
pub(crate) const POOL: u32 = 1;

impl Mining {
    pub(crate) fn matrix(&self, handle: u32) -> Result<&EmbeddingMatrix, String> {
        match handle {
            POSITIVES => Ok(&self.positives),
            POOL => Ok(&self.pool),
            _ => Err(format!("no matrix with handle {handle}")),
        }
    }

    /// Bytes `read_rows` would answer, for the host-call cap (checked before reading).
    pub(crate) fn read_rows_bytes(m: &EmbeddingMatrix, count: u32) -> u64 {
        u64::from(count) * m.dim() as u64 * 4
    }

    pub(crate) fn read_rows(
        m: &EmbeddingMatrix,
        start: u32,
        count: u32,
    ) -> Result<Vec<f32>, String> {
        m.rows_slice(start as usize, count as usize)
            .map(<[f32]>::to_vec)
            .ok_or_else(|| {
                format!(
                    "rows {start}..{} are out of range for a matrix of {} rows",
                    u64::from(start) + u64::from(count),
                    m.rows()
                )
            })
    }

    /// Bytes `top_k` would answer.
    pub(crate) fn top_k_bytes(query: &EmbeddingMatrix, pool: &EmbeddingMatrix, k: u32) -> u64 {
        query.rows() as u64 * (k as u64).min(pool.rows() as u64) * 8
    }

    pub(crate) fn top_k(
        query: &EmbeddingMatrix,
        pool: &EmbeddingMatrix,
        k: u32,
    ) -> Result<Vec<Vec<ScoredRow>>, String> {
        matrix::top_k(query, pool, k as usize)
    }

    /// Bytes `max_similarity` would answer.
    pub(crate) fn max_similarity_bytes(pool: &EmbeddingMatrix) -> u64 {
        pool.rows() as u64 * 4
    }

    pub(crate) fn max_similarity(
        query: &EmbeddingMatrix,
        pool: &EmbeddingMatrix,
    ) -> Result<Vec<f32>, String> {
        matrix::max_similarity(query, pool)
    }
}
