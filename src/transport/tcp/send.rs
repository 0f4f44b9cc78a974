//! The sending end of a connection.
//!
//! Each stream is a small state machine (the frame in flight and how much of
//! it is out) behind a mutex, driven with non-blocking writes by whoever
//! holds it. NCCL's proxy thread, inside `isend`/`test`, writes messages up
//! to `inline_bytes` itself (one `sendmsg` for header and payload, no other
//! thread woken) and only ever `try_lock`s. Larger messages wake the stream
//! threads, which copy their chunks in parallel and sleep in poll(2) while
//! their socket is full; so does what the proxy leaves on a full socket, so
//! nothing waits for the proxy to test this comm again. Every stream thread
//! also wakes at its liveness deadlines: it reads the receiver's heartbeat
//! bytes (the only thing that flows back), sends a heartbeat frame when the
//! stream has been quiet, and fails the connection if the receiver has been
//! silent past the timeout.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use socket2::Socket;

use super::poller::{is_polled, Polled, Poller};
use super::spares::Spares;
use super::timeline::{RequestClock, Timeline};
use super::{
    now_ms, shut_down, spawn_stream_threads, until, Pumper, Sleepers, TcpSettings, MAX_REQUESTS,
};
use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics::{self, ConnError, TransportKind};
use crate::sys::{self, RawBuf};
use crate::transport::liveness::{Liveness, StreamClock};
use crate::transport::sched::{Chunk, SendScheduler};
use crate::transport::wire::{FRAME_HEADER_BYTES, HEARTBEAT_FRAME, REVERSE_HEARTBEAT};
use crate::warn;

/// One isend: done when all its chunks are in the kernel's hands.
pub struct SendOp {
    size: u64,
    /// Whether it is the poller's to move while it spins: in the caller's
    /// share and not tiny.
    polled: bool,
    chunks_left: AtomicU32,
    buf: RawBuf,
    clock: RequestClock,
}

/// The frame a stream is writing and how many of its bytes are out.
struct InFlight {
    /// `None` for a heartbeat frame.
    chunk: Option<Chunk<Arc<SendOp>>>,
    header: [u8; FRAME_HEADER_BYTES],
    sent: usize,
    /// Whether the message is the stream threads' to write.
    bulk: bool,
}

struct Stream {
    index: usize,
    sock: Arc<Socket>,
    current: Option<InFlight>,
    clock: StreamClock,
    /// Payload bytes written on this stream.
    written: u64,
}

/// Why a stream stopped making progress.
enum Blocked {
    /// No chunk is waiting to be sent (that this pumper may take).
    NoWork,
    /// The socket's send buffer is full.
    Full,
}

/// A failure found while pumping or tending a stream.
enum Fault {
    Io(io::Error),
    /// The receiver closed its end (EOF on the heartbeat direction).
    Closed,
    Protocol(String),
    /// Nothing heard for this many milliseconds.
    Silent(u64),
}

