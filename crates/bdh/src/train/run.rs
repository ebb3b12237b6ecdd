//! A training run: batches, schedule, evaluation, samples, metrics and checkpoints
//! in a run directory ([`RunDir`] says what it holds where), resumable exactly.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::carry::Carry;
use super::{learning_rate, parallel, AdamWConfig, Collective, RunConfig, Single, Trainer};
use crate::data::{Corpus, Tokenizer};
use crate::error::{Error, Result};
use crate::eval::{evaluate_on_until, evaluate_until, EvalMetrics};
use crate::infer::{generate, Generation, Prepared, Sampler, SamplingConfig};
use crate::io::checkpoint::{self, replace_dir};
use crate::io::run_dir::{Checkpoint, MetricsLog, RunDir};
use crate::io::{encode_safetensors, read_safetensors, write_atomic};
use crate::model::Model;

/// Steps the training loss reported beside an evaluation is averaged over.
pub const TRAIN_LOSS_STEPS: usize = 20;

/// What `trainer.json` records: enough to continue exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed (the next batch index).
    pub step: usize,
    /// Best validation loss so far.
    pub best_val_loss: Option<f64>,
    /// End-of-step work for `step` that a stop interrupted: done first on resume,
    /// so that the run records what an uninterrupted one does.
    #[serde(default, skip_serializing_if = "Unfinished::is_none")]
    pub unfinished: Unfinished,
}

/// The end-of-step work still to do for a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Unfinished {
    /// The evaluation, with the checkpoints it writes.
    pub eval: bool,
    /// The sample.
    pub sample: bool,
}

impl Unfinished {
    fn is_none(&self) -> bool {
        !self.eval && !self.sample
    }
}

/// Something a run reports as it goes.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// The run starts at `step` of `max_steps`.
    Start {
        /// First step to run.
        step: usize,
        /// Last step.
        max_steps: usize,
        /// A run to resume that had no checkpoint yet (stopped before its first),
        /// started again from its saved config.
        restarted: bool,
        /// The PID of a process that held the run's lock and no longer runs, whose
        /// stale lock this run took over.
        took_over_lock: Option<u32>,
        /// The device the steps run on, if not the CPU (e.g. `GPU (CUDA: NVIDIA H200)`).
        device: Option<String>,
    },
    /// An optimizer step finished.
    Step {
        /// Steps completed.
        step: usize,
        /// Mean training loss of the step.
        loss: f32,
        /// Learning rate used.
        lr: f64,
        /// Gradient norm before clipping.
        grad_norm: f64,
        /// Training throughput of the step.
        tokens_per_second: f64,
    },
    /// An evaluation finished.
    Eval(&'a EvalMetrics),
    /// A sample was generated.
    Sample {
        /// Steps completed.
        step: usize,
        /// The prompt.
        prompt: &'a str,
        /// What the model wrote after it.
        text: &'a str,
    },
    /// A checkpoint was written.
    Saved(&'a Path),
    /// The device the run trained on failed; the run goes on from its last
    /// checkpoint on a device opened again.
    DeviceLost {
        /// Steps completed when it failed.
        step: usize,
        /// What failed.
        error: String,
    },
}

/// Times a run goes on after its device fails before it gives up.
pub const DEVICE_RETRIES: usize = 3;

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// Steps completed.
    pub step: usize,
    /// Whether a stop request ended it early.
    pub interrupted: bool,
    /// The last evaluation.
    pub last_eval: Option<EvalMetrics>,
    /// Every step's training loss, in order, from the first step this call ran.
    pub losses: Vec<f32>,
    /// Wall time of this call.
    pub seconds: f64,
}

/// Trains per `run` on `corpus` in run directory `dir`, continuing from its last
/// checkpoint if `resume`. Checks `stop` before each step and between its
/// micro-batches, and saves before returning early.
pub fn train(
    run: &RunConfig,
    corpus: &Corpus,
    dir: &Path,
    resume: bool,
    stop: &AtomicBool,
    on: impl FnMut(Event),
) -> Result<RunOutcome> {
    train_parallel(run, corpus, dir, resume, stop, &Single, on)
}

