//! The host executor: a small pool of threads that run steps' codec and
//! reduction work off NCCL's proxy thread.
//!
//! The scheduler ([`super::group`]) owns every step and hands one to a
//! worker as a [`Job`] together with the events it has to handle (its
//! start, arrived messages). The worker runs them, writes the step's output
//! into NCCL's buffer (steps own disjoint ranges) and sends the step back
//! with the messages it produced. A step is on at most one worker at a
//! time, so its own events stay ordered while different steps run in
//! parallel. Idle workers sleep on a stack, and a job wakes the one that
//! went idle last ([`Pool`]): no spinning without traffic. The scheduler
//! runs light jobs (codec-free steps of a few hundred KiB) on its own
//! thread instead ([`Workers::run_here`]): for them the hand-off's
//! wake-ups cost more than the work.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::algo::CollError;
use super::buffers::Buffers;
use super::lend::Payload;
use super::pool;
use super::steps::{Effects, Lane, Send, Step};
use crate::error::{NetError, NetResult, PeerFailure};
use crate::sys::thread::spawn_running;

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
    /// Empty; filled with the messages the step produces (a recycled
    /// vector, see [`Done::events`]).
    pub sends: Vec<Outbound>,
    /// Empty; what the step's events produce passes through it (recycled).
    pub effects: Effects,
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
    /// The job's event list and effects, emptied, for the scheduler to
    /// reuse.
    pub events: Vec<Event>,
    pub effects: Effects,
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
        mut events,
        input,
        output,
        mut sends,
        mut effects,
    } = job;
    let mut ran = [(Duration::ZERO, 0); 3];
    let mut handle = |step: &mut Step, event: Event| -> NetResult<()> {
        let (kind, began) = (event.kind(), Instant::now());
        let fx = &mut effects;
        match event {
            Event::Start => input
                .with_bytes(step.input_range(), |bytes| step.start(bytes, fx))?
                .map_err(|e| step_error(rank, e))?,
            Event::Message { from, lane, bytes } if step.folds_in_place(lane) => {
                let shard = step.fold_range();
                let to = &mut fx.sends;
                let folded = if !step.reads_own_input(from, lane) {
                    // It waits for its turn, or meets only others' bytes.
                    output.with_bytes_mut(shard, |out| {
                        step.on_contribution(from, lane, bytes, &[], out, to)
                    })?
                } else if input.may_overlap(shard.clone(), &output, shard.clone()) {
                    // An in-place call: the fold reads a copy of its shard.
                    let mine = input.with_bytes(shard.clone(), pool::copy_of)?;
                    let folded = output.with_bytes_mut(shard, |out| {
                        step.on_contribution(from, lane, bytes, &mine, out, to)
                    })?;
                    pool::give(mine);
                    folded
                } else {
                    output.with_bytes_mut(shard.clone(), |out| {
                        input.with_bytes(shard, |mine| {
                            step.on_contribution(from, lane, bytes, mine, out, to)
                        })
                    })??
                };
                folded.map_err(|e| step_error(rank, e))?;
            }
            Event::Message { from, lane, bytes } => step
                .on_message(from, lane, bytes, fx)
                .map_err(|e| step_error(rank, e))?,
        }
        for w in fx.writes.drain(..) {
            output.write(w.offset, &w.bytes)?;
            pool::give_shared(w.bytes);
        }
        for Send { to, lane, bytes } in fx.sends.drain(..) {
            let bytes = Buffers::payload(&input, &output, bytes)?;
            sends.push(Outbound { to, lane, bytes });
        }
        ran[kind] = (ran[kind].0 + began.elapsed(), ran[kind].1 + 1);
        Ok(())
    };
    let mut result = Ok(());
    for event in events.drain(..) {
        result = handle(&mut step, event);
        if result.is_err() {
            break;
        }
    }
    // An event that failed may have left messages and writes behind.
    effects.sends.clear();
    effects.writes.clear();
    Done {
        seq,
        queued: began.saturating_duration_since(submitted),
        ran,
        step: Some(step),
        sends: result.map(|()| sends),
        events,
        effects,
    }
}

