//! The explicit backward of [`super::forward()`]: d loss / d every parameter.
//!
//! Each block undoes one line of the forward, in reverse; the comments give the
//! forward line and the gradient it produces.

use bdh_kernels::{
    add_groups, causal_linear_attention_backward, matmul, matmul_batched, rope, transpose, Attention, AttentionSaved,
    Batch, MatMul, RopeDirection,
};

use super::activations::Activations;
use super::decay::DecayTable;
use super::delay::{Delays, Queue};
use super::forward::Dims;
use super::key::KeySite;
use super::norm::{NormSite, Place};
use super::params::WeightsMut;
use super::site::Mechanisms;
use super::threshold::ThresholdSite;
use super::Bdh;
use crate::error::{Error, Result};
use crate::model::loss::{cross_entropy, cross_entropy_backward};
use crate::model::{check_batch, zeroed};
use crate::params::Params;

/// Scratch buffers of the backward, sized once per (B, T).
#[derive(Debug)]
pub struct Backward {
    dims: Dims,
    dlogits: Vec<f32>,     // (B, T, V)
    dv: Vec<f32>,          // (B, T, D) d loss / d residual stream at the current depth
    du: Vec<f32>,          // (B, T, D) d loss / d decoder output
    z: Vec<f32>,           // (B, H, T, N) recomputed dropout(x ⊙ y)
    dx: Vec<f32>,          // (B, H, T, N) d loss / d x, then through the ReLU
    dy: Vec<f32>,          // (B, H, T, N) d loss / d (a · encoder_v), through the ReLU
    dq: Vec<f32>,          // (B, H, T, N) d loss / d R(x)
    dq0: Vec<f32>,         // (B, H, T, N) d loss / d x through the read of a carried ρ₀
    dx_up: Vec<f32>,       // (B, H, T, N) d loss / d x of the layer above, with the residual in the neurons; else empty
    da: Vec<f32>,          // (B, H, T, D) d loss / d attention output
    dvh: Vec<f32>,         // (B, H, T, D) d loss / d v through each head's attention values
    dscores: Vec<f32>,     // (B, H, T, T)
    dlags: Vec<f32>,       // (B, H, 2) d loss / d ln γ_h and d δ_h of each row (what learned lags train by)
    dneurons: Vec<f32>,    // (B, H, N) d loss / d ln γ_{h,i} of each row, with a retention per neuron; else empty
    dk: Vec<f32>,          // (B, H, T, N) d loss / d the rotated keys, with keys other than the queries; else empty
    dkey_params: Vec<f32>, // (B, P) each row's d loss / d the key site's parameters (P of them)
    dnorm: Vec<f32>,       // (B, 4, 4, D) each row's d loss / d an E/I norm's logits; else empty
    lm_head_t: Vec<f32>,   // (V, D)
    weights_t: Transposed,
}

/// Transposed weights, so every product reads a row-major B (see `transpose`).
#[derive(Debug, Default)]
struct Transposed {
    decoder_t: Vec<f32>,   // (H, D, N)
    encoder_t: Vec<f32>,   // (H, N, D)
    encoder_v_t: Vec<f32>, // (H, N, D)
}

