//! AVX-512F kernel for the host path's hottest loop: the exact bf16 sum of
//! two members into a third buffer, bit for bit `scalar`'s fold and the
//! AVX2 kernel's.
//!
//! The AVX2 kernel widens 8 values with a shuffle and narrows them with a
//! pack and a permute. Here 32 values stay in their 16 dwords: a dword's
//! low half is an even value, its high half the odd one after it, so each
//! widens with one shift or mask, and the two rounded halves merge with
//! one shift and one mask, with no shuffle at all.

use std::arch::x86_64::*;

/// The high half of every dword.
const HIGH: i32 = 0xFFFF_0000_u32 as i32;

fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// See `codec::half_sum_pair_into` (bf16 only): folds the leading whole 32s
/// and returns how many values it did (0 without AVX-512F).
pub fn bf16_sum_pair_into(earlier: &[u8], later: &[u8], out: &mut [u8]) -> usize {
    let n = (earlier.len().min(later.len()).min(out.len()) / 2) / 32 * 32;
    if n == 0 || !available() {
        return 0;
    }
    // SAFETY: AVX-512F was just detected; the kernel reads `2 * n` bytes of
    // `earlier` and `later` and writes `2 * n` bytes of `out`, all bounded
    // above; `out` is borrowed mutably, so it aliases neither.
    unsafe { sum_pair_into(earlier.as_ptr(), later.as_ptr(), out.as_mut_ptr(), n) };
    n
}

/// `out[i] = bf16(f32(later[i]) + f32(earlier[i]))` over the first `n`
/// values (`later`'s NaN wins, as in the AVX2 kernel and the scalar fold).
///
/// # Safety
/// AVX-512F is present; `n` is a multiple of 32; `earlier` and `later` are
/// valid for `2 * n` byte reads and `out` for `2 * n` byte writes, not
/// overlapping either.
#[target_feature(enable = "avx512f")]
unsafe fn sum_pair_into(earlier: *const u8, later: *const u8, out: *mut u8, n: usize) {
    debug_assert_eq!(n % 32, 0, "whole groups of 32 only");
    let high = _mm512_set1_epi32(HIGH);
    for i in (0..n).step_by(32) {
        let e = _mm512_loadu_si512(earlier.add(2 * i) as *const __m512i);
        let l = _mm512_loadu_si512(later.add(2 * i) as *const __m512i);
        let even = add_later_nan_first(
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(l)),
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(e)),
        );
        let odd = add_later_nan_first(
            _mm512_castsi512_ps(_mm512_and_si512(l, high)),
            _mm512_castsi512_ps(_mm512_and_si512(e, high)),
        );
        let merged = _mm512_or_si512(
            _mm512_srli_epi32::<16>(round_into_high_half(even)),
            _mm512_and_si512(round_into_high_half(odd), high),
        );
        _mm512_storeu_si512(out.add(2 * i) as *mut __m512i, merged);
    }
}

/// `later + earlier`, where a NaN operand is the result as `vaddps`'s first
/// operand rule makes it (`later`'s, else `earlier`'s). Said explicitly,
/// because the compiler may swap the operands of an addition.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn add_later_nan_first(later: __m512, earlier: __m512) -> __m512 {
    let sum = _mm512_add_ps(later, earlier);
    let either_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(later, earlier);
    if either_nan == 0 {
        return sum;
    }
    let later_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(later, later);
    _mm512_mask_blend_ps(
        later_nan,
        _mm512_mask_blend_ps(either_nan, sum, earlier),
        later,
    )
}

/// Sixteen f32 rounded to bf16 exactly as `format::f32_to_bf16` (nearest
/// even; a NaN keeps its top bits, quieted), each in its dword's high half
/// (the low half is left over).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn round_into_high_half(v: __m512) -> __m512i {
    let bits = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
    let magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFF_FFFF));
    let nan = _mm512_cmpgt_epi32_mask(magnitude, _mm512_set1_epi32(0x7F80_0000));
    _mm512_mask_blend_epi32(nan, rounded, quiet)
}
