//! BDH on a GPU: the parallel forward, its loss and the recurrent step on a device
//! — CUDA on NVIDIA machines, else any Vulkan (Metal on macOS) device through wgpu,
//! Mesa's software Vulkan device (lavapipe) included — from one kernel source
//! (cubecl). [`Gpu`] implements the engine's [`Forward`], and its streams the
//! engine's [`Reader`], so evaluation, verification and generation run on it
//! unchanged.
//!
//! Built with the `gpu` feature; without it this crate is empty.
#![cfg(feature = "gpu")]

mod backward;
pub mod device;
mod forward;
mod guard;
mod kernels;
pub mod probe;
mod serve;
mod step;
mod trace;
mod train;

use bdh::engine::{Device, Forward, Reader, Streams, Traced};
use bdh::infer::State;
use bdh::model::bdh::{Bdh, Dims};
use bdh::train::{Accelerator, Trainer};
use bdh::{Error, Model, Result};
use cubecl::prelude::Runtime;
use guard::guard;

use device::{Buf, Device as Dev};
pub use probe::quiet_vulkan;

/// Which devices an `open` may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Any device, a software one (lavapipe) last: `--device gpu`.
    Any,
    /// A hardware GPU only: `--device auto`, which otherwise stays on the CPU.
    Hardware,
}

/// A BDH model on a device.
pub struct Gpu {
    engine: Box<dyn Engine>,
}

/// The runtime-independent face of an [`Runner`].
trait Engine {
    fn name(&self) -> String;
    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    fn losses(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    fn stream(&self, state: &bdh::model::bdh::State) -> Result<Box<dyn Reader + '_>>;
    fn reserved_bytes(&self) -> u64;
    fn trace(
        &mut self,
        tokens: &[u32],
        acts: &mut bdh::model::bdh::Activations,
        edits: &bdh::model::bdh::Edits,
        state: Option<&mut bdh::model::bdh::State>,
    ) -> Result<()>;
}

/// The model's weights and a pass's buffers on a device of runtime `R`.
struct Runner<R: Runtime> {
    dev: Dev<R>,
    model: Bdh,
    weights: forward::Weights,
    gamma: Option<Buf>,            // (H) the retention, with a decay
    pass: Option<forward::Pass>,   // the buffers of the last shape run
    traced: Option<forward::Pass>, // the microscope's: every layer kept
}

impl<R: Runtime> Runner<R> {
    /// `model` on `dev`, once a first kernel has compiled, run and given the right
    /// answer there (so that a device that cannot run ours fails here, not later).
    fn new(dev: Dev<R>, model: Bdh) -> Result<Self> {
        dev.check_runs()?;
        let weights_bytes = 4 * model.config.param_count() as u64;
        if let Some(free) = dev.free_bytes().filter(|&free| weights_bytes > free) {
            return Err(Error::TooLarge {
                what: format!("the model's weights on the GPU ({})", dev.name),
                need: Some(weights_bytes),
                have: Some(free),
            });
        }
        let weights = forward::Weights::upload(&dev, &model)?;
        let gamma = model.config.decay.retention(model.config.n_head);
        let gamma = if gamma.is_empty() { None } else { Some(dev.upload(&gamma, "retention")?) };
        Ok(Runner { dev, model, weights, gamma, pass: None, traced: None })
    }