impl Backward {
    /// Scratch for a (B, T) backward of `model`.
    pub fn new(model: &Bdh, b: usize, t: usize) -> Result<Self> {
        let dims = Dims::new(&model.config, b, t);
        let Dims { d, h, n, v, .. } = dims;
        // Every buffer below is a product of these, so bounding their sum bounds each.
        let total = [[b, h, t, n * 7], [b, h, t, t + 2 * d], [1, b, t, v + 2 * d], [1, h, n, 3 * d + b + 1]]
            .iter()
            .try_fold(0usize, |acc, dims| dims.iter().try_fold(1usize, |p, &x| p.checked_mul(x))?.checked_add(acc));
        let what = format!("the backward of a B={b} T={t} pass of this model");
        crate::memory::ensure_fits(crate::memory::f32_bytes(total), &what)?;
        Ok(Backward {
            dims,
            dlogits: zeroed(&[b, t, v])?,
            dv: zeroed(&[b, t, d])?,
            du: zeroed(&[b, t, d])?,
            z: zeroed(&[b, h, t, n])?,
            dx: zeroed(&[b, h, t, n])?,
            dy: zeroed(&[b, h, t, n])?,
            dq: zeroed(&[b, h, t, n])?,
            dq0: zeroed(&[b, h, t, n])?,
            dx_up: if model.config.residual.is_d() { Vec::new() } else { zeroed(&[b, h, t, n])? },
            da: zeroed(&[b, h, t, d])?,
            dvh: zeroed(&[b, h, t, d])?,
            dscores: if model.config.per_neuron_decay() { Vec::new() } else { zeroed(&[b, h, t, t])? },
            dlags: zeroed(&[b, h, 2])?,
            dneurons: if model.config.per_neuron_decay() { zeroed(&[b, h, n])? } else { Vec::new() },
            dk: if separate_keys(&model.config) { zeroed(&[b, h, t, n])? } else { Vec::new() },
            dkey_params: zeroed(&[b, KeySite::param_count(&model.config)])?,
            dnorm: zeroed(&[b, model.params.get(super::norm::NORM_NAME).map_or(0, <[f32]>::len)])?,
            lm_head_t: zeroed(&[v, d])?,
            weights_t: Transposed {
                decoder_t: zeroed(&[h, d, n])?,
                encoder_t: zeroed(&[h, n, d])?,
                encoder_v_t: zeroed(&[h, n, d])?,
            },
        })
    }
}

/// Whether the backward takes the keys' gradient apart from the queries': with a
/// mechanism at the write's key, or a retention per neuron (whose kernel takes both).
fn separate_keys(c: &super::BdhConfig) -> bool {
    KeySite::width(c) > 0 || c.per_neuron_decay()
}

/// Mean cross-entropy of the last forward's logits against `targets` (B, T).
pub fn loss(acts: &Activations, targets: &[u32]) -> Result<f32> {
    let Dims { b, t, v, .. } = acts.dims;
    check_batch(targets, (b, t), v, "targets")?;
    Ok(cross_entropy(&acts.logits, targets, acts.dims.v))
}

