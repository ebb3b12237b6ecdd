//! `bdh eval`: loss, perplexity and bits per byte over a whole file, or answer
//! accuracy on the built-in corpus. A run is scored on what it was trained on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bdh::data::{BytesView, Corpus, DataConfig, Task, Tokenized, Tokenizer};
use bdh::engine::{Cpu, Forward};
use bdh::eval::{
    evaluate_bytes_on, evaluate_on, evaluate_stream, evaluate_stream_tokens, evaluate_tokens_on, EvalMetrics, FileEval,
    StreamEval,
};
use bdh::io::run_dir::RunDir;

use crate::args::{JsonArgs, StateDtypeArgs, ThreadsArgs};
use crate::device::DeviceArgs;
use crate::model_args::{ModelArgs, TokenizerArgs};
use crate::progress::Job;
use bdh::model::bdh::StateDtype;

/// Evaluates a model: by default on what its run trained on (the validation part
/// of its --data file, or the built-in corpus); `--data FILE` scores every byte of
/// FILE instead.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Score every byte of this file instead of the run's own validation data.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// Tokens per window (default 256, or the model's context if shorter).
    #[arg(long)]
    block: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Built-in corpus: validation batches to score.
    #[arg(long, default_value_t = 16)]
    batches: usize,
    /// Score a task of the built-in generator (`lag:K`, `dms:N`, `parity:N`, or
    /// `language`) instead of what the run trained on.
    #[arg(long)]
    task: Option<Task>,
    /// Read the file as one stream (BDH only): the synapse state carries it from chunk
    /// to chunk, in constant memory, and the loss is reported by position bucket
    /// (0–256, 256–1k, 1k–4k, …) beside the loss of independent windows.
    #[arg(long)]
    carry: bool,
    #[command(flatten)]
    state: StateDtypeArgs,
    #[command(flatten)]
    json: JsonArgs,
    #[command(flatten)]
    threads: ThreadsArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.threads.size_pool()?;
    args.json.check()?;
    let model = args.model.load()?;
    let tokenizer = args.tokenizer.load(&args.model, &model.config())?;
    let context = model.config().max_context();
    let block = args.block.unwrap_or(256.min(context.unwrap_or(256)));
    anyhow::ensure!(block > 0 && args.batch > 0 && args.batches > 0, "--block, --batch and --batches must be > 0");
    // What the run trained on, if `--model` is a run directory.
    let trained_on = match RunDir::open(&args.model.model) {
        Ok(run) => Some(run.config(&[])?.data),
        // A run whose config is there but cannot be read (a link to nowhere or to a
        // device) is an error, not a plain checkpoint.
        Err(e) if args.model.model.join("config.toml").symlink_metadata().is_ok() => return Err(e.into()),
        Err(_) => None,
    };
    anyhow::ensure!(
        args.task.is_none() || (args.data.is_none() && !args.carry),
        "--task scores the built-in generator's task: it takes no --data and no --carry"
    );
    anyhow::ensure!(
        args.carry || args.state.is_f32(),
        "--state-dtype {}: only a stream read with --carry has a synapse state to store",
        args.state.state_dtype
    );
    let file = match args.task {
        Some(_) => None,
        None => file_to_score(&args, trained_on.as_ref(), &tokenizer, block)?,
    };
    if args.carry {
        args.device.cpu_only("--carry")?;
        let Some((text, name)) = file else {
            anyhow::bail!("--carry reads a file as one stream: give --data FILE (or a run trained on a file)")
        };
        let bdh::Model::Bdh(bdh_model) = &model else {
            anyhow::bail!(
                "--carry needs a BDH model, whose synapse state carries a stream; a GPT's context is its block_size"
            )
        };
        return carry(bdh_model, &model, &text, &name, block, &args);
    }
    let mut device = args.device.open(&model)?;
    let mut cpu = Cpu::new(&model);
    let on: &mut dyn Forward = match device.as_deref_mut() {
        Some(dev) => dev.as_forward(),
        None => &mut cpu,
    };
    let vocab = model.config().vocab_size();
    match file {
        Some((text, name)) => windows(on, vocab, &text, &name, block, &args),
        None => built_in(on, vocab, trained_on, tokenizer, block, &args),
    }
}

