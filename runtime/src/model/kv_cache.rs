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

use candle_core::{DType, Tensor};

use crate::config::LlavaConfig;
use crate::error::{Result, RuntimeError};

/// Capacity is allocated in multiples of this many positions.
const CAPACITY_STEP: usize = 64;

/// Keys and values of every language-model layer for the tokens fed so far.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Option<Arc<LayerBuffers>>>,
    len: usize,
    /// Positions the next allocation makes room for at least ([`KvCache::reserve`]).
    reserved: usize,
    /// The dtype keys and values are kept in, if not the one they are computed in
    /// ([`KvCache::storing`]).
    storage: Option<DType>,
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
            reserved: 0,
            storage: None,
        }
    }

    /// This cache keeping keys and values in `dtype` (`None`: as computed). An f32 model
    /// with an f16 cache holds half the bytes per position; a decode step attends over the
    /// f16 keys and values as they lie (`ops::attention`), a prefill over its own f32 ones.
    /// Set it before the first token is fed.
    pub fn storing(mut self, dtype: Option<DType>) -> Self {
        self.storage = dtype;
        self
    }

    /// The dtype keys and values are kept in, if not the one they are computed in.
    pub fn storage(&self) -> Option<DType> {
        self.storage
    }

    /// Makes the next allocation of the buffers (the first, or a growth) hold at least
    /// `positions` positions, where it would otherwise hold what is written plus a doubling
    /// margin. A sequence that knows how long it may become (prompt plus the tokens it may
    /// generate) is then allocated once: at LLaVA-7B's size every doubling of an f32 cache
    /// of 640 positions holds 0.67 GB and 1.34 GB at once while copying.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = positions;
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
        let (k, v) = match self.storage {
            Some(dtype) => (k.to_dtype(dtype)?, v.to_dtype(dtype)?),
            None => (k.clone(), v.clone()),
        };
        let (k, v) = (&k, &v);
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
            let capacity = needed
                .max(grown)
                .max(self.reserved)
                .next_multiple_of(CAPACITY_STEP);
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
                    copy_of(&t.narrow(0, b, 1)?.narrow(2, 0, self.len)?)
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
            reserved: 0,
            storage: self.storage,
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
        Ok(KvCache {
            layers,
            len,
            reserved: 0,
            storage: first.storage,
        })
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

