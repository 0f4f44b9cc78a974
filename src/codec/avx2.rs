//! AVX2 + F16C paths (placeholder: scalar does everything).

use super::{Dst, Fp8Format, Src};

pub fn encode(_fmt: Fp8Format, _src: Src<'_>, _scales: &mut [u8], _codes: &mut [u8]) -> usize {
    0
}

pub fn decode_accumulate(
    _fmt: Fp8Format,
    _scales: &[u8],
    _codes: &[u8],
    _acc: &mut [f32],
) -> usize {
    0
}

pub fn decode_into(_fmt: Fp8Format, _scales: &[u8], _codes: &[u8], _dst: &mut Dst<'_>) -> usize {
    0
}
