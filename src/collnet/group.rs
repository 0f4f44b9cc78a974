//! The collective group: a full mesh of TCP links between the members,
//! driven by NCCL's proxy thread through `test()`.
//!
//! Every ordered pair of members has two links ([`Lane`]s), each a normal
//! airamp TCP connection (several streams, the same framing, token and
//! timeouts as the point-to-point transport). Collectives are cut into
//! [`Step`]s, admitted in call order into a bounded window; each lane
//! carries its messages in step order, so each receiver posts its receives
//! in that same order and the transport's in-order matching pairs them (the
//! tag carries the step number, so a desynchronised peer is an error, not
//! wrong data).
//!
//! All calls (`iallreduce`, `test`, …) come from NCCL's proxy thread; the
//! TCP stream threads move bytes meanwhile, so codec work done here
//! overlaps the wire.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::algo::{choose_path, CollError, DataType, Path, RedOp, Spec};
use super::join::{self, MemberHello, MEMBER_HELLO_BYTES, READY, READY_BYTES};
use super::plan::Plan;
use super::pool::{self, Shared};
use super::steps::{Effects, Lane, Send, Step};
use crate::abi::lend::{OwnedRecv, OwnedSend};
use crate::abi::os::RawBuf;
use crate::codec::WireFormat;
use crate::error::{NetError, NetResult, PeerFailure};
use crate::metrics;
use crate::transport::tcp::{Connecting, Listener, RecvComm, SendComm, TcpSettings};
use crate::transport::wire::ListenHandle;

/// Steps in flight at once (bounded by the transport's request pool).
const WINDOW: usize = 16;
/// Input bytes per allreduce step: small enough that encoding one step
/// overlaps sending the previous ones, large enough to amortise per-message
/// costs.
pub const SEGMENT_BYTES: usize = 1 << 20;

/// Parameters of one group, identical on all members once joined.
#[derive(Clone, Debug)]
pub struct GroupParams {
    pub rank: usize,
    pub n: usize,
    /// The agreed FP8 format; `None` runs every allreduce exactly.
    pub fp8: Option<WireFormat>,
}

/// A message waiting for, or in, the transport, and the call it belongs to.
struct Outgoing {
    op: u64,
    bytes: Shared,
    tag: i32,
}

struct TxLink {
    comm: SendComm,
    queue: VecDeque<Outgoing>,
    inflight: VecDeque<(u64, OwnedSend)>,
}

struct RxLink {
    comm: RecvComm,
    /// Receives to post: (step, length).
    queue: VecDeque<(u64, usize)>,
    inflight: VecDeque<(u64, OwnedRecv)>,
}

struct Peer {
    tx: [TxLink; 2],
    rx: [RxLink; 2],
}

/// Where a call's bytes live: one or more NCCL buffers, concatenated.
#[derive(Clone)]
pub struct Buffers(pub Vec<RawBuf>);

impl Buffers {
    fn len(&self) -> usize {
        self.0.iter().map(RawBuf::len).sum()
    }

    fn visit(
        &self,
        mut offset: usize,
        len: usize,
        mut f: impl FnMut(&RawBuf, usize, std::ops::Range<usize>) -> std::io::Result<()>,
    ) -> NetResult<()> {
        if offset.checked_add(len).map_or(true, |end| end > self.len()) {
            return Err(NetError::InvalidArgument(format!(
                "collnet buffer range {offset}+{len} exceeds {} bytes",
                self.len()
            )));
        }
        let mut done = 0;
        for part in &self.0 {
            if done == len {
                break;
            }
            if offset >= part.len() {
                offset -= part.len();
                continue;
            }
            let take = (part.len() - offset).min(len - done);
            f(part, offset, done..done + take)
                .map_err(|e| NetError::io("collnet buffer copy", e))?;
            done += take;
            offset = 0;
        }
        Ok(())
    }

