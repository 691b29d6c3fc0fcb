//! A base model in other precisions: f16 and bf16 compute, and quantized folders
//! (`concepts quantize`), which keep their source's fingerprint, stay close to f32 on the
//! parity checkpoint, and let concept gradients flow through their quantized linear layers
//! (checked by finite differences).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var};
use concepts_runtime::generate::{GenerateConfig, Sampling};
use concepts_runtime::preprocess::preprocess_file;
use concepts_runtime::quant::{
    quantize_model, quantized_digest, QuantFormat, QuantizedLinears, QUANTIZED_FILE,
};
use concepts_runtime::session::{Engine, PromptInput};
use concepts_runtime::testing::{
    concept_answer_loss, max_abs_diff, randn, tiny_config, RandomWeights,
};
use concepts_runtime::{fingerprint, Kernels, LlavaModel};

fn parity_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/model")
}

fn quantized(format: QuantFormat, root: &Path) -> PathBuf {
    let out = root.join(format.as_str());
    quantize_model(&parity_model(), format, &out, &mut |_, _| {}).expect("quantize");
    out
}

/// Prompt logits and `n` greedy ids (no stop token) for the parity prompt with its logo.
fn run(dir: &Path, n: usize) -> (Tensor, Vec<u32>) {
    run_in(dir, DType::F32, n)
}

fn run_in(dir: &Path, dtype: DType, n: usize) -> (Tensor, Vec<u32>) {
    let engine = Engine::load(dir, &Device::Cpu, dtype).expect("load");
    let image = parity_model().join("../images/logo.png");
    let px = preprocess_file(&image, engine.preprocess_config()).expect("image");
    let prompt = PromptInput {
        text: "USER: <image>\nWhat is in the image? ASSISTANT:".to_string(),
        images: vec![px],
    };
    let cfg = GenerateConfig {
        max_tokens: n,
        sampling: Sampling::Greedy,
        stop_ids: vec![],
        prompt_logits: true,
    };
    let out = engine
        .generate(&prompt, &cfg, &mut |_| {})
        .expect("generate");
    let logits = out.prompt_logits.expect("logits");
    assert_eq!(logits.dtype(), DType::F32, "logits stay f32");
    (logits, out.generated_ids)
}

/// Quantized folders keep their source's fingerprint and stay close to it. The bounds are
/// relative to the largest logit and were set from measurements on this fixture (random
/// weights, which amplify any perturbation: f16 weights alone move its logits by 3.6e-3,
/// Q8_0's rounding of the weights alone by 0.11, all of it by 0.14 and Q4_K by 1.27, of
/// logits up to 4.3; its widths of 32 and 64 are padded to Q4_K's blocks of 256).
/// Greedy decoding follows f32 until a near-tie of the random model flips.
#[test]
fn quantized_folders_keep_the_fingerprint_and_stay_close_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let (reference, reference_ids) = run(&parity_model(), 16);
    let scale = max_abs_diff(&reference, &reference.zeros_like().unwrap());
    assert_eq!(quantized_digest(&parity_model()).unwrap(), None);
    let mut digests = Vec::new();
    for (format, tolerance, same_ids) in [(QuantFormat::Q8_0, 0.05, 9), (QuantFormat::Q4K, 0.4, 1)]
    {
        let dir = quantized(format, tmp.path());
        assert_eq!(
            fingerprint(&dir).unwrap(),
            fingerprint(&parity_model()).unwrap(),
            "{format}: the fingerprint changed"
        );
        // ...but not the weights: caches of trained concepts tell the folders apart.
        let digest = quantized_digest(&dir).unwrap().expect("a quantized folder");
        assert!(
            !digests.contains(&digest),
            "{format}: digest of another folder"
        );
        digests.push(digest);
        let q = QuantizedLinears::read(&dir.join(QUANTIZED_FILE), &Device::Cpu).unwrap();
        // 3 vision layers × 6, 2 projector, 2 decoder layers × 7, and the LM head in Q8_0.
        assert_eq!(
            q.len(),
            3 * 6 + 2 + 2 * 7 + 1,
            "{format}: quantized matrices"
        );
        let head = q.get("language_model.lm_head.weight").expect("the head");
        assert_eq!(head.dtype(), candle_core::quantized::GgmlDType::Q8_0);
        // q4k follows Q4_K_M: the last layer's value and down projections in Q6_K.
        let (most, six_bits) = match format {
            QuantFormat::Q8_0 => (GgmlDType::Q8_0, GgmlDType::Q8_0),
            QuantFormat::Q4K => (GgmlDType::Q4K, GgmlDType::Q6K),
        };
        for (name, dtype) in [
            ("layers.1.self_attn.v_proj", six_bits),
            ("layers.1.mlp.down_proj", six_bits),
            ("layers.0.self_attn.v_proj", most),
            ("layers.1.self_attn.q_proj", most),
        ] {
            let t = q.get(&format!("language_model.model.{name}.weight"));
            assert_eq!(t.expect(name).dtype(), dtype, "{format}: {name}");
        }
        // Keys and values are kept in f16 for an f32 computation over quantized weights.
        let engine = Engine::load(&dir, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(engine.model().kv_storage(), Some(DType::F16), "{format}");
        assert_eq!(engine.model().kv_cache().storage(), Some(DType::F16));
        assert!(engine.model().lm_head_is_quantized(), "{format}");
        let (logits, ids) = run(&dir, 16);
        let err = max_abs_diff(&logits, &reference) / scale;
        let agree = ids
            .iter()
            .zip(&reference_ids)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!("{format}: max |logits - f32| / max |logits| = {err:.3}; greedy ids agree for {agree} of 16");
        assert!(err > 0.0, "{format}: no difference at all; not quantized?");
        assert!(
            err < tolerance,
            "{format}: logits off by {err} of their scale"
        );
        assert!(
            agree >= same_ids,
            "{format}: greedy ids agree for {agree} tokens only"
        );
    }
}

