//! Codec tests: an independent slow reference (value enumeration in f64),
//! exhaustive fp16/bf16 sweeps, SIMD == scalar bit for bit, proptests.

use super::format::{int8_scale_for_max, pow2, scale_for_max, scale_value, CANONICAL_NAN_BITS};
use super::*;
use proptest::prelude::*;

const FP8S: [Fp8; 2] = [Fp8::E4M3, Fp8::E5M2];

// ---------- independent slow reference ----------

/// Exact value of a finite FP8 magnitude code, from the field definitions.
fn ref_fp8_mag(code: u8, fmt: Fp8) -> f64 {
    let (e_bits, m_bits, bias) = match fmt {
        Fp8::E4M3 => (4, 3, 7),
        Fp8::E5M2 => (5, 2, 15),
    };
    let e = ((code >> m_bits) & ((1 << e_bits) - 1)) as i32;
    let m = (code & ((1 << m_bits) - 1)) as f64;
    let scale = |k: i32| 2f64.powi(k);
    if e == 0 {
        m / (1 << m_bits) as f64 * scale(1 - bias)
    } else {
        (1.0 + m / (1 << m_bits) as f64) * scale(e - bias)
    }
}

/// Finite magnitude codes in increasing value order: FP8 codes with the
/// sign bit clear, or the INT8 magnitudes 0..=127.
fn finite_mags(fmt: WireFormat) -> Vec<(u8, f64)> {
    let v: Vec<_> = match fmt.fp8() {
        Some(f) => {
            let last = match f {
                Fp8::E4M3 => 0x7E,
                Fp8::E5M2 => 0x7B,
            };
            (0..=last).map(|c| (c, ref_fp8_mag(c, f))).collect()
        }
        None => (0..=127u8).map(|m| (m, f64::from(m))).collect(),
    };
    assert!(v.windows(2).all(|w| w[0].1 < w[1].1));
    assert_eq!(v.last().unwrap().1, f64::from(fmt.max_finite()));
    v
}

/// The code of magnitude code `mag` with the sign of `negative`: FP8 sets
/// the sign bit, INT8 negates in two's complement (so -0 is 0).
fn signed_code(fmt: WireFormat, mag: u8, negative: bool) -> u8 {
    match (fmt, negative) {
        (_, false) => mag,
        (WireFormat::Int8, true) => (mag as i8).wrapping_neg() as u8,
        (_, true) => mag | 0x80,
    }
}

/// Nearest code to finite `v` (ties to the even code), saturating.
fn ref_round(v: f64, fmt: WireFormat, mags: &[(u8, f64)]) -> u8 {
    let a = v.abs();
    let i = mags.partition_point(|&(_, m)| m <= a);
    let code = if i == mags.len() {
        mags[i - 1].0
    } else if i == 0 {
        unreachable!()
    } else {
        let (lo, hi) = (mags[i - 1], mags[i]);
        let (dl, dh) = (a - lo.1, hi.1 - a);
        if dl < dh || (dl == dh && lo.0 & 1 == 0) {
            lo.0
        } else {
            hi.0
        }
    };
    signed_code(fmt, code, v.is_sign_negative())
}

/// The code a non-finite input must get (`got` supplies the sign bit a NaN
/// may carry in FP8).
fn ref_special(fmt: WireFormat, x: f32, got: u8) -> u8 {
    match fmt.fp8() {
        None => INT8_NAN,
        Some(f) if x.is_nan() => f.nan_code() | (got & 0x80),
        Some(f) => f.inf_code() | if x < 0.0 { 0x80 } else { 0 },
    }
}

fn ref_f16(h: u16) -> f64 {
    let s = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = ((h >> 10) & 0x1F) as i32;
    let m = (h & 0x3FF) as f64;
    match e {
        0 => s * m * 2f64.powi(-24),
        0x1F if m == 0.0 => s * f64::INFINITY,
        0x1F => f64::NAN,
        _ => s * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
    }
}

fn codec(fmt: WireFormat, b: Backend) -> Codec {
    Codec::with_backend(fmt, b).unwrap()
}

fn simd() -> Option<Backend> {
    let b = Backend::detect();
    (b != Backend::Scalar).then_some(b)
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits()
}

// ---------- format helpers ----------

