//! The calibration rounds, run by every member of a group right after the
//! join's READY round and before the group starts, over the group's own
//! links (the real streams, stream threads doing the I/O):
//!
//! 1. latency: lockstep rounds of one 8-byte message to every other member;
//! 2. bandwidth: a burst of [`BURST_BYTES`] from every member, spread over
//!    every peer and both lanes, all members at once (both directions of
//!    every link busy, as in an allreduce);
//! 3. reports: every member sends its figures (or "failed") to every other;
//!    each computes [`agree`] over the same reports in member order;
//! 4. commit: each member files the agreed record for its node, then says
//!    so to every other. A member that cannot file it fails its join and
//!    closes its links, so every member's join fails: a group either has
//!    its record on every node or does not exist (NCCL then runs without
//!    CollNet).
//!
//! Every message is consumed before the group starts (sends drained,
//! receives matched), with tags outside the group's step tags. Every wait
//! is bounded by the join's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{self, RecordFile};
use super::{
    agree, latency_us, rate_gbps, Agreed, ExecutorRates, Fallback, Figures, MemberReport, Record,
    REPORT_BYTES,
};
use crate::collnet::group::PeerLinks;
use crate::collnet::pool::Shared;
use crate::collnet::steps::Lane;
use crate::error::{NetError, NetResult, PeerFailure};

/// Tags of calibration messages: above any step tag a group reaches during
/// calibration (steps count from 0 and start only afterwards).
const TAG_PING: i32 = 0x7fff_ff01;
const TAG_BURST: i32 = 0x7fff_ff02;
const TAG_REPORT: i32 = 0x7fff_ff03;
const TAG_COMMIT: i32 = 0x7fff_ff04;

const WARMUP_ROUNDS: u32 = 4;
const ROUNDS: u32 = 24;
/// Bytes every member sends in the bandwidth burst (and receives): enough
/// to pass a 4 MB token-bucket burst and reach the steady rate, short
/// enough for ~30 ms at 5 Gbit/s.
pub const BURST_BYTES: usize = 16 << 20;
/// Burst messages in flight per link and direction.
const WINDOW: usize = 4;
const COMMIT: &[u8; 8] = b"AIRCALOK";

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
}

/// The outcome of [`run`] on one member.
pub struct Calibrated {
    /// Identical on every member of the group.
    pub agreed: Agreed,
    /// This member's own figures (`None`: not run, or its measurement failed).
    pub local: Option<Figures>,
    /// Time the rounds took on this member.
    pub took: Duration,
    /// The filed record; dropping it removes the file (when the group closes).
    pub record: Option<RecordFile>,
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
            return Err(NetError::peer(
                format_args!(
                    "collnet group of {} (member {})",
                    self.links.len(),
                    self.rank
                ),
                PeerFailure::ConnectFailed(format!(
                    "calibration ({what}) not complete by the connect deadline"
                )),
            ));
        }
        Ok(())
    }

    fn protocol(&self, from: usize, why: String) -> NetError {
        NetError::peer(
            format_args!("collnet member {from} (calibration)"),
            PeerFailure::Protocol(why),
        )
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
                    if let Err(buf) = l.rx[lane].post(buf, tag)? {
                        posted[j] = Some(buf);
                    }
                }
                if !sent[j] {
                    sent[j] = l.tx[lane].send(Arc::clone(&shared), tag)?.is_ok();
                }
                if sent[j] && !drained[j] {
                    drained[j] = l.tx[lane].poll_sent()?.is_some();
                }
                if posted[j].is_none() && got[j].is_none() {
                    got[j] = l.rx[lane].poll_received()?;
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
                return Err(self.protocol(
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
                    return Err(
                        self.protocol(j, format!("latency round {round}: unexpected message"))
                    );
                }
            }
            if round >= WARMUP_ROUNDS {
                rounds.push(ns);
            }
        }
        Ok(rounds)
    }

    /// The burst; returns this member's receive completions (ns, bytes).
    fn burst(&mut self) -> NetResult<Vec<(u64, usize)>> {
        let peers = self.peers();
        let per_peer = BURST_BYTES / peers.len().max(1);
        let msg = ((per_peer / 4).clamp(64 << 10, 1 << 20) >> 12) << 12;
        let count = per_peer.div_ceil(msg).max(4);
        let payload: Shared = Arc::new(vec![0x5a; msg]);
        #[derive(Clone)]
        struct Dir {
            send_left: usize,
            sending: usize,
            post_left: usize,
            receiving: usize,
            spare: Vec<Vec<u8>>,
        }
        let per_lane = |lane: usize| (count + 1 - lane) / 2;
        let mut dirs: Vec<[Dir; 2]> = (0..self.links.len())
            .map(|_| {
                std::array::from_fn(|lane| Dir {
                    send_left: per_lane(lane),
                    sending: 0,
                    post_left: per_lane(lane),
                    receiving: 0,
                    spare: Vec::new(),
                })
            })
            .collect();
        let mut completions = Vec::with_capacity(count * peers.len());
        let start = Instant::now();
        loop {
            let mut done = true;
            for &j in &peers {
                for lane in [Lane::Contrib as usize, Lane::Result as usize] {
                    let d = &mut dirs[j][lane];
                    let l = self.links[j].as_mut().expect("a peer with links");
                    while d.send_left > 0 && d.sending < WINDOW {
                        if l.tx[lane].send(Arc::clone(&payload), TAG_BURST)?.is_err() {
                            break;
                        }
                        d.send_left -= 1;
                        d.sending += 1;
                    }
                    while d.sending > 0 && l.tx[lane].poll_sent()?.is_some() {
                        d.sending -= 1;
                    }
                    while d.post_left > 0 && d.receiving < WINDOW {
                        let mut buf = d.spare.pop().unwrap_or_default();
                        buf.resize(msg, 0);
                        if let Err(buf) = l.rx[lane].post(buf, TAG_BURST)? {
                            d.spare.push(buf);
                            break;
                        }
                        d.post_left -= 1;
                        d.receiving += 1;
                    }
                    while d.receiving > 0 {
                        let Some(buf) = l.rx[lane].poll_received()? else {
                            break;
                        };
                        if buf.len() != msg {
                            return Err(self.protocol(
                                j,
                                format!("burst message of {} bytes, expected {msg}", buf.len()),
                            ));
                        }
                        completions.push((start.elapsed().as_nanos() as u64, buf.len()));
                        d.receiving -= 1;
                        d.spare.push(buf);
                    }
                    done &= d.send_left + d.sending + d.post_left + d.receiving == 0;
                }
            }
            if done {
                break;
            }
            self.check_deadline("bandwidth burst")?;
            std::thread::yield_now();
        }
        Ok(completions)
    }
}

