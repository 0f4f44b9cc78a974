//! In-process simulation of the collective: N [`Member`]s exchange
//! messages in a seeded random delivery order (segments interleaved), plus
//! the compressed path's error measurements next to ring baselines that
//! re-round the partial sum at every hop.
//!
//! Deterministic: the same arguments give the same outputs and numbers.

use std::fmt::Write as _;
use std::time::Instant;

use super::algo::{CollError, DataType, Member, Msg, Path, RedOp, Spec};
use super::plan::Plan;
use crate::codec::{bf16_to_f32, encoded_len, f32_to_bf16, Backend, Codec, Dst, Src, WireFormat};

/// SplitMix64: tiny, seedable, good enough for test data and shuffles.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)` (`bound > 0`).
    pub fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }

    /// Uniform in `(0, 1)`.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller, one value per call).
    pub fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Student-t with `nu` degrees of freedom (Bailey's polar method).
    pub fn student_t(&mut self, nu: f64) -> f64 {
        loop {
            let u = 2.0 * self.unit() - 1.0;
            let v = 2.0 * self.unit() - 1.0;
            let w = u * u + v * v;
            if w < 1.0 {
                return u * (nu * (w.powf(-2.0 / nu) - 1.0) / w).sqrt();
            }
        }
    }
}

/// Input distributions for the error measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dist {
    /// N(0, 1).
    Gaussian,
    /// Student-t with 3 degrees of freedom (heavy tails, infinite kurtosis).
    StudentT3,
    /// N(0, 1) with 1% of the values multiplied by 100.
    GaussianOutliers,
}

impl Dist {
    pub fn sample(self, rng: &mut SplitMix) -> f64 {
        match self {
            Dist::Gaussian => rng.gaussian(),
            Dist::StudentT3 => rng.student_t(3.0),
            Dist::GaussianOutliers => {
                let x = rng.gaussian();
                if rng.below(100) == 0 {
                    x * 100.0
                } else {
                    x
                }
            }
        }
    }
}

/// One simulated allreduce call (possibly several segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub n: usize,
    pub dtype: DataType,
    pub op: RedOp,
    pub path: Path,
    pub count: usize,
    pub segment_elems: usize,
}

/// Runs `call` over `inputs[rank]` (native-endian bytes) with messages
/// delivered in a random order drawn from `seed`; returns every member's
/// output. Even ranks use the scalar codec, odd ranks the fastest one, so
/// the run also checks that mixed CPUs agree bit for bit.
pub fn run(call: &Call, inputs: &[Vec<u8>], seed: u64) -> Result<Vec<Vec<u8>>, CollError> {
    let n = call.n;
    if inputs.len() != n {
        return Err(CollError::BadRank {
            rank: inputs.len(),
            n,
        });
    }
    let size = call.dtype.size();
    let plan = Plan::new(call.count, n, call.segment_elems);
    let codec = |rank: usize| match call.path {
        Path::Exact => None,
        Path::Compressed(f) => {
            let b = if rank.is_multiple_of(2) {
                Backend::Scalar
            } else {
                Backend::detect()
            };
            Codec::with_backend(f, b).ok()
        }
    };
    let mut members: Vec<Vec<Member>> = Vec::new();
    let mut pool: Vec<(usize, usize, Msg)> = Vec::new();
    for (i, seg) in plan.segments().enumerate() {
        let spec = Spec {
            n,
            dtype: call.dtype,
            op: call.op,
            path: call.path,
            count: seg.len(),
        };
        let mut row = Vec::with_capacity(n);
        for (rank, input) in inputs.iter().enumerate() {
            let bytes =
                input
                    .get(seg.start * size..seg.end * size)
                    .ok_or(CollError::InputLength {
                        expected: call.count * size,
                        actual: input.len(),
                    })?;
            let (m, out) = Member::with_codec(spec, rank, bytes, codec(rank))?;
            pool.extend(out.into_iter().map(|o| (i, o.to, o.msg)));
            row.push(m);
        }
        members.push(row);
    }
    let mut rng = SplitMix::new(seed);
    while !pool.is_empty() {
        let (seg, to, msg) = pool.swap_remove(rng.below(pool.len()));
        let out = members[seg][to].on_message(msg)?;
        pool.extend(out.into_iter().map(|o| (seg, o.to, o.msg)));
    }
    let mut outputs = vec![Vec::with_capacity(call.count * size); n];
    for row in members {
        for (rank, m) in row.into_iter().enumerate() {
            assert!(m.is_done(), "simulation ended with member {rank} not done");
            outputs[rank].extend_from_slice(m.output());
        }
    }
    Ok(outputs)
}

