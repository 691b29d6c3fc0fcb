//! LLaVA-1.5 configuration: the llava-hf `config.json` of a `LlavaForConditionalGeneration`
//! checkpoint, parsed into a validated plain [`LlavaConfig`].
//!
//! Reference: transformers `LlavaConfig`, `CLIPVisionConfig` and `LlamaConfig`
//! (<https://github.com/huggingface/transformers>, `models/{llava,clip,llama}/configuration_*.py`).
//! A key that is absent takes the default of the transformers config class, so the sparse
//! `text_config` of `llava-hf/llava-1.5-7b-hf` becomes a full Llama-2-7B shape. Both the
//! transformers 4 spelling (`image_token_index`, `rope_theta`) and the transformers 5 spelling
//! (`image_token_id`, `rope_parameters.rope_theta`) are accepted.
//!
//! One key is ours: `concepts_vision_stem` selects the vision tower's stem (see [`VisionStem`]).

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, RuntimeError};

/// A validated LLaVA configuration.
///
/// Fields are plain data; [`LlavaConfig::validate`] checks that they are consistent and is run
/// by the JSON parser and by [`crate::LlavaModel::from_varbuilder`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub vision: ClipVisionConfig,
    pub text: LlamaConfig,
    pub projector: ProjectorConfig,
    /// Index into the vision tower's hidden states (0 = embeddings after `pre_layrnorm`,
    /// `i` = output of encoder layer `i - 1`) whose output feeds the projector. transformers'
    /// `vision_feature_layer = -2` resolves to `num_hidden_layers - 1`.
    pub vision_feature_layer: usize,
    pub vision_feature_select: FeatureSelect,
    /// Id of the `<image>` placeholder token in the prompt.
    pub image_token_id: u32,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The CLIP ViT vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    pub stem: VisionStem,
}

/// The Llama language model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Rows of `embed_tokens` and of `lm_head`: the base vocabulary. Concept tokens get ids
    /// from here on.
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub hidden_act: Activation,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// `lm_head` shares the `embed_tokens` matrix (false for LLaVA-1.5).
    pub tie_word_embeddings: bool,
}

/// The two-layer MLP projector from vision features to text embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    pub hidden_act: Activation,
    pub bias: bool,
}

/// Elementwise activations, named as in transformers' `ACT2FN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `gelu`: the exact erf form.
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `silu`: `x * sigmoid(x)`.
    Silu,
}

/// Which vision tokens reach the projector (`vision_feature_select_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSelect {
    /// `default`: drop the CLS token.
    Default,
    /// `full`: keep the CLS token.
    Full,
}

/// The vision tower's stem, from our `concepts_vision_stem` key.
///
/// Each variant has its own stem layer in `model::clip` and its own [`VisionStem::id`], which
/// enters the model fingerprint. Everything after the stem (class token, position
/// embeddings, `pre_layrnorm`, the encoder layers) is CLIP's in every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionStem {
    /// CLIP's patch embedding: a `patch_size`-stride convolution without bias, a class token
    /// and learned position embeddings.
    Patch,
    /// Ours, for the toy base model: `log2(patch_size)` 3×3 stride-2 convolutions (padding 1,
    /// with bias) with an exact GELU between them, so one output pixel covers one
    /// `patch_size`² patch, followed by CLIP's class token and position embeddings. Conv `i`
    /// of `n` has `hidden_size / 2^(n-1-i)` output channels. A convolutional stem learns
    /// shape and colour from a few thousand steps where a patch ViT trained from scratch
    /// does not. Weights: `embeddings.stem.{i}.{weight,bias}` instead of `patch_embedding`.
    Conv,
}

impl VisionStem {
    /// The stable name of the stem, as written in `concepts_vision_stem`.
    pub fn id(self) -> &'static str {
        match self {
            VisionStem::Patch => "patch",
            VisionStem::Conv => "conv",
        }
    }

    /// Output channels of each convolution of the stem, first to last: one entry
    /// (`hidden_size`) for [`VisionStem::Patch`], `log2(patch_size)` for [`VisionStem::Conv`].
    pub fn conv_channels(self, hidden_size: usize, patch_size: usize) -> Vec<usize> {
        match self {
            VisionStem::Patch => vec![hidden_size],
            VisionStem::Conv => {
                let n = patch_size.trailing_zeros() as usize;
                (0..n).map(|i| hidden_size >> (n - 1 - i)).collect()
            }
        }
    }
}

