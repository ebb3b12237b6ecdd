#![cfg(feature = "gpu")]
//! Training on the device against training on the CPU, on the first Vulkan adapter
//! here (in CI, lavapipe): every step's loss and gradient norm, the weights after,
//! with dropout, a carried state and a decay; a run moved between devices; a device
//! that fails mid-run; a batch too large. Without a device each test says it
//! skipped, unless `BDH_REQUIRE_GPU=1`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

use bdh::engine::Forward;
use bdh::model::bdh::{BdhConfig, Decay};
use bdh::train::carry::Carry;
use bdh::train::run::{train_on, Event, RunOutcome};
use bdh::train::{Accelerator, AdamW, AdamWConfig, Collective, Single, Trainer};
use bdh::{Error, Model, ModelConfig, Result, RunConfig};
use bdh_gpu::Want;

mod common;
use common::{device, rel};

/// A small BDH: 2 layers, D 32, 2 heads, N 64, with `dropout` and `decay`.
fn model(dropout: f32, decay: Decay) -> Model {
    let cfg = BdhConfig {
        n_layer: 2,
        n_embd: 32,
        n_head: 2,
        mlp_internal_dim_multiplier: 4,
        vocab_size: 256,
        dropout,
        decay,
        ..BdhConfig::default()
    };
    Model::new(&ModelConfig::Bdh(cfg), 11).unwrap()
}

fn tokens(len: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 256) as u32
        })
        .collect()
}

/// 30 steps of two micro-batches each at learning rate `lr` on the CPU and on the
/// device from the same start — or, with `nudged`, on the CPU again from weights one
/// ulp away: the worst step's relative differences of the loss and of the gradient
/// norm, and the weights' at the end (‖Δ‖ / ‖w‖).
fn thirty_steps(model: Model, carry: Option<bool>, lr: f64, nudged: bool) -> (f32, f32, f32) {
    let (b, t) = (2, 12);
    let opt = AdamWConfig { lr, ..AdamWConfig::default() };
    let mut cpu = Trainer::new(model.clone(), opt.clone(), b, t).unwrap();
    let mut gpu = if nudged { Trainer::new(model, opt, b, t) } else { Trainer::lean(model, opt, b, t) }.unwrap();
    if let Some(detach) = carry {
        let ModelConfig::Bdh(c) = cpu.model.config() else { unreachable!() };
        cpu.carry = Some(Carry::new(&ModelConfig::Bdh(c.clone()), b, detach).unwrap());
        gpu.carry = cpu.carry.clone();
    }
    if nudged {
        gpu.model.params_mut().data_mut().iter_mut().for_each(|x| *x = f32::from_bits(x.to_bits() + 1));
    } else {
        gpu.device = Some(bdh_gpu::trainer(&gpu, Want::Any).unwrap());
    }
    let (mut worst_loss, mut worst_norm) = (0f32, 0f32);
    for step in 0..30u64 {
        let mut losses = [0.0f32; 2];
        for (trainer, loss) in [&mut cpu, &mut gpu].into_iter().zip(&mut losses) {
            for micro in 0..2 {
                let ids = tokens(b * (t + 1), 100 * step + micro);
                let (x, y): (Vec<u32>, Vec<u32>) =
                    ids.chunks(t + 1).flat_map(|r| r[..t].iter().copied().zip(r[1..].iter().copied())).unzip();
                *loss += trainer.accumulate(&x, &y, 1000 + step * 2 + micro).unwrap();
            }
        }
        let norms = [&mut cpu, &mut gpu].map(|tr| tr.apply(2, 1.0, lr, &Single).unwrap() as f32);
        worst_loss = worst_loss.max((losses[1] - losses[0]).abs() / losses[0].abs());
        worst_norm = worst_norm.max((norms[1] - norms[0]).abs() / norms[0].abs());
        if step == 9 && carry.is_some() {
            cpu.restart_carry().unwrap();
            gpu.restart_carry().unwrap();
        }
    }
    gpu.sync().unwrap();
    assert_eq!(gpu.opt.step, cpu.opt.step);
    let (a, b) = (gpu.model.params().data(), cpu.model.params().data());
    let weights = (a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>()
        / b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>())
    .sqrt() as f32;
    if let (Some(g), Some(c)) = (&gpu.carry, &cpu.carry) {
        assert_eq!(g.state.pos, c.state.pos);
    }
    (worst_loss, worst_norm, weights)
}

