//! Mutations of an input: the kinds of damage that find parser bugs in files
//! (sizes and counts made extreme, structure duplicated or cut, files spliced).

/// A small deterministic generator (SplitMix64): a run is replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Small numbers much more often than large ones: `0..n`, log-uniform.
    pub fn small(&mut self, n: usize) -> usize {
        let bits = self.below(usize::BITS as usize - n.leading_zeros() as usize + 1);
        self.below(n.min(1 << bits).max(1))
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Numbers as text that sit on the edges of integer and float types.
const TEXT_NUMBERS: [&str; 24] = [
    "0",
    "-0",
    "-1",
    "1",
    "255",
    "256",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "1099511627776",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "1e308",
    "1e999",
    "-1e999",
    "nan",
    "inf",
    "0.5",
];

/// The same edges as little-endian binary integers.
const BINARY_NUMBERS: [u64; 12] =
    [0, 1, 0x7f, 0x80, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 40, 1 << 62, i64::MAX as u64, u64::MAX];

/// Fragments of the formats under test (JSON, TOML, pickle opcodes, zip signatures).
const TOKENS: [&[u8]; 22] = [
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b",",
    b"=",
    b"\n[model]\n",
    b"\"dtype\":\"F64\"",
    b"\"shape\":[",
    b"null",
    b"true",
    b"(h\x00h\x00lq\x00", // pickle: a list of two copies of memo 0, memoised
    b"\x85",              // pickle TUPLE1
    b"(",                 // pickle MARK
    b"h\x00",             // pickle BINGET 0
    b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"PK\x01\x02",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\xff\xff\xff\xff",
];

/// `input` changed by one to four mutations, spliced with `others` at times, at
/// most `max_len` bytes long.
pub fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(10) {
            0 => flip_bit(rng, &mut out),
            1 => set_byte(rng, &mut out),
            2 => insert_bytes(rng, &mut out),
            3 => delete_range(rng, &mut out),
            4 if !others.is_empty() => {
                let other = rng.pick(others);
                splice(rng, &mut out, other)
            }
            5 => replace_text_number(rng, &mut out),
            6 => replace_binary_number(rng, &mut out),
            7 => duplicate_chunk(rng, &mut out, max_len),
            8 => insert_token(rng, &mut out),
            // 9, and 4 with nothing to splice: numbers in text are the richest vein.
            _ => replace_text_number(rng, &mut out),
        }
    }
    out.truncate(max_len);
    out
}

fn flip_bit(rng: &mut Rng, out: &mut [u8]) {
    if !out.is_empty() {
        let i = rng.below(out.len());
        out[i] ^= 1 << rng.below(8);
    }
}

fn set_byte(rng: &mut Rng, out: &mut [u8]) {
    if !out.is_empty() {
        let i = rng.below(out.len());
        let random = rng.next_u64() as u8;
        out[i] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, random]);
    }
}

fn insert_bytes(rng: &mut Rng, out: &mut Vec<u8>) {
    let at = rng.below(out.len() + 1);
    let n = 1 + rng.small(16);
    let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    out.splice(at..at, bytes);
}

fn delete_range(rng: &mut Rng, out: &mut Vec<u8>) {
    if !out.is_empty() {
        let at = rng.below(out.len());
        let n = 1 + rng.small(out.len() - at);
        out.drain(at..(at + n).min(out.len()));
    }
}

/// The start of `out` joined to the end of `other`, cut at random places.
fn splice(rng: &mut Rng, out: &mut Vec<u8>, other: &[u8]) {
    let keep = rng.below(out.len() + 1);
    let from = rng.below(other.len() + 1);
    out.truncate(keep);
    out.extend_from_slice(&other[from..]);
}

/// One run of ASCII digits (with a sign or a fraction, if any) replaced by an extreme number.
fn replace_text_number(rng: &mut Rng, out: &mut Vec<u8>) {
    let starts: Vec<usize> =
        (0..out.len()).filter(|&i| out[i].is_ascii_digit() && (i == 0 || !out[i - 1].is_ascii_digit())).collect();
    if starts.is_empty() {
        return;
    }
    let mut at = *rng.pick(&starts);
    let mut end = at;
    while end < out.len() && (out[end].is_ascii_digit() || out[end] == b'.' || out[end] == b'e') {
        end += 1;
    }
    if at > 0 && out[at - 1] == b'-' {
        at -= 1;
    }
    out.splice(at..end, rng.pick(&TEXT_NUMBERS).bytes());
}

/// 1, 2, 4 or 8 bytes somewhere overwritten by an extreme little-endian integer.
fn replace_binary_number(rng: &mut Rng, out: &mut [u8]) {
    let width = 1 << rng.below(4);
    if out.len() < width {
        return;
    }
    let at = rng.below(out.len() - width + 1);
    let value = *rng.pick(&BINARY_NUMBERS);
    out[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

/// A chunk copied in place 1 to 2¹⁰ times over: repeated structure (nesting, memo
/// doubling, many entries) within the size limit.
fn duplicate_chunk(rng: &mut Rng, out: &mut Vec<u8>, max_len: usize) {
    if out.is_empty() {
        return;
    }
    let at = rng.below(out.len());
    let n = 1 + rng.small((out.len() - at).min(64));
    let chunk = out[at..at + n].to_vec();
    let times = (1usize << rng.below(11)).min(max_len.saturating_sub(out.len()) / n);
    out.splice(at..at, chunk.iter().copied().cycle().take(n * times));
}

fn insert_token(rng: &mut Rng, out: &mut Vec<u8>) {
    let at = rng.below(out.len() + 1);
    out.splice(at..at, rng.pick(&TOKENS).iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_size_limit() {
        let mut rng = Rng::new(7);
        let seed = br#"{"n_layer": 2, "shape": [256, 32]}"#.to_vec();
        for _ in 0..10_000 {
            let m = mutate(&mut rng, &seed, std::slice::from_ref(&seed), 4096);
            assert!(m.len() <= 4096);
        }
    }

    #[test]
    fn text_numbers_are_replaced_whole() {
        let mut rng = Rng::new(1);
        let mut s = b"x = -12.5e3".to_vec();
        replace_text_number(&mut rng, &mut s);
        assert!(s.starts_with(b"x = ") && !s.ends_with(b"e3"), "{}", String::from_utf8_lossy(&s));
    }
}
