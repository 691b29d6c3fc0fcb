//! CLIP ViT vision tower (Radford et al. 2021, "Learning Transferable Visual Models From
//! Natural Language Supervision"), as transformers' `CLIPVisionTransformer`
//! (`models/clip/modeling_clip.py`).
//!
//! Pre-LN encoder layers: `x + attn(ln1(x))`, then `x + fc2(act(fc1(ln2(x))))`. LLaVA reads
//! `hidden_states[vision_feature_layer]` — the output of encoder layer `vision_feature_layer - 1`
//! without `post_layernorm` — so the layers after it and `post_layernorm` only serve
//! [`ClipVisionTower::pooled`], CLIP's own image embedding. They are loaded when the checkpoint
//! has them and are optional otherwise.

use candle_core::{DType, Tensor};
use candle_nn::Init;

use crate::model::source::Weights;

use crate::config::{Activation, ClipVisionConfig, VisionStem};
use crate::error::{Result, RuntimeError};
use crate::model::linear::Linear;
use crate::ops::{self, Kernels};

/// A LayerNorm's parameters.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(vb: Weights, size: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps, kernels)
    }
}

/// CLIP's patch stem: a stride-`patch` convolution without bias, a class token prepended,
/// learned absolute position embeddings added.
struct PatchStem {
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    image_size: usize,
    num_channels: usize,
}

impl PatchStem {
    fn load(vb: Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let positions = (cfg.image_size / p).pow(2) + 1;
        Ok(PatchStem {
            patch_embedding: vb
                .pp("patch_embedding")
                .get((d, cfg.num_channels, p, p), "weight")?,
            class_embedding: vb.get(d, "class_embedding")?,
            position_embedding: vb.pp("position_embedding").get((positions, d), "weight")?,
            image_size: cfg.image_size,
            num_channels: cfg.num_channels,
        })
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        check_pixels(pixel_values, self.num_channels, self.image_size)?;
        let pixels = pixel_values
            .to_dtype(self.patch_embedding.dtype())?
            .contiguous()?;
        let patches = patch_products(&pixels, &self.patch_embedding)?;
        tokens_with_class(&patches, &self.class_embedding, &self.position_embedding)
    }
}

/// The stride-`p` convolution of `[B, C, H, W]` pixels with `[D, C, p, p]` weights, without
/// padding, as `[B, (H/p)·(W/p), D]` tokens: since the patches do not overlap, it is one
/// matrix product of the weights with the patches laid out as rows (`[B, L, C·p·p]`, the
/// order candle's im2col uses), found by a reshape and one strided copy. candle's
/// convolution builds the same rows with a scalar loop over every index (an eighth of a
/// small vision tower's time).
fn patch_products(pixels: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = pixels.dims4()?;
    let (d, _, p, _) = weight.dims4()?;
    let (gh, gw) = (h / p, w / p);
    // (candle's CPU product widens bf16 to f32 itself, unlike its convolution.)
    let rows = pixels
        .narrow(2, 0, gh * p)?
        .narrow(3, 0, gw * p)?
        .reshape((b, c, gh, p, gw, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((b, gh * gw, c * p * p))?;
    let kernel = weight.reshape((d, c * p * p))?.t()?;
    // One product per image: candle folds a batch multiplied with one matrix into a single
    // product of `B·L` rows, whose blocking (and so rounding) depends on `B`; an image's
    // tokens must not depend on which images it was batched with (training caches them).
    let per_image = (0..b)
        .map(|i| rows.get(i)?.matmul(&kernel))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&per_image, 0)?)
}

/// `x.conv2d(w, padding, stride)`. candle's CPU convolution has no bf16 kernel: there it
/// runs in f32 and the result is narrowed back.
fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if x.dtype() == DType::BF16 && x.device().is_cpu() {
        let wide =
            x.to_dtype(DType::F32)?
                .conv2d(&w.to_dtype(DType::F32)?, padding, stride, 1, 1)?;
        return Ok(wide.to_dtype(DType::BF16)?);
    }
    Ok(x.conv2d(w, padding, stride, 1, 1)?)
}

/// Checks `[B, C, H, W]` pixel values against the config.
fn check_pixels(pixel_values: &Tensor, num_channels: usize, image_size: usize) -> Result<()> {
    let (_, c, h, w) = pixel_values.dims4()?;
    if (c, h, w) != (num_channels, image_size, image_size) {
        return Err(RuntimeError::InvalidInput(format!(
            "pixel_values of shape {:?}, expected [batch, {num_channels}, {image_size}, \
             {image_size}]",
            pixel_values.dims(),
        )));
    }
    Ok(())
}

