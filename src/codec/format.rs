//! Bit-exact scalar conversions: the wire formats (FP8 E4M3/E5M2, INT8),
//! fp16, bf16 and the E8M0 block scale. Everything here is safe, branchy
//! and meant to be read; the SIMD paths must reproduce these functions bit
//! for bit.

/// What each value becomes on the wire: one code byte per value, plus one
/// scale per block of 32 values ([`WireFormat::scale_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// OCP FP8 E4M3 ([`Fp8::E4M3`]), power-of-two (E8M0) block scales.
    E4M3,
    /// OCP FP8 E5M2 ([`Fp8::E5M2`]), power-of-two (E8M0) block scales.
    E5M2,
    /// Symmetric 8-bit integer: the code is the two's-complement byte of
    /// `round(x / scale)` in `-127..=127`; the free code 0x80 (-128) is NaN.
    /// 7 bits of precision instead of E4M3's 3, for the same byte. The
    /// block scale is a bf16 (`max / 127` rounded up): a power of two would
    /// leave up to half of the 255 levels unused (docs/collnet.md measures
    /// both).
    Int8,
}

impl WireFormat {
    pub const ALL: [WireFormat; 3] = [WireFormat::E4M3, WireFormat::E5M2, WireFormat::Int8];

    /// The FP8 encoding behind this format; `None` for INT8.
    pub const fn fp8(self) -> Option<Fp8> {
        match self {
            WireFormat::E4M3 => Some(Fp8::E4M3),
            WireFormat::E5M2 => Some(Fp8::E5M2),
            WireFormat::Int8 => None,
        }
    }

    /// Largest finite magnitude of a code: the block scale maps the
    /// block's largest finite `|x|` to at most this.
    pub const fn max_finite(self) -> f32 {
        match self {
            WireFormat::E4M3 => 448.0,
            WireFormat::E5M2 => 57344.0,
            WireFormat::Int8 => 127.0,
        }
    }

    /// Bytes of one block's scale on the wire: an E8M0 byte for FP8, a
    /// little-endian bf16 for INT8.
    pub const fn scale_bytes(self) -> usize {
        match self {
            WireFormat::E4M3 | WireFormat::E5M2 => 1,
            WireFormat::Int8 => 2,
        }
    }

