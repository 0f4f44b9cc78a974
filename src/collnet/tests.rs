//! Deterministic tests of the collective algorithms (no I/O).

use std::sync::Arc;

use proptest::prelude::*;

use super::algo::*;
use super::sim::*;
use crate::codec::{
    bf16_to_f32, encoded_len, f16_to_f32, f32_to_bf16, f32_to_f16, Codec, Dst, Src, WireFormat,
};

const E4M3: Path = Path::Compressed(WireFormat::E4M3);
const INT8: Path = Path::Compressed(WireFormat::Int8);
/// Every compressed path.
const COMPRESSED: [Path; 3] = [E4M3, Path::Compressed(WireFormat::E5M2), INT8];

/// Random native-endian inputs; floats are finite and moderate so that
/// products stay meaningful.
fn random_inputs(dtype: DataType, n: usize, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| {
            (0..count)
                .flat_map(|_| {
                    let g = rng.gaussian() as f32 * 2.0;
                    let r = rng.next_u64();
                    match dtype {
                        DataType::F32 => g.to_ne_bytes().to_vec(),
                        DataType::F64 => (g as f64 * 1.000_000_1).to_ne_bytes().to_vec(),
                        DataType::F16 => f32_to_f16(g).to_ne_bytes().to_vec(),
                        DataType::Bf16 => f32_to_bf16(g).to_ne_bytes().to_vec(),
                        _ => r.to_ne_bytes()[..dtype.size()].to_vec(),
                    }
                })
                .collect()
        })
        .collect()
}

/// Independent reference: per element, fold members 0..n in order.
/// Integers via i128 (truncation == wrapping), halves via f32 + one rounding.
fn reference(dtype: DataType, op: RedOp, inputs: &[Vec<u8>]) -> Vec<u8> {
    let size = dtype.size();
    let count = inputs[0].len() / size;
    let mut out = Vec::with_capacity(count * size);
    for i in 0..count {
        let el = |m: usize| &inputs[m][i * size..(i + 1) * size];
        match dtype {
            DataType::F32 | DataType::F64 | DataType::F16 | DataType::Bf16 => {
                let val = |m: usize| -> f64 {
                    let b = el(m);
                    match dtype {
                        DataType::F32 => f32::from_ne_bytes(b.try_into().unwrap()) as f64,
                        DataType::F64 => f64::from_ne_bytes(b.try_into().unwrap()),
                        DataType::F16 => {
                            f16_to_f32(u16::from_ne_bytes(b.try_into().unwrap())) as f64
                        }
                        _ => bf16_to_f32(u16::from_ne_bytes(b.try_into().unwrap())) as f64,
                    }
                };
                if dtype == DataType::F64 {
                    let mut a = val(0);
                    for m in 1..inputs.len() {
                        a = fop(op, a, val(m));
                    }
                    out.extend(a.to_ne_bytes());
                } else {
                    let mut a = val(0) as f32;
                    for m in 1..inputs.len() {
                        // f64 has more than 2*24+2 bits, so rounding the
                        // f64 result equals the f32 operation.
                        a = fop(op, a as f64, val(m)) as f32;
                    }
                    match dtype {
                        DataType::F32 => out.extend(a.to_ne_bytes()),
                        DataType::F16 => out.extend(f32_to_f16(a).to_ne_bytes()),
                        _ => out.extend(f32_to_bf16(a).to_ne_bytes()),
                    }
                }
            }
            _ => {
                let signed = matches!(dtype, DataType::I8 | DataType::I32 | DataType::I64);
                let val = |m: usize| -> i128 {
                    let mut b = [0u8; 16];
                    b[..size].copy_from_slice(el(m));
                    let u = u128::from_le_bytes(b);
                    let bits = 8 * size as u32;
                    if signed && (u >> (bits - 1)) & 1 == 1 {
                        (u as i128) - (1i128 << bits)
                    } else {
                        u as i128
                    }
                };
                let mut a = val(0);
                for m in 1..inputs.len() {
                    let b = val(m);
                    a = match op {
                        RedOp::Sum => a.wrapping_add(b),
                        RedOp::Prod => a.wrapping_mul(b),
                        RedOp::Max => a.max(b),
                        RedOp::Min => a.min(b),
                    };
                    // Keep in range by truncating to the width (mod 2^bits).
                    let bits = 8 * size as u32;
                    let t = (a as u128) & ((1u128 << bits) - 1);
                    a = if signed && (t >> (bits - 1)) & 1 == 1 {
                        t as i128 - (1i128 << bits)
                    } else {
                        t as i128
                    };
                }
                out.extend(&(a as u128).to_le_bytes()[..size]);
            }
        }
    }
    out
}

fn fop(op: RedOp, a: f64, b: f64) -> f64 {
    match op {
        RedOp::Sum => a + b,
        RedOp::Prod => a * b,
        RedOp::Max => a.max(b),
        RedOp::Min => a.min(b),
    }
}

fn exact_call(n: usize, dtype: DataType, op: RedOp, count: usize, seg: usize) -> Call {
    Call {
        n,
        dtype,
        op,
        path: Path::Exact,
        count,
        segment_elems: seg,
    }
}

#[test]
fn nccl_codes() {
    for d in DataType::ALL {
        assert_eq!(DataType::from_nccl(d.to_nccl()), Some(d));
    }
    for o in RedOp::ALL {
        assert_eq!(RedOp::from_nccl(o.to_nccl()), Some(o));
    }
    assert_eq!(DataType::from_nccl(10), None);
    assert_eq!(DataType::from_nccl(-1), None);
    assert_eq!(RedOp::from_nccl(4), None); // avg arrives as sum
    assert_eq!(RedOp::from_nccl(5), None);
    assert_eq!(
        choose_path(DataType::Bf16, RedOp::Sum, Some(WireFormat::E4M3)),
        E4M3
    );
    assert_eq!(choose_path(DataType::Bf16, RedOp::Sum, None), Path::Exact);
    assert_eq!(
        choose_path(DataType::Bf16, RedOp::Max, Some(WireFormat::E4M3)),
        Path::Exact
    );
    assert_eq!(
        choose_path(DataType::I32, RedOp::Sum, Some(WireFormat::E4M3)),
        Path::Exact
    );
    assert_eq!(
        choose_path(DataType::F64, RedOp::Sum, Some(WireFormat::E4M3)),
        Path::Exact
    );
}

