//! `bdh merge`: one model from two, by concatenating their neurons.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::io::checkpoint::{replace_dir, save};
use bdh::model::bdh::{merge, Bdh};
use bdh::Model;

/// Merge two BDH models of the same L, D, H and vocabulary by concatenating their
/// neurons head by head (each keeping its RoPE frequency) and averaging the
/// embedding and the output head.
#[derive(clap::Args)]
pub struct Args {
    /// The first model (a run directory, checkpoint directory, safetensors or .pt).
    a: PathBuf,
    /// The second model.
    b: PathBuf,
    /// Directory for the merged model (`model.safetensors`, `config.json`,
    /// `heritage.json`). It must not exist, or be an earlier merge's output, which is
    /// then replaced atomically.
    #[arg(long)]
    out: PathBuf,
}

/// The file that says where a merged model's neurons came from; its presence marks
/// a directory as a merge's output, which a later merge may replace.
const HERITAGE_FILE: &str = "heritage.json";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Never replace anything but an earlier merge: not a run, not an input model.
    if args.out.exists() {
        let same = |p: &PathBuf| std::fs::canonicalize(p).ok() == std::fs::canonicalize(&args.out).ok();
        anyhow::ensure!(
            !same(&args.a) && !same(&args.b) && args.out.join(HERITAGE_FILE).is_file(),
            "refusing to write into {}: it exists and is not an earlier merge's output (no {HERITAGE_FILE}) — \
             choose another --out",
            args.out.display()
        );
    }
    let ((a, fa), (b, fb)) = (open(&args.a)?, open(&args.b)?);
    let (merged, heritage) = merge(&a, &b)?;
    let c = &merged.config;
    let heritage_json = serde_json::json!({
        "a": {"model": args.a.display().to_string(), "weights (FNV-1a)": fa, "neurons per head": heritage.from_a},
        "b": {"model": args.b.display().to_string(), "weights (FNV-1a)": fb, "neurons per head": heritage.from_b},
        "heads": heritage.heads,
        "neurons": format!(
            "in each head, neurons 0..{} come from a and {}..{} from b, with their RoPE frequencies",
            heritage.from_a,
            heritage.from_a,
            heritage.from_a + heritage.from_b
        ),
        "averaged": heritage.averaged,
    });
    let model = Model::Bdh(merged.clone());
    replace_dir(&args.out, |dir| {
        save(&model, dir)?;
        let text = serde_json::to_string_pretty(&heritage_json).expect("JSON");
        bdh::io::write_atomic(&dir.join(HERITAGE_FILE), text.as_bytes())
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "merged: BDH L{} D{} H{} N{} ({} + {} neurons per head), {:.2} M parameters, into {}",
        c.n_layer,
        c.n_embd,
        c.n_head,
        c.n_neurons(),
        heritage.from_a,
        heritage.from_b,
        model.config().param_count() as f64 / 1e6,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A BDH model a user named, and its weights' fingerprint.
fn open(model: &Path) -> anyhow::Result<(Bdh, String)> {
    let (path, m) = crate::model_args::load(model, None)?;
    let fingerprint = m.params().fingerprint();
    match m {
        Model::Bdh(m) => Ok((m, fingerprint)),
        other => {
            anyhow::bail!("{} is a {}: only BDH models merge by neurons", path.display(), other.config().describe())
        }
    }
}