/// Exactly the elements of `view`, in a buffer of their own. Not `Tensor::copy`: that clones
/// the whole storage a view lies in (for a prefix of one row, every row and position of the
/// cache: a 7B image chat's prefix entry held its whole 0.67 GB cache that way). Not
/// `contiguous` alone either: a view that is already contiguous would stay a view.
fn copy_of(view: &Tensor) -> Result<Tensor> {
    if !view.is_contiguous() {
        return Ok(view.contiguous()?);
    }
    let out = Tensor::zeros(view.shape(), view.dtype(), view.device())?;
    out.slice_set(view, 0, 0)?;
    Ok(out)
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

    /// Takes a sequence's cache (batch 1, as its prefill left it) into the free `slot`, with
    /// room for one more position and for as many as the cache [reserved](KvCache::reserve).
    ///
    /// The first sequence of an empty batch, in slot 0, hands over its buffers when nothing
    /// else holds them and they have that room: no second copy of its keys and values (for
    /// LLaVA-7B with an image in f32, 0.67 GB) exists even for a moment. Otherwise they are
    /// copied into the batch's buffers, which grow as needed.
    pub fn load(&mut self, slot: usize, row: KvCache) -> Result<()> {
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
        let needed = (row.len + 1).max(row.reserved);
        let len = row.len;
        // The row comes back when its buffers could not be taken over.
        let row = self.take_buffers(slot, row, needed).err();
        tracing::debug!(
            slot,
            positions = len,
            room = needed,
            copied = row.is_some(),
            "kv cache loaded into the batch"
        );
        if let Some(row) = row {
            // Rows up to this slot only (a 7B's 8 rows of 1024 positions would be 4.3 GB in
            // f16).
            self.reserve(needed, slot + 1, &row)?;
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
                        .slice_set(&s.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
            }
        }
        self.lens[slot] = len;
        self.occupied[slot] = true;
        Ok(())
    }

    /// Makes `row`'s buffers the batch's when the batch holds none yet, `slot` is 0 and every
    /// layer's buffers are `row`'s alone, of batch 1, with room for `needed` positions; gives
    /// `row` back otherwise.
    fn take_buffers(
        &mut self,
        slot: usize,
        mut row: KvCache,
        needed: usize,
    ) -> std::result::Result<(), KvCache> {
        let movable = slot == 0
            && self.layers.iter().all(Option::is_none)
            && row.layers.iter().all(|layer| {
                layer.as_ref().is_some_and(|buf| {
                    Arc::strong_count(buf) == 1 && buf.rows() == 1 && buf.capacity() >= needed
                })
            });
        if !movable {
            return Err(row);
        }
        for (dst, src) in self.layers.iter_mut().zip(row.layers.iter_mut()) {
            let buf = src.take().expect("checked above");
            *dst = Some(Arc::into_inner(buf).expect("checked above: held by the row alone"));
        }
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
            // In the dtype the loaded caches kept (an f16 cache of an f32 model).
            let src = src.to_dtype(dst.dtype())?;
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Storage};

    use super::*;
    use crate::testing::{max_abs_diff, randn, tiny_config};

    /// Elements of the storage `t` lies in (not of the view).
    fn storage_len(t: &Tensor) -> usize {
        match &*t.storage_and_layout().0 {
            Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
            _ => unreachable!("the test's caches are f32 on the CPU"),
        }
    }

    /// A row copied out of a longer cache (as the prefix cache keeps prompt prefixes) holds
    /// its own positions only, in storage of exactly that size, whatever the cache's
    /// capacity and batch.
    #[test]
    fn a_row_holds_only_its_positions() {
        let cfg = tiny_config();
        let mut cache = KvCache::new(&cfg);
        cache.reserve(200);
        let (h, d) = (2, 4);
        for (layer, seed) in (0..cache.num_layers()).zip(10u64..) {
            let k = randn(&[3, h, 100, d], seed, DType::F32, &Device::Cpu).unwrap();
            cache
                .append(layer, &k, &k.affine(2.0, 0.0).unwrap())
                .unwrap();
        }
        cache.advance(100);
        for (b, len) in [(1, 10), (2, 100)] {
            let mut prefix = cache.clone();
            prefix.truncate(len);
            let row = prefix.row(b).unwrap();
            assert_eq!(row.len(), len);
            for (src, own) in cache.layers.iter().zip(&row.layers) {
                let (src, own) = (src.as_ref().unwrap(), own.as_ref().unwrap());
                for (s, o) in [(&src.k, &own.k), (&src.v, &own.v)] {
                    assert_eq!(o.dims(), [1, h, len, d]);
                    assert_eq!(storage_len(o), h * len * d, "row {b}, {len} positions");
                    let want = s.narrow(0, b, 1).unwrap().narrow(2, 0, len).unwrap();
                    assert_eq!(max_abs_diff(o, &want), 0.0);
                }
            }
        }
        // A row that is its cache's whole buffer (batch 1, full) is a view that is contiguous
        // already: still copied, never shared with the cache it came from.
        let mut full = KvCache::new(&cfg);
        for layer in 0..full.num_layers() {
            let k = randn(&[1, h, CAPACITY_STEP, d], 7, DType::F32, &Device::Cpu).unwrap();
            full.append(layer, &k, &k).unwrap();
        }
        full.advance(CAPACITY_STEP);
        let row = full.row(0).unwrap();
        let (src, own) = (
            full.layers[0].as_ref().unwrap(),
            row.layers[0].as_ref().unwrap(),
        );
        assert_eq!(max_abs_diff(&src.k, &own.k), 0.0);
        let (a, b) = (src.k.storage_and_layout().0, own.k.storage_and_layout().0);
        let ptr = |s: &Storage| match s {
            Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.as_ptr(),
            _ => unreachable!(),
        };
        assert_ne!(ptr(&a), ptr(&b), "the row shares the cache's storage");
    }
}
