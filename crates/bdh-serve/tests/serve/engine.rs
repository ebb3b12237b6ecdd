//! The decoding loop driven directly: streams that leave or fail give their
//! sessions' states back and leave the other streams alone.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Instant;

use bdh::infer::{Generation, Sampler, SamplingConfig};
use bdh::model::MAX_POSITION;
use bdh_serve::engine::{self, Event, Job, Reason, Slot};
use bdh_serve::lease::Lease;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;

/// A decoding loop of the tiny model on a thread of its own, ended when dropped.
struct Loop {
    prepared: Arc<Prepared>,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    streams: Arc<AtomicUsize>,
    _serial: MutexGuard<'static, ()>,
}

impl Loop {
    /// A loop whose first turn will see every job sent before [`Loop::start`].
    fn new(vocab: usize) -> (Loop, std::sync::mpsc::Receiver<Job>) {
        let serial = serial();
        let (jobs, queue) = std::sync::mpsc::channel();
        let streams = Arc::new(AtomicUsize::new(0));
        (Loop { prepared: tiny_prepared(vocab), jobs: Some(jobs), thread: None, streams, _serial: serial }, queue)
    }

    fn start(&mut self, queue: std::sync::mpsc::Receiver<Job>) {
        let prepared = self.prepared.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        self.thread = Some(std::thread::spawn(move || engine::run(prepared, queue, cancel, None)));
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

    /// An empty state of no session, at position `pos`.
    fn fresh(&self, pos: usize) -> Lease {
        let mut lease = Lease::fresh(self.prepared.state().unwrap());
        set_pos(&mut lease, pos);
        lease
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

/// Every event of a stream until its end.
fn events(mut rx: UnboundedReceiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        out.push(e);
    }
    out
}

/// The end of a stream that ran to `max_tokens`: its generated tokens.
fn completed(events: &[Event]) -> usize {
    match events.last() {
        Some(Event::Done(f)) if f.reason == Reason::Length => f.completion_tokens,
        other => panic!("a stream that ran to its end, not {other:?}"),
    }
}

/// The message of a stream that failed.
fn failure(events: &[Event]) -> &str {
    match events.last() {
        Some(Event::Failed(m)) => m,
        other => panic!("a failed stream, not {other:?}"),
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
    let (mut l, queue) = Loop::new(256);
    let sessions = Store::new(&l.prepared, 4);
    let id = sessions.create().unwrap().id;
    l.start(queue);
    drop(l.send(b"abc".map(u32::from).as_slice(), 1000, sessions.check_out(&id).unwrap()));
    eventually("the session is idle again", || sessions.info(&id).unwrap().position.is_some());
    eventually("the stream's slot is free", || l.streams.load(std::sync::atomic::Ordering::SeqCst) == 0);
}

#[test]
fn a_stream_at_the_position_limit_fails_alone_and_its_session_keeps_its_state() {
    let (mut l, queue) = Loop::new(256);
    let sessions = Store::new(&l.prepared, 4);
    let id = sessions.create().unwrap().id;
    // One prompt token takes it to 2^24: it may not step further.
    let mut late = sessions.check_out(&id).unwrap();
    set_pos(&mut late, MAX_POSITION - 1);
    let (a, b, c) = (l.send(&[1], 8, late), l.send(&[2, 3], 8, l.fresh(0)), l.send(&[4], 5, l.fresh(100)));
    l.start(queue); // all three join the first turn, so step together
    let failed = events(a);
    assert!(failure(&failed).contains("2^24"), "{failed:?}");
    assert_eq!((completed(&events(b)), completed(&events(c))), (8, 5));
    assert_eq!(sessions.info(&id).unwrap().position, Some(MAX_POSITION), "the state as it failed, back");
}

#[test]
fn a_prompt_token_outside_the_vocabulary_fails_its_stream_alone() {
    let (mut l, queue) = Loop::new(64);
    let (bad, good) = (l.send(&[1, 64], 4, l.fresh(0)), l.send(&[1, 63], 4, l.fresh(0)));
    l.start(queue);
    let failed = events(bad);
    assert!(failure(&failed).contains("vocab_size 64"), "{failed:?}");
    assert_eq!(completed(&events(good)), 4);
}
