//! Dropout masks drawn on the device exactly as the CPU draws them
//! (`bdh::model::dropout`): block j of a mask is ChaCha8 stream `first + j` of the
//! step's seed, its value i the i-th word of that stream (block i / 16 of the
//! cipher, word i mod 16), turned into [0, 1) as `rand` does (its top 24 bits
//! × 2⁻²⁴) and kept when not below the probability.

use cubecl::prelude::*;

#[cube]
#[allow(clippy::manual_rotate)] // (cubecl has no rotate for kernels)
fn rotl(x: u32, #[comptime] k: u32) -> u32 {
    (x << k) | (x >> (32u32 - k))
}

#[cube]
fn quarter(s: &mut Array<u32>, #[comptime] a: usize, #[comptime] b: usize, #[comptime] c: usize, #[comptime] d: usize) {
    s[a] += s[b];
    s[d] = rotl(s[d] ^ s[a], 16u32);
    s[c] += s[d];
    s[b] = rotl(s[b] ^ s[c], 12u32);
    s[a] += s[b];
    s[d] = rotl(s[d] ^ s[a], 8u32);
    s[c] += s[d];
    s[b] = rotl(s[b] ^ s[c], 7u32);
}

/// Fills `keep` (blocks of `block` values) with 0 (dropped) or `scale`: one unit
/// per 16 values, the ChaCha8 block of counter `i / 16` of stream `first + j`
/// under the 8 `key` words.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dropout_mask(
    keep: &mut Array<f32>,
    key: &Array<u32>,
    len: usize,
    block: usize,
    first: u32,
    prob: f32,
    scale: f32,
) {
    let chunks = block.div_ceil(16);
    let u = ABSOLUTE_POS;
    if u < (len / block) * chunks {
        let j = u / chunks;
        let counter = u % chunks;
        let mut init = Array::<u32>::new(16usize);
        init[0] = 0x6170_7865u32;
        init[1] = 0x3320_646eu32;
        init[2] = 0x7962_2d32u32;
        init[3] = 0x6b20_6574u32;
        #[unroll]
        for i in 0..8usize {
            init[4 + i] = key[i];
        }
        init[12] = counter as u32;
        init[13] = 0u32;
        init[14] = first + j as u32;
        init[15] = 0u32;
        let mut s = Array::<u32>::new(16usize);
        #[unroll]
        for i in 0..16usize {
            s[i] = init[i];
        }
        #[unroll]
        for _ in 0..4usize {
            quarter(&mut s, 0usize, 4usize, 8usize, 12usize);
            quarter(&mut s, 1usize, 5usize, 9usize, 13usize);
            quarter(&mut s, 2usize, 6usize, 10usize, 14usize);
            quarter(&mut s, 3usize, 7usize, 11usize, 15usize);
            quarter(&mut s, 0usize, 5usize, 10usize, 15usize);
            quarter(&mut s, 1usize, 6usize, 11usize, 12usize);
            quarter(&mut s, 2usize, 7usize, 8usize, 13usize);
            quarter(&mut s, 3usize, 4usize, 9usize, 14usize);
        }
        let base = j * block + counter * 16;
        #[unroll]
        for i in 0..16usize {
            if counter * 16 + i < block {
                let word = s[i] + init[i];
                let r = (word >> 8u32) as f32 * (1.0f32 / 16777216.0f32);
                let mut kept = scale;
                if r < prob {
                    kept = 0.0f32;
                }
                keep[base + i] = kept;
            }
        }
    }
}
