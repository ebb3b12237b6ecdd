//! The seam where variants and mechanisms attach to the BDH layer.
//!
//! A layer has a few **sites**, in the order a token meets them: the normalisation,
//! the threshold of x, the position encoding, the key of the write into ρ, the read's
//! mask, the state's damping, the gate x ⊙ y and the residual. A variant or a
//! mechanism is one module at one site, written once for the three paths that run
//! the layer — the parallel forward, its backward and the recurrent step of 1…B
//! streams — which each call the site at one place. Sites come in two kinds:
//!
//! - **Token-local sites** map one token's activation of one head on its own: a
//!   [`Mechanism`] there is a function with its derivative, and the step is the
//!   forward at T = 1, so parallel and recurrent forms agree by construction. The
//!   gate x ⊙ y ([`Site::Xy`]) takes mechanisms today in all three paths. At x and
//!   y the backward kernels fuse the ReLU's mask into their products (they mask by
//!   the saved output), so a mechanism there also needs its derivative folded into
//!   those kernels: the site opens when its first mechanism arrives.
//! - **Sequence sites** act between positions — the damping (decay), the read's
//!   mask (delays), the write's key (traces, gates), the position encoding. A
//!   mechanism there changes what the attention kernels compute, so it is a module
//!   that hands each path its operator: the parallel form's kernel argument (the
//!   damping's γ per head), the powers a carried state needs, the backward's
//!   gradient and the step's update. [`super::decay`] is the first: the layer calls
//!   it once in the forward, once in the backward and once in the step.
//!
//! A mechanism's per-stream state (a trace, a delay queue) belongs in the recurrent
//! [`super::State`] beside ρ; training-side mechanisms (weight masks, gradient
//! projection, initialisation) are hooks of the trainer, not layer sites.

use std::fmt::Debug;
use std::sync::Arc;

use bdh_kernels::{gated_product, gated_product_backward};

use super::edit::{Region, Site};
use crate::error::{Error, Result};

/// Where one token's activation of one head is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// The layer.
    pub layer: usize,
    /// The head.
    pub head: usize,
    /// The token's position in its stream.
    pub pos: usize,
}

/// A mechanism at a token-local site: a map of one token's activation of one head
/// (its N values) with its derivative. The parallel forward applies it at every
/// position, the step at the current one, the backward takes the gradient through it.
pub trait Mechanism: Debug + Send + Sync {
    /// Its name, for messages.
    fn name(&self) -> &str;
    /// The site it acts at.
    fn site(&self) -> Site;
    /// Maps `act` (N) in place.
    fn forward(&self, act: &mut [f32], at: At);
    /// Turns `grad` (N), d loss / d the output of [`Mechanism::forward`], into
    /// d loss / d its input `input` (N), in place.
    fn backward(&self, grad: &mut [f32], input: &[f32], at: At);
}

/// A model's mechanisms at token-local sites, at most one per site; shared by every
/// pass and step. Empty: bdh.py's layer.
#[derive(Clone, Debug, Default)]
pub struct Mechanisms {
    list: Vec<Arc<dyn Mechanism>>,
}

