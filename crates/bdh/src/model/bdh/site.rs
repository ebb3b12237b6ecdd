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

    /// Whether a mechanism acts at `site`.
    pub(crate) fn any(&self, site: Site) -> bool {
        self.list.iter().any(|m| m.site() == site)
    }

    /// Applies the mechanism of `site` to `buf`, (rows, heads, T, N) as `r` places it.
    pub(crate) fn forward(&self, site: Site, layer: usize, buf: &mut [f32], r: Region) {
        for m in self.list.iter().filter(|m| m.site() == site) {
            for_each_token(buf, r, |act, head, pos| m.forward(act, At { layer, head, pos }));
        }
    }

    /// The gradient through [`Mechanisms::forward`]: `grad` and `input` are
    /// (rows, heads, T, N) as `r` places them.
    pub(crate) fn backward(&self, site: Site, layer: usize, grad: &mut [f32], input: &[f32], r: Region) {
        for m in self.list.iter().filter(|m| m.site() == site) {
            let n = r.n;
            let mut token = 0;
            for_each_token(grad, r, |g, head, pos| {
                m.backward(g, &input[token * n..(token + 1) * n], At { layer, head, pos });
                token += 1;
            });
        }
    }
}

/// Runs `f(act, head, pos)` on every token's N values of `buf`, (rows, heads, T, N).
fn for_each_token(buf: &mut [f32], r: Region, mut f: impl FnMut(&mut [f32], usize, usize)) {
    for (i, act) in buf.chunks_exact_mut(r.n).enumerate() {
        let (head, t) = ((i / r.t) % r.heads, i % r.t);
        f(act, r.head0 + head, r.pos0 + t);
    }
}