#[test]
fn fp16_bf16_conversions_exhaustive() {
    for h in 0..=u16::MAX {
        let f = f16_to_f32(h);
        let r = ref_f16(h);
        if r.is_nan() {
            assert!(f.is_nan());
            assert_eq!(f32_to_f16(f) & 0x7E00, 0x7E00);
        } else {
            assert_eq!(f as f64, r, "{h:#06x}");
            assert_eq!(f32_to_f16(f), h, "{h:#06x}");
        }
        let b = bf16_to_f32(h);
        assert_eq!(b.to_bits(), (h as u32) << 16);
        if !b.is_nan() {
            assert_eq!(f32_to_bf16(b), h);
        }
    }
}

#[test]
fn fp8_decode_matches_reference() {
    for fmt in FP8S {
        let wire = match fmt {
            Fp8::E4M3 => WireFormat::E4M3,
            Fp8::E5M2 => WireFormat::E5M2,
        };
        assert_eq!(wire.fp8(), Some(fmt));
        for c in 0..=255u8 {
            let v = fp8_to_f32(c, fmt);
            assert!(same_f32(v, code_to_f32(c, wire)));
            let mag = c & 0x7F;
            let special = mag >= fmt.first_special_code();
            if special && !(fmt == Fp8::E5M2 && mag == 0x7C) {
                assert_eq!(v.to_bits(), CANONICAL_NAN_BITS);
            } else if special {
                assert_eq!(
                    v,
                    if c & 0x80 != 0 {
                        f32::NEG_INFINITY
                    } else {
                        f32::INFINITY
                    }
                );
            } else {
                let r = ref_fp8_mag(mag, fmt);
                let r = if c & 0x80 != 0 { -r } else { r };
                assert!(same_f32(v, r as f32), "{fmt:?} {c:#04x}");
                assert_eq!(f32_to_fp8(v, fmt), c, "round trip {fmt:?} {c:#04x}");
                assert_eq!(f32_to_code(v, wire), c);
            }
        }
        assert_eq!(fp8_to_f32(fmt.max_code(), fmt), wire.max_finite());
    }
}

#[test]
fn int8_codes() {
    for c in 0..=255u8 {
        let v = int8_to_f32(c);
        assert!(same_f32(v, code_to_f32(c, WireFormat::Int8)));
        if c == INT8_NAN {
            assert_eq!(v.to_bits(), CANONICAL_NAN_BITS);
        } else {
            assert_eq!(v, f32::from(c as i8));
            assert_eq!(f32_to_int8(v), c, "round trip {c:#04x}");
        }
    }
    // Ties to even, saturation, specials, and -0 -> 0.
    let cases = [
        (0.5, 0),
        (1.5, 2),
        (2.5, 2),
        (-2.5, 0xFE),
        (-0.5, 0),
        (-0.0, 0),
        (126.5, 126),
        (127.49, 127),
        (300.0, 127),
        (-1e30, 0x81),
        (f32::NAN, INT8_NAN),
        (f32::INFINITY, INT8_NAN),
        (f32::NEG_INFINITY, INT8_NAN),
    ];
    for (x, want) in cases {
        assert_eq!(f32_to_int8(x), want, "{x}");
        assert_eq!(f32_to_code(x, WireFormat::Int8), want, "{x}");
    }
    assert_eq!(WireFormat::Int8.fp8(), None);
}

#[test]
fn nan_inf_codes() {
    assert_eq!(f32_to_fp8(f32::NAN, Fp8::E4M3) & 0x7F, 0x7F);
    assert_eq!(f32_to_fp8(f32::INFINITY, Fp8::E4M3), 0x7F);
    assert_eq!(f32_to_fp8(f32::NEG_INFINITY, Fp8::E4M3), 0xFF);
    assert_eq!(f32_to_fp8(f32::INFINITY, Fp8::E5M2), 0x7C);
    assert_eq!(f32_to_fp8(f32::NEG_INFINITY, Fp8::E5M2), 0xFC);
    assert!(fp8_to_f32(f32_to_fp8(f32::NAN, Fp8::E5M2), Fp8::E5M2).is_nan());
    // Saturation, never NaN from finite.
    assert_eq!(f32_to_fp8(1e30, Fp8::E4M3), 0x7E);
    assert_eq!(f32_to_fp8(-464.0, Fp8::E4M3), 0xFE);
    assert_eq!(f32_to_fp8(f32::MAX, Fp8::E5M2), 0x7B);
}

