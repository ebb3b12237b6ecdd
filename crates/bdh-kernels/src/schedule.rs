//! How work is spread over the rayon pool, where the model's code decides the
//! unit of work: heads of a recurrent step, blocks of dropout masks, groups of
//! batch rows.

use rayon::prelude::*;

/// Runs `task` on every item at once, spread over the rayon pool: independent
/// pieces of work (the batch rows of a layer's backward) whose kernels then run
/// nested, each piece's data in cache from one kernel to the next.
pub fn parallel_each<T: Send>(items: &mut [T], task: impl Fn(&mut T) + Sync) {
    if items.len() <= 1 {
        // Nothing to spread: run it here, without a trip through the pool.
        return items.iter_mut().for_each(task);
    }
    items.par_iter_mut().for_each(&task);
}

/// Runs `fill(i, chunk_i)` on every `chunk`-long piece of `data` at once, spread over
/// the rayon pool (per-(row, head) dropout masks, each from its own random stream).
pub fn parallel_chunks(data: &mut [f32], chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) {
    data.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
}

/// Batch rows to run through a layer's kernels together: enough (row, head) items to
/// occupy every thread, few enough that their activations stay in cache from one
/// kernel to the next (rows are independent within a layer).
pub fn rows_per_group(heads: usize) -> usize {
    rayon::current_num_threads().div_ceil(heads.max(1)).max(1)
}
