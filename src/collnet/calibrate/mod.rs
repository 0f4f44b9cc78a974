//! Calibration inside the collective network's `connect`: the figures the
//! tuner's model needs, measured by every member over the group's real
//! links and agreed by all of them, so every rank holds bit-identical
//! numbers.
//!
//! * This file is sans-IO: the figures, the report every member sends
//!   ([`MemberReport`], fixed 48 bytes), the agreement ([`agree`]: slowest
//!   link, longest latency, slowest codec, in member order), the estimators
//!   that turn timestamps into figures, and the node-local [`Record`].
//! * [`probe`] runs the measurement over the group's links (latency rounds,
//!   a two-way bandwidth burst, the report exchange, a commit round).
//! * [`store`] keeps the agreed record in a small node-local file keyed by
//!   NCCL's communicator id, where every rank's tuner (CollNet head or not)
//!   reads it at its `init`.
//!
//! `docs/tuner.md` (Calibration in the job) explains why every rank of a
//! communicator reads the same figures.

#[allow(unsafe_code)] // lends the probing calls' buffers to the group as RawBufs
pub mod probe;
pub mod store;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::codec::{encoded_len, Codec, Src, WireFormat};

/// What the tuner's model needs from a calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// Bandwidth of one member's link in each direction while it sends and
    /// receives at once (as an allreduce does), Gbit/s.
    pub gbps: f64,
    /// One-way latency of a small message between members, microseconds.
    pub latency_us: f64,
    /// FP8 encode speed of the group's executor, G values/s.
    pub encode_gvps: f64,
    /// FP8 decode-and-accumulate speed of the group's executor, G values/s.
    pub decode_gvps: f64,
}

/// Largest figures a report may carry: anything above is a broken clock or
/// a broken peer, not a measurement.
const MAX_GBPS: f64 = 100_000.0;
const MAX_LATENCY_US: f64 = 60.0e6;
const MAX_GVPS: f64 = 100_000.0;

impl Figures {
    /// Every figure finite and in range (bandwidth and codec speeds > 0).
    pub fn is_valid(&self) -> bool {
        let pos = |x: f64, max: f64| x.is_finite() && x > 0.0 && x <= max;
        pos(self.gbps, MAX_GBPS)
            && self.latency_us.is_finite()
            && (0.0..=MAX_LATENCY_US).contains(&self.latency_us)
            && pos(self.encode_gvps, MAX_GVPS)
            && pos(self.decode_gvps, MAX_GVPS)
    }
}

/// Codec speed of the executor a group will run on, filled by the caller of
/// the join: the CPU workers today ([`ExecutorRates::cpu`]); a GPU executor
/// supplies its own kernels' rates here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExecutorRates {
    pub encode_gvps: f64,
    pub decode_gvps: f64,
}

/// Values per codec timing run: 128 KiB of bf16, L2-resident like the
/// collective network's per-shard work.
const CODEC_VALUES: usize = 64 << 10;
/// Least time spent timing each codec operation.
const CODEC_BUDGET: Duration = Duration::from_millis(2);

