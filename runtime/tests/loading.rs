//! Loading llava-hf model directories: tiny random checkpoints written to a temp dir in both
//! tensor-name layouts, single-file and sharded, stored in f32 or f16; errors for missing
//! and misshapen tensors; model fingerprints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use concepts_runtime::testing::{
    max_abs_diff, randn, tiny_config, tiny_config_json, tiny_config_json_with_vocab,
    tiny_conv_config, tiny_conv_config_json, write_random_checkpoint, RandomWeights,
};
use concepts_runtime::{fingerprint, Kernels, LlavaModel, RuntimeError};
use sha2::{Digest, Sha256};

/// How tensor names are written.
#[derive(Clone, Copy)]
enum Layout {
    /// `vision_tower.vision_model.*`, `language_model.model.*`, `language_model.lm_head.*`.
    Hub,
    /// `model.vision_tower.*` (no `vision_model`), `model.language_model.*`, `lm_head.*`.
    Transformers5,
}

fn stored_name(layout: Layout, hub: &str) -> String {
    match layout {
        Layout::Hub => hub.to_string(),
        Layout::Transformers5 => {
            for (from, to) in [
                ("vision_tower.vision_model.", "model.vision_tower."),
                ("language_model.model.", "model.language_model."),
                ("language_model.lm_head.", "lm_head."),
                ("multi_modal_projector.", "model.multi_modal_projector."),
            ] {
                if let Some(rest) = hub.strip_prefix(from) {
                    return format!("{to}{rest}");
                }
            }
            panic!("unexpected weight name {hub}")
        }
    }
}

/// The random weights of the tiny model under hub-layout names, in f64.
fn hub_weights() -> BTreeMap<String, Tensor> {
    let weights = RandomWeights::new(5);
    LlavaModel::from_varbuilder(tiny_config(), weights.varbuilder(DType::F64, &Device::Cpu))
        .unwrap();
    weights.recorded()
}

/// A temp model directory that removes itself.
struct ModelDir(PathBuf);

impl ModelDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "concepts-runtime-loading-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ModelDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `config.json`, `tokenizer.json` and the weights (hub names, renamed to `layout`)
/// in `dtype`, as one file or as two shards with an index.
fn write_model(
    tag: &str,
    weights: &BTreeMap<String, Tensor>,
    layout: Layout,
    dtype: DType,
    sharded: bool,
) -> ModelDir {
    let dir = ModelDir::new(tag);
    std::fs::write(dir.path().join("config.json"), tiny_config_json()).unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        b"{\"tokenizer\": \"stand-in\"}",
    )
    .unwrap();
    let tensors: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(name, t)| (stored_name(layout, name), t.to_dtype(dtype).unwrap()))
        .collect();
    if !sharded {
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            None,
            &dir.path().join("model.safetensors"),
        )
        .unwrap();
        return dir;
    }
    let half = tensors.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        safetensors::serialize_to_file(
            part.iter().map(|(n, t)| (n.as_str(), t)),
            None,
            &dir.path().join(&file),
        )
        .unwrap();
        for (n, _) in part {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
    dir
}

/// The model built in memory from `weights`, as they read after a round trip via `stored`.
fn in_memory(weights: &BTreeMap<String, Tensor>, stored: DType) -> LlavaModel {
    let tensors = weights
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.to_dtype(stored).unwrap().to_dtype(DType::F32).unwrap(),
            )
        })
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    LlavaModel::from_varbuilder(tiny_config(), vb).unwrap()
}

/// Image features and logits of a short image prompt.
fn outputs(model: &LlavaModel) -> (Tensor, Tensor) {
    let pixels = randn(&[1, 3, 28, 28], 3, DType::F32, &Device::Cpu).unwrap();
    let features = model.image_features(&pixels, Kernels::Fast).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 6]], &Device::Cpu).unwrap();
    let embeds = Tensor::cat(&[&model.embed_tokens(&ids).unwrap(), &features], 1).unwrap();
    let hidden = model.forward_embeds(&embeds, None, Kernels::Fast).unwrap();
    (features, model.base_logits(&hidden).unwrap())
}

