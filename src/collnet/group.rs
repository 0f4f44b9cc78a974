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
use super::buffers::{Buffers, SpareParts};
use super::calibrate::probe::{self, Calibrated};
use super::device::{DeviceMemory, DeviceRange, Place};
use super::gpu_step::{GpuExpect, GpuSend, GpuStep};
use super::join::{self, MemberHello, MEMBER_HELLO_BYTES, READY, READY_BYTES};
use super::lend::{OwnedRecv, OwnedSend, Payload, RecvBuf};
use super::link::tcp::{TcpRx, TcpTx};
use super::link::{PeerLinks, RxLink, TxLink};
use super::plan::Plan;
use super::pola::{Pattern, Seen, Summary};
use super::pool::{self, Shared};
use super::recycle::Recycler;
use super::steps::{Effects, Expect, Lane, Send, Step, StepKind, Window};
use super::workers::{Done, Event, Job, Outbound, Workers};
use crate::codec::WireFormat;
use crate::error::{NetError, NetResult, PeerFailure};
use crate::gpu::{DevAddr, Elem, Fence};
use crate::metrics::{self, GpuCall};
use crate::transport::tcp::{Connecting, Listener, RecvComm, SendComm, TcpSettings};
use crate::transport::wire::ListenHandle;

/// A call in flight this long is described in the log, once.
const STUCK_REPORT: Duration = Duration::from_secs(10);
/// Steps in flight at once (bounded by the transport's request pool).
const WINDOW: usize = 16;
/// Messages a lane to one peer holds at once, queued or in flight: one
/// per step in the window, twice over for the steps retiring. Reserved at
/// join, so that a busier moment than any before allocates nothing.
const LANE_DEPTH: usize = 2 * WINDOW;
/// Fences reserved for staged calls on GPU buffers (their copies in and
/// out), beyond those of the kernel steps.
const STAGED_FENCES: usize = 32;
/// Steps that run no codec and cover at most this many bytes of the call
/// run on the caller's thread (NCCL's proxy) instead of a worker: their
/// work is a few copies and folds over those bytes (tens of microseconds),
/// no more than handing them to a worker and back costs in wake-ups.
const INLINE_STEP_BYTES: usize = 256 << 10;
/// Input bytes per allreduce step: small enough that encoding one step
/// overlaps sending the previous ones, large enough to amortise per-message
/// costs.
pub const SEGMENT_BYTES: usize = 1 << 20;
/// Where a member runs every allreduce on the host, its links send each
/// message up to this size whole on one stream (`transport.min_chunk_size`
/// is the floor for everything else). A host-path step's messages are its
/// shards (up to 256 KiB for NCCL's 512 KiB calls), and cutting them into
/// 64 KiB chunks costs a stream thread's wake-up per chunk: on the H200
/// host whole messages ran the exact sum 6-9 % faster. The GPU path's
/// steps ran slower with them, so members that offer NCCL GPU buffers keep
/// the configured chunks (docs/collnet.md).
pub const HOST_PATH_MIN_CHUNK: u32 = 256 << 10;

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
    bytes: Payload,
    tag: i32,
    /// When it joined its lane's queue.
    queued: Instant,
}

/// A message a step produced, waiting for its lane's turn.
struct Queued {
    to: usize,
    lane: Lane,
    bytes: Payload,
}

/// A step not yet admitted into the window.
enum Pending {
    Cpu(Box<Step>),
    /// An allreduce segment on device memory, run by kernels.
    Gpu(GpuSegment),
}

struct GpuSegment {
    spec: Spec,
    elem: Elem,
    input: DevAddr,
    output: DevAddr,
}

/// Who runs an admitted step.
enum Exec {
    /// The host executor; `None` while a worker has the step.
    Cpu(Option<Box<Step>>),
    Gpu(Box<GpuStep>),
}

struct Tx {
    link: Box<dyn TxLink>,
    queue: VecDeque<Outgoing>,
    /// Calls of the sends in the link and when each joined the lane's
    /// queue, oldest first.
    inflight: VecDeque<(u64, Instant)>,
}

struct Rx {
    link: Box<dyn RxLink>,
    /// Receives to post: (step, buffer).
    queue: VecDeque<(u64, RecvBuf)>,
    /// Steps of the receives in the link and when each was posted, oldest
    /// first.
    inflight: VecDeque<(u64, Instant)>,
}

struct Peer {
    tx: [Tx; 2],
    rx: [Rx; 2],
}

struct Active {
    seq: u64,
    op: u64,
    exec: Exec,
    /// Events that arrived for the step, not yet handed to it.
    events: Vec<Event>,
    /// Messages that arrived straight in the call's output (`from`, lane,
    /// length), not yet accounted to the step: it takes them on the
    /// driving thread, once started and not on a worker.
    in_place: Vec<(usize, Lane, usize)>,
    /// Expected messages not yet delivered.
    outstanding: usize,
    /// The step's start has run: it has produced every contribution.
    started: bool,
    /// Its contributions were queued when it was admitted, before it
    /// started ([`Step::take_early_contributions`]).
    contributed_early: bool,
    /// Contributions waiting for earlier steps to produce theirs.
    contrib_queue: Vec<Queued>,
    /// Result-lane messages waiting for earlier steps to close that lane.
    result_queue: Vec<Queued>,
    times: StepTimes,
}

/// When a step reached each point of its life ([`Phases`]).
struct StepTimes {
    /// The call was made.
    called: Instant,
    /// The step entered the window.
    admitted: Instant,
    /// Expected messages per lane not yet delivered.
    left: [usize; 2],
    /// The last message of each lane arrived.
    arrived: [Option<Instant>; 2],
    /// Its first result-lane message (a reduced shard) was ready to send.
    reduced: Option<Instant>,
}

impl Active {
    fn result_lane_closed(&self) -> bool {
        match &self.exec {
            Exec::Cpu(step) => step.as_ref().is_some_and(|s| s.result_lane_closed()),
            Exec::Gpu(step) => step.result_lane_closed(),
        }
    }

    fn is_done(&self) -> bool {
        match &self.exec {
            Exec::Cpu(step) => step
                .as_ref()
                .is_some_and(|s| s.is_done() && s.result_lane_closed()),
            Exec::Gpu(step) => step.is_done(),
        }
    }
}

struct OpState {
    input: Buffers,
    output: Buffers,
    /// Copies of device inputs to their mirrors: no step starts before
    /// they complete.
    staging_in: Vec<Fence>,
    /// Device outputs, copied back from their mirrors once every step is
    /// done; then the copies' fences.
    staging_out: Vec<DeviceRange>,
    out_fences: Vec<Fence>,
    steps_left: usize,
    /// Messages of this call not yet handed to the kernel: the call is not
    /// complete before they are (NCCL may close the group right after).
    sends_left: usize,
    bytes: usize,
    /// Bytes this member queued for sending.
    wire: u64,
    started: Instant,
    /// A slow call is described in the log once (see [`STUCK_REPORT`]).
    reported: bool,
    kind: OpKind,
}

/// What a call is, as metrics and the call pattern ([`Pattern`]) see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct OpKind {
    collective: Collective,
    dtype: DataType,
    path: Path,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Collective {
    AllReduce,
    AllGather,
    ReduceScatter,
}

