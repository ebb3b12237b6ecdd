//! The synapse state ρ stored in 16 bits, read and accumulated in f32.
//!
//! A decoding step reads and writes the rows of ρ its active neurons select, and
//! little else: at many streams the step is bound by memory traffic, and half-width
//! rows halve it. Values are widened to f32 as they are read, the arithmetic is the
//! f32 kernel's, and each written value is rounded back to nearest (ties to even).
//! bf16 keeps f32's range with an 8-bit significand; f16 has an 11-bit significand
//! and ends at 65504, where larger values saturate (they stay finite).
//!
//! The conversions are bit arithmetic the compiler vectorises; the twins convert
//! with the `half` crate.

use crate::simd::{multiversion, prefetch, PREFETCH_ROWS};

/// A 16-bit format for ρ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// bfloat16: f32's exponent, 8 significant bits.
    Bf16,
    /// IEEE binary16: 5 exponent bits, 11 significant bits, largest finite 65504.
    F16,
}

/// One format's conversions.
trait Format {
    fn widen(h: u16) -> f32;
    fn narrow(x: f32) -> u16;
}

struct Bf16;
struct F16;

impl Format for Bf16 {
    #[inline(always)]
    fn widen(h: u16) -> f32 {
        f32::from_bits((h as u32) << 16)
    }

    /// Round to nearest, ties to even; NaN stays a NaN (so a state that blew up is
    /// still seen to have).
    #[inline(always)]
    fn narrow(x: f32) -> u16 {
        let b = x.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        if x.is_nan() {
            0x7fc0
        } else {
            rounded
        }
    }
}

impl Format for F16 {
    /// The magnitude's bits moved into f32's places, scaled by 2^112 (which also
    /// makes f16's subnormals right), and the sign put back.
    #[inline(always)]
    fn widen(h: u16) -> f32 {
        let magnitude = f32::from_bits(((h & 0x7fff) as u32) << 13) * f32::from_bits(0x7780_0000);
        f32::from_bits(magnitude.to_bits() | (((h & 0x8000) as u32) << 16))
    }

    /// Round to nearest, ties to even; past 65504 the largest finite value; NaN stays
    /// a NaN.
    #[inline(always)]
    fn narrow(x: f32) -> u16 {
        let bits = x.to_bits();
        let sign = bits & 0x8000_0000;
        let f = bits ^ sign;
        let magnitude = if f >= 0x4780_0000 {
            // 2^16 and beyond
            0x7c00
        } else if f < 0x3880_0000 {
            // below 2^-14: f16's subnormals, rounded by an f32 addition
            let sum = f32::from_bits(f) + f32::from_bits(0x3f00_0000);
            sum.to_bits().wrapping_sub(0x3f00_0000)
        } else {
            // re-bias the exponent, round the 13 dropped bits
            f.wrapping_add(0xc800_0fff).wrapping_add((f >> 13) & 1) >> 13
        };
        let finite = (magnitude.min(0x7bff) | (sign >> 16)) as u16;
        if x.is_nan() {
            0x7e00
        } else {
            finite
        }
    }
}

#[inline(always)]
fn read_write<F: Format>(a: &mut [f32], rho: &mut [u16], q: &[f32], v: &[f32], rows: &[u32]) {
    let d = v.len();
    a.fill(0.0);
    for (j, &i) in rows.iter().enumerate() {
        if let Some(&ahead) = rows.get(j + PREFETCH_ROWS) {
            prefetch(&rho[ahead as usize * d..(ahead as usize + 1) * d]);
        }
        let i = i as usize;
        let c = q[i];
        for ((ak, r), &vk) in a.iter_mut().zip(&mut rho[i * d..(i + 1) * d]).zip(v) {
            let old = F::widen(*r);
            *ak += c * old;
            *r = F::narrow(old + c * vk);
        }
    }
}

multiversion! {
/// [`crate::rho_read_write`] on a half-width ρ (m×d): `a = Σ_{i ∈ rows} q[i] · ρ[i, :]`
/// with ρ as it was, then `ρ[i, :] += q[i] · v`, each row read and written once.
pub fn rho_read_write_half(a: &mut [f32], rho: &mut [u16], q: &[f32], v: &[f32], rows: &[u32], half: Half) {
    debug_assert_eq!(a.len(), v.len());
    match half {
        Half::Bf16 => read_write::<Bf16>(a, rho, q, v, rows),
        Half::F16 => read_write::<F16>(a, rho, q, v, rows),
    }
}
}

