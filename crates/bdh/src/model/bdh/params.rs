//! BDH's trained tensors in the flat parameter buffer, with bdh.py's names, shapes,
//! order and initialisation.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::BdhConfig;
use super::delay::DELAY_NAME;
use super::key::{Trace, ASTROCYTE_NAME, TRACE_NAME};
use super::norm::NORM_NAME;
use super::threshold::{ACTIVITY_NAME, FIRING_NAME, THRESHOLD_NAME};
use crate::error::Result;
use crate::params::Params;

/// Names of the trained tensors in bdh.py's `state_dict`, in buffer order.
pub const PARAM_NAMES: [&str; 5] = ["embed.weight", "encoder", "encoder_v", "decoder", "lm_head"];

/// Name of the RoPE frequency buffer in bdh.py's `state_dict`, shape (1, 1, 1, N).
pub const FREQS_NAME: &str = "attn.freqs";

/// Name of the learned decay's logits θ (H, or (H, N) with `decay_per = "neuron"`),
/// after bdh.py's five tensors: the retention of head h is γ_h = sigmoid(θ_h)
/// (`decay = "learned"` only).
pub const DECAY_NAME: &str = "attn.decay";

/// The slots of a BDH model: (V, D), (H, D, N), (H, D, N), (H·N, D), (D, V), then
/// those of the layer's mechanisms that train: a learned decay's θ (H or (H, N)), a learned
/// trace's φ (H, N), an astrocyte gate's β (H), learned delays' ψ (H), the
/// neurons' thresholds θ (H, N) with a homeostatic one's running rates (H, N), an
/// E/I norm's logits (4, 4, D), and a sparse connectivity's masks.
pub fn layout(cfg: &BdhConfig) -> Vec<(&'static str, Vec<usize>)> {
    let (v, d, h, n) = (cfg.vocab_size, cfg.n_embd, cfg.n_head, cfg.n_neurons());
    let mut slots = vec![
        (PARAM_NAMES[0], vec![v, d]),
        (PARAM_NAMES[1], vec![h, d, n]),
        (PARAM_NAMES[2], vec![h, d, n]),
        (PARAM_NAMES[3], vec![h * n, d]),
        (PARAM_NAMES[4], vec![d, v]),
    ];
    if cfg.decay.is_learned() {
        slots.push((DECAY_NAME, if cfg.decay_per.is_head() { vec![h] } else { vec![h, n] }));
    }
    if cfg.trace == Trace::Learned {
        slots.push((TRACE_NAME, vec![h, n]));
    }
    if cfg.astrocyte.is_some() {
        slots.push((ASTROCYTE_NAME, vec![h]));
    }
    if cfg.delays.is_learned() {
        slots.push((DELAY_NAME, vec![h]));
    }
    for (name, _) in cfg.threshold.tensors() {
        slots.push((name, vec![h, n]));
    }
    for (name, shape, _) in cfg.norm.tensors(d) {
        slots.push((name, shape));
    }
    if cfg.connectivity.is_some() {
        let shapes = [vec![h, d, n], vec![h, d, n], vec![h * n, d]];
        slots.extend(super::connectivity::MASK_NAMES.into_iter().zip(shapes));
    }
    slots
}

/// A zeroed buffer laid out for `cfg`.
pub fn zeros(cfg: &BdhConfig) -> Result<Params> {
    Params::zeros(&layout(cfg))
}

