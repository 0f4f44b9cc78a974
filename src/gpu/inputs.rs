//! Inputs for testing the codec kernels against the CPU codec, shared by
//! `airamp gpu selftest` (on a GPU) and the CPU emulation of the kernels
//! (`scripts/check-kernels-emu`): every 16-bit pattern, blocks on the
//! codecs' rounding and scale edges, and a deterministic generator. Built
//! for the tools (CLI, tests) only, not into the plugin.

use super::Elem;
use crate::codec::{bf16_to_f32, encoded_len, f16_to_f32, Codec, CodecError, Dst, Src};

/// Every 16-bit pattern in three arrangements (sequential: neighbours share
/// an exponent; scattered by an odd multiplier; bit-reversed: neighbours
/// differ in sign and exponent), then a 13-value tail block.
pub fn all_patterns() -> Vec<u16> {
    let mut v: Vec<u16> = (0..=u16::MAX).collect();
    v.extend((0..=u16::MAX).map(|i| i.wrapping_mul(40503)));
    v.extend((0..=u16::MAX).map(u16::reverse_bits));
    v.extend((0..13u16).map(|i| 0x3C00u16.wrapping_add(i.wrapping_mul(4099))));
    v
}

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A finite f32 with a random sign and significand, exponent in
    /// `lo..=hi`.
    pub fn f32_with_exp(&mut self, lo: i32, hi: i32) -> f32 {
        let r = self.next_u64();
        let exp = lo + (r % (hi - lo + 1) as u64) as i32;
        let bits = ((r >> 63) as u32) << 31
            | (((exp + 127) as u32) << 23)
            | ((r >> 20) as u32 & 0x7F_FFFF);
        f32::from_bits(bits)
    }
}

/// Blocks at the codecs' edges, 32 values each: values that tie after
/// scaling (a block of max 127 * 2^e holding half-integer multiples of
/// 2^e: INT8's scale is then exactly 2^e), block maxima at both ends of
/// every exponent's mantissa and where INT8's integer division of the
/// maximum by 127 changes case, f32 subnormal and extreme maxima, lone
/// values, blocks of nothing but zeros, NaN or Inf.
pub fn edge_blocks() -> Vec<f32> {
    let mut v: Vec<f32> = Vec::new();
    let mut block = |xs: &[f32]| {
        let mut b = [0f32; 32];
        b[..xs.len()].copy_from_slice(xs);
        v.extend_from_slice(&b);
    };
    let pow2 = |e: i32| 2f64.powi(e);
    for e in -148..=120 {
        for j in 0..8 {
            let mut xs = vec![(127.0 * pow2(e)) as f32];
            xs.extend(
                (0..31)
                    .map(|i| ((-127 + j * 31 + i) as f64 + 0.5) * pow2(e))
                    .map(|x| x as f32),
            );
            block(&xs);
        }
    }
    let split = (127u32 << 17) - 0x80_0000;
    let ratios = [
        1.0f32,
        -0.5,
        0.25,
        -0.75,
        0.3,
        1.0 / 127.0,
        0.5 / 127.0,
        -1.5 / 127.0,
    ];
    for e in 0..=254u32 {
        for m in [0, 1, 2, split - 1, split, split + 1, 0x7F_FFFE, 0x7F_FFFF] {
            let max = f32::from_bits((e << 23) | m);
            let xs: Vec<f32> = ratios.iter().map(|&r| max * r).collect();
            block(&xs);
        }
    }
    let sub = f32::from_bits;
    for xs in [
        vec![f32::MAX, -f32::MAX, 1.0, f32::MIN_POSITIVE],
        vec![
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            sub(1),
            sub(0x40_0000),
        ],
        vec![sub(1), sub(2), sub(3), -sub(1)],
        vec![sub(0x7F_FFFF), -sub(0x7F_FFFF), sub(0x20_0000)],
        vec![1.0],
        vec![-0.0; 32],
        vec![f32::NAN; 32],
        vec![f32::INFINITY, f32::NEG_INFINITY],
        vec![f32::NAN, 1.0, -2.0, f32::INFINITY, 3.5, -0.0],
        vec![126.5, 127.0, -126.5, 0.5, -0.5, 1.5, -1.5, 2.5],
    ] {
        block(&xs);
    }
    v
}

/// Host values of one element type, as the kernels and the CPU codec take
/// them.
#[derive(Clone, Debug)]
pub enum Values {
    F32(Vec<f32>),
    F16(Vec<u16>),
    Bf16(Vec<u16>),
}

impl Values {
    pub fn zeros(elem: Elem, n: usize) -> Values {
        match elem {
            Elem::F32 => Values::F32(vec![0.0; n]),
            Elem::F16 => Values::F16(vec![0; n]),
            Elem::Bf16 => Values::Bf16(vec![0; n]),
        }
    }

    pub fn elem(&self) -> Elem {
        match self {
            Values::F32(_) => Elem::F32,
            Values::F16(_) => Elem::F16,
            Values::Bf16(_) => Elem::Bf16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F16(v) | Values::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn src(&self) -> Src<'_> {
        match self {
            Values::F32(v) => Src::F32(v),
            Values::F16(v) => Src::F16(v),
            Values::Bf16(v) => Src::Bf16(v),
        }
    }

    pub fn dst(&mut self) -> Dst<'_> {
        match self {
            Values::F32(v) => Dst::F32(v),
            Values::F16(v) => Dst::F16(v),
            Values::Bf16(v) => Dst::Bf16(v),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Values::F32(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Values::F16(v) | Values::Bf16(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
        }
    }

    /// Bits of element `i`.
    pub fn bits(&self, i: usize) -> u32 {
        match self {
            Values::F32(v) => v[i].to_bits(),
            Values::F16(v) | Values::Bf16(v) => v[i] as u32,
        }
    }

    /// The same values widened to f32 (exact).
    pub fn widened(&self) -> Values {
        match self {
            Values::F32(v) => Values::F32(v.clone()),
            Values::F16(v) => Values::F32(v.iter().map(|&h| f16_to_f32(h)).collect()),
            Values::Bf16(v) => Values::F32(v.iter().map(|&h| bf16_to_f32(h)).collect()),
        }
    }

    /// The same values in `elem` (f32 narrowed with the codec's RNE).
    pub fn as_elem(&self, elem: Elem) -> Values {
        let w = match self.widened() {
            Values::F32(v) => v,
            _ => unreachable!("widened is f32"),
        };
        match elem {
            Elem::F32 => Values::F32(w),
            Elem::F16 => Values::F16(w.iter().map(|&x| crate::codec::f32_to_f16(x)).collect()),
            Elem::Bf16 => Values::Bf16(w.iter().map(|&x| crate::codec::f32_to_bf16(x)).collect()),
        }
    }
}

/// The wire each member of a fold sends: every other member's values
/// encoded with `codec`; the owner's slot stays zero, as the owner folds
/// its own values unencoded.
pub fn member_wires(
    codec: &Codec,
    members: &[Values],
    own: usize,
) -> Result<Vec<Vec<u8>>, CodecError> {
    let n = members.get(own).map_or(0, Values::len);
    members
        .iter()
        .enumerate()
        .map(|(m, values)| {
            let mut wire = vec![0u8; encoded_len(codec.format(), n)];
            if m != own {
                codec.encode_wire(values.src(), &mut wire)?;
            }
            Ok(wire)
        })
        .collect()
}
