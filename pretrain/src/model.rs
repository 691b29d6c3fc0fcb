//! The toy base model's shape, its initial weights, and a trainable view of it.
//!
//! The runtime's `LlavaModel` holds plain tensors (its linear layers keep a transposed copy
//! of each weight), so a model built from `Var`s goes stale after an optimizer step. The
//! trainable model therefore keeps every weight as a `Var` in a [`VarMap`] under its
//! hub-layout name and builds a fresh `LlavaModel` from the map for every step
//! ([`Params::model`]): the transposed copies are ops on the `Var`s, so gradients reach
//! them, and building costs one copy of ~1M floats.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use concepts_runtime::config::{
    Activation, ClipVisionConfig, FeatureSelect, LlamaConfig, LlavaConfig, ProjectorConfig,
    VisionStem,
};
use concepts_runtime::LlavaModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::data::SpecialIds;
use crate::error::Result;

/// The sizes of the toy model that are ours to choose.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToySize {
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub text_hidden: usize,
    pub text_intermediate: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub max_positions: usize,
}

impl ToySize {
    /// The committed toy model: 48 px images through a 3-conv stem (36 image tokens), a
    /// 3-layer width-64 tower, a 4-layer width-128 decoder.
    pub fn standard() -> ToySize {
        ToySize {
            image_size: 48,
            patch_size: 8,
            vision_hidden: 64,
            vision_layers: 3,
            vision_heads: 4,
            text_hidden: 128,
            text_intermediate: 344,
            text_layers: 4,
            text_heads: 4,
            max_positions: 256,
        }
    }

    /// A model small enough for unit tests (16 px images, 4 image tokens).
    pub fn tiny() -> ToySize {
        ToySize {
            image_size: 16,
            patch_size: 8,
            vision_hidden: 8,
            vision_layers: 2,
            vision_heads: 2,
            text_hidden: 16,
            text_intermediate: 24,
            text_layers: 2,
            text_heads: 2,
            max_positions: 160,
        }
    }

    /// The LLaVA config of this size for a vocabulary of `vocab_size` words.
    pub fn llava_config(&self, vocab_size: usize, special: SpecialIds) -> Result<LlavaConfig> {
        let cfg = LlavaConfig {
            vision: ClipVisionConfig {
                hidden_size: self.vision_hidden,
                intermediate_size: 4 * self.vision_hidden,
                num_hidden_layers: self.vision_layers,
                num_attention_heads: self.vision_heads,
                num_channels: 3,
                image_size: self.image_size,
                patch_size: self.patch_size,
                layer_norm_eps: 1e-5,
                hidden_act: Activation::QuickGelu,
                stem: VisionStem::Conv,
            },
            text: LlamaConfig {
                hidden_size: self.text_hidden,
                intermediate_size: self.text_intermediate,
                num_hidden_layers: self.text_layers,
                num_attention_heads: self.text_heads,
                num_key_value_heads: self.text_heads,
                head_dim: self.text_hidden / self.text_heads,
                vocab_size,
                max_position_embeddings: self.max_positions,
                rms_norm_eps: 1e-5,
                rope_theta: 10000.0,
                hidden_act: Activation::Silu,
                attention_bias: false,
                mlp_bias: false,
                tie_word_embeddings: false,
            },
            projector: ProjectorConfig {
                hidden_act: Activation::GeluErf,
                bias: true,
            },
            // transformers' -2.
            vision_feature_layer: self.vision_layers - 1,
            vision_feature_select: FeatureSelect::Default,
            image_token_id: special.image,
            pad_token_id: Some(special.pad),
            bos_token_id: Some(special.bos),
            eos_token_ids: vec![special.eos],
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The llava-hf `config.json` of `cfg` (which must come from [`ToySize::llava_config`]).
pub fn config_json(cfg: &LlavaConfig) -> Value {
    let v = &cfg.vision;
    let t = &cfg.text;
    json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "concepts_vision_stem": v.stem.id(),
        "ignore_index": -100,
        "image_token_index": cfg.image_token_id,
        "pad_token_id": cfg.pad_token_id,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": cfg.projector.bias,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "image_seq_length": cfg.image_seq_len(),
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "llama",
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "vocab_size": t.vocab_size,
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": false,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_ids.first(),
            "pad_token_id": cfg.pad_token_id,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads,
            "num_channels": v.num_channels,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "layer_norm_eps": v.layer_norm_eps,
            "hidden_act": "quick_gelu",
            "projection_dim": v.hidden_size,
        },
    })
}

