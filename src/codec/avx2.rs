//! AVX2 + F16C kernels, bit-for-bit equal to `scalar.rs`.
//!
//! Each entry point handles whole 32-value blocks only and returns how many
//! it did; `mod.rs` runs the scalar reference on the rest (the short tail
//! block). Callers must only reach this module through a `Codec` whose
//! backend passed `Backend::is_available` (AVX2 and F16C present).

use std::arch::x86_64::*;

use super::format::{
    block_scale, pow2, scale_value, Fp8, WireFormat, CANONICAL_NAN_BITS, INT8_NAN,
};
use super::{Dst, HalfType, Src, BLOCK};

/// Number of whole blocks that every buffer can hold; a belt against
/// out-of-bounds pointer arithmetic should a caller ever skip validation.
fn whole_blocks(fmt: WireFormat, n: usize, scales: usize, codes: usize) -> usize {
    (n / BLOCK)
        .min(scales / fmt.scale_bytes())
        .min(codes / BLOCK)
}

fn features_ok() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
}

// ---------------------------------------------------------------- encode

/// Eight already-scaled f32 -> eight codes, one in the low byte of each
/// 32-bit lane (upper bytes zero). `SPECIALS`: the block holds a NaN or
/// ±Inf; otherwise the caller knows every lane is finite.
trait Rounder: Copy {
    /// The wire format, for the block scale.
    fn format(&self) -> WireFormat;
    unsafe fn codes8<const SPECIALS: bool>(&self, v: __m256) -> __m256i;
}

/// Constants of the f32 -> FP8 rounding (see `format::round_magnitude`).
#[derive(Clone, Copy)]
struct Fp8Rounder {
    format: WireFormat,
    shift: __m128i,
    round: __m256i,
    expadj: __m256i,
    min_normal: __m256i,
    magic: __m256,
    max_code: __m256i,
    nan: __m256i,
    inf: __m256i,
}

impl Fp8Rounder {
    #[inline(always)]
    unsafe fn new(format: WireFormat, fmt: Fp8) -> Fp8Rounder {
        let (m, bias) = (fmt.man_bits(), fmt.bias());
        let shift = 23 - m;
        Fp8Rounder {
            format,
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

impl Rounder for Fp8Rounder {
    fn format(&self) -> WireFormat {
        self.format
    }

    #[inline(always)]
    unsafe fn codes8<const SPECIALS: bool>(&self, v: __m256) -> __m256i {
        let k = self;
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
        // Non-finite: Inf code for |x| == Inf, NaN code above.
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
}

/// f32 -> INT8 (see `format::f32_to_int8`).
#[derive(Clone, Copy)]
struct Int8Rounder;

impl Rounder for Int8Rounder {
    fn format(&self) -> WireFormat {
        WireFormat::Int8
    }

    #[inline(always)]
    unsafe fn codes8<const SPECIALS: bool>(&self, v: __m256) -> __m256i {
        // Explicit rounding mode: the result must not depend on MXCSR.
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_set1_ps(-127.0)),
            _mm256_set1_ps(127.0),
        );
        // Exact: r is an integer in -127..=127. Two's complement low byte.
        let c = _mm256_and_si256(_mm256_cvttps_epi32(r), _mm256_set1_epi32(0xFF));
        if SPECIALS {
            // max/min above turned NaN into -127 and Inf into 127: use v.
            let a = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFF_FFFF));
            let special = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7F7F_FFFF));
            _mm256_blendv_epi8(c, _mm256_set1_epi32(i32::from(INT8_NAN)), special)
        } else {
            c
        }
    }
}

