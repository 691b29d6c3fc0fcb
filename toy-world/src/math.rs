//! Platform-independent numeric helpers.
//!
//! Everything that feeds pixels goes through `+ - * /` and `sqrt` only, which IEEE 754
//! rounds identically on every machine. `f32::sin` and friends call the platform's libm,
//! whose last bit may differ between systems, so rotations use [`sin_cos`] instead.

/// Sine and cosine of `radians`, computed with a fixed Taylor series in `f64`.
pub(crate) fn sin_cos(radians: f64) -> (f64, f64) {
    let tau = 2.0 * std::f64::consts::PI;
    // `round` is exact, so the reduction is deterministic.
    let x = radians - tau * (radians / tau).round();
    let x2 = x * x;
    let (mut sin, mut cos) = (0.0, 0.0);
    let (mut s_term, mut c_term) = (x, 1.0);
    for k in 0..16 {
        sin += s_term;
        cos += c_term;
        let k = f64::from(k);
        s_term *= -x2 / ((2.0 * k + 2.0) * (2.0 * k + 3.0));
        c_term *= -x2 / ((2.0 * k + 1.0) * (2.0 * k + 2.0));
    }
    (sin, cos)
}

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash of one word.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The 64-bit FNV-1a offset basis: the hash of no bytes.
pub const FNV1A64_START: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a of `bytes`, continuing from `h` (start at [`FNV1A64_START`]): the fixed,
/// version-independent hash that turns names into seeds here and in the toy base model's
/// pretraining.
pub fn fnv1a64(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// 64-bit FNV-1a of a byte string, finalised with [`splitmix64`].
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    splitmix64(fnv1a64(FNV1A64_START, bytes))
}

/// Hash of a lattice point, used by value noise.
pub(crate) fn hash_point(seed: u64, x: i32, y: i32) -> u64 {
    // `as u32` reinterprets the sign bit; it never loses information here.
    let key = (u64::from(x as u32) << 32) | u64::from(y as u32);
    splitmix64(seed ^ splitmix64(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_cos_matches_std_closely() {
        for deg in -720..=720 {
            let r = f64::from(deg).to_radians();
            let (s, c) = sin_cos(r);
            assert!((s - r.sin()).abs() < 1e-12, "sin({deg})");
            assert!((c - r.cos()).abs() < 1e-12, "cos({deg})");
        }
    }

    #[test]
    fn hashes_are_fixed() {
        // Golden values: a change here changes every dataset and the held-out split.
        assert_eq!(hash_bytes(b""), splitmix64(0xcbf2_9ce4_8422_2325));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        assert_ne!(hash_point(1, 0, 1), hash_point(1, 1, 0));
    }
}
