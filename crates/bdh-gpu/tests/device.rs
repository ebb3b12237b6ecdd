//! The GPU backend against the CPU engine and bdh.py's fixtures, on whatever
//! device is here (in CI: lavapipe, Mesa's software Vulkan device). Without one
//! each test says it skipped, unless `BDH_REQUIRE_GPU=1` (CI), where that fails.
#![cfg(feature = "gpu")]

use bdh::engine::{Cpu, CpuReader, Device, Forward, Reader};
use bdh::eval::{evaluate_bytes, evaluate_bytes_on};
use bdh::infer::{Prepared, State};
use bdh::io::checkpoint::load;
use bdh::io::read_safetensors;
use bdh::model::bdh::NO_EDITS;
use bdh::verify::{greedy, greedy_with};
use bdh::Model;

mod common;
use common::{golden_dir, open};

#[test]
fn fixture_logits_match_the_reference() {
    for fixture in ["ref-tiny", "ref-small-trained"] {
        let dir = golden_dir(fixture);
        let model = load(&dir.join("model.safetensors"), None).unwrap();
        let Some(mut gpu) = open(&model, "GPU fixture logits") else { return };
        let path = dir.join("expected.safetensors");
        let golden = read_safetensors(&path).unwrap();
        let report = bdh::verify::verify_on(&model, Some(&mut gpu as &mut dyn Device), &golden, &path).unwrap();
        for t in &report.tensors {
            println!(
                "{fixture} on {}: {:<20} max abs {:.3e} max rel {:.3e}",
                gpu.device(),
                t.name,
                t.max_abs,
                t.max_rel
            );
        }
        if let Some(g) = &report.greedy {
            println!("{fixture}: greedy {}/{}", g.matching, g.total);
        }
        assert!(report.passed(), "{fixture}: {report:?}");
    }
}

fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

const TEXT: &str = "ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.";

#[test]
fn greedy_256_tokens_of_the_trained_fixture_equal_the_cpu() {
    let model = load(&golden_dir("ref-small-trained").join("model.safetensors"), None).unwrap();
    let Some(gpu) = open(&model, "GPU greedy continuation") else { return };
    let prepared = Prepared::new(model).unwrap();
    let prompt = bytes("ROMEO:");
    let cpu = greedy(&prepared, &prompt, 256).unwrap();
    let on_gpu = greedy_with(&mut *gpu.stream(&prepared.state().unwrap()).unwrap(), &prompt, 256).unwrap();
    assert_eq!(on_gpu, cpu, "{}", String::from_utf8_lossy(&on_gpu.iter().map(|&t| t as u8).collect::<Vec<_>>()));
}

/// Largest |a − b| over the largest |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn a_decaying_model_on_the_device_equals_the_cpu_in_parallel_and_step_by_step() {
    for model in [common::decaying(), load(&golden_dir("ref-tiny").join("model.safetensors"), None).unwrap()] {
        let Some(mut gpu) = open(&model, "GPU decaying model") else { return };
        let ids = bytes(TEXT);
        let (b, t) = (2, ids.len() / 2);
        let cpu = Cpu::new(&model).logits(&ids[..b * t], b, t).unwrap();
        let dev = gpu.logits(&ids[..b * t], b, t).unwrap();
        let r = rel(&dev, &cpu);
        println!("{}: parallel logits max rel {r:.2e} against the CPU", model.config().describe());
        assert!(r < 1e-5, "parallel: {r:.2e}");
        // Recurrent == parallel on the device, at every position of row 0.
        let v = model.config().vocab_size();
        let prepared = Prepared::new(model.clone()).unwrap();
        let mut stream = gpu.stream(&prepared.state().unwrap()).unwrap();
        for (pos, &tok) in ids[..t].iter().enumerate() {
            let step = stream.step(tok).unwrap().to_vec();
            let r = rel(&step, &dev[pos * v..(pos + 1) * v]);
            assert!(r < 1e-5, "position {pos}: step against parallel {r:.2e}");
        }
    }
}

#[test]
fn a_stream_continues_a_cpu_state_and_hands_back_the_cpus_state() {
    let model = load(&golden_dir("ref-small-trained").join("model.safetensors"), None).unwrap();
    let Some(gpu) = open(&model, "GPU state continuation") else { return };
    let prepared = Prepared::new(model).unwrap();
    let ids = bytes(TEXT);
    let (first, rest) = ids.split_at(40);
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let mut cpu = CpuReader { prepared: &prepared, state: &mut state, scratch: &mut scratch, edits: &NO_EDITS };
    cpu.prefill(first).unwrap();
    let mut dev = gpu.stream(&cpu.state().unwrap()).unwrap();
    assert_eq!(dev.position(), 40);
    let want = cpu.prefill(rest).unwrap().to_vec();
    let got = dev.prefill(rest).unwrap().to_vec();
    assert!(rel(&got, &want) < 1e-5, "logits after the text: {:.2e}", rel(&got, &want));
    let (State::Bdh(a), State::Bdh(b)) = (dev.state().unwrap(), cpu.state().unwrap()) else { unreachable!("BDH") };
    assert_eq!(a.pos, b.pos);
    assert!(
        rel(&a.rho.to_f32().unwrap(), &b.rho.to_f32().unwrap()) < 1e-5,
        "ρ: {:.2e}",
        rel(&a.rho.to_f32().unwrap(), &b.rho.to_f32().unwrap())
    );
}

