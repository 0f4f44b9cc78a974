//! Collective-network metrics: calls by dtype and path, bytes before and
//! after compression, a sampled FP8 error and call latency. Lock-free,
//! allocation-free recording like the rest.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::histogram::Histogram;
use super::render::header;
use super::{LATENCY_BOUNDS_NS, LATENCY_BUCKETS};
use crate::collnet::pola::Seen;
use crate::collnet::{DataType, Path};

const DTYPES: [&str; 10] = [
    "int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64",
    "bfloat16",
];
const PATHS: [&str; 2] = ["exact", "fp8"];

fn dtype_index(d: DataType) -> usize {
    match d {
        DataType::I8 => 0,
        DataType::U8 => 1,
        DataType::I32 => 2,
        DataType::U32 => 3,
        DataType::I64 => 4,
        DataType::U64 => 5,
        DataType::F16 => 6,
        DataType::F32 => 7,
        DataType::F64 => 8,
        DataType::Bf16 => 9,
    }
}

fn path_index(p: Path) -> usize {
    match p {
        Path::Exact => 0,
        Path::Compressed(_) => 1,
    }
}

pub struct CollnetMetrics {
    ops: [[AtomicU64; PATHS.len()]; DTYPES.len()],
    bytes_in: [AtomicU64; PATHS.len()],
    wire_bytes: [AtomicU64; PATHS.len()],
    latency: [Histogram<LATENCY_BUCKETS>; PATHS.len()],
    /// Sum of sampled relative errors, in parts per billion, and samples.
    error_ppb_sum: AtomicU64,
    error_samples: AtomicU64,
    pool_hits: AtomicU64,
    pool_misses: AtomicU64,
    pool_held: AtomicU64,
    /// Calls on GPU buffers: run by kernels, or staged through mirrors.
    gpu_calls: [AtomicU64; 2],
    gpu_pinned: AtomicU64,
    gpu_context: AtomicU64,
    /// Pinned mirrors of registered GPU buffers, TCP's and the collective
    /// network's, and the registrations `gpu.mirror_budget` refused.
    gpu_mirrors: AtomicU64,
    gpu_mirror_refusals: AtomicU64,
    /// Calls against their group's call pattern: learning, hit, miss.
    pola_calls: [AtomicU64; 3],
    pola_locks: AtomicU64,
    pola_locked_groups: AtomicU64,
}

static COLLNET: CollnetMetrics = CollnetMetrics {
    ops: [const { [const { AtomicU64::new(0) }; PATHS.len()] }; DTYPES.len()],
    bytes_in: [const { AtomicU64::new(0) }; PATHS.len()],
    wire_bytes: [const { AtomicU64::new(0) }; PATHS.len()],
    latency: [const { Histogram::new() }; PATHS.len()],
    error_ppb_sum: AtomicU64::new(0),
    error_samples: AtomicU64::new(0),
    pool_hits: AtomicU64::new(0),
    pool_misses: AtomicU64::new(0),
    pool_held: AtomicU64::new(0),
    gpu_calls: [const { AtomicU64::new(0) }; 2],
    gpu_pinned: AtomicU64::new(0),
    gpu_context: AtomicU64::new(0),
    gpu_mirrors: AtomicU64::new(0),
    gpu_mirror_refusals: AtomicU64::new(0),
    pola_calls: [const { AtomicU64::new(0) }; 3],
    pola_locks: AtomicU64::new(0),
    pola_locked_groups: AtomicU64::new(0),
};

const POLA_RESULTS: [&str; 3] = ["learning", "hit", "miss"];

/// How a call on GPU buffers runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuCall {
    /// FP8 allreduce by the codec kernels.
    Kernels = 0,
    /// Copied to pinned mirrors, run by the host executor, copied back.
    Staged = 1,
}

const GPU_CALLS: [&str; 2] = ["kernels", "staged"];

pub fn collnet() -> &'static CollnetMetrics {
    &COLLNET
}

impl CollnetMetrics {
    /// A call finished: `bytes` of user data, `wire` bytes this member sent.
    pub fn op_done(&self, dtype: DataType, path: Path, bytes: usize, wire: u64, took: Duration) {
        let p = path_index(path);
        self.ops[dtype_index(dtype)][p].fetch_add(1, Relaxed);
        self.bytes_in[p].fetch_add(bytes as u64, Relaxed);
        self.wire_bytes[p].fetch_add(wire, Relaxed);
        self.latency[p].observe(&LATENCY_BOUNDS_NS, took.as_nanos() as u64);
    }

    /// One sampled relative L2 error of an FP8 quantization.
    pub fn fp8_error_sample(&self, rel: f64) {
        if rel.is_finite() {
            self.error_ppb_sum.fetch_add((rel * 1e9) as u64, Relaxed);
            self.error_samples.fetch_add(1, Relaxed);
        }
    }
}

