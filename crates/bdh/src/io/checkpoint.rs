//! Checkpoints: a directory with `model.safetensors` (the reference's names and
//! layout) and `config.json`; import of the reference's `torch.save(state_dict)`
//! files; directories swapped into place whole.

use std::fs;
use std::path::{Path, PathBuf};

use super::run_dir::RunDir;
use super::{encode_safetensors, fault_point, owned, read_safetensors, shape_err, write_atomic, TensorMap};
use crate::data::TOKENIZER_FILE;
use crate::error::{Error, Result};
use crate::model::bdh::{Bdh, BdhConfig, FREQS_NAME};
use crate::model::gpt::params::{LM_HEAD, WTE};
use crate::model::gpt::{Gpt, GptConfig};
use crate::model::{Model, ModelConfig};
use crate::params::Params;

/// Builds a model from tensors named as the reference names them, checking every
/// name and shape against `config`.
pub fn model_from_tensors(config: ModelConfig, mut tensors: TensorMap, path: &Path) -> Result<Model> {
    config.validate()?;
    // Weights of one family with the config of the other: say so, not "missing tensor".
    let (bdh_weights, gpt_weights) = (tensors.contains_key("encoder"), tensors.contains_key(WTE));
    let mismatch = match &config {
        ModelConfig::Bdh(_) if gpt_weights && !bdh_weights => Some(("a GPT", "BDH")),
        ModelConfig::Gpt(_) if bdh_weights && !gpt_weights => Some(("a BDH model", "GPT")),
        _ => None,
    };
    if let Some((weights, config)) = mismatch {
        return Err(Error::format(
            path,
            format!("these are the weights of {weights}, but the config describes a {config}"),
        ));
    }
    let model = match config {
        ModelConfig::Bdh(c) => {
            let params = fill(crate::model::bdh::params::zeros(&c)?, &mut tensors, path)?;
            let freqs = bdh_freqs(&c, &mut tensors)?;
            Model::Bdh(Bdh::from_parts(c, params, freqs)?)
        }
        ModelConfig::Gpt(c) => {
            gpt_extras(&c, &mut tensors, path)?;
            let params = fill(crate::model::gpt::params::zeros(&c)?, &mut tensors, path)?;
            Model::Gpt(Gpt::from_parts(c, params)?)
        }
    };
    if let Some(extra) = tensors.keys().next() {
        return Err(Error::format(path, format!("unexpected tensor `{extra}`: not a parameter of this model")));
    }
    Ok(model)
}

/// Removes what a nanoGPT `state_dict` holds besides the trained tensors: the
/// output head, tied to the token embedding (it must equal it), and the causal
/// masks (`attn.bias` buffers) that older PyTorch versions keep.
fn gpt_extras(c: &GptConfig, tensors: &mut TensorMap, path: &Path) -> Result<()> {
    for i in 0..c.n_layer {
        let mask = format!("transformer.h.{i}.attn.bias");
        if let Some(t) = tensors.get(&mask) {
            if t.shape.len() == 4 && t.shape[..2] == [1, 1] {
                tensors.remove(&mask);
            }
        }
    }
    if let Some(head) = tensors.remove(LM_HEAD) {
        let wte = tensors.get(WTE).ok_or_else(|| Error::MissingTensor { path: path.into(), name: WTE.into() })?;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if head.shape != wte.shape || bits(head.f32s(LM_HEAD)?) != bits(wte.f32s(WTE)?) {
            return Err(Error::format(
                path,
                format!("`{LM_HEAD}` differs from `{WTE}`: this engine's GPT ties the output head to the embedding"),
            ));
        }
    }
    Ok(())
}

/// Fills every slot of `params` from the tensor of its name and shape.
fn fill(mut params: Params, tensors: &mut TensorMap, path: &Path) -> Result<Params> {
    let slots = params.slots().to_vec();
    for slot in slots {
        let name = slot.name.as_str();
        let t = tensors.remove(name).ok_or_else(|| Error::MissingTensor { path: path.into(), name: name.into() })?;
        if t.shape != slot.shape {
            return Err(shape_err(name, format!("{:?} for this config", slot.shape), format!("{:?}", t.shape)));
        }
        let values = t.f32s(name)?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::format(path, format!("tensor `{name}` holds NaN or infinite values (a diverged run?)")));
        }
        params.data_mut()[slot.range].copy_from_slice(values);
    }
    Ok(params)
}

