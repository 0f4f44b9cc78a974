//! The receiving end of a connection.
//!
//! Each stream is a state machine behind a mutex — reading a frame header,
//! waiting for the matching receive, or filling its payload — driven with
//! non-blocking reads by NCCL's proxy thread inside `test` (which only ever
//! `try_lock`s) or by the stream's own thread.
//!
//! Reads go through a small staging buffer per stream, so a small message
//! (header and payload) costs one read: a peek, whose bytes the stream's
//! next read drops from the socket (`stage`). A payload larger than that
//! buffer is read straight into NCCL's buffer. The proxy thread moves
//! messages up to `inline_bytes` itself and never wakes a stream thread for
//! them. For a larger message it hands the stream to its thread, which then
//! reads that stream (asleep in poll(2) between reads) until a small message
//! comes along again. While receives are posted, a stream thread also reads
//! for a caller that has tested none of them for `CALLER_ABSENT_MS` (it may
//! be waiting on sends that need this side to read). Every stream thread
//! also wakes at its liveness deadlines: it sends the peer a heartbeat byte,
//! and fails the connection if the peer has been silent past the timeout
//! while the stream was listening.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use super::spares::Spares;
use super::stage::{Stage, PEEK_BYTES, STAGE_BYTES};
use super::timeline::{RequestClock, Timeline};
use super::{
    now_ms,
    poller::{is_polled, Polled, Poller},
    shut_down, spawn_stream_threads, until, Pumper, Sleepers, TcpSettings, MAX_RECVS, MAX_REQUESTS,
};
use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics::{self, ConnError, TransportKind};
use crate::sys::poll::ReadableSet;
use crate::sys::{self, RawBuf};
use crate::transport::liveness::{Liveness, StreamClock};
use crate::transport::matching::{HeaderOutcome, MatchError, PerSlot, Placement, RecvMatcher};
use crate::transport::wire::{
    Frame, FrameHeader, FRAME_HEADER_BYTES, MAX_STREAMS, REVERSE_HEARTBEAT,
};
use crate::warn;

/// How long received bytes may wait for a caller that tests no receive of
/// this comm while receives are posted (it may be waiting on its own sends,
/// which need its peer, which needs these bytes read): after that the
/// stream's thread reads them itself, until the caller is back. NCCL's proxy
/// tests every request it holds, so with NCCL this only costs the thread a
/// look every so often while the connection is in use.
pub(super) const CALLER_ABSENT_MS: u64 = 100;

/// A connection with no receive posted and no caller visit for this long
/// is idle: its stream threads stop looking (back to the liveness
/// deadlines only) until the next `irecv` wakes them.
const IDLE_AFTER_MS: u64 = 10 * CALLER_ABSENT_MS;

/// One (possibly grouped) irecv.
pub struct RecvOp {
    slots: PerSlot<RawBuf>,
    sizes: OnceLock<PerSlot<u64>>,
    clock: RequestClock,
    /// When its first frame was matched to it.
    first_frame: OnceLock<Instant>,
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
    Header,
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
    stage: Stage,
    clock: StreamClock,
    /// The last message seen on this stream was larger than
    /// `inline_bytes`: the stream's thread reads it, waiting on the socket.
    bulk: bool,
    /// The last message completed on this stream fit in [`PEEK_BYTES`]: the
    /// caller peeks the next one (`Stage::fill`).
    peeks: bool,
}

/// Why a stream stopped making progress.
enum Blocked {
    NoData,
    /// Its next message has no posted receive yet (seen at this generation).
    NoPost(u64),
    /// A large payload is left to the stream's thread (caller only).
    HandedOff,
    Closed,
}

/// A failure found while pumping or tending a stream.
enum Fault {
    Io(io::Error),
    Protocol(String),
    Match(MatchError),
    /// Nothing heard for this many milliseconds while listening.
    Silent(u64),
}

