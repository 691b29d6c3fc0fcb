//! `exp` as a polynomial the compiler vectorises, and the exp-based activations built on it.
//!
//! libm's `expf` is scalar: one call per element. In a small model's prefill the attention
//! softmax and the activations (CLIP's quick GELU, Llama's SiLU) call it millions of times.
//! Here `exp` is branch-free arithmetic on `f32`s, so a loop over a slice compiles to 8-lane
//! AVX2 code where the CPU has AVX2 (chosen at run time; any other CPU runs the same loop
//! compiled for its baseline).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use crate::config::Activation;

/// `fn $name(args) -> ret` running the portable function `$portable` compiled once more for
/// AVX2 + FMA (as `$avx2`, a `#[target_feature]` twin that inlines it) where the CPU has them,
/// chosen at run time, and as compiled for the baseline elsewhere. The twin is what lets the
/// compiler vectorise the portable loop 8 lanes wide (Rust does not contract `a * b + c`
/// into FMA instructions, so the AVX2 code multiplies and adds separately).
macro_rules! with_avx2 {
    ($vis:vis fn $name:ident / $avx2:ident ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $portable:ident;) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
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
pub(super) use with_avx2;

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
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
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
        let dtype = storage.dtype();
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("sigmoid-gated takes f32, got {dtype:?}");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("sigmoid-gated takes a contiguous tensor");
        };
        let src = &data[start..end];
        let mut out = vec![0f32; src.len()];
        let a = self.a;
        out.par_chunks_mut(16_384)
            .zip(src.par_chunks(16_384))
            .for_each(|(out, src)| sigmoid_gated(out, src, a));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

with_avx2! {
    fn sigmoid_gated / sigmoid_gated_avx2 (out: &mut [f32], src: &[f32], a: f32) = sigmoid_gated_portable;
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
