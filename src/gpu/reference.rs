//! The CPU definition of what the GPU fold computes, bit for bit.
//!
//! Encode and decode are the CPU codec itself (`crate::codec::Codec`), for
//! every wire format (E4M3, E5M2, INT8). The owner's fold is spelled out
//! here, mirroring `collnet::algo::Reducer` on the compressed path; a unit
//! test pins the two together, so a change to the reducer shows up as a
//! failing test rather than as GPU owners silently computing something
//! else.
//!
//! INT8's two f32 divisions (`max / 127` for the scale, `1 / scale` for
//! the encoder's multiplier) are done by the kernels in integers, exactly;
//! this module's tests mirror that integer arithmetic and check it against
//! the codec (every scale, and a dense sample of maxima; an ignored test
//! covers every f32).
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
//! either way. INT8 has a single NaN code (-128), so there it never shows.

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
        bf16_to_f32, code_to_f32, encoded_len, f16_to_f32, f32_to_bf16, f32_to_f16, WireFormat,
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
        for fmt in WireFormat::ALL {
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
            // (see the module docs): only there, an FP8 NaN code's sign may
            // differ (INT8's one NaN code has no sign).
            assert_eq!(wire_out.len(), expected.len());
            let fmt = codec.format();
            let nan = |c: u8| code_to_f32(c, fmt).is_nan();
            for (i, (&a, &b)) in wire_out.iter().zip(&expected).enumerate() {
                let is_code = i >= crate::codec::scales_len(fmt, n);
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

/// The INT8 arithmetic of `cuda/codec.cu`, line by line, against the
/// codec's f32 divisions (`codec::block_scale`).
#[cfg(test)]
mod int8_kernel_tests {
    use crate::codec::{bf16_to_f32, block_scale, f32_to_int8, WireFormat};

    /// cuda/codec.cu `int8_scale_for_max`: `max / 127` rounded to nearest
    /// even in integers, at least 2^-126, rounded up to bf16.
    fn kernel_scale_for_max(max_abs_bits: u32) -> u16 {
        let e = max_abs_bits >> 23;
        let m = (max_abs_bits & 0x7F_FFFF) | 0x80_0000;
        let small = m < (127 << 17);
        let num = if small { m << 7 } else { m << 6 };
        let mut q = num / 127;
        q += u32::from(num - q * 127 >= 64);
        let biased = e as i32 - if small { 7 } else { 6 };
        let ideal = if biased >= 1 {
            (((biased - 1) as u32) << 23) + q
        } else {
            0x0080_0000
        };
        let mut s = ideal >> 16;
        s += u32::from(s << 16 != ideal);
        if max_abs_bits == 0 {
            0x3F80
        } else {
            s as u16
        }
    }

    /// cuda/codec.cu `int8_inverse`: `1 / scale` rounded to nearest even.
    fn kernel_inverse(s: u16) -> f32 {
        let s = u32::from(s);
        let es = (s >> 7) & 0xFF;
        let mb = (s & 0x7F) | 0x80;
        let mut q = 0x8000_0000 / mb;
        q += u32::from(2 * (0x8000_0000 - q * mb) > mb);
        f32::from_bits(((252 - es) << 23) + q)
    }

    /// cuda/codec.cu `f32_to_int8`: clamp, then round by adding 1.5 * 2^23.
    fn kernel_to_int8(y: f32) -> u8 {
        if !y.is_finite() {
            return 0x80;
        }
        let v = y.clamp(-127.0, 127.0);
        ((v + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000) & 0xFF) as u8
    }

    fn check_max(bits: u32) {
        let (scale, inv) = block_scale(WireFormat::Int8, bits);
        let got = kernel_scale_for_max(bits);
        assert_eq!(got, scale, "scale of max {bits:#010x}");
        assert_eq!(
            kernel_inverse(got).to_bits(),
            inv.to_bits(),
            "inverse of scale {got:#06x} (max {bits:#010x})"
        );
    }

    /// Every exponent, with the mantissas where the integer division
    /// changes case or rounds at an edge, and a stride through the rest.
    #[test]
    fn scale_matches_the_codec() {
        let edges = [0u32, 0x7F_FFFF, (127 << 17) - 0x80_0000];
        for e in 0..=254u32 {
            let mut mantissas: Vec<u32> = edges
                .iter()
                .flat_map(|&c| c.saturating_sub(600)..=(c + 600).min(0x7F_FFFF))
                .collect();
            mantissas.extend((0..0x80_0000).step_by(9973));
            for m in mantissas {
                check_max((e << 23) | m);
            }
        }
    }

    /// Every scale the encoder can choose, and the inverse of each.
    #[test]
    fn inverse_matches_the_codec_for_every_scale() {
        let largest = kernel_scale_for_max(f32::MAX.to_bits());
        assert_eq!(largest, block_scale(WireFormat::Int8, f32::MAX.to_bits()).0);
        for s in 0x0080..=largest {
            assert_eq!(
                kernel_inverse(s).to_bits(),
                (1.0 / bf16_to_f32(s)).to_bits(),
                "scale {s:#06x}"
            );
        }
    }

    /// Rounding and saturation around every integer and half-integer of
    /// the code range, specials, and a stride through all f32.
    #[test]
    fn code_matches_the_codec() {
        let mut values = vec![
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MAX,
            -f32::MAX,
            f32::from_bits(1),
        ];
        for k in -260..=260 {
            let h = k as f32 * 0.5;
            let b = h.to_bits();
            values.extend((b.saturating_sub(3)..=b + 3).map(f32::from_bits));
        }
        values.extend((0..=u32::MAX).step_by(65_537).map(f32::from_bits));
        for y in values {
            assert_eq!(
                kernel_to_int8(y),
                f32_to_int8(y),
                "{y:e} ({:#010x})",
                y.to_bits()
            );
        }
    }

    /// Every finite non-negative f32 as a block maximum (2^31 values):
    /// `cargo test --release --lib int8_kernel_tests -- --ignored`.
    #[test]
    #[ignore = "every f32: run in release with --ignored"]
    fn scale_matches_the_codec_for_every_f32() {
        for bits in 0..=0x7F7F_FFFFu32 {
            let (scale, _) = block_scale(WireFormat::Int8, bits);
            assert_eq!(kernel_scale_for_max(bits), scale, "max {bits:#010x}");
        }
    }
}
