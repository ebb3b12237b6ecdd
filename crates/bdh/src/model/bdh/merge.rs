//! Merging two BDH models by concatenating their neurons (paper Sec. 7.1): every
//! tensor with a neuron axis is joined head by head (each head's block of A's
//! neurons, then B's), each neuron keeping its own RoPE frequency; the embedding and
//! the output head are averaged. The merged layer reads both models' neurons and
//! sums their decoders' outputs.

use serde::Serialize;

use super::{params, Bdh, BdhConfig, WeightsMut};
use crate::error::{Error, Result};

/// Where each neuron of a merged model came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heritage {
    /// Neurons per head taken from the first model: indices `0..from_a` of each head.
    pub from_a: usize,
    /// Neurons per head taken from the second: indices `from_a..from_a + from_b`.
    pub from_b: usize,
    /// Heads (the same split in each).
    pub heads: usize,
    /// Tensors averaged rather than joined.
    pub averaged: Vec<&'static str>,
}

/// `a` and `b` joined neuron by neuron. They must agree in L, D, H and V.
pub fn merge(a: &Bdh, b: &Bdh) -> Result<(Bdh, Heritage)> {
    let (ca, cb) = (&a.config, &b.config);
    for (what, x, y) in [
        ("layers (n_layer)", ca.n_layer, cb.n_layer),
        ("residual width (n_embd)", ca.n_embd, cb.n_embd),
        ("heads (n_head)", ca.n_head, cb.n_head),
        ("vocabulary (vocab_size)", ca.vocab_size, cb.vocab_size),
    ] {
        if x != y {
            return Err(Error::Config(format!("cannot merge models with different {what}: {x} and {y}")));
        }
    }
    if (ca.norm, ca.residual, ca.position) != (cb.norm, cb.residual, cb.position) {
        let layer = |c: &BdhConfig| c.variant().unwrap_or_else(|| "bdh.py's".into());
        return Err(Error::Config(format!("cannot merge models whose layers differ: {} and {}", layer(ca), layer(cb))));
    }
    if ca.norm == super::Norm::Ei {
        return Err(Error::Config(
            "cannot merge models with norm = \"ei\": each has its own inhibitory circuits over the residual \
             stream, and a merged layer has one"
                .into(),
        ));
    }
    if (&ca.delays, a.delays()) != (&cb.delays, b.delays()) {
        return Err(Error::Config(format!(
            "cannot merge models whose heads delay their writes differently ({:?} and {:?}): a merged head has one \
             delay",
            a.delays(),
            b.delays()
        )));
    }
    if (&ca.trace, ca.astrocyte) != (&cb.trace, cb.astrocyte) || ca.astrocyte.is_some() {
        return Err(Error::Config(format!(
            "cannot merge models whose writes' keys differ or are gated ({:?}, astrocyte {:?} and {:?}, astrocyte \
             {:?}): a merged head has one gate",
            ca.trace, ca.astrocyte, cb.trace, cb.astrocyte
        )));
    }
    if ca.connectivity.is_some() || cb.connectivity.is_some() {
        return Err(Error::Config(
            "cannot merge models with a sparse connectivity (model.connectivity): their masks were drawn for their \
             own modules"
                .into(),
        ));
    }
    if ca.threshold.has_gain() {
        return Err(Error::Config(
            "cannot merge models with a homeostatic gain (threshold.gain): each neuron's gain is relative to its \
             head's mean activity, which a merged head changes"
                .into(),
        ));
    }
    if ca.threshold != cb.threshold {
        return Err(Error::Config(format!(
            "cannot merge models whose neurons' thresholds follow different rules: {:?} and {:?}",
            ca.threshold, cb.threshold
        )));
    }
    // (with a retention per neuron, each neuron keeps its own: only the kind must agree)
    let kind = |m: &Bdh| (m.config.decay.is_learned(), m.config.decay_per, m.config.per_neuron_decay());
    let retention = |m: &Bdh| if m.config.per_neuron_decay() { Vec::new() } else { m.retention() };
    if (kind(a), retention(a)) != (kind(b), retention(b)) {
        let said = |m: &Bdh| match m.config.decay.is_learned() {
            true => format!("\"learned\", trained to γ = {:?}", m.retention()),
            false => m.config.decay.describe(),
        };
        return Err(Error::Config(format!(
            "cannot merge models whose heads decay differently (a merged head has one retention): {} and {}",
            said(a),
            said(b)
        )));
    }
    let config = BdhConfig {
        mlp_internal_dim_multiplier: ca
            .mlp_internal_dim_multiplier
            .checked_add(cb.mlp_internal_dim_multiplier)
            .ok_or_else(|| Error::Config("the merged neuron count overflows".into()))?,
        ..ca.clone()
    };
    config.validate()?;
    let (d, h, na, nb) = (ca.n_embd, ca.n_head, ca.n_neurons(), cb.n_neurons());
    let n = config.n_neurons();
    if n != na + nb {
        return Err(Error::Config(format!("{na} + {nb} neurons per head do not make the merged model's {n}")));
    }
    let mut merged_params = params::zeros(&config)?;
    let (wa, wb) = (a.weights(), b.weights());
    let w = WeightsMut::of(&mut merged_params);
    // Averaged: embed (V, D) and lm_head (D, V).
    for (out, x, y) in [(w.embed, wa.embed, wb.embed), (w.lm_head, wa.lm_head, wb.lm_head)] {
        out.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (p, q))| *o = 0.5 * (p + q));
    }
    // Joined along N, head by head: encoder and encoder_v (H, D, N): each row of D.
    for (out, x, y) in [(w.encoder, wa.encoder, wb.encoder), (w.encoder_v, wa.encoder_v, wb.encoder_v)] {
        for (row, (ra, rb)) in out.chunks_exact_mut(n).zip(x.chunks_exact(na).zip(y.chunks_exact(nb))) {
            row[..na].copy_from_slice(ra);
            row[na..].copy_from_slice(rb);
        }
    }
    // decoder (H·N, D): head h's rows are A's block of that head, then B's.
    for hi in 0..h {
        let out = &mut w.decoder[hi * n * d..(hi + 1) * n * d];
        out[..na * d].copy_from_slice(&wa.decoder[hi * na * d..(hi + 1) * na * d]);
        out[na * d..].copy_from_slice(&wb.decoder[hi * nb * d..(hi + 1) * nb * d]);
    }
    // Per neuron, (H, N): each neuron keeps its own, joined head by head as the encoders are.
    let join = |out: &mut [f32], x: &[f32], y: &[f32]| {
        for (row, (ra, rb)) in out.chunks_exact_mut(n).zip(x.chunks_exact(na).zip(y.chunks_exact(nb))) {
            row[..na].copy_from_slice(ra);
            row[na..].copy_from_slice(rb);
        }
    };
    // A learned decay's θ (per head the same in both, checked above; per neuron joined)
    // and learned delays' ψ_h (the same in both).
    match config.per_neuron_decay() {
        true => join(w.decay, wa.decay, wb.decay),
        false => w.decay.copy_from_slice(wa.decay),
    }
    w.delay.copy_from_slice(wa.delay);
    // A learned trace's φ, the thresholds θ and a homeostatic rule's running rates.
    join(w.trace, wa.trace, wb.trace);
    join(w.threshold, wa.threshold, wb.threshold);
    let firing = |m: &Bdh| m.params.get(super::threshold::FIRING_NAME).unwrap_or_default().to_vec();
    join(w.firing, &firing(a), &firing(b));
    // Each neuron keeps its frequency (shared by the heads, as bdh.py's buffer is).
    let freqs: Vec<f32> = a.freqs.iter().chain(&b.freqs).copied().collect();
    let merged = Bdh::from_parts(config, merged_params, freqs)?;
    let heritage = Heritage { from_a: na, from_b: nb, heads: h, averaged: vec!["embed.weight", "lm_head"] };
    Ok((merged, heritage))
}
