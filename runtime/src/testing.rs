//! Tiny configurations and deterministic random weights for tests and examples.
//!
//! [`RandomWeights`] is a `VarBuilder` backend that invents a tensor for whatever name and
//! shape the model asks for, seeded by the name, and records it. Loading a model from it
//! therefore needs no list of weight names, and the recorded tensors can be written to a
//! checkpoint to test the file loader ([`write_random_checkpoint`] writes one to a folder).
//! Behind the `testing` feature: test support, not part of the runtime's API.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use concept_format::{Category, ConceptPackage, ConceptTensors, Manifest, ModelFingerprint};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::concept_table::{ConceptTable, ConceptWeights};
use crate::config::{
    Activation, ClipVisionConfig, FeatureSelect, LlamaConfig, LlavaConfig, ProjectorConfig,
    VisionStem,
};
use crate::error::{Result, RuntimeError};
use crate::model::LlavaModel;
use crate::ops::Kernels;

/// `len` values in [-0.5, 0.5) from a multiplicative hash of their index and `seed`: cheap,
/// deterministic inputs for kernel tests that need no random-number generator.
pub fn hashed_values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
            (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Max |a − b| over two tensors of the same shape and any float dtype, computed in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let diff = (a.to_dtype(DType::F64).expect("f64") - b.to_dtype(DType::F64).expect("f64"))
        .expect("same shapes");
    diff.abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f64>())
        .expect("a float tensor")
}

/// The masked answer-only cross-entropy of `<s> 5 <bo> <l0> <l1> 6 <image> 7 8 | <bo> 9 10 </s>`
/// (the answer after `|`) with a concept `<bo>` of two latent tokens made of `identifier`
/// (`[d]`), `latents` (`[2, d]`) and `head` (`[d]`): the Yo'LLaVA training loss of one example
/// as a function of the concept's tensors, what the gradient tests differentiate.
pub fn concept_answer_loss(
    model: &LlavaModel,
    pixels: &Tensor,
    identifier: &Tensor,
    latents: &Tensor,
    head: &Tensor,
    kernels: Kernels,
) -> Result<Tensor> {
    let mut table = ConceptTable::new(model);
    let weights = ConceptWeights::new(identifier.clone(), latents.clone(), head.clone())?;
    table.activate("bo", weights)?;
    let bo = table.identifier_id("bo").expect("`bo` was just activated");
    let latent_ids: Vec<u32> = table.latent_ids("bo").expect("activated").collect();
    let before = [1, 5, bo, latent_ids[0], latent_ids[1], 6];
    let after = [7, 8, bo, 9, 10, 2];
    let answer_len = 4;
    let image = model.image_features(pixels, kernels)?.squeeze(0)?;
    let n_image = image.dim(0)?;
    let embeds = Tensor::cat(
        &[
            &table.embed_ids(model, &before)?,
            &image,
            &table.embed_ids(model, &after)?,
        ],
        0,
    )?
    .unsqueeze(0)?;
    let hidden = model.forward_embeds(&embeds, None, kernels)?.squeeze(0)?;
    let logits = table.logits(model, &hidden)?;
    let image_id = model.config().image_token_id;
    let ids: Vec<u32> = before
        .iter()
        .copied()
        .chain(std::iter::repeat_n(image_id, n_image))
        .chain(after.iter().copied())
        .collect();
    let t = ids.len();
    let mask: Vec<bool> = (1..t).map(|i| i >= t - answer_len).collect();
    crate::ops::masked_cross_entropy(&logits.narrow(0, 0, t - 1)?, &ids[1..], &mask)
}