/// Encode one block of 32 f32 lanes to `out[..32]`, returning its scale's
/// wire value.
#[inline(always)]
unsafe fn encode_block<R: Rounder>(k: &R, x: [__m256; 4], out: *mut u8) -> u16 {
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
    let (s, inv) = block_scale(k.format(), _mm_cvtsi128_si32(m) as u32);
    let inv = _mm256_set1_ps(inv);
    let (x0, x1, x2, x3) = (
        _mm256_mul_ps(x[0], inv),
        _mm256_mul_ps(x[1], inv),
        _mm256_mul_ps(x[2], inv),
        _mm256_mul_ps(x[3], inv),
    );
    // Blocks known to be all finite (the common case) skip the specials.
    let (c0, c1, c2, c3) = if _mm256_testz_si256(any_special, any_special) == 1 {
        (
            k.codes8::<false>(x0),
            k.codes8::<false>(x1),
            k.codes8::<false>(x2),
            k.codes8::<false>(x3),
        )
    } else {
        (
            k.codes8::<true>(x0),
            k.codes8::<true>(x1),
            k.codes8::<true>(x2),
            k.codes8::<true>(x3),
        )
    };
    // 4x8 i32 (each 0..=255) -> 32 u8; packs work per 128-bit lane, the
    // permute restores element order.
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

#[inline(always)]
unsafe fn encode_f32<R: Rounder>(k: R, src: *const f32, scales: &mut [u8], codes: *mut u8) {
    let sb = k.format().scale_bytes();
    for (b, s) in scales.chunks_exact_mut(sb).enumerate() {
        let p = src.add(b * BLOCK);
        let x = [
            ld_f32(p),
            ld_f32(p.add(8)),
            ld_f32(p.add(16)),
            ld_f32(p.add(24)),
        ];
        s.copy_from_slice(&encode_block(&k, x, codes.add(b * BLOCK)).to_le_bytes()[..sb]);
    }
}

#[inline(always)]
unsafe fn encode_bf16<R: Rounder>(k: R, src: *const u16, scales: &mut [u8], codes: *mut u8) {
    let sb = k.format().scale_bytes();
    for (b, s) in scales.chunks_exact_mut(sb).enumerate() {
        let p = src.add(b * BLOCK);
        let x = [
            ld_bf16(p),
            ld_bf16(p.add(8)),
            ld_bf16(p.add(16)),
            ld_bf16(p.add(24)),
        ];
        s.copy_from_slice(&encode_block(&k, x, codes.add(b * BLOCK)).to_le_bytes()[..sb]);
    }
}

#[inline(always)]
unsafe fn encode_f16<R: Rounder>(k: R, src: *const u16, scales: &mut [u8], codes: *mut u8) {
    let sb = k.format().scale_bytes();
    for (b, s) in scales.chunks_exact_mut(sb).enumerate() {
        let p = src.add(b * BLOCK);
        let x = [
            ld_f16(p),
            ld_f16(p.add(8)),
            ld_f16(p.add(16)),
            ld_f16(p.add(24)),
        ];
        s.copy_from_slice(&encode_block(&k, x, codes.add(b * BLOCK)).to_le_bytes()[..sb]);
    }
}

/// Encode the whole blocks of `src`; returns the number of blocks done.
pub fn encode(fmt: WireFormat, src: Src<'_>, scales: &mut [u8], codes: &mut [u8]) -> usize {
    let blocks = whole_blocks(fmt, src.len(), scales.len(), codes.len());
    if !features_ok() {
        return 0;
    }
    let (scales, cp) = (
        &mut scales[..blocks * fmt.scale_bytes()],
        codes.as_mut_ptr(),
    );
    // SAFETY: AVX2+F16C were just detected. The kernel reads
    // `blocks * BLOCK` elements from `src` and writes as many bytes to
    // `codes`; `whole_blocks` bounds that by both lengths.
    unsafe { encode_kernel(fmt, src, scales, cp) };
    blocks
}

/// The format and input type dispatch, compiled with the features so
/// that the generic loops below inline into it.
#[target_feature(enable = "avx2,f16c")]
unsafe fn encode_kernel(fmt: WireFormat, src: Src<'_>, scales: &mut [u8], codes: *mut u8) {
    match fmt.fp8() {
        Some(f) => encode_src(Fp8Rounder::new(fmt, f), src, scales, codes),
        None => encode_src(Int8Rounder, src, scales, codes),
    }
}

#[inline(always)]
unsafe fn encode_src<R: Rounder>(k: R, src: Src<'_>, scales: &mut [u8], codes: *mut u8) {
    match src {
        Src::F32(v) => encode_f32(k, v.as_ptr(), scales, codes),
        Src::F16(v) => encode_f16(k, v.as_ptr(), scales, codes),
        Src::Bf16(v) => encode_bf16(k, v.as_ptr(), scales, codes),
    }
}

// ---------------------------------------------------------------- decode

/// Eight codes at `p` -> eight f32 values times `scale`.
trait Decoder: Copy {
    /// The wire format, for the block scale.
    fn format(&self) -> WireFormat;
    unsafe fn decode8(&self, p: *const u8, scale: __m256) -> __m256;
}

/// Constants of the FP8 -> f32 bit expansion.
#[derive(Clone, Copy)]
struct Fp8Decoder {
    format: WireFormat,
    shift: __m128i,
    rebias: __m256,
    special_above: __m256i,
    inf_mag: __m256i,
}

impl Fp8Decoder {
    #[inline(always)]
    unsafe fn new(format: WireFormat, fmt: Fp8) -> Fp8Decoder {
        // Magnitude bits placed so the FP8 mantissa sits at the top of the
        // f32 mantissa: the f32 then equals the FP8 value * 2^(bias-127)
        // (FP8 subnormals become f32 subnormals), fixed by one exact multiply.
        let shift = match fmt {
            Fp8::E4M3 => 4,
            Fp8::E5M2 => 3,
        };
        let place = |code: u8| ((code as u32) << (24 - shift)) as i32;
        Fp8Decoder {
            format,
            shift: _mm_cvtsi32_si128(shift),
            rebias: _mm256_set1_ps(pow2(127 - fmt.bias() as i32)),
            special_above: _mm256_set1_epi32(place(fmt.first_special_code()) - 1),
            inf_mag: match fmt {
                Fp8::E4M3 => _mm256_set1_epi32(-1), // never matches
                Fp8::E5M2 => _mm256_set1_epi32(place(0x7C)),
            },
        }
    }
}

impl Decoder for Fp8Decoder {
    fn format(&self) -> WireFormat {
        self.format
    }

    #[inline(always)]
    unsafe fn decode8(&self, p: *const u8, scale: __m256) -> __m256 {
        let k = self;
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
}

/// INT8 -> f32 (see `format::int8_to_f32`).
#[derive(Clone, Copy)]
struct Int8Decoder;

impl Decoder for Int8Decoder {
    fn format(&self) -> WireFormat {
        WireFormat::Int8
    }

    #[inline(always)]
    unsafe fn decode8(&self, p: *const u8, scale: __m256) -> __m256 {
        let c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i));
        // Exact (|c| <= 128); the product with the bf16 scale too (7 by 8
        // significant bits), unless it overflows.
        let t = _mm256_cvtepi32_ps(c);
        let nan = _mm256_castsi256_ps(_mm256_set1_epi32(CANONICAL_NAN_BITS as i32));
        let is_nan = _mm256_cmpeq_epi32(c, _mm256_set1_epi32(i32::from(INT8_NAN as i8)));
        let t = _mm256_blendv_ps(t, nan, _mm256_castsi256_ps(is_nan));
        _mm256_mul_ps(t, scale)
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_acc_kernel(fmt: WireFormat, scales: &[u8], codes: *const u8, acc: *mut f32) {
    match fmt.fp8() {
        Some(f) => decode_acc_blocks(Fp8Decoder::new(fmt, f), scales, codes, acc),
        None => decode_acc_blocks(Int8Decoder, scales, codes, acc),
    }
}

#[inline(always)]
unsafe fn decode_acc_blocks<D: Decoder>(k: D, scales: &[u8], codes: *const u8, acc: *mut f32) {
    let fmt = k.format();
    for (b, s) in scales.chunks_exact(fmt.scale_bytes()).enumerate() {
        let scale = _mm256_set1_ps(scale_value(fmt, s));
        for i in (0..BLOCK).step_by(8) {
            let j = b * BLOCK + i;
            let v = k.decode8(codes.add(j), scale);
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
    match fmt.fp8() {
        Some(f) => decode_into_blocks(Fp8Decoder::new(fmt, f), scales, codes, out, kind),
        None => decode_into_blocks(Int8Decoder, scales, codes, out, kind),
    }
}

#[inline(always)]
unsafe fn decode_into_blocks<D: Decoder>(
    k: D,
    scales: &[u8],
    codes: *const u8,
    out: *mut u8,
    kind: Narrow,
) {
    let width = match kind {
        Narrow::F32 => 4,
        Narrow::F16 | Narrow::Bf16 => 2,
    };
    let fmt = k.format();
    for (b, s) in scales.chunks_exact(fmt.scale_bytes()).enumerate() {
        let scale = _mm256_set1_ps(scale_value(fmt, s));
        for i in (0..BLOCK).step_by(8) {
            let j = b * BLOCK + i;
            store8(kind, k.decode8(codes.add(j), scale), out.add(j * width));
        }
    }
}

/// `acc[i] += decode(i)` over whole blocks; returns the number done.
pub fn decode_accumulate(fmt: WireFormat, scales: &[u8], codes: &[u8], acc: &mut [f32]) -> usize {
    let blocks = whole_blocks(fmt, acc.len(), scales.len(), codes.len());
    if !features_ok() {
        return 0;
    }
    let scales = &scales[..blocks * fmt.scale_bytes()];
    // SAFETY: AVX2+F16C were just detected; the kernel touches
    // `blocks * BLOCK` codes and accumulator slots, bounded by
    // `whole_blocks`; `acc` is borrowed mutably so nothing aliases it.
    unsafe { decode_acc_kernel(fmt, scales, codes.as_ptr(), acc.as_mut_ptr()) };
    blocks
}

/// `dst[i] = decode(i)` over whole blocks; returns the number done.
pub fn decode_into(fmt: WireFormat, scales: &[u8], codes: &[u8], dst: &mut Dst<'_>) -> usize {
    let blocks = whole_blocks(fmt, dst.len(), scales.len(), codes.len());
    if !features_ok() {
        return 0;
    }
    let scales = &scales[..blocks * fmt.scale_bytes()];
    let (out, kind) = match dst {
        Dst::F32(v) => (v.as_mut_ptr() as *mut u8, Narrow::F32),
        Dst::F16(v) => (v.as_mut_ptr() as *mut u8, Narrow::F16),
        Dst::Bf16(v) => (v.as_mut_ptr() as *mut u8, Narrow::Bf16),
    };
    // SAFETY: AVX2+F16C were just detected; the kernel reads
    // `blocks * BLOCK` codes and writes as many output elements (of the
    // size matching `kind`), bounded by `whole_blocks`; unaligned stores.
    unsafe { decode_into_kernel(fmt, scales, codes.as_ptr(), out, kind) };
    blocks
}

// ------------------------------------------------- exact half sums

/// A 16-bit float type the exact sums fold: eight values to and from f32.
/// Both methods need AVX2 and F16C, and `p` valid for 16 bytes.
trait Half: Copy {
    unsafe fn load8(p: *const u8) -> __m256;
    unsafe fn store8(v: __m256, p: *mut u8);
}

#[derive(Clone, Copy)]
struct Bf16;
#[derive(Clone, Copy)]
struct F16;

impl Half for Bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        load_bf16x8(p)
    }
    #[inline(always)]
    unsafe fn store8(v: __m256, p: *mut u8) {
        store_bf16x8(v, p)
    }
}

impl Half for F16 {
    /// F16C widens exactly, quieting a NaN as `format::f16_to_f32` does.
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    /// F16C rounds to nearest even, overflows to ±Inf and keeps a NaN's
    /// top payload bits, quieted, as `format::f32_to_f16` does.
    #[inline(always)]
    unsafe fn store8(v: __m256, p: *mut u8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
        _mm_storeu_si128(p as *mut __m128i, h);
    }
}

/// Eight bf16 at `p` (unaligned) widened to f32.
#[inline(always)]
unsafe fn load_bf16x8(p: *const u8) -> __m256 {
    let h = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

/// Eight f32 rounded to bf16 exactly as `format::f32_to_bf16` (nearest
/// even; a NaN keeps its top bits, quieted), stored at `p` (unaligned).
#[inline(always)]
unsafe fn store_bf16x8(v: __m256, p: *mut u8) {
    let bits = _mm256_castps_si256(v);
    let high = _mm256_srli_epi32(bits, 16);
    let lsb = _mm256_and_si256(high, _mm256_set1_epi32(1));
    let rounded = _mm256_srli_epi32(
        _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))),
        16,
    );
    let quiet = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
    let magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFF_FFFF));
    let nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7F80_0000));
    let r = _mm256_blendv_epi8(rounded, quiet, nan);
    // Every lane is at most 0xFFFF: pack without saturating, then bring
    // the two 128-bit halves' four values together.
    let packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0b1000);
    _mm_storeu_si128(p as *mut __m128i, _mm256_castsi256_si128(packed));
}

