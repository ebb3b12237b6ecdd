//! Activation patching: where a recalled fact lives. A clean and a corrupted text
//! differ in one stated value; the model should answer each with its own value.
//! Activations of the clean run (x, y, x⊙y, a layer's output, or the synapse state
//! ρ) are written into the corrupted run one layer, head or neuron group at a time,
//! and the fraction of the answer's logit difference they restore is measured:
//! `(LD_patched − LD_corrupted) / (LD_clean − LD_corrupted)`, summed over pairs,
//! where LD is the logit of the clean answer's first byte minus the corrupted one's.
//! ρ patches are scored by the recurrent step (ρ after all but the last token is
//! copied, then the last token is stepped), against the same step's clean and
//! corrupted LDs.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::Pair;
use crate::error::{Error, Result};
use crate::model::bdh::{Activations, Bdh, Edits, Pass, Patch, Prepared, Site, State, NO_EDITS};

use super::Progress;
use super::Scope;

/// Most clean/corrupted pairs a patching run takes.
pub const MAX_PAIRS: usize = 10_000;

/// A clean and a corrupted text of the same length, and the first bytes of the two
/// answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairTokens {
    /// The clean text.
    pub clean: Vec<u32>,
    /// The corrupted text.
    pub corrupted: Vec<u32>,
    /// First byte of the clean answer.
    pub clean_answer: u32,
    /// First byte of the corrupted answer.
    pub corrupt_answer: u32,
}

impl PairTokens {
    /// Checks that the texts are non-empty and of equal length and the answers differ.
    pub fn new(clean: &[u8], corrupted: &[u8], clean_answer: &[u8], corrupt_answer: &[u8]) -> Result<Self> {
        if clean.is_empty() || clean.len() != corrupted.len() {
            return Err(Error::Input(format!(
                "patching needs a clean and a corrupted text of the same, non-zero length (positions must line \
                 up); got {} and {} bytes",
                clean.len(),
                corrupted.len()
            )));
        }
        match (clean_answer.first(), corrupt_answer.first()) {
            (Some(a), Some(b)) if a != b => Ok(PairTokens {
                clean: clean.iter().map(|&c| c as u32).collect(),
                corrupted: corrupted.iter().map(|&c| c as u32).collect(),
                clean_answer: *a as u32,
                corrupt_answer: *b as u32,
            }),
            _ => Err(Error::Input(format!(
                "the two answers ({:?} and {:?}) must be non-empty and start with different bytes",
                String::from_utf8_lossy(clean_answer),
                String::from_utf8_lossy(corrupt_answer)
            ))),
        }
    }

    /// A pair of the built-in language.
    pub fn from_pair(p: &Pair) -> Result<Self> {
        Self::new(p.clean.as_bytes(), p.corrupted.as_bytes(), p.clean_value.as_bytes(), p.corrupt_value.as_bytes())
    }

    /// The logit difference clean − corrupted answer in the last row of `logits`.
    fn diff(&self, logits: &[f32], v: usize) -> f64 {
        let last = &logits[logits.len() - v..];
        (last[self.clean_answer as usize] - last[self.corrupt_answer as usize]) as f64
    }
}

/// What one patch restored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Restored {
    /// x, y, xy, out (the layer's output) or rho.
    pub site: Site,
    /// The layer.
    pub layer: usize,
    /// The head, or `None` for every head (always `None` for out).
    pub head: Option<usize>,
    /// Fraction of the logit difference restored.
    pub restored: f64,
}

/// The k first neurons (or rows of ρ) of a ranking patched together, and k
/// random ones of the same head (the control).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupPoint {
    /// How many.
    pub k: usize,
    /// Fraction restored by the first k.
    pub restored: f64,
    /// Fraction restored by k random ones (the first k of a fixed random order).
    pub random: f64,
}

/// Everything a patching run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PatchReport {
    /// Pairs.
    pub pairs: usize,
    /// Mean logit difference of the clean runs.
    pub clean_diff: f64,
    /// Mean logit difference of the corrupted runs.
    pub corrupt_diff: f64,
    /// Every layer, head and site patched whole.
    pub sites: Vec<Restored>,
    /// The single head and activation site (x, y or xy) that restores most.
    pub best: Restored,
    /// Its neurons, ranked by how much the clean and corrupted runs differ there,
    /// patched k at a time.
    pub neurons: Vec<GroupPoint>,
    /// The first 64 of that ranking.
    pub top_neurons: Vec<usize>,
    /// The single head whose ρ restores most.
    pub best_rho: Restored,
    /// Its rows of ρ, ranked by how much they differ, patched k at a time.
    pub rho_rows: Vec<GroupPoint>,
    /// The first 64 of that ranking.
    pub top_rho_rows: Vec<usize>,
}

