//! The graph form equals the tensor form: a BDH-Normfree model's graphs, run by the
//! four-round scheduler, give the parallel forward's logits at every position and,
//! through ρ = E·σ, the recurrent state; with and without a decay, on fresh and on
//! trained weights. Files round-trip; bad ones are refused by name.

use bdh::infer::{Prepared, State};
use bdh::model::bdh::{Bdh, BdhConfig, Decay, Norm, Position, Residual, NO_EDITS};
use bdh::model::graph::{build, load, save, score, Brain, Graph};
use bdh::{forward, Activations, Mode, Model};

use crate::common::{bdh_model, max_rel_diff, temp_dir, tiny_config, tokens};

/// A BDH-Normfree config of `tiny_config`'s sizes.
pub fn normfree(cfg: BdhConfig) -> BdhConfig {
    BdhConfig { norm: Norm::None, residual: Residual::N, position: Position::None, ..cfg }
}

fn model(cfg: BdhConfig, scale: f32, seed: u64) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(cfg, seed) else { unreachable!("a BDH") };
    m.params.data_mut().iter_mut().for_each(|x| *x *= scale);
    m
}

/// Max rel diff of the graph's logits against the parallel forward's, over `toks`.
pub fn graph_vs_tensor(m: &Bdh, graph: &Graph, toks: &[u32]) -> f32 {
    let model = Model::Bdh(m.clone());
    let mut acts = Activations::new(&model, 1, toks.len()).unwrap();
    forward(&model, toks, &mut acts, Mode::Eval).unwrap();
    let (logits, _) = score(graph, toks).unwrap();
    let v = m.config.vocab_size;
    (0..toks.len())
        .map(|t| max_rel_diff(&logits[t * v..(t + 1) * v], &acts.logits()[t * v..(t + 1) * v]))
        .fold(0.0, f32::max)
}

#[test]
fn the_graph_form_equals_the_tensor_form_at_every_position() {
    for (i, decay) in [Decay::None, Decay::Retention(vec![0.9, 0.97]), Decay::Alibi].into_iter().enumerate() {
        for cfg in [tiny_config(2, 16, 2, 4), tiny_config(3, 24, 2, 6)] {
            let cfg = normfree(BdhConfig { decay: decay.clone(), ..cfg });
            let m = model(cfg.clone(), 5.0, i as u64);
            let graph = build(&m, None, false).unwrap();
            let worst = graph_vs_tensor(&m, &graph, &tokens(64, i as u64));
            println!(
                "L{} D{} decay {}: graph vs tensor max rel diff {worst:.2e}",
                cfg.n_layer,
                cfg.n_embd,
                cfg.decay.describe()
            );
            assert!(worst < 1e-5, "{worst}");
        }
    }
}

#[test]
fn sigma_through_the_decoder_is_the_recurrent_state() {
    // ρ_l = E · σ_l: each head's ρ row of neuron j is Σ_i σ_l(i, j) · value_i, the
    // values being embed rows (layer 1) or decoder rows (later layers).
    let m = model(normfree(BdhConfig { decay: Decay::Retention(vec![0.8, 0.95]), ..tiny_config(2, 16, 2, 4) }), 5.0, 3);
    let graph = build(&m, None, false).unwrap();
    let toks = tokens(40, 5);
    let mut brain = Brain::new(&graph).unwrap();
    let prepared = Prepared::new(Model::Bdh(m.clone())).unwrap();
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    for &t in &toks {
        brain.step(t).unwrap();
        prepared.step(&mut [&mut state], &mut scratch, &[t], &NO_EDITS).unwrap();
    }
    let State::Bdh(state) = state else { unreachable!("a BDH") };
    let (d, n) = (m.config.n_embd, m.config.total_neurons());
    let w = m.weights();
    for l in 0..m.config.n_layer {
        let (gs, sigma) = brain.sigma(l).unwrap();
        let values = if l == 0 { w.embed } else { w.decoder };
        let mut rho = vec![0.0f64; n * d];
        for j in 0..n {
            for (e, (i, _)) in gs.in_edges(j).enumerate() {
                let s = sigma[gs.offsets[j] + e];
                rho[j * d..(j + 1) * d]
                    .iter_mut()
                    .zip(&values[i * d..(i + 1) * d])
                    .for_each(|(r, &v)| *r += s * v as f64);
            }
        }
        let rho: Vec<f32> = rho.into_iter().map(|r| r as f32).collect();
        let want = &state.rho.to_f32().unwrap()[l * n * d..(l + 1) * n * d]; // (H, N, D) of layer l
        let diff = max_rel_diff(&rho, want);
        println!("layer {l}: E·σ vs ρ max rel diff {diff:.2e}");
        assert!(diff < 1e-5, "{diff}");
    }
}

