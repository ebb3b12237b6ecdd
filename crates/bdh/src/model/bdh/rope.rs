//! RoPE frequencies and per-position cos/sin, computed in f32 exactly as bdh.py does.

/// θ of bdh.py's `get_freqs`.
pub const ROPE_THETA: f32 = 65536.0;

/// bdh.py's `get_freqs(n, theta=2¹⁶)`: `freq_i = 1 / θ^(2⌊i/2⌋/n) / 2π`, in f32.
pub fn freqs(n: usize) -> Vec<f32> {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    (0..n)
        .map(|i| {
            let quantised = ((i as f32) / 2.0).floor() * 2.0;
            1.0 / ROPE_THETA.powf(quantised / n as f32) / two_pi
        })
        .collect()
}

/// The rotation angle's cosine and sine for position `t`, pair `j` (neurons 2j, 2j+1):
/// bdh.py's `phases = (t·freq mod 1)·2π`, every operation in f32.
pub fn cos_sin(t: usize, freq: f32) -> (f32, f32) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let p = t as f32 * freq;
    let phase = (p - p.floor()) * two_pi;
    (phase.cos(), phase.sin())
}

/// cos/sin tables for positions `start..start + t` and the n/2 pairs, laid out
/// (t, n/2), as the `rope` kernel reads them.
#[derive(Clone, Debug, Default)]
pub struct RopeTable {
    /// The first position.
    pub start: usize,
    /// cos, (T, N/2).
    pub cos: Vec<f32>,
    /// sin, (T, N/2).
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// Builds the table from the model's `freqs` (length N, pairs share a value).
    pub fn new(freqs: &[f32], start: usize, t: usize) -> Self {
        let half = freqs.len() / 2;
        let mut table = RopeTable { start, cos: Vec::with_capacity(t * half), sin: Vec::with_capacity(t * half) };
        for pos in start..start + t {
            for j in 0..half {
                let (c, s) = cos_sin(pos, freqs[2 * j]);
                table.cos.push(c);
                table.sin.push(s);
            }
        }
        table
    }
}
