// Block-scaled 8-bit codec kernels (FP8 E4M3/E5M2 and INT8): a bit-exact
// port of the CPU codec (src/codec/format.rs, src/codec/scalar.rs) and of
// the compressed fold of src/collnet/algo.rs (Reducer). src/gpu/reference.rs
// is the CPU definition these kernels are tested against (`airamp gpu
// selftest`).
//
// Wire layout of one message of n values: ceil(n/32) block scales, then n
// code bytes. FP8: one E8M0 byte per scale. INT8: two bytes per scale (the
// bf16 bits, little-endian), so the codes start at 2 * ceil(n/32); a wire
// may start at any address, so scales are read and written bytewise. Every
// pointer is a plain address: device memory, or mapped pinned host memory
// (unified addressing), so the same kernel writes compressed bytes
// straight into host staging over PCIe.
//
// Work split: a logical warp of 32 lanes handles a tile of TILE_BLOCKS
// consecutive blocks of 32 values; lane l holds value l of every block, so
// element loads and code stores are coalesced whatever the alignment, and a
// block's max is one warp reduction. Lane k computes the scale of block k
// and hands it to the others. A grid-stride loop walks the tiles.
//
// Numerics: exact adds and multiplies with one rounding (fadd_rn/fmul_rn,
// --fmad=false), denormals kept; INT8's two f32 divisions are done exactly
// in integers (int8_scale_for_max, int8_inverse). NaN signs follow the CPU
// build (x86 SSE, see add_nan_first): they only show in the sign bit of FP8
// NaN codes (INT8 has one NaN code).
#include "airamp_gpu.h"

