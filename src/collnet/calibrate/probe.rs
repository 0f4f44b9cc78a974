//! The calibration rounds, run by every member of a group inside the join,
//! over the group's own links (the real streams, stream threads doing the
//! I/O):
//!
//! 1. latency ([`measure_links`], right after READY): lockstep rounds of
//!    one 8-byte message to every other member;
//! 2. bandwidth (same): a burst of [`BURST_BYTES`] from every member,
//!    spread over every peer on one connection each way, all members at
//!    once (both directions of every link busy, as in an allreduce);
//! 3. the compressed path ([`finish`], on the started group): FP8
//!    allreduces of [`PROBE_VALUES`] bf16 values through the group itself.
//!    The executor's codec rates are slowed (never sped up) until the
//!    tuner's model predicts the time measured, so the model accounts for
//!    everything the path costs on this host (cores shared with the stream
//!    threads, copies, scheduling), not only the codec kernels;
//! 4. reports: an allgather of every member's figures (or "failed"); each
//!    member computes [`agree`] over the same reports in member order;
//! 5. commit: each member files the agreed record for its node, then an
//!    allgather says so. A member that cannot file it fails its join and
//!    closes its links, so every member's join fails: a group either has
//!    its record on every node or does not exist (NCCL then runs without
//!    CollNet).
//!
//! Every member makes the same calls in the same order, whatever its own
//! measurement gave; every wait is bounded by the join's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{self, RecordFile};
use super::{
    agree, latency_us, rate_gbps, Agreed, ExecutorRates, Fallback, Figures, MemberReport, Record,
};
use crate::codec::WireFormat as ModelFormat;
use crate::collnet::device::Place;
use crate::collnet::group::Group;
use crate::collnet::lend::{Payload, RecvBuf};
use crate::collnet::link::PeerLinks;
use crate::collnet::pool::Shared;
use crate::collnet::steps::{Lane, Window};
use crate::collnet::{DataType, RedOp};
use crate::error::{NetError, NetResult, PeerFailure};
use crate::sys::RawBuf;
use crate::tuner::{collnet_allreduce_us, LinkProfile};

/// Tags of calibration messages: above any step tag a group reaches during
/// calibration (steps count from 0 and start only afterwards).
const TAG_PING: i32 = 0x7fff_ff01;
const TAG_BURST: i32 = 0x7fff_ff02;

const WARMUP_ROUNDS: u32 = 4;
const ROUNDS: u32 = 24;
/// Bytes every member sends in the bandwidth burst (and receives): enough
/// to pass a 4 MB token-bucket burst and reach the steady rate, short
/// enough for ~30 ms at 5 Gbit/s.
pub const BURST_BYTES: usize = 16 << 20;
/// Burst messages a member sends to a peer ahead of those it has
/// received from that peer.
const WINDOW: usize = 4;
const COMMIT: &[u8; 8] = b"AIRCALOK";
/// bf16 values of the one-call probe: 1 MiB, one segment, where the
/// model adds codec and wire time (no overlap). The streamed probe's calls
/// are half that: 512 KiB, the most NCCL's CollNet Chain hands the
/// collective network per call when it uses its own buffers (measured
/// under NCCL 2.28.9: 32-512 KiB).
pub const PROBE_VALUES: usize = 512 << 10;
/// One-call probes: the first warms the path up, the best of the rest
/// counts (noise only ever adds time; on a busy host a burst of load can
/// cover several calls in a row).
const PROBE_CALLS: usize = 9;
/// Most calls in a streamed round, at most [`PROBE_IN_FLIGHT`] at a time:
/// 32 MiB streamed the way CollNet Chain streams a large allreduce, so the
/// round runs at the path's sustained rate (workers busy on several calls,
/// codec overlapping the wire), which decides large messages. Under NCCL
/// on the H200 host at 25 Gbit/s, FP8 CollNet moved 1.6-1.8 GB/s at 4 MiB
/// and 2.2-2.7 GB/s from 64 MiB; in-process 8 MiB rounds took 4.6 to
/// 9.7 ms from one communicator to the next, too short to be the
/// sustained rate.
pub const PROBE_CALLS_PER_ROUND: usize = 64;
/// Fewest calls a streamed round is worth: below this the group skips it
/// and fits the codec to the lone call alone.
const PROBE_MIN_CALLS: usize = 8;
/// What a streamed round may take, as each member predicts it from its
/// lone call (a streamed half-size call costing a quarter of a lone one:
/// 64 calls on the H200 host, where the lone call took 1.7-3.6 ms and a
/// round 15-55 ms). A host where a call is slow (a debug build, eight
/// members on two cores) gets shorter rounds, or none, so calibration
/// stays well inside the connect deadline.
const PROBE_ROUND_BUDGET: Duration = Duration::from_millis(60);
/// Calls in flight at once, as CollNet Chain keeps up to 8.
const PROBE_IN_FLIGHT: usize = 8;
/// Streamed rounds: the first warms up, the best of the rest counts.
const PROBE_ROUNDS: usize = 3;
/// What a timed streamed round may take, as the members predict it from
/// the warm-up round (run at half the agreed calls). On a fast link the
/// agreed calls fit and the timed rounds keep them (32 MiB at 25 Gbit/s on
/// the H200 host: 23 ms); on a slow one they shrink: at 5 Gbit/s a 32 MiB
/// round took 53-90 ms, and three of them were most of a 330-550 ms
/// calibration.
const TIMED_ROUND_BUDGET: Duration = Duration::from_millis(40);