    /// Runs `f` on input bytes `range`: in place when they lie in one part
    /// (always, for NCCL's calls), else on a pooled copy.
    fn with_bytes<R>(
        &self,
        range: std::ops::Range<usize>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> NetResult<R> {
        if range.is_empty() {
            return Ok(f(&[]));
        }
        let mut offset = range.start;
        for part in &self.0 {
            if offset < part.len() {
                if offset + range.len() <= part.len() {
                    return part
                        .with_bytes(offset, range.len(), f)
                        .map_err(|e| NetError::io("collnet input", e));
                }
                break;
            }
            offset -= part.len();
        }
        let mut copy = pool::take(range.len());
        let len = copy.len();
        self.visit(range.start, len, |part, off, r| {
            part.read_at(off, &mut copy[r])
        })?;
        let out = f(&copy);
        pool::give(copy);
        Ok(out)
    }

    fn write(&self, offset: usize, src: &[u8]) -> NetResult<()> {
        self.visit(offset, src.len(), |part, off, r| {
            part.write_at(off, &src[r])
        })
    }
}

struct Active {
    seq: u64,
    op: u64,
    step: Step,
    /// Expected messages not yet delivered.
    outstanding: usize,
    /// Result-lane messages waiting for earlier steps to close that lane.
    result_queue: Vec<Send>,
}

struct OpState {
    input: Buffers,
    output: Buffers,
    steps_left: usize,
    /// Messages of this call not yet handed to the kernel: the call is not
    /// complete before they are (NCCL may close the group right after).
    sends_left: usize,
    bytes: usize,
    /// Bytes this member queued for sending.
    wire: u64,
    started: Instant,
    kind: OpKind,
}

#[derive(Clone, Copy)]
struct OpKind {
    dtype: DataType,
    path: Path,
}

pub struct Group {
    params: GroupParams,
    peers: Vec<Option<Peer>>,
    waiting: VecDeque<(u64, Step)>,
    active: VecDeque<Active>,
    ops: HashMap<u64, OpState>,
    next_op: u64,
    next_seq: u64,
    failure: Option<NetError>,
}

fn tag_of(seq: u64) -> i32 {
    (seq & 0x7fff_ffff) as i32
}

fn collnet_error(rank: usize, e: CollError) -> NetError {
    NetError::peer(
        format_args!("collnet member {rank}"),
        PeerFailure::Protocol(e.to_string()),
    )
}

impl Group {
    /// Joins the group: connects two links to every other member, accepts
    /// theirs, exchanges hellos and agrees on the FP8 format, then waits
    /// until every member reports all its links up. Blocks (NCCL's CollNet
    /// connect is a blocking call) for at most `timeout`; if any member
    /// fails, every member's join fails.
    pub fn join(
        listener: &mut Listener,
        handles: &[ListenHandle],
        rank: usize,
        settings: &TcpSettings,
        fp8: Option<WireFormat>,
        timeout: Duration,
    ) -> NetResult<Group> {
        let n = handles.len();
        if rank >= n {
            return Err(NetError::InvalidArgument(format!(
                "collnet rank {rank} of {n}"
            )));
        }
        let deadline = Instant::now() + timeout;
        let expired = |what: &str| {
            NetError::peer(
                format_args!("collnet group of {n} (member {rank})"),
                PeerFailure::ConnectFailed(format!(
                    "{what} not complete after {} ms",
                    timeout.as_millis()
                )),
            )
        };
        // 1. Open our links and say who we are on each.
        let mut connecting: Vec<(usize, Lane, Connecting)> = Vec::new();
        for (j, h) in handles.iter().enumerate().filter(|(j, _)| *j != rank) {
            for lane in Lane::ALL {
                connecting.push((j, lane, Connecting::start(h, settings)?));
            }
        }
        let mut tx: HashMap<(usize, Lane), SendComm> = HashMap::new();
        let mut hello_sends = Vec::new();
        let mut rx_pending: Vec<(RecvComm, OwnedRecv)> = Vec::new();
        let mut rx: HashMap<(usize, Lane), RecvComm> = HashMap::new();
        let mut fp8_of = vec![None; n];
        fp8_of[rank] = fp8;
        let links = 2 * (n - 1);
        while tx.len() < links || rx.len() < links {
            let mut i = 0;
            while i < connecting.len() {
                if let Some(comm) = connecting[i].2.progress()? {
                    let (j, lane, _) = connecting.swap_remove(i);
                    let hello = MemberHello {
                        rank: rank as u32,
                        nranks: n as u32,
                        lane,
                        fp8,
                    };
                    let bytes: Shared = Arc::new(hello.encode().to_vec());
                    match OwnedSend::start(&comm, bytes, 0)? {
                        Ok(s) => hello_sends.push(s),
                        Err(_) => return Err(NetError::Unsupported("request pool full at join")),
                    }
                    tx.insert((j, lane), comm);
                } else {
                    i += 1;
                }
            }
            if tx.len() + rx.len() + rx_pending.len() < 2 * links {
                if let Some(comm) = listener.accept()? {
                    match OwnedRecv::start(&comm, vec![0u8; MEMBER_HELLO_BYTES], 0)? {
                        Ok(r) => rx_pending.push((comm, r)),
                        Err(_) => return Err(NetError::Unsupported("request pool full at join")),
                    }
                }
            }
            let mut i = 0;
            while i < rx_pending.len() {
                if rx_pending[i].1.test()? {
                    let (comm, r) = rx_pending.swap_remove(i);
                    let bytes = r.take().unwrap_or_default();
                    let hello =
                        MemberHello::decode(&bytes, n as u32, rank as u32).map_err(|e| {
                            NetError::peer(comm.peer(), PeerFailure::Protocol(e.to_string()))
                        })?;
                    let key = (hello.rank as usize, hello.lane);
                    if rx.contains_key(&key) {
                        return Err(NetError::peer(
                            comm.peer(),
                            PeerFailure::Protocol(
                                join::JoinError::Duplicate {
                                    rank: hello.rank,
                                    lane: hello.lane,
                                }
                                .to_string(),
                            ),
                        ));
                    }
                    fp8_of[hello.rank as usize] = hello.fp8;
                    rx.insert(key, comm);
                } else {
                    i += 1;
                }
            }
            for s in &mut hello_sends {
                s.test()?;
            }
            if Instant::now() > deadline {
                return Err(expired("joining (links and hellos)"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let agreed = join::agree(&fp8_of);
        if fp8.is_some() && agreed.is_none() {
            crate::warn!(
                "collnet member {rank}: FP8 allreduce is off for this group of {n}: not every member enabled it with the same format ({fp8_of:?})"
            );
        }
        // 2. Everyone holds all links: confirm, so that a member that failed
        //    above makes every other member fail too (its links close).
        let mut peers: Vec<Option<Peer>> = (0..n).map(|_| None).collect();
        for (j, slot) in peers.iter_mut().enumerate().filter(|(j, _)| *j != rank) {
            let mut take_tx = |lane| tx.remove(&(j, lane)).expect("all links present");
            let tx_links = [take_tx(Lane::Contrib), take_tx(Lane::Result)];
            let mut take_rx = |lane| rx.remove(&(j, lane)).expect("all links present");
            let rx_links = [take_rx(Lane::Contrib), take_rx(Lane::Result)];
            *slot = Some(Peer {
                tx: tx_links.map(|comm| TxLink {
                    comm,
                    queue: VecDeque::new(),
                    inflight: VecDeque::new(),
                }),
                rx: rx_links.map(|comm| RxLink {
                    comm,
                    queue: VecDeque::new(),
                    inflight: VecDeque::new(),
                }),
            });
        }
        let mut ready_sends = Vec::new();
        let mut ready_recvs = Vec::new();
        for p in peers.iter().flatten() {
            let bytes: Shared = Arc::new(READY.to_vec());
            ready_sends.push(
                OwnedSend::start(&p.tx[0].comm, bytes, 0)?
                    .map_err(|_| NetError::Unsupported("request pool full at join"))?,
            );
            ready_recvs.push(
                OwnedRecv::start(&p.rx[0].comm, vec![0u8; READY_BYTES], 0)?
                    .map_err(|_| NetError::Unsupported("request pool full at join"))?,
            );
        }
        loop {
            let mut all = true;
            for s in hello_sends.iter_mut().chain(ready_sends.iter_mut()) {
                all &= s.test()?;
            }
            for r in &mut ready_recvs {
                all &= r.test()?;
            }
            if all {
                break;
            }
            if Instant::now() > deadline {
                return Err(expired("waiting for every member to be ready"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for r in ready_recvs {
            if r.take().as_deref() != Some(READY.as_slice()) {
                return Err(NetError::peer(
                    format_args!("collnet group member {rank}"),
                    PeerFailure::Protocol("bad ready message".into()),
                ));
            }
        }
        // From here on the proxy thread does the codec work; the stream
        // threads do all socket I/O, on other cores.
        for p in peers.iter().flatten() {
            for l in &p.tx {
                l.comm.set_caller_assists(false);
            }
            for l in &p.rx {
                l.comm.set_caller_assists(false);
            }
        }
        let path = match agreed {
            Some(f) => format!("FP8 {f:?} where dtype/op allow (float sum), exact otherwise"),
            None => "exact".into(),
        };
        crate::info!(
            crate::log::SUBSYS_NET,
            "NET/airamp collnet: member {rank} of {n} joined; allreduce {path}"
        );
        Ok(Group {
            params: GroupParams {
                rank,
                n,
                fp8: agreed,
            },
            peers,
            waiting: VecDeque::new(),
            active: VecDeque::new(),
            ops: HashMap::new(),
            next_op: 0,
            next_seq: 0,
            failure: None,
        })
    }

    pub fn params(&self) -> &GroupParams {
        &self.params
    }

    fn check(&self) -> NetResult<()> {
        match &self.failure {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn add_op(
        &mut self,
        input: Buffers,
        output: Buffers,
        steps: Vec<Step>,
        kind: OpKind,
    ) -> NetResult<u64> {
        let id = self.next_op;
        self.next_op += 1;
        let bytes = output.len();
        self.ops.insert(
            id,
            OpState {
                input,
                output,
                steps_left: steps.len(),
                sends_left: 0,
                bytes,
                wire: 0,
                started: Instant::now(),
                kind,
            },
        );
        self.waiting.extend(steps.into_iter().map(|s| (id, s)));
        self.progress();
        self.check()?;
        Ok(id)
    }

    /// Starts an allreduce of `count` elements from `input` into `output`.
    pub fn all_reduce(
        &mut self,
        input: RawBuf,
        output: RawBuf,
        count: usize,
        dtype: DataType,
        op: RedOp,
    ) -> NetResult<u64> {
        self.check()?;
        let bytes = count
            .checked_mul(dtype.size())
            .filter(|&b| b <= input.len() && b <= output.len())
            .ok_or_else(|| {
                NetError::InvalidArgument(format!(
                    "iallreduce of {count} x {dtype:?} does not fit its buffers"
                ))
            })?;
        let path = choose_path(dtype, op, self.params.fp8);
        let plan = Plan::with_segment_bytes(count, self.params.n, dtype.size(), SEGMENT_BYTES);
        let steps = plan
            .segments()
            .map(|seg| {
                let spec = Spec {
                    n: self.params.n,
                    dtype,
                    op,
                    path,
                    count: seg.len(),
                };
                Step::all_reduce(spec, self.params.rank, seg.start * dtype.size())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| collnet_error(self.params.rank, e))?;
        let input = input.prefix(bytes);
        let output = output.prefix(bytes);
        self.add_op(
            Buffers(vec![input]),
            Buffers(vec![output]),
            steps,
            OpKind { dtype, path },
        )
    }

    /// Starts NCCL's windowed allgather (exact).
    pub fn all_gather(
        &mut self,
        input: RawBuf,
        output: Buffers,
        bytes_per_rank: usize,
        window_offset: usize,
        window_bytes: usize,
    ) -> NetResult<u64> {
        self.check()?;
        if output.len() < window_bytes {
            return Err(NetError::InvalidArgument(format!(
                "iallgather window of {window_bytes} bytes into {} bytes",
                output.len()
            )));
        }
        let step = Step::all_gather(
            self.params.n,
            self.params.rank,
            bytes_per_rank,
            window_offset,
            window_bytes,
        )
        .map_err(|e| collnet_error(self.params.rank, e))?;
        let steps = if window_bytes == 0 {
            vec![]
        } else {
            vec![step]
        };
        self.add_op(
            Buffers(vec![input]),
            output,
            steps,
            OpKind {
                dtype: DataType::U8,
                path: Path::Exact,
            },
        )
    }

    /// Starts NCCL's windowed reduce-scatter (exact).
    #[allow(clippy::too_many_arguments)]
    pub fn reduce_scatter(
        &mut self,
        input: Buffers,
        output: RawBuf,
        bytes_per_rank: usize,
        window_offset: usize,
        window_bytes: usize,
        dtype: DataType,
        op: RedOp,
    ) -> NetResult<u64> {
        self.check()?;
        if input.len() < window_bytes {
            return Err(NetError::InvalidArgument(format!(
                "ireducescatter window of {window_bytes} bytes from {} bytes",
                input.len()
            )));
        }
        let step = Step::reduce_scatter(
            self.params.n,
            self.params.rank,
            dtype,
            op,
            bytes_per_rank,
            window_offset,
            window_bytes,
        )
        .map_err(|e| collnet_error(self.params.rank, e))?;
        let steps = if window_bytes == 0 {
            vec![]
        } else {
            vec![step]
        };
        self.add_op(
            input,
            Buffers(vec![output]),
            steps,
            OpKind {
                dtype,
                path: Path::Exact,
            },
        )
    }

    /// Drives the group; `Some(bytes)` once call `op` is complete (it is
    /// then forgotten).
    pub fn test(&mut self, op: u64) -> NetResult<Option<usize>> {
        self.progress();
        self.check()?;
        let Some(state) = self.ops.get(&op) else {
            return Err(NetError::InvalidUsage(format!(
                "collnet request {op} is not in flight"
            )));
        };
        if state.steps_left > 0 || state.sends_left > 0 {
            return Ok(None);
        }
        let state = self.ops.remove(&op).expect("present");
        metrics::collnet().op_done(
            state.kind.dtype,
            state.kind.path,
            state.bytes,
            state.wire,
            state.started.elapsed(),
        );
        Ok(Some(state.bytes))
    }

    /// One pass over everything; a failure is sticky and fails every call.
    fn progress(&mut self) {
        if self.failure.is_some() {
            return;
        }
        if let Err(e) = self.try_progress() {
            crate::warn!(
                "collnet member {} of {}: {e}; every call in flight on this group fails",
                self.params.rank,
                self.params.n
            );
            self.failure = Some(e);
        }
    }

    fn try_progress(&mut self) -> NetResult<()> {
        self.admit()?;
        self.receive()?;
        self.release_results();
        self.retire();
        self.pump_sends()?;
        Ok(())
    }

    fn peer(&mut self, j: usize) -> NetResult<&mut Peer> {
        self.peers
            .get_mut(j)
            .and_then(Option::as_mut)
            .ok_or_else(|| collnet_error(self.params.rank, CollError::UnknownMember(j)))
    }

    /// Starts waiting steps while the window has room.
    fn admit(&mut self) -> NetResult<()> {
        while self.active.len() < WINDOW {
            let Some((op, mut step)) = self.waiting.pop_front() else {
                break;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let expects = step.expects();
            for e in &expects {
                self.peer(e.from)?.rx[e.lane as usize]
                    .queue
                    .push_back((seq, e.len));
            }
            let range = step.input_range();
            let fx = self
                .ops
                .get(&op)
                .expect("op of a waiting step")
                .input
                .with_bytes(range, |input| step.start(input))?
                .map_err(|e| collnet_error(self.params.rank, e))?;
            let mut active = Active {
                seq,
                op,
                step,
                outstanding: expects.len(),
                result_queue: Vec::new(),
            };
            self.apply(&mut active, fx)?;
            self.active.push_back(active);
            // Put this step's contributions on the wire before encoding the
            // next one: the stream threads send while this thread encodes.
            self.pump_sends()?;
        }
        Ok(())
    }

    /// Routes a step's effects: contributions go out now, result-lane
    /// messages wait for their turn, writes land in the call's output.
    fn apply(&mut self, active: &mut Active, fx: Effects) -> NetResult<()> {
        let op = self.ops.get_mut(&active.op).expect("op of an active step");
        for w in fx.writes {
            op.output.write(w.offset, &w.bytes)?;
            pool::give_shared(w.bytes);
        }
        op.wire += fx.sends.iter().map(|s| s.bytes.len() as u64).sum::<u64>();
        op.sends_left += fx.sends.len();
        let tag = tag_of(active.seq);
        for s in fx.sends {
            match s.lane {
                Lane::Contrib => self.peer(s.to)?.tx[0].queue.push_back(Outgoing {
                    op: active.op,
                    bytes: s.bytes,
                    tag,
                }),
                Lane::Result => active.result_queue.push(s),
            }
        }
        Ok(())
    }

    /// Posts queued receives and delivers completed ones to their steps.
    fn receive(&mut self) -> NetResult<()> {
        let rank = self.params.rank;
        for j in 0..self.params.n {
            if j == rank {
                continue;
            }
            for lane in Lane::ALL {
                loop {
                    let link = &mut self.peer(j)?.rx[lane as usize];
                    if let Some(&(seq, len)) = link.queue.front() {
                        if let Ok(r) = OwnedRecv::start(&link.comm, pool::take(len), tag_of(seq))? {
                            link.queue.pop_front();
                            link.inflight.push_back((seq, r));
                            continue;
                        }
                    }
                    let Some((_, front)) = link.inflight.front_mut() else {
                        break;
                    };
                    if !front.test()? {
                        break;
                    }
                    let (seq, r) = link.inflight.pop_front().expect("front");
                    let bytes = r.take().unwrap_or_default();
                    self.deliver(seq, j, lane, bytes)?;
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, seq: u64, from: usize, lane: Lane, bytes: Vec<u8>) -> NetResult<()> {
        let rank = self.params.rank;
        let front = self.active.front().map_or(0, |a| a.seq);
        let idx = seq
            .checked_sub(front)
            .map(|i| i as usize)
            .filter(|&i| i < self.active.len())
            .ok_or_else(|| {
                NetError::peer(
                    format_args!("collnet member {from}"),
                    PeerFailure::Protocol(format!(
                        "message for step {seq}, which is not in flight"
                    )),
                )
            })?;
        let mut active = self.active.remove(idx).expect("index checked");
        let fx = active
            .step
            .on_message(from, lane, bytes)
            .map_err(|e| collnet_error(rank, e));
        active.outstanding = active.outstanding.saturating_sub(1);
        let res = fx.and_then(|fx| self.apply(&mut active, fx));
        self.active.insert(idx, active);
        res
    }

    /// Result-lane messages go out in step order: a step's wait until every
    /// earlier step has produced all of its own.
    fn release_results(&mut self) {
        let mut pending: Vec<(Send, u64, i32)> = Vec::new();
        for a in &mut self.active {
            let (op, tag) = (a.op, tag_of(a.seq));
            pending.extend(a.result_queue.drain(..).map(|s| (s, op, tag)));
            if !a.step.result_lane_closed() {
                break;
            }
        }
        for (s, op, tag) in pending {
            if let Some(Some(p)) = self.peers.get_mut(s.to) {
                p.tx[1].queue.push_back(Outgoing {
                    op,
                    bytes: s.bytes,
                    tag,
                });
            }
        }
    }

    /// Drops finished steps from the front of the window.
    fn retire(&mut self) {
        while let Some(a) = self.active.front() {
            let finished = a.outstanding == 0
                && a.step.is_done()
                && a.step.result_lane_closed()
                && a.result_queue.is_empty();
            if !finished {
                break;
            }
            let a = self.active.pop_front().expect("front");
            if let Some(e) = a.step.sampled_error() {
                metrics::collnet().fp8_error_sample(e);
            }
            if let Some(op) = self.ops.get_mut(&a.op) {
                op.steps_left -= 1;
            }
        }
    }

    fn pump_sends(&mut self) -> NetResult<()> {
        for p in self.peers.iter_mut().flatten() {
            for link in &mut p.tx {
                while let Some(m) = link.queue.pop_front() {
                    match OwnedSend::start(&link.comm, m.bytes, m.tag)? {
                        Ok(s) => link.inflight.push_back((m.op, s)),
                        Err(bytes) => {
                            link.queue.push_front(Outgoing { bytes, ..m });
                            break;
                        }
                    }
                }
                while let Some((op, front)) = link.inflight.front_mut() {
                    if !front.test()? {
                        break;
                    }
                    if let Some(state) = self.ops.get_mut(op) {
                        state.sends_left -= 1;
                    }
                    let (_, sent) = link.inflight.pop_front().expect("front");
                    if let Some(bytes) = sent.take() {
                        pool::give_shared(bytes);
                    }
                }
            }
        }
        Ok(())
    }
}
