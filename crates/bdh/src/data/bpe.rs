//! Byte-level BPE tokenizers in the Hugging Face `tokenizer.json` format: read
//! (checked, so every byte string encodes and decodes back exactly), used, and
//! trained on a text.
//!
//! Each token id decodes to a fixed string of bytes (its *piece*), so a model's
//! output can be turned into bytes one token at a time, and the bytes a run of
//! tokens covers — what bits per byte divides by — is the sum of their pieces'
//! lengths.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::error::{Error, Result};

/// Largest `tokenizer.json` read (a 150 k-token vocabulary takes about 10 MB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Largest vocabulary (tokens) a tokenizer may have.
pub const MAX_VOCAB: usize = 1 << 20;

/// The 256 bytes a byte-level tokenizer starts from: every token is made of them.
const BYTES: usize = 256;

/// Text encoded at once, at most: a longer text is encoded in pieces cut after a
/// newline, so the tokenizer's working memory stays bounded whatever the length.
const PIECE_BYTES: usize = 1 << 16;

/// A byte-level BPE tokenizer, cheap to clone.
#[derive(Clone)]
pub struct Bpe(Arc<Inner>);

struct Inner {
    /// The tokenizer itself.
    hf: tokenizers::Tokenizer,
    /// The bytes of every token id, 0..V.
    pieces: Vec<Box<[u8]>>,
    /// The id of each single-byte token, for bytes that are not UTF-8.
    byte_ids: [u32; BYTES],
    /// The file's text, written again as a run's `tokenizer.json`.
    json: String,
}

impl std::fmt::Debug for Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bpe {{ vocab_size: {} }}", self.vocab_size())
    }
}

impl PartialEq for Bpe {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.json == other.0.json
    }
}

impl Eq for Bpe {}

