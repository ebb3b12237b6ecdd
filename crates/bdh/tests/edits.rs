//! Interventions: the same edit gives the same numbers in the parallel forward, in
//! the recurrent step and in a chunked prefill; edits change what they should;
//! bad edits are refused.

use bdh::infer::Prepared;
use bdh::io::checkpoint::load;
use bdh::model::bdh::{forward, Action, Activations, Bdh, Edit, Edits, Pass, Site, NO_EDITS};
use bdh::{Gradients, Mode, Model};

use crate::common::{golden_dir, max_rel_diff, tokens};

fn trained() -> Bdh {
    let Model::Bdh(m) = load(&golden_dir("ref-small-trained"), None).unwrap() else { unreachable!("a BDH") };
    m
}

fn edit(site: Site, layer: usize, head: Option<usize>, neuron: Option<usize>, position: Option<usize>) -> Edit {
    Edit { site, layer: Some(layer), head, neuron, position, action: Action::Zero }
}

/// Logits of the parallel forward with `edits`, (T, V).
fn parallel(m: &Bdh, toks: &[u32], edits: &Edits) -> Vec<f32> {
    let mut acts = Activations::new(m, 1, toks.len()).unwrap();
    forward(m, toks, &mut acts, Pass { edits, ..Pass::default() }).unwrap();
    acts.logits
}

/// Logits of the recurrent steps with `edits`, (T, V).
fn stepped(m: &Bdh, toks: &[u32], edits: &Edits) -> Vec<f32> {
    let Prepared::Bdh(p) = Prepared::new(Model::Bdh(m.clone())).unwrap() else { unreachable!("a BDH") };
    let (mut s, mut scratch) = (p.state().unwrap(), p.scratch());
    toks.iter().flat_map(|&t| p.step(&mut [&mut s], &mut scratch, &[t], edits).unwrap().to_vec()).collect()
}

/// Logits after the last token of a prefill with `edits`, (V).
fn prefilled(m: &Bdh, toks: &[u32], edits: &Edits) -> Vec<f32> {
    let Prepared::Bdh(p) = Prepared::new(Model::Bdh(m.clone())).unwrap() else { unreachable!("a BDH") };
    let (mut s, mut scratch) = (p.state().unwrap(), p.scratch());
    p.prefill(&mut s, &mut scratch, toks, edits).unwrap().to_vec()
}

#[test]
fn edits_agree_between_forward_step_and_prefill() {
    let m = trained();
    let toks: Vec<u32> = b"First Citizen: we are accounted poor citizens.".iter().map(|&b| b as u32).collect();
    let v = m.config.vocab_size;
    let plain = parallel(&m, &toks, &NO_EDITS);
    let cases = [
        edit(Site::X, 1, Some(2), None, None),     // a whole head's neurons, everywhere
        edit(Site::Y, 2, None, None, Some(10)),    // every y of a layer at one position
        edit(Site::Xy, 0, Some(0), None, Some(5)), // one head's x⊙y at one position
        Edit { action: Action::Set(0.5), ..edit(Site::X, 3, Some(1), Some(17), None) }, // patch one neuron
    ];
    for e in cases {
        let mut edits = Edits::new();
        edits.push(e);
        let (par, rec) = (parallel(&m, &toks, &edits), stepped(&m, &toks, &edits));
        let pre = prefilled(&m, &toks, &edits);
        let (d_rec, d_pre) = (max_rel_diff(&rec, &par), max_rel_diff(&pre, &par[par.len() - v..]));
        let moved = max_rel_diff(&par, &plain);
        println!("{e:?}: recurrent rel {d_rec:.2e}, prefill rel {d_pre:.2e}; moved the logits by {moved:.2e}");
        assert!(d_rec < 5e-6 && d_pre < 5e-6, "{e:?}: {d_rec} {d_pre}");
        assert!(moved > 1e-3, "{e:?} changed nothing");
    }
}

