//! Merging by concatenating neurons: what a merge keeps, on cases with a known
//! answer.

use bdh::io::checkpoint::{load, save};
use bdh::model::bdh::{forward, merge, Activations, Bdh, Decay, Pass};
use bdh::Model;

use crate::common::{bdh_model, golden_dir, max_rel_diff, temp_dir, tiny_config, tokens};

fn bdh(l: usize, d: usize, h: usize, mult: usize, seed: u64) -> Bdh {
    let Model::Bdh(m) = bdh_model(tiny_config(l, d, h, mult), seed) else { unreachable!("a BDH") };
    m
}

fn logits(m: &Bdh, t: &[u32]) -> Vec<f32> {
    let mut a = Activations::new(m, 2, t.len() / 2).unwrap();
    forward(m, t, &mut a, Pass::default()).unwrap();
    a.logits
}

#[test]
fn a_model_merged_with_itself_computes_what_it_did() {
    // Every neuron twice: scores and decoder outputs double, and the LayerNorms after
    // them undo the factor up to their epsilon — negligible for a trained model, not
    // for a freshly initialised one, whose decoder output has a variance near 1e-5.
    let Model::Bdh(a) = load(&golden_dir("recall-trained"), None).unwrap() else { unreachable!("a BDH") };
    let (m, heritage) = merge(&a, &a).unwrap();
    assert_eq!((m.config.n_neurons(), heritage.from_a, heritage.from_b), (2048, 1024, 1024));
    let t = tokens(2 * 40, 5);
    let d = max_rel_diff(&logits(&m, &t), &logits(&a, &t));
    println!("merge(A, A) vs A: max rel diff {d:.2e}");
    assert!(d < 1e-4, "{d}");
}

#[test]
fn neurons_of_a_silent_model_add_nothing_and_frequencies_travel_with_their_neurons() {
    let a = bdh(2, 32, 2, 8, 3);
    let mut b = bdh(2, 32, 2, 4, 9);
    // B shares A's embedding and head, and its neurons never fire (encoder = 0).
    for name in ["embed.weight", "lm_head"] {
        b.params.get_mut(name).unwrap().copy_from_slice(a.params.get(name).unwrap());
    }
    b.params.get_mut("encoder").unwrap().fill(0.0);
    b.freqs.iter_mut().for_each(|f| *f *= 0.5); // not the frequencies N would give
    let (m, _) = merge(&a, &b).unwrap();
    let t = tokens(2 * 40, 6);
    let d = max_rel_diff(&logits(&m, &t), &logits(&a, &t));
    println!("merge(A, silent B) vs A: max rel diff {d:.2e}");
    assert!(d < 1e-5, "{d}");
    let (na, n) = (a.config.n_neurons(), m.config.n_neurons());
    assert_eq!(&m.freqs[..na], &a.freqs[..]);
    assert_eq!(&m.freqs[na..n], &b.freqs[..]);
    // Each head's block: A's encoder columns, then B's.
    let (enc, enc_a) = (m.params.get("encoder_v").unwrap(), a.params.get("encoder_v").unwrap());
    assert_eq!(&enc[n..n + na], &enc_a[na..2 * na], "row 1 of head 0");
    // Saved and loaded, the merged model keeps every neuron's frequency.
    let dir = temp_dir("merge");
    save(&Model::Bdh(m.clone()), dir.path()).unwrap();
    let Model::Bdh(back) = load(dir.path(), None).unwrap() else { unreachable!("a BDH") };
    assert_eq!(back, m);
}

#[test]
fn models_of_different_shapes_do_not_merge() {
    let a = bdh(2, 32, 2, 8, 1);
    for (other, what) in
        [(bdh(3, 32, 2, 8, 1), "layers"), (bdh(2, 64, 2, 8, 1), "residual width"), (bdh(2, 32, 4, 8, 1), "heads")]
    {
        let err = merge(&a, &other).unwrap_err().to_string();
        assert!(err.contains(what), "{err}");
    }
}

#[test]
fn models_whose_heads_decay_differently_do_not_merge() {
    let decaying = |decay: Decay| {
        let mut m = bdh(2, 32, 2, 8, 1);
        m.config.decay = decay;
        m
    };
    let err = merge(&decaying(Decay::Alibi), &bdh(2, 32, 2, 8, 2)).unwrap_err().to_string();
    assert!(err.contains("decay differently") && err.contains("\"alibi\"") && err.contains("\"none\""), "{err}");
    // ALiBi's γ written out as a list is the same decay.
    let gamma = Decay::Alibi.initial(2);
    let (m, _) = merge(&decaying(Decay::Alibi), &decaying(Decay::Retention(gamma))).unwrap();
    assert_eq!(m.config.n_neurons(), 2 * 128);
}
