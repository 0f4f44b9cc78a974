//! The tuner's decision model: pure functions, no I/O, no globals.
//!
//! The tuner owns one question: **collective network (CollNet) or NCCL's own
//! algorithms?** and one narrow rule about channels ([`Tuner::channels`]:
//! mid-size allreduce on one channel where every hop is the net).
//! Everything else (ring vs tree vs NVLS vs PAT, protocols, chunk sizes)
//! stays NCCL's. It answers from inputs that are
//! identical on every rank of a communicator (collective type, byte count,
//! rank and node counts, NCCL's cost table, the configuration and the link
//! profile it carries), with deterministic arithmetic, so ranks cannot
//! disagree (a disagreement would hang the job).
//!
//! * [`decide_allreduce`]: the whole rule without a cost table (ring model as
//!   the raw baseline); what `airamp tuner show`, the v2 ABI and benchmark
//!   harnesses call.
//! * [`Tuner::edit_cost_table`]: the v3+ ABI's rule over NCCL's cost table.
//! * [`model`]: the time predictions behind both.
//!
//! `src/abi/tuner*.rs` shims NCCL's `ncclTunerPlugin_v2`..`v6` onto this;
//! `docs/tuner.md` explains the model and the rule.

pub mod model;

#[cfg(test)]
mod tests;

use std::fmt;

use crate::codec::WireFormat;
use crate::collnet::calibrate::Figures;
use crate::config::{Config, TunerConfig, DEFAULT_CALL_OVERHEAD_US};

pub use model::{
    collnet_allreduce_us, ring_allreduce_us, ring_bandwidth_us, wire_ratio, BF16_BYTES,
    DEFAULT_DECODE_GVPS, DEFAULT_ENCODE_GVPS, DEFAULT_LINK_GBPS, DEFAULT_LINK_LATENCY_US,
};

/// NCCL's algorithm indices (rows of the cost table), stable since NCCL 2.19.
pub const ALGO_TREE: usize = 0;
pub const ALGO_RING: usize = 1;
pub const ALGO_COLLNET_DIRECT: usize = 2;
pub const ALGO_COLLNET_CHAIN: usize = 3;
pub const ALGO_NVLS: usize = 4;
pub const ALGO_NVLS_TREE: usize = 5;
pub const ALGO_PAT: usize = 6;
/// NCCL's protocol indices (columns of the cost table).
pub const PROTO_LL: usize = 0;
pub const PROTO_LL128: usize = 1;
pub const PROTO_SIMPLE: usize = 2;
/// `NCCL_ALGO_PROTO_IGNORE`: a disabled (algorithm, protocol) pair.
pub const IGNORE: f32 = -1.0;
/// `ncclFuncAllReduce`.
pub const FUNC_ALLREDUCE: i32 = 4;

/// Version of the tuner's rules: bump it whenever the same inputs may lead
/// to another decision (another algorithm, protocol or channel count), so
/// that hosts running different rules refuse to connect instead of hanging.
/// 2: the one-channel rule ([`Tuner::channels`]).
pub const RULES_VERSION: u32 = 2;

/// Digest of what makes this host's tuner decide as it does: the rules'
/// version and the effective values of [`crate::config::AGREED_KEYS`] (FNV-1a). Equal on
/// two hosts, their tuners decide alike for the same communicator and the
/// same agreed calibration; the TCP transport refuses a peer whose digest
/// differs.
pub fn agreement_digest(cfg: &Config) -> u64 {
    let mut text = format!("rules {RULES_VERSION}");
    for key in crate::config::AGREED_KEYS {
        let value = cfg.value_string(key).unwrap_or_default();
        text.push_str(&format!(";{key}={value}"));
    }
    crate::collnet::calibrate::fnv64(text.as_bytes())
}

/// Names of NCCL's algorithms, indexed like the cost table.
pub const ALGO_NAMES: [&str; 7] = [
    "tree",
    "ring",
    "collnet_direct",
    "collnet_chain",
    "nvls",
    "nvls_tree",
    "pat",
];
/// Names of NCCL's protocols, indexed like the cost table.
pub const PROTO_NAMES: [&str; 3] = ["ll", "ll128", "simple"];

