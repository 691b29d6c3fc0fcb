//! `exp` as a polynomial the compiler vectorises, and the exp-based activations built on it.
//!
//! libm's `expf` is scalar: one call per element. In a small model's prefill the attention
//! softmax and the activations (CLIP's quick GELU, Llama's SiLU) call it millions of times.
//! Here `exp` is branch-free arithmetic on `f32`s, so a loop over a slice compiles to 16-lane
//! AVX-512 or 8-lane AVX2 code where the CPU has them (chosen at run time; any other CPU runs
//! the same loop compiled for its baseline). Its polynomial is written with `mul_add`, one
//! FMA instruction each in those twins; a baseline x86 build (no FMA) calls libm's `fmaf`
//! there instead, slower but exact, and only on CPUs older than AVX2.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};
use rayon::prelude::*;

use crate::config::Activation;

/// `fn $name(args) -> ret` running the portable function `$portable` compiled once more for
/// AVX-512 (a twin inside the dispatcher) where the CPU has AVX-512F, for AVX2 + FMA (as
/// `$avx2`) where it has those, chosen at run time, and as compiled for the baseline
/// elsewhere. The twins are what let the compiler vectorise the portable loop 16 or 8 lanes
/// wide, and what turn its `mul_add`s into FMA instructions (Rust does not contract a plain
/// `a * b + c`).
macro_rules! with_simd {
    ($vis:vis fn $name:ident / $avx2:ident ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $portable:ident;) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, and with it AVX2 and FMA.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has both features (checked just above).
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $ty),*) $(-> $ret)? {
            $portable($($arg),*)
        }
    };
}
pub(super) use with_simd;

/// `e^x` to within 2 ulp for `x` in [−87, 88] (Cephes' `expf`: `x = n ln 2 + r`, `|r| ≤ ln 2 / 2`,
/// a degree-7 polynomial for `e^r`, `2^n` put in the exponent bits), branch-free so that it
/// vectorises; below −87 (where `e^x` leaves the normal floats) it gives 0, above 88 `e^88`.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer in any vector width.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let shifted = xc.mul_add(LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r * r, r + 1.0);
    // n as an integer, from the bits the rounding left in the mantissa (`n as i32` would be a
    // saturating conversion, which does not vectorise).
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let bits = ((n_int + 127) as u32) << 23;
    let e = p * f32::from_bits(bits);
    if x < -87.0 {
        0.0
    } else {
        e
    }
}

/// `f(out, src)` over a contiguous f32 tensor in chunks of 16 k elements on rayon's threads:
/// the elementwise ops below.
fn map_f32(
    name: &str,
    storage: &CpuStorage,
    layout: &Layout,
    f: impl Fn(&mut [f32], &[f32]) + Sync,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{name} takes f32, got {:?}", storage.dtype());
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name} takes a contiguous tensor");
    };
    let src = &data[start..end];
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(16_384)
        .zip(src.par_chunks(16_384))
        .for_each(|(out, src)| f(out, src));
    Ok((CpuStorage::F32(out), layout.shape().clone()))
}

/// `x · sigmoid(a · x)`: SiLU with `a = 1`, quick GELU with `a = 1.702`, as
/// `x / (1 + e^(−a·x))`.
pub(super) struct SigmoidGated {
    pub a: f32,
}

impl SigmoidGated {
    /// The op for `act`, if it is one of these.
    pub(super) fn of(act: Activation) -> Option<Self> {
        match act {
            Activation::Silu => Some(SigmoidGated { a: 1.0 }),
            Activation::QuickGelu => Some(SigmoidGated { a: 1.702 }),
            Activation::GeluErf | Activation::GeluTanh => None,
        }
    }
}

impl CustomOp1 for SigmoidGated {
    fn name(&self) -> &'static str {
        "sigmoid-gated"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = self.a;
        map_f32("sigmoid-gated", storage, layout, |out, src| {
            sigmoid_gated(out, src, a)
        })
    }
}

