//! The activations a forward pass keeps for its backward: one [`Layer`] of buffers
//! per layer, sized once per (B, T), and the views of some batch rows the layer's
//! kernels write ([`LayerRows`]).

use std::ops::Range;

use super::decay::DecayTable;
use super::edit::Edits;
use super::forward::{begin, Dims, Setup};
use super::key::KeySite;
use super::rope::RopeTable;
use super::state::State;
use super::{Bdh, BdhConfig};
use crate::error::{Error, Result};
use crate::model::{zeroed, Mode};

/// The activations of one forward pass, kept for the backward.
#[derive(Debug)]
pub struct Activations {
    /// The sizes these buffers hold.
    pub dims: Dims,
    pub(crate) rope: RopeTable,              // positions pos0..pos0 + T
    pub(crate) freqs: Vec<f32>,              // the frequencies `rope` was made from
    pub(crate) decay: DecayTable,            // the retention's powers over T (empty without decay)
    pub(crate) frozen: Option<&'static str>, // why the last forward has no backward
    pub(crate) rho0: Vec<f32>,               // (L, B, H, N, D) ρ a train-mode pass started from; else empty
    pub(crate) keys0: Vec<f32>,              // (L, B, H, W) the write key's traces it started from; else empty
    pub(crate) queue0: Vec<f32>,             // (L, B, H, W') the delayed writes it started from; else empty
    pub(crate) dropout: bool,                // the last forward drew the layers' `keep`
    pub(crate) tokens: Vec<u32>,             // (B, T)
    pub(crate) v0: Vec<f32>,                 // (B, T, D) LN(embed[tokens]): the residual into layer 0
    pub(crate) stats_v0: Vec<f32>,           // (B, T, k)
    pub(crate) layers: Vec<Layer>,           // (L)
    pub(crate) z: Vec<f32>,                  // (B, H, T, N) scratch: dropout(x ⊙ y) of the current layer
    /// Output of the last forward, (B, T, V).
    pub logits: Vec<f32>,
}

/// What one layer's forward keeps, for every batch row.
#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) x: Vec<f32>,       // (B, H, T, N) sparse neurons
    pub(crate) inc: Vec<f32>,     // (B, H, T, N) relu(v · encoder) with the residual in the neurons; else empty
    pub(crate) xr: Vec<f32>,      // (B, H, T, N) x rotated by RoPE
    pub(crate) scores: Vec<f32>,  // (B, H, T, T) tril₋₁(xr krᵀ), ⊙ γ^(t−τ) with a decay; empty with one per neuron
    pub(crate) key: Vec<f32>,     // (B, H, T, N) the write's key, with a mechanism there; else empty
    pub(crate) kr: Vec<f32>,      // (B, H, T, N) the key rotated by RoPE; else empty
    pub(crate) trace: Vec<f32>,   // (B, H, T, N) the key's presynaptic trace; else empty
    pub(crate) glia: Vec<f32>,    // (B, H, T, N) the astrocyte's activity trace; else empty
    pub(crate) a: Vec<f32>,       // (B, H, T, D) attention output after LN
    pub(crate) stats_a: Vec<f32>, // (B, H, T, k) the norm's statistics, k per row (Norm::stats)
    pub(crate) y: Vec<f32>,       // (B, H, T, N)
    pub(crate) keep: Vec<f32>,    // (B, H, T, N) dropout scale 0 or 1/(1−p); empty until used
    pub(crate) w: Vec<f32>,       // (B, T, D) LN(decoder output)
    pub(crate) stats_w: Vec<f32>, // (B, T, k)
    pub(crate) v: Vec<f32>,       // (B, T, D) the residual stream leaving the layer
    pub(crate) stats_v: Vec<f32>, // (B, T, k)
    pub(crate) xy: Vec<f32>,      // (B, H, T, N) what the decoder read, kept on request; else empty
}

