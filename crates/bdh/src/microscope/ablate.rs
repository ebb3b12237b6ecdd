//! Ablation: which neurons a behaviour needs. Neurons are ranked by how selectively
//! they fire for a concept against a background, then removed cumulatively while
//! answer accuracy (on facts of the concept's kind and of the other kind) and loss
//! are measured, beside a control that removes as many random neurons from the same
//! heads. Also the greedy layer-by-layer path of neurons that a target logit
//! depends on, and the overlap of two concepts' neuron sets.

use std::collections::BTreeSet;

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::{Answer, Corpus, Kind, SyntheticConfig, SyntheticLanguage};
use crate::error::{Error, Result};
use crate::model::bdh::{Action, Activations, Bdh, Edit, Edits, Pass, Prepared, Site};
use crate::model::loss::cross_entropy;
use crate::model::Mode;

use super::Progress;
use super::Scope;

/// A neuron: layer, head and index within the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NeuronId {
    /// Layer.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Neuron within the head.
    pub neuron: usize,
}

impl NeuronId {
    /// The edit that zeroes this neuron's `site` at every position.
    pub fn zero(self, site: Site) -> Edit {
        Edit {
            site,
            layer: Some(self.layer),
            head: Some(self.head),
            neuron: Some(self.neuron),
            position: None,
            action: Action::Zero,
        }
    }
}

/// Edits zeroing `site` of every neuron in `ids`.
pub fn zeroing(ids: &[NeuronId], site: Site) -> Edits {
    let mut edits = Edits::new();
    ids.iter().for_each(|id| edits.push(id.zero(site)));
    edits
}

/// Fixed batches to score an intervention on: windows of the built-in language
/// (with answers) or of a text (loss only).
#[derive(Clone, Debug)]
pub struct Probe {
    b: usize,
    t: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    answers: Vec<(usize, Answer)>,
}

impl Probe {
    /// `rows` validation windows of `t` tokens of the built-in language.
    pub fn built_in(config: &SyntheticConfig, rows: usize, t: usize) -> Self {
        let batch = Corpus::Synthetic(SyntheticLanguage::new(config.clone())).val_batch(0, 1, rows, t);
        Probe { b: rows, t, tokens: batch.tokens, targets: batch.targets, answers: batch.answers }
    }

    /// Consecutive windows of `t` tokens of `bytes` (at most `rows` of them).
    pub fn text(bytes: &[u8], rows: usize, t: usize) -> Result<Self> {
        if bytes.len() < t + 1 {
            return Err(Error::Input(format!("the text has {} bytes, fewer than one window of {t} + 1", bytes.len())));
        }
        let rows = rows.min((bytes.len() - 1) / t).max(1);
        let mut p = Probe { b: rows, t, tokens: Vec::new(), targets: Vec::new(), answers: Vec::new() };
        for r in 0..rows {
            p.tokens.extend(bytes[r * t..(r + 1) * t].iter().map(|&c| c as u32));
            p.targets.extend(bytes[r * t + 1..(r + 1) * t + 1].iter().map(|&c| c as u32));
        }
        Ok(p)
    }
}

/// Answers of one kind scored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KindScore {
    /// The kind.
    pub kind: Kind,
    /// Answers predicted exactly (every byte the argmax).
    pub correct: usize,
    /// Answers scored.
    pub answers: usize,
    /// What copying at random a stated value of this kind would score on them.
    pub copy_baseline: f64,
    /// What copying at random a stated value of this kind that no earlier answer
    /// gave would score on them: binds nothing, remembers what it answered.
    pub eliminate_baseline: f64,
}

/// How a model does on a probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Mean cross-entropy, nats per byte.
    pub loss: f64,
    /// Answer accuracy per kind (empty for a text probe).
    pub kinds: Vec<KindScore>,
}

impl Score {
    /// Accuracy on answers of `kind` (0 if there are none).
    pub fn accuracy(&self, kind: Kind) -> f64 {
        self.kinds.iter().find(|k| k.kind == kind).map_or(0.0, |k| k.correct as f64 / k.answers.max(1) as f64)
    }
}

/// Rows scored per forward pass (the pass keeps every activation of its rows).
const ROWS_PER_PASS: usize = 8;

/// Scores `model` with `edits` (x, y or x⊙y) on `probe`, by the parallel forward, a
/// few rows at a time.
pub fn score(model: &Scope, probe: &Probe, edits: &Edits, acts: &mut Option<Activations>) -> Result<Score> {
    let (t, v) = (probe.t, model.config.vocab_size);
    let mut logits = crate::model::zeroed(&[probe.b, t, v])?;
    for (rows, out) in probe.tokens.chunks(ROWS_PER_PASS * t).zip(logits.chunks_mut(ROWS_PER_PASS * t * v)) {
        let b = rows.len() / t;
        let a = Activations::reuse(acts, model, b, t)?;
        model.forward(rows, a, Pass { mode: Mode::Eval, edits, state: None })?;
        out.copy_from_slice(&a.logits);
    }
    Ok(score_logits(probe, &logits, v))
}