    /// Runs `tokens` (B, T) in passes of as many rows as the device's largest
    /// buffer allows; `each(pass, rows)` reads each pass's results.
    fn run(
        &mut self,
        tokens: &[u32],
        b: usize,
        t: usize,
        each: &mut dyn FnMut(&Self, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        bdh::model::check_tokens(tokens, self.model.config.vocab_size, "forward")?;
        if tokens.len() != b * t || b == 0 || t == 0 {
            return Err(Error::Input(format!("forward: {} ids for a batch of B={b} × T={t}", tokens.len())));
        }
        bdh::model::check_positions(0, t, "forward")?;
        let rows = self.rows_that_fit(b, t)?;
        let tables = forward::Tables::new(&self.dev, &self.model, 0, t)?;
        for r0 in (0..b).step_by(rows) {
            let r = rows.min(b - r0);
            let dims = Dims::new(&self.model.config, r, t);
            if self.pass.as_ref().is_none_or(|p| p.dims != dims) {
                self.pass = None; // free the old buffers first
                self.pass = Some(forward::Pass::new(&self.dev, dims)?);
            }
            let ids = self.dev.upload_ids(&tokens[r0 * t..(r0 + r) * t])?;
            let pass = self.pass.as_ref().expect("just made");
            forward::forward(&self.dev, &self.weights, pass, &ids, &tables, forward::Extras::default());
            each(self, r0..r0 + r)?;
        }
        Ok(())
    }

    /// The most batch rows (≤ `b`) whose pass fits the device: every buffer within
    /// its largest buffer, all of them within its free memory (where the device says
    /// how much it has), and every launch within its grid.
    fn rows_that_fit(&self, b: usize, t: usize) -> Result<usize> {
        let h = self.model.config.n_head;
        let refuse = |what: String, need: u64, have: u64| Error::TooLarge {
            what: format!("{what} of one sequence of T={t} on the GPU ({})", self.dev.name),
            need: Some(need),
            have: Some(have),
        };
        let fits = |rows: usize| -> Result<()> {
            let buffers = forward::buffers(&Dims::new(&self.model.config, rows, t));
            if let Some(&(what, n)) = buffers.iter().find(|&&(_, n)| !self.dev.fits(n)) {
                let largest = self.dev.max_buffer() as f64 / (1u64 << 20) as f64;
                return Err(Error::TooLarge {
                    what: format!(
                        "{what} of one sequence of T={t}, in one buffer of the GPU ({}; its largest holds {largest:.0} \
                         MiB: use a shorter window),",
                        self.dev.name
                    ),
                    need: Some(4 * n as u64),
                    have: None,
                });
            }
            let total: u64 = buffers.iter().map(|&(_, n)| 4 * n as u64).sum();
            if let Some(free) = self.dev.free_bytes().filter(|&free| total > free) {
                return Err(refuse("the activations".into(), total, free));
            }
            let cubes = [rows * h, (rows * t).div_ceil(64), t.div_ceil(64)];
            if cubes.iter().any(|&c| c > MAX_GRID) {
                let what =
                    format!("a launch grid of {} cubes (at most {MAX_GRID} a side)", cubes.iter().max().unwrap_or(&0));
                return Err(Error::Device(format!(
                    "{what} for T={t} on the GPU ({}): use a shorter window",
                    self.dev.name
                )));
            }
            Ok(())
        };
        fits(1)?;
        // (fitting is monotone in the rows: the largest that fits, by bisection)
        let (mut lo, mut hi) = (1, b.max(1));
        while lo < hi {
            let mid = hi - (hi - lo) / 2;
            if fits(mid).is_ok() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    }
}

/// Cubes a launch grid may have along one side on every backend.
pub(crate) const MAX_GRID: usize = 65535;

impl<R: Runtime> Engine for Runner<R> {
    fn name(&self) -> String {
        self.dev.name.clone()
    }

    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.run(tokens, b, t, &mut |me, _| {
            out.extend(me.dev.read(&me.pass.as_ref().expect("run").logits)?);
            Ok(())
        })?;
        Ok(out)
    }

    fn losses(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        bdh::model::check_tokens(targets, self.model.config.vocab_size, "targets")?;
        if targets.len() != tokens.len() {
            return Err(Error::Input(format!("{} targets for {} tokens", targets.len(), tokens.len())));
        }
        let mut out = Vec::new();
        self.run(tokens, b, t, &mut |me, rows| {
            let pass = me.pass.as_ref().expect("run");
            out.extend(forward::losses(&me.dev, pass, &targets[rows.start * t..rows.end * t])?);
            Ok(())
        })?;
        Ok(out)
    }

    fn stream(&self, state: &bdh::model::bdh::State) -> Result<Box<dyn Reader + '_>> {
        let bytes = 4 * state.rho.len() as u64;
        if let Some(free) = self.dev.free_bytes().filter(|&free| bytes > free) {
            return Err(Error::TooLarge {
                what: format!("a stream's state ρ on the GPU ({})", self.dev.name),
                need: Some(bytes),
                have: Some(free),
            });
        }
        let stream = step::Stream::new(&self.dev, &self.model, state)?;
        let chunk = (1..=PREFILL_CHUNK).rev().find(|&t| self.rows_that_fit(1, t).is_ok()).unwrap_or(1);
        Ok(Box::new(GpuReader { runner: self, stream, logits: Vec::new(), pass: None, chunk }))
    }

