//! Mean cross-entropy over (B·T) rows of logits, and its gradient.

/// Mean of `logsumexp(logits_r) − logits_r[target_r]` over the rows (B·T, V).
pub fn cross_entropy(logits: &[f32], targets: &[u32], v: usize) -> f32 {
    let total: f64 =
        logits.chunks_exact(v).zip(targets).map(|(row, &t)| (log_sum_exp(row) - row[t as usize]) as f64).sum();
    (total / targets.len() as f64) as f32
}

/// Writes `d loss / d logits = (softmax − onehot) / rows` into `grad` (B·T, V).
pub fn cross_entropy_backward(grad: &mut [f32], logits: &[f32], targets: &[u32], v: usize) {
    let scale = 1.0 / targets.len() as f32;
    for ((g, row), &t) in grad.chunks_exact_mut(v).zip(logits.chunks_exact(v)).zip(targets) {
        let lse = log_sum_exp(row);
        for (gi, &li) in g.iter_mut().zip(row) {
            *gi = (li - lse).exp() * scale;
        }
        g[t as usize] -= scale;
    }
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + row.iter().map(|&x| (x - m).exp()).sum::<f32>().ln()
}
