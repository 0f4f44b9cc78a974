//! The seam between the collective network and a transport.
//!
//! A group talks to each other member over one [`TxLink`] and one
//! [`RxLink`] per lane. Both are ordered, tagged message pipes: sends
//! complete in the order they were queued, receives match in the order they
//! were posted, and a message whose tag differs from the posted receive's is
//! an error (that is how a desynchronised peer is caught). [`tcp`] wraps
//! airamp's TCP comms; [`mem`] is an in-process pipe that lets tests run N
//! members in one process with any delivery order between links.

use std::collections::VecDeque;

use super::lend::{OwnedRecv, OwnedSend, Payload, RecvBuf};
use crate::error::NetResult;
use crate::transport::tcp::{RecvComm, SendComm};

/// The sending end of one lane to one member.
pub trait TxLink: Send {
    /// Queues `bytes` with `tag`; gives them back when the link cannot take
    /// another message now (its request pool is full).
    fn send(&mut self, bytes: Payload, tag: i32) -> NetResult<Result<(), Payload>>;
    /// The bytes of the oldest queued send once all of them have left this
    /// process (handed to the kernel), else `None`.
    fn poll_sent(&mut self) -> NetResult<Option<Payload>>;
}

/// The receiving end of one lane from one member.
pub trait RxLink: Send {
    /// Posts a receive of exactly `buf.len()` bytes with `tag`; gives the
    /// buffer back when the link cannot take another receive now.
    fn post(&mut self, buf: RecvBuf, tag: i32) -> NetResult<Result<(), RecvBuf>>;
    /// The oldest posted receive once its message has arrived (truncated to
    /// the message's length), else `None`.
    fn poll_received(&mut self) -> NetResult<Option<RecvBuf>>;
}

/// The links to one other member, indexed by lane (`steps::Lane`).
pub struct PeerLinks {
    pub tx: [Box<dyn TxLink>; 2],
    pub rx: [Box<dyn RxLink>; 2],
}

/// Links over airamp's TCP transport (the production path).
pub mod tcp {
    use super::*;

    pub struct TcpTx {
        comm: SendComm,
        inflight: VecDeque<OwnedSend>,
    }

    impl TcpTx {
        pub fn new(comm: SendComm) -> TcpTx {
            TcpTx {
                comm,
                inflight: VecDeque::new(),
            }
        }
    }

    impl TxLink for TcpTx {
        fn send(&mut self, bytes: Payload, tag: i32) -> NetResult<Result<(), Payload>> {
            Ok(OwnedSend::start(&self.comm, bytes, tag)?.map(|s| self.inflight.push_back(s)))
        }

        fn poll_sent(&mut self) -> NetResult<Option<Payload>> {
            let Some(front) = self.inflight.front_mut() else {
                return Ok(None);
            };
            if !front.test()? {
                return Ok(None);
            }
            Ok(self.inflight.pop_front().and_then(OwnedSend::take))
        }
    }

    pub struct TcpRx {
        comm: RecvComm,
        inflight: VecDeque<OwnedRecv>,
    }

    impl TcpRx {
        pub fn new(comm: RecvComm) -> TcpRx {
            TcpRx {
                comm,
                inflight: VecDeque::new(),
            }
        }
    }

    impl RxLink for TcpRx {
        fn post(&mut self, buf: RecvBuf, tag: i32) -> NetResult<Result<(), RecvBuf>> {
            Ok(OwnedRecv::start(&self.comm, buf, tag)?.map(|r| self.inflight.push_back(r)))
        }

        fn poll_received(&mut self) -> NetResult<Option<RecvBuf>> {
            let Some(front) = self.inflight.front_mut() else {
                return Ok(None);
            };
            if !front.test()? {
                return Ok(None);
            }
            Ok(self.inflight.pop_front().and_then(OwnedRecv::take))
        }
    }
}