/// One run's activations of each site, per layer.
struct Recorded {
    x: Vec<Arc<Vec<f32>>>,
    y: Vec<Arc<Vec<f32>>>,
    xy: Vec<Arc<Vec<f32>>>,
    out: Vec<Arc<Vec<f32>>>,
}

impl Recorded {
    fn of(&self, site: Site, layer: usize) -> Arc<Vec<f32>> {
        match site {
            Site::X => self.x[layer].clone(),
            Site::Y => self.y[layer].clone(),
            Site::Xy => self.xy[layer].clone(),
            _ => self.out[layer].clone(),
        }
    }
}

/// A pair run once clean and once corrupted, with what patching needs of it.
struct Run<'a> {
    pair: &'a PairTokens,
    clean: Recorded,
    corrupted: Recorded,
    clean_diff: f64,
    corrupt_diff: f64,
    /// ρ after all but the last token, clean and corrupted.
    rho: (State, State),
    /// The corrupted logit difference of the recurrent step from `rho.1`: the
    /// baseline of ρ patches, which are scored by that step.
    corrupt_step_diff: f64,
    /// The same from `rho.0`.
    clean_step_diff: f64,
}

/// Powers of two up to `n`, and `n`.
fn doubling(n: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| k.checked_mul(2)).take_while(|&k| k < n).collect();
    ks.push(n);
    ks
}

