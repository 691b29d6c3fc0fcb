//! LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning"), as
//! transformers' `LlavaForConditionalGeneration`: a CLIP ViT vision tower, a two-layer MLP
//! projector, and a Llama decoder with an untied LM head.
//!
//! The model is frozen: every weight is a plain [`Tensor`], never a `Var`, so it neither
//! records nor receives gradients. Trainable concept embeddings enter through
//! [`LlavaModel::forward_embeds`], which starts from embeddings rather than token ids. This
//! module does no file I/O; `crate::weights` loads checkpoints.

mod clip;
mod kv_cache;
mod llama;
mod projector;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{FeatureSelect, LlavaConfig};
use crate::error::{Result, RuntimeError};
use crate::ops::Kernels;

pub use kv_cache::KvCache;

use clip::ClipVisionTower;
use llama::Llama;
use projector::Projector;

/// A loaded LLaVA-1.5 model.
pub struct LlavaModel {
    cfg: LlavaConfig,
    vision: ClipVisionTower,
    projector: Projector,
    llama: Llama,
}

impl LlavaModel {
    /// Builds the model from weights under the hub layout's names (`vision_tower.vision_model`,
    /// `multi_modal_projector`, `language_model.{model,lm_head}`); `crate::weights` maps other
    /// layouts onto these. Tensors come in the `VarBuilder`'s dtype and device.
    pub fn from_varbuilder(cfg: LlavaConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        if vb.device().is_cpu() && vb.dtype() == DType::BF16 {
            return Err(RuntimeError::Unsupported(
                "bf16 compute on the cpu (candle has no bf16 cpu matmul); use f32 or f16"
                    .to_string(),
            ));
        }
        let vision = ClipVisionTower::load(
            vb.pp("vision_tower").pp("vision_model"),
            &cfg.vision,
            cfg.vision_feature_layer,
        )?;
        let projector = Projector::load(vb.pp("multi_modal_projector"), &cfg)?;
        let llama = Llama::load(vb.pp("language_model"), &cfg.text)?;
        Ok(LlavaModel {
            cfg,
            vision,
            projector,
            llama,
        })
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
        let hidden =
            self.vision
                .hidden_state(pixel_values, self.cfg.vision_feature_layer, kernels)?;
        let selected = match self.cfg.vision_feature_select {
            FeatureSelect::Default => {
                let n = hidden.dim(1)?;
                hidden.narrow(1, 1, n - 1)?
            }
            FeatureSelect::Full => hidden,
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

    /// Logits over the base vocabulary `[.., vocab_size]` for hidden states `[.., d_text]`.
    /// Slice to the positions you need first: the head is the largest matrix of the model.
    pub fn base_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.llama.logits(hidden)
    }

    /// The LM head `[vocab_size, d_text]`.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.llama.lm_head_weight()
    }

    /// The token embedding table `[vocab_size, d_text]`.
    pub fn embed_weight(&self) -> &Tensor {
        self.llama.embed_weight()
    }
}
