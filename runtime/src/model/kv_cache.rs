//! The key/value cache of the language model, with cheap clones for prefix sharing.
//!
//! Each layer keeps keys and values in preallocated `[B, H_kv, capacity, D]` buffers, written
//! in place at the current length. Buffers sit behind an `Arc`: cloning a cache clones the
//! `Arc`s only, and a cache that appends to a buffer another clone still holds first copies
//! the valid prefix into a buffer of its own (copy-on-write). So a prompt prefix (system text
//! and image tokens) is prefilled once and each clone continues with its own suffix.
//!
//! Invariant: positions `0..len` of every layer's buffer hold the keys and values of the
//! tokens fed so far; a buffer is written in place only beyond `len` and only while no other
//! cache shares it.

use std::sync::Arc;

use candle_core::Tensor;

use crate::config::LlavaConfig;
use crate::error::{Result, RuntimeError};

/// Capacity is allocated in multiples of this many positions.
const CAPACITY_STEP: usize = 64;

/// Keys and values of every language-model layer for the tokens fed so far.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Option<Arc<LayerBuffers>>>,
    len: usize,
}

struct LayerBuffers {
    k: Tensor,
    v: Tensor,
}

impl LayerBuffers {
    fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    fn bytes(&self) -> usize {
        2 * self.k.elem_count() * self.k.dtype().size_in_bytes()
    }

    /// Rows the buffers hold.
    fn rows(&self) -> usize {
        self.k.dim(0).unwrap_or(0)
    }

    /// Zeroed buffers of `rows` rows and `capacity` positions shaped like `like`'s, holding
    /// `old`'s rows and positions first (a batch growing keeps what it holds).
    fn grown(old: Option<&Self>, like: &Self, rows: usize, capacity: usize) -> Result<Self> {
        let (_, h, _, d) = like.k.dims4()?;
        let fresh = |old: Option<&Tensor>, like: &Tensor| -> Result<Tensor> {
            let buf = Tensor::zeros((rows, h, capacity, d), like.dtype(), like.device())?;
            if let Some(old) = old {
                buf.narrow(0, 0, old.dim(0)?)?.slice_set(old, 2, 0)?;
            }
            Ok(buf)
        };
        Ok(LayerBuffers {
            k: fresh(old.map(|o| &o.k), &like.k)?,
            v: fresh(old.map(|o| &o.v), &like.v)?,
        })
    }
}

impl KvCache {
    /// An empty cache for a model of this configuration.
    pub fn new(cfg: &LlavaConfig) -> Self {
        KvCache {
            layers: vec![None; cfg.text.num_hidden_layers],
            len: 0,
        }
    }