impl Activation {
    fn parse(name: &str, key: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(RuntimeError::Unsupported(format!(
                "`{key}` = `{other}` (known: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, silu)"
            ))),
        }
    }
}

impl LlavaConfig {
    /// Parses the text of a llava-hf `config.json`.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| RuntimeError::InvalidConfig(format!("not json: {e}")))?;
        Self::from_json_value(&value)
    }

    /// Parses a llava-hf `config.json` already read as JSON.
    pub fn from_json_value(value: &Value) -> Result<Self> {
        let raw = RawLlavaConfig::deserialize(value)
            .map_err(|e| RuntimeError::InvalidConfig(e.to_string()))?;
        let cfg = raw.into_config()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that sizes are non-zero and consistent.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let bad = |msg: String| Err(RuntimeError::InvalidConfig(msg));
        for (name, n) in [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_hidden_layers", t.num_hidden_layers),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_key_value_heads", t.num_key_value_heads),
            ("text_config.head_dim", t.head_dim),
            ("text_config.vocab_size", t.vocab_size),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
        ] {
            if n == 0 {
                return bad(format!("`{name}` is 0"));
            }
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "vision image_size {} is not divisible by patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.stem == VisionStem::Conv {
            let p = v.patch_size;
            if !p.is_power_of_two() || p < 2 {
                return bad(format!(
                    "vision patch_size {p} is not a power of two >= 2, as the conv stem needs"
                ));
            }
            let n = p.trailing_zeros();
            if !v.hidden_size.is_multiple_of(1usize << (n - 1)) {
                return bad(format!(
                    "vision hidden_size {} is not divisible by {}, as a {n}-conv stem needs",
                    v.hidden_size,
                    1usize << (n - 1)
                ));
            }
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return bad(format!(
                "text num_attention_heads {} is not divisible by num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if !t.head_dim.is_multiple_of(2) {
            return bad(format!("text head_dim {} is odd", t.head_dim));
        }
        if self.vision_feature_layer > v.num_hidden_layers {
            return bad(format!(
                "vision_feature_layer selects hidden state {} of a {}-layer vision tower",
                self.vision_feature_layer, v.num_hidden_layers
            ));
        }
        if !(v.layer_norm_eps > 0.0 && t.rms_norm_eps > 0.0 && t.rope_theta > 0.0) {
            return bad("norm epsilons and rope_theta must be positive".to_string());
        }
        Ok(())
    }

    /// Patches per image side.
    pub fn patches_per_side(&self) -> usize {
        self.vision.image_size / self.vision.patch_size
    }

    /// Image feature tokens per image: the number of `<image>` tokens a prompt expands to.
    pub fn image_seq_len(&self) -> usize {
        let patches = self.patches_per_side() * self.patches_per_side();
        match self.vision_feature_select {
            FeatureSelect::Default => patches,
            FeatureSelect::Full => patches + 1,
        }
    }

    /// The architecture id written into model fingerprints: `llava-1.5` and the vision stem,
    /// e.g. `llava-1.5/patch`.
    pub fn architecture_id(&self) -> String {
        format!("llava-1.5/{}", self.vision.stem.id())
    }
}

// === serde side ===

#[derive(Deserialize)]
struct RawLlavaConfig {
    model_type: Option<String>,
    vision_config: Option<RawClipVisionConfig>,
    text_config: Option<RawLlamaConfig>,
    projector_hidden_act: Option<String>,
    multimodal_projector_bias: Option<bool>,
    vision_feature_layer: Option<Value>,
    vision_feature_select_strategy: Option<String>,
    image_token_index: Option<u32>,
    image_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
    tie_word_embeddings: Option<bool>,
    concepts_vision_stem: Option<String>,
}

#[derive(Deserialize)]
struct RawClipVisionConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
}

#[derive(Deserialize)]
struct RawLlamaConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    pad_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
}

