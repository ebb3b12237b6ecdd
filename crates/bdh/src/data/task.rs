//! Tasks whose answer depends on a symbol a fixed number of steps back: the
//! built-in generator's families besides the language (`data.task`).
//!
//! A task is an endless stream of steps, two bytes each: an input symbol drawn
//! uniformly at random, then the answer, a function of the inputs up to this one.
//!
//! - `lag:K` — inputs `a`…`p` (16 symbols); the answer is the input K steps back,
//!   in capitals (`A`…`P`): a fixed delay of 2K bytes. Chance: 1/16.
//! - `dms:N` — delayed match-to-sample: inputs `0`/`1`; the answer is `y` when this
//!   input equals the one N steps back, else `n`. Chance: 1/2.
//! - `parity:N` — inputs `0`/`1`; the answer is the parity of the last N inputs
//!   (this one included), `e` for even and `o` for odd. Chance: 1/2.
//!
//! Input i of the stream seeded s is a hash of (s, i), so any window of a stream
//! can be made on its own: its answers are scored only where every input they
//! depend on lies inside what the model has read (the window, or with a carried
//! state the whole stream from its start).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most steps back a task may look: far past any context a model is trained on.
pub const MAX_REACH: usize = 1 << 20;

/// What the built-in generator makes: the language, or a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Task {
    /// The synthetic language (stories and lists).
    #[default]
    Language,
    /// Copy the input K steps back.
    Lag(usize),
    /// Whether this input matches the one N steps back.
    Dms(usize),
    /// The parity of the last N inputs.
    Parity(usize),
}

impl Task {
    /// Whether this is the language (the default).
    pub fn is_language(&self) -> bool {
        *self == Task::Language
    }

    /// The steps back the answer reaches, counting the current step as 0 (none for
    /// the language).
    pub fn reach(self) -> usize {
        match self {
            Task::Language => 0,
            Task::Lag(k) => k,
            Task::Dms(n) => n,
            Task::Parity(n) => n - 1,
        }
    }

    /// The input symbols.
    fn inputs(self) -> &'static [u8] {
        match self {
            Task::Lag(_) => b"abcdefghijklmnop",
            _ => b"01",
        }
    }

    /// How often a guess at random is right.
    pub fn chance(self) -> f64 {
        1.0 / self.inputs().len() as f64
    }

    /// Input `i` of the stream seeded `seed`.
    fn input(self, seed: u64, i: usize) -> u8 {
        let symbols = self.inputs();
        symbols[(super::mix(seed, i as u64) % symbols.len() as u64) as usize]
    }

    /// The answer at step `i` of the stream seeded `seed` (`i ≥ reach`).
    fn answer(self, seed: u64, i: usize) -> u8 {
        let x = |j: usize| self.input(seed, j);
        match self {
            Task::Language => unreachable!("the language has no steps"),
            Task::Lag(k) => x(i - k).to_ascii_uppercase(),
            Task::Dms(n) => [b'n', b'y'][usize::from(x(i) == x(i - n))],
            Task::Parity(n) => [b'e', b'o'][(i + 1 - n..=i).filter(|&j| x(j) == b'1').count() % 2],
        }
    }

    /// `len` bytes of the stream seeded `seed` from a step drawn from the seed, and
    /// the answers scored in them (those whose inputs the window holds).
    pub fn window(self, seed: u64, len: usize) -> (Vec<u8>, Vec<usize>) {
        let start = 2 * (super::mix(seed, u64::MAX) % MAX_REACH as u64) as usize;
        self.bytes(seed, start, len, start)
    }

    /// `len` bytes of the stream seeded `seed` from byte `start`, and the answers
    /// (byte positions in the piece) whose inputs all lie at or after byte `from`
    /// of the stream: what a model that read from `from` can know.
    pub fn bytes(self, seed: u64, start: usize, len: usize, from: usize) -> (Vec<u8>, Vec<usize>) {
        let (mut text, mut answers) = (Vec::with_capacity(len), Vec::new());
        for pos in start..start + len {
            let step = pos / 2;
            if pos % 2 == 0 {
                text.push(self.input(seed, step));
            } else if step >= self.reach() && 2 * (step - self.reach()) >= from {
                answers.push(pos - start);
                text.push(self.answer(seed, step));
            } else {
                // (an answer whose inputs the reader has not seen: trained on, never scored)
                text.push(if step >= self.reach() { self.answer(seed, step) } else { b'?' });
            }
        }
        (text, answers)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Language => write!(f, "language"),
            Task::Lag(k) => write!(f, "lag:{k}"),
            Task::Dms(n) => write!(f, "dms:{n}"),
            Task::Parity(n) => write!(f, "parity:{n}"),
        }
    }
}

