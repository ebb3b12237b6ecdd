//! Checkpoint round trips are bit-exact and keep bdh.py's names and layout.

use bdh::checkpoint::{load, read_safetensors, save};
use bdh::params::Params;
use bdh::Model;

use crate::common::{golden_dir, temp_dir, tiny_config};

#[test]
fn save_then_load_is_bit_exact() {
    let model = Model::new(tiny_config(3, 24, 3, 6), 42).unwrap();
    let dir = temp_dir("roundtrip");
    save(&model, &dir).unwrap();
    let back = load(&dir, None).unwrap();
    assert_eq!(back, model);
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only model.safetensors and config.json: {leftovers:?}");
}

#[test]
fn imported_pt_saves_as_the_reference_safetensors() {
    let src = golden_dir("ref-tiny");
    let model = load(&src.join("model.pt"), None).unwrap();
    let dir = temp_dir("pt-export");
    save(&model, &dir).unwrap();
    let ours = read_safetensors(&dir.join("model.safetensors")).unwrap();
    let reference = read_safetensors(&src.join("model.safetensors")).unwrap();
    assert_eq!(ours, reference, "same names, shapes and bits as the reference state_dict");
    for (name, t) in &ours {
        if name != "attn.freqs" {
            assert_eq!(t.shape, Params::shape(&model.config, name));
        }
    }
}
