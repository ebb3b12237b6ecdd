//! The parsers under test, the seeds each starts from, and how its inputs mutate.

use std::io::{Cursor, Read, Write};
use std::path::Path;

use bdh::data::{Bpe, Tokenizer};
use bdh::infer::Prepared;
use bdh::io::{read_safetensors, read_state_dict, state};
use bdh::model::bdh::NO_EDITS;
use bdh::{Model, ModelConfig, RunConfig};

use crate::http::{self, Http};
use crate::mutate::{mutate, Rng};

/// Names of the targets, as given on the command line.
pub const NAMES: [&str; 9] =
    ["pt", "safetensors", "config-json", "run-toml", "state", "tokenizer", "http", "run-dir", "graph"];

/// One parser of files a user may be handed.
pub enum Target {
    /// `bdh::io::read_state_dict` on a PyTorch `.pt` zip.
    Pt,
    /// `bdh::io::read_safetensors`.
    Safetensors,
    /// `ModelConfig::from_json_file`, then its JSON read back.
    ConfigJson,
    /// `RunConfig::from_toml`, then its TOML read back.
    RunToml,
    /// `bdh::io::state::load` for a prepared tiny model, then one step from the state.
    State(Box<Prepared>),
    /// `Tokenizer::load` of a `tokenizer.json`, then a text encoded and decoded back.
    Tokenizer,
    /// A request into the server's router, in process (see [`Http`]).
    Http(Box<Http>),
    /// A run directory whose `metrics.jsonl` is the input: `RunDir::open`, its
    /// metrics, config, checkpoints and kept steps.
    RunDir,
    /// `bdh::model::graph::load` of a graph file, then a few tokens run through it.
    Graph,
}

type Fallible<T> = Result<T, String>;

impl Target {
    /// The target `name`, reading the repository at `root`; `scratch` holds what
    /// it writes (the server's sessions).
    pub fn new(name: &str, root: &Path, scratch: &Path) -> Fallible<Self> {
        Ok(match name {
            "pt" => Target::Pt,
            "safetensors" => Target::Safetensors,
            "config-json" => Target::ConfigJson,
            "run-toml" => Target::RunToml,
            "state" => {
                let cfg = ModelConfig::from_json_file(&root.join("tests/golden/ref-tiny/config.json"))
                    .map_err(|e| e.to_string())?;
                let model = Model::new(&cfg, 0).map_err(|e| e.to_string())?;
                Target::State(Box::new(Prepared::new(model).map_err(|e| e.to_string())?))
            }
            "tokenizer" => Target::Tokenizer,
            "http" => Target::Http(Box::new(Http::new(root, scratch)?)),
            "run-dir" => Target::RunDir,
            "graph" => Target::Graph,
            other => return Err(format!("no target `{other}` (have: {})", NAMES.join(", "))),
        })
    }