/// In-process links for deterministic N-member tests.
///
/// A pipe delivers its messages in order, but only when its seeded
/// generator says so on each poll, so across the links of a group messages
/// arrive in a random (reproducible) interleaving. A bounded number of
/// requests per end mirrors the transport's request pool. Pipes carry heap
/// buffers only (the GPU path's pinned slots need a GPU). Test code only.
#[cfg(test)]
pub mod mem {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::collnet::sim::SplitMix;
    use crate::error::{NetError, PeerFailure};

    /// Requests a pipe end holds at once, as the TCP request pool does.
    const REQUESTS: usize = 8;

    #[derive(Default)]
    struct Pipe {
        /// Sent and not yet received: (tag, bytes).
        wire: VecDeque<(i32, Vec<u8>)>,
        /// Messages received so far: a send is complete once delivered.
        delivered: u64,
        broken: bool,
    }

    pub struct MemTx {
        pipe: Arc<Mutex<Pipe>>,
        inflight: VecDeque<(u64, Payload)>,
        sent: u64,
    }

    pub struct MemRx {
        pipe: Arc<Mutex<Pipe>>,
        posted: VecDeque<(i32, RecvBuf)>,
        rng: SplitMix,
        name: String,
    }

    /// One ordered pipe; `seed` drives its delivery timing.
    pub fn pipe(name: impl Into<String>, seed: u64) -> (MemTx, MemRx) {
        let pipe = Arc::new(Mutex::new(Pipe::default()));
        (
            MemTx {
                pipe: Arc::clone(&pipe),
                inflight: VecDeque::new(),
                sent: 0,
            },
            MemRx {
                pipe,
                posted: VecDeque::new(),
                rng: SplitMix::new(seed),
                name: name.into(),
            },
        )
    }

    /// Breaks a pipe from outside, as a closed connection does.
    pub struct Breaker(Arc<Mutex<Pipe>>);

    impl Breaker {
        /// Makes every later call on both ends fail.
        pub fn break_pipe(&self) {
            self.0.lock().expect("pipe lock").broken = true;
        }
    }

    /// Every member's links of an `n`-member group over in-memory pipes,
    /// delivery timing drawn from `seed`, and a breaker per pipe: member
    /// i's receive from j on lane l is `breakers[(i * n + j) * 2 + l]`.
    pub fn mesh(n: usize, seed: u64) -> (Vec<Vec<Option<PeerLinks>>>, Vec<Breaker>) {
        let mut seeds = SplitMix::new(seed);
        let mut tx: Vec<Vec<Vec<Box<dyn TxLink>>>> = (0..n)
            .map(|_| (0..n).map(|_| Vec::new()).collect())
            .collect();
        let mut rx: Vec<Vec<Vec<Box<dyn RxLink>>>> = (0..n)
            .map(|_| (0..n).map(|_| Vec::new()).collect())
            .collect();
        let mut breakers = Vec::new();
        for i in 0..n {
            for j in 0..n {
                for lane in 0..2 {
                    let (t, r) = pipe(format!("{j}->{i} lane {lane}"), seeds.next_u64());
                    breakers.push(r.breaker());
                    if i != j {
                        tx[j][i].push(Box::new(t));
                        rx[i][j].push(Box::new(r));
                    }
                }
            }
        }
        let links = (0..n)
            .map(|rank| {
                (0..n)
                    .map(|j| {
                        (j != rank).then(|| {
                            let Ok(tx) = std::mem::take(&mut tx[rank][j]).try_into() else {
                                unreachable!("two lanes")
                            };
                            let Ok(rx) = std::mem::take(&mut rx[rank][j]).try_into() else {
                                unreachable!("two lanes")
                            };
                            PeerLinks { tx, rx }
                        })
                    })
                    .collect()
            })
            .collect();
        (links, breakers)
    }

    impl MemRx {
        pub fn breaker(&self) -> Breaker {
            Breaker(Arc::clone(&self.pipe))
        }