/// Adds d loss / d parameters of the last forward (in `acts`) to `grads`, for the
/// mean cross-entropy against `targets` (B, T). Returns the loss.
pub fn backward(model: &Bdh, acts: &Activations, targets: &[u32], grads: &mut Params, s: &mut Backward) -> Result<f32> {
    if s.dims != acts.dims {
        return Err(Error::Mismatch(format!(
            "backward: scratch sized for {:?}, activations for {:?}",
            s.dims, acts.dims
        )));
    }
    let c = &model.config;
    let shape = (s.dx_up.is_empty(), s.dk.is_empty(), s.dneurons.is_empty(), s.dscores.is_empty());
    if (shape, s.dkey_params.len(), s.dnorm.is_empty())
        != (
            (c.residual.is_d(), !separate_keys(c), !c.per_neuron_decay(), c.per_neuron_decay()),
            s.dims.b * KeySite::param_count(c),
            c.norm.stats() == 1,
        )
    {
        return Err(Error::Mismatch("backward: scratch made for a model with another layer".into()));
    }
    if let Some(why) = acts.frozen {
        return Err(Error::Mismatch(format!("backward: {why}; its gradient is not the model's")));
    }
    if !grads.same_layout(&model.params) {
        return Err(Error::Mismatch("backward: the gradient buffer is not laid out as the model's parameters".into()));
    }
    let loss = loss(acts, targets)?;
    let dm = acts.dims;
    let Dims { b, t, d, h, n, v: vocab, l: layers } = dm;
    let bt = b * t;
    let p = model.weights();
    let g = WeightsMut::of(grads);
    transpose(&mut s.lm_head_t, p.lm_head, d, vocab);
    for hi in 0..h {
        let (dn, nd) = (hi * d * n..(hi + 1) * d * n, hi * n * d..(hi + 1) * n * d);
        let wt = &mut s.weights_t;
        transpose(&mut wt.decoder_t[dn.clone()], &p.decoder[nd.clone()], n, d);
        transpose(&mut wt.encoder_t[nd.clone()], &p.encoder[dn.clone()], d, n);
        transpose(&mut wt.encoder_v_t[nd], &p.encoder_v[dn], d, n);
    }
    let (cos, sin) = (&acts.rope.cos[..], &acts.rope.sin[..]);
    let dm = acts.dims;
    let norm = NormSite::new(c, p.norm);
    let threshold = ThresholdSite::new(c, p.threshold, p.activity);
    s.dx_up.fill(0.0);

    // logits = v · lm_head  ⇒  d lm_head += vᵀ · dlogits,  dv = dlogits · lm_headᵀ
    cross_entropy_backward(&mut s.dlogits, &acts.logits, targets, vocab);
    let v_last = acts.residual(layers);
    matmul(g.lm_head, v_last, &s.dlogits, MatMul::new(d, bt, vocab).a_t().acc().par());
    matmul(&mut s.dv, &s.dlogits, &s.lm_head_t, MatMul::new(bt, vocab, d).par());

    let key_site = model.key_site();
    let queue = Queue::new(&model.config, model.delays(), model.retention());
    for l in (0..layers).rev() {
        let (v_in, layer) = (acts.residual(l), &acts.layers[l]);
        let (x, xr, y, a, stats_a, scores) = (&layer.x, &layer.xr, &layer.y, &layer.a, &layer.stats_a, &layer.scores);
        let keep = if acts.dropout { &layer.keep[..] } else { &[][..] };
        let inc = &layer.inc[..];

        // v_out = LN(v_in + w)  ⇒  dv (residual path) = dw = LN'(dv_out)
        //   (the residual in the neurons: v_out = w, and no path to v_in)
        if model.config.residual.is_d() {
            norm.backward(&mut s.dv, &layer.v, &layer.stats_v, d, Place::Residual, g.norm);
        }
        // w = LN(u)  ⇒  du = LN'(dw)
        s.du.copy_from_slice(&s.dv);
        norm.backward(&mut s.du, &layer.w, &layer.stats_w, d, Place::Decoder, g.norm);
        if !model.config.residual.is_d() {
            s.dv.fill(0.0);
        }

        // Batch rows are independent until the weight gradients sum them: each row's
        // chain is one task, its gradients in cache from one kernel to the next.
        // layer l's part of what a carried state started from, (L, B, ·), or empty
        let start = |copy| layer_part(copy, l, layers);
        let (rho0, keys0, queue0) = (start(&acts.rho0), start(&acts.keys0), start(&acts.queue0));
        let decay = &acts.decay;
        let (mechanisms, pos0) = (&model.mechanisms, acts.rope.start);
        let saved = Saved {
            x,
            keyed: (&layer.kr, &layer.trace, &layer.glia, keys0),
            key_site: key_site.as_ref(),
            delayed: queue.as_ref().zip((!queue0.is_empty()).then_some(queue0)),
            inc,
            y,
            xr,
            a,
            stats_a,
            scores,
            keep,
            v_in,
            cos,
            sin,
            rho0,
            decay,
            mechanisms,
            norm,
            threshold: &threshold,
            layer: l,
            pos0,
        };
        let weights_t = std::mem::take(&mut s.weights_t); // read by every row while they write the rest of `s`
        let learned = model.config.decay.is_learned();
        let mut rows = RowGrads::split(s, saved, dm);
        bdh_kernels::parallel_each(&mut rows, |r| row_backward(r, &weights_t, dm, learned));
        drop(rows);
        s.weights_t = weights_t;
        for row in s.dnorm.chunks_exact_mut(g.norm.len().max(1)) {
            // the read's E/I circuit, summed over rows (the normalisation site)
            g.norm.iter_mut().zip(row.iter_mut()).for_each(|(o, x)| *o += std::mem::take(x));
        }
        if key_site.is_some() {
            // the key site's parameters, summed over rows
            let per = s.dkey_params.len() / b;
            for row in s.dkey_params.chunks_exact(per.max(1)) {
                let (phi, beta) = row.split_at(g.trace.len());
                g.trace.iter_mut().zip(phi).for_each(|(o, &x)| *o += x);
                g.astrocyte.iter_mut().zip(beta).for_each(|(o, &x)| *o += x);
            }
        }
        let summed =
            |hi: usize, which: usize| s.dlags.chunks_exact(2).skip(hi).step_by(h).map(|g| g[which] as f64).sum::<f64>();
        if learned && !c.per_neuron_decay() {
            // γ_h = sigmoid(θ_h)  ⇒  d θ_h = (1 − γ_h) Σ_b d ln γ_h   (the damping site)
            for (hi, (gd, &gamma)) in g.decay.iter_mut().zip(&acts.decay.gamma).enumerate() {
                *gd += (summed(hi, 0) * (1.0 - gamma as f64)) as f32;
            }
        }
        if c.per_neuron_decay() {
            // γ_{h,i} = sigmoid(θ_{h,i})  ⇒  d θ_{h,i} = (1 − γ_{h,i}) Σ_b d ln γ_{h,i}
            for (j, (gd, &gamma)) in g.decay.iter_mut().zip(&acts.decay.gamma).enumerate() {
                let sum: f64 = s.dneurons.iter().skip(j).step_by(h * n).map(|&x| x as f64).sum();
                *gd += (sum * (1.0 - gamma as f64)) as f32;
            }
        }
        if let Delays::Learned(max) = model.config.delays {
            // δ_h = M sigmoid(ψ_h)  ⇒  d ψ_h = δ_h (1 − δ_h / M) Σ_b d δ_h   (the read's mask site)
            for (hi, (gd, &delta)) in g.delay.iter_mut().zip(&acts.decay.delays).enumerate() {
                let delta = delta as f64;
                *gd += (summed(hi, 1) * delta * (1.0 - delta / max as f64)) as f32;
            }
        }

        // (the threshold site) what the thresholds train by: d θ from d latent, or the
        // firing fractions of a homeostatic rule
        let fired = if inc.is_empty() { x } else { inc };
        threshold.backward((&mut *g.threshold, &mut *g.firing, &mut *g.activity), (&s.dx, fired), (h, t, n, layers));

        // Weight gradients, summed over rows:
        let per_head = |a, w, c| Batch { count: [b, h], a, b: w, c };
        let (row_nt, row_dt) = ([h * t * n, t * n], [h * t * d, t * d]); // (B, H, T, ·) per item
        let sum_rows = MatMul::new(d, t, n).a_t().acc();
        // u = concat_h(z) · decoder  ⇒  d decoder_h += Σ_b z_bhᵀ · du_b
        matmul_batched(
            g.decoder,
            &s.z,
            &s.du,
            MatMul::new(n, t, d).a_t().acc(),
            per_head(row_nt, [t * d, 0], [0, n * d]),
        );
        // x_latent = v · encoder_h, y_latent = a · encoder_v_h
        matmul_batched(g.encoder, v_in, &s.dx, sum_rows, per_head([t * d, 0], row_nt, [0, d * n]));
        matmul_batched(g.encoder_v, a, &s.dy, sum_rows, per_head(row_dt, row_nt, [0, d * n]));
    }

    // v = LN(embed[idx])  ⇒  d embed[idx] += LN'(dv)
    norm.backward(&mut s.dv, &acts.v0, &acts.stats_v0, d, Place::Embed, g.norm);
    for (row, &tok) in s.dv.chunks_exact(d).zip(&acts.tokens) {
        let e = &mut g.embed[tok as usize * d..(tok as usize + 1) * d];
        e.iter_mut().zip(row).for_each(|(o, &gv)| *o += gv);
    }
    Ok(loss)
}

