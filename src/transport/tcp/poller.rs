//! Process-wide threads (one, or one per direction) that move small
//! messages for every connection while such messages flow
//! (`transport.poller`), so that NCCL's proxy thread only posts and tests.
//!
//! Without it, the proxy thread copies every message up to `inline_bytes`
//! itself inside `isend`/`test`: at 256 KiB under NCCL one pass of its loop
//! took 34–48 µs, most of it those copies, and each hop of a ring waits up
//! to a pass on both ends before anyone notices it. The poller takes the
//! copies off that loop without a wake-up per message: it spins over the
//! connections that have such messages in flight, and sleeps once no small
//! message has been posted or received for [`LINGER`]. While it sleeps the
//! proxy moves small messages itself as before, and the next small send
//! posted or small message received wakes the poller. Bulk traffic alone
//! never keeps it awake: measured under NCCL, spinning pollers took the
//! cores that the stream threads copy large messages on. Nor do tiny
//! messages ([`TINY_BYTES`]), which the proxy sends faster than it could
//! hand them over.
//!
//! It does the caller's share of the work (`Pumper::Caller`), never more:
//! messages above `inline_bytes`, and sends it cannot finish, go to the
//! stream threads exactly as they do from the proxy.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::metrics::{self, TransportKind};
use crate::sys::thread::spawn_running;

/// How long the poller spins after the last small message before it sleeps.
const LINGER: Duration = Duration::from_millis(1);

/// Messages up to this size neither wake nor keep a poller awake, and the
/// caller sends them itself: copying a few bytes costs the proxy less than
/// handing them over. On the H200 host an 8-byte allreduce took 46 against
/// 41 µs when the pollers moved such messages too (10 ABBA rounds).
pub(super) const TINY_BYTES: u64 = 4096;

/// Whether a message of `total` bytes is a poller's to move: in the
/// caller's share (not `bulk`) and not tiny.
pub(super) fn is_polled(total: u64, bulk: bool) -> bool {
    !bulk && total > TINY_BYTES
}

/// A connection end the poller can move bytes for.
pub(super) trait Polled: Send + Sync {
    /// Whether it has requests in flight (worth a visit).
    fn busy(&self) -> bool;
    /// Whether it is closing: the poller lets go of it at once.
    fn closing(&self) -> bool;
    /// Moves what the caller's thread would, without waiting.
    fn poll_once(&self);
}

/// Which threads move the caller's share of the messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PollerMode {
    /// NCCL's proxy thread, inside `isend`/`test`.
    #[default]
    Off,
    /// One poller thread for the sends and receives of the process.
    One,
    /// One poller thread for the sends and another for the receives.
    Two,
}

impl PollerMode {
    /// The configuration's spelling (`transport.poller`).
    pub fn name(self) -> &'static str {
        match self {
            PollerMode::Off => "off",
            PollerMode::One => "one",
            PollerMode::Two => "two",
        }
    }
}

/// Which of the process's pollers.
#[derive(Clone, Copy)]
enum Role {
    Both,
    Sends,
    Receives,
}

pub(super) struct Poller {
    conns: Mutex<Vec<Weak<dyn Polled>>>,
    /// Bumped when a connection joins or leaves, so the thread refreshes
    /// its list (it holds strong references only between refreshes).
    members: AtomicU64,
    /// Bumped by every small message posted (sends) or received.
    activity: AtomicU64,
    /// Set by the thread while it spins; callers skip their own copies
    /// only then.
    spinning: AtomicBool,
    /// Set by the thread before it sleeps, cleared by the nudge that wakes it.
    sleeping: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
    /// Times the thread woke to spin (also summed in the metrics).
    wakeups: AtomicU64,
    /// The process the thread runs in: a forked child inherits this state
    /// but not the thread, so its connections get no poller.
    pid: u32,
}

fn instance(role: Role) -> &'static Poller {
    static POLLERS: [OnceLock<Poller>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    POLLERS[role as usize].get_or_init(|| {
        let name = match role {
            Role::Both => "airamp-poller",
            Role::Sends => "airamp-poll-tx",
            Role::Receives => "airamp-poll-rx",
        };
        // The thread waits for this initialisation to finish. Should it
        // ever panic, it stops covering and the callers move their
        // messages themselves again.
        let builder = std::thread::Builder::new()
            .name(name.into())
            .stack_size(256 << 10);
        let spawned = spawn_running(builder, move || {
            let p = instance(role);
            if catch_unwind(AssertUnwindSafe(|| run(p))).is_err() {
                p.spinning.store(false, Ordering::SeqCst);
                crate::warn!("tcp: {name} thread failed; NCCL's proxy thread moves small messages");
            }
        });
        if let Err(e) = spawned {
            crate::warn!("tcp: no {name} thread ({e}); NCCL's proxy thread moves small messages");
        }
        Poller {
            conns: Mutex::new(Vec::new()),
            members: AtomicU64::new(0),
            activity: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            wakeups: AtomicU64::new(0),
            pid: std::process::id(),
        }
    })
}

