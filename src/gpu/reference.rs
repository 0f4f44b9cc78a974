//! The CPU definition of what the GPU fold computes, bit for bit.
//!
//! Encode and decode are the CPU codec itself (`crate::codec::Codec`). The
//! owner's fold is spelled out here, mirroring `collnet::algo::Reducer` on
//! the FP8 path; a unit test pins the two together, so a change to the
//! reducer shows up as a failing test rather than as GPU owners silently
//! computing something else.
//!
//! NaN signs: IEEE leaves the sign of a NaN sum open. x86 SSE returns the
//! first NaN operand (quieted) and makes Inf - Inf the negative "default
//! NaN"; which operand comes first in the reducer's compiled loops is the
//! compiler's choice. In an optimized x86-64 build the decoded contribution
//! comes first in the wire fold and in the f16/bf16 own-element fold, the
//! accumulator first in the f32 own-element fold. [`reduce_encode`] states
//! that order explicitly (as `cuda/codec.cu` does), so it does not depend
//! on how this file is compiled. The sign only shows in the sign bit of an
//! FP8 NaN code when two NaNs meet; decoded values are the canonical NaN
//! either way.

use super::Elem;
use crate::codec::{Codec, CodecError, Dst, Src};

/// x86's default NaN, the result of Inf - Inf.
const X86_DEFAULT_NAN: u32 = 0xFFC0_0000;

/// The owner's fold of one shard of `own.len()` values over
/// `wires.len()` members: `acc = 0`; for each member `m` in order, add the
/// owner's own elements (`m == own_index`, folded exactly) or member `m`'s
/// decoded wire bytes; then `wire_out = encode(acc)` and
/// `dst = decode(wire_out)`. `wires[own_index]` is not read.
pub fn reduce_encode(
    codec: &Codec,
    own_index: usize,
    own: Src<'_>,
    wires: &[&[u8]],
    wire_out: &mut [u8],
    dst: Dst<'_>,
) -> Result<(), CodecError> {
    let n = own.len();
    let mut acc = vec![0f32; n];
    let mut decoded = vec![0f32; n];
    for (m, wire) in wires.iter().enumerate() {
        if m == own_index {
            fold_native(own, &mut acc);
        } else {
            codec.decode_into_wire(wire, Dst::F32(&mut decoded))?;
            for (a, &x) in acc.iter_mut().zip(&decoded) {
                *a = add_nan_first(x, *a);
            }
        }
    }
    codec.encode_wire(Src::F32(&acc), wire_out)?;
    codec.decode_into_wire(wire_out, dst)
}

/// `acc += own`: the accumulator is the first operand for f32, the element
/// for f16/bf16.
fn fold_native(own: Src<'_>, acc: &mut [f32]) {
    match own {
        Src::F32(v) => {
            for (a, &x) in acc.iter_mut().zip(v) {
                *a = add_nan_first(*a, x);
            }
        }
        Src::F16(v) => {
            for (a, &h) in acc.iter_mut().zip(v) {
                *a = add_nan_first(crate::codec::f16_to_f32(h), *a);
            }
        }
        Src::Bf16(v) => {
            for (a, &h) in acc.iter_mut().zip(v) {
                *a = add_nan_first(crate::codec::bf16_to_f32(h), *a);
            }
        }
    }
}

/// The owner's exact fold of one shard (the exact path's sum), from every
/// member's raw native-endian elements in member order: member 0's
/// elements as they are (f32) or widened (f16/bf16), then `+ x_m` in f32
/// for each further member (accumulator first for f32, element first for
/// f16/bf16, as in [`reduce_encode`]), narrowed once with
/// round-to-nearest-even. What `airamp_sum_exact_*` computes.
pub fn sum_exact(elem: Elem, members: &[&[u8]]) -> Vec<u8> {
    let size = elem.size();
    let n = members.first().map_or(0, |m| m.len() / size);
    let widen = |b: &[u8]| match elem {
        Elem::F32 => f32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        Elem::F16 => crate::codec::f16_to_f32(u16::from_ne_bytes([b[0], b[1]])),
        Elem::Bf16 => crate::codec::bf16_to_f32(u16::from_ne_bytes([b[0], b[1]])),
    };
    let mut out = Vec::with_capacity(n * size);
    for i in 0..n {
        let mut acc = 0f32;
        for (m, bytes) in members.iter().enumerate() {
            let x = widen(&bytes[i * size..(i + 1) * size]);
            acc = match (m, elem) {
                (0, _) => x,
                (_, Elem::F32) => add_nan_first(acc, x),
                _ => add_nan_first(x, acc),
            };
        }
        match elem {
            Elem::F32 => out.extend_from_slice(&acc.to_ne_bytes()),
            Elem::F16 => out.extend_from_slice(&crate::codec::f32_to_f16(acc).to_ne_bytes()),
            Elem::Bf16 => out.extend_from_slice(&crate::codec::f32_to_bf16(acc).to_ne_bytes()),
        }
    }
    out
}

