//! The one file format of a saved and a carried state: both round-trip, files of
//! before the format's version still load, and hostile or mismatched files are
//! refused with an error naming the problem.

use std::collections::HashMap;
use std::path::Path;

use bdh::infer::{Prepared, State};
use bdh::io::state::{self, FORMAT};
use bdh::model::bdh::State as BdhState;
use bdh::model::gpt::GptConfig;
use bdh::train::carry::Carry;
use bdh::{Model, ModelConfig};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use bdh::model::bdh::BdhConfig;

use crate::common::{bdh_model, golden_dir, temp_dir, tiny_config};
use crate::hostile::refused;

/// The model of the fixtures: L1 D8 H1 N16, so ρ of one stream is 128 values.
fn model(seed: u64) -> Model {
    Model::new(&ModelConfig::Bdh(tiny_config(1, 8, 1, 2)), seed).unwrap()
}

/// A tensor of a hand-made file: name, type, shape, bytes.
type Raw = (&'static str, Dtype, Vec<usize>, Vec<u8>);

/// Safetensors bytes of `tensors` with `meta`.
fn file_bytes(meta: &Meta, tensors: &[Raw]) -> Vec<u8> {
    let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
        let elems: usize = shape.iter().product();
        // A mistyped tensor is given bytes for its shape in its own type.
        let view = TensorView::new(*dtype, shape.clone(), &bytes[..elems * dtype.bitsize() / 8]).unwrap();
        (name.to_string(), view)
    });
    let meta = if meta.is_empty() { None } else { Some(meta.clone()) };
    safetensors::serialize(views, meta).unwrap()
}

/// Metadata of a file, by key.
type Meta = HashMap<String, String>;

/// The metadata and tensor types and shapes of the state file at `path`.
fn header(path: &Path) -> (Meta, HashMap<String, (Dtype, Vec<usize>)>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st.tensors().into_iter().map(|(n, t)| (n, (t.dtype(), t.shape().to_vec()))).collect();
    (meta.metadata().clone().unwrap_or_default(), tensors)
}

fn bdh_state(state: State) -> BdhState {
    let State::Bdh(s) = state else { unreachable!("a BDH") };
    s
}

#[test]
fn a_session_and_a_carried_state_are_one_format() {
    let tmp = temp_dir("state-format");
    let dir = tmp.path();
    let m = model(0);
    let prepared = Prepared::new(m.clone()).unwrap();
    let rho: Vec<f32> = (0..128).map(|i| (i as f32).sin()).collect();
    let session = State::Bdh(BdhState { pos: 99, rho: rho.into(), keys: Vec::new(), queue: Vec::new() });
    let path = dir.join("session.safetensors");
    state::save(&prepared, &session, &path).unwrap();
    assert_eq!(state::load(&prepared, &path).unwrap(), session, "bit-exact round trip");
    let (meta, tensors) = header(&path);
    // (a model whose write key has no traces writes version 1, readable by builds that know only it)
    assert_eq!((meta["format"].as_str(), meta["version"].as_str()), (FORMAT, "1"));
    assert_eq!(meta["weights"], m.params().fingerprint());
    assert_eq!(tensors["rho"], (Dtype::F32, vec![1, 1, 1, 16, 8]), "(L, B, H, N, D)");
    assert_eq!(tensors["position"], (Dtype::I64, vec![1]));

    // A run's carried state, three streams: the same tensors, B = 3.
    let mut carry = Carry::new(&m.config(), 3, false).unwrap();
    carry.state.rho.f32_mut("a test").unwrap().iter_mut().enumerate().for_each(|(i, x)| *x = (i as f32).cos());
    carry.state.pos = 1 << 24; // the last position a state can reach
    carry.save(dir, &m).unwrap();
    let (meta_c, tensors_c) = header(&dir.join("carry.safetensors"));
    assert_eq!(meta_c, meta, "the checkpoint's model, as a session names its own");
    assert_eq!(tensors_c["rho"], (Dtype::F32, vec![1, 3, 1, 16, 8]));
    assert_eq!(Carry::load(dir, &m, 3, true).unwrap(), Carry { state: carry.state.clone(), detach: true });
    // One stream carried is a session.
    let one = Carry {
        state: BdhState {
            pos: 5,
            rho: carry.state.rho.to_f32().unwrap()[..128].to_vec().into(),
            keys: Vec::new(),
            queue: Vec::new(),
        },
        detach: false,
    };
    one.save(dir, &m).unwrap();
    assert_eq!(bdh_state(state::load(&prepared, &dir.join("carry.safetensors")).unwrap()), one.state);
}

