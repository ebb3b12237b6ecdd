//! `--device cpu|gpu|auto`: where a model runs.

use bdh::engine::{Device, Streams};
use bdh::Model;

/// Where a model runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    /// This machine's CPU cores.
    #[default]
    Cpu,
    /// A GPU: CUDA when the NVIDIA driver works, else a Vulkan device (a software
    /// one, lavapipe, if nothing else); an error if there is none.
    Gpu,
    /// A hardware GPU if one is found, else the CPU.
    Auto,
}

/// `--device`, for the subcommands that run a model on a device.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// Where the model runs: cpu, gpu (CUDA, else Vulkan; needs a build with
    /// `--features gpu`), or auto (a hardware GPU if there is one, else the CPU).
    #[arg(long, value_enum, global = true, default_value_t = Choice::Cpu)]
    pub device: Choice,
}

impl DeviceArgs {
    /// `model` on the device asked for, or `None` for the CPU engine. Says on
    /// standard error where it runs when that is a GPU, and why `auto` stayed on
    /// the CPU.
    pub fn open(&self, model: &Model) -> anyhow::Result<Option<Box<dyn Device>>> {
        let opened = self.choose(|hardware_only| open(model, hardware_only))?;
        if let Some(dev) = &opened {
            eprintln!("running on the {}", dev.device());
        }
        Ok(opened)
    }

    /// Room for `slots` streams of `model` stepped together on the device asked
    /// for (a server's), or `None` for the CPU engine.
    pub fn streams(&self, model: &Model, slots: usize) -> anyhow::Result<Option<Box<dyn Streams>>> {
        self.choose(|hardware_only| streams(model, hardware_only, slots))
    }

    /// What `open` makes on a device (a hardware one only if told so): for `gpu`,
    /// or for `auto`, which stays on the CPU (saying why) if it fails.
    fn choose<T>(&self, open: impl FnOnce(bool) -> anyhow::Result<T>) -> anyhow::Result<Option<T>> {
        match self.device {
            Choice::Cpu => Ok(None),
            Choice::Gpu => open(false).map(Some),
            Choice::Auto => match open(true) {
                Ok(dev) => Ok(Some(dev)),
                Err(e) => {
                    eprintln!("note: running on the CPU ({e:#})");
                    Ok(None)
                }
            },
        }
    }

    /// Where the training steps of a `model` go: `None` for the CPU, else what opens
    /// the device for a trainer (`continual`: the run projects its steps, as
    /// `training.continual` does). `auto` stays on the CPU (saying why) where there is no
    /// hardware GPU or the GPU backend does not train the run (a GPT with dropout,
    /// a BDH whose layer is not bdh.py's or that has mechanisms, a continual run).
    pub fn trainer(
        &self,
        model: &bdh::ModelConfig,
        continual: bool,
    ) -> anyhow::Result<Option<Box<bdh::train::accelerator::Open<'static>>>> {
        let cpu_only = match model {
            _ if continual => Some("a continual run trains on the CPU (each step is projected there)".to_string()),
            bdh::ModelConfig::Gpt(c) if c.dropout > 0.0 => {
                Some("a GPT with dropout trains on the CPU (its attention's dropout is drawn there only)".to_string())
            }
            bdh::ModelConfig::Bdh(c) if !c.has_bdhpy_norm_and_residual() => Some(format!(
                "a BDH whose layer is not bdh.py's ({}) trains on the CPU",
                c.variant().unwrap_or_default()
            )),
            bdh::ModelConfig::Bdh(c) if c.has_synapse_mechanisms() => Some(
                "a BDH with mechanisms beyond bdh.py's layer (a learned decay, delays, a trace, a gate, thresholds, a \
                 sparse connectivity) trains on the CPU"
                    .into(),
            ),
            _ => None,
        };
        match (self.device, cpu_only) {
            (Choice::Cpu, _) => Ok(None),
            (Choice::Gpu, Some(why)) => anyhow::bail!(bdh::Error::Device(format!("{why}: drop --device gpu"))),
            (Choice::Gpu, None) => {
                // (before the run's directory is made: a machine without a device leaves nothing behind)
                available(false).map_err(bdh::Error::Device)?;
                opener(false)
            }
            (Choice::Auto, Some(why)) => {
                eprintln!("note: training on the CPU ({why})");
                Ok(None)
            }
            (Choice::Auto, None) => match available(true) {
                Ok(()) => opener(true),
                Err(why) => {
                    eprintln!("note: training on the CPU ({why})");
                    Ok(None)
                }
            },
        }
    }

    /// The flag that asks for this device again (` --device gpu`), empty for the CPU.
    pub fn flag(&self) -> &'static str {
        match self.device {
            Choice::Cpu => "",
            Choice::Gpu => " --device gpu",
            Choice::Auto => " --device auto",
        }
    }

    /// An error if a GPU was asked for: for work that runs on the CPU only
    /// (`what` says which).
    pub fn cpu_only(&self, what: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.device != Choice::Gpu, "{what} runs on the CPU only: drop --device gpu");
        Ok(())
    }
}

#[cfg(feature = "gpu")]
fn want(hardware_only: bool) -> bdh_gpu::Want {
    if hardware_only {
        bdh_gpu::Want::Hardware
    } else {
        bdh_gpu::Want::Any
    }
}

#[cfg(feature = "gpu")]
fn open(model: &Model, hardware_only: bool) -> anyhow::Result<Box<dyn Device>> {
    Ok(Box::new(bdh_gpu::Gpu::open(model, want(hardware_only))?))
}

#[cfg(feature = "gpu")]
fn streams(model: &Model, hardware_only: bool, slots: usize) -> anyhow::Result<Box<dyn Streams>> {
    Ok(bdh_gpu::streams(model, want(hardware_only), slots)?)
}

#[cfg(feature = "gpu")]
fn opener(hardware_only: bool) -> anyhow::Result<Option<Box<bdh::train::accelerator::Open<'static>>>> {
    let want = want(hardware_only);
    Ok(Some(Box::new(move |trainer: &bdh::train::Trainer| {
        let device = bdh_gpu::trainer(trainer, want)?;
        eprintln!("training on the {}", device.device());
        Ok(device)
    })))
}

/// Whether a device is here (a hardware one with `hardware_only`), or why not.
#[cfg(feature = "gpu")]
fn available(hardware_only: bool) -> Result<(), String> {
    bdh_gpu::available(want(hardware_only))
}

#[cfg(not(feature = "gpu"))]
fn opener(_: bool) -> anyhow::Result<Option<Box<bdh::train::accelerator::Open<'static>>>> {
    Err(bdh::Error::Device(NO_GPU.into()).into())
}

#[cfg(not(feature = "gpu"))]
fn available(_: bool) -> Result<(), String> {
    Err(NO_GPU.into())
}

/// Why a build without the backend has no GPU.
#[cfg(not(feature = "gpu"))]
const NO_GPU: &str = "this bdh was built without the GPU backend: build it with `cargo build --release --features \
                      gpu` (see the README's GPU section)";

#[cfg(not(feature = "gpu"))]
fn open(_: &Model, _: bool) -> anyhow::Result<Box<dyn Device>> {
    Err(bdh::Error::Device(NO_GPU.into()).into())
}

#[cfg(not(feature = "gpu"))]
fn streams(_: &Model, _: bool, _: usize) -> anyhow::Result<Box<dyn Streams>> {
    Err(bdh::Error::Device(NO_GPU.into()).into())
}