/// A `VarBuilder` backend that draws initial weights and records them by name.
///
/// Norm weights start at 1, biases at 0 (whatever the hint), other 1-D tensors (CLIP's class embedding) at
/// `N(0, 0.02²)`, matrices and kernels at `N(0, 1/fan_in)`. Values depend on the seed and
/// the name only.
#[derive(Clone)]
struct InitBackend {
    seed: u64,
    recorded: Arc<Mutex<BTreeMap<String, Tensor>>>,
}

impl SimpleBackend for InitBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = recorded.get(name) {
            return t.to_dtype(dtype)?.to_device(dev);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ fnv1a(name.as_bytes()));
        let dims = s.dims();
        // The runtime asks with `vb.get`, whose hint is candle's default `Const(0)`: only an
        // explicit non-zero constant (norm weights) and biases are taken as constants; every
        // other tensor is drawn, or the whole network would start (and stay) at zero.
        let (mean, std) = match hint {
            Init::Const(c) if c != 0.0 || name.ends_with("bias") => (c, 0.0),
            _ if name.ends_with("bias") => (0.0, 0.0),
            _ if dims.len() <= 1 => (0.0, 0.02),
            _ => (
                0.0,
                1.0 / (dims[1..].iter().product::<usize>() as f64).sqrt(),
            ),
        };
        let values: Vec<f32> = (0..s.elem_count())
            .map(|_| (mean + std * normal(&mut rng)) as f32)
            .collect();
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        recorded.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor {
            path: name.to_string(),
        })
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// FNV-1a, the fixed hash of a name for seeding (the toy world's).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    toy_world::fnv1a64(toy_world::FNV1A64_START, bytes)
}

pub(crate) use concepts_runtime::optim::standard_normal as normal;

/// Every weight of the model as a `Var` under its hub-layout name, in f32.
pub struct Params {
    cfg: LlavaConfig,
    map: VarMap,
}

impl Params {
    /// Freshly initialised weights for `cfg`, deterministic in `seed`.
    pub fn init(cfg: &LlavaConfig, seed: u64, device: &Device) -> Result<Params> {
        let backend = InitBackend {
            seed,
            recorded: Arc::default(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend.clone()), DType::F32, device.clone());
        LlavaModel::from_varbuilder(cfg.clone(), vb)?;
        let recorded = backend
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Params::from_tensors(cfg, recorded)
    }

    /// Weights from tensors named as in the hub layout.
    pub fn from_tensors(cfg: &LlavaConfig, tensors: BTreeMap<String, Tensor>) -> Result<Params> {
        let map = VarMap::new();
        {
            let mut data = map.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, t) in tensors {
                data.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
            }
        }
        let params = Params {
            cfg: cfg.clone(),
            map,
        };
        // Fails on a missing or misshapen weight.
        params.model()?;
        Ok(params)
    }

    pub fn config(&self) -> &LlavaConfig {
        &self.cfg
    }

    /// A model reading the current values of the `Var`s; gradients of anything computed
    /// with it flow to them. Build a new one after each optimizer step.
    pub fn model(&self) -> Result<LlavaModel> {
        let device = self.device();
        let vb = VarBuilder::from_varmap(&self.map, DType::F32, &device);
        Ok(LlavaModel::from_varbuilder(self.cfg.clone(), vb)?)
    }

    pub fn device(&self) -> Device {
        self.named()
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu)
    }

    /// `(name, var)` sorted by name.
    pub fn named(&self) -> Vec<(String, Var)> {
        let data = self.map.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, Var)> =
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A copy of the current values by name (an optimizer step updates the `Var`s' storage
    /// in place, so views would change with it).
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        self.named()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().detach().copy()?)))
            .collect()
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.named().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Which part of the model a hub-layout weight name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Vision,
    Projector,
    Language,
}

impl Part {
    pub fn of(name: &str) -> Part {
        if name.starts_with("vision_tower.") {
            Part::Vision
        } else if name.starts_with("multi_modal_projector.") {
            Part::Projector
        } else {
            Part::Language
        }
    }
}