impl CustomOp2 for SigmoidGated {
    fn name(&self) -> &'static str {
        "sigmoid-gated-product"
    }

    /// `act(x) · u` for the gated MLPs (Llama's `silu(gate) · up`) in one pass: candle's
    /// elementwise product of two tensors this size runs on its own spinning thread pool,
    /// which then competes with rayon's threads for the cores through the next products.
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(u)) = (xs, us) else {
            candle_core::bail!(
                "sigmoid-gated product takes f32, got {:?} and {:?}",
                xs.dtype(),
                us.dtype()
            );
        };
        let (Some((x0, x1)), Some((u0, u1))) = (xl.contiguous_offsets(), ul.contiguous_offsets())
        else {
            candle_core::bail!("sigmoid-gated product takes contiguous tensors");
        };
        if xl.shape() != ul.shape() {
            candle_core::bail!(
                "sigmoid-gated product of shapes {:?} and {:?}",
                xl.shape(),
                ul.shape()
            );
        }
        let (x, u) = (&x[x0..x1], &u[u0..u1]);
        let mut out = vec![0f32; x.len()];
        let a = self.a;
        out.par_chunks_mut(16_384)
            .zip(x.par_chunks(16_384).zip(u.par_chunks(16_384)))
            .for_each(|(out, (x, u))| sigmoid_gated_product(out, x, u, a));
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// The exact (erf) GELU, `x/2 · (1 + erf(x/√2))`, with `erf` by Abramowitz and Stegun's
/// 7.1.26 (absolute error below 6e-7 in f32; the formula PyTorch's vectorised CPU `erf` uses) on
/// the vectorised `exp`; candle's `gelu_erf` calls libm's scalar `erf` per element.
pub(super) struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        map_f32("gelu-erf", storage, layout, gelu_erf)
    }
}

with_simd! {
    fn gelu_erf / gelu_erf_avx2 (out: &mut [f32], src: &[f32]) = gelu_erf_portable;
}

#[inline(always)]
fn gelu_erf_portable(out: &mut [f32], src: &[f32]) {
    for (y, &x) in out.iter_mut().zip(src) {
        *y = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `erf(x)` to within 6e-7 absolute (Abramowitz and Stegun 7.1.26, 1.5e-7, evaluated in
/// f32), branch-free.
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let p = 1.061_405_4_f32;
    let p = p.mul_add(t, -1.453_152_1);
    let p = p.mul_add(t, 1.421_413_8);
    let p = p.mul_add(t, -0.284_496_74);
    let p = p.mul_add(t, 0.254_829_6);
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

with_simd! {
    fn sigmoid_gated / sigmoid_gated_avx2 (out: &mut [f32], src: &[f32], a: f32) = sigmoid_gated_portable;
}

with_simd! {
    fn sigmoid_gated_product / sigmoid_gated_product_avx2 (out: &mut [f32], x: &[f32], u: &[f32], a: f32) = sigmoid_gated_product_portable;
}

#[inline(always)]
fn sigmoid_gated_product_portable(out: &mut [f32], x: &[f32], u: &[f32], a: f32) {
    for ((y, &x), &u) in out.iter_mut().zip(x).zip(u) {
        *y = x / (1.0 + exp(-a * x)) * u;
    }
}

#[inline(always)]
fn sigmoid_gated_portable(out: &mut [f32], src: &[f32], a: f32) {
    for (y, &x) in out.iter_mut().zip(src) {
        *y = x / (1.0 + exp(-a * x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `erf` against candle's f64 `erf` over the range a GELU sees, and the GELU built on it.
    #[test]
    fn erf_within_6e7_of_f64() {
        let mut worst = 0f64;
        let mut x = -8.0f32;
        while x <= 8.0 {
            worst =
                worst.max((f64::from(erf(x)) - candle_core::cpu::erf::erf_f64(f64::from(x))).abs());
            x += 1e-3;
        }
        // The formula's 1.5e-7 plus f32 rounding (4.8e-7 measured, as PyTorch's vectorised erf).
        assert!(worst < 6e-7, "worst absolute error {worst:e}");
        assert!(erf(0.0).abs() < 1e-7);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        let xs: Vec<f32> = (-400..400).map(|i| i as f32 / 50.0).collect();
        let mut ys = vec![0f32; xs.len()];
        gelu_erf(&mut ys, &xs);
        for (&x, &y) in xs.iter().zip(&ys) {
            let exact = 0.5
                * f64::from(x)
                * (1.0 + candle_core::cpu::erf::erf_f64(f64::from(x) / 2f64.sqrt()));
            assert!(
                (f64::from(y) - exact).abs() < 1e-6,
                "gelu({x}) = {y}, not {exact}"
            );
        }
    }

    /// The polynomial against libm over the range a softmax feeds it.
    #[test]
    fn exp_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (ours, libm) = (exp(x), x.exp());
            let rel = ((ours - libm) / libm).abs();
            worst = worst.max(rel);
            x += 1e-3;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        // Where an activation takes it: e^x for x up to 88, relative error as small.
        let mut x = 0.0f32;
        while x <= 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            assert!(rel < 2.5e-7, "e^{x}: {rel:e}");
            x += 1e-2;
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }
}
