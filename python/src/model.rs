//! A loaded model: its config and weights, the parallel forward with or without
//! edits and a cache of the activations, its tokenizer, and the microscope.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use engine::data::Tokenizer;
use engine::infer::Prepared;
use engine::model::bdh::{self, Edit, Edits, Pass, Patch, Site};
use engine::{Mode, Model};
use numpy::ndarray::ArrayD;
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{lib_err, py_err};

/// A model loaded from anything `--model` takes, with its tokenizer.
#[pyclass(module = "bdh._bdh", frozen)]
pub struct Engine {
    pub(crate) model: Model,
    pub(crate) tokenizer: Tokenizer,
    /// Where it was loaded from (the checkpoint or file read).
    #[pyo3(get)]
    pub(crate) source: String,
    /// The model ready for recurrent steps, made when first asked for.
    prepared: OnceLock<Prepared>,
}

impl Engine {
    /// The model ready for recurrent steps (a copy of its weights, made once).
    pub(crate) fn prepared(&self, py: Python<'_>) -> PyResult<&Prepared> {
        if let Some(p) = self.prepared.get() {
            return Ok(p);
        }
        let p = py.detach(|| Prepared::new(self.model.clone())).map_err(lib_err)?;
        Ok(self.prepared.get_or_init(|| p))
    }

    /// The BDH model, or an error naming what `what` needs.
    fn bdh(&self, what: &str) -> PyResult<&bdh::Bdh> {
        match &self.model {
            Model::Bdh(m) => Ok(m),
            other => Err(PyValueError::new_err(format!(
                "{what} reads BDH's neurons and synapses; this model is a {}",
                other.config().describe()
            ))),
        }
    }
}

/// One activation patch as the package passes it: the site (x, y, xy or out), the
/// layer, the head (or all), the neurons (or all), the positions `start..end`, and
/// the source run's values of that layer's site from position 0.
pub(crate) type PatchArg<'py> =
    (String, usize, Option<usize>, Option<Vec<u32>>, usize, usize, PyReadonlyArrayDyn<'py, f32>);

/// Edits from their JSON (a list of the engine's `Edit` values) and activation
/// patches, checked against the model.
pub(crate) fn edits_of(json: &str, patches: Vec<PatchArg<'_>>, model: &Model) -> PyResult<Edits> {
    let list: Vec<Edit> = serde_json::from_str(json).map_err(|e| PyValueError::new_err(format!("edits: {e}")))?;
    let mut edits = Edits::new();
    for e in list {
        edits.push(e);
    }
    for (site, layer, head, neurons, start, end, values) in patches {
        let site = match site.as_str() {
            "x" => Site::X,
            "y" => Site::Y,
            "xy" => Site::Xy,
            "out" => Site::Out,
            other => return Err(PyValueError::new_err(format!("a patch's site is x, y, xy or out, not {other:?}"))),
        };
        if start >= end {
            return Err(PyValueError::new_err(format!("a patch's positions {start}..{end} are empty")));
        }
        let values = values.as_slice().map_err(|e| PyValueError::new_err(format!("a patch's values: {e}")))?.to_vec();
        edits.patch(Patch { site, layer, head, neurons, positions: start..end, values: Arc::new(values) });
    }
    if !edits.is_empty() {
        match model {
            Model::Bdh(m) => edits.validate(&m.config).map_err(lib_err)?,
            other => {
                return Err(PyValueError::new_err(format!(
                    "edits act on BDH's neurons and synapses; this model is a {}",
                    other.config().describe()
                )))
            }
        }
    }
    Ok(edits)
}

/// Token ids from a (B, T) array, checked against the vocabulary.
fn tokens_of(tokens: &PyReadonlyArray2<'_, i64>, vocab: usize) -> PyResult<(Vec<u32>, usize, usize)> {
    let shape = tokens.shape();
    let (b, t) = (shape[0], shape[1]);
    if b == 0 || t == 0 {
        return Err(PyValueError::new_err("the tokens are empty"));
    }
    let ids = tokens
        .as_array()
        .iter()
        .map(|&v| u32::try_from(v).ok().filter(|&u| (u as usize) < vocab))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| PyValueError::new_err(format!("a token outside the vocabulary 0..{vocab}")))?;
    Ok((ids, b, t))
}

/// `values` (row-major, `shape`) as a NumPy array the caller owns.
pub(crate) fn array<'py>(py: Python<'py>, shape: &[usize], values: Vec<f32>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let a = ArrayD::from_shape_vec(shape.to_vec(), values).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