    /// Number of positions cached: the position the next token gets.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on (a no-op if the cache is shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Writes `k` and `v` (`[B, H_kv, T, D]`) at positions `len..len + T` of `layer` and
    /// returns views of positions `0..len + T`. The cache length itself moves on in
    /// [`KvCache::advance`], once every layer has been written.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let len = self.len;
        let needed = len + t;
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| RuntimeError::InvalidInput(format!("kv cache has no layer {layer}")))?;
        if let Some(buf) = slot.as_ref() {
            let (bb, bh, _, bd) = buf.k.dims4()?;
            if (bb, bh, bd) != (b, h, d) || buf.k.dtype() != k.dtype() {
                return Err(RuntimeError::InvalidInput(format!(
                    "kv cache holds {:?} {:?} keys, got {:?} {:?}",
                    buf.k.dims(),
                    buf.k.dtype(),
                    k.dims(),
                    k.dtype()
                )));
            }
        }
        let writable = match slot.as_mut() {
            Some(buf) => buf.capacity() >= needed && Arc::get_mut(buf).is_some(),
            None => false,
        };
        if !writable {
            let old = slot.take();
            let grown = old.as_ref().map_or(0, |buf| 2 * buf.capacity());
            let capacity = needed.max(grown).next_multiple_of(CAPACITY_STEP);
            let fresh = |old: Option<&Tensor>, like: &Tensor| -> Result<Tensor> {
                let buf = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
                if let (Some(old), true) = (old, len > 0) {
                    buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            *slot = Some(Arc::new(LayerBuffers {
                k: fresh(old.as_ref().map(|o| &o.k), k)?,
                v: fresh(old.as_ref().map(|o| &o.v), v)?,
            }));
        }
        let buf = slot
            .as_ref()
            .ok_or_else(|| RuntimeError::InvalidInput("kv cache slot is empty".to_string()))?;
        buf.k.slice_set(&k.contiguous()?, 2, len)?;
        buf.v.slice_set(&v.contiguous()?, 2, len)?;
        Ok((buf.k.narrow(2, 0, needed)?, buf.v.narrow(2, 0, needed)?))
    }

    /// Batch row `b` as a cache of batch 1 holding exactly its `len` positions (a copy, so
    /// it keeps no part of the batched buffers alive).
    pub fn row(&self, b: usize) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|slot| {
                let buf = slot.as_ref().ok_or_else(|| {
                    RuntimeError::InvalidInput("kv cache row of an unwritten cache".into())
                })?;
                let batch = buf.k.dim(0)?;
                if b >= batch {
                    return Err(RuntimeError::InvalidInput(format!(
                        "kv cache row {b} of a batch of {batch}"
                    )));
                }
                let take = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, b, 1)?.narrow(2, 0, self.len)?.copy()?)
                };
                Ok(Some(Arc::new(LayerBuffers {
                    k: take(&buf.k)?,
                    v: take(&buf.v)?,
                })))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: self.len,
        })
    }

    /// One batched cache from caches of batch 1 and equal length (batch row `i` is `rows[i]`),
    /// with room for `reserve` more positions before its buffers grow. The training engine
    /// uses it to run a batch of suffixes over prefixes that were computed one by one.
    pub fn stack(rows: &[&KvCache], reserve: usize) -> Result<KvCache> {
        let first = rows
            .first()
            .ok_or_else(|| RuntimeError::InvalidInput("stacking no kv caches".into()))?;
        let len = first.len;
        if let Some(other) = rows
            .iter()
            .find(|r| r.len != len || r.layers.len() != first.layers.len())
        {
            return Err(RuntimeError::InvalidInput(format!(
                "stacking kv caches of {} and {} positions ({} and {} layers)",
                len,
                other.len,
                first.layers.len(),
                other.layers.len()
            )));
        }
        let capacity = (len + reserve).next_multiple_of(CAPACITY_STEP);
        let mut layers = Vec::with_capacity(first.layers.len());
        for layer in 0..first.layers.len() {
            let bufs = rows
                .iter()
                .map(|r| {
                    r.layers[layer].as_deref().ok_or_else(|| {
                        RuntimeError::InvalidInput("stacking an unwritten kv cache".into())
                    })
                })
                .collect::<Result<Vec<&LayerBuffers>>>()?;
            let gather = |pick: fn(&LayerBuffers) -> &Tensor| -> Result<Tensor> {
                let first = pick(bufs[0]);
                let (b, h, _, d) = first.dims4()?;
                if b != 1 {
                    return Err(RuntimeError::InvalidInput(format!(
                        "stacking a kv cache of batch {b}, expected 1"
                    )));
                }
                let out =
                    Tensor::zeros((bufs.len(), h, capacity, d), first.dtype(), first.device())?;
                if len > 0 {
                    let parts = bufs
                        .iter()
                        .map(|buf| pick(buf).narrow(2, 0, len))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    out.slice_set(&Tensor::cat(&parts, 0)?.contiguous()?, 2, 0)?;
                }
                Ok(out)
            };
            layers.push(Some(Arc::new(LayerBuffers {
                k: gather(|b| &b.k)?,
                v: gather(|b| &b.v)?,
            })));
        }
        Ok(KvCache { layers, len })
    }

    /// Bytes of the buffers this cache holds (shared buffers counted in full).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|buf| buf.bytes()).sum()
    }

    /// Marks `t` more positions as cached.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// Keys and values of a running decode batch: `slots` rows, each its own sequence with its own