/// The same weights (the embedding table and LM head bit for bit) and the same outputs:
/// exactly where both compute on tensors; within float rounding where `a` reads its matrices
/// in place from the file (the GEMM then sees the stored `W`, not a transposed copy, and
/// sums in another order), far below what a wrong or transposed tensor would change.
fn assert_same_outputs(a: &LlavaModel, b: &LlavaModel) {
    for (what, x, y) in [
        ("embedding table", a.embed_weight(), b.embed_weight()),
        ("LM head", a.lm_head_weight(), b.lm_head_weight()),
    ] {
        let (x, y) = (x.to_tensor().unwrap(), y.to_tensor().unwrap());
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{what} differs");
    }
    let tolerance = if a.embed_weight().is_mapped() {
        1e-5
    } else {
        0.0
    };
    let (fa, la) = outputs(a);
    let (fb, lb) = outputs(b);
    let (df, dl) = (max_abs_diff(&fa, &fb), max_abs_diff(&la, &lb));
    assert!(df <= tolerance, "image features differ by {df}");
    assert!(dl <= tolerance, "logits differ by {dl}");
}

fn load(dir: &ModelDir) -> Result<LlavaModel, RuntimeError> {
    LlavaModel::load(dir.path(), &Device::Cpu, DType::F32)
}

#[test]
fn loads_hub_layout_single_file() {
    let w = hub_weights();
    let dir = write_model("hub", &w, Layout::Hub, DType::F32, false);
    let model = load(&dir).unwrap();
    // Below the size from which matrices are read in place: copied.
    assert!(!model.embed_weight().is_mapped());
    assert_same_outputs(&model, &in_memory(&w, DType::F32));
}

/// Matrices of 2^20 elements and more, stored in the compute dtype, are read in place from the
/// file instead of copied (here the embedding table and LM head: a vocabulary of 65 536 × 16),
/// and the model computes what the same weights in memory compute.
#[test]
fn large_matrices_are_read_in_place() {
    let dir = ModelDir::new("mapped");
    let json = tiny_config_json_with_vocab(1 << 16, 39);
    let cfg = write_random_checkpoint(dir.path(), &json, 11).unwrap();
    let model = load(&dir).unwrap();
    assert!(model.embed_weight().is_mapped() && model.lm_head_weight().is_mapped());
    let tensors =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let reference = LlavaModel::from_varbuilder(cfg, vb).unwrap();
    assert!(!reference.embed_weight().is_mapped());
    assert_same_outputs(&model, &reference);
    // Computing in f16 over f32 files needs converted copies.
    let half = LlavaModel::load(dir.path(), &Device::Cpu, DType::F16).unwrap();
    assert!(!half.embed_weight().is_mapped() && !half.lm_head_weight().is_mapped());
}

/// Matrices stored in half precision are read in place for an f32 computation too (their
/// rows converted as they are used), and the model computes what the converted copies
/// compute: how an f32 run of an f16 checkpoint, or a quantized folder's embedding table and
/// head, avoid holding the weights twice.
#[test]
fn half_precision_matrices_are_read_in_place_for_f32() {
    let dir = ModelDir::new("mapped-half-src");
    let json = tiny_config_json_with_vocab(1 << 16, 39);
    let cfg = write_random_checkpoint(dir.path(), &json, 12).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    for stored in [DType::F16, DType::BF16] {
        let half = ModelDir::new(&format!("mapped-{stored:?}"));
        std::fs::copy(
            dir.path().join("config.json"),
            half.path().join("config.json"),
        )
        .unwrap();
        let converted: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.to_dtype(stored).unwrap()))
            .collect();
        candle_core::safetensors::save(&converted, half.path().join("model.safetensors")).unwrap();
        let model = load(&half).unwrap();
        assert!(model.embed_weight().is_mapped() && model.lm_head_weight().is_mapped());
        assert_eq!(model.embed_weight().dtype(), DType::F32);
        let vb = VarBuilder::from_tensors(converted, DType::F32, &Device::Cpu);
        let reference = LlavaModel::from_varbuilder(cfg.clone(), vb).unwrap();
        assert!(!reference.embed_weight().is_mapped());
        assert_same_outputs(&model, &reference);
    }
}

