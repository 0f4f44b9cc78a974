//! Block-scaled 8-bit codec for compressed allreduce.
//!
//! Values are cut into blocks of [`BLOCK`] = 32; each block gets one scale
//! and each value one code byte in a [`WireFormat`]: OCP FP8 E4M3 or E5M2
//! with a power-of-two (E8M0 byte) scale, or a symmetric INT8 with a bf16
//! scale.
//!
//! # Numerics
//! * FP8 scale: the smallest `2^e` such that `max|finite x| / 2^e <=
//!   max_finite` (448 for E4M3, 57344 for E5M2; exponent rounded up, so
//!   nothing saturates), clamped to `e in -127..=127`; stored as `e + 127`.
//!   A block with no nonzero finite value gets 127 (scale 1.0). 0xFF is
//!   never written; on decode it means "NaN scale" and makes the whole block
//!   NaN (OCP MX semantics).
//! * INT8 scale: `max|finite x| / 127` (f32 division) rounded up to bf16,
//!   at least 2^-126; 1.0 for a block with no nonzero finite value. Inf/NaN
//!   scale bits are never written and decode as a NaN block.
//! * Encode: `x * (1 / scale)` (exact for FP8's powers of two, one f32
//!   rounding for INT8) rounded to nearest, ties to even, saturating at max
//!   finite: to the nearest FP8 value, or to the nearest integer in
//!   `-127..=127` (INT8, stored as its two's-complement byte). NaN/±Inf
//!   elements are excluded from the scale and encoded as NaN (E4M3: 0x7F,
//!   INT8: 0x80) or the same Inf / a NaN (E5M2), so they only affect
//!   themselves.
//! * Decode: `code * scale` in f32 (one rounding, only outside the f32
//!   normal range; INT8 decodes exactly); f16/bf16 outputs are narrowed with
//!   round-to-nearest-even. NaN outputs are the canonical quiet NaN
//!   `0x7FC00000` (sign not kept).
//!   Inherent limit: a finite input within one code step of `f32::MAX` may
//!   round up past it and decode as ±Inf.
//!
//! # Wire layout
//! For `n` values: `ceil(n / 32)` scales (block order; 1 byte each for
//! FP8, 2 little-endian bytes for INT8), immediately followed by `n` code
//! bytes (value order): [`encoded_len`]. The last block holds `n % 32`
//! values when that is nonzero. Keeping scales apart lets the SIMD paths
//! read 32 codes as one aligned-size load. The format is not
//! self-describing: both ends must agree on `n` and the [`WireFormat`].
//!
//! Every entry point checks all lengths and returns [`CodecError`] instead
//! of panicking, since wire bytes come from the network.

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // AVX2/F16C intrinsics behind runtime feature detection
mod avx2;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // AVX-512F intrinsics behind runtime feature detection
mod avx512;
#[cfg(feature = "tools")] // `airamp bench codec` and `airamp calibrate`
pub mod bench;
mod format;
mod scalar;

// For the GPU reference tests, which mirror the scale arithmetic.
#[cfg(test)]
pub(crate) use format::block_scale;
pub use format::{
    bf16_to_f32, code_to_f32, e8m0_to_f32, f16_to_f32, f32_to_bf16, f32_to_code, f32_to_f16,
    f32_to_fp8, f32_to_int8, fp8_to_f32, int8_scale_to_f32, int8_to_f32, Fp8, WireFormat, E8M0_NAN,
    E8M0_ZERO_BLOCK, INT8_NAN, INT8_ZERO_BLOCK_SCALE,
};

use std::fmt;

/// A 16-bit float type of the exact sums' SIMD folds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfType {
    Bf16,
    F16,
}

/// The exact f16/bf16 sum's last fold, vectorized where the CPU allows:
/// `b[i] = half(x + y)` with `x = b[i]` and `y = a[i]` widened to f32, so
/// `b`'s NaN wins as in the scalar fold's `x + a`, and rounded as
/// [`f32_to_bf16`] / [`f32_to_f16`]. Returns how many leading values it
/// did (a multiple of 8; 0 without AVX2 and F16C): the caller folds the
/// rest.
pub fn half_sum_pair(half: HalfType, a: &[u8], b: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    return avx2::half_sum_pair(half, a, b);
    #[cfg(not(target_arch = "x86_64"))]
    return 0;
}