#[pymethods]
impl Engine {
    /// Loads `path` (a run directory, a checkpoint directory, a model.safetensors or
    /// a PyTorch .pt; `config`: the bdh.py config JSON if not beside the weights) and
    /// its tokenizer (`tokenizer`, else the run's or checkpoint's, else bytes).
    #[new]
    #[pyo3(signature = (path, config=None, tokenizer=None))]
    fn new(py: Python<'_>, path: PathBuf, config: Option<PathBuf>, tokenizer: Option<PathBuf>) -> PyResult<Self> {
        py.detach(|| {
            let (source, model) = bdh_cli::model_args::load(&path, config.as_deref())?;
            let args = bdh_cli::model_args::ModelArgs { model: path.clone(), config: config.clone() };
            let tokenizer = args.tokenizer(tokenizer.as_deref(), &model.config())?;
            Ok(Engine { model, tokenizer, source: source.display().to_string(), prepared: OnceLock::new() })
        })
        .map_err(py_err)
    }

    /// The config as JSON (bdh.py's keys for BDH, nanoGPT's for the GPT).
    fn config_json(&self) -> String {
        self.model.config().to_json()
    }

    /// A one-line description, e.g. `BDH L2 D128 H2 N1024`.
    fn describe(&self) -> String {
        self.model.config().describe()
    }