/// Best-of-runs G values/s of `f` over [`CODEC_VALUES`] values, for at
/// least [`CODEC_BUDGET`] and 3 runs.
fn gvps(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < CODEC_BUDGET {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    CODEC_VALUES as f64 / best.max(1e-9) / 1e9
}

/// One core's encode (bf16 -> E4M3) and decode-and-accumulate speeds,
/// measured once per process with the backend the collective network uses.
pub fn cpu_core_rates() -> ExecutorRates {
    static RATES: OnceLock<ExecutorRates> = OnceLock::new();
    *RATES.get_or_init(|| {
        let codec = Codec::new(WireFormat::E4M3);
        let input: Vec<u16> = (0..CODEC_VALUES)
            .map(|i| crate::codec::f32_to_bf16(((i * 7919) % 1000) as f32 * 0.013 - 6.5))
            .collect();
        let mut wire = vec![0u8; encoded_len(WireFormat::E4M3, CODEC_VALUES)];
        let mut acc = vec![0f32; CODEC_VALUES];
        let encode_gvps = gvps(|| {
            codec
                .encode_wire(Src::Bf16(std::hint::black_box(&input)), &mut wire)
                .expect("lengths match");
        });
        let decode_gvps = gvps(|| {
            codec
                .decode_accumulate_wire(std::hint::black_box(&wire), &mut acc)
                .expect("lengths match");
        });
        ExecutorRates {
            encode_gvps,
            decode_gvps,
        }
    })
}

impl ExecutorRates {
    /// The host executor: `workers` threads (0 = NCCL's proxy thread, one
    /// core) each at one core's speed, capped at the cores this process may
    /// use.
    pub fn cpu(workers: usize) -> ExecutorRates {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = workers.clamp(1, cores.max(1)) as f64;
        let core = cpu_core_rates();
        ExecutorRates {
            encode_gvps: core.encode_gvps * threads,
            decode_gvps: core.decode_gvps * threads,
        }
    }
}

// ---------------------------------------------------------------------------
// The report every member sends, and the agreement
// ---------------------------------------------------------------------------

pub const REPORT_BYTES: usize = 48;
const REPORT_MAGIC: &[u8; 8] = b"AIRCALR1";

/// One member's outcome: its figures, or the fact that its measurement
/// failed (it still took part in every round, so the group stays in step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemberReport {
    pub rank: u32,
    /// `None`: this member's measurement failed.
    pub figures: Option<Figures>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportError {
    BadMagic,
    /// The report names another member than the link it came on.
    WrongMember {
        expected: u32,
        got: u32,
    },
    BadStatus(u32),
    /// A figure is not finite or out of range.
    BadFigures,
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportError::BadMagic => write!(f, "not an airamp calibration report"),
            ReportError::WrongMember { expected, got } => {
                write!(f, "report of member {got} on member {expected}'s link")
            }
            ReportError::BadStatus(s) => write!(f, "unknown calibration status {s}"),
            ReportError::BadFigures => write!(f, "calibration figures out of range"),
        }
    }
}

fn put_f64s(b: &mut [u8], xs: [f64; 4]) {
    for (i, x) in xs.iter().enumerate() {
        b[8 * i..8 * i + 8].copy_from_slice(&x.to_bits().to_le_bytes());
    }
}

fn get_f64s(b: &[u8]) -> [f64; 4] {
    std::array::from_fn(|i| {
        f64::from_bits(u64::from_le_bytes(
            b[8 * i..8 * i + 8].try_into().expect("8 bytes"),
        ))
    })
}

fn figures_of(x: [f64; 4]) -> Figures {
    Figures {
        gbps: x[0],
        latency_us: x[1],
        encode_gvps: x[2],
        decode_gvps: x[3],
    }
}

fn words_of(f: &Figures) -> [f64; 4] {
    [f.gbps, f.latency_us, f.encode_gvps, f.decode_gvps]
}

impl MemberReport {
    /// Magic, status (0 measured, 1 failed), rank, four `f64` (bits, LE).
    pub fn encode(&self) -> [u8; REPORT_BYTES] {
        let mut b = [0u8; REPORT_BYTES];
        b[..8].copy_from_slice(REPORT_MAGIC);
        let status: u32 = if self.figures.is_some() { 0 } else { 1 };
        b[8..12].copy_from_slice(&status.to_le_bytes());
        b[12..16].copy_from_slice(&self.rank.to_le_bytes());
        if let Some(f) = &self.figures {
            put_f64s(&mut b[16..], words_of(f));
        }
        b
    }

    /// Decodes and checks the report that came on member `from`'s link.
    pub fn decode(b: &[u8], from: u32) -> Result<MemberReport, ReportError> {
        if b.len() != REPORT_BYTES || &b[..8] != REPORT_MAGIC {
            return Err(ReportError::BadMagic);
        }
        let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let rank = word(12);
        if rank != from {
            return Err(ReportError::WrongMember {
                expected: from,
                got: rank,
            });
        }
        let figures = match word(8) {
            0 => {
                let f = figures_of(get_f64s(&b[16..]));
                if !f.is_valid() {
                    return Err(ReportError::BadFigures);
                }
                Some(f)
            }
            1 => None,
            s => return Err(ReportError::BadStatus(s)),
        };
        Ok(MemberReport { rank, figures })
    }
}