#[test]
fn state_files_of_before_the_format_version_still_load() {
    // Written by bdh before states had a format name and version: a session saved by
    // `bdh generate --save-state` for `model(0)`, and the state a run carried over two
    // streams, with the values below.
    let dir = golden_dir("state-unversioned");
    let m = model(0);
    let prepared = Prepared::new(m.clone()).unwrap();
    let session = bdh_state(state::load(&prepared, &dir.join("session.safetensors")).unwrap());
    let want: Vec<f32> = (0..128).map(|i| i as f32 * 0.25 - 3.0).collect();
    assert_eq!(session, BdhState { pos: 37, rho: want.clone().into(), keys: Vec::new(), queue: Vec::new() });
    let carried = Carry::load(&dir, &m, 2, false).unwrap();
    let want: Vec<f32> = (0..256).map(|i| i as f32 * 0.5 - 7.0).collect();
    assert_eq!(carried.state, BdhState { pos: 41, rho: want.clone().into(), keys: Vec::new(), queue: Vec::new() });
    // The session names its model, which is checked; the carried state names none.
    let other = model(1);
    let m = refused("an old session, other weights", || {
        state::load(&Prepared::new(other.clone()).unwrap(), &dir.join("session.safetensors"))
    });
    assert!(m.contains("its weights differ"), "{m}");
    assert_eq!(Carry::load(&dir, &other, 2, false).unwrap().state, carried.state);
    // Each loads only where it was written: a session is not a carried state.
    let tmp = temp_dir("state-unversioned");
    std::fs::copy(dir.join("session.safetensors"), tmp.path().join("carry.safetensors")).unwrap();
    let m = refused("an old session as a carried state", || Carry::load(tmp.path(), &model(0), 1, false));
    assert!(m.contains("unknown metadata"), "{m}");
    // Saved again, an old state is in the newest version.
    let again = tmp.path().join("again.safetensors");
    state::save(&prepared, &State::Bdh(session.clone()), &again).unwrap();
    assert_eq!(header(&again).0["version"], "1");
}

/// The metadata of a version-1 state of `m`, and its tensors (ρ zero, position 0).
fn good(m: &Model) -> (Meta, Vec<Raw>) {
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), "1".to_string()),
        ("config".to_string(), m.config().to_json()),
        ("weights".to_string(), m.params().fingerprint()),
    ]);
    (meta, vec![("rho", Dtype::F32, vec![1, 1, 1, 16, 8], vec![0; 512]), position(0)])
}

fn position(p: i64) -> Raw {
    ("position", Dtype::I64, vec![1], p.to_le_bytes().to_vec())
}

/// `good` with `edit` applied to its metadata and tensors.
fn edited(m: &Model, edit: impl FnOnce(&mut Meta, &mut Vec<Raw>)) -> Vec<u8> {
    let (mut meta, mut tensors) = good(m);
    edit(&mut meta, &mut tensors);
    file_bytes(&meta, &tensors)
}

