//! The decoding loop: one thread owns the model's scratch and every live stream,
//! and advances them together (continuous batching). Each turn it admits the
//! requests that arrived, reads one prefill chunk of each stream still reading its
//! prompt, chooses every decoding stream's next token and runs one batched step
//! for all of them. A stream whose client went away is dropped at the next turn;
//! a stream that fails (its prompt, its state) ends alone, the others go on.
//!
//! On a device ([`bdh::engine::Streams`]) a stream's state moves into a slot there
//! when the stream starts and back into its lease when it ends, whichever way.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use bdh::engine::Streams;
use bdh::infer::{Decoding, Generation, Prepared, Sampler, Scratch, State};
use bdh::model::bdh::NO_EDITS;
use tokio::sync::mpsc::UnboundedSender;

use crate::lease::Lease;

/// A request for the engine: a prompt to read after `state`, then a generation.
pub struct Job {
    /// Prompt tokens (at least one).
    pub prompt: Vec<u32>,
    /// How many tokens, which stop strings.
    pub generation: Generation,
    /// The stream's own sampler, seeded as `bdh generate` seeds it.
    pub sampler: Sampler,
    /// The state the prompt continues (empty, or a session's, which goes back to
    /// the session when the job is dropped).
    pub state: Lease,
    /// Where the text and the end go; closed when the client goes away.
    pub events: UnboundedSender<Event>,
    /// The stream's slot, held for its drop: freed when the stream ends.
    pub _slot: Slot,
}

/// What the engine tells a request.
#[derive(Debug)]
pub enum Event {
    /// Text that became ready.
    Text(String),
    /// The end, with its counts.
    Done(Finish),
    /// The model failed (not the request's fault).
    Failed(String),
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A stop string.
    Stop,
    /// `max_tokens` generated.
    Length,
    /// The server is shutting down and its grace period ran out.
    Cancelled,
}

impl Reason {
    /// The response's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Stop => "stop",
            Reason::Length => "length",
            Reason::Cancelled => "cancelled",
        }
    }
}

/// A stream's end.
#[derive(Debug)]
pub struct Finish {
    /// Why it ended.
    pub reason: Reason,
    /// Prompt tokens read.
    pub prompt_tokens: usize,
    /// Tokens generated (a stop string's included).
    pub completion_tokens: usize,
    /// Tokens the state has read in all.
    pub position: usize,
}

