//! `bdh merge`: one model from two, by concatenating their neurons.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::io::checkpoint::{is_replaceable, replace_dir, save};
use bdh::io::run_dir::lock_beside;
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
    /// `heritage.json`). It must not exist, or be an earlier merge's output (a link
    /// this command made), which is then replaced atomically.
    #[arg(long)]
    out: PathBuf,
}

/// The file that says where a merged model's neurons came from; with the mark of
/// the directory it is in, it shows a merge's output, which a later merge may replace.
const HERITAGE_FILE: &str = "heritage.json";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // One merge into --out at a time; then never replace anything but an earlier
    // merge: not a run, not an input model, not a folder of the same name.
    let lock = lock_beside(&args.out)?;
    if let Some(pid) = lock.took_over() {
        println!("{} was locked by process {pid}, which no longer runs: taken over", args.out.display());
    }
    if args.out.symlink_metadata().is_ok() {
        let same = |p: &PathBuf| std::fs::canonicalize(p).ok() == std::fs::canonicalize(&args.out).ok();
        let earlier = is_replaceable(&args.out) && args.out.join(HERITAGE_FILE).is_file();
        anyhow::ensure!(
            !same(&args.a) && !same(&args.b) && earlier,
            "refusing to write into {}: it exists and is not an earlier merge's output — choose another --out",
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
