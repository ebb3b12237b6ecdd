//! A small synthetic language whose questions can only be answered from context.
//!
//! Each document states a few facts about people ("ada lives in oslo."), talks
//! about other things for a while (a little grammar with number agreement, so the
//! weights have something to learn), then asks about the facts and answers them
//! ("where does ada live? ada lives in oslo."). Who lives where is drawn afresh for every
//! document, so the answer is nowhere in the weights: a model must hold the fact in
//! its in-context memory, the synapse state ρ, from statement to question.

use std::ops::Range;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

const NAMES: [&str; 24] = [
    "ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kit", "lu", "max", "ned", "oz", "pia", "quin",
    "ray", "sol", "tam", "uma", "vic", "wes", "zed",
];
const PLACES: [&str; 16] = [
    "paris", "lima", "oslo", "cairo", "delhi", "tokyo", "rome", "quito", "kyiv", "seoul", "hanoi", "bern", "doha",
    "riga", "accra", "sofia",
];
const COLORS: [&str; 10] = ["red", "blue", "green", "gold", "grey", "pink", "black", "white", "teal", "brown"];
const NOUNS: [(&str, &str); 8] = [
    ("dog", "dogs"),
    ("cat", "cats"),
    ("bird", "birds"),
    ("fox", "foxes"),
    ("child", "children"),
    ("farmer", "farmers"),
    ("horse", "horses"),
    ("sailor", "sailors"),
];
const VERBS: [(&str, &str); 6] = [
    ("sees", "see"),
    ("follows", "follow"),
    ("likes", "like"),
    ("finds", "find"),
    ("helps", "help"),
    ("watches", "watch"),
];
const ADJECTIVES: [&str; 8] = ["small", "old", "quick", "quiet", "happy", "tired", "brave", "lazy"];
const THINGS: [&str; 6] = ["river", "hill", "market", "forest", "bridge", "harbor"];

/// Knobs of the generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Facts stated (and later asked about) per document.
    pub facts: usize,
    /// Filler sentences between the last fact and the first question.
    pub distance: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig { facts: 3, distance: 2 }
    }
}

/// One document and where its answers are.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The text, ending with a newline.
    pub text: String,
    /// Byte ranges of the answer words.
    pub answers: Vec<Range<usize>>,
}

/// A fact: who, which relation, and the value.
#[derive(Clone, Copy)]
enum Fact {
    LivesIn(&'static str, &'static str),
    Likes(&'static str, &'static str),
}

impl Fact {
    fn statement(self) -> String {
        match self {
            Fact::LivesIn(n, p) => format!("{n} lives in {p}."),
            Fact::Likes(n, c) => format!("{n} likes {c}."),
        }
    }
    /// The question, the start of its answer sentence, and the answer word: the
    /// answer restates the fact ("where does ada live? ada lives in oslo."), so the
    /// word to recall follows the same words as where it was stated.
    fn question(self) -> (String, &'static str) {
        match self {
            Fact::LivesIn(n, p) => (format!("where does {n} live? {n} lives in"), p),
            Fact::Likes(n, c) => (format!("what color does {n} like? {n} likes"), c),
        }
    }
}

/// Generates documents of the synthetic language.
#[derive(Clone, Debug)]
pub struct SyntheticLanguage {
    /// The knobs.
    pub config: SyntheticConfig,
}

impl SyntheticLanguage {
    /// A generator with these knobs.
    pub fn new(config: SyntheticConfig) -> Self {
        SyntheticLanguage { config }
    }

    /// The document drawn from `rng`.
    pub fn document(&self, rng: &mut impl Rng) -> Document {
        let facts_n = self.config.facts.min(NAMES.len());
        let names: Vec<&str> = NAMES.choose_multiple(rng, facts_n).copied().collect();
        let facts: Vec<Fact> = names
            .iter()
            .map(|&n| {
                if rng.random_bool(0.5) {
                    Fact::LivesIn(n, PLACES.choose(rng).expect("non-empty"))
                } else {
                    Fact::Likes(n, COLORS.choose(rng).expect("non-empty"))
                }
            })
            .collect();
        let mut sentences: Vec<String> = Vec::new();
        for f in &facts {
            sentences.push(f.statement());
            if rng.random_bool(0.5) {
                sentences.push(filler(rng));
            }
        }
        for _ in 0..self.config.distance {
            sentences.push(filler(rng));
        }
        let mut text = sentences.join(" ");
        let mut order: Vec<usize> = (0..facts.len()).collect();
        order.shuffle(rng);
        let mut answers = Vec::new();
        for i in order {
            let (q, a) = facts[i].question();
            text.push(' ');
            text.push_str(&q);
            text.push(' ');
            answers.push(text.len()..text.len() + a.len());
            text.push_str(a);
            text.push('.');
        }
        text.push('\n');
        Document { text, answers }
    }

    /// `len` bytes of consecutive documents from `seed`, starting at a document
    /// boundary, with the answers that lie wholly inside.
    pub fn window(&self, seed: u64, len: usize) -> Document {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Document { text: String::with_capacity(len + 256), answers: Vec::new() };
        while out.text.len() < len {
            let doc = self.document(&mut rng);
            let base = out.text.len();
            out.answers.extend(doc.answers.iter().map(|r| r.start + base..r.end + base).filter(|r| r.end <= len));
            out.text.push_str(&doc.text);
        }
        out.text.truncate(len);
        out
    }
}

/// A noun phrase: "the [adjective] noun", singular or plural.
fn noun_phrase<R: Rng + ?Sized>(rng: &mut R, plural: bool) -> String {
    let (s, p) = *NOUNS.choose(rng).expect("non-empty");
    let noun = if plural { p } else { s };
    if rng.random_bool(0.4) {
        format!("the {} {noun}", ADJECTIVES.choose(rng).expect("non-empty"))
    } else {
        format!("the {noun}")
    }
}

/// A sentence of the filler grammar, with subject–verb number agreement.
fn filler<R: Rng + ?Sized>(rng: &mut R) -> String {
    let plural = rng.random_bool(0.5);
    let subject = noun_phrase(rng, plural);
    let (vs, vp) = *VERBS.choose(rng).expect("non-empty");
    let verb = if plural { vp } else { vs };
    if rng.random_bool(0.3) {
        format!("{subject} {verb} the {}.", THINGS.choose(rng).expect("non-empty"))
    } else {
        let object_plural = rng.random_bool(0.5);
        format!("{subject} {verb} {}.", noun_phrase(rng, object_plural))
    }
}