#[test]
fn half_precision_compute_stays_close_to_f32() {
    let (reference, _) = run(&parity_model(), 0);
    for (dtype, tolerance) in [(DType::F16, 5e-2), (DType::BF16, 2e-1)] {
        let (logits, _) = run_in(&parity_model(), dtype, 0);
        let err = max_abs_diff(&logits, &reference);
        eprintln!("{dtype:?}: max |logits - f32| = {err:.2e}");
        assert!(err < tolerance, "{dtype:?}: logits off by {err}");
    }
}

#[test]
fn quantize_refuses_an_existing_output_and_a_quantized_source() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = quantized(QuantFormat::Q8_0, tmp.path());
    let err = quantize_model(&parity_model(), QuantFormat::Q4K, &q8, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists"), "{err}");
    let err = quantize_model(
        &q8,
        QuantFormat::Q4K,
        &tmp.path().join("again"),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("already quantized"), "{err}");
    assert!(!tmp.path().join("again").exists());
    assert_eq!(
        "q5".parse::<QuantFormat>().unwrap_err().to_string(),
        "unsupported: quantization format `q5`: expected q8_0 or q4k"
    );
}

/// A quantized folder's blocks are read as they were written (every matrix equal, block for
/// block, to what candle's own GGUF reader gives), and a cut-short file is refused naming a
/// tensor, not read as zeros.
#[test]
fn quantized_blocks_are_read_whole_or_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for format in QuantFormat::ALL {
        let dir = quantized(format, tmp.path());
        let path = dir.join(QUANTIZED_FILE);
        let ours = QuantizedLinears::read(&path, &Device::Cpu).unwrap();
        let mut file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        assert_eq!(ours.len(), content.tensor_infos.len());
        for name in content.tensor_infos.keys() {
            let theirs = content.tensor(&mut file, name, &Device::Cpu).unwrap();
            let mine = ours.get(name).unwrap();
            assert_eq!(
                (mine.dtype(), mine.shape()),
                (theirs.dtype(), theirs.shape())
            );
            assert_eq!(mine.data().unwrap(), theirs.data().unwrap(), "{name}");
        }
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = QuantizedLinears::read(&path, &Device::Cpu)
            .err()
            .expect("a truncated file is refused")
            .to_string();
        assert!(
            err.contains("truncated") && err.contains("tensor `"),
            "{err}"
        );
    }
}

