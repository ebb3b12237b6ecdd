//! The GPU backend against the CPU engine and bdh.py's fixtures, on whatever
//! device is here (in CI: lavapipe, Mesa's software Vulkan device). Without one
//! each test says it skipped, unless `BDH_REQUIRE_GPU=1` (CI), where that fails.
#![cfg(feature = "gpu")]

use std::path::PathBuf;

use bdh::engine::{Device, Forward};
use bdh::io::checkpoint::load;
use bdh::io::read_safetensors;
use bdh::Model;
use bdh_gpu::{Gpu, Want};

fn golden_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(name)
}

/// `model` on the device here, or `None` (said on stderr and in `BDH_SKIPPED_LOG`)
/// when there is none and none is required.
fn open(model: &Model, test: &str) -> Option<Gpu> {
    bdh_gpu::quiet_vulkan();
    match Gpu::open(model, Want::Any) {
        Ok(gpu) => Some(gpu),
        Err(e) if std::env::var("BDH_REQUIRE_GPU").as_deref() != Ok("1") => {
            let line = format!("SKIPPED {test}: no GPU or Vulkan device ({e})");
            eprintln!("{line}");
            if let Some(path) = std::env::var_os("BDH_SKIPPED_LOG").filter(|p| !p.is_empty()) {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
                writeln!(f, "{line}").unwrap();
            }
            None
        }
        Err(e) => panic!("BDH_REQUIRE_GPU=1 and no device: {e}"),
    }
}

#[test]
fn fixture_logits_match_the_reference() {
    for fixture in ["ref-tiny", "ref-small-trained"] {
        let dir = golden_dir(fixture);
        let model = load(&dir.join("model.safetensors"), None).unwrap();
        let Some(mut gpu) = open(&model, "GPU fixture logits") else { return };
        let path = dir.join("expected.safetensors");
        let golden = read_safetensors(&path).unwrap();
        let report = bdh::verify::verify_on(&model, Some(&mut gpu as &mut dyn Device), &golden, &path).unwrap();
        for t in &report.tensors {
            println!("{fixture} on {}: {:<20} max abs {:.3e} max rel {:.3e}", gpu.device(), t.name, t.max_abs, t.max_rel);
        }
        if let Some(g) = &report.greedy {
            println!("{fixture}: greedy {}/{}", g.matching, g.total);
        }
        assert!(report.passed(), "{fixture}: {report:?}");
    }
}
