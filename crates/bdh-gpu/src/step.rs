//! The recurrent step on a device, one stream: ρ of every layer lives on the
//! device; a step reads one token and sends back only its logits (V values), which
//! the host samples from. Beside `bdh::model::bdh::recurrent` (which does the same
//! on the active neurons only): `a = ρᵀ R(x)` is read after ρ fades, then
//! `ρ += R(x) ⊗ v` is written.

use bdh::model::bdh::{rope::cos_sin, Bdh, State};
use bdh::Result;
use bdh_kernels::{Batch, MatMul};
use cubecl::prelude::Runtime;

use crate::device::{Buf, Device};
use crate::forward::Weights;

/// One stream's state and step buffers on a device.
pub struct Stream {
    pub pos: usize,
    rho: Vec<Buf>, // (L) × (H, N, D)
    v: [Buf; 2],   // (D)
    x: Buf,        // (H, N)
    xr: Buf,       // (H, N)
    y: Buf,        // (H, N)
    z: Buf,        // (H, N)
    a: Buf,        // (H, D)
    u: Buf,        // (D)
    rstd: Buf,     // (H)
    logits: Buf,   // (V)
    cos: Vec<f32>, // (N/2) of the current position, made on the host as the CPU makes it
    sin: Vec<f32>,
}

impl Stream {
    /// A stream continuing `state` (its position and ρ) of `model`.
    pub fn new<R: Runtime>(dev: &Device<R>, model: &Bdh, state: &State) -> Result<Self> {
        let c = &model.config;
        state.check(c)?;
        let (d, h, n) = (c.n_embd, c.n_head, c.n_neurons());
        let per_layer = h * n * d;
        let layers = state.rho.f32("the GPU backend")?.chunks_exact(per_layer);
        let rho = layers.map(|r| dev.upload(r, "ρ of a layer")).collect::<Result<_>>()?;
        let s = |len: usize, what: &str| dev.scratch(len, what);
        Ok(Stream {
            pos: state.pos,
            rho,
            v: [s(d, "v")?, s(d, "v")?],
            x: s(h * n, "x")?,
            xr: s(h * n, "R(x)")?,
            y: s(h * n, "y")?,
            z: s(h * n, "x ⊙ y")?,
            a: s(h * d, "a")?,
            u: s(d, "u")?,
            rstd: s(h, "LayerNorm statistics")?,
            logits: s(c.vocab_size, "logits")?,
            cos: vec![0.0; n / 2],
            sin: vec![0.0; n / 2],
        })
    }

    /// ρ of every layer, (H, N, D) each.
    pub fn layers(&self) -> &[Buf] {
        &self.rho
    }

    /// The state reached, on the host.
    pub fn state<R: Runtime>(&self, dev: &Device<R>) -> Result<State> {
        let mut rho = Vec::new();
        for layer in &self.rho {
            rho.extend(dev.read(layer)?);
        }
        Ok(State { pos: self.pos, rho: rho.into(), keys: Vec::new(), queue: Vec::new() })
    }

    /// Reads `token`; the logits after it.
    pub fn step<R: Runtime>(
        &mut self,
        dev: &Device<R>,
        model: &Bdh,
        w: &Weights,
        gamma: Option<&Buf>,
        token: u32,
    ) -> Result<Vec<f32>> {
        let c = &model.config;
        bdh::model::check_positions(self.pos, 1, "step")?;
        bdh::model::check_tokens(&[token], c.vocab_size, "step")?;
        let (d, h, n) = (c.n_embd, c.n_head, c.n_neurons());
        for (j, (cj, sj)) in self.cos.iter_mut().zip(&mut self.sin).enumerate() {
            (*cj, *sj) = cos_sin(self.pos, model.freqs[2 * j]);
        }
        let (cos, sin) = (dev.upload(&self.cos, "RoPE row")?, dev.upload(&self.sin, "RoPE row")?);
        let per_head = |a: usize, wt: usize, cc: usize| Batch { count: [1, h], a: [0, a], b: [0, wt], c: [0, cc] };

        // v = LN(embed[token])                                                     (D)
        dev.gather(&w.embed, &dev.upload_ids(&[token])?, &self.v[0], d);
        dev.layer_norm(&self.v[0], &self.rstd, d);
        for (l, rho) in self.rho.iter().enumerate() {
            let (v_in, v_out) = (&self.v[l % 2], &self.v[(l + 1) % 2]);
            // x = relu(v · encoder_h); R(x)                                        (H, N)
            dev.matmul(&self.x, v_in, &w.encoder, MatMul::new(1, d, n).relu(), per_head(0, d * n, n), false);
            dev.rope(&self.x, &cos, &sin, &self.xr, 1, n, false);
            // ρ ← γ ρ; a = ρᵀ R(x); ρ += R(x) ⊗ v                                  (H, D)
            if let Some(gamma) = gamma {
                dev.scale_blocks(rho, gamma, n * d);
            }
            dev.matmul(&self.a, &self.xr, rho, MatMul::new(1, n, d), per_head(n, n * d, d), false);
            dev.outer_add(rho, &self.xr, v_in);
            // y = relu(LN(a) · encoder_v_h) ⊙ x                                    (H, N)
            dev.layer_norm(&self.a, &self.rstd, d);
            dev.matmul(&self.y, &self.a, &w.encoder_v, MatMul::new(1, d, n).relu(), per_head(d, d * n, n), false);
            dev.mul(&self.x, &self.y, None, &self.z);
            // v = LN(v + LN(Σ_h z_h · decoder_h))                                  (D)
            let heads = Batch { count: [1, h], a: [0, n], b: [0, n * d], c: [0, 0] };
            dev.matmul(&self.u, &self.z, &w.decoder, MatMul::new(1, n, d), heads, false);
            dev.layer_norm(&self.u, &self.rstd, d);
            dev.add(v_in, &self.u, v_out);
            dev.layer_norm(v_out, &self.rstd, d);
        }
        let one = Batch { count: [1, 1], a: [0, 0], b: [0, 0], c: [0, 0] };
        let last = &self.v[self.rho.len() % 2];
        dev.matmul(&self.logits, last, &w.lm_head, MatMul::new(1, d, c.vocab_size), one, false);
        self.pos += 1;
        dev.read(&self.logits)
    }
}