#[test]
fn eval_loss_on_the_device_equals_the_cpu() {
    let model = load(&golden_dir("ref-small-trained").join("model.safetensors"), None).unwrap();
    let Some(mut gpu) = open(&model, "GPU eval loss") else { return };
    let text = TEXT.repeat(12);
    let cpu = evaluate_bytes(&model, text.as_bytes(), 64, 4, &mut |_, _| {}).unwrap();
    let dev = evaluate_bytes_on(&mut gpu, 256, text.as_bytes(), (4, 64), &mut |_, _| {}).unwrap();
    let r = (dev.loss - cpu.loss).abs() / cpu.loss;
    println!("eval loss: CPU {:.6}, GPU {:.6}, rel {r:.2e}", cpu.loss, dev.loss);
    assert!(r < 1e-4);
    assert_eq!((dev.tokens, dev.windows), (cpu.tokens, cpu.windows));
}

#[test]
fn what_the_device_cannot_hold_is_refused_with_the_bytes_it_needs_and_big_batches_split() {
    let model = common::decaying();
    let Some(mut gpu) = open(&model, "GPU size refusal") else { return };
    // One sequence whose H × T × T scores pass any device's largest buffer (64 GiB).
    let t = 1 << 16;
    let err = gpu.logits(&vec![0; t], 1, t).unwrap_err();
    assert!(matches!(err, bdh::Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("attention scores") && err.to_string().contains("64.0 GiB"), "{err}");
    // Several sequences that fit one at a time run one pass per group of rows.
    let ids = bytes(TEXT);
    let t = ids.len() / 4;
    assert_eq!(gpu.logits(&ids[..4 * t], 4, t).unwrap().len(), 4 * t * 256);
    // So do more rows than a launch grid takes along a side (B·H > 65535): the loss
    // is the CPU's.
    let (b, t) = (20_000, 2);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % 256) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 13 % 256) as u32).collect();
    let (cpu, dev) =
        (Cpu::new(&model).loss_sum(&ids, &targets, b, t).unwrap(), gpu.loss_sum(&ids, &targets, b, t).unwrap());
    assert!((dev - cpu).abs() / cpu < 1e-5, "CPU {cpu}, GPU {dev}");
}

#[test]
fn a_long_prompt_is_read_in_parallel_chunks_with_the_state_carried() {
    for model in [common::decaying(), load(&golden_dir("ref-tiny").join("model.safetensors"), None).unwrap()] {
        let Some(gpu) = open(&model, "GPU chunked prefill") else { return };
        let prepared = Prepared::new(model).unwrap();
        // Past one chunk of 256, after a state that has read something already.
        let ids = bytes(&TEXT.repeat(4));
        let (head, rest) = ids.split_at(7);
        let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
        let mut cpu = CpuReader { prepared: &prepared, state: &mut state, scratch: &mut scratch, edits: &NO_EDITS };
        cpu.prefill(head).unwrap();
        let mut dev = gpu.stream(&cpu.state().unwrap()).unwrap();
        let want = cpu.prefill(rest).unwrap().to_vec();
        let got = dev.prefill(rest).unwrap().to_vec();
        assert!(rel(&got, &want) < 1e-5, "logits after {} tokens: {:.2e}", ids.len(), rel(&got, &want));
        let (State::Bdh(a), State::Bdh(b)) = (dev.state().unwrap(), cpu.state().unwrap()) else { unreachable!("BDH") };
        assert_eq!(a.pos, ids.len());
        assert!(
            rel(&a.rho.to_f32().unwrap(), &b.rho.to_f32().unwrap()) < 1e-5,
            "ρ: {:.2e}",
            rel(&a.rho.to_f32().unwrap(), &b.rho.to_f32().unwrap())
        );
        // And the next step reads it as the CPU's does.
        let (want, got) = (cpu.step(10).unwrap().to_vec(), dev.step(10).unwrap().to_vec());
        assert!(rel(&got, &want) < 1e-5, "the step after: {:.2e}", rel(&got, &want));
    }
}

