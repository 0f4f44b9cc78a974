//! The receiving end of a connection.
//!
//! Like the sending end, each stream is a state machine behind a mutex —
//! reading a frame header, waiting for the matching receive, or filling its
//! payload — driven with non-blocking reads by the stream's own thread
//! (asleep in poll(2) or on a condvar when stuck) or by NCCL's proxy thread
//! inside `test`, which only `try_lock`s.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use super::{spawn_stream_threads, Progress, TcpSettings, MAX_RECVS, MAX_REQUESTS};
use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics::{self, ConnError, TransportKind};
use crate::sys::{self, RawBuf};
use crate::transport::matching::{HeaderOutcome, MatchError, Placement, RecvMatcher};
use crate::transport::wire::{FrameHeader, FRAME_HEADER_BYTES};
use crate::warn;

const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One (possibly grouped) irecv.
pub struct RecvOp {
    slots: Vec<RawBuf>,
    sizes: OnceLock<Vec<u64>>,
    posted: Instant,
}

#[derive(Default)]
struct State {
    matcher: RecvMatcher,
    ops: HashMap<u64, Arc<RecvOp>>,
    next_id: u64,
    /// Bumped by every post and every match: a stream waiting for its
    /// message to be matched sleeps until this changes.
    generation: u64,
}

enum Phase {
    Header {
        buf: [u8; FRAME_HEADER_BYTES],
        got: usize,
    },
    Matching(FrameHeader),
    Payload {
        header: FrameHeader,
        at: Placement,
        buf: RawBuf,
        got: usize,
    },
    Closed,
}

struct Stream {
    sock: Arc<Socket>,
    phase: Phase,
}

/// Why a stream stopped making progress.
enum Blocked {
    NoData,
    /// Its next message has no posted receive yet (seen at this generation).
    NoPost(u64),
    Closed,
}

/// A failure found while pumping a stream.
enum Fault {
    Io(io::Error),
    Protocol(String),
    Match(MatchError),
}

struct Shared {
    peer: SocketAddr,
    /// Whether the caller's thread (NCCL's proxy) does I/O itself in
    /// `isend`/`irecv`/`test`; see `set_caller_assists`.
    caller_assists: AtomicBool,
    state: Mutex<State>,
    wake: Condvar,
    streams: Vec<Mutex<Stream>>,
    socks: Vec<Arc<Socket>>,
    failure: OnceLock<NetError>,
    closing: AtomicBool,
    /// Streams the peer has closed cleanly; the connection ends with the last.
    closed_streams: AtomicUsize,
    in_flight: AtomicUsize,
    progress: Progress,
    peer_timeout: Duration,
}

pub struct RecvComm {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// A receive request as NCCL holds it; dropping it returns its pool slot.
pub struct RecvRequest {
    shared: Arc<Shared>,
    op: Arc<RecvOp>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("recv state lock")
    }

    /// Records the connection's first failure; `loud` failures are logged
    /// here, an orderly close is reported only if a request was pending.
    fn fail(&self, err: NetError, cause: ConnError, loud: bool) {
        if self.failure.set(err.clone()).is_ok() && !self.closing.load(Ordering::Acquire) {
            if loud {
                metrics::transport(TransportKind::Tcp).request_error(cause);
                warn!("receive connection from {} failed: {err}", self.peer);
            }
            for s in &self.socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        let _guard = self.lock();
        self.wake.notify_all();
    }

    /// A clean EOF between frames: this stream has nothing more to say. The
    /// others may still hold frames, so only the last one ends the connection.
    fn stream_closed(&self) {
        if self.closed_streams.fetch_add(1, Ordering::AcqRel) + 1 == self.socks.len() {
            self.fail(
                NetError::peer(self.peer, PeerFailure::Closed),
                ConnError::Eof,
                false,
            );
        }
    }

    fn fault(&self, f: Fault) {
        if self.closing.load(Ordering::Acquire) {
            return self.fail(
                NetError::peer(self.peer, PeerFailure::Closed),
                ConnError::Eof,
                false,
            );
        }
        let (cause, conn) = match f {
            Fault::Match(MatchError::Truncated {
                message, posted, ..
            }) => (
                PeerFailure::Truncated { message, posted },
                ConnError::Protocol,
            ),
            Fault::Match(other) => (
                PeerFailure::Protocol(other.to_string()),
                ConnError::Protocol,
            ),
            Fault::Protocol(e) => (PeerFailure::Protocol(e), ConnError::Protocol),
            Fault::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => (
                PeerFailure::Reset("EOF in the middle of a frame".into()),
                ConnError::Eof,
            ),
            Fault::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                (PeerFailure::Reset(e.to_string()), ConnError::Timeout)
            }
            Fault::Io(e) => (PeerFailure::Reset(e.to_string()), ConnError::Reset),
        };
        self.fail(NetError::peer(self.peer, cause), conn, true);
    }

