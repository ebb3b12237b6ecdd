//! Training and evaluation data: bytes of any file (or the tokens a BPE makes of
//! them), or the built-in synthetic language. Every batch is a pure function of
//! (seed, index), so a resumed run sees exactly the batches an uninterrupted one
//! would.

mod bpe;
mod synthetic;
mod task;
mod tokenizer;

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bdh_kernels::Mapped;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

pub use bpe::{Bpe, MAX_FILE_BYTES as MAX_TOKENIZER_BYTES, MAX_VOCAB};
pub use synthetic::{Answer, Document, Kind, Pair, SyntheticConfig, SyntheticLanguage, PEOPLE};
pub use task::{Task, MAX_REACH};
pub use tokenizer::{Tokenizer, TOKENIZER_FILE};

use crate::error::{Error, Result};

/// Seed offset of the synthetic validation documents, apart from any training seed.
const VAL_STREAM: u64 = 0x05ee_d0f7_a11d;

/// What to train on, as a run config's `[data]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Train on this file's bytes instead of the built-in language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Validate on this file (default: the last 10% of `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_path: Option<PathBuf>,
    /// Read `path` with this BPE tokenizer (`tokenizer.json`) instead of as bytes;
    /// a run keeps a copy as its own `tokenizer.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Built-in language: most facts stated, and asked about, per document.
    pub facts: usize,
    /// Built-in language: fewest facts per document (each draws from
    /// `min_facts..=facts`); absent, as in configs written before it existed, it
    /// is `facts`, so such a run keeps the corpus it trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_facts: Option<usize>,
    /// Built-in language: filler sentences between a story's facts and its questions.
    pub distance: usize,
    /// Built-in language: fraction of documents that are lists (associative recall);
    /// absent, as in configs written before lists existed, 0.
    #[serde(default)]
    pub lists: f64,
    /// Built-in language: most facts stated and never asked about, per kind asked
    /// about; absent, as in configs written before distractors existed, 0.
    #[serde(default)]
    pub distractors: usize,
    /// Built-in language: fewest distractors (each document draws from
    /// `min_distractors..=distractors`); absent, `distractors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_distractors: Option<usize>,
    /// What the built-in generator makes: the language (`"language"`, the default)
    /// or a task whose answers depend on an input a fixed number of steps back
    /// (`"lag:K"`, `"dms:N"`, `"parity:N"`; see [`Task`]).
    #[serde(default, skip_serializing_if = "Task::is_language")]
    pub task: Task,
}

impl Default for DataConfig {
    fn default() -> Self {
        let s = SyntheticConfig::default();
        DataConfig {
            path: None,
            val_path: None,
            tokenizer: None,
            facts: s.facts,
            min_facts: Some(s.min_facts),
            distance: s.distance,
            lists: s.lists,
            distractors: s.distractors,
            min_distractors: Some(s.min_distractors),
            task: Task::Language,
        }
    }
}

impl DataConfig {
    /// The corpus this describes, for blocks of `block` tokens.
    pub fn corpus(&self, block: usize) -> Result<Corpus> {
        self.corpus_with(block, self.load_tokenizer()?)
    }

    /// The tokenizer `tokenizer` names, or bytes.
    pub fn load_tokenizer(&self) -> Result<Tokenizer> {
        self.tokenizer.as_deref().map_or(Ok(Tokenizer::Bytes), Tokenizer::load)
    }

    /// The corpus this describes, read with `tokenizer` (already loaded).
    pub fn corpus_with(&self, block: usize, tokenizer: Tokenizer) -> Result<Corpus> {
        if !self.task.is_language() {
            return task_corpus(self.task, self.path.is_some(), &tokenizer, block);
        }
        match (&self.path, tokenizer) {
            (Some(p), Tokenizer::Bytes) => Corpus::from_files(p, self.val_path.as_deref(), block),
            (Some(p), Tokenizer::Bpe(bpe)) => Corpus::tokenized(p, self.val_path.as_deref(), block, bpe),
            (None, Tokenizer::Bytes) => Ok(Corpus::Synthetic(SyntheticLanguage::new(self.synthetic()))),
            (None, Tokenizer::Bpe(_)) => Err(Error::Config(
                "the built-in corpus is written in bytes (its answers are scored byte by byte): a tokenizer \
                 needs a text file to read (--data FILE)"
                    .into(),
            )),
        }
    }
}