/// Layer `l`'s part of `copy`, (L, ·), or `copy` itself if empty.
fn layer_part(copy: &[f32], l: usize, layers: usize) -> &[f32] {
    match copy.len() / layers {
        0 => copy,
        per => &copy[l * per..(l + 1) * per],
    }
}

/// What one layer's forward kept, for all batch rows.
#[derive(Clone, Copy)]
struct Saved<'a> {
    x: &'a [f32], // (B, H, T, N)
    /// With a mechanism at the write's key: the rotated key, its trace and the
    /// astrocyte's trace (B, H, T, N; each empty without its mechanism), and the
    /// traces a carried state started from (B, H, W, or empty).
    keyed: (&'a [f32], &'a [f32], &'a [f32], &'a [f32]),
    key_site: Option<&'a KeySite>,
    /// With delays and a carried state: the queue and the rings it started from (B, H, W').
    delayed: Option<(&'a Queue, &'a [f32])>,
    inc: &'a [f32],     // (B, H, T, N) x's increment, with the residual in the neurons; else empty
    y: &'a [f32],       // (B, H, T, N)
    xr: &'a [f32],      // (B, H, T, N)
    a: &'a [f32],       // (B, H, T, D)
    stats_a: &'a [f32], // (B, H, T, k)
    scores: &'a [f32],  // (B, H, T, T)
    keep: &'a [f32],    // (B, H, T, N) or empty
    v_in: &'a [f32],    // (B, T, D)
    cos: &'a [f32],     // (T, N/2)
    sin: &'a [f32],     // (T, N/2)
    rho0: &'a [f32],    // (B, H, N, D) ρ the forward started from, or empty
    decay: &'a DecayTable,
    mechanisms: &'a Mechanisms,
    norm: NormSite<'a>,
    threshold: &'a ThresholdSite<'a>,
    layer: usize,
    pos0: usize, // the position of the pass's first token
}