/// `b[i] = half(half(b[i]) + half(a[i]))` over the first `n` values
/// (`_mm256_add_ps(b, a)`: `b`'s NaN wins, as `x + a` in the scalar fold).
///
/// # Safety
/// AVX2 and F16C are present; `n` is a multiple of 8; `a` and `b` are
/// valid for `2 * n` bytes (reads; reads and writes) and do not overlap.
#[inline(always)]
unsafe fn sum_pair<H: Half>(a: *const u8, b: *mut u8, n: usize) {
    debug_assert_eq!(n % 8, 0, "whole groups of 8 only");
    for i in (0..n).step_by(8) {
        let sum = _mm256_add_ps(H::load8(b.add(2 * i)), H::load8(a.add(2 * i)));
        H::store8(sum, b.add(2 * i));
    }
}

/// `out[i] = half(half(later[i]) + half(earlier[i]))` over the first `n`
/// values: [`sum_pair`] into a third buffer (`later`'s NaN wins).
///
/// # Safety
/// As [`sum_pair`], with `earlier` and `later` valid for `2 * n` byte reads
/// and `out` for `2 * n` byte writes, not overlapping either.
#[inline(always)]
unsafe fn sum_pair_into<H: Half>(earlier: *const u8, later: *const u8, out: *mut u8, n: usize) {
    debug_assert_eq!(n % 8, 0, "whole groups of 8 only");
    for i in (0..n).step_by(8) {
        let sum = _mm256_add_ps(H::load8(later.add(2 * i)), H::load8(earlier.add(2 * i)));
        H::store8(sum, out.add(2 * i));
    }
}