    /// The repository's files this parser reads (for `state`, a state saved here).
    pub fn seeds(&self, root: &Path, scratch: &Path) -> Fallible<Vec<Vec<u8>>> {
        let golden = root.join("tests/golden/ref-tiny");
        let gpt = root.join("tests/golden/gpt-tiny");
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading seed {}: {e}", p.display()));
        match self {
            // BDH's and the GPT's (whose head and embedding share one storage).
            Target::Pt => Ok(vec![read(&golden.join("model.pt"))?, read(&gpt.join("model.pt"))?]),
            Target::Safetensors => {
                Ok(vec![read(&golden.join("model.safetensors"))?, read(&golden.join("expected.safetensors"))?])
            }
            Target::ConfigJson => Ok(vec![read(&golden.join("config.json"))?, read(&gpt.join("config.json"))?]),
            Target::RunToml => {
                let dir = root.join("configs");
                let mut paths: Vec<_> = std::fs::read_dir(&dir)
                    .map_err(|e| format!("listing {}: {e}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                paths.sort();
                paths.iter().map(|p| read(p)).collect()
            }
            Target::State(prepared) => {
                // A state that has read a few tokens, so that ρ and the position are not zero.
                let mut s = prepared.state().map_err(|e| e.to_string())?;
                let mut scratch_buffers = prepared.scratch();
                prepared.prefill(&mut s, &mut scratch_buffers, &[72, 105, 33], &NO_EDITS).map_err(|e| e.to_string())?;
                let path = scratch.join("seed-state.safetensors");
                state::save(prepared, &s, &path).map_err(|e| e.to_string())?;
                Ok(vec![read(&path)?])
            }
            Target::Tokenizer => {
                // A BPE learnt from the repository's own example text.
                let text = read(&root.join("examples/text.txt"))?;
                Ok(vec![Bpe::train(&text, 320).map_err(|e| e.to_string())?.json().as_bytes().to_vec()])
            }
            Target::Http(_) => Ok(http::seeds()),
            Target::Graph => {
                // The graph of the trained BDH-Normfree fixture, pruned to keep it small.
                let path = root.join("tests/golden/normfree-small");
                let Model::Bdh(m) = bdh::io::checkpoint::load(&path, None).map_err(|e| e.to_string())? else {
                    return Err("normfree-small is not a BDH".into());
                };
                let g = bdh::model::graph::build(&m, Some(3), true).map_err(|e| e.to_string())?;
                let file = scratch.join("seed-graph.safetensors");
                bdh::model::graph::save(&g, &file).map_err(|e| e.to_string())?;
                Ok(vec![read(&file)?])
            }
            // Every kind of record a run writes, as it writes them.
            Target::RunDir => Ok(vec![concat!(
                "{\"step\":1,\"loss\":5.5,\"lr\":0.001,\"grad_norm\":1.5,\"tokens_per_second\":1000.0}\n",
                "{\"step\":2,\"val_loss\":4.1,\"bits_per_byte\":5.9,\"answer_accuracy\":0.1,\"train_loss\":4.5}\n",
                "{\"step\":2,\"sample_prompt\":\"Q: \",\"sample\":\"A\\u00e9\"}\n",
            )
            .as_bytes()
            .to_vec()]),
        }
    }

    /// Feeds `input`, already written to `file`, to the parser: what it refused, and why.
    pub fn run(&self, input: &[u8], file: &Path) -> Fallible<()> {
        match self {
            Target::Http(server) => server.run(input),
            _ => self.read(input, file).map_err(|e| e.to_string()),
        }
    }

    /// Feeds `input`, already written to `file`, to a file parser. Reading back what
    /// a config writes must work too: runs and checkpoints save configs and reload them.
    fn read(&self, input: &[u8], file: &Path) -> bdh::Result<()> {
        match self {
            Target::Pt => read_state_dict(file).map(drop),
            Target::Safetensors => read_safetensors(file).map(drop),
            Target::ConfigJson => {
                let cfg = ModelConfig::from_json_file(file)?;
                let _ = cfg.describe();
                let again = file.with_extension("again.json");
                std::fs::write(&again, cfg.to_json()).expect("writing beside the input");
                let back = ModelConfig::from_json_file(&again);
                assert!(back.as_ref().is_ok_and(|b| *b == cfg), "config.json does not read back: {back:?}");
                Ok(())
            }
            Target::RunToml => {
                let cfg = RunConfig::from_toml(&String::from_utf8_lossy(input), file, &[])?;
                let back = RunConfig::from_toml(&cfg.to_toml(), file, &[]);
                assert!(back.is_ok(), "run config does not read back: {:?}\n{}", back.err(), cfg.to_toml());
                Ok(())
            }
            Target::State(prepared) => {
                // A state that loads must also be one the model can step from.
                let mut s = state::load(prepared, file)?;
                prepared.step(&mut [&mut s], &mut prepared.scratch(), &[0], &NO_EDITS).map(drop)
            }
            Target::Tokenizer => {
                // A tokenizer that loads gives every text back exactly.
                let tok = Tokenizer::load(file)?;
                let text = "Ünïcödé, tabs\t and 日本語 🐉 \u{0}\r\n".as_bytes();
                assert_eq!(tok.decode(&tok.encode(text)), text, "a loaded tokenizer changes text");
                Ok(())
            }
            Target::Http(_) => unreachable!("requests are not files"),
            Target::Graph => {
                // A graph that loads can read a text.
                let g = bdh::model::graph::load(file)?;
                bdh::model::graph::score(&g, &[72, 105, 33, 10]).map(drop)
            }
            Target::RunDir => {
                let dir = file.with_extension("run");
                if !dir.join("config.toml").exists() {
                    // A run with a checkpoint, so that every step below is reached.
                    let last = dir.join("last");
                    std::fs::create_dir_all(&last).expect("making the run directory");
                    std::fs::write(dir.join("config.toml"), RunConfig::resolve("tiny", &[])?.to_toml())
                        .expect("writing the run config");
                    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/ref-tiny");
                    for name in ["config.json", "model.safetensors"] {
                        std::fs::copy(golden.join(name), last.join(name)).expect("copying the golden model");
                    }
                }
                std::fs::write(dir.join("metrics.jsonl"), input).expect("writing the metrics");
                let run = bdh::io::run_dir::RunDir::open(&dir)?;
                let m = run.metrics()?;
                let lines = input.split(|&b| b == b'\n').count();
                let records = m.steps.len() + m.evals.len() + m.samples.len();
                assert!(records + m.skipped <= lines, "{records} records and {} skipped of {lines} lines", m.skipped);
                assert!(m.skipped_lines.windows(2).all(|w| w[0] < w[1]), "skipped lines out of order");
                run.config(&[])?;
                run.kept_steps()?;
                run.model().map(drop)
            }
        }
    }

    /// A mutation of `input`. Half of a `.pt`'s mutations change one zip entry (the
    /// pickle most often) and zip it up again, so that they reach the pickle machine
    /// rather than stop at the zip's checksums.
    pub fn mutate(&self, rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], max_len: usize) -> Vec<u8> {
        if matches!(self, Target::Pt) && rng.below(2) == 0 {
            if let Some(entries) = unzip(input) {
                let pick = match entries.iter().position(|(n, _)| n.ends_with("data.pkl")) {
                    Some(p) if rng.below(10) < 7 => p,
                    _ => rng.below(entries.len()),
                };
                let others: Vec<Vec<u8>> = entries.iter().map(|(_, b)| b.clone()).collect();
                let mut entries = entries;
                entries[pick].1 = mutate(rng, &entries[pick].1, &others, max_len);
                if let Some(bytes) = rezip(&entries) {
                    return bytes;
                }
            }
        }
        mutate(rng, input, corpus, max_len)
    }
}

/// The entries of a zip, or `None` if `bytes` is not one we can read whole.
fn unzip(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).ok()?;
    let mut entries = Vec::with_capacity(zip.len().min(64));
    for i in 0..zip.len() {
        let mut e = zip.by_index(i).ok()?;
        let mut data = Vec::new();
        // Entries of the corpus are our own; the bound only guards against a lie.
        e.by_ref().take(bytes.len() as u64).read_to_end(&mut data).ok()?;
        entries.push((e.name().to_string(), data));
    }
    (!entries.is_empty()).then_some(entries)
}

/// `entries` zipped, stored uncompressed as torch writes them.
fn rezip(entries: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        out.start_file(name.as_str(), opts).ok()?;
        out.write_all(data).ok()?;
    }
    Some(out.finish().ok()?.into_inner())
}