/// Why a group did not agree on measured figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Calibration did not run: some member did not ask for it (off in its
    /// configuration, FP8 off, a complete profile configured, or no
    /// communicator id to file the result under), or the group has one
    /// member.
    NotRun,
    /// This member's measurement failed (the lowest such rank).
    Failed { member: u32 },
}

/// What a whole group agreed on: identical on every member.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Agreed {
    Measured(Figures),
    Fallback(Fallback),
}

/// The group's figures from every member's report, in member order: the
/// slowest link, the longest latency and the slowest codec, since the
/// slowest member bounds every collective. Any failed member makes the
/// whole group fall back. Plain `f64` comparisons on identical inputs in a
/// fixed order: every member computes the same bits.
pub fn agree(reports: &[MemberReport]) -> Agreed {
    let mut agreed: Option<Figures> = None;
    for r in reports {
        let Some(f) = r.figures else {
            return Agreed::Fallback(Fallback::Failed { member: r.rank });
        };
        agreed = Some(match agreed {
            None => f,
            Some(a) => Figures {
                gbps: if f.gbps < a.gbps { f.gbps } else { a.gbps },
                latency_us: if f.latency_us > a.latency_us {
                    f.latency_us
                } else {
                    a.latency_us
                },
                encode_gvps: if f.encode_gvps < a.encode_gvps {
                    f.encode_gvps
                } else {
                    a.encode_gvps
                },
                decode_gvps: if f.decode_gvps < a.decode_gvps {
                    f.decode_gvps
                } else {
                    a.decode_gvps
                },
            },
        });
    }
    agreed.map_or(Agreed::Fallback(Fallback::NotRun), Agreed::Measured)
}

// ---------------------------------------------------------------------------
// Estimators
// ---------------------------------------------------------------------------

/// Receive rate, Gbit/s, from message completions `(ns since the burst
/// began, bytes)`, after the first quarter of them: a token-bucket shaper
/// (or a NIC's burst allowance) lets the first megabytes through at full
/// speed. The burst keeps both directions busy to the end (each member
/// sends only a few messages ahead of what it received).
///
/// The clock starts at a completion and counts the bytes completed after
/// it. Completions arrive in clumps (measured with 2 members: the send
/// window's 4 within a few microseconds, then a gap; with more members the
/// peers' windows land together), so a clock started inside a clump would
/// credit bytes that crossed the link before it started: from the first of
/// a clump of 4 out of 16 messages that read 37% high. So it starts at the
/// widest gap of the second quarter, a clump boundary whenever there are
/// clumps (in an even stream any completion is as good). If the counted
/// part bunches up (a polling artefact: it spans less than half the
/// burst), the whole burst counts.
pub fn rate_gbps(completions: &[(u64, usize)]) -> Option<f64> {
    if completions.len() < 4 {
        return None;
    }
    let mut c = completions.to_vec();
    c.sort_unstable();
    let (t_end, _) = *c.last().expect("non-empty");
    let q1 = c.len() / 4;
    let gap = |i: usize| c[i].0 - c[i - 1].0;
    let start =
        (q1..=(2 * q1).min(c.len() - 1)).fold(
            q1,
            |widest, i| {
                if gap(i) > gap(widest) {
                    i
                } else {
                    widest
                }
            },
        );
    let t1 = c[start - 1].0;
    let counted: usize = c[start..].iter().map(|&(_, b)| b).sum();
    let all: usize = c.iter().map(|&(_, b)| b).sum();
    let bits_per_ns = |bytes: usize, ns: u64| bytes as f64 * 8.0 / ns as f64;
    let rate = if t_end > t1 && (t_end - t1) * 2 >= t_end {
        bits_per_ns(counted, t_end - t1)
    } else if t_end > 0 {
        bits_per_ns(all, t_end)
    } else {
        return None;
    };
    (rate.is_finite() && rate > 0.0).then_some(rate)
}