impl Bpe {
    /// Reads and checks `tokenizer.json` at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::io::read_bounded(path, MAX_FILE_BYTES)?;
        let json = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            Error::format(path, format!("not a Hugging Face tokenizer file: not UTF-8 text (at byte {at})"))
        })?;
        Bpe::from_json(json).map_err(|msg| Error::format(path, msg))
    }

    /// Checks a tokenizer's JSON text; the error says what is wrong with it.
    fn from_json(json: String) -> std::result::Result<Self, String> {
        let not_a_file = |e: &dyn std::fmt::Display| format!("not a Hugging Face tokenizer file: {e}");
        // The `tokenizers` crate panics on some malformed JSON (inside a decoder):
        // its syntax is checked first, and a panic it still makes is an error too.
        let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| not_a_file(&e))?;
        keeps_bytes(&value)?;
        let checked = quietly(|| Bpe::check(json));
        checked.unwrap_or_else(|_| Err(not_a_file(&"the tokenizers library failed on it")))
    }

    /// [`Bpe::from_json`] past the syntax check.
    fn check(json: String) -> std::result::Result<Self, String> {
        let mut hf: tokenizers::Tokenizer =
            json.parse().map_err(|e| format!("not a Hugging Face tokenizer file: {e}"))?;
        // A model reads and writes whole texts: never cut or pad them.
        hf.with_truncation(None).map_err(|e| e.to_string())?;
        hf.with_padding(None);
        if !matches!(hf.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err("bdh reads byte-level BPE tokenizers (a `ByteLevel` decoder, as GPT-2's and \
                        `bdh tokenizer train`'s have), so that every token is a string of bytes; this one's \
                        decoder is another"
                .into());
        }
        let vocab = hf.get_vocab(true);
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if vocab.len() < BYTES || size > MAX_VOCAB {
            return Err(format!(
                "a vocabulary of {} tokens, ids below {size}: need 256 (one per byte) to {MAX_VOCAB}",
                vocab.len()
            ));
        }
        let added: HashMap<u32, String> =
            hf.get_added_tokens_decoder().into_iter().map(|(id, t)| (id, t.content)).collect();
        let to_byte: HashMap<char, u8> = byte_chars().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let mut pieces = Vec::with_capacity(size);
        for id in 0..size as u32 {
            let piece: Vec<u8> = match added.get(&id) {
                Some(content) => content.as_bytes().to_vec(),
                None => {
                    let token = hf.id_to_token(id).ok_or_else(|| {
                        format!("token ids must run from 0 to {} without gaps; id {id} has no token", size - 1)
                    })?;
                    token
                        .chars()
                        .map(|c| to_byte.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| format!("token {id} ({token:?}) is not made of byte-level characters"))?
                }
            };
            if piece.is_empty() {
                return Err(format!("token {id} decodes to nothing"));
            }
            pieces.push(piece.into_boxed_slice());
        }
        let mut byte_ids = [0u32; BYTES];
        for (b, c) in byte_chars().iter().enumerate() {
            byte_ids[b] = hf.token_to_id(&c.to_string()).ok_or_else(|| {
                format!(
                    "no token for byte {b:#04x}: a byte-level tokenizer needs one per byte, so that every text encodes"
                )
            })?;
        }
        Ok(Bpe(Arc::new(Inner { hf, pieces, byte_ids, json })))
    }

    /// V: the number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.0.pieces.len()
    }

    /// The bytes token `id` decodes to, if it is one.
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.0.pieces.get(id as usize).map(|p| &p[..])
    }

    /// The file's JSON text.
    pub fn json(&self) -> &str {
        &self.0.json
    }

    /// Token ids of any bytes: UTF-8 runs through the tokenizer, other bytes as
    /// their single-byte tokens, so that decoding gives `text` back exactly. A long
    /// text is encoded in pieces cut after a newline, on every core.
    pub fn encode(&self, text: &[u8]) -> Vec<u32> {
        let pieces: Vec<&[u8]> = newline_pieces(text, PIECE_BYTES).collect();
        pieces.par_iter().map(|piece| self.encode_piece(piece)).collect::<Vec<_>>().concat()
    }

    fn encode_piece(&self, piece: &[u8]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(piece.len() / 2);
        for chunk in piece.utf8_chunks() {
            let valid = chunk.valid();
            if !valid.is_empty() {
                match self.0.hf.encode_fast(valid, false) {
                    Ok(e) => ids.extend_from_slice(e.get_ids()),
                    // Byte by byte is still an exact encoding, only a longer one.
                    Err(_) => ids.extend(valid.bytes().map(|b| self.0.byte_ids[b as usize])),
                }
            }
            ids.extend(chunk.invalid().iter().map(|&b| self.0.byte_ids[b as usize]));
        }
        ids
    }

    /// Trains a byte-level BPE of at most `vocab_size` tokens (256 bytes and the
    /// merges learnt from `text`, most frequent first) on the UTF-8 `text`, read
    /// line by line.
    pub fn train(text: &[u8], vocab_size: usize) -> Result<Self> {
        if !(BYTES..=MAX_VOCAB).contains(&vocab_size) {
            return Err(Error::Config(format!(
                "a vocabulary of {vocab_size}: need 256 (one token per byte) to {MAX_VOCAB}"
            )));
        }
        if text.len() > super::MAX_TOKENIZED_BYTES {
            return Err(Error::Input(format!(
                "{} bytes of text: a tokenizer trains on at most {}",
                text.len(),
                super::MAX_TOKENIZED_BYTES
            )));
        }
        let text = std::str::from_utf8(text)
            .map_err(|e| Error::Input(format!("the text is not UTF-8 (at byte {})", e.valid_up_to())))?;
        let mut hf = tokenizers::Tokenizer::new(BPE::default());
        // No prefix space, so a text's tokens decode to exactly that text.
        let byte_level = ByteLevel::new(false, true, true);
        hf.with_pre_tokenizer(Some(byte_level));
        hf.with_decoder(Some(byte_level));
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect::<HashSet<char>>())
            .build()
            .into();
        hf.train(&mut trainer, text.split_inclusive('\n'))
            .map_err(|e| Error::Input(format!("training the tokenizer: {e}")))?;
        let json = hf.to_string(true).map_err(|e| Error::Input(format!("writing the tokenizer: {e}")))?;
        Bpe::from_json(json).map_err(|msg| Error::Input(format!("the trained tokenizer: {msg}")))
    }
}

/// Runs `f`, catching a panic without the panic hook printing it: the caller turns
/// it into an error of its own. Other threads' panics still print.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    use std::cell::Cell;
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let printing = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                printing(info)
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result
}