#[test]
fn saved_states_that_are_corrupt_mistyped_foreign_or_from_a_newer_bdh_are_refused() {
    let tmp = temp_dir("state-bad");
    let path = tmp.path().join("state.safetensors");
    let m = model(0);
    let prepared = Prepared::new(m.clone()).unwrap();
    let good_bytes = edited(&m, |_, _| {});
    std::fs::write(&path, &good_bytes).unwrap();
    assert!(state::load(&prepared, &path).is_ok());
    let meta = |k: &'static str, v: Option<&'static str>| {
        edited(&m, move |meta, _| match v {
            Some(v) => {
                meta.insert(k.into(), v.into());
            }
            None => {
                meta.remove(k);
            }
        })
    };
    let tensor = |i: usize, raw: Option<Raw>| {
        edited(&m, move |_, t| match raw {
            Some(r) if i < t.len() => t[i] = r,
            Some(r) => t.push(r),
            None => {
                t.remove(i);
            }
        })
    };
    let mut nan = vec![0u8; 512];
    nan[508..].copy_from_slice(&f32::NAN.to_le_bytes());
    let rho = |dtype, shape: Vec<usize>| Some(("rho", dtype, shape, vec![0u8; 1024]));
    for (what, bytes, want) in [
        ("truncated", good_bytes[..good_bytes.len() - 9].to_vec(), "not a saved state"),
        ("header only", good_bytes[..8].to_vec(), "not a saved state"),
        ("empty", Vec::new(), "not a saved state"),
        ("a future version", meta("version", Some("4")), "written by a newer bdh: version 4 of the state format"),
        (
            "version 3 with an f32 ρ",
            meta("version", Some("3")),
            "version 3 holds ρ in BF16 or F16, and this one's is F32",
        ),
        ("a far future version", meta("version", Some("4000000000")), "written by a newer bdh"),
        ("version 0", meta("version", Some("0")), "version `0` is not a version of the state format"),
        ("version not a number", meta("version", Some("one")), "version `one` is not a version"),
        ("no version", meta("version", None), "no `version`"),
        ("another format", meta("format", Some("pt")), "its format is `pt`"),
        ("a version without a format", meta("format", None), "no `format`"),
        ("unknown metadata", meta("note", Some("hello")), "unknown metadata `note`"),
        ("no config", meta("config", None), "no `config` in its metadata"),
        ("a config that is not one", meta("config", Some("{")), "not a model config"),
        ("no weights", meta("weights", None), "no `weights` in its metadata"),
        ("other weights", meta("weights", Some("0")), "its weights differ"),
        (
            "ρ flat",
            tensor(0, rho(Dtype::F32, vec![128])),
            "rho is F32 [128]; for 1 stream(s) of this model it is F32 [1, 1, 1, 16, 8]",
        ),
        ("ρ of two streams", tensor(0, rho(Dtype::F32, vec![1, 2, 1, 16, 8])), "rho is F32 [1, 2, 1, 16, 8]"),
        ("ρ as integers", tensor(0, rho(Dtype::I64, vec![1, 1, 1, 16, 8])), "rho is I64"),
        ("ρ as f16", tensor(0, rho(Dtype::F16, vec![1, 1, 1, 16, 8])), "rho is F16"),
        ("no ρ", tensor(0, None), "no tensor named `rho`"),
        ("position as a float", tensor(1, Some(("position", Dtype::F32, vec![1], vec![0; 4]))), "position is F32"),
        ("two positions", tensor(1, Some(("position", Dtype::I64, vec![2], vec![0; 16]))), "position is I64 [2]"),
        ("position negative", tensor(1, Some(position(-1))), "position -1 is negative"),
        ("position past 2^24", tensor(1, Some(position((1 << 24) + 1))), "position 16777217 is past 2^24"),
        ("an unknown tensor", tensor(2, Some(("trace", Dtype::F32, vec![16], vec![0; 64]))), "unknown tensor `trace`"),
        ("ρ not finite", tensor(0, Some(("rho", Dtype::F32, vec![1, 1, 1, 16, 8], nan))), "not finite"),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let msg = refused(what, || state::load(&prepared, &path));
        assert!(msg.contains(want), "{what}: {msg}");
    }
    // Refused by its length before a byte is read: a sparse file of a terabyte.
    std::fs::File::create(&path).unwrap().set_len(1 << 40).unwrap();
    let msg = refused("a terabyte", || state::load(&prepared, &path));
    assert!(msg.contains("is more than a state of this model can be"), "{msg}");
    // A state of another model.
    std::fs::write(&path, &good_bytes).unwrap();
    let other = Prepared::new(Model::new(&ModelConfig::Bdh(tiny_config(2, 8, 1, 2)), 0).unwrap()).unwrap();
    let msg = refused("another model's state", || state::load(&other, &path));
    assert!(
        msg.contains("saved by another model: its config (BDH L1 D8 H1 N16) differs from this model's (BDH L2"),
        "{msg}"
    );
    // A session of before the format's version is held to its own layout.
    let (mut old, _) = good(&m);
    old.retain(|k, _| k == "config" || k == "weights");
    for (what, tensors, want) in [
        ("old: ρ shaped", good(&m).1, "rho is F32 [1, 1, 1, 16, 8]; for 1 stream(s) of this model it is F32 [128]"),
        (
            "old: pos as a float",
            vec![("rho", Dtype::F32, vec![128], vec![0; 512]), ("pos", Dtype::F32, vec![1], vec![0; 4])],
            "unknown tensor `pos`",
        ),
    ] {
        std::fs::write(&path, file_bytes(&old, &tensors)).unwrap();
        let msg = refused(what, || state::load(&prepared, &path));
        assert!(msg.contains(want), "{what}: {msg}");
    }
    std::fs::write(&path, file_bytes(&HashMap::new(), &[("rho", Dtype::F32, vec![128], vec![0; 512]), position(0)]))
        .unwrap();
    let msg = refused("old: no model named", || state::load(&prepared, &path));
    assert!(msg.contains("no `config` in its metadata"), "{msg}");
}

