//! The concept vocabulary: Yo'LLaVA subjects (Nguyen et al. 2024, "Yo'LLaVA: Your
//! Personalized Language and Vision Assistant") added to a frozen model without touching it.
//!
//! A concept `<bo>` is an identifier token with an input embedding and an LM-head column,
//! plus `k` latent tokens with input embeddings only. Active concepts get token ids after the
//! base vocabulary `V` (= `text_config.vocab_size`, the rows of `embed_tokens`):
//!
//! * `V + i` is the identifier of the `i`-th active concept (in activation order);
//! * `V + n + o ..` are latent tokens, concept after concept, where `n` is the number of
//!   active concepts and `o` the latent count of the concepts before.
//!
//! [`ConceptTable::logits`] returns `V + n` columns: the base logits, then one per active
//! identifier, so a logit's column is its token id. Ids depend on the active set: look them
//! up after (de)activating. Activation stores the concept's tensors (cloning a `Tensor` is a
//! reference count), so it costs `O(k·d)` at most and never copies or mutates base weights.
//!
//! Embedding and logits are built from `index_select`, `cat`, `where_cond` and `matmul`, so
//! when a concept's tensors are candle `Var`s the loss is differentiable with respect to them.

use std::ops::Range;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Result, RuntimeError};
use crate::model::LlavaModel;
use crate::ops;

/// One concept's trainable tensors: identifier embedding `[d]`, latent embeddings `[k, d]`,
/// identifier LM-head column `[d]`.
///
/// Invariant: shapes agree in `d`, `k >= 1`, and all three share dtype and device.
#[derive(Debug, Clone)]
pub struct ConceptWeights {
    identifier: Tensor,
    latents: Tensor,
    head: Tensor,
}

impl ConceptWeights {
    /// Checks the shapes, dtypes and devices of the three tensors.
    pub fn new(identifier: Tensor, latents: Tensor, head: Tensor) -> Result<Self> {
        let bad = |msg: String| {
            Err(RuntimeError::InvalidInput(format!(
                "concept weights: {msg}"
            )))
        };
        let d = match identifier.dims() {
            [d] => *d,
            other => return bad(format!("identifier has shape {other:?}, expected [d]")),
        };
        match latents.dims() {
            [k, dl] if *k >= 1 && *dl == d => {}
            other => {
                return bad(format!(
                    "latents have shape {other:?}, expected [k >= 1, {d}]"
                ))
            }
        }
        if head.dims() != [d] {
            return bad(format!("head has shape {:?}, expected [{d}]", head.dims()));
        }
        for (what, t) in [("latents", &latents), ("head", &head)] {
            if t.dtype() != identifier.dtype() || !t.device().same_device(identifier.device()) {
                return bad(format!(
                    "{what} is {:?} on {:?}, identifier is {:?} on {:?}",
                    t.dtype(),
                    t.device().location(),
                    identifier.dtype(),
                    identifier.device().location()
                ));
            }
        }
        Ok(ConceptWeights {
            identifier,
            latents,
            head,
        })
    }

    /// Converts a concept file's tensors to `dtype` on `device`.
    pub fn from_format(
        tensors: &concept_format::ConceptTensors,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (k, d) = (tensors.k(), tensors.d());
        let t = |v: &[f32], shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v, shape, device)?.to_dtype(dtype)?)
        };
        ConceptWeights::new(
            t(tensors.identifier(), &[d])?,
            t(tensors.latents(), &[k, d])?,
            t(tensors.head(), &[d])?,
        )
    }

    /// Converts to a concept file's tensors, rounding to `dtype`.
    pub fn to_format(
        &self,
        dtype: concept_format::DType,
    ) -> Result<concept_format::ConceptTensors> {
        let v = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        };
        concept_format::ConceptTensors::from_f32(
            dtype,
            self.k(),
            self.d(),
            v(&self.identifier)?,
            v(&self.latents)?,
            v(&self.head)?,
        )
        .map_err(|e| RuntimeError::InvalidInput(format!("concept weights: {e}")))
    }

    pub fn identifier(&self) -> &Tensor {
        &self.identifier
    }

    pub fn latents(&self) -> &Tensor {
        &self.latents
    }

    pub fn head(&self) -> &Tensor {
        &self.head
    }

    /// Number of latent tokens.
    pub fn k(&self) -> usize {
        self.latents.dims()[0]
    }

    /// Embedding width.
    pub fn d(&self) -> usize {
        self.identifier.dims()[0]
    }
}

