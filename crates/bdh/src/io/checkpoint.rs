//! Checkpoints: `model.safetensors` + `config.json` in bdh.py's names and layout,
//! and import of the reference's `torch.save(model.state_dict())` files.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::config::BdhConfig;
use crate::error::{Error, Result};
use crate::params::{Model, Params, FREQS_NAME};
use crate::pt;

/// Element values of a tensor read from a file.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Floating point, widened or kept as f32.
    F32(Vec<f32>),
    /// Integers (token ids), widened to i64.
    I64(Vec<i64>),
}

/// A named tensor read from a safetensors or `.pt` file: shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: TensorData,
}

impl Tensor {
    /// The values as f32, or a [`Error::Shape`] naming `name` if they are integers.
    pub fn f32s(&self, name: &str) -> Result<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Ok(v),
            TensorData::I64(_) => Err(shape_err(name, "floating point values", "integers")),
        }
    }
}

/// Tensors of one file, by name.
pub type TensorMap = BTreeMap<String, Tensor>;

fn shape_err(name: &str, expected: impl ToString, found: impl ToString) -> Error {
    Error::Shape { name: name.into(), expected: expected.to_string(), found: found.to_string() }
}

/// Reads every tensor of a safetensors file (f32, f64, f16, bf16 as f32; i64, i32 as i64).
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let bytes = fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => TensorData::F32(le_values(raw, f32::from_le_bytes)),
            Dtype::F64 => TensorData::F32(le_values(raw, |b| f64::from_le_bytes(b) as f32)),
            Dtype::I64 => TensorData::I64(le_values(raw, i64::from_le_bytes)),
            Dtype::I32 => TensorData::I64(le_values(raw, |b| i32::from_le_bytes(b) as i64)),
            other => return Err(Error::format(path, format!("tensor `{name}` has unsupported dtype {other:?}"))),
        };
        out.insert(name, Tensor { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

/// Decodes little-endian values of `W` bytes each.
pub(crate) fn le_values<T, const W: usize>(raw: &[u8], f: impl Fn([u8; W]) -> T) -> Vec<T> {
    raw.chunks_exact(W).map(|c| f(c.try_into().expect("chunks_exact gives W bytes"))).collect()
}

/// Builds a model from bdh.py-named tensors, checking every name and shape against `config`.
pub fn model_from_tensors(config: BdhConfig, mut tensors: TensorMap, path: &Path) -> Result<Model> {
    config.validate()?;
    let mut params = Params::zeros(&config);
    for (name, dst) in params.tensors_mut() {
        let t = tensors.remove(name).ok_or_else(|| Error::MissingTensor { path: path.into(), name: name.into() })?;
        let expected = Params::shape(&config, name);
        if t.shape != expected {
            return Err(shape_err(name, format!("{expected:?} for this config"), format!("{:?}", t.shape)));
        }
        *dst = t.f32s(name)?.to_vec();
    }
    let n = config.n_neurons();
    let freqs = match tensors.remove(FREQS_NAME) {
        None => crate::rope::freqs(n),
        Some(t) => {
            if t.shape.iter().product::<usize>() != n || t.shape.last() != Some(&n) {
                return Err(shape_err(FREQS_NAME, format!("[1, 1, 1, {n}]"), format!("{:?}", t.shape)));
            }
            let f = t.f32s(FREQS_NAME)?.to_vec();
            if f.chunks_exact(2).any(|p| p[0] != p[1]) {
                return Err(shape_err(FREQS_NAME, "equal values for each RoPE pair (2j, 2j+1)", "unequal pairs"));
            }
            f
        }
    };
    if let Some(extra) = tensors.keys().next() {
        return Err(Error::format(path, format!("unexpected tensor `{extra}`: not a BDH parameter")));
    }
    Ok(Model { config, params, freqs })
}

/// Where a model's weights and config are, resolved from what a user typed.
fn resolve(model: &Path, config: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let weights = if model.is_dir() {
        let st = model.join("model.safetensors");
        let pt = model.join("model.pt");
        if st.exists() {
            st
        } else if pt.exists() {
            pt
        } else {
            return Err(Error::format(model, "directory holds neither model.safetensors nor model.pt"));
        }
    } else {
        model.to_path_buf()
    };
    if !weights.exists() {
        return Err(Error::io("reading", &weights, std::io::ErrorKind::NotFound.into()));
    }
    let config = match config {
        Some(c) => c.to_path_buf(),
        None => weights.with_file_name("config.json"),
    };
    if !config.exists() {
        return Err(Error::format(
            &config,
            format!("no config for {} (give one, or put config.json beside it)", weights.display()),
        ));
    }
    Ok((weights, config))
}

/// Loads a model from a checkpoint directory, a `model.safetensors` or a PyTorch
/// `.pt` state_dict; the config is `config` or the `config.json` beside the weights.
pub fn load(model: &Path, config: Option<&Path>) -> Result<Model> {
    let (weights, config_path) = resolve(model, config)?;
    let cfg = BdhConfig::from_json_file(&config_path)?;
    let tensors = if weights.extension().is_some_and(|e| e == "pt" || e == "pth" || e == "bin") {
        pt::read_state_dict(&weights)?
    } else {
        read_safetensors(&weights)?
    };
    model_from_tensors(cfg, tensors, &weights)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a
/// rename, so a crash never leaves a half-written file in place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))
}

/// Named f32 tensors `(name, shape, values)` as safetensors bytes.
pub fn encode_safetensors(tensors: &[(String, Vec<usize>, &[f32])]) -> Result<Vec<u8>> {
    let encoded: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, data)| data.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), bytes) in tensors.iter().zip(&encoded) {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| Error::Input(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, None).map_err(|e| Error::Input(format!("serialising: {e}")))
}

/// The model's tensors as safetensors bytes, in bdh.py's names and layout.
pub fn to_safetensors(model: &Model) -> Result<Vec<u8>> {
    let cfg = &model.config;
    let named = model.params.tensors().into_iter().chain([(FREQS_NAME, model.freqs.as_slice())]);
    let tensors: Vec<_> = named.map(|(name, data)| (name.to_string(), Params::shape(cfg, name), data)).collect();
    encode_safetensors(&tensors)
}

/// Saves `model` into directory `dir` as `model.safetensors` + `config.json`,
/// each written atomically.
pub fn save(model: &Model, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    write_atomic(&dir.join("model.safetensors"), &to_safetensors(model)?)?;
    let json = serde_json::to_string_pretty(&model.config).expect("config serialises");
    write_atomic(&dir.join("config.json"), json.as_bytes())
}
