//! Hostile files, built to exhaust memory, time or the stack: each is refused
//! quickly with an error naming the problem, never a panic or an abort.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bdh::io::{checkpoint, read_safetensors, read_state_dict, TensorData};

use crate::common::{golden_dir, temp_dir, tiny_config};

/// Each case is refused in milliseconds; seconds would mean that the sizes it
/// claims were believed (the bound is loose for a busy machine).
const QUICK: Duration = Duration::from_secs(3);

/// Runs `f`, which must fail within [`QUICK`]; returns the error's message.
pub fn refused<T>(what: &str, f: impl FnOnce() -> bdh::Result<T>) -> String {
    let start = Instant::now();
    let result = f();
    let took = start.elapsed();
    let Err(e) = result else { panic!("{what}: accepted") };
    let m = e.to_string();
    println!("{what}: {m} ({took:.1?})");
    assert!(took < QUICK, "{what}: took {took:?}");
    m
}

/// A zip of `entries` (stored, as torch writes them) at `dir/name`.
fn zip_file(dir: &Path, name: &str, entries: &[(String, Vec<u8>)]) -> PathBuf {
    let path = dir.join(name);
    let mut out = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        out.start_file(name.as_str(), opts).unwrap();
        out.write_all(bytes).unwrap();
    }
    out.finish().unwrap();
    path
}