    fn reserved_bytes(&self) -> u64 {
        self.dev.reserved_bytes()
    }

    fn trace(
        &mut self,
        tokens: &[u32],
        acts: &mut bdh::model::bdh::Activations,
        edits: &bdh::model::bdh::Edits,
        state: Option<&mut bdh::model::bdh::State>,
    ) -> Result<()> {
        Runner::trace(self, tokens, acts, edits, state)
    }
}

/// Tokens a stream's prefill reads per parallel pass (fewer if the device's
/// buffers cannot hold that many).
const PREFILL_CHUNK: usize = 256;

/// A stream on a device.
struct GpuReader<'r, R: Runtime> {
    runner: &'r Runner<R>,
    stream: step::Stream,
    logits: Vec<f32>,
    pass: Option<forward::Pass>, // a prefill chunk's buffers
    chunk: usize,                // tokens per prefill pass
}

impl<R: Runtime> GpuReader<'_, R> {
    /// Reads `ids` in one parallel pass with the stream's state carried; the logits
    /// after the last.
    fn prefill_chunk(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let (r, t) = (self.runner, ids.len());
        let dims = Dims::new(&r.model.config, 1, t);
        if self.pass.as_ref().is_none_or(|p| p.dims != dims) {
            self.pass = None;
            self.pass = Some(forward::Pass::new(&r.dev, dims)?);
        }
        let pass = self.pass.as_ref().expect("just made");
        let tables = forward::Tables::new(&r.dev, &r.model, self.stream.pos, t)?;
        let ids = r.dev.upload_ids(ids)?;
        let extras = forward::Extras { rho: Some(self.stream.layers()), ..Default::default() };
        forward::forward(&r.dev, &r.weights, pass, &ids, &tables, extras);
        self.stream.pos += t;
        let logits = r.dev.read(&pass.logits)?;
        Ok(logits[(t - 1) * dims.v..].to_vec())
    }
}

impl<R: Runtime> Reader for GpuReader<'_, R> {
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        if tokens.is_empty() {
            return Err(Error::Input("prefill: no tokens".into()));
        }
        bdh::model::check_tokens(tokens, self.runner.model.config.vocab_size, "prefill")?;
        bdh::model::check_positions(self.stream.pos, tokens.len(), "prefill")?;
        let name = self.runner.dev.name.clone();
        for chunk in tokens.chunks(self.chunk) {
            self.logits = guard(&name, || self.prefill_chunk(chunk))?;
        }
        Ok(&self.logits)
    }

    fn step(&mut self, token: u32) -> Result<&[f32]> {
        let r = self.runner;
        self.logits = guard(&r.dev.name, || self.stream.step(&r.dev, &r.model, &r.weights, r.gamma.as_ref(), token))?;
        Ok(&self.logits)
    }

    fn position(&self) -> usize {
        self.stream.pos
    }

    fn state_bytes(&self) -> usize {
        4 * bdh::model::bdh::State::shape(&self.runner.model.config).iter().product::<usize>()
    }

    fn state(&self) -> Result<State> {
        let dev = &self.runner.dev;
        guard(&dev.name, || Ok(State::Bdh(self.stream.state(dev)?)))
    }
}

/// What is built on a device once one is found: the same search for every use.
trait Build {
    type Out;
    fn build<R: Runtime>(&self, dev: Dev<R>) -> Result<Self::Out>;
}

/// A model to run.
struct Run(Bdh);

impl Build for Run {
    type Out = Box<dyn Engine>;
    fn build<R: Runtime>(&self, dev: Dev<R>) -> Result<Self::Out> {
        Ok(Box::new(Runner::new(dev, self.0.clone())?))
    }
}

/// A server's streams.
struct Serve(Bdh, usize);

impl Build for Serve {
    type Out = Box<dyn Streams>;
    fn build<R: Runtime>(&self, dev: Dev<R>) -> Result<Self::Out> {
        Ok(Box::new(serve::Pool::new(Runner::new(dev, self.0.clone())?, self.1)?))
    }
}