/// Lower-case names of `ncclFunc_t` values 0..=14.
pub const COLLECTIVE_NAMES: [&str; 15] = [
    "broadcast",
    "reduce",
    "allgather",
    "reducescatter",
    "allreduce",
    "sendrecv",
    "send",
    "recv",
    "alltoall",
    "scatter",
    "gather",
    "allgatherv",
    "putsignal",
    "signal",
    "waitsignal",
];

/// Lower-case name of an `ncclFunc_t` value (`other` past the known ones).
pub fn collective_name(func: i32) -> &'static str {
    usize::try_from(func)
        .ok()
        .and_then(|i| COLLECTIVE_NAMES.get(i).copied())
        .unwrap_or("other")
}

fn is_collnet(algo: usize) -> bool {
    algo == ALGO_COLLNET_DIRECT || algo == ALGO_COLLNET_CHAIN
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// What the model knows about the link and the codec. Every rank must use
/// the same profile: it comes from the configuration (a profile written by
/// `airamp calibrate`) and from the figures the collective network's members
/// agreed on in `connect` ([`LinkProfile::resolve`]), never from a rank's
/// own measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    /// Link bandwidth, Gbit/s (10^9 bit/s).
    pub gbps: f64,
    /// One-way link latency, microseconds.
    pub latency_us: f64,
    /// FP8 encode speed of one core, G values/s.
    pub encode_gvps: f64,
    /// FP8 decode-and-accumulate speed of one core, G values/s.
    pub decode_gvps: f64,
    /// Fixed cost of one collective-network call, microseconds.
    pub call_overhead_us: f64,
}

/// Where a [`LinkProfile`] came from (logged once at init).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileSource {
    /// Every calibration key set (an `airamp calibrate` profile).
    Calibrated,
    /// Some calibration keys set, built-in defaults for the rest.
    Partial,
    /// No calibration key set: conservative built-in defaults.
    Defaults,
    /// Figures the collective network's members measured and agreed on in
    /// `connect`, no calibration key set.
    Agreed,
    /// Agreed figures, with the calibration keys that are set overriding them.
    AgreedWithConfig,
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileSource::Calibrated => "calibration profile from config",
            ProfileSource::Partial => "config, built-in defaults for unset keys",
            ProfileSource::Defaults => "built-in defaults (uncalibrated)",
            ProfileSource::Agreed => "agreed by the collective network's members in connect",
            ProfileSource::AgreedWithConfig => {
                "agreed in connect, overridden by the calibration keys set in config"
            }
        })
    }
}

impl Default for LinkProfile {
    fn default() -> Self {
        Self {
            gbps: DEFAULT_LINK_GBPS,
            latency_us: DEFAULT_LINK_LATENCY_US,
            encode_gvps: DEFAULT_ENCODE_GVPS,
            decode_gvps: DEFAULT_DECODE_GVPS,
            call_overhead_us: DEFAULT_CALL_OVERHEAD_US,
        }
    }
}

impl LinkProfile {
    /// The profile the `[tuner]` section describes, defaults for unset keys.
    pub fn from_config(t: &TunerConfig) -> (LinkProfile, ProfileSource) {
        LinkProfile::resolve(t, None)
    }

