//! Dropout masks, drawn the same way by every model family: each block of a mask
//! (a (row, head) of a BDH layer, a whole GPT residual branch) from its own ChaCha8
//! stream of the step's seed, so a mask does not depend on the thread count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Fills each block of `block` values of `keep` with 0 (dropped, probability `prob`)
/// or `1/(1−prob)` (kept), as `nn.Dropout` scales; block `i` is drawn from ChaCha8
/// stream `first_stream + i` of `seed`, the blocks in parallel.
pub fn draw(keep: &mut [f32], block: usize, seed: u64, first_stream: u64, prob: f32) {
    let scale = 1.0 / (1.0 - prob);
    bdh_kernels::parallel_chunks(keep, block, |i, k| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(first_stream + i as u64);
        k.iter_mut().for_each(|k| *k = if rng.random::<f32>() < prob { 0.0 } else { scale });
    });
}