impl Layer {
    fn new(Dims { b, t, d, h, n, .. }: Dims, cfg: &BdhConfig) -> Result<Self> {
        let if_so = |yes: bool| if yes { zeroed(&[b, h, t, n]) } else { Ok(Vec::new()) };
        let keyed = KeySite::width(cfg) > 0;
        let k = cfg.norm.stats();
        Ok(Layer {
            x: zeroed(&[b, h, t, n])?,
            inc: if_so(!cfg.residual.is_d())?,
            xr: zeroed(&[b, h, t, n])?,
            // (a retention per neuron forms no (T, T) scores)
            scores: if cfg.per_neuron_decay() { Vec::new() } else { zeroed(&[b, h, t, t])? },
            key: if_so(keyed)?,
            kr: if_so(keyed)?,
            trace: if_so(!cfg.trace.is_none())?,
            glia: if_so(cfg.astrocyte.is_some())?,
            a: zeroed(&[b, h, t, d])?,
            stats_a: zeroed(&[b, h, t, k])?,
            y: zeroed(&[b, h, t, n])?,
            keep: Vec::new(),
            w: zeroed(&[b, t, d])?,
            stats_w: zeroed(&[b, t, k])?,
            v: zeroed(&[b, t, d])?,
            stats_v: zeroed(&[b, t, k])?,
            xy: Vec::new(),
        })
    }

    /// This layer's buffers for batch rows `rows`, reading the residual `v_in`
    /// (all B rows) and using `z` (all B rows) as scratch;
    /// `dropout`: whether this pass draws masks into `keep`.
    pub(super) fn rows<'a>(
        &'a mut self,
        rows: Range<usize>,
        (v_in, x_in): (&'a [f32], &'a [f32]),
        z: &'a mut [f32],
        dm: Dims,
        dropout: bool,
    ) -> LayerRows<'a> {
        let Dims { t, d, h, n, .. } = dm;
        let (htn, htd, htt) = (h * t * n, h * t * d, h * t * t);
        let k = self.stats_w.len() * d / self.w.len(); // the norm's statistics per row
        let of = |per_row: usize| rows.start * per_row..rows.end * per_row;
        let keep = if dropout { &mut self.keep[of(htn)] } else { &mut [][..] };
        let part = |buf: &'a mut Vec<f32>| if buf.is_empty() { &mut [][..] } else { &mut buf[of(htn)] };
        let inc = part(&mut self.inc);
        let x_in = if x_in.is_empty() { x_in } else { &x_in[of(htn)] };
        LayerRows {
            dims: Dims { b: rows.len(), ..dm },
            v_in: &v_in[of(t * d)],
            v_out: &mut self.v[of(t * d)],
            stats_out: &mut self.stats_v[of(t * k)],
            x: &mut self.x[of(htn)],
            x_in,
            inc,
            xr: &mut self.xr[of(htn)],
            scores: if self.scores.is_empty() { &mut [][..] } else { &mut self.scores[of(htt)] },
            key: part(&mut self.key),
            kr: part(&mut self.kr),
            trace: part(&mut self.trace),
            glia: part(&mut self.glia),
            a: &mut self.a[of(htd)],
            stats_a: &mut self.stats_a[of(h * t * k)],
            y: &mut self.y[of(htn)],
            keep,
            z: &mut z[of(htn)],
            xy: part(&mut self.xy),
            w: &mut self.w[of(t * d)],
            stats_w: &mut self.stats_w[of(t * k)],
        }
    }
}

