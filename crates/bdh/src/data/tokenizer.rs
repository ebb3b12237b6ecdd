//! Tokens to text and back. Bytes are BDH's native tokens (V = 256), as in bdh.py;
//! a byte-level BPE (a Hugging Face `tokenizer.json`) is the other choice.

use std::path::Path;

use super::bpe::Bpe;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::ModelConfig;

/// The file a run directory (or a checkpoint directory) keeps its tokenizer in.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What an id with no bytes decodes to: U+FFFD, the replacement character.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// How text becomes token ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Tokenizer {
    /// One token per byte: ids 0..256.
    #[default]
    Bytes,
    /// A byte-level BPE: every id decodes to a fixed string of bytes.
    Bpe(Bpe),
}

impl Tokenizer {
    /// The tokenizer file at `path` (see [`Bpe::load`]).
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Tokenizer::Bpe(Bpe::load(path)?))
    }

    /// Writes a BPE's file into `dir` as [`TOKENIZER_FILE`] (bytes need none).
    pub fn save(&self, dir: &Path) -> Result<()> {
        match self {
            Tokenizer::Bytes => Ok(()),
            Tokenizer::Bpe(b) => write_atomic(&dir.join(TOKENIZER_FILE), b.json().as_bytes()),
        }
    }

    /// V: the number of token ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Bpe(b) => b.vocab_size(),
        }
    }

    /// An error unless a model of `model`'s vocabulary was trained with this tokenizer.
    pub fn check(&self, model: &ModelConfig) -> Result<()> {
        let (m, t) = (model.vocab_size(), self.vocab_size());
        match self {
            Tokenizer::Bpe(_) if m != t => Err(Error::Config(format!(
                "the model's vocabulary has {m} tokens and the tokenizer's {t}: a model runs only with the \
                 tokenizer it was trained with"
            ))),
            Tokenizer::Bytes if m > t => Err(Error::Config(format!(
                "the model's vocabulary has {m} tokens, more than the 256 bytes: it was trained with a \
                 tokenizer; give it (--tokenizer FILE)"
            ))),
            _ => Ok(()),
        }
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &[u8]) -> Vec<u32> {
        match self {
            Tokenizer::Bytes => text.iter().map(|&b| u32::from(b)).collect(),
            Tokenizer::Bpe(b) => b.encode(text),
        }
    }

    /// Appends the bytes of `token` to `out` (U+FFFD for an id with no bytes). A
    /// BPE token may end inside a multi-byte character: whole text is the bytes
    /// of a run of tokens.
    pub fn decode_into(&self, token: u32, out: &mut Vec<u8>) {
        match self {
            Tokenizer::Bytes => match u8::try_from(token) {
                Ok(b) => out.push(b),
                Err(_) => out.extend_from_slice(REPLACEMENT),
            },
            Tokenizer::Bpe(b) => out.extend_from_slice(b.piece(token).unwrap_or(REPLACEMENT)),
        }
    }

    /// The bytes of `tokens`.
    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(tokens.len());
        tokens.iter().for_each(|&t| self.decode_into(t, &mut out));
        out
    }

    /// How many bytes `tokens` decode to: what bits per byte divides by.
    pub fn bytes_of(&self, tokens: &[u32]) -> usize {
        match self {
            Tokenizer::Bytes => tokens.iter().map(|&t| if t < 256 { 1 } else { REPLACEMENT.len() }).sum(),
            Tokenizer::Bpe(b) => tokens.iter().map(|&t| b.piece(t).map_or(REPLACEMENT.len(), <[u8]>::len)).sum(),
        }
    }
}
