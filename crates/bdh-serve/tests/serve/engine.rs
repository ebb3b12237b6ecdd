//! The decoding loop driven directly: streams that leave or fail give their
//! sessions' states back and leave the other streams alone.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Instant;

use bdh::infer::{Generation, Sampler, SamplingConfig};
use bdh::model::bdh::NO_EDITS;
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
        self.start_on(queue, None);
    }

    /// [`Loop::start`] with the streams on `device`.
    fn start_on(&mut self, queue: std::sync::mpsc::Receiver<Job>, device: Option<Box<dyn bdh::engine::Streams>>) {
        let prepared = self.prepared.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        self.thread = Some(std::thread::spawn(move || engine::run(prepared, queue, cancel, device)));
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

/// Streams held by the CPU engine behind the device trait: a device that can be
/// told to lose every state it is asked to give back.
struct OnCpu {
    prepared: Arc<Prepared>,
    scratch: bdh::infer::Scratch,
    slots: Vec<Option<State>>,
    logits: Vec<f32>,
    lose_states: bool,
}

impl OnCpu {
    fn boxed(prepared: &Arc<Prepared>, slots: usize, lose_states: bool) -> Box<dyn bdh::engine::Streams> {
        let (scratch, slots) = (prepared.scratch(), vec![None; slots]);
        Box::new(OnCpu { prepared: prepared.clone(), scratch, slots, logits: Vec::new(), lose_states })
    }
}

impl bdh::engine::Streams for OnCpu {
    fn device(&self) -> String {
        "a stand-in device".into()
    }
    fn slots(&self) -> usize {
        self.slots.len()
    }
    fn chunk(&self) -> usize {
        3
    }
    fn open(&mut self, state: &State) -> bdh::Result<usize> {
        let slot = self.slots.iter().position(Option::is_none).expect("a free slot");
        self.slots[slot] = Some(state.clone());
        Ok(slot)
    }
    fn position(&self, slot: usize) -> bdh::Result<usize> {
        Ok(self.slots[slot].as_ref().expect("open").pos())
    }
    fn check_step(&self, slot: usize, token: u32) -> bdh::Result<()> {
        self.prepared.check_step(self.slots[slot].as_ref().expect("open"), token)
    }
    fn prefill(&mut self, slot: usize, tokens: &[u32]) -> bdh::Result<&[f32]> {
        let state = self.slots[slot].as_mut().expect("open");
        self.logits = self.prepared.prefill(state, &mut self.scratch, tokens, &NO_EDITS)?.to_vec();
        Ok(&self.logits)
    }
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> bdh::Result<&[f32]> {
        let mut taken: Vec<State> = slots.iter().map(|&s| self.slots[s].take().expect("open")).collect();
        let mut rows: Vec<&mut State> = taken.iter_mut().collect();
        let stepped = self.prepared.step(&mut rows, &mut self.scratch, tokens, &NO_EDITS).map(<[f32]>::to_vec);
        for (&s, state) in slots.iter().zip(taken) {
            self.slots[s] = Some(state);
        }
        self.logits = stepped?;
        Ok(&self.logits)
    }
    fn close(&mut self, slot: usize) -> bdh::Result<State> {
        let state = self.slots[slot].take().expect("open");
        if self.lose_states {
            return Err(bdh::Error::Device("the stand-in device lost it".into()));
        }
        Ok(state)
    }
    fn held_bytes(&self) -> u64 {
        0
    }
}

/// The text of a stream that ran to its end.
fn text_of(events: &[Event]) -> String {
    completed(events);
    events.iter().filter_map(|e| if let Event::Text(t) = e { Some(t.as_str()) } else { None }).collect()
}

#[test]
fn streams_on_a_device_answer_as_on_the_cpu_and_their_states_come_back() {
    let mut answers = Vec::new();
    for on_device in [false, true] {
        let (mut l, queue) = Loop::new(256);
        let sessions = Store::new(&l.prepared, 4);
        let id = sessions.create().unwrap().id;
        let device = on_device.then(|| OnCpu::boxed(&l.prepared, 4, false));
        let (a, b) = (
            l.send(b"ROMEO:".map(u32::from).as_slice(), 12, sessions.check_out(&id).unwrap()),
            l.send(&[7, 8], 9, l.fresh(3)),
        );
        l.start_on(queue, device);
        let texts = [text_of(&events(a)), text_of(&events(b))];
        eventually("the session is idle again", || sessions.info(&id).unwrap().position.is_some());
        answers.push((texts, sessions.info(&id).unwrap().position));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[1].1, Some(6 + 12), "the prompt and every token generated, read");
}

#[test]
fn a_state_the_device_cannot_give_back_fails_its_stream_and_the_session_keeps_its_old_state() {
    let (mut l, queue) = Loop::new(256);
    let sessions = Store::new(&l.prepared, 4);
    let id = sessions.create().unwrap().id;
    let device = Some(OnCpu::boxed(&l.prepared, 4, true));
    let a = l.send(&[1, 2, 3], 5, sessions.check_out(&id).unwrap());
    l.start_on(queue, device);
    let failed = events(a);
    assert!(failure(&failed).contains("keeps its state from before this request"), "{failed:?}");
    eventually("the session is idle again", || sessions.info(&id).unwrap().position.is_some());
    assert_eq!(sessions.info(&id).unwrap().position, Some(0));
}
