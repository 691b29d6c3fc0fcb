//! LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning"), as
//! transformers' `LlavaForConditionalGeneration`: a CLIP ViT vision tower, a two-layer MLP
//! projector, and a Llama decoder with an untied LM head.
//!
//! The model is frozen: every weight is a plain [`Tensor`] or a [`WeightMatrix`] read in place
//! from the checkpoint's memory map, never a `Var`, so it neither records nor receives
//! gradients. Trainable concept embeddings enter through
//! [`LlavaModel::forward_embeds`], which starts from embeddings rather than token ids. This
//! module does no file I/O; `crate::weights` loads checkpoints.

mod amx;
mod block_dots;
mod clip;
mod kv_cache;
mod linear;
mod llama;
mod matrix;
mod projector;
mod row_dots;
mod source;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{FeatureSelect, LlavaConfig};
use crate::error::Result;
use crate::ops::Kernels;
use crate::quant::QuantizedLinears;
use source::Weights;

pub use amx::disable_amx_tiles;
pub use kv_cache::{BatchKvCache, KvCache};
pub use matrix::WeightMatrix;
pub(crate) use matrix::{MappedMatrix, MIN_MAPPED_ELEMENTS};

use clip::ClipVisionTower;
use llama::Llama;
use projector::Projector;

/// A loaded LLaVA-1.5 model.
pub struct LlavaModel {
    cfg: LlavaConfig,
    vision: ClipVisionTower,
    projector: Projector,
    llama: Llama,
    /// The dtype its key/value caches keep ([`LlavaModel::kv_cache`]), if not the compute dtype.
    kv_storage: Option<DType>,
}

impl LlavaModel {
    /// Builds the model from weights under the hub layout's names (`vision_tower.vision_model`,
    /// `multi_modal_projector`, `language_model.{model,lm_head}`); `crate::weights` maps other
    /// layouts onto these. Tensors come in the `VarBuilder`'s dtype and device.
    pub fn from_varbuilder(cfg: LlavaConfig, vb: VarBuilder) -> Result<Self> {
        LlavaModel::from_weights(cfg, Weights::new(vb, None, None))
    }

    /// [`LlavaModel::from_varbuilder`] with the linear layers found in `quantized` taken
    /// from it instead of the `VarBuilder` (a folder written by [`crate::quant::quantize_model`]).
    pub fn from_quantized(
        cfg: LlavaConfig,
        vb: VarBuilder,
        quantized: Arc<QuantizedLinears>,
    ) -> Result<Self> {
        LlavaModel::from_weights(cfg, Weights::new(vb, Some(quantized), None))
    }

    /// A checkpoint's model: linear layers from `quantized` where given, large matrices read
    /// in place from `mapped` where they can be (`model::matrix`), the rest from `vb`.
    pub(crate) fn from_parts(
        cfg: LlavaConfig,
        vb: VarBuilder,
        quantized: Option<Arc<QuantizedLinears>>,
        mapped: Option<Arc<crate::weights::MappedFiles>>,
    ) -> Result<Self> {
        LlavaModel::from_weights(cfg, Weights::new(vb, quantized, mapped))
    }

    fn from_weights(cfg: LlavaConfig, vb: Weights) -> Result<Self> {
        cfg.validate()?;
        let vision = ClipVisionTower::load(
            vb.pp("vision_tower").pp("vision_model"),
            &cfg.vision,
            cfg.vision_feature_layer,
        )?;
        let projector = Projector::load(vb.pp("multi_modal_projector"), &cfg)?;
        let llama = Llama::load(vb.pp("language_model"), &cfg.text)?;
        // Weights already rounded to 8 or 4 bits lose nothing that matters when keys and
        // values are rounded to f16 (llama.cpp's default cache too), and the cache is then
        // half its f32 size: for LLaVA-7B with an image and a 512-token answer, 0.6 GB less.
        let kv_storage =
            (vb.is_quantized() && llama.embed_weight().dtype() == DType::F32).then_some(DType::F16);
        Ok(LlavaModel {
            cfg,
            vision,
            projector,
            llama,
            kv_storage,
        })
    }

    /// An empty key/value cache for this model, keeping keys and values in
    /// [`LlavaModel::kv_storage`]. Use it rather than [`KvCache::new`] for inference.
    pub fn kv_cache(&self) -> KvCache {
        KvCache::new(&self.cfg).storing(self.kv_storage)
    }