/// BDH's `attn.freqs` buffer if the file has it (checked), else computed as bdh.py does.
fn bdh_freqs(c: &BdhConfig, tensors: &mut TensorMap) -> Result<Vec<f32>> {
    let n = c.n_neurons();
    let Some(t) = tensors.remove(FREQS_NAME) else { return Ok(c.position.freqs(n)) };
    if t.shape.iter().product::<usize>() != n || t.shape.last() != Some(&n) {
        return Err(shape_err(FREQS_NAME, format!("[1, 1, 1, {n}]"), format!("{:?}", t.shape)));
    }
    let f = t.f32s(FREQS_NAME)?.to_vec();
    if f.chunks_exact(2).any(|p| p[0] != p[1]) {
        return Err(shape_err(FREQS_NAME, "equal values for each RoPE pair (2j, 2j+1)", "unequal pairs"));
    }
    Ok(f)
}

/// The weights file of a checkpoint directory.
pub(crate) const WEIGHTS_FILE: &str = "model.safetensors";

/// Where a model's weights and config are, resolved from what a user typed.
fn resolve(model: &Path, config: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let weights = if model.is_dir() {
        let st = model.join(WEIGHTS_FILE);
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
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory");
        return Err(Error::io("reading", &weights, missing));
    }
    let named = weights.extension().and_then(|e| e.to_str()).is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e));
    if !named && sniff(&weights).is_none() {
        return Err(Error::format(
            &weights,
            "not a model: expected a run directory, a checkpoint directory, a .safetensors file or a PyTorch .pt file",
        ));
    }
    let (config, given) = match config {
        Some(c) => (c.to_path_buf(), true),
        None => (weights.with_file_name("config.json"), false),
    };
    if !config.exists() {
        // (a missing file, of the kind a caller can tell apart from a bad one)
        let why = if given {
            "no such file or directory".to_string()
        } else {
            format!("no config for {} (give one, or put config.json beside it)", weights.display())
        };
        return Err(Error::io("reading", &config, std::io::Error::new(std::io::ErrorKind::NotFound, why)));
    }
    Ok((weights, config))
}

/// Extensions of weight files; their parsers say precisely what is wrong with one.
const WEIGHT_EXTENSIONS: [&str; 4] = ["safetensors", "pt", "pth", "bin"];

/// A weights file's format, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// An 8-byte little-endian header length that fits the file, then `{`.
    Safetensors,
    /// A zip archive, as `torch.save` writes.
    PyTorch,
}

/// The format `path`'s first bytes announce, if any.
fn sniff(path: &Path) -> Option<Format> {
    use std::io::Read;
    let mut head = [0u8; 9];
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.read_exact(&mut head).ok()?;
    let header = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    if head[8] == b'{' && header <= len.saturating_sub(8) {
        Some(Format::Safetensors)
    } else if head.starts_with(b"PK\x03\x04") {
        Some(Format::PyTorch)
    } else {
        None
    }
}

/// Loads a model from a checkpoint directory, a `model.safetensors` or a PyTorch
/// `.pt` state_dict; the config is `config` or the `config.json` beside the weights.
pub fn load(model: &Path, config: Option<&Path>) -> Result<Model> {
    let (weights, config_path) = resolve(model, config)?;
    let cfg = ModelConfig::from_json_file(&config_path)?;
    load_weights(cfg, &weights)
}

/// The config of the model [`load`] would load, without reading its weights.
pub fn load_config(model: &Path, config: Option<&Path>) -> Result<ModelConfig> {
    ModelConfig::from_json_file(&resolve(model, config)?.1)
}

/// The weights file `weights` read as a model of config `cfg`.
fn load_weights(cfg: ModelConfig, weights: &Path) -> Result<Model> {
    let weights = weights.to_path_buf();
    let pytorch = match weights.extension().and_then(|e| e.to_str()) {
        Some(e) if WEIGHT_EXTENSIONS.contains(&e) => e != "safetensors",
        _ => sniff(&weights) != Some(Format::Safetensors),
    };
    let tensors = if pytorch { super::read_state_dict(&weights)? } else { read_safetensors(&weights)? };
    model_from_tensors(cfg, tensors, &weights)
}

/// The model's tensors as safetensors bytes, in the reference's names and layout.
pub fn to_safetensors(model: &Model) -> Result<Vec<u8>> {
    if let Model::Bdh(m) = model {
        // A checkpoint's config must say what the model computes.
        m.mechanisms.check_savable()?;
    }
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> =
        model.params().tensors().map(|(s, data)| (s.name.clone(), s.shape.clone(), data)).collect();
    match model {
        Model::Bdh(m) => tensors.push((FREQS_NAME.into(), vec![1, 1, 1, m.freqs.len()], &m.freqs)),
        Model::Gpt(_) => {} // the tied head is `transformer.wte.weight`, held once
    }
    encode_safetensors(&tensors)
}

