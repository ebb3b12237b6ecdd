//! Shared helpers of the integration tests.

use std::path::PathBuf;

use bdh::model::bdh::BdhConfig;
use bdh::{Model, ModelConfig};
use tempfile::TempDir;

/// The golden fixtures of the reference, copied into the repository.
pub fn golden_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(name)
}

/// A small config for fast tests.
pub fn tiny_config(n_layer: usize, n_embd: usize, n_head: usize, mult: usize) -> BdhConfig {
    BdhConfig {
        n_layer,
        n_embd,
        n_head,
        mlp_internal_dim_multiplier: mult,
        vocab_size: 256,
        dropout: 0.0,
        ..BdhConfig::default()
    }
}

/// A freshly initialised BDH model of `cfg`.
pub fn bdh_model(cfg: BdhConfig, seed: u64) -> Model {
    Model::new(&ModelConfig::Bdh(cfg), seed).unwrap()
}

/// Max |a − b| relative to max |b|.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().map(|x| x.abs()).fold(0.0f32, f32::max).max(f32::MIN_POSITIVE);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale
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

/// Trains `run` on its own data from fresh weights into `dir`, to the end.
pub fn train_to_end(run: &bdh::RunConfig, dir: &std::path::Path) {
    let corpus = run.data.corpus(run.training.block_size).unwrap();
    bdh::train::run::train(run, &corpus, dir, false, &std::sync::atomic::AtomicBool::new(false), |_| {}).unwrap();
}

/// A fresh temporary directory in the system temp dir, named `bdh-test-{name}-XXXXXX`.
/// It and everything in it are deleted when the returned guard drops, even when
/// the test fails: keep the guard alive as long as the directory is used
/// (`let tmp = temp_dir(..); let dir = tmp.path();`; a helper that makes files
/// in it returns the guard with them, and `let _ = temp_dir(..)` deletes at once).
pub fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("bdh-test-{name}-")).tempdir().expect("creating a temporary directory")
}

/// The tiny preset at D 32, T 48, B 2, one evaluation batch, with `extra` settings.
pub fn tiny_run(extra: &[&str]) -> Result<bdh::RunConfig, String> {
    let mut sets =
        vec!["model.n_embd=32", "training.block_size=48", "training.batch_size=2", "training.eval_batches=1"];
    sets.extend_from_slice(extra);
    bdh::RunConfig::resolve("tiny", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map_err(|e| e.to_string())
}

/// The losses of run `cfg` trained in `dir` until the stop flag is raised after step
/// `step`, then resumed to its end: an uninterrupted run's, if it resumes exactly.
pub fn stopped_and_resumed(
    cfg: &bdh::RunConfig,
    corpus: &bdh::data::Corpus,
    dir: &std::path::Path,
    step: usize,
) -> Vec<f32> {
    use bdh::train::run::{train, Event};
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let first = train(cfg, corpus, dir, false, &stop, |e| {
        if matches!(e, Event::Step { step: s, .. } if s == step) {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    let second = train(cfg, corpus, dir, true, &AtomicBool::new(false), |_| {}).unwrap();
    first.losses.iter().chain(&second.losses).copied().collect()
}
