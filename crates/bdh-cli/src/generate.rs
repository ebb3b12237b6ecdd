//! `bdh generate`: stream text from a prompt, one recurrent step per token.

use std::io::{ErrorKind, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::data::Tokenizer;
use bdh::engine::{CpuReader, Reader};
use bdh::infer::{generate_with, Generation, GenerationStats, Prepared, Sampler, SamplingConfig, State};
use bdh::io::run_dir::RunDir;
use bdh::io::state;
use bdh::model::bdh::NO_EDITS;

use crate::args::StateDtypeArgs;
use crate::device::DeviceArgs;
use crate::model_args::{ModelArgs, TokenizerArgs};

/// Generates text after a prompt, streamed to stdout after the prompt itself (or
/// alone with --no-echo); speed and state size on stderr.
/// For a model from a run directory, a note on stderr says when the text passes
/// the context length the run trained on (training.block_size). A GPT's prompt
/// must fit its block_size; past it, generation slides the window as nanoGPT's
/// generate does (each token then re-reads the last block_size tokens).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Print only the continuation, not the prompt before it.
    #[arg(long)]
    no_echo: bool,
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// Tokens to generate at most (bytes, unless the model reads a BPE).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with this much probability (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalise tokens already in the text (1: off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this string is generated (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Continue from a state saved by `--save-state` instead of an empty one: the
    /// prompt follows the text that state has read.
    #[arg(long, value_name = "FILE")]
    load_state: Option<PathBuf>,
    /// Save the state after the generation (prompt and output read) to this file.
    #[arg(long, value_name = "FILE", conflicts_with = "num_samples")]
    save_state: Option<PathBuf>,
    /// Write this many samples, each continuing the prompt afresh (one sampler
    /// stream: the same seed gives the same samples), headed `--- sample k of K`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    num_samples: u64,
    #[command(flatten)]
    state: StateDtypeArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(p) = &args.save_state {
        crate::args::check_writable(p, "--save-state")?;
    }
    let model = args.model.load()?;
    let tokenizer = args.tokenizer.load(&args.model, &model.config())?;
    let device = if args.state.is_f32() { args.device.open(&model)? } else { None };
    let prepared = args.state.apply(Prepared::new(model)?, &args.device)?;
    let prompt = read_prompt(&args)?;
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
    })?;
    let start = start_state(&args, &prepared)?;
    let mut scratch = prepared.scratch();
    let tokens = tokenizer.encode(&prompt);
    let g = Generation { max_tokens: args.max_tokens, stops: args.stop.clone(), tokenizer, ..Generation::default() };
    if let Some(c) = prepared.config().max_context().filter(|&c| tokens.len() > c) {
        anyhow::bail!(
            "the prompt's {} tokens do not fit this GPT's context of {c} (its block_size): give at most {c}",
            tokens.len()
        );
    }
    // Text counts tokens as it streams only when a token is a byte; a BPE run's note
    // comes after the text.
    let bytes_are_tokens = g.tokenizer == Tokenizer::Bytes;
    let mut out =
        Out { stdout: std::io::stdout().lock(), context: trained_context(&args.model.model), bytes_are_tokens };
    for k in 1..=args.num_samples {
        if args.num_samples > 1 && writeln!(out.stdout, "--- sample {k} of {}", args.num_samples).is_err() {
            return Ok(ExitCode::SUCCESS); // the reader went away
        }
        if !args.no_echo {
            match out.stdout.write_all(&prompt).and_then(|()| out.stdout.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
                Err(e) => return Err(e).context("writing the output"),
            }
        }
        let mut session = start.clone();
        let (mut on_cpu, mut on_device);
        let reader: &mut dyn Reader = match &device {
            Some(dev) => {
                on_device = dev.stream(&session)?;
                &mut *on_device
            }
            None => {
                on_cpu =
                    CpuReader { prepared: &prepared, state: &mut session, scratch: &mut scratch, edits: &NO_EDITS };
                &mut on_cpu
            }
        };
        let stats = out.sample(reader, &tokens, &g, &mut sampler)?;
        if let Some(p) = &args.save_state {
            let reached = reader.state()?;
            state::save(&prepared, &reached, p).with_context(|| format!("saving state {}", p.display()))?;
        }
        if stats.cancelled {
            return Ok(ExitCode::SUCCESS);
        }
        let _ = writeln!(out.stdout);
        print_stats(&stats, reader.position());
    }
    Ok(ExitCode::SUCCESS)
}