/// An error unless the tokenizer in `json` maps every byte string to tokens whose
/// pieces are that string, the same way every time. This is decided from the
/// file's parts, each of which must be one known to keep every byte: no
/// normalizer; pre-tokenizers that only split (one `ByteLevel` without a prefix
/// space, `Split`, `Digits` and `Punctuation` that do not remove what they match);
/// a BPE without dropout and without subword prefixes or suffixes; added tokens
/// that take no space beside them; no post-processor but the byte-level one. A
/// probe text could not show this: a normalizer changes only the texts it
/// matches.
fn keeps_bytes(json: &serde_json::Value) -> std::result::Result<(), String> {
    let refuse = |part: &str, what: String| {
        Err(format!(
            "its {part} {what}, which changes text or is not the same every time; bdh reads tokenizers \
             that give every text back exactly (no normalizer, byte-level pre-tokenizer and decoder, a BPE \
             without dropout)"
        ))
    };
    let kind = |v: &serde_json::Value| v["type"].as_str().unwrap_or("of no known type").to_string();
    if !json["normalizer"].is_null() {
        return refuse("normalizer", format!("is {}", kind(&json["normalizer"])));
    }
    let pre = &json["pre_tokenizer"];
    let parts = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"].as_array().cloned().unwrap_or_default(),
        _ => vec![pre.clone()],
    };
    let mut byte_levels = 0;
    for p in &parts {
        let behavior = p["behavior"].as_str().unwrap_or("");
        match p["type"].as_str() {
            Some("ByteLevel") if p["add_prefix_space"].as_bool() != Some(true) => byte_levels += 1,
            Some("ByteLevel") => return refuse("pre-tokenizer", "ByteLevel adds a space before the text".into()),
            Some("Split" | "Punctuation") if behavior == "Removed" => {
                return refuse("pre-tokenizer", format!("{} removes what it matches", kind(p)))
            }
            Some("Split" | "Punctuation" | "Digits") => {}
            _ => return refuse("pre-tokenizer", format!("is {}", kind(p))),
        }
    }
    if byte_levels != 1 {
        return refuse("pre-tokenizer", format!("has {byte_levels} ByteLevel parts, not one"));
    }
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return refuse("model", format!("is {}, not BPE", kind(model)));
    }
    if !model["dropout"].is_null() {
        return refuse("model", format!("has dropout {}", model["dropout"]));
    }
    for affix in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model[affix].as_str().is_some_and(|s| !s.is_empty()) {
            return refuse("model", format!("has a {affix} {}", model[affix]));
        }
    }
    let post = &json["post_processor"];
    if !post.is_null() && post["type"].as_str() != Some("ByteLevel") {
        return refuse("post-processor", format!("is {}", kind(post)));
    }
    let stripping = json["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["lstrip"].as_bool() == Some(true) || t["rstrip"].as_bool() == Some(true));
    if let Some(t) = stripping {
        return refuse("added token", format!("{} takes the space beside it", t["content"]));
    }
    Ok(())
}

/// GPT-2's map of bytes to printable characters (its `bytes_to_unicode`), which
/// byte-level tokens are written in: printable ASCII and Latin-1 stand for
/// themselves, every other byte for a character from U+0100 on.
fn byte_chars() -> [char; BYTES] {
    let mut chars = ['\0'; BYTES];
    let mut next = 256u32;
    for (b, c) in chars.iter_mut().enumerate() {
        let printable = matches!(b as u8, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *c = char::from_u32(code).expect("below U+0200, a character");
    }
    chars
}

/// `text` cut into pieces of `size` to `2·size` bytes, each ending after a newline
/// where there is one (a cut there is between two words for every usual
/// pre-tokenizer; elsewhere the bytes either side still decode back exactly).
fn newline_pieces(text: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = if rest.len() <= 2 * size {
            rest.len()
        } else {
            rest[size..2 * size].iter().position(|&b| b == b'\n').map_or(2 * size, |p| size + p + 1)
        };
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    /// Set in the child process of [`a_caught_panic_prints_nothing`].
    const CHILD: &str = "BDH_QUIETLY_CHILD";

    /// A panic inside `quietly` is an error and prints nothing, while one outside
    /// it still prints. Run in a process of its own (this test binary again), whose
    /// panic hook is the default one that prints.
    #[test]
    fn a_caught_panic_prints_nothing() {
        if std::env::var_os(CHILD).is_some() {
            assert!(super::quietly(|| panic!("inside quietly")).is_err());
            let outside = std::thread::spawn(|| panic!("outside quietly")).join();
            assert!(outside.is_err());
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "data::bpe::tests::a_caught_panic_prints_nothing", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("outside quietly"), "a panic outside should print: {stderr}");
        assert!(!stderr.contains("inside quietly"), "a caught panic printed: {stderr}");
    }
}