/// A trainer's work.
struct Train<'a>(&'a Trainer);

impl Build for Train<'_> {
    type Out = Box<dyn Accelerator>;
    fn build<R: Runtime>(&self, dev: Dev<R>) -> Result<Self::Out> {
        Ok(Box::new(train::Guarded(train::DeviceTrainer::new(dev, self.0)?)))
    }
}

/// `what` built on the first device `want` allows: CUDA device 0 when the NVIDIA
/// driver works, else the best Vulkan adapter. An error names what was tried and
/// how to get a device.
fn open<B: Build>(what: &B, want: Want) -> Result<B::Out> {
    let forced = std::env::var("BDH_GPU_BACKEND").ok().map(|b| b.to_lowercase()).filter(|b| !b.is_empty());
    let tried_cuda = match forced.as_deref() {
        None | Some("cuda") => match probe::cuda() {
            Ok(cuda) => {
                let name = format!("CUDA: {}", cuda.name);
                let started = guard(&name, || {
                    let client = cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice { index: 0 });
                    what.build(Dev::new(client, name.clone(), Some(cuda.memory)))
                });
                match started {
                    Ok(out) => return Ok(out),
                    // (a size refused is the model's, not the device's: no other device will do)
                    Err(e @ Error::TooLarge { .. }) => return Err(e),
                    Err(e) => e.to_string(),
                }
            }
            Err(why) => why,
        },
        Some("vulkan") => "not tried, as BDH_GPU_BACKEND=vulkan asks".into(),
        Some(other) => {
            return Err(Error::Device(format!("BDH_GPU_BACKEND={other}: expected `cuda` or `vulkan`")));
        }
    };
    let adapters = if forced.as_deref() == Some("cuda") { Vec::new() } else { probe::adapters() };
    let usable = adapters.iter().find(|a| want == Want::Any || !a.software);
    let Some(adapter) = usable else {
        let vulkan = match (forced.as_deref(), adapters.first()) {
            (Some("cuda"), _) => "not tried, as BDH_GPU_BACKEND=cuda asks (unset it to try Vulkan)".to_string(),
            (_, None) => "no adapter found (no Vulkan driver installed)".to_string(),
            (_, Some(a)) => format!("only the software device {} (`--device gpu` takes it, `auto` does not)", a.name),
        };
        return Err(Error::Device(format!(
            "no GPU found. Tried CUDA: {tried_cuda}; tried Vulkan: {vulkan}. An NVIDIA GPU needs its driver \
             (libcuda.so.1) and NVRTC; AMD and Intel GPUs need a Vulkan driver (Debian and Ubuntu: apt-get \
             install mesa-vulkan-drivers, which also gives the software device lavapipe for testing)"
        )));
    };
    let name = format!("Vulkan: {}{}", adapter.name, if adapter.software { " (software)" } else { "" });
    // (wgpu does not say how much memory a device has: buffers are bounded one by one)
    guard(&name, || {
        let client = cubecl::wgpu::WgpuRuntime::client(&adapter.device);
        what.build(Dev::new(client, name.clone(), None))
    })
}

/// `Ok` if a device `want` allows is here (a CUDA device, or a Vulkan adapter —
/// not a software one for [`Want::Hardware`]), as `BDH_GPU_BACKEND` restricts the
/// search; else why not. Starts no runtime: a device found may still fail to open.
pub fn available(want: Want) -> std::result::Result<(), String> {
    let forced = std::env::var("BDH_GPU_BACKEND").ok().map(|b| b.to_lowercase()).filter(|b| !b.is_empty());
    let cuda = match forced.as_deref() {
        Some("vulkan") => "not tried, as BDH_GPU_BACKEND=vulkan asks".to_string(),
        _ => match probe::cuda() {
            Ok(_) => return Ok(()),
            Err(why) => why,
        },
    };
    let vulkan = match forced.as_deref() {
        Some("cuda") => "not tried, as BDH_GPU_BACKEND=cuda asks".to_string(),
        _ => {
            let adapters = probe::adapters();
            if adapters.iter().any(|a| want == Want::Any || !a.software) {
                return Ok(());
            }
            match adapters.first() {
                None => "no adapter found (no Vulkan driver installed)".into(),
                Some(a) => format!("only the software device {}", a.name),
            }
        }
    };
    let what = if want == Want::Hardware { "no hardware GPU" } else { "no GPU" };
    Err(format!("{what} found (CUDA: {cuda}; Vulkan: {vulkan})"))
}