#[test]
fn only_a_normfree_model_has_a_graph() {
    for cfg in [tiny_config(1, 16, 2, 4), BdhConfig { norm: Norm::None, ..tiny_config(1, 16, 2, 4) }] {
        let err = build(&model(cfg, 1.0, 1), None, false).unwrap_err().to_string();
        assert!(err.contains("BDH-Normfree") && err.contains("residual = \"n\""), "{err}");
    }
    let err = build(&model(normfree(tiny_config(1, 16, 2, 4)), 1.0, 1), Some(0), false).unwrap_err().to_string();
    assert!(err.contains("keeping 0 in-edges"), "{err}");
}

#[test]
fn the_exact_graphs_are_dense_products_split_by_sign() {
    let m = model(normfree(tiny_config(1, 16, 2, 4)), 1.0, 2);
    let g = build(&m, None, false).unwrap();
    let (n, v) = (m.config.total_neurons(), m.config.vocab_size);
    assert_eq!(g.gs.edges(), n * n);
    assert_eq!(g.gs_in.edges(), v * n);
    assert!(g.gx.e.edges() + g.gx.i.edges() <= n * n && g.gx.e.edges() > n * n / 4 && g.gx.i.edges() > n * n / 4);
    // One entry by hand: Gx(i, k) = Σ_d decoder[i, d] · encoder[head(k)][d, k mod N].
    let (d, per) = (m.config.n_embd, m.config.n_neurons());
    let w = m.weights();
    let (i, k) = (5usize, per + 3);
    let want: f64 = (0..d).map(|dd| w.decoder[i * d + dd] as f64 * w.encoder[d * per + dd * per + 3] as f64).sum();
    let got = g.gx.e.in_edges(k).chain(g.gx.i.in_edges(k).map(|(s, w)| (s, -w))).find(|e| e.0 == i).unwrap().1;
    assert!((got as f64 - want).abs() <= 1e-6 * want.abs(), "{got} vs {want}");
    // Pruned: at most K in-edges per node and sign, Gs on the wires' edges.
    let p = build(&m, Some(7), true).unwrap();
    assert!((0..n).all(|j| p.gx.e.in_edges(j).count() <= 7 && p.gy.i.in_edges(j).count() <= 7));
    assert!((0..n).all(|j| p.gs.in_edges(j).count() == p.gx.e.in_edges(j).count() + p.gx.i.in_edges(j).count()));
}

#[test]
fn a_graph_file_round_trips_and_bad_ones_are_refused() {
    let dir = temp_dir("graph-file");
    let m = model(normfree(BdhConfig { decay: Decay::Alibi, ..tiny_config(2, 16, 2, 4) }), 1.0, 4);
    let g = build(&m, Some(20), false).unwrap();
    let path = dir.path().join("g.safetensors");
    save(&g, &path).unwrap();
    assert_eq!(load(&path).unwrap(), g);
    let bytes = std::fs::read(&path).unwrap();
    let refused = |bytes: &[u8], needle: &str| {
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, bytes).unwrap();
        let err = load(&p).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    };
    refused(&bytes[..bytes.len() - 100], "not a graph file");
    refused(b"", "not a graph file");
    // A description whose sizes disagree with the edges: n_neurons 32 → 30.
    let swap = |from: &str, to: &str| {
        let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("in the header");
        let mut b = bytes.clone();
        b[at..at + to.len()].copy_from_slice(to.as_bytes());
        b
    };
    refused(&swap("\\\"n_neurons\\\":32", "\\\"n_neurons\\\":30"), "targets");
    refused(&swap("\\\"n_layer\\\":2", "\\\"n_layer\\\":0"), "n_layer = 0");
    // Not a graph: a model's weights.
    let model_file = crate::common::golden_dir("ref-tiny").join("model.safetensors");
    let err = load(&model_file).unwrap_err().to_string();
    assert!(err.contains("bdh graph build"), "{err}");
}