/// Scores `model` with `edits` on `probe` by the recurrent step, token by token, so
/// that edits of the synapse state ρ (which only the recurrent form holds) apply.
pub fn score_stepped(model: &Scope, probe: &Probe, edits: &Edits) -> Result<Score> {
    let v = model.config.vocab_size;
    let prepared = Prepared::new(Bdh::clone(model))?;
    let mut scratch = prepared.scratch();
    let mut logits = crate::model::zeroed(&[probe.b, probe.t, v])?;
    for (row, out) in probe.tokens.chunks(probe.t).zip(logits.chunks_mut(probe.t * v)) {
        let mut state = prepared.state()?;
        for (&tok, o) in row.iter().zip(out.chunks_mut(v)) {
            o.copy_from_slice(prepared.step(&mut [&mut state], &mut scratch, &[tok], edits)?);
        }
    }
    Ok(score_logits(probe, &logits, v))
}

/// Loss and answer accuracy of `logits`, (B, T, V), on `probe`.
fn score_logits(probe: &Probe, logits: &[f32], v: usize) -> Score {
    let loss = cross_entropy(logits, &probe.targets, v) as f64;
    let mut kinds: Vec<KindScore> = Vec::new();
    for (row, ans) in &probe.answers {
        let hit = crate::eval::answered(logits, &probe.targets, row * probe.t, &ans.range, v);
        let k = match kinds.iter().position(|k| k.kind == ans.kind) {
            Some(i) => &mut kinds[i],
            None => {
                kinds.push(KindScore {
                    kind: ans.kind,
                    correct: 0,
                    answers: 0,
                    copy_baseline: 0.0,
                    eliminate_baseline: 0.0,
                });
                kinds.last_mut().expect("just pushed")
            }
        };
        k.answers += 1;
        k.correct += usize::from(hit);
        k.copy_baseline += ans.copy_chance();
        k.eliminate_baseline += ans.eliminate;
    }
    for k in &mut kinds {
        k.copy_baseline /= k.answers as f64;
        k.eliminate_baseline /= k.answers as f64;
    }
    kinds.sort_by_key(|k| k.kind as u8);
    Score { loss, kinds }
}

/// How selectively a neuron fires for a concept.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Selective {
    /// The neuron.
    pub id: NeuronId,
    /// Mean activation over the concept texts (each text's mean over its tokens).
    pub concept: f64,
    /// The same over the background texts.
    pub background: f64,
    /// `(concept − background) / pooled standard deviation` (Cohen's d, the pooled
    /// variance being both sets' squared deviations over n₁ + n₂ − 2; the deviation
    /// floored at 1e-6 of the largest mean).
    pub selectivity: f64,
}

/// Every neuron's mean `site` activation over each text (its mean over the text's
/// tokens), summarised over the texts: (count, mean, sum of squared deviations) per
/// neuron, L·H·N of them, by Welford's update, so memory does not grow with the texts.
fn text_moments(model: &Scope, texts: &[Vec<u32>], site: Site) -> Result<(usize, Vec<f64>, Vec<f64>)> {
    let c = &model.config;
    let (h, n) = (c.n_head, c.n_neurons());
    let all = c.n_layer * h * n;
    let (mut mean, mut m2) = (vec![0.0f64; all], vec![0.0f64; all]);
    let mut means = vec![0.0f64; all];
    let mut acts: Option<Activations> = None;
    for (k, text) in texts.iter().enumerate() {
        let t = text.len();
        if t == 0 {
            return Err(Error::Input("an empty text in a concept or background set".into()));
        }
        let a = Activations::reuse(&mut acts, model, 1, t)?;
        model.forward(text, a, Pass::default())?;
        means.fill(0.0);
        for l in 0..c.n_layer {
            let (x, y) = (a.x(l), a.y(l));
            for hi in 0..h {
                for ti in 0..t {
                    for j in 0..n {
                        let at = (hi * t + ti) * n + j;
                        let value = match site {
                            Site::X => x[at],
                            Site::Y => y[at],
                            _ => x[at] * y[at],
                        };
                        means[(l * h + hi) * n + j] += value as f64 / t as f64;
                    }
                }
            }
        }
        for ((m, s), &x) in mean.iter_mut().zip(m2.iter_mut()).zip(&means) {
            let delta = x - *m;
            *m += delta / (k + 1) as f64;
            *s += delta * (x - *m);
        }
    }
    Ok((texts.len(), mean, m2))
}

