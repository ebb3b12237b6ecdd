//! The decoding loop: one thread owns the model's scratch and every live stream,
//! and advances them together (continuous batching). Each turn it admits the
//! requests that arrived, reads one prefill chunk of each stream still reading its
//! prompt, chooses every decoding stream's next token and runs one batched step
//! for all of them. A stream whose client went away is dropped at the next turn.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use bdh::infer::{BatchScratch, Decoding, Generation, Prepared, Sampler, State};
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

/// A stream in the engine.
struct Live {
    job: Job,
    read: usize,                // prompt tokens read so far
    decoding: Option<Decoding>, // once the prompt is read
    next: Option<u32>,          // the token chosen for this turn's step
    end: Option<Reason>,
}

/// Runs the loop until `jobs` is closed and no stream is left; `cancel` ends every
/// stream at once (the end of a shutdown's grace period).
pub fn run(prepared: Arc<Prepared>, jobs: Receiver<Job>, cancel: Arc<AtomicBool>) {
    let mut scratch = prepared.scratch(false);
    let mut batch = BatchScratch::default();
    let chunk = match &*prepared {
        Prepared::Bdh(p) => p.prefill_chunk(),
        Prepared::Gpt(_) => usize::MAX,
    };
    let mut live: Vec<Live> = Vec::new();
    let mut open = true;
    loop {
        // Admit what arrived; wait for work when there is none.
        if live.is_empty() && open {
            match jobs.recv() {
                Ok(job) => live.push(Live { job, read: 0, decoding: None, next: None, end: None }),
                Err(_) => open = false,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(job) => live.push(Live { job, read: 0, decoding: None, next: None, end: None }),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if live.is_empty() && !open {
            return;
        }
        let cancelled = cancel.load(Ordering::SeqCst);
        // A client that went away frees its slot now.
        drop(extract(&mut live, |l| l.job.events.is_closed()));
        if let Err(e) = turn(&prepared, &mut live, &mut scratch, &mut batch, chunk, cancelled) {
            for l in live.drain(..) {
                let _ = l.job.events.send(Event::Failed(e.to_string()));
            }
        }
        for mut l in extract(&mut live, |l| l.end.is_some()) {
            let reason = l.end.expect("an ended stream has a reason");
            if reason != Reason::Cancelled {
                if let Some(rest) = l.decoding.as_mut().and_then(Decoding::rest) {
                    let _ = l.job.events.send(Event::Text(rest));
                }
            }
            let finish = Finish {
                reason,
                prompt_tokens: l.read,
                completion_tokens: l.decoding.as_ref().map_or(0, |d| d.tokens().len()),
                position: l.job.state.pos(),
            };
            let events = l.job.events.clone();
            // The state goes back before the end is sent, so a client's next request
            // on the session finds it.
            drop(l.job);
            let _ = events.send(Event::Done(finish));
        }
    }
}

/// One turn: prefill chunks, token choices, one batched step.
fn turn(
    prepared: &Prepared,
    live: &mut [Live],
    scratch: &mut bdh::infer::Scratch,
    batch: &mut BatchScratch,
    chunk: usize,
    cancelled: bool,
) -> bdh::Result<()> {
    for l in live.iter_mut() {
        if cancelled {
            l.end = Some(Reason::Cancelled);
            continue;
        }
        if l.decoding.is_none() {
            // One chunk per turn, so a long prompt does not stall the other streams;
            // chunks of prefill_chunk() tokens read exactly as one prefill would.
            let end = l.job.prompt.len().min(l.read.saturating_add(chunk));
            let logits = prepared.prefill(&mut l.job.state, scratch, &l.job.prompt[l.read..end], &NO_EDITS)?;
            l.read = end;
            if end == l.job.prompt.len() {
                l.decoding = Some(Decoding::new(&l.job.prompt, &l.job.generation, logits));
            }
        }
        if let Some(d) = &mut l.decoding {
            l.next = d.next_token(&mut l.job.sampler);
            if l.next.is_none() {
                l.end = Some(if d.stopped_by().is_some() { Reason::Stop } else { Reason::Length });
            }
        }
    }
    let tokens: Vec<u32> = live.iter().filter_map(|l| l.next).collect();
    if tokens.is_empty() {
        return Ok(());
    }
    let mut states: Vec<&mut State> = live.iter_mut().filter(|l| l.next.is_some()).map(|l| &mut *l.job.state).collect();
    let logits = prepared.step_batch(&mut states, batch, &tokens)?;
    let v = logits.len() / tokens.len();
    for (l, row) in live.iter_mut().filter(|l| l.next.is_some()).zip(logits.chunks_exact(v)) {
        l.next = None;
        let d = l.decoding.as_mut().expect("a stream that chose a token is decoding");
        match d.read(row) {
            None => l.end = Some(Reason::Stop),
            Some(text) if !text.is_empty() => {
                let _ = l.job.events.send(Event::Text(text));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Removes the streams `which` selects from `live`, keeping the order of both.
fn extract(live: &mut Vec<Live>, which: impl Fn(&Live) -> bool) -> Vec<Live> {
    let (out, kept): (Vec<Live>, Vec<Live>) = live.drain(..).partition(which);
    *live = kept;
    out
}
