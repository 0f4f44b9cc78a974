//! The version-independent body of every `ncclTuner` call; `tuner_vN.rs`
//! adapt signatures. The decision itself is [`crate::tuner`] (pure); this
//! file turns C pointers into safe values, logs, counts, and makes sure no
//! error and no panic ever reaches NCCL from `getCollInfo`: to decline, the
//! tuner leaves NCCL's choice alone.

use std::ffi::{c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

use super::bindings::{ncclDebugLogger_t, ncclResult_t};
use super::object::{self, Kind};
use super::{guard, logger, write_out};
use crate::collnet::calibrate::{self, store, Fallback, Figures, NodeView};
use crate::error::{NetError, NetResult};
use crate::tuner::{
    self, collective_name, Call, CostTable, LinkProfile, Policy, ProfileSource, TableEdit, Tuner,
    ALGO_NAMES, PROTO_NAMES,
};
use crate::{config, info, log, metrics, warn};

pub const NAME: &CStr = c"airamp";

/// NCCL's `NCCL_TUNING` log subsystem.
const SUBSYS_TUNING: u64 = 0x40;

/// Bigger cost tables than this are not NCCL's (it passes 6 or 7 x 3).
const MAX_TABLE_DIM: usize = 64;

/// Per-communicator context: `None` when `tuner.enabled` is off (every call
/// is then a no-op).
pub struct Context {
    pub tuner: Option<Tuner>,
    comm_id: Option<u64>,
    /// Wrapping sum of one hash per decision, and the number of decisions:
    /// equal on every rank that made the same decisions for the same calls,
    /// whatever their order (logged at finalize for cross-rank checks).
    digest: AtomicU64,
    calls: AtomicU64,
}

/// What the calibration gave a communicator's tuner.
enum Calibration {
    /// Tuner v2..v4: NCCL names no communicator, so no record can be found.
    NoCommId,
    /// The tuner is off: nothing read.
    Off,
    View(NodeView),
}

impl Calibration {
    fn figures(&self) -> Option<Figures> {
        match self {
            Calibration::View(NodeView::Measured { figures, .. }) => Some(*figures),
            _ => None,
        }
    }

    fn describe(&self, version: u32) -> String {
        match self {
            Calibration::NoCommId => format!(
                "not available to tuner v{version} (no communicator id before v5): every rank uses the configured profile"
            ),
            Calibration::Off => "not read (tuner off)".to_string(),
            Calibration::View(NodeView::NoRecord) => "no record for this communicator on this node (its collective network was not connected by airamp: CollNet off, or shared with a parent communicator): every rank uses the configured profile".to_string(),
            Calibration::View(NodeView::Fallback(Fallback::NotRun)) => "not run in connect (some member did not ask: FP8 off, tuner.calibrate off, all calibration keys set, or collnet < v11): every rank uses the configured profile".to_string(),
            Calibration::View(NodeView::Fallback(Fallback::Failed { member })) => format!(
                "member {member} of a collective-network group failed its measurement: every rank uses the configured profile"
            ),
            Calibration::View(NodeView::Unreadable) => {
                "a record is unreadable (logged): this rank uses the configured profile".to_string()
            }
            Calibration::View(NodeView::Measured { groups, .. }) => format!(
                "agreed in connect by {groups} collective-network group(s)"
            ),
        }
    }
}

/// The records every rank of communicator `comm_id` reads on its node.
fn read_calibration(comm_id: u64) -> NodeView {
    match store::read(comm_id) {
        Ok(records) => calibrate::combine(&records),
        Err(e) => {
            warn!(
                "tuner: calibration record of comm {comm_id:#x} in {}: {e}",
                store::dir().display()
            );
            NodeView::Unreadable
        }
    }
}

fn source_word(s: ProfileSource) -> &'static str {
    match s {
        ProfileSource::Agreed => "agreed",
        ProfileSource::AgreedWithConfig => "agreed_config",
        ProfileSource::Calibrated => "config",
        ProfileSource::Partial => "config_partial",
        ProfileSource::Defaults => "default",
    }
}

