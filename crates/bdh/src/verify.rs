//! Compares a model against golden tensors produced by the reference `bdh.py`.
//!
//! The golden file is a safetensors file with `input_ids` (B, T) and any of:
//! `logits` (B, T, V), `targets` (B, T) with `loss` (1) and `grad.<param>`, and
//! `greedy_ids` (B, T+K): the prompt followed by K argmax tokens.

use std::path::Path;

use crate::engine::{CpuReader, Device, Reader};
use crate::error::{Error, Result};
use crate::infer::{argmax, Prepared};
use crate::io::{Tensor, TensorData, TensorMap};
use crate::model::bdh::NO_EDITS;
use crate::model::{backward, forward, loss, Activations, Gradients, Mode, Model};

/// Tolerance for logits and loss: max abs diff relative to the tensor's max-abs.
pub const OUTPUT_TOLERANCE: f32 = 1e-4;
/// Tolerance for gradients, relative to the tensor's max-abs (float32 gradients of
/// any correct implementation sit ~2e-3 from float64 ones: the model is
/// ill-conditioned at t = 0, where attention is exactly zero before its LayerNorm).
pub const GRADIENT_TOLERANCE: f32 = 5e-3;

/// The comparison of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorCheck {
    /// Name in the golden file.
    pub name: String,
    /// Largest absolute difference.
    pub max_abs: f32,
    /// `max_abs` divided by the golden tensor's largest absolute value.
    pub max_rel: f32,
    /// Allowed `max_rel`.
    pub tolerance: f32,
}

impl TensorCheck {
    /// Whether the difference is within tolerance.
    pub fn passed(&self) -> bool {
        self.max_rel <= self.tolerance
    }
}

/// The comparison of a greedy continuation, token for token.
#[derive(Clone, Debug, PartialEq)]
pub struct GreedyCheck {
    /// Tokens generated per row (K).
    pub generated: usize,
    /// Generated tokens equal to the golden ones, over all rows.
    pub matching: usize,
    /// Total generated tokens, over all rows.
    pub total: usize,
    /// (row, index into the continuation) of the first difference.
    pub first_mismatch: Option<(usize, usize)>,
}

/// Everything a verification compared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Per-tensor comparisons, in the order performed.
    pub tensors: Vec<TensorCheck>,
    /// The greedy continuation, if the golden file has one.
    pub greedy: Option<GreedyCheck>,
    /// The device that computed the logits, the loss, the gradients and the
    /// continuation, when not the CPU.
    pub device: Option<String>,
}

impl Report {
    /// Whether every comparison is within its tolerance.
    pub fn passed(&self) -> bool {
        self.tensors.iter().all(TensorCheck::passed) && self.greedy.as_ref().is_none_or(|g| g.first_mismatch.is_none())
    }
}

/// Max abs and max rel (to the golden max-abs) difference of `ours` from `golden`.
pub fn compare(name: &str, ours: &[f32], golden: &[f32], tolerance: f32) -> TensorCheck {
    let max_abs = ours.iter().zip(golden).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = golden.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let max_rel = if scale > 0.0 { max_abs / scale } else { max_abs };
    TensorCheck { name: name.into(), max_abs, max_rel, tolerance }
}

fn token_ids(t: &Tensor, name: &str, vocab: usize) -> Result<(usize, usize, Vec<u32>)> {
    let TensorData::I64(ids) = &t.data else {
        return Err(Error::Shape { name: name.into(), expected: "integer token ids".into(), found: "floats".into() });
    };
    let [b, len] = t.shape[..] else {
        return Err(Error::Shape { name: name.into(), expected: "(B, T)".into(), found: format!("{:?}", t.shape) });
    };
    if b == 0 || len == 0 {
        return Err(Error::Input(format!("`{name}` is empty: {:?}", t.shape)));
    }
    let ids = ids
        .iter()
        .map(|&i| u32::try_from(i).ok().filter(|&u| (u as usize) < vocab))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| Error::Input(format!("`{name}` holds ids outside 0..{vocab}")))?;
    Ok((b, len, ids))
}

fn golden_f32<'a>(golden: &'a TensorMap, name: &str, shape: &[usize]) -> Result<Option<&'a [f32]>> {
    let Some(t) = golden.get(name) else { return Ok(None) };
    if t.shape.iter().product::<usize>() != shape.iter().product::<usize>() {
        return Err(Error::Shape {
            name: name.into(),
            expected: format!("{shape:?}"),
            found: format!("{:?}", t.shape),
        });
    }
    t.f32s(name).map(Some)
}

/// Runs `model` on the golden inputs (eval mode, no dropout) and compares.
pub fn verify(model: &Model, golden: &TensorMap, path: &Path) -> Result<Report> {
    verify_on(model, None, golden, path)
}