/// Prepends the class token and adds position embeddings to `[B, L, D]` patch tokens.
fn tokens_with_class(
    patches: &Tensor,
    class_embedding: &Tensor,
    position_embedding: &Tensor,
) -> Result<Tensor> {
    let b = patches.dim(0)?;
    let d = class_embedding.dim(0)?;
    let class = class_embedding.reshape((1, 1, d))?.repeat((b, 1, 1))?;
    let tokens = Tensor::cat(&[&class, patches], 1)?;
    Ok(tokens.broadcast_add(position_embedding)?)
}

/// The convolutional stem of [`VisionStem::Conv`]: 3×3 stride-2 convolutions with bias and
/// an exact GELU between them, then CLIP's class token and position embeddings.
struct ConvStem {
    /// `(weight [out, in, 3, 3], bias [out])` per convolution.
    convs: Vec<(Tensor, Tensor)>,
    class_embedding: Tensor,
    position_embedding: Tensor,
    image_size: usize,
    num_channels: usize,
}

impl ConvStem {
    fn load(vb: Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let positions = (cfg.image_size / cfg.patch_size).pow(2) + 1;
        let vb_stem = vb.pp("stem");
        let mut convs = Vec::new();
        let mut in_channels = cfg.num_channels;
        for (i, out) in cfg
            .stem
            .conv_channels(d, cfg.patch_size)
            .into_iter()
            .enumerate()
        {
            let vb_i = vb_stem.pp(i);
            convs.push((
                vb_i.get((out, in_channels, 3, 3), "weight")?,
                vb_i.get_with_hints(out, "bias", Init::Const(0.0))?,
            ));
            in_channels = out;
        }
        Ok(ConvStem {
            convs,
            class_embedding: vb.get(d, "class_embedding")?,
            position_embedding: vb.pp("position_embedding").get((positions, d), "weight")?,
            image_size: cfg.image_size,
            num_channels: cfg.num_channels,
        })
    }

    fn forward(&self, pixel_values: &Tensor, kernels: Kernels) -> Result<Tensor> {
        check_pixels(pixel_values, self.num_channels, self.image_size)?;
        let mut x = pixel_values
            .to_dtype(self.class_embedding.dtype())?
            .contiguous()?;
        let last = self.convs.len() - 1;
        for (i, (weight, bias)) in self.convs.iter().enumerate() {
            let c = bias.dim(0)?;
            x = conv2d(&x, weight, 1, 2)?.broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
            if i < last {
                x = ops::activation(&x, Activation::GeluErf, kernels)?;
            }
        }
        // [B, D, gh, gw] -> [B, gh·gw, D]
        let patches = x.flatten_from(2)?.transpose(1, 2)?;
        tokens_with_class(&patches, &self.class_embedding, &self.position_embedding)
    }
}

/// The stem turning pixels into tokens; one variant per [`VisionStem`].
enum Stem {
    Patch(PatchStem),
    Conv(ConvStem),
}

impl Stem {
    fn load(vb: Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        match cfg.stem {
            VisionStem::Patch => Ok(Stem::Patch(PatchStem::load(vb, cfg)?)),
            VisionStem::Conv => Ok(Stem::Conv(ConvStem::load(vb, cfg)?)),
        }
    }