namespace airamp {

// Blocks per tile (even, 2..=32); the host passes the same value.
#ifndef AIRAMP_TILE_BLOCKS
#define AIRAMP_TILE_BLOCKS 16
#endif

constexpr u32 BLOCK = 32;
constexpr u32 TILE_BLOCKS = AIRAMP_TILE_BLOCKS;
static_assert(TILE_BLOCKS % 2 == 0 && TILE_BLOCKS >= 2 && TILE_BLOCKS <= 32, "tile size");
constexpr u32 THREADS = 256;
constexpr u32 WARPS_PER_CTA = THREADS / 32;
constexpr u32 CANONICAL_NAN = 0x7FC00000u;
// x86's "default NaN", produced by Inf - Inf.
constexpr u32 X86_DEFAULT_NAN = 0xFFC00000u;
constexpr u32 QUIET_BIT = 0x00400000u;
constexpr u32 E8M0_NAN = 0xFFu;
constexpr u32 E8M0_ZERO_BLOCK = 127u;

// The wire formats. FP8: E8M0 scale byte, minifloat codes. INT8 (IS_INT8):
// bf16 scale in SCALE_BYTES = 2 bytes, symmetric integer codes.
struct E4M3 {
    static constexpr bool IS_INT8 = false;
    static constexpr u32 SCALE_BYTES = 1;
    static constexpr u32 MAN = 3, BIAS = 7, MAX_CODE = 0x7E, NAN_CODE = 0x7F, INF_CODE = 0x7F,
                         FIRST_SPECIAL = 0x7F;
    static constexpr int EMAX = 8;
    static constexpr bool HAS_INF = false;
};
struct E5M2 {
    static constexpr bool IS_INT8 = false;
    static constexpr u32 SCALE_BYTES = 1;
    static constexpr u32 MAN = 2, BIAS = 15, MAX_CODE = 0x7B, NAN_CODE = 0x7E, INF_CODE = 0x7C,
                         FIRST_SPECIAL = 0x7C;
    static constexpr int EMAX = 15;
    static constexpr bool HAS_INF = true;
};
struct Int8 {
    static constexpr bool IS_INT8 = true;
    static constexpr u32 SCALE_BYTES = 2;
};

AIRAMP_DEV u32 umax(u32 a, u32 b) { return a > b ? a : b; }
AIRAMP_DEV bool is_nan_bits(u32 b) { return (b & 0x7FFFFFFFu) > 0x7F800000u; }
AIRAMP_DEV bool is_finite_bits(u32 b) { return (b & 0x7FFFFFFFu) < 0x7F800000u; }

// Exact 2^k for k in -149..=127 (format.rs pow2).
AIRAMP_DEV u32 pow2_bits(int k) { return k >= -126 ? (u32)(k + 127) << 23 : 1u << (k + 149); }

AIRAMP_DEV float e8m0_to_f32(u32 s) { return as_f(s == E8M0_NAN ? CANONICAL_NAN : pow2_bits((int)s - 127)); }

// Only for scales the encoder chose (never 0xFF).
AIRAMP_DEV float e8m0_inverse(u32 s) { return as_f(pow2_bits(127 - (int)s)); }

// format.rs scale_for_max: smallest 2^e with max / 2^e <= max_finite.
template <class F> AIRAMP_DEV u32 scale_for_max(u32 max_abs_bits) {
    const int biased = (int)(max_abs_bits >> 23);
    const int above_1_75 = (max_abs_bits & 0x7FFFFFu) > 0x600000u ? 1 : 0;
    int e = (biased - 127) - F::EMAX + above_1_75;
    e = e < -127 ? -127 : (e > 127 ? 127 : e);
    const u32 s = (u32)(e + 127);
    return max_abs_bits == 0 ? E8M0_ZERO_BLOCK : (biased == 0 ? 0u : s);
}

// format.rs round_magnitude: nearest minifloat with M mantissa bits and
// exponent bias BIAS, ties to even, unbounded above.
template <u32 M, u32 BIAS> AIRAMP_DEV u32 round_magnitude(u32 a) {
    constexpr u32 MIN_NORMAL = (127 - BIAS + 1) << 23;
    constexpr u32 MAGIC = ((127 - BIAS) + (23 - M) + 1) << 23;
    constexpr u32 SHIFT = 23 - M;
    // Subnormal target: the FPU rounds a + magic to the target's step.
    const u32 sub = as_u(fadd_rn(as_f(a), as_f(MAGIC))) - MAGIC;
    // Normal target: integer rounding; a mantissa carry bumps the exponent.
    const u32 r = a + ((1u << (SHIFT - 1)) - 1) + ((a >> SHIFT) & 1);
    const u32 normal = (r >> SHIFT) - ((127 - BIAS) << M);
    return a < MIN_NORMAL ? sub : normal;
}

// Code for a non-finite value: NaN -> NaN code, Inf -> Inf code (E4M3: NaN).
template <class F> AIRAMP_DEV u32 special_code(u32 bits) {
    const u32 sign = (bits >> 24) & 0x80u;
    return sign | ((bits & 0x7FFFFFFFu) == 0x7F800000u ? F::INF_CODE : F::NAN_CODE);
}

// format.rs f32_to_fp8.
template <class F> AIRAMP_DEV u32 f32_to_fp8(u32 bits) {
    const u32 a = bits & 0x7FFFFFFFu;
    u32 mag = round_magnitude<F::MAN, F::BIAS>(a);
    mag = mag < F::MAX_CODE ? mag : F::MAX_CODE;
    return a >= 0x7F800000u ? special_code<F>(bits) : (((bits >> 24) & 0x80u) | mag);
}

// format.rs fp8_to_f32 (exact): the code's bits placed in an f32 and
// rebiased by an exact power-of-two product.
template <class F> AIRAMP_DEV u32 fp8_to_f32_bits(u32 code) {
    constexpr u32 REBIAS = (127 - F::BIAS + 127) << 23;
    const u32 mag = code & 0x7Fu;
    const u32 sign = (code & 0x80u) << 24;
    const u32 v = sign | as_u(fmul_rn(as_f(mag << (23 - F::MAN)), as_f(REBIAS)));
    if (mag >= F::FIRST_SPECIAL) {
        return (F::HAS_INF && mag == 0x7Cu) ? (sign | 0x7F800000u) : CANONICAL_NAN;
    }
    return v;
}

// The encoder's x * (1 / scale): FP8, exact for finite x (or one rounding
// far below the FP8 range); INT8, one rounding. A non-finite x keeps its
// class and sign, as on the CPU.
AIRAMP_DEV u32 scaled(u32 x, float inv) { return is_finite_bits(x) ? as_u(fmul_rn(as_f(x), inv)) : x; }

// p + q with x86 SSE NaN rules, which the CPU codec's compiled loops follow:
// the first NaN operand wins (quieted); Inf - Inf gives the default NaN.
// Only the sign of a NaN matters downstream (the FP8 NaN code keeps it).
AIRAMP_DEV u32 add_nan_first(u32 p, u32 q) {
    const u32 r = as_u(fadd_rn(as_f(p), as_f(q)));
    if (is_nan_bits(p)) {
        return p | QUIET_BIT;
    }
    if (is_nan_bits(q)) {
        return q | QUIET_BIT;
    }
    return is_nan_bits(r) ? X86_DEFAULT_NAN : r;
}

// ---------- INT8 (format.rs int8_*) ----------

constexpr u32 INT8_NAN = 0x80u;
// bf16 1.0: the scale of a block with no nonzero finite value.
constexpr u32 INT8_ZERO_BLOCK_SCALE = 0x3F80u;

// format.rs int8_scale_for_max: the f32 quotient max / 127 (round to
// nearest even), at least 2^-126, rounded up to bf16. The division is done
// in integers, exactly: max = m * 2^(e-150) with m's 24 bits; (m << 7) / 127
// (or (m << 6) / 127 for m >= 127 << 17) is the quotient's 24-bit
// significand, and 127 is odd, so a remainder of 64..126 rounds up and there
// is never a tie. A quotient below 2^-126 (biased exponent < 1, also every
// subnormal max) is 2^-126. src/gpu/reference.rs mirrors this and checks it
// against the codec.
AIRAMP_DEV u32 int8_scale_for_max(u32 max_abs_bits) {
    const u32 e = max_abs_bits >> 23;
    const u32 m = (max_abs_bits & 0x7FFFFFu) | 0x800000u;
    const bool small = m < (127u << 17);
    const u32 num = small ? m << 7 : m << 6;
    u32 q = num / 127u;
    q += num - q * 127u >= 64u ? 1u : 0u;
    const int biased = (int)e - (small ? 7 : 6);
    // q's leading bit (2^23, or 2^24 after a carry) adds into the exponent.
    const u32 ideal = biased >= 1 ? ((u32)(biased - 1) << 23) + q : 0x00800000u;
    u32 s = ideal >> 16;
    s += (s << 16) != ideal ? 1u : 0u;
    return max_abs_bits == 0 ? INT8_ZERO_BLOCK_SCALE : s;
}

// format.rs block_scale's multiplier for INT8: 1 / scale (f32 division,
// round to nearest even), for scales the encoder chose (normal bf16, below
// 2^122). scale = mb * 2^(es-134) with mb = 128..255, so 1 / scale =
// (2^31 / mb) * 2^(103-es): 2^31 / mb has 24 significant bits (2^24 for
// mb = 128, which the exponent absorbs) and is never a tie.
AIRAMP_DEV float int8_inverse(u32 s) {
    const u32 es = (s >> 7) & 0xFFu;
    const u32 mb = (s & 0x7Fu) | 0x80u;
    u32 q = 0x80000000u / mb;
    q += 2u * (0x80000000u - q * mb) > mb ? 1u : 0u;
    return as_f(((252u - es) << 23) + q);
}

// format.rs int8_scale_to_f32: Inf/NaN scale bits make a NaN block.
AIRAMP_DEV float int8_scale_to_f32(u32 s) { return as_f((s & 0x7F80u) == 0x7F80u ? CANONICAL_NAN : s << 16); }

// format.rs f32_to_int8: round to nearest even, saturate at +-127; NaN and
// +-Inf -> -128. Adding 1.5 * 2^23 rounds |v| <= 127 to an integer (the
// sum's ulp is 1), which then sits in the low mantissa bits as two's
// complement.
AIRAMP_DEV u32 f32_to_int8(u32 y) {
    float v = as_f(y);
    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
    const u32 r = as_u(fadd_rn(v, 12582912.0f)) - 0x4B400000u;
    return is_finite_bits(y) ? (r & 0xFFu) : INT8_NAN;
}

// format.rs int8_to_f32 (exact); -128 is the canonical NaN.
AIRAMP_DEV u32 int8_to_f32_bits(u32 code) {
    return code == INT8_NAN ? CANONICAL_NAN : as_u((float)((int)code - (code >= 128u ? 256 : 0)));
}

// ---------- per format ----------

// Block b's scale on the wire (SCALE_BYTES little-endian bytes at any
// alignment).
template <class F> AIRAMP_DEV u32 load_scale(const u8* scales, u64 b) {
    if constexpr (F::SCALE_BYTES == 1) {
        return scales[b];
    } else {
        return (u32)scales[2 * b] | ((u32)scales[2 * b + 1] << 8);
    }
}
template <class F> AIRAMP_DEV void store_scale(u8* scales, u64 b, u32 s) {
    if constexpr (F::SCALE_BYTES == 1) {
        scales[b] = (u8)s;
    } else {
        scales[2 * b] = (u8)s;
        scales[2 * b + 1] = (u8)(s >> 8);
    }
}
// Where the codes of a wire of nb blocks start.
template <class F> AIRAMP_DEV u64 codes_offset(u64 nb) { return nb * F::SCALE_BYTES; }

// A block's scale from its largest finite magnitude (format.rs block_scale).
template <class F> AIRAMP_DEV u32 block_scale(u32 max_abs_bits) {
    if constexpr (F::IS_INT8) {
        return int8_scale_for_max(max_abs_bits);
    } else {
        return scale_for_max<F>(max_abs_bits);
    }
}
// The multiplier that divides by a scale the encoder chose.
template <class F> AIRAMP_DEV float scale_inverse(u32 s) {
    if constexpr (F::IS_INT8) {
        return int8_inverse(s);
    } else {
        return e8m0_inverse(s);
    }
}
// A scale's value on decode (format.rs scale_value).
template <class F> AIRAMP_DEV float scale_value(u32 s) {
    if constexpr (F::IS_INT8) {
        return int8_scale_to_f32(s);
    } else {
        return e8m0_to_f32(s);
    }
}

// acc + x in the fold. FP8 keeps the CPU's NaN operand order
// (add_nan_first: the NaN's sign reaches the FP8 NaN code); INT8 encodes
// every NaN as -128 and decodes it as the canonical NaN, so a plain add.
template <class F> AIRAMP_DEV u32 fold_add(u32 p, u32 q) {
    if constexpr (F::IS_INT8) {
        return as_u(fadd_rn(as_f(p), as_f(q)));
    } else {
        return add_nan_first(p, q);
    }
}

// A code's exact value before the scale (format.rs code_to_f32).
template <class F> AIRAMP_DEV u32 code_bits(u32 code) {
    if constexpr (F::IS_INT8) {
        return int8_to_f32_bits(code);
    } else {
        return fp8_to_f32_bits<F>(code);
    }
}

// scalar.rs element: code * scale, one rounding; every NaN canonical.
template <class F> AIRAMP_DEV u32 decode_value(u32 code, float scale) {
    const u32 b = as_u(fmul_rn(as_f(code_bits<F>(code)), scale));
    return is_nan_bits(b) ? CANONICAL_NAN : b;
}

// ---------- element types ----------

AIRAMP_DEV u32 f16_to_f32_bits(u32 h) {
    const u32 sign = (h & 0x8000u) << 16;
    const u32 exp = (h >> 10) & 0x1Fu;
    const u32 frac = h & 0x3FFu;
    u32 mag = ((exp + 127 - 15) << 23) | (frac << 13);
    if (exp == 0) {
        mag = as_u(fmul_rn(u2f_rn(frac), as_f(0x33800000u))); // frac * 2^-24, exact
    } else if (exp == 0x1F) {
        mag = frac == 0 ? 0x7F800000u : (0x7FC00000u | (frac << 13));
    }
    return sign | mag;
}

AIRAMP_DEV u32 f32_to_f16_bits(u32 bits) {
    const u32 sign = (bits >> 16) & 0x8000u;
    const u32 a = bits & 0x7FFFFFFFu;
    u32 mag = round_magnitude<10, 15>(a);
    mag = mag < 0x7C00u ? mag : 0x7C00u;
    if (a >= 0x7F800000u) {
        mag = a == 0x7F800000u ? 0x7C00u : (0x7E00u | ((a >> 13) & 0x3FFu));
    }
    return sign | mag;
}

AIRAMP_DEV u32 f32_to_bf16_bits(u32 bits) {
    if (is_nan_bits(bits)) {
        return ((bits >> 16) | 0x40u) & 0xFFFFu;
    }
    return (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
}

// Each element type: storage, exact widening to f32 bits, RNE narrowing,
// and the NaN operand order of the CPU fold of the owner's own elements
// (collnet/algo.rs: the f32 loop keeps a NaN accumulator, the f16/bf16
// loop a NaN element).
struct ElemF32 {
    typedef u32 raw;
    static constexpr bool ACC_NAN_FIRST = true;
    static AIRAMP_INL u32 widen(raw r) { return r; }
    static AIRAMP_INL raw narrow(u32 f) { return f; }
};
struct ElemF16 {
    typedef u16 raw;
    static constexpr bool ACC_NAN_FIRST = false;
    static AIRAMP_INL u32 widen(raw r) { return f16_to_f32_bits(r); }
    static AIRAMP_INL raw narrow(u32 f) { return (raw)f32_to_f16_bits(f); }
};
struct ElemBf16 {
    typedef u16 raw;
    static constexpr bool ACC_NAN_FIRST = false;
    static AIRAMP_INL u32 widen(raw r) { return (u32)r << 16; }
    static AIRAMP_INL raw narrow(u32 f) { return (raw)f32_to_bf16_bits(f); }
};

// ---------- one tile ----------

// Where a logical warp is and what its tile covers.
struct Tile {
    u32 lane;
    u64 b0;  // first block of the tile
    u64 nb;  // blocks in the message
    u64 n;   // values in the message
    AIRAMP_INL u64 index(u32 k) const { return (b0 + k) * BLOCK + lane; }
    template <bool FULL> AIRAMP_INL bool has(u32 k) const { return FULL || index(k) < n; }
    // Whether lane k's block exists (lanes >= TILE_BLOCKS have none).
    template <bool FULL> AIRAMP_INL bool lane_has_block() const {
        return lane < TILE_BLOCKS && (FULL || b0 + lane < nb);
    }
};

// FP8 codes of scaled values y (f32 bits).
template <class F> AIRAMP_DEV void fp8_codes(const u32 (&y)[TILE_BLOCKS], u32 (&code)[TILE_BLOCKS]) {
#if defined(AIRAMP_HAS_CVT_FP8) && !defined(AIRAMP_SOFT_FP8)
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; k += 2) {
        const u32 pair = F::BIAS == E4M3::BIAS ? cvt_e4m3x2(as_f(y[k + 1]), as_f(y[k]))
                                               : cvt_e5m2x2(as_f(y[k + 1]), as_f(y[k]));
        // The sign comes from the value itself, so a negative value that
        // rounds to zero is -0 (0x80) however the hardware signs it.
        code[k] = is_finite_bits(y[k]) ? ((pair & 0x7Fu) | ((y[k] >> 24) & 0x80u)) : special_code<F>(y[k]);
        code[k + 1] = is_finite_bits(y[k + 1]) ? (((pair >> 8) & 0x7Fu) | ((y[k + 1] >> 24) & 0x80u))
                                               : special_code<F>(y[k + 1]);
    }
#else
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        code[k] = f32_to_fp8<F>(y[k]);
    }
#endif
}