    /// The profile from the `[tuner]` section and the figures the
    /// collective network agreed on: each calibration key that is set wins,
    /// then the agreed figure, then the built-in default. The same priority
    /// on every rank, so equal configuration and equal agreed figures give
    /// equal profiles.
    pub fn resolve(t: &TunerConfig, agreed: Option<&Figures>) -> (LinkProfile, ProfileSource) {
        let d = LinkProfile::default();
        let m = |f: fn(&Figures) -> f64, default: f64| agreed.map_or(default, f);
        let keys = [t.link_gbps, t.link_latency_us, t.encode_gvps, t.decode_gvps];
        let set = keys.iter().filter(|k| k.is_some()).count();
        let profile = LinkProfile {
            gbps: t.link_gbps.unwrap_or(m(|f| f.gbps, d.gbps)),
            latency_us: t
                .link_latency_us
                .unwrap_or(m(|f| f.latency_us, d.latency_us)),
            encode_gvps: t.encode_gvps.unwrap_or(m(|f| f.encode_gvps, d.encode_gvps)),
            decode_gvps: t.decode_gvps.unwrap_or(m(|f| f.decode_gvps, d.decode_gvps)),
            call_overhead_us: t.call_overhead_us,
        };
        let source = match (set, agreed.is_some()) {
            (n, _) if n == keys.len() => ProfileSource::Calibrated,
            (0, true) => ProfileSource::Agreed,
            (_, true) => ProfileSource::AgreedWithConfig,
            (0, false) => ProfileSource::Defaults,
            (_, false) => ProfileSource::Partial,
        };
        (profile.sanitized(), source)
    }

    /// Whether the link bandwidth of [`LinkProfile::resolve`]'s profile is
    /// known (configured or agreed), rather than the built-in guess.
    pub fn link_known(t: &TunerConfig, agreed: Option<&Figures>) -> bool {
        t.link_gbps.is_some() || agreed.is_some()
    }

    /// Every field finite and in a usable range (the config validates keys;
    /// this keeps hand-built profiles from producing NaN predictions).
    pub fn sanitized(self) -> LinkProfile {
        let d = LinkProfile::default();
        let pos = |x: f64, def: f64| if x.is_finite() && x > 0.0 { x } else { def };
        let nonneg = |x: f64, def: f64| if x.is_finite() && x >= 0.0 { x } else { def };
        LinkProfile {
            gbps: pos(self.gbps, d.gbps),
            latency_us: nonneg(self.latency_us, d.latency_us),
            encode_gvps: pos(self.encode_gvps, d.encode_gvps),
            decode_gvps: pos(self.decode_gvps, d.decode_gvps),
            call_overhead_us: nonneg(self.call_overhead_us, d.call_overhead_us),
        }
    }
}

impl fmt::Display for LinkProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "link {} Gbit/s, {} us; codec encode {} / decode+acc {} G values/s; call overhead {} us",
            self.gbps, self.latency_us, self.encode_gvps, self.decode_gvps, self.call_overhead_us
        )
    }
}

/// The configuration the rule depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// FP8 compression of allreduce enabled, and its format.
    pub fp8: Option<WireFormat>,
    /// Compression must be predicted this fraction faster than raw (0..=1).
    pub min_gain: f64,
    /// airamp's collective network is the one NCCL uses for CollNet entries.
    /// When true and CollNet does not pay, the tuner raises NCCL's CollNet
    /// costs (NCCL models CollNet as in-network reduction, which airamp's
    /// host-side reduction is not). When false the tuner never touches
    /// CollNet: it is someone else's (e.g. SHARP) and NCCL's model fits it.
    pub owns_collnet: bool,
    /// Allreduces up to this many bytes run on one NCCL channel where every
    /// rank is a node of its own (0: never); see [`Tuner::channels`].
    pub single_channel_bytes: u64,
}

impl Policy {
    /// The policy of `cfg`; `owns_collnet` is true (airamp's `.so` exports
    /// the collective network NCCL finds beside the tuner).
    pub fn from_config(cfg: &Config) -> Policy {
        Policy {
            fp8: cfg
                .compression
                .fp8_allreduce
                .then_some(cfg.compression.format),
            min_gain: if (0.0..=1.0).contains(&cfg.tuner.min_gain) {
                cfg.tuner.min_gain
            } else {
                0.1
            },
            owns_collnet: true,
            single_channel_bytes: cfg.tuner.single_channel_bytes,
        }
    }
}

// ---------------------------------------------------------------------------
// The rule without a cost table
// ---------------------------------------------------------------------------