/// Patches clean activations into corrupted runs of `pairs` and reports what each
/// layer, head, site, neuron group and synapse group restores; `progress` counts
/// the pairs recorded and the patched runs over all pairs.
pub fn patch(model: &Scope, pairs: &[PairTokens], progress: Progress) -> Result<PatchReport> {
    let c = &model.config;
    if pairs.is_empty() || pairs.len() > MAX_PAIRS {
        return Err(Error::Input(format!("patching takes 1 to {MAX_PAIRS} pairs; got {}", pairs.len())));
    }
    if let Some(p) = pairs.iter().find(|p| p.clean.len() != p.corrupted.len() || p.clean.is_empty()) {
        return Err(Error::Input(format!(
            "a pair of {} and {} tokens; they must be equal",
            p.clean.len(),
            p.corrupted.len()
        )));
    }
    let (l_n, h_n, n, d, v) = (c.n_layer, c.n_head, c.n_neurons(), c.n_embd, c.vocab_size);
    if let Some(p) = pairs.iter().find(|p| p.clean_answer.max(p.corrupt_answer) as usize >= v) {
        return Err(Error::Input(format!(
            "an answer byte ({} or {}) is not in the model's vocabulary of {v}",
            p.clean_answer, p.corrupt_answer
        )));
    }
    if let Some(p) = pairs.iter().flat_map(|p| p.clean.iter().chain(&p.corrupted)).find(|&&t| t as usize >= v) {
        return Err(Error::Input(format!("token {p} is not in the model's vocabulary of {v}")));
    }
    // What every pair keeps: x, y, x⊙y of each layer and the layer outputs, clean and
    // corrupted, and two synapse states.
    let per_pair = |t: usize| {
        let acts = l_n.checked_mul(h_n * t)?.checked_mul(3 * n)?.checked_add(l_n.checked_mul(t * d)?)?;
        acts.checked_mul(2)?.checked_add(2 * l_n * h_n * n * d)
    };
    let total = pairs.iter().try_fold(0usize, |sum, p| sum.checked_add(per_pair(p.clean.len())?));
    crate::memory::ensure_fits(crate::memory::f32_bytes(total), "the activations patching keeps")?;
    // The pairs, each site of each layer (every head and all heads), and the two
    // curves of neuron groups and synapse rows, each against its random control.
    let units = pairs.len() + l_n * (4 * (h_n + 1) + 1) + 4 * doubling(n).len();
    let done = std::cell::Cell::new(0);
    let tick = || {
        done.set(done.get() + 1);
        progress(done.get(), units);
    };
    progress(0, units);
    let prepared = Prepared::new(Bdh::clone(model))?;
    let mut scratch = prepared.scratch();
    let mut runs = Vec::with_capacity(pairs.len());
    let mut acts: Option<Activations> = None;
    for pair in pairs {
        let t = pair.clean.len();
        let acts = Activations::reuse(&mut acts, model, 1, t)?;
        let mut record = |tokens: &[u32]| -> Result<(Recorded, f64)> {
            model.forward(tokens, acts, Pass::default())?;
            let keep = |f: &dyn Fn(usize) -> Vec<f32>| (0..l_n).map(|l| Arc::new(f(l))).collect();
            let a = &*acts;
            let recorded = Recorded {
                x: keep(&|l| a.x(l).to_vec()),
                y: keep(&|l| a.y(l).to_vec()),
                xy: keep(&|l| a.x(l).iter().zip(a.y(l)).map(|(x, y)| x * y).collect()),
                out: keep(&|l| a.residual(l + 1).to_vec()),
            };
            Ok((recorded, pair.diff(&a.logits, v)))
        };
        let (clean, clean_diff) = record(&pair.clean)?;
        let (corrupted, corrupt_diff) = record(&pair.corrupted)?;
        let mut prefix = |tokens: &[u32]| -> Result<State> {
            let mut s = prepared.state()?;
            if t > 1 {
                prepared.prefill(&mut s, &mut scratch, &tokens[..t - 1], &NO_EDITS)?;
            }
            Ok(s)
        };
        let rho = (prefix(&pair.clean)?, prefix(&pair.corrupted)?);
        let last = *pair.corrupted.last().expect("non-empty");
        let mut step_diff = |state: &State| -> Result<f64> {
            Ok(pair.diff(prepared.step(&mut [&mut state.clone()], &mut scratch, &[last], &NO_EDITS)?, v))
        };
        let (clean_step_diff, corrupt_step_diff) = (step_diff(&rho.0)?, step_diff(&rho.1)?);
        runs.push(Run { pair, clean, corrupted, clean_diff, corrupt_diff, rho, corrupt_step_diff, clean_step_diff });
        tick();
    }
    let clean_sum: f64 = runs.iter().map(|r| r.clean_diff).sum();
    let corrupt_sum: f64 = runs.iter().map(|r| r.corrupt_diff).sum();
    let gap = clean_sum - corrupt_sum;
    if gap.is_nan() || gap <= 1e-6 * runs.len() as f64 {
        return Err(Error::Input(format!(
            "the model does not tell the clean answer from the corrupted one (mean logit difference {:.4} clean, \
             {:.4} corrupted): patching has nothing to restore",
            clean_sum / runs.len() as f64,
            corrupt_sum / runs.len() as f64
        )));
    }

    // Patched corrupted runs: the sum of LD_patched − LD_corrupted over pairs / gap.
    let mut acts: Option<Activations> = None;
    let mut activation = |site: Site, layer: usize, head: Option<usize>, neurons: Option<Vec<u32>>| -> Result<f64> {
        let mut sum = 0.0;
        for r in &runs {
            let t = r.pair.clean.len();
            let mut edits = Edits::new();
            let values = r.clean.of(site, layer);
            edits.patch(Patch { site, layer, head, neurons: neurons.clone(), positions: 0..t, values });
            let acts = Activations::reuse(&mut acts, model, 1, t)?;
            model.forward(&r.pair.corrupted, acts, Pass { edits: &edits, ..Pass::default() })?;
            sum += r.pair.diff(&acts.logits, v) - r.corrupt_diff;
        }
        tick();
        Ok(sum / gap)
    };
    let mut scratch = prepared.scratch();
    let step_gap: f64 = runs.iter().map(|r| r.clean_step_diff - r.corrupt_step_diff).sum();
    let mut synapses = |layer: usize, head: Option<usize>, rows: Option<&[usize]>| -> Result<f64> {
        let mut sum = 0.0;
        for r in &runs {
            let mut s = r.rho.1.clone();
            for h in head.map_or(0..h_n, |h| h..h + 1) {
                let block = (layer * h_n + h) * n * d;
                match rows {
                    None => {
                        s.rho.copy_range(&r.rho.0.rho, block..block + n * d)?;
                        // and the head's per-stream state beside ρ: its key's traces, its queued writes
                        for (patched, clean) in [(&mut s.keys, &r.rho.0.keys), (&mut s.queue, &r.rho.0.queue)] {
                            let w = clean.len() / (h_n * l_n).max(1);
                            let at = (layer * h_n + h) * w;
                            patched[at..at + w].copy_from_slice(&clean[at..at + w]);
                        }
                    }
                    Some(rows) => {
                        for &i in rows {
                            s.rho.copy_range(&r.rho.0.rho, block + i * d..block + (i + 1) * d)?;
                        }
                    }
                }
            }
            let last = *r.pair.corrupted.last().expect("non-empty");
            let logits = prepared.step(&mut [&mut s], &mut scratch, &[last], &NO_EDITS)?;
            sum += r.pair.diff(logits, v) - r.corrupt_step_diff;
        }
        tick();
        Ok(sum / step_gap)
    };

    let mut sites = Vec::new();
    for layer in 0..l_n {
        for site in [Site::X, Site::Y, Site::Xy] {
            for head in (0..h_n).map(Some).chain([None]) {
                sites.push(Restored { site, layer, head, restored: activation(site, layer, head, None)? });
            }
        }
        sites.push(Restored {
            site: Site::Out,
            layer,
            head: None,
            restored: activation(Site::Out, layer, None, None)?,
        });
        for head in (0..h_n).map(Some).chain([None]) {
            sites.push(Restored { site: Site::Rho, layer, head, restored: synapses(layer, head, None)? });
        }
    }
    let best_of = |rho: bool| {
        sites
            .iter()
            .filter(|s| s.head.is_some() && (s.site == Site::Rho) == rho && s.site != Site::Out)
            .max_by(|a, b| a.restored.total_cmp(&b.restored))
            .cloned()
            .expect("every model has a head")
    };
    let (best, best_rho) = (best_of(false), best_of(true));

    // Neurons of the best head ranked by |clean − corrupted| at the last position
    // (where the answer is read), summed over pairs.
    let head = best.head.expect("a single head");
    let mut gaps = vec![0.0f64; n];
    for r in &runs {
        let (a, b) = (r.clean.of(best.site, best.layer), r.corrupted.of(best.site, best.layer));
        let t = r.pair.clean.len();
        let at = (head * t + t - 1) * n;
        gaps.iter_mut().enumerate().for_each(|(j, g)| *g += (a[at + j] - b[at + j]).abs() as f64);
    }
    let order = ranking(&gaps);
    let mut shuffled: Vec<usize> = (0..n).collect();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(0));
    let ids = |o: &[usize], k: usize| -> Vec<u32> { o[..k].iter().map(|&j| j as u32).collect() };
    let mut neurons = Vec::new();
    for k in doubling(n) {
        neurons.push(GroupPoint {
            k,
            restored: activation(best.site, best.layer, best.head, Some(ids(&order, k)))?,
            random: activation(best.site, best.layer, best.head, Some(ids(&shuffled, k)))?,
        });
    }

    // Rows of ρ of the best head ranked by how far apart clean and corrupted are.
    let rh = best_rho.head.expect("a single head");
    let block = (best_rho.layer * h_n + rh) * n * d;
    let mut row_gaps = vec![0.0f64; n];
    for r in &runs {
        for (i, g) in row_gaps.iter_mut().enumerate() {
            let at = block + i * d;
            let (a, b) = (&r.rho.0.rho.f32("patching")?[at..at + d], &r.rho.1.rho.f32("patching")?[at..at + d]);
            *g += a.iter().zip(b).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>().sqrt();
        }
    }
    let row_order = ranking(&row_gaps);
    let mut rho_rows = Vec::new();
    for k in doubling(n) {
        rho_rows.push(GroupPoint {
            k,
            restored: synapses(best_rho.layer, best_rho.head, Some(&row_order[..k]))?,
            random: synapses(best_rho.layer, best_rho.head, Some(&shuffled[..k]))?,
        });
    }
    let count = runs.len() as f64;
    Ok(PatchReport {
        pairs: runs.len(),
        clean_diff: clean_sum / count,
        corrupt_diff: corrupt_sum / count,
        sites,
        best,
        neurons,
        top_neurons: order.iter().take(64).copied().collect(),
        best_rho,
        rho_rows,
        top_rho_rows: row_order.iter().take(64).copied().collect(),
    })
}

/// Indices of `values`, largest first (ties by index).
fn ranking(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
}