    fn forward(&self, pixel_values: &Tensor, kernels: Kernels) -> Result<Tensor> {
        match self {
            Stem::Patch(stem) => stem.forward(pixel_values),
            Stem::Conv(stem) => stem.forward(pixel_values, kernels),
        }
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Attention {
            q_proj: Linear::load(vb.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(vb.pp("out_proj"), d, d, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(self.q_proj.forward(x)?)?;
        let k = heads(self.k_proj.forward(x)?)?;
        let v = heads(self.v_proj.forward(x)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = ops::attention(&q, &k, &v, &ops::Mask::All, scale, kernels)?;
        self.out_proj
            .forward(&out.transpose(1, 2)?.reshape((b, n, d))?)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn load(vb: Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let mlp = vb.pp("mlp");
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(vb.pp("layer_norm1"), d, cfg.layer_norm_eps)?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::load(vb.pp("layer_norm2"), d, cfg.layer_norm_eps)?,
            fc1: Linear::load(mlp.pp("fc1"), d, cfg.intermediate_size, true)?,
            fc2: Linear::load(mlp.pp("fc2"), cfg.intermediate_size, d, true)?,
            act: cfg.hidden_act,
        })
    }

    /// Whether the checkpoint has this layer at all; a partly present layer still fails
    /// to load, naming the missing tensor.
    fn present(vb: &Weights) -> bool {
        vb.pp("layer_norm1").contains_tensor("weight")
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let h = self.layer_norm1.forward(x, kernels)?;
        let x = (x + self.self_attn.forward(&h, kernels)?)?;
        let h = self.layer_norm2.forward(&x, kernels)?;
        let h = self.fc1.forward(&h)?;
        let h = ops::activation(&h, self.act, kernels)?;
        Ok((x + self.fc2.forward(&h)?)?)
    }
}

/// The vision tower: stem, `pre_layrnorm`, encoder layers, and (if present) `post_layernorm`.
pub(crate) struct ClipVisionTower {
    stem: Stem,
    pre_layrnorm: LayerNorm,
    /// Layers `0..feature_layer` always; later ones as far as the checkpoint has them.
    layers: Vec<EncoderLayer>,
    post_layernorm: Option<LayerNorm>,
    num_hidden_layers: usize,
}

impl ClipVisionTower {
    /// Loads from the `vision_model` prefix. Layers `0..feature_layer` are required.
    pub(crate) fn load(vb: Weights, cfg: &ClipVisionConfig, feature_layer: usize) -> Result<Self> {
        let d = cfg.hidden_size;
        let stem = Stem::load(vb.pp("embeddings"), cfg)?;
        let pre_layrnorm = LayerNorm::load(vb.pp("pre_layrnorm"), d, cfg.layer_norm_eps)?;
        let vb_layers = vb.pp("encoder").pp("layers");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut absent_from = None;
        for i in 0..cfg.num_hidden_layers {
            let vb_i = vb_layers.pp(i);
            let present = i < feature_layer || EncoderLayer::present(&vb_i);
            match (present, absent_from) {
                (true, None) => layers.push(EncoderLayer::load(vb_i, cfg)?),
                (true, Some(first)) => {
                    return Err(RuntimeError::WeightLayout(format!(
                        "vision encoder layer {i} is in the checkpoint but layer {first} is not \
                         (under `{}`)",
                        vb_layers.prefix()
                    )))
                }
                (false, _) => absent_from = absent_from.or(Some(i)),
            }
        }
        let vb_post = vb.pp("post_layernorm");
        let post_layernorm = if vb_post.contains_tensor("weight") {
            Some(LayerNorm::load(vb_post, d, cfg.layer_norm_eps)?)
        } else {
            None
        };
        Ok(ClipVisionTower {
            stem,
            pre_layrnorm,
            layers,
            post_layernorm,
            num_hidden_layers: cfg.num_hidden_layers,
        })
    }

    /// `hidden_states[0..=upto]`: the embeddings after `pre_layrnorm`, then each layer's output.
    pub(crate) fn hidden_states(
        &self,
        pixel_values: &Tensor,
        upto: usize,
        kernels: Kernels,
    ) -> Result<Vec<Tensor>> {
        if upto > self.layers.len() {
            return Err(RuntimeError::Unsupported(format!(
                "vision hidden state {upto} needs encoder layer {} which the checkpoint lacks",
                upto - 1
            )));
        }
        let x = self.stem.forward(pixel_values, kernels)?;
        let mut x = self.pre_layrnorm.forward(&x, kernels)?;
        let mut states = Vec::with_capacity(upto + 1);
        for layer in &self.layers[..upto] {
            let next = layer.forward(&x, kernels)?;
            states.push(x);
            x = next;
        }
        states.push(x);
        Ok(states)
    }

    /// `hidden_states[index]` alone, running only the layers it needs.
    pub(crate) fn hidden_state(
        &self,
        pixel_values: &Tensor,
        index: usize,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let mut states = self.hidden_states(pixel_values, index, kernels)?;
        states
            .pop()
            .ok_or_else(|| RuntimeError::InvalidInput("no vision hidden state".to_string()))
    }

    /// Number of hidden states the loaded layers can produce.
    pub(crate) fn available_hidden_states(&self) -> usize {
        self.layers.len() + 1
    }

    /// CLIP's pooled output: `post_layernorm` of the last layer's CLS token, `[B, D]`.
    pub(crate) fn pooled(&self, pixel_values: &Tensor, kernels: Kernels) -> Result<Tensor> {
        self.post_layernorm()?;
        let last = self.hidden_state(pixel_values, self.num_hidden_layers, kernels)?;
        self.pool(&last, kernels)
    }

    /// CLIP's pooled output from the last hidden state `[B, N + 1, D]`.
    pub(crate) fn pool(&self, last: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let cls = last.narrow(1, 0, 1)?.squeeze(1)?;
        self.post_layernorm()?.forward(&cls, kernels)
    }

    fn post_layernorm(&self) -> Result<&LayerNorm> {
        match &self.post_layernorm {
            Some(post) if self.layers.len() == self.num_hidden_layers => Ok(post),
            _ => Err(RuntimeError::Unsupported(
                "pooled image embedding needs every vision encoder layer and \
                 post_layernorm, which the checkpoint lacks"
                    .to_string(),
            )),
        }
    }
}