/// Which path an allreduce takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// NCCL's own algorithms (the tuner leaves NCCL's choice alone).
    Raw,
    /// airamp's collective network with FP8 compression.
    CompressedCollNet,
}

/// Why [`decide_allreduce`] (or the table rule) did not choose compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declined {
    /// It chose compression.
    No,
    /// FP8 allreduce is off in the configuration.
    Fp8Off,
    /// Not an allreduce.
    NotAllReduce,
    /// NCCL offers no CollNet algorithm for this call.
    NoCollNet,
    /// NCCL's CollNet is not airamp's.
    ForeignCollNet,
    /// Predicted not to pay by at least `min_gain`.
    DoesNotPay,
    /// The table had no usable raw entry, or values the rule cannot undercut.
    UnusableTable,
}

/// A decision and the predictions behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub path: Path,
    pub declined: Declined,
    /// Predicted time of the raw path, microseconds.
    pub raw_us: f64,
    /// Predicted time of airamp's CollNet path (compressed when FP8 is on,
    /// exact otherwise), microseconds.
    pub collnet_us: f64,
}

/// The rule for one allreduce of `bytes` over `ranks` GPUs on `nodes` nodes,
/// without NCCL's cost table: raw time from the ring model. Assumes CollNet
/// is available (the caller checks). Pure and deterministic.
pub fn decide_allreduce(
    bytes: u64,
    ranks: usize,
    nodes: usize,
    profile: &LinkProfile,
    policy: &Policy,
) -> Choice {
    let _ = ranks; // the inter-node links carry the traffic; ranks per node do not change it
    let raw_us = ring_allreduce_us(bytes, nodes, profile);
    decide_against(bytes, nodes, 1, raw_us, profile, policy)
}

/// Smallest power-of-two allreduce size, 4 KiB .. 1 GiB, for which
/// [`decide_allreduce`] chooses compressed CollNet across `nodes` nodes;
/// `None` if none (or FP8 is off).
pub fn crossover_bytes(nodes: usize, profile: &LinkProfile, policy: &Policy) -> Option<u64> {
    (12..=30).map(|log2| 1u64 << log2).find(|&b| {
        decide_allreduce(b, nodes, nodes, profile, policy).path == Path::CompressedCollNet
    })
}

/// The rule against a given raw time (the ring model, or NCCL's table).
fn decide_against(
    bytes: u64,
    nodes: usize,
    pipe_ops: u32,
    raw_us: f64,
    profile: &LinkProfile,
    policy: &Policy,
) -> Choice {
    let collnet_us = collnet_allreduce_us(bytes, nodes, pipe_ops, profile, policy.fp8);
    let declined = if !policy.owns_collnet {
        Declined::ForeignCollNet
    } else if policy.fp8.is_none() {
        Declined::Fp8Off
    } else if collnet_us * (1.0 + policy.min_gain) < raw_us {
        Declined::No
    } else {
        Declined::DoesNotPay
    };
    Choice {
        path: if declined == Declined::No {
            Path::CompressedCollNet
        } else {
            Path::Raw
        },
        declined,
        raw_us,
        collnet_us,
    }
}

// ---------------------------------------------------------------------------
// Per-communicator tuner
// ---------------------------------------------------------------------------

/// One communicator's tuner: what NCCL told `init` plus the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuner {
    pub ranks: usize,
    pub nodes: usize,
    pub profile: LinkProfile,
    pub policy: Policy,
    /// The profile's link bandwidth was measured or configured, not the
    /// built-in guess: no raw algorithm then beats that link's bandwidth
    /// bound, whatever NCCL's estimate (which assumes the NIC speed the net
    /// plugin reports) says.
    pub link_known: bool,
    /// Most ranks in one NVLink domain, when NCCL says (tuner v5+). Above
    /// one, some hops are NVLink even with one rank per node (multi-node
    /// NVLink), and [`Tuner::channels`] keeps NCCL's count.
    pub max_ranks_per_nvlink_domain: Option<usize>,
}