#[test]
fn carried_states_of_another_model_or_with_bad_values_are_refused() {
    let tmp = temp_dir("carry-bad");
    let dir = tmp.path();
    let path = dir.join("carry.safetensors");
    let m = model(0);
    let carry = Carry::new(&m.config(), 2, false).unwrap();
    carry.save(dir, &model(1)).unwrap();
    let msg = refused("another run's carried state", || Carry::load(dir, &m, 2, false));
    assert!(msg.contains("carry.safetensors") && msg.contains("its weights differ"), "{msg}");
    carry.save(dir, &m).unwrap();
    let msg = refused("a carried state of other rows", || Carry::load(dir, &m, 3, false));
    assert!(msg.contains("rho is F32 [1, 2, 1, 16, 8]; for 3 stream(s)"), "{msg}");
    let gpt = GptConfig { block_size: 8, vocab_size: 256, n_layer: 1, n_head: 1, n_embd: 8, dropout: 0.0, bias: false };
    let msg = refused("a GPT", || Carry::load(dir, &Model::new(&ModelConfig::Gpt(gpt), 0).unwrap(), 2, false));
    assert!(msg.contains("has none"), "{msg}");
    // Files of before the format's version: `pos` an f32, no metadata.
    let old = |rho: Vec<f32>, pos: f32| {
        let rho_bytes = rho.iter().flat_map(|v| v.to_le_bytes()).collect();
        vec![("rho", Dtype::F32, vec![rho.len()], rho_bytes), ("pos", Dtype::F32, vec![1], pos.to_le_bytes().to_vec())]
    };
    let mut nan = vec![0.0; 256];
    nan[7] = f32::INFINITY;
    for (what, meta, tensors, want) in [
        ("old: pos ½", HashMap::new(), old(vec![0.0; 256], 0.5), "position 0.5 is not a whole number"),
        ("old: pos NaN", HashMap::new(), old(vec![0.0; 256], f32::NAN), "position NaN is not a whole number"),
        ("old: pos negative", HashMap::new(), old(vec![0.0; 256], -1.0), "position -1 is negative"),
        ("old: pos past 2^24", HashMap::new(), old(vec![0.0; 256], 33554432.0), "position 33554432 is past 2^24"),
        (
            "old: ρ of one stream",
            HashMap::new(),
            old(vec![0.0; 128], 0.0),
            "rho is F32 [128]; for 2 stream(s) of this model it is F32 [256]",
        ),
        ("old: ρ not finite", HashMap::new(), old(nan, 0.0), "not finite"),
        (
            "old: metadata",
            HashMap::from([("note".to_string(), "x".to_string())]),
            old(vec![0.0; 256], 0.0),
            "unknown metadata `note`",
        ),
    ] {
        std::fs::write(&path, file_bytes(&meta, &tensors)).unwrap();
        let msg = refused(what, || Carry::load(dir, &m, 2, false));
        assert!(msg.contains(want), "{what}: {msg}");
    }
}