// Quantizes x[k] (f32 bits, value `lane` of block k) like scalar.rs
// encode_block; returns the codes and, in lane k, block k's scale (its wire
// value). FP8 on sm_89+: finite values go through the hardware conversion
// (both round to nearest even and saturate: bit-identical, the selftest
// checks it) unless AIRAMP_SOFT_FP8 is defined. INT8 has one path.
template <class F>
AIRAMP_DEV u32 quantize(const Tile& t, const u32 (&x)[TILE_BLOCKS], u32 (&code)[TILE_BLOCKS]) {
    u32 my_max = 0;
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        const u32 a = x[k] & 0x7FFFFFFFu;
        const u32 m = warp_max(a <= 0x7F7FFFFFu ? a : 0u);
        my_max = t.lane == k ? m : my_max;
    }
    const u32 my_scale = block_scale<F>(my_max);
    const u32 my_inv = as_u(scale_inverse<F>(my_scale));
    u32 y[TILE_BLOCKS];
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        y[k] = scaled(x[k], as_f(warp_bcast(my_inv, k)));
    }
    if constexpr (F::IS_INT8) {
#pragma unroll
        for (u32 k = 0; k < TILE_BLOCKS; ++k) {
            code[k] = f32_to_int8(y[k]);
        }
    } else {
        fp8_codes<F>(y, code);
    }
    return my_scale;
}