/// Result of an error measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct SimReport {
    pub n_members: usize,
    pub count: usize,
    /// `||out - ref||_2 / ||ref||_2` against the exact f64 sum of the bf16
    /// inputs (member 0's output; with `bit_identical` all are the same).
    pub rel_l2: f64,
    /// All members produced the same bytes (always true for the ring
    /// baseline, which is modelled once).
    pub bit_identical: bool,
    /// Times each element went through quantization.
    pub quantizations: usize,
}

/// Seeded bf16 inputs for `n` members and their exact f64 sum.
pub fn gen_inputs(n: usize, count: usize, dist: Dist, seed: u64) -> (Vec<Vec<u16>>, Vec<f64>) {
    let mut reference = vec![0f64; count];
    let inputs = (0..n)
        .map(|m| {
            let mut rng = SplitMix::new(seed.wrapping_mul(1_000_003).wrapping_add(m as u64));
            let v: Vec<u16> = (0..count)
                .map(|_| f32_to_bf16(dist.sample(&mut rng) as f32))
                .collect();
            for (r, &x) in reference.iter_mut().zip(&v) {
                *r += f64::from(bf16_to_f32(x));
            }
            v
        })
        .collect();
    (inputs, reference)
}

/// Relative L2 error of `out` against `reference` over finite references.
pub fn rel_l2(out: impl Iterator<Item = f64>, reference: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (o, &r) in out.zip(reference) {
        if r.is_finite() {
            num += (o - r) * (o - r);
            den += r * r;
        }
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn to_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn bf16_bytes_to_f64(b: &[u8]) -> impl Iterator<Item = f64> + '_ {
    b.chunks_exact(2)
        .map(|c| f64::from(bf16_to_f32(u16::from_ne_bytes([c[0], c[1]]))))
}

/// Segment size used by the error simulations (exercises pipelining).
const SIM_SEGMENT: usize = 16 << 10;

fn airamp_report(
    inputs: &[Vec<u16>],
    reference: &[f64],
    format: WireFormat,
    seed: u64,
) -> SimReport {
    let n = inputs.len();
    let count = reference.len();
    let call = Call {
        n,
        dtype: DataType::Bf16,
        op: RedOp::Sum,
        path: Path::Compressed(format),
        count,
        segment_elems: SIM_SEGMENT,
    };
    let bytes: Vec<Vec<u8>> = inputs.iter().map(|v| to_bytes(v)).collect();
    let outs = run(&call, &bytes, seed).expect("simulation of valid inputs cannot fail");
    SimReport {
        n_members: n,
        count,
        rel_l2: rel_l2(bf16_bytes_to_f64(&outs[0]), reference),
        bit_identical: outs.iter().all(|o| *o == outs[0]),
        quantizations: 2,
    }
}

/// airamp's compressed allreduce of bf16 data (`format`, 32-value blocks)
/// over `n_members`, simulated with random delivery; error vs the exact sum.
pub fn simulate_error(
    n_members: usize,
    count: usize,
    dist: Dist,
    format: WireFormat,
    seed: u64,
) -> SimReport {
    let (inputs, reference) = gen_inputs(n_members, count, dist, seed);
    airamp_report(&inputs, &reference, format, seed)
}

/// What a ring baseline does to the partial sum at every hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reround {
    /// Quantize-dequantize with airamp's block scaling (32-value blocks,
    /// power-of-two scales) in this format.
    PerBlock(WireFormat),
    /// Round to bf16: NCCL's Ring on bf16 data, which adds in f32 and
    /// stores each partial sum as bf16.
    Bf16,
}

