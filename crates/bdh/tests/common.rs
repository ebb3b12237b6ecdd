//! Shared helpers of the integration tests.

use std::path::PathBuf;

use bdh::BdhConfig;

/// The golden fixtures of the reference, copied into the repository.
pub fn golden_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(name)
}

/// A small config for fast tests.
pub fn tiny_config(n_layer: usize, n_embd: usize, n_head: usize, mult: usize) -> BdhConfig {
    BdhConfig { n_layer, n_embd, n_head, mlp_internal_dim_multiplier: mult, vocab_size: 256, dropout: 0.0 }
}

/// Deterministic pseudo-random tokens in 0..256.
pub fn tokens(len: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 256) as u32
        })
        .collect()
}

/// A fresh temporary directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bdh-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