/// `b[i] = half(half(b[i]) + acc[i])` over the first `n` values.
///
/// # Safety
/// As [`sum_pair`], with `acc` valid for `n` f32 reads.
#[inline(always)]
unsafe fn sum_acc<H: Half>(acc: *const f32, b: *mut u8, n: usize) {
    debug_assert_eq!(n % 8, 0, "whole groups of 8 only");
    for i in (0..n).step_by(8) {
        let sum = _mm256_add_ps(H::load8(b.add(2 * i)), _mm256_loadu_ps(acc.add(i)));
        H::store8(sum, b.add(2 * i));
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn sum_pair_kernel(half: HalfType, a: *const u8, b: *mut u8, n: usize) {
    match half {
        HalfType::Bf16 => sum_pair::<Bf16>(a, b, n),
        HalfType::F16 => sum_pair::<F16>(a, b, n),
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn sum_pair_into_kernel(
    half: HalfType,
    earlier: *const u8,
    later: *const u8,
    out: *mut u8,
    n: usize,
) {
    match half {
        HalfType::Bf16 => sum_pair_into::<Bf16>(earlier, later, out, n),
        HalfType::F16 => sum_pair_into::<F16>(earlier, later, out, n),
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn sum_acc_kernel(half: HalfType, acc: *const f32, b: *mut u8, n: usize) {
    match half {
        HalfType::Bf16 => sum_acc::<Bf16>(acc, b, n),
        HalfType::F16 => sum_acc::<F16>(acc, b, n),
    }
}

/// Values that `a_values` and `b_bytes` of 16-bit halves both hold, in
/// whole groups of 8.
fn whole_eights(a_values: usize, b_bytes: usize) -> usize {
    (a_values.min(b_bytes / 2) / 8) * 8
}

/// See `codec::half_sum_pair`.
pub fn half_sum_pair(half: HalfType, a: &[u8], b: &mut [u8]) -> usize {
    let n = whole_eights(a.len() / 2, b.len());
    if !features_ok() {
        return 0;
    }
    // SAFETY: AVX2+F16C were just detected; the kernel reads `2 * n` bytes
    // of `a` and reads and writes `2 * n` bytes of `b`, both bounded above;
    // `b` is borrowed mutably, so it cannot alias `a`.
    unsafe { sum_pair_kernel(half, a.as_ptr(), b.as_mut_ptr(), n) };
    n
}

/// See `codec::half_sum_pair_into`.
pub fn half_sum_pair_into(half: HalfType, earlier: &[u8], later: &[u8], out: &mut [u8]) -> usize {
    let n = whole_eights(earlier.len().min(later.len()) / 2, out.len());
    if !features_ok() {
        return 0;
    }
    // SAFETY: AVX2+F16C were just detected; the kernel reads `2 * n` bytes
    // of `earlier` and `later` and writes `2 * n` bytes of `out`, all
    // bounded above; `out` is borrowed mutably, so it aliases neither.
    unsafe { sum_pair_into_kernel(half, earlier.as_ptr(), later.as_ptr(), out.as_mut_ptr(), n) };
    n
}

/// See `codec::half_sum_acc`.
pub fn half_sum_acc(half: HalfType, acc: &[f32], b: &mut [u8]) -> usize {
    let n = whole_eights(acc.len(), b.len());
    if !features_ok() {
        return 0;
    }
    // SAFETY: AVX2+F16C were just detected; the kernel reads `n` values of
    // `acc` and reads and writes `2 * n` bytes of `b`, bounded above.
    unsafe { sum_acc_kernel(half, acc.as_ptr(), b.as_mut_ptr(), n) };
    n
}