#[test]
fn exact_path_matches_fixed_order_reference() {
    for dtype in DataType::ALL {
        for op in RedOp::ALL {
            for (n, count, seg) in [
                (1, 5, 64),
                (2, 33, 32),
                (3, 100, 64),
                (5, 257, 1 << 20),
                (4, 0, 64),
            ] {
                let inputs = random_inputs(dtype, n, count, (n * 1000 + count) as u64);
                let want = reference(dtype, op, &inputs);
                let call = exact_call(n, dtype, op, count, seg);
                for seed in 0..2 {
                    let outs = run(&call, &inputs, seed).unwrap();
                    for (r, o) in outs.iter().enumerate() {
                        assert_eq!(o, &want, "{dtype:?} {op:?} n={n} count={count} rank {r}");
                    }
                }
            }
        }
    }
}

#[test]
fn int32_sum_is_the_wrapping_arithmetic_sum() {
    let n = 7;
    let count = 1000;
    let mut rng = SplitMix::new(9);
    let vals: Vec<Vec<i32>> = (0..n)
        .map(|_| (0..count).map(|_| rng.next_u64() as i32).collect())
        .collect();
    let inputs: Vec<Vec<u8>> = vals
        .iter()
        .map(|v| v.iter().flat_map(|x| x.to_ne_bytes()).collect())
        .collect();
    let outs = run(
        &exact_call(n, DataType::I32, RedOp::Sum, count, 256),
        &inputs,
        3,
    )
    .unwrap();
    for o in &outs {
        for i in 0..count {
            let sum: i64 = vals.iter().map(|v| i64::from(v[i])).sum();
            let got = i32::from_ne_bytes(o[4 * i..4 * i + 4].try_into().unwrap());
            assert_eq!(got, sum as i32);
        }
    }
}

/// Model of the compressed algorithm written directly with the codec:
/// `q2(sum_m deq(q(x_m)))` per shard, then decoded to the dtype.
fn compressed_model(
    format: WireFormat,
    dtype: DataType,
    n: usize,
    count: usize,
    inputs: &[Vec<u8>],
) -> Vec<u8> {
    let codec = Codec::new(format);
    let size = dtype.size();
    let mut out = vec![0u8; count * size];
    for s in 0..n {
        let r = super::plan::shard_range(count, n, s);
        let mut acc = vec![0f32; r.len()];
        for (m, inp) in inputs.iter().enumerate() {
            let raw = &inp[r.start * size..r.end * size];
            let mut wire = vec![0u8; encoded_len(format, r.len())];
            let h: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .collect();
            let f: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes(c.try_into().unwrap()))
                .collect();
            let src = match dtype {
                DataType::F32 => Src::F32(&f),
                DataType::F16 => Src::F16(&h),
                _ => Src::Bf16(&h),
            };
            if m == s {
                // The owner's own shard never crosses the wire: exact.
                for (a, i) in acc.iter_mut().zip(0..r.len()) {
                    *a += match dtype {
                        DataType::F32 => f[i],
                        DataType::F16 => f16_to_f32(h[i]),
                        _ => bf16_to_f32(h[i]),
                    };
                }
                continue;
            }
            codec.encode_wire(src, &mut wire).unwrap();
            codec.decode_accumulate_wire(&wire, &mut acc).unwrap();
        }
        let mut wire = vec![0u8; encoded_len(format, r.len())];
        codec.encode_wire(Src::F32(&acc), &mut wire).unwrap();
        let o = &mut out[r.start * size..r.end * size];
        if dtype == DataType::F32 {
            let mut v = vec![0f32; r.len()];
            codec.decode_into_wire(&wire, Dst::F32(&mut v)).unwrap();
            o.copy_from_slice(&v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<_>>());
        } else {
            let mut v = vec![0u16; r.len()];
            let d = if dtype == DataType::F16 {
                Dst::F16(&mut v)
            } else {
                Dst::Bf16(&mut v)
            };
            codec.decode_into_wire(&wire, d).unwrap();
            o.copy_from_slice(&v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<_>>());
        }
    }
    out
}

#[test]
fn compressed_path_is_quantize_once_reduce_quantize_once_and_identical() {
    for format in WireFormat::ALL {
        for dtype in [DataType::Bf16, DataType::F16, DataType::F32] {
            for (n, count) in [(1, 70), (2, 64), (3, 100), (6, 1000), (9, 31)] {
                let inputs = random_inputs(dtype, n, count, 77 + n as u64);
                let want = compressed_model(format, dtype, n, count, &inputs);
                let call = Call {
                    n,
                    dtype,
                    op: RedOp::Sum,
                    path: Path::Compressed(format),
                    count,
                    segment_elems: 1 << 20,
                };
                for seed in 0..3 {
                    let outs = run(&call, &inputs, seed).unwrap();
                    for o in &outs {
                        assert_eq!(o, &want, "{format:?} {dtype:?} n={n} count={count}");
                    }
                }
            }
        }
    }
}

/// Relative L2 bound asserted per format and input distribution, each
/// element quantized at most twice (docs/collnet.md has the measured
/// table). E4M3: two independent roundings of iid data cost ~sqrt(2) x the
/// single-rounding error (~2.7%), so its floor is ~3.8% at every N; the
/// brief's 3% is below it. INT8: the 1.5% for Gaussian and
/// heavy-tailed (Student-t(3)) data; with 1% of the values 100x larger, a
/// uniform grid loses the small values of the blocks holding an outlier
/// (still half E4M3's error).
fn error_bound(format: WireFormat, dist: Dist) -> f64 {
    match (format, dist) {
        (WireFormat::E4M3, _) => 0.04,
        (WireFormat::E5M2, _) => 0.08,
        (WireFormat::Int8, Dist::GaussianOutliers) => 0.02,
        (WireFormat::Int8, _) => 0.015,
    }
}