/// FP8: the scale is minimal and never lets `max / scale` exceed the
/// format max.
#[test]
fn scale_choice_is_minimal() {
    let mut bits = 1u32;
    while bits <= 0x7F7F_FFFF {
        let m = f32::from_bits(bits) as f64;
        for fmt in FP8S {
            let s = scale_for_max(fmt, bits);
            assert_ne!(s, E8M0_NAN);
            let e = s as i32 - 127;
            let max = fmt.max_finite() as f64;
            assert!(m / 2f64.powi(e) <= max || e == 127, "{bits:#x}");
            assert!(
                e == -127 || m / 2f64.powi(e - 1) > max,
                "{fmt:?} {bits:#x} e={e}"
            );
        }
        assert_int8_scale(bits);
        bits = bits.wrapping_mul(3) / 2 + 0x1357;
    }
    for fmt in FP8S {
        assert_eq!(scale_for_max(fmt, 0), E8M0_ZERO_BLOCK);
    }
    assert_eq!(int8_scale_for_max(0), INT8_ZERO_BLOCK_SCALE);
    // 127 needs exactly scale 1; 254 scale 2; 1.0 the bf16 above 1/127
    // (2^-7 * 1.0078: between the bf16s 2^-7 * (1 + 1/128) and (1 + 2/128)).
    assert_eq!(int8_scale_for_max(127f32.to_bits()), 0x3F80);
    assert_eq!(int8_scale_for_max(254f32.to_bits()), 0x4000);
    assert_eq!(
        bf16_to_f32(int8_scale_for_max(1f32.to_bits())),
        2f32.powi(-7) * (1.0 + 2.0 / 128.0)
    );
    // Tiny blocks stop at 2^-126, whose inverse is finite.
    assert_eq!(int8_scale_for_max(1), 0x0080);
}

/// INT8: the scale is the smallest bf16 at or above `fl32(max / 127)`,
/// and at least 2^-126 (checked in f64, not with the codec's own steps).
fn assert_int8_scale(max_bits: u32) {
    let s = int8_scale_for_max(max_bits);
    let v = int8_scale_to_f32(s) as f64;
    let ideal = ((f32::from_bits(max_bits) as f64 / 127.0) as f32 as f64).max(2f64.powi(-126));
    assert!(v >= ideal, "{max_bits:#x}: {v} < {ideal}");
    assert!(bf16_to_f32(s - 1) as f64 >= 0.0);
    assert!(
        (bf16_to_f32(s - 1) as f64) < ideal,
        "{max_bits:#x}: not minimal"
    );
}

/// The block scale as a number, and whether it is the one the encoder
/// must pick for a block whose largest finite magnitude is `max`.
fn check_block_scale(fmt: WireFormat, scale: &[u8], max: f64) -> f64 {
    match fmt.fp8() {
        Some(f) => {
            let e = scale[0] as i32 - 127;
            let fmax = f.max_finite() as f64;
            if max == 0.0 {
                assert_eq!(scale[0], E8M0_ZERO_BLOCK);
            } else {
                assert!(max / 2f64.powi(e) <= fmax);
                assert!(e == -127 || max / 2f64.powi(e - 1) > fmax);
            }
        }
        None => {
            let bits = u16::from_le_bytes([scale[0], scale[1]]);
            if max == 0.0 {
                assert_eq!(bits, INT8_ZERO_BLOCK_SCALE);
            } else {
                assert_eq!(int8_scale_for_max((max as f32).to_bits()), bits);
                assert_int8_scale((max as f32).to_bits());
            }
        }
    }
    scale_value(fmt, scale) as f64
}

// ---------- block-level checking ----------

