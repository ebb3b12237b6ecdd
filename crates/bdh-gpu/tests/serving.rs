//! Many streams on a device stepped together (a server's), against the CPU's
//! batched step: every logit of every stream at every step, and the states they
//! hand back. Without a device each test says it skipped, unless
//! `BDH_REQUIRE_GPU=1` (CI), where that fails.
#![cfg(feature = "gpu")]

use std::path::PathBuf;

use bdh::engine::Streams;
use bdh::infer::{Prepared, State};
use bdh::io::checkpoint::load;
use bdh::model::bdh::NO_EDITS;
use bdh::{Error, Model};
use bdh_gpu::Want;

mod common;

/// Room for `slots` streams of `model` on the device here, or `None` (said) when
/// there is none and none is required.
fn streams(model: &Model, slots: usize, test: &str) -> Option<Box<dyn Streams>> {
    bdh_gpu::quiet_vulkan();
    match bdh_gpu::streams(model, Want::Any, slots) {
        Ok(s) => Some(s),
        Err(e) if std::env::var("BDH_REQUIRE_GPU").as_deref() != Ok("1") => {
            common::skipped(test, &format!("no GPU or Vulkan device ({e})"));
            None
        }
        Err(e) => panic!("BDH_REQUIRE_GPU=1 and no device: {e}"),
    }
}

fn trained() -> Model {
    load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/ref-small-trained/model.safetensors"),
        None,
    )
    .unwrap()
}

const TEXT: &[u8] = b"ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.";

fn ids(bytes: &[u8]) -> Vec<u32> {
    bytes.iter().map(|&b| b as u32).collect()
}

fn rho(state: &State) -> &[f32] {
    match state {
        State::Bdh(s) => s.rho.f32("a test").expect("an f32 state"),
        State::Gpt(_) => unreachable!("BDH"),
    }
}

#[test]
fn streams_stepped_together_on_the_device_equal_the_cpus_batched_step() {
    for model in [trained(), common::decaying()] {
        let name = model.config().describe();
        let Some(mut dev) = streams(&model, 4, "GPU streams stepped together") else { return };
        let prepared = Prepared::new(model).unwrap();
        let mut scratch = prepared.scratch();
        let v = prepared.config().vocab_size();
        // Three streams at different positions: a new one, one read on the CPU and
        // taken over, one whose prompt the device reads (in two calls).
        let mut cpu: Vec<State> = (0..3).map(|_| prepared.state().unwrap()).collect();
        prepared.prefill(&mut cpu[1], &mut scratch, &ids(&TEXT[..10]), &NO_EDITS).unwrap();
        let mut slots: Vec<usize> = cpu.iter().map(|s| dev.open(s).unwrap()).collect();
        // (the second part is longer than a prompt chunk: read in two passes)
        let long: Vec<u8> = TEXT.iter().cycle().skip(17).take(300).copied().collect();
        for part in [&TEXT[10..17], &long[..]] {
            let want = prepared.prefill(&mut cpu[2], &mut scratch, &ids(part), &NO_EDITS).unwrap().to_vec();
            let got = dev.prefill(slots[2], &ids(part)).unwrap();
            let r = common::rel(got, &want);
            assert!(r < 1e-5, "{name}: prefill logits {r:.2e}");
        }
        assert_eq!(slots.iter().map(|&s| dev.position(s).unwrap()).collect::<Vec<_>>(), [0, 10, 307]);
        let mut worst = 0f32;
        for step in 0..24 {
            if step == 12 {
                // A stream ends and a new one takes its slot.
                let back = dev.close(slots[0]).unwrap();
                assert_eq!(back.pos(), 12);
                assert!(common::rel(rho(&back), rho(&cpu[0])) < 1e-5, "{name}: ρ handed back");
                cpu[0] = prepared.state().unwrap();
                slots[0] = dev.open(&cpu[0]).unwrap();
            }
            let tokens: Vec<u32> = (0..3).map(|i| TEXT[(step * 3 + i * 7) % TEXT.len()] as u32).collect();
            let mut states: Vec<&mut State> = cpu.iter_mut().collect();
            let want = prepared.step(&mut states, &mut scratch, &tokens, &NO_EDITS).unwrap().to_vec();
            // The device's streams in another order than their slots': its rows follow the order asked.
            let order = [2, 0, 1];
            let (by_order, tokens_by_order): (Vec<usize>, Vec<u32>) =
                order.iter().map(|&i| (slots[i], tokens[i])).unzip();
            let got: Vec<f32> = dev.step(&by_order, &tokens_by_order).unwrap().to_vec();
            let got: Vec<f32> =
                (0..3).flat_map(|i| got[order.iter().position(|&o| o == i).unwrap() * v..][..v].to_vec()).collect();
            let got = &got[..];
            assert_eq!(got.len(), 3 * v);
            let r = common::rel(got, &want);
            worst = worst.max(r);
            assert!(r < 1e-5, "{name}: step {step}: logits {r:.2e} from the CPU's");
        }
        println!("{name}: 3 streams × 24 steps, logits max rel {worst:.2e} from the CPU's batched step");
        for (slot, state) in slots.iter().zip(&cpu) {
            let back = dev.close(*slot).unwrap();
            assert_eq!(back.pos(), state.pos());
            let r = common::rel(rho(&back), rho(state));
            assert!(r < 1e-5, "{name}: ρ handed back {r:.2e}");
        }
    }
}

#[test]
fn slots_are_checked_and_the_pool_is_bounded() {
    let model = common::decaying();
    let Some(mut dev) = streams(&model, 2, "GPU stream slots") else { return };
    let prepared = Prepared::new(model.clone()).unwrap();
    let a = dev.open(&prepared.state().unwrap()).unwrap();
    let b = dev.open(&prepared.state().unwrap()).unwrap();
    let full = dev.open(&prepared.state().unwrap()).unwrap_err();
    assert!(full.to_string().contains("all 2 stream slots are taken"), "{full}");
    let twice = dev.step(&[a, a], &[1, 2]).unwrap_err();
    assert!(twice.to_string().contains("twice"), "{twice}");
    assert!(dev.step(&[a, b], &[1, 300]).is_err(), "a token outside the vocabulary");
    assert!(dev.step(&[a], &[1, 2]).is_err(), "tokens without streams");
    dev.close(b).unwrap();
    assert!(dev.step(&[b], &[1]).is_err(), "a closed slot");
    assert!(dev.close(b).is_err(), "a slot closed twice");
    // A failed step changed nothing: the open stream is where it was.
    assert_eq!(dev.position(a).unwrap(), 0);
    // More slots than one buffer of the device holds: refused, saying how many fit.
    let refused = bdh_gpu::streams(&trained(), Want::Any, 1 << 24).err().expect("too many");
    assert!(matches!(refused, Error::TooLarge { .. }) && refused.to_string().contains("fit"), "{refused}");
}