/// The corpus of `task`, refused with a data file or a tokenizer (the tasks are the
/// built-in generator's, in bytes) and where no answer fits a block.
fn task_corpus(task: Task, file: bool, tokenizer: &Tokenizer, block: usize) -> Result<Corpus> {
    if file || !matches!(tokenizer, Tokenizer::Bytes) {
        return Err(Error::Config(format!(
            "data.task = \"{task}\" is made by the built-in generator, in bytes: it takes no data file and no \
             tokenizer"
        )));
    }
    // the first answer a window of `block` + 1 bytes can score: its input at the window's start
    if 2 * task.reach() + 2 > block {
        return Err(Error::Config(format!(
            "data.task = \"{task}\" answers from {} bytes back, which a block of {block} bytes cannot hold: \
             it needs blocks of {} bytes or more",
            2 * task.reach(),
            2 * task.reach() + 2
        )));
    }
    Ok(Corpus::Task(task))
}

impl DataConfig {
    /// The same settings with the fewest numbers written out (absent, each is its
    /// most): a config written before those fields existed then compares equal to
    /// one that states them.
    pub fn explicit(mut self) -> Self {
        self.min_facts = Some(self.min_facts.unwrap_or(self.facts));
        self.min_distractors = Some(self.min_distractors.unwrap_or(self.distractors));
        self
    }

    /// The keys of a `[data]` section that set the built-in language: a run on a
    /// file (`path`) does not read them.
    pub const BUILT_IN_KEYS: [&'static str; 6] =
        ["facts", "min_facts", "distance", "lists", "distractors", "min_distractors"];

    /// The built-in language's knobs.
    pub fn synthetic(&self) -> SyntheticConfig {
        SyntheticConfig {
            facts: self.facts,
            min_facts: self.min_facts.unwrap_or(self.facts),
            distance: self.distance,
            lists: self.lists,
            distractors: self.distractors,
            min_distractors: self.min_distractors.unwrap_or(self.distractors),
        }
    }
}

/// B sequences of T input tokens, their next-token targets, and where answers are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Input ids, (B, T).
    pub tokens: Vec<u32>,
    /// Target ids, (B, T): the next token after each input.
    pub targets: Vec<u32>,
    /// (row, answer) of each answer of the synthetic language; the answer's range
    /// is of target positions in its row.
    pub answers: Vec<(usize, Answer)>,
    /// (row, target position) of each scored answer of a task ([`Task`]).
    pub scored: Vec<(usize, usize)>,
}

fn map_file(path: &Path) -> Result<Arc<Mapped>> {
    if path.is_dir() {
        return Err(Error::Input(format!("{} is a directory, not a data file", path.display())));
    }
    let file = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("reading", path, e))?.len();
    if len == 0 {
        return Err(Error::Input(format!("{} is empty", path.display())));
    }
    let map = Mapped::new(&file).map_err(|e| Error::io("mapping", path, e))?;
    Ok(Arc::new(map))
}

/// Where batches come from.
#[derive(Clone, Debug)]
pub enum Corpus {
    /// The built-in synthetic language (endless; validation from a separate stream).
    Synthetic(SyntheticLanguage),
    /// Bytes of files: training and validation parts.
    Files {
        /// Training bytes.
        train: BytesView,
        /// Validation bytes.
        val: BytesView,
    },
    /// A task of the built-in generator (endless; validation from a separate stream).
    Task(Task),
    /// Files read by a BPE tokenizer: the same parts as [`Corpus::Files`], as tokens.
    Tokens {
        /// Training tokens.
        train: Tokenized,
        /// Validation tokens.
        val: Tokenized,
        /// The tokenizer that wrote them.
        bpe: Bpe,
    },
}

/// The tokens a tokenizer made of (part of) a file.
#[derive(Clone, Debug)]
pub struct Tokenized {
    /// The bytes they were made of.
    pub text: BytesView,
    /// Token ids.
    pub ids: Arc<[u32]>,
}

/// Largest text a BPE reads (its tokens are held in memory, unlike bytes).
pub const MAX_TOKENIZED_BYTES: usize = 1 << 30;

impl Tokenized {
    /// The tokens `bpe` makes of `text`, refused past [`MAX_TOKENIZED_BYTES`] or
    /// the memory this machine has.
    pub fn new(text: BytesView, bpe: &Bpe) -> Result<Self> {
        let len = text.bytes().len();
        if len > MAX_TOKENIZED_BYTES {
            return Err(Error::Input(format!(
                "{len} bytes of text: a BPE tokenizer reads at most {MAX_TOKENIZED_BYTES} (its tokens are held \
                 in memory); use bytes, or a shorter text"
            )));
        }
        crate::memory::ensure_fits(len.saturating_mul(4), "the tokens of the text")?;
        Ok(Tokenized { ids: bpe.encode(text.bytes()).into(), text })
    }
}