impl CollnetMetrics {
    /// A staging buffer was served from the pool (hit) or allocated.
    pub fn pool_lookup(&self, hit: bool) {
        if hit {
            self.pool_hits.fetch_add(1, Relaxed);
        } else {
            self.pool_misses.fetch_add(1, Relaxed);
        }
    }

    /// Bytes the pool now holds.
    pub fn pool_held(&self, bytes: usize) {
        self.pool_held.store(bytes as u64, Relaxed);
    }

    /// A call on GPU buffers started.
    pub fn gpu_call(&self, how: GpuCall) {
        self.gpu_calls[how as usize].fetch_add(1, Relaxed);
    }

    /// A call was seen against its group's call pattern. A lock and a
    /// miss move the gauge of locked groups.
    pub fn pola_call(&self, seen: Seen) {
        let result = match seen {
            Seen::Learning => 0,
            Seen::Locked { .. } => {
                self.pola_locks.fetch_add(1, Relaxed);
                self.pola_locked_groups.fetch_add(1, Relaxed);
                0
            }
            Seen::Hit => 1,
            Seen::Miss => {
                self.pola_locked_groups.fetch_sub(1, Relaxed);
                2
            }
        };
        self.pola_calls[result].fetch_add(1, Relaxed);
    }

    /// A locked group closed.
    pub fn pola_unlocked(&self) {
        self.pola_locked_groups.fetch_sub(1, Relaxed);
    }

    /// Pinned host memory for GPU buffers (mirrors, staging slots) was
    /// allocated (`delta > 0`) or freed.
    pub fn gpu_pinned(&self, delta: i64) {
        add_signed(&self.gpu_pinned, delta);
    }

    /// A pinned mirror of a registered GPU buffer was allocated
    /// (`delta > 0`) or freed.
    pub fn gpu_mirrors(&self, delta: i64) {
        add_signed(&self.gpu_mirrors, delta);
    }

    /// `gpu.mirror_budget` refused a registration.
    pub fn gpu_mirror_refused(&self) {
        self.gpu_mirror_refusals.fetch_add(1, Relaxed);
    }

    /// airamp's own CUDA context on a device took `bytes` of its memory
    /// (one per device and process, never freed).
    pub fn gpu_context(&self, bytes: u64) {
        self.gpu_context.fetch_add(bytes, Relaxed);
    }
}

/// Adds `delta` (negative: subtracts) to a gauge.
fn add_signed(gauge: &AtomicU64, delta: i64) {
    if delta >= 0 {
        gauge.fetch_add(delta as u64, Relaxed);
    } else {
        gauge.fetch_sub(delta.unsigned_abs(), Relaxed);
    }
}

