//! AdamW against hand-computed expectations of `torch.optim.AdamW`'s update.

use bdh::model::bdh::params::zeros;
use bdh::{AdamW, AdamWConfig};

use crate::common::tiny_config;

#[test]
fn two_adamw_steps_equal_hand_computed_values() {
    let cfg = tiny_config(1, 4, 1, 1);
    let mut params = zeros(&cfg).unwrap();
    let mut grads = params.zeros_like();
    params.data_mut().fill(1.0);
    grads.data_mut().fill(0.5);
    let mut opt = AdamW::new(AdamWConfig { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.1 }, &params);

    // Step 1: p = 1·(1 − 0.1·0.1) = 0.99; m = 0.05, v = 0.00025;
    // m̂ = 0.05/0.1 = 0.5, √v̂ = √(0.00025/0.001) = 0.5  ⇒  p = 0.99 − 0.1·0.5/(0.5 + 1e-8).
    opt.update(&mut params, &grads);
    let step1 = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8);
    // Step 2 with g = −0.25: p = p₁·0.99; m = 0.9·0.05 + 0.1·(−0.25) = 0.02;
    // v = 0.999·0.00025 + 0.001·0.0625 = 0.00031225;
    // p = p − (0.1/(1 − 0.9²))·0.02 / (√(0.00031225/(1 − 0.999²)) + 1e-8).
    grads.data_mut().fill(-0.25);
    let after1 = params.get("embed.weight").unwrap()[0] as f64;
    assert!((after1 - step1).abs() < 1e-6, "step 1: {after1} vs {step1}");
    opt.update(&mut params, &grads);
    let step2 = step1 * 0.99 - (0.1 / 0.19) * 0.02 / ((0.00031225f64 / 0.001999).sqrt() + 1e-8);
    for (slot, p) in params.tensors() {
        for &x in p {
            assert!((x as f64 - step2).abs() < 1e-6, "{}: step 2 gave {x}, expected {step2}", slot.name);
        }
    }
    assert_eq!(opt.step, 2);
    assert!((opt.m.get("lm_head").unwrap()[0] - 0.02).abs() < 1e-7);
    assert!((opt.v.get("lm_head").unwrap()[0] - 0.00031225).abs() < 1e-9);
}

#[test]
fn adamw_defaults_are_the_reference_recipe() {
    let c = AdamWConfig::default();
    assert_eq!((c.lr, c.betas, c.eps, c.weight_decay), (1e-3, (0.9, 0.999), 1e-8, 0.1));
}

#[test]
fn a_gpt_decays_matrices_only_as_nanogpt_groups_them() {
    use bdh::model::gpt::GptConfig;
    let cfg = GptConfig { block_size: 8, vocab_size: 256, n_layer: 1, n_head: 2, n_embd: 8, dropout: 0.0, bias: true };
    let mut model = bdh::Model::new(&bdh::ModelConfig::Gpt(cfg), 0).unwrap();
    model.params_mut().data_mut().fill(1.0);
    let mask = model.weight_decay_mask();
    let grads = model.params().zeros_like();
    let config = AdamWConfig { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::with_decay(config, model.params(), mask);
    let before = model.params().clone();
    opt.update(model.params_mut(), &grads);
    // Zero gradients: only the decay moves a parameter, by the factor 1 − lr·wd.
    for ((slot, after), (_, was)) in model.params().tensors().zip(before.tensors()) {
        let want = if slot.shape.len() >= 2 { 0.99 } else { 1.0 };
        assert!(after.iter().zip(was).all(|(a, b)| (a / b - want).abs() < 1e-6), "{}: {:?}", slot.name, &after[..2]);
    }
    // BDH decays every tensor, as the reference does.
    let bdh = bdh::Model::new(&bdh::ModelConfig::Bdh(tiny_config(1, 4, 1, 1)), 0).unwrap();
    assert!(bdh.weight_decay_mask().iter().all(|&d| d));
}