/// A two-layer LLaVA small enough for finite differences: CLIP with hidden 12, 28×28 images
/// in 14×14 patches (4 image tokens), Llama with hidden 16, 2 heads, vocabulary 40.
pub fn tiny_config() -> LlavaConfig {
    LlavaConfig {
        vision: ClipVisionConfig {
            hidden_size: 12,
            intermediate_size: 20,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_channels: 3,
            image_size: 28,
            patch_size: 14,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            stem: VisionStem::Patch,
        },
        text: LlamaConfig {
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 2,
            head_dim: 8,
            vocab_size: 40,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-6,
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
        // transformers' -2 for a two-layer tower.
        vision_feature_layer: 1,
        vision_feature_select: FeatureSelect::Default,
        image_token_id: 39,
        pad_token_id: Some(0),
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// [`tiny_config`] with grouped-query attention: 2 query heads share 1 key/value head.
pub fn tiny_config_gqa() -> LlavaConfig {
    let mut cfg = tiny_config();
    cfg.text.num_key_value_heads = 1;
    cfg
}

/// [`tiny_config`] with the convolutional vision stem ([`VisionStem::Conv`]): 16×16 images,
/// two stride-2 convolutions (6 and 12 channels), 16 image tokens.
pub fn tiny_conv_config() -> LlavaConfig {
    let mut cfg = tiny_config();
    cfg.vision.stem = VisionStem::Conv;
    cfg.vision.image_size = 16;
    cfg.vision.patch_size = 4;
    cfg
}

/// The `config.json` text that parses to [`tiny_conv_config`].
pub fn tiny_conv_config_json() -> String {
    tiny_config_json()
        .replace(
            r#""model_type": "llava","#,
            r#""model_type": "llava",
  "concepts_vision_stem": "conv","#,
        )
        .replace(r#""image_size": 28"#, r#""image_size": 16"#)
        .replace(r#""patch_size": 14"#, r#""patch_size": 4"#)
}

/// The `config.json` text that parses to [`tiny_config`].
pub fn tiny_config_json() -> String {
    r#"{
  "model_type": "llava",
  "image_token_index": 39,
  "pad_token_id": 0,
  "projector_hidden_act": "gelu",
  "vision_feature_layer": -2,
  "vision_feature_select_strategy": "default",
  "text_config": {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 40,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6
  },
  "vision_config": {
    "model_type": "clip_vision_model",
    "hidden_size": 12,
    "intermediate_size": 20,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14
  }
}"#
    .to_string()
}

pub use crate::optim::randn;
use crate::optim::standard_normal;

/// A `VarBuilder` backend that invents seeded random tensors and records them by name.
///
/// Values: `c + 0.1·N(0,1)` for an `Init::Const(c)` hint with `c ≠ 0` (norm weights),
/// `0.1·N(0,1)` for other 1-D tensors, `N(0,1)/sqrt(fan_in)` for matrices and kernels.
#[derive(Clone)]
pub struct RandomWeights {
    seed: u64,
    recorded: Arc<Mutex<BTreeMap<String, Tensor>>>,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        RandomWeights {
            seed,
            recorded: Arc::default(),
        }
    }

    /// A `VarBuilder` over these weights.
    pub fn varbuilder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Every tensor handed out so far, by name, in f64 on the CPU.
    pub fn recorded(&self) -> BTreeMap<String, Tensor> {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn invent(&self, shape: &Shape, name: &str, hint: Init) -> candle_core::Result<Tensor> {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = recorded.get(name) {
            if t.shape() != shape {
                candle_core::bail!("random weight `{name}` requested with two shapes");
            }
            return Ok(t.clone());
        }
        let digest = Sha256::digest(name.as_bytes());
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&digest[..8]);
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from_le_bytes(seed) ^ self.seed);
        let dims = shape.dims();
        let (offset, scale) = match hint {
            Init::Const(c) if c != 0.0 => (c, 0.1),
            _ if dims.len() <= 1 => (0.0, 0.1),
            _ => (
                0.0,
                1.0 / (dims[1..].iter().product::<usize>() as f64).sqrt(),
            ),
        };
        let values: Vec<f64> = (0..shape.elem_count())
            .map(|_| offset + scale * standard_normal(&mut rng))
            .collect();
        let t = Tensor::from_vec(values, shape.clone(), &Device::Cpu)?;
        recorded.insert(name.to_string(), t.clone());
        Ok(t)
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.invent(&s, name, h)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        match recorded.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
        }
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A model with random weights for `cfg`, and the weights it drew.
pub fn random_model(
    cfg: &LlavaConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(LlavaModel, RandomWeights)> {
    let weights = RandomWeights::new(seed);
    let model = LlavaModel::from_varbuilder(cfg.clone(), weights.varbuilder(dtype, device))?;
    Ok((model, weights))
}

/// [`tiny_config_json`] over a word-level vocabulary of `vocab_size` tokens whose image token is
/// `image_token_index` (the toy world's tokenizer: 4), with 256 positions.
pub fn tiny_config_json_with_vocab(vocab_size: usize, image_token_index: u32) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&tiny_config_json()).expect("the tiny config is valid JSON");
    v["image_token_index"] = image_token_index.into();
    v["text_config"]["vocab_size"] = vocab_size.into();
    v["text_config"]["max_position_embeddings"] = 256.into();
    serde_json::to_string_pretty(&v).expect("a JSON value serialises")
}

/// Writes `config_json` and random f32 weights drawn from `seed` (`model.safetensors`) to `dir`,
/// creating it; with a `tokenizer.json` beside them the folder loads like a llava-hf checkpoint.
/// Returns the parsed config.
pub fn write_random_checkpoint(dir: &Path, config_json: &str, seed: u64) -> Result<LlavaConfig> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config_json).map_err(io(&config_path))?;
    let cfg = LlavaConfig::from_json_str(config_json)?;
    let weights = RandomWeights::new(seed);
    LlavaModel::from_varbuilder(cfg.clone(), weights.varbuilder(DType::F32, &Device::Cpu))?;
    let tensors = weights
        .recorded()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(cfg)
}