/// `trainer`'s steps on the first device `want` allows (see [`Gpu::open`]): its
/// model, moments, step and carried state are uploaded, and buffers for its
/// batches made. BDH models without attached mechanisms only.
pub fn trainer(trainer: &Trainer, want: Want) -> Result<Box<dyn Accelerator>> {
    trains(&trainer.model)?;
    open(&Train(trainer), want)
}

/// An error unless the GPU backend trains `model`: BDH without attached mechanisms.
pub fn trains(model: &Model) -> Result<()> {
    match model {
        Model::Bdh(m) if m.mechanisms.is_empty() => Ok(()),
        Model::Bdh(_) => {
            Err(Error::Device("a model with a mechanism attached trains on the CPU: use --device cpu".into()))
        }
        Model::Gpt(_) => {
            Err(Error::Device("the GPU backend trains BDH models; the GPT baseline trains on the CPU".into()))
        }
    }
}

/// Room for `slots` streams of `model` on the first device `want` allows (see
/// [`Gpu::open`]), stepped together: a server's. An error says how many fit if
/// that many do not.
pub fn streams(model: &Model, want: Want, slots: usize) -> Result<Box<dyn Streams>> {
    open(&Serve(runs(model)?, slots), want)
}

/// The BDH model of `model`, or why the GPU backend does not run it.
fn runs(model: &Model) -> Result<Bdh> {
    match model {
        Model::Bdh(m) if m.mechanisms.is_empty() => Ok(m.clone()),
        Model::Bdh(_) => Err(Error::Device(
            "this model has a mechanism attached at a layer site, which the GPU backend does not run: use --device cpu"
                .into(),
        )),
        Model::Gpt(_) => Err(Error::Device("the GPU backend runs BDH models; the GPT baseline runs on the CPU".into())),
    }
}

impl Gpu {
    /// `model` on the first device `want` allows: CUDA device 0 when the NVIDIA
    /// driver works, else the best Vulkan adapter. An error names what was tried
    /// and how to get a device; the GPT baseline and models with mechanisms
    /// attached in code are refused (they run on the CPU).
    pub fn open(model: &Model, want: Want) -> Result<Self> {
        Ok(Gpu { engine: open(&Run(runs(model)?), want)? })
    }

    /// The device, e.g. `CUDA: NVIDIA H200`.
    pub fn name(&self) -> String {
        self.engine.name()
    }
}

impl Forward for Gpu {
    fn device(&self) -> String {
        format!("GPU ({})", self.engine.name())
    }

    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        let name = self.engine.name();
        guard(&name, || self.engine.logits(tokens, b, t))
    }

    fn loss_sum(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64> {
        let name = self.engine.name();
        let losses = guard(&name, || self.engine.losses(tokens, targets, b, t))?;
        Ok(losses.iter().map(|&l| l as f64).sum())
    }
}

impl Device for Gpu {
    fn as_forward(&mut self) -> &mut dyn Forward {
        self
    }

    fn held_bytes(&self) -> u64 {
        self.engine.reserved_bytes()
    }

    fn stream(&self, state: &State) -> Result<Box<dyn Reader + '_>> {
        match state {
            State::Bdh(s) => guard(&self.engine.name(), || self.engine.stream(s)),
            State::Gpt(_) => Err(Error::Mismatch("a GPT state for a BDH model".into())),
        }
    }

    fn traced(&mut self) -> &mut dyn Traced {
        self
    }
}

impl Traced for Gpu {
    fn device(&self) -> String {
        Forward::device(self)
    }

    fn forward(
        &mut self,
        tokens: &[u32],
        acts: &mut bdh::model::bdh::Activations,
        pass: bdh::model::bdh::Pass<'_>,
    ) -> Result<()> {
        if pass.mode != bdh::model::Mode::Eval {
            return Err(Error::Input("the microscope's forward on a GPU runs in eval mode".into()));
        }
        let name = self.engine.name();
        guard(&name, || self.engine.trace(tokens, acts, pass.edits, pass.state))
    }
}
