//! A small synthetic language whose questions can only be answered from context.
//!
//! Two kinds of documents. A *story* states a few facts about people ("ada lives in
//! oslo."), talks about other things for a while (a little grammar with number
//! agreement, so the weights have something to learn), then asks about the facts and
//! answers them ("where does ada live? ada lives in oslo."). A *list* is associative
//! recall in the style of the multi-query associative recall benchmark: pairs, then
//! the same keys again in another order, each followed by its value ("ada oslo, bo red;
//! bo red, ada oslo."). Who lives where is drawn afresh for every document, so the
//! answer is nowhere in the weights: a model must hold the fact in its in-context
//! memory, the synapse state ρ, from statement to question.

use std::ops::Range;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

const NAMES: [&str; 24] = [
    "ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kit", "lu", "max", "ned", "oz", "pia", "quin",
    "ray", "sol", "tam", "uma", "vic", "wes", "zed",
];
/// How many people the language names: a document states at most this many facts
/// (those asked about and the distractors of both kinds).
pub const PEOPLE: usize = NAMES.len();
const PLACES: [&str; 16] = [
    "paris", "lima", "oslo", "cairo", "delhi", "tokyo", "rome", "quito", "kyiv", "seoul", "hanoi", "bern", "doha",
    "riga", "accra", "sofia",
];
const COLORS: [&str; 11] = ["red", "tan", "blue", "green", "gold", "grey", "pink", "black", "white", "teal", "brown"];
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
    /// Most facts stated (and later asked about) per document.
    pub facts: usize,
    /// Fewest facts per document: each document draws its number uniformly from
    /// `min_facts..=facts`.
    pub min_facts: usize,
    /// Filler sentences between a story's last fact and its first question.
    pub distance: usize,
    /// Fraction of documents that are lists rather than stories, in [0, 1].
    #[serde(default)]
    pub lists: f64,
    /// Most facts stated and never asked about, per kind asked about in the
    /// document (each document draws its number uniformly from
    /// `min_distractors..=distractors`): values a strategy that binds nothing
    /// cannot tell from the answers.
    pub distractors: usize,
    /// Fewest distractors per kind asked about (a run config without it:
    /// `distractors`, see `DataConfig`).
    pub min_distractors: usize,
}

impl Default for SyntheticConfig {
    /// The corpus of the default run (`configs/recall.toml`).
    fn default() -> Self {
        SyntheticConfig { facts: 4, min_facts: 1, distance: 1, lists: 0.75, distractors: 0, min_distractors: 0 }
    }
}

/// One document and where its answers are.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The text, ending with a newline.
    pub text: String,
    /// The answers, in the order they appear.
    pub answers: Vec<Answer>,
}

/// Where an answer is and how hard it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Byte range of the answer word.
    pub range: Range<usize>,
    /// Facts asked about in its document (each stated; distractors, stated and
    /// never asked about, not counted).
    pub facts: usize,
    /// Distinct values of the answer's kind (places or colors) stated in its
    /// document: copying one of them at random is right 1 time in `choices`.
    pub choices: usize,
    /// How often copying, at random, a stated value of the answer's kind that no
    /// earlier answer of the document gave is right: a strategy that binds nothing
    /// but remembers what it has answered (the last question of each kind is then
    /// always right). 0 when the value was already given for another key.
    pub eliminate: f64,
    /// Whether no earlier answer of the document is of the same kind: here
    /// elimination cannot help, and `1 / choices` is the best a strategy that
    /// binds nothing can do.
    pub first_of_kind: bool,
    /// Whether the document is a list (else a story).
    pub list: bool,
    /// What the answer is.
    pub kind: Kind,
}

impl Answer {
    /// How often copying at random a stated value of the answer's kind is right.
    pub fn copy_chance(&self) -> f64 {
        1.0 / self.choices.max(1) as f64
    }
}

/// The kinds of facts, by their values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Where someone lives ("ada lives in oslo.").
    Place,
    /// Which color someone likes ("ada likes red.").
    Color,
}

impl Kind {
    /// Every value of this kind.
    pub fn values(self) -> &'static [&'static str] {
        match self {
            Kind::Place => &PLACES,
            Kind::Color => &COLORS,
        }
    }

    /// The other kind.
    pub fn other(self) -> Kind {
        match self {
            Kind::Place => Kind::Color,
            Kind::Color => Kind::Place,
        }
    }
}