impl Activations {
    /// Buffers for a (B, T) pass of `model`; an error, before allocating, if they
    /// would not fit in memory.
    pub fn new(model: &Bdh, b: usize, t: usize) -> Result<Self> {
        let dm = Dims::new(&model.config, b, t);
        let Dims { d, h, n, v, l, .. } = dm;
        if b == 0 || t == 0 {
            return Err(Error::Input(format!("empty batch (B={b}, T={t})")));
        }
        // Every size below is a product of these, so bounding the largest bounds all.
        let total = [[l, b, h, t, n * 9], [l, b, h, t, t + 2 * d], [l + 1, b, t, 1, 2 * d + v]]
            .iter()
            .try_fold(0usize, |acc, dims| dims.iter().try_fold(1usize, |p, &x| p.checked_mul(x))?.checked_add(acc));
        crate::memory::ensure_fits(
            crate::memory::f32_bytes(total),
            &format!("the activations of a B={b} T={t} pass of this model"),
        )?;
        Ok(Activations {
            dims: dm,
            rope: RopeTable::new(&model.freqs, 0, t),
            freqs: model.freqs.clone(),
            decay: DecayTable::new(model.retention(), (model.delays(), model.config.delays.holds(h)), (h, t)),
            rho0: Vec::new(),
            keys0: Vec::new(),
            queue0: Vec::new(),
            frozen: None,
            dropout: false,
            tokens: vec![0; b * t],
            v0: zeroed(&[b, t, d])?,
            stats_v0: zeroed(&[b, t, model.config.norm.stats()])?,
            layers: (0..l).map(|_| Layer::new(dm, &model.config)).collect::<Result<_>>()?,
            z: zeroed(&[b, h, t, n])?,
            logits: zeroed(&[b, t, v])?,
        })
    }

    /// The buffers in `slot` if they are for a (B, T) pass of `model`'s sizes, else
    /// new ones (the old freed first): for passes over texts of varying lengths.
    pub fn reuse<'s>(slot: &'s mut Option<Activations>, model: &Bdh, b: usize, t: usize) -> Result<&'s mut Self> {
        let fits = slot.as_ref().is_some_and(|a| a.dims == Dims::new(&model.config, b, t) && a.made_for(model));
        if !fits {
            drop(slot.take());
            *slot = Some(Activations::new(model, b, t)?);
        }
        Ok(slot.as_mut().expect("just made"))
    }

    /// Whether these buffers hold what a pass of `model`'s layer keeps (sizes aside):
    /// the increments of x exactly when its residual is in the neurons, the write's
    /// keys and traces exactly when it has those mechanisms.
    pub(super) fn made_for(&self, model: &Bdh) -> bool {
        let c = &model.config;
        self.layers.iter().all(|l| {
            (l.inc.is_empty(), l.key.is_empty(), l.trace.is_empty(), l.glia.is_empty(), l.scores.is_empty())
                == (
                    c.residual.is_d(),
                    KeySite::width(c) == 0,
                    c.trace.is_none(),
                    c.astrocyte.is_none(),
                    c.per_neuron_decay(),
                )
                // (the norm's statistics per row)
                && l.stats_w.len() * c.n_embd == l.w.len() * c.norm.stats()
        }) && self.stats_v0.len() * c.n_embd == self.v0.len() * c.norm.stats()
    }

    /// The residual stream leaving layer `l − 1` (entering layer `l`), (B, T, D);
    /// `l = L` is the final one that `lm_head` reads.
    pub fn residual(&self, l: usize) -> &[f32] {
        if l == 0 {
            &self.v0
        } else {
            &self.layers[l - 1].v
        }
    }

    /// x of layer `l`, (B, H, T, N).
    pub fn x(&self, l: usize) -> &[f32] {
        &self.layers[l].x
    }

    /// x rotated by RoPE of layer `l`, (B, H, T, N).
    pub fn x_rotated(&self, l: usize) -> &[f32] {
        &self.layers[l].xr
    }

    /// The attention scores of layer `l`, `tril₋₁(R(x) R(x)ᵀ)` (times γ^(t−τ) with a
    /// decay), (B, H, T, T).
    pub fn scores(&self, l: usize) -> &[f32] {
        &self.layers[l].scores
    }

    /// The normalised attention read of layer `l`, the input of `encoder_v`, (B, H, T, D).
    pub fn attention_read(&self, l: usize) -> &[f32] {
        &self.layers[l].a
    }

    /// y of layer `l`, (B, H, T, N).
    pub fn y(&self, l: usize) -> &[f32] {
        &self.layers[l].y
    }

    /// Has the next forwards keep each layer's gated product as the decoder reads it
    /// (x ⊙ y through the layer's gate mechanism, dropout and edits), for [`Self::gated`];
    /// an error, before allocating, if it would not fit.
    pub fn keep_gated(&mut self) -> Result<()> {
        let Dims { b, h, t, n, l, .. } = self.dims;
        let total = [l, b, h, t, n].iter().try_fold(1usize, |p, &x| p.checked_mul(x));
        crate::memory::ensure_fits(crate::memory::f32_bytes(total), "the gated products of every layer")?;
        for layer in &mut self.layers {
            layer.xy = zeroed(&[b, h, t, n])?;
        }
        Ok(())
    }

    /// The gated product the decoder read in layer `l`, (B, H, T, N), if kept
    /// ([`Self::keep_gated`]; a forward run on a device does not fill it).
    pub fn gated(&self, l: usize) -> Option<&[f32]> {
        Some(&self.layers[l].xy[..]).filter(|xy| !xy.is_empty())
    }

    /// Readies these buffers for a forward of `tokens` run elsewhere (a device), in
    /// eval mode with `edits` and from `state`, checking what [`super::forward::forward`] checks: the
    /// position of the first token. The parts the accessors read are then filled
    /// through [`Activations::part_mut`]; no backward follows such a pass.
    pub fn begin_elsewhere(
        &mut self,
        model: &Bdh,
        tokens: &[u32],
        edits: &Edits,
        state: Option<&State>,
    ) -> Result<usize> {
        let Setup { pos0, .. } = begin(model, tokens, self, Mode::Eval, edits, state)?;
        self.frozen = Some("the forward ran on a device");
        Ok(pos0)
    }

    /// The buffer of `part`, to be filled by a forward run elsewhere.
    pub fn part_mut(&mut self, part: Part) -> &mut [f32] {
        match part {
            Part::Residual(0) => &mut self.v0,
            Part::Residual(l) => &mut self.layers[l - 1].v,
            Part::X(l) => &mut self.layers[l].x,
            Part::XRotated(l) => &mut self.layers[l].xr,
            Part::Scores(l) => &mut self.layers[l].scores,
            Part::Y(l) => &mut self.layers[l].y,
            Part::Logits => &mut self.logits,
        }
    }
}