/// NCCL's cost table for one call: `float[n_algo][n_proto]`, microseconds,
/// lower wins, [`IGNORE`] (any negative or NaN value) marks a disabled pair.
pub struct CostTable<'a> {
    cells: &'a mut [f32],
    n_algo: usize,
    n_proto: usize,
}

impl<'a> CostTable<'a> {
    /// `None` unless `cells.len() == n_algo * n_proto`.
    pub fn new(cells: &'a mut [f32], n_algo: usize, n_proto: usize) -> Option<Self> {
        (n_algo.checked_mul(n_proto) == Some(cells.len())).then_some(Self {
            cells,
            n_algo,
            n_proto,
        })
    }

    pub fn get(&self, algo: usize, proto: usize) -> Option<f32> {
        (algo < self.n_algo && proto < self.n_proto)
            .then(|| self.cells[algo * self.n_proto + proto])
    }

    fn set(&mut self, algo: usize, proto: usize, v: f32) {
        self.cells[algo * self.n_proto + proto] = v;
    }

    fn cells(&self) -> impl Iterator<Item = (usize, usize, f32)> + '_ {
        (0..self.n_algo).flat_map(move |a| {
            (0..self.n_proto).map(move |p| (a, p, self.cells[a * self.n_proto + p]))
        })
    }

    /// The pair NCCL picks from this table: the first strictly cheapest
    /// entry with `0 <= cost < FLT_MAX`, scanning algorithms then protocols
    /// (NCCL's `topoGetAlgoInfo`).
    pub fn nccl_pick(&self) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, f32)> = None;
        for (a, p, v) in self.cells() {
            let better = match best {
                None => true,
                Some((_, _, b)) => v < b,
            };
            if live(v) && better {
                best = Some((a, p, v));
            }
        }
        best.map(|(a, p, _)| (a, p))
    }
}

/// A cost NCCL may select: non-negative and below `FLT_MAX` (NaN fails).
fn live(v: f32) -> bool {
    (0.0..f32::MAX).contains(&v)
}

/// What [`Tuner::edit_cost_table`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TableEdit {
    /// The table is unchanged.
    Untouched(Declined),
    /// CollNet entry `(algo, proto)` now costs `cost`, below every other
    /// selectable entry: NCCL picks airamp's compressed collective network.
    ChoseCollNet {
        algo: usize,
        proto: usize,
        cost: f32,
    },
    /// Selectable CollNet entries were raised to at least `floor`, above
    /// the best raw entry: NCCL will not pick CollNet.
    RaisedCollNet { floor: f32 },
}

impl TableEdit {
    /// A short word for logs and log buckets.
    pub fn kind(&self) -> &'static str {
        match self {
            TableEdit::Untouched(_) => "untouched",
            TableEdit::ChoseCollNet { .. } => "compressed-collnet",
            TableEdit::RaisedCollNet { .. } => "collnet-raised",
        }
    }
}

/// One `getCollInfo` call, as far as the rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// `ncclFunc_t`.
    pub func: i32,
    pub bytes: u64,
    /// Operations NCCL aggregates into this one (latency counts per op).
    pub pipe_ops: u32,
}

impl Tuner {
    pub fn new(ranks: usize, nodes: usize, profile: LinkProfile, policy: Policy) -> Tuner {
        Tuner {
            ranks: ranks.max(1),
            nodes: nodes.max(1),
            profile: profile.sanitized(),
            policy,
            link_known: false,
            max_ranks_per_nvlink_domain: None,
        }
    }

    /// The same tuner, told whether its link bandwidth is known
    /// ([`LinkProfile::link_known`]).
    pub fn with_link_known(mut self, known: bool) -> Tuner {
        self.link_known = known;
        self
    }

    /// The same tuner, told the most ranks NCCL found in one NVLink domain.
    pub fn with_max_ranks_per_nvlink_domain(mut self, ranks: Option<usize>) -> Tuner {
        self.max_ranks_per_nvlink_domain = ranks;
        self
    }