struct Shared {
    peer: SocketAddr,
    /// Whether the caller's thread (NCCL's proxy) does I/O itself in
    /// `test`; see `set_caller_assists`.
    caller_assists: AtomicBool,
    /// Whether the process's poller does that work while it spins
    /// (`TcpSettings::poller`).
    poller: Option<&'static Poller>,
    /// Bumped by every `test` that helps: the stream threads watch it to
    /// see whether the caller is still reading.
    caller_visits: AtomicU64,
    state: Mutex<State>,
    /// Streams waiting for a receive to be posted or matched (`generation`).
    post_wake: Condvar,
    post_sleepers: Sleepers,
    /// Stream threads with nothing to do until handed a large payload, one
    /// condition per stream: a hand-off wakes only that stream's thread.
    idle_wake: Vec<Condvar>,
    idle_sleepers: Sleepers,
    /// Those of them that sleep on an idle connection (no look for an
    /// absent caller): the next `irecv` wakes them.
    unwatched_sleepers: Sleepers,
    streams: Vec<Mutex<Stream>>,
    /// Which streams have bytes waiting, in one system call: the caller's
    /// test reads only those (and the hint), not every stream of the
    /// connection. `None` with one or two streams, or if epoll is
    /// unavailable (then the caller tries every stream).
    readable: Option<ReadableSet>,
    /// The stream on which the caller last completed a receive, read first
    /// without asking: the sender puts small messages on its first free
    /// stream, so the next one most likely comes the same way.
    hint: AtomicUsize,
    /// Streams holding a header that waits for a receive to be posted, one
    /// bit each: no bytes will make them readable, a post makes them ready.
    waiting_post: AtomicU32,
    /// Set by the caller's thread when it leaves a large payload on a stream
    /// to that stream's thread.
    handoff: Vec<AtomicBool>,
    /// Streams whose thread is reading a large payload, one bit each: the
    /// caller (or the poller) skips them instead of contending for their
    /// lock. Set by the caller's hand-off, cleared by the thread once the
    /// payload is in.
    thread_owned: AtomicU32,
    socks: Vec<Arc<Socket>>,
    failure: OnceLock<NetError>,
    closing: AtomicBool,
    /// Streams the peer has closed cleanly; the connection ends with the last.
    closed_streams: AtomicUsize,
    in_flight: AtomicUsize,
    liveness: Liveness,
    inline_bytes: u64,
    timeline: Timeline,
    /// Finished receives' records, reused by the next ones.
    spares: Spares<RecvOp>,
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