#[test]
fn the_microscopes_forward_on_the_device_applies_every_edit_as_the_cpu_does() {
    use bdh::engine::Traced;
    use bdh::model::bdh::{forward, Action, Activations, Edit, Edits, Pass, Patch, Site, State};
    let model = load(&golden_dir("ref-small-trained").join("model.safetensors"), None).unwrap();
    let Some(mut gpu) = open(&model, "GPU microscope edits") else { return };
    let Model::Bdh(bdh) = &model else { unreachable!("BDH") };
    let ids = bytes(TEXT);
    let (a, b) = (&ids[..24], &ids[24..48]);
    // Activation patching takes x of layer 1 from another text.
    let mut source = Activations::new(bdh, 1, 24).unwrap();
    forward(bdh, b, &mut source, Pass::default()).unwrap();
    let mut edits = Edits::new();
    let edit = |site, layer, head, neuron, position, action| Edit { site, layer, head, neuron, position, action };
    edits.push(edit(Site::Y, Some(0), Some(1), None, None, Action::Zero));
    edits.push(edit(Site::Xy, Some(1), None, Some(3), Some(5), Action::Set(0.5)));
    edits.push(edit(Site::Out, Some(0), None, Some(2), None, Action::Set(-1.0)));
    let values = std::sync::Arc::new(source.x(1).to_vec());
    edits.patch(Patch { site: Site::X, layer: 1, head: Some(0), neurons: None, positions: 2..6, values });
    // Two chunks with the state carried, as the synapse analyses read a text.
    let (mut on_cpu, mut on_gpu) = (State::new(&bdh.config).unwrap(), State::new(&bdh.config).unwrap());
    for chunk in [a, b] {
        let (mut want, mut got) = (Activations::new(bdh, 1, 24).unwrap(), Activations::new(bdh, 1, 24).unwrap());
        forward(bdh, chunk, &mut want, Pass { edits: &edits, state: Some(&mut on_cpu), ..Pass::default() }).unwrap();
        let pass = Pass { edits: &edits, state: Some(&mut on_gpu), ..Pass::default() };
        Traced::forward(&mut gpu, chunk, &mut got, pass).unwrap();
        let mut worst = rel(&got.logits, &want.logits);
        for l in 0..bdh.config.n_layer {
            for (g, w) in [(got.x(l), want.x(l)), (got.y(l), want.y(l)), (got.residual(l + 1), want.residual(l + 1))] {
                worst = worst.max(rel(g, w));
            }
        }
        println!("edited forward on the device: every kept activation within {worst:.1e} of the CPU's");
        assert!(worst < 1e-5, "{worst:.2e}");
        assert!(got.y(0)[24 * bdh.config.n_neurons()..2 * 24 * bdh.config.n_neurons()].iter().all(|&v| v == 0.0));
    }
    assert_eq!(on_gpu.pos, 48);
    assert!(
        rel(&on_gpu.rho.to_f32().unwrap(), &on_cpu.rho.to_f32().unwrap()) < 1e-5,
        "ρ carried: {:.2e}",
        rel(&on_gpu.rho.to_f32().unwrap(), &on_cpu.rho.to_f32().unwrap())
    );
}

#[test]
fn a_layer_without_position_runs_on_the_device_and_other_variants_are_refused() {
    use bdh::model::bdh::{BdhConfig, Norm, Position, Residual};
    let base = match common::decaying() {
        Model::Bdh(m) => m.config,
        Model::Gpt(_) => unreachable!("a BDH"),
    };
    // No position is RoPE with every frequency zero: the device computes it as it is.
    let cfg = BdhConfig { position: Position::None, ..base.clone() };
    let model = Model::new(&bdh::ModelConfig::Bdh(cfg), 3).unwrap();
    let Some(mut gpu) = open(&model, "GPU layer without position") else { return };
    let toks = bytes(TEXT);
    let (t, b) = (toks.len(), 1);
    let on_gpu = gpu.logits(&toks, b, t).unwrap();
    let on_cpu = Cpu::new(&model).logits(&toks, b, t).unwrap();
    let diff = common::rel(&on_gpu, &on_cpu);
    println!("position = \"none\" on {}: logits max rel diff {diff:.2e}", gpu.device());
    assert!(diff < 1e-4, "{diff}");
    for cfg in [BdhConfig { norm: Norm::None, ..base.clone() }, BdhConfig { residual: Residual::N, ..base.clone() }] {
        let model = Model::new(&bdh::ModelConfig::Bdh(cfg), 3).unwrap();
        let err = bdh_gpu::Gpu::open(&model, bdh_gpu::Want::Any).err().expect("refused").to_string();
        assert!(err.contains("not bdh.py's") && err.contains("--device cpu"), "{err}");
        let err = bdh_gpu::trains(&model).unwrap_err().to_string();
        assert!(err.contains("not bdh.py's"), "{err}");
    }
    // the synapse mechanisms the device does not run: a learned decay, the write key's site
    use bdh::model::bdh::{Astrocyte, Decay, Delays, Trace};
    for (cfg, says) in [
        (BdhConfig { decay: Decay::Learned, ..base.clone() }, "learns its decay"),
        (BdhConfig { delays: Delays::Learned(4), ..base.clone() }, "delays its writes"),
        (BdhConfig { trace: Trace::Fixed(0.5), ..base.clone() }, "a trace or an astrocyte"),
        (BdhConfig { astrocyte: Some(Astrocyte { alpha: 0.9 }), ..base }, "a trace or an astrocyte"),
    ] {
        let model = Model::new(&bdh::ModelConfig::Bdh(cfg), 3).unwrap();
        let err = bdh_gpu::Gpu::open(&model, bdh_gpu::Want::Any).err().expect("refused").to_string();
        assert!(err.contains(says) && err.contains("--device cpu"), "{err}");
        assert!(bdh_gpu::trains(&model).unwrap_err().to_string().contains(says));
    }
}
