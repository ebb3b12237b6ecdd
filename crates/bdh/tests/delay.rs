//! Synaptic delays (`delays`): the config, the masked scores, and the three
//! equalities — recurrent == parallel at every position, chunks with a carried
//! state (its queue of writes not yet due) == one pass, the backward through the
//! queue's read == finite differences — alone and with the other mechanisms.

use bdh::model::bdh::{forward, Activations, Astrocyte, Bdh, BdhConfig, Decay, Pass, Trace};
use bdh::Model;

use crate::carry::{backward_matches_finite_differences, chunks_equal_one_forward};
use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};
use crate::recurrent::{prefill_then_steps, recurrent_vs_parallel};

fn delayed(delays: Vec<usize>, cfg: BdhConfig) -> BdhConfig {
    BdhConfig { delays, ..cfg }
}

fn bdh(cfg: BdhConfig, scale: f32, seed: u64) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(cfg, seed) else { unreachable!("a BDH") };
    crate::backward::scale_weights(&mut m.params, scale);
    m
}

#[test]
fn delays_are_checked_and_mask_the_scores() {
    for (delays, needle) in [(vec![1], "delays lists 1 δ for n_head = 2"), (vec![1, 70_000], "at most 65536")] {
        let e = delayed(delays, tiny_config(1, 8, 2, 2)).validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
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
}

#[test]
fn chunks_and_prefills_with_queued_writes_equal_one_pass() {
    for cfg in configs() {
        println!("delays {:?}", cfg.delays);
        chunks_equal_one_forward(&bdh(cfg.clone(), 1.0, 11));
        prefill_then_steps(cfg);
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
}
