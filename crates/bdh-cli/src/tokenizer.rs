//! `bdh tokenizer train`: a byte-level BPE tokenizer learnt from a text.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bdh::data::{Bpe, BytesView};

/// Make a BPE tokenizer for `bdh train --tokenizer`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Learn a byte-level BPE (GPT-2's scheme: 256 byte tokens, then the most
    /// frequent merges) from a UTF-8 text and write it as a Hugging Face tokenizer.json.
    Train(TrainArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// The text to learn from.
    #[arg(long)]
    data: PathBuf,
    /// Tokens at most: the 256 bytes and up to K − 256 merges (fewer if the text
    /// has fewer pairs that occur twice).
    #[arg(long, value_name = "K")]
    vocab_size: usize,
    /// Where to write the tokenizer.
    #[arg(long, default_value = "tokenizer.json")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Train(args) = args.command;
    let text = BytesView::open(&args.data)?;
    let bpe =
        Bpe::train(text.bytes(), args.vocab_size).with_context(|| format!("learning from {}", args.data.display()))?;
    bdh::io::write_atomic(&args.out, bpe.json().as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    let (bytes, tokens) = (text.bytes().len(), bpe.encode(text.bytes()).len());
    println!(
        "wrote {}: {} tokens (256 bytes, {} merges); {} reads {bytes} bytes as {tokens} tokens, {:.2} bytes a token",
        args.out.display(),
        bpe.vocab_size(),
        bpe.vocab_size() - 256,
        args.data.display(),
        bytes as f64 / tokens.max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}