#[test]
fn thirty_steps_on_the_device_equal_the_cpus_with_dropout_a_carried_state_and_a_decay() {
    if device("GPU training parity").is_none() {
        return;
    }
    for (what, carry, dropout, decay) in [
        ("dropout 0.1", None, 0.1, Decay::None),
        ("carried state, ALiBi decay", Some(false), 0.0, Decay::Alibi),
        ("carried state, dropout 0.1", Some(false), 0.1, Decay::None),
        ("detached carried state, dropout 0.1", Some(true), 0.1, Decay::None),
    ] {
        // Learning rate 0: the weights stay, so every step's gradient is checked as
        // tightly as one step's (the state and the moments move on).
        let (loss, norm, _) = thirty_steps(model(dropout, decay.clone()), carry, 0.0, false);
        eprintln!("{what}, lr 0: worst step's loss rel {loss:.2e}, grad norm rel {norm:.2e}");
        assert!(loss < 1e-5 && norm < 1e-5, "{what}, lr 0: {loss} {norm}");
        // Training, rounding differences grow step by step (through AdamW's elementwise
        // 1/√v most): the device may be as far from the CPU as the CPU is from itself
        // started one ulp away, and no further.
        let (loss, norm, weights) = thirty_steps(model(dropout, decay.clone()), carry, 3e-3, false);
        let (_, own_norm, own_weights) = thirty_steps(model(dropout, decay), carry, 3e-3, true);
        eprintln!(
            "{what}, lr 3e-3: worst step's loss rel {loss:.2e}, grad norm rel {norm:.2e} (the CPU one ulp away: \
             {own_norm:.2e}); weights after 30 steps rel {weights:.2e} ({own_weights:.2e})"
        );
        assert!(loss < 1e-3, "{what}: the loss of a step differs by {loss}");
        assert!(norm <= 3.0 * own_norm.max(1e-5) && weights <= 3.0 * own_weights.max(1e-5), "{what}");
    }
}

/// The tiny preset for `steps` steps, a checkpoint every 4.
fn run_config(steps: usize) -> RunConfig {
    let sets: Vec<String> = [
        "training.max_steps=16",
        "training.eval_interval=4",
        "training.eval_batches=2",
        "training.block_size=32",
        "model.dropout=0.1",
        "training.grad_accum=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut run = RunConfig::resolve("tiny", &sets).unwrap();
    run.training.max_steps = steps;
    run
}

/// Trains `run` in `dir` (resuming if asked), on the device that `open` opens or the CPU.
fn train(
    run: &RunConfig,
    dir: &std::path::Path,
    resume: bool,
    open: Option<&bdh::train::accelerator::Open>,
) -> (RunOutcome, Vec<String>) {
    let corpus = run.data.corpus(run.training.block_size).unwrap();
    let mut lost = Vec::new();
    let stop = AtomicBool::new(false);
    let outcome = train_on(run, &corpus, dir, resume, &stop, &Single, open, |e| {
        if let Event::DeviceLost { step, error } = e {
            lost.push(format!("{step}: {error}"));
        }
    })
    .unwrap();
    (outcome, lost)
}

fn on_device(t: &Trainer) -> Result<Box<dyn Accelerator>> {
    bdh_gpu::trainer(t, Want::Any)
}

fn weights(dir: &std::path::Path) -> Vec<f32> {
    bdh::io::checkpoint::load(&dir.join("last"), None).unwrap().params().data().to_vec()
}

#[test]
fn a_run_started_on_the_device_goes_on_on_the_cpu_and_back_on_the_same_curve() {
    if device("GPU resume across devices").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cpu, moved) = (tmp.path().join("cpu"), tmp.path().join("moved"));
    let (whole, _) = train(&run_config(12), &cpu, false, None);
    // 4 steps on the device, 4 on the CPU, 4 on the device again
    let (first, _) = train(&run_config(4), &moved, false, Some(&on_device));
    let (second, _) = train(&run_config(8), &moved, true, None);
    let (third, _) = train(&run_config(12), &moved, true, Some(&on_device));
    let curve: Vec<f32> = [first.losses, second.losses, third.losses].concat();
    assert_eq!(curve.len(), 12);
    let worst = curve.iter().zip(&whole.losses).map(|(a, b)| (a - b).abs() / b).fold(0f32, f32::max);
    eprintln!("device → CPU → device against the CPU alone: worst step's loss rel {worst:.2e}");
    assert!(worst < 1e-3, "{curve:?} vs {:?}", whole.losses);
    assert!(rel(&weights(&moved), &weights(&cpu)) < 1e-3);
}

