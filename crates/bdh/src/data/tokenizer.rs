//! Tokens to text and back. Bytes are BDH's native tokens (V = 256), as in bdh.py.

/// How text becomes token ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tokenizer {
    /// One token per byte: ids 0..256.
    #[default]
    Bytes,
}

impl Tokenizer {
    /// Token ids of `text`.
    pub fn encode(&self, text: &[u8]) -> Vec<u32> {
        match self {
            Tokenizer::Bytes => text.iter().map(|&b| u32::from(b)).collect(),
        }
    }

    /// Appends the bytes of `token` to `out` (U+FFFD for an id with no bytes).
    pub fn decode_into(&self, token: u32, out: &mut Vec<u8>) {
        match self {
            Tokenizer::Bytes => match u8::try_from(token) {
                Ok(b) => out.push(b),
                Err(_) => out.extend_from_slice("\u{FFFD}".as_bytes()),
            },
        }
    }

    /// The bytes of `tokens`.
    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(tokens.len());
        tokens.iter().for_each(|&t| self.decode_into(t, &mut out));
        out
    }
}
