//! `bdh bench` on the CPU: a training step's throughput, its per-kernel profile, and
//! streams decoded together.

mod common;

use common::{bdh, text};

#[test]
fn bench_train_reports_throughput() {
    let o = bdh(&["bench", "train", "--preset", "tiny", "--iters", "1", "--warmup", "0", "--threads", "1"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("tokens/s") && out.contains("GFLOP/s"), "{out}");
}

#[test]
fn bench_profile_lists_each_kernel_of_a_step() {
    for (preset, kernels) in [
        ("tiny", &["linear attention backward", "batched matmul", "layer norm", "outside the kernels"][..]),
        ("gpt-tiny", &["softmax attention", "gelu backward", "matmul Bᵀ", "outside the kernels"][..]),
    ] {
        let o = bdh(&["bench", "train", "--preset", preset, "--iters", "2", "--warmup", "0", "--profile"]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}");
        let table = out.split("kernels, per iteration").nth(1).unwrap_or_else(|| panic!("no table: {out}"));
        for k in kernels {
            assert!(table.lines().any(|l| l.trim_start().starts_with(k)), "{k} not in {table}");
        }
        // nothing counted twice: the kernels take at most the step, the rest a share of it
        let outside = table.lines().find(|l| l.trim_start().starts_with("outside the kernels")).unwrap();
        let share: f64 = outside.split_whitespace().last().unwrap().trim_end_matches('%').parse().unwrap();
        assert!((0.0..60.0).contains(&share), "outside the kernels: {share}% of the step: {table}");
    }
    let o = bdh(&["bench", "train", "--preset", "tiny", "--iters", "1", "--warmup", "0"]);
    assert!(!text(&o).contains("kernels, per iteration"), "a table without --profile");
    let o = bdh(&["bench", "generate", "--preset", "tiny", "--tokens", "4", "--profile"]);
    assert!(!o.status.success() && text(&o).contains("--profile is for `bench train`"), "{}", text(&o));
}

#[test]
fn bench_generate_steps_many_streams_together() {
    let o = bdh(&["bench", "generate", "--preset", "tiny", "--tokens", "8", "--streams", "4", "--threads", "1"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("8 tokens × 4 streams after 16") && out.contains("tokens/s in all"), "{out}");
    let o = bdh(&["bench", "generate", "--preset", "gpt-tiny", "--tokens", "8", "--streams", "4"]);
    assert!(!o.status.success() && text(&o).contains("steps BDH streams together"), "{}", text(&o));
}