/// length, so sequences of different lengths and ages decode in one forward call.
///
/// A sequence joins by [`BatchKvCache::load`]ing the cache its prefill wrote into a free slot
/// and leaves by [`BatchKvCache::release`]; the buffers stay allocated for the next one. Each
/// decode step writes one position per row at that row's own length; attention reads
/// positions `0..max length` of every row with the positions past a row's length masked out.
///
/// Invariant: for an occupied slot `s`, positions `0..len(s)` of row `s` of every layer's
/// buffers hold its sequence's keys and values; a free slot has length 0 and is never read
/// past position 0.
pub struct BatchKvCache {
    layers: Vec<Option<LayerBuffers>>,
    lens: Vec<usize>,
    occupied: Vec<bool>,
}

impl BatchKvCache {
    /// An empty batch of `slots` rows for a model of this configuration.
    pub fn new(cfg: &LlavaConfig, slots: usize) -> Self {
        BatchKvCache {
            layers: (0..cfg.text.num_hidden_layers).map(|_| None).collect(),
            lens: vec![0; slots],
            occupied: vec![false; slots],
        }
    }

    /// Number of rows.
    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Positions cached in `slot`: the position its next token gets (0 for a free slot).
    pub fn len(&self, slot: usize) -> usize {
        self.lens.get(slot).copied().unwrap_or(0)
    }