/// One of a bounded number of stream slots, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a slot of `used` if fewer than `max` are taken.
    pub fn take(used: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot(used.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a stream is: reading its prompt, generating, or ended.
enum Phase {
    /// Reading the prompt, a chunk a turn; `read` tokens of it so far.
    Prefill { read: usize },
    /// Generating; `next` is the token chosen for this turn's step, once chosen.
    Decode { decoding: Decoding, next: Option<u32> },
    /// Ended: the event that ends it, sent once its state is back in its session.
    Ended(Event),
}

/// A stream in the engine.
struct Stream {
    job: Job,
    phase: Phase,
    slot: Option<usize>, // its state's slot on the device, while there
}

impl Stream {
    /// Ends the stream for `reason` (not one already ended), sending the text it
    /// held back unless cancelled.
    fn finish(&mut self, reason: Reason) {
        let (prompt_tokens, completion_tokens) = match &mut self.phase {
            Phase::Prefill { read } => (*read, 0),
            Phase::Decode { decoding, .. } => {
                if reason != Reason::Cancelled {
                    if let Some(rest) = decoding.rest() {
                        let _ = self.job.events.send(Event::Text(rest));
                    }
                }
                (self.job.prompt.len(), decoding.tokens().len())
            }
            Phase::Ended(_) => return,
        };
        // (the position is the state's once it is back from the device: see `close`)
        self.phase = Phase::Ended(Event::Done(Finish { reason, prompt_tokens, completion_tokens, position: 0 }));
    }

    /// Ends the stream, and only it, with a failure.
    fn fail(&mut self, message: String) {
        self.phase = Phase::Ended(Event::Failed(message));
    }

    /// Whether the stream chose a token for this turn's step.
    fn stepping(&self) -> bool {
        matches!(self.phase, Phase::Decode { next: Some(_), .. })
    }

    /// Reads the logits after this turn's token: the text that became ready, or the
    /// end at a stop string.
    fn read(&mut self, logits: &[f32]) {
        let Phase::Decode { decoding, next } = &mut self.phase else { return };
        *next = None;
        match decoding.read(logits) {
            None => self.finish(Reason::Stop),
            Some(text) if !text.is_empty() => {
                let _ = self.job.events.send(Event::Text(text));
            }
            Some(_) => {}
        }
    }

    /// Sends the end once the state is back: a client's next request on the
    /// session finds it.
    fn close(self) {
        let Stream { job, phase, .. } = self;
        let events = job.events.clone();
        let position = job.state.pos();
        drop(job);
        if let Phase::Ended(mut event) = phase {
            if let Event::Done(finish) = &mut event {
                finish.position = position;
            }
            let _ = events.send(event);
        }
    }
}

/// What the loop keeps between turns: the model and one worker's buffers, or the
/// streams' device.
struct Engine {
    prepared: Arc<Prepared>,
    scratch: Scratch,
    device: Option<Box<dyn Streams>>,
    chunk: usize, // prompt tokens a stream reads a turn
}

/// Runs the loop until `jobs` is closed and no stream is left; `cancel` ends every
/// stream at once (the end of a shutdown's grace period). With a `device`, the
/// streams run there.
pub fn run(prepared: Arc<Prepared>, jobs: Receiver<Job>, cancel: Arc<AtomicBool>, device: Option<Box<dyn Streams>>) {
    let chunk = match (&*prepared, &device) {
        (_, Some(device)) => device.chunk(),
        (Prepared::Bdh(p), None) => p.prefill_chunk(),
        (Prepared::Gpt(_), None) => usize::MAX,
    };
    let mut engine = Engine { scratch: prepared.scratch(), chunk, prepared, device };
    let admit = |job| Stream { job, phase: Phase::Prefill { read: 0 }, slot: None };
    let mut live: Vec<Stream> = Vec::new();
    let mut open = true;
    loop {
        // Admit what arrived; wait for work when there is none.
        if live.is_empty() && open {
            match jobs.recv() {
                Ok(job) => live.push(admit(job)),
                Err(_) => open = false,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(job) => live.push(admit(job)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if live.is_empty() && !open {
            return;
        }
        // A client that went away frees its slot and its session's state now.
        let (gone, going): (Vec<_>, _) = live.drain(..).partition(|s| s.job.events.is_closed());
        live = going;
        gone.into_iter().for_each(|mut s| engine.bring_back(&mut s));
        engine.turn(&mut live, cancel.load(Ordering::SeqCst));
        let (ended, going) = live.drain(..).partition(|s| matches!(s.phase, Phase::Ended(_)));
        live = going;
        for mut s in ended {
            engine.bring_back(&mut s);
            s.close();
        }
    }
}

impl Engine {
    /// One turn: a prefill chunk of each stream reading its prompt, a token chosen
    /// for each generating one, one batched step for all of them.
    fn turn(&mut self, live: &mut [Stream], cancelled: bool) {
        for s in live.iter_mut() {
            if cancelled {
                s.finish(Reason::Cancelled);
                continue;
            }
            if let Phase::Prefill { read } = s.phase {
                match self.prefill(s, read) {
                    Ok(phase) => s.phase = phase,
                    Err(e) => s.fail(e.to_string()),
                }
            }
            let Phase::Decode { decoding, next } = &mut s.phase else { continue };
            *next = decoding.next_token(&mut s.job.sampler);
            match *next {
                None => {
                    let reason = if decoding.stopped_by().is_some() { Reason::Stop } else { Reason::Length };
                    s.finish(reason);
                }
                Some(token) => {
                    // What would fail the step for every stream is checked for each
                    // alone, so that a stream at fault ends by itself.
                    let checked = match (&self.device, s.slot) {
                        (Some(device), Some(slot)) => device.check_step(slot, token),
                        _ => self.prepared.check_step(&s.job.state, token),
                    };
                    if let Err(e) = checked {
                        s.fail(e.to_string());
                    }
                }
            }
        }
        self.step(live);
    }

    /// Reads one chunk of the prompt from `read` on (chunks of prefill_chunk()
    /// tokens read exactly as one prefill would): the stream's next phase.
    fn prefill(&mut self, s: &mut Stream, read: usize) -> bdh::Result<Phase> {
        let job = &mut s.job;
        let end = job.prompt.len().min(read.saturating_add(self.chunk));
        let chunk = &job.prompt[read..end];
        let logits = match &mut self.device {
            Some(device) => {
                let slot = match s.slot {
                    Some(slot) => slot,
                    None => *s.slot.insert(device.open(&job.state)?),
                };
                device.prefill(slot, chunk)?
            }
            None => self.prepared.prefill(&mut job.state, &mut self.scratch, chunk, &NO_EDITS)?,
        };
        Ok(if end == job.prompt.len() {
            Phase::Decode { decoding: Decoding::new(&job.prompt, &job.generation, logits), next: None }
        } else {
            Phase::Prefill { read: end }
        })
    }

    /// One batched step of every stream that chose a token; each reads its row of
    /// logits. A step that fails anyway fails the streams in it, not the others.
    fn step(&mut self, live: &mut [Stream]) {
        let tokens: Vec<u32> = live
            .iter()
            .filter_map(|s| match s.phase {
                Phase::Decode { next, .. } => next,
                _ => None,
            })
            .collect();
        if tokens.is_empty() {
            return;
        }
        let stepped = match &mut self.device {
            Some(device) => {
                let slots: Option<Vec<usize>> = live.iter().filter(|s| s.stepping()).map(|s| s.slot).collect();
                device.step(&slots.expect("a decoding stream's state is on the device"), &tokens)
            }
            None => {
                let mut states: Vec<&mut State> =
                    live.iter_mut().filter(|s| s.stepping()).map(|s| &mut *s.job.state).collect();
                self.prepared.step(&mut states, &mut self.scratch, &tokens, &NO_EDITS)
            }
        };
        let stepping = live.iter_mut().filter(|s| s.stepping());
        match stepped {
            Ok(logits) => {
                let v = logits.len() / tokens.len();
                stepping.zip(logits.chunks_exact(v)).for_each(|(s, row)| s.read(row));
            }
            Err(e) => stepping.for_each(|s| s.fail(e.to_string())),
        }
    }

    /// A stream's state back from the device into its lease (and so its session),
    /// however the stream ended; if it cannot come back, the lease keeps the state
    /// the stream started from and the stream fails.
    fn bring_back(&mut self, s: &mut Stream) {
        let (Some(device), Some(slot)) = (&mut self.device, s.slot.take()) else { return };
        match device.close(slot) {
            Ok(state) => *s.job.state = state,
            Err(e) => s.fail(format!("{e} (the session keeps its state from before this request)")),
        }
    }
}
