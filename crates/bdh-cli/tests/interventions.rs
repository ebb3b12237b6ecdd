//! `bdh inspect ablate|patch|induction|top|path|overlap` end to end on a small
//! model trained on the built-in language (it recalls facts): summaries, every
//! number as JSON, pages that render, and clear errors for bad input.

use std::path::Path;

mod common;
use common::figures::assert_charts_readable;
use common::{bdh, chromium, example, golden, render, temp, text};

fn run_ok(args: &[&str]) -> String {
    let o = bdh(args);
    let out = text(&o);
    println!("$ bdh {}\n{out}", args.join(" "));
    assert_eq!(o.status.code(), Some(0), "{out}");
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn interventions_run_on_a_recalling_model_write_json_and_render() {
    let chromium = chromium("the intervention reports");
    let tmp = temp("interventions");
    let dir = tmp.path();
    let model = golden("recall-trained");
    let text_file = example("text.txt");
    let prompt = "ada oslo, bo red, cy lima; bo red, ada ";
    let runs: [(&str, Vec<&str>, &str); 6] = [
        (
            "ablate",
            vec!["--concept", "place", "--top", "8", "--neurons", "1:0:3", "--prompt", prompt],
            "most selective",
        ),
        ("patch", vec!["--pairs", "6"], "restored by patching"),
        ("induction", vec!["--length", "16", "--sequences", "4"], "previous token"),
        ("top", vec!["--layer", "1", "--head", "0", "--neuron", "0", "--text", &text_file, "--k", "12"], "facet 0"),
        ("path", vec!["--prompt", prompt, "--target", "oslo", "--candidates", "8"], "layer 1 head"),
        (
            "overlap",
            vec!["--concept", "place", "--other", "color", "--background", &text_file, "--top", "16"],
            "Jaccard",
        ),
    ];
    for (what, extra, marker) in runs {
        let (html, js) = (dir.join(format!("{what}.html")), dir.join(format!("{what}.json")));
        let mut args = vec!["inspect", what, "--model", &model];
        let (h, j) = (html.display().to_string(), js.display().to_string());
        args.extend(["--html", &h, "--json", &j]);
        args.extend(extra);
        let out = run_ok(&args);
        assert!(out.contains(marker), "{what}: {out}");
        let v = json(&js);
        // Every chart shows each of its series, its legend below the data.
        let charts = match what {
            "top" => 0,
            "ablate" | "induction" => 2,
            _ => 1,
        };
        assert_charts_readable(&std::fs::read_to_string(&html).unwrap(), charts);
        assert!(v["provenance"]["command"].as_str().unwrap().contains(&format!("inspect {what}")));
        match what {
            "ablate" => {
                let ks: Vec<u64> = v["curve"].as_array().unwrap().iter().map(|p| p["k"].as_u64().unwrap()).collect();
                assert_eq!(ks, [1, 2, 4, 8]);
                assert!(v["ablated"]["loss"].as_f64().is_some() && v["generation"][1].as_str().is_some());
                // Beside each kind's accuracy, the strategies that bind nothing:
                // eliminating the values already given beats copying at random.
                for k in v["curve"][0]["selected"]["kinds"].as_array().unwrap() {
                    let (c, e) = (k["copy_baseline"].as_f64().unwrap(), k["eliminate_baseline"].as_f64().unwrap());
                    assert!(0.0 < c && c < e && e <= 1.0, "{k}");
                }
                assert!(out.contains("strategies that bind nothing score"), "{out}");
            }
            "patch" => {
                let sites = v["sites"].as_array().unwrap();
                let outs: Vec<f64> =
                    sites.iter().filter(|s| s["site"] == "out").map(|s| s["restored"].as_f64().unwrap()).collect();
                assert!(!outs.is_empty() && outs.iter().all(|r| (r - 1.0).abs() < 1e-3), "{outs:?}");
                assert!(v["clean_diff"].as_f64().unwrap() > v["corrupt_diff"].as_f64().unwrap());
            }
            "induction" => assert_eq!(v["models"][0]["report"]["heads"].as_array().unwrap().len(), 4),
            "top" => assert!(!v["contexts"].as_array().unwrap().is_empty()),
            "path" => assert_eq!(v["steps"].as_array().unwrap().len(), 2),
            _ => assert_eq!(v["overlap"]["k"], 16),
        }
        let Some(c) = chromium.as_deref() else { continue };
        let (dom, shot) = render(c, &html, dir);
        assert!(dom.contains(&format!("inspect {what}")), "{what}: provenance missing from the page");
        assert!(dom.contains("<table") && shot > 10_000, "{what}: the page looks empty ({shot} bytes)");
        if matches!(what, "ablate" | "patch") {
            assert!(dom.matches("<circle").count() >= 4, "{what}: the curve has no points");
        }
    }
}

#[test]
fn induction_follows_the_models_a_run_kept() {
    let tmp = temp("induction-run");
    let run = tmp.path().join("run");
    let r = run.display().to_string();
    run_ok(&[
        "train",
        "--preset",
        "tiny",
        "--out",
        &r,
        "--quiet",
        "--set",
        "training.max_steps=20",
        "--set",
        "training.eval_interval=10",
        "--set",
        "training.keep_every=10",
    ]);
    assert!(run.join("steps/step-000010/model.safetensors").exists());
    let page = tmp.path().join("induction.html").display().to_string();
    let out = run_ok(&["inspect", "induction", "--run", &r, "--length", "12", "--sequences", "2", "--html", &page]);
    assert!(out.contains("step     10") && out.contains("step     20"), "{out}");
    // The page's provenance names the models read, not the run folder as an empty text.
    let html = std::fs::read_to_string(tmp.path().join("induction.html")).unwrap();
    assert!(html.contains("model at step 10") && html.contains("model at step 20"), "{html}");
    assert!(!html.contains("0 bytes, FNV-1a"), "{html}");
    assert_charts_readable(&html, 2);
    let o = bdh(&["inspect", "induction", "--run", &tmp.path().display().to_string()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("kept no models"), "{}", text(&o));
}

#[test]
fn interventions_reject_bad_input_clearly() {
    let tmp = temp("interventions-bad");
    let dir = tmp.path();
    let model = golden("recall-trained");
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let empty = write("empty.txt", "\n  \n");
    let unequal = write(
        "unequal.jsonl",
        r#"{"clean": "ada lives in oslo. ada lives in ", "corrupted": "ada lives in rome! ada lives in", "clean_answer": "oslo", "corrupt_answer": "rome"}"#,
    );
    let same_start =
        write("same.jsonl", r#"{"clean": "ab", "corrupted": "ac", "clean_answer": "x1", "corrupt_answer": "x2"}"#);
    let broken = write("broken.jsonl", "{\"clean\": [[[[\n");
    let huge = "18446744073709551615";
    let cases: [(Vec<&str>, &str); 13] = [
        (vec!["ablate", "--neurons", "0:0:1", "--prompt", "ab", "--tokens", huge], "--tokens must be"),
        (vec!["ablate", "--neurons", "0:0:1", "--window", huge], "--window must be"),
        (
            vec!["top", "--layer", "0", "--head", "0", "--neuron", "0", "--prompt", "abc", "--facets", "10000000000"],
            "facets",
        ),
        (vec!["overlap", "--concept", "place", "--other", "color"], "give --background"),
        (vec!["ablate", "--neurons", "9:0:0"], "no neuron 9:0:0"),
        (vec!["ablate", "--heads", "0:7"], "no head 0:7"),
        (vec!["ablate"], "say what to remove"),
        (vec!["ablate", "--concept", &empty], "has no texts"),
        (
            vec!["top", "--layer", "5", "--head", "0", "--neuron", "0", "--prompt", "abc"],
            "no neuron 0 of head 0, layer 5",
        ),
        (vec!["patch", "--pair-file", &unequal], "same, non-zero length"),
        (vec!["patch", "--pair-file", &same_start], "different bytes"),
        (vec!["patch", "--pair-file", &broken], "line 1: not a pair object"),
        (vec!["path", "--prompt", "abc", "--target", ""], "the target is empty"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["inspect", args[0], "--model", &model];
        all.extend(&args[1..]);
        let o = bdh(&all);
        let out = text(&o);
        assert!(!o.status.success() && !out.contains("panicked"), "{all:?}: {out}");
        assert!(out.contains(expected), "{all:?}: expected {expected:?} in {out}");
    }
}

#[test]
fn merge_writes_a_model_that_runs_and_says_where_its_neurons_came_from() {
    let tmp = temp("merge");
    let out = tmp.path().join("merged");
    let o = out.display().to_string();
    let model = golden("recall-trained");
    let said = run_ok(&["merge", &model, &model, "--out", &o]);
    assert!(said.contains("N2048 (1024 + 1024 neurons per head)"), "{said}");
    let heritage = json(&out.join("heritage.json"));
    assert_eq!((heritage["a"]["neurons per head"].as_u64(), heritage["heads"].as_u64()), (Some(1024), Some(2)));
    let eval = run_ok(&["eval", "--model", &o, "--batches", "1"]);
    assert!(eval.contains("answer accuracy"), "{eval}");
    // Another shape, or another family, is refused with the reason.
    for (other, expected) in [(golden("ref-tiny"), "different"), (golden("gpt-tiny"), "only BDH models merge")] {
        let o2 = bdh(&["merge", &model, &other, "--out", &o]);
        assert!(!o2.status.success() && text(&o2).contains(expected), "{}", text(&o2));
    }
    assert!(out.join("model.safetensors").exists(), "a refused merge leaves the earlier one");
    // Nothing but an earlier merge is replaced: not a directory of other files, not an input.
    let other = tmp.path().join("notes");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.md"), "keep me").unwrap();
    for target in [other.display().to_string(), o.clone()] {
        let input = if target == o { o.clone() } else { model.clone() };
        let refused = bdh(&["merge", &input, &model, "--out", &target]);
        assert!(!refused.status.success() && text(&refused).contains("refusing to write into"), "{}", text(&refused));
    }
    assert_eq!(std::fs::read_to_string(other.join("notes.md")).unwrap(), "keep me");
    // Starting from a model takes its config: a model override is refused.
    let o3 = bdh(&[
        "train",
        "--init-from",
        &model,
        "--set",
        "model.n_layer=4",
        "--out",
        &tmp.path().join("r").display().to_string(),
    ]);
    assert!(!o3.status.success() && text(&o3).contains("cannot change it"), "{}", text(&o3));
}

#[test]
fn merge_removes_nothing_it_did_not_write() {
    let tmp = temp("merge-own");
    let out = tmp.path().join("merged");
    let o = out.display().to_string();
    let model = golden("recall-trained");
    // Folders beside --out that merely have the names of its versions.
    for name in ["merged.1", "merged.2"] {
        std::fs::create_dir(tmp.path().join(name)).unwrap();
        std::fs::write(tmp.path().join(name).join("notes.md"), name).unwrap();
    }
    run_ok(&["merge", &model, &model, "--out", &o]);
    run_ok(&["merge", &model, &model, "--out", &o]);
    for name in ["merged.1", "merged.2"] {
        assert_eq!(std::fs::read_to_string(tmp.path().join(name).join("notes.md")).unwrap(), name);
    }
    // A plain folder that holds a heritage.json is not an earlier merge.
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("heritage.json"), "{}").unwrap();
    std::fs::write(plain.join("notes.md"), "keep me").unwrap();
    let refused = bdh(&["merge", &model, &model, "--out", &plain.display().to_string()]);
    assert!(!refused.status.success() && text(&refused).contains("refusing to write into"), "{}", text(&refused));
    assert_eq!(std::fs::read_to_string(plain.join("notes.md")).unwrap(), "keep me");
    assert!(!tmp.path().join(".merged.bdh-lock").exists(), "the lock is let go of");
}