/// Whether every value of `rho` is finite (from the bits: the exponent not all ones).
pub fn all_finite(rho: &[u16], half: Half) -> bool {
    let exponent = match half {
        Half::Bf16 => 0x7f80,
        Half::F16 => 0x7c00,
    };
    rho.iter().all(|&h| h & exponent != exponent)
}

multiversion! {
/// `ρ ← γ ρ` over a half-width state, each value rounded back: the decay before a
/// step's read, in one pass over half the bytes of f32's.
pub fn scale_half(rho: &mut [u16], gamma: f32, half: Half) {
    match half {
        Half::Bf16 => rho.iter_mut().for_each(|h| *h = Bf16::narrow(Bf16::widen(*h) * gamma)),
        Half::F16 => rho.iter_mut().for_each(|h| *h = F16::narrow(F16::widen(*h) * gamma)),
    }
}
}

multiversion! {
/// `out = ρ` widened to f32, value for value.
pub fn widen(out: &mut [f32], rho: &[u16], half: Half) {
    debug_assert_eq!(out.len(), rho.len());
    match half {
        Half::Bf16 => out.iter_mut().zip(rho).for_each(|(w, &h)| *w = Bf16::widen(h)),
        Half::F16 => out.iter_mut().zip(rho).for_each(|(w, &h)| *w = F16::widen(h)),
    }
}
}

multiversion! {
/// `ρ = values` rounded to `half`, value for value.
pub fn narrow(rho: &mut [u16], values: &[f32], half: Half) {
    debug_assert_eq!(values.len(), rho.len());
    match half {
        Half::Bf16 => rho.iter_mut().zip(values).for_each(|(h, &w)| *h = Bf16::narrow(w)),
        Half::F16 => rho.iter_mut().zip(values).for_each(|(h, &w)| *h = F16::narrow(w)),
    }
}
}

/// Scalar twin of [`widen`] (the `half` crate's conversion).
#[cfg(test)]
pub(crate) fn widen_scalar(h: u16, half: Half) -> f32 {
    match half {
        Half::Bf16 => half::bf16::from_bits(h).to_f32(),
        Half::F16 => half::f16::from_bits(h).to_f32(),
    }
}

/// Scalar twin of [`narrow`] (the `half` crate's rounding, with f16 saturated at
/// its largest finite value).
#[cfg(test)]
pub(crate) fn narrow_scalar(x: f32, half: Half) -> u16 {
    match half {
        Half::Bf16 => half::bf16::from_f32(x).to_bits(),
        Half::F16 => {
            let h = half::f16::from_f32(x);
            if h.is_infinite() {
                (h.to_bits() & 0x8000) | 0x7bff
            } else {
                h.to_bits()
            }
        }
    }
}