    /// Lower-case name, as in the configuration (`e4m3`, `e5m2`, `int8`).
    pub const fn name(self) -> &'static str {
        match self {
            WireFormat::E4M3 => "e4m3",
            WireFormat::E5M2 => "e5m2",
            WireFormat::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for WireFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The two OCP FP8 encodings (field layouts of [`WireFormat::E4M3`] and
/// [`WireFormat::E5M2`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8 {
    /// 4 exponent bits (bias 7), 3 mantissa bits, max 448, no infinities;
    /// NaN is only `S.1111.111` (0x7F / 0xFF).
    E4M3,
    /// 5 exponent bits (bias 15), 2 mantissa bits, max 57344, IEEE-like
    /// with ±Inf (0x7C/0xFC) and NaNs (0x7D..=0x7F, 0xFD..=0xFF).
    E5M2,
}

/// Canonical quiet NaN that every decode path produces, so that scalar and
/// SIMD outputs agree bit for bit whatever operand order the hardware picks.
pub const CANONICAL_NAN_BITS: u32 = 0x7FC0_0000;
/// E8M0 byte reserved for "NaN scale": every element of such a block decodes
/// to NaN (OCP MX semantics).
pub const E8M0_NAN: u8 = 0xFF;
/// E8M0 byte written for a block with no nonzero finite value (scale 1.0).
pub const E8M0_ZERO_BLOCK: u8 = 127;

impl Fp8 {
    /// Largest finite magnitude.
    pub const fn max_finite(self) -> f32 {
        match self {
            Fp8::E4M3 => 448.0,
            Fp8::E5M2 => 57344.0,
        }
    }

    /// Mantissa (fraction) bits.
    pub const fn man_bits(self) -> u32 {
        match self {
            Fp8::E4M3 => 3,
            Fp8::E5M2 => 2,
        }
    }

    /// Exponent bias.
    pub const fn bias(self) -> u32 {
        match self {
            Fp8::E4M3 => 7,
            Fp8::E5M2 => 15,
        }
    }

    /// Magnitude code (sign bit clear) of the largest finite value.
    pub const fn max_code(self) -> u8 {
        match self {
            Fp8::E4M3 => 0x7E,
            Fp8::E5M2 => 0x7B,
        }
    }

    /// Magnitude code written for a NaN input (and, in E4M3, for ±Inf).
    pub const fn nan_code(self) -> u8 {
        match self {
            Fp8::E4M3 => 0x7F,
            Fp8::E5M2 => 0x7E,
        }
    }

    /// Magnitude code written for ±Inf (E4M3 has no infinity: NaN).
    pub const fn inf_code(self) -> u8 {
        match self {
            Fp8::E4M3 => 0x7F,
            Fp8::E5M2 => 0x7C,
        }
    }

    /// Smallest magnitude code that is not finite.
    pub const fn first_special_code(self) -> u8 {
        match self {
            Fp8::E4M3 => 0x7F,
            Fp8::E5M2 => 0x7C,
        }
    }
}

/// Exact `2^k` as f32 for `k` in `-149..=127` (subnormals included).
pub fn pow2(k: i32) -> f32 {
    debug_assert!((-149..=127).contains(&k));
    if k >= -126 {
        f32::from_bits(((k + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (k + 149))
    }
}

/// Value of an E8M0 scale byte: `2^(s-127)`, or NaN for 0xFF.
pub fn e8m0_to_f32(s: u8) -> f32 {
    if s == E8M0_NAN {
        f32::from_bits(CANONICAL_NAN_BITS)
    } else {
        pow2(s as i32 - 127)
    }
}

/// Multiplier that divides by the scale (exact: a power of two). Only called
/// for scales the encoder chose, whose exponent is in `-127..=127`.
pub fn e8m0_inverse(s: u8) -> f32 {
    debug_assert!(s != E8M0_NAN);
    pow2(127 - s as i32)
}

/// E8M0 scale for a block whose largest finite magnitude has f32 bits
/// `max_abs_bits`: the smallest `2^e` with `max / 2^e <= max_finite`
/// (exponent rounded up, so the block never saturates), clamped to the E8M0
/// range. A block without any nonzero finite value gets scale 1.0.
pub fn scale_for_max(fmt: Fp8, max_abs_bits: u32) -> u8 {
    debug_assert!(max_abs_bits <= 0x7F7F_FFFF);
    if max_abs_bits == 0 {
        return E8M0_ZERO_BLOCK;
    }
    let biased = (max_abs_bits >> 23) as i32;
    if biased == 0 {
        // f32 subnormal max: the ideal exponent is far below -127.
        return 0;
    }
    // max = 1.f * 2^E and max_finite = 1.g * 2^emax (both formats: g = .75).
    let limit = fmt.max_finite().to_bits();
    let emax = (limit >> 23) as i32 - 127;
    let above = (max_abs_bits & 0x7F_FFFF) > (limit & 0x7F_FFFF);
    let e = (biased - 127) - emax + above as i32;
    (e.clamp(-127, 127) + 127) as u8
}

/// bf16 bits of the INT8 scale written for a block with no nonzero finite
/// value (1.0).
pub const INT8_ZERO_BLOCK_SCALE: u16 = 0x3F80;

/// INT8 scale (bf16 bits) for a block whose largest finite magnitude has
/// f32 bits `max_abs_bits`: `max / 127` (f32 division) rounded up to bf16,
/// so the block does not saturate beyond f32 rounding (the encoder clamps
/// that last ulp). At least 2^-126, so that its inverse is finite: a block
/// of nothing but f32 subnormals keeps at most 1 bit.
pub fn int8_scale_for_max(max_abs_bits: u32) -> u16 {
    debug_assert!(max_abs_bits <= 0x7F7F_FFFF);
    if max_abs_bits == 0 {
        return INT8_ZERO_BLOCK_SCALE;
    }
    let ideal = (f32::from_bits(max_abs_bits) / 127.0)
        .max(f32::MIN_POSITIVE)
        .to_bits();
    let truncated = (ideal >> 16) as u16;
    if u32::from(truncated) << 16 == ideal {
        truncated
    } else {
        truncated + 1
    }
}

/// Value of an INT8 block scale (bf16 bits). Inf and NaN bits (never
/// written) decode as the canonical NaN: the whole block is NaN, as with
/// E8M0's 0xFF.
pub fn int8_scale_to_f32(bits: u16) -> f32 {
    if bits & 0x7F80 == 0x7F80 {
        f32::from_bits(CANONICAL_NAN_BITS)
    } else {
        bf16_to_f32(bits)
    }
}

/// A block's scale, chosen from its largest finite magnitude (f32 bits):
/// the scale's wire value (E8M0 byte or INT8's bf16 bits, written as
/// [`WireFormat::scale_bytes`] little-endian bytes) and the multiplier
/// that divides by it.
pub fn block_scale(fmt: WireFormat, max_abs_bits: u32) -> (u16, f32) {
    match fmt.fp8() {
        Some(f) => {
            let s = scale_for_max(f, max_abs_bits);
            (u16::from(s), e8m0_inverse(s))
        }
        None => {
            let s = int8_scale_for_max(max_abs_bits);
            (s, 1.0 / int8_scale_to_f32(s))
        }
    }
}

/// Value of a block's scale from its wire bytes (`scale_bytes` of them).
pub fn scale_value(fmt: WireFormat, bytes: &[u8]) -> f32 {
    match fmt.fp8() {
        Some(_) => e8m0_to_f32(bytes[0]),
        None => int8_scale_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])),
    }
}

/// Round a finite non-negative f32 (as bits) to the nearest binary minifloat
/// with `m` mantissa bits and exponent bias `bias`, ties to even. Returns the
/// magnitude code, unbounded above (callers saturate or map to Inf).
fn round_magnitude(abs_bits: u32, m: u32, bias: u32) -> u32 {
    let min_normal_bits = (127 - bias + 1) << 23;
    if abs_bits < min_normal_bits {
        // Subnormal target: add a magic number whose ulp equals the target's
        // subnormal step and let the FPU round to nearest even.
        let magic = f32::from_bits(((127 - bias) + (23 - m) + 1) << 23);
        (f32::from_bits(abs_bits) + magic).to_bits() - magic.to_bits()
    } else {
        // Normal target: round the mantissa in the integer domain; a carry
        // out of the mantissa correctly bumps the exponent.
        let shift = 23 - m;
        let r = abs_bits + ((1 << (shift - 1)) - 1) + ((abs_bits >> shift) & 1);
        (r >> shift) - ((127 - bias) << m)
    }
}

/// f32 -> FP8, round to nearest even, saturating finite values to the
/// format's max; NaN -> NaN code, ±Inf -> Inf code (E4M3: NaN), sign kept.
pub fn f32_to_fp8(x: f32, fmt: Fp8) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7FFF_FFFF;
    let mag = if abs == 0x7F80_0000 {
        fmt.inf_code()
    } else if abs > 0x7F80_0000 {
        fmt.nan_code()
    } else {
        round_magnitude(abs, fmt.man_bits(), fmt.bias()).min(fmt.max_code() as u32) as u8
    };
    sign | mag
}