    /// The dtype [`LlavaModel::kv_cache`] keeps keys and values in, if not the compute dtype:
    /// f16 for an f32 computation over quantized weights, else none.
    pub fn kv_storage(&self) -> Option<DType> {
        self.kv_storage
    }

    /// Makes [`LlavaModel::kv_cache`] keep keys and values in `dtype` (`None`: as computed).
    pub fn set_kv_storage(&mut self, dtype: Option<DType>) {
        self.kv_storage = dtype.filter(|&d| d != self.dtype());
    }

    pub fn config(&self) -> &LlavaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.llama.embed_weight().device()
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.llama.embed_weight().dtype()
    }

    /// Projected image features `[B, N, d_text]` for `[B, C, H, W]` pixel values, one row per
    /// `<image>` token (`N` = [`LlavaConfig::image_seq_len`]).
    pub fn image_features(&self, pixel_values: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let hidden = self.vision_feature_state(pixel_values, kernels)?;
        self.project_vision_state(&hidden, kernels)
    }

    /// The vision hidden state the projector reads, `hidden_states[vision_feature_layer]`
    /// (`[B, N + 1, d_vision]`, CLS first).
    pub fn vision_feature_state(&self, pixel_values: &Tensor, kernels: Kernels) -> Result<Tensor> {
        self.vision
            .hidden_state(pixel_values, self.cfg.vision_feature_layer, kernels)
    }

    /// The second half of [`LlavaModel::image_features`]: feature selection and the projector
    /// applied to a [`LlavaModel::vision_feature_state`]. Pretraining with a frozen tower
    /// runs the tower without gradients and only this part with them.
    pub fn project_vision_state(&self, hidden: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let selected = match self.cfg.vision_feature_select {
            FeatureSelect::Default => {
                let n = hidden.dim(1)?;
                hidden.narrow(1, 1, n - 1)?
            }
            FeatureSelect::Full => hidden.clone(),
        };
        self.projector.forward(&selected, kernels)
    }

    /// Every vision hidden state the checkpoint's layers produce (`[B, N + 1, d_vision]`
    /// each): index 0 is the embeddings after `pre_layrnorm`, index `i` the output of
    /// encoder layer `i - 1`, as transformers' `output_hidden_states`.
    pub fn vision_hidden_states(
        &self,
        pixel_values: &Tensor,
        kernels: Kernels,
    ) -> Result<Vec<Tensor>> {
        let last = self.vision.available_hidden_states() - 1;
        self.vision.hidden_states(pixel_values, last, kernels)
    }

    /// CLIP's pooled image embedding `[B, d_vision]`: `post_layernorm` of the last layer's
    /// CLS token. Fails on checkpoints without the last vision layer or `post_layernorm`.
    pub fn pooled_image_embedding(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.vision.pooled(pixel_values, Kernels::Fast)
    }

    /// CLIP's pooled image embedding from the last of [`LlavaModel::vision_hidden_states`],
    /// with the given kernels (differentiable for training the tower).
    pub fn pool_vision_state(&self, last: &Tensor, kernels: Kernels) -> Result<Tensor> {
        self.vision.pool(last, kernels)
    }

    /// Rows of the base embedding table for `ids` (u32, any shape) -> `[.., d_text]`.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.llama.embed(ids)
    }

    /// Runs the language model over `[B, T, d_text]` embeddings and returns the final-normed
    /// hidden states `[B, T, d_text]`. With a cache, the tokens take positions
    /// `cache.len()..cache.len() + T`, attend to everything cached, and are appended.
    ///
    /// With [`Kernels::Differentiable`] and a non-empty cache, gradients flow through this
    /// call's tokens only; cached keys and values are constants.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        self.llama.forward_embeds(embeds, cache, kernels)
    }

    /// One decode step for several sequences at once: row `b` of `embeds` (`[B, 1, d_text]`)
    /// is the next token of the sequence in slot `b` of `cache`, at that sequence's own
    /// position, attending to its own positions only. Returns final-normed hidden states
    /// `[B, 1, d_text]`; each row equals a [`LlavaModel::forward_embeds`] of that sequence
    /// alone up to floating-point rounding. Fast kernels (inference only).
    pub fn decode_batch(&self, embeds: &Tensor, cache: &mut BatchKvCache) -> Result<Tensor> {
        self.llama.decode_batch(embeds, cache)
    }

    /// Logits over the base vocabulary `[.., vocab_size]` for hidden states `[.., d_text]`.
    /// Slice to the positions you need first: the head is the largest matrix of the model.
    pub fn base_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.llama.logits(hidden)
    }

    /// The LM head `[vocab_size, d_text]`, as the checkpoint stores it.
    pub fn lm_head_weight(&self) -> &WeightMatrix {
        self.llama.lm_head_weight()
    }

    /// Whether [`LlavaModel::base_logits`] multiplies with a quantized copy of the head (a
    /// folder written by `concepts quantize`) rather than with [`LlavaModel::lm_head_weight`].
    pub fn lm_head_is_quantized(&self) -> bool {
        self.llama.lm_head_is_quantized()
    }

    /// The token embedding table `[vocab_size, d_text]`.
    pub fn embed_weight(&self) -> &WeightMatrix {
        self.llama.embed_weight()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::FeatureSelect;
    use crate::testing::{
        max_abs_diff, randn, random_model, tiny_config, tiny_config_gqa, RandomWeights,
    };

    fn pixels(dtype: DType) -> Tensor {
        randn(&[2, 3, 28, 28], 31, dtype, &Device::Cpu).unwrap()
    }

    /// A model from `weights` after `edit` changed some of them.
    fn edited(
        cfg: &LlavaConfig,
        weights: &RandomWeights,
        edit: impl Fn(&str, &Tensor) -> Option<Tensor>,
    ) -> LlavaModel {
        let tensors: HashMap<String, Tensor> = weights
            .recorded()
            .into_iter()
            .map(|(n, t)| {
                let t = edit(&n, &t).unwrap_or(t);
                (n, t)
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F64, &Device::Cpu);
        LlavaModel::from_varbuilder(cfg.clone(), vb).unwrap()
    }

    #[test]
    fn features_come_from_hidden_state_l_minus_2_without_post_layernorm() {
        let cfg = tiny_config();
        let (model, weights) = random_model(&cfg, 1, DType::F64, &Device::Cpu).unwrap();
        let px = pixels(DType::F64);
        let features = model.image_features(&px, Kernels::Fast).unwrap();
        assert_eq!(
            features.dims(),
            [2, cfg.image_seq_len(), cfg.text.hidden_size]
        );

        // The projector applied to hidden_states[1] (output of layer 0) without CLS.
        let states = model.vision_hidden_states(&px, Kernels::Fast).unwrap();
        assert_eq!(states.len(), 3);
        let want = model
            .projector
            .forward(&states[1].narrow(1, 1, 4).unwrap(), Kernels::Fast)
            .unwrap();
        assert_eq!(max_abs_diff(&features, &want), 0.0);

        // Changing the last layer or post_layernorm moves the pooled embedding only.
        let scale = |n: &str, t: &Tensor| {
            (n.contains("encoder.layers.1.") || n.contains("post_layernorm"))
                .then(|| (t * 1.5).unwrap())
        };
        let tail = edited(&cfg, &weights, scale);
        let pooled = model.pooled_image_embedding(&px).unwrap();
        assert_eq!(pooled.dims(), [2, cfg.vision.hidden_size]);
        assert_eq!(
            max_abs_diff(&tail.image_features(&px, Kernels::Fast).unwrap(), &features),
            0.0
        );
        assert!(max_abs_diff(&tail.pooled_image_embedding(&px).unwrap(), &pooled) > 1e-3);

        // Changing layer 0 moves the features.
        let first = edited(&cfg, &weights, |n, t| {
            n.contains("encoder.layers.0.mlp.fc2.weight")
                .then(|| (t * 1.5).unwrap())
        });
        assert!(
            max_abs_diff(
                &first.image_features(&px, Kernels::Fast).unwrap(),
                &features
            ) > 1e-3
        );
    }

    #[test]
    fn full_selection_keeps_the_cls_token() {
        let mut cfg = tiny_config();
        let (model, _) = random_model(&cfg, 1, DType::F64, &Device::Cpu).unwrap();
        cfg.vision_feature_select = FeatureSelect::Full;
        let (full, _) = random_model(&cfg, 1, DType::F64, &Device::Cpu).unwrap();
        let px = pixels(DType::F64);
        let a = model.image_features(&px, Kernels::Fast).unwrap();
        let b = full.image_features(&px, Kernels::Fast).unwrap();
        assert_eq!(b.dims(), [2, 5, 16]);
        assert_eq!(max_abs_diff(&b.narrow(1, 1, 4).unwrap(), &a), 0.0);
    }

    #[test]
    fn fast_matches_differentiable_in_f32() {
        for cfg in [tiny_config(), tiny_config_gqa()] {
            let (model, _) = random_model(&cfg, 2, DType::F32, &Device::Cpu).unwrap();
            let px = pixels(DType::F32);
            let fast = model.image_features(&px, Kernels::Fast).unwrap();
            let diff = model.image_features(&px, Kernels::Differentiable).unwrap();
            assert!(max_abs_diff(&fast, &diff) < 1e-5);
            let embeds = randn(&[2, 7, 16], 3, DType::F32, &Device::Cpu).unwrap();
            let fast = model.forward_embeds(&embeds, None, Kernels::Fast).unwrap();
            let diff = model
                .forward_embeds(&embeds, None, Kernels::Differentiable)
                .unwrap();
            assert!(max_abs_diff(&fast, &diff) < 1e-5);
        }
    }

    /// An image's features are the same bits whichever images share its batch (the trainer
    /// caches them per view, and a resumed run must reproduce an uninterrupted one).
    #[test]
    fn image_features_do_not_depend_on_the_batch() {
        let (model, _) = random_model(&tiny_config(), 5, DType::F32, &Device::Cpu).unwrap();
        let px = randn(&[6, 3, 28, 28], 32, DType::F32, &Device::Cpu).unwrap();
        let all = model.image_features(&px, Kernels::Fast).unwrap();
        for i in 0..6 {
            let one = model
                .image_features(&px.narrow(0, i, 1).unwrap(), Kernels::Fast)
                .unwrap();
            assert_eq!(max_abs_diff(&one, &all.narrow(0, i, 1).unwrap()), 0.0);
        }
    }

    #[test]
    fn batch_rows_match_single_sequences() {
        let cfg = tiny_config_gqa();
        let (model, _) = random_model(&cfg, 3, DType::F64, &Device::Cpu).unwrap();
        let embeds = randn(&[2, 5, 16], 4, DType::F64, &Device::Cpu).unwrap();
        let both = model.forward_embeds(&embeds, None, Kernels::Fast).unwrap();
        for b in 0..2 {
            let one = model
                .forward_embeds(&embeds.narrow(0, b, 1).unwrap(), None, Kernels::Fast)
                .unwrap();
            assert!(max_abs_diff(&one, &both.narrow(0, b, 1).unwrap()) < 1e-12);
        }
    }

    #[test]
    fn causal_attention_ignores_later_tokens() {
        let cfg = tiny_config();
        let (model, _) = random_model(&cfg, 3, DType::F64, &Device::Cpu).unwrap();
        let embeds = randn(&[1, 6, 16], 5, DType::F64, &Device::Cpu).unwrap();
        let other = Tensor::cat(
            &[
                &embeds.narrow(1, 0, 4).unwrap(),
                &randn(&[1, 2, 16], 6, DType::F64, &Device::Cpu).unwrap(),
            ],
            1,
        )
        .unwrap();
        for k in [Kernels::Fast, Kernels::Differentiable] {
            let a = model.forward_embeds(&embeds, None, k).unwrap();
            let b = model.forward_embeds(&other, None, k).unwrap();
            assert!(max_abs_diff(&a.narrow(1, 0, 4).unwrap(), &b.narrow(1, 0, 4).unwrap()) < 1e-12);
            assert!(max_abs_diff(&a.narrow(1, 4, 2).unwrap(), &b.narrow(1, 4, 2).unwrap()) > 1e-3);
        }
    }

    /// Feeds `embeds` through a cache in chunks of the given sizes.
    fn chunked(
        model: &LlavaModel,
        cache: &mut KvCache,
        embeds: &Tensor,
        chunks: &[usize],
        k: Kernels,
    ) -> Tensor {
        let mut start = 0;
        let mut outs = Vec::new();
        for &n in chunks {
            let part = embeds.narrow(1, start, n).unwrap();
            outs.push(model.forward_embeds(&part, Some(cache), k).unwrap());
            start += n;
        }
        Tensor::cat(&outs, 1).unwrap()
    }

    #[test]
    fn cached_decoding_matches_one_full_forward() {
        for mut cfg in [tiny_config(), tiny_config_gqa()] {
            cfg.text.max_position_embeddings = 160;
            let (model, _) = random_model(&cfg, 4, DType::F64, &Device::Cpu).unwrap();
            let embeds = randn(&[1, 9, 16], 7, DType::F64, &Device::Cpu).unwrap();
            let full = model.forward_embeds(&embeds, None, Kernels::Fast).unwrap();
            for k in [Kernels::Fast, Kernels::Differentiable] {
                let mut cache = KvCache::new(&cfg);
                let out = chunked(&model, &mut cache, &embeds, &[5, 1, 1, 2], k);
                assert_eq!(cache.len(), 9);
                assert!(max_abs_diff(&out, &full) < 1e-12, "{k:?}");
            }
            // Past the first 64-position capacity step, so buffers grow.
            let long = randn(&[1, 64 + 3, 16], 8, DType::F64, &Device::Cpu).unwrap();
            let full = model.forward_embeds(&long, None, Kernels::Fast).unwrap();
            let mut cache = KvCache::new(&cfg);
            let out = chunked(
                &model,
                &mut cache,
                &long,
                &[60, 3, 1, 1, 1, 1],
                Kernels::Fast,
            );
            assert!(max_abs_diff(&out, &full) < 1e-12);
        }
    }

    #[test]
    fn cloned_caches_continue_a_shared_prefix_independently() {
        let cfg = tiny_config_gqa();
        let (model, _) = random_model(&cfg, 5, DType::F64, &Device::Cpu).unwrap();
        let prefix = randn(&[1, 6, 16], 9, DType::F64, &Device::Cpu).unwrap();
        let a = randn(&[1, 3, 16], 10, DType::F64, &Device::Cpu).unwrap();
        let b = randn(&[1, 2, 16], 11, DType::F64, &Device::Cpu).unwrap();
        let tail = |x: &Tensor| {
            let full = Tensor::cat(&[&prefix, x], 1).unwrap();
            let out = model.forward_embeds(&full, None, Kernels::Fast).unwrap();
            out.narrow(1, 6, x.dim(1).unwrap()).unwrap()
        };
        let (want_a, want_b) = (tail(&a), tail(&b));

        let mut shared = KvCache::new(&cfg);
        model
            .forward_embeds(&prefix, Some(&mut shared), Kernels::Fast)
            .unwrap();
        let mut ca = shared.clone();
        let got_a = model
            .forward_embeds(&a, Some(&mut ca), Kernels::Fast)
            .unwrap();
        let mut cb = shared.clone();
        let got_b = chunked(&model, &mut cb, &b, &[1, 1], Kernels::Fast);
        let mut ca2 = shared.clone();
        let got_a2 = model
            .forward_embeds(&a, Some(&mut ca2), Kernels::Fast)
            .unwrap();
        assert_eq!((shared.len(), ca.len(), cb.len()), (6, 9, 8));
        assert!(max_abs_diff(&got_a, &want_a) < 1e-12);
        assert!(max_abs_diff(&got_b, &want_b) < 1e-12);
        assert!(max_abs_diff(&got_a2, &want_a) < 1e-12);

        // The first clone still continues correctly after the others wrote.
        let x = randn(&[1, 1, 16], 12, DType::F64, &Device::Cpu).unwrap();
        let got = model
            .forward_embeds(&x, Some(&mut ca), Kernels::Fast)
            .unwrap();
        let ax = Tensor::cat(&[&a, &x], 1).unwrap();
        assert!(max_abs_diff(&got, &tail(&ax).narrow(1, 3, 1).unwrap()) < 1e-12);
    }

    #[test]
    fn rows_of_a_batched_prefix_stack_back_into_a_batch_that_continues_each_row() {
        let cfg = tiny_config_gqa();
        let (model, _) = random_model(&cfg, 8, DType::F64, &Device::Cpu).unwrap();
        let prefixes = randn(&[3, 5, 16], 16, DType::F64, &Device::Cpu).unwrap();
        let suffixes = randn(&[2, 4, 16], 17, DType::F64, &Device::Cpu).unwrap();
        let mut batched = KvCache::new(&cfg);
        model
            .forward_embeds(&prefixes, Some(&mut batched), Kernels::Fast)
            .unwrap();
        let rows: Vec<KvCache> = (0..3).map(|b| batched.row(b).unwrap()).collect();
        assert!(batched.row(3).is_err(), "no row 3 in a batch of 3");
        assert!(rows.iter().all(|r| r.len() == 5));
        // Rows 2 and 0, in that order, each continued by its own suffix, with gradients.
        let mut stacked = KvCache::stack(&[&rows[2], &rows[0]], 4).unwrap();
        let got = model
            .forward_embeds(&suffixes, Some(&mut stacked), Kernels::Differentiable)
            .unwrap();
        for (i, b) in [2usize, 0].into_iter().enumerate() {
            let full = Tensor::cat(
                &[
                    &prefixes.narrow(0, b, 1).unwrap(),
                    &suffixes.narrow(0, i, 1).unwrap(),
                ],
                1,
            )
            .unwrap();
            let want = model.forward_embeds(&full, None, Kernels::Fast).unwrap();
            assert!(
                max_abs_diff(
                    &got.narrow(0, i, 1).unwrap(),
                    &want.narrow(1, 5, 4).unwrap()
                ) < 1e-12
            );
        }
        // Rows of different lengths do not stack.
        let mut longer = rows[1].clone();
        model
            .forward_embeds(
                &suffixes.narrow(0, 0, 1).unwrap(),
                Some(&mut longer),
                Kernels::Fast,
            )
            .unwrap();
        assert!(KvCache::stack(&[&rows[0], &longer], 0).is_err());
        assert!(KvCache::stack(&[], 0).is_err());
        assert!(rows[0].bytes() > 0);
    }

    #[test]
    fn batched_decode_steps_match_each_sequence_alone() {
        let mut cfg = tiny_config_gqa();
        cfg.text.max_position_embeddings = 160;
        let (model, _) = random_model(&cfg, 9, DType::F64, &Device::Cpu).unwrap();
        let dev = Device::Cpu;
        // Three sequences with prompts of 5, 2 and 9 positions, each prefilled alone.
        let prefill = |len: usize, seed: u64| prefilled(&model, len, seed, 0);
        let mut alone = [prefill(5, 20), prefill(2, 21), prefill(9, 22)];
        let mut batch = BatchKvCache::new(&cfg, 4);
        // Slot 1 stays free between two sequences; sequence 2 waits for a slot. The first
        // sequence hands its buffers over (a prefill of its own, equal to alone[0]); the others
        // are copied (shared with `alone`).
        batch.load(0, prefill(5, 20)).unwrap();
        let one_row = batch.bytes();
        assert_eq!(one_row, alone[0].bytes());
        batch.load(2, alone[1].clone()).unwrap();
        // Rows are allocated up to the highest slot used, not for all four slots.
        assert_eq!(batch.bytes(), 3 * one_row);
        assert!(batch.load(2, alone[2].clone()).is_err(), "slot 2 is taken");
        assert_eq!((batch.width(), batch.free_slot()), (3, Some(1)));
        // slot -> sequence
        let mut slots: Vec<Option<usize>> = vec![Some(0), None, Some(1)];
        // Past the first 64-position capacity step, so the batch buffers grow.
        for step in 0..70u64 {
            if step == 3 {
                // Sequence 0 leaves; sequence 2 joins in its slot.
                batch.release(0);
                batch.load(0, alone[2].clone()).unwrap();
                slots[0] = Some(2);
            }
            let width = batch.width();
            let embeds = randn(&[width, 1, 16], 100 + step, DType::F64, &dev).unwrap();
            let got = model.decode_batch(&embeds, &mut batch).unwrap();
            for (slot, seq) in slots.iter().enumerate().take(width) {
                let Some(seq) = *seq else { continue };
                let want = model
                    .forward_embeds(
                        &embeds.narrow(0, slot, 1).unwrap(),
                        Some(&mut alone[seq]),
                        Kernels::Fast,
                    )
                    .unwrap();
                assert_eq!(batch.len(slot), alone[seq].len());
                let diff = max_abs_diff(&got.narrow(0, slot, 1).unwrap(), &want);
                assert!(diff < 1e-12, "step {step} slot {slot}: {diff}");
            }
            assert_eq!(batch.len(1), 0, "a free slot stays empty");
        }
        assert!(batch.bytes() > 0);
        let too_wide = randn(&[5, 1, 16], 7, DType::F64, &dev).unwrap();
        assert!(model.decode_batch(&too_wide, &mut batch).is_err());
        let empty = BatchKvCache::new(&cfg, 2);
        assert_eq!(empty.width(), 0);
    }

    /// The cache ([`LlavaModel::kv_cache`]) of a prefill of `len` random embeddings (`seed`,
    /// the model's dtype) of the width-16 test models, allocated for at least `reserve`
    /// positions.
    fn prefilled(model: &LlavaModel, len: usize, seed: u64, reserve: usize) -> KvCache {
        let mut cache = model.kv_cache();
        cache.reserve(reserve);
        let prompt = randn(&[1, len, 16], seed, model.dtype(), &Device::Cpu).unwrap();
        model
            .forward_embeds(&prompt, Some(&mut cache), Kernels::Fast)
            .unwrap();
        cache
    }

    /// A cache reserved for its whole sequence is allocated once: the prefill allocates room
    /// for every position, the batch takes those buffers over (slot 0 of an empty batch), and
    /// decoding up to the reserved length allocates nothing more; a copied row gets the same
    /// room.
    #[test]
    fn a_reserved_cache_is_allocated_once() {
        let mut cfg = tiny_config_gqa();
        cfg.text.max_position_embeddings = 256;
        let (model, _) = random_model(&cfg, 9, DType::F64, &Device::Cpu).unwrap();
        let dev = Device::Cpu;
        let prefill = |reserve: usize| prefilled(&model, 5, 20, reserve);
        let small = prefill(0).bytes();
        let reserved = prefill(200);
        // 200 positions, rounded up to the capacity step (256), against 64 for 5 positions.
        assert_eq!(reserved.bytes(), small * 4);
        let mut batch = BatchKvCache::new(&cfg, 2);
        batch.load(0, prefill(200)).unwrap();
        assert_eq!(batch.bytes(), reserved.bytes());
        let mut alone = reserved.clone();
        for step in 0..195u64 {
            let embeds = randn(&[1, 1, 16], 100 + step, DType::F64, &dev).unwrap();
            let got = model.decode_batch(&embeds, &mut batch).unwrap();
            let want = model
                .forward_embeds(&embeds, Some(&mut alone), Kernels::Fast)
                .unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-12, "step {step}");
        }
        assert_eq!(batch.len(0), 200);
        assert_eq!(
            batch.bytes(),
            reserved.bytes(),
            "no growth within the reservation"
        );
        // A shared cache is copied, into buffers with the same room.
        let mut copied = BatchKvCache::new(&cfg, 2);
        copied.load(1, reserved.clone()).unwrap();
        assert_eq!(copied.bytes(), 2 * reserved.bytes());
    }

    /// An f32 model with an f16 cache: half the bytes, the same outputs within f16's rounding
    /// of keys and values (prefill, a continued prefill, decode steps past the first
    /// capacity step), and a batch of such caches decodes as each sequence alone.
    #[test]
    fn an_f16_cache_holds_half_and_decodes_like_an_f32_one() {
        let mut cfg = tiny_config_gqa();
        cfg.text.max_position_embeddings = 160;
        let (mut model, _) = random_model(&cfg, 9, DType::F32, &Device::Cpu).unwrap();
        let dev = Device::Cpu;
        assert_eq!(model.kv_storage(), None, "not quantized: kept as computed");
        let prompt = randn(&[1, 9, 16], 40, DType::F32, &dev).unwrap();
        let run = |model: &LlavaModel| {
            let mut cache = model.kv_cache();
            let mut outs = vec![chunked(model, &mut cache, &prompt, &[6, 3], Kernels::Fast)];
            for step in 0..70u64 {
                let x = randn(&[1, 1, 16], 200 + step, DType::F32, &dev).unwrap();
                outs.push(
                    model
                        .forward_embeds(&x, Some(&mut cache), Kernels::Fast)
                        .unwrap(),
                );
            }
            (Tensor::cat(&outs, 1).unwrap(), cache)
        };
        let (want, full) = run(&model);
        model.set_kv_storage(Some(DType::F16));
        let (got, half) = run(&model);
        assert_eq!(half.storage(), Some(DType::F16));
        assert_eq!(2 * half.bytes(), full.bytes());
        let diff = max_abs_diff(&got, &want);
        assert!(diff > 0.0 && diff < 1e-2, "f16 against f32 cache: {diff}");

        // Batched decode over f16 caches: the first sequence's buffers handed over, the
        // second's copied; each row as its sequence alone.
        let prefill = |len: usize, seed: u64| prefilled(&model, len, seed, 0);
        let mut alone = [prefill(5, 41), prefill(12, 42)];
        let mut batch = BatchKvCache::new(&cfg, 2);
        batch.load(0, prefill(5, 41)).unwrap();
        batch.load(1, alone[1].clone()).unwrap();
        for step in 0..6u64 {
            let x = randn(&[2, 1, 16], 300 + step, DType::F32, &dev).unwrap();
            let got = model.decode_batch(&x, &mut batch).unwrap();
            for (slot, cache) in alone.iter_mut().enumerate() {
                let want = model
                    .forward_embeds(&x.narrow(0, slot, 1).unwrap(), Some(cache), Kernels::Fast)
                    .unwrap();
                let diff = max_abs_diff(&got.narrow(0, slot, 1).unwrap(), &want);
                assert!(diff < 1e-6, "step {step} slot {slot}: {diff}");
            }
        }
        // Setting the compute dtype itself means as computed.
        model.set_kv_storage(Some(DType::F32));
        assert_eq!(model.kv_storage(), None);
    }

    #[test]
    fn truncate_rewinds_the_cache() {
        let cfg = tiny_config();
        let (model, _) = random_model(&cfg, 6, DType::F64, &Device::Cpu).unwrap();
        let embeds = randn(&[1, 6, 16], 13, DType::F64, &Device::Cpu).unwrap();
        let other = randn(&[1, 2, 16], 14, DType::F64, &Device::Cpu).unwrap();
        let mut cache = KvCache::new(&cfg);
        model
            .forward_embeds(&embeds, Some(&mut cache), Kernels::Fast)
            .unwrap();
        cache.truncate(4);
        assert_eq!(cache.len(), 4);
        let got = model
            .forward_embeds(&other, Some(&mut cache), Kernels::Fast)
            .unwrap();
        let full = Tensor::cat(&[&embeds.narrow(1, 0, 4).unwrap(), &other], 1).unwrap();
        let want = model.forward_embeds(&full, None, Kernels::Fast).unwrap();
        assert!(max_abs_diff(&got, &want.narrow(1, 4, 2).unwrap()) < 1e-12);
    }

    #[test]
    fn tied_head_reuses_the_embedding_table() {
        let mut cfg = tiny_config();
        cfg.text.tie_word_embeddings = true;
        let (model, weights) = random_model(&cfg, 7, DType::F64, &Device::Cpu).unwrap();
        assert!(!weights.recorded().keys().any(|n| n.contains("lm_head")));
        let hidden = randn(&[1, 2, 16], 15, DType::F64, &Device::Cpu).unwrap();
        let logits = model.base_logits(&hidden).unwrap();
        let want = hidden
            .broadcast_matmul(&model.embed_weight().to_tensor().unwrap().t().unwrap())
            .unwrap();
        assert!(max_abs_diff(&logits, &want) < 1e-12);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = tiny_config();
        let (model, _) = random_model(&cfg, 8, DType::F64, &Device::Cpu).unwrap();
        let too_long = randn(&[1, 65, 16], 16, DType::F64, &Device::Cpu).unwrap();
        assert!(model
            .forward_embeds(&too_long, None, Kernels::Fast)
            .is_err());
        let wrong_width = randn(&[1, 3, 15], 16, DType::F64, &Device::Cpu).unwrap();
        assert!(model
            .forward_embeds(&wrong_width, None, Kernels::Fast)
            .is_err());
        let wrong_dtype = randn(&[1, 3, 16], 16, DType::F32, &Device::Cpu).unwrap();
        assert!(model
            .forward_embeds(&wrong_dtype, None, Kernels::Fast)
            .is_err());
        let wrong_image = randn(&[1, 3, 14, 14], 16, DType::F64, &Device::Cpu).unwrap();
        assert!(model.image_features(&wrong_image, Kernels::Fast).is_err());
        let out_of_vocab = Tensor::new(&[3u32, 40], &Device::Cpu).unwrap();
        assert!(model.embed_tokens(&out_of_vocab).is_err());

        let mut other = tiny_config();
        other.text.num_hidden_layers = 3;
        let mut cache = KvCache::new(&other);
        let ok = randn(&[1, 2, 16], 16, DType::F64, &Device::Cpu).unwrap();
        assert!(model
            .forward_embeds(&ok, Some(&mut cache), Kernels::Fast)
            .is_err());
    }
}
