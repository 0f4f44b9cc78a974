//! AVX2 + F16C kernels, bit-for-bit equal to `scalar.rs`.
//!
//! Each entry point handles whole 32-value blocks only and returns how many
//! it did; `mod.rs` runs the scalar reference on the rest (the short tail
//! block). Callers must only reach this module through a `Codec` whose
//! backend passed `Backend::is_available` (AVX2 and F16C present).

use std::arch::x86_64::*;

use super::format::{
    e8m0_inverse, e8m0_to_f32, pow2, scale_for_max, WireFormat, CANONICAL_NAN_BITS,
};
use super::{Dst, Src, BLOCK};

/// Number of whole blocks that every buffer can hold; a belt against
/// out-of-bounds pointer arithmetic should a caller ever skip validation.
fn whole_blocks(n: usize, scales: usize, codes: usize) -> usize {
    (n / BLOCK).min(scales).min(codes / BLOCK)
}

fn features_ok() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
}

// ---------------------------------------------------------------- encode

/// Per-format constants of the f32 -> FP8 rounding (see
/// `format::round_magnitude`).
#[derive(Clone, Copy)]
struct EncK {
    fmt: WireFormat,
    shift: __m128i,
    round: __m256i,
    expadj: __m256i,
    min_normal: __m256i,
    magic: __m256,
    max_code: __m256i,
    nan: __m256i,
    inf: __m256i,
}

impl EncK {
    #[inline(always)]
    unsafe fn new(fmt: WireFormat) -> EncK {
        let (m, bias) = (fmt.man_bits(), fmt.bias());
        let shift = 23 - m;
        EncK {
            fmt,
            shift: _mm_cvtsi32_si128(shift as i32),
            round: _mm256_set1_epi32((1 << (shift - 1)) - 1),
            expadj: _mm256_set1_epi32(((127 - bias) << m) as i32),
            min_normal: _mm256_set1_epi32(((127 - bias + 1) << 23) as i32),
            magic: _mm256_castsi256_ps(_mm256_set1_epi32(
                (((127 - bias) + (23 - m) + 1) << 23) as i32,
            )),
            max_code: _mm256_set1_epi32(fmt.max_code() as i32),
            nan: _mm256_set1_epi32(fmt.nan_code() as i32),
            inf: _mm256_set1_epi32(fmt.inf_code() as i32),
        }
    }
}

/// Eight already-scaled f32 -> eight FP8 codes in the low byte of each lane.
#[inline(always)]
unsafe fn round8<const SPECIALS: bool>(k: &EncK, v: __m256) -> __m256i {
    let bits = _mm256_castps_si256(v);
    let a = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFF_FFFF));
    // Normal target: integer round-to-nearest-even on the mantissa.
    let lsb = _mm256_and_si256(_mm256_srl_epi32(a, k.shift), _mm256_set1_epi32(1));
    let r = _mm256_add_epi32(a, _mm256_add_epi32(k.round, lsb));
    let norm = _mm256_sub_epi32(_mm256_srl_epi32(r, k.shift), k.expadj);
    // Subnormal target: magic-number addition, FPU rounds to nearest even.
    let sum = _mm256_add_ps(_mm256_castsi256_ps(a), k.magic);
    let sub = _mm256_sub_epi32(_mm256_castps_si256(sum), _mm256_castps_si256(k.magic));
    let is_sub = _mm256_cmpgt_epi32(k.min_normal, a);
    let mag = _mm256_min_epi32(_mm256_blendv_epi8(norm, sub, is_sub), k.max_code);
    // Non-finite: Inf code for |x| == Inf, NaN code above. Skipped for
    // blocks known to be all finite (the common case).
    let mag = if SPECIALS {
        let inf_bits = _mm256_set1_epi32(0x7F80_0000);
        let mag = _mm256_blendv_epi8(mag, k.inf, _mm256_cmpeq_epi32(a, inf_bits));
        _mm256_blendv_epi8(mag, k.nan, _mm256_cmpgt_epi32(a, inf_bits))
    } else {
        mag
    };
    let sign = _mm256_and_si256(_mm256_srli_epi32::<24>(bits), _mm256_set1_epi32(0x80));
    _mm256_or_si256(mag, sign)
}

