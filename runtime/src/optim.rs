//! What every trainer of the house shares — the concept trainer's few rows and the toy base
//! model's pretraining: the AdamW update (Loshchilov & Hutter 2019) and seeded normal noise.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// AdamW hyper-parameters; the learning rate is given per step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (applied where [`AdamW::update`] is told to).
    pub weight_decay: f64,
}

impl AdamW {
    /// Yo'LLaVA's optimiser: `torch.optim.AdamW` defaults (betas 0.9/0.999, eps 1e-8, weight
    /// decay 0.01).
    pub const REFERENCE: AdamW = AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };

    /// One step for one tensor, as `torch.optim.AdamW` computes it: `grad` (any float dtype,
    /// used as f32) updates the moments `m` and `v` at update count `t` (1 for the first
    /// step), and `param` moves by `lr` against the bias-corrected ratio after decaying by
    /// `lr · weight_decay` when `decay`. Returns the new parameter, `m` and `v`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use concepts_runtime::optim::AdamW;
    ///
    /// let p = Tensor::new(&[1.0f32, -1.0], &Device::Cpu)?;
    /// let g = Tensor::new(&[0.5f32, -0.5], &Device::Cpu)?;
    /// let zeros = p.zeros_like()?;
    /// let (p, _m, _v) = AdamW::REFERENCE.update(&p, &g, &zeros, &zeros, 1, 0.1, false)?;
    /// // The first step moves each entry by about `lr` against its gradient's sign.
    /// let p = p.to_vec1::<f32>()?;
    /// assert!((p[0] - 0.9).abs() < 1e-5 && (p[1] + 0.9).abs() < 1e-5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    // The moments and the step count are the optimiser's state, passed in and out by design.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        param: &Tensor,
        grad: &Tensor,
        m: &Tensor,
        v: &Tensor,
        t: u64,
        lr: f64,
        decay: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let g = grad.to_dtype(DType::F32)?;
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        let m = ((m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
        let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
        let m_hat = (&m / (1.0 - self.beta1.powi(t)))?;
        let v_hat = (&v / (1.0 - self.beta2.powi(t)))?;
        let step = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
        let keep = if decay {
            1.0 - lr * self.weight_decay
        } else {
            1.0
        };
        let param = ((param * keep)? - (step * lr)?)?;
        Ok((param, m, v))
    }
}

/// A tensor of standard normal values, deterministic in `seed`.
pub fn randn(shape: &[usize], seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| standard_normal(&mut rng)).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// One standard normal draw from `rng` (Box-Muller): the one recipe of every seeded
/// initialisation, so a seed means the same numbers in every crate.
pub fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; `1 - u` keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
