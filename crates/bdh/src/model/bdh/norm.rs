//! The normalisation site: N(z) where bdh.py has a LayerNorm — the embedding, the
//! attention read, the decoder's output and the residual sum. [`Norm`] chooses it:
//! bdh.py's parameter-free LayerNorm, none, or an excitatory/inhibitory circuit.
//!
//! **E/I** (`norm = "ei"`): the D values z of a token are an excitatory population,
//! and a small inhibitory population of two cells normalises them by lateral
//! inhibition, as in normalisation-free networks with E/I circuits:
//!
//! ```text
//! m   = Σ_d e_d z_d                 a subtractive cell, driven by E (weights e ≥ 0)
//! c_d = z_d − s_d m                 subtractive inhibition back onto E (s ≥ 0)
//! q   = Σ_d f_d c_d²                a divisive cell, pooling E's energy (f ≥ 0)
//! N(z)_d = c_d / sqrt(r_d q + ε)    divisive (shunting) inhibition onto E (r ≥ 0)
//! ```
//!
//! Each weight is the softplus of a trained logit (so never negative), e and f
//! scaled by 1/D; all logits start at softplus⁻¹(1), so e = f = 1/D and s = r = 1:
//! a fresh circuit computes the mean and the variance, and N is LayerNorm exactly.
//! Training may then move each neuron's inhibition away from it. The four sites
//! have their own circuits, shared by every layer as bdh.py shares its weights: the
//! tensor `norm.ei`, (4 sites, 4 weights e, s, f, r, D). A row keeps (m, q) for the
//! backward, LayerNorm its 1/σ.

use bdh_kernels::{layer_norm, layer_norm_backward, LN_EPS};
use serde::{Deserialize, Serialize};

use super::config::BdhConfig;

/// Name of the E/I circuits' logits, (4, 4, D): site, weight (e, s, f, r), neuron.
pub const NORM_NAME: &str = "norm.ei";

/// softplus⁻¹(1) = ln(e − 1): the logit of a weight that starts at 1.
const ONE: f32 = 0.541_324_85;

/// N(z): what normalises the residual stream, the attention read and the decoder's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// bdh.py's parameter-free LayerNorm.
    #[default]
    Layer,
    /// No normalisation: every LayerNorm of bdh.py removed.
    None,
    /// An excitatory/inhibitory circuit with learned non-negative weights, starting
    /// as LayerNorm.
    Ei,
}

impl Norm {
    /// Whether this is bdh.py's LayerNorm.
    pub fn is_layer(&self) -> bool {
        *self == Norm::Layer
    }

    /// How many numbers a row keeps for the backward: LayerNorm's 1/σ (1 without a
    /// norm), or the E/I cells' (m, q).
    pub fn stats(self) -> usize {
        if self == Norm::Ei {
            2
        } else {
            1
        }
    }

    /// The tensors it adds to the model: the circuits' logits, (4, 4, D), each
    /// starting at softplus⁻¹(1).
    pub(crate) fn tensors(self, d: usize) -> Vec<(&'static str, Vec<usize>, f32)> {
        match self {
            Norm::Ei => vec![(NORM_NAME, vec![4, 4, d], ONE)],
            _ => vec![],
        }
    }

    /// Its name as a config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Layer => "layer",
            Norm::None => "none",
            Norm::Ei => "ei",
        }
    }
}

/// Where in the layer a norm acts; each has its own E/I circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// v = N(embed[token]).
    Embed = 0,
    /// a = N(attention read), per head.
    Read = 1,
    /// w = N(decoder output).
    Decoder = 2,
    /// v = N(v + w).
    Residual = 3,
}

/// A model's norm as the paths use it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NormSite<'a> {
    norm: Norm,
    /// The E/I logits, (4, 4, D); empty for other norms.
    logits: &'a [f32],
}

impl<'a> NormSite<'a> {
    /// The site of `cfg`'s model with the E/I logits `logits` (empty for other norms).
    pub(crate) fn new(cfg: &BdhConfig, logits: &'a [f32]) -> Self {
        NormSite { norm: cfg.norm, logits }
    }

    /// One place's weights (e, s, f, r), each (D), as `f` of their logits: softplus
    /// for the values, sigmoid for their derivatives; e and f (the cells' inputs)
    /// scaled by 1/D.
    fn circuit(&self, at: Place, d: usize, f: fn(f32) -> f32) -> [Vec<f32>; 4] {
        let per = &self.logits[at as usize * 4 * d..(at as usize + 1) * 4 * d];
        let scale = |k: usize| if k == 0 || k == 2 { 1.0 / d as f32 } else { 1.0 };
        std::array::from_fn(|k| per[k * d..(k + 1) * d].iter().map(|&x| f(x) * scale(k)).collect())
    }

