//! The TCP driver: several streams per connection, one I/O thread per
//! stream, NCCL's calls never block.
//!
//! `isend`/`irecv` only queue work and `test` only reads atomics, so NCCL's
//! proxy thread stays free; the stream threads block in the kernel when
//! there is nothing to do (no spinning). A failure on any stream fails the
//! whole connection, and every later `test` reports it.

mod connect;
mod listen;
mod recv;
mod send;
mod socket;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{NetError, NetResult};

pub use connect::Connecting;
pub use listen::Listener;
pub use recv::{RecvComm, RecvRequest};
pub use send::{SendComm, SendRequest};

/// Per-connection tunables, from the configuration.
#[derive(Clone, Debug)]
pub struct TcpSettings {
    pub streams: usize,
    pub chunk_bytes: u32,
    /// SO_SNDBUF/SO_RCVBUF; 0 leaves the kernel's autotuning on.
    pub socket_buffer: usize,
    /// How long a peer may stay silent in the middle of a message.
    pub peer_timeout: Duration,
    /// How long connect and the hello exchange may take.
    pub handshake_timeout: Duration,
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            streams: 2,
            chunk_bytes: 512 << 10,
            socket_buffer: 0,
            peer_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Most requests one comm may have in flight (NCCL_NET_MAX_REQUESTS).
pub const MAX_REQUESTS: usize = 32;
/// Most slots in one grouped receive that we advertise.
pub const MAX_RECVS: usize = 8;

/// Starts one thread per stream running `work(shared, stream)`. A panic in
/// one is handed to `on_panic` (which fails the connection) rather than
/// leaving NCCL polling requests nobody will finish.
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
            std::thread::Builder::new()
                .name(format!("airamp-{role}{i}"))
                .stack_size(256 << 10)
                .spawn(move || {
                    let watch = Arc::clone(&shared);
                    if catch_unwind(AssertUnwindSafe(|| work(shared, i))).is_err() {
                        on_panic(&watch);
                    }
                })
                .map_err(|e| NetError::io("spawn stream thread", e))
        })
        .collect()
}

/// A monotonic millisecond clock that fits in an atomic.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Time of the last byte seen on a connection.
#[derive(Default)]
struct Progress(AtomicU64);

impl Progress {
    fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // tests lend stack buffers as RawBufs
mod tests;