/// Check one encoded run of f32 values against the slow reference, and all
/// backends/decoders against scalar. Returns nothing; panics on mismatch.
fn check_run(fmt: WireFormat, xs: &[f32], src: Src<'_>, mags: &[(u8, f64)]) {
    let n = xs.len();
    let sb = fmt.scale_bytes();
    let sc = codec(fmt, Backend::Scalar);
    let mut scales = vec![0u8; scales_len(fmt, n)];
    let mut codes = vec![0u8; n];
    sc.encode(src, &mut scales, &mut codes).unwrap();

    // Scalar against the reference.
    for (b, blk) in xs.chunks(BLOCK).enumerate() {
        let max = blk
            .iter()
            .filter(|x| x.is_finite())
            .fold(0f64, |m, x| m.max(x.abs() as f64));
        let scale = check_block_scale(fmt, &scales[b * sb..(b + 1) * sb], max);
        // The quotient as the codec defines it: x times the f32 inverse of
        // the scale (exact for FP8's powers of two), rounded once to f32.
        let inv = (1.0 / scale) as f32 as f64;
        for (i, &x) in blk.iter().enumerate() {
            let c = codes[b * BLOCK + i];
            let want = if x.is_finite() {
                ref_round((x as f64 * inv) as f32 as f64, fmt, mags)
            } else {
                ref_special(fmt, x, c)
            };
            assert_eq!(
                c,
                want,
                "{fmt:?} x={x:e} ({:#x}) scale={scale:e}",
                x.to_bits()
            );
        }
    }

    // f32 input must encode identically to the narrower input it came from.
    let mut s2 = vec![0u8; scales.len()];
    let mut c2 = vec![0u8; n];
    sc.encode(Src::F32(xs), &mut s2, &mut c2).unwrap();
    assert_eq!((&s2, &c2), (&scales, &codes));

    // Decoders: scalar element values against the reference.
    let mut dec = vec![0f32; n];
    sc.decode_into(&scales, &codes, Dst::F32(&mut dec)).unwrap();
    for (i, &d) in dec.iter().enumerate() {
        let c = codes[i];
        let b = i / BLOCK;
        let want =
            code_to_f32(c, fmt) as f64 * scale_value(fmt, &scales[b * sb..(b + 1) * sb]) as f64;
        assert!(same_f32(d, want as f32) || (d.is_nan() && want.is_nan()));
        if d.is_nan() {
            assert_eq!(d.to_bits(), CANONICAL_NAN_BITS);
        }
    }

    let Some(b) = simd() else { return };
    let vc = codec(fmt, b);
    vc.encode(src, &mut s2, &mut c2).unwrap();
    assert_eq!(s2, scales, "{fmt:?} scales SIMD vs scalar");
    assert_eq!(c2, codes, "{fmt:?} codes SIMD vs scalar");
    check_decoders_match(fmt, b, &scales, &codes);
}

/// All decode entry points: SIMD == scalar, bit for bit.
fn check_decoders_match(fmt: WireFormat, b: Backend, scales: &[u8], codes: &[u8]) {
    let n = codes.len();
    let (sc, vc) = (codec(fmt, Backend::Scalar), codec(fmt, b));
    let init: Vec<f32> = (0..n).map(|i| (i as f32 - 7.5) * 0.375).collect();
    let (mut a1, mut a2) = (init.clone(), init);
    sc.decode_accumulate(scales, codes, &mut a1).unwrap();
    vc.decode_accumulate(scales, codes, &mut a2).unwrap();
    assert!(
        a1.iter().zip(&a2).all(|(x, y)| same_f32(*x, *y)),
        "{fmt:?} accumulate"
    );

    let (mut f1, mut f2) = (vec![0f32; n], vec![1f32; n]);
    sc.decode_into(scales, codes, Dst::F32(&mut f1)).unwrap();
    vc.decode_into(scales, codes, Dst::F32(&mut f2)).unwrap();
    assert!(
        f1.iter().zip(&f2).all(|(x, y)| same_f32(*x, *y)),
        "{fmt:?} f32 out"
    );

    let (mut h1, mut h2) = (vec![0u16; n], vec![1u16; n]);
    sc.decode_into(scales, codes, Dst::F16(&mut h1)).unwrap();
    vc.decode_into(scales, codes, Dst::F16(&mut h2)).unwrap();
    assert_eq!(h1, h2, "{fmt:?} f16 out");
    for (h, f) in h1.iter().zip(&f1) {
        assert_eq!(*h, f32_to_f16(*f));
    }

    sc.decode_into(scales, codes, Dst::Bf16(&mut h1)).unwrap();
    vc.decode_into(scales, codes, Dst::Bf16(&mut h2)).unwrap();
    assert_eq!(h1, h2, "{fmt:?} bf16 out");
}