#[test]
fn compressed_error_bounds_and_bit_identical() {
    for format in WireFormat::ALL {
        for n in [2, 3, 8, 64] {
            for dist in [Dist::Gaussian, Dist::StudentT3, Dist::GaussianOutliers] {
                let r = simulate_error(n, 8192, dist, format, 42);
                assert!(r.bit_identical, "{format:?} {r:?}");
                assert!(
                    r.rel_l2 <= error_bound(format, dist),
                    "{format:?} n={n} {dist:?}: {r:?}"
                );
            }
        }
    }
}

/// n = 1 is a single effective rounding (q(q(x)) == q(x)): the floor of
/// one block rounding on this data, E4M3 against INT8.
#[test]
fn single_rounding_floor() {
    for dist in [Dist::Gaussian, Dist::StudentT3, Dist::GaussianOutliers] {
        let e4m3 = simulate_error(1, 8192, dist, WireFormat::E4M3, 42).rel_l2;
        let int8 = simulate_error(1, 8192, dist, WireFormat::Int8, 42).rel_l2;
        println!(
            "single rounding {dist:?}: E4M3 {:.3}%, INT8 {:.3}%",
            100.0 * e4m3,
            100.0 * int8
        );
        assert!(e4m3 > 0.02 && e4m3 < 0.03, "{dist:?} E4M3 {e4m3}");
        assert!(int8 > 0.004 && int8 < 0.015, "{dist:?} INT8 {int8}");
        assert!(int8 * 1.7 < e4m3, "{dist:?} INT8 {int8} E4M3 {e4m3}");
    }
}

#[test]
fn error_256_members() {
    for format in [WireFormat::E4M3, WireFormat::Int8] {
        for dist in [Dist::Gaussian, Dist::StudentT3] {
            let r = simulate_error(256, 4096, dist, format, 7);
            assert!(r.bit_identical, "{r:?}");
            assert!(r.rel_l2 <= error_bound(format, dist), "{format:?} {r:?}");
        }
    }
}

#[test]
fn reround_baselines_are_visibly_worse() {
    for format in [WireFormat::E4M3, WireFormat::Int8] {
        let a = simulate_error(32, 4096, Dist::Gaussian, format, 5);
        let b = simulate_ring_reround_error(32, 4096, Dist::Gaussian, 5, Reround::PerBlock(format));
        assert!(b.rel_l2 > 1.5 * a.rel_l2, "{a:?} {b:?}");
    }
    // A bf16 ring re-rounds too: its error grows with the ring length.
    let r4 = simulate_ring_reround_error(4, 4096, Dist::Gaussian, 5, Reround::Bf16);
    let r64 = simulate_ring_reround_error(64, 4096, Dist::Gaussian, 5, Reround::Bf16);
    assert!(
        r4.rel_l2 > 0.0 && r64.rel_l2 > 1.5 * r4.rel_l2,
        "{r4:?} {r64:?}"
    );
    let table = error_table(&[2, 4], 1024, 1);
    for dist in ["Gaussian", "StudentT3"] {
        assert!(table.contains(dist), "{table}");
    }
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| 2 |") || l.starts_with("| 4 |"))
            .count(),
        4
    );
    assert!(!table.contains("DIVERGED"), "{table}");
}

#[test]
#[ignore = "prints the error table; run with --release -- --ignored --nocapture"]
fn print_error_table() {
    println!(
        "{}",
        error_table(&[1, 2, 4, 8, 16, 32, 64, 128, 256], 64 << 10, 1)
    );
}

/// INT8 quantize-dequantize of `v` in blocks of 32 with the scale choices
/// the wire format did not take: the smallest power of two with `amax /
/// scale <= 127` (an E8M0 byte), or `amax / 127` rounded up to fp16.
fn int8_other_scale_round_trip(v: &mut [f32], power_of_two: bool) {
    for block in v.chunks_mut(crate::codec::BLOCK) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let ideal = amax / 127.0;
        let scale = if ideal == 0.0 {
            1.0
        } else if power_of_two {
            2f32.powi(ideal.log2().ceil() as i32)
        } else {
            let mut h = f32_to_f16(ideal);
            if f16_to_f32(h) < ideal {
                h += 1;
            }
            f16_to_f32(h)
        };
        for x in block.iter_mut() {
            *x = (*x / scale).round_ties_even().clamp(-127.0, 127.0) * scale;
        }
    }
}

/// Relative L2 error of `bf16(q(sum_m q(x_m)))` (`q` twice; once for
/// `n == 1`) over bf16 inputs.
fn two_roundings(n: usize, dist: Dist, q: impl Fn(&mut [f32])) -> f64 {
    let (inputs, reference) = gen_inputs(n, 1 << 14, dist, 3);
    let mut sum = vec![0f32; reference.len()];
    for input in &inputs {
        let mut v: Vec<f32> = input.iter().map(|&h| bf16_to_f32(h)).collect();
        if n > 1 {
            q(&mut v);
        }
        sum.iter_mut().zip(&v).for_each(|(s, x)| *s += x);
    }
    q(&mut sum);
    let out = sum.iter().map(|&x| f64::from(bf16_to_f32(f32_to_bf16(x))));
    rel_l2(out, &reference)
}

/// The measurement behind INT8's bf16 scale (docs/collnet.md): error of a
/// power-of-two scale (1 byte per 32 values, 1.94x smaller than bf16)
/// against 2-byte fp16 and bf16 scales (1.88x, the wire format), with the
/// two-rounding model `bf16(q(sum_m q(x_m)))`.
#[test]
#[ignore = "prints the INT8 scale study; run with --release -- --ignored --nocapture"]
fn print_int8_scale_study() {
    let codec = Codec::new(WireFormat::Int8);
    let wire_format = |v: &mut [f32]| {
        let mut wire = vec![0u8; encoded_len(WireFormat::Int8, v.len())];
        codec.encode_wire(Src::F32(v), &mut wire).unwrap();
        codec.decode_into_wire(&wire, Dst::F32(v)).unwrap();
    };
    println!(
        "| N | dist | power-of-two scale (33 B / 32 values) | fp16 scale (34 B) | bf16 scale (34 B, the wire format) |"
    );
    println!("|---:|---|---:|---:|---:|");
    for n in [1, 2, 8, 64, 256] {
        for dist in [Dist::Gaussian, Dist::StudentT3, Dist::GaussianOutliers] {
            let p = two_roundings(n, dist, |v| int8_other_scale_round_trip(v, true));
            let h = two_roundings(n, dist, |v| int8_other_scale_round_trip(v, false));
            let b = two_roundings(n, dist, wire_format);
            println!(
                "| {n} | {dist:?} | {:.2}% | {:.2}% | {:.2}% |",
                100.0 * p,
                100.0 * h,
                100.0 * b
            );
            assert!(b < p, "{n} {dist:?}: bf16 {b} vs power of two {p}");
        }
    }
}

