//! `bdh graph`: a BDH-Normfree model trained here is converted, run in the graph form
//! and equal to its tensor form; spikes, traces, stats and pruning write what they
//! say; bad input is refused by name with a non-zero status.

mod common;

use common::{bdh, golden, temp, text};

/// The number after `needle` in `out`.
fn number_after(out: &str, needle: &str) -> f64 {
    let at = out.find(needle).unwrap_or_else(|| panic!("no `{needle}` in {out}")) + needle.len();
    out[at..].split_whitespace().next().unwrap().trim_end_matches([',', ';']).parse().unwrap()
}

#[test]
fn a_trained_normfree_model_runs_as_a_graph_equal_to_its_tensor_form() {
    let dir = temp("graph");
    let d = |p: &str| dir.path().join(p).display().to_string();
    let o = bdh(&[
        "train",
        "--preset",
        "tiny",
        "--out",
        &d("run"),
        "--quiet",
        "--set",
        "model.norm=none",
        "--set",
        "model.residual=n",
        "--set",
        "model.position=none",
        "--set",
        "model.decay=\"alibi\"",
        "--set",
        "training.init_scale={\"embed.weight\"=50.0,lm_head=5.0}",
        "--set",
        "training.max_steps=40",
        "--set",
        "training.eval_interval=20",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["graph", "build", "--model", &d("run"), "--out", &d("g.safetensors")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("BDH-Normfree L2") && text(&o).contains("gs_in"), "{}", text(&o));
    let sample = "the fox helps the forest. ned lives in oslo. what color does sol like? sol likes red.\n".repeat(3);
    std::fs::write(d("text.txt"), &sample).unwrap();

    let o = bdh(&["graph", "run", "--graph", &d("g.safetensors"), "--text", &d("text.txt"), "--against", &d("run")]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let (graph_loss, tensor_loss) = (number_after(&out, "bytes, loss"), number_after(&out, "): loss"));
    let diff = number_after(&out, "logits max rel diff");
    println!("{out}");
    assert!(diff < 1e-5, "{diff}");
    assert!((graph_loss - tensor_loss).abs() < 1e-5 * tensor_loss, "{graph_loss} vs {tensor_loss}");

    let o = bdh(&[
        "graph",
        "run",
        "--graph",
        &d("g.safetensors"),
        "--text",
        &d("text.txt"),
        "--max-tokens",
        "60",
        "--spikes",
        "4",
        "--plot",
        &d("spikes.svg"),
        "--trace",
        "10,11",
        "--json",
        &d("trace.json"),
        "--html",
        &d("trip.html"),
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("spiking runs") && out.contains("position 11"), "{out}");
    assert!(std::fs::read_to_string(d("spikes.svg")).unwrap().contains("<svg"));
    let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d("trace.json")).unwrap()).unwrap();
    assert_eq!(trace["traced"].as_array().unwrap().len(), 2);
    assert_eq!(trace["spikes"]["rows"].as_array().unwrap().len(), 3, "K = 1, 2, 4");
    assert!(trace["loss_nats"].as_f64().unwrap() > 0.0 && trace["info"]["n_layer"] == 2);
    assert_eq!(trace["traced"][0]["rounds"].as_array().unwrap().len(), 9, "input, 4 + 3 rounds, readout");
    let page = std::fs::read_to_string(d("trip.html")).unwrap();
    assert!(page.contains("The trip of") && page.contains("strongest synapses"));

    let o = bdh(&["graph", "stats", "--graph", &d("g.safetensors"), "--json", &d("stats.json")]);
    assert!(o.status.success() && text(&o).contains("excitatory"), "{}", text(&o));
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["degrees"].as_array().unwrap().len(), 12);

    let o = bdh(&[
        "graph",
        "prune",
        "--model",
        &d("run"),
        "--text",
        &d("text.txt"),
        "--max-tokens",
        "80",
        "--keep",
        "2,16",
        "--plot",
        &d("prune.svg"),
        "--json",
        &d("prune.json"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let prune: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d("prune.json")).unwrap()).unwrap();
    let rows = prune["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "K = 2, 16 and the exact graphs");
    assert!(rows[0]["gx_edges"].as_u64() < rows[1]["gx_edges"].as_u64());
    assert!(rows[2]["keep"].is_null() && rows[2]["loss"].as_f64().unwrap().is_finite());

    // A graph that computes something else than its model is caught: exit 1.
    let mut g = bdh::model::graph::load(std::path::Path::new(&d("g.safetensors"))).unwrap();
    g.readout.e.weights.iter_mut().for_each(|w| *w *= 1.01);
    bdh::model::graph::save(&g, std::path::Path::new(&d("off.safetensors"))).unwrap();
    let o = bdh(&["graph", "run", "--graph", &d("off.safetensors"), "--text", &d("text.txt"), "--against", &d("run")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("differ past"), "{}", text(&o));

    // Bad input: a model of bdh.py's layer, K = 0, a truncated graph, a one-byte text,
    // a traced position past the text.
    let refused = |args: &[&str], needle: &str| {
        let o = bdh(args);
        assert!(!o.status.success() && text(&o).contains(needle), "{args:?}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    };
    refused(&["graph", "build", "--model", &golden("ref-tiny"), "--out", &d("x.safetensors")], "BDH-Normfree");
    refused(
        &["graph", "run", "--graph", &d("g.safetensors"), "--text", &d("text.txt"), "--against", &golden("ref-tiny")],
        "not the model this graph",
    );
    refused(&["graph", "build", "--model", &d("run"), "--out", &d("x.safetensors"), "--keep", "0"], "--keep");
    let bytes = std::fs::read(d("g.safetensors")).unwrap();
    std::fs::write(d("cut.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    refused(&["graph", "run", "--graph", &d("cut.safetensors"), "--text", &d("text.txt")], "not a graph file");
    std::fs::write(d("one.txt"), "a").unwrap();
    refused(&["graph", "run", "--graph", &d("g.safetensors"), "--text", &d("one.txt")], "2 or more");
    refused(
        &[
            "graph",
            "run",
            "--graph",
            &d("g.safetensors"),
            "--text",
            &d("text.txt"),
            "--max-tokens",
            "20",
            "--trace",
            "30",
        ],
        "--trace 30",
    );
    refused(&["graph", "run", "--graph", &d("g.safetensors"), "--text", &d("text.txt"), "--spikes", "0"], "--spikes");
    assert!(!std::path::Path::new(&d("x.safetensors")).exists(), "nothing written on refusal");
}