/// A `.pt` holding `pickle` as its data.pkl and `storages` as `(key, bytes)`.
fn pt_file(dir: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> PathBuf {
    let mut entries = vec![("archive/data.pkl".to_string(), pickle.to_vec())];
    entries.push(("archive/byteorder".into(), b"little".to_vec()));
    entries.extend(storages.iter().map(|(k, b)| (format!("archive/data/{k}"), b.clone())));
    zip_file(dir, "model.pt", &entries)
}

/// Little-endian f32 bytes of `0, 1, …, n-1`.
fn floats(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

/// A tensor as a state_dict pickle describes it: a view of a float storage.
struct View<'a> {
    name: &'a str,
    key: &'a str,
    offset: u64,
    shape: &'a [u64],
    stride: &'a [u64],
}

/// A protocol-2 pickle of `OrderedDict(name → tensor)`, laid out as torch writes it
/// but without its memo writes.
fn state_dict_pickle(views: &[View]) -> Vec<u8> {
    fn int(p: &mut Vec<u8>, v: u64) {
        p.extend([0x8a, 8]); // LONG1 of 8 bytes: any size fits
        p.extend(v.to_le_bytes());
    }
    fn string(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn tuple(p: &mut Vec<u8>, xs: &[u64]) {
        p.push(b'(');
        xs.iter().for_each(|&x| int(p, x));
        p.push(b't');
    }
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    for v in views {
        string(&mut p, v.name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        string(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        string(&mut p, v.key);
        string(&mut p, "cpu");
        int(&mut p, 0);
        p.extend(b"tQ");
        int(&mut p, v.offset);
        tuple(&mut p, v.shape);
        tuple(&mut p, v.stride);
        p.extend(b"\x89ccollections\nOrderedDict\n)RtR"); // requires_grad, hooks
    }
    p.extend(b"u.");
    p
}

fn view<'a>(name: &'a str, shape: &'a [u64], stride: &'a [u64]) -> View<'a> {
    View { name, key: "0", offset: 0, shape, stride }
}

#[test]
fn pt_views_are_read_as_strided() {
    // The builder above and the reader agree on plain, transposed, offset and tied views.
    let tmp = temp_dir("pt-views");
    let views = [
        view("plain", &[2, 3], &[3, 1]),
        view("transposed", &[3, 2], &[1, 3]),
        View { name: "offset", key: "0", offset: 4, shape: &[2], stride: &[1] },
        View { name: "tied", key: "0", offset: 0, shape: &[6], stride: &[1] },
        view("empty", &[0, 5], &[5, 1]),
    ];
    let path = pt_file(tmp.path(), &state_dict_pickle(&views), &[("0", floats(6))]);
    let t = read_state_dict(&path).unwrap();
    let values = |n: &str| match &t[n].data {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(_) => panic!("{n}: integers"),
    };
    assert_eq!(values("plain"), [0., 1., 2., 3., 4., 5.]);
    assert_eq!(values("transposed"), [0., 3., 1., 4., 2., 5.]);
    assert_eq!(values("offset"), [4., 5.]);
    assert_eq!(values("tied"), values("plain"));
    assert_eq!((t["empty"].shape.clone(), values("empty")), (vec![0, 5], vec![]));
}

#[test]
fn pt_with_thousands_of_tensors_is_read() {
    // The pickle machine's limits leave room for large real state_dicts.
    let tmp = temp_dir("pt-many");
    let n = 20_000;
    let names: Vec<String> = (0..n).map(|i| format!("layers.{i}.weight")).collect();
    let views: Vec<View> = names
        .iter()
        .enumerate()
        .map(|(i, name)| View { name, key: "0", offset: i as u64, shape: &[1], stride: &[1] })
        .collect();
    let path = pt_file(tmp.path(), &state_dict_pickle(&views), &[("0", floats(n))]);
    let t = read_state_dict(&path).unwrap();
    assert_eq!(t.len(), n);
    assert_eq!(t["layers.1234.weight"].data, TensorData::F32(vec![1234.0]));
}

#[test]
fn pt_memo_doubled_each_round_is_refused() {
    // A list of two copies of the memoised list, memoised again, 40 times: 2⁴⁰ values.
    let tmp = temp_dir("pt-memo");
    let mut pickle = b"\x80\x02]q\x00".to_vec();
    (0..40).for_each(|_| pickle.extend(b"(h\x00h\x00lq\x00"));
    pickle.push(b'.');
    let path = pt_file(tmp.path(), &pickle, &[]);
    let m = refused("memo doubling", || read_state_dict(&path));
    assert!(m.contains("data.pkl") && m.contains("values") && m.contains("memo"), "{m}");
    // A million and more memo entries, each under its own key.
    let mut pickle = b"\x80\x02N".to_vec();
    (0..(1u32 << 20) + 1).for_each(|k| pickle.extend([&[b'r'][..], &k.to_le_bytes()].concat()));
    let path = pt_file(tmp.path(), &pickle, &[]);
    let m = refused("memo of a million entries", || read_state_dict(&path));
    assert!(m.contains("memoises more than 1048576 values"), "{m}");
    // A string of 1 MiB copied out of the memo a hundred times.
    let mut pickle = b"\x80\x02X\x00\x00\x10\x00".to_vec();
    pickle.extend(vec![b'a'; 1 << 20]);
    pickle.extend(b"q\x00");
    pickle.extend(b"h\x00".repeat(100));
    let path = pt_file(tmp.path(), &pickle, &[]);
    let m = refused("a long string copied", || read_state_dict(&path));
    assert!(m.contains("bytes of strings"), "{m}");
}

#[test]
fn pt_nested_a_million_deep_is_refused() {
    let tmp = temp_dir("pt-nested");
    let deep = 1_000_000;
    let nested = |open: &[u8], step: &[u8]| {
        let mut p = b"\x80\x02".to_vec();
        p.extend(open);
        (0..deep).for_each(|_| p.extend(step));
        p.push(b'.');
        p
    };
    let mut lists = b"\x80\x02".to_vec();
    lists.extend(std::iter::repeat_n(b']', deep));
    lists.extend(std::iter::repeat_n(b'a', deep - 1));
    lists.push(b'.');
    for (what, pickle) in [
        ("TUPLE1 of TUPLE1 …", nested(b")", b"\x85")),
        ("MARK … TUPLE", [b"\x80\x02".as_slice(), &vec![b'('; deep], &vec![b't'; deep], b"."].concat()),
        ("lists appended into lists", lists),
    ] {
        let path = pt_file(tmp.path(), &pickle, &[]);
        let m = refused(what, || read_state_dict(&path));
        assert!(m.contains("nests values more than"), "{what}: {m}");
    }
}

#[test]
fn pt_tensor_larger_than_its_storage_is_refused() {
    let tmp = temp_dir("pt-extent");
    let storage = [("0", floats(4))];
    for (what, v, want) in [
        ("[2⁴⁰] stride 0", view("w", &[1 << 40], &[0]), "reads 1099511627776 values from a storage of only 4"),
        ("[2²⁸] stride 0", view("w", &[1 << 28], &[0]), "reads 268435456 values"),
        ("[2²⁸] stride 1", view("w", &[1 << 28], &[1]), "runs past its storage of 4 values"),
        ("stride overflow", view("w", &[2, 2], &[1 << 62, 1 << 62]), "runs past"),
        ("element count overflow", view("w", &[1 << 40, 1 << 40], &[0, 0]), "more elements than can be counted"),
        ("100 dimensions", view("w", &[1; 100], &[0; 100]), "100 dimensions"),
        ("offset past the end", View { offset: 1 << 40, ..view("w", &[1], &[1]) }, "runs past"),
    ] {
        let path = pt_file(tmp.path(), &state_dict_pickle(&[v]), &storage);
        let m = refused(what, || read_state_dict(&path));
        assert!(m.contains(want), "{what}: {m}");
    }
}

#[test]
fn pt_bogus_huge_tensor_is_refused_before_names_are_checked() {
    // The reference's storages, and a pickle naming one tensor of 2²⁸ values over
    // its 32 KiB storage "0": refused by the storage check, not after reading it.
    let tmp = temp_dir("pt-bogus");
    let dir = tmp.path();
    std::fs::write(dir.join("config.json"), serde_json::to_string(&tiny_config(2, 32, 2, 8)).unwrap()).unwrap();
    let src = std::fs::File::open(golden_dir("ref-tiny").join("model.pt")).unwrap();
    let mut src = zip::ZipArchive::new(src).unwrap();
    let pickle = state_dict_pickle(&[view("bogus", &[1 << 28], &[0])]);
    let entries: Vec<(String, Vec<u8>)> = (0..src.len())
        .map(|i| {
            let mut e = src.by_index(i).unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            let name = e.name().to_string();
            if name.ends_with("data.pkl") {
                bytes = pickle.clone();
            }
            (name, bytes)
        })
        .collect();
    let path = zip_file(dir, "model.pt", &entries);
    let m = refused("bogus [2²⁸]", || checkpoint::load(&path, None));
    assert!(m.contains("bogus") && m.contains("reads 268435456 values from a storage of only 8192"), "{m}");
}

#[test]
fn pt_views_that_read_a_storage_over_and_over_are_refused() {
    let tmp = temp_dir("pt-views-over");
    let names: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    let views: Vec<View> = names.iter().map(|n| view(n, &[16384], &[1])).collect();
    let path = pt_file(tmp.path(), &state_dict_pickle(&views), &[("0", floats(16384))]);
    let m = refused("200 whole views of one storage", || read_state_dict(&path));
    assert!(m.contains("more than 4× its length"), "{m}");
    let path =
        pt_file(tmp.path(), &state_dict_pickle(&[view("a", &[1], &[1]), view("a", &[1], &[1])]), &[("0", floats(1))]);
    let m = refused("a name twice", || read_state_dict(&path));
    assert!(m.contains("names `a` twice"), "{m}");
}

/// `zip` with the sizes that the central directory records for `entry` replaced.
fn with_claimed_size(mut zip: Vec<u8>, entry: &str, compressed: Option<u32>, size: u32) -> Vec<u8> {
    let at = (0..zip.len() - 46)
        .find(|&i| zip[i..i + 4] == *b"PK\x01\x02" && zip[i + 46..].starts_with(entry.as_bytes()))
        .expect("the entry's central directory record");
    if let Some(c) = compressed {
        zip[at + 20..at + 24].copy_from_slice(&c.to_le_bytes());
    }
    zip[at + 24..at + 28].copy_from_slice(&size.to_le_bytes());
    zip
}

#[test]
fn pt_zip_entry_claiming_gigabytes_is_refused() {
    let tmp = temp_dir("pt-zip-size");
    let pickle = state_dict_pickle(&[view("w", &[2], &[1])]);
    let good = std::fs::read(pt_file(tmp.path(), &pickle, &[("0", floats(4))])).unwrap();
    let path = tmp.path().join("claims.pt");
    for (what, entry, compressed, size, want) in [
        (
            "data.pkl claims 4 GiB",
            "archive/data.pkl",
            None,
            u32::MAX - 1,
            "claims 4294967294 bytes, more than the whole file",
        ),
        ("compressed size too", "archive/data.pkl", Some(u32::MAX - 1), u32::MAX - 1, "4294967294"),
        ("storage claims 4 GiB", "archive/data/0", None, u32::MAX - 1, "claims 4294967294 bytes"),
        ("storage claims less", "archive/data/0", None, 8, "claims 8 bytes but holds more"),
    ] {
        std::fs::write(&path, with_claimed_size(good.clone(), entry, compressed, size)).unwrap();
        let m = refused(what, || read_state_dict(&path));
        assert!(m.contains(want), "{what}: {m}");
    }
}

/// Safetensors bytes: the header's length, the header, the data.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    [&(header.len() as u64).to_le_bytes(), header.as_bytes(), data].concat()
}

#[test]
fn safetensors_with_absurd_sizes_are_refused() {
    let tmp = temp_dir("st-absurd");
    let path = tmp.path().join("model.safetensors");
    let tensor = |dtype: &str, shape: &str, offsets: &str| {
        safetensors_bytes(
            &format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}}}"#),
            &[0; 16],
        )
    };
    let deep = format!(r#"{{"w":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    for (what, bytes) in [
        ("header of 2⁶⁴-1 bytes", [u64::MAX.to_le_bytes().as_slice(), b"{}"].concat()),
        ("header of 2⁴⁰ bytes", [(1u64 << 40).to_le_bytes().as_slice(), b"{}"].concat()),
        ("shape whose product overflows", tensor("F32", "[4611686018427387904,4]", "[0,16]")),
        ("shape larger than its data", tensor("F32", "[1099511627776]", "[0,16]")),
        ("offsets past the end", tensor("F32", "[4]", "[0,1099511627776]")),
        ("offsets reversed", tensor("F32", "[4]", "[16,0]")),
        ("negative dimension", tensor("F32", "[-4]", "[0,16]")),
        ("header nested 100 000 deep", safetensors_bytes(&deep, &[])),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let m = refused(what, || read_safetensors(&path));
        assert!(m.contains("not a valid safetensors file"), "{what}: {m}");
    }
    std::fs::write(&path, tensor("F16", "[8]", "[0,16]")).unwrap();
    let m = refused("f16", || read_safetensors(&path));
    assert!(m.contains("unsupported dtype F16"), "{m}");
}