/// The file to score and its description: `--data`, else the validation part of
/// the file the run trained on, if it trained on one.
fn file_to_score(
    args: &Args,
    trained_on: Option<&DataConfig>,
    tokenizer: &Tokenizer,
    block: usize,
) -> anyhow::Result<Option<(Text, String)>> {
    if let Some(f) = &args.data {
        let bytes = BytesView::open(f)?;
        let ids = match tokenizer {
            Tokenizer::Bytes => None,
            Tokenizer::Bpe(bpe) => Some(Tokenized::new(bytes.clone(), bpe)?.ids),
        };
        return Ok(Some((Text { bytes, ids, tokenizer: tokenizer.clone() }, format!("{}: every byte", f.display()))));
    }
    let Some((d, path)) = trained_on.and_then(|d| Some((d, d.path.as_ref()?))) else { return Ok(None) };
    let corpus = d.corpus_with(block, tokenizer.clone()).context("opening the run's data")?;
    let (val, ids) = match corpus {
        Corpus::Files { val, .. } => (val, None),
        Corpus::Tokens { val, .. } => (val.text, Some(val.ids)),
        Corpus::Synthetic(_) | Corpus::Task(_) => unreachable!("a data path gives files"),
    };
    let name = match &d.val_path {
        Some(v) => format!("{}: the run's validation file, every byte", v.display()),
        None => {
            format!("{}: the run's validation split, bytes {}..{}", path.display(), val.range().start, val.range().end)
        }
    };
    Ok(Some((Text { bytes: val, ids, tokenizer: tokenizer.clone() }, name)))
}

/// The loss of a file in independent windows.
fn windows(
    on: &mut dyn Forward,
    vocab: usize,
    text: &Text,
    name: &str,
    block: usize,
    args: &Args,
) -> anyhow::Result<ExitCode> {
    let windows = text.len().saturating_sub(1).div_ceil(block);
    let job = Job::new("eval: windows", windows as u64);
    let r = text.windows(on, vocab, block, args.batch, &mut |done, _| job.set(done as u64))?;
    job.finish();
    args.json.write(&r)?;
    // JSON on standard output is all that goes there.
    if args.json.to_stdout() {
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{name}: {} predicted in {} of {} tokens",
        text.count(r.tokens, r.bytes),
        crate::count(r.windows, "independent window", "independent windows"),
        r.window
    );
    println!(
        "loss {:.4} nats/{}, perplexity {:.3}, {:.4} bits/byte",
        r.loss,
        text.unit(),
        r.perplexity,
        r.bits_per_byte
    );
    Ok(ExitCode::SUCCESS)
}

