//! The `bdh` binary end to end: exit codes and what it prints.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bdh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bdh")).args(args).output().expect("bdh runs")
}

fn golden(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(path).display().to_string()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bdh-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn verify_passes_on_both_fixtures_and_both_formats() {
    for (model, golden_file) in [
        ("ref-tiny", "ref-tiny/expected.safetensors"),
        ("ref-tiny/model.pt", "ref-tiny/expected.safetensors"),
        ("ref-small-trained/model.safetensors", "ref-small-trained/expected.safetensors"),
        ("ref-small-trained/model.pt", "ref-small-trained/expected.safetensors"),
    ] {
        let o = bdh(&["verify", "--model", &golden(model), "--golden", &golden(golden_file)]);
        let out = text(&o);
        println!("{out}");
        assert_eq!(o.status.code(), Some(0), "{model}: {out}");
        assert!(out.contains("PASS"), "{out}");
        assert!(out.contains("logits"), "{out}");
    }
}

#[test]
fn verify_fails_with_status_1_when_a_tensor_differs() {
    let dir = temp("tampered");
    let src = std::fs::read(golden("ref-tiny/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let grad = owned.iter_mut().find(|t| t.0 == "grad.encoder").unwrap();
    let x = f32::from_le_bytes(grad.3[..4].try_into().unwrap());
    grad.3[..4].copy_from_slice(&(x + 1.0).to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = dir.join("expected.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let o = bdh(&["verify", "--model", &golden("ref-tiny"), "--golden", &path.display().to_string()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("grad.encoder") && out.contains("FAIL"), "{out}");
}

#[test]
fn verify_reports_bad_input_with_status_2() {
    let o = bdh(&["verify", "--model", "/no/such/dir/model.pt", "--golden", &golden("ref-tiny/expected.safetensors")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("/no/such/dir/model.pt"), "{}", text(&o));

    let o = bdh(&["verify", "--model", &golden("ref-tiny"), "--golden", &golden("ref-tiny/config.json")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("safetensors"), "{}", text(&o));

    // The weights of one fixture against the config of the other.
    let o = bdh(&[
        "verify",
        "--model",
        &golden("ref-tiny/model.safetensors"),
        "--config",
        &golden("ref-small-trained/config.json"),
        "--golden",
        &golden("ref-tiny/expected.safetensors"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("expected"), "{}", text(&o));
}

#[test]
fn bench_train_reports_throughput() {
    let o = bdh(&["bench", "train", "--preset", "tiny", "--iters", "1", "--warmup", "0", "--threads", "1"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("tokens/s") && out.contains("GFLOP/s"), "{out}");
}