/// As [`half_sum_pair`] into a third buffer: `out[i] = half(x + y)` with
/// `x = later[i]` and `y = earlier[i]` (`later`'s NaN wins), so both
/// members of a pair can fold in member order without overwriting either
/// input.
pub fn half_sum_pair_into(half: HalfType, earlier: &[u8], later: &[u8], out: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // The host path's pair fold: AVX-512 where it can, AVX2 for the rest.
        let wide = match half {
            HalfType::Bf16 => avx512::bf16_sum_pair_into(earlier, later, out),
            HalfType::F16 => 0,
        };
        let (e, l, o) = (
            &earlier[2 * wide..],
            &later[2 * wide..],
            &mut out[2 * wide..],
        );
        wide + avx2::half_sum_pair_into(half, e, l, o)
    }
    #[cfg(not(target_arch = "x86_64"))]
    return 0;
}

/// As [`half_sum_pair`] with the earlier members' sum already in f32:
/// `b[i] = half(half(b[i]) + acc[i])`.
pub fn half_sum_acc(half: HalfType, acc: &[f32], b: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    return avx2::half_sum_acc(half, acc, b);
    #[cfg(not(target_arch = "x86_64"))]
    return 0;
}

/// Values per scale block.
pub const BLOCK: usize = 32;

/// Number of scale blocks for `n` values.
pub const fn num_blocks(n: usize) -> usize {
    n.div_ceil(BLOCK)
}

/// Bytes of the scales of `n` values.
pub const fn scales_len(format: WireFormat, n: usize) -> usize {
    num_blocks(n) * format.scale_bytes()
}

/// Wire size in bytes for `n` values: scales then codes.
pub const fn encoded_len(format: WireFormat, n: usize) -> usize {
    scales_len(format, n) + n
}

/// Input to encode. fp16/bf16 are raw IEEE bit patterns (no `half` dep).
#[derive(Clone, Copy, Debug)]
pub enum Src<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    Bf16(&'a [u16]),
}

impl Src<'_> {
    pub fn len(&self) -> usize {
        match self {
            Src::F32(v) => v.len(),
            Src::F16(v) | Src::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sub-slice `from..`; used to hand the tail block to the scalar path.
    fn tail(self, from: usize) -> Self {
        match self {
            Src::F32(v) => Src::F32(&v[from..]),
            Src::F16(v) => Src::F16(&v[from..]),
            Src::Bf16(v) => Src::Bf16(&v[from..]),
        }
    }
}

/// Output of [`Codec::decode_into`].
#[derive(Debug)]
pub enum Dst<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [u16]),
    Bf16(&'a mut [u16]),
}

impl Dst<'_> {
    pub fn len(&self) -> usize {
        match self {
            Dst::F32(v) => v.len(),
            Dst::F16(v) | Dst::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tail(&mut self, from: usize) -> Dst<'_> {
        match self {
            Dst::F32(v) => Dst::F32(&mut v[from..]),
            Dst::F16(v) => Dst::F16(&mut v[from..]),
            Dst::Bf16(v) => Dst::Bf16(&mut v[from..]),
        }
    }
}

/// Implementation choice; all backends are bit-for-bit identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable reference.
    Scalar,
    /// x86-64 AVX2 + F16C, chosen at run time.
    Avx2,
}

impl Backend {
    /// Fastest backend this CPU supports.
    pub fn detect() -> Backend {
        if Backend::Avx2.is_available() {
            Backend::Avx2
        } else {
            Backend::Scalar
        }
    }

    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 => false,
        }
    }
}

/// Length mismatches (the only failure: any byte content decodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// `buffer` has `actual` elements where `expected` were required.
    Length {
        buffer: &'static str,
        expected: usize,
        actual: usize,
    },
    /// The requested backend is not supported on this CPU.
    BackendUnavailable(Backend),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Length {
                buffer,
                expected,
                actual,
            } => write!(
                f,
                "codec: {buffer} has length {actual}, expected {expected}"
            ),
            CodecError::BackendUnavailable(b) => write!(f, "codec: backend {b:?} unavailable"),
        }
    }
}

impl std::error::Error for CodecError {}

fn check(buffer: &'static str, expected: usize, actual: usize) -> Result<(), CodecError> {
    if expected == actual {
        Ok(())
    } else {
        Err(CodecError::Length {
            buffer,
            expected,
            actual,
        })
    }
}

/// Split a wire buffer for `n` values into `(scales, codes)`.
pub fn split_wire(format: WireFormat, wire: &[u8], n: usize) -> Result<(&[u8], &[u8]), CodecError> {
    check("wire", encoded_len(format, n), wire.len())?;
    Ok(wire.split_at(scales_len(format, n)))
}

/// Mutable form of [`split_wire`].
pub fn split_wire_mut(
    format: WireFormat,
    wire: &mut [u8],
    n: usize,
) -> Result<(&mut [u8], &mut [u8]), CodecError> {
    check("wire", encoded_len(format, n), wire.len())?;
    Ok(wire.split_at_mut(scales_len(format, n)))
}

