//! Data-parallel runs without MPI: K threads, each one process of a run, joined by
//! an in-memory [`Collective`] that averages in rank order as an all-reduce does.
//! (Under `mpirun`, the same runs are tested by the CLI's `tests/mpi.rs`.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use bdh::train::parallel;
use bdh::train::run::{train, train_parallel, Event, RunOutcome};
use bdh::train::Collective;
use bdh::RunConfig;

use crate::common::temp_dir;

/// What the threads of a run share: a barrier and one slot per process.
struct Room {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

/// One thread's place among `size` that share a [`Room`].
struct Member {
    rank: usize,
    size: usize,
    room: Arc<Room>,
}

impl Member {
    /// Puts `mine` in this process's slot and returns every slot once all have.
    fn exchange(&self, mine: Vec<u8>) -> Vec<Vec<u8>> {
        self.room.slots.lock().unwrap()[self.rank] = mine;
        self.room.barrier.wait();
        let all = self.room.slots.lock().unwrap().clone();
        self.room.barrier.wait(); // nobody writes a slot before everyone has read
        all
    }
}

fn floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))
}

fn to_bytes(buf: &[f32]) -> Vec<u8> {
    buf.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Collective for Member {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_mean(&self, buf: &mut [f32]) -> bdh::Result<()> {
        let all = self.exchange(to_bytes(buf));
        buf.fill(0.0);
        for slot in &all {
            buf.iter_mut().zip(floats(slot)).for_each(|(x, y)| *x += y);
        }
        buf.iter_mut().for_each(|x| *x *= 1.0 / self.size as f32);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> bdh::Result<()> {
        let all = self.exchange(to_bytes(buf));
        buf.iter_mut().zip(floats(&all[root])).for_each(|(x, y)| *x = y);
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> bdh::Result<()> {
        *bytes = self.exchange(bytes.clone()).swap_remove(root);
        Ok(())
    }
    fn seconds_waiting(&self) -> f64 {
        0.0
    }
}

/// `size` members of one room.
fn members(size: usize) -> Vec<Member> {
    let room = Arc::new(Room { barrier: Barrier::new(size), slots: Mutex::new(vec![Vec::new(); size]) });
    (0..size).map(|rank| Member { rank, size, room: room.clone() }).collect()
}

fn tiny(overrides: &[&str]) -> RunConfig {
    let mut all = vec!["model.n_embd=32", "training.block_size=48", "training.eval_batches=1", "training.max_steps=12"];
    all.extend_from_slice(overrides);
    RunConfig::resolve("tiny", &all.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

/// Runs `cfg` in `dir` on `k` threads, each a process; stops after step `stop_at`
/// if given. Every process's outcome, by rank.
fn run_on(k: usize, cfg: &RunConfig, dir: &Path, resume: bool, stop_at: Option<usize>) -> Vec<RunOutcome> {
    let corpus = cfg.data.corpus(cfg.training.block_size).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = members(k)
            .into_iter()
            .map(|m| {
                let (corpus, stop) = (&corpus, &stop);
                s.spawn(move || {
                    train_parallel(cfg, corpus, dir, resume, stop, &m, |e| {
                        if matches!(e, Event::Step { step, .. } if Some(step) == stop_at) {
                            stop.store(true, Ordering::SeqCst);
                        }
                    })
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn two_processes_of_half_the_batch_follow_one_process_of_the_whole() {
    let one_dir = temp_dir("par-one");
    let one = train(
        &tiny(&["training.batch_size=4"]),
        &tiny(&[]).data.corpus(48).unwrap(),
        one_dir.path(),
        false,
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap();
    let two_dir = temp_dir("par-two");
    let two = run_on(2, &tiny(&["training.batch_size=2"]), two_dir.path(), false, None);
    assert_eq!(two[0].losses, two[1].losses, "every process reports the mean loss");
    let worst = one.losses.iter().zip(&two[0].losses).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f32::max);
    println!("1 × 4 rows against 2 × 2: losses {:?}\n{:?}\nmax rel diff {worst:.2e}", one.losses, two[0].losses);
    // The same rows in the same order: only the order of the sums differs (two
    // halves, then their mean), in the loss and in the gradient.
    assert!(worst < 1e-4, "{worst}");
    // The validation rows are one process's of 4 rows.
    let (a, b) = (one.last_eval.unwrap(), two[0].last_eval.clone().unwrap());
    assert_eq!(a.answers, b.answers);
    assert!(((a.val_loss - b.val_loss) / a.val_loss).abs() < 1e-3, "{} {}", a.val_loss, b.val_loss);
    assert!(two[1].last_eval.is_none(), "process 1 does not evaluate");
}

#[test]
fn a_resumed_two_process_run_equals_an_uninterrupted_one() {
    let cfg = tiny(&["training.batch_size=2", "training.eval_interval=4", "model.dropout=0.1"]);
    let whole = run_on(2, &cfg, temp_dir("par-whole").path(), false, None);
    let tmp = temp_dir("par-cut");
    let first = run_on(2, &cfg, tmp.path(), false, Some(5));
    assert!(first.iter().all(|o| o.interrupted && o.step == 5), "every process stops at the same step");
    let second = run_on(2, &cfg, tmp.path(), true, None);
    let resumed: Vec<f32> = first[0].losses.iter().chain(&second[0].losses).copied().collect();
    assert_eq!(resumed, whole[0].losses);
    let metrics = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    let records = metrics.lines().filter(|l| l.contains("\"loss\"") && l.contains("all_reduce_seconds")).count();
    assert_eq!(records, 12, "one record per step, written once: {metrics}");
}

#[test]
fn a_process_with_another_config_is_refused_naming_the_difference() {
    let cfgs = [tiny(&[]), tiny(&["training.lr=1e-3"])];
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = members(2)
            .into_iter()
            .zip(&cfgs)
            .map(|(m, cfg)| s.spawn(move || parallel::check_config(&m, cfg).map_err(|e| e.to_string())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err();
    assert!(err.contains("process 1 runs another config than process 0") && err.contains("training.lr"), "{err}");
    let carry = [tiny(&["training.carry_state=true"]), tiny(&["training.carry_state=true"])];
    let m = members(1).pop().unwrap();
    assert!(parallel::check_config(&m, &carry[0]).is_ok(), "one process carries its state");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> =
            members(2).into_iter().zip(&carry).map(|(m, c)| s.spawn(move || parallel::check_config(&m, c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r.as_ref().is_err_and(|e| e.to_string().contains("carry_state"))));
}