    /// The v2 rule: NCCL only says whether CollNet is supported. Returns the
    /// `(algorithm, protocol)` to set, `None` to leave NCCL's choice alone.
    /// CollNet Chain / Simple: Direct needs an NVSwitch, which v2 cannot
    /// see, while Chain works wherever NCCL reports CollNet support.
    pub fn choose_v2(&self, call: Call, collnet_support: bool) -> (Option<(usize, usize)>, Choice) {
        let mut c = decide_allreduce(
            call.bytes,
            self.ranks,
            self.nodes,
            &self.profile,
            &self.policy,
        );
        if call.func != FUNC_ALLREDUCE {
            c.path = Path::Raw;
            c.declined = Declined::NotAllReduce;
        } else if !collnet_support {
            c.path = Path::Raw;
            c.declined = Declined::NoCollNet;
        }
        let pick =
            (c.path == Path::CompressedCollNet).then_some((ALGO_COLLNET_CHAIN, PROTO_SIMPLE));
        (pick, c)
    }

    /// The v3+ rule over NCCL's cost table. Only CollNet entries are ever
    /// written; an ignored entry is never revived; nothing else changes.
    ///
    /// * Compression pays (allreduce, FP8 on, airamp owns CollNet, some
    ///   CollNet entry selectable, predicted time × (1 + min_gain) below the
    ///   best raw entry): the cheapest selectable CollNet entry gets our
    ///   predicted time, clamped below every other selectable entry.
    /// * Otherwise, when airamp owns CollNet: every selectable CollNet entry
    ///   is raised (never lowered) to max(our CollNet prediction, best raw ×
    ///   (1 + min_gain)), strictly above the best raw entry.
    /// * No selectable raw entry, or CollNet not ours: untouched.
    pub fn edit_cost_table(&self, call: Call, table: &mut CostTable<'_>) -> (TableEdit, Choice) {
        let raw_min = table
            .cells()
            .filter(|&(a, _, v)| !is_collnet(a) && live(v))
            .map(|(_, _, v)| v)
            .reduce(f32::min);
        let collnet: Option<(usize, usize, f32)> = table
            .cells()
            .filter(|&(a, _, v)| is_collnet(a) && live(v))
            .fold(None, |best, (a, p, v)| match best {
                Some((_, _, b)) if b <= v => best,
                _ => Some((a, p, v)),
            });
        // NCCL's raw estimate comes from the NIC speed the net plugin
        // reports, which can be far from the real link either way (loopback
        // reports 10 Gbit/s and carries 120 on the H100 host; a 5 Gbit/s
        // link carries 2.5 each way under an allreduce). Take the more
        // optimistic of NCCL's estimate and the ring model on the profile's
        // link, so compression is chosen only where it beats both; when the
        // link's bandwidth is known (measured or configured), no raw
        // algorithm moves the bytes faster than that link allows, so the
        // estimate never drops below its bandwidth bound.
        let mut raw_us = raw_min
            .map_or(f64::INFINITY, f64::from)
            .min(ring_allreduce_us(call.bytes, self.nodes, &self.profile));
        if self.link_known {
            raw_us = raw_us.max(ring_bandwidth_us(call.bytes, self.nodes, &self.profile));
        }
        let mut choice = decide_against(
            call.bytes,
            self.nodes,
            call.pipe_ops.max(1),
            raw_us,
            &self.profile,
            &self.policy,
        );
        let untouched = |mut c: Choice, why: Declined| {
            c.path = Path::Raw;
            if c.declined == Declined::No {
                c.declined = why;
            }
            (TableEdit::Untouched(why), c)
        };
        let Some((ca, cp, _)) = collnet else {
            return untouched(choice, Declined::NoCollNet);
        };
        let Some(raw_min) = raw_min else {
            return untouched(choice, Declined::UnusableTable);
        };
        if !self.policy.owns_collnet {
            return untouched(choice, Declined::ForeignCollNet);
        }
        if call.func != FUNC_ALLREDUCE && choice.declined == Declined::No {
            choice.path = Path::Raw;
            choice.declined = Declined::NotAllReduce;
        }
        if choice.path == Path::CompressedCollNet {
            // Below every other selectable entry, CollNet's sibling included.
            let others_min = table
                .cells()
                .filter(|&(a, p, v)| (a, p) != (ca, cp) && live(v))
                .map(|(_, _, v)| v)
                .fold(f32::MAX, f32::min);
            let cost = (choice.collnet_us as f32).min(below(others_min));
            if !(cost >= 0.0 && cost < others_min) {
                return untouched(choice, Declined::UnusableTable);
            }
            table.set(ca, cp, cost);
            return (
                TableEdit::ChoseCollNet {
                    algo: ca,
                    proto: cp,
                    cost,
                },
                choice,
            );
        }
        // CollNet does not pay: make sure NCCL's in-network model does not
        // pick it anyway.
        let want = (choice.collnet_us as f32).max(raw_min * (1.0 + self.policy.min_gain as f32));
        let floor = if want > raw_min && want < f32::MAX {
            want
        } else {
            above(raw_min)
        };
        if !(floor > raw_min && floor < f32::MAX) {
            return untouched(choice, Declined::UnusableTable);
        }
        let mut raised = false;
        for a in [ALGO_COLLNET_DIRECT, ALGO_COLLNET_CHAIN] {
            for p in 0..table.n_proto {
                let Some(v) = table.get(a, p) else { continue };
                if live(v) && v < floor {
                    table.set(a, p, floor);
                    raised = true;
                }
            }
        }
        if raised {
            (TableEdit::RaisedCollNet { floor }, choice)
        } else {
            (TableEdit::Untouched(choice.declined), choice)
        }
    }