/// A read-only view of (part of) a memory-mapped file.
#[derive(Clone, Debug)]
pub struct BytesView {
    map: Arc<Mapped>,
    range: Range<usize>,
}

impl BytesView {
    /// The whole of `map`, or the part `range` of it.
    fn new(map: Arc<Mapped>, range: Option<Range<usize>>) -> Self {
        let range = range.unwrap_or(0..map.len());
        BytesView { map, range }
    }

    /// The whole file at `path`, memory-mapped.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(BytesView::new(map_file(path)?, None))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }

    /// Where the bytes lie in their file.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 of a combination: independent streams for (seed, index) pairs.
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Corpus {
    /// A file as bytes: the first 90% to train on and the last 10% to validate, as
    /// the reference does, or all of it to train on and `val` to validate.
    pub fn from_files(train: &Path, val: Option<&Path>, block: usize) -> Result<Self> {
        let (train, val) = split_files(train, val)?;
        check_parts("bytes", train.bytes().len(), val.bytes().len(), block)?;
        Ok(Corpus::Files { train, val })
    }

    /// The parts [`Corpus::from_files`] would read, each encoded by `bpe` (the
    /// validation part on its own, so it is the same text a byte-level run holds out).
    pub fn tokenized(train: &Path, val: Option<&Path>, block: usize, bpe: Bpe) -> Result<Self> {
        let (train, val) = split_files(train, val)?;
        let (train, val) = (Tokenized::new(train, &bpe)?, Tokenized::new(val, &bpe)?);
        check_parts("tokens", train.ids.len(), val.ids.len(), block)?;
        Ok(Corpus::Tokens { train, val, bpe })
    }

    /// How this corpus's text becomes tokens.
    pub fn tokenizer(&self) -> Tokenizer {
        match self {
            Corpus::Tokens { bpe, .. } => Tokenizer::Bpe(bpe.clone()),
            _ => Tokenizer::Bytes,
        }
    }

    /// Training batch number `index` of a run seeded `seed`.
    pub fn train_batch(&self, seed: u64, index: u64, b: usize, t: usize) -> Batch {
        self.train_rows(seed, index, 0..b, t)
    }

    /// Rows `rows` of training batch number `index` of a run seeded `seed`: each row
    /// is a pure function of (seed, index, row), so the processes of a data-parallel
    /// run each draw their own rows of one batch.
    pub fn train_rows(&self, seed: u64, index: u64, rows: Range<usize>, t: usize) -> Batch {
        match self {
            Corpus::Synthetic(lang) => synthetic_batch(lang, rows.map(|row| mix(mix(seed, index), row as u64)), t),
            Corpus::Task(task) => task_batch(*task, rows.map(|row| mix(mix(seed, index), row as u64)), t),
            Corpus::Files { train, .. } => random_windows(train.bytes(), seed, index, rows, t),
            Corpus::Tokens { train, .. } => random_windows(&train.ids, seed, index, rows, t),
        }
    }

    /// Training batch number `index` of a run that carries its synapse state from
    /// batch to batch: row r reads its own contiguous stream and batch `index`
    /// continues where batch `index − 1` stopped. The second value says the streams
    /// start over here (so the state must be emptied): a file is cut into B equal
    /// parts, one per row, read again from their starts once a part is used up; the
    /// built-in language is endless, its streams start over every 2²⁴ tokens (where
    /// positions stop being exact in f32). A stream of the built-in language is its
    /// row's documents in blocks of [`STREAM_BLOCK`] bytes, each block cut at its end.
    pub fn stream_batch(&self, seed: u64, index: u64, b: usize, t: usize) -> Result<(Batch, bool)> {
        match self {
            Corpus::Synthetic(lang) => {
                let per_pass = (crate::model::MAX_POSITION / t).max(1) as u64;
                let k = (index % per_pass) as usize;
                let mut batch = Batch::default();
                for row in 0..b {
                    let (text, answers) = stream_bytes(lang, mix(seed, row as u64), k * t, t + 1);
                    batch.tokens.extend(text[..t].iter().map(|&x| x as u32));
                    batch.targets.extend(text[1..].iter().map(|&x| x as u32));
                    batch.answers.extend(answers.into_iter().map(|a| (row, a)));
                }
                Ok((batch, k == 0))
            }
            Corpus::Task(task) => {
                let per_pass = (crate::model::MAX_POSITION / t).max(1) as u64;
                let k = (index % per_pass) as usize;
                let mut batch = Batch::default();
                for row in 0..b {
                    let (text, answers) = task.bytes(mix(seed, row as u64), k * t, t + 1, 0);
                    push_task_row(&mut batch, row, &text, &answers);
                }
                Ok((batch, k == 0))
            }
            Corpus::Files { train, .. } => stream_windows(train.bytes(), "bytes", index, b, t),
            Corpus::Tokens { train, .. } => stream_windows(&train.ids, "tokens", index, b, t),
        }
    }

    /// Validation batch number `index`: the same for every run of this corpus. For
    /// files, `of` batches are spread evenly over the validation bytes.
    pub fn val_batch(&self, index: usize, of: usize, b: usize, t: usize) -> Batch {
        match self {
            Corpus::Synthetic(lang) => {
                synthetic_batch(lang, (0..b).map(|row| VAL_STREAM + (index * b + row) as u64), t)
            }
            Corpus::Task(task) => task_batch(*task, (0..b).map(|row| VAL_STREAM + (index * b + row) as u64), t),
            Corpus::Files { val, .. } => spread_windows(val.bytes(), index, of, b, t),
            Corpus::Tokens { val, .. } => spread_windows(&val.ids, index, of, b, t),
        }
    }

    /// A prompt for samples during training: the start of a validation document up
    /// to its first question (built-in corpus), or a line of the validation bytes.
    pub fn sample_prompt(&self) -> String {
        match self {
            Corpus::Synthetic(lang) => {
                let doc = lang.document(&mut rand_chacha::ChaCha8Rng::seed_from_u64(VAL_STREAM - 1));
                let end = doc.answers.first().map_or(doc.text.len(), |a| a.range.start);
                doc.text[..end].to_string()
            }
            Corpus::Task(task) => String::from_utf8_lossy(&task.window(VAL_STREAM - 1, 64).0).into_owned(),
            Corpus::Files { val, .. } | Corpus::Tokens { val: Tokenized { text: val, .. }, .. } => {
                let data = val.bytes();
                let start = data.iter().position(|&c| c == b'\n').map_or(0, |p| p + 1).min(data.len() - 1);
                let rest = &data[start..(start + 64).min(data.len())];
                let end = rest.iter().position(|&c| c == b'\n').map_or(rest.len(), |p| p + 1);
                String::from_utf8_lossy(&rest[..end]).into_owned()
            }
        }
    }

    /// Whether answers are marked (the built-in generator's language and tasks).
    pub fn has_answers(&self) -> bool {
        matches!(self, Corpus::Synthetic(_) | Corpus::Task(_))
    }

    /// What guessing at random scores on a task's answers (`None` but for a task).
    pub fn task_chance(&self) -> Option<f64> {
        match self {
            Corpus::Task(task) => Some(task.chance()),
            _ => None,
        }
    }
}

/// Bytes of one built-in stream's blocks (see [`Corpus::stream_batch`]).
pub const STREAM_BLOCK: usize = 16 * 1024;

/// `len` bytes of the built-in stream seeded `seed` from byte `at`, and the answers
/// that lie wholly inside (ranges of target positions, as in a batch).
fn stream_bytes(lang: &SyntheticLanguage, seed: u64, at: usize, len: usize) -> (Vec<u8>, Vec<Answer>) {
    let (mut text, mut answers) = (Vec::with_capacity(len), Vec::new());
    let mut pos = at;
    while text.len() < len {
        let (block, offset) = (pos / STREAM_BLOCK, pos % STREAM_BLOCK);
        let w = lang.window(mix(seed, block as u64), STREAM_BLOCK);
        let take = (STREAM_BLOCK - offset).min(len - text.len());
        let base = text.len();
        text.extend_from_slice(&w.text.as_bytes()[offset..offset + take]);
        for mut a in w.answers.into_iter().filter(|a| a.range.start >= offset.max(1) && a.range.end <= offset + take) {
            // A target position is the byte's position in this piece minus one.
            a.range = a.range.start - offset + base - 1..a.range.end - offset + base - 1;
            answers.push(a);
        }
        pos += take;
    }
    (text, answers)
}

fn synthetic_batch(lang: &SyntheticLanguage, seeds: impl Iterator<Item = u64>, t: usize) -> Batch {
    let mut batch = Batch::default();
    for (row, seed) in seeds.enumerate() {
        let w = lang.window(seed, t + 1);
        let bytes = w.text.as_bytes();
        batch.tokens.extend(bytes[..t].iter().map(|&x| x as u32));
        batch.targets.extend(bytes[1..].iter().map(|&x| x as u32));
        batch.answers.extend(w.answers.into_iter().map(|mut a| {
            a.range = a.range.start - 1..a.range.end - 1;
            (row, a)
        }));
    }
    batch
}

/// A batch of a task: row r a window of T + 1 bytes of the stream seeded by the
/// r-th seed ([`Task::window`]).
fn task_batch(task: Task, seeds: impl Iterator<Item = u64>, t: usize) -> Batch {
    let mut batch = Batch::default();
    for (row, seed) in seeds.enumerate() {
        let (text, answers) = task.window(seed, t + 1);
        push_task_row(&mut batch, row, &text, &answers);
    }
    batch
}

/// Appends row `row`, the T + 1 bytes `text` with answers at byte positions
/// `answers`, to `batch`: a target position is a byte's position minus one.
fn push_task_row(batch: &mut Batch, row: usize, text: &[u8], answers: &[usize]) {
    let t = text.len() - 1;
    batch.tokens.extend(text[..t].iter().map(|&x| x as u32));
    batch.targets.extend(text[1..].iter().map(|&x| x as u32));
    batch.scored.extend(answers.iter().filter(|&&p| p >= 1).map(|&p| (row, p - 1)));
}

/// The training and validation parts of a file (the first 90% and the last 10%),
/// or of two files.
fn split_files(train: &Path, val: Option<&Path>) -> Result<(BytesView, BytesView)> {
    let map = map_file(train)?;
    Ok(match val {
        Some(v) => (BytesView::new(map, None), BytesView::new(map_file(v)?, None)),
        None => {
            let (split, len) = (map.len() * 9 / 10, map.len());
            (BytesView::new(map.clone(), Some(0..split)), BytesView::new(map, Some(split..len)))
        }
    })
}

/// An error unless both parts, of `train` and `val` `unit`s, hold a block and its target.
fn check_parts(unit: &str, train: usize, val: usize, block: usize) -> Result<()> {
    for (what, len) in [("training", train), ("validation", val)] {
        if len < block + 1 {
            return Err(Error::Input(format!(
                "the {what} part of the data has {len} {unit}, fewer than one block of {block} + 1"
            )));
        }
    }
    Ok(())
}

/// B windows of a file's tokens (or bytes) at starts drawn from (seed, index).
fn random_windows<T: Copy + Into<u32>>(data: &[T], seed: u64, index: u64, rows: Range<usize>, t: usize) -> Batch {
    let span = (data.len() - t) as u64;
    let starts = rows.map(|row| (mix(mix(seed, index), row as u64) % span) as usize);
    windows_batch(data, starts, t)
}

/// Batch `index` of B streams: row r reads part r of B equal parts of `data`
/// (`unit`s), from its start again once used up; true where the parts start over.
fn stream_windows<T: Copy + Into<u32>>(
    data: &[T],
    unit: &str,
    index: u64,
    b: usize,
    t: usize,
) -> Result<(Batch, bool)> {
    let part = data.len() / b;
    if part < t + 1 {
        return Err(Error::Input(format!(
            "carrying the state, each of the {b} rows reads its own part of the training {unit}: {} {unit} \
             give parts of {part}, fewer than one block of {t} + 1",
            data.len()
        )));
    }
    let per_pass = ((part - 1) / t) as u64;
    let k = (index % per_pass) as usize;
    let starts = (0..b).map(|row| row * part + k * t);
    Ok((windows_batch(data, starts, t), k == 0))
}

/// Validation batch `index` of `of`: windows spread evenly over `data`.
fn spread_windows<T: Copy + Into<u32>>(data: &[T], index: usize, of: usize, b: usize, t: usize) -> Batch {
    let last = (of * b).saturating_sub(1).max(1);
    let span = data.len() - t - 1;
    let starts = (0..b).map(|row| (span * (index * b + row) / last).min(span));
    windows_batch(data, starts, t)
}

fn windows_batch<T: Copy + Into<u32>>(data: &[T], starts: impl Iterator<Item = usize>, t: usize) -> Batch {
    let mut batch = Batch::default();
    for s in starts {
        batch.tokens.extend(data[s..s + t].iter().map(|&x| x.into()));
        batch.targets.extend(data[s + 1..s + t + 1].iter().map(|&x| x.into()));
    }
    batch
}

/// Consecutive, non-overlapping windows of `t` + 1 tokens (or bytes) covering
/// `data` (the last shorter one dropped if under 2): the inputs and targets of an
/// evaluation over a whole file.
pub fn windows<T>(data: &[T], t: usize) -> impl Iterator<Item = (&[T], &[T])> {
    (0..data.len().saturating_sub(1)).step_by(t).map(move |s| {
        let end = (s + t).min(data.len() - 1);
        (&data[s..end], &data[s + 1..end + 1])
    })
}