#[test]
fn loads_transformers5_layout_sharded() {
    let w = hub_weights();
    let dir = write_model("t5", &w, Layout::Transformers5, DType::F32, true);
    assert_same_outputs(&load(&dir).unwrap(), &in_memory(&w, DType::F32));
}

#[test]
fn loads_the_conv_stem_in_both_layouts() {
    let cfg = tiny_conv_config();
    let weights = RandomWeights::new(9);
    LlavaModel::from_varbuilder(cfg.clone(), weights.varbuilder(DType::F64, &Device::Cpu)).unwrap();
    let w = weights.recorded();
    let stem: Vec<&String> = w.keys().filter(|n| n.contains(".stem.")).collect();
    assert_eq!(
        stem,
        [
            "vision_tower.vision_model.embeddings.stem.0.bias",
            "vision_tower.vision_model.embeddings.stem.0.weight",
            "vision_tower.vision_model.embeddings.stem.1.bias",
            "vision_tower.vision_model.embeddings.stem.1.weight",
        ]
    );
    assert!(!w.keys().any(|n| n.contains("patch_embedding")));
    let tensors = w
        .iter()
        .map(|(n, t)| (n.clone(), t.to_dtype(DType::F32).unwrap()))
        .collect();
    let want = LlavaModel::from_varbuilder(
        cfg.clone(),
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let pixels = randn(&[2, 3, 16, 16], 4, DType::F32, &Device::Cpu).unwrap();
    let expected = want.image_features(&pixels, Kernels::Fast).unwrap();
    assert_eq!(expected.dims(), [2, 16, 16]);
    for (tag, layout) in [
        ("conv-hub", Layout::Hub),
        ("conv-t5", Layout::Transformers5),
    ] {
        let dir = write_model(tag, &w, layout, DType::F32, false);
        std::fs::write(dir.path().join("config.json"), tiny_conv_config_json()).unwrap();
        let model = load(&dir).unwrap();
        assert_eq!(model.config().architecture_id(), "llava-1.5/conv");
        let got = model.image_features(&pixels, Kernels::Fast).unwrap();
        let diff = (&got - &expected)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{tag}");
        let slow = model
            .image_features(&pixels, Kernels::Differentiable)
            .unwrap();
        let diff = (&slow - &expected)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff < 1e-5,
            "{tag}: fast and differentiable differ by {diff}"
        );
    }
    // A patch-stem config cannot load conv-stem weights: the patch embedding is missing.
    let dir = write_model("conv-as-patch", &w, Layout::Hub, DType::F32, false);
    let err = load(&dir).err().expect("patch stem over conv weights");
    assert!(err.to_string().contains("patch_embedding"), "{err}");
}