pub(crate) fn render(out: &mut String) {
    let m = &COLLNET;
    header(
        out,
        "airamp_collnet_ops_total",
        "counter",
        "Collective-network calls completed, by datatype and path (exact or fp8).",
    );
    for (d, by_path) in m.ops.iter().enumerate() {
        for (p, n) in by_path.iter().enumerate() {
            let n = n.load(Relaxed);
            // The float series always exist, so dashboards see zero, not
            // "no data"; integer series appear once they count.
            if n > 0 || matches!(DTYPES[d], "float16" | "float32" | "bfloat16") {
                let _ = writeln!(
                    out,
                    "airamp_collnet_ops_total{{dtype=\"{}\",path=\"{}\"}} {n}",
                    DTYPES[d], PATHS[p]
                );
            }
        }
    }
    header(
        out,
        "airamp_collnet_input_bytes_total",
        "counter",
        "User bytes reduced or gathered by collective-network calls (before compression).",
    );
    for (p, name) in PATHS.iter().enumerate() {
        let _ = writeln!(
            out,
            "airamp_collnet_input_bytes_total{{path=\"{name}\"}} {}",
            m.bytes_in[p].load(Relaxed)
        );
    }
    header(
        out,
        "airamp_collnet_wire_bytes_total",
        "counter",
        "Bytes this member sent for collective-network calls (after compression).",
    );
    for (p, name) in PATHS.iter().enumerate() {
        let _ = writeln!(
            out,
            "airamp_collnet_wire_bytes_total{{path=\"{name}\"}} {}",
            m.wire_bytes[p].load(Relaxed)
        );
    }
    header(
        out,
        "airamp_collnet_fp8_relative_error",
        "summary",
        "Relative L2 error of sampled FP8 blocks (one block per reduced shard); mean = sum / count.",
    );
    let _ = writeln!(
        out,
        "airamp_collnet_fp8_relative_error_sum {}",
        m.error_ppb_sum.load(Relaxed) as f64 / 1e9
    );
    let _ = writeln!(
        out,
        "airamp_collnet_fp8_relative_error_count {}",
        m.error_samples.load(Relaxed)
    );
    header(
        out,
        "airamp_collnet_pool_lookups_total",
        "counter",
        "Staging buffer requests served from the pool (hit) or newly allocated (miss).",
    );
    for (result, n) in [("hit", &m.pool_hits), ("miss", &m.pool_misses)] {
        let _ = writeln!(
            out,
            "airamp_collnet_pool_lookups_total{{result=\"{result}\"}} {}",
            n.load(Relaxed)
        );
    }
    header(
        out,
        "airamp_collnet_pool_bytes",
        "gauge",
        "Bytes of staging buffers the pool holds for reuse.",
    );
    let _ = writeln!(
        out,
        "airamp_collnet_pool_bytes {}",
        m.pool_held.load(Relaxed)
    );
    header(
        out,
        "airamp_collnet_gpu_calls_total",
        "counter",
        "Collective-network calls on NCCL's GPU buffers: run by kernels (FP8 allreduce, exact float sums), or staged through pinned mirrors (everything else).",
    );
    for (i, how) in GPU_CALLS.iter().enumerate() {
        let _ = writeln!(
            out,
            "airamp_collnet_gpu_calls_total{{how=\"{how}\"}} {}",
            m.gpu_calls[i].load(Relaxed)
        );
    }
    header(
        out,
        "airamp_collnet_gpu_pinned_bytes",
        "gauge",
        "Pinned host memory the collective network holds for NCCL's GPU buffers (its mirrors and staging slots; its mirrors are in airamp_collnet_gpu_mirror_bytes too); the GPU path allocates no device memory beyond its CUDA context.",
    );
    let _ = writeln!(
        out,
        "airamp_collnet_gpu_pinned_bytes {}",
        m.gpu_pinned.load(Relaxed)
    );
    header(
        out,
        "airamp_collnet_gpu_context_bytes",
        "gauge",
        "Device memory taken by airamp's own CUDA context (one per GPU and process, for the GPU path's kernels and staged copies), from the device's free memory before and after it was made: an estimate. It is the GPU path's whole device-memory cost.",
    );
    let _ = writeln!(
        out,
        "airamp_collnet_gpu_context_bytes {}",
        m.gpu_context.load(Relaxed)
    );
    header(
        out,
        "airamp_collnet_gpu_mirror_bytes",
        "gauge",
        "Pinned host memory held by the mirrors of registered GPU buffers, the TCP path's and the collective network's; at most gpu.mirror_budget.",
    );
    let _ = writeln!(
        out,
        "airamp_collnet_gpu_mirror_bytes {}",
        m.gpu_mirrors.load(Relaxed)
    );
    header(
        out,
        "airamp_collnet_gpu_mirror_refusals_total",
        "counter",
        "GPU buffer registrations refused because their mirror would pass gpu.mirror_budget (NCCL asks again at every collective on a refused application buffer, and moves it through its own buffers).",
    );
    let _ = writeln!(
        out,
        "airamp_collnet_gpu_mirror_refusals_total {}",
        m.gpu_mirror_refusals.load(Relaxed)
    );
    header(
        out,
        "airamp_collnet_pola_calls_total",
        "counter",
        "Collective-network calls against their group's learned call pattern (PoLA): learning (no cycle locked), hit (the call the locked cycle predicted), miss (it broke the cycle).",
    );
    for (i, result) in POLA_RESULTS.iter().enumerate() {
        let _ = writeln!(
            out,
            "airamp_collnet_pola_calls_total{{result=\"{result}\"}} {}",
            m.pola_calls[i].load(Relaxed)
        );
    }
    header(
        out,
        "airamp_collnet_pola_locks_total",
        "counter",
        "Times a collective group's call pattern locked (the same cycle of calls three times in a row).",
    );
    let _ = writeln!(
        out,
        "airamp_collnet_pola_locks_total {}",
        m.pola_locks.load(Relaxed)
    );
    header(
        out,
        "airamp_collnet_pola_locked_groups",
        "gauge",
        "Collective groups whose call pattern is locked now.",
    );
    let _ = writeln!(
        out,
        "airamp_collnet_pola_locked_groups {}",
        m.pola_locked_groups.load(Relaxed)
    );
    header(
        out,
        "airamp_collnet_op_duration_seconds",
        "histogram",
        "Time from a collective-network call to its completion, by path.",
    );
    for (p, name) in PATHS.iter().enumerate() {
        let s = m.latency[p].snapshot();
        for (i, b) in LATENCY_BOUNDS_NS.iter().enumerate() {
            let cum = s.cumulative[i];
            let _ = writeln!(
                out,
                "airamp_collnet_op_duration_seconds_bucket{{path=\"{name}\",le=\"{}\"}} {cum}",
                *b as f64 / 1e9
            );
        }
        let total = s.cumulative[LATENCY_BOUNDS_NS.len()];
        let _ = writeln!(
            out,
            "airamp_collnet_op_duration_seconds_bucket{{path=\"{name}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "airamp_collnet_op_duration_seconds_sum{{path=\"{name}\"}} {}",
            s.sum as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "airamp_collnet_op_duration_seconds_count{{path=\"{name}\"}} {total}"
        );
    }
}