/// The tiny model with its linear layers as `dtype` quantized matrices.
fn tiny_quantized(dtype: GgmlDType) -> LlavaModel {
    let weights = RandomWeights::new(11);
    let dense =
        LlavaModel::from_varbuilder(tiny_config(), weights.varbuilder(DType::F32, &Device::Cpu));
    drop(dense.expect("dense model"));
    let recorded = weights.recorded();
    let q = QuantizedLinears::quantize(recorded.iter().map(|(n, t)| (n.as_str(), t)), dtype)
        .expect("quantize");
    assert!(!q.is_empty());
    LlavaModel::from_quantized(
        tiny_config(),
        weights.varbuilder(DType::F32, &Device::Cpu),
        Arc::new(q),
    )
    .expect("quantized model")
}

fn loss(model: &LlavaModel, pixels: &Tensor, p: [&Tensor; 3]) -> Tensor {
    concept_answer_loss(model, pixels, p[0], p[1], p[2], Kernels::Differentiable).unwrap()
}

fn params(d: usize) -> [Tensor; 3] {
    let r = |shape: &[usize], seed| {
        (randn(shape, seed, DType::F32, &Device::Cpu).unwrap() * 0.5).unwrap()
    };
    [r(&[d], 21), r(&[2, d], 22), r(&[d], 23)]
}

fn gradients(model: &LlavaModel, pixels: &Tensor, p: &[Tensor; 3]) -> Vec<Vec<f32>> {
    let vars: Vec<Var> = p.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let l = loss(
        model,
        pixels,
        [
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        ],
    );
    let grads = l.backward().unwrap();
    vars.iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .expect("a gradient for every concept tensor")
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

fn pixels() -> Tensor {
    let v = &tiny_config().vision;
    randn(
        &[1, v.num_channels, v.image_size, v.image_size],
        12,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

/// The quantized layers' backward (`dy · W` through the dequantized matrix, padding
/// included) against central differences. F32 "quantized" matrices compute exactly, so
/// the difference quotients are not blurred by the on-the-fly quantization of activations.
#[test]
fn concept_gradients_through_quantized_layers_match_finite_differences() {
    let model = tiny_quantized(GgmlDType::F32);
    let px = pixels();
    let p = params(tiny_config().text.hidden_size);
    let g = gradients(&model, &px, &p);
    let h = 1e-2f32;
    for (which, grad) in g.iter().enumerate() {
        assert!(norm(grad) > 1e-4, "tensor {which}: zero gradient");
        let mut fd = Vec::new();
        for i in 0..grad.len() {
            let at = |delta: f32| {
                let mut q = p.clone();
                let mut v = q[which].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v[i] += delta;
                q[which] = Tensor::from_vec(v, p[which].shape(), &Device::Cpu).unwrap();
                loss(&model, &px, [&q[0], &q[1], &q[2]])
                    .to_scalar::<f32>()
                    .unwrap() as f64
            };
            fd.push(((at(h) - at(-h)) / (2.0 * h as f64)) as f32);
        }
        let diff: Vec<f32> = grad.iter().zip(&fd).map(|(a, b)| a - b).collect();
        let rel = norm(&diff) / norm(grad).max(norm(&fd));
        assert!(
            rel < 1e-2,
            "tensor {which}: relative gradient error {rel:e}"
        );
    }
}

/// Through Q8_0 layers the gradient is the f32 model's up to quantization error.
#[test]
fn q8_0_concept_gradients_are_close_to_dense_ones() {
    let weights = RandomWeights::new(11);
    let dense =
        LlavaModel::from_varbuilder(tiny_config(), weights.varbuilder(DType::F32, &Device::Cpu))
            .unwrap();
    let q8 = tiny_quantized(GgmlDType::Q8_0);
    let px = pixels();
    let p = params(tiny_config().text.hidden_size);
    let (gd, gq) = (gradients(&dense, &px, &p), gradients(&q8, &px, &p));
    for (which, (a, b)) in gd.iter().zip(&gq).enumerate() {
        let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let rel = norm(&diff) / norm(a);
        eprintln!("tensor {which}: q8_0 vs f32 gradient relative difference {rel:.2e}");
        assert!(rel > 0.0 && rel < 5e-2, "tensor {which}: {rel:e}");
    }
}
