//! The machine's fp32 fused multiply-add peak, measured by a loop that does
//! nothing else, for "% of peak" figures.

/// Independent accumulator chains: enough to cover FMA latency on two ports.
const CHAINS: usize = 12;

/// Runs `iters` rounds of [`CHAINS`] independent fused multiply-adds on the widest
/// vector unit this CPU has, on the calling thread; returns the FLOPs done
/// (2 per multiply-add per lane).
pub fn fma_loop(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { fma_avx512(iters) };
        }
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX and FMA, checked just above.
            return unsafe { fma_avx2(iters) };
        }
    }
    fma_scalar(iters)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    std::hint::black_box(acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum::<f32>());
    (iters as usize * CHAINS * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
unsafe fn fma_avx2(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut lanes = [0.0f32; 8];
    for x in acc {
        _mm256_storeu_ps(lanes.as_mut_ptr(), x);
        std::hint::black_box(lanes);
    }
    (iters as usize * CHAINS * 8 * 2) as f64
}

fn fma_scalar(iters: u64) -> f64 {
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = x.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (iters as usize * CHAINS * 2) as f64
}