/// The best times of the two probes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeTimes {
    /// One FP8 allreduce of `probe_values` values, alone.
    pub one_call: Duration,
    /// A streamed round, if the group ran one: its calls (of half as many
    /// values each) and its time.
    pub streamed: Option<(usize, Duration)>,
}

/// How many calls this member proposes for a streamed round, from its
/// lone call's time: [`PROBE_ROUND_BUDGET`] over a quarter of a lone call,
/// at most [`PROBE_CALLS_PER_ROUND`]; 0 (no round) below
/// [`PROBE_MIN_CALLS`]. The group runs the smallest proposal.
pub fn streamed_calls_for(one_call: Duration) -> usize {
    let per_call = one_call.as_secs_f64() / 4.0;
    let fit = if per_call > 0.0 {
        (PROBE_ROUND_BUDGET.as_secs_f64() / per_call).floor()
    } else {
        f64::INFINITY
    };
    let calls = fit.min(PROBE_CALLS_PER_ROUND as f64) as usize;
    if calls < PROBE_MIN_CALLS {
        0
    } else {
        calls
    }
}

/// Calls this member proposes for the timed streamed rounds: the agreed
/// `calls`, fewer if the warm-up round of `warm_calls` calls, which took
/// `warm`, says they would outlast [`TIMED_ROUND_BUDGET`]; never fewer than
/// [`PROBE_MIN_CALLS`]. The group runs the smallest proposal.
pub fn timed_calls_for(calls: usize, warm_calls: usize, warm: Duration) -> usize {
    let per_call = warm.as_secs_f64() / warm_calls.max(1) as f64;
    let fit = if per_call > 0.0 {
        (TIMED_ROUND_BUDGET.as_secs_f64() / per_call).floor()
    } else {
        f64::INFINITY
    };
    (fit.min(calls as f64) as usize).max(PROBE_MIN_CALLS.min(calls))
}

/// Where a group's agreed record is filed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordKey {
    /// NCCL's communicator id (`commHash`), from the collective network's
    /// per-communicator context.
    pub comm_id: u64,
    /// [`super::group_key`] of the group's listen handles.
    pub group_key: u64,
}