impl Poller {
    /// The poller of a connection's sending end, if any.
    pub(super) fn for_sends(mode: PollerMode) -> Option<&'static Poller> {
        match mode {
            PollerMode::Off => None,
            PollerMode::One => instance(Role::Both).in_this_process(),
            PollerMode::Two => instance(Role::Sends).in_this_process(),
        }
    }

    /// The poller of a connection's receiving end, if any.
    pub(super) fn for_receives(mode: PollerMode) -> Option<&'static Poller> {
        match mode {
            PollerMode::Off => None,
            PollerMode::One => instance(Role::Both).in_this_process(),
            PollerMode::Two => instance(Role::Receives).in_this_process(),
        }
    }

    /// `None` in a child forked after the poller started: its thread did
    /// not come along (and its locks may have been held at the fork), so
    /// the child's connections are moved by their callers as without one.
    fn in_this_process(&'static self) -> Option<&'static Poller> {
        (self.pid == std::process::id()).then_some(self)
    }

    /// Adds a connection end; call [`Poller::left`] when it closes, so the
    /// thread lets go of it promptly.
    pub(super) fn join(&self, conn: Weak<dyn Polled>) {
        self.conns.lock().expect("poller list").push(conn);
        self.members.fetch_add(1, Ordering::SeqCst);
    }

    /// A polled connection closed: the thread drops its reference at once
    /// (or, asleep, holds none).
    pub(super) fn left(&self) {
        self.members.fetch_add(1, Ordering::SeqCst);
    }

    /// A small send was posted or a small message received: keep the thread
    /// spinning, or wake it if it sleeps (one futex call, only then).
    pub(super) fn nudge(&self) {
        self.activity.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _guard = self.sleep.lock().expect("poller sleep lock");
            self.sleeping.store(false, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// Whether the thread is spinning, i.e. will visit every busy
    /// connection within microseconds: then the caller need not move bytes
    /// itself.
    pub(super) fn covering(&self) -> bool {
        self.spinning.load(Ordering::SeqCst)
    }

    /// How often the thread has woken to spin.
    #[cfg(test)]
    pub(super) fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    fn woke(&self) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        metrics::transport(TransportKind::Tcp).poller_woke();
    }

    fn refresh(&self, live: &mut Vec<Arc<dyn Polled>>) {
        live.clear();
        let mut conns = self.conns.lock().expect("poller list");
        conns.retain(|w| match w.upgrade() {
            Some(c) if !c.closing() => {
                live.push(c);
                true
            }
            _ => false,
        });
    }
}

fn run(p: &'static Poller) {
    let mut live: Vec<Arc<dyn Polled>> = Vec::new();
    let mut members = u64::MAX;
    let mut activity = p.activity.load(Ordering::SeqCst);
    let mut last_active = Instant::now();
    let mut spinning_since = last_active;
    let m = metrics::transport(TransportKind::Tcp);
    p.woke();
    p.spinning.store(true, Ordering::SeqCst);
    loop {
        let now_members = p.members.load(Ordering::SeqCst);
        if now_members != members {
            members = now_members;
            p.refresh(&mut live);
        }
        for conn in &live {
            if conn.busy() {
                conn.poll_once();
            }
        }
        let now_activity = p.activity.load(Ordering::SeqCst);
        if now_activity != activity {
            activity = now_activity;
            last_active = Instant::now();
        } else if last_active.elapsed() >= LINGER {
            // Let go of the connections while asleep: a comm may close then.
            live.clear();
            members = u64::MAX;
            p.spinning.store(false, Ordering::SeqCst);
            m.poller_spun(spinning_since.elapsed());
            p.sleeping.store(true, Ordering::SeqCst);
            // A nudge after our last look but before `sleeping` rose saw it
            // false and woke nobody: look once more.
            if p.activity.load(Ordering::SeqCst) == activity {
                let guard = p.sleep.lock().expect("poller sleep lock");
                let _guard = p
                    .wake
                    .wait_while(guard, |()| p.sleeping.load(Ordering::SeqCst))
                    .expect("poller sleep lock");
            }
            p.sleeping.store(false, Ordering::SeqCst);
            p.woke();
            p.spinning.store(true, Ordering::SeqCst);
            last_active = Instant::now();
            spinning_since = last_active;
        }
        std::hint::spin_loop();
    }
}
