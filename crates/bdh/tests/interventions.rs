//! The intervention statistics on constructed cases with known answers: patching,
//! selectivity, ablation curves and their control, the influence path, overlap,
//! induction shares and facets.

use bdh::data::{Kind, SyntheticConfig, SyntheticLanguage};
use bdh::microscope::ablate::{
    ablation_curve, influence_path, overlap, random_control, score, score_stepped, selectivity, zeroing, NeuronId,
    Probe,
};
use bdh::microscope::induction::{induction, shares};
use bdh::microscope::patch::{patch, PairTokens};
use bdh::microscope::top::{kmeans_cosine, top};
use bdh::microscope::Scope;
use bdh::model::bdh::{forward, Activations, Bdh, Edits, Pass, Patch, Site};
use bdh::Model;

use crate::common::{bdh_model, tiny_config};

fn model() -> Bdh {
    let Model::Bdh(m) = bdh_model(tiny_config(3, 32, 2, 8), 7) else { unreachable!("a BDH") };
    m
}

fn toks(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

fn logits(m: &Bdh, t: &[u32], edits: &Edits) -> Vec<f32> {
    let mut a = Activations::new(m, 1, t.len()).unwrap();
    forward(m, t, &mut a, Pass { edits, ..Pass::default() }).unwrap();
    a.logits
}

#[test]
fn built_in_pairs_differ_in_one_value_and_line_up() {
    let lang =
        SyntheticLanguage::new(SyntheticConfig { facts: 4, distance: 1, lists: 0.5, ..SyntheticConfig::default() });
    for p in lang.pairs(200, 3) {
        assert_eq!(p.clean.len(), p.corrupted.len());
        assert_ne!(p.clean_value.as_bytes()[0], p.corrupt_value.as_bytes()[0]);
        assert_eq!(p.clean_value.len(), p.corrupt_value.len());
        assert!(p.kind.values().contains(&p.clean_value) && p.kind.values().contains(&p.corrupt_value));
        // Only the stated value differs, and the clean text states it.
        let diff: Vec<usize> =
            (0..p.clean.len()).filter(|&i| p.clean.as_bytes()[i] != p.corrupted.as_bytes()[i]).collect();
        assert!(!diff.is_empty() && diff.len() <= p.clean_value.len(), "{p:?}");
        assert!(p.clean.contains(p.clean_value) && p.corrupted.contains(p.corrupt_value));
        // Cut right before the answer: after a story's question or a list's key.
        let story = p.clean.ends_with(" lives in ") || p.clean.ends_with(" likes ");
        let key = p.clean.trim_end().rsplit([' ', ';', ',']).next().unwrap();
        assert!(story || p.clean.contains(&format!("{key} {}", p.clean_value)), "{:?}", p.clean);
    }
}

#[test]
fn patching_a_layer_output_everywhere_restores_the_clean_run_exactly() {
    let m = model();
    let (clean, corrupted) = (
        toks("ada lives in oslo. where does ada live? ada lives in "),
        toks("ada lives in lima. where does ada live? ada lives in "),
    );
    let mut a = Activations::new(&m, 1, clean.len()).unwrap();
    forward(&m, &clean, &mut a, Pass::default()).unwrap();
    for layer in 0..m.config.n_layer {
        let mut edits = Edits::new();
        let values = std::sync::Arc::new(a.residual(layer + 1).to_vec());
        edits.patch(Patch { site: Site::Out, layer, head: None, neurons: None, positions: 0..clean.len(), values });
        assert_eq!(logits(&m, &corrupted, &edits), a.logits, "out of layer {layer}");
    }
    // Patching nothing of consequence (positions before the texts differ) changes nothing.
    let mut edits = Edits::new();
    let values = std::sync::Arc::new(a.x(0).to_vec());
    edits.patch(Patch { site: Site::X, layer: 0, head: None, neurons: None, positions: 0..13, values });
    assert_eq!(logits(&m, &corrupted, &edits), logits(&m, &corrupted, &Edits::new()));
}

#[test]
fn patch_report_restores_all_at_every_layer_output_and_all_neurons_equal_the_head() {
    let m = model();
    let pairs: Vec<PairTokens> = [
        (
            "ada lives in oslo. bo likes red. ada lives in ",
            "ada lives in lima. bo likes red. ada lives in ",
            "oslo",
            "lima",
        ),
        ("cy likes gold. cy likes ", "cy likes blue. cy likes ", "gold", "blue"),
    ]
    .iter()
    .map(|(a, b, x, y)| PairTokens::new(a.as_bytes(), b.as_bytes(), x.as_bytes(), y.as_bytes()).unwrap())
    .collect();
    // A random model may prefer either answer: orient each pair (by swapping its
    // texts) so that the clean text favours the clean answer more than the corrupted one.
    let diff = |t: &[u32], p: &PairTokens| {
        let l = logits(&m, t, &Edits::new());
        let last = &l[l.len() - 256..];
        last[p.clean_answer as usize] - last[p.corrupt_answer as usize]
    };
    let pairs: Vec<PairTokens> = pairs
        .into_iter()
        .map(|p| {
            if diff(&p.clean, &p) >= diff(&p.corrupted, &p) {
                p
            } else {
                PairTokens { clean: p.corrupted.clone(), corrupted: p.clean.clone(), ..p }
            }
        })
        .collect();
    let told = std::sync::Mutex::new(Vec::new());
    let r = patch(&Scope::cpu(&m), &pairs, &|done, total| told.lock().unwrap().push((done, total))).unwrap();
    let told = told.into_inner().unwrap();
    let total = told[0].1;
    assert_eq!(told.iter().map(|t| t.0).collect::<Vec<_>>(), (0..=total).collect::<Vec<_>>(), "every unit, in order");
    assert!(told.iter().all(|t| t.1 == total), "one total throughout");
    for s in r.sites.iter().filter(|s| s.site == Site::Out) {
        assert!((s.restored - 1.0).abs() < 1e-4, "{s:?}");
    }
    assert_eq!(r.neurons.last().unwrap().k, m.config.n_neurons());
    assert!((r.neurons.last().unwrap().restored - r.best.restored).abs() < 1e-5, "all neurons = the whole head");
    assert!((r.rho_rows.last().unwrap().restored - r.best_rho.restored).abs() < 1e-5, "all rows = the whole ρ");

    let same = PairTokens::new(b"abc", b"abc", b"x", b"y").unwrap();
    let err = patch(&Scope::cpu(&m), &[same], &|_, _| {}).unwrap_err().to_string();
    assert!(err.contains("does not tell"), "{err}");
    let err = PairTokens::new(b"abcd", b"abc", b"x", b"y").unwrap_err().to_string();
    assert!(err.contains("same, non-zero length"), "{err}");
}

#[test]
fn in_one_layer_the_synapse_state_is_all_the_answer_knows_of_the_past() {
    // With one layer, the answering token's own x and v are the same in both texts
    // (the same last byte), so copying ρ of every head restores the clean answer
    // exactly, and nothing before it can.
    let Model::Bdh(m) = bdh_model(tiny_config(1, 32, 2, 8), 5) else { unreachable!("a BDH") };
    let make = |a: &str, b: &str| PairTokens::new(a.as_bytes(), b.as_bytes(), b"xq", b"yq").unwrap();
    let mut pairs =
        vec![make("ada x. bo z. ada ", "ada y. bo z. ada "), make("cy xx, dee w; cy ", "cy yy, dee w; cy ")];
    for p in &mut pairs {
        let diff = |t: &[u32]| {
            let l = logits(&m, t, &Edits::new());
            l[l.len() - 256 + p.clean_answer as usize] - l[l.len() - 256 + p.corrupt_answer as usize]
        };
        if diff(&p.clean) < diff(&p.corrupted) {
            std::mem::swap(&mut p.clean, &mut p.corrupted);
        }
    }
    let r = patch(&Scope::cpu(&m), &pairs, &|_, _| {}).unwrap();
    let rho_all = r.sites.iter().find(|s| s.site == Site::Rho && s.head.is_none()).unwrap();
    println!("one layer: ρ of every head restores {:.6}", rho_all.restored);
    assert!((rho_all.restored - 1.0).abs() < 1e-4, "{rho_all:?}");
}

#[test]
fn selectivity_is_cohens_d_of_per_text_means() {
    let m = model();
    let concept = vec![toks("aaaa"), toks("aaab"), toks("abaa")];
    let background = vec![toks("cccc"), toks("ccdc"), toks("dccc")];
    let ranked = selectivity(&Scope::cpu(&m), &concept, &background, Site::X).unwrap();
    let (h, n) = (m.config.n_head, m.config.n_neurons());
    assert_eq!(ranked.len(), m.config.n_layer * h * n);
    assert!(ranked.windows(2).all(|w| w[0].selectivity >= w[1].selectivity));
    // Recompute the top neuron's d by hand.
    let top = &ranked[0];
    let mean_of = |t: &[u32]| {
        let mut a = Activations::new(&m, 1, t.len()).unwrap();
        forward(&m, t, &mut a, Pass::default()).unwrap();
        let x = a.x(top.id.layer);
        (0..t.len()).map(|ti| x[(top.id.head * t.len() + ti) * n + top.id.neuron] as f64).sum::<f64>() / t.len() as f64
    };
    // Sample means and squared deviations of the per-text means.
    let stats = |set: &[Vec<u32>]| {
        let v: Vec<f64> = set.iter().map(|t| mean_of(t)).collect();
        let mu = v.iter().sum::<f64>() / v.len() as f64;
        (mu, v.iter().map(|x| (x - mu).powi(2)).sum::<f64>())
    };
    let ((mc, sc), (mb, sb)) = (stats(&concept), stats(&background));
    assert!((top.concept - mc).abs() < 1e-9 && (top.background - mb).abs() < 1e-9);
    // Cohen's pooled variance over n₁ + n₂ − 2 = 4; the deviation floored at 1e-6 of
    // the largest mean of any neuron.
    let largest = ranked.iter().map(|s| s.concept.max(s.background)).fold(0.0, f64::max);
    let d = (mc - mb) / ((sc + sb) / 4.0).sqrt().max(1e-6 * largest);
    assert!((top.selectivity - d).abs() < 1e-6 * d.abs().max(1.0), "{} vs {d}", top.selectivity);
    assert!(top.selectivity > 0.0);
    // A concept against itself selects nothing.
    assert!(selectivity(&Scope::cpu(&m), &concept, &concept, Site::X).unwrap().iter().all(|s| s.selectivity == 0.0));
    assert!(selectivity(&Scope::cpu(&m), &[], &background, Site::X).unwrap_err().to_string().contains("both sets"));
}

#[test]
fn ablation_curve_removes_the_top_k_and_parallel_and_recurrent_scores_agree() {
    let m = model();
    let lang = SyntheticConfig { facts: 3, distance: 0, lists: 0.5, ..SyntheticConfig::default() };
    let probe = Probe::built_in(&lang, 4, 96);
    let ranked: Vec<NeuronId> = (0..12).map(|j| NeuronId { layer: 1, head: j % 2, neuron: j }).collect();
    let told = std::sync::Mutex::new(Vec::new());
    let curve = ablation_curve(&Scope::cpu(&m), &probe, &ranked, &[1, 4, 12], Site::X, 3, &|d, t| {
        told.lock().unwrap().push((d, t))
    })
    .unwrap();
    assert_eq!(told.into_inner().unwrap(), vec![(0, 3), (1, 3), (2, 3), (3, 3)]);
    assert_eq!(curve.iter().map(|p| p.k).collect::<Vec<_>>(), vec![1, 4, 12]);
    let mut acts = None;
    for p in &curve {
        let direct = score(&Scope::cpu(&m), &probe, &zeroing(&ranked[..p.k], Site::X), &mut acts).unwrap();
        assert_eq!(p.selected, direct);
    }
    // The parallel and the recurrent scoring agree (no edits).
    let (par, rec) = (
        score(&Scope::cpu(&m), &probe, &Edits::new(), &mut acts).unwrap(),
        score_stepped(&Scope::cpu(&m), &probe, &Edits::new()).unwrap(),
    );
    assert!((par.loss - rec.loss).abs() < 1e-4, "{} vs {}", par.loss, rec.loss);
    assert_eq!(par.kinds.iter().map(|k| k.answers).sum::<usize>(), rec.kinds.iter().map(|k| k.answers).sum::<usize>());
    assert!(par.kinds.iter().all(|k| matches!(k.kind, Kind::Place | Kind::Color)));
}

#[test]
fn the_random_control_draws_other_neurons_of_the_same_heads() {
    let chosen: Vec<NeuronId> = (0..6).map(|j| NeuronId { layer: j % 2, head: 1, neuron: 10 + j }).collect();
    let control = random_control(&chosen, 16, 4);
    assert_eq!(control.len(), chosen.len());
    for (c, r) in chosen.iter().zip(&control) {
        assert_eq!((c.layer, c.head), (r.layer, r.head));
        assert!(!chosen.contains(r) && r.neuron < 16, "{r:?}");
    }
    let distinct: std::collections::BTreeSet<_> = control.iter().collect();
    assert_eq!(distinct.len(), control.len());
    assert_eq!(control, random_control(&chosen, 16, 4), "seeded");
}

#[test]
fn influence_path_logits_are_those_of_the_path_removed() {
    let m = model();
    let prompt = toks("ada lives in oslo. ada lives in ");
    let path = influence_path(&Scope::cpu(&m), &prompt, u32::from(b'o'), 8).unwrap();
    assert_eq!(path.steps.len(), m.config.n_layer);
    for (i, s) in path.steps.iter().enumerate() {
        assert_eq!(s.id.layer, i);
        let ids: Vec<NeuronId> = path.steps[..=i].iter().map(|s| s.id).collect();
        let l = logits(&m, &prompt, &zeroing(&ids, Site::X));
        let v = m.config.vocab_size;
        assert!((l[(prompt.len() - 1) * v + b'o' as usize] as f64 - s.logit).abs() < 1e-6);
        assert!((s.shift - (s.logit - path.logit)).abs() < 1e-9);
    }
    // With no edits, greedy decoding continues as the logits say.
    let prepared = bdh::infer::Prepared::new(Model::Bdh(m.clone())).unwrap();
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let greedy = bdh::infer::SamplingConfig { temperature: 0.0, ..Default::default() };
    let mut sampler = bdh::infer::Sampler::new(greedy).unwrap();
    let gen = bdh::infer::Generation { max_tokens: 3, ..Default::default() };
    let g = bdh::infer::generate(&prepared, &mut state, &mut scratch, &prompt, &gen, &mut sampler, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap()
    .tokens;
    let l = logits(&m, &prompt, &Edits::new());
    assert_eq!(g[0], bdh::infer::argmax(&l[l.len() - 256..]));
}

#[test]
fn overlap_of_identical_disjoint_and_random_sets() {
    let ids =
        |r: std::ops::Range<usize>| -> Vec<NeuronId> { r.map(|j| NeuronId { layer: 0, head: 0, neuron: j }).collect() };
    let same = overlap(&ids(0..10), &ids(0..10), 10, 100, 500, 1).unwrap();
    assert_eq!((same.shared, same.jaccard), (10, 1.0));
    assert!(same.p_value < 0.01);
    let apart = overlap(&ids(0..10), &ids(10..20), 10, 100, 500, 1).unwrap();
    assert_eq!((apart.shared, apart.jaccard), (0, 0.0));
    assert!(apart.p_value > 0.5);
    // Two random 10-sets of 100 share 1 on average: Jaccard ≈ 1/19.
    assert!((same.random_mean - 1.0 / 19.0).abs() < 0.015, "{}", same.random_mean);
    assert!(overlap(&ids(0..10), &ids(0..10), 11, 100, 10, 1).is_err());
}

#[test]
fn induction_shares_on_constructed_scores() {
    // Scores of one head over a repeated sequence of length 3 (T = 5): only the
    // induction offset (t − 3 + 1) scores at t = 3, 4 → induction share 1.
    let (length, t) = (3, 5);
    let mut s = vec![0.0f32; t * t];
    for ti in length..t {
        s[ti * t + ti - length + 1] = -2.0; // magnitude counts, whatever the sign
    }
    assert_eq!(shares(&s, t, length), (1.0, 0.0));
    let mut p = vec![0.0f32; t * t];
    for ti in 1..t {
        p[ti * t + ti - 1] = 1.0;
        p[ti * t] += 1.0; // and as much to position 0
    }
    let (ind, prev) = shares(&p, t, length);
    assert!((prev - 0.5).abs() < 1e-12 && ind == 0.0, "{ind} {prev}");

    let r = induction(&Scope::cpu(&model()), 8, 3, 0).unwrap();
    let expected: f64 = (8..15).map(|t| 1.0 / t as f64).sum::<f64>() / 7.0;
    assert!((r.uniform_share - expected).abs() < 1e-12);
    assert_eq!(r.heads.len(), 3 * 2);
    assert!(r.heads.iter().all(|h| (0.0..=1.0).contains(&h.induction) && (0.0..=1.0).contains(&h.previous)));
    assert!(induction(&Scope::cpu(&model()), 1, 3, 0).is_err());
}

#[test]
fn top_contexts_are_the_largest_activations_and_facets_split_clusters() {
    let m = model();
    let text = b"the cat sat on the mat. the dog sat on the log. a cat and a dog.";
    let (layer, head) = (1, 1);
    let t: Vec<u32> = text.iter().map(|&b| u32::from(b)).collect();
    let mut a = Activations::new(&m, 1, t.len()).unwrap();
    forward(&m, &t, &mut a, Pass::default()).unwrap();
    let n = m.config.n_neurons();
    // The neuron that fires most often here, and its activations.
    let neuron = (0..n)
        .max_by_key(|&j| (0..t.len()).filter(|&ti| a.x(layer)[(head * t.len() + ti) * n + j] > 0.0).count())
        .unwrap();
    let acts: Vec<f32> = (0..t.len()).map(|ti| a.x(layer)[(head * t.len() + ti) * n + neuron]).collect();
    let r = top(&Scope::cpu(&m), text, layer, head, neuron, Site::X, 5, 2, 4).unwrap();
    assert_eq!(r.fired, acts.iter().filter(|&&x| x > 0.0).count());
    let mut sorted: Vec<f32> = acts.iter().copied().filter(|&x| x > 0.0).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let got: Vec<f32> = r.contexts.iter().map(|c| c.activation).collect();
    assert_eq!(got, sorted[..got.len()].to_vec());
    for c in &r.contexts {
        assert_eq!(acts[c.position], c.activation);
        assert_eq!(c.token.as_bytes()[0], text[c.position]);
    }
    assert_eq!(r.facets.iter().map(|f| f.size).sum::<usize>(), r.contexts.len());
    // Two orthogonal groups of vectors fall into two facets.
    let v = |i: usize, j: usize| (0..6).map(|k| if k == i || k == j { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
    let groups = kmeans_cosine(&[v(0, 1), v(4, 5), v(0, 1), v(1, 0), v(5, 4), v(4, 4)], 2, 0);
    assert!(groups[0] == groups[2] && groups[0] == groups[3] && groups[1] == groups[4] && groups[1] == groups[5]);
    assert_ne!(groups[0], groups[1]);
    assert!(top(&Scope::cpu(&m), text, 9, 0, 0, Site::X, 5, 2, 4).unwrap_err().to_string().contains("no neuron"));
}
