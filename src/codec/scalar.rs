//! Scalar reference codec: the definition the SIMD paths must match bit for
//! bit. Lengths are validated by the caller (`mod.rs`); here they are only
//! assumed consistent (`scales.len() == ceil(n / BLOCK)`).

use std::sync::OnceLock;

use super::format::{
    bf16_to_f32, e8m0_inverse, e8m0_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, f32_to_fp8,
    fp8_to_f32, scale_for_max, WireFormat,
};
use super::{Dst, Src, BLOCK};

/// Encode one block (1..=32 values): pick the scale from the finite values
/// only, so a NaN/Inf element cannot poison its neighbours.
pub fn encode_block(fmt: WireFormat, xs: &[f32], codes: &mut [u8]) -> u8 {
    let max_abs = xs
        .iter()
        .map(|x| x.to_bits() & 0x7FFF_FFFF)
        .filter(|&b| b <= 0x7F7F_FFFF)
        .max()
        .unwrap_or(0);
    let s = scale_for_max(fmt, max_abs);
    let inv = e8m0_inverse(s);
    for (c, &x) in codes.iter_mut().zip(xs) {
        // Exact unless the quotient is far below the FP8 range, where it
        // rounds to zero either way. Non-finite x stays non-finite.
        *c = f32_to_fp8(x * inv, fmt);
    }
    s
}

/// Encode all of `src` (any length; the last block may be short).
pub fn encode(fmt: WireFormat, src: Src<'_>, scales: &mut [u8], codes: &mut [u8]) {
    let mut buf = [0f32; BLOCK];
    for (b, (s, c)) in scales.iter_mut().zip(codes.chunks_mut(BLOCK)).enumerate() {
        let range = b * BLOCK..b * BLOCK + c.len();
        let xs = &mut buf[..c.len()];
        match src {
            Src::F32(v) => xs.copy_from_slice(&v[range]),
            Src::F16(v) => xs
                .iter_mut()
                .zip(&v[range])
                .for_each(|(x, &h)| *x = f16_to_f32(h)),
            Src::Bf16(v) => xs
                .iter_mut()
                .zip(&v[range])
                .for_each(|(x, &h)| *x = bf16_to_f32(h)),
        }
        *s = encode_block(fmt, xs, c);
    }
}

/// Exact FP8 -> f32 table per format (NaN codes give the canonical NaN).
pub fn lut(fmt: WireFormat) -> &'static [f32; 256] {
    static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
    let cell = match fmt {
        WireFormat::E4M3 => &E4M3,
        WireFormat::E5M2 => &E5M2,
    };
    cell.get_or_init(|| std::array::from_fn(|c| fp8_to_f32(c as u8, fmt)))
}

/// Decoded value of one element: `fp8 * 2^(s-127)`, one rounding (only
/// possible when the product leaves the f32 normal range).
#[inline]
fn element(lut: &[f32; 256], code: u8, scale: f32) -> f32 {
    lut[code as usize] * scale
}

/// `acc[i] += decode(codes[i])`.
pub fn decode_accumulate(fmt: WireFormat, scales: &[u8], codes: &[u8], acc: &mut [f32]) {
    let lut = lut(fmt);
    for (&s, (c, a)) in scales
        .iter()
        .zip(codes.chunks(BLOCK).zip(acc.chunks_mut(BLOCK)))
    {
        let scale = e8m0_to_f32(s);
        for (&c, a) in c.iter().zip(a) {
            *a += element(lut, c, scale);
        }
    }
}

/// `out[i] = decode(codes[i])`, narrowed with round-to-nearest-even.
pub fn decode_into(fmt: WireFormat, scales: &[u8], codes: &[u8], dst: Dst<'_>) {
    match dst {
        Dst::F32(out) => decode_map(fmt, scales, codes, out, |v| v),
        Dst::F16(out) => decode_map(fmt, scales, codes, out, f32_to_f16),
        Dst::Bf16(out) => decode_map(fmt, scales, codes, out, f32_to_bf16),
    }
}

fn decode_map<T>(
    fmt: WireFormat,
    scales: &[u8],
    codes: &[u8],
    out: &mut [T],
    narrow: impl Fn(f32) -> T,
) {
    let lut = lut(fmt);
    for (&s, (c, o)) in scales
        .iter()
        .zip(codes.chunks(BLOCK).zip(out.chunks_mut(BLOCK)))
    {
        let scale = e8m0_to_f32(s);
        for (&c, o) in c.iter().zip(o) {
            *o = narrow(element(lut, c, scale));
        }
    }
}