    /// Wakes every sleeping stream thread (failure, close, mode change).
    fn wake_all(&self) {
        let _guard = self.lock();
        self.post_wake.notify_all();
        self.idle_wake.iter().for_each(Condvar::notify_all);
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
        self.wake_all();
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
            Fault::Silent(waited_ms) => (
                PeerFailure::NoHeartbeat {
                    waited_ms,
                    timeout_ms: self.liveness.timeout_ms,
                },
                ConnError::Timeout,
            ),
            Fault::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                (PeerFailure::Closed, ConnError::Eof)
            }
            Fault::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                (PeerFailure::TimedOut(e.to_string()), ConnError::Timeout)
            }
            Fault::Io(e) => (PeerFailure::Reset(e.to_string()), ConnError::Reset),
        };
        self.fail(NetError::peer(self.peer, cause), conn, true);
    }

    fn stopped(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.failure.get().is_some()
    }

    /// Whether a message of `total` bytes is read by the stream threads
    /// rather than by the caller's thread.
    fn is_bulk(&self, total: u64) -> bool {
        total > self.inline_bytes || !self.caller_assists.load(Ordering::Relaxed)
    }

    /// Leaves stream `index` to its thread, waking it if it sleeps.
    fn hand_off(&self, index: usize) {
        let flag = &self.handoff[index];
        // Already handed off and not yet picked up: nothing new to say.
        if !flag.load(Ordering::Relaxed)
            && !flag.swap(true, Ordering::SeqCst)
            && self.idle_sleepers.any()
        {
            let _guard = self.lock();
            self.idle_wake[index].notify_one();
        }
    }

    /// Reads on stream `index` until it runs out of data or of posted
    /// receives, or (for the caller) reaches a payload its thread reads.
    fn pump(&self, index: usize, st: &mut Stream, who: Pumper) -> Result<Blocked, Fault> {
        let blocked = self.pump_frames(index, st, who);
        let bit = 1u32 << index;
        let waiting = matches!(blocked, Ok(Blocked::NoPost(_)));
        // Only the holder of the stream's lock changes its bit: a plain
        // look first spares the shared word a write on every pump.
        if (self.waiting_post.load(Ordering::Acquire) & bit != 0) != waiting {
            if waiting {
                self.waiting_post.fetch_or(bit, Ordering::AcqRel);
            } else {
                self.waiting_post.fetch_and(!bit, Ordering::AcqRel);
            }
        }
        blocked
    }

    fn pump_frames(&self, index: usize, st: &mut Stream, who: Pumper) -> Result<Blocked, Fault> {
        let m = metrics::transport(TransportKind::Tcp);
        let Stream {
            sock,
            phase,
            stage,
            clock,
            bulk,
            peeks,
        } = st;
        // The caller peeks small messages (`Stage::fill`): a header when the
        // last message was small, a payload when its own message is.
        let caller = who == Pumper::Caller;
        let small = |total: u64| total + FRAME_HEADER_BYTES as u64 <= PEEK_BYTES as u64;
        // A read that came back short emptied the socket: another one in
        // this call would only return EAGAIN, so it is not made.
        let mut drained = false;
        loop {
            if self.stopped() {
                return Ok(Blocked::Closed);
            }
            match phase {
                Phase::Closed => return Ok(Blocked::Closed),
                Phase::Header => {
                    if stage.len() < FRAME_HEADER_BYTES {
                        if drained {
                            return Ok(Blocked::NoData);
                        }
                        match stage.fill(sock, caller && *peeks) {
                            Ok((0, _)) if stage.len() == 0 => {
                                *phase = Phase::Closed;
                                self.stream_closed();
                                return Ok(Blocked::Closed);
                            }
                            Ok((0, _)) => {
                                return Err(Fault::Io(io::ErrorKind::UnexpectedEof.into()))
                            }
                            Ok((_, filled)) => {
                                clock.heard(now_ms());
                                drained = !filled;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Ok(Blocked::NoData)
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(Fault::Io(e)),
                        }
                        continue;
                    }
                    let head: [u8; FRAME_HEADER_BYTES] = stage.bytes()[..FRAME_HEADER_BYTES]
                        .try_into()
                        .expect("a whole header is staged");
                    stage.consume(FRAME_HEADER_BYTES);
                    match Frame::decode(&head).map_err(|e| Fault::Protocol(e.to_string()))? {
                        Frame::Heartbeat => {}
                        Frame::Data(h) => *phase = Phase::Matching(h),
                    }
                }
                Phase::Matching(h) => {
                    let header = *h;
                    let mut state = self.lock();
                    match state.matcher.on_header(&header).map_err(Fault::Match)? {
                        HeaderOutcome::Wait => return Ok(Blocked::NoPost(state.generation)),
                        HeaderOutcome::Deliver(at) => {
                            let op = &state.ops[&at.request];
                            let buf = op.slots[at.slot];
                            if op.first_frame.get().is_none() {
                                let _ = op.first_frame.set(Instant::now());
                            }
                            state.generation += 1;
                            // A new match may be what another stream waits for.
                            if self.post_sleepers.any() {
                                self.post_wake.notify_all();
                            }
                            drop(state);
                            // Listening again: a wait for the post was ours.
                            clock.heard(now_ms());
                            *bulk = self.is_bulk(header.total);
                            *phase = Phase::Payload {
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
                        let staged = stage.len().min(len - *got);
                        if staged > 0 {
                            let offset = at.offset as usize + *got;
                            buf.write_at(offset, &stage.bytes()[..staged])
                                .map_err(Fault::Io)?;
                            stage.consume(staged);
                            *got += staged;
                            m.bytes_received(staged as u64);
                            continue;
                        }
                        if who == Pumper::Caller && *bulk {
                            self.thread_owned.fetch_or(1 << index, Ordering::AcqRel);
                            self.hand_off(index);
                            return Ok(Blocked::HandedOff);
                        }
                        if drained {
                            return Ok(Blocked::NoData);
                        }
                        let want = len - *got;
                        let read = if want >= STAGE_BYTES {
                            stage.settle(sock).and_then(|()| {
                                buf.try_recv(at.offset + *got as u64, want, sock)
                                    .map(|n| (n, n == want, true))
                            })
                        } else {
                            let peek = caller && small(header.total);
                            stage.fill(sock, peek).map(|(n, filled)| (n, filled, false))
                        };
                        match read {
                            Ok((0, ..)) => {
                                return Err(Fault::Io(io::ErrorKind::UnexpectedEof.into()))
                            }
                            Ok((n, filled, direct)) => {
                                clock.heard(now_ms());
                                drained = !filled;
                                if direct {
                                    *got += n;
                                    m.bytes_received(n as u64);
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Ok(Blocked::NoData)
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(Fault::Io(e)),
                        }
                        continue;
                    }
                    let (seq, total) = (header.seq, header.total);
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
                    *phase = Phase::Header;
                    *peeks = small(total);
                    // A small message came in: the poller (if any) is worth
                    // waking, or keeping awake.
                    if is_polled(total, *bulk) {
                        if let Some(poller) = self.poller {
                            poller.nudge();
                        }
                    }
                }
            }
        }
    }

    /// The stream thread's liveness duties: fail a peer silent past the
    /// timeout while we listened, send our heartbeat when due. Returns when
    /// to look again.
    fn tend(&self, st: &mut Stream) -> Result<u64, Fault> {
        let now = now_ms();
        let listening = matches!(st.phase, Phase::Header | Phase::Payload { .. });
        if listening {
            if let Some(quiet) = st.clock.silent(&self.liveness, now) {
                // A process stopped past the timeout wakes here before it
                // reads: if the peer closed or reset meanwhile, say that,
                // and if bytes are waiting, the peer is not silent at all.
                match st.stage.probe(&st.sock) {
                    Ok(0) => return Err(Fault::Io(io::ErrorKind::UnexpectedEof.into())),
                    // Bytes arrived: the peer spoke; the next pump reads them.
                    Ok(_) => st.clock.heard(now),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Err(Fault::Silent(quiet))
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Fault::Io(e)),
                }
            }
        }
        if st.clock.heartbeat_due(&self.liveness, now) {
            match st.sock.send_with_flags(
                &[REVERSE_HEARTBEAT],
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            ) {
                Ok(_) => {}
                // The sender's side is full of our heartbeats: it has not
                // read for ages, and one more would say nothing new.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(Fault::Io(e)),
            }
            st.clock.sent(now);
        }
        Ok(st.clock.next_check(&self.liveness, listening))
    }

    /// The caller's share inside `test`, left to the poller while it spins.
    fn assist_from_caller(&self, op: &RecvOp) {
        if !self.poller.is_some_and(Poller::covering) {
            self.assist(Some(op));
        }
    }

    /// The proxy thread's share of the work: every stream nobody else holds,
    /// until `op` is complete (the poller, with no `op`, reads them all).
    fn assist(&self, op: Option<&RecvOp>) {
        if !self.caller_assists.load(Ordering::Relaxed) {
            return;
        }
        self.caller_visits.fetch_add(1, Ordering::Relaxed);
        let all = u32::MAX >> (32 - self.streams.len());
        let Some(readable) = &self.readable else {
            return self.visit_each(all, op);
        };
        let hint = self.hint.load(Ordering::Relaxed);
        if self.visit(hint, op) {
            return;
        }
        let owned = self.thread_owned.load(Ordering::Acquire);
        if owned | (1 << hint) == all {
            // Every other stream's thread is reading a payload.
            return;
        }
        let mut due = self.waiting_post.load(Ordering::Acquire);
        if readable.readable(|index| due |= 1 << index).is_err() {
            due = all;
        }
        // The hint was just read; only new bytes would make it worth a
        // second visit, and the next test sees those.
        self.visit_each(due & !(1 << hint), op);
    }

    /// Visits the streams whose bits are set in `streams`, lowest first,
    /// until `op` is complete.
    fn visit_each(&self, mut streams: u32, op: Option<&RecvOp>) {
        while streams != 0 {
            let index = streams.trailing_zeros() as usize;
            streams &= streams - 1;
            if self.visit(index, op) {
                return;
            }
        }
    }

    /// The caller reads stream `index` unless another thread holds it;
    /// returns whether `op` is complete (or the connection failed).
    fn visit(&self, index: usize, op: Option<&RecvOp>) -> bool {
        let owned = self.thread_owned.load(Ordering::Acquire) & (1 << index) != 0;
        if !owned {
            if let Ok(mut stream) = self.streams[index].try_lock() {
                if let Err(f) = self.pump(index, &mut stream, Pumper::Caller) {
                    drop(stream);
                    self.fault(f);
                    return true;
                }
            }
        }
        let complete = op.is_some_and(|op| op.sizes.get().is_some());
        if complete {
            self.hint.store(index, Ordering::Relaxed);
        }
        complete
    }
}

impl Polled for Shared {
    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0 && !self.stopped()
    }

    fn poll_once(&self) {
        self.assist(None);
    }
}

fn stream_worker(shared: Arc<Shared>, index: usize) {
    let sock = Arc::clone(&shared.socks[index]);
    // The caller's visits as last seen, and when that count last changed.
    let (mut visits, mut visited_ms) = (shared.caller_visits.load(Ordering::Relaxed), now_ms());
    // When a receive was last seen posted or the caller last visited.
    let mut active_ms = visited_ms;
    // The caller has tested no receive for CALLER_ABSENT_MS while receives
    // were posted: this thread reads the stream meanwhile.
    let mut covering = false;
    loop {
        let (blocked, deadline, armed, watching) = {
            let mut st = shared.streams[index].lock().expect("stream lock");
            shared.handoff[index].store(false, Ordering::SeqCst);
            let blocked = match shared.pump(index, &mut st, Pumper::Thread) {
                Ok(Blocked::Closed) => return,
                Ok(b) => b,
                Err(f) => {
                    drop(st);
                    return shared.fault(f);
                }
            };
            if !(st.bulk && matches!(st.phase, Phase::Payload { .. })) {
                shared
                    .thread_owned
                    .fetch_and(!(1 << index), Ordering::AcqRel);
            }
            let deadline = match shared.tend(&mut st) {
                Ok(d) => d,
                Err(f) => {
                    drop(st);
                    return shared.fault(f);
                }
            };
            let assists = shared.caller_assists.load(Ordering::Relaxed);
            let now = now_ms();
            if shared.in_flight.load(Ordering::SeqCst) > 0 {
                active_ms = now;
            }
            // The caller is expected to read this stream: look now and then
            // whether it still does.
            let watching = assists && !st.bulk && now.saturating_sub(active_ms) < IDLE_AFTER_MS;
            let armed = st.bulk || !assists || (covering && watching);
            (blocked, deadline, armed, watching)
        };
        let mut timeout = until(deadline);
        if watching {
            timeout = timeout.min(Duration::from_millis(CALLER_ABSENT_MS));
        }
        match blocked {
            Blocked::NoData if armed => {
                if let Err(e) = sys::wait_ready(&sock, false, timeout) {
                    return shared.fault(Fault::Io(e));
                }
            }
            Blocked::NoPost(seen) => {
                let _woken =
                    shared
                        .post_sleepers
                        .wait(&shared.post_wake, shared.lock(), timeout, |s| {
                            s.generation != seen || shared.stopped()
                        });
            }
            // Small messages are the caller's: sleep until handed a large
            // one, or until the next liveness deadline.
            _ => {
                // On an idle connection, the next irecv wakes us (it sees
                // this count, or we see its request).
                let unwatched = !watching && shared.caller_assists.load(Ordering::Relaxed);
                if unwatched {
                    shared.unwatched_sleepers.enter();
                }
                let _woken = shared.idle_sleepers.wait(
                    &shared.idle_wake[index],
                    shared.lock(),
                    timeout,
                    |_| {
                        shared.handoff[index].load(Ordering::SeqCst)
                            || !shared.caller_assists.load(Ordering::Relaxed)
                            || shared.stopped()
                            || (unwatched && shared.in_flight.load(Ordering::SeqCst) > 0)
                    },
                );
                if unwatched {
                    shared.unwatched_sleepers.leave();
                }
            }
        }
        let now = now_ms();
        let seen = shared.caller_visits.load(Ordering::Relaxed);
        if seen != visits {
            (visits, visited_ms, active_ms) = (seen, now, now);
        }
        covering = watching && now.saturating_sub(visited_ms) >= CALLER_ABSENT_MS;
    }
}

impl RecvComm {
    /// Starts the stream threads of an accepted connection whose peer asked
    /// for a heartbeat every `peer_heartbeat_ms`.
    pub(super) fn start(
        socks: Vec<Socket>,
        peer: SocketAddr,
        s: &TcpSettings,
        peer_heartbeat_ms: u32,
    ) -> NetResult<Self> {
        let socks: Vec<Arc<Socket>> = socks.into_iter().map(Arc::new).collect();
        assert!(
            (1..=MAX_STREAMS).contains(&socks.len()),
            "the handshake admits 1..={MAX_STREAMS} streams"
        );
        // With two streams, asking which one has bytes costs as much as
        // reading the one that is not the hint.
        let readable = if socks.len() > 2 {
            let fds: Vec<_> = socks.iter().map(|s| s.as_fd()).collect();
            ReadableSet::new(&fds)
                .inspect_err(|e| {
                    warn!("tcp: recv from {peer}: no epoll ({e}); each receive test reads every stream")
                })
                .ok()
        } else {
            None
        };
        let now = now_ms();
        let shared = Arc::new(Shared {
            peer,
            caller_assists: AtomicBool::new(true),
            poller: Poller::for_receives(s.poller),
            caller_visits: AtomicU64::new(0),
            state: Mutex::new(State {
                matcher: RecvMatcher::with_room(MAX_REQUESTS),
                ops: HashMap::with_capacity(MAX_REQUESTS),
                ..State::default()
            }),
            post_wake: Condvar::new(),
            post_sleepers: Sleepers::default(),
            idle_wake: socks.iter().map(|_| Condvar::new()).collect(),
            idle_sleepers: Sleepers::default(),
            unwatched_sleepers: Sleepers::default(),
            streams: socks
                .iter()
                .map(|sock| {
                    Mutex::new(Stream {
                        sock: Arc::clone(sock),
                        phase: Phase::Header,
                        stage: Stage::new(),
                        clock: StreamClock::new(now),
                        bulk: false,
                        peeks: true,
                    })
                })
                .collect(),
            readable,
            hint: AtomicUsize::new(0),
            waiting_post: AtomicU32::new(0),
            handoff: socks.iter().map(|_| AtomicBool::new(false)).collect(),
            thread_owned: AtomicU32::new(0),
            socks,
            failure: OnceLock::new(),
            closing: AtomicBool::new(false),
            closed_streams: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            liveness: Liveness::new(s.peer_timeout.as_millis() as u64, peer_heartbeat_ms),
            inline_bytes: s.inline_bytes,
            timeline: Timeline::default(),
            spares: Spares::new(|| RecvOp {
                slots: PerSlot::new(),
                sizes: OnceLock::new(),
                clock: RequestClock::start(),
                first_frame: OnceLock::new(),
            }),
        });
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
        if let Some(poller) = comm.shared.poller {
            let polled: Arc<dyn Polled> = comm.shared.clone();
            poller.join(Arc::downgrade(&polled));
        }
        metrics::transport(TransportKind::Tcp).connection_opened();
        Ok(comm)
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The timeline's closing line so far (`None` before a receive
    /// completes).
    pub(super) fn timeline(&self) -> Option<String> {
        self.shared.timeline.summary("receives")
    }

    /// See `SendComm::set_caller_assists`.
    pub fn set_caller_assists(&self, on: bool) {
        self.shared.caller_assists.store(on, Ordering::Relaxed);
        self.shared.wake_all();
    }

    /// Posts a grouped receive of `(buffer, tag)` slots; `Ok(None)` when the
    /// request pool is full.
    pub fn irecv(&self, slots: &[(RawBuf, i32)]) -> NetResult<Option<RecvRequest>> {
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
        let op = self.shared.spares.record(RecvOp {
            slots: slots.iter().map(|&(b, _)| b).collect(),
            sizes: OnceLock::new(),
            clock: RequestClock::start(),
            first_frame: OnceLock::new(),
        });
        {
            let mut state = self.shared.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.generation += 1;
            state
                .matcher
                .post(id, slots.iter().map(|(b, tag)| (*tag, b.len() as u64)));
            state.ops.insert(id, Arc::clone(&op));
            if self.shared.post_sleepers.any() {
                self.shared.post_wake.notify_all();
            }
            // The first receive on an idle connection: its threads look
            // for an absent caller again (no system call while in use).
            if self.shared.in_flight.fetch_add(1, Ordering::SeqCst) == 0
                && self.shared.unwatched_sleepers.any()
            {
                self.shared.idle_wake.iter().for_each(Condvar::notify_all);
            }
        }
        metrics::transport(TransportKind::Tcp).request_started();
        Ok(Some(RecvRequest {
            shared: Arc::clone(&self.shared),
            op,
        }))
    }
}

impl RecvRequest {
    /// Whether it is complete, without moving any bytes (as `test` would).
    #[cfg(test)]
    pub(super) fn completed(&self) -> bool {
        self.op.sizes.get().is_some()
    }

    /// The received size of every slot, once all of them are complete.
    pub fn test(&self) -> NetResult<Option<&[u64]>> {
        let tests = self.op.clock.tested();
        if self.op.sizes.get().is_none() {
            self.shared.assist_from_caller(&self.op);
        }
        if let Some(sizes) = self.op.sizes.get() {
            if let Some(pending) = self.op.clock.first_completion() {
                let m = metrics::transport(TransportKind::Tcp);
                for &s in sizes.iter() {
                    m.message_received();
                    m.message_size(s);
                }
                m.request_latency(pending);
                let first_frame = self
                    .op
                    .first_frame
                    .get()
                    .map(|t| t.saturating_duration_since(self.op.clock.posted()));
                self.shared
                    .timeline
                    .record(sizes.iter().sum(), tests, pending, first_frame);
            }
            return Ok(Some(sizes));
        }
        match self.shared.failure.get() {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }
}

impl Drop for RecvRequest {
    fn drop(&mut self) {
        self.shared.spares.keep(Arc::clone(&self.op));
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        metrics::transport(TransportKind::Tcp).request_finished();
    }
}

impl Drop for RecvComm {
    fn drop(&mut self) {
        if let Some(line) = self.timeline() {
            crate::info!(
                crate::log::SUBSYS_NET,
                "tcp: receive from {}: {line}",
                self.shared.peer
            );
        }
        self.shared.closing.store(true, Ordering::Release);
        if let Some(poller) = self.shared.poller {
            poller.left();
        }
        self.shared.wake_all();
        // A socket closed with unread bytes resets the connection: drop the
        // last peeked message, so that the peer sees a clean close. Where
        // that fails the connection is broken already and the peer has its
        // error; the close goes on.
        for (index, stream) in self.shared.streams.iter().enumerate() {
            let mut st = stream.lock().unwrap_or_else(|e| e.into_inner());
            let Stream { sock, stage, .. } = &mut *st;
            if let Err(e) = stage.settle(sock) {
                crate::trace!(
                    "tcp: receive from {}: stream {index}: a peeked message not dropped at close: {e}",
                    self.shared.peer
                );
            }
        }
        shut_down(&self.shared.socks, &self.shared.streams, &mut self.workers);
    }
}