/// A trained tokenizer's JSON with `edit` applied, written to `dir/name`.
fn tokenizer_file(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut json: serde_json::Value = serde_json::from_str(crate::bpe::trained(300).json()).unwrap();
    edit(&mut json);
    let path = dir.join(name);
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn tokenizer_files_that_are_corrupt_huge_or_not_byte_exact_are_refused() {
    use bdh::data::{Tokenizer, MAX_TOKENIZER_BYTES, MAX_VOCAB};
    let tmp = temp_dir("hostile-tokenizer");
    let dir = tmp.path();
    let load = |what: &str, path: &Path| refused(what, || Tokenizer::load(path));

    let good = tokenizer_file(dir, "good.json", |_| {});
    Tokenizer::load(&good).unwrap();
    let text = std::fs::read_to_string(&good).unwrap();
    std::fs::write(dir.join("garbage.json"), b"\x00\xffnot json at all").unwrap();
    assert!(load("garbage", &dir.join("garbage.json")).contains("not a Hugging Face tokenizer file"));
    std::fs::write(dir.join("cut.json"), &text[..text.len() / 2]).unwrap();
    assert!(load("cut in half", &dir.join("cut.json")).contains("not a Hugging Face tokenizer file"));
    // Malformed inside the decoder, where the tokenizers crate would panic.
    let compact = serde_json::from_str::<serde_json::Value>(&text).unwrap().to_string();
    let bad_decoder = compact.replacen(r#""decoder":{"#, r#""decoder":{7:1,"#, 1);
    assert_ne!(bad_decoder, compact);
    std::fs::write(dir.join("bad-decoder.json"), bad_decoder).unwrap();
    assert!(load("a malformed decoder", &dir.join("bad-decoder.json")).contains("key must be a string"));
    // Refused by its size, on the read.
    let huge = std::fs::File::create(dir.join("huge.json")).unwrap();
    huge.set_len(MAX_TOKENIZER_BYTES + 1).unwrap();
    assert!(load("huge", &dir.join("huge.json")).contains("past the"));

    let empty = tokenizer_file(dir, "empty.json", |j| {
        j["model"]["vocab"] = serde_json::json!({});
        j["model"]["merges"] = serde_json::json!([]);
    });
    assert!(load("no vocabulary", &empty).contains("a vocabulary of 0 tokens"));
    let vast = tokenizer_file(dir, "vast.json", |j| j["model"]["vocab"]["far"] = (MAX_VOCAB * 2).into());
    assert!(load("an id past 2^20", &vast).contains(&format!("need 256 (one per byte) to {MAX_VOCAB}")));
    let gap = tokenizer_file(dir, "gap.json", |j| j["model"]["vocab"]["gap"] = 5000.into());
    assert!(load("ids with a gap", &gap).contains("without gaps"));
    let no_decoder = tokenizer_file(dir, "no-decoder.json", |j| j["decoder"] = serde_json::Value::Null);
    assert!(load("no byte-level decoder", &no_decoder).contains("ByteLevel"));
    let lowercase =
        tokenizer_file(dir, "lowercase.json", |j| j["normalizer"] = serde_json::json!({"type": "Lowercase"}));
    assert!(load("a normalizer that changes text", &lowercase).contains("normalizer is Lowercase"));
    let prefix = tokenizer_file(dir, "prefix.json", |j| j["pre_tokenizer"]["add_prefix_space"] = true.into());
    assert!(load("a prefix space", &prefix).contains("adds a space"));
    let snowman = tokenizer_file(dir, "snowman.json", |j| {
        let next = j["model"]["vocab"].as_object().unwrap().len();
        j["model"]["vocab"]["\u{2603}"] = next.into();
    });
    assert!(load("a token that is not bytes", &snowman).contains("not made of byte-level characters"));
    let no_nul = tokenizer_file(dir, "no-nul.json", |j| {
        // Byte 0 is written U+0100; its id goes to the last token, so ids stay whole.
        let vocab = j["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab.remove("\u{100}").unwrap();
        let last = vocab.iter().max_by_key(|(_, v)| v.as_u64()).map(|(k, _)| k.clone()).unwrap();
        vocab[&last] = id;
    });
    assert!(load("no token for a byte", &no_nul).contains("no token for byte 0x00"));
}

#[test]
fn tokenizers_that_change_text_or_vary_are_refused_by_their_parts() {
    use bdh::data::Tokenizer;
    let tmp = temp_dir("lossy-tokenizer");
    let dir = tmp.path();
    let load = |what: &str, path: &Path| refused(what, || Tokenizer::load(path));
    let byte_level =
        || serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let split = |behavior: &str| serde_json::json!({"type": "Split", "pattern": {"String": " "}, "behavior": behavior, "invert": false});
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: [(&str, Edit, &str); 8] = [
        ("nfkc", Box::new(|j| j["normalizer"] = serde_json::json!({"type": "NFKC"})), "normalizer is NFKC"),
        (
            "replace",
            Box::new(|j| {
                j["normalizer"] = serde_json::json!({"type": "Replace", "pattern": {"String": "a"}, "content": "b"})
            }),
            "normalizer is Replace",
        ),
        (
            "split-removed",
            Box::new(move |j| {
                j["pre_tokenizer"] =
                    serde_json::json!({"type": "Sequence", "pretokenizers": [split("Removed"), byte_level()]})
            }),
            "Split removes what it matches",
        ),
        (
            "whitespace",
            Box::new(|j| j["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"})),
            "pre-tokenizer is Whitespace",
        ),
        ("dropout", Box::new(|j| j["model"]["dropout"] = 0.1.into()), "has dropout 0.1"),
        ("prefix", Box::new(|j| j["model"]["continuing_subword_prefix"] = "##".into()), "continuing_subword_prefix"),
        (
            "template",
            Box::new(|j| {
                j["post_processor"] =
                    serde_json::json!({"type": "TemplateProcessing", "single": [], "pair": [], "special_tokens": {}})
            }),
            "post-processor is TemplateProcessing",
        ),
        (
            "stripping",
            Box::new(|j| {
                let id = j["model"]["vocab"].as_object().unwrap().len();
                j["added_tokens"] = serde_json::json!([{"id": id, "content": "<s>", "single_word": false,
                    "lstrip": true, "rstrip": false, "normalized": false, "special": true}]);
            }),
            "takes the space beside it",
        ),
    ];
    for (name, edit, want) in cases {
        let path = tokenizer_file(dir, &format!("{name}.json"), edit);
        let m = load(name, &path);
        assert!(m.contains(want), "{name}: {m}");
    }
    // Splitting that keeps every byte is accepted, as the trained tokenizers are.
    let kept = tokenizer_file(dir, "split-isolated.json", move |j| {
        j["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [split("Isolated"), byte_level()]})
    });
    let tok = Tokenizer::load(&kept).unwrap();
    let text = "ﬁne and fine,\t\u{1F409} \u{FB01}".as_bytes();
    assert_eq!(tok.decode(&tok.encode(text)), text);
    // The project's own trained tokenizers pass, at every size.
    for vocab in [256, 1000] {
        let path = dir.join(format!("trained-{vocab}.json"));
        std::fs::write(&path, crate::bpe::trained(vocab).json()).unwrap();
        Tokenizer::load(&path).unwrap();
    }
}
