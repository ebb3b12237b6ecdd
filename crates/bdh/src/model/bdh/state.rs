//! A running sequence's state: its position, ρ of each layer and the per-stream
//! state of the layer's mechanisms (the write key's traces, the delayed writes), as
//! plain data — clone it to fork a sequence, save and restore it. The recurrent step
//! ([`super::recurrent`]) and the parallel passes that carry a state
//! ([`super::forward`]) both read and write it.

use super::delay::Queue;
use super::key::KeySite;
use super::rho::{Rho, StateDtype};
use super::BdhConfig;
use crate::error::{Error, Result};
use crate::model::zeroed;

/// Everything a running sequence remembers: its position, ρ of each layer and the
/// per-stream state of the layer's mechanisms (the write key's traces). A state of
/// B rows (for a batch of streams that advance together, as training with a carried
/// state reads them) holds (L, B, H, N, D); one sequence is B = 1.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Tokens consumed so far (the position of the next one).
    pub pos: usize,
    /// ρ per layer, row and head, (L, B, H, N, D): `Σ_τ R_τ x_τ ⊗ v_τ`, in f32 or
    /// in 16 bits ([`StateDtype`]).
    pub rho: Rho,
    /// The write key's traces per layer, row and head, (L, B, H, W) with W
    /// [`KeySite::width`] (empty for bdh.py's key).
    pub keys: Vec<f32>,
    /// The delayed writes not yet due per layer, row and head, (L, B, H, W) with W
    /// [`Queue::width`] (empty without delays).
    pub queue: Vec<f32>,
}

impl State {
    /// The empty state of a sequence that has seen nothing.
    pub fn new(cfg: &BdhConfig) -> Result<Self> {
        Self::make(cfg, 1, StateDtype::F32, "the state ρ of a sequence")
    }

    /// The empty state of a sequence with ρ stored as `dtype`.
    pub fn with_dtype(cfg: &BdhConfig, dtype: StateDtype) -> Result<Self> {
        Self::make(cfg, 1, dtype, "the state ρ of a sequence")
    }

    /// The empty state of `rows` streams read side by side.
    pub fn rows(cfg: &BdhConfig, rows: usize) -> Result<Self> {
        Self::make(cfg, rows, StateDtype::F32, "the state ρ of a batch of streams")
    }

    fn make(cfg: &BdhConfig, rows: usize, dtype: StateDtype, what: &str) -> Result<Self> {
        crate::memory::ensure_fits(Self::bytes_of(cfg, rows, dtype), what)?;
        let values = (Self::shape(cfg).iter().try_fold(rows, |p, &x| p.checked_mul(x)))
            .ok_or_else(|| Error::Input(format!("{what}: more values than this machine can count")))?;
        let rho = Rho::zeros(values, dtype)?;
        let keys = zeroed(&[rows, cfg.n_layer, cfg.n_head, KeySite::width(cfg)])?;
        let queue = zeroed(&[rows, cfg.n_layer, cfg.n_head, Queue::width(cfg)])?;
        crate::infer::count_state();
        Ok(State { pos: 0, rho, keys, queue })
    }

    /// Bytes of `rows` streams' state of `cfg` with ρ as `dtype` — ρ, the key's
    /// traces, the queued writes (in f32) — or `usize::MAX` past it.
    pub(crate) fn bytes_of(cfg: &BdhConfig, rows: usize, dtype: StateDtype) -> usize {
        let per_head = (cfg.n_neurons().checked_mul(cfg.n_embd)).and_then(|rho| {
            rho.checked_mul(dtype.bytes())?.checked_add(4 * KeySite::width(cfg))?.checked_add(4 * Queue::width(cfg))
        });
        per_head
            .and_then(|b| b.checked_mul(cfg.n_head)?.checked_mul(cfg.n_layer)?.checked_mul(rows))
            .unwrap_or(usize::MAX)
    }

    /// The shape of one sequence's ρ for `cfg`: (L, H, N, D).
    pub fn shape(cfg: &BdhConfig) -> [usize; 4] {
        [cfg.n_layer, cfg.n_head, cfg.n_neurons(), cfg.n_embd]
    }

    /// Checks that this state holds `rows` streams of a model of config `cfg`.
    pub fn check_rows(&self, cfg: &BdhConfig, rows: usize) -> Result<()> {
        let one: usize = Self::shape(cfg).iter().product();
        if self.rho.len() != one.saturating_mul(rows) {
            return Err(Error::Mismatch(format!(
                "a state of {} values is not ρ {:?} for {rows} stream(s)",
                self.rho.len(),
                Self::shape(cfg)
            )));
        }
        let keys = (cfg.n_layer * cfg.n_head * KeySite::width(cfg)).saturating_mul(rows);
        if self.keys.len() != keys {
            return Err(Error::Mismatch(format!(
                "a state with {} values of the write key's traces, not the {keys} of this model's",
                self.keys.len()
            )));
        }
        let queue = (cfg.n_layer * cfg.n_head).saturating_mul(Queue::width(cfg)).saturating_mul(rows);
        if self.queue.len() != queue {
            return Err(Error::Mismatch(format!(
                "a state with {} values of delayed writes, not the {queue} of this model's",
                self.queue.len()
            )));
        }
        Ok(())
    }

    /// ρ of layer `l` for streams `rows` of a state of several, (rows, H, N, D), the
    /// write key's traces of the same, (rows, H, W), and their delayed writes,
    /// (rows, H, W'). (`cfg` is the model's, which [`State::check_rows`] has checked.)
    /// ρ in f32 only: the parallel passes read and write it so (a 16-bit state is
    /// widened around them, [`super::forward::forward`]).
    pub(crate) fn layer_rows(
        &mut self,
        cfg: &BdhConfig,
        l: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<LayerState<'_>> {
        let [layers, h, n, d] = Self::shape(cfg);
        let (rl, kl, ql) = (self.rho.len() / layers, self.keys.len() / layers, self.queue.len() / layers);
        let (rw, kw, qw) = (h * n * d, h * KeySite::width(cfg), h * Queue::width(cfg));
        Ok(LayerState {
            rho: &mut self.rho.f32_mut("the parallel forward")?[l * rl..][rows.start * rw..rows.end * rw],
            keys: &mut self.keys[l * kl..][rows.start * kw..rows.end * kw],
            queue: &mut self.queue[l * ql..][rows.start * qw..rows.end * qw],
        })
    }

    /// The same state with ρ stored as `dtype` (rounded to nearest when narrower).
    pub fn converted(&self, dtype: StateDtype) -> Result<Self> {
        Ok(State { pos: self.pos, rho: self.rho.converted(dtype)?, keys: self.keys.clone(), queue: self.queue.clone() })
    }

    /// Bytes the state occupies.
    pub fn bytes(&self) -> usize {
        self.rho.bytes() + (self.keys.len() + self.queue.len()) * std::mem::size_of::<f32>()
    }

    /// Checks that this state is one stream of a model of config `cfg`.
    pub fn check(&self, cfg: &BdhConfig) -> Result<()> {
        self.check_rows(cfg, 1)
    }
}

/// One layer's part of a state, for some of its streams.
pub(crate) struct LayerState<'a> {
    /// ρ, (B, H, N, D).
    pub rho: &'a mut [f32],
    /// The write key's traces, (B, H, W), or empty.
    pub keys: &'a mut [f32],
    /// The delayed writes, (B, H, W'), or empty.
    pub queue: &'a mut [f32],
}