impl RawLlavaConfig {
    fn into_config(self) -> Result<LlavaConfig> {
        if let Some(mt) = &self.model_type {
            if mt != "llava" {
                return Err(RuntimeError::Unsupported(format!(
                    "model_type `{mt}` (expected `llava`)"
                )));
            }
        }
        let stem = match self.concepts_vision_stem.as_deref() {
            None | Some("patch") => VisionStem::Patch,
            Some("conv") => VisionStem::Conv,
            Some(other) => {
                return Err(RuntimeError::Unsupported(format!(
                    "`concepts_vision_stem` = `{other}` (implemented: patch, conv)"
                )))
            }
        };
        let vision = match self.vision_config {
            Some(raw) => raw.into_config(stem)?,
            None => RawClipVisionConfig::llava_default().into_config(stem)?,
        };
        let raw_text = self.text_config.unwrap_or_else(RawLlamaConfig::empty);
        let text_pad = raw_text.pad_token_id;
        let text_bos = raw_text.bos_token_id;
        let text_eos = raw_text.eos_token_id.clone();
        let mut text = raw_text.into_config()?;
        if let Some(tie) = self.tie_word_embeddings {
            text.tie_word_embeddings = tie;
        }

        let projector = ProjectorConfig {
            hidden_act: Activation::parse(
                self.projector_hidden_act.as_deref().unwrap_or("gelu"),
                "projector_hidden_act",
            )?,
            bias: self.multimodal_projector_bias.unwrap_or(true),
        };

        let vision_feature_layer = match self.vision_feature_layer {
            None => resolve_feature_layer(-2, vision.num_hidden_layers)?,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => resolve_feature_layer(i, vision.num_hidden_layers)?,
                None => {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "`vision_feature_layer` = {n} is not an integer"
                    )))
                }
            },
            Some(other) => {
                return Err(RuntimeError::Unsupported(format!(
                    "`vision_feature_layer` = {other} (only a single layer index is implemented)"
                )))
            }
        };
        let vision_feature_select = match self
            .vision_feature_select_strategy
            .as_deref()
            .unwrap_or("default")
        {
            "default" => FeatureSelect::Default,
            "full" => FeatureSelect::Full,
            other => {
                return Err(RuntimeError::Unsupported(format!(
                    "`vision_feature_select_strategy` = `{other}` (known: default, full)"
                )))
            }
        };
        let image_token_id = match (self.image_token_index, self.image_token_id) {
            (Some(a), Some(b)) if a != b => {
                return Err(RuntimeError::InvalidConfig(format!(
                    "`image_token_index` = {a} and `image_token_id` = {b} disagree"
                )))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => 32000,
        };
        let eos_token_ids = match self.eos_token_id.or(text_eos) {
            None => vec![2],
            Some(v) => parse_token_ids(&v, "eos_token_id")?,
        };
        Ok(LlavaConfig {
            vision,
            text,
            projector,
            vision_feature_layer,
            vision_feature_select,
            image_token_id,
            pad_token_id: self.pad_token_id.or(text_pad),
            bos_token_id: self.bos_token_id.or(text_bos).or(Some(1)),
            eos_token_ids,
        })
    }
}

/// Maps a transformers `vision_feature_layer` (an index into `hidden_states`, which has
/// `layers + 1` entries; negative counts from the end) to a non-negative index.
fn resolve_feature_layer(index: i64, layers: usize) -> Result<usize> {
    let n = layers as i64 + 1;
    let resolved = if index < 0 { n + index } else { index };
    if (0..n).contains(&resolved) {
        Ok(resolved as usize)
    } else {
        Err(RuntimeError::InvalidConfig(format!(
            "`vision_feature_layer` = {index} is out of range for a {layers}-layer vision tower"
        )))
    }
}

fn parse_token_ids(v: &Value, key: &str) -> Result<Vec<u32>> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| RuntimeError::InvalidConfig(format!("`{key}` = {v} is not a token id")))
    };
    match v {
        Value::Array(items) => items.iter().map(one).collect(),
        Value::Null => Ok(Vec::new()),
        single => Ok(vec![one(single)?]),
    }
}

impl RawClipVisionConfig {
    /// The vision config `LlavaConfig` builds when `vision_config` is absent.
    fn llava_default() -> Self {
        RawClipVisionConfig {
            model_type: None,
            hidden_size: Some(1024),
            intermediate_size: Some(4096),
            num_hidden_layers: Some(24),
            num_attention_heads: Some(16),
            num_channels: None,
            image_size: Some(336),
            patch_size: Some(14),
            layer_norm_eps: None,
            hidden_act: None,
        }
    }

    /// Applies `CLIPVisionConfig` defaults.
    fn into_config(self, stem: VisionStem) -> Result<ClipVisionConfig> {
        if let Some(mt) = &self.model_type {
            if mt != "clip_vision_model" {
                return Err(RuntimeError::Unsupported(format!(
                    "vision model_type `{mt}` (expected `clip_vision_model`)"
                )));
            }
        }
        Ok(ClipVisionConfig {
            hidden_size: self.hidden_size.unwrap_or(768),
            intermediate_size: self.intermediate_size.unwrap_or(3072),
            num_hidden_layers: self.num_hidden_layers.unwrap_or(12),
            num_attention_heads: self.num_attention_heads.unwrap_or(12),
            num_channels: self.num_channels.unwrap_or(3),
            image_size: self.image_size.unwrap_or(224),
            patch_size: self.patch_size.unwrap_or(32),
            layer_norm_eps: self.layer_norm_eps.unwrap_or(1e-5),
            hidden_act: Activation::parse(
                self.hidden_act.as_deref().unwrap_or("quick_gelu"),
                "vision_config.hidden_act",
            )?,
            stem,
        })
    }
}