/// Runs the calibration rounds on member `rank` of the group whose links
/// are `links` (`links[rank]` is `None`), if `run` (every member asked for
/// them in its hello); files the agreed record when `setup.record` names the
/// communicator. Identical `agreed` on every member, or an error on every
/// member (a failed link, a peer's protocol error, a record that cannot be
/// filed, or the deadline).
pub fn run(
    links: &mut [Option<PeerLinks>],
    rank: usize,
    run: bool,
    setup: Setup,
    deadline: Instant,
) -> NetResult<Calibrated> {
    let start = Instant::now();
    let members = links.len();
    let record_of = |key: RecordKey, agreed| Record {
        comm_id: key.comm_id,
        group_key: key.group_key,
        members: members as u32,
        agreed,
    };
    let peers = links.iter().filter(|l| l.is_some()).count();
    if !run || peers == 0 {
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
            took: start.elapsed(),
            record,
        });
    }
    let mut ctx = Ctx {
        links,
        rank,
        deadline,
    };
    let rounds = ctx.latency_rounds()?;
    let completions = ctx.burst()?;
    let local = match (&setup.rates, latency_us(&rounds), rate_gbps(&completions)) {
        (Ok(rates), Some(latency_us), Some(gbps)) => Some(Figures {
            gbps,
            latency_us,
            encode_gvps: rates.encode_gvps,
            decode_gvps: rates.decode_gvps,
        })
        .filter(Figures::is_valid),
        _ => None,
    };
    if local.is_none() {
        crate::warn!(
            "collnet calibration: member {rank}'s measurement failed ({}); the group falls back to the configured profile",
            match &setup.rates {
                Err(e) => e.clone(),
                Ok(_) => "no usable link figures".to_string(),
            }
        );
    }
    let mine = MemberReport {
        rank: rank as u32,
        figures: local,
    };
    let got = ctx.all_to_all(&mine.encode(), REPORT_BYTES, TAG_REPORT, "reports")?;
    let mut reports = Vec::with_capacity(members);
    let mut theirs = got.into_iter();
    for j in 0..members {
        if j == rank {
            reports.push(mine);
            continue;
        }
        let b = theirs.next().expect("one report per peer");
        reports
            .push(MemberReport::decode(&b, j as u32).map_err(|e| ctx.protocol(j, e.to_string()))?);
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
    for (b, j) in ctx
        .all_to_all(COMMIT, COMMIT.len(), TAG_COMMIT, "commit")?
        .iter()
        .zip((0..members).filter(|&j| j != rank))
    {
        if b[..] != COMMIT[..] {
            return Err(ctx.protocol(j, "bad commit message".into()));
        }
    }
    Ok(Calibrated {
        agreed,
        local,
        took: start.elapsed(),
        record,
    })
}