#[test]
fn a_spike_carries_its_value_on_average_and_an_and_of_two_their_product() {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (a, b) = ([0.1, 0.5, 2.0, 0.0], [0.3, 1.2, 0.05]);
    let draws = 200_000;
    let (mut mean_a, mut mean_ab) = (vec![0.0f64; 4], vec![0.0f64; 12]);
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    for _ in 0..draws {
        bdh::model::graph::spiked(&a, &mut rng, &mut sa);
        bdh::model::graph::spiked(&b, &mut rng, &mut sb);
        sa.iter().zip(&mut mean_a).for_each(|(s, m)| *m += s / draws as f64);
        for (i, x) in sa.iter().enumerate() {
            for (j, y) in sb.iter().enumerate() {
                mean_ab[i * 3 + j] += x * y / draws as f64;
            }
        }
    }
    // within five standard errors of each expectation (a value c·p has std c·√(p(1−p)/draws))
    for (i, (&m, &want)) in mean_a.iter().zip(&a).enumerate() {
        let p = want / 2.0;
        assert!((m - want).abs() <= 5.0 * 2.0 * (p * (1.0 - p) / draws as f64).sqrt() + 1e-9, "a[{i}]: {m} vs {want}");
    }
    for i in 0..4 {
        for j in 0..3 {
            let (want, c) = (a[i] * b[j], 2.0 * 1.2);
            let p = want / c;
            let got = mean_ab[i * 3 + j];
            assert!(
                (got - want).abs() <= 5.0 * c * (p * (1.0 - p) / draws as f64).sqrt() + 1e-9,
                "{i},{j}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn a_spiking_write_is_unbiased_for_its_step() {
    // The first token's Hebbian write into the input synapses: token (fires surely) AND
    // a spike of each neuron's X; the mean over seeds is the deterministic write.
    let m = model(normfree(tiny_config(1, 16, 2, 4)), 5.0, 6);
    let g = build(&m, None, false).unwrap();
    let mut det = Brain::new(&g).unwrap();
    det.step(65).unwrap();
    let want = det.sigma(0).unwrap().1.to_vec();
    let runs = 4000;
    let mut mean = vec![0.0f64; want.len()];
    for seed in 0..runs {
        let mut b = Brain::spiking(&g, seed).unwrap();
        b.step(65).unwrap();
        b.sigma(0).unwrap().1.iter().zip(&mut mean).for_each(|(s, m)| *m += s / runs as f64);
    }
    let scale = want.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    let worst = mean.iter().zip(&want).fold(0.0f64, |a, (x, y)| a.max((x - y).abs())) / scale;
    println!("mean of {runs} spiking writes vs the deterministic one: max rel diff {worst:.3}");
    assert!(worst < 0.05, "{worst}");
    assert!(scale > 0.0);
}

#[test]
fn a_traced_step_lists_every_round_in_order() {
    let m = model(normfree(tiny_config(2, 16, 2, 4)), 5.0, 7);
    let g = build(&m, None, false).unwrap();
    let mut b = Brain::new(&g).unwrap();
    let first = b.step_traced(72).unwrap();
    let names: Vec<&str> = first.iter().map(|r| r.round.name()).collect();
    assert_eq!(names, ["input", "read", "write", "prods", "wires", "read", "write", "prods", "readout"]);
    assert_eq!(first[1].active, 0, "nothing to read before the first write");
    assert!(!first[2].synapses.is_empty() && first[0].active > 0);
    let logits = b.logits().to_vec();
    let second = b.step_traced(105).unwrap();
    assert!(second[1].active > 0 && !second[1].synapses.is_empty(), "the second token reads the first's synapses");
    // Tracing changes nothing: an untraced brain gives the same logits.
    let mut plain = Brain::new(&g).unwrap();
    assert_eq!(plain.step(72).unwrap(), &logits[..]);
    assert_eq!(plain.step(105).unwrap(), b.logits());
}

#[test]
fn a_graph_past_memory_is_refused_before_allocating() {
    // n = 131072 neurons: the exact graphs would take n² · 3 · 8 bytes ≈ 400 GB.
    let cfg = normfree(BdhConfig { mlp_internal_dim_multiplier: 2048, ..tiny_config(1, 64, 1, 1) });
    let m = model(cfg, 1.0, 1);
    let err = build(&m, None, false).unwrap_err();
    assert!(matches!(err, bdh::Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("graphs"), "{err}");
}

#[test]
fn the_trained_normfree_model_equals_its_graph() {
    // tests/golden/normfree-small: trained here (see CONTRIBUTING.md), with a decay.
    let Model::Bdh(m) = bdh::io::checkpoint::load(&crate::common::golden_dir("normfree-small"), None).unwrap() else {
        unreachable!("a BDH")
    };
    let graph = build(&m, None, false).unwrap();
    let text = std::fs::read(crate::common::golden_dir("../../examples/facts.txt")).unwrap();
    let toks: Vec<u32> = text.iter().take(300).map(|&b| b as u32).collect();
    let worst = graph_vs_tensor(&m, &graph, &toks);
    let (_, loss) = score(&graph, &toks).unwrap();
    println!(
        "normfree-small on examples/facts.txt T{}: loss {loss:.4}, graph vs tensor max rel diff {worst:.2e}",
        toks.len()
    );
    assert!(worst < 1e-5, "{worst}");
    assert!(loss < 1.5, "the trained model reads its kind of text: {loss}");
}

#[test]
fn crafted_graph_files_are_refused_by_name() {
    let dir = temp_dir("graph-crafted");
    let m = model(normfree(BdhConfig { decay: Decay::Alibi, ..tiny_config(1, 16, 2, 4) }), 1.0, 9);
    let good = build(&m, Some(6), true).unwrap();
    type Spoil = Box<dyn Fn(&mut Graph)>;
    let cases: Vec<(Spoil, &str)> = vec![
        (Box::new(|g| g.gx.e.sources[0] = u32::MAX), "an edge from node -1"),
        (Box::new(|g| g.gy.i.sources[3] = 10_000), "an edge from node 10000"),
        (Box::new(|g| g.gy.e.offsets[5] = g.gy.e.offsets[6] + 1), "offsets fall"),
        (Box::new(|g| g.readout.i.weights[0] = f32::NAN), "finite and ≥ 0"),
        (Box::new(|g| g.gs.weights[1] = -1.0), "finite and ≥ 0"),
        (Box::new(|g| g.gx_in.e.offsets.pop().map(|_| ()).unwrap_or(())), "targets"),
        (Box::new(|g| g.info.retention = vec![0.5]), "retention"),
        (Box::new(|g| g.info.retention = vec![0.5, 1.5]), "retention"),
        (Box::new(|g| g.info.format = 2), "format 2"),
        (Box::new(|g| g.info.keep = Some(0)), "keep = 0"),
        (Box::new(|g| g.info.n_neurons = 1 << 25), "n_neurons"),
    ];
    for (i, (spoil, needle)) in cases.iter().enumerate() {
        let mut g = good.clone();
        spoil(&mut g);
        let path = dir.path().join(format!("bad{i}.safetensors"));
        save(&g, &path).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains(needle), "case {i} ({needle}): {err}");
    }
}