/// Two texts that differ in one stated value: the model should answer
/// `clean_value` after `clean` and `corrupt_value` after `corrupted`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The clean text, up to the answer.
    pub clean: String,
    /// The same text with the one value changed.
    pub corrupted: String,
    /// The clean answer.
    pub clean_value: &'static str,
    /// The corrupted answer (same length, another first byte).
    pub corrupt_value: &'static str,
    /// Their kind.
    pub kind: Kind,
}

/// A fact: who, which relation, and the value.
#[derive(Clone, Copy, PartialEq)]
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
    /// The question and the start of its answer sentence: the answer restates the
    /// fact ("where does ada live? ada lives in oslo."), so the word to recall
    /// follows the same words as where it was stated.
    fn question(self) -> String {
        match self {
            Fact::LivesIn(n, _) => format!("where does {n} live? {n} lives in"),
            Fact::Likes(n, _) => format!("what color does {n} like? {n} likes"),
        }
    }
    fn new(kind: Kind, name: &'static str, value: &'static str) -> Fact {
        match kind {
            Kind::Place => Fact::LivesIn(name, value),
            Kind::Color => Fact::Likes(name, value),
        }
    }
    fn kind(self) -> Kind {
        match self {
            Fact::LivesIn(..) => Kind::Place,
            Fact::Likes(..) => Kind::Color,
        }
    }
    fn with_value(self, value: &'static str) -> Fact {
        Fact::new(self.kind(), self.pair().0, value)
    }
    /// The key and value of the fact in a list.
    fn pair(self) -> (&'static str, &'static str) {
        match self {
            Fact::LivesIn(n, v) | Fact::Likes(n, v) => (n, v),
        }
    }
    /// Distinct values of this fact's kind among `facts`.
    fn choices(self, facts: &[Fact]) -> usize {
        self.values_of_kind(facts).len()
    }

    /// Distinct values of this fact's kind among `facts`, sorted.
    fn values_of_kind(self, facts: &[Fact]) -> Vec<&'static str> {
        let same = |f: &&Fact| f.kind() == self.kind();
        let mut values: Vec<&str> = facts.iter().filter(same).map(|f| f.pair().1).collect();
        values.sort_unstable();
        values.dedup();
        values
    }

    /// Asked about after the answers `given`: how often copying at random one of the
    /// distinct values of this kind stated in `facts` and not given yet is right
    /// (when all were given, one of them all), and whether none of `given` is of
    /// this kind.
    fn elimination(self, facts: &[Fact], given: &[&str]) -> (f64, bool) {
        let values = self.values_of_kind(facts);
        let first = !given.iter().any(|g| values.contains(g));
        let left: Vec<&str> = values.iter().copied().filter(|v| !given.contains(v)).collect();
        let pool = if left.is_empty() { &values } else { &left };
        let right = if pool.contains(&self.pair().1) { 1.0 / pool.len() as f64 } else { 0.0 };
        (right, first)
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
        let (facts, asked) = self.facts(rng);
        let list = rng.random_bool(self.config.lists.clamp(0.0, 1.0));
        self.render(&facts, asked, list, rng).0
    }

    /// A clean and a corrupted document (a list or a story, as the knobs draw) that
    /// differ in the value of one stated fact only, both cut right before the
    /// answer to the question about it, and the two values. The values have the same length and different first bytes, so the
    /// texts have the same length and the first byte of the answer tells them apart.
    pub fn pair(&self, rng: &mut impl Rng) -> Pair {
        let (facts, asked) = self.facts(rng);
        let which = rng.random_range(0..asked);
        let (clean_value, kind) = (facts[which].pair().1, facts[which].kind());
        let others: Vec<&str> = kind
            .values()
            .iter()
            .copied()
            .filter(|v| v.len() == clean_value.len() && v.as_bytes()[0] != clean_value.as_bytes()[0])
            .collect();
        let corrupt_value = *others.choose(rng).expect("every value has a same-length partner");
        let mut corrupted = facts.clone();
        corrupted[which] = facts[which].with_value(corrupt_value);
        let layout = rng.random::<u64>();
        let list = rng.random_bool(self.config.lists.clamp(0.0, 1.0));
        let cut = |facts: &[Fact]| {
            let (doc, order) = self.render(facts, asked, list, &mut ChaCha8Rng::seed_from_u64(layout));
            let asked = order.iter().position(|&i| i == which).expect("every fact is asked about");
            doc.text[..doc.answers[asked].range.start].to_string()
        };
        Pair { clean: cut(&facts), corrupted: cut(&corrupted), clean_value, corrupt_value, kind }
    }

    /// `count` pairs drawn from `seed`.
    pub fn pairs(&self, count: usize, seed: u64) -> Vec<Pair> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count).map(|_| self.pair(&mut rng)).collect()
    }

    /// `count` sentences stating facts of `kind` ("ada lives in oslo."), drawn from
    /// `seed`: texts for finding the neurons of a concept.
    pub fn statements(kind: Kind, count: usize, seed: u64) -> Vec<String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let name = NAMES.choose(&mut rng).expect("non-empty");
                let value = kind.values().choose(&mut rng).expect("non-empty");
                Fact::new(kind, name, value).statement()
            })
            .collect()
    }

    /// The facts of a document, about distinct people, and how many of them are
    /// asked about: the first ones; the distractors follow, one kind at a time for
    /// each kind asked about.
    fn facts(&self, rng: &mut impl Rng) -> (Vec<Fact>, usize) {
        let c = &self.config;
        let distractors = c.distractors.min((PEOPLE - 1) / 2);
        let most = c.facts.clamp(1, PEOPLE - 2 * distractors);
        let asked = rng.random_range(c.min_facts.clamp(1, most)..=most);
        // As many names as there can be facts (all names drawn at once, so a corpus
        // without distractors draws exactly what it always drew).
        let mut names = NAMES.choose_multiple(rng, asked + 2 * distractors).copied();
        let mut facts: Vec<Fact> = Vec::with_capacity(asked + 2 * distractors);
        for _ in 0..asked {
            let kind = if rng.random_bool(0.5) { Kind::Place } else { Kind::Color };
            let name = names.next().expect("validated: fewer facts than names");
            facts.push(Fact::new(kind, name, kind.values().choose(rng).expect("non-empty")));
        }
        // Drawn only when there is a choice, so that a corpus without distractors
        // draws what it always drew.
        let fewest = c.min_distractors.min(distractors);
        let extra = if fewest < distractors { rng.random_range(fewest..=distractors) } else { distractors };
        for kind in [Kind::Place, Kind::Color] {
            if facts.iter().take(asked).any(|f| f.kind() == kind) {
                for _ in 0..extra {
                    let name = names.next().expect("validated: fewer facts than names");
                    facts.push(Fact::new(kind, name, kind.values().choose(rng).expect("non-empty")));
                }
            }
        }
        (facts, asked)
    }

    /// The text of a document stating `facts` in an order of its own, as a list or
    /// a story, and the order in which the first `asked` of them are asked about.
    fn render(&self, facts: &[Fact], asked: usize, list: bool, rng: &mut impl Rng) -> (Document, Vec<usize>) {
        let mut order: Vec<usize> = (0..asked).collect();
        order.shuffle(rng);
        let mut stated: Vec<usize> = (0..facts.len()).collect();
        if facts.len() > asked {
            stated.shuffle(rng);
        }
        let mut text = String::new();
        let mut answers = Vec::new();
        // The values given so far, to score the strategy that eliminates them.
        let mut given: Vec<&str> = Vec::new();
        let mut answer = |text: &mut String, f: Fact| {
            let value = f.pair().1;
            let (eliminate, first_of_kind) = f.elimination(facts, &given);
            answers.push(Answer {
                range: text.len()..text.len() + value.len(),
                facts: asked,
                choices: f.choices(facts),
                eliminate,
                first_of_kind,
                list,
                kind: f.kind(),
            });
            given.push(value);
            text.push_str(value);
        };
        if list {
            let pairs: Vec<String> =
                stated.iter().map(|&i| format!("{} {}", facts[i].pair().0, facts[i].pair().1)).collect();
            text.push_str(&pairs.join(", "));
            for (k, &i) in order.iter().enumerate() {
                text.push_str(if k == 0 { "; " } else { ", " });
                text.push_str(facts[i].pair().0);
                text.push(' ');
                answer(&mut text, facts[i]);
            }
            text.push('.');
        } else {
            let mut sentences: Vec<String> = Vec::new();
            for &i in &stated {
                sentences.push(facts[i].statement());
                if rng.random_bool(0.5) {
                    sentences.push(filler(rng));
                }
            }
            for _ in 0..self.config.distance {
                sentences.push(filler(rng));
            }
            text = sentences.join(" ");
            for &i in &order {
                text.push(' ');
                text.push_str(&facts[i].question());
                text.push(' ');
                answer(&mut text, facts[i]);
                text.push('.');
            }
        }
        text.push('\n');
        (Document { text, answers }, order)
    }

    /// `len` bytes of consecutive documents from `seed`, starting at a document
    /// boundary, with the answers that lie wholly inside.
    pub fn window(&self, seed: u64, len: usize) -> Document {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Document { text: String::with_capacity(len + 256), answers: Vec::new() };
        while out.text.len() < len {
            let doc = self.document(&mut rng);
            let base = out.text.len();
            out.answers.extend(doc.answers.into_iter().filter(|a| a.range.end + base <= len).map(|mut a| {
                a.range = a.range.start + base..a.range.end + base;
                a
            }));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made list, "ada oslo, bob rome, cy red, di oslo", asked in the order
    /// bob, ada, cy, di: what eliminating the values already given scores at each
    /// answer, worked out by hand.
    #[test]
    fn elimination_scores_a_hand_made_list_exactly() {
        let facts = [
            Fact::LivesIn("ada", "oslo"),
            Fact::LivesIn("bob", "rome"),
            Fact::Likes("cy", "red"),
            Fact::LivesIn("di", "oslo"),
        ];
        // bob: no place given yet; two distinct places stated, one of them right.
        assert_eq!(facts[1].elimination(&facts, &[]), (0.5, true));
        // ada after "rome": only oslo is left, and it is right.
        assert_eq!(facts[0].elimination(&facts, &["rome"]), (1.0, false));
        // cy after two places: the first color, the only one stated.
        assert_eq!(facts[2].elimination(&facts, &["rome", "oslo"]), (1.0, true));
        // di after rome and oslo: every place was given, so copying picks among all
        // (1 in 2), the strategy that cannot tell two keys with one value apart.
        assert_eq!(facts[3].elimination(&facts, &["rome", "oslo", "red"]), (0.5, false));
        // Asked first, di's value was not given yet: 1 in 2.
        assert_eq!(facts[3].elimination(&facts, &[]), (0.5, true));
        // A value already given for another key, with others left: elimination is wrong.
        let three = [Fact::LivesIn("ada", "oslo"), Fact::LivesIn("bob", "oslo"), Fact::LivesIn("cy", "rome")];
        assert_eq!(three[1].elimination(&three, &["oslo"]), (0.0, false));
    }

    /// In every rendered document the answers carry the scores of the order they are
    /// asked in: the first of each kind is marked, and when the values of a kind are
    /// distinct the last answer of that kind is certain under elimination.
    #[test]
    fn rendered_answers_carry_their_elimination_scores() {
        let l = SyntheticLanguage::new(SyntheticConfig {
            facts: 4,
            min_facts: 1,
            distance: 1,
            lists: 0.5,
            ..SyntheticConfig::default()
        });
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..300 {
            let doc = l.document(&mut rng);
            for kind in [Kind::Place, Kind::Color] {
                let of_kind: Vec<&Answer> = doc.answers.iter().filter(|a| a.kind == kind).collect();
                let Some(last) = of_kind.last() else { continue };
                assert!(of_kind[0].first_of_kind && of_kind[1..].iter().all(|a| !a.first_of_kind), "{}", doc.text);
                assert_eq!(of_kind[0].eliminate, 1.0 / of_kind[0].choices as f64, "{}", doc.text);
                if of_kind[0].choices == of_kind.len() {
                    assert_eq!(last.eliminate, 1.0, "{}", doc.text);
                }
            }
        }
    }

    /// Distractors are stated and never asked about: a list names every stated
    /// person once before the `;` and only the asked ones after it; a story states
    /// them in sentences and asks only about the others; each kind asked about
    /// gains 0 to `distractors` more stated values (one number per document), and
    /// the answers' chances count them.
    #[test]
    fn distractors_are_stated_and_never_asked() {
        let d = 2;
        let l = SyntheticLanguage::new(SyntheticConfig {
            facts: 3,
            min_facts: 1,
            distance: 0,
            lists: 0.5,
            distractors: d,
            min_distractors: 0,
        });
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut lists, mut stories, mut seen, mut distractor_first) = (0, 0, [false; 3], false);
        for _ in 0..300 {
            let doc = l.document(&mut rng);
            let asked = doc.answers.len();
            assert!((1..=3).contains(&asked) && doc.answers.iter().all(|a| a.facts == asked), "{}", doc.text);
            let kinds = [Kind::Place, Kind::Color].iter().filter(|&&k| doc.answers.iter().any(|a| a.kind == k)).count();
            let stated_per_kind = |extra: usize| asked + extra * kinds;
            if doc.answers[0].list {
                lists += 1;
                let (pairs, questions) = doc.text.split_once("; ").expect("a list has two halves");
                let stated = pairs.split(", ").count();
                // Each answer's chance counts every distinct value of its kind stated,
                // the distractors' too.
                for a in &doc.answers {
                    let mut values: Vec<&str> = pairs
                        .split(", ")
                        .filter_map(|p| p.split_once(' ').map(|(_, v)| v))
                        .filter(|v| a.kind.values().contains(v))
                        .collect();
                    values.sort_unstable();
                    values.dedup();
                    assert_eq!(a.choices, values.len(), "{}", doc.text);
                }
                // Distractors are shuffled in among the asked pairs, not appended.
                let asked_names: Vec<&str> = questions.split(", ").filter_map(|q| q.split(' ').next()).collect();
                let first = pairs.split(' ').next().expect("a pair");
                distractor_first |= !asked_names.contains(&first);
                assert!((0..=d).any(|e| stated == stated_per_kind(e)), "{}", doc.text);
                seen[(stated - asked) / kinds] = true;
                assert_eq!(questions.split(", ").count(), asked, "{}", doc.text);
            } else {
                stories += 1;
                // The filler grammar likes things too, but never a colour.
                let colours: usize = COLORS.iter().map(|c| doc.text.matches(&format!(" likes {c}.")).count()).sum();
                let statements = doc.text.matches(" lives in ").count() + colours;
                assert!((0..=d).any(|e| statements == stated_per_kind(e) + asked), "{}", doc.text);
                assert_eq!(doc.text.matches('?').count(), asked, "{}", doc.text);
            }
            for a in &doc.answers {
                // At least the answer and the distractors of its kind are stated
                // (fewer distinct values only when two people share one).
                assert!(a.choices <= 1 + d + asked && a.copy_chance() >= 1.0 / (1 + d + asked) as f64);
                if a.first_of_kind {
                    assert_eq!(a.eliminate, a.copy_chance(), "{}", doc.text);
                }
            }
        }
        assert!(lists > 100 && stories > 100);
        assert_eq!(seen, [true; 3], "every number of distractors from 0 to {d} drawn");
        assert!(distractor_first, "no list opened with a distractor");
        // Pairs for patching ask only about facts that are asked about: the cut is
        // right before an answer, and the two texts differ in one value.
        for p in l.pairs(200, 6) {
            assert_eq!(p.clean.len(), p.corrupted.len());
            assert!(p.clean.ends_with(' ') && p.clean != p.corrupted, "{}", p.clean);
        }
    }

    /// The default language, pinned: a corpus without distractors draws exactly what
    /// it drew before they existed, so every run trained on it reads the same text
    /// (an FNV-1a hash of a window and of patching pairs, and the window's start).
    #[test]
    fn the_default_language_is_pinned() {
        let fnv = |text: &str| {
            text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
        };
        let l = SyntheticLanguage::new(SyntheticConfig::default());
        let window = l.window(1337, 4096);
        let pairs: String = l.pairs(16, 7).iter().map(|p| format!("{}|{}|", p.clean, p.corrupted)).collect();
        assert_eq!(
            (&window.text[..60], window.answers.len()),
            ("oz lives in doha. jo likes blue. the small dogs follow the h", 109)
        );
        assert_eq!((fnv(&window.text), fnv(&pairs)), (883823010415401480, 9353265909445575717));
    }
}
