//! The host executor: a small pool of threads that run steps' codec and
//! reduction work off NCCL's proxy thread.
//!
//! The scheduler ([`super::group`]) owns every step and hands one to a
//! worker as a [`Job`] together with the events it has to handle (its
//! start, arrived messages). The worker runs them, writes the step's output
//! into NCCL's buffer (steps own disjoint ranges) and sends the step back
//! with the messages it produced. A step is on at most one worker at a
//! time, so its own events stay ordered while different steps run in
//! parallel. Idle workers block on the job queue: no spinning without
//! traffic. The scheduler runs light jobs (codec-free steps of a few
//! hundred KiB) on its own thread instead ([`Workers::run_here`]): for
//! them the hand-off's wake-ups cost more than the work.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::algo::CollError;
use super::buffers::Buffers;
use super::lend::Payload;
use super::pool;
use super::steps::{Effects, Lane, Send, Step};
use crate::error::{NetError, NetResult, PeerFailure};

/// Something a step must handle, in the order the scheduler saw it.
pub enum Event {
    /// Read the step's input and produce its first messages.
    Start,
    /// A message from member `from` on `lane`.
    Message {
        from: usize,
        lane: Lane,
        bytes: Vec<u8>,
    },
}

impl Event {
    /// 0: a start, 1: a contribution, 2: a result-lane message.
    pub fn kind(&self) -> usize {
        match self {
            Event::Start => 0,
            Event::Message { lane, .. } => 1 + *lane as usize,
        }
    }
}

/// A step and the events it must handle now.
pub struct Job {
    pub seq: u64,
    /// When the scheduler handed it over (its wait for a worker is timed).
    pub submitted: Instant,
    pub rank: usize,
    pub step: Box<Step>,
    pub events: Vec<Event>,
    pub input: Buffers,
    pub output: Buffers,
}

/// A message a job produced, as the transport will take it.
pub struct Outbound {
    pub to: usize,
    pub lane: Lane,
    pub bytes: Payload,
}

/// A step back from its job, with the messages it produced (or why not).
/// The step is lost only when its job panicked.
pub struct Done {
    pub seq: u64,
    /// From hand-over to a worker taking it.
    pub queued: Duration,
    /// Time spent on each kind of event ([`Event::kind`]) and how many.
    pub ran: [(Duration, u32); 3],
    pub step: Option<Box<Step>>,
    pub sends: NetResult<Vec<Outbound>>,
}

fn step_error(rank: usize, e: CollError) -> NetError {
    NetError::peer(
        format_args!("collnet member {rank}"),
        PeerFailure::Protocol(e.to_string()),
    )
}

/// Runs the job's events in order and applies their output writes; stops
/// at the first error.
fn run(job: Job) -> Done {
    let began = Instant::now();
    let Job {
        seq,
        submitted,
        rank,
        mut step,
        events,
        input,
        output,
    } = job;
    let mut sends = Vec::new();
    let mut ran = [(Duration::ZERO, 0); 3];
    let mut handle = |step: &mut Step, event: Event| -> NetResult<()> {
        let (kind, began) = (event.kind(), Instant::now());
        let fx: Effects = match event {
            Event::Start => input
                .with_bytes(step.input_range(), |bytes| step.start(bytes))?
                .map_err(|e| step_error(rank, e))?,
            Event::Message { from, lane, bytes } => step
                .on_message(from, lane, bytes)
                .map_err(|e| step_error(rank, e))?,
        };
        for w in fx.writes {
            output.write(w.offset, &w.bytes)?;
            pool::give_shared(w.bytes);
        }
        for Send { to, lane, bytes } in fx.sends {
            let bytes = input.payload(bytes)?;
            sends.push(Outbound { to, lane, bytes });
        }
        ran[kind] = (ran[kind].0 + began.elapsed(), ran[kind].1 + 1);
        Ok(())
    };
    let mut result = Ok(());
    for event in events {
        result = handle(&mut step, event);
        if result.is_err() {
            break;
        }
    }
    Done {
        seq,
        queued: began.saturating_duration_since(submitted),
        ran,
        step: Some(step),
        sends: result.map(|()| sends),
    }
}

/// Runs jobs on `n` threads, or on the caller's thread when `n == 0`.
pub struct Workers {
    jobs: Option<Sender<Job>>,
    results: Receiver<Done>,
    /// Results of jobs run inline (no threads).
    inline: VecDeque<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads named after the group member.
    pub fn start(n: usize, rank: usize) -> NetResult<Workers> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let jobs = Arc::clone(&job_rx);
            let done = done_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("airamp-cn{rank}-w{i}"))
                .spawn(move || worker(&jobs, &done))
                .map_err(|e| NetError::io("collnet worker thread", e))?;
            threads.push(handle);
        }
        Ok(Workers {
            jobs: (n > 0).then_some(job_tx),
            results: done_rx,
            inline: VecDeque::new(),
            threads,
        })
    }

    /// Hands a job to a worker (or runs it now, without workers).
    pub fn submit(&mut self, job: Job) {
        match &self.jobs {
            Some(tx) => {
                // Send fails only when every worker has exited, which only
                // Drop causes; the job's step is then dropped with the group.
                let _ = tx.send(job);
            }
            None => self.inline.push_back(run_guarded(job)),
        }
    }

    /// Runs a job on the caller's thread now (a light one, not worth a
    /// hand-off); its result comes back through [`Workers::poll`].
    pub fn run_here(&mut self, job: Job) {
        self.inline.push_back(run_guarded(job));
    }

    /// A finished job, if any.
    pub fn poll(&mut self) -> Option<Done> {
        self.inline
            .pop_front()
            .or_else(|| self.results.try_recv().ok())
    }
}

/// Runs a job; a panic fails the group (its step is lost, so it can never
/// finish) instead of killing the process or leaving NCCL polling forever.
fn run_guarded(job: Job) -> Done {
    let (seq, rank) = (job.seq, job.rank);
    catch_unwind(AssertUnwindSafe(|| run(job))).unwrap_or_else(|_| Done {
        seq,
        queued: Duration::ZERO,
        ran: [(Duration::ZERO, 0); 3],
        step: None,
        sends: Err(NetError::Internal(format!(
            "collnet member {rank}: step {seq} panicked"
        ))),
    })
}

fn worker(jobs: &Mutex<Receiver<Job>>, done: &Sender<Done>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // the group closed
        };
        if done.send(run_guarded(job)).is_err() {
            return;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