        fn error(&self, why: String) -> NetError {
            NetError::peer(
                format_args!("mem link {}", self.name),
                PeerFailure::Protocol(why),
            )
        }
    }

    /// Dropping either end breaks the pipe, as closing a connection does.
    impl Drop for MemTx {
        fn drop(&mut self) {
            if let Ok(mut p) = self.pipe.lock() {
                p.broken = true;
            }
        }
    }

    impl Drop for MemRx {
        fn drop(&mut self) {
            if let Ok(mut p) = self.pipe.lock() {
                p.broken = true;
            }
        }
    }

    fn pinned_unsupported() -> NetError {
        NetError::InvalidUsage("in-memory links carry no pinned staging".into())
    }

    fn closed() -> NetError {
        NetError::peer("mem link", PeerFailure::Closed)
    }

    impl TxLink for MemTx {
        fn send(&mut self, bytes: Payload, tag: i32) -> NetResult<Result<(), Payload>> {
            let copy = match &bytes {
                Payload::Heap(heap) => heap.as_ref().clone(),
                Payload::Borrowed(raw) => {
                    let mut v = vec![0u8; raw.len()];
                    raw.read_at(0, &mut v)
                        .map_err(|e| NetError::io("mem link send", e))?;
                    v
                }
                Payload::Pinned(_) => return Err(pinned_unsupported()),
            };
            let mut p = self.pipe.lock().expect("pipe lock");
            if p.broken {
                return Err(closed());
            }
            if self.inflight.len() >= REQUESTS {
                return Ok(Err(bytes));
            }
            p.wire.push_back((tag, copy));
            self.sent += 1;
            self.inflight.push_back((self.sent, bytes));
            Ok(Ok(()))
        }

        fn poll_sent(&mut self) -> NetResult<Option<Payload>> {
            let p = self.pipe.lock().expect("pipe lock");
            if p.broken {
                return Err(closed());
            }
            match self.inflight.front() {
                Some(&(n, _)) if n <= p.delivered => {
                    Ok(self.inflight.pop_front().map(|(_, bytes)| bytes))
                }
                _ => Ok(None),
            }
        }
    }

    impl RxLink for MemRx {
        fn post(&mut self, buf: RecvBuf, tag: i32) -> NetResult<Result<(), RecvBuf>> {
            if matches!(buf, RecvBuf::Pinned(_)) {
                return Err(pinned_unsupported());
            }
            if self.posted.len() >= REQUESTS {
                return Ok(Err(buf));
            }
            self.posted.push_back((tag, buf));
            Ok(Ok(()))
        }

        fn poll_received(&mut self) -> NetResult<Option<RecvBuf>> {
            if self.posted.is_empty() || self.rng.next_u64().is_multiple_of(3) {
                return Ok(None);
            }
            let mut p = self.pipe.lock().expect("pipe lock");
            if p.broken {
                return Err(closed());
            }
            let Some((tag, bytes)) = p.wire.pop_front() else {
                return Ok(None);
            };
            p.delivered += 1;
            drop(p);
            let (want, buf) = self.posted.pop_front().expect("checked non-empty");
            if tag != want {
                return Err(self.error(format!("message tag {tag}, posted receive {want}")));
            }
            if bytes.len() > buf.len() {
                return Err(self.error(format!(
                    "{}-byte message for a {}-byte receive",
                    bytes.len(),
                    buf.len()
                )));
            }
            match buf {
                RecvBuf::Heap(mut heap) => {
                    heap.truncate(bytes.len());
                    heap.copy_from_slice(&bytes);
                    Ok(Some(RecvBuf::Heap(heap)))
                }
                RecvBuf::Output(raw) => {
                    raw.write_at(0, &bytes)
                        .map_err(|e| NetError::io("mem link receive", e))?;
                    Ok(Some(RecvBuf::Output(raw.prefix(bytes.len()))))
                }
                RecvBuf::Pinned(_) => Err(pinned_unsupported()),
            }
        }
    }
}