#[test]
fn nan_stays_at_its_element() {
    // Member 3's element 40 is NaN; everyone's element 40 is otherwise 0 so
    // that the NaN-free comparison run has the same block scales.
    let (n, count, k) = (5, 100, 40);
    for dtype in [DataType::Bf16, DataType::F16, DataType::F32] {
        for path in [E4M3, INT8, Path::Exact] {
            let size = dtype.size();
            let mut clean = random_inputs(dtype, n, count, 11);
            for inp in &mut clean {
                inp[k * size..(k + 1) * size].fill(0);
            }
            let mut dirty = clean.clone();
            let nan: Vec<u8> = match dtype {
                DataType::F32 => f32::NAN.to_ne_bytes().to_vec(),
                DataType::F16 => 0x7E00u16.to_ne_bytes().to_vec(),
                _ => 0x7FC0u16.to_ne_bytes().to_vec(),
            };
            dirty[3][k * size..(k + 1) * size].copy_from_slice(&nan);
            let call = Call {
                n,
                dtype,
                op: RedOp::Sum,
                path,
                count,
                segment_elems: 64,
            };
            let a = run(&call, &dirty, 1).unwrap();
            let b = run(&call, &clean, 1).unwrap();
            for o in &a {
                assert_eq!(o, &a[0], "bit-identical");
                for i in 0..count {
                    let e = &o[i * size..(i + 1) * size];
                    let is_nan = match dtype {
                        DataType::F32 => f32::from_ne_bytes(e.try_into().unwrap()).is_nan(),
                        DataType::F16 => {
                            f16_to_f32(u16::from_ne_bytes(e.try_into().unwrap())).is_nan()
                        }
                        _ => bf16_to_f32(u16::from_ne_bytes(e.try_into().unwrap())).is_nan(),
                    };
                    assert_eq!(is_nan, i == k, "{dtype:?} {path:?} element {i}");
                    if i != k {
                        assert_eq!(e, &b[0][i * size..(i + 1) * size], "element {i} changed");
                    }
                }
            }
        }
    }
}

fn spec(n: usize, count: usize, path: Path) -> Spec {
    Spec {
        n,
        dtype: DataType::Bf16,
        op: RedOp::Sum,
        path,
        count,
    }
}

#[test]
fn rejects_bad_messages_without_changing_state() {
    for path in [Path::Exact, E4M3, INT8] {
        let sp = spec(3, 100, path); // shards 0..64, 64..96, 96..100
        let input = vec![0u8; 200];
        let (mut m, out) = Member::new(sp, 1, &input).unwrap();
        assert_eq!(out.len(), 2);
        let good = sp.payload_len(1);
        let contrib = |from, shard, len| Msg::Contribution {
            from,
            shard,
            bytes: vec![0; len],
        };
        let reduced = |shard, len: usize| Msg::Reduced {
            shard,
            bytes: Arc::from(vec![0u8; len]),
        };
        use CollError::*;
        assert_eq!(m.on_message(contrib(0, 7, good)), Err(UnknownShard(7)));
        assert_eq!(
            m.on_message(contrib(0, 0, good)),
            Err(NotOwner { shard: 0 })
        );
        assert_eq!(m.on_message(contrib(9, 1, good)), Err(UnknownMember(9)));
        assert_eq!(
            m.on_message(contrib(1, 1, good)),
            Err(DuplicateContribution { from: 1, shard: 1 })
        );
        assert!(matches!(
            m.on_message(contrib(0, 1, good + 1)),
            Err(WrongLength { .. })
        ));
        assert!(matches!(
            m.on_message(reduced(0, 3)),
            Err(WrongLength { .. })
        ));
        assert_eq!(
            m.on_message(reduced(1, good)),
            Err(OwnShardReduced { shard: 1 })
        );
        assert_eq!(m.on_message(reduced(5, 1)), Err(UnknownShard(5)));
        // Still works after the rejected messages.
        assert!(m.on_message(contrib(0, 1, good)).unwrap().is_empty());
        assert_eq!(m.on_message(contrib(2, 1, good)).unwrap().len(), 2);
        assert_eq!(
            m.on_message(contrib(2, 1, good)),
            Err(DuplicateContribution { from: 2, shard: 1 })
        );
        m.on_message(reduced(0, sp.payload_len(0))).unwrap();
        assert_eq!(
            m.on_message(reduced(0, sp.payload_len(0))),
            Err(DuplicateReduced { shard: 0 })
        );
        assert!(!m.is_done());
        m.on_message(reduced(2, sp.payload_len(2))).unwrap();
        assert!(m.is_done());
    }
    // Empty shards (fewer blocks than members) are unknown.
    let sp = spec(4, 40, Path::Exact);
    let (mut m, out) = Member::new(sp, 3, &[0u8; 80]).unwrap();
    assert_eq!(out.len(), 2);
    assert!(!m.is_done());
    assert_eq!(
        m.on_message(Msg::Reduced {
            shard: 2,
            bytes: Arc::from(vec![])
        }),
        Err(CollError::UnknownShard(2))
    );
    assert_eq!(
        m.on_message(Msg::Contribution {
            from: 0,
            shard: 3,
            bytes: vec![]
        }),
        Err(CollError::UnknownShard(3))
    );
    // Construction errors.
    assert_eq!(
        Member::new(sp, 4, &[0u8; 80]).err(),
        Some(CollError::BadRank { rank: 4, n: 4 })
    );
    assert_eq!(
        Member::new(sp, 0, &[0u8; 81]).err(),
        Some(CollError::InputLength {
            expected: 80,
            actual: 81
        })
    );
    assert_eq!(
        Member::new(spec(0, 1, Path::Exact), 0, &[0u8; 2]).err(),
        Some(CollError::NoMembers)
    );
    let bad = Spec {
        dtype: DataType::I32,
        ..spec(2, 1, E4M3)
    };
    assert!(matches!(
        Member::new(bad, 0, &[0u8; 4]),
        Err(CollError::Fp8Unsupported { .. })
    ));
}

