//! Checkpoint round trips are bit-exact and keep bdh.py's names and layout.

use bdh::io::checkpoint::{is_replaceable, load, relink, replace_dir, save};
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

/// Writes a one-file checkpoint through [`replace_dir`].
fn replace(dir: &std::path::Path, text: &str) -> bdh::Result<()> {
    replace_dir(dir, |d| bdh::io::write_atomic(&d.join("f"), text.as_bytes()))
}

#[test]
fn replacing_a_checkpoint_removes_only_the_versions_it_made() {
    let tmp = temp_dir("own-versions");
    let dir = tmp.path().join("x");
    // Folders that merely have a version's name, made before and between the writes.
    for name in ["x.1", "x.2"] {
        std::fs::create_dir(tmp.path().join(name)).unwrap();
        std::fs::write(tmp.path().join(name).join("keep"), name).unwrap();
    }
    replace(&dir, "one").unwrap();
    std::fs::create_dir(tmp.path().join("x.9")).unwrap();
    replace(&dir, "two").unwrap();
    replace(&dir, "three").unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "three");
    assert!(is_replaceable(&dir));
    for name in ["x.1", "x.2"] {
        assert_eq!(std::fs::read_to_string(tmp.path().join(name).join("keep")).unwrap(), name);
    }
    assert!(tmp.path().join("x.9").is_dir(), "an empty folder of a version's name stays");
    // Of its own versions only the current one is left.
    let mut left: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["x", "x.1", "x.11", "x.2", "x.9"]);
    // A copy of a version it made is not one it made.
    let copy = tmp.path().join("x.12");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(tmp.path().join("x.11")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    replace(&dir, "four").unwrap();
    assert!(copy.join("f").is_file(), "a copy of a marked version stays");
}

#[test]
fn a_folder_or_file_where_a_checkpoint_link_goes_is_refused_and_kept() {
    let tmp = temp_dir("own-plain");
    let dir = tmp.path().join("x");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("heritage.json"), "{}").unwrap();
    std::fs::write(dir.join("mine"), "keep").unwrap();
    assert!(!is_replaceable(&dir));
    let err = replace(&dir, "new").unwrap_err().to_string();
    assert!(err.contains("is not a checkpoint written here"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("mine")).unwrap(), "keep");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing written beside it");
    // A link is switched only over a link: a file of that name stays.
    let latest = tmp.path().join("latest");
    std::fs::write(&latest, "a file").unwrap();
    let err = relink(&latest, std::path::Path::new("x")).unwrap_err().to_string();
    assert!(err.contains("is not a link"), "{err}");
    assert_eq!(std::fs::read_to_string(&latest).unwrap(), "a file");
}

#[test]
fn an_atomic_write_leaves_a_file_of_its_old_temporary_name_alone() {
    let tmp = temp_dir("own-temp");
    let path = tmp.path().join("config.json");
    for foreign in ["config.json.tmp", ".config.json.tmp"] {
        std::fs::write(tmp.path().join(foreign), "someone's").unwrap();
    }
    bdh::io::write_atomic(&path, b"{}").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    for foreign in ["config.json.tmp", ".config.json.tmp"] {
        assert_eq!(std::fs::read_to_string(tmp.path().join(foreign)).unwrap(), "someone's");
    }
}