pub struct Group {
    params: GroupParams,
    peers: Vec<Option<Peer>>,
    workers: Workers,
    /// NCCL's registered GPU buffers, once it registers one. Declared
    /// before the steps and calls: dropping it waits for the GPU stream
    /// before their pinned slots and mirrors can be freed.
    device: Option<DeviceMemory>,
    waiting: VecDeque<(u64, Pending)>,
    active: VecDeque<Active>,
    ops: HashMap<u64, OpState>,
    next_op: u64,
    next_seq: u64,
    failure: Option<NetError>,
    activity: Activity,
    /// The cycle of calls NCCL drives this group with (PoLA, F9): kind
    /// and bytes of each call.
    pattern: Pattern<(OpKind, usize)>,
    /// Codec-free steps up to this many bytes run on the caller's thread
    /// ([`INLINE_STEP_BYTES`]); `None`: every host step goes to the workers.
    inline_step_bytes: Option<usize>,
    /// Retired steps' lists, emptied, for the next steps.
    lists: StepLists,
}

/// The per-step lists of retired steps and finished jobs, kept so that a
/// steady call pattern allocates none of them again.
struct StepLists {
    events: Recycler<Event>,
    sends: Recycler<Outbound>,
    in_place: Recycler<(usize, Lane, usize)>,
    queued: Recycler<Queued>,
    /// Scratch lists of [`Group::release`] and [`Group::admit`], between
    /// two calls.
    released: Vec<(Queued, u64, i32)>,
    receives: Vec<(usize, Lane, RecvBuf)>,
    expects: Vec<Expect>,
    early_sends: Vec<Send>,
    early: Vec<(usize, Lane, Payload)>,
    effects: Vec<Effects>,
    /// Finished steps by [`StepKind`], renewed for later steps of their
    /// kind ([`Step::renew_all_reduce`] and the like).
    #[allow(clippy::vec_box)] // the boxes are what is reused (`Pending::Cpu`)
    steps: [Vec<Box<Step>>; StepKind::COUNT],
    /// Finished calls' lists of buffer parts ([`Buffers::recycle`]).
    part_lists: SpareParts,
    /// A window's list of NCCL's buffer parts, lent to the C ABI
    /// ([`Group::place_list`]).
    places: Vec<Place>,
    /// The steps of a call being filed ([`Group::add_op`]).
    pending: Vec<Pending>,
    /// The same for GPU steps ([`GpuStep::renew`], [`GpuStep::poll`]).
    #[allow(clippy::vec_box)] // the boxes are what is reused (`Exec::Gpu`)
    gpu_steps: Vec<Box<GpuStep>>,
    gpu_expects: Vec<GpuExpect>,
    gpu_sends: Vec<GpuSend>,
}

impl StepLists {
    /// Lists for a group of `n` members.
    fn new(n: usize) -> StepLists {
        // Every step in the window holds one of each (two queues); as
        // many again may be on their way back from the workers.
        let most = 2 * WINDOW;
        StepLists {
            events: Recycler::new(most),
            sends: Recycler::new(most),
            in_place: Recycler::new(most),
            queued: Recycler::new(2 * most),
            // Each step in the window queues at most a message per peer
            // and lane.
            released: Vec::with_capacity(WINDOW * 2 * n),
            receives: Vec::new(),
            expects: Vec::new(),
            early_sends: Vec::new(),
            early: Vec::new(),
            effects: Vec::new(),
            steps: Default::default(),
            part_lists: SpareParts::new(),
            places: Vec::new(),
            pending: Vec::new(),
            gpu_steps: Vec::new(),
            gpu_expects: Vec::new(),
            gpu_sends: Vec::new(),
        }
    }
}

/// What a group did, logged when it closes: how NCCL drove it (call sizes,
/// time from call to completion) without a metrics scrape.
#[derive(Default)]
struct Activity {
    calls: u64,
    bytes: u64,
    smallest: usize,
    largest: usize,
    in_flight: Duration,
    depth: Depth,
    phases: Phases,
}

/// How many calls NCCL keeps in flight, averaged over time: with the mean
/// time per call, this gives the group's bandwidth (Little's law), and says
/// whether a faster call would raise it or NCCL posts too few.
#[derive(Default)]
struct Depth {
    /// First call, and the last change of the count.
    first: Option<Instant>,
    last: Option<Instant>,
    /// Calls in flight integrated over time, call-seconds.
    area: f64,
}