impl FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "language" {
            return Ok(Task::Language);
        }
        let expected = "expected \"language\", \"lag:K\", \"dms:N\" or \"parity:N\"";
        let (name, n) = s.split_once(':').ok_or_else(|| format!("data.task `{s}`: {expected}"))?;
        let n: usize = n.parse().map_err(|_| format!("data.task `{s}`: `{n}` is not a whole number of steps"))?;
        if !(1..=MAX_REACH).contains(&n) {
            return Err(format!("data.task `{s}`: the number of steps must be in 1..={MAX_REACH}"));
        }
        match name {
            "lag" => Ok(Task::Lag(n)),
            "dms" => Ok(Task::Dms(n)),
            "parity" => Ok(Task::Parity(n)),
            _ => Err(format!("data.task `{s}`: {expected}")),
        }
    }
}

impl TryFrom<String> for Task {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Task> for String {
    fn from(t: Task) -> String {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_what_each_task_defines() {
        for task in [Task::Lag(3), Task::Dms(2), Task::Parity(4)] {
            let (text, answers) = task.bytes(7, 0, 400, 0);
            let inputs: Vec<u8> = text.iter().step_by(2).copied().collect();
            assert!(inputs.iter().all(|c| task.inputs().contains(c)));
            let reach = task.reach();
            assert_eq!(answers, (reach..200).map(|s| 2 * s + 1).collect::<Vec<_>>(), "{task}");
            for s in reach..200 {
                let want = match task {
                    Task::Lag(k) => inputs[s - k].to_ascii_uppercase(),
                    Task::Dms(n) => {
                        if inputs[s] == inputs[s - n] {
                            b'y'
                        } else {
                            b'n'
                        }
                    }
                    Task::Parity(n) => {
                        if inputs[s + 1 - n..=s].iter().filter(|&&c| c == b'1').count() % 2 == 0 {
                            b'e'
                        } else {
                            b'o'
                        }
                    }
                    Task::Language => unreachable!(),
                };
                assert_eq!(text[2 * s + 1], want, "{task} step {s}");
            }
            // inputs are uniform: each symbol near its share
            let share = inputs.iter().filter(|&&c| c == task.inputs()[0]).count() as f64 / inputs.len() as f64;
            assert!((share - task.chance()).abs() < 0.1, "{task}: {share}");
        }
    }

    #[test]
    fn a_window_is_the_stream_cut_and_scores_only_what_it_saw() {
        let task = Task::Lag(5);
        let (all, _) = task.bytes(3, 0, 300, 0);
        let (piece, answers) = task.bytes(3, 101, 60, 101);
        assert_eq!(piece, all[101..161]);
        // the first answer scored: its input 5 steps back at byte ≥ 101
        assert_eq!(answers[0], 2 * (51 + 5) + 1 - 101);
        let (_, carried) = task.bytes(3, 101, 60, 0);
        assert_eq!(carried.len(), 30);
    }

    #[test]
    fn names_parse_and_print_back() {
        for s in ["language", "lag:7", "dms:1", "parity:12"] {
            assert_eq!(s.parse::<Task>().unwrap().to_string(), s);
        }
        for bad in ["lag", "lag:0", "lag:-1", "lag:x", "copy:3", "parity:99999999999", ""] {
            assert!(bad.parse::<Task>().is_err(), "{bad}");
        }
    }
}
