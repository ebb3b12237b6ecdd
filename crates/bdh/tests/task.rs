//! The built-in generator's tasks: batches, carried streams and their scoring.

use bdh::data::{Batch, Corpus, DataConfig, Task};
use bdh::engine::Forward;
use bdh::eval::evaluate_on;
use bdh::Result;

fn corpus(task: &str, block: usize) -> Corpus {
    DataConfig { task: task.parse().unwrap(), ..DataConfig::default() }.corpus(block).unwrap()
}

/// The answer byte of `task` at target `pos` of `row`, from the batch's own inputs.
fn expected(task: Task, batch: &Batch, t: usize, row: usize, pos: usize) -> u32 {
    // target `pos` is byte pos + 1 of the window: an answer, its step's input at byte pos
    let x = |back: usize| batch.tokens[row * t + pos - 2 * back] as u8;
    u32::from(match task {
        Task::Lag(k) => x(k).to_ascii_uppercase(),
        Task::Dms(n) => [b'n', b'y'][usize::from(x(0) == x(n))],
        Task::Parity(n) => [b'e', b'o'][(0..n).filter(|&j| x(j) == b'1').count() % 2],
        Task::Language => unreachable!(),
    })
}

#[test]
fn every_scored_answer_follows_from_inputs_in_its_window() {
    for name in ["lag:5", "dms:3", "parity:4"] {
        let task: Task = name.parse().unwrap();
        let c = corpus(name, 64);
        assert_eq!(c.task_chance(), Some(task.chance()));
        for batch in [c.train_batch(1, 9, 4, 64), c.val_batch(2, 4, 4, 64)] {
            // every answer whose inputs the window holds is scored, and no other
            let per_row = (64 - 2 * task.reach()) / 2;
            for row in 0..4 {
                let n = batch.scored.iter().filter(|&&(r, _)| r == row).count();
                assert!(n.abs_diff(per_row) <= 1, "{name}: {n} answers scored, ~{per_row} expected");
            }
            for &(row, pos) in &batch.scored {
                assert!(pos >= 2 * task.reach(), "{name}: an answer scored before its inputs");
                assert_eq!(batch.targets[row * 64 + pos], expected(task, &batch, 64, row, pos), "{name} {row} {pos}");
            }
            assert!(batch.answers.is_empty());
        }
        assert_eq!(c.train_batch(1, 9, 4, 64), c.train_batch(1, 9, 4, 64));
        assert_ne!(c.train_batch(1, 9, 4, 64).tokens, c.train_batch(1, 10, 4, 64).tokens);
    }
}

#[test]
fn a_carried_stream_continues_and_scores_answers_reaching_into_earlier_chunks() {
    let c = corpus("lag:10", 64);
    let (first, restart) = c.stream_batch(5, 0, 2, 32).unwrap();
    let (second, again) = c.stream_batch(5, 1, 2, 32).unwrap();
    assert!(restart && !again);
    for row in 0..2 {
        // chunk 2 starts where chunk 1's targets end
        assert_eq!(second.tokens[row * 32], first.targets[row * 32 + 31]);
    }
    // chunk 1 holds steps 0..16: those from step 10 on have their input; in chunk 2
    // every answer does, its input 10 steps (20 bytes) back often in chunk 1
    let per_row = |b: &Batch| b.scored.iter().filter(|&&(r, _)| r == 0).count();
    assert_eq!((per_row(&first), per_row(&second)), (6, 16));
}

/// Predicts each target with certainty: what a model that had learnt the task scores.
struct Oracle(Corpus, usize);

impl Forward for Oracle {
    fn device(&self) -> String {
        "oracle".into()
    }
    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        // the validation batches are a pure function of their index: find this one's
        let batch = (0..self.1).map(|i| self.0.val_batch(i, self.1, b, t)).find(|x| x.tokens == tokens).unwrap();
        let mut logits = vec![0.0; b * t * 256];
        for (i, &y) in batch.targets.iter().enumerate() {
            logits[i * 256 + y as usize] = 1.0;
        }
        Ok(logits)
    }
    fn loss_sum(&mut self, _: &[u32], _: &[u32], _: usize, _: usize) -> Result<f64> {
        unreachable!("evaluate_on asks for logits")
    }
}

/// Predicts nothing: every logit equal, so the argmax is byte 0, never an answer.
struct Blank;

impl Forward for Blank {
    fn device(&self) -> String {
        "blank".into()
    }
    fn logits(&mut self, _: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; b * t * 256])
    }
    fn loss_sum(&mut self, _: &[u32], _: &[u32], _: usize, _: usize) -> Result<f64> {
        unreachable!("evaluate_on asks for logits")
    }
}

#[test]
fn evaluation_scores_answers_against_their_chance() {
    let c = corpus("dms:6", 128);
    let m = evaluate_on(&mut Oracle(c.clone(), 3), &c, 256, (4, 128), 3).unwrap();
    assert_eq!((m.answer_accuracy, m.answer_chance), (Some(1.0), Some(0.5)));
    assert_eq!(m.answers, 3 * 4 * (128 - 12) / 2);
    let m = evaluate_on(&mut Blank, &c, 256, (4, 128), 3).unwrap();
    assert_eq!(m.answer_accuracy, Some(0.0));
    assert!((m.val_loss - 256f64.ln()).abs() < 1e-5);
}

#[test]
fn tasks_are_refused_where_they_cannot_run() {
    let refuse = |d: DataConfig, block: usize, what: &str| {
        let e = d.corpus(block).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    };
    let lag = |k| DataConfig { task: Task::Lag(k), ..DataConfig::default() };
    refuse(lag(40), 64, "needs blocks of 82 bytes or more");
    assert!(lag(40).corpus(82).is_ok());
    refuse(DataConfig { path: Some("x.txt".into()), ..lag(2) }, 64, "takes no data file");
    for bad in ["task = \"lag:0\"", "task = \"echo:3\"", "task = 3"] {
        let toml = format!("facts = 1\ndistance = 1\n{bad}\n");
        assert!(toml::from_str::<DataConfig>(&toml).is_err(), "{bad}");
    }
}