/// Which token of which concept an id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConceptToken<'a> {
    Identifier { concept: &'a str },
    Latent { concept: &'a str, index: usize },
}

/// The active concepts of one model and the token ids they occupy.
pub struct ConceptTable {
    base_vocab: usize,
    hidden: usize,
    dtype: DType,
    device: Device,
    active: Vec<(String, ConceptWeights)>,
}

impl ConceptTable {
    /// An empty table for `model`.
    pub fn new(model: &LlavaModel) -> Self {
        ConceptTable {
            base_vocab: model.config().text.vocab_size,
            hidden: model.config().text.hidden_size,
            dtype: model.dtype(),
            device: model.device().clone(),
            active: Vec::new(),
        }
    }

    /// Adds a concept under `name`; its ids follow those of the concepts already active, and
    /// latent ids of the earlier concepts move up by one.
    pub fn activate(&mut self, name: &str, weights: ConceptWeights) -> Result<()> {
        let err = |msg: String| {
            Err(RuntimeError::Concept {
                name: name.to_string(),
                msg,
            })
        };
        if self.position(name).is_some() {
            return err("is already active".to_string());
        }
        if weights.d() != self.hidden {
            return err(format!(
                "has width {}, the model's hidden size is {}",
                weights.d(),
                self.hidden
            ));
        }
        if weights.identifier.dtype() != self.dtype
            || !weights.identifier.device().same_device(&self.device)
        {
            return err(format!(
                "tensors are {:?} on {:?}, the model computes in {:?} on {:?}",
                weights.identifier.dtype(),
                weights.identifier.device().location(),
                self.dtype,
                self.device.location()
            ));
        }
        if self.input_vocab_size() + 1 + weights.k() > u32::MAX as usize {
            return err("does not fit in u32 token ids".to_string());
        }
        self.active.push((name.to_string(), weights));
        Ok(())
    }

    /// Removes a concept and returns its weights; later concepts' ids move down.
    pub fn deactivate(&mut self, name: &str) -> Result<ConceptWeights> {
        match self.position(name) {
            Some(i) => Ok(self.active.remove(i).1),
            None => Err(RuntimeError::Concept {
                name: name.to_string(),
                msg: "is not active".to_string(),
            }),
        }
    }

    /// Active concept names in activation order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.active.iter().map(|(n, _)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&ConceptWeights> {
        self.position(name).map(|i| &self.active[i].1)
    }

    /// The base vocabulary size `V`.
    pub fn base_vocab(&self) -> usize {
        self.base_vocab
    }

    /// Ids accepted by [`ConceptTable::embed`]: `V + n + Σk`.
    pub fn input_vocab_size(&self) -> usize {
        self.base_vocab + self.active.len() + self.latent_total()
    }

    /// Columns of [`ConceptTable::logits`]: `V + n`.
    pub fn output_vocab_size(&self) -> usize {
        self.base_vocab + self.active.len()
    }

    /// The identifier token id of an active concept.
    pub fn identifier_id(&self, name: &str) -> Option<u32> {
        self.position(name).map(|i| (self.base_vocab + i) as u32)
    }

    /// The latent token ids of an active concept, in order.
    pub fn latent_ids(&self, name: &str) -> Option<Range<u32>> {
        let i = self.position(name)?;
        let start = self.base_vocab
            + self.active.len()
            + self.active[..i].iter().map(|(_, w)| w.k()).sum::<usize>();
        Some(start as u32..(start + self.active[i].1.k()) as u32)
    }

    /// What a concept token id stands for; `None` for base ids and unknown ids.
    pub fn token(&self, id: u32) -> Option<ConceptToken<'_>> {
        let id = id as usize;
        let n = self.active.len();
        let offset = id.checked_sub(self.base_vocab)?;
        if offset < n {
            return Some(ConceptToken::Identifier {
                concept: &self.active[offset].0,
            });
        }
        let mut rest = offset - n;
        for (name, w) in &self.active {
            if rest < w.k() {
                return Some(ConceptToken::Latent {
                    concept: name,
                    index: rest,
                });
            }
            rest -= w.k();
        }
        None
    }

    /// Embeddings for `ids` (u32, any shape) -> `[.., d]`: base rows for base ids, concept
    /// rows for concept ids.
    pub fn embed(&self, model: &LlavaModel, ids: &Tensor) -> Result<Tensor> {
        if ids.dtype() != DType::U32 {
            return Err(RuntimeError::InvalidInput(format!(
                "token ids of dtype {:?}, expected u32",
                ids.dtype()
            )));
        }
        let values = ids.flatten_all()?.to_vec1::<u32>()?;
        let mut shape = ids.dims().to_vec();
        shape.push(self.hidden);
        Ok(self.embed_ids(model, &values)?.reshape(shape)?)
    }

    /// Embeddings `[T, d]` for a sequence of ids.
    pub fn embed_ids(&self, model: &LlavaModel, ids: &[u32]) -> Result<Tensor> {
        let limit = self.input_vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= limit) {
            return Err(RuntimeError::InvalidInput(format!(
                "token id {bad} outside the vocabulary of {limit} (base {} and {} concepts)",
                self.base_vocab,
                self.active.len()
            )));
        }
        let n = ids.len();
        let base = self.base_vocab as u32;
        let base_ids: Vec<u32> = ids
            .iter()
            .map(|&id| if id < base { id } else { 0 })
            .collect();
        let base_rows = model.embed_tokens(&Tensor::from_vec(base_ids, n, &self.device)?)?;
        if ids.iter().all(|&id| id < base) {
            return Ok(base_rows);
        }
        let concept_ids: Vec<u32> = ids.iter().map(|&id| id.saturating_sub(base)).collect();
        let is_concept: Vec<u8> = ids.iter().map(|&id| u8::from(id >= base)).collect();
        let rows = self
            .concept_rows()?
            .index_select(&Tensor::from_vec(concept_ids, n, &self.device)?, 0)?;
        let mask =
            Tensor::from_vec(is_concept, (n, 1), &self.device)?.broadcast_as((n, self.hidden))?;
        Ok(mask.where_cond(&rows, &base_rows)?)
    }

    /// Logits `[.., V + n]` for hidden states `[.., d]`: base logits, then one column per
    /// active identifier (latent tokens have no head column).
    pub fn logits(&self, model: &LlavaModel, hidden: &Tensor) -> Result<Tensor> {
        let base = model.base_logits(hidden)?;
        match self.identifier_logits(hidden)? {
            None => Ok(base),
            Some(extra) => Ok(Tensor::cat(&[&base, &extra], D::Minus1)?),
        }
    }

    /// The active identifiers' logits `[.., n]` for hidden states `[.., d]` (the columns
    /// [`ConceptTable::logits`] appends to the base logits); `None` without active concepts.
    pub fn identifier_logits(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        match self.identifier_heads()? {
            None => Ok(None),
            Some(heads) => Ok(Some(ops::linear(hidden, &heads, None)?)),
        }
    }

    /// The active identifiers' LM-head columns as rows `[n, d]`, in id order; `None` without
    /// active concepts. A batched decode step stacks its rows' heads into one matrix.
    pub fn identifier_heads(&self) -> Result<Option<Tensor>> {
        if self.active.is_empty() {
            return Ok(None);
        }
        let heads: Vec<&Tensor> = self.active.iter().map(|(_, w)| &w.head).collect();
        Ok(Some(Tensor::stack(&heads, 0)?))
    }

    /// The embedding rows `[m, d]` of the concept tokens, in id order (row `i` is id
    /// `base_vocab + i`); `None` without active concepts. A batched decode step stacks its
    /// rows' embeddings into one matrix.
    pub fn embedding_rows(&self) -> Result<Option<Tensor>> {
        if self.active.is_empty() {
            return Ok(None);
        }
        self.concept_rows().map(Some)
    }

    /// Concept embedding rows in id order: identifiers, then every concept's latents.
    fn concept_rows(&self) -> Result<Tensor> {
        let mut rows: Vec<Tensor> = Vec::with_capacity(2 * self.active.len());
        for (_, w) in &self.active {
            rows.push(w.identifier.unsqueeze(0)?);
        }
        for (_, w) in &self.active {
            rows.push(w.latents.clone());
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.active.iter().position(|(n, _)| n == name)
    }

    fn latent_total(&self) -> usize {
        self.active.iter().map(|(_, w)| w.k()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{randn, random_model, tiny_config};

    fn weights(k: usize, seed: u64, dtype: DType) -> ConceptWeights {
        let r = |shape: &[usize], s| randn(shape, s, dtype, &Device::Cpu).unwrap();
        ConceptWeights::new(r(&[16], seed), r(&[k, 16], seed + 1), r(&[16], seed + 2)).unwrap()
    }

    fn rows(t: &Tensor) -> Vec<Vec<f64>> {
        t.to_vec2::<f64>().unwrap()
    }

    #[test]
    fn ids_follow_the_base_vocabulary_in_activation_order() {
        let (model, _) = random_model(&tiny_config(), 1, DType::F64, &Device::Cpu).unwrap();
        let mut table = ConceptTable::new(&model);
        table.activate("bo", weights(2, 10, DType::F64)).unwrap();
        table.activate("mam", weights(3, 20, DType::F64)).unwrap();
        assert_eq!(table.identifier_id("bo"), Some(40));
        assert_eq!(table.identifier_id("mam"), Some(41));
        assert_eq!(table.latent_ids("bo"), Some(42..44));
        assert_eq!(table.latent_ids("mam"), Some(44..47));
        assert_eq!(
            (table.input_vocab_size(), table.output_vocab_size()),
            (47, 42)
        );
        assert_eq!(table.token(39), None);
        assert_eq!(
            table.token(41),
            Some(ConceptToken::Identifier { concept: "mam" })
        );
        assert_eq!(
            table.token(43),
            Some(ConceptToken::Latent {
                concept: "bo",
                index: 1
            })
        );
        assert_eq!(table.token(47), None);

        table.deactivate("bo").unwrap();
        assert_eq!(table.identifier_id("mam"), Some(40));
        assert_eq!(table.latent_ids("mam"), Some(41..44));
        assert_eq!(table.names().collect::<Vec<_>>(), ["mam"]);
        assert!(table.deactivate("bo").is_err());
    }

    #[test]
    fn embeddings_mix_base_and_concept_rows() {
        let (model, _) = random_model(&tiny_config(), 1, DType::F64, &Device::Cpu).unwrap();
        let mut table = ConceptTable::new(&model);
        let bo = weights(2, 10, DType::F64);
        let mam = weights(3, 20, DType::F64);
        table.activate("bo", bo.clone()).unwrap();
        table.activate("mam", mam.clone()).unwrap();
        let ids = [3, 41, 7, 43, 46, 40];
        let got = rows(&table.embed_ids(&model, &ids).unwrap());
        let base = rows(&model.embed_weight().to_tensor().unwrap());
        let vec1 = |t: &Tensor| t.to_vec1::<f64>().unwrap();
        assert_eq!(got[0], base[3]);
        assert_eq!(got[1], vec1(mam.identifier()));
        assert_eq!(got[2], base[7]);
        assert_eq!(got[3], rows(bo.latents())[1]);
        assert_eq!(got[4], rows(mam.latents())[2]);
        assert_eq!(got[5], vec1(bo.identifier()));

        let batched = table
            .embed(
                &model,
                &Tensor::new(&[[3u32, 41], [7, 43]], &Device::Cpu).unwrap(),
            )
            .unwrap();
        assert_eq!(batched.dims(), [2, 2, 16]);
        assert_eq!(rows(&batched.get(1).unwrap())[1], got[3]);
        assert!(table.embed_ids(&model, &[47]).is_err());
    }

    #[test]
    fn logits_append_one_column_per_identifier() {
        let (model, _) = random_model(&tiny_config(), 1, DType::F64, &Device::Cpu).unwrap();
        let mut table = ConceptTable::new(&model);
        let hidden = randn(&[1, 3, 16], 5, DType::F64, &Device::Cpu).unwrap();
        let base = model.base_logits(&hidden).unwrap();
        let empty = table.logits(&model, &hidden).unwrap();
        assert_eq!(empty.dims(), [1, 3, 40]);
        let bo = weights(2, 10, DType::F64);
        let mam = weights(3, 20, DType::F64);
        table.activate("bo", bo.clone()).unwrap();
        table.activate("mam", mam.clone()).unwrap();
        let logits = table.logits(&model, &hidden).unwrap();
        assert_eq!(logits.dims(), [1, 3, 42]);
        assert_eq!(
            rows(&logits.narrow(2, 0, 40).unwrap().squeeze(0).unwrap()),
            rows(&base.squeeze(0).unwrap())
        );
        for (col, w) in [(40, &bo), (41, &mam)] {
            let got = logits.narrow(2, col, 1).unwrap().flatten_all().unwrap();
            let want = hidden
                .squeeze(0)
                .unwrap()
                .matmul(&w.head().unsqueeze(1).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        }
    }

    #[test]
    fn activation_rejects_misfits() {
        let (model, _) = random_model(&tiny_config(), 1, DType::F64, &Device::Cpu).unwrap();
        let mut table = ConceptTable::new(&model);
        table.activate("bo", weights(2, 10, DType::F64)).unwrap();
        let err = table
            .activate("bo", weights(2, 10, DType::F64))
            .unwrap_err();
        assert!(
            err.to_string().contains("concept `bo`: is already active"),
            "{err}"
        );
        let err = table
            .activate("f32", weights(2, 10, DType::F32))
            .unwrap_err();
        assert!(err.to_string().contains("F32"), "{err}");
        let narrow = ConceptWeights::new(
            Tensor::zeros(8, DType::F64, &Device::Cpu).unwrap(),
            Tensor::zeros((1, 8), DType::F64, &Device::Cpu).unwrap(),
            Tensor::zeros(8, DType::F64, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert!(table.activate("narrow", narrow).is_err());
        assert_eq!(table.len(), 1);

        let z = |shape: &[usize]| Tensor::zeros(shape, DType::F64, &Device::Cpu).unwrap();
        assert!(ConceptWeights::new(z(&[16]), z(&[2, 15]), z(&[16])).is_err());
        assert!(ConceptWeights::new(z(&[16]), z(&[0, 16]), z(&[16])).is_err());
        assert!(ConceptWeights::new(z(&[16]), z(&[2, 16]), z(&[1, 16])).is_err());
    }

    #[test]
    fn converts_to_and_from_concept_files() {
        let w = weights(3, 30, DType::F32);
        let file = w.to_format(concept_format::DType::F32).unwrap();
        assert_eq!((file.k(), file.d()), (3, 16));
        let back = ConceptWeights::from_format(&file, DType::F64, &Device::Cpu).unwrap();
        assert_eq!(back.identifier().dtype(), DType::F64);
        let same = |a: &Tensor, b: &Tensor| {
            let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
            let b = b.flatten_all().unwrap();
            assert_eq!(a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
        };
        same(w.identifier(), back.identifier());
        same(w.latents(), back.latents());
        same(w.head(), back.head());
    }
}
