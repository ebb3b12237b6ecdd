//! Synaptic delays (`delays`): the config, the masked scores, and the three
//! equalities — recurrent == parallel at every position, chunks with a carried
//! state (its queue of writes not yet due) == one pass, the backward through the
//! queue's read == finite differences — alone and with the other mechanisms.

use bdh::model::bdh::delay::DELAY_NAME;
use bdh::model::bdh::{forward, Activations, Astrocyte, Bdh, BdhConfig, Decay, Delays, Pass, Trace};
use bdh::Model;

use crate::carry::{backward_matches_finite_differences, chunks_equal_one_forward};
use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};
use crate::recurrent::{prefill_then_steps, recurrent_vs_parallel};

fn delayed(delays: Vec<usize>, cfg: BdhConfig) -> BdhConfig {
    BdhConfig { delays: Delays::Fixed(delays), ..cfg }
}

/// Learned delays below `max`, set to `delta` per head.
fn learned(max: usize, delta: &[f32], cfg: BdhConfig) -> (BdhConfig, Vec<f32>) {
    let psi = delta.iter().map(|&d| (d as f64 / max as f64 / (1.0 - d as f64 / max as f64)).ln() as f32).collect();
    (BdhConfig { delays: Delays::Learned(max), ..cfg }, psi)
}

fn bdh(cfg: BdhConfig, scale: f32, seed: u64) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(cfg, seed) else { unreachable!("a BDH") };
    crate::backward::scale_weights(&mut m.params, scale);
    m
}

/// A model with learned delays at `delta` per head (fractional: between two lags).
fn bdh_learned(max: usize, delta: &[f32], cfg: BdhConfig, scale: f32, seed: u64) -> Bdh {
    let (cfg, psi) = learned(max, delta, cfg);
    let mut m = bdh(cfg, scale, seed);
    m.params.get_mut(DELAY_NAME).unwrap().copy_from_slice(&psi);
    m
}

