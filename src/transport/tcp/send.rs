//! The sending end of a connection.

use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use socket2::Socket;

use super::{TcpSettings, MAX_REQUESTS};
use crate::abi::os::RawBuf;
use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics::{self, ConnError, TransportKind};
use crate::transport::sched::{Chunk, SendScheduler};
use crate::warn;

/// One isend: done when all its chunks are in the kernel's hands.
pub struct SendOp {
    size: u64,
    chunks_left: AtomicU32,
    buf: RawBuf,
    posted: Instant,
}

struct Shared {
    peer: SocketAddr,
    queue: Mutex<SendScheduler<Arc<SendOp>>>,
    wake: Condvar,
    failure: OnceLock<NetError>,
    closing: AtomicBool,
    socks: Vec<Arc<Socket>>,
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

    fn stopped(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.failure.get().is_some()
    }

    fn next_chunk(&self) -> Option<Chunk<Arc<SendOp>>> {
        let mut queue = self.queue.lock().expect("send queue lock");
        loop {
            if self.stopped() {
                return None;
            }
            if let Some(c) = queue.next_chunk() {
                return Some(c);
            }
            queue = self.wake.wait(queue).expect("send queue lock");
        }
    }
}

fn stream_worker(shared: Arc<Shared>, stream: usize) {
    let sock = Arc::clone(&shared.socks[stream]);
    let m = metrics::transport(TransportKind::Tcp);
    while let Some(chunk) = shared.next_chunk() {
        let h = chunk.header;
        let result = chunk
            .op
            .buf
            .send_with_header(&h.encode(), h.offset, h.len as usize, &sock);
        if let Err(e) = result {
            if !shared.closing.load(Ordering::Acquire) {
                let cause = match e.kind() {
                    std::io::ErrorKind::TimedOut => ConnError::Timeout,
                    _ => ConnError::Reset,
                };
                shared.fail(
                    NetError::peer(shared.peer, PeerFailure::Reset(e.to_string())),
                    cause,
                );
            }
            return;
        }
        m.bytes_sent(u64::from(h.len));
        chunk.op.chunks_left.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SendComm {
    pub(super) fn start(socks: Vec<Socket>, peer: SocketAddr, s: &TcpSettings) -> NetResult<Self> {
        let shared = Arc::new(Shared {
            peer,
            queue: Mutex::new(SendScheduler::new(s.chunk_bytes, socks.len())),
            wake: Condvar::new(),
            failure: OnceLock::new(),
            closing: AtomicBool::new(false),
            socks: socks.into_iter().map(Arc::new).collect(),
            in_flight: AtomicUsize::new(0),
        });
        let mut comm = SendComm {
            shared,
            workers: Vec::new(),
        };
        for i in 0..comm.shared.socks.len() {
            let shared = Arc::clone(&comm.shared);
            let worker = std::thread::Builder::new()
                .name(format!("airamp-tx{i}"))
                .stack_size(256 << 10)
                .spawn(move || stream_worker(shared, i))
                .map_err(|e| NetError::io("spawn send thread", e))?;
            comm.workers.push(worker);
        }
        metrics::transport(TransportKind::Tcp).connection_opened();
        Ok(comm)
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
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
        {
            let mut queue = self.shared.queue.lock().expect("send queue lock");
            let (_, chunks) = queue.push(Arc::clone(&op), tag, size);
            // Set before any worker can see the op: workers need the lock.
            op.chunks_left.store(chunks, Ordering::Release);
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        self.shared.wake.notify_one();
        if size > 0 {
            // More than one chunk: let the other streams join in.
            self.shared.wake.notify_all();
        }
        metrics::transport(TransportKind::Tcp).request_started();
        Ok(Some(SendRequest {
            shared: Arc::clone(&self.shared),
            op,
        }))
    }
}

impl SendRequest {
    /// `Some(size)` once every byte has been handed to the kernel.
    pub fn test(&self) -> NetResult<Option<u64>> {
        if self.op.chunks_left.load(Ordering::Acquire) == 0 {
            let m = metrics::transport(TransportKind::Tcp);
            m.message_sent();
            m.message_size(self.op.size);
            m.request_latency(self.op.posted.elapsed());
            return Ok(Some(self.op.size));
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
