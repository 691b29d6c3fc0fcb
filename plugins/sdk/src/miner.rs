//! The negative-miner role (world `negative-miner`).

use concepts_plugin_api::{MinedNegative, MiningParams, ScoredRow};

use crate::{Context, Result};

/// A negative-mining policy.
///
/// Given the positives and the pool (both embedding matrices kept by the host), choose pool images as
/// hard and easy negatives. The host checks the answer: every row in range, none twice.
pub trait NegativeMiner {
    /// A fresh miner; the host makes one per call.
    fn new() -> Self
    where
        Self: Sized;

    /// Chooses negatives for `job`.
    fn mine(&mut self, job: &MiningJob<'_>, params: MiningParams) -> Result<Vec<MinedNegative>> {
        let _ = (job, params);
        Err("`mine` not implemented".to_owned())
    }
}

/// An embedding matrix kept by the host: one row per image.
pub struct Matrix<'a> {
    #[cfg(target_arch = "wasm32")]
    inner: &'a crate::__private::wasm::bindings::concepts::plugin::embeddings::Matrix,
    #[cfg(not(target_arch = "wasm32"))]
    backend: &'a dyn crate::backend::EmbeddingsBackend,
    #[cfg(not(target_arch = "wasm32"))]
    handle: u32,
}

impl<'a> Matrix<'a> {
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn new(
        inner: &'a crate::__private::wasm::bindings::concepts::plugin::embeddings::Matrix,
    ) -> Matrix<'a> {
        Matrix { inner }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn new(
        backend: &'a dyn crate::backend::EmbeddingsBackend,
        handle: u32,
    ) -> Matrix<'a> {
        Matrix { backend, handle }
    }

    /// Number of rows (images).
    pub fn rows(&self) -> u32 {
        #[cfg(target_arch = "wasm32")]
        return self.inner.rows();
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.rows(self.handle);
    }

    /// Embedding width.
    pub fn dim(&self) -> u32 {
        #[cfg(target_arch = "wasm32")]
        return self.inner.dim();
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.dim(self.handle);
    }

    /// Rows `start .. start + count`, row-major. Large reads exceed the host-call data cap (and end
    /// the call): read in chunks.
    pub fn read_rows(&self, start: u32, count: u32) -> Result<Vec<f32>> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.read_rows(start, count);
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.read_rows(self.handle, start, count);
    }

    /// For each row of `self`, the `k` rows of `pool` with the highest cosine similarity, best first
    /// (ties: lower row first).
    pub fn top_k(&self, pool: &Matrix<'_>, k: u32) -> Result<Vec<Vec<ScoredRow>>> {
        #[cfg(target_arch = "wasm32")]
        return crate::__private::wasm::top_k(self.inner, pool.inner, k);
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.top_k(self.handle, pool.handle, k);
    }

    /// For each row of `pool`, its highest cosine similarity to any row of `self`.
    pub fn max_similarity(&self, pool: &Matrix<'_>) -> Result<Vec<f32>> {
        #[cfg(target_arch = "wasm32")]
        return crate::__private::wasm::max_similarity(self.inner, pool.inner);
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.max_similarity(self.handle, pool.handle);
    }
}

/// One mining call: the two matrices and the host services.
pub struct MiningJob<'a> {
    cx: Context<'a>,
    positives: Matrix<'a>,
    pool: Matrix<'a>,
}

impl<'a> MiningJob<'a> {
    pub(crate) fn new(cx: Context<'a>, positives: Matrix<'a>, pool: Matrix<'a>) -> MiningJob<'a> {
        MiningJob {
            cx,
            positives,
            pool,
        }
    }

    /// Embeddings of the subject's photos.
    pub fn positives(&self) -> &Matrix<'a> {
        &self.positives
    }

    /// Embeddings of the candidate negative images.
    pub fn pool(&self) -> &Matrix<'a> {
        &self.pool
    }
}

impl<'a> core::ops::Deref for MiningJob<'a> {
    type Target = Context<'a>;

    fn deref(&self) -> &Context<'a> {
        &self.cx
    }
}