/// Neurons ranked by selectivity for `concept` texts against `background` texts,
/// most selective first, measured on `site` (x, y or x⊙y).
pub fn selectivity(model: &Scope, concept: &[Vec<u32>], background: &[Vec<u32>], site: Site) -> Result<Vec<Selective>> {
    if concept.is_empty() || background.is_empty() {
        return Err(Error::Input(format!(
            "selectivity needs texts in both sets; the concept has {} and the background {}",
            concept.len(),
            background.len()
        )));
    }
    if !matches!(site, Site::X | Site::Y | Site::Xy) {
        return Err(Error::Input(format!("selectivity is measured on x, y or xy, not {site:?}")));
    }
    let ((nc, mc, sc), (nb, mb, sb)) = (text_moments(model, concept, site)?, text_moments(model, background, site)?);
    let (h, n) = (model.config.n_head, model.config.n_neurons());
    let largest = mc.iter().chain(&mb).fold(0.0f64, |a, &b| a.max(b));
    let floor = (1e-6 * largest).max(f64::MIN_POSITIVE);
    // Cohen's pooled variance: both sets' squared deviations over n₁ + n₂ − 2 (at least 1).
    let dof = (nc + nb).saturating_sub(2).max(1) as f64;
    let mut ranked: Vec<Selective> = (0..mc.len())
        .map(|i| Selective {
            id: NeuronId { layer: i / (h * n), head: i / n % h, neuron: i % n },
            concept: mc[i],
            background: mb[i],
            selectivity: (mc[i] - mb[i]) / ((sc[i] + sb[i]) / dof).sqrt().max(floor),
        })
        .collect();
    ranked.sort_by(|a, b| b.selectivity.total_cmp(&a.selectivity).then(a.id.cmp(&b.id)));
    Ok(ranked)
}

/// One point of a cumulative ablation curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Neurons removed.
    pub k: usize,
    /// With the k most selective removed.
    pub selected: Score,
    /// With k random neurons removed from the same heads (the control).
    pub random: Score,
}

/// Removes the first k of `ranked` for each k of `ks` (and, as a control, as many
/// random neurons drawn from the same layers and heads, seeded by `seed`) and scores
/// each on `probe`; `progress` counts the points of the curve.
pub fn ablation_curve(
    model: &Scope,
    probe: &Probe,
    ranked: &[NeuronId],
    ks: &[usize],
    site: Site,
    seed: u64,
    progress: Progress,
) -> Result<Vec<CurvePoint>> {
    let mut acts = None;
    progress(0, ks.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = model.config.n_neurons();
    let mut out = Vec::with_capacity(ks.len());
    for &k in ks {
        let chosen = &ranked[..k.min(ranked.len())];
        let random = matched_random(chosen, n, &mut rng);
        out.push(CurvePoint {
            k: chosen.len(),
            selected: score(model, probe, &zeroing(chosen, site), &mut acts)?,
            random: score(model, probe, &zeroing(&random, site), &mut acts)?,
        });
        progress(out.len(), ks.len());
    }
    Ok(out)
}

/// As many random neurons as `ids`, each from the same layer and head as its
/// counterpart and none of them in `ids` (when the head has others): the control
/// for removing `ids`.
fn matched_random(ids: &[NeuronId], n: usize, rng: &mut impl rand::Rng) -> Vec<NeuronId> {
    let taken: BTreeSet<NeuronId> = ids.iter().copied().collect();
    let mut drawn: BTreeSet<NeuronId> = BTreeSet::new();
    ids.iter()
        .map(|id| {
            let free: Vec<usize> = (0..n)
                .filter(|&j| {
                    let c = NeuronId { neuron: j, ..*id };
                    !taken.contains(&c) && !drawn.contains(&c)
                })
                .collect();
            let pick = NeuronId { neuron: *free.choose(rng).unwrap_or(&id.neuron), ..*id };
            drawn.insert(pick);
            pick
        })
        .collect()
}

/// [`matched_random`] drawn from `seed`.
pub fn random_control(ids: &[NeuronId], n: usize, seed: u64) -> Vec<NeuronId> {
    matched_random(ids, n, &mut ChaCha8Rng::seed_from_u64(seed))
}

/// One neuron of an influence path and the target logit once it (and every
/// neuron before it) is removed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathStep {
    /// The neuron chosen at this layer.
    pub id: NeuronId,
    /// The target logit with the path so far ablated.
    pub logit: f64,
    /// Its change from the unablated logit.
    pub shift: f64,
}

/// The greedy influence path of a target logit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InfluencePath {
    /// The target token.
    pub target: u32,
    /// Its logit at the last position, unablated.
    pub logit: f64,
    /// Candidates tried per layer (the most active x at the last position).
    pub candidates: usize,
    /// One neuron per layer, in order (a layer with no active neuron at the last
    /// position has none).
    pub steps: Vec<PathStep>,
}

