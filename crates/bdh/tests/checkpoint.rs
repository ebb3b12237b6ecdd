//! Checkpoint round trips are bit-exact and keep bdh.py's names and layout.

use bdh::io::checkpoint::{load, save};
use bdh::io::read_safetensors;

use crate::common::{bdh_model, golden_dir, temp_dir, tiny_config};

#[test]
fn save_then_load_is_bit_exact() {
    let model = bdh_model(tiny_config(3, 24, 3, 6), 42);
    let tmp = temp_dir("roundtrip");
    let dir = tmp.path();
    save(&model, dir).unwrap();
    let back = load(dir, None).unwrap();
    assert_eq!(back, model);
    let leftovers: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only model.safetensors and config.json: {leftovers:?}");
}

#[test]
fn imported_pt_saves_as_the_reference_safetensors() {
    let src = golden_dir("ref-tiny");
    let model = load(&src.join("model.pt"), None).unwrap();
    let tmp = temp_dir("pt-export");
    let dir = tmp.path();
    save(&model, dir).unwrap();
    let ours = read_safetensors(&dir.join("model.safetensors")).unwrap();
    let reference = read_safetensors(&src.join("model.safetensors")).unwrap();
    assert_eq!(ours, reference, "same names, shapes and bits as the reference state_dict");
    for (name, t) in &ours {
        if name != "attn.freqs" {
            assert_eq!(t.shape, model.params().slot(name).unwrap().shape);
        }
    }
}
