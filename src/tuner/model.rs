//! Time predictions, in microseconds, of an allreduce of `bytes` across
//! `nodes` nodes. Plain `f64` arithmetic (no `mul_add`, no SIMD, no
//! platform-dependent math), so every rank computes the same bits.

use super::LinkProfile;
use crate::codec::{encoded_len, WireFormat, BLOCK};

/// Assumed link bandwidth when uncalibrated, Gbit/s. High on purpose: at
/// 100 Gbit/s compression rarely pays, so an uncalibrated tuner stays out
/// of the way.
pub const DEFAULT_LINK_GBPS: f64 = 100.0;
/// Assumed one-way link latency when uncalibrated, microseconds.
pub const DEFAULT_LINK_LATENCY_US: f64 = 10.0;
/// Encode bf16 -> E4M3 on one core, G values/s (AVX2, `airamp bench codec`
/// on the build machine).
pub const DEFAULT_ENCODE_GVPS: f64 = 1.9;
/// Decode E4M3 and accumulate into f32 on one core, G values/s (AVX2).
pub const DEFAULT_DECODE_GVPS: f64 = 6.9;
/// The tuner cannot see the datatype; it assumes bf16 (2 bytes a value),
/// the conservative case: fp32 input would compress twice as well.
pub const BF16_BYTES: f64 = 2.0;

/// Wire bytes per input byte of bf16 under block scaling: one code byte
/// per value plus one scale per block of 32 values (33 / 64 for E4M3 and
/// E5M2, 34 / 64 for INT8's 2-byte scale).
pub fn wire_ratio(format: WireFormat) -> f64 {
    encoded_len(format, BLOCK) as f64 / (BLOCK as f64 * BF16_BYTES)
}

/// Bytes per microsecond of a link of `gbps` Gbit/s.
fn bytes_per_us(p: &LinkProfile) -> f64 {
    p.gbps * 1e3 / 8.0
}

/// NCCL's ring on the inter-node links: every byte crosses each link
/// 2(n-1)/n times, with 2(n-1) latency-bound steps. One node: nothing on
/// the network (0).
pub fn ring_allreduce_us(bytes: u64, nodes: usize, p: &LinkProfile) -> f64 {
    if nodes <= 1 {
        return 0.0;
    }
    let n = nodes as f64;
    ring_bandwidth_us(bytes, nodes, p) + 2.0 * (n - 1.0) * p.latency_us
}

/// The bandwidth term of [`ring_allreduce_us`]: every byte crosses each
/// node's link 2(n-1)/n times, which no allreduce without in-network
/// reduction avoids. One node: 0.
pub fn ring_bandwidth_us(bytes: u64, nodes: usize, p: &LinkProfile) -> f64 {
    if nodes <= 1 {
        return 0.0;
    }
    let n = nodes as f64;
    2.0 * (n - 1.0) / n * bytes as f64 / bytes_per_us(p)
}

/// airamp's collective network: a full-mesh reduce-scatter (each member
/// sends each shard to its owner) then an all-gather of the reduced shards,
/// two latency-bound steps, plus a fixed cost per call (`pipe_ops` calls).
///
/// With `fp8`, every member quantizes the shards it sends (E(n-1)/n
/// values; its own stays exact) and its reduced shard (E/n), decodes and
/// accumulates the others' contributions to its shard (E(n-1)/n) and
/// decodes the gathered result (E): encode E, decode E(2 - 1/n), on one
/// core. The
/// collective network cuts a call into segments of
/// [`SEGMENT_BYTES`](crate::collnet::group::SEGMENT_BYTES) and encodes the
/// next while the stream threads send the previous ones, so codec and
/// network overlap like a pipeline: the longer of the two, plus one
/// segment's worth of the shorter (fill and drain). A one-segment call pays
/// both in full. Values assume bf16.
pub fn collnet_allreduce_us(
    bytes: u64,
    nodes: usize,
    pipe_ops: u32,
    p: &LinkProfile,
    fp8: Option<WireFormat>,
) -> f64 {
    let n = nodes.max(1) as f64;
    let fixed = f64::from(pipe_ops.max(1)) * (2.0 * p.latency_us + p.call_overhead_us);
    let wire = bytes as f64 * fp8.map_or(1.0, wire_ratio);
    let network = if nodes <= 1 {
        0.0
    } else {
        2.0 * (n - 1.0) / n * wire / bytes_per_us(p)
    };
    let codec = match fp8 {
        None => 0.0,
        Some(_) => {
            let values = bytes as f64 / BF16_BYTES;
            // G values/s = 1e3 values/us.
            values / (p.encode_gvps * 1e3) + values * (2.0 - 1.0 / n) / (p.decode_gvps * 1e3)
        }
    };
    let segments = (bytes as f64 / crate::collnet::group::SEGMENT_BYTES as f64)
        .ceil()
        .max(1.0);
    network.max(codec) + network.min(codec) / segments + fixed
}