template <class F, class E, bool FULL>
AIRAMP_DEV void encode_tile(const Tile& t, const typename E::raw* __restrict__ src, u8* __restrict__ scales,
                            u8* __restrict__ codes) {
    u32 x[TILE_BLOCKS];
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        x[k] = t.has<FULL>(k) ? E::widen(src[t.index(k)]) : 0u;
    }
    u32 code[TILE_BLOCKS];
    const u32 my_scale = quantize<F>(t, x, code);
    if (t.lane_has_block<FULL>()) {
        store_scale<F>(scales, t.b0 + t.lane, my_scale);
    }
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        if (t.has<FULL>(k)) {
            codes[t.index(k)] = (u8)code[k];
        }
    }
}

template <class F, class E, bool FULL>
AIRAMP_DEV void decode_tile(const Tile& t, const u8* __restrict__ scales, const u8* __restrict__ codes,
                            typename E::raw* __restrict__ dst) {
    u32 c[TILE_BLOCKS];
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        c[k] = t.has<FULL>(k) ? codes[t.index(k)] : 0u;
    }
    const u32 my_scale = t.lane_has_block<FULL>() ? as_u(scale_value<F>(load_scale<F>(scales, t.b0 + t.lane))) : 0u;
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        const u32 v = decode_value<F>(c[k], as_f(warp_bcast(my_scale, k)));
        if (t.has<FULL>(k)) {
            dst[t.index(k)] = E::narrow(v);
        }
    }
}

// The owner's fold of one shard (collnet/algo.rs Reducer::fold + finish):
// acc = 0; acc += x_m for m = 0..members in order, where x_m is the owner's
// own element widened (m == own) or member m's wire decoded; then acc is
// encoded once into the output wire and decoded into dst, exactly as every
// receiver will decode it.
template <class F, class E, bool FULL>
AIRAMP_DEV void reduce_tile(const Tile& t, u32 members, u32 own, const typename E::raw* __restrict__ own_src,
                            const u64* __restrict__ wires, u8* __restrict__ out_scales,
                            u8* __restrict__ out_codes, typename E::raw* __restrict__ dst) {
    u32 acc[TILE_BLOCKS];
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        acc[k] = 0u;
    }
    for (u32 m = 0; m < members; ++m) {
        const bool mine = m == own;
        const u8* scales = (const u8*)wires[m];
        const u8* codes = scales + codes_offset<F>(t.nb);
        u32 c[TILE_BLOCKS];
        u32 native[TILE_BLOCKS];
#pragma unroll
        for (u32 k = 0; k < TILE_BLOCKS; ++k) {
            c[k] = !mine && t.has<FULL>(k) ? codes[t.index(k)] : 0u;
            native[k] = mine && t.has<FULL>(k) ? E::widen(own_src[t.index(k)]) : 0u;
        }
        const u32 my_scale =
            !mine && t.lane_has_block<FULL>() ? as_u(scale_value<F>(load_scale<F>(scales, t.b0 + t.lane))) : 0u;
        // NaN operand order of the CPU loops: scalar.rs decode_accumulate
        // puts the decoded value first; the own-element loops see ElemX.
        const bool acc_first = mine && E::ACC_NAN_FIRST;
#pragma unroll
        for (u32 k = 0; k < TILE_BLOCKS; ++k) {
            const u32 x = mine ? native[k] : decode_value<F>(c[k], as_f(warp_bcast(my_scale, k)));
            acc[k] = acc_first ? fold_add<F>(acc[k], x) : fold_add<F>(x, acc[k]);
        }
    }
    u32 code[TILE_BLOCKS];
    const u32 my_scale = quantize<F>(t, acc, code);
    if (t.lane_has_block<FULL>()) {
        store_scale<F>(out_scales, t.b0 + t.lane, my_scale);
    }
    const u32 my_scale_f = as_u(scale_value<F>(my_scale));