/// A valid concept package `<name>` for the model with fingerprint `fp`: `k` latent tokens and
/// tensors drawn uniformly from `[-scale, scale)` with `seed` (different scales move the logits
/// differently). The manifest is fixed apart from the name, so equal arguments give equal bytes.
pub fn random_concept_package(
    name: &str,
    fp: &ModelFingerprint,
    k: usize,
    seed: u64,
    scale: f32,
) -> Result<ConceptPackage> {
    let d = fp.hidden_size as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect()
    };
    let invalid = |e: concept_format::FormatError| RuntimeError::Concept {
        name: name.to_string(),
        msg: e.to_string(),
    };
    let (identifier, latents, head) = (values(d), values(k * d), values(d));
    let tensors =
        ConceptTensors::from_f32(concept_format::DType::F32, k, d, identifier, latents, head)
            .map_err(invalid)?;
    let manifest = Manifest {
        name: name.into(),
        identifier: format!("<{name}>"),
        display_name: name.into(),
        category: Category::Pet,
        k: k as u32,
        d: d as u32,
        dtype: concept_format::DType::F32,
        base_model: fp.clone(),
        prompt_template: crate::prompt::TEMPLATE_ID.into(),
        provenance: None,
        user_facts: vec![],
        relations: vec![],
        license: "CC0-1.0".into(),
        created: "2025-05-03T12:00:00Z".into(),
        body_sha256: String::new(),
        ext: Default::default(),
    };
    ConceptPackage::new(manifest, tensors).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_config_json_parses_to_tiny_config() {
        assert_eq!(
            LlavaConfig::from_json_str(&tiny_config_json()).unwrap(),
            tiny_config()
        );
    }

    #[test]
    fn tiny_conv_config_json_parses_to_tiny_conv_config() {
        assert_eq!(
            LlavaConfig::from_json_str(&tiny_conv_config_json()).unwrap(),
            tiny_conv_config()
        );
    }

    #[test]
    fn random_weights_are_seeded_by_name_and_recorded() {
        let a = RandomWeights::new(3);
        let b = RandomWeights::new(3);
        let vb_a = a.varbuilder(DType::F64, &Device::Cpu);
        let vb_b = b.varbuilder(DType::F64, &Device::Cpu);
        let x = vb_a.get((2, 3), "x").unwrap().to_vec2::<f64>().unwrap();
        assert_eq!(x, vb_b.get((2, 3), "x").unwrap().to_vec2::<f64>().unwrap());
        assert_ne!(x, vb_a.get((2, 3), "y").unwrap().to_vec2::<f64>().unwrap());
        assert_ne!(
            x,
            RandomWeights::new(4)
                .varbuilder(DType::F64, &Device::Cpu)
                .get((2, 3), "x")
                .unwrap()
                .to_vec2::<f64>()
                .unwrap()
        );
        assert_eq!(a.recorded().keys().collect::<Vec<_>>(), ["x", "y"]);
        assert!(vb_a.get((3, 2), "x").is_err());
    }
}