/// [`verify`] with the logits, the loss, the gradients and the greedy continuation
/// computed on `device` (`model` held there).
pub fn verify_on(
    model: &Model,
    mut device: Option<&mut dyn Device>,
    golden: &TensorMap,
    path: &Path,
) -> Result<Report> {
    let vocab = model.config().vocab_size();
    let ids =
        golden.get("input_ids").ok_or_else(|| Error::MissingTensor { path: path.into(), name: "input_ids".into() })?;
    let (b, t, tokens) = token_ids(ids, "input_ids", vocab)?;
    if let Some(unknown) = golden.keys().find(|k| {
        !["input_ids", "targets", "logits", "loss", "greedy_ids"].contains(&k.as_str())
            && k.strip_prefix("grad.").is_none_or(|p| model.params().slot(p).is_none())
    }) {
        return Err(Error::format(path, format!("unknown golden tensor `{unknown}`")));
    }

    let mut report = Report { device: device.as_ref().map(|d| d.device()), ..Report::default() };
    let wants_grads = golden.keys().any(|k| k.starts_with("grad."));
    // The CPU's forward, for everything without a device.
    let mut acts = None;
    if device.is_none() {
        let a = acts.insert(Activations::new(model, b, t)?);
        forward(model, &tokens, a, Mode::Eval)?;
    }
    if let Some(g) = golden_f32(golden, "logits", &[b, t, vocab])? {
        let ours = match (&mut device, &acts) {
            (Some(dev), _) => dev.logits(&tokens, b, t)?,
            (None, Some(a)) => a.logits().to_vec(),
            (None, None) => unreachable!("the CPU ran"),
        };
        report.tensors.push(compare("logits", &ours, g, OUTPUT_TOLERANCE));
    }

    if let Some(targets) = golden.get("targets") {
        let (tb, tt, targets) = token_ids(targets, "targets", vocab)?;
        if (tb, tt) != (b, t) {
            return Err(Error::Shape {
                name: "targets".into(),
                expected: format!("[{b}, {t}]"),
                found: format!("[{tb}, {tt}]"),
            });
        }
        let grads = match (wants_grads, &mut device, &acts) {
            (false, _, _) => None,
            (true, Some(dev), _) => Some(dev.gradients(&tokens, &targets, b, t)?),
            (true, None, Some(acts)) => {
                let mut grads = Gradients::new(model, b, t)?;
                let l = backward(model, acts, &targets, &mut grads)?;
                Some((l, grads.params))
            }
            (true, None, None) => unreachable!("the CPU ran"),
        };
        if let Some((_, grads)) = &grads {
            for (slot, ours) in grads.tensors() {
                let key = format!("grad.{}", slot.name);
                if let Some(g) = golden_f32(golden, &key, &[ours.len()])? {
                    report.tensors.push(compare(&key, ours, g, GRADIENT_TOLERANCE));
                }
            }
        }
        let ours = match (&grads, &mut device, &acts) {
            (Some((l, _)), _, _) => *l,
            (None, Some(dev), _) => (dev.loss_sum(&tokens, &targets, b, t)? / (b * t) as f64) as f32,
            (None, None, Some(acts)) => loss(acts, &targets)?,
            (None, None, None) => unreachable!("the CPU ran"),
        };
        if let Some(g) = golden_f32(golden, "loss", &[1])? {
            report
                .tensors
                .insert(usize::from(golden.contains_key("logits")), compare("loss", &[ours], g, OUTPUT_TOLERANCE));
        }
    } else if wants_grads || golden.contains_key("loss") {
        return Err(Error::MissingTensor { path: path.into(), name: "targets".into() });
    }

    if let Some(g) = golden.get("greedy_ids") {
        let (gb, total_len, want) = token_ids(g, "greedy_ids", vocab)?;
        if gb != b || total_len < t {
            return Err(Error::Shape {
                name: "greedy_ids".into(),
                expected: format!("[{b}, ≥{t}]"),
                found: format!("{:?}", g.shape),
            });
        }
        let k = total_len - t;
        let mut check = GreedyCheck { generated: k, matching: 0, total: b * k, first_mismatch: None };
        let prepared = Prepared::new(model.clone())?;
        for row in 0..b {
            let want = &want[row * total_len..(row + 1) * total_len];
            let prompt = &tokens[row * t..(row + 1) * t];
            let got = match &device {
                Some(dev) => greedy_with(&mut *dev.stream(&prepared.state()?)?, prompt, k)?,
                None => greedy(&prepared, prompt, k)?,
            };
            for (i, (&w, &o)) in want[t..].iter().zip(&got).enumerate() {
                if w == o {
                    check.matching += 1;
                } else if check.first_mismatch.is_none() {
                    check.first_mismatch = Some((row, i));
                }
            }
        }
        report.greedy = Some(check);
    }
    if report.tensors.is_empty() && report.greedy.is_none() {
        return Err(Error::format(path, "holds nothing to compare (no logits, loss, grad.* or greedy_ids)"));
    }
    Ok(report)
}

/// `k` tokens after `prompt`, each the argmax (first on ties, as `torch.argmax`):
/// the prompt prefilled, then one recurrent step per token.
pub fn greedy(prepared: &Prepared, prompt: &[u32], k: usize) -> Result<Vec<u32>> {
    let (mut state, mut scratch) = (prepared.state()?, prepared.scratch());
    greedy_with(&mut CpuReader { prepared, state: &mut state, scratch: &mut scratch, edits: &NO_EDITS }, prompt, k)
}

/// [`greedy`] on any [`Reader`] (a fresh stream on the CPU or on a device).
pub fn greedy_with(reader: &mut dyn Reader, prompt: &[u32], k: usize) -> Result<Vec<u32>> {
    let mut next = argmax(reader.prefill(prompt)?);
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        out.push(next);
        if i + 1 < k {
            next = argmax(reader.step(next)?);
        }
    }
    Ok(out)
}
