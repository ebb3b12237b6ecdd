#![allow(dead_code)] // (each test file uses its own part)
//! Shared by the device tests: how a check that cannot run here says so.
#[path = "../../../../tests/support/skip.rs"]
mod skip;
pub use skip::skipped;

use bdh_gpu::device::Device;
use bdh_gpu::probe;
use cubecl::prelude::Runtime;
use cubecl::wgpu::WgpuRuntime;
use rand::{Rng, SeedableRng};

/// The first Vulkan device, or `None` (said) where there is none and none is required.
pub fn device(test: &str) -> Option<Device<WgpuRuntime>> {
    probe::quiet_vulkan();
    let Some(adapter) = probe::adapters().into_iter().next() else {
        assert_ne!(std::env::var("BDH_REQUIRE_GPU").as_deref(), Ok("1"), "BDH_REQUIRE_GPU=1 and no Vulkan device");
        skipped(test, "no Vulkan device (Debian and Ubuntu: apt-get install mesa-vulkan-drivers gives lavapipe)");
        return None;
    };
    Some(Device::new(WgpuRuntime::client(&adapter.device), adapter.name, None))
}

pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Largest |a − b| over the largest |b| (or 1 when b is all zero).
pub fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A small random BDH with a decay, so that the damping runs too.
pub fn decaying() -> bdh::Model {
    let cfg = bdh::model::bdh::BdhConfig {
        n_layer: 2,
        n_embd: 32,
        n_head: 4,
        mlp_internal_dim_multiplier: 8,
        vocab_size: 256,
        dropout: 0.0,
        decay: bdh::model::bdh::Decay::Alibi,
        ..Default::default()
    };
    bdh::Model::new(&bdh::ModelConfig::Bdh(cfg), 7).unwrap()
}

/// A golden fixture's directory.
pub fn golden_dir(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(name)
}

/// `model` on the device here, or `None` (said on stderr and in `BDH_SKIPPED_LOG`)
/// when there is none and none is required.
pub fn open(model: &bdh::Model, test: &str) -> Option<bdh_gpu::Gpu> {
    bdh_gpu::quiet_vulkan();
    match bdh_gpu::Gpu::open(model, bdh_gpu::Want::Any) {
        Ok(gpu) => Some(gpu),
        Err(e) if std::env::var("BDH_REQUIRE_GPU").as_deref() != Ok("1") => {
            skipped(test, &format!("no GPU or Vulkan device ({e})"));
            None
        }
        Err(e) => panic!("BDH_REQUIRE_GPU=1 and no device: {e}"),
    }
}
