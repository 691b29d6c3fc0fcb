//! Embedding matrices kept on the host, and the similarity math plugins ask for.

use std::sync::Arc;

use concepts_plugin_api::ScoredRow;

/// A read-only, row-major `rows × dim` matrix of `f32`, cheap to clone (shared).
///
/// Invariant: `data.len() == rows * dim`, every value is finite, and `norms[r]` is the L2 norm of
/// row `r`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingMatrix {
    rows: usize,
    dim: usize,
    data: Arc<[f32]>,
    norms: Arc<[f32]>,
}

/// Why values cannot form an [`EmbeddingMatrix`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatrixError {
    /// `data.len()` is not `rows * dim`.
    #[error("embedding matrix: {len} values do not make {rows} rows of width {dim}")]
    Shape {
        /// Rows asked for
        rows: usize,
        /// Width asked for
        dim: usize,
        /// Values given
        len: usize,
    },
    /// A value is NaN or infinite.
    #[error("embedding matrix: value {index} is not finite")]
    NotFinite {
        /// Position of the value
        index: usize,
    },
    /// Too many rows or columns for the plugin interface (u32).
    #[error(
        "embedding matrix: {rows} × {dim} exceeds the u32 row and column counts of the plugin API"
    )]
    TooLarge {
        /// Rows
        rows: usize,
        /// Width
        dim: usize,
    },
}

impl EmbeddingMatrix {
    /// A matrix of `data.len() / dim` rows.
    pub fn new(dim: usize, data: Vec<f32>) -> Result<EmbeddingMatrix, MatrixError> {
        let rows = data.len().checked_div(dim).unwrap_or(0);
        if rows.checked_mul(dim) != Some(data.len()) || (dim == 0 && !data.is_empty()) {
            return Err(MatrixError::Shape {
                rows,
                dim,
                len: data.len(),
            });
        }
        if u32::try_from(rows).is_err() || u32::try_from(dim).is_err() {
            return Err(MatrixError::TooLarge { rows, dim });
        }
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(MatrixError::NotFinite { index });
        }
        let norms: Arc<[f32]> = (0..rows)
            .map(|r| {
                data[r * dim..(r + 1) * dim]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f32>()
                    .sqrt()
            })
            .collect();
        Ok(EmbeddingMatrix {
            rows,
            dim,
            data: data.into(),
            norms,
        })
    }

    /// A matrix from rows of equal width.
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<EmbeddingMatrix, MatrixError> {
        let dim = rows.first().map_or(0, Vec::len);
        let mut data = Vec::with_capacity(rows.len() * dim);
        for row in rows {
            if row.len() != dim {
                return Err(MatrixError::Shape {
                    rows: rows.len(),
                    dim,
                    len: data.len() + row.len(),
                });
            }
            data.extend_from_slice(row);
        }
        EmbeddingMatrix::new(dim, data)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `r`.
    ///
    /// # Panics
    ///
    /// If `r >= self.rows()`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    /// Rows `start .. start + count`, or `None` when out of range.
    pub fn rows_slice(&self, start: usize, count: usize) -> Option<&[f32]> {
        let end = start.checked_add(count)?;
        (end <= self.rows).then(|| &self.data[start * self.dim..end * self.dim])
    }

    /// Cosine similarity of row `a` of `self` and row `b` of `other`; 0 when either row is zero.
    pub fn cosine(&self, a: usize, other: &EmbeddingMatrix, b: usize) -> f32 {
        let denom = self.norms[a] * other.norms[b];
        if denom == 0.0 {
            return 0.0;
        }
        let dot: f32 = self
            .row(a)
            .iter()
            .zip(other.row(b))
            .map(|(x, y)| x * y)
            .sum();
        (dot / denom).clamp(-1.0, 1.0)
    }
}

/// Why two matrices cannot be compared.
pub(crate) fn check_widths(query: &EmbeddingMatrix, pool: &EmbeddingMatrix) -> Result<(), String> {
    if query.dim != pool.dim {
        return Err(format!(
            "matrices have different widths: {} and {}",
            query.dim, pool.dim
        ));
    }
    Ok(())
}

/// For each row of `query`, the `k` most similar rows of `pool`, best first (ties: lower row).
pub fn top_k(
    query: &EmbeddingMatrix,
    pool: &EmbeddingMatrix,
    k: usize,
) -> Result<Vec<Vec<ScoredRow>>, String> {
    check_widths(query, pool)?;
    let k = k.min(pool.rows);
    Ok((0..query.rows)
        .map(|q| {
            let mut scored: Vec<ScoredRow> = (0..pool.rows)
                .map(|p| ScoredRow {
                    row: p as u32,
                    score: query.cosine(q, pool, p),
                })
                .collect();
            let by_score =
                |a: &ScoredRow, b: &ScoredRow| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row));
            if k < scored.len() && k > 0 {
                scored.select_nth_unstable_by(k - 1, by_score);
            }
            scored.truncate(k);
            scored.sort_by(by_score);
            scored
        })
        .collect())
}

/// For each row of `pool`, its highest similarity to any row of `query` (−1 when `query` is empty).
pub fn max_similarity(query: &EmbeddingMatrix, pool: &EmbeddingMatrix) -> Result<Vec<f32>, String> {
    check_widths(query, pool)?;
    Ok((0..pool.rows)
        .map(|p| {
            (0..query.rows)
                .map(|q| query.cosine(q, pool, p))
                .fold(-1.0f32, f32::max)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_values_are_checked() {
        assert_eq!(
            EmbeddingMatrix::new(3, vec![0.0; 4]).unwrap_err(),
            MatrixError::Shape {
                rows: 1,
                dim: 3,
                len: 4
            }
        );
        assert_eq!(
            EmbeddingMatrix::new(2, vec![0.0, f32::NAN]).unwrap_err(),
            MatrixError::NotFinite { index: 1 }
        );
        assert_eq!(EmbeddingMatrix::new(0, vec![]).unwrap().rows(), 0);
    }

    #[test]
    fn top_k_orders_by_cosine_then_row() {
        let q = EmbeddingMatrix::from_rows(&[vec![1.0, 0.0]]).unwrap();
        let p = EmbeddingMatrix::from_rows(&[
            vec![0.0, 1.0],
            vec![2.0, 0.0],
            vec![1.0, 1.0],
            vec![5.0, 0.0],
        ])
        .unwrap();
        let top = top_k(&q, &p, 3).unwrap();
        let rows: Vec<u32> = top[0].iter().map(|s| s.row).collect();
        assert_eq!(rows, [1, 3, 2]);
        assert!((top[0][2].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        let max = max_similarity(&q, &p).unwrap();
        assert_eq!(max[0], 0.0);
        assert_eq!(max[1], 1.0);
        assert!(top_k(&q, &EmbeddingMatrix::from_rows(&[vec![1.0]]).unwrap(), 1).is_err());
    }
}