impl RawLlamaConfig {
    fn empty() -> Self {
        RawLlamaConfig {
            model_type: None,
            hidden_size: None,
            intermediate_size: None,
            num_hidden_layers: None,
            num_attention_heads: None,
            num_key_value_heads: None,
            head_dim: None,
            vocab_size: None,
            max_position_embeddings: None,
            rms_norm_eps: None,
            rope_theta: None,
            rope_scaling: None,
            rope_parameters: None,
            hidden_act: None,
            attention_bias: None,
            mlp_bias: None,
            tie_word_embeddings: None,
            pad_token_id: None,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Applies `LlamaConfig` defaults.
    fn into_config(self) -> Result<LlamaConfig> {
        if let Some(mt) = &self.model_type {
            if mt != "llama" {
                return Err(RuntimeError::Unsupported(format!(
                    "text model_type `{mt}` (expected `llama`)"
                )));
            }
        }
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            if rope_type(scaling) != Some("default") {
                return Err(RuntimeError::Unsupported(format!(
                    "text `rope_scaling` = {scaling}"
                )));
            }
        }
        let mut rope_theta = self.rope_theta;
        if let Some(params) = self.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            match rope_type(params) {
                None | Some("default") => {}
                Some(other) => {
                    return Err(RuntimeError::Unsupported(format!(
                        "text rope type `{other}` (implemented: default)"
                    )))
                }
            }
            if let Some(theta) = params.get("rope_theta").and_then(Value::as_f64) {
                rope_theta = Some(theta);
            }
        }
        let hidden_size = self.hidden_size.unwrap_or(4096);
        let num_attention_heads = self.num_attention_heads.unwrap_or(32);
        if num_attention_heads == 0 {
            return Err(RuntimeError::InvalidConfig(
                "`text_config.num_attention_heads` is 0".to_string(),
            ));
        }
        Ok(LlamaConfig {
            hidden_size,
            intermediate_size: self.intermediate_size.unwrap_or(11008),
            num_hidden_layers: self.num_hidden_layers.unwrap_or(32),
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: self.head_dim.unwrap_or(hidden_size / num_attention_heads),
            vocab_size: self.vocab_size.unwrap_or(32000),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10000.0),
            hidden_act: Activation::parse(
                self.hidden_act.as_deref().unwrap_or("silu"),
                "text_config.hidden_act",
            )?,
            attention_bias: self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
        })
    }
}

