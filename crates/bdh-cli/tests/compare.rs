//! `bdh compare`: each family's learning rate swept, the chosen rate trained with
//! several seeds on the same batches, read at equal compute; continued, refused,
//! rendered.

mod common;

use std::path::Path;

use common::figures::assert_charts_readable;
use common::{bdh, chromium, render, temp, text};

fn compare(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["compare", "--sizes", "xs", "--tokens", "8192", "--threads", "1"];
    args.extend_from_slice(extra);
    args.extend(["--out", out.to_str().unwrap()]);
    bdh(&args)
}

const SWEEP: [&str; 6] = ["--bdh-rates", "2e-3,8e-3", "--gpt-rates", "4e-3,1e-2", "--seeds", "1337,1"];

#[test]
fn compare_sweeps_each_family_then_trains_the_chosen_rate_with_seeds() {
    let tmp = temp("compare");
    let out = tmp.path().join("cmp");
    let o = compare(&out, &SWEEP);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("| xs | BDH |") && table.contains("| xs | GPT |"), "{table}");
    assert!(table.contains("unigram") || table.contains("byte frequencies alone"), "{table}");
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("table.json")).unwrap()).unwrap();
    let rows = c["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let params: Vec<f64> = rows.iter().map(|r| r["parameters"].as_f64().unwrap()).collect();
    assert!((params[0] - params[1]).abs() / params[0] < 0.01, "matched sizes: {params:?}");
    let unigram = c["unigram"].as_f64().unwrap();
    assert!(unigram > 1.0 && unigram < 256f64.ln(), "{unigram}");
    for (r, family, rates) in [(&rows[0], "bdh", [2e-3, 8e-3]), (&rows[1], "gpt", [4e-3, 1e-2])] {
        // The chosen rate is the sweep's lowest loss, and every rate was tried.
        let sweep: Vec<(f64, f64)> =
            r["sweep"].as_array().unwrap().iter().map(|s| (s[0].as_f64().unwrap(), s[1].as_f64().unwrap())).collect();
        assert_eq!(sweep.iter().map(|s| s.0).collect::<Vec<_>>(), rates);
        let best = sweep.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
        assert_eq!(r["lr"].as_f64().unwrap(), best, "{r}");
        for lr in rates {
            assert!(out.join(format!("xs-{family}/lr-{lr:e}/last/model.safetensors")).exists(), "{family} {lr}");
        }
        // Seed 1337's run at the chosen rate is the sweep's (the same budget); seed 1 its own.
        let seeds = r["seeds"].as_array().unwrap();
        assert_eq!(seeds.iter().map(|s| s["seed"].as_u64().unwrap()).collect::<Vec<_>>(), [1337, 1]);
        assert_eq!(seeds[0]["val_loss"], sweep.iter().find(|s| s.0 == best).unwrap().1);
        assert!(out.join(format!("xs-{family}/seed-1/last/model.safetensors")).exists());
        assert!(!out.join(format!("xs-{family}/seed-1337")).exists(), "the sweep's run is not trained twice");
        assert_ne!(seeds[0]["val_loss"], seeds[1]["val_loss"], "another seed, another run");
        assert!(r["train_flops_per_token"].as_f64().unwrap() > 0.0);
    }
    // BDH spends more FLOPs a token at this size, so at the GPT's compute it is read
    // before its end: the GPT's own column is its final loss.
    let flops: Vec<f64> = rows.iter().map(|r| r["train_flops_per_token"].as_f64().unwrap()).collect();
    assert!(flops[0] > flops[1], "{flops:?}");
    let gpt_line = table.lines().find(|l| l.starts_with("| xs | GPT |")).unwrap();
    let cells: Vec<&str> = gpt_line.split(" | ").collect();
    assert!(cells[6].starts_with(cells[7]), "at equal compute the cheaper run is its final loss: {gpt_line}");

    // A second call continues: the runs are finished, so it only redraws, and says
    // which lines of a damaged metrics log it could not read.
    let metrics = out.join("xs-bdh/seed-1/metrics.jsonl");
    let mut log = std::fs::read_to_string(&metrics).unwrap();
    log.insert_str(0, "{\"step\": 1, \"lo\n");
    std::fs::write(&metrics, log).unwrap();
    let o = compare(&out, &SWEEP);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let warned = format!("warning: {}: 1 lines are not records", metrics.display());
    assert!(text(&o).contains(&warned) && text(&o).contains("(line numbers 1)"), "{}", text(&o));
    // Other settings in the same directory are refused, not mixed in.
    let o = bdh(&[
        &["compare", "--sizes", "xs", "--tokens", "16384", "--threads", "1"][..],
        &SWEEP,
        &["--out", out.to_str().unwrap()],
    ]
    .concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("made with other settings (training.max_steps: 4 → 8"), "{}", text(&o));
    let charts = assert_charts_readable(&std::fs::read_to_string(out.join("report.html")).unwrap(), 4);
    assert_eq!(charts[0].legend.len(), 2, "a series per family and size: {charts:?}");
    let Some(chromium) = chromium("the compare report") else { return };
    let (dom, _) = render(&chromium, &out.join("report.html"), tmp.path());
    assert!(dom.matches("<svg").count() >= 4 && dom.contains("bdh compare"), "charts missing from the compare report");
    for title in ["against training tokens", "against training compute", "against the peak learning rate"] {
        assert!(dom.contains(title), "{title}: {dom}");
    }
}

/// A sweep shorter than the runs that count: every seed trains its own run.
#[test]
fn a_shorter_sweep_trains_every_seed_at_the_full_budget() {
    let tmp = temp("compare-short-sweep");
    let out = tmp.path().join("cmp");
    let o = compare(&out, &["--sweep-tokens", "4096", "--bdh-rates", "2e-3", "--gpt-rates", "4e-3", "--seeds", "5"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for family in ["bdh", "gpt"] {
        assert!(out.join(format!("xs-{family}/seed-5/last/model.safetensors")).exists());
    }
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("table.json")).unwrap()).unwrap();
    assert_eq!(c["rows"][0]["seeds"][0]["tokens"], 8192);
}

#[test]
fn bad_sweeps_are_refused_before_any_training() {
    let tmp = temp("compare-bad");
    let out = tmp.path().join("cmp");
    let many = vec!["1e-3"; 17].join(",");
    for (extra, want) in [
        (vec!["--seeds", "1,1"], "--seeds: each value once"),
        (vec!["--bdh-rates", "2e-3,2e-3"], "--bdh-rates: each value once"),
        (vec!["--bdh-rates", "0"], "positive"),
        (vec!["--gpt-rates=-1e-3"], "positive"),
        (vec!["--gpt-rates", &many], "at most 16"),
        (vec!["--sizes", "xl"], "no comparison size `xl`"),
    ] {
        let o = compare(&out, &extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{extra:?}: {}", text(&o));
        assert!(!out.join("xs-bdh").exists(), "{extra:?}: nothing trained");
    }
}
