//! Run-time choice of instruction set for the plain-loop kernels.
//!
//! The crate is compiled for the baseline x86-64 (SSE2), so a binary runs on any
//! x86-64 CPU. [`multiversion!`] compiles a kernel's body a second time with
//! AVX-512 (and AVX2, FMA) enabled, so the compiler vectorises its loops 16 lanes
//! wide, and picks that copy at run time where the CPU has the instructions.

/// Whether this CPU runs the AVX-512 copies.
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn name(args)` (with its visibility) whose body runs as an AVX-512 build where the CPU
/// has it and as the baseline build otherwise. Same source, same results up to
/// floating-point contraction of the vectorised loops.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) $body
                if $crate::simd::has_avx512() {
                    // SAFETY: the CPU has every feature `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            $body
        }
    };
}
pub(crate) use multiversion;

/// `a · b` in sixteen partial sums (one vector register of AVX-512 lanes) and a
/// scalar tail: a dot product the compiler vectorises, for kernels that take many
/// short ones.
#[inline(always)]
pub(crate) fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let split = a.len() - a.len() % 16;
    let mut acc = [0.0f32; 16];
    for (ac, bc) in a[..split].chunks_exact(16).zip(b[..split].chunks_exact(16)) {
        for k in 0..16 {
            acc[k] += ac[k] * bc[k];
        }
    }
    let tail: f32 = a[split..].iter().zip(&b[split..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Rows a scattered-row kernel asks the memory system for ahead of the one it works on.
pub(crate) const PREFETCH_ROWS: usize = 8;

/// Asks for the cache lines of `row` ahead of its use: the rows of ρ a step touches are
/// scattered (those of its active neurons), which the hardware prefetchers do not guess,
/// so at many streams, their states far beyond the caches, each row would otherwise
/// wait on memory in turn. Only a hint: no value changes.
#[inline(always)]
pub(crate) fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(row);
        let start = row.as_ptr() as *const i8;
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch reads nothing; the address is inside `row`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}
