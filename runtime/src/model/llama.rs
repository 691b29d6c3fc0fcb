//! The Llama decoder (Touvron et al. 2023, "Llama 2: Open Foundation and Fine-Tuned Chat
//! Models"), as transformers' `LlamaForCausalLM` (`models/llama/modeling_llama.py`).
//!
//! Pre-norm layers: `x + attn(rms_norm(x))`, then `x + down(silu(gate(h)) * up(h))` with
//! `h = rms_norm(x)`. Attention uses RoPE in the `rotate_half` convention, grouped-query
//! heads, a causal mask and scale `1/sqrt(head_dim)`. The LM head is untied unless the config
//! says otherwise. The model starts from embeddings, not ids, so callers can splice image
//! features and concept embeddings into the sequence.

use candle_core::{DType, Device, Tensor};
use candle_nn::Init;

use crate::model::source::Weights;

use crate::config::{Activation, LlamaConfig};
use crate::error::{Result, RuntimeError};
use crate::model::kv_cache::{BatchKvCache, KvCache};
use crate::model::linear::Linear;
use crate::model::matrix::WeightMatrix;
use crate::ops::{self, Kernels};

/// Precomputed RoPE angles for every position up to `max_position_embeddings`.
struct Rope {
    /// `[max_positions, head_dim / 2]` in the compute dtype.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// As transformers' default rope: `inv_freq_i = 1 / theta^(2i / head_dim)` in f32, angle
    /// `position * inv_freq_i` in f32, cos and sin cast to the compute dtype.
    fn new(cfg: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / cfg.head_dim as f64)) as f32)
            .collect();
        let n = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for &f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (n, half), device)?.to_dtype(dtype)?)
        };
        Ok(Rope {
            cos: table(cos)?,
            sin: table(sin)?,
        })
    }

    /// Angles of positions `offset..offset + t`.
    fn angles(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let max = self.cos.dim(0)?;
        if offset + t > max {
            return Err(RuntimeError::InvalidInput(format!(
                "positions up to {} exceed max_position_embeddings {max}",
                offset + t
            )));
        }
        Ok((
            self.cos.narrow(0, offset, t)?,
            self.sin.narrow(0, offset, t)?,
        ))
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: Weights, cfg: &LlamaConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let q_out = cfg.num_attention_heads * cfg.head_dim;
        let kv_out = cfg.num_key_value_heads * cfg.head_dim;
        let bias = cfg.attention_bias;
        Ok(Attention {
            q_proj: Linear::load(vb.pp("q_proj"), d, q_out, bias)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, kv_out, bias)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, kv_out, bias)?,
            o_proj: Linear::load(vb.pp("o_proj"), q_out, d, bias)?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    fn forward(&self, x: &Tensor, step: &mut Step, layer: usize) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let kernels = step.kernels;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(self.q_proj.forward(x)?, self.num_heads)?;
        let k = heads(self.k_proj.forward(x)?, self.num_kv_heads)?;
        let v = heads(self.v_proj.forward(x)?, self.num_kv_heads)?;
        let q = ops::rope(&q, &step.cos, &step.sin, kernels)?;
        let k = ops::rope(&k, &step.cos, &step.sin, kernels)?;

        let (k, v) = match &mut step.cache {
            StepCache::None => (k, v),
            StepCache::Batch(batch) => batch.append(layer, &k, &v)?,
            StepCache::Sequence(cache) => {
                let len = cache.len();
                let (k_all, v_all) = cache.append(layer, &k.detach(), &v.detach())?;
                // A cache that keeps keys and values narrower than computed (f16 for f32).
                let narrower = k_all.dtype() != k.dtype();
                match kernels {
                    // A decode step reads a narrower cache as it lies (`ops::attention`).
                    Kernels::Fast if !narrower || t == 1 => (k_all, v_all),
                    // This chunk's own keys and values: in the graph when training, unrounded
                    // when the cache is narrower. Cached positions are constants.
                    _ if len == 0 => (k, v),
                    _ => {
                        let cached = |all: &Tensor| all.narrow(2, 0, len)?.to_dtype(k.dtype());
                        (
                            Tensor::cat(&[&cached(&k_all)?, &k], 2)?,
                            Tensor::cat(&[&cached(&v_all)?, &v], 2)?,
                        )
                    }
                }
            }
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = ops::attention(&q, &k, &v, &step.mask, scale, kernels)?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn load(vb: Weights, cfg: &LlamaConfig) -> Result<Self> {
        let (d, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Mlp {
            gate_proj: Linear::load(vb.pp("gate_proj"), d, i, bias)?,
            up_proj: Linear::load(vb.pp("up_proj"), d, i, bias)?,
            down_proj: Linear::load(vb.pp("down_proj"), i, d, bias)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        self.down_proj
            .forward(&ops::gated(&gate, &up, self.act, kernels)?)
    }
}

struct DecoderLayer {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
    eps: f64,
}

impl DecoderLayer {
    fn load(vb: Weights, cfg: &LlamaConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(DecoderLayer {
            input_layernorm: vb.pp("input_layernorm").get_with_hints(
                d,
                "weight",
                Init::Const(1.0),
            )?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: vb.pp("post_attention_layernorm").get_with_hints(
                d,
                "weight",
                Init::Const(1.0),
            )?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
            eps: cfg.rms_norm_eps,
        })
    }

    fn forward(&self, x: &Tensor, step: &mut Step, layer: usize) -> Result<Tensor> {
        let kernels = step.kernels;
        let h = ops::rms_norm(x, &self.input_layernorm, self.eps, kernels)?;
        let x = (x + self.self_attn.forward(&h, step, layer)?)?;
        let h = ops::rms_norm(&x, &self.post_attention_layernorm, self.eps, kernels)?;
        Ok((&x + self.mlp.forward(&h, kernels)?)?)
    }
}

/// What every layer of one forward call shares.
struct Step<'a> {
    /// `[T, D/2]`, or `[B, 1, D/2]` for a batched decode step (each row at its own position).
    cos: Tensor,
    sin: Tensor,
    /// Additive: `[T, S]`, or `[B, 1, 1, S]` for a batched decode step.
    mask: ops::Mask,
    cache: StepCache<'a>,
    kernels: Kernels,
}

/// Where a forward call's keys and values go.
enum StepCache<'a> {
    None,
    Sequence(&'a mut KvCache),
    Batch(&'a mut BatchKvCache),
}

/// The Llama decoder and its LM head.
pub(crate) struct Llama {
    embed_tokens: WeightMatrix,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: WeightMatrix,
    /// The LM head quantized (a quantized folder, `crate::quant`): the logits are computed
    /// with it, and `lm_head` serves its rows only.
    lm_head_quantized: Option<Linear>,
    rope: Rope,
    cfg: LlamaConfig,
}

impl Llama {
    /// Loads from the parent of `model` and `lm_head` (`language_model` in the hub layout).
    pub(crate) fn load(vb: Weights, cfg: &LlamaConfig) -> Result<Self> {
        let vb_m = vb.pp("model");
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = vb_m.pp("embed_tokens").matrix(v, d, "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(vb_m.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = vb_m
            .pp("norm")
            .get_with_hints(d, "weight", Init::Const(1.0))?;
        let (lm_head, lm_head_quantized) = if cfg.tie_word_embeddings {
            (embed_tokens.clone(), None)
        } else {
            let head = vb.pp("lm_head");
            let quantized = match head.quantized("weight") {
                Some(_) => Some(Linear::load(head.clone(), d, v, false)?),
                None => None,
            };
            (head.matrix(v, d, "weight")?, quantized)
        };
        let rope = Rope::new(cfg, embed_tokens.dtype(), embed_tokens.device())?;
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            lm_head_quantized,
            rope,
            cfg: cfg.clone(),
        })
    }

    pub(crate) fn embed_weight(&self) -> &WeightMatrix {
        &self.embed_tokens
    }

    pub(crate) fn lm_head_weight(&self) -> &WeightMatrix {
        &self.lm_head
    }

    pub(crate) fn lm_head_is_quantized(&self) -> bool {
        self.lm_head_quantized.is_some()
    }

    /// Rows of the base embedding table for `ids` (u32, any shape) -> `[.., d]`.
    pub(crate) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.dtype() != DType::U32 {
            return Err(RuntimeError::InvalidInput(format!(
                "token ids of dtype {:?}, expected u32",
                ids.dtype()
            )));
        }
        let v = self.cfg.vocab_size;
        if let Some(&bad) = ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .iter()
            .find(|&&id| id as usize >= v)
        {
            return Err(RuntimeError::InvalidInput(format!(
                "token id {bad} outside the base vocabulary of {v}"
            )));
        }
        self.embed_tokens.rows(ids)
    }

    /// Runs the decoder over `[B, T, d]` embeddings and returns final-normed hidden states.
    /// With a cache, the tokens take positions `cache.len()..` and are appended to it.
    pub(crate) fn forward_embeds(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (_, t, d) = embeds.dims3()?;
        if d != self.cfg.hidden_size || t == 0 {
            return Err(RuntimeError::InvalidInput(format!(
                "embeddings of shape {:?}, expected [batch, tokens > 0, {}]",
                embeds.dims(),
                self.cfg.hidden_size
            )));
        }
        self.check_dtype(embeds)?;
        if let Some(cache) = cache.as_deref() {
            if cache.num_layers() != self.layers.len() {
                return Err(RuntimeError::InvalidInput(format!(
                    "kv cache for {} layers, the model has {}",
                    cache.num_layers(),
                    self.layers.len()
                )));
            }
        }
        let offset = cache.as_deref().map_or(0, KvCache::len);
        let (cos, sin) = self.rope.angles(offset, t)?;
        let mask = if t > 1 {
            ops::Mask::causal(t, offset)
        } else {
            ops::Mask::All
        };
        let mut step = Step {
            cos,
            sin,
            mask,
            cache: match cache {
                Some(cache) => StepCache::Sequence(cache),
                None => StepCache::None,
            },
            kernels,
        };
        let x = self.layers_forward(embeds, &mut step)?;
        if let StepCache::Sequence(cache) = step.cache {
            cache.advance(t);
        }
        ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, kernels)
    }

    /// One decode step for rows `0..B` of a batch: `embeds` `[B, 1, d]` holds each row's next
    /// token, which takes the position `cache.len(row)`, attends to that row's cached
    /// positions only, and is appended to them. Free slots among the rows are computed
    /// (their input is anything) and stay free. Returns final-normed hidden states `[B, 1, d]`.
    pub(crate) fn decode_batch(&self, embeds: &Tensor, cache: &mut BatchKvCache) -> Result<Tensor> {
        let (b, t, d) = embeds.dims3()?;
        if d != self.cfg.hidden_size || t != 1 || b == 0 || b > cache.slots() {
            return Err(RuntimeError::InvalidInput(format!(
                "batched decode of embeddings {:?}, expected [1..={}, 1, {}]",
                embeds.dims(),
                cache.slots(),
                self.cfg.hidden_size
            )));
        }
        self.check_dtype(embeds)?;
        if cache.num_layers() != self.layers.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "batch kv cache for {} layers, the model has {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        let positions = cache.positions(b).to_vec();
        let max = self.rope.cos.dim(0)?;
        if let Some(&pos) = positions.iter().find(|&&p| p >= max) {
            return Err(RuntimeError::InvalidInput(format!(
                "position {pos} exceeds max_position_embeddings {max}"
            )));
        }
        cache.prepare_step(b)?;
        let span = cache.step_span(b);
        let device = embeds.device();
        let ids = Tensor::from_iter(positions.iter().map(|&p| p as u32), device)?;
        let half = self.cfg.head_dim / 2;
        let cos = self.rope.cos.index_select(&ids, 0)?.reshape((b, 1, half))?;
        let sin = self.rope.sin.index_select(&ids, 0)?.reshape((b, 1, half))?;
        // Row `i` writes position `positions[i]` and sees keys `0..=positions[i]`.
        let mask = ops::Mask::per_batch_row(positions.iter().map(|&p| p + 1).collect(), span);
        let mut step = Step {
            cos,
            sin,
            mask,
            cache: StepCache::Batch(cache),
            kernels: Kernels::Fast,
        };
        let x = self.layers_forward(embeds, &mut step)?;
        cache.advance(b);
        ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, Kernels::Fast)
    }

    fn check_dtype(&self, embeds: &Tensor) -> Result<()> {
        if embeds.dtype() != self.embed_tokens.dtype() {
            return Err(RuntimeError::InvalidInput(format!(
                "embeddings of dtype {:?}, the model computes in {:?}",
                embeds.dtype(),
                self.embed_tokens.dtype()
            )));
        }
        Ok(())
    }

    fn layers_forward(&self, embeds: &Tensor, step: &mut Step) -> Result<Tensor> {
        let mut x = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, step, i)?;
        }
        Ok(x)
    }

    /// `hidden · lm_headᵀ`: `[.., d]` -> `[.., vocab_size]`.
    pub(crate) fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head_quantized {
            Some(head) => head.forward(hidden),
            None => self.lm_head.linear_t(hidden),
        }
    }
}