#[test]
fn the_mechanisms_per_stream_state_is_saved_beside_rho_in_version_2() {
    use bdh::model::bdh::{Astrocyte, Trace};
    let tmp = temp_dir("state-keys");
    let cfg = BdhConfig {
        trace: Trace::Fixed(0.5),
        astrocyte: Some(Astrocyte { alpha: 0.9 }),
        delays: bdh::model::bdh::Delays::Fixed(vec![3]),
        ..tiny_config(1, 8, 1, 2)
    };
    let prepared = Prepared::new(bdh_model(cfg, 3)).unwrap();
    let mut s = prepared.state().unwrap();
    let mut scratch = prepared.scratch();
    prepared.prefill(&mut s, &mut scratch, &[5, 9, 200, 17], &bdh::model::bdh::NO_EDITS).unwrap();
    let State::Bdh(inner) = &s else { unreachable!("BDH") };
    assert!(inner.keys.iter().any(|&k| k != 0.0), "the traces moved");
    assert!(inner.queue.iter().any(|&k| k != 0.0), "writes are queued");
    let path = tmp.path().join("s.safetensors");
    state::save(&prepared, &s, &path).unwrap();
    assert_eq!(state::load(&prepared, &path).unwrap(), s, "bit-exact round trip");
    let (meta, tensors) = header(&path);
    assert_eq!(meta["version"], "2", "an f32 state with traces: version 2, which builds before 3 read");
    assert_eq!(tensors["keys"], (Dtype::F32, vec![1, 1, 1, 32]), "(L, B, H, W): c and s, N = 16 each");
    assert_eq!(tensors["queue"], (Dtype::F32, vec![1, 1, 1, 96]), "(L, B, H, W'): 3 + 1 slots of N + D = 24");
    // the same file named version 1 is refused by its tensors' names
    let v1 = tmp.path().join("v1.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, TensorView)> = st.tensors().into_iter().collect();
    let mut meta = meta;
    meta.insert("version".into(), "1".into());
    std::fs::write(&v1, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    let msg = refused("version 1 with traces", || state::load(&prepared, &v1));
    assert!(msg.contains("unknown tensor"), "{msg}");
    // the mechanisms' tensors are checked as ρ is: present, shaped, finite
    let rewrite = |name: &str, change: &dyn Fn(&mut Vec<f32>) -> Vec<usize>| {
        let bad = tmp.path().join(format!("bad-{name}.safetensors"));
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut shapes = Vec::new();
        for (n, t) in st.tensors() {
            let mut v: Vec<f32> = if t.dtype() == Dtype::F32 {
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
            } else {
                Vec::new()
            };
            let shape = if n == name { change(&mut v) } else { t.shape().to_vec() };
            values.push(if t.dtype() == Dtype::F32 {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            } else {
                t.data().to_vec()
            });
            shapes.push((n, t.dtype(), shape));
        }
        let views: Vec<(String, TensorView)> = shapes
            .into_iter()
            .zip(&values)
            .map(|((n, dt, shape), bytes)| (n, TensorView::new(dt, shape, bytes).unwrap()))
            .collect();
        let meta: HashMap<String, String> = header(&path).0;
        std::fs::write(&bad, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
        refused(name, || state::load(&prepared, &bad))
    };
    let msg = rewrite("keys", &|v| {
        v[3] = f32::NAN;
        vec![1, 1, 1, 32]
    });
    assert!(msg.contains("traces hold values that are not finite"), "{msg}");
    let msg = rewrite("queue", &|v| {
        v.truncate(48);
        vec![1, 1, 1, 48]
    });
    assert!(msg.contains("queue is F32 [1, 1, 1, 48]"), "{msg}");
}
