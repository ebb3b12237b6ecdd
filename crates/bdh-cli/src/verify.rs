//! `bdh verify`: the model on golden inputs, max diffs per tensor, pass or fail.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::io::read_safetensors;
use bdh::verify::verify_on;
use bdh::Model;

use crate::device::DeviceArgs;
use crate::model_args::ModelArgs;

/// Runs a model on a golden file's inputs and compares every tensor it holds.
///
/// Exit status: 0 when all are within tolerance, 1 when one is not, 2 on bad input.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Golden tensors (safetensors): input_ids and any of logits, targets+loss, grad.*, greedy_ids.
    #[arg(long)]
    golden: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let model = args.model.load()?;
    let golden = read_safetensors(&args.golden).context("reading golden tensors")?;
    let other = made_for_another(&args.golden, &model);
    let doing = other.as_ref().map_or("verifying".to_string(), |o| format!("verifying ({o})"));
    let mut device = args.device.open(&model)?;
    let on = device.as_mut().map(|d| &mut **d as &mut dyn bdh::engine::Device);
    let report = verify_on(&model, on, &golden, &args.golden).context(doing)?;
    if let Some(on) = &report.device {
        println!("what the golden file holds of logits, loss, gradients and a greedy continuation, on the {on}");
    }
    println!("{:<22} {:>12} {:>12} {:>10}  result", "tensor", "max abs", "max rel", "tolerance");
    for t in &report.tensors {
        let verdict = if t.passed() { "ok" } else { "FAIL" };
        println!("{:<22} {:>12.3e} {:>12.3e} {:>10.0e}  {verdict}", t.name, t.max_abs, t.max_rel, t.tolerance);
    }
    if let Some(g) = &report.greedy {
        let verdict = match g.first_mismatch {
            None => "ok".to_string(),
            Some((row, i)) => format!("FAIL (first difference: row {row}, generated token {i})"),
        };
        println!("{:<22} {:>12} tokens equal  {verdict}", "greedy_ids", format!("{}/{}", g.matching, g.total));
    }
    let passed = report.passed();
    println!("{}", if passed { "PASS: matches the reference" } else { "FAIL: differs from the reference" });
    if let (false, Some(other)) = (passed, other) {
        println!("note: {other}");
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// If the golden file sits beside another model than `model` (the one it was made
/// from, as `make_golden.py` leaves them), a sentence naming it.
fn made_for_another(golden: &Path, model: &Model) -> Option<String> {
    let dir = golden.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (_, beside) = crate::model_args::load(dir, None).ok()?;
    let (theirs, ours) = (beside.config().describe(), model.config().describe());
    let how = if theirs == ours { "the same shape, other weights".to_string() } else { format!("this is {ours}") };
    (beside != *model).then(|| {
        format!("the golden {} was made for the model in {}, {theirs}; {how}", golden.display(), dir.display())
    })
}