/// Encode one block of 32 f32 lanes to `out[..32]`, returning its scale.
#[inline(always)]
unsafe fn encode_block(k: &EncK, x: [__m256; 4], out: *mut u8) -> u8 {
    // Block max over finite |x| only (as integers: same order as floats).
    let abs_mask = _mm256_set1_epi32(0x7FFF_FFFF);
    let max_finite = _mm256_set1_epi32(0x7F7F_FFFF);
    let mut m = _mm256_setzero_si256();
    let mut any_special = _mm256_setzero_si256();
    for &xi in &x {
        let a = _mm256_and_si256(_mm256_castps_si256(xi), abs_mask);
        let special = _mm256_cmpgt_epi32(a, max_finite);
        any_special = _mm256_or_si256(any_special, special);
        m = _mm256_max_epi32(m, _mm256_andnot_si256(special, a));
    }
    let m = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
    let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
    let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
    let s = scale_for_max(k.fmt, _mm_cvtsi128_si32(m) as u32);
    let inv = _mm256_set1_ps(e8m0_inverse(s));
    let (x0, x1, x2, x3) = (
        _mm256_mul_ps(x[0], inv),
        _mm256_mul_ps(x[1], inv),
        _mm256_mul_ps(x[2], inv),
        _mm256_mul_ps(x[3], inv),
    );
    let (c0, c1, c2, c3) = if _mm256_testz_si256(any_special, any_special) == 1 {
        (
            round8::<false>(k, x0),
            round8::<false>(k, x1),
            round8::<false>(k, x2),
            round8::<false>(k, x3),
        )
    } else {
        (
            round8::<true>(k, x0),
            round8::<true>(k, x1),
            round8::<true>(k, x2),
            round8::<true>(k, x3),
        )
    };
    // 4x8 i32 -> 32 u8; packs work per 128-bit lane, the permute restores
    // element order.
    let b = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out as *mut __m256i, b);
    s
}

// Loaders: 8 values -> 8 f32 lanes, exactly. (Plain inline fns rather than
// closures so they inherit the caller's target features.)