/// FP8 -> f32, exact. Every NaN code gives [`CANONICAL_NAN_BITS`].
pub fn fp8_to_f32(code: u8, fmt: Fp8) -> f32 {
    let negative = code & 0x80 != 0;
    let mag = code & 0x7F;
    let m = fmt.man_bits();
    if mag >= fmt.first_special_code() {
        if fmt == Fp8::E5M2 && mag == 0x7C {
            return if negative {
                f32::NEG_INFINITY
            } else {
                f32::INFINITY
            };
        }
        return f32::from_bits(CANONICAL_NAN_BITS);
    }
    let exp = (mag >> m) as i32;
    let frac = (mag & ((1 << m) - 1)) as f32;
    let one_ulp = pow2(1 - fmt.bias() as i32 - m as i32); // subnormal step
    let v = if exp == 0 {
        frac * one_ulp
    } else {
        (frac + (1u32 << m) as f32) * pow2(exp - fmt.bias() as i32 - m as i32)
    };
    if negative {
        -v
    } else {
        v
    }
}

/// INT8 code written for NaN and ±Inf: -128, the code the symmetric range
/// leaves free. (Like E4M3, INT8 has no infinity: ±Inf travels as NaN.)
pub const INT8_NAN: u8 = 0x80;

/// f32 -> INT8 code: round to nearest, ties to even, saturating at ±127;
/// NaN and ±Inf -> [`INT8_NAN`]. -0 becomes 0.
pub fn f32_to_int8(x: f32) -> u8 {
    if !x.is_finite() {
        return INT8_NAN;
    }
    x.round_ties_even().clamp(-127.0, 127.0) as i8 as u8
}

/// INT8 code -> f32, exact; [`INT8_NAN`] gives [`CANONICAL_NAN_BITS`].
pub fn int8_to_f32(code: u8) -> f32 {
    if code == INT8_NAN {
        f32::from_bits(CANONICAL_NAN_BITS)
    } else {
        f32::from(code as i8)
    }
}

/// One value (already divided by its block scale) -> its code in `fmt`.
pub fn f32_to_code(x: f32, fmt: WireFormat) -> u8 {
    match fmt.fp8() {
        Some(f) => f32_to_fp8(x, f),
        None => f32_to_int8(x),
    }
}

/// A code of `fmt` -> its exact value (before the block scale).
pub fn code_to_f32(code: u8, fmt: WireFormat) -> f32 {
    match fmt.fp8() {
        Some(f) => fp8_to_f32(code, f),
        None => int8_to_f32(code),
    }
}

/// fp16 bits -> f32, exact (NaN payload kept, quiet bit set).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let frac = (h & 0x3FF) as u32;
    let mag = if exp == 0 {
        // Zero or subnormal: frac * 2^-24, exact in f32.
        (frac as f32 * pow2(-24)).to_bits()
    } else if exp == 0x1F {
        if frac == 0 {
            0x7F80_0000
        } else {
            0x7FC0_0000 | (frac << 13)
        }
    } else {
        ((exp + 127 - 15) << 23) | (frac << 13)
    };
    f32::from_bits(sign | mag)
}

/// f32 -> fp16 bits, round to nearest even, overflow to ±Inf; NaN stays a
/// quiet NaN with the top payload bits (as F16C's `vcvtps2ph` does).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7FFF_FFFF;
    let mag = if abs > 0x7F80_0000 {
        0x7E00 | ((abs >> 13) & 0x3FF) as u16
    } else if abs == 0x7F80_0000 {
        0x7C00
    } else {
        round_magnitude(abs, 10, 15).min(0x7C00) as u16
    };
    sign | mag
}

/// bf16 bits -> f32, exact.
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 -> bf16 bits, round to nearest even (overflow to ±Inf); NaN stays a
/// quiet NaN with the top payload bits.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}