/// What this member brings to the calibration.
#[derive(Clone, Debug)]
pub struct Setup {
    /// This member asks for the rounds (said in its hello; they run only
    /// if every member asks).
    pub ask: bool,
    /// Codec speed of the executor the group will use, or why it is
    /// unknown (then this member reports a failed measurement).
    pub rates: Result<ExecutorRates, String>,
    /// Where to file the agreed record, when NCCL named the communicator.
    pub record: Option<RecordKey>,
    /// The tuner model's fixed cost per call (`tuner.call_overhead_us`),
    /// for fitting the codec rates to the probing allreduces.
    pub call_overhead_us: f64,
    /// bf16 values of each probing allreduce ([`PROBE_VALUES`]; the same
    /// on every member).
    pub probe_values: usize,
}

/// The outcome of [`finish`] on one member.
pub struct Calibrated {
    /// Identical on every member of the group.
    pub agreed: Agreed,
    /// This member's own figures (`None`: not run, or its measurement failed).
    pub local: Option<Figures>,
    /// Time the rounds took on this member.
    pub took: Duration,
    /// This member's probe times, if they ran.
    pub probe: Option<ProbeTimes>,
    /// Where [`Calibrated::took`] went, on this member.
    pub phases: Phases,
    /// The filed record; dropping it removes the file (when the group closes).
    pub record: Option<RecordFile>,
}

/// The calibration's time by phase, for the log: what to shorten when
/// `connect` takes too long.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Phases {
    /// Latency rounds and the bandwidth burst ([`measure_links`]), and
    /// starting the group (its worker threads) before the probes.
    pub links: Duration,
    /// The lone FP8 calls and the agreement on the streamed round's size.
    pub lone: Duration,
    /// The streamed rounds.
    pub streamed: Duration,
    /// Reports, agreement, the record and the commit.
    pub agree: Duration,
}

struct Ctx<'a> {
    links: &'a mut [Option<PeerLinks>],
    rank: usize,
    deadline: Instant,
}