#[inline(always)]
unsafe fn ld_f32(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

#[inline(always)]
unsafe fn ld_bf16(p: *const u16) -> __m256 {
    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
}

/// vcvtph2ps is exact (subnormals included); NaN payloads don't matter here.
#[inline(always)]
unsafe fn ld_f16(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn encode_f32(fmt: WireFormat, src: *const f32, scales: &mut [u8], codes: *mut u8) {
    let k = EncK::new(fmt);
    for (b, s) in scales.iter_mut().enumerate() {
        let p = src.add(b * BLOCK);
        let x = [
            ld_f32(p),
            ld_f32(p.add(8)),
            ld_f32(p.add(16)),
            ld_f32(p.add(24)),
        ];
        *s = encode_block(&k, x, codes.add(b * BLOCK));
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn encode_bf16(fmt: WireFormat, src: *const u16, scales: &mut [u8], codes: *mut u8) {
    let k = EncK::new(fmt);
    for (b, s) in scales.iter_mut().enumerate() {
        let p = src.add(b * BLOCK);
        let x = [
            ld_bf16(p),
            ld_bf16(p.add(8)),
            ld_bf16(p.add(16)),
            ld_bf16(p.add(24)),
        ];
        *s = encode_block(&k, x, codes.add(b * BLOCK));
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn encode_f16(fmt: WireFormat, src: *const u16, scales: &mut [u8], codes: *mut u8) {
    let k = EncK::new(fmt);
    for (b, s) in scales.iter_mut().enumerate() {
        let p = src.add(b * BLOCK);
        let x = [
            ld_f16(p),
            ld_f16(p.add(8)),
            ld_f16(p.add(16)),
            ld_f16(p.add(24)),
        ];
        *s = encode_block(&k, x, codes.add(b * BLOCK));
    }
}

/// Encode the whole blocks of `src`; returns the number of blocks done.
pub fn encode(fmt: WireFormat, src: Src<'_>, scales: &mut [u8], codes: &mut [u8]) -> usize {
    let blocks = whole_blocks(src.len(), scales.len(), codes.len());
    if !features_ok() {
        return 0;
    }
    let (scales, cp) = (&mut scales[..blocks], codes.as_mut_ptr());
    // SAFETY: AVX2+F16C were just detected. Every kernel reads
    // `blocks * BLOCK` elements from `src` and writes as many bytes to
    // `codes`; `whole_blocks` bounds that by both lengths.
    unsafe {
        match src {
            Src::F32(v) => encode_f32(fmt, v.as_ptr(), scales, cp),
            Src::F16(v) => encode_f16(fmt, v.as_ptr(), scales, cp),
            Src::Bf16(v) => encode_bf16(fmt, v.as_ptr(), scales, cp),
        }
    }
    blocks
}

// ---------------------------------------------------------------- decode

/// Per-format constants of the FP8 -> f32 bit expansion.
#[derive(Clone, Copy)]
struct DecK {
    shift: __m128i,
    rebias: __m256,
    special_above: __m256i,
    inf_mag: __m256i,
}

impl DecK {
    #[inline(always)]
    unsafe fn new(fmt: WireFormat) -> DecK {
        // Magnitude bits placed so the FP8 mantissa sits at the top of the
        // f32 mantissa: the f32 then equals the FP8 value * 2^(bias-127)
        // (FP8 subnormals become f32 subnormals), fixed by one exact multiply.
        let shift = match fmt {
            WireFormat::E4M3 => 4,
            WireFormat::E5M2 => 3,
        };
        let place = |code: u8| ((code as u32) << (24 - shift)) as i32;
        DecK {
            shift: _mm_cvtsi32_si128(shift),
            rebias: _mm256_set1_ps(pow2(127 - fmt.bias() as i32)),
            special_above: _mm256_set1_epi32(place(fmt.first_special_code()) - 1),
            inf_mag: match fmt {
                WireFormat::E4M3 => _mm256_set1_epi32(-1), // never matches
                WireFormat::E5M2 => _mm256_set1_epi32(place(0x7C)),
            },
        }
    }
}

/// Eight FP8 codes at `p` -> eight f32 values times `scale`.
#[inline(always)]
unsafe fn decode8(k: &DecK, p: *const u8, scale: __m256) -> __m256 {
    let c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
    let x = _mm256_slli_epi32::<24>(c);
    let sign = _mm256_and_si256(x, _mm256_set1_epi32(i32::MIN));
    let mag = _mm256_srl_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7F00_0000)), k.shift);
    // Exact: the product is an FP8 value, always a normal f32.
    let t = _mm256_mul_ps(_mm256_castsi256_ps(mag), k.rebias);
    let t = _mm256_or_ps(t, _mm256_castsi256_ps(sign));
    let nan = _mm256_castsi256_ps(_mm256_set1_epi32(CANONICAL_NAN_BITS as i32));
    let t = _mm256_blendv_ps(
        t,
        nan,
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(mag, k.special_above)),
    );
    let inf = _mm256_or_ps(_mm256_set1_ps(f32::INFINITY), _mm256_castsi256_ps(sign));
    let t = _mm256_blendv_ps(
        t,
        inf,
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, k.inf_mag)),
    );
    _mm256_mul_ps(t, scale)
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_acc_kernel(fmt: WireFormat, scales: &[u8], codes: *const u8, acc: *mut f32) {
    let k = DecK::new(fmt);
    for (b, &s) in scales.iter().enumerate() {
        let scale = _mm256_set1_ps(e8m0_to_f32(s));
        for i in (0..BLOCK).step_by(8) {
            let j = b * BLOCK + i;
            let v = decode8(&k, codes.add(j), scale);
            let a = acc.add(j);
            _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), v));
        }
    }
}