/// Answer accuracy on the built-in corpus, with the knobs the model was trained
/// with if known.
fn built_in(
    on: &mut dyn Forward,
    vocab: usize,
    trained_on: Option<DataConfig>,
    tokenizer: Tokenizer,
    block: usize,
    args: &Args,
) -> anyhow::Result<ExitCode> {
    if trained_on.is_none() {
        eprintln!(
            "note: {} is not a run directory, so what it was trained on is unknown: scoring the built-in \
             corpus (give --data FILE to score a text)",
            args.model.model.display()
        );
    }
    let mut data = DataConfig { path: None, val_path: None, tokenizer: None, ..trained_on.unwrap_or_default() };
    data.task = args.task.unwrap_or(data.task);
    let corpus = data.corpus_with(block, tokenizer)?;
    let m = evaluate_on(on, &corpus, vocab, (args.batch, block), args.batches)?;
    // `step` counts training steps during a run; here there is none.
    let mut v = serde_json::to_value(&m)?;
    v.as_object_mut().map(|o| o.remove("step"));
    args.json.write(&v)?;
    if args.json.to_stdout() {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(chance) = m.answer_chance {
        let windows = crate::count(args.batches * args.batch, "window", "windows");
        println!("task {} of the built-in generator: {windows} of {block} tokens, independent", data.task);
        println!("loss {:.4} nats/byte, {:.4} bits/byte", m.val_loss, m.bits_per_byte);
        println!(
            "answer accuracy {:.1}% of {} answers; chance {:.1}%",
            100.0 * m.answer_accuracy.unwrap_or(0.0),
            m.answers,
            100.0 * chance
        );
        return Ok(ExitCode::SUCCESS);
    }
    let s = data.synthetic();
    let distractors = match (s.min_distractors, s.distractors) {
        (_, 0) => String::new(),
        (a, b) if a == b => format!(", {} per kind", crate::count(b, "distractor", "distractors")),
        (a, b) => format!(", {a}..={b} distractors per kind"),
    };
    println!(
        "built-in corpus ({}..={} facts{distractors}, distance {}, {:.0}% lists): {} of {} tokens, independent",
        s.min_facts,
        s.facts,
        s.distance,
        s.lists * 100.0,
        crate::count(args.batches * args.batch, "window", "windows"),
        block
    );
    print_answers(&m);
    Ok(ExitCode::SUCCESS)
}

/// The built-in corpus's loss and answer accuracy, over all and by group, each
/// beside what the strategies that bind nothing score, and the test of binding on
/// the answers where elimination cannot help.
fn print_answers(m: &EvalMetrics) {
    println!("loss {:.4} nats/byte, perplexity {:.3}, {:.4} bits/byte", m.val_loss, m.val_loss.exp(), m.bits_per_byte);
    let accuracy = m.answer_accuracy.unwrap_or(0.0);
    let (copy, eliminate) = (m.copy_baseline().unwrap_or(0.0), m.eliminate_baseline().unwrap_or(0.0));
    let margin = 100.0 * (accuracy - copy.max(eliminate));
    println!(
        "answer accuracy {:.1}% of {} answers; strategies that bind nothing: copying a stated value of the \
         right kind at random {:.1}%, copying one no earlier answer gave {:.1}%: {:.1} points {} the better",
        accuracy * 100.0,
        m.answers,
        copy * 100.0,
        eliminate * 100.0,
        margin.abs(),
        if margin >= 0.0 { "above" } else { "below" }
    );
    println!("by kind of document (first of their kind: answers no earlier answer of that kind precedes, where only binding beats chance):");
    for g in &m.answer_groups {
        println!(
            "  {:<7} with {} fact{}: {:5.1}% of {:4} (copying {:5.1}%, not given yet {:5.1}%); \
             first of their kind {:5.1}% of {:4} against {:5.1}% by chance, {}",
            if g.list { "lists" } else { "stories" },
            g.facts,
            if g.facts == 1 { " " } else { "s" },
            100.0 * g.accuracy(),
            g.answers,
            g.copy_baseline * 100.0,
            g.eliminate_baseline * 100.0,
            100.0 * g.first_accuracy(),
            g.first_answers,
            100.0 * g.first_chance,
            p_value(g.first_p_value)
        );
    }
}

/// A p-value as `p = 0.031`, or `p < 0.0001` when smaller.
fn p_value(p: f64) -> String {
    if p < 1e-4 {
        "p < 0.0001".into()
    } else {
        format!("p = {p:.4}")
    }
}

/// `--carry`: the file as one stream, beside the same file in independent windows.
fn carry(
    bdh_model: &bdh::model::bdh::Bdh,
    model: &bdh::Model,
    text: &Text,
    name: &str,
    block: usize,
    args: &Args,
) -> anyhow::Result<ExitCode> {
    let job = Job::new("eval: tokens", text.len() as u64);
    let stream = text.stream(bdh_model, args.state.state_dtype, &mut |done, _| job.set(done as u64))?;
    job.finish();
    let vocab = model.config().vocab_size();
    let windows = text.windows(&mut Cpu::new(model), vocab, block, args.batch, &mut |_, _| {})?;
    args.json.write(&serde_json::json!({"stream": stream, "windows": windows}))?;
    if args.json.to_stdout() {
        return Ok(ExitCode::SUCCESS);
    }
    let unit = text.unit();
    println!("{name}: {} predicted", text.count(stream.tokens, stream.bytes));
    println!(
        "as one stream (state carried): loss {:.4} nats/{unit}, {:.4} bits/byte; in independent windows of {}: {:.4}, {:.4}",
        stream.loss, stream.bits_per_byte, windows.window, windows.loss, windows.bits_per_byte
    );
    println!("{:>16} {:>9} {:>10}", "positions", "tokens", "loss");
    for b in &stream.buckets {
        println!("{:>16} {:>9} {:>10.4}", format!("{}–{}", b.from, b.to), b.tokens, b.loss);
    }
    Ok(ExitCode::SUCCESS)
}

/// A text to score: its bytes, and its tokens if a BPE reads it.
struct Text {
    bytes: BytesView,
    ids: Option<Arc<[u32]>>,
    tokenizer: Tokenizer,
}

impl Text {
    /// Tokens.
    fn len(&self) -> usize {
        self.ids.as_ref().map_or(self.bytes.bytes().len(), |ids| ids.len())
    }

    /// What the loss is per: `byte` or `token`.
    fn unit(&self) -> &'static str {
        if self.ids.is_some() {
            "token"
        } else {
            "byte"
        }
    }

    /// `tokens` predicted tokens that decode to `bytes` bytes, in words.
    fn count(&self, tokens: usize, bytes: usize) -> String {
        match self.ids {
            Some(_) => format!("{bytes} bytes ({tokens} tokens)"),
            None => format!("{bytes} bytes"),
        }
    }

    /// The loss in independent windows of `block` tokens.
    fn windows(
        &self,
        fwd: &mut dyn Forward,
        vocab: usize,
        block: usize,
        batch: usize,
        on: &mut dyn FnMut(usize, usize),
    ) -> bdh::Result<FileEval> {
        match &self.ids {
            Some(ids) => evaluate_tokens_on(fwd, vocab, ids, &self.tokenizer, (batch, block), on),
            None => evaluate_bytes_on(fwd, vocab, self.bytes.bytes(), (batch, block), on),
        }
    }

    /// The loss read as one stream, in chunks of 256 tokens.
    fn stream(
        &self,
        model: &bdh::model::bdh::Bdh,
        dtype: StateDtype,
        on: &mut dyn FnMut(usize, usize),
    ) -> bdh::Result<StreamEval> {
        match &self.ids {
            Some(ids) => evaluate_stream_tokens(model, ids, &self.tokenizer, (256, dtype), on),
            None => evaluate_stream(model, self.bytes.bytes(), (256, dtype), on),
        }
    }
}