/// One-way latency, microseconds, from the durations (ns) of lockstep
/// rounds in which every member sends one small message to every other and
/// waits for theirs: one round is one message's trip, so the median round.
pub fn latency_us(rounds_ns: &[u64]) -> Option<f64> {
    if rounds_ns.is_empty() {
        return None;
    }
    let mut r = rounds_ns.to_vec();
    r.sort_unstable();
    let us = r[r.len() / 2] as f64 / 1e3;
    (us.is_finite() && us > 0.0).then_some(us)
}

// ---------------------------------------------------------------------------
// The node-local record
// ---------------------------------------------------------------------------

pub const RECORD_BYTES: usize = 72;
const RECORD_MAGIC: &[u8; 8] = b"AIRCALN1";

/// What one group agreed, as its member on this node files it for every
/// rank of the communicator on the node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    pub comm_id: u64,
    /// Identifies the group (a hash of its members' listen handles, the
    /// same on every member).
    pub group_key: u64,
    pub members: u32,
    pub agreed: Agreed,
}

/// 64-bit FNV-1a: stable across builds and hosts, so members can compare.
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The group key of a group whose members listen on `handles` (in member
/// order, identical on every member).
pub fn group_key<'a>(handles: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut all = Vec::new();
    for h in handles {
        all.extend_from_slice(h);
    }
    fnv64(&all)
}

impl Record {
    /// Magic, comm id, group key, members, kind (0 measured, 1 not run,
    /// 2 failed), failed member, four `f64`, FNV-1a of the rest.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[..8].copy_from_slice(RECORD_MAGIC);
        b[8..16].copy_from_slice(&self.comm_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.group_key.to_le_bytes());
        b[24..28].copy_from_slice(&self.members.to_le_bytes());
        let (kind, member, figures) = match self.agreed {
            Agreed::Measured(f) => (0u32, 0u32, words_of(&f)),
            Agreed::Fallback(Fallback::NotRun) => (1, 0, [0.0; 4]),
            Agreed::Fallback(Fallback::Failed { member }) => (2, member, [0.0; 4]),
        };
        b[28..32].copy_from_slice(&kind.to_le_bytes());
        b[32..36].copy_from_slice(&member.to_le_bytes());
        put_f64s(&mut b[36..68], figures);
        let sum = fnv64(&b[..68]) as u32;
        b[68..72].copy_from_slice(&sum.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Record> {
        if b.len() != RECORD_BYTES || &b[..8] != RECORD_MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(68) != fnv64(&b[..68]) as u32 {
            return None;
        }
        let agreed = match u32_at(28) {
            0 => {
                let f = figures_of(get_f64s(&b[36..68]));
                if !f.is_valid() {
                    return None;
                }
                Agreed::Measured(f)
            }
            1 => Agreed::Fallback(Fallback::NotRun),
            2 => Agreed::Fallback(Fallback::Failed { member: u32_at(32) }),
            _ => return None,
        };
        Some(Record {
            comm_id: u64_at(8),
            group_key: u64_at(16),
            members: u32_at(24),
            agreed,
        })
    }
}

/// What a rank's tuner makes of every record filed for its communicator on
/// its node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NodeView {
    /// No record: no collective network was connected for this
    /// communicator (CollNet off or shared with a parent communicator).
    NoRecord,
    /// Some group did not agree on figures (the first such record's reason).
    Fallback(Fallback),
    /// Every group agreed on figures: the slowest of them, over `groups`.
    Measured { figures: Figures, groups: usize },
    /// A record file could not be read or decoded.
    Unreadable,
}

/// Combines the records of every group of one communicator. NCCL builds one
/// group per head position, each with one member on every node, so every
/// node holds the same set of records and computes the same view.
/// Order-independent: records are sorted by group key first.
pub fn combine(records: &[Record]) -> NodeView {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.group_key);
    let mut reports = Vec::with_capacity(sorted.len());
    for r in &sorted {
        match r.agreed {
            Agreed::Fallback(why) => return NodeView::Fallback(why),
            Agreed::Measured(f) => reports.push(MemberReport {
                rank: 0,
                figures: Some(f),
            }),
        }
    }
    match agree(&reports) {
        Agreed::Measured(figures) => NodeView::Measured {
            figures,
            groups: sorted.len(),
        },
        Agreed::Fallback(_) => NodeView::NoRecord,
    }
}

#[cfg(test)]
mod tests;