/// bdh.py's initialisation: every tensor drawn from N(0, 0.02²), from `seed`, in
/// buffer order; a learned decay's θ_h then starts at ALiBi's γ_h = sigmoid(θ_h).
pub fn init(cfg: &BdhConfig, seed: u64) -> Result<Params> {
    let mut p = zeros(cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("0.02 is a valid std");
    let drawn = p.slots()[PARAM_NAMES.len() - 1].range.end;
    p.data_mut()[..drawn].iter_mut().for_each(|x| *x = normal.sample(&mut rng));
    for (name, start) in cfg.threshold.tensors() {
        p.get_mut(name).expect("laid out above").fill(start);
    }
    for (name, _, start) in cfg.norm.tensors(cfg.n_embd) {
        p.get_mut(name).expect("laid out above").fill(start);
    }
    if let Some(c) = cfg.connectivity {
        c.draw(&mut p, cfg, seed);
    }
    if let Some(psi) = p.get_mut(DELAY_NAME) {
        psi.fill(cfg.delays.initial_logit());
    }
    if let Some(theta) = p.get_mut(DECAY_NAME) {
        // (with one per neuron, each neuron of a head starts at the head's γ)
        let per = cfg.retentions_per_head();
        for (t, g) in theta.chunks_exact_mut(per).zip(cfg.decay.initial(cfg.n_head)) {
            t.fill((g as f64 / (1.0 - g as f64)).ln() as f32);
        }
    }
    Ok(p)
}

/// How the layer's three matrices start (`training.init`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Init {
    /// bdh.py's N(0, 0.02²) draws.
    #[default]
    Normal,
    /// Each head's `encoder`, `encoder_v` and `decoder` block the product of two
    /// draws of inner width r: rank r, each entry still of std 0.02.
    LowRank(usize),
}

impl TryFrom<String> for Init {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        let bad = || format!("training.init `{s}`: expected \"normal\" or \"lowrank:r\" with a rank r ≥ 1");
        match s.as_str() {
            "normal" => Ok(Init::Normal),
            _ => match s.strip_prefix("lowrank:").map(str::parse::<usize>) {
                Some(Ok(r)) if r >= 1 => Ok(Init::LowRank(r)),
                _ => Err(bad()),
            },
        }
    }
}

impl From<Init> for String {
    fn from(i: Init) -> Self {
        match i {
            Init::Normal => "normal".into(),
            Init::LowRank(r) => format!("lowrank:{r}"),
        }
    }
}

impl Init {
    /// Whether this is bdh.py's initialisation.
    pub fn is_normal(&self) -> bool {
        *self == Init::Normal
    }

    /// An error unless `cfg`'s matrices can have this rank (r ≤ min(D, N)).
    pub fn validate(&self, cfg: &BdhConfig) -> std::result::Result<(), String> {
        let most = cfg.n_embd.min(cfg.n_neurons());
        match *self {
            Init::LowRank(r) if r > most => Err(format!(
                "training.init = \"lowrank:{r}\": a head's matrices are {} × {}, of rank at most {most}",
                cfg.n_embd,
                cfg.n_neurons()
            )),
            _ => Ok(()),
        }
    }

    /// Redraws `params`' three layer matrices as this initialisation wants (nothing
    /// for bdh.py's), from `seed`; the other tensors keep their draws.
    pub fn apply(&self, params: &mut Params, cfg: &BdhConfig, seed: u64) {
        let Init::LowRank(r) = *self else { return };
        let (d, n) = (cfg.n_embd, cfg.n_neurons());
        // entries of A·B have variance r·s⁴ = 0.02²
        let s = (0.02f64 / (r as f64).sqrt()).sqrt() as f32;
        let normal = Normal::new(0.0f32, s).expect("a valid std");
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6c6f_7772_616e_6b00);
        for (name, rows, cols) in [(PARAM_NAMES[1], d, n), (PARAM_NAMES[2], d, n), (PARAM_NAMES[3], n, d)] {
            let w = params.get_mut(name).expect("a BDH tensor");
            for head in w.chunks_exact_mut(rows * cols) {
                let a: Vec<f32> = (0..rows * r).map(|_| normal.sample(&mut rng)).collect();
                let b: Vec<f32> = (0..r * cols).map(|_| normal.sample(&mut rng)).collect();
                bdh_kernels::matmul(head, &a, &b, bdh_kernels::MatMul::new(rows, r, cols));
            }
        }
        // (and the weights a sparse connectivity drops stay 0)
        super::connectivity::apply(params);
    }
}

/// γ_h = sigmoid(θ_h) of logits θ, in f64 then rounded.
pub fn sigmoid(theta: &[f32]) -> Vec<f32> {
    theta.iter().map(|&t| (1.0 / (1.0 + (-(t as f64)).exp())) as f32).collect()
}

