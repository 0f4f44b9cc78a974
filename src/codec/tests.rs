//! Codec tests: an independent slow reference (value enumeration in f64),
//! exhaustive fp16/bf16 sweeps, SIMD == scalar bit for bit, proptests.

use super::format::{pow2, scale_for_max, CANONICAL_NAN_BITS};
use super::*;
use proptest::prelude::*;

const FORMATS: [WireFormat; 2] = [WireFormat::E4M3, WireFormat::E5M2];

// ---------- independent slow reference ----------

/// Exact value of a finite FP8 magnitude code, from the field definitions.
fn ref_fp8_mag(code: u8, fmt: WireFormat) -> f64 {
    let (e_bits, m_bits, bias) = match fmt {
        WireFormat::E4M3 => (4, 3, 7),
        WireFormat::E5M2 => (5, 2, 15),
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

/// Finite magnitude codes in increasing value order.
fn finite_mags(fmt: WireFormat) -> Vec<(u8, f64)> {
    let last = match fmt {
        WireFormat::E4M3 => 0x7E,
        WireFormat::E5M2 => 0x7B,
    };
    let v: Vec<_> = (0..=last).map(|c| (c, ref_fp8_mag(c, fmt))).collect();
    assert!(v.windows(2).all(|w| w[0].1 < w[1].1));
    v
}

/// Nearest code to finite `v` (ties to even code), saturating.
fn ref_round(v: f64, fmt: WireFormat, mags: &[(u8, f64)]) -> u8 {
    let sign = if v.is_sign_negative() { 0x80 } else { 0 };
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
    let _ = fmt;
    sign | code
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
    for fmt in FORMATS {
        for c in 0..=255u8 {
            let v = fp8_to_f32(c, fmt);
            let mag = c & 0x7F;
            let special = mag >= fmt.first_special_code();
            if special && !(fmt == WireFormat::E5M2 && mag == 0x7C) {
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
            }
        }
        assert_eq!(fp8_to_f32(fmt.max_code(), fmt), fmt.max_finite());
    }
}

#[test]
fn nan_inf_codes() {
    assert_eq!(f32_to_fp8(f32::NAN, WireFormat::E4M3) & 0x7F, 0x7F);
    assert_eq!(f32_to_fp8(f32::INFINITY, WireFormat::E4M3), 0x7F);
    assert_eq!(f32_to_fp8(f32::NEG_INFINITY, WireFormat::E4M3), 0xFF);
    assert_eq!(f32_to_fp8(f32::INFINITY, WireFormat::E5M2), 0x7C);
    assert_eq!(f32_to_fp8(f32::NEG_INFINITY, WireFormat::E5M2), 0xFC);
    assert!(fp8_to_f32(f32_to_fp8(f32::NAN, WireFormat::E5M2), WireFormat::E5M2).is_nan());
    // Saturation, never NaN from finite.
    assert_eq!(f32_to_fp8(1e30, WireFormat::E4M3), 0x7E);
    assert_eq!(f32_to_fp8(-464.0, WireFormat::E4M3), 0xFE);
    assert_eq!(f32_to_fp8(f32::MAX, WireFormat::E5M2), 0x7B);
}

/// Scale is minimal and never lets `max / scale` exceed the format max.
#[test]
fn scale_choice_is_minimal() {
    let mut bits = 1u32;
    while bits <= 0x7F7F_FFFF {
        let m = f32::from_bits(bits) as f64;
        for fmt in FORMATS {
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
        bits = bits.wrapping_mul(3) / 2 + 0x1357;
    }
    for fmt in FORMATS {
        assert_eq!(scale_for_max(fmt, 0), E8M0_ZERO_BLOCK);
    }
}

// ---------- block-level checking ----------

/// Check one encoded run of f32 values against the slow reference, and all
/// backends/decoders against scalar. Returns nothing; panics on mismatch.
fn check_run(fmt: WireFormat, xs: &[f32], src: Src<'_>, mags: &[(u8, f64)]) {
    let n = xs.len();
    let sc = codec(fmt, Backend::Scalar);
    let mut scales = vec![0u8; num_blocks(n)];
    let mut codes = vec![0u8; n];
    sc.encode(src, &mut scales, &mut codes).unwrap();

    // Scalar against the reference.
    for (b, blk) in xs.chunks(BLOCK).enumerate() {
        let max = blk
            .iter()
            .filter(|x| x.is_finite())
            .fold(0f64, |m, x| m.max(x.abs() as f64));
        let e = scales[b] as i32 - 127;
        let fmax = fmt.max_finite() as f64;
        if max == 0.0 {
            assert_eq!(scales[b], E8M0_ZERO_BLOCK);
        } else {
            assert!(max / 2f64.powi(e) <= fmax);
            assert!(e == -127 || max / 2f64.powi(e - 1) > fmax);
        }
        for (i, &x) in blk.iter().enumerate() {
            let c = codes[b * BLOCK + i];
            let want = if x.is_nan() {
                fmt.nan_code() | (c & 0x80)
            } else if x.is_infinite() {
                fmt.inf_code() | if x < 0.0 { 0x80 } else { 0 }
            } else {
                ref_round(x as f64 / 2f64.powi(e), fmt, mags)
            };
            assert_eq!(c, want, "{fmt:?} x={x:e} ({:#x}) e={e}", x.to_bits());
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
        let want = fp8_to_f32(c, fmt) as f64 * 2f64.powi(scales[i / BLOCK] as i32 - 127);
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
    for fmt in FORMATS {
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
    for fmt in FORMATS {
        let scales: Vec<u8> = (0..=255u8).flat_map(|s| [s; 8]).collect();
        let codes: Vec<u8> = (0..scales.len() * BLOCK).map(|i| (i % 256) as u8).collect();
        let mut out = vec![0f32; codes.len()];
        let sc = codec(fmt, Backend::Scalar);
        sc.decode_into(&scales, &codes, Dst::F32(&mut out)).unwrap();
        for (i, &d) in out.iter().enumerate() {
            let s = scales[i / BLOCK];
            let v = fp8_to_f32(codes[i], fmt);
            if s == E8M0_NAN || v.is_nan() {
                assert_eq!(d.to_bits(), CANONICAL_NAN_BITS);
            } else {
                let want = (v as f64 * 2f64.powi(s as i32 - 127)) as f32;
                assert!(same_f32(d, want), "{fmt:?} s={s} c={:#x}", codes[i]);
            }
        }
        if let Some(b) = simd() {
            check_decoders_match(fmt, b, &scales, &codes);
        }
    }
}

#[test]
fn lengths_are_validated() {
    for b in [Backend::Scalar, Backend::detect()] {
        let c = codec(WireFormat::E4M3, b);
        let x = [1f32; 33];
        let mut s = [0u8; 2];
        let mut k = [0u8; 33];
        assert!(c.encode(Src::F32(&x), &mut s, &mut k).is_ok());
        assert!(c.encode(Src::F32(&x), &mut s[..1], &mut k).is_err());
        assert!(c.encode(Src::F32(&x), &mut s, &mut k[..32]).is_err());
        let mut acc = [0f32; 33];
        assert!(c.decode_accumulate(&s, &k[..32], &mut acc).is_err());
        assert!(c.decode_accumulate(&s[..1], &k, &mut acc).is_err());
        assert!(c.decode_accumulate(&s, &k, &mut acc).is_ok());
        assert_eq!(acc, [1f32; 33]);
        let mut w = vec![0u8; encoded_len(33)];
        assert_eq!(w.len(), 35);
        assert!(c.encode_wire(Src::F32(&x), &mut w).is_ok());
        assert!(c.encode_wire(Src::F32(&x), &mut w[1..]).is_err());
        assert!(c.decode_accumulate_wire(&w[..34], &mut acc).is_err());
        let mut h = [0u16; 32];
        assert!(c.decode_into_wire(&w, Dst::Bf16(&mut h)).is_err());
        assert!(c.decode_into_wire(&[], Dst::F16(&mut [])).is_ok());
        assert!(matches!(
            c.decode_into(&s, &k, Dst::F16(&mut h)),
            Err(CodecError::Length { .. })
        ));
    }
    assert_eq!(encoded_len(0), 0);
    assert_eq!(encoded_len(32), 33);
    assert_eq!(encoded_len(65), 68);
}

/// Gaussian data through E4M3: each normal-range element within 2^-4
/// relative error (half an ulp of a 3-bit mantissa).
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
    for fmt in FORMATS {
        let c = Codec::new(fmt);
        let mut w = vec![0u8; encoded_len(n)];
        c.encode_wire(Src::F32(&xs), &mut w).unwrap();
        let mut d = vec![0f32; n];
        c.decode_into_wire(&w, Dst::F32(&mut d)).unwrap();
        let rel_bound = 2f64.powi(-(fmt.man_bits() as i32) - 1);
        let (mut worst, mut sq) = (0f64, 0f64);
        for (i, (&x, &y)) in xs.iter().zip(&d).enumerate() {
            let e = w[i / BLOCK] as i32 - 127;
            let min_normal = 2f64.powi(e + 1 - fmt.bias() as i32);
            let err = (x as f64 - y as f64).abs();
            if (x.abs() as f64) >= min_normal {
                let rel = err / x.abs() as f64;
                worst = worst.max(rel);
                sq += rel * rel;
            } else {
                // Subnormal range: absolute error within half a step.
                assert!(err <= min_normal * 2f64.powi(-(fmt.man_bits() as i32) - 1));
            }
        }
        assert!(worst <= rel_bound, "{fmt:?} worst rel err {worst}");
        assert!((sq / n as f64).sqrt() < rel_bound / 2.0);
    }
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
    fn random_blocks(xs in proptest::collection::vec(special_or_value(), 0..200), f in 0..2usize) {
        let fmt = FORMATS[f];
        let mags = finite_mags(fmt);
        check_run(fmt, &xs, Src::F32(&xs), &mags);

        // Non-finite elements survive at their position; finite elements
        // are never NaN; round-trip error within half an FP8 ulp.
        let c = Codec::new(fmt);
        let mut w = vec![0u8; encoded_len(xs.len())];
        c.encode_wire(Src::F32(&xs), &mut w).unwrap();
        let mut d = vec![0f32; xs.len()];
        c.decode_into_wire(&w, Dst::F32(&mut d)).unwrap();
        for (i, (&x, &y)) in xs.iter().zip(&d).enumerate() {
            if x.is_nan() {
                prop_assert!(y.is_nan());
            } else if x.is_infinite() {
                match fmt {
                    WireFormat::E4M3 => prop_assert!(y.is_nan()),
                    WireFormat::E5M2 => prop_assert_eq!(x, y),
                }
            } else {
                prop_assert!(!y.is_nan());
                let e = w[i / BLOCK] as i32 - 127;
                if !y.is_infinite() {
                    let half_ulp = (x.abs() as f64 * 2f64.powi(-(fmt.man_bits() as i32) - 1))
                        .max(2f64.powi(e + 1 - fmt.bias() as i32 - fmt.man_bits() as i32 - 1));
                    prop_assert!((x as f64 - y as f64).abs() <= half_ulp, "x={x:e} y={y:e}");
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
