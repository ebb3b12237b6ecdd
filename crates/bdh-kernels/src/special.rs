//! `exp` and `erf` for f32 in straight-line arithmetic, so that loops over them
//! vectorise (libm's are scalar calls). Both are within a few ulp of the exact
//! values (checked against f64 in the twins).

/// e^x: x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by a degree-6 polynomial, times 2^n
/// built in the exponent bits. 0 below −87.3 (e^x is then below f32's normal
/// range); e^88.3 ≈ 2·10³⁸ above 88.3.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    let small = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    // r = x − n·ln 2, with ln 2 split in two for precision (Cody–Waite).
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // 2^n from n's bits: n + 1.5·2²³ holds the integer n in its low mantissa bits
    // (|n| ≤ 128), read without a float-to-int conversion, which does not vectorise
    // (Rust's saturating `as` becomes a scalar conversion per lane).
    let n_bits = (n + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits());
    let y = p * f32::from_bits(n_bits.wrapping_add(127) << 23);
    if small {
        0.0
    } else {
        y
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5·10⁻⁷), odd in x.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_and_erf_are_close_to_f64() {
        let (mut worst_exp, mut worst_erf) = (0.0f64, 0.0f64);
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.4e-4; // −88 … 88
            let want = (x as f64).exp();
            if want > 1e-37 && want < 1e38 {
                worst_exp = worst_exp.max(((super::exp(x) as f64) - want).abs() / want);
            }
            let x = i as f32 * 3e-5; // −6 … 6
            worst_erf = worst_erf.max((super::erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        println!("exp: max rel error {worst_exp:.2e}; erf: max abs error {worst_erf:.2e}");
        assert!(worst_exp < 5e-7, "exp: {worst_exp}");
        assert!(worst_erf < 1e-6, "erf: {worst_erf}");
        assert_eq!((super::exp(-200.0), super::exp(f32::NEG_INFINITY)), (0.0, 0.0));
        assert!(super::exp(100.0) > 1e38 && super::exp(100.0).is_finite());
        assert!(super::exp(f32::INFINITY) > 1e38 && super::exp(f32::INFINITY).is_finite());
        assert!(super::exp(f32::NAN).is_nan());
        // every power of two the clamp lets through, exactly
        for n in -125..=127 {
            let x = n as f32 * std::f32::consts::LN_2;
            assert_eq!(super::exp(x), (x as f64).exp() as f32, "2^{n}");
        }
    }
}