/// A device trainer that fails (as a lost device does) at its `at`-th micro-batch.
struct Failing {
    inner: Box<dyn Accelerator>,
    left: usize,
}

impl Accelerator for Failing {
    fn device(&self) -> String {
        self.inner.device()
    }
    fn accumulate(&mut self, tokens: &[u32], targets: &[u32], seed: u64) -> Result<f32> {
        if self.left == 0 {
            return Err(Error::Device("the device was lost (a test's fault)".into()));
        }
        self.left -= 1;
        self.inner.accumulate(tokens, targets, seed)
    }
    fn apply(&mut self, micro: usize, clip: f64, lr: f64, c: &dyn Collective) -> Result<f64> {
        self.inner.apply(micro, clip, lr, c)
    }
    fn restart(&mut self) -> Result<()> {
        self.inner.restart()
    }
    fn store(&mut self, model: &mut Model, opt: &mut AdamW, carry: Option<&mut Carry>) -> Result<()> {
        self.inner.store(model, opt, carry)
    }
    fn forward(&mut self) -> &mut dyn Forward {
        self.inner.forward()
    }
    fn held_bytes(&self) -> u64 {
        self.inner.held_bytes()
    }
}

#[test]
fn a_device_lost_mid_run_goes_on_from_the_last_checkpoint_to_the_same_end() {
    if device("GPU device lost").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (steady, lossy) = (tmp.path().join("steady"), tmp.path().join("lossy"));
    let run = run_config(8);
    let (whole, _) = train(&run, &steady, false, Some(&on_device));
    // The first device fails at step 6's second micro-batch (after the checkpoint at 4).
    let opened = Rc::new(Cell::new(0));
    let failing = |t: &Trainer| -> Result<Box<dyn Accelerator>> {
        opened.set(opened.get() + 1);
        let inner = on_device(t)?;
        Ok(if opened.get() == 1 { Box::new(Failing { inner, left: 11 }) } else { inner })
    };
    let (outcome, lost) = train(&run, &lossy, false, Some(&failing));
    assert_eq!(opened.get(), 2, "the device is opened again once");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(lost[0].starts_with("5: ") && lost[0].contains("lost"), "{lost:?}");
    assert_eq!(outcome.step, 8);
    // The second attempt ran steps 5 to 8 from the checkpoint at 4: the same as the steady run's.
    assert_eq!(outcome.losses.len(), 4);
    let worst = outcome.losses.iter().zip(&whole.losses[4..]).map(|(a, b)| (a - b).abs() / b).fold(0f32, f32::max);
    assert!(worst < 1e-5, "{:?} vs {:?}", outcome.losses, &whole.losses[4..]);
    assert_eq!(weights(&lossy), weights(&steady));

    // A device that does not open is an error at once, not tried again.
    let tries = Cell::new(0);
    let absent = |_: &Trainer| -> Result<Box<dyn Accelerator>> {
        tries.set(tries.get() + 1);
        Err(Error::Device("no GPU found (a test's)".into()))
    };
    let corpus = run.data.corpus(run.training.block_size).unwrap();
    let stop = AtomicBool::new(false);
    let mut lost = 0;
    let outcome = train_on(&run, &corpus, &tmp.path().join("absent"), false, &stop, &Single, Some(&absent), |e| {
        lost += matches!(e, Event::DeviceLost { .. }) as usize
    });
    assert!(matches!(outcome, Err(Error::Device(_))));
    assert_eq!((tries.get(), lost), (1, 0));
}