    /// How many NCCL channels this call may use, `None` to keep NCCL's count;
    /// `pick` is the `(algorithm, protocol)` NCCL takes from the edited table.
    ///
    /// One channel for an allreduce of at most `single_channel_bytes` that
    /// NCCL runs as ring or tree, when every hop goes through the net: each
    /// rank a node of its own, and alone in its NVLink domain where NCCL
    /// says. Each hop of each channel is then a message through airamp's
    /// net, and messages of this size travel inline on NCCL's one proxy
    /// thread, so a second channel adds per-message work to that thread
    /// without copying anything in parallel (H200, one channel against two:
    /// 64-512 KiB 1.04-1.45x, 1-2 MiB 0.79-0.89x; docs/tuner.md). Where
    /// other hops are NVLink or PCIe, channels do run in parallel: NCCL's
    /// count stays.
    ///
    /// Every input is the same on every rank (NCCL computes the table and
    /// the domain shape from communicator-wide figures), so ranks given the
    /// same configuration never disagree on the count.
    pub fn channels(&self, call: Call, pick: Option<(usize, usize)>) -> Option<u32> {
        let ring_or_tree = matches!(pick, Some((ALGO_RING | ALGO_TREE, _)));
        let every_hop_is_the_net = self.nodes >= 2
            && self.ranks == self.nodes
            && self.max_ranks_per_nvlink_domain.is_none_or(|r| r <= 1);
        (ring_or_tree
            && every_hop_is_the_net
            && call.func == FUNC_ALLREDUCE
            && self.policy.single_channel_bytes > 0
            && call.bytes <= self.policy.single_channel_bytes)
            .then_some(1)
    }
}

/// The largest f32 below `x` (for `x > 0`), else 0.
fn below(x: f32) -> f32 {
    if x > 0.0 && x.is_finite() {
        let b = f32::from_bits(x.to_bits() - 1);
        b.max(0.0)
    } else if x == f32::INFINITY {
        f32::MAX
    } else {
        0.0
    }
}

/// The smallest f32 above `x` (for finite `x >= 0`).
fn above(x: f32) -> f32 {
    if x.is_finite() && x >= 0.0 {
        if x == 0.0 {
            f32::from_bits(1)
        } else {
            f32::from_bits(x.to_bits() + 1)
        }
    } else {
        x
    }
}