/// Runs jobs on `n` threads, or on the caller's thread when `n == 0`.
pub struct Workers {
    pool: Option<Arc<Pool<Job>>>,
    results: Receiver<Done>,
    /// Results of jobs run inline (no threads).
    inline: VecDeque<Done>,
    threads: Vec<JoinHandle<()>>,
}

/// The jobs waiting for a worker and the workers waiting for a job.
///
/// Idle workers wait on a stack, and a job wakes the one on top: the most
/// recently idle, whose core is the likeliest still awake. On the H200
/// host, a virtual machine, a thread idle for a millisecond took 24-31 µs
/// to wake at the median and about 150 at the 90th percentile, against
/// 6 µs after a 100 µs sleep (docs/collnet.md; `airamp bench wake`). A
/// shared queue hands jobs round the pool instead, to the longest idle
/// worker, and a job waited 74-97 µs for a worker there against 17-26
/// from the stack.
struct Pool<J> {
    queue: Mutex<Queue<J>>,
    /// One per worker, so a job wakes exactly the worker it picked.
    wake: Vec<Condvar>,
}

struct Queue<J> {
    jobs: VecDeque<J>,
    /// Idle workers, the most recently idle last.
    idle: Vec<usize>,
    closed: bool,
}

impl<J> Pool<J> {
    fn new(workers: usize) -> Pool<J> {
        Pool {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: Vec::with_capacity(workers),
                closed: false,
            }),
            wake: (0..workers).map(|_| Condvar::new()).collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<J>> {
        // Jobs run outside the lock (and catch their panics), so a poisoned
        // lock still guards a consistent queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job and wakes the most recently idle worker, if any.
    fn push(&self, job: J) {
        let picked = {
            let mut q = self.lock();
            q.jobs.push_back(job);
            q.idle.pop()
        };
        if let Some(w) = picked {
            self.wake[w].notify_one();
        }
    }

    /// Lets every worker return once the queued jobs are done.
    fn close(&self) {
        self.lock().closed = true;
        self.wake.iter().for_each(Condvar::notify_one);
    }

    /// Worker `me`'s loop: runs queued jobs with `run` until it returns
    /// false or the pool closes, and otherwise waits on the idle stack
    /// until a job picks it. A job the worker finds queued on its own is
    /// taken without waiting: whoever was picked for it then finds nothing
    /// and goes back on the stack.
    fn serve(&self, me: usize, mut run: impl FnMut(J) -> bool) {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                if !run(job) {
                    return;
                }
                q = self.lock();
                continue;
            }
            if q.closed {
                return;
            }
            q.idle.push(me);
            q = self.wake[me]
                .wait_while(q, |q| !q.closed && q.idle.contains(&me))
                .unwrap_or_else(|e| e.into_inner());
            q.idle.retain(|&w| w != me);
        }
    }
}

impl Workers {
    /// Starts `n` worker threads named after the group member. The caller
    /// has at most `most_jobs` jobs out at once (its window of steps, each
    /// on one worker at a time): the results' channel holds that many,
    /// allocated here, so that handing results back never allocates.
    pub fn start(n: usize, rank: usize, most_jobs: usize) -> NetResult<Workers> {
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(most_jobs);
        let pool = Arc::new(Pool::new(n));
        let mut workers = Workers {
            pool: (n > 0).then(|| Arc::clone(&pool)),
            results: done_rx,
            inline: VecDeque::new(),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let pool = Arc::clone(&pool);
            let done = done_tx.clone();
            let builder = std::thread::Builder::new().name(format!("airamp-cn{rank}-w{i}"));
            let handle = spawn_running(builder, move || {
                pool.serve(i, |job| done.send(run_guarded(job)).is_ok())
            })
            .map_err(|e| NetError::io("collnet worker thread", e))?;
            workers.threads.push(handle);
        }
        Ok(workers)
    }

