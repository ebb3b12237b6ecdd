//! The microscope's population analyses on constructed cases with known answers:
//! a model matched against itself and against a copy with its heads and neurons
//! permuted (the same function) matches neuron for neuron.

use bdh::microscope::seeds::seeds;
use bdh::microscope::Scope;
use bdh::model::bdh::Bdh;
use bdh::Model;

use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};

/// `m` with its two heads swapped and its RoPE pairs permuted (pair a ↦ (3a + 1) mod
/// P), its frequencies with them: the same function, other neuron indices. Returns
/// the copy and where each neuron (head, j) went.
fn permuted(m: &Bdh) -> (Bdh, impl Fn(usize, usize) -> (usize, usize)) {
    let (h, d, n) = (m.config.n_head, m.config.n_embd, m.config.n_neurons());
    assert_eq!(h, 2);
    let pairs = n / 2;
    let to = move |head: usize, j: usize| (1 - head, 2 * ((3 * (j / 2) + 1) % pairs) + j % 2);
    let mut copy = m.clone();
    let (old, new) = (m.weights(), bdh::model::bdh::WeightsMut::of(&mut copy.params));
    for head in 0..h {
        for j in 0..n {
            let (h2, j2) = to(head, j);
            for row in 0..d {
                new.encoder[(h2 * d + row) * n + j2] = old.encoder[(head * d + row) * n + j];
                new.encoder_v[(h2 * d + row) * n + j2] = old.encoder_v[(head * d + row) * n + j];
            }
            new.decoder[(h2 * n + j2) * d..(h2 * n + j2 + 1) * d]
                .copy_from_slice(&old.decoder[(head * n + j) * d..(head * n + j + 1) * d]);
            copy.freqs[j2] = m.freqs[j];
        }
    }
    (copy, to)
}

#[test]
fn a_model_matches_itself_and_its_permuted_copy_neuron_for_neuron() {
    let Model::Bdh(m) = bdh_model(tiny_config(2, 32, 2, 8), 5) else { unreachable!("a BDH") };
    let (copy, to) = permuted(&m);
    let text = tokens(400, 3);
    // the copy computes what the model does
    let logits = |m: &Bdh| {
        let mut acts = bdh::model::bdh::Activations::new(m, 1, text.len()).unwrap();
        bdh::model::bdh::forward(m, &text, &mut acts, Default::default()).unwrap();
        acts.logits
    };
    assert!(max_rel_diff(&logits(&copy), &logits(&m)) < 1e-5);
    let scopes = [Scope::cpu(&m), Scope::cpu(&m), Scope::cpu(&copy)];
    let r = seeds(&scopes, &text, 32, 1).unwrap();
    assert_eq!(r.matchings.len(), 2);
    let (h, n) = (2, m.config.n_neurons());
    // which of the model's neurons vary over the text
    let mut acts = bdh::model::bdh::Activations::new(&m, 1, text.len()).unwrap();
    bdh::model::bdh::forward(&m, &text, &mut acts, Default::default()).unwrap();
    let t = text.len();
    let varies: Vec<bool> = (0..m.config.n_layer * h * n)
        .map(|u| {
            let (l, head, j) = (u / (h * n), (u / n) % h, u % n);
            let x = acts.x(l);
            let column: Vec<f32> = (0..t).map(|i| x[(head * t + i) * n + j]).collect();
            column.iter().any(|&v| v != column[0])
        })
        .collect();
    for (k, matching) in r.matchings.iter().enumerate() {
        println!(
            "model {}: heads {:?}, correlation {:?}, important {:.4} / {:.4}",
            matching.model,
            matching.heads,
            matching.correlation,
            matching.important_correlation,
            matching.important_overlap
        );
        assert!(matching.correlation.iter().all(|&c| (c - 1.0).abs() < 1e-4), "{:?}", matching.correlation);
        assert!((matching.important_correlation - 1.0).abs() < 1e-4 && matching.important_overlap == 1.0);
        // every neuron matched to itself, or to where the copy put it
        let mut checked = 0;
        for l in 0..m.config.n_layer {
            for head in 0..h {
                let (want_head, _) = if k == 0 { (head, 0) } else { to(head, 0) };
                assert_eq!(matching.heads[l * h + head], want_head, "layer {l} head {head}");
                for j in 0..n {
                    let (h2, j2) = if k == 0 { (head, j) } else { to(head, j) };
                    let want = (l * h + h2) * n + j2;
                    // (a neuron silent over the text correlates with nothing: any match)
                    if varies[(l * h + head) * n + j] {
                        assert_eq!(matching.neurons[(l * h + head) * n + j], want, "neuron {l}:{head}:{j}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > m.config.n_layer * h * n / 2, "most neurons vary over the text: {checked}");
    }
    assert!(r.importance_spread[4] < 1e-4, "the same importance in all three: {:?}", r.importance_spread);
    // each model's basis alignment is its own, and the copy's is the model's
    assert!(
        max_rel_diff(
            &r.bases[2].alignment.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &[r.bases[0].alignment[1], r.bases[0].alignment[0], r.bases[0].alignment[3], r.bases[0].alignment[2]]
                .map(|x| x as f32)
        ) < 1e-3
    );
}

#[test]
fn seeds_refuses_a_single_model_and_models_of_different_shapes() {
    let Model::Bdh(a) = bdh_model(tiny_config(2, 32, 2, 8), 1) else { unreachable!("a BDH") };
    let Model::Bdh(b) = bdh_model(tiny_config(2, 32, 2, 4), 1) else { unreachable!("a BDH") };
    let text = tokens(50, 1);
    let err = seeds(&[Scope::cpu(&a)], &text, 8, 0).expect_err("refused").to_string();
    assert!(err.contains("compare 2..=16 models; got 1"), "{err}");
    let err = seeds(&[Scope::cpu(&a), Scope::cpu(&b)], &text, 8, 0).expect_err("refused").to_string();
    assert!(err.contains("models of one shape only"), "{err}");
    let err = seeds(&[Scope::cpu(&a), Scope::cpu(&a)], &text[..1], 8, 0).expect_err("refused").to_string();
    assert!(err.contains("read 2..=16384 tokens; got 1"), "{err}");
}