#[test]
fn a_batch_the_device_cannot_hold_is_refused_with_the_bytes_and_the_largest_batch_that_fits() {
    if device("GPU training too large").is_none() {
        return;
    }
    let (b, t) = (4096, 1024);
    let trainer = Trainer::lean(model(0.0, Decay::None), AdamWConfig::default(), b, t).unwrap();
    let err = bdh_gpu::trainer(&trainer, Want::Any).expect_err("refused");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, Error::TooLarge { .. }), "{text}");
    assert!(text.contains("training B=4096 T=1024") && text.contains("training.batch_size="), "{text}");
}

#[test]
fn a_bf16_run_ends_within_one_percent_of_the_f32_run_after_200_steps() {
    if device("GPU bf16 training").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let end = |precision: &str| {
        let mut run = run_config(200);
        run.training.eval_interval = 200;
        run.training.eval_batches = 8;
        run.training.precision = if precision == "bf16" { bdh::Precision::Bf16 } else { bdh::Precision::F32 };
        let (outcome, _) = train(&run, &tmp.path().join(precision), false, Some(&on_device));
        let train_loss = outcome.losses[190..].iter().sum::<f32>() / 10.0;
        (outcome.last_eval.unwrap().val_loss, train_loss as f64)
    };
    let ((val32, train32), (val16, train16)) = (end("f32"), end("bf16"));
    eprintln!("after 200 steps, f32: val loss {val32:.4}, train loss {train32:.4}; bf16: {val16:.4}, {train16:.4}");
    assert!((val16 - val32).abs() / val32 < 0.01, "{val16} vs {val32}");
    assert!(val32 < 2.5, "the runs learnt something: {val32}");
}

/// Two processes as one sees them when the other's gradients are all zero: the mean
/// halves every value.
struct Halving;

impl Collective for Halving {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()> {
        buf.iter_mut().for_each(|x| *x *= 0.5);
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>, _: usize) -> Result<()> {
        Ok(())
    }
    fn seconds_waiting(&self) -> f64 {
        0.0
    }
}

#[test]
fn gradients_averaged_across_processes_pass_through_the_host_as_on_the_cpu() {
    if device("GPU data-parallel step").is_none() {
        return;
    }
    let (b, t) = (2, 12);
    let opt = AdamWConfig::default();
    let mut cpu = Trainer::new(model(0.1, Decay::None), opt.clone(), b, t).unwrap();
    let mut gpu = Trainer::lean(model(0.1, Decay::None), opt, b, t).unwrap();
    gpu.device = Some(bdh_gpu::trainer(&gpu, Want::Any).unwrap());
    for step in 0..5u64 {
        let ids = tokens(b * t + 1, step);
        let norms = [&mut cpu, &mut gpu].map(|tr| {
            tr.accumulate(&ids[..b * t], &ids[1..], step).unwrap();
            tr.accumulate(&ids[1..], &ids[..b * t], step + 100).unwrap();
            tr.apply(2, 0.5, 1e-3, &Halving).unwrap()
        });
        assert!((norms[1] - norms[0]).abs() / norms[0] < 1e-5, "step {step}: {norms:?}");
    }
    gpu.sync().unwrap();
    assert!(rel(gpu.model.params().data(), cpu.model.params().data()) < 1e-4);
}