    /// `x ← N(x)` over rows of `d`, keeping each row's statistics (`stats` holds
    /// [`Norm::stats`] per row).
    pub(crate) fn forward(&self, x: &mut [f32], stats: &mut [f32], d: usize, at: Place) {
        match self.norm {
            Norm::Layer => layer_norm(x, stats, d),
            Norm::None => stats.fill(1.0),
            Norm::Ei => {
                debug_assert_eq!(stats.len() * d, x.len() * 2, "two statistics per row");
                let [e, s, f, r] = self.circuit(at, d, softplus);
                for (z, st) in x.chunks_exact_mut(d).zip(stats.chunks_exact_mut(2)) {
                    let m = dot(&e, z);
                    z.iter_mut().zip(&s).for_each(|(z, &s)| *z -= s * m);
                    let q = z.iter().zip(&f).map(|(&c, &f)| (f * c * c) as f64).sum::<f64>() as f32;
                    z.iter_mut().zip(&r).for_each(|(c, &r)| *c /= (r * q + LN_EPS).sqrt());
                    (st[0], st[1]) = (m, q);
                }
            }
        }
    }

    /// Turns `g`, d loss / d N(x), into d loss / d x, given the forward's output
    /// `out` and its statistics; with E/I, adds d loss / d the place's logits to
    /// `dlogits` (the (4, 4, D) gradient, or a row's copy of it).
    pub(crate) fn backward(&self, g: &mut [f32], out: &[f32], stats: &[f32], d: usize, at: Place, dlogits: &mut [f32]) {
        match self.norm {
            Norm::Layer => layer_norm_backward(g, out, stats, d),
            Norm::None => {}
            Norm::Ei => {
                debug_assert_eq!(stats.len() * d, g.len() * 2, "two statistics per row");
                let [e, s, f, r] = self.circuit(at, d, softplus);
                let slope = self.circuit(at, d, sigmoid);
                let mut dw = [vec![0.0f64; d], vec![0.0; d], vec![0.0; d], vec![0.0; d]];
                let mut c = vec![0.0f32; d];
                let mut k = vec![0.0f32; d];
                for ((g, out), st) in g.chunks_exact_mut(d).zip(out.chunks_exact(d)).zip(stats.chunks_exact(2)) {
                    let (m, q) = (st[0], st[1]);
                    // out_d = c_d k_d, k_d = (r_d q + ε)^(−½)
                    for i in 0..d {
                        k[i] = 1.0 / (r[i] * q + LN_EPS).sqrt();
                        c[i] = out[i] / k[i];
                    }
                    // d (r_d q + ε) = −½ g_d out_d k_d²  ⇒  d r_d += … q,  dq = Σ_d … r_d
                    let mut dq = 0.0f64;
                    for i in 0..d {
                        let h = -0.5 * g[i] * out[i] * k[i] * k[i];
                        dw[3][i] += (h * q) as f64;
                        dq += (h * r[i]) as f64;
                    }
                    // dc_d = g_d k_d + 2 f_d c_d dq;  d f_d += dq c_d²
                    let dq = dq as f32;
                    for i in 0..d {
                        dw[2][i] += (dq * c[i] * c[i]) as f64;
                        g[i] = g[i] * k[i] + 2.0 * f[i] * c[i] * dq;
                    }
                    // c_d = z_d − s_d m  ⇒  d s_d −= dc_d m,  dm = −Σ_d s_d dc_d
                    let dm = -dot(&s, g);
                    for i in 0..d {
                        dw[1][i] -= (g[i] * m) as f64;
                    }
                    // m = Σ_d e_d z_d  ⇒  dz_d = dc_d + e_d dm,  d e_d += dm z_d
                    for i in 0..d {
                        let z = c[i] + s[i] * m;
                        dw[0][i] += (dm * z) as f64;
                        g[i] += e[i] * dm;
                    }
                }
                let place = &mut dlogits[at as usize * 4 * d..(at as usize + 1) * 4 * d];
                for (kind, (dw, slope)) in dw.iter().zip(&slope).enumerate() {
                    let out = &mut place[kind * d..(kind + 1) * d];
                    out.iter_mut().zip(dw).zip(slope).for_each(|((o, &g), &sl)| *o += g as f32 * sl);
                }
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| (x * y) as f64).sum::<f64>() as f32
}

fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
