//! Sampling options on constructed logits, and streaming generation.

use std::ops::ControlFlow;

use bdh::data::Tokenizer;
use bdh::infer::{generate, Generation, Output, Prepared, Sampler, SamplingConfig};

use crate::common::{bdh_model, tiny_config};

fn sampler(c: SamplingConfig) -> Sampler {
    Sampler::new(c).unwrap()
}

fn counts(s: &mut Sampler, logits: &[f32], history: &[u32], n: usize) -> Vec<usize> {
    let mut c = vec![0; logits.len()];
    for _ in 0..n {
        c[s.sample(logits, history) as usize] += 1;
    }
    c
}

const LOGITS: [f32; 5] = [2.0, 1.0, 0.5, 0.0, -1.0];

#[test]
fn temperature_zero_is_argmax() {
    let mut s = sampler(SamplingConfig { temperature: 0.0, ..Default::default() });
    assert_eq!(counts(&mut s, &LOGITS, &[], 50)[0], 50);
}

#[test]
fn temperature_one_follows_the_softmax() {
    let mut s = sampler(SamplingConfig { temperature: 1.0, seed: 1, ..Default::default() });
    let n = 20000;
    let c = counts(&mut s, &LOGITS, &[], n);
    let z: f32 = LOGITS.iter().map(|l| l.exp()).sum();
    for (i, &l) in LOGITS.iter().enumerate() {
        let want = l.exp() / z;
        let got = c[i] as f32 / n as f32;
        assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
    }
}

#[test]
fn top_k_keeps_only_the_k_most_likely() {
    let mut s = sampler(SamplingConfig { temperature: 1.0, top_k: 2, seed: 2, ..Default::default() });
    let c = counts(&mut s, &LOGITS, &[], 2000);
    assert!(c[0] > 0 && c[1] > 0 && c[2..].iter().all(|&x| x == 0), "{c:?}");
}

#[test]
fn top_p_keeps_the_nucleus() {
    // Probabilities ≈ [0.53, 0.20, 0.12, 0.07, 0.03]: p = 0.6 needs the first two.
    let mut s = sampler(SamplingConfig { temperature: 1.0, top_p: 0.6, seed: 3, ..Default::default() });
    let c = counts(&mut s, &LOGITS, &[], 2000);
    assert!(c[0] > 0 && c[1] > 0 && c[2..].iter().all(|&x| x == 0), "{c:?}");
    let mut s = sampler(SamplingConfig { temperature: 1.0, top_p: 0.5, seed: 3, ..Default::default() });
    assert_eq!(counts(&mut s, &LOGITS, &[], 200)[0], 200);
}

#[test]
fn min_p_drops_unlikely_tokens() {
    // Relative to the best: [1, 0.37, 0.22, 0.14, 0.05]; min_p 0.2 keeps three.
    let mut s = sampler(SamplingConfig { temperature: 1.0, min_p: 0.2, seed: 4, ..Default::default() });
    let c = counts(&mut s, &LOGITS, &[], 3000);
    assert!(c[..3].iter().all(|&x| x > 0) && c[3..].iter().all(|&x| x == 0), "{c:?}");
}

#[test]
fn repetition_penalty_demotes_seen_tokens() {
    let mut s = sampler(SamplingConfig { temperature: 0.0, repetition_penalty: 3.0, ..Default::default() });
    // 2.0 / 3 < 1.0: token 1 wins once token 0 has been seen.
    assert_eq!(s.sample(&LOGITS, &[0]), 1);
    assert_eq!(s.sample(&LOGITS, &[4]), 0);
    // Negative logits are multiplied, moving them further down.
    let neg = [-1.0, -1.5];
    assert_eq!(s.sample(&neg, &[0]), 1);
}

#[test]
fn same_seed_same_choices() {
    let c = SamplingConfig { temperature: 1.0, seed: 9, ..Default::default() };
    let (mut a, mut b) = (sampler(c.clone()), sampler(c));
    assert_eq!(counts(&mut a, &LOGITS, &[], 1), counts(&mut b, &LOGITS, &[], 1));
    let xs: Vec<u32> = (0..50).map(|_| a.sample(&LOGITS, &[])).collect();
    let ys: Vec<u32> = (0..50).map(|_| b.sample(&LOGITS, &[])).collect();
    assert_eq!(xs, ys);
}

#[test]
fn bad_sampling_options_are_rejected() {
    for c in [
        SamplingConfig { temperature: -1.0, ..Default::default() },
        SamplingConfig { top_p: 0.0, ..Default::default() },
        SamplingConfig { min_p: 2.0, ..Default::default() },
        SamplingConfig { repetition_penalty: 0.0, ..Default::default() },
    ] {
        assert!(Sampler::new(c).is_err());
    }
}

/// Generates from an empty state with `stops`, collecting what is emitted.
fn run(prepared: &Prepared, cfg: &SamplingConfig, stops: &[String], emitted: &mut String) -> Output {
    let tok = Tokenizer::Bytes;
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let g = Generation { max_tokens: 200, stops: stops.to_vec(), ..Generation::default() };
    let prompt = tok.encode("héllo".as_bytes());
    generate(prepared, &mut state, &mut scratch, &prompt, &g, &mut sampler(cfg.clone()), |s| {
        emitted.push_str(s);
        ControlFlow::Continue(())
    })
    .unwrap()
}

#[test]
fn generation_streams_whole_utf8_and_honours_stop_strings() {
    let prepared = Prepared::new(bdh_model(tiny_config(2, 32, 2, 8), 5)).unwrap();
    let cfg = SamplingConfig { temperature: 1.5, seed: 11, ..Default::default() };
    // Random weights emit arbitrary bytes: the stream must still be valid text.
    let mut streamed = String::new();
    let first_run = run(&prepared, &cfg, &[], &mut streamed);
    let out = first_run.text;
    assert_eq!(first_run.stats.generated, 200);
    assert_eq!(Tokenizer::Bytes.decode(&first_run.tokens), out);
    assert_eq!(streamed, String::from_utf8_lossy(&out));
    // Same seed, same bytes.
    assert_eq!(run(&prepared, &cfg, &[], &mut String::new()).text, out);
    // Stop at a two-byte ASCII string that occurs in that output: generation ends
    // at its first occurrence and omits it.
    let at = (10..out.len() - 1)
        .find(|&i| out[i].is_ascii() && out[i + 1].is_ascii())
        .expect("random bytes hold an ASCII pair");
    let stop = String::from_utf8(out[at..at + 2].to_vec()).unwrap();
    let first = out.windows(2).position(|w| w == stop.as_bytes()).unwrap();
    let mut streamed = String::new();
    let cut = run(&prepared, &cfg, std::slice::from_ref(&stop), &mut streamed);
    assert_eq!(cut.text, out[..first].to_vec());
    assert_eq!(cut.stats.stopped_by, Some(stop));
    assert_eq!(streamed, String::from_utf8_lossy(&out[..first]));
}