/// `p + q` with x86 SSE NaN rules: the first NaN operand, quieted; a NaN
/// made by the addition itself is the default NaN.
pub fn add_nan_first(p: f32, q: f32) -> f32 {
    let quiet = |x: f32| f32::from_bits(x.to_bits() | 0x0040_0000);
    if p.is_nan() {
        quiet(p)
    } else if q.is_nan() {
        quiet(q)
    } else {
        let r = p + q;
        if r.is_nan() {
            f32::from_bits(X86_DEFAULT_NAN)
        } else {
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{
        bf16_to_f32, encoded_len, f16_to_f32, f32_to_bf16, f32_to_f16, fp8_to_f32, WireFormat,
    };
    use crate::collnet::algo::{DataType, RedOp, Reducer};

    /// Deterministic values with every special class mixed in.
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match (s >> 59) as u32 {
                    0 => f32::NAN,
                    1 => -f32::NAN,
                    2 => f32::INFINITY,
                    3 => f32::NEG_INFINITY,
                    4 => 0.0,
                    5 => -0.0,
                    6 => f32::from_bits((s as u32) & 0x807F_FFFF), // subnormal
                    _ => {
                        let mag = f32::from_bits(0x3F80_0000 | ((s as u32) & 0x7F_FFFF)) - 1.0;
                        let exp = ((s >> 32) % 40) as i32 - 20;
                        let v = mag * 2f32.powi(exp) * (1 + i % 3) as f32;
                        if s & (1 << 40) != 0 {
                            -v
                        } else {
                            v
                        }
                    }
                }
            })
            .collect()
    }

    fn native_bytes(dtype: DataType, v: &[f32]) -> Vec<u8> {
        match dtype {
            DataType::F32 => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            DataType::F16 => v
                .iter()
                .flat_map(|&x| f32_to_f16(x).to_ne_bytes())
                .collect(),
            _ => v
                .iter()
                .flat_map(|&x| f32_to_bf16(x).to_ne_bytes())
                .collect(),
        }
    }

    /// The reference fold equals `collnet::algo::Reducer` bit for bit, wire
    /// and decoded output (NaN code signs too, in an optimized build).
    #[test]
    fn matches_the_collnet_reducer() {
        for fmt in [WireFormat::E4M3, WireFormat::E5M2] {
            let codec = Codec::new(fmt);
            for dtype in [DataType::F32, DataType::F16, DataType::Bf16] {
                for members in 1..=4usize {
                    for own_index in 0..members {
                        for n in [1usize, 31, 70, 300] {
                            let seed = (members * 7 + own_index) as u64 * 1000 + n as u64;
                            check_one(&codec, dtype, members, own_index, n, seed);
                        }
                    }
                }
            }
        }
    }

    /// The exact reference fold equals the exact path's `Reducer` bit for
    /// bit (a NaN's sign aside in unoptimized builds, as above).
    #[test]
    fn sum_exact_matches_the_collnet_reducer() {
        for (elem, dtype) in [
            (Elem::F32, DataType::F32),
            (Elem::F16, DataType::F16),
            (Elem::Bf16, DataType::Bf16),
        ] {
            for members in 1..=5usize {
                for n in [1usize, 31, 300] {
                    let seed = members as u64 * 977 + n as u64;
                    let inputs: Vec<Vec<u8>> = (0..members)
                        .map(|m| native_bytes(dtype, &values(seed * 13 + m as u64, n)))
                        .collect();
                    let mut reducer = Reducer::new(dtype, RedOp::Sum, None, members, 0, n);
                    let mut expected = None;
                    for (m, bytes) in inputs.iter().enumerate() {
                        expected = reducer.accept(m, bytes.clone()).unwrap().or(expected);
                    }
                    let expected = expected.expect("reducer finished");
                    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
                    let got = sum_exact(elem, &refs);
                    let what = format!("{dtype:?} members={members} n={n}");
                    assert_eq!(got.len(), expected.len(), "{what}");
                    let size = elem.size();
                    for (i, (a, b)) in got.chunks(size).zip(expected.chunks(size)).enumerate() {
                        let nan = |c: &[u8]| match elem {
                            Elem::F32 => f32::from_ne_bytes([c[0], c[1], c[2], c[3]]).is_nan(),
                            Elem::F16 => f16_to_f32(u16::from_ne_bytes([c[0], c[1]])).is_nan(),
                            Elem::Bf16 => bf16_to_f32(u16::from_ne_bytes([c[0], c[1]])).is_nan(),
                        };
                        let same = a == b || (cfg!(debug_assertions) && nan(a) && nan(b));
                        assert!(same, "{what}: element {i}: {a:?} vs reducer {b:?}");
                    }
                }
            }
        }
    }

    fn check_one(
        codec: &Codec,
        dtype: DataType,
        members: usize,
        own_index: usize,
        n: usize,
        seed: u64,
    ) {
        let own_vals = values(seed, n);
        let own_native = native_bytes(dtype, &own_vals);
        let wires: Vec<Vec<u8>> = (0..members)
            .map(|m| {
                let mut w = vec![0u8; encoded_len(codec.format(), n)];
                codec
                    .encode_wire(Src::F32(&values(seed * 31 + m as u64, n)), &mut w)
                    .unwrap();
                w
            })
            .collect();
        let mut reducer = Reducer::new(dtype, RedOp::Sum, Some(*codec), members, own_index, n);
        let mut expected = None;
        for (m, w) in wires.iter().enumerate() {
            let out = if m == own_index {
                reducer.accept_native(m, own_native.clone())
            } else {
                reducer.accept(m, w.clone())
            };
            expected = out.unwrap().or(expected);
        }
        let expected = expected.expect("reducer finished");

        let halves: Vec<u16> = own_native
            .chunks_exact(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect();
        let own = match dtype {
            DataType::F32 => Src::F32(&own_vals),
            DataType::F16 => Src::F16(&halves),
            _ => Src::Bf16(&halves),
        };
        let refs: Vec<&[u8]> = wires.iter().map(Vec::as_slice).collect();
        let mut wire_out = vec![0u8; encoded_len(codec.format(), n)];
        let mut out = vec![0f32; n];
        reduce_encode(
            codec,
            own_index,
            own,
            &refs,
            &mut wire_out,
            Dst::F32(&mut out),
        )
        .unwrap();
        let what = format!(
            "{dtype:?} {:?} members={members} own={own_index} n={n}",
            codec.format()
        );
        if cfg!(debug_assertions) {
            // Unoptimized code orders the reducer's NaN operands differently
            // (see the module docs): only there, a NaN code's sign may differ.
            assert_eq!(wire_out.len(), expected.len());
            let fp8 = codec.format().fp8().expect("an FP8 format");
            let nan = |c: u8| fp8_to_f32(c, fp8).is_nan();
            for (i, (&a, &b)) in wire_out.iter().zip(&expected).enumerate() {
                let is_code = i >= crate::codec::num_blocks(n);
                let same = a == b || (is_code && nan(a) && nan(b) && (a ^ b) == 0x80);
                assert!(same, "{what}: byte {i}: {a:#04x} vs reducer {b:#04x}");
            }
        } else {
            assert_eq!(wire_out, expected, "{what}");
        }
        let mut decoded = vec![0f32; n];
        codec
            .decode_into_wire(&expected, Dst::F32(&mut decoded))
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&out), bits(&decoded));
    }
}