#[test]
fn delays_are_checked_and_mask_the_scores() {
    for (delays, needle) in [
        (Delays::Fixed(vec![1]), "delays lists 1 δ for n_head = 2"),
        (Delays::Fixed(vec![1, 70_000]), "at most 65536"),
        (Delays::Learned(0), "must be in 1..=1024"),
        (Delays::Learned(5000), "must be in 1..=1024"),
    ] {
        let e = BdhConfig { delays, ..tiny_config(1, 8, 2, 2) }.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    let parse = |s: &str| serde_json::from_str::<Delays>(s);
    assert_eq!(parse(r#""learned:8""#).unwrap(), Delays::Learned(8));
    assert_eq!(parse("[0, 3]").unwrap(), Delays::Fixed(vec![0, 3]));
    assert!(parse(r#""learned""#).unwrap_err().to_string().contains("learned:M"));
    // a learned delay starts at ½ and is not weight-decayed
    let m = bdh(BdhConfig { delays: Delays::Learned(8), ..tiny_config(1, 8, 2, 2) }, 1.0, 1);
    assert!(m.delays().iter().all(|&d| (d - 0.5).abs() < 1e-5), "{:?}", m.delays());
    assert!(!*Model::Bdh(m).weight_decay_mask().last().unwrap());
    let toks = tokens(30, 1);
    let pass = |cfg: BdhConfig| {
        let m = bdh(cfg, 1.0, 3);
        let mut acts = Activations::new(&m, 1, 30).unwrap();
        forward(&m, &toks, &mut acts, Pass::default()).unwrap();
        acts
    };
    let (plain, none, late) = (
        pass(tiny_config(2, 16, 2, 4)),
        pass(delayed(vec![0, 0], tiny_config(2, 16, 2, 4))),
        pass(delayed(vec![0, 4], tiny_config(2, 16, 2, 4))),
    );
    let fractional = {
        let m = bdh_learned(8, &[0.25, 4.25], tiny_config(2, 16, 2, 4), 1.0, 3);
        let mut acts = Activations::new(&m, 1, 30).unwrap();
        forward(&m, &toks, &mut acts, Pass::default()).unwrap();
        acts
    };
    assert_eq!(plain.logits, none.logits, "a delay of 0 is bdh.py's write");
    // head 1's scores vanish for t − τ ≤ 4, and equal the plain ones further apart
    let (t, s, p) = (30, late.scores(0), plain.scores(0));
    for i in 0..t {
        for j in 0..t {
            let (head0, head1) = (i * t + j, t * t + i * t + j);
            assert_eq!(s[head0], p[head0]);
            assert_eq!(s[head1], if i > j + 4 { p[head1] } else { 0.0 }, "({i}, {j})");
        }
    }
    assert!(max_rel_diff(&late.logits, &plain.logits) > 1e-3);
    // δ = 4.25: lag 5 weighted ¾ (the first layer reads what the plain one does)
    let f = fractional.scores(0);
    for i in 0..t {
        for j in 0..t {
            let head1 = t * t + i * t + j;
            let want = match i as isize - j as isize {
                k if k <= 4 => 0.0,
                5 => 0.75 * p[head1],
                _ => p[head1],
            };
            assert!((f[head1] - want).abs() <= 1e-6 * p[head1].abs().max(1e-3), "({i}, {j}): {} {want}", f[head1]);
        }
    }
}

/// Delays alone, longer than a chunk, and with every other mechanism.
fn configs() -> Vec<BdhConfig> {
    let base = tiny_config(2, 32, 2, 8);
    vec![
        delayed(vec![0, 3], base.clone()),
        delayed(vec![50, 7], base.clone()),
        BdhConfig { decay: Decay::Alibi, ..delayed(vec![2, 5], base.clone()) },
        BdhConfig { decay: Decay::Learned, trace: Trace::Fixed(0.5), ..delayed(vec![4, 1], base.clone()) },
        BdhConfig { astrocyte: Some(Astrocyte { alpha: 0.7 }), ..delayed(vec![1, 1], base) },
    ]
}

/// Models with learned, fractional delays, with a decay and a trace too.
fn learned_models(scale: f32, seed: u64) -> Vec<Bdh> {
    let base = tiny_config(2, 32, 2, 8);
    vec![
        bdh_learned(8, &[0.3, 5.6], base.clone(), scale, seed),
        bdh_learned(4, &[1.5, 2.9], BdhConfig { decay: Decay::Learned, trace: Trace::Learned, ..base }, scale, seed),
    ]
}

#[test]
fn recurrent_equals_parallel_with_delays() {
    for (i, cfg) in configs().into_iter().enumerate() {
        let m = Model::Bdh(bdh(cfg.clone(), 1.0, i as u64));
        let toks = tokens(150, i as u64);
        let (sparse, dense) = (recurrent_vs_parallel(&m, &toks, false), recurrent_vs_parallel(&m, &toks, true));
        println!(
            "delays {:?}, decay {}: max rel diff sparse {sparse:.2e}, dense {dense:.2e}",
            cfg.delays,
            cfg.decay.describe()
        );
        assert!(sparse < 5e-6 && dense < 5e-6, "{cfg:?}: {sparse} {dense}");
    }
    for (i, m) in learned_models(1.0, 5).into_iter().enumerate() {
        println!("learned delays {:?}", m.delays());
        let (m, toks) = (Model::Bdh(m), tokens(150, i as u64));
        let (sparse, dense) = (recurrent_vs_parallel(&m, &toks, false), recurrent_vs_parallel(&m, &toks, true));
        println!("  max rel diff sparse {sparse:.2e}, dense {dense:.2e}");
        assert!(sparse < 5e-6 && dense < 5e-6, "{sparse} {dense}");
    }
}

#[test]
fn chunks_and_prefills_with_queued_writes_equal_one_pass() {
    for cfg in configs() {
        println!("delays {:?}", cfg.delays);
        chunks_equal_one_forward(&bdh(cfg.clone(), 1.0, 11));
        prefill_then_steps(cfg);
    }
    for m in learned_models(1.0, 11) {
        println!("learned delays {:?}", m.delays());
        chunks_equal_one_forward(&m);
    }
}

#[test]
fn the_backward_through_the_queue_matches_finite_differences() {
    // chunks of 9 tokens: delays of 2 and of 12 (the whole carried queue is read, and
    // nothing of the chunk is written yet)
    for delays in [vec![2, 5], vec![12, 0]] {
        for decay in [Decay::None, Decay::Learned] {
            let cfg = BdhConfig { decay, ..delayed(delays.clone(), tiny_config(2, 16, 2, 4)) };
            println!("delays {delays:?}, decay {}", cfg.decay.describe());
            crate::backward::check_gradients(Model::Bdh(bdh(cfg.clone(), 1.0, 11)), bdh::Mode::Eval, 10.0, 1e-4);
            backward_matches_finite_differences(&bdh(cfg, 10.0, 12), 1e-4);
        }
    }
    // learned δ, from an empty and a carried state (d δ through the lag m + 1's weight)
    let base = tiny_config(2, 16, 2, 4);
    for delta in [[0.4f32, 2.7], [6.5, 1.2]] {
        println!("learned delays {delta:?}");
        let model = |scale| bdh_learned(8, &delta, base.clone(), scale, 12);
        crate::backward::check_gradients(Model::Bdh(model(1.0)), bdh::Mode::Eval, 10.0, 1e-4);
        backward_matches_finite_differences(&model(10.0), 1e-4);
    }
}

#[test]
fn each_heads_delay_gradient_matches_finite_differences() {
    // One ψ at a time, a step of 3e-4: the derivative in each head's delay, alone.
    let (b, t) = (2, 9);
    let (toks, targets) = (tokens(b * t, 1), tokens(b * t, 2));
    let loss_of = |m: &Model| {
        let mut acts = bdh::Activations::new(m, b, t).unwrap();
        bdh::forward(m, &toks, &mut acts, bdh::Mode::Eval).unwrap();
        bdh::loss(&acts, &targets).unwrap() as f64
    };
    for (delta, scale) in [([0.4f32, 2.7], 10.0), ([5.5, 1.2], 10.0)] {
        let m = Model::Bdh(bdh_learned(8, &delta, tiny_config(2, 16, 2, 4), scale, 12));
        let mut acts = bdh::Activations::new(&m, b, t).unwrap();
        bdh::forward(&m, &toks, &mut acts, bdh::Mode::Eval).unwrap();
        let mut grads = bdh::Gradients::new(&m, b, t).unwrap();
        bdh::backward(&m, &acts, &targets, &mut grads).unwrap();
        for (head, &analytic) in grads.params.get(DELAY_NAME).unwrap().iter().enumerate() {
            let shifted = |sign: f32| {
                let mut p = m.clone();
                p.params_mut().get_mut(DELAY_NAME).unwrap()[head] += sign * 3e-4;
                loss_of(&p)
            };
            let numeric = (shifted(1.0) - shifted(-1.0)) / 6e-4;
            let rel = (numeric - analytic as f64).abs() / numeric.abs();
            println!(
                "δ {delta:?} ×{scale}, head {head}: analytic {analytic:+.6e} numeric {numeric:+.6e} rel {rel:.1e}"
            );
            assert!(rel < 1e-2, "head {head}: {analytic} vs {numeric}");
        }
    }
}

#[test]
fn a_state_carried_across_a_change_of_learned_delays_reads_as_the_new_ones() {
    // Training moves δ between chunks; what the state holds must not depend on it. One
    // layer, so the keys and values the state holds depend on the tokens alone.
    let base = tiny_config(1, 32, 2, 8);
    let before = bdh_learned(8, &[0.9, 3.9], base.clone(), 1.0, 4);
    let after = bdh_learned(8, &[1.1, 4.1], base, 1.0, 4);
    let (t, toks) = (40, tokens(80, 6));
    let mut state = bdh::model::bdh::State::rows(&before.config, 1).unwrap();
    let mut acts = Activations::new(&before, 1, t).unwrap();
    forward(&before, &toks[..t], &mut acts, Pass { state: Some(&mut state), ..Pass::default() }).unwrap();
    forward(&after, &toks[t..], &mut acts, Pass { state: Some(&mut state), ..Pass::default() }).unwrap();
    let mut whole = Activations::new(&after, 1, 2 * t).unwrap();
    forward(&after, &toks, &mut whole, Pass::default()).unwrap();
    let diff = max_rel_diff(&acts.logits, &whole.logits[t * 256..]);
    println!("δ 0.9, 3.9 → 1.1, 4.1 across chunks: max rel diff {diff:.2e} against one pass at the new δ");
    assert!(diff < 5e-6, "{diff}");
}

#[test]
fn a_states_size_counts_its_queue_and_a_restart_empties_it() {
    use bdh::train::carry::Carry;
    let cfg = BdhConfig { trace: Trace::Fixed(0.5), ..delayed(vec![3, 0], tiny_config(2, 16, 2, 4)) };
    let prepared = bdh::model::bdh::Prepared::new(bdh(cfg.clone(), 1.0, 1)).unwrap();
    // per (layer, head): ρ N·D, the trace N, 4 slots of N + D
    let (n, d) = (32, 16);
    assert_eq!(prepared.state_bytes(), 4 * 2 * 2 * (n * d + n + 4 * (n + d)));
    let mut carry = Carry::new(&bdh::ModelConfig::Bdh(cfg), 2, false).unwrap();
    carry.state.keys.fill(1.0);
    carry.state.queue.fill(1.0);
    carry.state.pos = 9;
    carry.restart();
    assert!(carry.state.keys.iter().chain(&carry.state.queue).all(|&x| x == 0.0) && carry.state.pos == 0);
    // a queue past memory is refused before it is made
    let huge = BdhConfig { delays: Delays::Fixed(vec![65_536; 4]), ..tiny_config(128, 1024, 4, 16) };
    let e = bdh::model::bdh::State::new(&huge).unwrap_err().to_string();
    assert!(e.contains("would need 648.0 GiB"), "{e}");
}