impl Ctx<'_> {
    fn peers(&self) -> Vec<usize> {
        (0..self.links.len())
            .filter(|&j| self.links[j].is_some())
            .collect()
    }

    fn link(&mut self, j: usize) -> &mut PeerLinks {
        self.links[j].as_mut().expect("a peer with links")
    }

    fn check_deadline(&self, what: &str) -> NetResult<()> {
        if Instant::now() > self.deadline {
            return Err(deadline_error(self.rank, self.links.len(), what));
        }
        Ok(())
    }

    /// Sends `msg` to every other member on the contribution lane and
    /// receives one message of `len` bytes from each; member order.
    fn all_to_all(
        &mut self,
        msg: &[u8],
        len: usize,
        tag: i32,
        what: &str,
    ) -> NetResult<Vec<Vec<u8>>> {
        let peers = self.peers();
        let lane = Lane::Contrib as usize;
        let shared: Shared = Arc::new(msg.to_vec());
        let mut sent = vec![false; self.links.len()];
        let mut drained = vec![false; self.links.len()];
        let mut posted: Vec<Option<Vec<u8>>> = (0..self.links.len())
            .map(|_| Some(vec![0u8; len]))
            .collect();
        let mut got: Vec<Option<Vec<u8>>> = vec![None; self.links.len()];
        loop {
            let mut done = true;
            for &j in &peers {
                let l = self.link(j);
                if let Some(buf) = posted[j].take() {
                    if let Err(buf) = l.rx[lane].post(RecvBuf::Heap(buf), tag)? {
                        posted[j] = buf.into_heap();
                    }
                }
                if !sent[j] {
                    sent[j] = l.tx[lane]
                        .send(Payload::Heap(Arc::clone(&shared)), tag)?
                        .is_ok();
                }
                if sent[j] && !drained[j] {
                    drained[j] = l.tx[lane].poll_sent()?.is_some();
                }
                if posted[j].is_none() && got[j].is_none() {
                    got[j] = l.rx[lane].poll_received()?.and_then(RecvBuf::into_heap);
                }
                done &= drained[j] && got[j].is_some();
            }
            if done {
                break;
            }
            self.check_deadline(what)?;
            std::thread::yield_now();
        }
        let mut out = Vec::with_capacity(peers.len());
        for &j in &peers {
            let b = got[j].take().expect("received");
            if b.len() != len {
                return Err(protocol(
                    j,
                    format!("{what}: {}-byte message, expected {len}", b.len()),
                ));
            }
            out.push(b);
        }
        Ok(out)
    }

    /// Lockstep rounds; returns the measured rounds' durations (ns).
    fn latency_rounds(&mut self) -> NetResult<Vec<u64>> {
        let peers = self.peers();
        let mut rounds = Vec::with_capacity(ROUNDS as usize);
        for round in 0..WARMUP_ROUNDS + ROUNDS {
            let mut msg = *b"PING\0\0\0\0";
            msg[4..].copy_from_slice(&round.to_le_bytes());
            let start = Instant::now();
            let got = self.all_to_all(&msg, msg.len(), TAG_PING, "latency rounds")?;
            let ns = start.elapsed().as_nanos() as u64;
            for (b, &j) in got.iter().zip(&peers) {
                if b[..] != msg[..] {
                    return Err(protocol(
                        j,
                        format!("latency round {round}: unexpected message"),
                    ));
                }
            }
            if round >= WARMUP_ROUNDS {
                rounds.push(ns);
            }
        }
        Ok(rounds)
    }

    /// The burst; returns this member's receive completions (ns, bytes).
    /// To each peer it sends at most [`WINDOW`] messages ahead of what it
    /// has received from that peer, so both directions of every link stay
    /// busy together, as an allreduce's steps keep them (a shaper with one
    /// deep queue for both directions would otherwise drain one whole
    /// direction first).
    fn burst(&mut self) -> NetResult<Vec<(u64, usize)>> {
        let peers = self.peers();
        let per_peer = BURST_BYTES / peers.len().max(1);
        let msg = ((per_peer / 4).clamp(64 << 10, 1 << 20) >> 12) << 12;
        let count = per_peer.div_ceil(msg).max(4);
        let payload: Shared = Arc::new(vec![0x5a; msg]);
        // One connection per peer and direction, as NCCL's ring uses (and
        // the collective network's reduce-scatter phase).
        let lane = Lane::Contrib as usize;
        #[derive(Clone, Default)]
        struct Peer {
            sent: usize,
            sending: usize,
            posted: usize,
            received: usize,
            spare: Vec<Vec<u8>>,
        }
        let mut state = vec![Peer::default(); self.links.len()];
        let mut completions = Vec::with_capacity(count * peers.len());
        let start = Instant::now();
        loop {
            let mut done = true;
            for &j in &peers {
                let p = &mut state[j];
                let l = self.links[j].as_mut().expect("a peer with links");
                while p.posted < count && p.posted - p.received < WINDOW {
                    let mut buf = p.spare.pop().unwrap_or_default();
                    buf.resize(msg, 0);
                    if let Err(buf) = l.rx[lane].post(RecvBuf::Heap(buf), TAG_BURST)? {
                        p.spare.extend(buf.into_heap());
                        break;
                    }
                    p.posted += 1;
                }
                while p.received < p.posted {
                    let Some(buf) = l.rx[lane].poll_received()?.and_then(RecvBuf::into_heap) else {
                        break;
                    };
                    if buf.len() != msg {
                        return Err(protocol(
                            j,
                            format!("burst message of {} bytes, expected {msg}", buf.len()),
                        ));
                    }
                    completions.push((start.elapsed().as_nanos() as u64, buf.len()));
                    p.received += 1;
                    p.spare.push(buf);
                }
                while p.sent < count && p.sent < p.received + WINDOW {
                    if l.tx[lane]
                        .send(Payload::Heap(Arc::clone(&payload)), TAG_BURST)?
                        .is_err()
                    {
                        break;
                    }
                    p.sent += 1;
                    p.sending += 1;
                }
                while p.sending > 0 && l.tx[lane].poll_sent()?.is_some() {
                    p.sending -= 1;
                }
                done &= p.sent == count && p.sending == 0 && p.received == count;
            }
            if done {
                break;
            }
            self.check_deadline("bandwidth burst")?;
            // As NCCL's proxy thread does: poll without pause (yielding to
            // the stream threads), so the next message goes out as soon as
            // the window allows.
            std::thread::yield_now();
        }
        Ok(completions)
    }
}

