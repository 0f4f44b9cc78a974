//! The receiving end of a connection.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use super::{Progress, TcpSettings, MAX_RECVS, MAX_REQUESTS};
use crate::abi::os::RawBuf;
use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics::{self, ConnError, TransportKind};
use crate::transport::matching::{HeaderOutcome, MatchError, RecvMatcher};
use crate::transport::wire::{FrameHeader, FRAME_HEADER_BYTES};
use crate::warn;

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
}

struct Shared {
    peer: SocketAddr,
    state: Mutex<State>,
    wake: Condvar,
    failure: OnceLock<NetError>,
    closing: AtomicBool,
    socks: Vec<Arc<Socket>>,
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

    fn stopped(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.failure.get().is_some()
    }

    fn match_error(&self, e: MatchError) {
        let cause = match e {
            MatchError::Truncated {
                message, posted, ..
            } => PeerFailure::Truncated { message, posted },
            other => PeerFailure::Protocol(other.to_string()),
        };
        self.fail(NetError::peer(self.peer, cause), ConnError::Protocol, true);
    }

    fn io_error(&self, e: io::Error) {
        if self.closing.load(Ordering::Acquire) {
            return self.fail(
                NetError::peer(self.peer, PeerFailure::Closed),
                ConnError::Eof,
                false,
            );
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => self.fail(
                NetError::peer(
                    self.peer,
                    PeerFailure::Reset("EOF in the middle of a frame".into()),
                ),
                ConnError::Eof,
                true,
            ),
            io::ErrorKind::TimedOut => self.fail(
                NetError::peer(self.peer, PeerFailure::Reset(e.to_string())),
                ConnError::Timeout,
                true,
            ),
            _ => self.fail(
                NetError::peer(self.peer, PeerFailure::Reset(e.to_string())),
                ConnError::Reset,
                true,
            ),
        }
    }
}

/// Reads one frame header; `Ok(None)` on a clean EOF between frames.
fn read_header(sock: &Socket, progress: &Progress) -> io::Result<Option<[u8; FRAME_HEADER_BYTES]>> {
    let mut buf = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    let mut reader = sock;
    while got < FRAME_HEADER_BYTES {
        match reader.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    progress.touch();
    Ok(Some(buf))
}

fn stream_worker(shared: Arc<Shared>, stream: usize) {
    let sock = Arc::clone(&shared.socks[stream]);
    let m = metrics::transport(TransportKind::Tcp);
    loop {
        let raw = match read_header(&sock, &shared.progress) {
            Ok(Some(raw)) => raw,
            Ok(None) => return shared.stream_closed(),
            Err(e) => return shared.io_error(e),
        };
        let h = match FrameHeader::decode(&raw) {
            Ok(h) => h,
            Err(e) => {
                return shared.fail(
                    NetError::peer(shared.peer, PeerFailure::Protocol(e.to_string())),
                    ConnError::Protocol,
                    true,
                )
            }
        };
        let (placement, buf) = {
            let mut state = shared.lock();
            let placement = loop {
                if shared.stopped() {
                    return;
                }
                match state.matcher.on_header(&h) {
                    Ok(HeaderOutcome::Deliver(p)) => break p,
                    Ok(HeaderOutcome::Wait) => {
                        state = shared.wake.wait(state).expect("recv state lock")
                    }
                    Err(e) => return shared.match_error(e),
                }
            };
            let buf = state.ops[&placement.request].slots[placement.slot];
            (placement, buf)
        };
        // A new match may be what another stream is waiting for.
        shared.wake.notify_all();
        let read = buf.recv_exact(placement.offset, h.len as usize, &sock, |n| {
            shared.progress.touch();
            m.bytes_received(n as u64);
        });
        if let Err(e) = read {
            return shared.io_error(e);
        }
        let mut state = shared.lock();
        match state.matcher.on_chunk_done(h.seq, h.len) {
            Ok(Some(done)) => {
                if let Some(op) = state.ops.remove(&done.request) {
                    let _ = op.sizes.set(done.sizes);
                }
            }
            Ok(None) => {}
            Err(e) => return shared.match_error(e),
        }
    }
}

impl RecvComm {
    pub(super) fn start(socks: Vec<Socket>, peer: SocketAddr, s: &TcpSettings) -> NetResult<Self> {
        let shared = Arc::new(Shared {
            peer,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            failure: OnceLock::new(),
            closing: AtomicBool::new(false),
            socks: socks.into_iter().map(Arc::new).collect(),
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
        for i in 0..comm.shared.socks.len() {
            let shared = Arc::clone(&comm.shared);
            let worker = std::thread::Builder::new()
                .name(format!("airamp-rx{i}"))
                .stack_size(256 << 10)
                .spawn(move || stream_worker(shared, i))
                .map_err(|e| NetError::io("spawn receive thread", e))?;
            comm.workers.push(worker);
        }
        metrics::transport(TransportKind::Tcp).connection_opened();
        Ok(comm)
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
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