impl Context {
    /// The context for communicator `comm_id` (tuner v5+) of `ranks` GPUs
    /// on `nodes` nodes, from the process's configuration and the
    /// calibration record on this node; and its one init log line's tail.
    fn new(
        ranks: usize,
        nodes: usize,
        comm_id: Option<u64>,
        version: u32,
        max_ranks_per_nvlink_domain: Option<usize>,
    ) -> (Context, String) {
        let cfg = config::global();
        let calibration = match comm_id {
            _ if !cfg.tuner.enabled => Calibration::Off,
            None => Calibration::NoCommId,
            Some(id) => Calibration::View(read_calibration(id)),
        };
        let context = |tuner| Context {
            tuner,
            comm_id,
            digest: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        };
        if !cfg.tuner.enabled {
            return (context(None), String::new());
        }
        let agreed = calibration.figures();
        let (profile, source) = LinkProfile::resolve(&cfg.tuner, agreed.as_ref());
        let policy = Policy::from_config(cfg);
        let tuner = Tuner::new(ranks, nodes, profile, policy)
            .with_link_known(LinkProfile::link_known(&cfg.tuner, agreed.as_ref()))
            .with_max_ranks_per_nvlink_domain(max_ranks_per_nvlink_domain);
        let crossover = tuner::crossover_bytes(tuner.nodes, &tuner.profile, &tuner.policy);
        metrics::calibration().tuner_profile(&metrics::TunerProfile {
            comm: comm_id,
            source: source_word(source),
            gbps: tuner.profile.gbps,
            latency_us: tuner.profile.latency_us,
            encode_gvps: tuner.profile.encode_gvps,
            decode_gvps: tuner.profile.decode_gvps,
            crossover_bytes: crossover,
        });
        let note = format!(
            "; calibration {}; profile ({source}): {}; model crossover: {}",
            calibration.describe(version),
            tuner.profile,
            match (crossover, tuner.policy.fp8) {
                (_, None) => "none (FP8 allreduce off)".to_string(),
                (Some(b), _) => format!("compressed CollNet from {b} B"),
                (None, _) => "compressed CollNet at no size up to 1 GiB".to_string(),
            }
        );
        (context(Some(tuner)), note)
    }
}

/// `init` of every version: installs NCCL's logger, writes a new context.
/// `comm_id` is NCCL's communicator id (v5+).
///
/// # Safety
/// `ctx` must be null or valid for a write of a pointer.
#[allow(clippy::too_many_arguments)]
pub unsafe fn init(
    version: u32,
    ctx: *mut *mut c_void,
    comm_id: Option<u64>,
    ranks: usize,
    nodes: usize,
    max_ranks_per_nvlink_domain: Option<usize>,
    logger_fn: ncclDebugLogger_t,
    extra: &str,
) -> NetResult<()> {
    logger::install(logger_fn);
    object::watch_forks();
    if ctx.is_null() {
        return Err(NetError::InvalidArgument(
            "tuner context pointer is NULL".into(),
        ));
    }
    // Building the context reads the config; a panic there must not fail
    // NCCL's init: fall back to a disabled tuner.
    let (context, note) = catch_unwind(|| {
        Context::new(ranks, nodes, comm_id, version, max_ranks_per_nvlink_domain)
    })
    .unwrap_or_else(|_| {
        warn!("tuner: internal error while reading the configuration; tuner off, NCCL decides");
        (
            Context {
                tuner: None,
                comm_id,
                digest: AtomicU64::new(0),
                calls: AtomicU64::new(0),
            },
            String::new(),
        )
    });
    log_init(version, ranks, nodes, &context, extra, &note);
    // SAFETY: non-null, and valid for writes per the caller's contract.
    unsafe { write_out(ctx, object::into_raw(Kind::Tuner, context), "context") }
}

fn log_init(version: u32, ranks: usize, nodes: usize, context: &Context, extra: &str, note: &str) {
    let Some(t) = &context.tuner else {
        info!(
            log::SUBSYS_INIT | SUBSYS_TUNING,
            "tuner v{version}: off (tuner.enabled / AIRAMP_TUNER); NCCL's choices stand"
        );
        return;
    };
    let fp8 = t
        .policy
        .fp8
        .map_or("off: CollNet never chosen".to_string(), |f| {
            format!(
                "{f}, chosen where predicted {}% faster",
                t.policy.min_gain * 100.0
            )
        });
    info!(
        log::SUBSYS_INIT | SUBSYS_TUNING,
        "tuner v{version}: {ranks} ranks on {nodes} nodes{extra}; fp8 allreduce {fp8}{note}"
    );
}