fn protocol(from: usize, why: String) -> NetError {
    NetError::peer(
        format_args!("collnet member {from} (calibration)"),
        PeerFailure::Protocol(why),
    )
}

fn deadline_error(rank: usize, n: usize, what: &str) -> NetError {
    NetError::peer(
        format_args!("collnet group of {n} (member {rank})"),
        PeerFailure::ConnectFailed(format!(
            "calibration ({what}) not complete by the connect deadline"
        )),
    )
}

/// What [`measure_links`] found on this member.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkFigures {
    pub gbps: f64,
    pub latency_us: f64,
}

/// Rounds 1 and 2 on member `rank` of the group whose links are `links`
/// (`links[rank]` is `None`), before the group starts: `None` when the
/// timings give no usable figure (the member still took part in every
/// round). Every message is consumed and every send drained before it
/// returns, so the group starts on clean links.
pub fn measure_links(
    links: &mut [Option<PeerLinks>],
    rank: usize,
    deadline: Instant,
) -> NetResult<Option<LinkFigures>> {
    let mut ctx = Ctx {
        links,
        rank,
        deadline,
    };
    let rounds = ctx.latency_rounds()?;
    let completions = ctx.burst()?;
    Ok(match (latency_us(&rounds), rate_gbps(&completions)) {
        (Some(latency_us), Some(gbps)) => Some(LinkFigures { gbps, latency_us }),
        _ => None,
    })
}

/// Host buffers the group works on during calibration.
#[derive(Default)]
struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Buffers {
    fn place(v: &mut [u8]) -> Place {
        // SAFETY: `finish` keeps the vectors alive and untouched until every
        // call on them has completed, or drops the group (joining its
        // workers) before dropping them.
        Place::Host(unsafe { RawBuf::new(v.as_mut_ptr(), v.len()) })
    }
}

/// Runs one call on the group until it completes.
fn complete(group: &mut Group, op: u64, deadline: Instant, what: &str) -> NetResult<()> {
    loop {
        if group.test(op)?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let p = group.params();
            return Err(deadline_error(p.rank, p.n, what));
        }
        // NCCL's proxy thread polls without pause; so does this.
        std::thread::yield_now();
    }
}

/// Allgathers `mine` (the same length on every member): member order.
fn all_gather(
    group: &mut Group,
    bufs: &mut Buffers,
    mine: &[u8],
    deadline: Instant,
    what: &str,
) -> NetResult<Vec<Vec<u8>>> {
    let n = group.params().n;
    bufs.input.clear();
    bufs.input.extend_from_slice(mine);
    bufs.output.clear();
    bufs.output.resize(n * mine.len(), 0);
    let input = Buffers::place(&mut bufs.input);
    let output = Buffers::place(&mut bufs.output);
    let window = Window {
        bytes_per_rank: mine.len(),
        offset: 0,
        bytes: n * mine.len(),
    };
    let op = group.all_gather(input, vec![output], window)?;
    complete(group, op, deadline, what)?;
    Ok(bufs.output.chunks(mine.len()).map(<[u8]>::to_vec).collect())
}

/// The smallest of every member's proposed call count, identical on every
/// member (each must make the same calls).
fn smallest_proposal(
    group: &mut Group,
    bufs: &mut Buffers,
    mine: usize,
    deadline: Instant,
    what: &str,
) -> NetResult<usize> {
    let proposals = all_gather(group, bufs, &(mine as u64).to_le_bytes(), deadline, what)?;
    Ok(proposals
        .iter()
        .map(|b| u64::from_le_bytes(b[..8].try_into().expect("8 bytes each")) as usize)
        .min()
        .expect("a group of two or more"))
}