/// Every fp16 and bf16 bit pattern, in three block arrangements: sorted
/// (narrow blocks), scrambled (wide blocks: FP8 subnormals and zeros) and
/// sorted with an anchor 16x larger than the block's max.
#[test]
fn exhaustive_fp16_bf16() {
    for fmt in WireFormat::ALL {
        let mags = finite_mags(fmt);
        for is_bf16 in [false, true] {
            let to_f32 = |h: u16| {
                if is_bf16 {
                    bf16_to_f32(h)
                } else {
                    f16_to_f32(h)
                }
            };
            for arrangement in 0..3 {
                let mut pats: Vec<u16> = (0..=u16::MAX).collect();
                if arrangement == 1 {
                    pats = (0..65536u32)
                        .map(|i| (i.wrapping_mul(40503) & 0xFFFF) as u16)
                        .collect();
                }
                if arrangement == 2 {
                    for blk in pats.chunks_mut(BLOCK) {
                        let max = blk
                            .iter()
                            .map(|&h| h & 0x7FFF)
                            .filter(|&h| to_f32(h).is_finite());
                        let m = max.max().unwrap_or(0);
                        // +4 in the exponent field of the format = x16.
                        let shift = if is_bf16 { 4 << 7 } else { 4 << 10 };
                        let bumped = m.saturating_add(shift);
                        if to_f32(bumped).is_finite() && bumped >= shift {
                            blk[0] = bumped;
                        }
                    }
                }
                let xs: Vec<f32> = pats.iter().map(|&h| to_f32(h)).collect();
                let src = if is_bf16 {
                    Src::Bf16(&pats)
                } else {
                    Src::F16(&pats)
                };
                check_run(fmt, &xs, src, &mags);
            }
        }
    }
}

/// Every (scale byte, code) pair, NaN scale included, through all decoders.
#[test]
fn exhaustive_decode() {
    for fmt in WireFormat::ALL {
        // Every scale (E8M0 byte: 8 blocks each; INT8 bf16: one block
        // each) with codes cycling so that every code meets many scales.
        let scales: Vec<u8> = match fmt.fp8() {
            Some(_) => (0..=255u8).flat_map(|s| [s; 8]).collect(),
            None => (0..=u16::MAX).flat_map(u16::to_le_bytes).collect(),
        };
        let sb = fmt.scale_bytes();
        let blocks = scales.len() / sb;
        let codes: Vec<u8> = (0..blocks * BLOCK)
            .map(|i| ((i % 256) + i / 256) as u8)
            .collect();
        let mut out = vec![0f32; codes.len()];
        let sc = codec(fmt, Backend::Scalar);
        sc.decode_into(&scales, &codes, Dst::F32(&mut out)).unwrap();
        for (i, &d) in out.iter().enumerate() {
            let b = i / BLOCK;
            let s = &scales[b * sb..(b + 1) * sb];
            // Reference scale value straight from the field definitions.
            let (scale, nan_scale) = match fmt.fp8() {
                Some(_) => (2f64.powi(s[0] as i32 - 127), s[0] == E8M0_NAN),
                None => {
                    let bits = u16::from_le_bytes([s[0], s[1]]);
                    (bf16_to_f32(bits) as f64, bits & 0x7F80 == 0x7F80)
                }
            };
            let v = code_to_f32(codes[i], fmt);
            if nan_scale || v.is_nan() {
                assert_eq!(d.to_bits(), CANONICAL_NAN_BITS);
            } else {
                let want = (v as f64 * scale) as f32;
                assert!(same_f32(d, want), "{fmt:?} s={s:?} c={:#x}", codes[i]);
            }
        }
        if let Some(b) = simd() {
            check_decoders_match(fmt, b, &scales, &codes);
        }
    }
}

