//! The microscope's population view end to end on the recall-trained golden model:
//! summaries, every number as JSON, pages that render in Chromium, and clear errors
//! for bad input.

use std::path::Path;

mod common;
use common::figures::assert_charts_readable;
use common::{bdh, chromium, example, golden, render, temp, text};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn complexity_ranks_the_neurons_and_renders() {
    let tmp = temp("complexity");
    let (html, js) = (tmp.path().join("c.html"), tmp.path().join("c.json"));
    let (h, j) = (html.display().to_string(), js.display().to_string());
    let model = golden("recall-trained");
    let sample = example("text.txt");
    let args = ["inspect", "complexity", "--model", &model, "--text", &sample, "--contexts", "1", "--html", &h];
    let o = bdh(&[&args[..], &["--json", &j]].concat());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("least complex:") && out.contains("most complex:") && out.contains("⏎"), "{out}");
    let v = json(&js);
    assert_eq!(v["tokens"], 1170);
    let heads = v["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 4, "two layers of two heads");
    for head in heads {
        let q: Vec<f64> = head["quartiles"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]) && q[0] > 0.3 && q[4] < 2.0, "{q:?}");
        let counted: u64 = head["histogram"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
        assert_eq!(counted, head["varying"].as_u64().unwrap());
    }
    let (least, most) = (&v["least"][0], &v["most"][0]);
    assert!(least["normalised"].as_f64() < most["normalised"].as_f64());
    let lz = least["lz"].as_f64().unwrap() / least["shuffled"].as_f64().unwrap();
    assert!((lz - least["normalised"].as_f64().unwrap()).abs() < 1e-12);
    assert_charts_readable(&std::fs::read_to_string(&html).unwrap(), 1);
    if let Some(c) = chromium("the complexity page") {
        let (dom, shot) = render(&c, &html, tmp.path());
        assert!(dom.contains("inspect complexity") && dom.contains("<table") && shot > 10_000, "{shot} bytes");
    }
    // bad input: an empty text, too few tokens, no shuffles
    for (extra, expected) in [
        (vec!["--prompt", ""], "the text is empty"),
        (vec!["--prompt", "ab", "--tokens", "1"], "1 is not in 2..=65536"),
        (vec!["--prompt", "abc", "--shuffles", "0"], "1..=64 shuffles"),
    ] {
        let o = bdh(&[&["inspect", "complexity", "--model", &model][..], &extra].concat());
        let msg = text(&o);
        assert!(!o.status.success() && msg.contains(expected) && !msg.contains("panicked"), "{extra:?}: {msg}");
    }
}