/// Output narrowing for `decode_into`, one vector of 8 at a time.
#[derive(Clone, Copy)]
enum Narrow {
    F32,
    F16,
    Bf16,
}

#[inline(always)]
unsafe fn store8(kind: Narrow, v: __m256, out: *mut u8) {
    match kind {
        Narrow::F32 => _mm256_storeu_ps(out as *mut f32, v),
        Narrow::F16 => _mm_storeu_si128(
            out as *mut __m128i,
            _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(v),
        ),
        Narrow::Bf16 => {
            let bits = _mm256_castps_si256(v);
            let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
            let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb);
            let r = _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, bias));
            let abs = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFF_FFFF));
            let is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F80_0000));
            let qnan = _mm256_or_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(0x40));
            let r = _mm256_blendv_epi8(r, qnan, is_nan);
            // 8 x u32 (<= 0xFFFF) -> 8 x u16 in the low 128 bits.
            let p = _mm256_permute4x64_epi64::<0b00_00_10_00>(_mm256_packus_epi32(r, r));
            _mm_storeu_si128(out as *mut __m128i, _mm256_castsi256_si128(p));
        }
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_into_kernel(
    fmt: WireFormat,
    scales: &[u8],
    codes: *const u8,
    out: *mut u8,
    kind: Narrow,
) {
    let k = DecK::new(fmt);
    let width = match kind {
        Narrow::F32 => 4,
        Narrow::F16 | Narrow::Bf16 => 2,
    };
    for (b, &s) in scales.iter().enumerate() {
        let scale = _mm256_set1_ps(e8m0_to_f32(s));
        for i in (0..BLOCK).step_by(8) {
            let j = b * BLOCK + i;
            store8(kind, decode8(&k, codes.add(j), scale), out.add(j * width));
        }
    }
}

/// `acc[i] += decode(i)` over whole blocks; returns the number done.
pub fn decode_accumulate(fmt: WireFormat, scales: &[u8], codes: &[u8], acc: &mut [f32]) -> usize {
    let blocks = whole_blocks(acc.len(), scales.len(), codes.len());
    if !features_ok() {
        return 0;
    }
    // SAFETY: AVX2+F16C were just detected; the kernel touches
    // `blocks * BLOCK` codes and accumulator slots, bounded by
    // `whole_blocks`; `acc` is borrowed mutably so nothing aliases it.
    unsafe { decode_acc_kernel(fmt, &scales[..blocks], codes.as_ptr(), acc.as_mut_ptr()) };
    blocks
}

/// `dst[i] = decode(i)` over whole blocks; returns the number done.
pub fn decode_into(fmt: WireFormat, scales: &[u8], codes: &[u8], dst: &mut Dst<'_>) -> usize {
    let blocks = whole_blocks(dst.len(), scales.len(), codes.len());
    if !features_ok() {
        return 0;
    }
    let (out, kind) = match dst {
        Dst::F32(v) => (v.as_mut_ptr() as *mut u8, Narrow::F32),
        Dst::F16(v) => (v.as_mut_ptr() as *mut u8, Narrow::F16),
        Dst::Bf16(v) => (v.as_mut_ptr() as *mut u8, Narrow::Bf16),
    };
    // SAFETY: AVX2+F16C were just detected; the kernel reads
    // `blocks * BLOCK` codes and writes as many output elements (of the
    // size matching `kind`), bounded by `whole_blocks`; unaligned stores.
    unsafe { decode_into_kernel(fmt, &scales[..blocks], codes.as_ptr(), out, kind) };
    blocks
}