impl Depth {
    /// The count is about to change from `before`.
    fn change(&mut self, before: usize) {
        let now = Instant::now();
        if let Some(last) = self.last {
            self.area += before as f64 * now.saturating_duration_since(last).as_secs_f64();
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn mean(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) if last > first => {
                self.area / last.duration_since(first).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Where the steps' time goes, summed over retired steps and logged at
/// close: the breakdown behind the call-to-completion mean (a step waiting
/// for the window, for its contributions, for a worker, or for the wire).
#[derive(Default)]
struct Phases {
    steps: u64,
    /// Call to admission into the window.
    waiting: Duration,
    /// Admission to: the last contribution in, the first result-lane
    /// message ready (`(sum, count)`: only steps that send one), the last
    /// result in, retirement.
    contributions: Duration,
    reduced: (Duration, u64),
    results: Duration,
    retired: Duration,
    /// Per message and lane, queued on the lane to sent, and posted to
    /// arrived: `(sum, count)`.
    sends: [(Duration, u64); 2],
    receives: [(Duration, u64); 2],
    /// Per worker job, waiting for a worker; per event kind (start,
    /// contribution, result), running: `(sum, count)`.
    jobs: u64,
    job_queued: Duration,
    events: [(Duration, u64); 3],
    /// Passes over the group by whichever thread drives it, and the time
    /// spent inside them: whether the driving thread is the bottleneck.
    passes: u64,
    in_passes: Duration,
    /// Messages received straight into the call's output (no copy, no
    /// worker job).
    in_place: u64,
}

impl Phases {
    fn retire(&mut self, t: &StepTimes) {
        let since = |at: Option<Instant>| {
            at.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(t.admitted)
            })
        };
        self.steps += 1;
        self.waiting += t.admitted.saturating_duration_since(t.called);
        self.contributions += since(t.arrived[Lane::Contrib as usize]);
        if t.reduced.is_some() {
            self.reduced = (self.reduced.0 + since(t.reduced), self.reduced.1 + 1);
        }
        self.results += since(t.arrived[Lane::Result as usize]);
        self.retired += t.admitted.elapsed();
    }

    /// One line of mean microseconds.
    fn describe(&self) -> String {
        let us = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        let lane = |v: &[(Duration, u64); 2], l: Lane| us(v[l as usize].0, v[l as usize].1);
        let n = self.steps;
        format!(
            "mean per step, us after entering the window: contributions in {:.0}, reduced shard (first result-lane message) ready {:.0}, results in {:.0}, retired {:.0} (waited {:.0} for the window); per message, queued on its lane to sent: contributions {:.0}, results {:.0}; posted to arrived: contributions {:.0}, results {:.0}; per worker job ({}): {:.0} waiting for a worker; per event, running: start {:.0}, contribution {:.0}, result {:.0}; {} messages received in place; {} passes over the group, {:.2} us each",
            us(self.contributions, n),
            us(self.reduced.0, self.reduced.1),
            us(self.results, n),
            us(self.retired, n),
            us(self.waiting, n),
            lane(&self.sends, Lane::Contrib),
            lane(&self.sends, Lane::Result),
            lane(&self.receives, Lane::Contrib),
            lane(&self.receives, Lane::Result),
            self.jobs,
            us(self.job_queued, self.jobs),
            us(self.events[0].0, self.events[0].1),
            us(self.events[1].0, self.events[1].1),
            us(self.events[2].0, self.events[2].1),
            self.in_place,
            self.passes,
            us(self.in_passes, self.passes),
        )
    }
}

impl Activity {
    fn record(&mut self, bytes: usize, took: Duration) {
        self.smallest = if self.calls == 0 {
            bytes
        } else {
            self.smallest.min(bytes)
        };
        self.largest = self.largest.max(bytes);
        self.calls += 1;
        self.bytes += bytes as u64;
        self.in_flight += took;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.pattern.locked().is_some() {
            metrics::collnet().pola_unlocked();
        }
        let a = &self.activity;
        if a.calls == 0 {
            return;
        }
        let p = &self.pattern;
        crate::info!(
            crate::log::SUBSYS_NET,
            "collnet: member {} of {} closing after {} calls, {} MiB: {}..{} bytes per call (mean {}), {:.0} us mean from call to completion, {:.1} calls in flight on average; call pattern {}, {} hits, {} misses, locked {} time(s)",
            self.params.rank,
            self.params.n,
            a.calls,
            a.bytes >> 20,
            a.smallest,
            a.largest,
            a.bytes / a.calls,
            a.in_flight.as_secs_f64() * 1e6 / a.calls as f64,
            a.depth.mean(),
            p.locked()
                .map_or("learning".to_string(), |period| format!("locked (period {period} calls)")),
            p.hits(),
            p.misses(),
            p.locks()
        );
        crate::info!(
            crate::log::SUBSYS_NET,
            "collnet: member {} of {}: {}",
            self.params.rank,
            self.params.n,
            a.phases.describe()
        );
    }
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
    /// until every member reports all its links up, then runs the
    /// calibration rounds ([`probe::measure_links`], [`probe::finish`]) when
    /// every member asked for
    /// them. Blocks (NCCL's CollNet connect is a blocking call) for at most
    /// `timeout`; if any member fails, every member's join fails.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        listener: &mut Listener,
        handles: &[ListenHandle],
        rank: usize,
        settings: &TcpSettings,
        fp8: Option<WireFormat>,
        timeout: Duration,
        workers: usize,
        proxy_assist: bool,
        host_only: bool,
        calibration: probe::Setup,
    ) -> NetResult<(Group, Calibrated)> {
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
        let link_settings = link_settings(settings, host_only);
        let mut connecting: Vec<(usize, Lane, Connecting)> = Vec::new();
        for (j, h) in handles.iter().enumerate().filter(|(j, _)| *j != rank) {
            for lane in Lane::ALL {
                connecting.push((j, lane, Connecting::start(h, &link_settings)?));
            }
        }
        let mut tx: HashMap<(usize, Lane), SendComm> = HashMap::new();
        let mut hello_sends = Vec::new();
        let mut rx_pending: Vec<(RecvComm, OwnedRecv)> = Vec::new();
        let mut rx: HashMap<(usize, Lane), RecvComm> = HashMap::new();
        let mut fp8_of = vec![None; n];
        fp8_of[rank] = fp8;
        let mut calibrate_of = vec![false; n];
        calibrate_of[rank] = calibration.ask;
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
                        calibrate: calibration.ask,
                    };
                    let bytes: Shared = Arc::new(hello.encode().to_vec());
                    match OwnedSend::start(&comm, Payload::Heap(bytes), 0)? {
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
                    match OwnedRecv::start(&comm, RecvBuf::Heap(vec![0u8; MEMBER_HELLO_BYTES]), 0)?
                    {
                        Ok(r) => rx_pending.push((comm, r)),
                        Err(_) => return Err(NetError::Unsupported("request pool full at join")),
                    }
                }
            }
            let mut i = 0;
            while i < rx_pending.len() {
                if rx_pending[i].1.test()? {
                    let (comm, r) = rx_pending.swap_remove(i);
                    let bytes = r.take().and_then(RecvBuf::into_heap).unwrap_or_default();
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
                    calibrate_of[hello.rank as usize] = hello.calibrate;
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
        let mut comms: Vec<(usize, [SendComm; 2], [RecvComm; 2])> = Vec::new();
        for j in (0..n).filter(|&j| j != rank) {
            let mut take_tx = |lane| tx.remove(&(j, lane)).expect("all links present");
            let tx_links = [take_tx(Lane::Contrib), take_tx(Lane::Result)];
            let mut take_rx = |lane| rx.remove(&(j, lane)).expect("all links present");
            let rx_links = [take_rx(Lane::Contrib), take_rx(Lane::Result)];
            comms.push((j, tx_links, rx_links));
        }
        let mut ready_sends = Vec::new();
        let mut ready_recvs = Vec::new();
        for (_, tx, rx) in &comms {
            let bytes: Shared = Arc::new(READY.to_vec());
            ready_sends.push(
                OwnedSend::start(&tx[0], Payload::Heap(bytes), 0)?
                    .map_err(|_| NetError::Unsupported("request pool full at join"))?,
            );
            ready_recvs.push(
                OwnedRecv::start(&rx[0], RecvBuf::Heap(vec![0u8; READY_BYTES]), 0)?
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
            if r.take().and_then(RecvBuf::into_heap).as_deref() != Some(READY.as_slice()) {
                return Err(NetError::peer(
                    format_args!("collnet group member {rank}"),
                    PeerFailure::Protocol("bad ready message".into()),
                ));
            }
        }
        // From here on, with `proxy_assist`, the proxy thread moves messages
        // up to the transport's `inline_bytes` itself inside `test` (as on
        // the point-to-point path: no stream thread woken per message), the
        // stream threads move larger ones and whatever a full socket leaves;
        // without it the stream threads do all socket I/O. The workers run
        // codec work.
        let mut links: Vec<Option<PeerLinks>> = (0..n).map(|_| None).collect();
        for (j, tx, rx) in comms {
            if !proxy_assist {
                for c in &tx {
                    c.set_caller_assists(false);
                }
                for c in &rx {
                    c.set_caller_assists(false);
                }
            }
            links[j] = Some(PeerLinks {
                tx: tx.map(|c| Box::new(TcpTx::new(c)) as Box<dyn TxLink>),
                rx: rx.map(|c| Box::new(TcpRx::new(c)) as Box<dyn RxLink>),
            });
        }
        // 3. Calibration: the links as the group will use them, then the
        //    compressed path through the started group.
        let run = join::agree_calibration(&calibrate_of);
        let started = Instant::now();
        let link = if run {
            probe::measure_links(&mut links, rank, deadline)?
        } else {
            None
        };
        let path = match agreed {
            Some(f) => {
                format!("compressed ({f:?}) where dtype/op allow (float sum), exact otherwise")
            }
            None => "exact".into(),
        };
        crate::info!(
            crate::log::SUBSYS_NET,
            "collnet: member {rank} of {n} joined; allreduce {path}; {workers} worker thread(s)"
        );
        let mut group = Group::from_links(
            GroupParams {
                rank,
                n,
                fp8: agreed,
            },
            links,
            workers,
        )?;
        if !proxy_assist {
            group.inline_step_bytes = None;
        }
        probe::finish(group, run, link, calibration, deadline, started)
    }

    /// A group over links that are already up (`links[rank]` is `None`),
    /// with `workers` threads for codec work (0: all on the caller's thread).
    pub fn from_links(
        params: GroupParams,
        links: Vec<Option<PeerLinks>>,
        workers: usize,
    ) -> NetResult<Group> {
        let peers = links
            .into_iter()
            .map(|l| {
                l.map(|l| {
                    let [tx0, tx1] = l.tx;
                    let [rx0, rx1] = l.rx;
                    let tx = |link| Tx {
                        link,
                        queue: VecDeque::with_capacity(LANE_DEPTH),
                        inflight: VecDeque::with_capacity(LANE_DEPTH),
                    };
                    let rx = |link| Rx {
                        link,
                        queue: VecDeque::with_capacity(LANE_DEPTH),
                        inflight: VecDeque::with_capacity(LANE_DEPTH),
                    };
                    Peer {
                        tx: [tx(tx0), tx(tx1)],
                        rx: [rx(rx0), rx(rx1)],
                    }
                })
            })
            .collect();
        // A step in flight holds at most about 2n shared buffers (its
        // encoded contributions, its reduced shard, its decoded shards),
        // and as many steps again may be retiring.
        pool::add_shells(2 * WINDOW * 2 * params.n);
        let lists = StepLists::new(params.n);
        Ok(Group {
            workers: Workers::start(workers, params.rank, WINDOW)?,
            device: None,
            params,
            peers,
            waiting: VecDeque::new(),
            active: VecDeque::new(),
            ops: HashMap::new(),
            next_op: 0,
            next_seq: 0,
            failure: None,
            activity: Activity::default(),
            pattern: Pattern::new(),
            inline_step_bytes: Some(INLINE_STEP_BYTES),
            lists,
        })
    }

    /// Sends every host step to the workers (tests: the worker path for
    /// steps that would otherwise run inline).
    #[cfg(test)]
    pub fn no_inline_steps(&mut self) {
        self.inline_step_bytes = None;
    }

    /// Messages received straight into a call's output so far.
    #[cfg(test)]
    pub fn received_in_place(&self) -> u64 {
        self.activity.phases.in_place
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

    /// Registers NCCL's device buffer `ptr..ptr+len` (at regMr time, on
    /// NCCL's setup thread with its device current); returns its base.
    pub fn register_device(&mut self, ptr: usize, len: usize) -> NetResult<usize> {
        if self.device.is_none() {
            let n = self.params.n;
            let (slot_bytes, slots) = gpu_staging_layout(n, self.params.fp8.is_some());
            // A GPU step holds at most a start fence, a fold fence and n - 1
            // decode fences; staged calls hold a few more.
            let fences = WINDOW * (n + 1) + STAGED_FENCES;
            self.device = Some(DeviceMemory::new(slot_bytes, slots, fences)?);
        }
        self.device
            .as_mut()
            .expect("created above")
            .register(ptr, len)
    }

    pub fn deregister_device(&mut self, base: usize) {
        if let Some(d) = &mut self.device {
            d.deregister(base);
        }
    }

    /// The registered device range holding `ptr..ptr+len`, if any.
    pub fn device_range(&self, ptr: usize, len: usize) -> Option<DeviceRange> {
        self.device.as_ref()?.find(ptr, len)
    }

    /// Files call `id` and queues its steps (`steps` is drained and kept as
    /// the next call's list).
    fn add_op(
        &mut self,
        input: &[Place],
        output: &[Place],
        bytes: usize,
        mut steps: Vec<Pending>,
        kind: OpKind,
    ) -> NetResult<u64> {
        let id = self.next_op;
        self.next_op += 1;
        let mut staging_in = Vec::new();
        let mut staging_out = Vec::new();
        if input
            .iter()
            .chain(output)
            .any(|p| matches!(p, Place::Device(_)))
        {
            metrics::collnet().gpu_call(GpuCall::Staged);
        }
        for place in input {
            if let Place::Device(r) = place {
                let device = self
                    .device
                    .as_ref()
                    .expect("a device range has its group's device");
                staging_in.push(device.stage_in(r)?);
            }
        }
        for place in output {
            if let Place::Device(r) = place {
                staging_out.push(r.clone());
            }
        }
        self.activity.depth.change(self.ops.len());
        self.ops.insert(
            id,
            OpState {
                input: Buffers::new(
                    input.iter().map(Place::host_view),
                    &mut self.lists.part_lists,
                ),
                output: Buffers::new(
                    output.iter().map(Place::host_view),
                    &mut self.lists.part_lists,
                ),
                staging_in,
                staging_out,
                out_fences: Vec::new(),
                steps_left: steps.len(),
                sends_left: 0,
                bytes,
                wire: 0,
                started: Instant::now(),
                reported: false,
                kind,
            },
        );
        self.waiting.extend(steps.drain(..).map(|s| (id, s)));
        self.lists.pending = steps;
        self.observe_pattern(kind, bytes);
        self.progress();
        self.check()?;
        Ok(id)
    }

    /// The call pattern NCCL drives this group with (PoLA).
    pub fn call_pattern(&self) -> Summary {
        self.pattern.summary()
    }

    /// Feeds a new call to the call pattern; metrics, and one log line the
    /// first time the group locks.
    fn observe_pattern(&mut self, kind: OpKind, bytes: usize) {
        let seen = self.pattern.observe((kind, bytes));
        metrics::collnet().pola_call(seen);
        if let Seen::Locked { period } = seen {
            if self.pattern.locks() == 1 {
                crate::info!(
                    crate::log::SUBSYS_NET,
                    "collnet: member {} of {}: call pattern locked after {} calls, a cycle of {period} calls",
                    self.params.rank,
                    self.params.n,
                    self.next_op
                );
            }
        }
    }

    /// Starts an allreduce of `count` elements from `input` into `output`.
    pub fn all_reduce(
        &mut self,
        input: Place,
        output: Place,
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
        let specs = plan.segments().map(|seg| {
            (
                seg.start * dtype.size(),
                Spec {
                    n: self.params.n,
                    dtype,
                    op,
                    path,
                    count: seg.len(),
                },
            )
        });
        let input = input.prefix(bytes);
        let output = output.prefix(bytes);
        let kind = OpKind {
            collective: Collective::AllReduce,
            dtype,
            path,
        };
        // Compressed sums (FP8, INT8), and exact sums of floats, on device
        // buffers: kernels encode (or copy), fold and decode in place; only
        // wire bytes cross PCIe. (Other exact reductions have no kernels:
        // staged.)
        let on_gpu = match (kernel_elem(dtype, op, path, self.params.n), &input, &output) {
            (Some(elem), Place::Device(i), Place::Device(o)) => {
                Some((elem, i.device(), o.device()))
            }
            _ => None,
        };
        let mut steps = std::mem::take(&mut self.lists.pending);
        if let Some((elem, i, o)) = on_gpu {
            steps.extend(specs.map(|(offset, spec)| {
                Pending::Gpu(GpuSegment {
                    spec,
                    elem,
                    input: i.offset(offset),
                    output: o.offset(offset),
                })
            }));
            metrics::collnet().gpu_call(GpuCall::Kernels);
            return self.add_op(&[], &[], bytes, steps, kind);
        }
        let rank = self.params.rank;
        for (offset, spec) in specs {
            let step = match self.lists.steps[StepKind::all_reduce(&spec) as usize].pop() {
                Some(spare) => Step::renew_all_reduce(spare, spec, rank, offset),
                None => Step::all_reduce(spec, rank, offset).map(Box::new),
            };
            steps.push(Pending::Cpu(step.map_err(|e| collnet_error(rank, e))?));
        }
        self.add_op(&[input], &[output], bytes, steps, kind)
    }

    /// An empty list for a window's buffer parts (the C ABI fills it for
    /// [`Group::all_gather`] or [`Group::reduce_scatter`], which empty it
    /// and keep it for the next window).
    pub fn place_list(&mut self) -> Vec<Place> {
        std::mem::take(&mut self.lists.places)
    }

    /// Starts NCCL's windowed allgather (exact).
    pub fn all_gather(
        &mut self,
        input: Place,
        mut output: Vec<Place>,
        window: Window,
    ) -> NetResult<u64> {
        self.check()?;
        let room: usize = output.iter().map(Place::len).sum();
        if room < window.bytes {
            return Err(NetError::InvalidArgument(format!(
                "iallgather window of {} bytes into {room} bytes",
                window.bytes
            )));
        }
        let (n, rank) = (self.params.n, self.params.rank);
        let step = match self.lists.steps[StepKind::AllGather as usize].pop() {
            Some(spare) => Step::renew_all_gather(spare, n, rank, window),
            None => Step::all_gather(n, rank, window).map(Box::new),
        }
        .map_err(|e| collnet_error(rank, e))?;
        let mut steps = std::mem::take(&mut self.lists.pending);
        if window.bytes > 0 {
            steps.push(Pending::Cpu(step));
        } else {
            // An empty window has nothing to run: the step stays spare.
            self.lists.steps[StepKind::AllGather as usize].push(step);
        }
        let kind = OpKind {
            collective: Collective::AllGather,
            dtype: DataType::U8,
            path: Path::Exact,
        };
        let id = self.add_op(&[input], &output, window.bytes, steps, kind);
        output.clear();
        self.lists.places = output;
        id
    }

    /// Starts NCCL's windowed reduce-scatter (exact).
    pub fn reduce_scatter(
        &mut self,
        mut input: Vec<Place>,
        output: Place,
        window: Window,
        dtype: DataType,
        op: RedOp,
    ) -> NetResult<u64> {
        self.check()?;
        let have: usize = input.iter().map(Place::len).sum();
        if have < window.bytes {
            return Err(NetError::InvalidArgument(format!(
                "ireducescatter window of {} bytes from {have} bytes",
                window.bytes
            )));
        }
        let (n, rank) = (self.params.n, self.params.rank);
        let step = match self.lists.steps[StepKind::ReduceScatter as usize].pop() {
            Some(spare) => Step::renew_reduce_scatter(spare, n, rank, dtype, op, window),
            None => Step::reduce_scatter(n, rank, dtype, op, window).map(Box::new),
        }
        .map_err(|e| collnet_error(rank, e))?;
        let mut steps = std::mem::take(&mut self.lists.pending);
        if window.bytes > 0 {
            steps.push(Pending::Cpu(step));
        } else {
            // An empty window has nothing to run: the step stays spare.
            self.lists.steps[StepKind::ReduceScatter as usize].push(step);
        }
        let piece = output.len();
        let kind = OpKind {
            collective: Collective::ReduceScatter,
            dtype,
            path: Path::Exact,
        };
        let id = self.add_op(&input, &[output], piece, steps, kind);
        input.clear();
        self.lists.places = input;
        id
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
        if state.steps_left > 0 || state.sends_left > 0 || !self.staged_out(op)? {
            self.report_if_stuck(op);
            return Ok(None);
        }
        self.activity.depth.change(self.ops.len());
        let state = self.ops.remove(&op).expect("present");
        self.activity.record(state.bytes, state.started.elapsed());
        for buffers in [state.input, state.output] {
            buffers.recycle(&mut self.lists.part_lists, 2 * WINDOW);
        }
        metrics::collnet().op_done(
            state.kind.dtype,
            state.kind.path,
            state.bytes,
            state.wire,
            state.started.elapsed(),
        );
        Ok(Some(state.bytes))
    }

    /// Logs, once, where a call that has been in flight for
    /// [`STUCK_REPORT`] stands: a slow peer is not an error (the transport's
    /// timeouts decide that), but a call that never completes must be
    /// diagnosable from the log.
    fn report_if_stuck(&mut self, op: u64) {
        let Some(state) = self.ops.get_mut(&op) else {
            return;
        };
        if state.reported || state.started.elapsed() < STUCK_REPORT {
            return;
        }
        state.reported = true;
        let window: Vec<String> = self
            .active
            .iter()
            .filter(|a| a.op == op)
            .map(|a| {
                let exec = match &a.exec {
                    Exec::Cpu(Some(_)) => "host",
                    Exec::Cpu(None) => "host, on a worker",
                    Exec::Gpu(_) => "gpu",
                };
                format!(
                    "step {} ({exec}): started {}, {} receives outstanding, {} events queued, done {}",
                    a.seq,
                    a.started,
                    a.outstanding,
                    a.events.len(),
                    a.is_done()
                )
            })
            .collect();
        crate::warn!(
            "collnet member {} of {}: call {op} ({:?} {:?}, {} bytes) not complete after {} s: {} steps left ({} waiting for the window), {} sends not yet handed to the kernel, {} device copies in and {} out pending; {}",
            self.params.rank,
            self.params.n,
            state.kind.dtype,
            state.kind.path,
            state.bytes,
            STUCK_REPORT.as_secs(),
            state.steps_left,
            self.waiting.iter().filter(|(o, _)| *o == op).count(),
            state.sends_left,
            state.staging_in.len(),
            state.staging_out.len() + state.out_fences.len(),
            if window.is_empty() { "no step in the window".to_string() } else { window.join("; ") }
        );
    }

    /// Copies a finished call's device outputs back (once) and says whether
    /// those copies are complete.
    fn staged_out(&mut self, op: u64) -> NetResult<bool> {
        let state = self.ops.get_mut(&op).expect("present");
        if !state.staging_out.is_empty() {
            let device = self
                .device
                .as_ref()
                .expect("a device range has its group's device");
            for r in state.staging_out.drain(..) {
                state.out_fences.push(device.stage_out(&r)?);
            }
        }
        while let Some(f) = state.out_fences.last() {
            if !f.is_complete()? {
                return Ok(false);
            }
            state.out_fences.pop();
        }
        Ok(true)
    }

    /// One pass over everything; a failure is sticky and fails every call.
    fn progress(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let pass = Instant::now();
        let outcome = self.try_progress();
        let phases = &mut self.activity.phases;
        phases.passes += 1;
        phases.in_passes += pass.elapsed();
        if let Err(e) = outcome {
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
        self.collect()?;
        self.poll_gpu()?;
        self.release();
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

    /// Starts waiting steps while the window has room (and, for GPU steps,
    /// staging slots are free).
    fn admit(&mut self) -> NetResult<()> {
        while self.active.len() < WINDOW {
            let Some((op, pending)) = self.waiting.front() else {
                break;
            };
            let op = *op;
            if let Pending::Gpu(seg) = pending {
                let free = self.device.as_ref().map_or(0, |d| d.slots().available());
                if free < GpuStep::slots_needed(&seg.spec, self.params.rank) {
                    break;
                }
            }
            if !self.staged_in(op)? {
                break;
            }
            let (op, pending) = self.waiting.pop_front().expect("front");
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut receives = std::mem::take(&mut self.lists.receives);
            let mut early = std::mem::take(&mut self.lists.early);
            let (exec, events, contributed_early) = match pending {
                Pending::Cpu(mut step) => {
                    let state = self.ops.get(&op).expect("op of a waiting step");
                    // Exact contributions are ranges of NCCL's input: out
                    // now, not after a worker has started the step.
                    let sends = &mut self.lists.early_sends;
                    let contributed_early = step.take_early_contributions(sends);
                    for s in sends.drain(..) {
                        let bytes = Buffers::payload(&state.input, &state.output, s.bytes)?;
                        early.push((s.to, s.lane, bytes));
                    }
                    // Verbatim output bytes land where they belong, unless
                    // the output is a device buffer's mirror (copied back as
                    // a whole once every step is done).
                    let host_output = state.staging_out.is_empty();
                    let expects = &mut self.lists.expects;
                    step.expects(expects);
                    receives.extend(expects.drain(..).map(|e| {
                        let in_place = e
                            .into_output
                            .filter(|_| host_output)
                            .and_then(|at| state.output.slice(at, e.len));
                        let buf = in_place
                            .map_or_else(|| RecvBuf::Heap(pool::take(e.len)), RecvBuf::Output);
                        (e.from, e.lane, buf)
                    }));
                    let mut events = self.lists.events.take();
                    events.push(Event::Start);
                    (Exec::Cpu(Some(step)), events, contributed_early)
                }
                Pending::Gpu(seg) => {
                    let device = self
                        .device
                        .as_ref()
                        .expect("GPU steps need the group's device");
                    let expects = &mut self.lists.gpu_expects;
                    expects.clear();
                    let mut step = GpuStep::renew(
                        self.lists.gpu_steps.pop(),
                        seg.spec,
                        self.params.rank,
                        seg.elem,
                        seg.input,
                        seg.output,
                        device.slots(),
                        expects,
                    )?;
                    step.start(device.queue())?;
                    receives.extend(expects.drain(..).map(|e| (e.from, e.lane, e.buf)));
                    (Exec::Gpu(step), Vec::new(), false)
                }
            };
            let outstanding = receives.len();
            let mut left = [0; 2];
            for (_, lane, _) in &receives {
                left[*lane as usize] += 1;
            }
            let now = Instant::now();
            let times = StepTimes {
                called: self.ops.get(&op).map_or(now, |o| o.started),
                admitted: now,
                left,
                arrived: left.map(|l| (l == 0).then_some(now)),
                reduced: None,
            };
            for (from, lane, buf) in receives.drain(..) {
                self.peer(from)?.rx[lane as usize]
                    .queue
                    .push_back((seq, buf));
            }
            self.lists.receives = receives;
            self.active.push_back(Active {
                seq,
                op,
                exec,
                events,
                in_place: self.lists.in_place.take(),
                outstanding,
                started: false,
                contributed_early,
                contrib_queue: self.lists.queued.take(),
                result_queue: self.lists.queued.take(),
                times,
            });
            let idx = self.active.len() - 1;
            for (to, lane, bytes) in early.drain(..) {
                self.queue_send(idx, to, lane, bytes);
            }
            self.lists.early = early;
            self.dispatch(idx)?;
        }
        Ok(())
    }

    /// Whether call `op`'s device inputs have reached their mirrors.
    fn staged_in(&mut self, op: u64) -> NetResult<bool> {
        let state = self.ops.get_mut(&op).expect("op of a waiting step");
        while let Some(f) = state.staging_in.last() {
            if !f.is_complete()? {
                return Ok(false);
            }
            state.staging_in.pop();
        }
        Ok(true)
    }

    /// Hands the host step at `idx` to a worker if it has events and is
    /// not already on one; first accounts the messages that arrived in
    /// place, which needs no worker.
    fn dispatch(&mut self, idx: usize) -> NetResult<()> {
        let rank = self.params.rank;
        let a = &mut self.active[idx];
        let Exec::Cpu(slot) = &mut a.exec else {
            return Ok(());
        };
        let Some(step) = slot.as_mut() else {
            return Ok(());
        };
        if a.started {
            for (from, lane, len) in a.in_place.drain(..) {
                step.in_place(from, lane, len)
                    .map_err(|e| collnet_error(rank, e))?;
                self.activity.phases.in_place += 1;
            }
        }
        if a.events.is_empty() {
            return Ok(());
        }
        let op = self.ops.get(&a.op).expect("op of an active step");
        let job = Job {
            seq: a.seq,
            submitted: Instant::now(),
            rank: self.params.rank,
            step: slot.take().expect("checked"),
            events: std::mem::replace(&mut a.events, self.lists.events.take()),
            input: op.input.clone(),
            output: op.output.clone(),
            sends: self.lists.sends.take(),
            effects: self.lists.effects.pop().unwrap_or_default(),
        };
        let light = match (job.step.exact_bytes(), self.inline_step_bytes) {
            (Some(bytes), Some(most)) => bytes <= most,
            _ => false,
        };

        if light {
            self.workers.run_here(job);
        } else {
            self.workers.submit(job);
        }
        Ok(())
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        let front = self.active.front()?.seq;
        seq.checked_sub(front)
            .map(|i| i as usize)
            .filter(|&i| i < self.active.len())
    }

    /// Posts queued receives and hands completed ones to their steps.
    fn receive(&mut self) -> NetResult<()> {
        let rank = self.params.rank;
        for j in 0..self.params.n {
            if j == rank {
                continue;
            }
            for lane in Lane::ALL {
                loop {
                    let link = &mut self.peer(j)?.rx[lane as usize];
                    if let Some((seq, buf)) = link.queue.pop_front() {
                        match link.link.post(buf, tag_of(seq))? {
                            Ok(()) => {
                                link.inflight.push_back((seq, Instant::now()));
                                continue;
                            }
                            Err(buf) => link.queue.push_front((seq, buf)),
                        }
                    }
                    let Some(buf) = link.link.poll_received()? else {
                        break;
                    };
                    let (seq, posted) = link.inflight.pop_front().expect("a posted receive");
                    let r = &mut self.activity.phases.receives[lane as usize];
                    *r = (r.0 + posted.elapsed(), r.1 + 1);
                    self.deliver(seq, j, lane, buf)?;
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, seq: u64, from: usize, lane: Lane, buf: RecvBuf) -> NetResult<()> {
        let idx = self.index_of(seq).ok_or_else(|| {
            NetError::peer(
                format_args!("collnet member {from}"),
                PeerFailure::Protocol(format!("message for step {seq}, which is not in flight")),
            )
        })?;
        let a = &mut self.active[idx];
        a.outstanding = a.outstanding.saturating_sub(1);
        let left = &mut a.times.left[lane as usize];
        *left = left.saturating_sub(1);
        if *left == 0 {
            a.times.arrived[lane as usize] = Some(Instant::now());
        }
        match &mut a.exec {
            Exec::Cpu(_) => {
                match buf {
                    RecvBuf::Output(raw) => a.in_place.push((from, lane, raw.len())),
                    buf => {
                        let bytes = buf
                            .into_heap()
                            .expect("host steps receive into heap or output buffers");
                        a.events.push(Event::Message { from, lane, bytes });
                    }
                }
                self.dispatch(idx)?;
            }
            Exec::Gpu(step) => {
                let device = self
                    .device
                    .as_ref()
                    .expect("GPU steps need the group's device");
                step.on_message(device.queue(), from, lane, buf)?;
            }
        }
        Ok(())
    }

    /// Queues a step's message for its lane; counted against its call.
    fn queue_send(&mut self, idx: usize, to: usize, lane: Lane, bytes: Payload) {
        let a = &mut self.active[idx];
        let op = self.ops.get_mut(&a.op).expect("op of an active step");
        op.wire += bytes.len() as u64;
        op.sends_left += 1;
        if lane == Lane::Result && a.times.reduced.is_none() {
            a.times.reduced = Some(Instant::now());
        }
        let q = Queued { to, lane, bytes };
        match lane {
            Lane::Contrib => a.contrib_queue.push(q),
            Lane::Result => a.result_queue.push(q),
        }
    }

    /// Takes finished jobs back: their steps return to the window and
    /// their messages wait for their lane's turn.
    fn collect(&mut self) -> NetResult<()> {
        while let Some(Done {
            seq,
            queued,
            ran,
            step,
            sends,
            events,
            effects,
        }) = self.workers.poll()
        {
            self.lists.events.give(events);
            if self.lists.effects.len() < 2 * WINDOW {
                self.lists.effects.push(effects);
            }
            let p = &mut self.activity.phases;
            p.jobs += 1;
            p.job_queued += queued;
            for (sum, (took, n)) in p.events.iter_mut().zip(ran) {
                *sum = (sum.0 + took, sum.1 + u64::from(n));
            }
            let idx = self
                .index_of(seq)
                .expect("a step on a worker stays in the window");
            let mut sends = sends?;
            let a = &mut self.active[idx];
            a.exec = Exec::Cpu(step);
            // Every job of a step begins with its start, if not yet run.
            a.started = true;
            for s in sends.drain(..) {
                self.queue_send(idx, s.to, s.lane, s.bytes);
            }
            self.lists.sends.give(sends);
            self.dispatch(idx)?;
        }
        Ok(())
    }

    /// Collects the messages of GPU steps whose kernels have completed.
    fn poll_gpu(&mut self) -> NetResult<()> {
        let mut sends = std::mem::take(&mut self.lists.gpu_sends);
        for idx in 0..self.active.len() {
            let Exec::Gpu(step) = &mut self.active[idx].exec else {
                continue;
            };
            step.poll(&mut sends)?;
            let started = step.started();
            self.active[idx].started = started;
            for s in sends.drain(..) {
                self.queue_send(idx, s.to, s.lane, s.bytes);
            }
        }
        self.lists.gpu_sends = sends;
        Ok(())
    }

    /// Each lane carries its messages in step order (receivers post in that
    /// order): a step's messages wait until every earlier step has produced
    /// all of its own on that lane. Steps run on workers and GPU streams in
    /// parallel, so they finish out of order.
    fn release(&mut self) {
        let mut pending = std::mem::take(&mut self.lists.released);
        for a in &mut self.active {
            let (op, tag) = (a.op, tag_of(a.seq));
            pending.extend(a.contrib_queue.drain(..).map(|s| (s, op, tag)));
            if !(a.started || a.contributed_early) {
                break;
            }
        }
        for a in &mut self.active {
            let (op, tag) = (a.op, tag_of(a.seq));
            pending.extend(a.result_queue.drain(..).map(|s| (s, op, tag)));
            if !a.result_lane_closed() {
                break;
            }
        }
        for (s, op, tag) in pending.drain(..) {
            if let Some(Some(p)) = self.peers.get_mut(s.to) {
                p.tx[s.lane as usize].queue.push_back(Outgoing {
                    op,
                    bytes: s.bytes,
                    tag,
                    queued: Instant::now(),
                });
            }
        }
        self.lists.released = pending;
    }

    /// Drops finished steps from the front of the window.
    fn retire(&mut self) {
        while let Some(a) = self.active.front() {
            let finished = a.outstanding == 0
                && a.events.is_empty()
                && a.in_place.is_empty()
                && a.contrib_queue.is_empty()
                && a.result_queue.is_empty()
                && a.is_done();
            if !finished {
                break;
            }
            let a = self.active.pop_front().expect("front");
            self.activity.phases.retire(&a.times);
            match a.exec {
                Exec::Cpu(Some(step)) => {
                    if let Some(e) = step.sampled_error() {
                        metrics::collnet().fp8_error_sample(e);
                    }
                    let spare = &mut self.lists.steps[step.kind() as usize];
                    if spare.len() < WINDOW {
                        spare.push(step);
                    }
                }
                Exec::Gpu(step) if self.lists.gpu_steps.len() < WINDOW => {
                    self.lists.gpu_steps.push(step);
                }
                Exec::Cpu(None) | Exec::Gpu(_) => {}
            }
            if let Some(op) = self.ops.get_mut(&a.op) {
                op.steps_left -= 1;
            }
            self.lists.events.give(a.events);
            self.lists.in_place.give(a.in_place);
            self.lists.queued.give(a.contrib_queue);
            self.lists.queued.give(a.result_queue);
        }
    }

    fn pump_sends(&mut self) -> NetResult<()> {
        for p in self.peers.iter_mut().flatten() {
            for (lane, link) in p.tx.iter_mut().enumerate() {
                while let Some(m) = link.queue.pop_front() {
                    match link.link.send(m.bytes, m.tag)? {
                        Ok(()) => link.inflight.push_back((m.op, m.queued)),
                        Err(bytes) => {
                            link.queue.push_front(Outgoing { bytes, ..m });
                            break;
                        }
                    }
                }
                while let Some(bytes) = link.link.poll_sent()? {
                    let (op, queued) = link.inflight.pop_front().expect("a queued send");
                    let sent = &mut self.activity.phases.sends[lane];
                    *sent = (sent.0 + queued.elapsed(), sent.1 + 1);
                    if let Some(state) = self.ops.get_mut(&op) {
                        state.sends_left -= 1;
                    }
                    if let Payload::Heap(bytes) = bytes {
                        pool::give_shared(bytes);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether the kernels run `path` for `op` in a group of `n`: every
/// compressed format (E4M3, E5M2, INT8: `choose_path` compresses only
/// sums), and exact sums, for as many members as the fold takes (larger
/// groups are staged).
fn has_gpu_kernels(path: Path, op: RedOp, n: usize) -> bool {
    n <= crate::gpu::MAX_MEMBERS
        && match path {
            Path::Compressed(_) => true,
            Path::Exact => op == RedOp::Sum,
        }
}

/// The kernels' element type for an allreduce of `dtype` and `op` that
/// the group runs on `path` with `n` members, if kernels run it (on device
/// buffers; anything else is staged).
fn kernel_elem(dtype: DataType, op: RedOp, path: Path, n: usize) -> Option<Elem> {
    gpu_elem(dtype).filter(|_| has_gpu_kernels(path, op, n))
}

/// The kernels' element type for `dtype`, if they take it.
fn gpu_elem(dtype: DataType) -> Option<Elem> {
    match dtype {
        DataType::F32 => Some(Elem::F32),
        DataType::F16 => Some(Elem::F16),
        DataType::Bf16 => Some(Elem::Bf16),
        _ => None,
    }
}

/// The transport settings of a member's links ([`HOST_PATH_MIN_CHUNK`]);
/// their messages use every stream (`narrow_bytes` 0): on the H200 host the
/// exact host path ran no faster with its 256 KiB shards on two streams.
fn link_settings(settings: &TcpSettings, host_only: bool) -> TcpSettings {
    let mut s = settings.clone();
    s.narrow_bytes = 0;
    if host_only {
        s.min_chunk_bytes = s.min_chunk_bytes.max(HOST_PATH_MIN_CHUNK);
    }
    s
}

/// Pinned staging for GPU steps: slots as large as the largest shard of a
/// segment on the wire, and enough for a full window of steps, each taking
/// at most `3n - 1`. A group that compresses runs every float sum
/// compressed, so its kernels only ever stage wire bytes; one that does not
/// stages raw elements (its exact float sums). A shard is whole blocks.
fn gpu_staging_layout(n: usize, compresses: bool) -> (usize, usize) {
    let shard_elems = |size: usize| {
        crate::codec::num_blocks(SEGMENT_BYTES / size).div_ceil(n.max(1)) * crate::codec::BLOCK
    };
    let payload = if compresses {
        crate::codec::WireFormat::ALL
            .into_iter()
            .map(|f| crate::codec::encoded_len(f, shard_elems(2)))
            .max()
            .unwrap_or(0)
    } else {
        [2, 4]
            .map(|size| shard_elems(size) * size)
            .into_iter()
            .max()
            .unwrap_or(0)
    };
    let slot_bytes = payload.max(n * 8).next_multiple_of(4096);
    (slot_bytes, WINDOW * (3 * n.max(1) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host-only members send host-path shards whole; members that offer
    /// GPU buffers keep the configured floor, and a larger configured floor
    /// is kept either way.
    #[test]
    fn host_only_links_send_shards_whole() {
        let configured = TcpSettings::default();
        assert!(configured.min_chunk_bytes < HOST_PATH_MIN_CHUNK);
        assert_eq!(
            link_settings(&configured, true).min_chunk_bytes,
            HOST_PATH_MIN_CHUNK
        );
        assert_eq!(
            link_settings(&configured, false).min_chunk_bytes,
            configured.min_chunk_bytes
        );
        let large = TcpSettings {
            min_chunk_bytes: 1 << 20,
            ..configured
        };
        assert_eq!(link_settings(&large, true).min_chunk_bytes, 1 << 20);
    }

    /// The group's messages use every stream of a link, whatever
    /// `transport.narrow_bytes` says (measured no faster on two).
    #[test]
    fn links_spread_every_message_over_every_stream() {
        let configured = TcpSettings {
            narrow_bytes: 1 << 20,
            ..TcpSettings::default()
        };
        for host_only in [true, false] {
            assert_eq!(link_settings(&configured, host_only).narrow_bytes, 0);
        }
    }

    /// Two calls in flight for the first half of the time, one for the
    /// rest: 1.5 on average.
    #[test]
    fn depth_averages_calls_in_flight_over_time() {
        let mut d = Depth::default();
        assert_eq!(d.mean(), 0.0);
        let t0 = Instant::now();
        d.first = Some(t0);
        d.last = Some(t0);
        d.area = 2.0 * 0.5 + 1.0 * 0.5;
        d.last = Some(t0 + Duration::from_secs(1));
        assert!((d.mean() - 1.5).abs() < 1e-9, "{}", d.mean());
        // A change adds the count before it over the time since the last.
        let mut d = Depth::default();
        d.change(0);
        std::thread::sleep(Duration::from_millis(20));
        d.change(2);
        assert!((d.mean() - 2.0).abs() < 1e-6, "{}", d.mean());
    }

    /// The closing line's means: each point of a step is timed from its
    /// admission, a lane with nothing to receive counts as in at once, and
    /// messages and jobs average over their own counts.
    #[test]
    fn phases_average_each_point_from_admission() {
        let us = Duration::from_micros;
        let admitted = Instant::now() - us(1000);
        let mut p = Phases::default();
        for (contrib, reduced, results) in [(100, Some(300), 500), (300, Some(500), 700)] {
            p.retire(&StepTimes {
                called: admitted - us(20),
                admitted,
                left: [0, 0],
                arrived: [Some(admitted + us(contrib)), Some(admitted + us(results))],
                reduced: reduced.map(|r| admitted + us(r)),
            });
        }
        // A step that never sends on the result lane leaves that mean alone.
        p.retire(&StepTimes {
            called: admitted - us(20),
            admitted,
            left: [0, 0],
            arrived: [Some(admitted + us(200)), Some(admitted + us(600))],
            reduced: None,
        });
        p.sends[Lane::Result as usize] = (us(90), 3);
        p.jobs = 2;
        p.job_queued = us(50);
        p.events[1] = (us(80), 4);
        let line = p.describe();
        for part in [
            "contributions in 200,",
            "ready 400,",
            "results in 600,",
            "(waited 20 for the window)",
            "contributions 0, results 30;",
            "per worker job (2): 25 waiting",
            "contribution 20,",
        ] {
            assert!(line.contains(part), "{part:?} in {line}");
        }
        let retired: f64 = line
            .split("retired ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("a retired figure");
        assert!(retired >= 1000.0, "retired is timed to now: {line}");
    }

    #[test]
    fn kernels_take_compressed_and_exact_sums_of_at_most_256_members() {
        for fmt in WireFormat::ALL {
            let path = Path::Compressed(fmt);
            assert!(has_gpu_kernels(path, RedOp::Sum, 2), "{fmt}");
            assert!(has_gpu_kernels(path, RedOp::Sum, 256), "{fmt}");
            assert!(!has_gpu_kernels(path, RedOp::Sum, 257), "{fmt}");
        }
        assert!(has_gpu_kernels(Path::Exact, RedOp::Sum, 2));
        assert!(!has_gpu_kernels(Path::Exact, RedOp::Max, 2));
        assert!(!has_gpu_kernels(Path::Exact, RedOp::Sum, 257));
    }

    /// What an allreduce on device buffers runs as, from what the group
    /// chose for the call: INT8 sums go to the kernels like FP8 (not the
    /// staged host path), other ops and dtypes are staged.
    #[test]
    fn int8_sums_on_device_buffers_run_on_the_kernels() {
        let on_kernels =
            |dtype, op, fp8| kernel_elem(dtype, op, choose_path(dtype, op, fp8), 4).is_some();
        let int8 = Some(WireFormat::Int8);
        for dtype in [DataType::F32, DataType::F16, DataType::Bf16] {
            assert_eq!(
                choose_path(dtype, RedOp::Sum, int8),
                Path::Compressed(WireFormat::Int8)
            );
            assert!(on_kernels(dtype, RedOp::Sum, int8), "{dtype:?}");
            assert!(!on_kernels(dtype, RedOp::Max, int8), "{dtype:?} max");
        }
        assert!(!on_kernels(DataType::I32, RedOp::Sum, int8));
        assert!(!on_kernels(DataType::F64, RedOp::Sum, int8));
    }

    /// Every payload a GPU step stages fits its slot: every shard of every
    /// segment size a plan can cut (whole segments and tails), for the
    /// element types the kernels take, 1 to 256 members, on the path the
    /// group runs float sums on.
    #[test]
    fn gpu_staging_slots_hold_every_shard() {
        for n in (1..=9).chain([16, 64, 255, 256]) {
            for fp8 in [
                None,
                Some(WireFormat::E4M3),
                Some(WireFormat::E5M2),
                Some(WireFormat::Int8),
            ] {
                let (slot_bytes, slots) = gpu_staging_layout(n, fp8.is_some());
                assert_eq!(slots, WINDOW * (3 * n - 1));
                assert!(slot_bytes >= n * 8, "the fold's pointer table fits");
                for dtype in [DataType::F32, DataType::F16, DataType::Bf16] {
                    let path = choose_path(dtype, RedOp::Sum, fp8);
                    let plan =
                        Plan::with_segment_bytes(usize::MAX / 64, n, dtype.size(), SEGMENT_BYTES);
                    for count in [plan.segment_elems(), plan.segment_elems() - 1, 33, 1] {
                        let spec = Spec {
                            n,
                            dtype,
                            op: RedOp::Sum,
                            path,
                            count,
                        };
                        for s in 0..n {
                            assert!(
                                spec.payload_len(s) <= slot_bytes,
                                "n={n} {dtype:?} {path:?} count={count} shard {s}: {} > {slot_bytes}",
                                spec.payload_len(s)
                            );
                        }
                    }
                }
            }
        }
    }
}