#pragma unroll
    for (u32 k = 0; k < TILE_BLOCKS; ++k) {
        // Every lane takes part in the broadcast, in range or not.
        const u32 v = decode_value<F>(code[k], as_f(warp_bcast(my_scale_f, k)));
        if (t.has<FULL>(k)) {
            out_codes[t.index(k)] = (u8)code[k];
            dst[t.index(k)] = E::narrow(v);
        }
    }
}

// ---------- vector path: 8 consecutive values per lane ----------
// Compiled with AIRAMP_VECTOR. A warp step covers VEC_RUNS runs of 256
// values (8 blocks each); lane l holds values 8l..8l+7 of a run, so 4 lanes
// share a block. Elements move as 16-byte vectors (the element buffers must
// be 16-byte aligned, checked per launch; otherwise the lane-strided path
// above does everything). Codes move as aligned 8-byte words, funnel-shifted
// between neighbouring lanes whatever the wire's alignment. Message tails
// shorter than a warp step go through the lane-strided path.

#if defined(AIRAMP_VECTOR)
constexpr u32 VPL = 8;
constexpr u32 RUN = 32 * VPL;
constexpr u32 VEC_RUNS = TILE_BLOCKS / 8;
static_assert(TILE_BLOCKS % 8 == 0, "the vector path needs tile_blocks in multiples of 8");

struct __attribute__((aligned(16))) U32x4 {
    u32 v[4];
};

AIRAMP_DEV bool aligned16(const void* p) { return ((u64)p & 15u) == 0; }

// Loads and stores of 8 consecutive elements as f32 bits (16-byte aligned).
template <class E> struct Vec {
    // f16/bf16: one 16-byte vector, two elements per word (low half first).
    AIRAMP_INL static void load(const typename E::raw* p, u32 (&x)[VPL]) {
        const U32x4 w = *(const U32x4*)p;
#pragma unroll
        for (u32 i = 0; i < 4; ++i) {
            x[2 * i] = E::widen((typename E::raw)(w.v[i] & 0xFFFFu));
            x[2 * i + 1] = E::widen((typename E::raw)(w.v[i] >> 16));
        }
    }
    AIRAMP_INL static void store(typename E::raw* p, const u32 (&y)[VPL]) {
        U32x4 w;
#pragma unroll
        for (u32 i = 0; i < 4; ++i) {
            w.v[i] = (u32)E::narrow(y[2 * i]) | ((u32)E::narrow(y[2 * i + 1]) << 16);
        }
        *(U32x4*)p = w;
    }
};
template <> struct Vec<ElemF32> {
    AIRAMP_INL static void load(const u32* p, u32 (&x)[VPL]) {
        const U32x4 a = ((const U32x4*)p)[0];
        const U32x4 b = ((const U32x4*)p)[1];
#pragma unroll
        for (u32 i = 0; i < 4; ++i) {
            x[i] = a.v[i];
            x[4 + i] = b.v[i];
        }
    }
    AIRAMP_INL static void store(u32* p, const u32 (&y)[VPL]) {
        U32x4 a, b;
#pragma unroll
        for (u32 i = 0; i < 4; ++i) {
            a.v[i] = y[i];
            b.v[i] = y[4 + i];
        }
        ((U32x4*)p)[0] = a;
        ((U32x4*)p)[1] = b;
    }
};

AIRAMP_DEV u64 next_lane64(u64 v) { return (u64)warp_next((u32)v) | ((u64)warp_next((u32)(v >> 32)) << 32); }

// Stores this lane's 8 codes `c` (values 8*lane.. of the run at `p`).
AIRAMP_DEV void store_codes(u8* p, u64 c, u32 lane) {
    const u32 r = (u32)((u64)p & 7u);
    if (r == 0) {
        *(u64*)(p + 8 * lane) = c;
        return;
    }
    // Aligned word after lane l's first 8-r bytes: its last r codes, then
    // the next lane's first 8-r. Lane 0's head and lane 31's tail are the
    // run's unaligned ends, written bytewise.
    const u32 s = 8 * r;
    const u64 next = next_lane64(c);
    if (lane < 31) {
        *(u64*)(p + 8 * lane + 8 - r) = (c >> (64 - s)) | (next << s);
    }
    if (lane == 0) {
        for (u32 j = 0; j < 8 - r; ++j) {
            p[j] = (u8)(c >> (8 * j));
        }
    }
    if (lane == 31) {
        for (u32 j = 8 - r; j < 8; ++j) {
            p[8 * 31 + j] = (u8)(c >> (8 * j));
        }
    }
}

// This lane's 8 codes (values 8*lane.. of the run at `p`); reads only the
// run's bytes.
AIRAMP_DEV u64 load_codes(const u8* p, u32 lane) {
    const u32 r = (u32)((u64)p & 7u);
    if (r == 0) {
        return *(const u64*)(p + 8 * lane);
    }
    const u32 s = 8 * r;
    // w: the aligned word holding value 8*lane (its first r bytes precede
    // it); lane 0 assembles the in-run part of its word bytewise.
    u64 w = 0;
    if (lane > 0) {
        w = *(const u64*)(p + 8 * lane - r);
    } else {
        for (u32 j = r; j < 8; ++j) {
            w |= (u64)p[j - r] << (8 * j);
        }
    }
    u64 next = next_lane64(w);
    if (lane == 31) {
        next = 0;
        for (u32 j = 0; j < r; ++j) {
            next |= (u64)p[RUN - r + j] << (8 * j);
        }
    }
    return (w >> s) | (next << (64 - s));
}