#[test]
fn zeroing_rho_before_every_read_silences_the_layer_like_zeroing_y() {
    let m = trained();
    let toks = tokens(40, 3);
    let mut rho = Edits::new();
    rho.push(edit(Site::Rho, 2, None, None, None));
    let mut y = Edits::new();
    y.push(edit(Site::Y, 2, None, None, None));
    let (a, b) = (stepped(&m, &toks, &rho), parallel(&m, &toks, &y));
    let d = max_rel_diff(&a, &b);
    println!("ρ zeroed at layer 2 vs y zeroed at layer 2: rel {d:.2e}");
    assert!(d < 5e-6, "{d}");
    // The prefill steps token by token under ρ edits, with the same result.
    let last = prefilled(&m, &toks, &rho);
    assert!(max_rel_diff(&last, &a[a.len() - last.len()..]) < 5e-6);
}

#[test]
fn no_edits_change_nothing() {
    let m = trained();
    let toks = tokens(30, 4);
    let mut acts = Activations::new(&m, 1, toks.len()).unwrap();
    forward(&m, &toks, &mut acts, Pass::mode(Mode::Eval)).unwrap();
    assert_eq!(parallel(&m, &toks, &Edits::new()), acts.logits);
}

#[test]
fn bad_edits_are_refused() {
    let m = trained();
    let toks = tokens(8, 1);
    let mut acts = Activations::new(&m, 1, 8).unwrap();
    for (e, want) in [
        (edit(Site::X, 9, None, None, None), "layer 9 ≥ 4"),
        (edit(Site::Y, 0, Some(4), None, None), "head 4 ≥ 4"),
        (edit(Site::Xy, 0, None, Some(1024), None), "neuron 1024 ≥ 1024"),
        (Edit { action: Action::Set(-1.0), ..edit(Site::X, 0, None, None, None) }, "≥ 0"),
        (Edit { action: Action::Set(f32::NAN), ..edit(Site::Y, 0, None, None, None) }, "finite"),
        (edit(Site::Rho, 0, None, None, None), "recurrent step"),
    ] {
        let mut edits = Edits::new();
        edits.push(e);
        let err = forward(&m, &toks, &mut acts, Pass { edits: &edits, ..Pass::default() }).unwrap_err().to_string();
        assert!(err.contains(want), "{e:?}: {err}");
    }
}

#[test]
fn no_backward_through_an_edited_forward() {
    let Model::Bdh(m) = Model::new(&bdh::ModelConfig::Bdh(crate::common::tiny_config(1, 16, 2, 4)), 1).unwrap() else {
        unreachable!("a BDH")
    };
    let model = Model::Bdh(m.clone());
    let toks = tokens(8, 1);
    let mut edits = Edits::new();
    edits.push(edit(Site::X, 0, None, Some(3), None));
    let mut acts = Activations::new(&m, 1, 8).unwrap();
    forward(&m, &toks, &mut acts, Pass { edits: &edits, ..Pass::default() }).unwrap();
    let mut grads = Gradients::new(&model, 1, 8).unwrap();
    let err = bdh::backward(&model, &bdh::Activations::Bdh(acts), &toks, &mut grads).unwrap_err().to_string();
    assert!(err.contains("edits"), "{err}");
}

#[test]
fn the_kept_gated_product_is_what_the_decoder_read() {
    let m = trained();
    let toks = tokens(24, 7);
    let mut acts = Activations::new(&m, 1, toks.len()).unwrap();
    assert!(acts.gated(0).is_none(), "kept only on request");
    acts.keep_gated().unwrap();
    forward(&m, &toks, &mut acts, Pass::default()).unwrap();
    // without a gate mechanism or edits: x ⊙ y
    for l in 0..m.config.n_layer {
        let product: Vec<f32> = acts.x(l).iter().zip(acts.y(l)).map(|(x, y)| x * y).collect();
        assert_eq!(acts.gated(l).unwrap(), &product[..], "layer {l}");
    }
    // an edit of x ⊙ y shows in it, and in nothing before it
    let (x1, y1) = (acts.x(1).to_vec(), acts.y(1).to_vec());
    let mut edits = Edits::new();
    edits.push(Edit { action: Action::Set(0.5), ..edit(Site::Xy, 1, Some(0), Some(3), None) });
    forward(&m, &toks, &mut acts, Pass { edits: &edits, ..Pass::default() }).unwrap();
    let (n, t) = (m.config.n_neurons(), toks.len());
    let gated = acts.gated(1).unwrap();
    assert!((0..t).all(|p| gated[p * n + 3] == 0.5));
    assert_eq!((acts.x(1), acts.y(1)), (&x1[..], &y1[..]), "x and y are read before the edit");
}
