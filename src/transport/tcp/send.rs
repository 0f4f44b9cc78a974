//! The sending end of a connection.
//!
//! Each stream is a small state machine (the chunk in flight and how much of
//! it is out) behind a mutex, driven with non-blocking writes by whoever
//! holds it: the stream's own thread, which sleeps in poll(2) or on a
//! condvar when it cannot progress, or NCCL's proxy thread inside
//! `isend`/`test`, which only ever `try_lock`s. On a busy many-core host the
//! stream threads move the bytes in parallel; on a small host the proxy
//! thread's polling does useful work instead of competing with them.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use super::{spawn_stream_threads, TcpSettings, MAX_REQUESTS};
use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics::{self, ConnError, TransportKind};
use crate::sys::{self, RawBuf};
use crate::transport::sched::{Chunk, SendScheduler};
use crate::transport::wire::FRAME_HEADER_BYTES;
use crate::warn;

/// How long a stream thread sleeps in poll(2) before looking again.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One isend: done when all its chunks are in the kernel's hands.
pub struct SendOp {
    size: u64,
    chunks_left: AtomicU32,
    buf: RawBuf,
    posted: Instant,
}

/// The chunk a stream is writing and how many of its bytes are out.
struct InFlight {
    chunk: Chunk<Arc<SendOp>>,
    header: [u8; FRAME_HEADER_BYTES],
    sent: usize,
}

struct Stream {
    sock: Arc<Socket>,
    current: Option<InFlight>,
}

/// Why a stream stopped making progress.
enum Blocked {
    /// No chunk is waiting to be sent.
    NoWork,
    /// The socket's send buffer is full.
    Full,
}

struct Shared {
    peer: SocketAddr,
    /// Whether the caller's thread (NCCL's proxy) does I/O itself in
    /// `isend`/`irecv`/`test`; see `set_caller_assists`.
    caller_assists: AtomicBool,
    queue: Mutex<SendScheduler<Arc<SendOp>>>,
    wake: Condvar,
    streams: Vec<Mutex<Stream>>,
    /// Whether each stream holds a partly written chunk (readable without
    /// its lock, so an idle stream thread knows it has work).
    stream_busy: Vec<AtomicBool>,
    socks: Vec<Arc<Socket>>,
    failure: OnceLock<NetError>,
    closing: AtomicBool,
    in_flight: AtomicUsize,
}

pub struct SendComm {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// A send request as NCCL holds it; dropping it returns its pool slot.
pub struct SendRequest {
    shared: Arc<Shared>,
    op: Arc<SendOp>,
}

impl Shared {
    fn fail(&self, err: NetError, cause: ConnError) {
        if self.failure.set(err.clone()).is_ok() && !self.closing.load(Ordering::Acquire) {
            metrics::transport(TransportKind::Tcp).request_error(cause);
            warn!("send connection to {} failed: {err}", self.peer);
            for s in &self.socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        self.wake.notify_all();
    }

    fn io_failure(&self, e: io::Error) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let cause = match e.kind() {
            io::ErrorKind::TimedOut => ConnError::Timeout,
            _ => ConnError::Reset,
        };
        self.fail(
            NetError::peer(self.peer, PeerFailure::Reset(e.to_string())),
            cause,
        );
    }

    fn stopped(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.failure.get().is_some()
    }