// FP8 codes of one lane's 8 values x (f32 bits) in a block of scale s;
// `special`: some value of the warp is NaN/Inf.
template <class F>
AIRAMP_DEV void vec_fp8_codes(const u32 (&x)[VPL], u32 s, bool special, u32 (&c)[VPL]) {
    // 2^(127-s): a normal number for every scale the encoder picks.
    const float inv = as_f((254u - s) << 23);
#pragma unroll
    for (u32 j = 0; j < VPL; j += 2) {
        const u32 y0 = as_u(fmul_rn(as_f(x[j]), inv));
        const u32 y1 = as_u(fmul_rn(as_f(x[j + 1]), inv));
#if defined(AIRAMP_HAS_CVT_FP8) && !defined(AIRAMP_SOFT_FP8)
        const u32 pair = F::BIAS == E4M3::BIAS ? cvt_e4m3x2(as_f(y1), as_f(y0)) : cvt_e5m2x2(as_f(y1), as_f(y0));
        c[j] = (pair & 0x7Fu) | ((y0 >> 24) & 0x80u);
        c[j + 1] = ((pair >> 8) & 0x7Fu) | ((y1 >> 24) & 0x80u);
#else
        c[j] = f32_to_fp8<F>(y0);
        c[j + 1] = f32_to_fp8<F>(y1);
#endif
    }
    if (special) {
#pragma unroll
        for (u32 j = 0; j < VPL; ++j) {
            c[j] = is_finite_bits(x[j]) ? c[j] : special_code<F>(x[j]);
        }
    }
}

// Quantizes VEC_RUNS runs (encode_block per 32 values): codes packed 8 per
// lane, and each lane's block scale (its wire value).
template <class F>
AIRAMP_DEV void vec_quantize(const u32 (&x)[VEC_RUNS][VPL], u64 (&codes)[VEC_RUNS], u32 (&scale)[VEC_RUNS]) {
    u32 m[VEC_RUNS];
    bool special = false;
#pragma unroll
    for (u32 t = 0; t < VEC_RUNS; ++t) {
        u32 a = 0;
#pragma unroll
        for (u32 j = 0; j < VPL; ++j) {
            const u32 v = x[t][j] & 0x7FFFFFFFu;
            a = v > a ? v : a;
        }
        special = special || a >= 0x7F800000u;
        a = umax(a, warp_xor(a, 1));
        m[t] = umax(a, warp_xor(a, 2));
    }
    // NaN/Inf are left out of the scale; only warps that hold one pay.
    special = warp_any(special);
    if (special) {
#pragma unroll
        for (u32 t = 0; t < VEC_RUNS; ++t) {
            u32 a = 0;
#pragma unroll
            for (u32 j = 0; j < VPL; ++j) {
                const u32 v = x[t][j] & 0x7FFFFFFFu;
                a = (v <= 0x7F7FFFFFu && v > a) ? v : a;
            }
            a = umax(a, warp_xor(a, 1));
            m[t] = umax(a, warp_xor(a, 2));
        }
    }
#pragma unroll
    for (u32 t = 0; t < VEC_RUNS; ++t) {
        const u32 s = block_scale<F>(m[t]);
        scale[t] = s;
        u32 c[VPL];
        if constexpr (F::IS_INT8) {
            // A non-finite x stays non-finite and becomes the NaN code.
            const float inv = int8_inverse(s);
#pragma unroll
            for (u32 j = 0; j < VPL; ++j) {
                c[j] = f32_to_int8(as_u(fmul_rn(as_f(x[t][j]), inv)));
            }
        } else {
            vec_fp8_codes<F>(x[t], s, special, c);
        }
        u64 packed = 0;
#pragma unroll
        for (u32 j = 0; j < VPL; ++j) {
            packed |= (u64)c[j] << (8 * j);
        }
        codes[t] = packed;
    }
}

template <class F, class E>
AIRAMP_DEV void vec_encode_step(const typename E::raw* __restrict__ src, u8* __restrict__ scales,
                                u8* __restrict__ codes, u64 v0, u32 lane) {
    u32 x[VEC_RUNS][VPL];
#pragma unroll
    for (u32 t = 0; t < VEC_RUNS; ++t) {
        Vec<E>::load(src + v0 + t * RUN + lane * VPL, x[t]);
    }
    u64 c[VEC_RUNS];
    u32 s[VEC_RUNS];
    vec_quantize<F>(x, c, s);
#pragma unroll
    for (u32 t = 0; t < VEC_RUNS; ++t) {
        if ((lane & 3) == 0) {
            store_scale<F>(scales, (v0 + t * RUN) / BLOCK + lane / 4, s[t]);
        }
        store_codes(codes + v0 + t * RUN, c[t], lane);
    }
}

template <class F, class E>
AIRAMP_DEV void vec_decode_step(const u8* __restrict__ scales, const u8* __restrict__ codes,
                                typename E::raw* __restrict__ dst, u64 v0, u32 lane) {
    u64 c[VEC_RUNS];
    u32 s[VEC_RUNS];
#pragma unroll
    for (u32 t = 0; t < VEC_RUNS; ++t) {
        c[t] = load_codes(codes + v0 + t * RUN, lane);
        s[t] = load_scale<F>(scales, (v0 + t * RUN) / BLOCK + lane / 4);
    }
#pragma unroll
    for (u32 t = 0; t < VEC_RUNS; ++t) {
        const float sc = scale_value<F>(s[t]);
        u32 y[VPL];
#pragma unroll
        for (u32 j = 0; j < VPL; ++j) {
            y[j] = decode_value<F>((u32)(c[t] >> (8 * j)) & 0xFFu, sc);
        }
        Vec<E>::store(dst + v0 + t * RUN + lane * VPL, y);
    }
}