struct Shared {
    peer: SocketAddr,
    /// Whether the caller's thread (NCCL's proxy) does I/O itself in
    /// `isend`/`test`; see `set_caller_assists`.
    caller_assists: AtomicBool,
    /// Whether the process's poller does that work while it spins
    /// (`TcpSettings::poller`).
    poller: Option<&'static Poller>,
    queue: Mutex<SendScheduler<Arc<SendOp>>>,
    /// Stream threads with nothing to do until a large message is queued,
    /// one condition per stream (all with the queue's mutex): a message
    /// wakes only threads that may take its chunks.
    wake: Vec<Condvar>,
    /// Which stream threads sleep on their condition, under the queue's
    /// mutex: set by the thread each time it goes to sleep, cleared by
    /// whoever wakes it.
    asleep: Vec<AtomicBool>,
    /// Per stream: how often its thread looked for work to sleep on or
    /// after a wake-up (once per sleep, and once per wake-up).
    looks: Vec<AtomicU64>,
    sleepers: Sleepers,
    streams: Vec<Mutex<Stream>>,
    /// Set by the caller's thread when it leaves queued work on a stream
    /// (its socket was full, or the stream was busy): that stream's thread
    /// then writes until nothing is left, waiting on the socket, so the
    /// bytes keep moving while the caller tests other requests.
    handoff: Vec<AtomicBool>,
    socks: Vec<Arc<Socket>>,
    failure: OnceLock<NetError>,
    closing: AtomicBool,
    in_flight: AtomicUsize,
    /// Requests of the poller's (`SendOp::polled`) not yet out: it visits
    /// only while there are some, and leaves bulk traffic alone.
    polled_pending: AtomicUsize,
    liveness: Liveness,
    inline_bytes: u64,
    timeline: Timeline,
    /// Finished sends' records, reused by the next ones.
    spares: Spares<SendOp>,
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
    fn queue(&self) -> MutexGuard<'_, SendScheduler<Arc<SendOp>>> {
        self.queue.lock().expect("send queue lock")
    }

    fn wake_all(&self) {
        let _guard = self.queue();
        self.wake.iter().for_each(Condvar::notify_all);
    }

    /// Wakes up to `wanted` of the sleeping threads of `streams`, lowest
    /// first. Call with the queue's mutex held (`_queue`).
    fn wake_sleeping(
        &self,
        _queue: &MutexGuard<'_, SendScheduler<Arc<SendOp>>>,
        streams: std::ops::Range<usize>,
        mut wanted: usize,
    ) {
        for index in streams {
            if wanted == 0 {
                return;
            }
            // Only ever read and written under the queue's mutex.
            if self.asleep[index].swap(false, Ordering::Relaxed) {
                self.wake[index].notify_one();
                wanted -= 1;
            }
        }
    }

    /// Records the connection's first failure; `loud` ones are logged and
    /// counted (an orderly close by the receiver is not).
    fn fail(&self, err: NetError, cause: ConnError, loud: bool) {
        if self.failure.set(err.clone()).is_ok() && !self.closing.load(Ordering::Acquire) {
            if loud {
                metrics::transport(TransportKind::Tcp).request_error(cause);
                warn!("send connection to {} failed: {err}", self.peer);
            }
            for s in &self.socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        self.wake_all();
    }

    fn fault(&self, f: Fault) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let (cause, conn, loud) = match f {
            Fault::Closed => (PeerFailure::Closed, ConnError::Eof, false),
            Fault::Protocol(e) => (PeerFailure::Protocol(e), ConnError::Protocol, true),
            Fault::Silent(waited_ms) => (
                PeerFailure::NoHeartbeat {
                    waited_ms,
                    timeout_ms: self.liveness.timeout_ms,
                },
                ConnError::Timeout,
                true,
            ),
            Fault::Io(e) if e.kind() == io::ErrorKind::TimedOut => (
                PeerFailure::TimedOut(e.to_string()),
                ConnError::Timeout,
                true,
            ),
            Fault::Io(e) => (PeerFailure::Reset(e.to_string()), ConnError::Reset, true),
        };
        self.fail(NetError::peer(self.peer, cause), conn, loud);
    }

    fn stopped(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.failure.get().is_some()
    }

    /// Whether a message of `total` bytes is written by the stream threads
    /// rather than by the caller's thread.
    fn is_bulk(&self, total: u64) -> bool {
        total > self.inline_bytes || !self.caller_assists.load(Ordering::Relaxed)
    }

    /// Writes on `stream` until it has nothing to send (that `who` may
    /// take) or the socket is full.
    fn pump(&self, stream: &mut Stream, who: Pumper) -> io::Result<Blocked> {
        loop {
            if stream.current.is_none() {
                if self.stopped() {
                    return Ok(Blocked::NoWork);
                }
                let mut queue = self.queue();
                let Some(total) = queue.head_total() else {
                    return Ok(Blocked::NoWork);
                };
                let bulk = self.is_bulk(total);
                if bulk && who == Pumper::Caller {
                    // Queued behind small messages, it may not have woken
                    // the threads when it was pushed.
                    if self.sleepers.any() {
                        let streams = queue.streams_for(total) as usize;
                        self.wake_sleeping(&queue, 0..streams, usize::MAX);
                    }
                    return Ok(Blocked::NoWork);
                }
                if bulk && !queue.head_allows(stream.index) {
                    // A narrow message, for the first streams' threads: one
                    // of them looks, if one sleeps.
                    if self.sleepers.any() {
                        let streams = queue.streams_for(total) as usize;
                        self.wake_sleeping(&queue, 0..streams, 1);
                    }
                    return Ok(Blocked::NoWork);
                }
                let chunk = queue.next_chunk().expect("the queue has a head");
                if let Some(next) = queue.head_total() {
                    // The next message may use streams whose threads this
                    // one (the caller's, or a narrow one) left asleep.
                    let before = if bulk { queue.streams_for(total) } else { 0 };
                    let after = queue.streams_for(next);
                    if self.is_bulk(next) && after > before && self.sleepers.any() {
                        self.wake_sleeping(&queue, before as usize..after as usize, usize::MAX);
                    }
                }
                drop(queue);
                stream.current = Some(InFlight {
                    header: chunk.header.encode(),
                    chunk: Some(chunk),
                    sent: 0,
                    bulk,
                });
            }
            let cur = stream.current.as_mut().expect("set above");
            if cur.bulk && who == Pumper::Caller {
                return Ok(Blocked::NoWork);
            }
            let (offset, len) = cur
                .chunk
                .as_ref()
                .map_or((0, 0), |c| (c.header.offset, c.header.len as usize));
            let total = FRAME_HEADER_BYTES + len;
            while cur.sent < total {
                let written = match &cur.chunk {
                    Some(c) => {
                        c.op.buf
                            .try_send(&cur.header, offset, len, cur.sent, &stream.sock)
                    }
                    None => stream.sock.send_with_flags(
                        &cur.header[cur.sent..],
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                };
                match written {
                    Ok(n) => {
                        cur.sent += n;
                        stream.clock.sent(now_ms());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Blocked::Full),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some(c) = stream.current.take().and_then(|f| f.chunk) {
                stream.written += u64::from(c.header.len);
                metrics::transport(TransportKind::Tcp).bytes_sent(u64::from(c.header.len));
                if c.op.chunks_left.fetch_sub(1, Ordering::AcqRel) == 1 && c.op.polled {
                    self.polled_pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Reads the receiver's heartbeats, the only bytes that flow back.
    fn drain_heartbeats(&self, stream: &mut Stream) -> Result<(), Fault> {
        let mut buf = [0u8; 64];
        loop {
            match sys::try_recv_into(&stream.sock, &mut buf) {
                Ok(0) => return Err(Fault::Closed),
                Ok(n) => {
                    if buf[..n].iter().any(|&b| b != REVERSE_HEARTBEAT) {
                        return Err(Fault::Protocol("unexpected bytes from the receiver".into()));
                    }
                    stream.clock.heard(now_ms());
                    if n < buf.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault::Io(e)),
            }
        }
    }

    /// The stream thread's liveness duties: read the receiver's heartbeats,
    /// fail it if it has been silent past the timeout, and queue our own
    /// heartbeat frame when the stream has been quiet. A frame stuck on a
    /// full socket counts as a heartbeat: the receiver is not reading this
    /// stream, and hears that frame as soon as it does.
    fn tend(&self, stream: &mut Stream) -> Result<(), Fault> {
        self.drain_heartbeats(stream)?;
        let now = now_ms();
        if let Some(quiet) = stream.clock.silent(&self.liveness, now) {
            return Err(Fault::Silent(quiet));
        }
        if stream.clock.heartbeat_due(&self.liveness, now) {
            match stream.current {
                Some(_) => stream.clock.sent(now),
                None => {
                    stream.current = Some(InFlight {
                        chunk: None,
                        header: HEARTBEAT_FRAME,
                        sent: 0,
                        bulk: false,
                    })
                }
            }
        }
        Ok(())
    }

    /// Leaves stream `index` to its thread, waking it if it sleeps.
    fn hand_off(&self, index: usize) {
        let flag = &self.handoff[index];
        // Already handed off and not yet picked up: nothing new to say.
        if !flag.load(Ordering::Relaxed)
            && !flag.swap(true, Ordering::SeqCst)
            && self.sleepers.any()
        {
            let queue = self.queue();
            self.wake_sleeping(&queue, index..index + 1, 1);
        }
    }

    /// The caller's share inside `isend`/`test`, left to the poller while it
    /// spins.
    fn assist_from_caller(&self) {
        if !self.poller.is_some_and(Poller::covering) {
            self.assist();
        }
    }

    /// The proxy thread's share of the work: small messages, on every
    /// stream nobody else holds. What it cannot finish without waiting (a
    /// full socket, a stream another thread holds) it hands to the stream's
    /// thread: the caller may not come back to this comm until the peer has
    /// received those very bytes (both ends of a ring wait on their receive
    /// first), so nothing may depend on it returning.
    fn assist(&self) {
        if !self.caller_assists.load(Ordering::Relaxed) {
            return;
        }
        for (index, s) in self.streams.iter().enumerate() {
            match s.try_lock() {
                Ok(mut stream) => match self.pump(&mut stream, Pumper::Caller) {
                    Ok(Blocked::NoWork) => {}
                    Ok(Blocked::Full) => {
                        drop(stream);
                        self.hand_off(index);
                    }
                    Err(e) => {
                        drop(stream);
                        return self.fault(Fault::Io(e));
                    }
                },
                // Whoever holds it may have decided it had nothing to do
                // just before our message was queued.
                Err(_) => self.hand_off(index),
            }
        }
    }
}

impl Polled for Shared {
    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn busy(&self) -> bool {
        self.polled_pending.load(Ordering::Acquire) > 0 && !self.stopped()
    }

    fn poll_once(&self) {
        self.assist();
    }
}

fn stream_worker(shared: Arc<Shared>, index: usize) {
    let sock = Arc::clone(&shared.socks[index]);
    while !shared.stopped() {
        let (blocked, deadline) = {
            let mut stream = shared.streams[index].lock().expect("stream lock");
            // Whatever was handed to us is written by the pump below.
            shared.handoff[index].store(false, Ordering::SeqCst);
            let tended = shared.tend(&mut stream).and_then(|()| {
                let blocked = shared
                    .pump(&mut stream, Pumper::Thread)
                    .map_err(Fault::Io)?;
                Ok((blocked, stream.clock.next_check(&shared.liveness, true)))
            });
            match tended {
                Ok(t) => t,
                Err(f) => {
                    drop(stream);
                    return shared.fault(f);
                }
            }
        };
        let timeout = until(deadline);
        match blocked {
            Blocked::Full => {
                if let Err(e) = sys::wait_ready(&sock, true, timeout) {
                    return shared.fault(Fault::Io(e));
                }
            }
            Blocked::NoWork => {
                let asleep = &shared.asleep[index];
                let queue =
                    shared
                        .sleepers
                        .wait(&shared.wake[index], shared.queue(), timeout, |q| {
                            shared.looks[index].fetch_add(1, Ordering::Relaxed);
                            let ready = q
                                .head_total()
                                .is_some_and(|t| shared.is_bulk(t) && q.head_allows(index))
                                || shared.handoff[index].load(Ordering::SeqCst)
                                || shared.stopped();
                            // Evaluated under the queue's mutex before every
                            // sleep, so a waker that cleared it (and whose work
                            // another thread took) still finds this one asleep.
                            asleep.store(!ready, Ordering::Relaxed);
                            ready
                        });
                asleep.store(false, Ordering::Relaxed);
                drop(queue);
            }
        }
    }
}

impl SendComm {
    /// Starts the stream threads of a connection to a listener that asked
    /// for a heartbeat every `peer_heartbeat_ms`.
    pub(super) fn start(
        socks: Vec<Socket>,
        peer: SocketAddr,
        s: &TcpSettings,
        peer_heartbeat_ms: u32,
    ) -> NetResult<Self> {
        let socks: Vec<Arc<Socket>> = socks.into_iter().map(Arc::new).collect();
        let now = now_ms();
        let shared = Arc::new(Shared {
            peer,
            caller_assists: AtomicBool::new(true),
            poller: Poller::for_sends(s.poller),
            queue: Mutex::new(
                SendScheduler::new(s.chunk_bytes, s.min_chunk_bytes, socks.len())
                    .with_narrow(s.inline_bytes, s.narrow_bytes),
            ),
            wake: socks.iter().map(|_| Condvar::new()).collect(),
            asleep: socks.iter().map(|_| AtomicBool::new(false)).collect(),
            looks: socks.iter().map(|_| AtomicU64::new(0)).collect(),
            sleepers: Sleepers::default(),
            streams: socks
                .iter()
                .enumerate()
                .map(|(index, sock)| {
                    Mutex::new(Stream {
                        index,
                        sock: Arc::clone(sock),
                        current: None,
                        clock: StreamClock::new(now),
                        written: 0,
                    })
                })
                .collect(),
            handoff: socks.iter().map(|_| AtomicBool::new(false)).collect(),
            socks,
            failure: OnceLock::new(),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            polled_pending: AtomicUsize::new(0),
            liveness: Liveness::new(s.peer_timeout.as_millis() as u64, peer_heartbeat_ms),
            inline_bytes: s.inline_bytes,
            timeline: Timeline::default(),
            spares: Spares::new(|| SendOp {
                size: 0,
                polled: false,
                chunks_left: AtomicU32::new(0),
                buf: RawBuf::default(),
                clock: RequestClock::start(),
            }),
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
                    true,
                )
            },
        )?;
        if let Some(poller) = comm.shared.poller {
            let polled: Arc<dyn Polled> = comm.shared.clone();
            poller.join(Arc::downgrade(&polled));
        }
        metrics::transport(TransportKind::Tcp).connection_opened();
        Ok(comm)
    }

    /// Per stream: payload bytes written, and how often its thread looked
    /// for work around a sleep (`Shared::looks`).
    pub(super) fn stream_counts(&self) -> Vec<(u64, u64)> {
        let shared = &self.shared;
        (0..shared.streams.len())
            .map(|i| {
                let written = shared.streams[i].lock().expect("stream lock").written;
                (written, shared.looks[i].load(Ordering::Relaxed))
            })
            .collect()
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The timeline's closing line so far (`None` before a send completes).
    /// The closing line: the requests' means, then per stream the bytes
    /// written and the thread's looks for work (which streams carried what,
    /// and how often their threads were woken).
    pub(super) fn timeline(&self) -> Option<String> {
        let line = self.shared.timeline.summary("sends")?;
        let counts = self.stream_counts();
        let join = |f: fn(&(u64, u64)) -> u64| {
            counts
                .iter()
                .map(|c| f(c).to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        };
        Some(format!(
            "{line}; per stream: bytes {}, thread looked for work {} times",
            join(|c| c.0),
            join(|c| c.1)
        ))
    }

    /// By default the caller's thread also moves small messages in
    /// `isend`/`test` (lowest latency when the caller polls anyway). A
    /// caller with heavy work of its own on its polling thread may turn
    /// that off and leave all I/O to the stream threads, on other cores
    /// (the collective network does, unless `collnet.proxy_assist`).
    pub fn set_caller_assists(&self, on: bool) {
        self.shared.caller_assists.store(on, Ordering::Relaxed);
        self.shared.wake_all();
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
        let bulk = self.shared.is_bulk(size);
        let polled = self.shared.poller.is_some() && is_polled(size, bulk);
        if polled {
            self.shared.polled_pending.fetch_add(1, Ordering::AcqRel);
        }
        let op = self.shared.spares.record(SendOp {
            size,
            polled,
            chunks_left: AtomicU32::new(u32::MAX),
            buf,
            clock: RequestClock::start(),
        });
        {
            let mut queue = self.shared.queue();
            let (_, chunks) = queue.push(Arc::clone(&op), tag, size);
            // Set before anyone can take a chunk: that needs this lock.
            op.chunks_left.store(chunks, Ordering::Release);
            if bulk && self.shared.sleepers.any() {
                // One sleeping thread per chunk, among the streams the
                // message may use, not every thread: a thread takes chunks
                // until the queue is empty or its socket is full, and every
                // awake thread looks at the queue again before it sleeps,
                // so no chunk is left without one.
                let streams = queue.streams_for(size) as usize;
                self.shared
                    .wake_sleeping(&queue, 0..streams, chunks as usize);
            }
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        metrics::transport(TransportKind::Tcp).request_started();
        match self.shared.poller {
            // A small message goes to the poller if it spins.
            Some(poller) if polled => {
                poller.nudge();
                self.shared.assist_from_caller();
            }
            // Otherwise it usually goes out right here, in one sendmsg.
            _ => self.shared.assist(),
        }
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

    /// Whether it is complete, without moving any bytes (as `test` would).
    #[cfg(test)]
    pub(super) fn completed(&self) -> bool {
        self.done().is_some()
    }

    /// `Some(size)` once every byte has been handed to the kernel.
    pub fn test(&self) -> NetResult<Option<u64>> {
        let tests = self.op.clock.tested();
        let done = self.done().or_else(|| {
            self.shared.assist_from_caller();
            self.done()
        });
        if let Some(size) = done {
            if let Some(pending) = self.op.clock.first_completion() {
                let m = metrics::transport(TransportKind::Tcp);
                m.message_sent();
                m.message_size(size);
                m.request_latency(pending);
                self.shared.timeline.record(size, tests, pending, None);
            }
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
        self.shared.spares.keep(Arc::clone(&self.op));
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        metrics::transport(TransportKind::Tcp).request_finished();
    }
}

impl Drop for SendComm {
    fn drop(&mut self) {
        if let Some(line) = self.timeline() {
            crate::info!(
                crate::log::SUBSYS_NET,
                "tcp: send to {}: {line}",
                self.shared.peer
            );
        }
        self.shared.closing.store(true, Ordering::Release);
        if let Some(poller) = self.shared.poller {
            poller.left();
        }
        self.shared.wake_all();
        shut_down(&self.shared.socks, &self.shared.streams, &mut self.workers);
    }
}