/// Scalar twin of [`rho_read_write_half`]: every row read in f64, then the dense
/// outer-product write, each sum rounded by [`narrow_scalar`].
#[cfg(test)]
pub(crate) fn rho_read_write_half_scalar(a: &mut [f32], rho: &mut [u16], q: &[f32], v: &[f32], half: Half) {
    let d = v.len();
    for (k, ak) in a.iter_mut().enumerate() {
        let sum: f64 = q.iter().enumerate().map(|(i, &c)| c as f64 * widen_scalar(rho[i * d + k], half) as f64).sum();
        *ak = sum as f32;
    }
    for (i, &c) in q.iter().enumerate() {
        for k in 0..d {
            let r = &mut rho[i * d + k];
            *r = narrow_scalar(widen_scalar(*r, half) + c * v[k], half);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const BOTH: [Half; 2] = [Half::Bf16, Half::F16];

    #[test]
    fn widening_is_exact_for_every_finite_value() {
        for half in BOTH {
            let finite: Vec<u16> = (0..=u16::MAX).filter(|&h| widen_scalar(h, half).is_finite()).collect();
            let mut wide = vec![0.0; finite.len()];
            widen(&mut wide, &finite, half);
            for (&h, &w) in finite.iter().zip(&wide) {
                assert_eq!(w.to_bits(), widen_scalar(h, half).to_bits(), "{half:?} {h:#06x}");
            }
            println!("{half:?}: {} finite values widen exactly", finite.len());
        }
    }

    #[test]
    fn non_finite_values_are_seen_and_nan_survives_narrowing() {
        for half in BOTH {
            let bits: Vec<u16> = (0..=u16::MAX).collect();
            let flagged: Vec<bool> = bits.iter().map(|&h| !all_finite(&[h], half)).collect();
            let want: Vec<bool> = bits.iter().map(|&h| !widen_scalar(h, half).is_finite()).collect();
            assert_eq!(flagged, want, "{half:?}: all_finite against the half crate, every bit pattern");
            let mut out = [0u16; 3];
            narrow(&mut out, &[f32::NAN, -f32::NAN, f32::from_bits(0x7fff_ffff)], half);
            assert!(out.iter().all(|&h| !all_finite(&[h], half)), "{half:?}: {out:?}");
        }
        let (mut bf, mut f) = ([0u16; 1], [0u16; 1]);
        scale_half(&mut bf, 0.5, Half::Bf16);
        narrow(&mut f, &[3.0], Half::F16);
        scale_half(&mut f, 0.5, Half::F16);
        assert_eq!((bf[0], widen_scalar(f[0], Half::F16)), (0, 1.5));
    }

    #[test]
    fn narrowing_rounds_as_the_half_crate() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(16);
        // every scale from f16's subnormals to past f16's range, ties and halfway points,
        // and the edges of both formats
        let mut xs: Vec<f32> = (0..200_000)
            .map(|_| {
                let x = f32::from_bits(r.random_range(0x2000_0000u32..0x4800_0000));
                if r.random_bool(0.5) {
                    -x
                } else {
                    x
                }
            })
            .collect();
        xs.extend([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e9, -1e9, 6.1e-5, 5.96e-8, 2.98e-8, 1.0 + 1.0 / 512.0]);
        xs.extend((0..=u16::MAX).map(|h| f32::from_bits(((h as u32) << 16) | 0x8000))); // bf16 ties
        xs.retain(|x| x.is_finite());
        for half in BOTH {
            let mut narrowed = vec![0; xs.len()];
            narrow(&mut narrowed, &xs, half);
            let wrong = xs.iter().zip(&narrowed).filter(|&(&x, &h)| h != narrow_scalar(x, half)).count();
            println!("{half:?}: {} values rounded, {wrong} differ", xs.len());
            assert_eq!(wrong, 0, "{half:?}");
        }
    }

    #[test]
    fn half_read_write_equals_its_twin() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for half in BOTH {
            for &(m, d) in &[(2, 1), (2, 5), (34, 9), (256, 64)] {
                let q: Vec<f32> =
                    (0..m).map(|_| if r.random_bool(0.25) { r.random_range(0.0f32..1.0) } else { 0.0 }).collect();
                let rows: Vec<u32> = (0..m as u32).filter(|&i| q[i as usize] != 0.0).collect();
                let v: Vec<f32> = (0..d).map(|_| r.random_range(-1.0f32..1.0)).collect();
                let wide: Vec<f32> = (0..m * d).map(|_| r.random_range(-4.0f32..4.0)).collect();
                let mut rho = vec![0; m * d];
                narrow(&mut rho, &wide, half);
                let (mut fast, mut twin) = (rho.clone(), rho.clone());
                let (mut af, mut at) = (vec![3.0; d], vec![3.0; d]);
                rho_read_write_half(&mut af, &mut fast, &q, &v, &rows, half);
                rho_read_write_half_scalar(&mut at, &mut twin, &q, &v, half);
                let read = af.iter().zip(&at).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                // a write may round the other way where the fast kernel's fused multiply-add
                // lands on the other side of a tie: one unit in the last place at most
                let ulps = fast.iter().zip(&twin).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap_or(0);
                println!("{half:?} {m}×{d}: read max abs {read:.2e}, write max {ulps} ulp");
                assert!(read <= 1e-5 * 4.0 * d as f32, "{half:?} read {read}");
                assert!(ulps <= 1, "{half:?} write {ulps} ulp");
            }
        }
    }
}