    pub fn is_occupied(&self, slot: usize) -> bool {
        self.occupied.get(slot).copied().unwrap_or(false)
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The first free slot, if any.
    pub fn free_slot(&self) -> Option<usize> {
        self.occupied.iter().position(|o| !o)
    }

    /// One past the last occupied slot: the rows a decode step has to cover.
    pub fn width(&self) -> usize {
        self.occupied.iter().rposition(|&o| o).map_or(0, |s| s + 1)
    }

    /// Copies a sequence's cache (batch 1, as its prefill left it) into the free `slot`.
    pub fn load(&mut self, slot: usize, row: &KvCache) -> Result<()> {
        if slot >= self.slots() || self.occupied[slot] {
            return Err(RuntimeError::InvalidInput(format!(
                "batch slot {slot} of {} is not free",
                self.slots()
            )));
        }
        if row.layers.len() != self.layers.len() || row.len == 0 {
            return Err(RuntimeError::InvalidInput(format!(
                "loading a kv cache of {} layers and {} positions into a batch of {} layers",
                row.layers.len(),
                row.len,
                self.layers.len()
            )));
        }
        // Room for the prompt and one more position, so the next step needs no growth; rows
        // up to this slot only (a 7B's 8 rows of 1024 positions would be 4.3 GB in f16).
        self.reserve(row.len + 1, slot + 1, row)?;
        for (layer, src) in self.layers.iter().zip(&row.layers) {
            let (dst, src) = match (layer, src) {
                (Some(dst), Some(src)) => (dst, src),
                _ => {
                    return Err(RuntimeError::InvalidInput(
                        "loading an unwritten kv cache into a batch".into(),
                    ))
                }
            };
            for (d, s) in [(&dst.k, &src.k), (&dst.v, &src.v)] {
                if s.dim(0)? != 1 {
                    return Err(RuntimeError::InvalidInput(format!(
                        "loading a kv cache of batch {} into one slot",
                        s.dim(0)?
                    )));
                }
                d.narrow(0, slot, 1)?
                    .slice_set(&s.narrow(2, 0, row.len)?.contiguous()?, 2, 0)?;
            }
        }
        self.lens[slot] = row.len;
        self.occupied[slot] = true;
        Ok(())
    }

    /// Frees `slot` for another sequence.
    pub fn release(&mut self, slot: usize) {
        if slot < self.slots() {
            self.lens[slot] = 0;
            self.occupied[slot] = false;
        }
    }

    /// Makes every layer's buffers hold at least `rows` rows of `needed` positions, shaped
    /// like `like`'s (heads, head dim, dtype), keeping what they hold. Rows are allocated as
    /// slots are first used, not all at once: one chat on a server of eight slots holds one
    /// row.
    fn reserve(&mut self, needed: usize, rows: usize, like: &KvCache) -> Result<()> {
        for (layer, src) in self.layers.iter_mut().zip(&like.layers) {
            let Some(src) = src else { continue };
            let have = layer.as_ref().map_or(0, LayerBuffers::capacity);
            let have_rows = layer.as_ref().map_or(0, LayerBuffers::rows);
            if have >= needed && have_rows >= rows {
                continue;
            }
            let capacity = if have >= needed {
                have
            } else {
                needed.max(2 * have).next_multiple_of(CAPACITY_STEP)
            };
            let rows = rows.max(have_rows);
            *layer = Some(LayerBuffers::grown(layer.as_ref(), src, rows, capacity)?);
        }
        Ok(())
    }

    /// The longest row among the first `width`, plus the position the step adds.
    pub(crate) fn step_span(&self, width: usize) -> usize {
        self.lens[..width].iter().copied().max().unwrap_or(0) + 1
    }

    /// Positions the rows `0..width` write next (their lengths).
    pub(crate) fn positions(&self, width: usize) -> &[usize] {
        &self.lens[..width]
    }

    /// Writes one position per row (`k`, `v`: `[width, H_kv, 1, D]`) at each row's length
    /// and returns views of positions `0..step_span(width)` of rows `0..width`.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let width = k.dim(0)?;
        let span = self.step_span(width);
        if width > self.slots() || k.dim(2)? != 1 {
            return Err(RuntimeError::InvalidInput(format!(
                "batched decode of keys {:?} over {} slots",
                k.dims(),
                self.slots()
            )));
        }
        let buf = self
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| RuntimeError::InvalidInput(format!("batch has no layer {layer}")))?;
        if buf.capacity() < span || buf.rows() < width {
            return Err(RuntimeError::InvalidInput(format!(
                "batch kv cache holds {} rows of {} positions, the step needs {width} of {span}",
                buf.rows(),
                buf.capacity()
            )));
        }
        for (dst, src) in [(&buf.k, k), (&buf.v, v)] {
            for (row, &pos) in self.lens[..width].iter().enumerate() {
                dst.narrow(0, row, 1)?
                    .slice_set(&src.narrow(0, row, 1)?.contiguous()?, 2, pos)?;
            }
        }
        Ok((
            buf.k.narrow(0, 0, width)?.narrow(2, 0, span)?,
            buf.v.narrow(0, 0, width)?.narrow(2, 0, span)?,
        ))
    }

    /// Grows the buffers so that rows `0..width` can take one more position each.
    pub(crate) fn prepare_step(&mut self, width: usize) -> Result<()> {
        let span = self.step_span(width);
        let have = self
            .layers
            .iter()
            .flatten()
            .map(LayerBuffers::capacity)
            .min();
        match have {
            Some(have) if have < span => {
                let capacity = span.max(2 * have).next_multiple_of(CAPACITY_STEP);
                for layer in self.layers.iter_mut().flatten() {
                    let grown = LayerBuffers::grown(Some(&*layer), layer, layer.rows(), capacity)?;
                    *layer = grown;
                }
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(RuntimeError::InvalidInput(
                "a decode step over a batch nothing was loaded into".into(),
            )),
        }
    }

    /// Marks one more position cached in every occupied row among `0..width`.
    pub(crate) fn advance(&mut self, width: usize) {
        for (len, &occupied) in self.lens[..width].iter_mut().zip(&self.occupied) {
            if occupied {
                *len += 1;
            }
        }
    }

    /// Bytes of the buffers.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(LayerBuffers::bytes).sum()
    }
}

impl std::fmt::Debug for BatchKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchKvCache")
            .field("layers", &self.layers.len())
            .field("lens", &self.lens)
            .finish()
    }
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("layers", &self.layers.len())
            .field("len", &self.len)
            .finish()
    }
}