#[test]
fn converts_stored_half_precision_to_the_requested_dtype() {
    let w = hub_weights();
    for (tag, stored) in [("f16", DType::F16), ("bf16", DType::BF16)] {
        let dir = write_model(tag, &w, Layout::Hub, stored, true);
        let model = load(&dir).unwrap();
        assert_eq!(model.dtype(), DType::F32);
        assert!(
            !model.embed_weight().is_mapped(),
            "{tag} converted, not mapped"
        );
        assert_same_outputs(&model, &in_memory(&w, stored));
    }
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let mut w = hub_weights();
    w.remove("language_model.model.layers.1.mlp.up_proj.weight")
        .unwrap();
    let dir = write_model("missing", &w, Layout::Transformers5, DType::F32, false);
    match load(&dir) {
        Err(RuntimeError::MissingTensor { name }) => {
            assert_eq!(name, "model.language_model.layers.1.mlp.up_proj.weight")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("loaded without a tensor"),
    }
}

#[test]
fn misshapen_tensor_is_an_error_naming_it_and_both_shapes() {
    let mut w = hub_weights();
    let name = "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight";
    w.insert(
        name.to_string(),
        Tensor::zeros((12, 11), DType::F64, &Device::Cpu).unwrap(),
    );
    let dir = write_model("misshapen", &w, Layout::Hub, DType::F32, false);
    let err = load(&dir).err().expect("loaded a misshapen tensor");
    let message = err.to_string();
    match err {
        RuntimeError::TensorShape {
            name: got,
            expected,
            actual,
        } => {
            assert_eq!(got, name);
            assert_eq!((expected, actual), (vec![12, 12], vec![12, 11]));
        }
        other => panic!("wrong error: {other}"),
    }
    assert!(
        message.contains(name) && message.contains("[12, 11]"),
        "{message}"
    );
}

#[test]
fn unused_vision_tail_is_optional_but_pooled_needs_it() {
    let full = hub_weights();
    let mut w = full.clone();
    w.retain(|n, _| {
        !n.starts_with("vision_tower.vision_model.encoder.layers.1.")
            && !n.starts_with("vision_tower.vision_model.post_layernorm.")
    });
    assert!(w.len() < full.len());
    let dir = write_model("no-tail", &w, Layout::Hub, DType::F32, false);
    let model = load(&dir).unwrap();
    let reference = in_memory(&full, DType::F32);
    assert_same_outputs(&model, &reference);
    let pixels = randn(&[1, 3, 28, 28], 3, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        model.pooled_image_embedding(&pixels),
        Err(RuntimeError::Unsupported(_))
    ));
    assert_eq!(
        reference.pooled_image_embedding(&pixels).unwrap().dims(),
        [1, 12]
    );
    assert_eq!(
        model
            .vision_hidden_states(&pixels, Kernels::Fast)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        reference
            .vision_hidden_states(&pixels, Kernels::Fast)
            .unwrap()
            .len(),
        3
    );

    // A tail layer that is only partly there is an error, not a silent skip.
    let mut w = full.clone();
    w.remove("vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight")
        .unwrap();
    let dir = write_model("partial-tail", &w, Layout::Hub, DType::F32, false);
    match load(&dir) {
        Err(RuntimeError::MissingTensor { name }) => {
            assert_eq!(
                name,
                "vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight"
            )
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("loaded a partial layer"),
    }
}

#[test]
fn missing_config_is_an_io_error_naming_the_file() {
    let dir = ModelDir::new("no-config");
    let err = load(&dir).err().expect("loaded an empty directory");
    match err {
        RuntimeError::Io { path, .. } => assert_eq!(path, dir.path().join("config.json")),
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn fingerprint_hashes_stored_tensors_and_tokenizer() {
    let w = hub_weights();
    let hub = write_model("fp-hub", &w, Layout::Hub, DType::F32, false);
    let t5 = write_model("fp-t5", &w, Layout::Transformers5, DType::F32, true);
    let half = write_model("fp-f16", &w, Layout::Hub, DType::F16, false);
    let a = fingerprint(hub.path()).unwrap();
    assert_eq!(a.architecture, "llava-1.5/patch");
    assert_eq!((a.hidden_size, a.vocab_size), (16, 40));
    assert_eq!(
        a.tokenizer_sha256,
        hex::encode(Sha256::digest(b"{\"tokenizer\": \"stand-in\"}"))
    );
    // The embedding hash is sha256("F32[40,16]\n" || little-endian f32 bytes).
    let embed = w["language_model.model.embed_tokens.weight"]
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut h = Sha256::new();
    h.update(b"F32[40,16]\n");
    for x in &embed {
        h.update(x.to_le_bytes());
    }
    assert_eq!(a.embed_sha256, hex::encode(h.finalize()));
    assert_ne!(a.embed_sha256, a.lm_head_sha256);

    // Same bytes under another layout: same fingerprint. Another dtype: another one.
    assert_eq!(fingerprint(t5.path()).unwrap(), a);
    let b = fingerprint(half.path()).unwrap();
    assert_ne!(b.embed_sha256, a.embed_sha256);
    assert_ne!(b.lm_head_sha256, a.lm_head_sha256);
    assert_eq!(b.tokenizer_sha256, a.tokenizer_sha256);
}
