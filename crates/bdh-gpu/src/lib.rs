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
mod gpt;
mod guard;
mod kernels;
mod optim;
pub mod probe;
mod runner;
mod serve;
mod step;
mod trace;
mod train;

use bdh::engine::{Device, Forward, Reader, Streams, Traced};
use bdh::infer::State;
use bdh::model::bdh::Bdh;
use bdh::params::Params;
use bdh::train::{Accelerator, Trainer};
use bdh::{Error, Model, Result};
use cubecl::prelude::Runtime;
use guard::guard;

use device::Device as Dev;
pub use probe::quiet_vulkan;
use runner::Runner;

/// Which devices an `open` may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Any device, a software one (lavapipe) last: `--device gpu`.
    Any,
    /// A hardware GPU only: `--device auto`, which otherwise stays on the CPU.
    Hardware,
}

/// A model on a device: a BDH, or the GPT baseline.
pub struct Gpu {
    engine: Box<dyn Engine>,
}

/// What a model on a device does, whatever the runtime: a BDH's
/// ([`runner::Runner`]) or a GPT's ([`gpt::GptRunner`]).
trait Engine {
    fn name(&self) -> String;
    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    fn losses(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    /// The mean loss of one batch and the gradient of every weight (eval mode).
    fn gradients(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<(f32, Params)>;
    fn stream(&self, state: &State) -> Result<Box<dyn Reader + '_>>;
    fn reserved_bytes(&self) -> u64;
    fn trace(
        &mut self,
        tokens: &[u32],
        acts: &mut bdh::model::bdh::Activations,
        edits: &bdh::model::bdh::Edits,
        state: Option<&mut bdh::model::bdh::State>,
    ) -> Result<()>;
}

/// Cubes a launch grid may have along one side on every backend.
pub(crate) const MAX_GRID: usize = 65535;

/// What is built on a device once one is found: the same search for every use.
trait Build {
    type Out;
    fn build<R: Runtime>(&self, dev: Dev<R>) -> Result<Self::Out>;
}

/// A model to run.
struct Run(Model);

impl Build for Run {
    type Out = Box<dyn Engine>;
    fn build<R: Runtime>(&self, dev: Dev<R>) -> Result<Self::Out> {
        Ok(match &self.0 {
            Model::Bdh(m) => Box::new(Runner::new(dev, m.clone())?),
            Model::Gpt(m) => Box::new(gpt::GptRunner::new(dev, m.clone())?),
        })
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
        Ok(match &self.0.model {
            Model::Bdh(_) => Box::new(train::Guarded(train::DeviceTrainer::new(dev, self.0)?)),
            Model::Gpt(_) => Box::new(train::Guarded(gpt::GptTrainer::new(dev, self.0)?)),
        })
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

/// An error unless the GPU backend trains `model`: BDH without attached mechanisms,
/// the GPT baseline without dropout.
pub fn trains(model: &Model) -> Result<()> {
    match model {
        Model::Bdh(m) => runs_layer(m),
        Model::Gpt(m) => gpt::trains(m),
    }
}

/// An error unless the GPU backend runs `m`'s layer: bdh.py's (any decay), with no
/// mechanism attached.
pub fn runs_layer(m: &bdh::model::bdh::Bdh) -> Result<()> {
    if !m.mechanisms.is_empty() {
        return Err(Error::Device(
            "this model has a mechanism attached at a layer site, which the GPU backend does not run: use --device cpu"
                .into(),
        ));
    }
    if !m.config.delays.is_none() {
        return Err(Error::Device(
            "this model delays its writes (delays), which the GPU backend does not run: use --device cpu".into(),
        ));
    }
    if m.key_site().is_some() {
        return Err(Error::Device(
            "this model's write has a trace or an astrocyte's gate at its key (trace, astrocyte), which the GPU \
             backend does not run: use --device cpu"
                .into(),
        ));
    }
    if m.config.connectivity.is_some() {
        return Err(Error::Device(
            "this model has a sparse connectivity (model.connectivity), whose masks the GPU backend does not keep \
             in training: use --device cpu"
                .into(),
        ));
    }
    if !m.config.threshold.is_none() {
        return Err(Error::Device(
            "this model's neurons have thresholds (threshold: the parameter attn.threshold), which the GPU \
             backend does not run: use --device cpu"
                .into(),
        ));
    }
    if m.config.decay.is_learned() {
        return Err(Error::Device(
            "this model learns its decay (decay = \"learned\": the parameter attn.decay), which the GPU backend \
             neither trains nor reads: use --device cpu"
                .into(),
        ));
    }
    match m.config.variant() {
        Some(v) if !m.config.has_bdhpy_norm_and_residual() => Err(Error::Device(format!(
            "this model's layer ({v}) is not bdh.py's, and the GPU backend runs bdh.py's layer (any decay, any \
             position): use --device cpu"
        ))),
        _ => Ok(()),
    }
}

/// Room for `slots` streams of `model` on the first device `want` allows (see
/// [`Gpu::open`]), stepped together: a server's. An error says how many fit if
/// that many do not.
pub fn streams(model: &Model, want: Want, slots: usize) -> Result<Box<dyn Streams>> {
    match runs(model)? {
        Model::Bdh(m) => open(&Serve(m, slots), want),
        Model::Gpt(_) => Err(Error::Input(
            "bdh serve runs BDH models, whose streams step together with a state of fixed size; this is a GPT (use \
             bdh generate for it)"
                .into(),
        )),
    }
}

/// `model`, or why the GPU backend does not run it.
fn runs(model: &Model) -> Result<Model> {
    if let Model::Bdh(m) = model {
        runs_layer(m)?;
    }
    Ok(model.clone())
}

impl Gpu {
    /// `model` on the first device `want` allows: CUDA device 0 when the NVIDIA
    /// driver works, else the best Vulkan adapter. An error names what was tried
    /// and how to get a device; models with mechanisms attached in code are
    /// refused (they run on the CPU).
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
        guard(&self.engine.name(), || self.engine.stream(state))
    }

    fn gradients(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<(f32, Params)> {
        let name = self.engine.name();
        guard(&name, || self.engine.gradients(tokens, targets, b, t))
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