#[test]
fn lengths_are_validated() {
    for (b, fmt) in [Backend::Scalar, Backend::detect()]
        .into_iter()
        .flat_map(|b| WireFormat::ALL.map(|f| (b, f)))
    {
        let c = codec(fmt, b);
        let sl = scales_len(fmt, 33);
        assert_eq!(sl, 2 * fmt.scale_bytes());
        let x = [1f32; 33];
        let mut s = [0u8; 4];
        let s = &mut s[..sl];
        let mut k = [0u8; 33];
        assert!(c.encode(Src::F32(&x), s, &mut k).is_ok());
        assert!(c.encode(Src::F32(&x), &mut s[..sl - 1], &mut k).is_err());
        assert!(c.encode(Src::F32(&x), s, &mut k[..32]).is_err());
        let mut acc = [0f32; 33];
        assert!(c.decode_accumulate(s, &k[..32], &mut acc).is_err());
        assert!(c.decode_accumulate(&s[..sl - 1], &k, &mut acc).is_err());
        assert!(c.decode_accumulate(s, &k, &mut acc).is_ok());
        // FP8 holds 1.0 exactly; INT8 within half a step (scale 1/127).
        assert!(
            acc.iter().all(|&a| (a - 1.0).abs() <= 1.0 / 254.0),
            "{acc:?}"
        );
        let mut w = vec![0u8; encoded_len(fmt, 33)];
        assert_eq!(w.len(), sl + 33);
        assert!(c.encode_wire(Src::F32(&x), &mut w).is_ok());
        assert!(c.encode_wire(Src::F32(&x), &mut w[1..]).is_err());
        assert!(c.decode_accumulate_wire(&w[1..], &mut acc).is_err());
        let mut h = [0u16; 32];
        assert!(c.decode_into_wire(&w, Dst::Bf16(&mut h)).is_err());
        assert!(c.decode_into_wire(&[], Dst::F16(&mut [])).is_ok());
        assert!(matches!(
            c.decode_into(s, &k, Dst::F16(&mut h)),
            Err(CodecError::Length { .. })
        ));
    }
    for fmt in [WireFormat::E4M3, WireFormat::E5M2] {
        assert_eq!(encoded_len(fmt, 0), 0);
        assert_eq!(encoded_len(fmt, 32), 33);
        assert_eq!(encoded_len(fmt, 65), 68);
    }
    assert_eq!(encoded_len(WireFormat::Int8, 0), 0);
    assert_eq!(encoded_len(WireFormat::Int8, 32), 34);
    assert_eq!(encoded_len(WireFormat::Int8, 65), 71);
}

/// Largest round-trip error allowed for a finite `x` in a block with scale
/// bytes `scale`: half a step of the code grid (relative for FP8 normals,
/// absolute in the FP8 subnormal range and on INT8's uniform grid, plus
/// INT8's one f32 rounding of the quotient).
fn half_step(fmt: WireFormat, x: f32, scale: &[u8]) -> f64 {
    let v = scale_value(fmt, scale) as f64;
    match fmt.fp8() {
        Some(f) => {
            let m = f.man_bits() as i32;
            let min_normal = v * 2f64.powi(1 - f.bias() as i32);
            (x.abs() as f64 * 2f64.powi(-m - 1)).max(min_normal * 2f64.powi(-m - 1))
        }
        None => v * (0.5 + 2f64.powi(-16)),
    }
}

/// Gaussian data: every element within half a step; relative L2 error of
/// one rounding, E4M3 (power-of-two scales, 2.4-2.7%) against INT8 (bf16
/// scales, ~0.55%).
#[test]
fn gaussian_round_trip_error() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let n = 32 * 1000 + 17;
    let xs: Vec<f32> = (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * 3.0) as f32
        })
        .collect();
    let rel_l2 = WireFormat::ALL.map(|fmt| {
        let c = Codec::new(fmt);
        let sb = fmt.scale_bytes();
        let mut w = vec![0u8; encoded_len(fmt, n)];
        c.encode_wire(Src::F32(&xs), &mut w).unwrap();
        let mut d = vec![0f32; n];
        c.decode_into_wire(&w, Dst::F32(&mut d)).unwrap();
        let (mut num, mut den) = (0f64, 0f64);
        for (i, (&x, &y)) in xs.iter().zip(&d).enumerate() {
            let b = i / BLOCK;
            let err = (x as f64 - y as f64).abs();
            let bound = half_step(fmt, x, &w[b * sb..(b + 1) * sb]);
            assert!(err <= bound, "{fmt:?} x={x} y={y}");
            num += err * err;
            den += (x as f64).powi(2);
        }
        (num / den).sqrt()
    });
    let [e4m3, e5m2, int8] = rel_l2;
    assert!(e4m3 > 0.02 && e4m3 < 0.03, "E4M3 {e4m3}");
    assert!(e5m2 > e4m3, "E5M2 {e5m2}");
    assert!(int8 > 0.004 && int8 < 0.007, "INT8 {int8}");
    assert!(int8 * 4.0 < e4m3, "INT8 {int8} vs E4M3 {e4m3}");
}

