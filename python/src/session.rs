//! A sequence's recurrent state (ρ for BDH, the KV cache for the GPT): stepped a
//! token at a time, generated from, saved in the library's one state format (the
//! files of `bdh generate --save-state`), loaded and forked.

use std::ops::ControlFlow;
use std::path::PathBuf;

use engine::infer::{Generation, Sampler, SamplingConfig, State};
use engine::io::state;
use engine::model::bdh::StateDtype;
use numpy::PyArrayDyn;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::model::{array, edits_of, Engine};
use crate::{lib_err, py_err};

/// One sequence's state, bound to the model it belongs to.
#[pyclass(module = "bdh._bdh")]
pub struct Session {
    model: Py<Engine>,
    state: State,
}

#[pymethods]
impl Session {
    /// The empty state of a new sequence of `model` with ρ stored as `dtype` (f32 if
    /// not given), or the state saved at `path`, converted to `dtype` if given.
    #[new]
    #[pyo3(signature = (model, path=None, dtype=None))]
    fn new(py: Python<'_>, model: Py<Engine>, path: Option<PathBuf>, dtype: Option<&str>) -> PyResult<Self> {
        let dtype: Option<StateDtype> = dtype.map(str::parse).transpose().map_err(lib_err)?;
        let engine = model.get();
        let prepared = engine.prepared(py)?;
        let state = py
            .detach(|| -> anyhow::Result<State> {
                Ok(match &path {
                    Some(p) => {
                        state::supported(prepared)?;
                        use anyhow::Context;
                        let loaded = state::load_in(prepared, p, dtype);
                        loaded.with_context(|| format!("loading state {}", p.display()))?.0
                    }
                    None => prepared.state_of(dtype.unwrap_or_default())?,
                })
            })
            .map_err(py_err)?;
        Ok(Session { model, state })
    }

    /// Tokens read so far (the position of the next one).
    #[getter]
    fn pos(&self) -> usize {
        self.state.pos()
    }

    /// How ρ is stored: "f32", "bf16" or "f16".
    #[getter]
    fn dtype(&self) -> String {
        self.state.dtype().to_string()
    }

    /// Bytes the state occupies.
    #[getter]
    fn nbytes(&self) -> usize {
        self.state.bytes()
    }

    /// A copy of the synapse state ρ, (L, H, N, D): Σ_τ R_τ x_τ ⊗ v_τ per layer and head.
    #[getter]
    fn rho<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        match (&self.state, &self.model.get().model) {
            (State::Bdh(s), engine::Model::Bdh(m)) => {
                let c = &m.config;
                array(py, &[c.n_layer, c.n_head, c.n_neurons(), c.n_embd], s.rho.to_f32().map_err(lib_err)?)
            }
            _ => Err(PyValueError::new_err("a GPT's state is its KV cache: it has no synapse state ρ")),
        }
    }

    /// An independent copy: both continue from here.
    fn fork(&self, py: Python<'_>) -> Session {
        Session { model: self.model.clone_ref(py), state: self.state.clone() }
    }

    /// Saves the state to `path` (atomically), readable by `bdh generate --load-state`.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let prepared = self.model.get().prepared(py)?;
        py.detach(|| -> anyhow::Result<()> {
            state::supported(prepared)?;
            use anyhow::Context;
            state::save(prepared, &self.state, &path).with_context(|| format!("saving state {}", path.display()))
        })
        .map_err(py_err)
    }

    /// Reads `tokens` after what the state holds (in chunks, as a prompt is read) with
    /// `edits` (JSON); the logits after the last one, (V,).
    fn prefill<'py>(
        &mut self,
        py: Python<'py>,
        tokens: Vec<u32>,
        edits: &str,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let engine = self.model.get();
        let edits = edits_of(edits, Vec::new(), &engine.model)?;
        let prepared = engine.prepared(py)?;
        let vocab = engine.model.config().vocab_size();
        engine::model::check_tokens(&tokens, vocab, "prefill").map_err(lib_err)?;
        if tokens.is_empty() {
            return Err(PyValueError::new_err("prefill: no tokens"));
        }
        let state = &mut self.state;
        let logits = py
            .detach(|| prepared.prefill(state, &mut prepared.scratch(), &tokens, &edits).map(<[f32]>::to_vec))
            .map_err(lib_err)?;
        array(py, &[vocab], logits)
    }

    /// Reads one token with `edits` (JSON); the logits for the next, (V,).
    fn step<'py>(&mut self, py: Python<'py>, token: u32, edits: &str) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let engine = self.model.get();
        let edits = edits_of(edits, Vec::new(), &engine.model)?;
        let prepared = engine.prepared(py)?;
        prepared.check_step(&self.state, token).map_err(lib_err)?;
        let state = &mut self.state;
        let logits = py
            .detach(|| prepared.step(&mut [state], &mut prepared.scratch(), &[token], &edits).map(<[f32]>::to_vec))
            .map_err(lib_err)?;
        array(py, &[logits.len()], logits)
    }

    /// Generates after `prompt` (bytes, read after what the state holds) as `bdh
    /// generate` does with the same options and seed, with `edits` (JSON); the state
    /// then holds the prompt and the generated tokens. Returns the generated bytes,
    /// the generated tokens and the stop string that ended it, if one did. Every
    /// `check_every` tokens Python's signal handlers run (Ctrl-C stops it).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stops, edits))]
    fn generate(
        &mut self,
        py: Python<'_>,
        prompt: &[u8],
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        seed: u64,
        stops: Vec<String>,
        edits: &str,
    ) -> PyResult<(Vec<u8>, Vec<u32>, Option<String>)> {
        let engine = self.model.get();
        let edits = edits_of(edits, Vec::new(), &engine.model)?;
        let prepared = engine.prepared(py)?;
        let mut sampler = Sampler::new(SamplingConfig { temperature, top_k, top_p, min_p, repetition_penalty, seed })
            .map_err(lib_err)?;
        let tokens = engine.tokenizer.encode(prompt);
        let g = Generation { max_tokens, stops, edits, tokenizer: engine.tokenizer.clone() };
        let state = &mut self.state;
        // Ctrl-C: Python's handler runs only with the GIL, taken back every 64 pieces of text.
        let mut interrupted = None;
        let mut pieces = 0usize;
        let out = py
            .detach(|| {
                engine::infer::generate(prepared, state, &mut prepared.scratch(), &tokens, &g, &mut sampler, |_| {
                    pieces += 1;
                    if pieces % 64 == 0 {
                        if let Err(e) = Python::attach(|py| py.check_signals()) {
                            interrupted = Some(e);
                            return ControlFlow::Break(());
                        }
                    }
                    ControlFlow::Continue(())
                })
            })
            .map_err(lib_err)?;
        if let Some(e) = interrupted {
            return Err(e);
        }
        Ok((out.text, out.tokens, out.stats.stopped_by))
    }
}