/// Layer by layer, the neuron (among the `candidates` most active at the last
/// position) whose removal, together with the neurons already chosen, lowers the
/// logit of `target` after `tokens` most.
pub fn influence_path(model: &Scope, tokens: &[u32], target: u32, candidates: usize) -> Result<InfluencePath> {
    let c = &model.config;
    if tokens.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    if target as usize >= c.vocab_size || candidates == 0 {
        return Err(Error::Input(format!("need a target token < {} and ≥ 1 candidate", c.vocab_size)));
    }
    let (t, h, n, v) = (tokens.len(), c.n_head, c.n_neurons(), c.vocab_size);
    let mut acts = Activations::new(model, 1, t)?;
    let logit_with = |edits: &Edits, acts: &mut Activations| -> Result<f64> {
        model.forward(tokens, acts, Pass { mode: Mode::Eval, edits, state: None })?;
        Ok(acts.logits[(t - 1) * v + target as usize] as f64)
    };
    let base = logit_with(&Edits::new(), &mut acts)?;
    let mut chosen: Vec<NeuronId> = Vec::new();
    let mut steps = Vec::new();
    for l in 0..c.n_layer {
        // Candidates: the most active x of this layer at the last position, as the
        // path so far leaves them.
        logit_with(&zeroing(&chosen, Site::X), &mut acts)?;
        let x = acts.x(l);
        let mut active: Vec<(f32, NeuronId)> = (0..h * n)
            .map(|i| (x[(i / n * t + t - 1) * n + i % n], NeuronId { layer: l, head: i / n, neuron: i % n }))
            .filter(|(a, _)| *a > 0.0)
            .collect();
        active.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut best: Option<(f64, NeuronId)> = None;
        for &(_, id) in active.iter().take(candidates) {
            let mut trial = chosen.clone();
            trial.push(id);
            let logit = logit_with(&zeroing(&trial, Site::X), &mut acts)?;
            if best.is_none_or(|(b, _)| logit < b) {
                best = Some((logit, id));
            }
        }
        if let Some((logit, id)) = best {
            chosen.push(id);
            steps.push(PathStep { id, logit, shift: logit - base });
        }
    }
    Ok(InfluencePath { target, logit: base, candidates, steps })
}

/// How much two sets of important neurons share.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overlap {
    /// Neurons in each set.
    pub k: usize,
    /// Neurons they were drawn from.
    pub total: usize,
    /// In both.
    pub shared: usize,
    /// |A ∩ B| / |A ∪ B|.
    pub jaccard: f64,
    /// Mean Jaccard index of two random k-sets of the same neurons.
    pub random_mean: f64,
    /// Its 95th percentile.
    pub random_p95: f64,
    /// Fraction of random pairs at least as overlapping (with one added to both
    /// counts, so never 0).
    pub p_value: f64,
}

/// The overlap of the first `k` of two rankings against random pairs of k-sets of
/// `total` neurons (`draws` of them, seeded by `seed`).
pub fn overlap(a: &[NeuronId], b: &[NeuronId], k: usize, total: usize, draws: usize, seed: u64) -> Result<Overlap> {
    if k == 0 || k > a.len().min(b.len()) || k > total {
        return Err(Error::Input(format!(
            "overlap needs 1 ≤ k ≤ the ranked neurons ({}); got k = {k}",
            a.len().min(b.len())
        )));
    }
    let jaccard = |x: &BTreeSet<usize>, y: &BTreeSet<usize>| {
        let shared = x.intersection(y).count();
        shared as f64 / (2 * k - shared) as f64
    };
    let (sa, sb): (BTreeSet<NeuronId>, BTreeSet<NeuronId>) =
        (a[..k].iter().copied().collect(), b[..k].iter().copied().collect());
    let shared = sa.intersection(&sb).count();
    let observed = shared as f64 / (2 * k - shared) as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let all: Vec<usize> = (0..total).collect();
    let mut random: Vec<f64> = (0..draws)
        .map(|_| {
            let x: BTreeSet<usize> = all.choose_multiple(&mut rng, k).copied().collect();
            let y: BTreeSet<usize> = all.choose_multiple(&mut rng, k).copied().collect();
            jaccard(&x, &y)
        })
        .collect();
    random.sort_by(f64::total_cmp);
    let at_least = random.iter().filter(|&&j| j >= observed).count();
    Ok(Overlap {
        k,
        total,
        shared,
        jaccard: observed,
        random_mean: random.iter().sum::<f64>() / draws.max(1) as f64,
        random_p95: random.get(draws * 95 / 100).copied().unwrap_or(0.0),
        p_value: (at_least + 1) as f64 / (draws + 1) as f64,
    })
}