// ---------- proptest ----------

fn special_or_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => (-30i32..30, -1.0f32..1.0).prop_map(|(e, m)| m * pow2(e)),
        2 => any::<u32>().prop_map(f32::from_bits),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(f32::MAX),
        1 => Just(f32::MIN_POSITIVE),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_blocks(xs in proptest::collection::vec(special_or_value(), 0..200), f in 0..3usize) {
        let fmt = WireFormat::ALL[f];
        let mags = finite_mags(fmt);
        check_run(fmt, &xs, Src::F32(&xs), &mags);

        // Non-finite elements survive at their position; finite elements
        // are never NaN; round-trip error within half a step.
        let c = Codec::new(fmt);
        let sb = fmt.scale_bytes();
        let mut w = vec![0u8; encoded_len(fmt, xs.len())];
        c.encode_wire(Src::F32(&xs), &mut w).unwrap();
        let mut d = vec![0f32; xs.len()];
        c.decode_into_wire(&w, Dst::F32(&mut d)).unwrap();
        for (i, (&x, &y)) in xs.iter().zip(&d).enumerate() {
            if x.is_nan() {
                prop_assert!(y.is_nan());
            } else if x.is_infinite() {
                match fmt {
                    WireFormat::E5M2 => prop_assert_eq!(x, y),
                    WireFormat::E4M3 | WireFormat::Int8 => prop_assert!(y.is_nan()),
                }
            } else {
                prop_assert!(!y.is_nan());
                let b = i / BLOCK;
                if !y.is_infinite() {
                    let bound = half_step(fmt, x, &w[b * sb..(b + 1) * sb]);
                    prop_assert!((x as f64 - y as f64).abs() <= bound, "x={x:e} y={y:e}");
                }
            }
        }
    }

    #[test]
    fn f32_to_f16_rounds_to_nearest(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        let h = f32_to_f16(x);
        if x.is_nan() {
            prop_assert!(f16_to_f32(h).is_nan());
        } else {
            let a = x.abs() as f64;
            let got = f16_to_f32(h & 0x7FFF) as f64;
            prop_assert_eq!(h & 0x8000 != 0, x.is_sign_negative());
            // Neighbours of the result bracket x, and got is the nearer one.
            let m = h & 0x7FFF;
            if m < 0x7C00 {
                let up = ref_f16(m + 1);
                prop_assert!(a <= got + (up - got) / 2.0);
                if m > 0 {
                    let down = ref_f16(m - 1);
                    prop_assert!(a >= got - (got - down) / 2.0);
                }
            } else {
                prop_assert!(a >= 65520.0);
            }
        }
    }
}

// ---------- exact bf16 sums (the collective network's fold) ----------

/// `x + a` in f32 with x86's NaN rules, which the SIMD sum follows: the
/// first NaN operand, quieted; a NaN the addition makes is the default
/// (negative) NaN.
fn x86_add(x: f32, a: f32) -> f32 {
    let quiet = |v: f32| f32::from_bits(v.to_bits() | 0x0040_0000);
    if x.is_nan() {
        quiet(x)
    } else if a.is_nan() {
        quiet(a)
    } else if (x + a).is_nan() {
        f32::from_bits(0xFFC0_0000)
    } else {
        x + a
    }
}

/// The pair fold into a third buffer with both inputs varying from value
/// to value (every bf16 pattern in both, NaNs and subnormals included):
/// the AVX-512 kernel's even and odd halves of a dword, the AVX2 kernel
/// after it and the whole-8 boundary all equal the scalar fold bit for bit.
#[test]
fn bf16_pair_sums_into_match_the_scalar_fold_with_both_inputs_varying() {
    // 4,096 + 40 values: AVX-512 takes 4,128 of them (whole 32s), AVX2 one
    // more 8, and 0 are left to the caller's scalar tail.
    let count = 4096 + 40;
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u16
    };
    for _ in 0..64 {
        let earlier: Vec<u16> = (0..count).map(|_| next()).collect();
        let later: Vec<u16> = (0..count).map(|_| next()).collect();
        let bytes = |v: &[u16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_ne_bytes()).collect() };
        let mut out = vec![0u8; 2 * count];
        let n = half_sum_pair_into(HalfType::Bf16, &bytes(&earlier), &bytes(&later), &mut out);
        if Backend::Avx2.is_available() {
            assert_eq!(n, count / 8 * 8, "every whole 8 done");
        }
        for (i, got) in out.chunks_exact(2).take(n).enumerate() {
            let want = f32_to_bf16(x86_add(bf16_to_f32(later[i]), bf16_to_f32(earlier[i])));
            let got = u16::from_ne_bytes([got[0], got[1]]);
            assert_eq!(
                got, want,
                "value {i}: {:#06x} + {:#06x}",
                later[i], earlier[i]
            );
        }
    }
}