/// One batch row's part of a layer's backward: what the forward kept and the
/// gradients it writes.
struct RowGrads<'a> {
    saved: Saved<'a>,
    du: &'a [f32],              // (T, D)
    dv: &'a mut [f32],          // (T, D)
    z: &'a mut [f32],           // (H, T, N)
    dx: &'a mut [f32],          // (H, T, N)
    dy: &'a mut [f32],          // (H, T, N)
    dq: &'a mut [f32],          // (H, T, N)
    dq0: &'a mut [f32],         // (H, T, N)
    dx_up: &'a mut [f32],       // (H, T, N), or empty
    da: &'a mut [f32],          // (H, T, D)
    dvh: &'a mut [f32],         // (H, T, D)
    dscores: &'a mut [f32],     // (H, T, T)
    dlags: &'a mut [f32],       // (H, 2)
    dneurons: &'a mut [f32],    // (H, N), or empty
    dk: &'a mut [f32],          // (H, T, N), or empty
    dkey_params: &'a mut [f32], // (P)
    dnorm: &'a mut [f32],       // (4, 4, D), or empty
}

impl<'a> RowGrads<'a> {
    /// The rows of `saved` and of the scratch, one view each.
    fn split(s: &'a mut Backward, saved: Saved<'a>, dm: Dims) -> Vec<Self> {
        let Dims { b, t, d, h, n, .. } = dm;
        let (htn, htd, htt) = (h * t * n, h * t * d, h * t * t);
        let row =
            |buf: &'a [f32], per: usize, r: usize| if buf.is_empty() { buf } else { &buf[r * per..(r + 1) * per] };
        let mut dv = s.dv.chunks_mut(t * d);
        let (mut z, mut dx, mut dy, mut dq) =
            (s.z.chunks_mut(htn), s.dx.chunks_mut(htn), s.dy.chunks_mut(htn), s.dq.chunks_mut(htn));
        let mut dq0 = s.dq0.chunks_mut(htn);
        let mut dx_up = s.dx_up.chunks_mut(htn);
        let (mut da, mut dvh, mut dscores) = (s.da.chunks_mut(htd), s.dvh.chunks_mut(htd), s.dscores.chunks_mut(htt));
        let mut dlags = s.dlags.chunks_mut(2 * h);
        let mut dk = s.dk.chunks_mut(htn);
        let mut dneurons = s.dneurons.chunks_mut(h * n);
        let per_params = s.dkey_params.len() / b;
        let mut dkey_params = s.dkey_params.chunks_mut(per_params.max(1));
        let per_norm = s.dnorm.len() / b;
        let mut dnorm = s.dnorm.chunks_mut(per_norm.max(1));
        let du: &'a [f32] = &s.du;
        (0..b)
            .map(|r| {
                let saved = Saved {
                    x: row(saved.x, htn, r),
                    delayed: saved.delayed.map(|(q, rings)| (q, row(rings, rings.len() / b, r))),
                    keyed: {
                        let (kr, trace, glia, keys0) = saved.keyed;
                        let w = keys0.len() / b;
                        (row(kr, htn, r), row(trace, htn, r), row(glia, htn, r), row(keys0, w, r))
                    },
                    inc: row(saved.inc, htn, r),
                    y: row(saved.y, htn, r),
                    xr: row(saved.xr, htn, r),
                    a: row(saved.a, htd, r),
                    stats_a: row(saved.stats_a, saved.stats_a.len() / b, r),
                    scores: row(saved.scores, htt, r),
                    keep: row(saved.keep, htn, r),
                    v_in: row(saved.v_in, t * d, r),
                    rho0: row(saved.rho0, h * n * d, r),
                    ..saved
                };
                let next = |it: &mut std::slice::ChunksMut<'a, f32>| it.next().expect("one chunk per row");
                RowGrads {
                    saved,
                    du: row(du, t * d, r),
                    dv: next(&mut dv),
                    z: next(&mut z),
                    dx: next(&mut dx),
                    dy: next(&mut dy),
                    dq: next(&mut dq),
                    dq0: next(&mut dq0),
                    dx_up: dx_up.next().unwrap_or_default(),
                    da: next(&mut da),
                    dvh: next(&mut dvh),
                    dscores: dscores.next().unwrap_or_default(),
                    dlags: next(&mut dlags),
                    dk: dk.next().unwrap_or_default(),
                    dneurons: dneurons.next().unwrap_or_default(),
                    dkey_params: if per_params == 0 { &mut [][..] } else { next(&mut dkey_params) },
                    dnorm: if per_norm == 0 { &mut [][..] } else { next(&mut dnorm) },
                }
            })
            .collect()
    }
}

