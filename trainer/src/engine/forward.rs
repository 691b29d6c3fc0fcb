//! The differentiable step and the recognition read-out: image features, assembled inputs,
//! the constant prefix run once, the suffix with gradients, the loss and AdamW

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var, D};
use concepts_plugin_api::{Recognition, SampleKind, SampleRef};
use concepts_runtime::{ops, Kernels, KvCache};

use super::encode::Encoded;
use super::{ConceptParams, TrainingEngine};
use crate::error::{Result, TrainError};
use crate::prefix::{PrefixKey, PrefixReuse};
use concepts_plugin_host::BatchId;
use concepts_plugin_sdk::rng::SplitMix64;

/// Images per evaluation forward pass.
pub(super) const EVAL_BATCH: usize = 16;

/// An image variant among the cached features: (kind code, index, flipped).
pub(super) type FeatureKey = (u8, u32, bool);

/// Samples run in one decoder pass: each encoding with its image variant, if any.
pub(super) type Group<'e> = Vec<(&'e Encoded, Option<FeatureKey>)>;

impl TrainingEngine<'_> {
    pub(super) fn image(&self, kind: SampleKind, index: u32) -> Result<&image::RgbImage> {
        let list = match kind {
            SampleKind::Positive => &self.data.positives,
            SampleKind::HardNegative => &self.data.hard_negatives,
            SampleKind::EasyNegative => &self.data.easy_negatives,
            SampleKind::Conversation => {
                return Err(TrainError::Input("conversations have no image".into()))
            }
        };
        list.get(index as usize).map(|i| &i.image).ok_or_else(|| {
            TrainError::Input(format!(
                "{kind:?} {index} is out of range ({} images)",
                list.len()
            ))
        })
    }

    pub(super) fn kind_code(kind: SampleKind) -> u8 {
        match kind {
            SampleKind::Positive => 0,
            SampleKind::HardNegative => 1,
            SampleKind::EasyNegative => 2,
            SampleKind::Conversation => 3,
        }
    }

    /// Projected image features `[N, d]` of an image variant, computed once.
    pub(super) fn features(&mut self, kind: SampleKind, index: u32, flip: bool) -> Result<Tensor> {
        self.ensure_features(&[(kind, index, flip)])?;
        Ok(self.features[&(Self::kind_code(kind), index, flip)].clone())
    }

    /// Computes the missing features of `wanted` in batched vision-tower calls.
    pub(super) fn ensure_features(&mut self, wanted: &[(SampleKind, u32, bool)]) -> Result<()> {
        let mut missing: Vec<(SampleKind, u32, bool)> = Vec::new();
        for &(kind, index, flip) in wanted {
            let key = (Self::kind_code(kind), index, flip);
            if !self.features.contains_key(&key) && !missing.contains(&(kind, index, flip)) {
                missing.push((kind, index, flip));
            }
        }
        let preprocess = self.session.preprocess_config().clone();
        for chunk in missing.chunks(EVAL_BATCH) {
            let mut px = Vec::with_capacity(chunk.len());
            for &(kind, index, flip) in chunk {
                let img = self.image(kind, index)?;
                px.push(
                    crate::images::pixels(img, flip, &preprocess)?
                        .to_tensor(self.model().device())
                        .map_err(concepts_runtime::RuntimeError::from)?,
                );
            }
            let px = Tensor::cat(&px, 0)?.to_dtype(self.model().dtype())?;
            let feats = self.model().image_features(&px, Kernels::Fast)?;
            for (i, &(kind, index, flip)) in chunk.iter().enumerate() {
                self.features
                    .insert((Self::kind_code(kind), index, flip), feats.get(i)?);
            }
        }
        Ok(())
    }

    /// The padded constant embeddings `[B, T, d]` and the concept index/mask of a group of
    /// (encoding, image features) pairs.
    pub(super) fn assemble(
        &self,
        group: &[(&Encoded, Option<Tensor>)],
    ) -> Result<(Tensor, Vec<u32>, Vec<u8>, usize)> {
        let model = self.model();
        let d = model.config().text.hidden_size;
        let t_max = group.iter().map(|(e, _)| e.len).max().unwrap_or(0);
        let mut rows = Vec::with_capacity(group.len());
        let mut idx = vec![0u32; group.len() * t_max];
        let mut mask = vec![0u8; group.len() * t_max];
        for (b, (enc, feats)) in group.iter().enumerate() {
            let mut parts = Vec::new();
            match (&enc.image, feats) {
                (Some(span), Some(f)) => {
                    if span.start > 0 {
                        parts.push(enc.base.narrow(0, 0, span.start)?);
                    }
                    parts.push(f.clone());
                    if span.end < enc.len {
                        parts.push(enc.base.narrow(0, span.end, enc.len - span.end)?);
                    }
                }
                _ => parts.push(enc.base.clone()),
            }
            if enc.len < t_max {
                parts.push(Tensor::zeros(
                    (t_max - enc.len, d),
                    model.dtype(),
                    model.device(),
                )?);
            }
            rows.push(Tensor::cat(&parts, 0)?);
            for &(pos, row) in &enc.concept {
                idx[b * t_max + pos] = row;
                mask[b * t_max + pos] = 1;
            }
        }
        Ok((Tensor::stack(&rows, 0)?, idx, mask, t_max))
    }

    /// Splices the concept rows (`[1 + k, d]`, model dtype) into constant embeddings.
    pub(super) fn splice(
        &self,
        constant: &Tensor,
        rows: &Tensor,
        idx: Vec<u32>,
        mask: Vec<u8>,
    ) -> Result<Tensor> {
        let (b, t, d) = constant.dims3()?;
        let device = constant.device();
        let idx = Tensor::from_vec(idx, b * t, device)?;
        let mask = Tensor::from_vec(mask, (b * t, 1), device)?.broadcast_as((b * t, d))?;
        let picked = rows.index_select(&idx, 0)?;
        Ok(mask
            .where_cond(&picked, &constant.reshape((b * t, d))?)?
            .reshape((b, t, d))?)
    }

    /// Logits `[M, V + 1]` (f32) for hidden states `[M, d]`.
    pub(super) fn logits(&self, hidden: &Tensor, head: &Tensor) -> Result<Tensor> {
        let base = self.model().base_logits(hidden)?;
        let own = hidden.matmul(&head.unsqueeze(1)?)?;
        Ok(Tensor::cat(&[&base, &own], D::Minus1)?.to_dtype(DType::F32)?)
    }

    /// The keys and values of the constant prefixes (`p` positions) of `group`, stacked into
    /// one cache with room for `reserve` more positions: kept ones reused, the others run now
    /// (in one batch, without gradients) and kept while the budget lasts.
    pub(super) fn prefix_kv(
        &self,
        group: &[(&Encoded, Option<FeatureKey>)],
        constant: &Tensor,
        p: usize,
        reserve: usize,
    ) -> Result<KvCache> {
        let keys: Vec<PrefixKey> = group
            .iter()
            .map(|(enc, image)| PrefixKey {
                image: *image,
                ids: enc.ids[..p].to_vec(),
            })
            .collect();
        let mut store = self.prefixes.borrow_mut();
        let mut missing: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if store.get(key).is_none() && !missing.iter().any(|&j| keys[j] == *key) {
                missing.push(i);
            }
        }
        let mut unkept: HashMap<&PrefixKey, KvCache> = HashMap::new();
        if !missing.is_empty() {
            let device = constant.device();
            let picked = Tensor::from_vec(
                missing.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                missing.len(),
                device,
            )?;
            let started = std::time::Instant::now();
            let embeds = constant
                .index_select(&picked, 0)?
                .narrow(1, 0, p)?
                .contiguous()?;
            let mut kv = KvCache::new(self.model().config());
            self.model()
                .forward_embeds(&embeds, Some(&mut kv), Kernels::Fast)?;
            store.computed += missing.len() as u64;
            store.secs += started.elapsed().as_secs_f64();
            for (row, &i) in missing.iter().enumerate() {
                if let Some(back) = store.insert(keys[i].clone(), kv.row(row)?) {
                    unkept.insert(&keys[i], back);
                }
            }
        }
        let rows = keys
            .iter()
            .map(|key| {
                store
                    .get(key)
                    .or_else(|| unkept.get(key))
                    .ok_or_else(|| TrainError::Input("a prompt prefix went missing".into()))
            })
            .collect::<Result<Vec<&KvCache>>>()?;
        Ok(KvCache::stack(&rows, reserve)?)
    }

    /// Runs the decoder over a group of samples with the concept rows spliced in. Returns the
    /// final hidden states `[B, S, d]` of positions `start..start + S` of the right-padded
    /// batch: `start` is the group's constant prefix when it is reused ([`PrefixReuse`]), 0
    /// otherwise. Every sample of the group must have the same prefix length.
    pub(super) fn forward_group(
        &self,
        group: &[(&Encoded, Option<FeatureKey>)],
        rows: &Tensor,
        kernels: Kernels,
    ) -> Result<(Tensor, usize)> {
        let with_features: Vec<(&Encoded, Option<Tensor>)> = group
            .iter()
            .map(|&(enc, key)| (enc, key.map(|k| self.features[&k].clone())))
            .collect();
        let (constant, idx, mask, t) = self.assemble(&with_features)?;
        drop(with_features);
        let p = group.first().map_or(0, |(enc, _)| enc.prefix);
        debug_assert!(group.iter().all(|(enc, _)| enc.prefix == p));
        if self.cfg.prefix == PrefixReuse::Off || p == 0 {
            let embeds = self.splice(&constant, rows, idx, mask)?;
            return Ok((self.model().forward_embeds(&embeds, None, kernels)?, 0));
        }
        let s = t - p;
        let mut cache = self.prefix_kv(group, &constant, p, s)?;
        fn suffix<T: Copy>(v: &[T], t: usize, p: usize) -> Vec<T> {
            v.chunks(t)
                .flat_map(|row| row[p..].iter().copied())
                .collect()
        }
        let embeds = self.splice(
            &constant.narrow(1, p, s)?,
            rows,
            suffix(&idx, t, p),
            suffix(&mask, t, p),
        )?;
        let hidden = self
            .model()
            .forward_embeds(&embeds, Some(&mut cache), kernels)?;
        Ok((hidden, p))
    }

    /// Sum of the answer-token NLL of a batch and the number of answer tokens.
    pub(super) fn batch_nll(
        &mut self,
        samples: &[(SampleRef, bool)],
        rows: &Tensor,
        head: &Tensor,
    ) -> Result<(Tensor, usize)> {
        let wanted: Vec<(SampleKind, u32, bool)> = samples
            .iter()
            .filter(|(s, _)| s.kind != SampleKind::Conversation)
            .map(|(s, flip)| (s.kind, s.index, *flip))
            .collect();
        self.ensure_features(&wanted)?;
        // Image-free samples apart (they would be padded to image length), and samples with
        // different prefix lengths apart (a prefix cannot be padded).
        let mut groups: BTreeMap<(bool, usize), Group<'_>> = BTreeMap::new();
        for (s, flip) in samples {
            let enc = self.encoded(s)?;
            let image = (s.kind != SampleKind::Conversation)
                .then(|| (Self::kind_code(s.kind), s.index, *flip));
            groups
                .entry((image.is_some(), enc.prefix))
                .or_default()
                .push((enc, image));
        }
        let mut total: Option<Tensor> = None;
        let mut count = 0;
        for group in groups.values() {
            let (hidden, start) = self.forward_group(group, rows, Kernels::Differentiable)?;
            let (b, s, d) = hidden.dims3()?;
            let mut loss_rows = Vec::new();
            let mut targets = Vec::new();
            for (i, (enc, _)) in group.iter().enumerate() {
                for &(pos, target) in &enc.targets {
                    loss_rows.push((i * s + pos - start) as u32);
                    targets.push(target);
                }
            }
            let device = hidden.device().clone();
            let n = loss_rows.len();
            let picked = hidden
                .reshape((b * s, d))?
                .index_select(&Tensor::from_vec(loss_rows, n, &device)?, 0)?;
            let logp = ops::log_softmax_last_dim(&self.logits(&picked, head)?)?;
            let nll = logp
                .gather(&Tensor::from_vec(targets, (n, 1), &device)?, 1)?
                .neg()?
                .sum_all()?;
            count += n;
            total = Some(match total {
                Some(t) => (t + nll)?,
                None => nll,
            });
        }
        let total = total.ok_or_else(|| TrainError::Input("empty batch".into()))?;
        Ok((total, count))
    }

    /// The mean answer-token loss of `batch` at the current parameters and its gradients
    /// with respect to the concept rows `[1 + k, d]` and the head column `[d]` (f32). The
    /// step applies AdamW to these; tests compare them across [`PrefixReuse`] settings.
    pub fn loss_and_gradients(&mut self, batch: BatchId) -> Result<(f32, Tensor, Tensor)> {
        let samples = self
            .batches
            .get(&batch.0)
            .cloned()
            .ok_or_else(|| TrainError::Input(format!("no batch {}", batch.0)))?;
        let dtype = self.model().dtype();
        let rows_var = Var::from_tensor(&self.params.rows)?;
        let head_var = Var::from_tensor(&self.params.head)?;
        let rows = rows_var.as_tensor().to_dtype(dtype)?;
        let head = head_var.as_tensor().to_dtype(dtype)?;
        let (nll, count) = self.batch_nll(&samples, &rows, &head)?;
        let loss = (nll / count as f64)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Ok((
                value,
                self.params.rows.zeros_like()?,
                self.params.head.zeros_like()?,
            ));
        }
        let grads = loss.backward()?;
        let g_rows = match grads.get(rows_var.as_tensor()) {
            Some(g) => g.clone(),
            None => self.params.rows.zeros_like()?,
        };
        let g_head = match grads.get(head_var.as_tensor()) {
            Some(g) => g.clone(),
            None => self.params.head.zeros_like()?,
        };
        Ok((value, g_rows, g_head))
    }

    pub(super) fn step(&mut self, batch: BatchId, lr: f32) -> Result<f32> {
        let (value, g_rows, g_head) = self.loss_and_gradients(batch)?;
        if !value.is_finite() {
            return Ok(value);
        }
        let a = self.cfg.adamw;
        let m = &mut self.moments;
        m.t += 1;
        let lr = f64::from(lr);
        // Weight decay applies to every trainable tensor here, as Yo'LLaVA's optimiser does.
        let update =
            |p: &Tensor, g: &Tensor, mo: &Tensor, v: &Tensor| a.update(p, g, mo, v, m.t, lr, true);
        let (rows, m_rows, v_rows) = update(&self.params.rows, &g_rows, &m.m_rows, &m.v_rows)?;
        let (head, m_head, v_head) = update(&self.params.head, &g_head, &m.m_head, &m.v_head)?;
        m.m_rows = m_rows;
        m.v_rows = v_rows;
        m.m_head = m_head;
        m.v_head = v_head;
        self.params = ConceptParams { rows, head };
        Ok(value)
    }

    /// Recognition over every training image (unflipped) with the evaluation question.
    pub(super) fn recognition(&mut self) -> Result<Recognition> {
        let dtype = self.model().dtype();
        let rows = self.params.rows.to_dtype(dtype)?;
        let head = self.params.head.to_dtype(dtype)?;
        let mut images: Vec<(SampleKind, u32)> = Vec::new();
        for (kind, n) in [
            (SampleKind::Positive, self.data.positives.len()),
            (SampleKind::HardNegative, self.data.hard_negatives.len()),
            (SampleKind::EasyNegative, self.data.easy_negatives.len()),
        ] {
            images.extend((0..n as u32).map(|i| (kind, i)));
        }
        let (mut pos_ok, mut pos_n, mut neg_ok, mut neg_n, mut loss) =
            (0u32, 0u32, 0u32, 0u32, 0f64);
        for chunk in images.chunks(EVAL_BATCH) {
            let wanted: Vec<_> = chunk.iter().map(|&(k, i)| (k, i, false)).collect();
            self.ensure_features(&wanted)?;
            let group: Vec<(&Encoded, Option<FeatureKey>)> = chunk
                .iter()
                .map(|&(k, i)| (&self.eval, Some((Self::kind_code(k), i, false))))
                .collect();
            let (hidden, start) = self.forward_group(&group, &rows, Kernels::Fast)?;
            let last = hidden.narrow(1, self.eval.len - 1 - start, 1)?.squeeze(1)?;
            let logp = ops::log_softmax_last_dim(&self.logits(&last, &head)?)?.to_vec2::<f32>()?;
            for (&(kind, _), lp) in chunk.iter().zip(logp) {
                let (yes, no) = (lp[self.yes_id as usize], lp[self.no_id as usize]);
                let positive = kind == SampleKind::Positive;
                let said_yes = yes > no;
                loss -= f64::from(if positive { yes } else { no });
                if positive {
                    pos_n += 1;
                    pos_ok += u32::from(said_yes);
                } else {
                    neg_n += 1;
                    neg_ok += u32::from(!said_yes);
                }
            }
        }
        let frac = |a: u32, b: u32| if b == 0 { 1.0 } else { a as f32 / b as f32 };
        let n = pos_n + neg_n;
        Ok(Recognition {
            accuracy: frac(pos_ok + neg_ok, n),
            positive_accuracy: frac(pos_ok, pos_n),
            negative_accuracy: frac(neg_ok, neg_n),
            loss: (loss / f64::from(n.max(1))) as f32,
            examples: n,
        })
    }

    pub(super) fn flip(&self, batch: u32, position: usize) -> bool {
        SplitMix64::hash(self.cfg.seed ^ (u64::from(batch) << 24) ^ position as u64) & 1 == 1
    }
}
