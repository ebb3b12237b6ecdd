//! The GPT baseline: KV-cache generation against the parallel forward at every
//! position (also past block_size), the backward against finite differences with
//! and without dropout, and the errors a mismatched config or prompt gives.

use bdh::infer::{generate, Generation, Prepared, Sampler, SamplingConfig};
use bdh::io::checkpoint::{load, save};
use bdh::model::bdh::NO_EDITS;
use bdh::model::gpt::GptConfig;
use bdh::{forward, Activations, Mode, Model, ModelConfig};

use crate::backward::check_gradients;
use crate::common::{golden_dir, max_rel_diff, temp_dir, tokens};

fn tiny(block_size: usize, bias: bool, dropout: f32) -> GptConfig {
    GptConfig { block_size, vocab_size: 256, n_layer: 2, n_head: 2, n_embd: 16, dropout, bias }
}

fn gpt(cfg: GptConfig, seed: u64) -> Model {
    Model::new(&ModelConfig::Gpt(cfg), seed).unwrap()
}

/// Logits after the last of `toks` from one parallel forward.
fn last_logits(model: &Model, toks: &[u32]) -> Vec<f32> {
    let mut acts = Activations::new(model, 1, toks.len()).unwrap();
    forward(model, toks, &mut acts, Mode::Eval).unwrap();
    acts.logits()[(toks.len() - 1) * 256..].to_vec()
}

#[test]
fn kv_cache_steps_equal_the_parallel_forward_at_every_position_and_past_block_size() {
    let block = 12;
    let model = gpt(tiny(block, true, 0.0), 3);
    // Weights of std 0.2 make the attention far from uniform.
    let mut model = model;
    model.params_mut().data_mut().iter_mut().for_each(|x| *x *= 10.0);
    let toks = tokens(block + 9, 4);
    let prepared = Prepared::new(model.clone()).unwrap();
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let first = 4;
    let mut worst = 0.0f32;
    let mut got = prepared.prefill(&mut state, &mut scratch, &toks[..first], &NO_EDITS).unwrap().to_vec();
    for i in first - 1..toks.len() {
        if i >= first {
            got = prepared.step(&mut [&mut state], &mut scratch, &[toks[i]], &NO_EDITS).unwrap().to_vec();
        }
        // Past block_size, nanoGPT's generate reads the last block_size tokens.
        let window = &toks[(i + 1).saturating_sub(block)..=i];
        let rel = max_rel_diff(&got, &last_logits(&model, window));
        worst = worst.max(rel);
        assert!(rel < 1e-5, "position {i}: max rel diff {rel:.2e}");
    }
    println!(
        "GPT KV cache vs parallel forward over {} positions (block {block}): max rel diff {worst:.2e}",
        toks.len()
    );
    assert_eq!(state.pos(), toks.len());
}

#[test]
fn gpt_backward_matches_finite_differences() {
    // Weights ×3; GELU and softmax are smooth, so a larger step than BDH's (which
    // must stay clear of ReLU kinks) keeps f32 rounding out of the difference.
    check_gradients(gpt(tiny(16, true, 0.0), 11), Mode::Eval, 3.0, 1e-2);
    check_gradients(gpt(tiny(16, false, 0.0), 12), Mode::Eval, 3.0, 1e-2);
}

#[test]
fn gpt_backward_matches_finite_differences_with_dropout() {
    check_gradients(gpt(tiny(16, true, 0.2), 13), Mode::Train { seed: 9 }, 3.0, 1e-2);
}

#[test]
fn a_nanogpt_config_is_a_gpt_and_bad_ones_are_named() {
    let cfg = ModelConfig::from_json_file(&golden_dir("gpt-tiny/config.json")).unwrap();
    assert_eq!(cfg, ModelConfig::Gpt(GptConfig { n_embd: 32, ..tiny(64, true, 0.0) }));
    let dir = temp_dir("gpt-config");
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"block_size":8,"vocab_size":256,"n_layer":1,"n_head":3,"n_embd":16,"dropout":0.0,"bias":true}"#,
    )
    .unwrap();
    let e = ModelConfig::from_json_file(&path).unwrap_err().to_string();
    assert!(e.contains("n_embd = 16 is not divisible by n_head = 3"), "{e}");
    // A BDH checkpoint given with a GPT config, and the other way round.
    std::fs::copy(golden_dir("ref-tiny/model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(golden_dir("gpt-tiny/config.json"), &path).unwrap();
    let e = load(dir.path(), None).unwrap_err().to_string();
    assert!(e.contains("weights of a BDH model, but the config describes a GPT"), "{e}");
    std::fs::copy(golden_dir("gpt-tiny/model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(golden_dir("ref-tiny/config.json"), &path).unwrap();
    let e = load(dir.path(), None).unwrap_err().to_string();
    assert!(e.contains("weights of a GPT, but the config describes a BDH"), "{e}");
}

#[test]
fn a_prompt_longer_than_block_size_is_refused_and_generation_slides_past_it() {
    let model = gpt(tiny(8, false, 0.0), 5);
    let prepared = Prepared::new(model).unwrap();
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.0, ..SamplingConfig::default() }).unwrap();
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let g = Generation { max_tokens: 20, ..Generation::default() };
    let e = generate(&prepared, &mut state, &mut scratch, &tokens(9, 1), &g, &mut sampler, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("9 tokens do not fit this model's context of 8"), "{e}");
    let out = generate(&prepared, &mut state, &mut scratch, &tokens(8, 1), &g, &mut sampler, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!((out.tokens.len(), state.pos()), (20, 28));
}

#[test]
fn a_gpt_checkpoint_round_trips_with_its_head_tied() {
    let model = gpt(tiny(8, true, 0.1), 6);
    let dir = temp_dir("gpt-save");
    save(&model, dir.path()).unwrap();
    let names = bdh::io::read_safetensors(&dir.path().join("model.safetensors")).unwrap();
    assert!(names.contains_key("transformer.wte.weight") && !names.contains_key("lm_head.weight"));
    assert_eq!(load(dir.path(), None).unwrap(), model);
}