/// `finalize` / `destroy` of every version.
///
/// # Safety
/// `ctx` must be a pointer from [`init`] not yet finalized.
pub unsafe fn finalize(ctx: *mut c_void) -> NetResult<()> {
    // SAFETY: per the caller's contract; the tag check rejects foreign pointers.
    let context = unsafe { object::take::<Context>(ctx, Kind::Tuner) }?;
    let calls = context.calls.load(Ordering::Relaxed);
    if context.tuner.is_some() && calls > 0 {
        info!(
            SUBSYS_TUNING,
            "tuner: comm {}: {calls} decisions, digest {:#018x} (equal on every rank that decided alike)",
            context.comm_id.map_or("(no id)".to_string(), |c| format!("{c:#x}")),
            context.digest.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// One decision's contribution to a context's digest: the call and the
/// (algorithm, protocol) NCCL runs after the tuner (`None`: NCCL decides).
pub fn decision_hash(
    func: i32,
    bytes: u64,
    pipe_ops: i32,
    pick: Option<(usize, usize)>,
    channels: Option<u32>,
) -> u64 {
    let (a, p) = pick.map_or((u64::MAX, u64::MAX), |(a, p)| (a as u64, p as u64));
    let c = channels.map_or(u64::MAX, u64::from);
    [func as u64, bytes, pipe_ops as u64, a, p, c]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// Runs `f` on the context and swallows every failure: `getCollInfo` never
/// returns an error to NCCL. A failure is logged once per process. `f`
/// returns its decision's [`decision_hash`], added to the context's digest.
fn never_fail(ctx: *mut c_void, f: impl FnOnce(&Tuner) -> Option<u64>) -> ncclResult_t {
    static WARNED: AtomicU64 = AtomicU64::new(0);
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: NCCL passes back the context our init wrote; the tag
        // check rejects anything else (a null or foreign pointer).
        let context = unsafe { object::get_mut::<Context>(ctx, Kind::Tuner) }?;
        if let Some(t) = &context.tuner {
            if let Some(h) = f(t) {
                context.digest.fetch_add(h, Ordering::Relaxed);
                context.calls.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok::<(), NetError>(())
    }));
    let what = match r {
        Ok(Ok(())) => return ncclResult_t::ncclSuccess,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "internal error (panic)".to_string(),
    };
    if WARNED.fetch_add(1, Ordering::Relaxed) == 0 {
        warn!("tuner getCollInfo: {what}; leaving NCCL's choice alone (logged once)");
    }
    ncclResult_t::ncclSuccess
}

/// Log-once buckets: (collective, log2 of bytes, outcome), one bit each.
const BUCKET_FUNCS: usize = 16;
const BUCKET_SIZES: usize = 65;
const BUCKET_OUTCOMES: usize = 5;
static LOGGED: [AtomicU64; (BUCKET_FUNCS * BUCKET_SIZES * BUCKET_OUTCOMES).div_ceil(64)] =
    [const { AtomicU64::new(0) }; (BUCKET_FUNCS * BUCKET_SIZES * BUCKET_OUTCOMES).div_ceil(64)];

/// True the first time this bucket is seen in the process (lock-free).
fn first_in_bucket(func: i32, bytes: u64, outcome: usize) -> bool {
    let f = usize::try_from(func).map_or(BUCKET_FUNCS - 1, |f| f.min(BUCKET_FUNCS - 1));
    let size = if bytes == 0 {
        0
    } else {
        64 - bytes.leading_zeros() as usize
    };
    let bit = (f * BUCKET_SIZES + size) * BUCKET_OUTCOMES + outcome.min(BUCKET_OUTCOMES - 1);
    let mask = 1u64 << (bit % 64);
    LOGGED[bit / 64].fetch_or(mask, Ordering::Relaxed) & mask == 0
}

fn pair_name(pick: Option<(usize, usize)>) -> String {
    pick.map_or("left to NCCL".to_string(), |(a, p)| {
        format!(
            "{}/{}",
            ALGO_NAMES.get(a).copied().unwrap_or("?"),
            PROTO_NAMES.get(p).copied().unwrap_or("?")
        )
    })
}

fn ms(us: f64) -> String {
    if us.is_finite() {
        format!("{:.3} ms", us / 1e3)
    } else {
        "n/a".to_string()
    }
}

/// `getCollInfo` of v3..v6: edits NCCL's cost table in place.
///
/// # Safety
/// `ctx` must come from [`init`]; `table` must be null or point at
/// `n_algo * n_proto` contiguous, writable `f32` (NCCL passes its
/// `float[numAlgo][numProto]` cast to `float**`); `n_channels` must be null
/// or valid and aligned for writes of an `int`. It is written only where
/// [`Tuner::channels`] caps the count, never read.
#[allow(clippy::too_many_arguments)]
pub unsafe fn coll_info_table(
    ctx: *mut c_void,
    func: i32,
    bytes: usize,
    pipe_ops: c_int,
    table: *mut *mut f32,
    n_algo: c_int,
    n_proto: c_int,
    n_channels: *mut c_int,
) -> ncclResult_t {
    never_fail(ctx, |t| {
        let (Ok(na), Ok(np)) = (usize::try_from(n_algo), usize::try_from(n_proto)) else {
            return None;
        };
        if table.is_null() || na == 0 || np == 0 || na > MAX_TABLE_DIM || np > MAX_TABLE_DIM {
            return None;
        }
        // SAFETY: per the contract, `table` is NCCL's contiguous
        // float[numAlgo][numProto] (the `float**` type is a cast), with the
        // dimensions checked above; nothing else touches it during the call.
        let cells = unsafe { std::slice::from_raw_parts_mut(table.cast::<f32>(), na * np) };
        let mut table = CostTable::new(cells, na, np)?;
        let call = Call {
            func,
            bytes: bytes as u64,
            pipe_ops: u32::try_from(pipe_ops).unwrap_or(1),
        };
        let (edit, choice) = t.edit_cost_table(call, &mut table);
        let pick = table.nccl_pick();
        let channels = t.channels(call, pick).filter(|_| !n_channels.is_null());
        if let Some(n) = channels {
            // SAFETY: non-null, and per the contract valid for an int write.
            unsafe { n_channels.write(c_int::try_from(n).unwrap_or(1)) };
        }
        metrics::tuner_decision(func, pick.map(|p| p.0), pick.map(|p| p.1));
        let outcome = match (edit, channels) {
            (TableEdit::Untouched(_), None) => 0,
            (TableEdit::Untouched(_), Some(_)) => 3,
            (TableEdit::ChoseCollNet { .. }, _) => 1,
            (TableEdit::RaisedCollNet { .. }, None) => 2,
            (TableEdit::RaisedCollNet { .. }, Some(_)) => 4,
        };
        if first_in_bucket(func, call.bytes, outcome) {
            let why = match edit {
                TableEdit::Untouched(d) => format!(" ({d:?})"),
                _ => String::new(),
            };
            info!(
                SUBSYS_TUNING,
                "tuner: {} of {} B on {} nodes: {}{why}; NCCL runs {}{}; predicted collnet {} vs raw {} (first of its size bucket, not logged again)",
                collective_name(func),
                bytes,
                t.nodes,
                edit.kind(),
                pair_name(pick),
                channels.map_or(String::new(), |n| format!(" on {n} channel(s)")),
                ms(choice.collnet_us),
                ms(choice.raw_us),
            );
        }
        Some(decision_hash(func, call.bytes, pipe_ops, pick, channels))
    })
}

/// `getCollInfo` of v2: sets `algorithm`/`protocol` only when choosing
/// CollNet; otherwise leaves them (and always `nChannels`) untouched.
///
/// # Safety
/// `ctx` must come from [`init`]; `algorithm` and `protocol` must be null or
/// valid for writes of an `int`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn coll_info_v2(
    ctx: *mut c_void,
    func: i32,
    bytes: usize,
    collnet_support: c_int,
    pipe_ops: c_int,
    algorithm: *mut c_int,
    protocol: *mut c_int,
) -> ncclResult_t {
    never_fail(ctx, |t| {
        let call = Call {
            func,
            bytes: bytes as u64,
            pipe_ops: u32::try_from(pipe_ops).unwrap_or(1),
        };
        let (pick, choice) = t.choose_v2(call, collnet_support == 1);
        let mut written = None;
        if let Some((a, p)) = pick {
            if !algorithm.is_null() && !protocol.is_null() {
                // SAFETY: non-null int pointers from NCCL, valid for writes.
                unsafe {
                    algorithm.write(a as c_int);
                    protocol.write(p as c_int);
                }
                written = pick;
            }
        }
        metrics::tuner_decision(func, written.map(|p| p.0), written.map(|p| p.1));
        let outcome = usize::from(written.is_some());
        if first_in_bucket(func, call.bytes, outcome) {
            info!(
                SUBSYS_TUNING,
                "tuner: {} of {} B on {} nodes: {} ({:?}); predicted collnet {} vs raw ring {} (first of its size bucket, not logged again)",
                collective_name(func),
                bytes,
                t.nodes,
                pair_name(written),
                choice.declined,
                ms(choice.collnet_us),
                ms(choice.raw_us),
            );
        }
        Some(decision_hash(func, call.bytes, pipe_ops, written, None))
    })
}

/// `init` wrapped for the vtables: a guard turns failures into NCCL codes.
///
/// # Safety
/// As for [`init`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn init_guarded(
    version: u32,
    ctx: *mut *mut c_void,
    comm_id: Option<u64>,
    ranks: usize,
    nodes: usize,
    max_ranks_per_nvlink_domain: Option<usize>,
    logger_fn: ncclDebugLogger_t,
    extra: &str,
) -> ncclResult_t {
    // SAFETY: forwarded contract.
    guard("tuner init", || unsafe {
        init(
            version,
            ctx,
            comm_id,
            ranks,
            nodes,
            max_ranks_per_nvlink_domain,
            logger_fn,
            extra,
        )
    })
}

/// `finalize` wrapped for the vtables.
///
/// # Safety
/// As for [`finalize`].
pub unsafe fn finalize_guarded(ctx: *mut c_void) -> ncclResult_t {
    // SAFETY: forwarded contract.
    guard("tuner finalize", || unsafe { finalize(ctx) })
}

#[cfg(test)]
mod tests {
    //! Calls the exported vtables exactly as NCCL does: through the
    //! function pointers of `ncclTunerPlugin_v2` .. `v6`.

    use std::ffi::{c_int, c_void};
    use std::ptr::{null_mut, NonNull};

    use super::super::bindings::{ncclFunc_t, ncclResult_t};
    use super::super::object::{self, Kind};
    use super::super::{tuner_v2, tuner_v3, tuner_v4, tuner_v5, tuner_v6};
    use super::Context;
    use crate::codec::WireFormat;
    use crate::tuner::{
        LinkProfile, Policy, Tuner, ALGO_COLLNET_CHAIN, ALGO_COLLNET_DIRECT, ALGO_RING, ALGO_TREE,
        IGNORE, PROTO_LL, PROTO_SIMPLE,
    };

    /// The tuner's own copies of NCCL's indices match the ABI headers.
    #[test]
    fn nccl_indices_and_ignore_value() {
        use super::super::bindings as b;
        use crate::tuner::*;
        assert_eq!(ALGO_TREE as i32, b::NCCL_ALGO_TREE);
        assert_eq!(ALGO_RING as i32, b::NCCL_ALGO_RING);
        assert_eq!(ALGO_COLLNET_DIRECT as i32, b::NCCL_ALGO_COLLNET_DIRECT);
        assert_eq!(ALGO_COLLNET_CHAIN as i32, b::NCCL_ALGO_COLLNET_CHAIN);
        assert_eq!(ALGO_NVLS as i32, b::NCCL_ALGO_NVLS);
        assert_eq!(ALGO_NVLS_TREE as i32, b::NCCL_ALGO_NVLS_TREE);
        assert_eq!(ALGO_PAT as i32, b::NCCL_ALGO_PAT);
        assert_eq!(PROTO_LL as i32, b::NCCL_PROTO_LL);
        assert_eq!(PROTO_LL128 as i32, b::NCCL_PROTO_LL128);
        assert_eq!(PROTO_SIMPLE as i32, b::NCCL_PROTO_SIMPLE);
        assert_eq!(IGNORE as f64, b::NCCL_ALGO_PROTO_IGNORE);
        assert_eq!(FUNC_ALLREDUCE, b::ncclFunc_t::ncclFuncAllReduce.0 as i32);
        assert_eq!(collective_name(FUNC_ALLREDUCE), "allreduce");
        assert_eq!(collective_name(-3), "other");
        assert_eq!(collective_name(99), "other");
    }

    const OK: ncclResult_t = ncclResult_t::ncclSuccess;
    const ALLREDUCE: ncclFunc_t = ncclFunc_t::ncclFuncAllReduce;
    const BIG: usize = 256 << 20;

    /// A context whose tuner compresses on a 5 Gbit/s link between 2 nodes.
    fn slow_link_ctx() -> *mut c_void {
        let profile = LinkProfile {
            gbps: 5.0,
            ..LinkProfile::default()
        };
        let policy = Policy {
            fp8: Some(WireFormat::E4M3),
            min_gain: 0.1,
            owns_collnet: true,
            single_channel_bytes: 512 << 10,
        };
        object::into_raw(
            Kind::Tuner,
            Context {
                tuner: Some(Tuner::new(2, 2, profile, policy)),
                comm_id: None,
                digest: Default::default(),
                calls: Default::default(),
            },
        )
    }

    /// 7 x 3 table: ring/tree entries, CollNet Chain and Direct Simple
    /// costlier than ring, every LL128 entry ignored.
    fn table() -> [[f32; 3]; 7] {
        let mut t = [[IGNORE; 3]; 7];
        t[ALGO_TREE] = [900_000.0, IGNORE, 500_000.0];
        t[ALGO_RING] = [800_000.0, IGNORE, 430_000.0];
        t[ALGO_COLLNET_DIRECT][PROTO_SIMPLE] = 600_000.0;
        t[ALGO_COLLNET_CHAIN][PROTO_SIMPLE] = 550_000.0;
        t
    }

    type TableFn = unsafe fn(*mut c_void, usize, *mut [[f32; 3]; 7], *mut c_int) -> ncclResult_t;

    fn table_fns() -> Vec<(&'static str, TableFn)> {
        vec![
            ("v3", |ctx, bytes, t, nch| {
                let f = tuner_v3::ncclTunerPlugin_v3.0.getCollInfo.unwrap();
                // SAFETY: test context and a live 7x3 table.
                unsafe { f(ctx, ALLREDUCE, bytes, 1, t.cast(), 7, 3, nch) }
            }),
            ("v4", |ctx, bytes, t, nch| {
                let f = tuner_v4::ncclTunerPlugin_v4.0.getCollInfo.unwrap();
                // SAFETY: as above.
                unsafe { f(ctx, ALLREDUCE, bytes, 1, t.cast(), 7, 3, 0, nch) }
            }),
            ("v5", |ctx, bytes, t, nch| {
                let f = tuner_v5::ncclTunerPlugin_v5.0.getCollInfo.unwrap();
                // SAFETY: as above.
                unsafe { f(ctx, ALLREDUCE, bytes, 1, t.cast(), 7, 3, 1, nch) }
            }),
            ("v6", |ctx, bytes, t, nch| {
                let f = tuner_v6::ncclTunerPlugin_v6.0.getCollInfo.unwrap();
                // SAFETY: as above.
                unsafe { f(ctx, ALLREDUCE, bytes, 1, t.cast(), 7, 3, 0, nch) }
            }),
        ]
    }

    #[test]
    fn v3_to_v6_edit_only_collnet_never_revive_and_cap_channels_of_small_raw_allreduce() {
        for (v, get) in table_fns() {
            let ctx = slow_link_ctx();
            let mut t = table();
            let mut nch: c_int = 0;
            // SAFETY: ctx from into_raw, live table and int.
            assert_eq!(unsafe { get(ctx, BIG, &mut t, &mut nch) }, OK, "{v}");
            assert_eq!(nch, 0, "{v}: nChannels untouched");
            let before = table();
            // Chain was the cheaper CollNet entry: now below everything.
            let chain = t[ALGO_COLLNET_CHAIN][PROTO_SIMPLE];
            assert!((0.0..430_000.0).contains(&chain), "{v}: {chain}");
            for a in 0..7 {
                for p in 0..3 {
                    if (a, p) != (ALGO_COLLNET_CHAIN, PROTO_SIMPLE) {
                        assert_eq!(t[a][p].to_bits(), before[a][p].to_bits(), "{v} [{a}][{p}]");
                        assert!(t[a][p] == IGNORE || t[a][p] > chain);
                    }
                }
            }
            // A small message: CollNet raised above ring, nothing else moves.
            let mut t = table();
            t[ALGO_COLLNET_CHAIN][PROTO_SIMPLE] = 1.0;
            t[ALGO_RING][PROTO_SIMPLE] = 20.0;
            // SAFETY: as above.
            assert_eq!(unsafe { get(ctx, 4096, &mut t, &mut nch) }, OK);
            assert!(t[ALGO_COLLNET_CHAIN][PROTO_SIMPLE] > 20.0, "{v}");
            assert_eq!(t[ALGO_COLLNET_CHAIN][PROTO_LL], IGNORE);
            assert_eq!(t[ALGO_RING][PROTO_SIMPLE], 20.0);
            // Ring at 4 KiB, one rank per node: one channel.
            assert_eq!(nch, 1, "{v}");
            // NULL nChannels: nothing written, no failure.
            let mut t = table();
            t[ALGO_RING][PROTO_SIMPLE] = 20.0;
            // SAFETY: as above; the shim checks the NULL.
            assert_eq!(unsafe { get(ctx, 4096, &mut t, null_mut()) }, OK);
            finalize(v, ctx);
        }
    }

    fn finalize(v: &str, ctx: *mut c_void) {
        let f = match v {
            "v2" => tuner_v2::ncclTunerPlugin_v2.0.destroy,
            "v3" => tuner_v3::ncclTunerPlugin_v3.0.destroy,
            "v4" => tuner_v4::ncclTunerPlugin_v4.0.destroy,
            "v5" => tuner_v5::ncclTunerPlugin_v5.0.finalize,
            _ => tuner_v6::ncclTunerPlugin_v6.0.finalize,
        }
        .unwrap();
        // SAFETY: a live context, finalized once.
        assert_eq!(unsafe { f(ctx) }, OK, "{v} finalize");
    }

    #[test]
    fn a_disabled_tuner_writes_no_channel_count() {
        for (v, get) in table_fns() {
            let ctx = object::into_raw(
                Kind::Tuner,
                Context {
                    tuner: None,
                    comm_id: None,
                    digest: Default::default(),
                    calls: Default::default(),
                },
            );
            let mut t = table();
            t[ALGO_RING][PROTO_SIMPLE] = 20.0;
            let before = t;
            let mut nch: c_int = 0;
            // SAFETY: a live context, table and int.
            assert_eq!(unsafe { get(ctx, 4096, &mut t, &mut nch) }, OK, "{v}");
            assert_eq!(nch, 0, "{v}");
            assert_eq!(t, before, "{v}");
            finalize(v, ctx);
        }
    }

    #[test]
    fn garbage_never_becomes_an_error() {
        for (v, get) in table_fns() {
            let mut t = table();
            let mut nch: c_int = 3;
            // NULL context: success, table untouched.
            // SAFETY: the shim checks the context's tag before use.
            assert_eq!(unsafe { get(null_mut(), BIG, &mut t, &mut nch) }, OK, "{v}");
            assert_eq!(t, table());
            assert_eq!(nch, 3);
        }
        let ctx = slow_link_ctx();
        let f = tuner_v4::ncclTunerPlugin_v4.0.getCollInfo.unwrap();
        // NULL table, absurd dimensions: success, nothing read.
        // SAFETY: nothing is dereferenced for these shapes.
        unsafe {
            assert_eq!(
                f(ctx, ALLREDUCE, BIG, 1, null_mut(), 7, 3, 0, null_mut()),
                OK
            );
            let mut t = table();
            let p: *mut *mut f32 = (&mut t as *mut [[f32; 3]; 7]).cast();
            assert_eq!(f(ctx, ALLREDUCE, BIG, 1, p, -7, 3, 0, null_mut()), OK);
            assert_eq!(f(ctx, ALLREDUCE, BIG, 1, p, 7, 100_000, 0, null_mut()), OK);
            assert_eq!(t, table());
        }
        finalize("v4", ctx);
    }

    #[test]
    fn v2_sets_algorithm_and_protocol_only_to_choose_collnet() {
        let f = tuner_v2::ncclTunerPlugin_v2.0.getCollInfo.unwrap();
        let ctx = slow_link_ctx();
        let bcast = ncclFunc_t::ncclFuncBroadcast;
        let (mut algo, mut proto, mut nch) = (-1, -1, 0);
        // Arguments: ctx, collType, nBytes, collNetSupport, nvlsSupport,
        // numPipeOps, algorithm, protocol, nChannels.
        // SAFETY: live context and int pointers (or NULL, which is checked).
        unsafe {
            assert_eq!(
                f(ctx, ALLREDUCE, BIG, 0, 0, 1, &mut algo, &mut proto, &mut nch),
                OK
            );
            assert_eq!((algo, proto), (-1, -1), "no CollNet support");
            assert_eq!(
                f(ctx, ALLREDUCE, 4096, 1, 0, 1, &mut algo, &mut proto, &mut nch),
                OK
            );
            assert_eq!((algo, proto), (-1, -1), "small message");
            assert_eq!(
                f(ctx, bcast, BIG, 1, 0, 1, &mut algo, &mut proto, &mut nch),
                OK
            );
            assert_eq!((algo, proto), (-1, -1), "not an allreduce");
            assert_eq!(
                f(
                    ctx,
                    ALLREDUCE,
                    BIG,
                    1,
                    0,
                    1,
                    null_mut(),
                    null_mut(),
                    null_mut()
                ),
                OK
            );
            assert_eq!(
                f(ctx, ALLREDUCE, BIG, 1, 0, 1, &mut algo, &mut proto, &mut nch),
                OK
            );
        }
        assert_eq!(
            (algo, proto),
            (ALGO_COLLNET_CHAIN as c_int, PROTO_SIMPLE as c_int)
        );
        assert_eq!(nch, 0, "nChannels untouched");
        finalize("v2", ctx);
    }

    #[test]
    fn init_with_null_logger_and_finalize_every_version() {
        let mut ctxs: Vec<(&str, *mut c_void)> = Vec::new();
        let mut c: *mut c_void = null_mut();
        // SAFETY: a writable context pointer, NULL logger (stderr fallback).
        unsafe {
            assert_eq!(
                (tuner_v2::ncclTunerPlugin_v2.0.init.unwrap())(4, 2, None, &mut c),
                OK
            );
            ctxs.push(("v2", c));
            assert_eq!(
                (tuner_v3::ncclTunerPlugin_v3.0.init.unwrap())(4, 2, None, &mut c),
                OK
            );
            ctxs.push(("v3", c));
            assert_eq!(
                (tuner_v4::ncclTunerPlugin_v4.0.init.unwrap())(4, 2, None, &mut c),
                OK
            );
            ctxs.push(("v4", c));
            let f5 = tuner_v5::ncclTunerPlugin_v5.0.init.unwrap();
            assert_eq!(f5(&mut c, 0xabc, 4, 2, None, null_mut(), null_mut()), OK);
            ctxs.push(("v5", c));
            let f6 = tuner_v6::ncclTunerPlugin_v6.0.init.unwrap();
            let mut nvl: super::super::bindings::ncclNvlDomainInfo_v6_t = std::mem::zeroed();
            let mut k: super::super::bindings::ncclTunerConstants_v6_t = std::mem::zeroed();
            assert_eq!(f6(&mut c, 0xdef, 4, 2, None, &mut nvl, &mut k), OK);
            ctxs.push(("v6", c));
            // A NULL context pointer is the one init error (nowhere to write).
            assert_ne!(f6(null_mut(), 1, 4, 2, None, null_mut(), null_mut()), OK);
        }
        for (v, ctx) in ctxs {
            assert!(NonNull::new(ctx).is_some(), "{v}");
            // With the default config (FP8 off) getCollInfo works and never chooses CollNet.
            if v != "v2" {
                let mut t = table();
                let get = table_fns().into_iter().find(|(n, _)| *n == v).unwrap().1;
                // SAFETY: live context and table.
                assert_eq!(unsafe { get(ctx, BIG, &mut t, null_mut()) }, OK);
                assert!(t[ALGO_COLLNET_CHAIN][PROTO_SIMPLE] >= 430_000.0);
            }
            finalize(v, ctx);
        }
        // Finalizing NULL is an error code, not a crash.
        // SAFETY: NULL is rejected before any access.
        let r = unsafe { (tuner_v5::ncclTunerPlugin_v5.0.finalize.unwrap())(null_mut()) };
        assert_ne!(r, OK);
    }

    #[test]
    fn names_and_optional_slots() {
        use std::ffi::CStr;
        // SAFETY: every name is our 'static C string.
        unsafe {
            for name in [
                tuner_v2::ncclTunerPlugin_v2.0.name,
                tuner_v3::ncclTunerPlugin_v3.0.name,
                tuner_v4::ncclTunerPlugin_v4.0.name,
                tuner_v5::ncclTunerPlugin_v5.0.name,
                tuner_v6::ncclTunerPlugin_v6.0.name,
            ] {
                assert_eq!(CStr::from_ptr(name).to_str().unwrap(), "airamp");
            }
        }
        // NCCL calls getChunkSize only when non-NULL: we leave chunks to NCCL.
        assert!(tuner_v6::ncclTunerPlugin_v6.0.getChunkSize.is_none());
    }
}