/// One row's backward through a layer, from du (and dv of the residual path) to dv
/// of the layer's input, leaving z, dx and dy for the weight gradients.
/// `learned`: the decay is learned, and its d ln γ_h is wanted.
fn row_backward(r: &mut RowGrads, w: &Transposed, dm: Dims, learned: bool) {
    let Dims { t, d, h, n, .. } = dm;
    let Saved {
        x,
        keyed,
        key_site,
        delayed,
        inc,
        y,
        xr,
        a,
        stats_a,
        scores,
        keep,
        v_in,
        cos,
        sin,
        rho0,
        decay,
        mechanisms,
        norm,
        threshold,
        layer,
        pos0,
    } = r.saved;
    let heads = |a, w, c| Batch { count: [1, h], a, b: w, c };
    let (nt, dt) = ([0, t * n], [0, t * d]); // per head
                                             // u = concat_h(z) · decoder  ⇒  dz = du · decoder_hᵀ                 (H, T, N)
    matmul_batched(r.dx, r.du, &w.decoder_t, MatMul::new(t, d, n), heads([0, 0], [0, d * n], nt));
    // z = dropout(x ⊙ relu(y_latent)) (through the gate site's mechanism, if any)
    //   ⇒  dy = dz ⊙ x ⊙ [y > 0],  dx = dz ⊙ y;  z recomputed for the decoder's gradient
    let region = Dims { b: 1, ..dm }.region(pos0);
    mechanisms.gate_backward(r.dx, r.dy, r.z, (x, y, keep), layer, region);
    // y_latent = a · encoder_v_h  ⇒  da = dy · encoder_v_hᵀ             (H, T, D)
    matmul_batched(r.da, r.dy, &w.encoder_v_t, MatMul::new(t, n, d), heads(nt, [0, n * d], dt));
    // a = LN(attention)  ⇒  d attention = LN'(da)
    norm.backward(r.da, a, stats_a, d, Place::Read, r.dnorm);
    // attention = tril₋₁(xr xrᵀ) · v, xr = R(x), x = relu(x_latent)
    //   ⇒  dv through the values of each head;  dx = [x > 0] ⊙ (dx + Rᵀ d xr)
    let shape = Attention { b: 1, h, t, n, d };
    match key_site {
        None if !decay.per_neuron() => {
            let saved = AttentionSaved { x, q: xr, v: v_in, scores, cos, sin, lags: decay.lags() };
            causal_linear_attention_backward(r.dx, r.dq, r.dvh, r.dscores, r.dlags, r.da, saved, shape);
        }
        //   (the write's key site: keys R(key) other than the queries R(x);
        //    with a retention per neuron, the damping site's kernel, keys R(x) or R(key))
        //   ⇒  dx = [x > 0] ⊙ (dx + Rᵀ dq + d key / dx (Rᵀ dk))
        site => {
            let (kr, trace, glia, keys0) = keyed;
            let k = if site.is_some() { kr } else { xr };
            let scratch = (&mut *r.dscores, &mut *r.dlags, &mut *r.dneurons);
            decay.attend_backward((r.dq, r.dk, r.dvh), scratch, r.da, (xr, k, v_in, scores), shape);
            if site.is_none() {
                // the keys are the queries
                r.dq.iter_mut().zip(r.dk.iter()).for_each(|(q, &k)| *q += k);
            }
            rope(r.dq0, r.dq, cos, sin, n, RopeDirection::Inverse);
            r.dx.iter_mut().zip(r.dq0.iter()).for_each(|(g, &q)| *g += q);
            if let Some(site) = site {
                rope(r.dq0, r.dk, cos, sin, n, RopeDirection::Inverse);
                site.backward(r.dq0, r.dx, r.dkey_params, (x, trace, glia), keys0, t);
            }
            r.dx.iter_mut().zip(x).filter(|(_, &xv)| xv <= 0.0).for_each(|(g, _)| *g = 0.0);
        }
    }
    if !rho0.is_empty() {
        // attention += R(x) · ρ₀ (a carried state, held constant)  ⇒  d R(x) = d attention · ρ₀ᵀ,
        // dx += [x > 0] ⊙ Rᵀ (d attention · ρ₀ᵀ)
        matmul_batched(r.dq, r.da, rho0, MatMul::new(t, d, n).b_t(), heads(dt, [0, n * d], nt));
        if learned {
            // the read at i was γ^(i+1) R(x_i) · ρ₀  ⇒  d ln γ += Σ_i (i+1) γ^(i+1) R(x_i) · d R(x_i)
            decay.read_log_grads((&mut *r.dlags, &mut *r.dneurons), xr, r.dq, (h, t, n));
        }
        // the read at i was γ^(i+1) R(x_i) · ρ₀ (the damping site)
        decay.read_backward(r.dq, (h, t, n));
        if let Some((queue, rings0)) = delayed {
            // and of the queued writes it could see (the read's mask site)
            queue.read_backward(r.dq, r.dlags, (xr, r.da), rings0, pos0, t);
        }
        rope(r.dq0, r.dq, cos, sin, n, RopeDirection::Inverse);
        for ((g, &back), &xv) in r.dx.iter_mut().zip(r.dq0.iter()).zip(x) {
            if xv > 0.0 {
                *g += back;
            }
        }
    }
    if !inc.is_empty() {
        // (the residual in the neurons) x_l = x_{l−1} + relu(x_latent)  ⇒  d x_l = dx + d x_{l+1},
        // passed on to x_{l−1};  d x_latent = [relu(x_latent) > 0] ⊙ d x_l.  (dx was masked by
        // x_l > 0 above: where x_l = 0, every increment up to l is 0 too, so nothing is lost.)
        for ((g, up), &i) in r.dx.iter_mut().zip(r.dx_up.iter_mut()).zip(inc) {
            *g += *up;
            *up = *g;
            if i <= 0.0 {
                *g = 0.0;
            }
        }
    }
    // (the threshold site) x = g ⊙ relu(x_latent − θ) with a gain  ⇒  d x_latent = g ⊙ [x > 0] ⊙ dx
    threshold.gain_backward(r.dx, n, |i| i / t);
    // dv_in = dv (residual) + Σ_h dv through attention values + Σ_h dx_h · encoder_hᵀ
    add_groups(r.dv, r.dvh, t * d, h);
    matmul_batched(r.dv, r.dx, &w.encoder_t, MatMul::new(t, n, d).acc(), heads(nt, [0, n * d], [0, 0]));
}