impl PartialEq for Mechanisms {
    /// The same mechanisms (the same objects, in the same order).
    fn eq(&self, other: &Self) -> bool {
        self.list.len() == other.list.len() && self.list.iter().zip(&other.list).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Mechanisms {
    /// Adds `mechanism` at its site: refused at a site that does not take mechanisms
    /// yet, or that already has one.
    pub fn push(&mut self, mechanism: Arc<dyn Mechanism>) -> Result<()> {
        let site = mechanism.site();
        if site != Site::Xy {
            return Err(Error::Config(format!(
                "mechanism {}: the {site:?} site takes no mechanisms (the gate x ⊙ y does)",
                mechanism.name()
            )));
        }
        if let Some(there) = self.list.iter().find(|m| m.site() == site) {
            return Err(Error::Config(format!(
                "mechanism {}: the {site:?} site already has {}",
                mechanism.name(),
                there.name()
            )));
        }
        self.list.push(mechanism);
        Ok(())
    }

    /// An error unless the model can be saved as it computes: a mechanism attached
    /// in code is not named by any config field, so a checkpoint would lose it.
    pub(crate) fn check_savable(&self) -> Result<()> {
        match self.list.first() {
            None => Ok(()),
            Some(m) => Err(Error::Config(format!(
                "the model has the mechanism {} attached in code, which no config field names; a checkpoint of \
                 it would compute something else",
                m.name()
            ))),
        }
    }

    /// Whether no mechanism is attached (bdh.py's layer).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether a mechanism acts at `site`.
    pub(crate) fn any(&self, site: Site) -> bool {
        self.list.iter().any(|m| m.site() == site)
    }

    /// The mechanism at `site`, if any.
    fn at(&self, site: Site) -> Option<&dyn Mechanism> {
        self.list.iter().find(|m| m.site() == site).map(|m| &**m)
    }

    /// Applies the mechanism of `site` to `buf`, (rows, heads, T, N) as `r` places it.
    pub(crate) fn forward(&self, site: Site, layer: usize, buf: &mut [f32], r: Region) {
        if let Some(m) = self.at(site) {
            for_each_token(buf, r, |act, head, pos| m.forward(act, At { layer, head, pos }));
        }
    }

    /// The gate site of the parallel form: `z = dropout(f(x ⊙ y))` (B, H, T, N), f its
    /// mechanism; dropout after f, so that training and inference map the same
    /// values. Without a mechanism, the fused kernel: `z = x ⊙ y ⊙ keep`.
    pub(crate) fn gate(&self, z: &mut [f32], x: &[f32], y: &[f32], keep: &[f32], layer: usize, r: Region) {
        let Some(m) = self.at(Site::Xy) else { return gated_product(z, x, y, keep) };
        gated_product(z, x, y, &[]);
        for_each_token(z, r, |act, head, pos| m.forward(act, At { layer, head, pos }));
        z.iter_mut().zip(keep).for_each(|(z, &k)| *z *= k);
    }

    /// The gradient through [`Mechanisms::gate`]: `g` holds d loss / dz and becomes
    /// d loss / dx (before x's own ReLU), `dy` d loss / d y's latent; `z` is left
    /// holding the forward's z, for the decoder's gradient.
    pub(crate) fn gate_backward(
        &self,
        g: &mut [f32],
        dy: &mut [f32],
        z: &mut [f32],
        (x, y, keep): (&[f32], &[f32], &[f32]),
        layer: usize,
        r: Region,
    ) {
        let Some(m) = self.at(Site::Xy) else {
            gated_product(z, x, y, keep);
            return gated_product_backward(g, dy, x, y, keep);
        };
        // z = dropout(f(x ⊙ y))  ⇒  d f = dz ⊙ keep, d(x ⊙ y) = f'(x ⊙ y) d f
        gated_product(z, x, y, &[]);
        g.iter_mut().zip(keep).for_each(|(g, &k)| *g *= k);
        let mut token = 0;
        for_each_token(g, r, |g, head, pos| {
            m.backward(g, &z[token * r.n..(token + 1) * r.n], At { layer, head, pos });
            token += 1;
        });
        gated_product_backward(g, dy, x, y, &[]);
        for_each_token(z, r, |act, head, pos| m.forward(act, At { layer, head, pos }));
        z.iter_mut().zip(keep).for_each(|(z, &k)| *z *= k);
    }
}

/// Runs `f(act, head, pos)` on every token's N values of `buf`, (rows, heads, T, N).
fn for_each_token(buf: &mut [f32], r: Region, mut f: impl FnMut(&mut [f32], usize, usize)) {
    debug_assert_eq!(r.width, 1, "a token-local site holds one value per neuron");
    for (i, act) in buf.chunks_exact_mut(r.n).enumerate() {
        let (head, t) = ((i / r.t) % r.heads, i % r.t);
        f(act, r.head0 + head, r.pos0 + t);
    }
}