    /// Every trained tensor by name, as in the reference's state_dict: copies.
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (slot, values) in self.model.params().tensors() {
            out.set_item(&slot.name, array(py, &slot.shape, values.to_vec())?)?;
        }
        Ok(out)
    }

    /// The model's tokenizer on `text`'s bytes.
    fn encode(&self, text: &[u8]) -> Vec<u32> {
        self.tokenizer.encode(text)
    }

    /// The bytes of `tokens` (any id outside the vocabulary refused).
    fn decode(&self, tokens: Vec<u32>) -> PyResult<Vec<u8>> {
        engine::model::check_tokens(&tokens, self.model.config().vocab_size(), "decode").map_err(lib_err)?;
        Ok(self.tokenizer.decode(&tokens))
    }

    /// The vocabulary's size.
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size()
    }

    /// Logits (B, T, V) of the parallel forward on tokens (B, T), with `edits` (JSON).
    fn forward<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, i64>,
        edits: &str,
        patches: Vec<PatchArg<'py>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (ids, b, t) = tokens_of(&tokens, self.vocab_size())?;
        let edits = edits_of(edits, patches, &self.model)?;
        let logits = py.detach(|| self.run(&ids, b, t, &edits).map(|a| a.logits().to_vec())).map_err(lib_err)?;
        array(py, &[b, t, self.vocab_size()], logits)
    }

    /// The mean cross-entropy of the forward on tokens (B, T) against targets (B, T),
    /// with `edits` (JSON).
    fn loss<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, i64>,
        targets: PyReadonlyArray2<'py, i64>,
        edits: &str,
        patches: Vec<PatchArg<'py>>,
    ) -> PyResult<f32> {
        let vocab = self.vocab_size();
        let (ids, b, t) = tokens_of(&tokens, vocab)?;
        let (want, tb, tt) = tokens_of(&targets, vocab)?;
        if (tb, tt) != (b, t) {
            return Err(PyValueError::new_err(format!("targets are ({tb}, {tt}), the tokens ({b}, {t})")));
        }
        let edits = edits_of(edits, patches, &self.model)?;
        py.detach(|| engine::loss(&self.run(&ids, b, t, &edits)?, &want)).map_err(lib_err)
    }

    /// The forward on one sequence (T tokens) with `edits` (JSON), keeping the
    /// activations: logits (T, V) and a dict of the `sites` asked for — `x`, `y`,
    /// `xy` (L, H, T, N), `attn` (the normalised attention reads, L, H, T, D),
    /// `out` (each layer's output, L, T, D), `embed` (the residual entering layer 0,
    /// T, D), `rho` (the synapse state after the text, L, H, N, D). All copies.
    fn run_with_cache<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, i64>,
        sites: Vec<String>,
        edits: &str,
        patches: Vec<PatchArg<'py>>,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyDict>)> {
        let m = self.bdh("run_with_cache")?;
        let (ids, b, t) = tokens_of(&tokens, self.vocab_size())?;
        if b != 1 {
            return Err(PyValueError::new_err("run_with_cache reads one sequence"));
        }
        const SITES: [&str; 7] = ["x", "y", "xy", "attn", "out", "embed", "rho"];
        if let Some(bad) = sites.iter().find(|s| !SITES.contains(&s.as_str())) {
            return Err(PyValueError::new_err(format!("no site {bad:?}: the sites are {}", SITES.join(", "))));
        }
        let edits = edits_of(edits, patches, &self.model)?;
        let c = &m.config;
        let (l, h, n, d) = (c.n_layer, c.n_head, c.n_neurons(), c.n_embd);
        let cached = py
            .detach(|| -> engine::Result<_> {
                let mut acts = bdh::Activations::new(m, 1, t)?;
                if sites.iter().any(|s| s == "xy") {
                    acts.keep_gated()?;
                }
                let mut state = if sites.iter().any(|s| s == "rho") { Some(bdh::State::new(c)?) } else { None };
                bdh::forward(m, &ids, &mut acts, Pass { mode: Mode::Eval, edits: &edits, state: state.as_mut() })?;
                let mut out = Vec::new();
                for site in &sites {
                    // every layer's buffer of one site, one after another
                    let layers = |of: fn(&bdh::Activations, usize) -> &[f32]| {
                        (0..l).flat_map(|i| of(&acts, i).to_vec()).collect::<Vec<_>>()
                    };
                    let (shape, values) = match site.as_str() {
                        "x" => (vec![l, h, t, n], layers(bdh::Activations::x)),
                        "y" => (vec![l, h, t, n], layers(bdh::Activations::y)),
                        "xy" => (vec![l, h, t, n], layers(|a, i| a.gated(i).unwrap_or_default())),
                        "attn" => (vec![l, h, t, d], layers(bdh::Activations::attention_read)),
                        "out" => (vec![l, t, d], layers(|a, i| a.residual(i + 1))),
                        "embed" => (vec![t, d], acts.residual(0).to_vec()),
                        _ => {
                            (vec![l, h, n, d], state.as_ref().map(|s| s.rho.to_f32()).transpose()?.unwrap_or_default())
                        }
                    };
                    out.push((site.clone(), shape, values));
                }
                Ok((acts.logits.clone(), out))
            })
            .map_err(lib_err)?;
        let (logits, sites) = cached;
        let dict = PyDict::new(py);
        for (name, shape, values) in sites {
            dict.set_item(name, array(py, &shape, values)?)?;
        }
        Ok((array(py, &[t, c.vocab_size], logits)?, dict))
    }

    /// Logits (T, V) of one sequence read by recurrent steps, with `edits` (JSON):
    /// the form that edits of ρ need.
    fn run_stepped<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<u32>,
        edits: &str,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let vocab = self.vocab_size();
        engine::model::check_tokens(&tokens, vocab, "the tokens").map_err(lib_err)?;
        if tokens.is_empty() {
            return Err(PyValueError::new_err("the tokens are empty"));
        }
        let edits = edits_of(edits, Vec::new(), &self.model)?;
        let prepared = self.prepared(py)?;
        let logits = py
            .detach(|| -> engine::Result<Vec<f32>> {
                let (mut state, mut scratch) = (prepared.state()?, prepared.scratch());
                let values = tokens.len().checked_mul(vocab);
                engine::memory::ensure_fits(engine::memory::f32_bytes(values), "the logits of every position")?;
                let mut logits = Vec::with_capacity(tokens.len() * vocab);
                for &token in &tokens {
                    logits.extend_from_slice(prepared.step(&mut [&mut state], &mut scratch, &[token], &edits)?);
                }
                Ok(logits)
            })
            .map_err(lib_err)?;
        array(py, &[tokens.len(), vocab], logits)
    }

    /// Checks `edits` (JSON) against the model, as every call that takes them does.
    fn check_edits(&self, edits: &str) -> PyResult<()> {
        edits_of(edits, Vec::new(), &self.model).map(|_| ())
    }

    /// `bdh inspect ARGV…` on this model: its JSON as a string.
    fn inspect(&self, py: Python<'_>, argv: Vec<String>) -> PyResult<String> {
        py.detach(|| bdh_cli::inspect::json(&argv, Some((&self.model, &self.source))))
            .map(|v| v.to_string())
            .map_err(py_err)
    }
}

impl Engine {
    /// The parallel forward on `ids` (B, T) with `edits` (BDH's x, y, x⊙y and layer
    /// outputs; none for a GPT).
    fn run(&self, ids: &[u32], b: usize, t: usize, edits: &Edits) -> engine::Result<engine::Activations> {
        let mut acts = engine::Activations::new(&self.model, b, t)?;
        match (&self.model, &mut acts) {
            (Model::Bdh(m), engine::Activations::Bdh(a)) => {
                bdh::forward(m, ids, a, Pass { mode: Mode::Eval, edits, state: None })?
            }
            _ => engine::forward(&self.model, ids, &mut acts, Mode::Eval)?,
        }
        Ok(acts)
    }
}

/// Whether `edits` (JSON) edit ρ, which only the recurrent steps hold.
#[pyfunction]
pub fn edits_touch_rho(edits: &str) -> PyResult<bool> {
    let list: Vec<Edit> = serde_json::from_str(edits).map_err(|e| PyValueError::new_err(format!("edits: {e}")))?;
    Ok(list.iter().any(|e| e.site == Site::Rho))
}