#[test]
fn training_follows_the_models_a_run_kept_from_its_start() {
    let tmp = temp("inspect-training");
    let run = tmp.path().join("run").display().to_string();
    let sets =
        ["training.max_steps=20", "training.eval_interval=10", "training.keep_every=10", "training.batch_size=2"];
    let mut args = vec!["train", "--preset", "tiny", "--out", &run, "--quiet"];
    args.extend(sets.iter().flat_map(|s| ["--set", s]));
    let o = bdh(&args);
    assert!(o.status.success(), "{}", text(&o));
    let (html, js) = (tmp.path().join("t.html"), tmp.path().join("t.json"));
    let (h, j) = (html.display().to_string(), js.display().to_string());
    let sample = example("text.txt");
    let o = bdh(&["inspect", "training", "--run", &run, "--text", &sample, "--html", &h, "--json", &j]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let v = json(&js);
    let steps = v["steps"].as_array().unwrap();
    let at: Vec<u64> = steps.iter().map(|s| s["step"].as_u64().unwrap()).collect();
    assert_eq!(at, [0, 10, 20]);
    for (s, moved) in steps.iter().zip([false, true, true]) {
        for w in s["weights"].as_array().unwrap() {
            let (change, align) = (w["relative_change"].as_f64().unwrap(), w["alignment"].as_f64().unwrap());
            if moved {
                // trained, the top directions turn away from the start's
                assert!(change > 0.0 && align < 0.999, "{w}");
            } else {
                assert!(change == 0.0 && (align - 1.0).abs() < 1e-9, "step 0 is its own start: {w}");
            }
        }
        let (x, xy) = (s["x"].as_f64().unwrap(), s["xy"].as_f64().unwrap());
        assert!(0.0 < xy && xy <= x && x < 1.0, "{s}");
    }
    assert_charts_readable(&std::fs::read_to_string(&html).unwrap(), 4);
    if let Some(c) = chromium("the training page") {
        let (dom, shot) = render(&c, &html, tmp.path());
        assert!(dom.contains("inspect training") && dom.contains("<table") && shot > 10_000, "{shot} bytes");
    }
    // a run that kept nothing, and --model instead of --run, are refused by name
    let bare = tmp.path().join("bare").display().to_string();
    let o = bdh(&["train", "--preset", "tiny", "--out", &bare, "--quiet", "--set", "training.max_steps=2"]);
    assert!(o.status.success(), "{}", text(&o));
    for (args, expected) in [
        (vec!["inspect", "training", "--run", &bare, "--text", &sample], "kept no models; train with"),
        (vec!["inspect", "training", "--run", &run, "--model", &run, "--text", &sample], "reads --run, not --model"),
    ] {
        let o = bdh(&args);
        let msg = text(&o);
        assert!(!o.status.success() && msg.contains(expected) && !msg.contains("panicked"), "{args:?}: {msg}");
    }
}

#[test]
fn seeds_matches_a_model_to_itself_and_refuses_what_it_cannot_compare() {
    let tmp = temp("inspect-seeds");
    let (html, js) = (tmp.path().join("s.html"), tmp.path().join("s.json"));
    let (h, j) = (html.display().to_string(), js.display().to_string());
    let (model, sample) = (golden("recall-trained"), example("text.txt"));
    let both = format!("{model},{model}");
    let o = bdh(&["inspect", "seeds", "--models", &both, "--text", &sample, "--html", &h, "--json", &j]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("0:0→0:0 0:1→0:1 1:0→1:0 1:1→1:1") && out.contains("100% also important"), "{out}");
    let v = json(&js);
    for c in v["matchings"][0]["correlation"].as_array().unwrap() {
        assert!((c.as_f64().unwrap() - 1.0).abs() < 1e-4, "{c}");
    }
    assert_charts_readable(&std::fs::read_to_string(&html).unwrap(), 2);
    if let Some(c) = chromium("the seeds page") {
        let (dom, shot) = render(&c, &html, tmp.path());
        assert!(dom.contains("inspect seeds") && dom.contains("<table") && shot > 10_000, "{shot} bytes");
    }
    let other = golden("ref-small-trained");
    let mixed = format!("{model},{other}");
    for (models, expected) in [(&model, "give 2 to 16 models"), (&mixed, "models of one shape only")] {
        let o = bdh(&["inspect", "seeds", "--models", models, "--text", &sample]);
        let msg = text(&o);
        assert!(!o.status.success() && msg.contains(expected) && !msg.contains("panicked"), "{msg}");
    }
}

#[test]
fn connectome_factorises_the_affinities_and_renders() {
    let tmp = temp("inspect-connectome");
    let (html, js) = (tmp.path().join("c.html"), tmp.path().join("c.json"));
    let (h, j) = (html.display().to_string(), js.display().to_string());
    let (model, sample) = (golden("recall-trained"), example("text.txt"));
    let base = ["inspect", "connectome", "--model", &model, "--text", &sample, "--neurons", "16", "--max-rank", "3"];
    let o = bdh(&[&base[..], &["--html", &h, "--json", &j]].concat());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("18 windows of 64 tokens") && out.contains("component 0") && out.contains("peaks in window"));
    let v = json(&js);
    let errors: Vec<f64> = v["errors"].as_array().unwrap().iter().map(|e| e.as_f64().unwrap()).collect();
    assert_eq!(errors.len(), 3);
    assert!(errors.iter().all(|&e| (0.0..1.0).contains(&e)) && errors[2] <= errors[0] + 1e-9, "{errors:?}");
    let rank = v["rank"].as_u64().unwrap() as usize;
    assert_eq!(v["components"].as_array().unwrap().len(), rank);
    assert_eq!(v["components"][0]["course"].as_array().unwrap().len(), 18);
    assert_charts_readable(&std::fs::read_to_string(&html).unwrap(), 2);
    if let Some(c) = chromium("the connectome page") {
        let (dom, shot) = render(&c, &html, tmp.path());
        assert!(dom.contains("inspect connectome") && dom.contains("<table") && shot > 10_000, "{shot} bytes");
    }
    for (extra, expected) in [
        (vec!["--rank", "0"], "the rank must be 1..=3"),
        (vec!["--tokens", "100"], "100 tokens in windows of 64 make 1"),
        (vec!["--window", "1"], "windows of at least 2 tokens"),
    ] {
        let o = bdh(&[&base[..], &extra].concat());
        let msg = text(&o);
        assert!(!o.status.success() && msg.contains(expected) && !msg.contains("panicked"), "{extra:?}: {msg}");
    }
}

#[test]
fn geometry_measures_the_concept_codes_and_maps_them() {
    let tmp = temp("inspect-geometry");
    let (html, js) = (tmp.path().join("g.html"), tmp.path().join("g.json"));
    let (h, j) = (html.display().to_string(), js.display().to_string());
    let model = golden("recall-trained");
    let o = bdh(&[
        "inspect",
        "geometry",
        "--model",
        &model,
        "--statements",
        "60",
        "--site",
        "x",
        "--html",
        &h,
        "--json",
        &j,
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("random codes of the same sizes: mean overlap"), "{out}");
    let v = json(&js);
    let codes = v["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 27, "16 places and 11 colours");
    let read: u64 = codes.iter().map(|c| c["occurrences"].as_u64().unwrap()).sum();
    assert_eq!(read, 120, "every statement names one concept");
    assert_eq!(v["map"].as_array().unwrap().len(), 120, "a point per occurrence");
    // the model's codes overlap more than random codes of their sizes, and collide sooner
    let (model_overlap, random_overlap) =
        (v["model"]["overlap"].as_f64().unwrap(), v["random"]["overlap"].as_f64().unwrap());
    assert!(model_overlap > random_overlap, "{model_overlap} vs {random_overlap}");
    assert!(v["model"]["capacity"].as_u64().unwrap() <= v["random"]["capacity"].as_u64().unwrap());
    assert_charts_readable(&std::fs::read_to_string(&html).unwrap(), 3);
    if let Some(c) = chromium("the geometry page") {
        let (dom, shot) = render(&c, &html, tmp.path());
        assert!(dom.contains("inspect geometry") && dom.contains("<table") && shot > 10_000, "{shot} bytes");
    }
    for (extra, expected) in
        [(vec!["--statements", "2"], "2 is not in 8..=2000"), (vec!["--site", "rho"], "expected x, y or xy")]
    {
        let o = bdh(&[&["inspect", "geometry", "--model", &model][..], &extra].concat());
        let msg = text(&o);
        assert!(!o.status.success() && msg.contains(expected) && !msg.contains("panicked"), "{extra:?}: {msg}");
    }
    // y alone is not a code of this command
    let o = bdh(&["inspect", "geometry", "--model", &model, "--site", "y"]);
    assert!(!o.status.success() && text(&o).contains("geometry reads x or xy"), "{}", text(&o));
}