    /// Writes on `stream` until it has nothing to send or the socket is full.
    fn pump(&self, stream: &mut Stream) -> io::Result<Blocked> {
        loop {
            if stream.current.is_none() {
                if self.stopped() {
                    return Ok(Blocked::NoWork);
                }
                let Some(chunk) = self.queue.lock().expect("send queue lock").next_chunk() else {
                    return Ok(Blocked::NoWork);
                };
                stream.current = Some(InFlight {
                    header: chunk.header.encode(),
                    chunk,
                    sent: 0,
                });
            }
            let cur = stream.current.as_mut().expect("set above");
            let h = cur.chunk.header;
            let total = FRAME_HEADER_BYTES + h.len as usize;
            while cur.sent < total {
                match cur.chunk.op.buf.try_send(
                    &cur.header,
                    h.offset,
                    h.len as usize,
                    cur.sent,
                    &stream.sock,
                ) {
                    Ok(n) => cur.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Blocked::Full),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            metrics::transport(TransportKind::Tcp).bytes_sent(u64::from(h.len));
            cur.chunk.op.chunks_left.fetch_sub(1, Ordering::AcqRel);
            stream.current = None;
        }
    }

    /// The proxy thread's share of the work: every stream nobody else holds.
    /// Stream threads are woken only when work is left that they must
    /// finish: chunks still queued, or a chunk stuck on a full socket.
    fn assist(&self) {
        let mut stuck = false;
        let streams = if self.caller_assists.load(Ordering::Relaxed) {
            &self.streams[..]
        } else {
            &[]
        };
        for (s, busy) in streams.iter().zip(&self.stream_busy) {
            if let Ok(mut stream) = s.try_lock() {
                match self.pump(&mut stream) {
                    Err(e) => self.io_failure(e),
                    Ok(Blocked::Full) => stuck = true,
                    Ok(Blocked::NoWork) => {}
                }
                busy.store(stream.current.is_some(), Ordering::Release);
            }
        }
        let queue = self.queue.lock().expect("send queue lock");
        if stuck || !queue.is_empty() {
            self.wake.notify_all();
        }
    }
}

fn stream_worker(shared: Arc<Shared>, index: usize) {
    let sock = Arc::clone(&shared.socks[index]);
    while !shared.stopped() {
        let blocked = {
            let mut stream = shared.streams[index].lock().expect("stream lock");
            let blocked = shared.pump(&mut stream);
            shared.stream_busy[index].store(stream.current.is_some(), Ordering::Release);
            blocked
        };
        match blocked {
            Err(e) => return shared.io_failure(e),
            Ok(Blocked::Full) => {
                if let Err(e) = sys::wait_ready(&sock, true, POLL_INTERVAL) {
                    return shared.io_failure(e);
                }
            }
            Ok(Blocked::NoWork) => {
                let queue = shared.queue.lock().expect("send queue lock");
                let busy = &shared.stream_busy[index];
                let _idle = shared
                    .wake
                    .wait_while(queue, |q| {
                        q.is_empty() && !busy.load(Ordering::Acquire) && !shared.stopped()
                    })
                    .expect("send queue lock");
            }
        }
    }
}

impl SendComm {
    pub(super) fn start(socks: Vec<Socket>, peer: SocketAddr, s: &TcpSettings) -> NetResult<Self> {
        let socks: Vec<Arc<Socket>> = socks.into_iter().map(Arc::new).collect();
        let shared = Arc::new(Shared {
            peer,
            caller_assists: AtomicBool::new(true),
            queue: Mutex::new(SendScheduler::new(s.chunk_bytes, socks.len())),
            wake: Condvar::new(),
            streams: socks
                .iter()
                .map(|sock| {
                    Mutex::new(Stream {
                        sock: Arc::clone(sock),
                        current: None,
                    })
                })
                .collect(),
            stream_busy: socks.iter().map(|_| AtomicBool::new(false)).collect(),
            socks,
            failure: OnceLock::new(),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        });
        let mut comm = SendComm {
            shared,
            workers: Vec::new(),
        };
        comm.workers = spawn_stream_threads(
            &comm.shared,
            comm.shared.socks.len(),
            "tx",
            stream_worker,
            |s: &Shared| {
                s.fail(
                    NetError::peer(
                        s.peer,
                        PeerFailure::Protocol("internal error on a stream thread".into()),
                    ),
                    ConnError::Other,
                )
            },
        )?;
        metrics::transport(TransportKind::Tcp).connection_opened();
        Ok(comm)
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// By default the caller's thread also moves bytes in `isend`/`test`
    /// (lowest latency when the caller polls anyway). A caller with heavy
    /// work of its own (the collective network's codec) turns that off and
    /// leaves all I/O to the stream threads, on other cores.
    pub fn set_caller_assists(&self, on: bool) {
        self.shared.caller_assists.store(on, Ordering::Relaxed);
        if !on {
            self.shared.wake.notify_all();
        }
    }

    /// Queues a message; `Ok(None)` when the request pool is full.
    pub fn isend(&self, buf: RawBuf, tag: i32) -> NetResult<Option<SendRequest>> {
        if let Some(e) = self.shared.failure.get() {
            return Err(e.clone());
        }
        if self.shared.in_flight.load(Ordering::Acquire) >= MAX_REQUESTS {
            return Ok(None);
        }
        let size = buf.len() as u64;
        let op = Arc::new(SendOp {
            size,
            chunks_left: AtomicU32::new(u32::MAX),
            buf,
            posted: Instant::now(),
        });
        let chunks = {
            let mut queue = self.shared.queue.lock().expect("send queue lock");
            let (_, chunks) = queue.push(Arc::clone(&op), tag, size);
            // Set before anyone can take a chunk: that needs this lock.
            op.chunks_left.store(chunks, Ordering::Release);
            chunks
        };
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        metrics::transport(TransportKind::Tcp).request_started();
        if chunks > 1 {
            // Spread over several streams: their threads copy in parallel.
            self.shared.wake.notify_all();
        }
        // This thread sends what it can right away; a one-chunk message
        // usually needs no other thread at all (latency).
        self.shared.assist();
        Ok(Some(SendRequest {
            shared: Arc::clone(&self.shared),
            op,
        }))
    }
}

impl SendRequest {
    fn done(&self) -> Option<u64> {
        (self.op.chunks_left.load(Ordering::Acquire) == 0).then_some(self.op.size)
    }

    /// `Some(size)` once every byte has been handed to the kernel.
    pub fn test(&self) -> NetResult<Option<u64>> {
        let done = self.done().or_else(|| {
            self.shared.assist();
            self.done()
        });
        if let Some(size) = done {
            let m = metrics::transport(TransportKind::Tcp);
            m.message_sent();
            m.message_size(size);
            m.request_latency(self.op.posted.elapsed());
            return Ok(Some(size));
        }
        match self.shared.failure.get() {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }
}

impl Drop for SendRequest {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        metrics::transport(TransportKind::Tcp).request_finished();
    }
}

impl Drop for SendComm {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        {
            let _guard = self.shared.queue.lock().expect("send queue lock");
            self.shared.wake.notify_all();
        }
        for s in &self.shared.socks {
            // Data already queued in the kernel is still delivered before FIN.
            let _ = s.shutdown(Shutdown::Both);
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        metrics::transport(TransportKind::Tcp).connection_closed();
    }
}
