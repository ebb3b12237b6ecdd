//! The microscope's forward on a device: the parallel forward with every layer
//! kept, edits applied where the CPU applies them (each edited site read back,
//! edited by the CPU's own code and written again), and what the accessors of
//! the host's `Activations` read brought back into them.

use std::cell::RefCell;

use bdh::model::bdh::{Activations, Dims, Edits, Part, State};
use bdh::{Error, Result};
use cubecl::prelude::Runtime;

use crate::device::Buf;
use crate::forward;
use crate::runner::Runner;

impl<R: Runtime> Runner<R> {
    /// Runs `tokens` into `acts` with `edits`, reading and writing `state` if given.
    pub(crate) fn trace(
        &mut self,
        tokens: &[u32],
        acts: &mut Activations,
        edits: &Edits,
        state: Option<&mut State>,
    ) -> Result<()> {
        let dims = acts.dims;
        if dims != Dims::new(&self.model.config, dims.b, dims.t) {
            return Err(Error::Mismatch("activations made for another model than the device's".into()));
        }
        let pos0 = acts.begin_elsewhere(&self.model, tokens, edits, state.as_deref())?;
        let (b, t) = (dims.b, dims.t);
        // (every layer is kept: the buffers of one layer's pass, L + 1 times over at most)
        let per_layer: u64 = forward::buffers(&dims).iter().map(|&(_, n)| 4 * n as u64).sum();
        let need = per_layer.saturating_mul(dims.l as u64 + 1);
        if let Some(free) = self.dev.free_bytes().filter(|&free| need > free) {
            let what = format!("the microscope's pass of B={b} T={t} on the GPU ({}), every layer kept", self.dev.name);
            return Err(Error::TooLarge { what, need: Some(need), have: Some(free) });
        }
        let rows = self.rows_that_fit(b, t)?;
        if rows < b {
            return Err(Error::TooLarge {
                what: format!("a pass of {b} rows of T={t} on the GPU ({}; {rows} fit)", self.dev.name),
                need: None,
                have: None,
            });
        }
        if self.traced.as_ref().is_none_or(|p| p.dims != dims) {
            self.traced = None; // free the old buffers first
            self.traced = Some(forward::Pass::training(&self.dev, dims, false, false)?);
        }
        let (dev, pass) = (&self.dev, self.traced.as_ref().expect("just made"));
        let tables = forward::Tables::new(dev, &self.model, pos0, t)?;
        let rho: Option<Vec<Buf>> = match &state {
            Some(s) => {
                let per_layer = s.rho.len() / dims.l;
                let layers = s.rho.f32("the GPU backend")?.chunks_exact(per_layer);
                Some(layers.map(|r| dev.upload(r, "ρ of a layer")).collect::<Result<_>>()?)
            }
            None => None,
        };
        let failed: RefCell<Option<Error>> = RefCell::new(None);
        let edit = |site, l, buf: &Buf| {
            if !edits.any(site, l) || failed.borrow().is_some() {
                return;
            }
            let edited = dev.read(buf).and_then(|mut values| {
                edits.apply_whole(site, l, &mut values, dims, pos0);
                dev.write(buf, &values)
            });
            if let Err(e) = edited {
                *failed.borrow_mut() = Some(e);
            }
        };
        let extras = forward::Extras { rho: rho.as_deref(), dropout: None, edit: Some(&edit) };
        forward::forward(dev, &self.weights, pass, &dev.upload_ids(tokens)?, &tables, extras);
        if let Some(e) = failed.take() {
            return Err(e);
        }
        let mut bring = |part: Part, buf: &Buf| -> Result<()> {
            acts.part_mut(part).copy_from_slice(&dev.read(buf)?);
            Ok(())
        };
        bring(Part::Residual(0), pass.residual(0).0)?;
        for l in 0..dims.l {
            let k = pass.layer(l);
            bring(Part::X(l), &k.x)?;
            bring(Part::XRotated(l), &k.xr)?;
            bring(Part::Scores(l), &k.scores)?;
            bring(Part::Y(l), &k.y)?;
            bring(Part::Residual(l + 1), pass.residual(l + 1).0)?;
        }
        bring(Part::Logits, &pass.logits)?;
        if let (Some(state), Some(rho)) = (state, rho) {
            let per_layer = state.rho.len() / dims.l;
            for (host, buf) in state.rho.f32_mut("the GPU backend")?.chunks_exact_mut(per_layer).zip(&rho) {
                host.copy_from_slice(&dev.read(buf)?);
            }
            state.pos += t;
        }
        Ok(())
    }
}
