//! The decoding loop driven directly: streams that leave or fail give their
//! sessions' states back and leave the other streams alone.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bdh::infer::{Generation, Prepared, Sampler, SamplingConfig};
use bdh_serve::engine::{self, Event, Job, Slot};
use bdh_serve::lease::Lease;
use bdh_serve::sessions::Sessions;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;

/// A decoding loop of the tiny model on a thread of its own, ended when dropped.
struct Loop {
    prepared: Arc<Prepared>,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    streams: Arc<AtomicUsize>,
}

impl Loop {
    /// A loop whose first turn will see every job sent before [`Loop::start`].
    fn new(vocab: usize) -> (Loop, std::sync::mpsc::Receiver<Job>) {
        let prepared = Arc::new(Prepared::new(tiny_model(vocab)).unwrap());
        let (jobs, queue) = std::sync::mpsc::channel();
        let streams = Arc::new(AtomicUsize::new(0));
        (Loop { prepared, jobs: Some(jobs), thread: None, streams }, queue)
    }

    fn start(&mut self, queue: std::sync::mpsc::Receiver<Job>) {
        let prepared = self.prepared.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        self.thread = Some(std::thread::spawn(move || engine::run(prepared, queue, cancel)));
    }

    /// Sends a greedy job of `prompt` for up to `max_tokens` after `state`.
    fn send(&self, prompt: &[u32], max_tokens: usize, state: Lease) -> UnboundedReceiver<Event> {
        let (events, rx) = unbounded_channel();
        let sampler = Sampler::new(SamplingConfig { temperature: 0.0, ..SamplingConfig::default() }).unwrap();
        let job = Job {
            prompt: prompt.to_vec(),
            generation: Generation { max_tokens, tokenizer: Tokenizer::Bytes, ..Generation::default() },
            sampler,
            state,
            events,
            _slot: Slot::take(&self.streams, usize::MAX).unwrap(),
        };
        self.jobs.as_ref().unwrap().send(job).unwrap();
        rx
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Waits (up to a minute) until `what` holds.
fn eventually(what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed().as_secs() < 60, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_stream_whose_client_left_gives_its_session_state_back() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut l, queue) = Loop::new(256);
    let sessions = Arc::new(Sessions::new(l.prepared.clone(), 4, dir.path()).unwrap());
    let id = sessions.create(None).unwrap().id;
    l.start(queue);
    drop(l.send(b"abc".map(u32::from).as_slice(), 1000, sessions.check_out(&id).unwrap()));
    eventually("the session is idle again", || sessions.info(&id).unwrap().position.is_some());
    eventually("the stream's slot is free", || l.streams.load(std::sync::atomic::Ordering::SeqCst) == 0);
}
