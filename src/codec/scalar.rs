//! Scalar reference codec: the definition the SIMD paths must match bit for
//! bit. Lengths are validated by the caller (`mod.rs`); here they are only
//! assumed consistent (`scales.len() == ceil(n / BLOCK) * scale_bytes`).

use std::sync::OnceLock;

use super::format::{
    bf16_to_f32, block_scale, code_to_f32, f16_to_f32, f32_to_bf16, f32_to_code, f32_to_f16,
    scale_value, WireFormat,
};
use super::{Dst, Src, BLOCK};

/// Encode one block (1..=32 values): pick the scale from the finite values
/// only, so a NaN/Inf element cannot poison its neighbours. Returns the
/// scale's wire value.
pub fn encode_block(fmt: WireFormat, xs: &[f32], codes: &mut [u8]) -> u16 {
    let max_abs = xs
        .iter()
        .map(|x| x.to_bits() & 0x7FFF_FFFF)
        .filter(|&b| b <= 0x7F7F_FFFF)
        .max()
        .unwrap_or(0);
    let (s, inv) = block_scale(fmt, max_abs);
    for (c, &x) in codes.iter_mut().zip(xs) {
        // FP8: exact (a power of two) unless the quotient is far below the
        // code's range, where it rounds to zero either way. INT8: one f32
        // rounding. Non-finite x stays non-finite.
        *c = f32_to_code(x * inv, fmt);
    }
    s
}

/// Encode all of `src` (any length; the last block may be short).
pub fn encode(fmt: WireFormat, src: Src<'_>, scales: &mut [u8], codes: &mut [u8]) {
    let sb = fmt.scale_bytes();
    let mut buf = [0f32; BLOCK];
    for (b, (s, c)) in scales
        .chunks_exact_mut(sb)
        .zip(codes.chunks_mut(BLOCK))
        .enumerate()
    {
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
        s.copy_from_slice(&encode_block(fmt, xs, c).to_le_bytes()[..sb]);
    }
}

/// Exact code -> f32 table per format (NaN codes give the canonical NaN).
pub fn lut(fmt: WireFormat) -> &'static [f32; 256] {
    static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
    static INT8: OnceLock<[f32; 256]> = OnceLock::new();
    let cell = match fmt {
        WireFormat::E4M3 => &E4M3,
        WireFormat::E5M2 => &E5M2,
        WireFormat::Int8 => &INT8,
    };
    cell.get_or_init(|| std::array::from_fn(|c| code_to_f32(c as u8, fmt)))
}

/// Decoded value of one element: `code * scale`, one rounding (only
/// possible when the product leaves the f32 normal range; never for INT8's
/// 7-bit codes times 8-bit scales, except overflow).
#[inline]
fn element(lut: &[f32; 256], code: u8, scale: f32) -> f32 {
    lut[code as usize] * scale
}

/// `acc[i] += decode(codes[i])`.
pub fn decode_accumulate(fmt: WireFormat, scales: &[u8], codes: &[u8], acc: &mut [f32]) {
    let lut = lut(fmt);
    for (s, (c, a)) in scales
        .chunks_exact(fmt.scale_bytes())
        .zip(codes.chunks(BLOCK).zip(acc.chunks_mut(BLOCK)))
    {
        let scale = scale_value(fmt, s);
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
    for (s, (c, o)) in scales
        .chunks_exact(fmt.scale_bytes())
        .zip(codes.chunks(BLOCK).zip(out.chunks_mut(BLOCK)))
    {
        let scale = scale_value(fmt, s);
        for (&c, o) in c.iter().zip(o) {
            *o = narrow(element(lut, c, scale));
        }
    }
}