template <class F, class E>
AIRAMP_DEV void vec_reduce_step(u32 members, u32 own, const typename E::raw* __restrict__ own_src,
                                const u64* __restrict__ wires, u64 nb, u8* __restrict__ out_scales,
                                u8* __restrict__ out_codes, typename E::raw* __restrict__ dst, u64 v0, u32 lane) {
    u32 acc[VEC_RUNS][VPL];
#pragma unroll
    for (u32 t = 0; t < VEC_RUNS; ++t) {
#pragma unroll
        for (u32 j = 0; j < VPL; ++j) {
            acc[t][j] = 0u;
        }
    }
    for (u32 m = 0; m < members; ++m) {
        if (m == own) {
            u32 x[VEC_RUNS][VPL];
#pragma unroll
            for (u32 t = 0; t < VEC_RUNS; ++t) {
                Vec<E>::load(own_src + v0 + t * RUN + lane * VPL, x[t]);
            }
#pragma unroll
            for (u32 t = 0; t < VEC_RUNS; ++t) {
#pragma unroll
                for (u32 j = 0; j < VPL; ++j) {
                    acc[t][j] = E::ACC_NAN_FIRST ? fold_add<F>(acc[t][j], x[t][j]) : fold_add<F>(x[t][j], acc[t][j]);
                }
            }
            continue;
        }
        const u8* scales = (const u8*)wires[m];
        const u8* codes = scales + codes_offset<F>(nb);
        u64 c[VEC_RUNS];
        u32 s[VEC_RUNS];
#pragma unroll
        for (u32 t = 0; t < VEC_RUNS; ++t) {
            c[t] = load_codes(codes + v0 + t * RUN, lane);
            s[t] = load_scale<F>(scales, (v0 + t * RUN) / BLOCK + lane / 4);
        }
#pragma unroll
        for (u32 t = 0; t < VEC_RUNS; ++t) {
            const float sc = scale_value<F>(s[t]);
#pragma unroll
            for (u32 j = 0; j < VPL; ++j) {
                acc[t][j] = fold_add<F>(decode_value<F>((u32)(c[t] >> (8 * j)) & 0xFFu, sc), acc[t][j]);
            }
        }
    }
    u64 c[VEC_RUNS];
    u32 s[VEC_RUNS];
    vec_quantize<F>(acc, c, s);
#pragma unroll
    for (u32 t = 0; t < VEC_RUNS; ++t) {
        if ((lane & 3) == 0) {
            store_scale<F>(out_scales, (v0 + t * RUN) / BLOCK + lane / 4, s[t]);
        }
        store_codes(out_codes + v0 + t * RUN, c[t], lane);
        const float sc = scale_value<F>(s[t]);
        u32 y[VPL];
#pragma unroll
        for (u32 j = 0; j < VPL; ++j) {
            y[j] = decode_value<F>((u32)(c[t] >> (8 * j)) & 0xFFu, sc);
        }
        Vec<E>::store(dst + v0 + t * RUN + lane * VPL, y);
    }
}

// Calls body(first value) for every whole warp step this logical warp
// owns; returns the first block left to the lane-strided path.
template <class Body> AIRAMP_DEV u64 for_each_vec_step(u64 n, u64 warp_stride, Body body) {
    const u64 steps = n / (VEC_RUNS * RUN);
    for (u64 w = (u64)block_x() * WARPS_PER_CTA + (thread_x() >> 5); w < steps; w += warp_stride) {
        body(w * VEC_RUNS * RUN, thread_x() & 31u);
    }
    return steps * VEC_RUNS * (RUN / BLOCK);
}
#endif // AIRAMP_VECTOR

// ---------- grid-stride drivers ----------

// Calls body(tile, full) for every tile of blocks first_block.. that this
// logical warp owns; full tiles (all TILE_BLOCKS * 32 values present) skip
// the bounds checks.
template <class Body> AIRAMP_DEV void for_each_tile(u64 n, u64 first_block, u64 warp_stride, Body body) {
    const u64 nb = (n + BLOCK - 1) / BLOCK;
    const u64 tiles = (nb - first_block + TILE_BLOCKS - 1) / TILE_BLOCKS;
    Tile t;
    t.lane = thread_x() & 31u;
    t.nb = nb;
    t.n = n;
    for (u64 w = (u64)block_x() * WARPS_PER_CTA + (thread_x() >> 5); w < tiles; w += warp_stride) {
        t.b0 = first_block + w * TILE_BLOCKS;
        body(t, (t.b0 + TILE_BLOCKS) * BLOCK <= n);
    }
}

template <class F, class E> AIRAMP_DEV void encode(u64 src, u64 n, u64 wire, u64 warp_stride) {
    const typename E::raw* s = (const typename E::raw*)src;
    u8* scales = (u8*)wire;
    u8* codes = scales + codes_offset<F>((n + BLOCK - 1) / BLOCK);
    u64 first_block = 0;
#if defined(AIRAMP_VECTOR)
    if (aligned16(s)) {
        first_block = for_each_vec_step(n, warp_stride, [&](u64 v0, u32 lane) {
            vec_encode_step<F, E>(s, scales, codes, v0, lane);
        });
    }
#endif
    for_each_tile(n, first_block, warp_stride, [&](const Tile& t, bool full) {
        if (full) {
            encode_tile<F, E, true>(t, s, scales, codes);
        } else {
            encode_tile<F, E, false>(t, s, scales, codes);
        }
    });
}

template <class F, class E> AIRAMP_DEV void decode(u64 wire, u64 n, u64 dst, u64 warp_stride) {
    const u8* scales = (const u8*)wire;
    const u8* codes = scales + codes_offset<F>((n + BLOCK - 1) / BLOCK);
    typename E::raw* d = (typename E::raw*)dst;
    u64 first_block = 0;
#if defined(AIRAMP_VECTOR)
    if (aligned16(d)) {
        first_block = for_each_vec_step(n, warp_stride, [&](u64 v0, u32 lane) {
            vec_decode_step<F, E>(scales, codes, d, v0, lane);
        });
    }
#endif
    for_each_tile(n, first_block, warp_stride, [&](const Tile& t, bool full) {
        if (full) {
            decode_tile<F, E, true>(t, scales, codes, d);
        } else {
            decode_tile<F, E, false>(t, scales, codes, d);
        }
    });
}

template <class F, class E>
AIRAMP_DEV void reduce_encode(u64 own_src, u64 wire_table, u32 members, u32 own, u64 n, u64 wire_out, u64 dst,
                              u64 warp_stride) {
    const typename E::raw* s = (const typename E::raw*)own_src;
    const u64* wires = (const u64*)wire_table;
    const u64 nb = (n + BLOCK - 1) / BLOCK;
    u8* scales = (u8*)wire_out;
    u8* codes = scales + codes_offset<F>(nb);
    typename E::raw* d = (typename E::raw*)dst;
    u64 first_block = 0;
#if defined(AIRAMP_VECTOR)
    if (aligned16(s) && aligned16(d)) {
        first_block = for_each_vec_step(n, warp_stride, [&](u64 v0, u32 lane) {
            vec_reduce_step<F, E>(members, own, s, wires, nb, scales, codes, d, v0, lane);
        });
    }
#endif
    for_each_tile(n, first_block, warp_stride, [&](const Tile& t, bool full) {
        if (full) {
            reduce_tile<F, E, true>(t, members, own, s, wires, scales, codes, d);
        } else {
            reduce_tile<F, E, false>(t, members, own, s, wires, scales, codes, d);
        }
    });
}

