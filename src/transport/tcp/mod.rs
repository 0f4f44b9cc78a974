//! The TCP driver: several streams per connection, one I/O thread per
//! stream, NCCL's calls never block.
//!
//! Small messages (up to `inline_bytes`) are moved by NCCL's own proxy
//! thread inside `isend`/`test`, with non-blocking calls and no other thread
//! woken, or by the process's poller threads while those spin (`poller`);
//! larger ones by the stream threads, in parallel, which sleep in the
//! kernel when there is nothing to do (no spinning). The stream threads also
//! keep every connection alive in both directions (heartbeats, see
//! `transport::liveness`). A failure on any stream fails the whole
//! connection, and every later `test` reports it.

mod connect;
mod listen;
mod poller;
mod recv;
mod send;
mod socket;
mod spares;
mod stage;
mod timeline;

use std::net::{Shutdown, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics::{self, TransportKind};
use crate::sys::thread::spawn_running;

pub use connect::Connecting;
pub use listen::Listener;
pub use poller::PollerMode;
pub use recv::{RecvComm, RecvRequest};
pub use send::{SendComm, SendRequest};

pub use crate::transport::matching::{PerSlot, MAX_RECVS};

/// Per-connection tunables, from the configuration.
#[derive(Clone, Debug)]
pub struct TcpSettings {
    pub streams: usize,
    pub chunk_bytes: u32,
    /// A message up to this size travels whole on one stream; larger ones
    /// are cut into chunks no smaller than this (below 64 KiB, the default,
    /// the per-chunk overhead outweighs the parallelism).
    pub min_chunk_bytes: u32,
    /// Messages above `inline_bytes` and up to this size go on the first two
    /// streams only ([`crate::transport::sched::NARROW_STREAMS`]); 0: none.
    pub narrow_bytes: u64,
    /// SO_SNDBUF/SO_RCVBUF; 0 leaves the kernel's autotuning on.
    pub socket_buffer: usize,
    /// How long a peer may stay silent (no data, no heartbeat) before the
    /// connection fails.
    pub peer_timeout: Duration,
    /// Messages up to this size are moved by the caller's thread (NCCL's
    /// proxy) inside `isend`/`test`; larger ones by the stream threads.
    pub inline_bytes: u64,
    /// Whether the process's poller threads, spinning while such messages
    /// flow, move those above 4 KiB instead of the caller
    /// (`transport::tcp::poller`).
    pub poller: PollerMode,
    /// How long connect and the hello exchange may take.
    pub handshake_timeout: Duration,
    /// Digest of what every host of a job must share (the settings the
    /// tuner decides from, and the version of its rules), set by the layer
    /// above. Ranks that decide differently pick different NCCL channel
    /// counts or algorithms and hang; so a peer whose digest differs is
    /// refused at connect, on both ends.
    pub agreement: u64,
}

/// The error both ends of a connection report when the peer's agreement
/// digest differs from ours ([`TcpSettings::agreement`]).
pub(crate) fn disagreement(peer: SocketAddr, theirs: u64, ours: u64) -> NetError {
    NetError::peer(peer, PeerFailure::Disagrees { ours, theirs })
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            streams: 2,
            chunk_bytes: 512 << 10,
            min_chunk_bytes: 64 << 10,
            narrow_bytes: 0,
            socket_buffer: 0,
            peer_timeout: Duration::from_secs(30),
            inline_bytes: 64 << 10,
            poller: PollerMode::Off,
            handshake_timeout: Duration::from_secs(10),
            agreement: 0,
        }
    }
}

/// Most requests one comm may have in flight (NCCL_NET_MAX_REQUESTS).
pub const MAX_REQUESTS: usize = 32;

/// Starts one thread per stream running `work(shared, stream)`. A panic in
/// one is handed to `on_panic` (which fails the connection) rather than
/// leaving NCCL polling requests nobody will finish.
///
/// Returns once every thread runs ([`spawn_running`]).
fn spawn_stream_threads<S: Send + Sync + 'static>(
    shared: &Arc<S>,
    streams: usize,
    role: &str,
    work: fn(Arc<S>, usize),
    on_panic: fn(&S),
) -> NetResult<Vec<JoinHandle<()>>> {
    (0..streams)
        .map(|i| {
            let shared = Arc::clone(shared);
            let builder = std::thread::Builder::new()
                .name(format!("airamp-{role}{i}"))
                .stack_size(256 << 10);
            spawn_running(builder, move || {
                let watch = Arc::clone(&shared);
                if catch_unwind(AssertUnwindSafe(|| work(shared, i))).is_err() {
                    on_panic(&watch);
                }
            })
            .map_err(|e| NetError::io("spawn stream thread", e))
        })
        .collect()
}

/// The end of closing either side of a connection, once its comm is marked
/// closing and its threads are woken: shuts the sockets down (data already
/// queued in the kernel is still delivered before FIN), waits for each
/// stream's lock once, so that no poller or stream thread touches NCCL's
/// buffers after close returns (later ones find the sockets shut down),
/// and joins the stream threads.
fn shut_down<S>(socks: &[Arc<Socket>], streams: &[Mutex<S>], workers: &mut Vec<JoinHandle<()>>) {
    for s in socks {
        let _ = s.shutdown(Shutdown::Both);
    }
    for stream in streams {
        drop(stream.lock());
    }
    for w in workers.drain(..) {
        let _ = w.join();
    }
    metrics::transport(TransportKind::Tcp).connection_closed();
}

/// A monotonic millisecond clock that fits in an atomic.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// How long from now until `deadline_ms` of [`now_ms`]'s clock.
fn until(deadline_ms: u64) -> Duration {
    Duration::from_millis(deadline_ms.saturating_sub(now_ms()))
}

/// Who is pumping a stream: its own thread moves everything; NCCL's
/// thread (inside `isend`/`test`) only what is small enough to move inline.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pumper {
    Caller,
    Thread,
}

/// Threads of one comm asleep on its condvar, so that the common path
/// (nobody asleep) skips the futex wake-up system call.
#[derive(Default)]
struct Sleepers(AtomicUsize);

impl Sleepers {
    /// Waits on `cv` (with `guard`'s mutex) until `done` or `timeout`.
    fn wait<'a, T>(
        &self,
        cv: &Condvar,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
        mut done: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |t| !done(t))
            .expect("comm lock");
        self.0.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// Counts a sleeper by hand, around a wait counted elsewhere too.
    fn enter(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether anyone sleeps; a waker that changed what sleepers wait for
    /// (with SeqCst, or under their mutex) and sees none needs no wake-up.
    fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // tests lend stack buffers as RawBufs
mod tests;