/// Fills the buffers with `values` bf16 values of probe data (and as much
/// output room).
fn probe_data(bufs: &mut Buffers, values: usize) {
    bufs.input.clear();
    bufs.input.extend((0..values).flat_map(|i| {
        crate::codec::f32_to_bf16(((i * 7919) % 1000) as f32 * 0.013 - 6.5).to_ne_bytes()
    }));
    bufs.output.clear();
    bufs.output.resize(values * 2, 0);
}

/// Best seconds of [`PROBE_CALLS`] lone FP8 allreduces of `values` bf16
/// values through the group.
fn time_one_call(
    group: &mut Group,
    bufs: &mut Buffers,
    values: usize,
    deadline: Instant,
) -> NetResult<f64> {
    probe_data(bufs, values);
    let mut best = f64::INFINITY;
    for call in 0..PROBE_CALLS {
        let start = Instant::now();
        let input = Buffers::place(&mut bufs.input);
        let output = Buffers::place(&mut bufs.output);
        let op = group.all_reduce(input, output, values, DataType::Bf16, RedOp::Sum)?;
        complete(group, op, deadline, "probing allreduce")?;
        if call > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}

/// A warm-up round of half of `calls` FP8 allreduces of `values` bf16
/// values each, then [`PROBE_ROUNDS`] - 1 timed rounds of as many calls as
/// the members agree fit [`TIMED_ROUND_BUDGET`] ([`timed_calls_for`]); at
/// most [`PROBE_IN_FLIGHT`] calls in flight, each on its own slice of the
/// buffers. Returns the timed rounds' calls and their best seconds.
fn time_streamed(
    group: &mut Group,
    bufs: &mut Buffers,
    plan: &mut Buffers,
    values: usize,
    calls: usize,
    deadline: Instant,
) -> NetResult<(usize, f64)> {
    let call_bytes = values * 2;
    probe_data(bufs, values * calls);
    let round = |group: &mut Group, bufs: &mut Buffers, calls: usize| -> NetResult<f64> {
        let start = Instant::now();
        let mut in_flight = std::collections::VecDeque::with_capacity(PROBE_IN_FLIGHT);
        let mut inputs = bufs.input.chunks_exact_mut(call_bytes);
        let mut outputs = bufs.output.chunks_exact_mut(call_bytes);
        for _ in 0..calls {
            if in_flight.len() == PROBE_IN_FLIGHT {
                let oldest = in_flight.pop_front().expect("a call in flight");
                complete(group, oldest, deadline, "probing allreduce")?;
            }
            let input = Buffers::place(inputs.next().expect("one slice per call"));
            let output = Buffers::place(outputs.next().expect("one slice per call"));
            in_flight.push_back(group.all_reduce(
                input,
                output,
                values,
                DataType::Bf16,
                RedOp::Sum,
            )?);
        }
        for op in in_flight {
            complete(group, op, deadline, "probing allreduce")?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let warm_calls = (calls / 2).max(PROBE_MIN_CALLS.min(calls));
    let warm = round(group, bufs, warm_calls)?;
    // `plan`, not `bufs`: the probe data stays in place for the timed
    // rounds.
    let mine = timed_calls_for(calls, warm_calls, Duration::from_secs_f64(warm));
    let timed = smallest_proposal(group, plan, mine, deadline, "timed round plan")?
        .clamp(PROBE_MIN_CALLS.min(calls), calls);
    let mut best = f64::INFINITY;
    for _ in 1..PROBE_ROUNDS {
        best = best.min(round(group, bufs, timed)?);
    }
    Ok((timed, best))
}

/// The codec rates both probes support: each probe fitted to the model,
/// then the faster fit. Each probe can only over-charge the codec. The lone
/// call also pays its hand-offs and wake-ups. On a link slower than the
/// codec, the streamed round shows the codec only in its fill and drain
/// (one segment's codec work), so the link's own noise lands on the codec
/// multiplied by the segment count: on the 2-core build machine at
/// 5 Gbit/s that alone fitted rates 4x apart in two groups. On a fast link
/// the round is the better figure: the lone call's hand-offs (about 1 ms
/// on the H200 host) made the codec look 2.6x slower than CollNet's
/// sustained rate. The tuner's per-call overhead holds the rest.
pub fn fit_probes(
    times: ProbeTimes,
    probe_values: usize,
    n: usize,
    link: LinkFigures,
    rates: ExecutorRates,
    call_overhead_us: f64,
) -> ExecutorRates {
    let fit = |bytes: usize, took: Duration| {
        let us = took.as_secs_f64() * 1e6;
        fit_codec(bytes as u64, n, us, link, rates, call_overhead_us)
    };
    let bytes = probe_values * 2;
    let one = fit(bytes, times.one_call);
    match times.streamed {
        Some((calls, took)) => {
            let streamed = fit(bytes / 2 * calls, took);
            if one.encode_gvps >= streamed.encode_gvps {
                one
            } else {
                streamed
            }
        }
        None => one,
    }
}

/// The executor's rates slowed by the smallest factor (>= 1, found by
/// bisection, deterministic) that makes the model's time of an FP8
/// allreduce of `bytes` over `n` members reach `measured_us`.
pub fn fit_codec(
    bytes: u64,
    n: usize,
    measured_us: f64,
    link: LinkFigures,
    rates: ExecutorRates,
    call_overhead_us: f64,
) -> ExecutorRates {
    let predict = |k: f64| {
        let p = LinkProfile {
            gbps: link.gbps,
            latency_us: link.latency_us,
            encode_gvps: rates.encode_gvps / k,
            decode_gvps: rates.decode_gvps / k,
            call_overhead_us,
        };
        collnet_allreduce_us(bytes, n, 1, &p, Some(ModelFormat::E4M3))
    };
    const MAX_SLOWDOWN: f64 = 1000.0;
    // A NaN measurement counts as fast: the executor's rates stand.
    let k = if measured_us.is_nan() || measured_us <= predict(1.0) {
        1.0
    } else if predict(MAX_SLOWDOWN) < measured_us {
        MAX_SLOWDOWN
    } else {
        let (mut lo, mut hi) = (1.0f64, MAX_SLOWDOWN);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if predict(mid) < measured_us {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    };
    ExecutorRates {
        encode_gvps: rates.encode_gvps / k,
        decode_gvps: rates.decode_gvps / k,
    }
}

/// Rounds 3 to 5 on the started `group`, after [`measure_links`] gave
/// `link` (if `run`: every member asked). Files the agreed record when
/// `setup.record` names the communicator. Identical `agreed` on every
/// member, or an error on every member (a failed link, a peer's protocol
/// error, a record that cannot be filed, or the deadline); on error the
/// group is closed.
pub fn finish(
    group: Group,
    run: bool,
    link: Option<LinkFigures>,
    setup: Setup,
    deadline: Instant,
    started: Instant,
) -> NetResult<(Group, Calibrated)> {
    let mut group = group;
    let mut bufs = Buffers::default();
    // The streamed probe's plan allgather: apart from the probe data.
    let mut plan = Buffers::default();
    let result = finish_on(
        &mut group, &mut bufs, &mut plan, run, link, setup, deadline, started,
    );
    match result {
        Ok(c) => Ok((group, c)),
        Err(e) => {
            // The group (and its workers) go before the buffers they use.
            drop(group);
            drop(bufs);
            drop(plan);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn finish_on(
    group: &mut Group,
    bufs: &mut Buffers,
    plan: &mut Buffers,
    run: bool,
    link: Option<LinkFigures>,
    setup: Setup,
    deadline: Instant,
    started: Instant,
) -> NetResult<Calibrated> {
    let (rank, n) = (group.params().rank, group.params().n);
    let mut phases = Phases {
        links: started.elapsed(),
        ..Phases::default()
    };
    let record_of = |key: RecordKey, agreed| Record {
        comm_id: key.comm_id,
        group_key: key.group_key,
        members: n as u32,
        agreed,
    };
    if !run || n < 2 {
        let agreed = Agreed::Fallback(Fallback::NotRun);
        // Best effort: a missing record and a "not run" one mean the same
        // to the tuner (the configured profile on every rank).
        let record = setup.record.and_then(|key| {
            store::write(&record_of(key, agreed))
                .map_err(|e| crate::warn!("collnet calibration: cannot file the record: {e}"))
                .ok()
        });
        return Ok(Calibrated {
            agreed,
            local: None,
            took: started.elapsed(),
            probe: None,
            phases,
            record,
        });
    }
    // Every member runs the probing calls (the group agreed on FP8 or not
    // identically); only their use depends on this member's figures.
    let fp8 = group.params().fp8.is_some();
    let probing = Instant::now();
    let probe = if fp8 {
        let values = setup.probe_values;
        let one_call = Duration::from_secs_f64(time_one_call(group, bufs, values, deadline)?);
        // The group runs the smallest round any member proposes (every
        // member must make the same calls).
        let mine = streamed_calls_for(one_call);
        let calls = smallest_proposal(group, bufs, mine, deadline, "probe plan")?
            .min(PROBE_CALLS_PER_ROUND);
        phases.lone = probing.elapsed();
        let streamed = if calls > 0 {
            let (calls, took) = time_streamed(group, bufs, plan, values / 2, calls, deadline)?;
            phases.streamed = probing.elapsed().saturating_sub(phases.lone);
            Some((calls, Duration::from_secs_f64(took)))
        } else {
            None
        };
        Some(ProbeTimes { one_call, streamed })
    } else {
        None
    };
    let agreeing = Instant::now();
    let local = match (&setup.rates, link, probe) {
        (Ok(rates), Some(link), Some(times)) => {
            let fitted = fit_probes(
                times,
                setup.probe_values,
                n,
                link,
                *rates,
                setup.call_overhead_us,
            );
            Some(Figures {
                gbps: link.gbps,
                latency_us: link.latency_us,
                encode_gvps: fitted.encode_gvps,
                decode_gvps: fitted.decode_gvps,
            })
            .filter(Figures::is_valid)
        }
        _ => None,
    };
    if local.is_none() {
        crate::warn!(
            "collnet calibration: member {rank}'s measurement failed ({}); the group falls back to the configured profile",
            match (&setup.rates, link, fp8) {
                (Err(e), _, _) => e.clone(),
                (_, None, _) => "no usable link figures".to_string(),
                (_, _, false) => "the group does not run FP8 (formats differ)".to_string(),
                _ => "figures out of range".to_string(),
            }
        );
    }
    let mine = MemberReport {
        rank: rank as u32,
        figures: local,
    };
    let got = all_gather(group, bufs, &mine.encode(), deadline, "reports")?;
    let mut reports = Vec::with_capacity(n);
    for (j, b) in got.iter().enumerate() {
        reports.push(if j == rank {
            mine
        } else {
            MemberReport::decode(b, j as u32).map_err(|e| protocol(j, e.to_string()))?
        });
    }
    let agreed = agree(&reports);
    let record = match setup.record {
        Some(key) => Some(store::write(&record_of(key, agreed)).map_err(|e| {
            NetError::Internal(format!(
                "collnet calibration: cannot file the agreed record for the node's ranks: {e}"
            ))
        })?),
        None => None,
    };
    for (j, b) in all_gather(group, bufs, COMMIT, deadline, "commit")?
        .iter()
        .enumerate()
    {
        if b[..] != COMMIT[..] {
            return Err(protocol(j, "bad commit message".into()));
        }
    }
    phases.agree = agreeing.elapsed();
    Ok(Calibrated {
        agreed,
        local,
        took: started.elapsed(),
        probe,
        phases,
        record,
    })
}