fn rope_type(v: &Value) -> Option<&str> {
    v.get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `config.json` of `llava-hf/llava-1.5-7b-hf`, verbatim.
    const LLAVA_15_7B: &str = r#"{
      "architectures": ["LlavaForConditionalGeneration"],
      "ignore_index": -100,
      "image_token_index": 32000,
      "model_type": "llava",
      "pad_token_id": 32001,
      "projector_hidden_act": "gelu",
      "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064
      },
      "tie_word_embeddings": false,
      "torch_dtype": "float16",
      "transformers_version": "4.36.0.dev0",
      "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000
      },
      "vision_feature_layer": -2,
      "vision_feature_select_strategy": "default",
      "vocab_size": 32064
    }"#;

    #[test]
    fn llava_15_7b_gets_llama_and_clip_defaults() {
        let cfg = LlavaConfig::from_json_str(LLAVA_15_7B).unwrap();
        let t = &cfg.text;
        assert_eq!(
            (t.hidden_size, t.intermediate_size, t.num_hidden_layers),
            (4096, 11008, 32)
        );
        assert_eq!(
            (t.num_attention_heads, t.num_key_value_heads, t.head_dim),
            (32, 32, 128)
        );
        assert_eq!((t.vocab_size, t.max_position_embeddings), (32064, 4096));
        assert_eq!((t.rms_norm_eps, t.rope_theta), (1e-5, 10000.0));
        assert_eq!(t.hidden_act, Activation::Silu);
        assert!(!t.tie_word_embeddings);
        let v = &cfg.vision;
        assert_eq!(
            (v.hidden_size, v.num_hidden_layers, v.patch_size),
            (1024, 24, 14)
        );
        assert_eq!(
            (v.layer_norm_eps, v.hidden_act),
            (1e-5, Activation::QuickGelu)
        );
        assert_eq!(v.stem, VisionStem::Patch);
        assert_eq!(cfg.vision_feature_layer, 23);
        assert_eq!(cfg.vision_feature_select, FeatureSelect::Default);
        assert_eq!(cfg.projector.hidden_act, Activation::GeluErf);
        assert!(cfg.projector.bias);
        assert_eq!(cfg.image_token_id, 32000);
        assert_eq!(cfg.pad_token_id, Some(32001));
        assert_eq!(
            (cfg.bos_token_id, cfg.eos_token_ids.as_slice()),
            (Some(1), &[2][..])
        );
        assert_eq!(cfg.image_seq_len(), 576);
        assert_eq!(cfg.architecture_id(), "llava-1.5/patch");
    }

    #[test]
    fn transformers5_spellings() {
        let json = r#"{
          "model_type": "llava",
          "image_token_id": 7,
          "vision_feature_select_strategy": "full",
          "vision_feature_layer": 1,
          "text_config": {"num_key_value_heads": 8, "eos_token_id": [2, 5],
                          "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
          "vision_config": {"num_hidden_layers": 2, "image_size": 28, "patch_size": 14}
        }"#;
        let cfg = LlavaConfig::from_json_str(json).unwrap();
        assert_eq!(cfg.image_token_id, 7);
        assert_eq!(cfg.vision_feature_select, FeatureSelect::Full);
        assert_eq!(cfg.vision_feature_layer, 1);
        assert_eq!(cfg.text.num_key_value_heads, 8);
        assert_eq!(cfg.text.rope_theta, 500000.0);
        assert_eq!(cfg.eos_token_ids, vec![2, 5]);
        assert_eq!(cfg.image_seq_len(), 5);
    }

    #[test]
    fn conv_stem_is_a_declared_variant() {
        let json = r#"{
          "model_type": "llava",
          "concepts_vision_stem": "conv",
          "vision_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "image_size": 48, "patch_size": 8}
        }"#;
        let cfg = LlavaConfig::from_json_str(json).unwrap();
        assert_eq!(cfg.vision.stem, VisionStem::Conv);
        assert_eq!(cfg.architecture_id(), "llava-1.5/conv");
        assert_eq!(cfg.image_seq_len(), 36);
        assert_eq!(cfg.vision.stem.conv_channels(64, 8), [16, 32, 64]);
        let odd = json.replace("\"patch_size\": 8", "\"patch_size\": 12");
        let odd = odd.replace("\"image_size\": 48", "\"image_size\": 36");
        let err = LlavaConfig::from_json_str(&odd).unwrap_err().to_string();
        assert!(err.contains("power of two"), "{err}");
    }

    #[test]
    fn absent_vision_config_is_llava_clip_large() {
        let cfg = LlavaConfig::from_json_str("{}").unwrap();
        assert_eq!(cfg.vision.hidden_size, 1024);
        assert_eq!(cfg.vision.image_size, 336);
        assert_eq!(cfg.vision_feature_layer, 23);
        assert_eq!(cfg.text.vocab_size, 32000);
    }

    #[test]
    fn rejections_name_the_key() {
        let cases = [
            (
                r#"{"concepts_vision_stem": "resnet"}"#,
                "concepts_vision_stem",
            ),
            (
                r#"{"vision_feature_layer": [-2, -5]}"#,
                "vision_feature_layer",
            ),
            (r#"{"vision_feature_layer": -30}"#, "vision_feature_layer"),
            (
                r#"{"vision_feature_select_strategy": "cls"}"#,
                "vision_feature_select_strategy",
            ),
            (
                r#"{"projector_hidden_act": "relu6"}"#,
                "projector_hidden_act",
            ),
            (
                r#"{"text_config": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}}"#,
                "rope_scaling",
            ),
            (
                r#"{"image_token_index": 1, "image_token_id": 2}"#,
                "image_token_id",
            ),
            (
                r#"{"text_config": {"num_attention_heads": 32, "num_key_value_heads": 5}}"#,
                "num_key_value_heads",
            ),
        ];
        for (json, key) in cases {
            let err = LlavaConfig::from_json_str(json).unwrap_err().to_string();
            assert!(err.contains(key), "{json}: {err}");
        }
    }
}