    fn stopped(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.failure.get().is_some()
    }

    /// Reads on `stream` until it runs out of data or of posted receives.
    fn pump(&self, stream: &mut Stream) -> Result<Blocked, Fault> {
        let m = metrics::transport(TransportKind::Tcp);
        loop {
            if self.stopped() {
                return Ok(Blocked::Closed);
            }
            match &mut stream.phase {
                Phase::Closed => return Ok(Blocked::Closed),
                Phase::Header { buf, got } => {
                    match sys::try_recv_into(&stream.sock, &mut buf[*got..]) {
                        Ok(0) if *got == 0 => {
                            stream.phase = Phase::Closed;
                            self.stream_closed();
                            return Ok(Blocked::Closed);
                        }
                        Ok(0) => return Err(Fault::Io(io::ErrorKind::UnexpectedEof.into())),
                        Ok(n) => {
                            *got += n;
                            self.progress.touch();
                            if *got == FRAME_HEADER_BYTES {
                                let h = FrameHeader::decode(buf)
                                    .map_err(|e| Fault::Protocol(e.to_string()))?;
                                stream.phase = Phase::Matching(h);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Blocked::NoData)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Fault::Io(e)),
                    }
                }
                Phase::Matching(h) => {
                    let header = *h;
                    let mut state = self.lock();
                    match state.matcher.on_header(&header).map_err(Fault::Match)? {
                        HeaderOutcome::Wait => return Ok(Blocked::NoPost(state.generation)),
                        HeaderOutcome::Deliver(at) => {
                            let buf = state.ops[&at.request].slots[at.slot];
                            state.generation += 1;
                            drop(state);
                            // A new match may be what another stream waits for.
                            self.wake.notify_all();
                            stream.phase = Phase::Payload {
                                header,
                                at,
                                buf,
                                got: 0,
                            };
                        }
                    }
                }
                Phase::Payload {
                    header,
                    at,
                    buf,
                    got,
                } => {
                    let len = header.len as usize;
                    if *got < len {
                        match buf.try_recv(at.offset + *got as u64, len - *got, &stream.sock) {
                            Ok(0) => return Err(Fault::Io(io::ErrorKind::UnexpectedEof.into())),
                            Ok(n) => {
                                *got += n;
                                self.progress.touch();
                                m.bytes_received(n as u64);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Ok(Blocked::NoData)
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(Fault::Io(e)),
                        }
                        continue;
                    }
                    let seq = header.seq;
                    let mut state = self.lock();
                    if let Some(done) = state
                        .matcher
                        .on_chunk_done(seq, header.len)
                        .map_err(Fault::Match)?
                    {
                        if let Some(op) = state.ops.remove(&done.request) {
                            let _ = op.sizes.set(done.sizes);
                        }
                    }
                    drop(state);
                    stream.phase = Phase::Header {
                        buf: [0; FRAME_HEADER_BYTES],
                        got: 0,
                    };
                }
            }
        }
    }

    /// The proxy thread's share of the work: every stream nobody else holds.
    fn assist(&self) {
        if !self.caller_assists.load(Ordering::Relaxed) {
            return;
        }
        for s in &self.streams {
            if let Ok(mut stream) = s.try_lock() {
                if let Err(f) = self.pump(&mut stream) {
                    self.fault(f);
                }
            }
        }
    }
}

fn stream_worker(shared: Arc<Shared>, index: usize) {
    let sock = Arc::clone(&shared.socks[index]);
    loop {
        let blocked = shared.pump(&mut shared.streams[index].lock().expect("stream lock"));
        match blocked {
            Err(f) => return shared.fault(f),
            Ok(Blocked::Closed) => return,
            Ok(Blocked::NoData) => {
                if let Err(e) = sys::wait_ready(&sock, false, POLL_INTERVAL) {
                    return shared.fault(Fault::Io(e));
                }
            }
            Ok(Blocked::NoPost(seen)) => {
                let state = shared.lock();
                let _woken = shared
                    .wake
                    .wait_while(state, |s| s.generation == seen && !shared.stopped())
                    .expect("recv state lock");
            }
        }
    }
}

impl RecvComm {
    pub(super) fn start(socks: Vec<Socket>, peer: SocketAddr, s: &TcpSettings) -> NetResult<Self> {
        let socks: Vec<Arc<Socket>> = socks.into_iter().map(Arc::new).collect();
        let shared = Arc::new(Shared {
            peer,
            caller_assists: AtomicBool::new(true),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            streams: socks
                .iter()
                .map(|sock| {
                    Mutex::new(Stream {
                        sock: Arc::clone(sock),
                        phase: Phase::Header {
                            buf: [0; FRAME_HEADER_BYTES],
                            got: 0,
                        },
                    })
                })
                .collect(),
            socks,
            failure: OnceLock::new(),
            closing: AtomicBool::new(false),
            closed_streams: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            progress: Progress::default(),
            peer_timeout: s.peer_timeout,
        });
        shared.progress.touch();
        let mut comm = RecvComm {
            shared,
            workers: Vec::new(),
        };
        comm.workers = spawn_stream_threads(
            &comm.shared,
            comm.shared.socks.len(),
            "rx",
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
        metrics::transport(TransportKind::Tcp).connection_opened();
        Ok(comm)
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// See `SendComm::set_caller_assists`.
    pub fn set_caller_assists(&self, on: bool) {
        self.shared.caller_assists.store(on, Ordering::Relaxed);
    }

    /// Posts a grouped receive of `(buffer, tag)` slots; `Ok(None)` when the
    /// request pool is full.
    pub fn irecv(&self, slots: Vec<(RawBuf, i32)>) -> NetResult<Option<RecvRequest>> {
        if slots.is_empty() || slots.len() > MAX_RECVS {
            return Err(NetError::InvalidArgument(format!(
                "{} receives in one group (1..={MAX_RECVS} supported)",
                slots.len()
            )));
        }
        if let Some(e) = self.shared.failure.get() {
            return Err(e.clone());
        }
        if self.shared.in_flight.load(Ordering::Acquire) >= MAX_REQUESTS {
            return Ok(None);
        }
        let shape: Vec<(i32, u64)> = slots
            .iter()
            .map(|(b, tag)| (*tag, b.len() as u64))
            .collect();
        let op = Arc::new(RecvOp {
            slots: slots.into_iter().map(|(b, _)| b).collect(),
            sizes: OnceLock::new(),
            posted: Instant::now(),
        });
        {
            let mut state = self.shared.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.generation += 1;
            state.matcher.post(id, &shape);
            state.ops.insert(id, Arc::clone(&op));
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        self.shared.wake.notify_all();
        metrics::transport(TransportKind::Tcp).request_started();
        Ok(Some(RecvRequest {
            shared: Arc::clone(&self.shared),
            op,
        }))
    }
}

impl RecvRequest {
    /// The received size of every slot, once all of them are complete.
    pub fn test(&self) -> NetResult<Option<&[u64]>> {
        if self.op.sizes.get().is_none() {
            self.shared.assist();
        }
        if let Some(sizes) = self.op.sizes.get() {
            let m = metrics::transport(TransportKind::Tcp);
            for &s in sizes {
                m.message_received();
                m.message_size(s);
            }
            m.request_latency(self.op.posted.elapsed());
            return Ok(Some(sizes));
        }
        if let Some(e) = self.shared.failure.get() {
            return Err(e.clone());
        }
        let idle = self.shared.progress.idle_for();
        if idle > self.shared.peer_timeout && self.shared.lock().matcher.mid_message() {
            let err = NetError::peer(
                self.shared.peer,
                PeerFailure::Silent {
                    waited_ms: idle.as_millis() as u64,
                },
            );
            self.shared.fail(err.clone(), ConnError::Timeout, true);
            return Err(self.shared.failure.get().cloned().unwrap_or(err));
        }
        Ok(None)
    }
}

impl Drop for RecvRequest {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        metrics::transport(TransportKind::Tcp).request_finished();
    }
}

impl Drop for RecvComm {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        {
            let _guard = self.shared.lock();
            self.shared.wake.notify_all();
        }
        for s in &self.shared.socks {
            let _ = s.shutdown(Shutdown::Both);
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        metrics::transport(TransportKind::Tcp).connection_closed();
    }
}