/// What the accessors of [`Activations`] read, by layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The residual stream into layer `l` (`l = L`: the last).
    Residual(usize),
    /// x.
    X(usize),
    /// x rotated by RoPE.
    XRotated(usize),
    /// The attention scores.
    Scores(usize),
    /// y.
    Y(usize),
    /// The logits.
    Logits,
}

/// One layer's buffers for some batch rows.
pub(super) struct LayerRows<'a> {
    pub(super) dims: Dims,           // B: the rows here
    pub(super) v_in: &'a [f32],      // (B, T, D)
    pub(super) v_out: &'a mut [f32], // (B, T, D)
    pub(super) stats_out: &'a mut [f32],
    pub(super) x: &'a mut [f32],       // (B, H, T, N)
    pub(super) x_in: &'a [f32], // (B, H, T, N) x of the layer before, with the residual in the neurons; else empty
    pub(super) inc: &'a mut [f32], // (B, H, T, N) relu(v · encoder), with the residual in the neurons; else empty
    pub(super) xr: &'a mut [f32], // (B, H, T, N)
    pub(super) scores: &'a mut [f32], // (B, H, T, T)
    pub(super) key: &'a mut [f32], // (B, H, T, N) with a mechanism at the write's key; else empty
    pub(super) kr: &'a mut [f32], // (B, H, T, N) likewise
    pub(super) trace: &'a mut [f32], // (B, H, T, N) with a trace; else empty
    pub(super) glia: &'a mut [f32], // (B, H, T, N) with an astrocyte; else empty
    pub(super) a: &'a mut [f32], // (B, H, T, D)
    pub(super) stats_a: &'a mut [f32], // (B, H, T, k)
    pub(super) y: &'a mut [f32], // (B, H, T, N)
    pub(super) keep: &'a mut [f32], // (B, H, T, N), empty without dropout
    pub(super) z: &'a mut [f32], // (B, H, T, N)
    pub(super) xy: &'a mut [f32], // (B, H, T, N) a copy of z as the decoder reads it, if kept; else empty
    pub(super) w: &'a mut [f32], // (B, T, D)
    pub(super) stats_w: &'a mut [f32], // (B, T, k)
}