#[test]
fn empty_call_is_done_at_once() {
    for path in [Path::Exact, E4M3, INT8] {
        let (m, out) = Member::new(spec(3, 0, path), 2, &[]).unwrap();
        assert!(out.is_empty() && m.is_done() && m.output().is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_never_panics(
        p in 0usize..4,
        n in 1usize..6,
        count in 0usize..200,
        msgs in proptest::collection::vec((any::<bool>(), 0usize..8, 0usize..8, 0usize..420), 0..40),
    ) {
        let path = COMPRESSED.get(p).copied().unwrap_or(Path::Exact);
        let sp = spec(n, count, path);
        let (mut m, _) = Member::new(sp, 0, &vec![0x3Fu8; count * 2]).unwrap();
        for (c, a, b, len) in msgs {
            let msg = if c {
                Msg::Contribution { from: a, shard: b, bytes: vec![0x55; len] }
            } else {
                Msg::Reduced { shard: a, bytes: Arc::from(vec![0xAA; len]) }
            };
            let _ = m.on_message(msg);
        }
    }

    #[test]
    fn random_orders_agree(n in 1usize..7, count in 0usize..300, seg in 1usize..200, seed in any::<u64>()) {
        let inputs = random_inputs(DataType::F32, n, count, seed);
        for path in [Path::Exact, E4M3, INT8] {
            let call = Call { n, dtype: DataType::F32, op: RedOp::Sum, path, count, segment_elems: seg };
            let a = run(&call, &inputs, seed).unwrap();
            let b = run(&call, &inputs, seed.wrapping_add(1)).unwrap();
            prop_assert!(a.iter().chain(&b).all(|o| *o == a[0]));
            if path == Path::Exact {
                prop_assert_eq!(&a[0], &reference(DataType::F32, RedOp::Sum, &inputs));
            }
        }
    }
}

/// Exact contributions are the input's own bytes, so the driver sends them
/// at admission and the step's start leaves them out; compressed ones need
/// the encoder, so they stay with the start. Exact reduced shards are
/// received in place.
#[test]
fn exact_contributions_go_out_before_the_start() {
    use super::steps::{Effects, Lane, SendBytes, Step};
    let (n, rank, count) = (3, 1, 3 * crate::codec::BLOCK);
    let input = vec![0u8; count * 2];
    let spec = |path| Spec {
        n,
        dtype: DataType::Bf16,
        op: RedOp::Sum,
        path,
        count,
    };

    let mut exact = Step::all_reduce(spec(Path::Exact), rank, 4096).expect("step");
    let mut early = Vec::new();
    assert!(
        exact.take_early_contributions(&mut early),
        "exact sends early"
    );
    let ranges: Vec<_> = early
        .iter()
        .map(|s| match &s.bytes {
            SendBytes::Input(r) => (s.to, s.lane, r.clone()),
            SendBytes::Owned(_) | SendBytes::Output(_) => {
                panic!("an early contribution is an input range")
            }
        })
        .collect();
    let shard = crate::codec::BLOCK * 2;
    assert_eq!(
        ranges,
        vec![
            (0, Lane::Contrib, 4096..4096 + shard),
            (2, Lane::Contrib, 4096 + 2 * shard..4096 + 3 * shard),
        ]
    );
    let mut started = Effects::default();
    exact.start(&input, &mut started).expect("start");
    assert!(started.sends.iter().all(|s| s.lane != Lane::Contrib));
    let mut expects = Vec::new();
    exact.expects(&mut expects);
    assert!(expects
        .iter()
        .all(|e| (e.lane == Lane::Result) == e.into_output.is_some()));

    let mut compressed =
        Step::all_reduce(spec(Path::Compressed(WireFormat::E4M3)), rank, 0).expect("step");
    assert!(!compressed.take_early_contributions(&mut early));
    let mut started = Effects::default();
    compressed.start(&input, &mut started).expect("start");
    assert_eq!(
        started
            .sends
            .iter()
            .filter(|s| s.lane == Lane::Contrib)
            .count(),
        n - 1
    );
    expects.clear();
    compressed.expects(&mut expects);
    assert!(expects.iter().all(|e| e.into_output.is_none()));
}

/// Folds every other member's contribution into an exact segment's own
/// shard, in `order`, as the worker does; returns the shard and the
/// messages that send it on.
fn fold_own_shard(
    step: &mut super::steps::Step,
    inputs: &[Vec<u8>],
    rank: usize,
    order: &[usize],
) -> (Vec<u8>, usize) {
    use super::steps::{Effects, Lane};
    let shard = step.fold_range();
    let mine = &inputs[rank][shard.clone()];
    let mut out = vec![0u8; shard.len()];
    let mut sends = Vec::new();
    step.start(&inputs[rank], &mut Effects::default())
        .expect("start");
    for &m in order {
        let theirs = inputs[m][shard.clone()].to_vec();
        let own = if step.reads_own_input(m, Lane::Contrib) {
            mine
        } else {
            &[]
        };
        step.on_contribution(m, Lane::Contrib, theirs, own, &mut out, &mut sends)
            .expect("fold");
    }
    (out, sends.len())
}

/// A step renewed in a finished one's memory (the group reuses them) folds
/// exactly as a new one, whatever the spare had been: other members, rank
/// and length, or a compressed segment.
#[test]
fn a_renewed_step_reduces_as_a_new_one() {
    use super::steps::Step;
    let block = crate::codec::BLOCK;
    let spec = |n, count, path| Spec {
        n,
        dtype: DataType::Bf16,
        op: RedOp::Sum,
        path,
        count,
    };
    let compressed = Path::Compressed(WireFormat::E4M3);
    let mut spare = Box::new(Step::all_reduce(spec(2, 2 * block, compressed), 0, 0).expect("step"));
    for (n, rank, count, seed) in [
        (3, 1, 3 * block, 1),
        (4, 0, 8 * block, 2),
        (2, 1, 2 * block, 3),
        (5, 4, 7 * block, 4),
    ] {
        let inputs = random_inputs(DataType::Bf16, n, count, seed);
        let order: Vec<usize> = (0..n).rev().filter(|&m| m != rank).collect();
        let mut fresh = Step::all_reduce(spec(n, count, Path::Exact), rank, 0).expect("step");
        let mut renewed =
            Step::renew_all_reduce(spare, spec(n, count, Path::Exact), rank, 0).expect("step");
        let (want, sends) = fold_own_shard(&mut fresh, &inputs, rank, &order);
        assert_eq!(sends, n - 1);
        assert_eq!(
            fold_own_shard(&mut renewed, &inputs, rank, &order),
            (want, sends),
            "{n} members, rank {rank}"
        );
        assert!(renewed.result_lane_closed() && !renewed.is_done());
        spare = renewed;
    }
}

/// Runs one step per member to completion, in one process: starts each on
/// its input, then delivers their messages in an order drawn from `seed`
/// and applies their writes. For steps that do not fold in place
/// (compressed allreduce segments, allgather and reduce-scatter windows).
/// Returns every member's output of `out_len` bytes.
fn drive_steps(
    steps: &mut [Box<super::steps::Step>],
    inputs: &[Vec<u8>],
    out_len: usize,
    seed: u64,
) -> Vec<Vec<u8>> {
    use super::steps::{Effects, Lane, SendBytes};
    let n = steps.len();
    let mut outputs = vec![vec![0u8; out_len]; n];
    let mut wire: Vec<(usize, usize, Lane, Vec<u8>)> = Vec::new();
    let mut fx = Effects::default();
    let apply = |rank: usize,
                 fx: &mut Effects,
                 outputs: &mut [Vec<u8>],
                 wire: &mut Vec<(usize, usize, Lane, Vec<u8>)>| {
        for w in fx.writes.drain(..) {
            outputs[rank][w.offset..w.offset + w.bytes.len()].copy_from_slice(&w.bytes);
        }
        for s in fx.sends.drain(..) {
            let bytes = match s.bytes {
                SendBytes::Owned(b) => b.to_vec(),
                SendBytes::Input(r) => inputs[rank][r].to_vec(),
                SendBytes::Output(r) => outputs[rank][r].to_vec(),
            };
            wire.push((rank, s.to, s.lane, bytes));
        }
    };
    for (rank, step) in steps.iter_mut().enumerate() {
        let range = step.input_range();
        step.start(&inputs[rank][range], &mut fx).expect("start");
        apply(rank, &mut fx, &mut outputs, &mut wire);
    }
    let mut rng = SplitMix::new(seed);
    while !wire.is_empty() {
        let (from, to, lane, bytes) = wire.swap_remove(rng.below(wire.len()));
        steps[to]
            .on_message(from, lane, bytes, &mut fx)
            .expect("message");
        apply(to, &mut fx, &mut outputs, &mut wire);
    }
    assert!(steps.iter().all(|s| s.is_done()), "every step done");
    outputs
}

/// Steps renewed from finished ones, of every kind that does not fold in
/// place, give what new steps give, through changes of member count, size,
/// window and dtype: nothing of the call before carries over.
#[test]
fn renewed_steps_of_every_kind_give_a_new_ones_bytes() {
    use super::steps::{Step, StepKind, Window};
    /// A step of `rank`, renewed from a spare when there is one.
    type Maker = Box<dyn Fn(Option<Box<Step>>, usize) -> Box<Step>>;
    let block = crate::codec::BLOCK;
    let all_reduce = |n, count| -> Maker {
        let spec = Spec {
            n,
            dtype: DataType::Bf16,
            op: RedOp::Sum,
            path: Path::Compressed(WireFormat::E4M3),
            count,
        };
        Box::new(move |spare, rank| match spare {
            Some(s) => Step::renew_all_reduce(s, spec, rank, 0).expect("renewed"),
            None => Box::new(Step::all_reduce(spec, rank, 0).expect("step")),
        })
    };
    let window = |bytes_per_rank, offset, bytes| Window {
        bytes_per_rank,
        offset,
        bytes,
    };
    let all_gather = |n, window: Window| -> Maker {
        Box::new(move |spare, rank| match spare {
            Some(s) => Step::renew_all_gather(s, n, rank, window).expect("renewed"),
            None => Box::new(Step::all_gather(n, rank, window).expect("step")),
        })
    };
    let reduce_scatter = |n, dtype, op, window: Window| -> Maker {
        Box::new(move |spare, rank| match spare {
            Some(s) => Step::renew_reduce_scatter(s, n, rank, dtype, op, window).expect("renewed"),
            None => Box::new(Step::reduce_scatter(n, rank, dtype, op, window).expect("step")),
        })
    };
    // (members, maker, input bytes per member, output bytes)
    let cases: Vec<(usize, Maker, usize, usize)> = vec![
        (3, all_reduce(3, 3 * block), 6 * block, 6 * block),
        (2, all_reduce(2, 5 * block), 10 * block, 10 * block),
        (4, all_reduce(4, 9 * block), 18 * block, 18 * block),
        (3, all_gather(3, window(40, 0, 120)), 40, 120),
        (4, all_gather(4, window(40, 30, 70)), 40, 70),
        (2, all_gather(2, window(24, 0, 48)), 24, 48),
        (
            3,
            reduce_scatter(3, DataType::F32, RedOp::Sum, window(16, 0, 48)),
            48,
            16,
        ),
        (
            4,
            reduce_scatter(4, DataType::Bf16, RedOp::Max, window(8, 8, 24)),
            24,
            8,
        ),
        (
            2,
            reduce_scatter(2, DataType::F32, RedOp::Sum, window(32, 0, 64)),
            64,
            32,
        ),
    ];
    let mut spares: Vec<Vec<Box<Step>>> = (0..StepKind::COUNT).map(|_| Vec::new()).collect();
    for (i, (n, make, in_len, out_len)) in cases.iter().enumerate() {
        let inputs = random_inputs(DataType::Bf16, *n, in_len / 2, i as u64 + 1);
        let mut fresh: Vec<_> = (0..*n).map(|r| make(None, r)).collect();
        let want = drive_steps(&mut fresh, &inputs, *out_len, 7);
        let kind = fresh[0].kind() as usize;
        let mut renewed: Vec<_> = (0..*n).map(|r| make(spares[kind].pop(), r)).collect();
        assert_eq!(
            drive_steps(&mut renewed, &inputs, *out_len, 11),
            want,
            "case {i}"
        );
        spares[kind].extend(renewed);
    }
}

/// An exact segment of three members, driven as the worker does: its
/// contributions fold in place, the owner's input is asked for once, the
/// reduced shard goes from the output to both others, the others' results
/// count in once each, and what does not belong is refused by kind.
#[test]
fn an_exact_segment_folds_in_place_and_refuses_what_does_not_belong() {
    use super::steps::{Effects, Lane, SendBytes, Step};
    use CollError::*;
    let (n, rank, count) = (3, 1, 3 * crate::codec::BLOCK);
    let shard = crate::codec::BLOCK * 2;
    let spec = Spec {
        n,
        dtype: DataType::Bf16,
        op: RedOp::Sum,
        path: Path::Exact,
        count,
    };
    let inputs = random_inputs(DataType::Bf16, n, count, 5);
    let mut step = Step::all_reduce(spec, rank, 0).expect("step");
    assert!(step.folds_in_place(Lane::Contrib) && !step.folds_in_place(Lane::Result));
    assert_eq!(step.fold_range(), shard..2 * shard);
    step.start(&inputs[rank], &mut Effects::default())
        .expect("start");
    let mine = &inputs[rank][shard..2 * shard];
    let mut out = vec![0u8; shard];
    let theirs = |m: usize| inputs[m][shard..2 * shard].to_vec();

    // Member 2 first: it waits for member 0, and nobody reads the input.
    assert!(!step.reads_own_input(2, Lane::Contrib));
    let mut sends = Vec::new();
    step.on_contribution(2, Lane::Contrib, theirs(2), &[], &mut out, &mut sends)
        .expect("waits");
    assert!(sends.is_empty());
    assert!(!step.result_lane_closed());
    assert_eq!(
        step.on_contribution(0, Lane::Result, theirs(0), mine, &mut out, &mut sends)
            .err(),
        Some(UnknownMember(0))
    );
    // Member 0 completes it: every fold runs, the owner's among them.
    assert!(step.reads_own_input(0, Lane::Contrib));
    step.on_contribution(0, Lane::Contrib, theirs(0), mine, &mut out, &mut sends)
        .expect("folds");
    let to: Vec<_> = sends
        .iter()
        .map(|s| match &s.bytes {
            SendBytes::Output(r) => (s.to, s.lane, r.clone()),
            _ => panic!("the reduced shard goes from the output"),
        })
        .collect();
    assert_eq!(
        to,
        vec![
            (0, Lane::Result, shard..2 * shard),
            (2, Lane::Result, shard..2 * shard)
        ]
    );
    let mut reducer = Reducer::new(DataType::Bf16, RedOp::Sum, None, n, rank, shard / 2);
    let mut want = None;
    for m in 0..n {
        want = reducer.accept(m, theirs(m)).unwrap();
    }
    assert_eq!(want, Some(out.clone()), "the Reducer's bytes");
    assert!(step.result_lane_closed() && !step.is_done());
    assert_eq!(
        step.on_contribution(0, Lane::Contrib, theirs(0), mine, &mut out, &mut sends)
            .err(),
        Some(DuplicateContribution {
            from: 0,
            shard: rank
        })
    );

    // Results: the others' once each; never its own; the right length.
    assert_eq!(
        step.in_place(rank, Lane::Result, shard).err(),
        Some(OwnShardReduced { shard: rank })
    );
    assert_eq!(
        step.in_place(7, Lane::Result, shard).err(),
        Some(UnknownMember(7))
    );
    assert!(matches!(
        step.in_place(0, Lane::Result, shard - 2),
        Err(WrongLength { .. })
    ));
    step.in_place(0, Lane::Result, shard)
        .expect("member 0's result");
    assert_eq!(
        step.in_place(0, Lane::Result, shard).err(),
        Some(DuplicateReduced { shard: 0 })
    );
    assert!(!step.is_done());
    step.in_place(2, Lane::Result, shard)
        .expect("member 2's result");
    assert!(step.is_done());

    // Fewer blocks than members: member 2's shard is empty, so nothing of
    // it is awaited, nor accepted.
    let small = Spec {
        count: 2 * crate::codec::BLOCK,
        ..spec
    };
    let mut step = Step::all_reduce(small, 0, 0).expect("step");
    assert_eq!(
        step.in_place(2, Lane::Result, 0).err(),
        Some(UnknownShard(2))
    );
    let mut two = Step::all_reduce(small, 2, 0).expect("step");
    assert!(!two.folds_in_place(Lane::Result));
    assert_eq!(
        two.on_contribution(0, Lane::Contrib, Vec::new(), &[], &mut [], &mut sends)
            .err(),
        Some(UnknownShard(2))
    );
}

/// Puts NaNs of different payloads, infinities and signed zeros into every
/// float input at the first and last four elements and around the first
/// 16 KiB chunk boundary (where the folds' SIMD parts, scalar tails and
/// chunks meet), different on each member, so the fold's operand order
/// decides the bits there.
fn with_specials(dtype: DataType, inputs: &mut [Vec<u8>], count: usize) {
    let specials: Vec<Vec<u8>> = match dtype {
        DataType::Bf16 => [0x7FC1u16, 0xFFC2, 0x7F80, 0x8000]
            .iter()
            .map(|v| v.to_ne_bytes().to_vec())
            .collect(),
        DataType::F16 => [0x7E01u16, 0xFE02, 0x7C00, 0x8000]
            .iter()
            .map(|v| v.to_ne_bytes().to_vec())
            .collect(),
        DataType::F32 => [0x7FC0_0001u32, 0xFFC0_0002, 0x7F80_0000, 0x8000_0000]
            .iter()
            .map(|v| v.to_ne_bytes().to_vec())
            .collect(),
        DataType::F64 => [
            0x7FF8_0000_0000_0001u64,
            0xFFF8_0000_0000_0002,
            0x7FF0_0000_0000_0000,
            0x8000_0000_0000_0000,
        ]
        .iter()
        .map(|v| v.to_ne_bytes().to_vec())
        .collect(),
        _ => return,
    };
    let size = dtype.size();
    let boundary = 16 * 1024 / size;
    let places: Vec<usize> = (0..count.min(4))
        .chain(count.saturating_sub(4).max(4)..count)
        .chain((boundary.saturating_sub(2)..boundary + 2).filter(|&i| i < count))
        .collect();
    for (m, input) in inputs.iter_mut().enumerate() {
        for (k, &i) in places.iter().enumerate() {
            let v = &specials[(k + m) % 4];
            input[size * i..size * (i + 1)].copy_from_slice(v);
        }
    }
}

/// The in-place reduction is bit for bit the `Reducer`'s, for every dtype
/// and op, 2 to 8 members, every owner, contributions in any order, over
/// lengths that cross its cache-sized chunks and leave a scalar tail; and
/// it leaves the output alone until its last fold.
#[test]
fn in_place_reduction_is_the_reducer_in_any_arrival_order() {
    let ops = [RedOp::Sum, RedOp::Prod, RedOp::Max, RedOp::Min];
    let mut rng = SplitMix::new(41);
    for dtype in DataType::ALL {
        for op in ops {
            for n in 2..=8 {
                let wide = if dtype.size() == 1 { 16411 } else { 8203 };
                for count in [1, 9, wide] {
                    let seed = (n * 1000 + count) as u64;
                    let mut inputs = random_inputs(dtype, n, count, seed);
                    with_specials(dtype, &mut inputs, count);
                    let owner = (rng.next_u64() % n as u64) as usize;
                    let mut reducer = Reducer::new(dtype, op, None, n, owner, count);
                    let mut want = None;
                    for (m, input) in inputs.iter().enumerate() {
                        want = reducer.accept(m, input.clone()).unwrap();
                    }
                    let want = want.expect("all members in");

                    let mut order: Vec<usize> = (0..n).filter(|&m| m != owner).collect();
                    for i in (1..order.len()).rev() {
                        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
                    }
                    let mut fold =
                        InPlaceReducer::new(dtype, op, n, owner, want.len()).expect("reducer");
                    let sentinel = vec![0xA5u8; want.len()];
                    let mut out = sentinel.clone();
                    let mut reads = 0;
                    for (k, &m) in order.iter().enumerate() {
                        // The owner's input only where the fold says it reads it.
                        let mine: &[u8] = if fold.reads_mine(m) {
                            reads += 1;
                            &inputs[owner]
                        } else {
                            &[]
                        };
                        let done = fold.accept(m, inputs[m].clone(), mine, &mut out).unwrap();
                        let last = k + 1 == order.len();
                        assert_eq!(done, last, "{dtype:?} {op:?} n {n}");
                        if !last {
                            assert!(out == sentinel, "{dtype:?} {op:?} n {n}: out written early");
                        }
                    }
                    assert!(
                        out == want,
                        "{dtype:?} {op:?} n {n} owner {owner} count {count}"
                    );
                    assert_eq!(reads, 1, "the owner's input is read by one fold");
                }
            }
        }
    }
}

#[test]
fn in_place_reduction_rejects_what_it_cannot_fold() {
    use CollError::*;
    let (n, owner, bytes) = (3, 1, 8);
    assert_eq!(
        InPlaceReducer::new(DataType::F32, RedOp::Sum, 1, 0, bytes).err(),
        Some(BadRank { rank: 0, n: 1 })
    );
    assert_eq!(
        InPlaceReducer::new(DataType::F32, RedOp::Sum, n, n, bytes).err(),
        Some(BadRank { rank: n, n })
    );
    let mut fold = InPlaceReducer::new(DataType::F32, RedOp::Sum, n, owner, bytes).unwrap();
    let (mine, mut out) = ([1u8; 8], [0u8; 8]);
    let good = || vec![0u8; bytes];
    assert_eq!(
        fold.accept(3, good(), &mine, &mut out),
        Err(UnknownMember(3))
    );
    assert_eq!(
        fold.accept(owner, good(), &mine, &mut out),
        Err(UnknownMember(owner))
    );
    assert!(matches!(
        fold.accept(0, vec![0u8; 4], &mine, &mut out),
        Err(WrongLength { .. })
    ));
    assert!(matches!(
        fold.accept(0, good(), &mine[..4], &mut out),
        Err(WrongLength { .. })
    ));
    // Still works after the rejected ones.
    assert_eq!(fold.accept(2, good(), &mine, &mut out), Ok(false));
    assert_eq!(
        fold.accept(2, good(), &mine, &mut out),
        Err(DuplicateContribution {
            from: 2,
            shard: owner
        })
    );
    assert_eq!(fold.accept(0, good(), &mine, &mut out), Ok(true));
    assert!(fold.is_done());
    assert_eq!(out, mine);
}

/// A pair's fold (`fold_pair_into`) is bit for bit a two-member
/// `Reducer` in member order, for every dtype and op, NaNs and
/// infinities included, over lengths that leave a scalar tail after the
/// SIMD part.
#[test]
fn pair_fold_into_a_third_buffer_is_the_reducer_of_two() {
    let ops = [RedOp::Sum, RedOp::Prod, RedOp::Max, RedOp::Min];
    for dtype in DataType::ALL {
        for op in ops {
            for count in [1, 7, 8, 9, 100, 1029] {
                let mut inputs = random_inputs(dtype, 2, count, count as u64 + 3);
                with_specials(dtype, &mut inputs, count);
                let mut reducer = Reducer::new(dtype, op, None, 2, 0, count);
                assert_eq!(reducer.accept(0, inputs[0].clone()).unwrap(), None);
                let want = reducer
                    .accept(1, inputs[1].clone())
                    .unwrap()
                    .expect("two of two");
                let mut got = vec![0u8; want.len()];
                fold_pair_into(dtype, op, &inputs[0], &inputs[1], &mut got);
                assert!(got == want, "{dtype:?} {op:?} count {count}");
            }
        }
    }
}