/// [`train`] as one of the processes of `collective` (see [`parallel`]): each
/// draws `training.batch_size` rows of every step's batch, gradients are averaged
/// over them, and process 0 alone reads and writes `dir` and reports evaluations
/// and samples; the others report steps only.
pub fn train_parallel(
    run: &RunConfig,
    corpus: &Corpus,
    dir: &Path,
    resume: bool,
    stop: &AtomicBool,
    collective: &dyn Collective,
    on: impl FnMut(Event),
) -> Result<RunOutcome> {
    train_on(run, corpus, dir, resume, stop, collective, None, on)
}

/// [`train_parallel`] with the steps on a device that `device` opens (see
/// [`super::accelerator`]); `None`: on the CPU. If the device fails mid-run
/// ([`Error::Device`]), the run goes on from its last checkpoint on a device
/// opened again, up to [`DEVICE_RETRIES`] times ([`Event::DeviceLost`] says so);
/// the outcome is then the last attempt's. A device trains one process's run.
#[allow(clippy::too_many_arguments)]
pub fn train_on(
    run: &RunConfig,
    corpus: &Corpus,
    dir: &Path,
    mut resume: bool,
    stop: &AtomicBool,
    collective: &dyn Collective,
    device: Option<&super::accelerator::Open>,
    mut on: impl FnMut(Event),
) -> Result<RunOutcome> {
    let mut failures = 0;
    loop {
        let mut reached = 0;
        let mut watch = |e: Event| {
            if let Event::Start { step, .. } | Event::Step { step, .. } = e {
                reached = step;
            }
            on(e)
        };
        // Only a device that opened and then failed is opened again: one that does not
        // open is an error at once.
        let opened = std::cell::Cell::new(false);
        let open = |t: &Trainer| {
            let d = device.expect("only called with a device")(t)?;
            opened.set(true);
            Ok(d)
        };
        let counted = device.map(|_| &open as &super::accelerator::Open);
        match train_once(run, corpus, dir, resume, stop, collective, counted, &mut watch) {
            // (not after a stop was asked for: a device failing as the run saves is not retried)
            Err(Error::Device(error)) if opened.get() && !stop.load(Ordering::SeqCst) && failures < DEVICE_RETRIES => {
                failures += 1;
                on(Event::DeviceLost { step: reached, error });
                resume = true;
            }
            outcome => return outcome,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn train_once(
    run: &RunConfig,
    corpus: &Corpus,
    dir: &Path,
    resume: bool,
    stop: &AtomicBool,
    collective: &dyn Collective,
    device: Option<&super::accelerator::Open>,
    on: &mut dyn FnMut(Event),
) -> Result<RunOutcome> {
    let started = Instant::now();
    let tc = &run.training;
    let (b, t) = (tc.batch_size, tc.block_size);
    let opt = AdamWConfig { lr: tc.lr, betas: (tc.beta1, tc.beta2), eps: tc.eps, weight_decay: tc.weight_decay };
    parallel::check_config(collective, run)?;
    if device.is_some() && collective.size() > 1 {
        return Err(Error::Config(
            "training on several processes runs on the CPU: a device per process is not supported yet (drop --device)"
                .into(),
        ));
    }
    if tc.precision != super::Precision::F32 && device.is_none() {
        return Err(Error::Config(
            "training.precision = \"bf16\" trains on a GPU: add --device gpu, or train in f32 on the CPU with --set \
             training.precision=f32"
                .into(),
        ));
    }
    let writer = collective.rank() == 0;
    let run_dir = match (writer, resume) {
        (false, _) => RunDir::named(dir),
        (true, true) => RunDir::open_to_resume(dir)?,
        (true, false) => RunDir::create(dir)?,
    };
    // Held until this function returns, whichever way: one writer per run.
    let lock = if writer { Some(run_dir.lock()?) } else { None };
    let took_over_lock = lock.as_ref().and_then(|l| l.took_over());
    // A run stopped before its first checkpoint holds no weights to lose: it starts
    // again from its config (the other processes take process 0's start anyway).
    let restarted = writer && resume && std::fs::symlink_metadata(run_dir.checkpoint_dir(Checkpoint::Last)).is_err();
    let resume = resume && !restarted;
    let last_dir = run_dir.checkpoint_dir(Checkpoint::Last);
    // With the steps on a device, the host holds no buffers for them.
    let new = |model: Model| {
        if device.is_some() {
            Trainer::lean(model, opt.clone(), b, t)
        } else {
            Trainer::new(model, opt.clone(), b, t)
        }
    };
    let (mut trainer, mut state) = if !writer {
        (new(super::setup::fresh(run)?)?, TrainerState::default())
    } else if resume {
        load_state(run, &last_dir, new)?
    } else {
        let model = match &tc.init_from {
            None => super::setup::fresh(run)?,
            Some(path) => {
                let model = checkpoint::load(&checkpoint::model_path(path)?, None)?;
                if model.config() != run.model {
                    return Err(Error::Config(format!(
                        "{}: the model to start from is a {}, the run's model a {}",
                        path.display(),
                        model.config().describe(),
                        run.model.describe()
                    )));
                }
                model
            }
        };
        let mut trainer = new(model)?;
        if tc.carry_state {
            trainer.carry = Some(Carry::new(&run.model, b, tc.detach_state)?);
        }
        (trainer, TrainerState::default())
    };
    let tokenizer = corpus.tokenizer();
    tokenizer.check(&run.model)?;
    parallel::share_start(collective, &mut trainer, &mut state)?;
    (trainer.precision, trainer.rewire) = (tc.precision, tc.rewire);
    super::hlop::prepare(tc.continual, tc.init_from.as_deref(), (run_dir.path(), writer), resume, &mut trainer)?;
    if let Some(open) = device {
        if trainer.projection.is_some() {
            return Err(Error::Device(
                "training.continual projects each gradient on the CPU, which a GPU's steps bypass: use --device cpu"
                    .into(),
            ));
        }
        trainer.device = Some(open(&trainer)?);
    }
    let mut metrics = MetricsLog::nowhere();
    if writer {
        tokenizer.save(run_dir.path())?;
        run_dir.write_config(run)?;
        metrics = run_dir.metrics_log(state.step)?;
    }
    // A run that keeps models keeps its start too (step 0), and its evaluations say how
    // far the weights moved from it.
    let start = match tc.keep_every {
        0 => None,
        _ => {
            let kept = run_dir.checkpoint_dir(Checkpoint::Step(0));
            if writer && state.step == 0 {
                save_model_dir(&trainer.model, &tokenizer, &kept)?;
            }
            match &trainer.model {
                Model::Bdh(_) if state.step == 0 => Some(trainer.model.clone()),
                Model::Bdh(_) if run_dir.has(Checkpoint::Step(0)) => Some(checkpoint::load(&kept, None)?),
                _ => None,
            }
        }
    };
    let rows = parallel::rows(collective, b);

    let on_device = trainer.device.as_ref().map(|d| d.device());
    on(Event::Start { step: state.step, max_steps: tc.max_steps, restarted, took_over_lock, device: on_device });
    let mut losses = Vec::new();
    let mut last_eval = None;
    let mut interrupted = false;
    let mut recent = std::collections::VecDeque::with_capacity(TRAIN_LOSS_STEPS);
    if writer && resume {
        // The losses of the steps before, as an uninterrupted run holds them (the log
        // has f32 losses in their shortest form: back to f32 is exact).
        let steps = run_dir.metrics()?.steps;
        let before = steps.iter().filter(|r| r.step <= state.step as f64).map(|r| r.loss as f32 as f64);
        recent.extend(before.rev().take(TRAIN_LOSS_STEPS).collect::<Vec<_>>().into_iter().rev());
    }
    // What a stopped run left undone of its last step's end, done first; `last`
    // says so until it is done.
    let mut due = std::mem::take(&mut state.unfinished);
    let mut last_says_due = !due.is_none();
    // Only a process alone stops inside a step's work; several agree at a step's
    // start, so none waits on one that has left.
    let alone = collective.size() == 1;
    let stopped = || alone && stop.load(Ordering::SeqCst);
    loop {
        if due.eval {
            // K times the batches of B rows: the validation rows one process of K·B rows scores.
            let batches = tc.eval_batches * collective.size();
            trainer.sync()?;
            let evaluated = match &mut trainer.device {
                None => evaluate_until(&trainer.model, corpus, &mut trainer.acts, batches, state.step, &stopped)?,
                Some(device) => {
                    let vocab = trainer.model.config().vocab_size();
                    evaluate_on_until(device.forward(), corpus, vocab, (b, t), batches, state.step, &stopped)?
                }
            };
            let Some(mut m) = evaluated else {
                interrupted = true;
                break;
            };
            m.train_loss = Some(recent.iter().sum::<f64>() / recent.len().max(1) as f64);
            if let Model::Bdh(bdh) = &trainer.model {
                if bdh.config.decay.is_learned() {
                    (m.retention, m.retention_spread) = bdh.retention_by_head();
                }
                if bdh.config.delays.is_learned() {
                    m.delays = bdh.delays();
                }
                m.firing = bdh.firing();
                if let (Some(Model::Bdh(start)), true) = (&start, writer) {
                    m.weights = crate::microscope::weights::weight_change(start, bdh)?;
                }
            }
            metrics.write(&serde_json::to_value(&m).expect("metrics serialise"))?;
            on(Event::Eval(&m));
            ensure_finite(&trainer, state.step, &last_dir)?; // before `best` or `last` could get them
            if m.val_loss.is_finite() && state.best_val_loss.is_none_or(|best| m.val_loss < best) {
                state.best_val_loss = Some(m.val_loss);
                save_model_dir(&trainer.model, &tokenizer, &run_dir.checkpoint_dir(Checkpoint::Best))?;
            }
            if tc.keep_every > 0 && state.step % tc.keep_every == 0 {
                let kept = run_dir.checkpoint_dir(Checkpoint::Step(state.step));
                save_model_dir(&trainer.model, &tokenizer, &kept)?;
            }
            due.eval = false;
            save_state(&trainer, &tokenizer, &state, &last_dir)?;
            last_says_due = false;
            on(Event::Saved(&last_dir));
            last_eval = Some(m);
        }
        if due.sample {
            trainer.sync()?;
            let Some((prompt, text)) = sample_until(&trainer.model, corpus, tc.sample_tokens, tc.seed, &stopped)?
            else {
                interrupted = true;
                break;
            };
            metrics.write(&serde_json::json!({"step": state.step, "sample_prompt": prompt, "sample": text}))?;
            on(Event::Sample { step: state.step, prompt: &prompt, text: &text });
            due.sample = false;
            if last_says_due {
                save_state(&trainer, &tokenizer, &state, &last_dir)?;
                last_says_due = false;
            }
        }
        if state.step >= tc.max_steps {
            break;
        }
        if parallel::any(collective, stop.load(Ordering::SeqCst))? {
            interrupted = true;
            break;
        }
        let (t0, waited) = (Instant::now(), collective.seconds_waiting());
        let lr = learning_rate(tc, state.step);
        let mut loss = 0.0f32;
        for micro in 0..tc.grad_accum {
            // A stop between micro-batches drops the half-accumulated gradients: the
            // step is taken whole on resume.
            if micro > 0 && stopped() {
                interrupted = true;
                break;
            }
            let index = (state.step * tc.grad_accum + micro) as u64;
            let batch = if trainer.carry.is_none() {
                corpus.train_rows(tc.seed, index, rows.clone(), t)
            } else {
                let (batch, restart) = corpus.stream_batch(tc.seed, index, b, t)?;
                if restart {
                    trainer.restart_carry()?;
                }
                batch
            };
            let dropout_seed = parallel::dropout_seed(tc.seed, index, collective.rank());
            loss += trainer.accumulate(&batch.tokens, &batch.targets, dropout_seed)?;
        }
        if interrupted {
            break;
        }
        let loss = parallel::mean(collective, loss / tc.grad_accum as f32)?;
        if !loss.is_finite() {
            return Err(Error::Diverged { step: state.step + 1, loss, kept: kept_checkpoint(&last_dir) });
        }
        let grad_norm = trainer.apply(tc.grad_accum, tc.grad_clip, lr, collective)?;
        state.step += 1;
        losses.push(loss);
        if recent.len() == TRAIN_LOSS_STEPS {
            recent.pop_front();
        }
        recent.push_back(loss as f64);
        let seconds = t0.elapsed().as_secs_f64();
        let tokens_per_second = (b * t * tc.grad_accum * collective.size()) as f64 / seconds;
        let mut record = serde_json::json!({"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_second": tokens_per_second});
        if collective.size() > 1 {
            // Seconds of the step spent averaging the loss and the gradients, waiting
            // for the slowest process included.
            record["all_reduce_seconds"] = (collective.seconds_waiting() - waited).into();
            record["step_seconds"] = seconds.into();
        }
        metrics.write(&record)?;
        on(Event::Step { step: state.step, loss, lr, grad_norm, tokens_per_second });

        let last_step = state.step == tc.max_steps;
        due = Unfinished {
            eval: writer && (state.step % tc.eval_interval == 0 || last_step),
            sample: writer && ((tc.sample_interval > 0 && state.step % tc.sample_interval == 0) || last_step),
        };
    }
    if interrupted && writer {
        trainer.sync()?;
        state.unfinished = due;
        save_state(&trainer, &tokenizer, &state, &last_dir)?;
        on(Event::Saved(&last_dir));
    }
    Ok(RunOutcome { step: state.step, interrupted, last_eval, losses, seconds: started.elapsed().as_secs_f64() })
}

/// A sample from the corpus's sample prompt: (prompt, continuation), or `None`
/// if `stopped` says so between two tokens.
fn sample_until(
    model: &Model,
    corpus: &Corpus,
    tokens: usize,
    seed: u64,
    stopped: &dyn Fn() -> bool,
) -> Result<Option<(String, String)>> {
    let mut prompt = corpus.sample_prompt();
    if let Some(context) = model.config().max_context() {
        // A GPT's prompt must fit its context, with room to write: keep the end.
        let keep = (context / 2).max(1);
        if prompt.len() > keep {
            // The first character boundary at or after len − keep (the end is one).
            let cut =
                (prompt.len() - keep..=prompt.len()).find(|&i| prompt.is_char_boundary(i)).unwrap_or(prompt.len());
            prompt = prompt[cut..].to_string();
            if prompt.is_empty() {
                prompt = " ".into();
            }
        }
    }
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.8, top_k: 40, seed, ..SamplingConfig::default() })?;
    let prepared = Prepared::new(model.clone())?;
    let (mut state, mut scratch) = (prepared.state()?, prepared.scratch());
    let tok = corpus.tokenizer();
    let g = Generation { max_tokens: tokens, tokenizer: tok.clone(), ..Generation::default() };
    let out = generate(&prepared, &mut state, &mut scratch, &tok.encode(prompt.as_bytes()), &g, &mut sampler, |_| {
        if stopped() {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })?;
    Ok((!out.stats.cancelled).then(|| (prompt, String::from_utf8_lossy(&out.text).into_owned())))
}

/// A checkpoint directory: the model, and the tokenizer it reads with (if not bytes).
fn save_model_dir(model: &Model, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    replace_dir(dir, |tmp| save_model(model, tokenizer, tmp))
}

fn save_model(model: &Model, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    checkpoint::save(model, dir)?;
    tokenizer.save(dir)
}

/// An error unless every parameter and optimizer moment is a finite number: a
/// checkpoint never holds anything else.
fn ensure_finite(trainer: &Trainer, step: usize, last_dir: &Path) -> Result<()> {
    let buffers = [trainer.model.params(), &trainer.opt.m, &trainer.opt.v];
    if buffers.iter().all(|p| p.data().iter().all(|v| v.is_finite())) {
        return Ok(());
    }
    Err(Error::NonFinite { step, kept: kept_checkpoint(last_dir) })
}

/// What a run that stops on bad numbers keeps, in words.
fn kept_checkpoint(last_dir: &Path) -> String {
    if last_dir.exists() {
        format!("the last good checkpoint (from the last evaluation) is kept in {}", last_dir.display())
    } else {
        "no checkpoint had been written yet".to_string()
    }
}

fn save_state(trainer: &Trainer, tokenizer: &Tokenizer, state: &TrainerState, dir: &Path) -> Result<()> {
    ensure_finite(trainer, state.step, dir)?;
    replace_dir(dir, |tmp| {
        save_model(&trainer.model, tokenizer, tmp)?;
        let mut tensors = Vec::new();
        for (prefix, moments) in [("m", &trainer.opt.m), ("v", &trainer.opt.v)] {
            for (slot, data) in moments.tensors() {
                tensors.push((format!("{prefix}.{}", slot.name), slot.shape.clone(), data));
            }
        }
        write_atomic(&tmp.join("optimizer.safetensors"), &encode_safetensors(&tensors)?)?;
        if let Some(carry) = &trainer.carry {
            carry.save(tmp, &trainer.model)?;
        }
        let json = serde_json::json!({"state": state, "optimizer_step": trainer.opt.step});
        write_atomic(&tmp.join("trainer.json"), serde_json::to_string_pretty(&json).expect("serialises").as_bytes())
    })
}

/// The trainer (made by `new` from the model) and state a checkpoint holds.
fn load_state(run: &RunConfig, dir: &Path, new: impl Fn(Model) -> Result<Trainer>) -> Result<(Trainer, TrainerState)> {
    let model = checkpoint::load(dir, None)?;
    if model.config() != run.model {
        return Err(Error::Config(format!("{}: the checkpoint's model config differs from the run's", dir.display())));
    }
    let mut trainer = new(model)?;
    let (b, _) = trainer.batch;
    let path = dir.join("trainer.json");
    let text = crate::io::read_text_bounded(&path, crate::io::MAX_CONFIG_BYTES)?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
    let state: TrainerState =
        serde_json::from_value(json["state"].clone()).map_err(|e| Error::format(&path, e.to_string()))?;
    trainer.opt.step = json["optimizer_step"].as_u64().ok_or_else(|| Error::format(&path, "no optimizer_step"))?;
    let opt_path = dir.join("optimizer.safetensors");
    let mut moments = read_safetensors(&opt_path)?;
    for (prefix, params) in [("m", &mut trainer.opt.m), ("v", &mut trainer.opt.v)] {
        for slot in params.slots().to_vec() {
            let key = format!("{prefix}.{}", slot.name);
            let src = moments
                .remove(&key)
                .ok_or_else(|| Error::MissingTensor { path: opt_path.clone(), name: key.clone() })?;
            if src.shape != slot.shape {
                return Err(Error::Shape {
                    name: key,
                    expected: format!("{:?}", slot.shape),
                    found: format!("{:?}", src.shape),
                });
            }
            let values = src.f32s(&key)?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(Error::format(&opt_path, format!("`{key}` holds NaN or infinite values")));
            }
            params.data_mut()[slot.range].copy_from_slice(values);
        }
    }
    if run.training.carry_state {
        trainer.carry = Some(Carry::load(dir, &trainer.model, b, run.training.detach_state)?);
    }
    Ok((trainer, state))
}
