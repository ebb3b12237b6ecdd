//! Bad inputs give errors that name the problem; none panics.

use std::io::{Read, Write};
use std::path::Path;

use bdh::infer::Prepared;
use bdh::io::checkpoint::{load, model_from_tensors, save};
use bdh::io::read_safetensors;
use bdh::model::bdh::{BdhConfig, NO_EDITS};
use bdh::{forward, Activations, Error, Mode, Model, ModelConfig};
use tempfile::TempDir;

use crate::common::{bdh_model, golden_dir, temp_dir, tiny_config};

fn message(e: Error) -> String {
    let m = e.to_string();
    println!("{m}");
    m
}

fn write_config(dir: &Path, cfg: &BdhConfig) {
    std::fs::write(dir.join("config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
}

#[test]
fn missing_file_is_named() {
    let m = message(load(Path::new("/no/such/model.safetensors"), None).unwrap_err());
    assert!(m.contains("/no/such/model.safetensors"), "{m}");
}

#[test]
fn directory_without_weights_is_named() {
    let tmp = temp_dir("empty-dir");
    let dir = tmp.path();
    let m = message(load(dir, None).unwrap_err());
    assert!(m.contains("neither model.safetensors nor model.pt"), "{m}");
}

#[test]
fn missing_config_is_named() {
    let tmp = temp_dir("no-config");
    let dir = tmp.path();
    std::fs::copy(golden_dir("ref-tiny").join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let m = message(load(dir, None).unwrap_err());
    assert!(m.contains("config.json"), "{m}");
}

#[test]
fn truncated_and_corrupt_safetensors_are_rejected() {
    let tmp = temp_dir("corrupt");
    let dir = tmp.path();
    write_config(dir, &tiny_config(2, 32, 2, 8));
    let good = std::fs::read(golden_dir("ref-tiny").join("model.safetensors")).unwrap();
    for (what, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("header only", good[..8].to_vec()),
        ("garbage", b"this is not a tensor file at all".to_vec()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
        let m = message(load(dir, None).unwrap_err());
        assert!(m.contains("safetensors"), "{what}: {m}");
    }
}

#[test]
fn config_that_does_not_match_the_weights_names_the_tensor() {
    let tmp = temp_dir("mismatch");
    let dir = tmp.path();
    std::fs::copy(golden_dir("ref-tiny").join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    write_config(dir, &tiny_config(2, 64, 2, 8));
    let m = message(load(dir, None).unwrap_err());
    assert!(m.contains("embed.weight") && m.contains("[256, 64]") && m.contains("[256, 32]"), "{m}");
    write_config(dir, &tiny_config(2, 32, 4, 8));
    let m = message(load(dir, None).unwrap_err());
    assert!(m.contains("encoder"), "{m}");
}

#[test]
fn invalid_configs_are_rejected_with_the_reason() {
    for (cfg, want) in [
        (tiny_config(0, 32, 2, 8), "n_layer"),
        (tiny_config(2, 3, 1, 1), "even"),
        (tiny_config(2, 32, 3, 1), "divisible"),
        (BdhConfig { dropout: 1.0, ..tiny_config(1, 8, 1, 1) }, "dropout"),
        // Sizes from a file are bounded before anything is allocated.
        (tiny_config(2, 1_000_000, 2, 8), "would need"),
        (tiny_config(1 << 40, 32, 2, 8), "largest size"),
        (BdhConfig { vocab_size: usize::MAX, ..tiny_config(1, 8, 1, 2) }, "largest size"),
        (tiny_config(1, 1 << 24, 1, 1 << 24), "would need"),
        (tiny_config(1, 2, 4, 1), "N ≥ 2"),
    ] {
        let m = message(Model::new(&ModelConfig::Bdh(cfg), 0).unwrap_err());
        assert!(m.contains(want), "{m}");
    }
    let tmp = temp_dir("bad-json");
    let dir = tmp.path();
    std::fs::write(dir.join("config.json"), r#"{"n_layer": 2, "n_embed": 32}"#).unwrap();
    let m = message(ModelConfig::from_json_file(&dir.join("config.json")).unwrap_err());
    assert!(m.contains("n_embed"), "{m}");
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let tmp = temp_dir("missing-tensor");
    let dir = tmp.path();
    let model = bdh_model(tiny_config(1, 8, 1, 2), 0);
    save(&model, dir).unwrap();
    let mut tensors = read_safetensors(&dir.join("model.safetensors")).unwrap();
    tensors.remove("lm_head");
    let m = message(model_from_tensors(model.config(), tensors.clone(), dir).unwrap_err());
    assert!(m.contains("lm_head"), "{m}");
    let mut extra = read_safetensors(&dir.join("model.safetensors")).unwrap();
    extra.insert("head.bias".into(), extra["lm_head"].clone());
    let m = message(model_from_tensors(model.config(), extra, dir).unwrap_err());
    assert!(m.contains("head.bias"), "{m}");
}

/// The reference's `.pt` with its pickle replaced by `pickle`, in a temporary
/// directory that lives as long as the returned guard.
fn pt_with_pickle(name: &str, pickle: &[u8]) -> (TempDir, std::path::PathBuf) {
    let tmp = temp_dir(name);
    let dir = tmp.path();
    write_config(dir, &tiny_config(2, 32, 2, 8));
    let mut src = zip::ZipArchive::new(std::fs::File::open(golden_dir("ref-tiny").join("model.pt")).unwrap()).unwrap();
    let path = dir.join("model.pt");
    let mut out = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..src.len() {
        let mut entry = src.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.start_file(&name, opts).unwrap();
        out.write_all(if name.ends_with("data.pkl") { pickle } else { &bytes }).unwrap();
    }
    out.finish().unwrap();
    (tmp, path)
}

#[test]
fn pt_that_would_run_code_is_refused() {
    // pickle of `os.system("echo")`
    let (_tmp, path) =
        pt_with_pickle("pt-evil", b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.");
    let m = message(load(&path, None).unwrap_err());
    assert!(m.contains("os.system") && m.contains("refusing"), "{m}");
}

#[test]
fn pt_holding_something_other_than_tensors_is_refused() {
    // pickle of `{"decoder": "abc"}`
    let (_tmp, path) =
        pt_with_pickle("pt-str", b"\x80\x02}q\x00X\x07\x00\x00\x00decoderq\x01X\x03\x00\x00\x00abcq\x02s.");
    let m = message(load(&path, None).unwrap_err());
    assert!(m.contains("decoder") && m.contains("not a plain tensor"), "{m}");
    // pickle of the list `[]`
    let (_tmp, path) = pt_with_pickle("pt-list", b"\x80\x02]q\x00.");
    let m = message(load(&path, None).unwrap_err());
    assert!(m.contains("state_dict"), "{m}");
    // a pickle cut short
    let (_tmp, path) = pt_with_pickle("pt-short", b"\x80\x02}q\x00X\x07\x00\x00");
    let m = message(load(&path, None).unwrap_err());
    assert!(m.contains("ends early"), "{m}");
}

#[test]
fn pt_that_is_not_a_zip_is_refused() {
    let tmp = temp_dir("pt-notzip");
    let dir = tmp.path();
    write_config(dir, &tiny_config(2, 32, 2, 8));
    std::fs::write(dir.join("model.pt"), b"PK but not really").unwrap();
    let m = message(load(&dir.join("model.pt"), None).unwrap_err());
    assert!(m.contains("not a PyTorch zip checkpoint"), "{m}");
}

#[test]
fn out_of_range_tokens_and_wrong_lengths_are_errors() {
    let model = bdh_model(tiny_config(1, 8, 1, 2), 0);
    let mut acts = Activations::new(&model, 1, 3).unwrap();
    let m = message(forward(&model, &[1, 256, 3], &mut acts, Mode::Eval).unwrap_err());
    assert!(m.contains("256"), "{m}");
    let m = message(forward(&model, &[1, 2], &mut acts, Mode::Eval).unwrap_err());
    assert!(m.contains("B=1 × T=3"), "{m}");
    let m = message(Activations::new(&model, 0, 4).unwrap_err());
    assert!(m.contains("empty batch"), "{m}");
    let prepared = Prepared::new(model).unwrap();
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    assert!(message(prepared.step(&mut [&mut state], &mut scratch, &[300], &NO_EDITS).unwrap_err()).contains("300"));
    assert!(prepared.prefill(&mut state, &mut scratch, &[], &NO_EDITS).is_err());
    assert_eq!(state.pos(), 0, "a refused token is not read");
}

#[test]
fn weights_that_are_not_finite_are_refused() {
    let tmp = temp_dir("nan-weights");
    let dir = tmp.path();
    let mut model = bdh_model(tiny_config(1, 8, 1, 2), 0);
    model.params_mut().get_mut("encoder").unwrap()[3] = f32::NAN;
    save(&model, dir).unwrap();
    let m = message(load(dir, None).unwrap_err());
    assert!(m.contains("encoder") && m.contains("NaN"), "{m}");
}

#[test]
fn weights_are_told_apart_by_their_bytes_and_a_text_is_not_a_model() {
    let tmp = temp_dir("sniff");
    let dir = tmp.path();
    let src = golden_dir("ref-tiny");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    // Unknown extensions: the first bytes decide the reader.
    std::fs::copy(src.join("model.pt"), dir.join("weights.ckpt")).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("weights.bin2")).unwrap();
    let a = load(&dir.join("weights.ckpt"), None).unwrap();
    let b = load(&dir.join("weights.bin2"), None).unwrap();
    assert_eq!(a.params(), b.params());
    std::fs::write(dir.join("notes.txt"), "not weights at all").unwrap();
    let m = message(load(&dir.join("notes.txt"), None).unwrap_err());
    assert!(m.contains("not a model"), "{m}");
    let m = message(load(&dir.join("absent.safetensors"), None).unwrap_err());
    assert!(m.contains("no such file or directory") && !m.contains("entity"), "{m}");
}

#[test]
fn errors_say_what_kind_they_are() {
    // A size refused before allocation names what, the bytes it needs and, where
    // known, the bytes there are.
    let err = Model::new(&ModelConfig::Bdh(tiny_config(2, 1_000_000, 2, 8)), 0).unwrap_err();
    let Error::TooLarge { what, need, .. } = &err else { panic!("not TooLarge: {err}") };
    assert!(need.is_some_and(|n| n > 1 << 30), "{what}: {need:?}");
    // What the user gave.
    let model = bdh_model(tiny_config(1, 16, 2, 4), 0);
    let prepared = Prepared::new(model.clone()).unwrap();
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let err = prepared.step(&mut [&mut state], &mut scratch, &[300], &NO_EDITS).unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    // Parts of the program that do not fit together: a scratch of another model.
    let other = Prepared::new(bdh_model(tiny_config(1, 32, 2, 4), 0)).unwrap();
    let err = prepared.step(&mut [&mut state], &mut other.scratch(), &[3], &NO_EDITS).unwrap_err();
    assert!(matches!(err, Error::Mismatch(_)), "{err}");
    let mut acts = Activations::new(&model, 1, 4).unwrap();
    let mut grads = bdh::Gradients::new(&bdh_model(tiny_config(1, 32, 2, 4), 0), 1, 4).unwrap();
    forward(&model, &[1, 2, 3, 4], &mut acts, Mode::Eval).unwrap();
    let err = bdh::backward(&model, &acts, &[1, 2, 3, 4], &mut grads).unwrap_err();
    assert!(matches!(err, Error::Mismatch(_)), "{err}");
}