/// Saves `model` into directory `dir` as `model.safetensors` + `config.json`,
/// each written atomically.
pub fn save(model: &Model, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &to_safetensors(model)?)?;
    write_atomic(&dir.join("config.json"), model.config().to_json().as_bytes())
}

/// Replaces the checkpoint directory `dir` so that at every instant `dir` is a whole
/// checkpoint, the old or the new: the files are written into a fresh versioned
/// directory beside it (`<dir>.<n>`), then `dir` — a symbolic link to the current
/// version — is switched to it by renaming a new link over it (one atomic rename),
/// and older versions are removed. A crash at any point leaves `dir` pointing at a
/// complete checkpoint (or, for a first checkpoint, no `dir` at all).
///
/// Only versions this function made (marked so, see [`is_replaceable`]) are ever
/// removed: a folder that merely has a version's name stays, and a `dir` that is not
/// a link (a folder or a file of someone else's) is refused before anything is written.
pub fn replace_dir(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::format(dir, "not a directory name"))?;
    if fs::symlink_metadata(dir).is_ok_and(|m| !m.file_type().is_symlink()) {
        return Err(Error::Refused(format!(
            "{} exists and is not a checkpoint written here (those are links to a version beside them);              move it away or write elsewhere",
            dir.display()
        )));
    }
    let next = versions(parent, name)?.iter().map(|(n, _)| n + 1).max().unwrap_or(1);
    let version = format!("{name}.{next}");
    let target = parent.join(&version);
    owned::create_dir(&target)?;
    write(&target)?;
    fault_point("checkpoint written");
    relink(dir, Path::new(&version))?;
    fault_point("link switched");
    for (_, old) in versions(parent, name)? {
        if old != target {
            owned::remove_marked(&old);
        }
    }
    Ok(())
}

/// Whether [`replace_dir`] may replace `dir`: it does not exist, or it is a link
/// to a version directory that `replace_dir` made.
pub fn is_replaceable(dir: &Path) -> bool {
    let Ok(meta) = fs::symlink_metadata(dir) else { return true };
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let target = fs::read_link(dir).ok().filter(|t| t.components().count() == 1);
    meta.file_type().is_symlink() && target.is_some_and(|t| owned::is_marked(&parent.join(t)))
}

/// Points the symbolic link `link` at `target` (relative to the link's directory)
/// in one atomic step: a new link is made beside it and renamed over it. A `link`
/// that exists but is not a link (a file or folder of someone else's) is refused.
pub fn relink(link: &Path, target: &Path) -> Result<()> {
    let name = link.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::format(link, "not a link name"))?;
    if fs::symlink_metadata(link).is_ok_and(|m| !m.file_type().is_symlink()) {
        return Err(Error::Refused(format!(
            "{} exists and is not a link; move it away to have it made one",
            link.display()
        )));
    }
    // A fresh name: a link is made only where nothing was, so none is removed.
    let mut made = None;
    for k in 0..64 {
        let tmp = link.with_file_name(format!(".{name}.{}-{k}.link", std::process::id()));
        match symlink(target, &tmp) {
            Ok(()) => {
                made = Some(tmp);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("linking", &tmp, e)),
        }
    }
    let tmp = made.ok_or_else(|| Error::format(link, "every temporary link name beside it is taken"))?;
    fault_point("link made");
    let switched = fs::rename(&tmp, link).map_err(|e| Error::io("switching the link", link, e));
    if switched.is_err() {
        let _ = fs::remove_file(&tmp); // the link made just above
    }
    switched
}

/// The versioned directories `<name>.<n>` beside `name` in `parent`, as (n, path).
fn versions(parent: &Path, name: &str) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", parent, e)),
    };
    let prefix = format!("{name}.");
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let n = file.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            e.file_type().ok()?.is_dir().then(|| (n, e.path()))
        })
        .collect())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

/// The checkpoint to run from a path a user gave: a run directory's best
/// checkpoint (else its last; an error if it has neither yet), or the path itself
/// (a checkpoint directory or a weights file).
pub fn model_path(path: &Path) -> Result<PathBuf> {
    match RunDir::open(path) {
        Ok(run) => run.model(),
        Err(_) => Ok(path.to_path_buf()),
    }
}

/// The tokenizer file of a model a user named, if it has one: `tokenizer.json`
/// beside its weights, or that of the run its checkpoint is in.
pub fn tokenizer_path(model: &Path) -> Option<PathBuf> {
    let found = model_path(model).ok()?;
    let dir = if found.is_dir() { found.as_path() } else { found.parent()? };
    Some(dir.join(TOKENIZER_FILE)).filter(|p| p.is_file()).or_else(|| RunDir::of_model(&found)?.tokenizer())
}