/// Re-round `v` in place as `scheme` does between two hops.
fn reround(v: &mut [f32], scheme: Reround, wire: &mut Vec<u8>) {
    match scheme {
        Reround::PerBlock(format) => {
            let codec = Codec::new(format);
            wire.resize(encoded_len(format, v.len()), 0);
            // Lengths match by construction.
            let _ = codec.encode_wire(Src::F32(v), wire);
            let _ = codec.decode_into_wire(wire, Dst::F32(v));
        }
        Reround::Bf16 => v.iter_mut().for_each(|x| *x = bf16_to_f32(f32_to_bf16(*x))),
    }
}

fn ring_report(inputs: &[Vec<u16>], reference: &[f64], scheme: Reround) -> SimReport {
    let n = inputs.len();
    let count = reference.len();
    let mut wire = Vec::new();
    // Ring reduce-scatter: the partial sum leaves member 0 re-rounded, and
    // every later member adds its input to the partial and re-rounds before
    // forwarding; the last one's result is what the all-gather distributes
    // (as bf16). (Each ring chunk starts at a different member; the error
    // statistics do not depend on which.)
    let mut partial: Vec<f32> = inputs[0].iter().map(|&x| bf16_to_f32(x)).collect();
    reround(&mut partial, scheme, &mut wire);
    for input in &inputs[1..] {
        for (p, &x) in partial.iter_mut().zip(input) {
            *p += bf16_to_f32(x);
        }
        reround(&mut partial, scheme, &mut wire);
    }
    let out = partial
        .iter()
        .map(|&x| f64::from(bf16_to_f32(f32_to_bf16(x))));
    SimReport {
        n_members: n,
        count,
        rel_l2: rel_l2(out, reference),
        bit_identical: true,
        quantizations: n,
    }
}

/// Baseline: a ring allreduce that re-rounds the partial sum at every hop
/// (per-hop compression schemes, or a plain bf16 ring), same inputs as
/// [`simulate_error`] for the same arguments.
pub fn simulate_ring_reround_error(
    n_members: usize,
    count: usize,
    dist: Dist,
    seed: u64,
    scheme: Reround,
) -> SimReport {
    let (inputs, reference) = gen_inputs(n_members, count, dist, seed);
    ring_report(&inputs, &reference, scheme)
}

/// Relative L2 errors of bf16 sums, one markdown table per input
/// distribution (Gaussian, Student-t(3)), one row per member count: for
/// each wire format airamp's scheme (each element quantized at most twice)
/// next to a ring that re-quantizes at every hop with the same blocks, and
/// a plain bf16 ring. With one member airamp's result is one rounding.
pub fn error_table(members: &[usize], count: usize, seed: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "relative L2 error of the bf16 sum, blocks of 32 (FP8: power-of-two scales, INT8: bf16 scales), \
         {count} values per member, seed {seed}; \"2x\" = airamp (at most two \
         roundings), \"hop\" = ring re-rounding at every hop"
    );
    let t0 = Instant::now();
    for dist in [Dist::Gaussian, Dist::StudentT3] {
        let _ = writeln!(s, "\n{dist:?}\n");
        let _ = write!(s, "| N |");
        for f in WireFormat::ALL {
            let _ = write!(s, " {0} 2x | {0} hop |", f.name());
        }
        let _ = writeln!(s, " bf16 ring |");
        let _ = writeln!(
            s,
            "|---:|{}---:|",
            "---:|---:|".repeat(WireFormat::ALL.len())
        );
        for &n in members {
            let (inputs, reference) = gen_inputs(n, count, dist, seed);
            let _ = write!(s, "| {n} |");
            for f in WireFormat::ALL {
                let a = airamp_report(&inputs, &reference, f, seed);
                let b = ring_report(&inputs, &reference, Reround::PerBlock(f));
                let mark = if a.bit_identical { "" } else { " (DIVERGED)" };
                let _ = write!(
                    s,
                    " {:.2}%{mark} | {:.2}% |",
                    100.0 * a.rel_l2,
                    100.0 * b.rel_l2
                );
            }
            let r = ring_report(&inputs, &reference, Reround::Bf16);
            let _ = writeln!(s, " {:.2}% |", 100.0 * r.rel_l2);
        }
    }
    let _ = writeln!(s, "\n({:.2} s)", t0.elapsed().as_secs_f64());
    s
}