/// The prompt's bytes, from `--prompt` or `--prompt-file`.
fn read_prompt(args: &Args) -> anyhow::Result<Vec<u8>> {
    match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => Ok(p.clone().into_bytes()),
        (None, Some(f)) => {
            // The prompt is held as bytes and as token ids: 5 bytes a byte.
            let len = std::fs::metadata(f).with_context(|| format!("reading {}", f.display()))?.len();
            let what = format!("the prompt file {}", f.display());
            let most = bdh::infer::MAX_PROMPT_BYTES;
            bdh::memory::ensure_fits(usize::try_from(len.min(most)).unwrap_or(usize::MAX).saturating_mul(5), &what)?;
            Ok(bdh::io::read_bounded(f, most)?)
        }
        (None, None) => unreachable!("clap requires one of them"),
    }
}

/// The state each sample starts from: `--load-state`'s, else an empty one; with
/// `--save-state` checked before generating, not after.
fn start_state(args: &Args, prepared: &Prepared) -> anyhow::Result<State> {
    if args.save_state.is_some() || args.load_state.is_some() {
        state::supported(prepared)?;
    }
    if let Some(p) = &args.save_state {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        anyhow::ensure!(!p.is_dir(), "--save-state {}: is a directory", p.display());
        anyhow::ensure!(parent.is_dir(), "--save-state {}: no directory {}", p.display(), parent.display());
    }
    Ok(match &args.load_state {
        Some(p) => {
            let (state, note) =
                state::load_noting(prepared, p).with_context(|| format!("loading state {}", p.display()))?;
            if let Some(note) = note {
                eprintln!("note: {note}");
            }
            state
        }
        None => prepared.state()?,
    })
}

/// The context length a model's run trained on (`training.block_size`), if the
/// model comes from a run.
fn trained_context(model: &Path) -> Option<usize> {
    Some(RunDir::of_model(model)?.config(&[]).ok()?.training.block_size)
}

/// Where the text goes: standard output, with a note on standard error once it
/// passes the context the model's run trained on.
struct Out<'a> {
    stdout: std::io::StdoutLock<'a>,
    /// The context the run trained on, until the note is given.
    context: Option<usize>,
    /// Whether each generated byte is a token, so positions are known as it streams.
    bytes_are_tokens: bool,
}

impl Out<'_> {
    /// Notes, once, that the text at position `pos` is past the trained context.
    fn warn_past(&mut self, pos: usize) {
        if let Some(c) = self.context.filter(|&c| pos > c) {
            self.context = None;
            eprintln!(
                "\nnote: the text is now past {c} tokens, the context length this model was trained on \
                 (training.block_size); what follows may lose coherence"
            );
        }
    }

    /// One sample after `tokens` read by `reader`, streamed out as it is made.
    fn sample(
        &mut self,
        reader: &mut dyn Reader,
        tokens: &[u32],
        g: &Generation,
        sampler: &mut Sampler,
    ) -> anyhow::Result<GenerationStats> {
        let mut pos = reader.position() + tokens.len();
        self.warn_past(pos);
        let mut failed = None;
        let out = generate_with(reader, tokens, g, sampler, |text| {
            if self.bytes_are_tokens {
                pos += text.len();
                self.warn_past(pos);
            }
            match self.stdout.write_all(text.as_bytes()).and_then(|()| self.stdout.flush()) {
                Ok(()) => ControlFlow::Continue(()),
                // The reader went away (`| head`): stop at once; that is not an error.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => ControlFlow::Break(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e).context("writing the output");
        }
        self.warn_past(reader.position());
        Ok(out.stats)
    }
}

/// Speed and state size of a sample, on standard error.
fn print_stats(stats: &GenerationStats, pos: usize) {
    let decode_rate = stats.generated as f64 / stats.decode_seconds.max(1e-9);
    let _ = writeln!(
        std::io::stderr(),
        "{} prompt tokens in {:.1} ms, {} generated at {:.1} tokens/s; state {:.2} MiB at position {pos}{}",
        stats.prompt_tokens,
        stats.prefill_seconds * 1e3,
        stats.generated,
        decode_rate,
        stats.state_bytes as f64 / (1 << 20) as f64,
        stats.stopped_by.as_ref().map_or(String::new(), |s| format!("; stopped at {s:?}"))
    );
}