/// A format plus the backend that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    format: WireFormat,
    backend: Backend,
}

impl Codec {
    /// Codec on the fastest available backend.
    pub fn new(format: WireFormat) -> Codec {
        Codec {
            format,
            backend: Backend::detect(),
        }
    }

    /// Codec on a specific backend (tests, benchmarks).
    pub fn with_backend(format: WireFormat, backend: Backend) -> Result<Codec, CodecError> {
        if backend.is_available() {
            Ok(Codec { format, backend })
        } else {
            Err(CodecError::BackendUnavailable(backend))
        }
    }

    pub fn format(&self) -> WireFormat {
        self.format
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Encode `src` into `scales` ([`scales_len`] bytes) and `codes` (`n`).
    pub fn encode(
        &self,
        src: Src<'_>,
        scales: &mut [u8],
        codes: &mut [u8],
    ) -> Result<(), CodecError> {
        let n = src.len();
        check("codes", n, codes.len())?;
        check("scales", scales_len(self.format, n), scales.len())?;
        let done = self.simd_encode(src, scales, codes);
        scalar::encode(
            self.format,
            src.tail(done * BLOCK),
            &mut scales[done * self.format.scale_bytes()..],
            &mut codes[done * BLOCK..],
        );
        Ok(())
    }

    /// `acc[i] += decode(i)` for the `acc.len()` values in `scales`/`codes`.
    pub fn decode_accumulate(
        &self,
        scales: &[u8],
        codes: &[u8],
        acc: &mut [f32],
    ) -> Result<(), CodecError> {
        let n = acc.len();
        check("codes", n, codes.len())?;
        check("scales", scales_len(self.format, n), scales.len())?;
        let done = self.simd_decode_accumulate(scales, codes, acc);
        scalar::decode_accumulate(
            self.format,
            &scales[done * self.format.scale_bytes()..],
            &codes[done * BLOCK..],
            &mut acc[done * BLOCK..],
        );
        Ok(())
    }

    /// `dst[i] = decode(i)`, narrowed to the output type with RNE.
    pub fn decode_into(
        &self,
        scales: &[u8],
        codes: &[u8],
        mut dst: Dst<'_>,
    ) -> Result<(), CodecError> {
        let n = dst.len();
        check("codes", n, codes.len())?;
        check("scales", scales_len(self.format, n), scales.len())?;
        let done = self.simd_decode_into(scales, codes, &mut dst);
        scalar::decode_into(
            self.format,
            &scales[done * self.format.scale_bytes()..],
            &codes[done * BLOCK..],
            dst.tail(done * BLOCK),
        );
        Ok(())
    }

    /// [`Codec::encode`] into one wire buffer of [`encoded_len`] bytes.
    pub fn encode_wire(&self, src: Src<'_>, wire: &mut [u8]) -> Result<(), CodecError> {
        let (scales, codes) = split_wire_mut(self.format, wire, src.len())?;
        self.encode(src, scales, codes)
    }

    /// [`Codec::decode_accumulate`] from one wire buffer for `acc.len()` values.
    pub fn decode_accumulate_wire(&self, wire: &[u8], acc: &mut [f32]) -> Result<(), CodecError> {
        let (scales, codes) = split_wire(self.format, wire, acc.len())?;
        self.decode_accumulate(scales, codes, acc)
    }

    /// [`Codec::decode_into`] from one wire buffer for `dst.len()` values.
    pub fn decode_into_wire(&self, wire: &[u8], dst: Dst<'_>) -> Result<(), CodecError> {
        let (scales, codes) = split_wire(self.format, wire, dst.len())?;
        self.decode_into(scales, codes, dst)
    }

    // SIMD hooks: process a prefix of whole blocks, return how many blocks
    // were done; the scalar path finishes the rest (tail block included).

    fn simd_encode(&self, src: Src<'_>, scales: &mut [u8], codes: &mut [u8]) -> usize {
        match self.backend {
            Backend::Scalar => 0,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => avx2::encode(self.format, src, scales, codes),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 => 0,
        }
    }

    fn simd_decode_accumulate(&self, scales: &[u8], codes: &[u8], acc: &mut [f32]) -> usize {
        match self.backend {
            Backend::Scalar => 0,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => avx2::decode_accumulate(self.format, scales, codes, acc),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 => 0,
        }
    }

    fn simd_decode_into(&self, scales: &[u8], codes: &[u8], dst: &mut Dst<'_>) -> usize {
        match self.backend {
            Backend::Scalar => 0,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => avx2::decode_into(self.format, scales, codes, dst),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 => 0,
        }
    }
}

#[cfg(test)]
mod tests;