// ---------- exact sum ----------
// The owner's exact fold of one shard, as collnet::algo::Reducer does it on
// the exact path: member 0's element as it is (f32) or widened (f16/bf16),
// then `+ x_m` for every further member in order, in f32, narrowed once
// with round-to-nearest-even. The own shard is read from the device input,
// every other member's from its wire slot (raw elements). The result goes
// to `out_wire` (sent to the other members) and to `dst` (own output).
template <class E>
AIRAMP_DEV void sum_exact(u64 own_src, u64 wire_table, u32 members, u32 own, u64 n, u64 out_wire, u64 dst,
                          u64 thread_stride) {
    typedef typename E::raw R;
    const R* s = (const R*)own_src;
    const u64* wires = (const u64*)wire_table;
    R* w = (R*)out_wire;
    R* d = (R*)dst;
    for (u64 i = (u64)block_x() * 256u + thread_x(); i < n; i += thread_stride) {
        u32 acc = 0;
        for (u32 m = 0; m < members; ++m) {
            const u32 x = E::widen(m == own ? s[i] : ((const R*)wires[m])[i]);
            acc = m == 0 ? x : E::ACC_NAN_FIRST ? add_nan_first(acc, x) : add_nan_first(x, acc);
        }
        const R r = E::narrow(acc);
        w[i] = r;
        d[i] = r;
    }
}

} // namespace airamp

// ---------- exported kernels ----------
// airamp_{encode,decode,reduce_encode}_{e4m3,e5m2,int8}_{f32,f16,bf16}.
// Compiled with -DAIRAMP_SOFT_FP8 they never use the sm_89+ conversion
// instruction, so the selftest also proves the sm_80 path on newer GPUs
// (INT8 has no such instruction: the same code either way).

#define AIRAMP_INSTANTIATE(FMT, fmt, ELEM, elem)                                                              \
    AIRAMP_KERNEL airamp_encode_##fmt##_##elem(u64 src, u64 n, u64 wire, u64 warp_stride) {                   \
        airamp::encode<airamp::FMT, airamp::ELEM>(src, n, wire, warp_stride);                                 \
    }                                                                                                         \
    AIRAMP_KERNEL airamp_decode_##fmt##_##elem(u64 wire, u64 n, u64 dst, u64 warp_stride) {                   \
        airamp::decode<airamp::FMT, airamp::ELEM>(wire, n, dst, warp_stride);                                 \
    }                                                                                                         \
    AIRAMP_KERNEL airamp_reduce_encode_##fmt##_##elem(u64 own_src, u64 wire_table, u32 members, u32 own,      \
                                                      u64 n, u64 wire_out, u64 dst, u64 warp_stride) {        \
        airamp::reduce_encode<airamp::FMT, airamp::ELEM>(own_src, wire_table, members, own, n, wire_out, dst, \
                                                         warp_stride);                                        \
    }

AIRAMP_INSTANTIATE(E4M3, e4m3, ElemF32, f32)
AIRAMP_INSTANTIATE(E4M3, e4m3, ElemF16, f16)
AIRAMP_INSTANTIATE(E4M3, e4m3, ElemBf16, bf16)
AIRAMP_INSTANTIATE(E5M2, e5m2, ElemF32, f32)
AIRAMP_INSTANTIATE(E5M2, e5m2, ElemF16, f16)
AIRAMP_INSTANTIATE(E5M2, e5m2, ElemBf16, bf16)
AIRAMP_INSTANTIATE(Int8, int8, ElemF32, f32)
AIRAMP_INSTANTIATE(Int8, int8, ElemF16, f16)
AIRAMP_INSTANTIATE(Int8, int8, ElemBf16, bf16)

// airamp_sum_exact_{f32,f16,bf16}: the exact path's fold.
#define AIRAMP_INSTANTIATE_SUM(ELEM, elem)                                                                    \
    AIRAMP_KERNEL airamp_sum_exact_##elem(u64 own_src, u64 wire_table, u32 members, u32 own, u64 n,           \
                                          u64 out_wire, u64 dst, u64 thread_stride) {                         \
        airamp::sum_exact<airamp::ELEM>(own_src, wire_table, members, own, n, out_wire, dst, thread_stride);  \
    }

AIRAMP_INSTANTIATE_SUM(ElemF32, f32)
AIRAMP_INSTANTIATE_SUM(ElemF16, f16)
AIRAMP_INSTANTIATE_SUM(ElemBf16, bf16)

// ---------- copy ----------
// Copies `bytes` between any two addresses the device reaches (device
// memory, mapped pinned host memory). The data path copies with this kernel
// and never with the driver's cuMemcpy*: a driver copy waits on a lock that
// an application thread holds while its pageable copy waits for NCCL's
// kernel, which in turn waits for this copy (examples/gpu-residency, Q4).
// Same alignment mod 16: head bytes, then 16-byte words; else bytes.
struct __attribute__((aligned(16))) CopyWord {
    u32 v[4];
};

AIRAMP_KERNEL airamp_copy(u64 src, u64 dst, u64 bytes, u64 thread_stride) {
    const u8* s = (const u8*)src;
    u8* d = (u8*)dst;
    const u64 t = (u64)block_x() * 256u + thread_x();
    u64 done = 0;
    if (((src ^ dst) & 15u) == 0) {
        u64 head = (16u - (src & 15u)) & 15u;
        if (head > bytes) head = bytes;
        if (t < head) d[t] = s[t];
        const u64 words = (bytes - head) / 16u;
        const CopyWord* sv = (const CopyWord*)(s + head);
        CopyWord* dv = (CopyWord*)(d + head);
        for (u64 i = t; i < words; i += thread_stride) dv[i] = sv[i];
        done = head + words * 16u;
    }
    for (u64 i = done + t; i < bytes; i += thread_stride) d[i] = s[i];
}
