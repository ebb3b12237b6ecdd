//! Decoding at the memory wall: `--state-dtype` (a 16-bit synapse state through
//! generate, saved and loaded across types with a note, eval --carry, bench generate),
//! `bench memory`, and `bench serve` (BDH against a matched GPT after long contexts);
//! and what refuses them.

mod common;

use common::{bdh, golden, temp, text};

/// `bdh generate` of the trained fixture, greedy, with `extra`; its stdout.
fn generate(extra: &[&str]) -> (String, String) {
    let model = golden("ref-small-trained");
    let mut a = vec!["generate", "--model", &model, "--max-tokens", "200", "--temperature", "0", "--no-echo"];
    a.extend_from_slice(extra);
    let o = bdh(&a);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn a_half_state_generates_f32_s_text_and_its_files_convert_with_a_note() {
    let tmp = temp("half-state");
    let saved = tmp.path().join("bf16.safetensors");
    let saved = saved.to_str().unwrap();
    let (wide, _) = generate(&["--prompt", "ROMEO:"]);
    // f16 keeps all 200 greedy tokens; bf16 the first 134 here (a near tie then goes
    // the other way)
    for (dtype, alike) in [("bf16", 100), ("f16", 200)] {
        let (narrow, _) = generate(&["--prompt", "ROMEO:", "--state-dtype", dtype]);
        let same = narrow.bytes().zip(wide.bytes()).take_while(|(a, b)| a == b).count();
        println!("{dtype}: the first {same} of 200 greedy tokens as f32's");
        assert!(same >= alike, "{dtype}: {same} tokens as f32's\n{narrow}\n{wide}");
    }
    // A bf16 session saved, then continued by an f32 one (converted, said so) and by a bf16 one.
    generate(&["--prompt", "ROMEO:", "--state-dtype", "bf16", "--save-state", saved]);
    let (as_f32, note) = generate(&["--prompt", "\n", "--load-state", saved]);
    assert!(note.contains("holds ρ in bf16: converted to f32"), "{note}");
    let (as_bf16, quiet) = generate(&["--prompt", "\n", "--load-state", saved, "--state-dtype", "bf16"]);
    assert!(!quiet.contains("converted"), "{quiet}");
    assert_eq!(as_f32.as_bytes()[..40], as_bf16.as_bytes()[..40], "greedy continuations of one state");
}

#[test]
fn eval_carry_scores_a_stream_with_a_half_state() {
    let tmp = temp("half-eval");
    let file = tmp.path().join("text.txt");
    std::fs::write(&file, "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(30)).unwrap();
    let loss = |dtype: &str| -> f64 {
        let json = tmp.path().join(format!("{dtype}.json"));
        let model = golden("ref-small-trained");
        let args = ["eval", "--model", &model, "--data", file.to_str().unwrap(), "--carry", "--state-dtype", dtype];
        let o = bdh(&[&args[..], &["--json", json.to_str().unwrap()]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        v["stream"]["loss"].as_f64().unwrap()
    };
    let wide = loss("f32");
    for dtype in ["bf16", "f16"] {
        let narrow = loss(dtype);
        println!("stream loss f32 {wide:.5}, {dtype} {narrow:.5}");
        assert!((narrow - wide).abs() < 0.01 * wide, "{dtype}: {narrow} against {wide}");
    }
}

#[test]
fn bench_measures_a_half_state_and_the_memory_bandwidth() {
    let o = bdh(&["bench", "memory", "--threads", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("memory bandwidth:") && text(&o).contains("GB/s reading"), "{}", text(&o));
    let common = ["bench", "generate", "--preset", "tiny", "--tokens", "8", "--threads", "1", "--state-dtype", "bf16"];
    let o = bdh(&[&common[..], &["--streams", "3"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("(ρ in bf16)") && text(&o).contains("memory bandwidth measured now"), "{}", text(&o));
    let o = bdh(&[&common[..], &["--long-context", "300", "--agreement", "50"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("greedy over 50 tokens, bf16 against f32"), "{}", text(&o));
}

#[test]
fn bad_state_dtypes_are_refused_by_name() {
    let model = golden("ref-small-trained");
    let cases: [(&[&str], &str); 4] = [
        (
            &["generate", "--model", &model, "--prompt", "a", "--state-dtype", "f8"],
            "one of f32 (the default), bf16 and f16",
        ),
        (&["eval", "--model", &model, "--state-dtype", "bf16"], "only a stream read with --carry"),
        (&["generate", "--model", &model, "--prompt", "a", "--state-dtype", "f16", "--device", "gpu"], "CPU only"),
        (&["generate", "--model", &golden("gpt-tiny"), "--prompt", "a", "--state-dtype", "bf16"], "for BDH models"),
    ];
    for (args, want) in cases {
        let o = bdh(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
}

#[test]
fn bench_serve_decodes_bdh_and_a_matched_gpt_after_each_context() {
    let args = ["bench", "serve", "--preset", "tiny", "--contexts", "100,40", "--streams", "1,2", "--tokens", "3"];
    let o = bdh(&[&args[..], &["--threads", "1"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // the tiny preset's shared layer, 3·H·N·D = 98 304 weights, is two GPT blocks of D 64
    assert!(out.contains("GPT L2 D64 H2 context 103"), "{out}");
    let rows: Vec<Vec<&str>> = out.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows.iter().map(|r| (r[0], r[1])).collect::<Vec<_>>(),
        [("40", "1"), ("40", "2"), ("100", "1"), ("100", "2")]
    );
    for r in &rows {
        assert!(r[2].parse::<f64>().unwrap() > 0.0 && r[3].parse::<f64>().unwrap() > 0.0, "{r:?}");
        // BDH's state is the same at every context; the GPT's cache grows with it
        assert_eq!(r[4], rows[0][4]);
    }
    assert!(rows[2][5].parse::<f64>().unwrap() > rows[0][5].parse::<f64>().unwrap(), "{out}");
    for bad in [&["--contexts", "0"][..], &["--streams", "0"], &["--tokens", "0"]] {
        let o = bdh(&[&["bench", "serve", "--preset", "tiny"][..], bad].concat());
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
    // copies of states past the memory: refused before any is made
    let o = bdh(&["bench", "serve", "--preset", "small", "--contexts", "8000000", "--streams", "256"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("256 streams' copies of the states would need"), "{}", text(&o));
}