/// The five tensors of a BDH buffer by name, to read.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    /// Token embedding, (V, D).
    pub embed: &'a [f32],
    /// Neuron encoder per head, (H, D, N).
    pub encoder: &'a [f32],
    /// Encoder of the attention output per head, (H, D, N).
    pub encoder_v: &'a [f32],
    /// Decoder from all neurons back to the residual stream, (H·N, D).
    pub decoder: &'a [f32],
    /// Output head, (D, V).
    pub lm_head: &'a [f32],
    /// A learned decay's logits θ, (H); empty for a fixed decay or none.
    pub decay: &'a [f32],
    /// A learned trace's logits φ, (H, N); else empty.
    pub trace: &'a [f32],
    /// An astrocyte gate's slopes β, (H); else empty.
    pub astrocyte: &'a [f32],
    /// Learned delays' logits ψ, (H); else empty.
    pub delay: &'a [f32],
    /// The neurons' thresholds θ, (H, N); else empty.
    pub threshold: &'a [f32],
    /// A homeostatic gain's running activities, (H, N); else empty.
    pub activity: &'a [f32],
    /// An E/I norm's logits, (4, 4, D); else empty.
    pub norm: &'a [f32],
}

impl<'a> Weights<'a> {
    /// Views a buffer laid out by [`layout`].
    pub fn of(p: &'a Params) -> Self {
        debug_assert!(p.slots().iter().map(|s| s.name.as_str()).take(5).eq(PARAM_NAMES));
        let (s, d) = (p.slots(), p.data());
        let t = |i: usize| &d[s[i].range.clone()];
        let named = |name: &str| p.get(name).unwrap_or_default();
        Weights {
            embed: t(0),
            encoder: t(1),
            encoder_v: t(2),
            decoder: t(3),
            lm_head: t(4),
            decay: named(DECAY_NAME),
            trace: named(TRACE_NAME),
            astrocyte: named(ASTROCYTE_NAME),
            delay: named(DELAY_NAME),
            threshold: named(THRESHOLD_NAME),
            activity: named(ACTIVITY_NAME),
            norm: named(NORM_NAME),
        }
    }
}

/// The five tensors of a BDH buffer by name, to write (gradients).
#[derive(Debug)]
pub struct WeightsMut<'a> {
    /// (V, D).
    pub embed: &'a mut [f32],
    /// (H, D, N).
    pub encoder: &'a mut [f32],
    /// (H, D, N).
    pub encoder_v: &'a mut [f32],
    /// (H·N, D).
    pub decoder: &'a mut [f32],
    /// (D, V).
    pub lm_head: &'a mut [f32],
    /// (H), or empty.
    pub decay: &'a mut [f32],
    /// (H, N), or empty.
    pub trace: &'a mut [f32],
    /// (H), or empty.
    pub astrocyte: &'a mut [f32],
    /// (H), or empty.
    pub delay: &'a mut [f32],
    /// (H, N), or empty: d θ of learned thresholds.
    pub threshold: &'a mut [f32],
    /// (H, N), or empty: a homeostatic threshold's firing fractions (see [`super::threshold`]).
    pub firing: &'a mut [f32],
    /// (H, N), or empty: a homeostatic gain's activities (see [`super::threshold`]).
    pub activity: &'a mut [f32],
    /// (4, 4, D), or empty: d loss / d an E/I norm's logits.
    pub norm: &'a mut [f32],
}

impl<'a> WeightsMut<'a> {
    /// Views a buffer laid out by [`layout`].
    pub fn of(p: &'a mut Params) -> Self {
        debug_assert!(p.slots().iter().map(|s| s.name.as_str()).take(5).eq(PARAM_NAMES));
        // the mechanisms' tensors follow bdh.py's five, in this order, each if present
        let has =
            [DECAY_NAME, TRACE_NAME, ASTROCYTE_NAME, DELAY_NAME, THRESHOLD_NAME, FIRING_NAME, ACTIVITY_NAME, NORM_NAME]
                .map(|name| p.slot(name).is_some());
        let mut t = p.split_mut().into_iter();
        let mut next = || t.next().expect("five BDH tensors");
        let (embed, encoder, encoder_v, decoder, lm_head) = (next(), next(), next(), next(), next());
        let [decay, trace, astrocyte, delay, threshold, firing, activity, norm] =
            has.map(|there| if there { next() } else { &mut [][..] });
        WeightsMut {
            embed,
            encoder,
            encoder_v,
            decoder,
            lm_head,
            decay,
            trace,
            astrocyte,
            delay,
            threshold,
            firing,
            activity,
            norm,
        }
    }
}