    /// Hands a job to a worker (or runs it now, without workers).
    pub fn submit(&mut self, job: Job) {
        match &self.pool {
            Some(pool) => pool.push(job),
            None => self.run_here(job),
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
        events: Vec::new(),
        effects: Effects::default(),
    })
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.close();
        }
        // No worker may block on a full results channel while joined: with
        // the receiver gone, a send fails at once.
        let (_, closed) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.results, closed));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    const BOUND: Duration = Duration::from_secs(10);

    /// Waits (bounded) until `n` workers sit on the idle stack.
    fn until_idle<J>(pool: &Pool<J>, n: usize) {
        let deadline = Instant::now() + BOUND;
        while pool.lock().idle.len() < n {
            assert!(Instant::now() < deadline, "workers never went idle");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `n` workers that report `Some((worker, job))` per job and `None`
    /// when they return.
    fn start(pool: &Arc<Pool<u32>>, n: usize) -> Receiver<Option<(usize, u32)>> {
        let (tx, rx) = channel();
        for me in 0..n {
            let (pool, tx) = (Arc::clone(pool), tx.clone());
            std::thread::spawn(move || {
                pool.serve(me, |job| tx.send(Some((me, job))).is_ok());
                let _ = tx.send(None);
            });
        }
        rx
    }

    /// Closes the pool and collects what the workers still report until
    /// all `n` have returned, every wait bounded.
    fn close(pool: &Pool<u32>, n: usize, rx: &Receiver<Option<(usize, u32)>>) -> Vec<u32> {
        pool.close();
        let (mut jobs, mut returned) = (Vec::new(), 0);
        while returned < n {
            match rx.recv_timeout(BOUND).expect("a worker never returned") {
                Some((_, job)) => jobs.push(job),
                None => returned += 1,
            }
        }
        jobs
    }

    fn next_job(rx: &Receiver<Option<(usize, u32)>>) -> (usize, u32) {
        rx.recv_timeout(BOUND)
            .expect("a queued job never ran")
            .expect("no worker returns before close")
    }

    #[test]
    fn a_job_goes_to_the_worker_that_went_idle_last() {
        let pool = Arc::new(Pool::new(4));
        let rx = start(&pool, 4);
        until_idle(&pool, 4);
        let top = *pool.lock().idle.last().expect("idle workers");
        for job in 0..20 {
            pool.push(job);
            assert_eq!(
                next_job(&rx),
                (top, job),
                "one at a time, the same warm worker"
            );
            until_idle(&pool, 4);
            assert_eq!(pool.lock().idle.last(), Some(&top));
        }
        assert!(close(&pool, 4, &rx).is_empty());
    }

    #[test]
    fn bursts_pushed_while_the_workers_are_busy_all_run_before_close() {
        let pool = Arc::new(Pool::new(3));
        let rx = start(&pool, 3);
        let mut job = 0;
        for burst in [1, 2, 3, 7, 50, 200] {
            for _ in 0..burst {
                pool.push(job);
                job += 1;
            }
            // Every job of the burst runs without another push or a close
            // to wake anyone: no worker may sleep while a job is queued.
            let mut ran: Vec<u32> = (0..burst).map(|_| next_job(&rx).1).collect();
            ran.sort_unstable();
            assert_eq!(ran, (job - burst..job).collect::<Vec<_>>());
        }
        assert!(close(&pool, 3, &rx).is_empty());
    }

    #[test]
    fn every_job_runs_once_and_close_drains_the_queue() {
        let pool = Arc::new(Pool::new(3));
        let rx = start(&pool, 3);
        for job in 0..1000 {
            pool.push(job);
        }
        let mut ran = close(&pool, 3, &rx);
        ran.sort_unstable();
        assert_eq!(ran, (0..1000).collect::<Vec<_>>());
    }
}