/// Every f16 and bf16 pattern as `b` against `a` values of every class
/// (zeros, subnormals, normals, the largest finite, ±Inf, quiet and
/// signalling NaNs of both signs): the SIMD fold equals the scalar
/// definition bit for bit, with and without an f32 accumulator, and only
/// takes whole 8s.
#[test]
fn half_sums_match_the_scalar_fold_for_every_pattern() {
    /// The type, its scalar conversions, and the `a` values tried.
    type Case = (HalfType, fn(u16) -> f32, fn(f32) -> u16, [u16; 16]);
    let cases: [Case; 2] = [
        (
            HalfType::Bf16,
            bf16_to_f32,
            f32_to_bf16,
            [
                0x0000, 0x8000, 0x0001, 0x807F, 0x3F80, 0xBF80, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80,
                0x7FC0, 0xFFC1, 0x7F81, 0x4049, 0xC2F7, 0x0080,
            ],
        ),
        (
            HalfType::F16,
            f16_to_f32,
            f32_to_f16,
            [
                0x0000, 0x8000, 0x0001, 0x83FF, 0x3C00, 0xBC00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00,
                0x7E00, 0xFE01, 0x7C01, 0x4248, 0xC7D0, 0x0400,
            ],
        ),
    ];
    let count = 1 << 16;
    let b_in: Vec<u16> = (0..count).map(|v| v as u16).collect();
    for (half, widen, narrow, classes) in cases {
        for a in classes {
            let a_f = widen(a);
            let want: Vec<u16> = b_in
                .iter()
                .map(|&x| narrow(x86_add(widen(x), a_f)))
                .collect();
            let a_bytes: Vec<u8> = (0..count).flat_map(|_| a.to_ne_bytes()).collect();
            let acc = vec![a_f; count];
            let fresh = || -> Vec<u8> { b_in.iter().flat_map(|x| x.to_ne_bytes()).collect() };
            for kernel in ["pair", "acc", "into"] {
                // "into" writes a third buffer: start it from zeros, so a
                // kernel that wrote nothing fails.
                let mut b = if kernel == "into" {
                    vec![0u8; 2 * count]
                } else {
                    fresh()
                };
                let n = match kernel {
                    "acc" => half_sum_acc(half, &acc, &mut b),
                    "pair" => half_sum_pair(half, &a_bytes, &mut b),
                    _ => {
                        let later = fresh();
                        half_sum_pair_into(half, &a_bytes, &later, &mut b)
                    }
                };
                if Backend::Avx2.is_available() {
                    assert_eq!(n, count, "{half:?}: every whole 8 done");
                } else {
                    assert_eq!(n, 0, "{half:?}: no kernel without AVX2 and F16C");
                }
                for (i, got) in b.chunks_exact(2).take(n).enumerate() {
                    let got = u16::from_ne_bytes([got[0], got[1]]);
                    assert_eq!(
                        got, want[i],
                        "{half:?} {kernel}: {:#06x} + {a:#06x}",
                        b_in[i]
                    );
                }
            }
        }
    }
    // 13 values: only the first 8 are the kernel's; the tail is untouched.
    let one = f32_to_bf16(1.0).to_ne_bytes();
    let a: Vec<u8> = (0..13).flat_map(|_| one).collect();
    let mut b = a.clone();
    let n = half_sum_pair(HalfType::Bf16, &a, &mut b);
    assert!(n == 0 || n == 8, "only whole 8s: {n}");
    let two = f32_to_bf16(2.0).to_ne_bytes();
    for (i, v) in b.chunks_exact(2).enumerate() {
        let want = if i < n { two } else { one };
        assert_eq!(v, want, "value {i} of 13 after {n} done");
    }
}
