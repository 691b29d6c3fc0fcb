//! Gradients of the Yo'LLaVA training loss with respect to a concept's tensors.
//!
//! A tiny random LLaVA in f64 sees a prompt with an image, a concept identifier and its two
//! latent tokens, and an answer that contains the identifier. The masked answer-only
//! cross-entropy on the differentiable path must have the gradient that central finite
//! differences measure, that gradient must be non-zero for every tensor (candle silently
//! drops gradients through fused kernels), the fused path must compute the same loss, and
//! the frozen base weights must neither receive gradients nor change.

use candle_core::{DType, Device, Tensor, Var};
use concepts_runtime::testing::{
    concept_answer_loss, randn, random_model, tiny_config, tiny_config_gqa, RandomWeights,
};
use concepts_runtime::{Kernels, LlavaConfig, LlavaModel};

const K: usize = 2;

/// The concept tensors of one evaluation.
struct Params {
    identifier: Tensor,
    latents: Tensor,
    head: Tensor,
}

struct Fixture {
    model: LlavaModel,
    weights: RandomWeights,
    pixels: Tensor,
}

fn fixture(cfg: &LlavaConfig) -> Fixture {
    let (model, weights) = random_model(cfg, 11, DType::F64, &Device::Cpu).unwrap();
    let v = &cfg.vision;
    let pixels = randn(
        &[1, v.num_channels, v.image_size, v.image_size],
        12,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    Fixture {
        model,
        weights,
        pixels,
    }
}

fn initial_params(d: usize) -> Params {
    let r = |shape: &[usize], seed| {
        (randn(shape, seed, DType::F64, &Device::Cpu).unwrap() * 0.5).unwrap()
    };
    Params {
        identifier: r(&[d], 21),
        latents: r(&[K, d], 22),
        head: r(&[d], 23),
    }
}

/// The training loss of one example ([`concept_answer_loss`]).
fn loss(fx: &Fixture, p: &Params, kernels: Kernels) -> Tensor {
    concept_answer_loss(
        &fx.model,
        &fx.pixels,
        &p.identifier,
        &p.latents,
        &p.head,
        kernels,
    )
    .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// `t` with element `i` (flat index) moved by `h`.
fn nudged(t: &Tensor, i: usize, h: f64) -> Tensor {
    let mut v = values(t);
    v[i] += h;
    Tensor::from_vec(v, t.shape(), t.device()).unwrap()
}

/// Checks autograd against central differences for all three concept tensors.
fn check_gradients(cfg: &LlavaConfig) {
    let fx = fixture(cfg);
    let p = initial_params(cfg.text.hidden_size);
    let vars = [
        Var::from_tensor(&p.identifier).unwrap(),
        Var::from_tensor(&p.latents).unwrap(),
        Var::from_tensor(&p.head).unwrap(),
    ];
    let tracked = Params {
        identifier: vars[0].as_tensor().clone(),
        latents: vars[1].as_tensor().clone(),
        head: vars[2].as_tensor().clone(),
    };
    let l = loss(&fx, &tracked, Kernels::Differentiable);
    let grads = l.backward().unwrap();

    let h = 1e-5;
    for (which, var) in ["identifier", "latents", "head"].into_iter().zip(&vars) {
        let g = values(
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {which}")),
        );
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(norm > 1e-4, "{which}: gradient norm {norm} is (near) zero");

        let mut fd = Vec::with_capacity(g.len());
        for i in 0..g.len() {
            let at = |delta: f64| {
                let mut q = Params {
                    identifier: p.identifier.clone(),
                    latents: p.latents.clone(),
                    head: p.head.clone(),
                };
                let slot = match which {
                    "identifier" => &mut q.identifier,
                    "latents" => &mut q.latents,
                    _ => &mut q.head,
                };
                *slot = nudged(slot, i, delta);
                scalar(&loss(&fx, &q, Kernels::Differentiable))
            };
            fd.push((at(h) - at(-h)) / (2.0 * h));
        }
        let diff_norm = g
            .iter()
            .zip(&fd)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let fd_norm = fd.iter().map(|x| x * x).sum::<f64>().sqrt();
        let rel = diff_norm / norm.max(fd_norm);
        assert!(
            rel < 1e-7,
            "{which}: relative error of the gradient vector {rel:e}"
        );
        for (i, (a, b)) in g.iter().zip(&fd).enumerate() {
            let scale = a.abs().max(b.abs()).max(1e-8);
            let err = (a - b).abs();
            assert!(
                err / scale < 1e-6 || err < 1e-9,
                "{which}[{i}]: autograd {a:e} vs finite difference {b:e}"
            );
        }
    }
}

#[test]
fn concept_gradients_match_finite_differences() {
    check_gradients(&tiny_config());
}

#[test]
fn concept_gradients_match_finite_differences_with_gqa() {
    check_gradients(&tiny_config_gqa());
}

#[test]
fn fast_and_differentiable_losses_agree_in_f64() {
    for cfg in [tiny_config(), tiny_config_gqa()] {
        let fx = fixture(&cfg);
        let p = initial_params(cfg.text.hidden_size);
        let fast = scalar(&loss(&fx, &p, Kernels::Fast));
        let diff = scalar(&loss(&fx, &p, Kernels::Differentiable));
        assert!(
            (fast - diff).abs() < 1e-10,
            "fast {fast} vs differentiable {diff}"
        );
        assert!(fast.is_finite() && fast > 0.0);
    }
}

#[test]
fn frozen_base_weights_get_no_gradient_and_stay_unchanged() {
    let cfg = tiny_config();
    let fx = fixture(&cfg);
    let p = initial_params(cfg.text.hidden_size);
    let vars = [
        Var::from_tensor(&p.identifier).unwrap(),
        Var::from_tensor(&p.latents).unwrap(),
        Var::from_tensor(&p.head).unwrap(),
    ];
    let tracked = Params {
        identifier: vars[0].as_tensor().clone(),
        latents: vars[1].as_tensor().clone(),
        head: vars[2].as_tensor().clone(),
    };
    let base: Vec<(String, Tensor)> = fx.weights.recorded().into_iter().collect();
    assert!(base.len() > 40, "only {} base tensors recorded", base.len());
    let before: Vec<Vec<f64>> = base.iter().map(|(_, t)| values(t)).collect();

    let l0 = loss(&fx, &tracked, Kernels::Differentiable);
    let grads = l0.backward().unwrap();
    for (name, t) in &base {
        assert!(
            grads.get(t).is_none(),
            "base weight `{name}` received a gradient"
        );
    }
    // A model built from a recorded VarBuilder holds its matrices as tensors.
    for m in [fx.model.embed_weight(), fx.model.lm_head_weight()] {
        assert!(grads.get(m.as_tensor().unwrap()).is_none());
    }

    // One SGD step on the concept tensors lowers the loss and leaves the base untouched.
    for var in &vars {
        let g = grads.get(var.as_tensor()).unwrap();
        var.set(&(var.as_tensor() - (g * 0.05).unwrap()).unwrap())
            .unwrap();
    }
    let l1 = loss(&fx, &tracked, Kernels::Differentiable);
    assert!(
        scalar(&l1) < scalar(&l0),
        "{} -> {}",
        scalar(&l0),
        scalar(&l1)
    );
    for ((name, t), was) in base.iter().zip(&before) {
        assert_eq!(&values(t), was, "base weight `{name}` changed");
    }
}
